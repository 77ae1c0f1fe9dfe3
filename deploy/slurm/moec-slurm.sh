#!/bin/bash
# Runs one moec job on a Slurm allocation: the coordinator on the first node, a worker on every
# node (one per node; add --cuda-device per GPU task for GPU nodes), the recipe submitted and
# watched, everything stopped at the end. The token is generated into a directory on the shared
# file system (MOEC_SHARED, default $HOME/.moec-slurm/$SLURM_JOB_ID), readable only by the user.
#
#   sbatch -N 4 --ntasks-per-node=1 deploy/slurm/moec-slurm.sh recipes/mc-moe-2.5.yaml [--set K=V]...
#
# Needs moec, moec-coordinator and moec-worker on PATH on every node, and the recipe's model and
# data paths visible from every node.
#SBATCH --job-name=moec
#SBATCH --ntasks-per-node=1
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: sbatch moec-slurm.sh RECIPE [--set K=V]..." >&2; exit 2; }
RECIPE=$1
shift
: "${SLURM_JOB_ID:?run this under sbatch or salloc}"
SHARED=${MOEC_SHARED:-$HOME/.moec-slurm/$SLURM_JOB_ID}
PORT=${MOEC_PORT:-7070}
mkdir -p "$SHARED"
chmod 700 "$SHARED"
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$SHARED/token"
chmod 600 "$SHARED/token"

HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
COORD="$HEAD:$PORT"
echo "moec: coordinator on $COORD, workers on $SLURM_JOB_NUM_NODES node(s), state in $SHARED"

srun --nodes=1 --ntasks=1 -w "$HEAD" --overlap \
  moec-coordinator --listen "0.0.0.0:$PORT" --data-dir "$SHARED/db" --token-file "$SHARED/token" \
  > "$SHARED/coordinator.log" 2>&1 &
COORD_PID=$!
# Each worker advertises its node's address for the gang collectives and keeps the hidden states
# of its tasks in an activation store on the shared file system, one directory per node
# (MOEC_SCRATCH_ROOT for a node-local disk instead).
SCRATCH_ROOT=${MOEC_SCRATCH_ROOT:-$SHARED/scratch}
srun --ntasks="$SLURM_JOB_NUM_NODES" --ntasks-per-node=1 --overlap \
  bash -c 'exec moec-worker --coordinator "$0" --token-file "$1" --advertise-host "$(hostname -i | cut -d" " -f1)" --scratch "$2/$(hostname)"' \
  "$COORD" "$SHARED/token" "$SCRATCH_ROOT" > "$SHARED/workers.log" 2>&1 &
WORKERS_PID=$!
cleanup() { kill "$WORKERS_PID" "$COORD_PID" 2> /dev/null || true; wait 2> /dev/null || true; }
trap cleanup EXIT

export MOEC_COORDINATOR=$COORD MOEC_TOKEN_FILE=$SHARED/token
for _ in $(seq 120); do moec workers > /dev/null 2>&1 && break; sleep 1; done
moec submit "$RECIPE" "$@" --watch
