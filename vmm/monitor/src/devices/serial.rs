//! COM1: a 16550A UART (vm-superio) on port 0x3f8, IRQ 4 through an irqfd,
//! with its output going to a per-VM console sink.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::bus::BusDevice;

pub const SERIAL_BASE: u16 = 0x3f8;
pub const SERIAL_LEN: u64 = 8;

/// Raises the serial interrupt by writing the irqfd registered for GSI 4.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Where a VM's console output goes.
pub enum ConsoleSink {
    /// A shared stream (the monitor's stdout), every line prefixed with the
    /// VM name so several VMs can share it. With `immediate`, partial lines
    /// are written at once (interactive use: shell prompts); otherwise whole
    /// lines are written with one `write_all` so VMs never interleave inside
    /// a line.
    Prefixed {
        out: Box<dyn Write + Send>,
        prefix: String,
        line: Vec<u8>,
        immediate: bool,
        at_line_start: bool,
    },
    /// A file, written byte for byte.
    File(File),
}

/// Longest partial line held back before it is written anyway.
const MAX_LINE: usize = 4096;

impl ConsoleSink {
    /// The monitor's stdout with a `[vm-NAME] ` prefix per line.
    pub fn stdout(vm_name: &str, immediate: bool) -> Self {
        Self::prefixed(Box::new(io::stdout()), vm_name, immediate)
    }

    pub fn prefixed(out: Box<dyn Write + Send>, vm_name: &str, immediate: bool) -> Self {
        ConsoleSink::Prefixed {
            out,
            prefix: format!("[vm-{vm_name}] "),
            line: Vec::with_capacity(256),
            immediate,
            at_line_start: true,
        }
    }

    pub fn file(path: &Path) -> io::Result<Self> {
        Ok(ConsoleSink::File(File::create(path)?))
    }

    /// Writes out a held-back partial line, ending it; used when the VM ends.
    pub fn finish(&mut self) -> io::Result<()> {
        match self {
            ConsoleSink::File(f) => f.flush(),
            ConsoleSink::Prefixed {
                out,
                prefix,
                line,
                at_line_start,
                ..
            } => {
                let mut chunk = Vec::new();
                if !line.is_empty() {
                    if *at_line_start {
                        chunk.extend_from_slice(prefix.as_bytes());
                    }
                    chunk.append(line);
                    *at_line_start = false;
                }
                if !*at_line_start {
                    chunk.push(b'\n');
                    *at_line_start = true;
                }
                out.write_all(&chunk)?;
                out.flush()
            }
        }
    }
}

impl Write for ConsoleSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            ConsoleSink::File(f) => f.write(buf),
            ConsoleSink::Prefixed {
                out,
                prefix,
                line,
                immediate,
                at_line_start,
            } => {
                for &b in buf {
                    if b == b'\r' && !*immediate {
                        // Line mode re-emits the prefix per line; CRs only garble it.
                        continue;
                    }
                    line.push(b);
                    if b == b'\n' || line.len() >= MAX_LINE || *immediate {
                        let mut chunk = Vec::with_capacity(prefix.len() + line.len());
                        if *at_line_start {
                            chunk.extend_from_slice(prefix.as_bytes());
                        }
                        chunk.append(line);
                        out.write_all(&chunk)?;
                        out.flush()?;
                        *at_line_start = b == b'\n';
                    }
                }
                Ok(buf.len())
            }
        }
    }

    /// Called by the UART after every byte. Bytes are pushed out by `write`
    /// as soon as a line (or, when immediate, a byte) is complete; a partial
    /// line is kept so lines are not split.
    fn flush(&mut self) -> io::Result<()> {
        match self {
            ConsoleSink::File(f) => f.flush(),
            ConsoleSink::Prefixed { .. } => Ok(()),
        }
    }
}

type Uart = Serial<IrqTrigger, NoEvents, ConsoleSink>;

/// The COM1 bus device.
pub struct SerialDevice {
    uart: Uart,
}

impl SerialDevice {
    /// `irq` must be registered as the irqfd of GSI 4.
    pub fn new(sink: ConsoleSink) -> io::Result<Self> {
        let irq = IrqTrigger(EventFd::new(EFD_NONBLOCK)?);
        Ok(SerialDevice {
            uart: Serial::new(irq, sink),
        })
    }

    /// The interrupt eventfd to register with KVM.
    pub fn irqfd(&self) -> &EventFd {
        &self.uart.interrupt_evt().0
    }

    /// Free space in the receive FIFO.
    pub fn input_room(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// Queues terminal input for the guest; bytes that do not fit the FIFO
    /// are dropped (as a real UART would overrun). Returns how many were taken.
    pub fn enqueue_input(&mut self, input: &[u8]) -> usize {
        let room = self.uart.fifo_capacity();
        let take = input.len().min(room);
        if take == 0 {
            return 0;
        }
        match self.uart.enqueue_raw_bytes(&input[..take]) {
            Ok(n) => n,
            Err(e) => {
                log::warn!("serial: cannot queue input: {e:?}");
                0
            }
        }
    }

    /// Writes out any partial console line (when the VM ends).
    pub fn flush(&mut self) {
        if let Err(e) = self.uart.writer_mut().finish() {
            log::warn!("serial: cannot flush console: {e}");
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data.len()) {
            (Ok(off), 1) => data[0] = self.uart.read(off),
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(off), [value]) = (u8::try_from(offset), data) {
            // Errors are console write failures (closed stdout, full disk);
            // the guest must keep running, so they are logged only.
            if let Err(e) = self.uart.write(off, *value) {
                log::warn!("serial: {e:?}");
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
mod tests {
    use super::*;
    use std::io::Read;
    use vmm_sys_util::tempfile::TempFile;

    const THR: u64 = 0;
    const IER: u64 = 1;
    const LSR: u64 = 5;

    #[test]
    fn output_goes_to_the_file_and_input_raises_the_irq() {
        let tmp = TempFile::new().unwrap();
        let mut dev = SerialDevice::new(ConsoleSink::file(tmp.as_path()).unwrap()).unwrap();
        for b in b"hi\n" {
            dev.write(THR, &[*b]);
        }
        dev.flush();
        let mut text = String::new();
        File::open(tmp.as_path())
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "hi\n");

        // Enable the "received data available" interrupt, then type.
        dev.write(IER, &[0x1]);
        assert_eq!(dev.enqueue_input(b"ls\n"), 3);
        assert_eq!(dev.irqfd().read().unwrap(), 1);
        let mut lsr = [0u8];
        dev.read(LSR, &mut lsr);
        assert_eq!(lsr[0] & 1, 1, "data ready");
        let mut rbr = [0u8];
        dev.read(THR, &mut rbr);
        assert_eq!(rbr[0], b'l');
    }

    /// A clonable in-memory stream standing in for stdout.
    #[derive(Clone, Default)]
    struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn type_into(dev: &mut SerialDevice, text: &[u8]) {
        for b in text {
            dev.write(THR, &[*b]);
        }
    }

    #[test]
    fn line_mode_prefixes_whole_lines_and_never_splits_them() {
        let out = Shared::default();
        let mut a =
            SerialDevice::new(ConsoleSink::prefixed(Box::new(out.clone()), "a", false)).unwrap();
        let mut b =
            SerialDevice::new(ConsoleSink::prefixed(Box::new(out.clone()), "b", false)).unwrap();
        type_into(&mut a, b"hello ");
        type_into(&mut b, b"other\r\n");
        type_into(&mut a, b"world\r\nnext");
        a.flush();
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text, "[vm-b] other\n[vm-a] hello world\n[vm-a] next\n");
    }

    #[test]
    fn immediate_mode_writes_partial_lines() {
        let out = Shared::default();
        let mut a =
            SerialDevice::new(ConsoleSink::prefixed(Box::new(out.clone()), "a", true)).unwrap();
        type_into(&mut a, b"$ ");
        assert_eq!(out.0.lock().unwrap().as_slice(), b"[vm-a] $ ");
        type_into(&mut a, b"ls\r\nx");
        a.flush();
        assert_eq!(
            String::from_utf8(out.0.lock().unwrap().clone()).unwrap(),
            "[vm-a] $ ls\r\n[vm-a] x\n"
        );
    }

    #[test]
    fn input_beyond_the_fifo_is_dropped() {
        let mut dev = SerialDevice::new(ConsoleSink::stdout("t", false)).unwrap();
        let big = vec![b'x'; 1000];
        let taken = dev.enqueue_input(&big);
        assert!(taken > 0 && taken < 1000);
        assert_eq!(dev.enqueue_input(b"y"), 0);
    }

    #[test]
    fn wide_accesses_are_ignored() {
        let mut dev = SerialDevice::new(ConsoleSink::stdout("t", false)).unwrap();
        let mut wide = [0u8; 2];
        dev.read(LSR, &mut wide);
        assert_eq!(wide, [0xff, 0xff]);
        dev.write(THR, &[1, 2]);
    }
}
