//! HTTP progressive Ogg Opus (`GET /STREAM.ogg`): one more kind of subscriber of the
//! shared fan-out, for ordinary players and browsers. Each listener's Ogg pages go into a
//! small bounded queue that its response body drains.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::{info, info_span, Instrument};

use crate::error::{Error, Result};
use crate::media::ogg_page;
use crate::model::{Batch, Egress, Form};
use crate::node::{fan_out, Delivery, Node, Peer, Sink, Tally};
use crate::proto::Start;

/// Deliveries queued for one HTTP listener (each a few shared pages); a listener whose
/// socket is full fills this, its writes block, and the fan-out moves it forward like any
/// slow subscriber.
const LISTENER_QUEUE: usize = 8;

/// An HTTP listener: the broadcast's shared Ogg pages (made once per node: see
/// `model::segment::OggNumbering`), after two header pages of its own, into a bounded queue
/// that the response body drains.
struct HttpSink<'a> {
    tx: mpsc::Sender<Vec<Bytes>>,
    serial: u32,
    opus_head: Bytes,
    /// The sequence number and granule of the last page sent (its header pages go before
    /// the first).
    last: Option<(u32, u64)>,
    /// Totals, said when the listener ends.
    frames: u64,
    bytes: u64,
    skips: u64,
    /// The node's totals, added to once per segment.
    tally: Tally<'a>,
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
        let Some(first) = pages.first() else {
            return Ok(Delivery::Done);
        };
        let mut out = Vec::with_capacity(pages.len() + 1);
        if self.last.is_none() {
            let seq = ogg_page::page_numbers(first).map_or(2, |(s, _)| s);
            out.push(ogg_page::opus_header_pages(
                self.serial,
                seq,
                &self.opus_head,
            ));
        }
        out.extend(pages.iter().cloned());
        if let Some(l) = pages.last().and_then(|p| ogg_page::last_page_numbers(p)) {
            self.last = Some(l);
        }
        let len: u64 = out.iter().map(|b| b.len() as u64).sum();
        self.frames += *n as u64;
        self.bytes += len;
        self.tx
            .send(out)
            .await
            .map_err(|_| Error::closed("the HTTP listener left"))?;
        self.tally.wrote(*n as u64, len);
        Ok(Delivery::Done)
    }

    fn sealed(&mut self, _seq: u64) {
        self.tally.flush();
    }

    /// The pages simply continue from the newer segment (a gap in their sequence numbers
    /// says what was skipped, as a lagging Icecast listener sees): players hear a short
    /// jump, never a broken file.
    fn skip(&mut self) {
        self.tally.flush();
        self.skips += 1;
    }
}

/// Subscribes an HTTP listener to `name` (waiting up to `http-wait-secs` for it to start) and
/// returns the Ogg bytes it is to be sent: headers, a burst, then the live edge. The stream
/// ends with the broadcast. `low_latency`: every frame at once, while the node has headroom.
pub(crate) async fn listen(
    node: Arc<Node>,
    name: String,
    peer: &Peer,
    low_latency: bool,
) -> Result<mpsc::Receiver<Vec<Bytes>>> {
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
    let (tx, rx) = mpsc::channel::<Vec<Bytes>>(LISTENER_QUEUE);
    let serial = ogg.serial;
    let opus_head = b.codec.header.clone();
    tokio::spawn(
        async move {
            // The whole subscription moves here (not just its cursor): its place in the
            // counts lasts as long as the listener.
            let mut sub = sub;
            let started = std::time::Instant::now();
            let mut sink = HttpSink {
                tx,
                serial,
                opus_head,
                last: None,
                frames: 0,
                bytes: 0,
                skips: 0,
                tally: Tally::new(&node.stats, sub.joining),
            };
            let why = match fan_out(&node, &mut sub.cursor, &mut sink).await {
                Ok(_) => {
                    if let Some((seq, granule)) = sink.last {
                        let end = ogg_page::eos_page(serial, seq.wrapping_add(1), granule);
                        let _ = sink.tx.send(vec![end]).await;
                    }
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
        .instrument(span),
    );
    Ok(rx)
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
