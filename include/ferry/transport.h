/*
 * Host<->guest "vsock ports" (docs/design.md, transport): the guest dials a port, the host
 * listens on it, as in hcsshim. Two implementations behind one interface: AF_VSOCK
 * (transport-vsock.h) and the ferry channel mux over one byte stream (mux.h, spec in
 * docs/mux.md).
 *
 * A channel is a reliable, ordered, flow-controlled byte stream. Reading is push-based
 * with explicit consumption: the data handler says how many bytes it took, and only
 * those count as received. That is what lets the mux acknowledge exactly what the
 * consumer has, and so resume at the exact byte after any transport break.
 *
 * Threading: the thread-default GMainContext at creation; one thread.
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

typedef struct FerryChannel FerryChannel;
typedef struct FerryTransport FerryTransport;

typedef struct {
  /*
   * Bytes arrived (valid during the call). Return how many were consumed, 0..len. If
   * fewer than len, the channel keeps the rest and makes no further data calls until
   * ferry_channel_resume_reading(). NULL handler: the data waits.
   */
  gsize (*data)(FerryChannel *channel, const guint8 *data, gsize len, gpointer user_data);
  /* The peer shut its write side and every byte before it was consumed. Once. */
  void (*eof)(FerryChannel *channel, gpointer user_data);
  /* There is room again after ferry_channel_write() accepted less than asked, or after
   * ferry_channel_write_room() returned 0. */
  void (*writable)(FerryChannel *channel, gpointer user_data);
  /* The channel is gone: reset by the peer (error says so) or closed locally (NULL).
   * Once; no other handler runs after it. */
  void (*closed)(FerryChannel *channel, const GError *error, gpointer user_data);
  /* Every byte written so far was acknowledged by the peer's consumer:
   * ferry_channel_unacked() fell to 0. From the main loop, not from inside a write; may
   * also come when nothing was pending, so check ferry_channel_unacked(). */
  void (*acked)(FerryChannel *channel, gpointer user_data);
} FerryChannelHandlers;

FerryChannel *ferry_channel_ref(FerryChannel *channel);
void ferry_channel_unref(FerryChannel *channel);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FerryChannel, ferry_channel_unref)

/* Set the handlers (copied). Data that arrived before is offered from the main loop. */
void ferry_channel_set_handlers(FerryChannel *channel, const FerryChannelHandlers *handlers,
                                gpointer user_data);

guint32 ferry_channel_get_port(FerryChannel *channel);
gboolean ferry_channel_is_open(FerryChannel *channel);

/* Queue bytes to send; returns how many were accepted (0 when the send buffer is full or
 * the channel is closed or shut for writing). A short count means: wait for writable. */
gsize ferry_channel_write(FerryChannel *channel, const void *data, gsize len);
/* Bytes ferry_channel_write() would accept now. 0 arms the writable handler. */
gsize ferry_channel_write_room(FerryChannel *channel);
/* Bytes written but not yet acknowledged by the peer's consumer. */
gsize ferry_channel_unacked(FerryChannel *channel);

/* Offer held data again after a short consume. */
void ferry_channel_resume_reading(FerryChannel *channel);

/* Send EOF after everything queued. Writing afterwards accepts nothing. */
void ferry_channel_shutdown_write(FerryChannel *channel);

/* Abort: drop what is queued, tell the peer, run closed (error NULL). Idempotent. */
void ferry_channel_close(FerryChannel *channel);

/* ---------------------------------------------------------------- ports -- */

/* A peer dialed a listened port: `channel` is a new reference for the callee. */
typedef void (*FerryAcceptFunc)(FerryTransport *transport, FerryChannel *channel,
                                gpointer user_data);
/* A dial finished: a new reference, or NULL with error (REFUSED: UNAVAILABLE). */
typedef void (*FerryDialFunc)(FerryTransport *transport, FerryChannel *channel, const GError *error,
                              gpointer user_data);

/* Accept dials to `port` until ferry_transport_unlisten(). ALREADY_EXISTS if listened. */
gboolean ferry_transport_listen(FerryTransport *transport, guint32 port, FerryAcceptFunc accept,
                                gpointer user_data, GError **error);
void ferry_transport_unlisten(FerryTransport *transport, guint32 port);
/* Dial `port` on the peer; `done` runs once, from the main loop. */
void ferry_transport_dial(FerryTransport *transport, guint32 port, FerryDialFunc done,
                          gpointer user_data);

FerryTransport *ferry_transport_ref(FerryTransport *transport);
void ferry_transport_unref(FerryTransport *transport);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FerryTransport, ferry_transport_unref)

/*
 * Bridge a channel to a local stream socket, for protocols that speak over fds (the
 * GCS bridge, ttrpc): returns one end of a socketpair whose bytes are pumped to and
 * from the channel with flow control both ways. EOF and close propagate. Takes its
 * own reference on the channel. The caller owns the returned fd.
 */
int ferry_channel_to_fd(FerryChannel *channel, GError **error);

G_END_DECLS
