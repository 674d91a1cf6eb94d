/*
 * The guest bridge server (hcsshim's internal/guest/bridge, protocol v4) over real
 * sockets, with the test acting as the host byte for byte: requests encoded as
 * hcsshim's host writes them (json.Encoder, trailing newline), answers parsed from the
 * raw socket. Covers the Mux and ListenAndServe behaviours of bridge_unit_test.go, the
 * reconnect behaviours of bridge_reconnect_test.go (docs/bridge-protocol.md, tests),
 * negotiation, the backlog, malformed input and lifetimes.
 */
#include <errno.h>
#include <poll.h>
#include <string.h>
#include <unistd.h>

#include "ferry/bridge-guest.h"
#include "ferry/error.h"
#include "ferry/fd.h"
#include "ferry/json.h"
#include "test-util.h"

#define ZERO_GUID FERRY_ZERO_ACTIVITY_ID
#define ACTIVITY "6f1c5e4a-9d0b-4c3e-8a7f-1b2c3d4e5f60"
#define NEGOTIATE ferry_bridge_request_type(FERRY_BRIDGE_RPC_NEGOTIATE_PROTOCOL)
#define EXECUTE ferry_bridge_request_type(FERRY_BRIDGE_RPC_EXECUTE_PROCESS)
#define WAIT ferry_bridge_request_type(FERRY_BRIDGE_RPC_WAIT_FOR_PROCESS)
#define V4 FERRY_BRIDGE_PROTOCOL_V4
#define INVALID FERRY_BRIDGE_PROTOCOL_INVALID

/* The Linux GCS's NegotiateProtocol answer to a host with the zero ActivityId. */
#define DEFAULT_CAPABILITIES                                                                       \
  "{\"SendHostCreateMessage\":false,\"SendHostStartMessage\":false,"                               \
  "\"HvSocketConfigOnStartup\":false,\"SupportedSchemaVersions\":[{\"Major\":2,\"Minor\":1}],"     \
  "\"RuntimeOsType\":\"Linux\",\"GuestDefinedCapabilities\":{\"NamespaceAddRequestSupported\":"    \
  "true,\"SignalProcessSupported\":true,\"DumpStacksSupported\":true,"                             \
  "\"DeleteContainerStateSupported\":true}}"

typedef struct {
  FerryBridgeServer *server;
  int host; /* the test's end of the current connection (non-blocking), or -1 */
  FerryBridgeParser *parser;
  guint disconnects;
  GError *disconnect_error; /* of the last disconnect; NULL for a local close */
  GPtrArray *held;          /* requests the holding handler keeps unanswered */
  GPtrArray *calls;         /* "<tag> <id>" per handler call */
  /* What the inspecting handler saw. */
  guint32 seen_type;
  guint64 seen_id;
  guint32 seen_version;
  char *seen_container_id;
  char *seen_activity_id;
  /* Behaviours of the disconnected callback. */
  gboolean free_on_disconnect;
  gboolean serve_on_disconnect;
  int redial_host;
} Fixture;

static void on_disconnected(FerryBridgeServer *server, const GError *error, gpointer user_data)
{
  Fixture *f = user_data;
  g_assert_true(server == f->server);
  g_assert_false(ferry_bridge_server_is_connected(server));
  g_assert_cmpuint(ferry_bridge_server_get_protocol_version(server), ==, INVALID);
  f->disconnects++;
  g_clear_error(&f->disconnect_error);
  if (error != NULL)
    f->disconnect_error = g_error_copy(error);
  if (f->free_on_disconnect) {
    ferry_bridge_server_free(g_steal_pointer(&f->server));
  } else if (f->serve_on_disconnect) {
    /* The agent's loop: re-dial at once. */
    f->serve_on_disconnect = FALSE;
    g_autoptr(GError) local = NULL;
    int fds[2];
    g_assert_true(ferry_socketpair(fds, TRUE, &local));
    g_assert_true(ferry_bridge_server_serve(server, fds[0], &local));
    f->redial_host = fds[1];
  }
}

static void fixture_setup(Fixture *f, gconstpointer data)
{
  f->server = ferry_bridge_server_new();
  f->host = -1;
  f->redial_host = -1;
  f->parser = ferry_bridge_parser_new(G_MAXUINT32);
  f->held = g_ptr_array_new();
  f->calls = g_ptr_array_new_with_free_func(g_free);
  ferry_bridge_server_set_disconnected_func(f->server, on_disconnected, f);
}

static void fixture_teardown(Fixture *f, gconstpointer data)
{
  for (guint i = 0; i < f->held->len; i++)
    ferry_bridge_request_drop(f->held->pdata[i]);
  g_ptr_array_unref(f->held);
  ferry_bridge_server_free(f->server);
  ferry_fd_clear(&f->host);
  ferry_fd_clear(&f->redial_host);
  ferry_bridge_parser_free(f->parser);
  g_ptr_array_unref(f->calls);
  g_clear_error(&f->disconnect_error);
  g_free(f->seen_container_id);
  g_free(f->seen_activity_id);
}

/* ------------------------------------------------------------- handlers -- */

/* Answers at once with {"Handler": tag}; user_data is a static string. */
static Fixture *current_fixture;

static void handler_tag(FerryBridgeRequest *request, gpointer user_data)
{
  g_ptr_array_add(current_fixture->calls,
                  g_strdup_printf("%s %" G_GUINT64_FORMAT, (const char *)user_data,
                                  ferry_bridge_request_get_id(request)));
  ferry_bridge_request_reply(request, json_pack("{s:s}", "Handler", (const char *)user_data));
}

/* Keeps the request for the test to answer later. */
static void handler_hold(FerryBridgeRequest *request, gpointer user_data)
{
  Fixture *f = user_data;
  g_ptr_array_add(f->held, request);
}

/* Records what the request says about itself, then answers. */
static void handler_inspect(FerryBridgeRequest *request, gpointer user_data)
{
  Fixture *f = user_data;
  f->seen_type = ferry_bridge_request_get_type(request);
  f->seen_id = ferry_bridge_request_get_id(request);
  f->seen_version = ferry_bridge_request_get_version(request);
  g_free(f->seen_container_id);
  g_free(f->seen_activity_id);
  f->seen_container_id = g_strdup(ferry_bridge_request_get_container_id(request));
  f->seen_activity_id = g_strdup(ferry_bridge_request_get_activity_id(request));
  g_assert_true(json_is_object(ferry_bridge_request_get_body(request)));
  ferry_bridge_request_reply(request, json_pack("{s:i}", "ProcessId", 42));
}

static void handler_drop(FerryBridgeRequest *request, gpointer user_data)
{
  ferry_bridge_request_drop(request);
}

static void handler_disconnect(FerryBridgeRequest *request, gpointer user_data)
{
  Fixture *f = user_data;
  ferry_bridge_request_drop(request);
  ferry_bridge_server_disconnect(f->server);
}

static void handler_free_server(FerryBridgeRequest *request, gpointer user_data)
{
  Fixture *f = user_data;
  ferry_bridge_server_free(g_steal_pointer(&f->server));
  /* The request outlives the server; answering it now is dropped. */
  ferry_bridge_request_reply(request, NULL);
}

/* ---------------------------------------------------------- the host end -- */

/* Serve a new connection; the test keeps the other end. Any previous host end is
 * closed unless the test took it. */
static void host_connect(Fixture *f)
{
  g_autoptr(GError) error = NULL;
  int fds[2];
  g_assert_true(ferry_socketpair(fds, TRUE, &error));
  g_assert_true(ferry_bridge_server_serve(f->server, fds[0], &error));
  g_assert_no_error(error);
  ferry_fd_clear(&f->host);
  f->host = fds[1];
  ferry_bridge_parser_reset(f->parser);
  g_assert_true(ferry_bridge_server_is_connected(f->server));
  g_assert_cmpuint(ferry_bridge_server_get_protocol_version(f->server), ==, INVALID);
}

/* Write everything, letting the server run while the socket is full. */
static void host_write(Fixture *f, const void *data, gsize len)
{
  const guint8 *p = data;
  while (len > 0) {
    ssize_t n = write(f->host, p, len);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
      g_main_context_iteration(NULL, FALSE);
      continue;
    }
    g_assert_cmpint(n, >, 0);
    p += n;
    len -= (gsize)n;
  }
}

/* A request as hcsshim's host encodes it (trailing newline included in Size). */
static GBytes *encode_request(guint32 type, guint64 id, const char *json)
{
  json_error_t jerr;
  g_autoptr(json_t) body = json_loads(json, 0, &jerr);
  if (body == NULL)
    g_error("bad test JSON %s: %s", json, jerr.text);
  g_autoptr(GError) error = NULL;
  GBytes *b =
      ferry_bridge_message_encode(type, id, body, TRUE, FERRY_BRIDGE_GUEST_MAX_MESSAGE, &error);
  g_assert_no_error(error);
  return b;
}

static void host_send(Fixture *f, guint32 type, guint64 id, const char *json)
{
  g_autoptr(GBytes) b = encode_request(type, id, json);
  host_write(f, g_bytes_get_data(b, NULL), g_bytes_get_size(b));
}

/* A frame with an arbitrary body (not necessarily JSON). */
static void host_send_raw(Fixture *f, guint32 type, guint64 id, const char *body)
{
  gsize len = strlen(body);
  guint8 header[FERRY_BRIDGE_HEADER_SIZE];
  FerryBridgeHeader h = { type, (guint32)(FERRY_BRIDGE_HEADER_SIZE + len), id };
  ferry_bridge_header_encode(&h, header);
  host_write(f, header, sizeof(header));
  host_write(f, body, len);
}

static void host_send_negotiate(Fixture *f, guint64 id, guint32 min, guint32 max)
{
  g_autofree char *json =
      g_strdup_printf("{\"ContainerId\":\"" FERRY_NULL_CONTAINER_ID "\",\"ActivityId\":\"" ZERO_GUID
                      "\",\"MinimumVersion\":%u,\"MaximumVersion\":%u}",
                      min, max);
  host_send(f, NEGOTIATE, id, json);
}

/* Pull what the socket has into the parser; FALSE when nothing was there. EOF is
 * reported in *eof. */
static gboolean host_pull(Fixture *f, gboolean *eof)
{
  guint8 buf[65536];
  ssize_t n = read(f->host, buf, sizeof(buf));
  if (n > 0) {
    ferry_bridge_parser_feed(f->parser, buf, (gsize)n);
    return TRUE;
  }
  if (n == 0) {
    *eof = TRUE;
    return FALSE;
  }
  g_assert_true(errno == EAGAIN || errno == EINTR);
  return FALSE;
}

/* The next message the guest sends, running the loop; fails after 5 s or at EOF.
 * Returns its body, checked to be a JSON object without a trailing newline (the Linux
 * GCS marshals with json.Marshal); *raw gets the body text when asked. */
static json_t *host_read(Fixture *f, FerryBridgeHeader *h, char **raw)
{
  gint64 until = g_get_monotonic_time() + 5 * G_USEC_PER_SEC;
  for (;;) {
    const guint8 *body;
    g_autoptr(GError) error = NULL;
    FerryBridgeParseResult r = ferry_bridge_parser_next(f->parser, h, &body, &error);
    g_assert_no_error(error);
    if (r == FERRY_BRIDGE_PARSE_FRAME) {
      gsize len = h->size - FERRY_BRIDGE_HEADER_SIZE;
      g_assert_cmpuint(len, >, 0);
      g_assert_cmpint(body[len - 1], !=, '\n');
      json_t *v = ferry_bridge_body_parse(body, len, &error);
      g_assert_no_error(error);
      if (raw != NULL)
        *raw = g_strndup((const char *)body, len);
      return v;
    }
    gboolean eof = FALSE;
    if (host_pull(f, &eof))
      continue;
    if (eof)
      g_error("the guest closed the connection instead of sending a message");
    if (g_get_monotonic_time() > until)
      g_error("no message from the guest within 5 s");
    g_main_context_iteration(NULL, FALSE);
    g_usleep(100);
  }
}

static guint32 body_result(json_t *body)
{
  json_t *r = json_object_get(body, "Result");
  g_assert_true(json_is_integer(r));
  return (guint32)json_integer_value(r);
}

static const char *body_string(json_t *body, const char *key)
{
  json_t *v = json_object_get(body, key);
  g_assert_true(json_is_string(v));
  return json_string_value(v);
}

/* Read the answer to request (`type`, `id`) and check its Result. */
static json_t *expect_answer(Fixture *f, guint32 type, guint64 id, guint32 hresult)
{
  FerryBridgeHeader h;
  json_t *body = host_read(f, &h, NULL);
  g_assert_cmphex(h.type, ==, ferry_bridge_response_type(type));
  g_assert_cmpuint(h.id, ==, id);
  g_assert_cmphex(body_result(body), ==, hresult);
  return body;
}

static void expect_not_implemented(Fixture *f, guint32 type, guint64 id, const char *activity_id)
{
  g_autoptr(json_t) body = expect_answer(f, type, id, FERRY_HR_E_NOTIMPL);
  g_assert_cmpstr(body_string(body, "ErrorMessage"), ==, "bridge: function not supported");
  g_assert_cmpstr(body_string(body, "ActivityId"), ==, activity_id);
}

/* A container notification with {"Seq": seq}. */
static void expect_notification(Fixture *f, int seq)
{
  FerryBridgeHeader h;
  g_autoptr(json_t) body = host_read(f, &h, NULL);
  g_assert_cmphex(h.type, ==, FERRY_BRIDGE_NOTIFY_CONTAINER);
  g_assert_cmpuint(h.id, ==, 0);
  g_assert_cmpstr(body_string(body, "ContainerId"), ==, "c1");
  g_assert_cmpint(json_integer_value(json_object_get(body, "Seq")), ==, seq);
}

static void notify(Fixture *f, int seq)
{
  json_t *body = ferry_bridge_request_base("c1", ACTIVITY);
  json_object_set_new(body, "Type", json_string("UnexpectedExit"));
  json_object_set_new(body, "Operation", json_string("None"));
  json_object_set_new(body, "Result", json_integer(0));
  json_object_set_new(body, "Seq", json_integer(seq));
  ferry_bridge_server_notify(f->server, body);
}

static void negotiate(Fixture *f, guint64 id)
{
  host_send_negotiate(f, id, V4, V4);
  g_autoptr(json_t) body = expect_answer(f, NEGOTIATE, id, 0);
  g_assert_cmpint(json_integer_value(json_object_get(body, "Version")), ==, 4);
  g_assert_cmpuint(ferry_bridge_server_get_protocol_version(f->server), ==, V4);
}

/* Let the server run, then check that it sent nothing (and did not close). */
static void expect_silence(Fixture *f)
{
  for (int i = 0; i < 50; i++)
    g_main_context_iteration(NULL, FALSE);
  FerryBridgeHeader h;
  const guint8 *body;
  g_assert_cmpint(ferry_bridge_parser_next(f->parser, &h, &body, NULL), ==,
                  FERRY_BRIDGE_PARSE_NEED_MORE);
  guint8 b;
  ssize_t n = read(f->host, &b, 1);
  g_assert_cmpint(n, <, 0);
  g_assert_cmpint(errno, ==, EAGAIN);
}

/* The guest closed the connection with nothing more sent. */
static void expect_eof(Fixture *f)
{
  gint64 until = g_get_monotonic_time() + 5 * G_USEC_PER_SEC;
  for (;;) {
    guint8 b;
    ssize_t n = read(f->host, &b, 1);
    if (n == 0)
      return;
    g_assert_cmpint(n, <, 0);
    g_assert_cmpint(errno, ==, EAGAIN);
    if (g_get_monotonic_time() > until)
      g_error("the guest did not close the connection within 5 s");
    g_main_context_iteration(NULL, FALSE);
    g_usleep(100);
  }
}

static void run_until_disconnects(Fixture *f, guint n)
{
  gint64 until = g_get_monotonic_time() + 5 * G_USEC_PER_SEC;
  while (f->disconnects < n && g_get_monotonic_time() < until)
    g_main_context_iteration(NULL, FALSE);
  g_assert_cmpuint(f->disconnects, ==, n);
}

static void register_tag(Fixture *f, guint32 type, guint32 version, const char *tag)
{
  current_fixture = f;
  ferry_bridge_server_handle(f->server, type, version, handler_tag, (gpointer)tag);
}

/* ----------------------------------------------------------- negotiation -- */

/* The whole answer, byte for byte: base, Version, the Linux GCS's capabilities; no
 * trailing newline. */
static void test_negotiate_accepts_4_4(Fixture *f, gconstpointer data)
{
  host_connect(f);
  host_send_negotiate(f, 0, 4, 4);
  FerryBridgeHeader h;
  g_autofree char *raw = NULL;
  g_autoptr(json_t) body = host_read(f, &h, &raw);
  g_assert_cmpuint(body_result(body), ==, 0);
  g_assert_cmphex(h.type, ==, 0x20100b01);
  g_assert_cmpuint(h.id, ==, 0);
  g_assert_cmpstr(raw, ==,
                  "{\"Result\":0,\"ActivityId\":\"" ZERO_GUID
                  "\",\"Version\":4,\"Capabilities\":" DEFAULT_CAPABILITIES "}");
  g_assert_cmpuint(h.size, ==, FERRY_BRIDGE_HEADER_SIZE + strlen(raw));
  g_assert_cmpuint(ferry_bridge_server_get_protocol_version(f->server), ==, V4);
}

static void test_negotiate_accepts_1_8_selects_4(Fixture *f, gconstpointer data)
{
  host_connect(f);
  host_send_negotiate(f, 7, 1, 8);
  g_autoptr(json_t) body = expect_answer(f, NEGOTIATE, 7, 0);
  g_assert_cmpint(json_integer_value(json_object_get(body, "Version")), ==, 4);
  json_error_t jerr;
  g_autoptr(json_t) caps = json_loads(DEFAULT_CAPABILITIES, 0, &jerr);
  g_assert_true(json_equal(json_object_get(body, "Capabilities"), caps));
  g_assert_cmpuint(ferry_bridge_server_get_protocol_version(f->server), ==, V4);
}

static void check_rejected(Fixture *f, guint32 min, guint32 max)
{
  host_send_negotiate(f, 3, min, max);
  g_autoptr(json_t) body = expect_answer(f, NEGOTIATE, 3, FERRY_HR_UNSUPPORTED_PROTOCOL);
  g_assert_cmphex(body_result(body), ==, 0xc037010c);
  g_assert_null(json_object_get(body, "Version"));
  g_assert_cmpuint(ferry_bridge_server_get_protocol_version(f->server), ==, INVALID);
  /* The host may try again on the same connection. */
  negotiate(f, 4);
}

static void test_negotiate_rejects_max_below_4(Fixture *f, gconstpointer data)
{
  host_connect(f);
  check_rejected(f, 1, 3);
}

static void test_negotiate_rejects_min_above_4(Fixture *f, gconstpointer data)
{
  host_connect(f);
  check_rejected(f, 5, 8);
}

static void test_negotiate_bad_versions_e_invalidarg(Fixture *f, gconstpointer data)
{
  host_connect(f);
  const char *bodies[] = {
    "{\"ContainerId\":\"\",\"MaximumVersion\":4}",
    "{\"ContainerId\":\"\",\"MinimumVersion\":4}",
    "{\"MinimumVersion\":\"4\",\"MaximumVersion\":4}",
    "{\"MinimumVersion\":4,\"MaximumVersion\":-1}",
    "{\"MinimumVersion\":4,\"MaximumVersion\":4294967296}",
    "{\"MinimumVersion\":4.0,\"MaximumVersion\":4}",
  };
  for (guint i = 0; i < G_N_ELEMENTS(bodies); i++) {
    host_send(f, NEGOTIATE, i, bodies[i]);
    g_autoptr(json_t) body = expect_answer(f, NEGOTIATE, i, FERRY_HR_E_INVALIDARG);
    g_assert_nonnull(strstr(body_string(body, "ErrorMessage"), "Version"));
    g_assert_cmpuint(ferry_bridge_server_get_protocol_version(f->server), ==, INVALID);
  }
}

static void test_negotiate_custom_capabilities(Fixture *f, gconstpointer data)
{
  ferry_bridge_server_set_capabilities(f->server, json_pack("{s:s}", "RuntimeOsType", "Ferry"));
  host_connect(f);
  host_send_negotiate(f, 0, 4, 4);
  g_autoptr(json_t) body = expect_answer(f, NEGOTIATE, 0, 0);
  g_autofree char *caps = ferry_json_dump(json_object_get(body, "Capabilities"));
  g_assert_cmpstr(caps, ==, "{\"RuntimeOsType\":\"Ferry\"}");
}

/* Ferry's notifications go only to a host that named them when it negotiated: a host
 * without the field (hcsshim's) gets none; the last negotiation's list holds while
 * disconnected and is replaced by the next one. */
static void test_negotiate_host_notifications(Fixture *f, gconstpointer data)
{
  const char *oom = FERRY_BRIDGE_NOTIFY_TYPE_OOM_KILL;
  g_assert_false(ferry_bridge_server_host_accepts(f->server, oom));
  host_connect(f);
  negotiate(f, 0); /* hcsshim's NegotiateProtocol: no FerryNotifications */
  g_assert_false(ferry_bridge_server_host_accepts(f->server, oom));

  host_connect(f);
  host_send(f, NEGOTIATE, 1,
            "{\"MinimumVersion\":4,\"MaximumVersion\":4,\"" FERRY_BRIDGE_NOTIFICATIONS_FIELD
            "\":[7,\"FerrySomethingElse\",\"" FERRY_BRIDGE_NOTIFY_TYPE_OOM_KILL "\"]}");
  g_autoptr(json_t) answer = expect_answer(f, NEGOTIATE, 1, 0);
  g_assert_cmpint(json_integer_value(json_object_get(answer, "Version")), ==, 4);
  g_assert_true(ferry_bridge_server_host_accepts(f->server, oom));
  g_assert_true(ferry_bridge_server_host_accepts(f->server, "FerrySomethingElse"));
  g_assert_false(ferry_bridge_server_host_accepts(f->server, "UnexpectedExit"));

  /* Disconnected: still the last host's list. */
  ferry_fd_clear(&f->host);
  run_until_disconnects(f, 2);
  g_assert_true(ferry_bridge_server_host_accepts(f->server, oom));

  /* A field that is not an array names nothing. */
  host_connect(f);
  host_send(f, NEGOTIATE, 2,
            "{\"MinimumVersion\":4,\"MaximumVersion\":4,\"" FERRY_BRIDGE_NOTIFICATIONS_FIELD
            "\":\"" FERRY_BRIDGE_NOTIFY_TYPE_OOM_KILL "\"}");
  g_autoptr(json_t) again = expect_answer(f, NEGOTIATE, 2, 0);
  g_assert_cmpint(json_integer_value(json_object_get(again, "Version")), ==, 4);
  g_assert_false(ferry_bridge_server_host_accepts(f->server, oom));
}

/* hcsshim's Mux: NegotiateProtocol is registered at PvInvalid only, so on a negotiated
 * connection a second one is an unknown (type, version) pair. */
static void test_negotiate_again_answered_e_notimpl(Fixture *f, gconstpointer data)
{
  host_connect(f);
  negotiate(f, 0);
  host_send_negotiate(f, 1, 4, 4);
  expect_not_implemented(f, NEGOTIATE, 1, ZERO_GUID);
  g_assert_cmpuint(ferry_bridge_server_get_protocol_version(f->server), ==, V4);
}

/* ------------------------------------------------------------------ Mux -- */

/* ListenAndServe: an unknown message gets a response with the same ID and ActivityId
 * and the response type. */
static void test_unknown_message_answered_e_notimpl(Fixture *f, gconstpointer data)
{
  host_connect(f);
  negotiate(f, 0);
  host_send(f, EXECUTE, 77, "{\"ContainerId\":\"c1\",\"ActivityId\":\"" ACTIVITY "\"}");
  FerryBridgeHeader h;
  g_autoptr(json_t) body = host_read(f, &h, NULL);
  g_assert_cmphex(h.type, ==, 0x20100501);
  g_assert_cmpuint(h.id, ==, 77);
  g_assert_cmphex(body_result(body), ==, 0x80004001);
  g_assert_cmpstr(body_string(body, "ActivityId"), ==, ACTIVITY);
  g_assert_cmpstr(body_string(body, "ErrorMessage"), ==, "bridge: function not supported");
  json_t *records = json_object_get(body, "ErrorRecords");
  g_assert_cmpuint(json_array_size(records), ==, 1);
  g_assert_cmphex(
      (guint32)json_integer_value(json_object_get(json_array_get(records, 0), "Result")), ==,
      0x80004001);
}

/* Mux: a type registered at another version is served by the default handler. */
static void test_other_version_answered_e_notimpl(Fixture *f, gconstpointer data)
{
  register_tag(f, EXECUTE, 5, "v5");
  register_tag(f, EXECUTE, INVALID, "v0");
  host_connect(f);
  negotiate(f, 0);
  host_send(f, EXECUTE, 1, "{\"ContainerId\":\"c1\",\"ActivityId\":\"" ACTIVITY "\"}");
  expect_not_implemented(f, EXECUTE, 1, ACTIVITY);
  g_assert_cmpuint(f->calls->len, ==, 0);
}

/* Mux: an exact (type, version) match reaches its handler, which sees the request. */
static void test_exact_match_dispatched(Fixture *f, gconstpointer data)
{
  ferry_bridge_server_handle(f->server, EXECUTE, V4, handler_inspect, f);
  host_connect(f);
  negotiate(f, 0);
  host_send(f, EXECUTE, 9,
            "{\"ContainerId\":\"c1\",\"ActivityId\":\"" ACTIVITY "\",\"Settings\":{}}");
  g_autoptr(json_t) body = expect_answer(f, EXECUTE, 9, 0);
  g_assert_cmpint(json_integer_value(json_object_get(body, "ProcessId")), ==, 42);
  g_assert_cmpstr(body_string(body, "ActivityId"), ==, ACTIVITY);
  g_assert_null(json_object_get(body, "ErrorMessage"));
  g_assert_cmphex(f->seen_type, ==, EXECUTE);
  g_assert_cmpuint(f->seen_id, ==, 9);
  g_assert_cmpuint(f->seen_version, ==, V4);
  g_assert_cmpstr(f->seen_container_id, ==, "c1");
  g_assert_cmpstr(f->seen_activity_id, ==, ACTIVITY);
}

static void test_register_again_replaces(Fixture *f, gconstpointer data)
{
  register_tag(f, EXECUTE, V4, "first");
  register_tag(f, EXECUTE, V4, "second");
  host_connect(f);
  negotiate(f, 0);
  host_send(f, EXECUTE, 1, "{}");
  g_autoptr(json_t) body = expect_answer(f, EXECUTE, 1, 0);
  g_assert_cmpstr(body_string(body, "Handler"), ==, "second");
  g_assert_cmpuint(f->calls->len, ==, 1);
}

/* ------------------------------------------------------- ListenAndServe -- */

/* A handler's failure reaches the host as Result, ErrorMessage and ErrorRecords. */
static void fail_not_found(FerryBridgeRequest *request, gpointer user_data)
{
  ferry_bridge_request_reply_error(request, FERRY_HR_NOT_FOUND, "process %d not found", 12);
}

static void fail_gerror(FerryBridgeRequest *request, gpointer user_data)
{
  g_autoptr(GError) error =
      g_error_new(FERRY_ERROR, FERRY_ERROR_ALREADY_EXISTS, "container c1 already exists");
  ferry_bridge_request_reply_gerror(request, error);
}

static void test_handler_result_propagated(Fixture *f, gconstpointer data)
{
  ferry_bridge_server_handle(f->server, WAIT, V4, fail_not_found, NULL);
  ferry_bridge_server_handle(f->server, EXECUTE, V4, fail_gerror, NULL);
  host_connect(f);
  negotiate(f, 0);
  host_send(f, WAIT, 1, "{\"ActivityId\":\"" ACTIVITY "\"}");
  g_autoptr(json_t) a = expect_answer(f, WAIT, 1, 0x80070490);
  g_assert_cmpstr(body_string(a, "ErrorMessage"), ==, "process 12 not found");
  g_assert_cmpstr(body_string(a, "ActivityId"), ==, ACTIVITY);
  json_t *record = json_array_get(json_object_get(a, "ErrorRecords"), 0);
  g_assert_cmpstr(body_string(record, "Message"), ==, "process 12 not found");
  host_send(f, EXECUTE, 2, "{}");
  g_autoptr(json_t) b = expect_answer(f, EXECUTE, 2, FERRY_HR_ALREADY_EXISTS);
  g_assert_cmpstr(body_string(b, "ErrorMessage"), ==, "container c1 already exists");
}

/* An error answer without a failing HRESULT (0, or a NULL GError) still reads as a
 * failure on the host. */
static void fail_without_hresult(FerryBridgeRequest *request, gpointer user_data)
{
  if (ferry_bridge_request_get_id(request) == 1)
    ferry_bridge_request_reply_error(request, 0, "no code");
  else
    ferry_bridge_request_reply_gerror(request, NULL);
}

static void test_error_answer_never_reads_as_success(Fixture *f, gconstpointer data)
{
  ferry_bridge_server_handle(f->server, EXECUTE, V4, fail_without_hresult, NULL);
  host_connect(f);
  negotiate(f, 0);
  host_send(f, EXECUTE, 1, "{}");
  g_autoptr(json_t) a = expect_answer(f, EXECUTE, 1, FERRY_HR_E_FAIL);
  g_assert_cmpstr(body_string(a, "ErrorMessage"), ==, "no code");
  host_send(f, EXECUTE, 2, "{}");
  json_decref(expect_answer(f, EXECUTE, 2, FERRY_HR_E_FAIL));
}

/* A message that is not UTF-8 (a guest path, say) still reaches the host. */
static void fail_not_utf8(FerryBridgeRequest *request, gpointer user_data)
{
  ferry_bridge_request_reply_error(request, FERRY_HR_NOT_FOUND, "open /run/\xff\xfe: %s",
                                   "no such file");
}

static void test_error_message_not_utf8_sent_repaired(Fixture *f, gconstpointer data)
{
  ferry_bridge_server_handle(f->server, EXECUTE, V4, fail_not_utf8, NULL);
  host_connect(f);
  negotiate(f, 0);
  host_send(f, EXECUTE, 1, "{}");
  g_autoptr(json_t) a = expect_answer(f, EXECUTE, 1, FERRY_HR_NOT_FOUND);
  g_assert_cmpstr(body_string(a, "ErrorMessage"), ==, "open /run/\uFFFD\uFFFD: no such file");
  json_t *record = json_array_get(json_object_get(a, "ErrorRecords"), 0);
  g_assert_cmpstr(body_string(record, "Message"), ==, "open /run/\uFFFD\uFFFD: no such file");
}

/* Handlers answer when they like: a second request is answered before a slow first. */
static void test_handlers_answer_asynchronously(Fixture *f, gconstpointer data)
{
  ferry_bridge_server_handle(f->server, WAIT, V4, handler_hold, f);
  register_tag(f, EXECUTE, V4, "fast");
  host_connect(f);
  negotiate(f, 0);
  host_send(f, WAIT, 1, "{}");
  host_send(f, EXECUTE, 2, "{}");
  json_decref(expect_answer(f, EXECUTE, 2, 0));
  g_assert_cmpuint(f->held->len, ==, 1);
  expect_silence(f);
  FerryBridgeRequest *slow = g_ptr_array_steal_index(f->held, 0);
  g_assert_cmpuint(ferry_bridge_request_get_id(slow), ==, 1);
  ferry_bridge_request_reply(slow, json_pack("{s:i}", "ExitCode", 3));
  g_autoptr(json_t) late = expect_answer(f, WAIT, 1, 0);
  g_assert_cmpint(json_integer_value(json_object_get(late, "ExitCode")), ==, 3);
}

/* A dropped request (a UVM shutdown) is never answered. */
static void test_dropped_request_not_answered(Fixture *f, gconstpointer data)
{
  ferry_bridge_server_handle(f->server, ferry_bridge_request_type(FERRY_BRIDGE_RPC_SHUTDOWN_FORCED),
                             V4, handler_drop, NULL);
  host_connect(f);
  negotiate(f, 0);
  host_send(f, ferry_bridge_request_type(FERRY_BRIDGE_RPC_SHUTDOWN_FORCED), 1, "{}");
  expect_silence(f);
}

/* A body that is not one JSON object is answered INVALID_JSON; the connection lives. */
static void test_invalid_json_answered(Fixture *f, gconstpointer data)
{
  register_tag(f, EXECUTE, V4, "x");
  host_connect(f);
  negotiate(f, 0);
  const char *bodies[] = { "not json",         "[1,2]", "", "{\"a\":1} trailing", "\"str\"", "null",
                           "{\"a\":1,\"a\":2}" };
  for (guint i = 0; i < G_N_ELEMENTS(bodies); i++) {
    host_send_raw(f, EXECUTE, 100 + i, bodies[i]);
    g_autoptr(json_t) body = expect_answer(f, EXECUTE, 100 + i, FERRY_HR_INVALID_JSON);
    g_assert_cmpstr(body_string(body, "ActivityId"), ==, ZERO_GUID);
    g_assert_cmpstr(body_string(body, "ErrorMessage"), !=, "");
  }
  g_assert_cmpuint(f->calls->len, ==, 0);
  host_send(f, EXECUTE, 200, "{}");
  json_decref(expect_answer(f, EXECUTE, 200, 0));
}

/* Responses, notifications and other non-request types from the host are ignored. */
static void test_non_request_types_ignored(Fixture *f, gconstpointer data)
{
  register_tag(f, ferry_bridge_response_type(NEGOTIATE), INVALID, "response");
  register_tag(f, FERRY_BRIDGE_NOTIFY_CONTAINER, INVALID, "notify");
  host_connect(f);
  host_send(f, ferry_bridge_response_type(NEGOTIATE), 1, "{\"Result\":0}");
  host_send(f, FERRY_BRIDGE_NOTIFY_CONTAINER, 2, "{}");
  host_send(f, 0x00100b01, 3, "{}");
  host_send(f, 0xf0100b01, 4, "{}");
  host_send_raw(f, 0x40000000, 5, "garbage");
  expect_silence(f);
  negotiate(f, 6);
  g_assert_cmpuint(f->calls->len, ==, 0);
}

/* Fields of the wrong type read as "", ids and types the guest does not know are
 * echoed as they came. */
static void test_hostile_fields_and_ids(Fixture *f, gconstpointer data)
{
  ferry_bridge_server_handle(f->server, EXECUTE, INVALID, handler_inspect, f);
  host_connect(f);
  host_send(f, EXECUTE, G_MAXUINT64, "{\"ContainerId\":17,\"ActivityId\":{\"x\":[]}}");
  g_autoptr(json_t) a = expect_answer(f, EXECUTE, G_MAXUINT64, 0);
  g_assert_cmpstr(f->seen_container_id, ==, "");
  g_assert_cmpstr(f->seen_activity_id, ==, "");
  g_assert_cmpstr(body_string(a, "ActivityId"), ==, ZERO_GUID);
  host_send(f, EXECUTE, 1, "{\"ContainerId\":null,\"ActivityId\":[1]}");
  json_decref(expect_answer(f, EXECUTE, 1, 0));
  g_assert_cmpstr(f->seen_container_id, ==, "");
  g_assert_cmpstr(f->seen_activity_id, ==, "");
  /* Absent: "" too. */
  host_send(f, EXECUTE, 2, "{}");
  json_decref(expect_answer(f, EXECUTE, 2, 0));
  g_assert_cmpstr(f->seen_container_id, ==, "");
  g_assert_cmpstr(f->seen_activity_id, ==, "");
  /* An unknown type with every id bit set. */
  host_send(f, 0x1fffffff, G_MAXUINT64 - 1, "{\"ActivityId\":\"" ACTIVITY "\"}");
  expect_not_implemented(f, 0x1fffffff, G_MAXUINT64 - 1, ACTIVITY);
  host_send(f, 0x10000000, 0, "{}");
  expect_not_implemented(f, 0x10000000, 0, ZERO_GUID);
}

/* hcsshim's host kills its bridge on a message over 64 KiB: an answer that large is
 * replaced by an E_FAIL for the same request. */
static void reply_huge(FerryBridgeRequest *request, gpointer user_data)
{
  g_autofree char *big = g_strnfill(FERRY_BRIDGE_HOST_MAX_MESSAGE, 'x');
  ferry_bridge_request_reply(request, json_pack("{s:s}", "GuestStacks", big));
}

static void test_answer_over_host_limit_becomes_e_fail(Fixture *f, gconstpointer data)
{
  ferry_bridge_server_handle(f->server, ferry_bridge_request_type(FERRY_BRIDGE_RPC_DUMP_STACKS), V4,
                             reply_huge, NULL);
  host_connect(f);
  negotiate(f, 0);
  host_send(f, ferry_bridge_request_type(FERRY_BRIDGE_RPC_DUMP_STACKS), 5,
            "{\"ActivityId\":\"" ACTIVITY "\"}");
  FerryBridgeHeader h;
  g_autoptr(json_t) body = host_read(f, &h, NULL);
  g_assert_cmpuint(h.id, ==, 5);
  g_assert_cmpuint(h.size, <=, FERRY_BRIDGE_HOST_MAX_MESSAGE);
  g_assert_cmphex(body_result(body), ==, FERRY_HR_E_FAIL);
  g_assert_cmpstr(body_string(body, "ActivityId"), ==, ACTIVITY);
  g_assert_nonnull(strstr(body_string(body, "ErrorMessage"), "over the limit"));
  /* The connection is fine. */
  host_send_negotiate(f, 6, 4, 4);
  expect_not_implemented(f, NEGOTIATE, 6, ZERO_GUID);
}

/* A frame split byte by byte, then several frames in one write: all served, in order. */
static void test_split_and_pipelined_frames(Fixture *f, gconstpointer data)
{
  register_tag(f, EXECUTE, V4, "x");
  host_connect(f);
  negotiate(f, 0);
  g_autoptr(GBytes) one = encode_request(EXECUTE, 1, "{\"ContainerId\":\"c1\"}");
  const guint8 *p = g_bytes_get_data(one, NULL);
  for (gsize i = 0; i < g_bytes_get_size(one); i++) {
    host_write(f, p + i, 1);
    g_main_context_iteration(NULL, FALSE);
  }
  json_decref(expect_answer(f, EXECUTE, 1, 0));
  g_autoptr(GByteArray) batch = g_byte_array_new();
  for (guint64 id = 2; id < 12; id++) {
    g_autoptr(GBytes) b = encode_request(EXECUTE, id, "{}");
    g_byte_array_append(batch, g_bytes_get_data(b, NULL), (guint)g_bytes_get_size(b));
  }
  host_write(f, batch->data, batch->len);
  for (guint64 id = 2; id < 12; id++) {
    json_decref(expect_answer(f, EXECUTE, id, 0));
  }
  g_assert_cmpuint(f->calls->len, ==, 11);
}

/* A handler may close the connection; the frames behind its request are not served. */
static void test_handler_may_disconnect(Fixture *f, gconstpointer data)
{
  ferry_bridge_server_handle(f->server, WAIT, INVALID, handler_disconnect, f);
  register_tag(f, EXECUTE, INVALID, "after");
  host_connect(f);
  g_autoptr(GByteArray) batch = g_byte_array_new();
  g_autoptr(GBytes) a = encode_request(WAIT, 1, "{}");
  g_autoptr(GBytes) b = encode_request(EXECUTE, 2, "{}");
  g_byte_array_append(batch, g_bytes_get_data(a, NULL), (guint)g_bytes_get_size(a));
  g_byte_array_append(batch, g_bytes_get_data(b, NULL), (guint)g_bytes_get_size(b));
  host_write(f, batch->data, batch->len);
  run_until_disconnects(f, 1);
  g_assert_null(f->disconnect_error);
  expect_eof(f);
  g_assert_cmpuint(f->calls->len, ==, 0);
  /* The next connection is served. */
  host_connect(f);
  negotiate(f, 0);
}

/* A handler may even free the server; requests behind it are not served. */
static void test_handler_may_free_server(Fixture *f, gconstpointer data)
{
  ferry_bridge_server_handle(f->server, WAIT, INVALID, handler_free_server, f);
  register_tag(f, EXECUTE, INVALID, "after");
  host_connect(f);
  g_autoptr(GBytes) a = encode_request(WAIT, 1, "{}");
  g_autoptr(GBytes) b = encode_request(EXECUTE, 2, "{}");
  g_autoptr(GByteArray) batch = g_byte_array_new();
  g_byte_array_append(batch, g_bytes_get_data(a, NULL), (guint)g_bytes_get_size(a));
  g_byte_array_append(batch, g_bytes_get_data(b, NULL), (guint)g_bytes_get_size(b));
  host_write(f, batch->data, batch->len);
  expect_eof(f);
  g_assert_null(f->server);
  g_assert_cmpuint(f->calls->len, ==, 0);
  g_assert_cmpuint(f->disconnects, ==, 0);
}

/* --------------------------------------------------------------- frames -- */

static void check_bad_size_closes(Fixture *f, guint32 size)
{
  host_connect(f);
  negotiate(f, 0);
  guint8 header[FERRY_BRIDGE_HEADER_SIZE];
  FerryBridgeHeader h = { EXECUTE, size, 1 };
  ferry_bridge_header_encode(&h, header);
  host_write(f, header, sizeof(header));
  run_until_disconnects(f, 1);
  g_assert_error(f->disconnect_error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
  g_autofree char *want = g_strdup_printf("has size %u (must be 16 to 4194304)", size);
  g_assert_nonnull(strstr(f->disconnect_error->message, want));
  expect_eof(f);
  g_assert_false(ferry_bridge_server_is_connected(f->server));
  /* The next connection is served from a clean state. */
  host_connect(f);
  negotiate(f, 0);
  host_send_negotiate(f, 1, 4, 4);
  expect_not_implemented(f, NEGOTIATE, 1, ZERO_GUID);
  g_assert_cmpuint(f->disconnects, ==, 1);
}

static void test_oversize_frame_closes_connection(Fixture *f, gconstpointer data)
{
  check_bad_size_closes(f, FERRY_BRIDGE_GUEST_MAX_MESSAGE + 1);
}

static void test_undersize_frame_closes_connection(Fixture *f, gconstpointer data)
{
  check_bad_size_closes(f, FERRY_BRIDGE_HEADER_SIZE - 1);
}

/* A frame of exactly the guest's limit is still a frame (answered INVALID_JSON). */
static void test_frame_at_limit_served(Fixture *f, gconstpointer data)
{
  host_connect(f);
  negotiate(f, 0);
  gsize len = FERRY_BRIDGE_GUEST_MAX_MESSAGE - FERRY_BRIDGE_HEADER_SIZE;
  g_autofree char *body = g_strnfill(len, ' ');
  body[0] = '[';
  body[len - 1] = ']';
  host_send_raw(f, EXECUTE, 1, body);
  json_decref(expect_answer(f, EXECUTE, 1, FERRY_HR_INVALID_JSON));
  g_assert_cmpuint(f->disconnects, ==, 0);
}

/* ------------------------------------------------------------ reconnect -- */

/* bridge_reconnect_test: notifications queue while disconnected. */
static void test_notifications_queue_while_disconnected(Fixture *f, gconstpointer data)
{
  g_assert_false(ferry_bridge_server_is_connected(f->server));
  for (int i = 1; i <= 3; i++)
    notify(f, i);
  g_assert_cmpuint(ferry_bridge_server_backlog_length(f->server), ==, 3);
  /* Connected but not negotiated: still queued. */
  host_connect(f);
  notify(f, 4);
  expect_silence(f);
  g_assert_cmpuint(ferry_bridge_server_backlog_length(f->server), ==, 4);
}

/* bridge_reconnect_test: drained in order right after the NegotiateProtocol answer. */
static void test_notifications_drain_in_order_after_negotiation(Fixture *f, gconstpointer data)
{
  for (int i = 1; i <= 5; i++)
    notify(f, i);
  host_connect(f);
  host_send_negotiate(f, 0, 4, 4);
  json_decref(expect_answer(f, NEGOTIATE, 0, 0));
  for (int i = 1; i <= 5; i++)
    expect_notification(f, i);
  g_assert_cmpuint(ferry_bridge_server_backlog_length(f->server), ==, 0);
  /* Negotiated: the next goes out at once. */
  notify(f, 6);
  g_assert_cmpuint(ferry_bridge_server_backlog_length(f->server), ==, 0);
  expect_notification(f, 6);
}

/* bridge_reconnect_test: after a disconnect new notifications queue and nothing
 * reaches the old connection. */
static void test_disconnect_queues_nothing_to_old_socket(Fixture *f, gconstpointer data)
{
  host_connect(f);
  negotiate(f, 0);
  notify(f, 1);
  expect_notification(f, 1);
  ferry_bridge_server_disconnect(f->server);
  g_assert_cmpuint(f->disconnects, ==, 1);
  g_assert_null(f->disconnect_error);
  notify(f, 2);
  g_assert_cmpuint(ferry_bridge_server_backlog_length(f->server), ==, 1);
  expect_eof(f);
  host_connect(f);
  negotiate(f, 0);
  expect_notification(f, 2);
}

/* bridge_reconnect_test: the whole drop / queue / reconnect cycle, with a request of
 * the first connection answered during the break and a request on the second
 * connection answered before it negotiates. */
static void test_full_drop_queue_reconnect_cycle(Fixture *f, gconstpointer data)
{
  ferry_bridge_server_handle(f->server, WAIT, V4, handler_hold, f);
  register_tag(f, EXECUTE, V4, "exec");
  host_connect(f);
  negotiate(f, 0);
  notify(f, 1);
  expect_notification(f, 1);
  host_send(f, WAIT, 5, "{\"ActivityId\":\"" ACTIVITY "\"}");
  while (f->held->len == 0)
    g_main_context_iteration(NULL, TRUE);

  /* The host goes away (LM blackout). */
  ferry_fd_clear(&f->host);
  run_until_disconnects(f, 1);
  g_assert_error(f->disconnect_error, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE);
  g_assert_cmpstr(f->disconnect_error->message, ==, "bridge connection closed by peer");
  notify(f, 2);
  notify(f, 3);
  ferry_bridge_request_reply(g_ptr_array_steal_index(f->held, 0),
                             json_pack("{s:i}", "ExitCode", 0));
  g_assert_cmpuint(ferry_bridge_server_backlog_length(f->server), ==, 3);

  /* The new host: before negotiation its own requests are answered (E_NOTIMPL), the
   * backlog waits. */
  host_connect(f);
  host_send(f, EXECUTE, 1, "{}");
  expect_not_implemented(f, EXECUTE, 1, ZERO_GUID);
  expect_silence(f);
  g_assert_cmpuint(ferry_bridge_server_backlog_length(f->server), ==, 3);

  host_send_negotiate(f, 2, 4, 4);
  json_decref(expect_answer(f, NEGOTIATE, 2, 0));
  expect_notification(f, 2);
  expect_notification(f, 3);
  g_autoptr(json_t) wait = expect_answer(f, WAIT, 5, 0);
  g_assert_cmpstr(body_string(wait, "ActivityId"), ==, ACTIVITY);
  g_assert_cmpuint(ferry_bridge_server_backlog_length(f->server), ==, 0);

  host_send(f, EXECUTE, 3, "{}");
  json_decref(expect_answer(f, EXECUTE, 3, 0));
  notify(f, 4);
  expect_notification(f, 4);
  g_assert_cmpuint(f->disconnects, ==, 1);
}

/* TestBridge_ListenAndServeResetsProtocolVersion: every connection starts at INVALID.
 * With a negotiated first connection, on the second a request before negotiation is
 * E_NOTIMPL and NegotiateProtocol is served (not E_NOTIMPL). */
static void test_protocol_version_resets_on_new_connection(Fixture *f, gconstpointer data)
{
  ferry_bridge_server_handle(f->server, EXECUTE, V4, handler_inspect, f);
  host_connect(f);
  negotiate(f, 0);
  g_assert_cmpuint(ferry_bridge_server_get_protocol_version(f->server), ==, V4);
  /* serve() replaces the open connection. */
  int old = g_steal_fd(&f->host);
  host_connect(f);
  g_assert_cmpuint(f->disconnects, ==, 1);
  g_assert_null(f->disconnect_error);
  g_assert_cmpuint(ferry_bridge_server_get_protocol_version(f->server), ==, INVALID);

  host_send(f, EXECUTE, 1, "{\"ActivityId\":\"" ACTIVITY "\"}");
  expect_not_implemented(f, EXECUTE, 1, ACTIVITY);
  host_send_negotiate(f, 2, 4, 4);
  g_autoptr(json_t) answer = expect_answer(f, NEGOTIATE, 2, 0);
  g_assert_cmpint(json_integer_value(json_object_get(answer, "Version")), ==, 4);
  host_send(f, EXECUTE, 3, "{}");
  json_decref(expect_answer(f, EXECUTE, 3, 0));
  g_assert_cmpuint(f->seen_version, ==, V4);

  /* The replaced connection was closed with nothing more on it. */
  int cur = f->host;
  f->host = old;
  ferry_bridge_parser_reset(f->parser);
  expect_eof(f);
  ferry_fd_clear(&f->host);
  f->host = cur;
}

/* A slow handler's answer to a request of connection 1, given while disconnected,
 * reaches connection 2 right after its NegotiateProtocol answer, with its id. */
static void test_earlier_connection_answer_after_negotiation(Fixture *f, gconstpointer data)
{
  ferry_bridge_server_handle(f->server, WAIT, V4, handler_hold, f);
  host_connect(f);
  negotiate(f, 0);
  host_send(f, WAIT, 42, "{\"ActivityId\":\"" ACTIVITY "\"}");
  while (f->held->len == 0)
    g_main_context_iteration(NULL, TRUE);
  ferry_bridge_server_disconnect(f->server);
  ferry_bridge_request_reply(g_ptr_array_steal_index(f->held, 0),
                             json_pack("{s:i}", "ExitCode", 7));
  g_assert_cmpuint(ferry_bridge_server_backlog_length(f->server), ==, 1);
  host_connect(f);
  expect_silence(f);
  host_send_negotiate(f, 0, 4, 4);
  json_decref(expect_answer(f, NEGOTIATE, 0, 0));
  g_autoptr(json_t) wait = expect_answer(f, WAIT, 42, 0);
  g_assert_cmpint(json_integer_value(json_object_get(wait, "ExitCode")), ==, 7);
  g_assert_cmpstr(body_string(wait, "ActivityId"), ==, ACTIVITY);
}

/* Answered while connection 2 is up but not negotiated, the answer waits for the
 * negotiation; answered after it, it goes out at once. */
static void test_earlier_connection_answer_waits_for_negotiation(Fixture *f, gconstpointer data)
{
  ferry_bridge_server_handle(f->server, WAIT, V4, handler_hold, f);
  host_connect(f);
  negotiate(f, 0);
  host_send(f, WAIT, 10, "{}");
  host_send(f, WAIT, 11, "{}");
  while (f->held->len < 2)
    g_main_context_iteration(NULL, TRUE);
  host_connect(f); /* replaces connection 1 */
  ferry_bridge_request_reply(g_ptr_array_steal_index(f->held, 0), NULL);
  g_assert_cmpuint(ferry_bridge_server_backlog_length(f->server), ==, 1);
  expect_silence(f);
  negotiate(f, 0);
  json_decref(expect_answer(f, WAIT, 10, 0));
  ferry_bridge_request_reply_error(g_ptr_array_steal_index(f->held, 0), FERRY_HR_TIMEOUT,
                                   "timed out");
  g_assert_cmpuint(ferry_bridge_server_backlog_length(f->server), ==, 0);
  json_decref(expect_answer(f, WAIT, 11, FERRY_HR_TIMEOUT));
}

/* The agent's loop re-dials from the disconnected callback. */
static void test_disconnected_callback_may_serve(Fixture *f, gconstpointer data)
{
  host_connect(f);
  negotiate(f, 0);
  f->serve_on_disconnect = TRUE;
  ferry_fd_clear(&f->host);
  run_until_disconnects(f, 1);
  g_assert_true(ferry_bridge_server_is_connected(f->server));
  notify(f, 1);
  f->host = g_steal_fd(&f->redial_host);
  ferry_bridge_parser_reset(f->parser);
  negotiate(f, 0);
  expect_notification(f, 1);
}

/* ...or free the server. */
static void test_disconnected_callback_may_free(Fixture *f, gconstpointer data)
{
  host_connect(f);
  f->free_on_disconnect = TRUE;
  ferry_fd_clear(&f->host);
  run_until_disconnects(f, 1);
  g_assert_null(f->server);
}

/* -------------------------------------------------------------- backlog -- */

/* The backlog is bounded: past 16 MiB the newest are dropped; what it kept goes out in
 * order. */
static void test_backlog_bounded_drops_newest(Fixture *f, gconstpointer data)
{
  g_autofree char *filler = g_strnfill(60000, 'r');
  g_autoptr(json_t) sample = ferry_bridge_request_base("c1", ACTIVITY);
  json_object_set_new(sample, "Seq", json_integer(100));
  json_object_set_new(sample, "ResultInfo", json_string(filler));
  g_autoptr(GBytes) encoded = ferry_bridge_message_encode(FERRY_BRIDGE_NOTIFY_CONTAINER, 0, sample,
                                                          FALSE, G_MAXUINT32, NULL);
  guint fits = (16u << 20) / (guint)g_bytes_get_size(encoded);
  for (int i = 0; i < (int)fits + 20; i++) {
    json_t *body = json_deep_copy(sample);
    json_object_set_new(body, "Seq", json_integer(100 + i));
    ferry_bridge_server_notify(f->server, body);
  }
  g_assert_cmpuint(ferry_bridge_server_backlog_length(f->server), ==, fits);
  host_connect(f);
  negotiate(f, 0);
  for (guint i = 0; i < fits; i++) {
    FerryBridgeHeader h;
    g_autoptr(json_t) body = host_read(f, &h, NULL);
    g_assert_cmphex(h.type, ==, FERRY_BRIDGE_NOTIFY_CONTAINER);
    g_assert_cmpint(json_integer_value(json_object_get(body, "Seq")), ==, 100 + (int)i);
  }
  g_assert_cmpuint(ferry_bridge_server_backlog_length(f->server), ==, 0);
  notify(f, 1);
  expect_notification(f, 1);
}

/* A notification over what the host accepts is not sent (it would kill the host's
 * bridge). */
static void test_notification_over_host_limit_not_sent(Fixture *f, gconstpointer data)
{
  host_connect(f);
  negotiate(f, 0);
  json_t *body = ferry_bridge_request_base("c1", ACTIVITY);
  g_autofree char *filler = g_strnfill(FERRY_BRIDGE_HOST_MAX_MESSAGE, 'r');
  json_object_set_new(body, "ResultInfo", json_string(filler));
  ferry_bridge_server_notify(f->server, body);
  g_assert_cmpuint(ferry_bridge_server_backlog_length(f->server), ==, 0);
  notify(f, 1);
  expect_notification(f, 1);
}

/* A host that stops reading: past the output cap the connection is closed. The
 * notification whose write broke it is kept for the next host... */
static void test_notification_that_breaks_connection_kept(Fixture *f, gconstpointer data)
{
  host_connect(f);
  negotiate(f, 0);
  g_autofree char *filler = g_strnfill(60000, 'r');
  int seq = 0;
  while (ferry_bridge_server_is_connected(f->server)) {
    json_t *body = ferry_bridge_request_base("c1", ACTIVITY);
    json_object_set_new(body, "Seq", json_integer(++seq));
    json_object_set_new(body, "ResultInfo", json_string(filler));
    ferry_bridge_server_notify(f->server, body);
    g_assert_cmpint(seq, <, 10000);
  }
  /* The end is reported from the main loop, not inside the notify that caused it. */
  g_assert_cmpuint(f->disconnects, ==, 0);
  while (f->disconnects == 0)
    g_main_context_iteration(NULL, TRUE);
  g_assert_cmpuint(f->disconnects, ==, 1);
  g_assert_error(f->disconnect_error, FERRY_ERROR, FERRY_ERROR_RESOURCE_EXHAUSTED);
  g_assert_cmpuint(ferry_bridge_server_backlog_length(f->server), ==, 1);
  host_connect(f);
  negotiate(f, 0);
  expect_notification(f, seq);
}

/* ...while an answer whose write broke it is dropped: the host that asked is gone. */
static void test_answer_that_breaks_connection_dropped(Fixture *f, gconstpointer data)
{
  guint32 dump = ferry_bridge_request_type(FERRY_BRIDGE_RPC_DUMP_STACKS);
  ferry_bridge_server_handle(f->server, dump, V4, handler_hold, f);
  host_connect(f);
  negotiate(f, 0);
  /* 1200 answers of 60 KB are more than the 64 MiB output cap. */
  for (guint64 id = 1; id <= 1200; id++)
    host_send(f, dump, id, "{}");
  while (f->held->len < 1200)
    g_main_context_iteration(NULL, TRUE);
  g_autofree char *filler = g_strnfill(60000, 's');
  guint answered = 0;
  while (ferry_bridge_server_is_connected(f->server)) {
    g_assert_cmpuint(answered, <, f->held->len);
    FerryBridgeRequest *r = f->held->pdata[answered++];
    ferry_bridge_request_reply(r, json_pack("{s:s}", "GuestStacks", filler));
  }
  g_ptr_array_remove_range(f->held, 0, answered);
  while (f->disconnect_error == NULL)
    g_main_context_iteration(NULL, TRUE);
  g_assert_error(f->disconnect_error, FERRY_ERROR, FERRY_ERROR_RESOURCE_EXHAUSTED);
  g_assert_cmpuint(ferry_bridge_server_backlog_length(f->server), ==, 0);
  host_connect(f);
  negotiate(f, 0);
  expect_silence(f);
}

/* ------------------------------------------------------------- lifetime -- */

/* Requests outlive the server: answering or dropping them after the free is safe. */
static void test_free_with_pending_requests(Fixture *f, gconstpointer data)
{
  ferry_bridge_server_handle(f->server, WAIT, V4, handler_hold, f);
  host_connect(f);
  negotiate(f, 0);
  for (guint64 id = 1; id <= 4; id++)
    host_send(f, WAIT, id, "{\"ContainerId\":\"c1\"}");
  while (f->held->len < 4)
    g_main_context_iteration(NULL, TRUE);
  notify(f, 1);
  expect_notification(f, 1);
  ferry_bridge_server_disconnect(f->server);
  notify(f, 2); /* queued, then freed with the server */
  ferry_bridge_server_free(g_steal_pointer(&f->server));
  g_assert_cmpuint(f->disconnects, ==, 1);
  expect_eof(f);

  FerryBridgeRequest *a = g_ptr_array_steal_index(f->held, 0);
  g_assert_cmpstr(ferry_bridge_request_get_container_id(a), ==, "c1");
  ferry_bridge_request_reply(a, json_pack("{s:i}", "ExitCode", 1));
  ferry_bridge_request_reply_error(g_ptr_array_steal_index(f->held, 0), FERRY_HR_E_FAIL, "x");
  g_autoptr(GError) error = g_error_new(FERRY_ERROR, FERRY_ERROR_NOT_FOUND, "gone");
  ferry_bridge_request_reply_gerror(g_ptr_array_steal_index(f->held, 0), error);
  ferry_bridge_request_drop(g_ptr_array_steal_index(f->held, 0));
}

/* Freeing closes the connection without calling back into the owner. */
static void test_free_closes_connection_silently(Fixture *f, gconstpointer data)
{
  host_connect(f);
  negotiate(f, 0);
  ferry_bridge_server_free(g_steal_pointer(&f->server));
  g_assert_cmpuint(f->disconnects, ==, 0);
  expect_eof(f);
}

static void test_serve_bad_fd_fails(Fixture *f, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  g_assert_false(ferry_bridge_server_serve(f->server, 1000000, &error));
  g_assert_nonnull(error);
  g_assert_false(ferry_bridge_server_is_connected(f->server));
  host_connect(f);
  negotiate(f, 0);
}

int main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
#define T(path, fn)                                                                                \
  g_test_add("/bridge/guest/" path, Fixture, NULL, fixture_setup, fn, fixture_teardown)
  T("negotiate/accepts-4-4-with-linux-capabilities", test_negotiate_accepts_4_4);
  T("negotiate/accepts-1-8-selects-4", test_negotiate_accepts_1_8_selects_4);
  T("negotiate/rejects-max-below-4", test_negotiate_rejects_max_below_4);
  T("negotiate/rejects-min-above-4", test_negotiate_rejects_min_above_4);
  T("negotiate/bad-versions-e-invalidarg", test_negotiate_bad_versions_e_invalidarg);
  T("negotiate/custom-capabilities", test_negotiate_custom_capabilities);
  T("negotiate/host-notifications", test_negotiate_host_notifications);
  T("negotiate/again-answered-e-notimpl", test_negotiate_again_answered_e_notimpl);
  T("mux/unknown-message-answered-e-notimpl", test_unknown_message_answered_e_notimpl);
  T("mux/other-version-answered-e-notimpl", test_other_version_answered_e_notimpl);
  T("mux/exact-match-dispatched", test_exact_match_dispatched);
  T("mux/register-again-replaces", test_register_again_replaces);
  T("serve/handler-result-propagated", test_handler_result_propagated);
  T("serve/error-answer-never-reads-as-success", test_error_answer_never_reads_as_success);
  T("serve/error-message-not-utf8-sent-repaired", test_error_message_not_utf8_sent_repaired);
  T("serve/handlers-answer-asynchronously", test_handlers_answer_asynchronously);
  T("serve/dropped-request-not-answered", test_dropped_request_not_answered);
  T("serve/invalid-json-answered-invalid-json", test_invalid_json_answered);
  T("serve/non-request-types-ignored", test_non_request_types_ignored);
  T("serve/hostile-fields-and-ids", test_hostile_fields_and_ids);
  T("serve/answer-over-host-limit-becomes-e-fail", test_answer_over_host_limit_becomes_e_fail);
  T("serve/split-and-pipelined-frames", test_split_and_pipelined_frames);
  T("serve/handler-may-disconnect", test_handler_may_disconnect);
  T("serve/handler-may-free-server", test_handler_may_free_server);
  T("frames/oversize-closes-connection", test_oversize_frame_closes_connection);
  T("frames/undersize-closes-connection", test_undersize_frame_closes_connection);
  T("frames/frame-at-limit-served", test_frame_at_limit_served);
  T("reconnect/notifications-queue-while-disconnected",
    test_notifications_queue_while_disconnected);
  T("reconnect/notifications-drain-in-order-after-negotiation",
    test_notifications_drain_in_order_after_negotiation);
  T("reconnect/disconnect-queues-nothing-to-old-socket",
    test_disconnect_queues_nothing_to_old_socket);
  T("reconnect/full-drop-queue-reconnect-cycle", test_full_drop_queue_reconnect_cycle);
  T("reconnect/protocol-version-resets-on-new-connection",
    test_protocol_version_resets_on_new_connection);
  T("reconnect/earlier-connection-answer-after-negotiation",
    test_earlier_connection_answer_after_negotiation);
  T("reconnect/earlier-connection-answer-waits-for-negotiation",
    test_earlier_connection_answer_waits_for_negotiation);
  T("reconnect/disconnected-callback-may-serve", test_disconnected_callback_may_serve);
  T("reconnect/disconnected-callback-may-free", test_disconnected_callback_may_free);
  T("backlog/bounded-drops-newest", test_backlog_bounded_drops_newest);
  T("backlog/notification-over-host-limit-not-sent", test_notification_over_host_limit_not_sent);
  T("backlog/notification-that-breaks-connection-kept",
    test_notification_that_breaks_connection_kept);
  T("backlog/answer-that-breaks-connection-dropped", test_answer_that_breaks_connection_dropped);
  T("lifetime/free-with-pending-requests", test_free_with_pending_requests);
  T("lifetime/free-closes-connection-silently", test_free_closes_connection_silently);
  T("lifetime/serve-bad-fd-fails", test_serve_bad_fd_fails);
  return g_test_run();
}
