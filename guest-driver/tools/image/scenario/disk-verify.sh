#!/bin/sh
# VM v of the e2e `disk` group: after the writer's monitor was killed, the
# data disk reads back every word; the second disk is read-only.
. "$(dirname "$0")/xpmem-cases.sh"
run disk-verify --dev /dev/vda --serial data --pages 64
run disk-readonly --dev /dev/vdb --serial ro
exit $rc
