/* Files written whole or not at all, mkdir -p, work directories, CRC32C (carl/fs.h). */
#define _DEFAULT_SOURCE
#define _XOPEN_SOURCE 700 /* nftw */
#include "carl/fs.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- helpers ----------------------------------------------------------------------------------- */

/* The directory part of path ("." when there is none, "/" for "/x"). */
static void fs_dirname(const char *path, char *dir, size_t cap) {
  const char *slash = strrchr(path, '/');
  if (!slash) {
    snprintf(dir, cap, ".");
  } else if (slash == path) {
    snprintf(dir, cap, "/");
  } else {
    snprintf(dir, cap, "%.*s", (int)(slash - path), path);
  }
}

static carl_status fs_sync_dir(const char *dir, const char *what) {
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return carl_fail(CARL_ERR_IO, "%s: cannot open its directory %s to sync it: %s", what, dir, strerror(errno));
  int r = fsync(fd), e = errno;
  close(fd);
  /* some file systems cannot sync a directory (EINVAL): the rename is then as durable as they allow */
  if (r != 0 && e != EINVAL && e != EROFS)
    return carl_fail(CARL_ERR_IO, "%s: cannot sync its directory %s: %s", what, dir, strerror(e));
  return CARL_OK;
}

static int fs_write_all(int fd, const void *data, size_t len) {
  const unsigned char *p = data;
  while (len > 0) {
    size_t chunk = len > ((size_t)1 << 30) ? (size_t)1 << 30 : len;
    ssize_t w = write(fd, p, chunk);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (w == 0) {
      errno = EIO;
      return -1;
    }
    p += w;
    len -= (size_t)w;
  }
  return 0;
}

carl_status carl_fs_sync_dir(const char *dir) { return fs_sync_dir(dir, dir); }

/* ---- mkdir -p ------------------------------------------------------------------------------------ */

static carl_status fs_mkdir_one(const char *p) {
  if (mkdir(p, 0755) == 0) return CARL_OK;
  int e = errno;
  struct stat sb;
  if (stat(p, &sb) == 0) {
    if (S_ISDIR(sb.st_mode)) return CARL_OK;
    return carl_fail(CARL_ERR_IO, "%s: exists and is not a directory", p);
  }
  return carl_fail(CARL_ERR_IO, "%s: cannot create directory: %s", p, strerror(e));
}

carl_status carl_fs_mkdir_p(const char *path) {
  if (!path || !path[0]) return carl_fail(CARL_ERR_INVALID, "no directory given (empty path)");
  char buf[CARL_FS_PATH_MAX];
  if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
    return carl_fail(CARL_ERR_INVALID, "%.64s...: path too long (at most %d bytes)", path, CARL_FS_PATH_MAX - 1);
  size_t n = strlen(buf);
  while (n > 1 && buf[n - 1] == '/') buf[--n] = '\0';
  for (char *p = buf + 1; *p; p++) {
    if (*p != '/' || p[-1] == '/') continue;
    *p = '\0';
    carl_status st = fs_mkdir_one(buf);
    *p = '/';
    if (st != CARL_OK) return st;
  }
  return fs_mkdir_one(buf);
}

/* ---- staged files ---------------------------------------------------------------------------------- */

carl_status carl_fs_stage(carl_fs_staged_t *s, const char *path, const carl_fs_part_t *parts, int nparts) {
  static atomic_uint counter = 0;
  s->path[0] = s->tmp[0] = '\0';
  if (!path || !path[0]) return carl_fail(CARL_ERR_INVALID, "no output file given (empty path)");
  if (snprintf(s->path, sizeof s->path, "%s", path) >= (int)sizeof s->path)
    return carl_fail(CARL_ERR_INVALID, "%.64s...: path too long (at most %d bytes)", path, CARL_FS_PATH_MAX - 1);
  size_t n = strlen(path);
  if (path[n - 1] == '/') return carl_fail(CARL_ERR_INVALID, "%s: names a directory, not a file", path);
  struct stat sb;
  if (lstat(path, &sb) == 0) {
    if (S_ISDIR(sb.st_mode)) return carl_fail(CARL_ERR_IO, "%s: is a directory, not a file", path);
    if (!S_ISREG(sb.st_mode) && !S_ISLNK(sb.st_mode))
      return carl_fail(CARL_ERR_IO, "%s: exists and is not a regular file (left alone)", path);
  }
  char dir[CARL_FS_PATH_MAX];
  fs_dirname(path, dir, sizeof dir);
  const char *base = strrchr(path, '/');
  base = base ? base + 1 : path;
  int fd = -1, e = 0;
  for (int attempt = 0; attempt < 100 && fd < 0; attempt++) {
    unsigned c = atomic_fetch_add(&counter, 1u);
    if (snprintf(s->tmp, sizeof s->tmp, "%s/.%s.tmp-%ld-%u", dir, base, (long)getpid(), c) >= (int)sizeof s->tmp) {
      s->tmp[0] = '\0';
      return carl_fail(CARL_ERR_INVALID, "%s: path too long for its temporary", path);
    }
    fd = open(s->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    e = errno;
    if (fd < 0 && e != EEXIST) break;
  }
  if (fd < 0) {
    s->tmp[0] = '\0';
    return carl_fail(CARL_ERR_IO, "%s: cannot write: cannot create a file in %s: %s", path, dir, strerror(e));
  }
  const char *stage = "write";
  int failed = 0;
  for (int i = 0; i < nparts && !failed; i++)
    if (parts[i].len > 0 && fs_write_all(fd, parts[i].data, parts[i].len) != 0) failed = 1;
  if (!failed && fsync(fd) != 0) {
    failed = 1;
    stage = "sync";
  }
  e = errno;
  if (close(fd) != 0 && !failed) {
    failed = 1;
    stage = "close";
    e = errno;
  }
  if (failed) {
    unlink(s->tmp);
    s->tmp[0] = '\0';
    return carl_fail(CARL_ERR_IO, "%s: cannot write (%s failed): %s", path, stage, strerror(e));
  }
  return CARL_OK;
}

carl_status carl_fs_commit(carl_fs_staged_t *s) {
  if (!s->tmp[0]) return carl_fail(CARL_ERR_STATE, "%s: nothing staged to commit", s->path);
  if (rename(s->tmp, s->path) != 0) {
    int e = errno;
    carl_fs_discard(s);
    return carl_fail(CARL_ERR_IO, "%s: cannot replace: %s", s->path, strerror(e));
  }
  s->tmp[0] = '\0';
  char dir[CARL_FS_PATH_MAX];
  fs_dirname(s->path, dir, sizeof dir);
  return fs_sync_dir(dir, s->path);
}

void carl_fs_discard(carl_fs_staged_t *s) {
  if (s->tmp[0]) unlink(s->tmp);
  s->tmp[0] = '\0';
}

carl_status carl_fs_write_parts(const char *path, const carl_fs_part_t *parts, int nparts) {
  carl_fs_staged_t s;
  CARL_TRY(carl_fs_stage(&s, path, parts, nparts));
  return carl_fs_commit(&s);
}

carl_status carl_write_file_atomic(const char *path, const void *data, size_t len) {
  carl_fs_part_t p = {data, len};
  return carl_fs_write_parts(path, &p, 1);
}

/* ---- work directories ----------------------------------------------------------------------------- */

carl_status carl_fs_work_begin(const char *dir, char *work, size_t cap) {
  CARL_TRY(carl_fs_mkdir_p(dir));
  if (snprintf(work, cap, "%s/.carl-partial-XXXXXX", dir) >= (int)cap)
    return carl_fail(CARL_ERR_INVALID, "%s: path too long", dir);
  if (!mkdtemp(work)) {
    int e = errno;
    work[0] = '\0';
    return carl_fail(CARL_ERR_IO, "%s: cannot create a directory in it: %s", dir, strerror(e));
  }
  return CARL_OK;
}

static int fs_cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

carl_status carl_fs_work_commit(const char *work, const char *dir) {
  DIR *d = opendir(work);
  if (!d) return carl_fail(CARL_ERR_IO, "%s: cannot read the outputs written so far: %s", dir, strerror(errno));
  char **names = NULL;
  size_t n = 0, cap = 0;
  carl_status st = CARL_OK;
  struct dirent *de;
  while ((de = readdir(d))) {
    if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
    if (n == cap) {
      cap = cap ? cap * 2 : 16;
      char **nn = realloc(names, cap * sizeof *nn);
      if (!nn) {
        st = carl_fail(CARL_ERR_NOMEM, "%s: out of memory", dir);
        break;
      }
      names = nn;
    }
    if (!(names[n] = strdup(de->d_name))) {
      st = carl_fail(CARL_ERR_NOMEM, "%s: out of memory", dir);
      break;
    }
    n++;
  }
  closedir(d);
  if (!st) qsort(names, n, sizeof *names, fs_cmp_str);
  char src[CARL_FS_PATH_MAX], dst[CARL_FS_PATH_MAX], old[CARL_FS_PATH_MAX];
  /* pass 0 checks that every entry can take its place (so that nothing moves when one cannot),
   * pass 1 moves them */
  for (int pass = 0; pass < 2 && !st; pass++)
    for (size_t i = 0; i < n && !st; i++) {
      if (snprintf(src, sizeof src, "%s/%s", work, names[i]) >= (int)sizeof src ||
          snprintf(dst, sizeof dst, "%s/%s", dir, names[i]) >= (int)sizeof dst ||
          snprintf(old, sizeof old, "%s/.replaced-%s", work, names[i]) >= (int)sizeof old) {
        st = carl_fail(CARL_ERR_INVALID, "%s/%s: path too long", dir, names[i]);
        break;
      }
      struct stat ss, ds;
      if (lstat(src, &ss) != 0) continue;
      int have = lstat(dst, &ds) == 0;
      if (pass == 0) {
        if (have && S_ISDIR(ss.st_mode) != S_ISDIR(ds.st_mode))
          st = carl_fail(CARL_ERR_IO, "%s: exists and is %s (left alone)", dst,
                         S_ISDIR(ds.st_mode) ? "a directory, not a file" : "not a directory");
        else if (have && !S_ISDIR(ds.st_mode) && !S_ISREG(ds.st_mode) && !S_ISLNK(ds.st_mode))
          st = carl_fail(CARL_ERR_IO, "%s: exists and is not a regular file (left alone)", dst);
        continue;
      }
      if (have && S_ISDIR(ds.st_mode) && rename(dst, old) != 0) {
        st = carl_fail(CARL_ERR_IO, "%s: cannot replace: %s", dst, strerror(errno));
        break;
      }
      if (rename(src, dst) != 0) st = carl_fail(CARL_ERR_IO, "%s: cannot replace: %s", dst, strerror(errno));
    }
  for (size_t i = 0; i < n; i++) free(names[i]);
  free(names);
  if (!st) st = fs_sync_dir(dir, dir);
  carl_status rs = carl_fs_remove_tree(work);
  return st ? st : rs;
}

carl_status carl_fs_replace_dir(const char *tmp, const char *dir) {
  char old[CARL_FS_PATH_MAX], parent[CARL_FS_PATH_MAX];
  if (snprintf(old, sizeof old, "%s.replaced-%ld", dir, (long)getpid()) >= (int)sizeof old)
    return carl_fail(CARL_ERR_INVALID, "%s: path too long", dir);
  struct stat sb;
  int had = lstat(dir, &sb) == 0;
  if (had && !S_ISDIR(sb.st_mode)) return carl_fail(CARL_ERR_IO, "%s: exists and is not a directory (left alone)", dir);
  if (had) {
    CARL_TRY(carl_fs_remove_tree(old));
    if (rename(dir, old) != 0) return carl_fail(CARL_ERR_IO, "%s: cannot move the one there aside: %s", dir, strerror(errno));
  }
  if (rename(tmp, dir) != 0) {
    int e = errno;
    if (had) (void)rename(old, dir); /* put the old one back */
    return carl_fail(CARL_ERR_IO, "%s: cannot create: %s", dir, strerror(e));
  }
  fs_dirname(dir, parent, sizeof parent);
  carl_status st = fs_sync_dir(parent, dir);
  if (had) (void)carl_fs_remove_tree(old);
  return st;
}

static int fs_rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
  (void)sb;
  (void)ftw;
  int r = flag == FTW_DP ? rmdir(p) : unlink(p);
  return r != 0 && errno != ENOENT ? -1 : 0;
}

carl_status carl_fs_remove_tree(const char *path) {
  struct stat sb;
  if (!path || !path[0] || lstat(path, &sb) != 0) return CARL_OK;
  if (!S_ISDIR(sb.st_mode)) {
    if (unlink(path) != 0) return carl_fail(CARL_ERR_IO, "%s: cannot remove: %s", path, strerror(errno));
    return CARL_OK;
  }
  if (nftw(path, fs_rm_entry, 16, FTW_DEPTH | FTW_PHYS) != 0)
    return carl_fail(CARL_ERR_IO, "%s: cannot remove: %s", path, strerror(errno));
  return CARL_OK;
}

carl_status carl_fs_errmsg_replace(carl_status st, const char *from, const char *to) {
  char msg[1024], out[1024];
  snprintf(msg, sizeof msg, "%s", carl_errmsg());
  size_t fl = strlen(from), o = 0;
  for (const char *p = msg; *p && o + 1 < sizeof out;) {
    if (fl > 0 && !strncmp(p, from, fl)) {
      o += (size_t)snprintf(out + o, sizeof out - o, "%s", to);
      if (o >= sizeof out) o = sizeof out - 1;
      p += fl;
    } else {
      out[o++] = *p++;
    }
  }
  out[o] = '\0';
  return carl_fail(st, "%s", out);
}

/* ---- CRC32C ------------------------------------------------------------------------------------- */

uint32_t carl_crc32c(uint32_t crc, const void *data, size_t len) {
  /* byte-wise table of the reflected polynomial 0x82F63B78; built per call (256 x 8 steps) */
  uint32_t table[256];
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    table[i] = c;
  }
  const unsigned char *p = data;
  uint32_t c = ~crc;
  for (size_t i = 0; i < len; i++) c = table[(c ^ p[i]) & 0xff] ^ (c >> 8);
  return ~c;
}

carl_status carl_fs_crc32c_file(const char *path, uint32_t *crc) {
  *crc = 0;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return carl_fail(CARL_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
  unsigned char *buf = malloc(1 << 20);
  if (!buf) {
    close(fd);
    return carl_fail(CARL_ERR_NOMEM, "%s: out of memory", path);
  }
  uint32_t c = 0;
  carl_status st = CARL_OK;
  for (;;) {
    ssize_t r = read(fd, buf, 1 << 20);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      st = carl_fail(CARL_ERR_IO, "%s: read error: %s", path, strerror(errno));
      break;
    }
    if (r == 0) break;
    c = carl_crc32c(c, buf, (size_t)r);
  }
  free(buf);
  close(fd);
  *crc = c;
  return st;
}
