/* A ttrpc connection: ttrpc framing over a FerryStream. */
#include "conn.h"

#include "ferry/error.h"
#include "ferry/stream.h"

struct TtrpcConn {
  gint refs;
  FerryStream *stream;
  FerryTtrpcParser *parser;
  TtrpcConnHandlers handlers;
  gpointer ud;
};

static void on_stream_data(FerryStream *stream, const guint8 *data, gsize len, gpointer ud)
{
  TtrpcConn *conn = ud;
  ttrpc_conn_ref(conn);
  ferry_ttrpc_parser_feed(conn->parser, data, len);
  FerryTtrpcHeader h;
  const guint8 *body;
  while (ferry_stream_is_open(conn->stream)) {
    FerryTtrpcParseResult r = ferry_ttrpc_parser_next(conn->parser, &h, &body);
    if (r == FERRY_TTRPC_PARSE_NEED_MORE)
      break;
    if (r == FERRY_TTRPC_PARSE_OVERSIZE)
      conn->handlers.oversize(conn, &h, conn->ud);
    else
      conn->handlers.frame(conn, &h, body, conn->ud);
  }
  ttrpc_conn_unref(conn);
}

static void on_stream_closed(FerryStream *stream, const GError *error, gpointer ud)
{
  TtrpcConn *conn = ud;
  ttrpc_conn_ref(conn);
  if (conn->handlers.closed != NULL)
    conn->handlers.closed(conn, error, conn->ud);
  ttrpc_conn_unref(conn);
}

static const FerryStreamHandlers stream_handlers = {
  .data = on_stream_data,
  .closed = on_stream_closed,
};

TtrpcConn *ttrpc_conn_new(int fd, const TtrpcConnHandlers *handlers, gpointer ud, GError **error)
{
  TtrpcConn *conn = g_new0(TtrpcConn, 1);
  conn->stream = ferry_stream_new(fd, "ttrpc", &stream_handlers, conn, error);
  if (conn->stream == NULL) {
    g_free(conn);
    return NULL;
  }
  conn->refs = 1;
  conn->parser = ferry_ttrpc_parser_new();
  conn->handlers = *handlers;
  conn->ud = ud;
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
  ferry_stream_unref(conn->stream);
  ferry_ttrpc_parser_free(conn->parser);
  g_free(conn);
}

gboolean ttrpc_conn_is_open(const TtrpcConn *conn)
{
  return ferry_stream_is_open(conn->stream);
}

void ttrpc_conn_close(TtrpcConn *conn, const GError *error)
{
  ferry_stream_close(conn->stream, error);
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
  gsize len = message != NULL ? protobuf_c_message_get_packed_size(message) : 0;
  if (len > FERRY_TTRPC_MAX_DATA) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_RESOURCE_EXHAUSTED,
                "message length %" G_GSIZE_FORMAT " exceed maximum message size of %u", len,
                FERRY_TTRPC_MAX_DATA);
    return FALSE;
  }
  /* Pack straight into the write buffer: no intermediate copy. */
  guint8 *out = ferry_stream_reserve(conn->stream, FERRY_TTRPC_HEADER_SIZE + len, error);
  if (out == NULL)
    return FALSE;
  FerryTtrpcHeader h = { (guint32)len, sid, (guint8)type, flags };
  ferry_ttrpc_header_encode(&h, out);
  if (len > 0)
    protobuf_c_message_pack(message, out + FERRY_TTRPC_HEADER_SIZE);
  ferry_stream_commit(conn->stream);
  return TRUE;
}
