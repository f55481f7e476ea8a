//! Hostile input: requests with arbitrary field values (and ids that are either random or
//! recycled from earlier answers and events) never panic, keep the domain consistent, and
//! leave nothing behind once every VM is gone.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use common::*;
use proptest::prelude::*;
use xpmem_domain::*;

#[derive(Clone, Debug)]
struct RawOp {
    vm: u32,
    opcode: u8,
    owner: u64,
    a: u64,
    b: u64,
    c: u64,
    d: u32,
    e: u32,
    /// Use a recycled id (index into the ids seen so far) instead of `a`.
    recycle: Option<usize>,
    gpas: Vec<u64>,
    tick: u16,
}

fn raw_op() -> impl Strategy<Value = RawOp> {
    let small = prop_oneof![
        Just(0u64),
        Just(1),
        Just(4096),
        Just(8192),
        0..1_000_000u64,
        any::<u64>()
    ];
    (
        (
            prop_oneof![1 => Just(0u32), 8 => 1..4u32],
            prop_oneof![3 => Just(0u8), 1 => Just(1), 3 => Just(2), 1 => Just(3), 3 => Just(4), 1 => Just(5), 5 => Just(6), 5 => Just(7), 2 => Just(8), 2 => Just(9), 1 => 10..13u8],
            prop_oneof![4 => Just(1u64), 1 => Just(0), 1 => Just(2), 1 => any::<u64>()],
        ),
        (small.clone(), small.clone(), small),
        (
            prop_oneof![Just(0u32), Just(1), Just(2), Just(3), any::<u32>()],
            any::<u32>(),
        ),
        proptest::option::weighted(0.9, 0..64usize),
        proptest::collection::vec(
            prop_oneof![Just(RAM0), Just(RAM0 + 4096), Just(RAM1), any::<u64>()],
            0..10,
        ),
        0..300u16,
    )
        .prop_map(
            |((vm, opcode, owner), (a, b, c), (d, e), recycle, gpas, tick)| RawOp {
                vm,
                opcode,
                owner,
                a,
                b,
                c,
                d,
                e,
                recycle,
                gpas,
                tick,
            },
        )
}

/// Ids the domain handed out, by kind, so later requests can reuse them.
#[derive(Default)]
struct Ids {
    segs: Vec<Id>,
    apids: Vec<Id>,
    atts: Vec<Id>,
    resolves: Vec<Id>,
    invs: Vec<Id>,
}

/// An id with the VM and owner token it was given to.
type Id = (u64, VmId, OwnerToken);

fn harvest(acts: &[Action], ids: &mut Ids, owner: OwnerToken) {
    for a in acts {
        match a {
            Action::Respond {
                vm,
                result: Ok(body),
                ..
            } => match body {
                ResponseBody::Segid(s) => ids.segs.push((*s as u64, *vm, owner)),
                ResponseBody::Apid(p) => ids.apids.push((*p as u64, *vm, owner)),
                ResponseBody::Attached { attach_id, .. } => ids.atts.push((*attach_id, *vm, owner)),
                _ => {}
            },
            Action::PostEvent { vm, event } => match event {
                Event::Resolve { resolve_id, .. } => ids.resolves.push((*resolve_id, *vm, owner)),
                Event::Invalidate {
                    invalidation_id, ..
                } => ids.invs.push((*invalidation_id, *vm, owner)),
                Event::Revoked { .. } => {}
            },
            _ => {}
        }
    }
}

/// Returns the sending VM and the request; a recycled id is mostly sent by the VM and
/// owner it was given to.
fn request(op: &RawOp, ids: &Ids) -> Option<(VmId, Request)> {
    // Each field is well-formed unless all three of its selector bits are set (7/8).
    let bit = |n: u32| op.e & (7 << (3 * n)) != 7 << (3 * n);
    let list: &[Id] = match op.opcode {
        1 | 8 => &ids.segs,
        2 => {
            if bit(6) {
                &ids.segs
            } else {
                &[]
            }
        }
        3 | 4 => &ids.apids,
        5 | 6 => &ids.atts,
        7 => &ids.resolves,
        9 => &ids.invs,
        _ => &[],
    };
    let recycled = match op.recycle {
        // Mostly one of the newest ids (likely still alive), sometimes any.
        Some(i) if !list.is_empty() && i < 48 => Some(list[list.len() - 1 - i % list.len().min(3)]),
        Some(i) if !list.is_empty() => Some(list[i % list.len()]),
        _ => None,
    };
    let (vm, owner) = match recycled {
        Some((_, vm, owner)) if op.opcode != 2 && bit(7) => (vm, owner),
        _ => (VmId(op.vm), OwnerToken(op.owner)),
    };
    let id = recycled.map_or(op.a, |(id, _, _)| id);
    let pick = |_: &[Id]| id;
    let pages = |x: u64| (x % 16 + 1) * PAGE_SIZE;
    let req = match op.opcode {
        0 => Request::Make {
            owner,
            vaddr: if bit(0) {
                (op.b % 64) * PAGE_SIZE
            } else {
                op.b
            },
            size: if bit(1) { pages(op.c) } else { op.c },
            permit_type: if bit(2) { XPMEM_PERMIT_MODE } else { op.d },
            permit_value: if bit(3) { 0o666 } else { u64::from(op.d) },
            uid: 0,
            gid: 0,
        },
        1 => Request::Remove {
            owner,
            segid: pick(&ids.segs) as i64,
        },
        2 => Request::Get {
            owner,
            segid: pick(&ids.segs) as i64,
            flags: if bit(0) { 1 + op.d % 2 } else { op.d },
            permit_type: if bit(1) { XPMEM_PERMIT_MODE } else { op.d },
            permit_value: if bit(2) { 0 } else { op.b },
            uid: op.e >> 30,
            gid: 0,
        },
        3 => Request::Release {
            owner,
            apid: pick(&ids.apids) as i64,
        },
        4 => Request::Attach {
            owner,
            apid: pick(&ids.apids) as i64,
            offset: if bit(0) { (op.b % 8) * PAGE_SIZE } else { op.b },
            size: if bit(1) { pages(op.c % 8) } else { op.c },
            flags: if bit(2) { op.d % 2 } else { op.d },
        },
        5 => Request::Detach {
            owner,
            attach_id: pick(&ids.atts),
        },
        6 => Request::Fault {
            owner,
            attach_id: pick(&ids.atts),
            page_index: if bit(0) { op.b % 16 } else { op.b },
            npages: if bit(1) { op.d % 16 } else { op.d },
        },
        7 => Request::ResolveReply {
            resolve_id: pick(&ids.resolves),
            result: if bit(0) {
                Ok((0..=op.d % 9)
                    .map(|k| RAM0 + (op.b % 1000 + u64::from(k)) * PAGE_SIZE)
                    .collect())
            } else if bit(1) {
                Ok(op.gpas.clone())
            } else {
                Err(Status::Fault)
            },
        },
        8 => Request::Invalidate {
            owner,
            segid: pick(&ids.segs) as i64,
            vaddr: if bit(0) {
                (op.b % 64) * PAGE_SIZE
            } else {
                op.b
            },
            len: if bit(1) { pages(op.c) } else { op.c },
        },
        9 => Request::InvalidateAck {
            invalidation_id: pick(&ids.invs),
        },
        10 => Request::ReleaseOwner { owner },
        _ => return None,
    };
    Some((vm, req))
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256),
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_requests_never_break_the_domain(ops in proptest::collection::vec(raw_op(), 1..300)) {
        let mut h = H::new();
        let mut ids = Ids::default();
        for op in &ops {
            let vm = VmId(op.vm);
            match request(op, &ids) {
                Some((from, req)) => {
                    let owner = match &req {
                        Request::Make { owner, .. }
                        | Request::Get { owner, .. }
                        | Request::Attach { owner, .. } => *owner,
                        _ => OwnerToken(1),
                    };
                    let dbg = format!("{from:?} {req:?}");
                    let (tag, acts) = h.send(from, req);
                    if std::env::var("HOSTILE_TRACE").is_ok() {
                        eprintln!("TRACE {dbg} -> {:?}", response(&acts, from, tag));
                    }
                    harvest(&acts, &mut ids, owner);
                }
                None if op.opcode == 11 => {
                    let acts = h.tick(h.now + u64::from(op.tick));
                    harvest(&acts, &mut ids, OwnerToken(1));
                }
                None => {
                    // Reset of a VM: remove it and let it join again.
                    if h.d.remove_vm(vm, h.now).is_ok() {
                        h.d.add_vm(vm, spec()).unwrap();
                    }
                    h.d.check_invariants().map_err(TestCaseError::fail)?;
                }
            }
        }
        if std::env::var("HOSTILE_STATS").is_ok() {
            let c = h.d.counters();
            eprintln!("STATS segs={} atts={} resolves={} maps={} inv={} rejected={}",
                c.segments, c.attachments, c.resolves_issued, c.map_actions, c.invalidations_started, c.resolves_rejected);
        }
        for vm in [VmId(0), A, B, C] {
            let _ = h.d.remove_vm(vm, h.now);
        }
        let c = h.d.counters();
        prop_assert!(c.nothing_held(), "leak: {:?}", c);
    }
}
