/* The host bridge core: ids, the pending-RPC table, routing, kill, migrating mode. */
#include <string.h>
#include <unistd.h>

#include "ferry/bridge-host.h"
#include "ferry/error.h"
#include "ferry/json.h"
#include "ferry/source.h"
#include "ferry/stream.h"

/* What the host sends may be as large as the guest accepts. */
#define HOST_SEND_MAX FERRY_BRIDGE_GUEST_MAX_MESSAGE

typedef struct {
  FerryBridge *bridge;
  guint64 id;
  FerryBridgeRpc rpc;
  FerryBridgeResponseFunc done; /* NULL once cancelled: the answer is swallowed */
  gpointer user_data;
  GSource *timeout_source;
  GError *early_error; /* failed before it was sent */
  GSource *early_source;
} PendingRpc;

struct FerryBridge {
  gint refs;
  GMainContext *context; /* thread-default at creation: streams, timers, idles */
  FerryStream *stream;   /* NULL while parked or dead */
  FerryBridgeParser *parser;
  guint64 next_id;
  guint64 foreign_below; /* ids under this were issued by other hosts (seeded floor) */
  GHashTable *pending;   /* id (guint64*) -> PendingRpc */
  gboolean migrating;
  GError *dead; /* set once killed: what every later RPC fails with */
  FerryBridgeNotifyFunc notify_func;
  gpointer notify_data;
  FerryBridgeDeadFunc dead_func;
  gpointer dead_data;
};

static void pending_free(gpointer p)
{
  PendingRpc *r = p;
  ferry_source_clear(&r->timeout_source);
  ferry_source_clear(&r->early_source);
  g_clear_error(&r->early_error);
  g_free(r);
}

static const FerryStreamHandlers bridge_stream_handlers;

static gboolean attach_stream(FerryBridge *b, int fd, GError **error)
{
  /* A resumed connection too watches the bridge's context, whatever is current now. */
  g_main_context_push_thread_default(b->context);
  b->stream = ferry_stream_new(fd, "bridge", &bridge_stream_handlers, b, error);
  g_main_context_pop_thread_default(b->context);
  ferry_bridge_parser_reset(b->parser);
  return b->stream != NULL;
}

FerryBridge *ferry_bridge_new(int fd, GError **error)
{
  FerryBridge *b = g_new0(FerryBridge, 1);
  b->refs = 1;
  b->parser = ferry_bridge_parser_new(FERRY_BRIDGE_HOST_MAX_MESSAGE);
  b->pending = g_hash_table_new_full(g_int64_hash, g_int64_equal, NULL, pending_free);
  b->context = g_main_context_ref_thread_default();
  if (!attach_stream(b, fd, error)) {
    ferry_bridge_parser_free(b->parser);
    g_hash_table_unref(b->pending);
    g_main_context_unref(b->context);
    g_free(b);
    return NULL;
  }
  return b;
}

FerryBridge *ferry_bridge_ref(FerryBridge *b)
{
  b->refs++;
  return b;
}

void ferry_bridge_unref(FerryBridge *b)
{
  if (b == NULL || --b->refs > 0)
    return;
  b->refs = 1; /* alive during teardown: kill takes and drops references */
  b->dead_func = NULL;
  b->notify_func = NULL;
  g_autoptr(GError) cause =
      g_error_new(FERRY_ERROR, FERRY_ERROR_CANCELLED, "bridge released by its owner");
  ferry_bridge_kill(b, cause);
  g_hash_table_unref(b->pending);
  ferry_bridge_parser_free(b->parser);
  g_clear_error(&b->dead);
  g_main_context_unref(b->context);
  g_free(b);
}

void ferry_bridge_set_notify_func(FerryBridge *b, FerryBridgeNotifyFunc func, gpointer user_data)
{
  b->notify_func = func;
  b->notify_data = user_data;
}

void ferry_bridge_set_dead_func(FerryBridge *b, FerryBridgeDeadFunc func, gpointer user_data)
{
  b->dead_func = func;
  b->dead_data = user_data;
}

gboolean ferry_bridge_is_dead(FerryBridge *b)
{
  return b->dead != NULL;
}

const GError *ferry_bridge_get_error(FerryBridge *b)
{
  return b->dead;
}

guint ferry_bridge_pending_count(FerryBridge *b)
{
  return g_hash_table_size(b->pending);
}

/* Take a pending RPC out of the table; the caller completes and frees it. */
static PendingRpc *take_pending(FerryBridge *b, guint64 id)
{
  gpointer key, value;
  if (!g_hash_table_steal_extended(b->pending, &id, &key, &value))
    return NULL;
  return value;
}

static void complete(FerryBridge *b, PendingRpc *r, json_t *response, const GError *error)
{
  FerryBridgeResponseFunc done = r->done;
  gpointer ud = r->user_data;
  pending_free(r);
  if (done != NULL)
    done(b, response, error, ud);
}

static gint compare_ids(gconstpointer a, gconstpointer b)
{
  guint64 x = *(const guint64 *)a, y = *(const guint64 *)b;
  return x < y ? -1 : x > y;
}

void ferry_bridge_kill(FerryBridge *b, const GError *cause)
{
  if (b->dead != NULL)
    return;
  ferry_bridge_ref(b);
  b->dead = g_error_new(FERRY_BRIDGE_CLOSED_ERROR, FERRY_BRIDGE_CLOSED, "bridge closed: %s",
                        cause != NULL ? cause->message : "no reason given");
  if (b->stream != NULL) {
    FerryStream *s = g_steal_pointer(&b->stream);
    ferry_stream_close(s, NULL);
    ferry_stream_unref(s);
  }
  /* Fail the pending calls in the order they were made. */
  GList *ids = g_hash_table_get_keys(b->pending);
  ids = g_list_sort(ids, compare_ids);
  GArray *order = g_array_new(FALSE, FALSE, sizeof(guint64));
  for (GList *l = ids; l != NULL; l = l->next)
    g_array_append_val(order, *(guint64 *)l->data);
  g_list_free(ids);
  for (guint i = 0; i < order->len; i++) {
    PendingRpc *r = take_pending(b, g_array_index(order, guint64, i));
    if (r != NULL)
      complete(b, r, NULL, b->dead);
  }
  g_array_unref(order);
  if (b->dead_func != NULL)
    b->dead_func(b, cause != NULL ? cause : b->dead, b->dead_data);
  ferry_bridge_unref(b);
}

static void kill_with(FerryBridge *b, int code, const char *fmt, ...) G_GNUC_PRINTF(3, 4);

static void kill_with(FerryBridge *b, int code, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  g_autofree char *msg = g_strdup_vprintf(fmt, ap);
  va_end(ap);
  g_autoptr(GError) cause = g_error_new_literal(FERRY_ERROR, code, msg);
  ferry_bridge_kill(b, cause);
}

/* ---------------------------------------------------------------- input -- */

static void handle_response(FerryBridge *b, const FerryBridgeHeader *h, json_t *body)
{
  PendingRpc *r = g_hash_table_lookup(b->pending, &h->id);
  if (r == NULL && h->id < b->foreign_below) {
    /* Another host's request (a process reopened after a migration is waited on by
     * every host it passed through): its answer is an expected leftover. */
    return;
  }
  if (r == NULL) {
    kill_with(b, FERRY_ERROR_INVALID_ARGUMENT,
              "guest answered id %" G_GUINT64_FORMAT " (type 0x%08x), which has no pending call",
              h->id, h->type);
    return;
  }
  guint32 want = ferry_bridge_response_type(ferry_bridge_request_type(r->rpc));
  if (h->type != want) {
    kill_with(b, FERRY_ERROR_INVALID_ARGUMENT,
              "guest answered id %" G_GUINT64_FORMAT " with type 0x%08x, expected 0x%08x", h->id,
              h->type, want);
    return;
  }
  r = take_pending(b, h->id);
  g_autoptr(GError) error = NULL;
  const char *name = ferry_bridge_message_name(h->type);
  if (!ferry_bridge_response_check(body, name, &error) && error->domain != FERRY_BRIDGE_ERROR) {
    /* A body without a usable Result: the guest broke the protocol. */
    complete(b, r, NULL, error);
    kill_with(b, FERRY_ERROR_INVALID_ARGUMENT, "%s", error->message);
    return;
  }
  complete(b, r, error == NULL ? body : NULL, error);
}

static void handle_frame(FerryBridge *b, const FerryBridgeHeader *h, const guint8 *data)
{
  guint32 kind = h->type & FERRY_BRIDGE_TYPE_MASK;
  if (kind != FERRY_BRIDGE_TYPE_RESPONSE && h->type != FERRY_BRIDGE_NOTIFY_CONTAINER) {
    kill_with(b, FERRY_ERROR_INVALID_ARGUMENT, "guest sent a message of unexpected type 0x%08x",
              h->type);
    return;
  }
  g_autoptr(GError) error = NULL;
  g_autoptr(json_t) body =
      ferry_bridge_body_parse(data, h->size - FERRY_BRIDGE_HEADER_SIZE, &error);
  if (body == NULL) {
    kill_with(b, FERRY_ERROR_INVALID_ARGUMENT, "guest message 0x%08x id %" G_GUINT64_FORMAT ": %s",
              h->type, h->id, error->message);
    return;
  }
  if (kind == FERRY_BRIDGE_TYPE_RESPONSE) {
    handle_response(b, h, body);
    return;
  }
  if (b->notify_func == NULL)
    return;
  if (!b->notify_func(b, body, b->notify_data, &error)) {
    g_prefix_error(&error, "container notification: ");
    ferry_bridge_kill(b, error);
  }
}

static void on_stream_data(FerryStream *s, const guint8 *data, gsize len, gpointer ud)
{
  FerryBridge *b = ud;
  ferry_bridge_ref(b);
  ferry_bridge_parser_feed(b->parser, data, len);
  while (b->stream == s && b->dead == NULL) {
    FerryBridgeHeader h;
    const guint8 *body;
    g_autoptr(GError) error = NULL;
    FerryBridgeParseResult r = ferry_bridge_parser_next(b->parser, &h, &body, &error);
    if (r == FERRY_BRIDGE_PARSE_NEED_MORE)
      break;
    if (r == FERRY_BRIDGE_PARSE_ERROR) {
      ferry_bridge_kill(b, error);
      break;
    }
    handle_frame(b, &h, body);
  }
  ferry_bridge_unref(b);
}

static void on_stream_closed(FerryStream *s, const GError *error, gpointer ud)
{
  FerryBridge *b = ud;
  if (b->stream != s)
    return; /* an old connection, already swapped out */
  if (b->migrating) {
    /* Park: keep every pending call for the next connection. */
    b->stream = NULL;
    ferry_stream_unref(s);
    return;
  }
  ferry_bridge_kill(b, error);
}

static const FerryStreamHandlers bridge_stream_handlers = {
  .data = on_stream_data,
  .closed = on_stream_closed,
};

/* --------------------------------------------------------------- output -- */

static gboolean on_timeout(gpointer p)
{
  PendingRpc *r = p;
  ferry_source_clear(&r->timeout_source);
  kill_with(r->bridge, FERRY_ERROR_DEADLINE_EXCEEDED,
            "bridge RPC %s (id %" G_GUINT64_FORMAT ") got no answer in time",
            ferry_bridge_message_name(ferry_bridge_request_type(r->rpc)), r->id);
  return G_SOURCE_REMOVE;
}

static gboolean on_early_failure(gpointer p)
{
  PendingRpc *r = p;
  ferry_source_clear(&r->early_source);
  FerryBridge *b = r->bridge;
  r = take_pending(b, r->id);
  GError *error = g_steal_pointer(&r->early_error);
  ferry_bridge_ref(b);
  complete(b, r, NULL, error);
  g_error_free(error);
  ferry_bridge_unref(b);
  return G_SOURCE_REMOVE;
}

static gboolean send_message(FerryBridge *b, guint32 type, guint64 id, json_t *body, GError **error)
{
  if (b->dead != NULL) {
    g_propagate_error(error, g_error_copy(b->dead));
    return FALSE;
  }
  if (b->stream == NULL) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE,
                "bridge connection lost while migrating; waiting for a new one");
    return FALSE;
  }
  g_autoptr(GBytes) msg = ferry_bridge_message_encode(type, id, body, TRUE, HOST_SEND_MAX, error);
  if (msg == NULL)
    return FALSE;
  gsize len;
  const guint8 *p = g_bytes_get_data(msg, &len);
  return ferry_stream_write(b->stream, p, len, error);
}

guint64 ferry_bridge_rpc(FerryBridge *b, FerryBridgeRpc rpc, json_t *body, guint timeout_ms,
                         FerryBridgeResponseFunc done, gpointer user_data)
{
  PendingRpc *r = g_new0(PendingRpc, 1);
  r->bridge = b;
  r->id = b->next_id++;
  r->rpc = rpc;
  r->done = done;
  r->user_data = user_data;
  g_autoptr(GError) error = NULL;
  /* Registered before it is sent: an answer can only come after. A call that cannot
   * be sent stays registered until its failure is reported from the main loop, so that
   * kill, cancel and unref treat it like any other. */
  g_hash_table_insert(b->pending, &r->id, r);
  if (!send_message(b, ferry_bridge_request_type(rpc), r->id, body, &error)) {
    r->early_error = g_steal_pointer(&error);
    r->early_source = ferry_idle_new(b->context, on_early_failure, r);
    return r->id;
  }
  if (timeout_ms > 0)
    r->timeout_source = ferry_timeout_new(b->context, timeout_ms, on_timeout, r);
  return r->id;
}

gboolean ferry_bridge_rpc_cancel(FerryBridge *b, guint64 id)
{
  PendingRpc *r = g_hash_table_lookup(b->pending, &id);
  if (r == NULL || r->done == NULL)
    return FALSE;
  r->done = NULL;
  return TRUE;
}

/* ------------------------------------------------------------ migration -- */

void ferry_bridge_set_migrating(FerryBridge *b, gboolean migrating)
{
  b->migrating = migrating;
  if (!migrating && b->stream == NULL && b->dead == NULL)
    kill_with(b, FERRY_ERROR_UNAVAILABLE, "connection lost while migrating and not resumed");
}

gboolean ferry_bridge_is_migrating(FerryBridge *b)
{
  return b->migrating;
}

gboolean ferry_bridge_is_parked(FerryBridge *b)
{
  return b->dead == NULL && b->stream == NULL;
}

gboolean ferry_bridge_resume_on_conn(FerryBridge *b, int fd, GError **error)
{
  if (b->dead != NULL || !b->migrating) {
    close(fd);
    if (b->dead != NULL)
      g_propagate_error(error, g_error_copy(b->dead));
    else
      g_set_error(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION,
                  "bridge: resume on a new connection needs migrating mode");
    return FALSE;
  }
  if (b->stream != NULL) {
    FerryStream *old = g_steal_pointer(&b->stream);
    ferry_stream_close(old, NULL);
    ferry_stream_unref(old);
  }
  return attach_stream(b, fd, error);
}

guint64 ferry_bridge_next_id(FerryBridge *b)
{
  return b->next_id;
}

void ferry_bridge_seed_next_id(FerryBridge *b, guint64 next_id)
{
  if (next_id > b->next_id)
    b->next_id = next_id;
  if (next_id > b->foreign_below)
    b->foreign_below = next_id;
}

gboolean ferry_bridge_preregister_rpc(FerryBridge *b, guint64 id, FerryBridgeRpc rpc,
                                      FerryBridgeResponseFunc done, gpointer user_data,
                                      GError **error)
{
  if (b->dead != NULL) {
    g_propagate_error(error, g_error_copy(b->dead));
    return FALSE;
  }
  if (g_hash_table_contains(b->pending, &id)) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_ALREADY_EXISTS,
                "bridge: id %" G_GUINT64_FORMAT " is already pending", id);
    return FALSE;
  }
  PendingRpc *r = g_new0(PendingRpc, 1);
  r->bridge = b;
  r->id = id;
  r->rpc = rpc;
  r->done = done;
  r->user_data = user_data;
  g_hash_table_insert(b->pending, &r->id, r);
  ferry_bridge_seed_next_id(b, id + 1);
  return TRUE;
}
