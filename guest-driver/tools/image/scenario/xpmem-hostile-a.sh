#!/bin/sh
# VM a of the e2e `xpmem/hostile` case (issue 13): a exports to b, whose
# driver turns hostile (test_misbehave) once it has read everything; every
# munmap must return by the device deadline + 10% and b must get SIGBUS
# (xpmem-test export-hostile / attach-hostile). Meanwhile c times its own
# requests (xpmem-hostile-c.sh). xpmem-relay types segids and GO.
. "$(dirname "$0")/xpmem-cases.sh"
echo "XPMEM-POST c GO a"
t export-hostile --to b,c --until 1                       # 1 b no_ack: revoked at the deadline;
                                                          #   c: refused by the host's import policy
for trial in 2 3 4 5; do                                  # 2-5 the same forced revocation four more
	t export-hostile --to b --until 1                 #   times (5 trials, issue 12 item 3)
done
t export-hostile --to b --pages 80 --chunks 66 --until 1  # 6 b no_refill: 65 single-page munmaps use up
                                                          #   its 64 event buffers, then it is revoked
t export-hostile --to b --timeout 120                     # 7 b bad_evbufs: still acknowledges, none revoked
                                                          #   (b holds 20 s; once its SIGBUS took 41 s)
t proc-zero
exit $rc
