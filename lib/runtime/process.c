/*
 * A started process: exit tracking with a GLib child watch on the child we wait for
 * (the process itself, or the crun that waits for a container process), signals
 * through a pidfd, terminal resize.
 */
#include "runtime-impl.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/pidfd.h>
#include <sys/wait.h>

#include "ferry/error.h"
#include "ferry/fd.h"
#include "ferry/log.h"

struct FerryProcess {
  gint refs;
  GPid pid;        /* the process */
  GPid monitor;    /* the child we wait for */
  int pidfd;       /* for signals; -1 if none */
  int terminal_fd; /* our own copy of the pty master, or -1 */
  GMainContext *context;
  gboolean exited;
  int exit_code;
  FerryProcessExitFunc exit_func;
  gpointer exit_data;
  GDestroyNotify exit_destroy;
  GSource *exit_idle; /* runs exit_func for a late setter */
};

int ferry_process_exit_code_from_wait_status(int wait_status)
{
  if (WIFEXITED(wait_status))
    return WEXITSTATUS(wait_status);
  if (WIFSIGNALED(wait_status))
    return 128 + WTERMSIG(wait_status);
  return 255; /* stopped or continued: a child watch never reports these */
}

static void on_monitor_exit(GPid pid, gint wait_status, gpointer user_data)
{
  FerryProcess *process = user_data;
  process->exited = TRUE;
  process->exit_code = ferry_process_exit_code_from_wait_status(wait_status);
  g_autofree char *pid_str = g_strdup_printf("%d", (int)process->pid);
  g_autofree char *code_str = g_strdup_printf("%d", process->exit_code);
  ferry_log(FERRY_LOG_DEBUG, "process exited", "pid", pid_str, "exit_code", code_str, NULL);
  /* The watch's reference keeps the process alive through the callback. */
  if (process->exit_func != NULL)
    process->exit_func(process, process->exit_code, process->exit_data);
}

FerryProcess *runtime_process_new(GPid monitor, GPid pid, int pidfd, int terminal_fd)
{
  FerryProcess *process = g_new0(FerryProcess, 1);
  process->refs = 1;
  process->pid = pid;
  process->monitor = monitor;
  process->pidfd = pidfd;
  process->terminal_fd = terminal_fd;
  process->context = g_main_context_ref_thread_default();

  g_autoptr(GSource) watch = g_child_watch_source_new(monitor);
  g_source_set_callback(watch, G_SOURCE_FUNC(on_monitor_exit), ferry_process_ref(process),
                        (GDestroyNotify)ferry_process_unref);
  g_source_set_static_name(watch, "ferry process exit");
  g_source_attach(watch, process->context);
  return process;
}

int runtime_process_dup_pidfd(const FerryProcess *process)
{
  return process->pidfd >= 0 ? fcntl(process->pidfd, F_DUPFD_CLOEXEC, 3) : -1;
}

FerryProcess *ferry_process_spawn(const FerryProcessSpec *spec, FerryProcessStdio *stdio,
                                  GError **error)
{
  *stdio = (FerryProcessStdio){ -1, -1, -1, -1 };
  if (spec->argv == NULL || spec->argv[0] == NULL) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "start process: no argv");
    return NULL;
  }
  g_autofree char *path = runtime_find_program(spec->argv[0], spec->env, error);
  if (path == NULL)
    return NULL;

  RuntimeStdio fds;
  if (!runtime_stdio_prepare(spec, TRUE, &fds, error))
    return NULL;
  g_auto(FerryFd) terminal_copy = -1;
  if (spec->terminal) {
    terminal_copy = fcntl(fds.caller.terminal_fd, F_DUPFD_CLOEXEC, 3);
    if (terminal_copy < 0) {
      ferry_error_set_errno(error, errno, "start %s: copy pty master", path);
      runtime_stdio_clear(&fds);
      return NULL;
    }
  }

  static const char *const empty_env[] = { NULL };
  RuntimeSpawnPlan plan = {
    .path = path,
    /* execve's prototype predates const; it does not write to them. */
    .argv = (char *const *)spec->argv,
    .envp = (char *const *)(spec->env != NULL ? spec->env : empty_env),
    .cwd = spec->cwd != NULL ? spec->cwd : "/",
    .has_user = spec->has_user,
    .uid = (uid_t)spec->uid,
    .gid = (gid_t)spec->gid,
    .stdio = { fds.child[0], fds.child[1], fds.child[2] },
    .stdin_is_ctty = spec->terminal,
  };
  GPid pid;
  int pidfd;
  if (!runtime_spawn(&plan, &pid, &pidfd, error)) {
    runtime_stdio_clear(&fds);
    return NULL;
  }
  /* The child has its copies; ours would keep the pipes from ever reaching EOF. */
  *stdio = fds.caller;
  fds.caller = (FerryProcessStdio){ -1, -1, -1, -1 };
  runtime_stdio_clear(&fds);

  g_autofree char *pid_str = g_strdup_printf("%d", (int)pid);
  ferry_log(FERRY_LOG_DEBUG, "process started", "pid", pid_str, "path", path, NULL);
  return runtime_process_new(pid, pid, pidfd, ferry_fd_steal(&terminal_copy));
}

FerryProcess *ferry_process_ref(FerryProcess *process)
{
  g_atomic_int_inc(&process->refs);
  return process;
}

static void clear_exit_func(FerryProcess *process)
{
  GDestroyNotify destroy = process->exit_destroy;
  gpointer data = process->exit_data;
  process->exit_func = NULL;
  process->exit_data = NULL;
  process->exit_destroy = NULL;
  if (destroy != NULL)
    destroy(data);
}

void ferry_process_unref(FerryProcess *process)
{
  if (process == NULL || !g_atomic_int_dec_and_test(&process->refs))
    return;
  /* The exit watch and a pending idle hold references: neither is left. */
  clear_exit_func(process);
  ferry_fd_clear(&process->pidfd);
  ferry_fd_clear(&process->terminal_fd);
  g_main_context_unref(process->context);
  g_free(process);
}

GPid ferry_process_get_pid(const FerryProcess *process)
{
  return process->pid;
}

gboolean ferry_process_has_exited(const FerryProcess *process, int *exit_code)
{
  if (process->exited && exit_code != NULL)
    *exit_code = process->exit_code;
  return process->exited;
}

static gboolean on_exit_idle(gpointer user_data)
{
  FerryProcess *process = user_data;
  g_clear_pointer(&process->exit_idle, g_source_unref);
  if (process->exit_func != NULL)
    process->exit_func(process, process->exit_code, process->exit_data);
  return G_SOURCE_REMOVE;
}

void ferry_process_set_exit_func(FerryProcess *process, FerryProcessExitFunc func,
                                 gpointer user_data, GDestroyNotify destroy)
{
  clear_exit_func(process);
  process->exit_func = func;
  process->exit_data = user_data;
  process->exit_destroy = destroy;
  if (func != NULL && process->exited && process->exit_idle == NULL) {
    process->exit_idle = g_idle_source_new();
    g_source_set_callback(process->exit_idle, on_exit_idle, ferry_process_ref(process),
                          (GDestroyNotify)ferry_process_unref);
    g_source_set_static_name(process->exit_idle, "ferry process late exit");
    g_source_attach(process->exit_idle, process->context);
  }
}

gboolean ferry_process_signal(FerryProcess *process, int signum, GError **error)
{
  if (process->exited) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND, "signal %d to process %d: it has exited",
                signum, (int)process->pid);
    return FALSE;
  }
  int r;
  if (process->pidfd >= 0) {
    r = pidfd_send_signal(process->pidfd, signum, NULL, 0);
  } else if (process->pid == process->monitor) {
    /* Our own child, not reaped before its exit is reported: its pid is still its. */
    r = kill(process->pid, signum);
  } else {
    r = -1;
    errno = ESRCH; /* a container process that was gone before we could open a pidfd */
  }
  if (r < 0) {
    if (errno == ESRCH) {
      g_set_error(error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND,
                  "signal %d to process %d: it has exited", signum, (int)process->pid);
      return FALSE;
    }
    return ferry_error_set_errno(error, errno, "signal %d to process %d", signum,
                                 (int)process->pid);
  }
  return TRUE;
}

gboolean ferry_process_resize(FerryProcess *process, guint16 rows, guint16 cols, GError **error)
{
  if (process->terminal_fd < 0) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION,
                "resize process %d: it has no terminal", (int)process->pid);
    return FALSE;
  }
  if (process->exited) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND, "resize process %d: it has exited",
                (int)process->pid);
    return FALSE;
  }
  g_autoptr(GError) local = NULL;
  if (!runtime_set_winsize(process->terminal_fd, rows, cols, &local)) {
    g_set_error(error, local->domain, local->code, "resize process %d: %s", (int)process->pid,
                local->message);
    return FALSE;
  }
  return TRUE;
}
