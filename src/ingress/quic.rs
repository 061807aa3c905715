//! QUIC publishers: one ordered stream of frames into the node's ingest.

use std::sync::Arc;

use quinn::Connection;
use tracing::{info, warn};

use crate::error::{Error, Kind};
use crate::node::{Node, Publishing, SegmentRead};
use crate::proto::{Codec, Message, UniHeader};
use crate::transport::{conn_error, ControlWriter, FrameReader};

/// A QUIC publisher: one ordered stream of frames into the shared ingest.
pub(crate) async fn serve_publish(
    node: Arc<Node>,
    conn: Connection,
    ctl: ControlWriter,
    path: String,
    codec: Codec,
    broadcast: Option<u64>,
    credential: Option<[u8; 32]>,
) {
    let mut publishing = match Publishing::claim(&node, &path, codec, credential, broadcast) {
        Ok(p) => p,
        Err(e) => {
            warn!(side = "downstream", code = %e.code(), "publish refused: {e}");
            return ctl.fail(&conn, &e).await;
        }
    };
    let displaced = publishing.displaced();
    let silence = node.cfg.source_timeout_ms.get();
    let result = async {
        ctl.send(Message::PublishOk {
            instance: publishing.broadcast.instance,
        })
        .await?;
        let recv = tokio::time::timeout(silence, conn.accept_uni())
            .await
            .map_err(|_| Error::timeout("publisher opened no frame stream"))?
            .map_err(conn_error)?;
        let mut reader = FrameReader::new(recv);
        let header = tokio::time::timeout(silence, reader.header())
            .await
            .map_err(|_| Error::timeout("publisher sent no audio"))??;
        if header != UniHeader::Publish {
            return Err(Error::protocol(format!(
                "{header:?} stream where frames were expected"
            )));
        }
        let mut frames = Vec::new();
        loop {
            frames.clear();
            // A publisher is never silent for long: one that sends nothing for
            // `source-timeout` is lost (crashed, or cut off), and its grace period starts.
            let read = tokio::time::timeout(silence, reader.frames(&mut frames))
                .await
                .map_err(|_| Error::timeout("publisher sent no audio"))?;
            match read {
                SegmentRead::Frames => {
                    let bytes = frames.iter().map(|f| f.frame.payload.len() as u64).sum();
                    node.stats.received(frames.len() as u64, bytes);
                    publishing.push(frames.drain(..).map(|f| f.frame))?
                }
                SegmentRead::Finished => return Ok(()),
                SegmentRead::Reset(code) => {
                    return Err(Error::remote(code, "the publisher reset its frame stream"))
                }
                SegmentRead::Failed(e) => return Err(e),
            }
        }
    };
    let result = tokio::select! {
        r = result => r,
        _ = displaced.notified() => {
            info!("a publisher with the same credentials took over: leaving");
            let e = Error::new(
                Kind::Conflict,
                "a newer publisher with the same credentials took this stream over",
            );
            ctl.fail(&conn, &e).await;
            return;
        }
    };
    match result {
        Ok(()) => publishing.finish(),
        Err(e) => {
            match e.kind() {
                _ if e.is_gone() || e.remote_code().is_some() => {
                    warn!(side = "downstream", "publisher lost: {e}")
                }
                Kind::Timeout => {
                    warn!(
                        side = "downstream",
                        silence_ms = silence.as_millis() as u64,
                        "publisher lost: {e}"
                    );
                    ctl.fail(&conn, &e).await;
                }
                _ => {
                    warn!(side = "downstream", code = %e.code(), "publisher refused: {e}");
                    ctl.fail(&conn, &e).await;
                }
            }
            publishing.lost();
        }
    }
}
