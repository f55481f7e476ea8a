#!/bin/sh
# Builds the guest side's Debian packages from this tree with dpkg-deb (no
# network, no root, no debhelper):
#
#   xpmem-dkms_<ver>_all.deb       /usr/src/xpmem-<ver>: the module's sources, dkms.conf
#                                  and a copy of virtio-spec/include/virtio_xpmem.h;
#                                  postinst/prerm run DKMS (add, build, install / remove)
#   libxpmem0_<ver>_<arch>.deb     /usr/lib/<multiarch>/libxpmem.so.0{,.0.0}
#   libxpmem-dev_<ver>_<arch>.deb  xpmem.h, libxpmem.a, libxpmem.so, xpmem.pc, cray-xpmem.pc
#
# Usage: build-debs.sh [OUTDIR]   (default guest-driver/build/debs; normally run
# as `make -C guest-driver debs`). <ver> is PACKAGE_VERSION in kmod/dkms.conf.
# The packages are reproducible: same tree, same bytes (fixed file times,
# SOURCE_DATE_EPOCH, root:root, file paths mapped out of the debug info),
# so the root-image builder can cache by their hash.
set -eu

gd=$(cd "$(dirname "$0")/.." && pwd)
repo=$(cd "$gd/.." && pwd)
out=${1:-$gd/build/debs}

die() { printf 'build-debs: %s\n' "$*" >&2; exit 1; }
say() { printf '[debs] %s\n' "$*"; }

for t in dpkg-deb dpkg make cc strip objdump; do
	command -v "$t" >/dev/null 2>&1 ||
		die "$t not found: apt-get install dpkg-dev build-essential binutils"
done
version=$(sed -n 's/^PACKAGE_VERSION="\(.*\)"$/\1/p' "$gd/kmod/dkms.conf")
[ -n "$version" ] || die "no PACKAGE_VERSION=\"...\" line in $gd/kmod/dkms.conf"
arch=$(dpkg --print-architecture)
multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || cc -print-multiarch)
[ -n "$multiarch" ] || die "cannot tell the multiarch triplet (install dpkg-dev)"
hdr=$repo/virtio-spec/include/virtio_xpmem.h
[ -f "$hdr" ] || die "$hdr is missing (run this from a complete checkout)"

# Fixed time for every file in the packages (2026-01-01); override with
# SOURCE_DATE_EPOCH (dpkg-deb uses it for the archive members too).
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1767225600}
export SOURCE_DATE_EPOCH
maint="virtio-xpmem developers <virtio-xpmem@invalid>"
umask 022

work=$gd/build/pkg
rm -rf "$work"
mkdir -p "$work" "$out"
trap 'rm -rf "$work"' EXIT

# Writes DEBIAN/control for the tree $1 (package $2) from stdin plus
# Package/Version/Maintainer/Installed-Size.
control() {
	size=$(du -sk --apparent-size --exclude=DEBIAN "$1" | cut -f1)
	mkdir -p "$1/DEBIAN"
	{
		printf 'Package: %s\nVersion: %s\nMaintainer: %s\nInstalled-Size: %s\n' \
			"$2" "$version" "$maint" "$size"
		cat
	} >"$1/DEBIAN/control"
}

copyright() {
	mkdir -p "$1/usr/share/doc/$2"
	cat >"$1/usr/share/doc/$2/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: virtio-xpmem

Files: *
License: $3
 The full license text is in /usr/share/common-licenses.
EOF
}

# Normalizes times and permissions, builds $1 into $out, prints the file name.
pack() {
	find "$1" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
	chmod -R go-w "$1"
	deb=$out/$2_${version}_$3.deb
	dpkg-deb --root-owner-group -Zxz --build "$1" "$deb" >/dev/null ||
		die "dpkg-deb --build $1 failed"
	say "$(basename "$deb")"
}

# --- xpmem-dkms -------------------------------------------------------------
say "version $version, $arch ($multiarch), into $out"
rm -f "$out"/xpmem-dkms_*.deb "$out"/libxpmem0_*.deb "$out"/libxpmem-dev_*.deb
d=$work/xpmem-dkms
src=$d/usr/src/xpmem-$version
mkdir -p "$src/include"
for f in Kbuild Makefile dkms.conf "$gd"/kmod/*.c "$gd"/kmod/*.h; do
	f=$(basename "$f")
	install -m 644 "$gd/kmod/$f" "$src/$f"
done
install -m 644 "$hdr" "$src/include/virtio_xpmem.h"
copyright "$d" xpmem-dkms "GPL-2.0 (virtio_xpmem.h: GPL-2.0 WITH Linux-syscall-note OR BSD-3-Clause)"
control "$d" xpmem-dkms <<EOF
Architecture: all
Section: kernel
Priority: optional
Depends: dkms (>= 2.1.0.0)
Description: virtio-xpmem guest driver (xpmem.ko) in DKMS source form
 XPMEM across virtual machines: /dev/xpmem with the XPMEM user ABI over the
 virtio-xpmem device, so that a process in one VM can attach memory that a
 process in another VM exported, with no copy.
 .
 DKMS builds the module for every installed kernel that has its headers
 (linux-headers-<release>); load it with "modprobe xpmem".
EOF
# The standard DKMS maintainer scripts (what dh_dkms generates).
cat >"$d/DEBIAN/postinst" <<EOF
#!/bin/sh
set -e
DKMS_NAME=xpmem
DKMS_VERSION=$version
case "\$1" in
configure)
	/usr/lib/dkms/common.postinst "\$DKMS_NAME" "\$DKMS_VERSION" "" "" "\$2"
	;;
esac
exit 0
EOF
cat >"$d/DEBIAN/prerm" <<EOF
#!/bin/sh
set -e
DKMS_NAME=xpmem
DKMS_VERSION=$version
case "\$1" in
remove|upgrade|deconfigure)
	if [ "\$(dkms status -m "\$DKMS_NAME" -v "\$DKMS_VERSION")" ]; then
		dkms remove -m "\$DKMS_NAME" -v "\$DKMS_VERSION" --all
	fi
	;;
esac
exit 0
EOF
chmod 755 "$d/DEBIAN/postinst" "$d/DEBIAN/prerm"
pack "$d" xpmem-dkms all

# --- libxpmem0 / libxpmem-dev ------------------------------------------------
# Built from a copy of libxpmem/ so that the packages do not depend on what
# an earlier `make` left there; the debug info is stripped, paths mapped.
b=$work/libxpmem-build
mkdir -p "$b"
cp "$gd"/libxpmem/Makefile "$gd"/libxpmem/libxpmem.c "$gd"/libxpmem/xpmem.h "$gd"/libxpmem/pc.in "$b/"
say "building libxpmem"
make -s -C "$b" CFLAGS="-O2 -g -ffile-prefix-map=$b=." libxpmem.a libxpmem.so.0.0.0 ||
	die "building libxpmem failed (see the compiler output above)"
inst=$work/libxpmem-install
make -s -C "$b" install DESTDIR="$inst" PREFIX=/usr LIBDIR="/usr/lib/$multiarch" >/dev/null
strip --strip-unneeded "$inst/usr/lib/$multiarch/libxpmem.so.0.0.0"
strip --strip-debug "$inst/usr/lib/$multiarch/libxpmem.a"
# The newest glibc symbol version the library needs (what dpkg-shlibdeps would say).
glibc=$(objdump -T "$inst/usr/lib/$multiarch/libxpmem.so.0.0.0" |
	sed -n 's/.*GLIBC_\([0-9.]*\).*/\1/p' | sort -V | tail -1)
[ -n "$glibc" ] || die "cannot read the glibc symbol versions of libxpmem.so (objdump -T)"

r=$work/libxpmem0
mkdir -p "$r/usr/lib/$multiarch"
mv "$inst/usr/lib/$multiarch/libxpmem.so.0.0.0" "$inst/usr/lib/$multiarch/libxpmem.so.0" "$r/usr/lib/$multiarch/"
copyright "$r" libxpmem0 LGPL-2.1-or-later
control "$r" libxpmem0 <<EOF
Architecture: $arch
Multi-Arch: same
Section: libs
Priority: optional
Depends: libc6 (>= $glibc)
Description: XPMEM user library for virtio-xpmem guests (shared library)
 libxpmem with the API of the public XPMEM library (xpmem_make, xpmem_get,
 xpmem_attach, ...) for the virtio-xpmem guest driver (/dev/xpmem, package
 xpmem-dkms), plus named segments (xpmem_make_name, xpmem_search).
EOF
echo "libxpmem 0 libxpmem0 (>= $version)" >"$r/DEBIAN/shlibs"
echo "activate-noawait ldconfig" >"$r/DEBIAN/triggers"
pack "$r" libxpmem0 "$arch"

v=$work/libxpmem-dev
mkdir -p "$v"
mv "$inst/usr" "$v/usr"
copyright "$v" libxpmem-dev LGPL-2.1-or-later
control "$v" libxpmem-dev <<EOF
Architecture: $arch
Multi-Arch: same
Section: libdevel
Priority: optional
Depends: libxpmem0 (= $version)
Description: XPMEM user library for virtio-xpmem guests (development files)
 xpmem.h, the static library, and the pkg-config files xpmem.pc and
 cray-xpmem.pc (the name Open MPI and UCX look for):
 cc prog.c \$(pkg-config --cflags --libs xpmem)
EOF
pack "$v" libxpmem-dev "$arch"
