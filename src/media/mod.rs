//! Media: Opus in Ogg, in and out, and in fragmented MP4 (out); now-playing titles, in (Icecast
//! updates, OpusTags) and out (ICY metadata). All of it I/O-free (bytes in, packets or pages out).

mod fmp4;
pub mod framing;
pub mod icy;
pub mod metadata;
mod ogg_demux;
mod ogg_mux;
pub mod ogg_page;
mod opus;
mod timeline;

pub use fmp4::{fragment, init_segment};
pub use ogg_demux::{OggEvent, OggOpusDemuxer};
pub use ogg_mux::OggOpusWriter;
pub use opus::{opus_packet_samples, OpusHead, OPUS_RATE};
pub use timeline::{Timeline, MAX_GAP};

#[cfg(test)]
mod tests;
