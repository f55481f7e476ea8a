#!/bin/sh
# VM b of the e2e `xpmem/hostile` case (see xpmem-hostile-a.sh): a hostile
# importer, one test_misbehave mode per case; it waits for each segid.
. "$(dirname "$0")/xpmem-cases.sh"
for trial in 1 2 3 4 5; do
	t attach-hostile --misbehave no_ack               # 1-5
done
t attach-hostile --misbehave no_refill --pages 80         # 6
t attach-hostile --misbehave bad_evbufs --hold 20 --timeout 120  # 7 floods 20 s more while c works
t proc-zero
exit $rc
