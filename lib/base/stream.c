/* A byte stream on the main loop: non-blocking I/O, read batching, a capped write
 * buffer. */
#include "ferry/stream.h"

#include <errno.h>
#include <glib-unix.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ferry/error.h"
#include "ferry/fd.h"

/* Bytes read per read(2), and reads per wake-up before other sources get a turn. */
#define READ_CHUNK (64 * 1024)
#define READS_PER_DISPATCH 4

struct FerryStream {
  gint refs;
  int fd;
  gboolean open;
  gboolean dispatching; /* inside the data handler: writes wait for its end */
  gboolean is_socket;
  char *name;
  GSource *source;
  gpointer fd_tag;
  guint8 *read_buf;
  GByteArray *out;
  gsize out_off; /* bytes of `out` already written */
  gsize max_output;
  FerryStreamHandlers handlers;
  gpointer ud;
};

typedef struct {
  GSource base;
  FerryStream *stream;
} StreamSource;

static void stream_handle_io(FerryStream *stream, GIOCondition cond);

static gboolean stream_source_dispatch(GSource *source, GSourceFunc cb, gpointer ud)
{
  StreamSource *ss = (StreamSource *)source;
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
  int type;
  socklen_t tlen = sizeof(type);
  s->is_socket = getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tlen) == 0;
  s->name = g_strdup(name);
  s->read_buf = g_malloc(READ_CHUNK);
  s->out = g_byte_array_new();
  s->max_output = FERRY_STREAM_DEFAULT_MAX_OUTPUT;
  s->handlers = *handlers;
  s->ud = user_data;
  s->source = g_source_new(&stream_source_funcs, sizeof(StreamSource));
  ((StreamSource *)s->source)->stream = s;
  g_source_set_static_name(s->source, "ferry-stream");
  s->fd_tag = g_source_add_unix_fd(s->source, fd, G_IO_IN | G_IO_HUP | G_IO_ERR);
  g_source_attach(s->source, g_main_context_get_thread_default());
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
  ferry_fd_clear(&s->fd);
  g_byte_array_set_size(s->out, 0);
  s->out_off = 0;
}

void ferry_stream_unref(FerryStream *s)
{
  if (s == NULL || --s->refs > 0)
    return;
  if (s->open)
    stream_shut(s);
  g_free(s->read_buf);
  g_byte_array_unref(s->out);
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

void ferry_stream_close(FerryStream *s, const GError *error)
{
  if (!s->open)
    return;
  stream_shut(s);
  ferry_stream_ref(s);
  if (s->handlers.closed != NULL)
    s->handlers.closed(s, error, s->ud);
  ferry_stream_unref(s);
}

static void close_errno(FerryStream *s, int errsv, const char *what)
{
  g_autoptr(GError) error = NULL;
  ferry_error_set_errno(&error, errsv, "%s %s", s->name, what);
  if (error->code == FERRY_ERROR_UNKNOWN)
    error->code = FERRY_ERROR_UNAVAILABLE;
  ferry_stream_close(s, error);
}

/* Write what is buffered; watch for POLLOUT while something is left. */
static void flush(FerryStream *s)
{
  while (s->open && s->out_off < s->out->len) {
    const guint8 *p = s->out->data + s->out_off;
    gsize len = s->out->len - s->out_off;
    ssize_t n = s->is_socket ? send(s->fd, p, len, MSG_NOSIGNAL) : write(s->fd, p, len);
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
  GIOCondition cond = G_IO_IN | G_IO_HUP | G_IO_ERR;
  if (s->out_off == s->out->len) {
    g_byte_array_set_size(s->out, 0);
    s->out_off = 0;
  } else {
    if (s->out_off > s->out->len / 2) {
      g_byte_array_remove_range(s->out, 0, (guint)s->out_off);
      s->out_off = 0;
    }
    cond |= G_IO_OUT;
  }
  g_source_modify_unix_fd(s->source, s->fd_tag, cond);
}

guint8 *ferry_stream_reserve(FerryStream *s, gsize len, GError **error)
{
  if (!s->open) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE, "%s connection closed", s->name);
    return NULL;
  }
  gsize pending = s->out->len - s->out_off;
  if (len > s->max_output || pending > s->max_output - len) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_RESOURCE_EXHAUSTED,
                "%s peer is not reading: %" G_GSIZE_FORMAT " bytes unsent", s->name, pending);
    ferry_stream_close(s, *error);
    return NULL;
  }
  gsize at = s->out->len;
  g_byte_array_set_size(s->out, (guint)(at + len));
  return s->out->data + at;
}

void ferry_stream_commit(FerryStream *s)
{
  if (s->open && !s->dispatching)
    flush(s);
}

gboolean ferry_stream_write(FerryStream *s, const void *data, gsize len, GError **error)
{
  guint8 *p = ferry_stream_reserve(s, len, error);
  if (p == NULL)
    return FALSE;
  memcpy(p, data, len);
  ferry_stream_commit(s);
  return TRUE;
}

static void stream_handle_io(FerryStream *s, GIOCondition cond)
{
  ferry_stream_ref(s);
  if (cond & G_IO_OUT)
    flush(s);
  if (s->open && (cond & (G_IO_IN | G_IO_HUP | G_IO_ERR))) {
    s->dispatching = TRUE;
    for (int i = 0; i < READS_PER_DISPATCH && s->open; i++) {
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
        g_autoptr(GError) eof = g_error_new(FERRY_ERROR, FERRY_ERROR_UNAVAILABLE,
                                            "%s connection closed by peer", s->name);
        ferry_stream_close(s, eof);
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
  ferry_stream_unref(s);
}
