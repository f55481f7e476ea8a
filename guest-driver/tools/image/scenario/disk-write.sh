#!/bin/sh
# VM w of the e2e `disk` group: write 64 MiB of a pattern to the data disk and
# fsync it; the host kills the monitor once SYNCED is printed.
. "$(dirname "$0")/xpmem-cases.sh"
run disk-write --dev /dev/vda --serial data --pages 64
# Stay up: the host's SIGKILL ends this run, not a clean shutdown.
sleep 600
exit $rc
