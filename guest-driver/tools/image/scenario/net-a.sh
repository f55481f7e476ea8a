#!/bin/sh
# VM a of the e2e `net` group (see net-lib.sh): pings, sends the transfer to
# b, then a second one while c floods the switch, then exports a segment and
# sends its segid to b over TCP.
. "$(dirname "$0")/net-lib.sh"
check_addr
ping_matrix
# b listens for the data once its pings are done; c floods on GO.
send_to b 5000 300 </dev/null || res transfer/ready FAIL "b never opened port 5000"
xpmem-test net-send --host "$(addr_of b)" --port 5001 --bytes "$bytes" --timeout 600 || rc=1
send_to c 5003 300 </dev/null || res flood/go FAIL "c never opened port 5003"
sleep 2
xpmem-test net-send --host "$(addr_of b)" --port 5005 --bytes "$floodbytes" --timeout 300 || rc=1
send_to c 5004 120 </dev/null || res flood/stop FAIL "c never took the STOP"
# XPMEM: the segid goes to b over TCP, not through the console.
xpmem-test export --timeout 300 >/tmp/export.out 2>&1 &
exporter=$!
i=0
segid=
while [ $i -lt 600 ] && [ -z "$segid" ]; do
	segid=$(sed -n 's/^XPMEM-TEST export SEGID \([0-9]*\) .*/\1/p' /tmp/export.out)
	kill -0 $exporter 2>/dev/null || break
	sleep 0.1
	i=$((i + 1))
done
if [ -n "$segid" ]; then
	echo "SEGID $segid" | send_to b 5002 120 && res xpmem-tcp/segid-sent PASS "segid $segid to b"
else
	res xpmem-tcp/segid-sent FAIL "the exporter printed no SEGID"
fi
wait $exporter || rc=1
cat /tmp/export.out
exit $rc
