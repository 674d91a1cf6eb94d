/*
 * What lib/transport/mux.c (the wire, the channels' lifecycle and flow control) and
 * lib/transport/mux-export.c (moving a live channel out of one mux and into another)
 * share: the mux's and its channels' insides. Private to lib/transport.
 */
#pragma once

#include "channel-impl.h"
#include "ferry/mux.h"
#include "ferry/stream.h"
#include "mux-wire.h"

/* Set in the ids of channels the host opens; the guest's have it clear (docs/mux.md). */
#define MUX_HOST_ID_BIT 0x80000000u

typedef struct MuxChannel MuxChannel;
typedef struct MuxHandle MuxHandle;

typedef enum {
  MC_OPENING, /* we sent (or must send) OPEN; waiting for ACCEPT */
  MC_ESTABLISHED,
} McState;

struct MuxChannel {
  FerryMux *mux;
  guint32 id;
  guint32 port;
  McState state;
  MuxHandle *handle; /* the application's object, or NULL once it let go */
  FerryDialFunc dial_done;
  gpointer dial_data;
  /* The peer's direction. */
  guint64 recv_consumed;
  GByteArray *recv_buf; /* bytes [recv_consumed, recv_consumed + len) */
  guint32 recv_window;
  guint64 last_ack;
  gboolean ack_due;
  gboolean peer_shut;
  guint64 peer_final;
  gboolean eof_emitted;
  gboolean paused; /* the consumer took less than offered */
  /* This side's direction. */
  guint64 send_acked;
  guint64 send_total;
  guint64 send_next;    /* next offset to put on the current stream */
  GByteArray *send_buf; /* bytes [send_acked, send_total) */
  guint32 peer_window;
  gboolean shut;
  gboolean shut_when_thawed; /* the application shut while the mux was frozen */
  gboolean shutdown_sent;    /* on the current stream */
  gboolean want_writable;
  /* Control frames owed on the current stream. */
  gboolean open_due;
  gboolean accept_due;
};

struct FerryMux {
  FerryTransport base;
  FerryMuxRole role;
  FerryStream *stream;
  MuxParser *parser;
  gboolean synced;       /* the peer's HELLO arrived on the current stream */
  GHashTable *channels;  /* id -> MuxChannel */
  GHashTable *listeners; /* port -> Listener */
  GByteArray *control;   /* REFUSE/RESET frames owed on the current stream */
  guint32 next_id;
  guint32 window;
  gsize send_buffer;
  GList *rr;             /* round-robin position: ids in creation order */
  GMainContext *context; /* thread-default at creation: streams and idles go there */
  GSource *deliver_source;
  GSource *pump_source;
  gboolean freeing;
  gboolean quiet;         /* nothing goes out until ferry_mux_set_quiet(FALSE) */
  gboolean frozen;        /* nothing is delivered until ferry_mux_set_frozen(FALSE) */
  gboolean input_stopped; /* back-pressure: the stream does not read, frames wait parsed */
  FerryMuxLostFunc lost_func;
  gpointer lost_data;
  FerryMuxSyncedFunc synced_func;
  gpointer synced_data;
};

/* A channel's state in OPENING or ESTABLISHED with the mux's window, registered under
 * id (which must be free) and last in the round-robin; it has no handle yet. */
MuxChannel *mux_channel_new(FerryMux *mux, guint32 id, guint32 port, McState state);

/* A new application handle for mc, whose one reference the application owns; sets
 * mc->handle. */
FerryChannel *mux_channel_handle(MuxChannel *mc);

/* The state behind a mux channel handle; NULL for another transport's channel or one
 * the mux has dropped. */
MuxChannel *mux_channel_of(FerryChannel *channel);

/* Whether id belongs to the ids the peer allocates (by the role's MUX_HOST_ID_BIT). */
gboolean mux_id_is_peers(FerryMux *mux, guint32 id);
