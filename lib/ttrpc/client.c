/* ttrpc client: unary and server-streaming calls, deadlines, pipelining. */
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "conn.h"
#include "ferry/error.h"
#include "ferry/fd.h"
#include "ferry/source.h"
#include "ttrpc/envelope.pb-c.h"

typedef struct {
  FerryTtrpcClient *client;
  guint32 sid;
  const ProtobufCMessageDescriptor *desc;
  FerryTtrpcStreamFunc on_message; /* NULL for unary calls */
  FerryTtrpcReplyFunc done;
  gpointer user_data;
  GSource *timeout_source;
  GError *early_error; /* a call that failed before it was sent */
  GSource *early_source;
} ClientCall;

struct FerryTtrpcClient {
  gint refs;
  GMainContext *context; /* thread-default at creation: the stream and every timer */
  TtrpcConn *conn;
  guint32 next_sid;
  GHashTable *calls; /* stream id -> ClientCall */
  FerryTtrpcClosedFunc closed_func;
  gpointer closed_data;
};

static FerryTtrpcClient *client_ref(FerryTtrpcClient *client)
{
  client->refs++;
  return client;
}

static void client_unref(FerryTtrpcClient *client)
{
  if (--client->refs > 0)
    return;
  ttrpc_conn_unref(client->conn);
  g_hash_table_unref(client->calls);
  g_main_context_unref(client->context);
  g_free(client);
}

static void client_call_free(gpointer p)
{
  ClientCall *call = p;
  ferry_source_clear(&call->timeout_source);
  ferry_source_clear(&call->early_source);
  g_clear_error(&call->early_error);
  g_free(call);
}

/* Remove the call from the table and hand it to the caller (who frees it). */
static ClientCall *take_call(FerryTtrpcClient *client, guint32 sid)
{
  gpointer key, value;
  if (!g_hash_table_steal_extended(client->calls, GUINT_TO_POINTER(sid), &key, &value))
    return NULL;
  return value;
}

/* Finish a call: run its done callback once and free it. */
static void complete(FerryTtrpcClient *client, ClientCall *call, const ProtobufCMessage *response,
                     const GError *error)
{
  FerryTtrpcReplyFunc done = call->done;
  gpointer ud = call->user_data;
  client_call_free(call);
  done(client, response, error, ud);
}

static void fail_call(FerryTtrpcClient *client, guint32 sid, int code, const char *fmt, ...)
    G_GNUC_PRINTF(4, 5);

static void fail_call(FerryTtrpcClient *client, guint32 sid, int code, const char *fmt, ...)
{
  ClientCall *call = take_call(client, sid);
  if (call == NULL)
    return;
  va_list ap;
  va_start(ap, fmt);
  g_autofree char *msg = g_strdup_vprintf(fmt, ap);
  va_end(ap);
  g_autoptr(GError) error = g_error_new_literal(FERRY_ERROR, code, msg);
  complete(client, call, NULL, error);
}

/* ---------------------------------------------------------------- input -- */

static void on_response(FerryTtrpcClient *client, const FerryTtrpcHeader *h, const guint8 *data)
{
  ClientCall *call = take_call(client, h->stream_id);
  if (call == NULL)
    return; /* a late answer to a call that timed out or was cancelled */
  Ttrpc__Response *resp = ttrpc__response__unpack(NULL, h->length, data);
  if (resp == NULL) {
    g_autoptr(GError) error = g_error_new(FERRY_ERROR, FERRY_ERROR_INTERNAL,
                                          "ttrpc: undecodable Response on stream %u", h->stream_id);
    complete(client, call, NULL, error);
    return;
  }
  if (resp->status != NULL && resp->status->code != 0) {
    g_autoptr(GError) error =
        g_error_new_literal(FERRY_ERROR, resp->status->code, resp->status->message);
    ttrpc__response__free_unpacked(resp, NULL);
    complete(client, call, NULL, error);
    return;
  }
  if (call->on_message != NULL) {
    /* A stream ended by a Response with an OK status. */
    ttrpc__response__free_unpacked(resp, NULL);
    complete(client, call, NULL, NULL);
    return;
  }
  ProtobufCMessage *msg =
      protobuf_c_message_unpack(call->desc, NULL, resp->payload.len, resp->payload.data);
  ttrpc__response__free_unpacked(resp, NULL);
  if (msg == NULL) {
    g_autoptr(GError) error = g_error_new(FERRY_ERROR, FERRY_ERROR_INTERNAL,
                                          "ttrpc: undecodable %s in the answer on stream %u",
                                          call->desc->name, h->stream_id);
    complete(client, call, NULL, error);
    return;
  }
  complete(client, call, msg, NULL);
  protobuf_c_message_free_unpacked(msg, NULL);
}

static void on_data(FerryTtrpcClient *client, const FerryTtrpcHeader *h, const guint8 *data)
{
  ClientCall *call = g_hash_table_lookup(client->calls, GUINT_TO_POINTER(h->stream_id));
  if (call == NULL || call->on_message == NULL)
    return;
  if (!(h->flags & FERRY_TTRPC_FLAG_NO_DATA)) {
    ProtobufCMessage *msg = protobuf_c_message_unpack(call->desc, NULL, h->length, data);
    if (msg == NULL) {
      fail_call(client, h->stream_id, FERRY_ERROR_INTERNAL, "ttrpc: undecodable %s on stream %u",
                call->desc->name, h->stream_id);
      return;
    }
    call->on_message(client, msg, call->user_data);
    protobuf_c_message_free_unpacked(msg, NULL);
  }
  if (h->flags & FERRY_TTRPC_FLAG_REMOTE_CLOSED) {
    /* The callback may have cancelled the call; look it up again. */
    ClientCall *still = take_call(client, h->stream_id);
    if (still != NULL)
      complete(client, still, NULL, NULL);
  }
}

static void on_frame(TtrpcConn *conn, const FerryTtrpcHeader *h, const guint8 *data, gpointer ud)
{
  FerryTtrpcClient *client = ud;
  client_ref(client);
  if (h->type == FERRY_TTRPC_TYPE_RESPONSE)
    on_response(client, h, data);
  else if (h->type == FERRY_TTRPC_TYPE_DATA)
    on_data(client, h, data);
  /* A Request from the server (server-initiated streams) is not part of the protocol
   * yet; unknown types are ignored. */
  client_unref(client);
}

static void on_oversize(TtrpcConn *conn, const FerryTtrpcHeader *h, gpointer ud)
{
  fail_call(ud, h->stream_id, FERRY_ERROR_RESOURCE_EXHAUSTED,
            "message length %u exceed maximum message size of %u", h->length, FERRY_TTRPC_MAX_DATA);
}

static gint compare_sid(gconstpointer a, gconstpointer b)
{
  guint32 x = GPOINTER_TO_UINT(a), y = GPOINTER_TO_UINT(b);
  return x < y ? -1 : x > y;
}

static void on_closed(TtrpcConn *conn, const GError *error, gpointer ud)
{
  FerryTtrpcClient *client = ud;
  client_ref(client);
  GList *sids = g_hash_table_get_keys(client->calls);
  sids = g_list_sort(sids, compare_sid);
  for (GList *l = sids; l != NULL; l = l->next) {
    guint32 sid = GPOINTER_TO_UINT(l->data);
    if (error != NULL)
      fail_call(client, sid, FERRY_ERROR_UNAVAILABLE, "connection closed: %s", error->message);
    else
      fail_call(client, sid, FERRY_ERROR_UNAVAILABLE, "connection closed");
  }
  g_list_free(sids);
  if (client->closed_func != NULL)
    client->closed_func(client, error, client->closed_data);
  client_unref(client);
}

static const TtrpcConnHandlers client_conn_handlers = {
  .frame = on_frame,
  .oversize = on_oversize,
  .closed = on_closed,
};

/* --------------------------------------------------------------- create -- */

FerryTtrpcClient *ferry_ttrpc_client_new(int fd, GError **error)
{
  FerryTtrpcClient *client = g_new0(FerryTtrpcClient, 1);
  client->refs = 1;
  client->next_sid = 1;
  client->calls = g_hash_table_new_full(NULL, NULL, NULL, client_call_free);
  client->conn = ttrpc_conn_new(fd, &client_conn_handlers, client, error);
  if (client->conn == NULL) {
    g_hash_table_unref(client->calls);
    g_free(client);
    return NULL;
  }
  client->context = g_main_context_ref_thread_default();
  return client;
}

FerryTtrpcClient *ferry_ttrpc_client_connect_unix(const char *address, GError **error)
{
  const char *path = g_str_has_prefix(address, "unix://") ? address + 7 : address;
  int fd = ferry_unix_connect(path, error);
  return fd >= 0 ? ferry_ttrpc_client_new(fd, error) : NULL;
}

/* ---------------------------------------------------------------- calls -- */

static gboolean on_call_timeout(gpointer p)
{
  ClientCall *call = p;
  ferry_source_clear(&call->timeout_source);
  fail_call(call->client, call->sid, FERRY_ERROR_DEADLINE_EXCEEDED, "context deadline exceeded");
  return G_SOURCE_REMOVE;
}

static gboolean on_early_failure(gpointer p)
{
  ClientCall *call = p;
  ferry_source_clear(&call->early_source);
  FerryTtrpcClient *client = call->client;
  ClientCall *taken = take_call(client, call->sid);
  g_assert(taken == call);
  GError *error = g_steal_pointer(&call->early_error);
  client_ref(client);
  complete(client, call, NULL, error);
  g_error_free(error);
  client_unref(client);
  return G_SOURCE_REMOVE;
}

static guint32 start_call(FerryTtrpcClient *client, const char *service, const char *method,
                          const ProtobufCMessage *request, const ProtobufCMessageDescriptor *desc,
                          const FerryTtrpcCallOptions *options, FerryTtrpcStreamFunc on_message,
                          FerryTtrpcReplyFunc done, gpointer user_data)
{
  ClientCall *call = g_new0(ClientCall, 1);
  call->client = client;
  call->sid = client->next_sid;
  /* Ids are odd and never reused on a connection; 2^31 calls exhaust it. */
  client->next_sid += 2;
  call->desc = desc;
  call->on_message = on_message;
  call->done = done;
  call->user_data = user_data;
  g_hash_table_insert(client->calls, GUINT_TO_POINTER(call->sid), call);

  g_autoptr(GError) error = NULL;
  if (call->sid > G_MAXINT32) {
    g_set_error(&error, FERRY_ERROR, FERRY_ERROR_RESOURCE_EXHAUSTED,
                "ttrpc: stream ids exhausted on this connection");
  } else {
    gsize payload_len = request != NULL ? protobuf_c_message_get_packed_size(request) : 0;
    if (payload_len > FERRY_TTRPC_MAX_DATA) {
      g_set_error(&error, FERRY_ERROR, FERRY_ERROR_RESOURCE_EXHAUSTED,
                  "message length %" G_GSIZE_FORMAT " exceed maximum message size of %u",
                  payload_len, FERRY_TTRPC_MAX_DATA);
    } else {
      g_autofree guint8 *payload = request != NULL ? ttrpc_pack(request, &payload_len) : NULL;
      Ttrpc__Request req = TTRPC__REQUEST__INIT;
      req.service = (char *)service;
      req.method = (char *)method;
      req.payload.data = payload;
      req.payload.len = payload_len;
      gsize n_md = options != NULL ? options->n_metadata : 0;
      g_autofree Ttrpc__KeyValue *kvs = g_new0(Ttrpc__KeyValue, n_md + 1);
      g_autofree Ttrpc__KeyValue **kvp = g_new0(Ttrpc__KeyValue *, n_md + 1);
      for (gsize i = 0; i < n_md; i++) {
        ttrpc__key_value__init(&kvs[i]);
        kvs[i].key = (char *)options->metadata[i].key;
        kvs[i].value = (char *)options->metadata[i].value;
        kvp[i] = &kvs[i];
      }
      req.n_metadata = n_md;
      req.metadata = kvp;
      if (options != NULL && options->timeout_ns > 0)
        req.timeout_nano = options->timeout_ns;
      guint8 flags = on_message != NULL ? FERRY_TTRPC_FLAG_REMOTE_CLOSED : 0;
      ttrpc_conn_send_message(client->conn, call->sid, FERRY_TTRPC_TYPE_REQUEST, flags, &req.base,
                              &error);
    }
  }
  if (error != NULL) {
    call->early_error = g_steal_pointer(&error);
    call->early_source = ferry_idle_new(client->context, on_early_failure, call);
    return call->sid;
  }
  if (options != NULL && options->timeout_ns > 0)
    call->timeout_source = ferry_timeout_new(client->context, ttrpc_timeout_ms(options->timeout_ns),
                                             on_call_timeout, call);
  return call->sid;
}

guint32 ferry_ttrpc_client_call(FerryTtrpcClient *client, const char *service, const char *method,
                                const ProtobufCMessage *request,
                                const ProtobufCMessageDescriptor *response_desc,
                                const FerryTtrpcCallOptions *options, FerryTtrpcReplyFunc done,
                                gpointer user_data)
{
  return start_call(client, service, method, request, response_desc, options, NULL, done,
                    user_data);
}

guint32 ferry_ttrpc_client_stream(FerryTtrpcClient *client, const char *service, const char *method,
                                  const ProtobufCMessage *request,
                                  const ProtobufCMessageDescriptor *message_desc,
                                  const FerryTtrpcCallOptions *options,
                                  FerryTtrpcStreamFunc on_message, FerryTtrpcReplyFunc done,
                                  gpointer user_data)
{
  g_return_val_if_fail(on_message != NULL, 0);
  return start_call(client, service, method, request, message_desc, options, on_message, done,
                    user_data);
}

gboolean ferry_ttrpc_client_cancel(FerryTtrpcClient *client, guint32 stream_id)
{
  return g_hash_table_remove(client->calls, GUINT_TO_POINTER(stream_id));
}

typedef struct {
  gboolean done;
  ProtobufCMessage *response;
  GError *error;
} SyncResult;

static void on_sync_done(FerryTtrpcClient *client, const ProtobufCMessage *response,
                         const GError *error, gpointer ud)
{
  SyncResult *r = ud;
  r->done = TRUE;
  if (error != NULL) {
    r->error = g_error_copy(error);
    return;
  }
  /* The response is the client's; keep a copy by re-encoding it. */
  gsize len;
  g_autofree guint8 *buf = ttrpc_pack(response, &len);
  r->response = protobuf_c_message_unpack(response->descriptor, NULL, len, buf);
}

ProtobufCMessage *ferry_ttrpc_client_call_sync(FerryTtrpcClient *client, const char *service,
                                               const char *method, const ProtobufCMessage *request,
                                               const ProtobufCMessageDescriptor *response_desc,
                                               const FerryTtrpcCallOptions *options, GError **error)
{
  SyncResult r = { 0 };
  client_ref(client);
  ferry_ttrpc_client_call(client, service, method, request, response_desc, options, on_sync_done,
                          &r);
  /* Everything of the client runs on its own context: iterate that one. */
  while (!r.done)
    g_main_context_iteration(client->context, TRUE);
  client_unref(client);
  if (r.error != NULL) {
    g_propagate_error(error, r.error);
    return NULL;
  }
  return r.response;
}

guint ferry_ttrpc_client_pending(FerryTtrpcClient *client)
{
  return g_hash_table_size(client->calls);
}

gboolean ferry_ttrpc_client_is_connected(FerryTtrpcClient *client)
{
  return ttrpc_conn_is_open(client->conn);
}

void ferry_ttrpc_client_set_closed_func(FerryTtrpcClient *client, FerryTtrpcClosedFunc func,
                                        gpointer user_data)
{
  client->closed_func = func;
  client->closed_data = user_data;
}

void ferry_ttrpc_client_close(FerryTtrpcClient *client)
{
  ttrpc_conn_close(client->conn, NULL);
}

void ferry_ttrpc_client_free(FerryTtrpcClient *client)
{
  if (client == NULL)
    return;
  ferry_ttrpc_client_close(client);
  client->closed_func = NULL;
  client_unref(client);
}
