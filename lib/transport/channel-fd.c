/*
 * ferry_channel_to_fd(): a channel bridged to one end of a socketpair, for the protocols
 * that speak over fds (ttrpc, the GCS bridge). A FerryRelay over the socket does the
 * work (relay.h): flow control both ways with nothing buffered beyond the socket's own
 * buffers, end of stream as a half-close both ways, and the channel kept until the peer
 * consumed every byte. The relay frees itself when it is finished; a socket failing
 * (a read error) closes the channel.
 */
#include "ferry/error.h"
#include "ferry/fd.h"
#include "ferry/relay.h"

static void on_read_done(FerryRelay *relay, const GError *error, gpointer ud)
{
  if (error != NULL)
    ferry_relay_abort(relay);
}

static void on_finished(FerryRelay *relay, gpointer ud)
{
  ferry_relay_free(relay);
}

static const FerryRelayHandlers relay_handlers = {
  .read_done = on_read_done,
  .finished = on_finished,
};

int ferry_channel_to_fd(FerryChannel *channel, GError **error)
{
  if (!ferry_channel_is_open(channel)) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE,
                "bridge channel on port %u to an fd: the channel is closed",
                ferry_channel_get_port(channel));
    return -1;
  }
  int fds[2];
  if (!ferry_socketpair(fds, FALSE, error))
    return -1;
  FerryRelayOptions options = { .read_fd = fds[1], .write_fd = fds[1] };
  ferry_relay_new(channel, &options, &relay_handlers, NULL);
  return fds[0];
}
