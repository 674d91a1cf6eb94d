/* The GCS bridge codec (hcsshim protocol v4): header bytes, frame limits, bodies,
 * HRESULTs. */
#include <string.h>

#include "ferry/bridge-protocol.h"
#include "ferry/error.h"
#include "ferry/json.h"
#include "test-util.h"

static void test_message_types(void)
{
  g_assert_cmphex(ferry_bridge_request_type(FERRY_BRIDGE_RPC_CREATE), ==, 0x10100101);
  g_assert_cmphex(ferry_bridge_request_type(FERRY_BRIDGE_RPC_EXECUTE_PROCESS), ==, 0x10100501);
  g_assert_cmphex(ferry_bridge_request_type(FERRY_BRIDGE_RPC_NEGOTIATE_PROTOCOL), ==, 0x10100b01);
  g_assert_cmphex(ferry_bridge_request_type(FERRY_BRIDGE_RPC_DELETE_CONTAINER_STATE), ==,
                  0x10100d01);
  g_assert_cmphex(ferry_bridge_request_type(FERRY_BRIDGE_RPC_MODIFY_SERVICE_SETTINGS), ==,
                  0x10200101);
  g_assert_cmphex(ferry_bridge_response_type(0x10100601), ==, 0x20100601);
  g_assert_cmpstr(ferry_bridge_message_name(0x10100601), ==, "WaitForProcess");
  g_assert_cmpstr(ferry_bridge_message_name(0x20100b01), ==, "NegotiateProtocol");
  g_assert_cmpstr(ferry_bridge_message_name(0x30100101), ==, "Container notification");
  g_assert_null(ferry_bridge_message_name(0x10109901));
  g_assert_null(ferry_bridge_message_name(0x40100101));
}

/* Little-endian: type, size, id. */
static void test_header_bytes(void)
{
  FerryBridgeHeader h = { 0x10100b01, 0x10 + 0x2a, G_GUINT64_CONSTANT(0x0102030405060708) };
  guint8 out[FERRY_BRIDGE_HEADER_SIZE];
  ferry_bridge_header_encode(&h, out);
  g_autofree char *hex = test_to_hex(out, sizeof(out));
  g_assert_cmpstr(hex, ==, "010b10103a0000000807060504030201");
  FerryBridgeHeader back;
  ferry_bridge_header_decode(out, &back);
  g_assert_cmphex(back.type, ==, h.type);
  g_assert_cmpuint(back.size, ==, h.size);
  g_assert_cmpuint(back.id, ==, h.id);
}

/* The host writes like Go's json.Encoder: a trailing newline counted in Size. */
static void test_encode_with_newline(void)
{
  g_autoptr(json_t) body = json_pack("{s:s}", "ContainerId", "c1");
  g_autoptr(GError) error = NULL;
  g_autoptr(GBytes) msg =
      ferry_bridge_message_encode(0x10100201, 7, body, TRUE, FERRY_BRIDGE_HOST_MAX_MESSAGE, &error);
  g_assert_no_error(error);
  gsize len;
  const guint8 *p = g_bytes_get_data(msg, &len);
  const char *want = "{\"ContainerId\":\"c1\"}\n";
  g_assert_cmpuint(len, ==, 16 + strlen(want));
  g_assert_cmpmem(p + 16, len - 16, want, strlen(want));
  FerryBridgeHeader h;
  ferry_bridge_header_decode(p, &h);
  g_assert_cmpuint(h.size, ==, len);
  g_assert_cmpuint(h.id, ==, 7);

  g_autoptr(GBytes) plain = ferry_bridge_message_encode(0x20100201, 7, body, FALSE,
                                                        FERRY_BRIDGE_HOST_MAX_MESSAGE, &error);
  g_assert_cmpuint(g_bytes_get_size(plain), ==, len - 1);
}

static void test_encode_refuses_over_limit(void)
{
  g_autofree char *big = g_malloc(70000);
  memset(big, 'a', 69999);
  big[69999] = '\0';
  g_autoptr(json_t) body = json_pack("{s:s}", "x", big);
  g_autoptr(GError) error = NULL;
  g_autoptr(GBytes) msg =
      ferry_bridge_message_encode(0x10100101, 1, body, TRUE, FERRY_BRIDGE_HOST_MAX_MESSAGE, &error);
  g_assert_null(msg);
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_RESOURCE_EXHAUSTED);
}

static GByteArray *frame(guint32 type, guint64 id, const char *json)
{
  GByteArray *out = g_byte_array_new();
  FerryBridgeHeader h = { type, (guint32)(16 + strlen(json)), id };
  guint8 hdr[16];
  ferry_bridge_header_encode(&h, hdr);
  g_byte_array_append(out, hdr, 16);
  g_byte_array_append(out, (const guint8 *)json, (guint)strlen(json));
  return out;
}

static void test_parser_split_and_merged(void)
{
  g_autoptr(GByteArray) a = frame(0x20100b01, 0, "{\"Result\":0}");
  g_autoptr(GByteArray) b = frame(0x30100101, 0, "{\"ContainerId\":\"c\"}\n");
  g_autoptr(GByteArray) both = g_byte_array_new();
  g_byte_array_append(both, a->data, a->len);
  g_byte_array_append(both, b->data, b->len);

  g_autoptr(FerryBridgeParser) p = ferry_bridge_parser_new(FERRY_BRIDGE_HOST_MAX_MESSAGE);
  FerryBridgeHeader h;
  const guint8 *body;
  g_autoptr(GError) error = NULL;
  guint frames = 0;
  for (guint i = 0; i < both->len; i++) {
    ferry_bridge_parser_feed(p, both->data + i, 1);
    while (ferry_bridge_parser_next(p, &h, &body, &error) == FERRY_BRIDGE_PARSE_FRAME) {
      frames++;
      g_autoptr(json_t) j = ferry_bridge_body_parse(body, h.size - 16, &error);
      g_assert_no_error(error);
      g_assert_true(json_is_object(j));
    }
  }
  g_assert_cmpuint(frames, ==, 2);
}

static void test_parser_rejects_bad_sizes(void)
{
  const guint32 sizes[] = { 0, 15, FERRY_BRIDGE_HOST_MAX_MESSAGE + 1, G_MAXUINT32 };
  for (gsize i = 0; i < G_N_ELEMENTS(sizes); i++) {
    g_autoptr(FerryBridgeParser) p = ferry_bridge_parser_new(FERRY_BRIDGE_HOST_MAX_MESSAGE);
    FerryBridgeHeader h = { 0x20100101, sizes[i], 1 };
    guint8 hdr[16];
    ferry_bridge_header_encode(&h, hdr);
    ferry_bridge_parser_feed(p, hdr, 16);
    FerryBridgeHeader got;
    const guint8 *body;
    g_autoptr(GError) error = NULL;
    g_assert_cmpint(ferry_bridge_parser_next(p, &got, &body, &error), ==, FERRY_BRIDGE_PARSE_ERROR);
    g_assert_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
    g_clear_error(&error);
    /* Nothing after it is trusted. */
    g_autoptr(GByteArray) ok = frame(0x20100101, 2, "{}");
    ferry_bridge_parser_feed(p, ok->data, ok->len);
    g_assert_cmpint(ferry_bridge_parser_next(p, &got, &body, &error), ==, FERRY_BRIDGE_PARSE_ERROR);
    /* A reset (new connection) starts clean. */
    g_clear_error(&error);
    ferry_bridge_parser_reset(p);
    ferry_bridge_parser_feed(p, ok->data, ok->len);
    g_assert_cmpint(ferry_bridge_parser_next(p, &got, &body, &error), ==, FERRY_BRIDGE_PARSE_FRAME);
  }
  /* Exactly the limit, and an empty body, are fine. */
  g_autoptr(FerryBridgeParser) p = ferry_bridge_parser_new(64);
  g_autoptr(GByteArray) empty = frame(0x20100101, 1, "");
  ferry_bridge_parser_feed(p, empty->data, empty->len);
  FerryBridgeHeader got;
  const guint8 *body;
  g_assert_cmpint(ferry_bridge_parser_next(p, &got, &body, NULL), ==, FERRY_BRIDGE_PARSE_FRAME);
  g_assert_cmpuint(got.size, ==, 16);
}

static void test_body_parse(void)
{
  g_autoptr(GError) error = NULL;
  const char *with_nl = "{\"Result\":0}\n";
  g_autoptr(json_t) a = ferry_bridge_body_parse((const guint8 *)with_nl, strlen(with_nl), &error);
  g_assert_no_error(error);
  g_assert_nonnull(a);
  static const char *const bad[] = { "",   "[]", "\"x\"", "{", "{\"a\":1}{}", "{\"a\":1,\"a\":2}",
                                     "nul" };
  for (gsize i = 0; i < G_N_ELEMENTS(bad); i++) {
    g_autoptr(json_t) j = ferry_bridge_body_parse((const guint8 *)bad[i], strlen(bad[i]), &error);
    if (j != NULL)
      g_error("accepted bad body %s", bad[i]);
    g_assert_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
    g_clear_error(&error);
  }
  /* A NUL inside the body is not JSON. */
  const guint8 nul[] = { '{', '}', 0 };
  g_autoptr(json_t) n = ferry_bridge_body_parse(nul, sizeof(nul), &error);
  g_assert_null(n);
}

static void test_response_check(void)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(json_t) ok = json_pack("{s:i}", "Result", 0);
  g_assert_true(ferry_bridge_response_check(ok, "Start", &error));

  /* Go writes the HRESULT as a signed int32. */
  g_autoptr(json_t) nf = json_pack("{s:I, s:s}", "Result", (json_int_t)(gint32)0x80070490,
                                   "ErrorMessage", "no such process");
  g_assert_false(ferry_bridge_response_check(nf, "WaitForProcess", &error));
  g_assert_error(error, FERRY_BRIDGE_ERROR, (gint)0x80070490);
  g_assert_cmphex(ferry_bridge_error_hresult(error), ==, 0x80070490);
  g_assert_cmpstr(error->message, ==, "WaitForProcess: no such process HRESULT 0x80070490");
  g_assert_cmpint(ferry_error_to_status_code(error), ==, FERRY_ERROR_NOT_FOUND);
  g_clear_error(&error);

  /* Unsigned spelling accepted too. */
  g_autoptr(json_t) unsig = json_pack("{s:I}", "Result", (json_int_t)0xC037010E);
  g_assert_false(ferry_bridge_response_check(unsig, "Start", &error));
  g_assert_cmphex(ferry_bridge_error_hresult(error), ==, 0xC037010E);
  g_clear_error(&error);

  g_autoptr(json_t) missing = json_object();
  g_assert_false(ferry_bridge_response_check(missing, "Start", &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
  g_clear_error(&error);
  g_autoptr(json_t) wrong = json_pack("{s:s}", "Result", "0");
  g_assert_false(ferry_bridge_response_check(wrong, "Start", &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
  g_clear_error(&error);
  g_autoptr(json_t) huge = json_pack("{s:I}", "Result", (json_int_t)G_MAXINT64);
  g_assert_false(ferry_bridge_response_check(huge, "Start", &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
}

static void test_response_base(void)
{
  g_autoptr(json_t) ok = ferry_bridge_response_base("act", 0, NULL);
  g_autofree char *a = ferry_json_dump(ok);
  g_assert_cmpstr(a, ==, "{\"Result\":0,\"ActivityId\":\"act\"}");
  g_autoptr(json_t) bad = ferry_bridge_response_base(NULL, FERRY_HR_E_NOTIMPL, "nope");
  g_assert_cmpint(json_integer_value(json_object_get(bad, "Result")), ==, (gint32)0x80004001);
  g_assert_cmpstr(json_string_value(json_object_get(bad, "ErrorMessage")), ==, "nope");
  json_t *rec = json_array_get(json_object_get(bad, "ErrorRecords"), 0);
  g_assert_cmpstr(json_string_value(json_object_get(rec, "ModuleName")), ==, "gcs");
  g_assert_cmpstr(json_string_value(json_object_get(bad, "ActivityId")), ==,
                  FERRY_ZERO_ACTIVITY_ID);
}

/* "AnyInString" fields hold JSON inside a string. */
static void test_embedded_json(void)
{
  g_autoptr(json_t) obj = json_object();
  ferry_bridge_set_embedded(obj, "ProcessParameters",
                            json_pack("{s:[s,s]}", "CommandArgs", "echo", "hi"));
  g_assert_true(json_is_string(json_object_get(obj, "ProcessParameters")));
  g_assert_cmpstr(json_string_value(json_object_get(obj, "ProcessParameters")), ==,
                  "{\"CommandArgs\":[\"echo\",\"hi\"]}");
  g_autoptr(GError) error = NULL;
  g_autoptr(json_t) back = NULL;
  g_assert_true(ferry_bridge_get_embedded(obj, "ProcessParameters", TRUE, &back, &error));
  g_assert_true(json_is_array(json_object_get(back, "CommandArgs")));

  json_t *absent = NULL;
  g_assert_true(ferry_bridge_get_embedded(obj, "Nope", FALSE, &absent, &error));
  g_assert_null(absent);
  g_assert_false(ferry_bridge_get_embedded(obj, "Nope", TRUE, &absent, &error));
  g_clear_error(&error);
  json_object_set_new(obj, "Bad", json_string("{not json"));
  g_assert_false(ferry_bridge_get_embedded(obj, "Bad", TRUE, &absent, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
  g_clear_error(&error);
  json_object_set_new(obj, "Num", json_integer(3));
  g_assert_false(ferry_bridge_get_embedded(obj, "Num", TRUE, &absent, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
}

static void test_hresult_mapping(void)
{
  g_assert_cmpint(ferry_bridge_hresult_to_status(FERRY_HR_NOT_FOUND), ==, FERRY_ERROR_NOT_FOUND);
  g_assert_cmpint(ferry_bridge_hresult_to_status(FERRY_HR_SYSTEM_NOT_FOUND), ==,
                  FERRY_ERROR_NOT_FOUND);
  g_assert_cmpint(ferry_bridge_hresult_to_status(FERRY_HR_ALREADY_EXISTS), ==,
                  FERRY_ERROR_ALREADY_EXISTS);
  g_assert_cmpint(ferry_bridge_hresult_to_status(FERRY_HR_E_NOTIMPL), ==,
                  FERRY_ERROR_UNIMPLEMENTED);
  g_assert_cmpint(ferry_bridge_hresult_to_status(0x12345678), ==, FERRY_ERROR_UNKNOWN);
  g_autoptr(GError) closed =
      g_error_new(FERRY_BRIDGE_CLOSED_ERROR, FERRY_BRIDGE_CLOSED, "bridge closed: x");
  g_assert_cmpint(ferry_error_to_status_code(closed), ==, FERRY_ERROR_UNAVAILABLE);
  g_assert_cmphex(ferry_bridge_error_hresult(closed), ==, 0);
  /* And back, for the guest's answers. */
  g_autoptr(GError) nf = g_error_new(FERRY_ERROR, FERRY_ERROR_NOT_FOUND, "x");
  g_assert_cmphex(ferry_bridge_hresult_from_error(nf), ==, FERRY_HR_NOT_FOUND);
  g_autoptr(GError) other = g_error_new(G_FILE_ERROR, G_FILE_ERROR_FAILED, "x");
  g_assert_cmphex(ferry_bridge_hresult_from_error(other), ==, FERRY_HR_E_FAIL);
  g_autoptr(GError) hr = g_error_new(FERRY_BRIDGE_ERROR, (gint)FERRY_HR_TIMEOUT, "x");
  g_assert_cmphex(ferry_bridge_hresult_from_error(hr), ==, FERRY_HR_TIMEOUT);
  g_assert_cmphex(ferry_bridge_hresult_from_error(NULL), ==, 0);
}

int main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/bridge/protocol/message-types", test_message_types);
  g_test_add_func("/bridge/protocol/header-bytes", test_header_bytes);
  g_test_add_func("/bridge/protocol/encode-with-newline", test_encode_with_newline);
  g_test_add_func("/bridge/protocol/encode-refuses-over-limit", test_encode_refuses_over_limit);
  g_test_add_func("/bridge/protocol/parser-split-and-merged", test_parser_split_and_merged);
  g_test_add_func("/bridge/protocol/parser-rejects-bad-sizes", test_parser_rejects_bad_sizes);
  g_test_add_func("/bridge/protocol/body-parse", test_body_parse);
  g_test_add_func("/bridge/protocol/response-check", test_response_check);
  g_test_add_func("/bridge/protocol/response-base", test_response_base);
  g_test_add_func("/bridge/protocol/embedded-json", test_embedded_json);
  g_test_add_func("/bridge/protocol/hresult-mapping", test_hresult_mapping);
  return g_test_run();
}
