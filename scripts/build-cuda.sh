#!/bin/bash
# Build transum with `--features cuda` on a machine with no GPU and no system
# CUDA: nvcc and the CUDA 13.0 libraries come from PyPI wheels, and the
# binary links against a link-only libcuda.so.1 stub (the real one is the GPU
# machine's driver). scripts/cuda-env.sh (from ../shared/tools, the tested
# recipe of DESIGN.md section 7) installs them under target/cuda-toolkit once.
#
#   scripts/build-cuda.sh [--check]
#
# Default: `cargo build --release --features cuda` into target/cuda/, the
# binary at target/cuda/release/transum (about 5-12 minutes cold on 2 cores).
# --check: `cargo check --features cuda --all-targets` instead (compiles the
# CUDA kernels and type-checks transum's CUDA code, without the final link).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
export CP_ROOT="$repo/target/cuda-toolkit"
# shellcheck source=scripts/cuda-env.sh
. scripts/cuda-env.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target/cuda}"
if [ "${1:-}" = "--check" ]; then
    cargo check --release --features cuda --all-targets
else
    cargo build --release --features cuda --bin transum
    echo "built: $CARGO_TARGET_DIR/release/transum"
    ldd "$CARGO_TARGET_DIR/release/transum" | grep -E "cuda|cublas|curand" || true
fi
