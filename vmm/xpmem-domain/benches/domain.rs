//! Domain benchmarks (harness = false): prints a table.
//!
//! - map N pages into one importer's aperture (contiguous exporter pages, coalesced into
//!   few Map actions, and scattered pages, one Map action each);
//! - invalidate N pages mapped by K importers (K = 1, 2, 4, 8): INVALIDATE, K acks, K
//!   Unmap batches, exporter answered;
//! - heap bytes per mapped page (counting allocator), total and for the reverse map.
//!
//! Run: `cargo bench -p xpmem-domain --bench domain` (add `-- --quick` for a short run).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

use xpmem_domain::*;

struct Counting;

static HEAP: AtomicIsize = AtomicIsize::new(0);

// SAFETY: defers every operation to the system allocator with the same layout; the
// counter update has no effect on memory safety.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HEAP.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HEAP.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: `ptr` was allocated by `System` with `layout` (see `alloc`).
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        HEAP.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: `ptr`/`layout` come from this allocator, which is `System` underneath.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const P: u64 = PAGE_SIZE;
const EXP: VmId = VmId(1);
const OWNER: OwnerToken = OwnerToken(1);
const RAM_PAGES: u64 = 1 << 20; // 4 GiB of exporter RAM
const FAULT_WINDOW: u32 = 512;

fn heap() -> isize {
    HEAP.load(Ordering::Relaxed)
}

struct Bench {
    d: Domain,
    tag: u64,
}

impl Bench {
    fn new(importers: u32, aperture_pages: u64) -> Bench {
        let mut d = Domain::new(DomainConfig {
            max_fault_pages: FAULT_WINDOW,
            ..DomainConfig::default()
        });
        for vm in 1..=importers + 1 {
            d.add_vm(
                VmId(vm),
                VmSpec {
                    ram: vec![GpaRange {
                        start: 0,
                        len: RAM_PAGES * P,
                    }],
                    rw_aperture_pages: aperture_pages,
                    ro_aperture_pages: 0,
                    names: false,
                },
            )
            .expect("add_vm");
        }
        Bench { d, tag: 0 }
    }

    fn req(&mut self, vm: VmId, r: Request) -> Vec<Action> {
        self.tag += 1;
        self.d.handle(vm, RequestTag(self.tag), r, 0)
    }

    fn ok<T>(&mut self, vm: VmId, r: Request, f: impl Fn(&ResponseBody) -> Option<T>) -> T {
        let acts = self.req(vm, r);
        acts.iter()
            .find_map(|a| match a {
                Action::Respond {
                    result: Ok(body), ..
                } => f(body),
                _ => None,
            })
            .unwrap_or_else(|| panic!("request failed: {acts:?}"))
    }

    fn segment(&mut self, npages: u64) -> i64 {
        let r = Request::Make {
            owner: OWNER,
            vaddr: 0,
            size: npages * P,
            permit_type: XPMEM_PERMIT_MODE,
            permit_value: 0o666,
            uid: 0,
            gid: 0,
        };
        self.ok(EXP, r, |b| match b {
            ResponseBody::Segid(s) => Some(*s),
            _ => None,
        })
    }

    fn attach(&mut self, vm: VmId, segid: i64, npages: u64) -> u64 {
        let r = Request::Get {
            owner: OWNER,
            segid,
            flags: XPMEM_RDWR,
            permit_type: XPMEM_PERMIT_MODE,
            permit_value: 0,
            uid: 0,
            gid: 0,
        };
        let apid = self.ok(vm, r, |b| match b {
            ResponseBody::Apid(a) => Some(*a),
            _ => None,
        });
        let r = Request::Attach {
            owner: OWNER,
            apid,
            offset: 0,
            size: npages * P,
            flags: 0,
        };
        self.ok(vm, r, |b| match b {
            ResponseBody::Attached { attach_id, .. } => Some(*attach_id),
            _ => None,
        })
    }

    /// Faults the whole attachment in; returns the number of Map actions.
    fn map_all(&mut self, vm: VmId, att: u64, npages: u64, gpa: &impl Fn(u64) -> u64) -> u64 {
        let mut maps = 0;
        let mut page = 0;
        while page < npages {
            let acts = self.req(
                vm,
                Request::Fault {
                    owner: OWNER,
                    attach_id: att,
                    page_index: page,
                    npages: FAULT_WINDOW,
                },
            );
            let (rid, n) = acts
                .iter()
                .find_map(|a| match a {
                    Action::PostEvent {
                        event:
                            Event::Resolve {
                                resolve_id, npages, ..
                            },
                        ..
                    } => Some((*resolve_id, u64::from(*npages))),
                    _ => None,
                })
                .expect("resolve");
            let gpas = (page..page + n).map(gpa).collect();
            let acts = self.req(
                EXP,
                Request::ResolveReply {
                    resolve_id: rid,
                    result: Ok(gpas),
                },
            );
            maps += acts
                .iter()
                .filter(|a| matches!(a, Action::Map { .. }))
                .count() as u64;
            page += n;
        }
        maps
    }
}

fn scattered(n: u64) -> impl Fn(u64) -> u64 {
    // An odd multiplier permutes the RAM pages; neighbours end up far apart.
    move |i| ((i.wrapping_mul(0x9e37_79b9) + n) % RAM_PAGES) * P
}

fn bench_map(n: u64, contiguous: bool) {
    let mut b = Bench::new(1, n);
    let seg = b.segment(n);
    let att = b.attach(VmId(2), seg, n);
    let h0 = heap();
    let t = Instant::now();
    let maps = if contiguous {
        b.map_all(VmId(2), att, n, &|i| (1000 + i) * P)
    } else {
        b.map_all(VmId(2), att, n, &scattered(n))
    };
    let dt = t.elapsed();
    let bytes = (heap() - h0) as f64 / n as f64;
    assert_eq!(b.d.counters().mapped_pages, n);
    println!(
        "| map {:<10} | {:>7} | {:>9.1} | {:>11} | {:>15.1} |",
        if contiguous {
            "contiguous"
        } else {
            "scattered"
        },
        n,
        dt.as_nanos() as f64 / n as f64,
        maps,
        bytes,
    );
}

fn bench_invalidate(n: u64, k: u32) {
    let mut b = Bench::new(k, n);
    let seg = b.segment(n);
    for imp in 2..=k + 1 {
        let att = b.attach(VmId(imp), seg, n);
        b.map_all(VmId(imp), att, n, &|i| (1000 + i) * P);
    }
    let t = Instant::now();
    b.tag += 1;
    let itag = RequestTag(b.tag);
    let acts = b.d.handle(
        EXP,
        itag,
        Request::Invalidate {
            owner: OWNER,
            segid: seg,
            vaddr: 0,
            len: n * P,
        },
        0,
    );
    let ids: Vec<(VmId, u64)> = acts
        .iter()
        .filter_map(|a| match a {
            Action::PostEvent {
                vm,
                event: Event::Invalidate {
                    invalidation_id, ..
                },
            } => Some((*vm, *invalidation_id)),
            _ => None,
        })
        .collect();
    let mut unmaps = 0;
    let mut done = false;
    for (vm, id) in ids {
        let acts = b.req(
            vm,
            Request::InvalidateAck {
                invalidation_id: id,
            },
        );
        unmaps += acts
            .iter()
            .filter(|a| matches!(a, Action::Unmap { .. }))
            .count();
        done |= acts
            .iter()
            .any(|a| matches!(a, Action::Respond { tag, .. } if *tag == itag));
    }
    let dt = t.elapsed();
    assert!(done, "exporter INVALIDATE not answered");
    assert_eq!(b.d.counters().mapped_pages, 0);
    println!(
        "| invalidate K={k} | {:>7} | {:>12.1} | {:>14.1} | {:>7} | {:>9.3} |",
        n,
        dt.as_nanos() as f64 / n as f64,
        dt.as_nanos() as f64 / (n * u64::from(k)) as f64,
        unmaps,
        dt.as_secs_f64() * 1e3,
    );
}

/// Latency of small invalidations (`inv_pages` each) of a large mapped segment shared by
/// K importers: INVALIDATE, K acks, exporter answered.
fn bench_invalidate_small(mapped: u64, inv_pages: u64, k: u32) {
    let mut b = Bench::new(k, mapped);
    let seg = b.segment(mapped);
    for imp in 2..=k + 1 {
        let att = b.attach(VmId(imp), seg, mapped);
        b.map_all(VmId(imp), att, mapped, &|i| (1000 + i) * P);
    }
    let rounds = (mapped / inv_pages).min(256);
    let t = Instant::now();
    for r in 0..rounds {
        b.tag += 1;
        let itag = RequestTag(b.tag);
        let acts = b.d.handle(
            EXP,
            itag,
            Request::Invalidate {
                owner: OWNER,
                segid: seg,
                vaddr: r * inv_pages * P,
                len: inv_pages * P,
            },
            0,
        );
        let ids: Vec<(VmId, u64)> = acts
            .iter()
            .filter_map(|a| match a {
                Action::PostEvent {
                    vm,
                    event:
                        Event::Invalidate {
                            invalidation_id, ..
                        },
                } => Some((*vm, *invalidation_id)),
                _ => None,
            })
            .collect();
        let mut done = false;
        for (vm, id) in ids {
            let acts = b.req(
                vm,
                Request::InvalidateAck {
                    invalidation_id: id,
                },
            );
            done |= acts
                .iter()
                .any(|a| matches!(a, Action::Respond { tag, .. } if *tag == itag));
        }
        assert!(done, "exporter INVALIDATE not answered");
    }
    let dt = t.elapsed();
    println!(
        "| {:>6} of {:>6} | K={k} | {:>14.2} |",
        inv_pages,
        mapped,
        dt.as_secs_f64() * 1e6 / rounds as f64,
    );
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let sizes: &[u64] = if quick {
        &[4096]
    } else {
        &[4096, 65536, 262144]
    };
    println!("xpmem-domain benchmarks (FAULT window {FAULT_WINDOW} pages)\n");
    println!("Heap growth while faulting = reverse map (the 8-byte per-page slot array is");
    println!("allocated at ATTACH and not included).\n");
    println!("| case           |   pages | ns/page   | Map actions | rmap heap B/page |");
    println!("|----------------|---------|-----------|-------------|------------------|");
    for &n in sizes {
        bench_map(n, true);
        bench_map(n, false);
    }
    println!();
    println!("| case           |   pages | ns/page (all) | ns/page/importer | Unmaps | total ms |");
    println!("|----------------|---------|---------------|------------------|--------|----------|");
    for &n in sizes {
        for k in [1, 2, 4, 8] {
            bench_invalidate(n, k);
        }
    }
    println!();
    println!("| pages invalidated | K   | us/INVALIDATE  |");
    println!("|-------------------|-----|----------------|");
    let mapped = if quick { 4096 } else { 65536 };
    for inv in [1, 16, 512] {
        for k in [1, 2, 4, 8] {
            bench_invalidate_small(mapped, inv, k);
        }
    }
}
