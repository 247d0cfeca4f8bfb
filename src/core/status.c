/* Status codes, per-thread error details, assertions, logging. */
#include "carl/core.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

static _Thread_local char carl__errbuf[1024];

const char *carl_strerror(carl_status st) {
  switch (st) {
    case CARL_OK: return "ok";
    case CARL_ERR_INVALID: return "invalid argument";
    case CARL_ERR_IO: return "I/O error";
    case CARL_ERR_PARSE: return "parse error";
    case CARL_ERR_SHAPE: return "wrong shape";
    case CARL_ERR_DTYPE: return "wrong dtype";
    case CARL_ERR_NOMEM: return "out of memory";
    case CARL_ERR_NUMERIC: return "non-finite value";
    case CARL_ERR_UNSUPPORTED: return "not supported by this build";
    case CARL_ERR_NOT_FOUND: return "not found";
    case CARL_ERR_STATE: return "invalid state";
    case CARL_ERR_DEVICE: return "device error";
  }
  return "unknown status";
}

const char *carl_errmsg(void) { return carl__errbuf; }

carl_status carl_fail(carl_status st, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(carl__errbuf, sizeof carl__errbuf, fmt, ap);
  va_end(ap);
  return st;
}

carl_status carl_errctx(carl_status st, const char *fmt, ...) {
  char prefix[512], old[sizeof carl__errbuf];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(prefix, sizeof prefix, fmt, ap);
  va_end(ap);
  memcpy(old, carl__errbuf, sizeof old);
  size_t n = strlen(prefix);
  memcpy(carl__errbuf, prefix, n);
  if (n + 2 < sizeof carl__errbuf) {
    carl__errbuf[n] = ':';
    carl__errbuf[n + 1] = ' ';
    size_t room = sizeof carl__errbuf - n - 3, m = strlen(old);
    if (m > room) m = room;
    memcpy(carl__errbuf + n + 2, old, m);
    carl__errbuf[n + 2 + m] = '\0';
  } else {
    carl__errbuf[sizeof carl__errbuf - 1] = '\0';
  }
  return st;
}

void carl__abort(const char *file, int line, const char *fmt, ...) {
  va_list ap;
  fprintf(stderr, "%s:%d: ", file, line);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  abort();
}

/* ---- logging ---- */
static int carl__log_level = -1; /* -1: not yet read from CARL_LOG */

static carl_log_level carl__level_from_env(void) {
  const char *v = getenv("CARL_LOG");
  if (!v) return CARL_LOG_INFO;
  if (!strcasecmp(v, "debug")) return CARL_LOG_DEBUG;
  if (!strcasecmp(v, "warn")) return CARL_LOG_WARN;
  if (!strcasecmp(v, "error")) return CARL_LOG_ERROR;
  if (!strcasecmp(v, "off")) return CARL_LOG_OFF;
  return CARL_LOG_INFO;
}

void carl_log_set_level(carl_log_level level) { carl__log_level = (int)level; }

carl_log_level carl_log_get_level(void) {
  if (carl__log_level < 0) carl__log_level = (int)carl__level_from_env();
  return (carl_log_level)carl__log_level;
}

void carl_log(carl_log_level level, const char *fmt, ...) {
  static const char *names[] = {"debug", "info", "warn", "error"};
  if (level < carl_log_get_level() || level >= CARL_LOG_OFF) return;
  va_list ap;
  fprintf(stderr, "[carl %s] ", names[level]);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
}

double carl_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
