/* A mux channel's exported state (ferry/mux.h, FerryMuxChannelState): clearing it and
 * its serialization, a pure codec (fuzzed by tests/fuzz/fuzz-mux-frame.c). Exporting
 * and importing a live channel is mux-export.c's: they need the channel's insides. */
#include <string.h>

#include "ferry/error.h"
#include "ferry/mux.h"
#include "mux-wire.h"

void ferry_mux_channel_state_clear(FerryMuxChannelState *s)
{
  g_clear_pointer(&s->unacked, g_bytes_unref);
}

/* Serialized state: a version byte, then fixed little-endian fields, then the unacked
 * bytes. */
#define STATE_VERSION 1u
#define STATE_FIXED 60u

GBytes *ferry_mux_channel_state_serialize(const FerryMuxChannelState *s)
{
  gsize unacked = s->unacked != NULL ? g_bytes_get_size(s->unacked) : 0;
  GByteArray *out = g_byte_array_sized_new((guint)(STATE_FIXED + unacked));
  g_byte_array_set_size(out, STATE_FIXED);
  guint8 *p = out->data;
  p[0] = STATE_VERSION;
  p[1] = (s->established ? 1 : 0) | (s->peer_shut ? 2 : 0) | (s->eof_emitted ? 4 : 0) |
         (s->shut ? 8 : 0);
  p[2] = p[3] = 0;
  mux_put32(p + 4, s->id);
  mux_put32(p + 8, s->port);
  guint64 v[5] = { s->recv_consumed, s->peer_final, s->send_acked, s->send_total, unacked };
  for (int i = 0; i < 5; i++)
    mux_put64(p + 12 + 8 * i, v[i]);
  mux_put32(p + 52, s->recv_window);
  mux_put32(p + 56, s->peer_window);
  if (unacked > 0)
    g_byte_array_append(out, g_bytes_get_data(s->unacked, NULL), (guint)unacked);
  return g_byte_array_free_to_bytes(out);
}

gboolean ferry_mux_channel_state_deserialize(GBytes *bytes, FerryMuxChannelState *out,
                                             GError **error)
{
  gsize len;
  const guint8 *p = g_bytes_get_data(bytes, &len);
  memset(out, 0, sizeof(*out));
  if (len < STATE_FIXED || p[0] != STATE_VERSION || (p[1] & ~0xfu) != 0) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                "mux channel state: bad header (%" G_GSIZE_FORMAT " bytes)", len);
    return FALSE;
  }
  guint64 v[5];
  for (int i = 0; i < 5; i++)
    v[i] = mux_get64(p + 12 + 8 * i);
  if (v[4] != len - STATE_FIXED || v[2] > v[3] || v[3] - v[2] != v[4]) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                "mux channel state: %" G_GUINT64_FORMAT " unacknowledged bytes do not match", v[4]);
    return FALSE;
  }
  out->established = (p[1] & 1) != 0;
  out->peer_shut = (p[1] & 2) != 0;
  out->eof_emitted = (p[1] & 4) != 0;
  out->shut = (p[1] & 8) != 0;
  out->id = mux_get32(p + 4);
  out->port = mux_get32(p + 8);
  out->recv_consumed = v[0];
  out->peer_final = v[1];
  out->send_acked = v[2];
  out->send_total = v[3];
  out->recv_window = mux_get32(p + 52);
  out->peer_window = mux_get32(p + 56);
  out->unacked = g_bytes_new(p + STATE_FIXED, (gsize)v[4]);
  return TRUE;
}
