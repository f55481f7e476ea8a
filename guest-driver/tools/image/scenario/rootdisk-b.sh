#!/bin/sh
# VM b of the e2e `rootdisk` group: imports a's two named segments.
. "$(dirname "$0")/xpmem-cases.sh"
t attach --name rootdisk-a --timeout 300
t attach-space --name rootdisk-space --timeout 300
run proc-zero
exit $rc
