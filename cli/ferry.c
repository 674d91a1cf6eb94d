/*
 * ferry: sandboxes without containerd (docs/cli.md). It starts Ferry's shim exactly as
 * containerd does (the shim's `start` in the sandbox's bundle, then the Task API over
 * ttrpc at the address it prints) and holds no state the shim holds: a sandbox is a
 * directory under --root with its bundle, the shim's address and the logs of detached
 * processes.
 *
 *   ferry [--root DIR] run [--name N] [-d] [-i] [-e K=V]... [-w DIR] [-u UID[:GID]]
 *         [--memory MB] [--cpus N] [--annotation K=V]... ROOTFS [CMD [ARG...]]
 *   ferry exec [-d] [-i] [-e K=V]... NAME CMD [ARG...]
 *   ferry ps [-a] [--json]       ferry logs NAME       ferry kill [-s SIGNAL] NAME
 *   ferry stop [-t SECONDS] NAME ferry rm [-f] NAME... ferry inspect NAME
 *   ferry version
 *
 * Exit status as docker's CLI: 125 for ferry's own errors, 126/127 for a command that
 * cannot run, else the container's.
 */
#include <errno.h>
#include <fcntl.h>
#include <gio/gio.h>
#include <glib-unix.h>
#include <glib/gstdio.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include "containerd/task/v2/shim.pb-c.h"
#include "ferry/error.h"
#include "ferry/fd.h"
#include "ferry/json.h"
#include "ferry/node.h"
#include "ferry/tls.h"
#include "ferry/ttrpc.h"
#include "ferry/vm-builder.h"

#define EXIT_FERRY 125
#define TASK_SERVICE "containerd.task.v2.Task"
#define NAMESPACE "ferry"
#define FERRY_VERSION "0.1"

static char *root_dir;
static char *shim_path;

static int fail(const char *fmt, ...) G_GNUC_PRINTF(1, 2);
static char *logger_uri(const char *logs_dir, const char *name);
static int fail(const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  g_autofree char *msg = g_strdup_vprintf(fmt, ap);
  va_end(ap);
  g_printerr("ferry: %s\n", msg);
  return EXIT_FERRY;
}

/* ------------------------------------------------------------ sandboxes -- */

static char *sandbox_dir(const char *name)
{
  return g_build_filename(root_dir, "sandboxes", name, NULL);
}

static gboolean valid_name(const char *name)
{
  if (name == NULL || name[0] == '\0' || strlen(name) > 64 || name[0] == '.' || name[0] == '-')
    return FALSE;
  for (const char *p = name; *p != '\0'; p++)
    if (!g_ascii_isalnum(*p) && *p != '_' && *p != '-' && *p != '.')
      return FALSE;
  return TRUE;
}

/* The shim serving sandbox `name`, or NULL with a message saying what to do. */
static FerryTtrpcClient *connect_sandbox(const char *name, gboolean quiet)
{
  g_autofree char *dir = sandbox_dir(name);
  if (!g_file_test(dir, G_FILE_TEST_IS_DIR)) {
    if (!quiet)
      fail("no sandbox named \"%s\" (ferry ps -a lists them)", name);
    return NULL;
  }
  g_autofree char *path = g_build_filename(dir, "bundle", "address", NULL);
  g_autofree char *address = NULL;
  g_autoptr(GError) error = NULL;
  if (!g_file_get_contents(path, &address, NULL, NULL)) {
    if (!quiet)
      fail("sandbox \"%s\" has no shim address: its shim never started (ferry rm %s)", name, name);
    return NULL;
  }
  FerryTtrpcClient *c = ferry_ttrpc_client_connect_unix(g_strstrip(address), &error);
  if (c == NULL && !quiet)
    fail("the shim of sandbox \"%s\" is gone (%s); ferry rm %s cleans up after it", name,
         error->message, name);
  return c;
}

static ProtobufCMessage *call(FerryTtrpcClient *c, const char *method, const ProtobufCMessage *req,
                              const ProtobufCMessageDescriptor *desc, GError **error)
{
  /* Generous: a Create boots the VM (seconds under TCG). */
  FerryTtrpcCallOptions options = { .timeout_ns = 300 * G_GINT64_CONSTANT(1000000000) };
  return ferry_ttrpc_client_call_sync(c, TASK_SERVICE, method, req, desc, &options, error);
}

/* The state of sandbox `name`'s init: "running", "stopped", ... or NULL (no shim). */
static Containerd__Task__V2__StateResponse *task_state(FerryTtrpcClient *c, const char *id,
                                                       const char *exec_id, GError **error)
{
  Containerd__Task__V2__StateRequest req = CONTAINERD__TASK__V2__STATE_REQUEST__INIT;
  req.id = (char *)id;
  req.exec_id = (char *)exec_id;
  return (Containerd__Task__V2__StateResponse *)call(
      c, "State", &req.base, &containerd__task__v2__state_response__descriptor, error);
}

static const char *status_name(Containerd__V1__Types__Status s)
{
  switch (s) {
  case CONTAINERD__V1__TYPES__STATUS__CREATED:
    return "created";
  case CONTAINERD__V1__TYPES__STATUS__RUNNING:
    return "running";
  case CONTAINERD__V1__TYPES__STATUS__STOPPED:
    return "stopped";
  case CONTAINERD__V1__TYPES__STATUS__PAUSED:
    return "paused";
  case CONTAINERD__V1__TYPES__STATUS__PAUSING:
    return "pausing";
  default:
    return "unknown";
  }
}

/* ------------------------------------------------------------ the spec -- */

typedef struct {
  char *name;
  gboolean detach, interactive, tty;
  GPtrArray *env;         /* K=V */
  GPtrArray *annotations; /* K=V */
  char *cwd;
  char *user;
  guint memory_mb, cpus;
} RunOpts;

static void run_opts_clear(RunOpts *o)
{
  g_free(o->name);
  g_free(o->cwd);
  g_free(o->user);
  g_clear_pointer(&o->env, g_ptr_array_unref);
  g_clear_pointer(&o->annotations, g_ptr_array_unref);
}
G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC(RunOpts, run_opts_clear)

static gboolean parse_user(const char *text, json_t *user, GError **error)
{
  g_auto(GStrv) parts = g_strsplit(text, ":", 2);
  guint64 uid, gid = 0;
  if (!g_ascii_string_to_unsigned(parts[0], 10, 0, G_MAXUINT32 - 1, &uid, NULL) ||
      (parts[1] != NULL &&
       !g_ascii_string_to_unsigned(parts[1], 10, 0, G_MAXUINT32 - 1, &gid, NULL))) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                "-u %s: a numeric UID[:GID] (names would need the image's passwd)", text);
    return FALSE;
  }
  json_object_set_new(user, "uid", json_integer((json_int_t)uid));
  json_object_set_new(user, "gid", json_integer((json_int_t)gid));
  return TRUE;
}

static json_t *process_spec(char **argv, int argc, GPtrArray *env, const char *cwd,
                            const char *user, GError **error)
{
  json_t *args = json_array();
  if (argc == 0)
    json_array_append_new(args, json_string("sh"));
  for (int i = 0; i < argc; i++)
    json_array_append_new(args, json_string(argv[i]));
  json_t *envs = json_array();
  json_array_append_new(
      envs, json_string("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"));
  for (guint i = 0; env != NULL && i < env->len; i++)
    json_array_append_new(envs, json_string(env->pdata[i]));
  g_autoptr(json_t) u = json_pack("{s:i, s:i}", "uid", 0, "gid", 0);
  if (user != NULL && !parse_user(user, u, error)) {
    json_decref(args);
    json_decref(envs);
    return NULL;
  }
  return json_pack("{s:b, s:O, s:o, s:o, s:s, s:b}", "terminal", 0, "user", u, "args", args, "env",
                   envs, "cwd", cwd != NULL ? cwd : "/", "noNewPrivileges", 1);
}

static json_t *sandbox_spec(const char *name, const char *rootfs, json_t *process, const RunOpts *o)
{
  json_t *ann = json_object();
  for (guint i = 0; i < o->annotations->len; i++) {
    g_auto(GStrv) kv = g_strsplit(o->annotations->pdata[i], "=", 2);
    json_object_set_new(ann, kv[0], json_string(kv[1] != NULL ? kv[1] : ""));
  }
  if (o->memory_mb > 0)
    json_object_set_new(ann, "io.ferry.vm.memory-mb", json_sprintf("%u", o->memory_mb));
  if (o->cpus > 0)
    json_object_set_new(ann, "io.ferry.vm.cpus", json_sprintf("%u", o->cpus));
  g_autofree char *cgroup = g_strdup_printf("/ferry/%s", name);
  return json_pack(
      "{s:s, s:o, s:{s:s, s:b}, s:s, s:o,"
      " s:[{s:s, s:s, s:s}, {s:s, s:s, s:s, s:[s,s,s]}, {s:s, s:s, s:s, s:[s,s,s,s,s]},"
      "    {s:s, s:s, s:s, s:[s,s,s]}, {s:s, s:s, s:s, s:[s,s,s,s]}],"
      " s:{s:s, s:[{s:s}, {s:s}, {s:s}, {s:s}, {s:s}]}}",
      "ociVersion", "1.0.2", "process", process, "root", "path", rootfs, "readonly", 0, "hostname",
      name, "annotations", ann, "mounts", "destination", "/proc", "type", "proc", "source", "proc",
      "destination", "/dev", "type", "tmpfs", "source", "tmpfs", "options", "nosuid", "mode=755",
      "size=65536k", "destination", "/dev/pts", "type", "devpts", "source", "devpts", "options",
      "nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "destination", "/dev/shm",
      "type", "tmpfs", "source", "shm", "options", "nosuid", "noexec", "nodev", "destination",
      "/sys", "type", "sysfs", "source", "sysfs", "options", "nosuid", "noexec", "nodev", "ro",
      "linux", "cgroupsPath", cgroup, "namespaces", "type", "pid", "type", "ipc", "type", "uts",
      "type", "mount", "type", "network");
}

/* ------------------------------------------------------------ stdio -- */

/* Attached stdio through FIFOs the shim opens: ours are opened first (the outputs
 * read-only non-blocking, so the shim's write-only open finds a reader). */
typedef struct {
  char *paths[3];
  int fds[3];
  gboolean eof[2];
  GMainLoop *loop;
  gboolean exited;
  guint32 status;
  gboolean tty; /* one stream (stdout) carries the terminal; stderr is none */
  FerryTtrpcClient *client;
  const char *id, *exec_id;
} Attach;

/* The local terminal in raw mode while a -t process runs; restored on every way out. */
static struct termios saved_termios;
static gboolean termios_saved;

static void restore_terminal(void)
{
  if (termios_saved) {
    tcsetattr(STDIN_FILENO, TCSANOW, &saved_termios);
    termios_saved = FALSE;
  }
}

static void raw_terminal(void)
{
  if (!isatty(STDIN_FILENO) || tcgetattr(STDIN_FILENO, &saved_termios) != 0)
    return;
  termios_saved = TRUE;
  atexit(restore_terminal);
  struct termios raw = saved_termios;
  cfmakeraw(&raw);
  tcsetattr(STDIN_FILENO, TCSANOW, &raw);
}

/* The local window's size to the process's terminal. */
static void send_window_size(Attach *a)
{
  struct winsize ws;
  if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) != 0 && ioctl(STDIN_FILENO, TIOCGWINSZ, &ws) != 0)
    return;
  Containerd__Task__V2__ResizePtyRequest req = CONTAINERD__TASK__V2__RESIZE_PTY_REQUEST__INIT;
  req.id = (char *)a->id;
  req.exec_id = (char *)a->exec_id;
  req.width = ws.ws_col;
  req.height = ws.ws_row;
  ProtobufCMessage *r =
      ferry_ttrpc_client_call_sync(a->client, TASK_SERVICE, "ResizePty", &req.base,
                                   &google__protobuf__empty__descriptor, NULL, NULL);
  if (r != NULL)
    protobuf_c_message_free_unpacked(r, NULL);
}

static gboolean on_winch(gpointer ud)
{
  send_window_size(ud);
  return G_SOURCE_CONTINUE;
}

static gboolean attach_make(Attach *a, const char *dir, const char *tag, gboolean with_stdin,
                            gboolean tty, GError **error)
{
  const char *names[3] = { "stdin", "stdout", "stderr" };
  a->tty = tty;
  a->eof[1] = tty;
  for (int i = 0; i < 3; i++) {
    a->fds[i] = -1;
    if ((i == 0 && !with_stdin) || (i == 2 && tty))
      continue;
    a->paths[i] = g_strdup_printf("%s/%s-%s", dir, tag, names[i]);
    unlink(a->paths[i]);
    if (mkfifo(a->paths[i], 0600) != 0)
      return ferry_error_set_errno(error, errno, "mkfifo %s", a->paths[i]);
  }
  for (int i = 1; i < 3; i++)
    if (a->paths[i] != NULL &&
        (a->fds[i] = open(a->paths[i], O_RDONLY | O_NONBLOCK | O_CLOEXEC)) < 0)
      return ferry_error_set_errno(error, errno, "open %s", a->paths[i]);
  if (with_stdin && (a->fds[0] = open(a->paths[0], O_RDWR | O_NONBLOCK | O_CLOEXEC)) < 0)
    return ferry_error_set_errno(error, errno, "open %s", a->paths[0]);
  return TRUE;
}

static void attach_clear(Attach *a)
{
  for (int i = 0; i < 3; i++) {
    ferry_fd_clear(&a->fds[i]);
    if (a->paths[i] != NULL)
      unlink(a->paths[i]);
    g_clear_pointer(&a->paths[i], g_free);
  }
}

static gboolean maybe_quit(Attach *a)
{
  if (a->exited && a->eof[0] && a->eof[1])
    g_main_loop_quit(a->loop);
  return G_SOURCE_REMOVE;
}

static gboolean on_output(gint fd, GIOCondition cond, gpointer ud)
{
  Attach *a = ud;
  int which = fd == a->fds[1] ? 0 : 1;
  char buf[65536];
  ssize_t n = read(fd, buf, sizeof(buf));
  if (n > 0) {
    FILE *out = which == 0 ? stdout : stderr;
    fwrite(buf, 1, (size_t)n, out);
    fflush(out);
    return G_SOURCE_CONTINUE;
  }
  if (n < 0 && (errno == EAGAIN || errno == EINTR))
    return G_SOURCE_CONTINUE;
  /* EOF: every writer (the shim) closed it. */
  a->eof[which] = TRUE;
  maybe_quit(a);
  return G_SOURCE_REMOVE;
}

static gboolean on_input(gint fd, GIOCondition cond, gpointer ud)
{
  Attach *a = ud;
  char buf[65536];
  ssize_t n = read(STDIN_FILENO, buf, sizeof(buf));
  if (n > 0) {
    for (ssize_t off = 0; off < n;) {
      ssize_t w = write(a->fds[0], buf + off, (size_t)(n - off));
      if (w < 0 && errno == EAGAIN) {
        struct pollfd p = { .fd = a->fds[0], .events = POLLOUT };
        poll(&p, 1, -1);
        continue;
      }
      if (w <= 0)
        break;
      off += w;
    }
    return G_SOURCE_CONTINUE;
  }
  ferry_fd_clear(&a->fds[0]); /* the process's end of file */
  return G_SOURCE_REMOVE;
}

static void on_waited(FerryTtrpcClient *client, const ProtobufCMessage *response,
                      const GError *error, gpointer ud)
{
  Attach *a = ud;
  a->exited = TRUE;
  a->status = error == NULL ? ((const Containerd__Task__V2__WaitResponse *)response)->exit_status
                            : EXIT_FERRY;
  if (error != NULL)
    g_printerr("ferry: wait: %s\n", error->message);
  /* Output written before the exit is still in the FIFOs: read it to the end. */
  maybe_quit(a);
}

/* Relay until the process exited and its output ended; its status. */
static guint32 attach_run(Attach *a, FerryTtrpcClient *c, const char *id, const char *exec_id)
{
  a->loop = g_main_loop_new(NULL, FALSE);
  a->client = c;
  a->id = id;
  a->exec_id = exec_id;
  g_unix_fd_add(a->fds[1], G_IO_IN | G_IO_HUP, on_output, a);
  if (a->fds[2] >= 0)
    g_unix_fd_add(a->fds[2], G_IO_IN | G_IO_HUP, on_output, a);
  if (a->fds[0] >= 0)
    g_unix_fd_add(STDIN_FILENO, G_IO_IN | G_IO_HUP, on_input, a);
  guint winch = 0;
  if (a->tty) {
    raw_terminal();
    send_window_size(a);
    winch = g_unix_signal_add(SIGWINCH, on_winch, a);
  }
  Containerd__Task__V2__WaitRequest req = CONTAINERD__TASK__V2__WAIT_REQUEST__INIT;
  req.id = (char *)id;
  req.exec_id = (char *)exec_id;
  ferry_ttrpc_client_call(c, TASK_SERVICE, "Wait", &req.base,
                          &containerd__task__v2__wait_response__descriptor, NULL, on_waited, a);
  g_main_loop_run(a->loop);
  if (winch != 0)
    g_source_remove(winch);
  restore_terminal();
  g_main_loop_unref(a->loop);
  return a->status;
}

/* ------------------------------------------------------------ the shim -- */

/* `start` the shim in `bundle` as containerd does; TRUE once it printed its address. */
static gboolean shim_start(const char *name, const char *bundle, GError **error)
{
  const char *argv[] = { shim_path, "-namespace", NAMESPACE, "-address", "",  "-publish-binary",
                         "",        "-id",        name,      "start",    NULL };
  g_autoptr(GSubprocessLauncher) l =
      g_subprocess_launcher_new(G_SUBPROCESS_FLAGS_STDIN_PIPE | G_SUBPROCESS_FLAGS_STDOUT_PIPE |
                                G_SUBPROCESS_FLAGS_STDERR_PIPE);
  g_subprocess_launcher_set_cwd(l, bundle);
  g_autofree char *run = g_build_filename(root_dir, "shim", NULL);
  if (g_getenv("FERRY_SHIM_RUN_DIR") == NULL)
    g_subprocess_launcher_setenv(l, "FERRY_SHIM_RUN_DIR", run, TRUE);
  g_autoptr(GSubprocess) p = g_subprocess_launcher_spawnv(l, argv, error);
  if (p == NULL)
    return FALSE;
  g_autoptr(GBytes) out = NULL, err = NULL;
  g_autoptr(GBytes) in = g_bytes_new_static("", 0);
  if (!g_subprocess_communicate(p, in, NULL, &out, &err, error))
    return FALSE;
  if (!g_subprocess_get_if_exited(p) || g_subprocess_get_exit_status(p) != 0) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INTERNAL, "the shim %s did not start: %.*s",
                shim_path, (int)g_bytes_get_size(err), (const char *)g_bytes_get_data(err, NULL));
    return FALSE;
  }
  return TRUE;
}

/* `delete` after a shim that is gone, as containerd does: it kills the VM it recorded. */
static void shim_delete(const char *name, const char *bundle)
{
  const char *argv[] = { shim_path, "-namespace", NAMESPACE, "-id", name,
                         "-bundle", bundle,       "delete",  NULL };
  g_autoptr(GSubprocess) p = g_subprocess_newv(
      argv, G_SUBPROCESS_FLAGS_STDOUT_SILENCE | G_SUBPROCESS_FLAGS_STDERR_SILENCE, NULL);
  if (p != NULL)
    g_subprocess_wait(p, NULL, NULL);
}

/* Delete the task, shut its shim down and remove the sandbox's directory. */
static void sandbox_remove(FerryTtrpcClient *c, const char *name)
{
  g_autofree char *dir = sandbox_dir(name);
  g_autofree char *bundle = g_build_filename(dir, "bundle", NULL);
  if (c != NULL) {
    Containerd__Task__V2__DeleteRequest del = CONTAINERD__TASK__V2__DELETE_REQUEST__INIT;
    del.id = (char *)name;
    ProtobufCMessage *r =
        call(c, "Delete", &del.base, &containerd__task__v2__delete_response__descriptor, NULL);
    if (r != NULL)
      protobuf_c_message_free_unpacked(r, NULL);
    Containerd__Task__V2__ShutdownRequest sd = CONTAINERD__TASK__V2__SHUTDOWN_REQUEST__INIT;
    sd.id = (char *)name;
    r = call(c, "Shutdown", &sd.base, &google__protobuf__empty__descriptor, NULL);
    if (r != NULL)
      protobuf_c_message_free_unpacked(r, NULL);
  }
  shim_delete(name, bundle); /* the VM of a dead shim; a no-op after a clean Shutdown */
  /* Not through a shell: --root may hold any character. */
  const char *rm_argv[] = { "rm", "-rf", "--", dir, NULL };
  g_spawn_sync(NULL, (char **)rm_argv, NULL, G_SPAWN_SEARCH_PATH, NULL, NULL, NULL, NULL, NULL,
               NULL);
}

/* ------------------------------------------------------------ commands -- */

/* docker's codes for a process that did not start: 127 not found, 126 not runnable
 * (crun's message carries the errno's text), else ferry's own 125. */
static int start_failure_status(const GError *error)
{
  if (strstr(error->message, "not found") != NULL || strstr(error->message, "No such file") != NULL)
    return 127;
  if (strstr(error->message, "Permission denied") != NULL ||
      strstr(error->message, "Exec format error") != NULL)
    return 126;
  return EXIT_FERRY;
}

/* --memory: MB, or with a unit (512m, 1g; k and b round up to whole MB). */
static gboolean parse_memory(const char *text, guint *mb)
{
  char *end = NULL;
  guint64 n = g_ascii_strtoull(text, &end, 10);
  if (end == text || n == 0)
    return FALSE;
  guint64 bytes;
  switch (g_ascii_tolower(*end)) {
  case '\0':
  case 'm':
    bytes = n << 20;
    break;
  case 'g':
    bytes = n << 30;
    break;
  case 'k':
    bytes = n << 10;
    break;
  case 'b':
    bytes = n;
    break;
  default:
    return FALSE;
  }
  if (*end != '\0' && end[1] != '\0' && !(g_ascii_tolower(end[1]) == 'b' && end[2] == '\0'))
    return FALSE;
  *mb = (guint)MIN((bytes + (1u << 20) - 1) >> 20, (guint64)G_MAXUINT32);
  return TRUE;
}

static gboolean take_value(int *i, int argc, char **argv, const char **out)
{
  if (*i + 1 >= argc)
    return FALSE;
  *out = argv[++*i];
  return TRUE;
}

static gboolean rootfs_ok(const char *path, char **abs, GError **error)
{
  g_autofree char *a = g_canonicalize_filename(path, NULL);
  if (!g_file_test(a, G_FILE_TEST_IS_DIR)) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND,
                "rootfs %s is neither a directory nor a tar archive of one", path);
    return FALSE;
  }
  const char *probes[] = { "bin", "usr/bin", "sbin" };
  gboolean looks = FALSE;
  for (gsize i = 0; i < G_N_ELEMENTS(probes) && !looks; i++) {
    g_autofree char *p = g_build_filename(a, probes[i], NULL);
    looks = g_file_test(p, G_FILE_TEST_IS_DIR);
  }
  if (!looks) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                "%s does not look like a root file system (no bin/, usr/bin/ or sbin/)", path);
    return FALSE;
  }
  *abs = g_steal_pointer(&a);
  return TRUE;
}

/* Once per run: a VM under TCG is slow, and the user should know why. */
static void say_if_tcg(void)
{
  if (ferry_vm_detect_accel(NULL, NULL, NULL) == FERRY_VM_ACCEL_TCG)
    g_printerr("ferry: /dev/kvm is not usable here: the VM runs under TCG (emulated, slower)\n");
}

static int cmd_run(int argc, char **argv)
{
  g_auto(RunOpts) o = { .env = g_ptr_array_new(), .annotations = g_ptr_array_new() };
  int i = 0;
  for (; i < argc && argv[i][0] == '-'; i++) {
    const char *a = argv[i], *v = NULL;
    if (g_str_equal(a, "-d") || g_str_equal(a, "--detach"))
      o.detach = TRUE;
    else if (g_str_equal(a, "-i") || g_str_equal(a, "--interactive"))
      o.interactive = TRUE;
    else if (g_str_equal(a, "-t") || g_str_equal(a, "--tty"))
      o.tty = TRUE;
    else if (g_str_equal(a, "-it") || g_str_equal(a, "-ti"))
      o.interactive = o.tty = TRUE;
    else if (g_str_equal(a, "--name") && take_value(&i, argc, argv, &v))
      o.name = g_strdup(v);
    else if (g_str_equal(a, "-e") && take_value(&i, argc, argv, &v))
      g_ptr_array_add(o.env, (char *)v);
    else if (g_str_equal(a, "--annotation") && take_value(&i, argc, argv, &v))
      g_ptr_array_add(o.annotations, (char *)v);
    else if (g_str_equal(a, "-w") && take_value(&i, argc, argv, &v))
      o.cwd = g_strdup(v);
    else if (g_str_equal(a, "-u") && take_value(&i, argc, argv, &v))
      o.user = g_strdup(v);
    else if (g_str_equal(a, "--memory") && take_value(&i, argc, argv, &v)) {
      if (!parse_memory(v, &o.memory_mb))
        return fail("run: --memory %s: a size in MB, or with a unit (512m, 1g)", v);
    } else if (g_str_equal(a, "--cpus") && take_value(&i, argc, argv, &v))
      o.cpus = (guint)g_ascii_strtoull(v, NULL, 10);
    else if (g_str_equal(a, "--"))
      break;
    else
      return fail("run: unknown or incomplete option %s (ferry help run)", a);
  }
  if (i < argc && g_str_equal(argv[i], "--"))
    i++;
  if (i >= argc)
    return fail("run: a ROOTFS is required (ferry run [OPTIONS] ROOTFS [CMD [ARG...]])");
  g_autoptr(GError) error = NULL;
  g_autofree char *rootfs = NULL;
  /* A tar of a root file system is unpacked into the sandbox's directory below. */
  g_autofree char *tarball = NULL;
  if (g_file_test(argv[i], G_FILE_TEST_IS_REGULAR))
    tarball = g_canonicalize_filename(argv[i], NULL);
  else if (!rootfs_ok(argv[i], &rootfs, &error))
    return fail("run: %s", error->message);
  i++;
  if (o.name == NULL) {
    g_autofree char *r = g_strdup_printf("%08x", g_random_int());
    o.name = g_strdup_printf("ferry-%s", r);
  }
  if (!valid_name(o.name))
    return fail("run: \"%s\" is not a name (letters, digits, _ - ., at most 64)", o.name);
  g_autofree char *dir = sandbox_dir(o.name);
  g_autofree char *bundle = g_build_filename(dir, "bundle", NULL);
  g_autofree char *parent = g_path_get_dirname(dir);
  g_mkdir_with_parents(parent, 0711);
  if (g_mkdir(dir, 0700) != 0) {
    if (errno == EEXIST)
      return fail("run: a sandbox named \"%s\" exists already (ferry rm %s)", o.name, o.name);
    return fail("run: create %s: %s", dir, g_strerror(errno));
  }
  g_mkdir(bundle, 0700);
  if (tarball != NULL) {
    g_autofree char *unpacked = g_build_filename(dir, "rootfs", NULL);
    g_mkdir(unpacked, 0755);
    const char *tar_argv[] = { "tar", "-xf", tarball, "-C", unpacked, NULL };
    g_autofree char *tar_err = NULL;
    gint wait_status = 0;
    if (!g_spawn_sync(NULL, (char **)tar_argv, NULL, G_SPAWN_SEARCH_PATH, NULL, NULL, NULL,
                      &tar_err, &wait_status, &error) ||
        !g_spawn_check_wait_status(wait_status, NULL)) {
      sandbox_remove(NULL, o.name);
      return fail("run: rootfs %s is neither a directory nor a tar archive of one (tar: %s)",
                  tarball, error != NULL ? error->message : g_strstrip(tar_err));
    }
    if (!rootfs_ok(unpacked, &rootfs, &error)) {
      sandbox_remove(NULL, o.name);
      return fail("run: the archive %s: %s", tarball, error->message);
    }
  }
  json_t *process = process_spec(argv + i, argc - i, o.env, o.cwd, o.user, &error);
  if (process == NULL) {
    sandbox_remove(NULL, o.name);
    return fail("run: %s", error->message);
  }
  g_autoptr(json_t) spec = sandbox_spec(o.name, rootfs, process, &o);
  g_autofree char *config = g_build_filename(bundle, "config.json", NULL);
  g_autofree char *text = json_dumps(spec, JSON_INDENT(2));
  if (!g_file_set_contents(config, text, -1, &error) || !shim_start(o.name, bundle, &error)) {
    sandbox_remove(NULL, o.name);
    return fail("run: %s", error->message);
  }
  FerryTtrpcClient *c = connect_sandbox(o.name, FALSE);
  if (c == NULL) {
    sandbox_remove(NULL, o.name);
    return EXIT_FERRY;
  }
  say_if_tcg();
  Attach a = { .fds = { -1, -1, -1 } };
  g_autofree char *logs = g_build_filename(dir, "logs", NULL);
  g_mkdir(logs, 0700);
  g_autofree char *out_uri = NULL;
  Containerd__Task__V2__CreateTaskRequest req = CONTAINERD__TASK__V2__CREATE_TASK_REQUEST__INIT;
  req.id = o.name;
  req.bundle = bundle;
  req.terminal = o.tty;
  if (o.detach) {
    out_uri = logger_uri(logs, "init");
    req.stdout = out_uri;
    req.stderr = out_uri;
  } else {
    if (!attach_make(&a, dir, "init", o.interactive, o.tty, &error)) {
      attach_clear(&a);
      sandbox_remove(c, o.name);
      return fail("run: %s", error->message);
    }
    req.stdin = a.paths[0];
    req.stdout = a.paths[1];
    req.stderr = a.paths[2];
  }
  ProtobufCMessage *r =
      call(c, "Create", &req.base, &containerd__task__v2__create_task_response__descriptor, &error);
  if (r != NULL) {
    protobuf_c_message_free_unpacked(r, NULL);
    Containerd__Task__V2__StartRequest start = CONTAINERD__TASK__V2__START_REQUEST__INIT;
    start.id = o.name;
    r = call(c, "Start", &start.base, &containerd__task__v2__start_response__descriptor, &error);
  }
  if (r == NULL) {
    attach_clear(&a);
    int code = start_failure_status(error);
    g_printerr("ferry: run: %s\n", error->message);
    sandbox_remove(c, o.name);
    ferry_ttrpc_client_free(c);
    return code;
  }
  protobuf_c_message_free_unpacked(r, NULL);
  if (o.detach) {
    printf("%s\n", o.name);
    ferry_ttrpc_client_free(c);
    return 0;
  }
  guint32 status = attach_run(&a, c, o.name, NULL);
  attach_clear(&a);
  sandbox_remove(c, o.name);
  ferry_ttrpc_client_free(c);
  return (int)status;
}

static int cmd_exec(int argc, char **argv)
{
  gboolean detach = FALSE, interactive = FALSE, tty = FALSE;
  g_autoptr(GPtrArray) env = g_ptr_array_new();
  const char *cwd = NULL, *user = NULL;
  int i = 0;
  for (; i < argc && argv[i][0] == '-'; i++) {
    const char *a = argv[i], *v = NULL;
    if (g_str_equal(a, "-d"))
      detach = TRUE;
    else if (g_str_equal(a, "-i"))
      interactive = TRUE;
    else if (g_str_equal(a, "-t"))
      tty = TRUE;
    else if (g_str_equal(a, "-it") || g_str_equal(a, "-ti"))
      interactive = tty = TRUE;
    else if (g_str_equal(a, "-e") && take_value(&i, argc, argv, &v))
      g_ptr_array_add(env, (char *)v);
    else if (g_str_equal(a, "-w") && take_value(&i, argc, argv, &v))
      cwd = v;
    else if (g_str_equal(a, "-u") && take_value(&i, argc, argv, &v))
      user = v;
    else
      return fail("exec: unknown or incomplete option %s (ferry help exec)", a);
  }
  if (argc - i < 2)
    return fail("exec: NAME and CMD are required (ferry exec [OPTIONS] NAME CMD [ARG...])");
  const char *name = argv[i++];
  FerryTtrpcClient *c = connect_sandbox(name, FALSE);
  if (c == NULL)
    return EXIT_FERRY;
  g_autoptr(GError) error = NULL;
  g_autoptr(json_t) process = process_spec(argv + i, argc - i, env, cwd, user, &error);
  if (process == NULL) {
    ferry_ttrpc_client_free(c);
    return fail("exec: %s", error->message);
  }
  g_autofree char *exec_id = g_strdup_printf("exec-%08x", g_random_int());
  g_autofree char *dir = sandbox_dir(name);
  g_autofree char *text = json_dumps(process, JSON_COMPACT);
  Google__Protobuf__Any any = GOOGLE__PROTOBUF__ANY__INIT;
  any.type_url = "types.containerd.io/opencontainers/runtime-spec/1/Process";
  any.value.data = (uint8_t *)text;
  any.value.len = strlen(text);
  Containerd__Task__V2__ExecProcessRequest req = CONTAINERD__TASK__V2__EXEC_PROCESS_REQUEST__INIT;
  req.id = (char *)name;
  req.exec_id = exec_id;
  req.spec = &any;
  req.terminal = tty;
  Attach a = { .fds = { -1, -1, -1 } };
  g_autofree char *out_uri = NULL;
  if (detach) {
    g_autofree char *logs = g_build_filename(dir, "logs", NULL);
    out_uri = logger_uri(logs, exec_id);
    req.stdout = out_uri;
    req.stderr = out_uri;
  } else {
    if (!attach_make(&a, dir, exec_id, interactive, tty, &error)) {
      attach_clear(&a);
      ferry_ttrpc_client_free(c);
      return fail("exec: %s", error->message);
    }
    req.stdin = a.paths[0];
    req.stdout = a.paths[1];
    req.stderr = a.paths[2];
  }
  ProtobufCMessage *r = call(c, "Exec", &req.base, &google__protobuf__empty__descriptor, &error);
  if (r != NULL) {
    protobuf_c_message_free_unpacked(r, NULL);
    Containerd__Task__V2__StartRequest start = CONTAINERD__TASK__V2__START_REQUEST__INIT;
    start.id = (char *)name;
    start.exec_id = exec_id;
    r = call(c, "Start", &start.base, &containerd__task__v2__start_response__descriptor, &error);
  }
  if (r == NULL) {
    attach_clear(&a);
    ferry_ttrpc_client_free(c);
    g_printerr("ferry: exec: %s\n", error->message);
    return start_failure_status(error);
  }
  protobuf_c_message_free_unpacked(r, NULL);
  if (detach) {
    printf("%s\n", exec_id);
    ferry_ttrpc_client_free(c);
    return 0;
  }
  guint32 status = attach_run(&a, c, name, exec_id);
  attach_clear(&a);
  Containerd__Task__V2__DeleteRequest del = CONTAINERD__TASK__V2__DELETE_REQUEST__INIT;
  del.id = (char *)name;
  del.exec_id = exec_id;
  r = call(c, "Delete", &del.base, &containerd__task__v2__delete_response__descriptor, NULL);
  if (r != NULL)
    protobuf_c_message_free_unpacked(r, NULL);
  ferry_ttrpc_client_free(c);
  return (int)status;
}

static int cmd_ps(int argc, char **argv)
{
  gboolean all = FALSE, as_json = FALSE;
  for (int i = 0; i < argc; i++) {
    if (g_str_equal(argv[i], "-a") || g_str_equal(argv[i], "--all"))
      all = TRUE;
    else if (g_str_equal(argv[i], "--json"))
      as_json = TRUE;
    else
      return fail("ps: unknown option %s (ferry help ps)", argv[i]);
  }
  g_autofree char *base = g_build_filename(root_dir, "sandboxes", NULL);
  g_autoptr(GDir) d = g_dir_open(base, 0, NULL);
  g_autoptr(GPtrArray) names = g_ptr_array_new_with_free_func(g_free);
  const char *n;
  while (d != NULL && (n = g_dir_read_name(d)) != NULL)
    g_ptr_array_add(names, g_strdup(n));
  g_ptr_array_sort(names, (GCompareFunc)g_strcmp0);
  g_autoptr(json_t) list = json_array();
  if (!as_json)
    printf("%-24s %-10s %s\n", "NAME", "STATUS", "PID");
  for (guint i = 0; i < names->len; i++) {
    const char *name = names->pdata[i];
    FerryTtrpcClient *c = connect_sandbox(name, TRUE);
    const char *status = "dead (shim gone)";
    guint32 pid = 0, exit_status = 0;
    Containerd__Task__V2__StateResponse *st = c != NULL ? task_state(c, name, NULL, NULL) : NULL;
    if (st != NULL) {
      status = status_name(st->status);
      pid = st->pid;
      exit_status = st->exit_status;
    }
    gboolean running = st != NULL && st->status == CONTAINERD__V1__TYPES__STATUS__RUNNING;
    if (all || running) {
      if (as_json)
        json_array_append_new(list, json_pack("{s:s, s:s, s:I, s:I}", "Name", name, "Status",
                                              status, "Pid", (json_int_t)pid, "ExitStatus",
                                              (json_int_t)exit_status));
      else
        printf("%-24s %-10s %u\n", name, status, pid);
    }
    if (st != NULL)
      protobuf_c_message_free_unpacked(&st->base, NULL);
    if (c != NULL)
      ferry_ttrpc_client_free(c);
  }
  if (as_json) {
    g_autofree char *text = json_dumps(list, JSON_INDENT(2));
    printf("%s\n", text);
  }
  return 0;
}

/* ------------------------------------------------------------- logs -- */

/* A detached process's output goes through this program as the shim's binary:// logger
 * (docs/cli.md, logs): it gets stdout on fd 3 and stderr on fd 4, closes fd 5 once
 * ready, and writes one JSON object per line to <logs>/<name>.log, docker's json-file
 * shape: {"time": RFC 3339 with nanoseconds, "stream": "stdout"|"stderr", "log": line}. */
#define LOGGER_COMMAND "_logger"
/* A line longer than this is written in pieces. */
#define LOG_LINE_MAX (16u * 1024u)

static char *logger_uri(const char *logs_dir, const char *name)
{
  g_autofree char *self = g_file_read_link("/proc/self/exe", NULL);
  /* A long-running ferry (receive) whose binary was replaced meanwhile: the new one. */
  if (self != NULL && g_str_has_suffix(self, " (deleted)"))
    self[strlen(self) - strlen(" (deleted)")] = '\0';
  g_autofree char *dir = g_uri_escape_string(logs_dir, "/", FALSE);
  g_autofree char *n = g_uri_escape_string(name, NULL, FALSE);
  return g_strdup_printf("binary://%s?--log-dir=%s&--log-name=%s&" LOGGER_COMMAND "=", self, dir,
                         n);
}

static void log_line(FILE *out, const char *stream, const char *data, gsize len)
{
  g_autoptr(GDateTime) now = g_date_time_new_now_utc();
  g_autofree char *base = g_date_time_format(now, "%Y-%m-%dT%H:%M:%S");
  g_autofree char *time = g_strdup_printf("%s.%06dZ", base, g_date_time_get_microsecond(now));
  g_autoptr(json_t) obj = json_object();
  json_object_set_new(obj, "time", json_string(time));
  json_object_set_new(obj, "stream", json_string(stream));
  json_object_set_new(obj, "log", json_stringn_nocheck(data, len));
  g_autofree char *text = json_dumps(obj, JSON_COMPACT);
  fprintf(out, "%s\n", text);
  fflush(out);
}

static int run_logger(const char *dir, const char *name)
{
  g_autofree char *path = g_strdup_printf("%s/%s.log", dir, name);
  FILE *out = fopen(path, "a");
  close(5); /* ready */
  if (out == NULL)
    return 1;
  GString *pending[2] = { g_string_new(""), g_string_new("") };
  const char *streams[2] = { "stdout", "stderr" };
  struct pollfd pfd[2] = { { .fd = 3, .events = POLLIN }, { .fd = 4, .events = POLLIN } };
  while (pfd[0].fd >= 0 || pfd[1].fd >= 0) {
    if (poll(pfd, 2, -1) < 0 && errno != EINTR)
      break;
    for (int i = 0; i < 2; i++) {
      if (pfd[i].fd < 0 || pfd[i].revents == 0)
        continue;
      char buf[65536];
      ssize_t n = read(pfd[i].fd, buf, sizeof(buf));
      if (n < 0 && errno == EINTR)
        continue;
      if (n > 0)
        g_string_append_len(pending[i], buf, n);
      /* Whole lines out; a long one in pieces; the rest at the end of the stream. */
      char *nl;
      while ((nl = memchr(pending[i]->str, '\n', pending[i]->len)) != NULL ||
             pending[i]->len >= LOG_LINE_MAX || (n <= 0 && pending[i]->len > 0)) {
        gsize len = nl != NULL ? (gsize)(nl - pending[i]->str) + 1
                               : MIN(pending[i]->len, (gsize)LOG_LINE_MAX);
        log_line(out, streams[i], pending[i]->str, len);
        g_string_erase(pending[i], 0, (gssize)len);
      }
      if (n <= 0) {
        close(pfd[i].fd);
        pfd[i].fd = -1;
      }
    }
  }
  fclose(out);
  g_string_free(pending[0], TRUE);
  g_string_free(pending[1], TRUE);
  return 0;
}

/* --since: a duration back from now (30s, 5m, 2h) or an RFC 3339 time; unix usec. */
static gboolean parse_since(const char *text, gint64 *since_us)
{
  char *end = NULL;
  guint64 n = g_ascii_strtoull(text, &end, 10);
  if (end != text && end != NULL && end[0] != '\0' && end[1] == '\0') {
    gint64 unit = end[0] == 's' ? 1 : end[0] == 'm' ? 60 : end[0] == 'h' ? 3600 : 0;
    if (unit == 0)
      return FALSE;
    *since_us = g_get_real_time() - (gint64)n * unit * G_USEC_PER_SEC;
    return TRUE;
  }
  g_autoptr(GDateTime) t = g_date_time_new_from_iso8601(text, NULL);
  if (t == NULL)
    return FALSE;
  *since_us = g_date_time_to_unix(t) * G_USEC_PER_SEC + g_date_time_get_microsecond(t);
  return TRUE;
}

typedef struct {
  int fd;
  GString *partial;
  gint64 since_us; /* 0: everything */
  GMainLoop *loop;
} Follow;

/* Print every whole JSON line read so far, to stdout or stderr by its stream. */
static void follow_drain(Follow *f)
{
  char buf[65536];
  ssize_t n;
  while (f->fd >= 0 && (n = read(f->fd, buf, sizeof(buf))) > 0)
    g_string_append_len(f->partial, buf, n);
  char *nl;
  while ((nl = memchr(f->partial->str, '\n', f->partial->len)) != NULL) {
    gsize len = (gsize)(nl - f->partial->str);
    g_autoptr(json_t) obj = json_loadb(f->partial->str, len, 0, NULL);
    g_string_erase(f->partial, 0, (gssize)len + 1);
    const char *line = json_string_value(json_object_get(obj, "log"));
    if (line == NULL)
      continue;
    if (f->since_us > 0) {
      g_autoptr(GDateTime) t =
          g_date_time_new_from_iso8601(json_string_value(json_object_get(obj, "time")), NULL);
      if (t == NULL ||
          g_date_time_to_unix(t) * G_USEC_PER_SEC + g_date_time_get_microsecond(t) < f->since_us)
        continue;
    }
    gboolean err = g_strcmp0(json_string_value(json_object_get(obj, "stream")), "stderr") == 0;
    FILE *out = err ? stderr : stdout;
    fwrite(line, 1, json_string_length(json_object_get(obj, "log")), out);
    fflush(out);
  }
}

static gboolean on_log_change(gint fd, GIOCondition cond, gpointer ud)
{
  Follow *f = ud;
  char events[4096];
  while (read(fd, events, sizeof(events)) > 0)
    ;
  follow_drain(f);
  return G_SOURCE_CONTINUE;
}

static void on_follow_exit(FerryTtrpcClient *client, const ProtobufCMessage *response,
                           const GError *error, gpointer ud)
{
  Follow *f = ud;
  follow_drain(f); /* the logger wrote the last lines before the shim answered */
  g_main_loop_quit(f->loop);
}

static int cmd_logs(int argc, char **argv)
{
  gboolean follow = FALSE;
  gint64 since_us = 0;
  int i = 0;
  for (; i < argc && argv[i][0] == '-'; i++) {
    if (g_str_equal(argv[i], "-f") || g_str_equal(argv[i], "--follow"))
      follow = TRUE;
    else if (g_str_equal(argv[i], "--since") && i + 1 < argc) {
      if (!parse_since(argv[++i], &since_us))
        return fail("logs: --since %s: a duration (30s, 5m, 2h) or an RFC 3339 time", argv[i]);
    } else
      return fail("logs: unknown or incomplete option %s (ferry help logs)", argv[i]);
  }
  if (argc - i != 1)
    return fail("logs: NAME is required (ferry logs [-f] [--since WHEN] NAME)");
  const char *name = argv[i];
  g_autofree char *dir = sandbox_dir(name);
  if (!g_file_test(dir, G_FILE_TEST_IS_DIR))
    return fail("no sandbox named \"%s\" (ferry ps -a lists them)", name);
  g_autofree char *logs = g_build_filename(dir, "logs", NULL);
  g_autofree char *path = g_build_filename(logs, "init.log", NULL);
  /* The watch before the first read: nothing appended in between is missed. */
  g_auto(FerryFd) watch = follow ? inotify_init1(IN_CLOEXEC | IN_NONBLOCK) : -1;
  if (watch >= 0)
    inotify_add_watch(watch, logs, IN_MODIFY | IN_CREATE);
  Follow f = { .fd = open(path, O_RDONLY | O_CLOEXEC),
               .partial = g_string_new(""),
               .since_us = since_us };
  follow_drain(&f);
  FerryTtrpcClient *c = follow ? connect_sandbox(name, TRUE) : NULL;
  if (c != NULL && watch >= 0) {
    Containerd__Task__V2__WaitRequest req = CONTAINERD__TASK__V2__WAIT_REQUEST__INIT;
    req.id = (char *)name;
    f.loop = g_main_loop_new(NULL, FALSE);
    g_unix_fd_add(watch, G_IO_IN, on_log_change, &f);
    ferry_ttrpc_client_call(c, TASK_SERVICE, "Wait", &req.base,
                            &containerd__task__v2__wait_response__descriptor, NULL, on_follow_exit,
                            &f);
    g_main_loop_run(f.loop);
    g_main_loop_unref(f.loop);
  }
  if (c != NULL)
    ferry_ttrpc_client_free(c);
  ferry_fd_clear(&f.fd);
  g_string_free(f.partial, TRUE);
  return 0;
}

static int signal_number(const char *text)
{
  guint64 n;
  if (g_ascii_string_to_unsigned(text, 10, 1, 64, &n, NULL))
    return (int)n;
  const char *s = g_str_has_prefix(text, "SIG") ? text + 3 : text;
  static const struct {
    const char *name;
    int sig;
  } names[] = { { "KILL", SIGKILL }, { "TERM", SIGTERM }, { "INT", SIGINT },  { "HUP", SIGHUP },
                { "QUIT", SIGQUIT }, { "USR1", SIGUSR1 }, { "USR2", SIGUSR2 } };
  for (gsize i = 0; i < G_N_ELEMENTS(names); i++)
    if (g_ascii_strcasecmp(s, names[i].name) == 0)
      return names[i].sig;
  return 0;
}

static gboolean kill_task(FerryTtrpcClient *c, const char *name, int sig, GError **error)
{
  Containerd__Task__V2__KillRequest req = CONTAINERD__TASK__V2__KILL_REQUEST__INIT;
  req.id = (char *)name;
  req.signal = (uint32_t)sig;
  req.all = TRUE;
  ProtobufCMessage *r = call(c, "Kill", &req.base, &google__protobuf__empty__descriptor, error);
  if (r == NULL)
    return FALSE;
  protobuf_c_message_free_unpacked(r, NULL);
  return TRUE;
}

static int cmd_kill(int argc, char **argv)
{
  int sig = SIGKILL, i = 0;
  if (argc >= 2 && g_str_equal(argv[0], "-s")) {
    sig = signal_number(argv[1]);
    if (sig == 0)
      return fail("kill: %s is not a signal", argv[1]);
    i = 2;
  }
  if (argc - i != 1)
    return fail("kill: NAME is required (ferry kill [-s SIGNAL] NAME)");
  FerryTtrpcClient *c = connect_sandbox(argv[i], FALSE);
  if (c == NULL)
    return EXIT_FERRY;
  g_autoptr(GError) error = NULL;
  gboolean ok = kill_task(c, argv[i], sig, &error);
  ferry_ttrpc_client_free(c);
  return ok ? 0 : fail("kill: %s", error->message);
}

/* Wait (bounded) for the init to stop. */
static gboolean wait_stopped(FerryTtrpcClient *c, const char *name, guint seconds)
{
  Containerd__Task__V2__WaitRequest req = CONTAINERD__TASK__V2__WAIT_REQUEST__INIT;
  req.id = (char *)name;
  FerryTtrpcCallOptions options = { .timeout_ns = (gint64)seconds * 1000000000 };
  ProtobufCMessage *r = ferry_ttrpc_client_call_sync(
      c, TASK_SERVICE, "Wait", &req.base, &containerd__task__v2__wait_response__descriptor,
      &options, NULL);
  if (r == NULL)
    return FALSE;
  protobuf_c_message_free_unpacked(r, NULL);
  return TRUE;
}

static int cmd_stop(int argc, char **argv)
{
  guint seconds = 10;
  int i = 0;
  if (argc >= 2 && g_str_equal(argv[0], "-t")) {
    seconds = (guint)g_ascii_strtoull(argv[1], NULL, 10);
    i = 2;
  }
  if (argc - i != 1)
    return fail("stop: NAME is required (ferry stop [-t SECONDS] NAME)");
  const char *name = argv[i];
  FerryTtrpcClient *c = connect_sandbox(name, FALSE);
  if (c == NULL)
    return EXIT_FERRY;
  g_autoptr(GError) error = NULL;
  if (kill_task(c, name, SIGTERM, &error) && !wait_stopped(c, name, MAX(seconds, 1))) {
    kill_task(c, name, SIGKILL, NULL);
    wait_stopped(c, name, 30);
  }
  ferry_ttrpc_client_free(c);
  return 0;
}

static int cmd_rm(int argc, char **argv)
{
  gboolean force = FALSE;
  int i = 0, status = 0;
  if (i < argc && g_str_equal(argv[i], "-f")) {
    force = TRUE;
    i++;
  }
  if (i >= argc)
    return fail("rm: NAME is required (ferry rm [-f] NAME...)");
  for (; i < argc; i++) {
    const char *name = argv[i];
    g_autofree char *dir = sandbox_dir(name);
    if (!g_file_test(dir, G_FILE_TEST_IS_DIR)) {
      status = fail("no sandbox named \"%s\" (ferry ps -a lists them)", name);
      continue;
    }
    FerryTtrpcClient *c = connect_sandbox(name, TRUE);
    Containerd__Task__V2__StateResponse *st = c != NULL ? task_state(c, name, NULL, NULL) : NULL;
    gboolean running = st != NULL && st->status == CONTAINERD__V1__TYPES__STATUS__RUNNING;
    if (st != NULL)
      protobuf_c_message_free_unpacked(&st->base, NULL);
    if (running && !force) {
      status = fail("rm: sandbox \"%s\" is running (ferry stop %s, or ferry rm -f %s)", name, name,
                    name);
      ferry_ttrpc_client_free(c);
      continue;
    }
    if (running) {
      kill_task(c, name, SIGKILL, NULL);
      wait_stopped(c, name, 30);
    }
    sandbox_remove(c, name);
    if (c != NULL)
      ferry_ttrpc_client_free(c);
  }
  return status;
}

static int cmd_inspect(int argc, char **argv)
{
  if (argc != 1)
    return fail("inspect: NAME is required (ferry inspect NAME)");
  const char *name = argv[0];
  g_autofree char *dir = sandbox_dir(name);
  if (!g_file_test(dir, G_FILE_TEST_IS_DIR))
    return fail("no sandbox named \"%s\" (ferry ps -a lists them)", name);
  g_autofree char *config = g_build_filename(dir, "bundle", "config.json", NULL);
  g_autofree char *text = NULL;
  g_file_get_contents(config, &text, NULL, NULL);
  json_t *spec = text != NULL ? json_loads(text, 0, NULL) : NULL;
  g_autoptr(json_t) out = json_pack("{s:s, s:s, s:o}", "Name", name, "Directory", dir, "Spec",
                                    spec != NULL ? spec : json_null());
  FerryTtrpcClient *c = connect_sandbox(name, TRUE);
  Containerd__Task__V2__StateResponse *st = c != NULL ? task_state(c, name, NULL, NULL) : NULL;
  if (st != NULL) {
    json_object_set_new(out, "State",
                        json_pack("{s:s, s:I, s:I}", "Status", status_name(st->status), "Pid",
                                  (json_int_t)st->pid, "ExitStatus", (json_int_t)st->exit_status));
    protobuf_c_message_free_unpacked(&st->base, NULL);
  } else {
    json_object_set_new(out, "State", json_pack("{s:s}", "Status", "dead (shim gone)"));
  }
  /* The VM document the shim recorded (with the layer disks attached), and the size it
   * gives the VM. */
  g_autofree char *vm_path = g_build_filename(dir, "bundle", "vm.json", NULL);
  g_autofree char *vm_text = NULL;
  json_t *vm =
      g_file_get_contents(vm_path, &vm_text, NULL, NULL) ? json_loads(vm_text, 0, NULL) : NULL;
  if (vm != NULL) {
    json_t *topo = json_object_get(json_object_get(vm, "VirtualMachine"), "ComputeTopology");
    json_t *mem = json_object_get(json_object_get(topo, "Memory"), "SizeInMB");
    json_t *cpus = json_object_get(json_object_get(topo, "Processor"), "Count");
    json_object_set_new(out, "Resources",
                        json_pack("{s:O, s:O}", "MemoryMB", mem != NULL ? mem : json_null(), "Cpus",
                                  cpus != NULL ? cpus : json_null()));
  }
  json_object_set_new(out, "VM", vm != NULL ? vm : json_null());
  if (c != NULL) {
    Containerd__Task__V2__PidsRequest preq = CONTAINERD__TASK__V2__PIDS_REQUEST__INIT;
    preq.id = (char *)name;
    Containerd__Task__V2__PidsResponse *pr = (Containerd__Task__V2__PidsResponse *)call(
        c, "Pids", &preq.base, &containerd__task__v2__pids_response__descriptor, NULL);
    json_t *procs = json_array();
    for (size_t k = 0; pr != NULL && k < pr->n_processes; k++)
      json_array_append_new(procs, json_pack("{s:I}", "Pid", (json_int_t)pr->processes[k]->pid));
    json_object_set_new(out, "Processes", procs);
    if (pr != NULL)
      protobuf_c_message_free_unpacked(&pr->base, NULL);
    Containerd__Task__V2__ConnectRequest creq = CONTAINERD__TASK__V2__CONNECT_REQUEST__INIT;
    creq.id = (char *)name;
    Containerd__Task__V2__ConnectResponse *cr = (Containerd__Task__V2__ConnectResponse *)call(
        c, "Connect", &creq.base, &containerd__task__v2__connect_response__descriptor, NULL);
    if (cr != NULL) {
      json_object_set_new(out, "ShimPid", json_integer(cr->shim_pid));
      protobuf_c_message_free_unpacked(&cr->base, NULL);
    }
    ferry_ttrpc_client_free(c);
  }
  g_autofree char *dump = json_dumps(out, JSON_INDENT(2));
  printf("%s\n", dump);
  return 0;
}

/* ------------------------------------------------------------ certs -- */

/* `ferry certs DIR --host NAME...`: a CA in DIR and a directory per host (docs/tls.md). */
static int cmd_certs(int argc, char **argv)
{
  const char *dir = NULL;
  guint64 days = 365;
  g_autoptr(GPtrArray) hosts = g_ptr_array_new();
  for (int i = 0; i < argc; i++) {
    if (g_str_equal(argv[i], "--host") && i + 1 < argc) {
      g_ptr_array_add(hosts, argv[++i]);
    } else if (g_str_equal(argv[i], "--days") && i + 1 < argc) {
      if (!g_ascii_string_to_unsigned(argv[++i], 10, 1, 36500, &days, NULL))
        return fail("certs: --days takes 1 to 36500, not %s", argv[i]);
    } else if (argv[i][0] == '-') {
      return fail("certs: unknown option %s (ferry help certs)", argv[i]);
    } else if (dir == NULL) {
      dir = argv[i];
    } else {
      return fail("certs: one directory only (ferry help certs)");
    }
  }
  if (dir == NULL || hosts->len == 0)
    return fail("certs: usage: ferry certs DIR --host NAME [--host NAME]... (ferry help certs)");
  g_ptr_array_add(hosts, NULL);
  g_autoptr(GError) error = NULL;
  if (!ferry_tls_make_certs(dir, (const char *const *)hosts->pdata, (guint)days, &error))
    return fail("%s", error->message);
  for (guint i = 0; hosts->pdata[i] != NULL; i++)
    printf("%s/%s\n", dir, (const char *)hosts->pdata[i]);
  return 0;
}

/* ------------------------------------------------ receive and migrate -- */

/* The TLS directory of a node agent: --tls-dir, or --insecure (tests only, said loudly). */
static FerryTlsCredentials *node_tls(const char *cmd, const char *dir, gboolean insecure,
                                     FerryTlsRole role, int *status)
{
  *status = 0;
  if (insecure) {
    g_printerr("ferry %s: --insecure: NO TLS. The control connection and the memory stream are "
               "neither authenticated nor encrypted. For tests only.\n",
               cmd);
    return NULL;
  }
  if (dir == NULL) {
    *status =
        fail("%s: --tls-dir DIR is required (ferry certs makes one; --insecure for tests)", cmd);
    return NULL;
  }
  g_autoptr(GError) error = NULL;
  FerryTlsCredentials *creds = ferry_tls_credentials_load(dir, role, &error);
  if (creds == NULL)
    *status = fail("%s: %s", cmd, error->message);
  return creds;
}

static char *rx_start_shim(FerryReceiver *r, const char *name, const char *bundle, gpointer ud,
                           GError **error)
{
  /* A placeholder spec for the shim's start; Bind writes the real one. */
  g_autofree char *config = g_build_filename(bundle, "config.json", NULL);
  if (!g_file_set_contents(config, "{\"ociVersion\": \"1.0.2\"}", -1, error) ||
      !shim_start(name, bundle, error))
    return NULL;
  g_autofree char *path = g_build_filename(bundle, "address", NULL);
  g_autofree char *address = NULL;
  if (!g_file_get_contents(path, &address, NULL, error))
    return NULL;
  return g_strdup(g_strstrip(address));
}

static void rx_stdio(FerryReceiver *r, const char *name, const char *exec_id, char **out,
                     char **err, gpointer ud)
{
  /* As `ferry run -d`: the sandbox's logs, so that `ferry logs` goes on here. */
  g_autofree char *dir = sandbox_dir(name);
  g_autofree char *logs = g_build_filename(dir, "logs", NULL);
  g_mkdir(logs, 0700);
  *out = logger_uri(logs, exec_id[0] != '\0' ? exec_id : "init");
  *err = g_strdup(*out);
}

static void rx_discard(FerryReceiver *r, const char *name, const char *bundle, gpointer ud)
{
  FerryTtrpcClient *c = connect_sandbox(name, TRUE);
  sandbox_remove(c, name);
  if (c != NULL)
    ferry_ttrpc_client_free(c);
}

static void rx_session(FerryReceiver *r, const char *name, const char *what, const GError *error,
                       gpointer ud)
{
  g_printerr("ferry receive: %s%s%s%s%s\n", name != NULL ? name : "", name != NULL ? ": " : "",
             what, error != NULL ? ": " : "", error != NULL ? error->message : "");
}

static gboolean on_quit_signal(gpointer ud)
{
  g_main_loop_quit(ud);
  return G_SOURCE_CONTINUE;
}

/* `ferry receive --listen ADDR:PORT [--tls-dir DIR | --insecure]`: until stopped. */
static int cmd_receive(int argc, char **argv)
{
  const char *listen = NULL, *tls_dir = NULL;
  gboolean insecure = FALSE;
  for (int i = 0; i < argc; i++) {
    if (g_str_equal(argv[i], "--listen") && i + 1 < argc)
      listen = argv[++i];
    else if (g_str_equal(argv[i], "--tls-dir") && i + 1 < argc)
      tls_dir = argv[++i];
    else if (g_str_equal(argv[i], "--insecure"))
      insecure = TRUE;
    else
      return fail("receive: unknown option %s (ferry help receive)", argv[i]);
  }
  if (listen == NULL)
    return fail("receive: --listen ADDR:PORT is required (ferry help receive)");
  int status = 0;
  g_autoptr(FerryTlsCredentials) tls =
      node_tls("receive", tls_dir, insecure, FERRY_TLS_SERVER, &status);
  if (status != 0)
    return status;
  FerryReceiverConfig config = { .root = root_dir, .tls = tls };
  static const FerryReceiverHandlers handlers = { rx_start_shim, rx_stdio, rx_discard, rx_session };
  g_autoptr(GError) error = NULL;
  g_autoptr(FerryReceiver) r = ferry_receiver_new(&config, &handlers, NULL, &error);
  if (r == NULL || !ferry_receiver_listen(r, listen, &error))
    return fail("receive: %s", error->message);
  g_autofree char *host = g_strdup(listen);
  char *colon = strrchr(host, ':');
  if (colon != NULL)
    *colon = '\0';
  printf("listening on %s:%u\n", host, ferry_receiver_port(r));
  fflush(stdout);
  g_autoptr(GMainLoop) loop = g_main_loop_new(NULL, FALSE);
  guint s1 = g_unix_signal_add(SIGINT, on_quit_signal, loop);
  guint s2 = g_unix_signal_add(SIGTERM, on_quit_signal, loop);
  g_main_loop_run(loop);
  g_source_remove(s1);
  g_source_remove(s2);
  return 0;
}

typedef struct {
  GMainLoop *loop;
  gboolean json, tty;
  gint64 started;
  FerryMigrationStage last_stage;
  FerryMigrationProgress last;
  gboolean done;
  FerryMigrationOutcome outcome;
  char *error;
  FerryMigrator *m;
  gboolean cancel_asked;
} MigrateRun;

static void mig_progress(FerryMigrator *m, const FerryMigrationProgress *p, gpointer ud)
{
  MigrateRun *run = ud;
  run->last = *p;
  gint64 elapsed = g_get_monotonic_time() - run->started;
  if (run->json) {
    g_autoptr(json_t) j = ferry_migration_progress_json(p, elapsed);
    g_autofree char *text = json_dumps(j, JSON_COMPACT);
    printf("%s\n", text);
    fflush(stdout);
    return;
  }
  if (!run->tty && p->stage == run->last_stage)
    return;
  run->last_stage = p->stage;
  g_autofree char *line = ferry_migration_progress_line(p, elapsed);
  if (run->tty)
    g_printerr("\r%s\033[K", line);
  else
    g_printerr("%s\n", line);
}

static void mig_done(FerryMigrator *m, FerryMigrationOutcome outcome, const GError *error,
                     gpointer ud)
{
  MigrateRun *run = ud;
  run->done = TRUE;
  run->outcome = outcome;
  run->error = error != NULL ? g_strdup(error->message) : NULL;
  g_main_loop_quit(run->loop);
}

static gboolean on_migrate_signal(gpointer ud)
{
  MigrateRun *run = ud;
  if (!run->cancel_asked) {
    run->cancel_asked = TRUE;
    if (ferry_migrator_cancel(run->m))
      g_printerr("\nferry migrate: cancelling (the sandbox stays here)\n");
    else
      g_printerr("\nferry migrate: too late to cancel: the destination is taking over\n");
  }
  return G_SOURCE_CONTINUE;
}

/* The source shim's layer image cache: the shim config's image_cache, else its run dir's. */
static char *source_image_dir(void)
{
  const char *config = g_getenv("FERRY_SHIM_CONFIG");
  json_error_t jerr;
  g_autoptr(json_t) c = config != NULL ? json_load_file(config, 0, &jerr) : NULL;
  const char *dir = json_string_value(json_object_get(c, "image_cache"));
  if (dir != NULL)
    return g_strdup(dir);
  const char *run = g_getenv("FERRY_SHIM_RUN_DIR");
  return run != NULL ? g_build_filename(run, "images", NULL)
                     : g_build_filename(root_dir, "shim", "images", NULL);
}

/* `ferry migrate NAME --to HOST:PORT [--tls-dir DIR | --insecure] [--json] ...`. */
static int cmd_migrate(int argc, char **argv)
{
  const char *name = NULL, *to = NULL, *tls_dir = NULL;
  gboolean insecure = FALSE, json = FALSE;
  InitializeOptions options = INITIALIZE_OPTIONS__INIT;
  MemoryTransferThrottleParams throttle = MEMORY_TRANSFER_THROTTLE_PARAMS__INIT;
  for (int i = 0; i < argc; i++) {
    guint64 v = 0;
    if (g_str_equal(argv[i], "--to") && i + 1 < argc) {
      to = argv[++i];
    } else if (g_str_equal(argv[i], "--tls-dir") && i + 1 < argc) {
      tls_dir = argv[++i];
    } else if (g_str_equal(argv[i], "--insecure")) {
      insecure = TRUE;
    } else if (g_str_equal(argv[i], "--json")) {
      json = TRUE;
    } else if (g_str_equal(argv[i], "--bandwidth") && i + 1 < argc) {
      guint mb = 0;
      if (!parse_memory(argv[++i], &mb))
        return fail("migrate: --bandwidth %s: bytes per second as MB, or 100m, 1g", argv[i]);
      options.ferry_max_bandwidth = (guint64)mb << 20;
    } else if (g_str_equal(argv[i], "--downtime-ms") && i + 1 < argc) {
      if (!g_ascii_string_to_unsigned(argv[++i], 10, 1, 60000, &v, NULL))
        return fail("migrate: --downtime-ms takes 1 to 60000, not %s", argv[i]);
      throttle.target_blackout_transfer_time = (guint32)v;
      options.memory_transfer_throttle_params = &throttle;
    } else if (g_str_equal(argv[i], "--postcopy") && i + 1 < argc) {
      i++;
      if (g_str_equal(argv[i], "never"))
        options.ferry_no_postcopy = TRUE;
      else if (!g_str_equal(argv[i], "auto"))
        return fail("migrate: --postcopy auto or never, not %s", argv[i]);
    } else if (argv[i][0] == '-') {
      return fail("migrate: unknown option %s (ferry help migrate)", argv[i]);
    } else if (name == NULL) {
      name = argv[i];
    } else {
      return fail("migrate: one sandbox at a time (ferry help migrate)");
    }
  }
  if (name == NULL || to == NULL)
    return fail("migrate: usage: ferry migrate NAME --to HOST:PORT (ferry help migrate)");
  int status = 0;
  g_autoptr(FerryTlsCredentials) tls =
      node_tls("migrate", tls_dir, insecure, FERRY_TLS_CLIENT, &status);
  if (status != 0)
    return status;
  FerryTtrpcClient *c = connect_sandbox(name, FALSE);
  if (c == NULL)
    return EXIT_FERRY;
  g_autofree char *images = source_image_dir();
  g_autofree char *arrived = g_build_filename(root_dir, "images", NULL); /* ferry receive's */
  const char *image_dirs[] = { images, arrived, NULL };
  g_autofree char *dir = sandbox_dir(name);
  MigrateRun run = { .loop = g_main_loop_new(NULL, FALSE),
                     .json = json,
                     .tty = isatty(2),
                     .started = g_get_monotonic_time(),
                     .last_stage = (FerryMigrationStage)-1 };
  FerryMigratorConfig config = { .name = name,
                                 .shim = c,
                                 .image_dirs = image_dirs,
                                 .address = to,
                                 .tls = tls,
                                 .socket_dir = dir,
                                 .options = &options };
  static const FerryMigratorHandlers handlers = { mig_progress, mig_done };
  g_autoptr(GError) error = NULL;
  run.m = ferry_migrator_start(&config, &handlers, &run, &error);
  if (run.m == NULL) {
    ferry_ttrpc_client_free(c);
    g_main_loop_unref(run.loop);
    return fail("%s", error->message);
  }
  guint s1 = g_unix_signal_add(SIGINT, on_migrate_signal, &run);
  guint s2 = g_unix_signal_add(SIGTERM, on_migrate_signal, &run);
  g_main_loop_run(run.loop);
  g_source_remove(s1);
  g_source_remove(s2);
  if (run.tty && !json)
    g_printerr("\n");
  FerryMigrationReport report = { .outcome = run.outcome,
                                  .error = run.error,
                                  .total_us = g_get_monotonic_time() - run.started,
                                  .last = run.last };
  if (json) {
    g_autoptr(json_t) j = ferry_migration_report_json(&report);
    g_autofree char *text = json_dumps(j, JSON_COMPACT);
    printf("%s\n", text);
  } else {
    g_autofree char *text = ferry_migration_report_text(&report);
    printf("%s\n", text);
  }
  ferry_migrator_free(run.m);
  /* It runs there now: nothing is left of it here but an empty shim, a directory and
   * the logs of its time here, which are kept (ROOT/moved/NAME-<time>/logs). */
  if (run.outcome == FERRY_MIGRATION_OUTCOME_MIGRATED) {
    g_autofree char *logs = g_build_filename(dir, "logs", NULL);
    g_autofree char *stamp = g_strdup_printf("%s-%" G_GINT64_FORMAT, name, g_get_real_time());
    g_autofree char *moved = g_build_filename(root_dir, "moved", stamp, NULL);
    if (g_file_test(logs, G_FILE_TEST_IS_DIR) && g_mkdir_with_parents(moved, 0700) == 0) {
      g_autofree char *to_logs = g_build_filename(moved, "logs", NULL);
      if (rename(logs, to_logs) == 0 && !json)
        g_printerr("ferry migrate: its logs from before the move are in %s\n", to_logs);
    }
    sandbox_remove(c, name);
  }
  ferry_ttrpc_client_free(c);
  g_main_loop_unref(run.loop);
  int code = run.outcome == FERRY_MIGRATION_OUTCOME_MIGRATED ? 0 : EXIT_FERRY;
  g_free(run.error);
  return code;
}

/* `ferry help COMMAND`. */
static const struct {
  const char *name;
  const char *text;
} help_texts[] = {
  { "run",
    "usage: ferry run [OPTIONS] ROOTFS [CMD [ARG...]]\n"
    "Run CMD (default sh) in a container in its own utility VM. ROOTFS is the directory of a\n"
    "root file system. Attached, the container's stdio is relayed and ferry exits with its\n"
    "status; the sandbox is removed afterwards.\n"
    "  --name NAME        the sandbox's name (default ferry-<random>)\n"
    "  -d, --detach       print the name and leave it running; output goes to ferry logs\n"
    "  -i, --interactive  relay stdin too\n"
    "  -t, --tty          a terminal (with -i: an interactive session)\n"
    "  -e K=V             an environment variable (repeatable)\n"
    "  -w DIR             the working directory\n"
    "  -u UID[:GID]       the numeric user (and group)\n"
    "  --memory SIZE      the VM's memory (MB, or 512m, 1g)  --cpus N  vCPUs (1 under TCG)\n"
    "  --annotation K=V   an OCI annotation (repeatable)\n" },
  { "exec",
    "usage: ferry exec [-d] [-i] [-t] [-e K=V]... [-w DIR] [-u UID[:GID]] NAME CMD [ARG...]\n"
    "Run CMD in the running container of sandbox NAME; exits with its status (-d: prints\n"
    "its id, output to the sandbox's logs directory).\n" },
  { "ps", "usage: ferry ps [-a] [--json]\nThe running sandboxes (-a: all, a dead shim's too).\n" },
  { "logs", "usage: ferry logs [-f] [--since WHEN] NAME\nA detached container's output, stdout "
            "and stderr apart (-f: follow it until the container exits; --since: only lines "
            "from WHEN on, a duration back from now such as 30s, 5m, 2h, or an RFC 3339 "
            "time).\n" },
  { "kill", "usage: ferry kill [-s SIGNAL] NAME\nSend SIGNAL (default KILL) to every process of "
            "the container.\n" },
  { "stop", "usage: ferry stop [-t SECONDS] NAME\nSIGTERM, then SIGKILL after SECONDS (default "
            "10).\n" },
  { "rm", "usage: ferry rm [-f] NAME...\nRemove stopped sandboxes (-f: kill running ones first); "
          "a dead shim's VM is killed too.\n" },
  { "inspect",
    "usage: ferry inspect NAME\nJSON: the sandbox's directory, spec, state and shim pid.\n" },
  { "certs",
    "usage: ferry certs DIR --host NAME [--host NAME]... [--days N]\n"
    "A CA in DIR (made once, kept after) and, for each host (a DNS name or an IP address),\n"
    "DIR/NAME/ with ca-cert.pem, server-cert.pem, server-key.pem, client-cert.pem and\n"
    "client-key.pem: the --tls-dir of ferry receive and ferry migrate on that host, and the\n"
    "layout QEMU's tls-creds-x509 reads. Valid N days (default 365). Keep ca-key.pem apart.\n" },
  { "receive",
    "usage: ferry receive --listen ADDR:PORT [--tls-dir DIR | --insecure]\n"
    "Accept sandboxes migrated here by ferry migrate, until stopped (SIGINT, SIGTERM). Each\n"
    "arrives under --root as if ferry run had started it (ferry ps, logs, exec, rm). Peers\n"
    "must hold a certificate from the CA of DIR (ferry certs); --insecure: no TLS, tests only.\n" },
  { "migrate",
    "usage: ferry migrate NAME --to HOST:PORT [--tls-dir DIR | --insecure] [--json]\n"
    "                     [--bandwidth RATE] [--downtime-ms N] [--postcopy auto|never]\n"
    "Move the running sandbox NAME to the ferry receive at HOST:PORT while it runs: every\n"
    "process, its output and stdin exactly once. A line of progress on a terminal (--json:\n"
    "one object per event), then a report. Ctrl-C cancels until the destination takes over;\n"
    "any failure leaves the sandbox running here. RATE in MB/s (or 100m, 1g).\n" },
  { "version", "usage: ferry version\n" },
};

static int cmd_help(int argc, char **argv);

static const char *usage =
    "usage: ferry [--root DIR] [--shim PATH] COMMAND [ARG...]\n"
    "  run [--name N] [-d] [-i] [-t] [-e K=V]... [-w DIR] [-u UID[:GID]] [--memory MB] [--cpus N]\n"
    "      [--annotation K=V]... ROOTFS [CMD [ARG...]]   run a container in its own VM\n"
    "  exec [-d] [-i] [-t] [-e K=V]... [-w DIR] [-u UID[:GID]] NAME CMD [ARG...]\n"
    "  ps [-a] [--json]      sandboxes (running ones; -a all)\n"
    "  logs [-f] [--since WHEN] NAME  a detached container's output (-f: follow it)\n"
    "  kill [-s SIGNAL] NAME  stop [-t SECONDS] NAME  rm [-f] NAME...  inspect NAME\n"
    "  certs DIR --host NAME...  a CA and each host's TLS directory\n"
    "  receive --listen ADDR:PORT [--tls-dir DIR]   accept migrated sandboxes\n"
    "  migrate NAME --to HOST:PORT [--tls-dir DIR] [--json]   move a running sandbox there\n"
    "  version\n";

static int cmd_help(int argc, char **argv)
{
  if (argc == 0) {
    printf("%s", usage);
    return 0;
  }
  for (gsize i = 0; i < G_N_ELEMENTS(help_texts); i++)
    if (g_str_equal(argv[0], help_texts[i].name)) {
      printf("%s", help_texts[i].text);
      return 0;
    }
  return fail("no command %s (ferry help lists them)", argv[0]);
}

int main(int argc, char **argv)
{
  signal(SIGPIPE, SIG_IGN);
  /* The shim runs us as a binary:// logger: --log-dir D --log-name N _logger. */
  if (argc == 6 && g_str_equal(argv[5], LOGGER_COMMAND) && g_str_equal(argv[1], "--log-dir") &&
      g_str_equal(argv[3], "--log-name"))
    return run_logger(argv[2], argv[4]);
  int i = 1;
  const char *root = g_getenv("FERRY_ROOT");
  const char *shim = g_getenv("FERRY_SHIM");
  for (; i < argc && argv[i][0] == '-'; i++) {
    if (g_str_equal(argv[i], "--root") && i + 1 < argc)
      root = argv[++i];
    else if (g_str_equal(argv[i], "--shim") && i + 1 < argc)
      shim = argv[++i];
    else if (g_str_equal(argv[i], "-h") || g_str_equal(argv[i], "--help")) {
      printf("%s", usage);
      return 0;
    } else {
      g_printerr("ferry: unknown option %s\n%s", argv[i], usage);
      return EXIT_FERRY;
    }
  }
  if (i >= argc) {
    g_printerr("%s", usage);
    return EXIT_FERRY;
  }
  root_dir = g_strdup(root != NULL ? root : "/run/ferry");
  /* Commands that need no shim. */
  if (g_str_equal(argv[i], "certs"))
    return cmd_certs(argc - i - 1, argv + i + 1);
  if (shim != NULL) {
    shim_path = g_strdup(shim);
  } else {
    /* Beside this program (an installed or a built tree), else on PATH. */
    g_autofree char *self = g_file_read_link("/proc/self/exe", NULL);
    g_autofree char *dir = self != NULL ? g_path_get_dirname(self) : NULL;
    g_autofree char *beside =
        dir != NULL ? g_build_filename(dir, "containerd-shim-ferry-v1", NULL) : NULL;
    g_autofree char *sibling =
        dir != NULL ? g_build_filename(dir, "..", "shim", "containerd-shim-ferry-v1", NULL) : NULL;
    if (beside != NULL && g_file_test(beside, G_FILE_TEST_IS_EXECUTABLE))
      shim_path = g_steal_pointer(&beside);
    else if (sibling != NULL && g_file_test(sibling, G_FILE_TEST_IS_EXECUTABLE))
      shim_path = g_canonicalize_filename(sibling, NULL);
    else
      shim_path = g_find_program_in_path("containerd-shim-ferry-v1");
    if (shim_path == NULL)
      return fail("containerd-shim-ferry-v1 is not installed (make install, or --shim PATH)");
  }
  const char *cmd = argv[i++];
  int n = argc - i;
  char **rest = argv + i;
  if (g_str_equal(cmd, "run"))
    return cmd_run(n, rest);
  if (g_str_equal(cmd, "exec"))
    return cmd_exec(n, rest);
  if (g_str_equal(cmd, "ps"))
    return cmd_ps(n, rest);
  if (g_str_equal(cmd, "logs"))
    return cmd_logs(n, rest);
  if (g_str_equal(cmd, "kill"))
    return cmd_kill(n, rest);
  if (g_str_equal(cmd, "stop"))
    return cmd_stop(n, rest);
  if (g_str_equal(cmd, "rm"))
    return cmd_rm(n, rest);
  if (g_str_equal(cmd, "inspect"))
    return cmd_inspect(n, rest);
  if (g_str_equal(cmd, "receive"))
    return cmd_receive(n, rest);
  if (g_str_equal(cmd, "migrate"))
    return cmd_migrate(n, rest);
  if (g_str_equal(cmd, "version")) {
    printf("ferry %s\n", FERRY_VERSION);
    return 0;
  }
  if (g_str_equal(cmd, "help"))
    return cmd_help(n, rest);
  return fail("unknown command %s (ferry help)", cmd);
}
