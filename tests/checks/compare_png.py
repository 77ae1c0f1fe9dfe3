#!/usr/bin/env python3
"""Renders SVG figures with librsvg (Debian's rsvg-convert) and compares each with its golden PNG.

    compare_png.py [--update] GOLDEN_DIR FIGURE.svg...

A figure matches when the images have the same size and at most 0.05% of the pixels differ by
more than 48 in some channel (anti-aliasing may move by a level; a tick label, a point or a grid
line that moved changes hundreds of pixels). --update writes the golden files instead. Exit 0
when every figure matches, 1 otherwise (with what differed), 2 when rsvg-convert is missing.
Standard library only: the PNG decoder below handles the 8-bit RGB(A) images rsvg-convert writes.
"""

import os
import shutil
import struct
import subprocess
import sys
import zlib


def decode_png(data):
    """(width, height, channels, rows of bytes) of an 8-bit, non-interlaced RGB or RGBA PNG."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    width, height, depth, colour, _, _, interlace = header
    if depth != 8 or colour not in (2, 6) or interlace:
        raise ValueError("unsupported PNG (depth %d, colour type %d, interlace %d)" % (depth, colour, interlace))
    channels = 4 if colour == 6 else 3
    raw, stride = zlib.decompress(idat), width * channels
    rows, prev = [], bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b, c = prev[i], prev[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + a) & 255
            elif kind == 2:
                line[i] = (line[i] + b) & 255
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return width, height, channels, rows


def differing_pixels(golden, got):
    (w0, h0, c0, r0), (w1, h1, c1, r1) = golden, got
    if (w0, h0, c0) != (w1, h1, c1):
        return None
    bad = 0
    for a, b in zip(r0, r1):
        if a == b:
            continue
        for x in range(w0):
            if max(abs(a[x * c0 + k] - b[x * c0 + k]) for k in range(c0)) > 48:
                bad += 1
    return bad


def main(argv):
    update = argv[:1] == ["--update"]
    args = argv[1:] if update else argv
    if len(args) < 2:
        sys.exit(__doc__)
    rsvg = shutil.which("rsvg-convert")
    if rsvg is None:
        print("compare_png: rsvg-convert is missing (Debian's librsvg2-bin; deploy/setup-debian.sh)")
        return 2
    golden_dir, failed = args[0], 0
    for svg in args[1:]:
        png = subprocess.run([rsvg, svg], check=True, capture_output=True).stdout
        golden = os.path.join(golden_dir, os.path.splitext(os.path.basename(svg))[0] + ".png")
        if update:
            with open(golden, "wb") as f:
                f.write(png)
            print("compare_png: wrote", golden)
            continue
        got = decode_png(png)
        with open(golden, "rb") as f:
            want = decode_png(f.read())
        bad = differing_pixels(want, got)
        if bad is None:
            print("compare_png: %s is %dx%d, golden %dx%d" % (svg, got[0], got[1], want[0], want[1]))
            failed += 1
        elif bad > 0.0005 * got[0] * got[1]:
            print("compare_png: %s differs from %s in %d of %d pixels" % (svg, golden, bad, got[0] * got[1]))
            failed += 1
        else:
            print("compare_png: %s matches (%d pixels differ)" % (os.path.basename(svg), bad))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
