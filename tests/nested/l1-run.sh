#!/bin/sh
# Builds the e2e harness and runs `xpmem-e2e l1-run "$@"`: runs a command on the
# KVM test host (an L1 QEMU-TCG VM with nested SVM where the host has no usable
# hardware KVM). See tests/nested/README.md.
set -eu
repo=$(cd "$(dirname "$0")/../.." && pwd)
target=${XPMEM_E2E_TARGET_DIR:-$repo/target-e2e}
CARGO_TARGET_DIR=$target cargo build -q -p xpmem-e2e --manifest-path "$repo/Cargo.toml" >&2
exec "$target/debug/xpmem-e2e" l1-run "$@"
