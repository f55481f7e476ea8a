#!/bin/sh
# VM b of `xpmem-e2e stress-forced` (see forced-a.sh): the importer that stops
# acknowledging; after each forced revocation its next touch must be SIGBUS.
. "$(dirname "$0")/xpmem-cases.sh"
trials=$(sed -n 's/.*[[:space:]]xpmem\.trials=\([0-9]*\).*/\1/p' /proc/cmdline)
i=0
while [ "$i" -lt "${trials:-1}" ]; do
	t attach-hostile --misbehave no_ack
	i=$((i + 1))
done
t proc-zero
exit $rc
