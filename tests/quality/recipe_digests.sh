#!/usr/bin/env bash
# Runs every shipped recipe (recipes/*.yaml) on the tiny trained Mixtral, each in a fresh data
# directory, and prints one SHA-256 per recipe over its exported files (name and bytes of every
# file but moec_export.json, whose job id depends on the recipe's canonical form), then the
# per-file digests, then the perplexities the recipes' evaluate stages reported. Used to show that
# a refactoring leaves every export byte-identical (run it before and after, diff the outputs), or,
# across a change of BLAS or libtorch, that quality stays within tolerance
# (tests/quality/compare_perplexities.py).
# Usage: tests/quality/recipe_digests.sh [BUILD_DIR] [OUT_FILE]   (about 5 minutes on 2 cores)
# Needs models/tiny-mixtral (moec make-tiny-model models/tiny-mixtral --arch mixtral --trained).
set -euo pipefail
cd "$(dirname "$0")/../.."
B=${1:-build}
OUT=${2:-/dev/stdout}
M=$B/client/moec
TM=models/tiny-mixtral
[ -f $TM/config.json ] || { echo "no $TM: $M make-tiny-model $TM --arch mixtral --trained" >&2; exit 1; }
W=$(mktemp -d /tmp/moec-recipe-digests.XXXXXX)
trap 'rm -rf "$W"' EXIT
summary=$W/summary.txt; files=$W/files.txt; ppl=$W/perplexity.txt
: > "$summary"; : > "$files"; : > "$ppl"
for r in recipes/*.yaml; do
  name=$(basename "$r" .yaml)
  o=$W/out/$name
  "$M" run "$r" --data-dir "$W/data-$name" --set output="$o" > "$W/$name.log" 2>&1 ||
    { cat "$W/$name.log" >&2; echo "FAILED $name" >&2; exit 1; }
  (cd "$o" && find . -type f ! -name moec_export.json | LC_ALL=C sort | xargs sha256sum) \
    | sed "s|  \./|  $name/|" >> "$files"
  digest=$(cd "$o" && find . -type f ! -name moec_export.json | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16)
  printf '%-18s %s\n' "$name" "$digest" | tee -a "$summary" >&2
  # report rows: | stage | model | perplexity | ...
  grep -E '^\| [a-z0-9_-]+ \| ' "$W/$name.log" | grep -v '^| stage |' |
    awk -F' [|] ' -v n="$name" '{ m = ($2 ~ /^original: /) ? "original" : "model"; print "ppl", n, m, $3 }' >> "$ppl" || true
done
{ cat "$summary"; echo; cat "$files"; echo; cat "$ppl"; } > "$OUT"
