#!/bin/sh
# VM b of the e2e `vsock` group (tests/e2e/src/vsock_group.rs), CID 4:
# receives VM a's stream on vsock port 7000 and checks every word.
bytes=$(sed -n 's/.*[[:space:]]xpmem\.vsockbytes=\([0-9]*\).*/\1/p' /proc/cmdline)
exec xpmem-test net-recv --cid 1 --port 7000 --bytes "$bytes" --timeout 1800
