//! One VM's side of the device: its queues, guest memory, deferred request chains and
//! event backlog. Pops and validates requestq chains, writes responses, delivers events
//! into eventq buffers.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use virtio_mmio_transport::{InterruptReason, VirtioInterrupt};
use virtio_queue::{Queue, QueueT};
use virtio_xpmem_wire as wire;
use vm_memory::GuestMemoryMmap;
use xpmem_domain::{RequestTag, VmId};

use super::{DeviceStats, SYNTHETIC_TAG};
use crate::chain::{split_chain, write_to_buffers, WritableBuf};
use crate::convert;

pub(super) struct PendingChain {
    pub(super) head: u16,
    pub(super) opcode: u32,
    pub(super) writable: Vec<WritableBuf>,
}

pub(super) struct Active {
    pub(super) mem: GuestMemoryMmap,
    pub(super) reqq: Queue,
    pub(super) evq: Queue,
    pub(super) interrupt: Arc<dyn VirtioInterrupt>,
}

/// What popping one requestq chain produced.
pub(crate) enum Popped {
    /// Nothing available (or the device is not active).
    Empty,
    /// The chain was rejected and already answered.
    Rejected,
    /// A valid request for the domain.
    Request(RequestTag, xpmem_domain::Request),
}

/// One VM's device-side queue state.
pub(crate) struct Endpoint {
    pub(super) vm: VmId,
    pub(super) forbidden: [(u64, u64); 2],
    pub(super) active: Option<Active>,
    pub(super) pending: HashMap<u64, PendingChain>,
    pub(super) next_tag: u64,
    pub(super) events: VecDeque<Vec<u8>>,
    pub(super) max_pending_events: usize,
    pub(super) stats: DeviceStats,
}

impl Endpoint {
    fn signal_used(active: &mut Active, event_queue: bool) {
        let q = if event_queue {
            &mut active.evq
        } else {
            &mut active.reqq
        };
        if q.needs_notification(&active.mem).unwrap_or(true) {
            if let Err(e) = active.interrupt.trigger(InterruptReason::UsedBuffer) {
                log::warn!("virtio-xpmem: cannot raise the used-buffer interrupt: {e}");
            }
        }
    }

    /// Writes `resp` into `writable` (or as much of the header as fits for
    /// an error) and returns the chain to the driver.
    fn finish_chain(&mut self, head: u16, writable: &[WritableBuf], resp: wire::Response) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let bytes = resp.to_bytes();
        let mut len = write_to_buffers(&active.mem, writable, &bytes);
        if len.is_none() && resp.status != wire::Status::Ok {
            // An error answer only needs the status header.
            let hdr = core::mem::size_of::<wire::RespHeader>();
            len = write_to_buffers(&active.mem, writable, &bytes[..hdr]);
        }
        if let Err(e) = active.reqq.add_used(&active.mem, head, len.unwrap_or(0)) {
            log::warn!(
                "virtio-xpmem: VM {:?}: cannot return a requestq chain: {e}",
                self.vm
            );
            return;
        }
        self.stats.responses += 1;
        Self::signal_used(active, false);
    }

    /// Pops and validates the next requestq chain.
    pub(crate) fn pop_request(&mut self) -> Popped {
        let Some(active) = self.active.as_mut() else {
            return Popped::Empty;
        };
        let mem = active.mem.clone();
        let Some(chain) = active.reqq.pop_descriptor_chain(&mem) else {
            return Popped::Empty;
        };
        self.stats.chains += 1;
        let head = chain.head_index();
        let reject = |this: &mut Self, writable: &[WritableBuf], opcode: u32, status| {
            log::debug!(
                "virtio-xpmem: VM {:?}: rejected request chain {head} (opcode {opcode}): {status:?}",
                this.vm
            );
            this.stats.rejected += 1;
            this.finish_chain(head, writable, wire::Response::error(opcode, status));
            Popped::Rejected
        };
        let split = match split_chain(chain, &mem, &self.forbidden, false) {
            Ok(s) => s,
            Err(r) => {
                log::debug!(
                    "virtio-xpmem: VM {:?}: bad request chain: {}",
                    self.vm,
                    r.error
                );
                return reject(self, &r.writable, 0, wire::Status::Invalid);
            }
        };
        let opcode = split
            .readable
            .get(..4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .unwrap_or(0);
        // Refuse before the domain acts if the answer could not be delivered.
        if split.writable_len() < wire::response_size(opcode) as u64 {
            return reject(self, &split.writable, 0, wire::Status::Invalid);
        }
        let (hdr, req) = match wire::parse_request(&split.readable) {
            Ok(p) => p,
            Err(e) => {
                log::debug!("virtio-xpmem: VM {:?}: rejected request: {e}", self.vm);
                return reject(self, &split.writable, opcode, e.status());
            }
        };
        let Some(req) = convert::request_to_domain(hdr.owner, req) else {
            return reject(self, &split.writable, opcode, wire::Status::Invalid);
        };
        // A driver cannot have more requests outstanding than its queue has
        // descriptors; more means it re-posted heads that are still pending.
        let queue_size = self
            .active
            .as_ref()
            .map_or(0, |a| usize::from(a.reqq.size()));
        if self.pending.len() >= queue_size {
            return reject(self, &split.writable, opcode, wire::Status::Invalid);
        }
        let tag = self.next_tag;
        self.next_tag = self.next_tag.wrapping_add(1).max(SYNTHETIC_TAG + 1);
        self.pending.insert(
            tag,
            PendingChain {
                head,
                opcode,
                writable: split.writable,
            },
        );
        self.stats.dispatched += 1;
        Popped::Request(RequestTag(tag), req)
    }

    /// Size of the requestq (0 if the device is not active).
    pub(super) fn request_queue_size(&self) -> u16 {
        self.active.as_ref().map_or(0, |a| a.reqq.size())
    }

    /// The opcode of pending request `tag`, if it is still pending.
    pub(super) fn pending_opcode(&self, tag: RequestTag) -> Option<u32> {
        self.pending.get(&tag.0).map(|p| p.opcode)
    }

    /// Completes a request the domain answered.
    pub(super) fn respond(
        &mut self,
        tag: RequestTag,
        result: Result<xpmem_domain::ResponseBody, xpmem_domain::Status>,
    ) {
        // A missing tag means the device was reset since: nothing to do.
        if let Some(p) = self.pending.remove(&tag.0) {
            let resp = convert::response_to_wire(p.opcode, result);
            self.finish_chain(p.head, &p.writable, resp);
        }
    }

    /// Queues an event and delivers what the eventq has room for. Returns
    /// false if the event was dropped because the backlog is full.
    pub(super) fn post_event(&mut self, bytes: Vec<u8>) -> bool {
        if self.active.is_none() {
            // Not joined: the domain has nothing to say to this VM.
            return true;
        }
        self.flush_events();
        if self.events.len() >= self.max_pending_events {
            self.stats.events_dropped += 1;
            log::warn!(
                "virtio-xpmem: VM {:?}: event backlog full ({} events) because the driver does not refill eventq; dropping an event",
                self.vm,
                self.events.len()
            );
            return false;
        }
        self.events.push_back(bytes);
        self.flush_events();
        true
    }

    /// Delivers queued events into available eventq buffers.
    ///
    /// Looks at most at one queue's worth of buffers per call: the caller may hold the hub
    /// lock, and a guest that keeps posting unusable buffers from another vCPU must not
    /// keep it here (a later event or eventq notification flushes again).
    pub(crate) fn flush_events(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mem = active.mem.clone();
        let mut used = false;
        let mut budget = active.evq.size();
        while let Some(ev) = self.events.front() {
            if budget == 0 {
                break;
            }
            budget -= 1;
            let Some(chain) = active.evq.pop_descriptor_chain(&mem) else {
                break;
            };
            let head = chain.head_index();
            let written = match split_chain(chain, &mem, &self.forbidden, true) {
                Ok(split) => write_to_buffers(&mem, &split.writable, ev),
                Err(r) => {
                    log::debug!(
                        "virtio-xpmem: VM {:?}: bad eventq buffer: {}",
                        self.vm,
                        r.error
                    );
                    None
                }
            };
            match written {
                Some(len) => {
                    self.events.pop_front();
                    self.stats.events_delivered += 1;
                    if let Err(e) = active.evq.add_used(&mem, head, len) {
                        log::warn!(
                            "virtio-xpmem: VM {:?}: cannot return an eventq buffer: {e}",
                            self.vm
                        );
                    }
                }
                None => {
                    self.stats.bad_event_buffers += 1;
                    if let Err(e) = active.evq.add_used(&mem, head, 0) {
                        log::warn!(
                            "virtio-xpmem: VM {:?}: cannot return an eventq buffer: {e}",
                            self.vm
                        );
                    }
                }
            }
            used = true;
        }
        if used {
            Self::signal_used(active, true);
        }
    }

    pub(super) fn deactivate(&mut self) {
        self.active = None;
        self.pending.clear();
        self.events.clear();
    }

    pub(crate) fn stats(&self) -> DeviceStats {
        let mut s = self.stats.clone();
        s.events_backlog = self.events.len() as u64;
        s.pending_requests = self.pending.len() as u64;
        s
    }
}
