//! Benchmarks (plain binary, `cargo bench -p virtio-xpmem-device`):
//! 1. mapping N pages into an aperture with the real MmapAperture,
//!    contiguous (one Map of N pages) vs scattered (N Maps of one page);
//! 2. an exporter INVALIDATE of N pages fanned out to K importers, end to
//!    end through the devices (events, acks, unmaps, completion);
//! 3. reverse-map heap bytes per mapped page, from the domain.
//!
//! Numbers are wall-clock on whatever machine runs this; they are printed,
//! never asserted.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

#[path = "../tests/common/mod.rs"]
mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

/// Counts live heap bytes, to measure the reverse map's cost per page.
struct Counting;
static HEAP: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        HEAP.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        HEAP.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn heap() -> isize {
    HEAP.load(Ordering::Relaxed)
}

use common::*;
use virtio_xpmem_device::aperture::{
    ApertureBackend, ApertureWindows, MmapAperture, VmRamLayout, PAGE_SIZE,
};
use virtio_xpmem_device::{HubClock, HubConfig, ManualClock, VmId, XpmemHub};
use virtio_xpmem_wire as wire;
use xpmem_domain::Window;

/// Repeats `f` until at least `min` has elapsed (and at least 3 times);
/// returns the mean duration per call.
fn measure(min: Duration, mut f: impl FnMut()) -> Duration {
    let start = Instant::now();
    let mut n = 0u32;
    while n < 3 || start.elapsed() < min {
        f();
        n += 1;
    }
    start.elapsed() / n
}

fn bench_map() {
    println!("## Aperture map/unmap (MmapAperture, host memory)\n");
    println!("| pages | layout | mmap calls | map total | map per page | unmap total |");
    println!("|---:|---|---:|---:|---:|---:|");
    let mem = guest_ram();
    let layout = VmRamLayout::from_guest_memory(&mem).unwrap();
    for &n in &[1u64, 64, 512, 1024] {
        for scattered in [false, true] {
            let mut ap = MmapAperture::new();
            let w = ApertureWindows::reserve(APERTURE_RW_GPA, 8 << 20, APERTURE_RO_GPA, PAGE_SIZE)
                .unwrap();
            ap.add_vm(VmId(1), layout.clone(), w.clone().into())
                .unwrap();
            let w2 = ApertureWindows::reserve(APERTURE_RW_GPA, 8 << 20, APERTURE_RO_GPA, PAGE_SIZE)
                .unwrap();
            ap.add_vm(VmId(2), layout.clone(), w2.into()).unwrap();
            let mut calls = 0;
            let map = measure(Duration::from_millis(200), || {
                calls = 0;
                if scattered {
                    for i in 0..n {
                        // Every other exporter page: no two are adjacent.
                        let s = ap
                            .map(VmId(1), Window::Rw, i, VmId(2), 2 * i * PAGE_SIZE, 1, true)
                            .unwrap();
                        calls += s.mmap_calls;
                    }
                } else {
                    let s = ap.map(VmId(1), Window::Rw, 0, VmId(2), 0, n, true).unwrap();
                    calls += s.mmap_calls;
                }
            });
            let unmap = measure(Duration::from_millis(100), || {
                ap.unmap(VmId(1), Window::Rw, 0, n).unwrap();
            });
            println!(
                "| {n} | {} | {calls} | {:.1?} | {:.2?} | {:.1?} |",
                if scattered { "scattered" } else { "contiguous" },
                map,
                map / n as u32,
                unmap
            );
        }
    }
    println!();
}

fn hub() -> std::sync::Arc<XpmemHub> {
    XpmemHub::with_backend(
        HubConfig {
            max_fault_pages: 512,
            invalidate_deadline: Duration::from_secs(60),
            ..HubConfig::default()
        },
        Box::new(MmapAperture::new()),
        HubClock::Manual(ManualClock::default()),
    )
    .unwrap()
}

const SEG_VADDR: u64 = 0x7f00_0000_0000;

fn bench_invalidate() {
    println!("## INVALIDATE fan-out, end to end through the devices\n");
    println!("Exporter invalidates N mapped pages shared with K importers; each importer receives the event, acks; time until the exporter's request completes (includes the unmaps).\n");
    println!("| N pages | K importers | per invalidation | per importer-page | rmap entries | heap bytes/mapped page (measured) | rmap bytes/page (domain estimate) |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let npages_seg = 512u64;
    for &k in &[1usize, 2, 4, 8] {
        let hub = hub();
        let mems: Vec<_> = (0..=k).map(|_| guest_ram()).collect();
        let mut guests: Vec<Guest<'_>> = mems
            .iter()
            .enumerate()
            .map(|(i, m)| Guest::new(&hub, i as u32 + 1, m))
            .collect();
        let (exp, imps) = guests.split_first_mut().unwrap();
        let model = ExporterModel {
            vaddr: SEG_VADDR,
            npages: npages_seg,
            contiguous: true,
        };
        let c = exp.call(wire::Request::Make {
            vaddr: SEG_VADDR,
            size: npages_seg * PAGE_SIZE,
            mode: 0o666,
            uid: 0,
            gid: 0,
        });
        let segid = c.u64_at(0);
        let mut atts = Vec::new();
        for imp in imps.iter_mut() {
            let apid = imp
                .call(wire::Request::Get {
                    segid,
                    access: wire::Access::ReadWrite,
                    uid: 0,
                    gid: 0,
                    ipc_owner: false,
                })
                .u64_at(0);
            let att = imp
                .call(wire::Request::Attach {
                    apid,
                    offset: 0,
                    size: npages_seg * PAGE_SIZE,
                    read_only: false,
                })
                .u64_at(0);
            atts.push(att);
        }
        let refault = |exp: &mut Guest<'_>, imps: &mut [Guest<'_>], n: u64| {
            for (imp, &att) in imps.iter_mut().zip(&atts) {
                let mut page = 0;
                while page < n {
                    let req = wire::Request::Fault {
                        attach_id: att,
                        page_index: page,
                        npages: (n - page).min(512) as u32,
                        write: true,
                    };
                    let head = imp.submit(&req.to_bytes(imp.owner), 16);
                    let evs = exp.take_events();
                    model.answer_resolves(exp, evs);
                    let c = imp.completion(head).expect("fault");
                    assert_eq!(c.status, 0);
                    page += u64::from(c.u32_at(0)).max(1);
                }
            }
        };
        for &n in &[1u64, 64, 512] {
            // Heap growth from mapping N pages into K importers (domain
            // rmap + slots; the device keeps nothing per page).
            let h0 = heap();
            let m0 = hub.counters().mapped_pages;
            refault(exp, imps, n);
            let counters = hub.counters();
            let rmap = counters.rmap_entries;
            let bytes_per_page = (heap() - h0) as f64 / (counters.mapped_pages - m0).max(1) as f64;
            let estimate = hub.rmap_heap_bytes_estimate() as f64 / rmap.max(1) as f64;
            let mut total = Duration::ZERO;
            let reps = 5u32;
            for _ in 0..reps {
                refault(exp, imps, n);
                let t = Instant::now();
                let inv = wire::Request::Invalidate {
                    segid,
                    vaddr: SEG_VADDR,
                    len: n * PAGE_SIZE,
                };
                let head = exp.submit(
                    &inv.to_bytes(exp.owner),
                    wire::response_size(inv.opcode()) as u32,
                );
                for imp in imps.iter_mut() {
                    for ev in imp.take_events() {
                        if let wire::Event::Invalidate {
                            invalidation_id, ..
                        } = ev
                        {
                            imp.call(wire::Request::InvalidateAck { invalidation_id });
                        }
                    }
                }
                let c = exp.completion(head).expect("invalidate did not complete");
                assert_eq!(c.status, 0);
                assert_eq!((c.u32_at(0), c.u32_at(4)), (k as u32, 0));
                total += t.elapsed();
            }
            let per = total / reps;
            println!(
                "| {n} | {k} | {per:.1?} | {:.2?} | {rmap} | {bytes_per_page:.1} | {estimate:.1} |",
                per / (n as u32 * k as u32)
            );
        }
    }
    println!();
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing
    // useful either way: run the whole table.
    bench_map();
    bench_invalidate();
}
