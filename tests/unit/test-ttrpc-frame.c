/* The ttrpc frame codec against the byte-exact vectors of docs/ttrpc.md, "Test
 * vectors" (traces of containerd's Go ttrpc and ttrpc-rust), and the parser's
 * behaviour on split, merged and oversize input. */
#include <string.h>

#include "ferry/error.h"
#include "ferry/ttrpc.h"
#include "google/protobuf/wrappers.pb-c.h"
#include "test-util.h"
#include "ttrpc/envelope.pb-c.h"

/* Pack a message and compare with the expected hex. */
static void assert_packs_to(const ProtobufCMessage *msg, const char *hex)
{
  g_autoptr(GByteArray) want = test_hex(hex);
  gsize len = protobuf_c_message_get_packed_size(msg);
  g_autofree guint8 *got = g_malloc(len + 1);
  protobuf_c_message_pack(msg, got);
  g_autofree char *got_hex = test_to_hex(got, len);
  g_autofree char *want_hex = test_to_hex(want->data, want->len);
  g_assert_cmpstr(got_hex, ==, want_hex);
}

static void assert_header_is(guint32 len, guint32 sid, guint8 type, guint8 flags, const char *hex)
{
  FerryTtrpcHeader h = { len, sid, type, flags };
  guint8 out[FERRY_TTRPC_HEADER_SIZE];
  ferry_ttrpc_header_encode(&h, out);
  g_autofree char *got = test_to_hex(out, sizeof(out));
  g_autoptr(GByteArray) want = test_hex(hex);
  g_autofree char *want_hex = test_to_hex(want->data, want->len);
  g_assert_cmpstr(got, ==, want_hex);

  FerryTtrpcHeader back;
  ferry_ttrpc_header_decode(out, &back);
  g_assert_cmpuint(back.length, ==, len);
  g_assert_cmpuint(back.stream_id, ==, sid);
  g_assert_cmpuint(back.type, ==, type);
  g_assert_cmpuint(back.flags, ==, flags);
}

/* Vector 1: Go client -> Go server, Echo with metadata. */
static void test_vector_unary_request(void)
{
  Google__Protobuf__StringValue ping = GOOGLE__PROTOBUF__STRING_VALUE__INIT;
  ping.value = "ping";
  guint8 payload[16];
  gsize plen = protobuf_c_message_pack(&ping.base, payload);

  Ttrpc__KeyValue kv = TTRPC__KEY_VALUE__INIT;
  kv.key = "x-test";
  kv.value = "hello-md";
  Ttrpc__KeyValue *kvs[] = { &kv };
  Ttrpc__Request req = TTRPC__REQUEST__INIT;
  req.service = "ttrpc.test.v1.Echo";
  req.method = "Echo";
  req.payload.data = payload;
  req.payload.len = plen;
  req.n_metadata = 1;
  req.metadata = kvs;
  assert_packs_to(&req.base, "0a1274747270632e746573742e76312e4563686f12044563686f1a060a0470696e67"
                             "2a120a06782d74657374120868656c6c6f2d6d64");
  g_assert_cmpuint(protobuf_c_message_get_packed_size(&req.base), ==, 0x36);
  assert_header_is(0x36, 1, FERRY_TTRPC_TYPE_REQUEST, 0, "00000036 00000001 01 00");
}

/* Vector 1's reply: status omitted, payload StringValue{"ping|md=hello-md"}. */
static void test_vector_unary_reply(void)
{
  Google__Protobuf__StringValue v = GOOGLE__PROTOBUF__STRING_VALUE__INIT;
  v.value = "ping|md=hello-md";
  guint8 payload[32];
  gsize plen = protobuf_c_message_pack(&v.base, payload);
  Ttrpc__Response resp = TTRPC__RESPONSE__INIT;
  resp.payload.data = payload;
  resp.payload.len = plen;
  assert_packs_to(&resp.base, "1212 0a10 70696e677c6d643d68656c6c6f2d6d64");
  assert_header_is(0x14, 1, FERRY_TTRPC_TYPE_RESPONSE, 0, "00000014 00000001 02 00");
}

/* Vectors 2 and 3: error statuses. */
static void test_vector_error_replies(void)
{
  Google__Rpc__Status st = GOOGLE__RPC__STATUS__INIT;
  Ttrpc__Response resp = TTRPC__RESPONSE__INIT;
  resp.status = &st;

  st.code = FERRY_ERROR_NOT_FOUND;
  st.message = "no such thing";
  assert_packs_to(&resp.base, "0a11 0805 120d 6e6f2073756368207468696e67");
  assert_header_is(0x13, 3, FERRY_TTRPC_TYPE_RESPONSE, 0, "00000013 00000003 02 00");

  st.code = FERRY_ERROR_UNIMPLEMENTED;
  st.message = "method Nope";
  assert_packs_to(&resp.base, "0a0f 080c 120b 6d6574686f64204e6f7065");
  st.message = "service no.Such";
  assert_packs_to(&resp.base, "0a13 080c 120f 73657276696365206e6f2e53756368");
}

/* Vector 4: an Empty payload is omitted; timeout_nano 299972379 is field 4. */
static void test_vector_timeout_nano(void)
{
  Ttrpc__Request req = TTRPC__REQUEST__INIT;
  req.service = "";
  req.method = "Sleep";
  req.timeout_nano = 299972379;
  assert_packs_to(&req.base, "1205 536c656570 20 9bee848f01");
}

/* Vector 5: an OK reply to a method returning Empty has no data at all. */
static void test_vector_empty_ok_reply(void)
{
  Ttrpc__Response resp = TTRPC__RESPONSE__INIT;
  g_assert_cmpuint(protobuf_c_message_get_packed_size(&resp.base), ==, 0);
  g_autoptr(GError) error = NULL;
  g_autoptr(GBytes) frame =
      ferry_ttrpc_frame_encode(5, FERRY_TTRPC_TYPE_RESPONSE, 0, NULL, 0, &error);
  g_assert_no_error(error);
  gsize len;
  const guint8 *p = g_bytes_get_data(frame, &len);
  g_autofree char *hex = test_to_hex(p, len);
  g_assert_cmpstr(hex, ==, "00000000000000050200");
}

/* Vector 6: ttrpc-rust's proto.rs request, 67 bytes. */
static void test_vector_rust_request(void)
{
  guint8 payload[] = { 1, 2, 3, 4, 5, 6, 7, 8, 9 };
  Ttrpc__KeyValue kv = TTRPC__KEY_VALUE__INIT;
  kv.key = "test_key1";
  kv.value = "test_value1";
  Ttrpc__KeyValue *kvs[] = { &kv };
  Ttrpc__Request req = TTRPC__REQUEST__INIT;
  req.service = "grpc.TestServices";
  req.method = "Test";
  req.payload.data = payload;
  req.payload.len = sizeof(payload);
  req.timeout_nano = 20000000;
  req.n_metadata = 1;
  req.metadata = kvs;
  assert_packs_to(&req.base, "0a11677270632e5465737453657276696365731204546573741a0901020304050607"
                             "08092080dac4092a180a09746573745f6b657931120b746573745f76616c756531");
  g_assert_cmpuint(protobuf_c_message_get_packed_size(&req.base), ==, 67);

  /* And it decodes back to the same fields. */
  g_autoptr(GByteArray) bytes =
      test_hex("0a11677270632e5465737453657276696365731204546573741a0901020304050607"
               "08092080dac4092a180a09746573745f6b657931120b746573745f76616c756531");
  Ttrpc__Request *back = ttrpc__request__unpack(NULL, bytes->len, bytes->data);
  g_assert_nonnull(back);
  g_assert_cmpstr(back->service, ==, "grpc.TestServices");
  g_assert_cmpstr(back->method, ==, "Test");
  g_assert_cmpint(back->timeout_nano, ==, 20000000);
  g_assert_cmpuint(back->n_metadata, ==, 1);
  g_assert_cmpstr(back->metadata[0]->value, ==, "test_value1");
  g_assert_cmpmem(back->payload.data, back->payload.len, payload, sizeof(payload));
  ttrpc__request__free_unpacked(back, NULL);
}

/* Vector 6's header: 0x10000000 bytes is over the limit and must be refused. */
static void test_vector_rust_oversize_header(void)
{
  g_autoptr(GByteArray) bytes = test_hex("10000000 00000003 02 ef");
  g_autoptr(FerryTtrpcParser) parser = ferry_ttrpc_parser_new();
  ferry_ttrpc_parser_feed(parser, bytes->data, bytes->len);
  FerryTtrpcHeader h;
  const guint8 *data;
  g_assert_cmpint(ferry_ttrpc_parser_next(parser, &h, &data), ==, FERRY_TTRPC_PARSE_OVERSIZE);
  g_assert_cmpuint(h.length, ==, 0x10000000);
  g_assert_cmpuint(h.stream_id, ==, 3);
  g_assert_cmpuint(h.type, ==, 2);
  g_assert_cmpuint(h.flags, ==, 0xef);
}

/* Vector 7: the streaming frames' headers and flags. */
static void test_vector_streaming_headers(void)
{
  assert_header_is(0x23, 3, FERRY_TTRPC_TYPE_REQUEST, FERRY_TTRPC_FLAG_REMOTE_CLOSED,
                   "00000023 00000003 01 01");
  assert_header_is(2, 3, FERRY_TTRPC_TYPE_DATA, 0, "00000002 00000003 03 00");
  assert_header_is(0, 3, FERRY_TTRPC_TYPE_DATA,
                   FERRY_TTRPC_FLAG_REMOTE_CLOSED | FERRY_TTRPC_FLAG_NO_DATA,
                   "00000000 00000003 03 05");
  assert_header_is(0x1d, 5, FERRY_TTRPC_TYPE_REQUEST, FERRY_TTRPC_FLAG_REMOTE_OPEN,
                   "0000001d 00000005 01 02");
}

/* --------------------------------------------------------------- parser -- */

static GByteArray *frames(void)
{
  /* Three frames: a request, an empty OK response, a data frame. */
  return test_hex("00000003 00000001 01 00 616263"
                  "00000000 00000003 02 00"
                  "00000002 00000005 03 00 0801");
}

static void expect_three(FerryTtrpcParser *parser)
{
  FerryTtrpcHeader h;
  const guint8 *data;
  g_assert_cmpint(ferry_ttrpc_parser_next(parser, &h, &data), ==, FERRY_TTRPC_PARSE_FRAME);
  g_assert_cmpuint(h.stream_id, ==, 1);
  g_assert_cmpmem(data, h.length, "abc", 3);
  g_assert_cmpint(ferry_ttrpc_parser_next(parser, &h, &data), ==, FERRY_TTRPC_PARSE_FRAME);
  g_assert_cmpuint(h.stream_id, ==, 3);
  g_assert_cmpuint(h.length, ==, 0);
  g_assert_cmpint(ferry_ttrpc_parser_next(parser, &h, &data), ==, FERRY_TTRPC_PARSE_FRAME);
  g_assert_cmpuint(h.type, ==, FERRY_TTRPC_TYPE_DATA);
  g_assert_cmpmem(data, h.length, "\x08\x01", 2);
  g_assert_cmpint(ferry_ttrpc_parser_next(parser, &h, &data), ==, FERRY_TTRPC_PARSE_NEED_MORE);
  g_assert_cmpuint(ferry_ttrpc_parser_buffered(parser), ==, 0);
}

static void test_parser_many_frames_in_one_feed(void)
{
  g_autoptr(GByteArray) in = frames();
  g_autoptr(FerryTtrpcParser) parser = ferry_ttrpc_parser_new();
  ferry_ttrpc_parser_feed(parser, in->data, in->len);
  expect_three(parser);
}

static void test_parser_byte_at_a_time(void)
{
  g_autoptr(GByteArray) in = frames();
  g_autoptr(FerryTtrpcParser) parser = ferry_ttrpc_parser_new();
  FerryTtrpcHeader h;
  const guint8 *data;
  guint seen = 0;
  for (guint i = 0; i < in->len; i++) {
    ferry_ttrpc_parser_feed(parser, in->data + i, 1);
    while (ferry_ttrpc_parser_next(parser, &h, &data) == FERRY_TTRPC_PARSE_FRAME)
      seen++;
  }
  g_assert_cmpuint(seen, ==, 3);
  g_assert_cmpuint(ferry_ttrpc_parser_buffered(parser), ==, 0);
}

static void test_parser_partial_header_waits(void)
{
  g_autoptr(GByteArray) in = test_hex("00000003 00000001 01");
  g_autoptr(FerryTtrpcParser) parser = ferry_ttrpc_parser_new();
  ferry_ttrpc_parser_feed(parser, in->data, in->len);
  FerryTtrpcHeader h;
  const guint8 *data;
  g_assert_cmpint(ferry_ttrpc_parser_next(parser, &h, &data), ==, FERRY_TTRPC_PARSE_NEED_MORE);
  g_assert_cmpuint(ferry_ttrpc_parser_buffered(parser), ==, 9);
}

/* An oversize frame is reported once, its body skipped across feeds without being
 * buffered, and the next frame parses normally. */
static void test_parser_skips_oversize_body(void)
{
  g_autoptr(FerryTtrpcParser) parser = ferry_ttrpc_parser_new();
  guint32 big = FERRY_TTRPC_MAX_DATA + 1;
  FerryTtrpcHeader h = { big, 7, FERRY_TTRPC_TYPE_REQUEST, 0 };
  guint8 hdr[FERRY_TTRPC_HEADER_SIZE];
  ferry_ttrpc_header_encode(&h, hdr);
  ferry_ttrpc_parser_feed(parser, hdr, sizeof(hdr));

  FerryTtrpcHeader got;
  const guint8 *data;
  g_assert_cmpint(ferry_ttrpc_parser_next(parser, &got, &data), ==, FERRY_TTRPC_PARSE_OVERSIZE);
  g_assert_cmpuint(got.length, ==, big);
  g_assert_cmpuint(got.stream_id, ==, 7);

  g_autofree guint8 *chunk = g_malloc0(65536);
  guint32 left = big;
  while (left > 0) {
    guint32 n = MIN(left, 65536u);
    ferry_ttrpc_parser_feed(parser, chunk, n);
    left -= n;
    g_assert_cmpuint(ferry_ttrpc_parser_buffered(parser), ==, 0);
    g_assert_cmpint(ferry_ttrpc_parser_next(parser, &got, &data), ==, FERRY_TTRPC_PARSE_NEED_MORE);
  }
  g_autoptr(GByteArray) next = test_hex("00000001 00000009 01 00 2a");
  ferry_ttrpc_parser_feed(parser, next->data, next->len);
  g_assert_cmpint(ferry_ttrpc_parser_next(parser, &got, &data), ==, FERRY_TTRPC_PARSE_FRAME);
  g_assert_cmpuint(got.stream_id, ==, 9);
  g_assert_cmpuint(data[0], ==, 0x2a);
}

/* The body of an oversize frame may arrive in the same feed as its header and the
 * frame after it. */
static void test_parser_oversize_in_one_feed(void)
{
  g_autoptr(FerryTtrpcParser) parser = ferry_ttrpc_parser_new();
  gsize big = FERRY_TTRPC_MAX_DATA + 3;
  g_autoptr(GByteArray) in = g_byte_array_new();
  FerryTtrpcHeader h = { (guint32)big, 1, FERRY_TTRPC_TYPE_REQUEST, 0 };
  guint8 hdr[FERRY_TTRPC_HEADER_SIZE];
  ferry_ttrpc_header_encode(&h, hdr);
  g_byte_array_append(in, hdr, sizeof(hdr));
  g_byte_array_set_size(in, (guint)(in->len + big));
  g_autoptr(GByteArray) next = test_hex("00000000 00000003 01 00");
  g_byte_array_append(in, next->data, next->len);

  ferry_ttrpc_parser_feed(parser, in->data, in->len);
  FerryTtrpcHeader got;
  const guint8 *data;
  g_assert_cmpint(ferry_ttrpc_parser_next(parser, &got, &data), ==, FERRY_TTRPC_PARSE_OVERSIZE);
  g_assert_cmpint(ferry_ttrpc_parser_next(parser, &got, &data), ==, FERRY_TTRPC_PARSE_FRAME);
  g_assert_cmpuint(got.stream_id, ==, 3);
  g_assert_cmpint(ferry_ttrpc_parser_next(parser, &got, &data), ==, FERRY_TTRPC_PARSE_NEED_MORE);
}

/* Exactly 4 MiB is allowed (the limit is inclusive, as in Go). */
static void test_parser_accepts_max_size(void)
{
  g_autoptr(FerryTtrpcParser) parser = ferry_ttrpc_parser_new();
  gsize n = FERRY_TTRPC_MAX_DATA;
  g_autofree guint8 *body = g_malloc0(n);
  g_autoptr(GError) error = NULL;
  g_autoptr(GBytes) frame =
      ferry_ttrpc_frame_encode(1, FERRY_TTRPC_TYPE_REQUEST, 0, body, n, &error);
  g_assert_no_error(error);
  gsize len;
  const guint8 *p = g_bytes_get_data(frame, &len);
  ferry_ttrpc_parser_feed(parser, p, len);
  FerryTtrpcHeader got;
  const guint8 *data;
  g_assert_cmpint(ferry_ttrpc_parser_next(parser, &got, &data), ==, FERRY_TTRPC_PARSE_FRAME);
  g_assert_cmpuint(got.length, ==, n);
}

static void test_encode_refuses_oversize(void)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(GBytes) frame = ferry_ttrpc_frame_encode(1, FERRY_TTRPC_TYPE_REQUEST, 0, NULL,
                                                     FERRY_TTRPC_MAX_DATA + 1, &error);
  g_assert_null(frame);
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_RESOURCE_EXHAUSTED);
  g_assert_cmpstr(error->message, ==,
                  "message length 4194305 exceed maximum message size of 4194304");
}

/* Garbage that is not a Request must not decode as one (the server answers
 * INVALID_ARGUMENT instead of crashing). */
static void test_envelope_rejects_garbage(void)
{
  static const char *const bad[] = {
    "0a",                 /* field 1, length missing */
    "0a05616263",         /* string shorter than its length */
    "ff",                 /* a bad tag */
    "1a8080808080808080", /* overlong varint length */
    "0b",                 /* group start (wire type 3) */
  };
  for (gsize i = 0; i < G_N_ELEMENTS(bad); i++) {
    g_autoptr(GByteArray) b = test_hex(bad[i]);
    Ttrpc__Request *r = ttrpc__request__unpack(NULL, b->len, b->data);
    if (r != NULL)
      g_error("garbage %s decoded as a Request", bad[i]);
  }
}

int main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/ttrpc/vector/unary-request-with-metadata", test_vector_unary_request);
  g_test_add_func("/ttrpc/vector/unary-reply-omits-status", test_vector_unary_reply);
  g_test_add_func("/ttrpc/vector/error-replies", test_vector_error_replies);
  g_test_add_func("/ttrpc/vector/timeout-nano", test_vector_timeout_nano);
  g_test_add_func("/ttrpc/vector/empty-ok-reply-has-no-data", test_vector_empty_ok_reply);
  g_test_add_func("/ttrpc/vector/rust-request", test_vector_rust_request);
  g_test_add_func("/ttrpc/vector/rust-oversize-header", test_vector_rust_oversize_header);
  g_test_add_func("/ttrpc/vector/streaming-headers", test_vector_streaming_headers);
  g_test_add_func("/ttrpc/parser/many-frames-in-one-feed", test_parser_many_frames_in_one_feed);
  g_test_add_func("/ttrpc/parser/byte-at-a-time", test_parser_byte_at_a_time);
  g_test_add_func("/ttrpc/parser/partial-header-waits", test_parser_partial_header_waits);
  g_test_add_func("/ttrpc/parser/skips-oversize-body", test_parser_skips_oversize_body);
  g_test_add_func("/ttrpc/parser/oversize-in-one-feed", test_parser_oversize_in_one_feed);
  g_test_add_func("/ttrpc/parser/accepts-max-size", test_parser_accepts_max_size);
  g_test_add_func("/ttrpc/frame/encode-refuses-oversize", test_encode_refuses_oversize);
  g_test_add_func("/ttrpc/envelope/rejects-garbage", test_envelope_rejects_garbage);
  return g_test_run();
}
