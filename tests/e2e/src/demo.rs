//! The demo (`xpmem-e2e demo`, run by `./scripts/demo.sh`): the default two
//! VMs `a` and `b` (2 vCPUs, 512 MiB each) under the monitor on the KVM test
//! host, with the guest driver `xpmem.ko` and `xpmem-demo` in their image.
//!
//! * `a` runs `guest-driver/tools/image/scenario/demo-a.sh`: it exports a
//!   64-page buffer with `xpmem_make` and serves its segid on TCP port 7000.
//! * `b` runs `demo-b.sh`: it connects to `a:7000` (the name from the
//!   `/etc/hosts` the monitor's `xpmem.hosts=` fills, the address on the
//!   setup's switch), reads `SEGID <n>`, and attaches. Nothing is typed into
//!   a console: the two programs find each other as XPMEM programs do.
//! * The two sides then take turns through a control word in page 0 of the
//!   buffer: b reads a's message and writes its own, a sees it and writes a
//!   reply, b sees that; a unmaps the data pages (the monitor invalidates b's
//!   mapping and waits for b's acknowledgement), and b's next touch of a data
//!   page gets SIGBUS.
//!
//! Each guest prints its `/proc/xpmem/stats` counters before and after, the
//! monitor prints its xpmem domain's counters at exit. The demo shows the
//! steps, the counters and a verdict; the full console goes to a log file.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::cases::{self, Env};
use crate::console::{self, Event, Ready};
use crate::image;
use crate::nested;
use crate::scenario::{self, Echo};

/// Errors that keep the demo from running at all.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path} is missing: build the guest driver and tools first (`make -C guest-driver all`, which ./scripts/demo.sh runs)")]
    MissingInput { path: PathBuf },
    #[error("cannot write the demo's monitor config: {0}")]
    Config(String),
    #[error(transparent)]
    Debian(#[from] crate::debian::Error),
    #[error(transparent)]
    Image(#[from] image::Error),
    #[error(transparent)]
    Scenario(#[from] scenario::Error),
    #[error(transparent)]
    Nested(#[from] nested::Error),
    #[error(transparent)]
    Cases(#[from] crate::cases::Error),
}

/// The monitor is killed after this long (two nested boots take 1-2 minutes).
const VMM_DEADLINE: Duration = Duration::from_secs(360);
/// With no new output for this long, a progress line says what is awaited.
const PROGRESS_EVERY: Duration = Duration::from_secs(15);

/// The steps `xpmem-demo demo-export` (VM `a`) and `demo-attach` (VM `b`)
/// report, in causal order: each one happens after the previous one, enforced
/// by the control word in page 0 (or, for `invalidated` and `detach`, by the
/// munmap and the remove that precede them). Console lines of two VMs arrive
/// in any order (a long line takes a while through a nested serial port), so
/// step lines are shown in this order.
const STEPS: &[(&str, &str)] = &[
    ("a", "export"),
    ("a", "segid-sent"),
    ("b", "segid-received"),
    ("b", "attach"),
    ("b", "write"),
    ("a", "sees-b"),
    ("a", "write"),
    ("b", "sees-a"),
    ("a", "munmap"),
    ("b", "invalidated"),
    ("b", "sigbus"),
    ("a", "remove"),
    ("b", "detach"),
];

fn steps_of(vm: &str) -> impl Iterator<Item = &'static str> + '_ {
    STEPS.iter().filter(move |(v, _)| *v == vm).map(|(_, s)| *s)
}

/// The `/proc/xpmem/stats` counters shown in the table, in order.
const SHOWN_STATS: &[&str] = &[
    "pages_mapped",
    "inval_sent",
    "inval_skipped",
    "inval_recv",
    "revoked_recv",
    "resolves",
    "resolved_pages",
    "faults",
    "fault_pages",
    "fault_sigbus",
];
/// Counters that are 0 once nobody uses xpmem any more.
const GAUGES: &[&str] = &[
    "owners",
    "segments",
    "permits",
    "attachments",
    "pages_mapped",
    "inval_sent_inflight",
    "inval_recv_inflight",
    "resolves_inflight",
    "faults_inflight",
];

const VMM_START: &str = "XPMEM-DEMO-L1 MONITOR START";
const VMM_EXIT: &str = "XPMEM-VMM-EXIT rc=";
const DOMAIN: &str = "xpmem-vmm: xpmem domain at exit: ";

/// The test-host script: runs the monitor (its stdin is not a console: the
/// guests exchange the segid over TCP).
fn payload_script(deadline: Duration) -> String {
    let t = deadline.as_secs().max(1);
    format!(
        r#"echo "{VMM_START}"
timeout -s KILL {t} ./xpmem-vmm --config config.toml </dev/null 2>&1
echo "{VMM_EXIT}$?"
"#
    )
}

/// The monitor config: the default two VMs on the monitor's switch (the
/// default network), each running its side of the demo with its output on
/// the console.
fn config_text(kernel: &Path, initrd: &Path) -> Result<String, Error> {
    let vms: Vec<_> = cases::two_vms()
        .into_iter()
        .map(|mut vm| {
            vm.cmdline = format!("xpmem.run=demo-{}.sh xpmem.out=kmsg", vm.name);
            vm
        })
        .collect();
    let text = scenario::config_toml(&vms, kernel, initrd);
    // Parsed once here so a config the monitor would refuse fails early.
    text.parse::<toml::Table>()
        .map_err(|e| Error::Config(e.message().to_string()))?;
    Ok(text)
}

/// One `key=value` list, in the order printed.
pub type Counters = Vec<(String, i64)>;

fn parse_counters(s: &str) -> Counters {
    s.split_whitespace()
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn counter(c: &Counters, name: &str) -> Option<i64> {
    c.iter().find(|(k, _)| k == name).map(|(_, v)| *v)
}

/// What one VM did.
#[derive(Debug, Default, Clone)]
pub struct VmDemo {
    /// The readiness banner.
    pub ready: Option<Ready>,
    /// Seconds from the monitor's start to the banner.
    pub ready_after: Option<f64>,
    /// `(step key, text)` in order.
    pub steps: Vec<(String, String)>,
    /// The reason of a `XPMEM-DEMO FAIL` line.
    pub failure: Option<String>,
    /// `XPMEM-DEMO DONE` seen.
    pub done: bool,
    /// `XPMEM-DEMO STATS <label>` lines by label.
    pub stats: BTreeMap<String, Counters>,
    /// The segid it exported (a) or received over TCP (b).
    pub segid: Option<u64>,
    /// Exit code of its command.
    pub rc: Option<i32>,
    /// A kernel panic, BUG or Oops line.
    pub trouble: Option<String>,
}

/// The xpmem domain's report at the monitor's exit.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DomainReport {
    /// Current counters (all 0 when nothing leaked).
    pub held: Counters,
    /// Totals of the run.
    pub total: Counters,
}

fn parse_domain(rest: &str) -> DomainReport {
    let (held, total) = rest.split_once(';').unwrap_or((rest, ""));
    DomainReport {
        held: parse_counters(held.trim().strip_prefix("held").unwrap_or(held)),
        total: parse_counters(total.trim().strip_prefix("total").unwrap_or(total)),
    }
}

/// Where the run is, for the progress lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Host,
    Boot,
    Demo,
    Shutdown,
}

/// The demo's state, fed one console line at a time.
#[derive(Debug)]
pub struct Demo {
    /// VM a.
    pub a: VmDemo,
    /// VM b.
    pub b: VmDemo,
    /// The monitor was started.
    pub vmm_started: bool,
    /// The monitor's exit code.
    pub vmm_exit: Option<i32>,
    /// The domain report.
    pub domain: Option<DomainReport>,
    /// The monitor's other lines (`xpmem-vmm: ...`), for failure reasons.
    pub monitor: Vec<String>,
    /// Step lines that arrived before an earlier step's: `(index in STEPS, line)`.
    held_back: Vec<(usize, String)>,
    /// Index in [`STEPS`] of the next step line to show.
    next_step: usize,
    stage: Stage,
    start: Instant,
    vmm_start: Option<Instant>,
}

impl Demo {
    /// A demo on a nested (`true`) or direct test host.
    pub fn new(nested: bool) -> Self {
        Self {
            a: VmDemo::default(),
            b: VmDemo::default(),
            vmm_started: false,
            vmm_exit: None,
            domain: None,
            monitor: Vec::new(),
            held_back: Vec::new(),
            next_step: 0,
            stage: if nested { Stage::Host } else { Stage::Boot },
            start: Instant::now(),
            vmm_start: None,
        }
    }

    /// What the run is waiting for, for a progress line.
    fn waiting_for(&self) -> String {
        match self.stage {
            Stage::Host => "booting the nested KVM test host".into(),
            Stage::Boot => {
                let pending: Vec<&str> = [("a", &self.a), ("b", &self.b)]
                    .iter()
                    .filter(|(_, v)| v.ready.is_none())
                    .map(|(n, _)| *n)
                    .collect();
                format!("booting VM {}", pending.join(" and VM "))
            }
            Stage::Demo => {
                if self.a.segid.is_none() {
                    "waiting for a to export".into()
                } else if self.b.segid.is_none() {
                    "waiting for b to get the segid from a over TCP".into()
                } else {
                    "running the demo steps".into()
                }
            }
            Stage::Shutdown => "waiting for both VMs to power off".into(),
        }
    }

    fn since_vmm(&self) -> f64 {
        self.vmm_start
            .map(|t| t.elapsed().as_secs_f64())
            .unwrap_or_default()
    }

    /// Feeds one line of the test host's console; returns what to show.
    pub fn feed(&mut self, line: &str) -> Vec<String> {
        let line = line.trim_end_matches('\r');
        let mut out = Vec::new();
        if line.contains(nested::KVM_READY_MARKER) && self.stage == Stage::Host {
            out.push(format!(
                "[host] nested test host up with /dev/kvm after {:.0} s",
                self.start.elapsed().as_secs_f64()
            ));
            self.stage = Stage::Boot;
        } else if line == VMM_START {
            self.vmm_started = true;
            self.vmm_start = Some(Instant::now());
            self.stage = Stage::Boot;
            let vms: Vec<String> = cases::two_vms()
                .iter()
                .map(|v| format!("{} ({} vCPUs, {} MiB)", v.name, v.vcpus, v.memory_mib))
                .collect();
            out.push(format!(
                "[host] xpmem-vmm started, booting Debian 12 in VMs {}",
                vms.join(" and ")
            ));
        } else if let Some(rc) = line.strip_prefix(VMM_EXIT) {
            self.vmm_exit = rc.trim().parse().ok();
            out.push(format!(
                "[host] xpmem-vmm exited with {}",
                self.vmm_exit
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| rc.to_string())
            ));
        } else if let Some(rest) = line.strip_prefix(DOMAIN) {
            self.domain = Some(parse_domain(rest));
        } else if line.starts_with("xpmem-vmm:") {
            self.monitor.push(line.to_string());
        } else if let Some(rest) = line.strip_prefix("[vm-") {
            if let Some((vm, text)) = rest.split_once(']') {
                let text = text.strip_prefix(' ').unwrap_or(text);
                self.feed_vm(vm, text, &mut out);
            }
        }
        out
    }

    fn feed_vm(&mut self, vm: &str, text: &str, out: &mut Vec<String>) {
        let since = self.since_vmm();
        let v = match vm {
            "a" => &mut self.a,
            "b" => &mut self.b,
            _ => return,
        };
        if v.trouble.is_none()
            && ["Kernel panic", "BUG:", "Oops", "general protection"]
                .iter()
                .any(|k| text.contains(k))
        {
            v.trouble = Some(text.to_string());
            out.push(format!("[{vm}] kernel trouble: {text}"));
        }
        match console::parse_line(text) {
            Some(Ok(Event::Ready(r))) if v.ready.is_none() => {
                out.push(format!(
                    "[{vm}] booted after {since:.0} s: {} CPUs, virtio {}",
                    r.cpus,
                    scenario::describe_virtio(&r)
                ));
                v.ready = Some(r);
                v.ready_after = Some(since);
            }
            Some(Ok(Event::Result { rc, .. })) => v.rc = Some(rc),
            Some(Ok(Event::InitError(e))) => out.push(format!("[{vm}] init error: {e}")),
            _ => {}
        }
        let Some((_, rest)) = text.split_once("XPMEM-DEMO ") else {
            return;
        };
        let (verb, tail) = rest.split_once(' ').unwrap_or((rest, ""));
        match verb {
            "STEP" => {
                let (key, what) = tail.split_once(' ').unwrap_or((tail, ""));
                v.steps.push((key.to_string(), what.to_string()));
                let shown = format!("[{vm}] {what}");
                match STEPS.iter().position(|&(sv, sk)| sv == vm && sk == key) {
                    Some(i) => {
                        self.held_back.push((i, shown));
                        self.release_steps(out);
                    }
                    None => out.push(shown),
                }
            }
            "FAIL" => {
                v.failure.get_or_insert_with(|| tail.to_string());
                let failed = format!("[{vm}] FAILED: {tail}");
                out.extend(self.flush_steps());
                out.push(failed);
            }
            "DONE" => v.done = true,
            "SEGID" => v.segid = tail.trim().parse().ok(),
            "STATS" => {
                let (label, kvs) = tail.split_once(' ').unwrap_or((tail, ""));
                v.stats.insert(label.to_string(), parse_counters(kvs));
            }
            _ => {}
        }
        self.stage = if self.a.ready.is_none() || self.b.ready.is_none() {
            Stage::Boot
        } else if (self.a.done || self.a.failure.is_some())
            && (self.b.done || self.b.failure.is_some())
        {
            Stage::Shutdown
        } else {
            Stage::Demo
        };
    }

    /// Shows held-back step lines whose predecessors have all been shown.
    fn release_steps(&mut self, out: &mut Vec<String>) {
        while let Some(k) = self
            .held_back
            .iter()
            .position(|(i, _)| *i == self.next_step)
        {
            out.push(self.held_back.remove(k).1);
            self.next_step += 1;
        }
    }

    /// Every held-back step line, in step order (once a step is known to be
    /// missing, or at the end).
    pub fn flush_steps(&mut self) -> Vec<String> {
        self.held_back.sort_by_key(|(i, _)| *i);
        if let Some((i, _)) = self.held_back.last() {
            self.next_step = self.next_step.max(i + 1);
        }
        self.held_back.drain(..).map(|(_, l)| l).collect()
    }

    /// Everything that went wrong; empty if the demo succeeded.
    pub fn problems(&self, timed_out: bool) -> Vec<String> {
        let mut p = Vec::new();
        if timed_out {
            p.push("the test host was killed at its deadline".into());
        }
        if !self.vmm_started {
            p.push("the monitor never started on the test host".into());
        }
        for (name, v) in [("a", &self.a), ("b", &self.b)] {
            if let Some(t) = &v.trouble {
                p.push(format!("VM {name}'s kernel reported: {t}"));
            }
            if v.ready.is_none() {
                if self.vmm_started {
                    p.push(format!(
                        "VM {name} did not boot (no XPMEM-GUEST READY banner)"
                    ));
                }
                continue;
            }
            let missing: Vec<&str> = steps_of(name)
                .filter(|s| !v.steps.iter().any(|(k, _)| k == s))
                .collect();
            if let Some(f) = &v.failure {
                p.push(format!("VM {name}: {f}"));
            } else if !missing.is_empty() {
                p.push(format!(
                    "VM {name} never reported step(s) {} (command exit {:?})",
                    missing.join(", "),
                    v.rc
                ));
            } else if !v.done {
                p.push(format!("VM {name} did not print XPMEM-DEMO DONE"));
            }
            match (v.stats.get("before"), v.stats.get("after")) {
                (Some(_), Some(after)) => {
                    let held: Vec<String> = GAUGES
                        .iter()
                        .filter_map(|g| {
                            counter(after, g)
                                .filter(|v| *v != 0)
                                .map(|v| format!("{g}={v}"))
                        })
                        .collect();
                    if !held.is_empty() {
                        p.push(format!(
                            "VM {name}'s driver still holds {} after the demo",
                            held.join(" ")
                        ));
                    }
                }
                _ => p.push(format!(
                    "VM {name} did not print its /proc/xpmem/stats before and after"
                )),
            }
        }
        if self.a.segid.is_some() && self.b.segid != self.a.segid {
            p.push(format!(
                "a exported segid {:?} but b received {:?} over TCP",
                self.a.segid, self.b.segid
            ));
        }
        if self.vmm_started {
            match self.vmm_exit {
                Some(0) => {}
                rc => p.push(format!(
                    "xpmem-vmm exit {rc:?} (137: killed at the {} s deadline){}",
                    VMM_DEADLINE.as_secs(),
                    self.monitor
                        .last()
                        .map(|m| format!("; it said: {m}"))
                        .unwrap_or_default()
                )),
            }
            match &self.domain {
                None => p.push("the monitor printed no xpmem domain report at exit".into()),
                Some(d) => {
                    let held: Vec<String> = d
                        .held
                        .iter()
                        .filter(|(_, v)| *v != 0)
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect();
                    if d.held.is_empty() {
                        p.push("the monitor's domain report has no held counters".into());
                    } else if !held.is_empty() {
                        p.push(format!(
                            "the host's xpmem domain still holds {} at exit",
                            held.join(" ")
                        ));
                    }
                    if counter(&d.total, "invalidations_completed").unwrap_or(0) < 1 {
                        p.push("the host's xpmem domain completed no invalidation".into());
                    }
                    if let Some(f) = counter(&d.total, "invalidations_forced").filter(|f| *f != 0) {
                        p.push(format!(
                            "the host forced {f} invalidation(s) at the deadline instead of getting b's acknowledgement \
                             (b was too slow to answer within the monitor's invalidate_deadline_ms, default 1000 ms; \
                             is the machine overloaded?)"
                        ));
                    }
                }
            }
        }
        p
    }

    /// The counters table: each guest's `/proc/xpmem/stats` before and after.
    pub fn stats_table(&self) -> String {
        let cell = |v: &VmDemo, label: &str, name: &str| {
            v.stats
                .get(label)
                .and_then(|c| counter(c, name))
                .map(|n| n.to_string())
                .unwrap_or_else(|| "-".into())
        };
        let mut s = String::new();
        let _ = writeln!(
            s,
            "  {:<18} {:>8} {:>8}   {:>8} {:>8}",
            "/proc/xpmem/stats", "a before", "a after", "b before", "b after"
        );
        for name in SHOWN_STATS {
            let _ = writeln!(
                s,
                "  {:<18} {:>8} {:>8}   {:>8} {:>8}",
                name,
                cell(&self.a, "before", name),
                cell(&self.a, "after", name),
                cell(&self.b, "before", name),
                cell(&self.b, "after", name)
            );
        }
        s
    }

    /// The domain report, two lines.
    pub fn domain_lines(&self) -> Vec<String> {
        let join = |c: &Counters| {
            c.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        match &self.domain {
            None => vec!["  (no report: the monitor did not exit normally)".into()],
            Some(d) => vec![
                format!("  held:  {}", join(&d.held)),
                format!("  total: {}", join(&d.total)),
            ],
        }
    }

    /// The verdict line for `problems`.
    pub fn verdict(problems: &[String]) -> String {
        if problems.is_empty() {
            "DEMO SUCCEEDED: b got a's segid over TCP, \
             b read a's buffer and a read b's writes through XPMEM, \
             a's munmap was acknowledged by b (no forced invalidation), \
             b's next touch was refused with SIGBUS, a's remove revoked the rest, \
             nothing leaked"
                .into()
        } else {
            format!("DEMO FAILED ({} problem(s)):", problems.len())
        }
    }
}

/// The guest image: base modules, `xpmem.ko`, and `guest-driver/tools/image`.
fn demo_image(env: &Env) -> Result<(PathBuf, PathBuf), Error> {
    let root = crate::repo_root();
    let ko = root.join("guest-driver/kmod/xpmem.ko");
    let tools = root.join("guest-driver/tools/image");
    for path in [
        ko.clone(),
        tools.join("bin/xpmem-demo"),
        tools.join("scenario/demo-a.sh"),
    ] {
        if !path.exists() {
            return Err(Error::MissingInput { path });
        }
    }
    Ok(crate::cases::xpmem_image(env)?)
}

/// Runs the demo, printing its steps; returns the problems (empty: success).
/// The full console goes to `log`.
pub fn run(env: &Env, log: &Path) -> Result<Vec<String>, Error> {
    let nested_host = nested::choose(env.opts.mode)?;
    println!(
        "[host] test host: {}",
        if nested_host {
            format!(
                "a nested QEMU-TCG VM with emulated AMD SVM ({})",
                nested::detect_host().reason
            )
        } else {
            "this machine (hardware KVM)".into()
        }
    );
    println!("[host] full console log: {}", log.display());
    let (kernel, initrd) = demo_image(env)?;
    let config = config_text(&kernel, &initrd)?;
    let config_path = crate::build_dir().join("scenarios").join("demo.toml");
    let mut prepared = scenario::prepare(&config_path, &config, &env.vmm, VMM_DEADLINE)?;
    prepared.payload.script = payload_script(VMM_DEADLINE);
    let mut opts = env.opts.clone();
    opts.timeout = opts.timeout.min(VMM_DEADLINE + Duration::from_secs(120));
    opts.console_log = Some(log.to_path_buf());

    let demo = Mutex::new(Demo::new(nested_host));
    let last_shown = Mutex::new(Instant::now());
    let finished = AtomicBool::new(false);
    if nested_host {
        println!("[host] booting the nested KVM test host (QEMU-TCG: about 30-60 s)");
    }
    let echo = env.echo;
    let outcome = std::thread::scope(|s| {
        s.spawn(|| {
            let start = Instant::now();
            while !finished.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                let Ok(mut last) = last_shown.lock() else {
                    return;
                };
                if last.elapsed() >= PROGRESS_EVERY {
                    let what = demo
                        .lock()
                        .map(|d| d.waiting_for())
                        .unwrap_or_else(|_| "running".into());
                    println!(
                        "[host] ... {what} ({:.0} s since start)",
                        start.elapsed().as_secs_f64()
                    );
                    *last = Instant::now();
                }
            }
        });
        let r = nested::run(&env.cache, &prepared.payload, &opts, |line| {
            if echo == Echo::All || (echo == Echo::Guests && line.starts_with("[vm-")) {
                println!("    | {line}");
            }
            let shown = match demo.lock() {
                Ok(mut d) => d.feed(line),
                Err(_) => Vec::new(),
            };
            if !shown.is_empty() {
                for l in shown {
                    println!("{l}");
                }
                if let Ok(mut last) = last_shown.lock() {
                    *last = Instant::now();
                }
            }
        });
        finished.store(true, Ordering::Relaxed);
        r
    });
    let mut demo = demo
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for l in demo.flush_steps() {
        println!("{l}");
    }
    println!();
    println!("xpmem counters in each guest, before and after the demo:");
    print!("{}", demo.stats_table());
    println!("the host's xpmem domain at the monitor's exit (xpmem-vmm):");
    for l in demo.domain_lines() {
        println!("{l}");
    }
    println!();
    let mut problems = Vec::new();
    let timed_out = match outcome {
        Ok(o) => o.timed_out,
        Err(e) => {
            problems.push(format!("the test host failed: {e}"));
            false
        }
    };
    problems.extend(demo.problems(timed_out));
    Ok(problems)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
mod tests {
    use super::*;

    /// A successful run's console, as the test host prints it.
    fn good_run() -> Vec<String> {
        let mut l: Vec<String> = vec![
            "XPMEM-L1 KVM READY uptime=30.1s".into(),
            VMM_START.into(),
            "[vm-a] [    5.0] XPMEM-GUEST READY a cpus=2 virtio=virtio0:0x0004:virtio_rng,virtio1:0x002a:xpmem uptime=5.0".into(),
            "[vm-b] [    5.1] XPMEM-GUEST READY b cpus=2 virtio=virtio0:0x0004:virtio_rng uptime=5.1".into(),
            "[vm-a] [    5.2] XPMEM-DEMO STATS before owners=0 segments=0 permits=0 attachments=0 pages_mapped=0 inval_sent=0 inval_recv=0 revoked_recv=0".into(),
            "[vm-b] [    5.2] XPMEM-DEMO STATS before owners=0 pages_mapped=0 inval_sent=0 inval_recv=0 revoked_recv=0".into(),
            "[vm-a] [    5.3] XPMEM-DEMO STEP export exported 64 pages (256 KiB) as segid 0x2a".into(),
            "[vm-a] [    5.3] XPMEM-DEMO SEGID 42".into(),
            "[vm-b] [    5.4] XPMEM-DEMO SEGID 42".into(),
        ];
        // b's lines arrive late: all of them after all of a's.
        for s in steps_of("a").skip(1) {
            l.push(format!("[vm-a] [ 6.0] XPMEM-DEMO STEP {s} a did {s}\r"));
        }
        for s in steps_of("b") {
            l.push(format!("[vm-b] [ 6.0] XPMEM-DEMO STEP {s} b did {s}"));
        }
        l.extend([
            "[vm-a] [ 7.0] XPMEM-DEMO DONE".into(),
            "[vm-b] [ 7.0] XPMEM-DEMO DONE".into(),
            "[vm-a] [ 7.1] XPMEM-DEMO STATS after owners=0 pages_mapped=0 inval_sent=2 inval_recv=0 revoked_recv=0".into(),
            "[vm-b] [ 7.1] XPMEM-DEMO STATS after owners=0 pages_mapped=0 inval_sent=0 inval_recv=1 revoked_recv=0".into(),
            "[vm-a] [ 7.2] XPMEM-GUEST RESULT a rc=0".into(),
            "[vm-b] [ 7.2] XPMEM-GUEST RESULT b rc=0".into(),
            "xpmem-vmm: xpmem domain at exit: held vms=0 segments=0 mapped_pages=0; total map_actions=130 invalidations_started=2 invalidations_completed=2 invalidations_forced=0".into(),
            "XPMEM-VMM-EXIT rc=0".into(),
        ]);
        l
    }

    fn run_lines<'a>(lines: impl IntoIterator<Item = &'a String>) -> (Demo, Vec<String>) {
        let mut d = Demo::new(true);
        let mut shown = Vec::new();
        for l in lines {
            shown.extend(d.feed(l));
        }
        (d, shown)
    }

    #[test]
    fn a_complete_run_succeeds_and_shows_each_step() {
        let lines = good_run();
        let (d, shown) = run_lines(&lines);
        assert_eq!(d.problems(false), Vec::<String>::new());
        // Step lines are shown in causal order, whatever order they came in.
        let steps: Vec<&str> = shown
            .iter()
            .filter(|l| l.contains(" did ") || l.contains("exported"))
            .map(String::as_str)
            .collect();
        let want: Vec<String> = STEPS
            .iter()
            .map(|(vm, s)| {
                if *s == "export" {
                    "[a] exported 64 pages (256 KiB) as segid 0x2a".to_string()
                } else {
                    format!("[{vm}] {vm} did {s}")
                }
            })
            .collect();
        assert_eq!(steps, want);
        assert!(shown.iter().any(|l| l.starts_with("[a] booted after")
            && l.contains("2 CPUs")
            && l.contains("id42/xpmem")));
        assert!(shown.contains(&"[host] xpmem-vmm exited with 0".to_string()));
        assert_eq!(d.a.segid, Some(42));
        assert_eq!(d.b.segid, Some(42));
        let dom = d.domain.as_ref().unwrap();
        assert_eq!(counter(&dom.total, "invalidations_completed"), Some(2));
        assert_eq!(counter(&dom.held, "vms"), Some(0));
        let table = d.stats_table();
        let row = table.lines().find(|l| l.contains("inval_recv")).unwrap();
        assert_eq!(
            row.split_whitespace().collect::<Vec<_>>(),
            ["inval_recv", "0", "0", "0", "1"]
        );
        assert!(table
            .lines()
            .any(|l| l.contains("fault_sigbus") && l.contains(" - ")));
        assert!(Demo::verdict(&[]).starts_with("DEMO SUCCEEDED"));
    }

    #[test]
    fn a_guest_failure_is_reported_with_its_reason() {
        let mut lines: Vec<String> = good_run()
            .into_iter()
            .filter(|l| {
                !l.contains("STEP sigbus")
                    && !l.contains("STEP detach")
                    && !l.contains("[vm-b] [ 7.0] XPMEM-DEMO DONE")
            })
            .collect();
        lines.insert(
            lines.len() - 4,
            "[vm-b] [ 6.5] XPMEM-DEMO FAIL touch of a data page after a's munmap: no fault".into(),
        );
        let (mut d, shown) = run_lines(&lines);
        // a's later steps were held back until b's failure, then shown before it.
        let fail = shown
            .iter()
            .position(|l| l.starts_with("[b] FAILED: touch"));
        let remove = shown.iter().position(|l| l == "[a] a did remove");
        assert!(remove.is_some() && remove < fail, "{shown:?}");
        assert!(d.flush_steps().is_empty());
        let p = d.problems(false);
        assert_eq!(
            p,
            vec!["VM b: touch of a data page after a's munmap: no fault".to_string()]
        );
        assert!(Demo::verdict(&p).starts_with("DEMO FAILED (1 problem(s))"));
    }

    #[test]
    fn host_side_problems_fail_the_demo() {
        // Forced invalidation, a leak in the domain, monitor exit 1.
        let lines: Vec<String> = good_run()
            .into_iter()
            .map(|l| {
                l.replace("invalidations_forced=0", "invalidations_forced=1")
                    .replace("held vms=0 segments=0", "held vms=0 segments=1")
                    .replace("XPMEM-VMM-EXIT rc=0", "XPMEM-VMM-EXIT rc=1")
            })
            .collect();
        let (d, _) = run_lines(&lines);
        let p = d.problems(false);
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p[0].starts_with("xpmem-vmm exit Some(1)"));
        assert!(p[1].contains("segments=1"));
        assert!(p[2].contains("forced 1 invalidation"));
    }

    #[test]
    fn a_guest_leak_and_missing_lines_fail_the_demo() {
        let lines: Vec<String> = good_run()
            .into_iter()
            .map(|l| {
                l.replace(
                    "STATS after owners=0 pages_mapped=0 inval_sent=2",
                    "STATS after owners=1 pages_mapped=0 inval_sent=2",
                )
            })
            .filter(|l| {
                !l.starts_with("[vm-b] [    5.4] XPMEM-DEMO SEGID") && !l.starts_with("xpmem-vmm:")
            })
            .collect();
        let (d, _) = run_lines(&lines);
        let p = d.problems(false);
        assert!(
            p.iter()
                .any(|m| m == "VM a's driver still holds owners=1 after the demo"),
            "{p:?}"
        );
        assert!(
            p.iter().any(|m| m.contains("b received None over TCP")),
            "{p:?}"
        );
        assert!(
            p.iter().any(|m| m.contains("no xpmem domain report")),
            "{p:?}"
        );
    }

    #[test]
    fn nothing_at_all_is_a_failure() {
        let (d, _) = run_lines(&[]);
        let p = d.problems(true);
        assert!(p.iter().any(|m| m.contains("deadline")));
        assert!(p.iter().any(|m| m.contains("never started")));
        assert!(d.waiting_for().contains("nested KVM test host"));
    }

    #[test]
    fn a_vm_that_does_not_boot_is_named() {
        let lines: Vec<String> = good_run()
            .into_iter()
            .filter(|l| !l.starts_with("[vm-b]"))
            .collect();
        let (d, _) = run_lines(&lines);
        assert!(d
            .problems(false)
            .contains(&"VM b did not boot (no XPMEM-GUEST READY banner)".to_string()));
        assert_eq!(d.waiting_for(), "booting VM b");
    }

    #[test]
    fn domain_report_is_split() {
        let d = parse_domain("held vms=0 segments=2; total map_actions=7 invalidations_forced=0");
        assert_eq!(d.held, vec![("vms".into(), 0), ("segments".into(), 2)]);
        assert_eq!(
            d.total,
            vec![
                ("map_actions".into(), 7),
                ("invalidations_forced".into(), 0)
            ]
        );
    }

    #[test]
    fn config_is_the_default_two_vms_on_the_network() {
        let text = config_text(Path::new("/k/vmlinuz"), Path::new("/i/guest.gz")).unwrap();
        let t: toml::Table = text.parse().unwrap();
        let vms = t["vm"].as_array().unwrap();
        assert_eq!(vms.len(), 2);
        assert_eq!(vms[0]["name"].as_str(), Some("a"));
        assert!(vms.iter().all(|v| v.get("stdin").is_none()));
        // No `net = false`: both VMs are on the switch, where b finds a.
        assert!(vms.iter().all(|v| v.get("net").is_none()));
        assert_eq!(vms[0]["vcpus"].as_integer(), Some(2));
        assert!(vms[1]["cmdline"]
            .as_str()
            .unwrap()
            .contains("xpmem.run=demo-b.sh xpmem.out=kmsg"));
    }

    #[test]
    fn script_runs_the_monitor_without_a_console_fifo() {
        let s = payload_script(Duration::from_secs(42));
        assert!(s.contains("timeout -s KILL 42 ./xpmem-vmm --config config.toml </dev/null"));
        assert!(!s.contains("fifo"));
        assert!(s.contains(VMM_EXIT));
    }
}
