#!/bin/sh
# VM a of the e2e `rootdisk` group, on the Debian root image: the xpmem module
# is the one DKMS built in the image, libxpmem and its pkg-config file are
# installed, single-VM cases pass, then b finds two segments by name.
. "$(dirname "$0")/xpmem-cases.sh"
m=$(modinfo -n xpmem 2>&1)
case "$m" in
*/updates/dkms/xpmem.ko*) echo "XPMEM-TEST dkms-module PASS $m" ;;
*) echo "XPMEM-TEST dkms-module FAIL modinfo -n xpmem: '$m'"; rc=1 ;;
esac
l=$(pkg-config --cflags --libs xpmem 2>&1)
case "$l" in
*-lxpmem*) echo "XPMEM-TEST pkg-config PASS $l" ;;
*) echo "XPMEM-TEST pkg-config FAIL pkg-config --cflags --libs xpmem: '$l'"; rc=1 ;;
esac
# A program built against the installed library (shared), as a user would.
printf '#include <xpmem.h>\nint main(void) { return xpmem_version() > 0 ? 0 : 1; }\n' >/tmp/v.c
if cc /tmp/v.c $(pkg-config --cflags --libs xpmem) -o /tmp/v 2>/tmp/cc.err && /tmp/v; then
	echo "XPMEM-TEST libxpmem-link PASS $(ldd /tmp/v | grep -o 'libxpmem[^ ]*' | head -1)"
else
	echo "XPMEM-TEST libxpmem-link FAIL $(head -c 300 /tmp/cc.err)"
	rc=1
fi
t version
t names
t local --timeout 60
t export --name rootdisk-a --to b
t export-space --name rootdisk-space
run proc-zero
exit $rc
