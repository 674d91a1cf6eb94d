/*
 * A hostile guest against the host mux (issue 9 item 2): it floods frames that make the
 * host owe it answers (a RESET for every frame of an unknown channel) and never reads.
 * The host stops reading it (back-pressure) instead of queueing answers without bound,
 * and its main loop stays responsive. And a guest gone before the host notices: the
 * write that finds it gone reports nothing from inside itself.
 */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "ferry/error.h"
#include "ferry/fd.h"
#include "ferry/mux.h"
#include "ferry/source.h"
#include "mux-wire.h"

#define FLOOD_LIMIT (G_GUINT64_CONSTANT(1) << 30)

static gsize rss_bytes(void)
{
  g_autofree char *text = NULL;
  g_assert_true(g_file_get_contents("/proc/self/statm", &text, NULL, NULL));
  g_auto(GStrv) f = g_strsplit(text, " ", 3);
  return (gsize)g_ascii_strtoull(f[1], NULL, 10) * (gsize)sysconf(_SC_PAGESIZE);
}

/* Write what the socket takes; FALSE at EAGAIN. */
static gboolean write_some(int fd, const guint8 *buf, gsize len, guint64 *sent)
{
  ssize_t n = write(fd, buf, len);
  if (n < 0) {
    g_assert_true(errno == EAGAIN || errno == EWOULDBLOCK);
    return FALSE;
  }
  *sent += (guint64)n;
  return TRUE;
}

static FerryMux *host_with_guest_channel(int *guest, FerryChannel **ch, int *lost);
static void guest_send(int guest, MuxType type, const void *payload, guint32 len);
static const FerryChannelHandlers count_handlers;

static gboolean on_tick(gpointer data)
{
  (*(int *)data)++;
  return G_SOURCE_CONTINUE;
}

static void test_unknown_channel_flood_back_pressure(void)
{
  g_autoptr(GError) error = NULL;
  int sp[2];
  g_assert_true(ferry_socketpair(sp, FALSE, &error));
  FerryMux *host = ferry_mux_new(FERRY_MUX_HOST);
  g_assert_true(ferry_mux_attach(host, sp[0], &error));
  int guest = sp[1];
  g_assert_true(ferry_fd_set_nonblocking(guest, TRUE, &error));

  /* The guest's HELLO, then ACK frames (28 bytes) for a channel the host never had. */
  g_autoptr(GByteArray) hello = g_byte_array_new();
  mux_hello_append(hello, FERRY_MUX_GUEST, FALSE, NULL, 0);
  guint64 ignored = 0;
  g_assert_true(write_some(guest, hello->data, hello->len, &ignored));
  g_autoptr(GByteArray) flood = g_byte_array_new();
  guint8 window[4];
  mux_put32(window, 4096);
  while (flood->len < 64 * 1024 - 28)
    mux_frame_append(flood, MUX_ACK, 5, 0, window, 4);

  for (int i = 0; i < 20; i++)
    g_main_context_iteration(NULL, FALSE);
  gsize rss0 = rss_bytes();
  guint64 sent = 0, partial = 0;
  gboolean stalled = FALSE;
  while (sent < FLOOD_LIMIT) {
    /* Keep frames whole: resend the rest of a chunk the socket took in part. */
    gsize off = (gsize)(partial % flood->len);
    guint64 before = sent;
    if (write_some(guest, flood->data + off, flood->len - off, &sent)) {
      partial += sent - before;
      continue;
    }
    if (g_main_context_iteration(NULL, FALSE))
      continue;
    /* Nothing for the host to do, and the socket is full: is it still reading? */
    if (!write_some(guest, flood->data + off, flood->len - off, &sent)) {
      stalled = TRUE;
      break;
    }
    partial += sent - before;
  }
  gsize growth = rss_bytes() - MIN(rss0, rss_bytes());
  g_test_message("flood: %" G_GUINT64_FORMAT " bytes sent before the host stopped reading, host "
                 "RSS grew %" G_GSIZE_FORMAT " KiB",
                 sent, growth / 1024);
  g_assert_true(stalled); /* back-pressure, not 1 GiB taken in */
  g_assert_cmpuint(sent, <, FLOOD_LIMIT);
  g_assert_cmpuint(growth, <, 16u << 20);
  g_assert_true(ferry_mux_is_attached(host)); /* back-pressure, not a dropped stream */

  /* The host's loop stays responsive: a timer on it runs, and it does not spin. */
  int ticks = 0;
  GSource *tick = ferry_timeout_new(NULL, 5, on_tick, &ticks);
  while (ticks < 3)
    g_main_context_iteration(NULL, TRUE);
  ferry_source_clear(&tick);
  guint rounds = 0;
  while (rounds < 100 && g_main_context_iteration(NULL, FALSE))
    rounds++;
  g_assert_cmpuint(rounds, <, 10);
  /* Another guest's connection on the same loop works: its channel opens and carries
   * data while the flooding one is held back. */
  int other_guest;
  FerryChannel *other;
  FerryMux *other_host = host_with_guest_channel(&other_guest, &other, NULL);
  gsize got = 0;
  ferry_channel_set_handlers(other, &count_handlers, &got);
  guest_send(other_guest, MUX_DATA, "still here", 10);
  while (got < 10)
    g_main_context_iteration(NULL, TRUE);
  ferry_channel_unref(other);
  ferry_mux_free(other_host);
  close(other_guest);

  ferry_mux_free(host);
  close(guest);
}

static void on_accept(FerryTransport *t, FerryChannel *ch, gpointer ud)
{
  *(FerryChannel **)ud = ch; /* a new reference for us */
}

static gsize on_channel_data(FerryChannel *ch, const guint8 *data, gsize len, gpointer ud)
{
  *(gsize *)ud += len;
  return len;
}

static const FerryChannelHandlers count_handlers = { .data = on_channel_data };

static void on_lost(FerryMux *mux, const GError *error, gpointer ud)
{
  (*(int *)ud)++;
}

/* The raw guest sends one frame of `type` on channel 5 (offset 0). */
static void guest_send(int guest, MuxType type, const void *payload, guint32 len)
{
  g_autoptr(GByteArray) frame = g_byte_array_new();
  mux_frame_append(frame, type, 5, 0, payload, len);
  g_assert_cmpint(write(guest, frame->data, frame->len), ==, (gssize)frame->len);
}

/* A host mux on a socketpair whose guest end (*guest, raw) has sent its HELLO and an
 * OPEN of channel 5 to the listened port; the accepted channel in *ch. */
static FerryMux *host_with_guest_channel(int *guest, FerryChannel **ch, int *lost)
{
  g_autoptr(GError) error = NULL;
  int sp[2];
  g_assert_true(ferry_socketpair(sp, FALSE, &error));
  FerryMux *host = ferry_mux_new(FERRY_MUX_HOST);
  if (lost != NULL)
    ferry_mux_set_lost_func(host, on_lost, lost);
  *ch = NULL;
  g_assert_true(
      ferry_transport_listen(ferry_mux_get_transport(host), 0x40000001u, on_accept, ch, &error));
  g_assert_true(ferry_mux_attach(host, sp[0], &error));
  g_autoptr(GByteArray) in = g_byte_array_new();
  mux_hello_append(in, FERRY_MUX_GUEST, FALSE, NULL, 0);
  guint8 open[8];
  mux_put32(open, 0x40000001u);
  mux_put32(open + 4, 65536);
  mux_frame_append(in, MUX_OPEN, 5, 0, open, 8);
  g_assert_cmpint(write(sp[1], in->data, in->len), ==, (gssize)in->len);
  while (*ch == NULL)
    g_main_context_iteration(g_main_context_get_thread_default(), TRUE);
  *guest = sp[1];
  return host;
}

/* Issue 9 item 1, the mux pump: the guest is gone; a channel write pumps the mux, whose
 * stream write breaks. The mux learns it from the main loop, once, never inside the
 * application's write. */
static void channel_write_after_peer_closed(void)
{
  int lost = 0, guest;
  FerryChannel *ch;
  FerryMux *host = host_with_guest_channel(&guest, &ch, &lost);
  /* Data from the guest reaches the channel (delivered from the mux's idle). */
  gsize got = 0;
  ferry_channel_set_handlers(ch, &count_handlers, &got);
  guest_send(guest, MUX_DATA, "hello", 5);
  gint64 until = g_get_monotonic_time() + 5 * G_USEC_PER_SEC;
  while (got < 5) {
    g_assert_cmpint(g_get_monotonic_time(), <, until);
    g_main_context_iteration(g_main_context_get_thread_default(), FALSE);
  }
  close(guest);
  ferry_channel_write(ch, "x", 1);
  g_assert_cmpint(lost, ==, 0);
  while (lost == 0)
    g_main_context_iteration(g_main_context_get_thread_default(), TRUE);
  for (int i = 0; i < 50; i++)
    g_main_context_iteration(g_main_context_get_thread_default(), FALSE);
  g_assert_cmpint(lost, ==, 1);
  g_assert_false(ferry_mux_is_attached(host));
  ferry_channel_unref(ch);
  ferry_mux_free(host);
}

static void test_channel_write_after_peer_closed(void)
{
  channel_write_after_peer_closed();
}

/* Issue 9 item 6: the same under a pushed thread-default context; nothing of the mux
 * (its stream, its pump and delivery idles) goes to the global default context. */
static void test_channel_write_on_pushed_context(void)
{
  GMainContext *ctx = g_main_context_new();
  g_main_context_push_thread_default(ctx);
  channel_write_after_peer_closed();
  g_assert_false(g_main_context_pending(NULL));
  g_main_context_pop_thread_default(ctx);
  g_main_context_unref(ctx);
}

static void close_on_eof(FerryChannel *ch, gpointer ud)
{
  (*(int *)ud)++;
  ferry_channel_close(ch);
}

static const FerryChannelHandlers close_on_eof_handlers = { .eof = close_on_eof };

/* An application that closes its channel from inside the eof handler (cmd.c does, to
 * let go of an output once its end is read): the mux does not touch the channel's
 * state afterwards (it did: a use after free under ASan). */
static void test_close_inside_eof_handler(void)
{
  int guest;
  FerryChannel *ch;
  FerryMux *host = host_with_guest_channel(&guest, &ch, NULL);
  int eofs = 0;
  ferry_channel_set_handlers(ch, &close_on_eof_handlers, &eofs);
  guest_send(guest, MUX_SHUTDOWN, NULL, 0);
  while (eofs == 0)
    g_main_context_iteration(NULL, TRUE);
  for (int i = 0; i < 50; i++)
    g_main_context_iteration(NULL, FALSE);
  g_assert_cmpint(eofs, ==, 1);
  g_assert_true(ferry_mux_is_attached(host));
  ferry_channel_unref(ch);
  ferry_mux_free(host);
  close(guest);
}

int main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/mux-flood/unknown-channel-flood-back-pressure",
                  test_unknown_channel_flood_back_pressure);
  g_test_add_func("/mux-flood/channel-write-after-peer-closed",
                  test_channel_write_after_peer_closed);
  g_test_add_func("/mux-flood/channel-write-on-pushed-context",
                  test_channel_write_on_pushed_context);
  g_test_add_func("/mux-flood/close-inside-eof-handler", test_close_inside_eof_handler);
  return g_test_run();
}
