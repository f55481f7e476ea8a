#!/bin/sh
# Importer side (VM b) of the e2e `xpmem/share` case: each case waits for a
# "SEGID n" line on the console (typed by the harness), in the exporter's order.
rc=0
xpmem-test attach || rc=1
xpmem-test attach-ro || rc=1
xpmem-test get-denied --uid 1000 || rc=1
xpmem-test attach-fork || rc=1
xpmem-test attach-gone || rc=1
xpmem-test attach-gone || rc=1
xpmem-test proc-zero || rc=1
exit $rc
