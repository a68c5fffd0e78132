#!/usr/bin/env bash
# Write the King James Bible as plain text to data/kjv/kjv.txt from Debian's bible-kjv package, then
# byte-level token shards data/kjv/{train,val}.bin (last 10% of the bytes = val) with
# `seqtrain prepare-data`. Idempotent: existing text and up-to-date shards are kept.
# Usage: scripts/prepare_kjv.sh   Environment: SEQTRAIN_BIN (default build/seqtrain)
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--help" || "${1:-}" == "-h" ]]; then
  sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'; exit 0
fi

out_dir=data/kjv
text="$out_dir/kjv.txt"
bin="${SEQTRAIN_BIN:-build/seqtrain}"

if [[ -s "$text" ]]; then
  echo "prepare_kjv: $text exists ($(stat -c %s "$text") bytes); keeping it"
else
  if ! dpkg-query -W -f='${Status}' bible-kjv 2>/dev/null | grep -q "ok installed" || ! command -v bible >/dev/null; then
    echo "prepare_kjv: the Debian package bible-kjv (the 'bible' program and its text) is not installed;" \
         "run scripts/setup.sh first" >&2
    exit 1
  fi
  mkdir -p "$out_dir"
  # The package stores the text compressed for random access, readable only through `bible`. The
  # range Gen1:1-Rev22:21 is the whole book. Default formatting: a "Book N" line per chapter, each
  # verse indented after its number, lines wrapped at 79 columns (given explicitly with -l so that
  # COLUMNS cannot change the text). No stdin, or `bible` would wait for interactive commands.
  bible -l 79 Gen1:1-Rev22:21 </dev/null >"$text.tmp"
  bytes=$(stat -c %s "$text.tmp")
  if ((bytes < 4000000)) || ! tail -n 1 "$text.tmp" | grep -q "The grace of our Lord Jesus Christ be with you all. Amen."; then
    echo "prepare_kjv: 'bible -l 79 Gen1:1-Rev22:21' gave $bytes bytes without ending at Revelation 22:21;" \
         "is the bible-kjv-text package intact? (reinstall with scripts/setup.sh)" >&2
    rm -f "$text.tmp"
    exit 1
  fi
  mv "$text.tmp" "$text"
  echo "prepare_kjv: wrote $text ($bytes bytes, sha256 $(sha256sum "$text" | cut -c1-16)...)"
fi

if [[ -s "$out_dir/train.bin" && -s "$out_dir/val.bin" && "$out_dir/train.bin" -nt "$text" && "$out_dir/val.bin" -nt "$text" ]]; then
  echo "prepare_kjv: $out_dir/train.bin and val.bin are up to date; keeping them"
  exit 0
fi
if [[ ! -x "$bin" ]]; then
  echo "prepare_kjv: $bin not found, so the token shards were not written; build it (scripts/setup.sh)" \
       "and run this script again, or set SEQTRAIN_BIN" >&2
  exit 1
fi
"$bin" prepare-data --text "$text" --out "$out_dir" --val-fraction 0.1
