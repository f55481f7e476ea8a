//! The `scale` group (issue 12 item 6; in CI: 8 VMs took 117 s on the nested
//! host, 2026-12-06; `scripts/scale.sh` runs it alone): [`DEFAULT_VMS`] VMs
//! of 256 MiB under one monitor, a
//! ring of exports and attaches: VM `r<i>` exports a segment named `ring-r<i>`
//! and attaches the one of `r<i-1>` by name (`xpmem-test export --name` /
//! `attach --name`: data checked both ways), then its counters must be back
//! to 0. Every VM must boot and pass, the monitor must exit 0 and its domain
//! hold nothing. `XPMEM_SCALE_VMS` sets the number of VMs (2..=32).
//!
//! Guest script: `scenario/ring.sh`.

use std::collections::BTreeMap;

use crate::cases::{test_line, word_after};
use crate::cases::{CaseResult, Env, Error, Status};
use crate::nested;

const G: &str = "scale";
/// VMs in the ring unless `XPMEM_SCALE_VMS` says otherwise.
pub const DEFAULT_VMS: usize = 8;
/// Guest RAM of each VM, MiB.
pub const VM_MIB: u64 = 256;

/// The number of VMs of the ring.
pub fn vm_count() -> usize {
    std::env::var("XPMEM_SCALE_VMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| (2..=32).contains(n))
        .unwrap_or(DEFAULT_VMS)
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("r{i}")).collect()
}

fn config(n: usize) -> String {
    names(n)
        .iter()
        .map(|vm| {
            let cmdline =
                format!("xpmem.name={vm} xpmem.run=ring.sh xpmem.out=kmsg xpmem.ringsize={n}");
            format!(
                "[[vm]]\nname = \"{vm}\"\nvcpus = 1\nmemory = {VM_MIB}\nkernel = \"vmlinuz\"\n\
                 initrd = \"guest.cpio.gz\"\ncmdline = {}\n\n",
                toml::Value::String(cmdline)
            )
        })
        .collect()
}

fn script(n: usize) -> String {
    // Boots share the test host's one CPU: about 30 s of it per VM.
    let t = 300 + n as u64 * 60;
    format!(
        r#"{heartbeat}echo "XPMEM-CASE-BEGIN scale"
start=$(cut -d' ' -f1 /proc/uptime)
timeout -s KILL {t} ./xpmem-vmm --config scale.toml </dev/null 2>&1
echo "XPMEM-CASE-END scale rc=$? start=$start end=$(cut -d' ' -f1 /proc/uptime)"
kill $hb 2>/dev/null
"#,
        heartbeat = nested::HEARTBEAT
    )
}

/// `(case, PASS or the FAIL reason)` of a VM's `XPMEM-TEST` lines, in order.
type CaseLines = Vec<(String, Result<(), String>)>;

/// What the run printed.
#[derive(Debug, Default)]
pub struct Parsed {
    /// Per VM: guest uptime at READY, and (case, PASS or FAIL reason).
    ready: BTreeMap<String, f64>,
    results: BTreeMap<String, CaseLines>,
    held_zero: Option<bool>,
    monitor_rc: Option<i32>,
    /// Seconds of the monitor's run (test host uptime at start and end).
    run_secs: Option<f64>,
}

impl Parsed {
    pub fn feed(&mut self, line: &str) {
        if let Some(rest) = line.strip_prefix("XPMEM-CASE-END scale ") {
            self.monitor_rc = word_after(rest, "rc=").and_then(|v| v.parse().ok());
            let num = |k| word_after(rest, k).and_then(|v| v.parse::<f64>().ok());
            self.run_secs = num("end=").zip(num("start=")).map(|(e, s)| e - s);
            return;
        }
        if let Some((zero, _)) = crate::cases::domain_at_exit(line) {
            self.held_zero = Some(zero);
            return;
        }
        let Some((vm, text)) = line.strip_prefix("[vm-").and_then(|r| r.split_once(']')) else {
            return;
        };
        if let Some(rest) = text.split("XPMEM-GUEST READY ").nth(1) {
            if let Some(up) = word_after(rest, "uptime=").and_then(|v| v.parse().ok()) {
                self.ready.insert(vm.to_string(), up);
            }
        }
        if let Some((case, verdict, rest)) = test_line(text) {
            let r = match verdict {
                "PASS" => Ok(()),
                "FAIL" => Err(rest.to_string()),
                _ => return,
            };
            self.results
                .entry(vm.to_string())
                .or_default()
                .push((case.to_string(), r));
        }
    }

    pub fn judge(&self, n: usize) -> Vec<CaseResult> {
        let mut out = Vec::new();
        for vm in names(n) {
            out.push(CaseResult::new(
                G,
                &format!("{vm}/booted"),
                match self.ready.get(&vm) {
                    Some(_) => Status::Pass,
                    None => Status::Fail("no XPMEM-GUEST READY line".into()),
                },
            ));
            let got = self.results.get(&vm).cloned().unwrap_or_default();
            for case in ["export", "attach", "proc-zero"] {
                let status = match got.iter().find(|(c, _)| c == case) {
                    Some((_, Ok(()))) => Status::Pass,
                    Some((_, Err(why))) => Status::Fail(why.clone()),
                    None => Status::Fail(format!("{vm} printed no result for {case}")),
                };
                out.push(CaseResult::new(G, &format!("{vm}/{case}"), status));
            }
            for (case, r) in &got {
                if let (Err(why), false) = (
                    r,
                    ["export", "attach", "proc-zero"].contains(&case.as_str()),
                ) {
                    out.push(CaseResult::new(
                        G,
                        &format!("{vm}/{case}"),
                        Status::Fail(why.clone()),
                    ));
                }
            }
        }
        out.push(CaseResult::new(
            G,
            "domain-counters-zero",
            match self.held_zero {
                Some(true) => Status::Pass,
                Some(false) => {
                    Status::Fail("the host's domain still held something at exit".into())
                }
                None => Status::Fail("the monitor printed no domain report".into()),
            },
        ));
        out.push(CaseResult::new(
            G,
            "monitor-exit",
            match self.monitor_rc {
                Some(0) => Status::Pass,
                rc => Status::Fail(format!("the monitor exited with {rc:?}")),
            },
        ));
        out
    }

    /// One line: boot times and the run's length.
    pub fn summary(&self, n: usize) -> String {
        let ups: Vec<f64> = self.ready.values().copied().collect();
        let max = ups.iter().copied().fold(0.0, f64::max);
        let min = ups.iter().copied().fold(f64::INFINITY, f64::min);
        format!(
            "{} of {n} VMs ({VM_MIB} MiB each) booted, READY at guest uptime {:.1}-{:.1} s; the monitor ran {:.0} s",
            ups.len(),
            if ups.is_empty() { 0.0 } else { min },
            max,
            self.run_secs.unwrap_or(0.0)
        )
    }
}

pub fn run(env: &Env, opts: nested::Options) -> Result<Vec<CaseResult>, Error> {
    if let Some(missing) = crate::cases::missing_xpmem_test(G) {
        return Ok(vec![missing]);
    }
    let n = vm_count();
    let mut payload = crate::cases::guest_payload(env, script(n))?;
    payload.data("scale.toml", config(n), 0o644);
    let mut opts = opts;
    opts.timeout = opts
        .timeout
        .max(std::time::Duration::from_secs(600 + n as u64 * 60));
    let mut parsed = Parsed::default();
    let stopped = crate::cases::run_on_test_host(env, opts, &payload, G, &[], |l| parsed.feed(l))?;
    println!("[scale] {}", parsed.summary(n));
    let mut results = parsed.judge(n);
    results.extend(stopped);
    Ok(results)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
mod tests {
    use super::*;

    fn good(n: usize) -> Vec<String> {
        let mut l = Vec::new();
        for vm in names(n) {
            l.push(format!(
                "[vm-{vm}] [ 30.0] XPMEM-GUEST READY {vm} cpus=1 virtio=none uptime=30.5"
            ));
            for c in ["export", "attach", "proc-zero"] {
                l.push(format!("[vm-{vm}] [ 40.0] XPMEM-TEST {c} PASS"));
            }
        }
        l.push("xpmem-vmm: xpmem domain at exit: held vms=0 segments=0 names=0; total x=1".into());
        l.push("XPMEM-CASE-END scale rc=0 start=10.0 end=130.0".into());
        l
    }

    fn judge(lines: &[String], n: usize) -> Vec<(String, bool)> {
        let mut p = Parsed::default();
        for l in lines {
            p.feed(l);
        }
        p.judge(n)
            .into_iter()
            .map(|r| (r.name, r.status == Status::Pass))
            .collect()
    }

    #[test]
    fn a_full_ring_passes_and_a_missing_vm_or_leak_fails() {
        let r = judge(&good(8), 8);
        assert_eq!(r.len(), 8 * 4 + 2);
        assert!(r.iter().all(|(_, ok)| *ok), "{r:?}");
        let without: Vec<String> = good(8)
            .into_iter()
            .filter(|l| !l.starts_with("[vm-r3]"))
            .collect();
        let r = judge(&without, 8);
        assert_eq!(r.iter().filter(|(_, ok)| !ok).count(), 4, "{r:?}");
        let leak: Vec<String> = good(3)
            .into_iter()
            .map(|l| l.replace("segments=0", "segments=2"))
            .collect();
        assert!(judge(&leak, 3).contains(&("scale/domain-counters-zero".into(), false)));
        let c: toml::Table = config(8).parse().unwrap();
        assert_eq!(c["vm"].as_array().unwrap().len(), 8);
    }
}
