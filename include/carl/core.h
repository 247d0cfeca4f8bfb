/* carl/core.h: status codes, error details, logging, assertions, the counter-based RNG, arenas,
 * and the few constants every module shares (score functions, the threading threshold, pi).
 *
 * Usage:
 *   carl_status st = carl_npy_read("logits.npy", &arr);
 *   if (st != CARL_OK) fprintf(stderr, "%s: %s\n", carl_strerror(st), carl_errmsg());
 *
 *   // Philox4x32-10: the same (seed, stream, index) gives the same numbers on every thread/rank.
 *   float u = carl_rng_uniform(seed, CARL_STREAM_JITTER, t * E + e);
 *
 * Ownership: nothing here allocates except carl_arena_*, which owns its blocks until carl_arena_free.
 * The library never exits and never writes to stdout; log lines go to stderr.
 */
#ifndef CARL_CORE_H
#define CARL_CORE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- status codes ---------------------------------------------------------------------------- */
typedef enum {
  CARL_OK = 0,
  CARL_ERR_INVALID = -1,     /* an argument or a value in a file is out of range / inconsistent */
  CARL_ERR_IO = -2,          /* a file could not be opened, read, written or renamed */
  CARL_ERR_PARSE = -3,       /* malformed file content (JSON, .npy header, safetensors) */
  CARL_ERR_SHAPE = -4,       /* an array has the wrong number of dimensions or sizes */
  CARL_ERR_DTYPE = -5,       /* an array has the wrong element type or byte order */
  CARL_ERR_NOMEM = -6,       /* allocation failed */
  CARL_ERR_NUMERIC = -7,     /* NaN or Inf where finite values are required */
  CARL_ERR_UNSUPPORTED = -8, /* a feature this build does not have (MPI, METIS, CUDA) */
  CARL_ERR_NOT_FOUND = -9,   /* unknown name (router, algorithm, option, scenario) */
  CARL_ERR_STATE = -10,      /* call out of order, or saved state that does not match */
  CARL_ERR_DEVICE = -11,     /* a CUDA / cuBLAS call failed on the device (the detail names it) */
} carl_status;

/* Short fixed text for a status ("invalid argument", ...). Never NULL. */
const char *carl_strerror(carl_status st);

/* Detail of the most recent failure on this thread ("topology.json: field 'nodes' must be ..."). */
const char *carl_errmsg(void);

/* Record a detail message for status st and return st: `return carl_fail(CARL_ERR_INVALID, ...)`. */
carl_status carl_fail(carl_status st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Prefix the current detail with context: carl_errctx("%s", path) turns "bad shape" into
 * "path: bad shape". Returns st unchanged. */
carl_status carl_errctx(carl_status st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define CARL_TRY(expr)                        \
  do {                                        \
    carl_status carl__st = (expr);            \
    if (carl__st != CARL_OK) return carl__st; \
  } while (0)

/* ---- assertions (programmer errors: broken invariants) --------------------------------------- */
void carl__abort(const char *file, int line, const char *fmt, ...) __attribute__((noreturn));
#define CARL_ASSERT(x)                                                   \
  do {                                                                   \
    if (!(x)) carl__abort(__FILE__, __LINE__, "assertion failed: %s", #x); \
  } while (0)

/* ---- logging (stderr) ------------------------------------------------------------------------ */
typedef enum { CARL_LOG_DEBUG = 0, CARL_LOG_INFO = 1, CARL_LOG_WARN = 2, CARL_LOG_ERROR = 3, CARL_LOG_OFF = 4 } carl_log_level;
/* Default level: INFO, or the environment variable CARL_LOG=debug|info|warn|error|off. */
void carl_log_set_level(carl_log_level level);
carl_log_level carl_log_get_level(void);
void carl_log(carl_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define CARL_DEBUG(...) carl_log(CARL_LOG_DEBUG, __VA_ARGS__)
#define CARL_INFO(...) carl_log(CARL_LOG_INFO, __VA_ARGS__)
#define CARL_WARN(...) carl_log(CARL_LOG_WARN, __VA_ARGS__)

/* ---- counter-based RNG: Philox4x32-10 (Salmon et al., SC'11; Random123) ---------------------- */
/* out = Philox4x32-10(counter, key). */
void carl_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]);

/* Named streams so that different uses of one seed never share numbers. */
enum {
  CARL_STREAM_DATA = 1, CARL_STREAM_INIT = 2, CARL_STREAM_JITTER = 3, CARL_STREAM_HASH = 4,
  CARL_STREAM_WORKLOAD = 5, CARL_STREAM_SHUFFLE = 6, CARL_STREAM_DROPOUT = 7, CARL_STREAM_SAMPLE = 8,
  CARL_STREAM_PLACE = 9
};
/* Four 32-bit words for (seed, stream, index): key = seed, counter = (index, stream). */
void carl_rng_u32x4(uint64_t seed, uint32_t stream, uint64_t index, uint32_t out[4]);
/* Uniform in [0, 1) with 24 random bits, from word 0 of (seed, stream, index). */
float carl_rng_uniform(uint64_t seed, uint32_t stream, uint64_t index);
/* Uniform in [0, 1) with 53 random bits, from words 0..1. */
double carl_rng_uniform64(uint64_t seed, uint32_t stream, uint64_t index);
/* Standard normal by Box-Muller on words 0..3 of (seed, stream, index). */
float carl_rng_normal(uint64_t seed, uint32_t stream, uint64_t index);

/* ---- arena: bump allocator for per-step scratch ---------------------------------------------- */
typedef struct carl_arena_block carl_arena_block_t;
typedef struct {
  carl_arena_block_t *head;
  size_t block_size;
} carl_arena_t;
void carl_arena_init(carl_arena_t *a, size_t block_size);
/* 64-byte aligned, zero-filled; NULL (with carl_errmsg set) when out of memory. */
void *carl_arena_alloc(carl_arena_t *a, size_t bytes);
/* Forget all allocations. One block is kept for reuse; when the step needed several, they are
 * freed and the next allocation gets one block as large as all of them (so a repeated step stops
 * allocating after its first two runs). */
void carl_arena_reset(carl_arena_t *a);
void carl_arena_free(carl_arena_t *a);

/* ---- shared vocabulary ------------------------------------------------------------------------ */
/* Score functions of routing: the router option "score" and the score argument of carl/balance.h. */
enum { CARL_SCORE_SOFTMAX = 0, CARL_SCORE_SIGMOID = 1 };
/* Loops with less work than this (elements; T * E for the routing kernels) run on one thread: a
 * parallel region costs more. */
#define CARL_OMP_MIN_WORK 32768
/* pi in double precision (Box-Muller, cosine schedules). */
#define CARL_PI 3.14159265358979323846

/* ---- small helpers ---------------------------------------------------------------------------- */
/* Read a whole file into a NUL-terminated malloc'ed buffer (caller frees). */
carl_status carl_read_file(const char *path, char **data, size_t *len);
/* Write bytes to path whole or not at all: a unique temporary next to it, every write checked,
 * fsync, rename, fsync of the directory (carl/fs.h has the rest of this family). */
carl_status carl_write_file_atomic(const char *path, const void *data, size_t len);
/* Monotonic seconds. */
double carl_now(void);

#ifdef __cplusplus
}
#endif
#endif
