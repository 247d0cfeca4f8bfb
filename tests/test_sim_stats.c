/* Statistics of the simulator's summary: the mean and 95% interval over seeds (Student's t, n - 1
 * degrees of freedom) against hand computation with the published t-table values, the verdict
 * rule (a win only when the intervals do not overlap), and summary_ci.csv on a hand-made result. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "carl/core.h"
#include "carl/sim.h"

/* published two-sided 95% t values (any statistics table): 4 dof 2.776, 2 dof 4.303, 9 dof 2.262,
 * 40 dof 2.021, 60 dof 2.000, 120 dof 1.980 */
static void test_t_table(void **s) {
  (void)s;
  assert_true(fabs(carl_sim_t975(4) - 2.776) < 5e-4);
  assert_true(fabs(carl_sim_t975(2) - 4.303) < 5e-4);
  assert_true(fabs(carl_sim_t975(9) - 2.262) < 5e-4);
  assert_true(fabs(carl_sim_t975(40) - 2.021) < 5e-4);
  assert_true(fabs(carl_sim_t975(60) - 2.000) < 5e-4);
  assert_true(fabs(carl_sim_t975(120) - 1.980) < 5e-4);
  assert_true(isnan(carl_sim_t975(0)));
}

/* 1, 2, 3, 4, 5: mean 3, s^2 = (4 + 1 + 0 + 1 + 4) / 4 = 2.5, half = 2.776 sqrt(2.5 / 5) = 1.9629
 * (the table's 3 decimals: 5e-4 of t is 3.5e-4 of the half-width).
 * 10, 12, 14: mean 12, s = 2, half = 4.303 * 2 / sqrt(3) = 4.9687. */
static void test_ci95_hand(void **s) {
  (void)s;
  const double x[5] = {1, 2, 3, 4, 5};
  double m, h;
  carl_sim_ci95(x, 5, &m, &h);
  assert_true(fabs(m - 3) < 1e-12);
  assert_true(fabs(h - 1.9629) < 5e-4);
  const double y[3] = {14, 10, 12};
  carl_sim_ci95(y, 3, &m, &h);
  assert_true(fabs(m - 12) < 1e-12);
  assert_true(fabs(h - 4.9687) < 1e-3);
  carl_sim_ci95(x, 1, &m, &h); /* one value: a mean, no interval */
  assert_true(m == 1 && isnan(h));
  carl_sim_ci95(x, 0, &m, &h);
  assert_true(isnan(m) && isnan(h));
}

static void test_compare(void **s) {
  (void)s;
  assert_int_equal(carl_sim_compare(10, 1, 13, 1), CARL_SIM_WIN);     /* [9, 11] below [12, 14] */
  assert_int_equal(carl_sim_compare(13, 1, 10, 1), CARL_SIM_LOSS);
  assert_int_equal(carl_sim_compare(10, 2, 13, 2), CARL_SIM_OVERLAP); /* [8, 12] meets [11, 15] */
  assert_int_equal(carl_sim_compare(10, 1.5, 13, 1.5), CARL_SIM_OVERLAP); /* touching: not a win */
  assert_int_equal(carl_sim_compare(10, NAN, 13, 1), CARL_SIM_UNDECIDED);
}

/* A hand-made result of 2 routers x 1 topology x 1 scenario x 5 seeds written as reports: router
 * "a" has a2a 1..5 ms (3 +- 1.963), router "b" 11..15 ms (13 +- 1.963): a wins against b, b loses. */
static void test_summary_ci_csv(void **s) {
  (void)s;
  const char *json = "{\"steps\":4,\"tokens\":64,\"experts\":8,\"d\":8,\"routers\":[{\"label\":\"a\",\"name\":\"topk\"},"
                     "{\"label\":\"b\",\"name\":\"topk\"}],\"topologies\":[{\"name\":\"t2x2\",\"nodes\":2,"
                     "\"devices_per_node\":2,\"links\":{\"intra\":{\"GBps\":160,\"latency_us\":3},\"inter\":{\"GBps\":50,"
                     "\"latency_us\":10}}}],\"scenarios\":[\"zipf\"],\"seeds\":[1,2,3,4,5]}";
  carl_sim_config_t c;
  assert_int_equal(carl_sim_config_parse(json, strlen(json), NULL, &c), CARL_OK);
  carl_sim_run_t runs[10];
  memset(runs, 0, sizeof runs);
  for (int i = 0; i < 10; i++) {
    runs[i].router = i / 5;
    runs[i].seed = i % 5;
    for (int q = 0; q < CARL_SIM_NCOL; q++) runs[i].summary[q] = NAN;
    runs[i].summary[CARL_SIM_A2A_MS] = 1 + i % 5 + 10 * (i / 5);
  }
  carl_sim_result_t res = {.nrun = 10, .runs = runs};
  char dir[] = "/tmp/carl_stats_XXXXXX";
  assert_non_null(mkdtemp(dir));
  char out[600], path[700];
  snprintf(out, sizeof out, "%s/r", dir);
  assert_int_equal(carl_sim_write_reports(&c, &res, out), CARL_OK);
  snprintf(path, sizeof path, "%s/summary_ci.csv", out);
  char *txt;
  size_t len;
  assert_int_equal(carl_read_file(path, &txt, &len), CARL_OK);
  /* the a2a_ms column pair of the "all" rows, and the verdicts at the end of those rows */
  char *line = strchr(txt, '\n') + 1;
  int hdr_col = -1, col = 0;
  for (char *p = txt; p < line; p++) {
    if (!strncmp(p, ",a2a_ms,", 8) && hdr_col < 0) hdr_col = col + 1;
    if (*p == ',') col++;
  }
  assert_true(hdr_col > 0);
  int found = 0;
  for (char *l = line; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
    if (strncmp(l + 2, "t2x2,all,", 9)) continue;
    const char *p = l;
    for (int k = 0; k < hdr_col; k++) p = strchr(p, ',') + 1;
    double m = strtod(p, NULL), h = strtod(strchr(p, ',') + 1, NULL);
    char *eol = strchr(l, '\n');
    if (eol) *eol = '\0';
    if (l[0] == 'a') {
      assert_true(fabs(m - 3) < 1e-9 && fabs(h - 1.9629) < 5e-4);
      assert_non_null(strstr(l, ",a2a_ms,b,win"));
    } else {
      assert_true(fabs(m - 13) < 1e-9 && fabs(h - 1.9629) < 5e-4);
      assert_non_null(strstr(l, ",a2a_ms,a,loss"));
    }
    found++;
    if (eol) *eol = '\n';
  }
  assert_int_equal(found, 2);
  free(txt);
  char md[700];
  snprintf(md, sizeof md, "%s/summary.md", out);
  assert_int_equal(carl_read_file(md, &txt, &len), CARL_OK);
  assert_non_null(strstr(txt, "| 3.0000 ± 1.9632 |")); /* a2a 3 +- 2.7764 sqrt(0.5) */
  assert_non_null(strstr(txt, "win vs b"));
  free(txt);
  char cmd[800];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  assert_int_equal(system(cmd), 0);
  carl_sim_config_free(&c);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_t_table),
      cmocka_unit_test(test_ci95_hand),
      cmocka_unit_test(test_compare),
      cmocka_unit_test(test_summary_ci_csv),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
