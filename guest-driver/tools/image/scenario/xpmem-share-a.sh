#!/bin/sh
# VM a of the e2e `xpmem/share` case: three VMs a, b, c under one monitor
# (xpmem-share-b.sh and xpmem-share-c.sh are the others). Every exporter prints
# "SEGID n TO vm,..." and tests/e2e's xpmem-relay types "SEGID n" into those
# VMs' consoles; "DONE vm" and "GONE vm" lines come back to a the same way.
# The numbers pair the steps of the three scripts.
. "$(dirname "$0")/xpmem-cases.sh"
t export --name xpmem-share-a --to b         #  0 b finds it by name (no SEGID line)
t export-space --name xpmem-share-space      # 0b whole address space, a hole, SIGKILL
t export --to b                              #  1 b attaches; writes both ways
t export-hold --pages 2048 --until 1 --to b  # 1b b measures bandwidth (8 MiB)
t export-hold --until 1 --to b               #  2 b attaches read-only
t export-hold --mode 0600 --until 2 --to b,c #  3 refused to b (uid 1000) and c (uid 0, like a)
t export-fork --to b                         #  4 copy-on-write after fork
t export-multi --importers 2 --to b,c        #  5 two importers of one segment
t export-multi --to c                        #  6 c attaches this and b's segment
t export-two --to b                          #  7 two segments of one process
t export-multi --to b                        #  8 b attaches this twice
t export-pressure --to c                     #  9 pages move while c reads
t export-unmap --to b                        # 10 b: SIGBUS after the munmap
t export-exit --to c                         # 11 c: SIGBUS after the exit
t export-wait-gone --to b                    # 12 b's importer exits while attached
t export-wait-gone --to c                    # 13 VM c powers off while attached (and exporting to b)
t proc-zero
exit $rc
