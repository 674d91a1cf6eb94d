/* What both node agents use (node-private.h): random names, keepalive. */
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/random.h>
#include <sys/socket.h>

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

void node_socket_keepalive(int fd)
{
  int on = 1, idle = 5, interval = 2, count = 3;
  unsigned int user_timeout_ms = 15000;
  setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof(on));
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof(interval));
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof(count));
  setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout_ms, sizeof(user_timeout_ms));
}
