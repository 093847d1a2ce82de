#!/usr/bin/env python3
"""Mutates .lm files (inserted tokens and junk bytes, cut and duplicated
spans) and compiles each through every phase: lmc must exit 0 or 1 with no
sanitizer report, internal error or hang.
Usage: fuzz_lmc.py SEED N LMC MODELS_DIR SPEC..."""
import os, random, subprocess, sys, tempfile

seed, n, lmc, models = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
random.seed(seed)
specs = [open(f, encoding="latin-1").read() for f in sys.argv[5:]]
toks = ["{", "}", "(", ")", "[", "]", ",", ";", "=", "+", "*", "/", "-", ":", "layers", "param",
        "dim", "return", "model", "block", "train", "parallel", "layout", "init", "x", "D", "H", "0",
        "99999999999", "1e400", "\"", "\x00", "\xff", "matmul(", "attention(", "embed(", "tp", "pp",
        "L: pp", "//", "\n"]
work = tempfile.mkdtemp()
bad = 0
for i in range(n):
    s = random.choice(specs)
    for _ in range(random.randint(1, 6)):
        k, op = random.randrange(len(s) + 1), random.random()
        if op < 0.4:
            s = s[:k] + random.choice(toks) + s[k:]
        elif op < 0.7:
            s = s[:k] + s[k + random.randint(1, 20):]
        else:
            j = random.randrange(len(s) + 1)
            s = s[:k] + s[j:j + 30] + s[k:]
    path = os.path.join(work, "case%d.lm" % i)
    open(path, "wb").write(s.encode("latin-1", "replace"))
    try:
        r = subprocess.run([lmc, path, "-I", models, "--verify-each", "--dump=sched", "--rank", "-1"],
                           capture_output=True, timeout=30)
    except subprocess.TimeoutExpired:
        print("FAIL hang on", path)
        bad += 1
        continue
    if r.returncode not in (0, 1) or b"Sanitizer" in r.stderr or b"internal error" in r.stderr \
            or b"runtime error" in r.stderr:
        print("FAIL exit %d on %s:\n%s" % (r.returncode, path, r.stderr[-600:].decode("latin-1")))
        bad += 1
    else:
        os.unlink(path)
print("%d passed, %d failed" % (n - bad, bad))
sys.exit(1 if bad else 0)
