/* Training: config files, resume bitwise identical to an uninterrupted run, NaN stop keeping the
 * last good checkpoint, config/model mismatch and corrupt checkpoints refused, trace dump, sampling. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <signal.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "carl/array.h"
#include "carl/fs.h"
#include "core/json_internal.h"
#include "carl/safetensors.h"
#include "carl/train.h"

static char g_dir[256]; /* scratch directory of this test program */

/* A small corpus: 3000 lines of a few repeated verses (about 100 KB), split 90/10. */
static void make_corpus(void) {
  static const char *lines[] = {"In the beginning God created the heaven and the earth.\n",
                                "And the earth was without form, and void.\n",
                                "And God said, Let there be light: and there was light.\n",
                                "And God saw the light, that it was good.\n"};
  char p[512];
  snprintf(p, sizeof p, "%s/train.txt", g_dir);
  FILE *f = fopen(p, "w");
  for (int i = 0; i < 2700; i++) fputs(lines[(i * 7) % 4], f);
  fclose(f);
  snprintf(p, sizeof p, "%s/val.txt", g_dir);
  f = fopen(p, "w");
  for (int i = 0; i < 300; i++) fputs(lines[(i * 3) % 4], f);
  fclose(f);
}

static int setup(void **s) {
  (void)s;
  snprintf(g_dir, sizeof g_dir, "/tmp/carl_test_train_XXXXXX");
  if (!mkdtemp(g_dir)) return -1;
  make_corpus();
  return 0;
}

static int teardown(void **s) {
  (void)s;
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
  return system(cmd) == 0 ? 0 : -1;
}

/* The tiny config with our corpus; router and its options as given; the 2x2 test topology. */
static void tiny_config(carl_train_config_t *c, const char *router, const char *ropts, int64_t steps) {
  char json[2048];
  snprintf(json, sizeof json,
           "{\"name\":\"t\",\"model\":{\"vocab\":256,\"max_seq\":16,\"d_model\":16,\"n_layers\":2,\"n_heads\":2,"
           "\"d_ff\":16,\"n_experts\":4,\"top_k\":2,\"seed\":3,\"router\":\"%s\",\"router_opts\":{%s}},"
           "\"train\":{\"batch\":4,\"seq_len\":16,\"steps\":%lld,\"lr\":0.01,\"warmup\":1,\"eval_every\":2,"
           "\"eval_batches\":2,\"ckpt_every\":2,\"log_every\":1,\"data_seed\":5,"
           "\"train_data\":\"%s/train.txt\",\"val_data\":\"%s/val.txt\","
           "\"topology\":\"configs/topologies/test-2x2.json\"}}",
           router, ropts, (long long)steps, g_dir, g_dir);
  carl_status st = carl_train_config_parse(json, strlen(json), "tiny", c);
  if (st != CARL_OK) fail_msg("tiny config: %s", carl_errmsg());
}

static void out_dir(char *buf, size_t cap, const char *name) { snprintf(buf, cap, "%s/%s", g_dir, name); }

static char *slurp(const char *path, size_t *len) {
  char *d = NULL;
  if (carl_read_file(path, &d, len) != CARL_OK) fail_msg("read %s: %s", path, carl_errmsg());
  return d;
}

static void assert_files_equal(const char *a, const char *b) {
  size_t la, lb;
  char *x = slurp(a, &la), *y = slurp(b, &lb);
  if (la != lb || memcmp(x, y, la) != 0) fail_msg("%s and %s differ", a, b);
  free(x);
  free(y);
}

/* Columns 0..5 of metrics.csv (step, loss, ce, router_loss, val_ce, val_bpb) of every row. */
static char *loss_columns(const char *csv_path) {
  size_t len;
  char *d = slurp(csv_path, &len), *out = calloc(len + 1, 1), *save = NULL;
  for (char *line = strtok_r(d, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
    int commas = 0;
    char *p = line;
    while (*p && commas < 6) commas += (*p++ == ',');
    strncat(out, line, (size_t)(p - line));
    strcat(out, "\n");
  }
  free(d);
  return out;
}

/* ---- config ------------------------------------------------------------------------------------- */
static void test_config(void **s) {
  (void)s;
  carl_train_config_t c, d;
  tiny_config(&c, "topk", "\"aux\":0.01", 8);
  assert_int_equal(c.model.d_model, 16);
  assert_int_equal(c.model.n_experts, 4);
  assert_int_equal(c.batch, 4);
  assert_int_equal(c.steps, 8);
  assert_int_equal(c.model.n_router_opts, 1);
  assert_string_equal(c.model.router_keys[0], "aux");
  assert_true(c.model.router_vals[0] == 0.01);
  assert_true(c.lr == 0.01);
  /* round trip through JSON */
  char *text = carl_train_config_to_json(&c);
  assert_int_equal(carl_train_config_parse(text, strlen(text), "rt", &d), CARL_OK);
  free(text);
  char why[256];
  assert_int_equal(carl_train_config_model_diff(&c, &d, why, sizeof why), 0);
  assert_true(d.lr == c.lr && d.steps == c.steps && d.batch == c.batch && d.data_seed == c.data_seed);
  assert_string_equal(d.train_data, c.train_data);
  /* differences are named */
  d.model.d_model = 32;
  assert_int_equal(carl_train_config_model_diff(&c, &d, why, sizeof why), 1);
  assert_non_null(strstr(why, "model.d_model"));
  d = c;
  d.model.router_vals[0] = 0.02;
  assert_int_equal(carl_train_config_model_diff(&c, &d, why, sizeof why), 1);
  assert_non_null(strstr(why, "router_opts.aux"));
  /* bad configs: errors name the field */
  static const struct {
    const char *json, *needle;
  } bad[] = {
      {"{\"model\":{\"d_model\":16},\"train\":{\"stpes\":3}}", "stpes"},
      {"{\"model\":{\"max_seq\":8},\"train\":{\"seq_len\":16}}", "seq_len"},
      {"{\"model\":{\"router\":\"nosuch\"}}", "nosuch"},
      {"{\"model\":{\"router\":\"topk\",\"router_opts\":{\"bogus\":1}}}", "bogus"},
      {"{\"model\":{\"d_model\":-4}}", "d_model"},
      {"{\"model\":{\"router_opts\":{\"aux\":\"x\"}}}", "router_opts.aux"},
      {"{\"train\":{}}", "model"},
      {"{\"model\":{}, \"train\":{\"lr\":0}}", "lr"},
      {"{\"model\":{} \"train\":{}}", "malformed"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    carl_status st = carl_train_config_parse(bad[i].json, strlen(bad[i].json), "cfg.json", &d);
    if (st == CARL_OK || !strstr(carl_errmsg(), bad[i].needle))
      fail_msg("config %s: got %d '%s', want an error naming %s", bad[i].json, st, carl_errmsg(), bad[i].needle);
  }
  /* the shipped configs parse */
  assert_int_equal(carl_train_config_load("configs/models/tiny.json", &d), CARL_OK);
  assert_int_equal(carl_train_config_load("configs/models/small.json", &d), CARL_OK);
}

/* ---- resume ------------------------------------------------------------------------------------- */
/* Run 6 steps straight through; run 3 steps, stop, resume to 6; the final checkpoints (parameters,
 * AdamW moments, router state) are byte-identical and so are the logged losses. */
static void check_resume(const char *router, const char *ropts) {
  carl_train_config_t c;
  tiny_config(&c, router, ropts, 6);
  char a[300], b[300], fa[400], fb[400];
  out_dir(a, sizeof a, "resume_a");
  out_dir(b, sizeof b, "resume_b");
  strcat(a, router);
  strcat(b, router);
  carl_train_result_t ra, rb;
  carl_train_opts_t oa = {.out_dir = a};
  if (carl_train_run(&c, &oa, &ra) != CARL_OK) {
    if (strstr(carl_errmsg(), "not implemented")) skip(); /* router still a placeholder in this build */
    fail_msg("%s straight: %s", router, carl_errmsg());
  }
  assert_int_equal(ra.step, 6);
  carl_train_opts_t ob = {.out_dir = b, .stop_after = 3};
  if (carl_train_run(&c, &ob, &rb) != CARL_OK) fail_msg("%s first part: %s", router, carl_errmsg());
  assert_int_equal(rb.step, 3);
  ob.stop_after = 0;
  ob.resume = 1;
  if (carl_train_run(&c, &ob, &rb) != CARL_OK) fail_msg("%s resumed: %s", router, carl_errmsg());
  assert_int_equal(rb.step, 6);
  static const char *files[] = {"model.safetensors", "optimizer.safetensors"};
  for (int i = 0; i < 2; i++) {
    snprintf(fa, sizeof fa, "%s/ckpt_00000006/%s", a, files[i]);
    snprintf(fb, sizeof fb, "%s/ckpt_00000006/%s", b, files[i]);
    assert_files_equal(fa, fb);
  }
  snprintf(fa, sizeof fa, "%s/ckpt_00000006/router_0.state", a);
  if (access(fa, F_OK) == 0) {
    snprintf(fb, sizeof fb, "%s/ckpt_00000006/router_0.state", b);
    assert_files_equal(fa, fb);
  }
  /* the parameters did move between step 4 and 6 (so equality above is not vacuous) */
  snprintf(fa, sizeof fa, "%s/ckpt_00000004/model.safetensors", a);
  snprintf(fb, sizeof fb, "%s/ckpt_00000006/model.safetensors", a);
  size_t l4, l6;
  char *p4 = slurp(fa, &l4), *p6 = slurp(fb, &l6);
  assert_int_equal(l4, l6);
  assert_true(memcmp(p4, p6, l4) != 0);
  free(p4);
  free(p6);
  snprintf(fa, sizeof fa, "%s/metrics.csv", a);
  snprintf(fb, sizeof fb, "%s/metrics.csv", b);
  char *ca = loss_columns(fa), *cb = loss_columns(fb);
  assert_string_equal(ca, cb);
  /* 6 logged rows plus the header */
  int rows = 0;
  for (char *p = ca; *p; p++) rows += *p == '\n';
  assert_int_equal(rows, 7);
  free(ca);
  free(cb);
  /* only the two newest checkpoints are kept; latest names step 6 */
  snprintf(fa, sizeof fa, "%s/ckpt_00000002", a);
  assert_int_equal(access(fa, F_OK), -1);
  snprintf(fa, sizeof fa, "%s/latest", a);
  size_t ll;
  char *latest = slurp(fa, &ll);
  assert_string_equal(latest, "ckpt_00000006\n");
  free(latest);
}

static void test_resume_topk(void **s) {
  (void)s;
  check_resume("topk", "\"aux\":0.01");
}

static void test_resume_lossfree(void **s) {
  (void)s;
  check_resume("lossfree", "");
}

static void test_resume_carl(void **s) {
  (void)s;
  if (!carl_router_find("carl")) skip();
  check_resume("carl", "");
}

/* ---- NaN ---------------------------------------------------------------------------------------- */
/* Train 2 good steps; resume with an absurd learning rate: the weights blow up, the loss becomes
 * non-finite, training stops with CARL_ERR_NUMERIC naming the step, no checkpoint is written after
 * the failure and the latest checkpoint loads with finite parameters. */
static void test_nan_stops(void **s) {
  (void)s;
  carl_train_config_t c;
  tiny_config(&c, "topk", "", 2);
  char o[300], f[400];
  out_dir(o, sizeof o, "nan");
  carl_train_result_t r;
  carl_train_opts_t opt = {.out_dir = o};
  assert_int_equal(carl_train_run(&c, &opt, &r), CARL_OK);
  c.steps = 50;
  c.lr = 1e30;
  c.ckpt_every = 1;
  c.warmup = 0;
  c.grad_clip = 0;
  opt.resume = 1;
  carl_status st = carl_train_run(&c, &opt, &r);
  if (st != CARL_ERR_NUMERIC || !strstr(carl_errmsg(), "stopped")) fail_msg("got %d: %s", st, carl_errmsg());
  assert_non_null(strstr(carl_errmsg(), "stopped"));
  assert_non_null(strstr(carl_errmsg(), "Last good checkpoint"));
  int64_t failed = r.step; /* the step that failed was not completed */
  assert_true(failed >= 2 && failed < 50);
  snprintf(f, sizeof f, "%s/ckpt_%08lld", o, (long long)failed + 1);
  assert_int_equal(access(f, F_OK), -1);
  carl_train_config_t ck;
  carl_model_t *m;
  int64_t step;
  assert_int_equal(carl_ckpt_load_model(o, &ck, &m, &step), CARL_OK);
  assert_int_equal(step, failed);
  const float *p = carl_model_params(m);
  for (int64_t i = 0; i < carl_model_nparams(m); i++) assert_true(isfinite(p[i]));
  carl_model_free(m);
}

/* ---- bad input on resume ------------------------------------------------------------------------ */
static void test_resume_rejects(void **s) {
  (void)s;
  carl_train_config_t c, d;
  tiny_config(&c, "topk", "\"aux\":0.01", 2);
  char o[300], f[400];
  out_dir(o, sizeof o, "reject");
  carl_train_result_t r;
  carl_train_opts_t opt = {.out_dir = o, .resume = 1};
  /* nothing to resume from */
  assert_int_equal(carl_train_run(&c, &opt, &r), CARL_ERR_IO);
  assert_non_null(strstr(carl_errmsg(), "reject"));
  opt.resume = 0;
  assert_int_equal(carl_train_run(&c, &opt, &r), CARL_OK);
  snprintf(f, sizeof f, "%s/ckpt_00000002/model.safetensors", o);
  size_t len0;
  char *before = slurp(f, &len0);
  opt.resume = 1;
  c.steps = 4;
  /* a different model size */
  d = c;
  d.model.d_model = 32;
  d.model.d_ff = 32;
  assert_int_equal(carl_train_run(&d, &opt, &r), CARL_ERR_STATE);
  assert_non_null(strstr(carl_errmsg(), "model.d_model"));
  /* a different router */
  tiny_config(&d, "lossfree", "", 4);
  assert_int_equal(carl_train_run(&d, &opt, &r), CARL_ERR_STATE);
  assert_non_null(strstr(carl_errmsg(), "model.router"));
  /* the checkpoint is untouched by the refused runs */
  size_t len1;
  char *after = slurp(f, &len1);
  assert_int_equal(len0, len1);
  assert_memory_equal(before, after, len0);
  free(after);
  /* a truncated model.safetensors is refused with its name */
  FILE *fp = fopen(f, "wb");
  fwrite(before, 1, len0 - 3, fp);
  fclose(fp);
  assert_int_equal(carl_train_run(&c, &opt, &r), CARL_ERR_PARSE);
  assert_non_null(strstr(carl_errmsg(), "model.safetensors"));
  /* a garbled 'latest' */
  fp = fopen(f, "wb");
  fwrite(before, 1, len0, fp);
  fclose(fp);
  free(before);
  snprintf(f, sizeof f, "%s/latest", o);
  fp = fopen(f, "w");
  fputs("../../etc\n", fp);
  fclose(fp);
  assert_int_equal(carl_train_run(&c, &opt, &r), CARL_ERR_PARSE);
  assert_non_null(strstr(carl_errmsg(), "latest"));
  /* a corpus that was never prepared */
  carl_train_config_t e = c;
  snprintf(e.train_data, sizeof e.train_data, "data/not-prepared.txt");
  opt.resume = 0;
  assert_int_equal(carl_train_run(&e, &opt, &r), CARL_ERR_IO);
  assert_non_null(strstr(carl_errmsg(), "scripts/prepare_data.sh"));
}

/* ---- write errors ------------------------------------------------------------------------------ */
/* After step `at` is logged, the file-size limit is set to metrics.csv's size: the next row cannot
 * be written (EFBIG, as on a full disk). */
typedef struct {
  char csv[400];
  int64_t at;
  struct rlimit old;
} limit_ud_t;

static void limit_after(const carl_train_metrics_t *m, void *ud) {
  limit_ud_t *u = ud;
  if (m->step != u->at) return;
  struct stat sb;
  if (stat(u->csv, &sb) != 0) return;
  struct rlimit l = u->old;
  l.rlim_cur = (rlim_t)sb.st_size;
  setrlimit(RLIMIT_FSIZE, &l);
}

/* A row of metrics.csv that cannot be written stops the run with an error naming the file and the
 * step; metrics.csv holds whole rows only; the last good checkpoint stays the latest; a resume
 * continues from it with every row. */
static void test_write_error_stops(void **s) {
  (void)s;
  carl_train_config_t c;
  tiny_config(&c, "topk", "", 6);
  char o[300], f[400];
  out_dir(o, sizeof o, "full");
  limit_ud_t u = {.at = 3};
  snprintf(u.csv, sizeof u.csv, "%s/metrics.csv", o);
  assert_int_equal(getrlimit(RLIMIT_FSIZE, &u.old), 0);
  void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
  carl_train_result_t r;
  carl_train_opts_t opt = {.out_dir = o, .progress = limit_after, .ud = &u};
  carl_status st = carl_train_run(&c, &opt, &r);
  setrlimit(RLIMIT_FSIZE, &u.old);
  signal(SIGXFSZ, prev);
  if (st != CARL_ERR_IO || !strstr(carl_errmsg(), "metrics.csv") || !strstr(carl_errmsg(), "step 4"))
    fail_msg("want an I/O error naming metrics.csv and step 4, got %d: %s", st, carl_errmsg());
  assert_non_null(strstr(carl_errmsg(), "ckpt_00000002"));
  snprintf(f, sizeof f, "%s/latest", o);
  size_t n;
  char *latest = slurp(f, &n);
  assert_string_equal(latest, "ckpt_00000002\n");
  free(latest);
  snprintf(f, sizeof f, "%s/ckpt_00000004", o);
  assert_int_equal(access(f, F_OK), -1);
  /* the header and rows 1..3, each whole (19 fields) */
  char *csv = slurp(u.csv, &n), *save = NULL;
  assert_int_equal(csv[n - 1], '\n');
  int lines = 0;
  for (char *line = strtok_r(csv, "\n", &save); line; line = strtok_r(NULL, "\n", &save), lines++) {
    int commas = 0;
    for (char *p = line; *p; p++) commas += *p == ',';
    assert_int_equal(commas, 18);
    if (lines > 0) assert_int_equal(atoi(line), lines);
  }
  assert_int_equal(lines, 4);
  free(csv);
  /* resumed from step 2: rows 1..6 */
  opt.resume = 1;
  opt.progress = NULL;
  assert_int_equal(carl_train_run(&c, &opt, &r), CARL_OK);
  assert_int_equal(r.step, 6);
  char *cols = loss_columns(u.csv);
  lines = 0;
  for (char *p = cols; *p; p++) lines += *p == '\n';
  assert_int_equal(lines, 7);
  free(cols);
}

/* A checkpoint that cannot be written: the error names the checkpoint's file, not the temporary
 * directory or file it was being written as; nothing of it is left. */
static void test_ckpt_write_error(void **s) {
  (void)s;
  carl_train_config_t c;
  tiny_config(&c, "topk", "", 4);
  c.log_every = 2; /* the limit is set after step 2's row, before its checkpoint */
  char o[300], f[400];
  out_dir(o, sizeof o, "ckfull");
  limit_ud_t u = {.at = 2};
  snprintf(u.csv, sizeof u.csv, "%s/metrics.csv", o);
  assert_int_equal(getrlimit(RLIMIT_FSIZE, &u.old), 0);
  void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
  carl_train_result_t r;
  carl_train_opts_t opt = {.out_dir = o, .progress = limit_after, .ud = &u};
  carl_status st = carl_train_run(&c, &opt, &r);
  setrlimit(RLIMIT_FSIZE, &u.old);
  signal(SIGXFSZ, prev);
  char want[400];
  snprintf(want, sizeof want, "checkpoint at step 2: %s/ckpt_00000002/model.safetensors: cannot write", o);
  if (st != CARL_ERR_IO || !strstr(carl_errmsg(), want) || strstr(carl_errmsg(), ".tmp"))
    fail_msg("want an I/O error starting '%s' without a temporary name, got %d: %s", want, st, carl_errmsg());
  assert_non_null(strstr(carl_errmsg(), "Last good checkpoint: none yet"));
  snprintf(f, sizeof f, "%s/ckpt_00000002.tmp", o);
  assert_int_equal(access(f, F_OK), -1);
  snprintf(f, sizeof f, "%s/ckpt_00000002", o);
  assert_int_equal(access(f, F_OK), -1);
}

/* ---- corrupt checkpoints: CRC32C and non-finite values ------------------------------------------ */
/* Set element `flat` of tensor `name` in a safetensors file to v (the rest, metadata included, as it was). */
static void poke_tensor(const char *path, const char *name, int64_t flat, float v) {
  carl_st_file_t f;
  if (carl_st_read(path, &f) != CARL_OK) fail_msg("%s: %s", path, carl_errmsg());
  const carl_st_tensor_t *t = carl_st_find(&f, name);
  assert_non_null(t);
  assert_int_equal(t->dtype, CARL_F32);
  ((float *)t->data)[flat] = v;
  const char **meta = calloc(2 * (size_t)f.nmeta + 1, sizeof *meta);
  for (int i = 0; i < 2 * f.nmeta; i++) meta[i] = f.meta[i];
  assert_int_equal(carl_st_write(path, f.tensors, f.n, meta), CARL_OK);
  free(meta);
  carl_st_free(&f);
}

/* Record file's present CRC32C in its checkpoint's state.json (as a run that wrote it would have). */
static void restamp_crc(const char *ckpt, const char *file) {
  char f[400], hex[16];
  uint32_t c;
  snprintf(f, sizeof f, "%s/%s", ckpt, file);
  assert_int_equal(carl_fs_crc32c_file(f, &c), CARL_OK);
  snprintf(hex, sizeof hex, "%08x", c);
  snprintf(f, sizeof f, "%s/state.json", ckpt);
  cJSON *doc;
  assert_int_equal(carl_json_load(f, &doc), CARL_OK);
  cJSON *crc = cJSON_GetObjectItemCaseSensitive(doc, "crc32c");
  assert_non_null(cJSON_GetObjectItemCaseSensitive(crc, file));
  cJSON_ReplaceItemInObjectCaseSensitive(crc, file, cJSON_CreateString(hex));
  char *text = cJSON_Print(doc);
  assert_int_equal(carl_write_file_atomic(f, text, strlen(text)), CARL_OK);
  cJSON_free(text);
  carl_json_free(doc);
}

static void flip_last_byte(const char *path) {
  size_t n;
  char *d = slurp(path, &n);
  d[n - 1] ^= 0x01;
  assert_int_equal(carl_write_file_atomic(path, d, n), CARL_OK);
  free(d);
}

static void copy_file(const char *from, const char *to) {
  size_t n;
  char *d = slurp(from, &n);
  assert_int_equal(carl_write_file_atomic(to, d, n), CARL_OK);
  free(d);
}

/* One flipped bit in a parameter, an AdamW moment, a router state or a placement is refused by its CRC32C; a NaN
 * or Inf written with a matching CRC (a run that had diverged) is refused naming the tensor and
 * the element. The checkpoint is never changed by the refusals. */
static void test_corrupt_checkpoint(void **s) {
  (void)s;
  carl_train_config_t c;
  tiny_config(&c, "lossfree", "", 2);
  char o[300], ck[400], f[500], keep[500];
  out_dir(o, sizeof o, "corrupt");
  carl_train_result_t r;
  carl_train_opts_t opt = {.out_dir = o};
  assert_int_equal(carl_train_run(&c, &opt, &r), CARL_OK);
  snprintf(ck, sizeof ck, "%s/ckpt_00000002", o);
  c.steps = 4;
  opt.resume = 1;
  carl_train_config_t lc;
  carl_model_t *m = NULL;
  int64_t step;
  static const char *files[] = {"model.safetensors", "optimizer.safetensors", "router_1.state", "placement_0.json"};
  for (int i = 0; i < 4; i++) {
    snprintf(f, sizeof f, "%s/%s", ck, files[i]);
    snprintf(keep, sizeof keep, "%s/keep", g_dir);
    copy_file(f, keep);
    flip_last_byte(f);
    carl_status st = carl_train_run(&c, &opt, &r);
    if (st != CARL_ERR_PARSE || !strstr(carl_errmsg(), "CRC32C") || !strstr(carl_errmsg(), files[i]))
      fail_msg("%s with a flipped bit: got %d: %s", files[i], st, carl_errmsg());
    if (i != 1) { /* sampling reads the parameters and the router state, not the optimizer */
      assert_int_equal(carl_ckpt_load_model(o, &lc, &m, &step), CARL_ERR_PARSE);
      assert_non_null(strstr(carl_errmsg(), files[i]));
    }
    copy_file(keep, f);
  }
  /* NaN in tok_emb [256, 16] at [3, 5]: flat element 3 * 16 + 5 = 53 */
  snprintf(f, sizeof f, "%s/model.safetensors", ck);
  copy_file(f, keep);
  poke_tensor(f, "tok_emb", 53, NAN);
  restamp_crc(ck, "model.safetensors");
  carl_status st = carl_train_run(&c, &opt, &r);
  if (st != CARL_ERR_NUMERIC || !strstr(carl_errmsg(), "tensor 'tok_emb' holds NaN at element 53 (index [3, 5])") ||
      !strstr(carl_errmsg(), "model.safetensors"))
    fail_msg("NaN in tok_emb: got %d: %s", st, carl_errmsg());
  assert_int_equal(carl_ckpt_load_model(o, &lc, &m, &step), CARL_ERR_NUMERIC);
  copy_file(keep, f);
  restamp_crc(ck, "model.safetensors");
  /* -Inf in the second moment of the last element of the final norm */
  snprintf(f, sizeof f, "%s/optimizer.safetensors", ck);
  poke_tensor(f, "v.final_norm", 15, -INFINITY);
  restamp_crc(ck, "optimizer.safetensors");
  size_t n;
  st = carl_train_run(&c, &opt, &r);
  if (st != CARL_ERR_NUMERIC || !strstr(carl_errmsg(), "tensor 'v.final_norm' holds -Inf at element 15 (index [15])"))
    fail_msg("Inf in v.final_norm: got %d: %s", st, carl_errmsg());
  /* NaN as the first value (after the 56-byte header) of a router state */
  snprintf(f, sizeof f, "%s/router_0.state", ck);
  char *rd = slurp(f, &n);
  double nan_v = NAN;
  memcpy(rd + 56, &nan_v, sizeof nan_v);
  assert_int_equal(carl_write_file_atomic(f, rd, n), CARL_OK);
  free(rd);
  restamp_crc(ck, "router_0.state");
  snprintf(f, sizeof f, "%s/optimizer.safetensors", ck);
  poke_tensor(f, "v.final_norm", 15, 1.0f);
  restamp_crc(ck, "optimizer.safetensors");
  st = carl_train_run(&c, &opt, &r);
  if (st != CARL_ERR_NUMERIC || !strstr(carl_errmsg(), "router_0.state: value 0 of 4 is NaN"))
    fail_msg("NaN in router_0.state: got %d: %s", st, carl_errmsg());
  /* the latest checkpoint is still step 2 */
  snprintf(f, sizeof f, "%s/latest", o);
  char *latest = slurp(f, &n);
  assert_string_equal(latest, "ckpt_00000002\n");
  free(latest);
}

/* ---- trace and sampling ------------------------------------------------------------------------- */
static void test_trace_and_sample(void **s) {
  (void)s;
  carl_train_config_t c;
  tiny_config(&c, "topk", "", 4);
  char o[300], tdir[300], f[400];
  out_dir(o, sizeof o, "trace_run");
  out_dir(tdir, sizeof tdir, "trace");
  carl_train_result_t r;
  carl_train_opts_t opt = {.out_dir = o, .dump_trace = tdir, .dump_every = 2};
  assert_int_equal(carl_train_run(&c, &opt, &r), CARL_OK);
  /* steps 0 and 2 recorded: 2 x (4 x 16) = 128 tokens; 4 devices (2x2), 64/4 = 16 tokens each in order */
  for (int l = 0; l < 2; l++) {
    carl_array_t a;
    snprintf(f, sizeof f, "%s/layer_%d.npy", tdir, l);
    assert_int_equal(carl_npy_read(f, &a), CARL_OK);
    assert_int_equal(carl_array_expect(&a, "layer", CARL_F32, 2), CARL_OK);
    assert_int_equal(a.shape[0], 128);
    assert_int_equal(a.shape[1], 4);
    carl_array_free(&a);
  }
  carl_array_t src;
  snprintf(f, sizeof f, "%s/src.npy", tdir);
  assert_int_equal(carl_npy_read(f, &src), CARL_OK);
  assert_int_equal(carl_array_expect(&src, "src", CARL_I32, 1), CARL_OK);
  assert_int_equal(src.shape[0], 128);
  const int32_t *sv = src.data;
  assert_int_equal(sv[0], 0);
  assert_int_equal(sv[15], 0);
  assert_int_equal(sv[16], 1);
  assert_int_equal(sv[47], 2);
  assert_int_equal(sv[63], 3);
  assert_int_equal(sv[64 + 10], 0); /* the second recorded step starts over */
  assert_int_equal(sv[127], 3);
  carl_array_free(&src);
  /* sampling: deterministic for a seed, continues the prompt, emits exactly n bytes */
  carl_train_config_t ck;
  carl_model_t *m;
  int64_t step;
  assert_int_equal(carl_ckpt_load_model(o, &ck, &m, &step), CARL_OK);
  assert_int_equal(step, 4);
  char t1[64], t2[64], t3[64];
  assert_int_equal(carl_sample_text(m, "And God", 20, 0.8, 7, t1, sizeof t1), CARL_OK);
  assert_int_equal(carl_sample_text(m, "And God", 20, 0.8, 7, t2, sizeof t2), CARL_OK);
  assert_int_equal(carl_sample_text(m, "And God", 20, 0, 7, t3, sizeof t3), CARL_OK);
  assert_string_equal(t1, t2);
  assert_int_equal(strncmp(t1, "And God", 7), 0);
  assert_int_equal(strlen(t3), 27);
  /* greedy: the first generated byte is the argmax of the model's logits after the prompt */
  int32_t ids[7] = {'A', 'n', 'd', ' ', 'G', 'o', 'd'};
  carl_model_loss_t L;
  assert_int_equal(carl_model_forward(m, ids, NULL, 1, 7, &L), CARL_OK);
  const float *lg = carl_model_logits(m) + 6 * 256;
  int best = 0;
  for (int v = 1; v < 256; v++)
    if (lg[v] > lg[best]) best = v;
  assert_int_equal((unsigned char)t3[7], best);
  carl_model_free(m);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_config),       cmocka_unit_test(test_resume_topk),
      cmocka_unit_test(test_resume_lossfree), cmocka_unit_test(test_resume_carl),
      cmocka_unit_test(test_nan_stops),    cmocka_unit_test(test_resume_rejects),
      cmocka_unit_test(test_trace_and_sample), cmocka_unit_test(test_write_error_stops),
      cmocka_unit_test(test_corrupt_checkpoint), cmocka_unit_test(test_ckpt_write_error),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
