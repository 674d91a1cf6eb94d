/* ttrpc server: listeners, connections, dispatch by (service, method), answers. */
#include <errno.h>
#include <glib-unix.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "conn.h"
#include "ferry/error.h"
#include "ferry/fd.h"
#include "ferry/source.h"
#include "ttrpc/envelope.pb-c.h"

/* Calls one connection may have unanswered at once; more get RESOURCE_EXHAUSTED. */
#define MAX_CALLS_PER_CONNECTION 8192

typedef struct {
  const FerryTtrpcMethodImpl *impl;
  const ProtobufCMethodDescriptor *desc;
} Method;

typedef struct {
  char *name;
  GHashTable *methods; /* method name -> Method */
  gpointer user_data;
} Service;

typedef struct {
  FerryTtrpcServer *server;
  int fd;
  char *path; /* unlinked at shutdown; NULL for an adopted fd */
  GSource *source;
} Listener;

typedef struct {
  FerryTtrpcServer *server;
  TtrpcConn *conn;
  GHashTable *calls; /* stream id -> FerryTtrpcCall, every unanswered call */
  guint32 last_sid;
} ServerConn;

struct FerryTtrpcServer {
  GMainContext *context; /* thread-default at creation: listeners, connections, timers */
  GHashTable *services;  /* wire name -> Service */
  GPtrArray *listeners;
  GHashTable *conns; /* set of ServerConn */
  gboolean shut_down;
  FerryTtrpcConnectionClosedFunc closed_func;
  gpointer closed_data;
};

struct FerryTtrpcCall {
  ServerConn *sc; /* NULL once the connection is gone */
  guint32 sid;
  Ttrpc__Request *envelope; /* owns service, method and metadata strings */
  ProtobufCMessage *request;
  const Method *method;
  const Service *service;
  FerryTtrpcMetadata *metadata;
  gint64 deadline;
  GSource *deadline_source;
  gboolean cancelled;
  gboolean streaming;
  FerryTtrpcCancelFunc cancel_func;
  gpointer cancel_data;
};

/* The keys (or values) of a table, as an array the caller may walk while the table
 * changes. */
static GPtrArray *table_snapshot(GHashTable *table, gboolean values)
{
  GPtrArray *out = g_ptr_array_sized_new(g_hash_table_size(table));
  GHashTableIter it;
  gpointer k, v;
  g_hash_table_iter_init(&it, table);
  while (g_hash_table_iter_next(&it, &k, &v))
    g_ptr_array_add(out, values ? v : k);
  return out;
}

static void service_free(gpointer p)
{
  Service *s = p;
  g_free(s->name);
  g_hash_table_unref(s->methods);
  g_free(s);
}

FerryTtrpcServer *ferry_ttrpc_server_new(void)
{
  FerryTtrpcServer *server = g_new0(FerryTtrpcServer, 1);
  server->services = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, service_free);
  server->listeners = g_ptr_array_new();
  server->conns = g_hash_table_new(NULL, NULL);
  server->context = g_main_context_ref_thread_default();
  return server;
}

gboolean ferry_ttrpc_server_register(FerryTtrpcServer *server, const char *service_name,
                                     const ProtobufCServiceDescriptor *desc,
                                     const FerryTtrpcMethodImpl *methods, gpointer user_data,
                                     GError **error)
{
  const char *name = service_name != NULL ? service_name : desc->name;
  if (g_hash_table_contains(server->services, name)) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_ALREADY_EXISTS,
                "ttrpc service %s is already registered", name);
    return FALSE;
  }
  Service *s = g_new0(Service, 1);
  s->name = g_strdup(name);
  s->methods = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, g_free);
  s->user_data = user_data;
  for (const FerryTtrpcMethodImpl *m = methods; m->name != NULL; m++) {
    const ProtobufCMethodDescriptor *md =
        protobuf_c_service_descriptor_get_method_by_name(desc, m->name);
    if (md == NULL || m->handler == NULL) {
      g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "ttrpc service %s: %s %s", name,
                  md == NULL ? "no method" : "no handler for", m->name);
      service_free(s);
      return FALSE;
    }
    Method *entry = g_new0(Method, 1);
    entry->impl = m;
    entry->desc = md;
    g_hash_table_replace(s->methods, (gpointer)md->name, entry);
  }
  g_hash_table_insert(server->services, s->name, s);
  return TRUE;
}

/* ------------------------------------------------------------ answering -- */

static void call_free(FerryTtrpcCall *call)
{
  ferry_source_clear(&call->deadline_source);
  if (call->request != NULL)
    protobuf_c_message_free_unpacked(call->request, NULL);
  if (call->envelope != NULL)
    ttrpc__request__free_unpacked(call->envelope, NULL);
  g_free(call->metadata);
  g_free(call);
}

/* Take the call out of its connection's table; TRUE if an answer can still be sent. */
static gboolean call_detach(FerryTtrpcCall *call)
{
  gboolean live = call->sc != NULL && !call->cancelled && ttrpc_conn_is_open(call->sc->conn);
  if (call->sc != NULL)
    g_hash_table_remove(call->sc->calls, GUINT_TO_POINTER(call->sid));
  call->sc = NULL;
  return live;
}

static void send_status(TtrpcConn *conn, guint32 sid, int code, const char *message)
{
  Google__Rpc__Status status = GOOGLE__RPC__STATUS__INIT;
  status.code = code;
  status.message = (char *)message;
  Ttrpc__Response resp = TTRPC__RESPONSE__INIT;
  resp.status = &status;
  /* A status message cannot make a frame oversize unless it is absurd; cut it then. */
  g_autofree char *cut = NULL;
  if (strlen(message) > FERRY_TTRPC_MAX_DATA / 2) {
    cut = g_strndup(message, 1024);
    status.message = cut;
  }
  ttrpc_conn_send_message(conn, sid, FERRY_TTRPC_TYPE_RESPONSE, 0, &resp.base, NULL);
}

void ferry_ttrpc_call_reply_error(FerryTtrpcCall *call, int code, const char *fmt, ...)
{
  g_return_if_fail(call != NULL);
  va_list ap;
  va_start(ap, fmt);
  g_autofree char *message = g_strdup_vprintf(fmt, ap);
  va_end(ap);
  TtrpcConn *conn = call->sc != NULL ? call->sc->conn : NULL;
  if (call_detach(call))
    send_status(conn, call->sid, code == 0 ? FERRY_ERROR_UNKNOWN : code, message);
  call_free(call);
}

void ferry_ttrpc_call_reply_gerror(FerryTtrpcCall *call, const GError *error)
{
  ferry_ttrpc_call_reply_error(call, ferry_error_to_status_code(error), "%s",
                               error != NULL ? error->message : "unknown error");
}

void ferry_ttrpc_call_reply(FerryTtrpcCall *call, const ProtobufCMessage *response)
{
  g_return_if_fail(call != NULL);
  if (call->sc == NULL || call->cancelled) {
    call_detach(call);
    call_free(call);
    return;
  }
  Ttrpc__Response resp = TTRPC__RESPONSE__INIT;
  g_autofree guint8 *payload = NULL;
  if (response != NULL) {
    gsize len;
    payload = ttrpc_pack(response, &len);
    resp.payload.data = payload;
    resp.payload.len = len;
  }
  TtrpcConn *conn = call->sc->conn;
  g_autoptr(GError) error = NULL;
  if (!ttrpc_conn_send_message(conn, call->sid, FERRY_TTRPC_TYPE_RESPONSE, 0, &resp.base, &error)) {
    /* Too large for a frame: tell the caller rather than leaving it waiting. */
    if (ttrpc_conn_is_open(conn))
      send_status(conn, call->sid, ferry_error_to_status_code(error), error->message);
  }
  call_detach(call);
  call_free(call);
}

gboolean ferry_ttrpc_call_send(FerryTtrpcCall *call, const ProtobufCMessage *message,
                               GError **error)
{
  g_return_val_if_fail(call != NULL, FALSE);
  if (call->sc == NULL || call->cancelled || !ttrpc_conn_is_open(call->sc->conn)) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_CANCELLED, "ttrpc call %s/%s was cancelled",
                call->envelope->service, call->envelope->method);
    return FALSE;
  }
  return ttrpc_conn_send_message(call->sc->conn, call->sid, FERRY_TTRPC_TYPE_DATA, 0, message,
                                 error);
}

void ferry_ttrpc_call_finish(FerryTtrpcCall *call, const GError *error)
{
  g_return_if_fail(call != NULL);
  if (error != NULL) {
    ferry_ttrpc_call_reply_gerror(call, error);
    return;
  }
  TtrpcConn *conn = call->sc != NULL ? call->sc->conn : NULL;
  if (call_detach(call))
    ttrpc_conn_send_message(conn, call->sid, FERRY_TTRPC_TYPE_DATA,
                            FERRY_TTRPC_FLAG_REMOTE_CLOSED | FERRY_TTRPC_FLAG_NO_DATA, NULL, NULL);
  call_free(call);
}

/* ------------------------------------------------------------- the call -- */

const char *ferry_ttrpc_call_get_service(const FerryTtrpcCall *call)
{
  return call->envelope->service;
}

const char *ferry_ttrpc_call_get_method(const FerryTtrpcCall *call)
{
  return call->envelope->method;
}

guint32 ferry_ttrpc_call_get_stream_id(const FerryTtrpcCall *call)
{
  return call->sid;
}

const char *ferry_ttrpc_call_get_metadata(const FerryTtrpcCall *call, const char *key)
{
  for (gsize i = 0; i < call->envelope->n_metadata; i++)
    if (g_ascii_strcasecmp(call->metadata[i].key, key) == 0)
      return call->metadata[i].value;
  return NULL;
}

const FerryTtrpcMetadata *ferry_ttrpc_call_get_metadata_all(const FerryTtrpcCall *call,
                                                            gsize *n_out)
{
  *n_out = call->envelope->n_metadata;
  return call->metadata;
}

gint64 ferry_ttrpc_call_get_deadline(const FerryTtrpcCall *call)
{
  return call->deadline;
}

gboolean ferry_ttrpc_call_is_cancelled(const FerryTtrpcCall *call)
{
  return call->cancelled || call->sc == NULL;
}

void ferry_ttrpc_call_set_cancel_func(FerryTtrpcCall *call, FerryTtrpcCancelFunc func,
                                      gpointer user_data)
{
  call->cancel_func = func;
  call->cancel_data = user_data;
}

/* Mark cancelled and tell the handler, once. The handler may answer (and so free the
 * call) from inside its cancel function. */
static void call_cancel(FerryTtrpcCall *call)
{
  if (call->cancelled)
    return;
  call->cancelled = TRUE;
  FerryTtrpcCancelFunc func = g_steal_pointer(&call->cancel_func);
  if (func != NULL)
    func(call, call->cancel_data);
}

static gboolean on_deadline(gpointer p);

/* Time the call's deadline, or what is left of it: one timer reaches 49 days (G_MAXUINT
 * ms), a deadline further off is timed again when that one fires. Rounded up, so the
 * timer never fires before the deadline. */
static void arm_deadline(FerryTtrpcCall *call, GMainContext *context)
{
  gint64 left_us = call->deadline - g_get_monotonic_time();
  gint64 ms = left_us <= 0 ? 0 : left_us / 1000 + (left_us % 1000 != 0);
  call->deadline_source =
      ferry_timeout_new(context, ms > (gint64)G_MAXUINT ? G_MAXUINT : (guint)ms, on_deadline, call);
}

static gboolean on_deadline(gpointer p)
{
  FerryTtrpcCall *call = p;
  ferry_source_clear(&call->deadline_source);
  gboolean live = call->sc != NULL && !call->cancelled;
  if (live && g_get_monotonic_time() < call->deadline) {
    arm_deadline(call, call->sc->server->context);
    return G_SOURCE_REMOVE;
  }
  if (live && ttrpc_conn_is_open(call->sc->conn))
    send_status(call->sc->conn, call->sid, FERRY_ERROR_DEADLINE_EXCEEDED,
                "context deadline exceeded");
  call_cancel(call);
  return G_SOURCE_REMOVE;
}

/* ------------------------------------------------------------- dispatch -- */

static void dispatch_request(ServerConn *sc, const FerryTtrpcHeader *h, const guint8 *data)
{
  TtrpcConn *conn = sc->conn;
  if (h->stream_id % 2 != 1) {
    send_status(conn, h->stream_id, FERRY_ERROR_INVALID_ARGUMENT,
                "StreamID must be odd for client initiated streams");
    return;
  }
  if (h->stream_id <= sc->last_sid) {
    send_status(conn, h->stream_id, FERRY_ERROR_INVALID_ARGUMENT,
                "StreamID cannot be re-used and must increment");
    return;
  }
  sc->last_sid = h->stream_id;
  if (h->flags & FERRY_TTRPC_FLAG_REMOTE_OPEN) {
    send_status(conn, h->stream_id, FERRY_ERROR_UNIMPLEMENTED, "client streaming is not supported");
    return;
  }
  if (g_hash_table_size(sc->calls) >= MAX_CALLS_PER_CONNECTION) {
    send_status(conn, h->stream_id, FERRY_ERROR_RESOURCE_EXHAUSTED,
                "too many concurrent calls on one connection");
    return;
  }
  Ttrpc__Request *env = ttrpc__request__unpack(NULL, h->length, data);
  if (env == NULL) {
    send_status(conn, h->stream_id, FERRY_ERROR_INVALID_ARGUMENT,
                "unmarshal request error: invalid ttrpc.Request");
    return;
  }
  Service *service = g_hash_table_lookup(sc->server->services, env->service);
  const Method *method =
      service != NULL ? g_hash_table_lookup(service->methods, env->method) : NULL;
  if (method == NULL) {
    g_autofree char *msg = service == NULL ? g_strdup_printf("service %s", env->service)
                                           : g_strdup_printf("method %s", env->method);
    send_status(conn, h->stream_id, FERRY_ERROR_UNIMPLEMENTED, msg);
    ttrpc__request__free_unpacked(env, NULL);
    return;
  }
  ProtobufCMessage *request =
      protobuf_c_message_unpack(method->desc->input, NULL, env->payload.len, env->payload.data);
  if (request == NULL) {
    g_autofree char *msg = g_strdup_printf("unmarshal request error: invalid %s for %s/%s",
                                           method->desc->input->name, env->service, env->method);
    send_status(conn, h->stream_id, FERRY_ERROR_INVALID_ARGUMENT, msg);
    ttrpc__request__free_unpacked(env, NULL);
    return;
  }

  FerryTtrpcCall *call = g_new0(FerryTtrpcCall, 1);
  call->sc = sc;
  call->sid = h->stream_id;
  call->envelope = env;
  call->request = request;
  call->method = method;
  call->service = service;
  call->streaming = method->impl->kind == FERRY_TTRPC_SERVER_STREAMING;
  call->metadata = g_new0(FerryTtrpcMetadata, env->n_metadata + 1);
  for (gsize i = 0; i < env->n_metadata; i++) {
    call->metadata[i].key = env->metadata[i]->key;
    call->metadata[i].value = env->metadata[i]->value;
  }
  if (env->timeout_nano > 0) {
    /* Any value the peer sends, up to INT64_MAX, without overflow (issue 9 item 5). */
    gint64 now = g_get_monotonic_time();
    gint64 usec = env->timeout_nano / 1000 + (env->timeout_nano % 1000 != 0);
    call->deadline = usec > G_MAXINT64 - now ? G_MAXINT64 : now + usec;
    arm_deadline(call, sc->server->context);
  }
  g_hash_table_insert(sc->calls, GUINT_TO_POINTER(call->sid), call);
  method->impl->handler(call, request, service->user_data);
}

static void on_frame(TtrpcConn *conn, const FerryTtrpcHeader *h, const guint8 *data, gpointer ud)
{
  ServerConn *sc = ud;
  switch (h->type) {
  case FERRY_TTRPC_TYPE_REQUEST:
    dispatch_request(sc, h, data);
    break;
  case FERRY_TTRPC_TYPE_DATA:
    /* No method takes a client stream: Data for a live call is ignored, for any other
     * stream it is an error, as in containerd/ttrpc >= 1.2. */
    if (!g_hash_table_contains(sc->calls, GUINT_TO_POINTER(h->stream_id)))
      send_status(conn, h->stream_id, FERRY_ERROR_INVALID_ARGUMENT, "StreamID is no longer active");
    break;
  default:
    /* Responses from a client and unknown types are ignored "for future compat". */
    break;
  }
}

static void on_oversize(TtrpcConn *conn, const FerryTtrpcHeader *h, gpointer ud)
{
  g_autofree char *msg = g_strdup_printf("message length %u exceed maximum message size of %u",
                                         h->length, FERRY_TTRPC_MAX_DATA);
  send_status(conn, h->stream_id, FERRY_ERROR_RESOURCE_EXHAUSTED, msg);
}

static void on_conn_closed(TtrpcConn *conn, const GError *error, gpointer ud)
{
  ServerConn *sc = ud;
  FerryTtrpcServer *server = sc->server;
  /* Detach every unanswered call, then tell their handlers; a handler may answer from
   * its cancel function, which frees that call. */
  GPtrArray *calls = table_snapshot(sc->calls, TRUE);
  g_hash_table_remove_all(sc->calls);
  for (guint i = 0; i < calls->len; i++)
    ((FerryTtrpcCall *)calls->pdata[i])->sc = NULL;
  for (guint i = 0; i < calls->len; i++)
    call_cancel(calls->pdata[i]);
  g_ptr_array_unref(calls);
  g_hash_table_remove(server->conns, sc);
  g_hash_table_unref(sc->calls);
  g_free(sc);
  /* The conn is unreferenced last; its close path holds its own reference. */
  ttrpc_conn_unref(conn);
  if (server->closed_func != NULL)
    server->closed_func(server, server->closed_data);
}

static const TtrpcConnHandlers server_conn_handlers = {
  .frame = on_frame,
  .oversize = on_oversize,
  .closed = on_conn_closed,
};

gboolean ferry_ttrpc_server_add_connection(FerryTtrpcServer *server, int fd, GError **error)
{
  if (server->shut_down) {
    ferry_fd_close_quietly(fd);
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION, "ttrpc server is shut down");
    return FALSE;
  }
  ServerConn *sc = g_new0(ServerConn, 1);
  sc->server = server;
  sc->calls = g_hash_table_new(NULL, NULL);
  /* The connection's stream watches the server's context, whatever is thread-default
   * now (an accept runs from the listener, on that context). */
  g_main_context_push_thread_default(server->context);
  sc->conn = ttrpc_conn_new(fd, &server_conn_handlers, sc, error);
  g_main_context_pop_thread_default(server->context);
  if (sc->conn == NULL) {
    g_hash_table_unref(sc->calls);
    g_free(sc);
    return FALSE;
  }
  g_hash_table_add(server->conns, sc);
  return TRUE;
}

guint ferry_ttrpc_server_connection_count(FerryTtrpcServer *server)
{
  return g_hash_table_size(server->conns);
}

void ferry_ttrpc_server_set_connection_closed_func(FerryTtrpcServer *server,
                                                   FerryTtrpcConnectionClosedFunc func,
                                                   gpointer user_data)
{
  server->closed_func = func;
  server->closed_data = user_data;
}

/* ------------------------------------------------------------ listening -- */

static gboolean on_accept(int fd, GIOCondition cond, gpointer p)
{
  Listener *l = p;
  for (int i = 0; i < 16; i++) {
    int cfd = accept4(fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (cfd < 0) {
      if (errno == EINTR || errno == ECONNABORTED)
        continue;
      /* EAGAIN: drained. EMFILE and friends: try again on the next wake-up. */
      break;
    }
    g_autoptr(GError) error = NULL;
    if (!ferry_ttrpc_server_add_connection(l->server, cfd, &error))
      g_debug("ttrpc accept: %s", error->message);
  }
  return G_SOURCE_CONTINUE;
}

static gboolean add_listener(FerryTtrpcServer *server, int fd, const char *path, GError **error)
{
  if (server->shut_down) {
    ferry_fd_close_quietly(fd);
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION, "ttrpc server is shut down");
    return FALSE;
  }
  if (!ferry_fd_set_nonblocking(fd, TRUE, error) || !ferry_fd_set_cloexec(fd, error)) {
    ferry_fd_close_quietly(fd);
    return FALSE;
  }
  Listener *l = g_new0(Listener, 1);
  l->server = server;
  l->fd = fd;
  l->path = g_strdup(path);
  l->source = g_unix_fd_source_new(fd, G_IO_IN);
  g_source_set_callback(l->source, G_SOURCE_FUNC(on_accept), l, NULL);
  g_source_attach(l->source, server->context);
  g_ptr_array_add(server->listeners, l);
  return TRUE;
}

gboolean ferry_ttrpc_server_listen_fd(FerryTtrpcServer *server, int listen_fd, GError **error)
{
  return add_listener(server, listen_fd, NULL, error);
}

gboolean ferry_ttrpc_server_listen_unix(FerryTtrpcServer *server, const char *path, GError **error)
{
  int fd = ferry_unix_listen(path, error);
  return fd >= 0 && add_listener(server, fd, path, error);
}

void ferry_ttrpc_server_shutdown(FerryTtrpcServer *server)
{
  if (server->shut_down)
    return;
  server->shut_down = TRUE;
  for (guint i = 0; i < server->listeners->len; i++) {
    Listener *l = server->listeners->pdata[i];
    ferry_source_clear(&l->source);
    ferry_fd_close_quietly(l->fd);
    if (l->path != NULL)
      unlink(l->path);
    g_free(l->path);
    g_free(l);
  }
  g_ptr_array_set_size(server->listeners, 0);
  /* Closing a connection removes it from the set. */
  GPtrArray *conns = table_snapshot(server->conns, FALSE);
  for (guint i = 0; i < conns->len; i++) {
    ServerConn *sc = conns->pdata[i];
    g_autoptr(GError) error =
        g_error_new(FERRY_ERROR, FERRY_ERROR_UNAVAILABLE, "ttrpc server shut down");
    ttrpc_conn_close(sc->conn, error);
  }
  g_ptr_array_unref(conns);
}

void ferry_ttrpc_server_free(FerryTtrpcServer *server)
{
  if (server == NULL)
    return;
  server->closed_func = NULL;
  ferry_ttrpc_server_shutdown(server);
  g_ptr_array_unref(server->listeners);
  g_main_context_unref(server->context);
  g_hash_table_unref(server->conns);
  g_hash_table_unref(server->services);
  g_free(server);
}
