//! The state behind the hub mutex and the application of the domain's actions, in
//! order: responses and events to endpoints, maps and unmaps to the aperture backend,
//! whole-window revocation or cut-off when an unmap fails.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use xpmem_domain::{Action, Domain, RequestTag, VmHoldings, VmId, Window};

use super::{lock, ApertureStats, CompletionProbe, CutOff, Endpoint, SYNTHETIC_TAG};
use crate::aperture::{ApertureBackend, ApertureError};
use crate::convert;

pub(super) struct HubState {
    pub(super) domain: Domain,
    pub(super) aperture: Box<dyn ApertureBackend>,
    pub(super) endpoints: HashMap<VmId, Arc<Mutex<Endpoint>>>,
    /// VMs currently joined to the domain (device active).
    pub(super) joined: HashMap<VmId, ()>,
    /// What each VM's guest held when it last left the domain (device reset):
    /// at guest shutdown, what its driver never released.
    pub(super) held_at_leave: HashMap<VmId, VmHoldings>,
    /// The monitor's last resort per VM when a window cannot be revoked.
    pub(super) cut_offs: HashMap<VmId, CutOff>,
    pub(super) completion_probe: Option<CompletionProbe>,
    pub(super) stats: ApertureStats,
}

impl HubState {
    pub(super) fn endpoint(&self, vm: VmId) -> Option<Arc<Mutex<Endpoint>>> {
        self.endpoints.get(&vm).cloned()
    }

    /// Applies domain actions in order. See the module docs for locking.
    ///
    /// Order is the invalidation guarantee: an Unmap or RevokeWindow comes before the
    /// Respond that tells an exporter its pages are free, so each is fully applied (or the
    /// importer is cut off from the window) before the next action is looked at.
    pub(super) fn route(&mut self, actions: Vec<Action>, now_ms: u64) {
        let mut queue: VecDeque<Action> = actions.into();
        // Importers whose Map failed in this batch: their FAULT answer
        // (which follows the Maps) becomes FAULT instead of "mapped".
        let mut failed_maps: Vec<VmId> = Vec::new();
        // RESOLVE events that could not be queued (spec 8.3.2).
        let mut dropped_resolves: Vec<(VmId, u64)> = Vec::new();
        // Windows replaced whole while routing: later Map/Unmap actions on them are stale.
        let mut revoked: Vec<(VmId, Window)> = Vec::new();
        loop {
            while let Some(action) = queue.pop_front() {
                self.apply(
                    action,
                    now_ms,
                    &mut queue,
                    &mut failed_maps,
                    &mut dropped_resolves,
                    &mut revoked,
                );
            }
            if dropped_resolves.is_empty() {
                break;
            }
            // An undeliverable RESOLVE must fail the FAULT waiting for it: answer
            // it on the exporter's behalf with a failed RESOLVE_REPLY. Tag 0 is
            // never issued to a real chain, so that reply's own answer is dropped.
            for (exporter, resolve_id) in std::mem::take(&mut dropped_resolves) {
                queue.extend(self.domain.handle(
                    exporter,
                    RequestTag(SYNTHETIC_TAG),
                    xpmem_domain::Request::ResolveReply {
                        resolve_id,
                        result: Err(xpmem_domain::Status::Fault),
                    },
                    now_ms,
                ));
            }
        }
    }

    fn apply(
        &mut self,
        action: Action,
        now_ms: u64,
        queue: &mut VecDeque<Action>,
        failed_maps: &mut Vec<VmId>,
        dropped_resolves: &mut Vec<(VmId, u64)>,
        revoked: &mut Vec<(VmId, Window)>,
    ) {
        match action {
            Action::Respond { vm, tag, result } => {
                let result = match result {
                    Ok(xpmem_domain::ResponseBody::Mapped(_)) if failed_maps.contains(&vm) => {
                        Err(xpmem_domain::Status::Fault)
                    }
                    other => other,
                };
                if let Some(ep) = self.endpoint(vm) {
                    let mut ep = lock(&ep);
                    if let (Some(probe), Some(opcode)) =
                        (self.completion_probe.as_ref(), ep.pending_opcode(tag))
                    {
                        probe(vm, opcode, result.is_ok());
                    }
                    ep.respond(tag, result);
                }
            }
            Action::PostEvent { vm, event } => {
                if let Some(ep) = self.endpoint(vm) {
                    let queued = lock(&ep).post_event(convert::event_to_wire(&event).to_bytes());
                    if let (false, xpmem_domain::Event::Resolve { resolve_id, .. }) =
                        (queued, &event)
                    {
                        dropped_resolves.push((vm, *resolve_id));
                    }
                }
            }
            Action::Map {
                importer,
                window,
                aperture_page,
                exporter,
                exporter_gpa,
                npages,
                writable,
            } => {
                self.stats.map_actions += 1;
                if revoked.contains(&(importer, window)) {
                    // The domain revoked these slots since it emitted this Map.
                    failed_maps.push(importer);
                    return;
                }
                match self.aperture.map(
                    importer,
                    window,
                    aperture_page,
                    exporter,
                    exporter_gpa,
                    npages,
                    writable,
                ) {
                    Ok(s) => {
                        self.stats.mmap_calls += s.mmap_calls;
                        self.stats.pages_mapped += s.pages;
                    }
                    Err(e) => {
                        self.stats.map_failures += 1;
                        failed_maps.push(importer);
                        if let ApertureError::Unrestored { .. } = e {
                            log::error!("virtio-xpmem: mapping {npages} pages of VM {exporter:?} into VM {importer:?}: {e}");
                            self.window_failed(importer, window, now_ms, queue, revoked);
                        } else {
                            // The backend left the range showing the filler; the
                            // domain forgets the slots so a later FAULT resolves them
                            // anew (a refused budget is the guest's doing: debug only).
                            if let ApertureError::MappingBudget { .. } = e {
                                log::debug!("virtio-xpmem: VM {importer:?}: {e}");
                            } else {
                                log::error!("virtio-xpmem: mapping {npages} pages of VM {exporter:?} into VM {importer:?}: {e}");
                            }
                            self.domain
                                .map_failed(importer, window, aperture_page, npages);
                        }
                    }
                }
            }
            Action::Unmap {
                importer,
                window,
                aperture_page,
                npages,
            } => {
                self.stats.unmap_actions += 1;
                if revoked.contains(&(importer, window)) {
                    return;
                }
                match self.aperture.unmap(importer, window, aperture_page, npages) {
                    Ok(s) => {
                        self.stats.mmap_calls += s.mmap_calls;
                        self.stats.pages_unmapped += s.pages;
                    }
                    Err(e) => {
                        self.stats.unmap_failures += 1;
                        log::warn!("virtio-xpmem: revoking {npages} aperture pages of VM {importer:?} ({e}); revoking its whole {window:?} window instead");
                        self.window_failed(importer, window, now_ms, queue, revoked);
                    }
                }
            }
            Action::RevokeWindow { vm, window } => {
                self.revoke_window_or_cut_off(vm, window);
                revoked.push((vm, window));
            }
        }
    }

    /// An unmap of `importer`'s `window` failed: revoke the whole window (or cut the VM
    /// off from it), then let the domain revoke every attachment in it. Its actions run
    /// after the ones already queued; none of them can complete a request that relies on
    /// the failed unmap before the window is gone, since that happens here, now.
    fn window_failed(
        &mut self,
        importer: VmId,
        window: Window,
        now_ms: u64,
        queue: &mut VecDeque<Action>,
        revoked: &mut Vec<(VmId, Window)>,
    ) {
        self.stats.windows_revoked += 1;
        self.revoke_window_or_cut_off(importer, window);
        revoked.push((importer, window));
        queue.extend(self.domain.window_revoked(importer, window, now_ms));
    }

    /// Replaces the whole window by the filler; if even that fails, cuts the VM off from
    /// it through the monitor's [`CutOff`] (the memslot goes), and if there is none or it
    /// fails, stops the process: no path may leave an exporter's page reachable.
    pub(super) fn revoke_window_or_cut_off(&mut self, vm: VmId, window: Window) {
        let err = match self.aperture.revoke_window(vm, window) {
            Ok(s) => {
                self.stats.mmap_calls += s.mmap_calls;
                return;
            }
            // Not registered (any more): nothing of it can be mapped.
            Err(ApertureError::UnknownVm(_)) => return,
            Err(e) => e,
        };
        self.stats.cut_offs += 1;
        log::error!("virtio-xpmem: cannot revoke the {window:?} aperture window of VM {vm:?} ({err}); cutting the VM off from it");
        let cut = match self.cut_offs.get(&vm) {
            Some(cut) => cut(window),
            None => Err(std::io::Error::other("no cut-off registered for the VM")),
        };
        if let Err(e) = cut {
            log::error!("virtio-xpmem: cannot cut VM {vm:?} off from its {window:?} aperture window ({e}); stopping the monitor so that no VM keeps another VM's freed memory");
            std::process::abort();
        }
    }
}
