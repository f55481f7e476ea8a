#!/bin/sh
# VM b of the e2e `xpmem/share` case (see xpmem-share-a.sh). Each importer
# waits for a "SEGID n" line on the console, typed by xpmem-relay.
. "$(dirname "$0")/xpmem-cases.sh"
t name-taken --name xpmem-share-a            #  0 a's name: found here, not takeable
t attach --name xpmem-share-a                #  0 found by name, read and written
t attach-space --name xpmem-share-space      # 0b attach by a's address; hole; threads
t attach                                     #  1
t attach-bench --pages 2048; echo "XPMEM-POST a DONE b" # 1b
t attach-ro; echo "XPMEM-POST a DONE b"      #  2
t get-denied --uid 1000                      #  3 another uid
echo "XPMEM-POST a DONE b"
t attach-fork                                #  4
t attach-multi --index 0                     #  5
t export-multi --to c                        #  6 b exports too
t attach-two                                 #  7
t attach-twice                               #  8
t attach-gone                                # 10
t attach-exit                                # 12 exits while attached ...
echo "XPMEM-POST a GONE b"                   #    ... and then a munmaps
echo "XPMEM-POST c READY b"
t attach-gone                                # 13 c's VM powers off: SIGBUS
t proc-zero
exit $rc
