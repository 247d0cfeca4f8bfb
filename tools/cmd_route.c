/* carl route: not built yet in this version. */
#include <stdio.h>

#include "cli.h"

int carl_cmd_route(int argc, char **argv) {
  (void)argc;
  (void)argv;
  fprintf(stderr, "carl route: not available in this build yet\n");
  return 2;
}
