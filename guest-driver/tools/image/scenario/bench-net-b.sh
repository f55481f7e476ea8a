#!/bin/sh
# VM b of `xpmem-e2e bench-net`: receives a's TCP transfer, echoes a's round
# trips, then receives a's vsock transfer.
. "$(dirname "$0")/xpmem-cases.sh"
bytes=$(sed -n 's/.*[[:space:]]xpmem\.netbytes=\([0-9]*\).*/\1/p' /proc/cmdline)
run net-recv --port 5101 --bytes "$bytes" --timeout 180
run vsock-echo --port 5102 --timeout 60
run net-recv --cid 1 --port 5103 --bytes "$bytes" --timeout 180
exit $rc
