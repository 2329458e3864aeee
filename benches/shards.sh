#!/bin/bash
# Scale-out on one machine: the same corpus as N = 1 and N = 2 shards, each
# shard a process with --threads 1, all shards at once on one outputs
# directory, then `transum merge`. Prints wall time and tokens/s per N, and
# checks that both give the same translations and summary.
#
#   cargo build --release && cargo bench --bench throughput -- --batch 16 --beams 1
#   benches/shards.sh [MODEL_DIR] [COPIES]
#
# MODEL_DIR defaults to target/bench-model (the opus-mt-fr-en-shaped random
# model the throughput bench writes); COPIES (default 2) copies of the five
# corpus articles make the corpus. Greedy, 48 new tokens per sentence at most,
# extractive summary.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
model="${1:-$repo/target/bench-model}"
copies="${2:-2}"
bin="$repo/target/release/transum"
work="$(mktemp -d /tmp/transum-shards.XXXXXX)"
src="$repo/../shared/corpus"; [ -d "$src" ] || src="$repo/corpus"
mkdir -p "$work/corpus"
for c in $(seq "$copies"); do
    for f in "$src"/*.txt; do cp "$f" "$work/corpus/c${c}_$(basename "$f")"; done
done
flags=(--offline --model "$model" --beams 1 --max-new-tokens 48 --summarizer extractive)
export TRANSUM_EMBED_MODEL=none
for n in 1 2; do
    out="$work/out$n"
    start=$(date +%s.%N)
    for i in $(seq 0 $((n - 1))); do
        "$bin" --threads 1 run --corpus "$work/corpus" --outputs "$out" --shard "$i/$n" "${flags[@]}" 2>"$work/shard$n-$i.log" &
    done
    wait
    "$bin" merge --corpus "$work/corpus" --outputs "$out" --summarizer extractive 2>"$work/merge$n.log"
    secs=$(echo "$(date +%s.%N) - $start" | bc)
    tokens=$(python3 -c "import json;print(json.load(open('$out/manifest.json'))['output_tokens'])")
    printf 'N=%d shards x 1 thread: %6.1f s wall, %d tokens, %6.1f tokens/s\n' "$n" "$secs" "$tokens" \
        "$(echo "$tokens / $secs" | bc -l)"
done
for f in "$work"/out1/*.en.txt "$work"/out1/summary.md; do
    cmp -s "$f" "$work/out2/$(basename "$f")" || { echo "DIFFER: $(basename "$f")"; exit 1; }
done
echo "N=1 and N=2 outputs are byte-identical ($(ls "$work"/out1/*.en.txt | wc -l) articles)"
rm -rf "$work"
