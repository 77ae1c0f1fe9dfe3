#!/bin/bash
# Multi-host e2e: a coordinator and two workers on three network "hosts" made with network
# namespaces (a bridge 10.77.0.1/24 in the root namespace, one veth per worker namespace at
# 10.77.0.2 and 10.77.0.3). The workers advertise their namespace's address; a job with
# `workers: 2` runs expert-parallel gang tasks (calibrate, quant_loss) whose Gloo connections go
# between the namespaces, and must succeed with each gang spanning both hosts.
# Skips (exit 77) without root, without `ip`, or when namespaces cannot be created.
# Usage: netns_e2e_test.sh BIN_DIR   (holding client/moec, coordinator/moec-coordinator,
#                                     worker/moec-worker)
set -euo pipefail
BIN=$1
MOEC="$BIN/client/moec"
COORD="$BIN/coordinator/moec-coordinator"
WORKER="$BIN/worker/moec-worker"
skip() { echo "SKIP: $*"; exit 77; }
[ "$(id -u)" -eq 0 ] || skip "needs root to create network namespaces"
command -v ip > /dev/null || skip "the ip tool (iproute2) is missing"

TAG="moec$$"
NS1="${TAG}a"
NS2="${TAG}b"
BR="br${TAG: -6}"
WORK=$(mktemp -d /tmp/moec_netns.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do kill -9 "$p" 2> /dev/null || true; done
  ip netns del "$NS1" 2> /dev/null || true
  ip netns del "$NS2" 2> /dev/null || true
  ip link del "$BR" 2> /dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; for f in "$WORK"/*.log; do echo "--- $f"; tail -20 "$f"; done; exit 1; }

ip netns add "$NS1" 2> /dev/null || skip "cannot create network namespaces here"
ip netns add "$NS2"
ip link add "$BR" type bridge || skip "cannot create a bridge"
ip addr add 10.77.0.1/24 dev "$BR"
ip link set "$BR" up
i=2
for ns in "$NS1" "$NS2"; do
  ip link add "v${TAG: -5}$i" type veth peer name eth0 netns "$ns"
  ip link set "v${TAG: -5}$i" master "$BR" up
  ip netns exec "$ns" ip addr add "10.77.0.$i/24" dev eth0
  ip netns exec "$ns" ip link set eth0 up
  ip netns exec "$ns" ip link set lo up
  i=$((i + 1))
done

cd "$WORK"
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > token
chmod 600 token
PORT=17$((RANDOM % 900 + 100))
"$COORD" --listen "10.77.0.1:$PORT" --data-dir "$WORK/db" --token-file token > coord.out 2> coord.log &
PIDS+=($!)
# A worker on host (namespace) $1 at address $2, with its activation store under $WORK.
start_worker() {
  ip netns exec "$1" "$WORKER" --coordinator "10.77.0.1:$PORT" --token-file token \
    --advertise-host "$2" --name "host-$2" --collective-timeout-s 60 --scratch "$WORK/scratch-$2" \
    > /dev/null 2>> "worker-$2.log" &
  PIDS+=($!)
}
start_worker "$NS1" 10.77.0.2
start_worker "$NS2" 10.77.0.3
HOST2_PID=$!
export MOEC_COORDINATOR="10.77.0.1:$PORT" MOEC_TOKEN_FILE="$WORK/token"
for _ in $(seq 100); do "$MOEC" workers 2> /dev/null | grep -c host- | grep -q 2 && break; sleep 0.1; done
[ "$("$MOEC" workers | grep -c host-)" -eq 2 ] || fail "the workers did not register"

"$MOEC" make-tiny-model tiny --arch mixtral > /dev/null
cat /usr/share/common-licenses/GPL-3 > calib.txt
cat > job.yaml <<'Y'
name: netns
model: tiny
output: out
calibration: {path: calib.txt, samples: 12, seqlen: 32, seed: 0}
workers: 2
stages:
  - {id: stats, kind: calibrate, with: {batch_size: 4}}
  - {id: loss, kind: quant_loss, needs: [stats], with: {bits: [2, 3], group_size: 32, batch_size: 4}}
Y
JOB=$("$MOEC" submit job.yaml | awk '{print $2}')
timeout 180 "$MOEC" watch "$JOB" > watch.log || fail "the job did not succeed"
grep -q "JOB_SUCCEEDED" watch.log || fail "job not succeeded"
# Every layer task ran on a gang of both hosts.
gangs=$(grep "task_leased" watch.log | grep -c ",") || true
if grep "task_leased" watch.log | grep -v ","; then fail "a layer task ran on one host only"; fi
[ "$gangs" -gt 0 ] || fail "no gang task leased"
echo "netns e2e: $(grep -c task_done watch.log) tasks across two hosts"

# Host 10.77.0.3 goes away with its disk: the hidden states its activation store held are gone.
# A second job reuses the calibrate tasks and reads their chunks: the tasks whose chunks were
# there run again (lineage), and the job succeeds on the host that replaces it.
kill -9 "$HOST2_PID"
rm -rf "$WORK/scratch-10.77.0.3"
start_worker "$NS2" 10.77.0.3
sed -e 's/^name: netns/name: netns2/' -e 's/^output: out/output: out2/' job.yaml > job2.yaml
echo "  - {id: loss4, kind: quant_loss, needs: [stats], with: {bits: [2, 4], group_size: 32, batch_size: 4}}" >> job2.yaml
JOB2=$("$MOEC" submit job2.yaml | awk '{print $2}')
timeout 240 "$MOEC" watch "$JOB2" > watch2.log || { cat watch2.log; fail "the job after a host's removal did not succeed"; }
grep -q "JOB_SUCCEEDED" watch2.log || fail "the job after a host's removal did not succeed"
grep -q "task_rerun.*lost with the workers holding it" watch2.log ||
  { cat watch2.log; fail "no calibrate task re-ran for the chunks of the removed host"; }
echo "netns e2e: passed; after removing a host, $(grep -c task_rerun watch2.log) task(s) re-ran for its chunks"
