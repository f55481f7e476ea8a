#!/bin/sh
# VM b of `xpmem-e2e bench-net`: receives a's transfer, then echoes a's
# round trips.
. "$(dirname "$0")/xpmem-cases.sh"
bytes=$(sed -n 's/.*[[:space:]]xpmem\.netbytes=\([0-9]*\).*/\1/p' /proc/cmdline)
run net-recv --port 5101 --bytes "$bytes" --timeout 180
run vsock-echo --port 5102 --timeout 60
exit $rc
