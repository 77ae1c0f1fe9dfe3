#!/usr/bin/env bash
# Makes sure the Debian packages moec needs are installed, the same way as root and as a user:
# as root it runs setup-debian.sh; otherwise it only asks for sudo when something is missing
# (and says what to run when sudo is not there). Used by test.sh and demo.sh.
# Usage: deploy/ensure-packages.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -eq 0 ]; then
  exec deploy/setup-debian.sh
fi
if deploy/setup-debian.sh --check; then
  exit 0
fi
if command -v sudo >/dev/null 2>&1; then
  exec sudo deploy/setup-debian.sh
fi
echo "ensure-packages: packages are missing and sudo is not installed; run deploy/setup-debian.sh as root" >&2
exit 1
