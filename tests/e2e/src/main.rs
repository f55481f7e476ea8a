//! `xpmem-e2e`: command-line front end of the end-to-end harness.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use xpmem_e2e::debian::Cache;
use xpmem_e2e::nested::{self, KvmLoad, Mode, Options, Payload};

const USAGE: &str = "usage: xpmem-e2e <command> [options]

commands:
  fetch                      download/unpack the Debian kernel and busybox into the cache
                             and print their paths
  host                       print whether this host runs KVM guests directly or nested
  l1-run [options] -- CMD..  run CMD (a shell command line) on the KVM test host, with
                             the given files in its working directory; exits with CMD's
                             exit code
      --nested | --direct    force the host kind (default: direct only with hardware KVM)
      --file SRC[:DEST]      put file SRC at DEST (relative; default its basename)
      --script FILE          run this shell script instead of CMD
      --timeout SECS         kill everything after SECS (default 900)
      --memory MIB           L1 memory (default 4096)
      --cpus N               L1 vCPUs (default 2)
      --defer-kvm            do not load kvm-amd at L1 boot; the script may run `load-kvm`
      --quiet                do not echo the console (only the result)

environment: XPMEM_BUILD_DIR (default <repo>/build), XPMEM_KERNEL_PKG
";

#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("{0}\n\n{USAGE}")]
    Usage(String),
    #[error(transparent)]
    Nested(#[from] nested::Error),
    #[error(transparent)]
    Debian(#[from] xpmem_e2e::debian::Error),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

struct Args {
    items: Vec<String>,
    pos: usize,
}

impl Args {
    fn next(&mut self) -> Option<String> {
        let v = self.items.get(self.pos).cloned();
        self.pos += 1;
        v
    }

    fn value(&mut self, flag: &str) -> Result<String, CliError> {
        self.next()
            .ok_or_else(|| CliError::Usage(format!("{flag} needs a value")))
    }

    fn number<T: std::str::FromStr>(&mut self, flag: &str) -> Result<T, CliError> {
        let v = self.value(flag)?;
        v.parse()
            .map_err(|_| CliError::Usage(format!("{flag}: `{v}` is not a valid number")))
    }

    fn rest(&mut self) -> Vec<String> {
        let r = self.items[self.pos.min(self.items.len())..].to_vec();
        self.pos = self.items.len();
        r
    }
}

fn cache() -> Cache {
    Cache::new(xpmem_e2e::build_dir().join("cache"))
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn cmd_l1_run(args: &mut Args) -> Result<ExitCode, CliError> {
    let mut opts = Options::new(xpmem_e2e::build_dir().join("nested"));
    let mut payload = Payload::default();
    let mut script = None;
    let mut quiet = false;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--nested" => opts.mode = Mode::Nested,
            "--direct" => opts.mode = Mode::Direct,
            "--file" => {
                let spec = args.value("--file")?;
                let (src, dest) = match spec.split_once(':') {
                    Some((s, d)) => (PathBuf::from(s), d.to_string()),
                    None => {
                        let p = PathBuf::from(&spec);
                        let base = p
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .ok_or_else(|| {
                                CliError::Usage(format!("--file {spec}: no file name"))
                            })?;
                        (p, base)
                    }
                };
                payload.file(src, dest);
            }
            "--script" => {
                let p = PathBuf::from(args.value("--script")?);
                script = Some(
                    std::fs::read_to_string(&p)
                        .map_err(|source| CliError::Read { path: p, source })?,
                );
            }
            "--timeout" => opts.timeout = Duration::from_secs(args.number("--timeout")?),
            "--memory" => opts.memory_mib = args.number("--memory")?,
            "--cpus" => opts.cpus = args.number("--cpus")?,
            "--defer-kvm" => opts.kvm = KvmLoad::Deferred,
            "--quiet" => quiet = true,
            "--" => {
                let cmd = args.rest();
                script = Some(
                    cmd.iter()
                        .map(|s| shell_quote(s))
                        .collect::<Vec<_>>()
                        .join(" ")
                        + "\n",
                );
            }
            other => return Err(CliError::Usage(format!("unknown l1-run option `{other}`"))),
        }
    }
    payload.script =
        script.ok_or_else(|| CliError::Usage("l1-run needs `-- CMD` or --script".into()))?;
    let outcome = nested::run(&cache(), &payload, &opts, |line| {
        if !quiet {
            println!("[L1] {line}");
        }
    })?;
    let host = if outcome.nested {
        "nested L1"
    } else {
        "direct"
    };
    if let Some(t) = outcome.l1_ready {
        eprintln!("[nested] L1 up with /dev/kvm in {:.1}s", t.as_secs_f64());
    }
    if outcome.timed_out {
        eprintln!(
            "[nested] TIMEOUT: killed after {:.0}s ({host})",
            outcome.total.as_secs_f64()
        );
        return Ok(ExitCode::from(124));
    }
    let rc = outcome.exit_code.unwrap_or(1);
    eprintln!(
        "[nested] command exited with {rc} after {:.1}s ({host})",
        outcome.total.as_secs_f64()
    );
    Ok(ExitCode::from(rc.clamp(0, 255) as u8))
}

fn real_main() -> Result<ExitCode, CliError> {
    let mut args = Args {
        items: std::env::args().skip(1).collect(),
        pos: 0,
    };
    match args.next().as_deref() {
        Some("fetch") => {
            let c = cache();
            let k = c.kernel()?;
            println!("kernel {} {}", k.release, k.vmlinuz.display());
            println!("modules {}", k.modules_dir.display());
            println!("busybox {}", c.busybox()?.display());
            Ok(ExitCode::SUCCESS)
        }
        Some("host") => {
            let h = nested::detect_host();
            println!(
                "{}: {}",
                if h.hardware { "direct" } else { "nested" },
                h.reason
            );
            Ok(ExitCode::SUCCESS)
        }
        Some("l1-run") => cmd_l1_run(&mut args),
        Some("-h" | "--help" | "help") => {
            print!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        Some(other) => Err(CliError::Usage(format!("unknown command `{other}`"))),
        None => Err(CliError::Usage("no command given".into())),
    }
}

fn main() -> ExitCode {
    match real_main() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("xpmem-e2e: error: {e}");
            ExitCode::from(2)
        }
    }
}
