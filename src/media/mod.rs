//! Media: Opus in Ogg, in and out; MP3 and AAC (ADTS) frames in; all of them in fragmented
//! MP4 (out); now-playing titles in (Icecast updates, OpusTags) and out (ICY metadata). All
//! of it I/O-free (bytes in, packets or pages out).

mod aac;
mod codec;
mod fmp4;
#[cfg(test)]
mod fmp4_check;
mod fmp4_track;
pub mod framing;
pub mod icy;
pub mod metadata;
mod ogg_demux;
mod ogg_mux;
pub mod ogg_page;
mod opus;
mod packed;
mod source;
mod timeline;

pub use aac::{aac_config, audio_object_type};
pub use codec::{at_48k, check_codec, content_type, frame_samples, part_samples, PART_MS};
pub use fmp4::{fragment, init_segment};
pub use fmp4_track::hls_codecs;
pub use ogg_demux::{OggEvent, OggOpusDemuxer};
pub use ogg_mux::OggOpusWriter;
pub use opus::{opus_packet_samples, OpusHead, OPUS_RATE};
pub use packed::{id3_tag, packed_audio, timestamp_90k};
pub use source::{SourceDemuxer, SourceEvent, SourceKind};
pub use timeline::{Timeline, MAX_GAP};

#[cfg(test)]
mod tests;
