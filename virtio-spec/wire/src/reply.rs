//! Encoders for responses and events (device to driver), and an event
//! decoder for tests and mock drivers.

use core::mem::size_of;

use vm_memory::ByteValued;

use crate::layout::*;
use crate::*;

/// Body of a successful response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseBody {
    /// REMOVE, RELEASE, DETACH, RESOLVE_REPLY, INVALIDATE_ACK, RELEASE_OWNER.
    Empty,
    Make {
        segid: u64,
    },
    Get {
        apid: u64,
    },
    Attach {
        attach_id: u64,
        aperture_offset: u64,
        shm_id: u32,
    },
    Fault {
        mapped: u32,
    },
    /// INVALIDATE: attachments sent an INVALIDATE event, and how many of
    /// them were revoked at the deadline.
    Invalidate {
        targets: u32,
        revoked: u32,
    },
    /// SEARCH: the segment with the name.
    Search {
        segid: u64,
    },
}

/// A complete response: what the device writes into the device-writable
/// part of a requestq chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: Status,
    /// The request's opcode; it fixes the response size.
    pub opcode: u32,
    /// Ignored unless `status` is [`Status::Ok`].
    pub body: ResponseBody,
}

impl Response {
    /// A successful response to a request with `opcode`.
    pub fn ok(opcode: u32, body: ResponseBody) -> Response {
        Response {
            status: Status::Ok,
            opcode,
            body,
        }
    }

    /// A failed response to a request with `opcode`: the header carries
    /// `status`, the body (if the opcode has one) is all zeroes.
    pub fn error(opcode: u32, status: Status) -> Response {
        Response {
            status,
            opcode,
            body: ResponseBody::Empty,
        }
    }

    /// The bytes to write: always exactly [`response_size`]`(opcode)` bytes,
    /// the header followed by the body (zeroed unless the status is OK or
    /// when `body` does not match the opcode).
    pub fn to_bytes(&self) -> Vec<u8> {
        let header = RespHeader {
            status: (self.status as u32).into(),
            reserved: 0.into(),
        };
        let mut out = header.as_slice().to_vec();
        out.resize(response_size(self.opcode), 0);
        if self.status != Status::Ok {
            return out;
        }
        let body_at = size_of::<RespHeader>();
        let mut put = |bytes: &[u8]| {
            if out.len() == body_at + bytes.len() {
                out[body_at..].copy_from_slice(bytes);
            }
        };
        match (self.opcode, self.body) {
            (VIRTIO_XPMEM_REQ_MAKE, ResponseBody::Make { segid }) => put(MakeResp {
                segid: segid.into(),
            }
            .as_slice()),
            (VIRTIO_XPMEM_REQ_GET, ResponseBody::Get { apid }) => {
                put(GetResp { apid: apid.into() }.as_slice())
            }
            (
                VIRTIO_XPMEM_REQ_ATTACH,
                ResponseBody::Attach {
                    attach_id,
                    aperture_offset,
                    shm_id,
                },
            ) => put(AttachResp {
                attach_id: attach_id.into(),
                aperture_offset: aperture_offset.into(),
                shm_id: shm_id.into(),
                reserved: 0.into(),
            }
            .as_slice()),
            (VIRTIO_XPMEM_REQ_FAULT, ResponseBody::Fault { mapped }) => put(FaultResp {
                mapped: mapped.into(),
                reserved: 0.into(),
            }
            .as_slice()),
            (VIRTIO_XPMEM_REQ_INVALIDATE, ResponseBody::Invalidate { targets, revoked }) => {
                put(InvalidateResp {
                    targets: targets.into(),
                    revoked: revoked.into(),
                }
                .as_slice())
            }
            (VIRTIO_XPMEM_REQ_SEARCH, ResponseBody::Search { segid }) => put(SearchResp {
                segid: segid.into(),
            }
            .as_slice()),
            _ => {}
        }
        out
    }
}

/// An event on eventq.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// To the exporter: resolve `npages` pages of `segid` from `vaddr`.
    Resolve {
        resolve_id: u64,
        segid: u64,
        vaddr: u64,
        npages: u32,
        write: bool,
    },
    /// To an importer: drop the user mappings of those attachment pages,
    /// then send INVALIDATE_ACK.
    Invalidate {
        invalidation_id: u64,
        attach_id: u64,
        page_index: u64,
        npages: u64,
    },
    /// To an importer: those attachment pages were revoked.
    Revoked {
        attach_id: u64,
        page_index: u64,
        npages: u64,
        reason: RevokeReason,
    },
}

/// Why an event buffer could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("event is {actual} bytes; an event of type {event_type} is {expected} bytes")]
    Length {
        event_type: u32,
        expected: usize,
        actual: usize,
    },
    #[error("event buffer of {0} bytes is shorter than the 8-byte event header")]
    Short(usize),
    #[error("unknown event type {0}")]
    UnknownType(u32),
    #[error("event field {field} has invalid value {value:#x}")]
    BadField { field: &'static str, value: u64 },
}

impl Event {
    /// Wire type of this event (`VIRTIO_XPMEM_EVT_*`).
    pub fn event_type(&self) -> u32 {
        match self {
            Event::Resolve { .. } => VIRTIO_XPMEM_EVT_RESOLVE,
            Event::Invalidate { .. } => VIRTIO_XPMEM_EVT_INVALIDATE,
            Event::Revoked { .. } => VIRTIO_XPMEM_EVT_REVOKED,
        }
    }

    /// Header followed by body, little-endian.
    pub fn to_bytes(&self) -> Vec<u8> {
        let header = EventHeader {
            event_type: self.event_type().into(),
            reserved: 0.into(),
        };
        let mut out = header.as_slice().to_vec();
        match *self {
            Event::Resolve {
                resolve_id,
                segid,
                vaddr,
                npages,
                write,
            } => out.extend_from_slice(
                ResolveEvent {
                    resolve_id: resolve_id.into(),
                    segid: segid.into(),
                    vaddr: vaddr.into(),
                    npages: npages.into(),
                    flags: if write {
                        VIRTIO_XPMEM_RESOLVE_F_WRITE
                    } else {
                        0
                    }
                    .into(),
                }
                .as_slice(),
            ),
            Event::Invalidate {
                invalidation_id,
                attach_id,
                page_index,
                npages,
            } => out.extend_from_slice(
                InvalidateEvent {
                    invalidation_id: invalidation_id.into(),
                    attach_id: attach_id.into(),
                    page_index: page_index.into(),
                    npages: npages.into(),
                }
                .as_slice(),
            ),
            Event::Revoked {
                attach_id,
                page_index,
                npages,
                reason,
            } => out.extend_from_slice(
                RevokedEvent {
                    attach_id: attach_id.into(),
                    page_index: page_index.into(),
                    npages: npages.into(),
                    reason: (reason as u32).into(),
                    reserved: 0.into(),
                }
                .as_slice(),
            ),
        }
        out
    }

    /// Decodes an event (exactly header + body, as written by the device).
    pub fn parse(bytes: &[u8]) -> Result<Event, EventError> {
        let hlen = size_of::<EventHeader>();
        if bytes.len() < hlen {
            return Err(EventError::Short(bytes.len()));
        }
        let (head, body) = bytes.split_at(hlen);
        let header: EventHeader = read_exact(head).ok_or(EventError::Short(bytes.len()))?;
        let event_type = header.event_type.to_native();
        let length = |expected: usize| EventError::Length {
            event_type,
            expected: hlen + expected,
            actual: bytes.len(),
        };
        match event_type {
            VIRTIO_XPMEM_EVT_RESOLVE => {
                let b: ResolveEvent = read_exact(body).ok_or(length(size_of::<ResolveEvent>()))?;
                let flags = b.flags.to_native();
                if flags & !VIRTIO_XPMEM_RESOLVE_F_WRITE != 0 {
                    return Err(EventError::BadField {
                        field: "flags",
                        value: flags.into(),
                    });
                }
                Ok(Event::Resolve {
                    resolve_id: b.resolve_id.to_native(),
                    segid: b.segid.to_native(),
                    vaddr: b.vaddr.to_native(),
                    npages: b.npages.to_native(),
                    write: flags & VIRTIO_XPMEM_RESOLVE_F_WRITE != 0,
                })
            }
            VIRTIO_XPMEM_EVT_INVALIDATE => {
                let b: InvalidateEvent =
                    read_exact(body).ok_or(length(size_of::<InvalidateEvent>()))?;
                Ok(Event::Invalidate {
                    invalidation_id: b.invalidation_id.to_native(),
                    attach_id: b.attach_id.to_native(),
                    page_index: b.page_index.to_native(),
                    npages: b.npages.to_native(),
                })
            }
            VIRTIO_XPMEM_EVT_REVOKED => {
                let b: RevokedEvent = read_exact(body).ok_or(length(size_of::<RevokedEvent>()))?;
                let raw = b.reason.to_native();
                let reason = RevokeReason::from_u32(raw).ok_or(EventError::BadField {
                    field: "reason",
                    value: raw.into(),
                })?;
                Ok(Event::Revoked {
                    attach_id: b.attach_id.to_native(),
                    page_index: b.page_index.to_native(),
                    npages: b.npages.to_native(),
                    reason,
                })
            }
            other => Err(EventError::UnknownType(other)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // test code
mod tests {
    use super::*;

    #[test]
    fn response_sizes() {
        assert_eq!(response_size(VIRTIO_XPMEM_REQ_MAKE), 16);
        assert_eq!(response_size(VIRTIO_XPMEM_REQ_GET), 16);
        assert_eq!(response_size(VIRTIO_XPMEM_REQ_ATTACH), 32);
        assert_eq!(response_size(VIRTIO_XPMEM_REQ_FAULT), 16);
        assert_eq!(response_size(VIRTIO_XPMEM_REQ_INVALIDATE), 16);
        for op in [2, 4, 6, 8, 10, 11, 0, 99] {
            assert_eq!(response_size(op), 8, "opcode {op}");
        }
    }

    #[test]
    fn ok_responses_encode_body() {
        let r = Response::ok(
            VIRTIO_XPMEM_REQ_ATTACH,
            ResponseBody::Attach {
                attach_id: 0x0102_0304_0506_0708,
                aperture_offset: 0x20_0000,
                shm_id: 1,
            },
        );
        let b = r.to_bytes();
        assert_eq!(b.len(), 32);
        assert_eq!(&b[0..8], &[0; 8]);
        assert_eq!(&b[8..16], &0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(&b[16..24], &0x20_0000u64.to_le_bytes());
        assert_eq!(&b[24..28], &1u32.to_le_bytes());
        assert_eq!(&b[28..32], &[0; 4]);

        let f = Response::ok(VIRTIO_XPMEM_REQ_FAULT, ResponseBody::Fault { mapped: 7 }).to_bytes();
        assert_eq!(f, [0, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0]);
        let m = Response::ok(VIRTIO_XPMEM_REQ_MAKE, ResponseBody::Make { segid: 0x42 }).to_bytes();
        assert_eq!(&m[8..], &0x42u64.to_le_bytes());
        let g = Response::ok(VIRTIO_XPMEM_REQ_GET, ResponseBody::Get { apid: 0x43 }).to_bytes();
        assert_eq!(&g[8..], &0x43u64.to_le_bytes());
        let i = Response::ok(
            VIRTIO_XPMEM_REQ_INVALIDATE,
            ResponseBody::Invalidate {
                targets: 3,
                revoked: 0x0102_0304,
            },
        )
        .to_bytes();
        assert_eq!(i, [0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 4, 3, 2, 1]);
        let s = Response::ok(
            VIRTIO_XPMEM_REQ_SEARCH,
            ResponseBody::Search { segid: 0x44 },
        )
        .to_bytes();
        assert_eq!(s[8..], 0x44u64.to_le_bytes());
        let i0 = Response::ok(VIRTIO_XPMEM_REQ_INVALIDATE, ResponseBody::Empty).to_bytes();
        assert_eq!(i0, vec![0; 16]);
        let ie = Response::error(VIRTIO_XPMEM_REQ_INVALIDATE, Status::NoEnt).to_bytes();
        assert_eq!(ie, [2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn error_responses_have_zero_body_and_fixed_size() {
        let b = Response::error(VIRTIO_XPMEM_REQ_ATTACH, Status::NoSpc).to_bytes();
        assert_eq!(b.len(), 32);
        assert_eq!(&b[0..4], &VIRTIO_XPMEM_S_NOSPC.to_le_bytes());
        assert!(b[4..].iter().all(|&x| x == 0));
        let u = Response::error(77, Status::Unsupported).to_bytes();
        assert_eq!(u, [5, 0, 0, 0, 0, 0, 0, 0]);
        // A body that does not belong to the opcode is never written.
        let mismatched =
            Response::ok(VIRTIO_XPMEM_REQ_MAKE, ResponseBody::Get { apid: 9 }).to_bytes();
        assert_eq!(mismatched, vec![0; 16]);
    }

    #[test]
    fn events_round_trip() {
        let events = [
            Event::Resolve {
                resolve_id: 1,
                segid: 2,
                vaddr: 0x7000,
                npages: 16,
                write: true,
            },
            Event::Invalidate {
                invalidation_id: 3,
                attach_id: 4,
                page_index: 5,
                npages: 6,
            },
            Event::Revoked {
                attach_id: 4,
                page_index: 0,
                npages: 100,
                reason: RevokeReason::Deadline,
            },
        ];
        for e in events {
            let b = e.to_bytes();
            assert_eq!(b.len(), VIRTIO_XPMEM_EVENT_SIZE as usize);
            assert_eq!(&b[0..4], &e.event_type().to_le_bytes());
            assert_eq!(Event::parse(&b), Ok(e));
        }
    }

    #[test]
    fn event_parse_errors() {
        assert_eq!(Event::parse(&[0; 4]), Err(EventError::Short(4)));
        let mut b = Event::Invalidate {
            invalidation_id: 3,
            attach_id: 4,
            page_index: 5,
            npages: 6,
        }
        .to_bytes();
        assert!(matches!(
            Event::parse(&b[..39]),
            Err(EventError::Length { expected: 40, .. })
        ));
        b[0] = 9;
        assert_eq!(Event::parse(&b), Err(EventError::UnknownType(9)));
        let mut r = Event::Revoked {
            attach_id: 1,
            page_index: 0,
            npages: 1,
            reason: RevokeReason::Removed,
        }
        .to_bytes();
        r[32] = 77;
        assert!(matches!(
            Event::parse(&r),
            Err(EventError::BadField {
                field: "reason",
                ..
            })
        ));
        let mut s = Event::Resolve {
            resolve_id: 1,
            segid: 2,
            vaddr: 0,
            npages: 1,
            write: false,
        }
        .to_bytes();
        s[36] = 2;
        assert!(matches!(
            Event::parse(&s),
            Err(EventError::BadField { field: "flags", .. })
        ));
    }

    #[test]
    fn helpers() {
        assert!(is_page_aligned(0));
        assert!(is_page_aligned(8192));
        assert!(!is_page_aligned(4095));
        assert!(is_valid_id(1));
        assert!(!is_valid_id(0));
        assert!(!is_valid_id(1 << 63));
        for s in 0..=10 {
            assert_eq!(Status::from_u32(s).map(|x| x as u32), Some(s));
        }
        assert_eq!(Status::from_u32(11), None);
        assert_eq!(RevokeReason::from_u32(4), Some(RevokeReason::Host));
        assert_eq!(RevokeReason::from_u32(5), None);
        assert_eq!(RevokeReason::from_u32(0), None);
    }
}
