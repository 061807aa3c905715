use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use crate::proto::MAX_FRAME_PAYLOAD;

#[test]
fn toc_durations() {
    // config 31 (CELT 20 ms), code 0
    assert_eq!(opus_packet_samples(&[0xf8]).unwrap(), 960);
    // config 16 (CELT 2.5 ms), code 1: two frames
    assert_eq!(opus_packet_samples(&[0x81]).unwrap(), 240);
    // config 3 (SILK 60 ms), code 3 with 2 frames
    assert_eq!(opus_packet_samples(&[0x1b, 0x02]).unwrap(), 5760);
    // 3 x 60 ms is over 120 ms
    assert!(opus_packet_samples(&[0x1b, 0x03]).is_err());
    assert!(opus_packet_samples(&[0x1b, 0x00]).is_err());
    assert!(opus_packet_samples(&[]).is_err());
    assert!(opus_packet_samples(&[0x1b]).is_err());
}

fn sample_stream(packets: &[&[u8]]) -> Vec<u8> {
    let mut w = OggOpusWriter::new(7);
    let mut out = w.headers(&OpusHead::synthetic(2).raw).to_vec();
    for p in packets {
        let b = Bytes::copy_from_slice(p);
        out.extend_from_slice(&w.packets([(&b, 960)]));
    }
    out.extend_from_slice(&w.finish());
    out
}

#[test]
fn writer_output_demuxes_back_byte_for_byte_in_any_chunking() {
    let pkts: Vec<Vec<u8>> = (0..50u8)
        .map(|i| vec![0xf8, i, i.wrapping_mul(3)])
        .collect();
    let refs: Vec<&[u8]> = pkts.iter().map(|p| p.as_slice()).collect();
    let stream = sample_stream(&refs);
    for chunk in [1usize, 7, 4096] {
        let mut d = OggOpusDemuxer::new();
        let mut got = Vec::new();
        let mut head = None;
        let mut ended = false;
        for c in stream.chunks(chunk) {
            d.push(c);
            while let Some(ev) = d.next_event().unwrap() {
                match ev {
                    OggEvent::Head(h) => head = Some(h),
                    OggEvent::Packet(p, dur, granule) => {
                        assert_eq!(dur, 960);
                        // The writer counts granules from its first packet.
                        assert_eq!(granule, Some(960 * (got.len() as u64 + 1)));
                        got.push(p.to_vec())
                    }
                    OggEvent::End => ended = true,
                    OggEvent::Chain(_) => panic!("one logical stream"),
                }
            }
        }
        assert_eq!(head.unwrap().channels, 2);
        assert_eq!(got, pkts);
        assert!(ended);
    }
}

#[test]
fn non_ogg_and_non_opus_are_named() {
    let mut d = OggOpusDemuxer::new();
    d.push(b"ID3\x04\x00 this is an mp3 file, long enough to hold a page header");
    let e = d.next_event().unwrap_err().to_string();
    assert!(e.contains("not an Ogg stream"), "{e}");

    let mut w = OggOpusWriter::new(1);
    let vorbis = w.headers(b"\x01vorbis\x00\x00\x00\x00\x02\x44\xac\x00\x00");
    let mut d = OggOpusDemuxer::new();
    d.push(&vorbis);
    let e = d.next_event().unwrap_err().to_string();
    assert!(e.contains("Vorbis"), "{e}");
}

#[test]
fn oversized_packet_is_refused_before_it_is_assembled() {
    let mut w = OggOpusWriter::new(1);
    let mut s = w.headers(&OpusHead::synthetic(1).raw).to_vec();
    let big = Bytes::from(vec![0xf8u8; MAX_FRAME_PAYLOAD + 10]);
    let small = Bytes::from_static(&[0xf8]);
    s.extend_from_slice(&w.packets([(&big, 960), (&small, 960)]));
    let mut d = OggOpusDemuxer::new();
    d.push(&s);
    let mut err = None;
    loop {
        match d.next_event() {
            Ok(Some(_)) => continue,
            Ok(None) => break,
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    assert!(err.unwrap().to_string().contains("over"));
}

proptest! {
    #[test]
    fn ogg_demuxer_survives_anything(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let mut d = OggOpusDemuxer::new();
        d.push(b"OggS");
        d.push(&data);
        for _ in 0..64 {
            match d.next_event() {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
}

/// Ogg's CRC-32 (polynomial 0x04c11db7, no reflection), to build pages a demuxer must accept
/// as well-formed, so the fuzzing below gets past the checksum into packet assembly.
fn ogg_crc(data: &[u8]) -> u32 {
    let mut crc = 0u32;
    for b in data {
        crc ^= (*b as u32) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04c1_1db7
            } else {
                crc << 1
            };
        }
    }
    crc
}

fn ogg_page(flags: u8, granule: u64, serial: u32, seq: u32, lacing: &[u8], fill: u8) -> Vec<u8> {
    let body: usize = lacing.iter().map(|v| *v as usize).sum();
    let mut p = b"OggS".to_vec();
    p.push(0);
    p.push(flags);
    p.extend_from_slice(&granule.to_le_bytes());
    p.extend_from_slice(&serial.to_le_bytes());
    p.extend_from_slice(&seq.to_le_bytes());
    p.extend_from_slice(&[0; 4]);
    p.push(lacing.len() as u8);
    p.extend_from_slice(lacing);
    p.extend((0..body).map(|i| fill.wrapping_add(i as u8)));
    let crc = ogg_crc(&p);
    p[22..26].copy_from_slice(&crc.to_le_bytes());
    p
}

#[test]
fn ogg_crc_matches_real_pages() {
    // A page our writer (the ogg crate) made must check out with this CRC.
    let mut w = OggOpusWriter::new(5);
    let page = w.headers(&OpusHead::synthetic(1).raw);
    let mut first = page[..27
        + page[26] as usize
        + page[27..27 + page[26] as usize]
            .iter()
            .map(|v| *v as usize)
            .sum::<usize>()]
        .to_vec();
    let crc = u32::from_le_bytes(first[22..26].try_into().unwrap());
    first[22..26].copy_from_slice(&[0; 4]);
    assert_eq!(ogg_crc(&first), crc);
}

proptest! {
    /// Well-formed pages (valid CRC) with hostile contents: random flags, serials, granules,
    /// lacing and bodies, and a real OpusHead/OpusTags start half the time. The demuxer must
    /// return events or an error, never panic, and never hand out an oversized packet.
    #[test]
    fn ogg_demuxer_survives_well_formed_hostile_pages(
        real_start in any::<bool>(),
        pages in proptest::collection::vec(
            (0u8..8, any::<u64>(), 0u32..3, proptest::collection::vec(any::<u8>(), 0..12), any::<u8>()),
            1..24,
        ),
    ) {
        let mut d = OggOpusDemuxer::new();
        if real_start {
            let mut w = OggOpusWriter::new(0);
            d.push(&w.headers(&OpusHead::synthetic(2).raw));
        }
        for (i, (flags, granule, serial, lacing, fill)) in pages.iter().enumerate() {
            d.push(&ogg_page(*flags, *granule, *serial, i as u32 + 2, lacing, *fill));
        }
        for _ in 0..256 {
            match d.next_event() {
                Ok(Some(OggEvent::Packet(p, ..))) => prop_assert!(p.len() <= MAX_FRAME_PAYLOAD),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
}

/// An OpusHead of `channels` in mapping `family`, followed by `table` (stream count, coupled
/// count, then one entry a channel) when given.
fn opus_head(channels: u8, family: u8, table: &[u8]) -> Vec<u8> {
    let mut raw = b"OpusHead".to_vec();
    raw.push(1);
    raw.push(channels);
    raw.extend_from_slice(&312u16.to_le_bytes());
    raw.extend_from_slice(&48_000u32.to_le_bytes());
    raw.extend_from_slice(&0i16.to_le_bytes());
    raw.push(family);
    raw.extend_from_slice(table);
    raw
}

fn head_error(raw: &[u8]) -> String {
    OpusHead::parse(raw).unwrap_err().to_string()
}

#[test]
fn opus_head_takes_family_0_and_consistent_family_1_up_to_8_channels() {
    assert_eq!(OpusHead::parse(&opus_head(1, 0, &[])).unwrap().channels, 1);
    assert_eq!(
        OpusHead::parse(&opus_head(2, 0, &[])).unwrap().pre_skip,
        312
    );
    // 5.1 in Vorbis order: 4 streams, 2 of them coupled (6 decoded channels).
    let surround = opus_head(6, 1, &[4, 2, 0, 4, 1, 2, 3, 5]);
    assert_eq!(OpusHead::parse(&surround).unwrap().channels, 6);
    // 7.1, with one channel silent (255).
    let eight = opus_head(8, 1, &[5, 3, 0, 6, 1, 2, 3, 4, 5, 255]);
    assert_eq!(OpusHead::parse(&eight).unwrap().channels, 8);
}

#[test]
fn opus_head_with_a_layout_nothing_plays_is_refused_naming_why() {
    // The probe's head: 255 channels, mapping family 1.
    let mut table = vec![255u8, 0];
    table.extend(0..255u8);
    let e = head_error(&opus_head(255, 1, &table));
    assert!(
        e.contains("255 channels in mapping family 1 (at most 8)"),
        "{e}"
    );
    let e = head_error(&opus_head(9, 1, &[9, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]));
    assert!(e.contains("9 channels in mapping family 1"), "{e}");
    // Family 255 (and any other) has no defined layout.
    let e = head_error(&opus_head(2, 255, &[2, 0, 0, 1]));
    assert!(e.contains("mapping family 255 is not played here"), "{e}");
    assert_eq!(
        OpusHead::parse(&opus_head(2, 2, &[1, 1, 0, 1]))
            .unwrap_err()
            .kind(),
        crate::error::Kind::Unsupported
    );
    let e = head_error(&opus_head(3, 0, &[]));
    assert!(e.contains("3 channels in mapping family 0"), "{e}");
}

#[test]
fn opus_head_mapping_table_must_agree_with_itself() {
    let e = head_error(&opus_head(2, 1, &[0, 0, 255, 255]));
    assert!(e.contains("declares 0 streams"), "{e}");
    let e = head_error(&opus_head(2, 1, &[1, 2, 0, 1]));
    assert!(e.contains("2 coupled streams of 1 streams"), "{e}");
    let e = head_error(&opus_head(2, 1, &[200, 100, 0, 1]));
    assert!(e.contains("make 300 channels (at most 255)"), "{e}");
    // 2 streams, 1 coupled: decoded channels 0..3; entry 3 names one that is not there.
    let e = head_error(&opus_head(3, 1, &[2, 1, 0, 1, 3]));
    assert!(
        e.contains("maps channel 2 to decoded channel 3, but its streams decode 3 channels"),
        "{e}"
    );
    let e = head_error(&opus_head(3, 1, &[2, 1, 0, 1]));
    assert!(e.contains("mapping table is truncated"), "{e}");
}

/// Every event of `stream` pushed in chunks of `chunk`, until the first error.
fn demux_all(stream: &[u8], chunk: usize) -> (Vec<OggEvent>, Option<crate::error::Error>) {
    let mut d = OggOpusDemuxer::new();
    let mut events = Vec::new();
    for c in stream.chunks(chunk) {
        d.push(c);
        loop {
            match d.next_event() {
                Ok(Some(ev)) => events.push(ev),
                Ok(None) => break,
                Err(e) => return (events, Some(e)),
            }
        }
    }
    (events, None)
}

/// A logical stream of serial `serial`: `head`, then packets `from..to` (20 ms each), ended.
fn chain(serial: u32, head: &OpusHead, from: u8, to: u8) -> Vec<u8> {
    let mut w = OggOpusWriter::new(serial);
    let mut out = w.headers(&head.raw).to_vec();
    for i in from..to {
        let p = Bytes::from(vec![0xf8, i]);
        out.extend_from_slice(&w.packets([(&p, 960)]));
    }
    out.extend_from_slice(&w.finish());
    out
}

#[test]
fn chained_streams_are_followed_each_with_its_head_and_granules() {
    let stereo = OpusHead::synthetic(2);
    let mono = OpusHead::synthetic(1);
    let mut stream = chain(1, &stereo, 0, 3);
    stream.extend(chain(2, &stereo, 3, 5));
    stream.extend(chain(3, &mono, 5, 6));
    for chunk in [1usize, 7, 4096] {
        let (events, err) = demux_all(&stream, chunk);
        assert!(err.is_none(), "{err:?}");
        let p = |i: u8, g: u64| OggEvent::Packet(Bytes::from(vec![0xf8, i]), 960, Some(g));
        assert_eq!(
            events,
            vec![
                OggEvent::Head(stereo.clone()),
                p(0, 960),
                p(1, 1920),
                p(2, 2880),
                OggEvent::End,
                // The next chain's granules start over.
                OggEvent::Chain(stereo.clone()),
                p(3, 960),
                p(4, 1920),
                OggEvent::End,
                OggEvent::Chain(mono.clone()),
                p(5, 960),
                OggEvent::End,
            ],
            "in chunks of {chunk}"
        );
    }
}

#[test]
fn an_empty_end_of_stream_page_ends_the_stream_and_a_chain_may_follow() {
    let head = OpusHead::synthetic(2);
    let mut w = OggOpusWriter::new(1);
    let mut stream = w.headers(&head.raw).to_vec();
    let (a, b) = (
        Bytes::from_static(&[0xf8, 1]),
        Bytes::from_static(&[0xf8, 2]),
    );
    // The writer holds the newest packet back: `a` is written, `b` never is.
    stream.extend_from_slice(&w.packets([(&a, 960), (&b, 960)]));
    stream.extend(ogg_page(0x04, 960, 1, 3, &[], 0));
    stream.extend(chain(9, &head, 3, 4));
    let (events, err) = demux_all(&stream, 4096);
    assert!(err.is_none(), "{err:?}");
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| match e {
            OggEvent::Head(_) => "head",
            OggEvent::Chain(_) => "chain",
            OggEvent::Packet(..) => "packet",
            OggEvent::End => "end",
        })
        .collect();
    assert_eq!(kinds, ["head", "packet", "end", "chain", "packet", "end"]);
}

#[test]
fn a_page_of_an_ended_stream_is_refused() {
    let head = OpusHead::synthetic(2);
    let mut stream = chain(1, &head, 0, 2);
    stream.extend(ogg_page(0, 5000, 1, 9, &[2], 0xf8));
    let (events, err) = demux_all(&stream, 4096);
    assert_eq!(events.last(), Some(&OggEvent::End));
    let e = err.expect("refused").to_string();
    assert!(e.contains("after its end-of-stream page"), "{e}");
    // Bytes that are no page at all after the end are no longer ignored either.
    let mut stream = chain(1, &head, 0, 2);
    stream.extend_from_slice(&[0x55; 64]);
    let e = demux_all(&stream, 4096).1.expect("refused").to_string();
    assert!(e.contains("lost Ogg page sync"), "{e}");
}

#[test]
fn headers_where_audio_belongs_are_named_for_what_they_are() {
    let head = OpusHead::synthetic(2);
    for (packet, want) in [
        (
            head.raw.clone(),
            "a second OpusHead in one logical stream (packet 3",
        ),
        (
            Bytes::from_static(b"OpusTags\x07\x00\x00\x00quicast\x00\x00\x00\x00"),
            "a second OpusTags in one logical stream (packet 3)",
        ),
    ] {
        let mut w = OggOpusWriter::new(4);
        let mut stream = w.headers(&head.raw).to_vec();
        let audio = Bytes::from_static(&[0xf8, 0]);
        stream.extend_from_slice(&w.packets([(&audio, 960), (&packet, 960), (&audio, 960)]));
        let (events, err) = demux_all(&stream, 4096);
        assert!(
            !events
                .iter()
                .any(|e| matches!(e, OggEvent::Packet(p, ..) if p.starts_with(b"Opus"))),
            "a header is never audio"
        );
        let e = err.expect("refused").to_string();
        assert!(e.contains(want), "{e}");
    }
}

/// A stereo logical stream of serial `serial` whose OpusTags holds `comments`, then packets
/// `from..to` (20 ms each), ended.
fn tagged_chain(serial: u32, comments: &[&str], from: u8, to: u8) -> Vec<u8> {
    use ogg::writing::{PacketWriteEndInfo as End, PacketWriter};
    let mut tags = b"OpusTags".to_vec();
    tags.extend(7u32.to_le_bytes());
    tags.extend(b"quicast");
    tags.extend((comments.len() as u32).to_le_bytes());
    for c in comments {
        tags.extend((c.len() as u32).to_le_bytes());
        tags.extend(c.as_bytes());
    }
    let mut w = PacketWriter::new(Vec::new());
    let head = OpusHead::synthetic(2).raw.to_vec();
    w.write_packet(head, serial, End::EndPage, 0).unwrap();
    w.write_packet(tags, serial, End::EndPage, 0).unwrap();
    for i in from..to {
        let end = if i + 1 == to {
            End::EndStream
        } else {
            End::EndPage
        };
        let granule = 960 * (i - from + 1) as u64;
        w.write_packet(vec![0xf8, i], serial, end, granule).unwrap();
    }
    w.into_inner()
}

#[test]
fn each_chains_opustags_title_is_there_before_its_audio() {
    let mut stream = tagged_chain(1, &["ARTIST=A", "TITLE=One"], 0, 2);
    stream.extend(tagged_chain(2, &["ENCODER=x"], 2, 3));
    stream.extend(tagged_chain(3, &["title=Three"], 3, 5));
    for chunk in [1usize, 7, 4096] {
        let mut d = OggOpusDemuxer::new();
        // The first packet after which a title was there to take, and the title.
        let mut seen = Vec::new();
        for c in stream.chunks(chunk) {
            d.push(c);
            while let Some(ev) = d.next_event().unwrap() {
                if let OggEvent::Packet(p, ..) = ev {
                    if let Some(t) = d.take_title() {
                        seen.push((p[1], t));
                    }
                }
            }
        }
        assert_eq!(
            seen,
            vec![
                (0, Some("A - One".to_string())),
                (2, None),
                (3, Some("Three".to_string()))
            ],
            "in chunks of {chunk}"
        );
    }
}
