/* Reports of a study: per-step and summary CSV (fixed formatting: byte-identical for equal
 * results), a Markdown comparison table, and a gnuplot script for the plots over steps. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

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

static void md_num(sbuf_t *b, double v, const char *fmt) {
  if (isnan(v))
    sb_printf(b, " - |");
  else {
    sb_printf(b, " ");
    sb_printf(b, fmt, v);
    sb_printf(b, " |");
  }
}

static void md_tables(sbuf_t *b, const carl_sim_config_t *cfg, const carl_sim_result_t *res) {
  for (int t = 0; t < cfg->ntopo; t++) {
    const carl_topo_t *tp = &cfg->topos[t];
    sb_printf(b, "### %s (%d nodes x %d devices), mean over %d scenario(s) x %d seed(s), steps %lld..%lld\n\n", tp->name,
              tp->nodes, tp->devices_per_node, cfg->nscen, cfg->nseed, (long long)cfg->summary_from,
              (long long)cfg->steps - 1);
    sb_printf(b, "| router | inter MB/step | intra MB/step | a2a ms/step | +migration ms | skew E | skew dev | skew node "
                 "| drop %% | retained | Jaccard | task KL |\n");
    sb_printf(b, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (int r = 0; r < cfg->nrouter; r++) {
      sb_printf(b, "| %s |", cfg->routers[r].label);
      md_num(b, mean_of(cfg, res, r, t, 0, cfg->nscen, CARL_SIM_BYTES_INTER) / 1e6, "%.3f");
      md_num(b, mean_of(cfg, res, r, t, 0, cfg->nscen, CARL_SIM_BYTES_INTRA) / 1e6, "%.3f");
      md_num(b, mean_of(cfg, res, r, t, 0, cfg->nscen, CARL_SIM_A2A_MS), "%.4f");
      md_num(b, mean_of(cfg, res, r, t, 0, cfg->nscen, CARL_SIM_MIGRATE_MS), "%.4f");
      md_num(b, mean_of(cfg, res, r, t, 0, cfg->nscen, CARL_SIM_SKEW_EXPERT), "%.3f");
      md_num(b, mean_of(cfg, res, r, t, 0, cfg->nscen, CARL_SIM_SKEW_DEVICE), "%.3f");
      md_num(b, mean_of(cfg, res, r, t, 0, cfg->nscen, CARL_SIM_SKEW_NODE), "%.3f");
      md_num(b, 100 * mean_of(cfg, res, r, t, 0, cfg->nscen, CARL_SIM_DROP_RATE), "%.2f");
      md_num(b, mean_of(cfg, res, r, t, 0, cfg->nscen, CARL_SIM_RETAINED), "%.4f");
      md_num(b, mean_of(cfg, res, r, t, 0, cfg->nscen, CARL_SIM_JACCARD), "%.4f");
      md_num(b, mean_of(cfg, res, r, t, 0, cfg->nscen, CARL_SIM_TASK_KL), "%.4f");
      sb_printf(b, "\n");
    }
    sb_printf(b, "\n");
  }
}

static void md_per_scenario(sbuf_t *b, const carl_sim_config_t *cfg, const carl_sim_result_t *res) {
  static const struct {
    int col;
    const char *title, *fmt;
  } tabs[] = {{CARL_SIM_COMM_MS, "communication ms/step (all-to-all + migration)", "%.4f"},
              {CARL_SIM_SKEW_EXPERT, "expert load max/mean", "%.3f"},
              {CARL_SIM_SKEW_DEVICE, "device load max/mean", "%.3f"},
              {CARL_SIM_RETAINED, "retained mass", "%.4f"}};
  for (int t = 0; t < cfg->ntopo; t++)
    for (size_t q = 0; q < sizeof tabs / sizeof tabs[0]; q++) {
      sb_printf(b, "#### %s: %s, per scenario (mean over seeds)\n\n| router |", cfg->topos[t].name, tabs[q].title);
      for (int s = 0; s < cfg->nscen; s++) sb_printf(b, " %s |", cfg->scens[s].label);
      sb_printf(b, "\n|---|");
      for (int s = 0; s < cfg->nscen; s++) sb_printf(b, "---:|");
      sb_printf(b, "\n");
      for (int r = 0; r < cfg->nrouter; r++) {
        sb_printf(b, "| %s |", cfg->routers[r].label);
        for (int s = 0; s < cfg->nscen; s++) md_num(b, mean_of(cfg, res, r, t, s, s + 1, tabs[q].col), tabs[q].fmt);
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

static carl_status mkdirs(const char *dir) {
  char tmp[4096];
  snprintf(tmp, sizeof tmp, "%s", dir);
  for (char *p = tmp + 1; *p; p++)
    if (*p == '/') {
      *p = 0;
      if (mkdir(tmp, 0755) != 0 && errno != EEXIST) return carl_fail(CARL_ERR_IO, "%s: cannot create (%s)", tmp, strerror(errno));
      *p = '/';
    }
  if (mkdir(tmp, 0755) != 0 && errno != EEXIST) return carl_fail(CARL_ERR_IO, "%s: cannot create (%s)", tmp, strerror(errno));
  return CARL_OK;
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
  sb_printf(b, "set datafile separator ','\nset terminal pngcairo size 1500,1100 font ',9' noenhanced\n");
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
          sb_printf(b,
                    "%s'%s/steps.csv' every ::1 using (strcol(1) eq '%s' && strcol(2) eq '%s' && strcol(3) eq '%s' && $4 == "
                    "%llu ? $5 : NaN):(column(%d) * %g) with lines lc rgb '%s' dt %d lw %s title '%s'",
                    r ? ", " : "", dir, cfg->routers[r].label, cfg->topos[t].name, cfg->scens[s].label,
                    (unsigned long long)cfg->seeds[0], 6 + panels[q].col, panels[q].scale, colors[r % 12],
                    1 + (r / 12) % 4, r == 0 ? "2.5" : "1.2", cfg->routers[r].label);
        sb_printf(b, "\n");
      }
      sb_printf(b, "unset multiplot\n");
    }
}

carl_status carl_sim_write_reports(const carl_sim_config_t *cfg, const carl_sim_result_t *res, const char *dir) {
  CARL_TRY(mkdirs(dir));
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
  CARL_TRY(sb_write(&b, dir, "steps.csv"));
  csv_header(&b, 0);
  for (int i = 0; i < res->nrun; i++) {
    const carl_sim_run_t *ru = &res->runs[i];
    sb_printf(&b, "%s,%s,%s,%llu", cfg->routers[ru->router].label, cfg->topos[ru->topo].name, cfg->scens[ru->scen].label,
              (unsigned long long)cfg->seeds[ru->seed]);
    for (int c = 0; c < CARL_SIM_NCOL; c++) csv_val(&b, ru->summary[c]);
    sb_printf(&b, "\n");
  }
  CARL_TRY(sb_write(&b, dir, "summary.csv"));
  sb_printf(&b, "## Study `%s`: %lld steps x %lld tokens x %d layer(s), E = %d, d = %d, %s plan\n\n", cfg->name,
            (long long)cfg->steps, (long long)cfg->tokens, cfg->layers, cfg->E, cfg->d,
            cfg->plan_mode == CARL_PLAN_HIER ? "hierarchical" : "flat");
  md_tables(&b, cfg, res);
  md_per_scenario(&b, cfg, res);
  CARL_TRY(sb_write(&b, dir, "summary.md"));
  gp_script(&b, cfg, dir);
  CARL_TRY(sb_write(&b, dir, "plots.gp"));
  return CARL_OK;
}

carl_status carl_sim_write_plot_script(const carl_sim_config_t *cfg, const char *dir) {
  CARL_TRY(mkdirs(dir));
  sbuf_t b = {0};
  gp_script(&b, cfg, dir);
  return sb_write(&b, dir, "plots.gp");
}
