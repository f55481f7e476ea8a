#!/bin/sh
# Builds a statically linked binary of a workspace package (for copying into the
# L1 test host, which has no libc) and prints its path.
# usage: tests/nested/build-static.sh PACKAGE [BIN] [--release]
set -eu
pkg=${1:?usage: build-static.sh PACKAGE [BIN] [--release]}
bin=${2:-$pkg}
profile=debug
flags=
if [ "${3:-}" = "--release" ] || [ "${2:-}" = "--release" ]; then
	profile=release
	flags=--release
	[ "$bin" = "--release" ] && bin=$pkg
fi
repo=$(cd "$(dirname "$0")/../.." && pwd)
target=${XPMEM_STATIC_TARGET_DIR:-$repo/target-static}
RUSTFLAGS='-C target-feature=+crt-static' CARGO_TARGET_DIR=$target \
	cargo build -q $flags -p "$pkg" --bin "$bin" \
	--target x86_64-unknown-linux-gnu --manifest-path "$repo/Cargo.toml" >&2
out=$target/x86_64-unknown-linux-gnu/$profile/$bin
if ! file "$out" 2>/dev/null | grep -q 'static'; then
	if ldd "$out" >/dev/null 2>&1; then
		echo "build-static.sh: $out is dynamically linked" >&2
		exit 1
	fi
fi
echo "$out"
