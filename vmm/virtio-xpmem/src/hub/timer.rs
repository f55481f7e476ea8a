//! The deadline timer thread (`xpmem-deadline`): ticks the hub at the domain's next
//! deadline (invalidation deadline, resolve timeout).
//!
//! The thread runs an `event-manager` loop over two descriptors:
//!
//! - a `timerfd` on `CLOCK_MONOTONIC` (the clock behind `XpmemHub::now_ms`), armed for
//!   the earliest pending deadline, but at most [`TIMER_IDLE`] away: a deadline added
//!   without a wake-up is still found that soon;
//! - the wake eventfd, written after every batch of requests (one may have added an
//!   earlier deadline) and when the hub goes away.
//!
//! Either way the thread looks again: while the earliest deadline is due it ticks the hub,
//! then it re-arms the timerfd. The timerfd's expiry count is never read: re-arming it
//! (`timerfd_settime`) resets the count, and every event re-arms it, so it is not
//! reported again (the epoll set is level-triggered).
//!
//! The thread holds the hub only by a `Weak` reference, upgraded for one look at a time;
//! once the hub is gone, the next wake-up ends the thread. It takes the hub's locks only
//! in [`XpmemHub::tick`] and `next_deadline` (hub state, then endpoints one at a time);
//! its subscriber belongs to its manager alone, so it adds no lock of its own.
//!
//! The epoll instance, the timerfd and the eventfd are made with the hub, before any
//! seccomp filter; while running, the thread calls `epoll_wait`, `read` (the eventfd)
//! and `timerfd_settime`.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use event_manager::{
    EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberId, SubscriberOps,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

use super::{lock, XpmemHub};

/// Longest wait of the timer thread, deadline pending or not.
pub(super) const TIMER_IDLE: Duration = Duration::from_millis(1000);

/// Errors starting the deadline timer thread.
#[derive(Debug, thiserror::Error)]
pub enum TimerError {
    #[error("cannot create its wake eventfd: {0}")]
    Wake(std::io::Error),
    #[error("cannot create its timerfd: {0}")]
    TimerFd(std::io::Error),
    #[error("cannot set up its event loop: {0}")]
    Events(event_manager::Error),
    #[error("cannot spawn it: {0}")]
    Spawn(std::io::Error),
}

/// What the timer thread asks of its hub (the tests use a fake).
pub(super) trait Deadlines: Send + Sync + 'static {
    /// Now, in the milliseconds of the deadlines.
    fn now_ms(&self) -> u64;
    /// The earliest pending deadline, if any.
    fn next_deadline(&self) -> Option<u64>;
    /// Processes every deadline that is due.
    fn tick(&self);
}

impl Deadlines for XpmemHub {
    fn now_ms(&self) -> u64 {
        XpmemHub::now_ms(self)
    }
    fn next_deadline(&self) -> Option<u64> {
        XpmemHub::next_deadline(self)
    }
    fn tick(&self) {
        XpmemHub::tick(self);
    }
}

/// The hub's side of its timer thread: the wake eventfd and the thread to join.
pub(super) struct DeadlineTimer {
    wake: Arc<EventFd>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl DeadlineTimer {
    /// The wake eventfd; no thread yet ([`DeadlineTimer::start`]).
    pub(super) fn new() -> Result<Self, TimerError> {
        Ok(DeadlineTimer {
            wake: Arc::new(EventFd::new(EFD_NONBLOCK).map_err(TimerError::Wake)?),
            thread: Mutex::new(None),
        })
    }

    /// Starts the thread for `hub` (which owns `self`): its timerfd, its epoll instance,
    /// the first look at the deadlines in the thread. `idle` bounds every wait.
    pub(super) fn start<H: Deadlines>(
        &self,
        hub: Weak<H>,
        idle: Duration,
    ) -> Result<(), TimerError> {
        let timerfd = TimerFd::new().map_err(|e| TimerError::TimerFd(e.into()))?;
        let mut manager = EventManager::new_with_capacity(2).map_err(TimerError::Events)?;
        let id = manager.add_subscriber(Waiter {
            hub,
            timerfd,
            wake: self.wake.clone(),
            // A zero wait would disarm the timerfd instead of arming it.
            idle: idle.max(Duration::from_millis(1)),
            done: false,
            init_error: None,
        });
        let waiter = manager.subscriber_mut(id).map_err(TimerError::Events)?;
        if let Some(e) = waiter.init_error.take() {
            return Err(TimerError::Events(e));
        }
        let handle = std::thread::Builder::new()
            .name("xpmem-deadline".into())
            .spawn(move || run(manager, id))
            .map_err(TimerError::Spawn)?;
        *lock(&self.thread) = Some(handle);
        Ok(())
    }

    /// Makes the thread look at the deadlines again.
    pub(super) fn kick(&self) {
        // Fails only when the counter is about to overflow, that is with a wake-up
        // pending anyway.
        let _ = self.wake.write(1);
    }

    /// Called when the hub is dropped: wakes the thread, which finds the hub gone and
    /// ends, and waits for that unless this is the thread itself (it may drop the last
    /// reference to the hub). Returns whether it waited.
    pub(super) fn stop(&self) -> bool {
        self.kick();
        let Some(handle) = lock(&self.thread).take() else {
            return false;
        };
        if handle.thread().id() == std::thread::current().id() {
            return false;
        }
        // A panic in the thread was reported when it happened.
        let _ = handle.join();
        true
    }
}

/// Event data of the wake eventfd.
const WAKE: u32 = 0;
/// Event data of the timerfd.
const EXPIRED: u32 = 1;

/// The thread's one subscriber: the wake eventfd and the timerfd.
struct Waiter<H> {
    hub: Weak<H>,
    timerfd: TimerFd,
    wake: Arc<EventFd>,
    idle: Duration,
    /// The loop ends: the hub is gone, or the timerfd could not be armed.
    done: bool,
    init_error: Option<event_manager::Error>,
}

impl<H: Deadlines> Waiter<H> {
    /// Ticks the hub while its earliest deadline is due, then arms the timerfd for the
    /// next one. Sets `done` if the hub is gone or the timerfd cannot be armed.
    fn look(&mut self) {
        loop {
            let wait = {
                let Some(hub) = self.hub.upgrade() else {
                    self.done = true;
                    return;
                };
                let now = hub.now_ms();
                match hub.next_deadline() {
                    Some(d) if d <= now => {
                        hub.tick();
                        continue;
                    }
                    Some(d) => Duration::from_millis(d - now).min(self.idle),
                    None => self.idle,
                }
                // The hub is let go here: waiting with it would keep it alive.
            };
            // Not zero (d > now, idle >= 1 ms): this arms, it does not disarm.
            if let Err(e) = self.timerfd.reset(wait, None) {
                // Left as it is, an expired timerfd would be reported every round.
                log::error!(
                    "virtio-xpmem: deadline timer: cannot arm the timerfd: {e}; \
                     deadlines are no longer enforced"
                );
                self.done = true;
            }
            return;
        }
    }
}

impl<H: Deadlines> MutEventSubscriber for Waiter<H> {
    fn init(&mut self, ops: &mut EventOps) {
        let fds = [
            (self.wake.as_raw_fd(), WAKE),
            (self.timerfd.as_raw_fd(), EXPIRED),
        ];
        for (fd, data) in fds {
            if let Err(e) = ops.add(Events::with_data_raw(fd, data, EventSet::IN)) {
                self.init_error.get_or_insert(e);
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if self.done {
            return;
        }
        if events.data() == WAKE {
            // Every wake-up since the last read counts as one look.
            let _ = self.wake.read();
        }
        self.look();
    }
}

/// The thread: a first look, then rounds until the hub is gone. (`subscriber_mut` fails
/// only for an unknown id; `id` is the waiter's.)
fn run<H: Deadlines>(mut manager: EventManager<Waiter<H>>, id: SubscriberId) {
    if let Ok(waiter) = manager.subscriber_mut(id) {
        waiter.look();
    }
    while manager.subscriber_mut(id).is_ok_and(|w| !w.done) {
        if let Err(e) = manager.run() {
            log::error!(
                "virtio-xpmem: deadline timer: epoll_wait failed: {e}; \
                 deadlines are no longer enforced"
            );
            return;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
mod tests {
    use super::*;
    use crate::hub::HubConfig;
    use std::sync::mpsc::{channel, Receiver, Sender};
    use std::time::Instant;

    /// Generous: the machine running the tests may be busy.
    const PATIENCE: Duration = Duration::from_secs(5);
    /// Longer than any test: only the timerfd or a wake-up can make the thread look.
    const NEVER: Duration = Duration::from_secs(3600);

    /// A hub with a list of deadlines; a tick takes those due and reports each with the
    /// time it was taken at.
    struct Fake {
        start: Instant,
        deadlines: Mutex<Vec<u64>>,
        fired: Mutex<Sender<(u64, u64)>>,
        /// Makes `tick` say it has begun, then wait for a message.
        hold: Option<Mutex<(Sender<()>, Receiver<()>)>>,
        dropped: Mutex<Option<Sender<bool>>>,
        timer: DeadlineTimer,
    }

    impl Deadlines for Fake {
        fn now_ms(&self) -> u64 {
            u64::try_from(self.start.elapsed().as_millis()).unwrap()
        }
        fn next_deadline(&self) -> Option<u64> {
            lock(&self.deadlines).iter().copied().min()
        }
        fn tick(&self) {
            if let Some(hold) = &self.hold {
                let hold = lock(hold);
                hold.0.send(()).unwrap();
                hold.1.recv().unwrap();
            }
            let now = self.now_ms();
            let mut deadlines = lock(&self.deadlines);
            let due: Vec<u64> = deadlines.iter().copied().filter(|&d| d <= now).collect();
            deadlines.retain(|&d| d > now);
            for d in due {
                let _ = lock(&self.fired).send((d, now));
            }
        }
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            let joined = self.timer.stop();
            if let Some(tx) = lock(&self.dropped).take() {
                let _ = tx.send(joined);
            }
        }
    }

    /// A fake with `deadlines` and its timer thread; what fires comes out of the receiver.
    fn fake(
        deadlines: &[u64],
        hold: Option<(Sender<()>, Receiver<()>)>,
    ) -> (Arc<Fake>, Receiver<(u64, u64)>, Receiver<bool>) {
        let (fired, fired_rx) = channel();
        let (dropped, dropped_rx) = channel();
        let fake = Arc::new(Fake {
            start: Instant::now(),
            deadlines: Mutex::new(deadlines.to_vec()),
            fired: Mutex::new(fired),
            hold: hold.map(Mutex::new),
            dropped: Mutex::new(Some(dropped)),
            timer: DeadlineTimer::new().unwrap(),
        });
        fake.timer.start(Arc::downgrade(&fake), NEVER).unwrap();
        (fake, fired_rx, dropped_rx)
    }

    #[test]
    fn a_deadline_fires_at_its_time_without_any_other_event() {
        let (fake, fired, _) = fake(&[300], None);
        let (deadline, at) = fired.recv_timeout(PATIENCE).unwrap();
        assert_eq!(deadline, 300);
        assert!(at >= 300, "fired at {at} ms, before its deadline");
        assert!(lock(&fake.deadlines).is_empty());
    }

    #[test]
    fn an_earlier_deadline_scheduled_while_waiting_fires_first() {
        let (fake, fired, _) = fake(&[60_000], None);
        // Let the thread arm the timerfd for the later deadline (not asserted: either way
        // the earlier one must come first).
        std::thread::sleep(Duration::from_millis(100));
        let early = fake.now_ms() + 200;
        lock(&fake.deadlines).push(early);
        fake.timer.kick();
        let (deadline, at) = fired.recv_timeout(PATIENCE).unwrap();
        assert_eq!(deadline, early);
        assert!(at >= early, "fired at {at} ms, before its deadline {early}");
        assert_eq!(*lock(&fake.deadlines), vec![60_000]);
    }

    #[test]
    fn dropping_the_hub_ends_the_thread() {
        let (fake, _, dropped) = fake(&[60_000], None);
        // Dropped on another thread, so that a hang fails the test instead of stopping it.
        std::thread::spawn(move || drop(fake));
        // True: the drop waited for the thread to end.
        assert!(dropped.recv_timeout(PATIENCE).unwrap());
    }

    #[test]
    fn the_thread_may_drop_the_last_reference_itself() {
        let (began, began_rx) = channel();
        let (release, hold) = channel();
        let (fake, fired, dropped) = fake(&[100], Some((began, hold)));
        // The thread holds the hub while its tick waits; then ours goes away.
        began_rx.recv_timeout(PATIENCE).unwrap();
        let weak = Arc::downgrade(&fake);
        drop(fake);
        release.send(()).unwrap();
        assert_eq!(fired.recv_timeout(PATIENCE).unwrap().0, 100);
        // False: the hub was dropped by the thread, which does not wait for itself.
        assert!(!dropped.recv_timeout(PATIENCE).unwrap());
        assert!(weak.upgrade().is_none());
    }

    #[test]
    fn a_hub_with_a_monotonic_clock_has_a_thread_that_ends_with_it() {
        let hub = XpmemHub::new(HubConfig::default()).unwrap();
        assert!(lock(&hub.timer.as_ref().unwrap().thread).is_some());
        let (done, done_rx) = channel();
        std::thread::spawn(move || {
            drop(hub);
            let _ = done.send(());
        });
        done_rx.recv_timeout(PATIENCE).unwrap();
    }

    #[test]
    fn a_hub_with_a_manual_clock_has_no_thread() {
        let hub = XpmemHub::with_backend(
            HubConfig::default(),
            Box::new(crate::aperture::MmapAperture::with_budget(16)),
            crate::hub::HubClock::Manual(crate::hub::ManualClock::default()),
        )
        .unwrap();
        assert!(hub.timer.is_none());
    }
}
