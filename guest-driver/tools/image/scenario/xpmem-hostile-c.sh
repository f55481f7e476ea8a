#!/bin/sh
# VM c of the e2e `xpmem/hostile` case (see xpmem-hostile-a.sh): a bystander
# timing its own export/attach/munmap rounds while b misbehaves.
. "$(dirname "$0")/xpmem-cases.sh"
t get-denied --uid 0                                      # import_from = {}: EACCES, even as root
t local-latency --timeout 75
t proc-zero
exit $rc
