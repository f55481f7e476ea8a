//! The switch as a state machine: frames in, per-port output queues out.
//!
//! Every message on a port is a [`NET_HDR_LEN`]-byte `virtio_net_hdr_v1`
//! followed by an Ethernet frame: the header says whether the frame's
//! checksum is left partial or it is one TCP packet of up to 64 KiB still to
//! be segmented (the devices at both ends check and act on it; the switch
//! only uses its `gso_type` to bound the frame's length).
//!
//! [`Switch::ingress`] takes one frame that arrived on a port and the current
//! time; it validates the frame, learns its source MAC, and puts it (shared,
//! not copied) on the output queue of the port that owns the destination, or
//! of every other port for broadcast, multicast and unknown destinations.
//! The I/O shell takes frames off a port's queue with [`Switch::front`] and
//! [`Switch::sent`] as the port's socket accepts them.
//!
//! Bounds: every output queue holds at most [`SwitchConfig::queue_frames`]
//! frames and [`SwitchConfig::queue_bytes`] bytes (a frame that does not fit
//! is dropped and counted on that port); the MAC table holds at most
//! [`SwitchConfig::macs_per_port`] addresses per port (a port that shows more
//! source addresses forgets its own oldest) and [`SwitchConfig::max_macs`] in
//! all (beyond that new addresses are not learned; frames to them are
//! flooded). A learned address expires after [`SwitchConfig::mac_age`].

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Bytes of an Ethernet header: destination, source, EtherType.
pub const ETH_HEADER_LEN: usize = 14;
/// The shortest frame the switch forwards: a bare header.
pub const MIN_FRAME_LEN: usize = ETH_HEADER_LEN;
/// Largest MTU a port may use (the largest frame then is 65535 + 14 bytes).
pub const MAX_MTU: usize = 65535;
/// Smallest MTU (IPv4's minimum).
pub const MIN_MTU: usize = 68;
/// Bytes of the header in front of every frame on a port.
pub const NET_HDR_LEN: usize = 12;
/// Largest frame of a segmentation-offload message (any MTU): a 64 KiB IPv4
/// packet and its Ethernet header.
pub const MAX_GSO_FRAME: usize = MAX_MTU + ETH_HEADER_LEN;
/// Largest message on a port: header and segmentation-offload frame.
pub const MAX_MESSAGE: usize = NET_HDR_LEN + MAX_GSO_FRAME;
/// Where the header keeps `gso_type` (0: a plain frame, at most MTU + 14).
const GSO_TYPE_AT: usize = 1;

/// Errors of building a switch.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SwitchError {
    #[error("switch MTU {0} is outside {MIN_MTU}..={MAX_MTU}; use 1500 for plain Ethernet or up to 65535 with offloads")]
    BadMtu(usize),
    #[error("switch {what} is 0; every bound must be at least 1")]
    ZeroBound { what: &'static str },
    #[error("switch output queue of {bytes} bytes cannot hold one message of {frame} bytes (a 64 KiB segmentation-offload frame and its header); make queue_bytes at least {frame}")]
    QueueTooSmall { bytes: usize, frame: usize },
}

/// An Ethernet address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    pub const BROADCAST: Mac = Mac([0xff; 6]);

    /// Group (multicast or broadcast) address: the I/G bit of the first byte.
    pub fn is_group(&self) -> bool {
        self.0[0] & 1 != 0
    }

    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }

    /// Parses `02:00:00:00:00:01` (hex pairs separated by colons).
    pub fn parse(text: &str) -> Option<Mac> {
        let mut out = [0u8; 6];
        let mut parts = text.split(':');
        for b in &mut out {
            let p = parts.next()?;
            if p.len() != 2 {
                return None;
            }
            *b = u8::from_str_radix(p, 16).ok()?;
        }
        parts.next().is_none().then_some(Mac(out))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A port of the switch; ids are never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortId(pub u64);

impl fmt::Display for PortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "port {}", self.0)
    }
}

/// Limits of a switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SwitchConfig {
    /// Largest payload; the largest frame is `mtu + 14` bytes.
    pub mtu: usize,
    /// Most frames waiting on one port's output queue.
    pub queue_frames: usize,
    /// Most bytes waiting on one port's output queue.
    pub queue_bytes: usize,
    /// Most addresses learned on one port.
    pub macs_per_port: usize,
    /// Most addresses learned in all.
    pub max_macs: usize,
    /// How long a learned address stays valid without a frame from it.
    pub mac_age: Duration,
}

impl Default for SwitchConfig {
    fn default() -> Self {
        Self {
            mtu: 1500,
            queue_frames: 256,
            queue_bytes: 1 << 20,
            macs_per_port: 64,
            max_macs: 4096,
            mac_age: Duration::from_secs(300),
        }
    }
}

impl SwitchConfig {
    /// Largest plain frame the switch forwards (Ethernet header included,
    /// no FCS); segmentation-offload frames may be up to [`MAX_GSO_FRAME`].
    pub fn max_frame(&self) -> usize {
        self.mtu + ETH_HEADER_LEN
    }

    pub fn validate(&self) -> Result<(), SwitchError> {
        if !(MIN_MTU..=MAX_MTU).contains(&self.mtu) {
            return Err(SwitchError::BadMtu(self.mtu));
        }
        for (what, v) in [
            ("queue_frames", self.queue_frames),
            ("queue_bytes", self.queue_bytes),
            ("macs_per_port", self.macs_per_port),
            ("max_macs", self.max_macs),
        ] {
            if v == 0 {
                return Err(SwitchError::ZeroBound { what });
            }
        }
        if self.queue_bytes < MAX_MESSAGE {
            return Err(SwitchError::QueueTooSmall {
                bytes: self.queue_bytes,
                frame: MAX_MESSAGE,
            });
        }
        Ok(())
    }
}

/// Why a frame was not delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Shorter than an Ethernet header (counted on the ingress port).
    TooShort,
    /// Longer than `mtu + 14` (64 KiB + 14 for a segmentation-offload
    /// frame), counted on the ingress port.
    TooLong,
    /// Source address is a group address or all zeroes (ingress port).
    BadSource,
    /// The destination lives on the ingress port: never sent back (ingress).
    Hairpin,
    /// The egress port's output queue is full (counted on the egress port).
    QueueFull,
    /// The egress port's socket refused the frame (egress port).
    SendError,
}

/// Counters of one port. `rx` is what the switch received from the port,
/// `tx` what it sent to it; bytes are Ethernet frames' (headers not counted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortCounters {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Frames from this port flooded to every other port.
    pub rx_flooded: u64,
    pub drop_too_short: u64,
    pub drop_too_long: u64,
    pub drop_bad_source: u64,
    pub drop_hairpin: u64,
    /// Frames for this port dropped because its queue was full.
    pub drop_queue_full: u64,
    /// Frames for this port its socket refused.
    pub drop_send_error: u64,
    /// Source addresses this port showed that the table could not keep.
    pub learn_refused: u64,
}

impl PortCounters {
    fn count_drop(&mut self, reason: DropReason) {
        let c = match reason {
            DropReason::TooShort => &mut self.drop_too_short,
            DropReason::TooLong => &mut self.drop_too_long,
            DropReason::BadSource => &mut self.drop_bad_source,
            DropReason::Hairpin => &mut self.drop_hairpin,
            DropReason::QueueFull => &mut self.drop_queue_full,
            DropReason::SendError => &mut self.drop_send_error,
        };
        *c += 1;
    }

    /// Frames dropped for any reason.
    pub fn dropped(&self) -> u64 {
        self.drop_too_short
            + self.drop_too_long
            + self.drop_bad_source
            + self.drop_hairpin
            + self.drop_queue_full
            + self.drop_send_error
    }

    /// Adds `other` (for totals of closed ports).
    pub fn add(&mut self, other: &PortCounters) {
        self.rx_frames += other.rx_frames;
        self.rx_bytes += other.rx_bytes;
        self.tx_frames += other.tx_frames;
        self.tx_bytes += other.tx_bytes;
        self.rx_flooded += other.rx_flooded;
        self.drop_too_short += other.drop_too_short;
        self.drop_too_long += other.drop_too_long;
        self.drop_bad_source += other.drop_bad_source;
        self.drop_hairpin += other.drop_hairpin;
        self.drop_queue_full += other.drop_queue_full;
        self.drop_send_error += other.drop_send_error;
        self.learn_refused += other.learn_refused;
    }
}

impl fmt::Display for PortCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rx_frames={} rx_bytes={} tx_frames={} tx_bytes={} rx_flooded={} \
             drop_too_short={} drop_too_long={} drop_bad_source={} drop_hairpin={} \
             drop_queue_full={} drop_send_error={} learn_refused={}",
            self.rx_frames,
            self.rx_bytes,
            self.tx_frames,
            self.tx_bytes,
            self.rx_flooded,
            self.drop_too_short,
            self.drop_too_long,
            self.drop_bad_source,
            self.drop_hairpin,
            self.drop_queue_full,
            self.drop_send_error,
            self.learn_refused
        )
    }
}

/// What [`Switch::ingress`] did with a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Dropped on ingress.
    Dropped(DropReason),
    /// Queued on these ports (`full` lists the ports whose queue was full).
    Forwarded {
        to: Vec<PortId>,
        full: Vec<PortId>,
        flooded: bool,
    },
}

struct Port {
    queue: VecDeque<Arc<[u8]>>,
    queued_bytes: usize,
    macs: HashSet<Mac>,
    counters: PortCounters,
}

#[derive(Clone, Copy)]
struct Learned {
    port: PortId,
    seen: Duration,
}

/// The switch state: ports, their output queues, the MAC table.
pub struct Switch {
    config: SwitchConfig,
    ports: BTreeMap<PortId, Port>,
    table: HashMap<Mac, Learned>,
    next_port: u64,
    /// Counters of ports that have been removed, summed.
    closed: PortCounters,
    closed_ports: u64,
    /// The first [`CLOSED_PORTS_REPORTED`] removed ports' own counters, for
    /// the report (a monitor's VMs usually end before it prints it).
    closed_each: Vec<(PortId, PortCounters)>,
}

/// Removed ports whose counters [`Switch::report`] lists one by one.
pub const CLOSED_PORTS_REPORTED: usize = 256;

impl Switch {
    pub fn new(config: SwitchConfig) -> Result<Self, SwitchError> {
        config.validate()?;
        Ok(Self {
            config,
            ports: BTreeMap::new(),
            table: HashMap::new(),
            next_port: 1,
            closed: PortCounters::default(),
            closed_ports: 0,
            closed_each: Vec::new(),
        })
    }

    pub fn config(&self) -> &SwitchConfig {
        &self.config
    }

    /// Adds a port with an empty queue.
    pub fn add_port(&mut self) -> PortId {
        let id = PortId(self.next_port);
        self.next_port += 1;
        self.ports.insert(
            id,
            Port {
                queue: VecDeque::new(),
                queued_bytes: 0,
                macs: HashSet::new(),
                counters: PortCounters::default(),
            },
        );
        id
    }

    /// Removes a port: its queue is freed and its addresses forgotten.
    /// Returns its final counters.
    pub fn remove_port(&mut self, id: PortId) -> Option<PortCounters> {
        let port = self.ports.remove(&id)?;
        for mac in &port.macs {
            self.table.remove(mac);
        }
        self.closed.add(&port.counters);
        self.closed_ports += 1;
        if self.closed_each.len() < CLOSED_PORTS_REPORTED {
            self.closed_each.push((id, port.counters));
        }
        Some(port.counters)
    }

    /// The ports, in the order they were added.
    pub fn ports(&self) -> impl Iterator<Item = PortId> + '_ {
        self.ports.keys().copied()
    }

    pub fn counters(&self, id: PortId) -> Option<PortCounters> {
        self.ports.get(&id).map(|p| p.counters)
    }

    /// Summed counters of removed ports, and how many there were.
    pub fn closed_counters(&self) -> (u64, PortCounters) {
        (self.closed_ports, self.closed)
    }

    /// Frames and bytes waiting on a port's queue.
    pub fn queued(&self, id: PortId) -> (usize, usize) {
        self.ports
            .get(&id)
            .map_or((0, 0), |p| (p.queue.len(), p.queued_bytes))
    }

    /// Learned addresses (including expired ones not yet aged out).
    pub fn table_len(&self) -> usize {
        self.table.len()
    }

    /// Where `mac` is learned, if the entry is still valid at `now`.
    pub fn lookup(&self, mac: &Mac, now: Duration) -> Option<PortId> {
        self.table
            .get(mac)
            .filter(|l| !self.expired(l, now))
            .map(|l| l.port)
    }

    fn expired(&self, l: &Learned, now: Duration) -> bool {
        now.saturating_sub(l.seen) > self.config.mac_age
    }

    /// Forgets every address not seen for longer than the aging time.
    pub fn age(&mut self, now: Duration) {
        let age = self.config.mac_age;
        let ports = &mut self.ports;
        self.table.retain(|mac, l| {
            let keep = now.saturating_sub(l.seen) <= age;
            if !keep {
                if let Some(p) = ports.get_mut(&l.port) {
                    p.macs.remove(mac);
                }
            }
            keep
        });
    }

    /// Handles one message (header and frame) received on `from` at time `now`.
    pub fn ingress(&mut self, from: PortId, message: &[u8], now: Duration) -> Verdict {
        let Some(port) = self.ports.get_mut(&from) else {
            return Verdict::Forwarded {
                to: Vec::new(),
                full: Vec::new(),
                flooded: false,
            };
        };
        port.counters.rx_frames += 1;
        port.counters.rx_bytes += frame_len(message.len());
        let frame = message.get(NET_HDR_LEN..).unwrap_or(&[]);
        let max = match message.get(GSO_TYPE_AT) {
            Some(0) | None => self.config.max_frame(),
            Some(_) => MAX_GSO_FRAME,
        };
        let reason = if frame.len() < MIN_FRAME_LEN {
            Some(DropReason::TooShort)
        } else if frame.len() > max {
            Some(DropReason::TooLong)
        } else {
            None
        };
        if let Some(reason) = reason {
            port.counters.count_drop(reason);
            return Verdict::Dropped(reason);
        }
        let (dst, src) = (mac_at(frame, 0), mac_at(frame, 6));
        if src.is_group() || src.is_zero() {
            port.counters.count_drop(DropReason::BadSource);
            return Verdict::Dropped(DropReason::BadSource);
        }
        self.learn(from, src, now);
        let target = if dst.is_group() {
            None
        } else {
            self.lookup(&dst, now)
        };
        let targets: Vec<PortId> = match target {
            Some(to) if to == from => {
                if let Some(p) = self.ports.get_mut(&from) {
                    p.counters.count_drop(DropReason::Hairpin);
                }
                return Verdict::Dropped(DropReason::Hairpin);
            }
            Some(to) => vec![to],
            None => self.ports.keys().copied().filter(|&p| p != from).collect(),
        };
        let flooded = target.is_none();
        if flooded {
            if let Some(p) = self.ports.get_mut(&from) {
                p.counters.rx_flooded += 1;
            }
        }
        let shared: Arc<[u8]> = Arc::from(message);
        let mut to = Vec::with_capacity(targets.len());
        let mut full = Vec::new();
        for id in targets {
            let Some(p) = self.ports.get_mut(&id) else {
                continue;
            };
            if p.queue.len() >= self.config.queue_frames
                || p.queued_bytes + shared.len() > self.config.queue_bytes
            {
                p.counters.count_drop(DropReason::QueueFull);
                full.push(id);
            } else {
                p.queued_bytes += shared.len();
                p.queue.push_back(shared.clone());
                to.push(id);
            }
        }
        Verdict::Forwarded { to, full, flooded }
    }

    /// A message of `len` bytes arrived on `from` that was too long to be
    /// read whole (the shell reads at most [`MAX_MESSAGE`] + 1 bytes):
    /// counted and dropped.
    pub fn oversized(&mut self, from: PortId, len: usize) {
        if let Some(p) = self.ports.get_mut(&from) {
            p.counters.rx_frames += 1;
            p.counters.rx_bytes += frame_len(len);
            p.counters.count_drop(DropReason::TooLong);
        }
    }

    fn learn(&mut self, port_id: PortId, mac: Mac, now: Duration) {
        if let Some(l) = self.table.get_mut(&mac) {
            let old = l.port;
            l.seen = now;
            if old == port_id {
                return;
            }
            // The station moved.
            l.port = port_id;
            if let Some(p) = self.ports.get_mut(&old) {
                p.macs.remove(&mac);
            }
        } else if self.table.len() >= self.config.max_macs {
            self.age(now);
            if self.table.len() >= self.config.max_macs {
                if let Some(p) = self.ports.get_mut(&port_id) {
                    p.counters.learn_refused += 1;
                }
                return;
            }
            self.table.insert(
                mac,
                Learned {
                    port: port_id,
                    seen: now,
                },
            );
        } else {
            self.table.insert(
                mac,
                Learned {
                    port: port_id,
                    seen: now,
                },
            );
        }
        let limit = self.config.macs_per_port;
        let Some(p) = self.ports.get_mut(&port_id) else {
            return;
        };
        p.macs.insert(mac);
        if p.macs.len() > limit {
            // Forget this port's least recently seen address (not the new one).
            let oldest = p
                .macs
                .iter()
                .filter(|m| **m != mac)
                .min_by_key(|m| self.table.get(m).map_or(Duration::ZERO, |l| l.seen))
                .copied();
            if let Some(o) = oldest {
                p.macs.remove(&o);
                self.table.remove(&o);
                p.counters.learn_refused += 1;
            }
        }
    }

    /// The next frame waiting for `id`, without taking it off the queue.
    pub fn front(&self, id: PortId) -> Option<Arc<[u8]>> {
        self.ports.get(&id).and_then(|p| p.queue.front().cloned())
    }

    /// The front frame of `id` was sent: takes it off and counts it.
    pub fn sent(&mut self, id: PortId) {
        if let Some(p) = self.ports.get_mut(&id) {
            if let Some(f) = p.queue.pop_front() {
                p.queued_bytes -= f.len();
                p.counters.tx_frames += 1;
                p.counters.tx_bytes += frame_len(f.len());
            }
        }
    }

    /// The front frame of `id` could not be sent: takes it off and counts
    /// it as dropped.
    pub fn send_failed(&mut self, id: PortId) {
        if let Some(p) = self.ports.get_mut(&id) {
            if let Some(f) = p.queue.pop_front() {
                p.queued_bytes -= f.len();
                p.counters.count_drop(DropReason::SendError);
            }
        }
    }

    /// Every port's counters, one line each (`port N: ...`, or `port N
    /// (closed): ...` for the first [`CLOSED_PORTS_REPORTED`] removed ports),
    /// in port order, then the closed ports' sum.
    pub fn report(&self) -> String {
        let mut lines: Vec<(PortId, String)> = self
            .ports
            .iter()
            .map(|(id, p)| (*id, format!("{id}: {}\n", p.counters)))
            .chain(
                self.closed_each
                    .iter()
                    .map(|(id, c)| (*id, format!("{id} (closed): {c}\n"))),
            )
            .collect();
        lines.sort_by_key(|(id, _)| *id);
        let mut out: String = lines.into_iter().map(|(_, l)| l).collect();
        if self.ports.is_empty() && self.closed_ports == 0 {
            out.push_str("no port was connected\n");
        }
        if self.closed_ports > 0 {
            out.push_str(&format!(
                "{} closed port(s): {}\n",
                self.closed_ports, self.closed
            ));
        }
        out
    }
}

/// Bytes of the frame in a message of `len` bytes.
fn frame_len(len: usize) -> u64 {
    len.saturating_sub(NET_HDR_LEN) as u64
}

fn mac_at(frame: &[u8], at: usize) -> Mac {
    let mut m = [0u8; 6];
    m.copy_from_slice(&frame[at..at + 6]);
    Mac(m)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
#[allow(clippy::cast_possible_truncation)] // test code: casts of small port indices
mod tests;
