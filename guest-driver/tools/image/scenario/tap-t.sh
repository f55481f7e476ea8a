#!/bin/sh
# The VM `t` of the e2e `tap` group (tests/e2e/src/tap_group.rs): its eth0 is
# on a TAP interface in a network namespace the test host created, not on the
# switch. Kernel command line: xpmem.peers6=t@fe80::..,host@fe80::.. (the
# guest's own and the host side's IPv6 link-local address), xpmem.hostip= (the
# host side's IPv4 link-local address), xpmem.netbytes= (the transfer).
# Prints "XPMEM-TEST <check> PASS|FAIL ..." lines; every wait is bounded.
. "$(dirname "$0")/net-lib.sh"
check_addr
host4=$(arg hostip)
ping_check "ping4/$me-host" "$host4" ping
ping_check "ping6/$me-host" "$(v6_of host)" ping6 -I eth0
# Random data to the host side over TCP; the host prints what it got.
head -c "$bytes" /dev/urandom >/tmp/data
echo "XPMEM-TEST tap-send SENT $(wc -c </tmp/data) bytes sum $(sha256sum </tmp/data | cut -d' ' -f1)"
if send_to "$host4" 5001 60 </tmp/data; then
	res tap-send PASS "to $host4 port 5001"
else
	res tap-send FAIL "could not send to $host4 port 5001"
fi
# The host says DONE after its own pings (normal and over the MTU).
timeout 180 nc -l -p 5002 </dev/null >/tmp/done
if grep -q DONE /tmp/done; then
	res tap-done PASS
else
	res tap-done FAIL "the host sent [$(cat /tmp/done)] on port 5002"
fi
exit $rc
