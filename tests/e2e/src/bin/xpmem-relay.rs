//! `xpmem-relay`: runs a command (the monitor) and relays messages between
//! its guests through per-VM input FIFOs; see `xpmem_e2e::relay` for the
//! console protocol. Runs on the KVM test host (statically linked), so it
//! depends on nothing but the kernel.
//!
//! ```text
//! xpmem-relay --input a=/tmp/a.in --input b=/tmp/b.in -- ./xpmem-vmm --config x.toml
//! ```
//!
//! Prints every line of the command's stdout and stderr, plus
//! `XPMEM-RELAY TYPED <vm> <text>` per message typed and, at the end,
//! `XPMEM-RELAY EXIT rc=<n>` and one `XPMEM-RELAY UNDELIVERED <vm> <text>`
//! per message nobody read. Exits with the command's exit code.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc;

use xpmem_e2e::process::pump;
use xpmem_e2e::relay::Router;

const USAGE: &str = "usage: xpmem-relay --input VM=FIFO [--input VM=FIFO ...] -- COMMAND [ARGS...]";

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("{0}\n{USAGE}")]
    Usage(String),
    #[error("cannot create FIFO {path}: {err} (is the directory writable?)")]
    Fifo { path: PathBuf, err: std::io::Error },
    #[error("cannot start {cmd}: {err}")]
    Spawn { cmd: String, err: std::io::Error },
}

struct Args {
    inputs: Vec<(String, PathBuf)>,
    command: Vec<String>,
}

fn parse(args: &[String]) -> Result<Args, RelayError> {
    let mut inputs = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--input" => {
                let v = it
                    .next()
                    .ok_or_else(|| RelayError::Usage("--input needs VM=FIFO".into()))?;
                let (vm, path) = v
                    .split_once('=')
                    .filter(|(vm, p)| !vm.is_empty() && !p.is_empty())
                    .ok_or_else(|| RelayError::Usage(format!("--input {v}: want VM=FIFO")))?;
                inputs.push((vm.to_string(), PathBuf::from(path)));
            }
            "--" => {
                let command: Vec<String> = it.cloned().collect();
                if command.is_empty() {
                    return Err(RelayError::Usage("no command after --".into()));
                }
                return Ok(Args { inputs, command });
            }
            other => return Err(RelayError::Usage(format!("unknown argument {other}"))),
        }
    }
    Err(RelayError::Usage("no command (put it after --)".into()))
}

/// Creates `path` as a FIFO (replacing what was there) and opens it
/// read-write: the open does not wait for the reader, and the reader never
/// sees end-of-file while the relay runs.
fn make_fifo(path: &PathBuf) -> Result<File, RelayError> {
    let err = |err| RelayError::Fifo {
        path: path.clone(),
        err,
    };
    let _ = std::fs::remove_file(path);
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| err(std::io::Error::from(std::io::ErrorKind::InvalidInput)))?;
    // SAFETY: `c_path` is a NUL-terminated string that outlives the call.
    if unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) } != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(err)
}

fn run(args: Args) -> Result<i32, RelayError> {
    let mut fifos: BTreeMap<String, File> = BTreeMap::new();
    for (vm, path) in &args.inputs {
        fifos.insert(vm.clone(), make_fifo(path)?);
    }
    let mut child = Command::new(&args.command[0])
        .args(&args.command[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| RelayError::Spawn {
            cmd: args.command[0].clone(),
            err,
        })?;
    let (tx, rx) = mpsc::channel();
    if let Some(out) = child.stdout.take() {
        pump(out, tx.clone());
    }
    if let Some(err) = child.stderr.take() {
        pump(err, tx);
    }
    let mut router = Router::default();
    let stdout = std::io::stdout();
    // Ends when both pipes reached end-of-file (the command and its children exited).
    for line in rx {
        let mut out = stdout.lock();
        let _ = writeln!(out, "{line}");
        for t in router.feed(&line) {
            match fifos.get_mut(&t.vm) {
                Some(f) => match f.write_all(format!("{}\n", t.text).as_bytes()) {
                    Ok(()) => {
                        let _ = writeln!(out, "XPMEM-RELAY TYPED {} {}", t.vm, t.text);
                    }
                    Err(e) => {
                        let _ = writeln!(out, "XPMEM-RELAY LOST {} {}: {e}", t.vm, t.text);
                    }
                },
                None => {
                    let _ = writeln!(
                        out,
                        "XPMEM-RELAY LOST {} {}: no --input for it",
                        t.vm, t.text
                    );
                }
            }
        }
        let _ = out.flush();
    }
    let status = child.wait().map_err(|err| RelayError::Spawn {
        cmd: args.command[0].clone(),
        err,
    })?;
    let rc = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    for t in router.undelivered() {
        println!("XPMEM-RELAY UNDELIVERED {} {}", t.vm, t.text);
    }
    println!("XPMEM-RELAY EXIT rc={rc}");
    Ok(rc)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match parse(&args).and_then(run) {
        Ok(rc) => ExitCode::from(u8::try_from(rc).unwrap_or(1)),
        Err(e) => {
            eprintln!("xpmem-relay: {e}");
            ExitCode::from(2)
        }
    }
}
