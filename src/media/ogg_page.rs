//! Ogg pages (RFC 3533), written directly: a node makes each stretch of a stream's audio
//! into pages once and hands the same bytes to every HTTP listener (see
//! `model::Segment`), so the writer is a plain function of (serial, sequence, granule,
//! packets), with no state of its own.

use bytes::{BufMut, Bytes, BytesMut};

/// The Ogg CRC-32 (polynomial 0x04c11db7, MSB first, no reflection, init 0, no final xor).
const CRC_TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut r = (i as u32) << 24;
        let mut k = 0;
        while k < 8 {
            r = if r & 0x8000_0000 != 0 {
                (r << 1) ^ 0x04c1_1db7
            } else {
                r << 1
            };
            k += 1;
        }
        t[i] = r;
        i += 1;
    }
    t
};

fn crc(data: &[u8]) -> u32 {
    data.iter().fold(0u32, |c, &b| {
        (c << 8) ^ CRC_TABLE[(((c >> 24) as u8) ^ b) as usize]
    })
}

/// Page header flags.
pub const BOS: u8 = 0x02;
pub const EOS: u8 = 0x04;

/// Most lacing values a page holds.
const MAX_LACING: usize = 255;

/// Appends one page holding `packets` whole (each ends on this page) to `out`. The caller
/// keeps a page within 255 lacing values (`lacing_of`).
fn page(out: &mut BytesMut, serial: u32, seq: u32, granule: u64, flags: u8, packets: &[&[u8]]) {
    let start = out.len();
    let lacing: usize = packets.iter().map(|p| lacing_of(p.len())).sum();
    let body: usize = packets.iter().map(|p| p.len()).sum();
    out.reserve(27 + lacing + body);
    out.put_slice(b"OggS");
    out.put_u8(0);
    out.put_u8(flags);
    out.put_u64_le(granule);
    out.put_u32_le(serial);
    out.put_u32_le(seq);
    out.put_u32_le(0); // CRC, filled in below
    out.put_u8(lacing as u8);
    for p in packets {
        let mut n = p.len();
        while n >= 255 {
            out.put_u8(255);
            n -= 255;
        }
        out.put_u8(n as u8);
    }
    for p in packets {
        out.put_slice(p);
    }
    let c = crc(&out[start..]);
    out[start + 22..start + 26].copy_from_slice(&c.to_le_bytes());
}

/// Lacing values a packet of `len` bytes takes.
fn lacing_of(len: usize) -> usize {
    len / 255 + 1
}

/// Audio packets (payload, its end's granule position) as pages with sequence numbers
/// from `first_seq`, each page as full as 255 lacing values allow and ending on a packet
/// boundary. Returns the pages and how many there are. A packet over 64 KiB (none is: an
/// Opus packet is at most a few KiB) would need continued pages: it is left out.
pub fn audio_pages<'a>(
    serial: u32,
    first_seq: u32,
    packets: impl IntoIterator<Item = (&'a [u8], u64)>,
) -> (Bytes, u32) {
    let mut out = BytesMut::new();
    let mut seq = first_seq;
    let mut on_page: Vec<&[u8]> = Vec::new();
    let mut lacing = 0;
    let mut granule = 0;
    for (p, g) in packets {
        let l = lacing_of(p.len());
        if l > MAX_LACING {
            continue;
        }
        if lacing + l > MAX_LACING {
            page(&mut out, serial, seq, granule, 0, &on_page);
            seq = seq.wrapping_add(1);
            on_page.clear();
            lacing = 0;
        }
        on_page.push(p);
        lacing += l;
        granule = g;
    }
    if !on_page.is_empty() {
        page(&mut out, serial, seq, granule, 0, &on_page);
        seq = seq.wrapping_add(1);
    }
    (out.freeze(), seq.wrapping_sub(first_seq))
}

/// A listener's two header pages (OpusHead, then OpusTags naming quicast), numbered 0 and 1:
/// libogg takes a stream's first page for number 0 (a BOS page numbered otherwise reads as
/// a hole before the OpusHead, and opusinfo calls the stream invalid). Its first audio page
/// then carries the broadcast's own number: one gap after the headers, as every listener of
/// an Icecast mount joining late sees, which decoders pass over.
pub fn opus_header_pages(serial: u32, opus_head: &[u8]) -> Bytes {
    let mut out = BytesMut::new();
    let vendor = b"quicast";
    let mut tags = b"OpusTags".to_vec();
    tags.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
    tags.extend_from_slice(vendor);
    tags.extend_from_slice(&0u32.to_le_bytes());
    let head = &opus_head[..opus_head.len().min(255 * 254)];
    page(&mut out, serial, 0, 0, BOS, &[head]);
    page(&mut out, serial, 1, 0, 0, &[&tags]);
    out.freeze()
}

/// The page that ends a listener's stream: no packet, the end-of-stream flag.
pub fn eos_page(serial: u32, seq: u32, granule: u64) -> Bytes {
    let mut out = BytesMut::new();
    page(&mut out, serial, seq, granule, EOS, &[]);
    out.freeze()
}

/// A page's sequence number and granule position, if `page` starts with a page header.
pub fn page_numbers(page: &[u8]) -> Option<(u32, u64)> {
    if page.len() < 27 || &page[..4] != b"OggS" {
        return None;
    }
    let granule = u64::from_le_bytes(page[6..14].try_into().ok()?);
    let seq = u32::from_le_bytes(page[18..22].try_into().ok()?);
    Some((seq, granule))
}

/// The sequence number and granule of the last page in `pages` (pages back to back).
pub fn last_page_numbers(pages: &[u8]) -> Option<(u32, u64)> {
    let mut at = 0;
    let mut last = None;
    while at + 27 <= pages.len() {
        let nums = page_numbers(&pages[at..])?;
        let n = pages[at + 26] as usize;
        let body: usize = pages
            .get(at + 27..at + 27 + n)?
            .iter()
            .map(|&l| l as usize)
            .sum();
        last = Some(nums);
        at += 27 + n + body;
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::{OggEvent, OggOpusDemuxer, OpusHead};

    #[test]
    fn pages_read_back_with_their_numbers_and_checksums() {
        let head = OpusHead::synthetic(2);
        let packets: Vec<Vec<u8>> = (0..300u32)
            .map(|i| vec![0xf8; 1 + (i as usize * 7) % 600])
            .collect();
        let (audio, n) = audio_pages(
            7,
            40,
            packets
                .iter()
                .enumerate()
                .map(|(i, p)| (p.as_slice(), 312 + 960 * (i as u64 + 1))),
        );
        assert!(n >= 2, "300 packets take more than one page");
        let mut stream = opus_header_pages(7, &head.raw).to_vec();
        stream.extend_from_slice(&audio);
        stream.extend_from_slice(&eos_page(7, 40 + n, 312 + 960 * 300));
        // The demuxer (the `ogg` crate underneath) checks every page's CRC.
        let mut d = OggOpusDemuxer::new();
        d.push(&stream);
        let mut got = Vec::new();
        while let Ok(Some(ev)) = d.next_event() {
            if let OggEvent::Packet(p, ..) = ev {
                got.push(p.to_vec());
            }
        }
        assert_eq!(got, packets);
        assert_eq!(
            last_page_numbers(&audio),
            Some((40 + n - 1, 312 + 960 * 300))
        );
        assert_eq!(page_numbers(&audio).map(|x| x.0), Some(40));
        // The Ogg CRC of a known string (the "check" value of CRC-32/MPEG-2 without its
        // init and final xor is not standard; this one is taken from libogg's test).
        assert_eq!(crc(b""), 0);
    }
}
