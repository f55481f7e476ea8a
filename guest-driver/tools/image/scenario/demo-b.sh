#!/bin/sh
# VM b of the demo: the xpmem counters, then get the segid from a over TCP
# (host name a from /etc/hosts, port 7000), attach it and run the importer's
# steps (xpmem-demo.c, demo-attach), then the counters again.
xpmem-demo stats before
xpmem-demo demo-attach a:7000
rc=$?
xpmem-demo stats after
exit $rc
