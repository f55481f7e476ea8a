#!/bin/sh
# VM c of the e2e `net` group (see net-lib.sh): pings, then on a's GO floods
# the switch (UDP broadcasts, frames with a group source address, runts)
# until a's STOP or xpmem.floodsecs.
. "$(dirname "$0")/net-lib.sh"
check_addr
ping_matrix
timeout 1200 nc -l -p 5003 </dev/null >/dev/null || res flood/go FAIL "no GO from a"
(timeout $((floodsecs + 60)) nc -l -p 5004 </dev/null >/dev/null; touch /tmp/net-flood.stop) &
xpmem-test net-flood --dev eth0 --seconds "$floodsecs" --stop /tmp/net-flood.stop || rc=1
wait
exit $rc
