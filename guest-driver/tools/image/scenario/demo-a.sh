#!/bin/sh
# VM a of the demo (`./scripts/demo.sh`, `xpmem-e2e demo`): the xpmem
# counters, then export a 64-page buffer and run the exporter's steps
# (xpmem-demo.c, demo-export), then the counters again.
xpmem-demo stats before
xpmem-demo demo-export 64
rc=$?
xpmem-demo stats after
exit $rc
