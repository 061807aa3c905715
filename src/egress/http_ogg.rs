//! HTTP progressive Ogg Opus (`GET /STREAM.ogg`): one more kind of subscriber of the
//! shared fan-out, for ordinary players and browsers. Each listener's Ogg pages go into a
//! small bounded queue that its response body drains.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::{info, info_span, Instrument};

use crate::error::{Error, Result};
use crate::media::OggOpusWriter;
use crate::model::{Batch, Egress, Form};
use crate::node::{fan_out, Delivery, Node, Peer, Sink, Tally};
use crate::proto::Start;

/// Ogg page chunks queued for one HTTP listener; a listener whose socket is full fills this,
/// its writes block, and the fan-out moves it forward like any slow subscriber.
const LISTENER_QUEUE: usize = 8;

/// An HTTP listener: Ogg pages into a bounded queue that the response body drains.
struct HttpSink<'a> {
    tx: mpsc::Sender<Bytes>,
    ogg: OggOpusWriter,
    /// Totals, said when the listener ends.
    frames: u64,
    bytes: u64,
    skips: u64,
    /// The node's totals, added to once per segment.
    tally: Tally<'a>,
}

impl Sink for HttpSink<'_> {
    /// The audio is re-packaged as Ogg pages: each frame's payload and duration.
    const FORM: Form = Form::Frames;

    async fn begin(&mut self, _seq: u64) -> Result<()> {
        Ok(())
    }

    async fn frames(&mut self, batch: &Batch) -> Result<Delivery> {
        let Batch::Frames(frames) = batch else {
            return Ok(Delivery::Done);
        };
        let pages = self
            .ogg
            .packets(frames.iter().map(|f| (&f.frame.payload, f.frame.duration)));
        let (n, len) = (frames.len() as u64, pages.len() as u64);
        self.frames += n;
        self.bytes += len;
        if !pages.is_empty() {
            self.tx
                .send(pages)
                .await
                .map_err(|_| Error::closed("the HTTP listener left"))?;
            self.tally.wrote(n, len);
        }
        Ok(Delivery::Done)
    }

    fn sealed(&mut self, _seq: u64) {
        self.tally.flush();
    }

    /// The Ogg stream simply continues from the newer segment: granule positions count what
    /// this listener heard, so players see a short jump in the audio, never a broken file.
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
) -> Result<mpsc::Receiver<Bytes>> {
    let peer = &peer.served_as(Egress::HttpOgg);
    let span = info_span!("sub", path = %name, role = "http");
    let mut sub = node
        .subscribe(&name, Start::Live, node.cfg.http_wait_secs.get(), peer)
        .instrument(span.clone())
        .await?;
    // Players buffer before they start (Chromium probes a few seconds of Ogg): begin one
    // whole segment further back than the live edge, so they start at once.
    sub.cursor.back(1);
    if low_latency {
        sub.cursor.eager();
    }
    let (tx, rx) = mpsc::channel::<Bytes>(LISTENER_QUEUE);
    let mut ogg = OggOpusWriter::new(rand::random());
    let headers = ogg.headers(&sub.cursor.broadcast().codec.header);
    let _ = tx.try_send(headers);
    tokio::spawn(
        async move {
            // The whole subscription moves here (not just its cursor): its place in the
            // counts lasts as long as the listener.
            let mut sub = sub;
            let started = std::time::Instant::now();
            let mut sink = HttpSink {
                tx,
                ogg,
                frames: 0,
                bytes: 0,
                skips: 0,
                tally: Tally::new(&node.stats, sub.joining),
            };
            let why = match fan_out(&node, &mut sub.cursor, &mut sink).await {
                Ok(_) => {
                    let tail = sink.ogg.finish();
                    let _ = sink.tx.send(tail).await;
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
