/*
 * fork + exec for the runtime: stdio (pipes, /dev/null, a pty), PATH lookup in the
 * parent, and a close-on-exec status pipe through which the child reports the step
 * and errno that kept it from exec'ing, so that a missing program is an error for the
 * caller, not an exit code 127.
 */
#include "runtime-impl.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/pidfd.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include "ferry/error.h"
#include "ferry/fd.h"

/* The PATH a process gets looked up in when its environment has none (the OCI
 * runtime spec's and Debian's default). */
#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

/* Without close_range(2), the child marks fds close-on-exec one by one up to the
 * soft RLIMIT_NOFILE, but not beyond this. */
#define MAX_FD_SWEEP (1 << 20)

typedef enum {
  STEP_SETSID = 1,
  STEP_CTTY,
  STEP_STDIO,
  STEP_SETGROUPS,
  STEP_SETGID,
  STEP_SETUID,
  STEP_CHDIR,
  STEP_EXEC,
} ChildStep;

/* What a child that could not exec writes to the status pipe. */
typedef struct {
  int step;
  int err;
} ChildReport;

/* ---- the child: async-signal-safe code only from here to execve ---- */

static void G_GNUC_NORETURN child_fail(int report_fd, ChildStep step)
{
  ChildReport report = { .step = step, .err = errno };
  ssize_t n;
  do {
    n = write(report_fd, &report, sizeof(report));
  } while (n < 0 && errno == EINTR);
  _exit(127);
}

void runtime_reset_signal_dispositions(void)
{
  /* Handlers would not survive exec anyway, but ignored signals would; the mask
   * (all blocked by the parent around fork) goes last so that no parent handler
   * runs here. sigaction fails for SIGKILL and SIGSTOP (nothing to reset) and for
   * libc's reserved ones (reset below). */
  struct sigaction dfl = { .sa_handler = SIG_DFL };
  for (int sig = 1; sig < NSIG; sig++)
    (void)sigaction(sig, &dfl, NULL);
  /* glibc refuses its reserved real-time signals (32, 33), yet an ignored disposition for
   * them is inherited across exec like any other: reset those with the raw system call
   * (struct kernel_sigaction: handler, flags, restorer, mask). */
  for (int sig = 32; sig < SIGRTMIN; sig++) {
    struct {
      void (*handler)(int);
      unsigned long flags;
      void (*restorer)(void);
      unsigned long mask;
    } kdfl = { SIG_DFL, 0, NULL, 0 };
    (void)syscall(SYS_rt_sigaction, sig, &kdfl, NULL, sizeof(kdfl.mask));
  }
}

static void G_GNUC_NORETURN child_main(const RuntimeSpawnPlan *plan, int report_fd, int max_fd)
{
  runtime_reset_signal_dispositions();
  if (setsid() < 0)
    child_fail(report_fd, STEP_SETSID);
  if (plan->stdin_is_ctty && ioctl(plan->stdio[0], TIOCSCTTY, 0) < 0)
    child_fail(report_fd, STEP_CTTY);
  for (int i = 0; i < 3; i++) {
    /* stdio[i] >= 3, so dup2 never clobbers another of them; dup2 clears
     * close-on-exec on the copy. */
    if (dup2(plan->stdio[i], i) < 0)
      child_fail(report_fd, STEP_STDIO);
  }

  /* Raw system calls: glibc's wrappers coordinate all threads of a process, and
   * after fork there is only this one. */
  if (plan->has_user) {
    if (syscall(SYS_setgroups, 0, NULL) < 0)
      child_fail(report_fd, STEP_SETGROUPS);
    if (syscall(SYS_setresgid, plan->gid, plan->gid, plan->gid) < 0)
      child_fail(report_fd, STEP_SETGID);
    if (syscall(SYS_setresuid, plan->uid, plan->uid, plan->uid) < 0)
      child_fail(report_fd, STEP_SETUID);
  }
  /* After the user switch, so the directory must be the user's to enter. */
  if (plan->cwd != NULL && chdir(plan->cwd) < 0)
    child_fail(report_fd, STEP_CHDIR);

  /* Everything but 0, 1 and 2 is closed by the exec; the status pipe stays open
   * until then. */
  if (close_range(3, ~0U, CLOSE_RANGE_CLOEXEC) < 0) {
    for (int fd = 3; fd <= max_fd; fd++)
      (void)fcntl(fd, F_SETFD, FD_CLOEXEC);
  }

  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);
  execve(plan->path, plan->argv, plan->envp);
  child_fail(report_fd, STEP_EXEC);
}

/* ---- the parent ---- */

int runtime_highest_fd(void)
{
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur == RLIM_INFINITY ||
      rl.rlim_cur > MAX_FD_SWEEP)
    return MAX_FD_SWEEP;
  return (int)rl.rlim_cur;
}

static void reap(GPid pid)
{
  int status;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
    ;
}

static gboolean report_error(const RuntimeSpawnPlan *plan, const ChildReport *report,
                             GError **error)
{
  switch ((ChildStep)report->step) {
  case STEP_EXEC:
    return ferry_error_set_errno(error, report->err, "exec %s", plan->path);
  case STEP_CHDIR:
    return ferry_error_set_errno(error, report->err, "start %s: chdir to %s", plan->path,
                                 plan->cwd);
  case STEP_SETUID:
    return ferry_error_set_errno(error, report->err, "start %s: set uid %u", plan->path,
                                 (unsigned)plan->uid);
  case STEP_SETGID:
    return ferry_error_set_errno(error, report->err, "start %s: set gid %u", plan->path,
                                 (unsigned)plan->gid);
  case STEP_SETGROUPS:
    return ferry_error_set_errno(error, report->err, "start %s: drop supplementary groups",
                                 plan->path);
  case STEP_STDIO:
    return ferry_error_set_errno(error, report->err, "start %s: set up stdio", plan->path);
  case STEP_CTTY:
    return ferry_error_set_errno(error, report->err, "start %s: set controlling terminal",
                                 plan->path);
  case STEP_SETSID:
    return ferry_error_set_errno(error, report->err, "start %s: new session", plan->path);
  }
  g_set_error(error, FERRY_ERROR, FERRY_ERROR_INTERNAL, "start %s: child failed at step %d",
              plan->path, report->step);
  return FALSE;
}

gboolean runtime_spawn(const RuntimeSpawnPlan *plan, GPid *pid_out, int *pidfd_out, GError **error)
{
  int report_pipe[2];
  if (pipe2(report_pipe, O_CLOEXEC) < 0)
    return ferry_error_set_errno(error, errno, "start %s: status pipe", plan->path);
  g_auto(FerryFd) report_r = report_pipe[0];
  g_auto(FerryFd) report_w = report_pipe[1];
  int max_fd = runtime_highest_fd();

  /* Block every signal across fork so that no handler of ours runs in the child
   * before it has reset the dispositions. */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  pid_t pid = fork();
  if (pid == 0)
    child_main(plan, report_w, max_fd);
  int fork_errno = errno;
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (pid < 0)
    return ferry_error_set_errno(error, fork_errno, "start %s: fork", plan->path);
  ferry_fd_clear(&report_w);

  /* Nobody waits for the child yet, so the pid cannot have been recycled. */
  g_auto(FerryFd) pidfd = pidfd_open(pid, 0);

  ChildReport report;
  gsize got = 0;
  while (got < sizeof(report)) {
    ssize_t n = read(report_r, (char *)&report + got, sizeof(report) - got);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      int errsv = errno;
      kill(pid, SIGKILL);
      reap(pid);
      return ferry_error_set_errno(error, errsv, "start %s: read exec status", plan->path);
    }
    if (n == 0)
      break;
    got += (gsize)n;
  }
  if (got == 0) {
    /* End of file without a report: the exec closed the pipe. */
    *pid_out = pid;
    *pidfd_out = ferry_fd_steal(&pidfd);
    return TRUE;
  }
  reap(pid);
  if (got < sizeof(report)) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INTERNAL,
                "start %s: child failed before exec (short status)", plan->path);
    return FALSE;
  }
  return report_error(plan, &report, error);
}

/* ---- stdio ---- */

/* Keep fd off 0, 1 and 2 (an agent started without stdio gets those from pipe()),
 * so that the child's dup2 onto them cannot clobber another. Takes fd. */
static int fd_above_stdio(int fd, GError **error)
{
  if (fd >= 3)
    return fd;
  int moved = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  int errsv = errno;
  ferry_fd_close_quietly(fd);
  if (moved < 0)
    ferry_error_set_errno(error, errsv, "move fd %d above stdio", fd);
  return moved;
}

gboolean runtime_set_winsize(int fd, guint16 rows, guint16 cols, GError **error)
{
  struct winsize ws = { .ws_row = rows, .ws_col = cols };
  if (ioctl(fd, TIOCSWINSZ, &ws) < 0)
    return ferry_error_set_errno(error, errno, "set terminal size %ux%u", (unsigned)rows,
                                 (unsigned)cols);
  return TRUE;
}

static gboolean open_pty(guint16 rows, guint16 cols, int *master_out, int *slave_out,
                         GError **error)
{
  g_auto(FerryFd) master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
  if (master < 0)
    return ferry_error_set_errno(error, errno, "open pty master");
  if (grantpt(master) < 0 || unlockpt(master) < 0)
    return ferry_error_set_errno(error, errno, "unlock pty");
  /* TIOCGPTPEER (Linux 4.13) opens the peer without a path lookup. */
  g_auto(FerryFd) slave = ioctl(master, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC);
  if (slave < 0) {
    char name[128];
    if (ptsname_r(master, name, sizeof(name)) != 0)
      return ferry_error_set_errno(error, errno, "name of pty");
    slave = open(name, O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (slave < 0)
      return ferry_error_set_errno(error, errno, "open pty %s", name);
  }
  int moved = fd_above_stdio(ferry_fd_steal(&slave), error);
  if (moved < 0)
    return FALSE;
  slave = moved;
  if (!runtime_set_winsize(master, rows, cols, error) ||
      !ferry_fd_set_nonblocking(master, TRUE, error))
    return FALSE;
  *master_out = ferry_fd_steal(&master);
  *slave_out = ferry_fd_steal(&slave);
  return TRUE;
}

static gboolean open_pipe(int which, int *child_out, int *caller_out, GError **error)
{
  int p[2];
  if (pipe2(p, O_CLOEXEC) < 0)
    return ferry_error_set_errno(error, errno, "pipe for fd %d", which);
  /* stdin: the child reads; stdout, stderr: the child writes. */
  g_auto(FerryFd) child = which == 0 ? p[0] : p[1];
  g_auto(FerryFd) caller = which == 0 ? p[1] : p[0];
  if (!ferry_fd_set_nonblocking(caller, TRUE, error))
    return FALSE;
  int moved = fd_above_stdio(ferry_fd_steal(&child), error);
  if (moved < 0)
    return FALSE;
  *child_out = moved;
  *caller_out = ferry_fd_steal(&caller);
  return TRUE;
}

gboolean runtime_stdio_prepare(const FerryProcessSpec *spec, gboolean make_pty, RuntimeStdio *out,
                               GError **error)
{
  for (int i = 0; i < 3; i++)
    out->child[i] = -1;
  out->caller = (FerryProcessStdio){ -1, -1, -1, -1 };

  if (spec->terminal && make_pty) {
    int master = -1, slave = -1;
    if (!open_pty(spec->rows, spec->cols, &master, &slave, error))
      return FALSE;
    for (int i = 0; i < 3; i++)
      out->child[i] = slave;
    out->caller.terminal_fd = master;
    return TRUE;
  }

  FerryStdioMode modes[3] = { FERRY_STDIO_NONE, FERRY_STDIO_NONE, FERRY_STDIO_NONE };
  if (!spec->terminal) {
    modes[0] = spec->stdin_mode;
    modes[1] = spec->stdout_mode;
    modes[2] = spec->stderr_mode;
  }
  int *caller_fds[3] = { &out->caller.stdin_fd, &out->caller.stdout_fd, &out->caller.stderr_fd };
  int devnull = -1;
  for (int i = 0; i < 3; i++) {
    switch (modes[i]) {
    case FERRY_STDIO_PIPE:
      if (!open_pipe(i, &out->child[i], caller_fds[i], error))
        goto fail;
      break;
    case FERRY_STDIO_NONE:
      if (devnull < 0) {
        int fd = open("/dev/null", O_RDWR | O_CLOEXEC);
        if (fd < 0) {
          ferry_error_set_errno(error, errno, "open /dev/null");
          goto fail;
        }
        devnull = fd_above_stdio(fd, error);
        if (devnull < 0)
          goto fail;
      }
      out->child[i] = devnull;
      break;
    default:
      g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "stdio mode %d for fd %d",
                  (int)modes[i], i);
      goto fail;
    }
  }
  return TRUE;

fail:
  /* /dev/null, once open, is always in child[] already. */
  runtime_stdio_clear(out);
  return FALSE;
}

void runtime_stdio_clear(RuntimeStdio *stdio)
{
  /* The child's fds may repeat one fd (a pty slave, /dev/null): close each once. */
  for (int i = 0; i < 3; i++) {
    int fd = stdio->child[i];
    if (fd < 0)
      continue;
    for (int j = i; j < 3; j++) {
      if (stdio->child[j] == fd)
        stdio->child[j] = -1;
    }
    ferry_fd_close_quietly(fd);
  }
  ferry_process_stdio_close(&stdio->caller);
}

void ferry_process_stdio_close(FerryProcessStdio *stdio)
{
  ferry_fd_clear(&stdio->stdin_fd);
  ferry_fd_clear(&stdio->stdout_fd);
  ferry_fd_clear(&stdio->stderr_fd);
  ferry_fd_clear(&stdio->terminal_fd);
}

/* ---- PATH ---- */

char *runtime_find_program(const char *program, const char *const *env, GError **error)
{
  if (program == NULL || *program == '\0') {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "start process: empty argv[0]");
    return NULL;
  }
  if (strchr(program, '/') != NULL)
    return g_strdup(program);

  const char *path = DEFAULT_PATH;
  for (const char *const *e = env; e != NULL && *e != NULL; e++) {
    if (g_str_has_prefix(*e, "PATH="))
      path = *e + strlen("PATH=");
  }
  int errsv = ENOENT;
  g_auto(GStrv) dirs = g_strsplit(path, ":", -1);
  for (char **dir = dirs; *dir != NULL; dir++) {
    if (**dir == '\0')
      continue; /* an empty entry would mean the agent's cwd: never wanted here */
    g_autofree char *candidate = g_build_filename(*dir, program, NULL);
    struct stat st;
    if (stat(candidate, &st) < 0 || !S_ISREG(st.st_mode))
      continue;
    if (access(candidate, X_OK) == 0)
      return g_steal_pointer(&candidate);
    errsv = EACCES;
  }
  ferry_error_set_errno(error, errsv, "find %s in PATH %s", program, path);
  return NULL;
}
