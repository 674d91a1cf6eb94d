/*
 * What a transport implementation provides behind the public FerryChannel and
 * FerryTransport (include/ferry/transport.h). Private to lib/transport.
 */
#pragma once

#include "ferry/transport.h"

typedef struct {
  gsize (*write)(FerryChannel *channel, const void *data, gsize len);
  gsize (*write_room)(FerryChannel *channel);
  gsize (*unacked)(FerryChannel *channel);
  void (*resume_reading)(FerryChannel *channel);
  void (*shutdown_write)(FerryChannel *channel);
  /* Abort the channel (the generic code then emits closed with error NULL). */
  void (*close)(FerryChannel *channel);
  /* Handlers were set: offer held data (from the main loop, not synchronously). */
  void (*handlers_changed)(FerryChannel *channel);
  /* Free the implementation's part; the generic part is freed by the caller. */
  void (*finalize)(FerryChannel *channel);
} FerryChannelClass;

struct FerryChannel {
  const FerryChannelClass *klass;
  gint refs;
  guint32 port;
  gboolean open; /* FALSE once closed was emitted */
  FerryChannelHandlers handlers;
  gpointer user_data;
};

/* Set up the generic part; refs = 1, open. */
void ferry_channel_init(FerryChannel *channel, const FerryChannelClass *klass, guint32 port);

/* For implementations: deliver to the handlers. data returns the count consumed (0 when
 * there is no data handler); closed marks the channel closed and runs once. */
gsize ferry_channel_emit_data(FerryChannel *channel, const guint8 *data, gsize len);
void ferry_channel_emit_eof(FerryChannel *channel);
void ferry_channel_emit_writable(FerryChannel *channel);
void ferry_channel_emit_closed(FerryChannel *channel, const GError *error);
void ferry_channel_emit_acked(FerryChannel *channel);

typedef struct {
  gboolean (*listen)(FerryTransport *transport, guint32 port, FerryAcceptFunc accept,
                     gpointer user_data, GError **error);
  void (*unlisten)(FerryTransport *transport, guint32 port);
  void (*dial)(FerryTransport *transport, guint32 port, FerryDialFunc done, gpointer user_data);
  void (*finalize)(FerryTransport *transport);
} FerryTransportClass;

struct FerryTransport {
  const FerryTransportClass *klass;
  gint refs;
};

void ferry_transport_init(FerryTransport *transport, const FerryTransportClass *klass);
