//! Direct 64-bit Linux boot: kernel, initramfs and command line in guest
//! memory, the zero page, GDT and identity page tables. The vCPU register
//! state lives in [`cpu`].

pub mod cpu;
pub mod gdt;
pub mod paging;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::{self, load_cmdline, BzImage, Cmdline, Elf, KernelLoader};
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::{
    MemoryLayout, CMDLINE_ADDR, CMDLINE_MAX_SIZE, GDT_ADDR, HIMEM_START, IDT_ADDR, PAGE_SIZE,
    ZERO_PAGE_ADDR,
};

/// "HdrS": the boot protocol header magic.
const HDRS_MAGIC: u32 = 0x5372_6448;
const BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// "Undefined" boot loader id (Documentation/x86/boot.rst).
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// bzImage 64-bit entry point is 0x200 bytes into the protected-mode kernel.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// Default for boot protocol < 2.03 and for ELF kernels.
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;
/// Default when the header does not say (protocol < 2.06), as Linux does.
const DEFAULT_CMDLINE_SIZE: usize = 2048;
/// Where the kernel decompresses itself when the header does not say.
const DEFAULT_PREF_ADDRESS: u64 = 0x100_0000;
/// `xloadflags` bit: the kernel has a 64-bit entry point at +0x200.
const XLF_KERNEL_64: u16 = 1 << 0;
const E820_MAX_ENTRIES_ZEROPAGE: usize = 128;

#[derive(Debug, Error)]
pub enum BootError {
    #[error("cannot open kernel {path}: {err}")]
    OpenKernel { path: PathBuf, err: std::io::Error },
    #[error("kernel {path} is not a usable bzImage or ELF vmlinux: {err}")]
    BadKernel { path: PathBuf, err: loader::Error },
    #[error("kernel {path} is a bzImage without a 64-bit entry point; use an x86-64 kernel")]
    Not64Bit { path: PathBuf },
    #[error(
        "kernel {path} is an ELF file but not a 64-bit x86 ELF (vmlinux); use an x86-64 kernel"
    )]
    NotX86_64Elf { path: PathBuf },
    #[error("kernel {path} needs {needed} bytes of RAM below 3 GiB to decompress, the VM has {available}; give it more memory")]
    KernelTooLarge {
        path: PathBuf,
        needed: u64,
        available: u64,
    },
    #[error("cannot open initramfs {path}: {err}")]
    OpenInitrd { path: PathBuf, err: std::io::Error },
    #[error("initramfs {path} ({size} bytes) does not fit in guest memory: {available} bytes are free above the kernel; give the VM more memory")]
    InitrdTooLarge {
        path: PathBuf,
        size: u64,
        available: u64,
    },
    #[error("cannot read initramfs {path}: {err}")]
    ReadInitrd { path: PathBuf, err: String },
    #[error("invalid kernel command line: {0}")]
    Cmdline(String),
    #[error("too many e820 entries ({0})")]
    TooManyE820(usize),
    #[error("cannot write boot data into guest memory: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
}

/// Where the boot vCPU starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootEntry {
    /// 64-bit entry point (RIP).
    pub entry: u64,
    /// Zero page address (RSI).
    pub zero_page: u64,
    /// Page table root (CR3).
    pub cr3: u64,
}

/// What to boot.
pub struct BootSpec<'a> {
    pub kernel: &'a Path,
    pub initrd: Option<&'a Path>,
    pub cmdline: &'a str,
    /// Guest address of the ACPI RSDP, if the VM has ACPI tables.
    pub acpi_rsdp: Option<u64>,
}

/// Checks that the kernel and initramfs can be opened, so a typo fails
/// before any VM is created.
pub fn check_files(kernel: &Path, initrd: Option<&Path>) -> Result<(), BootError> {
    File::open(kernel).map_err(|err| BootError::OpenKernel {
        path: kernel.to_path_buf(),
        err,
    })?;
    if let Some(path) = initrd {
        File::open(path).map_err(|err| BootError::OpenInitrd {
            path: path.to_path_buf(),
            err,
        })?;
    }
    Ok(())
}

/// What the first bytes of a kernel file say it is.
#[derive(Debug, PartialEq, Eq)]
enum KernelFormat {
    /// Not ELF: tried as a bzImage.
    Other,
    /// A 64-bit little-endian x86-64 ELF (a vmlinux).
    ElfX86_64,
    /// An ELF for another class or machine.
    ElfOther,
}

/// `e_ident[EI_CLASS]`, `e_ident[EI_DATA]` and `e_machine` of an x86-64 ELF.
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EM_X86_64: u16 = 62;

fn kernel_format(file: &mut File) -> std::io::Result<KernelFormat> {
    // e_ident (16 bytes), e_type (2), e_machine (2).
    let mut head = [0u8; 20];
    file.seek(SeekFrom::Start(0))?;
    let mut n = 0;
    while n < head.len() {
        match file.read(&mut head[n..])? {
            0 => break,
            k => n += k,
        }
    }
    file.seek(SeekFrom::Start(0))?;
    if n < 4 || head[..4] != *b"\x7fELF" {
        return Ok(KernelFormat::Other);
    }
    let x86_64 = n == head.len()
        && head[4] == ELFCLASS64
        && head[5] == ELFDATA2LSB
        && u16::from_le_bytes([head[18], head[19]]) == EM_X86_64;
    Ok(if x86_64 {
        KernelFormat::ElfX86_64
    } else {
        KernelFormat::ElfOther
    })
}

struct LoadedKernel {
    entry: u64,
    header: setup_header,
    /// Lowest address the initramfs may start at.
    free_from: u64,
}

fn load_kernel(
    mem: &GuestMemoryMmap,
    path: &Path,
    low_ram_end: u64,
) -> Result<LoadedKernel, BootError> {
    let open_err = |err| BootError::OpenKernel {
        path: path.to_path_buf(),
        err,
    };
    let mut file = File::open(path).map_err(open_err)?;
    let bad = |err| BootError::BadKernel {
        path: path.to_path_buf(),
        err,
    };

    let format = kernel_format(&mut file).map_err(open_err)?;
    if format == KernelFormat::ElfOther {
        return Err(BootError::NotX86_64Elf {
            path: path.to_path_buf(),
        });
    }
    if format == KernelFormat::ElfX86_64 {
        // Loaded at each segment's p_paddr (no offset), and entered at the
        // physical e_entry (vmlinux's `phys_startup_64`) in 64-bit mode with
        // boot_params in RSI, as a bzImage's +0x200 entry is. A PVH note, if
        // any, is ignored: the PVH entry is 32-bit and wants a start_info.
        let result =
            Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))).map_err(bad)?;
        // The loader copies p_filesz bytes; the rest of p_memsz (bss) must be
        // RAM too.
        if result.kernel_end > low_ram_end {
            return Err(BootError::KernelTooLarge {
                path: path.to_path_buf(),
                needed: result.kernel_end,
                available: low_ram_end,
            });
        }
        // An ELF vmlinux carries no setup header; describe it as the boot
        // protocol requires for a 64-bit entry.
        let header = setup_header {
            boot_flag: BOOT_FLAG_MAGIC,
            header: HDRS_MAGIC,
            kernel_alignment: 0x100_0000,
            initrd_addr_max: DEFAULT_INITRD_ADDR_MAX as u32,
            ..Default::default()
        };
        return Ok(LoadedKernel {
            entry: result.kernel_load.0,
            header,
            free_from: result.kernel_end,
        });
    }

    let result =
        BzImage::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))).map_err(|e| {
            // The loader reports "compressed kernel could not be read" when the
            // image is larger than guest memory.
            match e {
                loader::Error::Bzimage(loader::bzimage::Error::ReadBzImageCompressedKernel) => {
                    BootError::KernelTooLarge {
                        path: path.to_path_buf(),
                        needed: file.metadata().map(|m| m.len()).unwrap_or(0) + HIMEM_START,
                        available: low_ram_end,
                    }
                }
                other => bad(other),
            }
        })?;
    let header = result.setup_header.ok_or(BootError::Not64Bit {
        path: path.to_path_buf(),
    })?;
    if header.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(BootError::Not64Bit {
            path: path.to_path_buf(),
        });
    }
    // The kernel decompresses to `pref_address` and needs `init_size` bytes there.
    let pref = match header.pref_address {
        0 => DEFAULT_PREF_ADDRESS,
        p => p,
    };
    let decompressed_end = pref.saturating_add(u64::from(header.init_size));
    if decompressed_end > low_ram_end {
        return Err(BootError::KernelTooLarge {
            path: path.to_path_buf(),
            needed: decompressed_end,
            available: low_ram_end,
        });
    }
    Ok(LoadedKernel {
        entry: result.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET,
        header,
        free_from: result.kernel_end.max(decompressed_end),
    })
}

/// Places the initramfs as high as the kernel allows in low RAM.
/// Returns (address, size).
fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    header: &setup_header,
    free_from: u64,
    low_ram_end: u64,
) -> Result<(u64, u64), BootError> {
    let mut file = File::open(path).map_err(|err| BootError::OpenInitrd {
        path: path.to_path_buf(),
        err,
    })?;
    let size = file
        .metadata()
        .map_err(|err| BootError::OpenInitrd {
            path: path.to_path_buf(),
            err,
        })?
        .len();
    let addr_max = match header.initrd_addr_max {
        0 => DEFAULT_INITRD_ADDR_MAX,
        m => u64::from(m),
    };
    // Highest end address (exclusive) the initramfs may occupy.
    let limit = low_ram_end.min(addr_max.saturating_add(1));
    let floor = free_from.next_multiple_of(PAGE_SIZE);
    let available = limit.saturating_sub(floor);
    if size > available {
        return Err(BootError::InitrdTooLarge {
            path: path.to_path_buf(),
            size,
            available,
        });
    }
    let addr = (limit - size) & !(PAGE_SIZE - 1);
    let len = usize::try_from(size).map_err(|_| BootError::InitrdTooLarge {
        path: path.to_path_buf(),
        size,
        available,
    })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, len)
        .map_err(|e| BootError::ReadInitrd {
            path: path.to_path_buf(),
            err: e.to_string(),
        })?;
    Ok((addr, size))
}

/// Loads everything the kernel needs into guest memory and returns where the
/// boot vCPU starts.
pub fn load(
    mem: &GuestMemoryMmap,
    layout: &MemoryLayout,
    spec: &BootSpec<'_>,
) -> Result<BootEntry, BootError> {
    let low_ram_end = layout.low_ram_end();
    let kernel = load_kernel(mem, spec.kernel, low_ram_end)?;
    let mut hdr = kernel.header;

    let (ramdisk_image, ramdisk_size) = match spec.initrd {
        Some(path) => load_initrd(mem, path, &hdr, kernel.free_from, low_ram_end)?,
        None => (0, 0),
    };

    let cmdline_size = match hdr.cmdline_size {
        0 => DEFAULT_CMDLINE_SIZE,
        n => (n as usize).min(CMDLINE_MAX_SIZE as usize),
    };
    let cmdline = Cmdline::try_from(spec.cmdline, cmdline_size).map_err(|e| {
        BootError::Cmdline(format!("{e} (the kernel accepts {cmdline_size} bytes)"))
    })?;
    load_cmdline(mem, GuestAddress(CMDLINE_ADDR), &cmdline)
        .map_err(|e| BootError::Cmdline(e.to_string()))?;

    hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    hdr.boot_flag = BOOT_FLAG_MAGIC;
    hdr.header = HDRS_MAGIC;
    hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    hdr.cmdline_size = spec.cmdline.len() as u32;
    // Both are below 4 GiB by construction (placed in low RAM).
    hdr.ramdisk_image = ramdisk_image as u32;
    hdr.ramdisk_size = ramdisk_size as u32;

    let mut params = boot_params {
        hdr,
        acpi_rsdp_addr: spec.acpi_rsdp.unwrap_or(0),
        ..Default::default()
    };
    let e820 = layout.e820();
    if e820.len() > E820_MAX_ENTRIES_ZEROPAGE {
        return Err(BootError::TooManyE820(e820.len()));
    }
    for (slot, entry) in params.e820_table.iter_mut().zip(&e820) {
        *slot = boot_e820_entry {
            addr: entry.addr,
            size: entry.size,
            r#type: entry.kind,
        };
    }
    params.e820_entries = e820.len() as u8;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_ADDR))?;

    for (i, entry) in gdt::GDT.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(GDT_ADDR + (i as u64) * 8))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_ADDR))?;
    let cr3 = paging::write(mem)?;

    Ok(BootEntry {
        entry: kernel.entry,
        zero_page: ZERO_PAGE_ADDR,
        cr3,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
mod tests {
    use super::*;
    use crate::layout::MIB;
    use std::io::Write;
    use vm_memory::GuestMemoryBackend;
    use vmm_sys_util::tempfile::TempFile;

    /// A minimal image that passes linux-loader's bzImage checks.
    fn fake_bzimage(payload: usize, init_size: u32) -> TempFile {
        let setup_sects = 4u8;
        let mut img = vec![0u8; (usize::from(setup_sects) + 1) * 512 + payload];
        img[0x1f1] = setup_sects;
        img[0x202..0x206].copy_from_slice(&HDRS_MAGIC.to_le_bytes());
        img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes()); // version 2.15
        img[0x211] = 1; // loadflags: LOADED_HIGH
        img[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
        img[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
        img[0x236..0x238].copy_from_slice(&XLF_KERNEL_64.to_le_bytes());
        img[0x238..0x23c].copy_from_slice(&2048u32.to_le_bytes()); // cmdline_size
        img[0x258..0x260].copy_from_slice(&0x100_0000u64.to_le_bytes()); // pref_address
        img[0x260..0x264].copy_from_slice(&init_size.to_le_bytes());
        let f = TempFile::new().unwrap();
        f.as_file().write_all(&img).unwrap();
        f
    }

    fn file_of(len: usize) -> TempFile {
        let f = TempFile::new().unwrap();
        f.as_file().write_all(&vec![0xa5; len]).unwrap();
        f
    }

    fn setup(memory: u64) -> (MemoryLayout, GuestMemoryMmap) {
        let layout = MemoryLayout::new(memory, 2 * MIB, 2 * MIB).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), memory as usize)]).unwrap();
        (layout, mem)
    }

    #[test]
    fn bzimage_initrd_cmdline_and_zero_page() {
        let (layout, mem) = setup(128 * MIB);
        let kernel = fake_bzimage(4096, 8 * MIB as u32);
        let initrd = file_of(3 * 4096 + 7);
        let entry = load(
            &mem,
            &layout,
            &BootSpec {
                kernel: kernel.as_path(),
                initrd: Some(initrd.as_path()),
                cmdline: "console=ttyS0 panic=-1",
                acpi_rsdp: Some(0xe_0000),
            },
        )
        .unwrap();
        assert_eq!(entry.entry, HIMEM_START + 0x200);
        assert_eq!(entry.zero_page, ZERO_PAGE_ADDR);

        let params: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_ADDR)).unwrap();
        let hdr = params.hdr;
        assert_eq!({ hdr.boot_flag }, BOOT_FLAG_MAGIC);
        assert_eq!({ hdr.type_of_loader }, LOADER_TYPE_UNDEFINED);
        assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_ADDR as u32);
        assert_eq!({ params.acpi_rsdp_addr }, 0xe_0000);
        // The initramfs sits page aligned at the very top of RAM.
        let (image, size) = ({ hdr.ramdisk_image } as u64, { hdr.ramdisk_size } as u64);
        assert_eq!(size, 3 * 4096 + 7);
        assert_eq!(image % PAGE_SIZE, 0);
        assert!(image + size <= 128 * MIB && image + size + PAGE_SIZE > 128 * MIB);
        let byte: u8 = mem.read_obj(GuestAddress(image + size - 1)).unwrap();
        assert_eq!(byte, 0xa5);

        let mut cmdline = vec![0u8; 23];
        mem.read_slice(&mut cmdline, GuestAddress(CMDLINE_ADDR))
            .unwrap();
        assert_eq!(&cmdline, b"console=ttyS0 panic=-1\0");

        assert_eq!(params.e820_entries as usize, layout.e820().len());
        let gdt1: u64 = mem.read_obj(GuestAddress(GDT_ADDR + 8)).unwrap();
        assert_eq!(gdt1, gdt::GDT[1]);
        assert_eq!(
            paging::translate(&mem, entry.cr3, HIMEM_START + 0x200),
            Some(HIMEM_START + 0x200)
        );
    }

    #[test]
    fn initrd_too_large_is_an_error() {
        let (layout, mem) = setup(64 * MIB);
        let kernel = fake_bzimage(4096, 8 * MIB as u32);
        // Above the kernel's decompression area (16 MiB + 8 MiB) only 40 MiB remain.
        let initrd = TempFile::new().unwrap();
        initrd.as_file().set_len(41 * MIB).unwrap();
        let err = load(
            &mem,
            &layout,
            &BootSpec {
                kernel: kernel.as_path(),
                initrd: Some(initrd.as_path()),
                cmdline: "",
                acpi_rsdp: None,
            },
        )
        .unwrap_err();
        assert!(
            matches!(err, BootError::InitrdTooLarge { available, .. } if available == 40 * MIB),
            "{err}"
        );
    }

    #[test]
    fn kernel_that_cannot_decompress_in_memory_is_an_error() {
        let (layout, mem) = setup(64 * MIB);
        let kernel = fake_bzimage(4096, 60 * MIB as u32);
        let err = load(
            &mem,
            &layout,
            &BootSpec {
                kernel: kernel.as_path(),
                initrd: None,
                cmdline: "",
                acpi_rsdp: None,
            },
        )
        .unwrap_err();
        assert!(matches!(err, BootError::KernelTooLarge { .. }), "{err}");
    }

    #[test]
    fn corrupt_and_missing_kernels() {
        let (layout, mem) = setup(64 * MIB);
        let junk = file_of(8192);
        let spec = |k: &'static Path| BootSpec {
            kernel: k,
            initrd: None,
            cmdline: "",
            acpi_rsdp: None,
        };
        let err = load(
            &mem,
            &layout,
            &spec(Box::leak(junk.as_path().to_path_buf().into_boxed_path())),
        )
        .unwrap_err();
        assert!(matches!(err, BootError::BadKernel { .. }), "{err}");
        let err = load(&mem, &layout, &spec(Path::new("/nonexistent/bzImage"))).unwrap_err();
        assert!(matches!(err, BootError::OpenKernel { .. }), "{err}");
        let empty = file_of(0);
        let err = load(
            &mem,
            &layout,
            &spec(Box::leak(empty.as_path().to_path_buf().into_boxed_path())),
        )
        .unwrap_err();
        assert!(matches!(err, BootError::BadKernel { .. }), "{err}");
        assert!(mem.num_regions() == 1);
    }

    /// A one-segment x86-64 ELF: `filesz` bytes loaded at `paddr`, `memsz`
    /// in memory, entry at `paddr`.
    fn tiny_elf(class: u8, paddr: u64, filesz: usize, memsz: u64) -> TempFile {
        let mut f = vec![0u8; 0x1000 + filesz];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4..7].copy_from_slice(&[class, ELFDATA2LSB, 1]);
        f[16..18].copy_from_slice(&2u16.to_le_bytes());
        f[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        f[24..32].copy_from_slice(&paddr.to_le_bytes());
        f[32..40].copy_from_slice(&64u64.to_le_bytes());
        f[54..56].copy_from_slice(&56u16.to_le_bytes());
        f[56..58].copy_from_slice(&1u16.to_le_bytes());
        f[64..68].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        f[72..80].copy_from_slice(&0x1000u64.to_le_bytes());
        f[88..96].copy_from_slice(&paddr.to_le_bytes());
        f[96..104].copy_from_slice(&(filesz as u64).to_le_bytes());
        f[104..112].copy_from_slice(&memsz.to_le_bytes());
        f[0x1000..].fill(0x5a);
        let file = TempFile::new().unwrap();
        file.as_file().write_all(&f).unwrap();
        file
    }

    #[test]
    fn elf_vmlinux_loads_at_paddr_and_enters_at_e_entry() {
        let (layout, mem) = setup(64 * MIB);
        let spec = |k: &'static Path| BootSpec {
            kernel: k,
            initrd: None,
            cmdline: "console=ttyS0",
            acpi_rsdp: None,
        };
        let leak = |f: &TempFile| Box::leak(f.as_path().to_path_buf().into_boxed_path()) as &Path;

        let elf = tiny_elf(ELFCLASS64, 2 * MIB, 4096, 8192);
        let entry = load(&mem, &layout, &spec(leak(&elf))).unwrap();
        assert_eq!(entry.entry, 2 * MIB);
        let byte: u8 = mem.read_obj(GuestAddress(2 * MIB + 4095)).unwrap();
        assert_eq!(byte, 0x5a);
        let params: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_ADDR)).unwrap();
        assert_eq!({ params.hdr.boot_flag }, BOOT_FLAG_MAGIC);
        assert_eq!({ params.hdr.header }, HDRS_MAGIC);
        assert_eq!({ params.hdr.cmd_line_ptr }, CMDLINE_ADDR as u32);

        // bss reaching past the end of RAM.
        let elf = tiny_elf(ELFCLASS64, 2 * MIB, 4096, 64 * MIB);
        let err = load(&mem, &layout, &spec(leak(&elf))).unwrap_err();
        assert!(matches!(err, BootError::KernelTooLarge { .. }), "{err}");

        // A 32-bit ELF is refused before linux-loader misreads it.
        let elf = tiny_elf(1, 2 * MIB, 4096, 4096);
        let err = load(&mem, &layout, &spec(leak(&elf))).unwrap_err();
        assert!(matches!(err, BootError::NotX86_64Elf { .. }), "{err}");
    }

    #[test]
    fn cmdline_too_long_is_an_error() {
        let (layout, mem) = setup(64 * MIB);
        let kernel = fake_bzimage(4096, MIB as u32);
        let long = "x".repeat(4000);
        let err = load(
            &mem,
            &layout,
            &BootSpec {
                kernel: kernel.as_path(),
                initrd: None,
                cmdline: &long,
                acpi_rsdp: None,
            },
        )
        .unwrap_err();
        assert!(matches!(err, BootError::Cmdline(_)), "{err}");
    }
}
