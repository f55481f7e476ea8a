//! `xpmem-e2e stress-forced` (run by `scripts/forced-revocation.sh`; issue 12
//! item 3): forced revocation end to end, many times over. VM `a` exports to
//! `b` and unmaps; `b`'s driver stops acknowledging invalidations
//! (`test_misbehave=no_ack`, a test-only module parameter). Each trial: a's
//! `munmap` must return by the monitor's deadline + 10% (`xpmem-test
//! export-hostile`, which also says how long it took), b's next touch must be
//! SIGBUS (`attach-hostile`), the host must count one forced revocation; at
//! the end both drivers and the host's domain hold nothing. Five such trials
//! run in CI inside the `xpmem` group's `hostile` case.
//!
//! Guest scripts: `scenario/forced-{a,b}.sh` (`xpmem.trials=N`).

use std::time::Duration;

use crate::cases::word_after;
use crate::cases::Env;
use crate::nested;

/// The monitor's invalidation deadline for the trials (the CI case uses the
/// same).
pub const DEADLINE_MS: u64 = 4_000;

/// What the run showed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Report {
    /// a's munmap times, ms, one per passed or failed trial that printed one.
    pub munmap_ms: Vec<f64>,
    /// The deadline the guest read from /proc/xpmem/stats.
    pub deadline_ms: Option<u64>,
    /// export-hostile and attach-hostile PASS counts.
    pub exporter_passed: usize,
    pub importer_passed: usize,
    /// FAIL lines, verbatim.
    pub failures: Vec<String>,
    /// proc-zero passed in both VMs.
    pub guests_clean: usize,
    /// The domain's `invalidations_forced` total and whether every held
    /// counter was 0 at exit.
    pub forced: Option<u64>,
    pub held_zero: Option<bool>,
    pub monitor_rc: Option<i32>,
}

impl Report {
    /// Takes one console line of the test host.
    pub fn feed(&mut self, line: &str) {
        if let Some(rest) = line.strip_prefix("XPMEM-CASE-END forced ") {
            self.monitor_rc = word_after(rest, "rc=").and_then(|r| r.parse().ok());
        } else if let Some((zero, total)) = crate::cases::domain_at_exit(line) {
            self.held_zero = Some(zero);
            self.forced = word_after(total, "invalidations_forced=").and_then(|v| v.parse().ok());
        } else if let Some(at) = line.find("XPMEM-TEST ") {
            let text = &line[at + "XPMEM-TEST ".len()..];
            let (case, rest) = text.split_once(' ').unwrap_or((text, ""));
            match (case, rest.split_whitespace().next()) {
                ("export-hostile", Some("NOTE")) => {
                    if let Some(ms) = word_after(rest, "last of ")
                        .and(rest.split("pages ").nth(1))
                        .and_then(|r| r.split_whitespace().next())
                        .and_then(|v| v.parse().ok())
                    {
                        self.munmap_ms.push(ms);
                    }
                    self.deadline_ms = word_after(rest, "(device deadline ")
                        .and_then(|v| v.parse().ok())
                        .or(self.deadline_ms);
                }
                ("export-hostile", Some("PASS")) => self.exporter_passed += 1,
                ("attach-hostile", Some("PASS")) => self.importer_passed += 1,
                ("proc-zero", Some("PASS")) => self.guests_clean += 1,
                (_, Some("FAIL")) => self.failures.push(text.to_string()),
                _ => {}
            }
        }
    }

    /// Everything that is not as it must be after `trials` trials.
    pub fn problems(&self, trials: usize) -> Vec<String> {
        let mut p = self.failures.clone();
        let deadline = self.deadline_ms.unwrap_or(DEADLINE_MS) as f64;
        let late = self
            .munmap_ms
            .iter()
            .filter(|ms| **ms > deadline * 1.1)
            .count();
        if late > 0 {
            p.push(format!(
                "{late} munmap(s) took longer than the deadline + 10%"
            ));
        }
        if self.exporter_passed != trials || self.importer_passed != trials {
            p.push(format!(
                "{} exporter and {} importer trials passed of {trials}",
                self.exporter_passed, self.importer_passed
            ));
        }
        if self.munmap_ms.len() != trials {
            p.push(format!(
                "{} munmap times for {trials} trials",
                self.munmap_ms.len()
            ));
        }
        if self.forced.is_none_or(|f| f < trials as u64) {
            p.push(format!(
                "the host counted {:?} forced revocations for {trials} trials",
                self.forced
            ));
        }
        if self.held_zero != Some(true) {
            p.push("the host's domain still held something at exit (or printed no report)".into());
        }
        if self.guests_clean != 2 {
            p.push(format!(
                "{} of 2 guests were clean at the end (proc-zero)",
                self.guests_clean
            ));
        }
        if self.monitor_rc != Some(0) {
            p.push(format!("the monitor exited with {:?}", self.monitor_rc));
        }
        p
    }

    /// The summary table.
    pub fn summary(&self, trials: usize) -> String {
        let mut v = self.munmap_ms.clone();
        v.sort_by(f64::total_cmp);
        let deadline = self.deadline_ms.unwrap_or(DEADLINE_MS);
        let pick = |q: f64| {
            v.get(((v.len() as f64 - 1.0) * q).round() as usize)
                .copied()
                .unwrap_or(0.0)
        };
        let mean = if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        };
        format!(
            "forced revocation, {trials} trials, deadline {deadline} ms (limit {:.0} ms):\n  \
             exporter munmap ms: min {:.1}, median {:.1}, mean {:.1}, p99 {:.1}, max {:.1}\n  \
             trials passed: exporter {}, importer (SIGBUS) {}; host forced revocations {}; \
             domain held nothing: {}; guests clean: {}/2\n",
            deadline as f64 * 1.1,
            pick(0.0),
            pick(0.5),
            mean,
            pick(0.99),
            pick(1.0),
            self.exporter_passed,
            self.importer_passed,
            self.forced.map_or("?".into(), |f| f.to_string()),
            self.held_zero.map_or("?".into(), |h| h.to_string()),
            self.guests_clean,
        )
    }
}

fn config(trials: usize) -> String {
    let vms: String = ["a", "b"]
        .iter()
        .map(|vm| {
            crate::xpmem_group::vm_toml(
                vm,
                1,
                &format!("forced-{vm}.sh"),
                true,
                &format!("xpmem.trials={trials}"),
            )
        })
        .collect();
    format!("{}{vms}", crate::xpmem_group::deadline_toml(DEADLINE_MS))
}

fn script(trials: usize) -> String {
    // Boot, then per trial the deadline and a few seconds of emulated work.
    let t = 180 + trials as u64 * 15;
    format!(
        r#"{heartbeat}echo "XPMEM-CASE-BEGIN forced"
./xpmem-relay {relay} -- timeout -s KILL {t} ./xpmem-vmm --config forced.toml </dev/null 2>&1
echo "XPMEM-CASE-END forced rc=$?"
kill $hb 2>/dev/null
"#,
        heartbeat = nested::HEARTBEAT,
        relay = ["a", "b"].map(crate::xpmem_group::agent_arg).join(" "),
    )
}

/// Runs `trials` trials on the test host.
pub fn run(env: &Env, opts: nested::Options, trials: usize) -> Result<Report, String> {
    let relay = crate::xpmem_group::relay_binary();
    if !relay.exists() {
        return Err(format!(
            "{} is missing: build it beside xpmem-e2e (`cargo build -p xpmem-e2e`)",
            relay.display()
        ));
    }
    let mut payload =
        crate::cases::guest_payload(env, script(trials)).map_err(|e| e.to_string())?;
    payload.file(&relay, "xpmem-relay");
    payload.data("forced.toml", config(trials), 0o644);
    let mut opts = opts;
    opts.timeout = opts
        .timeout
        .max(Duration::from_secs(300 + trials as u64 * 15));
    opts.silence_limit = Some(nested::SILENCE_LIMIT);
    let mut report = Report::default();
    nested::run(&env.cache, &payload, &opts, |l| {
        if l.contains("export-hostile NOTE") || l.contains(" FAIL ") || l.starts_with("xpmem-vmm:")
        {
            println!("[L1] {l}");
        }
        report.feed(l);
    })
    .map_err(|e| e.to_string())?;
    Ok(report)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
mod tests {
    use super::*;

    fn lines(trials: usize, ms: f64) -> Vec<String> {
        let mut l = Vec::new();
        for _ in 0..trials {
            l.push(format!("[vm-a] [ 9.0] XPMEM-TEST export-hostile NOTE 1 munmaps, last of 16 pages {ms:.1} ms, slowest {ms:.1} ms (device deadline 4000 ms); 1 importer target(s) revoked by force"));
            l.push("[vm-a] [ 9.0] XPMEM-TEST export-hostile PASS".into());
            l.push("[vm-b] [ 9.0] XPMEM-TEST attach-hostile PASS".into());
        }
        l.push("[vm-a] XPMEM-TEST proc-zero PASS".into());
        l.push("[vm-b] XPMEM-TEST proc-zero PASS".into());
        l.push(format!("xpmem-vmm: xpmem domain at exit: held vms=0 segments=0; total invalidations_forced={trials} windows_revoked=0"));
        l.push("XPMEM-CASE-END forced rc=0".into());
        l
    }

    fn report(lines: &[String]) -> Report {
        let mut r = Report::default();
        for l in lines {
            r.feed(l);
        }
        r
    }

    #[test]
    fn trials_in_time_pass_and_are_summarised() {
        let r = report(&lines(3, 4026.0));
        assert_eq!(r.problems(3), Vec::<String>::new());
        assert_eq!(r.munmap_ms, vec![4026.0; 3]);
        assert_eq!(r.deadline_ms, Some(4000));
        let s = r.summary(3);
        assert!(
            s.contains("median 4026.0") && s.contains("limit 4400 ms"),
            "{s}"
        );
    }

    #[test]
    fn late_munmaps_missing_trials_and_leaks_fail() {
        let r = report(&lines(2, 4500.0));
        assert!(r.problems(2)[0].contains("2 munmap(s) took longer"));
        let r = report(&lines(2, 100.0));
        assert!(r.problems(3).iter().any(|p| p.contains("of 3")));
        let leak: Vec<String> = lines(1, 100.0)
            .into_iter()
            .map(|l| l.replace("segments=0", "segments=1"))
            .collect();
        assert!(report(&leak)
            .problems(1)
            .iter()
            .any(|p| p.contains("still held")));
        let c = config(7);
        assert!(c.contains("xpmem.trials=7") && c.contains("invalidate_deadline_ms = 4000"));
    }
}
