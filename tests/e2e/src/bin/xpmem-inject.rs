//! `xpmem-inject`: makes one thread of a running process execute one system
//! call of the caller's choosing, through ptrace, so that a test can show what
//! a process's seccomp filter does with a forbidden call (the monitor's "a
//! forbidden system call kills that process only") without any test hook in
//! the process itself. Runs on the KVM test host (statically linked), so it
//! depends on nothing but the kernel; x86_64 only; needs `CAP_SYS_PTRACE`
//! (root) unless the target is its own child.
//!
//! ```text
//! xpmem-inject --pid PID --syscall NR [--arg N]...
//! xpmem-inject --pid 4242 --syscall 110            # getppid(), forbidden in a VM process
//! xpmem-inject --pid 4242 --syscall 231 --arg 7    # exit_group(7)
//! ```
//!
//! `PID` is a thread id (a process's pid is its main thread's); `NR` and up to
//! six `--arg` values (default 0, in the order rdi, rsi, rdx, r10, r8, r9) are
//! decimal, `0x` hexadecimal or negative decimal (two's complement).
//!
//! How: `PTRACE_SEIZE` the thread, `PTRACE_INTERRUPT` it and wait for the
//! stop. A thread that sleeps in a system call (`epoll_wait`, `ioctl`,
//! `read`, `futex`, `clock_nanosleep`...) is woken by the interrupt, its call
//! returns `-EINTR` or one of the kernel's restart codes (`-ERESTARTSYS`,
//! `-ERESTARTNOHAND`, `-ERESTARTNOINTR`, `-ERESTART_RESTARTBLOCK`), and it
//! stops on its way back to user space, before the kernel's restart handling:
//! `rip` is just past its 2-byte `syscall` instruction (`0f 05`) and
//! `orig_rax` holds the call's number. The tool checks exactly that (64-bit
//! code segment, `orig_rax != -1`, `0f 05` at `rip - 2`), then sets `rax` to
//! `NR`, the argument registers, `rip` back to the `syscall` instruction, and
//! `orig_rax` to -1. After the stop the kernel restarts an interrupted call
//! (`rax = orig_rax`, or `restart_syscall` for `-ERESTART_RESTARTBLOCK`, and
//! `rip -= 2`) only if `orig_rax` is not -1 and `rax` holds a restart code.
//! The new `rax` (a call number, never a restart code) already rules that
//! out; `orig_rax = -1`, "no system call to restart" as the kernel's own
//! entry code and debuggers write it, makes sure of it (the same check runs
//! before a signal handler's frame is built). Otherwise the kernel would move
//! `rip` back a second time and put the old call back. Then `PTRACE_DETACH`:
//! the thread runs on untraced and its next instruction is the injected call,
//! which the process's seccomp filter sees like any other.
//!
//! A call the filter allows runs, and its return value becomes the return
//! value of the call the thread was blocked in (a `read` that "returns" a pid,
//! an `epoll_wait` that "returns" events it never wrote): the process goes on
//! with a wrong result, so inject allowed calls only into processes that
//! tolerate it, or into one whose death is expected anyway.
//!
//! Refused, with the thread detached unchanged (an `epoll_wait` or `KVM_RUN`
//! it was in returns `EINTR`, a restartable call restarts): a thread that is
//! not stopped in a system call (running in user space when interrupted), a
//! 32-bit process. A thread that does not stop within [`STOP_TIMEOUT`] (an
//! uninterruptible sleep) is left alone: the kernel drops the pending
//! interrupt when this process exits. If the thread stopped for a signal
//! instead of the interrupt, that signal is passed on at the detach (a
//! handler then runs first and the injected call follows its return).
//!
//! Prints `XPMEM-INJECT pid=PID syscall=NR rip=0x... done` (`rip`: the
//! address of the `syscall` instruction the thread now runs again) and exits
//! 0; on a failure prints `xpmem-inject: <what failed>: <why>` on stderr and
//! exits 1.

use std::io;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const USAGE: &str =
    "usage: xpmem-inject --pid PID --syscall NR [--arg N]... (at most 6 --arg, default 0)";

/// How long the thread has to stop after `PTRACE_INTERRUPT`.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// `cs` of 64-bit user code on x86_64 Linux (`__USER_CS`).
const USER_CS_64: u64 = 0x33;

/// The `syscall` instruction, `0f 05`, as the low 16 bits of a little-endian word.
const SYSCALL_INSN: u64 = 0x050f;

#[derive(Debug, thiserror::Error)]
enum InjectError {
    #[error("{0}\n{USAGE}")]
    Usage(String),
    #[error("{what}: {err}")]
    Os { what: String, err: io::Error },
    #[error("{what}: {why}")]
    Refused { what: String, why: String },
}

impl InjectError {
    fn os(what: impl Into<String>, err: io::Error) -> Self {
        Self::Os {
            what: what.into(),
            err,
        }
    }
}

struct Args {
    pid: libc::pid_t,
    nr: u64,
    args: [u64; 6],
}

/// `text` as a register value: decimal, `0x` hexadecimal, or negative decimal
/// (two's complement).
fn number(text: &str) -> Option<u64> {
    if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        u64::from_str_radix(hex, 16).ok()
    } else if text.starts_with('-') {
        text.parse::<i64>().ok().map(|v| v as u64)
    } else {
        text.parse::<u64>().ok()
    }
}

fn parse(argv: &[String]) -> Result<Args, InjectError> {
    let mut pid = None;
    let mut nr = None;
    let mut args = Vec::new();
    let mut it = argv.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| InjectError::Usage(format!("{a} needs a value")))
        };
        match a.as_str() {
            "--pid" => {
                let v = value()?;
                let p = v
                    .parse::<libc::pid_t>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| InjectError::Usage(format!("--pid {v}: not a thread id")))?;
                pid = Some(p);
            }
            "--syscall" => {
                let v = value()?;
                nr = Some(number(v).ok_or_else(|| {
                    InjectError::Usage(format!("--syscall {v}: not a system call number"))
                })?);
            }
            "--arg" => {
                let v = value()?;
                if args.len() == 6 {
                    return Err(InjectError::Usage("more than 6 --arg".into()));
                }
                args.push(
                    number(v)
                        .ok_or_else(|| InjectError::Usage(format!("--arg {v}: not a number")))?,
                );
            }
            other => return Err(InjectError::Usage(format!("unknown argument {other}"))),
        }
    }
    let pid = pid.ok_or_else(|| InjectError::Usage("no --pid".into()))?;
    let nr = nr.ok_or_else(|| InjectError::Usage("no --syscall".into()))?;
    let mut all = [0u64; 6];
    all[..args.len()].copy_from_slice(&args);
    Ok(Args { pid, nr, args: all })
}

/// One ptrace request whose result is 0 or -1 (not a `PEEK`).
fn ptrace(
    request: libc::c_uint,
    pid: libc::pid_t,
    addr: usize,
    data: usize,
) -> Result<(), io::Error> {
    // SAFETY: every caller passes, for a request that writes through `data`
    // (PTRACE_GETREGS), the address of a live `user_regs_struct` it owns; for
    // the others `addr` and `data` are plain numbers the kernel does not
    // dereference (PTRACE_SETREGS only reads a live `user_regs_struct`).
    let rc = unsafe { libc::ptrace(request, pid, addr, data) };
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The word at `addr` in the tracee's memory.
fn peek(pid: libc::pid_t, addr: u64) -> Result<u64, io::Error> {
    // SAFETY: errno is this thread's own variable; PTRACE_PEEKTEXT returns the
    // word (which may be -1), so errno tells an error apart, and it only reads
    // the tracee's memory.
    let (word, errno) = unsafe {
        *libc::__errno_location() = 0;
        let word = libc::ptrace(libc::PTRACE_PEEKTEXT, pid, addr as usize, 0usize);
        (word, *libc::__errno_location())
    };
    if word == -1 && errno != 0 {
        Err(io::Error::from_raw_os_error(errno))
    } else {
        Ok(word as u64)
    }
}

/// Waits for the thread's stop after `PTRACE_INTERRUPT`; returns the signal
/// to pass on at the detach (0 unless it stopped for a signal).
fn wait_stop(pid: libc::pid_t) -> Result<libc::c_int, InjectError> {
    let start = Instant::now();
    loop {
        let mut status = 0;
        // SAFETY: `status` is a live c_int for the kernel to fill.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::__WALL | libc::WNOHANG) };
        if rc == -1 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(InjectError::os(format!("waitpid for thread {pid}"), err));
        }
        if rc == pid {
            if libc::WIFSTOPPED(status) {
                let event = status >> 16;
                let sig = libc::WSTOPSIG(status);
                // The interrupt (or a group-stop) is PTRACE_EVENT_STOP; a
                // signal-delivery-stop (event 0) came first if a signal was
                // being delivered just then: it must not be lost.
                return Ok(if event == libc::PTRACE_EVENT_STOP {
                    0
                } else {
                    sig
                });
            }
            return Err(InjectError::Refused {
                what: format!("thread {pid}"),
                why: if libc::WIFSIGNALED(status) {
                    format!(
                        "ended by signal {} before it stopped",
                        libc::WTERMSIG(status)
                    )
                } else {
                    format!(
                        "exited with {} before it stopped",
                        libc::WEXITSTATUS(status)
                    )
                },
            });
        }
        if start.elapsed() >= STOP_TIMEOUT {
            return Err(InjectError::Refused {
                what: format!("thread {pid}"),
                why: format!(
                    "did not stop within {} s of PTRACE_INTERRUPT (uninterruptible sleep?); \
                     left alone (the kernel drops the interrupt when xpmem-inject exits)",
                    STOP_TIMEOUT.as_secs()
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Rewrites the stopped thread's registers so that it runs `syscall(nr,
/// args...)` once resumed; returns the address of its `syscall` instruction.
/// Changes nothing when it refuses.
fn rewrite(a: &Args) -> Result<u64, InjectError> {
    let pid = a.pid;
    // SAFETY: user_regs_struct is plain integers; all zeroes is a valid value.
    let mut regs: libc::user_regs_struct = unsafe { std::mem::zeroed() };
    ptrace(
        libc::PTRACE_GETREGS,
        pid,
        0,
        std::ptr::addr_of_mut!(regs) as usize,
    )
    .map_err(|e| InjectError::os(format!("PTRACE_GETREGS of thread {pid}"), e))?;
    let refuse = |why: String| InjectError::Refused {
        what: format!("thread {pid} (rip={:#x}), left unchanged", regs.rip),
        why,
    };
    if regs.cs != USER_CS_64 {
        return Err(refuse(format!(
            "not 64-bit code (cs={:#x}); only x86_64 processes are supported",
            regs.cs
        )));
    }
    if regs.orig_rax == u64::MAX {
        return Err(refuse(
            "not stopped in a system call (orig_rax=-1: it was running in user space); try again"
                .into(),
        ));
    }
    let at = regs
        .rip
        .checked_sub(2)
        .ok_or_else(|| refuse("rip < 2".into()))?;
    let word = peek(pid, at)
        .map_err(|e| InjectError::os(format!("PTRACE_PEEKTEXT of thread {pid} at {at:#x}"), e))?;
    if word & 0xffff != SYSCALL_INSN {
        return Err(refuse(format!(
            "the 2 bytes before rip are {:02x} {:02x}, not a syscall instruction (0f 05)",
            word & 0xff,
            (word >> 8) & 0xff
        )));
    }
    regs.orig_rax = u64::MAX;
    regs.rax = a.nr;
    regs.rdi = a.args[0];
    regs.rsi = a.args[1];
    regs.rdx = a.args[2];
    regs.r10 = a.args[3];
    regs.r8 = a.args[4];
    regs.r9 = a.args[5];
    regs.rip = at;
    ptrace(
        libc::PTRACE_SETREGS,
        pid,
        0,
        std::ptr::addr_of!(regs) as usize,
    )
    .map_err(|e| InjectError::os(format!("PTRACE_SETREGS of thread {pid}"), e))?;
    Ok(at)
}

fn run(a: &Args) -> Result<u64, InjectError> {
    let pid = a.pid;
    ptrace(libc::PTRACE_SEIZE, pid, 0, 0)
        .map_err(|e| InjectError::os(format!("PTRACE_SEIZE of thread {pid}"), e))?;
    // From here on an early return leaves the thread traced until this
    // process exits, when the kernel detaches it (and drops the interrupt).
    ptrace(libc::PTRACE_INTERRUPT, pid, 0, 0)
        .map_err(|e| InjectError::os(format!("PTRACE_INTERRUPT of thread {pid}"), e))?;
    let sig = wait_stop(pid)?;
    let rewritten = rewrite(a);
    let detached = ptrace(libc::PTRACE_DETACH, pid, 0, sig as usize)
        .map_err(|e| InjectError::os(format!("PTRACE_DETACH of thread {pid}"), e));
    match (rewritten, detached) {
        (Ok(at), Ok(())) => Ok(at),
        (Err(e), _) | (Ok(_), Err(e)) => Err(e),
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    match parse(&argv).and_then(|a| run(&a).map(|at| (a, at))) {
        Ok((a, at)) => {
            println!(
                "XPMEM-INJECT pid={} syscall={} rip={at:#x} done",
                a.pid, a.nr
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("xpmem-inject: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Result<Args, InjectError> {
        parse(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn numbers_are_decimal_hex_or_negative() {
        assert_eq!(number("231"), Some(231));
        assert_eq!(number("0x7f"), Some(0x7f));
        assert_eq!(number("-1"), Some(u64::MAX));
        assert_eq!(number("-9"), Some((-9i64) as u64));
        assert_eq!(number("0x"), None);
        assert_eq!(number("7a"), None);
        assert_eq!(number(""), None);
    }

    #[test]
    fn arguments_fill_the_registers_in_order_and_default_to_zero() {
        let a = args(&[
            "--syscall",
            "231",
            "--pid",
            "42",
            "--arg",
            "7",
            "--arg",
            "-1",
        ])
        .unwrap();
        assert_eq!((a.pid, a.nr), (42, 231));
        assert_eq!(a.args, [7, u64::MAX, 0, 0, 0, 0]);
        let six: Vec<&str> = ["--pid", "1", "--syscall", "0"]
            .into_iter()
            .chain(["--arg", "1"].repeat(6))
            .collect();
        assert_eq!(args(&six).unwrap().args, [1; 6]);
        for bad in [
            &["--pid", "-3", "--syscall", "1"][..],
            &["--pid", "1"][..],
            &["--pid", "1", "--syscall", "1", "--arg", "x"][..],
        ] {
            assert!(matches!(args(bad), Err(InjectError::Usage(_))), "{bad:?}");
        }
    }
}
