#!/bin/sh
# VM b of the e2e `net` group (see net-lib.sh): pings, receives a's two
# transfers (the second under c's flood) and checks every word, then attaches a's segment by the segid that came
# over TCP.
. "$(dirname "$0")/net-lib.sh"
check_addr
ping_matrix
xpmem-test net-recv --port 5001 --bytes "$bytes" --timeout 600 >/tmp/recv.out 2>&1 &
receiver=$!
timeout 300 nc -l -p 5000 </dev/null >/dev/null
wait $receiver || rc=1
cat /tmp/recv.out
# The second transfer, under c's flood.
xpmem-test net-recv --port 5005 --bytes "$floodbytes" --timeout 600 || rc=1
timeout 300 nc -l -p 5002 </dev/null >/tmp/segid
segid=$(sed -n 's/^SEGID \([0-9]*\)$/\1/p' /tmp/segid)
if [ -n "$segid" ]; then
	res xpmem-tcp/segid-received PASS "segid $segid from a"
	xpmem-test attach --segid "$segid" --timeout 120 || rc=1
else
	res xpmem-tcp/segid-received FAIL "got [$(cat /tmp/segid)] on port 5002"
fi
exit $rc
