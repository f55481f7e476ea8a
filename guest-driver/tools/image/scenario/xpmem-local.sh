#!/bin/sh
# Single-VM driver checks, run inside a guest with the virtio-xpmem device:
# `--extra-dir guest-driver/tools/image --run xpmem-local.sh`.
# Prints XPMEM-TEST lines per case and ends with XPMEM-LOCAL PASS|FAIL.
rc=0
run() { xpmem-test "$@" || rc=1; }
grep -E "^(version|device|aperture)" /proc/xpmem/stats
run version
run local-errors
run local --timeout 60
run local --pages 600 --timeout 120
run proc-zero
grep -E "pages pinned|pages unpinned" /proc/xpmem/global_pages
cat /proc/xpmem/stats
if dmesg | grep -E "BUG:|WARNING:|Oops|general protection"; then rc=1; fi
[ $rc = 0 ] && echo "XPMEM-LOCAL PASS" || echo "XPMEM-LOCAL FAIL"
exit $rc
