/* Bump allocator for per-step scratch, and whole-file helpers. */
#include "carl/core.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct carl_arena_block {
  carl_arena_block_t *next;
  size_t size, used;
  _Alignas(64) unsigned char data[];
};

void carl_arena_init(carl_arena_t *a, size_t block_size) {
  a->head = NULL;
  a->block_size = block_size ? block_size : (size_t)1 << 20;
}

void *carl_arena_alloc(carl_arena_t *a, size_t bytes) {
  bytes = (bytes + 63) & ~(size_t)63;
  carl_arena_block_t *b = a->head;
  if (!b || b->size - b->used < bytes) {
    size_t size = bytes > a->block_size ? bytes : a->block_size;
    b = aligned_alloc(64, (sizeof *b + size + 63) & ~(size_t)63);
    if (!b) {
      carl_fail(CARL_ERR_NOMEM, "arena: cannot allocate %zu bytes", size);
      return NULL;
    }
    b->size = size;
    b->used = 0;
    b->next = a->head;
    a->head = b;
  }
  void *p = b->data + b->used;
  b->used += bytes;
  memset(p, 0, bytes);
  return p;
}

void carl_arena_reset(carl_arena_t *a) {
  if (a->head && a->head->next) {
    /* several blocks: the next step gets one block holding them all */
    size_t total = 0;
    for (carl_arena_block_t *b = a->head; b; b = b->next) total += b->size;
    carl_arena_free(a);
    if (total > a->block_size) a->block_size = total;
    return;
  }
  if (a->head) a->head->used = 0;
}

void carl_arena_free(carl_arena_t *a) {
  carl_arena_block_t *b = a->head;
  while (b) {
    carl_arena_block_t *n = b->next;
    free(b);
    b = n;
  }
  a->head = NULL;
}

carl_status carl_read_file(const char *path, char **data, size_t *len) {
  *data = NULL;
  if (len) *len = 0;
  FILE *f = fopen(path, "rb");
  if (!f) return carl_fail(CARL_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
  size_t cap = 4096, n = 0;
  char *buf = malloc(cap);
  if (!buf) {
    fclose(f);
    return carl_fail(CARL_ERR_NOMEM, "%s: out of memory", path);
  }
  for (;;) {
    if (n + 1 >= cap) {
      char *nb = realloc(buf, cap * 2);
      if (!nb) {
        free(buf);
        fclose(f);
        return carl_fail(CARL_ERR_NOMEM, "%s: out of memory", path);
      }
      buf = nb;
      cap *= 2;
    }
    size_t got = fread(buf + n, 1, cap - n - 1, f);
    n += got;
    if (got == 0) break;
  }
  int err = ferror(f);
  fclose(f);
  if (err) {
    free(buf);
    return carl_fail(CARL_ERR_IO, "%s: read error", path);
  }
  buf[n] = '\0';
  *data = buf;
  if (len) *len = n;
  return CARL_OK;
}
