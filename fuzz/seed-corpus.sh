#!/usr/bin/env bash
# Seeds each fuzz target's corpus from the protocol's test vectors (proto/vectors.txt):
# message vectors (valid and invalid) for `control`, frame vectors for `frames`, the segment
# header for `uni_header`, the WebTransport envelopes for `webtransport`; and the demo's Ogg Opus sample for `ogg`.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p corpus/control corpus/frames corpus/uni_header corpus/ogg corpus/http_head corpus/webtransport corpus/radio_frames corpus/icy_metadata
while read -r kind name hex; do
  case "$kind" in
    message|invalid_message) dir=control; prefix='\x00' ;;
    frame|invalid_frame) dir=frames; prefix='' ;;
    segment_header) dir=uni_header; prefix='' ;;
    # The webtransport target's first byte: 1 = a unidirectional stream, 0 = bidirectional.
    wt_segment) dir=webtransport; prefix='\x01' ;;
    wt_control) dir=webtransport; prefix='\x00' ;;
    *) continue ;;
  esac
  # The control target reads its first byte as where to split the input: 0 = no split.
  { printf "$prefix"; perl -e "print pack(\"H*\", \"$hex\")"; } > "corpus/$dir/$name"
done < <(grep -v '^#' ../proto/vectors.txt | grep -v '^$')
cp ../src/cli/demo/sample.opus corpus/ogg/sample.opus
# Request heads as players, encoders and caches send them.
printf 'GET /live.ogg?token=abc HTTP/1.1\r\nHost: x\r\nIcy-MetaData: 1\r\n\r\n' > corpus/http_head/ogg
printf 'GET /a/b.m3u8?_HLS_msn=12&_HLS_part=3 HTTP/1.1\r\nHost: x\r\n\r\n' > corpus/http_head/playlist
printf 'GET /a/b.hls/77/12.3.m4s HTTP/1.1\r\nHost: x\r\n\r\n' > corpus/http_head/part
printf 'PUT /live HTTP/1.1\r\nAuthorization: Basic c291cmNlOng=\r\nExpect: 100-continue\r\nContent-Type: audio/ogg\r\n\r\n' > corpus/http_head/put
printf 'PUT example.com:80 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n' > corpus/http_head/authority
printf 'SOURCE /live HTTP/1.0\r\nAuthorization: Basic c291cmNlOng=\r\n\r\n' > corpus/http_head/source
# An ADTS frame header and an MP3 one (AAC LC 44.1 kHz stereo; MPEG-1 layer III 128 kbit/s).
printf '\xff\xf1\x50\x80\x2e\x7f\xfc' > corpus/radio_frames/adts
printf '\xff\xfb\x90\x64' > corpus/radio_frames/mp3
# Now-playing metadata (the first byte is the ICY interval, the second the piece size): an
# ICY stream with a title block every 4 bytes, an Icecast metadata update, an OpusTags packet.
printf '\x04\x02abcd\x02StreamTitle='"'"'A - B'"'"';\0\0\0\0\0\0\0\0\0\0\0\0efgh\x00ijkl\x01StreamTitle='"'"''"'"';\0' > corpus/icy_metadata/icy
printf '\x00\x00mode=updinfo&mount=%%2Flive&song=Caf%%E9+-+Title&charset=ISO-8859-1' > corpus/icy_metadata/updinfo
printf '\x00\x00OpusTags\x07\x00\x00\x00quicast\x02\x00\x00\x00\x08\x00\x00\x00ARTIST=A\x07\x00\x00\x00TITLE=T' > corpus/icy_metadata/opustags
