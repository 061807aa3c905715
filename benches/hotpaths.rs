//! Micro-benchmarks of the hot paths, so regressions show:
//!   cargo bench --bench hotpaths
//! - a frame record encoded and decoded (every frame at the origin and every relay);
//! - one frame appended and handed to many subscribers' cursors (the fan-out's core step).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use futures_util::FutureExt;
use quicast::model::{Broadcast, SegmentCache, Step, StoreConfig, WireFrame};
use quicast::proto::{Frame, Start};

fn frame(n: u64) -> Frame {
    // 20 ms at 64 kbit/s: 160 bytes.
    Frame {
        pts: n * 960,
        duration: 960,
        wall_us: 1_700_000_000_000_000 + n,
        payload: Bytes::from(vec![0xf8; 160]),
    }
}

fn codec(c: &mut Criterion) {
    let f = frame(7);
    let rec = f.to_bytes();
    c.bench_function("frame/encode", |b| {
        let mut out = BytesMut::with_capacity(256);
        b.iter(|| {
            out.clear();
            f.encode(&mut out);
            criterion::black_box(&out);
        })
    });
    c.bench_function("frame/decode", |b| {
        b.iter_batched(
            || BytesMut::from(&rec[..]),
            |mut buf| criterion::black_box(Frame::decode(&mut buf).unwrap()),
            BatchSize::SmallInput,
        )
    });
}

fn fan_out(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout/one_frame_to_n_cursors");
    for n in [100usize, 1000, 10_000] {
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            let cfg = StoreConfig {
                pacing: quicast::model::Pacing::new(
                    quicast::model::PaceMode::Fixed(Duration::ZERO),
                    1452,
                    vec![],
                ),
                ..StoreConfig::default()
            };
            let cache = SegmentCache::new(&cfg);
            let bcast = Broadcast::new(
                "b",
                1,
                quicast::media::OpusHead::synthetic(1).codec(),
                quicast::model::Provenance::here(),
                &cache,
                &cfg,
            );
            let mut seq = 0;
            let mut seg = bcast.begin(seq).unwrap();
            bcast.append(&seg, WireFrame::new(frame(0))).unwrap();
            let mut cursors: Vec<_> = (0..n).map(|_| bcast.cursor(Start::Live)).collect();
            for c in &mut cursors {
                while c.next().now_or_never().is_some() {}
            }
            let mut k = 1;
            b.iter(|| {
                // A new segment every 50 frames, as at 1 s segments of 20 ms frames.
                if k % 50 == 0 {
                    seq += 1;
                    seg = bcast.begin(seq).unwrap();
                }
                bcast.append(&seg, WireFrame::new(frame(k))).unwrap();
                k += 1;
                for c in &mut cursors {
                    while let Some(step) = c.next().now_or_never() {
                        if let Step::Frames(f) = step {
                            criterion::black_box(f);
                        }
                    }
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, codec, fan_out);
criterion_main!(benches);
