//! `xpmem-inject` on this machine's own processes (no VM): a call injected
//! into a thread blocked in `clock_nanosleep` (restarted by the kernel through
//! `restart_syscall`), `read` (`-ERESTARTSYS`), `pause` (`-ERESTARTNOHAND`)
//! or `epoll_wait` (`-EINTR`) runs once, in place of the blocked call; a
//! call that the process's seccomp filter forbids with
//! `SECCOMP_RET_KILL_PROCESS` kills it by SIGSYS; an allowed one runs and the
//! process lives on. Needs root (ptrace of a process that is not the tool's
//! child), as `scripts/test.sh` runs.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// `AUDIT_ARCH_X86_64` (linux/audit.h), which the libc crate does not have.
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// Offsets of `arch` and `nr` in `struct seccomp_data`.
const ARCH_OFFSET: u32 = 4;
const NR_OFFSET: u32 = 0;
/// How long a process has to die after the injection.
const DEATH_LIMIT: Duration = Duration::from_secs(5);

/// One test at a time: a child forked (not exec'd) by one test would keep
/// the pipes of another test's `Command::output()` open (it holds a copy of
/// every descriptor the test process had at the fork).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn inject(pid: i32, nr: i64, args: &[i64]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xpmem-inject"));
    cmd.args(["--pid", &pid.to_string(), "--syscall", &nr.to_string()]);
    for a in args {
        cmd.args(["--arg", &a.to_string()]);
    }
    cmd.output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "rc {:?}, stdout {:?}, stderr {:?}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn assert_injected(out: &Output, pid: i32, nr: i64) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(out));
    let line = stdout.trim_end();
    assert!(
        line.starts_with(&format!("XPMEM-INJECT pid={pid} syscall={nr} rip=0x"))
            && line.ends_with(" done")
            && !line.contains('\n'),
        "{}",
        text(out)
    );
}

/// Until `child` ends, at most `limit`.
fn wait_child(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child blocked in a system call, killed when dropped.
struct Spawned(Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `pid`'s main thread sleeps (state `S`), so that it is inside
/// its blocking call and not still starting up.
fn wait_sleeping(pid: i32) {
    let start = Instant::now();
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // After the ")" that ends the command name: " S ...".
        if stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with('S'))
            == Some(true)
        {
            // Past the program's start-up calls: sleeping for a while.
            std::thread::sleep(Duration::from_millis(100));
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "process {pid} never slept: {stat}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn exit_group_ends_a_sleep_with_its_code() {
    let _serial = serial();
    // `sleep` blocks in clock_nanosleep: the interrupt makes that return
    // -ERESTART_RESTARTBLOCK, which the kernel would turn into restart_syscall.
    let mut sleep = Spawned(Command::new("sleep").arg("60").spawn().unwrap());
    let pid = sleep.0.id() as i32;
    wait_sleeping(pid);
    let out = inject(pid, libc::SYS_exit_group, &[7]);
    assert_injected(&out, pid, libc::SYS_exit_group);
    let status = wait_child(&mut sleep.0, DEATH_LIMIT).expect("sleep still runs");
    assert_eq!(status.code(), Some(7), "{status:?}");
}

#[test]
fn exit_group_ends_a_blocked_read() {
    let _serial = serial();
    // `cat` blocks in read(0) on a pipe nobody writes: -ERESTARTSYS.
    let mut cat = Spawned(
        Command::new("cat")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = cat.0.id() as i32;
    wait_sleeping(pid);
    let out = inject(pid, libc::SYS_exit_group, &[9]);
    assert_injected(&out, pid, libc::SYS_exit_group);
    let status = wait_child(&mut cat.0, DEATH_LIMIT).expect("cat still runs");
    assert_eq!(status.code(), Some(9), "{status:?}");
}

/// The call a [`Filtered`] child blocks in.
#[derive(Clone, Copy, Debug)]
enum Block {
    /// `pause()`: interrupted, it returns `-ERESTARTNOHAND`.
    Pause,
    /// `epoll_wait` on an empty epoll instance, no timeout: returns `-EINTR`
    /// (no restart), like the monitor's main threads.
    EpollWait,
}

const BLOCKS: [Block; 2] = [Block::Pause, Block::EpollWait];

/// A forked child of this test with a seccomp filter that kills the process
/// (`SECCOMP_RET_KILL_PROCESS`) at `getppid` and allows everything else,
/// blocked in a call ([`Block`]); after each return of that call it writes
/// the returned value (8 bytes) to its pipe and calls it again. Killed and
/// reaped when dropped.
struct Filtered {
    pid: i32,
    reports: std::fs::File,
    reaped: bool,
}

impl Filtered {
    fn start(block: Block) -> Self {
        let stmt = |code: u32, k: u32| libc::sock_filter {
            code: code as u16,
            jt: 0,
            jf: 0,
            k,
        };
        let jeq = |k: u32, jt: u8, jf: u8| libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt,
            jf,
            k,
        };
        let mut filter = [
            stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, ARCH_OFFSET),
            jeq(AUDIT_ARCH_X86_64, 1, 0),
            stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_KILL_PROCESS),
            stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, NR_OFFSET),
            jeq(libc::SYS_getppid as u32, 0, 1),
            stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_KILL_PROCESS),
            stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
        ];
        let prog = libc::sock_fprog {
            len: filter.len() as u16,
            filter: filter.as_mut_ptr(),
        };
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: the child only makes async-signal-safe system calls on
        // memory prepared before the fork (`prog`, `filter`, stack values)
        // and leaves by _exit; the parent goes on as usual.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            // SAFETY: see the fork above; `prog` points at `filter`, both live.
            unsafe {
                let no_core = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                // The SIGSYS death would write a core file into the cwd.
                if libc::setrlimit(libc::RLIMIT_CORE, &no_core) != 0
                    || libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                    || libc::prctl(
                        libc::PR_SET_SECCOMP,
                        libc::SECCOMP_MODE_FILTER,
                        std::ptr::addr_of!(prog),
                    ) != 0
                {
                    libc::_exit(100);
                }
                // Keep only the pipe's write end (as fd 3), 0-2, and an
                // epoll instance as fd 4.
                if libc::dup2(fds[1], 3) != 3
                    || libc::syscall(libc::SYS_close_range, 4, u32::MAX, 0) != 0
                    || libc::epoll_create1(0) != 4
                {
                    libc::_exit(101);
                }
                let ready = [b'r'];
                if libc::write(3, ready.as_ptr().cast(), 1) != 1 {
                    libc::_exit(102);
                }
                let mut events = [libc::epoll_event { events: 0, u64: 0 }; 1];
                loop {
                    let r: i64 = match block {
                        Block::Pause => libc::syscall(libc::SYS_pause),
                        Block::EpollWait => {
                            libc::syscall(libc::SYS_epoll_wait, 4, events.as_mut_ptr(), 1, -1)
                        }
                    };
                    let bytes = r.to_ne_bytes();
                    if libc::write(3, bytes.as_ptr().cast(), bytes.len()) != 8 {
                        libc::_exit(103);
                    }
                }
            }
        }
        // SAFETY: both descriptors are ours and open; each is owned once.
        let (read_end, write_end) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        drop(write_end);
        let mut child = Self {
            pid,
            reports: std::fs::File::from(read_end),
            reaped: false,
        };
        let mut ready = [0u8; 1];
        child.read_within(&mut ready);
        assert_eq!(ready, [b'r'], "the child did not install its filter");
        wait_sleeping(pid);
        child
    }

    /// Reads `buf` full from the child's pipe, or fails after 5 s.
    fn read_within(&mut self, buf: &mut [u8]) {
        let mut pfd = libc::pollfd {
            fd: self.reports.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is one live pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, 5000) };
        assert_eq!(n, 1, "nothing from the child within 5 s");
        self.reports.read_exact(buf).unwrap();
    }

    /// The child's end, at most `limit` from now.
    fn wait(&mut self, limit: Duration) -> Option<libc::c_int> {
        let start = Instant::now();
        loop {
            let mut status = 0;
            // SAFETY: `status` is a live c_int; `pid` is our unreaped child.
            let rc = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
            assert!(rc >= 0, "waitpid: {}", std::io::Error::last_os_error());
            if rc == self.pid {
                self.reaped = true;
                return Some(status);
            }
            if start.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Filtered {
    fn drop(&mut self) {
        if !self.reaped {
            // SAFETY: `pid` is our child, not reaped yet, so not reused.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                libc::waitpid(self.pid, std::ptr::null_mut(), 0);
            }
        }
    }
}

/// Injects the forbidden getppid into `child` and checks it dies by SIGSYS.
fn forbidden_call_kills(child: &mut Filtered, block: Block) {
    let out = inject(child.pid, libc::SYS_getppid, &[]);
    assert_injected(&out, child.pid, libc::SYS_getppid);
    let status = child
        .wait(DEATH_LIMIT)
        .unwrap_or_else(|| panic!("{block:?}: the child still runs"));
    assert!(
        libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS,
        "{block:?}: want death by SIGSYS (31), got {:?}",
        ExitStatus::from_raw(status)
    );
}

#[test]
fn a_forbidden_call_kills_the_process_by_sigsys() {
    let _serial = serial();
    for block in BLOCKS {
        let mut child = Filtered::start(block);
        forbidden_call_kills(&mut child, block);
    }
}

#[test]
fn an_allowed_call_runs_in_place_of_the_blocked_one_and_the_process_lives_on() {
    let _serial = serial();
    for block in BLOCKS {
        let mut child = Filtered::start(block);
        let out = inject(child.pid, libc::SYS_getpid, &[]);
        assert_injected(&out, child.pid, libc::SYS_getpid);
        // The blocked call "returned" getpid()'s result: the injected call
        // ran, once, and the old one was not restarted.
        let mut ret = [0u8; 8];
        child.read_within(&mut ret);
        assert_eq!(i64::from_ne_bytes(ret), i64::from(child.pid), "{block:?}");
        assert_eq!(
            child.wait(Duration::from_secs(1)),
            None,
            "{block:?}: the child died"
        );
        // And it is back in its call, where a second injection finds it.
        forbidden_call_kills(&mut child, block);
    }
}

#[test]
fn a_thread_running_in_user_space_is_refused_and_left_running() {
    let _serial = serial();
    // SAFETY: the child spins without any system call until killed.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        loop {
            std::hint::spin_loop();
        }
    }
    // Past fork's return to user space (a child stopped on its way out of
    // fork would look like a thread in a system call).
    std::thread::sleep(Duration::from_millis(200));
    let out = inject(pid, libc::SYS_exit_group, &[3]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut status = 0;
    // SAFETY: `status` is a live c_int; `pid` is our child.
    let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    // SAFETY: `pid` is our child, not reaped (rc == 0) or already gone.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr.starts_with(&format!("xpmem-inject: thread {pid} (rip=0x"))
            && stderr.contains("left unchanged: not stopped in a system call"),
        "{}",
        text(&out)
    );
    assert_eq!(
        rc,
        0,
        "the refused child ended: {:?}",
        ExitStatus::from_raw(status)
    );
}

#[test]
fn a_missing_pid_is_a_clear_error() {
    let _serial = serial();
    // Above PID_MAX_LIMIT (4194304): no such thread can exist.
    let out = inject(i32::MAX, libc::SYS_getpid, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(out.stdout.is_empty(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim_end(),
        format!(
            "xpmem-inject: PTRACE_SEIZE of thread {}: No such process (os error 3)",
            i32::MAX
        )
    );
}

#[test]
fn bad_arguments_are_errors_with_the_usage() {
    let _serial = serial();
    for args in [
        &[][..],
        &["--pid", "1"][..],
        &["--syscall", "39"][..],
        &["--pid", "0", "--syscall", "39"][..],
        &["--pid", "x", "--syscall", "39"][..],
        &["--pid", "1", "--syscall", "39", "--arg"][..],
        &["--pid", "1", "--syscall", "zz"][..],
        &["--pid", "1", "--syscall", "39", "--frob"][..],
        &[
            "--pid",
            "1",
            "--syscall",
            "39",
            "--arg",
            "1",
            "--arg",
            "2",
            "--arg",
            "3",
            "--arg",
            "4",
            "--arg",
            "5",
            "--arg",
            "6",
            "--arg",
            "7",
        ][..],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_xpmem-inject"))
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out));
        assert!(stderr.starts_with("xpmem-inject: "), "{args:?}: {stderr}");
        assert!(stderr.contains("usage: xpmem-inject"), "{args:?}: {stderr}");
    }
}
