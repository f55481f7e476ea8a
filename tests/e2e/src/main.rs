//! `xpmem-e2e`: command-line front end of the end-to-end harness.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use xpmem_e2e::cases::{self, CaseResult, Env, Status};
use xpmem_e2e::debian::Cache;
use xpmem_e2e::demo;
use xpmem_e2e::image::{self, Spec};
use xpmem_e2e::nested::{self, KvmLoad, Mode, Options, Payload};
use xpmem_e2e::process::{self, Exit, Flow};
use xpmem_e2e::scenario::{self, Echo};

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
      --cpus N               L1 vCPUs (default 1; see tests/nested/README.md)
      --defer-kvm            do not load kvm-amd at L1 boot; the script may run `load-kvm`
      --quiet                do not echo the console (only the result)
  guest-image [options]      build (or reuse) a guest initramfs; prints its path
      --module NAME          a guest-kernel module to load (repeatable; default:
                             virtio_ring virtio virtio_mmio virtio_rng virtio_net
                             vmw_vsock_virtio_transport)
      --extra-module FILE    a .ko to load after them (e.g. xpmem.ko; repeatable)
      --extra-dir DIR        copy DIR's contents to the image root (repeatable)
      --run CMD              default command run after the banner
  qemu-guest [options]       boot the guest kernel + image in QEMU (TCG, microvm with
                             ACPI and a virtio-mmio entropy device) on this host, to
                             validate images without the monitor
      --image FILE           initramfs (default: the base image)
      --smp N                vCPUs (default 2)
      --append STR           extra kernel command line
  scenario CONFIG.toml --vmm BIN [--nested|--direct] [--timeout S] [--verbose|--quiet]
                             run the monitor with a multi-VM config on the test host
  demo --vmm BIN [--nested|--direct] [--verbose|--guests]
                             the default two VMs a and b (2 vCPUs, 512 MiB each) with
                             xpmem.ko: a exports a buffer, b attaches it, writes go both
                             ways, a unmaps and b's next touch gets SIGBUS; prints each
                             step, the xpmem counters and a verdict (exit 1 on failure);
                             needs `make -C guest-driver all`
  bench-disk --vmm BIN [--nested|--direct]
                             virtio-blk benchmark: sequential MiB/s and 4 KiB random-read
                             IOPS in a guest and on the test host against the same
                             image file, one run; prints a table with guest/host ratios
  stress-forced --vmm BIN [TRIALS] [--nested|--direct]
                             forced revocation TRIALS times (default 100): a's munmap
                             while b's driver never acknowledges must return by the
                             deadline + 10%, b gets SIGBUS, nothing leaks; prints the
                             munmap times (scripts/forced-revocation.sh)
  bench-net --vmm BIN [--nested|--direct]
                             virtio-net benchmark: TCP throughput and 1-byte round trips
                             a->b between two VMs on the switch, and the same between two
                             processes over the test host's loopback, one run; prints a
                             table with guest/host ratios (XPMEM_BENCH_NET_MIB, default 16)
  vsock-host echo|recv --socket PATH --port P --bytes N [--timeout S]
                             host side of the vsock group (on the test host): echo
                             streams the pattern through a guest's echo server on
                             PATH (CONNECT P); recv listens at PATH_P for a guest
  test --vmm BIN [GROUP..] [--nested|--direct] [--verbose] [--lanes N]
                             run end-to-end groups (default: errors boot xpmem disk rootdisk net tap vsock kill scale;
                             xpmem, scale and kill need `make -C guest-driver`); prints one line per case and `e2e: N passed, N failed, N skipped`;
                             the first group alone, then the others in N parallel lanes (processes, each with its own
                             nested host; default XPMEM_E2E_LANES, else one per CPU up to 2), every line tagged [lane K]

environment: XPMEM_BUILD_DIR (default <repo>/build), XPMEM_KERNEL_PKG
";

#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("{0}\n\n{USAGE}")]
    Usage(String),
    #[error(transparent)]
    Image(#[from] image::Error),
    #[error(transparent)]
    Scenario(#[from] scenario::Error),
    #[error(transparent)]
    Cases(#[from] cases::Error),
    #[error(transparent)]
    Process(#[from] process::Error),
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

fn cmd_guest_image(args: &mut Args) -> Result<ExitCode, CliError> {
    let mut spec = Spec::base();
    let mut modules = Vec::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--module" => modules.push(args.value("--module")?),
            "--extra-module" => spec
                .extra_modules
                .push(args.value("--extra-module")?.into()),
            "--extra-dir" => spec.extra_dirs.push(args.value("--extra-dir")?.into()),
            "--run" => spec.run = Some(args.value("--run")?),
            other => {
                return Err(CliError::Usage(format!(
                    "unknown guest-image option `{other}`"
                )))
            }
        }
    }
    if !modules.is_empty() {
        spec.modules = modules;
    }
    let c = cache();
    let img = image::build(
        &c.kernel()?,
        &c.busybox()?,
        &spec,
        &xpmem_e2e::build_dir().join("images"),
    )?;
    println!("{}", img.display());
    Ok(ExitCode::SUCCESS)
}

fn cmd_qemu_guest(args: &mut Args) -> Result<ExitCode, CliError> {
    let c = cache();
    let mut image = None;
    let mut smp = 2u32;
    let mut append = String::new();
    let mut timeout = Duration::from_secs(300);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--image" => image = Some(PathBuf::from(args.value("--image")?)),
            "--smp" => smp = args.number("--smp")?,
            "--append" => append = args.value("--append")?,
            "--timeout" => timeout = Duration::from_secs(args.number("--timeout")?),
            other => {
                return Err(CliError::Usage(format!(
                    "unknown qemu-guest option `{other}`"
                )))
            }
        }
    }
    let kernel = c.kernel()?;
    let image = match image {
        Some(i) => i,
        None => cases::base_image(&c)?.1,
    };
    // microvm has no HPET/PM timer; without a known TSC frequency the kernel
    // hangs calibrating its timers under TCG.
    let cmdline = format!(
        "console=ttyS0 reboot=k panic=-1 quiet tsc_early_khz=2000000 xpmem.name=qemu xpmem.exit=poweroff {append}"
    );
    let mut cmd = std::process::Command::new("qemu-system-x86_64");
    cmd.args([
        "-M",
        "microvm,acpi=on,rtc=on",
        "-accel",
        "tcg",
        "-cpu",
        "max",
    ])
    .args(["-smp", &smp.to_string(), "-m", "512M"])
    .args([
        "-nographic",
        "-no-reboot",
        "-nodefaults",
        "-serial",
        "stdio",
    ])
    .args(["-device", "virtio-rng-device"])
    .arg("-kernel")
    .arg(&kernel.vmlinuz)
    .arg("-initrd")
    .arg(&image)
    .args(["-append", &cmdline]);
    let start = std::time::Instant::now();
    let mut ready = None;
    let exit = process::run_streaming(&mut cmd, timeout, |line| {
        let line = nested::strip_ansi(line);
        println!("[qemu] {line}");
        if let Some(Ok(xpmem_e2e::console::Event::Ready(r))) = xpmem_e2e::console::parse_line(&line)
        {
            eprintln!(
                "[qemu] guest ready after {:.1}s: cpus={} virtio={}",
                start.elapsed().as_secs_f64(),
                r.cpus,
                scenario::describe_virtio(&r)
            );
            ready = Some(r);
        }
        Flow::Continue
    })?;
    match (exit, ready) {
        (Exit::TimedOut, _) => {
            eprintln!("[qemu] TIMEOUT after {}s", timeout.as_secs());
            Ok(ExitCode::from(124))
        }
        (_, None) => {
            eprintln!("[qemu] the guest never printed its READY banner");
            Ok(ExitCode::FAILURE)
        }
        (_, Some(_)) => Ok(ExitCode::SUCCESS),
    }
}

struct RunFlags {
    opts: Options,
    vmm: Option<PathBuf>,
    echo: Echo,
    positional: Vec<String>,
    /// `test --lanes N`.
    lanes: Option<usize>,
    /// The options as given (not the positional words), for lane processes.
    given: Vec<String>,
}

fn parse_run_flags(args: &mut Args, echo: Echo) -> Result<RunFlags, CliError> {
    let mut f = RunFlags {
        opts: Options::new(xpmem_e2e::build_dir().join("nested")),
        vmm: None,
        echo,
        positional: Vec::new(),
        lanes: None,
        given: Vec::new(),
    };
    while let Some(a) = args.next() {
        // Options with a value: (the option, its value) go to lane processes as given.
        let mut with_value = |args: &mut Args| -> Result<String, CliError> {
            let v = args.value(&a)?;
            f.given.extend([a.clone(), v.clone()]);
            Ok(v)
        };
        let number = |v: String| -> Result<u64, CliError> {
            v.parse()
                .map_err(|_| CliError::Usage(format!("{a}: `{v}` is not a valid number")))
        };
        match a.as_str() {
            "--vmm" => f.vmm = Some(PathBuf::from(with_value(args)?)),
            "--timeout" => f.opts.timeout = Duration::from_secs(number(with_value(args)?)?),
            "--memory" | "--cpus" => {
                let n = u32::try_from(number(with_value(args)?)?)
                    .map_err(|_| CliError::Usage(format!("{a}: too large")))?;
                if a == "--memory" {
                    f.opts.memory_mib = n;
                } else {
                    f.opts.cpus = n;
                }
            }
            "--lanes" => {
                let n = number(args.value("--lanes")?)?;
                f.lanes = Some(usize::try_from(n).unwrap_or(8).clamp(1, 8));
            }
            "--nested" => f.opts.mode = Mode::Nested,
            "--direct" => f.opts.mode = Mode::Direct,
            "--verbose" => f.echo = Echo::All,
            "--guests" => f.echo = Echo::Guests,
            "--quiet" => f.echo = Echo::Progress,
            s if s.starts_with("--") => {
                return Err(CliError::Usage(format!("unknown option `{s}`")))
            }
            _ => {
                f.positional.push(a);
                continue;
            }
        }
        if !matches!(
            a.as_str(),
            "--vmm" | "--timeout" | "--memory" | "--cpus" | "--lanes"
        ) {
            f.given.push(a);
        }
    }
    Ok(f)
}

fn print_report(report: &scenario::Report) -> bool {
    let mut ok = report.vmm_exit == Some(0);
    for vm in &report.vms {
        match (&vm.ready, vm.ready_after) {
            (Some(r), Some(t)) => println!(
                "[vm-{}] summary: ready after {:.1}s, cpus={}, virtio={}",
                vm.name,
                t.as_secs_f64(),
                r.cpus,
                scenario::describe_virtio(r)
            ),
            _ => {
                ok = false;
                println!(
                    "[vm-{}] summary: NOT READY ({} console lines{})",
                    vm.name,
                    vm.lines,
                    vm.panic
                        .as_ref()
                        .map(|p| format!(", panic: {p}"))
                        .unwrap_or_default()
                );
            }
        }
    }
    println!(
        "[nested] monitor exit {}, total {:.1}s ({})",
        report
            .vmm_exit
            .map(|c| c.to_string())
            .unwrap_or_else(|| "unknown".into()),
        report.host.total.as_secs_f64(),
        if report.host.nested {
            "nested L1"
        } else {
            "direct"
        }
    );
    ok
}

fn cmd_scenario(args: &mut Args) -> Result<ExitCode, CliError> {
    let f = parse_run_flags(args, Echo::Guests)?;
    let vmm = f.vmm.clone().ok_or_else(|| {
        CliError::Usage("--vmm BIN is required (tests/nested/build-static.sh xpmem-vmm)".into())
    })?;
    let c = cache();
    let [config] = f.positional.as_slice() else {
        return Err(CliError::Usage(
            "scenario needs exactly one CONFIG.toml".into(),
        ));
    };
    let vmm_deadline = f
        .opts
        .timeout
        .saturating_sub(Duration::from_secs(60))
        .max(Duration::from_secs(60));
    let prepared = scenario::prepare_file(std::path::Path::new(config), &vmm, vmm_deadline)?;
    let host = nested::detect_host();
    println!(
        "[nested] {} VMs ({}); test host: {}",
        prepared.vms.len(),
        prepared.vms.join(", "),
        if nested::choose(f.opts.mode)? {
            format!("nested L1 QEMU-TCG VM ({})", host.reason)
        } else {
            "this host (hardware KVM)".to_string()
        }
    );
    let mut opts = f.opts.clone();
    let log = xpmem_e2e::build_dir()
        .join("logs")
        .join(format!("scenario-{}.console.log", std::process::id()));
    println!("[nested] full console log: {}", log.display());
    opts.console_log = Some(log);
    let report = scenario::run(&c, &prepared, &opts, f.echo)?;
    Ok(if print_report(&report) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The demo: VM a exports a buffer, VM b attaches it (see `xpmem_e2e::demo`).
fn cmd_demo(args: &mut Args) -> Result<ExitCode, CliError> {
    let f = parse_run_flags(args, Echo::Progress)?;
    if let Some(extra) = f.positional.first() {
        return Err(CliError::Usage(format!("demo takes no argument `{extra}`")));
    }
    let vmm = f.vmm.clone().ok_or_else(|| {
        CliError::Usage("--vmm BIN is required (./scripts/demo.sh builds and passes it)".into())
    })?;
    let env = Env {
        cache: cache(),
        vmm,
        opts: f.opts.clone(),
        echo: f.echo,
    };
    let log = xpmem_e2e::build_dir()
        .join("logs")
        .join(format!("demo-{}.console.log", std::process::id()));
    // Whatever stopped the demo, it ends with a verdict.
    let problems = demo::run(&env, &log).unwrap_or_else(|e| vec![e.to_string()]);
    println!("{}", demo::Demo::verdict(&problems));
    for p in &problems {
        println!("  - {p}");
    }
    if problems.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        if log.exists() {
            println!("full console: {}", log.display());
        }
        Ok(ExitCode::FAILURE)
    }
}

/// The environment of a command that runs on the test host (`--vmm BIN`
/// required), and its positional arguments.
fn run_env(args: &mut Args) -> Result<(Env, Vec<String>), CliError> {
    let f = parse_run_flags(args, Echo::Progress)?;
    let vmm = f
        .vmm
        .ok_or_else(|| CliError::Usage("--vmm BIN is required".into()))?;
    let env = Env {
        cache: cache(),
        vmm,
        opts: f.opts,
        echo: f.echo,
    };
    Ok((env, f.positional))
}

/// A benchmark: (test host, guest) figures of one run on the test host.
type Bench<T> = fn(&Env, nested::Options) -> Result<(T, T), String>;

/// A benchmark command: runs `bench` on the test host, prints its table.
fn cmd_bench<T>(
    args: &mut Args,
    name: &str,
    bench: Bench<T>,
    table: fn(&T, &T) -> String,
) -> Result<ExitCode, CliError> {
    let (env, _) = run_env(args)?;
    match bench(&env, env.opts.clone()) {
        Ok((host, guest)) => {
            print!("{}", table(&host, &guest));
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("xpmem-e2e: {name}: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn cmd_stress_forced(args: &mut Args) -> Result<ExitCode, CliError> {
    let (env, positional) = run_env(args)?;
    let trials = match positional.as_slice() {
        [] => 100,
        [n] => n
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=10_000).contains(n))
            .ok_or_else(|| CliError::Usage(format!("trials {n:?}: give 1..10000")))?,
        more => return Err(CliError::Usage(format!("one TRIALS number, got {more:?}"))),
    };
    match xpmem_e2e::forced::run(&env, env.opts.clone(), trials) {
        Ok(report) => {
            print!("{}", report.summary(trials));
            let problems = report.problems(trials);
            for p in &problems {
                println!("  - {p}");
            }
            println!(
                "stress-forced: {}",
                if problems.is_empty() {
                    "PASSED"
                } else {
                    "FAILED"
                }
            );
            Ok(if problems.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Err(e) => {
            eprintln!("xpmem-e2e: stress-forced: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Lanes of `test` unless `--lanes` says: `XPMEM_E2E_LANES`, else one per
/// CPU up to 2 (a nested test host keeps one CPU busy; more lanes than CPUs
/// would only slow each down).
fn default_lanes() -> usize {
    std::env::var("XPMEM_E2E_LANES")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(2)))
        .clamp(1, 8)
}

fn cmd_test(args: &mut Args) -> Result<ExitCode, CliError> {
    let f = parse_run_flags(args, Echo::Progress)?;
    let groups: Vec<String> = if f.positional.is_empty() {
        cases::GROUPS.iter().map(|s| s.to_string()).collect()
    } else {
        f.positional.clone()
    };
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    let mut results: Vec<CaseResult> = Vec::new();
    if let Some(why) = cases::cannot_run(f.opts.mode) {
        let status = if ci {
            Status::Fail(format!("cannot run under CI=true: {why}"))
        } else {
            eprintln!("############################################################");
            eprintln!("# SKIPPING end-to-end tests: {why}");
            eprintln!("############################################################");
            Status::Skip(why.clone())
        };
        for g in &groups {
            results.push(CaseResult {
                name: format!("{g}/*"),
                status: status.clone(),
            });
        }
    } else {
        let vmm = f.vmm.clone().ok_or_else(|| {
            CliError::Usage("--vmm BIN is required (tests/nested/build-static.sh xpmem-vmm)".into())
        })?;
        let env = Env {
            cache: cache(),
            vmm,
            opts: f.opts.clone(),
            echo: f.echo,
        };
        let run_here = |groups: &[String], results: &mut Vec<CaseResult>| {
            for g in groups {
                let start = std::time::Instant::now();
                println!("[e2e] group {g}: starting");
                let r = cases::run_group(&env, g);
                println!(
                    "[e2e] group {g}: {} cases in {:.1}s",
                    r.len(),
                    start.elapsed().as_secs_f64()
                );
                results.extend(r);
            }
        };
        let lanes = f.lanes.unwrap_or_else(default_lanes);
        let exe = std::env::current_exe().ok();
        match (lanes, groups.split_first(), exe) {
            (2.., Some((first, rest)), Some(exe)) if rest.len() > 1 => {
                // The first group alone fills the caches the lanes share.
                run_here(std::slice::from_ref(first), &mut results);
                let plan = xpmem_e2e::lanes::plan(rest, lanes);
                let started = std::time::Instant::now();
                results.extend(xpmem_e2e::lanes::run(&exe, &f.given, &plan));
                println!(
                    "[e2e] {} lanes done in {:.1}s",
                    plan.len(),
                    started.elapsed().as_secs_f64()
                );
            }
            _ => run_here(&groups, &mut results),
        }
    }
    for r in &results {
        match &r.status {
            Status::Pass => println!("PASS {}", r.name),
            Status::Fail(why) => println!("FAIL {}: {why}", r.name),
            Status::Skip(why) => println!("SKIP {}: {why}", r.name),
        }
    }
    let (p, fl, s) = cases::counts(&results);
    println!("e2e: {p} passed, {fl} failed, {s} skipped");
    Ok(if fl == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
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
        Some("guest-image") => cmd_guest_image(&mut args),
        Some("qemu-guest") => cmd_qemu_guest(&mut args),
        Some("scenario") => cmd_scenario(&mut args),
        Some("demo") => cmd_demo(&mut args),
        Some("test") => cmd_test(&mut args),
        Some("bench-disk") => cmd_bench(
            &mut args,
            "bench-disk",
            xpmem_e2e::disk_group::bench,
            xpmem_e2e::disk_group::bench_table,
        ),
        Some("stress-forced") => cmd_stress_forced(&mut args),
        Some("bench-net") => cmd_bench(
            &mut args,
            "bench-net",
            xpmem_e2e::bench::net,
            xpmem_e2e::bench::net_table,
        ),
        Some("vsock-host") => {
            let rest: Vec<String> = std::iter::from_fn(|| args.next()).collect();
            Ok(match xpmem_e2e::vsock_host::main(&rest) {
                0 => ExitCode::SUCCESS,
                2 => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            })
        }
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
