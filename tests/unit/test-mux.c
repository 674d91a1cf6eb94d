/*
 * The channel mux (docs/mux.md): a host mux and a guest mux over socketpairs in one
 * process. Channels, flow control, half-close, reset, and the property the mux exists
 * for: across any number of breaks of the underlying stream, and a change of host
 * object, every byte arrives exactly once.
 */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "ferry/error.h"
#include "ferry/fd.h"
#include "ferry/mux.h"
#include "test-util.h"

#define PORT 0x40000001u

/* The byte at offset i of a test stream `seed`. */
static guint8 pattern(guint32 seed, guint64 i)
{
  guint64 x = (i + 1) * 0x9e3779b97f4a7c15ull ^ ((guint64)seed << 32);
  x ^= x >> 29;
  return (guint8)(x * 0xbf58476d1ce4e5b9ull >> 56);
}

/* ------------------------------------------------------------ endpoints -- */

/* One side of a channel under test: writes `total` pattern bytes, checks what arrives
 * against the peer's pattern, and optionally consumes slowly. */
typedef struct {
  FerryChannel *ch;
  guint32 send_seed, recv_seed;
  guint64 send_total, sent;
  gboolean shut_when_done;
  guint64 received;
  gboolean eof;
  gboolean closed;
  GError *close_error;
  guint mismatches;
  guint stall_every; /* consume nothing on every n-th offer (0: never) */
  guint offers;
  gsize max_take; /* take at most this much per offer (0: all) */
  guint resume_source;
} End;

static void end_fill(End *e)
{
  guint8 buf[16384];
  while (e->ch != NULL && e->sent < e->send_total) {
    gsize n = (gsize)MIN((guint64)sizeof(buf), e->send_total - e->sent);
    for (gsize i = 0; i < n; i++)
      buf[i] = pattern(e->send_seed, e->sent + i);
    gsize took = ferry_channel_write(e->ch, buf, n);
    e->sent += took;
    if (took < n)
      return; /* writable will call again */
  }
  if (e->ch != NULL && e->sent == e->send_total && e->shut_when_done)
    ferry_channel_shutdown_write(e->ch);
}

static gboolean on_resume(gpointer p)
{
  End *e = p;
  e->resume_source = 0;
  if (e->ch != NULL)
    ferry_channel_resume_reading(e->ch);
  return G_SOURCE_REMOVE;
}

static gsize end_data(FerryChannel *ch, const guint8 *data, gsize len, gpointer ud)
{
  End *e = ud;
  e->offers++;
  if (e->stall_every != 0 && e->offers % e->stall_every == 0) {
    if (e->resume_source == 0)
      e->resume_source = g_timeout_add(2, on_resume, e);
    return 0;
  }
  gsize take = e->max_take != 0 ? MIN(len, e->max_take) : len;
  for (gsize i = 0; i < take; i++)
    if (data[i] != pattern(e->recv_seed, e->received + i))
      e->mismatches++;
  e->received += take;
  if (take < len && e->resume_source == 0)
    e->resume_source = g_idle_add(on_resume, e);
  return take;
}

static void end_eof(FerryChannel *ch, gpointer ud)
{
  End *e = ud;
  g_assert_false(e->eof);
  e->eof = TRUE;
}

static void end_writable(FerryChannel *ch, gpointer ud)
{
  end_fill(ud);
}

static void end_closed(FerryChannel *ch, const GError *error, gpointer ud)
{
  End *e = ud;
  e->closed = TRUE;
  if (error != NULL)
    e->close_error = g_error_copy(error);
}

static const FerryChannelHandlers end_handlers = { end_data, end_eof, end_writable, end_closed };

static void end_bind(End *e, FerryChannel *ch)
{
  e->ch = ch;
  ferry_channel_set_handlers(ch, &end_handlers, e);
  end_fill(e);
}

static void end_clear(End *e)
{
  if (e->resume_source != 0)
    g_source_remove(e->resume_source);
  g_clear_pointer(&e->ch, ferry_channel_unref);
  g_clear_error(&e->close_error);
}

/* ------------------------------------------------------------- fixture -- */

typedef struct {
  FerryMux *host, *guest;
  GPtrArray *accepted; /* FerryChannel, new references */
  FerryChannel *dialed;
  GError *dial_error;
  gboolean dial_done;
  guint lost;
} Pair;

static void on_accept(FerryTransport *t, FerryChannel *ch, gpointer ud)
{
  Pair *p = ud;
  g_ptr_array_add(p->accepted, ch);
}

static void on_dialed(FerryTransport *t, FerryChannel *ch, const GError *error, gpointer ud)
{
  Pair *p = ud;
  p->dial_done = TRUE;
  p->dialed = ch;
  if (error != NULL)
    p->dial_error = g_error_copy(error);
}

static void on_lost(FerryMux *mux, const GError *error, gpointer ud)
{
  Pair *p = ud;
  p->lost++;
}

/* A fresh socketpair attached to both muxes. */
static void pair_connect(Pair *p)
{
  g_autoptr(GError) error = NULL;
  int sp[2];
  g_assert_true(ferry_socketpair(sp, FALSE, &error));
  g_assert_true(ferry_mux_attach(p->host, sp[0], &error));
  g_assert_true(ferry_mux_attach(p->guest, sp[1], &error));
}

static void pair_wait_synced(Pair *p)
{
  gint64 until = g_get_monotonic_time() + 5 * G_USEC_PER_SEC;
  while (!(ferry_mux_is_synced(p->host) && ferry_mux_is_synced(p->guest))) {
    if (g_get_monotonic_time() > until)
      g_error("muxes did not sync within 5 s");
    g_main_context_iteration(NULL, TRUE);
  }
}

static void pair_init(Pair *p)
{
  memset(p, 0, sizeof(*p));
  p->host = ferry_mux_new(FERRY_MUX_HOST);
  p->guest = ferry_mux_new(FERRY_MUX_GUEST);
  p->accepted = g_ptr_array_new();
  ferry_mux_set_lost_func(p->host, on_lost, p);
  ferry_mux_set_lost_func(p->guest, on_lost, p);
  g_autoptr(GError) error = NULL;
  g_assert_true(
      ferry_transport_listen(ferry_mux_get_transport(p->host), PORT, on_accept, p, &error));
  pair_connect(p);
}

static void pair_clear(Pair *p)
{
  for (guint i = 0; i < p->accepted->len; i++)
    ferry_channel_unref(p->accepted->pdata[i]);
  g_ptr_array_unref(p->accepted);
  g_clear_pointer(&p->dialed, ferry_channel_unref);
  g_clear_error(&p->dial_error);
  ferry_mux_free(p->guest);
  ferry_mux_free(p->host);
}

/* Dial PORT from the guest; returns (guest end, host end). */
static void pair_open(Pair *p, FerryChannel **guest_end, FerryChannel **host_end)
{
  guint before = p->accepted->len;
  p->dial_done = FALSE;
  ferry_transport_dial(ferry_mux_get_transport(p->guest), PORT, on_dialed, p);
  gint64 until = g_get_monotonic_time() + 5 * G_USEC_PER_SEC;
  while (!p->dial_done || p->accepted->len == before) {
    if (g_get_monotonic_time() > until)
      g_error("dial did not complete within 5 s");
    g_main_context_iteration(NULL, TRUE);
  }
  g_assert_no_error(p->dial_error);
  *guest_end = g_steal_pointer(&p->dialed);
  *host_end = ferry_channel_ref(p->accepted->pdata[p->accepted->len - 1]);
}

static void run_until(gboolean (*done)(gpointer), gpointer data, guint seconds)
{
  gint64 until = g_get_monotonic_time() + seconds * G_USEC_PER_SEC;
  while (!done(data)) {
    if (g_get_monotonic_time() > until)
      g_error("condition not reached within %u s", seconds);
    g_main_context_iteration(NULL, TRUE);
  }
}

typedef struct {
  End *a, *b;
} Two;

static gboolean both_complete(gpointer p)
{
  Two *t = p;
  return t->a->received == t->b->send_total && t->b->received == t->a->send_total &&
         (!t->b->shut_when_done || t->a->eof) && (!t->a->shut_when_done || t->b->eof);
}

/* ---------------------------------------------------------------- tests -- */

static void test_open_and_exchange(void)
{
  Pair p;
  pair_init(&p);
  FerryChannel *g, *h;
  pair_open(&p, &g, &h);
  g_assert_cmpuint(ferry_channel_get_port(g), ==, PORT);
  g_assert_cmpuint(ferry_channel_get_port(h), ==, PORT);
  End ge = { .send_seed = 1, .recv_seed = 2, .send_total = 3 << 20, .shut_when_done = TRUE };
  End he = { .send_seed = 2, .recv_seed = 1, .send_total = 1 << 20, .shut_when_done = TRUE };
  end_bind(&ge, g);
  end_bind(&he, h);
  Two t = { &ge, &he };
  run_until(both_complete, &t, 20);
  g_assert_cmpuint(ge.mismatches + he.mismatches, ==, 0);
  g_assert_true(ge.eof && he.eof);
  end_clear(&ge);
  end_clear(&he);
  pair_clear(&p);
}

static void test_dial_refused(void)
{
  Pair p;
  pair_init(&p);
  p.dial_done = FALSE;
  ferry_transport_dial(ferry_mux_get_transport(p.guest), 77, on_dialed, &p);
  g_assert_true(test_run_until(&p.dial_done, 5000));
  g_assert_null(p.dialed);
  g_assert_error(p.dial_error, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE);
  g_assert_nonnull(strstr(p.dial_error->message, "port 77"));
  g_assert_cmpuint(ferry_mux_channel_count(p.guest), ==, 0);
  pair_clear(&p);
}

/* A dial made before any stream is attached goes out after the HELLO exchange. */
static void test_dial_before_attach(void)
{
  Pair p = { 0 };
  p.host = ferry_mux_new(FERRY_MUX_HOST);
  p.guest = ferry_mux_new(FERRY_MUX_GUEST);
  p.accepted = g_ptr_array_new();
  g_autoptr(GError) error = NULL;
  g_assert_true(
      ferry_transport_listen(ferry_mux_get_transport(p.host), PORT, on_accept, &p, &error));
  ferry_transport_dial(ferry_mux_get_transport(p.guest), PORT, on_dialed, &p);
  for (int i = 0; i < 20; i++)
    g_main_context_iteration(NULL, FALSE);
  g_assert_false(p.dial_done);
  pair_connect(&p);
  g_assert_true(test_run_until(&p.dial_done, 5000));
  g_assert_no_error(p.dial_error);
  g_assert_nonnull(p.dialed);
  pair_clear(&p);
}

/* acked comes once the peer's consumer took every byte written, not before. */
typedef struct {
  guint acked;
  gsize unacked_at_acked;
  gboolean closed;
} AckWatch;

static void ack_watch_acked(FerryChannel *ch, gpointer ud)
{
  AckWatch *w = ud;
  w->acked++;
  w->unacked_at_acked = ferry_channel_unacked(ch);
}

static void ack_watch_writable(FerryChannel *ch, gpointer ud)
{
  /* Closing from inside writable frees the mux's record of the channel. */
  ferry_channel_close(ch);
}

static void ack_watch_closed(FerryChannel *ch, const GError *error, gpointer ud)
{
  AckWatch *w = ud;
  w->closed = TRUE;
}

static void test_acked_after_peer_consumed(void)
{
  Pair p;
  pair_init(&p);
  FerryChannel *g, *h;
  pair_open(&p, &g, &h);
  AckWatch w = { 0 };
  const FerryChannelHandlers watch = { .acked = ack_watch_acked, .closed = ack_watch_closed };
  ferry_channel_set_handlers(h, &watch, &w);
  g_assert_cmpuint(ferry_channel_write(h, "0123456789", 10), ==, 10);
  /* The guest end has no data handler: the bytes wait there, unconsumed. */
  gboolean never = FALSE;
  g_assert_false(test_run_until(&never, 100));
  g_assert_cmpuint(w.acked, ==, 0);
  g_assert_cmpuint(ferry_channel_unacked(h), ==, 10);
  End ge = { .recv_seed = 0 };
  ge.ch = g;
  const FerryChannelHandlers take_all = { .data = end_data };
  ge.mismatches = 0;
  ferry_channel_set_handlers(g, &take_all, &ge);
  gint64 until = g_get_monotonic_time() + 5 * G_USEC_PER_SEC;
  while (w.acked == 0 && g_get_monotonic_time() < until)
    g_main_context_iteration(NULL, TRUE);
  g_assert_cmpuint(w.acked, ==, 1);
  g_assert_cmpuint(w.unacked_at_acked, ==, 0);
  g_assert_cmpuint(ge.received, ==, 10);
  ferry_channel_set_handlers(g, NULL, NULL);
  ferry_channel_unref(g);
  ferry_channel_set_handlers(h, NULL, NULL);
  ferry_channel_unref(h);
  pair_clear(&p);
}

/* A frozen host takes nothing (data stays unconsumed and unacknowledged, so an export
 * then is the whole truth), gives no write room and keeps its write side open; thawed,
 * everything held back goes on, from the loop. */
static void test_freeze_holds_everything(void)
{
  Pair p;
  pair_init(&p);
  FerryChannel *g, *h;
  pair_open(&p, &g, &h);
  End ge = { .send_seed = 5, .recv_seed = 6, .send_total = 100000, .shut_when_done = TRUE };
  End he = { .send_seed = 6, .recv_seed = 5, .send_total = 0 };
  ferry_mux_set_frozen(p.host, TRUE);
  end_bind(&ge, g);
  end_bind(&he, h);
  gboolean never = FALSE;
  g_assert_false(test_run_until(&never, 300));
  g_assert_cmpuint(he.received, ==, 0);
  g_assert_false(he.eof);
  g_assert_cmpuint(ferry_channel_write_room(h), ==, 0);
  g_assert_cmpuint(ferry_channel_write(h, "x", 1), ==, 0);
  ferry_channel_shutdown_write(h);
  FerryMuxChannelState st;
  g_autoptr(GError) error = NULL;
  g_assert_true(ferry_mux_export_channel(p.host, h, &st, &error));
  g_assert_cmpuint(st.recv_consumed, ==, 0);
  g_assert_cmpuint(st.send_total, ==, 0);
  g_assert_false(st.shut);
  ferry_mux_channel_state_clear(&st);
  g_assert_false(test_run_until(&never, 100));
  g_assert_false(ge.eof); /* the shutdown waits for the thaw */

  ferry_mux_set_frozen(p.host, FALSE);
  g_assert_cmpuint(he.received, ==, 0); /* not inside the call */
  Two t = { &ge, &he };
  run_until(both_complete, &t, 20);
  g_assert_cmpuint(ge.mismatches + he.mismatches, ==, 0);
  g_assert_true(he.eof);
  gint64 until = g_get_monotonic_time() + 5 * G_USEC_PER_SEC;
  while (!ge.eof && g_get_monotonic_time() < until)
    g_main_context_iteration(NULL, TRUE);
  g_assert_true(ge.eof);
  end_clear(&ge);
  end_clear(&he);
  pair_clear(&p);
}

/* A writable handler may close its channel: the mux must not look at the channel's
 * freed record afterwards (ASan catches it). */
static void test_writable_handler_may_close(void)
{
  Pair p;
  pair_init(&p);
  FerryChannel *g, *h;
  pair_open(&p, &g, &h);
  AckWatch w = { 0 };
  const FerryChannelHandlers watch = { .writable = ack_watch_writable,
                                       .closed = ack_watch_closed,
                                       .acked = ack_watch_acked };
  ferry_channel_set_handlers(h, &watch, &w);
  g_autofree guint8 *big = g_malloc0(8u << 20);
  gsize took = ferry_channel_write(h, big, 8u << 20);
  g_assert_cmpuint(took, <, 8u << 20); /* short: writable is armed */
  End ge = { 0 };
  ge.ch = g;
  const FerryChannelHandlers take_all = { .data = end_data };
  ferry_channel_set_handlers(g, &take_all, &ge);
  g_assert_true(test_run_until(&w.closed, 5000));
  g_assert_cmpuint(ferry_mux_channel_count(p.host), ==, 0);
  ferry_channel_set_handlers(g, NULL, NULL);
  ferry_channel_unref(g);
  ferry_channel_unref(h);
  pair_clear(&p);
}

/* One consumer that stops reading stalls only its own channel. */
static void test_stalled_reader_does_not_block_others(void)
{
  Pair p;
  pair_init(&p);
  FerryChannel *g1, *h1, *g2, *h2;
  pair_open(&p, &g1, &h1);
  pair_open(&p, &g2, &h2);
  /* Channel 1's host consumer takes nothing. */
  End stalled_send = { .send_seed = 5, .send_total = 8 << 20 };
  End stalled_recv = { .recv_seed = 5, .stall_every = 1 };
  End free_send = { .send_seed = 6, .send_total = 4 << 20, .shut_when_done = TRUE };
  End free_recv = { .recv_seed = 6 };
  end_bind(&stalled_send, g1);
  end_bind(&stalled_recv, h1);
  end_bind(&free_send, g2);
  end_bind(&free_recv, h2);
  Two t = { &free_recv, &free_send };
  free_recv.send_total = 0;
  run_until(both_complete, &t, 20);
  g_assert_cmpuint(free_recv.received, ==, 4u << 20);
  g_assert_true(free_recv.eof);
  /* The stalled channel moved no further than the windows and buffers allow. */
  g_assert_cmpuint(stalled_recv.received, ==, 0);
  g_assert_cmpuint(stalled_send.sent, <=, FERRY_MUX_DEFAULT_SEND_BUFFER);
  g_assert_cmpuint(free_send.mismatches + free_recv.mismatches, ==, 0);
  /* Unstall: everything arrives, intact. */
  stalled_recv.stall_every = 0;
  ferry_channel_resume_reading(h1);
  Two t2 = { &stalled_recv, &stalled_send };
  run_until(both_complete, &t2, 30);
  g_assert_cmpuint(stalled_recv.mismatches, ==, 0);
  end_clear(&stalled_send);
  end_clear(&stalled_recv);
  end_clear(&free_send);
  end_clear(&free_recv);
  pair_clear(&p);
}

static gboolean closed_flag(gpointer p)
{
  return ((End *)p)->closed;
}

static void test_close_resets_peer(void)
{
  Pair p;
  pair_init(&p);
  FerryChannel *g, *h;
  pair_open(&p, &g, &h);
  End ge = { 0 }, he = { 0 };
  end_bind(&ge, g);
  end_bind(&he, h);
  ferry_channel_close(g);
  g_assert_true(ge.closed);
  g_assert_null(ge.close_error); /* a local close */
  run_until(closed_flag, &he, 5);
  g_assert_error(he.close_error, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE);
  g_assert_nonnull(strstr(he.close_error->message, "reset by peer"));
  g_assert_cmpuint(ferry_channel_write(g, "x", 1), ==, 0);
  end_clear(&ge);
  end_clear(&he);
  pair_clear(&p);
}

static gboolean no_channels(gpointer p)
{
  Pair *pair = p;
  return ferry_mux_channel_count(pair->host) == 0 && ferry_mux_channel_count(pair->guest) == 0;
}

/* An application that writes, then lets go without closing, still delivers everything:
 * its side finishes gracefully and the channel disappears on both sides. */
static void test_let_go_finishes_gracefully(void)
{
  Pair p;
  pair_init(&p);
  FerryChannel *g, *h;
  pair_open(&p, &g, &h);
  End he = { .recv_seed = 9, .shut_when_done = TRUE };
  end_bind(&he, h);
  g_autofree guint8 *buf = g_malloc(300000);
  for (gsize i = 0; i < 300000; i++)
    buf[i] = pattern(9, i);
  g_assert_cmpuint(ferry_channel_write(g, buf, 300000), ==, 300000);
  ferry_channel_unref(g); /* let go: implies shutdown_write */
  he.send_total = 0;
  end_fill(&he); /* the host side shuts its direction too */
  for (guint i = 0; i < p.accepted->len; i++)
    ferry_channel_unref(p.accepted->pdata[i]);
  g_ptr_array_set_size(p.accepted, 0);
  gint64 until = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;
  while (!he.eof && g_get_monotonic_time() < until)
    g_main_context_iteration(NULL, TRUE);
  g_assert_true(he.eof);
  g_assert_cmpuint(he.received, ==, 300000);
  g_assert_cmpuint(he.mismatches, ==, 0);
  end_clear(&he);
  run_until(no_channels, &p, 10);
  pair_clear(&p);
}

/* ---- breaks ---- */

typedef struct {
  Pair *pair;
  End *ends[2]; /* guest end, host end */
  GRand *rand;
  guint breaks, wanted_breaks;
  gboolean swap_host; /* rebuild the host mux from exported state at each break */
  guint64 next_break_at;
} Breaker;

static guint64 progress(Breaker *b)
{
  return b->ends[0]->received + b->ends[1]->received;
}

/* Replace the host mux by a new object rebuilt from the old one's exported state. */
static void swap_host_mux(Breaker *b)
{
  Pair *p = b->pair;
  End *he = b->ends[1];
  g_autoptr(GError) error = NULL;
  FerryMuxChannelState st;
  g_assert_true(ferry_mux_export_channel(p->host, he->ch, &st, &error));
  /* Through bytes, as it would cross processes. */
  g_autoptr(GBytes) wire = ferry_mux_channel_state_serialize(&st);
  ferry_mux_channel_state_clear(&st);
  /* The old object goes away (its application handle is replaced). */
  ferry_channel_set_handlers(he->ch, &(FerryChannelHandlers){ 0 }, NULL);
  g_clear_pointer(&he->ch, ferry_channel_unref);
  for (guint i = 0; i < p->accepted->len; i++)
    ferry_channel_unref(p->accepted->pdata[i]);
  g_ptr_array_set_size(p->accepted, 0);
  ferry_mux_free(p->host);
  p->host = ferry_mux_new(FERRY_MUX_HOST);
  ferry_mux_set_lost_func(p->host, on_lost, p);
  g_assert_true(
      ferry_transport_listen(ferry_mux_get_transport(p->host), PORT, on_accept, p, &error));
  FerryMuxChannelState back;
  g_assert_true(ferry_mux_channel_state_deserialize(wire, &back, &error));
  FerryChannel *ch = ferry_mux_import_channel(p->host, &back, &error);
  ferry_mux_channel_state_clear(&back);
  g_assert_no_error(error);
  end_bind(he, ch);
}

static void do_break(Breaker *b)
{
  Pair *p = b->pair;
  b->breaks++;
  /* The stream breaks under both sides (a migration's blackout). */
  ferry_mux_detach(p->host);
  ferry_mux_detach(p->guest);
  if (b->swap_host)
    swap_host_mux(b);
  pair_connect(p);
}

static void run_with_breaks(Breaker *b, Two *t)
{
  gint64 until = g_get_monotonic_time() + 120 * G_USEC_PER_SEC;
  while (!both_complete(t)) {
    if (g_get_monotonic_time() > until)
      g_error("transfer incomplete after 120 s: %" G_GUINT64_FORMAT "/%" G_GUINT64_FORMAT
              " and %" G_GUINT64_FORMAT "/%" G_GUINT64_FORMAT ", %u breaks",
              t->a->received, t->b->send_total, t->b->received, t->a->send_total, b->breaks);
    if (b->breaks < b->wanted_breaks && progress(b) >= b->next_break_at) {
      do_break(b);
      b->next_break_at = progress(b) + (guint64)g_rand_int_range(b->rand, 1, 600000);
    }
    g_main_context_iteration(NULL, TRUE);
  }
}

static void exactly_once(gboolean swap_host, guint wanted_breaks)
{
  Pair p;
  pair_init(&p);
  FerryChannel *g, *h;
  pair_open(&p, &g, &h);
  End ge = { .send_seed = 11,
             .recv_seed = 12,
             .send_total = 12 << 20,
             .shut_when_done = TRUE,
             .max_take = 7000,
             .stall_every = 97 };
  End he = { .send_seed = 12,
             .recv_seed = 11,
             .send_total = 3 << 20,
             .shut_when_done = TRUE,
             .max_take = 5000,
             .stall_every = 89 };
  end_bind(&ge, g);
  end_bind(&he, h);
  Breaker b = { &p,        { &ge, &he }, g_rand_new_with_seed(g_test_rand_int()), 0, wanted_breaks,
                swap_host, 100000 };
  Two t = { &ge, &he };
  run_with_breaks(&b, &t);
  g_test_message("%u breaks", b.breaks);
  g_assert_cmpuint(b.breaks, ==, wanted_breaks);
  g_assert_cmpuint(ge.received, ==, he.send_total);
  g_assert_cmpuint(he.received, ==, ge.send_total);
  g_assert_cmpuint(ge.mismatches + he.mismatches, ==, 0);
  g_assert_true(ge.eof && he.eof);
  g_assert_false(ge.closed || he.closed);
  g_rand_free(b.rand);
  end_clear(&ge);
  end_clear(&he);
  pair_clear(&p);
}

static void test_exactly_once_across_breaks(void)
{
  exactly_once(FALSE, 25);
}

static void test_exactly_once_across_new_host_objects(void)
{
  exactly_once(TRUE, 25);
}

/* A host that comes back without the channel's state: the guest's channel closes with
 * a clear error rather than hanging. */
static void test_peer_lost_channel(void)
{
  Pair p;
  pair_init(&p);
  FerryChannel *g, *h;
  pair_open(&p, &g, &h);
  End ge = { 0 };
  end_bind(&ge, g);
  ferry_channel_unref(h);
  for (guint i = 0; i < p.accepted->len; i++)
    ferry_channel_unref(p.accepted->pdata[i]);
  g_ptr_array_set_size(p.accepted, 0);
  ferry_mux_detach(p.guest);
  ferry_mux_free(p.host);
  p.host = ferry_mux_new(FERRY_MUX_HOST);
  pair_connect(&p);
  run_until(closed_flag, &ge, 5);
  g_assert_error(ge.close_error, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE);
  g_assert_nonnull(strstr(ge.close_error->message, "peer lost channel"));
  end_clear(&ge);
  pair_clear(&p);
}

static gboolean eof_flag(gpointer p)
{
  return ((End *)p)->eof;
}

/* A channel whose peer had already finished, imported into a new host object that syncs
 * before its application sets handlers: the EOF waits for the handlers instead of going
 * to nobody (the relay of a rebuilt host would wait for it forever). */
static void test_imported_eof_waits_for_handlers(void)
{
  Pair p;
  pair_init(&p);
  FerryChannel *g, *h;
  pair_open(&p, &g, &h);
  End ge = { .send_seed = 3, .send_total = 1000, .shut_when_done = TRUE };
  End he = { .recv_seed = 3 };
  end_bind(&ge, g);
  end_bind(&he, h);
  run_until(eof_flag, &he, 5);
  g_assert_cmpuint(he.received, ==, 1000);
  /* Export after the EOF, then rebuild the host side. */
  g_autoptr(GError) error = NULL;
  FerryMuxChannelState st;
  g_assert_true(ferry_mux_export_channel(p.host, he.ch, &st, &error));
  g_assert_true(st.peer_shut);
  ferry_mux_detach(p.guest);
  end_clear(&he);
  for (guint i = 0; i < p.accepted->len; i++)
    ferry_channel_unref(p.accepted->pdata[i]);
  g_ptr_array_set_size(p.accepted, 0);
  ferry_mux_free(p.host);
  p.host = ferry_mux_new(FERRY_MUX_HOST);
  FerryChannel *ch = ferry_mux_import_channel(p.host, &st, &error);
  ferry_mux_channel_state_clear(&st);
  g_assert_no_error(error);
  pair_connect(&p);
  pair_wait_synced(&p);
  for (int i = 0; i < 20; i++)
    g_main_context_iteration(NULL, FALSE);
  End again = { .recv_seed = 3 };
  end_bind(&again, ch);
  run_until(eof_flag, &again, 5);
  g_assert_cmpuint(again.received, ==, 0); /* nothing twice */
  end_clear(&again);
  end_clear(&ge);
  pair_clear(&p);
}

/* ---- a host that moves while the guest's stream goes on (virtio-serial) ---- */

/* Moves bytes between the guest's stream (t) and the current host stream (hb), as QEMU
 * does between a virtio-serial port and its chardev socket. */
typedef struct {
  int t, hb;
  GByteArray *to_guest, *to_host;
} Forwarder;

static void fwd_read(int fd, GByteArray *into)
{
  guint8 buf[65536];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0)
    g_byte_array_append(into, buf, (guint)n);
}

static void fwd_write(int fd, GByteArray *from)
{
  while (from->len > 0) {
    ssize_t n = write(fd, from->data, from->len);
    if (n <= 0)
      return;
    g_byte_array_remove_range(from, 0, (guint)n);
  }
}

static void fwd_step(Forwarder *f)
{
  fwd_read(f->t, f->to_host);
  fwd_read(f->hb, f->to_guest);
  fwd_write(f->t, f->to_guest);
  fwd_write(f->hb, f->to_host);
}

static void fwd_new_host_stream(Forwarder *f, FerryMux *host)
{
  g_autoptr(GError) error = NULL;
  int sp[2];
  g_assert_true(ferry_socketpair(sp, FALSE, &error));
  g_assert_true(ferry_fd_set_nonblocking(sp[1], TRUE, &error));
  if (f->hb >= 0)
    close(f->hb);
  f->hb = sp[1];
  g_assert_true(ferry_mux_attach(host, sp[0], &error));
}

/* The host side moves to a new stream ten times while the guest's stream never breaks
 * (a migrated VM: the guest's port goes on, the host now reaches it through another
 * QEMU). The host quiets and flushes before each move, so the guest reads the new
 * host's HELLO whole; whatever the guest wrote in flight reaches the new host torn and
 * is skipped. Both directions stay exactly-once. */
static void test_host_moves_under_continuing_guest_stream(void)
{
  g_autoptr(GError) error = NULL;
  Pair p;
  memset(&p, 0, sizeof(p));
  p.host = ferry_mux_new(FERRY_MUX_HOST);
  p.guest = ferry_mux_new(FERRY_MUX_GUEST);
  p.accepted = g_ptr_array_new();
  g_assert_true(
      ferry_transport_listen(ferry_mux_get_transport(p.host), PORT, on_accept, &p, &error));
  int gs[2];
  g_assert_true(ferry_socketpair(gs, FALSE, &error));
  g_assert_true(ferry_fd_set_nonblocking(gs[1], TRUE, &error));
  g_assert_true(ferry_mux_attach(p.guest, gs[0], &error));
  Forwarder f = { gs[1], -1, g_byte_array_new(), g_byte_array_new() };
  fwd_new_host_stream(&f, p.host);
  /* Open a channel with the forwarder running. */
  p.dial_done = FALSE;
  ferry_transport_dial(ferry_mux_get_transport(p.guest), PORT, on_dialed, &p);
  gint64 until = g_get_monotonic_time() + 5 * G_USEC_PER_SEC;
  while (!p.dial_done || p.accepted->len == 0) {
    g_assert_cmpint(g_get_monotonic_time(), <, until);
    fwd_step(&f);
    g_main_context_iteration(NULL, FALSE);
  }
  g_assert_no_error(p.dial_error);
  End ge = { .send_seed = 21, .recv_seed = 22, .send_total = 4 << 20, .shut_when_done = TRUE };
  End he = { .send_seed = 22, .recv_seed = 21, .send_total = 4 << 20, .shut_when_done = TRUE };
  end_bind(&ge, g_steal_pointer(&p.dialed));
  end_bind(&he, ferry_channel_ref(p.accepted->pdata[0]));
  Two t = { &ge, &he };
  guint moves = 0;
  until = g_get_monotonic_time() + 60 * G_USEC_PER_SEC;
  while (!both_complete(&t)) {
    g_assert_cmpint(g_get_monotonic_time(), <, until);
    fwd_step(&f);
    g_main_context_iteration(NULL, FALSE);
    guint64 done = ge.received + he.received;
    if (moves < 10 && done > (moves + 1) * (700u << 10)) {
      ferry_mux_set_quiet(p.host, TRUE);
      while (!(ferry_mux_output_flushed(p.host) && f.to_guest->len == 0)) {
        g_assert_cmpint(g_get_monotonic_time(), <, until);
        fwd_step(&f);
        g_main_context_iteration(NULL, FALSE);
      }
      ferry_mux_detach(p.host);
      ferry_mux_set_quiet(p.host, FALSE);
      fwd_new_host_stream(&f, p.host);
      moves++;
    }
  }
  g_assert_cmpuint(moves, ==, 10);
  g_assert_cmpuint(ge.received, ==, he.send_total);
  g_assert_cmpuint(he.received, ==, ge.send_total);
  g_assert_cmpuint(ge.mismatches + he.mismatches, ==, 0);
  g_assert_false(ge.closed || he.closed);
  end_clear(&ge);
  end_clear(&he);
  close(f.t);
  close(f.hb);
  g_byte_array_unref(f.to_guest);
  g_byte_array_unref(f.to_host);
  pair_clear(&p);
}

/* Stale bytes in front of the HELLO (half a frame from before a break) are skipped. */
static void test_resync_skips_garbage(void)
{
  Pair p = { 0 };
  p.host = ferry_mux_new(FERRY_MUX_HOST);
  p.guest = ferry_mux_new(FERRY_MUX_GUEST);
  p.accepted = g_ptr_array_new();
  g_autoptr(GError) error = NULL;
  int sp[2];
  g_assert_true(ferry_socketpair(sp, FALSE, &error));
  /* Garbage, including something that looks like a frame header, then the guest. */
  const guint8 junk[] = { 0x46, 0x46, 0x4d, 0x58, 0x01, 0, 0, 0, 0, 0, 0,   0,   0xff, 0xff,
                          0,    0,    0,    0,    0,    0, 0, 0, 0, 0, 'x', 'y', 'z' };
  g_assert_cmpint(write(sp[1], junk, sizeof(junk)), ==, sizeof(junk));
  g_assert_true(ferry_mux_attach(p.host, sp[0], &error));
  g_assert_true(ferry_mux_attach(p.guest, sp[1], &error));
  pair_wait_synced(&p);
  pair_clear(&p);
}

/* A peer that breaks the protocol loses its stream, not its channels. */
static void test_protocol_error_drops_stream_only(void)
{
  Pair p;
  pair_init(&p);
  FerryChannel *g, *h;
  pair_open(&p, &g, &h);
  End ge = { .send_seed = 3, .send_total = 100000, .shut_when_done = TRUE };
  End he = { .recv_seed = 3 };
  end_bind(&he, h);
  /* A new stream with a spy on the guest's end, to inject bytes between frames. */
  ferry_mux_detach(p.host);
  ferry_mux_detach(p.guest);
  g_autoptr(GError) error = NULL;
  int sp[2];
  g_assert_true(ferry_socketpair(sp, FALSE, &error));
  int spy = dup(sp[1]);
  g_assert_true(ferry_mux_attach(p.host, sp[0], &error));
  g_assert_true(ferry_mux_attach(p.guest, sp[1], &error));
  pair_wait_synced(&p);
  guint lost_before = p.lost;
  /* A frame with a bad magic on a synced stream is a protocol error. */
  g_assert_cmpint(write(spy, "garbage-garbage-garbage-", 24), ==, 24);
  close(spy);
  gint64 until = g_get_monotonic_time() + 5 * G_USEC_PER_SEC;
  while (ferry_mux_is_attached(p.host) && g_get_monotonic_time() < until)
    g_main_context_iteration(NULL, TRUE);
  g_assert_false(ferry_mux_is_attached(p.host));
  g_assert_cmpuint(p.lost, >, lost_before);
  g_assert_false(he.closed);
  /* A new stream: the channel resumes. */
  pair_connect(&p);
  end_bind(&ge, g);
  Two t = { &he, &ge };
  run_until(both_complete, &t, 10);
  g_assert_cmpuint(he.mismatches, ==, 0);
  end_clear(&ge);
  end_clear(&he);
  pair_clear(&p);
}

/* The transport view may outlive ferry_mux_free(): its calls fail, nothing is freed
 * twice (run under ASan). */
static void test_transport_outlives_free(void)
{
  FerryMux *m = ferry_mux_new(FERRY_MUX_HOST);
  FerryTransport *t = ferry_transport_ref(ferry_mux_get_transport(m));
  ferry_mux_free(m);
  g_autoptr(GError) error = NULL;
  g_assert_false(ferry_transport_listen(t, 5, on_accept, NULL, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE);
  Pair p = { 0 };
  ferry_transport_dial(t, 5, on_dialed, &p);
  g_assert_true(test_run_until(&p.dial_done, 2000));
  g_assert_error(p.dial_error, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE);
  g_clear_error(&p.dial_error);
  ferry_transport_unref(t);
}

static void test_state_serialization(void)
{
  FerryMuxChannelState s = { .id = 7,
                             .port = PORT,
                             .established = TRUE,
                             .recv_consumed = 100,
                             .recv_window = 4096,
                             .peer_shut = TRUE,
                             .peer_final = 150,
                             .send_acked = 10,
                             .send_total = 13,
                             .unacked = g_bytes_new("abc", 3),
                             .peer_window = 8192,
                             .shut = TRUE };
  g_autoptr(GBytes) b = ferry_mux_channel_state_serialize(&s);
  FerryMuxChannelState back;
  g_autoptr(GError) error = NULL;
  g_assert_true(ferry_mux_channel_state_deserialize(b, &back, &error));
  g_assert_cmpuint(back.id, ==, 7);
  g_assert_cmpuint(back.recv_consumed, ==, 100);
  g_assert_cmpuint(back.peer_final, ==, 150);
  g_assert_true(back.peer_shut && back.shut && back.established && !back.eof_emitted);
  g_assert_cmpmem(g_bytes_get_data(back.unacked, NULL), 3, "abc", 3);
  ferry_mux_channel_state_clear(&back);
  /* Truncated, or offsets that disagree with the bytes: refused. */
  gsize len;
  const guint8 *data = g_bytes_get_data(b, &len);
  g_autoptr(GBytes) cut = g_bytes_new(data, len - 1);
  g_assert_false(ferry_mux_channel_state_deserialize(cut, &back, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
  g_clear_error(&error);
  g_autoptr(GBytes) tiny = g_bytes_new("x", 1);
  g_assert_false(ferry_mux_channel_state_deserialize(tiny, &back, &error));
  g_clear_error(&error);
  /* Import refuses inconsistent state. */
  g_autoptr(FerryMux) m = ferry_mux_new(FERRY_MUX_HOST);
  s.send_total = 20;
  g_assert_null(ferry_mux_import_channel(m, &s, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
  ferry_mux_channel_state_clear(&s);
}

/* Loops here block in the main loop; a tick keeps their time limits effective. */
static gboolean tick(gpointer p)
{
  return G_SOURCE_CONTINUE;
}

int main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_timeout_add(100, tick, NULL);
  g_test_add_func("/mux/open-and-exchange", test_open_and_exchange);
  g_test_add_func("/mux/dial-refused", test_dial_refused);
  g_test_add_func("/mux/acked-after-peer-consumed", test_acked_after_peer_consumed);
  g_test_add_func("/mux/freeze-holds-everything", test_freeze_holds_everything);
  g_test_add_func("/mux/writable-handler-may-close", test_writable_handler_may_close);
  g_test_add_func("/mux/dial-before-attach", test_dial_before_attach);
  g_test_add_func("/mux/stalled-reader-does-not-block-others",
                  test_stalled_reader_does_not_block_others);
  g_test_add_func("/mux/close-resets-peer", test_close_resets_peer);
  g_test_add_func("/mux/let-go-finishes-gracefully", test_let_go_finishes_gracefully);
  g_test_add_func("/mux/exactly-once-across-breaks", test_exactly_once_across_breaks);
  g_test_add_func("/mux/exactly-once-across-new-host-objects",
                  test_exactly_once_across_new_host_objects);
  g_test_add_func("/mux/peer-lost-channel", test_peer_lost_channel);
  g_test_add_func("/mux/imported-eof-waits-for-handlers", test_imported_eof_waits_for_handlers);
  g_test_add_func("/mux/host-moves-under-continuing-guest-stream",
                  test_host_moves_under_continuing_guest_stream);
  g_test_add_func("/mux/resync-skips-garbage", test_resync_skips_garbage);
  g_test_add_func("/mux/protocol-error-drops-stream-only", test_protocol_error_drops_stream_only);
  g_test_add_func("/mux/state-serialization", test_state_serialization);
  g_test_add_func("/mux/transport-outlives-free", test_transport_outlives_free);
  return g_test_run();
}
