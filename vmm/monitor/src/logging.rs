//! The monitor's log: what the device models and the VMM crates report through the `log`
//! crate (a guest's malformed request, a host I/O error behind a disk, a queue a guest
//! corrupted) goes to stderr, so that whoever runs the setup sees it:
//! `xpmem-vmm: VM a: warning: virtio-blk: request 3 refused: ...` (in a VM's process; the
//! broker's lines carry no VM name).
//!
//! `XPMEM_VMM_LOG=off|error|warn|info|debug|trace` chooses the level (default `warn`).
//! A guest can make a device warn at will, so the output is bounded: a burst of
//! [`BURST`] lines, then at most [`PER_SECOND`] a second, with the number left out said
//! once lines flow again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// Lines that may go out at once.
pub const BURST: f64 = 100.0;
/// Lines per second after the burst.
pub const PER_SECOND: f64 = 10.0;

struct Budget {
    tokens: f64,
    last: Instant,
}

struct StderrLog {
    /// The VM this process runs, once known.
    vm: OnceLock<String>,
    budget: Mutex<Option<Budget>>,
    suppressed: AtomicU64,
}

static LOG: StderrLog = StderrLog {
    vm: OnceLock::new(),
    budget: Mutex::new(None),
    suppressed: AtomicU64::new(0),
};

impl StderrLog {
    /// Takes one line's token; false when the budget is spent.
    fn take(&self) -> bool {
        let mut g = self.budget.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let b = g.get_or_insert(Budget {
            tokens: BURST,
            last: now,
        });
        let refill = now.duration_since(b.last).as_secs_f64() * PER_SECOND;
        b.tokens = (b.tokens + refill).min(BURST);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn level_word(level: log::Level) -> &'static str {
    match level {
        log::Level::Error => "error",
        log::Level::Warn => "warning",
        log::Level::Info => "info",
        log::Level::Debug => "debug",
        log::Level::Trace => "trace",
    }
}

impl log::Log for StderrLog {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        if !self.take() {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let vm = self
            .vm
            .get()
            .map_or_else(String::new, |name| format!("VM {name}: "));
        let left_out = self.suppressed.swap(0, Ordering::Relaxed);
        if left_out > 0 {
            crate::report!("xpmem-vmm: {vm}{left_out} log lines left out (too many at once)");
        }
        crate::report!(
            "xpmem-vmm: {vm}{}: {}",
            level_word(record.level()),
            record.args()
        );
    }

    fn flush(&self) {}
}

/// The level `XPMEM_VMM_LOG` asks for (`warn` when unset or not a level).
fn level_from_env() -> log::LevelFilter {
    std::env::var("XPMEM_VMM_LOG")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(log::LevelFilter::Warn)
}

/// Sends the `log` crate's records to stderr (once per process; later calls change
/// nothing).
pub fn install() {
    if log::set_logger(&LOG).is_ok() {
        log::set_max_level(level_from_env());
    }
}

/// This process runs VM `name`: its lines say so.
pub fn set_vm(name: &str) {
    let _ = LOG.vm.set(name.to_string());
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // test code
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_lines_is_cut_to_the_burst_then_the_rate() {
        let log = StderrLog {
            vm: OnceLock::new(),
            budget: Mutex::new(None),
            suppressed: AtomicU64::new(0),
        };
        let passed = (0..1000).filter(|_| log.take()).count();
        // The burst, and at most a few refilled while the loop ran.
        assert!((100..=110).contains(&passed), "{passed}");
        std::thread::sleep(std::time::Duration::from_millis(300));
        // About 3 more after 0.3 s at 10 a second (bounds generous for a slow machine).
        let later = (0..1000).filter(|_| log.take()).count();
        assert!((2..=100).contains(&later), "{later}");
    }

    #[test]
    fn levels_read_as_words() {
        assert_eq!(level_word(log::Level::Warn), "warning");
        assert_eq!(
            "debug".parse::<log::LevelFilter>().ok(),
            Some(log::LevelFilter::Debug)
        );
    }
}
