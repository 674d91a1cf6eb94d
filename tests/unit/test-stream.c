/* FerryStream: the byte stream under ttrpc and the bridge. */
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ferry/error.h"
#include "ferry/fd.h"
#include "ferry/stream.h"
#include "test-util.h"

typedef struct {
  GByteArray *got;
  gboolean closed;
  GError *close_error;
  gboolean echo;          /* write back what arrives, from inside the data handler */
  gboolean pause_on_data; /* stop reading after each data call */
  guint data_calls;
  gboolean eof;
  guint drained;
} Sink;

static void on_data(FerryStream *s, const guint8 *data, gsize len, gpointer ud)
{
  Sink *sink = ud;
  sink->data_calls++;
  g_byte_array_append(sink->got, data, (guint)len);
  if (sink->pause_on_data)
    ferry_stream_set_reading(s, FALSE);
  if (sink->echo) {
    g_autoptr(GError) error = NULL;
    g_assert_true(ferry_stream_write(s, data, len, &error));
    /* Inside the handler nothing is written until it returns. */
    g_assert_cmpuint(ferry_stream_pending_output(s), >=, len);
  }
}

static void on_closed(FerryStream *s, const GError *error, gpointer ud)
{
  Sink *sink = ud;
  g_assert_false(sink->closed);
  sink->closed = TRUE;
  if (error != NULL)
    sink->close_error = g_error_copy(error);
}

static void on_eof(FerryStream *s, gpointer ud)
{
  Sink *sink = ud;
  g_assert_false(sink->eof);
  sink->eof = TRUE;
}

static void on_drained(FerryStream *s, gpointer ud)
{
  Sink *sink = ud;
  g_assert_cmpuint(ferry_stream_pending_output(s), ==, 0);
  sink->drained++;
}

static const FerryStreamHandlers handlers = { on_data, on_closed };
static const FerryStreamHandlers half_close_handlers = {
  .data = on_data,
  .closed = on_closed,
  .eof = on_eof,
  .drained = on_drained,
};

static FerryStream *make_stream_with(Sink *sink, int *peer, const FerryStreamHandlers *h)
{
  g_autoptr(GError) error = NULL;
  int sp[2];
  g_assert_true(ferry_socketpair(sp, FALSE, &error));
  sink->got = g_byte_array_new();
  FerryStream *s = ferry_stream_new(sp[0], "test", h, sink, &error);
  g_assert_no_error(error);
  *peer = sp[1];
  return s;
}

static FerryStream *make_stream(Sink *sink, int *peer)
{
  return make_stream_with(sink, peer, &handlers);
}

/* Run the loop without blocking until nothing is ready; how many rounds dispatched. */
static guint spin(void)
{
  guint rounds = 0;
  while (rounds < 1000 && g_main_context_iteration(NULL, FALSE))
    rounds++;
  return rounds;
}

static void sink_clear(Sink *sink)
{
  g_byte_array_unref(sink->got);
  g_clear_error(&sink->close_error);
}

static void test_reads_and_echoes(void)
{
  Sink sink = { .echo = TRUE };
  int peer;
  FerryStream *s = make_stream(&sink, &peer);
  g_assert_cmpint(write(peer, "hello", 5), ==, 5);
  while (sink.got->len < 5)
    g_main_context_iteration(NULL, TRUE);
  g_assert_cmpmem(sink.got->data, sink.got->len, "hello", 5);
  /* The echo was flushed when the handler returned. */
  char buf[8];
  g_assert_cmpint(read(peer, buf, sizeof(buf)), ==, 5);
  g_assert_cmpmem(buf, 5, "hello", 5);
  g_assert_cmpuint(ferry_stream_pending_output(s), ==, 0);
  ferry_stream_unref(s);
  close(peer);
  g_assert_false(sink.closed); /* unref does not run the handler */
  sink_clear(&sink);
}

static void test_peer_close_reported_once(void)
{
  Sink sink = { 0 };
  int peer;
  FerryStream *s = make_stream(&sink, &peer);
  close(peer);
  g_assert_true(test_run_until(&sink.closed, 2000));
  g_assert_error(sink.close_error, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE);
  g_assert_cmpstr(sink.close_error->message, ==, "test connection closed by peer");
  g_assert_false(ferry_stream_is_open(s));
  ferry_stream_close(s, NULL); /* idempotent: the handler does not run again */
  g_autoptr(GError) error = NULL;
  g_assert_null(ferry_stream_reserve(s, 1, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE);
  ferry_stream_unref(s);
  sink_clear(&sink);
}

/* A peer that never reads: writes queue up to the cap, then the stream closes. */
static void test_output_cap_closes(void)
{
  Sink sink = { 0 };
  int peer;
  FerryStream *s = make_stream(&sink, &peer);
  ferry_stream_set_max_output(s, 1 << 20);
  g_autofree guint8 *chunk = g_malloc0(64 * 1024);
  g_autoptr(GError) error = NULL;
  int i;
  for (i = 0; i < 1000; i++) {
    if (!ferry_stream_write(s, chunk, 64 * 1024, &error))
      break;
  }
  g_assert_cmpint(i, <, 1000);
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_RESOURCE_EXHAUSTED);
  /* Closed at once, reported from the main loop, not inside the write. */
  g_assert_false(ferry_stream_is_open(s));
  g_assert_false(sink.closed);
  g_assert_true(test_run_until(&sink.closed, 2000));
  g_assert_error(sink.close_error, FERRY_ERROR, FERRY_ERROR_RESOURCE_EXHAUSTED);
  ferry_stream_unref(s);
  close(peer);
  sink_clear(&sink);
}

/* Passing the cap without asking for the error still closes the stream, with the
 * reason going to the closed handler. */
static void test_output_cap_without_error_arg(void)
{
  Sink sink = { 0 };
  int peer;
  FerryStream *s = make_stream(&sink, &peer);
  ferry_stream_set_max_output(s, 16);
  g_assert_false(ferry_stream_write(s, "0123456789abcdefg", 17, NULL));
  g_assert_false(sink.closed);
  g_assert_true(test_run_until(&sink.closed, 2000));
  g_assert_error(sink.close_error, FERRY_ERROR, FERRY_ERROR_RESOURCE_EXHAUSTED);
  ferry_stream_unref(s);
  close(peer);
  sink_clear(&sink);
}

/* Output that does not fit the socket buffer at once goes out as the peer reads. */
static void test_large_write_drains(void)
{
  Sink sink = { 0 };
  int peer;
  FerryStream *s = make_stream(&sink, &peer);
  gsize total = 8u << 20;
  g_autofree guint8 *big = g_malloc(total);
  for (gsize i = 0; i < total; i++)
    big[i] = (guint8)(i * 7);
  g_autoptr(GError) error = NULL;
  g_assert_true(ferry_stream_write(s, big, total, &error));
  g_assert_cmpuint(ferry_stream_pending_output(s), >, 0);
  g_assert_true(ferry_fd_set_nonblocking(peer, TRUE, &error));
  g_autofree guint8 *back = g_malloc(total);
  gsize got = 0;
  while (got < total) {
    ssize_t n = read(peer, back + got, total - got);
    if (n > 0)
      got += (gsize)n;
    else
      g_main_context_iteration(NULL, FALSE);
  }
  g_assert_cmpmem(back, total, big, total);
  ferry_stream_unref(s);
  close(peer);
  sink_clear(&sink);
}

/* While reading is stopped nothing more is read, also not in the same wake-up. */
static void test_set_reading_pauses_and_resumes(void)
{
  Sink sink = { .pause_on_data = TRUE };
  int peer;
  FerryStream *s = make_stream(&sink, &peer);
  ferry_stream_set_max_output(s, 1 << 20);
  g_autofree guint8 *chunk = g_malloc0(200 * 1024);
  g_assert_true(ferry_fd_set_nonblocking(peer, TRUE, NULL));
  gssize n = write(peer, chunk, 200 * 1024);
  g_assert_cmpint(n, >, 64 * 1024); /* more than one read's worth */
  while (sink.data_calls == 0)
    g_main_context_iteration(NULL, TRUE);
  spin();
  g_assert_cmpuint(sink.data_calls, ==, 1);
  guint got = sink.got->len;
  g_assert_cmpuint(got, <, (gsize)n);
  /* Writing goes on while reading is stopped. */
  g_autoptr(GError) error = NULL;
  g_assert_true(ferry_stream_write(s, "x", 1, &error));
  char c;
  g_assert_cmpint(read(peer, &c, 1), ==, 1);
  sink.pause_on_data = FALSE;
  ferry_stream_set_reading(s, TRUE);
  while (sink.got->len < (gsize)n)
    g_main_context_iteration(NULL, TRUE);
  g_assert_cmpuint(sink.got->len, ==, (gsize)n);
  ferry_stream_unref(s);
  close(peer);
  sink_clear(&sink);
}

/* A stopped stream whose peer hung up does not wake the loop over and over. */
static void test_paused_stream_ignores_hangup(void)
{
  Sink sink = { 0 };
  int peer;
  FerryStream *s = make_stream(&sink, &peer);
  ferry_stream_set_reading(s, FALSE);
  g_assert_cmpint(write(peer, "abc", 3), ==, 3);
  close(peer);
  g_assert_cmpuint(spin(), <, 10);
  g_assert_cmpuint(sink.got->len, ==, 0);
  g_assert_false(sink.closed);
  ferry_stream_set_reading(s, TRUE);
  g_assert_true(test_run_until(&sink.closed, 2000));
  g_assert_cmpmem(sink.got->data, sink.got->len, "abc", 3);
  ferry_stream_unref(s);
  sink_clear(&sink);
}

/* With an eof handler end of stream is a half-close: the stream still writes. */
static void test_eof_handler_keeps_writing(void)
{
  Sink sink = { 0 };
  int peer;
  FerryStream *s = make_stream_with(&sink, &peer, &half_close_handlers);
  g_assert_cmpint(write(peer, "req", 3), ==, 3);
  g_assert_cmpint(shutdown(peer, SHUT_WR), ==, 0);
  g_assert_true(test_run_until(&sink.eof, 2000));
  g_assert_cmpmem(sink.got->data, sink.got->len, "req", 3);
  g_assert_false(sink.closed);
  g_assert_true(ferry_stream_is_open(s));
  g_assert_cmpuint(spin(), <, 10); /* nothing left to watch: no busy loop */
  g_autoptr(GError) error = NULL;
  g_assert_true(ferry_stream_write(s, "resp", 4, &error));
  char buf[8];
  g_assert_cmpint(read(peer, buf, sizeof(buf)), ==, 4);
  g_assert_cmpmem(buf, 4, "resp", 4);
  ferry_stream_unref(s);
  close(peer);
  g_assert_false(sink.closed);
  sink_clear(&sink);
}

/* shutdown_write: the peer reads all pending output, then end of stream; later writes
 * fail without closing the stream, and reading goes on. */
static void test_shutdown_write_after_output(void)
{
  Sink sink = { 0 };
  int peer;
  FerryStream *s = make_stream_with(&sink, &peer, &half_close_handlers);
  gsize total = 4u << 20;
  g_autofree guint8 *big = g_malloc(total);
  for (gsize i = 0; i < total; i++)
    big[i] = (guint8)(i * 13);
  g_autoptr(GError) error = NULL;
  g_assert_true(ferry_stream_write(s, big, total, &error));
  g_assert_cmpuint(ferry_stream_pending_output(s), >, 0);
  ferry_stream_shutdown_write(s);
  g_assert_false(ferry_stream_write(s, "x", 1, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION);
  g_assert_true(ferry_stream_is_open(s));
  g_assert_true(ferry_fd_set_nonblocking(peer, TRUE, NULL));
  g_autofree guint8 *back = g_malloc(total + 1);
  gsize got = 0;
  gint64 deadline = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;
  for (;;) {
    g_assert_cmpint(g_get_monotonic_time(), <, deadline); /* end of stream never came */
    ssize_t n = read(peer, back + got, total + 1 - got);
    if (n == 0)
      break;
    if (n > 0)
      got += (gsize)n;
    else
      g_main_context_iteration(NULL, FALSE);
  }
  g_assert_cmpmem(back, got, big, total);
  g_assert_cmpint(write(peer, "in", 2), ==, 2);
  while (sink.got->len < 2)
    g_main_context_iteration(NULL, TRUE);
  g_assert_cmpmem(sink.got->data, sink.got->len, "in", 2);
  ferry_stream_unref(s);
  close(peer);
  sink_clear(&sink);
}

/* drained runs once output that waited for the peer is all written, not for output
 * that went out at once. */
static void test_drained_after_blocked_output(void)
{
  Sink sink = { 0 };
  int peer;
  FerryStream *s = make_stream_with(&sink, &peer, &half_close_handlers);
  g_autoptr(GError) error = NULL;
  g_assert_true(ferry_stream_write(s, "small", 5, &error));
  g_assert_cmpuint(ferry_stream_pending_output(s), ==, 0);
  spin();
  g_assert_cmpuint(sink.drained, ==, 0);
  gsize total = 4u << 20;
  g_autofree guint8 *big = g_malloc0(total);
  g_assert_true(ferry_stream_write(s, big, total, &error));
  g_assert_cmpuint(ferry_stream_pending_output(s), >, 0);
  g_assert_true(ferry_fd_set_nonblocking(peer, TRUE, NULL));
  g_autofree guint8 *back = g_malloc(total + 5);
  gsize got = 0;
  while (got < total + 5) {
    ssize_t n = read(peer, back + got, total + 5 - got);
    if (n > 0)
      got += (gsize)n;
    else
      g_main_context_iteration(NULL, FALSE);
  }
  spin();
  g_assert_cmpuint(sink.drained, ==, 1);
  ferry_stream_unref(s);
  close(peer);
  sink_clear(&sink);
}

/* Output written from inside the data handler waited for it to return: drained runs. */
static void test_drained_after_deferred_output(void)
{
  Sink sink = { .echo = TRUE };
  int peer;
  FerryStream *s = make_stream_with(&sink, &peer, &half_close_handlers);
  g_assert_cmpint(write(peer, "ping", 4), ==, 4);
  while (sink.got->len < 4)
    g_main_context_iteration(NULL, TRUE);
  g_assert_cmpuint(sink.drained, ==, 1);
  char buf[4];
  g_assert_cmpint(read(peer, buf, sizeof(buf)), ==, 4);
  ferry_stream_unref(s);
  close(peer);
  sink_clear(&sink);
}

/* An fd rides with its first byte, in order with the bytes around it. */
static void test_write_with_fd(void)
{
  Sink sink = { 0 };
  int peer;
  FerryStream *s = make_stream(&sink, &peer);
  g_autoptr(GError) error = NULL;
  int p[2];
  g_assert_cmpint(pipe(p), ==, 0);
  g_assert_true(ferry_stream_write(s, "ab", 2, &error));
  g_assert_true(ferry_stream_write_with_fd(s, "cd", 2, p[1], &error));
  g_assert_true(ferry_stream_write(s, "ef", 2, &error));
  close(p[1]); /* the stream sent its own copy */
  char buf[16];
  gsize got = 0, n;
  int fd = -1, received_at = -1;
  while (got < 6) {
    int one;
    g_assert_true(ferry_fd_recv(peer, buf + got, sizeof(buf) - got, &n, &one, &error));
    if (one >= 0) {
      fd = one;
      received_at = (int)got;
    }
    got += n;
  }
  g_assert_cmpmem(buf, 6, "abcdef", 6);
  /* No later than with "cd" (the kernel may merge it with the bytes before). */
  g_assert_cmpint(received_at, >=, 0);
  g_assert_cmpint(received_at, <=, 2);
  g_assert_cmpint(write(fd, "!", 1), ==, 1);
  char c;
  g_assert_cmpint(read(p[0], &c, 1), ==, 1);
  close(fd);
  close(p[0]);
  /* Not on a pipe, and not without a byte. */
  g_assert_false(ferry_stream_write_with_fd(s, "", 0, 0, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
  ferry_stream_unref(s);
  close(peer);
  sink_clear(&sink);
}

/* The peer is gone (EPIPE): the write fails and closes the stream, and the closed
 * handler runs afterwards from the main loop, once, with that cause. */
static void test_write_to_closed_peer_reports_later(void)
{
  Sink sink = { 0 };
  int peer;
  FerryStream *s = make_stream(&sink, &peer);
  close(peer);
  g_autoptr(GError) error = NULL;
  g_assert_false(ferry_stream_write(s, "x", 1, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE);
  g_assert_false(ferry_stream_is_open(s));
  g_assert_false(sink.closed);
  /* Another call before the report: the same cause, still no handler. */
  g_autoptr(GError) again = NULL;
  g_assert_false(ferry_stream_write(s, "y", 1, &again));
  g_assert_cmpstr(again->message, ==, error->message);
  g_assert_false(sink.closed);
  g_assert_true(test_run_until(&sink.closed, 2000));
  g_assert_cmpstr(sink.close_error->message, ==, error->message);
  spin();
  ferry_stream_unref(s); /* on_closed asserts it ran once */
  sink_clear(&sink);
}

/* A committed reservation that fails reports from the main loop too. */
static void test_commit_to_closed_peer_reports_later(void)
{
  Sink sink = { 0 };
  int peer;
  FerryStream *s = make_stream(&sink, &peer);
  close(peer);
  g_autoptr(GError) error = NULL;
  guint8 *p = ferry_stream_reserve(s, 1, &error);
  g_assert_nonnull(p);
  *p = 'x';
  ferry_stream_commit(s);
  g_assert_false(ferry_stream_is_open(s));
  g_assert_false(sink.closed);
  g_assert_true(test_run_until(&sink.closed, 2000));
  g_assert_error(sink.close_error, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE);
  ferry_stream_unref(s);
  sink_clear(&sink);
}

/* ferry_stream_close() while a failure waits to be reported: the handler runs now, with
 * the failure's cause, and not again later. */
static void test_close_reports_pending_failure(void)
{
  Sink sink = { 0 };
  int peer;
  FerryStream *s = make_stream(&sink, &peer);
  ferry_stream_set_max_output(s, 4);
  g_assert_false(ferry_stream_write(s, "too long", 8, NULL));
  g_assert_false(sink.closed);
  ferry_stream_close(s, NULL);
  g_assert_true(sink.closed);
  g_assert_error(sink.close_error, FERRY_ERROR, FERRY_ERROR_RESOURCE_EXHAUSTED);
  spin();
  ferry_stream_unref(s);
  close(peer);
  sink_clear(&sink);
}

/* The last unref drops a report not yet made: no handler runs after the owner let go. */
static void test_unref_drops_pending_report(void)
{
  Sink sink = { 0 };
  int peer;
  FerryStream *s = make_stream(&sink, &peer);
  close(peer);
  g_assert_false(ferry_stream_write(s, "x", 1, NULL));
  ferry_stream_unref(s);
  spin();
  g_assert_false(sink.closed);
  sink_clear(&sink);
}

/* Every handler runs on the context that was thread-default when the stream was made. */
static void test_handlers_on_creation_context(void)
{
  GMainContext *ctx = g_main_context_new();
  g_main_context_push_thread_default(ctx);
  Sink sink = { 0 };
  int peer;
  FerryStream *s = make_stream(&sink, &peer);
  g_main_context_pop_thread_default(ctx);
  close(peer);
  g_assert_false(ferry_stream_write(s, "x", 1, NULL));
  spin(); /* the global default context: nothing there */
  g_assert_false(sink.closed);
  while (!sink.closed)
    g_main_context_iteration(ctx, TRUE);
  ferry_stream_unref(s);
  sink_clear(&sink);
  g_main_context_unref(ctx);
}

int main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/stream/reads-and-echoes", test_reads_and_echoes);
  g_test_add_func("/stream/peer-close-reported-once", test_peer_close_reported_once);
  g_test_add_func("/stream/output-cap-closes", test_output_cap_closes);
  g_test_add_func("/stream/output-cap-without-error-arg", test_output_cap_without_error_arg);
  g_test_add_func("/stream/large-write-drains", test_large_write_drains);
  g_test_add_func("/stream/set-reading-pauses-and-resumes", test_set_reading_pauses_and_resumes);
  g_test_add_func("/stream/paused-stream-ignores-hangup", test_paused_stream_ignores_hangup);
  g_test_add_func("/stream/eof-handler-keeps-writing", test_eof_handler_keeps_writing);
  g_test_add_func("/stream/shutdown-write-after-output", test_shutdown_write_after_output);
  g_test_add_func("/stream/drained-after-blocked-output", test_drained_after_blocked_output);
  g_test_add_func("/stream/drained-after-deferred-output", test_drained_after_deferred_output);
  g_test_add_func("/stream/write-with-fd", test_write_with_fd);
  g_test_add_func("/stream/write-to-closed-peer-reports-later",
                  test_write_to_closed_peer_reports_later);
  g_test_add_func("/stream/commit-to-closed-peer-reports-later",
                  test_commit_to_closed_peer_reports_later);
  g_test_add_func("/stream/close-reports-pending-failure", test_close_reports_pending_failure);
  g_test_add_func("/stream/unref-drops-pending-report", test_unref_drops_pending_report);
  g_test_add_func("/stream/handlers-on-creation-context", test_handlers_on_creation_context);
  return g_test_run();
}
