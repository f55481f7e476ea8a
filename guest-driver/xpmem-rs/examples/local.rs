//! Export a buffer, name it, find it by name and attach it from the same
//! process: a smoke test for a guest with a virtio-xpmem device.
//! `cargo run --example local [PAGES]`.

use std::process::ExitCode;
use std::sync::atomic::Ordering;

use xpmem::{Access, Mode, SharedBuffer, Xpmem};

fn run(pages: usize) -> Result<(), Box<dyn std::error::Error>> {
    let dev = Xpmem::open()?;
    println!("driver version {}", dev.version()?);
    let buf = SharedBuffer::new(pages * 4096)?;
    for (i, w) in buf.as_atomic_u64().iter().enumerate() {
        w.store(i as u64 ^ 0x5a5a, Ordering::Relaxed);
    }
    let seg = dev.export(&buf, Mode::OWNER_ONLY)?;
    // Found by name, as a program in another VM would find it.
    let name = format!("rust-local-{}", std::process::id());
    seg.name(&name)?;
    let found = dev.search(&name)?;
    if found != seg.id() {
        return Err(format!("search {name:?} found {found}, not {}", seg.id()).into());
    }
    let permit = dev.get(found, Access::ReadWrite)?;
    let att = permit.attach(0, buf.len())?;
    let words = att.as_atomic_u64().ok_or("attachment not 8-byte aligned")?;
    for (i, w) in words.iter().enumerate() {
        let v = w.load(Ordering::Relaxed);
        if v != i as u64 ^ 0x5a5a {
            return Err(format!("word {i}: {v:#x}").into());
        }
        w.store(!v, Ordering::Relaxed);
    }
    let back = buf.as_atomic_u64()[1].load(Ordering::Relaxed);
    if back != !(1u64 ^ 0x5a5a) {
        return Err(format!("write through the attachment not seen: {back:#x}").into());
    }
    att.detach()?;
    permit.release()?;
    seg.remove()?;
    println!("segment of {pages} pages exported, attached, read and written: ok");
    Ok(())
}

fn main() -> ExitCode {
    let pages = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(16);
    match run(pages) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
