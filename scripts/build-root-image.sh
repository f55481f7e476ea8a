#!/bin/sh
# Builds a Debian 12 (bookworm) root disk image for the VMs, from Debian
# packages only (mmdebstrap; no prebuilt image is downloaded):
#
#   * the stock kernel the tests use (linux-image-<release>, what
#     linux-image-amd64 depends on, or $XPMEM_KERNEL_PKG) and its modules;
#   * the xpmem driver installed THROUGH DKMS: dkms, linux-headers-<release>
#     and the project's xpmem-dkms .deb, so dkms builds xpmem.ko inside the
#     image (/lib/modules/<release>/updates/dkms/xpmem.ko);
#   * libxpmem0 + libxpmem-dev (.so, .a, xpmem.h, xpmem.pc under /usr), pkgconf
#     and libc6-dev so that `cc x.c $(pkg-config --cflags --libs xpmem)` works;
#   * the guest programs (guest-driver/tools/image/bin/* in /usr/local/bin) and
#     the scenario scripts (/scenario), as in the harness's initramfs;
#   * /sbin/init = scripts/root-image/init (a small shell init, no systemd);
#   * tiny-initramfs as the image's initramfs generator: /boot/initrd.img-<release>
#     loads virtio_mmio, virtio_blk and ext4 and mounts root= (no udev).
#
# The ext4 image is made with `mkfs.ext4 -d` from the unpacked tree (no loop
# mount). Output, cached by a hash of every input (the builder, the init, the
# package list and kernel version, the .debs, the guest programs):
#
#   build/images/root-<hash>/root.img      raw ext4 disk (root=/dev/vda)
#   build/images/root-<hash>/vmlinuz       the image's kernel
#   build/images/root-<hash>/initrd.img    the image's initrd (tiny-initramfs)
#   build/images/root-<hash>/manifest.txt  inputs, dkms status, sizes, build time
#   build/images/root-current -> root-<hash>
#
# Usage: scripts/build-root-image.sh [--force] [--keep-tree] [--headroom MIB]
# Needs root (mmdebstrap's root mode, chroot) and the Debian mirrors
# (deb.debian.org or $XPMEM_DEBIAN_MIRROR / $XPMEM_DEBIAN_SECURITY_MIRROR).
# Downloaded packages are kept in build/cache/root-image-debs for later builds.
set -eu

repo=$(cd "$(dirname "$0")/.." && pwd)
build=${XPMEM_BUILD_DIR:-$repo/build}
gd=$repo/guest-driver
start=$(date +%s)

say() { printf '[root-image %3ss] %s\n' "$(($(date +%s) - start))" "$*"; }
die() { printf 'build-root-image: error: %s\n' "$*" >&2; exit 1; }

force=no
keep=no
headroom=256
while [ $# -gt 0 ]; do
	case "$1" in
	--force) force=yes ;;
	--keep-tree) keep=yes ;;
	--headroom)
		[ $# -ge 2 ] || die "--headroom needs a size in MiB"
		headroom=$2
		shift
		;;
	-h | --help)
		sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//'
		exit 0
		;;
	*) die "unknown option '$1' (see --help)" ;;
	esac
	shift
done
case "$headroom" in
'' | *[!0-9]*) die "--headroom wants a number of MiB, not '$headroom'" ;;
esac

[ "$(id -u)" = 0 ] || die "run as root (mmdebstrap builds the tree with chroot; sudo $0)"

# --- tools ---------------------------------------------------------------
missing=
command -v mmdebstrap >/dev/null 2>&1 || missing="$missing mmdebstrap"
command -v mkfs.ext4 >/dev/null 2>&1 || missing="$missing e2fsprogs"
command -v dpkg-deb >/dev/null 2>&1 || missing="$missing dpkg"
command -v make >/dev/null 2>&1 || missing="$missing make"
command -v cc >/dev/null 2>&1 || missing="$missing build-essential"
if [ -n "$missing" ]; then
	say "apt-get install$missing"
	DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq --no-install-recommends $missing >/dev/null ||
		die "apt-get install$missing failed (try 'apt-get update' first)"
fi

# --- the kernel the tests use ----------------------------------------------
if [ -n "${XPMEM_KERNEL_PKG:-}" ]; then
	kpkg=$XPMEM_KERNEL_PKG
else
	kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null |
		sed -n 's/^ *Depends: \(linux-image-.*-amd64\)$/\1/p' | head -1)
fi
[ -n "$kpkg" ] || die "cannot tell the guest kernel (apt-cache depends linux-image-amd64 names none: run 'apt-get update', or set XPMEM_KERNEL_PKG=linux-image-6.1.0-NN-amd64)"
kver=${kpkg#linux-image-}
kversion=$(apt-cache policy "$kpkg" 2>/dev/null | sed -n 's/^ *Candidate: //p')
[ -n "$kversion" ] && [ "$kversion" != "(none)" ] ||
	die "apt knows no package $kpkg (run 'apt-get update', or set XPMEM_KERNEL_PKG)"

mirror=${XPMEM_DEBIAN_MIRROR:-http://deb.debian.org/debian}
secmirror=${XPMEM_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
suite=bookworm
# Packages beyond minbase (Essential + apt). tiny-initramfs provides
# linux-initramfs-tool, so initramfs-tools (and udev) stay out.
packages="$kpkg linux-headers-$kver tiny-initramfs dkms kmod busybox gcc pkgconf libc6-dev"

# --- inputs: the .debs and the guest programs --------------------------------
say "step 1/6: the guest side's .debs and programs (make -C guest-driver debs tools)"
make -s -C "$gd" debs >/dev/null || die "make -C guest-driver debs failed (run it to see why)"
make -s -C "$gd" tools >/dev/null || die "make -C guest-driver tools failed (run it to see why)"
debs=$(ls "$gd"/build/debs/*.deb)
[ -n "$debs" ] || die "no .debs in $gd/build/debs"
for f in "$gd/tools/image/bin/xpmem-test" "$gd/tools/image/bin/xpmem-demo"; do
	[ -x "$f" ] || die "$f is missing after make -C guest-driver tools"
done

# Every input of the image, one line each; its hash names the image.
inputs() {
	echo "root-image-v1 $suite $mirror $secmirror"
	echo "kernel $kpkg $kversion"
	echo "packages $packages"
	echo "headroom $headroom"
	(cd "$repo" && sha256sum scripts/build-root-image.sh scripts/root-image/*)
	(cd "$gd" && sha256sum build/debs/*.deb)
	(cd "$gd/tools/image" && find bin scenario -type f | LC_ALL=C sort | xargs sha256sum)
}
hash=$(inputs | sha256sum | cut -c1-16)
dir=$build/images/root-$hash
mkdir -p "$build/images" "$build/cache/root-image-debs"

# One build at a time (two VMs' setups may ask at once); bounded wait.
exec 9>"$build/images/.root-image.lock"
if ! flock -n 9; then
	say "another build of a root image is running; waiting for it (30 min at most)"
	flock -w 1800 9 || die "gave up waiting for $build/images/.root-image.lock after 30 min"
fi

if [ "$force" = no ] && [ -f "$dir/.done" ]; then
	ln -sfn "root-$hash" "$build/images/root-current"
	say "cached: $dir (inputs unchanged; --force rebuilds)"
	sed -n '/^image /,$p' "$dir/manifest.txt"
	exit 0
fi

tmp=$build/images/root-$hash.tmp
tree=$tmp/tree
rm -rf "$tmp" "$dir"
mkdir -p "$tree"
cleanup() {
	if [ "$keep" = no ]; then rm -rf "$tmp"; else echo "tree kept: $tree" >&2; fi
}
trap cleanup EXIT
inputs >"$tmp/inputs.txt"

# tiny-initramfs: the modules that find and mount /dev/vda, nothing detected
# from the build host.
cat >"$tmp/tiny-initramfs.conf" <<'EOF'
# Written by scripts/build-root-image.sh: the VM's root is ext4 on virtio-blk
# over virtio-mmio (ACPI); the modules are listed, not detected.
DEBUG=no
MICROCODE=no
AUTO_MODULES=no
INCLUDE_MODULES="virtio_mmio,virtio_blk,ext4"
EOF
cat >"$tmp/fstab" <<'EOF'
/dev/vda / ext4 rw,relatime 0 1
EOF
mkdir -p "$tmp/debs" "$tmp/bin" "$tmp/scenario"
cp $debs "$tmp/debs/"
cp "$gd"/tools/image/bin/* "$tmp/bin/"
cp "$gd"/tools/image/scenario/* "$tmp/scenario/"
cp "$repo/scripts/root-image/init" "$tmp/init"

# The checks run in the finished tree; their output goes to the manifest.
cat >"$tmp/verify.sh" <<EOF
#!/bin/sh
set -eu
echo "dkms status:"
dkms status
ko=/lib/modules/$kver/updates/dkms/xpmem.ko
[ -f "\$ko" ] || { echo "MISSING \$ko"; exit 1; }
echo "\$ko: \$(modinfo -F vermagic "\$ko")"
modprobe --dry-run --set-version $kver --show-depends xpmem
echo "pkg-config --modversion xpmem: \$(pkg-config --modversion xpmem); --cflags --libs: \$(pkg-config --cflags --libs xpmem)"
printf '#include <xpmem.h>\nint main(void) { return xpmem_version() < 0; }\n' >/tmp/pc.c
cc -o /tmp/pc /tmp/pc.c \$(pkg-config --cflags --libs xpmem)
echo "cc x.c \\\$(pkg-config --cflags --libs xpmem): links against \$(ldd /tmp/pc | sed -n 's/.*\(libxpmem[^ ]*\) => \([^ ]*\).*/\1 => \2/p')"
rm -f /tmp/pc /tmp/pc.c
ls -l /boot/initrd.img-$kver
EOF

# --- the tree -----------------------------------------------------------------
say "step 2/6: mmdebstrap $suite ($packages); kernel $kpkg $kversion"
XPMEM_VERIFY_OUT=$tmp/verify.txt
export XPMEM_VERIFY_OUT
if ! timeout 3600 mmdebstrap --mode=root --variant=minbase --format=directory \
	--include="$(echo "$packages" | tr ' ' ',')" \
	--skip=download/empty --skip=essential/unlink \
	--setup-hook='mkdir -p "$1/var/cache/apt/archives" "$1/etc/tiny-initramfs"' \
	--setup-hook="sync-in $build/cache/root-image-debs /var/cache/apt/archives" \
	--setup-hook="upload $tmp/tiny-initramfs.conf /etc/tiny-initramfs/tiny-initramfs.conf" \
	--customize-hook="sync-out /var/cache/apt/archives $build/cache/root-image-debs" \
	--customize-hook='echo "[root-image] step 3/6: apt install ./xpmem-dkms ./libxpmem0 ./libxpmem-dev (dkms builds xpmem.ko for '"$kver"')"' \
	--customize-hook='mkdir -p "$1/tmp/xpmem-debs"' \
	--customize-hook="copy-in $tmp/debs/. /tmp/xpmem-debs" \
	--customize-hook='chroot "$1" sh -c "DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends /tmp/xpmem-debs/*.deb" || { cat "$1"/var/lib/dkms/xpmem/*/build/make.log 2>/dev/null; exit 1; }' \
	--customize-hook='rm -rf "$1/tmp/xpmem-debs" "$1"/var/cache/apt/archives/*.deb "$1"/var/lib/apt/lists/*' \
	--customize-hook='echo "[root-image] step 4/6: guest programs, /scenario, /sbin/init, checks"' \
	--customize-hook='mkdir -p "$1/scenario" "$1/etc/xpmem"' \
	--customize-hook="copy-in $tmp/bin/. /usr/local/bin" \
	--customize-hook="copy-in $tmp/scenario/. /scenario" \
	--customize-hook="upload $tmp/init /usr/local/sbin/xpmem-init" \
	--customize-hook='chmod 755 "$1/usr/local/sbin/xpmem-init" && ln -sfn /usr/local/sbin/xpmem-init "$1/sbin/init"' \
	--customize-hook="upload $tmp/fstab /etc/fstab" \
	--customize-hook='echo xpmem-guest >"$1/etc/hostname"' \
	--customize-hook="upload $tmp/verify.sh /tmp/verify.sh" \
	--customize-hook='chroot "$1" sh /tmp/verify.sh >"$XPMEM_VERIFY_OUT" 2>&1; rc=$?; cat "$XPMEM_VERIFY_OUT"; rm -f "$1/tmp/verify.sh"; exit $rc' \
	"$suite" "$tree" \
	"deb $mirror $suite main" \
	"deb $mirror $suite-updates main" \
	"deb $secmirror $suite-security main"; then
	die "mmdebstrap failed (output above); re-run with --keep-tree to keep the tree ($tree) for a look"
fi
for f in "$tree/boot/vmlinuz-$kver" "$tree/boot/initrd.img-$kver" "$tree/lib/modules/$kver/updates/dkms/xpmem.ko"; do
	[ -f "$f" ] || die "the tree has no $f"
done

# --- the ext4 image -------------------------------------------------------------
say "step 5/6: mkfs.ext4 -d (content plus ${headroom} MiB and 10% headroom)"
content_kib=$(du -sk --apparent-size "$tree" | cut -f1)
files=$(find "$tree" | wc -l)
size_mib=$(((content_kib * 11 / 10) / 1024 + headroom))
inodes=$((files * 2 + 16384))
mkdir -p "$tmp/out"
img=$tmp/out/root.img
truncate -s "${size_mib}M" "$img"
mkfs.ext4 -q -F -L xpmem-root -N "$inodes" -m 1 -d "$tree" "$img" ||
	die "mkfs.ext4 -d $tree $img failed"
cp "$tree/boot/vmlinuz-$kver" "$tmp/out/vmlinuz"
cp "$tree/boot/initrd.img-$kver" "$tmp/out/initrd.img"

say "step 6/6: manifest"
took=$(($(date +%s) - start))
{
	echo "# scripts/build-root-image.sh, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
	cat "$tmp/inputs.txt"
	echo
	cat "$tmp/verify.txt"
	echo
	echo "image $dir/root.img: ${size_mib} MiB ($(du -k "$img" | cut -f1) KiB allocated), ext4, $files files, content $((content_kib / 1024)) MiB"
	echo "kernel $dir/vmlinuz ($kver), initrd $dir/initrd.img ($(du -k "$tmp/out/initrd.img" | cut -f1) KiB, tiny-initramfs)"
	echo "built in ${took} s"
	echo "boot: kernel = vmlinuz, initrd = initrd.img, root = <a copy of root.img> (cmdline: console=ttyS0 reboot=k rootfstype=ext4)"
} >"$tmp/out/manifest.txt"
mv "$tmp/out" "$dir"
touch "$dir/.done"
ln -sfn "root-$hash" "$build/images/root-current"
# Older images (about 1 GiB each) go; VMs boot from copies, not from these.
for old in "$build"/images/root-*; do
	case "$old" in
	"$dir" | "$build/images/root-current") ;;
	*.tmp) ;;
	*) [ -f "$old/.done" ] && rm -rf "$old" && say "removed the older image $old" ;;
	esac
done
sed -n '/^image /,$p' "$dir/manifest.txt"
