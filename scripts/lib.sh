# Shared helpers of scripts/demo.sh and scripts/test.sh (sourced, not run).

repo=$(cd "$(dirname "$0")/.." && pwd)
# One target dir, statically linked, so the monitor binary can be copied into
# the nested test host (which has no libc) and unit tests reuse the same build.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target}
export RUSTFLAGS=${XPMEM_RUSTFLAGS:--C target-feature=+crt-static}
triple=x86_64-unknown-linux-gnu
bindir=$CARGO_TARGET_DIR/$triple/debug

say() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Installs the Debian packages the build and the tests need (only missing ones).
install_deps() {
	[ "$(id -u)" = 0 ] || die "run as root (apt-get install, /dev/kvm access)"
	pkgs="qemu-system-x86 busybox-static cpio gzip kmod ca-certificates build-essential acpica-tools"
	if [ -e "$repo/guest-driver/Makefile" ]; then
		pkgs="$pkgs linux-headers-amd64"
	fi
	missing=
	for p in $pkgs; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
			missing="$missing $p"
	done
	if [ -n "$missing" ]; then
		say "apt-get install$missing"
		apt-get update -qq || die "apt-get update failed"
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null ||
			die "apt-get install$missing failed"
	fi
	# apt-get download needs up-to-date package lists for the kernel lookup.
	if ! apt-cache depends linux-image-amd64 2>/dev/null | grep -q 'Depends: linux-image-'; then
		apt-get update -qq || die "apt-get update failed"
	fi
	command -v cargo >/dev/null 2>&1 ||
		die "cargo not found: install a Rust toolchain >= 1.85 (e.g. rustup) and re-run"
	rustup target list --installed 2>/dev/null | grep -q "$triple" ||
		rustup target add "$triple" >/dev/null 2>&1 || true
}

# Builds every binary of the workspace (statically linked).
build_all() {
	say "cargo build --workspace --bins (static, $triple)"
	(cd "$repo" && cargo build --workspace --bins --target "$triple")
}

# The Debian kernel release the guests boot, which xpmem.ko must match: what
# linux-image-amd64 depends on (or $XPMEM_KERNEL_PKG), as xpmem-e2e fetches it.
# Installs its headers if missing and prints the release.
guest_kernel_release() {
	if [ -n "${XPMEM_KERNEL_PKG:-}" ]; then
		kver=${XPMEM_KERNEL_PKG#linux-image-}
	else
		kver=$(apt-cache depends linux-image-amd64 2>/dev/null |
			sed -n 's/^ *Depends: linux-image-\(.*-amd64\)$/\1/p' | head -1)
	fi
	[ -n "$kver" ] || die "cannot tell the guest kernel version (apt-cache depends linux-image-amd64 names none)"
	if [ ! -d "/usr/src/linux-headers-$kver" ]; then
		say "apt-get install linux-headers-$kver" >&2
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			"linux-headers-$kver" >/dev/null || die "apt-get install linux-headers-$kver failed"
	fi
	echo "$kver"
}

# Everything an e2e run on the nested host needs, for the stress scripts:
# packages, the workspace's binaries, and xpmem.ko + the guest tools.
build_for_e2e() {
	install_deps
	build_all || die "build failed"
	kver=$(guest_kernel_release)
	make -C "$repo/guest-driver" KVER="$kver" all >/dev/null || die "guest-driver build failed"
}
