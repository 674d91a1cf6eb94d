/*
 * Stdio relays: a process's pipe or pty master on one side, a transport channel on the
 * other. Nothing is buffered here: output is read only as far as the channel has write
 * room, input is consumed only as far as the fd accepted it. So a host that stops
 * reading stalls that one process (its pipe fills, it blocks), never the agent.
 */
#include <errno.h>
#include <glib-unix.h>
#include <unistd.h>

#include "ferry/fd.h"
#include "ferry/log.h"
#include "ferry/source.h"
#include "gcs-impl.h"

/* One read of a process's output. */
#define READ_CHUNK (32u * 1024u)
/* Reads per wake-up, so one chatty process cannot starve the loop. */
#define READS_PER_WAKEUP 8
/* How often a finished output relay looks whether the peer consumed its last bytes (the
 * channel API has no event for that): soon, then backing off. */
#define LINGER_FIRST_MS 10
#define LINGER_MAX_MS 1000

typedef enum {
  RELAY_OUTPUT,
  RELAY_INPUT,
} RelayKind;

struct GcsRelay {
  RelayKind kind;
  FerryGcs *gcs;
  FerryChannel *channel; /* our reference, or NULL (output: discard) */
  int fd;                /* -1 once closed */
  GSource *watch;        /* fd readable (output) or writable (input) */
  /* Output only. */
  GcsProcess *record;   /* until the relay's end is reported */
  GByteArray *leftover; /* read but not accepted by the channel (a byte, to ask for room) */
  gboolean ended;       /* reported to the record */
  gboolean process_exited;
  GSource *grace;
  GSource *linger;
  guint linger_ms;
};

static GSource *add_fd_watch(int fd, GIOCondition cond, GUnixFDSourceFunc func, gpointer data)
{
  GSource *source = g_unix_fd_source_new(fd, cond);
  g_source_set_callback(source, G_SOURCE_FUNC(func), data, NULL);
  g_source_attach(source, g_main_context_get_thread_default());
  return source;
}

void gcs_relay_free(GcsRelay *relay)
{
  if (relay == NULL)
    return;
  g_hash_table_steal(relay->gcs->relays, relay);
  ferry_source_clear(&relay->watch);
  ferry_source_clear(&relay->grace);
  ferry_source_clear(&relay->linger);
  ferry_fd_clear(&relay->fd);
  if (relay->channel != NULL) {
    ferry_channel_set_handlers(relay->channel, NULL, NULL);
    g_clear_pointer(&relay->channel, ferry_channel_unref);
  }
  if (relay->leftover != NULL)
    g_byte_array_unref(relay->leftover);
  g_free(relay);
}

static GcsRelay *relay_new(FerryGcs *gcs, RelayKind kind, FerryChannel *channel, int fd)
{
  GcsRelay *relay = g_new0(GcsRelay, 1);
  relay->kind = kind;
  relay->gcs = gcs;
  relay->channel = channel != NULL ? ferry_channel_ref(channel) : NULL;
  relay->fd = fd;
  g_hash_table_add(gcs->relays, relay);
  return relay;
}

/* -------------------------------------------------------------- output -- */

static void output_watch(GcsRelay *relay);

/* Free once the peer has consumed everything (or the channel is gone). Keeping the
 * reference until then is what lets every transport deliver the last bytes. */
static gboolean on_linger(gpointer user_data);

static void output_linger(GcsRelay *relay)
{
  if (relay->channel == NULL || !ferry_channel_is_open(relay->channel) ||
      ferry_channel_unacked(relay->channel) == 0) {
    gcs_relay_free(relay);
    return;
  }
  if (relay->linger != NULL)
    return;
  relay->linger_ms =
      relay->linger_ms == 0 ? LINGER_FIRST_MS : MIN(relay->linger_ms * 2, LINGER_MAX_MS);
  relay->linger =
      ferry_timeout_new(g_main_context_get_thread_default(), relay->linger_ms, on_linger, relay);
}

static gboolean on_linger(gpointer user_data)
{
  GcsRelay *relay = user_data;
  g_clear_pointer(&relay->linger, g_source_unref);
  output_linger(relay);
  return G_SOURCE_REMOVE;
}

/* The output ended (or can go nowhere): close the fd, shut the channel, tell the record.
 * The relay may be freed on return. */
static void output_end(GcsRelay *relay)
{
  ferry_source_clear(&relay->watch);
  ferry_source_clear(&relay->grace);
  ferry_fd_clear(&relay->fd);
  if (relay->channel != NULL)
    ferry_channel_shutdown_write(relay->channel);
  relay->ended = TRUE;
  GcsProcess *record = g_steal_pointer(&relay->record);
  if (record != NULL)
    gcs_process_output_done(record, relay);
  output_linger(relay);
}

/* Hand what was read but not accepted to the channel; TRUE when nothing waits. */
static gboolean output_flush(GcsRelay *relay)
{
  if (relay->leftover == NULL || relay->leftover->len == 0)
    return TRUE;
  gsize n = ferry_channel_write(relay->channel, relay->leftover->data, relay->leftover->len);
  g_byte_array_remove_range(relay->leftover, 0, (guint)n);
  return relay->leftover->len == 0;
}

static gboolean on_grace(gpointer user_data)
{
  GcsRelay *relay = user_data;
  g_clear_pointer(&relay->grace, g_source_unref);
  g_autofree char *pid = g_strdup_printf("%d", relay->record != NULL ? relay->record->pid : 0);
  ferry_log(FERRY_LOG_DEBUG, "gcs: output still open after the process exited; ending it", "pid",
            pid, NULL);
  output_end(relay);
  return G_SOURCE_REMOVE;
}

/* The fd is empty for now: after the process's exit, start counting the quiet time. */
static void output_quiet(GcsRelay *relay)
{
  if (relay->process_exited && relay->grace == NULL)
    relay->grace = ferry_timeout_new(g_main_context_get_thread_default(),
                                     relay->gcs->opts.drain_grace_ms, on_grace, relay);
}

static gboolean on_output_ready(gint fd, GIOCondition condition, gpointer user_data)
{
  GcsRelay *relay = user_data;
  guint8 buf[READ_CHUNK];
  for (int i = 0; i < READS_PER_WAKEUP; i++) {
    if (relay->channel != NULL && !ferry_channel_is_open(relay->channel)) {
      output_end(relay);
      return G_SOURCE_REMOVE;
    }
    gsize want = sizeof(buf);
    if (relay->channel != NULL) {
      /* Read no more than the channel takes; with no room, stop until writable (a room of
       * 0 arms that event, transport.h). */
      want = MIN(ferry_channel_write_room(relay->channel), sizeof(buf));
      if (want == 0) {
        g_clear_pointer(&relay->watch, g_source_unref);
        return G_SOURCE_REMOVE;
      }
    }
    ssize_t n = read(relay->fd, buf, want);
    if (n > 0) {
      ferry_source_clear(&relay->grace);
      if (relay->channel == NULL)
        continue;
      gsize took = ferry_channel_write(relay->channel, buf, (gsize)n);
      if (took < (gsize)n) {
        /* Kept until writable; reading stops meanwhile. */
        if (relay->leftover == NULL)
          relay->leftover = g_byte_array_new();
        g_byte_array_append(relay->leftover, buf + took, (guint)((gsize)n - took));
        g_clear_pointer(&relay->watch, g_source_unref);
        return G_SOURCE_REMOVE;
      }
      continue;
    }
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && errno == EAGAIN) {
      output_quiet(relay);
      return G_SOURCE_CONTINUE;
    }
    /* 0 from a pipe; EIO from a pty master once every holder of the slave closed it;
     * any other error ends the output just the same. */
    g_clear_pointer(&relay->watch, g_source_unref);
    output_end(relay);
    return G_SOURCE_REMOVE;
  }
  return G_SOURCE_CONTINUE;
}

static void output_watch(GcsRelay *relay)
{
  if (relay->watch == NULL && relay->fd >= 0)
    relay->watch = add_fd_watch(relay->fd, G_IO_IN | G_IO_HUP | G_IO_ERR, on_output_ready, relay);
}

static void on_output_writable(FerryChannel *channel, gpointer user_data)
{
  GcsRelay *relay = user_data;
  if (relay->ended || !output_flush(relay))
    return;
  output_watch(relay);
}

static void on_output_closed(FerryChannel *channel, const GError *error, gpointer user_data)
{
  GcsRelay *relay = user_data;
  if (relay->ended) {
    gcs_relay_free(relay); /* lingering: nothing more can be delivered */
    return;
  }
  /* The host is gone from this port: the output can go nowhere. Closing our end makes
   * the process's further writes fail (EPIPE), as a closed vsock does in hcsshim. */
  output_end(relay);
}

static const FerryChannelHandlers output_handlers = {
  .writable = on_output_writable,
  .closed = on_output_closed,
};

GcsRelay *gcs_relay_output_new(FerryGcs *gcs, GcsProcess *record, FerryChannel *channel, int fd)
{
  GcsRelay *relay = relay_new(gcs, RELAY_OUTPUT, channel, fd);
  relay->record = record;
  if (channel != NULL)
    ferry_channel_set_handlers(channel, &output_handlers, relay);
  output_watch(relay);
  return relay;
}

void gcs_relay_output_process_exited(GcsRelay *relay)
{
  relay->process_exited = TRUE;
  /* If the fd is being watched it reports EAGAIN (and starts the grace period) or data
   * at the next wake-up; a relay waiting for write room is not quiet. */
  if (relay->watch != NULL)
    output_quiet(relay);
}

/* --------------------------------------------------------------- input -- */

/* The process's input is writable again: let the channel offer what it holds. */
static gboolean on_input_writable(gint fd, GIOCondition condition, gpointer user_data)
{
  GcsRelay *relay = user_data;
  g_clear_pointer(&relay->watch, g_source_unref);
  if (relay->channel != NULL)
    ferry_channel_resume_reading(relay->channel);
  return G_SOURCE_REMOVE;
}

static gsize on_input_data(FerryChannel *channel, const guint8 *data, gsize len, gpointer user_data)
{
  GcsRelay *relay = user_data;
  if (relay->fd < 0)
    return 0;
  ssize_t n;
  do {
    n = write(relay->fd, data, len);
  } while (n < 0 && errno == EINTR);
  if (n > 0) {
    if ((gsize)n < len && relay->watch == NULL)
      relay->watch = add_fd_watch(relay->fd, G_IO_OUT | G_IO_ERR, on_input_writable, relay);
    return (gsize)n;
  }
  if (n < 0 && errno == EAGAIN) {
    if (relay->watch == NULL)
      relay->watch = add_fd_watch(relay->fd, G_IO_OUT | G_IO_ERR, on_input_writable, relay);
    return 0;
  }
  /* EPIPE and the like: nobody reads the process's input any more. Tell the host by
   * closing its channel (our closed handler frees the relay). */
  ferry_fd_clear(&relay->fd);
  ferry_channel_close(channel);
  return 0;
}

static void on_input_eof(FerryChannel *channel, gpointer user_data)
{
  /* Closing the pipe is the process's end of file. (For a terminal the fd is our copy
   * of the master: the terminal stays, as in hcsshim.) */
  gcs_relay_free(user_data);
}

static void on_input_closed(FerryChannel *channel, const GError *error, gpointer user_data)
{
  gcs_relay_free(user_data);
}

static const FerryChannelHandlers input_handlers = {
  .data = on_input_data,
  .eof = on_input_eof,
  .closed = on_input_closed,
};

GcsRelay *gcs_relay_input_new(FerryGcs *gcs, FerryChannel *channel, int fd)
{
  GcsRelay *relay = relay_new(gcs, RELAY_INPUT, channel, fd);
  /* We never write to an input channel: say so, so that it can finish cleanly. */
  ferry_channel_shutdown_write(channel);
  ferry_channel_set_handlers(channel, &input_handlers, relay);
  return relay;
}
