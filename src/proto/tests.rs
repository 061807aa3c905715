use bytes::{Bytes, BytesMut};

use super::*;
use proptest::prelude::*;

/// A stereo OpusHead (RFC 7845 §5.1): version 1, 2 channels, no pre-skip, 48 kHz.
const OPUS_HEAD: &[u8] = b"OpusHead\x01\x02\x00\x00\x80\xbb\x00\x00\x00\x00\x00";

fn opus_codec() -> Codec {
    Codec {
        kind: CODEC_OPUS,
        sample_rate: 48_000,
        channels: 2,
        header: Bytes::from_static(OPUS_HEAD),
    }
}

/// The messages of `proto/vectors.txt`, by name.
fn expected_messages() -> Vec<(&'static str, Message)> {
    vec![
        (
            "hello_listener",
            Message::Hello {
                version: 1,
                role: Role::Listener,
                token: Bytes::new(),
            },
        ),
        (
            "hello_publisher",
            Message::Hello {
                version: 1,
                role: Role::Publisher,
                token: Bytes::from_static(b"s3cret"),
            },
        ),
        (
            "hello_ok",
            Message::HelloOk {
                version: 1,
                node: "origin".into(),
            },
        ),
        (
            "subscribe_live",
            Message::Subscribe {
                id: 1,
                path: "spaces/town-hall".into(),
                start: Start::Live,
                flags: 0,
            },
        ),
        (
            "subscribe_low_latency",
            Message::Subscribe {
                id: 2,
                path: "a".into(),
                start: Start::Live,
                flags: crate::proto::SUBSCRIBE_LOW_LATENCY,
            },
        ),
        (
            "subscribe_seq",
            Message::Subscribe {
                id: 7,
                path: "a".into(),
                start: Start::Seq(300),
                flags: 0,
            },
        ),
        (
            "subscribed",
            Message::Subscribed {
                id: 1,
                instance: 0x1234,
                codec: opus_codec(),
                info: None,
            },
        ),
        (
            "subscribed_public",
            Message::Subscribed {
                id: 1,
                instance: 0x1234,
                codec: opus_codec(),
                info: Some(StreamInfo {
                    started_ms: 1_796_622_041_000,
                    access: StreamAccess::Public,
                }),
            },
        ),
        (
            "subscribed_token",
            Message::Subscribed {
                id: 1,
                instance: 0x1234,
                codec: opus_codec(),
                info: Some(StreamInfo {
                    started_ms: 1_796_622_041_000,
                    access: StreamAccess::Token {
                        kids: vec!["k1".into(), "2026-q4".into()],
                    },
                }),
            },
        ),
        (
            "catalog_request",
            Message::CatalogRequest { after: "".into() },
        ),
        (
            "catalog_request_after",
            Message::CatalogRequest {
                after: "free/news".into(),
            },
        ),
        (
            "catalog",
            Message::Catalog {
                after: "".into(),
                entries: vec![
                    CatalogEntry {
                        path: "free/news".into(),
                        instance: 0x1234,
                        info: StreamInfo {
                            started_ms: 1_796_622_041_000,
                            access: StreamAccess::Public,
                        },
                    },
                    CatalogEntry {
                        path: "paid/show".into(),
                        instance: 7,
                        info: StreamInfo {
                            started_ms: 1_796_622_041_000,
                            access: StreamAccess::Token {
                                kids: vec!["k1".into()],
                            },
                        },
                    },
                ],
                more: false,
            },
        ),
        (
            "hello_relay_v2",
            Message::Hello {
                version: 2,
                role: Role::Relay,
                token: Bytes::from_static(b"superjw"),
            },
        ),
        (
            "subscribe_error",
            Message::SubscribeError {
                id: 2,
                code: 3,
                reason: "no such stream".into(),
            },
        ),
        ("unsubscribe", Message::Unsubscribe { id: 2 }),
        (
            "publish",
            Message::Publish {
                path: "live".into(),
                codec: opus_codec(),
                broadcast: None,
            },
        ),
        (
            "publish_broadcast",
            Message::Publish {
                path: "live".into(),
                codec: opus_codec(),
                broadcast: Some(0x1234),
            },
        ),
        ("publish_ok", Message::PublishOk { instance: 0x1234 }),
        (
            "stream_end",
            Message::StreamEnd {
                id: 1,
                last_seq: 99,
            },
        ),
        (
            "error",
            Message::Error {
                code: 2,
                reason: "wrong publish token".into(),
            },
        ),
        (
            "go_away",
            Message::GoAway {
                alternatives: vec!["quic://b:1".into()],
            },
        ),
        (
            "go_away_none",
            Message::GoAway {
                alternatives: vec![],
            },
        ),
    ]
}

fn expected_frame() -> Frame {
    Frame {
        pts: 960,
        duration: 960,
        wall_us: 1_700_000_000_000_000,
        payload: Bytes::from_static(&[0xf8, 0x01, 0x02]),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// (kind, name, bytes) from proto/vectors.txt.
fn vectors() -> Vec<(String, String, Vec<u8>)> {
    let text = include_str!("../../proto/vectors.txt");
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let parts: Vec<&str> = l.splitn(3, ' ').collect();
            assert_eq!(parts.len(), 3, "bad vector line {l:?}");
            (parts[0].to_string(), parts[1].to_string(), unhex(parts[2]))
        })
        .collect()
}

#[test]
fn message_vectors_both_directions() {
    let vs = vectors();
    let expected = expected_messages();
    for (name, msg) in &expected {
        let (_, _, bytes) = vs
            .iter()
            .find(|(k, n, _)| k == "message" && n == name)
            .unwrap_or_else(|| panic!("vector {name} missing from proto/vectors.txt"));
        assert_eq!(hex(&msg.to_bytes()), hex(bytes), "encoding {name}");
        let mut buf = BytesMut::from(&bytes[..]);
        assert_eq!(
            Message::decode(&mut buf).unwrap().as_ref(),
            Some(msg),
            "decoding {name}"
        );
        assert!(buf.is_empty());
    }
    assert_eq!(
        vs.iter().filter(|(k, ..)| k == "message").count(),
        expected.len()
    );
}

#[test]
fn hello_vector_is_as_the_spec_explains() {
    // type 0x01, length 3, version 1, role 1 (listener), token length 0
    assert_eq!(
        expected_messages()[0].1.to_bytes().as_ref(),
        &[0x01, 0x03, 0x01, 0x01, 0x00]
    );
    // 300 needs a two-byte varint: 0x40 | 0x01, 0x2c
    let sub = Message::Subscribe {
        id: 7,
        path: "a".into(),
        start: Start::Seq(300),
        flags: 0,
    }
    .to_bytes();
    assert_eq!(
        sub.as_ref(),
        &[0x03, 0x06, 0x07, 0x01, b'a', 0x01, 0x41, 0x2c]
    );
}

#[test]
fn frame_and_segment_header_vectors() {
    let vs = vectors();
    let (_, _, fb) = vs
        .iter()
        .find(|(k, ..)| k == "frame")
        .expect("frame vector");
    assert_eq!(hex(&expected_frame().to_bytes()), hex(fb));
    let mut buf = BytesMut::from(&fb[..]);
    let (f, record) = Frame::decode(&mut buf).unwrap().unwrap();
    assert_eq!(f, expected_frame());
    assert_eq!(record.as_ref(), &fb[..]);
    let (_, _, hb) = vs
        .iter()
        .find(|(k, ..)| k == "segment_header")
        .expect("segment header vector");
    let mut out = BytesMut::new();
    SegmentHeader {
        sub_id: 1,
        seq: 5,
        title: None,
    }
    .encode(&mut out);
    assert_eq!(hex(&out), hex(hb));
}

#[test]
fn invalid_vectors_are_refused() {
    let mut n = 0;
    for (kind, name, bytes) in vectors() {
        let mut buf = BytesMut::from(&bytes[..]);
        let r = match kind.as_str() {
            "invalid_message" => Message::decode(&mut buf).map(|_| ()),
            "invalid_frame" => Frame::decode(&mut buf).map(|_| ()),
            _ => continue,
        };
        assert!(r.is_err(), "{name} should be refused");
        n += 1;
    }
    assert!(n >= 6);
}

#[test]
fn oversized_length_is_refused_before_the_bytes_arrive() {
    let mut b = BytesMut::new();
    put_varint(&mut b, 0x03);
    put_varint(&mut b, (MAX_MESSAGE + 1) as u64);
    assert!(matches!(
        Message::decode(&mut b),
        Err(DecodeError::TooLarge { .. })
    ));
    let mut b = BytesMut::new();
    put_varint(&mut b, (MAX_FRAME_PAYLOAD + 1) as u64);
    assert!(matches!(
        Frame::decode(&mut b),
        Err(DecodeError::TooLarge { .. })
    ));
}

#[test]
fn partial_input_needs_more() {
    for (_, m) in expected_messages() {
        let full = m.to_bytes();
        for cut in 0..full.len() {
            let mut b = BytesMut::from(&full[..cut]);
            assert_eq!(Message::decode(&mut b).unwrap(), None);
            assert_eq!(b.len(), cut, "partial input must be left in place");
        }
    }
    let full = expected_frame().to_bytes();
    for cut in 0..full.len() {
        let mut b = BytesMut::from(&full[..cut]);
        assert!(Frame::decode(&mut b).unwrap().is_none());
    }
}

#[test]
fn paths() {
    for ok in ["a", "spaces/town-hall", "x.y_z~1/2"] {
        check_path(ok).unwrap();
    }
    for bad in [
        "",
        "/a",
        "a/",
        "a//b",
        "../a",
        "a/./b",
        "a b",
        "é",
        &"x".repeat(256),
    ] {
        assert!(check_path(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn varint_edges() {
    for v in [
        0u64,
        63,
        64,
        16383,
        16384,
        (1 << 30) - 1,
        1 << 30,
        varint::MAX,
    ] {
        let mut b = BytesMut::new();
        put_varint(&mut b, v);
        assert_eq!(b.len(), varint_len(v));
        let mut s = &b[..];
        assert_eq!(varint::try_get(&mut s), Some(v));
        assert!(s.is_empty());
    }
}

fn arb_start() -> impl Strategy<Value = Start> {
    prop_oneof![Just(Start::Live), (0..varint::MAX).prop_map(Start::Seq)]
}

fn arb_path() -> impl Strategy<Value = String> {
    "[a-z0-9]{1,8}(/[a-z0-9_~-][a-z0-9._~-]{0,7}){0,3}"
}

fn arb_message() -> impl Strategy<Value = Message> {
    let v = 0..varint::MAX;
    prop_oneof![
        (v.clone(), proptest::collection::vec(any::<u8>(), 0..64)).prop_map(|(version, t)| {
            Message::Hello {
                version,
                role: Role::Relay,
                token: Bytes::from(t),
            }
        }),
        (v.clone(), arb_path(), arb_start(), 0u64..4).prop_map(|(id, path, start, flags)| {
            Message::Subscribe {
                id,
                path,
                start,
                flags,
            }
        }),
        (v.clone(), v.clone(), "[ -~]{0,40}")
            .prop_map(|(id, code, reason)| Message::SubscribeError { id, code, reason }),
        (v.clone(), v.clone()).prop_map(|(id, last_seq)| Message::StreamEnd { id, last_seq }),
        (
            v.clone(),
            proptest::collection::vec(any::<u8>(), 1..300),
            proptest::option::of((
                v.clone(),
                proptest::option::of(proptest::collection::vec("[a-z0-9._-]{1,64}", 0..=16))
            ))
        )
            .prop_map(|(instance, h, info)| Message::Subscribed {
                id: 3,
                instance,
                codec: Codec {
                    kind: CODEC_OPUS,
                    sample_rate: 48_000,
                    channels: 1,
                    header: Bytes::from(h),
                },
                info: info.map(|(started_ms, kids)| StreamInfo {
                    started_ms,
                    access: match kids {
                        None => StreamAccess::Public,
                        Some(kids) => StreamAccess::Token { kids },
                    },
                }),
            }),
        (arb_path(), proptest::option::of(v.clone())).prop_map(|(path, broadcast)| {
            Message::Publish {
                path,
                codec: opus_codec(),
                broadcast,
            }
        }),
        proptest::collection::vec("[ -~]{0,40}", 0..=8)
            .prop_map(|alternatives| Message::GoAway { alternatives }),
    ]
}

proptest! {
    #[test]
    fn messages_round_trip(m in arb_message()) {
        let b = m.to_bytes();
        let mut buf = BytesMut::from(&b[..]);
        prop_assert_eq!(Message::decode(&mut buf).unwrap(), Some(m));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn frames_round_trip(pts in 0..varint::MAX, dur in 0..=MAX_FRAME_DURATION, wall in 0..varint::MAX,
                         payload in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let f = Frame { pts, duration: dur as u32, wall_us: wall, payload: Bytes::from(payload) };
        let b = f.to_bytes();
        prop_assert_eq!(b.len(), f.encoded_len());
        let mut buf = BytesMut::from(&b[..]);
        let (g, rec) = Frame::decode(&mut buf).unwrap().unwrap();
        prop_assert_eq!(g, f);
        prop_assert_eq!(rec, b);
    }

    /// Arbitrary bytes: an error, a message, or "need more", never a panic; and a decoded
    /// message never holds more than the limits allow.
    #[test]
    fn message_decoder_survives_anything(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let mut buf = BytesMut::from(&data[..]);
        for _ in 0..64 {
            match Message::decode(&mut buf) {
                Ok(Some(m)) => prop_assert!(m.to_bytes().len() <= MAX_MESSAGE + 16),
                Ok(None) | Err(_) => break,
            }
        }
    }

    #[test]
    fn frame_decoder_survives_anything(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let mut buf = BytesMut::from(&data[..]);
        for _ in 0..64 {
            match Frame::decode(&mut buf) {
                Ok(Some((f, _))) => prop_assert!(f.payload.len() <= MAX_FRAME_PAYLOAD),
                Ok(None) | Err(_) => break,
            }
        }
    }
}

#[test]
#[ignore = "prints proto/vectors.txt lines; run by hand when the format changes"]
fn print_vectors() {
    for (name, m) in expected_messages() {
        println!("message {name} {}", hex(&m.to_bytes()));
    }
    println!("frame frame {}", hex(&expected_frame().to_bytes()));
    let mut out = BytesMut::new();
    SegmentHeader {
        sub_id: 1,
        seq: 5,
        title: None,
    }
    .encode(&mut out);
    println!("segment_header segment_header {}", hex(&out));
}

#[test]
fn webtransport_envelope_vectors() {
    use crate::proto::webtransport::{preamble, segment_prefix, Preamble};
    let vs = vectors();
    let find = |kind: &str| {
        vs.iter()
            .find(|(k, ..)| k == kind)
            .map(|v| v.2.clone())
            .unwrap()
    };
    // A segment stream: the envelope, then the segment header as on a native connection.
    let seg = find("wt_segment");
    let mut out = BytesMut::from(&segment_prefix(0)[..]);
    SegmentHeader {
        sub_id: 1,
        seq: 5,
        title: None,
    }
    .encode(&mut out);
    assert_eq!(hex(&out), hex(&seg));
    // A control stream: the preamble read, then HELLO.
    let ctl = find("wt_control");
    let Preamble::Stream { session, used } = preamble(&ctl, false) else {
        panic!("not a WebTransport stream: {ctl:?}");
    };
    assert_eq!(session, 0);
    let mut rest = BytesMut::from(&ctl[used..]);
    assert!(matches!(
        Message::decode(&mut rest),
        Ok(Some(Message::Hello {
            version: 1,
            role: Role::Listener,
            ..
        }))
    ));
}
