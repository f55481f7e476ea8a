//! ACPI hardware-reduced power management: the FADT sleep control, sleep
//! status and reset registers (I/O ports defined by `vmm-acpi`).

use std::sync::Arc;

use vmm_acpi::{is_s5_request, RESET_PORT, RESET_VALUE, SLEEP_CONTROL_PORT, SLEEP_STATUS_PORT};

use crate::bus::BusDevice;
use crate::lifecycle::{ExitHandle, ExitReason};

/// The registers are three consecutive byte ports starting here.
pub const ACPI_PM_BASE: u16 = SLEEP_CONTROL_PORT;
pub const ACPI_PM_LEN: u64 = 3;
const SLEEP_CONTROL: u64 = 0;
const RESET: u64 = (RESET_PORT - SLEEP_CONTROL_PORT) as u64;

// The single-device layout above relies on the port assignment of vmm-acpi.
const _: () = assert!(SLEEP_STATUS_PORT == SLEEP_CONTROL_PORT + 1);
const _: () = assert!(RESET_PORT == SLEEP_CONTROL_PORT + 2);

pub struct AcpiPm {
    exit: Arc<ExitHandle>,
}

impl AcpiPm {
    pub fn new(exit: Arc<ExitHandle>) -> Self {
        AcpiPm { exit }
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Sleep status: never "woken"; the other registers are write-only.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else {
            return;
        };
        match offset {
            SLEEP_CONTROL if is_s5_request(value) => self.exit.request(ExitReason::PowerOff),
            RESET if value == RESET_VALUE => self.exit.request(ExitReason::Reboot),
            // Other sleep states are not supported; writes to the status
            // register (clearing WAK_STS) need no action.
            _ => log::debug!("acpi-pm: write {value:#x} at offset {offset} ignored"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
mod tests {
    use super::*;
    use vmm_acpi::SLEEP_CONTROL_S5_VALUE;

    fn dev() -> (AcpiPm, Arc<ExitHandle>) {
        let exit = Arc::new(ExitHandle::new().unwrap());
        (AcpiPm::new(exit.clone()), exit)
    }

    #[test]
    fn s5_powers_off() {
        let (mut pm, exit) = dev();
        // S3 (SLP_TYP 3) and a bare SLP_TYP without SLP_EN do nothing.
        pm.write(SLEEP_CONTROL, &[(3 << 2) | 0x20]);
        pm.write(SLEEP_CONTROL, &[5 << 2]);
        pm.write(1, &[0x80]);
        assert!(!exit.is_requested());
        pm.write(SLEEP_CONTROL, &[SLEEP_CONTROL_S5_VALUE]);
        assert_eq!(exit.reason(), Some(ExitReason::PowerOff));
    }

    #[test]
    fn reset_value_reboots() {
        let (mut pm, exit) = dev();
        pm.write(RESET, &[0x02]);
        pm.write(RESET, &[]);
        assert!(!exit.is_requested());
        pm.write(RESET, &[RESET_VALUE]);
        assert_eq!(exit.reason(), Some(ExitReason::Reboot));
        let mut status = [0xff];
        pm.read(1, &mut status);
        assert_eq!(status, [0]);
    }
}
