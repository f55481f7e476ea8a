#!/bin/sh
# VM c of the e2e `xpmem/share` case (see xpmem-share-a.sh). Ends by powering
# off while attached to a's segment and while b is attached to c's;
# xpmem-relay tells a once the monitor reports c's end.
. "$(dirname "$0")/xpmem-cases.sh"
t get-denied --uid 0                         #  3 same uid as the exporter, other VM
echo "XPMEM-POST a DONE c"
t attach-multi --index 1                     #  5
t attach-two                                 #  6 a's and b's segments at once
t attach-follow --pages 511                  #  9
t attach-gone                                # 11
t proc-zero
echo "XPMEM-POST-AT-EXIT a GONE c"
t export-poweroff --to b                     # 13 exporting to b and attached
                                             #    to a; does not return
exit 1
