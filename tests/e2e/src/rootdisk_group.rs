//! The `rootdisk` group (issue 9 item 6a): two VMs boot a stock Debian 12
//! system from the root image of `scripts/build-root-image.sh`, shared
//! read-only (`root = { path, read_only = true }`; the image's init mounts
//! tmpfs where it writes). The xpmem driver is the one DKMS built inside the
//! image, loaded by `modprobe`; libxpmem comes from the image's packages.
//!
//! The image reaches the nested test host as a read-only virtio-blk drive of
//! its QEMU ([`nested::Payload::drive`]), not through L1's RAM, and the
//! monitor gives that block device to both VMs. VM `a` checks the module's
//! origin, pkg-config and a program built against the installed library,
//! runs single-VM xpmem cases, then exports two named segments; VM `b` finds
//! them by name and runs the importer halves (a buffer; a whole address space
//! with a hole, threads and a SIGKILLed exporter).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cases::{CaseResult, Env, Error, Status};
use crate::nested::{self, Payload};
use crate::xpmem_group::{held_zero_check, VmLog};

const G: &str = "rootdisk";

/// What each VM's script must report, in order.
const VMS: &[(&str, &str, &[&str])] = &[
    (
        "a",
        "rootdisk-a.sh",
        &[
            "dkms-module",
            "pkg-config",
            "libxpmem-link",
            "version",
            "names",
            "local",
            "export",
            "export-space",
            "proc-zero",
        ],
    ),
    (
        "b",
        "rootdisk-b.sh",
        &["attach", "attach-space", "proc-zero"],
    ),
];

fn fail(check: &str, why: String) -> CaseResult {
    CaseResult {
        name: format!("{G}/{check}"),
        status: Status::Fail(why),
    }
}

/// Builds (or finds cached) the root image; returns its directory.
fn root_image() -> Result<PathBuf, String> {
    let root = crate::repo_root();
    let script = root.join("scripts/build-root-image.sh");
    println!(
        "[{G}] building or reusing the root image ({})",
        script.display()
    );
    let status = Command::new(&script)
        .env("XPMEM_BUILD_DIR", crate::build_dir())
        .status()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !status.success() {
        return Err(format!("{} failed ({status})", script.display()));
    }
    let dir = crate::build_dir().join("images/root-current");
    for f in ["root.img", "vmlinuz", "initrd.img"] {
        if !dir.join(f).exists() {
            return Err(format!("{} has no {f}", dir.display()));
        }
    }
    Ok(dir)
}

fn vm_toml(name: &str, run: &str) -> String {
    let cmdline = format!("xpmem.name={name} xpmem.run={run} xpmem.out=kmsg");
    format!(
        "[[vm]]\nname = \"{name}\"\nvcpus = 1\nmemory = 512\nkernel = \"vmlinuz\"\n\
         initrd = \"initrd.img\"\ncmdline = {}\nroot = {{ path = \"@ROOT@\", read_only = true }}\n\n",
        toml::Value::String(cmdline)
    )
}

fn payload_script() -> String {
    format!(
        r#"{heartbeat}[ -b "${{XPMEM_DRIVE0:-}}" ] || echo "XPMEM-ROOTDISK ERROR the root image drive is missing"
sed "s|@ROOT@|$XPMEM_DRIVE0|g" pair.toml.in >pair.toml
echo "XPMEM-CASE-BEGIN pair"
timeout -s KILL 480 ./xpmem-vmm --config pair.toml </dev/null 2>&1
echo "XPMEM-CASE-END pair rc=$?"
kill $hb 2>/dev/null
"#,
        heartbeat = nested::HEARTBEAT
    )
}

/// The judge of one run's console: per VM its `XPMEM-TEST` results and a
/// READY banner from the disk's init, the monitor's exit and held counters.
#[derive(Default)]
struct Parsed {
    vms: Vec<(String, VmLog, bool)>,
    rc: Option<i32>,
    held: Option<String>,
}

impl Parsed {
    fn new() -> Self {
        Parsed {
            vms: VMS
                .iter()
                .map(|(vm, _, _)| (vm.to_string(), VmLog::default(), false))
                .collect(),
            ..Parsed::default()
        }
    }

    fn feed(&mut self, line: &str) {
        if let Some(rest) = line.strip_prefix("XPMEM-CASE-END pair rc=") {
            self.rc = rest.trim().parse().ok();
        }
        if let Some(rest) = line.split("xpmem domain at exit: held ").nth(1) {
            self.held = Some(rest.split(';').next().unwrap_or("").to_string());
        }
        for (vm, log, disk) in &mut self.vms {
            if let Some(text) = line.strip_prefix(&format!("[vm-{vm}] ")) {
                if text.contains("XPMEM-GUEST READY") && text.contains("root=disk") {
                    *disk = true;
                }
                log.feed(text);
            }
        }
    }

    fn judge(&self) -> Vec<CaseResult> {
        let mut out = Vec::new();
        for ((vm, log, disk), (_, _, expected)) in self.vms.iter().zip(VMS) {
            let mut r = Vec::new();
            log.judge("pair", &format!("{vm}-"), expected, &mut r);
            out.extend(r.into_iter().map(|mut c| {
                c.name = c.name.replacen("xpmem/", &format!("{G}/"), 1);
                c
            }));
            out.push(CaseResult {
                name: format!("{G}/pair/{vm}-booted-from-disk"),
                status: if *disk {
                    Status::Pass
                } else {
                    Status::Fail("no READY banner of the disk's init (root=disk)".into())
                },
            });
        }
        out.push(match self.rc {
            Some(0) => CaseResult {
                name: format!("{G}/pair/monitor-exit"),
                status: Status::Pass,
            },
            rc => fail(
                "pair/monitor-exit",
                format!("the monitor ended with {rc:?}"),
            ),
        });
        let mut held = held_zero_check("pair", self.held.as_deref().unwrap_or(""));
        held.name = held.name.replacen("xpmem/", &format!("{G}/"), 1);
        out.push(held);
        out
    }
}

pub fn run(env: &Env, opts: nested::Options) -> Result<Vec<CaseResult>, Error> {
    let dir = match root_image() {
        Ok(d) => d,
        Err(why) => return Ok(vec![fail("setup/root-image", why)]),
    };
    let file = |name: &str| -> PathBuf { dir.join(name) };
    let mut payload = Payload::new(payload_script());
    payload.file(&env.vmm, "xpmem-vmm");
    payload.file(file("vmlinuz"), "vmlinuz");
    payload.file(file("initrd.img"), "initrd.img");
    payload.drive(resolve(&file("root.img")));
    let toml: String = VMS.iter().map(|(vm, run, _)| vm_toml(vm, run)).collect();
    payload.data("pair.toml.in", toml, 0o644);
    let mut parsed = Parsed::new();
    let stopped =
        crate::cases::run_on_test_host(env, opts, &payload, G, &["XPMEM-ROOTDISK"], |l| {
            parsed.feed(l)
        })?;
    let mut results = parsed.judge();
    results.extend(stopped);
    Ok(results)
}

/// The real file behind `root-current/root.img` (QEMU's drive option wants
/// no symlink games with its locking).
fn resolve(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
mod tests {
    use super::*;

    fn good() -> Vec<String> {
        let mut l = vec!["[vm-a] [ 9.0] XPMEM-GUEST READY a cpus=1 virtio=x root=disk".to_string()];
        for c in VMS[0].2 {
            l.push(format!("[vm-a] [ 9.1] XPMEM-TEST {c} PASS"));
        }
        l.push("[vm-b] [ 9.0] XPMEM-GUEST READY b cpus=1 virtio=x root=disk".into());
        for c in VMS[1].2 {
            l.push(format!("[vm-b] [ 9.1] XPMEM-TEST {c} PASS"));
        }
        l.push("xpmem-vmm: xpmem domain at exit: held vms=0 segments=0 names=0; total x=1".into());
        l.push("XPMEM-CASE-END pair rc=0".into());
        l
    }

    fn judge(lines: &[String]) -> Vec<(String, bool)> {
        let mut p = Parsed::new();
        for l in lines {
            p.feed(l);
        }
        p.judge()
            .into_iter()
            .map(|r| (r.name, r.status == Status::Pass))
            .collect()
    }

    #[test]
    fn a_full_run_passes_and_names_its_group() {
        let r = judge(&good());
        assert!(r.iter().all(|(_, ok)| *ok), "{r:?}");
        assert!(
            r.iter().all(|(n, _)| n.starts_with("rootdisk/pair/")),
            "{r:?}"
        );
        assert!(r.contains(&("rootdisk/pair/a-dkms-module".into(), true)));
    }

    #[test]
    fn an_initramfs_boot_a_missing_case_or_held_objects_fail() {
        let mut l = good();
        l[0] = l[0].replace(" root=disk", "");
        l.retain(|x| !x.contains("attach-space"));
        let last = l.len() - 2;
        l[last] = l[last].replace("names=0", "names=1");
        let r = judge(&l);
        for bad in [
            "rootdisk/pair/a-booted-from-disk",
            "rootdisk/pair/b-attach-space",
            "rootdisk/pair/domain-counters-zero",
        ] {
            assert!(r.contains(&(bad.to_string(), false)), "{bad}: {r:?}");
        }
    }
}
