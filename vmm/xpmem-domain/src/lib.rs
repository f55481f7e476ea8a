//! The host side of cross-VM XPMEM: one *domain* spanning every VM of a monitor.
//!
//! The domain is a message-driven state machine with no KVM, no threads and no clock of its
//! own: the device model feeds it decoded guest requests ([`Domain::handle`]), VM arrivals
//! and departures ([`Domain::add_vm`], [`Domain::remove_vm`]) and the current time
//! ([`Domain::tick`], at [`Domain::next_deadline`]), and applies the returned [`Action`]s
//! **in order**: respond to a request, post an event, map exporter pages into an importer's
//! aperture, unmap them again. An `Unmap` always precedes the response that depends on it.
//!
//! It owns segments (MAKE), permits (GET), attachments and their aperture ranges (ATTACH),
//! the FAULT -> RESOLVE -> RESOLVE_REPLY -> map flow, the reverse map from exporter pages to
//! importer slots, and the invalidation coordinator with its forced-revocation deadline.
//! The semantics follow `virtio-spec/virtio-xpmem.md` section 8; the key safety invariant
//! (8.8.2): once an exporter's INVALIDATE is answered, no importer slot maps any page of the
//! invalidated range, and a slot revoked by force never becomes mapped again. The answer
//! ([`ResponseBody::Invalidated`]) reports how many attachments were sent an INVALIDATE
//! event (moot ones included) and how many of those were revoked at the deadline.
//!
//! # State per attachment page (slot)
//! *empty* (shows the filler), *mapped* (one exporter page, with a reverse-map entry), or
//! *revoked* (filler for good). Slots live in one `u64` per page in the attachment
//! (allocated at ATTACH); the reverse map is a B-tree of 16-byte entries keyed by
//! `(exporter VM, exporter page)`, measured at 26-35 heap bytes per mapped page
//! (`cargo bench -p xpmem-domain`). Invalidation finds slots through the segment's
//! attachments (guests invalidate by exporter *virtual* address); the reverse map answers
//! gpa-based questions ([`Domain::rmap_lookup`]) for host-side events.
//!
//! # Decisions
//! - **Ids.** segids, apids and attach_ids are a keyed 62-bit Feistel permutation of
//!   `(VM, per-VM counter)` plus one: positive, non-zero, decodable by the domain
//!   ([`Domain::segid_vm`]), unpredictable without [`DomainConfig::seed`]. Counters survive
//!   `remove_vm`, so ids of a VM's earlier incarnation are never reissued. resolve_ids and
//!   invalidation_ids are serial numbers: they are only accepted from the VM they were sent
//!   to.
//! - **Ownership.** `(VM, owner token)` owns segments, permits and attachments; a foreign id
//!   answers PERM, an unknown one NOENT. RESOLVE_REPLY, INVALIDATE and INVALIDATE_ACK are
//!   checked against the VM only (they come from the guest kernel).
//! - **Permissions.** GET applies the domain policy ([`ImportPolicy`]) and the IPC-style mode
//!   check (in the exporter's VM: owner bits if uid matches, else group bits if gid
//!   matches, else other bits; from any other VM always the other bits, since uids and
//!   gids are per-VM namespaces; RDONLY needs r, RDWR needs r+w). There is no root
//!   override.
//! - **REMOVE / exporter gone** revoke importers directly: Unmap + REVOKED (reason
//!   SegmentRemoved / ExporterGone), no acknowledgement round, pending FAULTs fail with
//!   REVOKED / GONE, pending INVALIDATEs of the segment complete. Permits stay; ATTACH with
//!   them answers NOENT (segment removed) or GONE (exporter gone).
//! - **RELEASE** detaches the permit's attachments; **RELEASE_OWNER** detaches, releases and
//!   removes everything of that owner token.
//! - **Races.** A RESOLVE_REPLY is stale if an overlapping INVALIDATE of the segment was
//!   processed after the RESOLVE was sent or is still pending; it is discarded and the FAULT
//!   starts again (waiting for the INVALIDATE, then a new RESOLVE), at most
//!   [`MAX_RESOLVE_ATTEMPTS`] resolutions, then FAULT fails with [`Status::Fault`]. A FAULT
//!   whose window overlaps a pending INVALIDATE waits for it before resolving.
//! - **Shared resolution.** A FAULT whose window lies inside a RESOLVE already in flight
//!   for the same segment (not stale, with write access if needed) joins it instead of
//!   sending another, whichever importer sent it; the reply is mapped into every joined
//!   FAULT's slots, and a FAULT the reply did not cover resolves the rest.
//! - **Deadlines.** An INVALIDATE target not acknowledged within
//!   [`DomainConfig::invalidate_deadline_ms`] is revoked by force; a RESOLVE not answered
//!   within [`Domain::resolve_timeout_ms`] fails its FAULT.
//! - **Hostile guests.** RESOLVE_REPLY addresses must be page aligned and inside the
//!   exporter's RAM, at most as many as asked; otherwise INVALID, nothing mapped, FAULT fails.
//!   Per-VM tables are bounded ([`DomainConfig::max_segments_per_vm`],
//!   `max_permits_per_vm`, `max_attachments_per_vm`; NOSPC beyond), deferred requests by
//!   the queue size; teardown and RELEASE_OWNER only visit the VM's own objects.
//! - **Teardown.** Nothing is emitted towards a removed VM; its pending requests are dropped.
//!   After every VM is removed, every "held" counter is zero ([`Counters::nothing_held`]).

// Values from guests (lengths, counts, addresses, page numbers, ids) are converted with
// checks that answer an error status; a cast that cannot lose anything by construction
// carries an `allow` saying why. Tests and the fuzz harness may cast freely.
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

mod aperture_alloc;
mod domain;
mod ids;
mod types;

pub use domain::{
    Domain, DomainError, Mapping, MAX_APERTURE_PAGES, MAX_GPA, MAX_RESOLVE_ATTEMPTS, MAX_VM_ID,
};
pub use types::*;
