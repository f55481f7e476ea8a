//! The end-to-end test groups. Each group boots the test host once and runs
//! several cases in it; every case yields one [`CaseResult`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::debian::Cache;
use crate::image::{self, Spec};
use crate::nested::{self, KvmLoad, Options, Payload};
use crate::scenario::{self, Echo, VmSetup};

/// Errors that stop a whole group before its cases run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Debian(#[from] crate::debian::Error),
    #[error(transparent)]
    Image(#[from] image::Error),
    #[error(transparent)]
    Scenario(#[from] scenario::Error),
    #[error(transparent)]
    Nested(#[from] nested::Error),
}

/// How a case ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// It passed.
    Pass,
    /// It failed, with the reason.
    Fail(String),
    /// It could not run here, with the reason.
    Skip(String),
}

/// One case's result.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// `group/case`.
    pub name: String,
    /// Outcome.
    pub status: Status,
}

impl CaseResult {
    pub fn new(group: &str, case: &str, status: Status) -> Self {
        Self {
            name: format!("{group}/{case}"),
            status,
        }
    }

    fn check(group: &str, case: &str, ok: bool, why: impl FnOnce() -> String) -> Self {
        Self::new(
            group,
            case,
            if ok {
                Status::Pass
            } else {
                Status::Fail(why())
            },
        )
    }
}

/// What the groups need.
#[derive(Debug, Clone)]
pub struct Env {
    /// Download/unpack cache.
    pub cache: Cache,
    /// The statically linked monitor binary.
    pub vmm: PathBuf,
    /// Host options (mode, L1 size, timeout).
    pub opts: Options,
    /// Console echo level.
    pub echo: Echo,
}

/// The names of all groups, in the order `test` runs them.
/// `xpmem` joined after passing three runs in a row on the nested host
/// (2026-11-25); it needs `make -C guest-driver` first.
/// `disk` (issue 9) boots guests with virtio-blk disks, `rootdisk` boots two
/// VMs from the Debian root image (built by `scripts/build-root-image.sh`).
/// `net` (issue 10) runs three VMs on the monitor's switch: addresses without
/// configuration, pings, a TCP transfer under a flood, a segid over TCP.
/// `tap` (issue 10) runs one VM on a TAP interface in a network namespace
/// the test creates and removes.
/// `vsock` (issue 10) runs two VMs with virtio-vsock: host echo, guest to
/// host, guest to guest, nothing held by the monitor at exit.
/// `kill` (issue 12) kills VM processes at five points under a broker with
/// seven VMs, then kills a broker (under 3 minutes on the nested host;
/// `scripts/kill-points.sh` runs it alone).
/// `scale` (issue 12) runs 8 VMs of 256 MiB in a ring of named exports and
/// attaches (145 s alone on the nested host; `scripts/scale.sh`); it is back
/// in the default run since the groups run in two lanes.
pub const GROUPS: &[&str] = &[
    "errors", "boot", "xpmem", "disk", "rootdisk", "net", "tap", "vsock", "kill", "scale",
];

/// Groups run only when named (none at present).
pub const EXTRA_GROUPS: &[&str] = &[];

/// Runs a group by name; an error that prevents the group from running at all
/// becomes one failed case.
pub fn run_group(env: &Env, group: &str) -> Vec<CaseResult> {
    let results = run_group_once(env, group);
    if stalled(&results) {
        // The xpmem group retries inside; the others once here.
        println!(
            "[{group}] WARNING: the nested test host stopped (no output, not even its heartbeat): \
             the intermittent QEMU-TCG nested-SVM stall of tests/nested/README.md. Running the \
             group once more."
        );
        return run_group_once(env, group);
    }
    results
}

fn run_group_once(env: &Env, group: &str) -> Vec<CaseResult> {
    let res = match group {
        "boot" => boot_group(env),
        "errors" => errors_group(env),
        "xpmem" => crate::xpmem_group::run(env, group_opts(env, group)),
        "disk" => crate::disk_group::run(env, group_opts(env, group)),
        "rootdisk" => crate::rootdisk_group::run(env, group_opts(env, group)),
        "net" => crate::net_group::run(env, group_opts(env, group)),
        "scale" => crate::scale_group::run(env, group_opts(env, group)),
        "kill" => crate::kill_group::run(env, group_opts(env, group)),
        "tap" => crate::tap_group::run(env, group_opts(env, group)),
        "vsock" => crate::vsock_group::run(env, group_opts(env, group)),
        other => {
            return vec![CaseResult::new(
                other,
                "setup",
                Status::Fail(format!(
                    "unknown group `{other}`; groups: {}",
                    GROUPS
                        .iter()
                        .chain(EXTRA_GROUPS)
                        .copied()
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            )]
        }
    };
    res.unwrap_or_else(|e| vec![CaseResult::new(group, "setup", Status::Fail(e.to_string()))])
}

/// The group's host options: the console goes to `build/test-logs/e2e-<group>.console.log`.
fn group_opts(env: &Env, group: &str) -> Options {
    let mut opts = env.opts.clone();
    let log = crate::build_dir()
        .join("test-logs")
        .join(format!("e2e-{group}.console.log"));
    println!("[e2e] group {group}: console log {}", log.display());
    opts.console_log = Some(log);
    opts
}

/// A failed `<group>/setup/inputs` case when the guest test program has not
/// been built.
pub fn missing_xpmem_test(group: &str) -> Option<CaseResult> {
    let tool = crate::repo_root().join("guest-driver/tools/image/bin/xpmem-test");
    (!tool.exists()).then(|| {
        CaseResult::new(
            group,
            "setup/inputs",
            Status::Fail(format!(
                "{} is missing: run `make -C guest-driver`",
                tool.display()
            )),
        )
    })
}

/// `xpmem-inject` (`tests/e2e/src/bin/xpmem-inject.rs`: runs one system call
/// in a thread of a running process, through ptrace), built beside this
/// binary: `cargo build -p xpmem-e2e` builds both, statically linked with
/// `RUSTFLAGS=-C target-feature=+crt-static` as `scripts/test.sh` does.
pub fn inject_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("xpmem-inject")))
        .unwrap_or_else(|| PathBuf::from("xpmem-inject"))
}

/// Puts `xpmem-inject` into `payload` as `./xpmem-inject` (the script runs it
/// as `./xpmem-inject --pid PID --syscall NR [--arg N]...`); a failed
/// `<group>/setup/inputs` case, and nothing added, when it has not been built.
pub fn ship_inject(payload: &mut Payload, group: &str) -> Option<CaseResult> {
    ship_inject_from(payload, group, &inject_binary())
}

fn ship_inject_from(payload: &mut Payload, group: &str, binary: &Path) -> Option<CaseResult> {
    if !binary.exists() {
        return Some(CaseResult::new(
            group,
            "setup/inputs",
            Status::Fail(format!(
                "{} is missing: build it beside xpmem-e2e: `cargo build -p xpmem-e2e` \
                 (static, as scripts/test.sh does)",
                binary.display()
            )),
        ));
    }
    payload.file(binary, "xpmem-inject");
    None
}

/// The guest kernel (`vmlinuz`) and the (cached) initramfs built from `spec`.
fn guest_image(cache: &Cache, spec: &Spec) -> Result<(PathBuf, PathBuf), Error> {
    let kernel = cache.kernel()?;
    let busybox = cache.busybox()?;
    let img = image::build(&kernel, &busybox, spec, &crate::build_dir().join("images"))?;
    Ok((kernel.vmlinuz, img))
}

/// The kernel and the guest image every XPMEM test boots ([`Spec::xpmem`]):
/// base modules, `virtio_blk`, `xpmem.ko`, the test tools.
pub fn xpmem_image(env: &Env) -> Result<(PathBuf, PathBuf), Error> {
    guest_image(&env.cache, &Spec::xpmem())
}

/// The guest image with the base modules (virtio + virtio_rng + virtio_net +
/// vmw_vsock_virtio_transport).
pub fn base_image(cache: &Cache) -> Result<(PathBuf, PathBuf), Error> {
    guest_image(cache, &Spec::base())
}

/// Runs a group's `payload` on the test host, stopped after
/// [`nested::SILENCE_LIMIT`] without console output (the payload prints
/// [`nested::HEARTBEAT`]). Echoes what a reader follows (`XPMEM-CASE`,
/// `XPMEM-TEST`, `XPMEM-GUEST` and monitor lines, lines containing one of
/// `also`; guest consoles with `--guests`, everything with `--verbose`), gives
/// every line to `on_line`, and returns a failed `<group>/test-host/finished`
/// if the host timed out or stopped.
pub fn run_on_test_host(
    env: &Env,
    opts: Options,
    payload: &Payload,
    group: &str,
    also: &[&str],
    mut on_line: impl FnMut(&str),
) -> Result<Option<CaseResult>, Error> {
    let mut opts = opts;
    opts.silence_limit = Some(nested::SILENCE_LIMIT);
    let echo = env.echo;
    let outcome = nested::run(&env.cache, payload, &opts, |l| {
        let show = echo == Echo::All
            || (echo == Echo::Guests && l.starts_with("[vm-"))
            || l.starts_with("XPMEM-CASE")
            || l.contains("XPMEM-TEST ")
            || l.contains("XPMEM-GUEST ")
            || l.starts_with("xpmem-vmm:")
            || also.iter().any(|m| l.contains(m));
        if show {
            println!("[L1] {l}");
        }
        on_line(l);
    })?;
    Ok(if outcome.stalled {
        Some(CaseResult::new(
            group,
            "test-host/finished",
            Status::Fail(format!(
                "{STALLED}: no console output, not even its heartbeat, for {} s",
                nested::SILENCE_LIMIT.as_secs()
            )),
        ))
    } else if outcome.timed_out {
        Some(CaseResult::new(
            group,
            "test-host/finished",
            Status::Fail("the nested test host was killed at its deadline".into()),
        ))
    } else {
        None
    })
}

/// How a `test-host/finished` failure of a stalled nested host starts.
const STALLED: &str = "the nested test host stopped";

/// The group's results had the intermittent nested-host stall (not a guest or
/// monitor hang: the host's own heartbeat stopped too).
fn stalled(results: &[CaseResult]) -> bool {
    results.iter().any(|r| {
        r.name.ends_with("/test-host/finished")
            && matches!(&r.status, Status::Fail(why) if why.starts_with(STALLED))
    })
}

/// The default two-VM setup: `a` and `b`, 2 vCPUs and 512 MiB each.
///
/// No `quiet` on the guest command line: in the nested host, guests booted
/// with `quiet` were seen to stall for minutes without output, while the same
/// guests without it reached init (to be investigated in the monitor).
pub fn two_vms() -> Vec<VmSetup> {
    ["a", "b"]
        .iter()
        .map(|n| VmSetup {
            name: n.to_string(),
            vcpus: 2,
            memory_mib: 512,
            cmdline: String::new(),
        })
        .collect()
}

/// Writes the two-VM config into the build dir and prepares it.
pub fn two_vm_scenario(env: &Env, vmm_timeout: Duration) -> Result<scenario::Prepared, Error> {
    let (kernel, initrd) = base_image(&env.cache)?;
    let text = scenario::config_toml(&two_vms(), &kernel, &initrd);
    let path = crate::build_dir().join("scenarios").join("two-vms.toml");
    Ok(scenario::prepare(&path, &text, &env.vmm, vmm_timeout)?)
}

/// Two VMs with 2 vCPUs each boot together; both reach init, see 2 CPUs and
/// have the virtio entropy device bound to `virtio_rng`; the monitor exits 0
/// once both have shut down.
pub fn boot_group(env: &Env) -> Result<Vec<CaseResult>, Error> {
    const G: &str = "boot";
    // Deadlines: the monitor is killed after 6 minutes, L1 a minute later
    // (two nested guests normally reach init well within 2 minutes).
    let vmm_deadline = Duration::from_secs(360);
    let prepared = two_vm_scenario(env, vmm_deadline)?;
    let mut opts = group_opts(env, G);
    opts.timeout = opts.timeout.min(vmm_deadline + Duration::from_secs(60));
    // The scenario payload prints L1's heartbeat: silence means L1 stopped.
    opts.silence_limit = Some(nested::SILENCE_LIMIT);
    let mut report = scenario::run(&env.cache, &prepared, &opts, env.echo)?;
    let mut out = Vec::new();
    if report.host.stalled {
        println!("{}", nested::stall_warning(G, "(see the console log)"));
        report = scenario::run(&env.cache, &prepared, &opts, env.echo)?;
        if report.host.stalled {
            out.push(CaseResult::check(
                G,
                "test-host-kept-running",
                false,
                || {
                    format!(
                        "the nested test host stopped twice (no output for {} s)",
                        nested::SILENCE_LIMIT.as_secs()
                    )
                },
            ));
        }
    }
    let setups = two_vms();
    for (vm, setup) in report.vms.iter().zip(&setups) {
        let n = &vm.name;
        let ready = vm.ready.as_ref();
        out.push(CaseResult::check(
            G,
            &format!("{n}-reaches-init"),
            ready.is_some() && vm.panic.is_none(),
            || match &vm.panic {
                Some(p) => format!("guest {n} panicked: {p}"),
                None => format!(
                "guest {n} printed no XPMEM-GUEST READY banner ({} console lines; errors: {:?})",
                vm.lines, vm.errors
            ),
            },
        ));
        out.push(CaseResult::check(
            G,
            &format!("{n}-cpus-online"),
            ready.is_some_and(|r| r.cpus == setup.vcpus),
            || {
                format!(
                    "guest {n}: expected {} CPUs online, banner says {:?}",
                    setup.vcpus,
                    ready.map(|r| r.cpus)
                )
            },
        ));
        out.push(CaseResult::check(
            G,
            &format!("{n}-virtio-rng-bound"),
            ready.is_some_and(|r| r.has_bound(4, "virtio_rng")),
            || {
                format!(
                    "guest {n}: no virtio device id 4 bound to virtio_rng (devices: {})",
                    ready
                        .map(scenario::describe_virtio)
                        .unwrap_or_else(|| "unknown".into())
                )
            },
        ));
        out.push(CaseResult::check(
            G,
            &format!("{n}-init-clean"),
            vm.errors.is_empty(),
            || format!("guest {n} init errors: {:?}", vm.errors),
        ));
    }
    out.push(CaseResult::check(
        G,
        "monitor-exits-0",
        report.vmm_exit == Some(0),
        || {
            format!(
                "monitor exit {:?} (137 = killed at the deadline){}; monitor output: {:?}",
                report.vmm_exit,
                if report.host.timed_out {
                    ", test host timed out"
                } else {
                    ""
                },
                report
                    .monitor_lines
                    .iter()
                    .rev()
                    .take(5)
                    .rev()
                    .collect::<Vec<_>>()
            )
        },
    ));
    Ok(out)
}

/// A bad-input case: the monitor must exit non-zero within the deadline,
/// print exactly one non-empty line, mentioning one of `keywords`, and not panic.
#[derive(Debug, Clone)]
struct BadInput {
    name: &'static str,
    /// Arguments after `./xpmem-vmm`.
    args: String,
    keywords: &'static [&'static str],
}

fn vm_toml(
    name: &str,
    vcpus: u32,
    memory: &str,
    kernel: &str,
    initrd: &str,
    extra: &str,
) -> String {
    format!(
        "[[vm]]\nname = \"{name}\"\nvcpus = {vcpus}\nmemory = {memory}\nkernel = \"{kernel}\"\ninitrd = \"{initrd}\"\n{extra}\n"
    )
}

/// Deterministic pseudo-random bytes (xorshift64*), for a corrupt kernel.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

const CASE_SCRIPT_HEAD: &str = r#"
run_case() {
	name=$1
	shift
	echo "XPMEM-CASE-BEGIN $name"
	timeout -s KILL 60 "$@" >/tmp/case.out 2>/tmp/case.err </dev/null
	rc=$?
	while IFS= read -r l || [ -n "$l" ]; do echo "XPMEM-CASE-OUT $name $l"; done </tmp/case.out
	while IFS= read -r l || [ -n "$l" ]; do echo "XPMEM-CASE-OUT $name $l"; done </tmp/case.err
	echo "XPMEM-CASE-END $name rc=$rc"
}
# A sparse 512 MiB initramfs for a 128 MiB guest.
dd if=/dev/zero of=/tmp/big.img bs=1M seek=511 count=1 2>/dev/null
ln -sf /tmp/big.img big.img
if [ "$XPMEM_HOST" = nested ]; then
	# L1 booted without kvm-amd: there is no /dev/kvm yet.
	run_case no-kvm ./xpmem-vmm --config cases/ok.toml
	load-kvm || exit 1
else
	# Hide /dev/kvm in a private mount namespace.
	run_case no-kvm unshare -m sh -c 'mount -t tmpfs none /dev && exec ./xpmem-vmm --config cases/ok.toml'
fi
"#;

/// The monitor's bad-input handling: one clear line and a non-zero exit each.
pub fn errors_group(env: &Env) -> Result<Vec<CaseResult>, Error> {
    const G: &str = "errors";
    let (kernel, initrd) = base_image(&env.cache)?;
    let mut payload = Payload::default();
    payload.file(&env.vmm, "xpmem-vmm");
    payload.file(&kernel, "vmlinuz");
    payload.file(&initrd, "guest.cpio.gz");
    payload.data("corrupt.bin", noise(256 * 1024), 0o644);
    // A bzImage cut after its setup header: a valid header that lies about its size.
    let mut truncated = std::fs::read(&kernel).map_err(|source| nested::Error::ReadPayload {
        path: kernel.clone(),
        source,
    })?;
    truncated.truncate(16 * 1024);
    payload.data("truncated.bin", truncated, 0o644);
    // Disk images (issue 9): a good one, one of 1000 bytes, a read-only file,
    // and a directory where an image should be.
    payload.data("disk.img", vec![0u8; 64 * 1024], 0o644);
    payload.data("odd.img", vec![0u8; 1000], 0o644);
    payload.data("ro.img", vec![0u8; 64 * 1024], 0o444);
    payload.data("imgdir/keep", Vec::new(), 0o644);
    // TAP errors (issue 10): the tun module, so `tap = "lo"` reaches TUNSETIFF.
    payload.modules.push("tun".into());

    let ok = |extra: &str| vm_toml("a", 1, "256", "../vmlinuz", "../guest.cpio.gz", extra);
    let configs: Vec<(&str, String)> = vec![
        ("ok", ok("")),
        (
            "missing-kernel",
            vm_toml("a", 1, "256", "../no-such-bzImage", "../guest.cpio.gz", ""),
        ),
        (
            "missing-initrd",
            vm_toml("a", 1, "256", "../vmlinuz", "../no-such-initrd.gz", ""),
        ),
        (
            "corrupt-kernel",
            vm_toml("a", 1, "256", "../corrupt.bin", "../guest.cpio.gz", ""),
        ),
        (
            "truncated-kernel",
            vm_toml("a", 1, "256", "../truncated.bin", "../guest.cpio.gz", ""),
        ),
        (
            "initrd-too-large",
            vm_toml("a", 1, "128", "../vmlinuz", "../big.img", ""),
        ),
        (
            "memory-too-small",
            vm_toml("a", 1, "\"32M\"", "../vmlinuz", "../guest.cpio.gz", ""),
        ),
        (
            "zero-vcpus",
            vm_toml("a", 0, "256", "../vmlinuz", "../guest.cpio.gz", ""),
        ),
        ("unknown-key", ok("vcpu_count = 2")),
        ("duplicate-names", format!("{}{}", ok(""), ok(""))),
        (
            "disk-missing",
            ok("disks = [{ path = \"../no-such.img\" }]"),
        ),
        ("disk-odd-size", ok("disks = [{ path = \"../odd.img\" }]")),
        ("disk-directory", ok("root = \"../imgdir\"")),
        (
            "disk-read-only-file",
            ok("disks = [{ path = \"../ro.img\" }]"),
        ),
        (
            "disk-writable-twice",
            format!(
                "{}{}",
                ok("disks = [{ path = \"../disk.img\" }]"),
                vm_toml(
                    "b",
                    1,
                    "256",
                    "../vmlinuz",
                    "../guest.cpio.gz",
                    "root = \"../disk.img\""
                )
            ),
        ),
        (
            "tap-name-too-long",
            ok("net = { tap = \"a-too-long-tap-name\" }"),
        ),
        ("tap-not-a-tap", ok("net = { tap = \"lo\" }")),
        ("vsock-reserved-cid", ok("vsock = { cid = 2 }")),
        (
            "vsock-duplicate-cid",
            format!(
                "{}{}",
                ok("vsock = { cid = 5 }"),
                vm_toml(
                    "b",
                    1,
                    "256",
                    "../vmlinuz",
                    "../guest.cpio.gz",
                    "vsock = { cid = 5 }"
                )
            ),
        ),
        (
            "vsock-socket-not-socket",
            ok("vsock = { socket = \"../disk.img\" }"),
        ),
    ];
    for (name, text) in &configs {
        payload.data(format!("cases/{name}.toml"), text.clone(), 0o644);
    }
    let cases = [
        BadInput {
            name: "no-kvm",
            args: String::new(),
            keywords: &["/dev/kvm"],
        },
        BadInput {
            name: "missing-config",
            args: "--config cases/no-such.toml".into(),
            keywords: &["no-such.toml"],
        },
        BadInput {
            name: "missing-kernel",
            args: String::new(),
            keywords: &["no-such-bzImage"],
        },
        BadInput {
            name: "missing-initrd",
            args: String::new(),
            keywords: &["no-such-initrd"],
        },
        BadInput {
            name: "corrupt-kernel",
            args: String::new(),
            keywords: &["kernel"],
        },
        BadInput {
            name: "truncated-kernel",
            args: String::new(),
            keywords: &["kernel"],
        },
        BadInput {
            name: "initrd-too-large",
            args: String::new(),
            keywords: &["initrd", "initramfs"],
        },
        BadInput {
            name: "memory-too-small",
            args: String::new(),
            keywords: &["memory"],
        },
        BadInput {
            name: "zero-vcpus",
            args: String::new(),
            keywords: &["vcpus"],
        },
        BadInput {
            name: "unknown-key",
            args: String::new(),
            keywords: &["vcpu_count"],
        },
        BadInput {
            name: "duplicate-names",
            args: String::new(),
            keywords: &["duplicate"],
        },
        BadInput {
            name: "disk-missing",
            args: String::new(),
            keywords: &["no-such.img", "does not exist"],
        },
        BadInput {
            name: "disk-odd-size",
            args: String::new(),
            keywords: &["odd.img", "512"],
        },
        BadInput {
            name: "disk-directory",
            args: String::new(),
            keywords: &["imgdir", "directory"],
        },
        BadInput {
            name: "vsock-reserved-cid",
            args: String::new(),
            keywords: &["cid 2", "reserved"],
        },
        BadInput {
            name: "vsock-duplicate-cid",
            args: String::new(),
            keywords: &["CID 5", "vsock.cid"],
        },
        BadInput {
            name: "vsock-socket-not-socket",
            args: String::new(),
            keywords: &["disk.img", "not a socket"],
        },
        BadInput {
            name: "disk-read-only-file",
            args: String::new(),
            keywords: &["ro.img", "read_only"],
        },
        BadInput {
            name: "disk-writable-twice",
            args: String::new(),
            keywords: &["disk.img", "one VM"],
        },
        BadInput {
            name: "tap-name-too-long",
            args: String::new(),
            keywords: &["a-too-long-tap-name"],
        },
        BadInput {
            name: "tap-not-a-tap",
            args: String::new(),
            keywords: &["not a TAP"],
        },
    ];
    let mut script = String::from(CASE_SCRIPT_HEAD);
    for c in cases.iter().filter(|c| c.name != "no-kvm") {
        let args = if c.args.is_empty() {
            format!("--config cases/{}.toml", c.name)
        } else {
            c.args.clone()
        };
        script.push_str(&format!("run_case {} ./xpmem-vmm {args}\n", c.name));
    }
    payload.script = script;

    let mut opts = group_opts(env, G);
    opts.kvm = KvmLoad::Deferred;
    // Every case has its own 60 s limit inside; this only catches a dead L1.
    opts.timeout = opts
        .timeout
        .min(Duration::from_secs(cases.len() as u64 * 60 + 120));
    let mut lines: Vec<String> = Vec::new();
    let echo = env.echo;
    let outcome = nested::run(&env.cache, &payload, &opts, |l| {
        if echo == Echo::All || l.starts_with("XPMEM-CASE-OUT") {
            println!("[L1] {l}");
        }
        lines.push(l.to_string());
    })?;

    let mut out = Vec::new();
    for c in &cases {
        let prefix = format!("XPMEM-CASE-OUT {} ", c.name);
        let end = format!("XPMEM-CASE-END {} rc=", c.name);
        let output: Vec<&str> = lines
            .iter()
            .filter_map(|l| l.strip_prefix(&prefix))
            .filter(|l| !l.trim().is_empty())
            .collect();
        let rc = lines
            .iter()
            .find_map(|l| l.strip_prefix(&end))
            .and_then(|r| r.trim().parse::<i32>().ok());
        out.push(CaseResult::new(
            G,
            c.name,
            judge_bad_input(c.keywords, rc, &output, outcome.timed_out),
        ));
    }
    Ok(out)
}

fn judge_bad_input(
    keywords: &[&str],
    rc: Option<i32>,
    output: &[&str],
    host_timed_out: bool,
) -> Status {
    let Some(rc) = rc else {
        return Status::Fail(if host_timed_out {
            "the test host timed out before this case finished".into()
        } else {
            "no result line from the test host".into()
        });
    };
    if rc == 137 {
        return Status::Fail("the monitor hung: killed after 60 s".into());
    }
    if rc == 0 {
        return Status::Fail(format!("the monitor exited 0; output: {output:?}"));
    }
    if let Some(p) = output
        .iter()
        .find(|l| l.contains("panicked") || l.contains("RUST_BACKTRACE"))
    {
        return Status::Fail(format!("the monitor panicked (exit {rc}): {p}"));
    }
    if output.len() != 1 {
        return Status::Fail(format!(
            "expected exactly one line of output, got {} (exit {rc}): {output:?}",
            output.len()
        ));
    }
    let line = output[0].to_lowercase();
    if !keywords.iter().any(|k| line.contains(&k.to_lowercase())) {
        return Status::Fail(format!(
            "the message does not mention {keywords:?} (exit {rc}): {:?}",
            output[0]
        ));
    }
    Status::Pass
}

/// Summary counts.
pub fn counts(results: &[CaseResult]) -> (usize, usize, usize) {
    let pass = results.iter().filter(|r| r.status == Status::Pass).count();
    let fail = results
        .iter()
        .filter(|r| matches!(r.status, Status::Fail(_)))
        .count();
    let skip = results
        .iter()
        .filter(|r| matches!(r.status, Status::Skip(_)))
        .count();
    (pass, fail, skip)
}

/// Why the end-to-end tests cannot run on this machine, if they cannot.
pub fn cannot_run(mode: nested::Mode) -> Option<String> {
    let host = nested::detect_host();
    let nested = match nested::choose(mode) {
        Ok(n) => n,
        Err(e) => return Some(e.to_string()),
    };
    if nested
        && !Path::new("/usr/bin/qemu-system-x86_64").exists()
        && which("qemu-system-x86_64").is_none()
    {
        return Some(format!(
            "no hardware KVM here ({}) and qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)",
            host.reason
        ));
    }
    None
}

fn which(prog: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_string_lossy()
        .split(':')
        .map(|d| Path::new(d).join(prog))
        .find(|p| p.exists())
}

/// The monitor's `xpmem domain at exit: held ...; total ...` line, split: whether every
/// held counter is 0, and the totals part. None for any other line.
pub fn domain_at_exit(line: &str) -> Option<(bool, &str)> {
    let rest = line.strip_prefix("xpmem-vmm: xpmem domain at exit: ")?;
    let (held, total) = rest.split_once(';').unwrap_or((rest, ""));
    let zero = held
        .split_whitespace()
        .filter(|kv| kv.contains('='))
        .all(|kv| kv.ends_with("=0"));
    Some((zero, total))
}

/// The word after `key` in `text`.
pub fn word_after<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.split(key).nth(1)?.split_whitespace().next()
}

/// `(check, verdict, rest)` of an `XPMEM-TEST <check> <verdict> [rest]`
/// line (anywhere in `line`, after a console prefix).
pub fn test_line(line: &str) -> Option<(&str, &str, &str)> {
    let at = line.find("XPMEM-TEST ")?;
    let mut words = line[at + "XPMEM-TEST ".len()..].splitn(3, ' ');
    Some((words.next()?, words.next()?, words.next().unwrap_or("")))
}

/// `(bytes, sum)` of a transfer line's rest, `N bytes sum S ...` (0 and
/// "" where missing).
pub fn transfer(rest: &str) -> (u64, String) {
    let bytes = rest
        .split_whitespace()
        .next()
        .and_then(|b| b.parse().ok())
        .unwrap_or(0);
    (bytes, word_after(rest, "sum ").unwrap_or("").to_string())
}

/// The monitor's exit code from a payload's `XPMEM-CASE-END <group> rc=N`
/// line (`Some(None)`: the line without a number).
pub fn case_end(line: &str, group: &str) -> Option<Option<i32>> {
    let rest = line.strip_prefix("XPMEM-CASE-END ")?.strip_prefix(group)?;
    Some(word_after(rest, "rc=").and_then(|r| r.parse().ok()))
}

/// What a group makes of the test host's output lines.
pub trait GroupOutput {
    fn feed(&mut self, line: &str);
    /// Lines worth showing after the run (transfer figures, counters).
    fn notes(&self) -> &[String];
}

/// Runs `payload` on the test host for `group`, feeding every line to
/// `out`, then prints its notes; returns the stopped-host failure, if any.
pub fn run_fed(
    env: &Env,
    opts: Options,
    payload: &Payload,
    group: &str,
    out: &mut impl GroupOutput,
) -> Result<Option<CaseResult>, Error> {
    let stopped = run_on_test_host(env, opts, payload, group, &[], |l| out.feed(l))?;
    for note in out.notes() {
        println!("[{group}] {note}");
    }
    Ok(stopped)
}

/// `var` MiB in bytes when it is set to a positive number, else `default` MiB.
pub fn env_mib(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|m| *m > 0)
        .unwrap_or(default)
        << 20
}

/// `<group>/guest/<check>` failures for FAIL lines of checks not in `known`
/// (a failure the judge did not expect still fails the group).
pub fn other_failures(
    group: &str,
    results: &[(String, Result<(), String>)],
    known: &[String],
) -> Vec<CaseResult> {
    results
        .iter()
        .filter(|(check, _)| !known.contains(check))
        .filter_map(|(check, res)| {
            let why = res.as_ref().err()?;
            Some(CaseResult::new(
                group,
                &format!("guest/{check}"),
                Status::Fail(why.clone()),
            ))
        })
        .collect()
}

/// The `<group>/monitor-exit` case: the monitor ended with 0.
pub fn monitor_exit(group: &str, rc: Option<i32>) -> CaseResult {
    CaseResult::new(
        group,
        "monitor-exit",
        match rc {
            Some(0) => Status::Pass,
            rc => Status::Fail(format!("the monitor ended with {rc:?}")),
        },
    )
}

/// A test-host payload running `script` with the monitor (`xpmem-vmm`) and
/// the xpmem guest image (`vmlinuz`, `guest.cpio.gz`).
pub fn guest_payload(env: &Env, script: String) -> Result<Payload, Error> {
    let (vmlinuz, initrd) = xpmem_image(env)?;
    let mut payload = Payload::new(script);
    payload.file(&env.vmm, "xpmem-vmm");
    payload.file(&vmlinuz, "vmlinuz");
    payload.file(&initrd, "guest.cpio.gz");
    Ok(payload)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
mod tests {
    use super::*;

    #[test]
    fn xpmem_inject_is_shipped_or_its_absence_is_a_setup_failure() {
        let mut payload = Payload::new("true");
        let missing = Path::new("/nonexistent/xpmem-inject");
        let failed = ship_inject_from(&mut payload, "kill", missing).unwrap();
        assert_eq!(failed.name, "kill/setup/inputs");
        assert!(
            matches!(&failed.status, Status::Fail(why) if why.contains("cargo build -p xpmem-e2e")),
            "{:?}",
            failed.status
        );
        assert!(payload.files.is_empty());

        let exe = std::env::current_exe().unwrap();
        assert!(ship_inject_from(&mut payload, "kill", &exe).is_none());
        assert_eq!(payload.files.len(), 1);
        assert_eq!(payload.files[0].dest, "xpmem-inject");
        assert_eq!(payload.files[0].mode & 0o111, 0o111, "shipped executable");
        assert!(inject_binary().ends_with("xpmem-inject"));
    }

    #[test]
    fn only_a_stalled_host_makes_a_group_run_again() {
        let fin =
            |why: &str| CaseResult::new("net", "test-host/finished", Status::Fail(why.into()));
        assert!(stalled(&[fin(&format!("{STALLED}: no console output"))]));
        assert!(!stalled(&[fin(
            "the nested test host was killed at its deadline"
        )]));
        assert!(!stalled(&[CaseResult::new(
            "net",
            "ping4/a-b",
            Status::Fail(STALLED.into())
        )]));
    }

    #[test]
    fn bad_input_judgement() {
        let kw = &["memory"];
        assert_eq!(
            judge_bad_input(kw, Some(1), &["error: VM a: memory 32 MiB is below"], false),
            Status::Pass
        );
        assert!(matches!(
            judge_bad_input(kw, Some(0), &["memory"], false),
            Status::Fail(_)
        ));
        assert!(matches!(
            judge_bad_input(kw, Some(137), &[], false),
            Status::Fail(_)
        ));
        assert!(matches!(
            judge_bad_input(kw, None, &[], true),
            Status::Fail(_)
        ));
        assert!(matches!(
            judge_bad_input(kw, Some(101), &["thread 'main' panicked at memory"], false),
            Status::Fail(_)
        ));
        assert!(matches!(
            judge_bad_input(kw, Some(1), &["memory", "more"], false),
            Status::Fail(_)
        ));
        assert!(matches!(
            judge_bad_input(kw, Some(1), &["vcpus bad"], false),
            Status::Fail(_)
        ));
    }

    #[test]
    fn noise_is_not_trivial() {
        let n = noise(4096);
        assert_eq!(n, noise(4096));
        let distinct: std::collections::BTreeSet<u8> = n.iter().copied().collect();
        assert!(distinct.len() > 200);
    }

    #[test]
    fn counting() {
        let r = vec![
            CaseResult::new("g", "a", Status::Pass),
            CaseResult::new("g", "b", Status::Fail("x".into())),
            CaseResult::new("g", "c", Status::Skip("y".into())),
            CaseResult::new("g", "d", Status::Pass),
        ];
        assert_eq!(counts(&r), (2, 1, 1));
    }
}
