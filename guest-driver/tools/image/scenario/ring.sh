#!/bin/sh
# A VM of the e2e `scale` group (scripts/scale.sh): VM r<i> of
# xpmem.ringsize VMs exports a segment named ring-r<i> and attaches ring-r<i-1>
# (found by name, data checked both ways), then its counters must be back to 0.
. "$(dirname "$0")/xpmem-cases.sh"
me=$(hostname)
n=$(sed -n 's/.*[[:space:]]xpmem\.ringsize=\([0-9]*\).*/\1/p' /proc/cmdline)
i=${me#r}
prev=r$(((i + n - 1) % n))
next=r$(((i + 1) % n))
xpmem-test export --name "ring-$me" --to "$next" --timeout 600 >/tmp/export.out 2>&1 &
exporter=$!
run attach --name "ring-$prev" --timeout 600
wait $exporter || rc=1
cat /tmp/export.out
t proc-zero
exit $rc
