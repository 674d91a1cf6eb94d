/*
 * A task's stdio as containerd names it (docs/shim.md, stdio): "" none, a FIFO path
 * (ctr's), file:///path (a log file, appended), binary:///path?k=v (a logging program
 * that gets the output on fds 3 and 4 and closes fd 5 when ready, as runc's shim does:
 * nerdctl's). What the task service hands to FerryCmd.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ferry/error.h"
#include "ferry/fd.h"
#include "shim-private.h"

/* How long a binary:// logger may take to say it is ready. */
#define BINARY_READY_MS 10000

static int open_fifo_or_file(const char *path, gboolean input, GError **error)
{
  int fd;
  if (input) {
    fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  } else {
    /* containerd opens its reading end first; O_RDWR if it did not (yet), so that the
     * open never blocks and never fails with ENXIO. */
    fd = open(path, O_WRONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0 && errno == ENXIO)
      fd = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC);
  }
  if (fd < 0)
    ferry_error_set_errno(error, errno, "open %s %s", input ? "stdin" : "output", path);
  return fd;
}

static gboolean start_binary(const char *uri_text, const char *id, const char *ns, int out[2],
                             ShimStdio *io, GError **error)
{
  g_autoptr(GUri) uri = g_uri_parse(uri_text, G_URI_FLAGS_NONE, error);
  if (uri == NULL)
    return FALSE;
  const char *path = g_uri_get_path(uri);
  if (path == NULL || path[0] != '/') {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                "binary log URI %s: needs an absolute path", uri_text);
    return FALSE;
  }
  g_autoptr(GPtrArray) argv = g_ptr_array_new_with_free_func(g_free);
  g_ptr_array_add(argv, g_strdup(path));
  const char *query = g_uri_get_query(uri);
  if (query != NULL) {
    g_autoptr(GHashTable) params = g_uri_parse_params(query, -1, "&", G_URI_PARAMS_NONE, error);
    if (params == NULL)
      return FALSE;
    g_autoptr(GList) keys = g_list_sort(g_hash_table_get_keys(params), (GCompareFunc)strcmp);
    for (GList *k = keys; k != NULL; k = k->next) {
      g_ptr_array_add(argv, g_strdup(k->data));
      const char *v = g_hash_table_lookup(params, k->data);
      if (v != NULL && v[0] != '\0')
        g_ptr_array_add(argv, g_strdup(v));
    }
  }
  g_ptr_array_add(argv, NULL);
  int pipes[2][2], ready[2];
  if (pipe2(pipes[0], O_CLOEXEC) != 0 || pipe2(pipes[1], O_CLOEXEC) != 0 ||
      pipe2(ready, O_CLOEXEC) != 0)
    return ferry_error_set_errno(error, errno, "binary log %s: pipe", path);
  pid_t pid = fork();
  if (pid < 0)
    return ferry_error_set_errno(error, errno, "binary log %s: fork", path);
  if (pid == 0) {
    /* fds 3, 4, 5 as containerd's shims hand them. */
    int keep[3] = { fcntl(pipes[0][0], F_DUPFD_CLOEXEC, 10),
                    fcntl(pipes[1][0], F_DUPFD_CLOEXEC, 10), fcntl(ready[1], F_DUPFD_CLOEXEC, 10) };
    for (int i = 0; i < 3; i++)
      if (keep[i] < 0 || dup2(keep[i], 3 + i) < 0)
        _exit(127);
    int null = open("/dev/null", O_RDWR);
    dup2(null, STDIN_FILENO);
    setenv("CONTAINER_ID", id, 1);
    setenv("CONTAINER_NAMESPACE", ns, 1);
    execv(path, (char **)argv->pdata);
    _exit(127);
  }
  close(pipes[0][0]);
  close(pipes[1][0]);
  close(ready[1]);
  /* Ready when it closed fd 5 (or exited). */
  struct pollfd p = { .fd = ready[0], .events = POLLIN };
  int n;
  do {
    n = poll(&p, 1, BINARY_READY_MS);
  } while (n < 0 && errno == EINTR);
  close(ready[0]);
  if (n == 0) {
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    close(pipes[0][1]);
    close(pipes[1][1]);
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_DEADLINE_EXCEEDED,
                "binary log %s: not ready after %u ms", path, BINARY_READY_MS);
    return FALSE;
  }
  out[0] = pipes[0][1];
  out[1] = pipes[1][1];
  io->logger = pid;
  return TRUE;
}

gboolean shim_stdio_open(ShimStdio *io, const char *id, const char *ns, const char *in,
                         const char *out, const char *err, GError **error)
{
  *io = (ShimStdio){ .fds = { -1, -1, -1 } };
  if (in != NULL && in[0] != '\0') {
    io->fds[0] = open_fifo_or_file(in, TRUE, error);
    if (io->fds[0] < 0)
      return FALSE;
  }
  if (out != NULL && g_str_has_prefix(out, "binary://")) {
    int pair[2] = { -1, -1 };
    if (!start_binary(out, id, ns, pair, io, error)) {
      shim_stdio_close(io);
      return FALSE;
    }
    io->fds[1] = pair[0];
    io->fds[2] = pair[1];
    return TRUE;
  }
  const char *names[2] = { out, err };
  for (int i = 0; i < 2; i++) {
    const char *name = names[i];
    if (name == NULL || name[0] == '\0')
      continue;
    if (g_str_has_prefix(name, "file://")) {
      g_autofree char *path = g_filename_from_uri(name, NULL, error);
      if (path == NULL) {
        shim_stdio_close(io);
        return FALSE;
      }
      g_autofree char *dir = g_path_get_dirname(path);
      g_mkdir_with_parents(dir, 0755);
      io->fds[1 + i] = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
      if (io->fds[1 + i] < 0) {
        ferry_error_set_errno(error, errno, "open log file %s", path);
        shim_stdio_close(io);
        return FALSE;
      }
      continue;
    }
    if (strstr(name, "://") != NULL) {
      g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                  "stdio %s: only FIFO paths, file:// and binary:// are supported", name);
      shim_stdio_close(io);
      return FALSE;
    }
    /* The same FIFO for both (a terminal's) gets one open. */
    if (i == 1 && out != NULL && g_strcmp0(out, err) == 0) {
      io->fds[2] = fcntl(io->fds[1], F_DUPFD_CLOEXEC, 3);
      continue;
    }
    io->fds[1 + i] = open_fifo_or_file(name, FALSE, error);
    if (io->fds[1 + i] < 0) {
      shim_stdio_close(io);
      return FALSE;
    }
  }
  return TRUE;
}

void shim_stdio_close(ShimStdio *io)
{
  for (int i = 0; i < 3; i++)
    ferry_fd_clear(&io->fds[i]);
}

void shim_stdio_stop_logger(ShimStdio *io)
{
  if (io->logger <= 0)
    return;
  /* Its input ended with the process's output; give it a moment to flush. */
  int status;
  for (int i = 0; i < 100 && waitpid(io->logger, &status, WNOHANG) == 0; i++)
    g_usleep(10000);
  if (waitpid(io->logger, &status, WNOHANG) == 0) {
    kill(io->logger, SIGKILL);
    waitpid(io->logger, &status, 0);
  }
  io->logger = 0;
}
