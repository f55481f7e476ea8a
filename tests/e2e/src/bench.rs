//! Benchmarks that put a guest figure beside the same figure measured on the
//! test host in the same run (`xpmem-e2e bench-disk`, `bench-net`), and the
//! table they print. Benchmarks, not tests: nothing here asserts a speed.
//!
//! `bench-net` (issue 10 item 7): VMs `a` and `b` on the monitor's switch;
//! `a` sends [`net_bytes`] over TCP to `b` (`xpmem-test net-send` /
//! `net-recv`, every word checked), then 1000 one-byte round trips to `b`'s
//! echo server (`net-rtt` / `vsock-echo` without `--cid`, TCP_NODELAY), then the
//! same bytes over guest-to-guest vsock. Then the same VMs once more with
//! `net = { offloads = false }`, so the table shows what the checksum and
//! segmentation offloads bring. Before the VMs boot, the test host runs the
//! same programs between two of its own processes over loopback. Guest
//! scripts: `scenario/bench-net-{a,b}.sh`.

use crate::cases::{word_after, CaseResult, Env, Status};
use crate::nested;

/// One row of a [`ratio_table`]: name, guest figure, host figure.
pub type Row<'a> = (&'a str, f64, f64);

/// A table of guest and host figures and guest/host per row.
pub fn ratio_table(title: &str, rows: &[Row<'_>]) -> String {
    let mut t = format!(
        "{title:<28} {:>12} {:>12} {:>10}\n",
        "guest", "host", "guest/host"
    );
    for &(name, g, h) in rows {
        t += &format!(
            "{name:<28} {g:>12.1} {h:>12.1} {:>10.3}\n",
            if h > 0.0 { g / h } else { 0.0 }
        );
    }
    t
}

/// MiB of the `bench-net` transfer unless `XPMEM_BENCH_NET_MIB` says
/// otherwise: the nested test host moves about 1 MiB/s between two guests.
pub const NET_MIB: u64 = 16;

/// Bytes of the `bench-net` transfer.
pub fn net_bytes() -> u64 {
    crate::cases::env_mib("XPMEM_BENCH_NET_MIB", NET_MIB)
}

/// The figures of one side (guest pair or test host).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct NetFigures {
    /// TCP throughput, MiB/s (as `net-send` measures it: until the receiver
    /// has read and checked everything).
    pub tcp_mibs: Option<f64>,
    /// Guest-to-guest vsock throughput, MiB/s (guests only; the test host's
    /// reference for it is its TCP loopback).
    pub vsock_mibs: Option<f64>,
    /// Round-trip time of one byte, microseconds.
    pub rtt_mean_us: Option<f64>,
    pub rtt_p50_us: Option<f64>,
    pub rtt_p99_us: Option<f64>,
    /// The guests' TCP throughput and mean round trip with the offloads off
    /// (guests only).
    pub tcp_mibs_no_offloads: Option<f64>,
    pub rtt_mean_us_no_offloads: Option<f64>,
}

impl NetFigures {
    /// Takes what `line` reports (`net-send SENT ... (X MiB/s)`, `net-rtt
    /// RESULT ...`); false if it reports nothing.
    pub fn feed(&mut self, line: &str) -> bool {
        let num = |key: &str| word_after(line, key).and_then(|v| v.parse().ok());
        if line.contains("XPMEM-TEST net-send SENT ") {
            let mibs = line
                .rsplit_once('(')
                .and_then(|(_, r)| r.split_whitespace().next())
                .and_then(|v| v.parse().ok());
            // The guest sends over TCP first, then over vsock.
            if self.tcp_mibs.is_none() {
                self.tcp_mibs = mibs;
            } else {
                self.vsock_mibs = mibs;
            }
            true
        } else if line.contains("XPMEM-TEST net-rtt RESULT ") {
            self.rtt_mean_us = num("mean_us=");
            self.rtt_p50_us = num("p50_us=");
            self.rtt_p99_us = num("p99_us=");
            true
        } else {
            false
        }
    }

    fn complete(&self) -> bool {
        self.tcp_mibs.is_some() && self.rtt_mean_us.is_some()
    }
}

fn net_config(bytes: u64, offloads: bool) -> String {
    ["a", "b"]
        .iter()
        .map(|vm| {
            let cmdline = format!(
                "xpmem.name={vm} xpmem.run=bench-net-{vm}.sh xpmem.out=kmsg xpmem.netbytes={bytes}"
            );
            format!(
                "[[vm]]\nname = \"{vm}\"\nvcpus = 1\nmemory = 512\nkernel = \"vmlinuz\"\n\
                 initrd = \"guest.cpio.gz\"\ncmdline = {}\nnet = {{ offloads = {offloads} }}\n",
                toml::Value::String(cmdline)
            )
        })
        .collect()
}

/// What the L1 script prints between the run with offloads and the one without.
const NO_OFFLOADS_MARK: &str = "bench: offloads off";

fn net_script(bytes: u64) -> String {
    format!(
        r#"{heartbeat}ip link set lo up
./xpmem-test net-recv --port 5101 --bytes {bytes} --timeout 60 >recv.log 2>&1 &
receiver=$!
echo "host: $(./xpmem-test net-send --host 127.0.0.1 --port 5101 --bytes {bytes} --timeout 60 | grep SENT)"
wait $receiver
./xpmem-test vsock-echo --port 5102 --timeout 60 >/dev/null 2>&1 &
echo=$!
echo "host: $(./xpmem-test net-rtt --host 127.0.0.1 --port 5102 --rounds 1000 --timeout 60 | grep RESULT)"
wait $echo
timeout -s KILL 600 ./xpmem-vmm --config bench.toml </dev/null 2>&1
echo "{NO_OFFLOADS_MARK}"
timeout -s KILL 600 ./xpmem-vmm --config bench-no-offloads.toml </dev/null 2>&1
kill $hb 2>/dev/null
"#,
        heartbeat = nested::HEARTBEAT,
    )
}

/// `xpmem-e2e bench-net`: returns (host, guest) figures.
pub fn net(env: &Env, opts: nested::Options) -> Result<(NetFigures, NetFigures), String> {
    if let Some(CaseResult {
        status: Status::Fail(why),
        ..
    }) = crate::cases::missing_xpmem_test("bench-net")
    {
        return Err(why);
    }
    let bytes = net_bytes();
    let tool = crate::repo_root().join("guest-driver/tools/image/bin/xpmem-test");
    let mut payload =
        crate::cases::guest_payload(env, net_script(bytes)).map_err(|e| e.to_string())?;
    payload.file(&tool, "xpmem-test");
    payload.data("bench.toml", net_config(bytes, true), 0o644);
    payload.data("bench-no-offloads.toml", net_config(bytes, false), 0o644);
    let mut opts = opts;
    opts.silence_limit = Some(nested::SILENCE_LIMIT);
    let (mut host, mut guest) = (NetFigures::default(), NetFigures::default());
    let (mut plain, mut after_mark) = (NetFigures::default(), false);
    let mut failures = Vec::new();
    nested::run(&env.cache, &payload, &opts, |l| {
        after_mark |= l.contains(NO_OFFLOADS_MARK);
        let side = if l.starts_with("host: ") {
            &mut host
        } else if after_mark {
            &mut plain
        } else {
            &mut guest
        };
        if side.feed(l) || l.contains(" FAIL ") || l.starts_with("xpmem-vmm:") {
            println!("[L1] {l}");
        }
        if l.contains("XPMEM-TEST ") && l.contains(" FAIL ") {
            failures.push(l.to_string());
        }
    })
    .map_err(|e| e.to_string())?;
    guest.tcp_mibs_no_offloads = plain.tcp_mibs;
    guest.rtt_mean_us_no_offloads = plain.rtt_mean_us;
    if host.complete() && guest.complete() && plain.complete() && failures.is_empty() {
        Ok((host, guest))
    } else {
        Err(format!(
            "missing figures: host {host:?}, guest {guest:?}; failures: {failures:?} (see the console above)"
        ))
    }
}

/// The table `bench-net` prints.
pub fn net_table(host: &NetFigures, guest: &NetFigures) -> String {
    let f = |v: Option<f64>| v.unwrap_or(0.0);
    let title = format!("TCP a->b, {} MiB", net_bytes() >> 20);
    ratio_table(
        &title,
        &[
            ("throughput MiB/s", f(guest.tcp_mibs), f(host.tcp_mibs)),
            (
                "  same, offloads off",
                f(guest.tcp_mibs_no_offloads),
                f(host.tcp_mibs),
            ),
            (
                "vsock a->b MiB/s (host: TCP)",
                f(guest.vsock_mibs),
                f(host.tcp_mibs),
            ),
            (
                "1-byte round trip, mean us",
                f(guest.rtt_mean_us),
                f(host.rtt_mean_us),
            ),
            (
                "1-byte round trip, p50 us",
                f(guest.rtt_p50_us),
                f(host.rtt_p50_us),
            ),
            (
                "1-byte round trip, p99 us",
                f(guest.rtt_p99_us),
                f(host.rtt_p99_us),
            ),
            (
                "  mean us, offloads off",
                f(guest.rtt_mean_us_no_offloads),
                f(host.rtt_mean_us),
            ),
        ],
    ) + &format!(
        "offloads on/off, guest TCP throughput: {:.2}\n",
        f(guest.tcp_mibs) / guest.tcp_mibs_no_offloads.unwrap_or(f64::NAN)
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
mod tests {
    use super::*;

    #[test]
    fn net_lines_parse_into_figures_and_a_table_with_ratios() {
        let mut g = NetFigures::default();
        assert!(g.feed(
            "[vm-a] [ 9.0] XPMEM-TEST net-send SENT 16777216 bytes sum 00ff in 20.0 s (0.8 MiB/s)"
        ));
        assert!(g.feed("[vm-a] [ 9.5] XPMEM-TEST net-rtt RESULT rounds=1000 mean_us=900.0 p50_us=800.0 p99_us=2000.0"));
        assert!(g.feed(
            "[vm-a] [ 9.9] XPMEM-TEST net-send SENT 16777216 bytes sum 00ff in 4.0 s (4.0 MiB/s)"
        ));
        assert_eq!((g.tcp_mibs, g.vsock_mibs), (Some(0.8), Some(4.0)));
        assert!(!g.feed("[vm-a] XPMEM-TEST net-rtt PASS"));
        assert!(g.complete());
        let mut h = NetFigures::default();
        h.feed("host: XPMEM-TEST net-send SENT 16777216 bytes sum 00ff in 0.1 s (160.0 MiB/s)");
        assert!(!h.complete());
        h.feed("host: XPMEM-TEST net-rtt RESULT rounds=1000 mean_us=30.0 p50_us=20.0 p99_us=100.0");
        assert_eq!(h.tcp_mibs, Some(160.0));
        let t = net_table(&h, &g);
        assert!(t.contains("0.005"), "{t}");
        assert!(t.contains("30.000"), "{t}");
    }

    #[test]
    fn the_config_runs_both_scripts_with_the_size() {
        let c: toml::Table = net_config(1 << 20, false).parse().unwrap();
        let vms = c["vm"].as_array().unwrap();
        assert_eq!(vms.len(), 2);
        assert!(vms[1]["cmdline"]
            .as_str()
            .unwrap()
            .contains("xpmem.run=bench-net-b.sh xpmem.out=kmsg xpmem.netbytes=1048576"));
        assert_eq!(vms[0]["net"]["offloads"].as_bool(), Some(false));
        assert!(net_script(1 << 20).contains("--bytes 1048576"));
        assert!(net_script(1 << 20).contains("--config bench-no-offloads.toml"));
    }
}
