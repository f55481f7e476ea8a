use super::*;

/// Reports a skipped test on the real stderr (eprintln! output is captured
/// by the test harness and would hide the skip).
fn skipped(what: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED: {what}");
}

fn cfg(num_cpus: u8, ndev: usize) -> AcpiConfig {
    AcpiConfig {
        num_cpus,
        virtio_mmio: (0..ndev)
            .map(|i| MmioDeviceInfo {
                base: 0xd000_0000 + 0x1000 * i as u64,
                len: DEFAULT_MMIO_LEN,
                gsi: 5 + i as u32,
            })
            .collect(),
        irq0_to_gsi2: false,
        legacy_serial: None,
    }
}

fn le16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
}
fn le32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}
fn le64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}
fn sum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
}

fn blob<'a>(t: &'a AcpiTables, name: &str) -> &'a AcpiBlob {
    t.blobs.iter().find(|b| b.name == name).unwrap()
}

fn table_at(t: &AcpiTables, gpa: u64) -> &AcpiBlob {
    t.blobs.iter().find(|b| b.gpa == gpa).unwrap()
}

fn find_all(hay: &[u8], needle: &[u8]) -> Vec<usize> {
    hay.windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect()
}

#[test]
fn every_table_checksums_to_zero_and_length_matches() {
    let t = build_tables(&cfg(4, 3), RSDP_GPA).unwrap();
    assert_eq!(t.blobs.len(), 5);
    for b in &t.blobs[1..] {
        assert_eq!(&b.bytes[0..4], b.name.as_bytes());
        assert_eq!(le32(&b.bytes, 4) as usize, b.bytes.len(), "{}", b.name);
        assert_eq!(sum(&b.bytes), 0, "{} checksum", b.name);
    }
}

#[test]
fn rsdp_v2_points_at_xsdt() {
    let t = build_tables(&cfg(1, 1), RSDP_GPA).unwrap();
    let r = &blob(&t, "RSDP").bytes;
    assert_eq!(t.rsdp_gpa, RSDP_GPA);
    assert_eq!(blob(&t, "RSDP").gpa, RSDP_GPA);
    assert_eq!(&r[0..8], b"RSD PTR ");
    assert_eq!(r.len(), 36);
    assert_eq!(r[15], 2, "revision");
    assert_eq!(sum(&r[0..20]), 0, "ACPI 1.0 checksum");
    assert_eq!(sum(r), 0, "extended checksum");
    assert_eq!(le32(r, 20), 36, "length");
    assert_eq!(le64(r, 24), blob(&t, "XSDT").gpa);
    // Linux scans on 16-byte boundaries.
    assert_eq!(t.rsdp_gpa % 16, 0);
}

#[test]
fn xsdt_points_at_fadt_and_madt_and_fadt_at_dsdt() {
    let t = build_tables(&cfg(2, 1), RSDP_GPA).unwrap();
    let x = &blob(&t, "XSDT").bytes;
    let entries: Vec<u64> = (36..x.len()).step_by(8).map(|o| le64(x, o)).collect();
    let sigs: Vec<&str> = entries.iter().map(|&g| table_at(&t, g).name).collect();
    assert_eq!(sigs, ["FACP", "APIC"]);
    let f = &blob(&t, "FACP").bytes;
    assert_eq!(le64(f, 140), blob(&t, "DSDT").gpa, "X_DSDT");
    assert_eq!(le32(f, 40), 0, "32-bit DSDT unused");
}

#[test]
fn fadt_is_hardware_reduced_with_sleep_and_reset_registers() {
    let t = build_tables(&cfg(1, 0), RSDP_GPA).unwrap();
    let f = &blob(&t, "FACP").bytes;
    assert_eq!(f.len(), 276);
    assert_eq!(f[8], 6, "FADT major version");
    assert_eq!(f[131], 5, "FADT minor version");
    let flags = le32(f, 112);
    assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
    assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
    let io8 = |off: usize, port: u16| {
        assert_eq!(f[off], 1, "SystemIO at {off}");
        assert_eq!(f[off + 1], 8, "bit width at {off}");
        assert_eq!(f[off + 2], 0, "bit offset at {off}");
        assert_eq!(f[off + 3], 1, "byte access at {off}");
        assert_eq!(le64(f, off + 4), u64::from(port));
    };
    io8(116, RESET_PORT);
    assert_eq!(f[128], RESET_VALUE);
    io8(244, SLEEP_CONTROL_PORT);
    io8(256, SLEEP_STATUS_PORT);
}

#[test]
fn s5_value_matches_what_linux_writes() {
    // ACPICA acpi_hw_extended_sleep: (SLP_TYPa << 2) & 0x1c | SLP_EN (0x20).
    assert_eq!(SLEEP_CONTROL_S5_VALUE, 0x34);
    assert!(is_s5_request(0x34));
    assert!(!is_s5_request(0x14)); // S5 type without SLP_EN
    assert!(!is_s5_request(0x2c)); // SLP_EN with S3 type
    assert!(!is_s5_request(SLEEP_STATUS_WAK_STS));
}

fn madt_structs(m: &[u8]) -> Vec<&[u8]> {
    let mut v = Vec::new();
    let mut off = 44;
    while off < m.len() {
        let len = m[off + 1] as usize;
        assert!(len >= 2 && off + len <= m.len(), "malformed MADT");
        v.push(&m[off..off + len]);
        off += len;
    }
    v
}

#[test]
fn madt_has_one_enabled_lapic_per_vcpu_and_one_ioapic() {
    for n in [1u8, 2, 7, 255] {
        let t = build_tables(&cfg(n, 1), RSDP_GPA).unwrap();
        let m = &blob(&t, "APIC").bytes;
        assert_eq!(le32(m, 36), 0xFEE0_0000);
        let s = madt_structs(m);
        let lapics: Vec<_> = s.iter().filter(|e| e[0] == 0).collect();
        assert_eq!(lapics.len(), n as usize);
        for (i, e) in lapics.iter().enumerate() {
            assert_eq!(e.len(), 8);
            assert_eq!(e[2] as usize, i, "processor uid");
            assert_eq!(e[3] as usize, i, "apic id");
            assert_eq!(le32(e, 4) & 1, 1, "enabled");
        }
        let ioapics: Vec<_> = s.iter().filter(|e| e[0] == 1).collect();
        assert_eq!(ioapics.len(), 1);
        assert_eq!(le32(ioapics[0], 4), 0xFEC0_0000);
        assert_eq!(le32(ioapics[0], 8), 0, "GSI base");
        let nmis: Vec<_> = s.iter().filter(|e| e[0] == 4).collect();
        assert_eq!(nmis.len(), 1);
        assert_eq!(nmis[0][2], 0xff, "all processors");
        assert_eq!(nmis[0][5], 1, "LINT1");
        assert!(s.iter().all(|e| e[0] != 2), "no override unless asked");
    }
}

#[test]
fn madt_irq0_override_when_requested() {
    let mut c = cfg(1, 0);
    c.irq0_to_gsi2 = true;
    let t = build_tables(&c, RSDP_GPA).unwrap();
    let m = &blob(&t, "APIC").bytes;
    assert_eq!(sum(m), 0);
    let s = madt_structs(m);
    let isos: Vec<_> = s.iter().filter(|e| e[0] == 2).collect();
    assert_eq!(isos.len(), 1);
    assert_eq!(isos[0].len(), 10);
    assert_eq!(isos[0][3], 0, "source IRQ");
    assert_eq!(le32(isos[0], 4), 2, "GSI");
    assert_eq!(le16(isos[0], 8), 0);
}

#[test]
fn dsdt_declares_each_virtio_mmio_device() {
    let mut c = cfg(2, 4);
    c.virtio_mmio[2].len = 0x1000;
    c.virtio_mmio[3].gsi = 23;
    let t = build_tables(&c, RSDP_GPA).unwrap();
    let d = &blob(&t, "DSDT").bytes;
    let hids = find_all(d, b"\x0dLNRO0005\x00");
    assert_eq!(hids.len(), 4);
    for (i, dev) in c.virtio_mmio.iter().enumerate() {
        let start = hids[i];
        let end = hids.get(i + 1).copied().unwrap_or(d.len());
        let region = &d[start..end];
        // Memory32Fixed: tag 0x86, length 9, read-write, base, length.
        let mut mem = vec![0x86, 0x09, 0x00, 0x01];
        mem.extend_from_slice(&(dev.base as u32).to_le_bytes());
        mem.extend_from_slice(&(dev.len as u32).to_le_bytes());
        assert_eq!(find_all(region, &mem).len(), 1, "device {i} Memory32Fixed");
        // Extended interrupt: tag 0x89, length 6, consumer|edge (high,
        // exclusive), one interrupt, the GSI.
        let mut irq = vec![0x89, 0x06, 0x00, 0x03, 0x01];
        irq.extend_from_slice(&dev.gsi.to_le_bytes());
        assert_eq!(find_all(region, &irq).len(), 1, "device {i} Interrupt");
        // _UID i (small integers use Zero/One/BytePrefix encodings).
        let uid: Vec<u8> = match i {
            0 => b"_UID\x00".to_vec(),
            1 => b"_UID\x01".to_vec(),
            _ => vec![b'_', b'U', b'I', b'D', 0x0a, i as u8],
        };
        assert_eq!(find_all(region, &uid).len(), 1, "device {i} _UID");
        // The device name precedes its _HID.
        let name = format!("V{i:03X}");
        assert_eq!(&d[start - 9..start - 5], name.as_bytes());
        assert_eq!(&d[start - 5..start], b"\x08_HID");
    }
}

#[test]
fn dsdt_has_s5_package() {
    for ndev in [0, 2] {
        let t = build_tables(&cfg(1, ndev), RSDP_GPA).unwrap();
        let d = &blob(&t, "DSDT").bytes;
        // NameOp \_S5_ PackageOp PkgLength(=8) NumElements(4) 5 5 0 0
        let want = b"\x08\\_S5_\x12\x08\x04\x0a\x05\x0a\x05\x00\x00";
        assert_eq!(find_all(d, want).len(), 1);
        assert_eq!(d[8], 2, "DSDT revision 2: 64-bit integers");
    }
}

#[test]
fn layout_is_ordered_aligned_and_fits_the_bios_area() {
    let t = build_tables(&cfg(255, MAX_VIRTIO_MMIO_DEVICES - 240), RSDP_GPA).unwrap();
    let mut prev_end = t.rsdp_gpa;
    for b in &t.blobs {
        assert_eq!(b.gpa % 16, 0, "{} aligned", b.name);
        assert!(b.gpa >= prev_end, "{} overlaps", b.name);
        prev_end = b.gpa + b.bytes.len() as u64;
    }
    assert_eq!(prev_end, t.end_gpa);
    assert!(t.end_gpa <= BIOS_AREA_END);
    // Same content at another base: only addresses change.
    let t2 = build_tables(&cfg(1, 1), 0x10_0000_0000).unwrap();
    assert_eq!(le64(&blob(&t2, "RSDP").bytes, 24), blob(&t2, "XSDT").gpa);
}

#[test]
fn invalid_configs_are_refused() {
    let bad = |c: &AcpiConfig| build_tables(c, RSDP_GPA).unwrap_err();
    assert!(matches!(bad(&cfg(0, 1)), AcpiError::NoCpus));
    let mut c = cfg(1, 2);
    c.virtio_mmio[1].gsi = 0;
    assert!(matches!(bad(&c), AcpiError::BadGsi { index: 1, gsi: 0 }));
    c.virtio_mmio[1].gsi = 24;
    assert!(matches!(bad(&c), AcpiError::BadGsi { .. }));
    let mut c = cfg(1, 2);
    c.virtio_mmio[1].gsi = c.virtio_mmio[0].gsi;
    assert!(matches!(bad(&c), AcpiError::SharedGsi { .. }));
    let mut c = cfg(1, 2);
    c.virtio_mmio[1].base = c.virtio_mmio[0].base + 0x100;
    assert!(matches!(
        bad(&c),
        AcpiError::OverlappingMmio {
            first: 0,
            second: 1
        }
    ));
    let mut c = cfg(1, 1);
    c.virtio_mmio[0].base = 0xffff_ff00;
    assert!(matches!(bad(&c), AcpiError::MmioWindowOutOf32Bit { .. }));
    c.virtio_mmio[0].base = u64::MAX - 1;
    assert!(matches!(bad(&c), AcpiError::MmioWindowOutOf32Bit { .. }));
    c.virtio_mmio[0].base = 0x1000;
    c.virtio_mmio[0].len = 0;
    assert!(matches!(bad(&c), AcpiError::MmioWindowOutOf32Bit { .. }));
    let mut c = cfg(1, 0);
    c.virtio_mmio = vec![
        MmioDeviceInfo {
            base: 0,
            len: 1,
            gsi: 5
        };
        MAX_VIRTIO_MMIO_DEVICES + 1
    ];
    assert!(matches!(bad(&c), AcpiError::TooManyDevices(_)));
    assert!(matches!(
        build_tables(&cfg(1, 1), RSDP_GPA + 8),
        Err(AcpiError::MisalignedBase(_))
    ));
    assert!(matches!(
        build_tables(&cfg(1, 1), u64::MAX - 15),
        Err(AcpiError::AddressOverflow { .. })
    ));
}

/// Disassembles every table with ACPICA's iasl, when installed
/// (Debian: `apt-get install acpica-tools`).
#[test]
fn iasl_disassembles_tables() {
    let iasl = std::process::Command::new("iasl").arg("-v").output();
    if iasl.is_err() {
        skipped(
            "iasl_disassembles_tables because iasl is not installed (apt-get install acpica-tools)",
        );
        return;
    }
    let c = cfg(2, 3);
    let t = build_tables(&c, RSDP_GPA).unwrap();
    let dir = std::env::temp_dir().join(format!("vmm-acpi-iasl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for b in &t.blobs[1..] {
        let path = dir.join(format!("{}.dat", b.name.to_lowercase()));
        std::fs::write(&path, &b.bytes).unwrap();
        let out = std::process::Command::new("iasl")
            .arg("-d")
            .arg(&path)
            .current_dir(&dir)
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "iasl -d {} failed:\n{log}", b.name);
        let dsl = std::fs::read_to_string(path.with_extension("dsl")).unwrap();
        assert!(!dsl.contains("Invalid"), "{}: {dsl}", b.name);
        match b.name {
            "DSDT" => {
                assert_eq!(dsl.matches("\"LNRO0005\"").count(), 3, "{dsl}");
                assert!(dsl.contains("_S5_"), "{dsl}");
                assert!(dsl.contains("0xD0002000"), "{dsl}");
                assert!(
                    dsl.contains("Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, )"),
                    "{dsl}"
                );
            }
            "FACP" => {
                assert!(dsl.contains("Hardware Reduced (V5) : 1"), "{dsl}");
            }
            "APIC" => {
                assert_eq!(dsl.matches("Processor Local APIC").count(), 2, "{dsl}");
            }
            _ => {}
        }
    }
    if std::env::var_os("VMM_ACPI_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("iasl output kept in {}", dir.display());
    }
}

/// Output sections of `acpiexec -b "evaluate X; ..."`, keyed by the path.
fn acpiexec_sections(out: &str) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = Vec::new();
    for line in out.lines() {
        if let Some(path) = line.strip_prefix("Evaluating ") {
            v.push((path.trim().to_string(), String::new()));
        } else if let Some((_, text)) = v.last_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    v
}

/// Bytes of the hex dump lines ("    0000: 86 09 ...  // ....") of a section.
fn hex_dump_bytes(text: &str) -> Vec<u8> {
    let mut bytes = Vec::new();
    for line in text.lines() {
        let line = line.trim_start();
        let Some((off, rest)) = line.split_once(": ") else {
            continue;
        };
        if off.len() != 4 || !off.chars().all(|c| c.is_ascii_hexdigit()) {
            continue;
        }
        let hex = rest.split("//").next().unwrap_or("");
        bytes.extend(
            hex.split_whitespace()
                .map(|h| u8::from_str_radix(h, 16).unwrap()),
        );
    }
    bytes
}

/// Loads the DSDT into ACPICA's reference AML interpreter and evaluates the
/// objects Linux uses, when acpiexec is installed (acpica-tools).
#[test]
fn acpiexec_evaluates_dsdt_objects() {
    if std::process::Command::new("acpiexec")
        .arg("-v")
        .output()
        .is_err()
    {
        skipped("acpiexec_evaluates_dsdt_objects because acpiexec is not installed (apt-get install acpica-tools)");
        return;
    }
    let mut c = cfg(1, 3);
    c.virtio_mmio[1].gsi = 17;
    let t = build_tables(&c, RSDP_GPA).unwrap();
    let path = std::env::temp_dir().join(format!("vmm-acpi-dsdt-{}.dat", std::process::id()));
    std::fs::write(&path, &blob(&t, "DSDT").bytes).unwrap();
    let mut script = String::from("evaluate \\_S5_");
    for i in 0..c.virtio_mmio.len() {
        for obj in ["_HID", "_UID", "_CRS"] {
            script.push_str(&format!("; evaluate \\_SB.V{i:03X}.{obj}"));
        }
    }
    let out = std::process::Command::new("acpiexec")
        .arg("-b")
        .arg(&script)
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    let log =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "acpiexec failed:\n{log}");
    let sections = acpiexec_sections(&log);
    let get = |p: &str| {
        sections
            .iter()
            .find(|(k, _)| k == p)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("{p} not evaluated:\n{log}"))
    };
    let s5 = get("\\_S5_");
    assert!(s5.contains("[Package] Contains 4 Elements"), "{s5}");
    assert!(s5.contains("[Integer] = 0000000000000005"), "{s5}");
    for (i, d) in c.virtio_mmio.iter().enumerate() {
        let hid = get(&format!("\\_SB.V{i:03X}._HID"));
        assert!(hid.contains("\"LNRO0005\""), "{hid}");
        let uid = get(&format!("\\_SB.V{i:03X}._UID"));
        assert!(uid.contains(&format!("[Integer] = {i:016X}")), "{uid}");
        let crs = hex_dump_bytes(get(&format!("\\_SB.V{i:03X}._CRS")));
        let mut want = vec![0x86, 0x09, 0x00, 0x01];
        want.extend_from_slice(&(d.base as u32).to_le_bytes());
        want.extend_from_slice(&(d.len as u32).to_le_bytes());
        want.extend_from_slice(&[0x89, 0x06, 0x00, 0x03, 0x01]);
        want.extend_from_slice(&d.gsi.to_le_bytes());
        want.extend_from_slice(&[0x79, 0x00]); // end tag
        assert_eq!(crs, want, "device {i} _CRS");
    }
    assert!(!log.contains("AE_"), "acpiexec reported an error:\n{log}");
}

#[test]
fn dsdt_declares_com1_with_its_port_and_irq() {
    let mut c = cfg(2, 2);
    c.legacy_serial = Some(COM1);
    let t = build_tables(&c, RSDP_GPA).unwrap();
    let dsdt = &blob(&t, "DSDT").bytes;
    assert_eq!(sum(dsdt), 0);
    // EISAID("PNP0501") as AML DWordConst.
    let eisa = [0x0c, 0x41, 0xd0, 0x05, 0x01];
    assert!(dsdt.windows(5).any(|w| w == eisa), "no PNP0501 _HID");
    // IO(Decode16, 0x3f8, 0x3f8, 1, 8).
    let io = [0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x01, 0x08];
    assert!(dsdt.windows(8).any(|w| w == io), "no COM1 I/O descriptor");
    // Extended interrupt descriptor for GSI 4: consumer, edge, active high, exclusive.
    let irq = [0x89, 0x06, 0x00, 0x03, 0x01, 0x04, 0x00, 0x00, 0x00];
    assert!(dsdt.windows(9).any(|w| w == irq), "no IRQ 4 descriptor");
    // The virtio devices keep their _UIDs and windows.
    assert!(dsdt.windows(4).any(|w| w == b"V001"));
    let without = build_tables(&cfg(2, 2), RSDP_GPA).unwrap();
    assert!(blob(&without, "DSDT").bytes.len() < dsdt.len());
}

#[test]
fn serial_gsi_clash_with_a_virtio_device_is_refused() {
    let mut c = cfg(1, 1);
    c.legacy_serial = Some(LegacySerialInfo {
        port: 0x3f8,
        gsi: 5,
    });
    assert!(matches!(
        build_tables(&c, RSDP_GPA),
        Err(AcpiError::SerialGsiShared { index: 0, gsi: 5 })
    ));
    c.legacy_serial = Some(LegacySerialInfo {
        port: 0x3f8,
        gsi: 24,
    });
    assert!(matches!(
        build_tables(&c, RSDP_GPA),
        Err(AcpiError::BadSerialGsi(24))
    ));
}
