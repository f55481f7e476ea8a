//! The `kill` group (issue 12 item 2): a VM process that dies is cleaned up by
//! the broker, and the other VMs go on. One monitor run (the default one
//! process per VM) with seven VMs of 256 MiB and 1 vCPU that run nothing but
//! their guest agent (`xpmem.run=agent`): survivors `x` and `y`, victims `ve`,
//! `vf`, `vi`, `vp`, `vz`. The test host's script drives every guest command
//! through the agents (`xpmem-vmm exec`) and kills each victim's process with
//! `kill -9` (its pid from the broker's `booting ...; process <pid>` line) at
//! one point each, one after another:
//!
//! * `exporting`: `ve` exports a named segment and holds it, `y` attaches and
//!   reads it (`xpmem-test attach-kill`); once `y` said READ, `ve` is killed:
//!   `y` gets a REVOKED event, its next touches get SIGBUS, the name is gone,
//!   detach and release work.
//! * `fault`: `vf`'s driver answers no RESOLVE (`test_misbehave=no_resolve`),
//!   `vf` exports a named segment, `y` attaches it and touches a page
//!   (`attach-fault`): the FAULT stays pending; 2 s later `vf` is killed and
//!   `y`'s touch must end with SIGBUS, after at least 1.5 s (it was pending)
//!   and well before the resolve timeout (it ended because `vf` died).
//! * `invalidate`: `vi` attaches a segment of `x` and stops acknowledging
//!   (`attach-hostile --misbehave no_ack`); `x` munmaps it
//!   (`export-inval-kill`); 1 s into the munmap `vi` is killed: the munmap
//!   must return at least 0.7 s in (the invalidation was pending) and at
//!   least 1 s before the [`DEADLINE_MS`] deadline, with no importer target
//!   revoked by force (neither in `x`'s counters nor in the broker's
//!   `invalidations_forced`).
//! * `permits`: `vp` takes a permit of a segment of `x` and holds it
//!   (`get-hold`); `vp` is killed; `x` then removes its segment
//!   (`export-hold --stop`), and the broker holds no permit at exit.
//! * `idle`: `vz`, doing nothing, is made to call `getppid`, which its VM
//!   process's seccomp filter forbids: `xpmem-inject` (ptrace; no test hook
//!   in the monitor) has the process's main thread, asleep in `epoll_wait`,
//!   run it. The process must say which call was forbidden and die by
//!   SIGSYS, and only it: the rest below shows the others go on.
//!
//! Then `x` exports and `y` attaches once more (data checked both ways), both
//! guests' `/proc/xpmem` counters are 0 (`proc-zero`) and both power off
//! through their agents. The broker must have reported exactly the five
//! victims, each "killed by signal 9 (SIGKILL)" (`vz`: "signal 31 (SIGSYS)"), `x` and `y` must have left no
//! xpmem objects, the domain must hold nothing at exit, and the monitor must
//! exit 1 (its VM processes did not all end cleanly) — not 137 (the
//! deadline).
//!
//! `broker-death`: a second monitor run with two agent VMs `p` and `q`; once
//! both answer, the test host kills the broker with `kill -9`; within
//! [`ORPHAN_LIMIT_S`] s no VM process may be left (they die with the broker,
//! `PR_SET_PDEATHSIG`). What is left of the broker's runtime directory is
//! reported (a SIGKILLed broker cannot remove it).
//!
//! On the nested host the group took 163 s and 151 s (2026-12-06; the seven boots,
//! sharing L1's one CPU, are 108 s of it), so it is in the default list;
//! `scripts/kill-points.sh` runs it alone.

use std::collections::BTreeMap;

use crate::cases::{test_line, word_after, CaseResult, Env, Error, Status};
use crate::nested;

const G: &str = "kill";

/// The monitor's invalidation deadline (also the resolve timeout, which is
/// never shorter): long enough that a FAULT or an INVALIDATE the kill ended
/// is told apart from one the deadline ended on the nested host.
pub const DEADLINE_MS: u64 = 8_000;
/// Guest RAM of each VM, MiB.
pub const VM_MIB: u64 = 256;
/// VM processes must be gone this many seconds after the broker's SIGKILL.
pub const ORPHAN_LIMIT_S: u64 = 10;

/// The survivors.
const SURVIVORS: [&str; 2] = ["x", "y"];
/// `(point, victim)` in the order the script kills them.
const POINTS: [(&str, &str); 5] = [
    ("exporting", "ve"),
    ("fault", "vf"),
    ("invalidate", "vi"),
    ("permits", "vp"),
    ("idle", "vz"),
];
/// The system call `vz`'s process is made to run: getppid, not on a VM
/// process's allow-list (`vmm/monitor/src/sandbox.rs`).
const FORBIDDEN_SYSCALL: u32 = 110;
/// Steps (guest commands through an agent) that run in a victim and end
/// with its kill.
const VICTIM_STEPS: [&str; 4] = ["e-exp", "f-exp", "i-imp", "p-get"];

fn vms() -> Vec<&'static str> {
    SURVIVORS
        .iter()
        .copied()
        .chain(POINTS.iter().map(|(_, vm)| *vm))
        .collect()
}

fn vm_table(vm: &str) -> String {
    let cmdline = format!("xpmem.name={vm} xpmem.run=agent xpmem.out=kmsg");
    format!(
        "[[vm]]\nname = \"{vm}\"\nvcpus = 1\nmemory = {VM_MIB}\nkernel = \"vmlinuz\"\n\
         initrd = \"guest.cpio.gz\"\ncmdline = {}\nnet = false\nvsock = {{ socket = \"{vm}.vsock\" }}\n\n",
        toml::Value::String(cmdline)
    )
}

/// The setup of the five kill points.
fn config() -> String {
    let tables: String = vms().iter().map(|vm| vm_table(vm)).collect();
    format!("{}{tables}", crate::xpmem_group::deadline_toml(DEADLINE_MS))
}

/// The setup whose broker is killed.
fn death_config() -> String {
    ["p", "q"].iter().map(|vm| vm_table(vm)).collect()
}

/// The test host's script (busybox `sh`). Every wait is bounded; every guest
/// command runs under `timeout -s KILL`.
const SCRIPT: &str = r#"
up() { cut -d' ' -f1 /proc/uptime; }
# pid_of VM FILE: the VM's process, from the broker's booting line.
pid_of() { sed -n "s/^xpmem-vmm: VM $1: booting .*; process \([0-9][0-9]*\))\$/\1/p" "$2" | head -n 1; }
# waitfor FILE PATTERN SECS: until FILE has a line with PATTERN.
waitfor() {
	n=0
	while ! grep -q "$2" "$1" 2>/dev/null; do
		n=$((n + 1))
		if [ $n -gt $(($3 * 5)) ]; then
			echo "XPMEM-KILL no '$2' in $1 within $3 s"
			return 1
		fi
		sleep 0.2
	done
}
# ex STEP VM SECS CMD...: CMD in VM through its agent, in the background;
# output in STEP.out, exit code in STEP.rc.
ex() {
	s=$1 vm=$2 t=$3
	shift 3
	rm -f "$s.out" "$s.rc"
	echo "XPMEM-KILL step $s vm=$vm at=$(up): $*"
	(
		timeout -s KILL $((t + 60)) ./xpmem-vmm exec --socket "$vm.vsock" --wait 60 --timeout "$t" -- "$@" >"$s.out" 2>&1
		echo $? >"$s.rc.tmp" && mv "$s.rc.tmp" "$s.rc"
	) &
}
# finish STEP SECS: wait for STEP's end, print its output and exit code.
finish() {
	waitfor "$1.rc" . "$2" >/dev/null
	sed "s/^/XPMEM-KILL-OUT $1 /" "$1.out" 2>/dev/null
	echo "XPMEM-KILL-RC $1 rc=$(cat "$1.rc" 2>/dev/null || echo none)"
}
# kill_vm VM POINT READY: SIGKILL the VM's process (READY: its point was reached).
kill_vm() {
	p=$(pid_of "$1" vmm.out)
	if [ -n "$p" ]; then
		kill -9 "$p"
		echo "XPMEM-KILL kill vm=$1 point=$2 pid=$p rc=$? ready=$3 at=$(up)"
	else
		echo "XPMEM-KILL kill vm=$1 point=$2 pid=none ready=$3"
	fi
}
# forbid_vm VM POINT: the VM's process's main thread runs a forbidden system call.
forbid_vm() {
	p=$(pid_of "$1" vmm.out)
	if [ -n "$p" ]; then
		out=$(./xpmem-inject --pid "$p" --syscall @FORBIDDEN@ 2>&1)
		rc=$?
		echo "$out" | sed 's/^/XPMEM-KILL-INJECT /'
		echo "XPMEM-KILL kill vm=$1 point=$2 pid=$p rc=$rc ready=yes at=$(up)"
	else
		echo "XPMEM-KILL kill vm=$1 point=$2 pid=none ready=yes"
	fi
}
ok() { if "$@" >/dev/null; then echo yes; else echo no; fi; }

echo "XPMEM-CASE-BEGIN kill"
(
	timeout -s KILL 1500 ./xpmem-vmm --config kill.toml </dev/null 2>&1
	echo "XPMEM-CASE-END kill rc=$? at=$(up)"
) | tee vmm.out &
vmm=$!
for vm in @VMS@; do
	timeout -s KILL 600 ./xpmem-vmm exec --socket $vm.vsock --wait 500 -- true >/dev/null 2>&1
	echo "XPMEM-KILL ready vm=$vm rc=$? at=$(up)"
done
# Every VM process and the broker run under their seccomp filter with no_new_privs.
sandbox() { # NAME PID
	st=/proc/$2/status
	echo "XPMEM-KILL sandbox who=$1 pid=$2 seccomp=$(sed -n 's/^Seccomp:[[:space:]]*//p' $st 2>/dev/null) nnp=$(sed -n 's/^NoNewPrivs:[[:space:]]*//p' $st 2>/dev/null)"
}
for vm in @VMS@; do
	sandbox $vm "$(pid_of $vm vmm.out)"
done
sandbox broker "$(sed -n 's/^PPid:[[:space:]]*//p' /proc/$(pid_of x vmm.out)/status 2>/dev/null)"

# 1. exporting with an importer attached
ex e-exp ve 900 xpmem-test export-hold --name kill-e --timeout 900
waitfor e-exp.out "NAMED kill-e" 60
ex e-imp y 120 xpmem-test attach-kill --name kill-e --timeout 90
r=$(ok waitfor e-imp.out "attach-kill READ" 90)
kill_vm ve exporting $r
finish e-imp 150
finish e-exp 30

# 2. during a FAULT the exporter never answers
ex f-exp vf 900 "echo no_resolve >/sys/module/xpmem/parameters/test_misbehave && xpmem-test export-hold --name kill-f --timeout 900"
waitfor f-exp.out "NAMED kill-f" 60
ex f-imp y 120 xpmem-test attach-fault --name kill-f --timeout 90
r=$(ok waitfor f-imp.out "attach-fault TOUCHING" 90)
sleep 2
kill_vm vf fault $r
finish f-imp 150
finish f-exp 30

# 3. during an INVALIDATE the importer never acknowledges
ex i-exp x 120 xpmem-test export-inval-kill --name kill-i --timeout 90
waitfor i-exp.out "NAMED kill-i" 60
ex i-imp vi 900 xpmem-test attach-hostile --name kill-i --misbehave no_ack --timeout 900
r=$(ok waitfor i-exp.out "export-inval-kill UNMAPPING" 90)
sleep 1
kill_vm vi invalidate $r
finish i-exp 150
finish i-imp 30

# 4. holding a permit
ex p-exp x 300 xpmem-test export-hold --name kill-p --stop /tmp/kill-p.stop --timeout 240
waitfor p-exp.out "NAMED kill-p" 60
ex p-get vp 900 xpmem-test get-hold --name kill-p --timeout 900
r=$(ok waitfor p-get.out "get-hold GOT" 90)
kill_vm vp permits $r
finish p-get 30
timeout -s KILL 120 ./xpmem-vmm exec --socket x.vsock -- touch /tmp/kill-p.stop
finish p-exp 60

# 5. idle, then a forbidden system call
forbid_vm vz idle
waitfor vmm.out "VM vz: its process" 30 >/dev/null

# The survivors go on.
ex fin-exp x 120 xpmem-test export --name kill-final --timeout 90
waitfor fin-exp.out "NAMED kill-final" 60
ex fin-imp y 120 xpmem-test attach --name kill-final --timeout 90
finish fin-imp 150
finish fin-exp 60
ex zero-x x 60 xpmem-test proc-zero
ex zero-y y 60 xpmem-test proc-zero
finish zero-x 90
finish zero-y 90
for vm in x y; do
	timeout -s KILL 120 ./xpmem-vmm exec --socket $vm.vsock --exit 0 >/dev/null 2>&1
	echo "XPMEM-KILL exit vm=$vm rc=$?"
done
wait $vmm

# 6. the broker dies
echo "XPMEM-CASE-BEGIN kill-broker"
./xpmem-vmm --config death.toml </dev/null >death.out 2>&1 &
b=$!
(sleep 900; kill -9 $b 2>/dev/null) &
wd=$!
for vm in p q; do
	timeout -s KILL 600 ./xpmem-vmm exec --socket $vm.vsock --wait 500 -- true >/dev/null 2>&1
	echo "XPMEM-KILL death-ready vm=$vm rc=$?"
done
# 6a. a VM joins the running setup, shares memory with p, and leaves
sock=$(sed -n 's/^xpmem-vmm: more VMs can join this setup: xpmem-vmm vm --broker \([^ ]*\) .*/\1/p' death.out | head -n 1)
echo "XPMEM-KILL join-socket path=${sock:-none}"
jvm() { # NAME: the joining VM's flags
	echo "--name $1 --memory @VM_MIB@ --kernel vmlinuz --initrd guest.cpio.gz --no-net"
}
# A name the setup has is refused, before any VM is built.
timeout -s KILL 60 ./xpmem-vmm vm --broker "$sock" $(jvm p) --cmdline "xpmem.name=p xpmem.run=agent" </dev/null >join-dup.out 2>&1
echo "XPMEM-KILL join-dup rc=$? said=$(grep -c 'cannot join the setup' join-dup.out)"
sed 's/^/XPMEM-KILL-JOIN-DUP /' join-dup.out
(
	timeout -s KILL 900 ./xpmem-vmm vm --broker "$sock" $(jvm j) --cmdline "xpmem.name=j xpmem.run=agent xpmem.out=kmsg" </dev/null >join.out 2>&1
	echo "XPMEM-KILL join-exit rc=$?" >join-exit.out
) &
waitfor join.out "VM j: vsock cid" 120 >/dev/null
ln -sf "$(sed -n 's/^xpmem-vmm: VM j: vsock cid [0-9]*, host socket \([^ ]*\) .*/\1/p' join.out | head -n 1)" j.vsock
timeout -s KILL 600 ./xpmem-vmm exec --socket j.vsock --wait 500 -- true >/dev/null 2>&1
echo "XPMEM-KILL join-ready rc=$?"
ex jn-exp p 120 xpmem-test export --name kill-join --timeout 90
waitfor jn-exp.out "NAMED kill-join" 60
ex jn-imp j 120 xpmem-test attach --name kill-join --timeout 90
finish jn-imp 150
finish jn-exp 60
ex jn-zero j 60 xpmem-test proc-zero
finish jn-zero 90
timeout -s KILL 120 ./xpmem-vmm exec --socket j.vsock --exit 0 >/dev/null 2>&1
waitfor join-exit.out rc= 120 >/dev/null
cat join-exit.out
waitfor death.out "VM j left the setup" 30 >/dev/null
echo "XPMEM-KILL join-left rc=$?"
grep -E '^xpmem-vmm:|XPMEM-GUEST ' join.out | sed 's/^/XPMEM-KILL-JOIN /'

pids="$(pid_of p death.out) $(pid_of q death.out)"
t0=$(up)
kill -9 $b
echo "XPMEM-KILL death-killed broker=$b rc=$? vms=$(echo $pids | tr ' ' ,) at=$t0"
# A process is left while its /proc entry exists and is not a zombie.
alive() {
	l=
	for p in $pids; do
		s=$(sed 's/.*) //' /proc/$p/stat 2>/dev/null | cut -d' ' -f1)
		[ -n "$s" ] && [ "$s" != Z ] && l="$l$p:$s,"
	done
	for d in /proc/[0-9]*; do
		tr '\0' ' ' <$d/cmdline 2>/dev/null | grep -q '^/proc/self/exe vm-process ' || continue
		s=$(sed 's/.*) //' $d/stat 2>/dev/null | cut -d' ' -f1)
		[ -n "$s" ] && [ "$s" != Z ] && l="$l${d#/proc/}:$s,"
	done
	echo "$l"
}
i=0
left=$(alive)
while [ -n "$left" ] && [ $i -lt @ORPHAN_TICKS@ ]; do
	sleep 0.2
	i=$((i + 1))
	left=$(alive)
done
echo "XPMEM-KILL death-gone left=${left:-none} from=$t0 to=$(up)"
for d in ${XDG_RUNTIME_DIR:+$XDG_RUNTIME_DIR/xpmem-vmm-$b} ${TMPDIR:-/tmp}/xpmem-vmm-$b; do
	if [ -d "$d" ]; then
		echo "XPMEM-KILL death-rundir path=$d state=left contents=$(ls "$d" | tr '\n' ,)"
		rm -rf "$d"
	else
		echo "XPMEM-KILL death-rundir path=$d state=gone"
	fi
done
for p in $(echo "$left" | tr ',' ' '); do kill -9 ${p%%:*} 2>/dev/null; done
kill $wd 2>/dev/null
wait $b
grep -E '^xpmem-vmm:|XPMEM-GUEST ' death.out | sed 's/^/XPMEM-KILL-DEATH /'
echo "XPMEM-CASE-END kill-broker"
kill $hb 2>/dev/null
"#;

fn script() -> String {
    let ticks = ORPHAN_LIMIT_S * 5;
    format!(
        "{}{}",
        nested::HEARTBEAT,
        SCRIPT
            .replace("@VMS@", &vms().join(" "))
            .replace("@FORBIDDEN@", &FORBIDDEN_SYSCALL.to_string())
            .replace("@ORPHAN_TICKS@", &ticks.to_string())
            .replace("@VM_MIB@", &VM_MIB.to_string())
    )
}

/// One guest command (an `ex` step of the script): its output and exit code.
#[derive(Debug, Default, Clone)]
struct Step {
    lines: Vec<String>,
    rc: Option<i32>,
}

impl Step {
    /// The verdict of `case`'s PASS/FAIL line, with the exit code.
    fn verdict(&self, case: &str) -> Status {
        let mut passed = false;
        for l in &self.lines {
            if let Some((c, v, rest)) = test_line(l) {
                match (c == case, v) {
                    (true, "PASS") => passed = true,
                    (_, "FAIL") => return Status::Fail(format!("{c}: {rest}")),
                    _ => {}
                }
            }
        }
        match (passed, self.rc) {
            (true, Some(0)) => Status::Pass,
            (true, rc) => Status::Fail(format!("{case} passed but exited with {rc:?}")),
            (false, rc) => Status::Fail(format!(
                "no result from {case} (exit code {rc:?}; last output: {:?})",
                self.lines.last()
            )),
        }
    }

    /// The number after `key` in `case`'s NOTE lines.
    fn note_number(&self, case: &str, key: &str) -> Option<f64> {
        self.lines.iter().find_map(|l| {
            let (c, v, rest) = test_line(l)?;
            (c == case && v == "NOTE")
                .then(|| word_after(rest, key)?.parse().ok())
                .flatten()
        })
    }
}

/// A victim's kill as the script did it.
#[derive(Debug, Clone, PartialEq)]
struct Kill {
    point: String,
    pid: Option<u32>,
    rc: Option<i32>,
    /// The point was reached (the script saw the line it waited for).
    ready: bool,
}

/// What the run printed.
#[derive(Debug, Default)]
pub struct Parsed {
    /// Agents that answered: VM -> exit code of `exec true`.
    ready: BTreeMap<String, i32>,
    /// Process (VM name or `broker`) -> (Seccomp mode, NoNewPrivs) from /proc.
    sandbox: BTreeMap<String, (String, String)>,
    steps: BTreeMap<String, Step>,
    kills: BTreeMap<String, Kill>,
    /// The broker's "its process ..." lines: VM -> what it said.
    died: BTreeMap<String, String>,
    /// Numbers of the calls a process's seccomp handler said were forbidden.
    forbidden: Vec<u32>,
    /// `xpmem-inject`'s output lines.
    inject: Vec<String>,
    /// "xpmem objects the guest left: ..." per VM.
    left: BTreeMap<String, String>,
    /// `exec --exit 0` exit codes of the survivors.
    exits: BTreeMap<String, i32>,
    held_zero: Option<bool>,
    forced: Option<u64>,
    monitor_rc: Option<i32>,
    /// The broker-death run.
    death_ready: BTreeMap<String, i32>,
    death_killed: bool,
    death_vms: usize,
    death_left: Option<String>,
    death_secs: Option<f64>,
    death_rundir: Vec<String>,
    /// The VM that joins the broker-death setup.
    join_socket: Option<String>,
    /// (exit code, lines saying "cannot join the setup") of the refused duplicate.
    join_dup: Option<(i32, u32)>,
    join_ready: Option<i32>,
    join_exit: Option<i32>,
    join_left: Option<i32>,
    pub notes: Vec<String>,
}

fn num<T: std::str::FromStr>(text: &str, key: &str) -> Option<T> {
    word_after(text, key).and_then(|v| v.parse().ok())
}

impl Parsed {
    pub fn feed(&mut self, line: &str) {
        if let Some(rest) = line.strip_prefix("XPMEM-KILL-OUT ") {
            let (step, text) = rest.split_once(' ').unwrap_or((rest, ""));
            self.steps
                .entry(step.to_string())
                .or_default()
                .lines
                .push(text.to_string());
        } else if let Some(rest) = line.strip_prefix("XPMEM-KILL-RC ") {
            let (step, text) = rest.split_once(' ').unwrap_or((rest, ""));
            self.steps.entry(step.to_string()).or_default().rc = num(text, "rc=");
        } else if let Some(rest) = line.strip_prefix("XPMEM-KILL-INJECT ") {
            self.inject.push(rest.to_string());
        } else if let Some(rest) = line.strip_prefix("xpmem-vmm: seccomp: forbidden system call ") {
            if let Some(nr) = rest.split_whitespace().next().and_then(|n| n.parse().ok()) {
                self.forbidden.push(nr);
            }
        } else if let Some(rest) = line.strip_prefix("XPMEM-KILL sandbox ") {
            if let Some(who) = word_after(rest, "who=") {
                let field = |k| word_after(rest, k).unwrap_or("").to_string();
                self.sandbox
                    .insert(who.to_string(), (field("seccomp="), field("nnp=")));
            }
        } else if let Some(rest) = line.strip_prefix("XPMEM-KILL ready ") {
            if let (Some(vm), Some(rc)) = (word_after(rest, "vm="), num(rest, "rc=")) {
                self.ready.insert(vm.to_string(), rc);
            }
        } else if let Some(rest) = line.strip_prefix("XPMEM-KILL kill ") {
            if let (Some(vm), Some(point)) = (word_after(rest, "vm="), word_after(rest, "point=")) {
                self.kills.insert(
                    vm.to_string(),
                    Kill {
                        point: point.to_string(),
                        pid: num(rest, "pid="),
                        rc: num(rest, "rc="),
                        ready: word_after(rest, "ready=") == Some("yes"),
                    },
                );
            }
        } else if let Some(rest) = line.strip_prefix("XPMEM-KILL exit ") {
            if let (Some(vm), Some(rc)) = (word_after(rest, "vm="), num(rest, "rc=")) {
                self.exits.insert(vm.to_string(), rc);
            }
        } else if let Some(rest) = line.strip_prefix("XPMEM-KILL death-ready ") {
            if let (Some(vm), Some(rc)) = (word_after(rest, "vm="), num(rest, "rc=")) {
                self.death_ready.insert(vm.to_string(), rc);
            }
        } else if let Some(rest) = line.strip_prefix("XPMEM-KILL death-killed ") {
            self.death_killed = num::<i32>(rest, "rc=") == Some(0);
            self.death_vms = word_after(rest, "vms=")
                .unwrap_or("")
                .split(',')
                .filter(|p| p.parse::<u32>().is_ok())
                .count();
        } else if let Some(rest) = line.strip_prefix("XPMEM-KILL death-gone ") {
            self.death_left = word_after(rest, "left=").map(str::to_string);
            self.death_secs = num::<f64>(rest, "to=")
                .zip(num::<f64>(rest, "from="))
                .map(|(t, f)| t - f);
        } else if let Some(rest) = line.strip_prefix("XPMEM-KILL death-rundir ") {
            self.death_rundir.push(rest.to_string());
        } else if let Some(rest) = line.strip_prefix("XPMEM-KILL join-socket ") {
            self.join_socket = word_after(rest, "path=")
                .filter(|p| *p != "none")
                .map(str::to_string);
        } else if let Some(rest) = line.strip_prefix("XPMEM-KILL join-dup ") {
            self.join_dup = num(rest, "rc=").zip(num(rest, "said="));
        } else if let Some(rest) = line.strip_prefix("XPMEM-KILL join-ready ") {
            self.join_ready = num(rest, "rc=");
        } else if let Some(rest) = line.strip_prefix("XPMEM-KILL join-exit ") {
            self.join_exit = num(rest, "rc=");
        } else if let Some(rest) = line.strip_prefix("XPMEM-KILL join-left ") {
            self.join_left = num(rest, "rc=");
        } else if let Some(rest) = line.strip_prefix("XPMEM-CASE-END kill ") {
            // Not "XPMEM-CASE-END kill-broker".
            self.monitor_rc = num(rest, "rc=");
        } else if let Some((zero, total)) = crate::cases::domain_at_exit(line) {
            self.held_zero = Some(zero);
            self.forced = num(total, "invalidations_forced=");
            let rest = line.trim_start_matches("xpmem-vmm: xpmem domain at exit: ");
            self.notes.push(format!("domain at exit: {rest}"));
        } else if let Some(rest) = line.strip_prefix("xpmem-vmm: VM ") {
            let Some((vm, text)) = rest.split_once(": ") else {
                return;
            };
            if let Some(what) = text.strip_prefix("its process ") {
                self.died.insert(vm.to_string(), what.to_string());
            } else if let Some(what) = text.strip_prefix("xpmem objects the guest left: ") {
                self.left.insert(vm.to_string(), what.to_string());
            }
        }
    }

    fn step(&self, name: &str) -> Step {
        self.steps.get(name).cloned().unwrap_or_default()
    }

    /// The victim of `point` was killed when its point was reached, and the
    /// broker said it died of SIGKILL.
    fn killed(&self, point: &str, vm: &str) -> Status {
        let Some(k) = self.kills.get(vm) else {
            return Status::Fail(format!("the script never killed {vm}"));
        };
        if k.point != point || k.pid.is_none() || k.rc != Some(0) {
            return Status::Fail(format!(
                "the kill of {vm} failed: {k:?} (no pid from its booting line, or kill failed)"
            ));
        }
        if !k.ready {
            return Status::Fail(format!(
                "{vm} was killed without its point `{point}` having been reached"
            ));
        }
        let want = if point == "idle" {
            "was killed by signal 31 (SIGSYS)"
        } else {
            "was killed by signal 9 (SIGKILL)"
        };
        match self.died.get(vm) {
            Some(what) if what == want => Status::Pass,
            Some(what) => Status::Fail(format!("the broker says VM {vm}: its process {what}")),
            None => Status::Fail(format!("the broker never reported {vm}'s process dying")),
        }
    }

    pub fn judge(&self) -> Vec<CaseResult> {
        let deadline_s = DEADLINE_MS as f64 / 1000.0;
        let mut out = Vec::new();
        let mut push = |case: &str, status: Status| out.push(CaseResult::new(G, case, status));

        let not_ready: Vec<String> = vms()
            .iter()
            .filter(|vm| self.ready.get(**vm) != Some(&0))
            .map(|vm| vm.to_string())
            .collect();
        push(
            "setup/agents-answer",
            if not_ready.is_empty() {
                Status::Pass
            } else {
                Status::Fail(format!("no answer from the agent of {not_ready:?}"))
            },
        );

        // Seccomp mode 2 is a filter; every VM process and the broker must run under one.
        let unfiltered: Vec<String> = vms()
            .into_iter()
            .map(|vm| vm.to_string())
            .chain(std::iter::once("broker".to_string()))
            .filter(|who| {
                self.sandbox.get(who).map(|(s, n)| (s.as_str(), n.as_str())) != Some(("2", "1"))
            })
            .collect();
        push(
            "setup/seccomp-filtered",
            if unfiltered.is_empty() {
                Status::Pass
            } else {
                Status::Fail(format!(
                    "not under a seccomp filter with no_new_privs: {unfiltered:?} ({:?})",
                    self.sandbox
                ))
            },
        );

        // 1. exporting
        push("exporting/killed", self.killed("exporting", "ve"));
        push(
            "exporting/importer-sigbus",
            self.step("e-imp").verdict("attach-kill"),
        );

        // 2. fault
        push("fault/killed", self.killed("fault", "vf"));
        let f = self.step("f-imp");
        let touch = f.note_number("attach-fault", "ended after ");
        push(
            "fault/importer-sigbus",
            match (f.verdict("attach-fault"), touch) {
                (Status::Pass, Some(t)) if t >= 1.5 && t <= deadline_s - 1.5 => Status::Pass,
                (Status::Pass, t) => Status::Fail(format!(
                    "the touch ended after {t:?} s: want 1.5 s (the FAULT was pending when vf \
                     was killed 2 s in) to {:.1} s (the kill, not the {deadline_s} s resolve \
                     timeout, ended it)",
                    deadline_s - 1.5
                )),
                (fail, _) => fail,
            },
        );

        // 3. invalidate
        push("invalidate/killed", self.killed("invalidate", "vi"));
        let i = self.step("i-exp");
        let munmap_ms = i.note_number("export-inval-kill", "took ");
        push(
            "invalidate/munmap-returns",
            match (i.verdict("export-inval-kill"), munmap_ms) {
                (Status::Pass, Some(ms)) if ms >= 700.0 && ms <= (DEADLINE_MS - 1000) as f64 => {
                    Status::Pass
                }
                (Status::Pass, ms) => Status::Fail(format!(
                    "x's munmap took {ms:?} ms: want 700 ms (the invalidation was pending when \
                     vi was killed 1 s in) to {} ms (deadline {DEADLINE_MS} ms - 1 s)",
                    DEADLINE_MS - 1000
                )),
                (fail, _) => fail,
            },
        );
        push(
            "invalidate/no-forced-revocation",
            match self.forced {
                Some(0) => Status::Pass,
                Some(n) => Status::Fail(format!(
                    "the broker counted invalidations_forced={n}: an importer target was revoked by \
                     force instead of ending with its VM"
                )),
                None => Status::Fail("the broker printed no domain report".into()),
            },
        );

        // 4. permits
        push("permits/killed", self.killed("permits", "vp"));
        push(
            "permits/exporter-removes",
            self.step("p-exp").verdict("export-hold"),
        );

        // 5. idle, then a forbidden system call
        push("idle/killed", self.killed("idle", "vz"));
        push(
            "idle/forbidden-call-reported",
            match (self.forbidden.as_slice(), self.inject.iter().any(|l| l.contains(" done"))) {
                ([nr], true) if *nr == FORBIDDEN_SYSCALL => Status::Pass,
                (calls, injected) => Status::Fail(format!(
                    "want xpmem-inject to run system call {FORBIDDEN_SYSCALL} in vz's process and that \
                     process alone to report it forbidden; inject said {:?} (done: {injected}), \
                     processes reported {calls:?}",
                    self.inject
                )),
            },
        );

        let victims_failed: Vec<String> = VICTIM_STEPS
            .iter()
            .flat_map(|s| {
                self.step(s)
                    .lines
                    .into_iter()
                    .filter(|l| test_line(l).is_some_and(|(_, v, _)| v == "FAIL"))
                    .map(move |l| format!("{s}: {l}"))
            })
            .collect();
        push(
            "victims/no-failure-before-the-kill",
            if victims_failed.is_empty() {
                Status::Pass
            } else {
                Status::Fail(victims_failed.join("; "))
            },
        );

        // The survivors go on.
        push("survivors/export", self.step("fin-exp").verdict("export"));
        push("survivors/attach", self.step("fin-imp").verdict("attach"));
        for vm in SURVIVORS {
            push(
                &format!("survivors/{vm}-proc-zero"),
                self.step(&format!("zero-{vm}")).verdict("proc-zero"),
            );
            push(
                &format!("survivors/{vm}-kept-running"),
                match (self.died.get(vm), self.exits.get(vm)) {
                    (None, Some(0)) => Status::Pass,
                    (Some(what), _) => {
                        Status::Fail(format!("the broker says VM {vm}: its process {what}"))
                    }
                    (None, rc) => Status::Fail(format!(
                        "{vm}'s agent did not end it (exec --exit 0: {rc:?})"
                    )),
                },
            );
            push(
                &format!("survivors/{vm}-left-nothing"),
                match self.left.get(vm) {
                    Some(l)
                        if l.starts_with("none") || l == "segments=0 permits=0 attachments=0" =>
                    {
                        Status::Pass
                    }
                    Some(l) => Status::Fail(format!("{vm} left xpmem objects: {l}")),
                    None => Status::Fail(format!("no at-exit report of {vm}'s xpmem objects")),
                },
            );
        }

        // The broker.
        let others: Vec<String> = self
            .died
            .iter()
            .filter(|(vm, _)| !POINTS.iter().any(|(_, v)| v == vm))
            .map(|(vm, what)| format!("{vm}: {what}"))
            .collect();
        push(
            "broker/only-victims-died",
            if others.is_empty() {
                Status::Pass
            } else {
                Status::Fail(format!("the broker also reported {others:?}"))
            },
        );
        push(
            "broker/domain-held-zero",
            match self.held_zero {
                Some(true) => Status::Pass,
                Some(false) => {
                    Status::Fail("the broker's domain still held something at exit".into())
                }
                None => Status::Fail("the broker printed no domain report".into()),
            },
        );
        push(
            "broker/exit-status-1",
            match self.monitor_rc {
                Some(1) => Status::Pass,
                rc => Status::Fail(format!(
                    "the monitor exited with {rc:?}; want 1 (VM processes were killed; 137: its deadline)"
                )),
            },
        );

        // 6. the broker dies.
        let death_ready = ["p", "q"]
            .iter()
            .all(|vm| self.death_ready.get(*vm) == Some(&0));
        push(
            "broker-death/vms-ready",
            if death_ready && self.death_killed && self.death_vms == 2 {
                Status::Pass
            } else {
                Status::Fail(format!(
                    "agents {:?}, broker killed {}, {} VM pids",
                    self.death_ready, self.death_killed, self.death_vms
                ))
            },
        );
        push(
            "broker-death/no-orphans",
            match (&self.death_left, self.death_secs) {
                (Some(l), Some(s)) if l == "none" && s <= ORPHAN_LIMIT_S as f64 + 1.0 => {
                    Status::Pass
                }
                (l, s) => Status::Fail(format!(
                    "VM processes left {l:?} after {s:?} s (limit {ORPHAN_LIMIT_S} s)"
                )),
            },
        );
        push(
            "join/duplicate-refused",
            match (&self.join_socket, self.join_dup) {
                (None, _) => Status::Fail("the broker printed no socket to join".into()),
                (Some(_), Some((rc, said))) if rc == 1 && said > 0 => Status::Pass,
                (Some(_), dup) => Status::Fail(format!(
                    "a VM named like a running one: (exit code, refusals said) {dup:?}, want exit 1 with `cannot join the setup`"
                )),
            },
        );
        push(
            "join/agent-answers",
            match self.join_ready {
                Some(0) => Status::Pass,
                rc => Status::Fail(format!("the joined VM's agent: exit code {rc:?}")),
            },
        );
        push(
            "join/export-to-joined",
            self.step("jn-exp").verdict("export"),
        );
        push(
            "join/joined-attaches",
            self.step("jn-imp").verdict("attach"),
        );
        push(
            "join/joined-proc-zero",
            self.step("jn-zero").verdict("proc-zero"),
        );
        push(
            "join/leaves",
            match (self.join_exit, self.join_left) {
                (Some(0), Some(0)) => Status::Pass,
                (exit, left) => Status::Fail(format!(
                    "the joined VM's monitor exited {exit:?}; the broker saying it left: {left:?} (0: said)"
                )),
            },
        );
        out
    }

    /// The run's figures.
    pub fn summary(&self) -> String {
        let f = self.step("f-imp");
        let i = self.step("i-exp");
        let e = self.step("e-imp");
        format!(
            "y's SIGBUS {:?} s after ve's kill point; y's FAULT ended after {:?} s (vf killed 2 s in, \
             resolve timeout {} ms); x's munmap {:?} ms (vi killed 1 s in, deadline {DEADLINE_MS} ms); \
             broker death: VM processes left {} after {:?} s; runtime directory: {}",
            e.note_number("attach-kill", "SIGBUS "),
            f.note_number("attach-fault", "ended after "),
            DEADLINE_MS,
            i.note_number("export-inval-kill", "took "),
            self.death_left.as_deref().unwrap_or("?"),
            self.death_secs,
            if self.death_rundir.is_empty() {
                "?".to_string()
            } else {
                self.death_rundir.join("; ")
            }
        )
    }
}

pub fn run(env: &Env, opts: nested::Options) -> Result<Vec<CaseResult>, Error> {
    if let Some(missing) = crate::cases::missing_xpmem_test(G) {
        return Ok(vec![missing]);
    }
    let mut payload = crate::cases::guest_payload(env, script())?;
    if let Some(missing) = crate::cases::ship_inject(&mut payload, G) {
        return Ok(vec![missing]);
    }
    payload.data("kill.toml", config(), 0o644);
    payload.data("death.toml", death_config(), 0o644);
    let mut opts = opts;
    opts.timeout = opts.timeout.max(std::time::Duration::from_secs(2400));
    let mut parsed = Parsed::default();
    let stopped = crate::cases::run_on_test_host(env, opts, &payload, G, &["XPMEM-KILL"], |l| {
        parsed.feed(l)
    })?;
    for note in &parsed.notes {
        println!("[{G}] {note}");
    }
    println!("[{G}] {}", parsed.summary());
    let mut results = parsed.judge();
    results.extend(stopped);
    Ok(results)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
mod tests {
    use super::*;

    fn out(step: &str, lines: &[&str], rc: i32) -> Vec<String> {
        let mut v: Vec<String> = lines
            .iter()
            .map(|l| format!("XPMEM-KILL-OUT {step} {l}"))
            .collect();
        v.push(format!("XPMEM-KILL-RC {step} rc={rc}"));
        v
    }

    /// A transcript of a run where everything went right.
    fn good() -> Vec<String> {
        let mut l: Vec<String> = vms()
            .iter()
            .map(|vm| format!("XPMEM-KILL ready vm={vm} rc=0 at=50.1"))
            .collect();
        for (i, who) in vms().iter().chain(&["broker"]).enumerate() {
            l.push(format!(
                "XPMEM-KILL sandbox who={who} pid={} seccomp=2 nnp=1",
                400 + i
            ));
        }
        l.push(
            "xpmem-vmm: VM ve: booting vmlinuz (1 vCPUs, 256 MiB, console stdout; process 301)"
                .into(),
        );
        for (i, (point, vm)) in POINTS.iter().enumerate() {
            if *point == "idle" {
                l.push(format!(
                    "XPMEM-KILL-INJECT XPMEM-INJECT pid={} syscall=110 rip=0x7f00 done",
                    300 + i
                ));
                l.push("xpmem-vmm: seccomp: forbidden system call 110 (see vmm/monitor/src/sandbox.rs); stopping this process".into());
            }
            l.push(format!(
                "XPMEM-KILL kill vm={vm} point={point} pid={} rc=0 ready=yes at=60.0",
                300 + i
            ));
            let how = if *point == "idle" {
                "31 (SIGSYS)"
            } else {
                "9 (SIGKILL)"
            };
            l.push(format!(
                "xpmem-vmm: VM {vm}: its process was killed by signal {how}"
            ));
        }
        l.extend(out(
            "e-exp",
            &[
                "XPMEM-TEST export-hold NAMED kill-e",
                "xpmem-vmm exec: the agent closed the connection before the command's exit code",
            ],
            255,
        ));
        l.extend(out(
            "e-imp",
            &[
                "XPMEM-TEST attach-kill FOUND kill-e SEGID 123",
                "XPMEM-TEST attach-kill READ 17 pages",
                "XPMEM-TEST attach-kill NOTE SIGBUS 0.4 s after READ; REVOKED events received 1",
                "XPMEM-TEST attach-kill PASS",
            ],
            0,
        ));
        l.extend(out("f-exp", &["XPMEM-TEST export-hold NAMED kill-f"], 255));
        l.extend(out(
            "f-imp",
            &[
                "XPMEM-TEST attach-fault TOUCHING data page 1",
                "XPMEM-TEST attach-fault NOTE the touch ended after 2.61 s with signal 7",
                "XPMEM-TEST attach-fault PASS",
            ],
            0,
        ));
        l.extend(out(
            "i-exp",
            &[
                "XPMEM-TEST export-inval-kill NAMED kill-i",
                "XPMEM-TEST export-inval-kill UNMAPPING 16 pages",
                "XPMEM-TEST export-inval-kill NOTE munmap of 16 pages took 1450.2 ms (device deadline 8000 ms); INVALIDATEs sent 1, importer targets revoked by force 0",
                "XPMEM-TEST export-inval-kill PASS",
            ],
            0,
        ));
        l.extend(out(
            "i-imp",
            &["XPMEM-TEST attach-hostile FOUND kill-i SEGID 5"],
            255,
        ));
        l.extend(out(
            "p-exp",
            &[
                "XPMEM-TEST export-hold NAMED kill-p",
                "XPMEM-TEST export-hold PASS",
            ],
            0,
        ));
        l.extend(out("p-get", &["XPMEM-TEST get-hold GOT apid 77"], 255));
        l.extend(out(
            "fin-exp",
            &[
                "XPMEM-TEST export NAMED kill-final",
                "XPMEM-TEST export PASS",
            ],
            0,
        ));
        l.extend(out(
            "fin-imp",
            &[
                "XPMEM-TEST attach READ 17 pages in 0.2 s",
                "XPMEM-TEST attach PASS",
            ],
            0,
        ));
        for vm in SURVIVORS {
            l.extend(out(
                &format!("zero-{vm}"),
                &["XPMEM-TEST proc-zero PASS"],
                0,
            ));
            l.push(format!("XPMEM-KILL exit vm={vm} rc=0"));
            l.push(format!("xpmem-vmm: VM {vm}: xpmem objects the guest left: none (its device is not active: never started by the driver, or reset)"));
        }
        l.push("xpmem-vmm: xpmem domain at exit: held vms=0 segments=0 permits=0; total resolves_issued=9 invalidations_forced=0 windows_revoked=0".into());
        l.push("XPMEM-CASE-END kill rc=1 at=200.0".into());
        l.push("XPMEM-CASE-BEGIN kill-broker".into());
        l.push("XPMEM-KILL death-ready vm=p rc=0".into());
        l.push("XPMEM-KILL death-ready vm=q rc=0".into());
        l.push("XPMEM-KILL join-socket path=/tmp/xpmem-vmm-400/broker.sock".into());
        l.push("XPMEM-KILL join-dup rc=1 said=1".into());
        l.push("XPMEM-KILL join-ready rc=0".into());
        l.extend(out(
            "jn-exp",
            &[
                "XPMEM-TEST export NAMED kill-join",
                "XPMEM-TEST export PASS",
            ],
            0,
        ));
        l.extend(out("jn-imp", &["XPMEM-TEST attach PASS"], 0));
        l.extend(out("jn-zero", &["XPMEM-TEST proc-zero PASS"], 0));
        l.push("XPMEM-KILL join-exit rc=0".into());
        l.push("XPMEM-KILL join-left rc=0".into());
        l.push("XPMEM-KILL death-killed broker=400 rc=0 vms=401,402 at=260.0".into());
        l.push("XPMEM-KILL death-gone left=none from=260.0 to=260.4".into());
        l.push(
            "XPMEM-KILL death-rundir path=/tmp/xpmem-vmm-400 state=left contents=switch.sock,"
                .into(),
        );
        l.push(
            "XPMEM-KILL-DEATH xpmem-vmm: VM p: its process was killed by signal 9 (SIGKILL)".into(),
        );
        l.push("XPMEM-CASE-END kill-broker".into());
        l
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

    fn edit(from: &str, to: &str) -> Vec<String> {
        let lines = good();
        assert!(lines.iter().any(|l| l.contains(from)), "{from}");
        lines.into_iter().map(|l| l.replace(from, to)).collect()
    }

    #[test]
    fn a_good_run_passes_every_case() {
        let mut p = Parsed::default();
        for l in good() {
            p.feed(&l);
        }
        let r = p.judge();
        assert_eq!(r.len(), 33, "{r:?}");
        assert!(r.iter().all(|c| c.status == Status::Pass), "{r:?}");
        assert!(p.summary().contains("1450.2"), "{}", p.summary());
    }

    #[test]
    fn a_duplicate_that_joins_or_a_joined_vm_that_never_leaves_fails() {
        let mut p = Parsed::default();
        for l in good() {
            let l = match l.as_str() {
                "XPMEM-KILL join-dup rc=1 said=1" => {
                    "XPMEM-KILL join-dup rc=124 said=0".to_string()
                }
                "XPMEM-KILL join-left rc=0" => "XPMEM-KILL join-left rc=1".to_string(),
                _ => l,
            };
            p.feed(&l);
        }
        let failed: Vec<String> = p
            .judge()
            .into_iter()
            .filter(|c| c.status != Status::Pass)
            .map(|c| c.name)
            .collect();
        assert_eq!(failed, ["kill/join/duplicate-refused", "kill/join/leaves"]);
    }

    #[test]
    fn a_process_without_its_seccomp_filter_fails() {
        assert_eq!(
            failed(&edit(
                "who=vz pid=406 seccomp=2 nnp=1",
                "who=vz pid=406 seccomp=0 nnp=1"
            )),
            ["kill/setup/seccomp-filtered"]
        );
        assert_eq!(
            failed(&edit(
                "who=broker pid=407 seccomp=2 nnp=1",
                "who=broker pid=407 seccomp=2 nnp=0"
            )),
            ["kill/setup/seccomp-filtered"]
        );
    }

    #[test]
    fn each_point_fails_on_its_own_evidence() {
        // The FAULT ended by the resolve timeout, not the kill; or too soon.
        assert_eq!(
            failed(&edit("ended after 2.61 s", "ended after 8.02 s")),
            ["kill/fault/importer-sigbus"]
        );
        assert_eq!(
            failed(&edit("ended after 2.61 s", "ended after 0.05 s")),
            ["kill/fault/importer-sigbus"]
        );
        // The munmap waited for the deadline, or never waited at all.
        assert_eq!(
            failed(&edit("took 1450.2 ms", "took 8012.0 ms")),
            ["kill/invalidate/munmap-returns"]
        );
        assert_eq!(
            failed(&edit("took 1450.2 ms", "took 80.0 ms")),
            ["kill/invalidate/munmap-returns"]
        );
        assert_eq!(
            failed(&edit("invalidations_forced=0", "invalidations_forced=1")),
            ["kill/invalidate/no-forced-revocation"]
        );
        assert_eq!(
            failed(&edit("attach-kill PASS", "attach-kill FAIL no SIGBUS")),
            ["kill/exporting/importer-sigbus"]
        );
        // A victim killed before its point was reached, or not by SIGKILL.
        assert_eq!(
            failed(&edit(
                "point=permits pid=303 rc=0 ready=yes",
                "point=permits pid=303 rc=0 ready=no"
            )),
            ["kill/permits/killed"]
        );
        assert_eq!(
            failed(&edit(
                "VM vz: its process was killed by signal 31 (SIGSYS)",
                "VM vz: its process was killed by signal 9 (SIGKILL)"
            )),
            ["kill/idle/killed"]
        );
        // The forbidden call must be the injected one, reported once.
        assert_eq!(
            failed(&edit(
                "forbidden system call 110",
                "forbidden system call 57"
            )),
            ["kill/idle/forbidden-call-reported"]
        );
        assert_eq!(
            failed(&edit("syscall=110 rip=0x7f00 done", "syscall=110 refused")),
            ["kill/idle/forbidden-call-reported"]
        );
        assert_eq!(
            failed(&edit(
                "get-hold GOT apid 77",
                "get-hold FAIL xpmem_get: EACCES"
            )),
            ["kill/victims/no-failure-before-the-kill"]
        );
    }

    #[test]
    fn survivors_broker_and_broker_death_fail_on_their_evidence() {
        let lines: Vec<String> = good()
            .into_iter()
            .chain(["xpmem-vmm: VM x: its process ended with status 1".to_string()])
            .collect();
        assert_eq!(
            failed(&lines),
            [
                "kill/survivors/x-kept-running",
                "kill/broker/only-victims-died"
            ]
        );
        assert_eq!(
            failed(&edit(
                "held vms=0 segments=0 permits=0",
                "held vms=0 segments=0 permits=1"
            )),
            ["kill/broker/domain-held-zero"]
        );
        assert_eq!(
            failed(&edit(
                "XPMEM-CASE-END kill rc=1",
                "XPMEM-CASE-END kill rc=137"
            )),
            ["kill/broker/exit-status-1"]
        );
        assert_eq!(
            failed(&edit("VM y: xpmem objects the guest left: none (its device is not active: never started by the driver, or reset)", "VM y: xpmem objects the guest left: segments=1 permits=0 attachments=0")),
            ["kill/survivors/y-left-nothing"]
        );
        assert_eq!(
            failed(&edit("left=none from=260.0", "left=401:S, from=260.0")),
            ["kill/broker-death/no-orphans"]
        );
        assert_eq!(
            failed(&edit("to=260.4", "to=275.0")),
            ["kill/broker-death/no-orphans"]
        );
        // The broker-death run's own lines never count for the first run.
        assert!(!failed(&good()).iter().any(|c| c.contains("only-victims")));
        let lines: Vec<String> = good()
            .into_iter()
            .filter(|l| !l.starts_with("XPMEM-KILL-OUT fin-imp"))
            .collect();
        assert_eq!(failed(&lines), ["kill/survivors/attach"]);
    }

    #[test]
    fn config_and_script_name_every_vm() {
        let c: toml::Table = config().parse().unwrap();
        let vm = c["vm"].as_array().unwrap();
        assert_eq!(vm.len(), 7);
        assert_eq!(
            c["xpmem"]["invalidate_deadline_ms"].as_integer(),
            Some(DEADLINE_MS as i64)
        );
        assert!(vm
            .iter()
            .all(|v| v["cmdline"].as_str().unwrap().contains("xpmem.run=agent")));
        let d: toml::Table = death_config().parse().unwrap();
        assert_eq!(d["vm"].as_array().unwrap().len(), 2);
        let s = script();
        assert!(s.contains("for vm in x y ve vf vi vp vz; do"));
        assert!(!s.contains("@VMS@") && !s.contains("@ORPHAN_TICKS@"));
        assert!(!s.contains("@FORBIDDEN@") && s.contains("--syscall 110"));
        for (point, vm) in POINTS {
            let how = if point == "idle" {
                "forbid_vm"
            } else {
                "kill_vm"
            };
            assert!(s.contains(&format!("{how} {vm} {point}")), "{point}");
        }
    }
}
