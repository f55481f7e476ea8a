#!/bin/sh
# Two-VM case pair: run `xpmem-pair.sh export CASE` in the exporting VM and
# `xpmem-pair.sh import CASE` in the importing VM (e.g. via xpmem.run=).
# The importer reads the segid from xpmem.segid= or a "SEGID n" line on its
# console (see ../README.md). CASE: basic | ro | fork | unmap | exit | denied
role=$1 case=$2
case "$role:$case" in
export:basic) exec xpmem-test export ;;
import:basic) exec xpmem-test attach ;;
export:ro) exec xpmem-test export-hold --timeout 60 ;;
import:ro) exec xpmem-test attach-ro ;;
export:fork) exec xpmem-test export-fork ;;
import:fork) exec xpmem-test attach-fork ;;
export:unmap) exec xpmem-test export-unmap ;;
export:exit) exec xpmem-test export-exit ;;
import:unmap|import:exit) exec xpmem-test attach-gone ;;
export:denied) exec xpmem-test export-hold --mode 0600 --timeout 60 ;;
import:denied) exec xpmem-test get-denied --uid 1000 ;;
*) echo "usage: xpmem-pair.sh export|import basic|ro|fork|unmap|exit|denied" >&2; exit 2 ;;
esac
