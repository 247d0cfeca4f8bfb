/* Files written whole or not at all (carl/fs.h): replace, refuse, write errors, staged pairs, work
 * directories, mkdir -p, and CRC32C against the published check values. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "carl/fs.h"

static char g_dir[256];

static int setup(void **s) {
  (void)s;
  snprintf(g_dir, sizeof g_dir, "/tmp/carl_test_fs_XXXXXX");
  return mkdtemp(g_dir) ? 0 : -1;
}

static int teardown(void **s) {
  (void)s;
  return carl_fs_remove_tree(g_dir) == CARL_OK ? 0 : -1;
}

static void path_of(char *buf, size_t cap, const char *name) { snprintf(buf, cap, "%s/%s", g_dir, name); }

static void assert_content(const char *path, const char *want) {
  char *d;
  size_t n;
  if (carl_read_file(path, &d, &n) != CARL_OK) fail_msg("%s: %s", path, carl_errmsg());
  assert_int_equal(n, strlen(want));
  assert_memory_equal(d, want, n);
  free(d);
}

/* Entries of dir whose name contains `part`. */
static int count_entries(const char *dir, const char *part) {
  DIR *d = opendir(dir);
  assert_non_null(d);
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)))
    if (strstr(e->d_name, part)) n++;
  closedir(d);
  return n;
}

/* RFC 3720 (iSCSI) appendix B.4 and the CRC catalogue's check value for "123456789". */
static void test_crc32c_vectors(void **s) {
  (void)s;
  unsigned char buf[32];
  memset(buf, 0, sizeof buf);
  assert_int_equal(carl_crc32c(0, buf, 32), 0x8A9136AAu);
  memset(buf, 0xff, sizeof buf);
  assert_int_equal(carl_crc32c(0, buf, 32), 0x62A8AB43u);
  for (int i = 0; i < 32; i++) buf[i] = (unsigned char)i;
  assert_int_equal(carl_crc32c(0, buf, 32), 0x46DD794Eu);
  for (int i = 0; i < 32; i++) buf[i] = (unsigned char)(31 - i);
  assert_int_equal(carl_crc32c(0, buf, 32), 0x113FDB5Cu);
  assert_int_equal(carl_crc32c(0, "123456789", 9), 0xE3069283u);
  /* continuing a CRC over pieces gives the CRC of the whole */
  assert_int_equal(carl_crc32c(carl_crc32c(0, "1234", 4), "56789", 5), 0xE3069283u);
  assert_int_equal(carl_crc32c(0, NULL, 0), 0u);
  /* of a file */
  char p[300];
  path_of(p, sizeof p, "crc.txt");
  assert_int_equal(carl_write_file_atomic(p, "123456789", 9), CARL_OK);
  uint32_t c;
  assert_int_equal(carl_fs_crc32c_file(p, &c), CARL_OK);
  assert_int_equal(c, 0xE3069283u);
  path_of(p, sizeof p, "no-such-file");
  assert_int_equal(carl_fs_crc32c_file(p, &c), CARL_ERR_IO);
  assert_non_null(strstr(carl_errmsg(), "no-such-file"));
}

static void test_write_replace(void **s) {
  (void)s;
  char p[300];
  path_of(p, sizeof p, "a.txt");
  assert_int_equal(carl_write_file_atomic(p, "first", 5), CARL_OK);
  assert_content(p, "first");
  assert_int_equal(carl_write_file_atomic(p, "second!", 7), CARL_OK);
  assert_content(p, "second!");
  carl_fs_part_t parts[3] = {{"ab", 2}, {NULL, 0}, {"cd", 2}};
  assert_int_equal(carl_fs_write_parts(p, parts, 3), CARL_OK);
  assert_content(p, "abcd");
  assert_int_equal(carl_write_file_atomic(p, "", 0), CARL_OK);
  assert_content(p, "");
  assert_int_equal(count_entries(g_dir, ".tmp-"), 0);
  /* a symbolic link is replaced by the file, its target is untouched */
  char t[300], l[300];
  path_of(t, sizeof t, "target.txt");
  path_of(l, sizeof l, "link.txt");
  assert_int_equal(carl_write_file_atomic(t, "target", 6), CARL_OK);
  assert_int_equal(symlink(t, l), 0);
  assert_int_equal(carl_write_file_atomic(l, "new", 3), CARL_OK);
  assert_content(l, "new");
  assert_content(t, "target");
}

static void test_write_refused(void **s) {
  (void)s;
  char p[300];
  /* missing directory: the error names the file, not a temporary */
  path_of(p, sizeof p, "nodir/x.txt");
  assert_int_equal(carl_write_file_atomic(p, "x", 1), CARL_ERR_IO);
  assert_non_null(strstr(carl_errmsg(), p));
  assert_null(strstr(carl_errmsg(), ".tmp-"));
  /* a directory is not replaced */
  path_of(p, sizeof p, "adir");
  assert_int_equal(carl_fs_mkdir_p(p), CARL_OK);
  assert_int_equal(carl_write_file_atomic(p, "x", 1), CARL_ERR_IO);
  assert_non_null(strstr(carl_errmsg(), "is a directory"));
  struct stat sb;
  assert_int_equal(stat(p, &sb), 0);
  assert_true(S_ISDIR(sb.st_mode));
  /* nor a device */
  if (stat("/dev/null", &sb) == 0 && S_ISCHR(sb.st_mode)) {
    assert_int_equal(carl_write_file_atomic("/dev/null", "x", 1), CARL_ERR_IO);
    assert_non_null(strstr(carl_errmsg(), "not a regular file"));
    assert_int_equal(stat("/dev/null", &sb), 0);
    assert_true(S_ISCHR(sb.st_mode));
  }
  assert_int_equal(carl_write_file_atomic("", "x", 1), CARL_ERR_INVALID);
}

/* A write that fails part way (the file-size limit: EFBIG) is reported, names the file, and leaves
 * the old content and no temporary. */
static void test_write_error(void **s) {
  (void)s;
  char p[300];
  path_of(p, sizeof p, "limited.txt");
  assert_int_equal(carl_write_file_atomic(p, "old", 3), CARL_OK);
  static char big[100000];
  memset(big, 'x', sizeof big);
  struct rlimit old, lim;
  assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
  lim = old;
  lim.rlim_cur = 4096;
  void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
  assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
  carl_status st = carl_write_file_atomic(p, big, sizeof big);
  setrlimit(RLIMIT_FSIZE, &old);
  signal(SIGXFSZ, prev);
  assert_int_equal(st, CARL_ERR_IO);
  assert_non_null(strstr(carl_errmsg(), p));
  assert_non_null(strstr(carl_errmsg(), "cannot write"));
  assert_content(p, "old");
  assert_int_equal(count_entries(g_dir, ".tmp-"), 0);
}

static void test_staged(void **s) {
  (void)s;
  char a[300], b[300];
  path_of(a, sizeof a, "pair_a.txt");
  path_of(b, sizeof b, "pair_b.txt");
  assert_int_equal(carl_write_file_atomic(a, "A0", 2), CARL_OK);
  carl_fs_staged_t sa, sb;
  assert_int_equal(carl_fs_stage(&sa, a, &(carl_fs_part_t){"A1", 2}, 1), CARL_OK);
  assert_int_equal(carl_fs_stage(&sb, b, &(carl_fs_part_t){"B1", 2}, 1), CARL_OK);
  /* staged, not yet visible */
  assert_content(a, "A0");
  assert_int_equal(access(b, F_OK), -1);
  carl_fs_discard(&sa);
  assert_int_equal(carl_fs_commit(&sb), CARL_OK);
  carl_fs_discard(&sb);
  assert_content(a, "A0");
  assert_content(b, "B1");
  assert_int_equal(count_entries(g_dir, ".tmp-"), 0);
  assert_int_equal(carl_fs_commit(&sa), CARL_ERR_STATE);
}

static void test_mkdir_p(void **s) {
  (void)s;
  char p[300], f[300];
  path_of(p, sizeof p, "m/n//o/");
  assert_int_equal(carl_fs_mkdir_p(p), CARL_OK);
  assert_int_equal(carl_fs_mkdir_p(p), CARL_OK);
  path_of(p, sizeof p, "m/n/o");
  struct stat sb;
  assert_int_equal(stat(p, &sb), 0);
  assert_true(S_ISDIR(sb.st_mode));
  /* a file in the way is named */
  path_of(f, sizeof f, "m/file");
  assert_int_equal(carl_write_file_atomic(f, "x", 1), CARL_OK);
  path_of(p, sizeof p, "m/file/deeper/x");
  assert_int_equal(carl_fs_mkdir_p(p), CARL_ERR_IO);
  char want[400];
  snprintf(want, sizeof want, "%s: exists and is not a directory", f);
  assert_non_null(strstr(carl_errmsg(), want));
  assert_int_equal(carl_fs_mkdir_p(""), CARL_ERR_INVALID);
}

static void test_work_dir(void **s) {
  (void)s;
  char out[300], p[CARL_FS_PATH_MAX + 64], work[CARL_FS_PATH_MAX];
  path_of(out, sizeof out, "out");
  snprintf(p, sizeof p, "%s/sub", out);
  assert_int_equal(carl_fs_mkdir_p(p), CARL_OK);
  snprintf(p, sizeof p, "%s/sub/old.txt", out);
  assert_int_equal(carl_write_file_atomic(p, "old", 3), CARL_OK);
  snprintf(p, sizeof p, "%s/f.txt", out);
  assert_int_equal(carl_write_file_atomic(p, "old", 3), CARL_OK);
  snprintf(p, sizeof p, "%s/keep.txt", out);
  assert_int_equal(carl_write_file_atomic(p, "keep", 4), CARL_OK);
  /* a failed set of outputs leaves the directory as it was */
  assert_int_equal(carl_fs_work_begin(out, work, sizeof work), CARL_OK);
  snprintf(p, sizeof p, "%s/f.txt", work);
  assert_int_equal(carl_write_file_atomic(p, "half", 4), CARL_OK);
  assert_int_equal(carl_fs_remove_tree(work), CARL_OK);
  snprintf(p, sizeof p, "%s/f.txt", out);
  assert_content(p, "old");
  assert_int_equal(count_entries(out, ".carl-partial"), 0);
  /* a complete set replaces files and directories of the same names */
  assert_int_equal(carl_fs_work_begin(out, work, sizeof work), CARL_OK);
  snprintf(p, sizeof p, "%s/f.txt", work);
  assert_int_equal(carl_write_file_atomic(p, "new", 3), CARL_OK);
  snprintf(p, sizeof p, "%s/sub", work);
  assert_int_equal(carl_fs_mkdir_p(p), CARL_OK);
  snprintf(p, sizeof p, "%s/sub/new.txt", work);
  assert_int_equal(carl_write_file_atomic(p, "new", 3), CARL_OK);
  assert_int_equal(carl_fs_work_commit(work, out), CARL_OK);
  snprintf(p, sizeof p, "%s/f.txt", out);
  assert_content(p, "new");
  snprintf(p, sizeof p, "%s/sub/new.txt", out);
  assert_content(p, "new");
  snprintf(p, sizeof p, "%s/sub/old.txt", out);
  assert_int_equal(access(p, F_OK), -1);
  snprintf(p, sizeof p, "%s/keep.txt", out);
  assert_content(p, "keep");
  assert_int_equal(count_entries(out, ".carl-partial"), 0);
  assert_int_equal(access(work, F_OK), -1);
}

static void test_replace_dir(void **s) {
  (void)s;
  char dir[300], tmp[300], p[400];
  path_of(dir, sizeof dir, "ck");
  path_of(tmp, sizeof tmp, "ck.tmp");
  /* into a missing place */
  assert_int_equal(carl_fs_mkdir_p(tmp), CARL_OK);
  snprintf(p, sizeof p, "%s/a", tmp);
  assert_int_equal(carl_write_file_atomic(p, "1", 1), CARL_OK);
  assert_int_equal(carl_fs_replace_dir(tmp, dir), CARL_OK);
  snprintf(p, sizeof p, "%s/a", dir);
  assert_content(p, "1");
  assert_int_equal(access(tmp, F_OK), -1);
  /* over an older one: only the new content is left, and nothing aside */
  assert_int_equal(carl_fs_mkdir_p(tmp), CARL_OK);
  snprintf(p, sizeof p, "%s/b", tmp);
  assert_int_equal(carl_write_file_atomic(p, "2", 1), CARL_OK);
  assert_int_equal(carl_fs_replace_dir(tmp, dir), CARL_OK);
  snprintf(p, sizeof p, "%s/b", dir);
  assert_content(p, "2");
  snprintf(p, sizeof p, "%s/a", dir);
  assert_int_equal(access(p, F_OK), -1);
  assert_int_equal(count_entries(g_dir, "ck.replaced"), 0);
  /* a file in the way is left alone */
  path_of(p, sizeof p, "plain");
  assert_int_equal(carl_write_file_atomic(p, "x", 1), CARL_OK);
  assert_int_equal(carl_fs_mkdir_p(tmp), CARL_OK);
  assert_int_equal(carl_fs_replace_dir(tmp, p), CARL_ERR_IO);
  assert_content(p, "x");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_crc32c_vectors), cmocka_unit_test(test_write_replace), cmocka_unit_test(test_write_refused),
      cmocka_unit_test(test_write_error),    cmocka_unit_test(test_staged),        cmocka_unit_test(test_mkdir_p),
      cmocka_unit_test(test_work_dir),       cmocka_unit_test(test_replace_dir),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
