/* Main-loop helpers shared by the fuzz targets that run a real object (fuzz-loop.h). */
#include "fuzz-loop.h"

#include <errno.h>
#include <sys/socket.h>
#include <unistd.h>

/* Far more dispatches than any input of -max_len needs; reaching it means a source
 * that never stops being ready. */
#define SETTLE_LIMIT 100000

void fuzz_loop_settle(void)
{
  for (guint i = 0; g_main_context_iteration(NULL, FALSE); i++)
    if (i > SETTLE_LIMIT)
      __builtin_trap();
}

gboolean fuzz_loop_drain(int fd)
{
  for (;;) {
    char buf[4096];
    ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
    if (n > 0)
      continue; /* SCM_RIGHTS fds not asked for are closed by the kernel */
    if (n == 0)
      return FALSE;
    if (errno == EINTR)
      continue;
    return errno == EAGAIN || errno == EWOULDBLOCK;
  }
}

gboolean fuzz_loop_feed(int fd, const guint8 *data, gsize size, gsize chunk)
{
  gsize off = 0;
  guint stalled = 0;
  while (off < size) {
    gsize n = MIN(chunk, size - off);
    ssize_t w = send(fd, data + off, n, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
      return FALSE;
    if (w > 0) {
      off += (gsize)w;
      stalled = 0;
    } else if (++stalled > 1000) {
      return FALSE; /* the reader stopped reading (back-pressure): feed no more */
    }
    fuzz_loop_settle();
    if (!fuzz_loop_drain(fd))
      return off == size;
  }
  return TRUE;
}
