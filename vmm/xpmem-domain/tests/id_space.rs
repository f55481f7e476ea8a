//! Ids over a setup's life: a million segids and apids across many VMs stay positive,
//! unique and below 2^48 (at most 12 hex digits, like native XPMEM's), and forged, stale
//! and other-VM ids are refused.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use std::collections::HashSet;

use common::*;
use xpmem_domain::*;

const VMS: u32 = 64;
const ROUNDS: u64 = 500_000; // one segid and one apid each: 10^6 ids

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

#[test]
fn a_million_ids_stay_below_2_pow_48_and_forged_or_stale_ones_are_refused() {
    let mut d = Domain::new(DomainConfig {
        seed: 0xfeed,
        ..DomainConfig::default()
    });
    for vm in 1..=VMS {
        d.add_vm(VmId(vm), spec()).unwrap();
    }
    let mut tag = 0u64;
    let mut call = |d: &mut Domain, vm: VmId, req: Request| {
        tag += 1;
        let acts = d.handle(vm, RequestTag(tag), req, 0);
        response(&acts, vm, RequestTag(tag)).expect("answered at once")
    };
    let mut seen: HashSet<i64> = HashSet::with_capacity(2 * ROUNDS as usize);
    let mut stale: Vec<(VmId, i64, VmId, i64)> = Vec::new();
    let mut max = 0i64;
    for i in 0..ROUNDS {
        let exporter = VmId(1 + (i % u64::from(VMS)) as u32);
        let importer = VmId(1 + ((i * 7 + 3) % u64::from(VMS)) as u32);
        let Ok(ResponseBody::Segid(segid)) = call(&mut d, exporter, make_one_page()) else {
            panic!("make {i} failed");
        };
        let Ok(ResponseBody::Apid(apid)) = call(
            &mut d,
            importer,
            Request::Get {
                owner: OWNER,
                segid,
                flags: XPMEM_RDWR,
                permit_type: XPMEM_PERMIT_MODE,
                permit_value: 0,
                uid: 2,
                gid: 2,
            },
        ) else {
            panic!("get {i} failed");
        };
        for id in [segid, apid] {
            assert!(id > 0 && id < 1 << 48, "id {id:#x} out of range");
            assert!(seen.insert(id), "id {id:#x} issued twice");
            max = max.max(id);
        }
        // An id of one VM is useless to another: RELEASE of the apid from the exporter,
        // REMOVE of the segid from the importer.
        if i % 1000 == 0 && exporter != importer {
            let r = call(&mut d, exporter, Request::Release { owner: OWNER, apid });
            assert_eq!(r, Err(Status::Perm));
            let r = call(
                &mut d,
                importer,
                Request::Remove {
                    owner: OWNER,
                    segid,
                },
            );
            assert_eq!(r, Err(Status::Perm));
        }
        call(&mut d, importer, Request::Release { owner: OWNER, apid }).unwrap();
        call(
            &mut d,
            exporter,
            Request::Remove {
                owner: OWNER,
                segid,
            },
        )
        .unwrap();
        if i % 5000 == 0 {
            stale.push((exporter, segid, importer, apid));
        }
    }
    assert_eq!(d.counters().segments, 0);
    println!(
        "NOTE {} ids across {VMS} VMs, largest {max:#x} ({} hex digits)",
        seen.len(),
        format!("{max:x}").len()
    );
    // Stale ids (their objects are gone) are refused.
    for (exporter, segid, importer, apid) in stale {
        let r = call(
            &mut d,
            exporter,
            Request::Remove {
                owner: OWNER,
                segid,
            },
        );
        assert_eq!(r, Err(Status::NoEnt));
        let r = call(&mut d, importer, Request::Release { owner: OWNER, apid });
        assert_eq!(r, Err(Status::NoEnt));
    }
    // Forged ids: one live segment; 100,000 guesses in the whole id space never hit it
    // or anything else.
    let Ok(ResponseBody::Segid(live)) = call(&mut d, VmId(1), make_one_page()) else {
        panic!("make failed");
    };
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    for _ in 0..100_000 {
        let guess = (xorshift(&mut x) % (1 << 46)) as i64 + 1;
        if guess == live {
            continue;
        }
        let r = call(
            &mut d,
            VmId(2),
            Request::Get {
                owner: OWNER,
                segid: guess,
                flags: XPMEM_RDONLY,
                permit_type: XPMEM_PERMIT_MODE,
                permit_value: 0,
                uid: 2,
                gid: 2,
            },
        );
        assert_eq!(r, Err(Status::NoEnt), "guess {guess:#x}");
    }
    d.check_invariants().unwrap();
}

const P: u64 = PAGE_SIZE;

/// MAKE of one page at 0x10000, mode 0666, as uid/gid 1.
fn make_one_page() -> Request {
    Request::Make {
        owner: OWNER,
        vaddr: 0x10000,
        size: P,
        permit_type: XPMEM_PERMIT_MODE,
        permit_value: 0o666,
        uid: 1,
        gid: 1,
    }
}
