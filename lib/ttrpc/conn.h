/*
 * One ttrpc connection: the frame parser over a FerryStream (lib/base/stream.c).
 * Shared by the server and the client; private to lib/ttrpc.
 *
 * Frames that arrive in one read are dispatched together and the answers they cause
 * are written with one write, which is what makes pipelined calls cheap.
 */
#pragma once

#include "ferry/ttrpc.h"

typedef struct TtrpcConn TtrpcConn;

typedef struct {
  /* A complete frame; `data` is valid during the call only. */
  void (*frame)(TtrpcConn *conn, const FerryTtrpcHeader *h, const guint8 *data, gpointer ud);
  /* A frame over the size limit; its body is skipped. */
  void (*oversize)(TtrpcConn *conn, const FerryTtrpcHeader *h, gpointer ud);
  /* The connection is closed; error NULL after ttrpc_conn_close(conn, NULL). Runs once. */
  void (*closed)(TtrpcConn *conn, const GError *error, gpointer ud);
} TtrpcConnHandlers;

/* Takes ownership of fd (made non-blocking, close-on-exec). NULL with error if the
 * fd cannot be set up (it is closed then). */
TtrpcConn *ttrpc_conn_new(int fd, const TtrpcConnHandlers *handlers, gpointer ud, GError **error);

TtrpcConn *ttrpc_conn_ref(TtrpcConn *conn);
void ttrpc_conn_unref(TtrpcConn *conn);

gboolean ttrpc_conn_is_open(const TtrpcConn *conn);

/*
 * Queue one frame whose data is `message` packed (NULL: no data). The data length
 * limit is checked before anything is queued: FALSE with RESOURCE_EXHAUSTED. FALSE
 * with UNAVAILABLE when the connection is closed.
 */
gboolean ttrpc_conn_send_message(TtrpcConn *conn, guint32 sid, FerryTtrpcType type, guint8 flags,
                                 const ProtobufCMessage *message, GError **error);

/* Close the fd, drop unsent output, run the closed handler once. Idempotent. */
void ttrpc_conn_close(TtrpcConn *conn, const GError *error);

/* A ttrpc timeout (nanoseconds, > 0, up to INT64_MAX from the peer) as a timer
 * interval for the client's call timer: rounded up so the timer never fires early, at
 * most G_MAXUINT ms (49 days: the call times out then). No arithmetic on it overflows. */
static inline guint ttrpc_timeout_ms(gint64 ns)
{
  gint64 ms = ns / 1000000 + (ns % 1000000 != 0);
  return ms > (gint64)G_MAXUINT ? G_MAXUINT : (guint)ms;
}

/* Pack a message into a new buffer (for envelopes' payload fields). */
guint8 *ttrpc_pack(const ProtobufCMessage *message, gsize *len_out);
