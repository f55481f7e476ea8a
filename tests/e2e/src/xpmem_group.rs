//! The `xpmem` group: the guest driver (`guest-driver/kmod/xpmem.ko`) and the
//! virtio-xpmem device in stock Debian guests under the monitor. One test-host
//! boot runs two monitor invocations:
//!
//! * `local`: one VM runs `guest-driver/tools/image/scenario/xpmem-local.sh`
//!   (same-VM export + attach both ways, copy-on-write after fork, SIGBUS
//!   after munmap, `/proc/xpmem` counters back to 0).
//! * `share`: VM `a` exports, VM `b` (the monitor's `stdin = true` VM)
//!   imports. The payload script runs the monitor with a FIFO as stdin,
//!   watches for `a`'s `XPMEM-TEST <case> SEGID <n>` lines and `b`'s
//!   `XPMEM-TEST <case> WAITING SEGID` lines and, pairing them in order,
//!   writes `SEGID <n>` into the FIFO, which the monitor types on `b`'s
//!   serial port.
//!
//! Guest command output reaches the console through `/dev/kmsg`
//! (`xpmem.out=kmsg`); every `XPMEM-TEST <case> PASS|FAIL` line becomes one
//! `xpmem/<case>/<check>` result, and an expected line that never came is a
//! failure.

use std::path::PathBuf;
use std::time::Duration;

use crate::cases::{CaseResult, Env, Error, Status};
use crate::image::{self, Spec};
use crate::nested::{self, Payload};
use crate::scenario::Echo;

const G: &str = "xpmem";

/// Each monitor run is killed after this long (a nested boot takes 1-2 minutes).
const VMM_DEADLINE: Duration = Duration::from_secs(360);

/// What `xpmem-local.sh` runs, in order (a repeated case gets `-2`, ...).
const LOCAL_EXPECTED: &[&str] = &[
    "version",
    "local-errors",
    "local",
    "local-2",
    "attach-fork",
    "export-fork",
    "proc-zero",
];
/// What `xpmem-share-export.sh` runs in VM `a`.
const SHARE_A_EXPECTED: &[&str] = &[
    "export",
    "export-hold",
    "export-hold-2",
    "export-fork",
    "export-exit",
    "export-unmap",
    "proc-zero",
];
/// What `xpmem-share-import.sh` runs in VM `b`.
const SHARE_B_EXPECTED: &[&str] = &[
    "attach",
    "attach-ro",
    "get-denied",
    "attach-fork",
    "attach-gone",
    "attach-gone-2",
    "proc-zero",
];

/// The L1 payload script. Markers: `XPMEM-CASE-BEGIN <case>`,
/// `XPMEM-CASE-END <case> rc=<monitor exit>`, `XPMEM-L1 TYPED SEGID <n>`.
fn payload_script(deadline: Duration) -> String {
    let t = deadline.as_secs().max(1);
    format!(
        r#"echo "XPMEM-CASE-BEGIN local"
timeout -s KILL {t} ./xpmem-vmm --config local.toml </dev/null 2>&1
echo "XPMEM-CASE-END local rc=$?"
echo "XPMEM-CASE-BEGIN share"
rm -f /tmp/stdin-b
mkfifo /tmp/stdin-b || exit 1
# Opened read-write: the open does not block and the monitor never sees EOF.
# A segid is typed only once b's importer printed WAITING SEGID, so nothing is
# typed before b's console is open (the 8250 driver clears its FIFO on open).
na=0
nw=0
nt=0
type_pending() {{
	while [ $nt -lt $na ] && [ $nt -lt $nw ]; do
		nt=$((nt + 1))
		s=$(cat /tmp/segid.$nt)
		echo "SEGID $s" >/tmp/stdin-b
		echo "XPMEM-L1 TYPED SEGID $s"
	done
}}
( timeout -s KILL {t} ./xpmem-vmm --config share.toml <>/tmp/stdin-b 2>&1; echo "XPMEM-VMM-EXIT rc=$?" ) |
while IFS= read -r l; do
	case "$l" in
	"XPMEM-VMM-EXIT rc="*) echo "XPMEM-CASE-END share rc=${{l#XPMEM-VMM-EXIT rc=}}"; continue ;;
	esac
	echo "$l"
	case "$l" in
	"[vm-a]"*"XPMEM-TEST "*" SEGID "*)
		s=$(echo "$l" | sed -n 's/.* SEGID \([0-9][0-9]*\).*/\1/p')
		if [ -n "$s" ]; then
			na=$((na + 1))
			echo "$s" >/tmp/segid.$na
			type_pending
		fi
		;;
	"[vm-b]"*"XPMEM-TEST "*" WAITING SEGID"*)
		nw=$((nw + 1))
		type_pending
		;;
	esac
done
"#
    )
}

fn vm_toml(name: &str, vcpus: u32, run: &str, stdin: Option<bool>) -> String {
    let append = std::env::var("XPMEM_GUEST_APPEND").unwrap_or_default();
    let cmdline = format!("xpmem.name={name} xpmem.run={run} xpmem.out=kmsg {append}");
    let mut s = format!(
        "[[vm]]\nname = \"{name}\"\nvcpus = {vcpus}\nmemory = 512\nkernel = \"vmlinuz\"\ninitrd = \"guest.cpio.gz\"\ncmdline = {}\n",
        toml::Value::String(cmdline.trim().to_string())
    );
    if let Some(v) = stdin {
        s.push_str(&format!("stdin = {v}\n"));
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
    /// Segids the VM printed.
    pub segids: Vec<u64>,
    /// `XPMEM-LOCAL PASS` (true) or `FAIL` (false).
    pub local_verdict: Option<bool>,
    /// Exit code of the guest command.
    pub rc: Option<i32>,
    /// A kernel panic / BUG / Oops line.
    pub trouble: Option<String>,
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
            && ["Kernel panic", "BUG:", "Oops", "general protection"]
                .iter()
                .any(|k| text.contains(k))
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
            "SEGID" => {
                if let Ok(n) = tail.parse() {
                    self.segids.push(n);
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
    fn judge(&self, case: &str, prefix: &str, expected: &[&str], out: &mut Vec<CaseResult>) {
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
    /// VM `a` in case `share`.
    pub share_a: VmLog,
    /// VM `b` in case `share`.
    pub share_b: VmLog,
    /// Monitor exit codes per case.
    pub local_rc: Option<i32>,
    /// Monitor exit code of `share`.
    pub share_rc: Option<i32>,
    /// Segids the L1 script typed into `b`.
    pub typed: Vec<u64>,
    /// The monitor's own lines (`xpmem-vmm: ...`), for failure reasons.
    pub monitor: Vec<String>,
    /// The "held" part of the monitor's domain report at exit, per case.
    pub domain_held: Vec<(String, String)>,
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
            let rc = rest
                .split_once(" rc=")
                .and_then(|(_, r)| r.trim().parse().ok());
            if rest.starts_with("local ") {
                self.local_rc = rc;
            } else if rest.starts_with("share ") {
                self.share_rc = rc;
            }
            self.current = None;
            return;
        }
        if let Some(s) = line.strip_prefix("XPMEM-L1 TYPED SEGID ") {
            if let Ok(n) = s.trim().parse() {
                self.typed.push(n);
            }
            return;
        }
        if line.starts_with("xpmem-vmm:") {
            self.monitor.push(line.to_string());
            if let (Some(case), Some((_, held))) = (
                self.current.as_ref(),
                line.split_once("xpmem domain at exit: held "),
            ) {
                let held = held.split(';').next().unwrap_or_default().to_string();
                self.domain_held.push((case.clone(), held));
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
            (Some("share"), "a") => self.share_a.feed(text),
            (Some("share"), "b") => self.share_b.feed(text),
            _ => {}
        }
    }

    /// The host's xpmem domain holds nothing once the case's VMs have ended.
    fn domain_check(&self, case: &str) -> CaseResult {
        let held = self
            .domain_held
            .iter()
            .find(|(c, _)| c == case)
            .map(|(_, h)| h.as_str());
        let status = match held {
            None => Status::Fail("the monitor printed no xpmem domain report at exit".into()),
            Some(h) => {
                let nonzero: Vec<&str> = h
                    .split_whitespace()
                    .filter(|kv| !kv.ends_with("=0"))
                    .collect();
                if h.split_whitespace().count() > 0 && nonzero.is_empty() {
                    Status::Pass
                } else {
                    Status::Fail(format!("domain still holds: {nonzero:?}"))
                }
            }
        };
        result(case, "domain-counters-zero", status)
    }

    fn monitor_check(&self, case: &str, rc: Option<i32>, timed_out: bool) -> CaseResult {
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
        out.push(self.monitor_check("local", self.local_rc, timed_out));
        out.push(self.domain_check("local"));
        // share
        self.share_a
            .judge("share", "a-", SHARE_A_EXPECTED, &mut out);
        self.share_b
            .judge("share", "b-", SHARE_B_EXPECTED, &mut out);
        let printed = &self.share_a.segids;
        out.push(result(
            "share",
            "segid-typed",
            if !printed.is_empty() && &self.typed == printed {
                Status::Pass
            } else {
                Status::Fail(format!(
                    "exporter printed segids {printed:?}, the harness typed {:?}",
                    self.typed
                ))
            },
        ));
        out.push(self.monitor_check("share", self.share_rc, timed_out));
        out.push(self.domain_check("share"));
        out
    }
}

/// Runs the group (see the module documentation).
pub fn run(env: &Env, opts: nested::Options) -> Result<Vec<CaseResult>, Error> {
    let root = crate::repo_root();
    let ko = root.join("guest-driver/kmod/xpmem.ko");
    let tools = root.join("guest-driver/tools/image");
    for (p, how) in [
        (&ko, "make -C guest-driver"),
        (&tools.join("bin/xpmem-test"), "make -C guest-driver"),
    ] {
        if !p.exists() {
            return Ok(vec![result(
                "setup",
                "inputs",
                Status::Fail(format!("{} is missing: run `{how}`", p.display())),
            )]);
        }
    }
    let kernel = env.cache.kernel()?;
    let busybox = env.cache.busybox()?;
    let spec = Spec {
        modules: ["virtio_ring", "virtio", "virtio_mmio", "virtio_rng"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        extra_modules: vec![ko],
        extra_dirs: vec![tools],
        run: None,
    };
    let initrd: PathBuf =
        image::build(&kernel, &busybox, &spec, &crate::build_dir().join("images"))?;
    let mut payload = Payload::new(payload_script(VMM_DEADLINE));
    payload.file(&env.vmm, "xpmem-vmm");
    payload.file(&kernel.vmlinuz, "vmlinuz");
    payload.file(&initrd, "guest.cpio.gz");
    payload.data(
        "local.toml",
        vm_toml("local", 2, "xpmem-local.sh", None),
        0o644,
    );
    payload.data(
        "share.toml",
        format!(
            "{}{}",
            vm_toml("a", 1, "xpmem-share-export.sh", Some(false)),
            vm_toml("b", 1, "xpmem-share-import.sh", Some(true))
        ),
        0o644,
    );
    let mut opts = opts;
    opts.timeout = opts
        .timeout
        .min(VMM_DEADLINE * 2 + Duration::from_secs(120));
    let echo = env.echo;
    let mut parsed = Parsed::default();
    let outcome = nested::run(&env.cache, &payload, &opts, |l| {
        let show = echo == Echo::All
            || (echo == Echo::Guests && l.starts_with("[vm-"))
            || l.starts_with("XPMEM-CASE")
            || l.starts_with("XPMEM-L1 TYPED")
            || l.contains("XPMEM-TEST ")
            || l.contains("XPMEM-GUEST ")
            || l.starts_with("xpmem-vmm:");
        if show {
            println!("[L1] {l}");
        }
        parsed.feed(l);
    })?;
    Ok(parsed.judge(outcome.timed_out))
}

#[cfg(test)]
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
            "[vm-local] [    5.1] XPMEM-TEST local SEGID 77",
            "[vm-local] [    5.2] XPMEM-TEST local PASS",
            "[vm-local] [    5.3] XPMEM-TEST local FAIL no SIGBUS\r",
            "[vm-local] [    5.4] XPMEM-LOCAL FAIL",
            "[vm-local] [    5.5] XPMEM-GUEST RESULT local rc=1",
            "XPMEM-CASE-END local rc=0",
        ] {
            p.feed(l);
        }
        assert_eq!(p.local_rc, Some(0));
        assert_eq!(p.local.rc, Some(1));
        assert_eq!(p.local.segids, vec![77]);
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
        assert!(n.contains(&("xpmem/share/segid-typed".into(), false)));
        assert!(n.contains(&("xpmem/share/monitor-exits-0".into(), false)));
    }

    #[test]
    fn share_passes_only_with_every_line() {
        // Every exporter case but the last prints a segid that is typed into b.
        let mut lines = vec!["XPMEM-CASE-BEGIN share".to_string()];
        let base = |case: &str| case.trim_end_matches("-2").to_string();
        for (i, case) in SHARE_A_EXPECTED.iter().enumerate() {
            if *case != "proc-zero" {
                let segid = 1000 + i;
                lines.push(format!(
                    "[vm-a] [ 3.0] XPMEM-TEST {} SEGID {segid}",
                    base(case)
                ));
                lines.push(format!("XPMEM-L1 TYPED SEGID {segid}"));
            }
            lines.push(format!("[vm-a] [ 3.1] XPMEM-TEST {} PASS", base(case)));
        }
        for case in SHARE_B_EXPECTED {
            lines.push(format!("[vm-b] [ 3.2] XPMEM-TEST {} PASS", base(case)));
        }
        lines.push(
            "xpmem-vmm: xpmem domain at exit: held vms=0 segments=0; total map_actions=2".into(),
        );
        lines.push("XPMEM-CASE-END share rc=0".into());
        let mut p = Parsed::default();
        for l in &lines {
            p.feed(l);
        }
        let share: Vec<_> = p
            .judge(false)
            .into_iter()
            .filter(|c| c.name.starts_with("xpmem/share/"))
            .collect();
        assert!(share.iter().all(|c| c.status == Status::Pass), "{share:?}");
        assert_eq!(
            share.len(),
            SHARE_A_EXPECTED.len() + SHARE_B_EXPECTED.len() + 2 + 1 + 1 + 1
        );

        // Without the last typed segid, the check fails.
        let mut q = Parsed::default();
        for l in lines.iter().filter(|l| !l.contains("TYPED SEGID 1005")) {
            q.feed(l);
        }
        let r = q.judge(false);
        assert!(r
            .iter()
            .any(|c| c.name == "xpmem/share/segid-typed" && c.status != Status::Pass));
        // Without b's read-only case, that check fails.
        let mut r = Parsed::default();
        for l in lines.iter().filter(|l| !l.contains("attach-ro PASS")) {
            r.feed(l);
        }
        assert!(r
            .judge(false)
            .iter()
            .any(|c| c.name == "xpmem/share/b-attach-ro" && c.status != Status::Pass));
    }

    #[test]
    fn lines_outside_a_case_or_of_other_vms_are_ignored() {
        let mut p = Parsed::default();
        p.feed("[vm-a] XPMEM-TEST export PASS");
        p.feed("XPMEM-CASE-BEGIN local");
        p.feed("[vm-a] XPMEM-TEST export PASS");
        p.feed("[vm-local] [ 1.0] Kernel panic - not syncing: x");
        assert!(p.share_a.results.is_empty());
        assert!(p.local.trouble.is_some());
    }

    #[test]
    fn script_quotes_survive_format() {
        let s = payload_script(Duration::from_secs(42));
        assert!(s.contains("timeout -s KILL 42 ./xpmem-vmm --config share.toml <>/tmp/stdin-b"));
        assert!(s.contains("${l#XPMEM-VMM-EXIT rc=}"));
    }

    #[test]
    fn domain_report_must_hold_nothing() {
        let mut p = Parsed::default();
        for line in [
            "XPMEM-CASE-BEGIN local",
            "xpmem-vmm: xpmem domain at exit: held vms=0 segments=0 mapped_pages=0; total map_actions=7",
            "XPMEM-CASE-END local rc=0",
            "XPMEM-CASE-BEGIN share",
            "xpmem-vmm: xpmem domain at exit: held vms=0 segments=1 mapped_pages=0; total map_actions=3",
            "XPMEM-CASE-END share rc=0",
        ] {
            p.feed(line);
        }
        assert_eq!(p.domain_check("local").status, Status::Pass);
        assert_eq!(
            p.domain_check("share").status,
            Status::Fail("domain still holds: [\"segments=1\"]".into())
        );
        let empty = Parsed::default();
        assert!(matches!(
            empty.domain_check("local").status,
            Status::Fail(_)
        ));
    }
}
