/*
 * ttrpc client and server over real sockets: the server checked byte for byte from a
 * raw socket (the bytes containerd's Go ttrpc sends and expects, docs section 1.9),
 * and the client against the server: deadlines, cancellation on close, out-of-order
 * replies, streaming, limits, and every malformed input we could think of.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "ferry/error.h"
#include "ferry/fd.h"
#include "ferry/source.h"
#include "ferry/ttrpc.h"
#include "interop-service.h"
#include "test-util.h"
#include "ttrpc/envelope.pb-c.h"

#define SVC FERRY_TEST_INTEROP_SERVICE

typedef Google__Protobuf__StringValue StringValue;

/* A server with the interop service and one raw client socket connected to it. */
typedef struct {
  FerryTtrpcServer *server;
  int raw; /* the test's end: non-blocking */
  FerryTtrpcParser *parser;
} RawFixture;

static void raw_setup(RawFixture *f, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  f->server = ferry_ttrpc_server_new();
  g_assert_true(ferry_test_interop_register(f->server, &error));
  int fds[2];
  g_assert_true(ferry_socketpair(fds, TRUE, &error));
  g_assert_true(ferry_ttrpc_server_add_connection(f->server, fds[0], &error));
  f->raw = fds[1];
  f->parser = ferry_ttrpc_parser_new();
}

static void raw_teardown(RawFixture *f, gconstpointer data)
{
  ferry_fd_clear(&f->raw);
  ferry_ttrpc_server_free(f->server);
  ferry_ttrpc_parser_free(f->parser);
}

/* Write everything, letting the server run while the socket is full. */
static void raw_write(RawFixture *f, const guint8 *data, gsize len)
{
  while (len > 0) {
    ssize_t n = write(f->raw, data, len);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
      g_main_context_iteration(NULL, FALSE);
      continue;
    }
    g_assert_cmpint(n, >, 0);
    data += n;
    len -= (gsize)n;
  }
}

static void raw_write_hex(RawFixture *f, const char *hex)
{
  g_autoptr(GByteArray) b = test_hex(hex);
  raw_write(f, b->data, b->len);
}

static void raw_send_frame(RawFixture *f, guint32 sid, guint8 type, guint8 flags,
                           const ProtobufCMessage *msg)
{
  gsize len = msg != NULL ? protobuf_c_message_get_packed_size(msg) : 0;
  g_autofree guint8 *buf = g_malloc(FERRY_TTRPC_HEADER_SIZE + len);
  FerryTtrpcHeader h = { (guint32)len, sid, type, flags };
  ferry_ttrpc_header_encode(&h, buf);
  if (msg != NULL)
    protobuf_c_message_pack(msg, buf + FERRY_TTRPC_HEADER_SIZE);
  raw_write(f, buf, FERRY_TTRPC_HEADER_SIZE + len);
}

/* Send a Request for the interop service with a StringValue payload. */
static void raw_request(RawFixture *f, guint32 sid, const char *method, const char *value,
                        gint64 timeout_nano)
{
  StringValue v = GOOGLE__PROTOBUF__STRING_VALUE__INIT;
  v.value = (char *)value;
  guint8 payload[256];
  g_assert_cmpuint(protobuf_c_message_get_packed_size(&v.base), <, sizeof(payload));
  Ttrpc__Request req = TTRPC__REQUEST__INIT;
  req.service = SVC;
  req.method = (char *)method;
  req.payload.data = payload;
  req.payload.len = value != NULL ? protobuf_c_message_pack(&v.base, payload) : 0;
  req.timeout_nano = timeout_nano;
  raw_send_frame(f, sid, FERRY_TTRPC_TYPE_REQUEST, 0, &req.base);
}

/* Read the next frame the server sends, running the loop; fails after 5 s. Returns
 * the frame's data as hex. */
static char *raw_read_frame(RawFixture *f, FerryTtrpcHeader *h)
{
  gint64 until = g_get_monotonic_time() + 5 * G_USEC_PER_SEC;
  for (;;) {
    const guint8 *data;
    if (ferry_ttrpc_parser_next(f->parser, h, &data) == FERRY_TTRPC_PARSE_FRAME)
      return test_to_hex(data, h->length);
    guint8 buf[65536];
    ssize_t n = read(f->raw, buf, sizeof(buf));
    if (n > 0) {
      ferry_ttrpc_parser_feed(f->parser, buf, (gsize)n);
      continue;
    }
    g_assert_true(n < 0 && errno == EAGAIN);
    if (g_get_monotonic_time() > until)
      g_error("no frame from the server within 5 s");
    g_main_context_iteration(NULL, FALSE);
    g_usleep(100);
  }
}

/* Decode a Response frame's status (code 0 when absent). */
static int response_code(const char *hex, char **message)
{
  g_autoptr(GByteArray) b = test_hex(hex);
  Ttrpc__Response *r = ttrpc__response__unpack(NULL, b->len, b->data);
  g_assert_nonnull(r);
  int code = r->status != NULL ? r->status->code : 0;
  if (message != NULL)
    *message = g_strdup(r->status != NULL ? r->status->message : "");
  ttrpc__response__free_unpacked(r, NULL);
  return code;
}

static void expect_status(RawFixture *f, guint32 sid, int code, const char *message)
{
  FerryTtrpcHeader h;
  g_autofree char *hex = raw_read_frame(f, &h);
  g_assert_cmpuint(h.type, ==, FERRY_TTRPC_TYPE_RESPONSE);
  g_assert_cmpuint(h.stream_id, ==, sid);
  g_assert_cmpuint(h.flags, ==, 0);
  g_autofree char *got = NULL;
  g_assert_cmpint(response_code(hex, &got), ==, code);
  g_assert_cmpstr(got, ==, message);
}

/* -------------------------------------------------- server, byte-exact -- */

/* The request bytes of vector 1 with our service name, answered with the exact
 * reply layout Go produces: status omitted, payload only. */
static void test_server_echo_reply_bytes(RawFixture *f, gconstpointer data)
{
  Ttrpc__KeyValue kv = TTRPC__KEY_VALUE__INIT;
  kv.key = "X-Test"; /* keys are matched without case, as Go lower-cases them */
  kv.value = "hello-md";
  Ttrpc__KeyValue *kvs[] = { &kv };
  g_autoptr(GByteArray) payload = test_hex("0a0470696e67"); /* StringValue{"ping"} */
  Ttrpc__Request req = TTRPC__REQUEST__INIT;
  req.service = SVC;
  req.method = "Echo";
  req.payload.data = payload->data;
  req.payload.len = payload->len;
  req.n_metadata = 1;
  req.metadata = kvs;
  raw_send_frame(f, 1, FERRY_TTRPC_TYPE_REQUEST, 0, &req.base);

  FerryTtrpcHeader h;
  g_autofree char *hex = raw_read_frame(f, &h);
  g_assert_cmpuint(h.length, ==, 0x14);
  g_assert_cmpuint(h.stream_id, ==, 1);
  g_assert_cmpuint(h.type, ==, FERRY_TTRPC_TYPE_RESPONSE);
  g_assert_cmpstr(hex, ==, "12120a1070696e677c6d643d68656c6c6f2d6d64");
}

/* Vector 2: a handler's NotFound travels as {code 5, message}, no payload. */
static void test_server_error_reply_bytes(RawFixture *f, gconstpointer data)
{
  raw_request(f, 3, "Fail", "5:no such thing", 0);
  FerryTtrpcHeader h;
  g_autofree char *hex = raw_read_frame(f, &h);
  g_assert_cmpuint(h.stream_id, ==, 3);
  g_assert_cmpstr(hex, ==, "0a110805120d6e6f2073756368207468696e67");
}

/* Vector 3: unknown method and service, with Go's messages. */
static void test_server_unknown_method_and_service(RawFixture *f, gconstpointer data)
{
  raw_request(f, 1, "Nope", "x", 0);
  FerryTtrpcHeader h;
  g_autofree char *m = raw_read_frame(f, &h);
  g_assert_cmpstr(m, ==, "0a0f080c120b6d6574686f64204e6f7065");

  Ttrpc__Request req = TTRPC__REQUEST__INIT;
  req.service = "no.Such";
  req.method = "Echo";
  raw_send_frame(f, 3, FERRY_TTRPC_TYPE_REQUEST, 0, &req.base);
  g_autofree char *s = raw_read_frame(f, &h);
  g_assert_cmpstr(s, ==, "0a13080c120f73657276696365206e6f2e53756368");
}

/* Vector 5: an OK answer with an empty message is a zero-length Response. */
static void test_server_empty_ok_reply(RawFixture *f, gconstpointer data)
{
  raw_request(f, 5, "Sleep", "0", 0); /* echoes "0": not empty */
  FerryTtrpcHeader h;
  g_autofree char *a = raw_read_frame(f, &h);
  g_assert_cmpstr(a, ==, "12030a0130");
  raw_request(f, 7, "Big", "0", 0); /* StringValue{""} encodes to nothing */
  g_autofree char *b = raw_read_frame(f, &h);
  g_assert_cmpuint(h.length, ==, 0);
  g_assert_cmpuint(h.stream_id, ==, 7);
  g_assert_cmpstr(b, ==, "");
}

static void test_server_rejects_even_stream_id(RawFixture *f, gconstpointer data)
{
  raw_request(f, 2, "Echo", "x", 0);
  expect_status(f, 2, FERRY_ERROR_INVALID_ARGUMENT,
                "StreamID must be odd for client initiated streams");
  /* The connection stays usable. */
  raw_request(f, 3, "Echo", "y", 0);
  FerryTtrpcHeader h;
  g_autofree char *hex = raw_read_frame(f, &h);
  g_assert_cmpint(response_code(hex, NULL), ==, 0);
  g_assert_cmpuint(h.stream_id, ==, 3);
}

static void test_server_rejects_reused_stream_id(RawFixture *f, gconstpointer data)
{
  raw_request(f, 5, "Echo", "x", 0);
  FerryTtrpcHeader h;
  g_autofree char *hex = raw_read_frame(f, &h);
  g_assert_cmpint(response_code(hex, NULL), ==, 0);
  raw_request(f, 5, "Echo", "x", 0);
  expect_status(f, 5, FERRY_ERROR_INVALID_ARGUMENT,
                "StreamID cannot be re-used and must increment");
  raw_request(f, 3, "Echo", "x", 0);
  expect_status(f, 3, FERRY_ERROR_INVALID_ARGUMENT,
                "StreamID cannot be re-used and must increment");
}

/* Go's answer to an oversize frame, on the frame's stream id; the body is discarded
 * and the connection keeps working. */
static void test_server_oversize_frame(RawFixture *f, gconstpointer data)
{
  guint32 big = FERRY_TTRPC_MAX_DATA + 1;
  FerryTtrpcHeader h = { big, 1, FERRY_TTRPC_TYPE_REQUEST, 0 };
  guint8 hdr[FERRY_TTRPC_HEADER_SIZE];
  ferry_ttrpc_header_encode(&h, hdr);
  raw_write(f, hdr, sizeof(hdr));
  g_autofree guint8 *body = g_malloc0(big);
  raw_write(f, body, big);
  expect_status(f, 1, FERRY_ERROR_RESOURCE_EXHAUSTED,
                "message length 4194305 exceed maximum message size of 4194304");
  raw_request(f, 3, "Echo", "after", 0);
  FerryTtrpcHeader r;
  g_autofree char *hex = raw_read_frame(f, &r);
  g_assert_cmpuint(r.stream_id, ==, 3);
  g_assert_cmpint(response_code(hex, NULL), ==, 0);
}

static void test_server_undecodable_request(RawFixture *f, gconstpointer data)
{
  raw_write_hex(f, "00000002 00000001 01 00 0a05"); /* string cut short */
  expect_status(f, 1, FERRY_ERROR_INVALID_ARGUMENT,
                "unmarshal request error: invalid ttrpc.Request");
}

static void test_server_undecodable_payload(RawFixture *f, gconstpointer data)
{
  Ttrpc__Request req = TTRPC__REQUEST__INIT;
  req.service = SVC;
  req.method = "Echo";
  guint8 junk[] = { 0x0a, 0x09, 'x' }; /* StringValue whose string is cut short */
  req.payload.data = junk;
  req.payload.len = sizeof(junk);
  raw_send_frame(f, 1, FERRY_TTRPC_TYPE_REQUEST, 0, &req.base);
  expect_status(f, 1, FERRY_ERROR_INVALID_ARGUMENT,
                "unmarshal request error: invalid google.protobuf.StringValue for "
                "ferry.test.v1.Interop/Echo");
}

static void test_server_data_on_unknown_stream(RawFixture *f, gconstpointer data)
{
  raw_write_hex(f, "00000002 00000009 03 00 0801");
  expect_status(f, 9, FERRY_ERROR_INVALID_ARGUMENT, "StreamID is no longer active");
}

/* Unknown message types and Response frames from a client are ignored. */
static void test_server_ignores_unknown_types(RawFixture *f, gconstpointer data)
{
  raw_write_hex(f, "00000001 00000001 07 00 00"
                   "00000000 00000003 02 00");
  raw_request(f, 5, "Echo", "still", 0);
  FerryTtrpcHeader h;
  g_autofree char *hex = raw_read_frame(f, &h);
  g_assert_cmpuint(h.stream_id, ==, 5);
  g_assert_cmpint(response_code(hex, NULL), ==, 0);
}

static void test_server_refuses_client_streams(RawFixture *f, gconstpointer data)
{
  Ttrpc__Request req = TTRPC__REQUEST__INIT;
  req.service = SVC;
  req.method = "Echo";
  raw_send_frame(f, 1, FERRY_TTRPC_TYPE_REQUEST, FERRY_TTRPC_FLAG_REMOTE_OPEN, &req.base);
  expect_status(f, 1, FERRY_ERROR_UNIMPLEMENTED, "client streaming is not supported");
}

/* Vector 7's shape: a server stream is Data frames, then Data REMOTE_CLOSED|NO_DATA. */
static void test_server_stream_frames(RawFixture *f, gconstpointer data)
{
  StringValue v = GOOGLE__PROTOBUF__STRING_VALUE__INIT;
  v.value = "3";
  guint8 payload[8];
  Ttrpc__Request req = TTRPC__REQUEST__INIT;
  req.service = SVC;
  req.method = "Count";
  req.payload.data = payload;
  req.payload.len = protobuf_c_message_pack(&v.base, payload);
  raw_send_frame(f, 3, FERRY_TTRPC_TYPE_REQUEST, FERRY_TTRPC_FLAG_REMOTE_CLOSED, &req.base);
  const char *want[] = { "0a0131", "0a0132", "0a0133" };
  for (int i = 0; i < 3; i++) {
    FerryTtrpcHeader h;
    g_autofree char *hex = raw_read_frame(f, &h);
    g_assert_cmpuint(h.type, ==, FERRY_TTRPC_TYPE_DATA);
    g_assert_cmpuint(h.flags, ==, 0);
    g_assert_cmpuint(h.stream_id, ==, 3);
    g_assert_cmpstr(hex, ==, want[i]);
  }
  FerryTtrpcHeader h;
  g_autofree char *end = raw_read_frame(f, &h);
  g_assert_cmpstr(end, ==, "");
  g_assert_cmpuint(h.type, ==, FERRY_TTRPC_TYPE_DATA);
  g_assert_cmpuint(h.flags, ==, FERRY_TTRPC_FLAG_REMOTE_CLOSED | FERRY_TTRPC_FLAG_NO_DATA);
  g_assert_cmpuint(h.length, ==, 0);
}

/* A stream that fails ends with a Response carrying the status. */
static void test_server_stream_error(RawFixture *f, gconstpointer data)
{
  Ttrpc__Request req = TTRPC__REQUEST__INIT;
  StringValue v = GOOGLE__PROTOBUF__STRING_VALUE__INIT;
  v.value = "lots";
  guint8 payload[16];
  req.service = SVC;
  req.method = "Count";
  req.payload.data = payload;
  req.payload.len = protobuf_c_message_pack(&v.base, payload);
  raw_send_frame(f, 1, FERRY_TTRPC_TYPE_REQUEST, FERRY_TTRPC_FLAG_REMOTE_CLOSED, &req.base);
  expect_status(f, 1, FERRY_ERROR_INVALID_ARGUMENT, "Count wants 0 to 1000000, not lots");
}

/* The server answers DEADLINE_EXCEEDED at the deadline even though the handler is
 * still sleeping, and drops the handler's late answer. */
static void test_server_enforces_deadline(RawFixture *f, gconstpointer data)
{
  raw_request(f, 1, "Sleep", "60000", 50 * 1000 * 1000);
  expect_status(f, 1, FERRY_ERROR_DEADLINE_EXCEEDED, "context deadline exceeded");
  /* The Sleep handler answered from its cancel function; nothing more comes. */
  raw_request(f, 3, "Echo", "next", 0);
  FerryTtrpcHeader h;
  g_autofree char *hex = raw_read_frame(f, &h);
  g_assert_cmpint(response_code(hex, NULL), ==, 0);
  g_assert_cmpuint(h.stream_id, ==, 3);
}

/* Issue 9 item 5: timeout_nano up to INT64_MAX (the peer chooses it) is a deadline far
 * away, computed without overflow (UBSan in CI aborts on the old arithmetic). */
static void test_server_huge_timeout(RawFixture *f, gconstpointer data)
{
  gint64 values[] = { G_MAXINT64, G_MAXINT64 - 1, G_MAXINT64 - 999999, 1 };
  guint32 sid = 1;
  for (guint i = 0; i < G_N_ELEMENTS(values); i++, sid += 2) {
    raw_request(f, sid, "Deadline", NULL, values[i]);
    FerryTtrpcHeader h;
    g_autofree char *hex = raw_read_frame(f, &h);
    g_assert_cmpuint(h.stream_id, ==, sid);
    if (values[i] == 1) {
      /* 1 ns: the deadline is (all but) now; the handler still ran, or the server answered
       * DEADLINE_EXCEEDED: either way an answer, not a hang. */
      continue;
    }
    g_assert_cmpint(response_code(hex, NULL), ==, 0);
    g_autoptr(GByteArray) b = test_hex(hex);
    Ttrpc__Response *r = ttrpc__response__unpack(NULL, b->len, b->data);
    StringValue *v = google__protobuf__string_value__unpack(NULL, r->payload.len, r->payload.data);
    /* Milliseconds left: about 292 years' worth, positive. */
    g_assert_cmpint(g_ascii_strtoll(v->value, NULL, 10), >, G_GINT64_CONSTANT(9000000000000));
    protobuf_c_message_free_unpacked(&v->base, NULL);
    ttrpc__response__free_unpacked(r, NULL);
  }
}

/* A frame cut off by the peer's close is dropped without harm. */
static void test_server_truncated_frame_then_close(RawFixture *f, gconstpointer data)
{
  raw_write_hex(f, "00000020 00000001 01 00 0a1274");
  for (int i = 0; i < 10; i++)
    g_main_context_iteration(NULL, FALSE);
  ferry_fd_clear(&f->raw);
  gint64 until = g_get_monotonic_time() + 5 * G_USEC_PER_SEC;
  while (ferry_ttrpc_server_connection_count(f->server) > 0 && g_get_monotonic_time() < until)
    g_main_context_iteration(NULL, FALSE);
  g_assert_cmpuint(ferry_ttrpc_server_connection_count(f->server), ==, 0);
}

/* Pipelined requests in one write are all answered, each on its own stream. */
static void test_server_pipelined_in_one_write(RawFixture *f, gconstpointer data)
{
  for (guint32 sid = 1; sid < 200; sid += 2)
    raw_request(f, sid, "Echo", "p", 0);
  g_autoptr(GHashTable) seen = g_hash_table_new(NULL, NULL);
  for (int i = 0; i < 100; i++) {
    FerryTtrpcHeader h;
    g_autofree char *hex = raw_read_frame(f, &h);
    g_assert_cmpint(response_code(hex, NULL), ==, 0);
    g_hash_table_add(seen, GUINT_TO_POINTER(h.stream_id));
  }
  g_assert_cmpuint(g_hash_table_size(seen), ==, 100);
}

/* ------------------------------------------------------ client <-> server -- */

typedef struct {
  FerryTtrpcServer *server;
  FerryTtrpcClient *client;
  char *dir;
  char *path;
} RpcFixture;

static void rpc_setup(RpcFixture *f, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  f->dir = test_make_tmpdir();
  f->path = g_build_filename(f->dir, "ttrpc.sock", NULL);
  f->server = ferry_ttrpc_server_new();
  g_assert_true(ferry_test_interop_register(f->server, &error));
  g_assert_true(ferry_ttrpc_server_listen_unix(f->server, f->path, &error));
  g_autofree char *address = g_strconcat("unix://", f->path, NULL);
  f->client = ferry_ttrpc_client_connect_unix(address, &error);
  g_assert_no_error(error);
}

static void rpc_teardown(RpcFixture *f, gconstpointer data)
{
  ferry_ttrpc_client_free(f->client);
  ferry_ttrpc_server_free(f->server);
  g_assert_false(g_file_test(f->path, G_FILE_TEST_EXISTS));
  test_rm_rf(f->dir);
  g_free(f->dir);
  g_free(f->path);
}

static StringValue *call_string(FerryTtrpcClient *client, const char *method, const char *value,
                                const FerryTtrpcCallOptions *opts, GError **error)
{
  StringValue v = GOOGLE__PROTOBUF__STRING_VALUE__INIT;
  v.value = (char *)value;
  return (StringValue *)ferry_ttrpc_client_call_sync(
      client, SVC, method, &v.base, &google__protobuf__string_value__descriptor, opts, error);
}

static void test_client_echo_with_metadata(RpcFixture *f, gconstpointer data)
{
  FerryTtrpcMetadata md[] = { { "other", "1" }, { "x-test", "first" }, { "x-test", "second" } };
  FerryTtrpcCallOptions opts = { .metadata = md, .n_metadata = G_N_ELEMENTS(md) };
  g_autoptr(GError) error = NULL;
  StringValue *r = call_string(f->client, "Echo", "hi", &opts, &error);
  g_assert_no_error(error);
  g_assert_cmpstr(r->value, ==, "hi|md=first");
  protobuf_c_message_free_unpacked(&r->base, NULL);
}

static void test_client_deadline_propagates(RpcFixture *f, gconstpointer data)
{
  FerryTtrpcCallOptions opts = { .timeout_ns = 5 * G_GINT64_CONSTANT(1000000000) };
  g_autoptr(GError) error = NULL;
  Google__Protobuf__Empty empty = GOOGLE__PROTOBUF__EMPTY__INIT;
  StringValue *r = (StringValue *)ferry_ttrpc_client_call_sync(
      f->client, SVC, "Deadline", &empty.base, &google__protobuf__string_value__descriptor, &opts,
      &error);
  g_assert_no_error(error);
  gint64 ms = g_ascii_strtoll(r->value, NULL, 10);
  g_assert_cmpint(ms, >, 4000);
  g_assert_cmpint(ms, <=, 5000);
  protobuf_c_message_free_unpacked(&r->base, NULL);

  r = (StringValue *)ferry_ttrpc_client_call_sync(f->client, SVC, "Deadline", &empty.base,
                                                  &google__protobuf__string_value__descriptor, NULL,
                                                  &error);
  g_assert_no_error(error);
  g_assert_cmpstr(r->value, ==, "none");
  protobuf_c_message_free_unpacked(&r->base, NULL);
}

static void test_client_status_round_trip(RpcFixture *f, gconstpointer data)
{
  for (int code = 1; code <= 16; code++) {
    g_autofree char *value = g_strdup_printf("%d:failure number %d", code, code);
    g_autoptr(GError) error = NULL;
    StringValue v = GOOGLE__PROTOBUF__STRING_VALUE__INIT;
    v.value = value;
    ProtobufCMessage *r = ferry_ttrpc_client_call_sync(
        f->client, SVC, "Fail", &v.base, &google__protobuf__empty__descriptor, NULL, &error);
    g_assert_null(r);
    g_assert_error(error, FERRY_ERROR, code);
    g_autofree char *want = g_strdup_printf("failure number %d", code);
    g_assert_cmpstr(error->message, ==, want);
  }
}

static void test_client_unknown_method(RpcFixture *f, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  StringValue *r = call_string(f->client, "Nope", "x", NULL, &error);
  g_assert_null(r);
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_UNIMPLEMENTED);
  g_assert_cmpstr(error->message, ==, "method Nope");
}

/* Replies come back in the order handlers finish, not the order of requests. */
typedef struct {
  GArray *order;
  guint outstanding;
} OrderLog;

static void on_ordered_reply(FerryTtrpcClient *c, const ProtobufCMessage *resp, const GError *error,
                             gpointer ud)
{
  OrderLog *log = ud;
  g_assert_no_error(error);
  const StringValue *v = (const StringValue *)resp;
  int n = atoi(v->value);
  g_array_append_val(log->order, n);
  log->outstanding--;
}

static void test_client_out_of_order_replies(RpcFixture *f, gconstpointer data)
{
  OrderLog log = { g_array_new(FALSE, FALSE, sizeof(int)), 0 };
  const char *delays[] = { "300", "0", "150" };
  for (int i = 0; i < 3; i++) {
    StringValue v = GOOGLE__PROTOBUF__STRING_VALUE__INIT;
    v.value = (char *)delays[i];
    ferry_ttrpc_client_call(f->client, SVC, "Sleep", &v.base,
                            &google__protobuf__string_value__descriptor, NULL, on_ordered_reply,
                            &log);
    log.outstanding++;
  }
  gint64 until = g_get_monotonic_time() + 5 * G_USEC_PER_SEC;
  while (log.outstanding > 0 && g_get_monotonic_time() < until)
    g_main_context_iteration(NULL, TRUE);
  g_assert_cmpuint(log.order->len, ==, 3);
  g_assert_cmpint(g_array_index(log.order, int, 0), ==, 0);
  g_assert_cmpint(g_array_index(log.order, int, 1), ==, 150);
  g_assert_cmpint(g_array_index(log.order, int, 2), ==, 300);
  g_array_unref(log.order);
}

/* Many calls in flight on one connection; every answer matches its request. */
typedef struct {
  guint done;
  guint mismatched;
} ManyLog;

static void on_many_reply(FerryTtrpcClient *c, const ProtobufCMessage *resp, const GError *error,
                          gpointer ud)
{
  ManyLog *log = ud;
  g_assert_no_error(error);
  log->done++;
}

typedef struct {
  ManyLog *log;
  char *expect;
} ManyCall;

static void on_many_checked(FerryTtrpcClient *c, const ProtobufCMessage *resp, const GError *error,
                            gpointer ud)
{
  ManyCall *mc = ud;
  if (error != NULL || strcmp(((const StringValue *)resp)->value, mc->expect) != 0)
    mc->log->mismatched++;
  on_many_reply(c, resp, error, mc->log);
  g_free(mc->expect);
  g_free(mc);
}

static void test_client_many_concurrent_calls(RpcFixture *f, gconstpointer data)
{
  ManyLog log = { 0 };
  const guint n = 2000;
  for (guint i = 0; i < n; i++) {
    g_autofree char *value = g_strdup_printf("%u", i % 7);
    StringValue v = GOOGLE__PROTOBUF__STRING_VALUE__INIT;
    v.value = value;
    ManyCall *mc = g_new0(ManyCall, 1);
    mc->log = &log;
    if (i % 2 == 0) {
      mc->expect = g_strdup(value); /* Sleep echoes its value */
      ferry_ttrpc_client_call(f->client, SVC, "Sleep", &v.base,
                              &google__protobuf__string_value__descriptor, NULL, on_many_checked,
                              mc);
    } else {
      mc->expect = g_strconcat(value, "|md=", NULL);
      ferry_ttrpc_client_call(f->client, SVC, "Echo", &v.base,
                              &google__protobuf__string_value__descriptor, NULL, on_many_checked,
                              mc);
    }
  }
  g_assert_cmpuint(ferry_ttrpc_client_pending(f->client), ==, n);
  gint64 until = g_get_monotonic_time() + 20 * G_USEC_PER_SEC;
  while (log.done < n && g_get_monotonic_time() < until)
    g_main_context_iteration(NULL, TRUE);
  g_assert_cmpuint(log.done, ==, n);
  g_assert_cmpuint(log.mismatched, ==, 0);
  g_assert_cmpuint(ferry_ttrpc_client_pending(f->client), ==, 0);
}

/* The client gives up at its deadline and ignores the answer when it comes. */
static void test_client_local_deadline(RpcFixture *f, gconstpointer data)
{
  FerryTtrpcCallOptions opts = { .timeout_ns = 100 * 1000 * 1000 };
  g_autoptr(GError) error = NULL;
  gint64 t0 = g_get_monotonic_time();
  StringValue *r = call_string(f->client, "Sleep", "400", &opts, &error);
  g_assert_null(r);
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_DEADLINE_EXCEEDED);
  g_assert_cmpint(g_get_monotonic_time() - t0, >=, 100 * 1000);
  g_clear_error(&error);
  r = call_string(f->client, "Echo", "after", NULL, &error);
  g_assert_no_error(error);
  g_assert_cmpstr(r->value, ==, "after|md=");
  protobuf_c_message_free_unpacked(&r->base, NULL);
}

/* Server streaming from the client side. */
typedef struct {
  GPtrArray *values;
  gboolean done;
  GError *error;
} StreamLog;

static void on_stream_message(FerryTtrpcClient *c, const ProtobufCMessage *msg, gpointer ud)
{
  StreamLog *log = ud;
  g_ptr_array_add(log->values, g_strdup(((const StringValue *)msg)->value));
}

static void on_stream_done(FerryTtrpcClient *c, const ProtobufCMessage *resp, const GError *error,
                           gpointer ud)
{
  StreamLog *log = ud;
  g_assert_null(resp);
  log->done = TRUE;
  if (error != NULL)
    log->error = g_error_copy(error);
}

static void test_client_server_stream(RpcFixture *f, gconstpointer data)
{
  StreamLog log = { g_ptr_array_new_with_free_func(g_free), FALSE, NULL };
  StringValue v = GOOGLE__PROTOBUF__STRING_VALUE__INIT;
  v.value = "100";
  ferry_ttrpc_client_stream(f->client, SVC, "Count", &v.base,
                            &google__protobuf__string_value__descriptor, NULL, on_stream_message,
                            on_stream_done, &log);
  /* A unary call interleaves with the stream. */
  g_autoptr(GError) error = NULL;
  StringValue *r = call_string(f->client, "Echo", "meanwhile", NULL, &error);
  g_assert_no_error(error);
  protobuf_c_message_free_unpacked(&r->base, NULL);
  g_assert_true(test_run_until(&log.done, 5000));
  g_assert_no_error(log.error);
  g_assert_cmpuint(log.values->len, ==, 100);
  for (guint i = 0; i < 100; i++) {
    g_autofree char *want = g_strdup_printf("%u", i + 1);
    g_assert_cmpstr(log.values->pdata[i], ==, want);
  }
  g_ptr_array_unref(log.values);
}

static void test_client_server_stream_error(RpcFixture *f, gconstpointer data)
{
  StreamLog log = { g_ptr_array_new_with_free_func(g_free), FALSE, NULL };
  StringValue v = GOOGLE__PROTOBUF__STRING_VALUE__INIT;
  v.value = "-1";
  ferry_ttrpc_client_stream(f->client, SVC, "Count", &v.base,
                            &google__protobuf__string_value__descriptor, NULL, on_stream_message,
                            on_stream_done, &log);
  g_assert_true(test_run_until(&log.done, 5000));
  g_assert_error(log.error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
  g_assert_cmpuint(log.values->len, ==, 0);
  g_clear_error(&log.error);
  g_ptr_array_unref(log.values);
}

/* A request over 4 MiB fails locally, without being sent; the connection lives on. */
static void test_client_oversize_request_fails_locally(RpcFixture *f, gconstpointer data)
{
  g_autofree char *big = g_malloc(FERRY_TTRPC_MAX_DATA + 1);
  memset(big, 'b', FERRY_TTRPC_MAX_DATA);
  big[FERRY_TTRPC_MAX_DATA] = '\0';
  g_autoptr(GError) error = NULL;
  StringValue *r = call_string(f->client, "Echo", big, NULL, &error);
  g_assert_null(r);
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_RESOURCE_EXHAUSTED);
  g_clear_error(&error);
  r = call_string(f->client, "Echo", "small", NULL, &error);
  g_assert_no_error(error);
  protobuf_c_message_free_unpacked(&r->base, NULL);
}

/* An answer too large for a frame comes back as RESOURCE_EXHAUSTED. */
static void test_client_oversize_response(RpcFixture *f, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  StringValue *r = call_string(f->client, "Big", "5000000", NULL, &error);
  g_assert_null(r);
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_RESOURCE_EXHAUSTED);
  g_clear_error(&error);
  /* Just under the limit works: 4 MiB minus the Response and StringValue overhead. */
  g_autofree char *n = g_strdup_printf("%u", FERRY_TTRPC_MAX_DATA - 16);
  r = call_string(f->client, "Big", n, NULL, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(strlen(r->value), ==, FERRY_TTRPC_MAX_DATA - 16);
  protobuf_c_message_free_unpacked(&r->base, NULL);
}

/* Closing the client fails its pending calls and cancels them on the server. */
typedef struct {
  gboolean done;
  GError *error;
} OneResult;

static void on_one(FerryTtrpcClient *c, const ProtobufCMessage *resp, const GError *error,
                   gpointer ud)
{
  OneResult *r = ud;
  r->done = TRUE;
  if (error != NULL)
    r->error = g_error_copy(error);
}

/* Start a call with a StringValue `value`; its answer lands in `r`. Returns the id. */
static guint32 call_async(FerryTtrpcClient *client, const char *method, const char *value,
                          OneResult *r)
{
  StringValue v = GOOGLE__PROTOBUF__STRING_VALUE__INIT;
  v.value = (char *)value;
  return ferry_ttrpc_client_call(client, SVC, method, &v.base,
                                 &google__protobuf__string_value__descriptor, NULL, on_one, r);
}

static void test_client_close_fails_pending(RpcFixture *f, gconstpointer data)
{
  OneResult r = { 0 };
  call_async(f->client, "Sleep", "60000", &r);
  for (int i = 0; i < 20; i++)
    g_main_context_iteration(NULL, FALSE);
  ferry_ttrpc_client_close(f->client);
  g_assert_true(r.done);
  g_assert_error(r.error, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE);
  g_clear_error(&r.error);
  g_assert_false(ferry_ttrpc_client_is_connected(f->client));
  /* The server notices and the Sleep handler's cancel function answers it. */
  gint64 until = g_get_monotonic_time() + 5 * G_USEC_PER_SEC;
  while (ferry_ttrpc_server_connection_count(f->server) > 0 && g_get_monotonic_time() < until)
    g_main_context_iteration(NULL, FALSE);
  g_assert_cmpuint(ferry_ttrpc_server_connection_count(f->server), ==, 0);

  /* A call on a closed client fails from the main loop, never synchronously. */
  OneResult late = { 0 };
  call_async(f->client, "Echo", "60000", &late);
  g_assert_false(late.done);
  g_assert_true(test_run_until(&late.done, 2000));
  g_assert_error(late.error, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE);
  g_clear_error(&late.error);
}

/* Server shutdown fails the client's pending calls with UNAVAILABLE. */
static void test_server_shutdown_fails_client_calls(RpcFixture *f, gconstpointer data)
{
  OneResult r = { 0 };
  call_async(f->client, "Sleep", "60000", &r);
  for (int i = 0; i < 20; i++)
    g_main_context_iteration(NULL, FALSE);
  ferry_ttrpc_server_shutdown(f->server);
  g_assert_false(g_file_test(f->path, G_FILE_TEST_EXISTS));
  g_assert_true(test_run_until(&r.done, 5000));
  g_assert_error(r.error, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE);
  g_clear_error(&r.error);
}

static void test_client_cancel(RpcFixture *f, gconstpointer data)
{
  OneResult r = { 0 };
  guint32 sid = call_async(f->client, "Sleep", "50", &r);
  g_assert_cmpuint(sid % 2, ==, 1);
  g_assert_true(ferry_ttrpc_client_cancel(f->client, sid));
  g_assert_false(ferry_ttrpc_client_cancel(f->client, sid));
  /* The late answer arrives and is dropped; the callback never runs. */
  g_autoptr(GError) error = NULL;
  StringValue *after = call_string(f->client, "Sleep", "100", NULL, &error);
  g_assert_no_error(error);
  protobuf_c_message_free_unpacked(&after->base, NULL);
  g_assert_false(r.done);
}

/* Stream ids are odd and increase by two. */
static void test_client_stream_ids(RpcFixture *f, gconstpointer data)
{
  OneResult a = { 0 }, b = { 0 };
  guint32 s1 = call_async(f->client, "Echo", "x", &a);
  guint32 s2 = call_async(f->client, "Echo", "x", &b);
  g_assert_cmpuint(s1, ==, 1);
  g_assert_cmpuint(s2, ==, 3);
  g_assert_true(test_run_until(&b.done, 2000));
  g_assert_true(test_run_until(&a.done, 2000));
}

/* ------------------------------------------- peer gone before the call -- */

typedef struct {
  int calls;
  GError *error;
} ClosedCount;

static void on_client_closed(FerryTtrpcClient *c, const GError *error, gpointer ud)
{
  ClosedCount *n = ud;
  n->calls++;
  if (error != NULL && n->error == NULL)
    n->error = g_error_copy(error);
}

/* Issue 9 item 1: the server is gone before the client notices; the call's write breaks
 * the stream. The reply callback runs once, later, from the main loop (with a timeout,
 * whose timer goes on the call's record). */
static void test_client_call_after_peer_closed(void)
{
  g_autoptr(GError) error = NULL;
  int sp[2];
  g_assert_true(ferry_socketpair(sp, TRUE, &error));
  FerryTtrpcClient *client = ferry_ttrpc_client_new(sp[0], &error);
  g_assert_no_error(error);
  ClosedCount closed = { 0 };
  ferry_ttrpc_client_set_closed_func(client, on_client_closed, &closed);
  close(sp[1]);
  OneResult r = { 0 };
  StringValue v = GOOGLE__PROTOBUF__STRING_VALUE__INIT;
  v.value = "x";
  FerryTtrpcCallOptions opts = { .timeout_ns = G_GINT64_CONSTANT(1000000000) };
  ferry_ttrpc_client_call(client, SVC, "Echo", &v.base, &google__protobuf__string_value__descriptor,
                          &opts, on_one, &r);
  g_assert_false(r.done);
  g_assert_cmpint(closed.calls, ==, 0);
  g_assert_true(test_run_until(&r.done, 2000));
  g_assert_error(r.error, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE);
  for (int i = 0; i < 50; i++)
    g_main_context_iteration(NULL, FALSE);
  g_assert_cmpint(closed.calls, ==, 1);
  g_assert_false(ferry_ttrpc_client_is_connected(client));
  g_clear_error(&r.error);
  g_clear_error(&closed.error);
  ferry_ttrpc_client_free(client);
}

/* A service whose handler keeps the call, for the test to answer when it chooses. */
static FerryTtrpcCall *held_call;

static void handle_hold(FerryTtrpcCall *call, const ProtobufCMessage *request, gpointer ud)
{
  held_call = call;
}

static const FerryTtrpcMethodImpl hold_methods[] = {
  { "Echo", handle_hold, FERRY_TTRPC_UNARY },
  { NULL, NULL, 0 },
};

static void on_connection_closed(FerryTtrpcServer *server, gpointer ud)
{
  (*(int *)ud)++;
}

/* Issue 9 item 1, server side: the client stopped reading (SHUT_RD: the server's write
 * gets EPIPE) while its call was held; the reply's write breaks the connection, which
 * ends later, from the main loop, not inside the reply. */
static void test_server_reply_after_peer_closed(void)
{
  g_autoptr(GError) error = NULL;
  FerryTtrpcServer *server = ferry_ttrpc_server_new();
  g_assert_true(ferry_ttrpc_server_register(
      server, "test.Hold", &ferry__test__v1__interop__descriptor, hold_methods, NULL, &error));
  int closed = 0;
  ferry_ttrpc_server_set_connection_closed_func(server, on_connection_closed, &closed);
  int fds[2];
  g_assert_true(ferry_socketpair(fds, TRUE, &error));
  g_assert_true(ferry_ttrpc_server_add_connection(server, fds[0], &error));
  RawFixture raw = { .server = server, .raw = fds[1], .parser = ferry_ttrpc_parser_new() };
  StringValue v = GOOGLE__PROTOBUF__STRING_VALUE__INIT;
  v.value = "x";
  guint8 payload[64];
  Ttrpc__Request req = TTRPC__REQUEST__INIT;
  req.service = "test.Hold";
  req.method = "Echo";
  req.payload.data = payload;
  req.payload.len = protobuf_c_message_pack(&v.base, payload);
  raw_send_frame(&raw, 1, FERRY_TTRPC_TYPE_REQUEST, 0, &req.base);
  held_call = NULL;
  gint64 until = g_get_monotonic_time() + 5 * G_USEC_PER_SEC;
  while (held_call == NULL && g_get_monotonic_time() < until)
    g_main_context_iteration(NULL, FALSE);
  g_assert_nonnull(held_call);
  g_assert_cmpint(shutdown(raw.raw, SHUT_RD), ==, 0);
  StringValue out = GOOGLE__PROTOBUF__STRING_VALUE__INIT;
  out.value = "y";
  ferry_ttrpc_call_reply(held_call, &out.base);
  held_call = NULL;
  g_assert_cmpint(closed, ==, 0);
  until = g_get_monotonic_time() + 5 * G_USEC_PER_SEC;
  while (ferry_ttrpc_server_connection_count(server) > 0 && g_get_monotonic_time() < until)
    g_main_context_iteration(NULL, FALSE);
  g_assert_cmpuint(ferry_ttrpc_server_connection_count(server), ==, 0);
  g_assert_cmpint(closed, ==, 1);
  raw_teardown(&raw, NULL);
}

static gboolean on_hung(gpointer data)
{
  g_error("%s: nothing happened within 10 s", (const char *)data);
  return G_SOURCE_REMOVE;
}

/* Issue 9 item 6: a client and server made under a pushed thread-default context keep
 * every source there: call_sync iterates it, and the call's deadline fires on it. */
static void test_call_sync_on_pushed_context(void)
{
  GMainContext *ctx = g_main_context_new();
  g_main_context_push_thread_default(ctx);
  GSource *guard = ferry_timeout_new(ctx, 10000, on_hung, "call_sync under a pushed context");
  RpcFixture f = { 0 };
  rpc_setup(&f, NULL);
  FerryTtrpcCallOptions opts = { .timeout_ns = 50 * 1000 * 1000 };
  g_autoptr(GError) error = NULL;
  StringValue *r = call_string(f.client, "Sleep", "60000", &opts, &error);
  g_assert_null(r);
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_DEADLINE_EXCEEDED);
  g_clear_error(&error);
  r = call_string(f.client, "Echo", "on ctx", NULL, &error);
  g_assert_no_error(error);
  g_assert_cmpstr(r->value, ==, "on ctx|md=");
  protobuf_c_message_free_unpacked(&r->base, NULL);
  g_assert_false(g_main_context_pending(NULL));
  rpc_teardown(&f, NULL);
  ferry_source_clear(&guard);
  g_main_context_pop_thread_default(ctx);
  while (g_main_context_iteration(ctx, FALSE))
    ;
  g_main_context_unref(ctx);
}

/* ------------------------------------------------------- misc behaviour -- */

static void test_connect_missing_socket(void)
{
  g_autoptr(GError) error = NULL;
  FerryTtrpcClient *c = ferry_ttrpc_client_connect_unix("unix:///nonexistent/ferry.sock", &error);
  g_assert_null(c);
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE);
  g_assert_nonnull(strstr(error->message, "/nonexistent/ferry.sock"));
  g_clear_error(&error);
  c = ferry_ttrpc_client_connect_unix("", &error);
  g_assert_null(c);
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
}

/* A socket file whose server is gone is replaced; a live server's socket and other
 * files are not. */
static void test_listen_replaces_stale_socket_only(void)
{
  g_autofree char *dir = test_make_tmpdir();
  g_autofree char *sock = g_build_filename(dir, "s.sock", NULL);
  g_autofree char *file = g_build_filename(dir, "regular", NULL);
  g_autoptr(GError) error = NULL;

  /* What a crashed server leaves: a bound socket file with nobody listening. */
  int stale = socket(AF_UNIX, SOCK_STREAM, 0);
  struct sockaddr_un addr = { .sun_family = AF_UNIX };
  g_strlcpy(addr.sun_path, sock, sizeof(addr.sun_path));
  g_assert_cmpint(bind(stale, (struct sockaddr *)&addr, sizeof(addr)), ==, 0);
  close(stale);

  g_autoptr(FerryTtrpcServer) a = ferry_ttrpc_server_new();
  g_assert_true(ferry_ttrpc_server_listen_unix(a, sock, &error));
  g_assert_no_error(error);

  g_autoptr(FerryTtrpcServer) b = ferry_ttrpc_server_new();
  g_assert_false(ferry_ttrpc_server_listen_unix(b, sock, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_ALREADY_EXISTS);
  g_clear_error(&error);

  g_assert_true(g_file_set_contents(file, "keep me", -1, &error));
  g_assert_false(ferry_ttrpc_server_listen_unix(b, file, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_ALREADY_EXISTS);
  g_assert_true(g_file_test(file, G_FILE_TEST_IS_REGULAR));
  test_rm_rf(dir);
}

static void dummy_handler(FerryTtrpcCall *call, const ProtobufCMessage *req, gpointer ud)
{
  ferry_ttrpc_call_reply(call, NULL);
}

static void test_register_errors(void)
{
  g_autoptr(FerryTtrpcServer) s = ferry_ttrpc_server_new();
  g_autoptr(GError) error = NULL;
  static const FerryTtrpcMethodImpl bad[] = { { "NoSuchMethod", dummy_handler, 0 }, { NULL } };
  g_assert_false(ferry_ttrpc_server_register(s, NULL, &ferry__test__v1__interop__descriptor, bad,
                                             NULL, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
  g_clear_error(&error);
  static const FerryTtrpcMethodImpl good[] = { { "Echo", dummy_handler, 0 }, { NULL } };
  g_assert_true(ferry_ttrpc_server_register(s, NULL, &ferry__test__v1__interop__descriptor, good,
                                            NULL, &error));
  g_assert_false(ferry_ttrpc_server_register(s, NULL, &ferry__test__v1__interop__descriptor, good,
                                             NULL, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_ALREADY_EXISTS);
  g_clear_error(&error);
  /* The same descriptor under a second wire name (Task v2 and v3). */
  g_assert_true(ferry_ttrpc_server_register(
      s, "ferry.test.v2.Interop", &ferry__test__v1__interop__descriptor, good, NULL, &error));
}

/* The same handlers answer under both registered names. */
static void test_register_second_name_serves(void)
{
  g_autoptr(FerryTtrpcServer) s = ferry_ttrpc_server_new();
  g_autoptr(GError) error = NULL;
  g_assert_true(ferry_test_interop_register(s, &error));
  static const FerryTtrpcMethodImpl echo_only[] = { { "Echo", dummy_handler, 0 }, { NULL } };
  g_assert_true(ferry_ttrpc_server_register(
      s, "alias.Interop", &ferry__test__v1__interop__descriptor, echo_only, NULL, &error));
  int fds[2];
  g_assert_true(ferry_socketpair(fds, FALSE, &error));
  g_assert_true(ferry_ttrpc_server_add_connection(s, fds[0], &error));
  g_autoptr(FerryTtrpcClient) c = ferry_ttrpc_client_new(fds[1], &error);
  StringValue v = GOOGLE__PROTOBUF__STRING_VALUE__INIT;
  v.value = "a";
  ProtobufCMessage *r =
      ferry_ttrpc_client_call_sync(c, "alias.Interop", "Echo", &v.base,
                                   &google__protobuf__string_value__descriptor, NULL, &error);
  g_assert_no_error(error);
  /* dummy_handler answers with no payload: the empty StringValue. */
  g_assert_cmpstr(((StringValue *)r)->value, ==, "");
  protobuf_c_message_free_unpacked(r, NULL);
}

/* A client that never reads cannot make the server buffer without bound: past the
 * output cap the connection is closed. */
static void test_server_closes_non_reading_peer(RawFixture *f, gconstpointer data)
{
  g_autofree char *n = g_strdup_printf("%u", FERRY_TTRPC_MAX_DATA - 16);
  /* 20 answers of 4 MiB = 80 MiB > the 64 MiB cap. */
  for (guint32 sid = 1; sid < 40; sid += 2)
    raw_request(f, sid, "Big", n, 0);
  gint64 until = g_get_monotonic_time() + 20 * G_USEC_PER_SEC;
  while (ferry_ttrpc_server_connection_count(f->server) > 0 && g_get_monotonic_time() < until)
    g_main_context_iteration(NULL, FALSE);
  g_assert_cmpuint(ferry_ttrpc_server_connection_count(f->server), ==, 0);
}

int main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
#define RAW(path, fn)                                                                              \
  g_test_add("/ttrpc/server/" path, RawFixture, NULL, raw_setup, fn, raw_teardown)
#define RPC(path, fn) g_test_add("/ttrpc/rpc/" path, RpcFixture, NULL, rpc_setup, fn, rpc_teardown)
  RAW("echo-reply-bytes", test_server_echo_reply_bytes);
  RAW("error-reply-bytes", test_server_error_reply_bytes);
  RAW("unknown-method-and-service", test_server_unknown_method_and_service);
  RAW("empty-ok-reply", test_server_empty_ok_reply);
  RAW("rejects-even-stream-id", test_server_rejects_even_stream_id);
  RAW("rejects-reused-stream-id", test_server_rejects_reused_stream_id);
  RAW("oversize-frame-answered-and-skipped", test_server_oversize_frame);
  RAW("undecodable-request", test_server_undecodable_request);
  RAW("undecodable-payload", test_server_undecodable_payload);
  RAW("data-on-unknown-stream", test_server_data_on_unknown_stream);
  RAW("ignores-unknown-types", test_server_ignores_unknown_types);
  RAW("refuses-client-streams", test_server_refuses_client_streams);
  RAW("stream-frames", test_server_stream_frames);
  RAW("stream-error", test_server_stream_error);
  RAW("enforces-deadline", test_server_enforces_deadline);
  RAW("huge-timeout", test_server_huge_timeout);
  RAW("truncated-frame-then-close", test_server_truncated_frame_then_close);
  RAW("pipelined-in-one-write", test_server_pipelined_in_one_write);
  RAW("closes-non-reading-peer", test_server_closes_non_reading_peer);
  RPC("echo-with-metadata", test_client_echo_with_metadata);
  RPC("deadline-propagates", test_client_deadline_propagates);
  RPC("status-round-trip", test_client_status_round_trip);
  RPC("unknown-method", test_client_unknown_method);
  RPC("out-of-order-replies", test_client_out_of_order_replies);
  RPC("many-concurrent-calls", test_client_many_concurrent_calls);
  RPC("local-deadline", test_client_local_deadline);
  RPC("server-stream", test_client_server_stream);
  RPC("server-stream-error", test_client_server_stream_error);
  RPC("oversize-request-fails-locally", test_client_oversize_request_fails_locally);
  RPC("oversize-response", test_client_oversize_response);
  RPC("close-fails-pending-and-cancels-server-side", test_client_close_fails_pending);
  RPC("server-shutdown-fails-client-calls", test_server_shutdown_fails_client_calls);
  RPC("cancel", test_client_cancel);
  RPC("stream-ids-odd-and-increasing", test_client_stream_ids);
  g_test_add_func("/ttrpc/client/connect-missing-socket", test_connect_missing_socket);
  g_test_add_func("/ttrpc/client/call-after-peer-closed", test_client_call_after_peer_closed);
  g_test_add_func("/ttrpc/rpc/call-sync-on-pushed-context", test_call_sync_on_pushed_context);
  g_test_add_func("/ttrpc/server/reply-after-peer-closed", test_server_reply_after_peer_closed);
  g_test_add_func("/ttrpc/server/listen-replaces-stale-socket-only",
                  test_listen_replaces_stale_socket_only);
  g_test_add_func("/ttrpc/server/register-errors", test_register_errors);
  g_test_add_func("/ttrpc/server/register-second-name-serves", test_register_second_name_serves);
  return g_test_run();
}
