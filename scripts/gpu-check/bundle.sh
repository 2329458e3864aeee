#!/bin/bash
# Make the GPU check's bundle on a build machine (no GPU needed): the CUDA
# build of transum and of its throughput bench, the fixture models and
# goldens, the bench's 200 sentences, and the check itself, laid out as the
# repository is, in target/gpu-check.tar.gz.
#
#   scripts/gpu-check/bundle.sh
#   # copy target/gpu-check.tar.gz to the GPU machine, then there:
#   tar xzf gpu-check.tar.gz && cd gpu-check && python3 scripts/gpu-check/gpu_check.py
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$repo"
scripts/build-cuda.sh
# The bench, built the same way (scripts/build-cuda.sh's environment).
(
    export CP_ROOT="$repo/target/cuda-toolkit" CARGO_TARGET_DIR="$repo/target/cuda"
    . scripts/cuda-env.sh
    cargo build --release --features cuda --bench throughput
)
cargo build --release --bench throughput
out="$repo/target/gpu-check"
rm -rf "$out" && mkdir -p "$out/bin" "$out/tests/fixtures" "$out/benches/compare" "$out/scripts/gpu-check"
cp target/cuda/release/transum "$out/bin/transum"
bench=$(ls -t target/cuda/release/deps/throughput-* | grep -v '\.d$' | head -1)
cp "$bench" "$out/bin/throughput"
# Symbols are not needed there (67 -> 62 MB for transum; most is the kernels).
strip "$out/bin/transum" "$out/bin/throughput"
# libcurand.so.10, which some PyTorch wheels lack (torch 2.15 cu132 does);
# the check puts lib/ on LD_LIBRARY_PATH after torch's own CUDA libraries.
mkdir -p "$out/lib"
cp "$(ls "$repo"/target/cuda-toolkit/.venv/lib/python3*/site-packages/nvidia/cu13/lib/libcurand.so.10)" "$out/lib/"
cp -r tests/fixtures/models tests/fixtures/goldens "$out/tests/fixtures/"
cp benches/compare/compare.py "$out/benches/compare/"
cp scripts/gpu-check/gpu_check.py "$out/scripts/gpu-check/"
cpu_bench=$(ls -t target/release/deps/throughput-* | grep -v '\.d$' | head -1)
"$cpu_bench" --print-sentences > "$out/sentences.json"
tar czf "$repo/target/gpu-check.tar.gz" -C "$repo/target" gpu-check
ls -la "$repo/target/gpu-check.tar.gz"
