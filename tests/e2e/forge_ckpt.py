"""Rewrites a checkpoint shard's text header with a regular expression and
seals it with a fresh checksum, so a test can hand lmrun a shard whose
header lies while its bytes are intact (the checksum alone would not catch
that). Usage: forge_ckpt.py IN OUT PATTERN REPLACEMENT"""
import re
import struct
import sys

src, dst, pattern, repl = sys.argv[1:5]
buf = open(src, "rb").read()
assert buf[:8] == b"LMCCKPT1"
(hl,) = struct.unpack("<I", buf[8:12])
header = buf[12:12 + hl].decode()
new = re.sub(pattern, repl, header, count=1).encode()
body = b"LMCCKPT1" + struct.pack("<I", len(new)) + new + buf[12 + hl:-8]
h = 0xcbf29ce484222325
for c in body:
    h = ((h ^ c) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
open(dst, "wb").write(body + struct.pack("<Q", h))
