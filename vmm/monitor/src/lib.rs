//! xpmem-vmm: a KVM monitor that runs several Linux guests at once, each
//! with a serial console, an entropy device and a virtio-xpmem device that
//! joins one xpmem domain shared by all of them.
//!
//! Module map: [`config`] and [`cli`] describe what to run; [`layout`]
//! fixes the guest-physical memory map; [`memory`] backs RAM with a memfd;
//! [`boot`] loads the kernel and prepares the boot vCPU; [`devices`] and
//! [`bus`] are the legacy platform devices and exit dispatch; [`switch`] runs the
//! VM-to-VM switch; [`exec`] runs a command in a VM through its guest agent; [`vm`] builds and runs one VM, [`vcpu`] is its run loop; [`monitor`] runs them all.

/// `eprintln!` that writes the whole line with one `write` (a line of at
/// most `PIPE_BUF` bytes then reaches a pipe in one piece): `eprintln!`
/// writes each formatted part on its own, and the VMs' console lines, written
/// to the same pipe by other threads, landed in the middle of the monitor's
/// at-exit lines.
#[macro_export]
macro_rules! report {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let line = format!("{}\n", format_args!($($arg)*));
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }};
}

pub mod boot;
pub mod broker;
pub mod bus;
pub mod cli;
pub mod config;
pub mod devices;
pub(crate) mod events;
pub mod exec;
pub mod join;
pub mod kvm;
pub mod layout;
pub mod lifecycle;
pub mod logging;
pub mod memory;
pub mod monitor;
pub mod sandbox;
pub mod signals;
pub mod switch;
pub mod terminal;
pub mod vcpu;
pub mod vm;
pub mod vm_process;
