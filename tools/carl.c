/* carl: the CARL-MoE command-line tool. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"

static const struct {
  const char *name;
  int (*fn)(int, char **);
  const char *help;
} carl__cmds[] = {
    {"route", carl_cmd_route, "route one batch of router logits and report loads, selectivity and traffic"},
    {"place", carl_cmd_place, "compute an expert placement from routing statistics"},
    {"sim", carl_cmd_sim, "run a simulated routing study (router x topology x scenario x seed)"},
    {"train", carl_cmd_train, "train an MoE transformer on the CPU"},
    {"sample", carl_cmd_sample, "generate text from a checkpoint"},
};
#define CARL_NCMDS (sizeof carl__cmds / sizeof carl__cmds[0])

static void usage(FILE *f) {
  fprintf(f,
          "carl: communication-aware routing, balancing and placement for Mixture-of-Experts\n\n"
          "usage: carl <command> [options]     (carl <command> --help lists every option)\n\n"
          "commands:\n");
  for (size_t i = 0; i < CARL_NCMDS; i++) fprintf(f, "  %-8s %s\n", carl__cmds[i].name, carl__cmds[i].help);
  fprintf(f, "\nenvironment: CARL_LOG=debug|info|warn|error|off (default info), OMP_NUM_THREADS,\n"
             "  CARL_ROUTE_SIMD=0 (routing kernels on the portable variant: the same results on every CPU)\n");
}

int carl_cli_error(const char *cmd, carl_status st) {
  const char *detail = carl_errmsg();
  if (detail && detail[0])
    fprintf(stderr, "carl %s: %s: %s\n", cmd, carl_strerror(st), detail);
  else
    fprintf(stderr, "carl %s: %s\n", cmd, carl_strerror(st));
  return 1;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    usage(stderr);
    return 2;
  }
  if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
    usage(stdout);
    return 0;
  }
  for (size_t i = 0; i < CARL_NCMDS; i++)
    if (!strcmp(argv[1], carl__cmds[i].name)) {
      int rc = carl__cmds[i].fn(argc - 1, argv + 1);
      /* the report on standard output is an output too: a failed write is an error */
      if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "carl %s: cannot write to standard output: %s\n", argv[1], strerror(errno));
        if (rc == 0) rc = 1;
      }
      return rc;
    }
  fprintf(stderr, "carl: unknown command '%s'\n\n", argv[1]);
  usage(stderr);
  return 2;
}
