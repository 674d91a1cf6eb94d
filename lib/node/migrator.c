/*
 * `ferry migrate`'s side of a migration between hosts (include/ferry/node.h,
 * docs/migrate.md): the control connection to the receiver (TLS, then ttrpc), Open, the
 * memory connection (its token line, then handed to the local shim for QEMU), and
 * lib/migration between the local shim and the receiver, whose bind step sends the
 * layer images the receiver lacks and asks it to bind.
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "ferry/error.h"
#include "ferry/fd.h"
#include "ferry/layer-store.h"
#include "ferry/node.h"
#include "ferry/node/v1/receive.pb-c.h"
#include "node-private.h"

#define RECEIVE_SERVICE "ferry.node.v1.Receive"
#define CALL_TIMEOUT_NS (120 * G_TIME_SPAN_SECOND * 1000)
#define CHUNK (1u << 20)

struct FerryMigrator {
  GMainContext *context;
  char *name, *address, *host, *socket_dir, *session;
  GStrv image_dirs;
  FerryTtrpcClient *shim; /* the caller's */
  const FerryTlsCredentials *tls;
  InitializeOptions *options; /* ours: the caller's, TLS fields set */
  guint call_timeout_ms;
  FerryMigratorHandlers handlers;
  gpointer user_data;

  GCancellable *cancellable;
  GSocketClient *client;
  GSocketConnection *control_conn;
  GIOStream *tls_stream;
  FerryTlsPipe *pipe;
  FerryTtrpcClient *peer;
  char *token;
  FerryFdHandoff *handoff;
  FerryMigration *migration;
  gboolean cancelled;
  gboolean done;

  /* the bind step */
  GHashTable *images; /* digest -> path, of image_dir */
  GPtrArray *missing; /* digests still to send */
  char *sending;      /* the digest being sent */
  GMappedFile *file;
  guint64 offset;
  GSource *idle;
};

static void finish(FerryMigrator *m, FerryMigrationOutcome outcome, const GError *error)
{
  if (m->done)
    return;
  m->done = TRUE;
  if (m->handlers.done != NULL)
    m->handlers.done(m, outcome, error, m->user_data);
}

/* A failure before lib/migration began: nothing was touched. */
static void fail_early(FerryMigrator *m, const char *what, const GError *error)
{
  g_autoptr(GError) e = g_error_copy(error);
  g_prefix_error(&e, "%s: ", what);
  finish(m, FERRY_MIGRATION_OUTCOME_RECOVERED, e);
}

static void call_peer(FerryMigrator *m, const char *method, const ProtobufCMessage *request,
                      const ProtobufCMessageDescriptor *desc, FerryTtrpcReplyFunc done)
{
  FerryTtrpcCallOptions options = { .timeout_ns = CALL_TIMEOUT_NS };
  ferry_ttrpc_client_call(m->peer, RECEIVE_SERVICE, method, request, desc, &options, done, m);
}

/* ------------------------------------------------------------- the end -- */

typedef struct {
  FerryMigrator *m;
  FerryMigrationOutcome outcome;
  GError *error;
} Ending;

static void on_closed(FerryTtrpcClient *client, const ProtobufCMessage *r, const GError *e,
                      gpointer ud)
{
  Ending *end = ud;
  finish(end->m, end->outcome, end->error);
  g_clear_error(&end->error);
  g_free(end);
}

static void on_migration_done(FerryMigration *mig, FerryMigrationOutcome outcome,
                              const GError *error, gpointer ud)
{
  FerryMigrator *m = ud;
  g_clear_pointer(&m->handoff, ferry_fd_handoff_free);
  /* The receiver keeps the sandbox only if it runs there now. */
  Ending *end = g_new0(Ending, 1);
  end->m = m;
  end->outcome = outcome;
  end->error = error != NULL ? g_error_copy(error) : NULL;
  Ferry__Node__V1__CloseRequest req = FERRY__NODE__V1__CLOSE_REQUEST__INIT;
  req.session_id = m->session;
  req.migrated = outcome == FERRY_MIGRATION_OUTCOME_MIGRATED ||
                 outcome == FERRY_MIGRATION_OUTCOME_DESTINATION_FAILED;
  FerryTtrpcCallOptions options = { .timeout_ns = CALL_TIMEOUT_NS };
  ferry_ttrpc_client_call(m->peer, RECEIVE_SERVICE, "Close", &req.base,
                          &ferry__node__v1__close_response__descriptor, &options, on_closed, end);
}

static void on_migration_progress(FerryMigration *mig, const FerryMigrationProgress *p, gpointer ud)
{
  FerryMigrator *m = ud;
  if (m->handlers.progress != NULL)
    m->handlers.progress(m, p, m->user_data);
}

/* --------------------------------------------------------- the bind step -- */

static void bound(FerryMigrator *m, const GError *error)
{
  g_clear_pointer(&m->file, g_mapped_file_unref);
  g_clear_pointer(&m->sending, g_free);
  ferry_migration_bound(m->migration, error);
}

static void on_bind(FerryTtrpcClient *client, const ProtobufCMessage *r, const GError *e,
                    gpointer ud)
{
  FerryMigrator *m = ud;
  if (e != NULL) {
    g_autoptr(GError) err = g_error_copy(e);
    g_prefix_error(&err, "the receiver's Bind: ");
    bound(m, err);
    return;
  }
  bound(m, NULL);
}

static void send_next(FerryMigrator *m);

static void on_put(FerryTtrpcClient *client, const ProtobufCMessage *r, const GError *e,
                   gpointer ud)
{
  FerryMigrator *m = ud;
  if (e != NULL) {
    g_autoptr(GError) err = g_error_copy(e);
    g_prefix_error(&err, "sending layer %s: ", m->sending);
    bound(m, err);
    return;
  }
  send_next(m);
}

/* The next chunk of the image being sent, the next image, or Bind. */
static void send_next(FerryMigrator *m)
{
  if (m->file != NULL && m->offset >= g_mapped_file_get_length(m->file) && m->offset > 0) {
    g_clear_pointer(&m->file, g_mapped_file_unref);
    g_clear_pointer(&m->sending, g_free);
  }
  if (m->file == NULL) {
    if (m->missing->len == 0) {
      Ferry__Node__V1__BindRequest req = FERRY__NODE__V1__BIND_REQUEST__INIT;
      req.session_id = m->session;
      call_peer(m, "Bind", &req.base, &ferry__node__v1__bind_response__descriptor, on_bind);
      return;
    }
    m->sending = g_ptr_array_steal_index(m->missing, 0);
    const char *path = g_hash_table_lookup(m->images, m->sending);
    g_autoptr(GError) error = NULL;
    m->file = path != NULL ? g_mapped_file_new(path, FALSE, &error) : NULL;
    if (m->file == NULL) {
      if (error == NULL)
        g_set_error(&error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND, "layer %s is not in %s", m->sending,
                    m->image_dirs[0]);
      bound(m, error);
      return;
    }
    m->offset = 0;
  }
  gsize len = g_mapped_file_get_length(m->file);
  gsize n = MIN((gsize)CHUNK, len - (gsize)m->offset);
  Ferry__Node__V1__PutLayerRequest req = FERRY__NODE__V1__PUT_LAYER_REQUEST__INIT;
  req.session_id = m->session;
  req.digest = m->sending;
  req.offset = m->offset;
  req.data.data = (uint8_t *)g_mapped_file_get_contents(m->file) + m->offset;
  req.data.len = n;
  req.last = m->offset + n >= len;
  m->offset += n;
  if (req.last && n == 0)
    m->offset = 1; /* an empty image: done after this call */
  call_peer(m, "PutLayer", &req.base, &ferry__node__v1__put_layer_response__descriptor, on_put);
}

static void on_have(FerryTtrpcClient *client, const ProtobufCMessage *r, const GError *e,
                    gpointer ud)
{
  FerryMigrator *m = ud;
  if (e != NULL) {
    g_autoptr(GError) err = g_error_copy(e);
    g_prefix_error(&err, "the receiver's HaveLayers: ");
    bound(m, err);
    return;
  }
  const Ferry__Node__V1__HaveLayersResponse *resp = (const void *)r;
  for (size_t i = 0; i < resp->n_missing; i++)
    g_ptr_array_add(m->missing, g_strdup(resp->missing[i]));
  send_next(m);
}

/* This shim's images, by the digest of their bytes. */
static void index_dir(FerryMigrator *m, const char *dir)
{
  g_autoptr(GDir) d = g_dir_open(dir, 0, NULL);
  const char *name;
  while (d != NULL && (name = g_dir_read_name(d)) != NULL) {
    if (!g_str_has_suffix(name, ".erofs"))
      continue;
    g_autofree char *path = g_build_filename(dir, name, NULL);
    g_autoptr(GMappedFile) f = g_mapped_file_new(path, FALSE, NULL);
    if (f == NULL)
      continue;
    g_autofree char *hex = g_compute_checksum_for_data(
        G_CHECKSUM_SHA256, (const guchar *)g_mapped_file_get_contents(f),
        g_mapped_file_get_length(f));
    g_hash_table_replace(m->images, g_strconcat("sha256:", hex, NULL), g_steal_pointer(&path));
  }
}

static void index_images(FerryMigrator *m)
{
  if (m->images != NULL)
    return;
  m->images = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
  for (char **d = m->image_dirs; *d != NULL; d++)
    index_dir(m, *d);
}

static void on_migration_bind(FerryMigration *mig, const Ferry__V1__SandboxState *state,
                              gpointer ud)
{
  FerryMigrator *m = ud;
  index_images(m);
  Ferry__Node__V1__HaveLayersRequest req = FERRY__NODE__V1__HAVE_LAYERS_REQUEST__INIT;
  g_autoptr(GPtrArray) digests = g_ptr_array_new();
  for (size_t i = 0; i < state->n_containers; i++)
    for (size_t j = 0; j < state->containers[i]->n_layer_digests; j++)
      g_ptr_array_add(digests, state->containers[i]->layer_digests[j]);
  req.session_id = m->session;
  req.n_digests = digests->len;
  req.digests = (char **)digests->pdata;
  call_peer(m, "HaveLayers", &req.base, &ferry__node__v1__have_layers_response__descriptor,
            on_have);
}

/* ------------------------------------------------------- the beginning -- */

static void begin_migration(FerryMigrator *m)
{
  FerryMigrationConfig config = {
    .session_id = m->session,
    .source_socket_path = ferry_fd_handoff_path(m->handoff),
    /* The receiver hands over its own end; the path it is told is not used. */
    .destination_socket_path = "receiver",
    .init_options = m->options,
    .call_timeout_ms = m->call_timeout_ms,
  };
  static const FerryMigrationHandlers handlers = { on_migration_bind, on_migration_progress,
                                                   on_migration_done };
  g_autoptr(GError) error = NULL;
  m->migration = ferry_migration_start(m->shim, m->peer, &config, &handlers, m, &error);
  if (m->migration == NULL)
    fail_early(m, "migration", error);
}

static void on_memory_connected(GObject *object, GAsyncResult *result, gpointer ud)
{
  FerryMigrator *m = ud;
  g_autoptr(GError) local = NULL;
  g_autoptr(GSocketConnection) conn =
      g_socket_client_connect_to_host_finish(G_SOCKET_CLIENT(object), result, &local);
  if (m->done)
    return;
  if (conn == NULL) {
    g_autoptr(GError) e = g_error_new(FERRY_ERROR, FERRY_ERROR_UNAVAILABLE, "%s", local->message);
    fail_early(m, "the memory connection", e);
    return;
  }
  int fd = g_socket_get_fd(g_socket_connection_get_socket(conn));
  g_autofree char *line = g_strdup_printf("%s%s\n", FERRY_NODE_MEMORY_PREFIX, m->token);
  g_autoptr(GError) error = NULL;
  int copy = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  if (copy < 0 || !ferry_fd_set_nonblocking(copy, FALSE, &error) ||
      !ferry_write_all(copy, line, strlen(line), &error)) {
    ferry_fd_close_quietly(copy);
    if (error == NULL)
      g_set_error(&error, FERRY_ERROR, FERRY_ERROR_INTERNAL, "dup: %s", g_strerror(errno));
    fail_early(m, "the memory connection", error);
    return;
  }
  g_autofree char *path = g_strdup_printf("%s/%s-memory.sock", m->socket_dir, m->session);
  m->handoff = ferry_fd_handoff_new(path, copy, &error);
  if (m->handoff == NULL) {
    fail_early(m, "the memory connection", error);
    return;
  }
  begin_migration(m);
}

static void on_opened(FerryTtrpcClient *client, const ProtobufCMessage *r, const GError *e,
                      gpointer ud)
{
  FerryMigrator *m = ud;
  if (e != NULL) {
    fail_early(m, "the receiver's Open", e);
    return;
  }
  const Ferry__Node__V1__OpenResponse *resp = (const void *)r;
  m->token = g_strdup(resp->memory_token);
  if (m->cancelled) {
    g_autoptr(GError) c = g_error_new_literal(FERRY_ERROR, FERRY_ERROR_CANCELLED, "cancelled");
    /* Nothing moved: the receiver drops its session. */
    on_migration_done(NULL, FERRY_MIGRATION_OUTCOME_RECOVERED, c, m);
    return;
  }
  g_socket_client_connect_to_host_async(m->client, m->address, 0, m->cancellable,
                                        on_memory_connected, m);
}

static void open_session(FerryMigrator *m, int fd)
{
  g_autoptr(GError) error = NULL;
  m->peer = ferry_ttrpc_client_new(fd, &error);
  if (m->peer == NULL) {
    fail_early(m, "the control connection", error);
    return;
  }
  Ferry__Node__V1__OpenRequest req = FERRY__NODE__V1__OPEN_REQUEST__INIT;
  req.session_id = m->session;
  req.name = m->name;
  call_peer(m, "Open", &req.base, &ferry__node__v1__open_response__descriptor, on_opened);
}

static void on_handshaken(GIOStream *stream, const GError *error, gpointer ud)
{
  FerryMigrator *m = ud;
  if (m->done)
    return;
  if (error != NULL) {
    fail_early(m, "the control connection", error);
    return;
  }
  int fd = -1;
  g_autoptr(GError) local = NULL;
  m->pipe = ferry_tls_pipe_new(m->tls_stream, &fd, &local);
  if (m->pipe == NULL) {
    fail_early(m, "the control connection", local);
    return;
  }
  open_session(m, fd);
}

static void on_control_connected(GObject *object, GAsyncResult *result, gpointer ud)
{
  FerryMigrator *m = ud;
  g_autoptr(GError) local = NULL;
  GSocketConnection *conn =
      g_socket_client_connect_to_host_finish(G_SOCKET_CLIENT(object), result, &local);
  if (m->done) {
    g_clear_object(&conn);
    return;
  }
  if (conn == NULL) {
    g_autoptr(GError) e = g_error_new(FERRY_ERROR, FERRY_ERROR_UNAVAILABLE, "%s", local->message);
    fail_early(m, "the control connection", e);
    return;
  }
  m->control_conn = conn;
  node_socket_keepalive(g_socket_get_fd(g_socket_connection_get_socket(conn)));
  if (m->tls == NULL) {
    int fd = fcntl(g_socket_get_fd(g_socket_connection_get_socket(conn)), F_DUPFD_CLOEXEC, 3);
    open_session(m, fd);
    return;
  }
  g_autoptr(GError) error = NULL;
  m->tls_stream = ferry_tls_wrap(G_IO_STREAM(conn), m->tls, m->host, &error);
  if (m->tls_stream == NULL) {
    fail_early(m, "the control connection", error);
    return;
  }
  ferry_tls_handshake(m->tls_stream, m->cancellable, on_handshaken, m);
}

FerryMigrator *ferry_migrator_start(const FerryMigratorConfig *config,
                                    const FerryMigratorHandlers *handlers, gpointer user_data,
                                    GError **error)
{
  GError *local = NULL;
  g_autoptr(GSocketConnectable) where =
      config->address != NULL ? g_network_address_parse(config->address, 0, &local) : NULL;
  if (where == NULL) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                "migrate: --to HOST:PORT, not %s%s%s",
                config->address != NULL ? config->address : "nothing", local != NULL ? ": " : "",
                local != NULL ? local->message : "");
    g_clear_error(&local);
    return NULL;
  }
  if (config->shim == NULL || config->name == NULL || config->image_dirs == NULL ||
      config->image_dirs[0] == NULL || config->socket_dir == NULL) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                "migrate: the sandbox, its shim, its image cache and a socket directory are "
                "required");
    return NULL;
  }
  FerryMigrator *m = g_new0(FerryMigrator, 1);
  m->context = g_main_context_ref_thread_default();
  m->name = g_strdup(config->name);
  m->image_dirs = g_strdupv((char **)config->image_dirs);
  m->address = g_strdup(config->address);
  m->host = g_strdup(g_network_address_get_hostname(G_NETWORK_ADDRESS(where)));
  m->socket_dir = g_strdup(config->socket_dir);
  m->session = node_random_hex("mig-", 8);
  m->shim = config->shim;
  m->tls = config->tls;
  m->call_timeout_ms = config->call_timeout_ms;
  if (handlers != NULL)
    m->handlers = *handlers;
  m->user_data = user_data;
  InitializeOptions none = INITIALIZE_OPTIONS__INIT;
  InitializeOptions o = config->options != NULL ? *config->options : none;
  o.ferry_tls_dir = m->tls != NULL ? (char *)ferry_tls_credentials_dir(m->tls) : (char *)"";
  o.ferry_tls_hostname = m->tls != NULL ? m->host : (char *)"";
  gsize len = initialize_options__get_packed_size(&o);
  g_autofree guint8 *buf = g_malloc(len + 1);
  initialize_options__pack(&o, buf);
  m->options = initialize_options__unpack(NULL, len, buf);
  m->missing = g_ptr_array_new_with_free_func(g_free);
  m->cancellable = g_cancellable_new();
  m->client = g_socket_client_new();
  g_socket_client_connect_to_host_async(m->client, m->address, 0, m->cancellable,
                                        on_control_connected, m);
  return m;
}

gboolean ferry_migrator_cancel(FerryMigrator *m)
{
  if (m->done)
    return FALSE;
  if (m->migration != NULL)
    return ferry_migration_cancel(m->migration);
  m->cancelled = TRUE;
  if (m->peer == NULL) {
    /* Not even connected: stop there. */
    g_cancellable_cancel(m->cancellable);
    g_autoptr(GError) c = g_error_new_literal(FERRY_ERROR, FERRY_ERROR_CANCELLED, "cancelled");
    finish(m, FERRY_MIGRATION_OUTCOME_RECOVERED, c);
  }
  return TRUE;
}

void ferry_migrator_free(FerryMigrator *m)
{
  if (m == NULL)
    return;
  g_cancellable_cancel(m->cancellable);
  g_clear_pointer(&m->migration, ferry_migration_free);
  g_clear_pointer(&m->handoff, ferry_fd_handoff_free);
  if (m->peer != NULL)
    ferry_ttrpc_client_free(m->peer);
  g_clear_pointer(&m->pipe, ferry_tls_pipe_free);
  g_clear_object(&m->tls_stream);
  g_clear_object(&m->control_conn);
  g_clear_object(&m->client);
  g_clear_object(&m->cancellable);
  if (m->options != NULL)
    initialize_options__free_unpacked(m->options, NULL);
  if (m->images != NULL)
    g_hash_table_unref(m->images);
  g_ptr_array_unref(m->missing);
  g_clear_pointer(&m->file, g_mapped_file_unref);
  g_free(m->sending);
  g_free(m->token);
  g_free(m->name);
  g_strfreev(m->image_dirs);
  g_free(m->address);
  g_free(m->host);
  g_free(m->socket_dir);
  g_free(m->session);
  g_main_context_unref(m->context);
  g_free(m);
}
