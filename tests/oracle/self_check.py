#!/usr/bin/env python3
"""Self-check of the oracle tests/oracle/hf_reference.py.

Builds tiny random checkpoints in memory and checks the oracle
  * against a second, naive implementation (selfcheck_naive.py: per-token / per-head Python
    loops in numpy float64, written from the same semantics but sharing no code with the
    oracle's vectorized torch forward),
  * against equivalences that must hold exactly (one expert + top-1 == a dense layer, dropped
    MoE layers == zeroed experts, skip_beta 0 == no skipping, skip_beta 1 == top-1, ODP limits,
    ...),
  * on known values (RMSNorm, RoPE, safetensors decoding of F32/F16/BF16, sharded checkpoints),
  * through its command line (exit codes, output sizes).

    .venv/bin/python3 tests/oracle/self_check.py [-v]

Exits 0 when every check passes, 1 otherwise.

The checks live in the sibling modules selfcheck_units.py, selfcheck_forward.py and
selfcheck_files.py (registered, in that order, when imported), with selfcheck_harness.py
(registration, runner, asserts) and selfcheck_models.py (tiny random checkpoints).
"""

import importlib
import os
import sys

sys.dont_write_bytecode = True  # keep tests/oracle free of __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from selfcheck_harness import RESULTS, run_checks  # noqa: E402

# Importing a check module registers its checks; they run in this order.
for _module in ("selfcheck_units", "selfcheck_forward", "selfcheck_files"):
    importlib.import_module(_module)


def main():
    run_checks()
    failed = [r for r in RESULTS if not r[1]]
    print("\n%d checks, %d failed" % (len(RESULTS), len(failed)))
    for name, _, msg in failed:
        print("  FAILED %s: %s" % (name, msg))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
