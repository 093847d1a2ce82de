#!/usr/bin/env python3
"""Rewrites a lit test's CHECK lines from what its RUN lines print now, for
review with git diff. Each RUN line must end in
'| FileCheck %s --check-prefix=P'; its output becomes P: and P-NEXT: lines
at the end of the file. Usage: tests/update_runs.py FILE.lm [LMC]"""
import re, subprocess, sys

path = sys.argv[1]
lmc = sys.argv[2] if len(sys.argv) > 2 else "build/compiler/lmc"
lines = open(path).read().rstrip("\n").split("\n")
runs = []
for l in lines:
    m = re.match(r"// RUN: (.*)\| FileCheck %s --check-prefix=(\w+)$", l)
    if m:
        runs.append((m.group(1), m.group(2)))
prefixes = "|".join(p for _, p in runs)
keep = [l for l in lines if not re.match(r"// (%s)(-NEXT|-EMPTY)?:" % prefixes, l)]
open(path, "w").write("\n".join(keep) + "\n")
out = []
for cmd, prefix in runs:
    cmd = cmd.replace("%lmc", lmc).replace("%models", "models").replace("%s", path)
    if cmd.startswith("not "):       # lit's 'not': the output is what counts here
        cmd = cmd[4:]
    text = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True).stdout
    for i, l in enumerate(text.rstrip("\n").split("\n")):
        tag = prefix + ("" if i == 0 else "-NEXT")
        out.append("// %s: %s" % (tag, l.replace("[[", "{{\\[\\[}}")))
open(path, "w").write("\n".join(keep) + "\n" + "\n".join(out) + "\n")
