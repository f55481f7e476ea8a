//! The part of the i8042 keyboard controller Linux uses to reboot
//! (`reboot=k`): writing 0xFE (pulse the reset line) to the command port.
//! There is no keyboard; the status register says "no data, ready".

use std::sync::Arc;

use crate::bus::BusDevice;
use crate::lifecycle::{ExitHandle, ExitReason};

/// Data port 0x60 and command/status port 0x64 are covered by one device at 0x60.
pub const I8042_BASE: u16 = 0x60;
pub const I8042_LEN: u64 = 5;
#[cfg(test)]
const DATA_OFFSET: u64 = 0;
const COMMAND_OFFSET: u64 = 4;
const CMD_RESET_CPU: u8 = 0xfe;

pub struct I8042 {
    exit: Arc<ExitHandle>,
}

impl I8042 {
    pub fn new(exit: Arc<ExitHandle>) -> Self {
        I8042 { exit }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Status (0x64) 0: output and input buffers empty; data (0x60) reads 0.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == COMMAND_OFFSET && data.first() == Some(&CMD_RESET_CPU) {
            self.exit.request(ExitReason::Reboot);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
mod tests {
    use super::*;

    #[test]
    fn reset_command_reboots() {
        let exit = Arc::new(ExitHandle::new().unwrap());
        let mut dev = I8042::new(exit.clone());
        let mut status = [0xffu8];
        dev.read(COMMAND_OFFSET, &mut status);
        assert_eq!(status, [0]);
        dev.write(COMMAND_OFFSET, &[0xad]);
        dev.write(DATA_OFFSET, &[0xfe]);
        assert!(!exit.is_requested());
        dev.write(COMMAND_OFFSET, &[CMD_RESET_CPU]);
        assert_eq!(exit.reason(), Some(ExitReason::Reboot));
    }
}
