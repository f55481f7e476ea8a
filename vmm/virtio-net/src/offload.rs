//! Checksum and TCP segmentation offload: the `virtio_net_hdr` that travels
//! with every frame, its validation, and the software fallback.
//!
//! A frame a guest sends with `NEEDS_CSUM` (its TCP/UDP checksum left
//! partial) or `GSO_TCPV4` (one IPv4 TCP packet of up to 64 KiB that the
//! device would cut into MSS-sized segments) keeps its header all the way to
//! the receiving device, through the switch or TAP (both carry the same
//! 12-byte header in front of each frame). The receiving device hands it on
//! as it is to a guest that negotiated `GUEST_CSUM`/`GUEST_TSO4`, so neither
//! guest computes a checksum or segments; for a guest that did not, it
//! finishes the work here ([`finish`]).
//!
//! Every header is checked ([`NetHeader::parse`]) where it enters: from the
//! guest's transmit queue and again from the backend (a switch port is
//! another process, a TAP the host): only the offloads negotiated, offsets
//! inside the frame, and for segmentation a plain IPv4/TCP packet whose
//! segments fit the MTU.

use net_switch::ETH_HEADER_LEN;

/// `flags`: the checksum from `csum_start` on is left for the device.
pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
/// `flags` (receive only): the device checked the checksum.
pub const VIRTIO_NET_HDR_F_DATA_VALID: u8 = 2;
pub const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;
pub const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
pub use net_switch::{MAX_GSO_FRAME, NET_HDR_LEN};

const ETHERTYPE_IPV4: u16 = 0x0800;
const IPPROTO_TCP: u8 = 6;
/// Offset of the TCP checksum in its header.
const TCP_CSUM_OFFSET: usize = 16;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;
/// Most segments one packet may be cut into: a 64 KiB packet with an MSS of 64
/// bytes. Beyond that the cutting would cost a receiving device far more than
/// the packet (a hostile MSS of 1 makes 65,000 frames); no Linux sender segments
/// that finely.
pub const MAX_SEGMENTS: usize = 1024;

/// Why a header was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    #[error("flags {0:#x} ask for what was not negotiated (only NEEDS_CSUM may be set, with VIRTIO_NET_F_CSUM)")]
    Flags(u8),
    #[error("gso_type {0:#x} was not negotiated (only TCPV4, with VIRTIO_NET_F_HOST_TSO4)")]
    GsoType(u8),
    #[error("checksum at {start}+{offset} is outside the {len}-byte frame")]
    ChecksumOutside { start: u16, offset: u16, len: usize },
    #[error(
        "segmentation without NEEDS_CSUM, or with a checksum that is not TCP's ({start}+{offset})"
    )]
    GsoChecksum { start: u16, offset: u16 },
    #[error("segmentation of a frame that is not plain IPv4/TCP: {0}")]
    NotTcp4(&'static str),
    #[error("gso_size {mss} would cut {payload} bytes into more than {MAX_SEGMENTS} segments")]
    TooManySegments { mss: u16, payload: usize },
    #[error(
        "gso_size {mss} with {headers} bytes of IP and TCP headers does not fit the MTU {mtu}"
    )]
    Mss {
        mss: u16,
        headers: usize,
        mtu: usize,
    },
    #[error("a {len}-byte frame is longer than {max} bytes")]
    TooLong { len: usize, max: usize },
}

/// A partial checksum: the device sums from `start` to the end and stores
/// the result at `start + offset` (which holds the pseudo-header's sum).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartialChecksum {
    pub start: u16,
    pub offset: u16,
}

/// TCP segmentation of one IPv4 packet into segments of `mss` payload bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tso4 {
    pub mss: u16,
    /// Offset of the TCP header in the frame.
    pub tcp: usize,
    /// Ethernet, IP and TCP headers, the part every segment repeats.
    pub headers: usize,
}

/// What a frame asks of the device: nothing, a checksum, or segmentation
/// (whose checksums the segments then need).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetHeader {
    pub checksum: Option<PartialChecksum>,
    pub tso: Option<Tso4>,
}

/// The offloads a header may use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Allowed {
    pub checksum: bool,
    pub tso4: bool,
}

impl Allowed {
    pub const ALL: Allowed = Allowed {
        checksum: true,
        tso4: true,
    };
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

impl NetHeader {
    /// Checks `hdr` (12 bytes) against `frame`: only `allowed` offloads,
    /// frames of at most `mtu + 14` bytes (64 KiB + 14 with segmentation).
    /// `DATA_VALID` is not accepted here; a receive path clears it first.
    pub fn parse(
        hdr: &[u8; NET_HDR_LEN],
        frame: &[u8],
        allowed: Allowed,
        mtu: usize,
    ) -> Result<NetHeader, OffloadError> {
        let (flags, gso_type) = (hdr[0], hdr[1]);
        let (gso_size, start, offset) = (le16(hdr, 4), le16(hdr, 6), le16(hdr, 8));
        if flags & !VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 || (flags != 0 && !allowed.checksum) {
            return Err(OffloadError::Flags(flags));
        }
        let checksum = if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
            let end = usize::from(start) + usize::from(offset) + 2;
            if end > frame.len() {
                return Err(OffloadError::ChecksumOutside {
                    start,
                    offset,
                    len: frame.len(),
                });
            }
            Some(PartialChecksum { start, offset })
        } else {
            None
        };
        let tso = match gso_type {
            VIRTIO_NET_HDR_GSO_NONE => None,
            VIRTIO_NET_HDR_GSO_TCPV4 if allowed.tso4 => {
                Some(tso4_layout(frame, gso_size, mtu, checksum)?)
            }
            other => return Err(OffloadError::GsoType(other)),
        };
        let max = if tso.is_some() {
            MAX_GSO_FRAME
        } else {
            mtu + ETH_HEADER_LEN
        };
        if frame.len() > max {
            return Err(OffloadError::TooLong {
                len: frame.len(),
                max,
            });
        }
        Ok(NetHeader { checksum, tso })
    }

    /// The header as the receiving driver reads it (`num_buffers` set by the
    /// caller).
    pub fn encode(&self) -> [u8; NET_HDR_LEN] {
        let mut h = [0u8; NET_HDR_LEN];
        if let Some(c) = self.checksum {
            h[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
            h[6..8].copy_from_slice(&c.start.to_le_bytes());
            h[8..10].copy_from_slice(&c.offset.to_le_bytes());
        }
        if let Some(t) = self.tso {
            h[1] = VIRTIO_NET_HDR_GSO_TCPV4;
            // hdr_len: the headers' length (a hint to the driver); it fits,
            // the headers are at most 14 + 60 + 60 bytes.
            let headers = u16::try_from(t.headers).unwrap_or(u16::MAX);
            h[2..4].copy_from_slice(&headers.to_le_bytes());
            h[4..6].copy_from_slice(&t.mss.to_le_bytes());
        }
        h
    }

    /// Nothing left for the device.
    pub fn is_plain(&self) -> bool {
        self.checksum.is_none() && self.tso.is_none()
    }
}

/// Where the IPv4 and TCP headers of a segmentation frame are, checked.
fn tso4_layout(
    frame: &[u8],
    mss: u16,
    mtu: usize,
    checksum: Option<PartialChecksum>,
) -> Result<Tso4, OffloadError> {
    use OffloadError::NotTcp4;
    let ip = ETH_HEADER_LEN;
    if frame.len() < ip + 20 || be16(frame, 12) != ETHERTYPE_IPV4 {
        return Err(NotTcp4("no IPv4 header after the Ethernet header"));
    }
    let (version, ihl) = (frame[ip] >> 4, usize::from(frame[ip] & 0x0f) * 4);
    if version != 4 || ihl < 20 {
        return Err(NotTcp4(
            "IP version is not 4 or its header is under 20 bytes",
        ));
    }
    if frame[ip + 9] != IPPROTO_TCP {
        return Err(NotTcp4("IP protocol is not TCP"));
    }
    if be16(frame, ip + 6) & 0x3fff != 0 {
        return Err(NotTcp4("a fragment"));
    }
    if usize::from(be16(frame, ip + 2)) != frame.len() - ip {
        return Err(NotTcp4("IP total length differs from the frame's"));
    }
    let tcp = ip + ihl;
    if frame.len() < tcp + 20 {
        return Err(NotTcp4("no room for the TCP header"));
    }
    let headers = tcp + usize::from(frame[tcp + 12] >> 4) * 4;
    if headers < tcp + 20 || headers > frame.len() {
        return Err(NotTcp4(
            "TCP header length is under 20 bytes or past the end",
        ));
    }
    match checksum {
        Some(c) if usize::from(c.start) == tcp && usize::from(c.offset) == TCP_CSUM_OFFSET => {}
        _ => {
            let (start, offset) = checksum.map_or((0, 0), |c| (c.start, c.offset));
            return Err(OffloadError::GsoChecksum { start, offset });
        }
    }
    if mss == 0 || usize::from(mss) + (headers - ip) > mtu {
        return Err(OffloadError::Mss {
            mss,
            headers: headers - ip,
            mtu,
        });
    }
    let payload = frame.len() - headers;
    if payload.div_ceil(usize::from(mss)) > MAX_SEGMENTS {
        return Err(OffloadError::TooManySegments { mss, payload });
    }
    Ok(Tso4 { mss, tcp, headers })
}

/// One's complement sum of `data` as big-endian 16-bit words (odd length:
/// the last byte padded with zero), not folded.
fn sum_words(data: &[u8], mut sum: u64) -> u64 {
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        sum += u64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
    }
    let rest = chunks.remainder();
    let mut words = rest.chunks_exact(2);
    for w in &mut words {
        sum += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

/// Folds a sum of [`sum_words`] into the 16-bit checksum (complemented).
fn fold(mut sum: u64) -> u16 {
    // 2^16 = 1 modulo 0xffff, so 32-bit words sum two 16-bit lanes at once
    // and folding the carries back in gives the 16-bit sum.
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // The fold above keeps the result below 0x10000.
    #[allow(clippy::cast_possible_truncation)]
    let folded = sum as u16;
    !folded
}

/// The Internet checksum of `data` (RFC 1071): what goes into the field.
pub fn internet_checksum(data: &[u8]) -> u16 {
    fold(sum_words(data, 0))
}

/// Completes a partial checksum in place (the frame was checked by
/// [`NetHeader::parse`], so the field lies inside it).
pub fn complete_checksum(frame: &mut [u8], c: PartialChecksum) {
    let (start, field) = (
        usize::from(c.start),
        usize::from(c.start) + usize::from(c.offset),
    );
    let sum = internet_checksum(&frame[start..]);
    frame[field..field + 2].copy_from_slice(&sum.to_be_bytes());
}

/// Cuts a checked segmentation frame into segments of at most `mss`
/// payload bytes, each with its IPv4 and TCP checksums complete, and hands
/// each to `out` behind a plain header.
pub fn segment_tcp4(frame: &[u8], t: Tso4, mut out: impl FnMut(Vec<u8>)) {
    let ip = ETH_HEADER_LEN;
    let ihl = t.tcp - ip;
    let payload = &frame[t.headers..];
    let first_id = be16(frame, ip + 4);
    let first_seq = u32::from_be_bytes([
        frame[t.tcp + 4],
        frame[t.tcp + 5],
        frame[t.tcp + 6],
        frame[t.tcp + 7],
    ]);
    let flags = frame[t.tcp + 13];
    let mss = usize::from(t.mss);
    let count = payload.len().div_ceil(mss).max(1);
    for i in 0..count {
        let chunk = payload
            .get(i * mss..((i + 1) * mss).min(payload.len()))
            .unwrap_or(&[]);
        let mut seg = Vec::with_capacity(NET_HDR_LEN + t.headers + chunk.len());
        seg.extend_from_slice(&[0u8; NET_HDR_LEN]);
        seg.extend_from_slice(&frame[..t.headers]);
        seg.extend_from_slice(chunk);
        let f = &mut seg[NET_HDR_LEN..];
        // Lengths fit 16 bits: the whole packet did (checked by parse).
        let ip_len = u16::try_from(f.len() - ip).unwrap_or(u16::MAX);
        f[ip + 2..ip + 4].copy_from_slice(&ip_len.to_be_bytes());
        // Segment numbers and offsets wrap like the fields they go into.
        let n16 = u16::try_from(i).unwrap_or(u16::MAX);
        f[ip + 4..ip + 6].copy_from_slice(&first_id.wrapping_add(n16).to_be_bytes());
        f[ip + 10..ip + 12].copy_from_slice(&[0, 0]);
        let ip_sum = internet_checksum(&f[ip..ip + ihl]);
        f[ip + 10..ip + 12].copy_from_slice(&ip_sum.to_be_bytes());
        let offset = u32::try_from(i * mss).unwrap_or(u32::MAX);
        f[t.tcp + 4..t.tcp + 8].copy_from_slice(&first_seq.wrapping_add(offset).to_be_bytes());
        let mut seg_flags = flags;
        if i + 1 < count {
            seg_flags &= !(TCP_FIN | TCP_PSH);
        }
        if i > 0 {
            seg_flags &= !TCP_CWR;
        }
        f[t.tcp + 13] = seg_flags;
        f[t.tcp + 16..t.tcp + 18].copy_from_slice(&[0, 0]);
        let tcp_len = u16::try_from(f.len() - t.tcp).unwrap_or(u16::MAX);
        let mut pseudo = [0u8; 12];
        pseudo[0..8].copy_from_slice(&f[ip + 12..ip + 20]);
        pseudo[9] = IPPROTO_TCP;
        pseudo[10..12].copy_from_slice(&tcp_len.to_be_bytes());
        let sum = fold(sum_words(&f[t.tcp..], sum_words(&pseudo, 0)));
        f[t.tcp + 16..t.tcp + 18].copy_from_slice(&sum.to_be_bytes());
        out(seg);
    }
}

/// Whether a guest that takes `can` itself needs the device to finish `h`.
pub fn needs_finishing(h: &NetHeader, can: Allowed) -> bool {
    match (h.tso, h.checksum) {
        (Some(_), _) => !(can.tso4 && can.checksum),
        (None, Some(_)) => !can.checksum,
        (None, None) => false,
    }
}

/// Finishes what `h` leaves for the device on `msg` (header and frame) for a
/// guest that takes `can` itself; hands on the result (the message itself
/// with its header, or its segments) to `out`.
pub fn finish(mut msg: Vec<u8>, h: NetHeader, can: Allowed, mut out: impl FnMut(Vec<u8>)) {
    let finishing = needs_finishing(&h, can);
    match (h.tso, h.checksum) {
        (Some(t), _) if finishing => {
            segment_tcp4(&msg[NET_HDR_LEN..], t, out);
        }
        (None, Some(c)) if finishing => {
            complete_checksum(&mut msg[NET_HDR_LEN..], c);
            msg[..NET_HDR_LEN].copy_from_slice(&NetHeader::default().encode());
            out(msg);
        }
        _ => {
            msg[..NET_HDR_LEN].copy_from_slice(&h.encode());
            out(msg);
        }
    }
}

/// Sample frames and a checksum check for the tests and the fuzz harness.
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
#[allow(clippy::cast_possible_truncation)] // sample data: lengths under 64 KiB
pub mod sample {
    use super::*;

    const SRC: [u8; 4] = [169, 254, 0, 1];
    const DST: [u8; 4] = [169, 254, 0, 2];

    /// The pseudo-header's sum, folded and not complemented: what a Linux
    /// guest leaves in the TCP checksum field with NEEDS_CSUM.
    fn pseudo_seed(tcp_len: usize) -> u16 {
        let mut p = Vec::new();
        p.extend_from_slice(&SRC);
        p.extend_from_slice(&DST);
        p.extend_from_slice(&[0, IPPROTO_TCP]);
        p.extend_from_slice(&(tcp_len as u16).to_be_bytes());
        !internet_checksum(&p)
    }

    /// An Ethernet/IPv4/TCP frame with `payload` bytes, TCP flags `flags`
    /// and `options` bytes of TCP options, its TCP checksum left partial (as
    /// a guest sends it with NEEDS_CSUM).
    pub fn tcp4_frame(payload: usize, flags: u8, options: usize) -> Vec<u8> {
        let tcp_hdr = 20 + options;
        let mut f = vec![0u8; 14 + 20 + tcp_hdr];
        f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let ip = 14;
        f[ip] = 0x45;
        f[ip + 2..ip + 4].copy_from_slice(&((20 + tcp_hdr + payload) as u16).to_be_bytes());
        f[ip + 4..ip + 6].copy_from_slice(&0xfff0u16.to_be_bytes());
        f[ip + 6] = 0x40; // DF
        f[ip + 8] = 64;
        f[ip + 9] = IPPROTO_TCP;
        f[ip + 12..ip + 16].copy_from_slice(&SRC);
        f[ip + 16..ip + 20].copy_from_slice(&DST);
        let sum = internet_checksum(&f[ip..ip + 20]);
        f[ip + 10..ip + 12].copy_from_slice(&sum.to_be_bytes());
        let tcp = ip + 20;
        f[tcp..tcp + 2].copy_from_slice(&40000u16.to_be_bytes());
        f[tcp + 2..tcp + 4].copy_from_slice(&5201u16.to_be_bytes());
        f[tcp + 4..tcp + 8].copy_from_slice(&0xffff_f000u32.to_be_bytes());
        f[tcp + 12] = ((tcp_hdr / 4) as u8) << 4;
        f[tcp + 13] = flags;
        if options > 0 {
            f[tcp + 20] = 1; // NOP, then end of options
        }
        f.extend((0..payload).map(|i| (i * 31 + 7) as u8));
        let seed = pseudo_seed(tcp_hdr + payload);
        f[tcp + 16..tcp + 18].copy_from_slice(&seed.to_be_bytes());
        f
    }

    /// The frame's IPv4 header and TCP checksums verify (sum to zero).
    pub fn checksums_verify(f: &[u8]) -> bool {
        let ihl = usize::from(f[14] & 0xf) * 4;
        let tcp = 14 + ihl;
        let mut p = Vec::new();
        p.extend_from_slice(&f[26..34]);
        p.extend_from_slice(&[0, IPPROTO_TCP]);
        p.extend_from_slice(&((f.len() - tcp) as u16).to_be_bytes());
        p.extend_from_slice(&f[tcp..]);
        internet_checksum(&f[14..14 + ihl]) == 0 && internet_checksum(&p) == 0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::cast_possible_truncation)] // test code
pub(crate) mod tests;
