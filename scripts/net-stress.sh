#!/bin/sh
# The e2e `net` group with the issue's 256 MiB a->b transfer under c's flood
# too (CI sends 256 MiB unflooded and FLOOD_MIB of tests/e2e/src/net_group.rs
# under the flood, to fit its budget). Measured 2026-12-06 on the nested
# QEMU-TCG host, before the offloads: 256 MiB in 327.5 s (0.8 MiB/s) while c
# flooded the switch for 300 s; the whole group 406 s. XPMEM_NET_MIB and
# XPMEM_NET_FLOOD_MIB override the sizes. Wrap it in the machine's lock for
# the nested host if other runs share it (flock /tmp/nested.lock ...).
set -u
. "$(dirname "$0")/lib.sh"
build_for_e2e
XPMEM_NET_MIB=${XPMEM_NET_MIB:-256} XPMEM_NET_FLOOD_MIB=${XPMEM_NET_FLOOD_MIB:-256} \
	"$bindir/xpmem-e2e" test --vmm "$bindir/xpmem-vmm" net
