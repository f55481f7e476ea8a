#!/bin/sh
# VM a of `xpmem-e2e bench-net`: sends xpmem.netbytes bytes of the pattern to
# b over TCP (b checks every word), then 1000 one-byte round trips to b's
# echo server, then the same bytes to b over guest-to-guest vsock (CID 4).
# The test host ran the TCP programs over its loopback.
. "$(dirname "$0")/xpmem-cases.sh"
bytes=$(sed -n 's/.*[[:space:]]xpmem\.netbytes=\([0-9]*\).*/\1/p' /proc/cmdline)
b=$(awk '$2 == "b" { print $1; exit }' /etc/hosts)
run net-send --host "$b" --port 5101 --bytes "$bytes" --timeout 180
run net-rtt --host "$b" --port 5102 --rounds 1000 --timeout 60
run net-send --cid 4 --port 5103 --bytes "$bytes" --timeout 120
exit $rc
