#!/bin/sh
# VM a of `xpmem-e2e stress-forced` (scripts/forced-revocation.sh): xpmem.trials
# times, export to b, whose driver stops acknowledging invalidations
# (test_misbehave=no_ack), and munmap: each munmap must return by the device
# deadline + 10% with b's target revoked by force (xpmem-test export-hostile).
. "$(dirname "$0")/xpmem-cases.sh"
trials=$(sed -n 's/.*[[:space:]]xpmem\.trials=\([0-9]*\).*/\1/p' /proc/cmdline)
i=0
while [ "$i" -lt "${trials:-1}" ]; do
	t export-hostile --to b --until 1
	i=$((i + 1))
done
t proc-zero
exit $rc
