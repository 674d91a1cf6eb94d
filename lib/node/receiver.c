/*
 * `ferry receive`'s side of a migration between hosts (include/ferry/node.h,
 * docs/migrate.md): one TCP port for both the control connections (TLS, then ttrpc) and
 * the memory connections (a token line, then QEMU's own bytes), one session at a time,
 * each with its destination shim. The Migration and Status calls of a session are
 * forwarded to that shim; three are changed on the way (ImportSandbox is kept for the
 * binding, PrepareSandbox gets this host's TLS directory, CreateDuplicateSocket this
 * host's hand-off of the memory connection).
 */
#include <errno.h>
#include <fcntl.h>
#include <glib-unix.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "containerd/task/v2/shim.pb-c.h"
#include "ferry/error.h"
#include "ferry/fd.h"
#include "ferry/json.h"
#include "ferry/layer-store.h"
#include "ferry/migration/v1/status.pb-c.h"
#include "ferry/node.h"
#include "ferry/node/v1/receive.pb-c.h"
#include "ferry/sandbox-state.h"
#include "ferry/source.h"
#include "google/protobuf/any.pb-c.h"
#include "google/protobuf/empty.pb-c.h"
#include "hcsshim/migration.pb-c.h"
#include "node-private.h"

#define TASK_SERVICE "containerd.task.v2.Task"
#define MIGRATION_SERVICE "Migration"
#define STATUS_SERVICE "ferry.migration.v1.Status"
#define RECEIVE_SERVICE "ferry.node.v1.Receive"
/* A forwarded call's deadline; the orchestrator's own is the one that matters. */
#define FORWARD_TIMEOUT_NS (600 * G_TIME_SPAN_SECOND * 1000)
#define DEFAULT_MAX_LAYER_BYTES (4ull << 30)
#define MAX_PENDING 16          /* connections not yet known to be control or memory */
#define HEADER_TIMEOUT_MS 10000 /* for the memory connection's token line */
#define MAX_HEADER 128
#define MAX_DIGESTS 64
#define MAX_CHUNK (1u << 20)

typedef struct Session {
  FerryReceiver *r;
  char *id, *name, *bundle, *token;
  FerryTtrpcClient *shim;
  Ferry__V1__SandboxState *state; /* ImportSandbox's, once forwarded */
  int memory_fd;                  /* the memory connection, once it came */
  gint64 seen_us;                 /* its last call */
  FerryFdHandoff *handoff;        /* ... handed to the shim */
} Session;

typedef struct {
  FerryReceiver *r;
  GSocketConnection *conn;
  GSource *watch, *timer;
  GByteArray *header;
  GIOStream *tls;
  FerryTlsPipe *pipe;
} Conn;

struct FerryReceiver {
  GMainContext *context;
  char *root;
  const FerryTlsCredentials *tls;
  FerryReceiverHandlers handlers;
  gpointer user_data;
  GSocketService *service;
  guint16 port;
  FerryTtrpcServer *server;
  FerryLayerStore *store;
  GHashTable *sessions; /* id -> Session */
  GSource *idle_timer;  /* abandons a session whose migrator fell silent */
  GList *conns;         /* Conn */
};

static void note(FerryReceiver *r, const char *name, const char *what, const GError *error)
{
  if (r->handlers.session != NULL)
    r->handlers.session(r, name, what, error, r->user_data);
}

/* ---------------------------------------------------------------- sessions -- */

static void session_free(gpointer p)
{
  Session *s = p;
  if (s->shim != NULL)
    ferry_ttrpc_client_free(s->shim);
  if (s->state != NULL)
    protobuf_c_message_free_unpacked(&s->state->base, NULL);
  g_clear_pointer(&s->handoff, ferry_fd_handoff_free);
  ferry_fd_close_quietly(s->memory_fd);
  g_free(s->id);
  g_free(s->name);
  g_free(s->bundle);
  g_free(s->token);
  g_free(s);
}

/* The session a request names (a call: it is alive), or NULL with NOT_FOUND. */
static Session *session_find(FerryReceiver *r, const char *id, GError **error)
{
  Session *s = id != NULL ? g_hash_table_lookup(r->sessions, id) : NULL;
  if (s == NULL)
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND, "no migration session %s here",
                id != NULL ? id : "");
  else
    s->seen_us = g_get_monotonic_time();
  return s;
}

/* The same for a unary call, answered NOT_FOUND when there is none. */
static Session *session_of(FerryReceiver *r, FerryTtrpcCall *call, const char *id)
{
  g_autoptr(GError) error = NULL;
  Session *s = session_find(r, id, &error);
  if (s == NULL)
    ferry_ttrpc_call_reply_gerror(call, error);
  return s;
}

static gboolean plain_name(const char *name)
{
  if (name == NULL || name[0] == '\0' || strlen(name) > 128 || g_str_equal(name, ".") ||
      g_str_equal(name, ".."))
    return FALSE;
  for (const char *c = name; *c != '\0'; c++)
    if (!g_ascii_isalnum(*c) && *c != '-' && *c != '_' && *c != '.')
      return FALSE;
  return TRUE;
}

/* --------------------------------------------------------------- forwarding -- */

typedef void (*AfterFunc)(Session *s, const ProtobufCMessage *response, const GError *error);

typedef struct {
  Session *s;
  FerryTtrpcCall *call;
  AfterFunc after;
} Forward;

static void on_forwarded(FerryTtrpcClient *client, const ProtobufCMessage *response,
                         const GError *error, gpointer ud)
{
  Forward *f = ud;
  if (f->after != NULL)
    f->after(f->s, response, error);
  if (error != NULL)
    ferry_ttrpc_call_reply_gerror(f->call, error);
  else
    ferry_ttrpc_call_reply(f->call, response);
  g_free(f);
}

static void forward(Session *s, FerryTtrpcCall *call, const char *service, const char *method,
                    const ProtobufCMessage *request,
                    const ProtobufCMessageDescriptor *response_desc, AfterFunc after)
{
  Forward *f = g_new0(Forward, 1);
  f->s = s;
  f->call = call;
  f->after = after;
  FerryTtrpcCallOptions options = { .timeout_ns = FORWARD_TIMEOUT_NS };
  ferry_ttrpc_client_call(s->shim, service, method, request, response_desc, &options, on_forwarded,
                          f);
}

/* The plain ones: the request as it came. */
#define FORWARD_AS_IS(fn, Type, method, service, response_desc)                                    \
  static void fn(FerryTtrpcCall *call, const ProtobufCMessage *request, gpointer ud)               \
  {                                                                                                \
    const Type *req = (const Type *)request;                                                       \
    Session *s = session_of(ud, call, req->session_id);                                            \
    if (s != NULL)                                                                                 \
      forward(s, call, service, method, request, response_desc, NULL);                             \
  }

FORWARD_AS_IS(fwd_transfer, TransferSandboxRequest, "TransferSandbox", MIGRATION_SERVICE,
              &transfer_sandbox_response__descriptor)
FORWARD_AS_IS(fwd_finalize, FinalizeSandboxRequest, "FinalizeSandbox", MIGRATION_SERVICE,
              &finalize_sandbox_response__descriptor)
FORWARD_AS_IS(fwd_cancel, CancelRequest, "Cancel", MIGRATION_SERVICE, &cancel_response__descriptor)
FORWARD_AS_IS(fwd_cleanup, CleanupRequest, "Cleanup", MIGRATION_SERVICE,
              &cleanup_response__descriptor)
FORWARD_AS_IS(fwd_status, Ferry__Migration__V1__StatusRequest, "Status", STATUS_SERVICE,
              &ferry__migration__v1__status_response__descriptor)

static void fwd_export(FerryTtrpcCall *call, const ProtobufCMessage *request, gpointer ud)
{
  ferry_ttrpc_call_reply_error(call, FERRY_ERROR_UNIMPLEMENTED,
                               "this is a migration destination: nothing is exported here");
}

static void fwd_import(FerryTtrpcCall *call, const ProtobufCMessage *request, gpointer ud)
{
  const ImportSandboxRequest *req = (const ImportSandboxRequest *)request;
  Session *s = session_of(ud, call, req->session_id);
  if (s == NULL)
    return;
  /* Kept for the binding; the shim checks it as well. */
  g_autoptr(GError) error = NULL;
  Ferry__V1__SandboxState *state =
      req->config != NULL
          ? ferry_sandbox_state_unpack(req->config->type_url, req->config->value.data,
                                       req->config->value.len, &error)
          : NULL;
  if (state == NULL) {
    if (error == NULL)
      g_set_error(&error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "ImportSandbox: no config");
    ferry_ttrpc_call_reply_gerror(call, error);
    return;
  }
  if (s->state != NULL)
    protobuf_c_message_free_unpacked(&s->state->base, NULL);
  s->state = state;
  forward(s, call, MIGRATION_SERVICE, "ImportSandbox", request,
          &import_sandbox_response__descriptor, NULL);
}

static void fwd_prepare(FerryTtrpcCall *call, const ProtobufCMessage *request, gpointer ud)
{
  FerryReceiver *r = ud;
  const PrepareSandboxRequest *req = (const PrepareSandboxRequest *)request;
  Session *s = session_of(r, call, req->session_id);
  if (s == NULL)
    return;
  /* This host's TLS directory, never a path from the peer. */
  InitializeOptions none = INITIALIZE_OPTIONS__INIT;
  InitializeOptions options = req->init_options != NULL ? *req->init_options : none;
  options.ferry_tls_dir = r->tls != NULL ? (char *)ferry_tls_credentials_dir(r->tls) : (char *)"";
  options.ferry_tls_hostname = (char *)"";
  PrepareSandboxRequest out = *req;
  out.init_options = &options;
  forward(s, call, MIGRATION_SERVICE, "PrepareSandbox", &out.base,
          &prepare_sandbox_response__descriptor, NULL);
}

static void after_socket(Session *s, const ProtobufCMessage *response, const GError *error)
{
  /* The shim holds its copy (or refused it): the hand-off has done its work. */
  g_clear_pointer(&s->handoff, ferry_fd_handoff_free);
}

static void fwd_socket(FerryTtrpcCall *call, const ProtobufCMessage *request, gpointer ud)
{
  FerryReceiver *r = ud;
  const CreateDuplicateSocketRequest *req = (const CreateDuplicateSocketRequest *)request;
  Session *s = session_of(r, call, req->session_id);
  if (s == NULL)
    return;
  if (s->memory_fd < 0) {
    ferry_ttrpc_call_reply_error(call, FERRY_ERROR_FAILED_PRECONDITION,
                                 "session %s: its memory connection has not come", s->id);
    return;
  }
  g_autoptr(GError) error = NULL;
  g_autofree char *path = g_strdup_printf("%s/%s-memory.sock", s->bundle, s->id);
  g_clear_pointer(&s->handoff, ferry_fd_handoff_free);
  s->handoff = ferry_fd_handoff_new(path, ferry_fd_steal(&s->memory_fd), &error);
  if (s->handoff == NULL) {
    ferry_ttrpc_call_reply_gerror(call, error);
    return;
  }
  CreateDuplicateSocketRequest out = *req;
  out.protocol_info.data = (uint8_t *)ferry_fd_handoff_path(s->handoff);
  out.protocol_info.len = strlen(ferry_fd_handoff_path(s->handoff));
  forward(s, call, MIGRATION_SERVICE, "CreateDuplicateSocket", &out.base,
          &create_duplicate_socket_response__descriptor, after_socket);
}

/* Notifications: a stream, forwarded message by message. */
static void on_note(FerryTtrpcClient *client, const ProtobufCMessage *message, gpointer ud)
{
  ferry_ttrpc_call_send(ud, message, NULL);
}

static void on_notes_end(FerryTtrpcClient *client, const ProtobufCMessage *response,
                         const GError *error, gpointer ud)
{
  ferry_ttrpc_call_finish(ud, error);
}

static void fwd_notifications(FerryTtrpcCall *call, const ProtobufCMessage *request, gpointer ud)
{
  const NotificationsRequest *req = (const NotificationsRequest *)request;
  g_autoptr(GError) error = NULL;
  Session *s = session_find(ud, req->session_id, &error);
  if (s == NULL) {
    ferry_ttrpc_call_finish(call, error); /* a stream ends with its error */
    return;
  }
  ferry_ttrpc_client_stream(s->shim, MIGRATION_SERVICE, "Notifications", request,
                            &notifications_response__descriptor, NULL, on_note, on_notes_end, call);
}

/* ------------------------------------------------------------------ Receive -- */

static void rx_open(FerryTtrpcCall *call, const ProtobufCMessage *request, gpointer ud)
{
  FerryReceiver *r = ud;
  const Ferry__Node__V1__OpenRequest *req = (const void *)request;
  if (!plain_name(req->name) || !plain_name(req->session_id)) {
    ferry_ttrpc_call_reply_error(call, FERRY_ERROR_INVALID_ARGUMENT,
                                 "Open: the name and the session id must be plain names "
                                 "(letters, digits, '-', '_', '.')");
    return;
  }
  if (g_hash_table_size(r->sessions) > 0) {
    ferry_ttrpc_call_reply_error(call, FERRY_ERROR_UNAVAILABLE,
                                 "Open: this receiver has a migration in progress; try again");
    return;
  }
  g_autofree char *dir = g_build_filename(r->root, "sandboxes", req->name, NULL);
  if (g_file_test(dir, G_FILE_TEST_EXISTS)) {
    ferry_ttrpc_call_reply_error(call, FERRY_ERROR_ALREADY_EXISTS,
                                 "Open: a sandbox named \"%s\" exists here already", req->name);
    return;
  }
  g_autofree char *bundle = g_build_filename(dir, "bundle", NULL);
  g_autoptr(GError) error = NULL;
  if (g_mkdir_with_parents(bundle, 0700) < 0) {
    int e = errno;
    ferry_ttrpc_call_reply_error(call, ferry_error_code_from_errno(e), "Open: create %s: %s",
                                 bundle, g_strerror(e));
    return;
  }
  /* Marked as arriving until its session ends with it here: a receiver that died
   * meanwhile finds the mark when it starts again, and discards what was left. */
  g_autofree char *mark = g_build_filename(dir, "incoming", NULL);
  g_file_set_contents(mark, req->session_id, -1, NULL);
  g_autofree char *address = r->handlers.start_shim(r, req->name, bundle, r->user_data, &error);
  FerryTtrpcClient *shim =
      address != NULL ? ferry_ttrpc_client_connect_unix(address, &error) : NULL;
  if (shim == NULL) {
    if (r->handlers.discard != NULL)
      r->handlers.discard(r, req->name, bundle, r->user_data);
    g_prefix_error(&error, "Open: the destination shim: ");
    ferry_ttrpc_call_reply_gerror(call, error);
    return;
  }
  Session *s = g_new0(Session, 1);
  s->r = r;
  s->id = g_strdup(req->session_id);
  s->name = g_strdup(req->name);
  s->bundle = g_steal_pointer(&bundle);
  s->token = node_random_hex("", 16);
  s->shim = shim;
  s->memory_fd = -1;
  s->seen_us = g_get_monotonic_time();
  g_hash_table_insert(r->sessions, s->id, s);
  note(r, s->name, "opened", NULL);
  Ferry__Node__V1__OpenResponse resp = FERRY__NODE__V1__OPEN_RESPONSE__INIT;
  resp.memory_token = s->token;
  ferry_ttrpc_call_reply(call, &resp.base);
}

static void rx_have_layers(FerryTtrpcCall *call, const ProtobufCMessage *request, gpointer ud)
{
  FerryReceiver *r = ud;
  const Ferry__Node__V1__HaveLayersRequest *req = (const void *)request;
  if (session_of(r, call, req->session_id) == NULL)
    return;
  if (req->n_digests > MAX_DIGESTS) {
    ferry_ttrpc_call_reply_error(call, FERRY_ERROR_RESOURCE_EXHAUSTED,
                                 "HaveLayers: %zu digests (at most %d)", req->n_digests,
                                 MAX_DIGESTS);
    return;
  }
  g_autoptr(GPtrArray) missing = g_ptr_array_new();
  for (size_t i = 0; i < req->n_digests; i++) {
    if (ferry_layer_digest_hex(req->digests[i]) == NULL) {
      ferry_ttrpc_call_reply_error(call, FERRY_ERROR_INVALID_ARGUMENT,
                                   "HaveLayers: \"%.80s\" is not a sha256 digest", req->digests[i]);
      return;
    }
    g_autofree char *path = ferry_layer_store_path(r->store, req->digests[i]);
    if (path == NULL)
      g_ptr_array_add(missing, req->digests[i]);
  }
  Ferry__Node__V1__HaveLayersResponse resp = FERRY__NODE__V1__HAVE_LAYERS_RESPONSE__INIT;
  resp.n_missing = missing->len;
  resp.missing = (char **)missing->pdata;
  ferry_ttrpc_call_reply(call, &resp.base);
}

static void rx_put_layer(FerryTtrpcCall *call, const ProtobufCMessage *request, gpointer ud)
{
  FerryReceiver *r = ud;
  const Ferry__Node__V1__PutLayerRequest *req = (const void *)request;
  if (session_of(r, call, req->session_id) == NULL)
    return;
  g_autoptr(GError) error = NULL;
  if (req->data.len > MAX_CHUNK)
    g_set_error(&error, FERRY_ERROR, FERRY_ERROR_RESOURCE_EXHAUSTED,
                "PutLayer: a chunk of %zu bytes (at most %u)", req->data.len, MAX_CHUNK);
  else
    ferry_layer_store_put(r->store, req->digest, req->offset, req->data.data, req->data.len,
                          req->last, &error);
  if (error != NULL) {
    ferry_ttrpc_call_reply_gerror(call, error);
    return;
  }
  Ferry__Node__V1__PutLayerResponse resp = FERRY__NODE__V1__PUT_LAYER_RESPONSE__INIT;
  ferry_ttrpc_call_reply(call, &resp.base);
}

/* Bind: the binding Create, then an Exec per running exec'd process, in turn. */
typedef struct {
  Session *s;
  FerryTtrpcCall *call;
  const Ferry__V1__Container *c;
  size_t next; /* the process to bind next */
} Bind;

static void bind_next(Bind *b);

static void on_bound(FerryTtrpcClient *client, const ProtobufCMessage *response,
                     const GError *error, gpointer ud)
{
  Bind *b = ud;
  if (error != NULL) {
    ferry_ttrpc_call_reply_gerror(b->call, error);
    g_free(b);
    return;
  }
  bind_next(b);
}

static void bind_next(Bind *b)
{
  FerryReceiver *r = b->s->r;
  const Ferry__V1__Container *c = b->c;
  FerryTtrpcCallOptions options = { .timeout_ns = FORWARD_TIMEOUT_NS };
  while (b->next < c->n_processes) {
    const Ferry__V1__Process *p = c->processes[b->next++];
    if (p->exec_id[0] == '\0' || p->status != FERRY__V1__PROCESS_STATUS__PROCESS_STATUS_RUNNING)
      continue;
    g_autofree char *out = NULL, *err = NULL;
    if (r->handlers.stdio != NULL)
      r->handlers.stdio(r, b->s->name, p->exec_id, &out, &err, r->user_data);
    Google__Protobuf__Any spec = GOOGLE__PROTOBUF__ANY__INIT;
    spec.type_url = (char *)"types.containerd.io/opencontainers/runtime-spec/1/Process";
    spec.value.data = (uint8_t *)p->spec_json;
    spec.value.len = strlen(p->spec_json);
    Containerd__Task__V2__ExecProcessRequest ex = CONTAINERD__TASK__V2__EXEC_PROCESS_REQUEST__INIT;
    ex.id = c->id;
    ex.exec_id = p->exec_id;
    ex.terminal = p->terminal;
    ex.stdin = (char *)"";
    ex.stdout = out != NULL ? out : (char *)"";
    ex.stderr = err != NULL ? err : (char *)"";
    ex.spec = &spec;
    ferry_ttrpc_client_call(b->s->shim, TASK_SERVICE, "Exec", &ex.base,
                            &google__protobuf__empty__descriptor, &options, on_bound, b);
    return;
  }
  Ferry__Node__V1__BindResponse resp = FERRY__NODE__V1__BIND_RESPONSE__INIT;
  ferry_ttrpc_call_reply(b->call, &resp.base);
  note(r, b->s->name, "bound", NULL);
  g_free(b);
}

static void rx_bind(FerryTtrpcCall *call, const ProtobufCMessage *request, gpointer ud)
{
  FerryReceiver *r = ud;
  const Ferry__Node__V1__BindRequest *req = (const void *)request;
  Session *s = session_of(r, call, req->session_id);
  if (s == NULL)
    return;
  if (s->state == NULL) {
    ferry_ttrpc_call_reply_error(call, FERRY_ERROR_FAILED_PRECONDITION,
                                 "Bind: session %s has imported nothing yet", s->id);
    return;
  }
  if (s->state->n_containers != 1) {
    ferry_ttrpc_call_reply_error(call, FERRY_ERROR_UNIMPLEMENTED,
                                 "Bind: a sandbox of %zu containers (one only, for now)",
                                 s->state->n_containers);
    return;
  }
  const Ferry__V1__Container *c = s->state->containers[0];
  /* The bundle: the source's spec, its root the images that travelled (no host path
   * of the source's is kept). */
  json_error_t jerr;
  g_autoptr(json_t) spec = json_loads(c->spec_json, 0, &jerr);
  if (!json_is_object(spec)) {
    ferry_ttrpc_call_reply_error(call, FERRY_ERROR_INVALID_ARGUMENT,
                                 "Bind: the container's spec is not a JSON object: %s", jerr.text);
    return;
  }
  json_object_set_new(spec, "root", json_pack("{s:s, s:b}", "path", "rootfs", "readonly", 0));
  json_t *annotations = json_object_get(spec, "annotations");
  if (!json_is_object(annotations)) {
    annotations = json_object();
    json_object_set_new(spec, "annotations", annotations);
  }
  json_object_set_new(annotations, "io.ferry.migration.source-container-id", json_string(c->id));
  json_object_set_new(annotations, "io.ferry.migration.layer-dir",
                      json_string(ferry_layer_store_dir(r->store)));
  g_autofree char *path = g_build_filename(s->bundle, "config.json", NULL);
  g_autofree char *text = json_dumps(spec, JSON_INDENT(2));
  g_autoptr(GError) error = NULL;
  if (!g_file_set_contents(path, text, -1, &error)) {
    ferry_ttrpc_call_reply_gerror(call, error);
    return;
  }
  g_autofree char *out = NULL, *err = NULL;
  if (r->handlers.stdio != NULL)
    r->handlers.stdio(r, s->name, "", &out, &err, r->user_data);
  Containerd__Task__V2__CreateTaskRequest create = CONTAINERD__TASK__V2__CREATE_TASK_REQUEST__INIT;
  create.id = c->id;
  create.bundle = s->bundle;
  create.stdin = (char *)"";
  create.stdout = out != NULL ? out : (char *)"";
  create.stderr = err != NULL ? err : (char *)"";
  create.terminal = c->n_processes > 0 && c->processes[0]->terminal;
  Bind *b = g_new0(Bind, 1);
  b->s = s;
  b->call = call;
  b->c = c;
  b->next = 0;
  FerryTtrpcCallOptions options = { .timeout_ns = FORWARD_TIMEOUT_NS };
  ferry_ttrpc_client_call(s->shim, TASK_SERVICE, "Create", &create.base,
                          &containerd__task__v2__create_task_response__descriptor, &options,
                          on_bound, b);
}

static void rx_close(FerryTtrpcCall *call, const ProtobufCMessage *request, gpointer ud)
{
  FerryReceiver *r = ud;
  const Ferry__Node__V1__CloseRequest *req = (const void *)request;
  Session *s = session_of(r, call, req->session_id);
  if (s == NULL)
    return;
  g_autofree char *name = g_strdup(s->name);
  g_autofree char *bundle = g_strdup(s->bundle);
  gboolean migrated = req->migrated;
  g_hash_table_remove(r->sessions, s->id);
  if (migrated) {
    g_autofree char *mark = g_build_filename(r->root, "sandboxes", name, "incoming", NULL);
    unlink(mark);
  }
  if (!migrated && r->handlers.discard != NULL)
    r->handlers.discard(r, name, bundle, r->user_data);
  note(r, name, migrated ? "arrived" : "discarded", NULL);
  Ferry__Node__V1__CloseResponse resp = FERRY__NODE__V1__CLOSE_RESPONSE__INIT;
  ferry_ttrpc_call_reply(call, &resp.base);
}

static const FerryTtrpcMethodImpl receive_methods[] = {
  { "Open", rx_open, FERRY_TTRPC_UNARY },
  { "HaveLayers", rx_have_layers, FERRY_TTRPC_UNARY },
  { "PutLayer", rx_put_layer, FERRY_TTRPC_UNARY },
  { "Bind", rx_bind, FERRY_TTRPC_UNARY },
  { "Close", rx_close, FERRY_TTRPC_UNARY },
  { NULL, NULL, 0 },
};

static const FerryTtrpcMethodImpl migration_methods[] = {
  { "PrepareAndExportSandbox", fwd_export, FERRY_TTRPC_UNARY },
  { "ImportSandbox", fwd_import, FERRY_TTRPC_UNARY },
  { "PrepareSandbox", fwd_prepare, FERRY_TTRPC_UNARY },
  { "TransferSandbox", fwd_transfer, FERRY_TTRPC_UNARY },
  { "FinalizeSandbox", fwd_finalize, FERRY_TTRPC_UNARY },
  { "CreateDuplicateSocket", fwd_socket, FERRY_TTRPC_UNARY },
  { "Notifications", fwd_notifications, FERRY_TTRPC_SERVER_STREAMING },
  { "Cancel", fwd_cancel, FERRY_TTRPC_UNARY },
  { "Cleanup", fwd_cleanup, FERRY_TTRPC_UNARY },
  { NULL, NULL, 0 },
};

static const FerryTtrpcMethodImpl status_methods[] = {
  { "Status", fwd_status, FERRY_TTRPC_UNARY },
  { NULL, NULL, 0 },
};

/* -------------------------------------------------------------- connections -- */

static void conn_free(Conn *c)
{
  ferry_source_clear(&c->watch);
  ferry_source_clear(&c->timer);
  if (c->header != NULL)
    g_byte_array_unref(c->header);
  g_clear_pointer(&c->pipe, ferry_tls_pipe_free);
  g_clear_object(&c->tls);
  g_clear_object(&c->conn);
  g_free(c);
}

static void conn_drop(Conn *c)
{
  c->r->conns = g_list_remove(c->r->conns, c);
  conn_free(c);
}

/* Connections whose TLS stream has ended (their pipe has done its work). */
static void conns_prune(FerryReceiver *r)
{
  for (GList *l = r->conns; l != NULL;) {
    GList *next = l->next;
    Conn *c = l->data;
    if (c->tls != NULL && c->pipe != NULL && g_io_stream_is_closed(c->tls))
      conn_drop(c);
    l = next;
  }
}

static void on_handshaken(GIOStream *stream, const GError *error, gpointer ud)
{
  Conn *c = ud;
  if (error != NULL) {
    note(c->r, NULL, "refused a peer", error);
    conn_drop(c);
    return;
  }
  int fd = -1;
  g_autoptr(GError) local = NULL;
  c->pipe = ferry_tls_pipe_new(c->tls, &fd, &local);
  if (c->pipe == NULL || !ferry_ttrpc_server_add_connection(c->r->server, fd, &local)) {
    note(c->r, NULL, "could not serve a peer", local);
    conn_drop(c);
  }
}

static int conn_fd(Conn *c)
{
  return g_socket_get_fd(g_socket_connection_get_socket(c->conn));
}

/* A memory connection's token line came: its session takes the socket. */
static void memory_arrived(Conn *c)
{
  FerryReceiver *r = c->r;
  gsize plen = strlen(FERRY_NODE_MEMORY_PREFIX);
  g_autofree char *token =
      g_strndup((const char *)c->header->data + plen, c->header->len - plen - 1);
  GHashTableIter it;
  gpointer value;
  g_hash_table_iter_init(&it, r->sessions);
  while (g_hash_table_iter_next(&it, NULL, &value)) {
    Session *s = value;
    if (s->memory_fd < 0 && s->handoff == NULL && g_str_equal(s->token, token)) {
      s->memory_fd = fcntl(conn_fd(c), F_DUPFD_CLOEXEC, 3);
      note(r, s->name, "memory connection", NULL);
      break;
    }
  }
  conn_drop(c); /* a token no session has: closed */
}

static gboolean on_header_timeout(gpointer ud)
{
  Conn *c = ud;
  ferry_source_clear(&c->timer);
  conn_drop(c);
  return G_SOURCE_REMOVE;
}

static gboolean on_readable(gint fd, GIOCondition cond, gpointer ud)
{
  Conn *c = ud;
  if (c->header == NULL) {
    /* The first byte tells: a memory connection's line, or TLS (or ttrpc) bytes that
     * stay where they are. */
    char first;
    ssize_t n = recv(fd, &first, 1, MSG_PEEK);
    if (n <= 0) {
      if (n < 0 && errno == EAGAIN)
        return G_SOURCE_CONTINUE;
      conn_drop(c);
      return G_SOURCE_REMOVE;
    }
    if (first != FERRY_NODE_MEMORY_PREFIX[0]) {
      ferry_source_clear(&c->watch);
      ferry_source_clear(&c->timer);
      if (c->r->tls == NULL) {
        g_autoptr(GError) error = NULL;
        int copy = fcntl(fd, F_DUPFD_CLOEXEC, 3);
        if (copy < 0 || !ferry_ttrpc_server_add_connection(c->r->server, copy, &error))
          note(c->r, NULL, "could not serve a peer", error);
        conn_drop(c);
        return G_SOURCE_REMOVE;
      }
      g_autoptr(GError) error = NULL;
      c->tls = ferry_tls_wrap(G_IO_STREAM(c->conn), c->r->tls, NULL, &error);
      if (c->tls == NULL) {
        note(c->r, NULL, "could not serve a peer", error);
        conn_drop(c);
        return G_SOURCE_REMOVE;
      }
      ferry_tls_handshake(c->tls, NULL, on_handshaken, c);
      return G_SOURCE_REMOVE;
    }
    c->header = g_byte_array_new();
  }
  /* The token line, a byte at a time: nothing past it is QEMU's to lose. */
  for (;;) {
    guint8 byte;
    ssize_t n = read(fd, &byte, 1);
    if (n < 0 && errno == EAGAIN)
      return G_SOURCE_CONTINUE;
    if (n <= 0 || c->header->len >= MAX_HEADER) {
      conn_drop(c);
      return G_SOURCE_REMOVE;
    }
    g_byte_array_append(c->header, &byte, 1);
    if (byte != '\n')
      continue;
    gsize plen = strlen(FERRY_NODE_MEMORY_PREFIX);
    if (c->header->len <= plen + 1 ||
        memcmp(c->header->data, FERRY_NODE_MEMORY_PREFIX, plen) != 0) {
      conn_drop(c);
      return G_SOURCE_REMOVE;
    }
    ferry_source_clear(&c->watch);
    memory_arrived(c);
    return G_SOURCE_REMOVE;
  }
}

static gboolean on_incoming(GSocketService *service, GSocketConnection *connection,
                            GObject *source_object, gpointer ud)
{
  FerryReceiver *r = ud;
  conns_prune(r);
  guint pending = 0;
  for (GList *l = r->conns; l != NULL; l = l->next)
    pending += ((Conn *)l->data)->pipe == NULL;
  if (pending >= MAX_PENDING)
    return TRUE; /* dropped: GIO closes it */
  Conn *c = g_new0(Conn, 1);
  c->r = r;
  c->conn = g_object_ref(connection);
  node_socket_keepalive(conn_fd(c));
  g_socket_set_blocking(g_socket_connection_get_socket(connection), FALSE);
  c->watch = g_unix_fd_source_new(conn_fd(c), G_IO_IN | G_IO_HUP | G_IO_ERR);
  g_source_set_callback(c->watch, (GSourceFunc)(void (*)(void))on_readable, c, NULL);
  g_source_attach(c->watch, r->context);
  c->timer = ferry_timeout_new(r->context, HEADER_TIMEOUT_MS, on_header_timeout, c);
  r->conns = g_list_prepend(r->conns, c);
  return TRUE;
}

/* ------------------------------------------------------------------ the API -- */

static void end_shim_session(const char *bundle, const char *session);

/* A session with no call for this long is abandoned: its migrator is gone (a cut link,
 * a dead host); the orchestration polls every 100 ms while anything happens. */
#define SESSION_IDLE_US (60 * G_USEC_PER_SEC)
#define IDLE_CHECK_MS 5000

static gboolean on_idle_check(gpointer ud)
{
  FerryReceiver *r = ud;
  gint64 now = g_get_monotonic_time();
  GHashTableIter it;
  gpointer value;
  g_hash_table_iter_init(&it, r->sessions);
  while (g_hash_table_iter_next(&it, NULL, &value)) {
    Session *s = value;
    if (now - s->seen_us < SESSION_IDLE_US)
      continue;
    g_autofree char *name = g_strdup(s->name);
    g_autofree char *bundle = g_strdup(s->bundle);
    g_autofree char *id = g_strdup(s->id);
    g_hash_table_iter_remove(&it);
    end_shim_session(bundle, id);
    if (r->handlers.discard != NULL)
      r->handlers.discard(r, name, bundle, r->user_data);
    note(r, name, "abandoned (its migrator fell silent)", NULL);
  }
  return G_SOURCE_CONTINUE;
}

/* A session a dead receiver left in its shim: Cancel and Cleanup, so that the shim
 * lets its tasks go (blocking: at start only). */
static void end_shim_session(const char *bundle, const char *session)
{
  g_autofree char *path = g_build_filename(bundle, "address", NULL);
  g_autofree char *address = NULL;
  if (!g_file_get_contents(path, &address, NULL, NULL))
    return;
  FerryTtrpcClient *c = ferry_ttrpc_client_connect_unix(g_strstrip(address), NULL);
  if (c == NULL)
    return;
  FerryTtrpcCallOptions options = { .timeout_ns = 10 * G_TIME_SPAN_SECOND * 1000 };
  CancelRequest cancel = CANCEL_REQUEST__INIT;
  cancel.session_id = (char *)session;
  ProtobufCMessage *resp = ferry_ttrpc_client_call_sync(
      c, MIGRATION_SERVICE, "Cancel", &cancel.base, &cancel_response__descriptor, &options, NULL);
  if (resp != NULL)
    protobuf_c_message_free_unpacked(resp, NULL);
  CleanupRequest cleanup = CLEANUP_REQUEST__INIT;
  cleanup.session_id = (char *)session;
  resp = ferry_ttrpc_client_call_sync(c, MIGRATION_SERVICE, "Cleanup", &cleanup.base,
                                      &cleanup_response__descriptor, &options, NULL);
  if (resp != NULL)
    protobuf_c_message_free_unpacked(resp, NULL);
  ferry_ttrpc_client_free(c);
}

FerryReceiver *ferry_receiver_new(const FerryReceiverConfig *config,
                                  const FerryReceiverHandlers *handlers, gpointer user_data,
                                  GError **error)
{
  if (handlers == NULL || handlers->start_shim == NULL) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "receiver: no start_shim");
    return NULL;
  }
  g_autofree char *images = g_build_filename(config->root, "images", NULL);
  FerryLayerStore *store = ferry_layer_store_new(
      images, config->max_layer_bytes != 0 ? config->max_layer_bytes : DEFAULT_MAX_LAYER_BYTES,
      error);
  if (store == NULL)
    return NULL;
  FerryReceiver *r = g_new0(FerryReceiver, 1);
  r->context = g_main_context_ref_thread_default();
  r->root = g_strdup(config->root);
  r->tls = config->tls;
  r->handlers = *handlers;
  r->user_data = user_data;
  r->store = store;
  r->sessions = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, session_free);
  /* What a receiver that died left of the sessions it had. */
  g_autofree char *sandboxes = g_build_filename(r->root, "sandboxes", NULL);
  g_autoptr(GDir) d = g_dir_open(sandboxes, 0, NULL);
  const char *name;
  while (d != NULL && (name = g_dir_read_name(d)) != NULL) {
    g_autofree char *mark = g_build_filename(sandboxes, name, "incoming", NULL);
    if (!g_file_test(mark, G_FILE_TEST_EXISTS))
      continue;
    g_autofree char *bundle = g_build_filename(sandboxes, name, "bundle", NULL);
    g_autofree char *session = NULL;
    if (g_file_get_contents(mark, &session, NULL, NULL))
      end_shim_session(bundle, session);
    if (r->handlers.discard != NULL)
      r->handlers.discard(r, name, bundle, r->user_data);
    note(r, name, "discarded (its session was left unfinished)", NULL);
  }
  r->idle_timer = ferry_timeout_new(r->context, IDLE_CHECK_MS, on_idle_check, r);
  r->server = ferry_ttrpc_server_new();
  if (!ferry_ttrpc_server_register(r->server, RECEIVE_SERVICE,
                                   &ferry__node__v1__receive__descriptor, receive_methods, r,
                                   error) ||
      !ferry_ttrpc_server_register(r->server, MIGRATION_SERVICE, &migration__descriptor,
                                   migration_methods, r, error) ||
      !ferry_ttrpc_server_register(r->server, STATUS_SERVICE,
                                   &ferry__migration__v1__status__descriptor, status_methods, r,
                                   error)) {
    ferry_receiver_free(r);
    return NULL;
  }
  return r;
}

gboolean ferry_receiver_listen(FerryReceiver *r, const char *address, GError **error)
{
  GError *local = NULL;
  g_autoptr(GSocketConnectable) where = g_network_address_parse(address, 0, &local);
  if (where == NULL) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "receive: %s: %s", address,
                local->message);
    g_error_free(local);
    return FALSE;
  }
  const char *host = g_network_address_get_hostname(G_NETWORK_ADDRESS(where));
  guint16 port = g_network_address_get_port(G_NETWORK_ADDRESS(where));
  g_autoptr(GInetAddress) inet = g_inet_address_new_from_string(host);
  if (inet == NULL) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                "receive: listen on an IP address, not %s", host);
    return FALSE;
  }
  g_autoptr(GSocketAddress) sa = g_inet_socket_address_new(inet, port);
  r->service = g_socket_service_new();
  g_autoptr(GSocketAddress) effective = NULL;
  if (!g_socket_listener_add_address(G_SOCKET_LISTENER(r->service), sa, G_SOCKET_TYPE_STREAM,
                                     G_SOCKET_PROTOCOL_TCP, NULL, &effective, &local)) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE, "receive: listen on %s: %s", address,
                local->message);
    g_error_free(local);
    g_clear_object(&r->service);
    return FALSE;
  }
  r->port = g_inet_socket_address_get_port(G_INET_SOCKET_ADDRESS(effective));
  g_signal_connect(r->service, "incoming", G_CALLBACK(on_incoming), r);
  g_socket_service_start(r->service);
  return TRUE;
}

guint16 ferry_receiver_port(FerryReceiver *r)
{
  return r->port;
}

void ferry_receiver_free(FerryReceiver *r)
{
  if (r == NULL)
    return;
  if (r->service != NULL) {
    g_socket_service_stop(r->service);
    g_socket_listener_close(G_SOCKET_LISTENER(r->service));
    g_signal_handlers_disconnect_by_data(r->service, r);
    g_clear_object(&r->service);
  }
  ferry_source_clear(&r->idle_timer);
  g_list_free_full(g_steal_pointer(&r->conns), (GDestroyNotify)conn_free);
  ferry_ttrpc_server_free(r->server);
  g_hash_table_unref(r->sessions);
  ferry_layer_store_free(r->store);
  g_main_context_unref(r->context);
  g_free(r->root);
  g_free(r);
}
