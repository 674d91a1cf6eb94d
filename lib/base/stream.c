/* A byte stream on the main loop: non-blocking I/O, read batching, a capped write
 * buffer. */
#include "ferry/stream.h"

#include <linux/sockios.h>
#include <sys/ioctl.h>

#include <errno.h>
#include <fcntl.h>
#include <glib-unix.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ferry/error.h"
#include "ferry/fd.h"
#include "ferry/source.h"

/* Bytes read per read(2), and reads per wake-up before other sources get a turn. */
#define READ_CHUNK (64 * 1024)
#define READS_PER_DISPATCH 4

struct FerryStream {
  gint refs;
  int fd;
  gboolean open;
  gboolean dispatching; /* inside the data handler: writes wait for its end */
  gboolean in_io;       /* inside stream_handle_io(), which reports drained at its end */
  gboolean is_socket;
  gboolean reading;      /* FALSE while ferry_stream_set_reading() paused it */
  gboolean read_eof;     /* end of stream seen and reported to the eof handler */
  gboolean drain_wanted; /* output had to wait: report drained when it is all out */
  gboolean shut_wanted;  /* ferry_stream_shutdown_write(): shut once the output is out */
  gboolean shut_done;
  int calls;              /* depth of public calls that may fail the stream */
  GError *failure;        /* why it failed inside a call, until reported */
  GSource *report_source; /* reports `failure` to the closed handler */
  char *name;
  GMainContext *context;
  GSource *source;
  gpointer fd_tag;
  guint8 *read_buf;
  GByteArray *out;
  gsize out_off; /* bytes of `out` already written */
  gsize max_output;
  GArray *fd_marks; /* FdMark, by offset in `out`: fds that go with a byte */
  FerryStreamHandlers handlers;
  gpointer ud;
};

/* An fd to pass (SCM_RIGHTS) with the byte at `at` of the output buffer. */
typedef struct {
  gsize at;
  int fd;
} FdMark;

typedef struct {
  GSource base;
  FerryStream *stream;
} StreamSource;

static void stream_handle_io(FerryStream *stream, GIOCondition cond);

static gboolean stream_source_dispatch(GSource *source, GSourceFunc cb, gpointer ud)
{
  StreamSource *ss = (StreamSource *)source;
  if (ss->stream->fd_tag == NULL)
    return G_SOURCE_CONTINUE; /* unwatched by another source's dispatch in this round */
  stream_handle_io(ss->stream, g_source_query_unix_fd(source, ss->stream->fd_tag));
  return G_SOURCE_CONTINUE;
}

static GSourceFuncs stream_source_funcs = {
  .dispatch = stream_source_dispatch,
};

FerryStream *ferry_stream_new(int fd, const char *name, const FerryStreamHandlers *handlers,
                              gpointer user_data, GError **error)
{
  g_auto(FerryFd) owned = fd;
  if (!ferry_fd_set_nonblocking(fd, TRUE, error) || !ferry_fd_set_cloexec(fd, error))
    return NULL;
  FerryStream *s = g_new0(FerryStream, 1);
  s->refs = 1;
  s->fd = ferry_fd_steal(&owned);
  s->open = TRUE;
  s->reading = TRUE;
  int type;
  socklen_t tlen = sizeof(type);
  s->is_socket = getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tlen) == 0;
  s->name = g_strdup(name);
  s->read_buf = g_malloc(READ_CHUNK);
  s->out = g_byte_array_new();
  s->fd_marks = g_array_new(FALSE, FALSE, sizeof(FdMark));
  s->max_output = FERRY_STREAM_DEFAULT_MAX_OUTPUT;
  s->handlers = *handlers;
  s->ud = user_data;
  s->source = g_source_new(&stream_source_funcs, sizeof(StreamSource));
  ((StreamSource *)s->source)->stream = s;
  g_source_set_static_name(s->source, "ferry-stream");
  s->fd_tag = g_source_add_unix_fd(s->source, fd, G_IO_IN | G_IO_HUP | G_IO_ERR);
  s->context = g_main_context_ref_thread_default();
  g_source_attach(s->source, s->context);
  return s;
}

FerryStream *ferry_stream_ref(FerryStream *s)
{
  s->refs++;
  return s;
}

static void stream_shut(FerryStream *s)
{
  s->open = FALSE;
  g_source_destroy(s->source);
  g_source_unref(s->source);
  s->source = NULL;
  s->fd_tag = NULL;
  ferry_fd_clear(&s->fd);
  g_byte_array_set_size(s->out, 0);
  s->out_off = 0;
  for (guint i = 0; i < s->fd_marks->len; i++)
    ferry_fd_close_quietly(g_array_index(s->fd_marks, FdMark, i).fd);
  g_array_set_size(s->fd_marks, 0);
}

void ferry_stream_unref(FerryStream *s)
{
  if (s == NULL || --s->refs > 0)
    return;
  if (s->open)
    stream_shut(s);
  ferry_source_clear(&s->report_source);
  g_clear_error(&s->failure);
  g_main_context_unref(s->context);
  g_free(s->read_buf);
  g_byte_array_unref(s->out);
  g_array_unref(s->fd_marks);
  g_free(s->name);
  g_free(s);
}

gboolean ferry_stream_is_open(const FerryStream *s)
{
  return s->open;
}

void ferry_stream_set_max_output(FerryStream *s, gsize max_bytes)
{
  s->max_output = max_bytes;
}

gsize ferry_stream_pending_output(const FerryStream *s)
{
  return s->out->len - s->out_off;
}

gsize ferry_stream_unread_output(const FerryStream *s)
{
  int queued = 0;
  if (!s->open || !s->is_socket || ioctl(s->fd, SIOCOUTQ, &queued) != 0 || queued < 0)
    return 0;
  return (gsize)queued;
}

static void run_closed(FerryStream *s, const GError *error)
{
  ferry_stream_ref(s);
  if (s->handlers.closed != NULL)
    s->handlers.closed(s, error, s->ud);
  ferry_stream_unref(s);
}

/* A failure found inside a call is reported from here, on the stream's context. */
static gboolean report_failure(gpointer data)
{
  FerryStream *s = data;
  ferry_source_clear(&s->report_source);
  g_autoptr(GError) failure = g_steal_pointer(&s->failure);
  run_closed(s, failure);
  return G_SOURCE_REMOVE;
}

/*
 * The stream failed: stop all I/O now. From the main loop's dispatch the closed handler
 * runs at once; inside a public call (a write from anywhere, the data handler included)
 * it runs from an idle, so that no caller sees its own objects freed under it.
 */
static void fail(FerryStream *s, GError *error)
{
  if (!s->open) {
    g_error_free(error);
    return;
  }
  stream_shut(s);
  if (s->calls == 0) {
    run_closed(s, error);
    g_error_free(error);
    return;
  }
  s->failure = error;
  s->report_source = ferry_idle_new(s->context, report_failure, s);
}

void ferry_stream_close(FerryStream *s, const GError *error)
{
  if (s->report_source != NULL) {
    /* Failed inside an earlier call and not reported yet: report that cause now. */
    report_failure(s);
    return;
  }
  if (!s->open)
    return;
  stream_shut(s);
  run_closed(s, error);
}

static void close_errno(FerryStream *s, int errsv, const char *what)
{
  GError *error = NULL;
  ferry_error_set_errno(&error, errsv, "%s %s", s->name, what);
  if (error->code == FERRY_ERROR_UNKNOWN)
    error->code = FERRY_ERROR_UNAVAILABLE;
  fail(s, error);
}

/*
 * Watch for input while reading, for POLLOUT while output waits. Watching for nothing
 * takes the fd out of the poll set: poll(2) reports POLLHUP whatever was asked, so a
 * paused or half-closed stream whose peer hung up would otherwise wake forever.
 */
static void update_watch(FerryStream *s)
{
  GIOCondition cond = 0;
  if (s->reading && !s->read_eof)
    cond |= G_IO_IN | G_IO_HUP | G_IO_ERR;
  if (s->out_off < s->out->len)
    cond |= G_IO_OUT;
  if (cond == 0 && s->fd_tag != NULL) {
    g_source_remove_unix_fd(s->source, s->fd_tag);
    s->fd_tag = NULL;
  } else if (cond != 0 && s->fd_tag == NULL) {
    s->fd_tag = g_source_add_unix_fd(s->source, s->fd, cond);
  } else if (cond != 0) {
    g_source_modify_unix_fd(s->source, s->fd_tag, cond);
  }
}

/* Write what is buffered (then shut the write side if asked); keep the watch in step. */
static void flush(FerryStream *s)
{
  while (s->open && s->out_off < s->out->len) {
    const guint8 *p = s->out->data + s->out_off;
    gsize len = s->out->len - s->out_off;
    FdMark *mark = s->fd_marks->len > 0 ? &g_array_index(s->fd_marks, FdMark, 0) : NULL;
    ssize_t n;
    if (mark != NULL && mark->at == s->out_off) {
      /* This byte carries an fd: send it with the bytes up to the next mark. */
      if (s->fd_marks->len > 1)
        len = MIN(len, g_array_index(s->fd_marks, FdMark, 1).at - s->out_off);
      union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
      } control;
      memset(&control, 0, sizeof(control));
      struct iovec iov = { .iov_base = (void *)p, .iov_len = len };
      struct msghdr msg = { .msg_iov = &iov,
                            .msg_iovlen = 1,
                            .msg_control = control.buf,
                            .msg_controllen = sizeof(control.buf) };
      struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
      cmsg->cmsg_level = SOL_SOCKET;
      cmsg->cmsg_type = SCM_RIGHTS;
      cmsg->cmsg_len = CMSG_LEN(sizeof(int));
      memcpy(CMSG_DATA(cmsg), &mark->fd, sizeof(int));
      n = sendmsg(s->fd, &msg, MSG_NOSIGNAL);
      if (n > 0) {
        ferry_fd_close_quietly(mark->fd);
        g_array_remove_index(s->fd_marks, 0);
      }
    } else {
      if (mark != NULL)
        len = MIN(len, mark->at - s->out_off); /* stop before the byte with an fd */
      n = s->is_socket ? send(s->fd, p, len, MSG_NOSIGNAL) : write(s->fd, p, len);
    }
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
      break;
    if (n < 0) {
      close_errno(s, errno, "write");
      return;
    }
    s->out_off += (gsize)n;
  }
  if (!s->open)
    return;
  if (s->out_off == s->out->len) {
    g_byte_array_set_size(s->out, 0);
    s->out_off = 0;
    if (!s->in_io)
      s->drain_wanted = FALSE; /* written at once: the writer sees it */
    if (s->shut_wanted && !s->shut_done) {
      s->shut_done = TRUE;
      if (shutdown(s->fd, SHUT_WR) < 0) {
        close_errno(s, errno, "shutdown");
        return;
      }
    }
  } else {
    if (s->out_off > s->out->len / 2) {
      for (guint i = 0; i < s->fd_marks->len; i++)
        g_array_index(s->fd_marks, FdMark, i).at -= s->out_off;
      g_byte_array_remove_range(s->out, 0, (guint)s->out_off);
      s->out_off = 0;
    }
    s->drain_wanted = TRUE;
  }
  update_watch(s);
}

/* Why a closed stream takes nothing: the failure not yet reported, if any. */
static void set_closed_error(FerryStream *s, GError **error)
{
  if (s->failure != NULL)
    g_propagate_error(error, g_error_copy(s->failure));
  else
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE, "%s connection closed", s->name);
}

static guint8 *reserve(FerryStream *s, gsize len, GError **error)
{
  if (!s->open) {
    set_closed_error(s, error);
    return NULL;
  }
  if (s->shut_wanted) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION, "%s write side already shut",
                s->name);
    return NULL;
  }
  gsize pending = s->out->len - s->out_off;
  if (len > s->max_output || pending > s->max_output - len) {
    GError *full =
        g_error_new(FERRY_ERROR, FERRY_ERROR_RESOURCE_EXHAUSTED,
                    "%s peer is not reading: %" G_GSIZE_FORMAT " bytes unsent", s->name, pending);
    g_propagate_error(error, g_error_copy(full));
    fail(s, full);
    return NULL;
  }
  if (s->dispatching)
    s->drain_wanted = TRUE; /* waits for the data handler's end */
  gsize at = s->out->len;
  g_byte_array_set_size(s->out, (guint)(at + len));
  return s->out->data + at;
}

guint8 *ferry_stream_reserve(FerryStream *s, gsize len, GError **error)
{
  s->calls++;
  guint8 *p = reserve(s, len, error);
  s->calls--;
  return p;
}

void ferry_stream_commit(FerryStream *s)
{
  s->calls++;
  if (s->open && !s->dispatching)
    flush(s);
  s->calls--;
}

/* After a commit inside write: FALSE with the cause if that commit failed the stream. */
static gboolean commit_checked(FerryStream *s, GError **error)
{
  if (!s->dispatching)
    flush(s);
  if (s->open)
    return TRUE;
  set_closed_error(s, error);
  return FALSE;
}

gboolean ferry_stream_write(FerryStream *s, const void *data, gsize len, GError **error)
{
  s->calls++;
  guint8 *p = reserve(s, len, error);
  gboolean ok = p != NULL;
  if (ok) {
    memcpy(p, data, len);
    ok = commit_checked(s, error);
  }
  s->calls--;
  return ok;
}

void ferry_stream_set_reading(FerryStream *s, gboolean reading)
{
  s->reading = reading;
  if (s->open)
    update_watch(s);
}

void ferry_stream_shutdown_write(FerryStream *s)
{
  if (!s->open || s->shut_wanted)
    return;
  s->shut_wanted = TRUE;
  s->calls++;
  if (!s->dispatching)
    flush(s); /* else when the data handler returns */
  s->calls--;
}

static void handle_eof(FerryStream *s)
{
  if (s->handlers.eof == NULL) {
    fail(s, g_error_new(FERRY_ERROR, FERRY_ERROR_UNAVAILABLE, "%s connection closed by peer",
                        s->name));
    return;
  }
  s->read_eof = TRUE;
  update_watch(s);
  s->handlers.eof(s, s->ud);
}

static void stream_handle_io(FerryStream *s, GIOCondition cond)
{
  ferry_stream_ref(s);
  s->in_io = TRUE;
  gboolean watching_input = s->reading && !s->read_eof;
  /* POLLHUP / POLLERR while only POLLOUT is watched: the write reports why. */
  if ((cond & G_IO_OUT) || (!watching_input && (cond & (G_IO_HUP | G_IO_ERR))))
    flush(s);
  if (s->open && watching_input && (cond & (G_IO_IN | G_IO_HUP | G_IO_ERR))) {
    s->dispatching = TRUE;
    for (int i = 0; i < READS_PER_DISPATCH && s->open && s->reading && !s->read_eof; i++) {
      ssize_t n = read(s->fd, s->read_buf, READ_CHUNK);
      if (n < 0 && errno == EINTR) {
        i--;
        continue;
      }
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        break;
      if (n < 0) {
        close_errno(s, errno, "read");
        break;
      }
      if (n == 0) {
        handle_eof(s);
        break;
      }
      s->handlers.data(s, s->read_buf, (gsize)n, s->ud);
      if ((gsize)n < READ_CHUNK)
        break;
    }
    s->dispatching = FALSE;
    if (s->open)
      flush(s);
  }
  s->in_io = FALSE;
  if (s->open && s->drain_wanted && s->out_off == s->out->len) {
    s->drain_wanted = FALSE;
    if (s->handlers.drained != NULL)
      s->handlers.drained(s, s->ud);
  }
  ferry_stream_unref(s);
}

gboolean ferry_stream_write_with_fd(FerryStream *s, const void *data, gsize len, int fd,
                                    GError **error)
{
  if (len == 0 || !s->is_socket) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                "%s: an fd needs at least one byte on a socket", s->name);
    return FALSE;
  }
  int copy = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  if (copy < 0)
    return ferry_error_set_errno(error, errno, "%s: duplicate fd %d", s->name, fd);
  s->calls++;
  gsize at = s->out->len;
  guint8 *p = reserve(s, len, error);
  gboolean ok = p != NULL;
  if (!ok) {
    ferry_fd_close_quietly(copy);
  } else {
    memcpy(p, data, len);
    FdMark mark = { at, copy };
    g_array_append_val(s->fd_marks, mark);
    ok = commit_checked(s, error);
  }
  s->calls--;
  return ok;
}
