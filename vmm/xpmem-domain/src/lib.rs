//! The host side of cross-VM XPMEM: one *domain* spanning every VM of a monitor.
//!
//! The domain is a message-driven state machine with no KVM, no threads and no clock of its
//! own: the device model feeds it decoded guest requests ([`Domain::handle`]), VM arrivals
//! and departures ([`Domain::add_vm`], [`Domain::remove_vm`]) and the current time
//! ([`Domain::tick`]), and applies the returned [`Action`]s *in order* (respond to a request,
//! post an event, map exporter pages into an importer's aperture, unmap them again).
//!
//! It owns segments (MAKE), permits (GET), attachments and their aperture ranges (ATTACH),
//! the FAULT -> RESOLVE -> map flow, the reverse map from exporter pages to importer slots
//! and the invalidation coordinator with its forced-revocation deadline. The key safety
//! invariant: once an exporter's INVALIDATE is answered, no importer slot maps any page of
//! the invalidated range, and a page revoked by force stays unmappable.
//!
//! Design decisions (see the docs of each item for details):
//! - REMOVE and exporter departure revoke importers *directly* (Unmap + REVOKED event), no
//!   acknowledgement round: the exporter is withdrawing the segment, not asking for pages.
//! - A RESOLVE_REPLY raced by an overlapping INVALIDATE (started after the RESOLVE was
//!   issued, or still pending when the reply arrives) is discarded and the FAULT is
//!   resolved again once no overlapping invalidation is pending, at most
//!   [`MAX_RESOLVE_ATTEMPTS`] times; then the FAULT fails with [`Status::Fault`].
//! - Nothing is emitted towards a VM that has been removed.

mod aperture;
mod domain;
mod ids;
mod types;

pub use domain::{
    Domain, DomainError, Mapping, MAX_APERTURE_PAGES, MAX_GPA, MAX_RESOLVE_ATTEMPTS, MAX_VM_ID,
};
pub use types::*;
