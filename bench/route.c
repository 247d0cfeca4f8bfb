/* bench/route: routing throughput of every registered router beside the bound of reading the
 * logits once (a parallel copy of T*E floats, measured in the same run) and beside a plain
 * reference (softmax with libm expf + a sort of the E scores per token).
 *
 * usage: bench_route [T ...]      (default: 65536 1048576; E = 256, k = 8)
 * env:   OMP_NUM_THREADS (default here: 2), BENCH_REPEATS (default 5); a router (or the reference)
 *        whose warm-up call takes more than 2 s is timed once (marked "1 run"); the update of stateful routers is
 *        timed only for T <= 65536; BENCH_ROUTERS=a,b,... limits the routers (the copy bound and
 *        the reference always run). Run with OMP_WAIT_POLICY=passive on a shared machine.
 * Prints a Markdown table (medians of the repeats): wall-clock time, and CPU time (seconds used by
 * all threads of the process for a route; by the copying threads for a copy): on a shared machine
 * the CPU-time ratios are the steadier ones. Each repeat of a router copies the logits twice right
 * after routing them (the faster copy counts), and its ratios to the bound are the medians over the
 * repeats of copy time / route time within a repeat: the speed of a shared machine drifts from
 * second to second. The copy row itself is timed before the routers.
 * c2r gets its collaboration table from the co-activation counts of the top-k sets of the same
 * logits (its profile), with Tc = 2k collaborators per expert. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <unistd.h>

#include "carl/array.h"
#include "carl/balance.h"
#include "carl/route_seed.h"
#include "carl/route.h"
#include "bench_util.h"

/* ---- the peer: a plain sort-based top-k ------------------------------------------------------ */
typedef struct {
  float s;
  int e;
} ref_item_t;
static int ref_cmp(const void *a, const void *b) {
  const ref_item_t *x = a, *y = b;
  if (x->s != y->s) return x->s > y->s ? -1 : 1;
  return x->e - y->e;
}
static void ref_topk(const float *z, int64_t T, int E, int k, int32_t *ex, float *w) {
#pragma omp parallel
  {
    ref_item_t *it = malloc((size_t)E * sizeof *it);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < T; t++) {
      const float *zt = z + t * E;
      float m = zt[0], a = 0;
      for (int e = 1; e < E; e++) m = zt[e] > m ? zt[e] : m;
      for (int e = 0; e < E; e++) {
        it[e].s = expf(zt[e] - m);
        it[e].e = e;
        a += it[e].s;
      }
      for (int e = 0; e < E; e++) it[e].s /= a;
      qsort(it, (size_t)E, sizeof *it, ref_cmp);
      float g = 0;
      for (int j = 0; j < k; j++) g += it[j].s;
      for (int j = 0; j < k; j++) {
        ex[t * k + j] = it[j].e;
        w[t * k + j] = it[j].s / g;
      }
    }
    free(it);
  }
}

/* Returns the CPU seconds of the copying threads only (not of other threads of the process, such
 * as a BLAS pool still spinning after a router that used it). */
static double par_copy(float *dst, const float *src, size_t n) {
  const size_t chunk = 1 << 18;
  const int64_t nc = (int64_t)((n + chunk - 1) / chunk);
  double cpu = 0;
#pragma omp parallel reduction(+ : cpu)
  {
    const double c0 = bench_thread_cpu_seconds();
#pragma omp for schedule(static)
    for (int64_t c = 0; c < nc; c++) {
      size_t a = (size_t)c * chunk, len = a + chunk < n ? chunk : n - a;
      memcpy(dst + a, src + a, len * sizeof *dst);
    }
    cpu += bench_thread_cpu_seconds() - c0;
  }
  return cpu;
}

int main(int argc, char **argv) {
  if (!getenv("OMP_NUM_THREADS")) omp_set_num_threads(2);
  const int reps = getenv("BENCH_REPEATS") ? atoi(getenv("BENCH_REPEATS")) : 5;
  const int E = 256, k = 8;
  int64_t Ts[8] = {65536, 1048576};
  int nT = 2;
  if (argc > 1) {
    nT = 0;
    for (int i = 1; i < argc && nT < 8; i++) Ts[nT++] = atoll(argv[i]);
  }
  /* 8 nodes x 4 devices, contiguous placement: 8 experts per device, 32 per node */
  carl_topo_t topo = {.nodes = 8, .devices_per_node = 4, .devices = 32};
  topo.link[CARL_LINK_INTRA] = (carl_link_t){160, 3};
  topo.link[CARL_LINK_INTER] = (carl_link_t){50, 10};
  printf("E = %d, k = %d, threads = %d, repeats = %d (medians)\n\n", E, k, omp_get_max_threads(), reps);
  printf("| router | T | route ms (wall) | Mtokens/s (wall) | / copy bound (wall) | route ms (CPU) | / copy bound (CPU) | / reference (CPU) | route+update ms (wall) |\n");
  printf("|---|---|---|---|---|---|---|---|---|\n");
  for (int it = 0; it < nT; it++) {
    const int64_t T = Ts[it];
    float *z = malloc((size_t)T * E * sizeof *z), *dst = malloc((size_t)T * E * sizeof *dst);
    int32_t *ex = malloc((size_t)T * k * sizeof *ex), *ids = malloc((size_t)T * sizeof *ids);
    float *w = malloc((size_t)T * k * sizeof *w);
    if (!z || !dst || !ex || !ids || !w) {
      fprintf(stderr, "out of memory at T = %lld\n", (long long)T);
      return 1;
    }
    /* logits: a mild per-expert skew plus uniform noise in [-4, 4); token ids Zipf-like over 50k */
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < T; t++) {
      for (int e = 0; e < E; e += 4) {
        uint32_t u[4];
        carl_rng_u32x4(1, CARL_STREAM_DATA, (uint64_t)(t * E + e), u);
        for (int j = 0; j < 4; j++) z[t * E + e + j] = 0.5f * (float)(e + j) / E + 8.0f * ((float)(u[j] >> 8) * 0x1p-24f - 0.5f);
      }
      double u = carl_rng_uniform64(1, CARL_STREAM_SAMPLE, (uint64_t)t);
      ids[t] = (int32_t)(50000.0 * u * u * u);
    }
    double tm[64], tc[64];
    par_copy(dst, z, (size_t)T * E); /* first touch */
    for (int r = 0; r < reps; r++) {
      double t0 = carl_now();
      tc[r] = par_copy(dst, z, (size_t)T * E);
      tm[r] = carl_now() - t0;
    }
    double tcopy = bench_median(tm, reps), ccopy = bench_median(tc, reps);
    printf("| copy of the logits (bound) | %lld | %.2f | %.2f | 1.00 | %.2f | 1.00 | | |\n", (long long)T, tcopy * 1e3,
           T / tcopy / 1e6, ccopy * 1e3);
    double rw0 = carl_now();
    ref_topk(z, T, E, k, ex, w);
    const int rrep = carl_now() - rw0 > 2.0 ? 1 : reps;
    for (int r = 0; r < rrep; r++) {
      double c0 = bench_cpu_seconds(), t0 = carl_now();
      ref_topk(z, T, E, k, ex, w);
      tm[r] = carl_now() - t0;
      tc[r] = bench_cpu_seconds() - c0;
    }
    double tref = bench_median(tm, rrep), cref = bench_median(tc, rrep);
    printf("| reference (sort-based top-k)%s | %lld | %.2f | %.2f | %.3f | %.2f | %.3f | 1.00 | |\n", rrep == 1 ? " (1 run)" : "", (long long)T, tref * 1e3,
           T / tref / 1e6, tcopy / tref, cref * 1e3, ccopy / cref);
    const char *const *names = carl_router_names();
    int nnames = 0;
    while (names[nnames]) nnames++;
    for (int n = 0; n <= nnames + 1; n++) {
      /* every registered router with its defaults, then topk without losses (no full softmax),
       * then carl after its warm start (warm=0: the steady state of training) */
      const int nolosses = n == nnames, steady = n == nnames + 1;
      const char *nm = nolosses ? "topk" : steady ? "carl" : names[n];
      const char *only = getenv("BENCH_ROUTERS");
      if (only) {
        char pat[64];
        snprintf(pat, sizeof pat, ",%s%s,", nm, nolosses ? "-nolosses" : steady ? "-steady" : "");
        char list[1024];
        snprintf(list, sizeof list, ",%s,", only);
        if (!strstr(list, pat)) continue;
      }
      int kk = strcmp(nm, "hash") == 0 || strcmp(nm, "switch") == 0 || strcmp(nm, "locmoe") == 0 ? 1 : k;
      const char *keys[6] = {"k"};
      double vals[6] = {kk};
      int nset = 1;
      if (nolosses) {
        keys[nset] = "aux";
        vals[nset++] = 0;
        keys[nset] = "z_loss";
        vals[nset++] = 0;
      }
      if (steady) {
        keys[nset] = "warm";
        vals[nset++] = 0;
      }
      if (strcmp(nm, "c2r") == 0) {
        keys[nset] = "Tc";
        vals[nset++] = 2 * k; /* each expert collaborates with 2k others (the default 5 is for small k) */
      }
      if (strcmp(nm, "grouplimited") == 0) {
        keys[nset] = "M";
        vals[nset++] = 4; /* node-limited, 4 of 8 nodes (DeepSeek-V3) */
      }
      carl_router_t *rt;
      if (carl_router_create(nm, nset, keys, vals, &rt) != CARL_OK) {
        printf("| %s | %lld | (not created: %s) | | | | | | |\n", nm, (long long)T, carl_errmsg());
        continue;
      }
      if (strcmp(nm, "c2r") == 0) {
        /* its collaboration table: co-activation counts of the top-k sets of these logits (the
         * profile C2R takes from a trained model), through a counts file */
        int64_t *cnt = calloc((size_t)E * E, sizeof *cnt);
        char path[64];
        snprintf(path, sizeof path, "bench_route_c2r_%d.npy", (int)getpid());
        const int64_t shape[2] = {E, E};
        carl_status cs = cnt ? carl_c2r_count_logits(T, E, k, z, cnt) : CARL_ERR_NOMEM;
        if (cs == CARL_OK) cs = carl_npy_save(path, CARL_I64, 2, shape, cnt);
        if (cs == CARL_OK) cs = carl_router_load(rt, path);
        remove(path);
        free(cnt);
        if (cs != CARL_OK) {
          printf("| %s | %lld | (no table: %s) | | | | | | |\n", nm, (long long)T, carl_errmsg());
          carl_router_free(rt);
          continue;
        }
      }
      carl_route_in_t in = {.T = T, .E = E, .logits = z, .token_ids = ids, .topo = &topo, .seed = 1};
      carl_route_out_t out = {.experts = ex, .weights = w};
      double w0 = carl_now();
      carl_status st = carl_router_route(rt, &in, &out); /* warm-up */
      const int nrep = carl_now() - w0 > 2.0 ? 1 : reps;
      const int do_update = T <= 65536;
      if (st != CARL_OK) {
        printf("| %s | %lld | (failed: %s) | | | | | | |\n", nm, (long long)T, carl_errmsg());
        carl_router_free(rt);
        continue;
      }
      /* each repeat: the route, then two copies, so that both meet the machine in the same state
       * (and the copy not a state the update leaves; the first copy after some routes has been
       * seen several times slower than the second, hence the faster of two); the ratios to the
       * bound are medians of the ratios within a repeat */
      double tu[64], qm[64], qc[64];
      for (int r = 0; r < nrep; r++) {
        in.step = r + 1;
        double c0 = bench_cpu_seconds(), t0 = carl_now();
        carl_router_route(rt, &in, &out);
        double t1 = carl_now();
        tc[r] = bench_cpu_seconds() - c0;
        double tcp = 1e30, ccp = 1e30; /* the faster of two copies: the stricter bound */
        for (int j = 0; j < 2; j++) {
          const double t2 = carl_now(), c = par_copy(dst, z, (size_t)T * E), w = carl_now() - t2;
          tcp = w < tcp ? w : tcp;
          ccp = c < ccp ? c : ccp;
        }
        const double t3 = carl_now();
        if (do_update) carl_router_update(rt, &in, &out);
        tm[r] = t1 - t0;
        tu[r] = tm[r] + (carl_now() - t3);
        qm[r] = tcp / tm[r];
        qc[r] = ccp / tc[r];
      }
      double troute = bench_median(tm, nrep), tboth = bench_median(tu, nrep), croute = bench_median(tc, nrep);
      const double qwall = bench_median(qm, nrep), qcpu = bench_median(qc, nrep);
      int stateful = carl_router_updates(rt);
      char upd[32] = "";
      if (stateful && do_update) snprintf(upd, sizeof upd, "%.2f", tboth * 1e3);
      printf("| %s%s%s%s | %lld | %.2f | %.2f | %.3f | %.2f | %.3f | %.1f | %s |\n", nm, kk != k ? " (k=1)" : "",
             nolosses ? " (aux=0, z_loss=0)" : steady ? " (after warm start, warm=0)" : "", nrep == 1 ? " (1 run)" : "", (long long)T,
             troute * 1e3, T / troute / 1e6, qwall, croute * 1e3, qcpu, cref / croute, upd);
      fflush(stdout);
      carl_router_free(rt);
    }
    free(z);
    free(dst);
    free(ex);
    free(ids);
    free(w);
  }
  return 0;
}
