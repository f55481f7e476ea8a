//! The `xpmem` group: the guest driver (`guest-driver/kmod/xpmem.ko`) and the
//! virtio-xpmem device in stock Debian guests under the monitor. One test-host
//! boot runs two monitor invocations:
//!
//! * `local`: one VM runs `guest-driver/tools/image/scenario/xpmem-local.sh`
//!   (same-VM export + attach both ways, copy-on-write after fork, SIGBUS
//!   after munmap, `/proc/xpmem` counters back to 0).
//! * `share`: three VMs `a`, `b`, `c` run `xpmem-share-{a,b,c}.sh`: b finds
//!   a's segments by name (no segid typed in): a buffer, and a whole address
//!   space exported as UCX and Open MPI do (attach by a's address, a hole that
//!   gives SIGBUS and is mapped later, six threads faulting at once, SIGBUS
//!   once a's exporter is SIGKILLed); share both
//!   ways, read-only, 0600 refused to another uid and to the same uid in
//!   another VM, copy-on-write, two importers of one segment, one importer of
//!   two exporters, two segments, two attachments, pages moving under memory
//!   pressure, SIGBUS after munmap and exit, an importer process exiting and
//!   a VM powering off while it imports from one VM and exports to another. The monitor runs under
//!   `xpmem-relay` (see [`crate::relay`]), which hands each segid and
//!   DONE/GONE notice to the destination VM through its guest agent over
//!   vsock (`xpmem-relay --agent`: the line lands in `/run/xpmem-input`, the
//!   VM command's stdin), not through its serial console.
//! * `hostile` (issue 13): three VMs `a`, `b`, `c` run `xpmem-hostile-{a,b,c}.sh`
//!   under a [`HOSTILE_DEADLINE_MS`] deadline: b's driver turns hostile
//!   (`test_misbehave` `no_ack` five times over, `no_refill`, `bad_evbufs`)
//!   after attaching a's buffer; each of a's munmaps returns by the deadline
//!   plus 10% (the five `no_ack` trials are issue 12's forced revocation end
//!   to end; `scripts/forced-revocation.sh` runs 100), b gets SIGBUS
//!   and never reads anything but a's old data or the filler, and c's own
//!   requests go on meanwhile (their times are NOTEs). The host must have
//!   revoked at least six targets by force (five no_ack, one no_refill), and
//!   never a whole window. c's
//!   config says it may import from no VM (`import_from = {}`): its GET of a's
//!   0666 segment, as root, fails with EACCES.
//!
//! Guest command output reaches the console through `/dev/kmsg`
//! (`xpmem.out=kmsg`); every `XPMEM-TEST <case> PASS|FAIL` line becomes one
//! `xpmem/<case>/<check>` result, and an expected line that never came is a
//! failure. After each monitor run the host's domain must hold nothing and
//! must not have needed a forced revocation.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::cases::{CaseResult, Env, Error, Status};
use crate::nested::{self, Payload};
use crate::scenario::Echo;

const G: &str = "xpmem";

/// Each monitor run is killed after this long (a nested boot takes 1-2 minutes).
const VMM_DEADLINE: Duration = Duration::from_secs(420);

/// How long an importer may take to acknowledge an invalidation before the
/// host revokes its pages. Generous, because guest kernels run emulated on the
/// nested host; a forced revocation fails the run, so a leaked reverse-map
/// entry (an importer that is gone but still targeted) shows as a failure.
const INVALIDATE_DEADLINE_MS: u64 = 10_000;
/// The deadline of the `hostile` case, which waits for it on purpose (three
/// times): long enough that 10% of it covers the emulated guest's own munmap
/// work on the nested host, short enough for CI.
const HOSTILE_DEADLINE_MS: u64 = 4_000;
/// Forced revocations the `hostile` case needs at least: five `no_ack`
/// trials and the `no_refill` importer.
const HOSTILE_MIN_FORCED: u64 = 6;

/// What `xpmem-local.sh` runs, in order (a repeated case gets `-2`, ...).
const LOCAL_EXPECTED: &[&str] = &[
    "version",
    "local-errors",
    "get-permit-value",
    "names",
    "get-ipc-owner",
    "whole-space",
    "self-attach",
    "unmapped-range",
    "holes",
    "later-mapped",
    "killed",
    "threads-fault",
    "one-to-many",
    "fork-importer",
    "read-only-local",
    "big-segment",
    "local",
    "local-2",
    "attach-fork",
    "export-fork",
    "rust-local",
    "stress-fault-inval",
    "fault-hog",
    "proc-zero",
];
/// Extra kernel parameters of the `local` VM: SLUB red zones, poisoning and
/// sanity checks, so that a use-after-free in the driver under
/// `stress-fault-inval` shows as a report ([`TROUBLE`]).
const LOCAL_APPEND: &str = "slub_debug=FZPU";
/// Guest console text that fails a VM's `kernel-clean` check: panics, oopses,
/// and SLUB debugging reports (`BUG kmalloc-256 (...): Poison overwritten`).
/// Lines of the test protocol (`XPMEM-...`) and the echoed command line
/// (`Command line: ...`, `Kernel command line: ...`) are not kernel reports.
const TROUBLE: &[&str] = &[
    "Kernel panic",
    "BUG:",
    "BUG ",
    "Oops",
    "general protection",
    "Redzone",
    "Poison overwritten",
    "Object already free",
    "use-after-free",
    "slub",
];
/// The share VMs, their scripts and the cases each must report.
const SHARE_VMS: &[(&str, &str, &[&str])] = &[
    (
        "a",
        "xpmem-share-a.sh",
        &[
            "export",
            "export-space",
            "export-2",
            "export-hold",
            "export-hold-2",
            "export-hold-3",
            "export-fork",
            "export-multi",
            "export-multi-2",
            "export-two",
            "export-multi-3",
            "export-pressure",
            "export-unmap",
            "export-exit",
            "export-wait-gone",
            "export-wait-gone-2",
            "proc-zero",
        ],
    ),
    (
        "b",
        "xpmem-share-b.sh",
        &[
            "name-taken",
            "attach",
            "attach-space",
            "attach-2",
            "attach-bench",
            "attach-ro",
            "get-denied",
            "attach-fork",
            "attach-multi",
            "export-multi",
            "attach-two",
            "attach-twice",
            "attach-gone",
            "attach-exit",
            "attach-gone-2",
            "proc-zero",
        ],
    ),
    (
        "c",
        "xpmem-share-c.sh",
        &[
            "get-denied",
            "attach-multi",
            "attach-two",
            "attach-follow",
            "attach-gone",
            "proc-zero",
            "export-poweroff",
        ],
    ),
];

/// The hostile VMs, their scripts and the cases each must report.
const HOSTILE_VMS: &[(&str, &str, &[&str])] = &[
    (
        "a",
        "xpmem-hostile-a.sh",
        &[
            "export-hostile",
            "export-hostile-2",
            "export-hostile-3",
            "export-hostile-4",
            "export-hostile-5",
            "export-hostile-6",
            "export-hostile-7",
            "proc-zero",
        ],
    ),
    (
        "b",
        "xpmem-hostile-b.sh",
        &[
            "attach-hostile",
            "attach-hostile-2",
            "attach-hostile-3",
            "attach-hostile-4",
            "attach-hostile-5",
            "attach-hostile-6",
            "attach-hostile-7",
            "proc-zero",
        ],
    ),
    (
        "c",
        "xpmem-hostile-c.sh",
        &["get-denied", "local-latency", "proc-zero"],
    ),
];

/// The L1 payload script. Markers: `XPMEM-CASE-BEGIN <case>`,
/// `XPMEM-CASE-END <case> rc=<monitor exit>`; `xpmem-relay` adds its own.
fn payload_script(deadline: Duration) -> String {
    let t = deadline.as_secs().max(1);
    let inputs: Vec<String> = SHARE_VMS.iter().map(|(vm, _, _)| agent_arg(vm)).collect();
    let hostile_inputs: Vec<String> = HOSTILE_VMS.iter().map(|(vm, _, _)| agent_arg(vm)).collect();
    format!(
        r#"{heartbeat}echo "XPMEM-CASE-BEGIN local"
timeout -s KILL {t} ./xpmem-vmm --config local.toml </dev/null 2>&1
echo "XPMEM-CASE-END local rc=$?"
echo "XPMEM-CASE-BEGIN share"
./xpmem-relay {inputs} -- timeout -s KILL {t} ./xpmem-vmm --config share.toml </dev/null 2>&1
echo "XPMEM-CASE-END share rc=$?"
echo "XPMEM-CASE-BEGIN hostile"
./xpmem-relay {hostile_inputs} -- timeout -s KILL {t} ./xpmem-vmm --config hostile.toml </dev/null 2>&1
echo "XPMEM-CASE-END hostile rc=$?"
kill $hb 2>/dev/null
"#,
        inputs = inputs.join(" "),
        hostile_inputs = hostile_inputs.join(" "),
        heartbeat = nested::HEARTBEAT
    )
}

fn xpmem_toml() -> String {
    deadline_toml(INVALIDATE_DEADLINE_MS)
}

pub(crate) fn deadline_toml(ms: u64) -> String {
    format!("[xpmem]\ninvalidate_deadline_ms = {ms}\n\n")
}

/// The vsock socket of VM `vm` in the payload directory, through which
/// `xpmem-relay --agent` reaches its guest agent.
fn agent_socket(vm: &str) -> String {
    format!("{vm}.vsock")
}

/// `xpmem-relay`'s argument for VM `vm`.
pub(crate) fn agent_arg(vm: &str) -> String {
    format!("--agent {vm}={}", agent_socket(vm))
}

/// One `[[vm]]` table. `relayed`: the VM's command reads the relay's
/// messages, which come through its guest agent over vsock (its stdin is
/// `/run/xpmem-input`, `xpmem.input=agent`), not through its serial console.
pub(crate) fn vm_toml(name: &str, vcpus: u32, run: &str, relayed: bool, extra: &str) -> String {
    let append = std::env::var("XPMEM_GUEST_APPEND").unwrap_or_default();
    let input = if relayed { "xpmem.input=agent" } else { "" };
    let cmdline =
        format!("xpmem.name={name} xpmem.run={run} xpmem.out=kmsg {input} {extra} {append}");
    let mut s = format!(
        "[[vm]]\nname = \"{name}\"\nvcpus = {vcpus}\nmemory = 512\nkernel = \"vmlinuz\"\ninitrd = \"guest.cpio.gz\"\ncmdline = {}\n",
        toml::Value::String(cmdline.split_whitespace().collect::<Vec<_>>().join(" "))
    );
    if relayed {
        s.push_str(&format!(
            "vsock = {{ socket = {} }}\n",
            toml::Value::String(agent_socket(name))
        ));
    }
    s.push('\n');
    s
}

/// One VM's parsed console.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct VmLog {
    /// `XPMEM-GUEST READY` seen.
    pub ready: bool,
    /// `(case, PASS or FAIL reason)` in order; repeated names get `-2`, `-3`.
    pub results: Vec<(String, Result<(), String>)>,
    /// Segids the VM printed, with the VMs they are meant for.
    pub segids: Vec<(u64, Vec<String>)>,
    /// `XPMEM-LOCAL PASS` (true) or `FAIL` (false).
    pub local_verdict: Option<bool>,
    /// Exit code of the guest command.
    pub rc: Option<i32>,
    /// A kernel panic / BUG / Oops line.
    pub trouble: Option<String>,
    /// `(case, text)` of `XPMEM-TEST <case> NOTE <text>` lines: measurements.
    pub notes: Vec<(String, String)>,
}

impl VmLog {
    /// Feeds one console line of this VM (without the `[vm-NAME] ` prefix).
    pub fn feed(&mut self, text: &str) {
        let text = text.trim_end_matches('\r');
        if text.contains("XPMEM-GUEST READY") {
            self.ready = true;
        }
        if let Some(rest) = after(text, "XPMEM-GUEST RESULT ") {
            self.rc = rest
                .split_whitespace()
                .find_map(|w| w.strip_prefix("rc="))
                .and_then(|v| v.parse().ok());
        }
        if text.contains("XPMEM-LOCAL PASS") {
            self.local_verdict = Some(true);
        } else if text.contains("XPMEM-LOCAL FAIL") {
            self.local_verdict = Some(false);
        }
        if self.trouble.is_none()
            && !["Command line:", "Kernel command line:"]
                .iter()
                .any(|k| text.contains(k))
            && !text.contains("XPMEM-")
            && TROUBLE.iter().any(|k| text.contains(k))
        {
            self.trouble = Some(text.to_string());
        }
        let Some(rest) = after(text, "XPMEM-TEST ") else {
            return;
        };
        let mut words = rest.splitn(3, ' ');
        let (Some(case), Some(verb)) = (words.next(), words.next()) else {
            return;
        };
        let tail = words.next().unwrap_or("").trim();
        let outcome = match verb {
            "PASS" => Ok(()),
            "FAIL" => Err(if tail.is_empty() {
                "FAIL without a reason".to_string()
            } else {
                tail.to_string()
            }),
            "NOTE" => {
                self.notes.push((case.to_string(), tail.to_string()));
                return;
            }
            "SEGID" => {
                // "<n>" or "<n> TO <vm>,<vm>"
                let mut words = tail.split_whitespace();
                if let Some(Ok(n)) = words.next().map(str::parse) {
                    let to = match (words.next(), words.next()) {
                        (Some("TO"), Some(list)) => list
                            .split(',')
                            .filter(|v| !v.is_empty())
                            .map(String::from)
                            .collect(),
                        _ => Vec::new(),
                    };
                    self.segids.push((n, to));
                }
                return;
            }
            _ => return,
        };
        let seen = self
            .results
            .iter()
            .filter(|(n, _)| n == case || n.strip_prefix(case).is_some_and(is_dup_suffix))
            .count();
        let name = if seen == 0 {
            case.to_string()
        } else {
            format!("{case}-{}", seen + 1)
        };
        self.results.push((name, outcome));
    }

    /// One result per `XPMEM-TEST` line, then a failure for each expected
    /// case that printed nothing.
    pub(crate) fn judge(
        &self,
        case: &str,
        prefix: &str,
        expected: &[&str],
        out: &mut Vec<CaseResult>,
    ) {
        for (name, r) in &self.results {
            out.push(result(
                case,
                &format!("{prefix}{name}"),
                match r {
                    Ok(()) => Status::Pass,
                    Err(why) => Status::Fail(why.clone()),
                },
            ));
        }
        for e in expected {
            if !self.results.iter().any(|(n, _)| n == e) {
                out.push(result(
                    case,
                    &format!("{prefix}{e}"),
                    Status::Fail(format!(
                        "no XPMEM-TEST result line (guest ready: {}, command rc: {:?}{})",
                        self.ready,
                        self.rc,
                        self.trouble
                            .as_ref()
                            .map(|t| format!(", kernel: {t}"))
                            .unwrap_or_default()
                    )),
                ));
            }
        }
        out.push(result(
            case,
            &format!("{prefix}kernel-clean"),
            match &self.trouble {
                None => Status::Pass,
                Some(t) => Status::Fail(format!("kernel reported: {t}")),
            },
        ));
    }
}

/// `domain-counters-zero`: every "held" counter of the monitor's at-exit report is 0.
pub(crate) fn held_zero_check(case: &str, held: &str) -> CaseResult {
    let nonzero: Vec<&str> = held
        .split_whitespace()
        .filter(|kv| !kv.ends_with("=0"))
        .collect();
    result(
        case,
        "domain-counters-zero",
        if held.split_whitespace().count() > 0 && nonzero.is_empty() {
            Status::Pass
        } else {
            Status::Fail(format!("domain still holds: {nonzero:?}"))
        },
    )
}

fn is_dup_suffix(s: &str) -> bool {
    s.strip_prefix('-')
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn after<'a>(text: &'a str, marker: &str) -> Option<&'a str> {
    text.find(marker).map(|i| &text[i + marker.len()..])
}

fn result(case: &str, check: &str, status: Status) -> CaseResult {
    CaseResult {
        name: format!("{G}/{case}/{check}"),
        status,
    }
}

/// Everything the payload printed, split by case and VM.
#[derive(Debug, Default)]
pub struct Parsed {
    /// VM `local` in case `local`.
    pub local: VmLog,
    /// The VMs of case `share`, by name.
    pub share: BTreeMap<String, VmLog>,
    /// The VMs of case `hostile`, by name.
    pub hostile: BTreeMap<String, VmLog>,
    /// Monitor exit code per case.
    pub rc: BTreeMap<String, i32>,
    /// `(vm, text)` the relay typed, in order.
    pub typed: Vec<(String, String)>,
    /// Relay lines about messages that were lost or never read.
    pub relay_trouble: Vec<String>,
    /// The monitor's own lines (`xpmem-vmm: ...`), for failure reasons.
    pub monitor: Vec<String>,
    /// The monitor's domain report at exit, per case: (held part, totals part).
    pub domain: BTreeMap<String, (String, String)>,
    /// Per case and VM: (segments, permits, attachments) the guest still held
    /// in the domain when it stopped (`xpmem objects the guest left`).
    pub left: BTreeMap<(String, String), (u64, u64, u64)>,
    current: Option<String>,
}

impl Parsed {
    /// Feeds one line of the test host's console.
    pub fn feed(&mut self, line: &str) {
        let line = line.trim_end_matches('\r');
        if let Some(c) = line.strip_prefix("XPMEM-CASE-BEGIN ") {
            self.current = Some(c.trim().to_string());
            return;
        }
        if let Some(rest) = line.strip_prefix("XPMEM-CASE-END ") {
            if let Some((case, rc)) = rest.split_once(" rc=") {
                if let Ok(rc) = rc.trim().parse() {
                    self.rc.insert(case.trim().to_string(), rc);
                }
            }
            self.current = None;
            return;
        }
        if let Some(rest) = line.strip_prefix("XPMEM-RELAY ") {
            if let Some((vm, text)) = rest.strip_prefix("TYPED ").and_then(|t| t.split_once(' ')) {
                self.typed.push((vm.to_string(), text.to_string()));
            } else if rest.starts_with("LOST ") || rest.starts_with("UNDELIVERED ") {
                self.relay_trouble.push(line.to_string());
            }
            return;
        }
        if line.starts_with("xpmem-vmm:") {
            self.monitor.push(line.to_string());
            if let (Some(case), Some((vm, counts))) = (
                self.current.as_ref(),
                line.strip_prefix("xpmem-vmm: VM ")
                    .and_then(|r| r.split_once(": xpmem objects the guest left: ")),
            ) {
                let get = |k: &str| {
                    counts
                        .split_whitespace()
                        .find_map(|kv| kv.strip_prefix(k))
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0)
                };
                self.left.insert(
                    (case.clone(), vm.to_string()),
                    (get("segments="), get("permits="), get("attachments=")),
                );
            }
            if let (Some(case), Some((_, report))) = (
                self.current.as_ref(),
                line.split_once("xpmem domain at exit: held "),
            ) {
                let (held, total) = report.split_once("; total ").unwrap_or((report, ""));
                self.domain
                    .insert(case.clone(), (held.to_string(), total.to_string()));
            }
        }
        let Some(rest) = line.strip_prefix("[vm-") else {
            return;
        };
        let Some((vm, text)) = rest.split_once(']') else {
            return;
        };
        let text = text.strip_prefix(' ').unwrap_or(text);
        match (self.current.as_deref(), vm) {
            (Some("local"), "local") => self.local.feed(text),
            (Some("share"), vm) if SHARE_VMS.iter().any(|(n, _, _)| *n == vm) => {
                self.share.entry(vm.to_string()).or_default().feed(text)
            }
            (Some("hostile"), vm) if HOSTILE_VMS.iter().any(|(n, _, _)| *n == vm) => {
                self.hostile.entry(vm.to_string()).or_default().feed(text)
            }
            _ => {}
        }
    }

    /// The host's xpmem domain holds nothing once the case's VMs have ended,
    /// and no importer needed a forced revocation.
    fn domain_checks(&self, case: &str, out: &mut Vec<CaseResult>) {
        let Some((held, total)) = self.domain.get(case) else {
            let why = Status::Fail("the monitor printed no xpmem domain report at exit".into());
            out.push(result(case, "domain-counters-zero", why.clone()));
            out.push(result(case, "no-forced-revocation", why));
            return;
        };
        out.push(held_zero_check(case, held));
        let forced = total
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("invalidations_forced="));
        out.push(result(
            case,
            "no-forced-revocation",
            match forced {
                Some("0") => Status::Pass,
                Some(n) => Status::Fail(format!(
                    "{n} invalidation(s) needed a forced revocation after {INVALIDATE_DEADLINE_MS} ms \
                     (an importer never acknowledged, or a gone importer was still targeted)"
                )),
                None => Status::Fail(format!("no invalidations_forced in the report: {total:?}")),
            },
        ));
    }

    fn monitor_check(&self, case: &str, timed_out: bool) -> CaseResult {
        let rc = self.rc.get(case).copied();
        result(
            case,
            "monitor-exits-0",
            if rc == Some(0) {
                Status::Pass
            } else {
                Status::Fail(format!(
                    "monitor exit {rc:?} (137 = killed at the {} s deadline{}); monitor said: {:?}",
                    VMM_DEADLINE.as_secs(),
                    if timed_out {
                        ", test host timed out"
                    } else {
                        ""
                    },
                    self.monitor.iter().rev().take(4).rev().collect::<Vec<_>>()
                ))
            },
        )
    }

    /// What a guest left in the domain when it stopped: nothing after a clean
    /// shutdown (its driver released everything), or, for a VM that powered
    /// off mid-operation, the objects it still had (so the test did cut it off
    /// while attached and exporting; the domain report shows they were torn down).
    fn left_check(&self, case: &str, vm: &str, mid_operation: bool) -> CaseResult {
        let check = if mid_operation {
            "left-objects-at-poweroff"
        } else {
            "released-everything"
        };
        let name = if case == "local" {
            check.to_string()
        } else {
            format!("{vm}-{check}")
        };
        let status = match self.left.get(&(case.to_string(), vm.to_string())) {
            None => Status::Fail(format!(
                "the monitor printed no `VM {vm}: xpmem objects the guest left` line"
            )),
            Some(&(segs, permits, atts)) if mid_operation => {
                if segs >= 1 && permits >= 1 && atts >= 1 {
                    Status::Pass
                } else {
                    Status::Fail(format!(
                        "VM {vm} was to power off while exporting and attached, but held \
                         segments={segs} permits={permits} attachments={atts}"
                    ))
                }
            }
            Some(&(0, 0, 0)) => Status::Pass,
            Some(&(segs, permits, atts)) => Status::Fail(format!(
                "VM {vm}'s driver never released segments={segs} permits={permits} \
                 attachments={atts} in the host domain"
            )),
        };
        result(case, &name, status)
    }

    /// Every segid an exporter printed was typed into every VM it named,
    /// and the relay lost nothing.
    fn relay_check(&self) -> CaseResult {
        let mut missing = Vec::new();
        let mut printed = 0;
        for (vm, log) in &self.share {
            for (segid, to) in &log.segids {
                printed += 1;
                for dest in to {
                    let text = format!("SEGID {segid}");
                    if !self.typed.iter().any(|(v, t)| v == dest && *t == text) {
                        missing.push(format!("{vm}'s {segid} to {dest}"));
                    }
                }
            }
        }
        result(
            "share",
            "relay-delivered",
            if printed == 0 {
                Status::Fail("no exporter printed a segid".into())
            } else if !missing.is_empty() || !self.relay_trouble.is_empty() {
                Status::Fail(format!(
                    "segids not typed: {missing:?}; relay: {:?}",
                    self.relay_trouble
                ))
            } else {
                Status::Pass
            },
        )
    }

    /// All results of the group.
    pub fn judge(&self, timed_out: bool) -> Vec<CaseResult> {
        let mut out = Vec::new();
        // local
        self.local.judge("local", "", LOCAL_EXPECTED, &mut out);
        out.push(result(
            "local",
            "script-verdict",
            match self.local.local_verdict {
                Some(true) => Status::Pass,
                Some(false) => Status::Fail(
                    "xpmem-local.sh printed XPMEM-LOCAL FAIL (a case failed or dmesg has BUG/WARNING)"
                        .into(),
                ),
                None => Status::Fail("xpmem-local.sh printed no XPMEM-LOCAL verdict".into()),
            },
        ));
        out.push(self.monitor_check("local", timed_out));
        out.push(self.left_check("local", "local", false));
        self.domain_checks("local", &mut out);
        // share
        let empty = VmLog::default();
        for (vm, _, expected) in SHARE_VMS {
            self.share.get(*vm).unwrap_or(&empty).judge(
                "share",
                &format!("{vm}-"),
                expected,
                &mut out,
            );
        }
        out.push(self.relay_check());
        for (vm, _, expected) in SHARE_VMS {
            let powers_off = expected.last() == Some(&"export-poweroff");
            out.push(self.left_check("share", vm, powers_off));
        }
        out.push(self.monitor_check("share", timed_out));
        self.domain_checks("share", &mut out);
        // hostile
        for (vm, _, expected) in HOSTILE_VMS {
            self.hostile.get(*vm).unwrap_or(&empty).judge(
                "hostile",
                &format!("{vm}-"),
                expected,
                &mut out,
            );
            out.push(self.left_check("hostile", vm, false));
        }
        out.push(self.monitor_check("hostile", timed_out));
        self.hostile_domain_checks(&mut out);
        out
    }

    /// After the hostile case the domain holds nothing, at least
    /// [`HOSTILE_MIN_FORCED`] importer targets were revoked by force (five
    /// no_ack trials, no_refill), and no unmap failed
    /// (no window had to be revoked whole, no VM cut off).
    fn hostile_domain_checks(&self, out: &mut Vec<CaseResult>) {
        let case = "hostile";
        let Some((held, total)) = self.domain.get(case) else {
            let why = Status::Fail("the monitor printed no xpmem domain report at exit".into());
            out.push(result(case, "domain-counters-zero", why.clone()));
            out.push(result(case, "forced-revocations", why));
            return;
        };
        out.push(held_zero_check(case, held));
        let get = |k: &str| -> Option<u64> {
            total
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix(k))
                .and_then(|v| v.parse().ok())
        };
        let forced = get("invalidations_forced=");
        let whole = (get("windows_revoked="), get("aperture_cut_offs="));
        out.push(result(
            case,
            "forced-revocations",
            match (forced, whole) {
                (Some(f), (Some(0), Some(0))) if f >= HOSTILE_MIN_FORCED => Status::Pass,
                _ => Status::Fail(format!(
                    "want >= {HOSTILE_MIN_FORCED} forced revocations and no window revoked whole or cut off: {total:?}"
                )),
            },
        ));
    }
}

/// `xpmem-relay`, built beside this binary (`cargo build -p xpmem-e2e`
/// builds both).
pub(crate) fn relay_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("xpmem-relay")))
        .unwrap_or_else(|| PathBuf::from("xpmem-relay"))
}

/// Runs the group (see the module documentation).
pub fn run(env: &Env, opts: nested::Options) -> Result<Vec<CaseResult>, Error> {
    let root = crate::repo_root();
    let ko = root.join("guest-driver/kmod/xpmem.ko");
    let tools = root.join("guest-driver/tools/image");
    let relay = relay_binary();
    for (p, how) in [
        (&ko, "run `make -C guest-driver`"),
        (&tools.join("bin/xpmem-test"), "run `make -C guest-driver`"),
        (&tools.join("bin/xpmem-rs-local"), "run `make -C guest-driver`"),
        (
            &relay,
            "build it beside xpmem-e2e: `cargo build -p xpmem-e2e` (static, as scripts/test.sh does)",
        ),
    ] {
        if !p.exists() {
            return Ok(vec![result(
                "setup",
                "inputs",
                Status::Fail(format!("{} is missing: {how}", p.display())),
            )]);
        }
    }
    let (vmlinuz, initrd) = crate::cases::xpmem_image(env)?;
    let mut payload = Payload::new(payload_script(VMM_DEADLINE));
    payload.file(&env.vmm, "xpmem-vmm");
    payload.file(&relay, "xpmem-relay");
    payload.file(&vmlinuz, "vmlinuz");
    payload.file(&initrd, "guest.cpio.gz");
    payload.data(
        "local.toml",
        format!(
            "{}{}",
            xpmem_toml(),
            vm_toml("local", 2, "xpmem-local.sh", false, LOCAL_APPEND)
        ),
        0o644,
    );
    let share_toml: String = SHARE_VMS
        .iter()
        .map(|(vm, script, _)| vm_toml(vm, 1, script, true, ""))
        .collect();
    payload.data("share.toml", format!("{}{share_toml}", xpmem_toml()), 0o644);
    let hostile_toml: String = HOSTILE_VMS
        .iter()
        .map(|(vm, script, _)| {
            let mut t = vm_toml(vm, 1, script, true, "");
            if *vm == "c" {
                // The host's import policy: c may import from no other VM.
                t.insert_str(t.len() - 1, "import_from = {}\n");
            }
            t
        })
        .collect();
    payload.data(
        "hostile.toml",
        format!("{}{hostile_toml}", deadline_toml(HOSTILE_DEADLINE_MS)),
        0o644,
    );
    let mut opts = opts;
    opts.timeout = opts
        .timeout
        .min(VMM_DEADLINE * 3 + Duration::from_secs(120));
    opts.silence_limit = Some(nested::SILENCE_LIMIT);
    let echo = env.echo;
    let mut attempt = 1;
    loop {
        let mut parsed = Parsed::default();
        let mut last = String::new();
        let outcome = nested::run(&env.cache, &payload, &opts, |l| {
            let show = echo == Echo::All
                || (echo == Echo::Guests && l.starts_with("[vm-"))
                || l.starts_with("XPMEM-CASE")
                || l.starts_with("XPMEM-RELAY")
                || l.contains("XPMEM-TEST ")
                || l.contains("XPMEM-GUEST ")
                || l.starts_with("xpmem-vmm:");
            if show {
                println!("[L1] {l}");
            }
            last = l.to_string();
            parsed.feed(l);
        })?;
        if outcome.stalled && attempt == 1 {
            println!("{}", nested::stall_warning(G, &last));
            attempt += 1;
            continue;
        }
        // What the guests measured (times, pages moved, bandwidth), in one place.
        for (vm, log) in std::iter::once(("local", &parsed.local))
            .chain(parsed.share.iter().map(|(vm, log)| (vm.as_str(), log)))
            .chain(parsed.hostile.iter().map(|(vm, log)| (vm.as_str(), log)))
        {
            for (case, note) in &log.notes {
                println!("[xpmem] {vm} {case}: {note}");
            }
        }
        let mut results = parsed.judge(outcome.timed_out || outcome.stalled);
        if outcome.stalled {
            results.push(result(
                "test-host",
                "kept-running",
                Status::Fail(format!(
                    "the nested test host stopped twice (no output for {} s; last line {last:?})",
                    nested::SILENCE_LIMIT.as_secs()
                )),
            ));
        }
        return Ok(results);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
mod tests {
    use super::*;

    fn names(r: &[CaseResult]) -> Vec<(String, bool)> {
        r.iter()
            .map(|c| (c.name.clone(), c.status == Status::Pass))
            .collect()
    }

    #[test]
    fn local_results_are_parsed_and_missing_ones_fail() {
        let mut p = Parsed::default();
        for l in [
            "XPMEM-CASE-BEGIN local",
            "[vm-local] [    4.1] XPMEM-GUEST READY local cpus=2 virtio=x",
            "[vm-local] [    5.0] XPMEM-TEST version PASS",
            "[vm-local] [    5.1] XPMEM-TEST local SEGID 77 TO b",
            "[vm-local] [    5.2] XPMEM-TEST local PASS",
            "[vm-local] [    5.25] XPMEM-TEST local NOTE took 1.5 ms",
            "[vm-local] [    5.3] XPMEM-TEST local FAIL no SIGBUS\r",
            "[vm-local] [    5.4] XPMEM-LOCAL FAIL",
            "[vm-local] [    5.5] XPMEM-GUEST RESULT local rc=1",
            "XPMEM-CASE-END local rc=0",
        ] {
            p.feed(l);
        }
        assert_eq!(p.rc.get("local"), Some(&0));
        assert_eq!(p.local.rc, Some(1));
        assert_eq!(p.local.segids, vec![(77, vec!["b".to_string()])]);
        assert_eq!(p.local.notes, vec![("local".into(), "took 1.5 ms".into())]);
        let r = p.judge(false);
        let n = names(&r);
        assert!(n.contains(&("xpmem/local/version".into(), true)));
        assert!(n.contains(&("xpmem/local/local".into(), true)));
        assert!(n.contains(&("xpmem/local/local-2".into(), false)));
        assert!(n.contains(&("xpmem/local/proc-zero".into(), false)));
        assert!(n.contains(&("xpmem/local/script-verdict".into(), false)));
        assert!(n.contains(&("xpmem/local/monitor-exits-0".into(), true)));
        let why = r
            .iter()
            .find(|c| c.name == "xpmem/local/local-2")
            .map(|c| c.status.clone());
        assert_eq!(why, Some(Status::Fail("no SIGBUS".into())));
        // Nothing from the share case: all of it fails.
        assert!(n.contains(&("xpmem/share/b-attach".into(), false)));
        assert!(n.contains(&("xpmem/share/c-export-poweroff".into(), false)));
        assert!(n.contains(&("xpmem/share/relay-delivered".into(), false)));
        assert!(n.contains(&("xpmem/share/monitor-exits-0".into(), false)));
    }

    /// A full share run: every VM passes every case, each segid is typed.
    fn share_lines() -> Vec<String> {
        let mut lines = vec!["XPMEM-CASE-BEGIN share".to_string()];
        let base = |case: &str| {
            case.rsplit_once('-')
                .filter(|(_, n)| n.bytes().all(|b| b.is_ascii_digit()))
                .map(|(b, _)| b.to_string())
                .unwrap_or_else(|| case.to_string())
        };
        let mut segid = 1000;
        for (vm, _, expected) in SHARE_VMS {
            for case in *expected {
                if case.starts_with("export") {
                    segid += 1;
                    lines.push(format!(
                        "[vm-{vm}] [ 3.0] XPMEM-TEST {} SEGID {segid} TO b,c",
                        base(case)
                    ));
                    lines.push(format!("XPMEM-RELAY TYPED b SEGID {segid}"));
                    lines.push(format!("XPMEM-RELAY TYPED c SEGID {segid}"));
                }
                lines.push(format!("[vm-{vm}] [ 3.1] XPMEM-TEST {} PASS", base(case)));
            }
        }
        for vm in ["a", "b"] {
            lines.push(format!(
                "xpmem-vmm: VM {vm}: xpmem objects the guest left: segments=0 permits=0 attachments=0"
            ));
        }
        lines.push(
            "xpmem-vmm: VM c: xpmem objects the guest left: segments=1 permits=1 attachments=1"
                .into(),
        );
        lines.push(
            "xpmem-vmm: xpmem domain at exit: held vms=0 segments=0; total map_actions=2 \
             invalidations_completed=4 invalidations_forced=0"
                .into(),
        );
        lines.push("XPMEM-RELAY EXIT rc=0".into());
        lines.push("XPMEM-CASE-END share rc=0".into());
        lines
    }

    fn share_results(lines: &[String]) -> Vec<CaseResult> {
        let mut p = Parsed::default();
        for l in lines {
            p.feed(l);
        }
        p.judge(false)
            .into_iter()
            .filter(|c| c.name.starts_with("xpmem/share/"))
            .collect()
    }

    fn failed(r: &[CaseResult], name: &str) -> bool {
        r.iter()
            .any(|c| c.name == format!("xpmem/share/{name}") && c.status != Status::Pass)
    }

    #[test]
    fn share_passes_only_with_every_line() {
        let lines = share_lines();
        let share = share_results(&lines);
        assert!(share.iter().all(|c| c.status == Status::Pass), "{share:?}");
        let cases: usize = SHARE_VMS.iter().map(|(_, _, e)| e.len() + 1).sum();
        assert_eq!(share.len(), cases + 4 + SHARE_VMS.len());

        // A segid that was not typed into one of its VMs fails the relay check.
        let r = share_results(
            &lines
                .iter()
                .filter(|l| *l != "XPMEM-RELAY TYPED c SEGID 1005")
                .cloned()
                .collect::<Vec<_>>(),
        );
        assert!(failed(&r, "relay-delivered"));
        // So does a message nobody read.
        let mut more = lines.clone();
        more.insert(2, "XPMEM-RELAY UNDELIVERED a GONE c".into());
        assert!(failed(&share_results(&more), "relay-delivered"));
        // Without c's power-off case, that check fails.
        let r = share_results(
            &lines
                .iter()
                .filter(|l| !l.contains("export-poweroff PASS"))
                .cloned()
                .collect::<Vec<_>>(),
        );
        assert!(failed(&r, "c-export-poweroff"));
        // A VM that kept an attachment after a clean shutdown fails; so does c
        // if it held nothing when it powered off (it was not mid-operation).
        let leaky: Vec<String> = lines
            .iter()
            .map(|l| {
                l.replace(
                    "VM b: xpmem objects the guest left: segments=0 permits=0 attachments=0",
                    "VM b: xpmem objects the guest left: segments=0 permits=1 attachments=1",
                )
                .replace(
                    "VM c: xpmem objects the guest left: segments=1 permits=1 attachments=1",
                    "VM c: xpmem objects the guest left: segments=0 permits=0 attachments=0",
                )
            })
            .collect();
        let r = share_results(&leaky);
        assert!(failed(&r, "b-released-everything"));
        assert!(failed(&r, "c-left-objects-at-poweroff"));
        assert!(!failed(&r, "a-released-everything"));
        // A forced revocation fails the run.
        let forced: Vec<String> = lines
            .iter()
            .map(|l| l.replace("invalidations_forced=0", "invalidations_forced=1"))
            .collect();
        let r = share_results(&forced);
        assert!(failed(&r, "no-forced-revocation"));
        assert!(!failed(&r, "domain-counters-zero"));
    }

    #[test]
    fn slab_debug_reports_are_kernel_trouble_but_protocol_lines_are_not() {
        let mut log = VmLog::default();
        log.feed("[    0.0] Command line: console=ttyS0 slub_debug=FZPU");
        log.feed("[    1.0] Kernel command line: console=ttyS0 slub_debug=FZPU");
        log.feed(
            "[    9.0] XPMEM-TEST stress-fault-inval NOTE slab debugging of kmalloc-256: poison=1",
        );
        assert_eq!(log.trouble, None);
        log.feed("[   12.5] BUG kmalloc-256 (Tainted: G    B      ): Poison overwritten");
        assert!(log
            .trouble
            .as_deref()
            .unwrap()
            .contains("Poison overwritten"));
        let mut log = VmLog::default();
        log.feed("[   12.6] Redzone overwritten at 0xffff0000: first byte 0x0 instead of 0xcc");
        assert!(log.trouble.is_some());
    }

    #[test]
    fn local_vm_boots_with_slab_debugging() {
        let toml = vm_toml("local", 2, "xpmem-local.sh", false, LOCAL_APPEND);
        assert!(toml.contains("xpmem.out=kmsg slub_debug=FZPU"), "{toml}");
    }

    #[test]
    fn lines_outside_a_case_or_of_other_vms_are_ignored() {
        let mut p = Parsed::default();
        p.feed("[vm-a] XPMEM-TEST export PASS");
        p.feed("XPMEM-CASE-BEGIN local");
        p.feed("[vm-a] XPMEM-TEST export PASS");
        p.feed("[vm-local] [ 1.0] Kernel panic - not syncing: x");
        p.feed("XPMEM-CASE-END local rc=0");
        p.feed("XPMEM-CASE-BEGIN share");
        p.feed("[vm-zz] XPMEM-TEST export PASS");
        assert!(p.share.is_empty());
        assert!(p.local.trouble.is_some());
    }

    #[test]
    fn script_runs_the_share_monitor_under_the_relay() {
        let s = payload_script(Duration::from_secs(42));
        assert!(s.contains(
            "./xpmem-relay --agent a=a.vsock --agent b=b.vsock --agent c=c.vsock -- \
             timeout -s KILL 42 ./xpmem-vmm --config share.toml"
        ));
        assert!(s.contains("timeout -s KILL 42 ./xpmem-vmm --config local.toml"));
        // The heartbeat runs for the whole payload and is stopped at its end.
        assert!(s.starts_with("(\n\twhile sleep 30"), "{s}");
        assert!(s.trim_end().ends_with("kill $hb 2>/dev/null"), "{s}");
    }

    #[test]
    fn share_config_gives_each_vm_a_vsock_socket_for_the_relay() {
        let toml: String = SHARE_VMS
            .iter()
            .map(|(vm, script, _)| vm_toml(vm, 1, script, true, ""))
            .collect();
        let text = format!("{}{toml}", xpmem_toml());
        let parsed: toml::Value = toml::from_str(&text).unwrap();
        let vms = parsed["vm"].as_array().unwrap();
        assert_eq!(vms.len(), 3);
        assert_eq!(vms[2]["vsock"]["socket"].as_str(), Some("c.vsock"));
        assert!(vms[2].get("input").is_none());
        assert!(vms[2]["cmdline"]
            .as_str()
            .unwrap()
            .contains("xpmem.input=agent"));
        assert!(vms[1]["cmdline"]
            .as_str()
            .unwrap()
            .contains("xpmem.run=xpmem-share-b.sh"));
        assert_eq!(
            parsed["xpmem"]["invalidate_deadline_ms"].as_integer(),
            Some(INVALIDATE_DEADLINE_MS as i64)
        );
    }

    #[test]
    fn domain_report_must_hold_nothing() {
        let mut p = Parsed::default();
        for line in [
            "XPMEM-CASE-BEGIN local",
            "xpmem-vmm: xpmem domain at exit: held vms=0 segments=0 mapped_pages=0; total map_actions=7 invalidations_forced=0",
            "XPMEM-CASE-END local rc=0",
            "XPMEM-CASE-BEGIN share",
            "xpmem-vmm: xpmem domain at exit: held vms=0 segments=1 mapped_pages=0; total map_actions=3 invalidations_forced=0",
            "XPMEM-CASE-END share rc=0",
        ] {
            p.feed(line);
        }
        let mut out = Vec::new();
        p.domain_checks("local", &mut out);
        assert!(out.iter().all(|c| c.status == Status::Pass), "{out:?}");
        out.clear();
        p.domain_checks("share", &mut out);
        assert_eq!(
            out[0].status,
            Status::Fail("domain still holds: [\"segments=1\"]".into())
        );
        out.clear();
        Parsed::default().domain_checks("local", &mut out);
        assert!(out.iter().all(|c| matches!(c.status, Status::Fail(_))));
    }

    /// A hostile run: every VM passes, the monitor reports the forced revocations.
    fn hostile_lines(forced: u64, windows_revoked: u64) -> Vec<String> {
        let mut lines = vec!["XPMEM-CASE-BEGIN hostile".to_string()];
        for (vm, _, expected) in HOSTILE_VMS {
            for case in *expected {
                let base = case.trim_end_matches(|c: char| c == '-' || c.is_ascii_digit());
                lines.push(format!("[vm-{vm}] [ 9.0] XPMEM-TEST {base} PASS"));
            }
            lines.push(format!(
                "xpmem-vmm: VM {vm}: xpmem objects the guest left: segments=0 permits=0 attachments=0"
            ));
        }
        lines.push(format!(
            "xpmem-vmm: xpmem domain at exit: held vms=0 segments=0 mapped_pages=0; total \
             invalidations_forced={forced} windows_revoked={windows_revoked} aperture_cut_offs=0"
        ));
        lines.push("XPMEM-CASE-END hostile rc=0".to_string());
        lines
    }

    #[test]
    fn hostile_case_wants_forced_revocations_but_no_whole_window() {
        let judge = |forced, windows| {
            let mut p = Parsed::default();
            for l in hostile_lines(forced, windows) {
                p.feed(&l);
            }
            let r = p.judge(false);
            names(&r)
                .into_iter()
                .filter(|(n, _)| n.starts_with("xpmem/hostile/"))
                .collect::<Vec<_>>()
        };
        let ok = judge(6, 0);
        assert!(ok.iter().all(|(_, pass)| *pass), "{ok:?}");
        assert!(ok.contains(&("xpmem/hostile/b-attach-hostile-7".into(), true)));
        assert!(ok.contains(&("xpmem/hostile/c-local-latency".into(), true)));
        for (forced, windows) in [(5, 0), (6, 1)] {
            let r = judge(forced, windows);
            assert!(
                r.contains(&("xpmem/hostile/forced-revocations".into(), false)),
                "{forced} {windows}: {r:?}"
            );
        }
    }
}
