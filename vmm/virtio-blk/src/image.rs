//! Raw disk image files: checking, opening and locking them, and the
//! [`DiskBackend`] the device does its I/O through.
//!
//! An image is a regular file whose size is a non-zero multiple of 512 bytes
//! (sparse files are fine), or a block device (e.g. a disk the host itself
//! got from its hypervisor). A writable image is locked with
//! `flock(LOCK_EX|LOCK_NB)`, a read-only one with `flock(LOCK_SH|LOCK_NB)`:
//! any number of VMs (or monitors) may share an image read-only, but a
//! writable image belongs to exactly one VM. The lock lives as long as the
//! open file (the [`DiskImage`]), so it is released when the device is dropped
//! or the monitor dies, `kill -9` included.

use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use vm_memory::VolatileSlice;

/// Sector size of the virtio-blk protocol (request `sector` fields, `capacity`).
pub const SECTOR_SIZE: u64 = 512;

/// Guest memory as the device sees it during one I/O: a contiguous piece of a
/// guest RAM region (the monitor's guest memory has no dirty bitmap).
pub type GuestSlice<'a> = VolatileSlice<'a, ()>;

/// Errors of checking, opening and locking an image file.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("disk image {path} does not exist; create it (e.g. `truncate -s 1G {path}`) or fix the path", path = .0.display())]
    Missing(PathBuf),
    #[error("cannot open disk image {path}: {err}", path = .path.display())]
    Open { path: PathBuf, err: io::Error },
    #[error("disk image {path} is a directory; give the path of an image file", path = .0.display())]
    Directory(PathBuf),
    #[error("disk image {path} is not a regular file or a block device; use a raw image file", path = .0.display())]
    NotAFile(PathBuf),
    #[error("disk image {path} is empty; give it a size (e.g. `truncate -s 1G {path}`)", path = .0.display())]
    Empty(PathBuf),
    #[error("disk image {path} is {size} bytes, not a multiple of 512; resize it to whole sectors (e.g. `truncate -s %512 {path}`)", path = .path.display())]
    Unaligned { path: PathBuf, size: u64 },
    #[error("disk image {path} is read-only (mode {mode:o}) but asked to be writable; set read_only = true or make the file writable", path = .path.display())]
    ReadOnlyFile { path: PathBuf, mode: u32 },
    #[error("disk image {path} cannot be opened for writing ({err}); set read_only = true or make the file writable", path = .path.display())]
    NotWritable { path: PathBuf, err: io::Error },
    #[error("disk image {path} is in use {holder}; stop that VM or monitor first, or open the image read-only everywhere", path = .path.display())]
    Locked { path: PathBuf, holder: String },
    #[error("cannot lock disk image {path}: {err}", path = .path.display())]
    Lock { path: PathBuf, err: io::Error },
}

/// What [`check_image`] found out about an image file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    /// Size in bytes (a non-zero multiple of [`SECTOR_SIZE`]).
    pub size: u64,
    /// Device and inode: the identity of the file, whatever path names it.
    pub dev: u64,
    pub ino: u64,
}

/// Checks that `path` is usable as a disk image (read-only or writable)
/// without opening it for writing or locking it: it exists, is a regular file
/// of a non-zero multiple of 512 bytes, and, if `read_only` is false, has a
/// write permission bit and can be opened read-write.
pub fn check_image(path: &Path, read_only: bool) -> Result<ImageInfo, ImageError> {
    let meta = std::fs::metadata(path).map_err(|err| match err.kind() {
        io::ErrorKind::NotFound => ImageError::Missing(path.to_path_buf()),
        _ => ImageError::Open {
            path: path.to_path_buf(),
            err,
        },
    })?;
    let kind = meta.file_type();
    if kind.is_dir() {
        return Err(ImageError::Directory(path.to_path_buf()));
    }
    if !kind.is_file() && !kind.is_block_device() {
        return Err(ImageError::NotAFile(path.to_path_buf()));
    }
    let size = image_size(path, &meta)?;
    if size == 0 {
        return Err(ImageError::Empty(path.to_path_buf()));
    }
    if size % SECTOR_SIZE != 0 {
        return Err(ImageError::Unaligned {
            path: path.to_path_buf(),
            size,
        });
    }
    if !read_only {
        // root ignores the mode bits; a file nobody may write is still meant
        // to stay unchanged.
        let mode = meta.mode() & 0o7777;
        if mode & 0o222 == 0 {
            return Err(ImageError::ReadOnlyFile {
                path: path.to_path_buf(),
                mode,
            });
        }
        // Opening read-write writes nothing; it catches read-only mounts and
        // files this user may not write.
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|err| ImageError::NotWritable {
                path: path.to_path_buf(),
                err,
            })?;
    }
    Ok(ImageInfo {
        size,
        dev: meta.dev(),
        ino: meta.ino(),
    })
}

/// The size of a regular file, or of a block device (its metadata says 0).
fn image_size(path: &Path, meta: &Metadata) -> Result<u64, ImageError> {
    if !meta.file_type().is_block_device() {
        return Ok(meta.len());
    }
    let open_err = |err| ImageError::Open {
        path: path.to_path_buf(),
        err,
    };
    File::open(path)
        .and_then(|mut f| f.seek(SeekFrom::End(0)))
        .map_err(open_err)
}

/// Where the device reads, writes, flushes and discards. [`DiskImage`] is the
/// real one; tests wrap it to inject failures.
pub trait DiskBackend: Send {
    /// Fills all of `buf` from the image at byte `offset`.
    fn read_exact_at(&mut self, buf: &GuestSlice<'_>, offset: u64) -> io::Result<()>;
    /// Writes all of `buf` to the image at byte `offset`.
    fn write_all_at(&mut self, buf: &GuestSlice<'_>, offset: u64) -> io::Result<()>;
    /// Makes every completed write durable (`fdatasync`).
    fn sync_data(&mut self) -> io::Result<()>;
    /// Tells the host the range is unused (hole punching); its content is
    /// unspecified afterwards.
    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()>;
    /// Makes the range read as zeroes, deallocating it if `may_unmap`.
    fn write_zeroes(&mut self, offset: u64, len: u64, may_unmap: bool) -> io::Result<()>;
}

/// An open, locked raw image file.
#[derive(Debug)]
pub struct DiskImage {
    path: PathBuf,
    file: File,
    size: u64,
    read_only: bool,
    /// Hole punching or zero-range is unsupported by the file system.
    no_punch: bool,
    no_zero_range: bool,
}

impl DiskImage {
    /// Checks, opens and locks `path` (see the module docs for the lock).
    pub fn open(path: &Path, read_only: bool) -> Result<Self, ImageError> {
        let info = check_image(path, read_only)?;
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|err| ImageError::Open {
                path: path.to_path_buf(),
                err,
            })?;
        let op = if read_only {
            libc::LOCK_SH
        } else {
            libc::LOCK_EX
        };
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) } != 0 {
            let err = io::Error::last_os_error();
            return Err(if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                ImageError::Locked {
                    path: path.to_path_buf(),
                    holder: lock_holder(info.dev, info.ino),
                }
            } else {
                ImageError::Lock {
                    path: path.to_path_buf(),
                    err,
                }
            });
        }
        // The size may have changed between the check and the open.
        let meta = file.metadata().map_err(|err| ImageError::Open {
            path: path.to_path_buf(),
            err,
        })?;
        let size = image_size(path, &meta)?;
        if size == 0 || size % SECTOR_SIZE != 0 {
            return Err(ImageError::Unaligned {
                path: path.to_path_buf(),
                size,
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
            size,
            read_only,
            no_punch: false,
            no_zero_range: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size in bytes, fixed when the image was opened.
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    fn fallocate(&self, mode: i32, offset: u64, len: u64) -> io::Result<()> {
        let (Ok(off), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        };
        loop {
            // SAFETY: fallocate on a file descriptor we own; no memory is involved.
            let r = unsafe { libc::fallocate64(self.file.as_raw_fd(), mode, off, len) };
            if r == 0 {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }

    fn write_zeroes_by_writing(&self, mut offset: u64, len: u64) -> io::Result<()> {
        static ZEROES: [u8; 64 * 1024] = [0; 64 * 1024];
        let end = offset
            .checked_add(len)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        while offset < end {
            let n = usize::try_from(end - offset).map_or(ZEROES.len(), |r| r.min(ZEROES.len()));
            std::os::unix::fs::FileExt::write_all_at(&self.file, &ZEROES[..n], offset)?;
            offset += n as u64;
        }
        Ok(())
    }
}

fn unsupported(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS)
    )
}

fn offset_arg(offset: u64) -> io::Result<i64> {
    i64::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Moves all of `buf` at byte `offset` with `op` (pread or pwrite), one
/// system call per step, resuming after short transfers and EINTR.
fn positioned_io(
    buf: &GuestSlice<'_>,
    mut offset: u64,
    mut op: impl FnMut(&GuestSlice<'_>, i64) -> isize,
    at_zero: fn() -> io::Error,
) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = buf
            .offset(done)
            .map_err(|e| io::Error::other(e.to_string()))?;
        match op(&rest, offset_arg(offset)?) {
            0 => return Err(at_zero()),
            n => match usize::try_from(n) {
                Ok(n) => {
                    done += n;
                    offset += n as u64;
                }
                // Negative: the call failed.
                Err(_) => {
                    let err = io::Error::last_os_error();
                    if err.kind() != io::ErrorKind::Interrupted {
                        return Err(err);
                    }
                }
            },
        }
    }
    Ok(())
}

impl DiskBackend for DiskImage {
    fn read_exact_at(&mut self, buf: &GuestSlice<'_>, offset: u64) -> io::Result<()> {
        let fd = self.file.as_raw_fd();
        positioned_io(
            buf,
            offset,
            |rest, off| {
                let guard = rest.ptr_guard_mut();
                // SAFETY: `guard` points at `rest.len()` bytes of guest memory that
                // stay mapped while the guard lives (VolatileSlice invariant); the
                // kernel writes at most that many bytes there.
                unsafe { libc::pread64(fd, guard.as_ptr().cast(), rest.len(), off) }
            },
            || {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the image file is shorter than when it was opened",
                )
            },
        )
    }

    fn write_all_at(&mut self, buf: &GuestSlice<'_>, offset: u64) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        let fd = self.file.as_raw_fd();
        positioned_io(
            buf,
            offset,
            |rest, off| {
                let guard = rest.ptr_guard();
                // SAFETY: `guard` points at `rest.len()` readable bytes of guest
                // memory that stay mapped while the guard lives; the kernel only
                // reads them.
                unsafe { libc::pwrite64(fd, guard.as_ptr().cast(), rest.len(), off) }
            },
            || io::Error::from(io::ErrorKind::WriteZero),
        )
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        if self.no_punch {
            // Discard is a hint: nothing to do when the file system cannot punch.
            return Ok(());
        }
        match self.fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        ) {
            Err(e) if unsupported(&e) => {
                log::info!(
                    "virtio-blk: {} does not support hole punching; discard requests are ignored",
                    self.path.display()
                );
                self.no_punch = true;
                Ok(())
            }
            other => other,
        }
    }

    fn write_zeroes(&mut self, offset: u64, len: u64, may_unmap: bool) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        if may_unmap && !self.no_punch {
            match self.fallocate(
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            ) {
                Err(e) if unsupported(&e) => self.no_punch = true,
                other => return other,
            }
        }
        if !self.no_zero_range {
            match self.fallocate(
                libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            ) {
                Err(e) if unsupported(&e) => self.no_zero_range = true,
                other => return other,
            }
        }
        self.write_zeroes_by_writing(offset, len)
    }
}

/// Who holds a conflicting lock on the file `dev`/`ino`, from `/proc/locks`
/// (best effort; the lock may be gone by now).
pub fn lock_holder(dev: u64, ino: u64) -> String {
    let me = std::process::id();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let wanted = format!("{major:02x}:{minor:02x}:{ino}");
    let pids: Vec<u32> = std::fs::read_to_string("/proc/locks")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("FLOCK"))
        .filter_map(|l| {
            // "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"
            let f: Vec<&str> = l.split_whitespace().collect();
            let dev_ino = f.get(5)?;
            if dev_ino.eq_ignore_ascii_case(&wanted) {
                f.get(4)?.parse().ok()
            } else {
                None
            }
        })
        .collect();
    if pids.contains(&me) {
        return "by another disk of this monitor (the same image twice)".to_string();
    }
    match pids.first() {
        Some(pid) => {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let comm = comm.trim();
            if comm.is_empty() {
                format!("by process {pid}")
            } else {
                format!("by process {pid} ({comm})")
            }
        }
        None => "by another process (see `fuser` or /proc/locks)".to_string(),
    }
}
