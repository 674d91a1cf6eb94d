/*
 * hcsshim's Migration ttrpc service and Ferry's ferry.migration.v1.Status on the shim's
 * server (docs/migration.md, "The shim's service"): each call goes through the session
 * (lib/migration/session.c: begin, engage, commit or abort) and, for its side effect,
 * through the sandbox's migration steps (lib/sandbox/sandbox-migrate.c).
 *
 * Both sides are built: the source's (PrepareAndExportSandbox with a real
 * ferry.v1.SandboxState, CreateDuplicateSocket, TransferSandbox, FinalizeSandbox STOP
 * with the final channels, RESUME and Cancel as recovery, Cleanup) and the
 * destination's (ImportSandbox with its checks, a Task.Create carrying the source
 * container's id binding an imported container, PrepareSandbox starting the incoming
 * VM, the transfer, FinalizeSandbox RESUME reopening every process, STOP discarding),
 * with Notifications, Status and the Task API's freeze during a session.
 */
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "ferry/error.h"
#include "ferry/fd.h"
#include "ferry/json.h"
#include "ferry/log.h"
#include "ferry/migration-notifications.h"
#include "ferry/migration-wire.h"
#include "ferry/sandbox-state.h"
#include "ferry/source.h"
#include "ferry/vm-builder.h"
#include "google/protobuf/any.pb-c.h"
#include "hcsshim/migration.pb-c.h"
#include "shim-private.h"

/* How long CreateDuplicateSocket waits for the caller to hand over the socket. */
#define SOCKET_RECV_TIMEOUT_S 10
/* How often a source asks QEMU for the transfer's figures, while it runs. */
#define STATS_INTERVAL_MS 200
/* The compatibility data's CPU model: the VM document passes no -cpu, so the guest gets
 * QEMU's default model for the machine type, the same wherever the QEMU version and the
 * machine type are (both compared too). */
#define CPU_MODEL "qemu-default"

struct ShimMigration {
  FerryTaskService *svc;
  FerryMigrationSession *session;
  int socket_fd; /* the memory stream, from CreateDuplicateSocket */
  gint64 start_time_us;
  FinalizeSandboxResponse *stop_response; /* a source STOP's answer, for a retry */
  /* destination */
  Ferry__V1__SandboxState *imported; /* ImportSandbox's state */
  GHashTable *bound;                 /* source container id -> itself: bound by a Create */
  GHashTable *images;                /* layer digest -> this host's image path */
  gboolean guest_ran;                /* the imported guest was told to run here */
  GSource *drop_idle;                /* a source's moved sandbox, freed from the loop */
  /* A destination's sandbox steps in flight (Prepare's start, the transfer's start): a
   * Cancel meanwhile tears down once they ended, from cancel_idle. */
  guint dest_steps;
  struct Op *deferred_cancel;
  GSource *cancel_idle;
  /* source: the transfer's figures, refreshed while it runs */
  GSource *stats_timer;
  FerryVmMigrationStats stats;
  /* this host's QEMU for the compatibility data, probed once per machine */
  char *probed_machine;
  char *qemu_version;
  char *machine_type;
};

static void dest_step_ended(ShimMigration *m);

/* A destination's Cancel: nothing of the guest ever ran here, so the incoming VM and
 * the bound tasks go, and the shim is empty again. */
static void destination_teardown(ShimMigration *m)
{
  if (m->svc->sandbox != NULL && ferry_sandbox_migration_guest_ran(m->svc->sandbox))
    m->guest_ran = TRUE;
  g_clear_pointer(&m->svc->sandbox, ferry_sandbox_free);
  g_hash_table_remove_all(m->svc->tasks);
  g_hash_table_remove_all(m->bound);
}

static ShimMigration *mig_of(FerryTaskService *svc)
{
  if (svc->migration == NULL) {
    svc->migration = g_new0(ShimMigration, 1);
    svc->migration->svc = svc;
    svc->migration->session = ferry_migration_session_new();
    svc->migration->socket_fd = -1;
    svc->migration->bound = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    svc->migration->images = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
  }
  return svc->migration;
}

static void final_channels_free(Ferry__V1__FinalChannels *fc)
{
  if (fc == NULL)
    return;
  for (size_t i = 0; i < fc->n_channels; i++) {
    g_free(fc->channels[i]->unacked.data);
    g_free(fc->channels[i]);
  }
  g_free(fc->channels);
  g_free(fc);
}

static void stop_response_clear(ShimMigration *m)
{
  if (m->stop_response == NULL)
    return;
  final_channels_free(m->stop_response->ferry_final_channels);
  g_clear_pointer(&m->stop_response, g_free);
}

/* What one session leaves behind, gone when the next begins: a new session never
 * answers from an old one's cache. */
static void session_state_clear(ShimMigration *m)
{
  stop_response_clear(m);
  if (m->imported != NULL)
    protobuf_c_message_free_unpacked(&m->imported->base, NULL);
  m->imported = NULL;
  g_hash_table_remove_all(m->bound);
  g_hash_table_remove_all(m->images);
  m->guest_ran = FALSE;
  ferry_source_clear(&m->stats_timer);
  m->stats = (FerryVmMigrationStats){ 0 };
}

void shim_migration_free(ShimMigration *m)
{
  if (m == NULL)
    return;
  ferry_fd_close_quietly(m->socket_fd);
  ferry_source_clear(&m->drop_idle);
  ferry_source_clear(&m->cancel_idle);
  ferry_source_clear(&m->stats_timer);
  g_free(m->probed_machine);
  g_free(m->qemu_version);
  g_free(m->machine_type);
  g_free(m->deferred_cancel); /* its call goes with the server */
  stop_response_clear(m);
  if (m->imported != NULL)
    protobuf_c_message_free_unpacked(&m->imported->base, NULL);
  g_hash_table_unref(m->bound);
  g_hash_table_unref(m->images);
  ferry_migration_session_free(m->session);
  g_free(m);
}

gboolean shim_migration_allows_changes(FerryTaskService *svc, FerryTtrpcCall *call)
{
  if (svc->migration == NULL)
    return TRUE;
  g_autoptr(GError) error = NULL;
  if (ferry_migration_session_allows_task_changes(svc->migration->session, &error))
    return TRUE;
  ferry_ttrpc_call_reply_gerror(call, error);
  return FALSE;
}

/* A side effect failed after begin: the session hears, the log too (after engage),
 * and the caller gets the error. */
static void step_failed(ShimMigration *m, FerryMigrationStep *step, FerryTtrpcCall *call,
                        const GError *error)
{
  gboolean engaged = step->engaged;
  if (ferry_migration_session_abort(m->session, step, error) && engaged)
    ferry_migration_session_post_failed(m->session);
  ferry_ttrpc_call_reply_gerror(call, error);
}

/* A pending call and its step, for the callbacks of its side effect. */
typedef struct Op {
  ShimMigration *m;
  FerryTtrpcCall *call;
  FerryMigrationStep step;
} Op;

static Op *op_new(ShimMigration *m, FerryTtrpcCall *call, const FerryMigrationStep *step)
{
  Op *op = g_new0(Op, 1);
  op->m = m;
  op->call = call;
  op->step = *step;
  return op;
}

/* --------------------------------------------------------- VM's phases -- */

static void on_stats(FerryVm *vm, const GError *error, gpointer ud);

void shim_migration_on_note(FerryTaskService *svc, const FerryVmNotification *note)
{
  if (svc->migration == NULL)
    return;
  ShimMigration *m = svc->migration;
  FerryMigrationNotification n;
  ferry_migration_notification_from_vm(&n, note);
  FerryMigrationNotifications *log = ferry_migration_session_get_notifications(m->session);
  if (log != NULL)
    ferry_migration_notifications_post(log, &n);
  if (note->phase == FERRY_VM_PHASE_OFFLINE_DONE) {
    (void)ferry_migration_session_transfer_finished(m->session, NULL);
    /* The final figures, while the source's QEMU is still there to ask. */
    if (ferry_migration_session_get_role(m->session) == FERRY_MIGRATION_ROLE_SOURCE &&
        svc->sandbox != NULL)
      ferry_vm_migration_query(ferry_sandbox_get_vm(svc->sandbox), on_stats, m);
  }
  if (note->phase == FERRY_VM_PHASE_FAILED) {
    g_autoptr(GError) e = g_error_new(FERRY_ERROR, FERRY_ERROR_ABORTED, "the transfer failed: %s",
                                      note->message != NULL ? note->message : "(no reason)");
    if (!ferry_migration_session_transfer_finished(m->session, e))
      (void)ferry_migration_session_fail(m->session, e);
  }
}

/* ------------------------------------------------------ the exported state -- */

static void set_ts(Google__Protobuf__Timestamp *ts, gint64 us)
{
  google__protobuf__timestamp__init(ts);
  ts->seconds = us / G_USEC_PER_SEC;
  ts->nanos = (int32_t)((us % G_USEC_PER_SEC) * 1000);
}

/* Strings and submessages of a state being built, freed together. */
typedef struct {
  GPtrArray *strings;
  GPtrArray *blocks;
} Pool;

static char *pool_str(Pool *pool, char *s /* taken */)
{
  g_ptr_array_add(pool->strings, s);
  return s;
}

static gpointer pool_alloc(Pool *pool, gsize size)
{
  gpointer p = g_malloc0(size);
  g_ptr_array_add(pool->blocks, p);
  return p;
}

static Ferry__V1__Process *export_process(Pool *pool, Process *p)
{
  Ferry__V1__Process *out = pool_alloc(pool, sizeof(*out));
  ferry__v1__process__init(out);
  out->exec_id = p->exec_id;
  out->pid = p->pid;
  out->terminal = p->terminal;
  out->spec_json = p->spec != NULL && p->exec_id[0] != '\0'
                       ? pool_str(pool, json_dumps(p->spec, JSON_COMPACT))
                       : (char *)"";
  out->status = p->status == PROC_RUNNING   ? FERRY__V1__PROCESS_STATUS__PROCESS_STATUS_RUNNING
                : p->status == PROC_STOPPED ? FERRY__V1__PROCESS_STATUS__PROCESS_STATUS_EXITED
                                            : FERRY__V1__PROCESS_STATUS__PROCESS_STATUS_CREATED;
  out->exit_status = p->exit_status;
  out->exit_published = p->exit_published;
  if (p->status == PROC_STOPPED) {
    out->exited_at = pool_alloc(pool, sizeof(*out->exited_at));
    set_ts(out->exited_at, p->exited_at_us);
  }
  FerryGuestProcess *gp = p->cmd != NULL ? ferry_cmd_get_process(p->cmd) : NULL;
  if (gp != NULL && p->status == PROC_RUNNING) {
    FerryGuestMigrationState ms = ferry_guest_process_migration_state(gp);
    Ferry__V1__ProcessMigrationState *pm = pool_alloc(pool, sizeof(*pm));
    ferry__v1__process_migration_state__init(pm);
    pm->stdin_port = ms.stdin_port;
    pm->stdout_port = ms.stdout_port;
    pm->stderr_port = ms.stderr_port;
    pm->wait_call_id = ms.wait_call_id;
    pm->serial = ms.serial;
    pm->stdin_done = ferry_cmd_stream_done(p->cmd, FERRY_CMD_STDIN);
    pm->stdout_done = ferry_cmd_stream_done(p->cmd, FERRY_CMD_STDOUT);
    pm->stderr_done = ferry_cmd_stream_done(p->cmd, FERRY_CMD_STDERR);
    out->migration = pm;
  }
  return out;
}

static GPtrArray *values_of(GHashTable *table)
{
  GPtrArray *out = g_ptr_array_new();
  GHashTableIter it;
  gpointer value;
  g_hash_table_iter_init(&it, table);
  while (g_hash_table_iter_next(&it, NULL, &value))
    g_ptr_array_add(out, value);
  return out;
}

static gint compare_exec_ids(gconstpointer a, gconstpointer b)
{
  const Process *x = *(Process *const *)a, *y = *(Process *const *)b;
  return strcmp(x->exec_id, y->exec_id);
}

/* The layer digests of container `id` from the sandbox's description. */
static json_t *root_digests(json_t *description, const char *id)
{
  size_t i;
  json_t *root;
  json_array_foreach(json_object_get(description, "roots"), i, root)
  {
    if (g_strcmp0(json_string_value(json_object_get(root, "id")), id) == 0)
      return json_object_get(root, "digests");
  }
  return NULL;
}

static char *file_digest(const char *path)
{
  g_autoptr(GMappedFile) f = g_mapped_file_new(path, FALSE, NULL);
  if (f == NULL)
    return g_strdup("");
  return g_compute_checksum_for_data(G_CHECKSUM_SHA256,
                                     (const guchar *)g_mapped_file_get_contents(f),
                                     g_mapped_file_get_length(f));
}

/* This host's QEMU as the compatibility data names it (its version, what `machine`
 * resolves to), probed on first use. */
static gboolean probe_qemu(ShimMigration *m, const char *machine, GError **error)
{
  if (m->qemu_version != NULL && g_strcmp0(m->probed_machine, machine) == 0)
    return TRUE;
  g_autofree char *version = NULL, *type = NULL;
  if (!ferry_vm_probe_qemu(m->svc->vm.qemu_binary, machine, &version, &type, error))
    return FALSE;
  g_free(m->probed_machine);
  g_free(m->qemu_version);
  g_free(m->machine_type);
  m->probed_machine = g_strdup(machine);
  m->qemu_version = g_steal_pointer(&version);
  m->machine_type = g_steal_pointer(&type);
  return TRUE;
}

static void fill_qemu(ShimMigration *m, Ferry__V1__Compatibility *c)
{
  c->qemu_version = m->qemu_version;
  c->machine_type = m->machine_type;
  c->cpu_model = (char *)CPU_MODEL;
}

/* What this host runs, for the destination's compatibility check. */
static void fill_compat(Pool *pool, FerryTaskService *svc, Ferry__V1__Compatibility *c)
{
  ferry__v1__compatibility__init(c);
  fill_qemu(svc->migration, c);
  FerryVm *vm = ferry_sandbox_get_vm(svc->sandbox);
  c->accelerator = (char *)ferry_vm_accel_name(ferry_vm_get_accel(vm));
  g_autofree char *kernel = file_digest(svc->kernel);
  g_autofree char *initrd = file_digest(svc->initrd);
  c->guest_image_digest =
      pool_str(pool, g_strdup_printf("sha256-kernel:%s,sha256-initrd:%s", kernel, initrd));
  c->agent_protocol_version = 4;
}

static GBytes *export_state(ShimMigration *m)
{
  FerryTaskService *svc = m->svc;
  Pool pool = { g_ptr_array_new_with_free_func(g_free), g_ptr_array_new_with_free_func(g_free) };
  g_autoptr(json_t) description = ferry_sandbox_migration_describe(svc->sandbox);
  Ferry__V1__SandboxState state = FERRY__V1__SANDBOX_STATE__INIT;
  state.schema_version = FERRY_SANDBOX_STATE_SCHEMA_VERSION;
  state.sandbox_id = svc->sandbox_id;
  Ferry__V1__Compatibility compat;
  fill_compat(&pool, svc, &compat);
  state.compatibility = &compat;
  state.vm_document = pool_str(&pool, json_dumps(description, JSON_COMPACT | JSON_SORT_KEYS));
  json_t *disks = json_object_get(description, "disks");
  state.n_disks = json_array_size(disks);
  state.disks = pool_alloc(&pool, sizeof(*state.disks) * (state.n_disks + 1));
  for (size_t i = 0; i < state.n_disks; i++) {
    json_t *d = json_array_get(disks, i);
    Ferry__V1__Disk *disk = pool_alloc(&pool, sizeof(*disk));
    ferry__v1__disk__init(disk);
    disk->controller = (char *)"0";
    disk->lun = (uint32_t)json_integer_value(json_object_get(d, "lun"));
    disk->digest = (char *)json_string_value(json_object_get(d, "digest"));
    state.disks[i] = disk;
  }
  g_autoptr(GPtrArray) tasks = values_of(svc->tasks);
  state.n_containers = tasks->len;
  state.containers = pool_alloc(&pool, sizeof(*state.containers) * (tasks->len + 1));
  for (guint i = 0; i < tasks->len; i++) {
    Task *t = tasks->pdata[i];
    Ferry__V1__Container *c = pool_alloc(&pool, sizeof(*c));
    ferry__v1__container__init(c);
    c->id = t->id;
    json_t *digests = root_digests(description, t->id);
    c->n_layer_digests = json_array_size(digests);
    c->layer_digests = pool_alloc(&pool, sizeof(char *) * (c->n_layer_digests + 1));
    for (size_t j = 0; j < c->n_layer_digests; j++)
      c->layer_digests[j] = (char *)json_string_value(json_array_get(digests, j));
    c->scratch_mb = svc->scratch_mb;
    c->spec_json = pool_str(&pool, json_dumps(t->spec, JSON_COMPACT));
    c->paused = t->paused;
    g_autoptr(GPtrArray) execs = values_of(t->execs);
    g_ptr_array_sort(execs, compare_exec_ids);
    c->n_processes = 1 + execs->len;
    c->processes = pool_alloc(&pool, sizeof(*c->processes) * (c->n_processes + 1));
    c->processes[0] = export_process(&pool, t->init);
    for (guint j = 0; j < execs->len; j++)
      c->processes[1 + j] = export_process(&pool, execs->pdata[j]);
    state.containers[i] = c;
  }
  Ferry__V1__Floors floors = FERRY__V1__FLOORS__INIT;
  FerryGuestConnection *gc = ferry_sandbox_get_guest(svc->sandbox);
  floors.next_port = ferry_guest_connection_next_port(gc);
  floors.next_request_id = ferry_guest_connection_next_id(gc);
  state.floors = &floors;
  /* The channels as they stand now, for a destination that never gets the final ones. */
  g_autoptr(FerrySandboxHandover) snapshot = ferry_sandbox_migration_snapshot(svc->sandbox, NULL);
  g_autoptr(GArray) states = g_array_new(FALSE, TRUE, sizeof(FerryMuxChannelState));
  g_array_set_clear_func(states, (GDestroyNotify)ferry_mux_channel_state_clear);
  for (guint i = 0; snapshot != NULL && i < snapshot->channels->len; i++) {
    FerryMuxChannelState st;
    if (ferry_mux_channel_state_deserialize(snapshot->channels->pdata[i], &st, NULL))
      g_array_append_val(states, st);
  }
  state.n_channels = states->len;
  state.channels = pool_alloc(&pool, sizeof(*state.channels) * (states->len + 1));
  for (guint i = 0; i < states->len; i++) {
    state.channels[i] = pool_alloc(&pool, sizeof(Ferry__V1__MuxChannelState));
    ferry_sandbox_state_channel_from_mux(&g_array_index(states, FerryMuxChannelState, i),
                                         state.channels[i]);
  }
  GBytes *packed = ferry_sandbox_state_pack(&state);
  g_ptr_array_unref(pool.strings);
  g_ptr_array_unref(pool.blocks);
  return packed;
}

/* ------------------------------------------------- PrepareAndExportSandbox -- */

static void options_from(const InitializeOptions *in, FerryVmMigrationOptions *out)
{
  *out = (FerryVmMigrationOptions){ 0 };
  if (in == NULL)
    return;
  const MemoryTransferThrottleParams *t = in->memory_transfer_throttle_params;
  if (t != NULL) {
    out->skip_throttling = t->skip_throttling;
    out->throttling_scale = t->throttling_scale;
    out->minimum_throttle_percentage = t->minimum_throttle_percentage;
    out->maximum_passes = t->maximum_number_of_brownout_transfer_passes;
    out->target_blackout_ms = t->target_blackout_transfer_time;
    out->blackout_threshold_ms = t->blackout_time_threshold_for_cancelling_migration;
  }
  if (in->compression_settings != NULL)
    out->compression_threads = in->compression_settings->throttle_worker_count;
  out->cancel_if_blackout_threshold_exceeds = in->cancel_if_blackout_threshold_exceeds;
  out->max_bandwidth = in->ferry_max_bandwidth;
  out->no_postcopy = in->ferry_no_postcopy;
  /* Borrowed from the request: the VM copies them. */
  out->tls_dir =
      in->ferry_tls_dir != NULL && in->ferry_tls_dir[0] != '\0' ? in->ferry_tls_dir : NULL;
  out->tls_hostname = in->ferry_tls_hostname != NULL && in->ferry_tls_hostname[0] != '\0'
                          ? in->ferry_tls_hostname
                          : NULL;
}

/* Everything that would make the export fail, before the VM is touched. */
static gboolean can_export(FerryTaskService *svc, GError **error)
{
  if (svc->sandbox == NULL || !ferry_sandbox_is_running(svc->sandbox)) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION,
                "no sandbox runs in this shim");
    return FALSE;
  }
  GHashTableIter it;
  gpointer value;
  g_hash_table_iter_init(&it, svc->tasks);
  while (g_hash_table_iter_next(&it, NULL, &value)) {
    Task *t = value;
    if (!t->ready || t->deleting || t->init->starting) {
      g_set_error(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION,
                  "task %s is being created, started or deleted", t->id);
      return FALSE;
    }
    if (t->init->terminal) {
      g_set_error(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION,
                  "task %s has a terminal, which does not migrate yet", t->id);
      return FALSE;
    }
    GHashTableIter eit;
    gpointer ev;
    g_hash_table_iter_init(&eit, t->execs);
    while (g_hash_table_iter_next(&eit, NULL, &ev)) {
      Process *p = ev;
      if (p->starting) {
        g_set_error(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION,
                    "process %s of task %s is being started", p->exec_id, t->id);
        return FALSE;
      }
      if (p->terminal && p->status != PROC_STOPPED) {
        g_set_error(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION,
                    "process %s of task %s has a terminal, which does not migrate yet", p->exec_id,
                    t->id);
        return FALSE;
      }
    }
  }
  return TRUE;
}

static void on_prepared(FerrySandbox *sandbox, const GError *error, gpointer ud)
{
  Op *op = ud;
  ShimMigration *m = op->m;
  if (error != NULL) {
    step_failed(m, &op->step, op->call, error);
    g_free(op);
    return;
  }
  g_autoptr(GBytes) packed = export_state(m);
  if (!ferry_migration_session_commit(m->session, &op->step)) {
    ferry_ttrpc_call_reply_error(op->call, FERRY_ERROR_CANCELLED, "the session was cancelled");
    g_free(op);
    return;
  }
  Google__Protobuf__Any any = GOOGLE__PROTOBUF__ANY__INIT;
  any.type_url = (char *)FERRY_SANDBOX_STATE_TYPE_URL;
  gsize len = 0;
  any.value.data = (uint8_t *)g_bytes_get_data(packed, &len);
  any.value.len = len;
  PrepareAndExportSandboxResponse resp = PREPARE_AND_EXPORT_SANDBOX_RESPONSE__INIT;
  resp.config = &any;
  ferry_ttrpc_call_reply(op->call, &resp.base);
  g_free(op);
}

static void handle_prepare_and_export(FerryTtrpcCall *call, const ProtobufCMessage *request,
                                      gpointer ud)
{
  ShimMigration *m = mig_of(ud);
  const PrepareAndExportSandboxRequest *req = (const PrepareAndExportSandboxRequest *)request;
  FerryMigrationStep step;
  g_autoptr(GError) error = NULL;
  if (!ferry_migration_session_begin_prepare_and_export(m->session, req->session_id, &step,
                                                        &error)) {
    ferry_ttrpc_call_reply_gerror(call, error);
    return;
  }
  if (!can_export(m->svc, &error) ||
      !probe_qemu(m, ferry_vm_doc_machine(ferry_vm_get_doc(ferry_sandbox_get_vm(m->svc->sandbox))),
                  &error)) {
    step_failed(m, &step, call, error);
    return;
  }
  if (!ferry_migration_session_engage(m->session, &step)) {
    ferry_ttrpc_call_reply_error(call, FERRY_ERROR_CANCELLED, "the session was cancelled");
    return;
  }
  if (!step.noop) {
    session_state_clear(m);
    ferry_shim_events_hold(
        m->svc->events); /* an exit now is the destination's to report, if it moves */
  }
  m->start_time_us = g_get_real_time();
  FerryVmMigrationOptions options;
  options_from(req->init_options, &options);
  ferry_sandbox_migration_prepare(m->svc->sandbox, &options, on_prepared, op_new(m, call, &step));
}

/* --------------------------------------------------- CreateDuplicateSocket -- */

/* The socket description is a unix socket path: connect there, receive one fd with
 * SCM_RIGHTS, and keep it if it is a connected stream socket (docs/migration.md). */
static int collect_socket(const ProtobufCBinaryData *info, GError **error)
{
  struct sockaddr_un addr = { .sun_family = AF_UNIX };
  if (info->len == 0 || info->len >= sizeof(addr.sun_path) ||
      memchr(info->data, '\0', info->len) != NULL) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                "protocol_info must be a unix socket path of at most %zu bytes",
                sizeof(addr.sun_path) - 1);
    return -1;
  }
  memcpy(addr.sun_path, info->data, info->len);
  g_auto(FerryFd) sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct timeval tv = { .tv_sec = SOCKET_RECV_TIMEOUT_S };
  if (sock < 0 || setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0 ||
      connect(sock, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
    ferry_error_set_errno(error, errno, "connect to %s", addr.sun_path);
    return -1;
  }
  char byte;
  gsize got = 0;
  int fd = -1;
  if (!ferry_fd_recv(sock, &byte, 1, &got, &fd, error))
    return -1;
  if (fd < 0) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "%s sent no file descriptor",
                addr.sun_path);
    return -1;
  }
  int type = 0;
  socklen_t tlen = sizeof(type);
  struct sockaddr_storage peer;
  socklen_t plen = sizeof(peer);
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tlen) < 0 || type != SOCK_STREAM ||
      getpeername(fd, (struct sockaddr *)&peer, &plen) < 0) {
    close(fd);
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                "the descriptor from %s is not a connected stream socket", addr.sun_path);
    return -1;
  }
  return fd;
}

static void start_transfer(ShimMigration *m, FerryTtrpcCall *call, FerryMigrationStep *step);

static void handle_create_duplicate_socket(FerryTtrpcCall *call, const ProtobufCMessage *request,
                                           gpointer ud)
{
  ShimMigration *m = mig_of(ud);
  const CreateDuplicateSocketRequest *req = (const CreateDuplicateSocketRequest *)request;
  FerryMigrationStep step;
  g_autoptr(GError) error = NULL;
  if (!ferry_migration_session_begin_create_duplicate_socket(
          m->session, req->session_id, req->protocol_info.len, &step, &error)) {
    ferry_ttrpc_call_reply_gerror(call, error);
    return;
  }
  int fd = collect_socket(&req->protocol_info, &error);
  if (fd < 0) {
    step_failed(m, &step, call, error);
    return;
  }
  ferry_fd_close_quietly(m->socket_fd);
  m->socket_fd = fd;
  if (step.to == FERRY_MIGRATION_STATE_TRANSFERRING) {
    start_transfer(m, call, &step); /* a TransferSandbox was waiting for it */
    return;
  }
  ferry_migration_session_commit(m->session, &step);
  CreateDuplicateSocketResponse resp = CREATE_DUPLICATE_SOCKET_RESPONSE__INIT;
  ferry_ttrpc_call_reply(call, &resp.base);
}

/* ------------------------------------------------------ the transfer's figures -- */

static void on_stats(FerryVm *vm, const GError *error, gpointer ud)
{
  ShimMigration *m = ud;
  const FerryVmMigrationStats *st = ferry_vm_migration_get_stats(vm);
  if (error != NULL || !st->valid)
    return;
  m->stats = *st;
  ferry_migration_session_set_progress(m->session, st->transferred, st->total);
}

/* While the source transfers, and once more when it stopped (the final figures). A
 * query the sandbox's VM takes with it when freed is never answered. */
static gboolean on_stats_timer(gpointer ud)
{
  ShimMigration *m = ud;
  FerryVm *vm = m->svc->sandbox != NULL ? ferry_sandbox_get_vm(m->svc->sandbox) : NULL;
  if (vm != NULL)
    ferry_vm_migration_query(vm, on_stats, m);
  if (vm == NULL ||
      ferry_migration_session_get_state(m->session) != FERRY_MIGRATION_STATE_TRANSFERRING) {
    ferry_source_clear(&m->stats_timer);
    return G_SOURCE_REMOVE;
  }
  return G_SOURCE_CONTINUE;
}

/* --------------------------------------------------------- TransferSandbox -- */

static void on_transfer_started(FerrySandbox *sandbox, const GError *error, gpointer ud)
{
  Op *op = ud;
  ShimMigration *m = op->m;
  if (error != NULL) {
    step_failed(m, &op->step, op->call, error);
  } else if (!ferry_migration_session_commit(m->session, &op->step)) {
    ferry_ttrpc_call_reply_error(op->call, FERRY_ERROR_CANCELLED, "the session was cancelled");
  } else {
    /* Either call may have started it; both answer with an empty message. */
    TransferSandboxResponse resp = TRANSFER_SANDBOX_RESPONSE__INIT;
    ferry_ttrpc_call_reply(op->call, &resp.base);
    if (ferry_migration_session_get_role(m->session) == FERRY_MIGRATION_ROLE_SOURCE &&
        m->stats_timer == NULL)
      m->stats_timer = ferry_timeout_new(m->svc->context, STATS_INTERVAL_MS, on_stats_timer, m);
  }
  g_free(op);
  if (ferry_migration_session_get_role(m->session) == FERRY_MIGRATION_ROLE_DESTINATION)
    dest_step_ended(m);
}

static void start_transfer(ShimMigration *m, FerryTtrpcCall *call, FerryMigrationStep *step)
{
  if (m->svc->sandbox == NULL) {
    g_autoptr(GError) e =
        g_error_new(FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION, "no sandbox to transfer");
    step_failed(m, step, call, e);
    return;
  }
  if (!ferry_migration_session_engage(m->session, step)) {
    ferry_ttrpc_call_reply_error(call, FERRY_ERROR_CANCELLED, "the session was cancelled");
    return;
  }
  if (ferry_migration_session_get_role(m->session) == FERRY_MIGRATION_ROLE_DESTINATION)
    m->dest_steps++;
  ferry_sandbox_migration_transfer(m->svc->sandbox, m->socket_fd, on_transfer_started,
                                   op_new(m, call, step));
}

static void handle_transfer(FerryTtrpcCall *call, const ProtobufCMessage *request, gpointer ud)
{
  ShimMigration *m = mig_of(ud);
  const TransferSandboxRequest *req = (const TransferSandboxRequest *)request;
  FerryMigrationStep step;
  g_autoptr(GError) error = NULL;
  if (!ferry_migration_session_begin_transfer(m->session, req->session_id, &step, &error)) {
    ferry_ttrpc_call_reply_gerror(call, error);
    return;
  }
  if (step.noop || step.to != FERRY_MIGRATION_STATE_TRANSFERRING) {
    /* A retry, or no socket yet: the transfer starts when CreateDuplicateSocket
     * brings it. */
    ferry_migration_session_commit(m->session, &step);
    TransferSandboxResponse resp = TRANSFER_SANDBOX_RESPONSE__INIT;
    ferry_ttrpc_call_reply(call, &resp.base);
    return;
  }
  start_transfer(m, call, &step);
}

/* --------------------------------------------------------- FinalizeSandbox -- */

static void finalize_destination(ShimMigration *m, FerryTtrpcCall *call,
                                 const FinalizeSandboxRequest *req, FerryMigrationStep *step);

static FinalizeSandboxResponse *stop_response_new(const FerrySandboxHandover *h, GError **error)
{
  Ferry__V1__FinalChannels *fc = g_new0(Ferry__V1__FinalChannels, 1);
  ferry__v1__final_channels__init(fc);
  fc->next_port = h->next_port;
  fc->next_request_id = h->next_request_id;
  fc->channels = g_new0(Ferry__V1__MuxChannelState *, h->channels->len + 1);
  for (guint i = 0; i < h->channels->len; i++) {
    FerryMuxChannelState st;
    if (!ferry_mux_channel_state_deserialize(h->channels->pdata[i], &st, error)) {
      final_channels_free(fc);
      return NULL;
    }
    Ferry__V1__MuxChannelState *out = g_new0(Ferry__V1__MuxChannelState, 1);
    ferry_sandbox_state_channel_from_mux(&st, out);
    /* Our own copy of the unacknowledged bytes: st is cleared below. */
    out->unacked.data = g_memdup2(out->unacked.data, out->unacked.len);
    fc->channels[fc->n_channels++] = out;
    ferry_mux_channel_state_clear(&st);
  }
  FinalizeSandboxResponse *resp = g_new0(FinalizeSandboxResponse, 1);
  finalize_sandbox_response__init(resp);
  resp->ferry_final_channels = fc;
  return resp;
}

static void on_recovered(FerrySandbox *sandbox, const GError *error, gpointer ud)
{
  Op *op = ud;
  ShimMigration *m = op->m;
  if (error != NULL) {
    step_failed(m, &op->step, op->call, error);
    g_free(op);
    return;
  }
  stop_response_clear(m); /* a STOP's handover is undone: nothing to clean up after it */
  ferry_shim_events_release(m->svc->events,
                            TRUE); /* the guest runs here: its exits are ours to tell */
  ferry_migration_session_commit(m->session, &op->step);
  if (op->step.call == FERRY_MIGRATION_CALL_CANCEL) {
    CancelResponse resp = CANCEL_RESPONSE__INIT;
    ferry_ttrpc_call_reply(op->call, &resp.base);
  } else {
    FinalizeSandboxResponse resp = FINALIZE_SANDBOX_RESPONSE__INIT;
    ferry_ttrpc_call_reply(op->call, &resp.base);
  }
  g_free(op);
}

static void handle_finalize(FerryTtrpcCall *call, const ProtobufCMessage *request, gpointer ud)
{
  ShimMigration *m = mig_of(ud);
  const FinalizeSandboxRequest *req = (const FinalizeSandboxRequest *)request;
  FerryMigrationStep step;
  g_autoptr(GError) error = NULL;
  if (!ferry_migration_session_begin_finalize(
          m->session, req->session_id, (FerryMigrationFinalizeAction)req->action, &step, &error)) {
    ferry_ttrpc_call_reply_gerror(call, error);
    return;
  }
  if (ferry_migration_session_get_role(m->session) == FERRY_MIGRATION_ROLE_DESTINATION) {
    finalize_destination(m, call, req, &step);
    return;
  }
  if (step.action == FERRY_MIGRATION_FINALIZE_RESUME) {
    /* The source takes the guest back (the destination never ran it). */
    if (step.noop) {
      ferry_migration_session_commit(m->session, &step);
      FinalizeSandboxResponse resp = FINALIZE_SANDBOX_RESPONSE__INIT;
      ferry_ttrpc_call_reply(call, &resp.base);
      return;
    }
    if (!ferry_migration_session_engage(m->session, &step)) {
      ferry_ttrpc_call_reply_error(call, FERRY_ERROR_CANCELLED, "the session was cancelled");
      return;
    }
    ferry_sandbox_migration_recover(m->svc->sandbox, on_recovered, op_new(m, call, &step));
    return;
  }
  /* STOP: the destination takes over; the same final channels for a retry. */
  if (m->stop_response == NULL) {
    if (!ferry_migration_session_engage(m->session, &step)) {
      ferry_ttrpc_call_reply_error(call, FERRY_ERROR_CANCELLED, "the session was cancelled");
      return;
    }
    g_autoptr(FerrySandboxHandover) h = ferry_sandbox_migration_handover(m->svc->sandbox, &error);
    if (h != NULL)
      m->stop_response = stop_response_new(h, &error);
    if (m->stop_response == NULL) {
      step_failed(m, &step, call, error);
      return;
    }
  }
  ferry_migration_session_commit(m->session, &step);
  ferry_ttrpc_call_reply(call, &m->stop_response->base);
}

/* ------------------------------------------------------ Cancel and Cleanup -- */

static void handle_cancel(FerryTtrpcCall *call, const ProtobufCMessage *request, gpointer ud)
{
  ShimMigration *m = mig_of(ud);
  const CancelRequest *req = (const CancelRequest *)request;
  FerryMigrationStep step;
  g_autoptr(GError) error = NULL;
  if (!ferry_migration_session_begin_cancel(m->session, req->session_id, &step, &error)) {
    ferry_ttrpc_call_reply_gerror(call, error);
    return;
  }
  ferry_migration_session_engage(m->session, &step);
  if (!step.noop &&
      ferry_migration_session_get_role(m->session) == FERRY_MIGRATION_ROLE_DESTINATION) {
    if (m->dest_steps > 0 || m->deferred_cancel != NULL) {
      /* The sandbox is in the middle of a step: tear down once it ended. */
      g_assert(m->deferred_cancel == NULL); /* a second Cancel is a no-op */
      m->deferred_cancel = op_new(m, call, &step);
      return;
    }
    destination_teardown(m);
  } else if (!step.noop &&
             ferry_migration_session_get_role(m->session) == FERRY_MIGRATION_ROLE_SOURCE &&
             m->svc->sandbox != NULL) {
    /* Whatever ran, the guest runs here again (a STOP's handover is undone too). */
    stop_response_clear(m);
    ferry_sandbox_migration_recover(m->svc->sandbox, on_recovered, op_new(m, call, &step));
    return;
  }
  ferry_migration_session_commit(m->session, &step);
  CancelResponse resp = CANCEL_RESPONSE__INIT;
  ferry_ttrpc_call_reply(call, &resp.base);
}

static gboolean finish_deferred_cancel(gpointer ud)
{
  ShimMigration *m = ud;
  ferry_source_clear(&m->cancel_idle);
  Op *op = g_steal_pointer(&m->deferred_cancel);
  destination_teardown(m);
  ferry_migration_session_commit(m->session, &op->step);
  CancelResponse resp = CANCEL_RESPONSE__INIT;
  ferry_ttrpc_call_reply(op->call, &resp.base);
  g_free(op);
  return G_SOURCE_REMOVE;
}

static void dest_step_ended(ShimMigration *m)
{
  g_assert(m->dest_steps > 0);
  m->dest_steps--;
  /* From the loop: this runs inside a callback of the sandbox the teardown frees. */
  if (m->dest_steps == 0 && m->deferred_cancel != NULL && m->cancel_idle == NULL)
    m->cancel_idle = ferry_idle_new(m->svc->context, finish_deferred_cancel, m);
}

void shim_migration_bind_begin(FerryTaskService *svc)
{
  mig_of(svc)->dest_steps++;
}

void shim_migration_bind_end(FerryTaskService *svc)
{
  dest_step_ended(mig_of(svc));
}

static gboolean drop_moved_sandbox(gpointer ud)
{
  ShimMigration *m = ud;
  ferry_source_clear(&m->drop_idle);
  g_clear_pointer(&m->svc->sandbox, ferry_sandbox_free);
  return G_SOURCE_REMOVE;
}

static void on_cleaned_up(FerrySandbox *sandbox, const GError *error, gpointer ud)
{
  Op *op = ud;
  ShimMigration *m = op->m;
  if (error != NULL) {
    step_failed(m, &op->step, op->call, error);
    g_free(op);
    return;
  }
  ferry_fd_clear(&m->socket_fd);
  stop_response_clear(m);
  ferry_shim_events_release(m->svc->events, FALSE); /* the destination reports what happened */
  /* The sandbox moved: its tasks are the destination's now. Nothing exited, so no
   * event goes out; the shim is empty (and may be a destination itself). The sandbox
   * goes from the loop (this runs inside its callback). */
  g_hash_table_remove_all(m->svc->tasks);
  if (m->drop_idle == NULL)
    m->drop_idle = ferry_idle_new(m->svc->context, drop_moved_sandbox, m);
  ferry_migration_session_commit(m->session, &op->step);
  CleanupResponse resp = CLEANUP_RESPONSE__INIT;
  ferry_ttrpc_call_reply(op->call, &resp.base);
  g_free(op);
}

static void handle_cleanup(FerryTtrpcCall *call, const ProtobufCMessage *request, gpointer ud)
{
  ShimMigration *m = mig_of(ud);
  const CleanupRequest *req = (const CleanupRequest *)request;
  FerryMigrationStep step;
  g_autoptr(GError) error = NULL;
  if (!ferry_migration_session_begin_cleanup(m->session, req->session_id, &step, &error)) {
    ferry_ttrpc_call_reply_gerror(call, error);
    return;
  }
  gboolean handed_over =
      ferry_migration_session_get_role(m->session) == FERRY_MIGRATION_ROLE_SOURCE &&
      ferry_migration_session_get_finalize_action(m->session) == FERRY_MIGRATION_FINALIZE_STOP &&
      m->stop_response != NULL;
  if (handed_over) {
    /* The destination runs the guest: the paused QEMU here ends. */
    ferry_migration_session_engage(m->session, &step);
    ferry_sandbox_migration_cleanup(m->svc->sandbox, on_cleaned_up, op_new(m, call, &step));
    return;
  }
  ferry_fd_clear(&m->socket_fd);
  if (ferry_migration_session_get_role(m->session) == FERRY_MIGRATION_ROLE_SOURCE)
    ferry_shim_events_release(m->svc->events,
                              TRUE); /* the session ended with the guest still here */
  ferry_migration_session_commit(m->session, &step);
  CleanupResponse resp = CLEANUP_RESPONSE__INIT;
  ferry_ttrpc_call_reply(call, &resp.base);
}

/* ------------------------------------------------ the destination's calls -- */

/* This host's compatibility data, for comparing with the state's. */
static void local_compat(FerryTaskService *svc, Pool *pool, Ferry__V1__Compatibility *c)
{
  ferry__v1__compatibility__init(c);
  fill_qemu(svc->migration, c);
  FerryVmAccel accel = svc->vm.accel != FERRY_VM_ACCEL_AUTO
                           ? svc->vm.accel
                           : ferry_vm_detect_accel(NULL, NULL, NULL);
  c->accelerator = (char *)ferry_vm_accel_name(accel);
  g_autofree char *kernel = file_digest(svc->kernel);
  g_autofree char *initrd = file_digest(svc->initrd);
  c->guest_image_digest =
      pool_str(pool, g_strdup_printf("sha256-kernel:%s,sha256-initrd:%s", kernel, initrd));
  c->agent_protocol_version = 4;
}

static void handle_import(FerryTtrpcCall *call, const ProtobufCMessage *request, gpointer ud)
{
  ShimMigration *m = mig_of(ud);
  FerryTaskService *svc = m->svc;
  const ImportSandboxRequest *req = (const ImportSandboxRequest *)request;
  FerryMigrationStep step;
  g_autoptr(GError) error = NULL;
  if (!ferry_migration_session_begin_import(m->session, req->session_id, req->sandbox_id, &step,
                                            &error)) {
    ferry_ttrpc_call_reply_gerror(call, error);
    return;
  }
  if (svc->sandbox != NULL || g_hash_table_size(svc->tasks) > 0) {
    g_set_error(&error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION,
                "this shim runs a sandbox or tasks already: a destination starts empty");
    step_failed(m, &step, call, error);
    return;
  }
  if (req->config == NULL) {
    g_set_error(&error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "ImportSandbox: no config");
    step_failed(m, &step, call, error);
    return;
  }
  Ferry__V1__SandboxState *state = ferry_sandbox_state_unpack(
      req->config->type_url, req->config->value.data, req->config->value.len, &error);
  if (state == NULL || !ferry_sandbox_state_validate(state, &error)) {
    if (state != NULL)
      protobuf_c_message_free_unpacked(&state->base, NULL);
    step_failed(m, &step, call, error);
    return;
  }
  /* Before anything starts here: the same guest image and accelerator. */
  Pool pool = { g_ptr_array_new_with_free_func(g_free), g_ptr_array_new_with_free_func(g_free) };
  Ferry__V1__Compatibility local;
  /* The machine this host renders for an incoming sandbox (the shim's documents). */
  if (!probe_qemu(m, FERRY_VM_DEFAULT_MACHINE, &error)) {
    g_ptr_array_unref(pool.strings);
    g_ptr_array_unref(pool.blocks);
    protobuf_c_message_free_unpacked(&state->base, NULL);
    step_failed(m, &step, call, error);
    return;
  }
  local_compat(svc, &pool, &local);
  gboolean compatible = state->compatibility != NULL &&
                        ferry_sandbox_state_check_compat(&local, state->compatibility, &error);
  g_ptr_array_unref(pool.strings);
  g_ptr_array_unref(pool.blocks);
  if (!compatible) {
    if (error == NULL)
      g_set_error(&error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                  "the state has no compatibility data");
    protobuf_c_message_free_unpacked(&state->base, NULL);
    step_failed(m, &step, call, error);
    return;
  }
  session_state_clear(m);
  m->imported = state;
  m->start_time_us = g_get_real_time();
  ferry_migration_session_commit(m->session, &step);
  ImportSandboxResponse resp = IMPORT_SANDBOX_RESPONSE__INIT;
  ferry_ttrpc_call_reply(call, &resp.base);
}

gboolean shim_migration_is_importing(FerryTaskService *svc)
{
  return svc->migration != NULL && svc->migration->imported != NULL &&
         ferry_migration_session_get_state(svc->migration->session) ==
             FERRY_MIGRATION_STATE_DESTINATION_IMPORTED;
}

const Ferry__V1__Container *shim_migration_container_to_bind(FerryTaskService *svc,
                                                             const char *source_id, GError **error)
{
  ShimMigration *m = svc->migration;
  if (m == NULL || m->imported == NULL ||
      ferry_migration_session_get_state(m->session) != FERRY_MIGRATION_STATE_DESTINATION_IMPORTED) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION,
                "no migration session has imported container %s", source_id);
    return NULL;
  }
  for (size_t i = 0; i < m->imported->n_containers; i++) {
    const Ferry__V1__Container *c = m->imported->containers[i];
    if (g_strcmp0(c->id, source_id) != 0)
      continue;
    if (g_hash_table_contains(m->bound, source_id)) {
      g_set_error(error, FERRY_ERROR, FERRY_ERROR_ALREADY_EXISTS,
                  "the imported container %s is bound already", source_id);
      return NULL;
    }
    return c;
  }
  g_set_error(error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND, "the imported state has no container %s",
              source_id);
  return NULL;
}

void shim_migration_container_bound(FerryTaskService *svc, const char *source_id,
                                    GHashTable *images)
{
  ShimMigration *m = svc->migration;
  g_hash_table_add(m->bound, g_strdup(source_id));
  GHashTableIter it;
  gpointer k, v;
  g_hash_table_iter_init(&it, images);
  while (g_hash_table_iter_next(&it, &k, &v))
    g_hash_table_replace(m->images, g_strdup(k), g_strdup(v));
}

static void on_incoming(FerrySandbox *sandbox, const GError *error, gpointer ud)
{
  Op *op = ud;
  ShimMigration *m = op->m;
  if (error != NULL) {
    if (m->deferred_cancel == NULL) /* else the cancel's teardown frees it, from the loop */
      g_clear_pointer(&m->svc->sandbox, ferry_sandbox_free);
    step_failed(m, &op->step, op->call, error);
  } else if (!ferry_migration_session_commit(m->session, &op->step)) {
    ferry_ttrpc_call_reply_error(op->call, FERRY_ERROR_CANCELLED, "the session was cancelled");
  } else {
    shim_record_vms(m->svc);
    PrepareSandboxResponse resp = PREPARE_SANDBOX_RESPONSE__INIT;
    ferry_ttrpc_call_reply(op->call, &resp.base);
  }
  g_free(op);
  dest_step_ended(m);
}

static void handle_prepare(FerryTtrpcCall *call, const ProtobufCMessage *request, gpointer ud)
{
  ShimMigration *m = mig_of(ud);
  FerryTaskService *svc = m->svc;
  const PrepareSandboxRequest *req = (const PrepareSandboxRequest *)request;
  FerryMigrationStep step;
  g_autoptr(GError) error = NULL;
  if (!ferry_migration_session_begin_prepare(m->session, req->session_id, &step, &error)) {
    ferry_ttrpc_call_reply_gerror(call, error);
    return;
  }
  /* Every imported container must have been bound by a Create first. */
  g_autoptr(GString) unbound = g_string_new(NULL);
  for (size_t i = 0; i < m->imported->n_containers; i++) {
    const char *id = m->imported->containers[i]->id;
    if (!g_hash_table_contains(m->bound, id))
      g_string_append_printf(unbound, "%s%s", unbound->len > 0 ? ", " : "", id);
  }
  if (unbound->len > 0) {
    g_set_error(&error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION,
                "imported containers not bound by a Create yet: %s", unbound->str);
    step_failed(m, &step, call, error);
    return;
  }
  /* ... and every exec'd process that runs, by a Task.Exec (its stdio is this host's). */
  GHashTableIter it;
  gpointer value;
  g_hash_table_iter_init(&it, svc->tasks);
  while (g_hash_table_iter_next(&it, NULL, &value)) {
    Task *t = value;
    g_autoptr(GPtrArray) execs = values_of(t->execs);
    g_ptr_array_sort(execs, compare_exec_ids);
    for (guint i = 0; i < execs->len; i++) {
      Process *p = execs->pdata[i];
      if (p->imported && !p->exec_bound && p->status == PROC_RUNNING)
        g_string_append_printf(unbound, "%s%s/%s", unbound->len > 0 ? ", " : "", t->id, p->exec_id);
    }
  }
  if (unbound->len > 0) {
    g_set_error(&error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION,
                "imported processes not bound by an Exec yet: %s", unbound->str);
    step_failed(m, &step, call, error);
    return;
  }
  json_error_t jerr;
  g_autoptr(json_t) description = json_loads(m->imported->vm_document, 0, &jerr);
  if (description == NULL) {
    g_set_error(&error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                "the state's VM document is not JSON: %s", jerr.text);
    step_failed(m, &step, call, error);
    return;
  }
  svc->sandbox = shim_sandbox_new(svc, &error);
  if (svc->sandbox == NULL) {
    step_failed(m, &step, call, error);
    return;
  }
  if (!ferry_migration_session_engage(m->session, &step)) {
    ferry_ttrpc_call_reply_error(call, FERRY_ERROR_CANCELLED, "the session was cancelled");
    return;
  }
  FerryVmMigrationOptions options;
  options_from(req->init_options, &options);
  m->dest_steps++;
  ferry_sandbox_start_incoming(svc->sandbox, description, m->images, &options, on_incoming,
                               op_new(m, call, &step));
}

/* The handover a destination resumes from: the source STOP's final channels, else
 * the state's (exported before the transfer: at-least-once). */
static FerrySandboxHandover *handover_from(ShimMigration *m, const FinalizeSandboxRequest *req)
{
  FerrySandboxHandover *h = g_new0(FerrySandboxHandover, 1);
  h->channels = g_ptr_array_new_with_free_func((GDestroyNotify)g_bytes_unref);
  const Ferry__V1__FinalChannels *fc = req->ferry_final_channels;
  Ferry__V1__MuxChannelState **channels = fc != NULL ? fc->channels : m->imported->channels;
  size_t n = fc != NULL ? fc->n_channels : m->imported->n_channels;
  h->next_port = fc != NULL ? fc->next_port : m->imported->floors->next_port;
  h->next_request_id = fc != NULL ? fc->next_request_id : m->imported->floors->next_request_id;
  for (size_t i = 0; i < n; i++) {
    FerryMuxChannelState st;
    ferry_sandbox_state_channel_to_mux(channels[i], &st);
    g_ptr_array_add(h->channels, ferry_mux_channel_state_serialize(&st));
    ferry_mux_channel_state_clear(&st);
  }
  return h;
}

static void on_resumed(FerrySandbox *sandbox, const GError *error, gpointer ud)
{
  Op *op = ud;
  ShimMigration *m = op->m;
  if (error != NULL) {
    step_failed(m, &op->step, op->call, error);
    g_free(op);
    return;
  }
  ferry_migration_session_commit(m->session, &op->step);
  FinalizeSandboxResponse resp = FINALIZE_SANDBOX_RESPONSE__INIT;
  ferry_ttrpc_call_reply(op->call, &resp.base);
  shim_publish_imported(m->svc); /* as hcsshim republishes: TaskCreate per container */
  g_free(op);
}

static void finalize_destination(ShimMigration *m, FerryTtrpcCall *call,
                                 const FinalizeSandboxRequest *req, FerryMigrationStep *step)
{
  FerryTaskService *svc = m->svc;
  if (step->noop) {
    ferry_migration_session_commit(m->session, step);
    FinalizeSandboxResponse resp = FINALIZE_SANDBOX_RESPONSE__INIT;
    ferry_ttrpc_call_reply(call, &resp.base);
    return;
  }
  if (step->action == FERRY_MIGRATION_FINALIZE_STOP && svc->sandbox != NULL &&
      ferry_sandbox_migration_guest_ran(svc->sandbox)) {
    /* The guest runs (or ran) here: ending it would lose the workload. */
    g_autoptr(GError) e = g_error_new(FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION,
                                      "the guest has run on this destination: it is not stopped");
    step_failed(m, step, call, e);
    return;
  }
  if (!ferry_migration_session_engage(m->session, step)) {
    ferry_ttrpc_call_reply_error(call, FERRY_ERROR_CANCELLED, "the session was cancelled");
    return;
  }
  if (step->action == FERRY_MIGRATION_FINALIZE_STOP) {
    /* The destination is abandoned: its VM never ran the guest. */
    g_clear_pointer(&svc->sandbox, ferry_sandbox_free);
    g_hash_table_remove_all(svc->tasks);
    ferry_migration_session_commit(m->session, step);
    FinalizeSandboxResponse resp = FINALIZE_SANDBOX_RESPONSE__INIT;
    ferry_ttrpc_call_reply(call, &resp.base);
    return;
  }
  g_autoptr(FerrySandboxHandover) h = handover_from(m, req);
  ferry_sandbox_migration_resume(svc->sandbox, h, 0, on_resumed, op_new(m, call, step));
}

/* ----------------------------------------------------------- Notifications -- */

typedef struct {
  ShimMigration *m;
  FerryTtrpcCall *call;
  gint64 start_time_us;
} Subscriber;

static void on_notification(const FerryMigrationNotification *note, gpointer ud)
{
  Subscriber *sub = ud;
  if (sub->call == NULL)
    return;
  if (note == NULL) {
    ferry_ttrpc_call_finish(g_steal_pointer(&sub->call), NULL);
    return;
  }
  FerryMigrationNotificationMessage msg;
  ferry_migration_notification_message_init(&msg, note, sub->start_time_us);
  if (!ferry_ttrpc_call_send(sub->call, &msg.response.base, NULL))
    ferry_ttrpc_call_finish(g_steal_pointer(&sub->call), NULL);
}

static void handle_notifications(FerryTtrpcCall *call, const ProtobufCMessage *request, gpointer ud)
{
  ShimMigration *m = mig_of(ud);
  const NotificationsRequest *req = (const NotificationsRequest *)request;
  g_autoptr(GError) error = NULL;
  FerryMigrationNotifications *log =
      ferry_migration_session_open_notifications(m->session, req->session_id, &error);
  Subscriber *sub = log != NULL ? g_new0(Subscriber, 1) : NULL;
  if (sub != NULL) {
    sub->m = m;
    sub->call = call;
    sub->start_time_us = m->start_time_us;
    if (ferry_migration_notifications_subscribe(log, on_notification, sub, g_free, &error) != 0)
      return;
  }
  ferry_ttrpc_call_finish(call, error);
}

/* ------------------------------------------------------------------ Status -- */

static void handle_status(FerryTtrpcCall *call, const ProtobufCMessage *request, gpointer ud)
{
  ShimMigration *m = mig_of(ud);
  const Ferry__Migration__V1__StatusRequest *req =
      (const Ferry__Migration__V1__StatusRequest *)request;
  FerryMigrationStatus status;
  g_autoptr(GError) error = NULL;
  if (!ferry_migration_session_status(m->session, req->session_id, &status, &error)) {
    ferry_ttrpc_call_reply_gerror(call, error);
    return;
  }
  FerryMigrationStatusMessage msg;
  ferry_migration_status_message_init(&msg, &status);
  msg.response.guest_ran =
      m->guest_ran ||
      (ferry_migration_session_get_role(m->session) == FERRY_MIGRATION_ROLE_DESTINATION &&
       m->svc->sandbox != NULL && ferry_sandbox_migration_guest_ran(m->svc->sandbox));
  if (status.role == FERRY_MIGRATION_ROLE_SOURCE && m->stats.valid) {
    msg.response.bytes_remaining = m->stats.remaining;
    msg.response.rate_mbps = m->stats.mbps;
    msg.response.passes = m->stats.passes;
    msg.response.expected_downtime_ms = m->stats.expected_downtime_ms;
    msg.response.downtime_ms = m->stats.downtime_ms;
  }
  ferry_ttrpc_call_reply(call, &msg.response.base);
}

/* ------------------------------------------------------------ registration -- */

static const FerryTtrpcMethodImpl migration_methods[] = {
  { "PrepareAndExportSandbox", handle_prepare_and_export, FERRY_TTRPC_UNARY },
  { "ImportSandbox", handle_import, FERRY_TTRPC_UNARY },
  { "PrepareSandbox", handle_prepare, FERRY_TTRPC_UNARY },
  { "TransferSandbox", handle_transfer, FERRY_TTRPC_UNARY },
  { "FinalizeSandbox", handle_finalize, FERRY_TTRPC_UNARY },
  { "CreateDuplicateSocket", handle_create_duplicate_socket, FERRY_TTRPC_UNARY },
  { "Notifications", handle_notifications, FERRY_TTRPC_SERVER_STREAMING },
  { "Cancel", handle_cancel, FERRY_TTRPC_UNARY },
  { "Cleanup", handle_cleanup, FERRY_TTRPC_UNARY },
  { NULL, NULL, 0 },
};

static const FerryTtrpcMethodImpl status_methods[] = {
  { "Status", handle_status, FERRY_TTRPC_UNARY },
  { NULL, NULL, 0 },
};

gboolean shim_migration_register(FerryTaskService *svc, FerryTtrpcServer *server, GError **error)
{
  (void)mig_of(svc);
  return ferry_ttrpc_server_register(server, "Migration", &migration__descriptor, migration_methods,
                                     svc, error) &&
         ferry_ttrpc_server_register(server, "ferry.migration.v1.Status",
                                     &ferry__migration__v1__status__descriptor, status_methods, svc,
                                     error);
}
