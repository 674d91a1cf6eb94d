/* ferry.test.v1.Interop in C: the peer of the Go implementation in tests/interop. */
#include "interop-service.h"

#include <glib-unix.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ferry/error.h"

typedef Google__Protobuf__StringValue StringValue;

static void reply_string(FerryTtrpcCall *call, const char *value)
{
  StringValue out = GOOGLE__PROTOBUF__STRING_VALUE__INIT;
  out.value = (char *)value;
  ferry_ttrpc_call_reply(call, &out.base);
}

static void handle_echo(FerryTtrpcCall *call, const ProtobufCMessage *req, gpointer ud)
{
  const StringValue *in = (const StringValue *)req;
  const char *md = ferry_ttrpc_call_get_metadata(call, "x-test");
  g_autofree char *value = g_strconcat(in->value, "|md=", md != NULL ? md : "", NULL);
  reply_string(call, value);
}

static void handle_deadline(FerryTtrpcCall *call, const ProtobufCMessage *req, gpointer ud)
{
  gint64 deadline = ferry_ttrpc_call_get_deadline(call);
  if (deadline == 0) {
    reply_string(call, "none");
    return;
  }
  gint64 left_ms = (deadline - g_get_monotonic_time()) / 1000;
  g_autofree char *value = g_strdup_printf("%" G_GINT64_FORMAT, left_ms);
  reply_string(call, value);
}

static void handle_fail(FerryTtrpcCall *call, const ProtobufCMessage *req, gpointer ud)
{
  const StringValue *in = (const StringValue *)req;
  const char *colon = strchr(in->value, ':');
  gint64 code;
  g_autofree char *code_text = g_strndup(in->value, colon ? (gsize)(colon - in->value) : 0);
  if (colon == NULL || !g_ascii_string_to_signed(code_text, 10, 1, 16, &code, NULL)) {
    ferry_ttrpc_call_reply_error(call, FERRY_ERROR_INVALID_ARGUMENT,
                                 "Fail wants \"<code>:<message>\", not %s", in->value);
    return;
  }
  ferry_ttrpc_call_reply_error(call, (int)code, "%s", colon + 1);
}

/* Sleep: answer from a timer, or at once when the call is cancelled. */
typedef struct {
  FerryTtrpcCall *call;
  char *value;
  guint timer;
} Sleeper;

static void sleeper_answer(Sleeper *s)
{
  if (s->timer != 0)
    g_source_remove(s->timer);
  ferry_ttrpc_call_set_cancel_func(s->call, NULL, NULL);
  reply_string(s->call, s->value);
  g_free(s->value);
  g_free(s);
}

static gboolean on_sleep_done(gpointer p)
{
  Sleeper *s = p;
  s->timer = 0;
  sleeper_answer(s);
  return G_SOURCE_REMOVE;
}

static void on_sleep_cancelled(FerryTtrpcCall *call, gpointer p)
{
  sleeper_answer(p);
}

static void handle_sleep(FerryTtrpcCall *call, const ProtobufCMessage *req, gpointer ud)
{
  const StringValue *in = (const StringValue *)req;
  guint64 ms;
  if (!g_ascii_string_to_unsigned(in->value, 10, 0, 600000, &ms, NULL)) {
    ferry_ttrpc_call_reply_error(call, FERRY_ERROR_INVALID_ARGUMENT,
                                 "Sleep wants milliseconds (0 to 600000), not %s", in->value);
    return;
  }
  Sleeper *s = g_new0(Sleeper, 1);
  s->call = call;
  s->value = g_strdup(in->value);
  s->timer = g_timeout_add((guint)ms, on_sleep_done, s);
  ferry_ttrpc_call_set_cancel_func(call, on_sleep_cancelled, s);
}

static void handle_big(FerryTtrpcCall *call, const ProtobufCMessage *req, gpointer ud)
{
  const StringValue *in = (const StringValue *)req;
  guint64 n;
  if (!g_ascii_string_to_unsigned(in->value, 10, 0, 64u << 20, &n, NULL)) {
    ferry_ttrpc_call_reply_error(call, FERRY_ERROR_INVALID_ARGUMENT,
                                 "Big wants a byte count up to 64 MiB, not %s", in->value);
    return;
  }
  g_autofree char *value = g_malloc(n + 1);
  memset(value, 'x', n);
  value[n] = '\0';
  reply_string(call, value);
}

/* Count streams from an idle source, a few messages per turn, so that the stream is
 * really asynchronous and interleaves with other calls. */
typedef struct {
  FerryTtrpcCall *call;
  guint64 next, last;
} Counter;

static gboolean on_count_step(gpointer p)
{
  Counter *c = p;
  for (int i = 0; i < 8 && c->next <= c->last; i++, c->next++) {
    char text[32];
    g_snprintf(text, sizeof(text), "%" G_GUINT64_FORMAT, c->next);
    StringValue msg = GOOGLE__PROTOBUF__STRING_VALUE__INIT;
    msg.value = text;
    if (!ferry_ttrpc_call_send(c->call, &msg.base, NULL)) {
      g_autoptr(GError) error =
          g_error_new(FERRY_ERROR, FERRY_ERROR_CANCELLED, "Count: stream cancelled");
      ferry_ttrpc_call_finish(c->call, error);
      g_free(c);
      return G_SOURCE_REMOVE;
    }
  }
  if (c->next <= c->last)
    return G_SOURCE_CONTINUE;
  ferry_ttrpc_call_finish(c->call, NULL);
  g_free(c);
  return G_SOURCE_REMOVE;
}

static void handle_count(FerryTtrpcCall *call, const ProtobufCMessage *req, gpointer ud)
{
  const StringValue *in = (const StringValue *)req;
  guint64 n;
  if (!g_ascii_string_to_unsigned(in->value, 10, 0, 1000000, &n, NULL)) {
    g_autoptr(GError) error = g_error_new(FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                                          "Count wants 0 to 1000000, not %s", in->value);
    ferry_ttrpc_call_finish(call, error);
    return;
  }
  Counter *c = g_new0(Counter, 1);
  c->call = call;
  c->next = 1;
  c->last = n;
  g_idle_add(on_count_step, c);
}

static const FerryTtrpcMethodImpl interop_methods[] = {
  { "Echo", handle_echo, FERRY_TTRPC_UNARY },
  { "Deadline", handle_deadline, FERRY_TTRPC_UNARY },
  { "Fail", handle_fail, FERRY_TTRPC_UNARY },
  { "Sleep", handle_sleep, FERRY_TTRPC_UNARY },
  { "Big", handle_big, FERRY_TTRPC_UNARY },
  { "Count", handle_count, FERRY_TTRPC_SERVER_STREAMING },
  { NULL, NULL, 0 },
};

gboolean ferry_test_interop_register(FerryTtrpcServer *server, GError **error)
{
  return ferry_ttrpc_server_register(server, NULL, &ferry__test__v1__interop__descriptor,
                                     interop_methods, NULL, error);
}

static gboolean on_quit_signal(gpointer loop)
{
  g_main_loop_quit(loop);
  return G_SOURCE_CONTINUE; /* removed by ferry_test_interop_serve(), which holds the ids */
}

int ferry_test_interop_serve(const char *socket_path, const char *who)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(FerryTtrpcServer) server = ferry_ttrpc_server_new();
  if (!ferry_test_interop_register(server, &error) ||
      !ferry_ttrpc_server_listen_unix(server, socket_path, &error)) {
    fprintf(stderr, "%s: %s\n", who, error->message);
    return 1;
  }
  g_autoptr(GMainLoop) loop = g_main_loop_new(NULL, FALSE);
  guint term_id = g_unix_signal_add(SIGTERM, on_quit_signal, loop);
  guint int_id = g_unix_signal_add(SIGINT, on_quit_signal, loop);
  printf("ready\n");
  fflush(stdout);
  g_main_loop_run(loop);
  g_clear_handle_id(&term_id, g_source_remove);
  g_clear_handle_id(&int_id, g_source_remove);
  ferry_ttrpc_server_shutdown(server);
  return 0;
}

const char *ferry_test_socket_arg(int argc, char **argv, int skip)
{
  if (argc != skip + 2)
    return NULL;
  const char *flag = argv[skip];
  if (!g_str_equal(flag, "-socket") && !g_str_equal(flag, "--socket"))
    return NULL;
  return argv[skip + 1];
}
