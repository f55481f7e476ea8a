use super::sample::checksums_verify;
use super::*;

fn tcp_frame(payload: usize, flags: u8, options: usize) -> Vec<u8> {
    sample::tcp4_frame(payload, flags, options)
}

pub(crate) fn hdr(flags: u8, gso: u8, mss: u16, start: u16, offset: u16) -> [u8; NET_HDR_LEN] {
    let mut h = [0u8; NET_HDR_LEN];
    h[0] = flags;
    h[1] = gso;
    h[4..6].copy_from_slice(&mss.to_le_bytes());
    h[6..8].copy_from_slice(&start.to_le_bytes());
    h[8..10].copy_from_slice(&offset.to_le_bytes());
    h
}

pub(crate) fn tso_hdr(mss: u16) -> [u8; NET_HDR_LEN] {
    hdr(1, VIRTIO_NET_HDR_GSO_TCPV4, mss, 34, 16)
}

#[test]
fn internet_checksum_matches_rfc_1071() {
    // RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
    assert_eq!(
        internet_checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
        !0xddf2
    );
    // An odd length pads with a zero byte.
    assert_eq!(
        internet_checksum(&[0x12, 0x34, 0x56]),
        !(0x1234u16 + 0x5600)
    );
    assert_eq!(internet_checksum(&[]), 0xffff);
}

#[test]
fn a_partial_checksum_is_completed_to_the_full_one() {
    for payload in [0, 1, 2, 3, 100, 1459] {
        let mut f = tcp_frame(payload, 0x18, 0);
        let h = NetHeader::parse(&hdr(1, 0, 0, 34, 16), &f, Allowed::ALL, 1500).unwrap();
        assert_eq!(
            h.checksum,
            Some(PartialChecksum {
                start: 34,
                offset: 16
            })
        );
        complete_checksum(&mut f, h.checksum.unwrap());
        assert!(checksums_verify(&f), "payload {payload}");
    }
}

#[test]
fn segmentation_cuts_a_64k_packet_into_valid_segments() {
    let payload = 65535 - 20 - 32;
    let f = tcp_frame(payload, 0x19 | TCP_CWR, 12); // FIN PSH ACK CWR, 12 bytes of options
    let h = NetHeader::parse(&tso_hdr(1448), &f, Allowed::ALL, 1500).unwrap();
    let t = h.tso.unwrap();
    assert_eq!((t.tcp, t.headers, t.mss), (34, 66, 1448));
    let mut segs = Vec::new();
    segment_tcp4(&f, t, |s| segs.push(s));
    assert_eq!(segs.len(), payload.div_ceil(1448));
    let mut data = Vec::new();
    for (i, s) in segs.iter().enumerate() {
        assert_eq!(&s[..NET_HDR_LEN], &[0u8; NET_HDR_LEN], "a plain header");
        let s = &s[NET_HDR_LEN..];
        assert!(s.len() <= 1500 + 14);
        assert!(checksums_verify(s), "segment {i}");
        assert_eq!(usize::from(be16(s, 16)), s.len() - 14, "IP total length");
        assert_eq!(be16(s, 18), 0xfff0u16.wrapping_add(i as u16), "IP id");
        let seq = u32::from_be_bytes([s[38], s[39], s[40], s[41]]);
        assert_eq!(seq, 0xffff_f000u32.wrapping_add((i * 1448) as u32));
        let last = i + 1 == segs.len();
        assert_eq!(
            s[47] & (TCP_FIN | TCP_PSH) != 0,
            last,
            "FIN/PSH on the last only"
        );
        assert_eq!(s[47] & TCP_CWR != 0, i == 0, "CWR on the first only");
        assert_eq!(&s[14 + 20 + 20..66], &f[54..66], "options repeated");
        data.extend_from_slice(&s[66..]);
    }
    assert_eq!(data, &f[66..]);
}

#[test]
fn segmentation_of_every_length_reassembles() {
    for (payload, mss) in [
        (0, 536),
        (1, 1),
        (1447, 1448),
        (1448, 1448),
        (1449, 1448),
        (5000, 999),
    ] {
        let f = tcp_frame(payload, 0x10, 0);
        let h = NetHeader::parse(&tso_hdr(mss), &f, Allowed::ALL, 1500).unwrap();
        let mut data = Vec::new();
        let mut n = 0;
        segment_tcp4(&f, h.tso.unwrap(), |s| {
            assert!(checksums_verify(&s[NET_HDR_LEN..]));
            data.extend_from_slice(&s[NET_HDR_LEN + 54..]);
            n += 1;
        });
        assert_eq!(n, payload.div_ceil(usize::from(mss)).max(1));
        assert_eq!(data, &f[54..], "payload {payload} mss {mss}");
    }
}

#[test]
fn finish_does_only_what_the_guest_cannot() {
    let f = tcp_frame(4000, 0x10, 0);
    let mut msg = tso_hdr(1448).to_vec();
    msg.extend_from_slice(&f);
    let h = NetHeader::parse(&tso_hdr(1448), &f, Allowed::ALL, 1500).unwrap();
    let mut out = Vec::new();
    finish(msg.clone(), h, Allowed::ALL, |m| out.push(m));
    assert_eq!(out.len(), 1, "a guest with GUEST_TSO4 gets the big frame");
    assert_eq!(&out[0][NET_HDR_LEN..], &f[..]);
    let back: [u8; NET_HDR_LEN] = out[0][..NET_HDR_LEN].try_into().unwrap();
    assert_eq!(NetHeader::parse(&back, &f, Allowed::ALL, 1500).unwrap(), h);
    out.clear();
    let csum_only = Allowed {
        checksum: true,
        tso4: false,
    };
    finish(msg.clone(), h, csum_only, |m| out.push(m));
    assert_eq!(out.len(), 3, "segmented for a guest without GUEST_TSO4");
    out.clear();
    let small = tcp_frame(100, 0x18, 0);
    let mut msg = hdr(1, 0, 0, 34, 16).to_vec();
    msg.extend_from_slice(&small);
    let h = NetHeader::parse(&hdr(1, 0, 0, 34, 16), &small, Allowed::ALL, 1500).unwrap();
    finish(msg, h, Allowed::default(), |m| out.push(m));
    assert_eq!(&out[0][..NET_HDR_LEN], &[0u8; NET_HDR_LEN]);
    assert!(
        checksums_verify(&out[0][NET_HDR_LEN..]),
        "checksum completed"
    );
}

#[test]
fn headers_that_were_not_negotiated_or_do_not_fit_are_refused() {
    use OffloadError::*;
    let f = tcp_frame(3000, 0x10, 0);
    let none = Allowed::default();
    let parse = |h: [u8; NET_HDR_LEN], f: &[u8], a: Allowed| NetHeader::parse(&h, f, a, 1500);
    assert_eq!(
        parse(hdr(0, 0, 0, 0, 0), &f[..1514], none),
        Ok(NetHeader::default())
    );
    assert_eq!(parse(hdr(1, 0, 0, 34, 16), &f[..1514], none), Err(Flags(1)));
    assert_eq!(
        parse(hdr(2, 0, 0, 0, 0), &f[..1514], Allowed::ALL),
        Err(Flags(2))
    );
    assert_eq!(
        parse(hdr(0x81, 0, 0, 34, 16), &f[..1514], Allowed::ALL),
        Err(Flags(0x81))
    );
    let csum_only = Allowed {
        checksum: true,
        tso4: false,
    };
    assert_eq!(parse(tso_hdr(1448), &f, csum_only), Err(GsoType(1)));
    for gso in [3, 4, 5, 0x81] {
        assert_eq!(
            parse(hdr(1, gso, 1448, 34, 16), &f, Allowed::ALL),
            Err(GsoType(gso))
        );
    }
    assert!(matches!(
        parse(hdr(1, 0, 0, 1500, 13), &f[..1514], Allowed::ALL),
        Err(ChecksumOutside { .. })
    ));
    assert!(matches!(
        parse(hdr(1, 0, 0, u16::MAX, u16::MAX), &f[..100], Allowed::ALL),
        Err(ChecksumOutside { .. })
    ));
    assert!(matches!(
        parse(hdr(0, 1, 1448, 0, 0), &f, Allowed::ALL),
        Err(GsoChecksum { .. })
    ));
    assert!(matches!(
        parse(hdr(1, 1, 1448, 34, 6), &f, Allowed::ALL),
        Err(GsoChecksum { .. })
    ));
    assert!(matches!(
        parse(tso_hdr(0), &f, Allowed::ALL),
        Err(Mss { .. })
    ));
    assert!(matches!(
        parse(tso_hdr(1461), &f, Allowed::ALL),
        Err(Mss { .. })
    ));
    assert!(parse(tso_hdr(1460), &f, Allowed::ALL).is_ok());
    // 3000 bytes in segments of 2 would be 1500 frames: refused; of 3, 1000: taken.
    assert!(matches!(
        parse(tso_hdr(2), &f, Allowed::ALL),
        Err(TooManySegments { .. })
    ));
    assert!(parse(tso_hdr(3), &f, Allowed::ALL).is_ok());
    assert!(matches!(
        parse(hdr(0, 0, 0, 0, 0), &f, Allowed::ALL),
        Err(TooLong { .. })
    ));
    let mut bad = f.clone();
    bad[12] = 0x86; // IPv6 EtherType
    assert!(matches!(
        parse(tso_hdr(1448), &bad, Allowed::ALL),
        Err(NotTcp4(_))
    ));
    for (at, value) in [(14, 0x65), (14, 0x44), (23, 17), (20, 0x20), (17, 0)] {
        let mut bad = f.clone();
        bad[at] = value; // version 6, ihl 4, UDP, MF, total length
        assert!(
            matches!(parse(tso_hdr(1448), &bad, Allowed::ALL), Err(NotTcp4(_))),
            "byte {at} = {value:#x}"
        );
    }
    let mut bad = f.clone();
    bad[46] = 0x40; // TCP header length 16
    assert!(matches!(
        parse(tso_hdr(1448), &bad, Allowed::ALL),
        Err(NotTcp4(_))
    ));
    assert!(matches!(
        parse(tso_hdr(1448), &f[..40], Allowed::ALL),
        Err(ChecksumOutside { .. })
    ));
    let huge = vec![0u8; MAX_GSO_FRAME + 1];
    assert!(parse(tso_hdr(1448), &huge, Allowed::ALL).is_err());
}
