//! Descriptors waited on a round at a time, on rust-vmm's `event-manager`: the shape of
//! the switch's loop ([`crate::server`]) and of the vsock router's, which read a batch
//! from every ready connection, accept, then write every connection in turn.
//!
//! One subscriber records what the manager reports; [`Readiness::wait`] returns it, and
//! the loop handles the round in its own order. The epoll set is level-triggered, so a
//! descriptor that stays ready (a port whose backlog outlasts one batch) is reported
//! again the next round, as `poll(2)` reported it. Unlike a `poll(2)` array rebuilt every
//! round, the set persists: a descriptor is watched once ([`Readiness::watch`], again
//! only when what it is watched for changes) and must be taken out
//! ([`Readiness::unwatch`]) before it is closed.

use std::collections::HashMap;
use std::os::fd::RawFd;

use event_manager::{
    EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberId, SubscriberOps,
};

/// Records what the manager reports, for [`Readiness::wait`] to return.
struct Recorder {
    fired: HashMap<RawFd, EventSet>,
}

impl MutEventSubscriber for Recorder {
    fn init(&mut self, _ops: &mut EventOps) {}

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        *self.fired.entry(events.fd()).or_insert(EventSet::empty()) |= events.event_set();
    }
}

/// What a round found ready: each descriptor with what it is ready for (epoll reports
/// hang-up and error whatever it is watched for).
#[derive(Debug, Default)]
pub struct Ready(HashMap<RawFd, EventSet>);

impl Ready {
    /// What `fd` is ready for, if anything.
    pub fn get(&self, fd: RawFd) -> Option<EventSet> {
        self.0.get(&fd).copied()
    }

    /// Whether `fd` is ready in any way (readable, writable, hung up, in error).
    pub fn contains(&self, fd: RawFd) -> bool {
        self.0.contains_key(&fd)
    }

    /// Whether `fd` has something to read: data, its end, or an error to pick up.
    pub fn readable(&self, fd: RawFd) -> bool {
        self.get(fd)
            .is_some_and(|e| e.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A set of watched descriptors: one epoll instance (created by [`Readiness::new`], so
/// during set-up), one subscriber.
pub struct Readiness {
    manager: EventManager<Recorder>,
    id: SubscriberId,
    /// What each descriptor is watched for now.
    watched: HashMap<RawFd, EventSet>,
}

impl Readiness {
    /// An empty set whose rounds report at most `capacity` descriptors each (the rest
    /// stay ready for the next round).
    pub fn new(capacity: usize) -> Result<Self, event_manager::Error> {
        let mut manager = EventManager::new_with_capacity(capacity)?;
        let id = manager.add_subscriber(Recorder {
            fired: HashMap::new(),
        });
        Ok(Readiness {
            manager,
            id,
            watched: HashMap::new(),
        })
    }

    /// Watches `fd` for `events`: adds it, or changes what it is watched for (nothing to
    /// do if that is unchanged).
    pub fn watch(&mut self, fd: RawFd, events: EventSet) -> Result<(), event_manager::Error> {
        let now = self.watched.get(&fd).copied();
        if now == Some(events) {
            return Ok(());
        }
        let mut ops = self.manager.event_ops(self.id)?;
        match now {
            Some(_) => ops.modify(Events::new_raw(fd, events))?,
            None => ops.add(Events::new_raw(fd, events))?,
        }
        self.watched.insert(fd, events);
        Ok(())
    }

    /// Stops watching `fd`, which must still be open (nothing if it is not watched).
    pub fn unwatch(&mut self, fd: RawFd) -> Result<(), event_manager::Error> {
        let Some(events) = self.watched.remove(&fd) else {
            return Ok(());
        };
        self.manager
            .event_ops(self.id)?
            .remove(Events::new_raw(fd, events))
    }

    /// Waits at most `timeout_ms` (-1: no limit) until a watched descriptor is ready;
    /// returns those that are (none after the timeout or a signal's interruption).
    pub fn wait(&mut self, timeout_ms: i32) -> Result<Ready, event_manager::Error> {
        self.manager.run_with_timeout(timeout_ms)?;
        let recorder = self.manager.subscriber_mut(self.id)?;
        Ok(Ready(std::mem::take(&mut recorder.fired)))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_round_reports_what_is_ready_until_it_is_handled() {
        let mut set = Readiness::new(8).unwrap();
        let (mut a, mut a_peer) = UnixStream::pair().unwrap();
        let (b, b_peer) = UnixStream::pair().unwrap();
        let (fa, fb) = (a.as_raw_fd(), b.as_raw_fd());
        set.watch(fa, EventSet::IN).unwrap();
        set.watch(fb, EventSet::IN).unwrap();
        // Nothing to read: the round times out empty.
        assert!(set.wait(0).unwrap().is_empty());
        // Level-triggered: a is reported until it is read.
        a_peer.write_all(b"x").unwrap();
        for _ in 0..2 {
            let ready = set.wait(1000).unwrap();
            assert!(ready.readable(fa) && !ready.contains(fb));
        }
        a.read_exact(&mut [0u8; 1]).unwrap();
        assert!(set.wait(0).unwrap().is_empty());
        // Watched for writing too (twice: the second changes nothing), a is writable.
        set.watch(fa, EventSet::IN | EventSet::OUT).unwrap();
        set.watch(fa, EventSet::IN | EventSet::OUT).unwrap();
        let ready = set.wait(0).unwrap();
        assert_eq!(ready.get(fa), Some(EventSet::OUT));
        assert!(!ready.readable(fa));
        set.watch(fa, EventSet::IN).unwrap();
        // A hang-up is readable.
        drop(b_peer);
        let ready = set.wait(1000).unwrap();
        assert!(ready.readable(fb) && !ready.contains(fa));
        // Unwatched, then closed: its number can be watched again.
        set.unwatch(fb).unwrap();
        set.unwatch(fb).unwrap();
        assert!(set.wait(0).unwrap().is_empty());
        drop(b);
        let (c, mut c_peer) = UnixStream::pair().unwrap();
        set.watch(c.as_raw_fd(), EventSet::IN).unwrap();
        c_peer.write_all(b"y").unwrap();
        assert!(set.wait(1000).unwrap().readable(c.as_raw_fd()));
        drop(a_peer);
    }
}
