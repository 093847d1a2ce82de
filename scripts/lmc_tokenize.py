"""The body of scripts/tokenize (see there); not named tokenize.py, which would shadow Python's own module for the other scripts here."""
import argparse
import json
import os
import struct
import sys


def write_shard(path, toks, wide):
    magic, version, fmt = (20240801, 7, "I") if wide else (20240520, 1, "H")
    with open(path, "wb") as f:
        f.write(struct.pack("<256i", magic, version, len(toks), *[0] * 253))
        f.write(struct.pack("<%d%s" % (len(toks), fmt), *toks))


def main():
    ap = argparse.ArgumentParser(prog="tokenize", description="text files -> llm.c token shards")
    ap.add_argument("files", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--bpe", type=int, default=0, help="train a byte-level BPE vocabulary of this size")
    ap.add_argument("--shard-tokens", type=int, default=100_000_000)
    a = ap.parse_args()
    for f in a.files:
        if not os.path.isfile(f):
            sys.exit("tokenize: cannot read '%s'" % f)
    if a.bpe and not 260 <= a.bpe <= 1 << 24:
        sys.exit("tokenize: --bpe takes a vocab size from 260 to 2^24, got %d" % a.bpe)
    os.makedirs(a.out, exist_ok=True)
    vocab = 256
    if a.bpe:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=a.bpe, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
        tok.train(a.files, trainer)
        tok.save(os.path.join(a.out, "tokenizer.json"))
        vocab = tok.get_vocab_size()
    wide = vocab > 65536
    buf, shards, total = [], 0, 0

    def write(toks):
        nonlocal shards
        write_shard(os.path.join(a.out, "train_%03d.bin" % shards), toks, wide)
        shards += 1

    for f in a.files:
        data = open(f, "rb").read()
        if a.bpe:   # in chunks of lines: memory stays flat on big files
            lines = data.decode("utf-8", errors="replace").splitlines(keepends=True)
            ids = [i for k in range(0, len(lines), 10000) for i in tok.encode("".join(lines[k:k + 10000])).ids]
        else:
            ids = list(data)
        buf.extend(ids)
        total += len(ids)
        while len(buf) >= a.shard_tokens:
            write(buf[:a.shard_tokens])
            buf = buf[a.shard_tokens:]
    if buf:
        write(buf)
    json.dump({"vocab": vocab, "tokens": total, "shards": shards, "bpe": bool(a.bpe)},
              open(os.path.join(a.out, "info.json"), "w"), indent=1)
    print("tokenize: %d tokens in %d shard(s) under %s (vocab %d: compile with --set V=%d; train with --data '%s/train_*.bin')"
          % (total, shards, a.out, vocab, vocab, a.out))


main()
