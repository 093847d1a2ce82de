#!/usr/bin/env python3
"""sass_loops.py: the instructions a kernel's main loop issues, from its SASS,
without a GPU. Compiles a bundle's kernels.cu with NVRTC for sm_90a (as the
runtime does on compute capability 9.0), disassembles the cubin with cuobjdump and prints, for each
kernel named, the loop with the most mma in it: its instructions, its mma
and the mix (a kernel named that has no mma, its loop with the most MUFU,
the SFU's instructions: the exponentials of a softmax over logits).

  bench/sass_loops.py BUNDLE_DIR [NAME_SUBSTRING ...] [--hot] [--arch sm_90a]

--hot cuts the kernels' cold paths out of a copy of the source first (the
fp32 and unaligned tile loads, the causal mask, the skipped tiles: see HOT
below), so that the loop counted is the path a whole tile takes; cuts
whose text is not found are counted in a line, their paths then counted.

A loop turn may hold several tiles: attention's two-stage kernels (_s2_)
run two a turn, one per stage, so their counts are two tiles'.

cuobjdump is not in the toolkit image here: `pip download
nvidia-cuda-cuobjdump --no-deps` and unzip the wheel, then point CUOBJDUMP
at its bin/cuobjdump (or put it on PATH); cuobjdump 13.5 also wants
nvdisasm (the nvidia-cuda-nvdisasm wheel; NVDISASM_PATH at its bin). The counts are static: a loop
inside the main loop (a rolled copy loop) counts once.
"""
import collections, ctypes, os, re, shutil, subprocess, sys, tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (what the source says, what --hot makes of it)
HOT = [
    ("if (!FmAsync<S>::ok(src, stride, K)) return fm_tile<R, KP>(s, src, r0, T, stride, K, 1.0f);", ""),
    ("bool diag = j0 + FM_ROWS - 1 > w0;", "bool diag = false;"),
    ("live = j0 < w0 + 16 * MT;", "live = true;"),
    ("bool live = k0 < w0 + 16 * MT;", "bool live = true;"),
    ("bool diag = k0 + NS - 1 > w0;", "bool diag = false;"),
    ("fm_dkv_probs<QT>(st_, dpt, ls[st], ds[st], i0 < j0 + FM_ROWS - 1,", "fm_dkv_probs<QT>(st_, dpt, ls[st], ds[st], false,"),
    ("fm_dkv_probs<QT>(st_, dpt, ls[st], ds[st], i0 < jw + FW_ROWS - 1,", "fm_dkv_probs<QT>(st_, dpt, ls[st], ds[st], false,"),
    ("fm_dkv_probs<QT>(st_, dpt, ls[st], ds[st], i0 < j0 + FW_ROWS - 1, c0 - i0, sl);",
     "fm_dkv_probs<QT>(st_, dpt, ls[st], ds[st], false, c0 - i0, sl);"),
    ("bool async = FmAsync<S>::ok(src, stride, K);", "bool async = true;"),
    ("if (async && K == KP) return fw_load_passes", "if (true) return fw_load_passes"),
    ("fm_softmax<KP>(s, m, l, acc, j0 + FW_ROWS - 1 > w0, j0, r0);", "fm_softmax<KP>(s, m, l, acc, false, j0, r0);"),
    ("fm_dq_ds<FW_ROWS>(s, dp, li, di, j0 + FW_ROWS - 1 > w0,", "fm_dq_ds<FW_ROWS>(s, dp, li, di, false,"),
    ("bool resc = fm_probs(s, m, l, alpha, j0 + FW_ROWS - 1 > w0, j0, r0);",
     "bool resc = fm_probs(s, m, l, alpha, false, j0, r0);"),
    # (the forward's tiles past the first few keep their rows' maxima: no rescaling)
    ("if (Skip && !__any_sync(0xffffffffu, mx[h] > m[h] + 8.0f)) continue;",
     "if (Skip && !__any_sync(0xffffffffu, mx[h] > m[h] + 8.0f)) continue;\n    if (Skip) { m[h] = mx[h]; continue; }"),
    ("    return;\n  }\n  for (int e = threadIdx.x; e < R * C / 8; e += GG_THREADS) {",
     "    return;\n  }\n  if (R) return;\n  for (int e = threadIdx.x; e < R * C / 8; e += GG_THREADS) {"),
]


def nvrtc_cubin(src, arch):
    home = os.environ.get("CUDA_HOME") or "/usr/local/cuda"
    lib = ctypes.CDLL(os.path.join(home, "lib64", "libnvrtc.so"))
    prog = ctypes.c_void_p()
    if lib.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), b"kernels.cu", 0, None, None):
        sys.exit("sass_loops: nvrtcCreateProgram failed")
    opts = [b"--gpu-architecture=" + arch.encode(), b"--std=c++17", b"-default-device",
            b"--include-path=" + os.path.join(ROOT, "templates").encode(),
            b"--include-path=" + os.path.join(home, "include").encode()]
    rc = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
    n = ctypes.c_size_t()
    if rc:
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
        log = ctypes.create_string_buffer(n.value)
        lib.nvrtcGetProgramLog(prog, log)
        sys.exit("sass_loops: NVRTC failed:\n" + log.value.decode(errors="replace"))
    lib.nvrtcGetCUBINSize(prog, ctypes.byref(n))
    buf = ctypes.create_string_buffer(n.value)
    lib.nvrtcGetCUBIN(prog, buf)
    return buf.raw


def instructions(sass):
    out = []
    for line in sass.splitlines():
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
        if m:
            out.append((int(m.group(1), 16), m.group(2).strip()))
    return out


def main_loop(ins, unit=r"(^|\s)HG?MMA"):
    """the backward branch whose body holds the most of unit (mma: HMMA, or the warpgroup's HGMMA)"""
    best = None
    for a, text in ins:
        m = re.search(r"\bBRA (0x[0-9a-f]+)", text)
        if not m or "DIV" in text or int(m.group(1), 16) >= a:
            continue
        body = [t for b, t in ins if int(m.group(1), 16) <= b <= a]
        mma = sum(re.search(unit, t) is not None for t in body)
        if best is None or mma > best[0] or (mma == best[0] and len(body) < len(best[1])):
            best = (mma, body)
    return best


def main(argv):
    args = [a for a in argv if not a.startswith("--")]
    hot, arch = "--hot" in argv, "sm_90a"
    if "--arch" in argv:
        arch = argv[argv.index("--arch") + 1]
        args.remove(arch)
    if not args:
        sys.exit(__doc__)
    src = open(os.path.join(args[0], "kernels.cu")).read()
    if hot:
        missing = [old for old, new in HOT if old not in src]
        for old, new in HOT:
            src = src.replace(old, new)
        if missing:
            print("sass_loops: %d of the %d cuts are not in this source (kernels it lacks, or changed text:"
                  " their paths stay in the count)" % (len(missing), len(HOT)))
    tool = os.environ.get("CUOBJDUMP") or shutil.which("cuobjdump")
    if not tool:
        sys.exit("sass_loops: no cuobjdump (set CUOBJDUMP; see the top of this file)")
    with tempfile.TemporaryDirectory() as tmp:
        cubin = os.path.join(tmp, "k.cubin")
        open(cubin, "wb").write(nvrtc_cubin(src, arch))
        names = re.findall(r"Function : (\S+)", subprocess.run([tool, "-sass", cubin], capture_output=True,
                                                                text=True, check=True).stdout)
        for name in sorted(set(names)):
            if len(args) > 1 and not any(p in name for p in args[1:]):
                continue
            sass = subprocess.run([tool, "-sass", "-fun", name, cubin], capture_output=True, text=True).stdout
            loop, unit = main_loop(instructions(sass)), "mma"
            if (not loop or not loop[0]) and len(args) > 1:   # a kernel named without mma: its loop of most MUFU (SFU)
                loop, unit = main_loop(instructions(sass), r"(^|\s)MUFU"), "MUFU"
            if not loop or not loop[0]:
                continue
            mix = collections.Counter(re.sub(r"^@!?U?P\w+\s+", "", t).split()[0].split(".")[0] for t in loop[1])
            print("%-44s %5d instructions, %4d %s (%.1f a %s)" % (name, len(loop[1]), loop[0], unit,
                                                                 len(loop[1]) / loop[0], unit))
            print("    " + " ".join("%s:%d" % kv for kv in mix.most_common(12)))


if __name__ == "__main__":
    main(sys.argv[1:])
