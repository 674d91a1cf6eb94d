/* FerryStream: the byte stream under ttrpc and the bridge. */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "ferry/error.h"
#include "ferry/fd.h"
#include "ferry/stream.h"
#include "test-util.h"

typedef struct {
  GByteArray *got;
  gboolean closed;
  GError *close_error;
  gboolean echo; /* write back what arrives, from inside the data handler */
} Sink;

static void on_data(FerryStream *s, const guint8 *data, gsize len, gpointer ud)
{
  Sink *sink = ud;
  g_byte_array_append(sink->got, data, (guint)len);
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

static const FerryStreamHandlers handlers = { on_data, on_closed };

static FerryStream *make_stream(Sink *sink, int *peer)
{
  g_autoptr(GError) error = NULL;
  int sp[2];
  g_assert_true(ferry_socketpair(sp, FALSE, &error));
  sink->got = g_byte_array_new();
  FerryStream *s = ferry_stream_new(sp[0], "test", &handlers, sink, &error);
  g_assert_no_error(error);
  *peer = sp[1];
  return s;
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
  g_assert_true(sink.closed);
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

int main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/stream/reads-and-echoes", test_reads_and_echoes);
  g_test_add_func("/stream/peer-close-reported-once", test_peer_close_reported_once);
  g_test_add_func("/stream/output-cap-closes", test_output_cap_closes);
  g_test_add_func("/stream/large-write-drains", test_large_write_drains);
  return g_test_run();
}
