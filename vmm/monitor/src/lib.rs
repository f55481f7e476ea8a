//! xpmem-vmm: a KVM monitor that runs several Linux guests at once, each
//! with a serial console, an entropy device and a virtio-xpmem device that
//! joins one xpmem domain shared by all of them.
//!
//! Module map: [`config`] and [`cli`] describe what to run; [`layout`]
//! fixes the guest-physical memory map; [`memory`] backs RAM with a memfd;
//! [`boot`] loads the kernel and prepares the boot vCPU; [`devices`] and
//! [`bus`] are the legacy platform devices and exit dispatch; [`switch`] runs the
//! VM-to-VM switch; [`exec`] runs a command in a VM through its guest agent; [`vm`] builds and runs one VM, [`vcpu`] is its run loop; [`monitor`] runs them all.

pub mod boot;
pub mod bus;
pub mod cli;
pub mod config;
pub mod devices;
pub mod exec;
pub mod kvm;
pub mod layout;
pub mod lifecycle;
pub mod memory;
pub mod monitor;
pub mod signals;
pub mod switch;
pub mod terminal;
pub mod vcpu;
pub mod vm;
