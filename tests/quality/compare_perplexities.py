#!/usr/bin/env python3
"""Compares the perplexities two runs of tests/quality/recipe_digests.sh reported.

Usage: compare_perplexities.py BEFORE AFTER [--tolerance 0.005]
Prints one line per (recipe, model) with both perplexities and the relative difference, and
exits 1 when a difference exceeds the tolerance (default 0.5%) or a row is missing from AFTER.
Used across changes that move bits but must not move quality: another BLAS, another libtorch,
another device.
"""
import argparse
import sys


def read(path):
    rows = {}
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 4 and parts[0] == "ppl":
                rows[(parts[1], parts[2])] = float(parts[3])
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--tolerance", type=float, default=0.005)
    a = ap.parse_args()
    before, after = read(a.before), read(a.after)
    if not before:
        print(f"no perplexity rows in {a.before}", file=sys.stderr)
        return 1
    worst, bad = 0.0, 0
    print(f"{'recipe':<20} {'model':<9} {'before':>10} {'after':>10} {'rel. diff':>10}")
    for key in sorted(before):
        if key not in after:
            print(f"{key[0]:<20} {key[1]:<9} {before[key]:>10.3f} {'missing':>10}")
            bad += 1
            continue
        rel = abs(after[key] - before[key]) / before[key]
        worst = max(worst, rel)
        flag = "" if rel <= a.tolerance else "  > tolerance"
        bad += rel > a.tolerance
        print(f"{key[0]:<20} {key[1]:<9} {before[key]:>10.3f} {after[key]:>10.3f} {rel:>10.4%}{flag}")
    print(f"worst relative difference {worst:.4%} (tolerance {a.tolerance:.2%}), {bad} outside")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
