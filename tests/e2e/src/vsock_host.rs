//! The host side of the `vsock` group, run on the test host next to the
//! monitor (`xpmem-e2e vsock-host echo|recv ...`): a client of a VM's
//! vsock Unix socket on Firecracker's convention, with the same test
//! pattern and sum as `xpmem-test net-send` / `net-recv`
//! (`guest-driver/tools/xpmem-test.c`: word at offset `o` is
//! `(o / 8 + 1) * 0x9e3779b97f4a7c15 ^ NET_SEED`, the sum FNV-1a over the
//! words).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

const NET_SEED: u64 = 0x4e45_545f_5850_4d45;
const SUM_INIT: u64 = 0xcbf2_9ce4_8422_2325;
const CHUNK: usize = 256 << 10;

/// Why a host-side transfer failed (one line, printed as a FAIL result).
#[derive(Debug, thiserror::Error)]
pub enum VsockHostError {
    #[error("no `OK` from {socket} for CONNECT {port} within {secs} s (is the guest listening?)")]
    NoConnection {
        socket: String,
        port: u32,
        secs: u64,
    },
    #[error("nobody connected to {0} within the timeout")]
    NoPeer(String),
    #[error("I/O error {what}: {err}")]
    Io {
        what: &'static str,
        err: std::io::Error,
    },
    #[error("byte {off} reads {got:016x}, want {want:016x}")]
    Mismatch { off: u64, got: u64, want: u64 },
    #[error("{got} bytes arrived, want {want}")]
    Length { got: u64, want: u64 },
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> VsockHostError {
    move |err| VsockHostError::Io { what, err }
}

/// The word of the pattern at byte offset `off`.
pub fn word(off: u64) -> u64 {
    (off / 8 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ NET_SEED
}

fn sum_step(sum: u64, w: u64) -> u64 {
    (sum ^ w).wrapping_mul(0x0100_0000_01b3)
}

/// Checks a stream of pattern words and sums them.
#[derive(Default)]
pub struct Checker {
    off: u64,
    sum: u64,
    partial: Vec<u8>,
}

impl Checker {
    pub fn new() -> Self {
        Checker {
            off: 0,
            sum: SUM_INIT,
            partial: Vec::new(),
        }
    }

    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), VsockHostError> {
        while !data.is_empty() {
            let take = (8 - self.partial.len()).min(data.len());
            self.partial.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.partial.len() == 8 {
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.partial);
                self.partial.clear();
                let got = u64::from_le_bytes(b);
                let want = word(self.off);
                if got != want {
                    return Err(VsockHostError::Mismatch {
                        off: self.off,
                        got,
                        want,
                    });
                }
                self.sum = sum_step(self.sum, got);
                self.off += 8;
            }
        }
        Ok(())
    }

    /// (bytes, sum) once the stream ended; partial words count as bytes.
    pub fn finish(&self) -> (u64, u64) {
        (self.off + self.partial.len() as u64, self.sum)
    }
}

/// Writes `bytes` of the pattern; returns its sum.
fn send_pattern(w: &mut impl Write, bytes: u64) -> Result<u64, VsockHostError> {
    let mut sum = SUM_INIT;
    let mut off = 0u64;
    let mut chunk = Vec::with_capacity(CHUNK);
    while off < bytes {
        chunk.clear();
        let n = (bytes - off).min(CHUNK as u64);
        for i in 0..n / 8 {
            let x = word(off + i * 8);
            sum = sum_step(sum, x);
            chunk.extend_from_slice(&x.to_le_bytes());
        }
        w.write_all(&chunk).map_err(io("writing the pattern"))?;
        off += n;
    }
    Ok(sum)
}

/// Connects to the VM's socket and asks for guest `port`, retrying until
/// the guest listens or `timeout` passes.
pub fn connect(socket: &Path, port: u32, timeout: Duration) -> Result<UnixStream, VsockHostError> {
    let until = Instant::now() + timeout;
    while Instant::now() < until {
        if let Ok(s) = xpmem_vmm::exec::handshake(socket, port) {
            return Ok(s);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    Err(VsockHostError::NoConnection {
        socket: socket.display().to_string(),
        port,
        secs: timeout.as_secs(),
    })
}

/// Sends `bytes` of the pattern to the guest's echo server on `port` and
/// checks what comes back. Returns (bytes, sum sent, sum echoed, seconds).
pub fn echo(
    socket: &Path,
    port: u32,
    bytes: u64,
    timeout: Duration,
) -> Result<(u64, u64, u64, f64), VsockHostError> {
    let s = connect(socket, port, timeout)?;
    s.set_read_timeout(Some(timeout))
        .map_err(io("setting a timeout"))?;
    let t0 = Instant::now();
    let mut w = s.try_clone().map_err(io("cloning the stream"))?;
    let writer = std::thread::spawn(move || {
        let sum = send_pattern(&mut w, bytes);
        let _ = w.shutdown(std::net::Shutdown::Write);
        sum
    });
    let mut r = BufReader::with_capacity(CHUNK, s);
    let mut check = Checker::new();
    loop {
        let buf = r.fill_buf().map_err(io("reading the echo"))?;
        if buf.is_empty() {
            break;
        }
        let n = buf.len();
        check.feed(buf)?;
        r.consume(n);
    }
    let sent = writer.join().unwrap_or(Err(VsockHostError::NoPeer(
        "the writer thread panicked".into(),
    )))?;
    let (got, sum) = check.finish();
    if got != bytes {
        return Err(VsockHostError::Length { got, want: bytes });
    }
    Ok((got, sent, sum, t0.elapsed().as_secs_f64()))
}

/// Listens at `<socket>_<port>` for the guest's connection to the host and
/// checks `bytes` of the pattern. Returns (bytes, sum, seconds).
pub fn recv(
    socket: &Path,
    port: u32,
    bytes: u64,
    timeout: Duration,
) -> Result<(u64, u64, f64), VsockHostError> {
    let mut path = socket.as_os_str().to_owned();
    path.push(format!("_{port}"));
    let _ = std::fs::remove_file(&path);
    let l = UnixListener::bind(&path).map_err(io("listening"))?;
    l.set_nonblocking(true).map_err(io("listening"))?;
    let until = Instant::now() + timeout;
    let mut s = loop {
        match l.accept() {
            Ok((s, _)) => break s,
            Err(_) if Instant::now() < until => std::thread::sleep(Duration::from_millis(100)),
            Err(_) => {
                return Err(VsockHostError::NoPeer(
                    Path::new(&path).display().to_string(),
                ))
            }
        }
    };
    let _ = std::fs::remove_file(&path);
    s.set_nonblocking(false).map_err(io("accepting"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(io("setting a timeout"))?;
    let t0 = Instant::now();
    let mut check = Checker::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = s.read(&mut buf).map_err(io("reading"))?;
        if n == 0 {
            break;
        }
        check.feed(&buf[..n])?;
    }
    let (got, sum) = check.finish();
    if got != bytes {
        return Err(VsockHostError::Length { got, want: bytes });
    }
    Ok((got, sum, t0.elapsed().as_secs_f64()))
}

/// `vsock-host echo|recv --socket PATH --port P --bytes N [--timeout S]`:
/// prints `XPMEM-TEST vsock-host-<mode> ...` lines like the guest tool.
pub fn main(args: &[String]) -> i32 {
    let mode = args.first().map(String::as_str).unwrap_or("");
    let mut socket = None;
    let (mut port, mut bytes, mut secs) = (0u32, 0u64, 600u64);
    let mut it = args.iter().skip(1);
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        match k.as_str() {
            "--socket" => socket = Some(v.clone()),
            "--port" => port = v.parse().unwrap_or(0),
            "--bytes" => bytes = v.parse().unwrap_or(0),
            "--timeout" => secs = v.parse().unwrap_or(0),
            _ => socket = None,
        }
    }
    let check = format!("vsock-host-{mode}");
    let (Some(socket), true, true, true) = (socket, port > 0, bytes > 0, secs > 0) else {
        eprintln!(
            "usage: xpmem-e2e vsock-host echo|recv --socket PATH --port P --bytes N [--timeout S]"
        );
        return 2;
    };
    let timeout = Duration::from_secs(secs);
    let mib = |n: u64, t: f64| n as f64 / 1048576.0 / t.max(1e-6);
    let res = match mode {
        "echo" => echo(Path::new(&socket), port, bytes, timeout).map(|(n, sent, back, t)| {
            println!(
                "XPMEM-TEST {check} ECHO {n} bytes sum {sent:016x} echoed {back:016x} in {t:.1} s ({:.2} MiB/s each way)",
                mib(n, t)
            );
        }),
        "recv" => recv(Path::new(&socket), port, bytes, timeout).map(|(n, sum, t)| {
            println!(
                "XPMEM-TEST {check} RECEIVED {n} bytes sum {sum:016x} in {t:.1} s ({:.2} MiB/s)",
                mib(n, t)
            );
        }),
        _ => {
            eprintln!("usage: xpmem-e2e vsock-host echo|recv ...");
            return 2;
        }
    };
    match res {
        Ok(()) => {
            println!("XPMEM-TEST {check} PASS");
            0
        }
        Err(e) => {
            println!("XPMEM-TEST {check} FAIL {e}");
            1
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
mod tests {
    use super::*;

    #[test]
    fn checker_accepts_the_pattern_in_any_split_and_names_a_bad_word() {
        let mut data = Vec::new();
        let sum = send_pattern(&mut data, 4096).unwrap();
        let mut c = Checker::new();
        for part in data.chunks(13) {
            c.feed(part).unwrap();
        }
        assert_eq!(c.finish(), (4096, sum));
        data[800] ^= 1;
        let mut c = Checker::new();
        assert!(matches!(
            c.feed(&data),
            Err(VsockHostError::Mismatch { off: 800, .. })
        ));
    }

    #[test]
    fn the_sum_is_the_guest_tools() {
        // `xpmem-test net-send --bytes 8000000` printed this sum.
        let mut sink = std::io::sink();
        assert_eq!(
            send_pattern(&mut sink, 8_000_000).unwrap(),
            0x4839_9a76_2bde_76a5
        );
    }

    #[test]
    fn echo_and_recv_against_a_fake_device() {
        let dir = std::env::temp_dir().join(format!("vsock-host-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("a.vsock");
        let l = UnixListener::bind(&sock).unwrap();
        let fake = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut line = [0u8; 13];
            s.read_exact(&mut line).unwrap();
            assert_eq!(&line, b"CONNECT 5000\n");
            s.write_all(b"OK 1073741824\n").unwrap();
            let mut r = s.try_clone().unwrap();
            std::io::copy(&mut r, &mut s).unwrap();
        });
        let (n, sent, back, _) = echo(&sock, 5000, 1 << 20, Duration::from_secs(10)).unwrap();
        assert_eq!((n, sent), (1 << 20, back));
        fake.join().unwrap();
        let s2 = sock.clone();
        let guest = std::thread::spawn(move || {
            let mut p = s2.into_os_string();
            p.push("_6000");
            let mut s = loop {
                if let Ok(s) = UnixStream::connect(&p) {
                    break s;
                }
                std::thread::sleep(Duration::from_millis(10));
            };
            send_pattern(&mut s, 65536).unwrap()
        });
        let (n, sum, _) = recv(&sock, 6000, 65536, Duration::from_secs(10)).unwrap();
        assert_eq!((n, sum), (65536, guest.join().unwrap()));
    }
}
