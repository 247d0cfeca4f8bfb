/* EPLB against DeepSeek's eplb.py itself: tests/fixtures/eplb holds rebalance_experts' outputs on
 * seeded random loads for 11 shapes (tests/fixtures/eplb/gen.py made them; provenance.txt says
 * with what). Asserted:
 *   - carl_eplb_rebalance equals eplb.py with torch's stable sort (phy2log and counts) on every
 *     case, and eplb.py with torch's default sort wherever that equals the stable one;
 *   - carl_eplb_rebalance_nodup never puts an expert twice on a GPU; wherever eplb.py (stable sort)
 *     has no such duplicate it gives eplb.py's own phy2log and counts, and wherever eplb.py (default
 *     sort) has none, a maximum GPU load not above eplb.py's;
 *   - the placements `eplb` and `eplb-nodup` are these tables.
 * The maximum GPU load (sum over a GPU's slots of load / count, the reference's model) of
 * eplb-nodup against eplb.py where eplb.py has duplicates is printed, not asserted. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "carl/array.h"
#include "carl/place.h"

#define FIX CARL_SOURCE_DIR "/tests/fixtures/eplb"

static void read_npy(const char *shape, const char *name, carl_dtype dt, int64_t rows, int64_t cols, carl_array_t *a) {
  char path[512];
  snprintf(path, sizeof path, FIX "/%s/%s.npy", shape, name);
  if (carl_npy_read(path, a) != CARL_OK) fail_msg("%s: %s", path, carl_errmsg());
  if (carl_array_expect(a, name, dt, 2) != CARL_OK) fail_msg("%s: %s", path, carl_errmsg());
  if (a->shape[0] != rows || a->shape[1] != cols)
    fail_msg("%s: shape [%lld, %lld], expected [%lld, %lld]", path, (long long)a->shape[0], (long long)a->shape[1],
             (long long)rows, (long long)cols);
}

/* max over GPUs of sum over its slots of w[e] / cnt[e] (per: slots per GPU) */
static double max_gpu_load(const double *w, const int32_t *phy2log, const int32_t *cnt, int R, int per) {
  double mx = 0;
  for (int g = 0; g < R / per; g++) {
    double l = 0;
    for (int s = 0; s < per; s++) l += w[phy2log[g * per + s]] / cnt[phy2log[g * per + s]];
    mx = l > mx ? l : mx;
  }
  return mx;
}

static int has_dup(const int32_t *phy2log, int R, int per) {
  for (int i = 0; i < R; i++)
    for (int j = i - i % per; j < i; j++)
      if (phy2log[j] == phy2log[i]) return 1;
  return 0;
}

static void test_eplb_parity(void **s) {
  (void)s;
  FILE *f = fopen(FIX "/MANIFEST.txt", "r");
  assert_non_null(f);
  char name[64];
  int E, R, G, N, gpus, C;
  int cases = 0, eq_stable = 0, default_same = 0, eq_default = 0, ref_dup = 0, nodup_eq = 0, nodup_le = 0;
  int dup_lower = 0, dup_equal = 0, dup_higher = 0;
  double worst = 0, best = INFINITY;
  while (fscanf(f, "%63s %d %d %d %d %d %d", name, &E, &R, &G, &N, &gpus, &C) == 7) {
    carl_array_t L, P0, P1, C0, C1;
    read_npy(name, "load", CARL_F32, C, E, &L);
    read_npy(name, "phy2log", CARL_I32, C, R, &P0);
    read_npy(name, "phy2log_stable", CARL_I32, C, R, &P1);
    read_npy(name, "logcnt", CARL_I32, C, E, &C0);
    read_npy(name, "logcnt_stable", CARL_I32, C, E, &C1);
    const int per = R / gpus;
    double *w = malloc((size_t)E * sizeof *w);
    int32_t *phy = malloc((size_t)R * sizeof *phy), *cnt = malloc((size_t)E * sizeof *cnt);
    int32_t *nphy = malloc((size_t)R * sizeof *nphy), *ncnt = malloc((size_t)E * sizeof *ncnt);
    assert_true(w && phy && cnt && nphy && ncnt);
    int sh_eq = 0, sh_dup = 0;
    for (int c = 0; c < C; c++) {
      const float *lf = (const float *)L.data + (size_t)c * E;
      const int32_t *p0 = (const int32_t *)P0.data + (size_t)c * R, *p1 = (const int32_t *)P1.data + (size_t)c * R;
      const int32_t *c0 = (const int32_t *)C0.data + (size_t)c * E, *c1 = (const int32_t *)C1.data + (size_t)c * E;
      for (int e = 0; e < E; e++) w[e] = lf[e];
      assert_int_equal(carl_eplb_rebalance(w, E, R, G, N, gpus, phy, cnt), CARL_OK);
      const int st = !memcmp(phy, p1, (size_t)R * sizeof *phy) && !memcmp(cnt, c1, (size_t)E * sizeof *cnt);
      const int same = !memcmp(p0, p1, (size_t)R * sizeof *p0) && !memcmp(c0, c1, (size_t)E * sizeof *c0);
      const int df = !memcmp(phy, p0, (size_t)R * sizeof *phy) && !memcmp(cnt, c0, (size_t)E * sizeof *cnt);
      if (!st) fail_msg("%s case %d: carl_eplb_rebalance differs from eplb.py (stable sort)", name, c);
      if (same && !df) fail_msg("%s case %d: carl_eplb_rebalance differs from eplb.py", name, c);
      cases++;
      eq_stable += st;
      default_same += same;
      eq_default += df;
      sh_eq += df;
      /* eplb-nodup against eplb.py as it is */
      assert_int_equal(carl_eplb_rebalance_nodup(w, E, R, G, N, gpus, nphy, ncnt), CARL_OK);
      assert_false(has_dup(nphy, R, per));
      int tot = 0;
      for (int e = 0; e < E; e++) {
        int k = 0;
        for (int i = 0; i < R; i++) k += nphy[i] == e;
        assert_int_equal(k, ncnt[e]);
        assert_true(ncnt[e] >= 1);
        tot += ncnt[e];
      }
      assert_int_equal(tot, R);
      const double mref = max_gpu_load(w, p0, c0, R, per), mnd = max_gpu_load(w, nphy, ncnt, R, per);
      if (!has_dup(p1, R, per)) {
        if (memcmp(nphy, p1, (size_t)R * sizeof *p1) || memcmp(ncnt, c1, (size_t)E * sizeof *c1))
          fail_msg("%s case %d: eplb.py (stable sort) has no duplicate but eplb-nodup differs from it", name, c);
        nodup_eq++;
      }
      if (!has_dup(p0, R, per)) {
        if (mnd > mref) fail_msg("%s case %d: eplb.py has no duplicate, max GPU load %.9g, eplb-nodup %.9g", name, c, mref, mnd);
        nodup_le++;
      } else {
        ref_dup++;
        sh_dup++;
        const double r = mref > 0 ? mnd / mref : 1;
        if (mnd < mref * (1 - 1e-12)) dup_lower++;
        else if (mnd > mref * (1 + 1e-12)) dup_higher++;
        else dup_equal++;
        worst = r > worst ? r : worst;
        best = r < best ? r : best;
      }
    }
    print_message("  %-6s E %3d R %3d groups %d nodes %d gpus %2d: %2d cases, %2d equal to eplb.py (default sort), %2d with duplicates\n",
                  name, E, R, G, N, gpus, C, sh_eq, sh_dup);
    /* the placements through carl_place_compute, on the first case */
    {
      carl_topo_t t;
      assert_int_equal(carl_topo_make(&t, N, gpus / N, 160, 3, 50, 10), CARL_OK);
      const float *lf = (const float *)L.data;
      for (int e = 0; e < E; e++) w[e] = lf[e];
      carl_place_input_t in = {E, N, w, NULL, NULL, NULL};
      carl_place_opts_t o;
      carl_place_opts_default(&o);
      o.replicas = R;
      o.groups = G;
      o.algo = CARL_PLACE_EPLB_NODUP;
      carl_placement_t p;
      assert_int_equal(carl_place_compute(&t, &in, &o, &p), CARL_OK);
      assert_int_equal(carl_eplb_rebalance_nodup(w, E, R, G, N, gpus, nphy, ncnt), CARL_OK);
      assert_memory_equal(p.slot_expert, nphy, (size_t)R * sizeof *nphy);
      carl_placement_free(&p);
      o.algo = CARL_PLACE_EPLB;
      assert_int_equal(carl_place_compute(&t, &in, &o, &p), CARL_OK);
      const int32_t *p0 = (const int32_t *)P0.data;
      for (int i = 0; i < R; i++) {
        int dup = 0;
        for (int j = i - i % per; j < i; j++) dup |= p0[j] == p0[i];
        assert_int_equal(p.slot_expert[i], dup ? -1 : p0[i]);
      }
      carl_placement_free(&p);
    }
    free(w); free(phy); free(cnt); free(nphy); free(ncnt);
    carl_array_free(&L); carl_array_free(&P0); carl_array_free(&P1); carl_array_free(&C0); carl_array_free(&C1);
  }
  fclose(f);
  print_message("eplb vs eplb.py: %d cases; equal to the stable-sort reference %d; equal to the default-sort reference %d "
                "(%d cases where the two references agree)\n", cases, eq_stable, eq_default, default_same);
  print_message("eplb-nodup vs eplb.py: identical on the %d cases where the stable-sort reference has no duplicate; "
                "max GPU load not above the default-sort reference's on the %d cases where it has none; on the %d with "
                "duplicates: lower %d, equal %d, higher %d (ratio %.4f .. %.4f)\n", nodup_eq, nodup_le, ref_dup, dup_lower,
                dup_equal, dup_higher, ref_dup ? best : 1.0, ref_dup ? worst : 1.0);
  assert_true(cases >= 300);
  assert_int_equal(eq_stable, cases);
  assert_true(nodup_eq >= 50);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_eplb_parity)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
