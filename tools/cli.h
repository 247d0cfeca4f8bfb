/* tools/cli.h: shared pieces of the command-line tool. Only tools/ prints and exits. */
#ifndef CARL_TOOLS_CLI_H
#define CARL_TOOLS_CLI_H

#include "carl/core.h"

/* Each subcommand: argc/argv start at the subcommand name; returns the process exit code. */
int carl_cmd_route(int argc, char **argv);
int carl_cmd_place(int argc, char **argv);
int carl_cmd_sim(int argc, char **argv);
int carl_cmd_train(int argc, char **argv);
int carl_cmd_sample(int argc, char **argv);

/* Print "carl <cmd>: <strerror>: <detail>" to stderr and return exit code 1. */
int carl_cli_error(const char *cmd, carl_status st);

#endif
