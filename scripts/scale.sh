#!/bin/sh
# The e2e `scale` group (issue 12 item 6): 8 VMs of 256 MiB under one monitor
# run a ring of exports and attaches by name (tests/e2e/src/scale_group.rs);
# XPMEM_SCALE_VMS sets the number (2..32). CI runs it with 8 (about 2 minutes
# on the nested QEMU-TCG host). Wrap it in the machine's lock for
# the nested host if other runs share it (flock /tmp/nested.lock ...).
set -u
. "$(dirname "$0")/lib.sh"
build_for_e2e
"$bindir/xpmem-e2e" test --vmm "$bindir/xpmem-vmm" scale
