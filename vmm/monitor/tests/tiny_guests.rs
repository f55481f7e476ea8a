//! Boot paths and console plumbing of the real `xpmem-vmm` binary, checked
//! with tiny hand-made guests on this host's /dev/kvm (which need not be able
//! to boot Linux):
//!
//! * an ELF "vmlinux" goes through linux-loader's ELF loader and is entered in
//!   64-bit mode at its ELF entry with boot_params in RSI;
//! * bytes written to the monitor's stdin reach the guest's 8250 receiver;
//! * `console = "file:PATH"` sends the console to that file, not to stdout;
//! * two VMs from one config run side by side, each with its own prefix.
//!
//! When /dev/kvm cannot be opened the tests print `SKIPPED: ... because ...`
//! to the real stderr and pass, unless `XPMEM_REQUIRE_KVM=1`, which makes
//! them fail instead.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{kvm_usable, tiny_bzimage, wait_bounded, TempDir};

const BIN: &str = env!("CARGO_BIN_EXE_xpmem-vmm");
const LIMIT: Duration = Duration::from_secs(120);

/// ACPI PM1a control port and the value for SLP_TYP=5 (S5) | SLP_EN.
const ACPI_SLEEP_CONTROL: u16 = 0x600;
const ACPI_S5: u8 = 0x34;

/// x86-64 machine code, assembled by hand.
#[derive(Default)]
struct Asm(Vec<u8>);

impl Asm {
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }

    /// `mov dx, port`
    fn mov_dx(&mut self, port: u16) -> &mut Self {
        let [lo, hi] = port.to_le_bytes();
        self.bytes(&[0x66, 0xba, lo, hi])
    }

    /// Writes `text` to COM1's transmit register.
    fn print(&mut self, text: &[u8]) -> &mut Self {
        self.mov_dx(0x3f8);
        for &b in text {
            self.bytes(&[0xb0, b, 0xee]); // mov al, b; out dx, al
        }
        self
    }

    /// ACPI S5 power-off, then halt forever should it return.
    fn power_off(&mut self) -> &mut Self {
        self.mov_dx(ACPI_SLEEP_CONTROL)
            .bytes(&[0xb0, ACPI_S5, 0xee, 0xf4, 0xeb, 0xfd])
    }

    /// Emits a short conditional jump (`opcode rel8`) whose target is
    /// patched later with [`Asm::bind`]; returns the patch position.
    fn jcc_forward(&mut self, opcode: u8) -> usize {
        self.bytes(&[opcode, 0]);
        self.0.len() - 1
    }

    /// Makes the jump at `at` land here.
    fn bind(&mut self, at: usize) {
        let rel = self.0.len() - (at + 1);
        self.0[at] = u8::try_from(rel).expect("short jump out of range");
    }

    /// `opcode rel8` back to `target`.
    fn jcc_back(&mut self, opcode: u8, target: usize) -> &mut Self {
        let rel = target as isize - (self.0.len() as isize + 2);
        let rel = i8::try_from(rel).expect("short jump out of range");
        self.bytes(&[opcode, rel as u8])
    }
}

const JB: u8 = 0x72;
const JZ: u8 = 0x74;
const JNE: u8 = 0x75;
const JA: u8 = 0x77;
const JMP: u8 = 0xeb;

/// Prints `marker` and powers off.
fn print_and_power_off(marker: &[u8]) -> Vec<u8> {
    let mut a = Asm::default();
    a.print(marker).power_off();
    a.0
}

/// Physical load address of the tiny ELF's segment (and its entry point),
/// as a vmlinux has (CONFIG_PHYSICAL_START, here 2 MiB).
const ELF_PADDR: u64 = 0x20_0000;
/// Where the PVH note's 32-bit entry points: code that prints "PVH".
const ELF_PVH_OFFSET: usize = 0x800;

/// A 64-bit x86 ELF executable shaped like a vmlinux: one PT_LOAD segment
/// linked at a kernel virtual address but loaded at physical `ELF_PADDR`,
/// a physical `e_entry`, and a PT_NOTE with a Xen PVH 32-bit entry point
/// that the monitor must not use (it enters in 64-bit mode at `e_entry`).
fn tiny_elf(code: &[u8], pvh_code: &[u8]) -> Vec<u8> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    const NOTE_OFF: usize = EHDR + 2 * PHDR;
    const SEG_OFF: usize = 0x1000;
    assert!(code.len() <= ELF_PVH_OFFSET && pvh_code.len() <= 0x800);

    // The note: namesz, descsz, type (XEN_ELFNOTE_PHYS32_ENTRY), "Xen\0", entry.
    let mut note = Vec::new();
    note.extend_from_slice(&4u32.to_le_bytes());
    note.extend_from_slice(&4u32.to_le_bytes());
    note.extend_from_slice(&18u32.to_le_bytes());
    note.extend_from_slice(b"Xen\0");
    note.extend_from_slice(&((ELF_PADDR as u32) + ELF_PVH_OFFSET as u32).to_le_bytes());

    let mut seg = vec![0u8; 0x1000];
    seg[..code.len()].copy_from_slice(code);
    seg[ELF_PVH_OFFSET..ELF_PVH_OFFSET + pvh_code.len()].copy_from_slice(pvh_code);

    let mut f = vec![0u8; SEG_OFF + seg.len()];
    let put = |f: &mut Vec<u8>, at: usize, v: &[u8]| f[at..at + v.len()].copy_from_slice(v);
    put(&mut f, 0, b"\x7fELF");
    put(&mut f, 4, &[2, 1, 1]); // ELFCLASS64, little-endian, version 1
    put(&mut f, 16, &2u16.to_le_bytes()); // ET_EXEC
    put(&mut f, 18, &62u16.to_le_bytes()); // EM_X86_64
    put(&mut f, 20, &1u32.to_le_bytes());
    put(&mut f, 24, &ELF_PADDR.to_le_bytes()); // e_entry (physical, as vmlinux)
    put(&mut f, 32, &(EHDR as u64).to_le_bytes()); // e_phoff
    put(&mut f, 52, &(EHDR as u16).to_le_bytes());
    put(&mut f, 54, &(PHDR as u16).to_le_bytes());
    put(&mut f, 56, &2u16.to_le_bytes()); // e_phnum

    // PT_LOAD, R+X.
    let ph = EHDR;
    put(&mut f, ph, &1u32.to_le_bytes());
    put(&mut f, ph + 4, &5u32.to_le_bytes());
    put(&mut f, ph + 8, &(SEG_OFF as u64).to_le_bytes());
    put(
        &mut f,
        ph + 16,
        &(0xffff_ffff_8000_0000u64 + ELF_PADDR).to_le_bytes(),
    );
    put(&mut f, ph + 24, &ELF_PADDR.to_le_bytes());
    put(&mut f, ph + 32, &(seg.len() as u64).to_le_bytes()); // p_filesz
    put(&mut f, ph + 40, &(2 * seg.len() as u64).to_le_bytes()); // p_memsz (bss)
    put(&mut f, ph + 48, &0x1000u64.to_le_bytes());
    // PT_NOTE.
    let ph = EHDR + PHDR;
    put(&mut f, ph, &4u32.to_le_bytes());
    put(&mut f, ph + 4, &4u32.to_le_bytes());
    put(&mut f, ph + 8, &(NOTE_OFF as u64).to_le_bytes());
    put(&mut f, ph + 32, &(note.len() as u64).to_le_bytes());
    put(&mut f, ph + 40, &(note.len() as u64).to_le_bytes());
    put(&mut f, ph + 48, &4u64.to_le_bytes());
    put(&mut f, NOTE_OFF, &note);
    put(&mut f, SEG_OFF, &seg);
    f
}

/// Spawns the monitor; the caller decides what stdin is.
fn spawn(args: &[&str], stdin: Stdio) -> Child {
    Command::new(BIN)
        .args(args)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn run(args: &[&str]) -> Output {
    wait_bounded(spawn(args, Stdio::null()), LIMIT)
}

fn one_vm<'a>(kernel: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--name",
        "t",
        "--memory",
        "64M",
        "--kernel",
        kernel.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    args
}

/// Guest code that checks RSI points at boot_params (boot_flag 0xaa55 at
/// 0x1fe, "HdrS" at 0x202, the command line at cmd_line_ptr starting with
/// "console=ttyS0"), prints `ok` or `bad`, and powers off.
fn check_boot_params(ok: &[u8], bad: &[u8]) -> Vec<u8> {
    let mut a = Asm::default();
    // cmp word [rsi + 0x1fe], 0xaa55
    a.bytes(&[0x66, 0x81, 0xbe, 0xfe, 0x01, 0, 0, 0x55, 0xaa]);
    let j1 = a.jcc_forward(JNE);
    // cmp dword [rsi + 0x202], "HdrS"
    a.bytes(&[0x81, 0xbe, 0x02, 0x02, 0, 0]).bytes(b"HdrS");
    let j2 = a.jcc_forward(JNE);
    // mov eax, [rsi + 0x228] (cmd_line_ptr); cmp dword [rax], "cons"
    a.bytes(&[0x8b, 0x86, 0x28, 0x02, 0, 0]);
    a.bytes(&[0x81, 0x38]).bytes(b"cons");
    let j3 = a.jcc_forward(JNE);
    a.print(ok).power_off();
    a.bind(j1);
    a.bind(j2);
    a.bind(j3);
    a.print(bad).power_off();
    a.0
}

#[test]
fn elf_vmlinux_boots_at_its_64bit_entry_with_boot_params() {
    if !kvm_usable("elf_vmlinux_boots_at_its_64bit_entry_with_boot_params") {
        return;
    }
    let dir = TempDir::new("elf");
    let elf = tiny_elf(
        &check_boot_params(b"ELF entry ok\r\n", b"ELF bad boot_params\r\n"),
        &print_and_power_off(b"PVH entry used\r\n"),
    );
    let kernel = dir.write("vmlinux", &elf);
    let out = run(&one_vm(&kernel, &[]));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    assert!(
        stdout.contains("[vm-t] ELF entry ok"),
        "stdout: {stdout:?}; stderr: {stderr}"
    );
    assert!(stderr.contains("VM t: powered off after"), "{stderr}");

    // The same guest as a bzImage passes the same boot_params check: both
    // paths share one boot setup.
    let kernel = dir.write(
        "bzImage",
        &tiny_bzimage(&check_boot_params(b"bz ok\r\n", b"bz bad\r\n")),
    );
    let out = run(&one_vm(&kernel, &[]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("[vm-t] bz ok"));
}

#[test]
fn elf_that_is_not_x86_64_is_rejected() {
    if !kvm_usable("elf_that_is_not_x86_64_is_rejected") {
        return;
    }
    let dir = TempDir::new("elf32");
    let mut elf = tiny_elf(&print_and_power_off(b"x"), &[]);
    elf[4] = 1; // ELFCLASS32
    let kernel = dir.write("vmlinux32", &elf);
    let out = run(&one_vm(&kernel, &[]));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("not a 64-bit x86 ELF"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Reads COM1 (polling LSR data-ready), echoes each byte uppercased, and
/// powers off after echoing a newline.
fn uppercase_echo() -> Vec<u8> {
    let mut a = Asm::default();
    a.print(b"ready\n");
    let top = a.0.len();
    a.mov_dx(0x3fd);
    let poll = a.0.len();
    a.bytes(&[0xec, 0xa8, 0x01]); // in al, dx; test al, 1 (data ready)
    a.jcc_back(JZ, poll);
    a.mov_dx(0x3f8).bytes(&[0xec]); // in al, dx (RBR)
    a.bytes(&[0x3c, b'a']); // cmp al, 'a'
    let below = a.jcc_forward(JB);
    a.bytes(&[0x3c, b'z']); // cmp al, 'z'
    let above = a.jcc_forward(JA);
    a.bytes(&[0x2c, 0x20]); // sub al, 0x20
    a.bind(below);
    a.bind(above);
    a.bytes(&[0xee]); // out dx, al
    a.bytes(&[0x3c, b'\n']); // cmp al, '\n'
    let done = a.jcc_forward(0x74); // je
    a.jcc_back(JMP, top);
    a.bind(done);
    a.power_off();
    a.0
}

#[test]
fn stdin_reaches_the_guest_uart() {
    if !kvm_usable("stdin_reaches_the_guest_uart") {
        return;
    }
    let dir = TempDir::new("stdin");
    let kernel = dir.write("bzImage", &tiny_bzimage(&uppercase_echo()));
    let mut child = spawn(&one_vm(&kernel, &[]), Stdio::piped());
    {
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"hello, vm 42\n").unwrap();
        // Dropping stdin closes it: the bytes already written must still
        // be delivered.
    }
    let out = wait_bounded(child, LIMIT);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    assert!(
        stdout.contains("[vm-t] ready\n[vm-t] HELLO, VM 42\n"),
        "stdout: {stdout:?}; stderr: {stderr}"
    );
}

#[test]
fn each_vm_reads_its_own_input_fifo() {
    if !kvm_usable("each_vm_reads_its_own_input_fifo") {
        return;
    }
    let dir = TempDir::new("inputfifo");
    dir.write("echo.bzImage", &tiny_bzimage(&uppercase_echo()));
    let mut writers = Vec::new();
    for name in ["p", "q"] {
        let path = dir.0.join(format!("{name}.fifo"));
        let c_path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: `c_path` is a NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        // Read-write, as a harness would: the open does not wait for the reader.
        let mut w = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        w.write_all(format!("to {name} only\n").as_bytes()).unwrap();
        writers.push(w);
    }
    let cfg = dir.write(
        "vms.toml",
        b"[[vm]]\nname = \"p\"\nmemory = 64\nkernel = \"echo.bzImage\"\ninput = \"p.fifo\"\n\
          [[vm]]\nname = \"q\"\nmemory = 64\nkernel = \"echo.bzImage\"\ninput = \"q.fifo\"\n",
    );
    // stdin stays the terminal-less null device: input comes only from the FIFOs.
    let out = wait_bounded(
        spawn(&["--config", cfg.to_str().unwrap()], Stdio::null()),
        LIMIT,
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    assert!(stdout.contains("[vm-p] TO P ONLY\n"), "stdout: {stdout:?}");
    assert!(stdout.contains("[vm-q] TO Q ONLY\n"), "stdout: {stdout:?}");
    drop(writers);
}

#[test]
fn a_missing_input_file_is_reported_before_any_vm_runs() {
    let dir = TempDir::new("noinput");
    dir.write("bzImage", &tiny_bzimage(&print_and_power_off(b"ran\n")));
    let cfg = dir.write(
        "vm.toml",
        b"[[vm]]\nname = \"m\"\nmemory = 64\nkernel = \"bzImage\"\ninput = \"missing.fifo\"\n",
    );
    let out = run(&["--config", cfg.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "stderr: {stderr}");
    assert!(
        stderr.contains("cannot open serial input") && stderr.contains("missing.fifo"),
        "stderr: {stderr}"
    );
    assert!(!text(&out.stdout).contains("ran"));
}

#[test]
fn file_console_gets_the_output_and_stdout_does_not() {
    if !kvm_usable("file_console_gets_the_output_and_stdout_does_not") {
        return;
    }
    let dir = TempDir::new("fileconsole");
    dir.write(
        "bzImage",
        &tiny_bzimage(&print_and_power_off(b"to the file\r\nline two\r\n")),
    );
    // Relative console path in a config file: beside the config file.
    let cfg = dir.write(
        "vm.toml",
        b"[[vm]]\nname = \"f\"\nmemory = 64\nkernel = \"bzImage\"\nconsole = \"file:f.console\"\n",
    );
    let out = run(&["--config", cfg.to_str().unwrap()]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    let console = std::fs::read(dir.0.join("f.console")).unwrap();
    // The file holds the raw console: no prefix.
    assert_eq!(text(&console), "to the file\r\nline two\r\n");
    assert!(!stdout.contains("to the file"), "stdout: {stdout:?}");
    assert!(!stdout.contains("[vm-f]"), "stdout: {stdout:?}");
}

/// Reads `pipe` line by line into `tx`, tagged with `tag`.
fn forward_lines(
    pipe: impl std::io::Read + Send + 'static,
    tag: &'static str,
    tx: std::sync::mpsc::Sender<(&'static str, String)>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(pipe)) {
            let Ok(line) = line else { break };
            if tx.send((tag, line)).is_err() {
                break;
            }
        }
    })
}

#[test]
fn two_vms_from_one_config_run_concurrently_and_end() {
    if !kvm_usable("two_vms_from_one_config_run_concurrently_and_end") {
        return;
    }
    let dir = TempDir::new("twovms");
    let lines = |name: &str| -> Asm {
        let mut a = Asm::default();
        for i in 0..3 {
            a.print(format!("line {i} from {name}\n").as_bytes());
        }
        a
    };
    // alpha prints, then waits for stdin (stdin = true); beta prints and
    // powers off. alpha is still running after beta has ended, and ends when
    // the test writes to stdin: the VMs run side by side.
    let mut alpha = lines("alpha");
    alpha.bytes(&uppercase_echo());
    let mut beta = lines("beta");
    beta.power_off();
    dir.write("a.bzImage", &tiny_bzimage(&alpha.0));
    dir.write("b.bzImage", &tiny_bzimage(&beta.0));
    let cfg = dir.write(
        "two.toml",
        b"[[vm]]\nname = \"alpha\"\nvcpus = 2\nmemory = 64\nkernel = \"a.bzImage\"\nstdin = true\n\
          [[vm]]\nname = \"beta\"\nmemory = \"96M\"\nkernel = \"b.bzImage\"\n",
    );
    let mut child = spawn(&["--config", cfg.to_str().unwrap()], Stdio::piped());
    let mut stdin = child.stdin.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out_reader = forward_lines(child.stdout.take().unwrap(), "stdout", tx.clone());
    let err_reader = forward_lines(child.stderr.take().unwrap(), "stderr", tx);

    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let mut take = |until: &dyn Fn(&[String], &[String]) -> bool| {
        let start = Instant::now();
        while !until(&stdout, &stderr) {
            let left = LIMIT.checked_sub(start.elapsed()).unwrap_or_default();
            match rx.recv_timeout(left) {
                Ok(("stdout", line)) => stdout.push(line),
                Ok((_, line)) => stderr.push(line),
                Err(e) => {
                    // SAFETY: signalling our own child so it does not outlive the test.
                    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
                    panic!("{e}; stdout: {stdout:?}; stderr: {stderr:?}");
                }
            }
        }
    };
    // beta has ended and alpha is waiting for input.
    take(&|out, err| {
        out.iter().any(|l| l == "[vm-alpha] ready")
            && err.iter().any(|l| l.contains("VM beta: powered off after"))
    });
    stdin.write_all(b"go on\n").unwrap();
    drop(stdin);
    take(&|_, err| {
        err.iter()
            .any(|l| l.contains("VM alpha: powered off after"))
    });
    let status = child.wait().unwrap();
    // Both pipes are at EOF once the monitor has exited.
    while let Ok((tag, line)) = rx.recv_timeout(Duration::from_secs(10)) {
        if tag == "stdout" {
            stdout.push(line);
        } else {
            stderr.push(line);
        }
    }
    out_reader.join().unwrap();
    err_reader.join().unwrap();
    assert_eq!(status.code(), Some(0), "stderr: {stderr:?}");

    // Whole lines, each with its own VM's prefix, never mixed.
    for line in &stdout {
        let ok = (line.starts_with("[vm-alpha] ")
            && (line.ends_with(" from alpha")
                || line == "[vm-alpha] ready"
                || line == "[vm-alpha] GO ON"))
            || (line.starts_with("[vm-beta] line ") && line.ends_with(" from beta"));
        assert!(ok, "unexpected console line {line:?} in {stdout:?}");
    }
    assert!(stdout.iter().any(|l| l == "[vm-alpha] GO ON"), "{stdout:?}");
    for name in ["alpha", "beta"] {
        for i in 0..3 {
            let want = format!("[vm-{name}] line {i} from {name}");
            assert!(stdout.contains(&want), "missing {want:?} in {stdout:?}");
        }
    }
}
