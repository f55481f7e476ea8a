//! Unit tests of every request, its errors, and the event flows.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use common::*;
use xpmem_domain::*;

const P: u64 = PAGE_SIZE;

fn make_req(vaddr: u64, size: u64, permit_type: u32, permit_value: u64) -> Request {
    Request::Make {
        owner: OWNER,
        vaddr,
        size,
        permit_type,
        permit_value,
        uid: 1000,
        gid: 1000,
    }
}

#[test]
fn add_vm_validates() {
    let mut d = Domain::new(DomainConfig::default());
    d.add_vm(A, spec()).unwrap();
    assert_eq!(d.add_vm(A, spec()), Err(DomainError::DuplicateVm(A)));
    assert_eq!(
        d.add_vm(VmId(MAX_VM_ID), spec()),
        Err(DomainError::VmIdTooLarge(VmId(MAX_VM_ID)))
    );
    let mut bad = spec();
    bad.ram.push(GpaRange {
        start: 4096,
        len: 4096,
    }); // overlaps RAM0
    assert!(matches!(
        d.add_vm(B, bad),
        Err(DomainError::BadRamRange { .. })
    ));
    let mut bad = spec();
    bad.ram[0].len = 100;
    assert!(matches!(
        d.add_vm(B, bad),
        Err(DomainError::BadRamRange { .. })
    ));
    let mut bad = spec();
    bad.ram[1].start = u64::MAX - 4095;
    assert!(matches!(
        d.add_vm(B, bad),
        Err(DomainError::BadRamRange { .. })
    ));
    assert_eq!(d.remove_vm(B, 0), Err(DomainError::UnknownVm(B)));
    // A VM that held nothing: only its own windows are revoked.
    assert_eq!(
        d.remove_vm(A, 0).unwrap(),
        vec![
            Action::RevokeWindow {
                vm: A,
                window: Window::Rw
            },
            Action::RevokeWindow {
                vm: A,
                window: Window::Ro
            }
        ]
    );
    assert!(d.counters().nothing_held());
}

#[test]
fn request_from_unknown_vm_is_noent() {
    let mut h = H::new();
    assert_eq!(
        h.call(VmId(99), make_req(0, P, XPMEM_PERMIT_MODE, 0o600)),
        Err(Status::NoEnt)
    );
}

#[test]
fn make_validates_and_ids_are_positive_and_decodable() {
    let mut h = H::new();
    let limit = h.d.config().user_addr_limit;
    for (req, want) in [
        (make_req(1, P, XPMEM_PERMIT_MODE, 0o600), Status::Invalid),
        (make_req(0, 0, XPMEM_PERMIT_MODE, 0o600), Status::Invalid),
        (make_req(0, 100, XPMEM_PERMIT_MODE, 0o600), Status::Invalid),
        (make_req(0, P, 2, 0o600), Status::Invalid),
        (make_req(0, P, XPMEM_PERMIT_MODE, 0o1000), Status::Invalid),
        (
            make_req(limit - P, 2 * P, XPMEM_PERMIT_MODE, 0o600),
            Status::Invalid,
        ),
        (
            make_req(limit, P, XPMEM_PERMIT_MODE, 0o600),
            Status::Invalid,
        ),
        (
            make_req(P, u64::MAX - P, XPMEM_PERMIT_MODE, 0o600),
            Status::Invalid,
        ),
    ] {
        assert_eq!(h.call(A, req.clone()), Err(want), "{req:?}");
    }
    let zero_owner = Request::Make {
        owner: OwnerToken(0),
        vaddr: 0,
        size: P,
        permit_type: XPMEM_PERMIT_MODE,
        permit_value: 0o600,
        uid: 0,
        gid: 0,
    };
    assert_eq!(h.call(A, zero_owner), Err(Status::Invalid));
    // Whole address space: size XPMEM_MAXADDR_SIZE from 0.
    let s1 = h.make(A, 0, XPMEM_MAXADDR_SIZE, 0o666);
    let s2 = h.make(A, 0, XPMEM_MAXADDR_SIZE, 0o666);
    let s3 = h.make(B, 0x10000, 4 * P, 0o666);
    for s in [s1, s2, s3] {
        assert!(s > 0);
    }
    assert_ne!(s1, s2);
    assert_ne!(s2, s1 + 1);
    assert_eq!(h.d.segid_vm(s1), Some(A));
    assert_eq!(h.d.segid_vm(s3), Some(B));
    // The whole address space can be attached at its end.
    let apid = h.apid(B, s1, XPMEM_RDWR);
    let (_, w, _) = h.att(B, apid, limit - P, P, 0);
    assert_eq!(w, Window::Rw);
    assert_eq!(h.attach(B, apid, limit, P, 0), Err(Status::Invalid));
    // Another domain with another seed issues different ids.
    let mut other = H::with_config(DomainConfig {
        seed: 8,
        ..DomainConfig::default()
    });
    assert_ne!(other.make(A, 0, XPMEM_MAXADDR_SIZE, 0o666), s1);
    assert_eq!(h.d.counters().segments, 3);
}

#[test]
fn remove_only_by_owner() {
    let mut h = H::new();
    let s = h.make(A, 0x10000, 4 * P, 0o666);
    let other_owner = Request::Remove {
        owner: OwnerToken(5),
        segid: s,
    };
    assert_eq!(h.call(A, other_owner), Err(Status::Perm));
    let rm = Request::Remove {
        owner: OWNER,
        segid: s,
    };
    assert_eq!(h.call(B, rm.clone()), Err(Status::Perm));
    assert_eq!(
        h.call(
            A,
            Request::Remove {
                owner: OWNER,
                segid: 12345
            }
        ),
        Err(Status::NoEnt)
    );
    assert_eq!(h.call(A, rm.clone()), Ok(ResponseBody::Empty));
    assert_eq!(h.call(A, rm), Err(Status::NoEnt));
    assert_eq!(h.get(B, s, XPMEM_RDONLY), Err(Status::NoEnt));
}

fn get_as(h: &mut H, vm: VmId, seg: i64, uid: u32, gid: u32, flags: u32) -> Result<(), Status> {
    h.call(
        vm,
        Request::Get {
            owner: OWNER,
            segid: seg,
            flags,
            permit_type: XPMEM_PERMIT_MODE,
            permit_value: 0,
            uid,
            gid,
        },
    )
    .map(|_| ())
}

#[test]
fn get_checks_mode_bits_ipc_style_in_the_exporters_vm() {
    let mut h = H::new();
    // Segment owner is uid 1000, gid 1000 in VM A.
    let s600 = h.make(A, 0, 4 * P, 0o600);
    assert_eq!(get_as(&mut h, A, s600, 1000, 5, XPMEM_RDWR), Ok(()));
    assert_eq!(
        get_as(&mut h, A, s600, 7, 1000, XPMEM_RDONLY),
        Err(Status::Perm)
    );
    let s = h.make(A, 0, 4 * P, 0o640);
    assert_eq!(get_as(&mut h, A, s, 1000, 5, XPMEM_RDWR), Ok(()));
    // Another uid of the same group in the same VM gets the group bits.
    assert_eq!(get_as(&mut h, A, s, 7, 1000, XPMEM_RDONLY), Ok(()));
    assert_eq!(get_as(&mut h, A, s, 7, 1000, XPMEM_RDWR), Err(Status::Perm));
    assert_eq!(get_as(&mut h, A, s, 7, 7, XPMEM_RDONLY), Err(Status::Perm));
    // No root override.
    assert_eq!(get_as(&mut h, A, s, 0, 0, XPMEM_RDONLY), Err(Status::Perm));
    // The owner's bits apply to the owner even if "other" would allow more.
    let s2 = h.make(A, 0, 4 * P, 0o066);
    assert_eq!(
        get_as(&mut h, A, s2, 1000, 1000, XPMEM_RDONLY),
        Err(Status::Perm)
    );
    assert_eq!(get_as(&mut h, A, s2, 9, 9, XPMEM_RDWR), Ok(()));
    // Write-only is not enough for RDONLY.
    let s3 = h.make(A, 0, 4 * P, 0o200);
    assert_eq!(
        get_as(&mut h, A, s3, 1000, 1000, XPMEM_RDONLY),
        Err(Status::Perm)
    );
    // Bad flags and permit type.
    assert_eq!(get_as(&mut h, A, s, 1000, 1000, 0), Err(Status::Invalid));
    assert_eq!(get_as(&mut h, A, s, 1000, 1000, 3), Err(Status::Invalid));
    let bad_type = Request::Get {
        owner: OWNER,
        segid: s,
        flags: XPMEM_RDONLY,
        permit_type: 0,
        permit_value: 0,
        uid: 1000,
        gid: 1000,
    };
    assert_eq!(h.call(A, bad_type), Err(Status::Invalid));
    assert_eq!(
        get_as(&mut h, A, 777, 1000, 1000, XPMEM_RDONLY),
        Err(Status::NoEnt)
    );
}

#[test]
fn get_from_another_vm_gets_only_the_other_bits() {
    let mut h = H::new();
    // uids and gids are per-VM namespaces: uid 1000 in B is not uid 1000 in A.
    let s600 = h.make(A, 0, 4 * P, 0o600);
    for (uid, gid) in [(1000, 1000), (1000, 5), (5, 1000), (0, 0)] {
        assert_eq!(
            get_as(&mut h, B, s600, uid, gid, XPMEM_RDONLY),
            Err(Status::Perm)
        );
        assert_eq!(
            get_as(&mut h, C, s600, uid, gid, XPMEM_RDWR),
            Err(Status::Perm)
        );
    }
    let s640 = h.make(A, 0, 4 * P, 0o640);
    assert_eq!(
        get_as(&mut h, B, s640, 7, 1000, XPMEM_RDONLY),
        Err(Status::Perm)
    );
    let s604 = h.make(A, 0, 4 * P, 0o604);
    assert_eq!(get_as(&mut h, B, s604, 1000, 1000, XPMEM_RDONLY), Ok(()));
    assert_eq!(
        get_as(&mut h, B, s604, 1000, 1000, XPMEM_RDWR),
        Err(Status::Perm)
    );
    assert_eq!(get_as(&mut h, B, s604, 7, 7, XPMEM_RDONLY), Ok(()));
    // The others' bits apply even where the owner bits would refuse.
    let s066 = h.make(A, 0, 4 * P, 0o066);
    assert_eq!(get_as(&mut h, B, s066, 1000, 1000, XPMEM_RDWR), Ok(()));
    for mode in [0o606, 0o666] {
        let s = h.make(A, 0, 4 * P, mode);
        assert_eq!(get_as(&mut h, B, s, 1000, 1000, XPMEM_RDWR), Ok(()));
        assert_eq!(get_as(&mut h, C, s, 0, 0, XPMEM_RDONLY), Ok(()));
    }
}

#[test]
fn get_checks_domain_policy() {
    let mut pairs = std::collections::BTreeMap::new();
    pairs.insert((B, A), true); // B may import from A read-write,
    pairs.insert((C, B), false); // C from B read-only, nobody else from anybody.
    let mut h = H::with_config(DomainConfig {
        policy: ImportPolicy::Allow(pairs),
        ..DomainConfig::default()
    });
    let sa = h.make(A, 0, 4 * P, 0o666);
    let sb = h.make(B, 0, 4 * P, 0o666);
    assert!(h.get(B, sa, XPMEM_RDWR).is_ok());
    assert_eq!(h.get(C, sa, XPMEM_RDWR), Err(Status::Perm));
    assert_eq!(h.get(C, sa, XPMEM_RDONLY), Err(Status::Perm));
    assert_eq!(h.get(A, sb, XPMEM_RDWR), Err(Status::Perm));
    assert!(h.get(C, sb, XPMEM_RDONLY).is_ok());
    assert_eq!(h.get(C, sb, XPMEM_RDWR), Err(Status::Perm));
    // A VM may always import from itself.
    assert!(h.get(A, sa, XPMEM_RDWR).is_ok());
}

#[test]
fn release_only_by_owner_and_detaches() {
    let mut h = H::new();
    let s = h.make(A, 0, 8 * P, 0o666);
    let apid = h.apid(B, s, XPMEM_RDWR);
    let (att, _, ap) = h.att(B, apid, 0, 8 * P, 0);
    h.fault_resolved(B, A, att, 0, 2, |i| RAM0 + (10 + i) * P);
    assert_eq!(h.d.counters().mapped_pages, 2);
    assert_eq!(
        h.call(A, Request::Release { owner: OWNER, apid }),
        Err(Status::Perm)
    );
    assert_eq!(
        h.call(
            B,
            Request::Release {
                owner: OwnerToken(9),
                apid
            }
        ),
        Err(Status::Perm)
    );
    let (tag, acts) = h.send(B, Request::Release { owner: OWNER, apid });
    assert_eq!(response(&acts, B, tag), Some(Ok(ResponseBody::Empty)));
    assert_eq!(
        unmaps(&acts),
        vec![Action::Unmap {
            importer: B,
            window: Window::Rw,
            aperture_page: ap,
            npages: 2
        }]
    );
    let c = h.d.counters();
    assert_eq!(
        (
            c.permits,
            c.attachments,
            c.mapped_pages,
            c.aperture_pages_reserved
        ),
        (0, 0, 0, 0)
    );
    assert_eq!(
        h.call(B, Request::Release { owner: OWNER, apid }),
        Err(Status::NoEnt)
    );
}

#[test]
fn attach_validates_and_allocates() {
    let mut h = H::new();
    let s = h.make(A, 0x100000, 64 * P, 0o666);
    let ro = h.apid(B, s, XPMEM_RDONLY);
    let rw = h.apid(B, s, XPMEM_RDWR);
    assert_eq!(h.attach(B, ro, 0, P, 0), Err(Status::Perm));
    assert_eq!(h.attach(C, rw, 0, P, 0), Err(Status::Perm));
    assert_eq!(h.attach(B, 4242, 0, P, 0), Err(Status::NoEnt));
    assert_eq!(h.attach(B, rw, 1, P, 0), Err(Status::Invalid));
    assert_eq!(h.attach(B, rw, 0, 0, 0), Err(Status::Invalid));
    assert_eq!(h.attach(B, rw, 0, P + 1, 0), Err(Status::Invalid));
    assert_eq!(h.attach(B, rw, 0, 65 * P, 0), Err(Status::Invalid));
    assert_eq!(
        h.attach(B, rw, u64::MAX - P + 1, P, 0),
        Err(Status::Invalid)
    );
    assert_eq!(h.attach(B, rw, 0, P, 0x4), Err(Status::Invalid));
    let (_, w, ap0) = h.att(B, ro, 0, 4 * P, XPMEM_RDONLY);
    assert_eq!((w, ap0), (Window::Ro, 0));
    let (_, w, _) = h.att(B, rw, 0, 4 * P, XPMEM_RDONLY);
    assert_eq!(w, Window::Ro);
    let (a1, w, ap1) = h.att(B, rw, 0, 64 * P, 0);
    assert_eq!((w, ap1), (Window::Rw, 0));
    // Fill the rw window (256 pages): 64 + 64 + 64 + 64.
    let (a2, _, ap2) = h.att(B, rw, 0, 64 * P, 0);
    let (_, _, ap3) = h.att(B, rw, 0, 64 * P, 0);
    let (_, _, _) = h.att(B, rw, 0, 64 * P, 0);
    assert_eq!((ap2, ap3), (64, 128));
    assert_eq!(h.attach(B, rw, 0, P, 0), Err(Status::NoSpc));
    // Freeing two neighbours coalesces them into room for 128 pages.
    for a in [a1, a2] {
        assert_eq!(
            h.call(
                B,
                Request::Detach {
                    owner: OWNER,
                    attach_id: a
                }
            ),
            Ok(ResponseBody::Empty)
        );
    }
    assert_eq!(h.att(B, rw, 0, 32 * P, 0).2, 0);
    let s_big = h.make(A, 0, 1024 * P, 0o666);
    let big = h.apid(B, s_big, XPMEM_RDWR);
    assert_eq!(h.att(B, big, 0, 96 * P, 0).2, 32);
    assert_eq!(
        h.d.counters().aperture_pages_reserved,
        4 + 4 + 64 + 64 + 32 + 96
    );
}

#[test]
fn detach_only_by_owner() {
    let mut h = H::new();
    let s = h.make(A, 0, 8 * P, 0o666);
    let apid = h.apid(B, s, XPMEM_RDWR);
    let (att, _, _) = h.att(B, apid, 0, 8 * P, 0);
    assert_eq!(
        h.call(
            C,
            Request::Detach {
                owner: OWNER,
                attach_id: att
            }
        ),
        Err(Status::Perm)
    );
    assert_eq!(
        h.call(
            B,
            Request::Detach {
                owner: OwnerToken(3),
                attach_id: att
            }
        ),
        Err(Status::Perm)
    );
    assert_eq!(
        h.call(
            B,
            Request::Detach {
                owner: OWNER,
                attach_id: att + 1
            }
        ),
        Err(Status::NoEnt)
    );
    assert_eq!(
        h.call(
            B,
            Request::Detach {
                owner: OWNER,
                attach_id: att
            }
        ),
        Ok(ResponseBody::Empty)
    );
    assert_eq!(
        h.call(
            B,
            Request::Detach {
                owner: OWNER,
                attach_id: att
            }
        ),
        Err(Status::NoEnt)
    );
}

#[test]
fn fault_resolves_and_maps_coalesced() {
    let mut h = H::new();
    let s = h.make(A, 0x200000, 32 * P, 0o666);
    let apid = h.apid(B, s, XPMEM_RDWR);
    let (att, _, ap) = h.att(B, apid, 4 * P, 16 * P, 0);
    let (tag, acts) = h.fault(B, att, 2, 8);
    assert_eq!(response(&acts, B, tag), None, "FAULT must be deferred");
    assert_eq!(
        events(&acts, A),
        vec![Event::Resolve {
            resolve_id: resolve_of(&acts, A).unwrap().0,
            segid: s,
            vaddr: 0x200000 + 6 * P,
            npages: 8,
            write: true,
        }]
    );
    let (rid, _) = resolve_of(&acts, A).unwrap();
    assert_eq!(h.d.counters().pending_resolves, 1);
    // Contiguous exporter pages: one Map.
    let gpas: Vec<u64> = (0..8).map(|i| RAM1 + (100 + i) * P).collect();
    let (rtag, acts) = h.reply(A, rid, Ok(gpas));
    assert_eq!(response(&acts, A, rtag), Some(Ok(ResponseBody::Empty)));
    assert_eq!(
        maps(&acts),
        vec![Action::Map {
            importer: B,
            window: Window::Rw,
            aperture_page: ap + 2,
            exporter: A,
            exporter_gpa: RAM1 + 100 * P,
            npages: 8,
            writable: true,
        }]
    );
    assert_eq!(response(&acts, B, tag), Some(Ok(ResponseBody::Mapped(8))));
    let c = h.d.counters();
    assert_eq!(
        (
            c.mapped_pages,
            c.rmap_entries,
            c.pending_faults,
            c.pending_resolves
        ),
        (8, 8, 0, 0)
    );
    let m = h.d.rmap_lookup(A, RAM1 + 103 * P);
    assert_eq!(m.len(), 1);
    assert_eq!(
        (m[0].importer, m[0].aperture_page, m[0].attach_id),
        (B, ap + 5, att)
    );
    // Faulting a mapped page answers at once with the mapped run.
    let (tag, acts) = h.fault(B, att, 4, 16);
    assert_eq!(response(&acts, B, tag), Some(Ok(ResponseBody::Mapped(6))));
    assert!(resolve_of(&acts, A).is_none());
    // Scattered pages: one Map per page; already mapped pages are not re-resolved, so the
    // window stops before page 2.
    let (tag, acts) = h.fault(B, att, 0, 16);
    let (rid, n) = resolve_of(&acts, A).unwrap();
    assert_eq!(n, 2);
    let (_, acts) = h.reply(A, rid, Ok(vec![RAM0 + 9 * P, RAM0 + 3 * P]));
    assert_eq!(maps(&acts).len(), 2);
    assert_eq!(response(&acts, B, tag), Some(Ok(ResponseBody::Mapped(10))));
}

#[test]
fn fault_window_is_clamped() {
    let mut h = H::new(); // max_fault_pages = 16
    let s = h.make(A, 0, 64 * P, 0o666);
    let apid = h.apid(B, s, XPMEM_RDONLY);
    let (att, w, _) = h.att(B, apid, 0, 40 * P, XPMEM_RDONLY);
    let (_, acts) = h.fault(B, att, 0, 1000);
    assert_eq!(resolve_of(&acts, A).unwrap().1, 16);
    let (_, acts) = h.fault(B, att, 36, 16);
    let ev = events(&acts, A);
    assert!(matches!(
        ev[0],
        Event::Resolve {
            npages: 4,
            write: false,
            ..
        }
    ));
    let (rid, _) = resolve_of(&acts, A).unwrap();
    let (_, acts) = h.reply(A, rid, Ok(vec![P; 1]));
    assert!(matches!(
        maps(&acts)[0],
        Action::Map {
            window: Window::Ro,
            writable: false,
            npages: 1,
            ..
        }
    ));
    assert_eq!(w, Window::Ro);
    // Errors.
    let (tag, acts) = h.fault(B, att, 40, 1);
    assert_eq!(response(&acts, B, tag), Some(Err(Status::Invalid)));
    let (tag, acts) = h.fault(B, att, 0, 0);
    assert_eq!(response(&acts, B, tag), Some(Err(Status::Invalid)));
    let (tag, acts) = h.fault(C, att, 0, 1);
    assert_eq!(response(&acts, C, tag), Some(Err(Status::Perm)));
    let (tag, acts) = h.fault(B, 31337, 0, 1);
    assert_eq!(response(&acts, B, tag), Some(Err(Status::NoEnt)));
}

#[test]
fn hostile_resolve_replies_are_rejected() {
    let mut h = H::new();
    let s = h.make(A, 0, 64 * P, 0o666);
    let apid = h.apid(B, s, XPMEM_RDWR);
    let (att, _, _) = h.att(B, apid, 0, 64 * P, 0);
    let bad_lists: Vec<Vec<u64>> = vec![
        vec![RAM0 + 1],        // unaligned
        vec![RAM0 + RAM0_LEN], // just past RAM0
        vec![RAM1 - P],        // hole between ranges
        vec![RAM1 + RAM1_LEN - P, !(P - 1)],
        vec![],     // empty
        vec![0; 5], // more than asked (4)
    ];
    for gpas in bad_lists {
        let (tag, acts) = h.fault(B, att, 0, 4);
        let (rid, _) = resolve_of(&acts, A).unwrap();
        // Another VM cannot answer for the exporter; the resolve stays pending.
        let (t2, a2) = h.reply(C, rid, Ok(vec![RAM0]));
        assert_eq!(response(&a2, C, t2), Some(Err(Status::Perm)));
        assert!(maps(&a2).is_empty());
        let (rtag, acts) = h.reply(A, rid, Ok(gpas.clone()));
        assert_eq!(
            response(&acts, A, rtag),
            Some(Err(Status::Invalid)),
            "{gpas:?}"
        );
        assert!(maps(&acts).is_empty());
        assert_eq!(response(&acts, B, tag), Some(Err(Status::Fault)));
        // Replaying the id afterwards is unknown.
        let (rtag, acts) = h.reply(A, rid, Ok(vec![RAM0]));
        assert_eq!(response(&acts, A, rtag), Some(Err(Status::NoEnt)));
    }
    // An exporter-reported failure fails the FAULT.
    let (tag, acts) = h.fault(B, att, 0, 4);
    let (rid, _) = resolve_of(&acts, A).unwrap();
    let (rtag, acts) = h.reply(A, rid, Err(Status::Fault));
    assert_eq!(response(&acts, A, rtag), Some(Ok(ResponseBody::Empty)));
    assert_eq!(response(&acts, B, tag), Some(Err(Status::Fault)));
    // A short reply maps what was given.
    let (tag, acts) = h.fault(B, att, 0, 4);
    let (rid, _) = resolve_of(&acts, A).unwrap();
    let (_, acts) = h.reply(A, rid, Ok(vec![RAM0 + RAM0_LEN - P]));
    assert_eq!(response(&acts, B, tag), Some(Ok(ResponseBody::Mapped(1))));
    let c = h.d.counters();
    assert_eq!(
        (
            c.pending_faults,
            c.pending_resolves,
            c.resolves_rejected,
            c.mapped_pages
        ),
        (0, 0, 6, 1)
    );
}

#[test]
fn invalidate_without_importers_completes_at_once() {
    let mut h = H::new();
    let s = h.make(A, 0x10000, 16 * P, 0o666);
    let apid = h.apid(B, s, XPMEM_RDWR);
    let (_att, _, _) = h.att(B, apid, 0, 16 * P, 0); // attached but nothing mapped
    let none = Some(Ok(ResponseBody::Invalidated {
        targets: 0,
        revoked: 0,
    }));
    let (tag, acts) = h.invalidate(A, s, 0x10000, 4 * P);
    assert_eq!(response(&acts, A, tag), none);
    assert!(events(&acts, B).is_empty());
    // Outside the segment: nothing to do.
    let (tag, acts) = h.invalidate(A, s, 0x100000, 4 * P);
    assert_eq!(response(&acts, A, tag), none);
    // Errors.
    let (tag, acts) = h.invalidate(A, s, 0x10001, P);
    assert_eq!(response(&acts, A, tag), Some(Err(Status::Invalid)));
    let (tag, acts) = h.invalidate(A, s, 0x10000, 0);
    assert_eq!(response(&acts, A, tag), Some(Err(Status::Invalid)));
    let (tag, acts) = h.invalidate(A, s, !(P - 1), 2 * P);
    assert_eq!(response(&acts, A, tag), Some(Err(Status::Invalid)));
    let (tag, acts) = h.invalidate(B, s, 0x10000, P);
    assert_eq!(response(&acts, B, tag), Some(Err(Status::Perm)));
    let (tag, acts) = h.invalidate(A, 99, 0x10000, P);
    assert_eq!(response(&acts, A, tag), Some(Err(Status::NoEnt)));
    let c = h.d.counters();
    assert_eq!((c.invalidations_started, c.invalidations_completed), (2, 2));
}

#[test]
fn invalidate_fans_out_and_completes_after_all_acks() {
    let mut h = H::new();
    let base = 0x40000;
    let s = h.make(A, base, 16 * P, 0o666);
    let mut atts = Vec::new();
    for vm in [B, C] {
        let apid = h.apid(vm, s, XPMEM_RDWR);
        let (att, _, ap) = h.att(vm, apid, 0, 16 * P, 0);
        h.fault_resolved(vm, A, att, 0, 8, |i| RAM0 + (i + 1) * P);
        atts.push((vm, att, ap));
    }
    // Same exporter page in two importers: two rmap entries.
    assert_eq!(h.d.rmap_lookup(A, RAM0 + 2 * P).len(), 2);
    let (tag, acts) = h.invalidate(A, s, base + 2 * P, 4 * P);
    assert_eq!(response(&acts, A, tag), None);
    let mut ids = Vec::new();
    for &(vm, att, _) in &atts {
        let ev = events(&acts, vm);
        assert_eq!(ev.len(), 1);
        match ev[0] {
            Event::Invalidate {
                invalidation_id,
                attach_id,
                page_index,
                npages,
            } => {
                assert_eq!((attach_id, page_index, npages), (att, 2, 4));
                ids.push(invalidation_id);
            }
            ref e => panic!("unexpected {e:?}"),
        }
    }
    // Foreign ack (C acks B's id) is ignored.
    let (t, a) = h.ack(C, ids[0]);
    assert_eq!(response(&a, C, t), Some(Err(Status::NoEnt)));
    assert!(unmaps(&a).is_empty());
    let (_, a) = h.ack(B, ids[0]);
    assert_eq!(
        unmaps(&a),
        vec![Action::Unmap {
            importer: B,
            window: Window::Rw,
            aperture_page: atts[0].2 + 2,
            npages: 4
        }]
    );
    assert_eq!(response(&a, A, tag), None);
    // Duplicate ack is ignored.
    let (t, a) = h.ack(B, ids[0]);
    assert_eq!(response(&a, B, t), Some(Err(Status::NoEnt)));
    let (_, a) = h.ack(C, ids[1]);
    // Unmap comes before the exporter's answer.
    let pos_unmap = a
        .iter()
        .position(|x| matches!(x, Action::Unmap { .. }))
        .unwrap();
    let pos_resp = a
        .iter()
        .position(|x| matches!(x, Action::Respond { vm, .. } if *vm == A))
        .unwrap();
    assert!(pos_unmap < pos_resp);
    assert_eq!(
        response(&a, A, tag),
        Some(Ok(ResponseBody::Invalidated {
            targets: 2,
            revoked: 0
        }))
    );
    assert!(h.d.rmap_lookup(A, RAM0 + 3 * P).is_empty());
    assert_eq!(h.d.counters().mapped_pages, 8);
    // Invalidated pages can be faulted again (acked, not revoked).
    let acts = h.fault_resolved(B, A, atts[0].1, 2, 1, |_| RAM0 + 50 * P);
    assert!(
        matches!(maps(&acts)[0], Action::Map { exporter_gpa, .. } if exporter_gpa == RAM0 + 50 * P)
    );
    let c = h.d.counters();
    assert_eq!(
        (
            c.invalidations_started,
            c.invalidations_completed,
            c.invalidations_forced
        ),
        (1, 1, 0)
    );
    assert_eq!(
        (c.pending_invalidations, c.pending_invalidation_targets),
        (0, 0)
    );
}

#[test]
fn importer_that_never_acks_is_revoked_at_deadline() {
    let mut h = H::new(); // deadline 100 ms
    let base = 0x80000;
    let s = h.make(A, base, 16 * P, 0o666);
    let ab = h.apid(B, s, XPMEM_RDWR);
    let ac = h.apid(C, s, XPMEM_RDWR);
    let (att_b, _, ap_b) = h.att(B, ab, 0, 16 * P, 0);
    let (att_c, _, _) = h.att(C, ac, 0, 16 * P, 0);
    h.fault_resolved(B, A, att_b, 0, 16, |i| RAM0 + i * P);
    h.fault_resolved(C, A, att_c, 0, 16, |i| RAM0 + i * P);
    h.now = 10;
    let (tag, acts) = h.invalidate(A, s, base, 8 * P);
    assert_eq!(h.d.next_deadline(), Some(110));
    let id_b = invalidation_ids(&acts, B)[0];
    let id_c = invalidation_ids(&acts, C)[0];
    let (_, a) = h.ack(C, id_c);
    assert_eq!(response(&a, A, tag), None);
    // B never acks. Before the deadline nothing happens.
    assert!(h.tick(109).is_empty());
    let acts = h.tick(110);
    assert_eq!(
        unmaps(&acts),
        vec![Action::Unmap {
            importer: B,
            window: Window::Rw,
            aperture_page: ap_b,
            npages: 8
        }]
    );
    assert_eq!(
        events(&acts, B),
        vec![Event::Revoked {
            attach_id: att_b,
            page_index: 0,
            npages: 8,
            reason: RevokeReason::Deadline
        }]
    );
    // Two targets (B and C), one of them (B) revoked.
    assert_eq!(
        response(&acts, A, tag),
        Some(Ok(ResponseBody::Invalidated {
            targets: 2,
            revoked: 1
        }))
    );
    assert_eq!(h.d.next_deadline(), None);
    // B backs off from the segment for one deadline: FAULTs are refused.
    let (t, a) = h.fault(B, att_b, 8, 16);
    assert_eq!(response(&a, B, t), Some(Err(Status::Again)));
    h.now = 210;
    // Later FAULT on the revoked pages: REVOKED; the rest of the attachment still works.
    let (t, a) = h.fault(B, att_b, 3, 1);
    assert_eq!(response(&a, B, t), Some(Err(Status::Revoked)));
    let (t, a) = h.fault(B, att_b, 8, 16);
    assert_eq!(response(&a, B, t), Some(Ok(ResponseBody::Mapped(8))));
    // C's acked pages can be faulted again, but the window stops at its mapped pages.
    let (_, a) = h.fault(C, att_c, 0, 16);
    assert_eq!(resolve_of(&a, A).unwrap().1, 8);
    // The late ack is ignored.
    let (t, a) = h.ack(B, id_b);
    assert_eq!(response(&a, B, t), Some(Err(Status::NoEnt)));
    assert!(unmaps(&a).is_empty());
    let c = h.d.counters();
    assert_eq!((c.invalidations_forced, c.invalidations_completed), (1, 1));
}

#[test]
fn resolve_raced_by_invalidation_is_retried() {
    let mut h = H::new();
    let base = 0x100000;
    let s = h.make(A, base, 16 * P, 0o666);
    let apid = h.apid(B, s, XPMEM_RDWR);
    let (att, _, _) = h.att(B, apid, 0, 16 * P, 0);
    let apc = h.apid(C, s, XPMEM_RDWR);
    let (att_c, _, _) = h.att(C, apc, 0, 16 * P, 0);
    h.fault_resolved(C, A, att_c, 0, 16, |i| RAM0 + i * P);
    // B faults; the exporter invalidates the range before replying.
    let (ftag, acts) = h.fault(B, att, 0, 4);
    let (rid, _) = resolve_of(&acts, A).unwrap();
    let (itag, acts) = h.invalidate(A, s, base, 16 * P);
    let id_c = invalidation_ids(&acts, C)[0];
    // The stale reply is discarded; the FAULT is parked while the invalidation is pending.
    let (rtag, acts) = h.reply(A, rid, Ok(vec![RAM0, RAM0 + P, RAM0 + 2 * P, RAM0 + 3 * P]));
    assert_eq!(response(&acts, A, rtag), Some(Ok(ResponseBody::Empty)));
    assert!(maps(&acts).is_empty());
    assert!(resolve_of(&acts, A).is_none());
    assert_eq!(response(&acts, B, ftag), None);
    assert_eq!(h.d.counters().resolves_stale, 1);
    // Once the invalidation completes the FAULT is resolved again.
    let (_, acts) = h.ack(C, id_c);
    assert_eq!(
        response(&acts, A, itag),
        Some(Ok(ResponseBody::Invalidated {
            targets: 1,
            revoked: 0
        }))
    );
    let (rid2, n) = resolve_of(&acts, A).expect("fault re-resolved");
    assert_eq!(n, 4);
    assert_ne!(rid, rid2);
    let (_, acts) = h.reply(A, rid2, Ok((0..4).map(|i| RAM1 + i * P).collect()));
    assert_eq!(response(&acts, B, ftag), Some(Ok(ResponseBody::Mapped(4))));
    // A resolve issued while the invalidation is already pending is treated the same way.
    let (itag, acts) = h.invalidate(A, s, base, 16 * P);
    let id_b = invalidation_ids(&acts, B)[0];
    let id_c: Vec<u64> = invalidation_ids(&acts, C);
    assert!(id_c.is_empty(), "C's pages were all unmapped");
    let (ftag, acts) = h.fault(C, att_c, 0, 2);
    assert!(
        resolve_of(&acts, A).is_none(),
        "parked behind the pending invalidation"
    );
    let (_, acts) = h.ack(B, id_b);
    assert_eq!(
        response(&acts, A, itag),
        Some(Ok(ResponseBody::Invalidated {
            targets: 1,
            revoked: 0
        }))
    );
    let (rid3, _) = resolve_of(&acts, A).unwrap();
    let (_, acts) = h.reply(A, rid3, Ok(vec![RAM1, RAM1 + P]));
    assert_eq!(response(&acts, C, ftag), Some(Ok(ResponseBody::Mapped(2))));
}

/// The race behind a same-VM `xpmem-test local` failure: the importer handles the
/// INVALIDATE event (zaps its PTEs), touches the page again and sends a FAULT before its
/// INVALIDATE_ACK reaches the device. The slot is still mapped at that point, but it must
/// not be reported mapped: the importer would map it into the process, the ACK would then
/// unmap the slot, and the process would keep reading the filler instead of faulting.
#[test]
fn fault_on_a_slot_being_invalidated_waits_for_the_invalidation() {
    for importer in [A, B] {
        let mut h = H::new();
        let base = 0x300000;
        let s = h.make(A, base, 17 * P, 0o666);
        let apid = h.apid(importer, s, XPMEM_RDWR);
        let (att, _, ap) = h.att(importer, apid, 0, 17 * P, 0);
        h.fault_resolved(importer, A, att, 0, 16, |i| RAM0 + (i + 1) * P);
        // The exporter unmaps the whole buffer.
        let (itag, acts) = h.invalidate(A, s, base, 17 * P);
        let iid = invalidation_ids(&acts, importer)[0];
        // The zapped importer faults page 0 again before its ACK arrives: no answer yet.
        let (ftag, acts) = h.fault(importer, att, 0, 16);
        assert_eq!(response(&acts, importer, ftag), None, "FAULT must wait");
        assert!(resolve_of(&acts, A).is_none());
        assert_eq!(h.d.counters().pending_faults, 1);
        // The ACK unmaps the slots, completes the INVALIDATE, and only then is the FAULT
        // resolved again; the exporter's failed lookup (its VMA is gone) fails it.
        let (_, acts) = h.ack(importer, iid);
        assert_eq!(
            unmaps(&acts),
            vec![Action::Unmap {
                importer,
                window: Window::Rw,
                aperture_page: ap,
                npages: 16
            }]
        );
        assert_eq!(
            response(&acts, A, itag),
            Some(Ok(ResponseBody::Invalidated {
                targets: 1,
                revoked: 0
            }))
        );
        assert_eq!(response(&acts, importer, ftag), None);
        let (rid, n) = resolve_of(&acts, A).expect("FAULT resolved again");
        assert_eq!(n, 16);
        let (_, acts) = h.reply(A, rid, Err(Status::Fault));
        assert_eq!(
            response(&acts, importer, ftag),
            Some(Err(Status::Fault)),
            "SIGBUS, not a mapping of the filler"
        );
        assert_eq!(h.d.counters().mapped_pages, 0);
    }
}

/// A FAULT on a mapped slot is answered at once with the mapped run, but the run stops at
/// the first slot that a pending invalidation covers; a FAULT on such a slot waits.
#[test]
fn mapped_run_stops_at_a_pending_invalidation() {
    let mut h = H::new();
    let base = 0x400000;
    let s = h.make(A, base, 16 * P, 0o666);
    let apid = h.apid(B, s, XPMEM_RDWR);
    let (att, _, _) = h.att(B, apid, 0, 16 * P, 0);
    h.fault_resolved(B, A, att, 0, 8, |i| RAM0 + (i + 1) * P);
    let (itag, acts) = h.invalidate(A, s, base + 4 * P, 2 * P);
    let iid = invalidation_ids(&acts, B)[0];
    let (tag, acts) = h.fault(B, att, 1, 8);
    assert_eq!(response(&acts, B, tag), Some(Ok(ResponseBody::Mapped(3))));
    // Past the invalidated pages the run is answered in full.
    let (tag, acts) = h.fault(B, att, 6, 8);
    assert_eq!(response(&acts, B, tag), Some(Ok(ResponseBody::Mapped(2))));
    let (parked, acts) = h.fault(B, att, 5, 1);
    assert_eq!(response(&acts, B, parked), None);
    let (_, acts) = h.ack(B, iid);
    assert!(response(&acts, A, itag).is_some());
    let (rid, n) = resolve_of(&acts, A).expect("parked FAULT resolved again");
    assert_eq!(n, 1);
    let (_, acts) = h.reply(A, rid, Ok(vec![RAM0 + 40 * P]));
    assert_eq!(
        response(&acts, B, parked),
        Some(Ok(ResponseBody::Mapped(1)))
    );
}

#[test]
fn remove_segment_revokes_importers() {
    let mut h = H::new();
    let base = 0x100000;
    let s = h.make(A, base, 16 * P, 0o666);
    let apid = h.apid(B, s, XPMEM_RDWR);
    let (att, _, ap) = h.att(B, apid, 0, 16 * P, 0);
    h.fault_resolved(B, A, att, 0, 4, |i| RAM0 + i * P);
    // A pending FAULT and a pending INVALIDATE on the segment.
    let (ftag, _) = h.fault(B, att, 8, 1);
    let (itag, _) = h.invalidate(A, s, base, P);
    let (rtag, acts) = h.send(
        A,
        Request::Remove {
            owner: OWNER,
            segid: s,
        },
    );
    assert_eq!(response(&acts, A, rtag), Some(Ok(ResponseBody::Empty)));
    assert_eq!(
        unmaps(&acts),
        vec![Action::Unmap {
            importer: B,
            window: Window::Rw,
            aperture_page: ap,
            npages: 4
        }]
    );
    assert!(events(&acts, B).contains(&Event::Revoked {
        attach_id: att,
        page_index: 0,
        npages: 16,
        reason: RevokeReason::SegmentRemoved
    }));
    assert_eq!(response(&acts, B, ftag), Some(Err(Status::Revoked)));
    // The pending INVALIDATE's target became moot: counted, not revoked at a deadline.
    assert_eq!(
        response(&acts, A, itag),
        Some(Ok(ResponseBody::Invalidated {
            targets: 1,
            revoked: 0
        }))
    );
    let (t, a) = h.fault(B, att, 0, 1);
    assert_eq!(response(&a, B, t), Some(Err(Status::Revoked)));
    assert_eq!(h.attach(B, apid, 0, P, 0), Err(Status::NoEnt));
    // The importer still detaches and releases normally.
    assert_eq!(
        h.call(
            B,
            Request::Detach {
                owner: OWNER,
                attach_id: att
            }
        ),
        Ok(ResponseBody::Empty)
    );
    assert_eq!(
        h.call(B, Request::Release { owner: OWNER, apid }),
        Ok(ResponseBody::Empty)
    );
    let c = h.d.counters();
    assert_eq!(
        (
            c.segments,
            c.permits,
            c.attachments,
            c.pending_faults,
            c.pending_invalidations
        ),
        (0, 0, 0, 0, 0)
    );
}

#[test]
fn exporter_vm_removal_revokes_and_fails_faults_with_gone() {
    let mut h = H::new();
    let s = h.make(A, 0, 16 * P, 0o666);
    let apid = h.apid(B, s, XPMEM_RDWR);
    let (att, _, ap) = h.att(B, apid, 0, 16 * P, 0);
    h.fault_resolved(B, A, att, 0, 4, |i| RAM0 + i * P);
    let (ftag, _) = h.fault(B, att, 8, 1);
    let acts = h.remove_vm(A);
    assert_eq!(
        unmaps(&acts),
        vec![Action::Unmap {
            importer: B,
            window: Window::Rw,
            aperture_page: ap,
            npages: 4
        }]
    );
    assert!(events(&acts, B).contains(&Event::Revoked {
        attach_id: att,
        page_index: 0,
        npages: 16,
        reason: RevokeReason::ExporterGone
    }));
    assert_eq!(response(&acts, B, ftag), Some(Err(Status::Gone)));
    assert!(acts.iter().all(
        |a| !matches!(a, Action::PostEvent { vm, .. } | Action::Respond { vm, .. } if *vm == A)
    ));
    let (t, a) = h.fault(B, att, 0, 1);
    assert_eq!(response(&a, B, t), Some(Err(Status::Gone)));
    assert_eq!(h.attach(B, apid, 0, P, 0), Err(Status::Gone));
    assert_eq!(h.d.counters().pending_resolves, 0);
}

#[test]
fn importer_vm_removal_mid_invalidation_completes_exporter() {
    let mut h = H::new();
    let s = h.make(A, 0, 16 * P, 0o666);
    let apid = h.apid(B, s, XPMEM_RDWR);
    let (att, _, _) = h.att(B, apid, 0, 16 * P, 0);
    h.fault_resolved(B, A, att, 0, 4, |i| RAM0 + i * P);
    let (_ftag, _) = h.fault(B, att, 8, 1); // resolve in flight to A
    let (itag, acts) = h.invalidate(A, s, 0, 16 * P);
    let id = invalidation_ids(&acts, B)[0];
    let acts = h.remove_vm(B);
    // The importer VM's exit made its target moot: a target, not revoked.
    assert_eq!(
        response(&acts, A, itag),
        Some(Ok(ResponseBody::Invalidated {
            targets: 1,
            revoked: 0
        }))
    );
    assert!(acts.iter().all(|a| !matches!(a, Action::PostEvent { vm, .. } | Action::Respond { vm, .. } | Action::Unmap { importer: vm, .. } if *vm == B)));
    let c = h.d.counters();
    assert_eq!(
        (
            c.mapped_pages,
            c.rmap_entries,
            c.pending_faults,
            c.pending_resolves,
            c.attachments,
            c.permits
        ),
        (0, 0, 0, 0, 0, 0)
    );
    assert_eq!(c.aperture_pages_reserved, 0);
    // The exporter's late reply and the removed importer's ack are harmless.
    let (t, a) = h.ack(C, id);
    assert_eq!(response(&a, C, t), Some(Err(Status::NoEnt)));
}

#[test]
fn exporter_vm_removal_mid_invalidation_drops_it() {
    let mut h = H::new();
    let s = h.make(A, 0, 16 * P, 0o666);
    let apid = h.apid(B, s, XPMEM_RDWR);
    let (att, _, _) = h.att(B, apid, 0, 16 * P, 0);
    h.fault_resolved(B, A, att, 0, 4, |i| RAM0 + i * P);
    let (_itag, acts) = h.invalidate(A, s, 0, 16 * P);
    let id = invalidation_ids(&acts, B)[0];
    let acts = h.remove_vm(A);
    assert_eq!(unmaps(&acts).len(), 1);
    let (t, a) = h.ack(B, id);
    assert_eq!(response(&a, B, t), Some(Err(Status::NoEnt)));
    assert_eq!(h.d.next_deadline(), None);
    let c = h.d.counters();
    assert_eq!(
        (
            c.pending_invalidations,
            c.pending_invalidation_targets,
            c.mapped_pages
        ),
        (0, 0, 0)
    );
}

#[test]
fn release_owner_drops_everything_of_that_owner() {
    let mut h = H::new();
    let other = OwnerToken(77);
    let s = h.make(A, 0, 16 * P, 0o666);
    let apid = h.apid(B, s, XPMEM_RDWR);
    let (att, _, _) = h.att(B, apid, 0, 16 * P, 0);
    h.fault_resolved(B, A, att, 0, 4, |i| RAM0 + i * P);
    // Another owner in B keeps its own segment.
    let keep = h.call(
        B,
        Request::Make {
            owner: other,
            vaddr: 0,
            size: P,
            permit_type: XPMEM_PERMIT_MODE,
            permit_value: 0o600,
            uid: 1,
            gid: 1,
        },
    );
    assert!(keep.is_ok());
    let holds = |h: &H, vm| {
        h.d.vm_holdings(vm)
            .map(|v| (v.segments, v.permits, v.attachments))
    };
    assert_eq!(holds(&h, A), Some((1, 0, 0)));
    assert_eq!(holds(&h, B), Some((1, 1, 1)));
    let (t, acts) = h.send(B, Request::ReleaseOwner { owner: OWNER });
    assert_eq!(response(&acts, B, t), Some(Ok(ResponseBody::Empty)));
    assert_eq!(unmaps(&acts).len(), 1);
    // What B still holds is the other owner's segment.
    assert_eq!(holds(&h, B), Some((1, 0, 0)));
    assert_eq!(h.d.vm_holdings(VmId(99)), None);
    let c = h.d.counters();
    assert_eq!(
        (c.segments, c.permits, c.attachments, c.mapped_pages),
        (2, 0, 0, 0)
    );
    // The exporter's owner going away revokes nothing left, and removes its segment.
    let (_, _) = h.send(A, Request::ReleaseOwner { owner: OWNER });
    assert_eq!(h.d.counters().segments, 1);
    assert!(h.d.vm_holdings(A).is_some_and(|v| v.is_empty()));
}

#[test]
fn everything_is_released_when_all_vms_leave() {
    let mut h = H::new();
    let s = h.make(A, 0, 64 * P, 0o666);
    for vm in [A, B, C] {
        let apid = h.apid(vm, s, XPMEM_RDWR);
        let (att, _, _) = h.att(vm, apid, 0, 32 * P, 0);
        h.fault_resolved(vm, A, att, 0, 8, |i| RAM0 + 3 * i * P);
        h.fault(vm, att, 16, 4);
    }
    h.invalidate(A, s, 0, 4 * P);
    for vm in [B, A, C] {
        h.remove_vm(vm);
    }
    let c = h.d.counters();
    assert!(c.nothing_held(), "{c:?}");
    assert!(h.d.mappings().is_empty());
}

#[test]
fn ids_are_not_reused_when_a_vm_comes_back() {
    let mut h = H::new();
    let old = h.make(A, 0, 4 * P, 0o666);
    let apid = h.apid(B, old, XPMEM_RDWR);
    h.remove_vm(A);
    h.d.add_vm(A, spec()).unwrap();
    let new = h.make(A, 0, 4 * P, 0o666);
    assert_ne!(old, new);
    // B's permit for the old incarnation's segment does not reach the new segment.
    assert_eq!(h.attach(B, apid, 0, P, 0), Err(Status::NoEnt));
}

#[test]
fn per_vm_tables_are_bounded() {
    let mut h = H::with_config(DomainConfig {
        max_segments_per_vm: 2,
        max_permits_per_vm: 1,
        max_attachments_per_vm: 1,
        ..DomainConfig::default()
    });
    let s = h.make(A, 0, P, 0o666);
    h.make(A, 0, P, 0o666);
    assert_eq!(
        h.call(A, make_req(0, P, XPMEM_PERMIT_MODE, 0o666)),
        Err(Status::NoSpc)
    );
    // Other VMs have their own budget.
    h.make(B, 0, P, 0o666);
    let apid = h.apid(B, s, XPMEM_RDONLY);
    h.att(B, apid, 0, P, XPMEM_RDONLY);
    assert_eq!(h.attach(B, apid, 0, P, XPMEM_RDONLY), Err(Status::NoSpc));
    assert_eq!(h.get(B, s, XPMEM_RDONLY), Err(Status::NoSpc));
    assert_eq!(
        h.call(B, Request::Release { owner: OWNER, apid }),
        Ok(ResponseBody::Empty)
    );
    h.apid(B, s, XPMEM_RDONLY);
    assert_eq!(
        h.call(
            A,
            Request::Remove {
                owner: OWNER,
                segid: s
            }
        ),
        Ok(ResponseBody::Empty)
    );
    h.make(A, 0, P, 0o666);
}

#[test]
fn unanswered_resolve_times_out() {
    // The resolve timeout is never shorter than the invalidation deadline (100 ms here).
    let mut h = H::with_config(DomainConfig {
        seed: 1,
        invalidate_deadline_ms: 100,
        resolve_timeout_ms: 10,
        ..DomainConfig::default()
    });
    assert_eq!(h.d.resolve_timeout_ms(), 100);
    let s = h.make(A, 0, 8 * P, 0o666);
    let apid = h.apid(B, s, XPMEM_RDWR);
    let (att, _, _) = h.att(B, apid, 0, 8 * P, 0);
    h.now = 50;
    let (tag, acts) = h.fault(B, att, 0, 4);
    let (rid, _) = resolve_of(&acts, A).unwrap();
    assert_eq!(h.d.next_deadline(), Some(150));
    assert!(h.tick(149).is_empty());
    let acts = h.tick(150);
    assert_eq!(response(&acts, B, tag), Some(Err(Status::Fault)));
    assert_eq!(h.d.next_deadline(), None);
    let (t, acts) = h.reply(A, rid, Ok(vec![RAM0]));
    assert_eq!(response(&acts, A, t), Some(Err(Status::NoEnt)));
    assert!(maps(&acts).is_empty());
    let c = h.d.counters();
    assert_eq!(
        (c.resolves_timed_out, c.pending_faults, c.pending_resolves),
        (1, 0, 0)
    );
}

#[test]
fn get_requires_zero_permit_value() {
    let mut h = H::new();
    let s = h.make(A, 0, P, 0o666);
    let req = Request::Get {
        owner: OWNER,
        segid: s,
        flags: XPMEM_RDONLY,
        permit_type: XPMEM_PERMIT_MODE,
        permit_value: 0o666,
        uid: 1000,
        gid: 1000,
    };
    assert_eq!(h.call(B, req), Err(Status::Invalid));
}

#[test]
fn failed_map_is_forgotten_and_resolved_again() {
    let mut h = H::new();
    let s = h.make(A, 0, 8 * P, 0o666);
    let apid = h.apid(B, s, XPMEM_RDWR);
    let (att, w, ap) = h.att(B, apid, 0, 8 * P, 0);
    h.fault_resolved(B, A, att, 0, 4, |i| RAM0 + i * P);
    assert_eq!(h.d.counters().mapped_pages, 4);
    h.d.map_failed(B, w, ap + 1, 2);
    h.d.check_invariants().unwrap();
    assert_eq!(h.d.counters().mapped_pages, 2);
    assert!(h.d.rmap_lookup(A, RAM0 + P).is_empty());
    let (_, acts) = h.fault(B, att, 1, 8);
    assert_eq!(resolve_of(&acts, A).unwrap().1, 2);
}

#[test]
fn importers_faulting_the_same_pages_share_one_resolve() {
    let mut h = H::new();
    let base = 0x300000;
    let s = h.make(A, base, 32 * P, 0o666);
    let ab = h.apid(B, s, XPMEM_RDWR);
    let ac = h.apid(C, s, XPMEM_RDONLY);
    let (att_b, _, ap_b) = h.att(B, ab, 0, 32 * P, 0);
    // C attaches the segment from page 4 on, read-only.
    let (att_c, _, ap_c) = h.att(C, ac, 4 * P, 16 * P, XPMEM_RDONLY);
    let (tb, acts) = h.fault(B, att_b, 2, 8); // pages 2..10 of the segment, write
    let (rid, n) = resolve_of(&acts, A).unwrap();
    assert_eq!(n, 8);
    // C's window (segment pages 5..9) lies inside B's resolve: no new RESOLVE.
    let (tc, acts) = h.fault(C, att_c, 1, 4);
    assert!(resolve_of(&acts, A).is_none());
    assert_eq!(h.d.counters().resolves_shared, 1);
    // A window reaching past it gets its own RESOLVE.
    let (tc2, acts) = h.fault(C, att_c, 10, 2);
    assert!(resolve_of(&acts, A).is_some());
    let gpas: Vec<u64> = (0..8).map(|i| RAM0 + (40 + i) * P).collect();
    let (_, acts) = h.reply(A, rid, Ok(gpas));
    assert_eq!(response(&acts, B, tb), Some(Ok(ResponseBody::Mapped(8))));
    assert_eq!(response(&acts, C, tc), Some(Ok(ResponseBody::Mapped(4))));
    assert_eq!(response(&acts, C, tc2), None);
    assert_eq!(
        maps(&acts),
        vec![
            Action::Map {
                importer: B,
                window: Window::Rw,
                aperture_page: ap_b + 2,
                exporter: A,
                exporter_gpa: RAM0 + 40 * P,
                npages: 8,
                writable: true,
            },
            Action::Map {
                importer: C,
                window: Window::Ro,
                aperture_page: ap_c + 1,
                exporter: A,
                exporter_gpa: RAM0 + 43 * P,
                npages: 4,
                writable: false,
            },
        ]
    );
    assert_eq!(h.d.rmap_lookup(A, RAM0 + 44 * P).len(), 2);
}

#[test]
fn shared_resolve_short_reply_resolves_the_rest() {
    let mut h = H::new();
    let s = h.make(A, 0, 16 * P, 0o666);
    let ab = h.apid(B, s, XPMEM_RDWR);
    let ac = h.apid(C, s, XPMEM_RDWR);
    let (att_b, _, _) = h.att(B, ab, 0, 16 * P, 0);
    let (att_c, _, _) = h.att(C, ac, 0, 16 * P, 0);
    let (tb, acts) = h.fault(B, att_b, 0, 8);
    let (rid, _) = resolve_of(&acts, A).unwrap();
    let (tc, _) = h.fault(C, att_c, 4, 2);
    // The exporter resolves only the first two pages: B is served, C asks again.
    let (_, acts) = h.reply(A, rid, Ok(vec![RAM0, RAM0 + P]));
    assert_eq!(response(&acts, B, tb), Some(Ok(ResponseBody::Mapped(2))));
    assert_eq!(response(&acts, C, tc), None);
    let (rid2, n) = resolve_of(&acts, A).expect("C's window resolved again");
    assert_eq!(n, 2);
    let (_, acts) = h.reply(A, rid2, Ok(vec![RAM0 + 4 * P, RAM0 + 5 * P]));
    assert_eq!(response(&acts, C, tc), Some(Ok(ResponseBody::Mapped(2))));
    // A follower going away leaves the resolve to the others.
    let (tb, acts) = h.fault(B, att_b, 8, 4);
    let (rid3, _) = resolve_of(&acts, A).unwrap();
    let (tc, _) = h.fault(C, att_c, 8, 4);
    assert_eq!(
        h.call(
            C,
            Request::Detach {
                owner: OWNER,
                attach_id: att_c
            }
        ),
        Ok(ResponseBody::Empty)
    );
    let _ = tc;
    let (_, acts) = h.reply(A, rid3, Ok((8..12).map(|i| RAM0 + i * P).collect()));
    assert_eq!(response(&acts, B, tb), Some(Ok(ResponseBody::Mapped(4))));
    assert_eq!(maps(&acts).len(), 1);
}

#[test]
fn invalidate_response_counts_targets_and_revocations() {
    let counts = |acts: &[Action], tag| match response(acts, A, tag) {
        Some(Ok(ResponseBody::Invalidated { targets, revoked })) => (targets, revoked),
        other => panic!("INVALIDATE not completed with counts: {other:?}"),
    };
    let mut h = H::new(); // deadline 100 ms
    let base = 0x40000;
    let s = h.make(A, base, 16 * P, 0o666);
    let apid = h.apid(B, s, XPMEM_RDWR);
    let (att, _, _) = h.att(B, apid, 0, 16 * P, 0);
    h.fault_resolved(B, A, att, 0, 4, |i| RAM0 + i * P);
    // Mapped only outside the range: no target.
    let (tag, acts) = h.invalidate(A, s, base + 8 * P, 8 * P);
    assert_eq!(counts(&acts, tag), (0, 0));
    // Acknowledged: one target, none revoked.
    let (tag, acts) = h.invalidate(A, s, base, 2 * P);
    assert_eq!(response(&acts, A, tag), None);
    let (_, acts) = h.ack(B, invalidation_ids(&acts, B)[0]);
    assert_eq!(counts(&acts, tag), (1, 0));
    // Not acknowledged: revoked at the deadline.
    h.now = 1000;
    let (tag, acts) = h.invalidate(A, s, base + 2 * P, 2 * P);
    assert_eq!(response(&acts, A, tag), None);
    let acts = h.tick(1100);
    assert_eq!(counts(&acts, tag), (1, 1));
    // After its back-off (one deadline)...
    h.now = 1200;
    // The importer process goes away while the target is pending: moot, not revoked,
    // and the exporter is answered at once, not at the deadline.
    h.fault_resolved(B, A, att, 8, 4, |i| RAM0 + (i + 8) * P);
    let (tag, acts) = h.invalidate(A, s, base + 8 * P, 4 * P);
    assert_eq!(invalidation_ids(&acts, B).len(), 1);
    let (_, acts) = h.send(B, Request::ReleaseOwner { owner: OWNER });
    assert_eq!(counts(&acts, tag), (1, 0));
    // After the importer released everything, nothing is mapped: no target at all.
    let (tag, acts) = h.invalidate(A, s, base, 16 * P);
    assert_eq!(counts(&acts, tag), (0, 0));
    let c = h.d.counters();
    assert_eq!((c.invalidations_started, c.invalidations_completed), (5, 5));
}

#[test]
fn invalidate_after_importer_vm_exit_has_no_target() {
    let mut h = H::new();
    let s = h.make(A, 0, 16 * P, 0o666);
    for vm in [B, C] {
        let apid = h.apid(vm, s, XPMEM_RDWR);
        let (att, _, _) = h.att(vm, apid, 0, 16 * P, 0);
        h.fault_resolved(vm, A, att, 0, 4, |i| RAM0 + i * P);
    }
    h.remove_vm(B);
    let (tag, acts) = h.invalidate(A, s, 0, 16 * P);
    assert!(events(&acts, B).is_empty());
    let (_, acts) = h.ack(C, invalidation_ids(&acts, C)[0]);
    assert_eq!(
        response(&acts, A, tag),
        Some(Ok(ResponseBody::Invalidated {
            targets: 1,
            revoked: 0
        }))
    );
}

#[test]
fn a_repeat_offender_backs_off_longer_each_time_and_only_from_that_segment() {
    let mut h = H::new(); // deadline 100 ms
    let base = 0x80000;
    let s = h.make(A, base, 64 * P, 0o666);
    let other = h.make(A, 0x1000_0000, 4 * P, 0o666);
    let ab = h.apid(B, s, XPMEM_RDWR);
    let mut start = 0;
    for (strike, backoff) in [(1u64, 100u64), (2, 200), (3, 400)] {
        let (att, _, _) = h.att(B, ab, 0, 64 * P, 0);
        h.fault_resolved(B, A, att, 0, 4, |i| RAM0 + i * P);
        let (tag, _) = h.invalidate(A, s, base, 4 * P);
        let acts = h.tick(start + 100);
        assert!(
            matches!(
                response(&acts, A, tag),
                Some(Ok(ResponseBody::Invalidated {
                    targets: 1,
                    revoked: 1
                }))
            ),
            "{acts:?}"
        );
        let until = start + 100 + backoff;
        assert_eq!(
            h.d.backoff_until(B, s, h.now),
            Some(until),
            "strike {strike}"
        );
        // New attachments and FAULTs of B on the segment are refused until then...
        assert_eq!(h.attach(B, ab, 0, P, 0), Err(Status::Again));
        let (t, a) = h.fault(B, att, 10, 1);
        assert_eq!(response(&a, B, t), Some(Err(Status::Again)));
        h.now = until - 1;
        assert_eq!(h.attach(B, ab, 0, P, 0), Err(Status::Again));
        // ...but not on another segment, and not for another VM.
        let ob = h.apid(B, other, XPMEM_RDWR);
        let (oatt, _, _) = h.att(B, ob, 0, P, 0);
        h.call(
            B,
            Request::Detach {
                owner: OWNER,
                attach_id: oatt,
            },
        )
        .unwrap();
        h.call(
            B,
            Request::Release {
                owner: OWNER,
                apid: ob,
            },
        )
        .unwrap();
        let ac = h.apid(C, s, XPMEM_RDWR);
        let (catt, _, _) = h.att(C, ac, 0, P, 0);
        h.call(
            C,
            Request::Detach {
                owner: OWNER,
                attach_id: catt,
            },
        )
        .unwrap();
        h.call(
            C,
            Request::Release {
                owner: OWNER,
                apid: ac,
            },
        )
        .unwrap();
        h.now = until;
        assert_eq!(h.d.backoff_until(B, s, h.now), None);
        h.call(
            B,
            Request::Detach {
                owner: OWNER,
                attach_id: att,
            },
        )
        .unwrap();
        start = h.now;
        let c = h.d.counters();
        assert_eq!(c.backoffs_started, strike);
        assert_eq!(c.backoff_refusals, 3 * strike);
    }
    // A B that acknowledges works normally after its back-off.
    let (att, _, _) = h.att(B, ab, 0, 64 * P, 0);
    h.fault_resolved(B, A, att, 0, 4, |i| RAM0 + i * P);
    let (tag, acts) = h.invalidate(A, s, base, 4 * P);
    let id = invalidation_ids(&acts, B)[0];
    let (_, acts) = h.ack(B, id);
    assert_eq!(
        response(&acts, A, tag),
        Some(Ok(ResponseBody::Invalidated {
            targets: 1,
            revoked: 0
        }))
    );
    // Back-off records go with the segment.
    assert_eq!(h.d.counters().backoffs, 1);
    h.call(
        A,
        Request::Remove {
            owner: OWNER,
            segid: s,
        },
    )
    .unwrap();
    assert_eq!(h.d.counters().backoffs, 0);
}

#[test]
fn a_revoked_window_revokes_every_attachment_in_it_and_answers_the_exporters() {
    let mut h = H::new();
    let s = h.make(A, 0x80000, 16 * P, 0o666);
    let t = h.make(C, 0x90000, 16 * P, 0o666);
    let ab = h.apid(B, s, XPMEM_RDWR);
    let cb = h.apid(B, t, XPMEM_RDWR);
    let (att_s, _, _) = h.att(B, ab, 0, 16 * P, 0);
    let (att_t, _, _) = h.att(B, cb, 0, 16 * P, 0);
    let (att_ro, w_ro, _) = h.att(B, ab, 0, 4 * P, XPMEM_RDONLY);
    assert_eq!(w_ro, Window::Ro);
    h.fault_resolved(B, A, att_s, 0, 8, |i| RAM0 + i * P);
    h.fault_resolved(B, C, att_t, 0, 8, |i| RAM0 + i * P);
    h.fault_resolved(B, A, att_ro, 0, 4, |i| RAM0 + i * P);
    // A invalidates; the device fails to unmap B's pages and revokes B's rw window.
    let (tag, acts) = h.invalidate(A, s, 0x80000, 4 * P);
    assert_eq!(invalidation_ids(&acts, B).len(), 2);
    // A parked FAULT of B on t waits for nothing: it fails.
    let (ftag, _) = h.fault(B, att_t, 12, 1);
    let acts = h.d.window_revoked(B, Window::Rw, h.now);
    h.d.check_invariants().unwrap();
    assert!(
        unmaps(&acts).is_empty(),
        "the device already unmapped: {acts:?}"
    );
    // The rw attachment's target counts as revoked; the ro one is still pending.
    assert_eq!(response(&acts, A, tag), None);
    let mut revoked: Vec<(u64, RevokeReason)> = events(&acts, B)
        .into_iter()
        .filter_map(|e| match e {
            Event::Revoked {
                attach_id,
                page_index: 0,
                npages: 16,
                reason,
            } => Some((attach_id, reason)),
            _ => None,
        })
        .collect();
    revoked.sort();
    let mut want = vec![(att_s, RevokeReason::Host), (att_t, RevokeReason::Host)];
    want.sort();
    assert_eq!(revoked, want);
    assert_eq!(response(&acts, B, ftag), Some(Err(Status::Revoked)));
    let c = h.d.counters();
    assert_eq!((c.windows_revoked, c.mapped_pages), (1, 4), "{c:?}");
    // The ro window goes too: A completes, both targets revoked.
    assert_eq!(h.d.mappings().len(), 4);
    let acts = h.d.window_revoked(B, Window::Ro, h.now);
    assert_eq!(
        response(&acts, A, tag),
        Some(Ok(ResponseBody::Invalidated {
            targets: 2,
            revoked: 2
        }))
    );
    // Revoked slots never come back.
    let (t2, a) = h.fault(B, att_s, 10, 1);
    assert_eq!(response(&a, B, t2), Some(Err(Status::Revoked)));
    h.d.check_invariants().unwrap();
    assert_eq!(h.d.counters().mapped_pages, 0);
}

#[test]
fn cap_ipc_owner_passes_the_mode_check_only_within_the_exporters_vm() {
    let mut h = H::new();
    let s = h.make(A, 0x10000, 4 * P, 0o600); // owner uid/gid 1000
    let get = |h: &mut H, vm, flags, uid| {
        h.call(
            vm,
            Request::Get {
                owner: OWNER,
                segid: s,
                flags,
                permit_type: XPMEM_PERMIT_MODE,
                permit_value: 0,
                uid,
                gid: uid,
            },
        )
    };
    // Another user of A's VM: refused, unless it holds CAP_IPC_OWNER (read or write).
    assert_eq!(get(&mut h, A, XPMEM_RDWR, 2000), Err(Status::Perm));
    assert!(matches!(
        get(&mut h, A, XPMEM_RDWR | XPMEM_GET_IPC_OWNER, 2000),
        Ok(ResponseBody::Apid(_))
    ));
    assert!(matches!(
        get(&mut h, A, XPMEM_RDONLY | XPMEM_GET_IPC_OWNER, 0),
        Ok(ResponseBody::Apid(_))
    ));
    // Root of another VM is just another VM's process: the others' bits (none) apply.
    assert_eq!(
        get(&mut h, B, XPMEM_RDWR | XPMEM_GET_IPC_OWNER, 0),
        Err(Status::Perm)
    );
    assert_eq!(
        get(&mut h, B, XPMEM_RDONLY | XPMEM_GET_IPC_OWNER, 1000),
        Err(Status::Perm)
    );
    // The flag does not make other flag values valid.
    assert_eq!(
        get(&mut h, A, XPMEM_GET_IPC_OWNER, 2000),
        Err(Status::Invalid)
    );
    assert_eq!(
        get(&mut h, A, 3 | XPMEM_GET_IPC_OWNER, 2000),
        Err(Status::Invalid)
    );
}
