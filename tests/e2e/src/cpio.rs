//! A minimal writer for the "newc" cpio format (the format the Linux kernel
//! unpacks as an initramfs). Output is deterministic: inode numbers are
//! assigned in insertion order and all timestamps are zero.

use std::collections::BTreeSet;
use std::io::{self, Write};

/// Errors of the cpio writer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "cpio entry name {0:?} is not a relative path without '..' (use e.g. \"bin/busybox\")"
    )]
    BadName(String),
    #[error("cpio entry {0:?} was added twice; each path may appear only once in an archive")]
    Duplicate(String),
    #[error("cpio entry {0:?} is larger than 4 GiB, which the newc format cannot describe")]
    TooLarge(String),
    #[error("writing the cpio archive failed: {0}")]
    Io(#[from] io::Error),
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

#[derive(Debug, Clone)]
struct Entry {
    name: String,
    mode: u32,
    data: Vec<u8>,
    rdev: (u32, u32),
}

/// An in-memory cpio archive under construction.
#[derive(Debug, Default)]
pub struct Archive {
    entries: Vec<Entry>,
    names: BTreeSet<String>,
}

fn check_name(name: &str) -> Result<String, Error> {
    let trimmed = name.trim_start_matches('/').trim_end_matches('/');
    if trimmed.is_empty()
        || trimmed
            .split('/')
            .any(|c| c.is_empty() || c == ".." || c == ".")
        || trimmed.contains('\0')
    {
        return Err(Error::BadName(name.to_string()));
    }
    Ok(trimmed.to_string())
}

impl Archive {
    /// Creates an empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns true if `name` (or the directory `name`) is already present.
    pub fn contains(&self, name: &str) -> bool {
        check_name(name)
            .map(|n| self.names.contains(&n))
            .unwrap_or(false)
    }

    fn push(
        &mut self,
        name: &str,
        mode: u32,
        data: Vec<u8>,
        rdev: (u32, u32),
    ) -> Result<(), Error> {
        let name = check_name(name)?;
        if data.len() > u32::MAX as usize {
            return Err(Error::TooLarge(name));
        }
        // Create missing parent directories so the kernel can unpack entries in order.
        let mut parent = String::new();
        let components: Vec<&str> = name.split('/').collect();
        for c in &components[..components.len() - 1] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(c);
            if !self.names.contains(&parent) {
                self.names.insert(parent.clone());
                self.entries.push(Entry {
                    name: parent.clone(),
                    mode: S_IFDIR | 0o755,
                    data: Vec::new(),
                    rdev: (0, 0),
                });
            }
        }
        if !self.names.insert(name.clone()) {
            // Directories may be "added" again harmlessly.
            if mode & S_IFDIR != 0 && data.is_empty() {
                return Ok(());
            }
            return Err(Error::Duplicate(name));
        }
        self.entries.push(Entry {
            name,
            mode,
            data,
            rdev,
        });
        Ok(())
    }

    /// Adds a directory (and its missing parents).
    pub fn add_dir(&mut self, name: &str) -> Result<(), Error> {
        self.push(name, S_IFDIR | 0o755, Vec::new(), (0, 0))
    }

    /// Adds a regular file with the given permission bits (e.g. 0o755).
    pub fn add_file(&mut self, name: &str, perm: u32, data: Vec<u8>) -> Result<(), Error> {
        self.push(name, S_IFREG | (perm & 0o7777), data, (0, 0))
    }

    /// Adds a symbolic link `name` -> `target`.
    pub fn add_symlink(&mut self, name: &str, target: &str) -> Result<(), Error> {
        self.push(name, S_IFLNK | 0o777, target.as_bytes().to_vec(), (0, 0))
    }

    /// Adds a character device node (e.g. `dev/console`, 5, 1).
    pub fn add_char_dev(
        &mut self,
        name: &str,
        perm: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), Error> {
        self.push(name, S_IFCHR | (perm & 0o7777), Vec::new(), (major, minor))
    }

    /// Total payload bytes (file contents), useful for size reports.
    pub fn payload_len(&self) -> usize {
        self.entries.iter().map(|e| e.data.len()).sum()
    }

    /// Writes the archive in newc format, followed by the trailer.
    pub fn write_to<W: Write>(&self, mut out: W) -> Result<(), Error> {
        let mut written = 0usize;
        for (i, e) in self.entries.iter().enumerate() {
            let nlink = if e.mode & S_IFDIR != 0 { 2 } else { 1 };
            written += write_entry(
                &mut out,
                i as u32 + 1,
                e.mode,
                nlink,
                &e.name,
                &e.data,
                e.rdev,
            )?;
        }
        written += write_entry(&mut out, 0, 0, 1, "TRAILER!!!", &[], (0, 0))?;
        // Pad the archive to a 512-byte multiple, as the cpio tool does.
        let pad = (512 - written % 512) % 512;
        out.write_all(&vec![0u8; pad])?;
        out.flush()?;
        Ok(())
    }
}

fn pad4(n: usize) -> usize {
    (4 - n % 4) % 4
}

fn write_entry<W: Write>(
    out: &mut W,
    ino: u32,
    mode: u32,
    nlink: u32,
    name: &str,
    data: &[u8],
    rdev: (u32, u32),
) -> Result<usize, Error> {
    let namesize = name.len() + 1;
    let header = format!(
        "070701{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
        ino,
        mode,
        0, // uid
        0, // gid
        nlink,
        0, // mtime
        data.len() as u32,
        0, // devmajor
        0, // devminor
        rdev.0,
        rdev.1,
        namesize as u32,
        0, // check
    );
    out.write_all(header.as_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    let name_pad = pad4(header.len() + namesize);
    out.write_all(&[0u8; 4][..name_pad])?;
    out.write_all(data)?;
    let data_pad = pad4(data.len());
    out.write_all(&[0u8; 4][..data_pad])?;
    Ok(header.len() + namesize + name_pad + data.len() + data_pad)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
mod tests {
    use super::*;

    #[test]
    fn rejects_escaping_names() {
        let mut a = Archive::new();
        assert!(matches!(
            a.add_file("../etc/passwd", 0o644, vec![]),
            Err(Error::BadName(_))
        ));
        assert!(matches!(
            a.add_file("a//b", 0o644, vec![]),
            Err(Error::BadName(_))
        ));
        assert!(matches!(
            a.add_file("", 0o644, vec![]),
            Err(Error::BadName(_))
        ));
    }

    #[test]
    fn duplicate_files_are_rejected_but_dirs_merge() {
        let mut a = Archive::new();
        a.add_file("bin/x", 0o755, b"1".to_vec()).unwrap();
        a.add_dir("bin").unwrap();
        assert!(matches!(
            a.add_file("bin/x", 0o755, vec![]),
            Err(Error::Duplicate(_))
        ));
    }

    #[test]
    fn layout_is_aligned_and_parents_come_first() {
        let mut a = Archive::new();
        a.add_file("a/b/c", 0o644, b"hello".to_vec()).unwrap();
        a.add_symlink("a/l", "b/c").unwrap();
        let mut buf = Vec::new();
        a.write_to(&mut buf).unwrap();
        assert_eq!(buf.len() % 512, 0);
        // Walk the archive back and collect names.
        let mut off = 0;
        let mut names = Vec::new();
        loop {
            assert_eq!(&buf[off..off + 6], b"070701");
            let field = |i: usize| {
                let s = std::str::from_utf8(&buf[off + 6 + i * 8..off + 14 + i * 8]).unwrap();
                usize::from_str_radix(s, 16).unwrap()
            };
            let filesize = field(6);
            let namesize = field(11);
            let name = std::str::from_utf8(&buf[off + 110..off + 110 + namesize - 1])
                .unwrap()
                .to_string();
            off += 110 + namesize;
            off += pad4(off);
            if name == "TRAILER!!!" {
                break;
            }
            if name == "a/b/c" {
                assert_eq!(&buf[off..off + filesize], b"hello");
            }
            off += filesize;
            off += pad4(off);
            names.push(name);
        }
        assert_eq!(names, vec!["a", "a/b", "a/b/c", "a/l"]);
    }
}
