# Sourced by the xpmem-*.sh scenario scripts (not run): case runners that
# check this VM's /proc/xpmem current counters are back to 0 after a case
# (a failure prints "XPMEM-TEST counters-after-<case> FAIL ...").
rc=0
run() { xpmem-test "$@" || rc=1; }
zero() {
	xpmem-test proc-zero >/tmp/pz 2>&1 ||
		{ rc=1; sed "s/XPMEM-TEST proc-zero /XPMEM-TEST counters-after-$1 /" /tmp/pz; }
}
# Run a case, then check the counters (proc-zero is itself that check).
t() {
	run "$@"
	[ "$1" = proc-zero ] || zero "$1"
}
