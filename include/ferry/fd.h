/* File descriptor helpers: cleanup, flags, and fd passing over unix sockets. */
#pragma once

#include <glib.h>
#include <sys/types.h>

G_BEGIN_DECLS

/* `g_auto(FerryFd) fd = -1;` closes fd at scope exit when it is >= 0. */
typedef int FerryFd;
void ferry_fd_close_quietly(FerryFd fd);
G_DEFINE_AUTO_CLEANUP_FREE_FUNC(FerryFd, ferry_fd_close_quietly, -1)

/* Close *fd if it is >= 0 and set it to -1, keeping errno. */
void ferry_fd_clear(int *fd);

/* Hand an fd out of a g_auto(FerryFd) variable: returns it and sets the variable to -1. */
static inline int ferry_fd_steal(int *fd)
{
  int r = *fd;
  *fd = -1;
  return r;
}

gboolean ferry_fd_set_cloexec(int fd, GError **error);
gboolean ferry_fd_set_nonblocking(int fd, gboolean nonblocking, GError **error);

/* A connected pair of SOCK_STREAM unix sockets, both O_CLOEXEC (and O_NONBLOCK when
 * asked). */
gboolean ferry_socketpair(int fds[2], gboolean nonblocking, GError **error);

/*
 * A SOCK_STREAM unix socket (O_CLOEXEC) connected to the filesystem socket `path`;
 * blocks for the connect(2) only, EINTR is retried. -1 on error: INVALID_ARGUMENT for an
 * empty path or one too long for sun_path, UNAVAILABLE when nobody listens there
 * (ECONNREFUSED, ENOENT), else the errno's code; the message names `path`.
 */
int ferry_unix_connect(const char *path, GError **error);

/*
 * A SOCK_STREAM unix socket (O_CLOEXEC | O_NONBLOCK) listening on `path`. A socket file
 * a server that is gone left there is replaced; a live server's socket is
 * ALREADY_EXISTS, and so is any other kind of file (bind fails). -1 on error with the
 * message naming `path`.
 */
int ferry_unix_listen(const char *path, GError **error);

/*
 * Send `fd` over the connected unix socket `sock` with SCM_RIGHTS, together with the
 * bytes `data` (1 to 4096 of them; a message with rights must carry at least one
 * byte). The caller keeps its fd. Blocks unless sock is non-blocking; EINTR is
 * retried. On error, returns FALSE with a message naming what failed.
 */
gboolean ferry_fd_send(int sock, int fd, const void *data, gsize len, GError **error);

/*
 * Receive one message from `sock`: up to `len` bytes into `data` (the count in
 * *received) and at most one fd, returned in *fd_out with O_CLOEXEC set, or -1 if
 * the message carried none. Extra fds a peer sends are closed, never leaked.
 * End of stream is an error (FERRY_ERROR_UNAVAILABLE, "peer closed").
 */
gboolean ferry_fd_recv(int sock, void *data, gsize len, gsize *received, int *fd_out,
                       GError **error);

/* write(2) all of buf, retrying EINTR and short writes (blocking fds). */
gboolean ferry_write_all(int fd, const void *buf, gsize len, GError **error);

/*
 * A descriptor handed out at a unix socket path: whoever connects there gets a copy of
 * `fd` by SCM_RIGHTS (with one byte of data), for as long as the hand-off lives (the
 * shim's CreateDuplicateSocket collects a memory stream this way, docs/migration.md).
 * Takes `fd`; serves from the thread-default main context. Free closes `fd` and removes
 * the path.
 */
typedef struct FerryFdHandoff FerryFdHandoff;
FerryFdHandoff *ferry_fd_handoff_new(const char *path, int fd, GError **error);
const char *ferry_fd_handoff_path(FerryFdHandoff *handoff);
void ferry_fd_handoff_free(FerryFdHandoff *handoff);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FerryFdHandoff, ferry_fd_handoff_free)

G_END_DECLS
