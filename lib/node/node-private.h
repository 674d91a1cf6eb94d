/* What both node agents use (lib/node). */
#pragma once

#include <glib.h>

/* `prefix` and `bytes` random bytes (getrandom) in lowercase hex: session ids, tokens. */
char *node_random_hex(const char *prefix, gsize bytes);
