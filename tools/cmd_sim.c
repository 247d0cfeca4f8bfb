/* carl sim: not built yet in this version. */
#include <stdio.h>

#include "cli.h"

int carl_cmd_sim(int argc, char **argv) {
  (void)argc;
  (void)argv;
  fprintf(stderr, "carl sim: not available in this build yet\n");
  return 2;
}
