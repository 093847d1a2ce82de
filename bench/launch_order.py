#!/usr/bin/env python3
"""What attention's launch order alone is worth: each causal block as long
as its tiles, blocks started in index order on a fixed number of slots (SMs
times the blocks an SM holds), the time the last one ends, in tile-times.
The order before run 17 (each head's blocks together, longest first)
against kernels.cu's fa_order (sections of heads, each section's blocks
rank by rank across its heads), sections sized as runtime/cuda.c's
fa_section does. A model of the order, not of the GPU: a block's speed
does not change with how many run beside it.

  bench/launch_order.py B T H G K [SMS] [L2_MIB] [BYTES]
  bench/launch_order.py 8 2048 16 4 96      # llama-large on an H200
"""
import heapq
import sys


def makespan(lengths, slots):
    free = [0] * slots
    end = 0
    for w in lengths:
        t = heapq.heappop(free)
        heapq.heappush(free, t + w)
        end = max(end, t + w)
    return end


def order(nb, heads, sec, length):
    """Block lengths in launch order: fa_order's decode of each index."""
    out = []
    for s0 in range(0, heads, sec):
        w = min(sec, heads - s0)
        out += [length(rank) for rank in range(nb) for _ in range(w)]
    return out


def main(argv):
    if len(argv) < 5:
        sys.exit(__doc__)
    b, t, h, g, k = (int(a) for a in argv[:5])
    sms = int(argv[5]) if len(argv) > 5 else 132
    l2 = (int(argv[6]) if len(argv) > 6 else 50) << 20
    elt = int(argv[7]) if len(argv) > 7 else 2
    kp = (k + 15) // 16 * 16
    per = h // g
    kv = 2 * t * k * elt
    tiles = (t + 63) // 64
    # name, rows a block, blocks an SM, heads, bytes a head reads again and again, length of rank r
    kernels = [
        ("forward", 64, 3 if kp <= 96 else 2, b * h, -(-kv // per), lambda r: tiles - r),
        ("dQ", 128 if kp <= 96 else 64, 2, b * h, -(-kv // per), None),
        ("dK/dV", 64, (3 if kp <= 64 else 2) if kp <= 96 else 2, b * g, kv * per, lambda r: per * (tiles - r)),
    ]
    print(f"B {b} T {t} H {h} G {g} K {k}, {sms} SMs, L2 {l2 >> 20} MiB, {elt}-byte storage (tile-times of 64 keys)")
    for name, rows, per_sm, heads, bytes_, length in kernels:
        nb = (t + rows - 1) // rows
        if length is None:   # dQ: a block of `rows` queries sees rows / 64 tiles more a rank down
            length = lambda r, nb=nb, rows=rows: (nb - r) * rows // 64
        sec = max(1, l2 // 2 // bytes_)
        slots = sms * per_sm
        total = sum(order(nb, heads, 1, length))
        before = makespan(order(nb, heads, 1, length), slots)
        now = makespan(order(nb, heads, sec, length), slots)
        print(f"  {name:8s} {nb * heads:6d} blocks on {slots} slots: ideal {total / slots:7.0f}"
              f"  head by head {before:6d}  sections of {min(sec, heads)} {now:6d}  ({before / now:.2f}x)")


if __name__ == "__main__":
    main(sys.argv[1:])
