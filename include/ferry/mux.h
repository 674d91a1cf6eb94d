/*
 * The ferry channel mux: many vsock-port channels over one byte stream that may be
 * broken and replaced at any time, each channel resuming at the exact byte (the wire
 * protocol is docs/mux.md). A FerryMux is a FerryTransport: listen, dial, and the
 * channels are ordinary FerryChannels.
 *
 * Threading: the thread-default GMainContext at creation; one thread.
 */
#pragma once

#include <glib.h>

#include "ferry/transport.h"

G_BEGIN_DECLS

typedef enum {
  FERRY_MUX_HOST = 1,
  FERRY_MUX_GUEST = 2,
} FerryMuxRole;

typedef struct FerryMux FerryMux;

/* Defaults (docs/mux.md, Limits). */
#define FERRY_MUX_MAX_DATA (64u * 1024u)
#define FERRY_MUX_DEFAULT_WINDOW (256u * 1024u)
#define FERRY_MUX_MAX_WINDOW (4u << 20)
#define FERRY_MUX_DEFAULT_SEND_BUFFER (1u << 20)
#define FERRY_MUX_MAX_CHANNELS 4096u

FerryMux *ferry_mux_new(FerryMuxRole role);
/* The mux as a transport (borrowed; valid while the mux lives). */
FerryTransport *ferry_mux_get_transport(FerryMux *mux);
FerryMuxRole ferry_mux_get_role(FerryMux *mux);

/* Drop the stream and every channel (channels see closed), and free. */
void ferry_mux_free(FerryMux *mux);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FerryMux, ferry_mux_free)

/*
 * Use `fd` (a connected stream; owned) as the underlying stream, replacing the current
 * one if any. Both sides then exchange HELLO and resume every channel.
 */
gboolean ferry_mux_attach(FerryMux *mux, int fd, GError **error);

/* Drop the current underlying stream (a break); channel state is kept. */
void ferry_mux_detach(FerryMux *mux);

gboolean ferry_mux_is_attached(FerryMux *mux);

/* Quiet: no frame goes out (what is owed stays owed) until set_quiet(FALSE). With
 * ferry_mux_output_flushed() -- nothing waits in our stream and, on a socket, the peer
 * has read every byte -- a migration source makes sure the stream it leaves behind ends
 * on a frame boundary: the guest then reads the destination host's HELLO whole. */
void ferry_mux_set_quiet(FerryMux *mux, gboolean quiet);
gboolean ferry_mux_output_flushed(FerryMux *mux);
/* Frozen: no data and no end of file reach an application; what arrives stays in the
 * mux, unconsumed and unacknowledged; applications find no write room, and a write
 * side they shut stays open. set_frozen(FALSE) delivers, shuts and reports room (from
 * an idle). A migration source freezes before it exports its channels, so that
 * nothing moves here past the state a destination resumes from. */
void ferry_mux_set_frozen(FerryMux *mux, gboolean frozen);
/* Attached and the HELLO exchange is complete: channels are flowing. */
gboolean ferry_mux_is_synced(FerryMux *mux);

/* Called when the underlying stream is lost: closed by the peer, an I/O error, or a
 * protocol error (error says which). Not called for ferry_mux_detach(). */
typedef void (*FerryMuxLostFunc)(FerryMux *mux, const GError *error, gpointer user_data);
void ferry_mux_set_lost_func(FerryMux *mux, FerryMuxLostFunc func, gpointer user_data);
/* Called each time a HELLO exchange completes. */
typedef void (*FerryMuxSyncedFunc)(FerryMux *mux, gpointer user_data);
void ferry_mux_set_synced_func(FerryMux *mux, FerryMuxSyncedFunc func, gpointer user_data);

/* Channels the mux holds state for (including ones their application let go of that
 * are still draining). */
guint ferry_mux_channel_count(FerryMux *mux);

/* The window this side grants new channels, and the send buffer per channel. */
void ferry_mux_set_window(FerryMux *mux, guint32 window);
void ferry_mux_set_send_buffer(FerryMux *mux, gsize bytes);

/* ---------------------------------------------------------- export/import -- */

/* Everything needed to rebuild one channel in another mux object (docs/mux.md,
 * Export and import). */
typedef struct {
  guint32 id;
  guint32 port;
  gboolean established;
  /* The peer's direction. */
  guint64 recv_consumed;
  guint32 recv_window;
  gboolean peer_shut;   /* the peer's final length is known */
  guint64 peer_final;   /* valid when peer_shut */
  gboolean eof_emitted; /* the exporting application was told EOF (an importing one is
                           told again) */
  /* This side's direction. */
  guint64 send_acked;
  guint64 send_total;
  GBytes *unacked; /* bytes [send_acked, send_total) */
  guint32 peer_window;
  gboolean shut; /* this side's application shut its write side */
} FerryMuxChannelState;

void ferry_mux_channel_state_clear(FerryMuxChannelState *state);

/* The state of one of this mux's channels. FALSE if the channel is not this mux's or
 * is closed. The channel keeps working in this mux; the caller decides which object
 * lives on. */
gboolean ferry_mux_export_channel(FerryMux *mux, FerryChannel *channel, FerryMuxChannelState *out,
                                  GError **error);

/* Rebuild a channel from exported state in a mux that is not attached yet (the next
 * HELLO resumes it). Returns a new reference; NULL with error if the id is in use,
 * the mux is attached, or the state is inconsistent. */
FerryChannel *ferry_mux_import_channel(FerryMux *mux, const FerryMuxChannelState *state,
                                       GError **error);

/* Encode/decode exported state (for carrying it across processes). Pure. */
GBytes *ferry_mux_channel_state_serialize(const FerryMuxChannelState *state);
gboolean ferry_mux_channel_state_deserialize(GBytes *bytes, FerryMuxChannelState *out,
                                             GError **error);

G_END_DECLS
