//! The XPMEM user ABI: ioctl numbers, constants and argument layouts, exactly
//! as the kernel module (and the public XPMEM module) define them for x86-64.

/// `xpmem_segid_t`.
pub type RawSegId = i64;
/// `xpmem_apid_t`.
pub type RawApId = i64;

/// Size meaning "to the end of the address space" (`XPMEM_MAXADDR_SIZE`).
pub const XPMEM_MAXADDR_SIZE: usize = usize::MAX;
/// Read-only access (`XPMEM_RDONLY`).
pub const XPMEM_RDONLY: i32 = 0x1;
/// Read-write access (`XPMEM_RDWR`).
pub const XPMEM_RDWR: i32 = 0x2;
/// The only permit type: `permit_value` holds mode bits (`XPMEM_PERMIT_MODE`).
pub const XPMEM_PERMIT_MODE: i32 = 0x1;
/// Errno for "the exporting process is gone" (`XPMEM_ERRNO_NOPROC`).
pub const XPMEM_ERRNO_NOPROC: i32 = 2004;
/// Default device path.
pub const XPMEM_DEV_PATH: &str = "/dev/xpmem";

/// `_IO(ty, nr)`: no direction, no size.
pub const fn io(ty: u8, nr: u8) -> u32 {
    ((ty as u32) << 8) | nr as u32
}

/// `XPMEM_CMD_VERSION`.
pub const XPMEM_CMD_VERSION: u32 = io(b'x', 0);
/// `XPMEM_CMD_MAKE`.
pub const XPMEM_CMD_MAKE: u32 = io(b'x', 1);
/// `XPMEM_CMD_REMOVE`.
pub const XPMEM_CMD_REMOVE: u32 = io(b'x', 2);
/// `XPMEM_CMD_GET`.
pub const XPMEM_CMD_GET: u32 = io(b'x', 3);
/// `XPMEM_CMD_RELEASE`.
pub const XPMEM_CMD_RELEASE: u32 = io(b'x', 4);
/// `XPMEM_CMD_ATTACH`.
pub const XPMEM_CMD_ATTACH: u32 = io(b'x', 5);
/// `XPMEM_CMD_DETACH`.
pub const XPMEM_CMD_DETACH: u32 = io(b'x', 6);
/// `XPMEM_CMD_NAME` (named segments, not in native XPMEM).
pub const XPMEM_CMD_NAME: u32 = io(b'x', 0x20);
/// `XPMEM_CMD_SEARCH` (named segments, not in native XPMEM).
pub const XPMEM_CMD_SEARCH: u32 = io(b'x', 0x21);
/// Longest segment name in bytes (`XPMEM_NAME_MAX`).
pub const XPMEM_NAME_MAX: usize = 63;

/// `struct xpmem_cmd_make`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct CmdMake {
    pub vaddr: u64,
    pub size: usize,
    pub permit_type: i32,
    pub permit_value: u64,
    /// Out.
    pub segid: RawSegId,
}

/// `struct xpmem_cmd_remove`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct CmdRemove {
    pub segid: RawSegId,
}

/// `struct xpmem_cmd_get`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct CmdGet {
    pub segid: RawSegId,
    pub flags: i32,
    pub permit_type: i32,
    pub permit_value: u64,
    /// Out.
    pub apid: RawApId,
}

/// `struct xpmem_cmd_release`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct CmdRelease {
    pub apid: RawApId,
}

/// `struct xpmem_cmd_attach`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct CmdAttach {
    pub apid: RawApId,
    pub offset: libc::off_t,
    pub size: usize,
    /// In: 0 or a fixed address; out: the attachment's address.
    pub vaddr: u64,
    pub fd: i32,
    pub flags: i32,
}

/// `struct xpmem_cmd_detach`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct CmdDetach {
    pub vaddr: u64,
}

/// `struct xpmem_cmd_name`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct CmdName {
    pub segid: RawSegId,
    /// NUL-terminated.
    pub name: [u8; XPMEM_NAME_MAX + 1],
}

/// `struct xpmem_cmd_search`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct CmdSearch {
    /// NUL-terminated.
    pub name: [u8; XPMEM_NAME_MAX + 1],
    /// Out.
    pub segid: RawSegId,
}

#[cfg(all(test, target_arch = "x86_64"))]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn ioctl_numbers_are_the_kernel_ones() {
        // _IO('x', n) = ('x' << 8) | n with no size or direction bits.
        assert_eq!(XPMEM_CMD_VERSION, 0x7800);
        assert_eq!(XPMEM_CMD_MAKE, 0x7801);
        assert_eq!(XPMEM_CMD_REMOVE, 0x7802);
        assert_eq!(XPMEM_CMD_GET, 0x7803);
        assert_eq!(XPMEM_CMD_RELEASE, 0x7804);
        assert_eq!(XPMEM_CMD_ATTACH, 0x7805);
        assert_eq!(XPMEM_CMD_DETACH, 0x7806);
    }

    #[test]
    fn make_layout() {
        assert_eq!(offset_of!(CmdMake, vaddr), 0);
        assert_eq!(offset_of!(CmdMake, size), 8);
        assert_eq!(offset_of!(CmdMake, permit_type), 16);
        assert_eq!(offset_of!(CmdMake, permit_value), 24);
        assert_eq!(offset_of!(CmdMake, segid), 32);
        assert_eq!(size_of::<CmdMake>(), 40);
    }

    #[test]
    fn get_layout() {
        assert_eq!(offset_of!(CmdGet, segid), 0);
        assert_eq!(offset_of!(CmdGet, flags), 8);
        assert_eq!(offset_of!(CmdGet, permit_type), 12);
        assert_eq!(offset_of!(CmdGet, permit_value), 16);
        assert_eq!(offset_of!(CmdGet, apid), 24);
        assert_eq!(size_of::<CmdGet>(), 32);
    }

    #[test]
    fn attach_layout() {
        assert_eq!(offset_of!(CmdAttach, apid), 0);
        assert_eq!(offset_of!(CmdAttach, offset), 8);
        assert_eq!(offset_of!(CmdAttach, size), 16);
        assert_eq!(offset_of!(CmdAttach, vaddr), 24);
        assert_eq!(offset_of!(CmdAttach, fd), 32);
        assert_eq!(offset_of!(CmdAttach, flags), 36);
        assert_eq!(size_of::<CmdAttach>(), 40);
    }

    /// The `#define NAME VALUE` lines of a C header.
    fn defines(path: &str) -> std::collections::HashMap<String, String> {
        let text = std::fs::read_to_string(path).expect("C header next to the crate");
        text.lines()
            .filter_map(|l| l.trim().strip_prefix("#define "))
            .filter_map(|l| {
                let (name, value) = l.split_once(char::is_whitespace)?;
                // Drop a trailing comment.
                let value = value.split("/*").next()?.trim();
                Some((name.to_string(), value.to_string()))
            })
            .collect()
    }

    fn num(v: &str) -> i64 {
        match v.strip_prefix("0x") {
            Some(h) => i64::from_str_radix(h, 16).expect("hex"),
            None => v.parse().expect("decimal"),
        }
    }

    #[test]
    fn constants_agree_with_the_c_headers() {
        let dir = env!("CARGO_MANIFEST_DIR");
        for header in ["../libxpmem/xpmem.h", "../kmod/xpmem_uapi.h"] {
            let d = defines(&format!("{dir}/{header}"));
            assert_eq!(num(&d["XPMEM_RDONLY"]), i64::from(XPMEM_RDONLY), "{header}");
            assert_eq!(num(&d["XPMEM_RDWR"]), i64::from(XPMEM_RDWR), "{header}");
            assert_eq!(
                num(&d["XPMEM_PERMIT_MODE"]),
                i64::from(XPMEM_PERMIT_MODE),
                "{header}"
            );
            assert_eq!(
                num(&d["XPMEM_ERRNO_NOPROC"]),
                i64::from(XPMEM_ERRNO_NOPROC),
                "{header}"
            );
            let cmds = [
                ("XPMEM_CMD_VERSION", XPMEM_CMD_VERSION),
                ("XPMEM_CMD_MAKE", XPMEM_CMD_MAKE),
                ("XPMEM_CMD_REMOVE", XPMEM_CMD_REMOVE),
                ("XPMEM_CMD_GET", XPMEM_CMD_GET),
                ("XPMEM_CMD_RELEASE", XPMEM_CMD_RELEASE),
                ("XPMEM_CMD_ATTACH", XPMEM_CMD_ATTACH),
                ("XPMEM_CMD_DETACH", XPMEM_CMD_DETACH),
                ("XPMEM_CMD_NAME", XPMEM_CMD_NAME),
                ("XPMEM_CMD_SEARCH", XPMEM_CMD_SEARCH),
            ];
            for (name, value) in cmds {
                // `_IO('x', n)` or `_IO(XPMEM_IOC_MAGIC, n)`: check n.
                let def = &d[name];
                let n = def
                    .trim_end_matches(')')
                    .rsplit(',')
                    .next()
                    .map(str::trim)
                    .expect("ioctl number");
                let nr = u8::try_from(num(n)).expect("nr fits a byte");
                assert_eq!(io(b'x', nr), value, "{header} {name}");
            }
        }
        for header in ["../libxpmem/xpmem.h", "../kmod/xpmem_uapi.h"] {
            let d = defines(&format!("{dir}/{header}"));
            assert_eq!(num(&d["XPMEM_NAME_MAX"]), XPMEM_NAME_MAX as i64, "{header}");
        }
        let uapi = defines(&format!("{dir}/../kmod/xpmem_uapi.h"));
        assert_eq!(num(&uapi["XPMEM_CURRENT_VERSION"]), 0x0002_7004);
    }

    #[test]
    fn name_layouts() {
        assert_eq!(offset_of!(CmdName, name), 8);
        assert_eq!(size_of::<CmdName>(), 72);
        assert_eq!(offset_of!(CmdSearch, segid), 64);
        assert_eq!(size_of::<CmdSearch>(), 72);
    }

    #[test]
    fn single_id_layouts() {
        assert_eq!(size_of::<CmdRemove>(), 8);
        assert_eq!(size_of::<CmdRelease>(), 8);
        assert_eq!(size_of::<CmdDetach>(), 8);
    }
}
