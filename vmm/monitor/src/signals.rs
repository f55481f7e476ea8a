//! SIGINT/SIGTERM: turned into an eventfd the monitor's main loop polls.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::OnceLock;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::signal::register_signal_handler;

static EVENT: OnceLock<EventFd> = OnceLock::new();
static EVENT_FD: AtomicI32 = AtomicI32::new(-1);
static RECEIVED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(signo: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    RECEIVED.store(signo, Ordering::SeqCst);
    let fd = EVENT_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) is async-signal-safe; `one` is a valid 8-byte
        // buffer and `fd` is the eventfd kept alive for the whole process.
        unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }
}

/// Installs the handlers and returns the eventfd that becomes readable on
/// SIGINT or SIGTERM.
pub fn install() -> std::io::Result<&'static EventFd> {
    let evt = match EVENT.get() {
        Some(evt) => evt,
        None => {
            let evt = EventFd::new(EFD_NONBLOCK)?;
            let evt = EVENT.get_or_init(|| evt);
            EVENT_FD.store(evt.as_raw_fd(), Ordering::SeqCst);
            evt
        }
    };
    for signo in [libc::SIGINT, libc::SIGTERM] {
        register_signal_handler(signo, on_signal)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
    }
    Ok(evt)
}

/// The last signal received, if any.
pub fn received() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// Human name of the signals handled here and of those that end a VM process (the
/// broker reports them); "signal" for any other.
pub fn name(signo: i32) -> &'static str {
    match signo {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGALRM => "SIGALRM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        // A forbidden system call under the seccomp filter (`sandbox`).
        libc::SIGSYS => "SIGSYS",
        _ => "signal",
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_killed_vm_process_is_named_sigkill() {
        assert_eq!(super::name(9), "SIGKILL");
        assert_eq!(super::name(libc::SIGTERM), "SIGTERM");
        assert_eq!(
            super::name(libc::SIGSYS),
            "SIGSYS",
            "how a seccomp kill reads"
        );
        assert_eq!(super::name(libc::SIGWINCH), "signal");
    }
}
