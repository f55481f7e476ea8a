//! The `vsock` group (issue 10 items 4 and 6): two VMs `a` (CID 3) and `b`
//! (CID 4) with virtio-vsock devices whose Unix sockets (`a.vsock`,
//! `b.vsock`, Firecracker's convention) are in the payload directory on the
//! test host, where the host side of each case runs (`xpmem-e2e
//! vsock-host`, [`crate::vsock_host`]).
//!
//! * `host-echo/*`: the test host connects to `a.vsock`, writes
//!   `CONNECT 5000`, streams [`ci_bytes`] of the pattern to `a`'s
//!   `xpmem-test vsock-echo` and checks every echoed word; the sums of what
//!   went out and what came back agree.
//! * `guest-to-host/*`: `a` connects to the host (CID 2) port 6000, which
//!   the monitor connects to the test host's listener at `a.vsock_6000`;
//!   `a`'s `net-send` and the host's checker print the same sum.
//! * `guest-to-guest/*`: `a` sends the pattern to CID 4 port 7000, routed by
//!   the monitor; `b`'s `net-recv` checks every word; same sums.
//! * `agent/*` (issue 10 item 5): `b` runs nothing but its guest agent
//!   (`xpmem.run=agent`); the test host starts `b`'s receiver for the
//!   guest-to-guest transfer through it (`xpmem-vmm exec`), then checks that
//!   a command's stdout and stderr arrive apart and its exit code comes back
//!   (3), that `--timeout 2` kills `sleep 60` (124, in seconds, not a
//!   minute), that 4 MiB of output arrive whole, and that `--exit 0` ends
//!   `b` with status 0, while `a`'s agent, which runs beside `a`'s script,
//!   refuses `--exit`; `a` tries `b`'s agent over guest-to-guest vsock and
//!   must be refused (`xpmem-test agent-refused`).
//! * `monitor/holds-nothing`: when the VMs end (each closed its sockets),
//!   each device's at-exit line and the router's show nothing held
//!   (connections, buffered bytes, owed replies, open streams,
//!   guest-to-guest state of VMs that ended with it open) and no credit
//!   violation.
//!
//! Size: `XPMEM_VSOCK_MIB` MiB per transfer, default [`VSOCK_MIB`] (64, as
//! the issue asks; its doc has the rates measured on the nested host).
//! Script: `guest-driver/tools/image/scenario/vsock-a.sh` (b runs only its agent).

use std::collections::HashMap;

use crate::cases::{test_line, transfer, word_after, CaseResult, Env, Error, GroupOutput, Status};
use crate::nested;

const G: &str = "vsock";

/// Size of each transfer in MiB unless `XPMEM_VSOCK_MIB` says otherwise:
/// the issue's 64 MiB. On the nested host (2026-12-06, two runs) the echo
/// took 48.7 / 27.4 s (1.3-2.3 MiB/s each way; host to guest goes in the
/// guest's 4 KiB receive buffers), a to the host 15.0 / 11.0 s (4.3-5.8
/// MiB/s), a to b 15.5 / 12.2 s (4.1-5.3 MiB/s, against 0.8 MiB/s over TCP
/// between guests); the group 141 / 87 s in all.
pub const VSOCK_MIB: u64 = 64;

/// Bytes of each transfer: `XPMEM_VSOCK_MIB` MiB, default [`VSOCK_MIB`].
pub fn ci_bytes() -> u64 {
    crate::cases::env_mib("XPMEM_VSOCK_MIB", VSOCK_MIB)
}

fn config_toml(bytes: u64) -> String {
    [("a", 3, "vsock-a.sh"), ("b", 4, "agent")]
        .iter()
        .map(|(vm, cid, run)| {
            let cmdline =
                format!("xpmem.name={vm} xpmem.run={run} xpmem.out=kmsg xpmem.vsockbytes={bytes}");
            format!(
                "[[vm]]\nname = \"{vm}\"\nvcpus = 1\nmemory = 512\nkernel = \"vmlinuz\"\n\
                 initrd = \"guest.cpio.gz\"\ncmdline = {}\nnet = false\n\
                 vsock = {{ cid = {cid}, socket = \"{vm}.vsock\" }}\n",
                toml::Value::String(cmdline)
            )
        })
        .collect()
}

fn payload_script(bytes: u64) -> String {
    format!(
        r#"{heartbeat}echo "XPMEM-CASE-BEGIN vsock"
timeout -s KILL 2400 ./xpmem-vmm --config vsock.toml </dev/null 2>&1 &
vmm=$!
# a's agent runs beside a's script: it must refuse to end a.
./xpmem-vmm exec --socket a.vsock --wait 600 --exit 0 >/dev/null 2>aexit.err &
aexit=$!
# b runs only its agent: its receiver starts through it (retrying while b boots).
./xpmem-vmm exec --socket b.vsock --wait 600 -- xpmem-test net-recv --cid 1 --port 7000 --bytes {bytes} --timeout 1800 2>&1 &
brecv=$!
./xpmem-e2e vsock-host recv --socket a.vsock --port 6000 --bytes {bytes} --timeout 1800 2>&1 &
rcv=$!
./xpmem-e2e vsock-host echo --socket a.vsock --port 5000 --bytes {bytes} --timeout 900 2>&1
wait $rcv
wait $brecv
echo "XPMEM-AGENT recv rc=$?"
wait $aexit
echo "XPMEM-AGENT exit-refused rc=$? err=$(tr '\n' ' ' <aexit.err)"
out=$(./xpmem-vmm exec --socket b.vsock -- 'echo out-$((6 * 7)); echo err >&2; exit 3' 2>agent.err)
echo "XPMEM-AGENT streams rc=$? out=$out err=$(cat agent.err)"
t0=$(cut -d' ' -f1 /proc/uptime)
./xpmem-vmm exec --socket b.vsock --timeout 2 -- sleep 60 >/dev/null 2>&1
rc=$?
echo "XPMEM-AGENT timeout rc=$rc from=$t0 to=$(cut -d' ' -f1 /proc/uptime)"
n=$(./xpmem-vmm exec --socket b.vsock -- head -c 4194304 /dev/zero | wc -c)
echo "XPMEM-AGENT bulk rc=0 bytes=$n"
./xpmem-vmm exec --socket b.vsock --exit 0
echo "XPMEM-AGENT exit rc=$?"
wait $vmm
echo "XPMEM-CASE-END vsock rc=$?"
kill $hb 2>/dev/null
"#,
        heartbeat = nested::HEARTBEAT,
    )
}

/// `key=value` pairs of an at-exit line `held k=v ..; total k=v ..`,
/// numbers only; the totals' keys get the prefix `total_`.
fn counters(text: &str) -> HashMap<String, u64> {
    let (held, total) = text.split_once("; total ").unwrap_or((text, ""));
    let pairs = |t: &str, prefix: &'static str| {
        t.split_whitespace()
            .filter_map(|w| {
                let (k, v) = w.split_once('=')?;
                Some((format!("{prefix}{k}"), v.parse().ok()?))
            })
            .collect::<Vec<_>>()
    };
    pairs(held, "")
        .into_iter()
        .chain(pairs(total, "total_"))
        .collect()
}

/// What the run printed.
#[derive(Debug, Default)]
pub struct Parsed {
    /// `(check, PASS or the FAIL reason)` of every `XPMEM-TEST` result line, in order.
    results: Vec<(String, Result<(), String>)>,
    /// (bytes, sum) of the guests' `SENT` lines, in order (host, then b).
    sent: Vec<(u64, String)>,
    /// (bytes, sum) of b's `RECEIVED` and of the host's.
    b_received: Option<(u64, String)>,
    host_received: Option<(u64, String)>,
    /// (bytes, sum out, sum back) of the host's echo.
    echo: Option<(u64, String, String)>,
    /// At-exit lines: per VM and the router's.
    devices: HashMap<String, HashMap<String, u64>>,
    router: Option<HashMap<String, u64>>,
    /// `XPMEM-AGENT <case> rc=N ...` lines of the test host: case -> rest.
    agent: HashMap<String, String>,
    /// b's `XPMEM-GUEST RESULT` exit code (its agent's).
    b_result: Option<i32>,
    monitor_rc: Option<i32>,
    pub notes: Vec<String>,
}

impl GroupOutput for Parsed {
    fn notes(&self) -> &[String] {
        &self.notes
    }

    fn feed(&mut self, line: &str) {
        if let Some(rc) = crate::cases::case_end(line, G) {
            self.monitor_rc = rc;
            return;
        }
        if let Some(rest) = line.strip_prefix("xpmem-vmm: VM ") {
            if let Some((vm, text)) = rest.split_once(": vsock cid ") {
                if let Some((_, c)) = text.split_once(" at exit: ") {
                    self.devices.insert(vm.to_string(), counters(c));
                    self.notes.push(format!("VM {vm} vsock at exit: {c}"));
                }
            }
            return;
        }
        if let Some(rest) = line.strip_prefix("XPMEM-AGENT ") {
            let (case, rest) = rest.split_once(' ').unwrap_or((rest, ""));
            self.agent.insert(case.to_string(), rest.to_string());
            self.notes.push(format!("agent {case}: {rest}"));
            return;
        }
        if let Some(rest) = line.split("XPMEM-GUEST RESULT b ").nth(1) {
            self.b_result = word_after(rest, "rc=").and_then(|v| v.parse().ok());
            return;
        }
        if let Some(rest) = line.strip_prefix("xpmem-vmm: vsock router at exit: ") {
            self.router = Some(counters(rest));
            self.notes.push(format!("router at exit: {rest}"));
            return;
        }
        let Some((check, verdict, rest)) = test_line(line) else {
            return;
        };
        let rest = rest.to_string();
        match verdict {
            "PASS" => self.results.push((check.to_string(), Ok(()))),
            "FAIL" => self.results.push((check.to_string(), Err(rest))),
            "SENT" => {
                self.sent.push(transfer(&rest));
                self.notes.push(format!("{check}: SENT {rest}"));
            }
            "RECEIVED" => {
                let r = Some(transfer(&rest));
                if check == "vsock-host-recv" {
                    self.host_received = r;
                } else {
                    self.b_received = r;
                }
                self.notes.push(format!("{check}: RECEIVED {rest}"));
            }
            "ECHO" => {
                let back = word_after(&rest, "echoed ").unwrap_or("").to_string();
                let (n, sum) = transfer(&rest);
                self.echo = Some((n, sum, back));
                self.notes.push(format!("{check}: ECHO {rest}"));
            }
            "ECHOED" => self.notes.push(format!("{check}: ECHOED {rest}")),
            _ => {}
        }
    }
}

impl Parsed {
    /// The `agent/*` cases (see the module documentation).
    fn agent_checks(&self) -> Vec<CaseResult> {
        let r = |case: &str, status: Status| CaseResult {
            name: format!("{G}/agent/{case}"),
            status,
        };
        let line = |case: &str| self.agent.get(case).map(String::as_str).unwrap_or("");
        let rc = |case: &str| word_after(line(case), "rc=").and_then(|v| v.parse::<i32>().ok());
        let check = |case: &str, ok: bool, want: &str| {
            if ok {
                Status::Pass
            } else {
                Status::Fail(format!(
                    "want {want}; the test host printed '{}'",
                    line(case)
                ))
            }
        };
        let num =
            |case: &str, key: &str| word_after(line(case), key).and_then(|v| v.parse::<f64>().ok());
        let timeout_secs = num("timeout", "to=")
            .zip(num("timeout", "from="))
            .map(|(t, f)| t - f);
        vec![
            r(
                "command-through-agent",
                check(
                    "recv",
                    rc("recv") == Some(0),
                    "exec of b's net-recv ending with 0",
                ),
            ),
            r(
                "stdout-stderr-exit-code",
                check(
                    "streams",
                    rc("streams") == Some(3) && line("streams").contains("out=out-42 err=err"),
                    "exit code 3, stdout out-42 and stderr err apart",
                ),
            ),
            r(
                "timeout-kills",
                check(
                    "timeout",
                    rc("timeout") == Some(124) && timeout_secs.is_some_and(|s| s < 30.0),
                    "exit code 124 well before the command's 60 s",
                ),
            ),
            r(
                "bulk-output",
                check(
                    "bulk",
                    line("bulk").contains("bytes=4194304"),
                    "all 4194304 bytes",
                ),
            ),
            r(
                "exit-ends-the-vm",
                check(
                    "exit",
                    rc("exit") == Some(0) && self.b_result == Some(0),
                    "--exit 0 answered, and b's init reporting rc=0",
                ),
            ),
            r("refuses-guests", self.guest("agent-refused", 0)),
            r(
                "no-exit-beside-a-command",
                check(
                    "exit-refused",
                    rc("exit-refused") == Some(255)
                        && line("exit-refused").contains("does not exit"),
                    "a's agent refusing --exit (exec exits 255 saying it does not exit)",
                ),
            ),
        ]
    }

    /// The `nth` result of `check` (0-based).
    fn guest(&self, check: &str, nth: usize) -> Status {
        match self.results.iter().filter(|(c, _)| c == check).nth(nth) {
            None => Status::Fail(format!("no result for {check} (number {})", nth + 1)),
            Some((_, Err(why))) => Status::Fail(why.clone()),
            Some((_, Ok(()))) => Status::Pass,
        }
    }

    pub fn judge(&self, bytes: u64) -> Vec<CaseResult> {
        let r = |case: &str, status: Status| CaseResult {
            name: format!("{G}/{case}"),
            status,
        };
        let same = |a: Option<&(u64, String)>, b: Option<&(u64, String)>| match (a, b) {
            (Some((n, x)), Some((m, y)))
                if *n == bytes && *m == bytes && x == y && !x.is_empty() =>
            {
                Status::Pass
            }
            (a, b) => Status::Fail(format!(
                "want {bytes} bytes with one sum both sides; sent {a:?}, received {b:?}"
            )),
        };
        let mut out = vec![
            r("host-echo/guest", self.guest("vsock-echo", 0)),
            r("host-echo/host", self.guest("vsock-host-echo", 0)),
            r(
                "host-echo/same-sum",
                match &self.echo {
                    Some((n, a, b)) if *n == bytes && a == b && !a.is_empty() => Status::Pass,
                    e => Status::Fail(format!(
                        "want {bytes} bytes echoed with the sum sent; got {e:?}"
                    )),
                },
            ),
            r("guest-to-host/sent", self.guest("net-send", 0)),
            r("guest-to-host/host", self.guest("vsock-host-recv", 0)),
            r(
                "guest-to-host/same-sum",
                same(self.sent.first(), self.host_received.as_ref()),
            ),
            r("guest-to-guest/sent", self.guest("net-send", 1)),
            r("guest-to-guest/received", self.guest("net-recv", 0)),
            r(
                "guest-to-guest/same-sum",
                same(self.sent.get(1), self.b_received.as_ref()),
            ),
        ];
        out.extend(self.agent_checks());
        let held = [
            "conns",
            "to_host_bytes",
            "to_guest_bytes",
            "replies",
            "streams",
        ];
        let mut problems = Vec::new();
        for vm in ["a", "b"] {
            match self.devices.get(vm) {
                None => problems.push(format!("no vsock at-exit line for VM {vm}")),
                Some(c) => {
                    for k in held.iter().chain(&["total_credit_violations"]) {
                        match c.get(*k) {
                            Some(0) => {}
                            v => problems.push(format!("VM {vm}: {k}={v:?}")),
                        }
                    }
                }
            }
        }
        match &self.router {
            None => problems.push("no router at-exit line".into()),
            Some(c) => {
                for k in [
                    "conns",
                    "packets",
                    "bytes",
                    "total_left_conns",
                    "total_left_packets",
                    "total_credit_violations",
                ] {
                    match c.get(k) {
                        Some(0) => {}
                        v => problems.push(format!("router: {k}={v:?}")),
                    }
                }
            }
        }
        out.push(r(
            "monitor/holds-nothing",
            if problems.is_empty() {
                Status::Pass
            } else {
                Status::Fail(problems.join("; "))
            },
        ));
        let known = [
            "vsock-echo",
            "vsock-host-echo",
            "net-send",
            "vsock-host-recv",
            "net-recv",
        ];
        let known: Vec<String> = known.iter().map(|k| k.to_string()).collect();
        out.extend(crate::cases::other_failures(G, &self.results, &known));
        out.push(crate::cases::monitor_exit(G, self.monitor_rc));
        out
    }
}

pub fn run(env: &Env, opts: nested::Options) -> Result<Vec<CaseResult>, Error> {
    if let Some(missing) = crate::cases::missing_xpmem_test(G) {
        return Ok(vec![missing]);
    }
    let bytes = ci_bytes();
    // The host side runs on the test host: the xpmem-e2e next to the
    // monitor (the static build), else this one.
    let beside = env.vmm.with_file_name("xpmem-e2e");
    let me = match (beside.is_file(), std::env::current_exe()) {
        (true, _) => beside,
        (false, Ok(me)) => me,
        (false, Err(e)) => {
            return Ok(vec![CaseResult {
                name: format!("{G}/setup"),
                status: Status::Fail(format!("cannot find xpmem-e2e for the test host: {e}")),
            }])
        }
    };
    let mut payload = crate::cases::guest_payload(env, payload_script(bytes))?;
    payload.file(&me, "xpmem-e2e");
    payload.data("vsock.toml", config_toml(bytes), 0o644);
    let mut parsed = Parsed::default();
    let stopped = crate::cases::run_fed(env, opts, &payload, G, &mut parsed)?;
    let mut results = parsed.judge(bytes);
    results.extend(stopped);
    Ok(results)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
mod tests {
    use super::*;

    const GOOD: &str = "\
[vm-a] [ 20.1] XPMEM-TEST vsock-echo LISTENING port 5000
XPMEM-TEST vsock-host-echo ECHO 1024 bytes sum 00000000000000aa echoed 00000000000000aa in 1.0 s (1.00 MiB/s each way)
XPMEM-TEST vsock-host-echo PASS
[vm-a] [ 21.0] XPMEM-TEST vsock-echo ECHOED 1024 bytes in 1.0 s (1.0 MiB/s)
[vm-a] [ 21.0] XPMEM-TEST vsock-echo PASS
[vm-a] [ 22.0] XPMEM-TEST net-send SENT 1024 bytes sum 00000000000000bb in 1.0 s (1.0 MiB/s)
[vm-a] [ 22.0] XPMEM-TEST net-send PASS
XPMEM-TEST vsock-host-recv RECEIVED 1024 bytes sum 00000000000000bb in 1.0 s (1.00 MiB/s)
XPMEM-TEST vsock-host-recv PASS
[vm-a] [ 22.5] XPMEM-TEST agent-refused NOTE refused: only the host (CID 2) may use this agent
[vm-a] [ 22.5] XPMEM-TEST agent-refused PASS
XPMEM-TEST net-recv RECEIVED 1024 bytes sum 00000000000000bb in 1.0 s
XPMEM-TEST net-recv PASS
[vm-a] [ 23.0] XPMEM-TEST net-send SENT 1024 bytes sum 00000000000000bb in 1.0 s (1.0 MiB/s)
[vm-a] [ 23.0] XPMEM-TEST net-send PASS
XPMEM-AGENT recv rc=0
XPMEM-AGENT streams rc=3 out=out-42 err=err
XPMEM-AGENT timeout rc=124 from=100.5 to=103.0
XPMEM-AGENT bulk rc=0 bytes=4194304
XPMEM-AGENT exit rc=0
XPMEM-AGENT exit-refused rc=255 err=xpmem-vmm exec: the agent refused the request: this agent runs beside the VM's command (not xpmem.run=agent): it does not exit 
[vm-b] [ 30.0] XPMEM-GUEST RESULT b rc=0
xpmem-vmm: VM a: vsock cid 3 at exit: held conns=0 to_host_bytes=0 to_guest_bytes=0 replies=0 streams=0; total tx_packets=9 credit_violations=0 protocol_errors=0
xpmem-vmm: VM b: vsock cid 4 at exit: held conns=0 to_host_bytes=0 to_guest_bytes=0 replies=0 streams=0; total tx_packets=9 credit_violations=0 protocol_errors=0
xpmem-vmm: vsock router at exit: held conns=0 packets=0 bytes=0; total forwarded=5 bytes=1024 refused=0 credit_violations=0 control_dropped=0 left_conns=0 left_packets=0
XPMEM-CASE-END vsock rc=0
";

    fn judge(text: &str) -> Vec<CaseResult> {
        let mut p = Parsed::default();
        for l in text.lines() {
            p.feed(l);
        }
        p.judge(1024)
    }

    #[test]
    fn a_clean_run_passes_every_case() {
        let res = judge(GOOD);
        assert_eq!(res.len(), 18, "{res:?}");
        for c in &res {
            assert_eq!(c.status, Status::Pass, "{c:?}");
        }
    }

    #[test]
    fn agent_cases_fail_on_wrong_streams_codes_a_slow_timeout_or_no_exit() {
        let failed = |text: String, case: &str| {
            judge(&text)
                .iter()
                .any(|c| c.name == format!("vsock/agent/{case}") && c.status != Status::Pass)
        };
        assert!(failed(
            GOOD.replace("out=out-42 err=err", "out=out-42err err="),
            "stdout-stderr-exit-code"
        ));
        assert!(failed(
            GOOD.replace("streams rc=3", "streams rc=0"),
            "stdout-stderr-exit-code"
        ));
        assert!(failed(
            GOOD.replace("to=103.0", "to=161.0"),
            "timeout-kills"
        ));
        assert!(failed(
            GOOD.replace("timeout rc=124", "timeout rc=0"),
            "timeout-kills"
        ));
        assert!(failed(
            GOOD.replace("bytes=4194304", "bytes=65536"),
            "bulk-output"
        ));
        assert!(failed(
            GOOD.replace("exit-refused rc=255", "exit-refused rc=0"),
            "no-exit-beside-a-command"
        ));
        assert!(failed(
            GOOD.replace("RESULT b rc=0", "RESULT b rc=1"),
            "exit-ends-the-vm"
        ));
        assert!(failed(
            GOOD.replace("agent-refused PASS", "agent-refused FAIL ran"),
            "refuses-guests"
        ));
    }

    #[test]
    fn wrong_sums_held_state_and_missing_lines_fail() {
        let res = judge(&GOOD.replace("echoed 00000000000000aa", "echoed 00000000000000ab"));
        assert!(res
            .iter()
            .any(|c| c.name == "vsock/host-echo/same-sum" && c.status != Status::Pass));
        let res = judge(&GOOD.replace(
            "RECEIVED 1024 bytes sum 00000000000000bb in 1.0 s\n",
            "RECEIVED 1024 bytes sum 00000000000000cc in 1.0 s\n",
        ));
        assert!(res
            .iter()
            .any(|c| c.name == "vsock/guest-to-guest/same-sum" && c.status != Status::Pass));
        let res = judge(&GOOD.replace("left_conns=0", "left_conns=1"));
        let held = res
            .iter()
            .find(|c| c.name == "vsock/monitor/holds-nothing")
            .unwrap();
        assert!(matches!(&held.status, Status::Fail(w) if w.contains("left_conns")));
        let res = judge(&GOOD.replace("xpmem-vmm: VM b: vsock", "xpmem-vmm: VM b: other"));
        let held = res
            .iter()
            .find(|c| c.name == "vsock/monitor/holds-nothing")
            .unwrap();
        assert!(matches!(&held.status, Status::Fail(w) if w.contains("VM b")));
        let res = judge(&GOOD.replace(
            "XPMEM-TEST net-recv PASS",
            "XPMEM-TEST net-recv FAIL byte 8 reads 0",
        ));
        assert!(res
            .iter()
            .any(|c| c.name == "vsock/guest-to-guest/received" && c.status != Status::Pass));
    }
}
