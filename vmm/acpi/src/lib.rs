//! ACPI tables for the xpmem monitor's guests: RSDP, XSDT, FADT, MADT, DSDT.
//!
//! The platform is "hardware-reduced ACPI" (no PM1 blocks, no SCI, no GPEs):
//! power-off goes through the FADT sleep control register and reboot through
//! the FADT reset register, both on I/O ports the monitor traps (see
//! [`SLEEP_CONTROL_PORT`], [`SLEEP_STATUS_PORT`], [`RESET_PORT`]). Virtio-mmio
//! devices are declared in the DSDT as `LNRO0005` devices, which is how a
//! Linux guest without `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES` finds them.
//!
//! [`build_tables`] lays every table out from one base address: the RSDP
//! first (so placing the base at [`RSDP_GPA`] lets Linux find it by scanning
//! the BIOS area as well as through `boot_params.acpi_rsdp_addr`), then the
//! XSDT, FADT, MADT and DSDT, each 16-byte aligned.

use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;

/// Conventional RSDP location inside the BIOS read-only area
/// (0xE0000..0xFFFFF), where Linux scans for it. The monitor should reserve
/// `[RSDP_GPA, AcpiTables::end_gpa)` in the e820 map.
pub const RSDP_GPA: u64 = 0xE_0000;
/// Upper end (exclusive) of the area Linux scans for the RSDP.
pub const BIOS_AREA_END: u64 = 0x10_0000;

/// FADT sleep control register (8-bit SystemIO port).
/// Linux writes `(SLP_TYP << 2) | SLP_EN` here to enter a sleep state.
pub const SLEEP_CONTROL_PORT: u16 = 0x600;
/// FADT sleep status register (8-bit SystemIO port). Linux writes
/// [`SLEEP_STATUS_WAK_STS`] to clear the wake status before sleeping and
/// polls it after; reads should return 0.
pub const SLEEP_STATUS_PORT: u16 = 0x601;
/// FADT reset register (8-bit SystemIO port).
pub const RESET_PORT: u16 = 0x602;
/// Value Linux writes to [`RESET_PORT`] to reboot.
pub const RESET_VALUE: u8 = 0x01;
/// SLP_EN bit of the sleep control register.
pub const SLEEP_CONTROL_SLP_EN: u8 = 0x20;
/// Position and mask of SLP_TYP in the sleep control register.
pub const SLEEP_CONTROL_SLP_TYP_SHIFT: u8 = 2;
pub const SLEEP_CONTROL_SLP_TYP_MASK: u8 = 0x1c;
/// WAK_STS bit of the sleep status register.
pub const SLEEP_STATUS_WAK_STS: u8 = 0x80;
/// SLP_TYP value declared by the DSDT's `_S5_` package.
pub const S5_SLP_TYP: u8 = 5;
/// What Linux writes to [`SLEEP_CONTROL_PORT`] to power off: 0x34.
pub const SLEEP_CONTROL_S5_VALUE: u8 =
    (S5_SLP_TYP << SLEEP_CONTROL_SLP_TYP_SHIFT) | SLEEP_CONTROL_SLP_EN;

/// Whether a byte written to [`SLEEP_CONTROL_PORT`] requests power-off (S5).
pub fn is_s5_request(value: u8) -> bool {
    value & SLEEP_CONTROL_SLP_EN != 0
        && (value & SLEEP_CONTROL_SLP_TYP_MASK) >> SLEEP_CONTROL_SLP_TYP_SHIFT == S5_SLP_TYP
}

/// Guest-physical address of the IOAPIC (KVM's in-kernel IOAPIC).
pub const IOAPIC_ADDR: u32 = 0xFEC0_0000;
/// Guest-physical address of the local APICs.
pub const LAPIC_ADDR: u32 = 0xFEE0_0000;
/// Pins of KVM's in-kernel IOAPIC (GSIs 0..24).
pub const IOAPIC_NUM_PINS: u32 = 24;
/// `_HID` of a virtio-mmio device.
pub const VIRTIO_MMIO_HID: &str = "LNRO0005";
/// Default window length of a virtio-mmio device.
pub const DEFAULT_MMIO_LEN: u64 = 0x200;

const OEM_ID: [u8; 6] = *b"XPMEMV";
const OEM_REVISION: u32 = 1;
/// Highest number of virtio-mmio devices (device names are `V000`..`V0FF`).
pub const MAX_VIRTIO_MMIO_DEVICES: usize = 256;

/// Errors building the tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("a VM needs at least one vCPU")]
    NoCpus,
    #[error("virtio-mmio device {index}: window {base:#x}+{len:#x} must be non-empty and lie below 4 GiB (ACPI Memory32Fixed)")]
    MmioWindowOutOf32Bit { index: usize, base: u64, len: u64 },
    #[error("virtio-mmio device {index}: GSI {gsi} is not usable; use a GSI between 5 and {max} (virtio_mmio rejects IRQ 0, low IRQs belong to legacy devices)", max = IOAPIC_NUM_PINS - 1)]
    BadGsi { index: usize, gsi: u32 },
    #[error("virtio-mmio devices {first} and {second} overlap")]
    OverlappingMmio { first: usize, second: usize },
    #[error("virtio-mmio devices {first} and {second} share GSI {gsi}; the interrupts are exclusive (edge-triggered irqfds)")]
    SharedGsi {
        first: usize,
        second: usize,
        gsi: u32,
    },
    #[error("{0} virtio-mmio devices requested; at most {MAX_VIRTIO_MMIO_DEVICES} are supported")]
    TooManyDevices(usize),
    #[error("serial port GSI {0} is not an IOAPIC input; use a GSI below {IOAPIC_NUM_PINS} (COM1 uses 4)")]
    BadSerialGsi(u32),
    #[error("virtio-mmio device {index} uses GSI {gsi}, which the serial port needs; give the device another GSI")]
    SerialGsiShared { index: usize, gsi: u32 },
    #[error("ACPI base address {0:#x} must be 16-byte aligned")]
    MisalignedBase(u64),
    #[error("ACPI tables at {base:#x} ({len:#x} bytes) overflow the address space")]
    AddressOverflow { base: u64, len: u64 },
}

/// One virtio-mmio device window and its interrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioDeviceInfo {
    /// Guest-physical base of the register window (below 4 GiB).
    pub base: u64,
    /// Window length, usually [`DEFAULT_MMIO_LEN`].
    pub len: u64,
    /// IOAPIC input (GSI) the device's irqfd is registered on.
    pub gsi: u32,
}

/// What the tables describe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcpiConfig {
    /// vCPUs, with APIC IDs 0..num_cpus.
    pub num_cpus: u8,
    /// virtio-mmio devices, in the order their `_UID`s are assigned (0, 1, ...).
    pub virtio_mmio: Vec<MmioDeviceInfo>,
    /// Add an interrupt source override ISA IRQ0 -> GSI2 (the PC wiring of
    /// the PIT). Only set this if the monitor routes the PIT to IOAPIC pin 2;
    /// KVM's default routing puts ISA IRQ n on pin n, so leave it false then.
    pub irq0_to_gsi2: bool,
    /// An 8250 UART to declare in the DSDT (`PNP0501`). In hardware-reduced
    /// ACPI mode Linux maps no legacy ISA IRQs, so without this device the
    /// serial driver gets no interrupt and user-space console output is lost.
    pub legacy_serial: Option<LegacySerialInfo>,
}

/// A legacy 8250 UART on an I/O port with an ISA interrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LegacySerialInfo {
    /// First I/O port (8 ports are decoded), e.g. 0x3f8 for COM1.
    pub port: u16,
    /// IOAPIC input (GSI), e.g. 4 for COM1.
    pub gsi: u32,
}

/// COM1 as every PC has it.
pub const COM1: LegacySerialInfo = LegacySerialInfo {
    port: 0x3f8,
    gsi: 4,
};

/// One table to copy into guest memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcpiBlob {
    pub name: &'static str,
    pub gpa: u64,
    pub bytes: Vec<u8>,
}

/// The laid-out tables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcpiTables {
    /// Where the RSDP is (== the base passed to [`build_tables`]); put it in
    /// `boot_params.acpi_rsdp_addr`.
    pub rsdp_gpa: u64,
    /// First byte after the last table; reserve `[rsdp_gpa, end_gpa)` in e820.
    pub end_gpa: u64,
    /// RSDP, XSDT, FADT, MADT, DSDT, in address order.
    pub blobs: Vec<AcpiBlob>,
}

fn align16(x: u64) -> u64 {
    (x + 15) & !15
}

/// Builds every table, laid out from `base_gpa` (usually [`RSDP_GPA`]).
pub fn build_tables(cfg: &AcpiConfig, base_gpa: u64) -> Result<AcpiTables, AcpiError> {
    validate(cfg)?;
    if base_gpa & 15 != 0 {
        return Err(AcpiError::MisalignedBase(base_gpa));
    }
    let dsdt = build_dsdt(cfg);
    let madt = build_madt(cfg);

    // Layout: RSDP, XSDT (3 entries), FADT, MADT, DSDT.
    let rsdp_len = Rsdp::len() as u64;
    let xsdt_len = 36 + 8 * 2;
    let fadt_len = acpi_tables::fadt::FADT::len() as u64;
    let total = align16(rsdp_len)
        + align16(xsdt_len)
        + align16(fadt_len)
        + align16(madt.len() as u64)
        + dsdt.len() as u64;
    let end_gpa = base_gpa
        .checked_add(total)
        .ok_or(AcpiError::AddressOverflow {
            base: base_gpa,
            len: total,
        })?;
    let xsdt_gpa = base_gpa + align16(rsdp_len);
    let fadt_gpa = xsdt_gpa + align16(xsdt_len);
    let madt_gpa = fadt_gpa + align16(fadt_len);
    let dsdt_gpa = madt_gpa + align16(madt.len() as u64);

    let fadt = build_fadt(dsdt_gpa);

    let mut xsdt = XSDT::new(OEM_ID, *b"XPMMXSDT", OEM_REVISION);
    xsdt.add_entry(fadt_gpa);
    xsdt.add_entry(madt_gpa);

    let rsdp = Rsdp::new(OEM_ID, xsdt_gpa);

    let blobs = vec![
        AcpiBlob {
            name: "RSDP",
            gpa: base_gpa,
            bytes: to_bytes(&rsdp),
        },
        AcpiBlob {
            name: "XSDT",
            gpa: xsdt_gpa,
            bytes: to_bytes(&xsdt),
        },
        AcpiBlob {
            name: "FACP",
            gpa: fadt_gpa,
            bytes: fadt,
        },
        AcpiBlob {
            name: "APIC",
            gpa: madt_gpa,
            bytes: madt,
        },
        AcpiBlob {
            name: "DSDT",
            gpa: dsdt_gpa,
            bytes: dsdt,
        },
    ];
    debug_assert_eq!(blobs[1].bytes.len() as u64, xsdt_len);
    Ok(AcpiTables {
        rsdp_gpa: base_gpa,
        end_gpa,
        blobs,
    })
}

fn validate(cfg: &AcpiConfig) -> Result<(), AcpiError> {
    if cfg.num_cpus == 0 {
        return Err(AcpiError::NoCpus);
    }
    let devs = &cfg.virtio_mmio;
    if let Some(serial) = cfg.legacy_serial {
        if serial.gsi >= IOAPIC_NUM_PINS {
            return Err(AcpiError::BadSerialGsi(serial.gsi));
        }
        if let Some(index) = devs.iter().position(|d| d.gsi == serial.gsi) {
            return Err(AcpiError::SerialGsiShared {
                index,
                gsi: serial.gsi,
            });
        }
    }
    if devs.len() > MAX_VIRTIO_MMIO_DEVICES {
        return Err(AcpiError::TooManyDevices(devs.len()));
    }
    for (index, d) in devs.iter().enumerate() {
        let end = d.base.checked_add(d.len);
        if d.len == 0 || end.is_none_or(|e| e > 1 << 32) {
            return Err(AcpiError::MmioWindowOutOf32Bit {
                index,
                base: d.base,
                len: d.len,
            });
        }
        if !(5..IOAPIC_NUM_PINS).contains(&d.gsi) {
            return Err(AcpiError::BadGsi { index, gsi: d.gsi });
        }
        for (first, o) in devs[..index].iter().enumerate() {
            if d.base < o.base + o.len && o.base < d.base + d.len {
                return Err(AcpiError::OverlappingMmio {
                    first,
                    second: index,
                });
            }
            if d.gsi == o.gsi {
                return Err(AcpiError::SharedGsi {
                    first,
                    second: index,
                    gsi: d.gsi,
                });
            }
        }
    }
    Ok(())
}

fn to_bytes(t: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    t.to_aml_bytes(&mut v);
    v
}

fn io_port_gas(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(port),
    )
}

/// IA-PC boot architecture flag: no VGA.
const IAPC_BOOT_ARCH_VGA_NOT_PRESENT: u16 = 1 << 2;

fn build_fadt(dsdt_gpa: u64) -> Vec<u8> {
    let mut fadt = FADTBuilder::new(OEM_ID, *b"XPMMFACP", OEM_REVISION)
        .dsdt_64(dsdt_gpa)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    fadt.iapc_boot_arch = IAPC_BOOT_ARCH_VGA_NOT_PRESENT.into();
    fadt.reset_reg = io_port_gas(RESET_PORT);
    fadt.reset_value = RESET_VALUE;
    fadt.sleep_control_reg = io_port_gas(SLEEP_CONTROL_PORT);
    fadt.sleep_status_reg = io_port_gas(SLEEP_STATUS_PORT);
    to_bytes(&fadt.finalize())
}

// MADT structure types and flags (ACPI 6.5 section 5.2.12).
const MADT_LOCAL_APIC: u8 = 0;
const MADT_IO_APIC: u8 = 1;
const MADT_INT_SRC_OVERRIDE: u8 = 2;
const MADT_LOCAL_APIC_NMI: u8 = 4;
const MADT_PCAT_COMPAT: u32 = 1;
const MADT_LAPIC_ENABLED: u32 = 1;
/// MPS INTI flags: polarity and trigger "conform to the bus" (ISA: edge, high).
const MPS_INTI_CONFORMS: u16 = 0;
/// All processors, in a Local APIC NMI structure.
const ALL_PROCESSORS: u8 = 0xff;

fn build_madt(cfg: &AcpiConfig) -> Vec<u8> {
    // acpi_tables' MADT has no interrupt source override or LAPIC NMI
    // structures, so the body is written here on top of its Sdt.
    let mut madt = Sdt::new(*b"APIC", 36, 5, OEM_ID, *b"XPMMAPIC", OEM_REVISION);
    let mut body = Vec::new();
    body.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    body.extend_from_slice(&MADT_PCAT_COMPAT.to_le_bytes());
    for cpu in 0..cfg.num_cpus {
        body.extend_from_slice(&[MADT_LOCAL_APIC, 8, cpu, cpu]);
        body.extend_from_slice(&MADT_LAPIC_ENABLED.to_le_bytes());
    }
    body.extend_from_slice(&[MADT_IO_APIC, 12, 0, 0]);
    body.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());
    if cfg.irq0_to_gsi2 {
        body.extend_from_slice(&[MADT_INT_SRC_OVERRIDE, 10, 0, 0]);
        body.extend_from_slice(&2u32.to_le_bytes());
        body.extend_from_slice(&MPS_INTI_CONFORMS.to_le_bytes());
    }
    body.extend_from_slice(&[MADT_LOCAL_APIC_NMI, 6, ALL_PROCESSORS]);
    body.extend_from_slice(&MPS_INTI_CONFORMS.to_le_bytes());
    body.push(1); // LINT1
    madt.append_slice(&body);
    madt.as_slice().to_vec()
}

fn build_dsdt(cfg: &AcpiConfig) -> Vec<u8> {
    let mut body = Vec::new();

    // One device per virtio-mmio window. The interrupt is edge-triggered,
    // active high, exclusive (as in Firecracker): the transport signals it
    // through an irqfd, which KVM injects as a pulse, and a pulse on a
    // level-triggered IOAPIC pin whose Remote IRR is still set is lost.
    let names: Vec<String> = (0..cfg.virtio_mmio.len())
        .map(|i| format!("V{i:03X}"))
        .collect();
    let resources: Vec<(aml::Memory32Fixed, aml::Interrupt)> = cfg
        .virtio_mmio
        .iter()
        .map(|d| {
            // validate() guarantees base + len <= 4 GiB.
            (
                aml::Memory32Fixed::new(true, d.base as u32, d.len as u32),
                aml::Interrupt::new(true, true, false, false, d.gsi),
            )
        })
        .collect();
    let uids: Vec<u32> = (0..cfg.virtio_mmio.len() as u32).collect();
    let templates: Vec<aml::ResourceTemplate> = resources
        .iter()
        .map(|(m, i)| aml::ResourceTemplate::new(vec![m, i]))
        .collect();
    let hid = aml::Name::new("_HID".into(), &VIRTIO_MMIO_HID);
    let cca = aml::Name::new("_CCA".into(), &aml::ONE);
    let uid_names: Vec<aml::Name> = uids
        .iter()
        .map(|u| aml::Name::new("_UID".into(), u))
        .collect();
    let crs_names: Vec<aml::Name> = templates
        .iter()
        .map(|t| aml::Name::new("_CRS".into(), t))
        .collect();
    let devices: Vec<aml::Device> = names
        .iter()
        .zip(uid_names.iter().zip(crs_names.iter()))
        .map(|(n, (u, c))| aml::Device::new(n.as_str().into(), vec![&hid, u, &cca, c]))
        .collect();
    // The UART (COM1) is declared first so the virtio devices keep their
    // `_UID`s; edge-triggered, active high, exclusive, as on ISA.
    let com_hid = aml::EISAName::new("PNP0501");
    let com_hid_name = aml::Name::new("_HID".into(), &com_hid);
    let com_uid = aml::Name::new("_UID".into(), &aml::ZERO);
    let com_resources = cfg.legacy_serial.map(|s| {
        (
            aml::IO::new(s.port, s.port, 1, 8),
            aml::Interrupt::new(true, true, false, false, s.gsi),
        )
    });
    let com_template = com_resources
        .as_ref()
        .map(|(io, irq)| aml::ResourceTemplate::new(vec![io, irq]));
    let com_crs = com_template
        .as_ref()
        .map(|t| aml::Name::new("_CRS".into(), t));
    let com_device = com_crs
        .as_ref()
        .map(|crs| aml::Device::new("COM1".into(), vec![&com_hid_name, &com_uid, crs]));
    let mut children: Vec<&dyn Aml> = Vec::new();
    if let Some(com) = com_device.as_ref() {
        children.push(com);
    }
    children.extend(devices.iter().map(|d| d as &dyn Aml));
    if !children.is_empty() {
        aml::Scope::new("\\_SB_".into(), children).to_aml_bytes(&mut body);
    }

    // \_S5_: SLP_TYPa = SLP_TYPb = 5; Linux powers off by writing
    // SLEEP_CONTROL_S5_VALUE to the sleep control register.
    let s5_typ = S5_SLP_TYP;
    aml::Name::new(
        "\\_S5_".into(),
        &aml::Package::new(vec![&s5_typ, &s5_typ, &aml::ZERO, &aml::ZERO]),
    )
    .to_aml_bytes(&mut body);

    let mut dsdt = Sdt::new(*b"DSDT", 36, 2, OEM_ID, *b"XPMMDSDT", OEM_REVISION);
    dsdt.append_slice(&body);
    dsdt.as_slice().to_vec()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
mod tests;
