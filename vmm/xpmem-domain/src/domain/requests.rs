//! The object requests: MAKE, NAME, SEARCH, REMOVE, GET, RELEASE, ATTACH and DETACH
//! (checks, then the new or dropped segment, permit or attachment).

use std::collections::BTreeSet;

use crate::ids::IdKind;
use crate::types::{
    is_valid_name, OwnerToken, ResponseBody, RevokeReason, Status, VmId, Window, PAGE_SIZE,
    XPMEM_GET_IPC_OWNER, XPMEM_MAXADDR_SIZE, XPMEM_PERMIT_MODE, XPMEM_RDONLY, XPMEM_RDWR,
};

use super::slots::SLOT_EMPTY;
use super::state::{AttState, Attachment, Permit, Segment};
use super::{Domain, Out};

impl Domain {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn make(
        &mut self,
        vm: VmId,
        owner: OwnerToken,
        vaddr: u64,
        size: u64,
        permit_type: u32,
        permit_value: u64,
        uid: u32,
        gid: u32,
    ) -> Option<Result<ResponseBody, Status>> {
        Some((|| {
            if owner.0 == 0 || permit_type != XPMEM_PERMIT_MODE || permit_value > 0o777 {
                return Err(Status::Invalid);
            }
            let mode = u32::try_from(permit_value).map_err(|_| Status::Invalid)?;
            let limit = self.cfg.user_addr_limit;
            if vaddr % PAGE_SIZE != 0 || vaddr >= limit {
                return Err(Status::Invalid);
            }
            let size = if size == XPMEM_MAXADDR_SIZE {
                (limit - vaddr) & !(PAGE_SIZE - 1)
            } else {
                size
            };
            let end = vaddr.checked_add(size).ok_or(Status::Invalid)?;
            if size == 0 || size % PAGE_SIZE != 0 || end > limit {
                return Err(Status::Invalid);
            }
            let max = self.cfg.max_segments_per_vm;
            let segid = self.take_held_id(vm, IdKind::Segment, max, |st| &mut st.segs)?;
            self.segments.insert(
                segid,
                Segment {
                    vm,
                    owner,
                    vaddr,
                    size,
                    mode,
                    uid,
                    gid,
                    attachments: BTreeSet::new(),
                    invalidations: BTreeSet::new(),
                    name: None,
                },
            );
            Ok(ResponseBody::Segid(segid))
        })())
    }

    /// NAME: only the segment's owner may name it, once; names are unique in the domain.
    pub(super) fn name(
        &mut self,
        vm: VmId,
        owner: OwnerToken,
        segid: i64,
        name: String,
    ) -> Result<ResponseBody, Status> {
        if !self.vms.get(&vm).is_some_and(|st| st.names) {
            return Err(Status::Unsupported);
        }
        if owner.0 == 0 || !is_valid_name(&name) {
            return Err(Status::Invalid);
        }
        let seg = self
            .segments
            .get_mut(&segid)
            .filter(|s| s.vm == vm)
            .ok_or(Status::NoEnt)?;
        if seg.owner != owner {
            return Err(Status::Perm);
        }
        if seg.name.is_some() || self.names.contains_key(&name) {
            return Err(Status::Exist);
        }
        seg.name = Some(name.clone());
        self.names.insert(name, segid);
        Ok(ResponseBody::Empty)
    }

    /// SEARCH: a name is visible to the VMs the import policy lets import from its VM.
    pub(super) fn search(
        &self,
        vm: VmId,
        owner: OwnerToken,
        name: &str,
    ) -> Result<ResponseBody, Status> {
        if !self.vms.get(&vm).is_some_and(|st| st.names) {
            return Err(Status::Unsupported);
        }
        if owner.0 == 0 || !is_valid_name(name) {
            return Err(Status::Invalid);
        }
        let segid = *self.names.get(name).ok_or(Status::NoEnt)?;
        let seg = self.segments.get(&segid).ok_or(Status::NoEnt)?;
        if !self.cfg.policy.allows(vm, seg.vm, false) {
            return Err(Status::NoEnt);
        }
        Ok(ResponseBody::Segid(segid))
    }

    pub(super) fn remove(
        &mut self,
        vm: VmId,
        owner: OwnerToken,
        segid: i64,
        out: &mut Out,
    ) -> Option<Result<ResponseBody, Status>> {
        let seg = match self.segments.get(&segid) {
            Some(s) => s,
            None => return Some(Err(Status::NoEnt)),
        };
        if seg.vm != vm || seg.owner != owner {
            return Some(Err(Status::Perm));
        }
        self.remove_segment(segid, RevokeReason::SegmentRemoved, out);
        Some(Ok(ResponseBody::Empty))
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn get(
        &mut self,
        vm: VmId,
        owner: OwnerToken,
        segid: i64,
        flags: u32,
        permit_type: u32,
        permit_value: u64,
        uid: u32,
        gid: u32,
    ) -> Option<Result<ResponseBody, Status>> {
        Some((|| {
            if owner.0 == 0 || permit_type != XPMEM_PERMIT_MODE || permit_value != 0 {
                return Err(Status::Invalid);
            }
            let ipc_owner = flags & XPMEM_GET_IPC_OWNER != 0;
            let writable = match flags & !XPMEM_GET_IPC_OWNER {
                XPMEM_RDONLY => false,
                XPMEM_RDWR => true,
                _ => return Err(Status::Invalid),
            };
            let seg = self.segments.get(&segid).ok_or(Status::NoEnt)?;
            if !self.cfg.policy.allows(vm, seg.vm, writable) {
                return Err(Status::Perm);
            }
            // IPC-style, but uids and gids are per-VM namespaces: uid 0 of one VM is not
            // uid 0 of another. The owner's bits apply only to the exporter's VM with a
            // matching uid, the group's only to that VM with a matching gid; an importer
            // in another VM always gets the others' bits. CAP_IPC_OWNER (which the guest
            // kernel vouches for) passes the mode check as natively, but only within the
            // exporter's VM: root of another VM is just another VM's process.
            let same_vm = vm == seg.vm;
            let bypass = same_vm && ipc_owner;
            let bits = if same_vm && uid == seg.uid {
                seg.mode >> 6
            } else if same_vm && gid == seg.gid {
                seg.mode >> 3
            } else {
                seg.mode
            } & 0o7;
            let need = if writable { 0o6 } else { 0o4 };
            if bits & need != need && !bypass {
                return Err(Status::Perm);
            }
            let exporter = seg.vm;
            let max = self.cfg.max_permits_per_vm;
            let apid = self.take_held_id(vm, IdKind::Permit, max, |st| &mut st.permits)?;
            self.permits.insert(
                apid,
                Permit {
                    vm,
                    owner,
                    segid,
                    exporter,
                    writable,
                    attachments: BTreeSet::new(),
                },
            );
            Ok(ResponseBody::Apid(apid))
        })())
    }

    pub(super) fn release(
        &mut self,
        vm: VmId,
        owner: OwnerToken,
        apid: i64,
        out: &mut Out,
    ) -> Option<Result<ResponseBody, Status>> {
        let p = match self.permits.get(&apid) {
            Some(p) => p,
            None => return Some(Err(Status::NoEnt)),
        };
        if p.vm != vm || p.owner != owner {
            return Some(Err(Status::Perm));
        }
        self.release_internal(apid, out);
        Some(Ok(ResponseBody::Empty))
    }

    pub(super) fn attach(
        &mut self,
        vm: VmId,
        owner: OwnerToken,
        apid: i64,
        offset: u64,
        size: u64,
        flags: u32,
    ) -> Option<Result<ResponseBody, Status>> {
        Some((|| {
            let p = self.permits.get(&apid).ok_or(Status::NoEnt)?;
            if p.vm != vm || p.owner != owner {
                return Err(Status::Perm);
            }
            if flags & !XPMEM_RDONLY != 0 {
                return Err(Status::Invalid);
            }
            let rdonly = flags & XPMEM_RDONLY != 0;
            if !rdonly && !p.writable {
                return Err(Status::Perm);
            }
            let (segid, exporter) = (p.segid, p.exporter);
            if self.backing_off(vm, segid) {
                return Err(Status::Again);
            }
            let seg = match self.segments.get(&segid) {
                Some(s) => s,
                None if !self.vms.contains_key(&exporter) => return Err(Status::Gone),
                None => return Err(Status::NoEnt),
            };
            let end = offset.checked_add(size).ok_or(Status::Invalid)?;
            if size == 0 || offset % PAGE_SIZE != 0 || size % PAGE_SIZE != 0 || end > seg.size {
                return Err(Status::Invalid);
            }
            let vaddr = seg.vaddr + offset;
            let npages = size / PAGE_SIZE;
            let window = if rdonly { Window::Ro } else { Window::Rw };
            let max = self.cfg.max_attachments_per_vm;
            // One slot per page, in a slab indexed by u32 (reverse-map entries pack the
            // index in 32 bits): refuse what this host cannot index.
            let nslots = usize::try_from(npages).map_err(|_| Status::NoSpc)?;
            let idx = match self.slab_free.last() {
                Some(&i) => i,
                None => u32::try_from(self.slab.len()).map_err(|_| Status::NoSpc)?,
            };
            let st = self.vms.get_mut(&vm).ok_or(Status::NoEnt)?;
            if st.atts.len() >= max as usize {
                return Err(Status::NoSpc);
            }
            let aperture_page = st.aperture(window).alloc(npages).ok_or(Status::NoSpc)?;
            let id = match self
                .new_id(IdKind::Attachment, vm)
                .and_then(|id| u64::try_from(id).ok())
            {
                Some(id) => id,
                None => {
                    if let Some(st) = self.vms.get_mut(&vm) {
                        st.aperture(window).free(aperture_page, npages);
                    }
                    return Err(Status::NoSpc);
                }
            };
            let a = Attachment {
                id,
                importer: vm,
                owner,
                apid,
                segid,
                exporter,
                vaddr,
                window,
                aperture_page,
                writable: !rdonly,
                state: AttState::Live,
                slots: vec![SLOT_EMPTY; nslots],
            };
            match self.slab_free.pop() {
                Some(i) => self.slab[i as usize] = Some(a),
                None => self.slab.push(Some(a)),
            }
            self.attach_index.insert(id, idx);
            if let Some(st) = self.vms.get_mut(&vm) {
                st.atts.insert(id);
            }
            if let Some(s) = self.segments.get_mut(&segid) {
                s.attachments.insert(id);
            }
            if let Some(p) = self.permits.get_mut(&apid) {
                p.attachments.insert(id);
            }
            Ok(ResponseBody::Attached {
                attach_id: id,
                window,
                aperture_page,
            })
        })())
    }

    pub(super) fn detach(
        &mut self,
        vm: VmId,
        owner: OwnerToken,
        attach_id: u64,
        out: &mut Out,
    ) -> Option<Result<ResponseBody, Status>> {
        let a = match self.att(attach_id) {
            Some(a) => a,
            None => return Some(Err(Status::NoEnt)),
        };
        if a.importer != vm || a.owner != owner {
            return Some(Err(Status::Perm));
        }
        self.detach_internal(attach_id, out);
        Some(Ok(ResponseBody::Empty))
    }
}
