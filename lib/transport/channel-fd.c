/*
 * ferry_channel_to_fd(): a channel bridged to one end of a socketpair, for the protocols
 * that speak over fds (ttrpc, the GCS bridge).
 *
 * Flow control holds both ways, so neither side buffers without bound:
 *  - socket -> channel: what the channel does not accept waits here (at most one read
 *    of the stream, since reading stops at once) and reading the socket stops until the
 *    channel is writable again;
 *  - channel -> socket: the data handler takes only what fits under LOCAL_OUTPUT_CAP of
 *    unwritten output; the rest stays in the channel, unconsumed (and so
 *    unacknowledged), until the stream has drained.
 *
 * End of stream travels as a half-close both ways (shutdown_write on the channel,
 * shutdown(SHUT_WR) on the socket after its pending output). The channel closing closes
 * the socket once the bytes already consumed from the channel are written (they count as
 * delivered to the peer, so they are not dropped); the socket failing closes the
 * channel. The adapter keeps its channel reference until both directions are done and
 * the peer has consumed everything sent (so the last unref never aborts delivery).
 */
#include "channel-impl.h"
#include "ferry/error.h"
#include "ferry/fd.h"
#include "ferry/source.h"
#include "ferry/stream.h"

/* Unwritten bytes the adapter queues for the local reader before it stops consuming the
 * channel. */
#define LOCAL_OUTPUT_CAP (256u * 1024)
/* How often a finished adapter looks whether the peer consumed its last bytes (the
 * channel API has no event for that): soon at first, then backing off. */
#define LINGER_FIRST_MS 10
#define LINGER_MAX_MS 1000

typedef struct {
  gint holds;              /* handlers running; the adapter is freed only at 0 */
  FerryChannel *channel;   /* our reference */
  FerryStream *stream;     /* our end of the socketpair; NULL once closed */
  GByteArray *to_channel;  /* read from the socket, not yet accepted by the channel */
  gboolean local_eof;      /* the local peer shut its write side */
  gboolean sent_eof;       /* ... and the channel was told, after to_channel */
  gboolean channel_eof;    /* the channel's peer shut its side: shut the socket's */
  gboolean channel_closed; /* the channel is gone: close the socket once written */
  gboolean channel_paused; /* the data handler consumed less; resume when drained */
  GSource *linger;
  guint linger_ms;
  GMainContext *context; /* thread-default at creation: the linger timer goes there */
} ChannelFd;

static ChannelFd *hold(gpointer ud)
{
  ChannelFd *a = ud;
  a->holds++;
  return a;
}

static void release(ChannelFd *a);

static void drop_stream(ChannelFd *a)
{
  FerryStream *stream = g_steal_pointer(&a->stream);
  if (stream == NULL)
    return;
  /* Closed, not only unreferenced: this may run inside one of the stream's handlers,
   * whose caller holds its own reference and would otherwise go on calling us. */
  ferry_stream_close(stream, NULL);
  ferry_stream_unref(stream);
}

/* ---------------------------------------------------- socket -> channel -- */

/* Hand what waits to the channel; after the last byte of a local EOF, pass the EOF. */
static void push_to_channel(ChannelFd *a)
{
  if (a->channel_closed)
    return;
  if (a->to_channel->len > 0) {
    gsize n = ferry_channel_write(a->channel, a->to_channel->data, a->to_channel->len);
    g_byte_array_remove_range(a->to_channel, 0, (guint)n);
    if (a->to_channel->len > 0)
      return; /* the channel's writable handler calls again */
  }
  if (a->local_eof) {
    if (!a->sent_eof) {
      a->sent_eof = TRUE;
      ferry_channel_shutdown_write(a->channel);
    }
  } else if (a->stream != NULL) {
    ferry_stream_set_reading(a->stream, TRUE);
  }
}

static void on_local_data(FerryStream *stream, const guint8 *data, gsize len, gpointer ud)
{
  ChannelFd *a = hold(ud);
  gsize n = 0;
  /* Bytes already waiting go first. Reading stops whenever something waits, so this
   * holds at most the rest of one read. */
  if (a->to_channel->len == 0 && !a->channel_closed)
    n = ferry_channel_write(a->channel, data, len);
  if (n < len) {
    g_byte_array_append(a->to_channel, data + n, (guint)(len - n));
    ferry_stream_set_reading(stream, FALSE);
  }
  release(a);
}

static void on_local_eof(FerryStream *stream, gpointer ud)
{
  ChannelFd *a = hold(ud);
  a->local_eof = TRUE;
  push_to_channel(a);
  release(a);
}

static void on_channel_writable(FerryChannel *channel, gpointer ud)
{
  ChannelFd *a = hold(ud);
  push_to_channel(a);
  release(a);
}

/* ---------------------------------------------------- channel -> socket -- */

static gsize on_channel_data(FerryChannel *channel, const guint8 *data, gsize len, gpointer ud)
{
  ChannelFd *a = hold(ud);
  gsize done = 0;
  /* Loop: a write that goes out at once frees room again, and then no drained event
   * would come to resume a paused channel. */
  while (done < len && a->stream != NULL && ferry_stream_is_open(a->stream)) {
    gsize pending = ferry_stream_pending_output(a->stream);
    if (pending >= LOCAL_OUTPUT_CAP)
      break;
    gsize n = MIN(len - done, LOCAL_OUTPUT_CAP - pending);
    if (!ferry_stream_write(a->stream, data + done, n, NULL))
      break; /* the stream closed: its handler closes the channel */
    done += n;
  }
  a->channel_paused = done < len;
  release(a);
  return done;
}

static void on_local_drained(FerryStream *stream, gpointer ud)
{
  ChannelFd *a = hold(ud);
  if (a->channel_paused && !a->channel_closed) {
    a->channel_paused = FALSE;
    ferry_channel_resume_reading(a->channel);
  }
  release(a);
}

static void on_channel_eof(FerryChannel *channel, gpointer ud)
{
  ChannelFd *a = hold(ud);
  a->channel_eof = TRUE;
  if (a->stream != NULL)
    ferry_stream_shutdown_write(a->stream);
  release(a);
}

/* ------------------------------------------------------------- closing -- */

static void on_channel_closed(FerryChannel *channel, const GError *error, gpointer ud)
{
  ChannelFd *a = hold(ud);
  a->channel_closed = TRUE;
  if (a->stream != NULL)
    ferry_stream_set_reading(a->stream, FALSE); /* nowhere to send it now */
  release(a);                                   /* closes the socket once written */
}

static void on_local_closed(FerryStream *stream, const GError *error, gpointer ud)
{
  ChannelFd *a = ud;
  if (a->stream != stream)
    return; /* drop_stream closing it */
  hold(a);
  drop_stream(a);
  if (!a->channel_closed)
    ferry_channel_close(a->channel);
  release(a);
}

static gboolean on_linger(gpointer ud)
{
  ChannelFd *a = hold(ud);
  ferry_source_clear(&a->linger);
  release(a);
  return G_SOURCE_REMOVE;
}

static void adapter_free(ChannelFd *a)
{
  ferry_channel_set_handlers(a->channel, NULL, NULL);
  ferry_channel_unref(a->channel);
  g_byte_array_unref(a->to_channel);
  g_main_context_unref(a->context);
  g_free(a);
}

/* The end of every handler: close the socket when its part is done, and let go when
 * everything is. */
static void release(ChannelFd *a)
{
  if (--a->holds > 0)
    return;
  if (a->stream != NULL && ferry_stream_pending_output(a->stream) == 0) {
    /* Pending output 0 after shutdown_write means the socket's write side is shut. */
    if (a->channel_closed || (a->sent_eof && a->channel_eof))
      drop_stream(a);
  }
  if (a->stream != NULL)
    return;
  if (!a->channel_closed && ferry_channel_is_open(a->channel) &&
      ferry_channel_unacked(a->channel) > 0) {
    if (a->linger == NULL) {
      a->linger_ms = a->linger_ms == 0 ? LINGER_FIRST_MS : MIN(a->linger_ms * 2, LINGER_MAX_MS);
      a->linger = ferry_timeout_new(a->context, a->linger_ms, on_linger, a);
    }
    return;
  }
  ferry_source_clear(&a->linger);
  adapter_free(a);
}

static const FerryStreamHandlers local_handlers = {
  .data = on_local_data,
  .closed = on_local_closed,
  .eof = on_local_eof,
  .drained = on_local_drained,
};

static const FerryChannelHandlers channel_handlers = {
  .data = on_channel_data,
  .eof = on_channel_eof,
  .writable = on_channel_writable,
  .closed = on_channel_closed,
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
  g_auto(FerryFd) caller_end = fds[0];
  ChannelFd *a = g_new0(ChannelFd, 1);
  a->stream = ferry_stream_new(fds[1], "channel fd", &local_handlers, a, error);
  if (a->stream == NULL) {
    g_free(a);
    return -1;
  }
  ferry_stream_set_max_output(a->stream, LOCAL_OUTPUT_CAP); /* a backstop: never reached */
  a->channel = ferry_channel_ref(channel);
  a->to_channel = g_byte_array_new();
  a->context = g_main_context_ref_thread_default();
  ferry_channel_set_handlers(channel, &channel_handlers, a);
  return ferry_fd_steal(&caller_end);
}
