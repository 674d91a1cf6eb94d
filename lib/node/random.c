/* Random names for the node agents (node-private.h). */
#include <sys/random.h>

#include "node-private.h"

char *node_random_hex(const char *prefix, gsize bytes)
{
  g_autofree guint8 *raw = g_malloc(bytes);
  for (gsize got = 0; got < bytes;) {
    ssize_t n = getrandom(raw + got, bytes - got, 0);
    if (n > 0)
      got += (gsize)n;
  }
  GString *hex = g_string_new(prefix);
  for (gsize i = 0; i < bytes; i++)
    g_string_append_printf(hex, "%02x", raw[i]);
  return g_string_free(hex, FALSE);
}
