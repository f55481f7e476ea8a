//! The router over its socket: real `SOCK_SEQPACKET` connections in a
//! temp directory, ports used as the device uses them.

use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use net_switch::socket::{FrameSocket, Recv, Send};

use super::wire;
use super::*;
use crate::packet::{HDR_LEN, MAX_PKT_DATA, SHUTDOWN_RCV, SHUTDOWN_SEND};

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vsock-router-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn server(tag: &str) -> (RouterServer, PathBuf) {
    let path = tmp(tag).join("r.sock");
    (RouterServer::bind(&path).unwrap(), path)
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Forwards, retrying while the socket is full (a device would answer RST).
fn fwd(p: &RouterPort, pkt: Packet) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match p.forward(pkt.clone()) {
            Ok(()) => return,
            Err(RouteError::Busy) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => panic!("forward: {e}"),
        }
    }
}

fn ctl(op: Op, src: (u64, u32), dst: (u64, u32), buf_alloc: u32, fwd_cnt: u32) -> Packet {
    let mut h = Header::new(op, src, dst);
    h.buf_alloc = buf_alloc;
    h.fwd_cnt = fwd_cnt;
    Packet::control(h)
}

fn rw(src: (u64, u32), dst: (u64, u32), data: &[u8]) -> Packet {
    let mut h = Header::new(Op::Rw, src, dst);
    h.len = data.len() as u32;
    h.buf_alloc = 64 << 10;
    Packet {
        hdr: h,
        data: data.to_vec(),
    }
}

/// Pops (in `max`-byte pieces) until a packet matches; returns all.
fn pop_until(p: &RouterPort, max: usize, mut f: impl FnMut(&Packet) -> bool) -> Vec<Packet> {
    let mut all = Vec::new();
    wait_until("a packet", || {
        while let Some(pkt) = p.pop(max) {
            let done = f(&pkt);
            all.push(pkt);
            if done {
                return true;
            }
        }
        false
    });
    all
}

const A: (u64, u32) = (3, 1000);
const B: (u64, u32) = (4, 80);

/// a (CID 3) connects to b (CID 4) port 80; both advertise `credit`.
fn establish(a: &RouterPort, b: &RouterPort, a_end: (u64, u32), credit: u32) {
    fwd(a, ctl(Op::Request, a_end, B, credit, 0));
    let got = pop_until(b, MAX_PKT_DATA, |p| p.hdr.op == Op::Request);
    let req = got.last().unwrap().hdr;
    assert_eq!((req.src_cid, req.src_port), a_end);
    fwd(b, ctl(Op::Response, B, a_end, credit, 0));
    pop_until(a, MAX_PKT_DATA, |p| p.hdr.op == Op::Response);
}

/// Sends `data` from `tx` to `rx` in 16 KiB packets within a 64 KiB
/// credit; the receiver returns credit as it reads, and the sender goes by
/// the credit updates it received (as a guest does: the router sees them
/// before anything sent because of them). Returns what arrived.
fn transfer(
    tx: &RouterPort,
    rx: &RouterPort,
    from: (u64, u32),
    to: (u64, u32),
    data: &[u8],
) -> Vec<u8> {
    let (mut sent, mut credit_seen, mut got) = (0usize, 0u32, Vec::new());
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.len() < data.len() {
        assert!(
            Instant::now() < deadline,
            "transfer stalled at {}",
            got.len()
        );
        while sent < data.len() && sent - credit_seen as usize + 16384 <= 64 << 10 {
            let end = (sent + 16384).min(data.len());
            fwd(tx, rw(from, to, &data[sent..end]));
            sent = end;
        }
        let before = got.len();
        while let Some(p) = rx.pop(MAX_PKT_DATA) {
            if p.hdr.op == Op::Rw {
                got.extend_from_slice(&p.data);
            }
        }
        if got.len() > before {
            fwd(
                rx,
                ctl(Op::CreditUpdate, to, from, 64 << 10, got.len() as u32),
            );
        } else {
            std::thread::sleep(Duration::from_millis(1));
        }
        while let Some(p) = tx.pop(MAX_PKT_DATA) {
            if p.hdr.op == Op::CreditUpdate {
                credit_seen = p.hdr.fwd_cnt;
            }
        }
    }
    got
}

fn sum(b: &[u8]) -> u64 {
    b.iter().map(|&x| u64::from(x)).sum()
}

#[test]
fn two_ports_exchange_a_connection_with_data_both_ways() {
    let (srv, path) = server("exchange");
    let a = RouterPort::connect(&path, 3).unwrap();
    let b = RouterPort::connect(&path, 4).unwrap();
    establish(&a, &b, A, 64 << 10);
    let to_b: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let to_a: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 253) as u8).collect();
    let got_b = transfer(&a, &b, A, B, &to_b);
    assert_eq!((got_b.len(), sum(&got_b)), (to_b.len(), sum(&to_b)));
    assert!(got_b == to_b);
    let got_a = transfer(&b, &a, B, A, &to_a);
    assert_eq!((got_a.len(), sum(&got_a)), (to_a.len(), sum(&to_a)));
    assert!(got_a == to_a);
    // a closes; b acknowledges with RST.
    let mut shut = ctl(Op::Shutdown, A, B, 64 << 10, 0);
    shut.hdr.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    fwd(&a, shut);
    pop_until(&b, MAX_PKT_DATA, |p| p.hdr.op == Op::Shutdown);
    fwd(&b, ctl(Op::Rst, B, A, 0, 0));
    let got = pop_until(&a, MAX_PKT_DATA, |p| p.hdr.op == Op::Rst);
    assert_eq!(got.last().unwrap().hdr.src_port, 80);
    wait_until("nothing held", || srv.held() == RouterHeld::default());
    let s = srv.stats();
    assert_eq!(s.bytes, (to_a.len() + to_b.len()) as u64);
    assert_eq!((s.refused, s.credit_violations, s.malformed), (0, 0, 0));
    assert!(!a.has_packet() && !b.has_packet());
}

#[test]
fn pop_splits_a_big_rw_packet_to_fit() {
    let (_srv, path) = server("split");
    let a = RouterPort::connect(&path, 3).unwrap();
    let b = RouterPort::connect(&path, 4).unwrap();
    establish(&a, &b, A, 64 << 10);
    let data: Vec<u8> = (0..MAX_PKT_DATA as u32).map(|i| (i % 249) as u8).collect();
    fwd(&a, rw(A, B, &data));
    wait_until("the packet", || b.has_packet());
    let mut got = Vec::new();
    while got.len() < data.len() {
        assert!(b.has_packet());
        let p = b.pop(4096).unwrap();
        assert_eq!(p.hdr.op, Op::Rw);
        assert_eq!(p.data.len(), 4096);
        assert_eq!(p.hdr.len as usize, p.data.len());
        assert_eq!((p.hdr.src_port, p.hdr.dst_port), (1000, 80));
        got.extend_from_slice(&p.data);
    }
    assert!(got == data);
    assert!(!b.has_packet());
    assert!(b.pop(4096).is_none());
}

#[test]
fn a_peer_whose_connection_closes_leaves_rst() {
    let (srv, path) = server("peerclose");
    let a = RouterPort::connect(&path, 3).unwrap();
    let b = RouterPort::connect(&path, 4).unwrap();
    establish(&a, &b, A, 64 << 10);
    drop(b);
    let got = pop_until(&a, MAX_PKT_DATA, |p| p.hdr.op == Op::Rst);
    let rst = got.last().unwrap().hdr;
    assert_eq!((rst.src_cid, rst.src_port, rst.dst_port), (4, 80, 1000));
    wait_until("the close counted", || srv.stats().left_conns == 1);
    assert_eq!(srv.held(), RouterHeld::default());
    // CID 4 is free again; a's packets to it now come back as RST.
    fwd(&a, ctl(Op::Request, (3, 1001), B, 4096, 0));
    let got = pop_until(&a, MAX_PKT_DATA, |p| p.hdr.op == Op::Rst);
    assert_eq!(got.last().unwrap().hdr.dst_port, 1001);
    let b = RouterPort::connect(&path, 4).unwrap();
    establish(&a, &b, (3, 1002), 4096);
}

fn closed_soon(s: &FrameSocket) -> bool {
    let mut b = [0u8; 64];
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match s.recv(&mut b).unwrap() {
            Recv::Closed => return true,
            Recv::Empty => std::thread::sleep(Duration::from_millis(1)),
            Recv::Frame(_) => return false,
        }
    }
    false
}

fn raw_send(s: &FrameSocket, b: &[u8]) {
    assert_eq!(s.send(b).unwrap(), Send::Sent);
}

#[test]
fn garbage_from_a_client_breaks_nothing() {
    let (srv, path) = server("garbage");
    let a = RouterPort::connect(&path, 3).unwrap();
    // No hello, or a hello for a CID that is not a guest's: closed.
    let g = FrameSocket::connect(&path).unwrap();
    raw_send(&g, b"hello?");
    assert!(closed_soon(&g));
    let g = FrameSocket::connect(&path).unwrap();
    raw_send(&g, &[0u8; 100]);
    assert!(closed_soon(&g));
    for cid in [0, 1, 2, u64::from(u32::MAX), u64::MAX] {
        let g = FrameSocket::connect(&path).unwrap();
        raw_send(&g, &wire::hello(cid));
        assert!(closed_soon(&g), "cid {cid}");
    }
    // A client with a hello, then malformed packets: dropped and counted.
    let g = FrameSocket::connect(&path).unwrap();
    raw_send(&g, &wire::hello(9));
    let mut b = vec![0u8; HDR_LEN + MAX_PKT_DATA + 1];
    wait_until("the welcome", || g.recv(&mut b).unwrap() == Recv::Frame(8));
    assert_eq!(&b[..8], &wire::WELCOME);
    let good = {
        let mut h = Header::new(Op::Request, (9, 5), (3, 6));
        h.buf_alloc = 4096;
        h.encode()
    };
    raw_send(&g, &[0u8; 10]);
    let mut bad_len = good.to_vec();
    bad_len[24] = 7;
    raw_send(&g, &bad_len);
    let mut spoof = good.to_vec();
    spoof[0] = 3; // src_cid 3 is a's
    raw_send(&g, &spoof);
    let mut bad_op = good.to_vec();
    bad_op[30] = 99;
    raw_send(&g, &bad_op);
    let mut huge = good.to_vec();
    huge.resize(HDR_LEN + MAX_PKT_DATA + 100, 0);
    huge[24..28].copy_from_slice(&((MAX_PKT_DATA + 100) as u32).to_le_bytes());
    huge[30] = 5; // RW
    raw_send(&g, &huge);
    raw_send(&g, &wire::RESET_DONE);
    raw_send(&g, &wire::hello(10));
    wait_until("the bad packets counted", || srv.stats().malformed == 7);
    // The connection stays; a packet of no connection is answered RST.
    let mut stray = good;
    stray[30] = 5; // RW without a connection
    raw_send(&g, &stray);
    wait_until("the RST", || {
        g.recv(&mut b).unwrap() == Recv::Frame(HDR_LEN)
    });
    let rst = Header::parse(&b[..HDR_LEN], 3).unwrap();
    assert_eq!((rst.op, rst.dst_cid, rst.dst_port), (Op::Rst, 9, 5));
    assert_eq!(srv.stats().refused, 1);
    // Nothing reached a, and the other ports work.
    assert!(!a.has_packet());
    let b4 = RouterPort::connect(&path, 4).unwrap();
    establish(&a, &b4, A, 4096);
    drop(g);
    wait_until("cid 9 gone", || srv.held().conns == 1);
}

#[test]
fn a_port_that_never_pops_costs_the_router_bounded_memory() {
    let (srv, path) = server("noread");
    let a = RouterPort::connect(&path, 3).unwrap();
    let b = RouterPort::connect(&path, 4).unwrap();
    // b answers without ever popping; it claims 4 GiB of buffer space.
    fwd(&a, ctl(Op::Request, A, B, u32::MAX, 0));
    fwd(&b, ctl(Op::Response, B, A, u32::MAX, 0));
    // a sends 1 MiB regardless of credit: the router resets it at 256 KiB.
    let chunk = vec![1u8; MAX_PKT_DATA];
    for _ in 0..16 {
        fwd(&a, rw(A, B, &chunk));
    }
    // A second connection, flooded with control packets.
    fwd(&a, ctl(Op::Request, (3, 1001), B, 4096, 0));
    fwd(&b, ctl(Op::Response, B, (3, 1001), 4096, 0));
    for _ in 0..2 * INBOX_MAX_CONTROL {
        fwd(&a, ctl(Op::CreditRequest, (3, 1001), B, 4096, 0));
    }
    wait_until("the flood counted", || {
        let s = srv.stats();
        s.credit_violations == 1 && s.control_dropped > 0
    });
    // Let the thread finish what it read, then look.
    std::thread::sleep(Duration::from_millis(50));
    let held = srv.held();
    // Data: at most the clamped credit; packets: two bounded inboxes (a
    // never pops either), the data packets, one unsent one per connection.
    assert!(held.bytes <= G2G_MAX_CREDIT as usize, "{held:?}");
    assert!(held.packets <= 2 * INBOX_MAX_CONTROL + 4 + 2, "{held:?}");
    drop(b);
    drop(a);
    wait_until("everything freed", || srv.held() == RouterHeld::default());
}

#[test]
fn a_taken_or_invalid_cid_is_refused() {
    let (_srv, path) = server("dup");
    let a = RouterPort::connect(&path, 3).unwrap();
    let e = RouterPort::connect(&path, 3).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused);
    assert!(e.to_string().contains("refused CID 3"), "{e}");
    let e = RouterPort::connect(&path, 2).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    let e = RouterPort::connect(&path.with_extension("none"), 5)
        .err()
        .unwrap();
    assert!(e.to_string().contains("is the router running"), "{e}");
    // Once a is gone, its CID is free.
    drop(a);
    wait_until("cid 3 free", || RouterPort::connect(&path, 3).is_ok());
}

#[test]
fn stop_closes_the_ports_and_removes_the_socket_file() {
    let (srv, path) = server("stop");
    assert_eq!(srv.socket(), path.as_path());
    // A second router on a live socket is refused.
    let e = RouterServer::bind(&path).err().unwrap();
    assert!(e.to_string().contains("in use"), "{e}");
    let a = RouterPort::connect(&path, 3).unwrap();
    assert!(path.exists());
    srv.stop();
    assert!(!path.exists());
    // The closed socket is readable: the device looks (has_packet) and learns it.
    wait_until("a sees the router gone", || poll_in(&a));
    assert!(!a.has_packet());
    assert!(!a.wake_armed(), "a gone router's socket must not be polled");
    assert_eq!(
        a.forward(ctl(Op::Request, A, B, 4096, 0)),
        Err(RouteError::RouterGone)
    );
    assert!(!a.has_packet());
    // A leftover socket file is replaced.
    let stale = std::os::unix::net::UnixListener::bind(&path).unwrap();
    drop(stale);
    let srv = RouterServer::bind(&path).unwrap();
    drop(srv);
    assert!(!Path::new(&path).exists());
}

#[test]
fn a_reset_drops_what_was_queued_before_it() {
    let (srv, path) = server("reset");
    let a = RouterPort::connect(&path, 3).unwrap();
    let b = RouterPort::connect(&path, 4).unwrap();
    establish(&a, &b, A, 64 << 10);
    fwd(&a, rw(A, B, b"stale"));
    wait_until("the packet in b's socket", || {
        srv.held().packets == 0 && poll_in(&b)
    });
    b.reset();
    // a's side learns of it; b gets nothing that was queued before.
    pop_until(&a, MAX_PKT_DATA, |p| p.hdr.op == Op::Rst);
    wait_until("b's reset done", || {
        let _ = b.has_packet();
        srv.held().conns == 0
    });
    std::thread::sleep(Duration::from_millis(20));
    assert!(b.pop(MAX_PKT_DATA).is_none());
    // New connections after the reset arrive.
    establish(&a, &b, (3, 1001), 4096);
}

fn poll_in(p: &RouterPort) -> bool {
    let mut fd = libc::pollfd {
        fd: p.wake_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the call.
    unsafe { libc::poll(&mut fd, 1, 0) == 1 }
}

#[test]
fn the_socket_is_the_wake_descriptor() {
    let (_srv, path) = server("wake");
    let a = RouterPort::connect(&path, 3).unwrap();
    let b = RouterPort::connect(&path, 4).unwrap();
    assert!(!poll_in(&b));
    assert!(b.wake_armed());
    fwd(&a, ctl(Op::Request, A, B, 4096, 0));
    wait_until("b readable", || poll_in(&b));
    b.clear_wake();
    // Asking must not take the packet out of the socket: the device would then hold it
    // with nothing left to wake it (CI saw a guest-to-guest stream stall for good on a
    // credit update taken like that). Still armed, still readable.
    assert!(b.wake_armed());
    assert!(b.wake_armed());
    assert!(poll_in(&b));
    // Once the device looked and holds the packet the guest has no buffer for: not armed.
    assert!(b.has_packet());
    assert!(!b.wake_armed());
    assert!(b.pop(MAX_PKT_DATA).is_some());
    assert!(b.wake_armed());
    assert_eq!(b.wake_fd(), {
        let PortKind::Socket(s) = &b.kind else {
            panic!()
        };
        s.as_raw_fd()
    });
}

#[test]
fn a_full_socket_is_written_again_once_its_port_reads() {
    let (srv, path) = server("full");
    let a = RouterPort::connect(&path, 3).unwrap();
    let b = RouterPort::connect(&path, 4).unwrap();
    establish(&a, &b, A, 4096);
    // More control packets for b than its socket takes (its inbox takes them all).
    const N: usize = 900;
    for _ in 0..N {
        fwd(&a, ctl(Op::CreditRequest, A, B, 4096, 0));
    }
    wait_until("the router holding what b's socket did not take", || {
        srv.held().packets > 0
    });
    assert_eq!(srv.stats().control_dropped, 0);
    // b reads; nothing else happens, so only its socket's room wakes the router.
    let mut got = 0;
    pop_until(&b, MAX_PKT_DATA, |p| {
        got += usize::from(p.hdr.op == Op::CreditRequest);
        got == N
    });
    wait_until("no packet held", || srv.held().packets == 0);
}

#[test]
fn connections_that_come_and_go_leave_the_router_working() {
    let (srv, path) = server("churn");
    let a = RouterPort::connect(&path, 3).unwrap();
    // Each new connection likely gets the descriptor number of the one before.
    for round in 0..5u32 {
        let b = RouterPort::connect(&path, 4).unwrap();
        establish(&a, &b, (3, 2000 + round), 4096);
        drop(b);
        pop_until(&a, MAX_PKT_DATA, |p| p.hdr.op == Op::Rst);
        wait_until("b's leaving counted", || {
            srv.stats().left_conns == u64::from(round) + 1
        });
    }
    assert_eq!(srv.held(), RouterHeld::default());
}
