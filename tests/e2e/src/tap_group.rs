//! The `tap` group (issue 10 items 2b and 6): one VM `t` whose virtio-net
//! device is on a TAP interface (`net = { tap = ... }`) instead of the switch.
//! Everything happens inside a network namespace the test host's payload
//! creates and removes, so no traffic leaves it:
//!
//! 1. setup: `unshare --net=/run/netns/NS` (what `ip netns add` does; L1
//!    has busybox, not iproute2), a persistent TAP in it (`tunctl`), MAC
//!    [`HOST_MAC`], address [`HOST_IP`]/16, up; the monitor runs in the
//!    namespace (`nsenter --net=...`, like `ip netns exec`).
//! * `addr/t`, `ping4/t-host`, `ping6/t-host`: the guest holds its addresses
//!   and pings the host side over IPv4 and IPv6 link-local (3 of 3).
//! * `transfer/*`: the guest sends [`TAP_BYTES`] of random data over TCP to
//!   busybox `nc` on the host side; the SHA-256 both print must agree.
//! * `ping4/host-t`: the host side pings the guest (3 of 3).
//! * `oversize/*`: with the TAP's MTU raised to 9000 the host side sends
//!   pings of 4000 bytes: none comes back, and the device's at-exit
//!   counters show at least that many frames dropped as too long.
//! * `cleanup/*`: after the monitor has ended (also when anything failed: a
//!   shell `trap`), the TAP is deleted and the namespace removed; the
//!   payload checks the TAP is gone from the namespace before it goes, the
//!   namespace's file is gone, and no process is left in any network
//!   namespace but the ones there were before.
//!
//! Script of the guest: `guest-driver/tools/image/scenario/tap-t.sh`.

use std::collections::HashMap;

use crate::cases::{case_end, monitor_exit, other_failures, test_line, transfer};
use crate::cases::{CaseResult, Env, Error, Status};
use crate::nested::{self, Payload};
use crate::net_group::{counters, link_local_ipv6};

const G: &str = "tap";
/// The namespace and the TAP interface the payload creates.
pub const NETNS: &str = "xpmem-tap";
pub const TAP: &str = "xtap0";
/// The host side of the TAP and the guest (link-local only).
pub const HOST_IP: &str = "169.254.100.1";
pub const GUEST_IP: &str = "169.254.100.2";
pub const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x64, 0x01];
pub const GUEST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x64, 0x02];
/// Bytes the guest sends to the host side.
pub const TAP_BYTES: u64 = 4 << 20;
/// Pings over the guest's MTU that the host side sends.
pub const OVERSIZE_PINGS: u64 = 3;

fn mac_text(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

fn config_toml() -> String {
    let cmdline = format!(
        "xpmem.name=t xpmem.run=tap-t.sh xpmem.out=kmsg xpmem.peers6=t@{},host@{} \
         xpmem.hostip={HOST_IP} xpmem.netbytes={TAP_BYTES}",
        link_local_ipv6(GUEST_MAC),
        link_local_ipv6(HOST_MAC),
    );
    format!(
        "[[vm]]\nname = \"t\"\nvcpus = 1\nmemory = 512\nkernel = \"vmlinuz\"\n\
         initrd = \"guest.cpio.gz\"\ncmdline = {}\n\
         net = {{ tap = \"{TAP}\", mac = \"{}\", ip = \"{GUEST_IP}\" }}\n",
        toml::Value::String(cmdline),
        mac_text(GUEST_MAC),
    )
}

/// The payload: busybox applets only (`./busybox`, shipped with it, so the
/// same script runs on a direct host).
fn payload_script() -> String {
    format!(
        r#"{heartbeat}bb=./busybox
NSF=/run/netns/{NETNS}
TAP={TAP}
t() {{ echo "XPMEM-TEST $*"; }}
inns() {{ $bb nsenter --net=$NSF "$@"; }}
netns_in_use() {{ for p in /proc/[0-9]*; do readlink $p/ns/net; done 2>/dev/null | sort -u; }}
netns_in_use >/tmp/netns-before
cleanup() {{
	[ -n "$host" ] && kill $host 2>/dev/null
	if [ -e $NSF ]; then
		# What still runs in the test's namespace (a host-side nc when
		# something failed) goes first.
		ns=$(inns readlink /proc/self/ns/net)
		for p in /proc/[0-9]*; do
			[ "$(readlink $p/ns/net 2>/dev/null)" = "$ns" ] && kill -9 ${{p#/proc/}} 2>/dev/null
		done
		sleep 1
		inns $bb tunctl -d $TAP >/dev/null
		if inns cat /proc/net/dev | grep -q "$TAP:"; then
			t cleanup/tap-removed FAIL "$TAP is still in namespace {NETNS}"
		else
			t cleanup/tap-removed PASS "$TAP deleted from namespace {NETNS}"
		fi
		$bb umount $NSF
		rm -f $NSF
	fi
	if [ -e $NSF ] || grep -q " $NSF " /proc/mounts; then
		t cleanup/netns-removed FAIL "$NSF is still there"
	elif netns_in_use >/tmp/netns-after && ! cmp -s /tmp/netns-after /tmp/netns-before; then
		t cleanup/netns-removed FAIL "a process is left in another network namespace: $(netns_in_use | tr '\n' ' ')"
	else
		t cleanup/netns-removed PASS "$NSF removed, no process in a namespace of the test"
	fi
	kill $hb 2>/dev/null
}}
trap cleanup EXIT
mkdir -p /run/netns && touch $NSF &&
	$bb unshare --net=$NSF true &&
	inns $bb ip link set lo up &&
	inns $bb tunctl -t $TAP >/dev/null &&
	inns $bb ip link set $TAP address {host_mac} &&
	inns $bb ip addr add {HOST_IP}/16 dev $TAP &&
	inns $bb ip link set $TAP up ||
	{{ t setup FAIL "cannot create namespace {NETNS} with $TAP"; exit 1; }}
t setup PASS "namespace {NETNS}, $TAP {host_mac} {HOST_IP}/16"
# The host side: receive the guest's data, ping it (normal, then over its
# MTU), then tell it DONE.
rm -f /tmp/hold && mkfifo /tmp/hold
(
	inns $bb timeout 300 $bb nc -l -p 5001 <>/tmp/hold >/tmp/recv
	t tap-host RECEIVED "$(wc -c </tmp/recv) bytes sum $($bb sha256sum </tmp/recv | cut -d' ' -f1)"
	out=$(inns $bb ping -c 3 -W 5 {GUEST_IP} 2>&1 | grep transmitted)
	case "$out" in
	*"3 packets received"*) t ping4/host-t PASS "$out" ;;
	*) t ping4/host-t FAIL "${{out:-no answer}}" ;;
	esac
	inns $bb ip link set $TAP mtu 9000
	out=$(inns $bb ping -c {OVERSIZE_PINGS} -W 2 -s 4000 {GUEST_IP} 2>&1 | grep transmitted)
	t oversize/host-t SENT "$out"
	inns $bb ip link set $TAP mtu 1500
	i=0
	until echo DONE | inns $bb nc -w 5 {GUEST_IP} 5002 || [ $i -ge 30 ]; do
		sleep 1
		i=$((i + 1))
	done
) &
host=$!
echo "XPMEM-CASE-BEGIN tap"
inns $bb timeout -s KILL 600 ./xpmem-vmm --config tap.toml </dev/null 2>&1
echo "XPMEM-CASE-END tap rc=$?"
# The guest waited for the host side's DONE: what still runs there now is
# left over from a failure, and cleanup ends it.
"#,
        heartbeat = nested::HEARTBEAT,
        host_mac = mac_text(HOST_MAC),
    )
}

/// What the run printed.
#[derive(Debug, Default)]
pub struct Parsed {
    /// `(check, PASS or the FAIL reason)` of every `XPMEM-TEST` result line.
    results: Vec<(String, Result<(), String>)>,
    /// (bytes, sum) the guest sent and the host side received.
    sent: Option<(u64, String)>,
    received: Option<(u64, String)>,
    /// The host side's over-MTU ping summary.
    oversize: Option<String>,
    /// The VM's virtio-net counters at the monitor's exit.
    device: Option<HashMap<String, u64>>,
    monitor_rc: Option<i32>,
    pub notes: Vec<String>,
}

impl Parsed {
    pub fn feed(&mut self, line: &str) {
        if let Some(rc) = case_end(line, G) {
            self.monitor_rc = rc;
            return;
        }
        if let Some(rest) = line.strip_prefix("xpmem-vmm: VM t: virtio-net ") {
            self.device = Some(counters(rest));
            self.notes.push(format!("device counters: {rest}"));
            return;
        }
        let Some((check, verdict, rest)) = test_line(line) else {
            return;
        };
        let rest = rest.to_string();
        match verdict {
            "PASS" => {
                self.results.push((check.to_string(), Ok(())));
                self.notes.push(format!("{check}: PASS {rest}"));
            }
            "FAIL" => self.results.push((check.to_string(), Err(rest))),
            "SENT" if check == "tap-send" => {
                self.sent = Some(transfer(&rest));
                self.notes.push(format!("guest SENT {rest}"));
            }
            "RECEIVED" => {
                self.received = Some(transfer(&rest));
                self.notes.push(format!("host side RECEIVED {rest}"));
            }
            "SENT" => {
                self.oversize = Some(rest.clone());
                self.notes.push(format!("{check}: {rest}"));
            }
            _ => {}
        }
    }

    fn check(&self, check: &str) -> Status {
        if let Some((_, Err(why))) = self.results.iter().find(|(c, r)| c == check && r.is_err()) {
            return Status::Fail(why.clone());
        }
        if self.results.iter().any(|(c, _)| c == check) {
            Status::Pass
        } else {
            Status::Fail(format!("no result for {check}"))
        }
    }

    pub fn judge(&self) -> Vec<CaseResult> {
        let r = |case: &str, status: Status| CaseResult {
            name: format!("{G}/{case}"),
            status,
        };
        let mut out = Vec::new();
        let mut expected = Vec::new();
        for (case, check) in [
            ("setup", "setup"),
            ("addr/t", "addr/t"),
            ("ping4/t-host", "ping4/t-host"),
            ("ping6/t-host", "ping6/t-host"),
            ("transfer/sent", "tap-send"),
            ("ping4/host-t", "ping4/host-t"),
            ("done", "tap-done"),
            ("cleanup/tap-removed", "cleanup/tap-removed"),
            ("cleanup/netns-removed", "cleanup/netns-removed"),
        ] {
            expected.push(check.to_string());
            out.push(r(case, self.check(check)));
        }
        out.push(r(
            "transfer/same-sum",
            match (&self.sent, &self.received) {
                (Some((n, a)), Some((m, b)))
                    if *n == TAP_BYTES && *m == TAP_BYTES && a == b && a.len() == 64 =>
                {
                    Status::Pass
                }
                (s, d) => Status::Fail(format!(
                    "want {TAP_BYTES} bytes with one SHA-256 both sides; guest sent {s:?}, host side received {d:?}"
                )),
            },
        ));
        out.push(r(
            "oversize/not-delivered",
            match &self.oversize {
                Some(s) if s.contains(&format!("{OVERSIZE_PINGS} packets transmitted, 0 packets received")) => {
                    Status::Pass
                }
                other => Status::Fail(format!(
                    "want {OVERSIZE_PINGS} pings of 4000 bytes sent and none answered; got {other:?}"
                )),
            },
        ));
        out.push(r(
            "oversize/dropped-and-counted",
            match self.device.as_ref().map(|d| d.get("rx_dropped_malformed").copied()) {
                Some(Some(n)) if n >= OVERSIZE_PINGS => Status::Pass,
                Some(n) => Status::Fail(format!(
                    "the device counted {n:?} frames over its MTU from the TAP, want at least {OVERSIZE_PINGS}"
                )),
                None => Status::Fail("the monitor printed no virtio-net counters for VM t".into()),
            },
        ));
        out.extend(other_failures(G, &self.results, &expected));
        out.push(monitor_exit(G, self.monitor_rc));
        out
    }
}

pub fn run(env: &Env, opts: nested::Options) -> Result<Vec<CaseResult>, Error> {
    let (vmlinuz, initrd) = crate::cases::xpmem_image(env)?;
    let busybox = env.cache.busybox()?;
    let mut payload = Payload::new(payload_script());
    payload.modules.push("tun".into());
    payload.file(&env.vmm, "xpmem-vmm");
    payload.file(&busybox, "busybox");
    payload.file(&vmlinuz, "vmlinuz");
    payload.file(&initrd, "guest.cpio.gz");
    payload.data("tap.toml", config_toml(), 0o644);
    let mut parsed = Parsed::default();
    let stopped = crate::cases::run_on_test_host(env, opts, &payload, G, &[], |l| parsed.feed(l))?;
    for note in &parsed.notes {
        println!("[tap] {note}");
    }
    let mut results = parsed.judge();
    results.extend(stopped);
    Ok(results)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
mod tests {
    use super::*;

    const SUM: &str = "d0995d5198e3bc1f7bfe932e750523e16e0b3d16e73fc4b846b78fa34360a52f";

    fn lines() -> Vec<String> {
        [
            "XPMEM-TEST setup PASS namespace xpmem-tap, xtap0 02:00:00:00:64:01 169.254.100.1/16".to_string(),
            "[vm-t] [ 9.0] XPMEM-TEST addr/t PASS 169.254.100.2/16 fe80::ff:fe00:6402/64".into(),
            "[vm-t] [ 9.1] XPMEM-TEST ping4/t-host PASS 169.254.100.1: 3 packets transmitted, 3 packets received, 0% packet loss".into(),
            "[vm-t] [ 9.2] XPMEM-TEST ping6/t-host PASS fe80::ff:fe00:6401: 3 packets transmitted, 3 packets received, 0% packet loss".into(),
            format!("[vm-t] [ 9.3] XPMEM-TEST tap-send SENT 4194304 bytes sum {SUM}"),
            "[vm-t] [12.0] XPMEM-TEST tap-send PASS to 169.254.100.1 port 5001".into(),
            format!("XPMEM-TEST tap-host RECEIVED 4194304 bytes sum {SUM}"),
            "XPMEM-TEST ping4/host-t PASS 3 packets transmitted, 3 packets received, 0% packet loss".into(),
            "XPMEM-TEST oversize/host-t SENT 3 packets transmitted, 0 packets received, 100% packet loss".into(),
            "[vm-t] [19.0] XPMEM-TEST tap-done PASS".into(),
            "xpmem-vmm: VM t: virtio-net 02:00:00:00:64:02: tx_frames=3000 rx_frames=1500 rx_dropped_malformed=3".into(),
            "XPMEM-CASE-END tap rc=0".into(),
            "XPMEM-TEST cleanup/tap-removed PASS xtap0 deleted".into(),
            "XPMEM-TEST cleanup/netns-removed PASS /run/netns/xpmem-tap removed".into(),
        ]
        .to_vec()
    }

    fn failed(lines: &[String]) -> Vec<String> {
        let mut p = Parsed::default();
        for l in lines {
            p.feed(l);
        }
        p.judge()
            .into_iter()
            .filter(|r| r.status != Status::Pass)
            .map(|r| r.name)
            .collect()
    }

    fn replaced(from: &str, to: &str) -> Vec<String> {
        lines().into_iter().map(|l| l.replace(from, to)).collect()
    }

    #[test]
    fn a_full_run_passes() {
        assert!(failed(&lines()).is_empty(), "{:?}", failed(&lines()));
    }

    #[test]
    fn each_missing_or_wrong_result_fails_its_case() {
        assert_eq!(
            failed(&replaced(
                "RECEIVED 4194304 bytes sum d0",
                "RECEIVED 4194304 bytes sum e0"
            )),
            ["tap/transfer/same-sum"]
        );
        assert_eq!(
            failed(&replaced("RECEIVED 4194304", "RECEIVED 4194000")),
            ["tap/transfer/same-sum"]
        );
        assert_eq!(
            failed(&replaced(
                "3 packets transmitted, 0 packets received",
                "3 packets transmitted, 1 packets received"
            )),
            ["tap/oversize/not-delivered"]
        );
        assert_eq!(
            failed(&replaced(
                "rx_dropped_malformed=3",
                "rx_dropped_malformed=2"
            )),
            ["tap/oversize/dropped-and-counted"]
        );
        assert_eq!(
            failed(&replaced("netns-removed PASS", "netns-removed FAIL")),
            ["tap/cleanup/netns-removed"]
        );
        let mut l = lines();
        l.retain(|x| !x.contains("tap-removed"));
        assert_eq!(failed(&l), ["tap/cleanup/tap-removed"]);
        assert_eq!(
            failed(&replaced("tap rc=0", "tap rc=1")),
            ["tap/monitor-exit"]
        );
        let mut l = lines();
        l.push("[vm-t] [9.5] XPMEM-TEST hosts/t FAIL /etc/hosts: ;".into());
        assert_eq!(failed(&l), ["tap/guest/hosts/t"]);
        assert!(failed(&[]).len() >= 12);
    }

    #[test]
    fn the_config_puts_the_vm_on_the_tap_with_link_local_addresses_only() {
        let text = config_toml();
        assert!(
            text.contains(
                "net = { tap = \"xtap0\", mac = \"02:00:00:00:64:02\", ip = \"169.254.100.2\" }"
            ),
            "{text}"
        );
        assert!(text.contains("host@fe80::ff:fe00:6401"), "{text}");
        let script = payload_script();
        for a in [HOST_IP, GUEST_IP] {
            assert!(a.starts_with("169.254."));
        }
        assert!(script.contains("trap cleanup EXIT"));
    }
}
