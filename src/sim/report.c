/* Reports of a study: per-step and summary CSV (fixed formatting: byte-identical for equal
 * results), a Markdown comparison table, and a gnuplot script for the plots over steps. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "carl/fs.h"
#include "carl/sim.h"

typedef struct {
  char *p;
  size_t n, cap;
  int oom;
} sbuf_t;

static void sb_printf(sbuf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf_t *b, const char *fmt, ...) {
  if (b->oom) return;
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    size_t room = b->cap - b->n;
    int w = vsnprintf(b->p ? b->p + b->n : NULL, b->p ? room : 0, fmt, ap);
    va_end(ap);
    if (w < 0) {
      b->oom = 1;
      return;
    }
    if ((size_t)w < room) {
      b->n += (size_t)w;
      return;
    }
    size_t nc = b->cap ? b->cap * 2 : 65536;
    while (nc - b->n <= (size_t)w) nc *= 2;
    char *np = realloc(b->p, nc);
    if (!np) {
      b->oom = 1;
      return;
    }
    b->p = np;
    b->cap = nc;
  }
}

static carl_status sb_write(sbuf_t *b, const char *dir, const char *name) {
  if (b->oom) {
    free(b->p);
    return carl_fail(CARL_ERR_NOMEM, "report %s: out of memory", name);
  }
  char path[4096];
  if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, name) >= sizeof path) {
    free(b->p);
    memset(b, 0, sizeof *b);
    return carl_fail(CARL_ERR_INVALID, "%s: path too long", dir);
  }
  carl_status st = carl_write_file_atomic(path, b->p ? b->p : "", b->n);
  free(b->p);
  memset(b, 0, sizeof *b);
  return st;
}

/* values in CSV: 9 significant digits, C locale, "nan" for missing */
static void csv_val(sbuf_t *b, double v) {
  if (isnan(v))
    sb_printf(b, ",nan");
  else
    sb_printf(b, ",%.9g", v);
}

static void csv_header(sbuf_t *b, int with_step) {
  sb_printf(b, "router,topology,scenario,seed%s", with_step ? ",step" : "");
  for (int c = 0; c < CARL_SIM_NCOL; c++) sb_printf(b, ",%s", carl_sim_col_names[c]);
  sb_printf(b, "\n");
}

/* mean of column c of the summaries of router r, topology t, over scenarios in [s0, s1) and all seeds */
static double mean_of(const carl_sim_config_t *cfg, const carl_sim_result_t *res, int r, int t, int s0, int s1, int c) {
  double s = 0;
  int n = 0;
  for (int i = 0; i < res->nrun; i++) {
    const carl_sim_run_t *ru = &res->runs[i];
    if (ru->router == r && ru->topo == t && ru->scen >= s0 && ru->scen < s1) {
      s += ru->summary[c];
      n++;
    }
  }
  (void)cfg;
  return n ? s / n : NAN;
}

/* Half-width of the 95% interval of column c of router r on topology t over the seeds (the sample:
 * one value per seed, the mean over scenarios [s0, s1) of that seed's runs); NaN for one seed. The
 * mean itself is mean_of (equal to the mean of the per-seed values: every seed has every scenario). */
static double half_of(const carl_sim_config_t *cfg, const carl_sim_result_t *res, int r, int t, int s0, int s1, int c) {
  if (cfg->nseed < 2) return NAN;
  double *x = calloc((size_t)cfg->nseed, sizeof *x);
  int *cnt = calloc((size_t)cfg->nseed, sizeof *cnt);
  double h = NAN;
  if (x && cnt) {
    for (int i = 0; i < res->nrun; i++) {
      const carl_sim_run_t *ru = &res->runs[i];
      if (ru->router == r && ru->topo == t && ru->scen >= s0 && ru->scen < s1 && ru->seed >= 0 && ru->seed < cfg->nseed) {
        x[ru->seed] += ru->summary[c];
        cnt[ru->seed]++;
      }
    }
    int n = 0;
    for (int i = 0; i < cfg->nseed; i++)
      if (cnt[i]) x[n++] = x[i] / cnt[i];
    carl_sim_ci95(x, n, NULL, &h);
  }
  free(x);
  free(cnt);
  return h;
}

static void md_num(sbuf_t *b, double v, const char *fmt) {
  if (isnan(v))
    sb_printf(b, " - |");
  else {
    sb_printf(b, " ");
    sb_printf(b, fmt, v);
    sb_printf(b, " |");
  }
}

/* "mean ± half" (the 95% interval over seeds), or the mean alone with one seed */
static void md_ci(sbuf_t *b, double v, double h, const char *fmt) {
  if (isnan(v) || isnan(h)) {
    md_num(b, v, fmt);
    return;
  }
  sb_printf(b, " ");
  sb_printf(b, fmt, v);
  sb_printf(b, " ± ");
  sb_printf(b, fmt, h);
  sb_printf(b, " |");
}

/* mean and interval of column c of router r on topology t over scenarios [s0, s1), times mul / div */
static void md_stat(sbuf_t *b, const carl_sim_config_t *cfg, const carl_sim_result_t *res, int r, int t, int s0, int s1,
                    int c, double mul, double div, const char *fmt) {
  md_ci(b, mul * mean_of(cfg, res, r, t, s0, s1, c) / div, mul * half_of(cfg, res, r, t, s0, s1, c) / div, fmt);
}

/* The figure routers are ranked on: step time when it is modelled, else the all-to-all time. */
static int rank_col(const carl_sim_config_t *cfg) { return cfg->step_time ? CARL_SIM_STEP_MS : CARL_SIM_A2A_MS; }

/* Router r against the best other router (lowest mean of rank_col) on topology t: the verdict
 * (carl_sim_compare) and the other router's index (-1 with one router). */
static int versus_best(const carl_sim_config_t *cfg, const carl_sim_result_t *res, int r, int t, int *other) {
  const int c = rank_col(cfg);
  int best = -1;
  double bm = NAN;
  for (int q = 0; q < cfg->nrouter; q++) {
    if (q == r) continue;
    double m = mean_of(cfg, res, q, t, 0, cfg->nscen, c);
    if (!isnan(m) && (best < 0 || m < bm)) {
      best = q;
      bm = m;
    }
  }
  *other = best;
  if (best < 0) return CARL_SIM_UNDECIDED;
  return carl_sim_compare(mean_of(cfg, res, r, t, 0, cfg->nscen, c), half_of(cfg, res, r, t, 0, cfg->nscen, c), bm,
                          half_of(cfg, res, best, t, 0, cfg->nscen, c));
}

static const char *verdict_name(int v) {
  return v == CARL_SIM_WIN ? "win" : v == CARL_SIM_LOSS ? "loss" : v == CARL_SIM_OVERLAP ? "overlap" : "undecided";
}

/* Step time per router on topology t (docs/cost-model.md "Step time"): the MoE layers' time and its
 * parts, and the migration charged to its refresh step, which the mean over steps amortises over
 * the refresh interval. */
static void md_steptime(sbuf_t *b, const carl_sim_config_t *cfg, const carl_sim_result_t *res, int t) {
  const carl_steptime_opts_t *o = &cfg->steptime;
  sb_printf(b, "#### %s: step time of the %d MoE layer(s), ms per step (d %lld, f %lld, shared f %lld, %s, overlap %s",
            cfg->topos[t].name, cfg->layers, (long long)o->d, (long long)o->f, (long long)o->f_shared,
            o->backward ? "forward + backward" : "forward only", o->overlap == CARL_OVERLAP_PIPELINE ? "pipelined" : "none");
  if (o->overlap == CARL_OVERLAP_PIPELINE) sb_printf(b, " in %d chunks", o->chunks);
  sb_printf(b, "; %s at %.0f TFLOPS)\n\n", cfg->topos[t].device[0] ? cfg->topos[t].device : "device",
            cfg->topos[t].flops / 1e12);
  sb_printf(b, "| router | step | MoE layers | compute (slowest device) | compute (device mean) | straggler | exposed "
               "comm | migration (amortised) |\n");
  sb_printf(b, "|---|---:|---:|---:|---:|---:|---:|---:|\n");
  for (int r = 0; r < cfg->nrouter; r++) {
    double moe = mean_of(cfg, res, r, t, 0, cfg->nscen, CARL_SIM_MOE_MS);
    double cmax = mean_of(cfg, res, r, t, 0, cfg->nscen, CARL_SIM_COMPUTE_MS);
    double cmean = mean_of(cfg, res, r, t, 0, cfg->nscen, CARL_SIM_COMPUTE_MEAN_MS);
    sb_printf(b, "| %s |", cfg->routers[r].label);
    md_stat(b, cfg, res, r, t, 0, cfg->nscen, CARL_SIM_STEP_MS, 1, 1, "%.4f");
    md_stat(b, cfg, res, r, t, 0, cfg->nscen, CARL_SIM_MOE_MS, 1, 1, "%.4f");
    md_stat(b, cfg, res, r, t, 0, cfg->nscen, CARL_SIM_COMPUTE_MS, 1, 1, "%.4f");
    md_stat(b, cfg, res, r, t, 0, cfg->nscen, CARL_SIM_COMPUTE_MEAN_MS, 1, 1, "%.4f");
    md_num(b, cmax - cmean, "%.4f");
    md_num(b, moe - cmax, "%.4f");
    md_stat(b, cfg, res, r, t, 0, cfg->nscen, CARL_SIM_MIGRATE_MS, 1, 1, "%.4f");
    sb_printf(b, "\n");
  }
  sb_printf(b, "\n");
}

static void md_tables(sbuf_t *b, const carl_sim_config_t *cfg, const carl_sim_result_t *res) {
  for (int t = 0; t < cfg->ntopo; t++) {
    const carl_topo_t *tp = &cfg->topos[t];
    sb_printf(b, "### %s (%d nodes x %d devices), mean over %d scenario(s) x %d seed(s)%s, steps %lld..%lld\n\n",
              tp->name, tp->nodes, tp->devices_per_node, cfg->nscen, cfg->nseed,
              cfg->nseed > 1 ? " ± 95% interval over seeds (t, n-1 dof)" : "", (long long)cfg->summary_from,
              (long long)cfg->steps - 1);
    const int ci = cfg->nseed > 1;
    sb_printf(b, "| router | inter MB/step | intra MB/step | a2a ms/step | +migration ms | skew E | skew dev | skew node "
                 "| drop %% | retained | Jaccard | task KL |");
    if (ci) sb_printf(b, " vs best other on %s |", cfg->step_time ? "step ms" : "a2a ms");
    sb_printf(b, "\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|%s\n", ci ? "---|" : "");
    for (int r = 0; r < cfg->nrouter; r++) {
      const int n = cfg->nscen;
      sb_printf(b, "| %s |", cfg->routers[r].label);
      md_stat(b, cfg, res, r, t, 0, n, CARL_SIM_BYTES_INTER, 1, 1e6, "%.3f");
      md_stat(b, cfg, res, r, t, 0, n, CARL_SIM_BYTES_INTRA, 1, 1e6, "%.3f");
      md_stat(b, cfg, res, r, t, 0, n, CARL_SIM_A2A_MS, 1, 1, "%.4f");
      md_stat(b, cfg, res, r, t, 0, n, CARL_SIM_MIGRATE_MS, 1, 1, "%.4f");
      md_stat(b, cfg, res, r, t, 0, n, CARL_SIM_SKEW_EXPERT, 1, 1, "%.3f");
      md_stat(b, cfg, res, r, t, 0, n, CARL_SIM_SKEW_DEVICE, 1, 1, "%.3f");
      md_stat(b, cfg, res, r, t, 0, n, CARL_SIM_SKEW_NODE, 1, 1, "%.3f");
      md_stat(b, cfg, res, r, t, 0, n, CARL_SIM_DROP_RATE, 100, 1, "%.2f");
      md_stat(b, cfg, res, r, t, 0, n, CARL_SIM_RETAINED, 1, 1, "%.4f");
      md_stat(b, cfg, res, r, t, 0, n, CARL_SIM_JACCARD, 1, 1, "%.4f");
      md_stat(b, cfg, res, r, t, 0, n, CARL_SIM_TASK_KL, 1, 1, "%.4f");
      if (ci) {
        int other;
        int v = versus_best(cfg, res, r, t, &other);
        sb_printf(b, " %s%s%s |", verdict_name(v), other >= 0 ? (v == CARL_SIM_OVERLAP ? " with " : " vs ") : "",
                  other >= 0 ? cfg->routers[other].label : "");
      }
      sb_printf(b, "\n");
    }
    sb_printf(b, "\n");
    if (cfg->step_time) md_steptime(b, cfg, res, t);
  }
}

static void md_per_scenario(sbuf_t *b, const carl_sim_config_t *cfg, const carl_sim_result_t *res) {
  static const struct {
    int col;
    const char *title, *fmt;
  } tabs[] = {{CARL_SIM_STEP_MS, "step time ms/step (MoE layers + migration)", "%.4f"},
              {CARL_SIM_COMM_MS, "communication ms/step (all-to-all + migration)", "%.4f"},
              {CARL_SIM_SKEW_EXPERT, "expert load max/mean", "%.3f"},
              {CARL_SIM_SKEW_DEVICE, "device load max/mean", "%.3f"},
              {CARL_SIM_RETAINED, "retained mass", "%.4f"}};
  for (int t = 0; t < cfg->ntopo; t++)
    for (size_t q = 0; q < sizeof tabs / sizeof tabs[0]; q++) {
      if (tabs[q].col == CARL_SIM_STEP_MS && !cfg->step_time) continue;
      sb_printf(b, "#### %s: %s, per scenario (mean over seeds%s)\n\n| router |", cfg->topos[t].name, tabs[q].title,
                cfg->nseed > 1 ? " ± 95% interval" : "");
      for (int s = 0; s < cfg->nscen; s++) sb_printf(b, " %s |", cfg->scens[s].label);
      sb_printf(b, "\n|---|");
      for (int s = 0; s < cfg->nscen; s++) sb_printf(b, "---:|");
      sb_printf(b, "\n");
      for (int r = 0; r < cfg->nrouter; r++) {
        sb_printf(b, "| %s |", cfg->routers[r].label);
        for (int s = 0; s < cfg->nscen; s++) md_stat(b, cfg, res, r, t, s, s + 1, tabs[q].col, 1, 1, tabs[q].fmt);
        sb_printf(b, "\n");
      }
      sb_printf(b, "\n");
    }
}

carl_status carl_sim_table_md(const carl_sim_config_t *cfg, const carl_sim_result_t *res, char **out) {
  sbuf_t b = {0};
  md_tables(&b, cfg, res);
  if (b.oom) {
    free(b.p);
    return carl_fail(CARL_ERR_NOMEM, "report: out of memory");
  }
  *out = b.p ? b.p : calloc(1, 1);
  return *out ? CARL_OK : carl_fail(CARL_ERR_NOMEM, "report: out of memory");
}

static void gp_script(sbuf_t *b, const carl_sim_config_t *cfg, const char *dir) {
  static const struct {
    int col;
    const char *title;
    double scale;
  } panels[] = {{CARL_SIM_BYTES_INTER, "inter-node MB / step", 1e-6}, {CARL_SIM_BYTES_INTRA, "intra-node MB / step", 1e-6},
                {CARL_SIM_A2A_MS, "all-to-all ms / step", 1},      {CARL_SIM_SKEW_EXPERT, "expert load max/mean", 1},
                {CARL_SIM_SKEW_DEVICE, "device load max/mean", 1},  {CARL_SIM_SKEW_NODE, "node load max/mean", 1},
                {CARL_SIM_RETAINED, "retained mass", 1},            {CARL_SIM_JACCARD, "Jaccard with top-k", 1},
                {CARL_SIM_DROP_RATE, "drop rate", 1}};
  /* the first router (the method under study) black and thick, the others from a 12-colour palette */
  static const char *const colors[12] = {"#000000", "#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4",
                                         "#42d4f4", "#f032e6", "#9a6324", "#808000", "#469990", "#a9a9a9"};
  sb_printf(b, "# gnuplot script written by carl sim: gnuplot %s/plots.gp\n", dir);
  sb_printf(b, "set terminal pngcairo size 1500,1100 font ',9' noenhanced\n");
  sb_printf(b, "set key outside right top vertical\nset grid\nset xlabel 'step'\n");
  for (int t = 0; t < cfg->ntopo; t++)
    for (int s = 0; s < cfg->nscen; s++) {
      sb_printf(b, "set output '%s/steps_%s_%s.png'\n", dir, cfg->topos[t].name, cfg->scens[s].label);
      sb_printf(b, "set multiplot layout 3,3 title '%s: %s on %s (seed %llu)'\n", cfg->name, cfg->scens[s].label,
                cfg->topos[t].name, (unsigned long long)cfg->seeds[0]);
      for (size_t q = 0; q < sizeof panels / sizeof panels[0]; q++) {
        sb_printf(b, "set title '%s'\n", panels[q].title);
        if (q == 0)
          sb_printf(b, "set key on\n");
        else
          sb_printf(b, "set key off\n");
        sb_printf(b, "plot ");
        for (int r = 0; r < cfg->nrouter; r++)
          sb_printf(b, "%s'%s/plots.dat' index %d using 1:(column(%d) * %g) with lines lc rgb '%s' dt %d lw %s title '%s'",
                    r ? ", " : "", dir, (t * cfg->nscen + s) * cfg->nrouter + r, 2 + panels[q].col, panels[q].scale,
                    colors[r % 12], 1 + (r / 12) % 4, r == 0 ? "2.5" : "1.2", cfg->routers[r].label);
        sb_printf(b, "\n");
      }
      sb_printf(b, "unset multiplot\n");
    }
}

/* dir/plots.dat: one gnuplot data block per (topology, scenario, router) of the first seed, in that
 * order, rows as in steps.csv: "step value..." */
static void gp_data(sbuf_t *b, const carl_sim_config_t *cfg, const carl_sim_result_t *res) {
  for (int t = 0; t < cfg->ntopo; t++)
    for (int s = 0; s < cfg->nscen; s++)
      for (int r = 0; r < cfg->nrouter; r++) {
        sb_printf(b, "# %s %s %s seed %llu\n", cfg->routers[r].label, cfg->topos[t].name, cfg->scens[s].label,
                  (unsigned long long)cfg->seeds[0]);
        for (int i = 0; i < res->nrun; i++) {
          const carl_sim_run_t *ru = &res->runs[i];
          if (ru->router != r || ru->topo != t || ru->scen != s || ru->seed != 0 || !ru->rows) continue;
          for (int64_t step = 0; step < ru->nrow; step++) {
            if (step % cfg->csv_every != 0 && step != ru->nrow - 1) continue;
            sb_printf(b, "%lld", (long long)step);
            for (int c = 0; c < CARL_SIM_NCOL; c++) sb_printf(b, " %.9g", ru->rows[(size_t)step * CARL_SIM_NCOL + c]);
            sb_printf(b, "\n");
          }
        }
        sb_printf(b, "\n\n");
      }
}

static carl_status write_reports(const carl_sim_config_t *cfg, const carl_sim_result_t *res, const char *dir,
                                 const char *work);

/* summary_ci.csv: per router, topology and scenario ("all": the mean over scenarios) the number of
 * seeds, then each column's mean and the half-width of its 95% interval over seeds (nan with one
 * seed), then on the "all" rows the figure routers are ranked on and the verdict against the best
 * other router on it (carl_sim_compare). */
static void summary_ci_csv(sbuf_t *b, const carl_sim_config_t *cfg, const carl_sim_result_t *res) {
  sb_printf(b, "router,topology,scenario,seeds");
  for (int c = 0; c < CARL_SIM_NCOL; c++) sb_printf(b, ",%s,%s_ci95", carl_sim_col_names[c], carl_sim_col_names[c]);
  sb_printf(b, ",ranked_on,best_other,verdict\n");
  for (int t = 0; t < cfg->ntopo; t++)
    for (int r = 0; r < cfg->nrouter; r++)
      for (int s = -1; s < cfg->nscen; s++) {
        const int s0 = s < 0 ? 0 : s, s1 = s < 0 ? cfg->nscen : s + 1;
        sb_printf(b, "%s,%s,%s,%d", cfg->routers[r].label, cfg->topos[t].name, s < 0 ? "all" : cfg->scens[s].label,
                  cfg->nseed);
        for (int c = 0; c < CARL_SIM_NCOL; c++) {
          csv_val(b, mean_of(cfg, res, r, t, s0, s1, c));
          csv_val(b, half_of(cfg, res, r, t, s0, s1, c));
        }
        if (s < 0) {
          int other;
          int v = versus_best(cfg, res, r, t, &other);
          sb_printf(b, ",%s,%s,%s\n", carl_sim_col_names[rank_col(cfg)], other >= 0 ? cfg->routers[other].label : "",
                    verdict_name(v));
        } else
          sb_printf(b, ",,,\n");
      }
}

/* The end of a set of reports written into the work directory `work` inside dir: moved in together
 * on success, removed on failure (its errors then name dir). */
static carl_status reports_done(carl_status st, const char *work, const char *dir) {
  if (st != CARL_OK) {
    carl_fs_errmsg_replace(st, work, dir);
    carl_fs_remove_tree(work);
    return st;
  }
  return carl_fs_work_commit(work, dir);
}

carl_status carl_sim_write_reports(const carl_sim_config_t *cfg, const carl_sim_result_t *res, const char *dir) {
  char work[CARL_FS_PATH_MAX];
  CARL_TRY(carl_fs_work_begin(dir, work, sizeof work));
  return reports_done(write_reports(cfg, res, dir, work), work, dir);
}

/* steps.csv, summary.csv, summary_ci.csv, summary.md, plots.dat and plots.gp into work (plots.gp names dir). */
static carl_status write_reports(const carl_sim_config_t *cfg, const carl_sim_result_t *res, const char *dir,
                                 const char *work) {
  sbuf_t b = {0};
  csv_header(&b, 1);
  for (int i = 0; i < res->nrun; i++) {
    const carl_sim_run_t *ru = &res->runs[i];
    for (int64_t step = 0; step < ru->nrow; step++) {
      if (step % cfg->csv_every != 0 && step != ru->nrow - 1) continue;
      sb_printf(&b, "%s,%s,%s,%llu,%lld", cfg->routers[ru->router].label, cfg->topos[ru->topo].name,
                cfg->scens[ru->scen].label, (unsigned long long)cfg->seeds[ru->seed], (long long)step);
      for (int c = 0; c < CARL_SIM_NCOL; c++) csv_val(&b, ru->rows[(size_t)step * CARL_SIM_NCOL + c]);
      sb_printf(&b, "\n");
    }
  }
  CARL_TRY(sb_write(&b, work, "steps.csv"));
  csv_header(&b, 0);
  for (int i = 0; i < res->nrun; i++) {
    const carl_sim_run_t *ru = &res->runs[i];
    sb_printf(&b, "%s,%s,%s,%llu", cfg->routers[ru->router].label, cfg->topos[ru->topo].name, cfg->scens[ru->scen].label,
              (unsigned long long)cfg->seeds[ru->seed]);
    for (int c = 0; c < CARL_SIM_NCOL; c++) csv_val(&b, ru->summary[c]);
    sb_printf(&b, "\n");
  }
  CARL_TRY(sb_write(&b, work, "summary.csv"));
  summary_ci_csv(&b, cfg, res);
  CARL_TRY(sb_write(&b, work, "summary_ci.csv"));
  if (cfg->tokens_per_device > 0)
    sb_printf(&b, "## Study `%s`: %lld steps x %lld tokens per device x %d layer(s), E = %d, d = %d, %s plan\n\n",
              cfg->name, (long long)cfg->steps, (long long)cfg->tokens_per_device, cfg->layers, cfg->E, cfg->d,
              cfg->plan_mode == CARL_PLAN_HIER ? "hierarchical" : "flat");
  else
    sb_printf(&b, "## Study `%s`: %lld steps x %lld tokens x %d layer(s), E = %d, d = %d, %s plan\n\n", cfg->name,
              (long long)cfg->steps, (long long)cfg->tokens, cfg->layers, cfg->E, cfg->d,
              cfg->plan_mode == CARL_PLAN_HIER ? "hierarchical" : "flat");
  const long long grid = (long long)cfg->nrouter * cfg->ntopo * cfg->nscen * cfg->nseed;
  if (res->nrun < grid)
    sb_printf(&b, "**partial: %d of %lld runs** finished when this was written; the figures are over those runs.\n\n",
              res->nrun, grid);
  md_tables(&b, cfg, res);
  md_per_scenario(&b, cfg, res);
  CARL_TRY(sb_write(&b, work, "summary.md"));
  gp_data(&b, cfg, res);
  CARL_TRY(sb_write(&b, work, "plots.dat"));
  gp_script(&b, cfg, dir);
  CARL_TRY(sb_write(&b, work, "plots.gp"));
  return CARL_OK;
}

static int find_label(const char *f, size_t n, int count, const char *(*get)(const carl_sim_config_t *, int),
                      const carl_sim_config_t *cfg) {
  for (int i = 0; i < count; i++) {
    const char *l = get(cfg, i);
    if (strlen(l) == n && !strncmp(l, f, n)) return i;
  }
  return -1;
}
static const char *router_label(const carl_sim_config_t *c, int i) { return c->routers[i].label; }
static const char *topo_label(const carl_sim_config_t *c, int i) { return c->topos[i].name; }
static const char *scen_label(const carl_sim_config_t *c, int i) { return c->scens[i].label; }

carl_status carl_sim_replot(const carl_sim_config_t *cfg, const char *dir) {
  char path[4096];
  if ((size_t)snprintf(path, sizeof path, "%s/steps.csv", dir) >= sizeof path)
    return carl_fail(CARL_ERR_INVALID, "%s: path too long", dir);
  char *txt = NULL;
  size_t len = 0;
  CARL_TRY(carl_read_file(path, &txt, &len));
  carl_sim_result_t res = {0};
  const int n = cfg->nrouter * cfg->ntopo * cfg->nscen;
  res.runs = calloc((size_t)n, sizeof *res.runs);
  carl_status st = res.runs ? CARL_OK : carl_fail(CARL_ERR_NOMEM, "replot: out of memory");
  res.nrun = res.runs ? n : 0;
  for (int i = 0; i < res.nrun && st == CARL_OK; i++) {
    carl_sim_run_t *ru = &res.runs[i];
    ru->router = i % cfg->nrouter;
    ru->scen = (i / cfg->nrouter) % cfg->nscen;
    ru->topo = i / (cfg->nrouter * cfg->nscen);
    ru->nrow = cfg->steps;
    ru->rows = malloc((size_t)cfg->steps * CARL_SIM_NCOL * sizeof(double));
    if (!ru->rows) st = carl_fail(CARL_ERR_NOMEM, "replot: out of memory");
    for (int64_t j = 0; ru->rows && j < cfg->steps * CARL_SIM_NCOL; j++) ru->rows[j] = NAN;
  }
  /* rows: router,topology,scenario,seed,step,values... (the header and other seeds are skipped) */
  int64_t line = 0;
  for (char *p = txt; st == CARL_OK && p && *p; line++) {
    char *end = strchr(p, '\n');
    if (end) *end = '\0';
    if (line > 0 && *p) {
      const char *f[3];
      size_t fl[3];
      char *q = p;
      for (int k = 0; k < 3; k++) {
        f[k] = q;
        char *c = strchr(q, ',');
        fl[k] = c ? (size_t)(c - q) : strlen(q);
        q = c ? c + 1 : q + strlen(q);
      }
      int r = find_label(f[0], fl[0], cfg->nrouter, router_label, cfg);
      int t = find_label(f[1], fl[1], cfg->ntopo, topo_label, cfg);
      int sc = find_label(f[2], fl[2], cfg->nscen, scen_label, cfg);
      char *e2;
      unsigned long long seed = strtoull(q, &e2, 10);
      long long step = *e2 == ',' ? strtoll(e2 + 1, &e2, 10) : -1;
      if (r < 0 || t < 0 || sc < 0 || step < 0 || step >= cfg->steps || *e2 != ',') {
        st = carl_fail(CARL_ERR_PARSE, "%s: line %lld does not belong to this config", path, (long long)line + 1);
        break;
      }
      if (seed == cfg->seeds[0]) {
        double *row = res.runs[(t * cfg->nscen + sc) * cfg->nrouter + r].rows + (size_t)step * CARL_SIM_NCOL;
        for (int c = 0; c < CARL_SIM_NCOL && *e2 == ','; c++) row[c] = strtod(e2 + 1, &e2);
      }
    }
    p = end ? end + 1 : NULL;
  }
  free(txt);
  char work[CARL_FS_PATH_MAX];
  if (st == CARL_OK) st = carl_fs_work_begin(dir, work, sizeof work);
  if (st == CARL_OK) {
    sbuf_t b = {0};
    gp_data(&b, cfg, &res);
    st = sb_write(&b, work, "plots.dat");
    if (st == CARL_OK) {
      gp_script(&b, cfg, dir);
      st = sb_write(&b, work, "plots.gp");
    }
    st = reports_done(st, work, dir);
  }
  carl_sim_result_free(&res);
  return st;
}
