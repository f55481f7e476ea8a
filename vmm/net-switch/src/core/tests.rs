use super::*;

const S: Duration = Duration::from_secs(1);

fn mac(n: u8) -> Mac {
    Mac([0x02, 0, 0, 0, 0, n])
}

/// A message: a plain header and a frame of `len` bytes.
fn frame(dst: Mac, src: Mac, len: usize, tag: u8) -> Vec<u8> {
    let mut f = vec![tag; len.max(14)];
    f[0..6].copy_from_slice(&dst.0);
    f[6..12].copy_from_slice(&src.0);
    f[12..14].copy_from_slice(&[0x88, 0xb5]); // local experimental EtherType
    f.truncate(len);
    [vec![0u8; NET_HDR_LEN], f].concat()
}

fn switch(cfg: SwitchConfig) -> (Switch, Vec<PortId>) {
    let mut sw = Switch::new(cfg).unwrap();
    let ports = (0..3).map(|_| sw.add_port()).collect();
    (sw, ports)
}

fn drain(sw: &mut Switch, p: PortId) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(f) = sw.front(p) {
        out.push(f.to_vec());
        sw.sent(p);
    }
    out
}

fn fwd(to: &[PortId], flooded: bool) -> Verdict {
    Verdict::Forwarded {
        to: to.to_vec(),
        full: vec![],
        flooded,
    }
}

#[test]
fn unknown_destination_floods_then_learned_one_is_unicast() {
    let (mut sw, p) = switch(SwitchConfig::default());
    let f1 = frame(mac(2), mac(1), 60, 1);
    assert_eq!(sw.ingress(p[0], &f1, S), fwd(&[p[1], p[2]], true));
    assert_eq!(sw.lookup(&mac(1), S), Some(p[0]));
    // 2 answers 1: 1 is known, only port 0 gets it; 2 is learned on port 1.
    let f2 = frame(mac(1), mac(2), 60, 2);
    assert_eq!(sw.ingress(p[1], &f2, S), fwd(&[p[0]], false));
    let f3 = frame(mac(2), mac(1), 100, 3);
    assert_eq!(sw.ingress(p[0], &f3, S), fwd(&[p[1]], false));
    assert_eq!(drain(&mut sw, p[0]), vec![f2.clone()]);
    assert_eq!(drain(&mut sw, p[1]), vec![f1.clone(), f3.clone()]);
    assert_eq!(drain(&mut sw, p[2]), vec![f1.clone()]);
    let c0 = sw.counters(p[0]).unwrap();
    assert_eq!((c0.rx_frames, c0.rx_bytes, c0.rx_flooded), (2, 160, 1));
    assert_eq!((c0.tx_frames, c0.tx_bytes), (1, 60));
    let c1 = sw.counters(p[1]).unwrap();
    assert_eq!((c1.tx_frames, c1.tx_bytes), (2, 160));
    assert_eq!(sw.counters(p[2]).unwrap().tx_frames, 1);
}

#[test]
fn broadcast_and_multicast_always_flood_but_never_to_the_ingress_port() {
    let (mut sw, p) = switch(SwitchConfig::default());
    // Even after learning every address, group destinations flood.
    for (i, port) in p.iter().enumerate() {
        sw.ingress(*port, &frame(Mac::BROADCAST, mac(i as u8 + 1), 14, 0), S);
    }
    let mcast = Mac([0x33, 0x33, 0, 0, 0, 1]); // IPv6 all-nodes
    assert_eq!(
        sw.ingress(p[1], &frame(mcast, mac(2), 64, 0), S),
        fwd(&[p[0], p[2]], true)
    );
    assert_eq!(
        sw.ingress(p[2], &frame(Mac::BROADCAST, mac(3), 64, 0), S),
        fwd(&[p[0], p[1]], true)
    );
    for port in &p {
        // What each port got: the others' broadcasts and the multicast, never its own.
        let got = drain(&mut sw, *port);
        assert!(got.iter().all(|f| f[6..12] != mac(port.0 as u8).0));
    }
}

#[test]
fn no_hairpin_for_a_destination_on_the_ingress_port() {
    let (mut sw, p) = switch(SwitchConfig::default());
    sw.ingress(p[0], &frame(Mac::BROADCAST, mac(1), 60, 0), S);
    sw.ingress(p[0], &frame(Mac::BROADCAST, mac(9), 60, 0), S);
    drain(&mut sw, p[1]);
    drain(&mut sw, p[2]);
    // 9 and 1 both live on port 0: a frame between them is not sent back.
    assert_eq!(
        sw.ingress(p[0], &frame(mac(9), mac(1), 60, 0), S),
        Verdict::Dropped(DropReason::Hairpin)
    );
    assert_eq!(sw.counters(p[0]).unwrap().drop_hairpin, 1);
    for port in &p {
        assert_eq!(sw.queued(*port), (0, 0));
    }
}

#[test]
fn malformed_frames_are_dropped_and_counted_on_the_ingress_port() {
    let cfg = SwitchConfig {
        mtu: 100,
        ..SwitchConfig::default()
    };
    let (mut sw, p) = switch(cfg);
    for len in [0, 1, 13] {
        let f = frame(Mac::BROADCAST, mac(1), len, 0);
        assert_eq!(
            sw.ingress(p[0], &f, S),
            Verdict::Dropped(DropReason::TooShort)
        );
    }
    // 114 = MTU + header passes, 115 does not.
    assert!(matches!(
        sw.ingress(p[0], &frame(Mac::BROADCAST, mac(1), 114, 0), S),
        Verdict::Forwarded { .. }
    ));
    assert_eq!(
        sw.ingress(p[0], &frame(Mac::BROADCAST, mac(1), 115, 0), S),
        Verdict::Dropped(DropReason::TooLong)
    );
    assert_eq!(
        sw.ingress(p[0], &vec![0u8; 70_000], S),
        Verdict::Dropped(DropReason::TooLong)
    );
    // Group or zero source addresses are never learned or forwarded.
    for src in [Mac::BROADCAST, Mac([0x01, 0, 0x5e, 0, 0, 1]), Mac([0; 6])] {
        assert_eq!(
            sw.ingress(p[0], &frame(Mac::BROADCAST, src, 60, 0), S),
            Verdict::Dropped(DropReason::BadSource)
        );
        assert_eq!(sw.lookup(&src, S), None);
    }
    let c = sw.counters(p[0]).unwrap();
    assert_eq!(
        (
            c.drop_too_short,
            c.drop_too_long,
            c.drop_bad_source,
            c.rx_frames
        ),
        (3, 2, 3, 9)
    );
    assert_eq!(c.dropped(), 8);
    // Only the one good frame reached the others.
    assert_eq!(drain(&mut sw, p[1]).len(), 1);
    assert_eq!(sw.counters(p[1]).unwrap().dropped(), 0);
}

#[test]
fn learned_addresses_expire_and_then_flood_again() {
    let cfg = SwitchConfig {
        mac_age: Duration::from_secs(10),
        ..SwitchConfig::default()
    };
    let (mut sw, p) = switch(cfg);
    sw.ingress(p[0], &frame(Mac::BROADCAST, mac(1), 60, 0), S);
    assert_eq!(sw.lookup(&mac(1), 11 * S), Some(p[0]));
    // Expired at lookup even before `age` runs.
    assert_eq!(sw.lookup(&mac(1), 12 * S), None);
    assert_eq!(
        sw.ingress(p[1], &frame(mac(1), mac(2), 60, 0), 12 * S),
        fwd(&[p[0], p[2]], true)
    );
    // Refreshed by traffic.
    sw.ingress(p[0], &frame(mac(2), mac(1), 60, 0), 12 * S);
    assert_eq!(sw.lookup(&mac(1), 22 * S), Some(p[0]));
    assert_eq!(sw.table_len(), 2);
    sw.age(22 * S);
    assert_eq!(sw.table_len(), 2);
    sw.age(23 * S);
    assert_eq!(sw.table_len(), 0);
}

#[test]
fn a_station_that_moves_is_relearned_on_its_new_port() {
    let (mut sw, p) = switch(SwitchConfig::default());
    sw.ingress(p[0], &frame(Mac::BROADCAST, mac(1), 60, 0), S);
    sw.ingress(p[1], &frame(Mac::BROADCAST, mac(1), 60, 0), 2 * S);
    assert_eq!(sw.lookup(&mac(1), 2 * S), Some(p[1]));
    // Port 0 no longer owns it: removing port 0 keeps the entry.
    sw.remove_port(p[0]);
    assert_eq!(sw.lookup(&mac(1), 2 * S), Some(p[1]));
}

#[test]
fn mac_table_is_bounded_per_port_and_in_total() {
    let cfg = SwitchConfig {
        macs_per_port: 4,
        max_macs: 6,
        ..SwitchConfig::default()
    };
    let (mut sw, p) = switch(cfg);
    // Port 0 shows 10 addresses: it keeps its 4 most recent ones.
    for i in 0..10u8 {
        sw.ingress(
            p[0],
            &frame(Mac::BROADCAST, mac(i + 1), 60, 0),
            S * u32::from(i + 1),
        );
    }
    assert_eq!(sw.table_len(), 4);
    for i in 7..=10 {
        assert_eq!(sw.lookup(&mac(i), 10 * S), Some(p[0]), "mac {i}");
    }
    assert_eq!(sw.counters(p[0]).unwrap().learn_refused, 6);
    // Port 1 fills the table to 6; its third address is not learned.
    for i in 20..23u8 {
        sw.ingress(p[1], &frame(Mac::BROADCAST, mac(i), 60, 0), 11 * S);
    }
    assert_eq!(sw.table_len(), 6);
    assert_eq!(sw.lookup(&mac(22), 11 * S), None);
    assert_eq!(sw.counters(p[1]).unwrap().learn_refused, 1);
    // Frames to an unlearned address still arrive (flooded).
    assert_eq!(
        sw.ingress(p[2], &frame(mac(22), mac(30), 60, 0), 11 * S),
        fwd(&[p[0], p[1]], true)
    );
}

#[test]
fn output_queues_are_bounded_in_frames_and_bytes_per_port() {
    let cfg = SwitchConfig {
        queue_frames: 4,
        queue_bytes: MAX_MESSAGE,
        ..SwitchConfig::default()
    };
    let (mut sw, p) = switch(cfg);
    // Port 2 never reads; port 1 does.
    for i in 0..10u8 {
        let v = sw.ingress(p[0], &frame(Mac::BROADCAST, mac(1), 100, i), S);
        let Verdict::Forwarded { to, full, .. } = v else {
            panic!("{v:?}")
        };
        if i < 4 {
            assert_eq!((to, full), (vec![p[1], p[2]], vec![]));
        } else {
            assert_eq!((to, full), (vec![p[1]], vec![p[2]]));
        }
        drain(&mut sw, p[1]);
    }
    // Queued bytes are messages' (headers included): the memory they hold.
    assert_eq!(sw.queued(p[2]), (4, 4 * (100 + NET_HDR_LEN)));
    assert_eq!(sw.counters(p[2]).unwrap().drop_queue_full, 6);
    assert_eq!(sw.counters(p[1]).unwrap().tx_frames, 10);
    assert_eq!(sw.counters(p[1]).unwrap().dropped(), 0);
    // The queue kept the oldest frames, in order.
    let kept = drain(&mut sw, p[2]);
    assert_eq!(
        kept.iter().map(|f| f[NET_HDR_LEN + 14]).collect::<Vec<_>>(),
        [0, 1, 2, 3]
    );
    // Byte bound: two 30000-byte segmentation frames fit, the third does not.
    let mut big = frame(mac(3), mac(1), 30_000, 0);
    big[1] = 1; // gso_type TCPV4: longer than the MTU is allowed
    for _ in 0..3 {
        sw.ingress(p[0], &big, S);
    }
    assert_eq!(sw.queued(p[2]), (2, 2 * big.len()));
    assert_eq!(sw.counters(p[2]).unwrap().drop_queue_full, 7);
    // A send failure takes the frame off and counts it.
    sw.send_failed(p[2]);
    assert_eq!(sw.queued(p[2]), (1, big.len()));
    assert_eq!(sw.counters(p[2]).unwrap().drop_send_error, 1);
}

#[test]
fn removing_a_port_frees_its_queue_and_forgets_its_addresses() {
    let (mut sw, p) = switch(SwitchConfig::default());
    sw.ingress(p[1], &frame(Mac::BROADCAST, mac(2), 60, 0), S);
    sw.ingress(p[0], &frame(mac(2), mac(1), 60, 0), S);
    assert_eq!(sw.queued(p[1]), (1, 60 + NET_HDR_LEN));
    let c = sw.remove_port(p[1]).unwrap();
    assert_eq!(c.rx_frames, 1);
    assert_eq!(sw.lookup(&mac(2), S), None);
    assert_eq!(sw.queued(p[1]), (0, 0));
    assert_eq!(sw.remove_port(p[1]), None);
    // Frames to the forgotten address flood to the remaining port.
    assert_eq!(
        sw.ingress(p[0], &frame(mac(2), mac(1), 60, 0), S),
        fwd(&[p[2]], true)
    );
    // Ids are not reused; closed ports' counters are kept as a sum.
    let p3 = sw.add_port();
    assert!(p3 > p[2]);
    assert_eq!(sw.closed_counters(), (1, c));
    assert!(sw.report().contains("1 closed port(s): rx_frames=1"));
    // The closed port's own counters stay in the report, in port order.
    let report = sw.report();
    let closed = format!("{} (closed): rx_frames=1", p[1]);
    let at = report
        .find(&closed)
        .unwrap_or_else(|| panic!("{closed} not in {report}"));
    assert!(report[..at].contains(&format!("{}: ", p[0])), "{report}");
    assert!(report[at..].contains(&format!("{}: ", p[2])), "{report}");
    // Frames from or to a removed port are ignored.
    assert_eq!(
        sw.ingress(p[1], &frame(mac(1), mac(2), 60, 0), S),
        fwd(&[], false)
    );
}

#[test]
fn config_bounds_are_checked() {
    let bad = |f: fn(&mut SwitchConfig)| {
        let mut c = SwitchConfig::default();
        f(&mut c);
        Switch::new(c).err().unwrap().to_string()
    };
    assert!(bad(|c| c.mtu = 67).contains("MTU 67"));
    assert!(bad(|c| c.mtu = 65536).contains("MTU 65536"));
    assert!(bad(|c| c.queue_frames = 0).contains("queue_frames"));
    assert!(bad(|c| c.max_macs = 0).contains("max_macs"));
    assert!(bad(|c| {
        c.mtu = 9000;
        c.queue_bytes = 4000
    })
    .contains("queue_bytes at least"));
    assert!(Switch::new(SwitchConfig {
        mtu: 65535,
        queue_bytes: 1 << 20,
        ..SwitchConfig::default()
    })
    .is_ok());
}

#[test]
fn mac_parse_and_display() {
    let m = Mac::parse("02:1a:ff:00:9B:01").unwrap();
    assert_eq!(m.0, [2, 0x1a, 0xff, 0, 0x9b, 1]);
    assert_eq!(m.to_string(), "02:1a:ff:00:9b:01");
    for bad in [
        "",
        "02:1a:ff:00:9b",
        "02:1a:ff:00:9b:01:02",
        "2:1a:ff:00:9b:01",
        "zz:1a:ff:00:9b:01",
    ] {
        assert_eq!(Mac::parse(bad), None, "{bad}");
    }
    assert!(Mac::BROADCAST.is_group() && !m.is_group());
}
