/* The fd <-> channel relay (include/ferry/relay.h). */
#include "ferry/relay.h"

#include <errno.h>
#include <glib-unix.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ferry/error.h"
#include "ferry/fd.h"
#include "ferry/source.h"

/* One read of read_fd (never more than the channel's room). */
#define READ_CHUNK (32u * 1024u)
/* Reads per wake-up, so one busy fd cannot starve the loop. */
#define READS_PER_WAKEUP 8

typedef enum { EVENT_READ_DONE, EVENT_WRITE_DONE, EVENT_FINISHED, EVENT_COUNT } RelayEvent;

struct FerryRelay {
  GMainContext *context;
  FerryChannel *channel; /* our reference; NULL after free or when none was given */
  FerryRelayOptions opts;
  FerryRelayHandlers handlers;
  gpointer user_data;

  /* read side: read_fd -> channel */
  GSource *read_watch;  /* read_fd readable */
  GByteArray *leftover; /* read, not yet accepted by the channel */
  gboolean read_eof;    /* read_fd ended: shut the channel after leftover */
  gboolean read_ended;  /* ... and that was done */
  GError *read_error;
  guint quiet_ms; /* 0: no quiet deadline */
  GSource *quiet;

  /* write side: channel -> write_fd */
  GSource *write_watch; /* write_fd writable: offer the channel's data again */
  gboolean write_ended;
  gboolean write_failed;    /* write_fd failed: drop what comes (drop_after_write_error) */
  gboolean write_is_socket; /* send(MSG_NOSIGNAL): a closed peer is an error, not SIGPIPE */
  GError *write_error;

  gboolean no_read_side; /* read_fd was -1: the channel's write side is not ours */
  gboolean channel_gone; /* closed or reset */
  gboolean due[EVENT_COUNT];
  gboolean reported[EVENT_COUNT];
  GSource *report;
};

static void relay_progress(FerryRelay *r);

static GSource *watch_fd(FerryRelay *r, int fd, GIOCondition cond, GUnixFDSourceFunc func)
{
  GSource *source = g_unix_fd_source_new(fd, cond);
  g_source_set_callback(source, G_SOURCE_FUNC(func), r, NULL);
  g_source_attach(source, r->context);
  return source;
}

static gboolean shared_fd(FerryRelay *r)
{
  return r->opts.read_fd >= 0 && r->opts.read_fd == r->opts.write_fd;
}

/* Close read_fd (write_fd): for one socket carrying both directions, only once both are
 * done, the write side having been shut at the channel's EOF. */
static void close_read_fd(FerryRelay *r)
{
  ferry_source_clear(&r->read_watch);
  ferry_source_clear(&r->quiet);
  if (shared_fd(r)) {
    if (!r->write_ended)
      return;
    r->opts.write_fd = -1;
  }
  ferry_fd_clear(&r->opts.read_fd);
}

static void close_write_fd(FerryRelay *r)
{
  ferry_source_clear(&r->write_watch);
  if (shared_fd(r)) {
    if (!r->read_ended) {
      shutdown(r->opts.write_fd, SHUT_WR);
      return;
    }
    r->opts.read_fd = -1;
  }
  ferry_fd_clear(&r->opts.write_fd);
}

static void keep_error(GError **slot, const GError *error)
{
  if (*slot == NULL && error != NULL)
    *slot = g_error_copy(error);
}

/* ------------------------------------------------------------- reports -- */

static gboolean on_report(gpointer ud)
{
  FerryRelay *r = ud;
  ferry_source_clear(&r->report);
  RelayEvent e = EVENT_COUNT;
  for (int i = 0; i < EVENT_COUNT && e == EVENT_COUNT; i++)
    if (r->due[i] && !r->reported[i])
      e = (RelayEvent)i;
  if (e == EVENT_COUNT)
    return G_SOURCE_REMOVE;
  r->reported[e] = TRUE;
  for (int i = e + 1; i < EVENT_COUNT; i++)
    if (r->due[i] && !r->reported[i])
      r->report = ferry_idle_new(r->context, on_report, r); /* freed with the relay */
  /* Each handler may free the relay: nothing of it is touched after the call. */
  if (e == EVENT_READ_DONE) {
    g_autoptr(GError) error = r->read_error != NULL ? g_error_copy(r->read_error) : NULL;
    if (r->handlers.read_done != NULL)
      r->handlers.read_done(r, error, r->user_data);
  } else if (e == EVENT_WRITE_DONE) {
    g_autoptr(GError) error = r->write_error != NULL ? g_error_copy(r->write_error) : NULL;
    if (r->handlers.write_done != NULL)
      r->handlers.write_done(r, error, r->user_data);
  } else if (r->handlers.finished != NULL) {
    r->handlers.finished(r, r->user_data);
  }
  return G_SOURCE_REMOVE;
}

static void report(FerryRelay *r, RelayEvent e)
{
  if (r->due[e])
    return;
  r->due[e] = TRUE;
  if (r->report == NULL)
    r->report = ferry_idle_new(r->context, on_report, r);
}

/* ------------------------------------------------------------ read side -- */

/* The read side is over: the channel gets its EOF once what was read is in it. */
static void read_end(FerryRelay *r, const GError *error)
{
  keep_error(&r->read_error, error);
  r->read_eof = TRUE;
  close_read_fd(r);
  relay_progress(r);
}

/* Hand what was read but not accepted to the channel; TRUE when nothing waits. */
static gboolean flush_leftover(FerryRelay *r)
{
  if (r->leftover == NULL || r->leftover->len == 0)
    return TRUE;
  if (r->channel_gone)
    return FALSE;
  gsize n = ferry_channel_write(r->channel, r->leftover->data, r->leftover->len);
  g_byte_array_remove_range(r->leftover, 0, (guint)n);
  return r->leftover->len == 0;
}

static gboolean on_quiet(gpointer ud)
{
  FerryRelay *r = ud;
  ferry_source_clear(&r->quiet);
  read_end(r, NULL);
  return G_SOURCE_REMOVE;
}

static void arm_quiet(FerryRelay *r)
{
  if (r->quiet_ms > 0 && r->quiet == NULL && r->read_watch != NULL)
    r->quiet = ferry_timeout_new(r->context, r->quiet_ms, on_quiet, r);
}

static gboolean on_readable(gint fd, GIOCondition cond, gpointer ud)
{
  FerryRelay *r = ud;
  guint8 buf[READ_CHUNK];
  for (int i = 0; i < READS_PER_WAKEUP; i++) {
    gsize want = sizeof(buf);
    if (r->channel != NULL) {
      /* No more than the channel takes; a room of 0 arms its writable event. */
      want = MIN(ferry_channel_write_room(r->channel), sizeof(buf));
      if (want == 0) {
        ferry_source_clear(&r->read_watch);
        ferry_source_clear(&r->quiet);
        return G_SOURCE_REMOVE;
      }
    }
    ssize_t n = read(fd, buf, want);
    if (n > 0) {
      ferry_source_clear(&r->quiet);
      if (r->channel == NULL)
        continue; /* nobody wants it */
      gsize took = ferry_channel_write(r->channel, buf, (gsize)n);
      if (took < (gsize)n) {
        if (r->leftover == NULL)
          r->leftover = g_byte_array_new();
        g_byte_array_append(r->leftover, buf + took, (guint)((gsize)n - took));
        ferry_source_clear(&r->read_watch); /* until writable */
        return G_SOURCE_REMOVE;
      }
      continue;
    }
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      arm_quiet(r);
      return G_SOURCE_CONTINUE;
    }
    /* 0 from a pipe or socket; EIO from a pty master once every holder of the slave
     * closed it, which is its end of file too. */
    g_autoptr(GError) error = NULL;
    if (n < 0 && errno != EIO)
      ferry_error_set_errno(&error, errno, "relay: read fd %d", fd);
    read_end(r, error); /* clears the watch */
    return G_SOURCE_REMOVE;
  }
  return G_SOURCE_CONTINUE;
}

static void watch_read(FerryRelay *r)
{
  if (r->read_watch == NULL && r->opts.read_fd >= 0 && !r->read_eof)
    r->read_watch = watch_fd(r, r->opts.read_fd, G_IO_IN | G_IO_HUP | G_IO_ERR, on_readable);
}

/* ----------------------------------------------------------- write side -- */

static void write_end(FerryRelay *r, const GError *error)
{
  if (r->write_ended)
    return;
  keep_error(&r->write_error, error);
  r->write_ended = TRUE;
  close_write_fd(r);
  report(r, EVENT_WRITE_DONE); /* not when there was no write side: reported[] */
  relay_progress(r);
}

static gboolean on_write_ready(gint fd, GIOCondition cond, gpointer ud)
{
  FerryRelay *r = ud;
  ferry_source_clear(&r->write_watch);
  if (r->channel != NULL && !r->channel_gone)
    ferry_channel_resume_reading(r->channel);
  return G_SOURCE_REMOVE;
}

static gsize on_channel_data(FerryChannel *channel, const guint8 *data, gsize len, gpointer ud)
{
  FerryRelay *r = ud;
  if (r->opts.write_fd < 0 || r->write_failed)
    return len; /* nowhere to go: dropped, so the peer is not blocked */
  gsize done = 0;
  while (done < len) {
    ssize_t n = r->write_is_socket ? send(r->opts.write_fd, data + done, len - done, MSG_NOSIGNAL)
                                   : write(r->opts.write_fd, data + done, len - done);
    if (n > 0) {
      done += (gsize)n;
      continue;
    }
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (r->write_watch == NULL)
        r->write_watch =
            watch_fd(r, r->opts.write_fd, G_IO_OUT | G_IO_ERR | G_IO_HUP, on_write_ready);
      return done;
    }
    g_autoptr(GError) error = NULL;
    ferry_error_set_errno(&error, errno, "relay: write fd %d", r->opts.write_fd);
    keep_error(&r->write_error, error);
    if (r->opts.drop_after_write_error) {
      r->write_failed = TRUE;
      ferry_source_clear(&r->write_watch);
      return len;
    }
    ferry_relay_abort(r);
    return 0;
  }
  return done;
}

/* ---------------------------------------------------------- the channel -- */

static void on_channel_eof(FerryChannel *channel, gpointer ud)
{
  write_end(ud, NULL);
}

static void on_channel_writable(FerryChannel *channel, gpointer ud)
{
  FerryRelay *r = ud;
  if (flush_leftover(r)) {
    watch_read(r);
    relay_progress(r);
  }
}

static void on_channel_acked(FerryChannel *channel, gpointer ud)
{
  relay_progress(ud);
}

/* The channel is gone: both sides end, and the fds close (a process writing its output
 * then gets EPIPE). The peer's reset is the error of each side not over yet; a local
 * close is none. */
static void on_channel_closed(FerryChannel *channel, const GError *error, gpointer ud)
{
  FerryRelay *r = ud;
  r->channel_gone = TRUE;
  if (r->leftover != NULL)
    g_byte_array_set_size(r->leftover, 0);
  if (!r->read_ended)
    keep_error(&r->read_error, error);
  r->read_eof = TRUE;
  write_end(r, error);
  close_read_fd(r);
  relay_progress(r);
}

static const FerryChannelHandlers channel_handlers = {
  .data = on_channel_data,
  .eof = on_channel_eof,
  .writable = on_channel_writable,
  .closed = on_channel_closed,
  .acked = on_channel_acked,
};

/* Move the relay on after any change: shut the channel once the read side's bytes are
 * in it, and see whether everything is over. */
static void relay_progress(FerryRelay *r)
{
  if (r->read_eof && !r->read_ended && (r->channel_gone || flush_leftover(r))) {
    r->read_ended = TRUE;
    if (r->channel != NULL && !r->channel_gone && !r->no_read_side)
      ferry_channel_shutdown_write(r->channel);
    close_read_fd(r);           /* a shared socket closes now if the write side is done */
    report(r, EVENT_READ_DONE); /* not when there was no read side: reported[] */
  }
  if (!r->read_ended || !r->write_ended)
    return;
  if (r->channel != NULL && !r->channel_gone && ferry_channel_is_open(r->channel) &&
      ferry_channel_unacked(r->channel) > 0)
    return; /* the channel's acked event calls again */
  report(r, EVENT_FINISHED);
}

/* ------------------------------------------------------------- public -- */

FerryRelay *ferry_relay_new(FerryChannel *channel, const FerryRelayOptions *options,
                            const FerryRelayHandlers *handlers, gpointer user_data)
{
  FerryRelay *r = g_new0(FerryRelay, 1);
  r->context = g_main_context_ref_thread_default();
  r->opts = *options;
  if (handlers != NULL)
    r->handlers = *handlers;
  r->user_data = user_data;
  for (int i = 0; i < 2; i++) {
    int fd = i == 0 ? r->opts.read_fd : r->opts.write_fd;
    if (fd >= 0)
      ferry_fd_set_nonblocking(fd, TRUE, NULL);
  }
  /* A side without an fd is over from the start, and is not reported. */
  struct stat st;
  r->write_is_socket =
      r->opts.write_fd >= 0 && fstat(r->opts.write_fd, &st) == 0 && S_ISSOCK(st.st_mode);
  r->no_read_side = r->opts.read_fd < 0;
  r->reported[EVENT_READ_DONE] = r->no_read_side;
  r->reported[EVENT_WRITE_DONE] = r->opts.write_fd < 0 || channel == NULL;
  r->write_ended = r->opts.write_fd < 0 || channel == NULL;
  if (channel == NULL && r->opts.write_fd >= 0 && !shared_fd(r))
    ferry_fd_clear(&r->opts.write_fd);
  if (channel != NULL) {
    r->channel = ferry_channel_ref(channel);
    ferry_channel_set_handlers(channel, &channel_handlers, r);
    r->channel_gone = !ferry_channel_is_open(channel);
  }
  if (r->channel_gone) {
    g_autoptr(GError) gone =
        g_error_new(FERRY_ERROR, FERRY_ERROR_UNAVAILABLE, "relay: the channel is closed");
    keep_error(&r->read_error, gone);
    write_end(r, gone);
  }
  r->read_eof = r->opts.read_fd < 0 || r->channel_gone;
  watch_read(r);
  relay_progress(r);
  return r;
}

void ferry_relay_end_read_when_quiet(FerryRelay *relay, guint ms)
{
  relay->quiet_ms = MAX(ms, 1);
  /* Watching means the fd was found empty last time (or is about to be read); waiting
   * for room is not quiet. */
  arm_quiet(relay);
}

void ferry_relay_abort(FerryRelay *relay)
{
  if (relay->channel != NULL && !relay->channel_gone)
    ferry_channel_close(relay->channel); /* runs on_channel_closed */
}

FerryChannel *ferry_relay_get_channel(FerryRelay *relay)
{
  return relay->channel;
}

void ferry_relay_free(FerryRelay *relay)
{
  if (relay == NULL)
    return;
  ferry_source_clear(&relay->report);
  ferry_source_clear(&relay->read_watch);
  ferry_source_clear(&relay->write_watch);
  ferry_source_clear(&relay->quiet);
  if (shared_fd(relay))
    relay->opts.write_fd = -1;
  ferry_fd_clear(&relay->opts.read_fd);
  ferry_fd_clear(&relay->opts.write_fd);
  if (relay->channel != NULL) {
    ferry_channel_set_handlers(relay->channel, NULL, NULL);
    g_clear_pointer(&relay->channel, ferry_channel_unref);
  }
  if (relay->leftover != NULL)
    g_byte_array_unref(relay->leftover);
  g_clear_error(&relay->read_error);
  g_clear_error(&relay->write_error);
  g_main_context_unref(relay->context);
  g_free(relay);
}
