"""The check harness of self_check.py: registration (@check), the runner with its PASS/FAIL
lines and results, and the comparison asserts."""

import sys
import traceback

import numpy as np
import torch

VERBOSE = "-v" in sys.argv

RESULTS = []


CHECKS = []


def check(name):
    """Registers a check; main() runs them in order."""
    def wrap(fn):
        CHECKS.append((name, fn))
        return fn
    return wrap


def run_checks():
    for name, fn in CHECKS:
        try:
            fn()
            RESULTS.append((name, True, ""))
            print("PASS  %s" % name)
        except Exception as e:  # noqa: BLE001 - report every failure and go on
            RESULTS.append((name, False, str(e)))
            print("FAIL  %s: %s" % (name, e))
            if VERBOSE:
                traceback.print_exc()


def max_diff(a, b):
    a = a.detach().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    b = b.detach().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    if a.shape != b.shape:
        raise AssertionError("shape %s vs %s" % (a.shape, b.shape))
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def assert_close(a, b, tol, what):
    d = max_diff(a, b)
    if not d <= tol:
        raise AssertionError("%s: max |diff| %.3g > %.3g" % (what, d, tol))


def assert_far(a, b, tol, what):
    d = max_diff(a, b)
    if not d > tol:
        raise AssertionError("%s: expected a difference, max |diff| %.3g" % (what, d))
