//! Test harness shared by the integration tests.
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use xpmem_domain::*;

pub const RAM0: u64 = 0;
pub const RAM0_LEN: u64 = 64 << 20;
pub const RAM1: u64 = 4 << 30;
pub const RAM1_LEN: u64 = 16 << 20;
pub const RW_PAGES: u64 = 256;
pub const RO_PAGES: u64 = 64;
pub const A: VmId = VmId(1);
pub const B: VmId = VmId(2);
pub const C: VmId = VmId(3);
pub const OWNER: OwnerToken = OwnerToken(0x1000);

pub fn spec() -> VmSpec {
    VmSpec {
        ram: vec![
            GpaRange {
                start: RAM0,
                len: RAM0_LEN,
            },
            GpaRange {
                start: RAM1,
                len: RAM1_LEN,
            },
        ],
        rw_aperture_pages: RW_PAGES,
        ro_aperture_pages: RO_PAGES,
        names: true,
    }
}

pub struct H {
    pub d: Domain,
    pub now: u64,
    next_tag: u64,
}

impl H {
    pub fn new() -> H {
        Self::with_config(DomainConfig {
            seed: 7,
            invalidate_deadline_ms: 100,
            max_fault_pages: 16,
            ..DomainConfig::default()
        })
    }

    pub fn with_config(cfg: DomainConfig) -> H {
        let mut d = Domain::new(cfg);
        for vm in [A, B, C] {
            d.add_vm(vm, spec()).unwrap();
        }
        H {
            d,
            now: 0,
            next_tag: 1,
        }
    }

    /// Sends a request; returns its tag and every action.
    pub fn send(&mut self, vm: VmId, req: Request) -> (RequestTag, Vec<Action>) {
        let tag = RequestTag(self.next_tag);
        self.next_tag += 1;
        let acts = self.d.handle(vm, tag, req, self.now);
        self.d.check_invariants().unwrap();
        (tag, acts)
    }

    /// Sends a request that must be answered at once; returns the result.
    pub fn call(&mut self, vm: VmId, req: Request) -> Result<ResponseBody, Status> {
        let (tag, acts) = self.send(vm, req);
        response(&acts, vm, tag).expect("request was not answered immediately")
    }

    pub fn make(&mut self, vm: VmId, vaddr: u64, size: u64, mode: u64) -> i64 {
        match self.call(
            vm,
            Request::Make {
                owner: OWNER,
                vaddr,
                size,
                permit_type: XPMEM_PERMIT_MODE,
                permit_value: mode,
                uid: 1000,
                gid: 1000,
            },
        ) {
            Ok(ResponseBody::Segid(s)) => s,
            other => panic!("make failed: {other:?}"),
        }
    }

    pub fn get(&mut self, vm: VmId, segid: i64, flags: u32) -> Result<ResponseBody, Status> {
        self.call(
            vm,
            Request::Get {
                owner: OWNER,
                segid,
                flags,
                permit_type: XPMEM_PERMIT_MODE,
                permit_value: 0,
                uid: 1000,
                gid: 1000,
            },
        )
    }

    pub fn apid(&mut self, vm: VmId, segid: i64, flags: u32) -> i64 {
        match self.get(vm, segid, flags) {
            Ok(ResponseBody::Apid(a)) => a,
            other => panic!("get failed: {other:?}"),
        }
    }

    pub fn attach(
        &mut self,
        vm: VmId,
        apid: i64,
        offset: u64,
        size: u64,
        flags: u32,
    ) -> Result<ResponseBody, Status> {
        self.call(
            vm,
            Request::Attach {
                owner: OWNER,
                apid,
                offset,
                size,
                flags,
            },
        )
    }

    /// Attaches and returns (attach_id, window, aperture_page).
    pub fn att(
        &mut self,
        vm: VmId,
        apid: i64,
        offset: u64,
        size: u64,
        flags: u32,
    ) -> (u64, Window, u64) {
        match self.attach(vm, apid, offset, size, flags) {
            Ok(ResponseBody::Attached {
                attach_id,
                window,
                aperture_page,
            }) => (attach_id, window, aperture_page),
            other => panic!("attach failed: {other:?}"),
        }
    }

    pub fn fault(
        &mut self,
        vm: VmId,
        attach_id: u64,
        page_index: u64,
        npages: u32,
    ) -> (RequestTag, Vec<Action>) {
        self.send(
            vm,
            Request::Fault {
                owner: OWNER,
                attach_id,
                page_index,
                npages,
            },
        )
    }

    pub fn reply(
        &mut self,
        vm: VmId,
        resolve_id: u64,
        result: Result<Vec<u64>, Status>,
    ) -> (RequestTag, Vec<Action>) {
        self.send(vm, Request::ResolveReply { resolve_id, result })
    }

    pub fn invalidate(
        &mut self,
        vm: VmId,
        segid: i64,
        vaddr: u64,
        len: u64,
    ) -> (RequestTag, Vec<Action>) {
        self.send(
            vm,
            Request::Invalidate {
                owner: OWNER,
                segid,
                vaddr,
                len,
            },
        )
    }

    pub fn ack(&mut self, vm: VmId, invalidation_id: u64) -> (RequestTag, Vec<Action>) {
        self.send(vm, Request::InvalidateAck { invalidation_id })
    }

    pub fn tick(&mut self, now: u64) -> Vec<Action> {
        self.now = now;
        let acts = self.d.tick(now);
        self.d.check_invariants().unwrap();
        acts
    }

    pub fn remove_vm(&mut self, vm: VmId) -> Vec<Action> {
        let acts = self.d.remove_vm(vm, self.now).unwrap();
        self.d.check_invariants().unwrap();
        acts
    }

    /// Full fault round trip with gpas computed by `gpa_of(page)`; returns all actions of
    /// the reply.
    pub fn fault_resolved(
        &mut self,
        importer: VmId,
        exporter: VmId,
        attach_id: u64,
        page_index: u64,
        npages: u32,
        gpa_of: impl Fn(u64) -> u64,
    ) -> Vec<Action> {
        let (_tag, acts) = self.fault(importer, attach_id, page_index, npages);
        let (rid, n) = resolve_of(&acts, exporter).expect("no RESOLVE posted");
        let gpas = (0..u64::from(n)).map(gpa_of).collect();
        self.reply(exporter, rid, Ok(gpas)).1
    }
}

pub fn response(
    acts: &[Action],
    vm: VmId,
    tag: RequestTag,
) -> Option<Result<ResponseBody, Status>> {
    acts.iter().find_map(|a| match a {
        Action::Respond {
            vm: v,
            tag: t,
            result,
        } if *v == vm && *t == tag => Some(result.clone()),
        _ => None,
    })
}

/// The (resolve_id, npages) of the RESOLVE event posted to `vm`, if any.
pub fn resolve_of(acts: &[Action], vm: VmId) -> Option<(u64, u32)> {
    acts.iter().find_map(|a| match a {
        Action::PostEvent {
            vm: v,
            event: Event::Resolve {
                resolve_id, npages, ..
            },
        } if *v == vm => Some((*resolve_id, *npages)),
        _ => None,
    })
}

pub fn events(acts: &[Action], vm: VmId) -> Vec<Event> {
    acts.iter()
        .filter_map(|a| match a {
            Action::PostEvent { vm: v, event } if *v == vm => Some(event.clone()),
            _ => None,
        })
        .collect()
}

pub fn maps(acts: &[Action]) -> Vec<Action> {
    acts.iter()
        .filter(|a| matches!(a, Action::Map { .. }))
        .cloned()
        .collect()
}

pub fn unmaps(acts: &[Action]) -> Vec<Action> {
    acts.iter()
        .filter(|a| matches!(a, Action::Unmap { .. }))
        .cloned()
        .collect()
}

pub fn invalidation_ids(acts: &[Action], vm: VmId) -> Vec<u64> {
    events(acts, vm)
        .into_iter()
        .filter_map(|e| match e {
            Event::Invalidate {
                invalidation_id, ..
            } => Some(invalidation_id),
            _ => None,
        })
        .collect()
}
