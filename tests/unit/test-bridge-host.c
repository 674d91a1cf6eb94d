/*
 * The host bridge and GuestConnection, with the test playing the guest byte for byte
 * on a socketpair: hcsshim's internal/gcs bridge_test.go and guestconnection_test.go
 * behaviours (docs/bridge-protocol.md, hcsshim's tests), the migration primitives, and a guest
 * that breaks the protocol.
 */
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include "ferry/error.h"
#include "ferry/fd.h"
#include "ferry/guest.h"
#include "ferry/json.h"
#include "test-util.h"

#define RPC_TYPE(rpc) ferry_bridge_request_type(FERRY_BRIDGE_RPC_##rpc)
#define RESP_TYPE(rpc) ferry_bridge_response_type(RPC_TYPE(rpc))

/* ------------------------------------------------------------ the guest -- */

typedef struct {
  int fd; /* the guest's end, non-blocking */
  FerryBridgeParser *parser;
} RawGuest;

static void raw_guest_init(RawGuest *g, int fd)
{
  g->fd = fd;
  g->parser = ferry_bridge_parser_new(FERRY_BRIDGE_GUEST_MAX_MESSAGE);
  g_autoptr(GError) error = NULL;
  g_assert_true(ferry_fd_set_nonblocking(fd, TRUE, &error));
}

static void raw_guest_clear(RawGuest *g)
{
  ferry_fd_clear(&g->fd);
  g_clear_pointer(&g->parser, ferry_bridge_parser_free);
}

/* The next message the host sent: its header and body (a new reference). */
static json_t *guest_read(RawGuest *g, FerryBridgeHeader *h)
{
  gint64 until = g_get_monotonic_time() + 5 * G_USEC_PER_SEC;
  for (;;) {
    const guint8 *body;
    g_autoptr(GError) error = NULL;
    FerryBridgeParseResult r = ferry_bridge_parser_next(g->parser, h, &body, &error);
    g_assert_no_error(error);
    if (r == FERRY_BRIDGE_PARSE_FRAME) {
      /* The host writes like Go's json.Encoder: the body ends in a newline. */
      g_assert_cmpuint(h->size, >, 16);
      g_assert_cmpint(body[h->size - 17], ==, '\n');
      json_t *j = ferry_bridge_body_parse(body, h->size - 16, &error);
      g_assert_no_error(error);
      return j;
    }
    guint8 buf[65536];
    ssize_t n = read(g->fd, buf, sizeof(buf));
    if (n > 0) {
      ferry_bridge_parser_feed(g->parser, buf, (gsize)n);
      continue;
    }
    g_assert_true(n < 0 && errno == EAGAIN);
    if (g_get_monotonic_time() > until)
      g_error("the host sent nothing within 5 s");
    g_main_context_iteration(g_main_context_get_thread_default(), FALSE);
    g_usleep(100);
  }
}

/* Expect a request of `type`; returns its id, and its body when `body` is not NULL. */
static guint64 guest_expect(RawGuest *g, guint32 type, json_t **body)
{
  FerryBridgeHeader h;
  json_t *j = guest_read(g, &h);
  g_assert_cmphex(h.type, ==, type);
  if (body != NULL)
    *body = j;
  else
    json_decref(j);
  return h.id;
}

static void guest_write_raw(RawGuest *g, const guint8 *data, gsize len)
{
  while (len > 0) {
    ssize_t n = write(g->fd, data, len);
    if (n < 0 && errno == EAGAIN) {
      g_main_context_iteration(g_main_context_get_thread_default(), FALSE);
      continue;
    }
    g_assert_cmpint(n, >, 0);
    data += n;
    len -= (gsize)n;
  }
}

static void guest_send(RawGuest *g, guint32 type, guint64 id, json_t *body)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(GBytes) msg =
      ferry_bridge_message_encode(type, id, body, FALSE, FERRY_BRIDGE_GUEST_MAX_MESSAGE, &error);
  g_assert_no_error(error);
  gsize len;
  const guint8 *p = g_bytes_get_data(msg, &len);
  guest_write_raw(g, p, len);
  json_decref(body);
}

static void guest_answer(RawGuest *g, guint32 request_type, guint64 id, json_t *fields)
{
  json_t *body = ferry_bridge_response_base(NULL, 0, NULL);
  if (fields != NULL) {
    json_object_update(body, fields);
    json_decref(fields);
  }
  guest_send(g, ferry_bridge_response_type(request_type), id, body);
}

static void guest_fail(RawGuest *g, guint32 request_type, guint64 id, guint32 hr, const char *m)
{
  guest_send(g, ferry_bridge_response_type(request_type), id,
             ferry_bridge_response_base(NULL, hr, m));
}

static void guest_notify_exit(RawGuest *g, const char *cid, const char *type)
{
  guest_send(g, FERRY_BRIDGE_NOTIFY_CONTAINER, 0,
             json_pack("{s:s, s:s, s:s, s:s, s:i}", "ContainerId", cid, "ActivityId",
                       FERRY_ZERO_ACTIVITY_ID, "Type", type, "Operation", "None", "Result", 0));
}

/* ----------------------------------------------------------- callbacks -- */

typedef struct {
  gboolean done;
  GError *error;
  json_t *json;
  FerryGuestProcess *process;
  gboolean delivered;
  int calls;
} Result;

static void result_clear(Result *r)
{
  g_clear_error(&r->error);
  g_clear_pointer(&r->json, json_decref);
  g_clear_pointer(&r->process, ferry_guest_process_unref);
  memset(r, 0, sizeof(*r));
}

static void on_rpc(FerryBridge *b, json_t *response, const GError *error, gpointer ud)
{
  Result *r = ud;
  r->done = TRUE;
  r->calls++;
  if (error != NULL)
    r->error = g_error_copy(error);
  if (response != NULL)
    r->json = json_incref(response);
}

static void on_done(const GError *error, gpointer ud)
{
  Result *r = ud;
  r->done = TRUE;
  r->calls++;
  if (error != NULL)
    r->error = g_error_copy(error);
}

static void on_json(json_t *result, const GError *error, gpointer ud)
{
  Result *r = ud;
  on_done(error, ud);
  if (result != NULL)
    r->json = json_incref(result);
}

static void on_process(FerryGuestProcess *p, const GError *error, gpointer ud)
{
  Result *r = ud;
  on_done(error, ud);
  r->process = p;
}

static void on_signal(gboolean delivered, const GError *error, gpointer ud)
{
  Result *r = ud;
  on_done(error, ud);
  r->delivered = delivered;
}

static void wait_for(Result *r)
{
  if (!test_run_until(&r->done, 5000))
    g_error("callback did not run within 5 s");
}

/* Spin the loop a little: lets anything already sent arrive. */
static void settle(void)
{
  for (int i = 0; i < 50; i++)
    g_main_context_iteration(g_main_context_get_thread_default(), FALSE);
}

/* --------------------------------------------------------------- bridge -- */

typedef struct {
  FerryBridge *bridge;
  RawGuest guest;
  GError *dead_cause;
  int dead_calls;
  GPtrArray *notifications;
  gboolean fail_notify;
  GMainContext *pushed; /* the thread-default context the test runs on, when not NULL */
} BridgeFixture;

static void on_dead(FerryBridge *b, const GError *cause, gpointer ud)
{
  BridgeFixture *f = ud;
  f->dead_calls++;
  g_clear_error(&f->dead_cause);
  f->dead_cause = g_error_copy(cause);
}

static gboolean on_notify(FerryBridge *b, json_t *n, gpointer ud, GError **error)
{
  BridgeFixture *f = ud;
  g_ptr_array_add(f->notifications, json_incref(n));
  if (f->fail_notify) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INTERNAL, "callback refused it");
    return FALSE;
  }
  return TRUE;
}

static void bridge_setup(BridgeFixture *f, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  int sp[2];
  g_assert_true(ferry_socketpair(sp, FALSE, &error));
  f->bridge = ferry_bridge_new(sp[0], &error);
  g_assert_no_error(error);
  raw_guest_init(&f->guest, sp[1]);
  f->notifications = g_ptr_array_new_with_free_func((GDestroyNotify)json_decref);
  ferry_bridge_set_dead_func(f->bridge, on_dead, f);
  ferry_bridge_set_notify_func(f->bridge, on_notify, f);
}

static void bridge_teardown(BridgeFixture *f, gconstpointer data)
{
  ferry_bridge_unref(f->bridge);
  raw_guest_clear(&f->guest);
  g_clear_error(&f->dead_cause);
  g_ptr_array_unref(f->notifications);
  if (f->pushed != NULL) {
    /* Issue 9 item 6: nothing of the bridge ever went to the global default context. */
    g_assert_false(g_main_context_pending(NULL));
    g_main_context_pop_thread_default(f->pushed);
    g_main_context_unref(f->pushed);
  }
}

/* The same tests on a pushed thread-default context, which is all that runs. */
static void bridge_setup_pushed(BridgeFixture *f, gconstpointer data)
{
  f->pushed = g_main_context_new();
  g_main_context_push_thread_default(f->pushed);
  bridge_setup(f, data);
}

static guint64 start_rpc(BridgeFixture *f, Result *r, guint timeout_ms)
{
  g_autoptr(json_t) body = ferry_bridge_request_base("c1", NULL);
  return ferry_bridge_rpc(f->bridge, FERRY_BRIDGE_RPC_START, body, timeout_ms, on_rpc, r);
}

static void test_bridge_rpc_round_trip(BridgeFixture *f, gconstpointer data)
{
  Result r = { 0 };
  guint64 id = start_rpc(f, &r, 0);
  g_assert_cmpuint(id, ==, 0); /* the first request is id 0 */
  g_assert_cmpuint(ferry_bridge_next_id(f->bridge), ==, 1);
  json_t *body;
  g_assert_cmpuint(guest_expect(&f->guest, RPC_TYPE(START), &body), ==, 0);
  g_assert_cmpstr(json_string_value(json_object_get(body, "ContainerId")), ==, "c1");
  g_assert_cmpstr(json_string_value(json_object_get(body, "ActivityId")), ==,
                  FERRY_ZERO_ACTIVITY_ID);
  json_decref(body);
  g_assert_false(r.done);
  guest_answer(&f->guest, RPC_TYPE(START), 0, json_pack("{s:s}", "Extra", "x"));
  wait_for(&r);
  g_assert_no_error(r.error);
  g_assert_cmpstr(json_string_value(json_object_get(r.json, "Extra")), ==, "x");
  g_assert_cmpuint(ferry_bridge_pending_count(f->bridge), ==, 0);
  result_clear(&r);
}

/* A guest answering Result 1 (S_FALSE): the guest's HRESULT 1, never the local "bridge
 * closed" result. */
static void test_bridge_result_one_is_guest_error(BridgeFixture *f, gconstpointer data)
{
  Result r = { 0 };
  start_rpc(f, &r, 0);
  guint64 id = guest_expect(&f->guest, RPC_TYPE(START), NULL);
  guest_fail(&f->guest, RPC_TYPE(START), id, 1, "not quite");
  wait_for(&r);
  g_assert_error(r.error, FERRY_BRIDGE_ERROR, 1);
  g_assert_false(g_error_matches(r.error, FERRY_BRIDGE_CLOSED_ERROR, FERRY_BRIDGE_CLOSED));
  g_assert_cmphex(ferry_bridge_error_hresult(r.error), ==, 1);
  g_assert_cmpint(ferry_error_to_status_code(r.error), ==, FERRY_ERROR_UNKNOWN);
  g_assert_false(ferry_bridge_is_dead(f->bridge));
  result_clear(&r);
}

/* A guest's failing Result fails the call, not the bridge. */
static void test_bridge_rpc_error_result(BridgeFixture *f, gconstpointer data)
{
  Result r = { 0 };
  start_rpc(f, &r, 0);
  guint64 id = guest_expect(&f->guest, RPC_TYPE(START), NULL);
  guest_fail(&f->guest, RPC_TYPE(START), id, FERRY_HR_SYSTEM_NOT_FOUND, "no container c1");
  wait_for(&r);
  g_assert_error(r.error, FERRY_BRIDGE_ERROR, (gint)FERRY_HR_SYSTEM_NOT_FOUND);
  g_assert_nonnull(strstr(r.error->message, "no container c1"));
  g_assert_false(ferry_bridge_is_dead(f->bridge));
  result_clear(&r);
}

/* hcsshim TestBridgeRPCResponseTimeout: no answer in time kills the whole bridge. */
static void test_bridge_rpc_timeout_kills_bridge(BridgeFixture *f, gconstpointer data)
{
  Result r = { 0 }, other = { 0 };
  start_rpc(f, &r, 50);
  start_rpc(f, &other, 0);
  wait_for(&r);
  g_assert_error(r.error, FERRY_BRIDGE_CLOSED_ERROR, FERRY_BRIDGE_CLOSED);
  g_assert_true(g_str_has_prefix(r.error->message, "bridge closed: "));
  g_assert_nonnull(strstr(r.error->message, "no answer in time"));
  wait_for(&other); /* every pending call fails with it */
  g_assert_error(other.error, FERRY_BRIDGE_CLOSED_ERROR, FERRY_BRIDGE_CLOSED);
  g_assert_true(ferry_bridge_is_dead(f->bridge));
  g_assert_cmpint(f->dead_calls, ==, 1);
  g_assert_error(f->dead_cause, FERRY_ERROR, FERRY_ERROR_DEADLINE_EXCEEDED);
  result_clear(&r);
  result_clear(&other);
}

/* hcsshim TestBridgeRPCContextDone: a cancelled call reports nothing; its late answer
 * is swallowed without harm. */
static void test_bridge_rpc_cancel(BridgeFixture *f, gconstpointer data)
{
  Result r = { 0 };
  guint64 id = start_rpc(f, &r, 0);
  g_assert_true(ferry_bridge_rpc_cancel(f->bridge, id));
  g_assert_false(ferry_bridge_rpc_cancel(f->bridge, id));
  guest_expect(&f->guest, RPC_TYPE(START), NULL);
  guest_answer(&f->guest, RPC_TYPE(START), id, NULL);
  Result after = { 0 };
  start_rpc(f, &after, 0);
  guint64 id2 = guest_expect(&f->guest, RPC_TYPE(START), NULL);
  guest_answer(&f->guest, RPC_TYPE(START), id2, NULL);
  wait_for(&after);
  g_assert_no_error(after.error);
  g_assert_false(r.done);
  g_assert_false(ferry_bridge_is_dead(f->bridge));
  result_clear(&after);
}

/* hcsshim TestBridgeRPCBridgeClosed / TestBridgeKillWrapsSentinel. */
static void test_bridge_kill_wraps_cause(BridgeFixture *f, gconstpointer data)
{
  Result r = { 0 };
  start_rpc(f, &r, 0);
  g_autoptr(GError) cause = g_error_new(FERRY_ERROR, FERRY_ERROR_INTERNAL, "boom");
  ferry_bridge_kill(f->bridge, cause);
  g_assert_true(r.done);
  g_assert_error(r.error, FERRY_BRIDGE_CLOSED_ERROR, FERRY_BRIDGE_CLOSED);
  g_assert_cmpstr(r.error->message, ==, "bridge closed: boom");
  g_assert_cmpint(ferry_error_to_status_code(r.error), ==, FERRY_ERROR_UNAVAILABLE);
  g_assert_cmpstr(f->dead_cause->message, ==, "boom");
  ferry_bridge_kill(f->bridge, cause); /* idempotent */
  g_assert_cmpint(f->dead_calls, ==, 1);
  /* A later call fails the same way, from the main loop. */
  Result later = { 0 };
  start_rpc(f, &later, 0);
  g_assert_false(later.done);
  wait_for(&later);
  g_assert_cmpstr(later.error->message, ==, "bridge closed: boom");
  result_clear(&r);
  result_clear(&later);
}

/* hcsshim TestBridgeNotify. */
static void test_bridge_notify_delivered(BridgeFixture *f, gconstpointer data)
{
  guest_notify_exit(&f->guest, "c9", "ForcedExit");
  gint64 until = g_get_monotonic_time() + 5 * G_USEC_PER_SEC;
  while (f->notifications->len == 0 && g_get_monotonic_time() < until)
    g_main_context_iteration(g_main_context_get_thread_default(), TRUE);
  g_assert_cmpuint(f->notifications->len, ==, 1);
  json_t *n = f->notifications->pdata[0];
  g_assert_cmpstr(json_string_value(json_object_get(n, "ContainerId")), ==, "c9");
  g_assert_cmpstr(json_string_value(json_object_get(n, "Type")), ==, "ForcedExit");
}

/* hcsshim TestBridgeNotifyFailure: the callback's error tears the bridge down. */
static void test_bridge_notify_failure_kills(BridgeFixture *f, gconstpointer data)
{
  f->fail_notify = TRUE;
  guest_notify_exit(&f->guest, "c9", "ForcedExit");
  gint64 until = g_get_monotonic_time() + 5 * G_USEC_PER_SEC;
  while (f->dead_calls == 0 && g_get_monotonic_time() < until)
    g_main_context_iteration(g_main_context_get_thread_default(), TRUE);
  g_assert_true(ferry_bridge_is_dead(f->bridge));
  g_assert_cmpstr(f->dead_cause->message, ==, "container notification: callback refused it");
}

/* A guest that breaks the protocol gets the bridge killed with a clear error. */
static void expect_killed(BridgeFixture *f, const char *substring)
{
  gint64 until = g_get_monotonic_time() + 5 * G_USEC_PER_SEC;
  while (f->dead_calls == 0 && g_get_monotonic_time() < until)
    g_main_context_iteration(g_main_context_get_thread_default(), TRUE);
  g_assert_true(ferry_bridge_is_dead(f->bridge));
  if (strstr(f->dead_cause->message, substring) == NULL)
    g_error("bridge killed with \"%s\", expected it to mention \"%s\"", f->dead_cause->message,
            substring);
}

/* Answers to ids under the seeded floor (other hosts' requests) are dropped; unknown ids
 * at or above it still kill the bridge. */
static void test_bridge_foreign_ids_dropped(BridgeFixture *f, gconstpointer data)
{
  ferry_bridge_seed_next_id(f->bridge, 50);
  guest_answer(&f->guest, RPC_TYPE(WAIT_FOR_PROCESS), 12, json_pack("{s:i}", "ExitCode", 0));
  Result r = { 0 };
  guint64 id = start_rpc(f, &r, 0);
  g_assert_cmpuint(id, ==, 50);
  guest_expect(&f->guest, RPC_TYPE(START), NULL);
  guest_answer(&f->guest, RPC_TYPE(START), id, NULL);
  wait_for(&r);
  g_assert_no_error(r.error);
  g_assert_false(ferry_bridge_is_dead(f->bridge));
  guest_answer(&f->guest, RPC_TYPE(START), 60, NULL);
  expect_killed(f, "id 60");
  result_clear(&r);
}

static void test_bridge_unknown_response_id(BridgeFixture *f, gconstpointer data)
{
  guest_answer(&f->guest, RPC_TYPE(START), 77, NULL);
  expect_killed(f, "id 77");
}

static void test_bridge_response_type_mismatch(BridgeFixture *f, gconstpointer data)
{
  Result r = { 0 };
  guint64 id = start_rpc(f, &r, 0);
  guest_expect(&f->guest, RPC_TYPE(START), NULL);
  guest_answer(&f->guest, RPC_TYPE(CREATE), id, NULL);
  expect_killed(f, "expected 0x20100201");
  g_assert_error(r.error, FERRY_BRIDGE_CLOSED_ERROR, FERRY_BRIDGE_CLOSED);
  result_clear(&r);
}

static void test_bridge_unexpected_type(BridgeFixture *f, gconstpointer data)
{
  guest_send(&f->guest, RPC_TYPE(START), 1, json_object()); /* a request, from the guest */
  expect_killed(f, "unexpected type 0x10100201");
}

static void test_bridge_wrong_notify_type(BridgeFixture *f, gconstpointer data)
{
  guest_send(&f->guest, 0x30100201, 0, json_object());
  expect_killed(f, "unexpected type 0x30100201");
}

static void test_bridge_oversize_frame(BridgeFixture *f, gconstpointer data)
{
  Result r = { 0 };
  start_rpc(f, &r, 0);
  FerryBridgeHeader h = { RESP_TYPE(START), FERRY_BRIDGE_HOST_MAX_MESSAGE + 1, 0 };
  guint8 hdr[16];
  ferry_bridge_header_encode(&h, hdr);
  guest_write_raw(&f->guest, hdr, sizeof(hdr));
  expect_killed(f, "has size 65537");
  g_assert_error(r.error, FERRY_BRIDGE_CLOSED_ERROR, FERRY_BRIDGE_CLOSED);
  result_clear(&r);
}

static void test_bridge_undersize_frame(BridgeFixture *f, gconstpointer data)
{
  FerryBridgeHeader h = { RESP_TYPE(START), 8, 0 };
  guint8 hdr[16];
  ferry_bridge_header_encode(&h, hdr);
  guest_write_raw(&f->guest, hdr, sizeof(hdr));
  expect_killed(f, "has size 8");
}

static void test_bridge_malformed_body(BridgeFixture *f, gconstpointer data)
{
  Result r = { 0 };
  guint64 id = start_rpc(f, &r, 0);
  const char *junk = "{\"Result\": 0,";
  FerryBridgeHeader h = { RESP_TYPE(START), (guint32)(16 + strlen(junk)), id };
  guint8 hdr[16];
  ferry_bridge_header_encode(&h, hdr);
  guest_write_raw(&f->guest, hdr, sizeof(hdr));
  guest_write_raw(&f->guest, (const guint8 *)junk, strlen(junk));
  expect_killed(f, "invalid JSON");
  result_clear(&r);
}

static void test_bridge_response_without_result(BridgeFixture *f, gconstpointer data)
{
  Result r = { 0 };
  guint64 id = start_rpc(f, &r, 0);
  guest_send(&f->guest, RESP_TYPE(START), id, json_pack("{s:s}", "ActivityId", "x"));
  expect_killed(f, "Result");
  g_assert_error(r.error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
  result_clear(&r);
}

static void test_bridge_peer_close_kills(BridgeFixture *f, gconstpointer data)
{
  Result r = { 0 };
  start_rpc(f, &r, 0);
  ferry_fd_clear(&f->guest.fd);
  /* "closed by peer", or "reset by peer" when the guest left data unread. */
  expect_killed(f, "by peer");
  g_assert_error(r.error, FERRY_BRIDGE_CLOSED_ERROR, FERRY_BRIDGE_CLOSED);
  result_clear(&r);
}

/* Issue 9 item 1: the guest is gone before the host notices; the call's write breaks the
 * stream. Its callback runs once, later, from the main loop, and the bridge dies. */
static void test_bridge_rpc_after_peer_closed(BridgeFixture *f, gconstpointer data)
{
  Result r = { 0 };
  ferry_fd_clear(&f->guest.fd);
  start_rpc(f, &r, 1000); /* with a timeout: the timer is set on the call's record */
  g_assert_false(r.done);
  g_assert_cmpint(f->dead_calls, ==, 0);
  wait_for(&r);
  g_assert_error(r.error, FERRY_BRIDGE_CLOSED_ERROR, FERRY_BRIDGE_CLOSED);
  expect_killed(f, "");
  settle();
  g_assert_cmpint(r.calls, ==, 1);
  g_assert_cmpint(f->dead_calls, ==, 1);
  result_clear(&r);
}

/* While migrating, losing the connection parks the bridge: pending calls survive and
 * are answered on the next connection; a pre-registered id is routed too. */
static void test_bridge_migrating_park_and_resume(BridgeFixture *f, gconstpointer data)
{
  Result pending = { 0 }, prereg = { 0 }, during = { 0 };
  guint64 id = start_rpc(f, &pending, 0);
  guest_expect(&f->guest, RPC_TYPE(START), NULL);
  ferry_bridge_set_migrating(f->bridge, TRUE);
  ferry_fd_clear(&f->guest.fd);
  gint64 until = g_get_monotonic_time() + 5 * G_USEC_PER_SEC;
  while (!ferry_bridge_is_parked(f->bridge) && g_get_monotonic_time() < until)
    g_main_context_iteration(g_main_context_get_thread_default(), TRUE);
  g_assert_true(ferry_bridge_is_parked(f->bridge));
  g_assert_false(ferry_bridge_is_dead(f->bridge));
  g_assert_false(pending.done);

  /* A new call while parked fails alone. */
  start_rpc(f, &during, 0);
  wait_for(&during);
  g_assert_error(during.error, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE);
  g_assert_false(ferry_bridge_is_dead(f->bridge));

  /* The source's outstanding WaitForProcess, id 40. */
  g_autoptr(GError) error = NULL;
  g_assert_true(ferry_bridge_preregister_rpc(f->bridge, 40, FERRY_BRIDGE_RPC_WAIT_FOR_PROCESS,
                                             on_rpc, &prereg, &error));
  g_assert_cmpuint(ferry_bridge_next_id(f->bridge), ==, 41);

  int sp[2];
  g_assert_true(ferry_socketpair(sp, FALSE, &error));
  g_assert_true(ferry_bridge_resume_on_conn(f->bridge, sp[0], &error));
  raw_guest_clear(&f->guest);
  raw_guest_init(&f->guest, sp[1]);
  ferry_bridge_set_migrating(f->bridge, FALSE);

  guest_answer(&f->guest, RPC_TYPE(WAIT_FOR_PROCESS), 40, json_pack("{s:i}", "ExitCode", 3));
  guest_answer(&f->guest, RPC_TYPE(START), id, NULL);
  wait_for(&prereg);
  wait_for(&pending);
  g_assert_no_error(prereg.error);
  g_assert_cmpint(json_integer_value(json_object_get(prereg.json, "ExitCode")), ==, 3);
  g_assert_no_error(pending.error);
  g_assert_false(ferry_bridge_is_dead(f->bridge));
  result_clear(&pending);
  result_clear(&prereg);
  result_clear(&during);
}

static void test_bridge_resume_needs_migrating(BridgeFixture *f, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  int sp[2];
  g_assert_true(ferry_socketpair(sp, FALSE, &error));
  g_assert_false(ferry_bridge_resume_on_conn(f->bridge, sp[0], &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION);
  close(sp[1]);
}

static void test_bridge_leaving_migrating_while_parked_kills(BridgeFixture *f, gconstpointer data)
{
  ferry_bridge_set_migrating(f->bridge, TRUE);
  ferry_fd_clear(&f->guest.fd);
  gint64 until = g_get_monotonic_time() + 5 * G_USEC_PER_SEC;
  while (!ferry_bridge_is_parked(f->bridge) && g_get_monotonic_time() < until)
    g_main_context_iteration(g_main_context_get_thread_default(), TRUE);
  ferry_bridge_set_migrating(f->bridge, FALSE);
  g_assert_true(ferry_bridge_is_dead(f->bridge));
}

/* The id floor never goes backwards. */
static void test_bridge_id_floor(BridgeFixture *f, gconstpointer data)
{
  g_assert_cmpuint(ferry_bridge_next_id(f->bridge), ==, 0);
  ferry_bridge_seed_next_id(f->bridge, 100);
  g_assert_cmpuint(ferry_bridge_next_id(f->bridge), ==, 100);
  ferry_bridge_seed_next_id(f->bridge, 50);
  g_assert_cmpuint(ferry_bridge_next_id(f->bridge), ==, 100);
  g_autoptr(GError) error = NULL;
  Result a = { 0 };
  g_assert_true(ferry_bridge_preregister_rpc(f->bridge, 10, FERRY_BRIDGE_RPC_WAIT_FOR_PROCESS,
                                             on_rpc, &a, &error));
  g_assert_cmpuint(ferry_bridge_next_id(f->bridge), ==, 100); /* below: unchanged */
  g_assert_false(ferry_bridge_preregister_rpc(f->bridge, 10, FERRY_BRIDGE_RPC_WAIT_FOR_PROCESS,
                                              on_rpc, &a, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_ALREADY_EXISTS);
  g_clear_error(&error);
  Result r = { 0 };
  g_assert_cmpuint(start_rpc(f, &r, 0), ==, 100);
  g_autoptr(GError) cause = g_error_new(FERRY_ERROR, FERRY_ERROR_INTERNAL, "x");
  ferry_bridge_kill(f->bridge, cause);
  g_assert_false(ferry_bridge_preregister_rpc(f->bridge, 200, FERRY_BRIDGE_RPC_WAIT_FOR_PROCESS,
                                              on_rpc, &a, &error));
  g_assert_error(error, FERRY_BRIDGE_CLOSED_ERROR, FERRY_BRIDGE_CLOSED);
  result_clear(&a);
  result_clear(&r);
}

/* ----------------------------------------------------- guest connection -- */

typedef struct {
  FerryGuestConnection *gc;
  RawGuest guest;
  GArray *listened; /* guint32 */
  GArray *released;
  GArray *closed_write;
} GcFixture;

static gboolean hook_listen(guint32 port, gpointer ud, GError **error)
{
  GcFixture *f = ud;
  g_array_append_val(f->listened, port);
  return TRUE;
}

static void hook_release(guint32 port, gpointer ud)
{
  GcFixture *f = ud;
  g_array_append_val(f->released, port);
}

static void hook_close_write(guint32 port, gpointer ud)
{
  GcFixture *f = ud;
  g_array_append_val(f->closed_write, port);
}

static const FerryGuestPortHooks hooks = { hook_listen, hook_release, hook_close_write };

static void gc_answer_negotiate(GcFixture *f, guint32 version)
{
  json_t *body;
  guint64 id = guest_expect(&f->guest, RPC_TYPE(NEGOTIATE_PROTOCOL), &body);
  g_assert_cmpint(json_integer_value(json_object_get(body, "MinimumVersion")), ==, 4);
  g_assert_cmpint(json_integer_value(json_object_get(body, "MaximumVersion")), ==, 4);
  /* Ferry's notifications this host understands. */
  g_autofree char *asked = ferry_json_dump(json_object_get(body, FERRY_BRIDGE_NOTIFICATIONS_FIELD));
  g_assert_cmpstr(asked, ==, "[\"" FERRY_BRIDGE_NOTIFY_TYPE_OOM_KILL "\"]");
  json_decref(body);
  guest_answer(&f->guest, RPC_TYPE(NEGOTIATE_PROTOCOL), id,
               json_pack("{s:i, s:{s:s, s:b}}", "Version", version, "Capabilities", "RuntimeOsType",
                         "Linux", "SendHostCreateMessage", FALSE));
}

static void gc_setup(GcFixture *f, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  int sp[2];
  g_assert_true(ferry_socketpair(sp, FALSE, &error));
  f->listened = g_array_new(FALSE, FALSE, sizeof(guint32));
  f->released = g_array_new(FALSE, FALSE, sizeof(guint32));
  f->closed_write = g_array_new(FALSE, FALSE, sizeof(guint32));
  f->gc = ferry_guest_connection_new(sp[0], &hooks, f, &error);
  g_assert_no_error(error);
  raw_guest_init(&f->guest, sp[1]);
  if (data != NULL)
    return; /* the test negotiates itself */
  Result r = { 0 };
  ferry_guest_connection_connect(f->gc, on_done, &r);
  gc_answer_negotiate(f, 4);
  wait_for(&r);
  g_assert_no_error(r.error);
}

static void gc_teardown(GcFixture *f, gconstpointer data)
{
  ferry_guest_connection_free(f->gc);
  raw_guest_clear(&f->guest);
  g_array_unref(f->listened);
  g_array_unref(f->released);
  g_array_unref(f->closed_write);
}

/* hcsshim TestGcsConnect. */
static void test_gc_connect(GcFixture *f, gconstpointer data)
{
  g_assert_cmpuint(ferry_guest_connection_protocol(f->gc), ==, 0);
  Result r = { 0 };
  ferry_guest_connection_connect(f->gc, on_done, &r);
  gc_answer_negotiate(f, 4);
  wait_for(&r);
  g_assert_no_error(r.error);
  g_assert_cmpuint(ferry_guest_connection_protocol(f->gc), ==, 4);
  g_assert_cmpstr(ferry_guest_connection_os(f->gc), ==, "linux");
}

static void test_gc_connect_rejects_other_version(GcFixture *f, gconstpointer data)
{
  Result r = { 0 };
  ferry_guest_connection_connect(f->gc, on_done, &r);
  gc_answer_negotiate(f, 3);
  wait_for(&r);
  g_assert_error(r.error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION);
  g_assert_cmpuint(ferry_guest_connection_protocol(f->gc), ==, 0);
  result_clear(&r);
}

/* hcsshim TestGcsCreateContainer + TestGcsWaitContainer: the container is registered
 * for its notification before Create is sent, so an exit that overtakes the answer is
 * not lost. */
static void test_gc_create_and_wait_container(GcFixture *f, gconstpointer data)
{
  Result created = { 0 }, waited = { 0 };
  g_autoptr(GError) error = NULL;
  g_autoptr(json_t) config = json_pack("{s:{s:i,s:i}, s:s}", "SchemaVersion", "Major", 2, "Minor",
                                       1, "OciBundlePath", "/run/c1");
  g_autoptr(FerryGuestContainer) c =
      ferry_guest_connection_create_container(f->gc, "c1", config, on_done, &created, &error);
  g_assert_no_error(error);
  json_t *body;
  guint64 id = guest_expect(&f->guest, RPC_TYPE(CREATE), &body);
  g_assert_cmpstr(json_string_value(json_object_get(body, "ContainerId")), ==, "c1");
  /* ContainerConfig travels as a string holding JSON. */
  const char *cfg = json_string_value(json_object_get(body, "ContainerConfig"));
  g_assert_nonnull(cfg);
  g_assert_nonnull(strstr(cfg, "\"OciBundlePath\":\"/run/c1\""));
  json_decref(body);
  guest_answer(&f->guest, RPC_TYPE(CREATE), id, NULL);
  wait_for(&created);
  g_assert_no_error(created.error);

  /* A duplicate id is refused locally. */
  g_assert_null(
      ferry_guest_connection_create_container(f->gc, "c1", config, on_done, &created, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_ALREADY_EXISTS);
  g_clear_error(&error);

  ferry_guest_container_wait(c, on_done, &waited);
  Result term = { 0 };
  ferry_guest_container_terminate(c, on_done, &term);
  id = guest_expect(&f->guest, RPC_TYPE(SHUTDOWN_FORCED), NULL);
  guest_notify_exit(&f->guest, "c1", "ForcedExit");
  guest_answer(&f->guest, RPC_TYPE(SHUTDOWN_FORCED), id, NULL);
  wait_for(&term);
  wait_for(&waited);
  g_assert_no_error(waited.error);
  g_assert_true(ferry_guest_container_has_exited(c));
  g_assert_cmpstr(ferry_guest_container_exit_type(c), ==, "ForcedExit");
  /* Waiting again completes at once (from the loop). */
  Result again = { 0 };
  ferry_guest_container_wait(c, on_done, &again);
  g_assert_false(again.done);
  wait_for(&again);
  result_clear(&created);
  result_clear(&term);
}

/* Shutdown of a container the guest no longer has counts as done. */
static void test_gc_shutdown_tolerates_not_found(GcFixture *f, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(FerryGuestContainer) c = ferry_guest_connection_open_container(f->gc, "c2", &error);
  Result r = { 0 };
  ferry_guest_container_shutdown(c, on_done, &r);
  guint64 id = guest_expect(&f->guest, RPC_TYPE(SHUTDOWN_GRACEFUL), NULL);
  guest_fail(&f->guest, RPC_TYPE(SHUTDOWN_GRACEFUL), id, FERRY_HR_SYSTEM_NOT_FOUND, "gone");
  wait_for(&r);
  g_assert_no_error(r.error);
}

/* hcsshim TestGcsWaitContainerBridgeTerminated: bridge loss unblocks Wait, no error. */
static void test_gc_wait_container_bridge_terminated(GcFixture *f, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(FerryGuestContainer) c = ferry_guest_connection_open_container(f->gc, "c3", &error);
  Result w = { 0 };
  ferry_guest_container_wait(c, on_done, &w);
  ferry_fd_clear(&f->guest.fd);
  wait_for(&w);
  g_assert_no_error(w.error);
  g_assert_true(ferry_guest_container_has_exited(c));
}

static void test_gc_notification_for_unknown_container_kills(GcFixture *f, gconstpointer data)
{
  guest_notify_exit(&f->guest, "nobody", "UnexpectedExit");
  FerryBridge *b = ferry_guest_connection_get_bridge(f->gc);
  gint64 until = g_get_monotonic_time() + 5 * G_USEC_PER_SEC;
  while (!ferry_bridge_is_dead(b) && g_get_monotonic_time() < until)
    g_main_context_iteration(g_main_context_get_thread_default(), TRUE);
  g_assert_true(ferry_bridge_is_dead(b));
  g_assert_nonnull(strstr(ferry_bridge_get_error(b)->message, "unknown container nobody"));
}

typedef struct {
  GPtrArray *ids;
  guint64 last_count;
} OomSeen;

static void on_oom(FerryGuestConnection *gc, const char *container_id, guint64 oom_kills,
                   gpointer ud)
{
  OomSeen *seen = ud;
  g_ptr_array_add(seen->ids, g_strdup(container_id));
  seen->last_count = oom_kills;
}

static void guest_notify_oom(RawGuest *g, const char *cid, int count)
{
  guest_send(g, FERRY_BRIDGE_NOTIFY_CONTAINER, 0,
             json_pack("{s:s, s:s, s:s, s:s, s:i, s:i}", "ContainerId", cid, "ActivityId",
                       FERRY_ZERO_ACTIVITY_ID, "Type", FERRY_BRIDGE_NOTIFY_TYPE_OOM_KILL,
                       "Operation", "None", "Result", 0, FERRY_BRIDGE_OOM_KILL_COUNT, count));
}

/* Ferry's OOM notification reaches the OOM callback and leaves the container running;
 * one for a container the host does not follow is dropped without killing the bridge;
 * the exit notification that follows still ends the container. */
static void test_gc_oom_notification(GcFixture *f, gconstpointer data)
{
  OomSeen seen = { g_ptr_array_new_with_free_func(g_free), 0 };
  ferry_guest_connection_set_oom_func(f->gc, on_oom, &seen);
  g_autoptr(GError) error = NULL;
  g_autoptr(FerryGuestContainer) c = ferry_guest_connection_open_container(f->gc, "c5", &error);
  g_assert_no_error(error);
  guest_notify_oom(&f->guest, "nobody", 1);
  guest_notify_oom(&f->guest, "c5", 2);
  gint64 until = g_get_monotonic_time() + 5 * G_USEC_PER_SEC;
  while (seen.ids->len == 0 && g_get_monotonic_time() < until)
    g_main_context_iteration(g_main_context_get_thread_default(), TRUE);
  g_assert_cmpuint(seen.ids->len, ==, 1);
  g_assert_cmpstr(seen.ids->pdata[0], ==, "c5");
  g_assert_cmpuint(seen.last_count, ==, 2);
  g_assert_false(ferry_guest_container_has_exited(c));
  g_assert_false(ferry_bridge_is_dead(ferry_guest_connection_get_bridge(f->gc)));

  Result w = { 0 };
  ferry_guest_container_wait(c, on_done, &w);
  guest_notify_exit(&f->guest, "c5", "UnexpectedExit");
  wait_for(&w);
  g_assert_no_error(w.error);
  g_assert_cmpstr(ferry_guest_container_exit_type(c), ==, "UnexpectedExit");
  g_assert_cmpuint(seen.ids->len, ==, 1);
  g_ptr_array_unref(seen.ids);
}

static void test_gc_close_container_fails_wait(GcFixture *f, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(FerryGuestContainer) c = ferry_guest_connection_open_container(f->gc, "c4", &error);
  Result w = { 0 };
  ferry_guest_container_wait(c, on_done, &w);
  ferry_guest_container_close(c);
  wait_for(&w);
  g_assert_error(w.error, FERRY_ERROR, FERRY_ERROR_CANCELLED);
  g_assert_cmpstr(w.error->message, ==, "container c4 closed");
  /* Its notification is no longer expected: it would now kill the bridge, and the id
   * can be opened again. */
  g_autoptr(FerryGuestContainer) again = ferry_guest_connection_open_container(f->gc, "c4", &error);
  g_assert_no_error(error);
  g_assert_true(again != c);
  result_clear(&w);
}

/* Exec: ports allocated in stdin/stdout/stderr order for requested pipes only, the
 * ProcessParameters as a JSON string, then an async WaitForProcess with no timeout. */
static FerryGuestProcess *exec_process(GcFixture *f, FerryGuestContainer *c, json_t *params,
                                       guint32 pid, guint64 *wait_id, json_t **exec_body)
{
  Result r = { 0 };
  if (c != NULL)
    ferry_guest_container_create_process(c, params, on_process, &r);
  else
    ferry_guest_connection_create_process(f->gc, params, on_process, &r);
  guint64 id = guest_expect(&f->guest, RPC_TYPE(EXECUTE_PROCESS), exec_body);
  guest_answer(&f->guest, RPC_TYPE(EXECUTE_PROCESS), id, json_pack("{s:i}", "ProcessId", pid));
  wait_for(&r);
  g_assert_no_error(r.error);
  json_t *wait_body;
  *wait_id = guest_expect(&f->guest, RPC_TYPE(WAIT_FOR_PROCESS), &wait_body);
  g_assert_cmpint(json_integer_value(json_object_get(wait_body, "ProcessId")), ==, pid);
  g_assert_cmpint(json_integer_value(json_object_get(wait_body, "TimeoutInMs")), ==, 0xffffffff);
  g_assert_null(json_object_get(wait_body, FERRY_BRIDGE_PROCESS_SERIAL)); /* none given */
  json_decref(wait_body);
  return g_steal_pointer(&r.process);
}

static void test_gc_exec_and_exit_code(GcFixture *f, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(FerryGuestContainer) c = ferry_guest_connection_open_container(f->gc, "c5", &error);
  g_autoptr(json_t) params =
      json_pack("{s:[s], s:b, s:b, s:b}", "CommandArgs", "cat", "CreateStdInPipe", TRUE,
                "CreateStdOutPipe", TRUE, "CreateStdErrPipe", FALSE);
  guint64 wait_id;
  json_t *body;
  g_assert_cmpuint(ferry_guest_connection_next_port(f->gc), ==, 0x40000001);
  g_autoptr(FerryGuestProcess) p = exec_process(f, c, params, 42, &wait_id, &body);
  json_t *settings = json_object_get(body, "Settings");
  g_assert_true(json_is_string(json_object_get(settings, "ProcessParameters")));
  json_t *relay = json_object_get(settings, "VsockStdioRelaySettings");
  g_assert_cmpint(json_integer_value(json_object_get(relay, "StdIn")), ==, 0x40000001);
  g_assert_cmpint(json_integer_value(json_object_get(relay, "StdOut")), ==, 0x40000002);
  g_assert_null(json_object_get(relay, "StdErr"));
  json_decref(body);
  g_assert_cmpuint(f->listened->len, ==, 2);
  g_assert_cmpuint(ferry_guest_connection_next_port(f->gc), ==, 0x40000003);

  g_assert_cmpuint(ferry_guest_process_get_pid(p), ==, 42);
  FerryGuestMigrationState ms = ferry_guest_process_migration_state(p);
  g_assert_cmpuint(ms.stdin_port, ==, 0x40000001);
  g_assert_cmpuint(ms.stdout_port, ==, 0x40000002);
  g_assert_cmpuint(ms.stderr_port, ==, 0);
  g_assert_cmpuint(ms.wait_call_id, ==, wait_id);

  int code;
  g_assert_false(ferry_guest_process_exit_code(p, &code, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION);
  g_clear_error(&error);

  ferry_guest_process_close_stdin(p);
  g_assert_cmpuint(f->closed_write->len, ==, 1);
  g_assert_cmpuint(g_array_index(f->closed_write, guint32, 0), ==, 0x40000001);

  Result w = { 0 };
  ferry_guest_process_wait(p, on_done, &w);
  guest_answer(&f->guest, RPC_TYPE(WAIT_FOR_PROCESS), wait_id, json_pack("{s:i}", "ExitCode", 7));
  wait_for(&w);
  g_assert_no_error(w.error);
  g_assert_true(ferry_guest_process_exit_code(p, &code, &error));
  g_assert_cmpint(code, ==, 7);
  g_assert_cmpuint(ferry_guest_process_migration_state(p).wait_call_id, ==, 0);

  ferry_guest_process_close(p);
  g_assert_cmpuint(f->released->len, ==, 2);
}

/* A wait answered "not found" (the guest lost the process): the exit code is an error of
 * its own, never a 0 that reads as success. */
static void test_gc_exit_code_lost_on_not_found(GcFixture *f, gconstpointer data)
{
  g_autoptr(json_t) params = json_pack("{s:[s]}", "CommandArgs", "true");
  guint64 wait_id;
  g_autoptr(FerryGuestProcess) p = exec_process(f, NULL, params, 5, &wait_id, NULL);
  Result w = { 0 };
  ferry_guest_process_wait(p, on_done, &w);
  guest_fail(&f->guest, RPC_TYPE(WAIT_FOR_PROCESS), wait_id, FERRY_HR_NOT_FOUND, "no pid 5");
  wait_for(&w);
  g_assert_error(w.error, FERRY_BRIDGE_ERROR, (gint)FERRY_HR_NOT_FOUND);
  int code = 12345;
  g_autoptr(GError) error = NULL;
  g_assert_false(ferry_guest_process_exit_code(p, &code, &error));
  g_assert_error(error, FERRY_GUEST_EXIT_ERROR, FERRY_GUEST_EXIT_ERROR_LOST);
  g_assert_nonnull(strstr(error->message, "no pid 5"));
  g_assert_cmpint(ferry_error_to_status_code(error), ==, FERRY_ERROR_NOT_FOUND);
  g_assert_cmpint(code, ==, 12345); /* untouched */
  result_clear(&w);
}

/* hcsshim's guest reports a UVM process killed by a signal as 4294967295, ferry's agent as
 * 128+n: both are accepted, the first as FERRY_GUEST_EXIT_CODE_SIGNALED. */
static void test_gc_exit_code_signaled_forms(GcFixture *f, gconstpointer data)
{
  g_autoptr(json_t) params = json_pack("{s:[s]}", "CommandArgs", "sleep");
  const json_int_t answers[2] = { 4294967295LL, 128 + SIGKILL };
  const int codes[2] = { FERRY_GUEST_EXIT_CODE_SIGNALED, 128 + SIGKILL };
  for (int i = 0; i < 2; i++) {
    guint64 wait_id;
    g_autoptr(FerryGuestProcess) p = exec_process(f, NULL, params, 20 + (guint32)i, &wait_id, NULL);
    Result w = { 0 };
    ferry_guest_process_wait(p, on_done, &w);
    guest_answer(&f->guest, RPC_TYPE(WAIT_FOR_PROCESS), wait_id,
                 json_pack("{s:I}", "ExitCode", answers[i]));
    wait_for(&w);
    g_assert_no_error(w.error);
    int code = 0;
    g_autoptr(GError) error = NULL;
    g_assert_true(ferry_guest_process_exit_code(p, &code, &error));
    g_assert_no_error(error);
    g_assert_cmpint(code, ==, codes[i]);
    result_clear(&w);
  }
}

/* hcsshim TestGcsWaitProcessBridgeTerminated. */
static void test_gc_wait_process_bridge_terminated(GcFixture *f, gconstpointer data)
{
  g_autoptr(json_t) params = json_pack("{s:[s]}", "CommandArgs", "sleep");
  guint64 wait_id;
  g_autoptr(FerryGuestProcess) p = exec_process(f, NULL, params, 6, &wait_id, NULL);
  Result w = { 0 };
  ferry_guest_process_wait(p, on_done, &w);
  ferry_fd_clear(&f->guest.fd);
  wait_for(&w);
  g_assert_error(w.error, FERRY_BRIDGE_CLOSED_ERROR, FERRY_BRIDGE_CLOSED);
  g_assert_true(g_str_has_prefix(w.error->message, "bridge closed"));
  int code;
  g_autoptr(GError) error = NULL;
  g_assert_false(ferry_guest_process_exit_code(p, &code, &error));
  result_clear(&w);
}

static void test_gc_signal_and_kill(GcFixture *f, gconstpointer data)
{
  g_autoptr(json_t) params = json_pack("{s:[s]}", "CommandArgs", "sleep");
  guint64 wait_id;
  g_autoptr(FerryGuestProcess) p = exec_process(f, NULL, params, 8, &wait_id, NULL);

  Result s = { 0 };
  ferry_guest_process_signal(p, SIGTERM, on_signal, &s);
  json_t *body;
  guint64 id = guest_expect(&f->guest, RPC_TYPE(SIGNAL_PROCESS), &body);
  g_assert_cmpint(json_integer_value(json_object_get(json_object_get(body, "Options"), "Signal")),
                  ==, SIGTERM);
  json_decref(body);
  guest_answer(&f->guest, RPC_TYPE(SIGNAL_PROCESS), id, NULL);
  wait_for(&s);
  g_assert_true(s.delivered);

  Result k = { 0 };
  ferry_guest_process_kill(p, on_signal, &k);
  id = guest_expect(&f->guest, RPC_TYPE(SIGNAL_PROCESS), &body);
  g_assert_null(json_object_get(body, "Options")); /* the guest's default is SIGKILL */
  json_decref(body);
  guest_fail(&f->guest, RPC_TYPE(SIGNAL_PROCESS), id, FERRY_HR_NOT_FOUND, "gone");
  wait_for(&k);
  g_assert_no_error(k.error);
  g_assert_false(k.delivered);

  Result rs = { 0 };
  ferry_guest_process_resize_console(p, 80, 24, on_done, &rs);
  id = guest_expect(&f->guest, RPC_TYPE(RESIZE_CONSOLE), &body);
  g_assert_cmpint(json_integer_value(json_object_get(body, "Width")), ==, 80);
  g_assert_cmpint(json_integer_value(json_object_get(body, "Height")), ==, 24);
  json_decref(body);
  guest_answer(&f->guest, RPC_TYPE(RESIZE_CONSOLE), id, NULL);
  wait_for(&rs);
  g_assert_no_error(rs.error);
}

/* The serial of a process request, or -1 when the request has none. */
static json_int_t request_serial(RawGuest *g, guint32 type, guint64 *id)
{
  json_t *body;
  *id = guest_expect(g, type, &body);
  json_t *serial = json_object_get(body, FERRY_BRIDGE_PROCESS_SERIAL);
  json_int_t v = serial != NULL ? json_integer_value(serial) : -1;
  json_decref(body);
  return v;
}

/* A guest that gives a FerryProcessSerial gets it back in every request about the process
 * (so a reused pid cannot take another process's wait or signal); hcsshim's guest, which
 * gives none, gets requests naming the pid alone. */
static void test_gc_process_serial(GcFixture *f, gconstpointer data)
{
  g_autoptr(json_t) params = json_pack("{s:[s]}", "CommandArgs", "sleep");
  Result r = { 0 };
  ferry_guest_connection_create_process(f->gc, params, on_process, &r);
  guint64 id = guest_expect(&f->guest, RPC_TYPE(EXECUTE_PROCESS), NULL);
  guest_answer(
      &f->guest, RPC_TYPE(EXECUTE_PROCESS), id,
      json_pack("{s:i, s:I}", "ProcessId", 9, FERRY_BRIDGE_PROCESS_SERIAL, (json_int_t)77));
  wait_for(&r);
  g_assert_no_error(r.error);
  g_autoptr(FerryGuestProcess) p = g_steal_pointer(&r.process);
  g_assert_cmpuint(ferry_guest_process_get_serial(p), ==, 77);
  g_assert_cmpuint(ferry_guest_process_migration_state(p).serial, ==, 77);
  g_assert_cmpint(request_serial(&f->guest, RPC_TYPE(WAIT_FOR_PROCESS), &id), ==, 77);
  Result s = { 0 };
  ferry_guest_process_signal(p, SIGTERM, on_signal, &s);
  g_assert_cmpint(request_serial(&f->guest, RPC_TYPE(SIGNAL_PROCESS), &id), ==, 77);
  guest_answer(&f->guest, RPC_TYPE(SIGNAL_PROCESS), id, NULL);
  wait_for(&s);
  Result rs = { 0 };
  ferry_guest_process_resize_console(p, 80, 24, on_done, &rs);
  g_assert_cmpint(request_serial(&f->guest, RPC_TYPE(RESIZE_CONSOLE), &id), ==, 77);
  guest_answer(&f->guest, RPC_TYPE(RESIZE_CONSOLE), id, NULL);
  wait_for(&rs);
  g_assert_no_error(rs.error);

  guint64 wait_id;
  g_autoptr(FerryGuestProcess) q = exec_process(f, NULL, params, 10, &wait_id, NULL);
  g_assert_cmpuint(ferry_guest_process_get_serial(q), ==, 0);
  Result k = { 0 };
  ferry_guest_process_kill(q, on_signal, &k);
  g_assert_cmpint(request_serial(&f->guest, RPC_TYPE(SIGNAL_PROCESS), &id), ==, -1);
  guest_answer(&f->guest, RPC_TYPE(SIGNAL_PROCESS), id, NULL);
  wait_for(&k);
  g_assert_no_error(k.error);

  /* A negative serial is not one. */
  Result bad = { 0 };
  ferry_guest_connection_create_process(f->gc, params, on_process, &bad);
  id = guest_expect(&f->guest, RPC_TYPE(EXECUTE_PROCESS), NULL);
  guest_answer(&f->guest, RPC_TYPE(EXECUTE_PROCESS), id,
               json_pack("{s:i, s:i}", "ProcessId", 11, FERRY_BRIDGE_PROCESS_SERIAL, -1));
  wait_for(&bad);
  g_assert_error(bad.error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
  result_clear(&bad);
  result_clear(&r);
}

static void test_gc_properties(GcFixture *f, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(FerryGuestContainer) c = ferry_guest_connection_open_container(f->gc, "c6", &error);
  g_autoptr(json_t) query = json_pack("{s:[s]}", "PropertyTypes", "ProcessList");
  Result r = { 0 };
  ferry_guest_container_properties(c, query, on_json, &r);
  json_t *body;
  guint64 id = guest_expect(&f->guest, RPC_TYPE(GET_PROPERTIES), &body);
  g_assert_cmpstr(json_string_value(json_object_get(body, "Query")), ==,
                  "{\"PropertyTypes\":[\"ProcessList\"]}");
  json_decref(body);
  guest_answer(&f->guest, RPC_TYPE(GET_PROPERTIES), id,
               json_pack("{s:s}", "Properties", "{\"ProcessList\":[{\"ProcessId\":1}]}"));
  wait_for(&r);
  g_assert_no_error(r.error);
  json_t *list = json_object_get(r.json, "ProcessList");
  g_assert_cmpuint(json_array_size(list), ==, 1);
  result_clear(&r);
}

static void test_gc_modify_and_dump_stacks(GcFixture *f, gconstpointer data)
{
  g_autoptr(json_t) req = json_pack("{s:s, s:s, s:{}}", "ResourceType", "MappedDirectory",
                                    "RequestType", "Add", "Settings");
  Result m = { 0 };
  ferry_guest_connection_modify(f->gc, NULL, req, on_done, &m);
  json_t *body;
  guint64 id = guest_expect(&f->guest, RPC_TYPE(MODIFY_SETTINGS), &body);
  g_assert_cmpstr(json_string_value(json_object_get(body, "ContainerId")), ==,
                  FERRY_NULL_CONTAINER_ID);
  g_assert_cmpstr(
      json_string_value(json_object_get(json_object_get(body, "Request"), "ResourceType")), ==,
      "MappedDirectory");
  json_decref(body);
  guest_answer(&f->guest, RPC_TYPE(MODIFY_SETTINGS), id, NULL);
  wait_for(&m);
  g_assert_no_error(m.error);

  Result d = { 0 };
  ferry_guest_connection_dump_stacks(f->gc, on_json, &d);
  id = guest_expect(&f->guest, RPC_TYPE(DUMP_STACKS), NULL);
  guest_answer(&f->guest, RPC_TYPE(DUMP_STACKS), id, json_pack("{s:s}", "GuestStacks", "main"));
  wait_for(&d);
  g_assert_cmpstr(json_string_value(json_object_get(d.json, "GuestStacks")), ==, "main");
  result_clear(&d);

  Result del = { 0 };
  ferry_guest_connection_delete_container_state(f->gc, "c7", on_done, &del);
  id = guest_expect(&f->guest, RPC_TYPE(DELETE_CONTAINER_STATE), NULL);
  guest_fail(&f->guest, RPC_TYPE(DELETE_CONTAINER_STATE), id, FERRY_HR_SYSTEM_NOT_FOUND, "no c7");
  wait_for(&del);
  g_assert_error(del.error, FERRY_BRIDGE_ERROR, (gint)FERRY_HR_SYSTEM_NOT_FOUND);
  result_clear(&del);
}

/* The port floor never goes backwards; exec takes ports from it. */
static void test_gc_port_floor(GcFixture *f, gconstpointer data)
{
  ferry_guest_connection_set_next_port(f->gc, 0x40000100);
  ferry_guest_connection_set_next_port(f->gc, 0x40000050);
  g_assert_cmphex(ferry_guest_connection_next_port(f->gc), ==, 0x40000100);
  g_autoptr(json_t) params =
      json_pack("{s:[s], s:b}", "CommandArgs", "x", "CreateStdErrPipe", TRUE);
  guint64 wait_id;
  json_t *body;
  g_autoptr(FerryGuestProcess) p = exec_process(f, NULL, params, 9, &wait_id, &body);
  g_assert_cmpuint(ferry_guest_process_migration_state(p).stderr_port, ==, 0x40000100);
  json_t *relay = json_object_get(json_object_get(body, "Settings"), "VsockStdioRelaySettings");
  g_assert_cmpint(json_integer_value(json_object_get(relay, "StdErr")), ==, 0x40000100);
  json_decref(body);
  g_assert_cmphex(ferry_guest_connection_next_port(f->gc), ==, 0x40000101);
  ferry_guest_connection_seed_next_id(f->gc, 1000);
  ferry_guest_connection_seed_next_id(f->gc, 10);
  g_assert_cmpuint(ferry_guest_connection_next_id(f->gc), ==, 1000);
}

/* The destination side of a migration: seed the floors, open the container, reopen
 * the process with its ports and its outstanding wait id; the guest's answer to that
 * wait (sent by the source host long ago) is routed to the reopened process. */
static void test_gc_open_process_with_io(GcFixture *f, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  ferry_guest_connection_set_next_port(f->gc, 0x40000010);
  ferry_guest_connection_seed_next_id(f->gc, 77);
  g_autoptr(FerryGuestContainer) c = ferry_guest_connection_open_container(f->gc, "c8", &error);
  g_assert_null(
      ferry_guest_container_open_process_with_io(c, 12, 0x40000004, 0x40000005, 0, 0, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
  g_clear_error(&error);
  g_autoptr(FerryGuestProcess) p =
      ferry_guest_container_open_process_with_io(c, 12, 0x40000004, 0x40000005, 0, 33, &error);
  g_assert_no_error(error);
  /* Listens again on exactly its ports, allocating none. */
  g_assert_cmpuint(f->listened->len, ==, 2);
  g_assert_cmphex(g_array_index(f->listened, guint32, 0), ==, 0x40000004);
  g_assert_cmphex(g_array_index(f->listened, guint32, 1), ==, 0x40000005);
  g_assert_cmphex(ferry_guest_connection_next_port(f->gc), ==, 0x40000010);
  /* Already negotiated, so the process also gets a wait of its own at once (the other
   * host's answer may be lost); it takes the next id above the seeded floor, and is
   * the one a further migration would carry. */
  json_t *fresh;
  guint64 fresh_id = guest_expect(&f->guest, RPC_TYPE(WAIT_FOR_PROCESS), &fresh);
  g_assert_cmpuint(fresh_id, ==, 77);
  g_assert_cmpint(json_integer_value(json_object_get(fresh, "ProcessId")), ==, 12);
  json_decref(fresh);
  g_assert_cmpuint(ferry_guest_connection_next_id(f->gc), ==, 78);
  FerryGuestMigrationState ms = ferry_guest_process_migration_state(p);
  g_assert_cmpuint(ms.wait_call_id, ==, 77);

  /* The same wait id cannot be registered twice. */
  g_assert_null(ferry_guest_container_open_process_with_io(c, 12, 0, 0, 0, 33, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_ALREADY_EXISTS);
  g_clear_error(&error);

  Result w = { 0 };
  ferry_guest_process_wait(p, on_done, &w);
  /* The old host's wait is answered first: it wins; the second answer changes nothing. */
  guest_answer(&f->guest, RPC_TYPE(WAIT_FOR_PROCESS), 33, json_pack("{s:i}", "ExitCode", 143));
  wait_for(&w);
  g_assert_no_error(w.error);
  int code;
  g_assert_true(ferry_guest_process_exit_code(p, &code, &error));
  g_assert_cmpint(code, ==, 143);
  guest_answer(&f->guest, RPC_TYPE(WAIT_FOR_PROCESS), 77, json_pack("{s:i}", "ExitCode", 1));
  settle();
  g_assert_true(ferry_guest_process_exit_code(p, &code, &error));
  g_assert_cmpint(code, ==, 143);
  g_assert_false(ferry_bridge_is_dead(ferry_guest_connection_get_bridge(f->gc)));
}

/* A reopened process whose old wait answer was lost with the old host: the wait it sends
 * itself after negotiating completes it. An error on one wait is ignored while the other
 * is still pending. */
static void test_gc_reopened_process_fresh_wait(GcFixture *f, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(FerryGuestContainer) c = ferry_guest_connection_open_container(f->gc, "c9", &error);
  g_autoptr(FerryGuestProcess) p =
      ferry_guest_container_open_process_with_io(c, 13, 0, 0, 0, 5, &error);
  g_assert_no_error(error);
  guint64 fresh_id = guest_expect(&f->guest, RPC_TYPE(WAIT_FOR_PROCESS), NULL);
  Result w = { 0 };
  ferry_guest_process_wait(p, on_done, &w);
  guest_fail(&f->guest, RPC_TYPE(WAIT_FOR_PROCESS), fresh_id, FERRY_HR_E_FAIL, "hiccup");
  settle();
  g_assert_false(w.done); /* the pre-registered wait (id 5) may still answer */
  guest_answer(&f->guest, RPC_TYPE(WAIT_FOR_PROCESS), 5, json_pack("{s:i}", "ExitCode", 4));
  wait_for(&w);
  g_assert_no_error(w.error);
  int code;
  g_assert_true(ferry_guest_process_exit_code(p, &code, &error));
  g_assert_cmpint(code, ==, 4);
}

/* A transport break while migrating: the process's wait survives, the connection is
 * resumed on a new socket with a fresh negotiation, and the wait completes there. */
static void test_gc_resume_on_conn(GcFixture *f, gconstpointer data)
{
  g_autoptr(json_t) params = json_pack("{s:[s]}", "CommandArgs", "sleep");
  guint64 wait_id;
  g_autoptr(FerryGuestProcess) p = exec_process(f, NULL, params, 11, &wait_id, NULL);
  ferry_guest_connection_set_migrating(f->gc, TRUE);
  ferry_fd_clear(&f->guest.fd);
  FerryBridge *b = ferry_guest_connection_get_bridge(f->gc);
  gint64 until = g_get_monotonic_time() + 5 * G_USEC_PER_SEC;
  while (!ferry_bridge_is_parked(b) && g_get_monotonic_time() < until)
    g_main_context_iteration(g_main_context_get_thread_default(), TRUE);
  g_assert_true(ferry_bridge_is_parked(b));

  g_autoptr(GError) error = NULL;
  int sp[2];
  g_assert_true(ferry_socketpair(sp, FALSE, &error));
  raw_guest_clear(&f->guest);
  raw_guest_init(&f->guest, sp[1]);
  Result r = { 0 };
  ferry_guest_connection_resume_on_conn(f->gc, sp[0], on_done, &r);
  gc_answer_negotiate(f, 4);
  wait_for(&r);
  g_assert_no_error(r.error);
  g_assert_false(ferry_bridge_is_migrating(b));

  Result w = { 0 };
  ferry_guest_process_wait(p, on_done, &w);
  guest_answer(&f->guest, RPC_TYPE(WAIT_FOR_PROCESS), wait_id, json_pack("{s:i}", "ExitCode", 1));
  wait_for(&w);
  g_assert_no_error(w.error);
}

/* Exec failures release the ports it listened on. */
static void test_gc_exec_failure_releases_ports(GcFixture *f, gconstpointer data)
{
  g_autoptr(json_t) params = json_pack("{s:[s], s:b, s:b}", "CommandArgs", "nope",
                                       "CreateStdInPipe", TRUE, "CreateStdOutPipe", TRUE);
  Result r = { 0 };
  ferry_guest_connection_create_process(f->gc, params, on_process, &r);
  guint64 id = guest_expect(&f->guest, RPC_TYPE(EXECUTE_PROCESS), NULL);
  guest_fail(&f->guest, RPC_TYPE(EXECUTE_PROCESS), id, FERRY_HR_E_FAIL, "no such file");
  wait_for(&r);
  g_assert_error(r.error, FERRY_BRIDGE_ERROR, (gint)FERRY_HR_E_FAIL);
  g_assert_null(r.process);
  g_assert_cmpuint(f->released->len, ==, 2);
  /* Ports are never reused, even after a failure. */
  g_assert_cmphex(ferry_guest_connection_next_port(f->gc), ==, 0x40000003);
  /* A malformed parameter is refused before anything is sent. */
  Result bad = { 0 };
  g_autoptr(json_t) wrong = json_pack("{s:s}", "CreateStdInPipe", "yes");
  ferry_guest_connection_create_process(f->gc, wrong, on_process, &bad);
  wait_for(&bad);
  g_assert_error(bad.error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
  result_clear(&r);
  result_clear(&bad);
  settle();
}

/* The storage builders write hcsshim's shapes (guestresource.LCOWMappedVirtualDisk and
 * LCOWCombinedLayers, omitempty), byte for byte. */
static void assert_json(json_t *got, const char *want)
{
  g_autofree char *text = ferry_json_dump(got);
  g_assert_cmpstr(text, ==, want);
}

static void test_storage_requests(void)
{
  const char *const options[] = { "noatime", NULL };
  FerryGuestMappedDisk disk = { .mount_path = "/run/mounts/scsi/m1",
                                .lun = 1,
                                .read_only = TRUE,
                                .filesystem = "erofs",
                                .options = options };
  g_autoptr(json_t) add = ferry_guest_mapped_disk_request("Add", &disk);
  assert_json(add, "{\"ResourceType\":\"MappedVirtualDisk\",\"RequestType\":\"Add\",\"Settings\":"
                   "{\"MountPath\":\"/run/mounts/scsi/m1\",\"Lun\":1,\"ReadOnly\":true,"
                   "\"Options\":[\"noatime\"],\"Filesystem\":\"erofs\"}}");
  FerryGuestMappedDisk zero = { .mount_path = "/m", .controller = 2, .partition = 3 };
  g_autoptr(json_t) second = ferry_guest_mapped_disk_request("Remove", &zero);
  assert_json(second, "{\"ResourceType\":\"MappedVirtualDisk\",\"RequestType\":\"Remove\","
                      "\"Settings\":{\"MountPath\":\"/m\",\"Controller\":2,\"Partition\":3}}");
  const char *const layers[] = { "/run/mounts/scsi/m2", "/run/mounts/scsi/m1", NULL };
  g_autoptr(json_t) combine = ferry_guest_combined_layers_request(
      "Add", "c1", "/run/gcs/c/c1/rootfs", layers, "/run/gcs/c/c1/scratch", 16);
  assert_json(combine,
              "{\"ResourceType\":\"CombinedLayers\",\"RequestType\":\"Add\",\"Settings\":{"
              "\"ContainerID\":\"c1\",\"ContainerRootPath\":\"/run/gcs/c/c1/rootfs\","
              "\"Layers\":[{\"Path\":\"/run/mounts/scsi/m2\"},{\"Path\":\"/run/mounts/scsi/m1\"}],"
              "\"ScratchPath\":\"/run/gcs/c/c1/scratch\",\"FerryScratchSizeInMB\":16}}");
  g_autoptr(json_t) remove =
      ferry_guest_combined_layers_request("Remove", NULL, "/run/gcs/c/c1/rootfs", NULL, NULL, 0);
  assert_json(remove, "{\"ResourceType\":\"CombinedLayers\",\"RequestType\":\"Remove\","
                      "\"Settings\":{\"ContainerRootPath\":\"/run/gcs/c/c1/rootfs\"}}");
}

int main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
#define B(path, fn)                                                                                \
  g_test_add("/bridge/host/" path, BridgeFixture, NULL, bridge_setup, fn, bridge_teardown)
#define BP(path, fn)                                                                               \
  g_test_add("/bridge/host/pushed-context/" path, BridgeFixture, NULL, bridge_setup_pushed, fn,    \
             bridge_teardown)
#define GC(path, fn)                                                                               \
  g_test_add("/bridge/guest-connection/" path, GcFixture, NULL, gc_setup, fn, gc_teardown)
  g_test_add_func("/bridge/guest-connection/storage-requests-in-hcsshim-shapes",
                  test_storage_requests);
#define GC_RAW(path, fn)                                                                           \
  g_test_add("/bridge/guest-connection/" path, GcFixture, "raw", gc_setup, fn, gc_teardown)
  B("rpc-round-trip", test_bridge_rpc_round_trip);
  B("rpc-error-result", test_bridge_rpc_error_result);
  B("result-one-is-guest-error", test_bridge_result_one_is_guest_error);
  B("rpc-timeout-kills-bridge", test_bridge_rpc_timeout_kills_bridge);
  B("rpc-cancel", test_bridge_rpc_cancel);
  B("kill-wraps-cause", test_bridge_kill_wraps_cause);
  B("notify-delivered", test_bridge_notify_delivered);
  B("notify-failure-kills", test_bridge_notify_failure_kills);
  B("unknown-response-id-kills", test_bridge_unknown_response_id);
  B("foreign-ids-dropped", test_bridge_foreign_ids_dropped);
  B("response-type-mismatch-kills", test_bridge_response_type_mismatch);
  B("unexpected-type-kills", test_bridge_unexpected_type);
  B("wrong-notify-type-kills", test_bridge_wrong_notify_type);
  B("oversize-frame-kills", test_bridge_oversize_frame);
  B("undersize-frame-kills", test_bridge_undersize_frame);
  B("malformed-body-kills", test_bridge_malformed_body);
  B("response-without-result-kills", test_bridge_response_without_result);
  B("peer-close-kills", test_bridge_peer_close_kills);
  B("rpc-after-peer-closed", test_bridge_rpc_after_peer_closed);
  BP("rpc-round-trip", test_bridge_rpc_round_trip);
  BP("rpc-timeout-kills-bridge", test_bridge_rpc_timeout_kills_bridge);
  BP("rpc-after-peer-closed", test_bridge_rpc_after_peer_closed);
  B("migrating-park-and-resume", test_bridge_migrating_park_and_resume);
  B("resume-needs-migrating", test_bridge_resume_needs_migrating);
  B("leaving-migrating-while-parked-kills", test_bridge_leaving_migrating_while_parked_kills);
  B("id-floor", test_bridge_id_floor);
  GC_RAW("connect", test_gc_connect);
  GC_RAW("connect-rejects-other-version", test_gc_connect_rejects_other_version);
  GC("create-and-wait-container", test_gc_create_and_wait_container);
  GC("shutdown-tolerates-not-found", test_gc_shutdown_tolerates_not_found);
  GC("wait-container-bridge-terminated", test_gc_wait_container_bridge_terminated);
  GC("notification-for-unknown-container-kills", test_gc_notification_for_unknown_container_kills);
  GC("close-container-fails-wait", test_gc_close_container_fails_wait);
  GC("oom-notification", test_gc_oom_notification);
  GC("exec-and-exit-code", test_gc_exec_and_exit_code);
  GC("exit-code-lost-on-not-found", test_gc_exit_code_lost_on_not_found);
  GC("exit-code-signaled-forms", test_gc_exit_code_signaled_forms);
  GC("wait-process-bridge-terminated", test_gc_wait_process_bridge_terminated);
  GC("signal-and-kill", test_gc_signal_and_kill);
  GC("process-serial", test_gc_process_serial);
  GC("properties", test_gc_properties);
  GC("modify-and-dump-stacks", test_gc_modify_and_dump_stacks);
  GC("port-floor", test_gc_port_floor);
  GC("open-process-with-io", test_gc_open_process_with_io);
  GC("resume-on-conn", test_gc_resume_on_conn);
  GC("reopened-process-fresh-wait", test_gc_reopened_process_fresh_wait);
  GC("exec-failure-releases-ports", test_gc_exec_failure_releases_ports);
  return g_test_run();
}
