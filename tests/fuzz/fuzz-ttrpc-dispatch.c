/*
 * Fuzz target: the ttrpc server's request dispatch (lib/ttrpc/server.c) with a real
 * registered service -- ferry.test.v1.Interop's descriptor, with handlers here that
 * answer at once (Echo, Deadline, Fail, Big), stream (Count) or hold the call until it
 * is cancelled or the input ends (Sleep) -- reading whatever a client sends through a
 * socketpair: requests with any envelope, payload, metadata and timeout_nano (up to
 * INT64_MAX), data and unknown frames, garbage. The first byte chooses the feed size
 * and whether the client hangs up before the server is freed.
 *
 * Checked besides memory safety: every call the service got is answered exactly once
 * (held ones by the end), and the server frees cleanly with calls in every state.
 */
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "ferry/error.h"
#include "ferry/fd.h"
#include "ferry/ttrpc.h"
#include "fuzz-loop.h"
#include "google/protobuf/wrappers.pb-c.h"
#include "test/interop.pb-c.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef Google__Protobuf__StringValue StringValue;

typedef struct {
  guint calls;   /* handler invocations */
  guint answers; /* answered by us */
  GPtrArray *held;
} Run;

static void reply_string(Run *r, FerryTtrpcCall *call, const char *value)
{
  StringValue v = GOOGLE__PROTOBUF__STRING_VALUE__INIT;
  v.value = (char *)value;
  r->answers++;
  ferry_ttrpc_call_reply(call, &v.base);
}

static const char *value_of(const ProtobufCMessage *req)
{
  const StringValue *in = (const StringValue *)req;
  return in != NULL && in->value != NULL ? in->value : "";
}

static void handle_echo(FerryTtrpcCall *call, const ProtobufCMessage *req, gpointer ud)
{
  Run *r = ud;
  r->calls++;
  gsize n = 0;
  ferry_ttrpc_call_get_metadata_all(call, &n);
  (void)ferry_ttrpc_call_get_metadata(call, "x-test");
  reply_string(r, call, value_of(req));
}

static void handle_deadline(FerryTtrpcCall *call, const ProtobufCMessage *req, gpointer ud)
{
  Run *r = ud;
  r->calls++;
  g_autofree char *s = g_strdup_printf("%" G_GINT64_FORMAT, ferry_ttrpc_call_get_deadline(call));
  reply_string(r, call, s);
}

static void handle_fail(FerryTtrpcCall *call, const ProtobufCMessage *req, gpointer ud)
{
  Run *r = ud;
  r->calls++;
  r->answers++;
  ferry_ttrpc_call_reply_error(call, (int)(strlen(value_of(req)) % 17), "fail: %s", value_of(req));
}

static void handle_big(FerryTtrpcCall *call, const ProtobufCMessage *req, gpointer ud)
{
  Run *r = ud;
  r->calls++;
  gsize len = MIN(strlen(value_of(req)) * 4096, (gsize)FERRY_TTRPC_MAX_DATA + 64);
  g_autofree char *s = g_strnfill(len, 'b');
  reply_string(r, call, s); /* over a frame: answered RESOURCE_EXHAUSTED instead */
}

static void handle_count(FerryTtrpcCall *call, const ProtobufCMessage *req, gpointer ud)
{
  Run *r = ud;
  r->calls++;
  for (int i = 0; i < 3; i++) {
    StringValue v = GOOGLE__PROTOBUF__STRING_VALUE__INIT;
    v.value = (char *)value_of(req);
    if (!ferry_ttrpc_call_send(call, &v.base, NULL))
      break;
  }
  r->answers++;
  ferry_ttrpc_call_finish(call, NULL);
}

static void on_held_cancelled(FerryTtrpcCall *call, gpointer ud)
{
  Run *r = ud;
  if (!g_ptr_array_remove(r->held, call))
    __builtin_trap(); /* cancelled twice, or a call we never held */
  r->answers++;
  ferry_ttrpc_call_reply_error(call, FERRY_ERROR_CANCELLED, "cancelled");
}

static void handle_sleep(FerryTtrpcCall *call, const ProtobufCMessage *req, gpointer ud)
{
  Run *r = ud;
  r->calls++;
  g_ptr_array_add(r->held, call);
  ferry_ttrpc_call_set_cancel_func(call, on_held_cancelled, r);
}

static const FerryTtrpcMethodImpl methods[] = {
  { "Echo", handle_echo, FERRY_TTRPC_UNARY },
  { "Deadline", handle_deadline, FERRY_TTRPC_UNARY },
  { "Fail", handle_fail, FERRY_TTRPC_UNARY },
  { "Sleep", handle_sleep, FERRY_TTRPC_UNARY },
  { "Big", handle_big, FERRY_TTRPC_UNARY },
  { "Count", handle_count, FERRY_TTRPC_SERVER_STREAMING },
  { NULL, NULL, 0 },
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  if (size == 0)
    return 0;
  gsize chunk = (gsize)(data[0] & 0x7f) * 37 + 1;
  gboolean hang_up = (data[0] & 0x80) != 0;
  data++;
  size--;

  Run r = { .held = g_ptr_array_new() };
  FerryTtrpcServer *server = ferry_ttrpc_server_new();
  /* Under its proto name and a second one, as the shim registers Task v2 and v3. */
  if (!ferry_ttrpc_server_register(server, NULL, &ferry__test__v1__interop__descriptor, methods, &r,
                                   NULL) ||
      !ferry_ttrpc_server_register(server, "Interop", &ferry__test__v1__interop__descriptor,
                                   methods, &r, NULL))
    __builtin_trap();
  int sp[2];
  if (!ferry_socketpair(sp, FALSE, NULL) || !ferry_ttrpc_server_add_connection(server, sp[0], NULL))
    __builtin_trap();
  int client = sp[1];
  fuzz_loop_feed(client, data, size, chunk);
  if (hang_up) {
    close(client);
    client = -1;
    fuzz_loop_settle();
  }
  /* The input is over: answer what is still held, then free with nothing pending. */
  while (r.held->len > 0) {
    FerryTtrpcCall *call = g_ptr_array_steal_index(r.held, 0);
    r.answers++;
    ferry_ttrpc_call_reply_error(call, FERRY_ERROR_ABORTED, "input over");
  }
  fuzz_loop_settle();
  if (r.answers != r.calls)
    __builtin_trap(); /* a call answered twice or never */
  ferry_ttrpc_server_free(server);
  fuzz_loop_settle();
  g_ptr_array_unref(r.held);
  if (client >= 0)
    close(client);
  return 0;
}
