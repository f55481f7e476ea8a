//! The `disk` group (issue 9): virtio-blk disks under a stock Debian guest
//! kernel, on the nested test host. Two monitor runs share the images:
//!
//! * `write`: VM `w` writes [`DISK_MIB`] MiB of a pattern to its data disk
//!   (`/dev/vda`, serial `data`) through the page cache and `fsync`s it (the
//!   guest's FLUSH). As soon as it prints `SYNCED`, the test host kills the
//!   monitor with SIGKILL.
//! * `verify`: a fresh monitor boots VM `v` on the same data image: every word
//!   reads back as written (the sums agree), and its second disk (`/dev/vdb`,
//!   serial `ro`, `read_only = true`) is read-only in the guest: reads work, a
//!   write fails. The read-only image's SHA-256 is the same before and after.
use crate::cases::{test_line, word_after, CaseResult, Env, Error, Status};
use crate::nested::{self, Payload};

const G: &str = "disk";

/// How much the durability case writes.
pub const DISK_MIB: u64 = 64;
/// Size of the read-only image (random bytes, hashed before and after).
const RO_MIB: u64 = 4;

fn vm_toml(name: &str, run: &str, disks: &str) -> String {
    let cmdline = format!("xpmem.name={name} xpmem.run={run} xpmem.out=kmsg");
    format!(
        "[[vm]]\nname = \"{name}\"\nvcpus = 1\nmemory = 512\nkernel = \"vmlinuz\"\n\
         initrd = \"guest.cpio.gz\"\ncmdline = {}\ndisks = [{disks}]\n",
        toml::Value::String(cmdline)
    )
}

/// The L1 payload script. Markers: `XPMEM-CASE-BEGIN/END <run>`, and
/// `XPMEM-DISK RO-IMAGE unchanged|changed ...`.
fn payload_script() -> String {
    format!(
        r#"{heartbeat}dd if=/dev/zero of=data.img bs=1M count=0 seek={size} 2>/dev/null
dd if=/dev/urandom of=ro.img bs=1M count={ro} 2>/dev/null
chmod 444 ro.img
before=$(sha256sum ro.img | cut -d' ' -f1)
echo "XPMEM-CASE-BEGIN write"
./xpmem-vmm --config write.toml </dev/null >write.log 2>&1 &
vmm=$!
i=0
while [ $i -lt 3000 ] && ! grep -q "XPMEM-TEST disk-write SYNCED" write.log; do
	kill -0 $vmm 2>/dev/null || break
	sleep 0.1
	i=$((i + 1))
done
kill -9 $vmm 2>/dev/null
wait $vmm
echo "XPMEM-CASE-END write rc=$?"
cat write.log
echo "XPMEM-CASE-BEGIN verify"
timeout -s KILL 300 ./xpmem-vmm --config verify.toml </dev/null 2>&1
echo "XPMEM-CASE-END verify rc=$?"
after=$(sha256sum ro.img | cut -d' ' -f1)
if [ "$before" = "$after" ]; then
	echo "XPMEM-DISK RO-IMAGE unchanged $after"
else
	echo "XPMEM-DISK RO-IMAGE changed $before $after"
fi
kill $hb 2>/dev/null
"#,
        heartbeat = nested::HEARTBEAT,
        size = DISK_MIB + 1,
        ro = RO_MIB,
    )
}

/// What the two runs printed.
#[derive(Debug, Default)]
pub struct Parsed {
    write_rc: Option<i32>,
    verify_rc: Option<i32>,
    synced_sum: Option<String>,
    verified_sum: Option<String>,
    /// `(case, PASS or the FAIL reason)` of every `XPMEM-TEST` result line.
    results: Vec<(String, Result<(), String>)>,
    ro_image: Option<Result<(), String>>,
    notes: Vec<String>,
}

impl Parsed {
    pub fn feed(&mut self, line: &str) {
        if let Some(rest) = line.strip_prefix("XPMEM-CASE-END ") {
            let rc = word_after(rest, "rc=").and_then(|r| r.parse().ok());
            if rest.starts_with("write ") {
                self.write_rc = rc;
            } else if rest.starts_with("verify ") {
                self.verify_rc = rc;
            }
            return;
        }
        if let Some(rest) = line.strip_prefix("XPMEM-DISK RO-IMAGE ") {
            self.ro_image = Some(if rest.starts_with("unchanged") {
                Ok(())
            } else {
                Err(format!("the read-only image's SHA-256 changed: {rest}"))
            });
            return;
        }
        let Some((case, verdict, rest)) = test_line(line) else {
            return;
        };
        let rest = rest.to_string();
        match verdict {
            "PASS" => self.results.push((case.to_string(), Ok(()))),
            "FAIL" => self.results.push((case.to_string(), Err(rest))),
            "SYNCED" => {
                self.synced_sum = word_after(&rest, "sum ").map(str::to_string);
                self.notes.push(format!("{case}: SYNCED {rest}"));
            }
            "VERIFIED" => {
                self.verified_sum = word_after(&rest, "sum ").map(str::to_string);
                self.notes.push(format!("{case}: VERIFIED {rest}"));
            }
            "NOTE" => self.notes.push(format!("{case}: {rest}")),
            _ => {}
        }
    }

    fn case(&self, case: &str) -> Status {
        match self.results.iter().find(|(c, _)| c == case) {
            Some((_, Ok(()))) => Status::Pass,
            Some((_, Err(why))) => Status::Fail(why.clone()),
            None => Status::Fail(format!("the guest printed no result for {case}")),
        }
    }

    pub fn judge(&self) -> Vec<CaseResult> {
        let r = |case: &str, status: Status| CaseResult {
            name: format!("{G}/{case}"),
            status,
        };
        // The test host kills the monitor as soon as SYNCED is out, so the guest's PASS
        // line after it may be cut off: SYNCED without a FAIL is the guest's success.
        let write = match self.case("disk-write") {
            Status::Fail(_)
                if self.synced_sum.is_some()
                    && !self
                        .results
                        .iter()
                        .any(|(c, r)| c == "disk-write" && r.is_err()) =>
            {
                Status::Pass
            }
            other => other,
        };
        let mut out = vec![r("write/guest", write)];
        out.push(r(
            "write/killed-after-sync",
            match (&self.synced_sum, self.write_rc) {
                (None, _) => Status::Fail("the guest never reported its fsync done".into()),
                (Some(_), Some(137)) => Status::Pass,
                (Some(_), rc) => Status::Fail(format!(
                    "the monitor was to be killed by SIGKILL after the sync; it ended with {rc:?}"
                )),
            },
        ));
        out.push(r("verify/guest", self.case("disk-verify")));
        out.push(r(
            "durability/same-sum",
            match (&self.synced_sum, &self.verified_sum) {
                (Some(a), Some(b)) if a == b => Status::Pass,
                (a, b) => Status::Fail(format!(
                    "sum written and synced {a:?}, read back after SIGKILL {b:?}"
                )),
            },
        ));
        out.push(r("read-only/guest", self.case("disk-readonly")));
        out.push(r(
            "read-only/image-unchanged",
            match &self.ro_image {
                Some(Ok(())) => Status::Pass,
                Some(Err(why)) => Status::Fail(why.clone()),
                None => Status::Fail("the test host did not hash the read-only image".into()),
            },
        ));
        out.push(r(
            "verify/monitor-exit",
            match self.verify_rc {
                Some(0) => Status::Pass,
                rc => Status::Fail(format!("the verifying monitor ended with {rc:?}")),
            },
        ));
        out
    }
}

pub fn run(env: &Env, opts: nested::Options) -> Result<Vec<CaseResult>, Error> {
    if let Some(missing) = crate::cases::missing_xpmem_test(G) {
        return Ok(vec![missing]);
    }
    let (vmlinuz, initrd) = crate::cases::xpmem_image(env)?;
    let mut payload = Payload::new(payload_script());
    payload.file(&env.vmm, "xpmem-vmm");
    payload.file(&vmlinuz, "vmlinuz");
    payload.file(&initrd, "guest.cpio.gz");
    payload.data(
        "write.toml",
        vm_toml(
            "w",
            "disk-write.sh",
            r#"{ path = "data.img", serial = "data" }"#,
        ),
        0o644,
    );
    payload.data(
        "verify.toml",
        vm_toml(
            "v",
            "disk-verify.sh",
            r#"{ path = "data.img", serial = "data" }, { path = "ro.img", read_only = true, serial = "ro" }"#,
        ),
        0o644,
    );
    let mut parsed = Parsed::default();
    let stopped = crate::cases::run_on_test_host(env, opts, &payload, G, &["XPMEM-DISK"], |l| {
        parsed.feed(l)
    })?;
    for note in &parsed.notes {
        println!("[disk] {note}");
    }
    let mut results = parsed.judge();
    results.extend(stopped);
    Ok(results)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
mod tests {
    use super::*;

    fn lines(sum_back: &str, rc: i32) -> Vec<String> {
        vec![
            "XPMEM-CASE-END write rc=".to_string() + &rc.to_string(),
            "[vm-w] [ 9.1] XPMEM-TEST disk-write SYNCED 64 MiB sum 00ff in 3.0 s".into(),
            "[vm-w] [ 9.2] XPMEM-TEST disk-write PASS".into(),
            format!("[vm-v] [ 5.0] XPMEM-TEST disk-verify VERIFIED 64 MiB sum {sum_back} in 2.0 s"),
            "[vm-v] [ 5.1] XPMEM-TEST disk-verify PASS".into(),
            "[vm-v] [ 5.2] XPMEM-TEST disk-readonly NOTE the write failed with Operation not permitted".into(),
            "[vm-v] [ 5.3] XPMEM-TEST disk-readonly PASS".into(),
            "XPMEM-CASE-END verify rc=0".into(),
            "XPMEM-DISK RO-IMAGE unchanged abc".into(),
        ]
    }

    fn judge(lines: &[String]) -> Vec<(String, bool)> {
        let mut p = Parsed::default();
        for l in lines {
            p.feed(l);
        }
        p.judge()
            .into_iter()
            .map(|r| (r.name, r.status == Status::Pass))
            .collect()
    }

    #[test]
    fn a_full_run_passes() {
        let r = judge(&lines("00ff", 137));
        assert!(r.iter().all(|(_, ok)| *ok), "{r:?}");
        assert_eq!(r.len(), 7);
    }

    #[test]
    fn a_different_sum_or_a_monitor_not_killed_fails() {
        let r = judge(&lines("00fe", 137));
        assert!(
            r.contains(&("disk/durability/same-sum".into(), false)),
            "{r:?}"
        );
        let r = judge(&lines("00ff", 0));
        assert!(
            r.contains(&("disk/write/killed-after-sync".into(), false)),
            "{r:?}"
        );
    }

    #[test]
    fn a_pass_line_cut_off_by_the_kill_still_passes_but_a_fail_line_fails() {
        let mut l = lines("00ff", 137);
        l.retain(|x| !x.contains("disk-write PASS"));
        let r = judge(&l);
        assert!(r.contains(&("disk/write/guest".into(), true)), "{r:?}");
        l.push("[vm-w] [ 9.2] XPMEM-TEST disk-write FAIL short write".into());
        let r = judge(&l);
        assert!(r.contains(&("disk/write/guest".into(), false)), "{r:?}");
    }

    #[test]
    fn missing_lines_fail() {
        let r = judge(&[]);
        assert!(r.iter().all(|(_, ok)| !*ok), "{r:?}");
        let mut l = lines("00ff", 137);
        l.retain(|x| !x.contains("RO-IMAGE"));
        l.push("XPMEM-DISK RO-IMAGE changed a b".into());
        let r = judge(&l);
        assert!(
            r.contains(&("disk/read-only/image-unchanged".into(), false)),
            "{r:?}"
        );
    }
}

/// Figures of one `xpmem-test disk-bench` run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BenchFigures {
    pub seq_write_mibs: f64,
    pub seq_read_mibs: f64,
    pub rand_read_iops: f64,
}

impl BenchFigures {
    /// Parses the `RESULT seq_write_mibs=.. seq_read_mibs=.. rand_read_iops=..` line.
    pub fn parse(line: &str) -> Option<BenchFigures> {
        let rest = &line[line.find("XPMEM-TEST disk-bench RESULT ")?..];
        let num = |key: &str| -> Option<f64> { word_after(rest, key)?.parse().ok() };
        Some(BenchFigures {
            seq_write_mibs: num("seq_write_mibs=")?,
            seq_read_mibs: num("seq_read_mibs=")?,
            rand_read_iops: num("rand_read_iops=")?,
        })
    }
}

/// `xpmem-e2e bench-disk`: on the nested test host, `xpmem-test disk-bench`
/// against the image file, then in a guest against the same file as its
/// virtio-blk disk, in one run. Returns (host, guest).
pub fn bench(env: &Env, opts: nested::Options) -> Result<(BenchFigures, BenchFigures), String> {
    if let Some(CaseResult {
        status: Status::Fail(why),
        ..
    }) = crate::cases::missing_xpmem_test(G)
    {
        return Err(why);
    }
    let tool = crate::repo_root().join("guest-driver/tools/image/bin/xpmem-test");
    let (vmlinuz, initrd) = crate::cases::xpmem_image(env).map_err(|e| e.to_string())?;
    let script = format!(
        r#"{heartbeat}dd if=/dev/zero of=bench.img bs=1M count=0 seek={size} 2>/dev/null
echo "host: $(./xpmem-test disk-bench --dev bench.img --pages {mib} --rounds 2000 | grep RESULT)"
timeout -s KILL 600 ./xpmem-vmm --config bench.toml </dev/null 2>&1
kill $hb 2>/dev/null
"#,
        heartbeat = nested::HEARTBEAT,
        size = DISK_MIB + 1,
        mib = DISK_MIB,
    );
    let mut payload = Payload::new(script);
    payload.file(&env.vmm, "xpmem-vmm");
    payload.file(&tool, "xpmem-test");
    payload.file(&vmlinuz, "vmlinuz");
    payload.file(&initrd, "guest.cpio.gz");
    payload.data(
        "bench.toml",
        vm_toml(
            "bench",
            "disk-bench.sh",
            r#"{ path = "bench.img", serial = "bench" }"#,
        ),
        0o644,
    );
    let mut opts = opts;
    opts.silence_limit = Some(nested::SILENCE_LIMIT);
    let (mut host, mut guest) = (None, None);
    nested::run(&env.cache, &payload, &opts, |l| {
        if l.contains("disk-bench") || l.starts_with("xpmem-vmm:") {
            println!("[L1] {l}");
        }
        if let Some(f) = BenchFigures::parse(l) {
            if l.starts_with("host: ") {
                host = Some(f);
            } else {
                guest = Some(f);
            }
        }
    })
    .map_err(|e| e.to_string())?;
    match (host, guest) {
        (Some(h), Some(g)) => Ok((h, g)),
        (h, g) => Err(format!(
            "missing figures: host {h:?}, guest {g:?} (see the console above)"
        )),
    }
}

/// The table `bench-disk` prints: guest, host and guest/host per figure.
pub fn bench_table(host: &BenchFigures, guest: &BenchFigures) -> String {
    crate::bench::ratio_table(
        "virtio-blk, 64 MiB image",
        &[
            (
                "sequential write MiB/s",
                guest.seq_write_mibs,
                host.seq_write_mibs,
            ),
            (
                "sequential read MiB/s",
                guest.seq_read_mibs,
                host.seq_read_mibs,
            ),
            (
                "4 KiB random read IOPS",
                guest.rand_read_iops,
                host.rand_read_iops,
            ),
        ],
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
mod bench_tests {
    use super::*;

    #[test]
    fn result_lines_parse_and_the_table_has_ratios() {
        let line = "[vm-bench] [ 3.0] XPMEM-TEST disk-bench RESULT seq_write_mibs=20.5 \
                    seq_read_mibs=40.0 rand_read_iops=500 (O_DIRECT, 64 MiB, 2000 random reads)";
        let g = BenchFigures::parse(line).unwrap();
        assert_eq!(g.rand_read_iops, 500.0);
        let h = BenchFigures {
            seq_write_mibs: 41.0,
            seq_read_mibs: 80.0,
            rand_read_iops: 1000.0,
        };
        let t = bench_table(&h, &g);
        assert!(t.contains("0.500"), "{t}");
        assert!(BenchFigures::parse("XPMEM-TEST disk-bench PASS").is_none());
    }
}
