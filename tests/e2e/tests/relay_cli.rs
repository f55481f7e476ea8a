//! `xpmem-relay` end to end with a shell script standing in for the monitor.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::process::Command;

#[test]
fn a_segid_printed_by_one_vm_is_typed_into_the_other() {
    let dir = std::env::temp_dir().join(format!("xpmem-relay-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("b.in");
    // "b" reads its FIFO only after announcing WAITING, like a guest would.
    let script = format!(
        "echo '[vm-a] [ 1.0] XPMEM-TEST export SEGID 4242 TO b'
         echo '[vm-b] [ 1.1] XPMEM-TEST attach WAITING SEGID'
         read line < {fifo}
         echo \"[vm-b] got: $line\"
         echo 'xpmem-vmm: VM b: powered off after 1.00 s' >&2
         exit 3",
        fifo = fifo.display()
    );
    let out = Command::new(env!("CARGO_BIN_EXE_xpmem-relay"))
        .args([
            "--input",
            &format!("b={}", fifo.display()),
            "--",
            "sh",
            "-c",
        ])
        .arg(&script)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(3), "{stdout}");
    assert!(
        stdout.contains("XPMEM-RELAY TYPED b SEGID 4242"),
        "{stdout}"
    );
    assert!(stdout.contains("[vm-b] got: SEGID 4242"), "{stdout}");
    assert!(stdout.contains("xpmem-vmm: VM b: powered off"), "{stdout}");
    assert!(
        stdout.trim_end().ends_with("XPMEM-RELAY EXIT rc=3"),
        "{stdout}"
    );
    assert!(!stdout.contains("UNDELIVERED"), "{stdout}");
}

#[test]
fn bad_arguments_are_usage_errors() {
    for args in [&["--input", "b"][..], &["--"][..], &["--input", "b=/x"][..]] {
        let out = Command::new(env!("CARGO_BIN_EXE_xpmem-relay"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("usage: xpmem-relay"));
    }
}
