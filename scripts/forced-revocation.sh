#!/bin/sh
# Forced revocation end to end, many trials (issue 12 item 3; CI runs five
# inside the e2e `xpmem` group's hostile case):
#   scripts/forced-revocation.sh [TRIALS]     default 100
# VM a exports to VM b and unmaps while b's driver never acknowledges the
# invalidation (test_misbehave=no_ack); every munmap must return by the
# monitor's deadline (4 s) + 10%, b's next touch must be SIGBUS, and nothing
# may leak. Prints the munmap times (min, median, mean, p99, max) and
# PASSED/FAILED. About 10 s per trial on the nested QEMU-TCG host. Wrap it
# in the machine's lock for the nested host if other runs share it
# (flock /tmp/nested.lock ...).
set -u
. "$(dirname "$0")/lib.sh"
build_for_e2e
"$bindir/xpmem-e2e" stress-forced --vmm "$bindir/xpmem-vmm" "${1:-100}"
