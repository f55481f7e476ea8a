//! A read-only MC146818 CMOS real-time clock on ports 0x70 (index) and
//! 0x71 (data), reporting the host's UTC time in BCD, 24-hour mode.
//!
//! Without it the guest's `rtc_cmos` probe reads all-ones, takes the
//! update-in-progress bit as stuck, and spends seconds of boot time before
//! giving up (and the guest has no wall-clock time). Alarms, periodic
//! interrupts and CMOS RAM are not emulated: writes are ignored and other
//! registers read 0.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::bus::BusDevice;

pub const CMOS_BASE: u16 = 0x70;
pub const CMOS_LEN: u64 = 2;

const INDEX_OFFSET: u64 = 0;
const DATA_OFFSET: u64 = 1;

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;
/// Register A: 32.768 kHz time base, 1024 Hz rate, update not in progress.
const REG_A_VALUE: u8 = 0x26;
/// Register B: 24-hour mode, BCD, no interrupts.
const REG_B_VALUE: u8 = 0x02;
/// Register D: valid RAM and time (battery good).
const REG_D_VALUE: u8 = 0x80;
/// Bit 7 of the index port is the NMI mask, not part of the index.
const INDEX_MASK: u8 = 0x7f;

/// Where the clock reads the time from (the host clock; fixed in tests).
pub type Clock = fn() -> u64;

fn host_unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub struct Cmos {
    index: u8,
    clock: Clock,
}

impl Cmos {
    pub fn new() -> Self {
        Self::with_clock(host_unix_seconds)
    }

    pub fn with_clock(clock: Clock) -> Self {
        Cmos { index: 0, clock }
    }

    fn register(&self, index: u8) -> u8 {
        let t = CivilTime::from_unix((self.clock)());
        match index {
            REG_SECONDS => bcd(t.second),
            REG_MINUTES => bcd(t.minute),
            REG_HOURS => bcd(t.hour),
            REG_WEEKDAY => bcd(t.weekday),
            REG_DAY => bcd(t.day),
            REG_MONTH => bcd(t.month),
            REG_YEAR => bcd((t.year % 100) as u8),
            REG_CENTURY => bcd((t.year / 100 % 100) as u8),
            REG_A => REG_A_VALUE,
            REG_B => REG_B_VALUE,
            REG_C => 0,
            REG_D => REG_D_VALUE,
            _ => 0,
        }
    }
}

impl Default for Cmos {
    fn default() -> Self {
        Self::new()
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            DATA_OFFSET => self.register(self.index),
            _ => 0xff,
        };
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (INDEX_OFFSET, Some(&value)) = (offset, data.first()) {
            self.index = value & INDEX_MASK;
        }
    }
}

fn bcd(value: u8) -> u8 {
    ((value / 10) << 4) | (value % 10)
}

/// A UTC calendar time.
#[derive(Debug, PartialEq, Eq)]
struct CivilTime {
    year: u32,
    month: u8,
    day: u8,
    hour: u8,
    minute: u8,
    second: u8,
    /// 1 = Sunday, as the MC146818 counts.
    weekday: u8,
}

impl CivilTime {
    fn from_unix(secs: u64) -> Self {
        let days = secs / 86_400;
        let rem = secs % 86_400;
        // Civil-from-days (Howard Hinnant's algorithm), valid for all u64 days we can get.
        let z = days as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
        let year = (yoe + era * 400 + i64::from(month <= 2)) as u32;
        CivilTime {
            year,
            month,
            day,
            hour: (rem / 3600) as u8,
            minute: (rem / 60 % 60) as u8,
            second: (rem % 60) as u8,
            // 1970-01-01 was a Thursday (5 when Sunday is 1).
            weekday: ((days + 4) % 7 + 1) as u8,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
mod tests {
    use super::*;

    #[test]
    fn calendar() {
        assert_eq!(
            CivilTime::from_unix(0),
            CivilTime {
                year: 1970,
                month: 1,
                day: 1,
                hour: 0,
                minute: 0,
                second: 0,
                weekday: 5
            }
        );
        // 2026-11-25 14:03:09 UTC, a Wednesday.
        assert_eq!(
            CivilTime::from_unix(1_795_615_389),
            CivilTime {
                year: 2026,
                month: 11,
                day: 25,
                hour: 14,
                minute: 3,
                second: 9,
                weekday: 4
            }
        );
        // Leap day.
        let t = CivilTime::from_unix(951_782_400); // 2000-02-29
        assert_eq!((t.year, t.month, t.day), (2000, 2, 29));
    }

    fn read(cmos: &mut Cmos, index: u8) -> u8 {
        cmos.write(INDEX_OFFSET, &[index | 0x80]);
        let mut v = [0u8];
        cmos.read(DATA_OFFSET, &mut v);
        v[0]
    }

    #[test]
    fn registers_are_bcd_and_the_clock_is_valid() {
        let mut cmos = Cmos::with_clock(|| 1_795_615_389);
        assert_eq!(read(&mut cmos, REG_SECONDS), 0x09);
        assert_eq!(read(&mut cmos, REG_MINUTES), 0x03);
        assert_eq!(read(&mut cmos, REG_HOURS), 0x14);
        assert_eq!(read(&mut cmos, REG_DAY), 0x25);
        assert_eq!(read(&mut cmos, REG_MONTH), 0x11);
        assert_eq!(read(&mut cmos, REG_YEAR), 0x26);
        assert_eq!(read(&mut cmos, REG_CENTURY), 0x20);
        assert_eq!(read(&mut cmos, REG_WEEKDAY), 0x04);
        // Never "update in progress", and the battery is good.
        assert_eq!(read(&mut cmos, REG_A) & 0x80, 0);
        assert_eq!(read(&mut cmos, REG_D), 0x80);
        assert_eq!(read(&mut cmos, 0x40), 0);
        // Writes to the data port change nothing.
        cmos.write(INDEX_OFFSET, &[REG_SECONDS]);
        cmos.write(DATA_OFFSET, &[0x55]);
        assert_eq!(read(&mut cmos, REG_SECONDS), 0x09);
    }
}
