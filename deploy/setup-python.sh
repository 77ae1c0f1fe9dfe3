#!/usr/bin/env bash
# Creates the project's .venv and installs deploy/requirements.txt into it (PyTorch 2.x, whose
# libtorch moec builds against, plus what the checks use). Idempotent: does nothing when the
# installed set already matches the requirements file (< 1 s).
# Usage: deploy/setup-python.sh [VENV_DIR]      (default: .venv in the project root)
# Needs python3 and python3-venv (deploy/setup-debian.sh). Downloads about 3 GB on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.venv}
req=deploy/requirements.txt
stamp=$venv/.moec-requirements

if [ -x "$venv/bin/python3" ] && [ -f "$stamp" ] && cmp -s "$req" "$stamp"; then
  echo "setup-python: $venv matches $req"
  exit 0
fi
[ -x "$venv/bin/python3" ] || /usr/bin/python3 -m venv "$venv"
echo "setup-python: installing $req into $venv (first time: about 3 GB from PyPI)"
"$venv/bin/pip" install --quiet --disable-pip-version-check --no-input -r "$req"
"$venv/bin/python3" -c 'import torch, numpy; print("setup-python: torch", torch.__version__)'
cp "$req" "$stamp"
