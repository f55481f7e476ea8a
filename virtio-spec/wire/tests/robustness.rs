//! Hostile-input properties of the parser, without external fuzzing crates:
//! a deterministic xorshift generator drives random and mutated inputs.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use virtio_xpmem_wire::*;

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

fn samples() -> Vec<Request> {
    vec![
        Request::Make {
            vaddr: 0x40_0000,
            size: 0x10_0000,
            mode: 0o666,
            uid: 1,
            gid: 2,
        },
        Request::Make {
            vaddr: 0,
            size: VIRTIO_XPMEM_MAXADDR_SIZE,
            mode: 0o600,
            uid: 0,
            gid: 0,
        },
        Request::Remove { segid: 42 },
        Request::Get {
            segid: 42,
            access: Access::ReadOnly,
            uid: 3,
            gid: 4,
            ipc_owner: false,
        },
        Request::Release { apid: 43 },
        Request::Attach {
            apid: 43,
            offset: 0,
            size: 0x1000,
            read_only: false,
        },
        Request::Detach { attach_id: 44 },
        Request::Fault {
            attach_id: 44,
            page_index: 0,
            npages: 1,
            write: false,
        },
        Request::ResolveReply {
            resolve_id: 45,
            status: Status::Ok,
            gpas: vec![0x1000, 0x2000],
        },
        Request::Invalidate {
            segid: 42,
            vaddr: 0x40_0000,
            len: 0x1000,
        },
        Request::InvalidateAck {
            invalidation_id: 46,
        },
        Request::ReleaseOwner,
    ]
}

/// Every single-byte change of a valid request either is rejected or parses
/// to a request whose canonical encoding is exactly the changed bytes: no
/// byte of a request is ignored by the parser.
#[test]
fn no_byte_is_ignored() {
    for req in samples() {
        let good = req.to_bytes(7);
        for pos in 0..good.len() {
            for value in [0x00, 0x01, 0x80, 0xff] {
                let mut bad = good.clone();
                if bad[pos] == value {
                    continue;
                }
                bad[pos] = value;
                if let Ok((hdr, parsed)) = parse_request(&bad) {
                    assert_eq!(
                        parsed.to_bytes(hdr.owner),
                        bad,
                        "{req:?}: byte {pos} set to {value:#x} was accepted but not represented"
                    );
                }
            }
        }
    }
}

/// Random bytes never panic the parser, for every opcode and many lengths.
#[test]
fn random_input_never_panics() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut accepted = 0;
    for _ in 0..20_000 {
        let len = (rng.next() % 80) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let opcode = (rng.next() % 14) as u32;
        if Request::parse(opcode, &bytes).is_ok() {
            accepted += 1;
        }
        let _ = parse_request(&bytes);
        let _ = Event::parse(&bytes);
    }
    // Random bodies of the right size with all-random fields are almost never
    // valid; this guards against a parser that accepts everything.
    assert!(accepted < 200, "{accepted} random bodies were accepted");
}

/// Valid requests with random field values survive encode/parse.
#[test]
fn random_valid_requests_round_trip() {
    let mut rng = XorShift(12345);
    for _ in 0..5_000 {
        let page = |r: &mut XorShift| (r.next() % (1 << 35)) << 12;
        let id = |r: &mut XorShift| (r.next() >> 1).max(1);
        let req = match rng.next() % 6 {
            0 => Request::Make {
                vaddr: page(&mut rng),
                size: page(&mut rng) + 4096,
                mode: (rng.next() % 0o1000) as u32,
                uid: rng.next() as u32,
                gid: rng.next() as u32,
            },
            1 => Request::Attach {
                apid: id(&mut rng),
                offset: page(&mut rng),
                size: page(&mut rng) + 4096,
                read_only: rng.next() & 1 == 0,
            },
            2 => Request::Fault {
                attach_id: id(&mut rng),
                page_index: rng.next() >> 20,
                npages: (rng.next() % u64::from(VIRTIO_XPMEM_MAX_PAGES)) as u32 + 1,
                write: rng.next() & 1 == 0,
            },
            3 => Request::ResolveReply {
                resolve_id: id(&mut rng),
                status: Status::Ok,
                gpas: (0..rng.next() % 512 + 1).map(|_| page(&mut rng)).collect(),
            },
            4 => Request::Invalidate {
                segid: id(&mut rng),
                vaddr: page(&mut rng),
                len: page(&mut rng) + 4096,
            },
            _ => Request::Get {
                segid: id(&mut rng),
                access: if rng.next() & 1 == 0 {
                    Access::ReadOnly
                } else {
                    Access::ReadWrite
                },
                uid: rng.next() as u32,
                gid: rng.next() as u32,
                ipc_owner: false,
            },
        };
        let owner = id(&mut rng);
        let (hdr, parsed) = parse_request(&req.to_bytes(owner)).expect("valid request");
        assert_eq!(hdr.owner, owner);
        assert_eq!(parsed, req);
    }
}
