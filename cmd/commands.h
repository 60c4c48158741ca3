/* One function per subcommand, each in cmd/<name>.c. */
#ifndef IMGTOOL_COMMANDS_H
#define IMGTOOL_COMMANDS_H

#include "cmd/cmd.h"

#define DECLARE_COMMAND(fn) int fn(const struct command *cmd, int argc, const char **argv)

DECLARE_COMMAND(cmd_create);
DECLARE_COMMAND(cmd_info);
DECLARE_COMMAND(cmd_map);
DECLARE_COMMAND(cmd_compare);
DECLARE_COMMAND(cmd_convert);
DECLARE_COMMAND(cmd_resize);
DECLARE_COMMAND(cmd_io);
DECLARE_COMMAND(cmd_check);
DECLARE_COMMAND(cmd_bitmap);
DECLARE_COMMAND(cmd_mirror);
DECLARE_COMMAND(cmd_export);
DECLARE_COMMAND(cmd_commit);
DECLARE_COMMAND(cmd_rebase);
DECLARE_COMMAND(cmd_serve);
DECLARE_COMMAND(cmd_job);
DECLARE_COMMAND(cmd_measure);
DECLARE_COMMAND(cmd_amend);
DECLARE_COMMAND(cmd_snapshot);
DECLARE_COMMAND(cmd_dd);

#endif
