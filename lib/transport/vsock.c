/*
 * FerryTransport and FerryChannel over AF_VSOCK. A channel is a connected vsock socket in
 * a FerryStream; the generic half lives in channel.c.
 *
 * Receiving: the stream's reads go to the data handler; what it does not consume is
 * held here (at most one read: reading the socket stops at once) and the peer's further
 * bytes stay in the kernel, so the kernel's own credit flow control pushes back on the
 * peer. Sending: up to FERRY_VSOCK_SEND_BUFFER bytes wait in the stream for the kernel.
 */
#include "ferry/transport-vsock.h"

#include <errno.h>
#include <glib-unix.h>
#include <stdarg.h>
#include <string.h>
#include <unistd.h>

#include "channel-impl.h"
#include "ferry/error.h"
#include "ferry/fd.h"
#include "ferry/source.h"
#include "ferry/stream.h"

/* How long a listener rests after accept(2) ran out of fds or memory, instead of
 * spinning on a socket that stays readable. */
#define ACCEPT_BACKOFF_MS 100

/* An fd failure: the errno's code, or UNAVAILABLE where the table has none (ENODEV,
 * EAFNOSUPPORT, EHOSTUNREACH, ...): the peer or the device is not there. */
static gboolean set_vsock_error(GError **error, int errsv, const char *fmt, ...)
    G_GNUC_PRINTF(3, 4);

static gboolean set_vsock_error(GError **error, int errsv, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  g_autofree char *what = g_strdup_vprintf(fmt, ap);
  va_end(ap);
  FerryErrorCode code = ferry_error_code_from_errno(errsv);
  if (code == FERRY_ERROR_UNKNOWN)
    code = FERRY_ERROR_UNAVAILABLE;
  g_set_error(error, FERRY_ERROR, code, "%s: %s", what, g_strerror(errsv));
  return FALSE;
}

static GSource *attach_source(GSource *source, GSourceFunc func, gpointer data)
{
  g_source_set_callback(source, func, data, NULL);
  g_source_attach(source, g_main_context_get_thread_default());
  return source;
}

/* ------------------------------------------------------------- addresses -- */

static gboolean parse_number(const char *address, const char *text, const char *what, guint32 *out,
                             GError **error)
{
  guint64 v;
  g_autoptr(GError) local = NULL;
  if (!g_ascii_string_to_unsigned(text, 10, 0, G_MAXUINT32, &v, &local)) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "vsock address \"%s\": %s: %s",
                address, what, local->message);
    return FALSE;
  }
  if (v == G_MAXUINT32) { /* VMADDR_CID_ANY, VMADDR_PORT_ANY */
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                "vsock address \"%s\": %s %u means \"any\", not a peer", address, what,
                G_MAXUINT32);
    return FALSE;
  }
  *out = (guint32)v;
  return TRUE;
}

gboolean ferry_vsock_parse_address(const char *address, guint32 *cid, guint32 *port, GError **error)
{
  guint32 c = VMADDR_CID_HOST, p;
  const char *port_text;
  g_autofree char *cid_text = NULL;
  if (g_str_has_prefix(address, "vsock://")) {
    const char *rest = address + strlen("vsock://");
    const char *colon = strchr(rest, ':');
    if (colon == NULL) {
      g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                  "vsock address \"%s\": expected vsock://CID:PORT", address);
      return FALSE;
    }
    cid_text = g_strndup(rest, (gsize)(colon - rest));
    port_text = colon + 1;
    if (!parse_number(address, cid_text, "CID", &c, error))
      return FALSE;
  } else if (g_str_has_prefix(address, "vsock:")) {
    port_text = address + strlen("vsock:");
  } else {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                "\"%s\" is not a vsock address (vsock://CID:PORT or vsock:PORT)", address);
    return FALSE;
  }
  if (!parse_number(address, port_text, "port", &p, error))
    return FALSE;
  *cid = c;
  *port = p;
  return TRUE;
}

struct sockaddr_vm ferry_vsock_sockaddr(guint32 cid, guint32 port)
{
  struct sockaddr_vm addr;
  memset(&addr, 0, sizeof(addr)); /* svm_reserved1, svm_flags, svm_zero must be 0 */
  addr.svm_family = AF_VSOCK;
  addr.svm_cid = cid;
  addr.svm_port = port;
  return addr;
}

/* --------------------------------------------------------------- channel -- */

typedef struct {
  FerryChannel base;   /* first: the generic code frees the block */
  FerryStream *stream; /* NULL once closed */
  GByteArray *held;    /* received, not consumed: offered again on resume_reading */
  guint resumes;       /* counts resume_reading and new handlers */
  gboolean eof;        /* the peer shut its side: report after `held` */
  gboolean eof_reported;
  gboolean write_shut;
  gboolean short_write; /* write accepted less: report writable once drained */
  GError *close_error;  /* the stream failed: report closed from the main loop */
  GSource *offer;       /* delivers held data, eof and close_error */
} VsockChannel;

/* Offer `data` to the handler; hold what it does not take. Held bytes are offered
 * again only from resume_reading or new handlers, never on their own. */
static void deliver(VsockChannel *vc, const guint8 *data, gsize len)
{
  guint resumes = vc->resumes;
  gsize n = ferry_channel_emit_data(&vc->base, data, len);
  if (n < len && vc->base.open) {
    g_byte_array_append(vc->held, data + n, (guint)(len - n));
    /* An offer scheduled before this short consume (for new handlers) must not call
     * again; one the handler asked for during the call may. */
    if (resumes == vc->resumes && vc->close_error == NULL)
      ferry_source_clear(&vc->offer);
  }
}

/* Read the socket only while nothing is held: the peer's further bytes wait in the
 * kernel, whose credit flow control then stops the peer. So `held` is at most one read. */
static void update_reading(VsockChannel *vc)
{
  if (vc->stream != NULL)
    ferry_stream_set_reading(vc->stream, vc->held->len == 0);
}

static void report_eof(VsockChannel *vc)
{
  if (vc->eof && !vc->eof_reported && vc->held->len == 0) {
    vc->eof_reported = TRUE;
    ferry_channel_emit_eof(&vc->base);
  }
}

static gboolean on_offer(gpointer ud)
{
  VsockChannel *vc = ud;
  FerryChannel *channel = ferry_channel_ref(&vc->base);
  g_clear_pointer(&vc->offer, g_source_unref);
  if (vc->close_error != NULL) {
    g_autoptr(GError) error = g_steal_pointer(&vc->close_error);
    g_byte_array_set_size(vc->held, 0);
    ferry_channel_emit_closed(channel, error);
  } else {
    if (vc->held->len > 0) {
      /* Take the bytes out first: the handler may close the channel (which empties
       * `held`) and `deliver` appends the remainder to a fresh one. */
      g_autoptr(GByteArray) pending = g_steal_pointer(&vc->held);
      vc->held = g_byte_array_new();
      deliver(vc, pending->data, pending->len);
    }
    update_reading(vc);
    report_eof(vc);
  }
  ferry_channel_unref(channel);
  return G_SOURCE_REMOVE;
}

static void schedule_offer(VsockChannel *vc)
{
  if (vc->offer == NULL)
    vc->offer = attach_source(g_idle_source_new(), on_offer, vc);
}

static void on_sock_data(FerryStream *stream, const guint8 *data, gsize len, gpointer ud)
{
  VsockChannel *vc = ud;
  FerryChannel *channel = ferry_channel_ref(&vc->base);
  if (vc->held->len > 0)
    g_byte_array_append(vc->held, data, (guint)len); /* not expected; keeps the order */
  else
    deliver(vc, data, len);
  update_reading(vc);
  ferry_channel_unref(channel);
}

static void on_sock_eof(FerryStream *stream, gpointer ud)
{
  VsockChannel *vc = ud;
  FerryChannel *channel = ferry_channel_ref(&vc->base);
  vc->eof = TRUE;
  report_eof(vc); /* else after the held bytes are consumed */
  ferry_channel_unref(channel);
}

/* Everything queued went to the kernel: unacked (the stream's pending output) is 0. */
static void on_sock_drained(FerryStream *stream, gpointer ud)
{
  VsockChannel *vc = ud;
  FerryChannel *channel = ferry_channel_ref(&vc->base);
  if (vc->short_write) {
    vc->short_write = FALSE;
    ferry_channel_emit_writable(channel);
  }
  ferry_channel_emit_acked(channel);
  ferry_channel_unref(channel);
}

/* The socket failed (read or write error, or the peer reset it). Reported from the main
 * loop: this can run inside ferry_channel_write(), where a closed handler would surprise
 * the writer. */
static void on_sock_closed(FerryStream *stream, const GError *error, gpointer ud)
{
  VsockChannel *vc = ud;
  if (vc->stream != stream)
    return; /* vsock_close let go of it */
  g_clear_pointer(&vc->stream, ferry_stream_unref);
  if (error != NULL)
    vc->close_error = g_error_copy(error);
  else
    vc->close_error = g_error_new(FERRY_ERROR, FERRY_ERROR_UNAVAILABLE, "vsock connection closed");
  ferry_source_clear(&vc->offer); /* a pending offer may have been scheduled for data */
  schedule_offer(vc);
}

static const FerryStreamHandlers sock_handlers = {
  .data = on_sock_data,
  .closed = on_sock_closed,
  .eof = on_sock_eof,
  .drained = on_sock_drained,
};

static gsize vsock_write_room(FerryChannel *channel)
{
  VsockChannel *vc = (VsockChannel *)channel;
  if (vc->stream == NULL || vc->write_shut)
    return 0;
  gsize pending = ferry_stream_pending_output(vc->stream);
  if (pending >= FERRY_VSOCK_SEND_BUFFER) {
    vc->short_write = TRUE; /* transport.h: a room of 0 arms writable */
    return 0;
  }
  return FERRY_VSOCK_SEND_BUFFER - pending;
}

static gsize vsock_write(FerryChannel *channel, const void *data, gsize len)
{
  VsockChannel *vc = (VsockChannel *)channel;
  if (vc->stream == NULL || vc->write_shut)
    return 0;
  gsize n = MIN(len, vsock_write_room(channel));
  if (n > 0 && !ferry_stream_write(vc->stream, data, n, NULL))
    return 0; /* the stream closed; closed is reported from the main loop */
  if (n < len)
    vc->short_write = TRUE;
  return n;
}

static gsize vsock_unacked(FerryChannel *channel)
{
  VsockChannel *vc = (VsockChannel *)channel;
  return vc->stream != NULL ? ferry_stream_pending_output(vc->stream) : 0;
}

static void vsock_resume_reading(FerryChannel *channel)
{
  VsockChannel *vc = (VsockChannel *)channel;
  vc->resumes++;
  schedule_offer(vc);
}

static void vsock_shutdown_write(FerryChannel *channel)
{
  VsockChannel *vc = (VsockChannel *)channel;
  vc->write_shut = TRUE;
  if (vc->stream != NULL)
    ferry_stream_shutdown_write(vc->stream);
}

/* The abort: unsent output is dropped and closing the socket ends the connection for the
 * peer (generic code then reports closed). Also the last unref's close. */
static void vsock_close(FerryChannel *channel)
{
  VsockChannel *vc = (VsockChannel *)channel;
  FerryStream *stream = g_steal_pointer(&vc->stream);
  if (stream != NULL) {
    /* Closed, not only unreferenced: this may run inside one of the stream's handlers,
     * whose caller holds its own reference and would otherwise read on and call us. */
    ferry_stream_close(stream, NULL);
    ferry_stream_unref(stream);
  }
  g_byte_array_set_size(vc->held, 0);
  g_clear_error(&vc->close_error);
  ferry_source_clear(&vc->offer);
}

static void vsock_handlers_changed(FerryChannel *channel)
{
  VsockChannel *vc = (VsockChannel *)channel;
  vc->resumes++;
  schedule_offer(vc);
}

static void vsock_finalize(FerryChannel *channel)
{
  VsockChannel *vc = (VsockChannel *)channel;
  vsock_close(channel);
  g_byte_array_unref(vc->held);
}

static const FerryChannelClass vsock_channel_class = {
  .write = vsock_write,
  .write_room = vsock_write_room,
  .unacked = vsock_unacked,
  .resume_reading = vsock_resume_reading,
  .shutdown_write = vsock_shutdown_write,
  .close = vsock_close,
  .handlers_changed = vsock_handlers_changed,
  .finalize = vsock_finalize,
};

FerryChannel *ferry_vsock_channel_new(int fd, guint32 port, GError **error)
{
  VsockChannel *vc = g_new0(VsockChannel, 1);
  vc->stream = ferry_stream_new(fd, "vsock", &sock_handlers, vc, error);
  if (vc->stream == NULL) {
    g_free(vc);
    return NULL;
  }
  /* A backstop: vsock_write never queues past it. */
  ferry_stream_set_max_output(vc->stream, FERRY_VSOCK_SEND_BUFFER);
  vc->held = g_byte_array_new();
  ferry_channel_init(&vc->base, &vsock_channel_class, port);
  return &vc->base;
}

/* ------------------------------------------------------------- transport -- */

typedef struct {
  FerryTransport base; /* first: the generic code frees the block */
  guint32 peer_cid;
  GHashTable *listeners; /* port -> Listener */
} VsockTransport;

typedef struct {
  VsockTransport *transport;
  guint32 port;
  int fd;
  GSource *watch;   /* accept when readable */
  GSource *backoff; /* or rest after running out of fds */
  FerryAcceptFunc accept;
  gpointer user_data;
} Listener;

static void listener_free(gpointer p)
{
  Listener *l = p;
  ferry_source_clear(&l->watch);
  ferry_source_clear(&l->backoff);
  ferry_fd_clear(&l->fd);
  g_free(l);
}

static gboolean on_accept_ready(int fd, GIOCondition cond, gpointer ud);

static void listener_watch(Listener *l)
{
  l->watch = g_unix_fd_source_new(l->fd, G_IO_IN);
  attach_source(l->watch, G_SOURCE_FUNC(on_accept_ready), l);
}

static gboolean on_backoff_over(gpointer ud)
{
  Listener *l = ud;
  g_clear_pointer(&l->backoff, g_source_unref);
  listener_watch(l);
  return G_SOURCE_REMOVE;
}

/* One connection per wake-up: the accept callback may unlisten (freeing `l`), so
 * nothing touches the listener after it. The watch is level-triggered: more pending
 * connections wake it again. */
static gboolean on_accept_ready(int fd, GIOCondition cond, gpointer ud)
{
  Listener *l = ud;
  int cfd = accept4(fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
  if (cfd < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR || errno == ECONNABORTED)
      return G_SOURCE_CONTINUE;
    /* Out of fds or memory (or worse): the socket stays readable, so rest a moment
     * rather than spin. The pending connection waits in the backlog. */
    g_clear_pointer(&l->watch, g_source_unref);
    l->backoff = attach_source(g_timeout_source_new(ACCEPT_BACKOFF_MS), on_backoff_over, l);
    return G_SOURCE_REMOVE;
  }
  FerryChannel *channel = ferry_vsock_channel_new(cfd, l->port, NULL);
  if (channel != NULL)
    l->accept(&l->transport->base, channel, l->user_data);
  return G_SOURCE_CONTINUE;
}

static gboolean vsock_listen(FerryTransport *transport, guint32 port, FerryAcceptFunc accept,
                             gpointer user_data, GError **error)
{
  VsockTransport *t = (VsockTransport *)transport;
  if (g_hash_table_contains(t->listeners, GUINT_TO_POINTER(port))) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_ALREADY_EXISTS,
                "listen on vsock port %u: already listening", port);
    return FALSE;
  }
  g_auto(FerryFd) fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0)
    return set_vsock_error(error, errno, "listen on vsock port %u: create AF_VSOCK socket", port);
  struct sockaddr_vm addr = ferry_vsock_sockaddr(VMADDR_CID_ANY, port);
  if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0)
    return set_vsock_error(error, errno, "listen on vsock port %u: bind", port);
  if (listen(fd, SOMAXCONN) < 0)
    return set_vsock_error(error, errno, "listen on vsock port %u", port);
  Listener *l = g_new0(Listener, 1);
  l->transport = t;
  l->port = port;
  l->fd = ferry_fd_steal(&fd);
  l->accept = accept;
  l->user_data = user_data;
  listener_watch(l);
  g_hash_table_insert(t->listeners, GUINT_TO_POINTER(port), l);
  return TRUE;
}

static void vsock_unlisten(FerryTransport *transport, guint32 port)
{
  VsockTransport *t = (VsockTransport *)transport;
  g_hash_table_remove(t->listeners, GUINT_TO_POINTER(port));
}

typedef struct {
  FerryTransport *transport; /* a reference: done runs even if the caller lets go */
  guint32 port;
  int fd;
  GError *error;
  GSource *source; /* the connect watch, or an idle for a result known at once */
  FerryDialFunc done;
  gpointer user_data;
} Dial;

static gboolean on_dial_finished(gpointer ud)
{
  Dial *d = ud;
  g_clear_pointer(&d->source, g_source_unref);
  FerryChannel *channel = NULL;
  if (d->error == NULL)
    channel = ferry_vsock_channel_new(ferry_fd_steal(&d->fd), d->port, &d->error);
  d->done(d->transport, channel, d->error, d->user_data);
  ferry_transport_unref(d->transport);
  ferry_fd_clear(&d->fd);
  g_clear_error(&d->error);
  g_free(d);
  return G_SOURCE_REMOVE;
}

static gboolean on_connect_ready(int fd, GIOCondition cond, gpointer ud)
{
  Dial *d = ud;
  VsockTransport *t = (VsockTransport *)d->transport;
  int err = 0;
  socklen_t len = sizeof(err);
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
    err = errno;
  if (err != 0) {
    set_vsock_error(&d->error, err, "dial vsock port %u on CID %u", d->port, t->peer_cid);
    ferry_fd_clear(&d->fd);
  }
  return on_dial_finished(d);
}

static void vsock_dial(FerryTransport *transport, guint32 port, FerryDialFunc done,
                       gpointer user_data)
{
  VsockTransport *t = (VsockTransport *)transport;
  Dial *d = g_new0(Dial, 1);
  d->transport = ferry_transport_ref(transport);
  d->port = port;
  d->done = done;
  d->user_data = user_data;
  d->fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (d->fd < 0) {
    set_vsock_error(&d->error, errno, "dial vsock port %u on CID %u: create AF_VSOCK socket", port,
                    t->peer_cid);
    d->source = attach_source(g_idle_source_new(), on_dial_finished, d);
    return;
  }
  struct sockaddr_vm addr = ferry_vsock_sockaddr(t->peer_cid, port);
  if (connect(d->fd, (struct sockaddr *)&addr, sizeof(addr)) == 0) {
    d->source = attach_source(g_idle_source_new(), on_dial_finished, d);
  } else if (errno == EINPROGRESS || errno == EINTR) {
    /* Completes in the background; writable (or an error) when it is done. */
    d->source = g_unix_fd_source_new(d->fd, G_IO_OUT);
    attach_source(d->source, G_SOURCE_FUNC(on_connect_ready), d);
  } else {
    set_vsock_error(&d->error, errno, "dial vsock port %u on CID %u", port, t->peer_cid);
    ferry_fd_clear(&d->fd);
    d->source = attach_source(g_idle_source_new(), on_dial_finished, d);
  }
}

static void vsock_transport_finalize(FerryTransport *transport)
{
  VsockTransport *t = (VsockTransport *)transport;
  g_hash_table_unref(t->listeners);
}

static const FerryTransportClass vsock_transport_class = {
  .listen = vsock_listen,
  .unlisten = vsock_unlisten,
  .dial = vsock_dial,
  .finalize = vsock_transport_finalize,
};

FerryTransport *ferry_vsock_transport_new(guint32 peer_cid, GError **error)
{
  /* Find out now, not at the first dial, whether this machine has AF_VSOCK at all. */
  g_auto(FerryFd) probe = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (probe < 0) {
    set_vsock_error(error, errno, "create AF_VSOCK socket");
    return NULL;
  }
  VsockTransport *t = g_new0(VsockTransport, 1);
  ferry_transport_init(&t->base, &vsock_transport_class);
  t->peer_cid = peer_cid;
  t->listeners = g_hash_table_new_full(g_direct_hash, g_direct_equal, NULL, listener_free);
  return &t->base;
}
