#!/bin/sh
# Exporter side (VM a) of the e2e `xpmem/share` case; pairs with
# xpmem-share-import.sh in VM b. Each exporter prints its SEGID line, which the
# harness types into VM b's console.
rc=0
xpmem-test export || rc=1
xpmem-test export-unmap || rc=1
xpmem-test proc-zero || rc=1
exit $rc
