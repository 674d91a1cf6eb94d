/* What both node agents use (lib/node). */
#pragma once

#include <glib.h>

/* `prefix` and `bytes` random bytes (getrandom) in lowercase hex: session ids, tokens. */
char *node_random_hex(const char *prefix, gsize bytes);

/* A control connection notices a peer that vanished (a cut link, a dead host) within
 * about 15 s: TCP keepalive every 2 s after 5 s of quiet, 3 probes, and unacknowledged
 * data given up after 15 s. */
void node_socket_keepalive(int fd);
