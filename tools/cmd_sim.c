/* carl sim: run a simulated routing study (router x topology x scenario x seed) and write reports. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "carl/sim.h"
#include "cli.h"

/* Grids of more than this many runs write their reports as they go: at each tenth of the grid the
 * reports of the runs finished so far replace the previous ones in the output directory. */
#define INTERIM_MIN_RUNS 100

static void sim_usage(FILE *f) {
  fprintf(f,
          "usage: carl sim [--config FILE] [--out DIR] [--threads N] [--no-plots] [--replot] [--quiet]\n\n"
          "Runs every router x topology x scenario x seed of the config: a linear gate per layer trained\n"
          "by SGD on a teacher (KL) task plus the router's balancing terms, routed, costed on the topology.\n"
          "With no --config, runs the default study (carl and 5 baselines, 3 scenarios, 2x8 topology)\n"
          "and prints its comparison table.\n\n"
          "  --config FILE  experiment JSON (see docs/sim.md and configs/experiments/)\n"
          "  --out DIR      output directory (default results/<name>): steps.csv, summary.csv,\n"
          "                 summary.md, plots.gp and, with gnuplot installed, *.png\n"
          "  --threads N    runs in parallel (default OMP_NUM_THREADS or all cores); the output does not\n"
          "                 depend on it\n"
          "  --no-plots     do not run gnuplot\n"
          "  --replot       run nothing: rewrite DIR/plots.gp for the config and redraw from DIR/steps.csv\n"
          "  --quiet        no progress bar, no table on stdout\n"
          "  --force        run a grid of more than %d runs (refused without it, as a likely mistake)\n"
          "A grid of more than %d runs rewrites its reports in DIR at each tenth of the grid, over the\n"
          "runs finished so far (summary.md then says \"partial: N of M runs\").\n", CARL_SIM_MAX_RUNS,
          INTERIM_MIN_RUNS);
}

typedef struct {
  double t0;
  int tty;   /* a progress bar on a terminal */
  int lines; /* else (not quiet): a line per tenth of the grid */
  int last;  /* tenths reported */
  /* interim reports (grids of more than INTERIM_MIN_RUNS runs) */
  const carl_sim_config_t *cfg;
  const carl_sim_result_t *res;
  const char *outdir;
  unsigned char *finished; /* [total] 1 once reported */
  int nfinished;           /* runs in the interim reports on disk */
  int write_failed;
} progress_t;

/* The reports of the finished runs (in grid order) into the output directory. */
static void interim_reports(progress_t *p, int done) {
  carl_sim_result_t part = {0, malloc((size_t)done * sizeof *part.runs)};
  if (!part.runs) return;
  for (int i = 0; i < p->res->nrun; i++)
    if (p->finished[i]) part.runs[part.nrun++] = p->res->runs[i];
  if (carl_sim_write_reports(p->cfg, &part, p->outdir) == CARL_OK)
    p->nfinished = part.nrun;
  else if (!p->write_failed) {
    p->write_failed = 1;
    fprintf(stderr, "carl sim: warning: the interim reports could not be written (%s); the run goes on\n",
            carl_errmsg());
  }
  free(part.runs);
}

static void progress(void *ctx, int done, int total, int run) {
  progress_t *p = ctx;
  int tenth = total > 0 ? (int)((long)done * 10 / total) : 0;
  if (p->finished) {
    p->finished[run] = 1;
    if (tenth > p->last && done < total) interim_reports(p, done);
  }
  if (!p->tty) {
    if (p->lines && tenth > p->last)
      fprintf(stderr, "carl sim: %d/%d runs done, %.0f s elapsed%s\n", done, total, carl_now() - p->t0,
              p->finished && done < total && p->nfinished == done ? ", reports of those written" : "");
    p->last = tenth > p->last ? tenth : p->last;
    return;
  }
  p->last = tenth > p->last ? tenth : p->last;
  const int width = 40;
  int fill = (int)((long)done * width / total);
  double el = carl_now() - p->t0, eta = done ? el * (total - done) / done : 0;
  fprintf(stderr, "\r[");
  for (int i = 0; i < width; i++) fputc(i < fill ? '#' : '.', stderr);
  fprintf(stderr, "] %d/%d runs  %.0fs elapsed, ~%.0fs left ", done, total, el, eta);
  if (done == total) fputc('\n', stderr);
  fflush(stderr);
}

/* gnuplot DIR/plots.gp when gnuplot is installed; 1 when the plots were drawn */
static int run_gnuplot(const char *outdir, int quiet) {
  if (system("command -v gnuplot >/dev/null 2>&1") != 0) {
    if (!quiet) fprintf(stderr, "carl sim: gnuplot not found: no PNG plots (run `gnuplot %s/plots.gp` later)\n", outdir);
    return 0;
  }
  char cmd[8300];
  snprintf(cmd, sizeof cmd, "gnuplot '%s/plots.gp' 2>/dev/null", outdir);
  if (strchr(outdir, '\'') || system(cmd) != 0) {
    fprintf(stderr, "carl sim: gnuplot failed on %s/plots.gp (the CSV files are complete)\n", outdir);
    return 0;
  }
  return 1;
}

int carl_cmd_sim(int argc, char **argv) {
  const char *config = NULL, *out = NULL;
  int threads = 0, plots = 1, quiet = 0, replot = 0, force = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      sim_usage(stdout);
      return 0;
    } else if (!strcmp(a, "--config") && i + 1 < argc) {
      config = argv[++i];
    } else if (!strcmp(a, "--out") && i + 1 < argc) {
      out = argv[++i];
    } else if (!strcmp(a, "--threads") && i + 1 < argc) {
      char *end;
      long v = strtol(argv[++i], &end, 10);
      if (end == argv[i] || *end || v < 1 || v > 4096) {
        fprintf(stderr, "carl sim: --threads: '%s' must be an integer from 1 to 4096\n", argv[i]);
        return 2;
      }
      threads = (int)v;
    } else if (!strcmp(a, "--no-plots")) {
      plots = 0;
    } else if (!strcmp(a, "--replot")) {
      replot = 1;
    } else if (!strcmp(a, "--quiet")) {
      quiet = 1;
    } else if (!strcmp(a, "--force")) {
      force = 1;
    } else {
      fprintf(stderr, "carl sim: unknown or incomplete option '%s'\n\n", a);
      sim_usage(stderr);
      return 2;
    }
  }
#ifdef _OPENMP
  if (threads > 0) omp_set_num_threads(threads);
#endif
  carl_sim_config_t cfg;
  carl_status st = config ? carl_sim_config_load(config, &cfg) : carl_sim_config_default(&cfg);
  if (st != CARL_OK) return carl_cli_error("sim", st);
  char outdir[4096];
  if (out)
    snprintf(outdir, sizeof outdir, "%s", out);
  else
    snprintf(outdir, sizeof outdir, "results/%s", cfg.name);
  if (replot) {
    st = carl_sim_replot(&cfg, outdir);
    carl_sim_config_free(&cfg);
    if (st != CARL_OK) return carl_cli_error("sim", st);
    return run_gnuplot(outdir, quiet) ? 0 : 1;
  }
  long long nrun = (long long)cfg.nrouter * cfg.ntopo * cfg.nscen * cfg.nseed;
  if (nrun > CARL_SIM_MAX_RUNS && !force) {
    fprintf(stderr, "carl sim: %s: %d routers x %d topologies x %d scenarios x %d seeds = %lld runs, more than %d: "
            "refused; split the grid or give --force\n",
            config ? config : "default study", cfg.nrouter, cfg.ntopo, cfg.nscen, cfg.nseed, nrun, CARL_SIM_MAX_RUNS);
    carl_sim_config_free(&cfg);
    return 1;
  }
  if (!quiet || nrun > CARL_SIM_MAX_RUNS)
    fprintf(stderr, "carl sim: %s: %d routers x %d topologies x %d scenarios x %d seeds = %lld runs of %lld steps -> %s\n",
            cfg.name, cfg.nrouter, cfg.ntopo, cfg.nscen, cfg.nseed, nrun, (long long)cfg.steps, outdir);
  carl_sim_result_t res = {0};
  progress_t pr = {carl_now(), !quiet && isatty(2), !quiet || nrun > CARL_SIM_MAX_RUNS, 0, &cfg, &res, outdir, NULL, 0, 0};
  if (nrun > INTERIM_MIN_RUNS && !(pr.finished = calloc((size_t)nrun, 1))) {
    carl_sim_config_free(&cfg);
    return carl_cli_error("sim", carl_fail(CARL_ERR_NOMEM, "sim: out of memory"));
  }
  if (pr.finished && !quiet)
    fprintf(stderr, "carl sim: the reports are rewritten in %s at each tenth of the grid, over the runs done so far\n",
            outdir);
  st = carl_sim_run(&cfg, progress, &pr, &res);
  free(pr.finished);
  if (st != CARL_OK) {
    carl_sim_config_free(&cfg);
    int rc = carl_cli_error("sim", st);
    if (pr.nfinished > 0)
      fprintf(stderr, "carl sim: the reports of the %d runs finished before the error are in %s (summary.md says "
              "partial)\n", pr.nfinished, outdir);
    return rc;
  }
  st = carl_sim_write_reports(&cfg, &res, outdir);
  if (st != CARL_OK) {
    carl_sim_result_free(&res);
    carl_sim_config_free(&cfg);
    return carl_cli_error("sim", st);
  }
  if (plots) run_gnuplot(outdir, quiet);
  if (!quiet) {
    char *md = NULL;
    if (carl_sim_table_md(&cfg, &res, &md) == CARL_OK) {
      printf("%s", md);
      free(md);
    }
    fprintf(stderr, "carl sim: wrote %s/{steps.csv,summary.csv,summary.md,plots.dat,plots.gp}%s in %.1f s\n", outdir,
            plots ? " and PNG plots" : "", carl_now() - pr.t0);
  }
  carl_sim_result_free(&res);
  carl_sim_config_free(&cfg);
  return 0;
}
