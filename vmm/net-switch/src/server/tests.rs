use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::core::{Mac, MAX_GSO_FRAME, NET_HDR_LEN};

/// A socket path in a fresh temp directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "net-switch-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    fn sock(&self) -> PathBuf {
        self.0.join("switch.sock")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn mac(n: u8) -> Mac {
    Mac([0x02, 0, 0, 0, 0, n])
}

/// A message: a plain header and a frame of `len` bytes.
fn frame(dst: Mac, src: Mac, len: usize, tag: u32) -> Vec<u8> {
    let mut f = vec![0u8; NET_HDR_LEN + len];
    let e = &mut f[NET_HDR_LEN..];
    e[0..6].copy_from_slice(&dst.0);
    e[6..12].copy_from_slice(&src.0);
    e[12..14].copy_from_slice(&[0x88, 0xb5]);
    e[14..18].copy_from_slice(&tag.to_le_bytes());
    f
}

fn tag(f: &[u8]) -> u32 {
    let e = &f[NET_HDR_LEN..];
    u32::from_le_bytes([e[14], e[15], e[16], e[17]])
}

/// Every frame waiting on `s` now (nonblocking).
fn recv_all(s: &FrameSocket) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 70_000];
    while let Recv::Frame(n) = s.recv(&mut buf).unwrap() {
        out.push(buf[..n].to_vec());
    }
    out
}

/// Waits (bounded: at most 5 s per frame, then fails) for one frame.
fn recv_wait(s: &FrameSocket) -> Vec<u8> {
    let mut buf = vec![0u8; 70_000];
    for _ in 0..500 {
        if let Recv::Frame(n) = s.recv(&mut buf).unwrap() {
            return buf[..n].to_vec();
        }
        let mut fds = [libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(fds.as_mut_ptr(), 1, 10) };
    }
    panic!("no frame arrived");
}

fn send(s: &FrameSocket, f: &[u8]) {
    assert_eq!(s.send(f).unwrap(), Send::Sent);
}

/// Connects `n` clients through the socket path and steps the server until
/// it has accepted them all (bounded).
fn connect(server: &mut SwitchServer, path: &Path, n: usize) -> Vec<FrameSocket> {
    let clients: Vec<FrameSocket> = (0..n)
        .map(|_| FrameSocket::connect(path).unwrap())
        .collect();
    for _ in 0..10 {
        if server.switch().ports().count() == n {
            return clients;
        }
        server.step(100).unwrap();
    }
    panic!("the server did not accept {n} connections");
}

#[test]
fn ports_connect_through_the_socket_path_and_exchange_frames() {
    let dir = TempDir::new();
    let mut server = SwitchServer::bind(SwitchConfig::default(), &dir.sock()).unwrap();
    assert_eq!(server.socket_path(), Some(dir.sock().as_path()));
    let c = connect(&mut server, &dir.sock(), 3);
    send(&c[0], &frame(Mac::BROADCAST, mac(1), 60, 7));
    server.step(0).unwrap();
    for other in &c[1..] {
        assert_eq!(recv_all(other), vec![frame(Mac::BROADCAST, mac(1), 60, 7)]);
    }
    assert!(recv_all(&c[0]).is_empty(), "no hairpin");
    // 1 is learned: 2 -> 1 reaches only port 1.
    send(&c[1], &frame(mac(1), mac(2), 1514, 8));
    server.step(0).unwrap();
    assert_eq!(recv_all(&c[0]), vec![frame(mac(1), mac(2), 1514, 8)]);
    assert!(recv_all(&c[2]).is_empty());
    let counters = server.counters();
    assert_eq!(counters.len(), 3);
    assert_eq!(counters[0].1.tx_frames, 1);
    assert_eq!(counters[0].1.tx_bytes, 1514);
    // The socket file goes away with the server.
    drop(server);
    assert!(!dir.sock().exists());
}

#[test]
fn bind_refuses_an_existing_path_and_a_too_long_one() {
    let dir = TempDir::new();
    let _a = SwitchServer::bind(SwitchConfig::default(), &dir.sock()).unwrap();
    let e = SwitchServer::bind(SwitchConfig::default(), &dir.sock())
        .err()
        .unwrap();
    assert!(e.to_string().contains("cannot listen on"), "{e}");
    let long = dir.0.join("x".repeat(120));
    let e = SwitchServer::bind(SwitchConfig::default(), &long)
        .err()
        .unwrap();
    assert!(e.to_string().contains("at most 107"), "{e}");
    let e = FrameSocket::connect(&dir.0.join("none.sock"))
        .err()
        .unwrap();
    assert!(e.to_string().contains("is the switch running"), "{e}");
}

#[test]
fn oversized_and_short_frames_from_a_socket_are_dropped_and_counted() {
    let cfg = SwitchConfig {
        mtu: 1500,
        ..SwitchConfig::default()
    };
    let mut server = SwitchServer::unbound(cfg).unwrap();
    let (a, a_peer) = FrameSocket::pair().unwrap();
    let (b, b_peer) = FrameSocket::pair().unwrap();
    let pa = server.add_connection(a_peer).unwrap();
    let pb = server.add_connection(b_peer).unwrap();
    send(&a, &[0u8; 13]);
    send(&a, &frame(Mac::BROADCAST, mac(1), 1515, 0));
    send(&a, &frame(Mac::BROADCAST, mac(1), 9000, 0));
    send(&a, &frame(Mac::BROADCAST, mac(1), 1514, 1));
    // A segmentation-offload frame (gso_type set) may be up to 64 KiB + 14.
    let mut gso = frame(Mac::BROADCAST, mac(1), 9000, 2);
    gso[1] = 1;
    send(&a, &gso);
    let mut gso_too_long = frame(Mac::BROADCAST, mac(1), MAX_GSO_FRAME + 1, 3);
    gso_too_long[1] = 1;
    send(&a, &gso_too_long);
    server.step(0).unwrap();
    let got = recv_all(&b);
    assert_eq!(got.len(), 2);
    assert_eq!((got[0].len(), tag(&got[0])), (NET_HDR_LEN + 1514, 1));
    assert_eq!((got[1].len(), tag(&got[1])), (NET_HDR_LEN + 9000, 2));
    let ca = server.switch().counters(pa).unwrap();
    assert_eq!(
        (ca.drop_too_short, ca.drop_too_long, ca.rx_frames),
        (1, 3, 6)
    );
    // Bytes count frames, not headers (the 13-byte message holds 1 byte of frame).
    assert_eq!(
        ca.rx_bytes,
        1 + 1515 + 9000 + 1514 + 9000 + MAX_GSO_FRAME as u64 + 1
    );
    assert_eq!(server.switch().counters(pb).unwrap().tx_frames, 2);
}

/// Ports: a floods (frames for d, broadcasts, and bad frames) as fast as its
/// socket takes them; d never reads; b and c exchange frames. Every one of
/// b's and c's frames is delivered in the poll round that read it, while a
/// still has a backlog, and the flood ends in d's and a's drop counters.
#[test]
fn a_flood_is_dropped_without_delaying_the_other_ports() {
    let cfg = SwitchConfig {
        queue_frames: 32,
        ..SwitchConfig::default()
    };
    let dir = TempDir::new();
    let mut server = SwitchServer::bind(cfg, &dir.sock()).unwrap();
    let c = connect(&mut server, &dir.sock(), 4);
    // c[3] (d) stays connected and never reads.
    let (a, b, cc) = (&c[0], &c[1], &c[2]);
    let ports: Vec<PortId> = server.switch().ports().collect();
    let (pa, pb, pc, pd) = (ports[0], ports[1], ports[2], ports[3]);
    // Everybody announces itself; drain what the others got.
    for (i, s) in c.iter().enumerate() {
        send(s, &frame(Mac::BROADCAST, mac(i as u8 + 1), 60, 0));
    }
    server.step(0).unwrap();
    for s in [a, b, cc] {
        assert_eq!(recv_all(s).len(), 3);
    }
    let d_queue_before = server.switch().queued(pd).0;

    let mut flood_sent = 0u64;
    let fill_a = |flood_sent: &mut u64| {
        // Until a's socket is full: mostly frames for d, some broadcasts,
        // some too short or too long.
        for _ in 0..10_000 {
            let f = match *flood_sent % 16 {
                0 => vec![0xee; 9],
                1 => frame(Mac::BROADCAST, mac(1), 1600, 0),
                2 => frame(Mac::BROADCAST, mac(1), 60, 0xf100),
                _ => frame(mac(4), mac(1), 60, 0xf000),
            };
            match a.send(&f).unwrap() {
                Send::Sent => *flood_sent += 1,
                Send::WouldBlock => return,
                Send::Closed => panic!("switch closed a's port"),
            }
        }
        panic!("a's socket never filled");
    };
    const N: u32 = 200;
    let (mut to_c, mut to_b) = (Vec::new(), Vec::new());
    for i in 0..N {
        fill_a(&mut flood_sent);
        let a_rx = server.switch().counters(pa).unwrap().rx_frames;
        send(b, &frame(mac(3), mac(2), 200, i));
        if i % 2 == 0 {
            send(cc, &frame(mac(2), mac(3), 300, i));
        }
        server.step(0).unwrap();
        // a's backlog was read only up to the batch in this round.
        assert_eq!(
            server.switch().counters(pa).unwrap().rx_frames - a_rx,
            RX_BATCH as u64,
            "round {i}: a's backlog should have outlasted one batch"
        );
        // Each of b's and c's frames arrived in this very round.
        let at_c: Vec<_> = recv_all(cc)
            .into_iter()
            .filter(|f| f[NET_HDR_LEN + 6..NET_HDR_LEN + 12] == mac(2).0)
            .collect();
        assert_eq!(
            at_c.iter().map(|f| tag(f)).collect::<Vec<_>>(),
            [i],
            "round {i}"
        );
        to_c.extend(at_c);
        let at_b: Vec<_> = recv_all(b)
            .into_iter()
            .filter(|f| f[NET_HDR_LEN + 6..NET_HDR_LEN + 12] == mac(3).0)
            .collect();
        let want: Vec<u32> = if i % 2 == 0 { vec![i] } else { vec![] };
        assert_eq!(at_b.iter().map(|f| tag(f)).collect::<Vec<_>>(), want);
        to_b.extend(at_b);
    }
    assert_eq!(to_c.len(), N as usize);
    assert_eq!(to_b.len(), N as usize / 2);
    assert!(to_c.iter().all(|f| f.len() == NET_HDR_LEN + 200));
    let sw = server.switch();
    let (ca, cb, cc_, cd) = (
        sw.counters(pa).unwrap(),
        sw.counters(pb).unwrap(),
        sw.counters(pc).unwrap(),
        sw.counters(pd).unwrap(),
    );
    // d never read: its queue is at the bound and the rest was dropped.
    assert_eq!(sw.queued(pd).0, 32);
    assert!(d_queue_before < 32);
    // Every valid frame of a (its announcement, the frames for d and the
    // broadcasts), and b's and c's announcements, went to d's queue or its
    // drop counter, or into d's socket buffer until that was full.
    let for_d = ca.rx_frames - ca.dropped() + 2;
    assert_eq!(cd.tx_frames + 32 + cd.drop_queue_full, for_d, "{cd}");
    assert!(cd.drop_queue_full > cd.tx_frames, "{cd}");
    assert!(ca.drop_too_short > 0 && ca.drop_too_long > 0, "{ca}");
    assert_eq!(ca.drop_too_short + ca.drop_too_long, ca.dropped());
    // b and c lost none of each other's frames; they read everything, so
    // nothing queued for them was dropped either.
    assert_eq!((cb.dropped(), cc_.dropped()), (0, 0), "{cb} / {cc_}");
    assert_eq!(cb.rx_frames, 1 + u64::from(N));
    assert_eq!(cc_.rx_frames, 1 + u64::from(N / 2));
    assert!(
        flood_sent > ca.rx_frames,
        "a still had a backlog at the end"
    );
    eprintln!(
        "flood: a sent {flood_sent}, switch read {}; a: {ca}; d: {cd}",
        ca.rx_frames
    );
}

#[test]
fn a_port_that_disconnects_is_removed_and_its_addresses_forgotten() {
    let mut server = SwitchServer::unbound(SwitchConfig::default()).unwrap();
    let mut clients = Vec::new();
    for _ in 0..3 {
        let (c, peer) = FrameSocket::pair().unwrap();
        server.add_connection(peer).unwrap();
        clients.push(c);
    }
    send(&clients[2], &frame(Mac::BROADCAST, mac(3), 60, 0));
    send(&clients[0], &frame(mac(3), mac(1), 60, 1)); // queued for 3, never read
    server.step(0).unwrap();
    assert_eq!(server.switch().table_len(), 2);
    let gone = server.switch().ports().nth(2).unwrap();
    drop(clients.pop());
    server.step(0).unwrap();
    assert_eq!(server.switch().ports().count(), 2);
    assert_eq!(server.switch().queued(gone), (0, 0));
    assert_eq!(server.switch().table_len(), 1);
    assert_eq!(server.switch().closed_counters().0, 1);
    // Frames for the forgotten address now flood to the remaining port.
    recv_all(&clients[1]);
    send(&clients[0], &frame(mac(3), mac(1), 60, 2));
    server.step(0).unwrap();
    assert_eq!(
        recv_all(&clients[1])
            .iter()
            .map(|f| tag(f))
            .collect::<Vec<_>>(),
        [2]
    );
}

#[test]
fn run_serves_ports_on_its_own_thread_until_stopped() {
    let dir = TempDir::new();
    let server = SwitchServer::bind(SwitchConfig::default(), &dir.sock()).unwrap();
    let stop = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let stop2 = stop.try_clone().unwrap();
    let thread = std::thread::spawn(move || server.run(&stop2));
    let a = FrameSocket::connect(&dir.sock()).unwrap();
    let b = FrameSocket::connect(&dir.sock()).unwrap();
    // b announces itself first, so a's frames are unicast.
    send(&b, &frame(Mac::BROADCAST, mac(2), 60, 0));
    assert_eq!(tag(&recv_wait(&a)), 0);
    for i in 1..=100 {
        send(&a, &frame(mac(2), mac(1), 1000, i));
        assert_eq!(tag(&recv_wait(&b)), i);
    }
    stop.write(1).unwrap();
    let sw = thread.join().unwrap().unwrap();
    let counters: Vec<_> = sw.ports().map(|p| sw.counters(p).unwrap()).collect();
    assert_eq!(counters.len(), 2);
    assert_eq!((counters[0].rx_frames, counters[0].tx_frames), (100, 1));
    assert_eq!((counters[1].rx_frames, counters[1].tx_frames), (1, 100));
    assert!(sw
        .report()
        .contains("port 2: rx_frames=1 rx_bytes=60 tx_frames=100"));
}

#[test]
fn run_stops_on_its_eventfd_while_idle() {
    // No port, no learned address: the round waits without a timeout, so only the
    // stop eventfd can end it.
    let server = SwitchServer::unbound(SwitchConfig::default()).unwrap();
    let stop = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let stop2 = stop.try_clone().unwrap();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let r = server.run(&stop2);
        let _ = done_tx.send(());
        r
    });
    assert!(
        done_rx
            .recv_timeout(std::time::Duration::from_millis(200))
            .is_err(),
        "run ended before it was stopped"
    );
    stop.write(1).unwrap();
    done_rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("run did not stop on its eventfd");
    let sw = thread.join().unwrap().unwrap();
    assert!(sw.report().contains("no port was connected"));
}

#[test]
fn a_port_waiting_for_room_is_served_when_its_socket_drains() {
    let cfg = SwitchConfig {
        queue_frames: 1024,
        ..SwitchConfig::default()
    };
    let mut server = SwitchServer::unbound(cfg).unwrap();
    let (a, a_peer) = FrameSocket::pair().unwrap();
    let (b, b_peer) = FrameSocket::pair().unwrap();
    server.add_connection(a_peer).unwrap();
    let pb = server.add_connection(b_peer).unwrap();
    send(&b, &frame(Mac::BROADCAST, mac(2), 60, 0));
    server.step(0).unwrap();
    recv_all(&a);
    // a sends frames for b, which does not read, until frames wait in b's queue.
    let mut tag_n = 1;
    while server.switch().queued(pb).0 == 0 {
        for _ in 0..32 {
            send(&a, &frame(mac(2), mac(1), 1000, tag_n));
            tag_n += 1;
        }
        server.step(0).unwrap();
    }
    // b reads: its socket has room, and the round wakes for that alone (a sends
    // nothing more), long before its timeout.
    let got = recv_all(&b).len();
    assert!(got > 0);
    let start = Instant::now();
    server.step(10_000).unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "the round did not wake when b's socket had room"
    );
    let more = recv_all(&b).len();
    assert!(more > 0, "nothing more was written to b");
}

#[test]
fn a_closed_port_leaves_the_set_and_its_descriptor_number_can_serve_a_new_one() {
    let mut server = SwitchServer::unbound(SwitchConfig::default()).unwrap();
    let (a, a_peer) = FrameSocket::pair().unwrap();
    server.add_connection(a_peer).unwrap();
    for round in 0..3u32 {
        let (b, b_peer) = FrameSocket::pair().unwrap();
        server.add_connection(b_peer).unwrap();
        send(&b, &frame(Mac::BROADCAST, mac(2), 60, round));
        server.step(0).unwrap();
        assert_eq!(
            recv_all(&a).iter().map(|f| tag(f)).collect::<Vec<_>>(),
            [round]
        );
        // b goes; the switch closes its end, whose number the next pair is likely to get.
        drop(b);
        server.step(0).unwrap();
        assert_eq!(server.switch().ports().count(), 1);
    }
}
