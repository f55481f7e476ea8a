#!/bin/sh
# The guest half of `xpmem-e2e bench-disk`: the same benchmark the test host
# ran on the image file, on the file as this VM's virtio-blk disk.
. "$(dirname "$0")/xpmem-cases.sh"
run disk-bench --dev /dev/vda --serial bench --pages 64 --rounds 2000
exit $rc
