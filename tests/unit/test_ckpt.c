/* test_ckpt.c: a checkpoint shard's checksum as the loader works it out
 * (format 2: CRC-32 in 64 MiB chunks on every core, combined) equals the
 * writer's (zlib's crc32 in one pass) for shards of one chunk, of a chunk
 * and a byte, and of several with a ragged last; format 1 is FNV-1a. */
#include "lmrt.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

int main(void) {
  size_t sizes[] = {4096, ((size_t)64 << 20) + 9, ((size_t)150 << 20) + 12345};
  int failures = 0;
  for (int i = 0; i < 3; i++) {
    size_t n = sizes[i];
    unsigned char *b = malloc(n);
    if (!b) return 2;
    for (size_t j = 0; j < n; j++) b[j] = (unsigned char)(j * 2654435761u >> 13);
    memcpy(b, "LMCCKPT2", 8);
    uint64_t got = ckpt_checksum(b, n), want = crc32_z(0, b, n - 8);
    printf("%s format 2, %zu bytes: %016llx, one pass %016llx\n", got == want ? "ok  " : "FAIL", n,
           (unsigned long long)got, (unsigned long long)want);
    failures += got != want;
    memcpy(b, "LMCCKPT1", 8);
    got = ckpt_checksum(b, n), want = rt_fnv1a(b, n - 8, 0xcbf29ce484222325ULL);
    printf("%s format 1, %zu bytes: FNV-1a\n", got == want ? "ok  " : "FAIL", n);
    failures += got != want;
    free(b);
  }
  printf("%d passed, %d failed\n", 6 - failures, failures);
  return failures != 0;
}
