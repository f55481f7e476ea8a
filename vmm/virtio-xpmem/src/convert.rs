//! Conversions between the wire format (`virtio-xpmem-wire`) and the
//! domain's semantic types (`xpmem-domain`).

use virtio_xpmem_wire as wire;
use xpmem_domain as dom;

/// Turns a validated wire request into a domain request. `None` only for
/// ids that do not fit the domain's `i64` (the wire parser already rejects
/// them, so this is belt and braces).
pub fn request_to_domain(owner: u64, req: wire::Request) -> Option<dom::Request> {
    let owner = dom::OwnerToken(owner);
    let sid = |v: u64| i64::try_from(v).ok();
    Some(match req {
        wire::Request::Make {
            vaddr,
            size,
            mode,
            uid,
            gid,
        } => dom::Request::Make {
            owner,
            vaddr,
            size,
            permit_type: dom::XPMEM_PERMIT_MODE,
            permit_value: u64::from(mode),
            uid,
            gid,
        },
        wire::Request::Remove { segid } => dom::Request::Remove {
            owner,
            segid: sid(segid)?,
        },
        wire::Request::Get {
            segid,
            access,
            uid,
            gid,
            ipc_owner,
        } => dom::Request::Get {
            owner,
            segid: sid(segid)?,
            flags: match access {
                wire::Access::ReadOnly => dom::XPMEM_RDONLY,
                wire::Access::ReadWrite => dom::XPMEM_RDWR,
            } | if ipc_owner {
                dom::XPMEM_GET_IPC_OWNER
            } else {
                0
            },
            permit_type: dom::XPMEM_PERMIT_MODE,
            permit_value: 0,
            uid,
            gid,
        },
        wire::Request::Release { apid } => dom::Request::Release {
            owner,
            apid: sid(apid)?,
        },
        wire::Request::Attach {
            apid,
            offset,
            size,
            read_only,
        } => dom::Request::Attach {
            owner,
            apid: sid(apid)?,
            offset,
            size,
            flags: if read_only { dom::XPMEM_RDONLY } else { 0 },
        },
        wire::Request::Detach { attach_id } => dom::Request::Detach { owner, attach_id },
        // The domain resolves for writing whenever the attachment is
        // writable, so the FAULT write hint is not needed.
        wire::Request::Fault {
            attach_id,
            page_index,
            npages,
            write: _,
        } => dom::Request::Fault {
            owner,
            attach_id,
            page_index,
            npages,
        },
        wire::Request::ResolveReply {
            resolve_id,
            status,
            gpas,
        } => dom::Request::ResolveReply {
            resolve_id,
            result: match dom::Status::from_code(status as u32) {
                None => Ok(gpas),
                Some(err) => Err(err),
            },
        },
        wire::Request::Invalidate { segid, vaddr, len } => dom::Request::Invalidate {
            owner,
            segid: sid(segid)?,
            vaddr,
            len,
        },
        wire::Request::InvalidateAck { invalidation_id } => {
            dom::Request::InvalidateAck { invalidation_id }
        }
        wire::Request::ReleaseOwner => dom::Request::ReleaseOwner { owner },
        wire::Request::Name { segid, name } => dom::Request::Name {
            owner,
            segid: sid(segid)?,
            name: name.as_str().to_string(),
        },
        wire::Request::Search { name } => dom::Request::Search {
            owner,
            name: name.as_str().to_string(),
        },
    })
}

/// The wire form of a segid or apid the domain issued.
#[allow(clippy::cast_sign_loss)] // domain ids are positive (a 62-bit permutation plus one)
fn id_to_wire(id: i64) -> u64 {
    id as u64
}

/// The wire status of a domain status.
pub fn status_to_wire(s: dom::Status) -> wire::Status {
    wire::Status::from_u32(s.code()).unwrap_or(wire::Status::Invalid)
}

/// The wire response to a request with `opcode`.
pub fn response_to_wire(
    opcode: u32,
    result: Result<dom::ResponseBody, dom::Status>,
) -> wire::Response {
    let body = match result {
        Err(s) => return wire::Response::error(opcode, status_to_wire(s)),
        Ok(b) => b,
    };
    let body = match body {
        dom::ResponseBody::Empty => wire::ResponseBody::Empty,
        // MAKE and SEARCH both answer a segid.
        dom::ResponseBody::Segid(segid) if opcode == wire::VIRTIO_XPMEM_REQ_SEARCH => {
            wire::ResponseBody::Search {
                segid: id_to_wire(segid),
            }
        }
        dom::ResponseBody::Segid(segid) => wire::ResponseBody::Make {
            segid: id_to_wire(segid),
        },
        dom::ResponseBody::Apid(apid) => wire::ResponseBody::Get {
            apid: id_to_wire(apid),
        },
        dom::ResponseBody::Attached {
            attach_id,
            window,
            aperture_page,
        } => wire::ResponseBody::Attach {
            attach_id,
            aperture_offset: aperture_page.saturating_mul(dom::PAGE_SIZE),
            shm_id: window.shm_id(),
        },
        dom::ResponseBody::Mapped(mapped) => wire::ResponseBody::Fault { mapped },
        dom::ResponseBody::Invalidated { targets, revoked } => {
            wire::ResponseBody::Invalidate { targets, revoked }
        }
    };
    wire::Response::ok(opcode, body)
}

/// The wire form of a domain event.
pub fn event_to_wire(ev: &dom::Event) -> wire::Event {
    match *ev {
        dom::Event::Resolve {
            resolve_id,
            segid,
            vaddr,
            npages,
            write,
        } => wire::Event::Resolve {
            resolve_id,
            segid: id_to_wire(segid),
            vaddr,
            npages,
            write,
        },
        dom::Event::Invalidate {
            invalidation_id,
            attach_id,
            page_index,
            npages,
        } => wire::Event::Invalidate {
            invalidation_id,
            attach_id,
            page_index,
            npages,
        },
        dom::Event::Revoked {
            attach_id,
            page_index,
            npages,
            reason,
        } => wire::Event::Revoked {
            attach_id,
            page_index,
            npages,
            reason: match reason {
                dom::RevokeReason::Deadline => wire::RevokeReason::Deadline,
                dom::RevokeReason::SegmentRemoved => wire::RevokeReason::Removed,
                dom::RevokeReason::ExporterGone => wire::RevokeReason::ExporterGone,
                dom::RevokeReason::Host => wire::RevokeReason::Host,
            },
        },
    }
}
