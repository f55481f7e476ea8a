//! `xpmem-relay`: runs a command (the monitor) and relays messages between
//! its guests through per-VM input FIFOs; see `xpmem_e2e::relay` for the
//! console protocol. Runs on the KVM test host (statically linked), so it
//! depends on nothing but the kernel.
//!
//! ```text
//! xpmem-relay --input a=/tmp/a.in --input b=/tmp/b.in -- ./xpmem-vmm --config x.toml
//! xpmem-relay --agent a=/tmp/a.vsock --agent b=/tmp/b.vsock -- ./xpmem-vmm --config x.toml
//! ```
//!
//! With `--agent VM=SOCKET` a message goes to the VM through its guest agent
//! over vsock (`xpmem-vmm exec`'s client), which appends the line to the
//! FIFO `/run/xpmem-input` that the VM's command reads as its stdin (the
//! guest's `xpmem.input=agent`), instead of being typed into its serial port.
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
use xpmem_vmm::exec::{self, ExecArgs, Request, AGENT_PORT};

const USAGE: &str =
    "usage: xpmem-relay (--input VM=FIFO | --agent VM=SOCKET) [...] -- COMMAND [ARGS...]";

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("{0}\n{USAGE}")]
    Usage(String),
    #[error("cannot create FIFO {path}: {err} (is the directory writable?)")]
    Fifo { path: PathBuf, err: std::io::Error },
    #[error("cannot start {cmd}: {err}")]
    Spawn { cmd: String, err: std::io::Error },
}

/// Where one VM's messages go.
enum Sink {
    /// A FIFO the monitor feeds into the VM's serial port (`input = PATH`).
    Fifo(PathBuf),
    /// The VM's vsock socket: through its guest agent into `/run/xpmem-input`.
    Agent(PathBuf),
}

struct Args {
    inputs: Vec<(String, Sink)>,
    command: Vec<String>,
}

fn parse(args: &[String]) -> Result<Args, RelayError> {
    let mut inputs = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--input" | "--agent" => {
                let v = it
                    .next()
                    .ok_or_else(|| RelayError::Usage(format!("{a} needs VM=PATH")))?;
                let (vm, path) = v
                    .split_once('=')
                    .filter(|(vm, p)| !vm.is_empty() && !p.is_empty())
                    .ok_or_else(|| RelayError::Usage(format!("{a} {v}: want VM=PATH")))?;
                let path = PathBuf::from(path);
                let sink = if a == "--input" {
                    Sink::Fifo(path)
                } else {
                    Sink::Agent(path)
                };
                inputs.push((vm.to_string(), sink));
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

/// An open destination.
enum Open {
    Fifo(File),
    Agent(PathBuf),
}

/// `text` as one word for the guest's `sh`.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// Delivers one line; the error says why it was lost.
fn deliver(open: &mut Open, text: &str) -> Result<(), String> {
    match open {
        Open::Fifo(f) => f
            .write_all(format!("{text}\n").as_bytes())
            .map_err(|e| e.to_string()),
        Open::Agent(socket) => {
            let args = ExecArgs {
                socket: socket.clone(),
                port: AGENT_PORT,
                timeout_secs: 30,
                // The VM printed WAITING, so its agent runs already.
                wait_secs: 30,
                request: Request::Run(format!(
                    "printf '%s\\n' {} >>/run/xpmem-input",
                    shell_quote(text)
                )),
            };
            let mut err = Vec::new();
            let code = exec::connect(&args)
                .and_then(|mut s| exec::run_request(&mut s, &args, &mut std::io::sink(), &mut err))
                .map_err(|e| e.to_string())?;
            if code == 0 {
                Ok(())
            } else {
                Err(format!(
                    "the agent's command exited with {code}: {}",
                    String::from_utf8_lossy(&err).trim()
                ))
            }
        }
    }
}

fn run(args: Args) -> Result<i32, RelayError> {
    let mut fifos: BTreeMap<String, Open> = BTreeMap::new();
    for (vm, sink) in &args.inputs {
        let open = match sink {
            Sink::Fifo(path) => Open::Fifo(make_fifo(path)?),
            Sink::Agent(socket) => Open::Agent(socket.clone()),
        };
        fifos.insert(vm.clone(), open);
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
                Some(f) => match deliver(f, &t.text) {
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
                        "XPMEM-RELAY LOST {} {}: no --input or --agent for it",
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
