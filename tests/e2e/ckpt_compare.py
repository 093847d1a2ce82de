#!/usr/bin/env python3
"""Compares the weights of two lmc checkpoints (step folders of rank*.ckpt
shards, any layout): ckpt_compare.py A B RTOL.
For each parameter, the largest difference of an element relative to the
tensor's largest magnitude; exits 1 if the worst exceeds RTOL."""
import glob, os, struct, sys


def weights(folder):
    """Whole tensors, reassembled from the tp and ep parts of every shard."""
    parts = {}
    for shard in sorted(glob.glob(os.path.join(folder, "*.ckpt"))):
        for name, pieces in shard_pieces(shard).items():
            parts.setdefault(name, []).extend(pieces)
    return {name: assemble(pieces) for name, pieces in parts.items()}


def assemble(pieces):
    """The tensor from its pieces: the tp part `part` of `parts` along dim
    `split`, within the ep part `experts=e/n` of dim 0 (expert weights)."""
    meta = pieces[0][0]
    shape = [int(x) for x in meta["shape"].split("x")]
    total = 1
    for d in shape:
        total *= d
    whole = [0.0] * total
    for m, data in pieces:
        e, ne = (int(x) for x in m.get("experts", "0/1").split("/"))
        sub = [shape[0] // ne] + shape[1:]
        place(whole, e * (total // ne), sub, int(m["split"]), int(m["part"]), int(m["parts"]), data)
    return whole


def place(whole, base, shape, split, part, nparts, data):
    if split < 0:
        whole[base:base + len(data)] = data
        return
    outer = 1
    for d in shape[:split]:
        outer *= d
    inner = 1
    for d in shape[split + 1:]:
        inner *= d
    blk = shape[split] // nparts * inner
    for o in range(outer):
        at = base + o * shape[split] * inner + part * blk
        whole[at:at + blk] = data[o * blk:(o + 1) * blk]


def shard_pieces(path):
    b = open(path, "rb").read()
    assert b[:8] in (b"LMCCKPT1", b"LMCCKPT2"), path
    hl = struct.unpack("<I", b[8:12])[0]
    hdr = b[12:12 + hl].decode()
    esz = 8 if "dtype f64" in hdr else 4
    fmt = "d" if esz == 8 else "f"
    off, out = 12 + hl, {}
    for line in hdr.splitlines():
        if line.startswith("param "):
            words = line.split()
            name, n = words[1], int(words[2])
            meta = dict(w.split("=") for w in words[3:])
            out.setdefault(name, [])
            out[name].append((meta, list(struct.unpack("<%d%s" % (n, fmt), b[off:off + n * esz]))))
            off += 3 * n * esz          # weights, then Adam m and v
    return out


a, b, rtol = weights(sys.argv[1]), weights(sys.argv[2]), float(sys.argv[3])
# a parameter named in argv[4:] is skipped: its exact gradient is zero (a
# key bias shifts every score of a row alike), so Adam turns rounding noise
# into full steps and its values differ between layouts by design
skip = sys.argv[4:]
assert a.keys() == b.keys(), "different parameters"
worst, where = 0.0, ""
for k in a:
    if any(s in k for s in skip):
        continue
    scale = max(max(abs(x) for x in a[k]), 1e-30)
    d = max(abs(x - y) for x, y in zip(a[k], b[k])) / scale
    if d > worst:
        worst, where = d, k
print("final weights: max rel diff %.3e (%s)" % (worst, where))
sys.exit(1 if worst > rtol else 0)
