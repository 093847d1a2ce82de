#!/usr/bin/env python3
"""Compares the weights of two lmc checkpoints (step folders of rank*.ckpt
shards, any layout): ckpt_compare.py A B RTOL.
For each parameter, the largest difference of an element relative to the
tensor's largest magnitude; exits 1 if the worst exceeds RTOL."""
import glob, os, struct, sys


def weights(folder):
    out = {}
    for shard in sorted(glob.glob(os.path.join(folder, "*.ckpt"))):
        out.update(shard_weights(shard))
    return out


def shard_weights(path):
    b = open(path, "rb").read()
    assert b[:8] == b"LMCCKPT1", path
    hl = struct.unpack("<I", b[8:12])[0]
    hdr = b[12:12 + hl].decode()
    esz = 8 if "dtype f64" in hdr else 4
    fmt = "d" if esz == 8 else "f"
    off, out = 12 + hl, {}
    for line in hdr.splitlines():
        if line.startswith("param "):
            _, name, n = line.split()
            n = int(n)
            out[name] = struct.unpack("<%d%s" % (n, fmt), b[off:off + n * esz])
            off += 3 * n * esz          # weights, then Adam m and v
    return out


a, b, rtol = weights(sys.argv[1]), weights(sys.argv[2]), float(sys.argv[3])
assert a.keys() == b.keys(), "different parameters"
worst, where = 0.0, ""
for k in a:
    scale = max(max(abs(x) for x in a[k]), 1e-30)
    d = max(abs(x - y) for x, y in zip(a[k], b[k])) / scale
    if d > worst:
        worst, where = d, k
print("final weights: max rel diff %.3e (%s)" % (worst, where))
sys.exit(1 if worst > rtol else 0)
