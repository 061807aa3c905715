//! HTTP progressive Ogg Opus (`GET /STREAM.ogg`): one more kind of subscriber of the
//! shared fan-out, for ordinary players and browsers, handed the stream's shared Ogg pages
//! and writing them to its socket.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::{info, info_span, Instrument};

use crate::error::{Error, Result};
use crate::media::ogg_page;
use crate::model::{Batch, Egress, Form};
use crate::node::{fan_out, Delivery, Node, Peer, Sink, Subscriber, Tally};
use crate::proto::Start;

/// An HTTP listener: the broadcast's shared Ogg pages (made once per node: see
/// `model::segment::OggNumbering`), after two header pages of its own (0 and 1), written straight to
/// its socket from the fan-out (one task per listener, no queue between): a delivery's pages
/// in one vectored write. A socket that does not take them blocks the write, and the fan-out
/// moves the listener forward by whole segments like any slow subscriber; what was not yet
/// begun is dropped, a page begun is finished first (the stream stays valid Ogg).
struct HttpSink<'a> {
    tcp: &'a mut TcpStream,
    serial: u32,
    opus_head: Bytes,
    /// The sequence number and granule of the last page given to the socket (its header
    /// pages go before the first).
    last: Option<(u32, u64)>,
    /// What is still to be written, and how much of its first buffer already was.
    pending: VecDeque<Bytes>,
    written: usize,
    /// Written at most this often (`http-write-ms`): deliveries in between wait in
    /// `pending`, then go in one write.
    write_every: Duration,
    written_at: Option<tokio::time::Instant>,
    /// Totals, said when the listener ends.
    frames: u64,
    bytes: u64,
    skips: u64,
    /// The node's totals, added to once per segment.
    tally: Tally<'a>,
}

impl HttpSink<'_> {
    /// Writes everything pending (cancel-safe: the state is updated after each write, and a
    /// write given up wrote nothing).
    async fn flush(&mut self) -> Result<()> {
        const MAX: usize = 16;
        while !self.pending.is_empty() {
            let mut slices = [std::io::IoSlice::new(&[]); MAX];
            let mut k = 0;
            for (j, b) in self.pending.iter().take(MAX).enumerate() {
                slices[j] = std::io::IoSlice::new(if j == 0 { &b[self.written..] } else { b });
                k = j + 1;
            }
            let mut n = self
                .tcp
                .write_vectored(&slices[..k])
                .await
                .map_err(|_| Error::closed("the HTTP listener left"))?;
            if n == 0 {
                return Err(Error::closed("the HTTP listener left"));
            }
            while let Some(front) = self.pending.front() {
                let left = front.len() - self.written;
                if n < left {
                    self.written += n;
                    break;
                }
                n -= left;
                self.written = 0;
                self.pending.pop_front();
            }
        }
        Ok(())
    }
}

impl Sink for HttpSink<'_> {
    /// The stream's Ogg pages, shared with every other HTTP listener.
    const FORM: Form = Form::Ogg;

    async fn begin(&mut self, _seq: u64) -> Result<()> {
        Ok(())
    }

    async fn frames(&mut self, batch: &Batch) -> Result<Delivery> {
        let Batch::Ogg(pages, n) = batch else {
            return Ok(Delivery::Done);
        };
        if !pages.is_empty() {
            if self.last.is_none() {
                self.pending
                    .push_back(ogg_page::opus_header_pages(self.serial, &self.opus_head));
            }
            self.pending.extend(pages.iter().cloned());
            if let Some(l) = pages.last().and_then(|p| ogg_page::last_page_numbers(p)) {
                self.last = Some(l);
            }
            let len: u64 = pages.iter().map(|b| b.len() as u64).sum();
            self.frames += *n as u64;
            self.bytes += len;
            self.tally.wrote(*n as u64, len);
        }
        // The first delivery (the burst) at once; then at most every `write_every`.
        let now = tokio::time::Instant::now();
        if self
            .written_at
            .is_some_and(|at| now.duration_since(at) < self.write_every)
        {
            return Ok(Delivery::Done);
        }
        self.written_at = Some(now);
        self.flush().await?;
        Ok(Delivery::Done)
    }

    fn sealed(&mut self, _seq: u64) {
        self.tally.flush();
    }

    /// What was not begun is dropped (a page begun is finished at the next write); the
    /// pages continue from the newer segment, a gap in their sequence numbers saying what
    /// was skipped (as a lagging Icecast listener sees): players hear a short jump, never a
    /// broken file.
    fn skip(&mut self) {
        self.tally.flush();
        self.skips += 1;
        let begun = (self.written > 0)
            .then(|| self.pending.pop_front())
            .flatten();
        self.pending.clear();
        self.pending.extend(begun);
    }
}

/// An HTTP listener subscribed, not yet served.
pub(crate) struct Listener {
    node: Arc<Node>,
    sub: Subscriber,
    write_every: Duration,
    serial: u32,
    opus_head: Bytes,
    span: tracing::Span,
}

/// Subscribes an HTTP listener to `name` (waiting up to `http-wait-secs` for it to start):
/// `serve` then sends it headers, a burst, and the live edge. `low_latency`: every frame at
/// once, while the node has headroom.
pub(crate) async fn listen(
    node: Arc<Node>,
    name: String,
    peer: &Peer,
    low_latency: bool,
) -> Result<Listener> {
    let peer = &peer.served_as(Egress::HttpOgg);
    let span = info_span!("sub", path = %name, role = "http");
    let mut sub = node
        .subscribe(&name, Start::Live, node.cfg.http_wait_secs.get(), peer)
        .instrument(span.clone())
        .await?;
    let b = sub.cursor.broadcast().clone();
    let Some(ogg) = b.ogg.as_ref() else {
        return Err(Error::unsupported("this stream's codec has no Ogg mapping"));
    };
    // Players buffer before they start (Chromium probes a few seconds of Ogg): begin one
    // whole segment further back than the live edge, so they start at once.
    sub.cursor.back(1);
    if low_latency {
        sub.cursor.eager();
    }
    let write_every = if low_latency {
        Duration::ZERO
    } else {
        node.cfg.http_write_ms.get()
    };
    Ok(Listener {
        write_every,
        serial: ogg.serial,
        opus_head: b.codec.header.clone(),
        node,
        sub,
        span,
    })
}

impl Listener {
    /// Serves the listener on `tcp` (its response head already written) until the
    /// broadcast ends (its last page flagged) or the listener goes.
    pub(crate) async fn serve(self, tcp: &mut TcpStream) {
        let Listener {
            node,
            mut sub,
            write_every,
            serial,
            opus_head,
            span,
        } = self;
        async move {
            let started = std::time::Instant::now();
            let mut sink = HttpSink {
                tcp,
                serial,
                opus_head,
                last: None,
                pending: VecDeque::new(),
                written: 0,
                write_every,
                written_at: None,
                frames: 0,
                bytes: 0,
                skips: 0,
                tally: Tally::new(&node.stats, sub.joining),
            };
            let why = match fan_out(&node, &mut sub.cursor, &mut sink).await {
                Ok(_) => {
                    if let Some((seq, granule)) = sink.last {
                        sink.pending.push_back(ogg_page::eos_page(
                            serial,
                            seq.wrapping_add(1),
                            granule,
                        ));
                    }
                    let _ = tokio::time::timeout(Duration::from_secs(5), sink.flush()).await;
                    "the broadcast ended".to_string()
                }
                Err(e) => e.to_string(),
            };
            // One line per HTTP listener when it ends, with its totals.
            info!(
                duration_ms = started.elapsed().as_millis() as u64,
                bytes = sink.bytes,
                frames = sink.frames,
                skips = sink.skips,
                why,
                "HTTP listener ended"
            );
        }
        .instrument(span)
        .await
    }
}

/// Whether `name` is live here (for HEAD, as GET would answer): a relay that does not
/// hold the stream yet asks its parent, briefly, so a player probing with HEAD is not
/// turned away.
pub(crate) async fn is_live(node: &Arc<Node>, name: &str, peer: &Peer) -> bool {
    match node.registry.get(name).and_then(|s| s.broadcast()) {
        Some(_) => true,
        None if node.is_relay() => {
            let wait = node.cfg.http_wait_secs.get().min(Duration::from_secs(5));
            let peer = &peer.served_as(Egress::HttpOgg);
            node.subscribe(name, Start::Live, wait, peer).await.is_ok()
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::{OggEvent, OggOpusDemuxer, OpusHead};
    use tokio::io::AsyncReadExt;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (s, c)
    }

    /// Runs of 100 packets of 200 bytes each as pages from `seq`: (pages, next seq).
    fn run(first_packet: u32, seq: u32) -> (Bytes, u32) {
        let packets: Vec<Vec<u8>> = (first_packet..first_packet + 100)
            .map(|i| {
                let mut p = vec![0xf8; 200];
                p[1..5].copy_from_slice(&i.to_le_bytes());
                p
            })
            .collect();
        let (pages, n) = ogg_page::audio_pages(
            9,
            seq,
            packets
                .iter()
                .enumerate()
                .map(|(k, p)| (&p[..], 960 * (first_packet as u64 + k as u64 + 1))),
        );
        (pages, seq + n)
    }

    #[tokio::test]
    async fn a_listener_skipped_mid_page_gets_that_page_finished_and_a_valid_stream() {
        let (mut server, mut client) = pair().await;
        let _ = socket2::SockRef::from(&server).set_send_buffer_size(4096);
        let stats = crate::node::Stats::default();
        let head = OpusHead::synthetic(2);
        let mut sink = HttpSink {
            tcp: &mut server,
            serial: 9,
            opus_head: head.raw.clone(),
            last: None,
            pending: VecDeque::new(),
            written: 0,
            write_every: Duration::ZERO,
            written_at: None,
            frames: 0,
            bytes: 0,
            skips: 0,
            tally: Tally::new(&stats, std::time::Instant::now()),
        };
        // Far more than the socket takes while nobody reads: the write blocks, and is given
        // up (as the fan-out gives up a lagging subscriber's write) part way through.
        let (mut pages, mut seq) = (Vec::new(), 2);
        for k in 0..40 {
            let (p, next) = run(k * 100, seq);
            pages.push(p);
            seq = next;
        }
        let batch = Batch::Ogg(pages, 4000);
        let blocked =
            tokio::time::timeout(std::time::Duration::from_millis(200), sink.frames(&batch)).await;
        assert!(blocked.is_err(), "the socket took everything");
        assert!(sink.written > 0 || !sink.pending.is_empty());
        sink.skip();
        // Later audio, while the listener reads again.
        let (later, _) = run(100_000, seq + 1000);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = vec![0u8; 65536];
            while let Ok(Ok(n)) =
                tokio::time::timeout(std::time::Duration::from_millis(500), client.read(&mut buf))
                    .await
            {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            got
        });
        sink.frames(&Batch::Ogg(vec![later], 100)).await.unwrap();
        drop(sink);
        drop(server);
        let got = reader.await.unwrap();
        // Every page whole and checked (CRC): the stream parses to the end, the later
        // packets last.
        let mut d = OggOpusDemuxer::new();
        d.push(&got);
        let mut packets = Vec::new();
        while let Ok(Some(ev)) = d.next_event() {
            if let OggEvent::Packet(p, ..) = ev {
                packets.push(u32::from_le_bytes(p[1..5].try_into().unwrap()));
            }
        }
        assert_eq!(
            packets.len() % 100,
            0,
            "whole runs only: {} packets",
            packets.len()
        );
        assert!(
            packets.len() >= 200,
            "some of the first and all of the later"
        );
        assert_eq!(
            &packets[packets.len() - 100..],
            &(100_000..100_100).collect::<Vec<_>>()[..]
        );
        assert_eq!(packets[0], 0, "from the first run");
    }
}
