#!/usr/bin/env python3
"""Rewrites the CHECK lines of split-input diagnostics tests from what lmc
prints now, for review with git diff. Each '// -----' chunk must fail with
one error; its message, source line and caret become CHECK lines at the
end of the chunk. Runs until the line numbers settle.
Usage: tests/update_checks.py FILE.lm [LMC]"""
import re, subprocess, sys

path = sys.argv[1]
lmc = sys.argv[2] if len(sys.argv) > 2 else "build/compiler/lmc"


def esc(s):
    return s.replace("[[", "{{\\[\\[}}").replace("{{", "{{[{]}}{") if False else s.replace("[[", "{{\\[\\[}}")


def one_pass():
    cur = open(path).read()
    out = subprocess.run([lmc, path, "--split-input-file"], capture_output=True, text=True).stderr
    blocks = []
    for l in out.rstrip("\n").split("\n"):
        if re.match(r"^\S.*: error: ", l):
            blocks.append([l])
        elif blocks:
            blocks[-1].append(l)
    lines = [l for l in cur.split("\n") if not re.match(r"\s*// CHECK", l)]
    chunks = "\n".join(lines).split("\n// -----\n")
    if len(chunks) != len(blocks):
        sys.exit(f"{len(chunks)} chunks but {len(blocks)} errors:\n{out}")
    res = []
    for chunk, block in zip(chunks, blocks):
        checks = ["// CHECK: {{.*}}" + esc(re.sub(r"^.*/", "", block[0]))]
        checks += ["// CHECK-NEXT: {{^}}" + esc(l) + "{{$}}" for l in block[1:]]
        res.append(chunk.rstrip("\n") + "\n" + "\n".join(checks))
    new = "\n// -----\n".join(res) + "\n"
    open(path, "w").write(new)
    return new != cur


for _ in range(4):
    if not one_pass():
        break
else:
    sys.exit("line numbers did not settle")
