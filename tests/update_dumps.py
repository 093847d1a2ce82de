#!/usr/bin/env python3
"""Rewrites the CHECK lines of tests/lit/phases.lm from what lmc dumps now,
for review with git diff. Usage: tests/update_dumps.py [LMC]"""
import re, subprocess, sys

path = "tests/lit/phases.lm"
lmc = sys.argv[1] if len(sys.argv) > 1 else "build/compiler/lmc"
phases = ["ast", "sema", "ir", "fused", "grad", "sched"]
keep = [l for l in open(path).read().rstrip("\n").split("\n")
        if not re.match(r"// (%s)(-NEXT|-EMPTY)?:" % "|".join(p.upper() for p in phases), l)]
open(path, "w").write("\n".join(keep) + "\n")
out = []
for ph in phases:
    fuse = ["--fuse=always"] if ph in ("fused", "grad") else []   # as the RUN lines say
    text = subprocess.run([lmc, path, *fuse, "--dump=" + ph], capture_output=True, text=True,
                          check=True).stdout
    for i, l in enumerate(text.rstrip("\n").split("\n")):
        l = l.replace("[[", "{{\\[\\[}}")
        tag = ph.upper() + ("" if i == 0 else "-NEXT")
        out.append("// %s: %s" % (tag, l) if l.strip() else "// %s-EMPTY:" % ph.upper())
open(path, "w").write("\n".join(keep) + "\n" + "\n".join(out) + "\n")
