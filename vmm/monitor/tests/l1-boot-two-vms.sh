#!/bin/sh
# Boots two stock Debian guests (2 vCPUs, 1 GiB each) at once under
# xpmem-vmm on the KVM test host (tests/nested/), and checks that each one
# reaches init, sees both vCPUs, binds virtio-rng, and powers off, and that
# the monitor then exits 0. Prints each guest's time to init.
#
# usage: vmm/monitor/tests/l1-boot-two-vms.sh [--keep]
# Needs: the Debian kernel cache of tests/nested (build/cache), cpio, gzip.
set -eu
repo=$(cd "$(dirname "$0")/../../.." && pwd)
work=$(mktemp -d /tmp/xpmem-vmm-l1.XXXXXX)
[ "${1:-}" = "--keep" ] || trap 'rm -rf "$work"' EXIT

vmm=$(XPMEM_STATIC_TARGET_DIR=${XPMEM_STATIC_TARGET_DIR:-$repo/target-static} \
	"$repo/tests/nested/build-static.sh" xpmem-vmm --release)
kroot=$(ls -d "$repo"/build/cache/pkgs/linux-image-*-amd64 | head -1)
kernel=$(ls "$kroot"/boot/vmlinuz-* | head -1)
mods=$(ls -d "$kroot"/lib/modules/*/kernel | head -1)
busybox=$(ls "$repo"/build/cache/pkgs/busybox-static*/bin/busybox 2>/dev/null | head -1)
[ -n "$busybox" ] || busybox=/bin/busybox

# Guest initramfs: report what the guest sees through /dev/kmsg (the kernel
# console), then power off through ACPI.
mkdir -p "$work/root/bin" "$work/root/lib/modules" "$work/root/proc" "$work/root/sys" "$work/root/dev"
cp "$busybox" "$work/root/bin/busybox"
for m in drivers/virtio/virtio_ring.ko drivers/virtio/virtio.ko \
	drivers/virtio/virtio_mmio.ko drivers/char/hw_random/virtio-rng.ko; do
	cp "$mods/$m" "$work/root/lib/modules/"
done
cat > "$work/root/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs dev /dev
log() { echo "$*" > /dev/kmsg; }
log "GUEST-INIT uptime=$(cut -d' ' -f1 /proc/uptime)"
log "GUEST-CPUS online=$(cat /sys/devices/system/cpu/online)"
for m in virtio_ring virtio virtio_mmio virtio-rng; do insmod /lib/modules/$m.ko; done
for d in /sys/bus/virtio/devices/*; do
	log "GUEST-VIRTIO $(basename $d) device=$(cat $d/device) driver=$(basename "$(readlink $d/driver)")"
done
log "GUEST-DONE"
poweroff -f
EOF
chmod +x "$work/root/init"
(cd "$work/root" && find . | cpio -o -H newc 2>/dev/null | gzip -1 > "$work/guest.cpio.gz")

cat > "$work/two-vms.toml" <<'EOF'
[[vm]]
name = "a"
vcpus = 2
memory = "1G"
kernel = "bzImage"
initrd = "guest.cpio.gz"
console = "file:a.log"

[[vm]]
name = "b"
vcpus = 2
memory = "1G"
kernel = "bzImage"
initrd = "guest.cpio.gz"
console = "file:b.log"
EOF
cat > "$work/run.sh" <<'EOF'
timeout 600 ./vmm --config config.toml
rc=$?
echo "VMM-RC=$rc"
for vm in a b; do grep GUEST "$vm.log" | sed "s/^/[$vm] /"; done
exit $rc
EOF

"$repo/tests/nested/l1-run.sh" --timeout 900 --file "$vmm:vmm" --file "$kernel:bzImage" \
	--file "$work/guest.cpio.gz:guest.cpio.gz" --file "$work/two-vms.toml:config.toml" \
	--script "$work/run.sh" | tee "$work/l1.log"

fail=0
grep -q 'VMM-RC=0' "$work/l1.log" || { echo "FAIL: monitor did not exit 0"; fail=1; }
for vm in a b; do
	grep -q "\[$vm\] .*GUEST-CPUS online=0-1" "$work/l1.log" || { echo "FAIL: VM $vm does not see 2 CPUs"; fail=1; }
	grep -q "\[$vm\] .*GUEST-VIRTIO .* device=0x0004 driver=virtio_rng" "$work/l1.log" || { echo "FAIL: VM $vm has no virtio-rng"; fail=1; }
	grep -q "VM $vm: powered off" "$work/l1.log" || { echo "FAIL: VM $vm did not power off"; fail=1; }
	grep -o "\[$vm\] .*GUEST-INIT uptime=[0-9.]*" "$work/l1.log" | sed 's/.*uptime=/time to init (s): /;s/^/'"VM $vm "'/'
done
[ $fail -eq 0 ] && echo "PASS: two 2-vCPU guests booted together and powered off"
exit $fail
