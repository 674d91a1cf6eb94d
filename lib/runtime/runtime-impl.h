/*
 * What the files of lib/runtime share: the fork/exec core (spawn.c) and the process
 * object's constructor (process.c). Private to lib/runtime.
 */
#pragma once

#include <sys/types.h>

#include "ferry/runtime.h"

/* Everything the child needs, prepared in the parent: after fork, the child runs
 * async-signal-safe code only. */
typedef struct {
  const char *path;  /* what to execve: absolute, or relative to cwd */
  char *const *argv; /* NULL-terminated */
  char *const *envp; /* NULL-terminated */
  const char *cwd;   /* NULL: stay where the agent is */
  gboolean has_user;
  uid_t uid;
  gid_t gid;
  int stdio[3];           /* the child's 0, 1, 2; each >= 3 (runtime_stdio_prepare sees to it) */
  gboolean stdin_is_ctty; /* make stdio[0] (a pty slave) the controlling terminal */
} RuntimeSpawnPlan;

/*
 * fork + exec `plan`. Blocks until the child exec'd or reported why it could not;
 * in the latter case the child is reaped and the error names the step and errno.
 * On success *pid_out is the child and *pidfd_out a pidfd for it (or -1 when the
 * kernel has none). Not waited for: the caller must watch it.
 */
gboolean runtime_spawn(const RuntimeSpawnPlan *plan, GPid *pid_out, int *pidfd_out, GError **error);

/*
 * In a child after fork, before exec (async-signal-safe): every signal's disposition
 * back to the default, glibc's reserved ones included. The mask is left alone.
 */
void runtime_reset_signal_dispositions(void);

/* How far a child without close_range(2) marks fds close-on-exec: the soft
 * RLIMIT_NOFILE, at most 2^20. */
int runtime_highest_fd(void);

/* The stdio of a process being started. */
typedef struct {
  int child[3];             /* for the child's 0, 1, 2 (owned; may repeat one fd) */
  FerryProcessStdio caller; /* the caller's ends */
} RuntimeStdio;

/*
 * Pipes, /dev/null or a pty for `spec`. With spec->terminal and `make_pty` FALSE
 * (crun makes the pty), the child gets /dev/null everywhere.
 */
gboolean runtime_stdio_prepare(const FerryProcessSpec *spec, gboolean make_pty, RuntimeStdio *out,
                               GError **error);
/* Close whatever is still open in `stdio` (both sides). */
void runtime_stdio_clear(RuntimeStdio *stdio);

/*
 * Look `program` up in PATH (from `env`, else a default) unless it contains a '/'.
 * A new string, or NULL with NOT_FOUND / PERMISSION_DENIED.
 */
char *runtime_find_program(const char *program, const char *const *env, GError **error);

/*
 * Start tracking a started process: `monitor` is the child to wait for (the process
 * itself, or the crun that waits for it), `pid` the process, `pidfd` a pidfd for it
 * or -1 (taken), `terminal_fd` a pty master of its own or -1 (taken; used to
 * resize). Returns a new reference; another is held until the monitor exits.
 */
FerryProcess *runtime_process_new(GPid monitor, GPid pid, int pidfd, int terminal_fd);

/* A new copy of the process's pidfd, or -1 when it has none. */
int runtime_process_dup_pidfd(const FerryProcess *process);

/* Set a pty's size. */
gboolean runtime_set_winsize(int fd, guint16 rows, guint16 cols, GError **error);

/* ---- entering a running container without crun (enter.c) ---- */

/* What exec needs of a container, from its config.json and its init. */
typedef struct RuntimeInit RuntimeInit;

/* `config` is the container's config.json as crun got it (borrowed); `pidfd` (taken,
 * may be -1) is a pidfd for its init `pid`. */
RuntimeInit *runtime_init_new(json_t *config, GPid pid, int pidfd);
void runtime_init_free(RuntimeInit *init);
GPid runtime_init_get_pid(const RuntimeInit *init);

/*
 * Start `spec` in the container of `init` (named `id` in errors) as `crun exec`
 * would, without crun. When this container or this spec needs crun (a seccomp
 * profile, a user namespace, a terminal, ...), returns NULL with no error and
 * *needs_crun saying why. Otherwise blocks until the process exec'd or failed (at
 * most `timeout_ms`) and fails as runtime_spawn() does; NOT_FOUND when the container
 * has stopped, FAILED_PRECONDITION when it is paused.
 */
FerryProcess *runtime_enter(const RuntimeInit *init, const char *id, const FerryProcessSpec *spec,
                            guint timeout_ms, FerryProcessStdio *stdio, const char **needs_crun,
                            GError **error);
