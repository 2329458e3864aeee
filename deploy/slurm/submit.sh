#!/bin/bash
# Submit the array (N tasks, default 4) and a merge job that runs only if
# every task succeeded (--dependency=afterok). Extra arguments go to both
# `transum run` and `transum merge`: summary and search flags (e.g.
# --summarizer extractive --beams 1). Flags for `run` alone (--model ...) go
# in TRANSUM_RUN_FLAGS, which sbatch passes on with the environment.
#
#   deploy/slurm/submit.sh [-n N] [transum flags...]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
n=4
if [ "${1:-}" = "-n" ]; then n="$2"; shift 2; fi
array=$(sbatch --parsable --array="0-$((n - 1))" "$here/transum-array.sbatch" "$@")
array="${array%%;*}"
merge=$(sbatch --parsable --dependency="afterok:$array" "$here/transum-merge.sbatch" "$@")
echo "array job $array ($n tasks), merge job ${merge%%;*} after it"
