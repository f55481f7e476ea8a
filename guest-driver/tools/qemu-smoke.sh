#!/bin/bash
# Boot the Debian guest kernel under plain QEMU (TCG, no virtio-xpmem device)
# with xpmem.ko and check: the module loads, /dev/xpmem is 0666, VERSION
# works, every other call fails with ENODEV, /proc/xpmem reads, counters are
# 0, and the module unloads cleanly (twice, to catch leaks on reload).
#
# usage: qemu-smoke.sh [KERNEL_DEB_DIR]
#   KERNEL_DEB_DIR: where linux-image-$KVER is unpacked
#   (default /tmp/drv/kimg; created with apt-get download + dpkg-deb -x).
#   KVER: the kernel xpmem.ko was built for (default 6.1.0-56-amd64).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
kimg=${1:-/tmp/drv/kimg}
kver=${KVER:-6.1.0-56-amd64}
work=$(mktemp -d /tmp/xpmem-smoke.XXXXXX)
trap 'rm -rf "$work"' EXIT

if [ ! -e "$kimg/boot/vmlinuz-$kver" ]; then
	mkdir -p "$kimg"
	(cd "$work" && apt-get download "linux-image-$kver" >/dev/null &&
	 dpkg-deb -x linux-image-"$kver"_*.deb "$kimg")
fi
make -s -C "$here/.." >/dev/null

root=$work/root
mkdir -p "$root"/{bin,dev,proc,sys,lib/modules}
cp /bin/busybox "$root/bin/busybox"
cp "$kimg/lib/modules/$kver/kernel/drivers/virtio/virtio_ring.ko" \
   "$kimg/lib/modules/$kver/kernel/drivers/virtio/virtio.ko" \
   "$here/../kmod/xpmem.ko" "$root/lib/modules/"
cp "$here/xpmem-test" "$root/bin/"
cat > "$root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
ok=0
bad() { echo "SMOKE FAIL $*"; ok=1; }
insmod /lib/modules/virtio_ring.ko || bad insmod virtio_ring
insmod /lib/modules/virtio.ko || bad insmod virtio
for round in 1 2; do
	insmod /lib/modules/xpmem.ko prefetch_pages=8 || bad "insmod xpmem ($round)"
	mode=$(stat -c %a /dev/xpmem 2>/dev/null)
	[ "$mode" = 666 ] || bad "/dev/xpmem mode '$mode'"
	[ "$(cat /sys/module/xpmem/parameters/prefetch_pages)" = 8 ] || bad prefetch_pages
	# test_misbehave (tests only): off by default, every mode settable at
	# run time (no device here, so nothing misbehaves), nonsense refused.
	tm=/sys/module/xpmem/parameters/test_misbehave
	[ "$(cat $tm)" = off ] || bad "test_misbehave default '$(cat $tm)'"
	for m in no_ack no_refill bad_evbufs no_resolve off; do
		echo $m > $tm && [ "$(cat $tm)" = $m ] || bad "test_misbehave=$m"
	done
	echo bogus > $tm 2>/dev/null && bad "test_misbehave took 'bogus'"
	[ "$(cat $tm)" = off ] || bad "test_misbehave after bogus: '$(cat $tm)'"
	ls /proc/xpmem
	cat /proc/xpmem/global_pages /proc/xpmem/stats
	PINNED=$(grep "pages pinned" /proc/xpmem/* | sed -e 's/^.*: //')
	UNPINNED=$(grep "pages unpinned" /proc/xpmem/* | sed -e 's/^.*: //')
	[ "$PINNED" -eq "$UNPINNED" ] || bad "pinned $PINNED unpinned $UNPINNED"
	for c in version nodev proc-zero; do
		xpmem-test $c || bad "xpmem-test $c"
	done
	rmmod xpmem || bad "rmmod xpmem ($round)"
	[ ! -e /dev/xpmem ] || bad "/dev/xpmem left behind"
	[ ! -e /proc/xpmem ] || bad "/proc/xpmem left behind"
done
dmesg | grep -iE "xpmem|BUG|WARNING|Oops|leak" 
dmesg | grep -qE "BUG:|WARNING:|Oops" && bad "kernel complained"
[ $ok = 0 ] && echo "SMOKE PASS" || echo "SMOKE FAILED"
poweroff -f
INIT
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$work/initrd.gz"

start=$(date +%s.%N)
timeout 300 qemu-system-x86_64 -accel tcg -m 512 -nographic -no-reboot \
	-kernel "$kimg/boot/vmlinuz-$kver" -initrd "$work/initrd.gz" \
	-append "console=ttyS0 panic=-1 quiet loglevel=4" | tee "$work/console.log"
end=$(date +%s.%N)
echo "qemu ran $(echo "$end - $start" | bc) s"
grep -q "SMOKE PASS" "$work/console.log"
