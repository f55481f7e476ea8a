//! `xpmem-vmm exec`: runs a command in a VM through its guest agent
//! (`xpmem-agent`, guest-driver/tools) over the VM's vsock socket, on
//! Firecracker's convention: connect to the VM's Unix socket, write
//! `CONNECT <port>\n`, read `OK <host port>\n`, then speak the agent's
//! protocol (its source has it): `RUN <timeout> <command>\n`, answered by
//! `O <n>\n` + n bytes of stdout, `E <n>\n` + n bytes of stderr, and
//! `X <code>\n`. The command's stdout and stderr go to ours as they arrive;
//! we exit with its code.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use thiserror::Error;

/// The agent's default vsock port.
pub const AGENT_PORT: u32 = 5252;
/// Largest output frame we accept (the agent sends at most 64 KiB).
const MAX_FRAME: usize = 1 << 20;

pub const USAGE: &str = "\
usage: xpmem-vmm exec --socket PATH [--port N] [--timeout S] [--wait S] [--] COMMAND...
       xpmem-vmm exec --socket PATH [--port N] [--wait S] --exit CODE

Runs COMMAND (its words joined by spaces, run by /bin/sh -c in the guest) in
the VM whose vsock socket is PATH (the `socket` of its vsock config; the
monitor prints it at start), through the guest agent xpmem-agent listening on
vsock port N (default 5252). The command's stdout and stderr arrive here as it
runs; the exit status is the command's (124: killed at the --timeout,
default 600 s; 128+N: killed by signal N). --wait S: how long to retry while
the VM boots and its agent is not listening yet (default 60 s). --exit CODE
makes an agent that runs as the guest's main command exit with CODE.
Errors of exec itself exit with 255.
";

#[derive(Debug, Error)]
pub enum ExecError {
    #[error("{0}\n{USAGE}")]
    Usage(String),
    #[error("no agent answered at {path} port {port} within {secs} s (last: {last}); is the VM running with vsock, and xpmem-agent started in it?")]
    NoAgent {
        path: PathBuf,
        port: u32,
        secs: u64,
        last: String,
    },
    #[error("the agent refused the request: {0}")]
    Refused(String),
    #[error("the agent sent {0:?}, which is not a frame of its protocol")]
    Protocol(String),
    #[error("the connection to the agent broke: {0}")]
    Io(#[from] io::Error),
}

/// What `exec` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecArgs {
    pub socket: PathBuf,
    pub port: u32,
    pub timeout_secs: u64,
    pub wait_secs: u64,
    pub request: Request,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Run(String),
    Exit(u8),
}

fn number<T: std::str::FromStr>(flag: &str, v: Option<String>) -> Result<T, ExecError> {
    let v = v.ok_or_else(|| ExecError::Usage(format!("{flag} needs a value")))?;
    v.parse()
        .map_err(|_| ExecError::Usage(format!("{flag} {v:?} is not a number")))
}

/// Parses the arguments after `exec`.
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<ExecArgs, ExecError> {
    let mut args = args.into_iter();
    let (mut socket, mut port, mut timeout, mut wait, mut exit) = (None, AGENT_PORT, 600, 60, None);
    let mut words = Vec::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--socket" => {
                socket =
                    Some(PathBuf::from(args.next().ok_or_else(|| {
                        ExecError::Usage("--socket needs a value".into())
                    })?))
            }
            "--port" => port = number("--port", args.next())?,
            "--timeout" => timeout = number("--timeout", args.next())?,
            "--wait" => wait = number("--wait", args.next())?,
            "--exit" => exit = Some(number::<u8>("--exit", args.next())?),
            "--" => {
                words.extend(args.by_ref());
            }
            s if s.starts_with("--") && words.is_empty() => {
                return Err(ExecError::Usage(format!("unknown option {s:?}")))
            }
            _ => {
                words.push(a);
                words.extend(args.by_ref());
            }
        }
    }
    let socket = socket.ok_or_else(|| ExecError::Usage("--socket PATH is required".into()))?;
    if !(1..=86_400).contains(&timeout) {
        return Err(ExecError::Usage(format!(
            "--timeout {timeout}: give 1..86400 seconds"
        )));
    }
    let request = match (exit, words.is_empty()) {
        (Some(code), true) => Request::Exit(code),
        (Some(_), false) => {
            return Err(ExecError::Usage(
                "--exit and a COMMAND cannot go together".into(),
            ))
        }
        (None, true) => return Err(ExecError::Usage("no COMMAND given".into())),
        (None, false) => {
            let cmd = words.join(" ");
            if cmd.contains('\n') {
                return Err(ExecError::Usage(
                    "the command must be one line (no newline)".into(),
                ));
            }
            Request::Run(cmd)
        }
    };
    Ok(ExecArgs {
        socket,
        port,
        timeout_secs: timeout,
        wait_secs: wait,
        request,
    })
}

/// Connects to the agent, retrying for `wait_secs` while the VM or its agent
/// is not up: the monitor closes the connection when the guest refuses the
/// port.
pub fn connect(args: &ExecArgs) -> Result<BufReader<UnixStream>, ExecError> {
    let deadline = Instant::now() + Duration::from_secs(args.wait_secs);
    loop {
        let last = match try_connect(args) {
            Ok(stream) => return Ok(stream),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(ExecError::NoAgent {
                path: args.socket.clone(),
                port: args.port,
                secs: args.wait_secs,
                last,
            });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn try_connect(args: &ExecArgs) -> io::Result<BufReader<UnixStream>> {
    handshake(&args.socket, args.port).map(BufReader::new)
}

/// One attempt at Firecracker's handshake on a VM's vsock socket: connect,
/// write `CONNECT <port>\n`, read `OK <hostport>\n`. The answer is read byte
/// by byte, so nothing of the guest's stream after it is consumed. An empty
/// answer (the monitor closed the connection) means nothing listens on the
/// guest's port yet.
pub fn handshake(socket: &Path, port: u32) -> io::Result<UnixStream> {
    let mut stream = UnixStream::connect(socket)?;
    stream.write_all(format!("CONNECT {port}\n").as_bytes())?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 64 {
        match stream.read(&mut byte)? {
            1 if byte[0] == b'\n' => break,
            1 => line.push(byte[0]),
            _ => break,
        }
    }
    if line.starts_with(b"OK ") {
        Ok(stream)
    } else if line.is_empty() {
        Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            "the guest refused the port (agent not listening yet)",
        ))
    } else {
        Err(io::Error::other(format!(
            "unexpected answer {:?}",
            String::from_utf8_lossy(&line)
        )))
    }
}

/// Sends the request on a connected stream and copies the output frames to
/// `out` and `err`; returns the command's exit code.
pub fn run_request<S: Read + Write>(
    stream: &mut BufReader<S>,
    args: &ExecArgs,
    out: &mut impl Write,
    err: &mut impl Write,
) -> Result<i32, ExecError> {
    let request = match &args.request {
        Request::Run(cmd) => format!("RUN {} {cmd}\n", args.timeout_secs),
        Request::Exit(code) => format!("EXIT {code}\n"),
    };
    stream.get_mut().write_all(request.as_bytes())?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut head = String::new();
        if stream.read_line(&mut head)? == 0 {
            return Err(ExecError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the agent closed the connection before the command's exit code",
            )));
        }
        let head = head.trim_end_matches('\n');
        let (kind, rest) = head.split_once(' ').unwrap_or((head, ""));
        match kind {
            "O" | "E" => {
                let n: usize = rest
                    .parse()
                    .ok()
                    .filter(|n| *n <= MAX_FRAME)
                    .ok_or_else(|| ExecError::Protocol(head.to_string()))?;
                if buf.len() < n {
                    buf.resize(n, 0);
                }
                stream.read_exact(&mut buf[..n])?;
                let sink: &mut dyn Write = if kind == "O" { out } else { err };
                sink.write_all(&buf[..n])?;
                sink.flush()?;
            }
            "X" => {
                return rest
                    .parse()
                    .map_err(|_| ExecError::Protocol(head.to_string()))
            }
            "F" => return Err(ExecError::Refused(rest.to_string())),
            _ => return Err(ExecError::Protocol(head.to_string())),
        }
    }
}

/// `xpmem-vmm exec ARGS`: the exit status.
pub fn main(args: impl IntoIterator<Item = String>) -> u8 {
    let args: Vec<String> = args.into_iter().collect();
    if matches!(args.first().map(String::as_str), Some("-h" | "--help")) {
        print!("{USAGE}");
        return 0;
    }
    let result = parse(args).and_then(|a| {
        let mut stream = connect(&a)?;
        run_request(&mut stream, &a, &mut io::stdout(), &mut io::stderr())
    });
    match result {
        Ok(code) => u8::try_from(code).unwrap_or(255),
        Err(ExecError::Usage(u)) => {
            eprintln!("xpmem-vmm exec: {u}");
            255
        }
        Err(e) => {
            eprintln!("xpmem-vmm exec: {e}");
            255
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;
    use vmm_sys_util::tempdir::TempDir;

    fn temp_dir() -> TempDir {
        TempDir::new_with_prefix("/tmp/xpmem-exec-test-").unwrap()
    }

    fn args(v: &[&str]) -> Result<ExecArgs, ExecError> {
        parse(v.iter().map(|s| s.to_string()))
    }

    #[test]
    fn arguments_parse_with_defaults_and_errors_are_clear() {
        let a = args(&["--socket", "/run/a.vsock", "--", "echo", "hi there"]).unwrap();
        assert_eq!(a.port, AGENT_PORT);
        assert_eq!(a.timeout_secs, 600);
        assert_eq!(a.request, Request::Run("echo hi there".into()));
        let a = args(&[
            "--socket",
            "s",
            "--port",
            "7",
            "--timeout",
            "5",
            "ls",
            "--all",
        ])
        .unwrap();
        assert_eq!((a.port, a.timeout_secs), (7, 5));
        assert_eq!(a.request, Request::Run("ls --all".into()));
        assert_eq!(
            args(&["--socket", "s", "--exit", "3"]).unwrap().request,
            Request::Exit(3)
        );
        for (bad, why) in [
            (&["echo"][..], "--socket PATH is required"),
            (&["--socket", "s"][..], "no COMMAND"),
            (&["--socket", "s", "--port", "x", "ls"][..], "not a number"),
            (&["--socket", "s", "--timeout", "0", "ls"][..], "1..86400"),
            (
                &["--socket", "s", "--exit", "1", "ls"][..],
                "cannot go together",
            ),
            (&["--socket", "s", "--bogus", "ls"][..], "unknown option"),
            (&["--socket", "s", "a\nb"][..], "one line"),
        ] {
            let e = args(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    /// A fake VM socket: answers CONNECT, checks the request, sends `reply`.
    fn fake_agent(
        reply: &'static [u8],
        want: &'static str,
    ) -> (TempDir, std::thread::JoinHandle<()>) {
        let dir = temp_dir();
        let listener = UnixListener::bind(dir.as_path().join("vm.vsock")).unwrap();
        let t = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut r = BufReader::new(s);
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            assert_eq!(line, "CONNECT 5252\n");
            r.get_mut().write_all(b"OK 1073741824\n").unwrap();
            line.clear();
            r.read_line(&mut line).unwrap();
            assert_eq!(line, want);
            r.get_mut().write_all(reply).unwrap();
        });
        (dir, t)
    }

    #[test]
    fn output_frames_go_to_stdout_and_stderr_and_the_code_comes_back() {
        let (dir, t) = fake_agent(
            b"O 6\nhello\nE 4\nerr\nO 3\nbyeX 3\n",
            "RUN 9 sh -c 'exit 3'\n",
        );
        let sock = dir.as_path().join("vm.vsock");
        let a = args(&[
            "--socket",
            sock.to_str().unwrap(),
            "--timeout",
            "9",
            "sh -c 'exit 3'",
        ])
        .unwrap();
        let mut s = connect(&a).unwrap();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        assert_eq!(run_request(&mut s, &a, &mut out, &mut err).unwrap(), 3);
        assert_eq!(out, b"hello\nbye");
        assert_eq!(err, b"err\n");
        t.join().unwrap();
    }

    #[test]
    fn refusals_bad_frames_and_early_close_are_errors() {
        for (reply, want) in [
            (
                &b"F only the host (CID 2) may use this agent\n"[..],
                "refused",
            ),
            (&b"O 99999999\n"[..], "not a frame"),
            (&b"Q 1\n"[..], "not a frame"),
            (&b"O 4\nab"[..], "broke"),
            (&b"O 2\nok"[..], "before the command's exit code"),
        ] {
            let reply: &'static [u8] = Box::leak(reply.to_vec().into_boxed_slice());
            let (dir, t) = fake_agent(reply, "RUN 600 true\n");
            let sock = dir.as_path().join("vm.vsock");
            let a = args(&["--socket", sock.to_str().unwrap(), "true"]).unwrap();
            let mut s = connect(&a).unwrap();
            let e = run_request(&mut s, &a, &mut Vec::new(), &mut Vec::new())
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{reply:?}: {e}");
            t.join().unwrap();
        }
    }

    #[test]
    fn a_socket_nobody_answers_is_reported_after_the_wait() {
        let dir = temp_dir();
        let a = args(&[
            "--socket",
            dir.as_path().join("none").to_str().unwrap(),
            "--wait",
            "0",
            "true",
        ])
        .unwrap();
        let e = connect(&a).err().unwrap().to_string();
        assert!(
            e.contains("no agent answered") && e.contains("port 5252"),
            "{e}"
        );
    }
}
