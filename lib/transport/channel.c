/*
 * The generic half of FerryChannel and FerryTransport: reference counts, handler
 * bookkeeping and dispatch to the implementation (channel-impl.h).
 *
 * Memory: an implementation embeds FerryChannel (FerryTransport) as the first member of
 * its own struct, allocated with g_malloc; the last unref runs klass->finalize for the
 * implementation's part and then g_free()s the whole block.
 *
 * Re-entrancy: every emit holds a reference while the handler runs, so a handler may
 * close or drop the channel. An implementation that still touches the channel after an
 * emit holds its own reference across the call (the handler may drop the last other
 * one).
 */
#include "channel-impl.h"

void ferry_channel_init(FerryChannel *channel, const FerryChannelClass *klass, guint32 port)
{
  channel->klass = klass;
  channel->refs = 1;
  channel->port = port;
  channel->open = TRUE;
  channel->handlers = (FerryChannelHandlers){ 0 };
  channel->user_data = NULL;
}

FerryChannel *ferry_channel_ref(FerryChannel *channel)
{
  channel->refs++;
  return channel;
}

/*
 * A channel still open at its last unref is aborted through klass->close, and no
 * handler runs: nobody holds the channel any more, so nobody is left to be told, and
 * the handlers' user_data is typically the owner that is dropping its reference from its
 * own teardown, possibly already half freed. Calling it would also resurrect an object
 * whose count reached zero. Closing (rather than leaking the connection) tells the peer
 * at once instead of leaving it waiting. The implementation decides what the abort
 * means on the wire (the mux sends "finished" for a channel whose directions both
 * ended and were consumed); an owner that needs queued bytes delivered keeps its
 * reference until ferry_channel_unacked() reaches 0.
 */
void ferry_channel_unref(FerryChannel *channel)
{
  if (channel == NULL || --channel->refs > 0)
    return;
  if (channel->open) {
    /* Without handlers an emit from inside close neither runs anything nor takes a
     * reference on the dying channel; close sees the channel open, as it always does. */
    channel->handlers = (FerryChannelHandlers){ 0 };
    channel->klass->close(channel);
    channel->open = FALSE;
  }
  channel->klass->finalize(channel);
  g_free(channel);
}

void ferry_channel_set_handlers(FerryChannel *channel, const FerryChannelHandlers *handlers,
                                gpointer user_data)
{
  channel->handlers = handlers != NULL ? *handlers : (FerryChannelHandlers){ 0 };
  channel->user_data = user_data;
  if (channel->open && channel->klass->handlers_changed != NULL)
    channel->klass->handlers_changed(channel);
}

guint32 ferry_channel_get_port(FerryChannel *channel)
{
  return channel->port;
}

gboolean ferry_channel_is_open(FerryChannel *channel)
{
  return channel->open;
}

gsize ferry_channel_write(FerryChannel *channel, const void *data, gsize len)
{
  if (!channel->open || len == 0)
    return 0;
  gsize n = channel->klass->write(channel, data, len);
  return MIN(n, len);
}

gsize ferry_channel_write_room(FerryChannel *channel)
{
  return channel->open ? channel->klass->write_room(channel) : 0;
}

gsize ferry_channel_unacked(FerryChannel *channel)
{
  return channel->klass->unacked(channel);
}

void ferry_channel_resume_reading(FerryChannel *channel)
{
  if (channel->open)
    channel->klass->resume_reading(channel);
}

void ferry_channel_shutdown_write(FerryChannel *channel)
{
  if (channel->open)
    channel->klass->shutdown_write(channel);
}

void ferry_channel_close(FerryChannel *channel)
{
  if (!channel->open)
    return;
  ferry_channel_ref(channel);
  channel->klass->close(channel);
  ferry_channel_emit_closed(channel, NULL); /* a no-op if close reported something else */
  ferry_channel_unref(channel);
}

gsize ferry_channel_emit_data(FerryChannel *channel, const guint8 *data, gsize len)
{
  if (!channel->open || channel->handlers.data == NULL || len == 0)
    return 0;
  ferry_channel_ref(channel);
  gsize n = channel->handlers.data(channel, data, len, channel->user_data);
  ferry_channel_unref(channel);
  /* A handler claiming more than it was given must not make the implementation skip
   * bytes it never delivered. */
  return MIN(n, len);
}

void ferry_channel_emit_eof(FerryChannel *channel)
{
  if (!channel->open || channel->handlers.eof == NULL)
    return;
  ferry_channel_ref(channel);
  channel->handlers.eof(channel, channel->user_data);
  ferry_channel_unref(channel);
}

void ferry_channel_emit_writable(FerryChannel *channel)
{
  if (!channel->open || channel->handlers.writable == NULL)
    return;
  ferry_channel_ref(channel);
  channel->handlers.writable(channel, channel->user_data);
  ferry_channel_unref(channel);
}

void ferry_channel_emit_acked(FerryChannel *channel)
{
  if (!channel->open || channel->handlers.acked == NULL)
    return;
  ferry_channel_ref(channel);
  channel->handlers.acked(channel, channel->user_data);
  ferry_channel_unref(channel);
}

void ferry_channel_emit_closed(FerryChannel *channel, const GError *error)
{
  if (!channel->open)
    return;
  channel->open = FALSE; /* first, so that nothing runs after or during closed */
  FerryChannelHandlers handlers = channel->handlers;
  gpointer user_data = channel->user_data;
  channel->handlers = (FerryChannelHandlers){ 0 };
  if (handlers.closed == NULL)
    return;
  ferry_channel_ref(channel);
  handlers.closed(channel, error, user_data);
  ferry_channel_unref(channel);
}

/* ------------------------------------------------------------ transport -- */

void ferry_transport_init(FerryTransport *transport, const FerryTransportClass *klass)
{
  transport->klass = klass;
  transport->refs = 1;
}

FerryTransport *ferry_transport_ref(FerryTransport *transport)
{
  transport->refs++;
  return transport;
}

void ferry_transport_unref(FerryTransport *transport)
{
  if (transport == NULL || --transport->refs > 0)
    return;
  transport->klass->finalize(transport);
  g_free(transport);
}

gboolean ferry_transport_listen(FerryTransport *transport, guint32 port, FerryAcceptFunc accept,
                                gpointer user_data, GError **error)
{
  return transport->klass->listen(transport, port, accept, user_data, error);
}

void ferry_transport_unlisten(FerryTransport *transport, guint32 port)
{
  transport->klass->unlisten(transport, port);
}

void ferry_transport_dial(FerryTransport *transport, guint32 port, FerryDialFunc done,
                          gpointer user_data)
{
  transport->klass->dial(transport, port, done, user_data);
}
