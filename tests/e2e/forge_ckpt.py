"""Rewrites a checkpoint shard's text header with a regular expression and
seals it with a fresh checksum, so a test can hand lmrun a shard whose
header lies while its bytes are intact (the checksum alone would not catch
that). With --format 1 it writes the shard in format 1 (FNV-1a's checksum,
which lmrun still reads). Usage: forge_ckpt.py IN OUT PATTERN REPLACEMENT
[--format 1|2]"""
import re
import struct
import sys
import zlib

src, dst, pattern, repl = sys.argv[1:5]
fmt = sys.argv[6] if len(sys.argv) > 6 and sys.argv[5] == "--format" else None
buf = open(src, "rb").read()
assert buf[:8] in (b"LMCCKPT1", b"LMCCKPT2")
magic = buf[:8] if fmt is None else b"LMCCKPT" + fmt.encode()
(hl,) = struct.unpack("<I", buf[8:12])
header = buf[12:12 + hl].decode()
new = re.sub(pattern, repl, header, count=1).encode()
body = magic + struct.pack("<I", len(new)) + new + buf[12 + hl:-8]
if magic == b"LMCCKPT2":
    h = zlib.crc32(body)
else:
    h = 0xcbf29ce484222325
    for c in body:
        h = ((h ^ c) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
open(dst, "wb").write(body + struct.pack("<Q", h))
