/*
 * Unary ttrpc benchmark, the C side (bench/run-ttrpc.sh runs it against the Go side,
 * tests/interop/go "ferrypeer bench-server" / "bench-client").
 *
 *   ttrpc-bench server -socket PATH
 *   ttrpc-bench client -socket PATH -concurrency C -duration D -payload BYTES
 *
 * The server serves ferry.test.v1.Interop (tests/common/interop-service.c). The
 * client keeps C Echo calls in flight on ONE connection for D ("3s", "500ms" or plain
 * seconds), each with a value of BYTES 'a', and prints
 *
 *   rps=<n> p50_us=<n> p99_us=<n> calls=<n> errors=<n>
 *
 * with the same definitions as the Go bench-client: calls counts successful calls, rps
 * is calls per second of wall time from the first call until the last answer, and the
 * percentiles are nearest-rank over the latencies of the successful calls.
 */
#include <stdio.h>
#include <string.h>

#include <ferry/error.h>
#include <ferry/ttrpc.h>

#include "google/protobuf/wrappers.pb-c.h"
#include "interop-service.h"

/* ------------------------------------------------------------------ server -- */

/* ------------------------------------------------------------------ client -- */

typedef struct {
  FerryTtrpcClient *client;
  GMainLoop *loop;
  Google__Protobuf__StringValue request;
  gsize want_len; /* length of the Echo answer: value + "|md=" */
  gint64 stop_at; /* monotonic us: no call starts after this */
  guint in_flight;
  GArray *latencies; /* gint64 microseconds of each successful call */
  guint64 errors;
  GError *first_error;
} Bench;

typedef struct {
  Bench *bench;
  gint64 started;
} BenchCall;

static void start_call(Bench *bench, BenchCall *call);

static void on_reply(FerryTtrpcClient *client, const ProtobufCMessage *response,
                     const GError *error, gpointer user_data)
{
  BenchCall *call = user_data;
  Bench *bench = call->bench;
  gint64 now = g_get_monotonic_time();

  if (error == NULL &&
      strlen(((const Google__Protobuf__StringValue *)response)->value) == bench->want_len) {
    gint64 latency = now - call->started;
    g_array_append_val(bench->latencies, latency);
  } else {
    bench->errors++;
    if (bench->first_error == NULL)
      bench->first_error = error != NULL ? g_error_copy(error)
                                         : g_error_new_literal(FERRY_ERROR, FERRY_ERROR_INTERNAL,
                                                               "wrong Echo answer");
  }

  if (now < bench->stop_at && ferry_ttrpc_client_is_connected(bench->client)) {
    start_call(bench, call);
    return;
  }
  g_free(call);
  if (--bench->in_flight == 0)
    g_main_loop_quit(bench->loop);
}

static void start_call(Bench *bench, BenchCall *call)
{
  call->started = g_get_monotonic_time();
  ferry_ttrpc_client_call(bench->client, FERRY_TEST_INTEROP_SERVICE, "Echo", &bench->request.base,
                          &google__protobuf__string_value__descriptor, NULL, on_reply, call);
}

static gint compare_gint64(gconstpointer a, gconstpointer b)
{
  gint64 x = *(const gint64 *)a, y = *(const gint64 *)b;
  return (x > y) - (x < y);
}

/* Nearest rank: the smallest latency with at least p of all latencies at or below. */
static gint64 percentile(const GArray *sorted, guint percent)
{
  if (sorted->len == 0)
    return 0;
  guint64 rank = ((guint64)percent * sorted->len + 99) / 100;
  return g_array_index(sorted, gint64, rank > 0 ? rank - 1 : 0);
}

/* "3s", "500ms", "2.5" (seconds) -> microseconds; FALSE if unparsable. */
static gboolean parse_duration(const char *text, gint64 *usec_out)
{
  char *end = NULL;
  double value = g_ascii_strtod(text, &end);
  if (end == text || value < 0)
    return FALSE;
  double scale;
  if (*end == '\0' || g_str_equal(end, "s"))
    scale = G_USEC_PER_SEC;
  else if (g_str_equal(end, "ms"))
    scale = 1000;
  else if (g_str_equal(end, "m"))
    scale = 60.0 * G_USEC_PER_SEC;
  else
    return FALSE;
  *usec_out = (gint64)(value * scale);
  return TRUE;
}

static int run_client(const char *socket_path, guint concurrency, gint64 duration_us, gsize payload)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(FerryTtrpcClient) client = ferry_ttrpc_client_connect_unix(socket_path, &error);
  if (client == NULL) {
    fprintf(stderr, "ttrpc-bench client: %s\n", error->message);
    return 1;
  }

  g_autofree char *value = g_malloc(payload + 1);
  memset(value, 'a', payload);
  value[payload] = '\0';
  g_autoptr(GMainLoop) loop = g_main_loop_new(NULL, FALSE);
  g_autoptr(GArray) latencies = g_array_sized_new(FALSE, FALSE, sizeof(gint64), 1 << 18);
  Bench bench = {
    .client = client,
    .loop = loop,
    .request = GOOGLE__PROTOBUF__STRING_VALUE__INIT,
    .want_len = payload + strlen("|md="),
    .latencies = latencies,
  };
  bench.request.value = value;

  gint64 start = g_get_monotonic_time();
  bench.stop_at = start + duration_us;
  for (guint i = 0; i < concurrency; i++) {
    BenchCall *call = g_new0(BenchCall, 1);
    call->bench = &bench;
    bench.in_flight++;
    start_call(&bench, call);
  }
  g_main_loop_run(loop);
  double elapsed_s = (double)(g_get_monotonic_time() - start) / G_USEC_PER_SEC;

  g_array_sort(latencies, compare_gint64);
  double rps = latencies->len / elapsed_s;
  printf("rps=%.0f p50_us=%" G_GINT64_FORMAT " p99_us=%" G_GINT64_FORMAT
         " calls=%u errors=%" G_GUINT64_FORMAT "\n",
         rps, percentile(latencies, 50), percentile(latencies, 99), latencies->len, bench.errors);
  if (bench.first_error != NULL) {
    fprintf(stderr, "ttrpc-bench client: first error: %s\n", bench.first_error->message);
    g_error_free(bench.first_error);
  }
  return 0;
}

/* ------------------------------------------------------------------- main -- */

static int usage(const char *argv0)
{
  fprintf(stderr,
          "usage: %s server -socket PATH\n"
          "       %s client -socket PATH [-concurrency C] [-duration D] [-payload BYTES]\n",
          argv0, argv0);
  return 2;
}

int main(int argc, char **argv)
{
  if (argc < 2)
    return usage(argv[0]);
  const char *mode = argv[1];
  const char *socket_path = NULL;
  guint64 concurrency = 32, payload = 128;
  gint64 duration_us = 3 * G_USEC_PER_SEC;

  for (int i = 2; i < argc; i += 2) {
    const char *flag = argv[i];
    const char *arg = i + 1 < argc ? argv[i + 1] : NULL;
    if (arg == NULL)
      return usage(argv[0]);
    while (*flag == '-')
      flag++;
    gboolean ok = TRUE;
    if (g_str_equal(flag, "socket"))
      socket_path = arg;
    else if (g_str_equal(flag, "concurrency"))
      ok = g_ascii_string_to_unsigned(arg, 10, 1, 100000, &concurrency, NULL);
    else if (g_str_equal(flag, "payload"))
      ok = g_ascii_string_to_unsigned(arg, 10, 0, FERRY_TTRPC_MAX_DATA / 2, &payload, NULL);
    else if (g_str_equal(flag, "duration"))
      ok = parse_duration(arg, &duration_us);
    else
      ok = FALSE;
    if (!ok) {
      fprintf(stderr, "%s: bad option %s %s\n", argv[0], argv[i], arg);
      return usage(argv[0]);
    }
  }
  if (socket_path == NULL)
    return usage(argv[0]);

  if (g_str_equal(mode, "server"))
    return ferry_test_interop_serve(socket_path, "ttrpc-bench server");
  if (g_str_equal(mode, "client"))
    return run_client(socket_path, (guint)concurrency, duration_us, (gsize)payload);
  return usage(argv[0]);
}
