#!/usr/bin/env bash
# End-to-end test of the control plane with real processes on loopback:
#   1. `moec run` on a noop recipe (embedded coordinator + 2 workers, gang tasks) succeeds, and a
#      second `moec run` finds the finished job and exits 0 without re-running anything;
#   2. a wrong token is rejected (UNAUTHENTICATED);
#   3. SIGKILL of the worker holding a task: the lease expires, the task is re-leased to another
#      worker and the job completes;
#   4. SIGKILL of the coordinator mid-job, then restart: the job completes and no finished task
#      is run again (task_done events == tasks);
#   5. cancel (watch exits 1) and resume (the job completes); a malformed recipe, and recipes
#      breaking rules between stages, are refused by plan/submit/run with their file:line error
#      and exit code 2, starting nothing. Step 2 also scrapes the Prometheus endpoint;
#   6. real stages (calibrate, quant_loss, evaluate) on a tiny model run to completion and
#      `moec run` prints the evaluation report;
#   7. dynamic skipping exported (hf + moec.skip_beta), evaluated against the original, loadable by
#      `moec eval`; an export never overwrites a directory it did not write;
#   8. MC-MoE with mixed-precision GPTQ exported in GPTQ format (2.5 average expert bits) by a
#      2-worker gang and by one worker, byte-identical; RTN exported fake-quantized.
# Usage: cluster_e2e_test.sh BIN_DIR   (holding moec, moec-coordinator, moec-worker)
set -euo pipefail
BIN=$1
MOEC=$BIN/client/moec
COORD=$BIN/coordinator/moec-coordinator
WORKER=$BIN/worker/moec-worker
WORK=$(mktemp -d /tmp/moec_e2e.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
cd "$WORK"
mkdir m && echo '{"num_hidden_layers": 4}' > m/config.json

cat > fast.yaml <<'Y'
name: e2e-fast
model: m
output: out
workers: 2
stages:
  - {id: a, kind: noop, with: {sleep_ms: 20}}
  - {id: b, kind: noop, needs: [a], with: {output_bytes: 100000}}
Y
echo "== 1. moec run, twice"
timeout 120 "$MOEC" run fast.yaml --data-dir "$WORK/run" > run1.log || { cat run1.log; fail "moec run"; }
grep -q "JOB_SUCCEEDED" run1.log || fail "first run did not succeed"
timeout 120 "$MOEC" run fast.yaml --data-dir "$WORK/run" > run2.log || { cat run2.log; fail "second moec run"; }
grep -q "resuming job" run2.log || fail "second run did not find the job"
leased_before=$(grep -c task_leased run1.log)
[ "$leased_before" -eq 8 ] || fail "expected 8 leases in the first run, got $leased_before"
# The second run replays the job's event log; it must hold no lease beyond the first run's.
[ "$(grep -c task_leased run2.log)" -eq 8 ] || fail "the second run re-ran tasks"

echo "== 2. wrong token; metrics"
echo wrong > bad_token
METRICS_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$COORD" --listen 127.0.0.1:0 --data-dir "$WORK/c2" --token-file "$WORK/run/token" --lease-ms 1500 \
  --metrics-listen 127.0.0.1:$METRICS_PORT > coord.out 2> coord.log &
COORD_PID=$!
PIDS+=($COORD_PID)
for _ in $(seq 50); do grep -q "listening on port" coord.out && break; sleep 0.1; done
PORT=$(sed -n 's/listening on port //p' coord.out)
[ -n "$PORT" ] || fail "coordinator did not start"
export MOEC_COORDINATOR=127.0.0.1:$PORT
if "$MOEC" list --token-file bad_token 2> list.err; then fail "wrong token accepted"; fi
grep -q "bearer token" list.err || fail "no UNAUTHENTICATED message: $(cat list.err)"
export MOEC_TOKEN_FILE=$WORK/run/token
python3 - "$METRICS_PORT" <<'PY' || fail "no Prometheus metrics"
import sys, time, urllib.request
for _ in range(30):
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=2).read().decode()
        if "moec_workers" in text:
            sys.exit(0)
    except OSError:
        pass
    time.sleep(0.2)
sys.exit(1)
PY

echo "== 3. SIGKILL a worker mid-task"
cat > slow.yaml <<'Y'
name: e2e-slow
model: m
output: out
workers: 1
stages:
  - {id: a, kind: noop, with: {sleep_ms: 1500}}
Y
"$WORKER" --name victim > /dev/null 2> victim.log & VICTIM=$!; PIDS+=($VICTIM)
sleep 0.5
JOB=$("$MOEC" submit slow.yaml | awk '{print $2}')
for _ in $(seq 50); do "$MOEC" workers | grep -q "tasks=1" && break; sleep 0.1; done
kill -9 "$VICTIM"
"$WORKER" --name rescuer > /dev/null 2> rescuer.log & PIDS+=($!)
timeout 90 "$MOEC" watch "$JOB" > watch3.log || { cat watch3.log; fail "job did not survive a worker SIGKILL"; }
grep -q "task_retry" watch3.log || fail "no retry after the worker was killed"
grep -q "JOB_SUCCEEDED" watch3.log || fail "job 3 did not succeed"

echo "== 4. SIGKILL the coordinator mid-job"
cat > mid.yaml <<'Y'
name: e2e-mid
model: m
output: out
workers: 1
stages:
  - {id: a, kind: noop, with: {sleep_ms: 300}}
Y
JOB=$("$MOEC" submit mid.yaml | awk '{print $2}')
for _ in $(seq 100); do [ "$("$MOEC" status "$JOB" | awk '/TASK_DONE/{print $2}')" = "2" ] && break; sleep 0.05; done
kill -9 "$COORD_PID"
"$COORD" --listen 127.0.0.1:$PORT --data-dir "$WORK/c2" --token-file "$WORK/run/token" --lease-ms 1500 \
  >> coord.out 2>> coord.log &
PIDS+=($!)
timeout 90 "$MOEC" watch "$JOB" > watch4.log || { cat watch4.log; tail coord.log; fail "job did not survive a coordinator SIGKILL"; }
grep -q "JOB_SUCCEEDED" watch4.log || fail "job 4 did not succeed"
done_events=$(grep -c "task_done" watch4.log)
[ "$done_events" -eq 4 ] || fail "expected each of 4 tasks done once, saw $done_events task_done events"
# The worker registers again with its id and keeps its lease: the restart cost no attempt.
if grep -q "task_retry" watch4.log; then fail "the coordinator restart cost an attempt: $(grep task_retry watch4.log)"; fi
echo "== 4b. a corrupt factor record makes the task that wrote it run again"
cat > produce.yaml <<'Y'
name: e2e-produce
model: m
output: out
workers: 1
stages:
  - {id: p, kind: noop, with: {output_bytes: 20000, salt: 4}}
Y
JOB=$("$MOEC" submit produce.yaml | awk '{print $2}')
timeout 60 "$MOEC" watch "$JOB" > watch4b.log || { cat watch4b.log; fail "producing job"; }
COORD2_PID=$(pgrep -f -- "--data-dir $WORK/c2" | head -1)
kill -9 "$COORD2_PID"
sleep 0.3
CORRUPT=$("$BIN/tests/corrupt_factor" "$WORK/c2/db" /noop) || fail "could not corrupt a factor"
"$COORD" --listen 127.0.0.1:$PORT --data-dir "$WORK/c2" --token-file "$WORK/run/token" --lease-ms 1500 \
  >> coord.out 2>> coord.log &
PIDS+=($!)
# moec fails at once against a coordinator that is still starting, unless told to wait.
"$MOEC" list --connect-timeout 30 > /dev/null || fail "the restarted coordinator did not serve in 30 s"
# Against a port nobody listens on, the wait ends with exit code 3 (unreachable) and says so.
FREE_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
rc=0
"$MOEC" list --coordinator 127.0.0.1:$FREE_PORT --connect-timeout 0.5 2> wait.err || rc=$?
[ "$rc" -eq 3 ] || fail "connect timeout: exit $rc, expected 3"
grep -q "no coordinator accepted a connection" wait.err || fail "connect timeout: $(cat wait.err)"
cat > consume.yaml <<'Y'
name: e2e-consume
model: m
output: out
workers: 1
stages:
  - {id: p, kind: noop, with: {output_bytes: 20000, salt: 4}}
  - {id: c, kind: noop, needs: [p], with: {read_inputs: true}}
Y
# p is reused from the first job (same fingerprint), c reads its outputs and meets the corrupt one.
JOB=$(timeout 30 "$MOEC" submit consume.yaml | awk '{print $2}')
timeout 90 "$MOEC" watch "$JOB" > watch4c.log || { cat watch4c.log; tail coord.log; fail "job over a corrupt factor"; }
grep -q "JOB_SUCCEEDED" watch4c.log || fail "job over a corrupt factor did not succeed"
grep -q "factor_corrupt.*${CORRUPT}" watch4c.log || { cat watch4c.log; fail "corruption of $CORRUPT not detected"; }
grep -q "task_rerun" watch4c.log || { cat watch4c.log; fail "the producing task did not run again"; }
echo "== 5. cancel and resume; malformed recipes"
cat > cancel.yaml <<'Y'
name: e2e-cancel
model: m
output: out
workers: 1
stages:
  - {id: a, kind: noop, with: {sleep_ms: 1500, salt: 5}}
Y
# Cancel once its first task runs: 4 tasks of 1.5 s on one worker leave the cancel 6 s to land
# even on a loaded machine (a fixed 0.5 s sleep and 0.4 s tasks raced the CLI's start-up; the
# salt keeps these tasks from being the e2e-slow job's, which would be reused).
JOB=$("$MOEC" submit cancel.yaml | awk '{print $2}')
for _ in $(seq 100); do "$MOEC" workers | grep -q "tasks=1" && break; sleep 0.05; done
"$MOEC" cancel "$JOB" > /dev/null || fail "cancel"
if timeout 30 "$MOEC" watch "$JOB" > watch5.log; then fail "watch of a cancelled job exited 0"; fi
grep -q "JOB_CANCELLED" watch5.log || fail "job not cancelled"
"$MOEC" resume "$JOB" > /dev/null || fail "resume"
timeout 90 "$MOEC" watch "$JOB" > watch5b.log || fail "resumed job did not succeed"
cat > bad.yaml <<'Y'
name: e2e-bad
model: m
output: out
stages:
  - {id: a, kind: noop, with: {sleep_ms: -5}}
Y
set +e
"$MOEC" submit bad.yaml 2> bad.err; rc=$?
set -e
[ "$rc" -eq 2 ] || fail "malformed recipe exit code $rc"
grep -q "bad.yaml:5: stage 'a' parameter 'sleep_ms' must be in" bad.err || fail "imprecise error: $(cat bad.err)"
# Rules between stages (docs/recipes.md): refused by plan, submit and run before anything runs.
echo "calibration text" > calib.txt
cat > noneed.yaml <<'Y'
name: e2e-noneed
model: m
output: out-noneed
calibration: {path: calib.txt}
stages:
  - {id: stats, kind: calibrate}
  - {id: prune, kind: expert_prune, with: {keep: 2}}
Y
cat > widths.yaml <<'Y'
name: e2e-widths
model: m
output: out-widths
calibration: {path: calib.txt}
stages:
  - {id: stats, kind: calibrate}
  - {id: loss, kind: quant_loss, needs: [stats]}
  - {id: bits, kind: allocate_bits, needs: [stats, loss], with: {average_bits: 2.0}}
  - {id: quant, kind: gptq, needs: [bits]}
  - {id: out, kind: export, needs: [quant], with: {format: gptq}}
Y
for cmd in plan submit run; do
  flags=()
  [ "$cmd" = run ] && flags=(--data-dir "$WORK/rules")
  set +e
  "$MOEC" $cmd noneed.yaml "${flags[@]}" > rules.out 2> noneed.err; rc1=$?
  "$MOEC" $cmd widths.yaml "${flags[@]}" > rules.out 2> widths.err; rc2=$?
  set -e
  [ "$rc1" -eq 2 ] && grep -q "noneed.yaml:7: stage 'prune' (expert_prune): needs a stage of kind calibrate" noneed.err ||
    fail "$cmd: expert_prune without calibrate: rc $rc1: $(cat noneed.err)"
  [ "$rc2" -eq 2 ] && grep -q "widths.yaml:10: stage 'out' (export): format gptq holds widths 2, 3, 4, 8 only" widths.err ||
    fail "$cmd: 1-bit allocation into a gptq export: rc $rc2: $(cat widths.err)"
done
[ ! -e "$WORK/rules" ] || fail "a refused recipe started a cluster"
# Worker flags checked at start, with their precise errors.
set +e
"$WORKER" --device gpu 2> dev.err; rc_dev=$?
"$WORKER" --scratch /proc/moec-scratch 2> scratch.err; rc_scratch=$?
set -e
[ "$rc_dev" -eq 1 ] && grep -q "device must be cpu or cuda:N" dev.err || fail "--device gpu accepted: $(cat dev.err)"
[ "$rc_scratch" -eq 1 ] && grep -q "not a writable directory" scratch.err || fail "bad --scratch accepted: $(cat scratch.err)"
# 80 windows x 256 tokens x hidden 64 in F32: the hidden states between layers are 5.2 MB, more
# than one gRPC message may carry, so reading them back exercises the chunked factor stream.
echo "== 6. real stages: calibrate, quant_loss, allocate_bits and evaluate on a tiny Mixtral, 2 workers; report"
"$MOEC" make-tiny-model tiny --arch mixtral --layers 2 > /dev/null || fail "make-tiny-model"
for i in $(seq 1 400); do echo "calibration line $i: experts route tokens by their router scores"; done > calib.txt
cat > calib.yaml <<'Y'
name: e2e-calibrate
model: tiny
output: out-calib
calibration: {path: calib.txt, samples: 80, seqlen: 256, seed: 0}
evaluation: {path: calib.txt, seqlen: 64}
workers: 2
stages:
  - {id: stats, kind: calibrate, with: {batch_size: 4}}
  - {id: loss, kind: quant_loss, needs: [stats], with: {bits: [2, 3], group_size: 32}}
  - {id: alloc, kind: allocate_bits, needs: [stats, loss], with: {bits: [2, 3], average_bits: 2.5}}
  - {id: eval, kind: evaluate, needs: [alloc], with: {max_windows: 4}}
Y
timeout 300 "$MOEC" run calib.yaml --data-dir "$WORK/calib" > calib.log || { cat calib.log; fail "calibrate run"; }
grep -q "JOB_SUCCEEDED" calib.log || fail "calibrate job did not succeed"
[ "$(grep -c 'task_done' calib.log)" -eq 6 ] || { cat calib.log; fail "expected 6 tasks done"; }
grep -q "| eval | .*tiny | " calib.log || { cat calib.log; fail "no report table after moec run"; }
echo "== 7. Lu dynamic skipping: calibrate -> dynamic_skip -> export (hf) -> evaluate"
cat > skip.yaml <<'Y'
name: e2e-skip
model: tiny
output: out-skip
calibration: {path: calib.txt, samples: 8, seqlen: 64, seed: 0, sampling: chunks}
evaluation: {path: calib.txt, seqlen: 64}
workers: 1
stages:
  - {id: stats, kind: calibrate}
  - {id: skip, kind: dynamic_skip, needs: [stats]}
  - {id: out, kind: export, needs: [skip], with: {format: hf}}
  - {id: eval, kind: evaluate, needs: [out], with: {max_windows: 4}}
Y
timeout 300 "$MOEC" run skip.yaml --data-dir "$WORK/skip" > skip.log || { cat skip.log; fail "skip run"; }
grep -q "skip_beta" out-skip/config.json || fail "export did not write moec.skip_beta"
grep -q "| eval | original: " skip.log || { cat skip.log; fail "no baseline row in the report"; }
"$MOEC" eval out-skip --text calib.txt --seqlen 64 --json > skip-eval.json 2>/dev/null || fail "moec eval of the export"
mkdir -p foreign && echo precious > foreign/file
set +e
"$MOEC" run skip.yaml --set output="$WORK/foreign" --data-dir "$WORK/skip2" > foreign.log 2>&1; rc=$?
set -e
[ "$rc" -eq 2 ] || fail "a run over a foreign directory was not refused (rc $rc)"
grep -q "pass --overwrite" foreign.log || { cat foreign.log; fail "no --overwrite hint"; }
grep -q precious foreign/file || fail "export touched a foreign directory"
timeout 300 "$MOEC" run skip.yaml --set output="$WORK/foreign" --data-dir "$WORK/skip2" --overwrite > foreign2.log 2>&1 \
  || { cat foreign2.log; fail "--overwrite run"; }
[ ! -e foreign/file ] && grep -q skip_beta foreign/config.json || fail "--overwrite did not replace the directory"
echo "== 8. MC-MoE: calibrate -> quant_loss -> allocate_bits -> gptq -> export (gptq) -> evaluate, by gangs of 2 and of 1 (same bytes); rtn -> fake_quant"
cat > mc.yaml <<'Y'
name: e2e-mc
model: tiny
output: out-mc
calibration: {path: calib.txt, samples: 20, seqlen: 64, seed: 0}
evaluation: {path: calib.txt, seqlen: 64}
workers: 2
stages:
  - {id: stats, kind: calibrate}
  - {id: loss, kind: quant_loss, needs: [stats], with: {bits: [2, 3], group_size: 32}}
  - {id: bits, kind: allocate_bits, needs: [stats, loss], with: {bits: [2, 3], average_bits: 2.5}}
  - {id: quant, kind: gptq, needs: [bits], with: {group_size: 32, attn_bits: 4}}
  - {id: out, kind: export, needs: [quant], with: {format: gptq}}
  - {id: eval, kind: evaluate, needs: [out], with: {max_windows: 4}}
Y
timeout 300 "$MOEC" run mc.yaml --data-dir "$WORK/mc" > mc.log || { cat mc.log; fail "mc-moe run"; }
grep -q '"quant_method": "gptq"' out-mc/config.json || fail "no quantization_config in the GPTQ export"
for f in report.md report.json expert_usage.svg bit_allocation.svg gptq_error.svg ppl_vs_size.svg; do
  ls "$WORK"/mc/reports/*/"$f" > /dev/null 2>&1 || fail "moec run wrote no $f"
done
grep -q "bit_allocation.svg" "$WORK"/mc/reports/*/report.md || fail "report.md does not embed its figures"
grep -q "| eval | .*out-mc | .* | 2.50 |" mc.log || { cat mc.log; fail "average expert bits of the export are not 2.50"; }
# The data plane's promise across processes: the same job run by a gang of one (the cluster has
# one worker, so the gang re-forms smaller) gives the same bytes (moec run fixes the job's
# thread count; the chunks follow the recipe's workers, not the gang a lease gets).
timeout 300 "$MOEC" run mc.yaml --workers 1 --set output=out-mc1 --data-dir "$WORK/mc1" \
  > mc1.log || { cat mc1.log; fail "mc-moe run on one worker"; }
[ "$(sha256sum < out-mc/model.safetensors)" = "$(sha256sum < out-mc1/model.safetensors)" ] ||
  fail "the GPTQ export of a 2-worker gang differs from the 1-worker one"
# Lu et al.'s progressive subset search on the data plane: experts run by their owners across the
# two processes, per-chunk losses summed in chunk order; the pruned export is the same bytes.
cat > prune.yaml <<'Y'
name: e2e-prune
model: tiny
output: out-prune
calibration: {path: calib.txt, samples: 20, seqlen: 64, seed: 0}
workers: 2
stages:
  - {id: stats, kind: calibrate, with: {batch_size: 4}}
  - {id: prune, kind: expert_prune, needs: [stats], with: {keep: 2, mode: progressive, batch_size: 4}}
  - {id: out, kind: export, needs: [prune], with: {format: hf}}
Y
timeout 300 "$MOEC" run prune.yaml --data-dir "$WORK/prune" > prune.log 2>&1 || { cat prune.log; fail "expert_prune run"; }
timeout 300 "$MOEC" run prune.yaml --workers 2 --set workers=1 --set output=out-prune1 --data-dir "$WORK/prune1" \
  > prune1.log 2>&1 || { cat prune1.log; fail "expert_prune run on one worker"; }
[ "$(sha256sum < out-prune/model.safetensors)" = "$(sha256sum < out-prune1/model.safetensors)" ] ||
  fail "the expert_prune export of a 2-worker gang differs from the 1-worker one"

cat > rtn.yaml <<'Y'
name: e2e-rtn
model: tiny
output: out-rtn
calibration: {path: calib.txt, samples: 8, seqlen: 64, seed: 0}
evaluation: {path: calib.txt, seqlen: 64}
workers: 1
stages:
  - {id: quant, kind: rtn, with: {bits: 3, group_size: 32}}
  - {id: out, kind: export, needs: [quant], with: {format: fake_quant}}
  - {id: eval, kind: evaluate, needs: [out], with: {max_windows: 4}}
Y
timeout 300 "$MOEC" run rtn.yaml --data-dir "$WORK/rtn" > rtn.log || { cat rtn.log; fail "rtn run"; }
"$MOEC" inspect out-rtn > /dev/null || fail "inspect of the fake-quant export"
echo "e2e: all passed"
