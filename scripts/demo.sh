#!/bin/sh
# The demo: installs what is needed, builds the monitor, the harness and the
# guest driver, and runs `xpmem-e2e demo`: the default two VMs a and b
# (2 vCPUs and 512 MiB each) under the xpmem-vmm monitor on the KVM test host
# (directly where the CPU has VMX/SVM, otherwise inside a nested QEMU-TCG VM
# with emulated SVM). VM a exports a buffer with XPMEM, VM b attaches it,
# writes go both ways, a unmaps and b's next touch gets SIGBUS. It prints each
# step, the xpmem counters of both guests and of the host, and a verdict;
# exits non-zero if any step failed. Extra arguments go to `xpmem-e2e demo`
# (e.g. --verbose for the whole console).
set -eu
. "$(dirname "$0")/lib.sh"
install_deps
build_all

kver=$(guest_kernel_release)
mkdir -p "$repo/build/logs"
glog=$repo/build/logs/guest-driver-build.txt
say "make -C guest-driver all (xpmem.ko for $kver, libxpmem, xpmem-demo)"
if ! make -C "$repo/guest-driver" KVER="$kver" all >"$glog" 2>&1; then
	tail -30 "$glog"
	die "the guest driver did not build (full log: $glog)"
fi

say "running the demo (xpmem-e2e demo)"
exec "$bindir/xpmem-e2e" demo --vmm "$bindir/xpmem-vmm" "$@"
