#!/bin/bash
# A real Slurm run on one machine: a single-node cluster on localhost
# (slurmctld + slurmd + munge), the array job and the dependent merge job of
# submit.sh, then the outputs compared byte for byte with one plain
# `transum run` of the same corpus. Uses the marian-a fixture model, so no
# download. Run as root from the repository root after `cargo build --release`:
#
#   apt-get install -y slurm-wlm munge     # Debian packages
#   deploy/slurm/local-check.sh [N]        # N array tasks, default 3
#
# Prints PASS or FAIL with what differed; exits 0 on PASS.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
n="${1:-3}"
bin="${TRANSUM_BIN:-$repo/target/release/transum}"
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 2; }
command -v slurmctld >/dev/null || { echo "install slurm-wlm and munge first" >&2; exit 2; }
work="$(mktemp -d /tmp/transum-slurm.XXXXXX)"
host="$(hostname -s)"
cpus="$(nproc)"
mem="$(awk '/MemTotal/ {print int($2 / 1024) - 512}' /proc/meminfo)"
cleanup() {
    scancel --quiet -u root 2>/dev/null || true
    pkill -x slurmd 2>/dev/null || true
    pkill -x slurmctld 2>/dev/null || true
    [ -n "${munge_pid:-}" ] && kill "$munge_pid" 2>/dev/null || true
}
trap cleanup EXIT

# munge: a key and a daemon (its sockets in the work directory).
mkdir -p "$work/munge" "$work/state" "$work/spool" "$work/log"
dd if=/dev/urandom bs=1 count=1024 of="$work/munge/munge.key" status=none
chmod 0400 "$work/munge/munge.key"
munged --key-file="$work/munge/munge.key" --socket="$work/munge/munge.socket" \
    --pid-file="$work/munge/munged.pid" --log-file="$work/log/munged.log" \
    --seed-file="$work/munge/seed" --force
munge_pid="$(cat "$work/munge/munged.pid")"

cat > "$work/slurm.conf" <<CONF
ClusterName=transum-check
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$work/munge/munge.socket
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$work/log/slurmctld.log
SlurmdLogFile=$work/log/slurmd.log
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
MaxArraySize=1000
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=check Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF="$work/slurm.conf"
slurmctld -c
slurmd
for _ in $(seq 60); do
    sinfo -h -o %T 2>/dev/null | grep -q idle && break
    sleep 1
done
sinfo -h -o %T | grep -q idle || { echo "FAIL: the node did not come up"; tail -20 "$work"/log/*; exit 1; }

# The job directory: corpus (the five articles and four renamed copies), outputs.
job="$work/job"
mkdir -p "$job/corpus"
cp "$repo"/../shared/corpus/*.txt "$job/corpus/" 2>/dev/null || cp "$repo"/corpus/*.txt "$job/corpus/"
i=0
for f in "$job"/corpus/*.txt; do
    [ $i -lt 4 ] && cp "$f" "$job/corpus/copy$i.txt"
    i=$((i + 1))
done
flags=(--summarizer extractive --beams 1 --max-new-tokens 16)
export TRANSUM="$bin" TRANSUM_HOME="$job" TRANSUM_EMBED_MODEL=none
export TRANSUM_RUN_FLAGS="--model $repo/tests/fixtures/models/marian-a"
start=$(date +%s.%N)
(cd "$job" && "$repo/deploy/slurm/submit.sh" -n "$n" "${flags[@]}")
for _ in $(seq 600); do
    [ -z "$(squeue -h 2>/dev/null)" ] && break
    sleep 1
done
secs=$(echo "$(date +%s.%N) - $start" | bc)
echo "slurm jobs finished in ${secs}s; logs:"
tail -n 3 "$job"/transum-*.log

# The same corpus in one plain run.
single="$work/single"
mkdir -p "$single"
cp -r "$job/corpus" "$single/corpus"
(cd "$single" && "$bin" run --offline $TRANSUM_RUN_FLAGS "${flags[@]}" >/dev/null 2>&1)

status=0
[ -f "$job/outputs/manifest.json" ] || { echo "FAIL: the merge job wrote no manifest"; exit 1; }
for f in "$single"/outputs/*.en.txt "$single"/outputs/summary.md "$single"/outputs/summary.json; do
    name="$(basename "$f")"
    if ! cmp -s "$f" "$job/outputs/$name"; then
        echo "FAIL: $name differs from the single run's"
        status=1
    fi
done
shards=$(python3 -c "import json;print(len(json.load(open('$job/outputs/manifest.json'))['shards']))")
echo "merged manifest: $shards shard records; translations: $(ls "$job"/outputs/*.en.txt | wc -l)"
[ "$shards" = "$n" ] || { echo "FAIL: expected $n shard records"; status=1; }
[ $status = 0 ] && echo "PASS: Slurm array of $n tasks + dependent merge == one run (byte-identical translations and summary)"
exit $status
