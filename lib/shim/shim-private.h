/* What lib/shim's files share. Private to lib/shim. */
#pragma once

#include <glib.h>

/* A process's stdio, opened from containerd's names (stdio.c). */
typedef struct {
  int fds[3];  /* stdin (read), stdout, stderr (write); -1: none */
  GPid logger; /* a binary:// logger we started, else 0 */
} ShimStdio;

/* Open `in`, `out`, `err` as containerd names them ("" or NULL: none). `id` and `ns`
 * go to a binary:// logger's environment. On failure nothing stays open. */
gboolean shim_stdio_open(ShimStdio *io, const char *id, const char *ns, const char *in,
                         const char *out, const char *err, GError **error);
/* Close what the relays have not taken (fds still >= 0). */
void shim_stdio_close(ShimStdio *io);
/* Reap a binary:// logger (it exits at the end of its input), killing it if it lingers. */
void shim_stdio_stop_logger(ShimStdio *io);
