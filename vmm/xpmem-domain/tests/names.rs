//! Named segments (NAME, SEARCH; spec 8.13): unique per domain, only the owner names,
//! gone with the segment and with the exporting VM, hidden from VMs the import policy
//! keeps out, and refused when the driver did not negotiate the feature.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

mod common;

use common::*;
use xpmem_domain::*;

const P: u64 = PAGE_SIZE;

fn name(h: &mut H, vm: VmId, owner: OwnerToken, segid: i64, name: &str) -> Result<(), Status> {
    h.call(
        vm,
        Request::Name {
            owner,
            segid,
            name: name.into(),
        },
    )
    .map(|body| assert_eq!(body, ResponseBody::Empty))
}

fn search(h: &mut H, vm: VmId, name: &str) -> Result<i64, Status> {
    match h.call(
        vm,
        Request::Search {
            owner: OwnerToken(0x77),
            name: name.into(),
        },
    )? {
        ResponseBody::Segid(segid) => Ok(segid),
        other => panic!("SEARCH answered {other:?}"),
    }
}

#[test]
fn a_name_finds_its_segment_from_every_vm() {
    let mut h = H::new();
    let s = h.make(A, 0, 4 * P, 0o666);
    name(&mut h, A, OWNER, s, "ring-0").unwrap();
    for vm in [A, B, C] {
        assert_eq!(search(&mut h, vm, "ring-0"), Ok(s), "{vm:?}");
    }
    assert_eq!(search(&mut h, B, "ring-1"), Err(Status::NoEnt));
    // Byte for byte: no case folding, no prefix match.
    assert_eq!(search(&mut h, B, "RING-0"), Err(Status::NoEnt));
    assert_eq!(search(&mut h, B, "ring-"), Err(Status::NoEnt));
    assert_eq!(h.d.counters().names, 1);
    // Finding the name grants nothing: GET still checks the mode bits.
    let private = h.make(A, 16 * P, 4 * P, 0o600);
    name(&mut h, A, OWNER, private, "private").unwrap();
    let found = search(&mut h, B, "private").unwrap();
    assert_eq!(h.get(B, found, XPMEM_RDONLY), Err(Status::Perm));
}

#[test]
fn names_are_unique_and_given_once_by_the_owner() {
    let mut h = H::new();
    let s1 = h.make(A, 0, 4 * P, 0o666);
    let s2 = h.make(B, 0, 4 * P, 0o666);
    name(&mut h, A, OWNER, s1, "x").unwrap();
    // Taken, by a segment of another VM.
    assert_eq!(name(&mut h, B, OWNER, s2, "x"), Err(Status::Exist));
    // A segment keeps its first name.
    assert_eq!(name(&mut h, A, OWNER, s1, "y"), Err(Status::Exist));
    // Only the owner token of the exporting VM may name a segment.
    assert_eq!(
        name(&mut h, A, OwnerToken(0x2), s2, "z"),
        Err(Status::NoEnt),
        "another VM's segment"
    );
    let s3 = h.make(A, 64 * P, 4 * P, 0o666);
    assert_eq!(name(&mut h, A, OwnerToken(0x2), s3, "z"), Err(Status::Perm));
    assert_eq!(name(&mut h, A, OWNER, 0x1234_5678, "z"), Err(Status::NoEnt));
    // Malformed names (the wire parser refuses them first; the domain checks again).
    for bad in ["", "has space", &"n".repeat(MAX_NAME_LEN + 1), "ctl\u{7}"] {
        assert_eq!(
            name(&mut h, A, OWNER, s3, bad),
            Err(Status::Invalid),
            "{bad:?}"
        );
        assert_eq!(search(&mut h, B, bad), Err(Status::Invalid), "{bad:?}");
    }
    name(&mut h, A, OWNER, s3, &"n".repeat(MAX_NAME_LEN)).unwrap();
    assert_eq!(h.d.counters().names, 2);
}

#[test]
fn a_name_goes_with_its_segment_and_is_free_again() {
    let mut h = H::new();
    let s = h.make(A, 0, 4 * P, 0o666);
    name(&mut h, A, OWNER, s, "job/1").unwrap();
    h.call(
        A,
        Request::Remove {
            owner: OWNER,
            segid: s,
        },
    )
    .unwrap();
    assert_eq!(search(&mut h, B, "job/1"), Err(Status::NoEnt));
    assert_eq!(h.d.counters().names, 0);
    // RELEASE_OWNER drops the owner's segments and so their names.
    let s = h.make(B, 0, 4 * P, 0o666);
    name(&mut h, B, OWNER, s, "job/1").unwrap();
    assert_eq!(search(&mut h, C, "job/1"), Ok(s));
    h.call(B, Request::ReleaseOwner { owner: OWNER }).unwrap();
    assert_eq!(search(&mut h, C, "job/1"), Err(Status::NoEnt));
    // The exporting VM leaving drops its names before anything else can see them.
    let s = h.make(C, 0, 4 * P, 0o666);
    name(&mut h, C, OWNER, s, "job/1").unwrap();
    h.d.remove_vm(C, h.now).unwrap();
    h.d.check_invariants().unwrap();
    assert_eq!(search(&mut h, A, "job/1"), Err(Status::NoEnt));
    let s = h.make(A, 0, 4 * P, 0o666);
    name(&mut h, A, OWNER, s, "job/1").unwrap();
    assert_eq!(h.d.counters().names, 1);
}

#[test]
fn search_hides_names_of_vms_the_policy_keeps_out() {
    let mut pairs = std::collections::BTreeMap::new();
    pairs.insert((B, A), false); // B may import from A read-only; C from nobody.
    let mut h = H::with_config(DomainConfig {
        policy: ImportPolicy::Allow(pairs),
        ..DomainConfig::default()
    });
    let s = h.make(A, 0, 4 * P, 0o666);
    name(&mut h, A, OWNER, s, "a-buf").unwrap();
    assert_eq!(search(&mut h, A, "a-buf"), Ok(s));
    assert_eq!(search(&mut h, B, "a-buf"), Ok(s));
    assert_eq!(search(&mut h, C, "a-buf"), Err(Status::NoEnt));
    // The name is still taken for C, which cannot see it: uniqueness is per domain.
    let sc = h.make(C, 0, 4 * P, 0o666);
    assert_eq!(name(&mut h, C, OWNER, sc, "a-buf"), Err(Status::Exist));
}

#[test]
fn names_need_the_feature() {
    let mut h = H::new();
    let mut plain = spec();
    plain.names = false;
    let d = VmId(9);
    h.d.add_vm(d, plain).unwrap();
    let s = h.make(d, 0, 4 * P, 0o666);
    assert_eq!(name(&mut h, d, OWNER, s, "x"), Err(Status::Unsupported));
    assert_eq!(search(&mut h, d, "x"), Err(Status::Unsupported));
    // Names of other VMs stay out of its reach too.
    let sa = h.make(A, 0, P, 0o666);
    name(&mut h, A, OWNER, sa, "x").unwrap();
    assert_eq!(search(&mut h, d, "x"), Err(Status::Unsupported));
}
