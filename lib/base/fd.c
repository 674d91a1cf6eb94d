/* fd helpers: cleanup, flags, SCM_RIGHTS passing. */
#include "ferry/fd.h"

#include <errno.h>
#include <fcntl.h>
#include <glib-unix.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "ferry/error.h"

void ferry_fd_close_quietly(FerryFd fd)
{
  if (fd < 0)
    return;
  int saved = errno;
  close(fd); /* Linux closes the fd even when close(2) reports EINTR. */
  errno = saved;
}

void ferry_fd_clear(int *fd)
{
  ferry_fd_close_quietly(*fd);
  *fd = -1;
}

gboolean ferry_fd_set_cloexec(int fd, GError **error)
{
  int flags = fcntl(fd, F_GETFD);
  if (flags < 0 || fcntl(fd, F_SETFD, flags | FD_CLOEXEC) < 0)
    return ferry_error_set_errno(error, errno, "set close-on-exec on fd %d", fd);
  return TRUE;
}

gboolean ferry_fd_set_nonblocking(int fd, gboolean nonblocking, GError **error)
{
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0)
    return ferry_error_set_errno(error, errno, "get flags of fd %d", fd);
  int want = nonblocking ? (flags | O_NONBLOCK) : (flags & ~O_NONBLOCK);
  if (want != flags && fcntl(fd, F_SETFL, want) < 0)
    return ferry_error_set_errno(error, errno, "set O_NONBLOCK on fd %d", fd);
  return TRUE;
}

gboolean ferry_socketpair(int fds[2], gboolean nonblocking, GError **error)
{
  int type = SOCK_STREAM | SOCK_CLOEXEC | (nonblocking ? SOCK_NONBLOCK : 0);
  if (socketpair(AF_UNIX, type, 0, fds) < 0)
    return ferry_error_set_errno(error, errno, "socketpair");
  return TRUE;
}

/* A message with rights must carry data; more than a page is a caller's mistake. */
#define FD_MSG_MAX_DATA 4096

gboolean ferry_fd_send(int sock, int fd, const void *data, gsize len, GError **error)
{
  if (len == 0 || len > FD_MSG_MAX_DATA || data == NULL) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                "send fd %d: data must be 1 to %d bytes, not %" G_GSIZE_FORMAT, fd, FD_MSG_MAX_DATA,
                len);
    return FALSE;
  }
  if (fd < 0) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "send fd: invalid fd %d", fd);
    return FALSE;
  }
  union {
    char buf[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
  } control;
  memset(&control, 0, sizeof(control));
  struct iovec iov = { .iov_base = (void *)data, .iov_len = len };
  struct msghdr msg = {
    .msg_iov = &iov,
    .msg_iovlen = 1,
    .msg_control = control.buf,
    .msg_controllen = sizeof(control.buf),
  };
  struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
  cmsg->cmsg_level = SOL_SOCKET;
  cmsg->cmsg_type = SCM_RIGHTS;
  cmsg->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(cmsg), &fd, sizeof(int));

  ssize_t n;
  do
    n = sendmsg(sock, &msg, MSG_NOSIGNAL);
  while (n < 0 && errno == EINTR);
  if (n < 0)
    return ferry_error_set_errno(error, errno, "send fd %d over socket %d", fd, sock);
  if ((gsize)n != len) {
    /* The fd went with the first byte; the rest is plain data. */
    if (!ferry_write_all(sock, (const char *)data + n, len - (gsize)n, error))
      return FALSE;
  }
  return TRUE;
}

/* Close every fd a control message carries except the first, which is returned. */
static int take_first_fd(struct msghdr *msg)
{
  int first = -1;
  for (struct cmsghdr *c = CMSG_FIRSTHDR(msg); c != NULL; c = CMSG_NXTHDR(msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
      continue;
    gsize n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (gsize i = 0; i < n; i++) {
      int fd;
      memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      if (first < 0)
        first = fd;
      else
        ferry_fd_close_quietly(fd);
    }
  }
  return first;
}

gboolean ferry_fd_recv(int sock, void *data, gsize len, gsize *received, int *fd_out,
                       GError **error)
{
  *fd_out = -1;
  *received = 0;
  /* Room for a few fds, so that extra ones arrive whole and can be closed rather than
   * being cut off (MSG_CTRUNC closes them in the kernel anyway). */
  union {
    char buf[CMSG_SPACE(sizeof(int) * 8)];
    struct cmsghdr align;
  } control;
  struct iovec iov = { .iov_base = data, .iov_len = len };
  struct msghdr msg = {
    .msg_iov = &iov,
    .msg_iovlen = 1,
    .msg_control = control.buf,
    .msg_controllen = sizeof(control.buf),
  };
  ssize_t n;
  do
    n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
  while (n < 0 && errno == EINTR);
  if (n < 0)
    return ferry_error_set_errno(error, errno, "receive fd over socket %d", sock);
  int fd = take_first_fd(&msg);
  if (n == 0 && fd < 0) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE,
                "receive fd over socket %d: peer closed", sock);
    return FALSE;
  }
  *received = (gsize)n;
  *fd_out = fd;
  return TRUE;
}

gboolean ferry_write_all(int fd, const void *buf, gsize len, GError **error)
{
  const char *p = buf;
  while (len > 0) {
    ssize_t n = write(fd, p, len);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      return ferry_error_set_errno(error, errno, "write to fd %d", fd);
    p += n;
    len -= (gsize)n;
  }
  return TRUE;
}

/* `path` into `addr`; FALSE with INVALID_ARGUMENT when it does not fit. */
static gboolean unix_address(const char *path, const char *what, struct sockaddr_un *addr,
                             GError **error)
{
  *addr = (struct sockaddr_un){ .sun_family = AF_UNIX };
  if (path[0] == '\0' || strlen(path) >= sizeof(addr->sun_path)) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                "%s %s: not a usable unix socket path (at most %zu bytes)", what, path,
                sizeof(addr->sun_path) - 1);
    return FALSE;
  }
  strcpy(addr->sun_path, path);
  return TRUE;
}

int ferry_unix_connect(const char *path, GError **error)
{
  struct sockaddr_un addr;
  if (!unix_address(path, "connect to", &addr, error))
    return -1;
  g_auto(FerryFd) fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return ferry_error_set_errno(error, errno, "connect to %s: socket", path), -1;
  int r;
  do
    r = connect(fd, (struct sockaddr *)&addr, sizeof(addr));
  while (r < 0 && errno == EINTR);
  if (r < 0) {
    int errsv = errno;
    ferry_error_set_errno(error, errsv, "connect to %s", path);
    if (error != NULL && (errsv == ECONNREFUSED || errsv == ENOENT))
      (*error)->code = FERRY_ERROR_UNAVAILABLE;
    return -1;
  }
  return ferry_fd_steal(&fd);
}

int ferry_unix_listen(const char *path, GError **error)
{
  struct sockaddr_un addr;
  if (!unix_address(path, "listen on", &addr, error))
    return -1;
  g_auto(FerryFd) fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0)
    return ferry_error_set_errno(error, errno, "listen on %s: socket", path), -1;
  /* Replace a socket file left by a server that is gone, but neither a live server's
   * socket nor another kind of file. */
  struct stat st;
  if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode)) {
    g_auto(FerryFd) probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (probe >= 0 && connect(probe, (struct sockaddr *)&addr, sizeof(addr)) == 0) {
      g_set_error(error, FERRY_ERROR, FERRY_ERROR_ALREADY_EXISTS,
                  "listen on %s: another server is listening there", path);
      return -1;
    }
    unlink(path);
  }
  if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0)
    return ferry_error_set_errno(error, errno, "listen on %s: bind", path), -1;
  if (listen(fd, 128) < 0) {
    int errsv = errno;
    unlink(path);
    return ferry_error_set_errno(error, errsv, "listen on %s", path), -1;
  }
  return ferry_fd_steal(&fd);
}

/* ---------------------------------------------------------------- hand-off -- */

struct FerryFdHandoff {
  char *path;
  int listen_fd;
  int fd;
  GSource *source;
};

static gboolean on_handoff(gint listen_fd, GIOCondition cond, gpointer ud)
{
  FerryFdHandoff *h = ud;
  int conn = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
  if (conn >= 0) {
    ferry_fd_send(conn, h->fd, "m", 1, NULL); /* a collector that went away gets nothing */
    close(conn);
  }
  return G_SOURCE_CONTINUE;
}

FerryFdHandoff *ferry_fd_handoff_new(const char *path, int fd, GError **error)
{
  unlink(path);
  int listen_fd = ferry_unix_listen(path, error);
  if (listen_fd < 0) {
    close(fd);
    return NULL;
  }
  FerryFdHandoff *h = g_new0(FerryFdHandoff, 1);
  h->path = g_strdup(path);
  h->listen_fd = listen_fd;
  h->fd = fd;
  h->source = g_unix_fd_source_new(listen_fd, G_IO_IN);
  g_source_set_callback(h->source, (GSourceFunc)(void (*)(void))on_handoff, h, NULL);
  g_source_attach(h->source, g_main_context_get_thread_default());
  return h;
}

const char *ferry_fd_handoff_path(FerryFdHandoff *h)
{
  return h->path;
}

void ferry_fd_handoff_free(FerryFdHandoff *h)
{
  if (h == NULL)
    return;
  g_source_destroy(h->source);
  g_source_unref(h->source);
  close(h->listen_fd);
  close(h->fd);
  unlink(h->path);
  g_free(h->path);
  g_free(h);
}
