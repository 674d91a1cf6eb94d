/*
 * The guest agent: the bridge connection (dial, serve, re-dial), the tables of
 * containers and processes, and what happens when a process has exited and its output
 * has drained: its waits are answered and, for a container's init, the container's exit
 * notification goes out.
 */
#include <signal.h>
#include <string.h>

#include "ferry/error.h"
#include "ferry/log.h"
#include "gcs-impl.h"

/* A bridge dial in flight. The transport has no way to cancel a dial, so the agent lets
 * go of it (gcs = NULL) when freed and the callback cleans up. */
struct GcsDial {
  FerryGcs *gcs;
};

typedef struct {
  GcsProcess *record;
  FerryBridgeRequest *request;
  GSource *timer;
} GcsWait;

gboolean gcs_is_uvm(const char *container_id)
{
  return container_id == NULL || *container_id == '\0' ||
         strcmp(container_id, FERRY_NULL_CONTAINER_ID) == 0;
}

static char *pid_text(GPid pid)
{
  return g_strdup_printf("%d", (int)pid);
}

/* ------------------------------------------------------------- bridge -- */

static void start_dial(FerryGcs *gcs);

static gboolean on_redial(gpointer user_data)
{
  FerryGcs *gcs = user_data;
  gcs->redial_source = 0;
  start_dial(gcs);
  return G_SOURCE_REMOVE;
}

static void schedule_redial(FerryGcs *gcs)
{
  if (gcs->freeing || gcs->shutting_down || gcs->redial_source != 0 || gcs->dial != NULL)
    return;
  gcs->redial_source = g_timeout_add(gcs->opts.redial_ms, on_redial, gcs);
}

static void on_bridge_dialed(FerryTransport *transport, FerryChannel *channel, const GError *error,
                             gpointer user_data)
{
  struct GcsDial *dial = user_data;
  FerryGcs *gcs = dial->gcs;
  g_free(dial);
  if (gcs == NULL) {
    if (channel != NULL) {
      ferry_channel_close(channel);
      ferry_channel_unref(channel);
    }
    return;
  }
  gcs->dial = NULL;
  if (error != NULL) {
    ferry_log(FERRY_LOG_DEBUG, "gcs: bridge dial failed", "error", error->message, NULL);
    schedule_redial(gcs);
    return;
  }
  g_autoptr(GError) local = NULL;
  /* The adapter takes its own reference on the channel. */
  int fd = ferry_channel_to_fd(channel, &local);
  ferry_channel_unref(channel);
  if (fd < 0 || !ferry_bridge_server_serve(gcs->server, fd, &local)) {
    ferry_log(FERRY_LOG_DEBUG, "gcs: serving the bridge failed", "error", local->message, NULL);
    schedule_redial(gcs);
    return;
  }
  gcs->connections++;
  g_autofree char *n = g_strdup_printf("%u", gcs->connections);
  ferry_log(FERRY_LOG_DEBUG, "gcs: bridge connected", "connection", n, NULL);
}

static void start_dial(FerryGcs *gcs)
{
  if (gcs->freeing || gcs->shutting_down || gcs->dial != NULL ||
      ferry_bridge_server_is_connected(gcs->server))
    return;
  gcs->dial = g_new0(struct GcsDial, 1);
  gcs->dial->gcs = gcs;
  ferry_transport_dial(gcs->transport, FERRY_GCS_BRIDGE_PORT, on_bridge_dialed, gcs->dial);
}

static void on_bridge_disconnected(FerryBridgeServer *server, const GError *error,
                                   gpointer user_data)
{
  FerryGcs *gcs = user_data;
  ferry_log(FERRY_LOG_DEBUG, "gcs: bridge disconnected", "error",
            error != NULL ? error->message : NULL, NULL);
  schedule_redial(gcs);
}

/* ---------------------------------------------------------- processes -- */

static void wait_free(GcsWait *wait)
{
  if (wait->timer != NULL) {
    g_source_destroy(wait->timer);
    g_source_unref(wait->timer);
  }
  g_free(wait);
}

static void record_free(GcsProcess *record)
{
  FerryGcs *gcs = record->gcs;
  g_hash_table_steal(gcs->records, record);
  ferry_process_set_exit_func(record->process, NULL, NULL, NULL);
  ferry_process_unref(record->process);
  for (guint i = 0; i < record->waits->len; i++) {
    GcsWait *wait = record->waits->pdata[i];
    ferry_bridge_request_drop(wait->request);
    wait_free(wait);
  }
  g_ptr_array_unref(record->waits);
  g_ptr_array_unref(record->outputs);
  g_free(record->container_id);
  g_free(record);
}

/* Take a record out of the pid index; a complete one is freed, one still running or
 * draining lives on (answering its waits) and is freed when complete. */
static void record_unindex(GcsProcess *record)
{
  FerryGcs *gcs = record->gcs;
  if (!record->indexed)
    return;
  record->indexed = FALSE;
  if (g_hash_table_lookup(gcs->processes, GINT_TO_POINTER(record->pid)) == record)
    g_hash_table_remove(gcs->processes, GINT_TO_POINTER(record->pid));
  g_queue_remove(&gcs->completed, record);
  if (record->complete)
    record_free(record);
}

static void reply_exit_code(FerryBridgeRequest *request, int exit_code)
{
  ferry_bridge_request_reply(request, json_pack("{s:I}", "ExitCode", (json_int_t)exit_code));
}

/* Exited and every output drained: answer the waits, notify for an init, and keep the
 * record for late waits (the newest max_exited of them). May free the record. */
static void record_check_complete(GcsProcess *record)
{
  if (record->complete || !record->exited || record->outputs->len > 0)
    return;
  FerryGcs *gcs = record->gcs;
  record->complete = TRUE;
  g_autofree char *pid = pid_text(record->pid);
  g_autofree char *code = g_strdup_printf("%d", record->exit_code);
  ferry_log(FERRY_LOG_DEBUG, "gcs: process exited and drained", "pid", pid, "exit_code", code,
            "container", record->container_id, NULL);
  /* An OOM kill that ended the process is told before its exit. */
  GcsContainer *c = gcs_container_lookup(gcs, record->container_id);
  if (c != NULL && c->serial == record->container_serial)
    gcs_oom_check(gcs, c);
  GPtrArray *waits = g_steal_pointer(&record->waits);
  record->waits = g_ptr_array_new();
  for (guint i = 0; i < waits->len; i++) {
    GcsWait *wait = waits->pdata[i];
    reply_exit_code(wait->request, record->exit_code);
    wait_free(wait);
  }
  g_ptr_array_unref(waits);
  if (record->is_init)
    gcs_container_init_complete(gcs, record);
  if (!record->indexed) {
    record_free(record);
    return;
  }
  g_queue_push_tail(&gcs->completed, record);
  while (g_queue_get_length(&gcs->completed) > gcs->opts.max_exited)
    record_unindex(g_queue_peek_head(&gcs->completed));
}

static void on_process_exit(FerryProcess *process, int exit_code, gpointer user_data)
{
  GcsProcess *record = user_data;
  record->exited = TRUE;
  record->exit_code = exit_code;
  for (guint i = 0; i < record->outputs->len; i++)
    gcs_relay_output_process_exited(record->outputs->pdata[i]);
  record_check_complete(record);
}

GcsProcess *gcs_process_add(FerryGcs *gcs, FerryProcess *process, const char *container_id,
                            guint64 container_serial, gboolean is_init)
{
  GcsProcess *record = g_new0(GcsProcess, 1);
  record->gcs = gcs;
  record->pid = ferry_process_get_pid(process);
  record->serial = ++gcs->next_serial;
  record->container_id = g_strdup(container_id);
  record->container_serial = container_serial;
  record->is_init = is_init;
  record->process = ferry_process_ref(process);
  record->outputs = g_ptr_array_new();
  record->waits = g_ptr_array_new();
  /* The kernel reused the pid of a process that exited: the new one wins. */
  GcsProcess *old = gcs_process_lookup(gcs, record->pid);
  if (old != NULL)
    record_unindex(old);
  g_hash_table_add(gcs->records, record);
  g_hash_table_insert(gcs->processes, GINT_TO_POINTER(record->pid), record);
  record->indexed = TRUE;
  ferry_process_set_exit_func(process, on_process_exit, record, NULL);
  GcsContainer *c = is_init ? gcs_container_lookup(gcs, container_id) : NULL;
  if (c != NULL && c->serial == container_serial)
    gcs_oom_watch_start(gcs, c);
  return record;
}

GcsProcess *gcs_process_lookup(FerryGcs *gcs, GPid pid)
{
  return g_hash_table_lookup(gcs->processes, GINT_TO_POINTER(pid));
}

void gcs_process_output_done(GcsProcess *record, GcsRelay *relay)
{
  g_ptr_array_remove(record->outputs, relay);
  record_check_complete(record);
}

static gboolean on_wait_timeout(gpointer user_data)
{
  GcsWait *wait = user_data;
  g_ptr_array_remove(wait->record->waits, wait);
  ferry_bridge_request_reply_error(wait->request, FERRY_HR_TIMEOUT,
                                   "WaitForProcess: process %d did not exit in time",
                                   (int)wait->record->pid);
  g_clear_pointer(&wait->timer, g_source_unref); /* destroyed by returning REMOVE */
  wait_free(wait);
  return G_SOURCE_REMOVE;
}

void gcs_process_wait(GcsProcess *record, FerryBridgeRequest *request, guint32 timeout_ms)
{
  if (record->complete) {
    reply_exit_code(request, record->exit_code);
    return;
  }
  if (timeout_ms == 0) {
    ferry_bridge_request_reply_error(request, FERRY_HR_TIMEOUT,
                                     "WaitForProcess: process %d has not exited", (int)record->pid);
    return;
  }
  GcsWait *wait = g_new0(GcsWait, 1);
  wait->record = record;
  wait->request = request;
  if (timeout_ms != FERRY_BRIDGE_INFINITE_TIMEOUT) {
    wait->timer = g_timeout_source_new(timeout_ms);
    g_source_set_callback(wait->timer, on_wait_timeout, wait, NULL);
    g_source_attach(wait->timer, g_main_context_get_thread_default());
  }
  g_ptr_array_add(record->waits, wait);
}

/* --------------------------------------------------------- containers -- */

GcsContainer *gcs_container_lookup(FerryGcs *gcs, const char *id)
{
  return id != NULL ? g_hash_table_lookup(gcs->containers, id) : NULL;
}

void gcs_container_signal_all(FerryGcs *gcs, const char *id, int signum)
{
  GHashTableIter iter;
  gpointer key;
  g_hash_table_iter_init(&iter, gcs->records);
  while (g_hash_table_iter_next(&iter, &key, NULL)) {
    GcsProcess *record = key;
    if (record->exited || record->container_id == NULL || strcmp(record->container_id, id) != 0)
      continue;
    g_autoptr(GError) error = NULL;
    if (!ferry_process_signal(record->process, signum, &error) &&
        !g_error_matches(error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND)) {
      g_autofree char *pid = pid_text(record->pid);
      ferry_log(FERRY_LOG_DEBUG, "gcs: signal failed", "container", id, "pid", pid, "error",
                error->message, NULL);
    }
  }
}

static const char *exit_type(GcsShutdown shutdown)
{
  switch (shutdown) {
  case GCS_SHUTDOWN_GRACEFUL:
    return "GracefulExit";
  case GCS_SHUTDOWN_FORCED:
    return "ForcedExit";
  case GCS_SHUTDOWN_NONE:
  default:
    return "UnexpectedExit";
  }
}

void gcs_container_init_complete(FerryGcs *gcs, GcsProcess *init)
{
  GcsContainer *c = gcs_container_lookup(gcs, init->container_id);
  /* A container deleted meanwhile is unknown to the host: a notification for it would
   * kill the host's bridge. */
  if (c == NULL || c->serial != init->container_serial || c->state == GCS_CONTAINER_STOPPED)
    return;
  c->state = GCS_CONTAINER_STOPPED;
  const char *type = exit_type(c->shutdown);
  ferry_log(FERRY_LOG_DEBUG, "gcs: container exited", "container", c->id, "type", type, NULL);
  ferry_bridge_server_notify(gcs->server, json_pack("{s:s, s:s, s:s, s:s, s:i}", "ContainerId",
                                                    c->id, "ActivityId", c->activity_id, "Type",
                                                    type, "Operation", "None", "Result", 0));
}

static void container_free(gpointer p)
{
  GcsContainer *c = p;
  gcs_oom_watch_free(c->oom);
  g_free(c->id);
  g_free(c->activity_id);
  g_free(c->bundle);
  g_free(c);
}

/* -------------------------------------------------------------- agent -- */

FerryGcs *ferry_gcs_new(FerryTransport *transport, FerryRuntime *runtime,
                        const FerryGcsOptions *opts, GError **error)
{
  if (transport == NULL || runtime == NULL) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                "gcs: a transport and a runtime are required");
    return NULL;
  }
  FerryGcs *gcs = g_new0(FerryGcs, 1);
  gcs->context = g_main_context_ref_thread_default();
  gcs->transport = transport;
  gcs->runtime = runtime;
  if (opts != NULL)
    gcs->opts = *opts;
  if (gcs->opts.redial_ms == 0)
    gcs->opts.redial_ms = FERRY_GCS_DEFAULT_REDIAL_MS;
  if (gcs->opts.drain_grace_ms == 0)
    gcs->opts.drain_grace_ms = FERRY_GCS_DEFAULT_DRAIN_GRACE_MS;
  if (gcs->opts.max_exited == 0)
    gcs->opts.max_exited = FERRY_GCS_DEFAULT_MAX_EXITED;
  gcs->containers = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, container_free);
  gcs->processes = g_hash_table_new(NULL, NULL);
  gcs->records = g_hash_table_new(NULL, NULL);
  gcs->relays = g_hash_table_new(NULL, NULL);
  gcs->execs = g_hash_table_new(NULL, NULL);
  gcs->storage = gcs_storage_new(opts);
  g_queue_init(&gcs->completed);
  gcs->server = ferry_bridge_server_new();
  ferry_bridge_server_set_disconnected_func(gcs->server, on_bridge_disconnected, gcs);
  gcs_register_handlers(gcs);
  start_dial(gcs);
  return gcs;
}

/* Take one key out of a set, or NULL when it is empty. */
static gpointer set_any(GHashTable *set)
{
  GHashTableIter iter;
  gpointer key = NULL;
  g_hash_table_iter_init(&iter, set);
  return g_hash_table_iter_next(&iter, &key, NULL) ? key : NULL;
}

void ferry_gcs_free(FerryGcs *gcs)
{
  if (gcs == NULL)
    return;
  gcs->freeing = TRUE;
  if (gcs->redial_source != 0)
    g_source_remove(gcs->redial_source);
  if (gcs->dial != NULL)
    gcs->dial->gcs = NULL;
  gcs_execs_abandon(gcs);
  g_clear_pointer(&gcs->storage, gcs_storage_free);
  g_clear_pointer(&gcs->server, ferry_bridge_server_free);

  /* What the agent started does not outlive it. */
  GHashTableIter iter;
  gpointer key, value;
  g_hash_table_iter_init(&iter, gcs->records);
  while (g_hash_table_iter_next(&iter, &key, NULL)) {
    GcsProcess *record = key;
    if (!record->exited)
      (void)ferry_process_signal(record->process, SIGKILL, NULL);
  }
  g_hash_table_iter_init(&iter, gcs->containers);
  while (g_hash_table_iter_next(&iter, NULL, &value)) {
    GcsContainer *c = value;
    g_autoptr(GError) error = NULL;
    if (c->state != GCS_CONTAINER_CREATED &&
        !ferry_runtime_delete_container(gcs->runtime, c->id, &error))
      ferry_log(FERRY_LOG_DEBUG, "gcs: delete container failed", "container", c->id, "error",
                error->message, NULL);
  }

  GcsRelay *relay;
  while ((relay = set_any(gcs->relays)) != NULL)
    gcs_relay_free(relay);
  g_queue_clear(&gcs->completed);
  GcsProcess *record;
  while ((record = set_any(gcs->records)) != NULL)
    record_free(record);
  g_hash_table_unref(gcs->records);
  g_hash_table_unref(gcs->processes);
  g_hash_table_unref(gcs->relays);
  g_hash_table_unref(gcs->execs);
  g_hash_table_unref(gcs->containers);
  g_main_context_unref(gcs->context);
  g_free(gcs);
}

gboolean ferry_gcs_is_connected(FerryGcs *gcs)
{
  return ferry_bridge_server_is_connected(gcs->server);
}

gboolean ferry_gcs_is_shutting_down(FerryGcs *gcs)
{
  return gcs->shutting_down;
}

guint ferry_gcs_connection_count(FerryGcs *gcs)
{
  return gcs->connections;
}

guint ferry_gcs_process_count(FerryGcs *gcs)
{
  return g_hash_table_size(gcs->records);
}

static const char *container_state_name(GcsContainerState state)
{
  switch (state) {
  case GCS_CONTAINER_CREATED:
    return "created";
  case GCS_CONTAINER_STARTING:
    return "starting";
  case GCS_CONTAINER_RUNNING:
    return "running";
  case GCS_CONTAINER_STOPPED:
  default:
    return "stopped";
  }
}

static gint compare_records(gconstpointer a, gconstpointer b)
{
  const GcsProcess *ra = *(GcsProcess *const *)a;
  const GcsProcess *rb = *(GcsProcess *const *)b;
  return (ra->pid > rb->pid) - (ra->pid < rb->pid);
}

static void dump_process(GString *out, const GcsProcess *record)
{
  g_string_append_printf(out, "  process %d%s: ", (int)record->pid,
                         record->is_init ? " (init)" : "");
  if (!record->exited)
    g_string_append(out, "running");
  else
    g_string_append_printf(out, "exited %d%s", record->exit_code,
                           record->complete ? "" : ", output draining");
  g_string_append_printf(out, ", %u wait(s)\n", record->waits->len);
}

char *ferry_gcs_dump(FerryGcs *gcs)
{
  GString *out = g_string_new(NULL);
  g_string_append_printf(out, "ferry-gcs: bridge %s (connection %u)%s\n",
                         ferry_bridge_server_is_connected(gcs->server) ? "connected"
                                                                       : "disconnected",
                         gcs->connections, gcs->shutting_down ? ", shutting down" : "");
  g_autoptr(GPtrArray) records = g_ptr_array_new();
  GHashTableIter iter;
  gpointer key;
  g_hash_table_iter_init(&iter, gcs->records);
  while (g_hash_table_iter_next(&iter, &key, NULL))
    g_ptr_array_add(records, key);
  g_ptr_array_sort(records, compare_records);
  g_autoptr(GList) ids = g_hash_table_get_keys(gcs->containers);
  ids = g_list_sort(ids, (GCompareFunc)strcmp);
  g_string_append(out, "uvm\n");
  for (guint i = 0; i < records->len; i++) {
    const GcsProcess *record = records->pdata[i];
    if (record->container_id == NULL)
      dump_process(out, record);
  }
  for (GList *l = ids; l != NULL; l = l->next) {
    const GcsContainer *c = g_hash_table_lookup(gcs->containers, l->data);
    g_string_append_printf(out, "container %s: %s, bundle %s\n", c->id,
                           container_state_name(c->state), c->bundle);
    for (guint i = 0; i < records->len; i++) {
      const GcsProcess *record = records->pdata[i];
      if (record->container_id != NULL && strcmp(record->container_id, c->id) == 0 &&
          record->container_serial == c->serial)
        dump_process(out, record);
    }
  }
  gcs_storage_dump(gcs->storage, out);
  return g_string_free(out, FALSE);
}
