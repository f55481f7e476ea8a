//! Running a child process with a deadline while streaming its output line by line.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Errors while running a child process.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot start `{cmd}`: {source} (is it installed? scripts/test.sh installs the needed packages)")]
    Spawn { cmd: String, source: std::io::Error },
    #[error("waiting for `{cmd}` failed: {source}")]
    Wait { cmd: String, source: std::io::Error },
}

/// How a streamed run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Exited with this code (signals are reported as 128 + signal number).
    Code(i32),
    /// Killed by the harness after the deadline.
    TimedOut,
    /// Killed by the harness because it printed nothing for the silence limit.
    Silent,
}

/// What the line handler wants next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep reading.
    Continue,
    /// Kill the process now (e.g. a fatal marker was seen).
    Kill,
}

/// Sends every line `r` produces (without its line end; carriage returns
/// removed) to `tx`, from a new thread, until end of file or a closed channel.
pub fn pump<R: Read + Send + 'static>(r: R, tx: mpsc::Sender<String>) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(r);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf);
                    let line = line.trim_end_matches(['\n', '\r']).replace('\r', "");
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }
        }
    });
}

fn kill(child: &mut Child) {
    // The child may already have exited; errors here only mean "nothing to kill".
    let _ = child.kill();
}

/// Runs `cmd` (stdin from /dev/null), feeding every stdout/stderr line to
/// `on_line`, killing it when `timeout` passes or when `on_line` says so.
pub fn run_streaming(
    cmd: &mut Command,
    timeout: Duration,
    on_line: impl FnMut(&str) -> Flow,
) -> Result<Exit, Error> {
    run_watched(cmd, timeout, None, on_line)
}

/// [`run_streaming`], and also kill the child when it has printed nothing
/// for `silence` (for children that print a heartbeat while alive).
pub fn run_watched(
    cmd: &mut Command,
    timeout: Duration,
    silence: Option<Duration>,
    mut on_line: impl FnMut(&str) -> Flow,
) -> Result<Exit, Error> {
    let desc = format!("{:?}", cmd.get_program());
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| Error::Spawn {
        cmd: desc.clone(),
        source,
    })?;
    let (tx, rx) = mpsc::channel();
    if let Some(out) = child.stdout.take() {
        pump(out, tx.clone());
    }
    if let Some(err) = child.stderr.take() {
        pump(err, tx.clone());
    }
    drop(tx);
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let mut silent = false;
    let mut last_line = Instant::now();
    loop {
        let now = Instant::now();
        if now >= deadline {
            timed_out = true;
            kill(&mut child);
            break;
        }
        let mut wait = deadline - now;
        if let Some(limit) = silence {
            let quiet_for = now - last_line;
            if quiet_for >= limit {
                silent = true;
                kill(&mut child);
                break;
            }
            wait = wait.min(limit - quiet_for);
        }
        match rx.recv_timeout(wait) {
            Ok(line) => {
                last_line = Instant::now();
                if on_line(&line) == Flow::Kill {
                    kill(&mut child);
                    // Drain what is already buffered, then stop.
                    while let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
                        on_line(&l);
                    }
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    // Output closed: the child has exited or is about to; still honour the deadline.
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                timed_out = true;
                kill(&mut child);
                break child.wait().map_err(|source| Error::Wait {
                    cmd: desc.clone(),
                    source,
                })?;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(source) => return Err(Error::Wait { cmd: desc, source }),
        }
    };
    if silent {
        return Ok(Exit::Silent);
    }
    if timed_out {
        return Ok(Exit::TimedOut);
    }
    use std::os::unix::process::ExitStatusExt;
    Ok(Exit::Code(
        status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
mod tests {
    use super::*;

    #[test]
    fn collects_lines_and_exit_code() {
        let mut lines = Vec::new();
        let exit = run_streaming(
            Command::new("sh").args(["-c", "echo one; echo two >&2; exit 3"]),
            Duration::from_secs(20),
            |l| {
                lines.push(l.to_string());
                Flow::Continue
            },
        )
        .unwrap();
        assert_eq!(exit, Exit::Code(3));
        lines.sort();
        assert_eq!(lines, ["one", "two"]);
    }

    #[test]
    fn deadline_kills_a_hung_child() {
        let exit = run_streaming(
            Command::new("sh").args(["-c", "exec sleep 30"]),
            Duration::from_millis(300),
            |_| Flow::Continue,
        )
        .unwrap();
        assert_eq!(exit, Exit::TimedOut);
    }

    #[test]
    fn a_silent_child_is_killed_and_a_chatty_one_is_not() {
        let silent = run_watched(
            Command::new("sh").args(["-c", "echo hi; exec sleep 30"]),
            Duration::from_secs(20),
            Some(Duration::from_millis(300)),
            |_| Flow::Continue,
        )
        .unwrap();
        assert_eq!(silent, Exit::Silent);
        let chatty = run_watched(
            Command::new("sh").args(["-c", "for i in 1 2 3 4 5 6; do echo $i; sleep 0.1; done"]),
            Duration::from_secs(20),
            Some(Duration::from_millis(400)),
            |_| Flow::Continue,
        )
        .unwrap();
        assert_eq!(chatty, Exit::Code(0));
    }

    #[test]
    fn handler_can_stop_the_child() {
        let exit = run_streaming(
            Command::new("sh").args(["-c", "echo FATAL; exec sleep 30"]),
            Duration::from_secs(20),
            |l| {
                if l == "FATAL" {
                    Flow::Kill
                } else {
                    Flow::Continue
                }
            },
        )
        .unwrap();
        assert_ne!(exit, Exit::TimedOut);
        assert_ne!(exit, Exit::Code(0));
    }
}
