#!/bin/sh
# VM b of the demo: the xpmem counters, then attach the segment whose segid
# the harness types on this console after "XPMEM-DEMO WAITING SEGID" and run
# the importer's steps (xpmem-demo.c, demo-attach), then the counters again.
xpmem-demo stats before
xpmem-demo demo-attach
rc=$?
xpmem-demo stats after
exit $rc
