//! Compiles `virtio-spec/include/virtio_xpmem.h` with the system C compiler
//! and checks that every structure size, field offset, field size and
//! constant agrees with this crate, and that neither side declares a
//! structure or constant the other lacks.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;

use virtio_xpmem_wire::{all_layouts, ALL_CONSTANTS};

fn include_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../include")
}

fn header_text() -> String {
    let path = include_dir().join("virtio_xpmem.h");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The C program: prints one line per structure, field and constant.
fn c_program() -> String {
    let mut src = String::from(
        "#include <stddef.h>\n#include <stdio.h>\n#include \"virtio_xpmem.h\"\n\
         #define MEMBER_SIZE(t, m) sizeof(((t *)0)->m)\n\
         int main(void)\n{\n",
    );
    for (cname, _, fields) in all_layouts() {
        writeln!(
            src,
            "\tprintf(\"S {cname} %zu\\n\", sizeof(struct {cname}));"
        )
        .unwrap();
        for f in fields {
            let name = f.name;
            writeln!(
                src,
                "\tprintf(\"F {cname}.{name} %zu %zu\\n\", offsetof(struct {cname}, {name}), MEMBER_SIZE(struct {cname}, {name}));"
            )
            .unwrap();
        }
    }
    for (name, _) in ALL_CONSTANTS {
        writeln!(
            src,
            "\tprintf(\"C {name} %llu\\n\", (unsigned long long)({name}));"
        )
        .unwrap();
    }
    src.push_str("\treturn 0;\n}\n");
    src
}

fn compile_and_run(std: &str) -> String {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("c_agreement_{std}"));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("layout.c");
    let exe = dir.join("layout");
    std::fs::write(&src, c_program()).unwrap();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let out = Command::new(&cc)
        .arg(format!("-std={std}"))
        .args(["-Wall", "-Wextra", "-Wpadded", "-Werror", "-I"])
        .arg(include_dir())
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .output()
        .unwrap_or_else(|e| panic!("cannot run the C compiler `{cc}` (set CC): {e}"));
    assert!(
        out.status.success(),
        "compiling virtio_xpmem.h with {cc} -std={std} failed (it needs <linux/types.h> \
         from linux-libc-dev):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new(&exe).output().unwrap();
    assert!(run.status.success(), "layout program failed");
    String::from_utf8(run.stdout).unwrap()
}

fn check_against_rust(output: &str) {
    let mut c_structs = BTreeMap::new();
    let mut c_fields = BTreeMap::new();
    let mut c_consts = BTreeMap::new();
    for line in output.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        match parts.as_slice() {
            ["S", name, size] => {
                c_structs.insert(name.to_string(), size.parse::<usize>().unwrap());
            }
            ["F", name, off, size] => {
                c_fields.insert(
                    name.to_string(),
                    (
                        off.parse::<usize>().unwrap(),
                        size.parse::<usize>().unwrap(),
                    ),
                );
            }
            ["C", name, value] => {
                c_consts.insert(name.to_string(), value.parse::<u64>().unwrap());
            }
            _ => panic!("unexpected line from the layout program: {line}"),
        }
    }

    for (cname, size, fields) in all_layouts() {
        assert_eq!(c_structs.get(cname), Some(&size), "sizeof(struct {cname})");
        let mut sum = 0;
        for f in fields {
            let key = format!("{cname}.{}", f.name);
            assert_eq!(
                c_fields.get(&key),
                Some(&(f.offset, f.size)),
                "offset/size of {key} (Rust: {} {})",
                f.offset,
                f.size
            );
            sum += f.size;
        }
        // The fields cover the whole structure: C has no extra members.
        assert_eq!(sum, size, "fields of {cname} do not cover the structure");
    }
    for (name, value) in ALL_CONSTANTS {
        assert_eq!(c_consts.get(*name), Some(value), "value of {name}");
    }
}

#[test]
fn c_header_matches_rust_gnu11() {
    check_against_rust(&compile_and_run("gnu11"));
}

#[test]
fn c_header_matches_rust_c89() {
    // The kernel builds with gnu11; old userspace may not. The header must
    // not depend on C11 (the static asserts are guarded).
    check_against_rust(&compile_and_run("gnu89"));
}

#[test]
fn header_declares_nothing_the_crate_lacks() {
    let text = header_text();
    let rust_structs: Vec<&str> = all_layouts().iter().map(|l| l.0).collect();
    let rust_consts: Vec<&str> = ALL_CONSTANTS.iter().map(|c| c.0).collect();
    let mut structs = 0;
    let mut defines = 0;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("struct ") {
            if let Some(name) = rest.strip_suffix(" {") {
                structs += 1;
                assert!(
                    rust_structs.contains(&name),
                    "struct {name} is in the header but not in the crate"
                );
            }
        }
        if let Some(rest) = line.strip_prefix("#define ") {
            let name = rest.split_whitespace().next().unwrap_or("");
            if name == "_VIRTIO_XPMEM_H" {
                continue;
            }
            defines += 1;
            assert!(
                rust_consts.contains(&name),
                "#define {name} is in the header but not in the crate"
            );
        }
    }
    assert_eq!(structs, rust_structs.len(), "number of structures");
    assert_eq!(defines, rust_consts.len(), "number of constants");
}
