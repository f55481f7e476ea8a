//! Property tests: random operation sequences over three VMs, checked after every step
//! against a model built only from the emitted actions, and against a model of the importer
//! drivers' process mappings (what a driver following spec 8.7.1 and 8.8.1 maps).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use proptest::prelude::*;
use xpmem_domain::*;

const P: u64 = PAGE_SIZE;
const VMS: [VmId; 3] = [A, B, C];
const OWNERS: [OwnerToken; 2] = [OwnerToken(11), OwnerToken(22)];

#[derive(Clone, Debug)]
enum Op {
    Make {
        vm: usize,
        owner: usize,
        page: u64,
        npages: u64,
        mode: u64,
    },
    Remove {
        vm: usize,
        owner: usize,
        seg: usize,
    },
    Get {
        vm: usize,
        owner: usize,
        seg: usize,
        rdwr: bool,
    },
    Release {
        vm: usize,
        owner: usize,
        permit: usize,
    },
    Attach {
        vm: usize,
        owner: usize,
        permit: usize,
        page: u64,
        npages: u64,
        rdonly: bool,
    },
    Detach {
        vm: usize,
        owner: usize,
        att: usize,
    },
    Fault {
        vm: usize,
        owner: usize,
        att: usize,
        page: u64,
        npages: u32,
    },
    Reply {
        resolve: usize,
        kind: u8,
        vm: usize,
    },
    Invalidate {
        seg: usize,
        page: u64,
        npages: u64,
    },
    Ack {
        target: usize,
        vm: usize,
    },
    Tick {
        ms: u64,
    },
    ReleaseOwner {
        vm: usize,
        owner: usize,
    },
    RemoveVm {
        vm: usize,
    },
    AddVm {
        vm: usize,
    },
    /// Make + Get + Attach + Fault + good Reply in one go (correct identities), so that
    /// sequences reach mapped states often.
    Share {
        exp: usize,
        imp: usize,
        page: u64,
        npages: u64,
        rdonly: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let vm = 0..3usize;
    let ow = 0..2usize;
    let idx = 0..16usize;
    prop_oneof![
        10 => (vm.clone(), ow.clone(), 0..8u64, 1..24u64, prop_oneof![Just(0o666u64), Just(0o644), Just(0o600), Just(0o000)])
            .prop_map(|(vm, owner, page, npages, mode)| Op::Make { vm, owner, page, npages, mode }),
        5 => (vm.clone(), ow.clone(), idx.clone()).prop_map(|(vm, owner, seg)| Op::Remove { vm, owner, seg }),
        15 => (vm.clone(), ow.clone(), idx.clone(), any::<bool>()).prop_map(|(vm, owner, seg, rdwr)| Op::Get { vm, owner, seg, rdwr }),
        5 => (vm.clone(), ow.clone(), idx.clone()).prop_map(|(vm, owner, permit)| Op::Release { vm, owner, permit }),
        15 => (vm.clone(), ow.clone(), idx.clone(), 0..8u64, 1..16u64, any::<bool>())
            .prop_map(|(vm, owner, permit, page, npages, rdonly)| Op::Attach { vm, owner, permit, page, npages, rdonly }),
        5 => (vm.clone(), ow.clone(), idx.clone()).prop_map(|(vm, owner, att)| Op::Detach { vm, owner, att }),
        30 => (vm.clone(), ow.clone(), idx.clone(), 0..16u64, 1..8u32)
            .prop_map(|(vm, owner, att, page, npages)| Op::Fault { vm, owner, att, page, npages }),
        30 => (idx.clone(), 0..16u8, vm.clone()).prop_map(|(resolve, kind, vm)| Op::Reply { resolve, kind, vm }),
        15 => (idx.clone(), 0..24u64, 1..12u64).prop_map(|(seg, page, npages)| Op::Invalidate { seg, page, npages }),
        8 => (idx.clone(), vm.clone()).prop_map(|(target, vm)| Op::Ack { target, vm }),
        10 => (0..150u64).prop_map(|ms| Op::Tick { ms }),
        5 => (vm.clone(), ow.clone()).prop_map(|(vm, owner)| Op::ReleaseOwner { vm, owner }),
        1 => vm.clone().prop_map(|vm| Op::RemoveVm { vm }),
        2 => vm.clone().prop_map(|vm| Op::AddVm { vm }),
        10 => (vm.clone(), vm, 0..8u64, 1..24u64, any::<bool>())
            .prop_map(|(exp, imp, page, npages, rdonly)| Op::Share { exp, imp, page, npages, rdonly }),
    ]
}

#[derive(Clone, Debug)]
struct AttInfo {
    id: u64,
    vm: VmId,
    owner: OwnerToken,
    window: Window,
    ap: u64,
    npages: u64,
    segid: i64,
    vaddr: u64,
    apid: i64,
}

#[derive(Clone, Debug)]
enum Pending {
    /// A FAULT of attachment `att` (aperture pages from `ap` in `window`) at `page`, sent
    /// when the importer driver's invalidation count for it was `seq`.
    Fault {
        att: u64,
        window: Window,
        ap: u64,
        page: u64,
        seq: u64,
    },
    /// `targets`: INVALIDATE events the request posted; `None` while it is being sent.
    Invalidate {
        segid: i64,
        start: u64,
        end: u64,
        targets: Option<u32>,
    },
    Immediate,
}

struct Sim {
    h: H,
    present: BTreeSet<VmId>,
    /// (segid, exporter, owner, vaddr, npages)
    /// (segid, exporter, owner, vaddr, npages, mode)
    segs: Vec<(i64, VmId, OwnerToken, u64, u64, u64)>,
    /// (apid, importer, owner, segid)
    permits: Vec<(i64, VmId, OwnerToken, i64)>,
    atts: Vec<AttInfo>,
    /// (exporter, resolve_id, npages)
    resolves: Vec<(VmId, u64, Vec<u64>)>,
    /// (importer, invalidation_id)
    targets: Vec<(VmId, u64)>,
    /// Requests sent and not answered yet.
    pending: BTreeMap<(VmId, RequestTag), Pending>,
    /// Importer mappings built from Map/Unmap only: (importer, window, page) -> (exporter, gpa).
    model: BTreeMap<(VmId, Window, u64), (VmId, u64)>,
    /// Attachment pages revoked by REVOKED events: (attach_id, page).
    revoked: BTreeSet<(u64, u64)>,
    /// Exporter page-table versions: (segid, vaddr page) -> version, bumped when an
    /// invalidation of the page starts (the exporter changes the PTE then).
    pt_version: BTreeMap<(i64, u64), u64>,
    /// The importer drivers' process mappings of aperture pages: (importer, window, page).
    /// A driver maps the pages a FAULT completion names, unless an INVALIDATE or REVOKED
    /// event for the attachment arrived after it sent the FAULT (spec 8.7.1); it removes
    /// them on such an event and before it detaches or releases (8.8.1, 8.6.1).
    ptes: BTreeSet<(VmId, Window, u64)>,
    /// Per attachment: INVALIDATE and REVOKED events its importer driver handled.
    zaps: BTreeMap<u64, u64>,
}

fn pick<T: Clone>(v: &[T], i: usize) -> Option<T> {
    if v.is_empty() {
        None
    } else {
        Some(v[i % v.len()].clone())
    }
}

impl Sim {
    fn new() -> Sim {
        let h = H::with_config(DomainConfig {
            seed: 99,
            invalidate_deadline_ms: 100,
            resolve_timeout_ms: 300,
            max_fault_pages: 8,
            ..DomainConfig::default()
        });
        Sim {
            h,
            present: VMS.iter().copied().collect(),
            segs: vec![],
            permits: vec![],
            atts: vec![],
            resolves: vec![],
            targets: vec![],
            pending: BTreeMap::new(),
            model: BTreeMap::new(),
            revoked: BTreeSet::new(),
            pt_version: BTreeMap::new(),
            ptes: BTreeSet::new(),
            zaps: BTreeMap::new(),
        }
    }

    /// The importer driver handles an INVALIDATE or REVOKED event: it removes its process
    /// mappings of the pages at once (and acknowledges later, in an Ack step).
    fn zap(&mut self, vm: VmId, attach_id: u64, page_index: u64, npages: u64) {
        *self.zaps.entry(attach_id).or_default() += 1;
        if let Some(a) = self.atts.iter().find(|a| a.id == attach_id && a.vm == vm) {
            let (w, ap, n) = (a.window, a.ap, a.npages);
            let end = page_index.saturating_add(npages).min(n);
            for p in page_index..end {
                self.ptes.remove(&(vm, w, ap + p));
            }
        }
    }

    /// The importer driver drops every process mapping of the attachments `gone` selects
    /// (before it sends DETACH, RELEASE or RELEASE_OWNER, or when its VM goes).
    fn unmap_atts(&mut self, gone: impl Fn(&AttInfo) -> bool) {
        let ranges: Vec<(VmId, Window, u64, u64)> = self
            .atts
            .iter()
            .filter(|a| gone(a))
            .map(|a| (a.vm, a.window, a.ap, a.npages))
            .collect();
        for (vm, w, ap, n) in ranges {
            self.ptes
                .retain(|&(v, pw, p)| !(v == vm && pw == w && ap <= p && p < ap + n));
        }
    }

    fn att_of_page(&self, vm: VmId, w: Window, page: u64) -> Option<&AttInfo> {
        // The newest attachment covering the page wins (older ones were detached).
        self.atts
            .iter()
            .rev()
            .find(|a| a.vm == vm && a.window == w && a.ap <= page && page < a.ap + a.npages)
    }

    /// Sends a request, applies its actions, returns its immediate answer if any.
    fn send(
        &mut self,
        vm: VmId,
        req: Request,
        kind: Pending,
    ) -> Result<Option<Result<ResponseBody, Status>>, TestCaseError> {
        let dbg = format!("{vm:?} {req:?}");
        let (tag, acts) = self.h.send(vm, req);
        if std::env::var("MODEL_TRACE").is_ok() {
            eprintln!("{dbg}\n    -> {acts:?}");
        }
        let res = response(&acts, vm, tag);
        if !self.present.contains(&vm) {
            prop_assert_eq!(
                acts,
                vec![Action::Respond {
                    vm,
                    tag,
                    result: Err(Status::NoEnt)
                }]
            );
            return Ok(res);
        }
        self.pending.insert((vm, tag), kind);
        self.apply(&acts)?;
        Ok(res)
    }

    /// Applies actions in order to the model, checking each.
    fn apply(&mut self, acts: &[Action]) -> Result<(), TestCaseError> {
        for a in acts {
            match a {
                Action::Map {
                    importer,
                    window,
                    aperture_page,
                    exporter,
                    exporter_gpa,
                    npages,
                    writable,
                } => {
                    prop_assert!(
                        self.present.contains(importer) && self.present.contains(exporter)
                    );
                    prop_assert_eq!(*writable, *window == Window::Rw);
                    prop_assert!(*npages >= 1);
                    for i in 0..*npages {
                        let page = aperture_page + i;
                        let att = self.att_of_page(*importer, *window, page);
                        prop_assert!(att.is_some(), "Map outside any attachment");
                        let att = att.unwrap();
                        let id = (att.id, page - att.ap);
                        let va = att.vaddr + (page - att.ap) * P;
                        let gpa = exporter_gpa + i * P;
                        let current_w = self.pt(att.segid, va, true);
                        let current_r = self.pt(att.segid, va, false);
                        prop_assert!(
                            gpa == current_w || (!*writable && gpa == current_r),
                            "mapped a stale exporter page (resolution raced an invalidation) \
                             or a read lookup writable: gpa {:#x}, current {:#x}/{:#x}",
                            gpa,
                            current_w,
                            current_r
                        );
                        prop_assert!(!self.revoked.contains(&id), "revoked page mapped again");
                        let prev = self.model.insert(
                            (*importer, *window, page),
                            (*exporter, exporter_gpa + i * P),
                        );
                        prop_assert!(prev.is_none(), "Map over a mapped page");
                    }
                }
                Action::Unmap {
                    importer,
                    window,
                    aperture_page,
                    npages,
                } => {
                    prop_assert!(self.present.contains(importer));
                    for i in 0..*npages {
                        let prev = self.model.remove(&(*importer, *window, aperture_page + i));
                        prop_assert!(prev.is_some(), "Unmap of an unmapped page");
                    }
                }
                Action::PostEvent { vm, event } => {
                    prop_assert!(self.present.contains(vm), "event to a removed VM");
                    match event {
                        Event::Resolve {
                            resolve_id,
                            npages,
                            segid,
                            vaddr,
                            write,
                        } => {
                            prop_assert!(*npages >= 1 && *npages <= 8);
                            let gpas = (0..u64::from(*npages))
                                .map(|k| self.pt(*segid, vaddr + k * P, *write))
                                .collect();
                            self.resolves.push((*vm, *resolve_id, gpas));
                        }
                        Event::Invalidate {
                            invalidation_id,
                            attach_id,
                            page_index,
                            npages,
                        } => {
                            self.targets.push((*vm, *invalidation_id));
                            self.zap(*vm, *attach_id, *page_index, *npages);
                        }
                        Event::Revoked {
                            attach_id,
                            page_index,
                            npages,
                            ..
                        } => {
                            for p in *page_index..page_index + npages {
                                self.revoked.insert((*attach_id, p));
                            }
                            self.zap(*vm, *attach_id, *page_index, *npages);
                        }
                    }
                }
                Action::RevokeWindow { vm, window } => {
                    self.model
                        .retain(|&(imp, w, _), _| !(imp == *vm && w == *window));
                }
                Action::Respond { vm, tag, result } => {
                    prop_assert!(self.present.contains(vm), "response to a removed VM");
                    let kind = self.pending.remove(&(*vm, *tag));
                    prop_assert!(
                        kind.is_some(),
                        "response to an unknown or already answered request"
                    );
                    if let (
                        Some(Pending::Invalidate {
                            segid,
                            start,
                            end,
                            targets: sent,
                        }),
                        Ok(body),
                    ) = (&kind, result)
                    {
                        // The response reports the events it posted (0 if answered at
                        // once) and never more revocations than targets.
                        let ResponseBody::Invalidated { targets, revoked } = *body else {
                            return Err(TestCaseError::fail(format!(
                                "INVALIDATE answered with {body:?}"
                            )));
                        };
                        prop_assert_eq!(targets, sent.unwrap_or(0));
                        prop_assert!(revoked <= targets);
                        // Key safety invariant: nothing of the range is mapped any more.
                        for &(imp, w, page) in self.model.keys() {
                            if let Some(att) = self.att_of_page(imp, w, page) {
                                let va = att.vaddr + (page - att.ap) * P;
                                prop_assert!(
                                    !(att.segid == *segid && *start <= va && va < *end),
                                    "page {:#x} of segment still mapped after its invalidation completed", va
                                );
                            }
                        }
                    }
                    if let Some(Pending::Fault {
                        att,
                        window,
                        ap,
                        page,
                        seq,
                    }) = kind
                    {
                        if let Ok(b) = result {
                            let ResponseBody::Mapped(n) = *b else {
                                return Err(TestCaseError::fail(format!(
                                    "FAULT answered with {b:?}"
                                )));
                            };
                            prop_assert!(n >= 1);
                            // The driver maps the pages unless an event for the
                            // attachment came after it sent the FAULT.
                            if self.zaps.get(&att).copied().unwrap_or(0) == seq {
                                for p in page..page + u64::from(n) {
                                    self.ptes.insert((*vm, window, ap + p));
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The model agrees with the domain's reverse map and counters.
    fn check(&self) -> Result<(), TestCaseError> {
        if let Err(e) = self.h.d.check_invariants() {
            return Err(TestCaseError::fail(e));
        }
        let from_domain: BTreeMap<(VmId, Window, u64), (VmId, u64)> = self
            .h
            .d
            .mappings()
            .into_iter()
            .map(|m| {
                (
                    (m.importer, m.window, m.aperture_page),
                    (m.exporter, m.exporter_gpa),
                )
            })
            .collect();
        prop_assert_eq!(&from_domain, &self.model);
        let c = self.h.d.counters();
        prop_assert_eq!(c.mapped_pages, self.model.len() as u64);
        // Key guest-visible invariant: no process maps a slot the device unmapped (it
        // would read the filler, never fault, and miss every later invalidation).
        for pte in &self.ptes {
            prop_assert!(
                self.model.contains_key(pte),
                "importer process maps aperture page {:?}, which the device unmapped",
                pte
            );
        }
        prop_assert_eq!(c.rmap_entries, self.model.len() as u64);
        prop_assert_eq!(c.vms, self.present.len() as u64);
        let deferred_faults = self
            .pending
            .values()
            .filter(|p| matches!(p, Pending::Fault { .. }))
            .count() as u64;
        let deferred_invs = self
            .pending
            .values()
            .filter(|p| matches!(p, Pending::Invalidate { .. }))
            .count() as u64;
        prop_assert_eq!(c.pending_faults, deferred_faults);
        prop_assert_eq!(c.pending_invalidations, deferred_invs);
        prop_assert!(c.pending_resolves <= c.pending_faults);
        prop_assert!(
            !self
                .pending
                .values()
                .any(|p| matches!(p, Pending::Immediate)),
            "immediate request not answered"
        );
        Ok(())
    }

    /// The exporter's current page table: segment vaddr -> gpa. Even segids map
    /// contiguously (coalescable), odd ones scattered.
    /// A read lookup may return a different (not yet copied-on-write) page than a write
    /// lookup; writable mappings must come from write lookups.
    fn pt(&self, segid: i64, vaddr: u64, write: bool) -> u64 {
        let page = vaddr / P;
        let v = self.pt_version.get(&(segid, page)).copied().unwrap_or(0) * 2 + u64::from(!write);
        let n = if segid % 2 == 0 {
            (segid as u64 % 1000) + page + v * 17
        } else {
            (segid as u64 ^ page.wrapping_mul(0x9e37_79b9) ^ v.wrapping_mul(0x85eb_ca6b)) >> 3
        };
        RAM0 + (n % (RAM0_LEN / P)) * P
    }

    fn remove_vm(&mut self, vm: VmId) -> Result<(), TestCaseError> {
        let acts = self
            .h
            .d
            .remove_vm(vm, self.h.now)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        // The actions are applied in the order the device applies them: the leaving VM's
        // windows are revoked by RevokeWindow actions, and any completion of another VM's
        // INVALIDATE that came before them would fail the check in `apply`.
        self.ptes.retain(|&(imp, _, _)| imp != vm);
        prop_assert!(
            acts.iter().all(|a| match a {
                Action::RevokeWindow { .. } => true,
                Action::Respond { vm: v, .. } | Action::PostEvent { vm: v, .. } => *v != vm,
                Action::Map { importer, .. } | Action::Unmap { importer, .. } => *importer != vm,
            }),
            "actions towards the leaving VM: {:?}",
            acts
        );
        self.apply(&acts)?;
        self.present.remove(&vm);
        prop_assert!(
            !self.model.keys().any(|&(imp, _, _)| imp == vm),
            "the leaving VM's windows were not revoked"
        );
        prop_assert!(
            self.model.values().all(|&(exp, _)| exp != vm),
            "importer still maps memory of a removed VM"
        );
        self.pending.retain(|&(v, _), _| v != vm);
        self.resolves.retain(|(v, _, _)| *v != vm);
        self.targets.retain(|&(v, _)| v != vm);
        self.atts.retain(|a| a.vm != vm);
        Ok(())
    }

    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Make {
                vm,
                owner,
                page,
                npages,
                mode,
            } => {
                let (v, o) = (VMS[vm], OWNERS[owner]);
                let vaddr = page * 16 * P;
                let req = Request::Make {
                    owner: o,
                    vaddr,
                    size: npages * P,
                    permit_type: XPMEM_PERMIT_MODE,
                    permit_value: mode,
                    uid: 5,
                    gid: 5,
                };
                if let Some(Ok(ResponseBody::Segid(s))) = self.send(v, req, Pending::Immediate)? {
                    self.segs.push((s, v, o, vaddr, npages, mode));
                }
            }
            Op::Remove { vm, owner, seg } => {
                if let Some((segid, exp, o, ..)) = pick(&self.segs, seg) {
                    let (v, o) = if vm == 0 && owner == 1 {
                        (VMS[(seg / 3) % 3], OWNERS[seg % 2])
                    } else {
                        (exp, o)
                    };
                    self.send(v, Request::Remove { owner: o, segid }, Pending::Immediate)?;
                }
            }
            Op::Get {
                vm,
                owner,
                seg,
                rdwr,
            } => {
                if let Some((segid, exp, _, _, _, mode)) = pick(&self.segs, seg) {
                    let (v, o) = (VMS[vm], OWNERS[owner]);
                    let flags = if rdwr { XPMEM_RDWR } else { XPMEM_RDONLY };
                    // Every process has uid 5 and gid 5, as every segment: the owner bits
                    // apply in the exporter's VM only, the other bits in every other VM
                    // (uids are per-VM namespaces).
                    let bits = if v == exp { mode >> 6 } else { mode } & 0o7;
                    let need = if rdwr { 0o6 } else { 0o4 };
                    let mode_allows = bits & need == need;
                    let req = Request::Get {
                        owner: o,
                        segid,
                        flags,
                        permit_type: XPMEM_PERMIT_MODE,
                        permit_value: 0,
                        uid: 5,
                        gid: 5,
                    };
                    let res = self.send(v, req, Pending::Immediate)?;
                    if self.present.contains(&v) {
                        match res {
                            Some(Ok(ResponseBody::Apid(_))) => prop_assert!(
                                mode_allows,
                                "GET granted against mode {:o} ({:?} -> {:?})",
                                mode,
                                v,
                                exp
                            ),
                            Some(Err(Status::Perm)) => prop_assert!(
                                !mode_allows,
                                "GET refused despite mode {:o} ({:?} -> {:?})",
                                mode,
                                v,
                                exp
                            ),
                            _ => {}
                        }
                    }
                    if let Some(Ok(ResponseBody::Apid(a))) = res {
                        self.permits.push((a, v, o, segid));
                    }
                }
            }
            Op::Release { vm, owner, permit } => {
                if let Some((apid, pv, po, _)) = pick(&self.permits, permit) {
                    let (v, o) = if vm == 0 && owner == 1 {
                        (VMS[(permit / 3) % 3], OWNERS[permit % 2])
                    } else {
                        (pv, po)
                    };
                    if (v, o) == (pv, po) {
                        self.unmap_atts(|a| a.apid == apid && a.vm == pv);
                    }
                    self.send(v, Request::Release { owner: o, apid }, Pending::Immediate)?;
                }
            }
            Op::Attach {
                vm,
                owner,
                permit,
                page,
                npages,
                rdonly,
            } => {
                if let Some((apid, pv, po, segid)) = pick(&self.permits, permit) {
                    let (v, o) = if vm == 0 && owner == 1 {
                        (VMS[(permit / 3) % 3], OWNERS[permit % 2])
                    } else {
                        (pv, po)
                    };
                    let seg_pages = self
                        .segs
                        .iter()
                        .find(|s| s.0 == segid)
                        .map(|s| s.4)
                        .unwrap_or(1);
                    // Mostly in-range requests; npages == 15 sends the raw (often invalid) values.
                    let (page, npages) = if npages == 15 {
                        (page, npages)
                    } else {
                        let off = page % seg_pages;
                        (off, 1 + (npages - 1) % (seg_pages - off))
                    };
                    let offset = page * P;
                    let flags = if rdonly { XPMEM_RDONLY } else { 0 };
                    let req = Request::Attach {
                        owner: o,
                        apid,
                        offset,
                        size: npages * P,
                        flags,
                    };
                    if let Some(Ok(ResponseBody::Attached {
                        attach_id,
                        window,
                        aperture_page,
                    })) = self.send(v, req, Pending::Immediate)?
                    {
                        let seg = self.segs.iter().find(|s| s.0 == segid).cloned();
                        prop_assert!(seg.is_some());
                        let (_, _, _, vaddr, ..) = seg.unwrap();
                        self.atts.push(AttInfo {
                            id: attach_id,
                            vm: v,
                            owner: o,
                            window,
                            ap: aperture_page,
                            npages,
                            segid,
                            vaddr: vaddr + offset,
                            apid,
                        });
                    }
                }
            }
            Op::Detach { vm, owner, att } => {
                if let Some(a) = pick(&self.atts, att) {
                    let (v, o) = if vm == 0 && owner == 1 {
                        (VMS[(att / 3) % 3], OWNERS[att % 2])
                    } else {
                        (a.vm, a.owner)
                    };
                    if (v, o) == (a.vm, a.owner) {
                        self.unmap_atts(|x| x.id == a.id);
                    }
                    let r = self.send(
                        v,
                        Request::Detach {
                            owner: o,
                            attach_id: a.id,
                        },
                        Pending::Immediate,
                    )?;
                    if let Some(Ok(_)) = r {
                        // Slots of a detached attachment must all be unmapped now.
                        prop_assert!(!self.model.keys().any(|&(i, w, p)| i == a.vm
                            && w == a.window
                            && a.ap <= p
                            && p < a.ap + a.npages));
                        self.atts.retain(|x| x.id != a.id);
                    }
                }
            }
            Op::Fault {
                vm,
                owner,
                att,
                page,
                npages,
            } => {
                if let Some(a) = pick(&self.atts, att) {
                    let _ = (vm, owner);
                    let page_index = page % (a.npages + 1);
                    let req = Request::Fault {
                        owner: a.owner,
                        attach_id: a.id,
                        page_index,
                        npages,
                    };
                    let kind = Pending::Fault {
                        att: a.id,
                        window: a.window,
                        ap: a.ap,
                        page: page_index,
                        seq: self.zaps.get(&a.id).copied().unwrap_or(0),
                    };
                    self.send(a.vm, req, kind)?;
                }
            }
            Op::Reply { resolve, kind, vm } => {
                if self.resolves.is_empty() {
                    return Ok(());
                }
                let i = resolve % self.resolves.len();
                let (exp, rid, snap) = self.resolves[i].clone();
                let n = snap.len();
                let result = match kind {
                    0 => Err(Status::Fault),
                    1 => Ok(vec![RAM0 + 3; n]), // unaligned: rejected
                    2 => Ok(vec![RAM1 + RAM1_LEN; n]), // outside RAM: rejected
                    3 => Ok(snap[..1].to_vec()), // scattered
                    4 => Ok(vec![RAM0; n + 1]), // short
                    _ => Ok(snap),
                };
                let from = if kind == 9 { VMS[vm] } else { exp };
                let r = self.send(
                    from,
                    Request::ResolveReply {
                        resolve_id: rid,
                        result,
                    },
                    Pending::Immediate,
                )?;
                if from != exp && self.present.contains(&from) {
                    // Perm while the resolve is pending; NoEnt once it was cancelled.
                    prop_assert!(
                        matches!(r, Some(Err(Status::Perm | Status::NoEnt))),
                        "foreign reply got {:?}",
                        r
                    );
                }
                if from == exp {
                    self.resolves.remove(i);
                }
            }
            Op::Invalidate { seg, page, npages } => {
                if let Some((segid, exp, owner, vaddr, ..)) = pick(&self.segs, seg) {
                    let start = vaddr + page * P;
                    for p in start / P..start / P + npages {
                        *self.pt_version.entry((segid, p)).or_default() += 1;
                    }
                    let req = Request::Invalidate {
                        owner,
                        segid,
                        vaddr: start,
                        len: npages * P,
                    };
                    let before = self.targets.len();
                    let res = self.send(
                        exp,
                        req,
                        Pending::Invalidate {
                            segid,
                            start,
                            end: start + npages * P,
                            targets: None,
                        },
                    )?;
                    let posted = u32::try_from(self.targets.len() - before).unwrap_or(u32::MAX);
                    if res.is_some() {
                        prop_assert_eq!(posted, 0, "INVALIDATE answered at once with targets");
                    }
                    for p in self.pending.values_mut() {
                        if let Pending::Invalidate { targets, .. } = p {
                            targets.get_or_insert(posted);
                        }
                    }
                }
            }
            Op::Ack { target, vm } => {
                if self.targets.is_empty() {
                    return Ok(());
                }
                let i = target % self.targets.len();
                let (imp, id) = self.targets[i];
                // Mostly the right importer; sometimes a foreign one.
                let from = if vm == 0 { VMS[(target / 7) % 3] } else { imp };
                self.send(
                    from,
                    Request::InvalidateAck {
                        invalidation_id: id,
                    },
                    Pending::Immediate,
                )?;
                if from == imp {
                    self.targets.remove(i);
                }
            }
            Op::Tick { ms } => {
                let acts = self.h.tick(self.h.now + ms);
                self.apply(&acts)?;
            }
            Op::ReleaseOwner { vm, owner } => {
                let v = VMS[vm];
                self.unmap_atts(|a| a.vm == v && a.owner == OWNERS[owner]);
                self.send(
                    v,
                    Request::ReleaseOwner {
                        owner: OWNERS[owner],
                    },
                    Pending::Immediate,
                )?;
                let o = OWNERS[owner];
                self.atts.retain(|a| !(a.vm == v && a.owner == o));
            }
            Op::RemoveVm { vm } => {
                if self.present.contains(&VMS[vm]) {
                    self.remove_vm(VMS[vm])?;
                }
            }
            Op::Share {
                exp,
                imp,
                page,
                npages,
                rdonly,
            } => {
                let before = self.segs.len();
                self.step(&Op::Make {
                    vm: exp,
                    owner: 0,
                    page,
                    npages,
                    mode: 0o666,
                })?;
                if self.segs.len() == before {
                    return Ok(());
                }
                let seg = self.segs.len() - 1;
                let before = self.permits.len();
                self.step(&Op::Get {
                    vm: imp,
                    owner: 0,
                    seg,
                    rdwr: !rdonly,
                })?;
                if self.permits.len() == before {
                    return Ok(());
                }
                let permit = self.permits.len() - 1;
                let before = self.atts.len();
                self.step(&Op::Attach {
                    vm: imp,
                    owner: 0,
                    permit,
                    page: 0,
                    npages,
                    rdonly,
                })?;
                if self.atts.len() == before {
                    return Ok(());
                }
                let att = self.atts.len() - 1;
                let before = self.resolves.len();
                self.step(&Op::Fault {
                    vm: imp,
                    owner: 0,
                    att,
                    page: 0,
                    npages: 8,
                })?;
                if self.resolves.len() > before {
                    self.step(&Op::Reply {
                        resolve: self.resolves.len() - 1,
                        kind: 15,
                        vm: exp,
                    })?;
                }
            }
            Op::AddVm { vm } => {
                if !self.present.contains(&VMS[vm]) {
                    self.h
                        .d
                        .add_vm(VMS[vm], spec())
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    self.present.insert(VMS[vm]);
                }
            }
        }
        self.check()
    }

    /// Answers every resolve correctly, acks every invalidation and lets time pass until
    /// nothing is pending: every deferred request must then have been answered.
    fn drain(&mut self) -> Result<(), TestCaseError> {
        for _ in 0..200 {
            if let Some((exp, rid, gpas)) = self.resolves.pop() {
                self.send(
                    exp,
                    Request::ResolveReply {
                        resolve_id: rid,
                        result: Ok(gpas),
                    },
                    Pending::Immediate,
                )?;
            } else if let Some((imp, id)) = self.targets.pop() {
                self.send(
                    imp,
                    Request::InvalidateAck {
                        invalidation_id: id,
                    },
                    Pending::Immediate,
                )?;
            } else {
                let acts = self.h.tick(self.h.now + 1000);
                self.apply(&acts)?;
                if self.resolves.is_empty() && self.targets.is_empty() {
                    break;
                }
            }
            self.check()?;
        }
        prop_assert!(
            self.pending.is_empty(),
            "requests never answered: {:?}",
            self.pending
        );
        let c = self.h.d.counters();
        prop_assert_eq!(
            (
                c.pending_faults,
                c.pending_resolves,
                c.pending_invalidations,
                c.pending_invalidation_targets
            ),
            (0, 0, 0, 0)
        );
        Ok(())
    }
}

proptest! {
    // PROPTEST_CASES overrides the case count for longer soak runs.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512),
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_operations_keep_the_invariants(ops in proptest::collection::vec(op(), 1..200), drain in any::<bool>()) {
        let mut sim = Sim::new();
        for op in &ops {
            sim.step(op)?;
        }
        if drain {
            sim.drain()?;
        }
        if std::env::var("MODEL_STATS").is_ok() {
            let c = sim.h.d.counters();
            eprintln!("STATS maps={} unmaps={} inv_started={} inv_done={} forced={} stale={} rejected={} resolves={} events={}",
                c.map_actions, c.unmap_actions, c.invalidations_started, c.invalidations_completed,
                c.invalidations_forced, c.resolves_stale, c.resolves_rejected, c.resolves_issued, c.events_posted);
            eprintln!("STATS shared={} timed_out={}", c.resolves_shared, c.resolves_timed_out);
        }
        for vm in VMS {
            if sim.present.contains(&vm) {
                sim.remove_vm(vm)?;
                sim.check()?;
            }
        }
        let c = sim.h.d.counters();
        prop_assert!(c.nothing_held(), "leak after removing every VM: {:?}", c);
        prop_assert!(sim.model.is_empty());
        prop_assert!(sim.h.d.mappings().is_empty());
    }
}
