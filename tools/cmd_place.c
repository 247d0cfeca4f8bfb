/* carl place: not built yet in this version. */
#include <stdio.h>

#include "cli.h"

int carl_cmd_place(int argc, char **argv) {
  (void)argc;
  (void)argv;
  fprintf(stderr, "carl place: not available in this build yet\n");
  return 2;
}
