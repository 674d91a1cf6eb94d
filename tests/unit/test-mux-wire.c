/*
 * The mux wire parser's HELLO hunt against hostile input (issue 9 item 3): its cost is
 * bounded by MUX_HUNT_CHECK_BUDGET whatever the guest sends, and honest stale bytes
 * never exhaust it. The mux over real streams is test-mux.c.
 */
#include <string.h>
#include <time.h>

#include "ferry/error.h"
#include "ferry/mux.h"
#include "mux-wire.h"

#define CHUNK (64 * 1024)

static GByteArray *valid_hello(void)
{
  GByteArray *b = g_byte_array_new();
  MuxHelloEntry e = { .id = 3, .port = 0x40000001u, .state = 1, .consumed = 7, .window = 4096 };
  mux_hello_append(b, 1, FALSE, &e, 1);
  return b;
}

/* Feed `data` in chunks; the first result other than NEED_MORE, with its frame. */
static MuxParseResult feed_all(MuxParser *p, const guint8 *data, gsize len, MuxFrame *f,
                               GError **error)
{
  for (gsize at = 0; at < len; at += CHUNK) {
    mux_parser_feed(p, data + at, MIN(CHUNK, len - at));
    MuxParseResult r = mux_parser_next(p, f, error);
    if (r != MUX_PARSE_NEED_MORE)
      return r;
  }
  return MUX_PARSE_NEED_MORE;
}

static double cpu_seconds(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* 16 MiB of HELLO candidates 44 bytes apart, each claiming the largest HELLO and passing
 * every check but its checksum: the hunt gives up once its budget is spent, with a
 * clear error. (Before: every candidate was checksummed, each feed rescanned the
 * buffer: 4 MiB cost 23 s of CPU.) */
static void test_crafted_candidates_bounded(void)
{
  gsize total = 16u << 20, stride = 44;
  g_autofree guint8 *bytes = g_malloc0(total);
  guint32 length = MUX_MAX_HELLO;
  for (gsize at = 0; at + stride <= total; at += stride) {
    guint8 *h = bytes + at;
    mux_put32(h, MUX_MAGIC);
    h[4] = MUX_HELLO;
    mux_put32(h + 12, length);
    memcpy(h + 24, MUX_HELLO_TAG, 8);
    mux_put32(h + 32, MUX_VERSION);
    mux_put32(h + 36, 1);
    mux_put32(h + 40, (length - 24) / MUX_HELLO_ENTRY_SIZE);
  }
  MuxParser *p = mux_parser_new();
  MuxFrame f;
  g_autoptr(GError) error = NULL;
  double t0 = cpu_seconds();
  MuxParseResult r = feed_all(p, bytes, total, &f, &error);
  double cpu = cpu_seconds() - t0;
  g_test_message("16 MiB of crafted HELLO candidates: %.3f s of CPU, %" G_GUINT64_FORMAT
                 " bytes checksummed",
                 cpu, mux_parser_checked(p));
  g_assert_cmpint(r, ==, MUX_PARSE_ERROR);
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_RESOURCE_EXHAUSTED);
  g_assert_nonnull(strstr(error->message, "no valid HELLO"));
  /* The work is bounded by the budget (plus the one candidate that passed it). */
  g_assert_cmpuint(mux_parser_checked(p), <=, MUX_HUNT_CHECK_BUDGET + MUX_MAX_HELLO);
  mux_parser_free(p);
}

/* Honest stale bytes (no HELLO look-alikes), however many, cost no budget: the HELLO
 * after 16 MiB of them is found. */
static void test_plain_stale_bytes_then_hello(void)
{
  gsize stale = 16u << 20;
  g_autoptr(GByteArray) hello = valid_hello();
  g_autoptr(GByteArray) all = g_byte_array_sized_new((guint)(stale + hello->len));
  g_byte_array_set_size(all, (guint)stale);
  for (gsize i = 0; i < stale; i++)
    all->data[i] = (guint8)(i * 31 + 7);
  g_byte_array_append(all, hello->data, hello->len);
  MuxParser *p = mux_parser_new();
  MuxFrame f;
  g_autoptr(GError) error = NULL;
  g_assert_cmpint(feed_all(p, all->data, all->len, &f, &error), ==, MUX_PARSE_FRAME);
  g_assert_no_error(error);
  g_assert_cmpint(f.type, ==, MUX_HELLO);
  g_assert_cmpuint(mux_parser_skipped(p), ==, stale);
  g_assert_cmpuint(mux_parser_checked(p), ==, hello->len - MUX_HEADER_SIZE);
  mux_parser_free(p);
}

/* A stale header claiming more than will ever come, then the real HELLO arriving in
 * two pieces: found when its second piece arrives, though the look-ahead saw it
 * incomplete before. */
static void test_hello_after_stale_header_in_two_feeds(void)
{
  g_autoptr(GByteArray) hello = valid_hello();
  guint8 stale[40] = { 0 };
  mux_put32(stale, MUX_MAGIC);
  stale[4] = MUX_HELLO;
  mux_put32(stale + 12, MUX_MAX_HELLO);
  memcpy(stale + 24, MUX_HELLO_TAG, 8);
  MuxParser *p = mux_parser_new();
  MuxFrame f;
  g_autoptr(GError) error = NULL;
  mux_parser_feed(p, stale, sizeof(stale));
  mux_parser_feed(p, hello->data, 30);
  g_assert_cmpint(mux_parser_next(p, &f, &error), ==, MUX_PARSE_NEED_MORE);
  mux_parser_feed(p, hello->data + 30, hello->len - 30);
  g_assert_cmpint(mux_parser_next(p, &f, &error), ==, MUX_PARSE_FRAME);
  g_assert_no_error(error);
  g_assert_cmpint(f.type, ==, MUX_HELLO);
  g_assert_cmpuint(mux_parser_skipped(p), ==, sizeof(stale));
  mux_parser_free(p);
}

/* A HELLO header claiming more entries than a mux may have is malformed at once (it
 * used to be waited for, up to 1 MiB, and checksummed). */
static void test_hello_over_entry_limit_rejected(void)
{
  g_autoptr(GByteArray) hello = valid_hello();
  MuxParser *p = mux_parser_new();
  MuxFrame f;
  g_autoptr(GError) error = NULL;
  mux_parser_feed(p, hello->data, hello->len);
  g_assert_cmpint(mux_parser_next(p, &f, &error), ==, MUX_PARSE_FRAME);
  guint8 big[24] = { 0 };
  mux_put32(big, MUX_MAGIC);
  big[4] = MUX_HELLO;
  mux_put32(big + 12, MUX_MAX_HELLO + MUX_HELLO_ENTRY_SIZE);
  mux_parser_feed(p, big, sizeof(big));
  g_assert_cmpint(mux_parser_next(p, &f, &error), ==, MUX_PARSE_ERROR);
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
  g_assert_nonnull(strstr(error->message, "malformed HELLO"));
  mux_parser_free(p);
}

int main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/mux-wire/crafted-candidates-bounded", test_crafted_candidates_bounded);
  g_test_add_func("/mux-wire/plain-stale-bytes-then-hello", test_plain_stale_bytes_then_hello);
  g_test_add_func("/mux-wire/hello-after-stale-header-in-two-feeds",
                  test_hello_after_stale_header_in_two_feeds);
  g_test_add_func("/mux-wire/hello-over-entry-limit-rejected",
                  test_hello_over_entry_limit_rejected);
  return g_test_run();
}
