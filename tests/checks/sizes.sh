#!/usr/bin/env bash
# Keeps sources small (issue #17, shared/docs/STYLE.md): no function over 60 lines (lizard; the
# stage catalog's tables are exempt) and no source file over 500 lines.
# Usage: tests/checks/sizes.sh LIZARD   (the lizard executable; deploy/test.sh installs it into
# the project's .venv)
set -euo pipefail
cd "$(dirname "$0")/../.."
LIZARD=$1
mapfile -t files < <(git ls-files '*.cc' '*.h' '*.cu' '*.py' '*.sh' 2>/dev/null ||
                     find . -path ./build\* -prune -o \( -name '*.cc' -o -name '*.h' -o -name '*.py' \) -print)
status=0
# Tables: the catalog of stage kinds is one entry per kind, read as data.
exempt='stage_catalog.cc:.*Add(Quantization|Structural|Other)Kinds'
long=$("$LIZARD" -L 60 -C 10000 -a 100 -w "${files[@]}" | grep -Ev "$exempt" || true)
if [ -n "$long" ]; then
  echo "functions over 60 lines:"; echo "$long"; status=1
fi
big=$(wc -l "${files[@]}" | awk '$2 != "total" && $1 > 500 { print "  " $2 ": " $1 " lines" }')
if [ -n "$big" ]; then
  echo "files over 500 lines:"; echo "$big"; status=1
fi
[ "$status" -eq 0 ] && echo "sizes ok: ${#files[@]} files, no function over 60 lines, no file over 500"
exit $status
