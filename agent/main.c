/*
 * ferry-gcs: the guest agent. Wires a guest-role channel mux (over a unix socket the
 * host listens on, or a virtio-serial port), a crun runtime and the agent logic
 * (lib/gcs) together and runs the main loop. docs/agent.md.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <glib-unix.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "ferry/error.h"
#include "ferry/fd.h"
#include "ferry/gcs.h"
#include "ferry/log.h"
#include "ferry/mux.h"
#include "ferry/runtime.h"

#define DEFAULT_STATE_DIR "/run/ferry-gcs"
#define VIRTIO_PORTS_DIR "/dev/virtio-ports"
/* Where the kernel names each port (vportXpY/name) when no udev made the symlinks. */
#define VIRTIO_PORTS_SYSFS "/sys/class/virtio-ports"
/* Between attempts to get the mux's stream back. */
#define RECONNECT_MS 100

typedef struct {
  GMainLoop *loop;
  FerryMux *mux;
  char *socket_path; /* --mux-socket */
  char *port_name;   /* --virtio-port */
  guint reconnect_source;
  guint failures;  /* in a row; the first is logged at info */
  gboolean synced; /* since the last attach: a loss after it is news */
} Agent;

static int connect_unix(const char *path, GError **error)
{
  struct sockaddr_un addr = { .sun_family = AF_UNIX };
  if (strlen(path) >= sizeof(addr.sun_path)) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "socket path %s is too long",
                path);
    return -1;
  }
  strcpy(addr.sun_path, path);
  g_auto(FerryFd) fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    ferry_error_set_errno(error, errno, "socket");
    return -1;
  }
  if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
    ferry_error_set_errno(error, errno, "connect to %s", path);
    return -1;
  }
  return ferry_fd_steal(&fd);
}

/* The /dev path of the port called `name` according to sysfs (/dev/vportXpY, which
 * devtmpfs creates), or NULL with errno set: ENOENT when no port has that name. */
static char *find_port_in_sysfs(const char *name)
{
  DIR *dir = opendir(VIRTIO_PORTS_SYSFS);
  if (dir == NULL)
    return NULL;
  char *path = NULL;
  struct dirent *entry;
  while (path == NULL && (entry = readdir(dir)) != NULL) {
    if (entry->d_name[0] == '.')
      continue;
    g_autofree char *name_file = g_build_filename(VIRTIO_PORTS_SYSFS, entry->d_name, "name", NULL);
    g_autofree char *contents = NULL;
    /* A port without a name has an empty file; one being removed may have none. */
    if (g_file_get_contents(name_file, &contents, NULL, NULL) &&
        strcmp(g_strchomp(contents), name) == 0)
      path = g_build_filename("/dev", entry->d_name, NULL);
  }
  closedir(dir);
  errno = ENOENT;
  return path;
}

/* /dev/virtio-ports/NAME where udev made it, else the port sysfs names NAME. */
static int open_port(const char *name, GError **error)
{
  g_autofree char *link = g_build_filename(VIRTIO_PORTS_DIR, name, NULL);
  int fd = open(link, O_RDWR | O_CLOEXEC | O_NOCTTY);
  if (fd >= 0 || errno != ENOENT) {
    if (fd < 0)
      ferry_error_set_errno(error, errno, "open %s", link);
    return fd;
  }
  g_autofree char *path = find_port_in_sysfs(name);
  if (path == NULL) {
    int errsv = errno;
    ferry_error_set_errno(error, errsv, "no virtio port named %s in %s or %s", name,
                          VIRTIO_PORTS_DIR, VIRTIO_PORTS_SYSFS);
    return -1;
  }
  fd = open(path, O_RDWR | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) {
    ferry_error_set_errno(error, errno, "open %s (virtio port %s)", path, name);
    return -1;
  }
  ferry_log(FERRY_LOG_DEBUG, "virtio port found in sysfs", "virtio_port", name, "path", path, NULL);
  return fd;
}

/* Give the mux a new stream; it resumes every channel at the exact byte. */
static gboolean agent_attach(Agent *agent, GError **error)
{
  int fd = agent->socket_path != NULL ? connect_unix(agent->socket_path, error)
                                      : open_port(agent->port_name, error);
  return fd >= 0 && ferry_mux_attach(agent->mux, fd, error);
}

static void schedule_reconnect(Agent *agent);

static gboolean on_reconnect(gpointer user_data)
{
  Agent *agent = user_data;
  agent->reconnect_source = 0;
  g_autoptr(GError) error = NULL;
  if (agent_attach(agent, &error)) {
    if (agent->failures > 0)
      ferry_log(FERRY_LOG_INFO, "mux stream attached", NULL);
    agent->failures = 0;
    return G_SOURCE_REMOVE;
  }
  ferry_log(agent->failures == 0 ? FERRY_LOG_INFO : FERRY_LOG_DEBUG,
            "mux stream unavailable; retrying", "error", error->message, NULL);
  agent->failures++;
  schedule_reconnect(agent);
  return G_SOURCE_REMOVE;
}

static void schedule_reconnect(Agent *agent)
{
  if (agent->reconnect_source == 0)
    agent->reconnect_source = g_timeout_add(RECONNECT_MS, on_reconnect, agent);
}

static void on_mux_synced(FerryMux *mux, gpointer user_data)
{
  Agent *agent = user_data;
  agent->synced = TRUE;
}

static void on_mux_lost(FerryMux *mux, const GError *error, gpointer user_data)
{
  Agent *agent = user_data;
  /* A virtio port without a host behind it ends at once, every time: say it once. */
  ferry_log(agent->synced ? FERRY_LOG_INFO : FERRY_LOG_DEBUG, "mux stream lost; reconnecting",
            "error", error->message, NULL);
  agent->synced = FALSE;
  schedule_reconnect(agent);
}

static void on_shutdown(FerryGcs *gcs, gpointer user_data)
{
  Agent *agent = user_data;
  ferry_log(FERRY_LOG_INFO, "shutdown requested by the host", NULL);
  g_main_loop_quit(agent->loop);
}

static gboolean on_signal(gpointer user_data)
{
  Agent *agent = user_data;
  ferry_log(FERRY_LOG_INFO, "signal received; shutting down", NULL);
  g_main_loop_quit(agent->loop);
  return G_SOURCE_CONTINUE;
}

int main(int argc, char **argv)
{
  gboolean local = FALSE;
  g_autofree char *state_dir = NULL;
  g_autofree char *mux_socket = NULL;
  g_autofree char *virtio_port = NULL;
  g_autofree char *log_level = NULL;
  GOptionEntry entries[] = {
    { "local", 0, 0, G_OPTION_ARG_NONE, &local,
      "Run on a host: a private mount namespace with cgroup2 for crun", NULL },
    { "state-dir", 0, 0, G_OPTION_ARG_FILENAME, &state_dir,
      "The runtime's state directory (default " DEFAULT_STATE_DIR ")", "DIR" },
    { "mux-socket", 0, 0, G_OPTION_ARG_FILENAME, &mux_socket,
      "Connect the channel mux to the unix socket the host listens on", "PATH" },
    { "virtio-port", 0, 0, G_OPTION_ARG_STRING, &virtio_port,
      "Use the virtio-serial port NAME (" VIRTIO_PORTS_DIR
      "/NAME, else found in " VIRTIO_PORTS_SYSFS ") as the channel mux's stream",
      "NAME" },
    { "log-level", 0, 0, G_OPTION_ARG_STRING, &log_level, "debug, info, warning or error",
      "LEVEL" },
    { NULL },
  };
  g_autoptr(GOptionContext) context = g_option_context_new("- the Ferry guest agent");
  g_option_context_add_main_entries(context, entries, NULL);
  g_autoptr(GError) error = NULL;
  if (!g_option_context_parse(context, &argc, &argv, &error)) {
    fprintf(stderr, "ferry-gcs: %s\n", error->message);
    return 2;
  }
  if ((mux_socket == NULL) == (virtio_port == NULL) || argc > 1) {
    fprintf(stderr, "ferry-gcs: give exactly one of --mux-socket and --virtio-port\n");
    return 2;
  }
  if (virtio_port != NULL && (strchr(virtio_port, '/') != NULL || *virtio_port == '\0' ||
                              strcmp(virtio_port, "..") == 0 || strcmp(virtio_port, ".") == 0)) {
    fprintf(stderr, "ferry-gcs: --virtio-port takes a port name, not a path\n");
    return 2;
  }
  if (log_level == NULL)
    log_level = g_strdup(g_getenv("FERRY_LOG_LEVEL")); /* the library reads no environment */
  if (log_level != NULL && *log_level != '\0') {
    FerryLogLevel level;
    if (!ferry_log_level_parse(log_level, &level)) {
      fprintf(stderr, "ferry-gcs: unknown log level %s\n", log_level);
      return 2;
    }
    ferry_log_set_level(level);
  }
  /* Before anything could start a thread: other threads keep the old namespace. */
  if (local && !ferry_runtime_enter_local_mode(&error)) {
    ferry_log(FERRY_LOG_ERROR, "cannot enter local mode", "error", error->message, NULL);
    return 1;
  }
  /* A relay writing to a process that closed its stdin gets EPIPE, not death. */
  signal(SIGPIPE, SIG_IGN);

  FerryRuntimeOptions runtime_options = { .cgroup_manager = local ? "disabled" : NULL };
  g_autoptr(FerryRuntime) runtime = ferry_runtime_new(
      state_dir != NULL ? state_dir : DEFAULT_STATE_DIR, &runtime_options, &error);
  if (runtime == NULL) {
    ferry_log(FERRY_LOG_ERROR, "cannot set up the runtime", "error", error->message, NULL);
    return 1;
  }

  Agent agent = { 0 };
  agent.loop = g_main_loop_new(NULL, FALSE);
  agent.mux = ferry_mux_new(FERRY_MUX_GUEST);
  agent.socket_path = mux_socket;
  agent.port_name = virtio_port;
  ferry_mux_set_lost_func(agent.mux, on_mux_lost, &agent);
  ferry_mux_set_synced_func(agent.mux, on_mux_synced, &agent);

  FerryGcsOptions gcs_options = { .shutdown = on_shutdown, .shutdown_data = &agent };
  FerryGcs *gcs = ferry_gcs_new(ferry_mux_get_transport(agent.mux), runtime, &gcs_options, &error);
  if (gcs == NULL) {
    ferry_log(FERRY_LOG_ERROR, "cannot start the agent", "error", error->message, NULL);
    return 1;
  }
  guint sigterm = g_unix_signal_add(SIGTERM, on_signal, &agent);
  guint sigint = g_unix_signal_add(SIGINT, on_signal, &agent);
  ferry_log(FERRY_LOG_INFO, "ferry-gcs started", "mux_socket", mux_socket, "virtio_port",
            virtio_port, "local", local ? "true" : "false", NULL);
  on_reconnect(&agent);
  g_main_loop_run(agent.loop);

  g_source_remove(sigterm);
  g_source_remove(sigint);
  if (agent.reconnect_source != 0)
    g_source_remove(agent.reconnect_source);
  ferry_gcs_free(gcs);
  ferry_mux_free(agent.mux);
  g_main_loop_unref(agent.loop);
  ferry_log(FERRY_LOG_INFO, "ferry-gcs stopped", NULL);
  return 0;
}
