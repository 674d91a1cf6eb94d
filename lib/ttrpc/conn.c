/* A ttrpc connection: non-blocking I/O, batching, the write buffer. */
#include "conn.h"

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
/* Unsent output beyond this means the peer stopped reading: the connection is closed
 * rather than letting memory grow without bound. */
#define MAX_PENDING_OUTPUT (64u << 20)

struct TtrpcConn {
  gint refs;
  int fd;
  gboolean open;
  gboolean dispatching; /* inside the read handler: writes wait for its end */
  gboolean is_socket;
  GSource *source;
  gpointer fd_tag;
  FerryTtrpcParser *parser;
  guint8 *read_buf;
  GByteArray *out;
  gsize out_off; /* bytes of `out` already written */
  TtrpcConnHandlers handlers;
  gpointer ud;
};

typedef struct {
  GSource base;
  TtrpcConn *conn;
} ConnSource;

static void conn_handle_io(TtrpcConn *conn, GIOCondition cond);

static gboolean conn_source_dispatch(GSource *source, GSourceFunc cb, gpointer ud)
{
  ConnSource *cs = (ConnSource *)source;
  GIOCondition cond = g_source_query_unix_fd(source, cs->conn->fd_tag);
  conn_handle_io(cs->conn, cond);
  return G_SOURCE_CONTINUE;
}

static GSourceFuncs conn_source_funcs = {
  .dispatch = conn_source_dispatch,
};

TtrpcConn *ttrpc_conn_new(int fd, const TtrpcConnHandlers *handlers, gpointer ud, GError **error)
{
  g_auto(FerryFd) owned = fd;
  if (!ferry_fd_set_nonblocking(fd, TRUE, error) || !ferry_fd_set_cloexec(fd, error))
    return NULL;
  TtrpcConn *conn = g_new0(TtrpcConn, 1);
  conn->refs = 1;
  conn->fd = ferry_fd_steal(&owned);
  conn->open = TRUE;
  int type;
  socklen_t tlen = sizeof(type);
  conn->is_socket = getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tlen) == 0;
  conn->parser = ferry_ttrpc_parser_new();
  conn->read_buf = g_malloc(READ_CHUNK);
  conn->out = g_byte_array_new();
  conn->handlers = *handlers;
  conn->ud = ud;
  conn->source = g_source_new(&conn_source_funcs, sizeof(ConnSource));
  ((ConnSource *)conn->source)->conn = conn;
  g_source_set_static_name(conn->source, "ferry-ttrpc-conn");
  conn->fd_tag = g_source_add_unix_fd(conn->source, fd, G_IO_IN | G_IO_HUP | G_IO_ERR);
  g_source_attach(conn->source, g_main_context_get_thread_default());
  return conn;
}

TtrpcConn *ttrpc_conn_ref(TtrpcConn *conn)
{
  conn->refs++;
  return conn;
}

void ttrpc_conn_unref(TtrpcConn *conn)
{
  if (conn == NULL || --conn->refs > 0)
    return;
  ttrpc_conn_close(conn, NULL);
  ferry_ttrpc_parser_free(conn->parser);
  g_free(conn->read_buf);
  g_byte_array_unref(conn->out);
  g_free(conn);
}

gboolean ttrpc_conn_is_open(const TtrpcConn *conn)
{
  return conn->open;
}

void ttrpc_conn_close(TtrpcConn *conn, const GError *error)
{
  if (!conn->open)
    return;
  conn->open = FALSE;
  g_source_destroy(conn->source);
  g_source_unref(conn->source);
  conn->source = NULL;
  ferry_fd_clear(&conn->fd);
  g_byte_array_set_size(conn->out, 0);
  conn->out_off = 0;
  ttrpc_conn_ref(conn);
  if (conn->handlers.closed != NULL)
    conn->handlers.closed(conn, error, conn->ud);
  ttrpc_conn_unref(conn);
}

static void close_errno(TtrpcConn *conn, int errsv, const char *what)
{
  g_autoptr(GError) error = NULL;
  ferry_error_set_errno(&error, errsv, "%s", what);
  if (error->code == FERRY_ERROR_UNKNOWN)
    error->code = FERRY_ERROR_UNAVAILABLE;
  ttrpc_conn_close(conn, error);
}

/* Write what is buffered; watch for POLLOUT while something is left. */
static void flush(TtrpcConn *conn)
{
  while (conn->open && conn->out_off < conn->out->len) {
    const guint8 *p = conn->out->data + conn->out_off;
    gsize len = conn->out->len - conn->out_off;
    ssize_t n = conn->is_socket ? send(conn->fd, p, len, MSG_NOSIGNAL) : write(conn->fd, p, len);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
      break;
    if (n < 0) {
      close_errno(conn, errno, "ttrpc write");
      return;
    }
    conn->out_off += (gsize)n;
  }
  if (!conn->open)
    return;
  if (conn->out_off == conn->out->len) {
    g_byte_array_set_size(conn->out, 0);
    conn->out_off = 0;
    g_source_modify_unix_fd(conn->source, conn->fd_tag, G_IO_IN | G_IO_HUP | G_IO_ERR);
  } else {
    if (conn->out_off > conn->out->len / 2) {
      g_byte_array_remove_range(conn->out, 0, (guint)conn->out_off);
      conn->out_off = 0;
    }
    g_source_modify_unix_fd(conn->source, conn->fd_tag, G_IO_IN | G_IO_OUT | G_IO_HUP | G_IO_ERR);
  }
}

guint8 *ttrpc_pack(const ProtobufCMessage *message, gsize *len_out)
{
  gsize len = protobuf_c_message_get_packed_size(message);
  guint8 *buf = g_malloc(len > 0 ? len : 1);
  protobuf_c_message_pack(message, buf);
  *len_out = len;
  return buf;
}

gboolean ttrpc_conn_send_message(TtrpcConn *conn, guint32 sid, FerryTtrpcType type, guint8 flags,
                                 const ProtobufCMessage *message, GError **error)
{
  if (!conn->open) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE, "ttrpc connection closed");
    return FALSE;
  }
  gsize len = message != NULL ? protobuf_c_message_get_packed_size(message) : 0;
  if (len > FERRY_TTRPC_MAX_DATA) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_RESOURCE_EXHAUSTED,
                "message length %" G_GSIZE_FORMAT " exceed maximum message size of %u", len,
                FERRY_TTRPC_MAX_DATA);
    return FALSE;
  }
  gsize pending = conn->out->len - conn->out_off;
  if (pending + FERRY_TTRPC_HEADER_SIZE + len > MAX_PENDING_OUTPUT) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_RESOURCE_EXHAUSTED,
                "ttrpc peer is not reading: %" G_GSIZE_FORMAT " bytes unsent", pending);
    ttrpc_conn_close(conn, *error);
    return FALSE;
  }
  /* Pack straight into the write buffer: no intermediate copy. */
  gsize at = conn->out->len;
  g_byte_array_set_size(conn->out, (guint)(at + FERRY_TTRPC_HEADER_SIZE + len));
  FerryTtrpcHeader h = { (guint32)len, sid, (guint8)type, flags };
  ferry_ttrpc_header_encode(&h, conn->out->data + at);
  if (len > 0)
    protobuf_c_message_pack(message, conn->out->data + at + FERRY_TTRPC_HEADER_SIZE);
  if (!conn->dispatching)
    flush(conn);
  return TRUE;
}

/* Hand every complete frame in the parser to the handlers. */
static void dispatch_frames(TtrpcConn *conn)
{
  FerryTtrpcHeader h;
  const guint8 *data;
  while (conn->open) {
    FerryTtrpcParseResult r = ferry_ttrpc_parser_next(conn->parser, &h, &data);
    if (r == FERRY_TTRPC_PARSE_NEED_MORE)
      return;
    if (r == FERRY_TTRPC_PARSE_OVERSIZE)
      conn->handlers.oversize(conn, &h, conn->ud);
    else
      conn->handlers.frame(conn, &h, data, conn->ud);
  }
}

static void conn_handle_io(TtrpcConn *conn, GIOCondition cond)
{
  ttrpc_conn_ref(conn);
  if (cond & G_IO_OUT)
    flush(conn);
  if (conn->open && (cond & (G_IO_IN | G_IO_HUP | G_IO_ERR))) {
    conn->dispatching = TRUE;
    for (int i = 0; i < READS_PER_DISPATCH && conn->open; i++) {
      ssize_t n = read(conn->fd, conn->read_buf, READ_CHUNK);
      if (n < 0 && errno == EINTR) {
        i--;
        continue;
      }
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        break;
      if (n < 0) {
        close_errno(conn, errno, "ttrpc read");
        break;
      }
      if (n == 0) {
        g_autoptr(GError) eof =
            g_error_new(FERRY_ERROR, FERRY_ERROR_UNAVAILABLE, "ttrpc connection closed by peer");
        ttrpc_conn_close(conn, eof);
        break;
      }
      ferry_ttrpc_parser_feed(conn->parser, conn->read_buf, (gsize)n);
      dispatch_frames(conn);
      if ((gsize)n < READ_CHUNK)
        break;
    }
    conn->dispatching = FALSE;
    if (conn->open)
      flush(conn);
  }
  ttrpc_conn_unref(conn);
}
