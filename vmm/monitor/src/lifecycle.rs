//! How a VM ends, and the handle every part of the VM uses to end it.

use std::fmt;
use std::sync::Mutex;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::bus::lock;

/// Why a VM stopped running.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// ACPI S5 (the guest powered off).
    PowerOff,
    /// The guest asked to reboot (ACPI reset register or i8042 reset line).
    /// A reboot ends the VM; it is not restarted.
    Reboot,
    /// A vCPU triple-faulted (KVM_EXIT_SHUTDOWN). Linux uses this for
    /// `reboot=t`; otherwise it means the guest crashed badly.
    TripleFault { vcpu: u8 },
    /// The monitor stopped it (SIGINT/SIGTERM).
    Stopped,
    /// The VM could not continue.
    Error(String),
}

impl ExitReason {
    /// Whether this is an orderly end chosen by the guest or the user.
    pub fn is_clean(&self) -> bool {
        matches!(
            self,
            ExitReason::PowerOff | ExitReason::Reboot | ExitReason::Stopped
        )
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::PowerOff => write!(f, "powered off"),
            ExitReason::Reboot => write!(f, "rebooted (the VM is not restarted)"),
            ExitReason::TripleFault { vcpu } => write!(f, "vCPU {vcpu} triple-faulted (shutdown)"),
            ExitReason::Stopped => write!(f, "stopped by the monitor"),
            ExitReason::Error(msg) => write!(f, "failed: {msg}"),
        }
    }
}

/// Records the first exit reason of a VM and wakes whoever waits for it.
pub struct ExitHandle {
    reason: Mutex<Option<ExitReason>>,
    event: EventFd,
}

impl ExitHandle {
    pub fn new() -> std::io::Result<Self> {
        Ok(ExitHandle {
            reason: Mutex::new(None),
            event: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// Requests the VM to end. The first reason wins; later ones (for example
    /// vCPUs that notice the stop) are ignored.
    pub fn request(&self, reason: ExitReason) {
        let mut slot = lock(&self.reason);
        if slot.is_none() {
            *slot = Some(reason);
            // A failed eventfd write can only mean the counter overflowed,
            // which implies a wakeup is already pending.
            let _ = self.event.write(1);
        }
    }

    /// The recorded reason, if the VM was asked to end.
    pub fn reason(&self) -> Option<ExitReason> {
        lock(&self.reason).clone()
    }

    pub fn is_requested(&self) -> bool {
        lock(&self.reason).is_some()
    }

    /// Becomes readable once an exit was requested.
    pub fn event(&self) -> &EventFd {
        &self.event
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins_and_signals() {
        let h = ExitHandle::new().unwrap();
        assert!(!h.is_requested());
        assert!(h.event().read().is_err(), "no event before a request");
        h.request(ExitReason::PowerOff);
        h.request(ExitReason::Error("late".into()));
        assert_eq!(h.reason(), Some(ExitReason::PowerOff));
        assert_eq!(h.event().read().unwrap(), 1);
        assert!(ExitReason::Reboot.is_clean());
        assert!(!ExitReason::TripleFault { vcpu: 0 }.is_clean());
    }
}
