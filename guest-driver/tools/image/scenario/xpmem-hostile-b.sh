#!/bin/sh
# VM b of the e2e `xpmem/hostile` case (see xpmem-hostile-a.sh): a hostile
# importer, one test_misbehave mode per case; it waits for each segid.
. "$(dirname "$0")/xpmem-cases.sh"
t attach-hostile --misbehave no_ack                       # 1
t attach-hostile --misbehave no_refill --pages 80         # 2
t attach-hostile --misbehave bad_evbufs --hold 20 --timeout 120  # 3 floods 20 s more while c works
t proc-zero
exit $rc
