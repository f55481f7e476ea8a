//! The deadline timer thread (`xpmem-deadline`): sleeps until the domain's next deadline
//! and ticks the hub then.

use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

use super::{lock, XpmemHub};

pub(super) struct TimerCtl {
    pub(super) flags: Mutex<(bool, bool)>, // (shutdown, kicked)
    pub(super) cv: Condvar,
}

impl TimerCtl {
    pub(super) fn kick(&self) {
        lock(&self.flags).1 = true;
        self.cv.notify_one();
    }
}

/// Longest sleep of the timer thread when no deadline is pending.
const TIMER_IDLE: Duration = Duration::from_millis(1000);

pub(super) fn timer_loop(hub: Weak<XpmemHub>, ctl: Arc<TimerCtl>) {
    loop {
        let wait = {
            let Some(hub) = hub.upgrade() else {
                return;
            };
            let now = hub.now_ms();
            match hub.next_deadline() {
                Some(d) if d <= now => {
                    hub.tick();
                    continue;
                }
                Some(d) => Duration::from_millis(d - now).min(TIMER_IDLE),
                None => TIMER_IDLE,
            }
        };
        let mut flags = lock(&ctl.flags);
        if flags.0 {
            return;
        }
        if !flags.1 {
            flags = ctl
                .cv
                .wait_timeout(flags, wait)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        if flags.0 {
            return;
        }
        flags.1 = false;
    }
}
