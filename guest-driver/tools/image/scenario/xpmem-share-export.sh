#!/bin/sh
# Exporter side (VM a) of the e2e `xpmem/share` case; pairs with
# xpmem-share-import.sh in VM b, case by case in the same order. Each exporter
# prints its SEGID line, which the harness types into VM b's console.
rc=0
xpmem-test export || rc=1
# Held while b attaches read-only, then while b is refused a 0600 segment.
xpmem-test export-hold --timeout 8 || rc=1
xpmem-test export-hold --mode 0600 --timeout 8 || rc=1
xpmem-test export-fork || rc=1
xpmem-test export-exit || rc=1
xpmem-test export-unmap || rc=1
xpmem-test proc-zero || rc=1
exit $rc
