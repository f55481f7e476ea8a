//! Raw mode for the terminal whose input goes to a guest's serial port.
//! Signal keys (Ctrl-C) keep working so the user can always stop the monitor.

use std::io;

/// Restores the saved terminal attributes when dropped.
pub struct RawModeGuard {
    saved: libc::termios,
}

impl RawModeGuard {
    /// Puts stdin in raw mode if it is a terminal; `None` otherwise.
    pub fn enable() -> io::Result<Option<Self>> {
        // SAFETY: isatty only inspects the fd.
        if unsafe { libc::isatty(libc::STDIN_FILENO) } != 1 {
            return Ok(None);
        }
        // SAFETY: termios is plain data; tcgetattr fills it in.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `saved` is a valid termios to write into.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut saved) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut raw = saved;
        // SAFETY: `raw` is a valid termios.
        unsafe { libc::cfmakeraw(&mut raw) };
        raw.c_lflag |= libc::ISIG;
        // Keep output post-processing so the monitor's own messages stay readable.
        raw.c_oflag |= libc::OPOST | libc::ONLCR;
        // SAFETY: `raw` is a valid termios derived from the current one.
        if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Some(RawModeGuard { saved }))
    }
}

impl Drop for RawModeGuard {
    fn drop(&mut self) {
        // SAFETY: restores attributes previously read from the same fd.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.saved) };
    }
}
