/*
 * Containers through crun. A container process is started with `crun run` / `crun
 * exec` not detached: crun stays as its parent and exits with its exit code (128 +
 * signal when killed), so the runtime waits for crun, its own child, and needs no
 * subreaper. Starting blocks until crun has written the process's pid file (watched
 * with inotify) or exited (watched with a pidfd), whichever comes first; crun's
 * --log holds the reason of a failure.
 */
#include "runtime-impl.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/pidfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ferry/error.h"
#include "ferry/fd.h"
#include "ferry/json.h"
#include "ferry/log.h"

#define DEFAULT_START_TIMEOUT_MS 30000
/* crun gets this environment and nothing of the agent's (no NOTIFY_SOCKET, ...). */
#define CRUN_PATH_ENV "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
/* Bounds on what is read back from crun: its pid file, log and state output. */
#define MAX_PID_FILE 64
#define MAX_LOG_TAIL 4096
#define MAX_ID_LEN 128

struct FerryRuntime {
  char *state_dir;
  char *crun_root;
  char *start_dir;
  char *crun_path;
  char *cgroup_manager;
  guint start_timeout_ms;
  guint next_start;
  gboolean exec_with_crun;
  GHashTable *inits; /* container id -> RuntimeInit, for exec without crun */
};

/* ---- the runtime ---- */

static gboolean make_private_dir(const char *path, GError **error)
{
  if (g_mkdir_with_parents(path, 0700) < 0)
    return ferry_error_set_errno(error, errno, "create directory %s", path);
  return TRUE;
}

FerryRuntime *ferry_runtime_new(const char *state_dir, const FerryRuntimeOptions *options,
                                GError **error)
{
  static const FerryRuntimeOptions defaults = { 0 };
  if (options == NULL)
    options = &defaults;
  if (state_dir == NULL || *state_dir == '\0') {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "runtime: no state directory");
    return NULL;
  }
  g_autofree char *crun_path = NULL;
  if (options->crun_path != NULL && strchr(options->crun_path, '/') != NULL)
    crun_path = g_canonicalize_filename(options->crun_path, NULL);
  else
    crun_path = g_find_program_in_path(options->crun_path != NULL ? options->crun_path : "crun");
  if (crun_path == NULL || !g_file_test(crun_path, G_FILE_TEST_IS_EXECUTABLE)) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND, "runtime: %s not found%s",
                options->crun_path != NULL ? options->crun_path : "crun",
                crun_path == NULL ? " in PATH" : " or not executable");
    return NULL;
  }

  g_autoptr(FerryRuntime) runtime = g_new0(FerryRuntime, 1);
  /* crun changes into the bundle: every path it gets must be absolute. */
  runtime->state_dir = g_canonicalize_filename(state_dir, NULL);
  runtime->crun_root = g_build_filename(runtime->state_dir, "crun", NULL);
  runtime->start_dir = g_build_filename(runtime->state_dir, "start", NULL);
  runtime->crun_path = g_steal_pointer(&crun_path);
  runtime->cgroup_manager = g_strdup(options->cgroup_manager);
  runtime->start_timeout_ms =
      options->start_timeout_ms != 0 ? options->start_timeout_ms : DEFAULT_START_TIMEOUT_MS;
  runtime->exec_with_crun = options->exec_with_crun;
  runtime->inits =
      g_hash_table_new_full(g_str_hash, g_str_equal, g_free, (GDestroyNotify)runtime_init_free);
  if (!make_private_dir(runtime->state_dir, error) ||
      !make_private_dir(runtime->crun_root, error) || !make_private_dir(runtime->start_dir, error))
    return NULL;
  return g_steal_pointer(&runtime);
}

void ferry_runtime_free(FerryRuntime *runtime)
{
  if (runtime == NULL)
    return;
  g_free(runtime->state_dir);
  g_free(runtime->crun_root);
  g_free(runtime->start_dir);
  g_free(runtime->crun_path);
  g_free(runtime->cgroup_manager);
  if (runtime->inits != NULL)
    g_hash_table_destroy(runtime->inits);
  g_free(runtime);
}

const char *ferry_runtime_get_crun_root(const FerryRuntime *runtime)
{
  return runtime->crun_root;
}

/* Container ids end up in paths and on crun's command line. */
static gboolean check_id(const char *id, GError **error)
{
  gsize len = id != NULL ? strlen(id) : 0;
  gboolean ok = len > 0 && len <= MAX_ID_LEN && id[0] != '.' && id[0] != '-';
  for (gsize i = 0; ok && i < len; i++)
    ok = g_ascii_isalnum(id[i]) || id[i] == '_' || id[i] == '-' || id[i] == '.';
  if (!ok)
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "invalid container id \"%s\"",
                id != NULL ? id : "");
  return ok;
}

static gboolean container_known(FerryRuntime *runtime, const char *id)
{
  g_autofree char *dir = g_build_filename(runtime->crun_root, id, NULL);
  return g_file_test(dir, G_FILE_TEST_IS_DIR);
}

static gboolean not_found(const char *id, GError **error)
{
  g_set_error(error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND, "container %s not found", id);
  return FALSE;
}

/* crun and its global options; the caller appends the command and ends with NULL. */
static GPtrArray *crun_argv_new(FerryRuntime *runtime, const char *log_path)
{
  GPtrArray *argv = g_ptr_array_new_with_free_func(g_free);
  g_ptr_array_add(argv, g_strdup(runtime->crun_path));
  g_ptr_array_add(argv, g_strdup_printf("--root=%s", runtime->crun_root));
  if (runtime->cgroup_manager != NULL)
    g_ptr_array_add(argv, g_strdup_printf("--cgroup-manager=%s", runtime->cgroup_manager));
  if (log_path != NULL)
    g_ptr_array_add(argv, g_strdup_printf("--log=%s", log_path));
  return argv;
}

/* The last non-empty line of `text` (at most MAX_LOG_TAIL bytes of it), or NULL. */
static char *last_line(const char *text, gsize len)
{
  if (text == NULL)
    return NULL;
  if (len > MAX_LOG_TAIL) {
    text += len - MAX_LOG_TAIL;
    len = MAX_LOG_TAIL;
  }
  g_autofree char *copy = g_strndup(text, len);
  g_strstrip(copy);
  if (*copy == '\0')
    return NULL;
  char *nl = strrchr(copy, '\n');
  return g_strdup(nl != NULL ? nl + 1 : copy);
}

/* The last line of crun's log file, or NULL. Only its tail is read. */
static char *read_log_tail(const char *path)
{
  g_auto(FerryFd) fd = open(path, O_RDONLY | O_CLOEXEC);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) < 0)
    return NULL;
  off_t from = st.st_size > MAX_LOG_TAIL ? st.st_size - MAX_LOG_TAIL : 0;
  char buf[MAX_LOG_TAIL];
  ssize_t n = pread(fd, buf, sizeof(buf), from);
  if (n <= 0)
    return NULL;
  return last_line(buf, (gsize)n);
}

/* crun's messages end in strerror(3) when a system call failed. */
static FerryErrorCode code_from_message(const char *message)
{
  static const int errnos[] = { ENOENT, EACCES, EPERM, EEXIST, EINVAL };
  for (gsize i = 0; message != NULL && i < G_N_ELEMENTS(errnos); i++) {
    if (g_str_has_suffix(message, g_strerror(errnos[i])))
      return ferry_error_code_from_errno(errnos[i]);
  }
  return FERRY_ERROR_UNKNOWN;
}

/*
 * Run a short crun command to its end. The last line crun writes to stderr is the
 * message of a failure. `out` (may be NULL) gets stdout.
 */
static gboolean crun_sync(FerryRuntime *runtime, const char *what, const char *const *args,
                          char **out, GError **error)
{
  g_autoptr(GPtrArray) argv = crun_argv_new(runtime, NULL);
  for (const char *const *a = args; *a != NULL; a++)
    g_ptr_array_add(argv, g_strdup(*a));
  g_ptr_array_add(argv, NULL);
  const char *envp[] = { CRUN_PATH_ENV, NULL };
  g_autofree char *std_out = NULL;
  g_autofree char *std_err = NULL;
  int wait_status = 0;
  g_autoptr(GError) spawn_error = NULL;
  if (!g_spawn_sync(NULL, (char **)argv->pdata, (char **)envp, G_SPAWN_DEFAULT, NULL, NULL,
                    &std_out, &std_err, &wait_status, &spawn_error)) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INTERNAL, "%s: run crun: %s", what,
                spawn_error->message);
    return FALSE;
  }
  if (!WIFEXITED(wait_status) || WEXITSTATUS(wait_status) != 0) {
    g_autofree char *message = last_line(std_err, std_err != NULL ? strlen(std_err) : 0);
    g_set_error(error, FERRY_ERROR, code_from_message(message), "%s: crun exited with %d%s%s", what,
                ferry_process_exit_code_from_wait_status(wait_status), message != NULL ? ": " : "",
                message != NULL ? message : "");
    return FALSE;
  }
  if (out != NULL)
    *out = g_steal_pointer(&std_out);
  return TRUE;
}

/* ---- starting a container process ---- */

/* The short-lived files of one start: what crun reads and writes. */
typedef struct {
  char *dir;
  char *spec_path; /* config.json (run) or process.json (exec) */
  char *pid_path;
  char *log_path;
  char *socket_path; /* console socket, terminal only */
} StartFiles;

static void start_files_free(StartFiles *files)
{
  const char *paths[] = { files->spec_path, files->pid_path, files->log_path, files->socket_path };
  for (gsize i = 0; i < G_N_ELEMENTS(paths); i++) {
    if (paths[i] != NULL)
      (void)unlink(paths[i]);
  }
  if (files->dir != NULL)
    (void)rmdir(files->dir);
  g_free(files->dir);
  g_free(files->spec_path);
  g_free(files->pid_path);
  g_free(files->log_path);
  g_free(files->socket_path);
  g_free(files);
}
G_DEFINE_AUTOPTR_CLEANUP_FUNC(StartFiles, start_files_free)

static StartFiles *start_files_new(FerryRuntime *runtime, const char *spec_name, GError **error)
{
  g_autoptr(StartFiles) files = g_new0(StartFiles, 1);
  g_autofree char *name = g_strdup_printf("%u", ++runtime->next_start);
  g_autofree char *dir = g_build_filename(runtime->start_dir, name, NULL);
  /* A directory left by an earlier agent with the same state dir is stale. */
  if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
    ferry_error_set_errno(error, errno, "create %s", dir);
    return NULL;
  }
  files->dir = g_steal_pointer(&dir);
  files->spec_path = g_build_filename(files->dir, spec_name, NULL);
  files->pid_path = g_build_filename(files->dir, "pid", NULL);
  files->log_path = g_build_filename(files->dir, "log", NULL);
  (void)unlink(files->pid_path);
  (void)unlink(files->log_path);
  return g_steal_pointer(&files);
}

static gboolean write_json(json_t *json, const char *path, GError **error)
{
  if (json_dump_file(json, path, JSON_COMPACT) < 0) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INTERNAL, "write %s", path);
    return FALSE;
  }
  return TRUE;
}

/* A listening unix socket at path for crun's --console-socket. */
static int console_socket_listen(const char *path, GError **error)
{
  struct sockaddr_un addr = { .sun_family = AF_UNIX };
  if (strlen(path) >= sizeof(addr.sun_path)) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                "console socket path %s is too long for a unix socket (state dir too deep)", path);
    return -1;
  }
  strcpy(addr.sun_path, path);
  g_auto(FerryFd) fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) {
    ferry_error_set_errno(error, errno, "console socket");
    return -1;
  }
  (void)unlink(path);
  if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0 || listen(fd, 1) < 0) {
    ferry_error_set_errno(error, errno, "listen on console socket %s", path);
    return -1;
  }
  return ferry_fd_steal(&fd);
}

/* The pid crun wrote, or 0 while there is none (yet). */
static GPid read_pid_file(const char *path)
{
  g_auto(FerryFd) fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return 0;
  char buf[MAX_PID_FILE + 1];
  ssize_t n = read(fd, buf, MAX_PID_FILE);
  if (n <= 0)
    return 0;
  buf[n] = '\0';
  g_strstrip(buf);
  guint64 pid;
  if (!g_ascii_string_to_unsigned(buf, 10, 1, G_MAXINT32, &pid, NULL))
    return 0;
  return (GPid)pid;
}

/* Whether our child `pid` has exited, without reaping it. */
static gboolean child_has_exited(GPid pid)
{
  siginfo_t info = { 0 };
  if (waitid(P_PID, (id_t)pid, &info, WEXITED | WNOHANG | WNOWAIT) < 0)
    return errno != EINTR;
  return info.si_pid == pid;
}

static int reap_child(GPid pid)
{
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
    ;
  return status;
}

/* Take the pty master crun sends to the console socket, if it has connected. The
 * message itself must arrive within `timeout_ms`. */
static gboolean accept_console(int listen_fd, guint timeout_ms, int *master_out, GError **error)
{
  g_auto(FerryFd) conn = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
  if (conn < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
      return TRUE;
    return ferry_error_set_errno(error, errno, "accept on console socket");
  }
  struct timeval tv = { .tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000 };
  if (setsockopt(conn, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0)
    return ferry_error_set_errno(error, errno, "console socket timeout");
  char buf[256];
  gsize got;
  int master = -1;
  g_autoptr(GError) local = NULL;
  if (!ferry_fd_recv(conn, buf, sizeof(buf), &got, &master, &local)) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE, "receive pty from crun: %s",
                local->message);
    return FALSE;
  }
  if (master < 0) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE, "receive pty from crun: no fd");
    return FALSE;
  }
  *master_out = master;
  return TRUE;
}

static void drain_inotify(int fd)
{
  char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
  while (read(fd, buf, sizeof(buf)) > 0)
    ;
}

/*
 * The common part of run and exec: spawn `argv` (crun) with the stdio of `spec`, wait
 * until crun has written the pid (and sent the pty master), hand out the process.
 */
static FerryProcess *crun_start(FerryRuntime *runtime, const char *what, GPtrArray *argv,
                                StartFiles *files, int listen_fd, const FerryProcessSpec *spec,
                                FerryProcessStdio *stdio, GError **error)
{
  g_auto(FerryFd) inotify_fd = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
  if (inotify_fd < 0 ||
      inotify_add_watch(inotify_fd, files->dir, IN_CLOSE_WRITE | IN_MOVED_TO) < 0) {
    ferry_error_set_errno(error, errno, "%s: watch %s", what, files->dir);
    return NULL;
  }

  RuntimeStdio fds;
  if (!runtime_stdio_prepare(spec, FALSE, &fds, error))
    return NULL;
  const char *envp[] = { CRUN_PATH_ENV, NULL };
  RuntimeSpawnPlan plan = {
    .path = runtime->crun_path,
    .argv = (char *const *)argv->pdata,
    .envp = (char *const *)envp,
    .cwd = NULL,
    .stdio = { fds.child[0], fds.child[1], fds.child[2] },
  };
  GPid crun_pid;
  g_auto(FerryFd) crun_pidfd = -1;
  if (!runtime_spawn(&plan, &crun_pid, &crun_pidfd, error)) {
    runtime_stdio_clear(&fds);
    return NULL;
  }
  FerryProcessStdio caller = fds.caller;
  fds.caller = (FerryProcessStdio){ -1, -1, -1, -1 };
  runtime_stdio_clear(&fds);

  gint64 deadline = g_get_monotonic_time() + (gint64)runtime->start_timeout_ms * 1000;
  GPid pid = 0;
  g_auto(FerryFd) master = -1;
  gboolean crun_exited = FALSE;
  g_autoptr(GError) failure = NULL;
  /* A console socket that fails is mostly crun failing: its log says why, once it
   * has exited, so this error is kept for when the log is silent. */
  g_autoptr(GError) console_error = NULL;
  for (;;) {
    if (pid == 0)
      pid = read_pid_file(files->pid_path);
    gboolean want_console = spec->terminal && master < 0 && console_error == NULL;
    if (want_console)
      (void)accept_console(listen_fd, runtime->start_timeout_ms, &master, &console_error);
    if (pid > 0 && (!spec->terminal || master >= 0))
      break;
    if (pid > 0 && console_error != NULL) {
      failure = g_steal_pointer(&console_error); /* started, but without its terminal */
      break;
    }
    if (crun_exited)
      break;
    gint64 remaining_ms = (deadline - g_get_monotonic_time()) / 1000;
    if (remaining_ms <= 0) {
      g_set_error(&failure, FERRY_ERROR, FERRY_ERROR_DEADLINE_EXCEEDED,
                  "crun did not start the process within %u ms", runtime->start_timeout_ms);
      break;
    }
    struct pollfd pfd[3] = {
      { .fd = inotify_fd, .events = POLLIN },
      { .fd = crun_pidfd, .events = POLLIN },
      { .fd = spec->terminal && master < 0 && console_error == NULL ? listen_fd : -1,
        .events = POLLIN },
    };
    /* Without a pidfd, look at crun now and then. */
    int timeout = crun_pidfd >= 0 ? (int)MIN(remaining_ms, G_MAXINT) : (int)MIN(remaining_ms, 10);
    if (poll(pfd, G_N_ELEMENTS(pfd), timeout) < 0 && errno != EINTR) {
      ferry_error_set_errno(&failure, errno, "poll");
      break;
    }
    drain_inotify(inotify_fd);
    /* One more look at the pid file and the socket after crun has gone: the
     * process may have started, and even ended, already. */
    crun_exited = child_has_exited(crun_pid);
  }

  if (failure == NULL && pid > 0 && (!spec->terminal || master >= 0)) {
    int terminal_copy = -1;
    if (master >= 0) {
      /* crun applied consoleSize already; this is a no-op then, and no SIGWINCH. */
      if (!runtime_set_winsize(master, spec->rows, spec->cols, &failure) ||
          !ferry_fd_set_nonblocking(master, TRUE, &failure))
        goto fail;
      terminal_copy = fcntl(master, F_DUPFD_CLOEXEC, 3);
      if (terminal_copy < 0) {
        ferry_error_set_errno(&failure, errno, "copy pty master");
        goto fail;
      }
      caller.terminal_fd = ferry_fd_steal(&master);
    }
    /* The process may be gone already (crun reaped it): no pidfd then, and signals
     * report NOT_FOUND. */
    int pidfd = pidfd_open(pid, 0);
    g_autofree char *pid_str = g_strdup_printf("%d", (int)pid);
    ferry_log(FERRY_LOG_DEBUG, "container process started", "pid", pid_str, "what", what, NULL);
    *stdio = caller;
    return runtime_process_new(crun_pid, pid, pidfd, terminal_copy);
  }

fail:
  /* A process that did start (we gave up waiting for its pty) must not outlive the
   * failure: crun, killed, would leave it running. crun has not reaped it yet, so the
   * pid is still its. */
  if (pid > 0 && !crun_exited) {
    g_auto(FerryFd) orphan = pidfd_open(pid, 0);
    if (orphan >= 0)
      pidfd_send_signal(orphan, SIGKILL, NULL, 0);
  }
  if (!crun_exited && crun_pidfd >= 0)
    pidfd_send_signal(crun_pidfd, SIGKILL, NULL, 0);
  else if (!crun_exited)
    kill(crun_pid, SIGKILL);
  int wait_status = reap_child(crun_pid);
  ferry_process_stdio_close(&caller);
  if (failure != NULL) {
    g_set_error(error, failure->domain, failure->code, "%s: %s", what, failure->message);
    return NULL;
  }
  g_autofree char *message = read_log_tail(files->log_path);
  if (message == NULL && console_error != NULL) {
    g_set_error(error, console_error->domain, console_error->code, "%s: %s", what,
                console_error->message);
    return NULL;
  }
  g_set_error(error, FERRY_ERROR, code_from_message(message), "%s: crun exited with %d%s%s", what,
              ferry_process_exit_code_from_wait_status(wait_status), message != NULL ? ": " : "",
              message != NULL ? message : "");
  return NULL;
}

static json_t *string_array(const char *const *strv)
{
  json_t *array = json_array();
  for (const char *const *s = strv; s != NULL && *s != NULL; s++)
    json_array_append_new(array, json_string(*s));
  return array;
}

/* Write the spec's fields into an OCI process object. `keep` leaves out the fields
 * the spec does not set (the init keeps config.json's). */
static gboolean apply_spec(json_t *process, const FerryProcessSpec *spec, gboolean keep,
                           GError **error)
{
  for (const char *const *s = spec->argv; s != NULL && *s != NULL; s++) {
    if (!g_utf8_validate(*s, -1, NULL))
      goto not_utf8;
  }
  for (const char *const *s = spec->env; s != NULL && *s != NULL; s++) {
    if (!g_utf8_validate(*s, -1, NULL))
      goto not_utf8;
  }
  if (spec->cwd != NULL && !g_utf8_validate(spec->cwd, -1, NULL))
    goto not_utf8;

  if (spec->argv != NULL || !keep)
    json_object_set_new(process, "args", string_array(spec->argv));
  if (spec->env != NULL || !keep)
    json_object_set_new(process, "env", string_array(spec->env));
  if (spec->cwd != NULL || !keep)
    json_object_set_new(process, "cwd", json_string(spec->cwd != NULL ? spec->cwd : "/"));
  if (spec->has_user || !keep)
    json_object_set_new(
        process, "user",
        json_pack("{s:I, s:I}", "uid", (json_int_t)spec->uid, "gid", (json_int_t)spec->gid));
  json_object_set_new(process, "terminal", json_boolean(spec->terminal));
  if (spec->terminal)
    json_object_set_new(
        process, "consoleSize",
        json_pack("{s:i, s:i}", "height", (int)spec->rows, "width", (int)spec->cols));
  else
    json_object_del(process, "consoleSize");
  return TRUE;

not_utf8:
  g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
              "process spec: argv, env and cwd must be UTF-8 for crun");
  return FALSE;
}

/* The options both commands end with, and the container id. */
static gboolean finish_argv(GPtrArray *argv, StartFiles *files, const FerryProcessSpec *spec,
                            const char *id, int *listen_fd, GError **error)
{
  g_ptr_array_add(argv, g_strdup_printf("--pid-file=%s", files->pid_path));
  if (spec->terminal) {
    files->socket_path = g_build_filename(files->dir, "tty.sock", NULL);
    *listen_fd = console_socket_listen(files->socket_path, error);
    if (*listen_fd < 0)
      return FALSE;
    g_ptr_array_add(argv, g_strdup_printf("--console-socket=%s", files->socket_path));
  }
  g_ptr_array_add(argv, g_strdup(id));
  g_ptr_array_add(argv, NULL);
  return TRUE;
}

FerryProcess *ferry_runtime_run_container(FerryRuntime *runtime, const char *id, const char *bundle,
                                          const FerryProcessSpec *spec, FerryProcessStdio *stdio,
                                          GError **error)
{
  *stdio = (FerryProcessStdio){ -1, -1, -1, -1 };
  if (!check_id(id, error))
    return NULL;
  g_autofree char *what = g_strdup_printf("crun run container %s", id);
  if (container_known(runtime, id)) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_ALREADY_EXISTS, "%s: it exists already", what);
    return NULL;
  }
  if (bundle == NULL || !g_file_test(bundle, G_FILE_TEST_IS_DIR)) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND, "%s: bundle %s is not a directory", what,
                bundle != NULL ? bundle : "(null)");
    return NULL;
  }
  g_autofree char *bundle_abs = g_canonicalize_filename(bundle, NULL);
  g_autofree char *config_path = g_build_filename(bundle_abs, "config.json", NULL);
  json_error_t jerr;
  g_autoptr(json_t) config = json_load_file(config_path, JSON_REJECT_DUPLICATES, &jerr);
  if (config == NULL || !json_is_object(config)) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "%s: read %s: %s", what,
                config_path, config == NULL ? jerr.text : "not a JSON object");
    return NULL;
  }
  json_t *process = json_object_get(config, "process");
  if (process == NULL) {
    process = json_object();
    json_object_set_new(config, "process", process);
  } else if (!json_is_object(process)) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                "%s: %s: process is not an object", what, config_path);
    return NULL;
  }
  if (!apply_spec(process, spec, TRUE, error))
    return NULL;

  g_autoptr(StartFiles) files = start_files_new(runtime, "config.json", error);
  if (files == NULL || !write_json(config, files->spec_path, error))
    return NULL;
  g_autoptr(GPtrArray) argv = crun_argv_new(runtime, files->log_path);
  g_ptr_array_add(argv, g_strdup("run"));
  g_ptr_array_add(argv, g_strdup_printf("--bundle=%s", bundle_abs));
  g_ptr_array_add(argv, g_strdup_printf("--config=%s", files->spec_path));
  g_auto(FerryFd) listen_fd = -1;
  if (!finish_argv(argv, files, spec, id, &listen_fd, error))
    return NULL;
  FerryProcess *init = crun_start(runtime, what, argv, files, listen_fd, spec, stdio, error);
  if (init != NULL)
    g_hash_table_replace(
        runtime->inits, g_strdup(id),
        runtime_init_new(config, ferry_process_get_pid(init), runtime_process_dup_pidfd(init)));
  /* crun cleans up after its own failures, but not when it was killed for taking too
   * long; the id was free before this attempt, so what is there now is its debris. */
  if (init == NULL && container_known(runtime, id)) {
    const char *args[] = { "delete", "--force", id, NULL };
    (void)crun_sync(runtime, what, args, NULL, NULL);
  }
  return init;
}

FerryProcess *ferry_runtime_exec_in_container(FerryRuntime *runtime, const char *id,
                                              const FerryProcessSpec *spec,
                                              FerryProcessStdio *stdio, GError **error)
{
  *stdio = (FerryProcessStdio){ -1, -1, -1, -1 };
  if (!check_id(id, error))
    return NULL;
  g_autofree char *what = g_strdup_printf("crun exec in container %s", id);
  if (spec->argv == NULL || spec->argv[0] == NULL) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "%s: no argv", what);
    return NULL;
  }
  if (!container_known(runtime, id)) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND, "%s: no such container", what);
    return NULL;
  }
  const RuntimeInit *init = g_hash_table_lookup(runtime->inits, id);
  const char *needs_crun = runtime->exec_with_crun ? "the runtime was told to" : NULL;
  if (init == NULL && needs_crun == NULL)
    needs_crun = "its init was not started by this runtime";
  if (needs_crun == NULL) {
    g_autoptr(GError) local = NULL;
    FerryProcess *entered =
        runtime_enter(init, id, spec, runtime->start_timeout_ms, stdio, &needs_crun, &local);
    if (entered != NULL || needs_crun == NULL) {
      if (local != NULL)
        g_propagate_prefixed_error(error, g_steal_pointer(&local), "exec in container %s: ", id);
      return entered;
    }
  }
  ferry_log(FERRY_LOG_DEBUG, "exec through crun", "container", id, "why", needs_crun, NULL);

  g_autoptr(json_t) process = json_object();
  if (!apply_spec(process, spec, FALSE, error))
    return NULL;

  g_autoptr(StartFiles) files = start_files_new(runtime, "process.json", error);
  if (files == NULL || !write_json(process, files->spec_path, error))
    return NULL;
  g_autoptr(GPtrArray) argv = crun_argv_new(runtime, files->log_path);
  g_ptr_array_add(argv, g_strdup("exec"));
  g_ptr_array_add(argv, g_strdup_printf("--process=%s", files->spec_path));
  g_auto(FerryFd) listen_fd = -1;
  if (!finish_argv(argv, files, spec, id, &listen_fd, error))
    return NULL;
  g_autoptr(GError) local = NULL;
  FerryProcess *started = crun_start(runtime, what, argv, files, listen_fd, spec, stdio, &local);
  if (started == NULL) {
    /* The container may have gone between the check and crun's look. */
    if (!container_known(runtime, id) && local->domain == FERRY_ERROR)
      local->code = FERRY_ERROR_NOT_FOUND;
    g_propagate_error(error, g_steal_pointer(&local));
  }
  return started;
}

/* ---- short commands ---- */

gboolean ferry_runtime_kill_container(FerryRuntime *runtime, const char *id, int signum,
                                      gboolean all, GError **error)
{
  if (!check_id(id, error))
    return FALSE;
  if (!container_known(runtime, id))
    return not_found(id, error);
  g_autofree char *what = g_strdup_printf("crun kill container %s", id);
  g_autofree char *sig = g_strdup_printf("%d", signum);
  const char *args_all[] = { "kill", "--all", id, sig, NULL };
  const char *args_init[] = { "kill", id, sig, NULL };
  g_autoptr(GError) local = NULL;
  if (crun_sync(runtime, what, all ? args_all : args_init, NULL, &local))
    return TRUE;
  if (!container_known(runtime, id))
    return not_found(id, error);
  g_propagate_error(error, g_steal_pointer(&local));
  return FALSE;
}

/* `crun pause|resume id`: the container's cgroup freezer. */
static gboolean freeze(FerryRuntime *runtime, const char *id, const char *verb, GError **error)
{
  if (!check_id(id, error))
    return FALSE;
  if (!container_known(runtime, id))
    return not_found(id, error);
  g_autofree char *what = g_strdup_printf("crun %s container %s", verb, id);
  const char *args[] = { verb, id, NULL };
  return crun_sync(runtime, what, args, NULL, error);
}

gboolean ferry_runtime_pause_container(FerryRuntime *runtime, const char *id, GError **error)
{
  return freeze(runtime, id, "pause", error);
}

gboolean ferry_runtime_resume_container(FerryRuntime *runtime, const char *id, GError **error)
{
  return freeze(runtime, id, "resume", error);
}

gboolean ferry_runtime_update_container(FerryRuntime *runtime, const char *id, json_t *resources,
                                        GError **error)
{
  if (!check_id(id, error))
    return FALSE;
  if (!container_known(runtime, id))
    return not_found(id, error);
  if (!json_is_object(resources)) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                "update container %s: the resources are not an object", id);
    return FALSE;
  }
  /* crun reads the resources from a file. */
  g_autofree char *path = NULL;
  int fd = g_file_open_tmp("ferry-resources-XXXXXX.json", &path, error);
  if (fd < 0)
    return FALSE;
  close(fd);
  g_autofree char *text = json_dumps(resources, JSON_COMPACT);
  gboolean ok = g_file_set_contents(path, text, -1, error);
  if (ok) {
    g_autofree char *what = g_strdup_printf("crun update container %s", id);
    g_autofree char *arg = g_strdup_printf("--resources=%s", path);
    const char *args[] = { "update", arg, id, NULL };
    ok = crun_sync(runtime, what, args, NULL, error);
  }
  unlink(path);
  return ok;
}

gboolean ferry_runtime_delete_container(FerryRuntime *runtime, const char *id, GError **error)
{
  if (!check_id(id, error))
    return FALSE;
  if (!container_known(runtime, id)) {
    g_hash_table_remove(runtime->inits, id);
    return TRUE;
  }
  g_autofree char *what = g_strdup_printf("crun delete container %s", id);
  const char *args[] = { "delete", "--force", id, NULL };
  g_autoptr(GError) local = NULL;
  if (crun_sync(runtime, what, args, NULL, &local) || !container_known(runtime, id)) {
    g_hash_table_remove(runtime->inits, id);
    return TRUE;
  }
  g_propagate_error(error, g_steal_pointer(&local));
  return FALSE;
}

gboolean ferry_runtime_get_container_state(FerryRuntime *runtime, const char *id,
                                           FerryContainerStatus *status, GPid *pid, GError **error)
{
  static const struct {
    const char *name;
    FerryContainerStatus status;
  } names[] = {
    { "created", FERRY_CONTAINER_CREATED },
    { "running", FERRY_CONTAINER_RUNNING },
    { "paused", FERRY_CONTAINER_PAUSED },
    { "stopped", FERRY_CONTAINER_STOPPED },
  };
  if (!check_id(id, error))
    return FALSE;
  if (!container_known(runtime, id))
    return not_found(id, error);
  g_autofree char *what = g_strdup_printf("crun state of container %s", id);
  const char *args[] = { "state", id, NULL };
  g_autofree char *out = NULL;
  g_autoptr(GError) local = NULL;
  if (!crun_sync(runtime, what, args, &out, &local)) {
    if (!container_known(runtime, id))
      return not_found(id, error);
    g_propagate_error(error, g_steal_pointer(&local));
    return FALSE;
  }
  g_autoptr(json_t) state = ferry_json_parse_object(what, out, strlen(out), error);
  const char *name = NULL;
  gint64 init_pid = 0;
  if (state == NULL || !ferry_json_get_string(state, "status", TRUE, &name, error) ||
      !ferry_json_get_int64(state, "pid", FALSE, &init_pid, error))
    return FALSE;
  for (gsize i = 0; i < G_N_ELEMENTS(names); i++) {
    if (strcmp(name, names[i].name) == 0) {
      if (status != NULL)
        *status = names[i].status;
      if (pid != NULL)
        *pid = (GPid)CLAMP(init_pid, 0, G_MAXINT32);
      return TRUE;
    }
  }
  g_set_error(error, FERRY_ERROR, FERRY_ERROR_UNKNOWN, "%s: unknown status \"%s\"", what, name);
  return FALSE;
}
