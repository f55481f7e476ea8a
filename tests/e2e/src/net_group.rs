//! The `net` group (issue 10 items 3 and 6): three VMs `a`, `b` and `c` on the
//! monitor's switch, with the addresses the monitor gives them (no network
//! configuration in the test): `xpmem.ip=` from each VM's index and the
//! IPv6 link-local address the guest kernel derives from the MAC the monitor
//! derives from the name, names in `/etc/hosts` from `xpmem.hosts=`.
//!
//! * `addr/<vm>`: eth0 holds both addresses (IPv6 past DAD).
//! * `ping4/<x>-<y>`, `ping6/<x>-<y>`: every ordered pair, by name over IPv4
//!   and by link-local address over IPv6, 3 of 3 echoes.
//! * `transfer/*`: `a` sends [`ci_bytes`] of a pattern to `b` over TCP
//!   (`xpmem-test net-send` / `net-recv`, every word checked in `b`); the
//!   sums both sides print agree.
//! * `flood/*`: during the transfer `c` floods the switch (UDP broadcasts,
//!   frames with a group source address, runts of a bare header) until `a`
//!   says stop; the transfer still completes with the same sum, and the
//!   switch's at-exit counters for `c`'s port show every bad-source frame
//!   dropped.
//! * `xpmem-tcp/*`: `a` exports a segment and sends its segid to `b` over TCP
//!   (busybox `nc`, not the console relay); `b` attaches it and both check
//!   the data (the `export`/`attach` pair of `xpmem-test`).
//!
//! Scripts: `guest-driver/tools/image/scenario/net-{lib,a,b,c}.sh`.

use std::collections::HashMap;

use crate::cases::{test_line, transfer, word_after, CaseResult, Env, Error, GroupOutput, Status};
use crate::nested;

const G: &str = "net";
const VMS: &[&str] = &["a", "b", "c"];

/// Size of the CI transfer in MiB unless `XPMEM_NET_MIB` says otherwise.
/// The nested host moves about 0.8 MiB/s between two guests (256 MiB took
/// 327 s under a mild flood, 2026-12-06), but only 0.1 MiB/s under c's heaviest
/// floods (32 MiB took 237 s with one process per VM, the fair receive queue
/// keeping the stream alive), so CI sends 16 MiB; the issue's 256 MiB is
/// `scripts/net-stress.sh`.
pub const NET_MIB: u64 = 16;
/// Longest flood (c stops earlier when a's transfer is done).
pub const FLOOD_SECS: u64 = 300;

/// Bytes of the a -> b transfer: `XPMEM_NET_MIB` MiB, default [`NET_MIB`].
pub fn ci_bytes() -> u64 {
    crate::cases::env_mib("XPMEM_NET_MIB", NET_MIB)
}

/// The IPv6 link-local address Linux gives an Ethernet interface with this
/// MAC (modified EUI-64, RFC 4291 appendix A), as `ip` prints it.
pub fn link_local_ipv6(mac: [u8; 6]) -> String {
    let groups = [
        u16::from_be_bytes([mac[0] ^ 0x02, mac[1]]),
        u16::from_be_bytes([mac[2], 0xff]),
        u16::from_be_bytes([0xfe, mac[3]]),
        u16::from_be_bytes([mac[4], mac[5]]),
    ];
    let addr = std::net::Ipv6Addr::new(0xfe80, 0, 0, 0, groups[0], groups[1], groups[2], groups[3]);
    addr.to_string()
}

/// `a@fe80::..,b@..,c@..` for `xpmem.peers6=`: the default MACs.
fn peers6() -> String {
    VMS.iter()
        .map(|vm| {
            let mac = virtio_net_device::mac_from_name(vm);
            format!("{vm}@{}", link_local_ipv6(mac.0))
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn config_toml(bytes: u64) -> String {
    let peers = peers6();
    VMS.iter()
        .map(|vm| {
            let cmdline = format!(
                "xpmem.name={vm} xpmem.run=net-{vm}.sh xpmem.out=kmsg xpmem.peers6={peers} \
                 xpmem.netbytes={bytes} xpmem.floodsecs={FLOOD_SECS}"
            );
            format!(
                "[[vm]]\nname = \"{vm}\"\nvcpus = 1\nmemory = 512\nkernel = \"vmlinuz\"\n\
                 initrd = \"guest.cpio.gz\"\ncmdline = {}\n",
                toml::Value::String(cmdline)
            )
        })
        .collect()
}

fn payload_script() -> String {
    format!(
        r#"{heartbeat}echo "XPMEM-CASE-BEGIN net"
timeout -s KILL 1200 ./xpmem-vmm --config net.toml </dev/null 2>&1
echo "XPMEM-CASE-END net rc=$?"
kill $hb 2>/dev/null
"#,
        heartbeat = nested::HEARTBEAT,
    )
}

/// `key=value` pairs of a counters line, numbers only.
pub(crate) fn counters(text: &str) -> HashMap<String, u64> {
    text.split_whitespace()
        .filter_map(|w| {
            let (k, v) = w.split_once('=')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// What the run printed.
#[derive(Debug, Default)]
pub struct Parsed {
    /// `(check, PASS or the FAIL reason)` of every `XPMEM-TEST` result line.
    results: Vec<(String, Result<(), String>)>,
    /// (bytes, sum) of `SENT` and `RECEIVED`.
    sent: Option<(u64, String)>,
    received: Option<(u64, String)>,
    /// `FLOODED` counters of c.
    flooded: Option<HashMap<String, u64>>,
    /// The segid a's exporter printed, and the one b got over TCP.
    exported_segid: Option<String>,
    received_segid: Option<String>,
    /// The switch's at-exit counters per VM.
    switch: HashMap<String, HashMap<String, u64>>,
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
        if let Some(rest) = line.strip_prefix("xpmem-vmm: switch (VM ") {
            if let Some((vm, counters_text)) = rest.split_once("): ") {
                self.switch.insert(vm.to_string(), counters(counters_text));
                self.notes.push(format!("switch, VM {vm}: {counters_text}"));
            }
            return;
        }
        let Some((check, verdict, rest)) = test_line(line) else {
            return;
        };
        let rest = rest.to_string();
        match verdict {
            "PASS" => {
                self.results.push((check.to_string(), Ok(())));
                match check {
                    "xpmem-tcp/segid-sent" => {
                        self.exported_segid = word_after(&rest, "segid ").map(str::to_string)
                    }
                    "xpmem-tcp/segid-received" => {
                        self.received_segid = word_after(&rest, "segid ").map(str::to_string)
                    }
                    _ => {}
                }
            }
            "FAIL" => self.results.push((check.to_string(), Err(rest))),
            "SENT" => {
                self.sent = Some(transfer(&rest));
                self.notes.push(format!("{check}: SENT {rest}"));
            }
            "RECEIVED" => {
                self.received = Some(transfer(&rest));
                self.notes.push(format!("{check}: RECEIVED {rest}"));
            }
            "FLOODED" => {
                self.flooded = Some(counters(&rest));
                self.notes.push(format!("{check}: FLOODED {rest}"));
            }
            _ => {}
        }
    }
}

impl Parsed {
    fn guest(&self, check: &str) -> Status {
        let mut found = self.results.iter().filter(|(c, _)| c == check);
        match found.next() {
            None => Status::Fail(format!("the guest printed no result for {check}")),
            Some((_, Err(why))) => Status::Fail(why.clone()),
            Some((_, Ok(()))) => {
                match self.results.iter().find(|(c, r)| c == check && r.is_err()) {
                    Some((_, Err(why))) => Status::Fail(why.clone()),
                    _ => Status::Pass,
                }
            }
        }
    }

    pub fn judge(&self, bytes: u64) -> Vec<CaseResult> {
        let r = |case: &str, status: Status| CaseResult {
            name: format!("{G}/{case}"),
            status,
        };
        let mut out = Vec::new();
        let mut expected: Vec<String> = Vec::new();
        let mut guest = |out: &mut Vec<CaseResult>, case: &str, check: &str| {
            expected.push(check.to_string());
            out.push(r(case, self.guest(check)));
        };
        for vm in VMS {
            guest(&mut out, &format!("addr/{vm}"), &format!("addr/{vm}"));
        }
        for x in VMS {
            for y in VMS.iter().filter(|y| *y != x) {
                for family in ["ping4", "ping6"] {
                    let check = format!("{family}/{x}-{y}");
                    guest(&mut out, &check, &check);
                }
            }
        }
        guest(&mut out, "transfer/sent", "net-send");
        guest(&mut out, "transfer/received", "net-recv");
        out.push(r(
            "transfer/same-sum",
            match (&self.sent, &self.received) {
                (Some((n, a)), Some((m, b))) if *n == bytes && *m == bytes && a == b => {
                    Status::Pass
                }
                (s, d) => Status::Fail(format!(
                    "want {bytes} bytes with one sum both sides; sent {s:?}, received {d:?}"
                )),
            },
        ));
        guest(&mut out, "flood/ran", "net-flood");
        out.push(r(
            "flood/bad-source-dropped",
            match (&self.flooded, self.switch.get("c")) {
                (None, _) => Status::Fail("c printed no FLOODED line".into()),
                (_, None) => Status::Fail("the monitor printed no switch counters for c".into()),
                (Some(f), Some(sw)) => {
                    let sent = f.get("bad_source").copied().unwrap_or(0);
                    let dropped = sw.get("drop_bad_source").copied().unwrap_or(0);
                    if sent > 0 && dropped == sent {
                        Status::Pass
                    } else {
                        Status::Fail(format!(
                            "c sent {sent} frames with a group source address; the switch dropped {dropped} as bad-source"
                        ))
                    }
                }
            },
        ));
        out.push(r(
            "flood/counters-per-vm",
            match VMS.iter().find(|vm| !self.switch.contains_key(**vm)) {
                None => Status::Pass,
                Some(vm) => Status::Fail(format!(
                    "no switch counters for VM {vm} in the monitor's at-exit report"
                )),
            },
        ));
        guest(&mut out, "xpmem-tcp/segid-sent", "xpmem-tcp/segid-sent");
        guest(
            &mut out,
            "xpmem-tcp/segid-received",
            "xpmem-tcp/segid-received",
        );
        out.push(r(
            "xpmem-tcp/same-segid",
            match (&self.exported_segid, &self.received_segid) {
                (Some(a), Some(b)) if a == b => Status::Pass,
                (a, b) => Status::Fail(format!("a sent segid {a:?}, b received {b:?}")),
            },
        ));
        guest(&mut out, "xpmem-tcp/export", "export");
        guest(&mut out, "xpmem-tcp/attach", "attach");
        // A failure line of a check not listed above fails too.
        out.extend(crate::cases::other_failures(G, &self.results, &expected));
        out.push(crate::cases::monitor_exit(G, self.monitor_rc));
        out
    }
}

pub fn run(env: &Env, opts: nested::Options) -> Result<Vec<CaseResult>, Error> {
    if let Some(missing) = crate::cases::missing_xpmem_test(G) {
        return Ok(vec![missing]);
    }
    let bytes = ci_bytes();
    let mut payload = crate::cases::guest_payload(env, payload_script())?;
    payload.data("net.toml", config_toml(bytes), 0o644);
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

    const BYTES: u64 = 1 << 20;

    fn lines() -> Vec<String> {
        let mut l = Vec::new();
        for x in VMS {
            l.push(format!(
                "[vm-{x}] [ 9.0] XPMEM-TEST addr/{x} PASS 169.254.1.1/16 fe80::1/64"
            ));
            for y in VMS.iter().filter(|y| *y != x) {
                for f in ["ping4", "ping6"] {
                    l.push(format!("[vm-{x}] [ 9.1] XPMEM-TEST {f}/{x}-{y} PASS {y}: 3 packets transmitted, 3 packets received, 0% packet loss"));
                }
            }
        }
        l.extend(
            [
                "[vm-c] [20.0] XPMEM-TEST net-flood FLOODING for 300 s",
                "[vm-b] [20.1] XPMEM-TEST net-recv LISTENING port 5001",
                "[vm-a] [30.0] XPMEM-TEST net-send SENT 1048576 bytes sum 00ff in 9.0 s (0.1 MiB/s)",
                "[vm-a] [30.1] XPMEM-TEST net-send PASS",
                "[vm-b] [30.0] XPMEM-TEST net-recv RECEIVED 1048576 bytes sum 00ff in 9.0 s",
                "[vm-b] [30.1] XPMEM-TEST net-recv PASS",
                "[vm-c] [31.0] XPMEM-TEST net-flood FLOODED udp=1600 bad_source=100 runt=100 errors=0 in 11.0 s",
                "[vm-c] [31.1] XPMEM-TEST net-flood PASS",
                "[vm-a] [32.0] XPMEM-TEST export SEGID 77 TO b",
                "[vm-a] [32.1] XPMEM-TEST xpmem-tcp/segid-sent PASS segid 77 to b",
                "[vm-b] [32.2] XPMEM-TEST xpmem-tcp/segid-received PASS segid 77 from a",
                "[vm-b] [33.0] XPMEM-TEST attach PASS",
                "[vm-a] [33.1] XPMEM-TEST export PASS",
                "xpmem-vmm: switch (VM a): port 1 (closed): rx_frames=10 drop_bad_source=0 drop_queue_full=5",
                "xpmem-vmm: switch (VM b): port 2 (closed): rx_frames=10 drop_bad_source=0",
                "xpmem-vmm: switch (VM c): port 3 (closed): rx_frames=1800 drop_bad_source=100",
                "XPMEM-CASE-END net rc=0",
            ]
            .map(String::from),
        );
        l
    }

    fn judge(lines: &[String]) -> Vec<(String, bool)> {
        let mut p = Parsed::default();
        for l in lines {
            p.feed(l);
        }
        p.judge(BYTES)
            .into_iter()
            .map(|r| (r.name, r.status == Status::Pass))
            .collect()
    }

    fn failed(r: &[(String, bool)]) -> Vec<&str> {
        r.iter()
            .filter(|(_, ok)| !ok)
            .map(|(n, _)| n.as_str())
            .collect()
    }

    fn without(pattern: &str) -> Vec<String> {
        let mut l = lines();
        l.retain(|x| !x.contains(pattern));
        l
    }

    fn replaced(from: &str, to: &str) -> Vec<String> {
        lines().into_iter().map(|x| x.replace(from, to)).collect()
    }

    #[test]
    fn a_full_run_passes_with_one_line_per_check() {
        let r = judge(&lines());
        assert!(failed(&r).is_empty(), "{r:?}");
        // 3 addr + 12 pings + 3 transfer + 3 flood + 5 xpmem-tcp + monitor.
        assert_eq!(r.len(), 27, "{r:?}");
    }

    #[test]
    fn a_missing_or_failed_ping_fails_that_pair_only() {
        let r = judge(&without("ping6/b-c"));
        assert_eq!(failed(&r), ["net/ping6/b-c"]);
        let r = judge(&replaced(
            "ping4/c-a PASS a: 3 packets transmitted, 3 packets received",
            "ping4/c-a FAIL a: 3 packets transmitted, 2 packets received",
        ));
        assert_eq!(failed(&r), ["net/ping4/c-a"]);
    }

    #[test]
    fn a_different_sum_or_size_fails_the_transfer() {
        let r = judge(&replaced(
            "RECEIVED 1048576 bytes sum 00ff",
            "RECEIVED 1048576 bytes sum 00fe",
        ));
        assert_eq!(failed(&r), ["net/transfer/same-sum"]);
        // Both sides agree, but on less than was asked for.
        let r = judge(&replaced("1048576 bytes", "1048568 bytes"));
        assert_eq!(failed(&r), ["net/transfer/same-sum"]);
        let r = judge(&without("net-recv RECEIVED"));
        assert!(failed(&r).contains(&"net/transfer/same-sum"), "{r:?}");
    }

    #[test]
    fn the_switch_must_drop_every_bad_source_frame_and_report_every_vm() {
        let r = judge(&replaced(
            "rx_frames=1800 drop_bad_source=100",
            "rx_frames=1800 drop_bad_source=99",
        ));
        assert_eq!(failed(&r), ["net/flood/bad-source-dropped"]);
        let r = judge(&replaced("bad_source=100 runt", "bad_source=0 runt"));
        assert!(
            failed(&r).contains(&"net/flood/bad-source-dropped"),
            "{r:?}"
        );
        let r = judge(&without("switch (VM b)"));
        assert_eq!(failed(&r), ["net/flood/counters-per-vm"]);
    }

    #[test]
    fn segids_must_match_and_unknown_failures_and_a_bad_exit_fail() {
        let r = judge(&replaced("segid 77 from a", "segid 78 from a"));
        assert_eq!(failed(&r), ["net/xpmem-tcp/same-segid"]);
        let mut l = lines();
        l.push("[vm-a] [9.5] XPMEM-TEST hosts/a FAIL /etc/hosts: 127.0.0.1 localhost;".into());
        let r = judge(&l);
        assert_eq!(failed(&r), ["net/guest/hosts/a"]);
        let r = judge(&replaced("net rc=0", "net rc=137"));
        assert_eq!(failed(&r), ["net/monitor-exit"]);
        let r = judge(&[]);
        assert!(r.iter().all(|(_, ok)| !ok), "{r:?}");
        // A check that printed PASS and later FAIL fails.
        let mut l = lines();
        l.push("[vm-b] [40.0] XPMEM-TEST attach FAIL importer data wrong".into());
        assert_eq!(failed(&judge(&l)), ["net/xpmem-tcp/attach"]);
    }

    #[test]
    fn ipv6_link_local_is_the_modified_eui64_of_the_mac() {
        assert_eq!(
            link_local_ipv6([0x02, 0x00, 0x00, 0x00, 0x00, 0x0a]),
            "fe80::ff:fe00:a"
        );
        assert_eq!(
            link_local_ipv6([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]),
            "fe80::5054:ff:fe12:3456"
        );
        let p = peers6();
        assert_eq!(p.matches('@').count(), 3, "{p}");
        assert!(p.starts_with("a@fe80::"), "{p}");
    }
}
