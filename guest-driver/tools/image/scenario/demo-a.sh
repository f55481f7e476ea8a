#!/bin/sh
# VM a of the demo (`./scripts/demo.sh`, `xpmem-e2e demo`): the xpmem
# counters, then export a 64-page buffer, hand its segid to b over TCP
# (port 7000) and run the exporter's steps (xpmem-demo.c, demo-export), then
# the counters again.
xpmem-demo stats before
xpmem-demo demo-export 64 7000
rc=$?
xpmem-demo stats after
exit $rc
