/*
 * Fuzz target: the mux wire decoder (docs/mux.md) on arbitrary bytes -- the HELLO hunt
 * after a break, strict frame checks after it, HELLO payloads -- and the decoder of
 * exported channel state. The first byte chooses the feed size and the mode.
 */
#include <stdint.h>
#include <string.h>

#include "ferry/mux.h"
#include "mux-wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  if (size == 0)
    return 0;
  guint8 mode = data[0];
  data++;
  size--;
  if (mode & 0x80) {
    /* Exported state, as a destination host reads it. */
    GBytes *b = g_bytes_new_static(data, size);
    FerryMuxChannelState s;
    if (ferry_mux_channel_state_deserialize(b, &s, NULL)) {
      if (s.send_total - s.send_acked != g_bytes_get_size(s.unacked))
        __builtin_trap(); /* accepted inconsistent state */
      ferry_mux_channel_state_clear(&s);
    }
    g_bytes_unref(b);
    return 0;
  }
  size_t chunk = (size_t)(mode & 0x3f) * 97 + 1;
  MuxParser *p = mux_parser_new();
  size_t off = 0;
  gboolean failed = FALSE;
  gboolean synced = FALSE;
  while (off < size && !failed) {
    size_t n = MIN(chunk, size - off);
    mux_parser_feed(p, data + off, n);
    off += n;
    for (;;) {
      MuxFrame f;
      GError *error = NULL;
      MuxParseResult r = mux_parser_next(p, &f, &error);
      if (r == MUX_PARSE_NEED_MORE)
        break;
      if (r == MUX_PARSE_ERROR) {
        if (error == NULL || !synced)
          __builtin_trap(); /* errors only after the hunt, and always with a reason */
        g_error_free(error);
        failed = TRUE;
        break;
      }
      if (!synced) {
        /* The hunt hands out only a complete, valid HELLO. */
        guint32 role;
        guint entries;
        MuxHelloEntry *e = mux_hello_decode(&f, &role, &entries, NULL);
        if (e == NULL)
          __builtin_trap();
        g_free(e);
        synced = TRUE;
        continue;
      }
      if (f.type == MUX_DATA && (f.length == 0 || f.length > FERRY_MUX_MAX_DATA))
        __builtin_trap();
      if (f.type == MUX_HELLO) {
        guint32 role;
        guint entries;
        g_free(mux_hello_decode(&f, &role, &entries, NULL));
      }
    }
  }
  mux_parser_free(p);
  return 0;
}
