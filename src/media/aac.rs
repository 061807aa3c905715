//! AAC's AudioSpecificConfig (ISO/IEC 14496-3 §1.6.2.1): what an MP4 sample entry and an HLS
//! CODECS value say about an AAC stream, built from the ADTS header an encoder sends with
//! every frame (ISO/IEC 13818-7 §6.2 and 14496-3 §1.A.2).
//!
//! An ADTS header holds the same three fields the short form of the config does: the
//! profile (the object type less one), the sampling frequency index and the channel
//! configuration. HE-AAC sent in ADTS says LC at the core rate (implicit SBR signalling,
//! 14496-3 §4.6.18.2): the config built from it says so too, and the decoder finds the SBR
//! data in the stream, as it does with the ADTS stream itself.

use bytes::Bytes;

use super::framing;

/// The AudioSpecificConfig an ADTS header describes: audioObjectType (5 bits, the ADTS
/// profile plus one), samplingFrequencyIndex (4), channelConfiguration (4), and three zero
/// bits (GASpecificConfig: 1024-sample frames, no core coder delay, no extension). `None` if
/// `adts_header` does not start with an ADTS header `framing::adts` takes.
pub fn aac_config(adts_header: &[u8]) -> Option<Bytes> {
    framing::adts(adts_header)?;
    let profile = adts_header[2] >> 6;
    let rate_index = (adts_header[2] >> 2) & 0x0f;
    let channels = ((adts_header[2] & 1) << 2) | (adts_header[3] >> 6);
    let object_type = profile + 1;
    let config: u16 =
        (object_type as u16) << 11 | (rate_index as u16) << 7 | (channels as u16) << 3;
    Some(Bytes::copy_from_slice(&config.to_be_bytes()))
}

/// The audioObjectType an AudioSpecificConfig starts with (14496-3 §1.6.2.1: 5 bits; 31
/// escapes to 32 plus the next 6), or `None` if `config` is too short or says 0 (null).
pub fn audio_object_type(config: &[u8]) -> Option<u8> {
    let first = *config.first()? >> 3;
    let aot = if first == 31 {
        let next = u16::from_be_bytes([config[0], *config.get(1)?]);
        32 + ((next >> 5) & 0x3f) as u8
    } else {
        first
    };
    (aot != 0).then_some(aot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_adts_header_gives_the_two_byte_config() {
        // AAC LC (profile 1), 44.1 kHz (index 4), stereo: 0x1210, the config every LC
        // stereo 44.1 kHz file carries.
        let lc = [0xff, 0xf1, 0x50, 0x80, 0x2e, 0x7f, 0xfc];
        assert_eq!(aac_config(&lc).as_deref(), Some(&[0x12, 0x10][..]));
        // Main profile (0), 48 kHz (3), mono, with a CRC (protection_absent 0): 0x0988.
        let main = [0xff, 0xf0, 0x0c, 0x40, 0x2e, 0x7f, 0xfc, 0x00, 0x00];
        assert_eq!(aac_config(&main).as_deref(), Some(&[0x09, 0x88][..]));
        // Not ADTS, cut short: none.
        assert_eq!(aac_config(&[0xff, 0xfb, 0x90, 0x64, 0, 0, 0]), None);
        assert_eq!(aac_config(&lc[..6]), None);
    }

    #[test]
    fn the_object_type_is_read_with_its_escape() {
        assert_eq!(audio_object_type(&[0x12, 0x10]), Some(2));
        // HE-AAC signalled explicitly (SBR, 5) and HE-AACv2 (PS, 29).
        assert_eq!(audio_object_type(&[0x2b, 0x92, 0x08, 0x00]), Some(5));
        assert_eq!(audio_object_type(&[0xeb, 0x92]), Some(29));
        // 31, then 6 bits of 2: object type 34 (layer 3).
        assert_eq!(audio_object_type(&[0xf8, 0x40]), Some(34));
        assert_eq!(audio_object_type(&[0xf8]), None);
        assert_eq!(audio_object_type(&[]), None);
        assert_eq!(audio_object_type(&[0x00, 0x10]), None);
    }
}
