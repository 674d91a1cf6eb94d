#include "guest-session.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "ferry/bridge-protocol.h"
#include "ferry/fd.h"
#include "ferry/transport.h"

int test_connect_unix(const char *path)
{
  g_autoptr(GError) error = NULL;
  int fd = ferry_unix_connect(path, &error);
  if (fd < 0)
    g_error("%s", error->message);
  return fd;
}

static void on_connected(const GError *error, gpointer ud)
{
  TestGuestSession *s = ud;
  if (error != NULL)
    g_error("negotiate with the guest agent: %s", error->message);
  s->connected = TRUE;
}

static void on_bridge(FerryTransport *t, FerryChannel *ch, gpointer ud)
{
  TestGuestSession *s = ud;
  g_autoptr(GError) error = NULL;
  int fd = ferry_channel_to_fd(ch, &error);
  ferry_channel_unref(ch);
  if (fd < 0)
    g_error("bridge channel: %s", error->message);
  g_assert_null(s->gc);
  s->gc = ferry_guest_connection_new(fd, ferry_stdio_ports_hooks(), s->ports, &error);
  if (s->gc == NULL)
    g_error("guest connection: %s", error->message);
  ferry_guest_connection_connect(s->gc, on_connected, s);
}

TestGuestSession *test_guest_session_new(const char *port_socket)
{
  TestGuestSession *s = g_new0(TestGuestSession, 1);
  s->mux = ferry_mux_new(FERRY_MUX_HOST);
  s->ports = ferry_stdio_ports_new(ferry_mux_get_transport(s->mux));
  g_autoptr(GError) error = NULL;
  if (!ferry_transport_listen(ferry_mux_get_transport(s->mux), FERRY_GCS_BRIDGE_PORT, on_bridge, s,
                              &error) ||
      !ferry_mux_attach(s->mux, test_connect_unix(port_socket), &error))
    g_error("guest session on %s: %s", port_socket, error->message);
  return s;
}

void test_guest_session_free(TestGuestSession *s)
{
  ferry_guest_connection_free(s->gc);
  ferry_stdio_ports_free(s->ports);
  ferry_mux_free(s->mux);
  g_free(s);
}
