#!/bin/sh
# Single-VM driver checks, run inside a guest with the virtio-xpmem device:
# `--extra-dir guest-driver/tools/image --run xpmem-local.sh`.
# Prints XPMEM-TEST lines per case and ends with XPMEM-LOCAL PASS|FAIL.
. "$(dirname "$0")/xpmem-cases.sh"
# Both halves of a two-VM pair in this VM: the exporter in the background,
# the importer with the segid the exporter printed.
pair() {
	xpmem-test "$1" >/tmp/pair.out 2>&1 &
	exp=$!
	segid=
	i=0
	while [ $i -lt 600 ] && [ -z "$segid" ]; do
		segid=$(sed -n 's/.* SEGID \([0-9][0-9]*\).*/\1/p' /tmp/pair.out)
		[ -n "$segid" ] || sleep 0.1
		i=$((i + 1))
	done
	if [ -z "$segid" ]; then
		echo "XPMEM-TEST $2 FAIL $1 printed no SEGID in 60 s"
		kill $exp 2>/dev/null
		rc=1
	else
		run "$2" --segid "$segid"
	fi
	wait $exp || rc=1
	cat /tmp/pair.out
	zero "$1"
}
grep -E "^(version|device|aperture)" /proc/xpmem/stats
t version
t local-errors
t get-permit-value
t names
t get-ipc-owner
t whole-space
t self-attach
# Native corner cases (issue 15 item 5); big-segment fills the whole
# read-write aperture, so nothing else is attached while it runs.
t unmapped-range
t holes
t later-mapped
t killed
t threads-fault --threads 8
t one-to-many --timeout 120
t fork-importer
t read-only-local
t big-segment --timeout 120
t local --timeout 60
t local --pages 600 --timeout 120
pair export-fork attach-fork
# The Rust crate (guest-driver/xpmem-rs, example `local`) against the real driver.
if xpmem-rs-local 64; then
	echo "XPMEM-TEST rust-local PASS"
else
	echo "XPMEM-TEST rust-local FAIL xpmem-rs example exited $?"
	rc=1
fi
zero rust-local
# Many concurrent FAULTs/RESOLVEs against munmaps and MADV_DONTNEEDs (the
# e2e group boots this VM with slub_debug=FZPU; the dmesg check below then
# catches a use-after-free in the driver).
t stress-fault-inval --pages 64 --threads 6 --rounds 1000 --timeout 60
# uid 1000 keeps FAULTs pending on a never-answered segment (test_misbehave=
# no_resolve for a while); root's munmap of another segment must return.
t fault-hog --threads 80 --timeout 60
run proc-zero
grep -E "pages pinned|pages unpinned" /proc/xpmem/global_pages
cat /proc/xpmem/stats
# Kernel trouble since the module loaded (from its first "xpmem:" or "xpmem virtioN:" line); boot-time
# warnings of the (nested) platform, e.g. SRSO or xstate, are not ours. slub_debug reports
# start with "BUG <cache> (...): Poison overwritten" and the like.
if dmesg | sed -n '/] xpmem[ :]/,$p' | grep -v XPMEM- |
	grep -E "BUG|WARNING:|Oops|general protection|slub|Redzone|Poison overwritten|use-after-free|Object already free"; then
	rc=1
fi
[ $rc = 0 ] && echo "XPMEM-LOCAL PASS" || echo "XPMEM-LOCAL FAIL"
exit $rc
