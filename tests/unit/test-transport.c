/*
 * The generic channel layer (channel.c), ferry_channel_to_fd() (channel-fd.c) and the
 * AF_VSOCK transport (vsock.c).
 *
 * The generic layer and the fd adapter are driven through PipeChannel, a test double: a
 * connected in-process pair of channels built on the private vtable, with a window
 * the test can shrink to zero. It exists only here, to test the code above it.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../../lib/transport/channel-impl.h"
#include "ferry/error.h"
#include "ferry/fd.h"
#include "ferry/relay.h"
#include "ferry/transport-vsock.h"
#include "ferry/transport.h"
#include "test-util.h"

/* ----------------------------------------------------------- PipeChannel -- */

typedef struct PipeChannel PipeChannel;
struct PipeChannel {
  FerryChannel base;
  PipeChannel *peer;  /* NULL once either side closed */
  GByteArray *inbox;  /* written by the peer, not yet consumed here */
  gsize window;       /* at most this many unconsumed bytes here: the peer's write room */
  gboolean paused;    /* the handler consumed less: wait for resume_reading */
  gboolean resumed;   /* resume_reading ran during the data call */
  gboolean peer_shut; /* the peer shut its write side: eof once the inbox is consumed */
  gboolean eof_reported;
  gboolean write_shut;
  gboolean short_write;   /* a write here was short: writable when the peer consumes */
  gboolean writable_due;  /* report writable from the next dispatch */
  gboolean acked_due;     /* report acked from the next dispatch */
  gboolean reset_by_peer; /* report closed with an error from the next dispatch */
  GSource *idle;
};

static guint pipe_finalized;    /* how many PipeChannels were freed */
static guint pipe_unacked_asks; /* how often someone asked a PipeChannel for its unacked */
static guint pipe_closes;       /* how many times klass->close ran */

static gboolean pipe_dispatch(gpointer ud);

static void pipe_schedule(PipeChannel *p)
{
  if (p->idle != NULL)
    return;
  p->idle = g_idle_source_new();
  g_source_set_callback(p->idle, pipe_dispatch, p, NULL);
  g_source_attach(p->idle, NULL);
}

static gsize pipe_room(PipeChannel *p)
{
  PipeChannel *peer = p->peer;
  if (peer == NULL || p->write_shut || peer->inbox->len >= peer->window)
    return 0;
  return peer->window - peer->inbox->len;
}

/* Deliver the inbox, then eof; report writable and reset. From the main loop only, as a
 * real transport does. */
static gboolean pipe_dispatch(gpointer ud)
{
  PipeChannel *p = ud;
  FerryChannel *channel = ferry_channel_ref(&p->base);
  g_clear_pointer(&p->idle, g_source_unref);
  if (p->reset_by_peer) {
    p->reset_by_peer = FALSE;
    g_autoptr(GError) error =
        g_error_new(FERRY_ERROR, FERRY_ERROR_UNAVAILABLE, "test pipe reset by peer");
    g_byte_array_set_size(p->inbox, 0);
    ferry_channel_emit_closed(channel, error);
  }
  if (p->writable_due) {
    p->writable_due = FALSE;
    ferry_channel_emit_writable(channel);
  }
  if (p->acked_due) {
    p->acked_due = FALSE;
    ferry_channel_emit_acked(channel);
  }
  if (ferry_channel_is_open(channel) && !p->paused && p->inbox->len > 0) {
    g_autoptr(GByteArray) taken = g_steal_pointer(&p->inbox);
    p->inbox = g_byte_array_new();
    p->resumed = FALSE;
    gsize n = ferry_channel_emit_data(channel, taken->data, taken->len);
    if (n < taken->len) {
      if (p->base.handlers.data != NULL && !p->resumed)
        p->paused = TRUE;
      /* The rest goes back in front of whatever arrived meanwhile. */
      g_byte_array_prepend(p->inbox, taken->data + n, (guint)(taken->len - n));
    }
    if (n > 0 && p->peer != NULL && p->peer->short_write) {
      p->peer->short_write = FALSE;
      p->peer->writable_due = TRUE;
      pipe_schedule(p->peer);
    }
    if (n > 0 && p->peer != NULL && p->inbox->len == 0) {
      p->peer->acked_due = TRUE; /* the writer's unacked fell to 0 */
      pipe_schedule(p->peer);
    }
  }
  if (ferry_channel_is_open(channel) && p->peer_shut && !p->eof_reported && p->inbox->len == 0) {
    p->eof_reported = TRUE;
    ferry_channel_emit_eof(channel);
  }
  ferry_channel_unref(channel);
  return G_SOURCE_REMOVE;
}

static gsize pipe_write(FerryChannel *channel, const void *data, gsize len)
{
  PipeChannel *p = (PipeChannel *)channel;
  gsize n = MIN(len, pipe_room(p));
  if (n > 0) {
    g_byte_array_append(p->peer->inbox, data, (guint)n);
    pipe_schedule(p->peer);
  }
  if (n < len)
    p->short_write = TRUE;
  return n;
}

static gsize pipe_write_room(FerryChannel *channel)
{
  PipeChannel *p = (PipeChannel *)channel;
  gsize room = pipe_room(p);
  if (room == 0)
    p->short_write = TRUE; /* transport.h: a room of 0 arms writable */
  return room;
}

static gsize pipe_unacked(FerryChannel *channel)
{
  PipeChannel *p = (PipeChannel *)channel;
  pipe_unacked_asks++;
  return p->peer != NULL ? p->peer->inbox->len : 0;
}

static void pipe_resume_reading(FerryChannel *channel)
{
  PipeChannel *p = (PipeChannel *)channel;
  p->paused = FALSE;
  p->resumed = TRUE;
  pipe_schedule(p);
}

static void pipe_shutdown_write(FerryChannel *channel)
{
  PipeChannel *p = (PipeChannel *)channel;
  p->write_shut = TRUE;
  if (p->peer != NULL) {
    p->peer->peer_shut = TRUE;
    pipe_schedule(p->peer);
  }
}

static void pipe_close(FerryChannel *channel)
{
  PipeChannel *p = (PipeChannel *)channel;
  pipe_closes++;
  if (p->peer != NULL) {
    p->peer->reset_by_peer = TRUE;
    pipe_schedule(p->peer);
    p->peer->peer = NULL;
    p->peer = NULL;
  }
  g_byte_array_set_size(p->inbox, 0);
}

static void pipe_handlers_changed(FerryChannel *channel)
{
  PipeChannel *p = (PipeChannel *)channel;
  p->paused = FALSE;
  pipe_schedule(p);
}

static void pipe_finalize(FerryChannel *channel)
{
  PipeChannel *p = (PipeChannel *)channel;
  if (p->peer != NULL) /* only when a test emitted closed by hand */
    p->peer->peer = NULL;
  if (p->idle != NULL) {
    g_source_destroy(p->idle);
    g_source_unref(p->idle);
  }
  g_byte_array_unref(p->inbox);
  pipe_finalized++;
}

static const FerryChannelClass pipe_class = {
  .write = pipe_write,
  .write_room = pipe_write_room,
  .unacked = pipe_unacked,
  .resume_reading = pipe_resume_reading,
  .shutdown_write = pipe_shutdown_write,
  .close = pipe_close,
  .handlers_changed = pipe_handlers_changed,
  .finalize = pipe_finalize,
};

/* A connected pair; each side buffers at most `window` unconsumed bytes. */
static void pipe_pair(gsize window, FerryChannel **a, FerryChannel **b)
{
  PipeChannel *pa = g_new0(PipeChannel, 1), *pb = g_new0(PipeChannel, 1);
  ferry_channel_init(&pa->base, &pipe_class, 7);
  ferry_channel_init(&pb->base, &pipe_class, 7);
  pa->peer = pb;
  pb->peer = pa;
  pa->inbox = g_byte_array_new();
  pb->inbox = g_byte_array_new();
  pa->window = pb->window = window;
  *a = &pa->base;
  *b = &pb->base;
}

/* Change how much `reader` buffers; a writer that was refused hears writable. */
static void pipe_set_window(FerryChannel *reader, gsize window)
{
  PipeChannel *p = (PipeChannel *)reader;
  p->window = window;
  if (p->peer != NULL && p->peer->short_write && pipe_room(p->peer) > 0) {
    p->peer->short_write = FALSE;
    p->peer->writable_due = TRUE;
    pipe_schedule(p->peer);
  }
}

/* -------------------------------------------------------------- Recorder -- */

typedef struct {
  GByteArray *got;
  gsize take;     /* consume at most this per data call; 0 means everything */
  gboolean stall; /* consume nothing */
  guint data_calls;
  guint eofs;
  guint writables;
  guint closes;
  gboolean eof;
  gboolean closed;
  GError *close_error;
  FerryChannel *to_unref; /* dropped inside the next handler call */
  gboolean close_in_data;
  gboolean close_in_eof;
  guint after_closed; /* handler calls after closed: must stay 0 */
} Recorder;

static gsize rec_data(FerryChannel *channel, const guint8 *data, gsize len, gpointer ud)
{
  Recorder *r = ud;
  if (r->closed)
    r->after_closed++;
  r->data_calls++;
  gsize n = r->stall ? 0 : r->take == 0 ? len : MIN(len, r->take);
  g_byte_array_append(r->got, data, (guint)n);
  if (r->close_in_data)
    ferry_channel_close(channel);
  if (r->to_unref != NULL)
    g_clear_pointer(&r->to_unref, ferry_channel_unref);
  return n;
}

static void rec_eof(FerryChannel *channel, gpointer ud)
{
  Recorder *r = ud;
  if (r->closed)
    r->after_closed++;
  r->eofs++;
  r->eof = TRUE;
  if (r->close_in_eof)
    ferry_channel_close(channel);
  if (r->to_unref != NULL)
    g_clear_pointer(&r->to_unref, ferry_channel_unref);
}

static void rec_writable(FerryChannel *channel, gpointer ud)
{
  Recorder *r = ud;
  if (r->closed)
    r->after_closed++;
  r->writables++;
}

static void rec_closed(FerryChannel *channel, const GError *error, gpointer ud)
{
  Recorder *r = ud;
  g_assert_false(ferry_channel_is_open(channel));
  r->closes++;
  r->closed = TRUE;
  if (error != NULL && r->close_error == NULL)
    r->close_error = g_error_copy(error);
  if (r->to_unref != NULL)
    g_clear_pointer(&r->to_unref, ferry_channel_unref);
}

static const FerryChannelHandlers rec_handlers = {
  .data = rec_data,
  .eof = rec_eof,
  .writable = rec_writable,
  .closed = rec_closed,
};

static void rec_init(Recorder *r, FerryChannel *channel)
{
  *r = (Recorder){ .got = g_byte_array_new() };
  if (channel != NULL)
    ferry_channel_set_handlers(channel, &rec_handlers, r);
}

static void rec_clear(Recorder *r)
{
  g_assert_cmpuint(r->after_closed, ==, 0);
  g_assert_cmpuint(r->closes, <=, 1);
  g_assert_cmpuint(r->eofs, <=, 1);
  g_byte_array_unref(r->got);
  g_clear_error(&r->close_error);
  g_clear_pointer(&r->to_unref, ferry_channel_unref);
}

/* Run the loop without blocking until nothing is ready. */
static void spin(void)
{
  for (guint i = 0; i < 10000 && g_main_context_iteration(NULL, FALSE); i++)
    ;
}

/* Run the loop until r->got holds `len` bytes (or fail after 10 s). */
static void run_until_got(Recorder *r, gsize len)
{
  gint64 deadline = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;
  while (r->got->len < len) {
    g_assert_cmpint(g_get_monotonic_time(), <, deadline);
    g_main_context_iteration(NULL, FALSE);
    if (r->got->len < len)
      g_usleep(100);
  }
  g_assert_cmpuint(r->got->len, ==, len);
}

static guint8 *pattern(gsize len, guint seed)
{
  guint8 *p = g_malloc(len);
  for (gsize i = 0; i < len; i++)
    p[i] = (guint8)(i * 31 + seed + i / 251);
  return p;
}

/* ---------------------------------------------------- the generic layer -- */

static void test_channel_delivers_both_ways(void)
{
  FerryChannel *a, *b;
  pipe_pair(1024, &a, &b);
  Recorder ra, rb;
  rec_init(&ra, a);
  rec_init(&rb, b);
  g_assert_cmpuint(ferry_channel_get_port(a), ==, 7);
  g_assert_true(ferry_channel_is_open(a));
  g_assert_cmpuint(ferry_channel_write_room(a), ==, 1024);
  g_assert_cmpuint(ferry_channel_write(a, "ping", 4), ==, 4);
  g_assert_cmpuint(ferry_channel_unacked(a), ==, 4);
  g_assert_cmpuint(ferry_channel_write_room(a), ==, 1020);
  run_until_got(&rb, 4);
  g_assert_cmpuint(ferry_channel_unacked(a), ==, 0);
  g_assert_cmpuint(ferry_channel_write(b, "pong", 4), ==, 4);
  run_until_got(&ra, 4);
  g_assert_cmpmem(rb.got->data, 4, "ping", 4);
  g_assert_cmpmem(ra.got->data, 4, "pong", 4);
  ferry_channel_unref(a);
  ferry_channel_unref(b);
  rec_clear(&ra);
  rec_clear(&rb);
}

/* A short consume stops data calls until resume_reading, and nothing is lost. */
static void test_channel_short_consume_waits_for_resume(void)
{
  FerryChannel *a, *b;
  pipe_pair(1024, &a, &b);
  Recorder rb;
  rec_init(&rb, b);
  rb.take = 2;
  g_assert_cmpuint(ferry_channel_write(a, "abcdef", 6), ==, 6);
  run_until_got(&rb, 2);
  spin();
  g_assert_cmpuint(rb.data_calls, ==, 1);
  g_assert_cmpuint(ferry_channel_unacked(a), ==, 4);
  ferry_channel_resume_reading(b);
  run_until_got(&rb, 4);
  spin();
  g_assert_cmpuint(rb.data_calls, ==, 2);
  rb.take = 0;
  ferry_channel_resume_reading(b);
  run_until_got(&rb, 6);
  g_assert_cmpmem(rb.got->data, 6, "abcdef", 6);
  ferry_channel_unref(a);
  ferry_channel_unref(b);
  rec_clear(&rb);
}

/* Without a data handler bytes wait; setting handlers offers them from the main loop. */
static void test_channel_data_waits_for_handlers(void)
{
  FerryChannel *a, *b;
  pipe_pair(1024, &a, &b);
  g_assert_cmpuint(ferry_channel_write(a, "early", 5), ==, 5);
  spin();
  g_assert_cmpuint(ferry_channel_unacked(a), ==, 5);
  g_assert_cmpuint(ferry_channel_emit_data(b, (const guint8 *)"x", 1), ==, 0);
  Recorder rb;
  rec_init(&rb, b);
  g_assert_cmpuint(rb.data_calls, ==, 0); /* not synchronously */
  run_until_got(&rb, 5);
  g_assert_cmpmem(rb.got->data, 5, "early", 5);
  ferry_channel_unref(a);
  ferry_channel_unref(b);
  rec_clear(&rb);
}

static gsize claim_too_much(FerryChannel *channel, const guint8 *data, gsize len, gpointer ud)
{
  return len + 100;
}

/* A handler cannot make the implementation skip bytes it never saw. */
static void test_channel_emit_data_clamps_count(void)
{
  FerryChannel *a, *b;
  pipe_pair(1024, &a, &b);
  FerryChannelHandlers h = { .data = claim_too_much };
  ferry_channel_set_handlers(b, &h, NULL);
  g_assert_cmpuint(ferry_channel_emit_data(b, (const guint8 *)"abc", 3), ==, 3);
  ferry_channel_unref(a);
  ferry_channel_unref(b);
}

/* Closing runs closed (error NULL) once; after it nothing else runs or is accepted, and
 * the peer sees a reset. */
static void test_channel_close_reports_once(void)
{
  FerryChannel *a, *b;
  pipe_pair(1024, &a, &b);
  Recorder ra, rb;
  rec_init(&ra, a);
  rec_init(&rb, b);
  ferry_channel_close(a);
  g_assert_true(ra.closed);
  g_assert_null(ra.close_error);
  g_assert_false(ferry_channel_is_open(a));
  ferry_channel_close(a);
  g_assert_cmpuint(ra.closes, ==, 1);
  g_assert_cmpuint(ferry_channel_write(a, "x", 1), ==, 0);
  g_assert_cmpuint(ferry_channel_write_room(a), ==, 0);
  /* Emits after closed are no-ops, whatever an implementation does. */
  g_assert_cmpuint(ferry_channel_emit_data(a, (const guint8 *)"x", 1), ==, 0);
  ferry_channel_emit_eof(a);
  ferry_channel_emit_writable(a);
  ferry_channel_emit_closed(a, NULL);
  g_assert_true(test_run_until(&rb.closed, 2000));
  g_assert_error(rb.close_error, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE);
  ferry_channel_unref(a);
  ferry_channel_unref(b);
  rec_clear(&ra); /* checks after_closed == 0, closes <= 1 */
  rec_clear(&rb);
}

/* EOF comes after every byte before it was consumed, once; writing after
 * shutdown_write accepts nothing. */
static void test_channel_eof_after_data(void)
{
  FerryChannel *a, *b;
  pipe_pair(1024, &a, &b);
  Recorder rb;
  rec_init(&rb, b);
  rb.take = 3;
  g_assert_cmpuint(ferry_channel_write(a, "abcdef", 6), ==, 6);
  ferry_channel_shutdown_write(a);
  g_assert_cmpuint(ferry_channel_write(a, "x", 1), ==, 0);
  run_until_got(&rb, 3);
  spin();
  g_assert_false(rb.eof);
  ferry_channel_resume_reading(b);
  g_assert_true(test_run_until(&rb.eof, 2000));
  g_assert_cmpmem(rb.got->data, rb.got->len, "abcdef", 6);
  ferry_channel_unref(a);
  ferry_channel_unref(b);
  rec_clear(&rb);
}

/* The data handler drops the last reference: the channel goes away after the call,
 * not under it. */
static void test_channel_unref_in_data_handler(void)
{
  FerryChannel *a, *b;
  pipe_pair(1024, &a, &b);
  Recorder rb;
  rec_init(&rb, b);
  rb.to_unref = b; /* the test's only reference */
  guint finalized = pipe_finalized;
  g_assert_cmpuint(ferry_channel_write(a, "bye", 3), ==, 3);
  run_until_got(&rb, 3);
  g_assert_cmpuint(pipe_finalized, ==, finalized + 1);
  g_assert_cmpuint(rb.closes, ==, 0); /* the last unref runs no handler */
  ferry_channel_unref(a);
  rec_clear(&rb);
}

/* The data handler closes the channel: closed runs once inside it, eof never comes. */
static void test_channel_close_in_data_handler(void)
{
  FerryChannel *a, *b;
  pipe_pair(1024, &a, &b);
  Recorder rb;
  rec_init(&rb, b);
  rb.close_in_data = TRUE;
  g_assert_cmpuint(ferry_channel_write(a, "abc", 3), ==, 3);
  ferry_channel_shutdown_write(a);
  g_assert_true(test_run_until(&rb.closed, 2000));
  spin();
  g_assert_cmpuint(rb.data_calls, ==, 1);
  g_assert_false(rb.eof);
  ferry_channel_unref(b);
  ferry_channel_unref(a);
  rec_clear(&rb);
}

/* The closed handler (run by ferry_channel_close) drops the last reference. */
static void test_channel_unref_in_closed_handler(void)
{
  FerryChannel *a, *b;
  pipe_pair(1024, &a, &b);
  Recorder ra;
  rec_init(&ra, a);
  ra.to_unref = a;
  guint finalized = pipe_finalized;
  ferry_channel_close(a);
  g_assert_true(ra.closed);
  g_assert_cmpuint(pipe_finalized, ==, finalized + 1);
  ferry_channel_unref(b);
  rec_clear(&ra);
}

/* The eof handler closes the channel, then the closed handler drops it. */
static void test_channel_close_in_eof_handler(void)
{
  FerryChannel *a, *b;
  pipe_pair(1024, &a, &b);
  Recorder rb;
  rec_init(&rb, b);
  rb.close_in_eof = TRUE;
  ferry_channel_shutdown_write(a);
  g_assert_true(test_run_until(&rb.closed, 2000));
  g_assert_true(rb.eof);
  ferry_channel_unref(b);
  ferry_channel_unref(a);
  rec_clear(&rb);
}

/* Handlers that drop the last reference and then still use the channel: valid for
 * the whole call, because every emit holds a reference (the test calls the emits
 * directly, as an implementation that holds none of its own would). */
static gsize drop_then_use_data(FerryChannel *channel, const guint8 *data, gsize len, gpointer ud)
{
  ferry_channel_unref(channel);
  g_assert_cmpuint(ferry_channel_get_port(channel), ==, 7);
  return len;
}

static void drop_then_use_eof(FerryChannel *channel, gpointer ud)
{
  ferry_channel_unref(channel);
  g_assert_cmpuint(ferry_channel_get_port(channel), ==, 7);
}

static void drop_then_use_closed(FerryChannel *channel, const GError *error, gpointer ud)
{
  ferry_channel_unref(channel);
  g_assert_false(ferry_channel_is_open(channel));
}

static const FerryChannelHandlers drop_then_use = {
  .data = drop_then_use_data,
  .eof = drop_then_use_eof,
  .writable = drop_then_use_eof,
  .closed = drop_then_use_closed,
};

static void test_channel_valid_during_handler(void)
{
  for (int which = 0; which < 4; which++) {
    FerryChannel *a, *b;
    pipe_pair(1024, &a, &b);
    ferry_channel_set_handlers(a, &drop_then_use, NULL);
    guint finalized = pipe_finalized;
    if (which == 0)
      g_assert_cmpuint(ferry_channel_emit_data(a, (const guint8 *)"abc", 3), ==, 3);
    else if (which == 1)
      ferry_channel_emit_eof(a);
    else if (which == 2)
      ferry_channel_emit_writable(a);
    else
      ferry_channel_emit_closed(a, NULL);
    g_assert_cmpuint(pipe_finalized, ==, finalized + 1);
    ferry_channel_unref(b);
    spin();
  }
}

/* The last unref of an open channel aborts it through klass->close (the peer is told)
 * and runs none of its handlers. */
static void test_channel_last_unref_closes_quietly(void)
{
  FerryChannel *a, *b;
  pipe_pair(1024, &a, &b);
  Recorder ra, rb;
  rec_init(&ra, a);
  rec_init(&rb, b);
  guint closes = pipe_closes, finalized = pipe_finalized;
  ferry_channel_unref(a);
  g_assert_cmpuint(pipe_closes, ==, closes + 1);
  g_assert_cmpuint(pipe_finalized, ==, finalized + 1);
  g_assert_cmpuint(ra.closes, ==, 0);
  g_assert_true(test_run_until(&rb.closed, 2000));
  g_assert_nonnull(rb.close_error);
  ferry_channel_unref(b);
  g_assert_cmpuint(pipe_closes, ==, closes + 1); /* b was already closed */
  rec_clear(&ra);
  rec_clear(&rb);
}

/* ------------------------------------------------- the generic transport -- */

typedef struct {
  FerryTransport base;
  GHashTable *ports;
  guint *finalized;
} PipeTransport;

static gboolean pt_listen(FerryTransport *transport, guint32 port, FerryAcceptFunc accept,
                          gpointer user_data, GError **error)
{
  PipeTransport *t = (PipeTransport *)transport;
  if (!g_hash_table_add(t->ports, GUINT_TO_POINTER(port))) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_ALREADY_EXISTS, "port %u", port);
    return FALSE;
  }
  return TRUE;
}

static void pt_unlisten(FerryTransport *transport, guint32 port)
{
  g_hash_table_remove(((PipeTransport *)transport)->ports, GUINT_TO_POINTER(port));
}

static void pt_dial(FerryTransport *transport, guint32 port, FerryDialFunc done, gpointer user_data)
{
  PipeTransport *t = (PipeTransport *)transport;
  if (!g_hash_table_contains(t->ports, GUINT_TO_POINTER(port))) {
    g_autoptr(GError) error = g_error_new(FERRY_ERROR, FERRY_ERROR_UNAVAILABLE, "refused");
    done(transport, NULL, error, user_data);
    return;
  }
  FerryChannel *a, *b;
  pipe_pair(16, &a, &b);
  ferry_channel_unref(b);
  done(transport, a, NULL, user_data);
}

static void pt_finalize(FerryTransport *transport)
{
  PipeTransport *t = (PipeTransport *)transport;
  g_hash_table_unref(t->ports);
  (*t->finalized)++;
}

static const FerryTransportClass pt_class = {
  .listen = pt_listen,
  .unlisten = pt_unlisten,
  .dial = pt_dial,
  .finalize = pt_finalize,
};

static void on_pt_dialed(FerryTransport *transport, FerryChannel *channel, const GError *error,
                         gpointer ud)
{
  GError **out = ud;
  if (channel != NULL)
    ferry_channel_unref(channel);
  else
    *out = g_error_copy(error);
}

static void on_pt_accept(FerryTransport *transport, FerryChannel *channel, gpointer ud)
{
  ferry_channel_unref(channel);
}

/* Every public transport call reaches the implementation; the last unref finalizes. */
static void test_transport_dispatches(void)
{
  guint finalized = 0;
  PipeTransport *t = g_new0(PipeTransport, 1);
  ferry_transport_init(&t->base, &pt_class);
  t->ports = g_hash_table_new(NULL, NULL);
  t->finalized = &finalized;
  FerryTransport *transport = &t->base;
  g_autoptr(GError) error = NULL;
  g_assert_true(ferry_transport_listen(transport, 5, on_pt_accept, NULL, &error));
  g_assert_false(ferry_transport_listen(transport, 5, on_pt_accept, NULL, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_ALREADY_EXISTS);
  g_clear_error(&error);
  ferry_transport_dial(transport, 5, on_pt_dialed, &error);
  g_assert_no_error(error);
  ferry_transport_unlisten(transport, 5);
  ferry_transport_dial(transport, 5, on_pt_dialed, &error);
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE);
  ferry_transport_ref(transport);
  ferry_transport_unref(transport);
  g_assert_cmpuint(finalized, ==, 0);
  ferry_transport_unref(transport);
  g_assert_cmpuint(finalized, ==, 1);
}

/* ------------------------------------------------------ ferry_channel_to_fd -- */

/* Bounds for the flow-control tests: the adapter's own buffer plus what a unix
 * socketpair holds (a few hundred KiB by default). */
#define ADAPTER_SLACK (2u << 20)

typedef struct {
  FerryChannel *near; /* bridged to `fd`; the test's reference is dropped */
  FerryChannel *far;  /* the other end, driven by the test */
  Recorder rfar;
  int fd;
  guint finalized_before;
} Bridge;

static void bridge_open(Bridge *br, gsize window)
{
  br->finalized_before = pipe_finalized;
  pipe_pair(window, &br->near, &br->far);
  rec_init(&br->rfar, br->far);
  g_autoptr(GError) error = NULL;
  br->fd = ferry_channel_to_fd(br->near, &error);
  g_assert_no_error(error);
  g_assert_cmpint(br->fd, >=, 0);
  ferry_channel_unref(br->near); /* the adapter keeps its own */
  g_assert_true(ferry_fd_set_nonblocking(br->fd, TRUE, NULL));
}

static void bridge_close(Bridge *br)
{
  if (br->fd >= 0)
    close(br->fd);
  ferry_channel_unref(br->far);
  spin();
  rec_clear(&br->rfar);
}

/* Read from the (non-blocking) fd until `len` bytes or end of stream. */
static gsize read_fd(int fd, guint8 *buf, gsize len, gboolean *eof)
{
  gsize got = 0;
  gint64 deadline = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;
  *eof = FALSE;
  while (got < len) {
    g_assert_cmpint(g_get_monotonic_time(), <, deadline);
    ssize_t n = read(fd, buf + got, len - got);
    if (n == 0) {
      *eof = TRUE;
      break;
    }
    if (n > 0) {
      got += (gsize)n;
      continue;
    }
    g_assert_true(errno == EAGAIN || errno == EINTR);
    g_main_context_iteration(NULL, FALSE);
  }
  return got;
}

static void expect_fd_eof(int fd)
{
  guint8 c;
  gboolean eof;
  g_assert_cmpuint(read_fd(fd, &c, 1, &eof), ==, 0);
  g_assert_true(eof);
}

static void test_fd_bytes_both_ways(void)
{
  Bridge br;
  bridge_open(&br, 1u << 20);
  gsize total = 3u << 20;
  g_autofree guint8 *out = pattern(total, 1);
  g_autofree guint8 *in = pattern(total, 2);
  g_autofree guint8 *back = g_malloc(total);
  /* Both directions at once: the fd's writes interleave with the far side's. */
  gsize wrote = 0, sent = 0, got = 0;
  gint64 deadline = g_get_monotonic_time() + 20 * G_USEC_PER_SEC;
  while (wrote < total || sent < total || got < total || br.rfar.got->len < total) {
    g_assert_cmpint(g_get_monotonic_time(), <, deadline);
    if (wrote < total) {
      ssize_t n = write(br.fd, out + wrote, MIN(total - wrote, 100000));
      if (n > 0)
        wrote += (gsize)n;
    }
    if (sent < total)
      sent += ferry_channel_write(br.far, in + sent, total - sent);
    ssize_t n = read(br.fd, back + got, total - got);
    if (n > 0)
      got += (gsize)n;
    g_main_context_iteration(NULL, FALSE);
  }
  g_assert_cmpmem(br.rfar.got->data, br.rfar.got->len, out, total);
  g_assert_cmpmem(back, total, in, total);
  bridge_close(&br);
}

/* Bytes waiting to be read on fd. */
static int queued_in(int fd)
{
  int n = 0;
  g_assert_cmpint(ioctl(fd, FIONREAD, &n), ==, 0);
  return n;
}

/* Run the loop until it is idle and the bytes queued for fd stop growing: the far end
 * of the socket is full and nothing on the loop can add to it. */
static void wait_socket_full(int fd)
{
  int before = -1;
  gint64 deadline = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;
  while (queued_in(fd) != before) {
    g_assert_cmpint(g_get_monotonic_time(), <, deadline);
    before = queued_in(fd);
    spin();
  }
}

/* A local reader that does not read: the channel's data stays in the channel,
 * unconsumed, beyond a bound; reading lets it all through in order. */
static void test_fd_slow_reader_leaves_data_in_channel(void)
{
  Bridge br;
  bridge_open(&br, 64u << 20);
  gsize total = 16u << 20;
  g_autofree guint8 *data = pattern(total, 3);
  g_assert_cmpuint(ferry_channel_write(br.far, data, total), ==, total);
  /* Until the adapter can do nothing more: the loop idle and the socket full (what it
   * could take is in; what follows waits for the reader). */
  wait_socket_full(br.fd);
  gsize unconsumed = ferry_channel_unacked(br.far);
  g_assert_cmpuint(unconsumed, >, total - ADAPTER_SLACK);
  g_autofree guint8 *back = g_malloc(total);
  gboolean eof;
  g_assert_cmpuint(read_fd(br.fd, back, total, &eof), ==, total);
  g_assert_cmpmem(back, total, data, total);
  g_assert_cmpuint(ferry_channel_unacked(br.far), ==, 0);
  bridge_close(&br);
}

/* Write to the fd until the socket refuses; how much it took. */
static gsize fill_fd(int fd, guint8 seed, gsize *offset)
{
  guint8 buf[4096];
  gsize total = 0;
  for (;;) {
    for (gsize i = 0; i < sizeof(buf); i++)
      buf[i] = (guint8)(*offset + i + seed);
    ssize_t n = write(fd, buf, sizeof(buf));
    if (n < 0) {
      g_assert_cmpint(errno, ==, EAGAIN);
      return total;
    }
    total += (gsize)n;
    *offset += (gsize)n;
    g_assert_cmpuint(total, <, 64u << 20); /* the adapter never stopped reading */
  }
}

/* A channel that accepts nothing: the adapter stops reading the socket (so the local
 * writer blocks), and starts again once the channel has room. */
static void test_fd_full_channel_stops_socket_reads(void)
{
  Bridge br;
  bridge_open(&br, 0); /* the far side buffers nothing: near's writes get 0 */
  gsize offset = 0;
  gsize first = fill_fd(br.fd, 5, &offset);
  /* Fill again each time the loop went idle, until the socket takes nothing more: the
   * adapter stopped reading (fill_fd fails the test if it never does). */
  for (gsize more = 1; more > 0;) {
    spin();
    more = fill_fd(br.fd, 5, &offset);
    first += more;
  }
  g_assert_cmpuint(first, <, ADAPTER_SLACK);
  spin();
  g_assert_cmpuint(fill_fd(br.fd, 5, &offset), ==, 0); /* still nobody reading */
  g_assert_cmpuint(br.rfar.got->len, ==, 0);
  pipe_set_window(br.far, 1u << 20);
  run_until_got(&br.rfar, offset);
  /* Reading resumed: more goes through. */
  gsize before = offset;
  fill_fd(br.fd, 5, &offset);
  g_assert_cmpuint(offset, >, before);
  run_until_got(&br.rfar, offset);
  for (gsize i = 0; i < offset; i++)
    g_assert_cmpuint(br.rfar.got->data[i], ==, (guint8)(i + 5));
  bridge_close(&br);
}

/* Local EOF is the channel's shutdown_write; the other direction keeps working. */
static void test_fd_local_eof_shuts_channel(void)
{
  Bridge br;
  bridge_open(&br, 1u << 20);
  g_assert_cmpint(write(br.fd, "request", 7), ==, 7);
  g_assert_cmpint(shutdown(br.fd, SHUT_WR), ==, 0);
  g_assert_true(test_run_until(&br.rfar.eof, 2000));
  g_assert_cmpmem(br.rfar.got->data, br.rfar.got->len, "request", 7);
  g_assert_cmpuint(ferry_channel_write(br.far, "response", 8), ==, 8);
  guint8 buf[8];
  gboolean eof;
  g_assert_cmpuint(read_fd(br.fd, buf, 8, &eof), ==, 8);
  g_assert_cmpmem(buf, 8, "response", 8);
  ferry_channel_shutdown_write(br.far);
  expect_fd_eof(br.fd);
  g_assert_false(br.rfar.closed);
  bridge_close(&br);
}

/* Channel EOF shuts the socket's write side after the pending bytes; the socket still
 * carries the other direction. */
static void test_fd_channel_eof_shuts_socket(void)
{
  Bridge br;
  bridge_open(&br, 8u << 20);
  gsize total = 2u << 20; /* more than the socket takes at once */
  g_autofree guint8 *data = pattern(total, 7);
  g_assert_cmpuint(ferry_channel_write(br.far, data, total), ==, total);
  ferry_channel_shutdown_write(br.far);
  g_autofree guint8 *back = g_malloc(total + 1);
  gboolean eof;
  g_assert_cmpuint(read_fd(br.fd, back, total + 1, &eof), ==, total);
  g_assert_true(eof);
  g_assert_cmpmem(back, total, data, total);
  g_assert_cmpint(write(br.fd, "more", 4), ==, 4);
  run_until_got(&br.rfar, 4);
  g_assert_false(br.rfar.closed);
  bridge_close(&br);
}

/* Both directions ended and consumed: the adapter lets go of the channel. While the far
 * side has not consumed the last bytes, it keeps it (the last unref would abort). */
static void test_fd_adapter_lingers_without_polling(void)
{
  Bridge br;
  bridge_open(&br, 1u << 20);
  br.rfar.stall = TRUE;
  g_assert_cmpint(write(br.fd, "last words", 10), ==, 10);
  g_assert_cmpint(shutdown(br.fd, SHUT_WR), ==, 0);
  ferry_channel_shutdown_write(br.far);
  expect_fd_eof(br.fd);
  /* The adapter lingers and keeps the channel, waiting for the channel's acked event:
   * over a quiet while it does not ask again (no polling timer). */
  spin();
  guint asks = pipe_unacked_asks;
  gboolean never = FALSE;
  g_assert_false(test_run_until(&never, 200));
  g_assert_cmpuint(pipe_unacked_asks, ==, asks);
  g_assert_cmpuint(pipe_finalized, ==, br.finalized_before); /* lingering */
  g_assert_false(br.rfar.closed);
  br.rfar.stall = FALSE;
  ferry_channel_resume_reading(br.far);
  gint64 deadline = g_get_monotonic_time() + 5 * G_USEC_PER_SEC;
  while (pipe_finalized == br.finalized_before) {
    g_assert_cmpint(g_get_monotonic_time(), <, deadline);
    g_main_context_iteration(NULL, TRUE);
  }
  g_assert_cmpmem(br.rfar.got->data, br.rfar.got->len, "last words", 10);
  g_assert_true(br.rfar.eof);
  bridge_close(&br);
}

/* The channel closing closes the socket, after the bytes already taken from it. */
static void test_fd_channel_close_closes_socket(void)
{
  Bridge br;
  bridge_open(&br, 1u << 20);
  g_assert_cmpuint(ferry_channel_write(br.far, "tail", 4), ==, 4);
  /* Let the adapter take the bytes before the reset. */
  gint64 deadline = g_get_monotonic_time() + 5 * G_USEC_PER_SEC;
  while (ferry_channel_unacked(br.far) > 0) {
    g_assert_cmpint(g_get_monotonic_time(), <, deadline);
    g_main_context_iteration(NULL, FALSE);
  }
  ferry_channel_close(br.far);
  guint8 buf[5];
  gboolean eof;
  g_assert_cmpuint(read_fd(br.fd, buf, 5, &eof), ==, 4);
  g_assert_true(eof);
  g_assert_cmpmem(buf, 4, "tail", 4);
  g_assert_cmpint(send(br.fd, "x", 1, MSG_NOSIGNAL), ==, -1);
  g_assert_cmpint(errno, ==, EPIPE);
  spin();
  g_assert_cmpuint(pipe_finalized, ==, br.finalized_before + 1); /* the adapter let go */
  bridge_close(&br);
}

/* The local end going away closes the channel (the first write to it fails), also
 * while someone else holds the channel. */
static void test_fd_socket_close_closes_channel(void)
{
  Bridge br;
  bridge_open(&br, 1u << 20);
  FerryChannel *near = ferry_channel_ref(br.near); /* alive: the adapter holds it */
  close(br.fd);
  br.fd = -1;
  g_assert_true(test_run_until(&br.rfar.eof, 2000)); /* a close reads as EOF first */
  g_assert_false(br.rfar.closed);
  g_assert_cmpuint(ferry_channel_write(br.far, "anyone?", 7), ==, 7);
  g_assert_true(test_run_until(&br.rfar.closed, 2000));
  g_assert_nonnull(br.rfar.close_error);
  g_assert_false(ferry_channel_is_open(near));
  spin();
  g_assert_cmpuint(pipe_finalized, ==, br.finalized_before); /* the adapter let go */
  ferry_channel_unref(near);
  g_assert_cmpuint(pipe_finalized, ==, br.finalized_before + 1);
  bridge_close(&br);
}

static void test_fd_refuses_closed_channel(void)
{
  FerryChannel *a, *b;
  pipe_pair(16, &a, &b);
  ferry_channel_close(a);
  g_autoptr(GError) error = NULL;
  g_assert_cmpint(ferry_channel_to_fd(a, &error), ==, -1);
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE);
  ferry_channel_unref(a);
  ferry_channel_unref(b);
  spin();
}

/* ----------------------------------------------------------- vsock: pure -- */

static void test_vsock_parses_addresses(void)
{
  g_autoptr(GError) error = NULL;
  guint32 cid = 0, port = 0;
  g_assert_true(ferry_vsock_parse_address("vsock://3:1024", &cid, &port, &error));
  g_assert_no_error(error);
  g_assert_cmpuint(cid, ==, 3);
  g_assert_cmpuint(port, ==, 1024);
  g_assert_true(ferry_vsock_parse_address("vsock:5000", &cid, &port, &error));
  g_assert_cmpuint(cid, ==, VMADDR_CID_HOST);
  g_assert_cmpuint(port, ==, 5000);
  g_assert_true(ferry_vsock_parse_address("vsock://4294967294:4294967294", &cid, &port, &error));
  g_assert_cmpuint(cid, ==, 4294967294u);
  g_assert_cmpuint(port, ==, 4294967294u);
  g_assert_true(ferry_vsock_parse_address("vsock://0:0", &cid, &port, &error));
  g_assert_cmpuint(cid, ==, 0);
  g_assert_cmpuint(port, ==, 0);
}

static void test_vsock_rejects_bad_addresses(void)
{
  static const char *const bad[] = {
    "",
    "vsock",
    "vsock:",
    "vsock://",
    "vsock://3",
    "vsock://3:",
    "vsock://:5",
    "vsock://x:5",
    "vsock://3:5x",
    "vsock://3:5:6",
    "vsock://-1:5",
    "vsock://+3:5",
    "vsock:// 3:5",
    "vsock://3: 5",
    "vsock://3:5 ",
    "vsock://0x3:5",
    "vsock:-5",
    "vsock:4294967296",
    "vsock://4294967296:1",
    "vsock://99999999999999999999:1",
    "vsock:4294967295",     /* VMADDR_PORT_ANY */
    "vsock://4294967295:1", /* VMADDR_CID_ANY */
    "tcp://3:5",
    "VSOCK:5",
    "unix:/run/x.sock",
  };
  for (gsize i = 0; i < G_N_ELEMENTS(bad); i++) {
    g_autoptr(GError) error = NULL;
    guint32 cid = 77, port = 88;
    g_assert_false(ferry_vsock_parse_address(bad[i], &cid, &port, &error));
    g_assert_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
    g_assert_nonnull(strstr(error->message, bad[i]));
    g_assert_cmpuint(cid, ==, 77);
    g_assert_cmpuint(port, ==, 88);
  }
}

static void test_vsock_builds_sockaddr(void)
{
  struct sockaddr_vm addr = ferry_vsock_sockaddr(3, 1024);
  g_assert_cmpint(addr.svm_family, ==, AF_VSOCK);
  g_assert_cmpuint(addr.svm_cid, ==, 3);
  g_assert_cmpuint(addr.svm_port, ==, 1024);
  g_assert_cmpuint(addr.svm_reserved1, ==, 0);
  for (gsize i = 0; i < sizeof(addr.svm_zero); i++)
    g_assert_cmpuint(addr.svm_zero[i], ==, 0);
  struct sockaddr_vm expect;
  memset(&expect, 0, sizeof(expect));
  expect.svm_family = AF_VSOCK;
  expect.svm_cid = 3;
  expect.svm_port = 1024;
  g_assert_cmpmem(&addr, sizeof(addr), &expect, sizeof(expect));
}

/* --------------------------------------- vsock channels over a socketpair -- */

/* A vsock channel around one end of a socketpair; the test holds the other end. */
static FerryChannel *vsock_pair(int *peer)
{
  int sp[2];
  g_autoptr(GError) error = NULL;
  g_assert_true(ferry_socketpair(sp, FALSE, &error));
  FerryChannel *channel = ferry_vsock_channel_new(sp[0], 99, &error);
  g_assert_no_error(error);
  g_assert_true(ferry_fd_set_nonblocking(sp[1], TRUE, NULL));
  *peer = sp[1];
  return channel;
}

static void test_vsock_channel_both_ways(void)
{
  int peer;
  FerryChannel *ch = vsock_pair(&peer);
  Recorder r;
  rec_init(&r, ch);
  g_assert_cmpuint(ferry_channel_get_port(ch), ==, 99);
  g_assert_cmpint(write(peer, "hello", 5), ==, 5);
  run_until_got(&r, 5);
  g_assert_cmpmem(r.got->data, 5, "hello", 5);
  g_assert_cmpuint(ferry_channel_write(ch, "world", 5), ==, 5);
  guint8 buf[5];
  gboolean eof;
  g_assert_cmpuint(read_fd(peer, buf, 5, &eof), ==, 5);
  g_assert_cmpmem(buf, 5, "world", 5);
  ferry_channel_unref(ch);
  expect_fd_eof(peer); /* the last unref closed the socket */
  close(peer);
  g_assert_cmpuint(r.closes, ==, 0);
  rec_clear(&r);
}

/* Bytes that arrive before the handlers are set wait; a short consume holds the rest
 * and stops reading until resume_reading. */
static void test_vsock_channel_consume_and_resume(void)
{
  int peer;
  FerryChannel *ch = vsock_pair(&peer);
  g_assert_cmpint(write(peer, "0123456789", 10), ==, 10);
  spin();
  Recorder r;
  rec_init(&r, ch);
  r.take = 4;
  run_until_got(&r, 4);
  g_assert_cmpint(write(peer, "abc", 3), ==, 3);
  spin();
  g_assert_cmpuint(r.data_calls, ==, 1);
  r.take = 0;
  ferry_channel_resume_reading(ch);
  run_until_got(&r, 13);
  g_assert_cmpmem(r.got->data, 13, "0123456789abc", 13);
  ferry_channel_unref(ch);
  close(peer);
  rec_clear(&r);
}

/* A handler that takes nothing: the channel holds at most one read, and the peer's
 * further bytes stay in the kernel (its writes block) until resume_reading. */
static void test_vsock_channel_stalled_handler_stops_reading(void)
{
  int peer;
  FerryChannel *ch = vsock_pair(&peer);
  Recorder r;
  rec_init(&r, ch);
  r.stall = TRUE;
  gsize offset = 0;
  gsize first = fill_fd(peer, 6, &offset);
  for (gsize more = 1; more > 0;) { /* until the loop is idle and the socket full */
    spin();
    more = fill_fd(peer, 6, &offset);
    first += more;
  }
  g_assert_cmpuint(first, <, ADAPTER_SLACK);
  g_assert_cmpuint(fill_fd(peer, 6, &offset), ==, 0);
  g_assert_cmpuint(r.data_calls, ==, 1);
  r.stall = FALSE;
  ferry_channel_resume_reading(ch);
  run_until_got(&r, offset);
  for (gsize i = 0; i < offset; i++)
    g_assert_cmpuint(r.got->data[i], ==, (guint8)(i + 6));
  ferry_channel_unref(ch);
  close(peer);
  rec_clear(&r);
}

/* A peer that does not read: the send buffer fills, write returns short, unacked counts
 * what waits; when the peer reads, writable comes and unacked drops to 0. */
static void test_vsock_channel_send_buffer_bounds_writes(void)
{
  int peer;
  FerryChannel *ch = vsock_pair(&peer);
  Recorder r;
  rec_init(&r, ch);
  g_autofree guint8 *big = pattern(16u << 20, 9);
  gsize accepted = 0, n;
  while ((n = ferry_channel_write(ch, big + accepted, (16u << 20) - accepted)) > 0)
    accepted += n; /* the kernel takes what it can at each write, the rest waits */
  g_assert_cmpuint(accepted, <, 16u << 20);
  g_assert_cmpuint(ferry_channel_write_room(ch), ==, 0);
  g_assert_cmpuint(ferry_channel_unacked(ch), ==, FERRY_VSOCK_SEND_BUFFER);
  g_assert_cmpuint(ferry_channel_write(ch, big, 1), ==, 0);
  g_autofree guint8 *back = g_malloc(accepted);
  gboolean eof;
  g_assert_cmpuint(read_fd(peer, back, accepted, &eof), ==, accepted);
  g_assert_cmpmem(back, accepted, big, accepted);
  gint64 deadline = g_get_monotonic_time() + 5 * G_USEC_PER_SEC;
  while (r.writables == 0) {
    g_assert_cmpint(g_get_monotonic_time(), <, deadline);
    g_main_context_iteration(NULL, FALSE);
  }
  g_assert_cmpuint(ferry_channel_unacked(ch), ==, 0);
  g_assert_cmpuint(ferry_channel_write_room(ch), ==, FERRY_VSOCK_SEND_BUFFER);
  ferry_channel_unref(ch);
  close(peer);
  rec_clear(&r);
}

/* The peer's EOF comes after all its bytes were consumed; shutdown_write reaches the
 * peer after ours. */
static void test_vsock_channel_eof_both_ways(void)
{
  int peer;
  FerryChannel *ch = vsock_pair(&peer);
  Recorder r;
  rec_init(&r, ch);
  r.take = 1;
  g_assert_cmpint(write(peer, "xyz", 3), ==, 3);
  g_assert_cmpint(shutdown(peer, SHUT_WR), ==, 0);
  run_until_got(&r, 1);
  spin();
  g_assert_false(r.eof);
  r.take = 0;
  ferry_channel_resume_reading(ch);
  g_assert_true(test_run_until(&r.eof, 2000));
  g_assert_cmpmem(r.got->data, r.got->len, "xyz", 3);
  g_assert_cmpuint(ferry_channel_write(ch, "done", 4), ==, 4);
  ferry_channel_shutdown_write(ch);
  g_assert_cmpuint(ferry_channel_write(ch, "x", 1), ==, 0);
  guint8 buf[5];
  gboolean eof;
  g_assert_cmpuint(read_fd(peer, buf, 5, &eof), ==, 4);
  g_assert_true(eof);
  g_assert_true(ferry_channel_is_open(ch));
  ferry_channel_unref(ch);
  close(peer);
  rec_clear(&r);
}

/* Closing runs closed (NULL) and closes the socket. */
static void test_vsock_channel_close(void)
{
  int peer;
  FerryChannel *ch = vsock_pair(&peer);
  Recorder r;
  rec_init(&r, ch);
  ferry_channel_close(ch);
  g_assert_true(r.closed);
  g_assert_null(r.close_error);
  expect_fd_eof(peer);
  spin();
  ferry_channel_unref(ch);
  close(peer);
  rec_clear(&r);
}

/* The peer going away: our next write fails and closed reports why, from the main
 * loop, not from inside the write. */
static void test_vsock_channel_peer_gone(void)
{
  int peer;
  FerryChannel *ch = vsock_pair(&peer);
  Recorder r;
  rec_init(&r, ch);
  close(peer);
  g_assert_true(test_run_until(&r.eof, 2000));
  ferry_channel_write(ch, "x", 1);
  g_assert_false(r.closed);
  g_assert_true(test_run_until(&r.closed, 2000));
  g_assert_error(r.close_error, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE);
  ferry_channel_unref(ch);
  rec_clear(&r);
}

/* The data handler drops the last reference. */
static void test_vsock_channel_unref_in_data_handler(void)
{
  int peer;
  FerryChannel *ch = vsock_pair(&peer);
  Recorder r;
  rec_init(&r, ch);
  r.to_unref = ch;
  /* More than one read's worth: the stream would read on after the handler. */
  gsize total = 256u * 1024;
  g_autofree guint8 *data = pattern(total, 4);
  gsize wrote = 0;
  while (wrote < total) {
    ssize_t n = write(peer, data + wrote, total - wrote);
    if (n <= 0)
      break;
    wrote += (gsize)n;
  }
  g_assert_cmpuint(wrote, >, 64u * 1024);
  gint64 deadline = g_get_monotonic_time() + 5 * G_USEC_PER_SEC;
  while (r.data_calls == 0) {
    g_assert_cmpint(g_get_monotonic_time(), <, deadline);
    g_main_context_iteration(NULL, FALSE);
  }
  spin();
  g_assert_cmpuint(r.data_calls, ==, 1);
  /* The handler's unref closed the socket, with unread bytes in it: a reset. */
  guint8 c;
  gint64 until = g_get_monotonic_time() + 5 * G_USEC_PER_SEC;
  ssize_t n;
  while ((n = read(peer, &c, 1)) < 0 && errno == EAGAIN) {
    g_assert_cmpint(g_get_monotonic_time(), <, until);
    g_main_context_iteration(NULL, FALSE);
  }
  g_assert_true(n == 0 || errno == ECONNRESET);
  close(peer);
  rec_clear(&r);
}

/* A vsock channel behind the fd adapter: the path a ttrpc or bridge connection takes. */
static void test_vsock_channel_through_fd(void)
{
  int peer;
  FerryChannel *ch = vsock_pair(&peer);
  g_autoptr(GError) error = NULL;
  int fd = ferry_channel_to_fd(ch, &error);
  g_assert_no_error(error);
  ferry_channel_unref(ch);
  g_assert_true(ferry_fd_set_nonblocking(fd, TRUE, NULL));
  g_assert_cmpint(write(fd, "up", 2), ==, 2);
  g_assert_cmpint(shutdown(fd, SHUT_WR), ==, 0);
  guint8 buf[4];
  gboolean eof;
  g_assert_cmpuint(read_fd(peer, buf, 3, &eof), ==, 2);
  g_assert_true(eof);
  g_assert_cmpmem(buf, 2, "up", 2);
  g_assert_cmpint(write(peer, "down", 4), ==, 4);
  g_assert_cmpint(shutdown(peer, SHUT_WR), ==, 0);
  g_assert_cmpuint(read_fd(fd, buf, 4, &eof), ==, 4);
  g_assert_cmpmem(buf, 4, "down", 4);
  expect_fd_eof(fd);
  close(fd);
  close(peer);
  spin();
}

/* ------------------------------------------------------ vsock: transport -- */

static char *vsock_unavailable;    /* why AF_VSOCK sockets cannot be made here, or NULL */
static char *loopback_unavailable; /* why a CID 1 connection fails here, or NULL */

/* A port nobody on this machine holds: bind it, then let it go. */
static guint32 free_vsock_port(void)
{
  for (guint32 port = 40000 + (guint32)g_random_int_range(0, 20000);; port++) {
    g_auto(FerryFd) fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
    g_assert_cmpint(fd, >=, 0);
    struct sockaddr_vm addr = ferry_vsock_sockaddr(VMADDR_CID_ANY, port);
    if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0)
      return port;
  }
}

/* Can this machine make AF_VSOCK sockets, and does CID 1 (vsock_loopback) answer? */
static void probe_vsock(void)
{
  g_auto(FerryFd) fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    vsock_unavailable = g_strdup_printf("cannot create an AF_VSOCK socket: %s", g_strerror(errno));
    loopback_unavailable = g_strdup(vsock_unavailable);
    return;
  }
  guint32 port = free_vsock_port();
  g_auto(FerryFd) lfd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_vm laddr = ferry_vsock_sockaddr(VMADDR_CID_ANY, port);
  g_auto(FerryFd) cfd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  struct sockaddr_vm caddr = ferry_vsock_sockaddr(VMADDR_CID_LOCAL, port);
  if (bind(lfd, (struct sockaddr *)&laddr, sizeof(laddr)) < 0 || listen(lfd, 1) < 0) {
    loopback_unavailable = g_strdup_printf("listen on vsock port %u: %s", port, g_strerror(errno));
    return;
  }
  int err = 0;
  if (connect(cfd, (struct sockaddr *)&caddr, sizeof(caddr)) < 0) {
    err = errno;
    if (err == EINPROGRESS) {
      struct pollfd pfd = { .fd = cfd, .events = POLLOUT };
      if (poll(&pfd, 1, 1000) == 1) {
        socklen_t len = sizeof(err);
        getsockopt(cfd, SOL_SOCKET, SO_ERROR, &err, &len);
      } else {
        err = ETIMEDOUT;
      }
    }
  }
  if (err != 0)
    loopback_unavailable = g_strdup_printf(
        "no vsock loopback here (connect to CID 1 (VMADDR_CID_LOCAL) port %u: %s); the "
        "vsock_loopback module runs these live",
        port, g_strerror(err));
}

static gboolean skip_without_vsock(void)
{
  if (vsock_unavailable == NULL)
    return FALSE;
  g_test_skip(vsock_unavailable);
  return TRUE;
}

/* When sockets cannot be made (here: out of fds), the transport says so. */
static void test_vsock_socket_failure_is_an_error(void)
{
  struct rlimit saved;
  g_assert_cmpint(getrlimit(RLIMIT_NOFILE, &saved), ==, 0);
  int lowest = dup(0);
  g_assert_cmpint(lowest, >=, 0);
  close(lowest);
  struct rlimit tight = { .rlim_cur = (rlim_t)lowest, .rlim_max = saved.rlim_max };
  g_assert_cmpint(setrlimit(RLIMIT_NOFILE, &tight), ==, 0);
  g_autoptr(GError) error = NULL;
  FerryTransport *t = ferry_vsock_transport_new(VMADDR_CID_HOST, &error);
  g_assert_cmpint(setrlimit(RLIMIT_NOFILE, &saved), ==, 0);
  g_assert_null(t);
  g_assert_nonnull(error);
  g_assert_true(g_str_has_prefix(error->message, "create AF_VSOCK socket: "));
  if (vsock_unavailable == NULL)
    g_assert_error(error, FERRY_ERROR, FERRY_ERROR_RESOURCE_EXHAUSTED);
}

static void test_vsock_listen_twice_already_exists(void)
{
  if (skip_without_vsock())
    return;
  g_autoptr(GError) error = NULL;
  g_autoptr(FerryTransport) t = ferry_vsock_transport_new(VMADDR_CID_LOCAL, &error);
  g_assert_no_error(error);
  guint32 port = free_vsock_port();
  g_assert_true(ferry_transport_listen(t, port, on_pt_accept, NULL, &error));
  g_assert_no_error(error);
  g_assert_false(ferry_transport_listen(t, port, on_pt_accept, NULL, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_ALREADY_EXISTS);
  g_clear_error(&error);
  ferry_transport_unlisten(t, port);
  g_assert_true(ferry_transport_listen(t, port, on_pt_accept, NULL, &error));
  g_assert_no_error(error);
}

static void test_vsock_listen_on_taken_port_fails(void)
{
  if (skip_without_vsock())
    return;
  guint32 port = free_vsock_port();
  g_auto(FerryFd) holder = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_vm addr = ferry_vsock_sockaddr(VMADDR_CID_ANY, port);
  g_assert_cmpint(bind(holder, (struct sockaddr *)&addr, sizeof(addr)), ==, 0);
  g_autoptr(GError) error = NULL;
  g_autoptr(FerryTransport) t = ferry_vsock_transport_new(VMADDR_CID_LOCAL, &error);
  g_assert_no_error(error);
  g_assert_false(ferry_transport_listen(t, port, on_pt_accept, NULL, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_ALREADY_EXISTS);
  g_autofree char *prefix = g_strdup_printf("listen on vsock port %u: bind: ", port);
  g_assert_true(g_str_has_prefix(error->message, prefix));
}

typedef struct {
  gboolean done;
  FerryChannel *channel;
  GError *error;
} DialResult;

static void on_dialed(FerryTransport *transport, FerryChannel *channel, const GError *error,
                      gpointer ud)
{
  DialResult *r = ud;
  g_assert_false(r->done);
  r->done = TRUE;
  r->channel = channel;
  r->error = error != NULL ? g_error_copy(error) : NULL;
}

/* A dial nobody answers fails with a GError, from the main loop; the transport may be
 * dropped while the dial runs. */
static void test_vsock_dial_unanswered_fails(void)
{
  if (skip_without_vsock())
    return;
  g_autoptr(GError) error = NULL;
  FerryTransport *t = ferry_vsock_transport_new(VMADDR_CID_LOCAL, &error);
  g_assert_no_error(error);
  guint32 port = free_vsock_port(); /* nobody listens on it */
  DialResult r = { 0 };
  ferry_transport_dial(t, port, on_dialed, &r);
  ferry_transport_unref(t);
  g_assert_false(r.done);
  g_assert_true(test_run_until(&r.done, 10000));
  g_assert_null(r.channel);
  g_assert_nonnull(r.error);
  g_test_message("dial CID 1 port %u: %s", port, r.error->message);
  g_assert_true(r.error->code == FERRY_ERROR_UNAVAILABLE ||
                r.error->code == FERRY_ERROR_DEADLINE_EXCEEDED);
  g_autofree char *prefix = g_strdup_printf("dial vsock port %u on CID 1: ", port);
  g_assert_true(g_str_has_prefix(r.error->message, prefix));
  g_clear_error(&r.error);
}

/* A dial to this machine's own CID (no such route without vsock_loopback, refused
 * with it) is UNAVAILABLE. */
static void test_vsock_dial_own_cid_unavailable(void)
{
  if (skip_without_vsock())
    return;
  g_auto(FerryFd) dev = open("/dev/vsock", O_RDONLY | O_CLOEXEC);
  guint32 own = 0;
  if (dev < 0 || ioctl(dev, IOCTL_VM_SOCKETS_GET_LOCAL_CID, &own) < 0) {
    g_autofree char *why = g_strdup_printf("no local CID from /dev/vsock: %s", g_strerror(errno));
    g_test_skip(why);
    return;
  }
  g_autoptr(GError) error = NULL;
  FerryTransport *t = ferry_vsock_transport_new(own, &error);
  g_assert_no_error(error);
  DialResult r = { 0 };
  ferry_transport_dial(t, free_vsock_port(), on_dialed, &r);
  ferry_transport_unref(t);
  g_assert_true(test_run_until(&r.done, 10000));
  g_assert_null(r.channel);
  g_test_message("dial own CID %u: %s", own, r.error->message);
  g_assert_error(r.error, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE);
  g_clear_error(&r.error);
}

typedef struct {
  FerryChannel *accepted;
} AcceptResult;

static void on_accepted(FerryTransport *transport, FerryChannel *channel, gpointer ud)
{
  AcceptResult *r = ud;
  g_assert_null(r->accepted);
  r->accepted = channel;
}

/* Live over vsock_loopback: listen, dial, bytes and EOF both ways, close. */
static void test_vsock_live_loopback(void)
{
  if (loopback_unavailable != NULL) {
    g_test_skip(loopback_unavailable);
    return;
  }
  g_autoptr(GError) error = NULL;
  g_autoptr(FerryTransport) t = ferry_vsock_transport_new(VMADDR_CID_LOCAL, &error);
  g_assert_no_error(error);
  guint32 port = free_vsock_port();
  AcceptResult ar = { 0 };
  g_assert_true(ferry_transport_listen(t, port, on_accepted, &ar, &error));
  DialResult dr = { 0 };
  ferry_transport_dial(t, port, on_dialed, &dr);
  g_assert_true(test_run_until(&dr.done, 5000));
  g_assert_no_error(dr.error);
  gint64 deadline = g_get_monotonic_time() + 5 * G_USEC_PER_SEC;
  while (ar.accepted == NULL) {
    g_assert_cmpint(g_get_monotonic_time(), <, deadline);
    g_main_context_iteration(NULL, FALSE);
  }
  g_assert_cmpuint(ferry_channel_get_port(dr.channel), ==, port);
  g_assert_cmpuint(ferry_channel_get_port(ar.accepted), ==, port);
  Recorder rd, ra;
  rec_init(&rd, dr.channel);
  rec_init(&ra, ar.accepted);
  gsize total = 1u << 20;
  g_autofree guint8 *data = pattern(total, 11);
  gsize sent = 0;
  deadline = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;
  while (sent < total) {
    g_assert_cmpint(g_get_monotonic_time(), <, deadline);
    sent += ferry_channel_write(dr.channel, data + sent, total - sent);
    g_main_context_iteration(NULL, FALSE);
  }
  ferry_channel_shutdown_write(dr.channel);
  run_until_got(&ra, total);
  g_assert_cmpmem(ra.got->data, total, data, total);
  g_assert_true(test_run_until(&ra.eof, 5000));
  g_assert_cmpuint(ferry_channel_write(ar.accepted, "back", 4), ==, 4);
  ferry_channel_shutdown_write(ar.accepted);
  run_until_got(&rd, 4);
  g_assert_true(test_run_until(&rd.eof, 5000));
  ferry_channel_close(dr.channel);
  g_assert_true(rd.closed);
  ferry_channel_unref(dr.channel);
  ferry_channel_unref(ar.accepted);
  ferry_transport_unlisten(t, port);
  spin();
  rec_clear(&rd);
  rec_clear(&ra);
}

/* ----------------------------------------------------------- FerryRelay -- */

/* What a relay reported, in order. */
typedef struct {
  GString *order; /* "r" read_done, "w" write_done, "f" finished */
  GError *read_error, *write_error;
  gboolean finished;
  gboolean in_call; /* set around calls into the relay: no handler may run then */
  guint handlers_inside_calls;
  FerryRelay *relay; /* freed in finished when free_in_finished */
  gboolean free_in_finished;
} RelayLog;

static void log_read_done(FerryRelay *relay, const GError *error, gpointer ud)
{
  RelayLog *l = ud;
  l->handlers_inside_calls += l->in_call;
  g_string_append_c(l->order, 'r');
  if (error != NULL)
    l->read_error = g_error_copy(error);
}

static void log_write_done(FerryRelay *relay, const GError *error, gpointer ud)
{
  RelayLog *l = ud;
  l->handlers_inside_calls += l->in_call;
  g_string_append_c(l->order, 'w');
  if (error != NULL)
    l->write_error = g_error_copy(error);
}

static void log_finished(FerryRelay *relay, gpointer ud)
{
  RelayLog *l = ud;
  l->handlers_inside_calls += l->in_call;
  g_string_append_c(l->order, 'f');
  l->finished = TRUE;
  if (l->free_in_finished)
    g_clear_pointer(&l->relay, ferry_relay_free);
}

static const FerryRelayHandlers log_handlers = {
  .read_done = log_read_done,
  .write_done = log_write_done,
  .finished = log_finished,
};

typedef struct {
  FerryChannel *near, *far; /* the relay holds near; the test drives far */
  Recorder rfar;
  int in[2];  /* the test writes in[1]; the relay reads in[0] */
  int out[2]; /* the relay writes out[1]; the test reads out[0] */
  RelayLog log;
} RelayRig;

static void rig_open(RelayRig *g, gboolean with_read, gboolean with_write, gboolean drop)
{
  memset(g, 0, sizeof(*g));
  g->log.order = g_string_new("");
  pipe_pair(1u << 20, &g->near, &g->far);
  rec_init(&g->rfar, g->far);
  g->in[0] = g->in[1] = g->out[0] = g->out[1] = -1;
  if (with_read)
    g_assert_cmpint(pipe2(g->in, O_CLOEXEC), ==, 0);
  if (with_write)
    g_assert_cmpint(pipe2(g->out, O_CLOEXEC | O_NONBLOCK), ==, 0);
  FerryRelayOptions options = { .read_fd = g->in[0],
                                .write_fd = g->out[1],
                                .drop_after_write_error = drop };
  g->log.in_call = TRUE;
  g->log.relay = ferry_relay_new(g->near, &options, &log_handlers, &g->log);
  g->log.in_call = FALSE;
  ferry_channel_unref(g->near); /* the relay keeps its own */
}

static void rig_close(RelayRig *g)
{
  g_assert_cmpuint(g->log.handlers_inside_calls, ==, 0);
  ferry_relay_free(g->log.relay);
  ferry_fd_clear(&g->in[1]);
  ferry_fd_clear(&g->out[0]);
  ferry_channel_unref(g->far);
  spin();
  rec_clear(&g->rfar);
  g_string_free(g->log.order, TRUE);
  g_clear_error(&g->log.read_error);
  g_clear_error(&g->log.write_error);
}

static void rig_run_until_finished(RelayRig *g)
{
  g_assert_true(test_run_until(&g->log.finished, 10000));
}

static void test_relay_both_ways_then_finished(void)
{
  RelayRig g;
  rig_open(&g, TRUE, TRUE, FALSE);
  gsize total = 1u << 20;
  g_autofree guint8 *up = pattern(total, 5);
  g_autofree guint8 *down = pattern(total, 6);
  g_autofree guint8 *back = g_malloc(total);
  g_assert_true(ferry_fd_set_nonblocking(g.in[1], TRUE, NULL));
  gsize wrote = 0, sent = 0, got = 0;
  gint64 deadline = g_get_monotonic_time() + 20 * G_USEC_PER_SEC;
  while (wrote < total || sent < total || got < total || g.rfar.got->len < total) {
    g_assert_cmpint(g_get_monotonic_time(), <, deadline);
    if (wrote < total) {
      ssize_t n = write(g.in[1], up + wrote, MIN(total - wrote, 65536));
      if (n > 0)
        wrote += (gsize)n;
      if (wrote == total)
        ferry_fd_clear(&g.in[1]); /* the writer's end of file */
    }
    if (sent < total) {
      sent += ferry_channel_write(g.far, down + sent, total - sent);
      if (sent == total)
        ferry_channel_shutdown_write(g.far);
    }
    ssize_t n = read(g.out[0], back + got, total - got);
    if (n > 0)
      got += (gsize)n;
    g_main_context_iteration(NULL, FALSE);
  }
  g_assert_cmpmem(g.rfar.got->data, g.rfar.got->len, up, total);
  g_assert_cmpmem(back, total, down, total);
  rig_run_until_finished(&g);
  g_assert_true(g.rfar.eof); /* the read fd's end of file became the channel's */
  guint8 c;
  g_assert_cmpint(read(g.out[0], &c, 1), ==, 0); /* the channel's EOF closed the write fd */
  g_assert_true(strchr(g.log.order->str, 'r') != NULL && strchr(g.log.order->str, 'w') != NULL);
  g_assert_cmpint(g.log.order->str[2], ==, 'f');
  g_assert_no_error(g.log.read_error);
  g_assert_no_error(g.log.write_error);
  rig_close(&g);
}

/* Finished waits until the peer consumed every byte, on the channel's acked event: no
 * polling while it waits. */
static void test_relay_finished_waits_for_acked(void)
{
  RelayRig g;
  rig_open(&g, TRUE, FALSE, FALSE);
  g.rfar.stall = TRUE;
  g_assert_cmpint(write(g.in[1], "last", 4), ==, 4);
  ferry_fd_clear(&g.in[1]);
  gboolean never = FALSE;
  g_assert_false(test_run_until(&never, 100));
  guint asks = pipe_unacked_asks;
  g_assert_false(test_run_until(&never, 200));
  g_assert_cmpuint(pipe_unacked_asks, ==, asks);
  g_assert_cmpstr(g.log.order->str, ==, "r");
  g_assert_false(g.log.finished);
  g.rfar.stall = FALSE;
  ferry_channel_resume_reading(g.far);
  rig_run_until_finished(&g);
  g_assert_cmpmem(g.rfar.got->data, g.rfar.got->len, "last", 4);
  g_assert_true(g.rfar.eof);
  g_assert_cmpstr(g.log.order->str, ==, "rf");
  rig_close(&g);
}

/* A pipe another process keeps open ends once it stays empty for the quiet period. */
static void test_relay_quiet_read_ends(void)
{
  RelayRig g;
  rig_open(&g, TRUE, FALSE, FALSE);
  g_assert_cmpint(write(g.in[1], "tail", 4), ==, 4);
  run_until_got(&g.rfar, 4);
  g.log.in_call = TRUE;
  ferry_relay_end_read_when_quiet(g.log.relay, 20);
  g.log.in_call = FALSE;
  rig_run_until_finished(&g);
  g_assert_true(g.rfar.eof);
  g_assert_cmpstr(g.log.order->str, ==, "rf");
  g_assert_cmpint(write(g.in[1], "x", 1), ==, -1); /* the relay closed its end */
  g_assert_cmpint(errno, ==, EPIPE);
  rig_close(&g);
}

/* The write fd's reader went away: by default that closes the channel ... */
static void test_relay_write_error_closes_channel(void)
{
  RelayRig g;
  rig_open(&g, FALSE, TRUE, FALSE);
  ferry_fd_clear(&g.out[0]);
  g_assert_cmpuint(ferry_channel_write(g.far, "lost", 4), ==, 4);
  rig_run_until_finished(&g);
  g_assert_true(g.rfar.closed);
  g_assert_cmpstr(g.log.order->str, ==, "wf");
  g_assert_error(g.log.write_error, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE);
  rig_close(&g);
}

/* ... or, asked to, drops what follows so the peer is not blocked, and reports the
 * failure at the end. */
static void test_relay_write_error_drops(void)
{
  RelayRig g;
  rig_open(&g, FALSE, TRUE, TRUE);
  ferry_fd_clear(&g.out[0]);
  gsize total = 3u << 20; /* more than the pipe's window */
  g_autofree guint8 *data = pattern(total, 7);
  gsize sent = 0;
  gint64 deadline = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;
  while (sent < total) {
    g_assert_cmpint(g_get_monotonic_time(), <, deadline);
    sent += ferry_channel_write(g.far, data + sent, total - sent);
    g_main_context_iteration(NULL, FALSE);
  }
  ferry_channel_shutdown_write(g.far);
  rig_run_until_finished(&g);
  g_assert_false(g.rfar.closed);
  g_assert_cmpuint(ferry_channel_unacked(g.far), ==, 0);
  g_assert_cmpstr(g.log.order->str, ==, "wf");
  g_assert_error(g.log.write_error, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE);
  rig_close(&g);
}

/* The channel reset by the peer ends both sides with its error and closes the fds: the
 * writer of the read fd gets EPIPE. */
static void test_relay_channel_reset_closes_fds(void)
{
  RelayRig g;
  rig_open(&g, TRUE, TRUE, FALSE);
  ferry_channel_close(g.far);
  rig_run_until_finished(&g);
  g_assert_cmpstr(g.log.order->str, ==, "rwf");
  g_assert_error(g.log.read_error, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE);
  g_assert_error(g.log.write_error, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE);
  g_assert_cmpint(write(g.in[1], "x", 1), ==, -1);
  g_assert_cmpint(errno, ==, EPIPE);
  guint8 c;
  g_assert_cmpint(read(g.out[0], &c, 1), ==, 0);
  rig_close(&g);
}

/* No channel: what is read is dropped (a terminal nobody listens to). */
static void test_relay_without_channel_drops(void)
{
  RelayLog log = { .order = g_string_new("") };
  int in[2];
  g_assert_cmpint(pipe2(in, O_CLOEXEC), ==, 0);
  FerryRelayOptions options = { .read_fd = in[0], .write_fd = -1 };
  log.relay = ferry_relay_new(NULL, &options, &log_handlers, &log);
  log.free_in_finished = TRUE;
  g_autofree guint8 *data = pattern(1u << 20, 8);
  gsize wrote = 0;
  g_assert_true(ferry_fd_set_nonblocking(in[1], TRUE, NULL));
  gint64 deadline = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;
  while (wrote < (1u << 20)) {
    g_assert_cmpint(g_get_monotonic_time(), <, deadline);
    ssize_t n = write(in[1], data + wrote, (1u << 20) - wrote);
    if (n > 0)
      wrote += (gsize)n;
    g_main_context_iteration(NULL, FALSE);
  }
  close(in[1]);
  g_assert_true(test_run_until(&log.finished, 10000));
  g_assert_null(log.relay); /* freed inside finished */
  g_assert_cmpstr(log.order->str, ==, "rf");
  g_string_free(log.order, TRUE);
}

/* Abort runs no handler inside the call; they follow from the loop. */
static void test_relay_abort_reports_later(void)
{
  RelayRig g;
  rig_open(&g, TRUE, TRUE, FALSE);
  g.log.in_call = TRUE;
  ferry_relay_abort(g.log.relay);
  g.log.in_call = FALSE;
  g_assert_cmpstr(g.log.order->str, ==, "");
  rig_run_until_finished(&g);
  g_assert_cmpstr(g.log.order->str, ==, "rwf");
  g_assert_no_error(g.log.read_error); /* a local close is no error */
  spin();
  g_assert_true(g.rfar.closed);
  rig_close(&g);
}

int main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  signal(SIGPIPE, SIG_IGN); /* a write to a closed socket fails the test, not the process */
  probe_vsock();
  if (loopback_unavailable != NULL)
    g_test_message("live vsock tests skip: %s", loopback_unavailable);

  g_test_add_func("/transport/channel/delivers-both-ways", test_channel_delivers_both_ways);
  g_test_add_func("/relay/both-ways-then-finished", test_relay_both_ways_then_finished);
  g_test_add_func("/relay/finished-waits-for-acked", test_relay_finished_waits_for_acked);
  g_test_add_func("/relay/quiet-read-ends", test_relay_quiet_read_ends);
  g_test_add_func("/relay/write-error-closes-channel", test_relay_write_error_closes_channel);
  g_test_add_func("/relay/write-error-drops", test_relay_write_error_drops);
  g_test_add_func("/relay/channel-reset-closes-fds", test_relay_channel_reset_closes_fds);
  g_test_add_func("/relay/without-channel-drops", test_relay_without_channel_drops);
  g_test_add_func("/relay/abort-reports-later", test_relay_abort_reports_later);
  g_test_add_func("/transport/channel/short-consume-waits-for-resume",
                  test_channel_short_consume_waits_for_resume);
  g_test_add_func("/transport/channel/data-waits-for-handlers",
                  test_channel_data_waits_for_handlers);
  g_test_add_func("/transport/channel/emit-data-clamps-count", test_channel_emit_data_clamps_count);
  g_test_add_func("/transport/channel/close-reports-once", test_channel_close_reports_once);
  g_test_add_func("/transport/channel/eof-after-data", test_channel_eof_after_data);
  g_test_add_func("/transport/channel/unref-in-data-handler", test_channel_unref_in_data_handler);
  g_test_add_func("/transport/channel/close-in-data-handler", test_channel_close_in_data_handler);
  g_test_add_func("/transport/channel/unref-in-closed-handler",
                  test_channel_unref_in_closed_handler);
  g_test_add_func("/transport/channel/close-in-eof-handler", test_channel_close_in_eof_handler);
  g_test_add_func("/transport/channel/valid-during-handler", test_channel_valid_during_handler);
  g_test_add_func("/transport/channel/last-unref-closes-quietly",
                  test_channel_last_unref_closes_quietly);
  g_test_add_func("/transport/transport/dispatches", test_transport_dispatches);

  g_test_add_func("/transport/fd/bytes-both-ways", test_fd_bytes_both_ways);
  g_test_add_func("/transport/fd/slow-reader-leaves-data-in-channel",
                  test_fd_slow_reader_leaves_data_in_channel);
  g_test_add_func("/transport/fd/full-channel-stops-socket-reads",
                  test_fd_full_channel_stops_socket_reads);
  g_test_add_func("/transport/fd/local-eof-shuts-channel", test_fd_local_eof_shuts_channel);
  g_test_add_func("/transport/fd/channel-eof-shuts-socket", test_fd_channel_eof_shuts_socket);
  g_test_add_func("/transport/fd/adapter-lingers-without-polling",
                  test_fd_adapter_lingers_without_polling);
  g_test_add_func("/transport/fd/channel-close-closes-socket", test_fd_channel_close_closes_socket);
  g_test_add_func("/transport/fd/socket-close-closes-channel", test_fd_socket_close_closes_channel);
  g_test_add_func("/transport/fd/refuses-closed-channel", test_fd_refuses_closed_channel);

  g_test_add_func("/vsock/address/parses", test_vsock_parses_addresses);
  g_test_add_func("/vsock/address/rejects-bad", test_vsock_rejects_bad_addresses);
  g_test_add_func("/vsock/address/builds-sockaddr", test_vsock_builds_sockaddr);
  g_test_add_func("/vsock/channel/both-ways", test_vsock_channel_both_ways);
  g_test_add_func("/vsock/channel/consume-and-resume", test_vsock_channel_consume_and_resume);
  g_test_add_func("/vsock/channel/stalled-handler-stops-reading",
                  test_vsock_channel_stalled_handler_stops_reading);
  g_test_add_func("/vsock/channel/send-buffer-bounds-writes",
                  test_vsock_channel_send_buffer_bounds_writes);
  g_test_add_func("/vsock/channel/eof-both-ways", test_vsock_channel_eof_both_ways);
  g_test_add_func("/vsock/channel/close", test_vsock_channel_close);
  g_test_add_func("/vsock/channel/peer-gone", test_vsock_channel_peer_gone);
  g_test_add_func("/vsock/channel/unref-in-data-handler", test_vsock_channel_unref_in_data_handler);
  g_test_add_func("/vsock/channel/through-fd", test_vsock_channel_through_fd);
  g_test_add_func("/vsock/transport/socket-failure-is-an-error",
                  test_vsock_socket_failure_is_an_error);
  g_test_add_func("/vsock/transport/listen-twice-already-exists",
                  test_vsock_listen_twice_already_exists);
  g_test_add_func("/vsock/transport/listen-on-taken-port-fails",
                  test_vsock_listen_on_taken_port_fails);
  g_test_add_func("/vsock/transport/dial-unanswered-fails", test_vsock_dial_unanswered_fails);
  g_test_add_func("/vsock/transport/dial-own-cid-unavailable", test_vsock_dial_own_cid_unavailable);
  g_test_add_func("/vsock/live/loopback", test_vsock_live_loopback);
  int rc = g_test_run();
  g_free(vsock_unavailable);
  g_free(loopback_unavailable);
  return rc;
}
