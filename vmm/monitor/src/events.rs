//! The monitor's event loops on rust-vmm's `event-manager` (issue 12 item 5): every
//! source of events is a subscriber of an [`EventManager`] (one epoll instance per loop,
//! level-triggered, so a source that stays ready is reported again each round, as
//! `poll(2)` reported it).
//!
//! - A VM's **event thread** ([`EventThread`]): one [`QueueNotifiers`] per virtio
//!   transport (its ioeventfds), one [`Backend`] per device with a backend descriptor,
//!   the serial [`Input`] and the [`Stop`] eventfd.
//! - The **main threads** of a VM process, of the broker and of the single process wait
//!   on a [`Watch`]: one [`Watched`] subscriber per descriptor records that it fired,
//!   and the loop acts on it (stopping a VM, reaping a child: what the loop itself owns).
//!
//! The subscribers' mutexes are taken by their loop's thread only, before any other
//! lock (a transport's, the UART's): they add nothing to the lock order
//! (docs/DESIGN.md).
//!
//! Every manager is created during set-up: `epoll_create1` is not on the seccomp lists
//! ([`crate::sandbox`]); while running, the loops only call `epoll_wait` and `epoll_ctl`.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{
    EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberId, SubscriberOps,
};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::lock;
use crate::devices::serial::SerialDevice;
use crate::vm::{SerialInput, SharedTransport};

/// An event loop's manager: subscribers are shared with the loop, which asks some of
/// them what to watch after every round (see [`EventThread::run`]).
pub type Manager = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

/// A subscriber whose `init` registers descriptors and so can fail: it keeps the first
/// error for [`subscribe`] to return (`init` itself returns nothing).
trait Registering: MutEventSubscriber + Send {
    fn take_init_error(&mut self) -> Option<event_manager::Error>;
}

/// Adds `subscriber` to `manager` (its `init` registers what it watches); returns its
/// id and a handle on it, or the error its registration met.
fn subscribe<S: Registering + 'static>(
    manager: &mut Manager,
    subscriber: S,
) -> Result<(SubscriberId, Arc<Mutex<S>>), event_manager::Error> {
    let subscriber = Arc::new(Mutex::new(subscriber));
    let id = manager.add_subscriber(subscriber.clone());
    let error = lock(&subscriber).take_init_error();
    match error {
        Some(e) => {
            // Nothing of it stays registered.
            let _ = manager.remove_subscriber(id);
            Err(e)
        }
        None => Ok((id, subscriber)),
    }
}

/// Keeps the first error of a registration done in `init`.
fn keep_error(slot: &mut Option<event_manager::Error>, result: event_manager::Result<()>) {
    if let Err(e) = result {
        slot.get_or_insert(e);
    }
}

// ----- A VM's event thread -----

/// One virtio transport's queue notifications: an ioeventfd per queue (KVM signals it
/// on the guest's QueueNotify write of that queue's index), each turned into
/// `queue_notify` of its queue under the transport mutex, as the register write would be.
pub struct QueueNotifiers {
    transport: SharedTransport,
    /// Queue `i`'s eventfd at index `i` (also the data of its events).
    evts: Vec<EventFd>,
    init_error: Option<event_manager::Error>,
}

impl QueueNotifiers {
    pub fn new(transport: SharedTransport, evts: Vec<EventFd>) -> Self {
        QueueNotifiers {
            transport,
            evts,
            init_error: None,
        }
    }
}

impl MutEventSubscriber for QueueNotifiers {
    fn init(&mut self, ops: &mut EventOps) {
        for (queue, evt) in (0u32..).zip(&self.evts) {
            let result = ops.add(Events::with_data(evt, queue, EventSet::IN));
            keep_error(&mut self.init_error, result);
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let queue = events.data();
        let Some(evt) = self.evts.get(queue as usize) else {
            return;
        };
        if events.event_set().contains(EventSet::IN) && evt.read().is_ok() {
            lock(&self.transport).queue_notify(queue);
        }
    }
}

impl Registering for QueueNotifiers {
    fn take_init_error(&mut self) -> Option<event_manager::Error> {
        self.init_error.take()
    }
}

/// A device's own I/O source ([`virtio_mmio_transport::VirtioDevice::backend_fd`]: the
/// network device's switch socket or TAP queue, the vsock device's epoll descriptor, the
/// remote xpmem device's call eventfd): watched for reading, and for writing while the
/// device wants to write; ready, it gets `process_backend`.
///
/// What the device wants can change with every call into it (it stops having a
/// descriptor when its backend has gone, it wants to write while a transmitted frame
/// waits for room), so the registration is brought up to date after every
/// `process_backend` here and, by the event thread, after every round: a queue
/// notification or a vCPU's register write (activation, reset) changes it too.
pub struct Backend {
    transport: SharedTransport,
    /// The descriptor and events registered now, if any.
    registered: Option<(RawFd, EventSet)>,
    init_error: Option<event_manager::Error>,
}

impl Backend {
    pub fn new(transport: SharedTransport) -> Self {
        Backend {
            transport,
            registered: None,
            init_error: None,
        }
    }

    /// Asks the device what to watch and registers that; returns how soon it wants to
    /// be run again without an event ([`VirtioDevice::backend_retry`]), asked under the
    /// same lock.
    fn refresh(&mut self, ops: &mut EventOps) -> Option<std::time::Duration> {
        let (want, retry) = {
            let t = lock(&self.transport);
            (t.backend_poll(), t.backend_retry())
        };
        if let Err(e) = self.register(want, ops) {
            log::error!("event loop: cannot watch a device's backend: {e}");
        }
        retry
    }

    /// Makes the registration match `want` (the descriptor, and whether to watch it for
    /// writing too): added, modified, removed, or moved to another descriptor.
    fn register(
        &mut self,
        want: Option<(RawFd, bool)>,
        ops: &mut EventOps,
    ) -> event_manager::Result<()> {
        let want = want.map(|(fd, write)| {
            let events = if write {
                EventSet::IN | EventSet::OUT
            } else {
                EventSet::IN
            };
            (fd, events)
        });
        if want == self.registered {
            return Ok(());
        }
        match (self.registered, want) {
            (Some((old, _)), Some((fd, events))) if old == fd => {
                ops.modify(Events::new_raw(fd, events))?;
            }
            (old, new) => {
                if let Some((fd, events)) = old {
                    self.registered = None;
                    ops.remove(Events::new_raw(fd, events))?;
                }
                if let Some((fd, events)) = new {
                    ops.add(Events::new_raw(fd, events))?;
                }
            }
        }
        self.registered = want;
        Ok(())
    }
}

impl MutEventSubscriber for Backend {
    fn init(&mut self, ops: &mut EventOps) {
        let want = lock(&self.transport).backend_poll();
        let result = self.register(want, ops);
        keep_error(&mut self.init_error, result);
    }

    fn process(&mut self, _events: Events, ops: &mut EventOps) {
        // Readable, writable, hung up or in error: the device looks at its backend.
        let want = {
            let mut transport = lock(&self.transport);
            transport.process_backend();
            transport.backend_poll()
        };
        if let Err(e) = self.register(want, ops) {
            log::error!("event loop: cannot watch a device's backend: {e}");
        }
    }
}

impl Registering for Backend {
    fn take_init_error(&mut self) -> Option<event_manager::Error> {
        self.init_error.take()
    }
}

/// How long to wait before looking again when the guest's receive FIFO is full.
const INPUT_RETRY: Duration = Duration::from_millis(10);

/// The serial port's input (stdin or the config's input file): read only while the UART
/// has room, so typed-ahead input waits instead of being dropped. While the FIFO is full
/// the source is not watched and the event thread's next round ends after
/// [`INPUT_RETRY`] at the latest (`run_with_timeout`), when [`Input::refresh`] looks
/// again; no timer descriptor is needed.
///
/// A source epoll does not take (a regular file, `/dev/null`: `EPERM`) is always ready,
/// as `poll(2)` reports it: while the UART has room, the round does not wait (timeout 0)
/// and `refresh` reads it.
pub struct Input {
    source: SerialInput,
    serial: Arc<Mutex<SerialDevice>>,
    /// False once the input has ended.
    open: bool,
    /// Whether the source is in the epoll set (false if it cannot be).
    pollable: bool,
    /// Whether the source is watched now.
    registered: bool,
    init_error: Option<event_manager::Error>,
}

impl Input {
    pub fn new(source: SerialInput, serial: Arc<Mutex<SerialDevice>>) -> Self {
        Input {
            source,
            serial,
            open: true,
            pollable: true,
            registered: false,
            init_error: None,
        }
    }

    fn events(&self) -> Events {
        Events::new_raw(self.source.fd(), EventSet::IN)
    }

    /// Watches the source (`want`) or stops watching it.
    fn watch(&mut self, want: bool, ops: &mut EventOps) -> event_manager::Result<()> {
        if want == self.registered || !self.pollable {
            return Ok(());
        }
        if want {
            match ops.add(self.events()) {
                Err(event_manager::Error::Epoll(e)) if e.errno() == libc::EPERM => {
                    self.pollable = false;
                    return Ok(());
                }
                result => result?,
            }
        } else {
            ops.remove(self.events())?;
        }
        self.registered = want;
        Ok(())
    }

    /// Called after every round: reads a source epoll cannot watch, watches the source
    /// only while the UART has room; returns how long the next round may wait (ms, -1
    /// for no limit).
    fn refresh(&mut self, ops: &mut EventOps) -> i32 {
        let mut room = self.open && lock(&self.serial).input_room() > 0;
        if room && !self.pollable {
            self.open = forward_input(self.source.fd(), &self.serial);
            room = self.open && lock(&self.serial).input_room() > 0;
        }
        if let Err(e) = self.watch(room, ops) {
            log::error!("event loop: cannot watch the serial input: {e}");
        }
        match (self.open, room, self.pollable) {
            (false, _, _) => -1,
            (true, false, _) => INPUT_RETRY.as_millis() as i32,
            (true, true, true) => -1,
            (true, true, false) => 0,
        }
    }
}

impl MutEventSubscriber for Input {
    fn init(&mut self, ops: &mut EventOps) {
        let room = lock(&self.serial).input_room() > 0;
        let result = self.watch(room, ops);
        keep_error(&mut self.init_error, result);
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        // Readable, or hung up (the read then sees the end).
        self.open = forward_input(self.source.fd(), &self.serial);
    }
}

impl Registering for Input {
    fn take_init_error(&mut self) -> Option<event_manager::Error> {
        self.init_error.take()
    }
}

/// Reads what `fd` has (at most what the FIFO takes) into the UART.
/// Returns false once the input has ended.
fn forward_input(fd: RawFd, serial: &Mutex<SerialDevice>) -> bool {
    let room = lock(serial).input_room();
    let mut buf = [0u8; 64];
    let want = room.min(buf.len());
    // SAFETY: `buf` is valid for `want` bytes of writes; `fd` is open for the
    // lifetime of the event loop that owns it.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), want) };
    match n {
        0 => false,
        n if n < 0 => {
            let err = std::io::Error::last_os_error();
            matches!(
                err.kind(),
                std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
            )
        }
        n => {
            lock(serial).enqueue_input(&buf[..n as usize]);
            true
        }
    }
}

/// The event thread's stop eventfd: once it fires, the thread ends after this round.
pub struct Stop {
    evt: EventFd,
    stopped: Arc<AtomicBool>,
    init_error: Option<event_manager::Error>,
}

impl MutEventSubscriber for Stop {
    fn init(&mut self, ops: &mut EventOps) {
        let result = ops.add(Events::new(&self.evt, EventSet::IN));
        keep_error(&mut self.init_error, result);
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        self.stopped.store(true, Ordering::SeqCst);
    }
}

impl Registering for Stop {
    fn take_init_error(&mut self) -> Option<event_manager::Error> {
        self.init_error.take()
    }
}

/// A VM's event thread: queue notifications, device backends and serial input, until
/// the stop eventfd fires. Built (epoll instance, registrations) by [`EventThread::new`]
/// during set-up, run by its own thread.
pub struct EventThread {
    manager: Manager,
    stopped: Arc<AtomicBool>,
    /// Asked after every round what they watch next.
    backends: Vec<(SubscriberId, Arc<Mutex<Backend>>)>,
    input: Option<(SubscriberId, Arc<Mutex<Input>>)>,
    /// Backends that asked, at the last refresh, to be run again after the next round
    /// even without an event (`VirtioDevice::backend_retry`).
    retry: Vec<SharedTransport>,
}

impl EventThread {
    pub fn new(
        stop: EventFd,
        notifiers: Vec<QueueNotifiers>,
        backends: Vec<SharedTransport>,
        input: Option<Input>,
    ) -> Result<Self, event_manager::Error> {
        let mut manager = Manager::new()?;
        let stopped = Arc::new(AtomicBool::new(false));
        subscribe(
            &mut manager,
            Stop {
                evt: stop,
                stopped: stopped.clone(),
                init_error: None,
            },
        )?;
        for n in notifiers {
            subscribe(&mut manager, n)?;
        }
        let backends = backends
            .into_iter()
            .map(|t| subscribe(&mut manager, Backend::new(t)))
            .collect::<Result<_, _>>()?;
        let input = input.map(|i| subscribe(&mut manager, i)).transpose()?;
        Ok(EventThread {
            manager,
            stopped,
            backends,
            input,
            retry: Vec::new(),
        })
    }

    /// Runs rounds of the manager until the stop eventfd fires.
    pub fn run(mut self) {
        let mut timeout = self.refresh();
        while !self.stopped.load(Ordering::SeqCst) {
            match self.round(timeout) {
                Ok(next) => timeout = next,
                Err(e) => {
                    log::error!("event loop: epoll_wait failed: {e}");
                    return;
                }
            }
        }
    }

    /// One round: waits at most `timeout` ms (-1: no limit) and dispatches what is
    /// ready, then [`EventThread::refresh`]; returns the next round's timeout.
    fn round(&mut self, timeout: i32) -> event_manager::Result<i32> {
        self.manager.run_with_timeout(timeout)?;
        for transport in std::mem::take(&mut self.retry) {
            lock(&transport).process_backend();
        }
        Ok(self.refresh())
    }

    /// After every round, as the `poll` loop did before every call: every backend is
    /// asked what it waits for (a vCPU's register write, or another subscriber's queue
    /// notification, may have changed it without an event of its own), the serial input
    /// whether the UART has room. Returns the next round's timeout (ms, -1 for none).
    fn refresh(&mut self) -> i32 {
        // The soonest retry a backend asked for bounds the next wait.
        let mut retry_ms: Option<i32> = None;
        for (id, backend) in &self.backends {
            match self.manager.event_ops(*id) {
                Ok(mut ops) => {
                    let mut b = lock(backend);
                    if let Some(after) = b.refresh(&mut ops) {
                        self.retry.push(b.transport.clone());
                        let ms = i32::try_from(after.as_millis()).unwrap_or(i32::MAX);
                        retry_ms = Some(retry_ms.map_or(ms, |r| r.min(ms)));
                    }
                }
                Err(e) => log::error!("event loop: {e}"),
            }
        }
        let input_ms = match &self.input {
            Some((id, input)) => match self.manager.event_ops(*id) {
                Ok(mut ops) => lock(input).refresh(&mut ops),
                Err(e) => {
                    log::error!("event loop: {e}");
                    -1
                }
            },
            None => -1,
        };
        match retry_ms {
            Some(ms) if input_ms < 0 || ms < input_ms => ms,
            _ => input_ms,
        }
    }
}

// ----- The main threads' waits -----

/// One descriptor a [`Watch`] waits on; when it fires, its tag is recorded for the loop.
struct Watched<T> {
    fd: RawFd,
    events: EventSet,
    tag: T,
    /// Stop watching after the first time (a reaped child's pidfd stays readable).
    once: bool,
    fired: Arc<Mutex<Vec<T>>>,
    init_error: Option<event_manager::Error>,
}

impl<T: Copy + PartialEq + Send> MutEventSubscriber for Watched<T> {
    fn init(&mut self, ops: &mut EventOps) {
        let result = ops.add(Events::new_raw(self.fd, self.events));
        keep_error(&mut self.init_error, result);
    }

    fn process(&mut self, _events: Events, ops: &mut EventOps) {
        if self.once {
            if let Err(e) = ops.remove(Events::new_raw(self.fd, self.events)) {
                log::warn!(
                    "event loop: cannot stop watching descriptor {}: {e}",
                    self.fd
                );
            }
        }
        let mut fired = lock(&self.fired);
        if !fired.contains(&self.tag) {
            fired.push(self.tag);
        }
    }
}

impl<T: Copy + PartialEq + Send> Registering for Watched<T> {
    fn take_init_error(&mut self) -> Option<event_manager::Error> {
        self.init_error.take()
    }
}

/// What a main thread waits on: descriptors, each named by a tag of the loop's choice.
pub struct Watch<T> {
    manager: Manager,
    fired: Arc<Mutex<Vec<T>>>,
    /// Every watched descriptor's tag and subscriber, for [`Watch::forget`].
    watched: Vec<(T, SubscriberId)>,
}

impl<T: Copy + PartialEq + Send + 'static> Watch<T> {
    /// Creates the epoll instance (during set-up, before the seccomp filter).
    pub fn new() -> Result<Self, event_manager::Error> {
        Ok(Watch {
            manager: Manager::new()?,
            fired: Arc::new(Mutex::new(Vec::new())),
            watched: Vec::new(),
        })
    }

    /// Watches `fd` for `events`; `EventSet::empty()` watches for hang-up and error only
    /// (epoll always reports those). With `once`, it is watched until it first fires.
    pub fn watch(
        &mut self,
        fd: &impl AsRawFd,
        events: EventSet,
        tag: T,
        once: bool,
    ) -> Result<(), event_manager::Error> {
        let (id, _) = subscribe(
            &mut self.manager,
            Watched {
                fd: fd.as_raw_fd(),
                events,
                tag,
                once,
                fired: self.fired.clone(),
                init_error: None,
            },
        )?;
        self.watched.push((tag, id));
        Ok(())
    }

    /// Stops watching the descriptors tagged `tag`; called while they are still open (a
    /// descriptor closed while in the epoll set stays there as long as another descriptor
    /// refers to the same file, and can no longer be removed by its number).
    pub fn forget(&mut self, tag: T) {
        let (gone, kept) = std::mem::take(&mut self.watched)
            .into_iter()
            .partition(|(t, _)| *t == tag);
        self.watched = kept;
        for (_, id) in gone {
            // Only an unknown id fails, and each is removed once.
            let _ = self.manager.remove_subscriber(id);
        }
    }

    /// Blocks until a watched descriptor is ready (a signal's interruption is not an
    /// answer); returns the tags of those that fired, each once, in the order seen.
    pub fn wait(&mut self) -> Result<Vec<T>, event_manager::Error> {
        loop {
            self.manager.run()?;
            let fired = std::mem::take(&mut *lock(&self.fired));
            if !fired.is_empty() {
                return Ok(fired);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
mod tests {
    use super::*;
    use crate::bus::BusDevice;
    use crate::devices::serial::ConsoleSink;
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    use virtio_mmio_transport::{MmioTransport, VirtioDevice};
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    fn test_serial() -> Arc<Mutex<SerialDevice>> {
        let sink = ConsoleSink::prefixed(Box::new(std::io::sink()), "test", false);
        Arc::new(Mutex::new(SerialDevice::new(sink).unwrap()))
    }

    #[test]
    fn backend_registration_follows_what_the_device_wants() {
        let mut manager = Manager::new().unwrap();
        let (a, _peer) = UnixStream::pair().unwrap();
        let (b, _peer_b) = UnixStream::pair().unwrap();
        let transport = test_transport();
        let (id, backend) = subscribe(&mut manager, Backend::new(transport)).unwrap();
        let mut ops = manager.event_ops(id).unwrap();
        let mut backend = lock(&backend);
        assert_eq!(backend.registered, None, "a device without a backend");
        let (fa, fb) = (a.as_raw_fd(), b.as_raw_fd());
        let (r, rw) = (EventSet::IN, EventSet::IN | EventSet::OUT);
        // IN, then IN | OUT while it wants to write, then IN again; then another
        // descriptor (the old one is removed).
        for (want, registered) in [
            ((fa, false), (fa, r)),
            ((fa, true), (fa, rw)),
            ((fa, false), (fa, r)),
            ((fb, true), (fb, rw)),
        ] {
            backend.register(Some(want), &mut ops).unwrap();
            assert_eq!(backend.registered, Some(registered), "{want:?}");
        }
        // Adding the old descriptor again works: it was removed.
        ops.add(Events::new(&a, EventSet::IN)).unwrap();
        ops.remove(Events::new(&a, EventSet::IN)).unwrap();
        // No descriptor any more.
        backend.register(None, &mut ops).unwrap();
        assert_eq!(backend.registered, None);
        ops.add(Events::new(&b, EventSet::IN)).unwrap();
    }

    /// A transport over a device without a backend (the registration is driven by hand).
    fn test_transport() -> SharedTransport {
        transport_of(Box::new(virtio_rng_device::Rng::new()))
    }

    fn transport_of(device: Box<dyn VirtioDevice>) -> SharedTransport {
        let mem =
            vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(vm_memory::GuestAddress(0), 0x10000)])
                .unwrap();
        Arc::new(Mutex::new(MmioTransport::new(device, mem).unwrap()))
    }

    /// A device whose backend is one end of a socket pair. `stalled` is set from
    /// outside, as a queue notification or a vCPU's register write would set it (a frame
    /// to transmit found the socket full: the device wants to write);
    /// `process_backend` sends the held frame, drains what is readable, and drops the
    /// backend at hang-up.
    struct FakeBackend {
        socket: UnixStream,
        open: bool,
        stalled: Arc<AtomicBool>,
        processed: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl VirtioDevice for FakeBackend {
        fn device_type(&self) -> u32 {
            1
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16]
        }
        fn device_features(&self) -> u64 {
            1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1
        }
        fn read_config(&self, _offset: u64, _data: &mut [u8]) {}
        fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
        fn activate(
            &mut self,
            _ctx: virtio_mmio_transport::ActivateContext,
        ) -> Result<(), virtio_mmio_transport::ActivateError> {
            Ok(())
        }
        fn queue_notify(&mut self, _index: u16) {}
        fn backend_fd(&self) -> Option<RawFd> {
            self.open.then(|| self.socket.as_raw_fd())
        }
        fn backend_wants_write(&self) -> bool {
            self.stalled.load(Ordering::SeqCst)
        }
        fn process_backend(&mut self) {
            self.processed.fetch_add(1, Ordering::SeqCst);
            self.stalled.store(false, Ordering::SeqCst);
            let mut buf = [0u8; 64];
            if let Ok(0) = std::io::Read::read(&mut self.socket, &mut buf) {
                self.open = false;
            }
        }
        fn reset(&mut self) {}
    }

    #[test]
    fn a_backend_is_watched_for_writing_while_it_wants_to_write() {
        let (socket, mut peer) = UnixStream::pair().unwrap();
        socket.set_nonblocking(true).unwrap();
        let processed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stalled = Arc::new(AtomicBool::new(false));
        let device: Box<dyn VirtioDevice> = Box::new(FakeBackend {
            socket,
            open: true,
            stalled: stalled.clone(),
            processed: processed.clone(),
        });
        let transport = transport_of(device);
        let kick = EventFd::new(EFD_NONBLOCK).unwrap();
        let stop = EventFd::new(EFD_NONBLOCK).unwrap();
        let notifiers = QueueNotifiers::new(transport.clone(), vec![kick.try_clone().unwrap()]);
        let mut thread = EventThread::new(
            stop.try_clone().unwrap(),
            vec![notifiers],
            vec![transport],
            None,
        )
        .unwrap();
        let calls = || processed.load(Ordering::SeqCst);
        // Writable but not wanted, nothing to read: nothing happens.
        assert_eq!(thread.round(0).unwrap(), -1);
        assert_eq!(calls(), 0);
        // A queue notification (before DRIVER_OK: dropped by the transport) is read.
        kick.write(1).unwrap();
        thread.round(0).unwrap();
        assert!(kick.read().is_err(), "the notification was consumed");
        // The device stalls without an event of its own: after the next round its
        // socket is watched for writing, and the round after hands it the room.
        stalled.store(true, Ordering::SeqCst);
        thread.round(0).unwrap();
        assert_eq!(calls(), 0);
        thread.round(0).unwrap();
        assert_eq!(calls(), 1);
        assert!(!stalled.load(Ordering::SeqCst));
        // No longer wanted: a writable socket wakes nothing.
        thread.round(0).unwrap();
        assert_eq!(calls(), 1);
        // Readable.
        peer.write_all(b"frame").unwrap();
        thread.round(0).unwrap();
        assert_eq!(calls(), 2);
        // Hang-up: the device drops its backend, which is no longer watched although
        // the socket stays hung up.
        drop(peer);
        thread.round(0).unwrap();
        assert_eq!(calls(), 3);
        thread.round(0).unwrap();
        assert_eq!(calls(), 3);
        assert!(!thread.stopped.load(Ordering::SeqCst));
        stop.write(1).unwrap();
        thread.round(0).unwrap();
        assert!(thread.stopped.load(Ordering::SeqCst));
    }

    #[test]
    fn watch_reports_tags_and_once_fires_once() {
        let mut watch = Watch::new().unwrap();
        let level = EventFd::new(EFD_NONBLOCK).unwrap();
        let once = EventFd::new(EFD_NONBLOCK).unwrap();
        let (hup, peer) = UnixStream::pair().unwrap();
        watch.watch(&level, EventSet::IN, 'l', false).unwrap();
        watch.watch(&once, EventSet::IN, 'o', true).unwrap();
        watch.watch(&hup, EventSet::empty(), 'h', false).unwrap();
        once.write(1).unwrap();
        assert_eq!(watch.wait().unwrap(), vec!['o']);
        // Still readable, but no longer watched; data on the socket is not watched.
        (&peer).write_all(b"x").unwrap();
        level.write(1).unwrap();
        assert_eq!(watch.wait().unwrap(), vec!['l']);
        // Level-triggered: reported again while readable.
        assert_eq!(watch.wait().unwrap(), vec!['l']);
        level.read().unwrap();
        drop(peer);
        assert_eq!(watch.wait().unwrap(), vec!['h']);
    }

    #[test]
    fn a_forgotten_descriptor_is_no_longer_reported() {
        let mut watch = Watch::new().unwrap();
        let a = EventFd::new(EFD_NONBLOCK).unwrap();
        let b = EventFd::new(EFD_NONBLOCK).unwrap();
        watch.watch(&a, EventSet::IN, 'a', false).unwrap();
        watch.watch(&b, EventSet::IN, 'b', false).unwrap();
        a.write(1).unwrap();
        b.write(1).unwrap();
        assert_eq!(watch.wait().unwrap().len(), 2);
        // Both stay readable; only b is still watched. Forgetting twice is harmless.
        watch.forget('a');
        watch.forget('a');
        assert_eq!(watch.wait().unwrap(), vec!['b']);
        // A forgotten descriptor can be closed, and its number (likely that of the next
        // new descriptor) watched again.
        drop(a);
        let c = EventFd::new(EFD_NONBLOCK).unwrap();
        watch.watch(&c, EventSet::IN, 'c', false).unwrap();
        b.read().unwrap();
        c.write(1).unwrap();
        assert_eq!(watch.wait().unwrap(), vec!['c']);
    }

    #[test]
    fn serial_input_is_watched_only_while_the_uart_has_room() {
        let (source, mut writer) = UnixStream::pair().unwrap();
        source.set_nonblocking(true).unwrap();
        let file = std::fs::File::from(std::os::fd::OwnedFd::from(source));
        let serial = test_serial();
        let mut manager = Manager::new().unwrap();
        let (id, input) = subscribe(
            &mut manager,
            Input::new(SerialInput::File(file), serial.clone()),
        )
        .unwrap();
        assert!(lock(&input).registered);
        let room = lock(&serial).input_room();
        writer.write_all(&vec![b'a'; room + 10]).unwrap();
        // Rounds until the FIFO is full: then the source is not watched and the
        // round waits at most INPUT_RETRY.
        let mut timeout = -1;
        for _ in 0..room {
            manager.run_with_timeout(100).unwrap();
            timeout = lock(&input).refresh(&mut manager.event_ops(id).unwrap());
            if timeout >= 0 {
                break;
            }
        }
        assert_eq!(lock(&serial).input_room(), 0);
        assert_eq!(timeout, INPUT_RETRY.as_millis() as i32);
        assert!(!lock(&input).registered);
        // Nothing is dispatched while full, although 10 bytes wait.
        assert_eq!(manager.run_with_timeout(0).unwrap(), 0);
        // The guest reads one byte: watched again, the rest comes in.
        let mut byte = [0u8; 1];
        lock(&serial).read(0, &mut byte);
        assert_eq!(
            lock(&input).refresh(&mut manager.event_ops(id).unwrap()),
            -1
        );
        assert!(lock(&input).registered);
        assert_eq!(manager.run_with_timeout(100).unwrap(), 1);
        // The writer goes away: the input ends and is no longer watched.
        drop(writer);
        while lock(&input).open {
            lock(&serial).read(0, &mut byte);
            lock(&input).refresh(&mut manager.event_ops(id).unwrap());
            manager.run_with_timeout(100).unwrap();
        }
        assert_eq!(
            lock(&input).refresh(&mut manager.event_ops(id).unwrap()),
            -1
        );
        assert!(!lock(&input).registered);
    }

    #[test]
    fn a_regular_file_as_input_is_read_without_epoll() {
        let mut path = std::env::temp_dir();
        path.push(format!("xpmem-vmm-input-{}", std::process::id()));
        std::fs::write(&path, b"hello").unwrap();
        let file = std::fs::File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let serial = test_serial();
        let mut manager = Manager::new().unwrap();
        let room = lock(&serial).input_room();
        let (id, input) = subscribe(
            &mut manager,
            Input::new(SerialInput::File(file), serial.clone()),
        )
        .unwrap();
        assert!(!lock(&input).pollable);
        // Read by refresh: then the end of the file (timeout 0 until then).
        let mut ops = manager.event_ops(id).unwrap();
        assert_eq!(lock(&input).refresh(&mut ops), 0);
        assert_eq!(lock(&serial).input_room(), room - 5);
        assert_eq!(lock(&input).refresh(&mut ops), -1);
        assert!(!lock(&input).open);
    }
}
