#!/usr/bin/env bash
# A job's bytes do not depend on how many workers run it (docs/recipes.md `threads`): `moec run`
# fixes the job's compute threads to the machine's cores, and every worker runs its tasks with
# them. An MC-MoE-style job (calibrate, quant_loss, allocate_bits, gptq, export) on a random
# Mixtral big enough for libtorch to split its reductions by thread, run with 1, 2 and 3 local
# workers, exports the same bytes; with one thread fixed instead (on a machine with more than
# one core) the bytes differ, which is what the fix is for.
# Usage: threads_e2e_test.sh BIN_DIR
set -euo pipefail
MOEC=$1/client/moec
WORK=$(mktemp -d /tmp/moec_threads_e2e.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
cd "$WORK"
"$MOEC" make-tiny-model m --arch mixtral --hidden 256 --experts 4 --expert-width 512 --layers 2 > /dev/null
cp /usr/share/common-licenses/GPL-3 calib.txt
cat > job.yaml <<'Y'
name: threads
model: m
output: out
calibration: {path: calib.txt, samples: 32, seqlen: 128, seed: 0, sampling: random_windows}
workers: 1
stages:
  - {id: stats, kind: calibrate}
  - {id: loss, kind: quant_loss, needs: [stats], with: {bits: [2, 3, 4], group_size: 64}}
  - {id: bits, kind: allocate_bits, needs: [stats, loss], with: {bits: [2, 3, 4], average_bits: 3.0}}
  - {id: quant, kind: gptq, needs: [bits], with: {group_size: 64}}
  - {id: out, kind: export, needs: [quant], with: {format: gptq}}
Y
digest() {  # ARGS for moec run
  rm -rf .moec out
  "$MOEC" run job.yaml "$@" > run.log 2>&1 || { tail -20 run.log; fail "moec run $*"; }
  cat out/*.safetensors | sha256sum | cut -d' ' -f1
}
one=$(digest --workers 1)
grep -q "compute threads per task" run.log || fail "moec run did not fix the job's threads"
for w in 2 3; do
  d=$(digest --workers $w)
  [ "$d" = "$one" ] || fail "--workers $w exported $d, --workers 1 $one"
  echo "--workers $w: $d, as --workers 1"
done
if [ "$(nproc)" -gt 1 ]; then
  single=$(digest --workers 2 --set threads=1)
  [ "$single" != "$one" ] || fail "one thread gave the bytes of $(nproc): the job would not show a thread dependence"
  echo "threads=1: $single, other bytes (as expected)"
fi
echo PASS
