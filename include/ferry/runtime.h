/*
 * Processes and containers for the guest agent (ferry-gcs): start them, track their
 * exit on the GLib main loop, signal them, resize their terminals. Processes "in the
 * UVM" are plain fork/exec; containers go through crun (OCI bundles). No bridge, no
 * channels: stdio is plain fds the caller relays. docs/runtime.md has the model.
 *
 * Threading: one thread, the thread-default main context at the time a process is
 * started (its exit callback runs there).
 */
#pragma once

#include <glib.h>
#include <jansson.h>

G_BEGIN_DECLS

/* ---- what to start ---- */

typedef enum {
  FERRY_STDIO_NONE = 0, /* /dev/null */
  FERRY_STDIO_PIPE = 1, /* a pipe; the caller gets the other end */
} FerryStdioMode;

/*
 * A process to start. All pointers are borrowed for the duration of the call.
 * Zero-initialise it and set what you need (designated initialisers).
 */
typedef struct {
  /* The command line, NULL-terminated, non-empty. A program name without '/' is
   * looked up in the PATH of `env` (or the default PATH) before the fork. For a
   * container's init, NULL keeps the args of the bundle's config.json. */
  const char *const *argv;
  /* The whole environment ("KEY=VALUE", NULL-terminated); nothing is inherited from
   * the agent. NULL: empty (a container's init keeps config.json's). */
  const char *const *env;
  /* Working directory. NULL: "/" (a container's init keeps config.json's). */
  const char *cwd;
  /* Run as uid:gid with no supplementary groups (as the agent's user when FALSE; a
   * container's init then keeps config.json's user, an exec is 0:0). */
  gboolean has_user;
  guint32 uid;
  guint32 gid;
  /* For each of stdin, stdout, stderr. Ignored when `terminal` is set. */
  FerryStdioMode stdin_mode;
  FerryStdioMode stdout_mode;
  FerryStdioMode stderr_mode;
  /* A pseudo-terminal: the process's stdin, stdout and stderr, and its controlling
   * terminal (it leads a new session); the caller gets the master. */
  gboolean terminal;
  guint16 rows;
  guint16 cols;
} FerryProcessSpec;

/*
 * The caller's ends of a started process's stdio, -1 where there is none. Owned by
 * the caller, all O_CLOEXEC | O_NONBLOCK: stdin_fd is a pipe's write end (close it to
 * send EOF), stdout_fd / stderr_fd are read ends (read returns 0 at EOF), terminal_fd
 * is the pty master (input and output; read fails with EIO once every holder of the
 * terminal has closed it, which is its end of file).
 */
typedef struct {
  int stdin_fd;
  int stdout_fd;
  int stderr_fd;
  int terminal_fd;
} FerryProcessStdio;

/* Close every fd of `stdio` that is >= 0 and set it to -1. */
void ferry_process_stdio_close(FerryProcessStdio *stdio);

/* ---- a started process ---- */

typedef struct FerryProcess FerryProcess;

/*
 * Called once, from the main loop, when the process has exited (for a container
 * process: when crun, which waits for it, has). `exit_code` is hcsshim's and crun's
 * convention: the exit status, or 128 + the signal number when a signal killed it.
 * The process's stdio may still hold unread output (and a descendant may still hold
 * the pipes open): draining is the caller's business (docs/runtime.md).
 */
typedef void (*FerryProcessExitFunc)(FerryProcess *process, int exit_code, gpointer user_data);

/*
 * Start a process in the UVM (the agent's own namespaces) with fork + exec. Blocks
 * until the child has exec'd or failed; a failure before exec (program not found,
 * permission, bad cwd or user) is an error from the errno that caused it
 * ("exec /x: No such file or directory", FERRY_ERROR_NOT_FOUND / PERMISSION_DENIED),
 * and the child has been reaped by then. The child starts a new session, with default
 * signal dispositions, an empty signal mask and no fds but 0, 1 and 2.
 *
 * Returns a new reference; *stdio receives the caller's fds (all -1 on error). The
 * process stays tracked until it exits even if every reference is dropped, so it
 * never becomes an unreaped zombie.
 */
FerryProcess *ferry_process_spawn(const FerryProcessSpec *spec, FerryProcessStdio *stdio,
                                  GError **error);

FerryProcess *ferry_process_ref(FerryProcess *process);
void ferry_process_unref(FerryProcess *process);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FerryProcess, ferry_process_unref)

/* The pid as the agent sees it (for a container process: in the agent's pid
 * namespace, not the container's). */
GPid ferry_process_get_pid(const FerryProcess *process);

/*
 * Set the exit callback (replacing, and destroying the data of, an earlier one; NULL
 * clears it). If the process has already exited, `func` runs from an idle callback.
 * `destroy` is called on `user_data` when the callback is replaced, cleared, or the
 * process is freed.
 */
void ferry_process_set_exit_func(FerryProcess *process, FerryProcessExitFunc func,
                                 gpointer user_data, GDestroyNotify destroy);

/* TRUE once the exit is known, with the exit code in *exit_code (may be NULL). */
gboolean ferry_process_has_exited(const FerryProcess *process, int *exit_code);

/*
 * Send `signal` to the process (through a pidfd, so a recycled pid is never hit).
 * FERRY_ERROR_NOT_FOUND once it has exited; other failures from kill(2)'s errno.
 * A container's init (its pid 1) ignores signals it has no handler for, SIGKILL
 * aside, as in any pid namespace.
 */
gboolean ferry_process_signal(FerryProcess *process, int signal, GError **error);

/* Set the terminal size (TIOCSWINSZ on the master); the process gets SIGWINCH.
 * FERRY_ERROR_FAILED_PRECONDITION when it has no terminal, NOT_FOUND once exited. */
gboolean ferry_process_resize(FerryProcess *process, guint16 rows, guint16 cols, GError **error);

/* The exit code for a waitpid(2) status: WEXITSTATUS, or 128 + WTERMSIG. */
int ferry_process_exit_code_from_wait_status(int wait_status);

/* ---- containers through crun ---- */

typedef struct FerryRuntime FerryRuntime;

typedef struct {
  /* The crun binary; NULL: "crun" from PATH. */
  const char *crun_path;
  /* crun's --cgroup-manager; NULL: crun's default. "disabled" for local mode. */
  const char *cgroup_manager;
  /* How long starting a container process may take; 0: 30 s. */
  guint start_timeout_ms;
  /* Exec every process through `crun exec`. FALSE (the default): the runtime enters
   * the container itself where crun would do nothing more (docs/runtime.md). */
  gboolean exec_with_crun;
} FerryRuntimeOptions;

/*
 * A runtime keeping its state under `state_dir` (created, mode 0700, if missing):
 * crun's root (its --root, private to this runtime, never crun's system default) in
 * state_dir/crun and short-lived start files in state_dir/start. `options` may be
 * NULL. Fails when crun cannot be found (FERRY_ERROR_NOT_FOUND) or the directories
 * cannot be made.
 */
FerryRuntime *ferry_runtime_new(const char *state_dir, const FerryRuntimeOptions *options,
                                GError **error);
void ferry_runtime_free(FerryRuntime *runtime);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FerryRuntime, ferry_runtime_free)

/* crun's root directory (borrowed). */
const char *ferry_runtime_get_crun_root(const FerryRuntime *runtime);

/*
 * Create and start container `id` from the OCI bundle directory `bundle` with `spec`
 * as its init process (`crun run`, not detached: crun stays as the init's parent and
 * exits with its exit code, which is what the returned process reports). The
 * bundle's config.json is not modified: a copy with the spec's fields applied
 * (process.terminal and consoleSize always follow spec->terminal) is handed to crun;
 * a zeroed spec runs config.json's process as it is, without a terminal.
 * Without a terminal, the init inherits the pipes or /dev/null; with one, crun
 * passes the pty master back over a console socket.
 *
 * Blocks until crun has written the init's pid or failed (bounded by the start
 * timeout); crun's own error message is in the GError. The container disappears
 * from crun's state when the init exits. `id`: letters, digits, '_', '-', '.', at
 * most 128, not starting with '.' or '-'.
 */
FerryProcess *ferry_runtime_run_container(FerryRuntime *runtime, const char *id, const char *bundle,
                                          const FerryProcessSpec *spec, FerryProcessStdio *stdio,
                                          GError **error);

/*
 * Start `spec` in running container `id`: it joins the init's namespaces and cgroup
 * and gets what `crun exec` would give it (the container's capabilities and
 * environment when the spec has none, HOME, umask 022), and a monitor that waits for
 * it reports its exit code. The runtime does this itself, or runs `crun exec` (not
 * detached) where it cannot: a container with a seccomp profile, a personality or a
 * user namespace, a process with a terminal, or options->exec_with_crun.
 * spec->argv is required. Blocks and fails like ferry_runtime_run_container();
 * FERRY_ERROR_NOT_FOUND when there is no such container (or it has stopped).
 */
FerryProcess *ferry_runtime_exec_in_container(FerryRuntime *runtime, const char *id,
                                              const FerryProcessSpec *spec,
                                              FerryProcessStdio *stdio, GError **error);

/* `crun kill [--all] id signal`: the init, or with `all` every process of the
 * container. Blocks until crun returns. FERRY_ERROR_NOT_FOUND for an unknown id. */
gboolean ferry_runtime_kill_container(FerryRuntime *runtime, const char *id, int signal,
                                      gboolean all, GError **error);

/* `crun delete --force id`: kills what still runs (SIGKILL) and removes crun's
 * state. Deleting a container that is not there (an init that exited already took
 * its state with it) succeeds. Blocks until crun returns. */
gboolean ferry_runtime_delete_container(FerryRuntime *runtime, const char *id, GError **error);

/* `crun pause id` / `crun resume id`: freeze and thaw every process of the container
 * (its cgroup's freezer). Block. FERRY_ERROR_NOT_FOUND for an unknown id. */
gboolean ferry_runtime_pause_container(FerryRuntime *runtime, const char *id, GError **error);
gboolean ferry_runtime_resume_container(FerryRuntime *runtime, const char *id, GError **error);

/* `crun update --resources FILE id` with `resources` (borrowed): an OCI LinuxResources
 * object. Blocks. */
gboolean ferry_runtime_update_container(FerryRuntime *runtime, const char *id, json_t *resources,
                                        GError **error);

typedef enum {
  FERRY_CONTAINER_CREATED,
  FERRY_CONTAINER_RUNNING,
  FERRY_CONTAINER_PAUSED,
  FERRY_CONTAINER_STOPPED,
} FerryContainerStatus;

/* `crun state id`: its status and its init's pid (0 when stopped). Either out
 * pointer may be NULL. FERRY_ERROR_NOT_FOUND for an unknown id. Blocks. */
gboolean ferry_runtime_get_container_state(FerryRuntime *runtime, const char *id,
                                           FerryContainerStatus *status, GPid *pid, GError **error);

/*
 * Local mode (the agent on a host, and the tests): move the calling thread into a
 * private mount namespace (unshare CLONE_NEWNS, mounts made rprivate) and mount
 * cgroup2 on /sys/fs/cgroup unless it is cgroup2 already, so that crun with
 * cgroup_manager "disabled" accepts a host with the hybrid cgroup layout. Needs
 * CAP_SYS_ADMIN. Call it before any thread starts: other threads keep the old
 * namespace. The host's mounts are untouched.
 */
gboolean ferry_runtime_enter_local_mode(GError **error);

G_END_DECLS
