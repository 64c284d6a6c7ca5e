#!/bin/sh
# Build the seed corpora from the real XL 10 captures in tests/vectors.
#   frames:  every captured stream, whole (both directions, all link types)
#   backend: the streams backends sent (to a proxy or straight to a gtm)
#   answers: u16le length + what a proxy sent on a link + what the gtm answered
# Usage: fuzz/seeds.sh   (from anywhere; writes fuzz/corpus/<target>/)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
vectors="$here/../tests/vectors"
corpus="$here/corpus"
mkdir -p "$corpus/frames" "$corpus/backend" "$corpus/answers"
for f in "$vectors"/cap*/*.bin; do
    cap=$(basename "$(dirname "$f")")
    name="$cap-$(basename "$f" .bin)"
    cp "$f" "$corpus/frames/$name"
    case "$f" in
        *-backend-to-*) cp "$f" "$corpus/backend/$name" ;;
    esac
done
# Pairs: connNN-<proxy>-to-<gtm>.bin with connNN-<gtm>-to-<proxy>.bin.
for sent in "$vectors"/cap*/conn*-proxy*-to-gtm*.bin; do
    [ -e "$sent" ] || continue
    dir=$(dirname "$sent")
    base=$(basename "$sent" .bin)
    conn=${base%%-*}
    rest=${base#*-}
    from=${rest%%-to-*}
    to=${rest#*-to-}
    answer="$dir/$conn-$to-to-$from.bin"
    [ -e "$answer" ] || continue
    size=$(wc -c < "$sent")
    [ "$size" -le 65535 ] || continue
    out="$corpus/answers/$(basename "$dir")-$base"
    # u16 little-endian length prefix
    printf "$(printf '\\%03o\\%03o' $((size % 256)) $((size / 256)))" > "$out"
    cat "$sent" "$answer" >> "$out"
done
for t in frames backend answers; do
    echo "$t: $(ls "$corpus/$t" | wc -l) seeds"
done
