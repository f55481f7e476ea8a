#!/bin/sh
# VM a of the e2e `vsock` group (tests/e2e/src/vsock_group.rs), CID 3: echoes
# the host's stream on vsock port 5000, then sends the pattern to the host
# (CID 2, port 6000, which the monitor connects to <socket>_6000) and to VM b
# (CID 4, port 7000), after checking that b's guest agent refuses it.
# Kernel command line: xpmem.vsockbytes=N.
bytes=$(sed -n 's/.*[[:space:]]xpmem\.vsockbytes=\([0-9]*\).*/\1/p' /proc/cmdline)
rc=0
xpmem-test vsock-echo --cid 1 --port 5000 --timeout 900 || rc=1
xpmem-test net-send --cid 2 --port 6000 --bytes "$bytes" --timeout 300 || rc=1
# b's guest agent serves the host only.
xpmem-test agent-refused --cid 4 --timeout 120 || rc=1
xpmem-test net-send --cid 4 --port 7000 --bytes "$bytes" --timeout 300 || rc=1
exit $rc
