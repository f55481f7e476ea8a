use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;

use virtio_driver_model::{NoIrq, SplitRing};
use virtio_mmio_transport::{ActivateContext, VirtioDevice};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::conn::{HostAction, HostConns, HOST_BUF_ALLOC, MAX_HOST_CONNS, TO_GUEST_CAP};
use crate::packet::*;
use crate::router::{LocalRouter, RouteError, Router, G2G_MAX_CREDIT};
use crate::*;

const GUEST: u64 = 3;

fn decode(b: &[u8]) -> Packet {
    let mut c = [0u8; 8];
    c.copy_from_slice(&b[0..8]);
    let hdr = Header::parse(b, u64::from_le_bytes(c)).unwrap();
    Packet {
        hdr,
        data: b[HDR_LEN..].to_vec(),
    }
}

fn raw(h: &Header, data: &[u8]) -> Vec<u8> {
    let mut v = h.encode().to_vec();
    v.extend_from_slice(data);
    v
}

fn gh(op: Op, src_port: u32, dst: (u64, u32)) -> Header {
    let mut h = Header::new(op, (GUEST, src_port), dst);
    h.buf_alloc = 1 << 20;
    h
}

// ---- packet ----

#[test]
fn header_round_trip_and_every_malformed_field_is_refused() {
    let mut h = gh(Op::Rw, 1000, (HOST_CID, 5000));
    h.len = 3;
    h.flags = 0;
    let b = raw(&h, b"abc");
    assert_eq!(Header::parse(&b, GUEST).unwrap(), h);
    assert_eq!(Header::parse(&b[..10], GUEST), Err(PacketError::Short(10)));
    // len says 3, 2 follow; len says 3, 4 follow.
    assert!(matches!(
        Header::parse(&b[..HDR_LEN + 2], GUEST),
        Err(PacketError::BadLen { hdr: 3, actual: 2 })
    ));
    let mut long = b.clone();
    long.push(0);
    assert!(matches!(
        Header::parse(&long, GUEST),
        Err(PacketError::BadLen { .. })
    ));
    let mut big = h;
    big.len = (MAX_PKT_DATA + 1) as u32;
    let b2 = raw(&big, &vec![0u8; MAX_PKT_DATA + 1]);
    assert!(matches!(
        Header::parse(&b2, GUEST),
        Err(PacketError::TooLong(_))
    ));
    let mut unknown = b.clone();
    unknown[30] = 9;
    assert_eq!(
        Header::parse(&unknown, GUEST),
        Err(PacketError::UnknownOp(9))
    );
    unknown[30] = 0;
    assert_eq!(
        Header::parse(&unknown, GUEST),
        Err(PacketError::UnknownOp(0))
    );
    let mut seqpacket = b.clone();
    seqpacket[28] = 2;
    assert_eq!(
        Header::parse(&seqpacket, GUEST),
        Err(PacketError::BadType(2))
    );
    let mut ctl = gh(Op::Request, 1, (HOST_CID, 2));
    ctl.len = 1;
    assert_eq!(
        Header::parse(&raw(&ctl, b"x"), GUEST),
        Err(PacketError::DataOnControl(Op::Request, 1))
    );
    assert_eq!(
        Header::parse(&b, 4),
        Err(PacketError::WrongSrcCid { got: 3, want: 4 })
    );
}

#[test]
fn split_front_keeps_the_header_and_adjusts_len() {
    let mut h = gh(Op::Rw, 1, (4, 2));
    h.len = 10;
    let mut p = Packet {
        hdr: h,
        data: (0..10).collect(),
    };
    let a = p.split_front(4).unwrap();
    assert_eq!((a.hdr.len, a.data), (4, vec![0, 1, 2, 3]));
    assert_eq!((p.hdr.len, p.data.len()), (6, 6));
    assert!(p.split_front(6).is_none());
}

// ---- connection state machine ----

/// Host connects to guest port 52; the guest accepts.
fn host_initiated(c: &mut HostConns, stream: u64) -> Header {
    assert!(c.host_connect(stream, 52));
    let req = c.next_to_guest(4096).unwrap();
    assert_eq!(req.hdr.op, Op::Request);
    assert_eq!(
        (req.hdr.src_cid, req.hdr.dst_cid, req.hdr.dst_port),
        (HOST_CID, GUEST, 52)
    );
    assert_eq!(req.hdr.buf_alloc, HOST_BUF_ALLOC);
    let mut resp = gh(Op::Response, 52, (HOST_CID, req.hdr.src_port));
    resp.buf_alloc = 8192;
    c.from_guest(Packet::control(resp));
    let ok = format!("OK {}\n", req.hdr.src_port);
    assert_eq!(c.to_host(stream), ok.as_bytes());
    c.host_written(stream, ok.len());
    resp
}

fn rw(h: &Header, data: &[u8]) -> Packet {
    let mut hdr = *h;
    hdr.op = Op::Rw;
    hdr.len = data.len() as u32;
    Packet {
        hdr,
        data: data.to_vec(),
    }
}

#[test]
fn host_connect_response_data_both_ways_and_close() {
    let mut c = HostConns::new(GUEST);
    let g = host_initiated(&mut c, 16);
    // The OK line is not guest data: no credit was used.
    assert_eq!(c.stats().bytes_to_host, 0);
    c.from_guest(rw(&g, b"hello host"));
    assert_eq!(c.to_host(16), b"hello host");
    c.host_written(16, 10);
    // Everything written: the guest learns its credit back.
    let cu = c.next_to_guest(4096).unwrap();
    assert_eq!((cu.hdr.op, cu.hdr.fwd_cnt), (Op::CreditUpdate, 10));
    // Host -> guest within the guest's 8 KiB credit.
    assert_eq!(c.read_allowance(16), 8192);
    c.host_data(16, &[7u8; 5000]);
    assert_eq!(c.read_allowance(16), 8192 - 5000);
    let d = c.next_to_guest(4096).unwrap();
    assert_eq!((d.hdr.op, d.data.len()), (Op::Rw, 4096));
    let d = c.next_to_guest(4096).unwrap();
    assert_eq!(d.data.len(), 904);
    // The guest consumed it and says so.
    let mut up = g;
    up.op = Op::CreditUpdate;
    up.buf_alloc = 8192;
    up.fwd_cnt = 5000;
    c.from_guest(Packet::control(up));
    assert_eq!(c.read_allowance(16), 8192);
    // The host ends its side: SHUTDOWN(SEND) to the guest.
    c.host_eof(16);
    let sd = c.next_to_guest(4096).unwrap();
    assert_eq!((sd.hdr.op, sd.hdr.flags), (Op::Shutdown, SHUTDOWN_SEND));
    // The guest closes: RST back, stream closed, nothing held.
    let mut shut = g;
    shut.op = Op::Shutdown;
    shut.flags = SHUTDOWN_SEND | SHUTDOWN_RCV;
    c.from_guest(Packet::control(shut));
    assert_eq!(c.next_to_guest(4096).unwrap().hdr.op, Op::Rst);
    assert_eq!(c.take_actions(), vec![HostAction::Close { stream: 16 }]);
    assert_eq!(c.held(), Held::default());
    assert!(c.next_to_guest(4096).is_none());
}

#[test]
fn guest_beyond_the_credit_is_reset_and_host_buffering_stays_bounded() {
    let mut c = HostConns::new(GUEST);
    let g = host_initiated(&mut c, 16);
    // The host never writes: the guest may send HOST_BUF_ALLOC bytes.
    let chunk = vec![1u8; MAX_PKT_DATA];
    for _ in 0..(HOST_BUF_ALLOC as usize / MAX_PKT_DATA) {
        c.from_guest(rw(&g, &chunk));
    }
    assert_eq!(c.held().to_host_bytes, HOST_BUF_ALLOC as usize);
    c.from_guest(rw(&g, b"one more"));
    assert_eq!(c.stats().credit_violations, 1);
    assert_eq!(c.next_to_guest(4096).unwrap().hdr.op, Op::Rst);
    assert_eq!(c.take_actions(), vec![HostAction::Close { stream: 16 }]);
    assert_eq!(c.held(), Held::default());
}

#[test]
fn a_guest_that_never_reads_stops_host_reads() {
    let mut c = HostConns::new(GUEST);
    let mut g = host_initiated(&mut c, 16);
    // A guest advertising 4 GiB of credit: the host side still holds at
    // most TO_GUEST_CAP bytes for it while it posts no receive buffers.
    g.op = Op::CreditUpdate;
    g.buf_alloc = u32::MAX;
    c.from_guest(Packet::control(g));
    let mut held = 0;
    for _ in 0..100 {
        let n = c.read_allowance(16);
        c.host_data(16, &vec![0u8; n]);
        held += n;
    }
    assert_eq!(held, TO_GUEST_CAP);
    assert_eq!(c.read_allowance(16), 0);
    assert_eq!(c.held().to_guest_bytes, TO_GUEST_CAP);
    // With the real credit (8 KiB) it stops at 8 KiB and asks for more.
    let mut c = HostConns::new(GUEST);
    host_initiated(&mut c, 16);
    c.host_data(16, &vec![0u8; 9000]);
    assert_eq!(c.held().to_guest_bytes, 8192);
    assert_eq!(c.stats().protocol_errors, 1);
    assert_eq!(c.next_to_guest(8192).unwrap().data.len(), 8192);
    assert_eq!(c.next_to_guest(8192).unwrap().hdr.op, Op::CreditRequest);
    assert!(c.next_to_guest(8192).is_none());
}

#[test]
fn guest_initiated_connections_connect_or_reset() {
    let mut c = HostConns::new(GUEST);
    c.from_guest(Packet::control(gh(Op::Request, 700, (HOST_CID, 9000))));
    let actions = c.take_actions();
    let [HostAction::Connect { stream, port: 9000 }] = actions[..] else {
        panic!("{actions:?}");
    };
    c.host_connected(stream, true);
    assert_eq!(c.next_to_guest(0).unwrap().hdr.op, Op::Response);
    // A second REQUEST on the open connection is a protocol error.
    c.from_guest(Packet::control(gh(Op::Request, 700, (HOST_CID, 9000))));
    assert_eq!(c.next_to_guest(0).unwrap().hdr.op, Op::Rst);
    assert_eq!(c.take_actions(), vec![HostAction::Close { stream }]);
    // Nobody listens: RST.
    c.from_guest(Packet::control(gh(Op::Request, 701, (HOST_CID, 9001))));
    let [HostAction::Connect { stream, .. }] = c.take_actions()[..] else {
        panic!()
    };
    c.host_connected(stream, false);
    let r = c.next_to_guest(0).unwrap();
    assert_eq!(
        (r.hdr.op, r.hdr.dst_port, r.hdr.src_port),
        (Op::Rst, 701, 9001)
    );
    assert_eq!(c.stats().conns_refused, 1);
}

#[test]
fn packets_of_unknown_connections_get_rst_and_rst_gets_nothing() {
    let mut c = HostConns::new(GUEST);
    for op in [
        Op::Rw,
        Op::Response,
        Op::Shutdown,
        Op::CreditUpdate,
        Op::CreditRequest,
    ] {
        c.from_guest(Packet::control(gh(op, 1, (HOST_CID, 2))));
        assert_eq!(c.next_to_guest(0).unwrap().hdr.op, Op::Rst, "{op:?}");
    }
    c.from_guest(Packet::control(gh(Op::Rst, 1, (HOST_CID, 2))));
    assert!(c.next_to_guest(0).is_none());
    // Replies are bounded: a flood of them is dropped and counted.
    for _ in 0..1000 {
        c.from_guest(Packet::control(gh(Op::Rw, 1, (HOST_CID, 2))));
    }
    assert_eq!(c.held().replies, crate::conn::MAX_ORPHAN_REPLIES);
    assert!(c.stats().orphan_replies_dropped > 0);
}

#[test]
fn connections_are_bounded_and_reset_frees_everything() {
    let mut c = HostConns::new(GUEST);
    for p in 0..MAX_HOST_CONNS as u32 + 5 {
        c.from_guest(Packet::control(gh(Op::Request, p, (HOST_CID, 1))));
    }
    assert_eq!(c.held().conns, MAX_HOST_CONNS);
    assert_eq!(c.stats().conns_refused, 5);
    assert!(!c.host_connect(99, 1));
    c.take_actions();
    c.reset();
    let closes = c.take_actions();
    assert_eq!(closes.len(), MAX_HOST_CONNS);
    assert_eq!(c.held(), Held::default());
}

// ---- router ----

fn route_pair() -> Router {
    let mut r = Router::default();
    r.add(3);
    r.add(4);
    r
}

#[test]
fn router_forwards_clamps_credit_and_resets_a_sender_beyond_it() {
    let mut r = route_pair();
    let mut req = Header::new(Op::Request, (3, 100), (4, 200));
    req.buf_alloc = 1 << 30;
    assert_eq!(r.forward(Packet::control(req)).unwrap(), vec![4]);
    let got = r.pop(4, 4096).unwrap();
    assert_eq!(got.hdr.buf_alloc, G2G_MAX_CREDIT);
    let mut resp = req.reply(Op::Response);
    resp.buf_alloc = u32::MAX;
    r.forward(Packet::control(resp)).unwrap();
    assert_eq!(r.pop(3, 4096).unwrap().hdr.buf_alloc, G2G_MAX_CREDIT);
    // 3 may send G2G_MAX_CREDIT bytes while 4 reads nothing.
    let chunk = vec![5u8; MAX_PKT_DATA];
    for _ in 0..(G2G_MAX_CREDIT as usize / MAX_PKT_DATA) {
        r.forward(rw(&req, &chunk)).unwrap();
    }
    assert_eq!(r.held().bytes, G2G_MAX_CREDIT as usize);
    assert_eq!(r.forward(rw(&req, b"x")), Err(RouteError::CreditViolation));
    assert_eq!(r.stats().credit_violations, 1);
    assert_eq!(r.held().conns, 0);
    // 4 gets the data split to its buffer size, then the RST.
    let mut n = 0;
    while let Some(p) = r.pop(4, 4096) {
        if p.hdr.op == Op::Rst {
            assert_eq!(n, G2G_MAX_CREDIT as usize);
            break;
        }
        assert!(p.data.len() <= 4096 && p.hdr.len as usize == p.data.len());
        n += p.data.len();
    }
    assert_eq!(r.held(), Default::default());
}

#[test]
fn router_refuses_unknown_self_and_connectionless() {
    let mut r = route_pair();
    let h = Header::new(Op::Request, (3, 1), (9, 1));
    assert_eq!(
        r.forward(Packet::control(h)),
        Err(RouteError::UnknownCid(9))
    );
    let h = Header::new(Op::Request, (3, 1), (3, 2));
    assert_eq!(r.forward(Packet::control(h)), Err(RouteError::SelfCid));
    let h = Header::new(Op::Rw, (3, 1), (4, 2));
    assert_eq!(r.forward(rw(&h, b"x")), Err(RouteError::NoConnection));
    // RW before RESPONSE is beyond any credit.
    r.forward(Packet::control(Header::new(Op::Request, (3, 1), (4, 2))))
        .unwrap();
    assert_eq!(r.forward(rw(&h, b"x")), Err(RouteError::CreditViolation));
}

#[test]
fn router_reset_of_a_guest_resets_its_peers() {
    let mut r = route_pair();
    let req = Header::new(Op::Request, (3, 1), (4, 2));
    r.forward(Packet::control(req)).unwrap();
    assert_eq!(r.reset(4), vec![3]);
    let rst = r.pop(3, 0).unwrap();
    assert_eq!(
        (rst.hdr.op, rst.hdr.src_cid, rst.hdr.dst_port),
        (Op::Rst, 4, 1)
    );
    assert_eq!(r.held(), Default::default());
}

// ---- the device with real sockets ----

const RAM: usize = 0x40_0000;
const QSIZE: u16 = 16;
const TX_BUFS: u64 = 0x1_0000;
const RX_BUFS: u64 = 0x20_0000;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const RX_BUF_LEN: u32 = HDR_LEN as u32 + 4096;

struct Rig {
    dev: Vsock,
    mem: GuestMemoryMmap,
    rx: SplitRing,
    tx: SplitRing,
    rx_free: Vec<u16>,
    next_tx: u16,
}

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vsock-test-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

impl Rig {
    fn new(cid: u64, host: HostSide, router: Option<RouterPort>) -> Self {
        let mut dev = Vsock::new(cid, host, router).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM)]).unwrap();
        let rx = SplitRing::new(0, QSIZE);
        let tx = SplitRing::new(0x1000, QSIZE);
        let ev = SplitRing::new(0x2000, QSIZE);
        dev.activate(ActivateContext {
            mem: mem.clone(),
            queues: vec![
                rx.queue().unwrap(),
                tx.queue().unwrap(),
                ev.queue().unwrap(),
            ],
            interrupt: Arc::new(NoIrq),
            acked_features: virtio_mmio_transport::VIRTIO_F_VERSION_1,
        })
        .unwrap();
        Rig {
            dev,
            mem,
            rx,
            tx,
            rx_free: (0..QSIZE).collect(),
            next_tx: 0,
        }
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        let d = self.next_tx;
        self.next_tx = (self.next_tx + 2) % QSIZE;
        let a = TX_BUFS + u64::from(d) * 0x1_0000;
        let (h, rest) = bytes.split_at(bytes.len().min(HDR_LEN));
        self.mem.write_slice(h, GuestAddress(a)).unwrap();
        self.mem.write_slice(rest, GuestAddress(a + 0x100)).unwrap();
        self.tx
            .set_desc(&self.mem, d, a, h.len() as u32, F_NEXT, d + 1);
        self.tx
            .set_desc(&self.mem, d + 1, a + 0x100, rest.len() as u32, 0, 0);
        self.tx.make_available(&self.mem, d);
        self.dev.queue_notify(1);
        self.tx.take_used(&self.mem);
    }

    fn send(&mut self, h: Header, data: &[u8]) {
        let mut h = h;
        h.len = data.len() as u32;
        self.send_raw(&raw(&h, data));
    }

    fn post_rx(&mut self) {
        for i in std::mem::take(&mut self.rx_free) {
            let a = RX_BUFS + u64::from(i) * 0x2000;
            self.rx.set_desc(&self.mem, i, a, RX_BUF_LEN, F_WRITE, 0);
            self.rx.make_available(&self.mem, i);
        }
    }

    /// Posts buffers, lets the device run, returns what it delivered.
    fn recv(&mut self) -> Vec<Packet> {
        self.post_rx();
        self.dev.queue_notify(0);
        self.dev.process_backend();
        let mut out = Vec::new();
        for (head, len) in self.rx.take_used(&self.mem) {
            let mut b = vec![0u8; len as usize];
            self.mem
                .read_slice(&mut b, GuestAddress(RX_BUFS + u64::from(head) * 0x2000))
                .unwrap();
            out.push(decode(&b));
            self.rx_free.push(head);
        }
        out
    }

    fn recv_until(&mut self, mut f: impl FnMut(&Packet) -> bool) -> Vec<Packet> {
        let mut all = Vec::new();
        for _ in 0..2000 {
            let got = self.recv();
            let done = got.iter().any(&mut f);
            all.extend(got);
            if done {
                return all;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        panic!("the packet never came; got {all:?}");
    }

    /// A host program connects to the device's socket at `path` and asks
    /// for port 52; the guest accepts with `buf_alloc`. Returns the host's
    /// stream (past the `OK` line) and the guest's RESPONSE header.
    fn host_connect(&mut self, path: &std::path::Path, buf_alloc: u32) -> (UnixStream, Header) {
        let mut host = UnixStream::connect(path).unwrap();
        host.write_all(b"CONNECT 52\n").unwrap();
        let got = self.recv_until(|p| p.hdr.op == Op::Request);
        let req = got.iter().find(|p| p.hdr.op == Op::Request).unwrap().hdr;
        assert_eq!((req.dst_port, req.dst_cid), (52, GUEST));
        let mut resp = req.reply(Op::Response);
        resp.buf_alloc = buf_alloc;
        self.send(resp, &[]);
        self.dev.process_backend();
        let want = format!("OK {}\n", req.src_port);
        let mut line = vec![0u8; want.len()];
        host.read_exact(&mut line).unwrap();
        assert_eq!(line, want.as_bytes());
        (host, resp)
    }
}

#[test]
fn host_connects_over_the_unix_socket_and_data_flows_both_ways() {
    let dir = tmp("host");
    let path = dir.join("v.sock");
    let mut rig = Rig::new(GUEST, HostSide::listen(&path, None).unwrap(), None);
    let (mut host, resp) = rig.host_connect(&path, 1 << 20);
    let mut line = [0u8; 64];
    // 1 MiB host -> guest with a checksum, in 4 KiB receive buffers.
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
    let writer = {
        let mut h = host.try_clone().unwrap();
        let d = data.clone();
        std::thread::spawn(move || h.write_all(&d).unwrap())
    };
    let mut got = Vec::new();
    let mut fwd = 0u32;
    while got.len() < data.len() {
        for p in rig.recv() {
            assert!(p.data.len() <= 4096);
            got.extend_from_slice(&p.data);
            fwd += p.data.len() as u32;
        }
        // The guest reads and returns credit.
        let mut cu = resp;
        cu.op = Op::CreditUpdate;
        cu.fwd_cnt = fwd;
        rig.send(cu, &[]);
    }
    writer.join().unwrap();
    assert!(got == data);
    // Guest -> host.
    rig.send(Header { op: Op::Rw, ..resp }, b"echo");
    rig.dev.process_backend();
    let mut four = [0u8; 4];
    host.read_exact(&mut four).unwrap();
    assert_eq!(&four, b"echo");
    // A bad CONNECT line is closed; so is the socket file at the end.
    let mut bad = UnixStream::connect(&path).unwrap();
    bad.write_all(b"CONNECT x\n").unwrap();
    rig.dev.process_backend();
    assert_eq!(bad.read(&mut line).unwrap(), 0);
    drop(rig);
    assert!(!path.exists());
}

#[test]
fn guest_connects_to_the_host_listener_at_socket_underscore_port() {
    let dir = tmp("guest");
    let path = dir.join("v.sock");
    let listener = UnixListener::bind(dir.join("v.sock_5000")).unwrap();
    let mut rig = Rig::new(GUEST, HostSide::listen(&path, None).unwrap(), None);
    let req = gh(Op::Request, 1234, (HOST_CID, 5000));
    rig.send(req, &[]);
    let got = rig.recv_until(|p| p.hdr.op == Op::Response);
    assert_eq!(got.last().unwrap().hdr.dst_port, 1234);
    let (mut s, _) = listener.accept().unwrap();
    rig.send(Header { op: Op::Rw, ..req }, b"ping");
    let mut b = [0u8; 4];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ping");
    s.write_all(b"pong").unwrap();
    let got = rig.recv_until(|p| p.hdr.op == Op::Rw);
    assert_eq!(got.last().unwrap().data, b"pong");
    // Nobody at port 5001: RST.
    rig.send(gh(Op::Request, 1235, (HOST_CID, 5001)), &[]);
    let got = rig.recv_until(|p| p.hdr.op == Op::Rst);
    assert_eq!(got.last().unwrap().hdr.dst_port, 1235);
    // The guest closes: RST back and nothing held.
    let mut shut = req;
    shut.op = Op::Shutdown;
    shut.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    rig.send(shut, &[]);
    rig.recv_until(|p| p.hdr.op == Op::Rst);
    assert_eq!(rig.dev.held(), (Held::default(), 0));
    assert_eq!(s.read(&mut b).unwrap(), 0);
}

#[test]
fn malformed_packets_are_counted_answered_and_never_reach_the_host() {
    let dir = tmp("bad");
    let mut rig = Rig::new(
        GUEST,
        HostSide::listen(&dir.join("v.sock"), None).unwrap(),
        None,
    );
    let h = gh(Op::Request, 1, (HOST_CID, 7));
    // Wrong source CID: dropped without answer.
    let mut spoof = h;
    spoof.src_cid = 4;
    rig.send(spoof, &[]);
    // Unknown op, bad type, bad length, short: counted; RST where possible.
    let mut b = raw(&h, &[]);
    b[30] = 42;
    rig.send_raw(&b);
    let mut b = raw(&h, &[]);
    b[28] = 2;
    rig.send_raw(&b);
    let mut b = raw(&h, &[1, 2, 3]);
    b[24] = 200;
    rig.send_raw(&b);
    rig.send_raw(&[0u8; 10]);
    // To itself, to a reserved CID, to another guest without a router.
    rig.send(gh(Op::Request, 2, (GUEST, 7)), &[]);
    rig.send(gh(Op::Request, 3, (1, 7)), &[]);
    rig.send(gh(Op::Request, 4, (9, 7)), &[]);
    assert_eq!(rig.dev.stats().tx_bad, 5);
    assert_eq!(rig.dev.stats().refused, 3);
    let got = rig.recv();
    assert!(got.iter().all(|p| p.hdr.op == Op::Rst), "{got:?}");
    assert_eq!(got.len(), 6);
    assert_eq!(rig.dev.held(), (Held::default(), 0));
}

#[test]
fn guest_to_guest_through_the_router_with_checksums() {
    let router = LocalRouter::new();
    let pa = router.port(3).unwrap();
    let pb = router.port(4).unwrap();
    let ha = HostSide::without_socket(Some(pa.wake_fd())).unwrap();
    let hb = HostSide::without_socket(Some(pb.wake_fd())).unwrap();
    let mut a = Rig::new(3, ha, Some(pa));
    let mut b = Rig::new(4, hb, Some(pb));
    let mut req = Header::new(Op::Request, (3, 1000), (4, 80));
    req.buf_alloc = 64 << 10;
    a.send(req, &[]);
    let got = b.recv_until(|p| p.hdr.op == Op::Request);
    let mut resp = got[0].hdr.reply(Op::Response);
    resp.buf_alloc = 64 << 10;
    b.send(resp, &[]);
    a.recv_until(|p| p.hdr.op == Op::Response);
    // 1 MiB a -> b in 16 KiB packets, credit returned by b.
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 253) as u8).collect();
    let (mut sent, mut fwd, mut got) = (0usize, 0u32, Vec::new());
    while got.len() < data.len() {
        while sent < data.len() && sent - fwd as usize + 16384 <= 64 << 10 {
            a.send(Header { op: Op::Rw, ..req }, &data[sent..sent + 16384]);
            sent += 16384;
        }
        for p in b.recv() {
            got.extend_from_slice(&p.data);
            fwd += p.data.len() as u32;
        }
        let mut cu = resp;
        cu.op = Op::CreditUpdate;
        cu.fwd_cnt = fwd;
        b.send(cu, &[]);
        a.recv();
    }
    assert!(got == data);
    assert_eq!(router.held().bytes, 0);
    // b's driver resets: a's side gets RST.
    b.dev.reset();
    a.recv_until(|p| p.hdr.op == Op::Rst);
    assert_eq!(router.held(), Default::default());
}

#[test]
fn a_guest_that_posts_no_receive_buffers_costs_bounded_memory() {
    let dir = tmp("noread");
    let path = dir.join("v.sock");
    let mut rig = Rig::new(GUEST, HostSide::listen(&path, None).unwrap(), None);
    // The guest claims 4 GiB of buffer space and then never reads.
    let (mut host, _) = rig.host_connect(&path, u32::MAX);
    host.set_nonblocking(true).unwrap();
    let chunk = vec![7u8; 64 << 10];
    let mut written = 0usize;
    for _ in 0..200 {
        match host.write(&chunk) {
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("{e}"),
        }
        rig.dev.process_backend();
    }
    // What the device holds stays at the cap; the rest waits in the host's
    // socket buffer, and the host's writes stop.
    let (held, streams) = rig.dev.held();
    assert_eq!(streams, 1);
    assert!(held.to_guest_bytes <= TO_GUEST_CAP, "{held:?}");
    assert!(
        written < 200 * chunk.len(),
        "the host could write {written} bytes"
    );
    let delivered: usize = rig
        .rx
        .take_used(&rig.mem)
        .iter()
        .map(|(_, len)| *len as usize)
        .sum();
    assert!(delivered <= usize::from(QSIZE) * RX_BUF_LEN as usize);
}

#[test]
fn a_live_socket_is_not_taken_over_but_a_stale_one_is_replaced() {
    let dir = tmp("inuse");
    let path = dir.join("v.sock");
    let first = HostSide::listen(&path, None).unwrap();
    let e = HostSide::listen(&path, None).err().unwrap();
    assert!(e.to_string().contains("is in use"), "{e}");
    // A leftover socket file nobody listens on.
    drop(first);
    let stale = UnixListener::bind(&path).unwrap();
    drop(stale);
    assert!(path.exists());
    HostSide::listen(&path, None).unwrap();
    let long = dir.join("x".repeat(120));
    let e = HostSide::listen(&long, None).err().unwrap();
    assert!(e.to_string().contains("too long"), "{e}");
}

#[test]
fn guest_to_guest_through_the_router_socket_without_spinning() {
    let dir = tmp("g2gsock");
    let server = RouterServer::bind(&dir.join("r.sock")).unwrap();
    let pa = RouterPort::connect(server.socket(), 3).unwrap();
    let pb = RouterPort::connect(server.socket(), 4).unwrap();
    let ha = HostSide::without_socket(Some(pa.wake_fd())).unwrap();
    let hb = HostSide::without_socket(Some(pb.wake_fd())).unwrap();
    let mut a = Rig::new(3, ha, Some(pa));
    let mut b = Rig::new(4, hb, Some(pb));
    let readable = |r: &Rig| {
        let mut fd = libc::pollfd {
            fd: r.dev.backend_fd().unwrap(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the call.
        unsafe { libc::poll(&mut fd, 1, 0) == 1 }
    };
    let mut req = Header::new(Op::Request, (3, 1000), (4, 80));
    req.buf_alloc = 64 << 10;
    a.send(req, &[]);
    a.send(
        Header {
            src_port: 1001,
            ..req
        },
        &[],
    );
    // b has posted no receive buffers yet: once its device looked, its
    // backend descriptor must go quiet (with one packet held and one still
    // in the socket), or the event loop would spin.
    for _ in 0..2000 {
        if readable(&b) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert!(readable(&b));
    b.dev.process_backend();
    assert!(!readable(&b));
    assert!(b.rx.take_used(&b.mem).is_empty());
    let got = b.recv_until(|p| p.hdr.op == Op::Request);
    let mut resp = got[0].hdr.reply(Op::Response);
    resp.buf_alloc = 64 << 10;
    b.send(resp, &[]);
    a.recv_until(|p| p.hdr.op == Op::Response);
    // 512 KiB a -> b in 16 KiB packets split into b's 4 KiB buffers, with
    // the credit a last heard of.
    let data: Vec<u8> = (0..512u32 << 10).map(|i| (i % 253) as u8).collect();
    let (mut sent, mut credit, mut got) = (0usize, 0u32, Vec::new());
    for _ in 0..20000 {
        if got.len() >= data.len() {
            break;
        }
        while sent < data.len() && sent - credit as usize + 16384 <= 64 << 10 {
            a.send(Header { op: Op::Rw, ..req }, &data[sent..sent + 16384]);
            sent += 16384;
        }
        let before = got.len();
        for p in b.recv() {
            assert!(p.data.len() <= 4096);
            got.extend_from_slice(&p.data);
        }
        if got.len() > before {
            let mut cu = resp;
            cu.op = Op::CreditUpdate;
            cu.fwd_cnt = got.len() as u32;
            b.send(cu, &[]);
        }
        for p in a.recv() {
            if p.hdr.op == Op::CreditUpdate {
                credit = p.hdr.fwd_cnt;
            }
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    assert!(got == data);
    assert_eq!(a.dev.stats().refused + b.dev.stats().refused, 0);
    // b's driver resets: a's side gets RST, the router holds nothing.
    b.dev.reset();
    a.recv_until(|p| p.hdr.op == Op::Rst);
    for _ in 0..2000 {
        if server.held() == Default::default() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(server.held(), Default::default());
    drop((a, b));
    let path = server.socket().to_path_buf();
    let stats = server.stop();
    assert_eq!(stats.bytes, data.len() as u64);
    assert!(!path.exists());
}

#[test]
fn a_full_router_socket_holds_the_transmit_queue_instead_of_resetting() {
    use crate::router::wire;
    use net_switch::socket::{FrameListener, Recv};
    let dir = tmp("g2gfull");
    // A router that completes the handshake and then reads only when told to.
    let listener = FrameListener::bind(&dir.join("r.sock")).unwrap();
    let path = listener.path().to_path_buf();
    let client = std::thread::spawn(move || RouterPort::connect(&path, 3).unwrap());
    let conn = loop {
        if let Some(c) = listener.accept().unwrap() {
            break c;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    };
    let mut buf = vec![0u8; 70 << 10];
    loop {
        match conn.recv(&mut buf).unwrap() {
            Recv::Frame(n) => {
                assert_eq!(&buf[..n], &wire::hello(3)[..]);
                break;
            }
            Recv::Empty => std::thread::sleep(std::time::Duration::from_millis(1)),
            Recv::Closed => panic!("the port closed during the handshake"),
        }
    }
    conn.send(&wire::WELCOME).unwrap();
    let port = client.join().unwrap();
    let host = HostSide::without_socket(Some(port.wake_fd())).unwrap();
    let mut a = Rig::new(3, host, Some(port));

    // Seven 60 KiB packets: far more than the socket takes while nobody reads.
    let req = Header::new(Op::Rw, (3, 1000), (4, 80));
    let payload = vec![0x5a_u8; 60 << 10];
    for _ in 0..7 {
        a.send(req, &payload);
    }
    assert_eq!(
        a.dev.stats().refused,
        0,
        "a full socket reset the connection"
    );
    assert!(
        a.dev.backend_retry().is_some(),
        "a held packet must also be retried on a timer"
    );
    assert!(
        a.recv().iter().all(|p| p.hdr.op != Op::Rst),
        "the guest got an RST for a full socket"
    );
    // The router reads again: every packet arrives, in order, whole.
    let mut arrived = 0;
    for _ in 0..2000 {
        while let Recv::Frame(n) = conn.recv(&mut buf).unwrap() {
            assert_eq!(n, HDR_LEN + payload.len());
            arrived += 1;
        }
        if arrived == 7 {
            break;
        }
        a.dev.process_backend();
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(arrived, 7, "packets were lost behind the full socket");
    assert!(a.dev.backend_retry().is_none(), "nothing is held any more");
    assert_eq!(a.dev.stats().tx_packets, 7);
    let _ = std::fs::remove_dir_all(&dir);
}
