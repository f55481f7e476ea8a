#!/bin/sh
# The demo: installs what is needed, builds, and launches the default two-VM
# setup (VMs a and b, 2 vCPUs and 512 MiB each) with the xpmem-vmm monitor on
# the KVM test host: directly where the CPU has VMX/SVM, otherwise inside a
# nested QEMU-TCG VM with emulated SVM. Both guests boot, print their banner
# and virtio devices, and power off.
set -eu
. "$(dirname "$0")/lib.sh"
install_deps
build_all
say "launching two VMs"
exec "$bindir/xpmem-e2e" demo --vmm "$bindir/xpmem-vmm" "$@"
