//! seccomp filters for the broker and the VM processes (issue 12 item 4).
//!
//! Each process kind installs an allow-list filter once its set-up is done (every thread
//! it will ever have is running, every file it needs is open), for all of its threads
//! (`SECCOMP_FILTER_FLAG_TSYNC`), with `no_new_privs`. A system call outside the list
//! kills that process only (`SECCOMP_RET_KILL_PROCESS`); for a VM process the broker then
//! cleans up as for any VM process that dies. `[monitor] seccomp = "log"` lets such calls
//! through and has the kernel log them (to find what a new code path needs), `"off"`
//! installs nothing (`no_new_privs` is set anyway).
//!
//! What is left out: process creation (`fork`, `clone` without `CLONE_THREAD`, `execve`;
//! a VM process starts no thread after set-up either, the broker one per VM that joins),
//! new files by path (`open`/`openat` only in the
//! broker, which removes its runtime directory at the end), mounting, ptrace, module
//! loading, `bpf`, namespaces, `kexec`, and everything else not listed.

use std::collections::BTreeMap;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

/// Errors installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot build the seccomp filter: {0}")]
    Build(#[from] seccompiler::BackendError),
    #[error("cannot install the seccomp filter: {0} (the kernel needs CONFIG_SECCOMP_FILTER; set [monitor] seccomp = \"off\" to run without)")]
    Install(#[from] seccompiler::Error),
    #[error("cannot set no_new_privs: {0}")]
    NoNewPrivs(std::io::Error),
    #[error("cannot install the SIGSYS handler: {0}")]
    Handler(std::io::Error),
}

/// `[monitor] seccomp` (also sent to a VM that joins the setup).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SeccompMode {
    /// A call outside the allow-list kills the process.
    #[default]
    Kill,
    /// A call outside the allow-list is logged by the kernel and allowed.
    Log,
    /// No filter.
    Off,
}

/// Which process a filter is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessKind {
    Broker,
    Vm,
}

/// Calls every process kind makes while it runs: memory, threads' synchronisation,
/// signals, time, polling, its already open files and sockets.
const COMMON: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_close,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_lseek,
    libc::SYS_fcntl,
    libc::SYS_ioctl,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_mremap,
    libc::SYS_brk,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
    libc::SYS_clock_gettime,
    libc::SYS_gettimeofday,
    libc::SYS_getrandom,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_restart_syscall,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_tgkill,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_poll,
    libc::SYS_ppoll,
    // No epoll_create1 here: every event loop's epoll instance is made before the filter
    // (the event threads', the main waits', the switch's and the router's during set-up;
    // a broker-vm thread's before its VM process is welcomed, which is before that
    // process reports itself built, and the broker installs its filter only after all
    // have). The one exception, a VM that joins later, is in `BROKER_ONLY`.
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    // The hub's deadline timer re-arms its timerfd (made before the filter) as deadlines come.
    libc::SYS_timerfd_settime,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_accept4,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_shutdown,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_prctl,
    libc::SYS_rseq,
    libc::SYS_set_robust_list,
];

/// A VM process also: connects to host programs' vsock sockets (`<socket>_<port>`),
/// punches holes in disk images (discard, write zeroes), and removes its vsock socket
/// at the end.
const VM_ONLY: &[i64] = &[
    libc::SYS_socket,
    libc::SYS_connect,
    libc::SYS_fallocate,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
];

/// The broker also: signals and reaps its VM processes (through pidfds for VMs that
/// joined), admits joining VMs (a pidfd, a switch port it connects, a serving thread:
/// `clone` for threads only, see [`THREADS_ONLY`]), and removes its runtime directory
/// (and the sockets in it) at the end.
const BROKER_ONLY: &[i64] = &[
    // The serving thread of a VM that joins makes its event loop after the filter.
    libc::SYS_epoll_create1,
    libc::SYS_kill,
    libc::SYS_pidfd_open,
    libc::SYS_pidfd_send_signal,
    libc::SYS_socket,
    libc::SYS_connect,
    libc::SYS_wait4,
    libc::SYS_waitid,
    libc::SYS_openat,
    libc::SYS_getdents64,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_rmdir,
];

/// `clone` flags a new thread has and a new process has not.
const THREADS_ONLY: u64 = libc::CLONE_THREAD as u64;

/// The filter of `kind` with `mismatch` for calls outside its list.
pub fn filter(kind: ProcessKind, mismatch: SeccompAction) -> Result<BpfProgram, SandboxError> {
    use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};
    let extra = match kind {
        ProcessKind::Broker => BROKER_ONLY,
        ProcessKind::Vm => VM_ONLY,
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = COMMON
        .iter()
        .chain(extra)
        .map(|&nr| (nr, Vec::new()))
        .collect();
    if kind == ProcessKind::Broker {
        // A thread for each VM that joins, never a process. glibc creates threads with
        // clone3, whose flags sit in memory a filter cannot read: clone3 is allowed here
        // and answered ENOSYS by `clone3_unsupported`, and glibc falls back to clone.
        let thread = SeccompCondition::new(
            0,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(THREADS_ONLY),
            THREADS_ONLY,
        )?;
        rules.insert(libc::SYS_clone, vec![SeccompRule::new(vec![thread])?]);
        rules.insert(libc::SYS_clone3, Vec::new());
    }
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, TargetArch::x86_64)?;
    Ok(filter.try_into()?)
}

/// The second filter of a process that may start threads: `clone3` fails with ENOSYS
/// (with two filters the kernel takes the stricter answer, so this wins over the first
/// filter's allowing it).
fn clone3_unsupported() -> Result<BpfProgram, SandboxError> {
    let rules = BTreeMap::from([(libc::SYS_clone3, Vec::new())]);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        TargetArch::x86_64,
    )?;
    Ok(filter.try_into()?)
}

/// Sets `no_new_privs` and, unless `mode` is off, installs `kind`'s filter on every
/// thread of this process.
pub fn install(kind: ProcessKind, mode: SeccompMode) -> Result<(), SandboxError> {
    let mismatch = match mode {
        SeccompMode::Off => None,
        SeccompMode::Kill => {
            install_sigsys_reporter()?;
            Some(SeccompAction::Trap)
        }
        SeccompMode::Log => Some(SeccompAction::Log),
    };
    let program = mismatch.map(|m| filter(kind, m)).transpose()?;
    let threads = match (kind, program.is_some()) {
        (ProcessKind::Broker, true) => Some(clone3_unsupported()?),
        _ => None,
    };
    apply(program.as_ref(), threads.as_ref())
}

/// Offset of `si_syscall` in a SIGSYS `siginfo_t` on x86_64 (after `si_signo`, `si_errno`,
/// `si_code`, padding and `si_call_addr`).
const SI_SYSCALL_OFFSET: usize = 24;

/// SIGSYS from the filter: says which call was forbidden on stderr, then dies by SIGSYS
/// (the default action), so the broker sees the process killed by it. Only
/// async-signal-safe calls, all on the allow-list, no allocation.
extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for SIGSYS, whose `si_syscall` is an
    // i32 at SI_SYSCALL_OFFSET.
    let nr = unsafe {
        info.cast::<u8>()
            .add(SI_SYSCALL_OFFSET)
            .cast::<i32>()
            .read_unaligned()
    };
    let mut digits = [0u8; 10];
    let mut n = u32::try_from(nr).unwrap_or(0);
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 || start == 0 {
            break;
        }
    }
    let parts: [&[u8]; 3] = [
        b"xpmem-vmm: seccomp: forbidden system call ",
        &digits[start..],
        b" (see vmm/monitor/src/sandbox.rs); stopping this process\n",
    ];
    // SAFETY: write(2) of a stack buffer to stderr; then the default SIGSYS action for
    // this thread's process (sigaction with SIG_DFL and raise are async-signal-safe).
    unsafe {
        for part in parts {
            libc::write(2, part.as_ptr().cast(), part.len());
        }
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(libc::SIGSYS, &dfl, std::ptr::null_mut());
        libc::raise(libc::SIGSYS);
    }
}

fn install_sigsys_reporter() -> Result<(), SandboxError> {
    // SAFETY: a zeroed sigaction is valid; the handler has the SA_SIGINFO signature and
    // is async-signal-safe.
    let rc = unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = on_sigsys as *const () as usize;
        act.sa_flags = libc::SA_SIGINFO;
        libc::sigaction(libc::SIGSYS, &act, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(SandboxError::Handler(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Sets `no_new_privs` and installs `second` and `program` (if any) on every thread. Allocates nothing (the tests call it in a child forked from a multi-threaded
/// process).
fn apply(program: Option<&BpfProgram>, second: Option<&BpfProgram>) -> Result<(), SandboxError> {
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS, 1) takes no pointers.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(SandboxError::NoNewPrivs(std::io::Error::last_os_error()));
    }
    // `second` first: installing a filter is a system call `program` does not allow.
    for program in [second, program].into_iter().flatten() {
        seccompiler::apply_filter_all_threads(program)?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
mod tests {
    use super::*;

    /// Runs `body` in a forked child and returns how it ended (the test process itself
    /// must not be filtered).
    fn in_child(body: impl FnOnce() -> i32) -> libc::c_int {
        // SAFETY: the child only installs a filter, makes system calls and _exits; it
        // does not return into the test harness.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let code = body();
            // SAFETY: _exit ends the child without running the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for the child just forked; `status` is a valid out pointer.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        status
    }

    #[test]
    fn a_forbidden_call_kills_the_filtered_process_only() {
        for kind in [ProcessKind::Vm, ProcessKind::Broker] {
            let program = filter(kind, SeccompAction::Trap).unwrap();
            let status = in_child(|| {
                if install_sigsys_reporter().is_err() || apply(Some(&program), None).is_err() {
                    return 3;
                }
                // Allowed calls work under the filter...
                // SAFETY: getpid has no arguments.
                if unsafe { libc::getpid() } <= 0 {
                    return 4;
                }
                // ...and starting a program is not allowed: this must not return.
                // SAFETY: execve with valid NUL-terminated strings and null arrays.
                unsafe { libc::execve(c"/bin/true".as_ptr(), std::ptr::null(), std::ptr::null()) };
                5
            });
            assert!(
                libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS,
                "{kind:?}: the child was not killed by SIGSYS (status {status:#x})"
            );
        }
        // This (unfiltered) process goes on.
        assert!(std::process::id() > 0);
    }

    #[test]
    fn the_broker_may_start_threads_but_not_processes() {
        let program = filter(ProcessKind::Broker, SeccompAction::Trap).unwrap();
        let threads = clone3_unsupported().unwrap();
        let filtered =
            || install_sigsys_reporter().is_ok() && apply(Some(&program), Some(&threads)).is_ok();
        // A thread, as for a VM that joins (glibc: clone3 gets ENOSYS, then clone).
        let status = in_child(|| {
            if !filtered() {
                return 3;
            }
            match std::thread::Builder::new().spawn(|| 7).map(|t| t.join()) {
                Ok(Ok(7)) => 0,
                _ => 4,
            }
        });
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "the broker's filter stopped a thread (status {status:#x})"
        );
        // A process is still forbidden: fork must not return.
        let status = in_child(|| {
            if !filtered() {
                return 3;
            }
            // SAFETY: fork in the child; the grandchild would only _exit.
            if unsafe { libc::fork() } == 0 {
                // SAFETY: _exit in the forked grandchild.
                unsafe { libc::_exit(6) };
            }
            5
        });
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS,
            "the broker's filter let a process start (status {status:#x})"
        );
    }

    #[test]
    fn log_mode_lets_the_call_through_and_no_new_privs_is_set() {
        let program = filter(ProcessKind::Vm, SeccompAction::Log).unwrap();
        let status = in_child(|| {
            if apply(Some(&program), None).is_err() {
                return 3;
            }
            // SAFETY: prctl(PR_GET_NO_NEW_PRIVS) takes no pointers.
            if unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) } != 1 {
                return 4;
            }
            // kill(2) is not on the VM list: logged, allowed (signal 0 only checks).
            // SAFETY: signal 0 to ourselves sends nothing.
            if unsafe { libc::kill(libc::getpid(), 0) } != 0 {
                return 5;
            }
            0
        });
        assert!(libc::WIFEXITED(status), "status {status:#x}");
        assert_eq!(libc::WEXITSTATUS(status), 0);
    }
}
