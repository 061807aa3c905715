#!/usr/bin/env bash
# Seeds each fuzz target's corpus from the protocol's test vectors (proto/vectors.txt):
# message vectors (valid and invalid) for `control`, frame vectors for `frames`, the segment
# header for `uni_header`; and the demo's Ogg Opus sample for `ogg`.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p corpus/control corpus/frames corpus/uni_header corpus/ogg
while read -r kind name hex; do
  case "$kind" in
    message|invalid_message) dir=control; prefix='\x00' ;;
    frame|invalid_frame) dir=frames; prefix='' ;;
    segment_header) dir=uni_header; prefix='' ;;
    *) continue ;;
  esac
  # The control target reads its first byte as where to split the input: 0 = no split.
  { printf "$prefix"; perl -e "print pack(\"H*\", \"$hex\")"; } > "corpus/$dir/$name"
done < <(grep -v '^#' ../proto/vectors.txt | grep -v '^$')
cp ../src/cli/demo/sample.opus corpus/ogg/sample.opus
