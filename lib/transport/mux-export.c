/* Moving the host side of a live mux channel to another mux (docs/mux.md, "Export and
 * import"): export reads a channel's offsets and unacknowledged bytes, import rebuilds it
 * in a mux not yet attached. The state's clearing and serialization are a pure codec:
 * mux-state.c. */
#include <string.h>

#include "ferry/error.h"
#include "ferry/mux.h"
#include "mux-private.h"

gboolean ferry_mux_export_channel(FerryMux *mux, FerryChannel *channel, FerryMuxChannelState *out,
                                  GError **error)
{
  MuxChannel *mc = mux_channel_of(channel);
  if (mc == NULL || mc->mux != mux) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND,
                "mux: channel on port %u is not an open channel of this mux", channel->port);
    return FALSE;
  }
  memset(out, 0, sizeof(*out));
  out->id = mc->id;
  out->port = mc->port;
  out->established = mc->state == MC_ESTABLISHED;
  out->recv_consumed = mc->recv_consumed;
  out->recv_window = mc->recv_window;
  out->peer_shut = mc->peer_shut;
  out->peer_final = mc->peer_final;
  out->eof_emitted = mc->eof_emitted;
  out->send_acked = mc->send_acked;
  out->send_total = mc->send_total;
  out->unacked = g_bytes_new(mc->send_buf->data, mc->send_buf->len);
  out->peer_window = mc->peer_window;
  out->shut = mc->shut;
  return TRUE;
}

FerryChannel *ferry_mux_import_channel(FerryMux *mux, const FerryMuxChannelState *s, GError **error)
{
  const char *why = NULL;
  gsize unacked = s->unacked != NULL ? g_bytes_get_size(s->unacked) : 0;
  if (mux->stream != NULL)
    why = "the mux is already attached";
  else if (s->id == 0 || g_hash_table_contains(mux->channels, GUINT_TO_POINTER(s->id)))
    why = "channel id 0 or already in use";
  else if (!s->established)
    why = "channel was never established";
  else if (s->send_acked > s->send_total || s->send_total - s->send_acked != unacked)
    why = "unacknowledged bytes do not match the offsets";
  else if (s->peer_shut && s->peer_final < s->recv_consumed)
    why = "peer's final length is below what was consumed";
  else if (s->recv_window > FERRY_MUX_MAX_WINDOW || s->peer_window > FERRY_MUX_MAX_WINDOW)
    why = "window out of range";
  else if (g_hash_table_size(mux->channels) >= FERRY_MUX_MAX_CHANNELS)
    why = "too many channels";
  if (why != NULL) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                "mux: import of channel %u (port %u): %s", s->id, s->port, why);
    return NULL;
  }
  MuxChannel *mc = mux_channel_new(mux, s->id, s->port, MC_ESTABLISHED);
  mc->recv_consumed = s->recv_consumed;
  mc->last_ack = s->recv_consumed;
  mc->recv_window = s->recv_window != 0 ? s->recv_window : mux->window;
  mc->peer_shut = s->peer_shut;
  mc->peer_final = s->peer_final;
  /* The application of this object has not been told yet, whatever the old one was. */
  mc->eof_emitted = FALSE;
  mc->send_acked = s->send_acked;
  mc->send_total = s->send_total;
  mc->send_next = s->send_acked;
  if (unacked > 0)
    g_byte_array_append(mc->send_buf, g_bytes_get_data(s->unacked, NULL), (guint)unacked);
  mc->peer_window = s->peer_window;
  mc->shut = s->shut;
  /* Our own ids must not collide with imported ones. */
  guint32 plain = s->id & ~MUX_HOST_ID_BIT;
  if (!mux_id_is_peers(mux, s->id) && plain >= mux->next_id)
    mux->next_id = plain + 1;
  return mux_channel_handle(mc);
}
