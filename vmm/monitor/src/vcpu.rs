//! The vCPU run loop: one thread per vCPU, dispatching port I/O and MMIO
//! exits to the VM's buses until the VM is asked to end.

use std::sync::Arc;
use std::thread::JoinHandle;

use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::bus::Bus;
use crate::lifecycle::{ExitHandle, ExitReason};

/// Signal used to knock vCPU threads out of KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

extern "C" fn noop_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) handler of the kick signal; its only effect is that
/// a blocked KVM_RUN returns EINTR. Call once before starting vCPUs.
pub fn install_kick_handler() -> std::io::Result<()> {
    register_signal_handler(kick_signal(), noop_handler)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

/// Interrupts `thread` if it is inside KVM_RUN.
pub fn kick<T>(thread: &JoinHandle<T>) {
    // ESRCH (thread already gone) is fine: it then needs no kick.
    let _ = thread.kill(kick_signal());
}

/// What a vCPU thread needs besides its fd.
pub struct VcpuContext {
    pub vm_name: String,
    pub id: u8,
    pub pio: Bus,
    pub mmio: Bus,
    pub exit: Arc<ExitHandle>,
}

/// Runs the vCPU until the VM is asked to end.
pub fn run(mut vcpu: VcpuFd, ctx: VcpuContext) {
    while !ctx.exit.is_requested() {
        let result = vcpu.run();
        match result {
            Ok(exit) => {
                if let Some(reason) = handle_exit(&ctx, exit) {
                    ctx.exit.request(reason);
                }
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => ctx.exit.request(ExitReason::Error(format!(
                "vCPU {}: KVM_RUN failed: {e}",
                ctx.id
            ))),
        }
    }
    if ctx.exit.reason() == Some(ExitReason::Stopped) {
        report_position(&vcpu, &ctx);
    }
}

/// Says where a vCPU was when the monitor stopped the VM: the first thing
/// to look at when a guest hangs (map RIP with the guest's System.map).
fn report_position(vcpu: &VcpuFd, ctx: &VcpuContext) {
    let state = match vcpu.get_mp_state().map(|m| m.mp_state) {
        Ok(kvm_bindings::KVM_MP_STATE_RUNNABLE) => "running",
        Ok(kvm_bindings::KVM_MP_STATE_UNINITIALIZED) => "waiting for INIT",
        Ok(kvm_bindings::KVM_MP_STATE_INIT_RECEIVED) => "waiting for SIPI",
        Ok(kvm_bindings::KVM_MP_STATE_HALTED) => "halted",
        Ok(_) => "in another state",
        Err(_) => "in an unknown state",
    };
    match vcpu.get_regs() {
        Ok(regs) => crate::report!(
            "xpmem-vmm: VM {} vCPU {}: stopped while {state}, rip {:#x} rsp {:#x} rflags {:#x}",
            ctx.vm_name,
            ctx.id,
            regs.rip,
            regs.rsp,
            regs.rflags
        ),
        Err(e) => crate::report!(
            "xpmem-vmm: VM {} vCPU {}: stopped while {state} (registers unavailable: {e})",
            ctx.vm_name,
            ctx.id
        ),
    }
}

/// Handles one exit; returns a reason when the VM must end.
fn handle_exit(ctx: &VcpuContext, exit: VcpuExit<'_>) -> Option<ExitReason> {
    match exit {
        VcpuExit::IoIn(port, data) => {
            if !ctx.pio.read(u64::from(port), data) {
                // Nothing decodes this port: the bus floats high.
                data.fill(0xff);
            }
        }
        VcpuExit::IoOut(port, data) => {
            ctx.pio.write(u64::from(port), data);
        }
        VcpuExit::MmioRead(addr, data) => {
            if !ctx.mmio.read(addr, data) {
                log::debug!("vCPU {}: MMIO read of unassigned {addr:#x}", ctx.id);
                data.fill(0);
            }
        }
        VcpuExit::MmioWrite(addr, data) => {
            if !ctx.mmio.write(addr, data) {
                log::debug!("vCPU {}: MMIO write to unassigned {addr:#x}", ctx.id);
            }
        }
        // With the in-kernel irqchip HLT is handled by KVM; these are benign.
        VcpuExit::Hlt | VcpuExit::Intr | VcpuExit::IrqWindowOpen => {}
        VcpuExit::Shutdown => return Some(ExitReason::TripleFault { vcpu: ctx.id }),
        VcpuExit::SystemEvent(kind, _) => {
            return Some(match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => ExitReason::PowerOff,
                KVM_SYSTEM_EVENT_RESET => ExitReason::Reboot,
                KVM_SYSTEM_EVENT_CRASH => {
                    ExitReason::Error(format!("vCPU {}: guest crash event", ctx.id))
                }
                other => ExitReason::Error(format!("vCPU {}: system event {other}", ctx.id)),
            })
        }
        VcpuExit::FailEntry(reason, cpu) => {
            return Some(ExitReason::Error(format!(
                "vCPU {}: KVM could not enter the guest (hardware reason {reason:#x}, cpu {cpu})",
                ctx.id
            )))
        }
        VcpuExit::InternalError => {
            return Some(ExitReason::Error(format!(
                "vCPU {}: KVM internal error (emulation failure)",
                ctx.id
            )))
        }
        other => {
            return Some(ExitReason::Error(format!(
                "vCPU {}: unexpected exit {other:?}",
                ctx.id
            )))
        }
    }
    None
}
