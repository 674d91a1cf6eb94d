/*
 * containerd-shim-ferry-v1: containerd's runtime v2 shim for Ferry sandboxes
 * (docs/shim.md). One long-lived daemon per sandbox serves the ttrpc Task API; this
 * program is also what containerd runs for the `start` and `delete` actions.
 *
 *   containerd-shim-ferry-v1 -namespace NS -address A -publish-binary B -id ID [-bundle D]
 *       [-debug] start|delete
 *
 * start   group by io.kubernetes.cri.sandbox-id (else the id): an existing daemon of
 *         the group gets the container; else listen, then fork the daemon (setsid,
 *         stdio not inherited), write <bundle>/address, print unix://... Stdout is
 *         closed last: containerd reads EOF on it as "ready".
 * delete  after a daemon died: kill the QEMU it recorded (by pid, checked to be QEMU),
 *         remove its socket and state, print a DeleteResponse.
 *
 * Environment: TTRPC_ADDRESS (containerd's events), FERRY_SHIM_RUN_DIR (sockets, sandbox
 * state and the image cache, default /run/ferry), FERRY_SHIM_CONFIG (the config file).
 */
#include <errno.h>
#include <fcntl.h>
#include <glib-unix.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "containerd/task/v2/shim.pb-c.h"
#include "ferry/error.h"
#include "ferry/fd.h"
#include "ferry/json.h"
#include "ferry/log.h"
#include "ferry/task-service.h"
#include "ferry/ttrpc.h"

#define DEFAULT_RUN_DIR "/run/ferry"
#define SANDBOX_ID_ANNOTATION "io.kubernetes.cri.sandbox-id"
/* The daemon finds its listening socket here (start passes it across exec). */
#define LISTEN_FD_ENV "FERRY_SHIM_LISTEN_FD"
#define SHIM_VERSION "0.1"

typedef struct {
  char *namespace;
  char *address;
  char *publish_binary;
  char *id;
  char *bundle;
  gboolean debug;
  gboolean version;
} Flags;

static void flags_clear(Flags *f)
{
  g_free(f->namespace);
  g_free(f->address);
  g_free(f->publish_binary);
  g_free(f->id);
  g_free(f->bundle);
}

/* containerd passes Go-style single-dash flags. */
static gboolean parse_flags(int argc, char **argv, Flags *f, char **action, GError **error)
{
  struct {
    const char *name;
    char **value;
  } strings[] = { { "namespace", &f->namespace },
                  { "address", &f->address },
                  { "publish-binary", &f->publish_binary },
                  { "id", &f->id },
                  { "bundle", &f->bundle },
                  { "socket", NULL },
                  { "debug-socket", NULL } };
  *action = NULL;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (a[0] != '-') {
      if (*action != NULL) {
        g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "unexpected argument %s", a);
        return FALSE;
      }
      *action = g_strdup(a);
      continue;
    }
    const char *name = a + (a[1] == '-' ? 2 : 1);
    if (g_str_equal(name, "debug")) {
      f->debug = TRUE;
      continue;
    }
    if (g_str_equal(name, "v") || g_str_equal(name, "version")) {
      f->version = TRUE;
      continue;
    }
    gboolean known = FALSE;
    for (gsize k = 0; k < G_N_ELEMENTS(strings) && !known; k++) {
      gsize len = strlen(strings[k].name);
      if (strncmp(name, strings[k].name, len) != 0 || (name[len] != '\0' && name[len] != '='))
        continue;
      known = TRUE;
      const char *value = name[len] == '=' ? name + len + 1 : (i + 1 < argc ? argv[++i] : NULL);
      if (value == NULL) {
        g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "flag -%s needs a value",
                    strings[k].name);
        return FALSE;
      }
      if (strings[k].value != NULL) {
        g_free(*strings[k].value);
        *strings[k].value = g_strdup(value);
      }
    }
    if (!known) {
      g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "unknown flag %s", a);
      return FALSE;
    }
  }
  return TRUE;
}

static const char *str_or(const char *s)
{
  return s != NULL ? s : "";
}

static const char *run_dir(void)
{
  const char *dir = g_getenv("FERRY_SHIM_RUN_DIR");
  return dir != NULL && dir[0] != '\0' ? dir : DEFAULT_RUN_DIR;
}

/* The bundle's OCI spec annotation naming the sandbox, else the container id. */
static char *group_of(const Flags *f, const char *bundle, GError **error)
{
  g_autofree char *path = g_build_filename(bundle, "config.json", NULL);
  g_autofree char *text = NULL;
  if (!g_file_get_contents(path, &text, NULL, error))
    return NULL;
  json_error_t jerr;
  g_autoptr(json_t) spec = json_loads(text, 0, &jerr);
  if (!json_is_object(spec)) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                "%s is not an OCI spec (a JSON object): %s", path, jerr.text);
    return NULL;
  }
  const char *sandbox = json_string_value(
      json_object_get(json_object_get(spec, "annotations"), SANDBOX_ID_ANNOTATION));
  return g_strdup(sandbox != NULL && sandbox[0] != '\0' ? sandbox : f->id);
}

/* A short, stable socket path for (namespace, group): unix paths are limited to 107
 * bytes, and ids may be 64 hex digits. */
static char *socket_path(const Flags *f, const char *group)
{
  g_autofree char *key = g_strdup_printf("%s/%s/%s", f->address != NULL ? f->address : "",
                                         f->namespace != NULL ? f->namespace : "", group);
  g_autofree char *digest = g_compute_checksum_for_string(G_CHECKSUM_SHA256, key, -1);
  digest[32] = '\0';
  g_autofree char *name = g_strdup_printf("%s.sock", digest);
  return g_build_filename(run_dir(), "s", name, NULL);
}

/* Read stdin to its end: a legacy options Any (containerd 1.6/1.7) or a
 * BootstrapParams (2.3); neither carries anything Ferry needs yet. */
static void drain_stdin(void)
{
  char buf[4096];
  ssize_t n;
  do {
    n = read(STDIN_FILENO, buf, sizeof(buf));
  } while (n > 0 || (n < 0 && errno == EINTR));
}

static gboolean write_address(const char *bundle, const char *address, GError **error)
{
  g_autofree char *path = g_build_filename(bundle, "address", NULL);
  return g_file_set_contents(path, address, -1, error);
}

/* ---------------------------------------------------------------- start -- */

static gboolean daemon_serves(const char *path)
{
  g_auto(FerryFd) probe = ferry_unix_connect(path, NULL);
  return probe >= 0;
}

/* The container joins the group's daemon: its address, as a new daemon's would be. */
static int join_daemon(const char *bundle, const char *address)
{
  g_autoptr(GError) error = NULL;
  if (!write_address(bundle, address, &error)) {
    g_printerr("start: %s\n", error->message);
    return 1;
  }
  printf("%s", address);
  return 0;
}

static int do_start(const Flags *f, const char *self)
{
  g_autoptr(GError) error = NULL;
  drain_stdin();
  g_autofree char *bundle = f->bundle != NULL ? g_strdup(f->bundle) : g_get_current_dir();
  if (f->id == NULL) {
    g_printerr("start: -id is required\n");
    return 1;
  }
  g_autofree char *group = group_of(f, bundle, &error);
  if (group == NULL) {
    g_printerr("start: %s\n", error->message);
    return 1;
  }
  g_autofree char *path = socket_path(f, group);
  g_autofree char *address = g_strdup_printf("unix://%s", path);
  /* A daemon of this group already serves: join it. */
  if (daemon_serves(path))
    return join_daemon(bundle, address);
  g_autofree char *dir = g_path_get_dirname(path);
  if (g_mkdir_with_parents(dir, 0711) != 0) {
    g_printerr("start: create %s: %s\n", dir, g_strerror(errno));
    return 1;
  }
  /* A stale socket nobody answers on is replaced. */
  g_auto(FerryFd) listener = ferry_unix_listen(path, &error);
  if (listener < 0 && daemon_serves(path))
    return join_daemon(bundle, address); /* another `start` of the group was quicker */
  if (listener < 0) {
    g_printerr("start: %s\n", error->message);
    return 1;
  }
  pid_t pid = fork();
  if (pid < 0) {
    g_printerr("start: fork: %s\n", g_strerror(errno));
    unlink(path);
    return 1;
  }
  if (pid == 0) {
    /* The daemon: its own session, nothing of containerd's pipes (containerd waits
     * for them to close), the listener across exec. */
    setsid();
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    g_autofree char *log_path = g_build_filename(bundle, "shim.log", NULL);
    int log = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    dup2(null, STDIN_FILENO);
    dup2(null, STDOUT_FILENO);
    dup2(log >= 0 ? log : null, STDERR_FILENO);
    int fd = fcntl(listener, F_DUPFD, 3); /* without CLOEXEC: it crosses exec */
    g_autofree char *fd_text = g_strdup_printf("%d", fd);
    g_setenv(LISTEN_FD_ENV, fd_text, TRUE);
    if (chdir(bundle) != 0)
      _exit(127);
    GPtrArray *args = g_ptr_array_new();
    g_ptr_array_add(args, (char *)self);
    const char *names[] = { "-namespace", "-address", "-publish-binary", "-id" };
    const char *values[] = { f->namespace, f->address, f->publish_binary, f->id };
    for (gsize i = 0; i < G_N_ELEMENTS(names); i++)
      if (values[i] != NULL) {
        g_ptr_array_add(args, (char *)names[i]);
        g_ptr_array_add(args, (char *)values[i]);
      }
    if (f->debug)
      g_ptr_array_add(args, "-debug");
    g_ptr_array_add(args, "serve");
    g_ptr_array_add(args, NULL);
    execv(self, (char **)args->pdata);
    _exit(127);
  }
  if (!write_address(bundle, address, &error)) {
    g_printerr("start: %s\n", error->message);
    kill(pid, SIGKILL);
    unlink(path);
    return 1;
  }
  printf("%s", address);
  fflush(stdout);
  close(STDOUT_FILENO); /* last: containerd reads EOF as ready */
  return 0;
}

/* --------------------------------------------------------------- delete -- */

/* TRUE if `pid` runs a QEMU: a recorded pid the kernel reused must not be killed. */
static gboolean pid_is_qemu(GPid pid)
{
  g_autofree char *path = g_strdup_printf("/proc/%d/cmdline", pid);
  g_autofree char *cmdline = NULL;
  gsize len = 0;
  if (!g_file_get_contents(path, &cmdline, &len, NULL) || len == 0)
    return FALSE;
  g_autofree char *base = g_path_get_basename(cmdline);
  return g_str_has_prefix(base, "qemu-system-");
}

static int do_delete(const Flags *f)
{
  g_autofree char *bundle = f->bundle != NULL ? g_strdup(f->bundle) : g_get_current_dir();
  /* The daemon records its QEMU's pid beside the bundle's address. */
  g_autofree char *pid_path = g_build_filename(bundle, "qemu.pid", NULL);
  g_autofree char *pid_text = NULL;
  if (g_file_get_contents(pid_path, &pid_text, NULL, NULL)) {
    guint64 pid = 0;
    if (g_ascii_string_to_unsigned(g_strstrip(pid_text), 10, 1, G_MAXINT32, &pid, NULL) &&
        pid_is_qemu((GPid)pid)) {
      kill((pid_t)pid, SIGKILL);
      for (int i = 0; i < 400 && kill((pid_t)pid, 0) == 0 && pid_is_qemu((GPid)pid); i++)
        g_usleep(10000); /* the kernel reaps it: it is not our child */
    }
    unlink(pid_path);
  }
  g_autofree char *address_path = g_build_filename(bundle, "address", NULL);
  g_autofree char *address = NULL;
  if (g_file_get_contents(address_path, &address, NULL, NULL) &&
      g_str_has_prefix(address, "unix://")) {
    const char *sock = address + strlen("unix://");
    if (!daemon_serves(sock))
      unlink(sock); /* nobody serves on it any more */
  }
  struct timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  Google__Protobuf__Timestamp at = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
  at.seconds = now.tv_sec;
  at.nanos = (int32_t)now.tv_nsec;
  Containerd__Task__V2__DeleteResponse resp = CONTAINERD__TASK__V2__DELETE_RESPONSE__INIT;
  resp.exit_status = 128 + SIGKILL;
  resp.exited_at = &at;
  gsize len = containerd__task__v2__delete_response__get_packed_size(&resp);
  g_autofree guint8 *buf = g_malloc(len > 0 ? len : 1);
  containerd__task__v2__delete_response__pack(&resp, buf);
  if (fwrite(buf, 1, len, stdout) != len)
    return 1;
  return 0;
}

/* ---------------------------------------------------------------- serve -- */

/* The shim's configuration (docs/shim.md): a JSON file (FERRY_SHIM_CONFIG, else
 * FERRY_SHIM_DEFAULT_CONFIG) whose keys override the built-in defaults; a missing file
 * means the defaults. */
typedef struct {
  char *kernel, *initrd, *qemu, *image_cache, *state_dir;
  guint memory_mb, cpus, boot_timeout_ms, scratch_mb;
} ShimConfig;

static void shim_config_clear(ShimConfig *c)
{
  g_free(c->kernel);
  g_free(c->initrd);
  g_free(c->qemu);
  g_free(c->image_cache);
  g_free(c->state_dir);
}

static gboolean config_string(json_t *obj, const char *key, char **out, GError **error)
{
  json_t *v = json_object_get(obj, key);
  if (v == NULL)
    return TRUE;
  if (!json_is_string(v)) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "config: %s must be a string",
                key);
    return FALSE;
  }
  g_free(*out);
  *out = g_strdup(json_string_value(v));
  return TRUE;
}

static gboolean config_uint(json_t *obj, const char *key, guint *out, GError **error)
{
  json_t *v = json_object_get(obj, key);
  if (v == NULL)
    return TRUE;
  if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > G_MAXUINT32) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                "config: %s must be a non-negative integer", key);
    return FALSE;
  }
  *out = (guint)json_integer_value(v);
  return TRUE;
}

static gboolean load_config(ShimConfig *c, GError **error)
{
  c->kernel = g_build_filename(FERRY_DATADIR, "ferry", "vmlinux", NULL);
  c->initrd = g_build_filename(FERRY_DATADIR, "ferry", "initramfs.cpio", NULL);
  c->image_cache = g_build_filename(run_dir(), "images", NULL);
  c->state_dir = g_build_filename(run_dir(), "sandboxes", NULL);
  const char *path = g_getenv("FERRY_SHIM_CONFIG");
  if (path == NULL)
    path = FERRY_SHIM_DEFAULT_CONFIG;
  g_autofree char *text = NULL;
  if (!g_file_get_contents(path, &text, NULL, NULL))
    return TRUE; /* no file: the defaults */
  json_error_t jerr;
  g_autoptr(json_t) obj = json_loads(text, 0, &jerr);
  if (!json_is_object(obj)) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                "config %s is not a JSON object: %s", path, jerr.text);
    return FALSE;
  }
  return config_string(obj, "kernel", &c->kernel, error) &&
         config_string(obj, "initrd", &c->initrd, error) &&
         config_string(obj, "qemu", &c->qemu, error) &&
         config_string(obj, "image_cache", &c->image_cache, error) &&
         config_string(obj, "state_dir", &c->state_dir, error) &&
         config_uint(obj, "memory_mb", &c->memory_mb, error) &&
         config_uint(obj, "cpus", &c->cpus, error) &&
         config_uint(obj, "boot_timeout_ms", &c->boot_timeout_ms, error) &&
         config_uint(obj, "scratch_mb", &c->scratch_mb, error);
}

/* The VM's size from the first container's spec over the config's (task-service.h). */
static void size_vm(ShimConfig *c)
{
  g_autofree char *text = NULL;
  g_autoptr(json_t) spec = NULL;
  if (g_file_get_contents("config.json", &text, NULL, NULL))
    spec = json_loads(text, 0, NULL);
  FerryVmAccel accel = ferry_vm_detect_accel(NULL, NULL, NULL);
  ferry_shim_vm_size(spec, c->memory_mb, c->cpus, accel == FERRY_VM_ACCEL_TCG, &c->memory_mb,
                     &c->cpus);
}

typedef struct {
  GMainLoop *loop;
} Daemon;

static void on_service_shutdown(FerryTaskService *service, gpointer ud)
{
  Daemon *d = ud;
  g_main_loop_quit(d->loop);
}

static gboolean on_term(gpointer ud)
{
  g_main_loop_quit(ud);
  return G_SOURCE_CONTINUE;
}

static int do_serve(const Flags *f)
{
  const char *fd_text = g_getenv(LISTEN_FD_ENV);
  guint64 fd = 0;
  if (fd_text == NULL || !g_ascii_string_to_unsigned(fd_text, 10, 3, G_MAXINT32, &fd, NULL)) {
    g_printerr("serve: %s is not set: the daemon is started by `start`\n", LISTEN_FD_ENV);
    return 1;
  }
  g_unsetenv(LISTEN_FD_ENV);
  signal(SIGPIPE, SIG_IGN);
  /* The socket's path from the socket itself: the bundle (and its address file) may be
   * gone by the time the daemon exits, containerd removes it right after Shutdown. */
  struct sockaddr_un bound = { 0 };
  socklen_t bound_len = sizeof(bound);
  g_autofree char *socket_file = NULL;
  if (getsockname((int)fd, (struct sockaddr *)&bound, &bound_len) == 0 &&
      bound.sun_family == AF_UNIX && bound.sun_path[0] == '/')
    socket_file = g_strndup(bound.sun_path, sizeof(bound.sun_path));
  g_autoptr(GError) error = NULL;
  ShimConfig cfg = { 0 };
  if (!load_config(&cfg, &error)) {
    g_printerr("serve: %s\n", error->message);
    return 1;
  }
  size_vm(&cfg);
  g_autofree char *bundle = g_get_current_dir();
  g_autofree char *group = group_of(f, bundle, NULL);
  g_autofree char *group_dir =
      g_compute_checksum_for_string(G_CHECKSUM_SHA256, group != NULL ? group : str_or(f->id), -1);
  group_dir[32] = '\0';
  g_autofree char *state = g_build_filename(cfg.state_dir, group_dir, NULL);
  FerryTaskServiceConfig tcfg = {
    .namespace = f->namespace,
    .sandbox_id = group != NULL ? group : f->id,
    .state_dir = state,
    .image_cache = cfg.image_cache,
    .kernel = cfg.kernel,
    .initrd = cfg.initrd,
    .events_address = g_getenv("TTRPC_ADDRESS"),
    .memory_mb = cfg.memory_mb,
    .cpus = cfg.cpus,
    .boot_timeout_ms = cfg.boot_timeout_ms,
    .scratch_mb = cfg.scratch_mb,
    .vm = { .qemu_binary = cfg.qemu },
  };
  Daemon d = { 0 };
  d.loop = g_main_loop_new(NULL, FALSE);
  static const FerryTaskServiceHandlers handlers = { .shutdown = on_service_shutdown };
  FerryTaskService *service = ferry_task_service_new(&tcfg, &handlers, &d, &error);
  FerryTtrpcServer *server = ferry_ttrpc_server_new();
  if (service == NULL || !ferry_task_service_register(service, server, &error) ||
      !ferry_ttrpc_server_listen_fd(server, (int)fd, &error)) {
    g_printerr("serve: %s\n", error->message);
    return 1;
  }
  g_unix_signal_add(SIGTERM, on_term, d.loop);
  g_unix_signal_add(SIGINT, on_term, d.loop);
  g_main_loop_run(d.loop);
  ferry_ttrpc_server_free(server);
  ferry_task_service_free(service); /* stops the VM */
  g_main_loop_unref(d.loop);
  shim_config_clear(&cfg);
  /* The socket goes with the daemon: a later start of the group makes a new one. */
  if (socket_file != NULL)
    unlink(socket_file);
  return 0;
}

int main(int argc, char **argv)
{
  Flags f = { 0 };
  g_autofree char *action = NULL;
  g_autoptr(GError) error = NULL;
  if (!parse_flags(argc, argv, &f, &action, &error)) {
    g_printerr("%s: %s\n", argv[0], error->message);
    return 2;
  }
  int rc;
  if (f.version) {
    g_autofree char *name = g_path_get_basename(argv[0]);
    printf("%s:\n  Version: %s\n", name, SHIM_VERSION);
    rc = 0;
  } else if (g_strcmp0(action, "start") == 0) {
    g_autofree char *self = g_file_read_link("/proc/self/exe", NULL);
    rc = do_start(&f, self != NULL ? self : argv[0]);
  } else if (g_strcmp0(action, "delete") == 0) {
    rc = do_delete(&f);
  } else if (g_strcmp0(action, "serve") == 0) {
    rc = do_serve(&f);
  } else {
    g_printerr("%s: usage: -namespace NS -address A -id ID [-bundle DIR] start|delete\n", argv[0]);
    rc = 2;
  }
  flags_clear(&f);
  return rc;
}
