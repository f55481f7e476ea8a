#!/bin/sh
# The e2e `kill` group (issue 12 item 2; tests/e2e/src/kill_group.rs): seven
# VMs under one broker; five victims' processes are SIGKILLed at five points
# (exporting with an importer attached, during a FAULT, during an
# INVALIDATE, holding a permit, idle) and the survivors x and y must go on
# with nothing left behind; then a second broker is SIGKILLed and its VM
# processes must be gone within 10 s. CI (scripts/test.sh) runs it too; it
# took 151-163 s on the nested QEMU-TCG host.
# Wrap it in the machine's lock for the nested host if other runs share it
# (flock /tmp/nested.lock ...).
set -u
. "$(dirname "$0")/lib.sh"
build_for_e2e
"$bindir/xpmem-e2e" test --vmm "$bindir/xpmem-vmm" kill
