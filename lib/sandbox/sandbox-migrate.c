/*
 * Live migration of a sandbox (include/ferry/sandbox.h, "Live migration"; the model is
 * docs/migration.md). The VM layer moves the memory (lib/vm/vm-migration.c); this file
 * moves the host side: the mux's stdio channels at their exact offsets, the guest
 * manager's floors, the containers and the layer disks, so that a FerrySandbox in
 * another process picks the guest up where the source left it.
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>

#include "ferry/bridge-protocol.h"
#include "ferry/error.h"
#include "ferry/fd.h"
#include "ferry/json.h"
#include "ferry/log.h"
#include "ferry/mux.h"
#include "ferry/source.h"
#include "sandbox-private.h"

/* How long the source waits for the guest to have read every byte the host mux sent
 * before the transfer starts, and how often it looks. */
#define FLUSH_TIMEOUT_MS 10000
#define FLUSH_POLL_MS 5
/* The description's schema, checked by the destination. */
#define DESCRIPTION_VERSION 1

static GError *mig_precondition(FerrySandbox *sandbox, const char *what, const char *why)
{
  return g_error_new(FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION, "sandbox %s: %s: %s",
                     sandbox->id, what, why);
}

static void report_error(FerrySandbox *sandbox, FerrySandboxDoneFunc done, gpointer user_data,
                         GError *error /* taken */)
{
  sandbox_report_later(sandbox, done, user_data, error);
  g_error_free(error);
}

/* A VM answer for the sandbox: `what` prefixes its error. */
typedef struct {
  FerrySandbox *sandbox;
  const char *what;
  FerrySandboxDoneFunc done;
  gpointer user_data;
} VmStep;

static VmStep *vm_step_new(FerrySandbox *sandbox, const char *what, FerrySandboxDoneFunc done,
                           gpointer user_data)
{
  VmStep *step = g_new0(VmStep, 1);
  step->sandbox = sandbox;
  step->what = what;
  step->done = done;
  step->user_data = user_data;
  return step;
}

/* Report a VM step: the VM answers from its loop already, so this calls back at once. */
static void vm_step_finish(VmStep *step, const GError *error)
{
  FerrySandbox *sandbox = step->sandbox;
  FerrySandboxDoneFunc done = step->done;
  gpointer user_data = step->user_data;
  g_autoptr(GError) e = NULL;
  if (error != NULL)
    e = g_error_new(error->domain, error->code, "sandbox %s: %s: %s", sandbox->id, step->what,
                    error->message);
  g_free(step);
  if (done != NULL)
    done(sandbox, e, user_data);
}

/* ---------------------------------------------------------------- source -- */

static void recover_now(FerrySandbox *sandbox, FerrySandboxDoneFunc done, gpointer user_data);

/* A source's VM step ended: a recover that waited for it goes now (its answer comes
 * later, from the VM; with no migration left to undo, from an idle). */
static void mig_step_ended(FerrySandbox *sandbox)
{
  sandbox->mig_step_busy = FALSE;
  if (!sandbox->recover_pending)
    return;
  sandbox->recover_pending = FALSE;
  FerrySandboxDoneFunc done = g_steal_pointer(&sandbox->recover_done);
  gpointer user_data = g_steal_pointer(&sandbox->recover_data);
  if (sandbox->mig >= SB_MIG_SOURCE_PREPARED && sandbox->mig <= SB_MIG_SOURCE_HANDED_OVER)
    recover_now(sandbox, done, user_data);
  else
    sandbox_report_later(sandbox, done, user_data, NULL); /* the prepare failed: nothing to undo */
}

static void on_initialized(FerryVm *vm, const GError *error, gpointer ud)
{
  VmStep *step = ud;
  FerrySandbox *sandbox = step->sandbox;
  if (error == NULL) {
    sandbox->mig = SB_MIG_SOURCE_PREPARED;
    /* A bridge break from here on parks the bridge instead of failing it. */
    ferry_guest_connection_set_migrating(sandbox->gc, TRUE);
  }
  mig_step_ended(sandbox);
  vm_step_finish(step, error);
}

void ferry_sandbox_migration_prepare(FerrySandbox *sandbox, const FerryVmMigrationOptions *options,
                                     FerrySandboxDoneFunc done, gpointer user_data)
{
  const char *what = "prepare the migration";
  g_autoptr(GError) check = NULL;
  if (sandbox->state != SB_RUNNING)
    check = mig_precondition(sandbox, what, "the sandbox is not running");
  else if (sandbox->mig != SB_MIG_NONE)
    check = mig_precondition(sandbox, what, "a migration is under way");
  else if (!g_queue_is_empty(&sandbox->root_ops))
    check = mig_precondition(sandbox, what, "a container root is being attached or detached");
  else if (!ferry_vm_doc_check_migratable(ferry_vm_get_doc(sandbox->vm),
                                          ferry_vm_get_accel(sandbox->vm), &check))
    g_prefix_error(&check, "sandbox %s: %s: ", sandbox->id, what);
  if (check != NULL) {
    report_error(sandbox, done, user_data, g_steal_pointer(&check));
    return;
  }
  sandbox->mig_step_busy = TRUE;
  ferry_vm_migration_initialize(sandbox->vm, options, on_initialized,
                                vm_step_new(sandbox, what, done, user_data));
}

json_t *ferry_sandbox_migration_describe(FerrySandbox *sandbox)
{
  json_t *disks = json_array();
  json_t *roots = json_array();
  sandbox_roots_describe(sandbox, disks, roots);
  g_auto(GStrv) ids = ferry_sandbox_list_containers(sandbox);
  json_t *containers = json_array();
  for (char **id = ids; *id != NULL; id++)
    json_array_append_new(containers, json_string(*id));
  return json_pack("{s:i, s:s, s:I, s:I, s:o, s:o, s:o}", "version", DESCRIPTION_VERSION, "id",
                   sandbox->id, "memory_mb", (json_int_t)sandbox->memory_mb, "cpus",
                   (json_int_t)sandbox->cpus, "disks", disks, "roots", roots, "containers",
                   containers);
}

/* ------------------------------------------------------------- transfer -- */

static void on_transferring(FerryVm *vm, const GError *error, gpointer ud)
{
  VmStep *step = ud;
  FerrySandbox *sandbox = step->sandbox;
  if (error == NULL)
    sandbox->mig = sandbox->mig == SB_MIG_SOURCE_FLUSHING ? SB_MIG_SOURCE_TRANSFERRING
                                                          : SB_MIG_DESTINATION_TRANSFERRING;
  else if (sandbox->mig == SB_MIG_SOURCE_FLUSHING)
    sandbox->mig = SB_MIG_SOURCE_PREPARED;
  if (sandbox->mig_step_busy)
    mig_step_ended(sandbox);
  vm_step_finish(step, error);
}

static void transfer_go(Transfer *t)
{
  FerrySandbox *sandbox = t->sandbox;
  if (sandbox->mig == SB_MIG_SOURCE_FLUSHING)
    sandbox->mig_step_busy = TRUE;
  ferry_vm_migration_transfer(sandbox->vm, t->fd, on_transferring,
                              vm_step_new(sandbox, "transfer", t->done, t->user_data));
  ferry_fd_close_quietly(t->fd);
  sandbox->transfer = NULL;
  g_free(t);
}

/* The source's stream must end on a frame boundary the guest has read (docs/mux.md):
 * quiet, then wait for the flush before QEMU takes the guest away. */
static gboolean on_flush_check(gpointer ud)
{
  Transfer *t = ud;
  FerrySandbox *sandbox = t->sandbox;
  if (ferry_mux_output_flushed(sandbox->mux)) {
    ferry_source_clear(&t->timer);
    transfer_go(t);
    return G_SOURCE_REMOVE;
  }
  if (g_get_monotonic_time() < t->deadline)
    return G_SOURCE_CONTINUE;
  ferry_source_clear(&t->timer);
  ferry_mux_set_quiet(sandbox->mux, FALSE);
  sandbox->mig = SB_MIG_SOURCE_PREPARED;
  sandbox->transfer = NULL;
  FerrySandboxDoneFunc done = t->done;
  gpointer user_data = t->user_data;
  ferry_fd_close_quietly(t->fd);
  g_free(t);
  g_autoptr(GError) e =
      g_error_new(FERRY_ERROR, FERRY_ERROR_DEADLINE_EXCEEDED,
                  "sandbox %s: transfer: the guest did not read the host's last frames "
                  "within %u ms",
                  sandbox->id, FLUSH_TIMEOUT_MS);
  if (done != NULL)
    done(sandbox, e, user_data);
  return G_SOURCE_REMOVE;
}

void ferry_sandbox_migration_transfer(FerrySandbox *sandbox, int fd, FerrySandboxDoneFunc done,
                                      gpointer user_data)
{
  GError *check = NULL;
  if (sandbox->mig != SB_MIG_SOURCE_PREPARED && sandbox->mig != SB_MIG_DESTINATION_WAITING)
    check = mig_precondition(sandbox, "transfer",
                             "neither a prepared source nor a waiting destination");
  int copy = check == NULL ? fcntl(fd, F_DUPFD_CLOEXEC, 3) : -1;
  if (check == NULL && copy < 0)
    check = g_error_new(FERRY_ERROR, ferry_error_code_from_errno(errno),
                        "sandbox %s: transfer: copy the stream's fd: %s", sandbox->id,
                        g_strerror(errno));
  if (check != NULL) {
    report_error(sandbox, done, user_data, check);
    return;
  }
  Transfer *t = g_new0(Transfer, 1);
  t->sandbox = sandbox;
  t->fd = copy;
  t->done = done;
  t->user_data = user_data;
  if (sandbox->mig == SB_MIG_DESTINATION_WAITING) {
    sandbox->mig = SB_MIG_DESTINATION_STARTING_TRANSFER;
    transfer_go(t);
    return;
  }
  sandbox->mig = SB_MIG_SOURCE_FLUSHING;
  sandbox->transfer = t;
  ferry_mux_set_quiet(sandbox->mux, TRUE);
  t->deadline = g_get_monotonic_time() + (gint64)FLUSH_TIMEOUT_MS * 1000;
  t->timer = ferry_timeout_new(sandbox->context, FLUSH_POLL_MS, on_flush_check, t);
}

/* ------------------------------------------------------ handover, cleanup -- */

void ferry_sandbox_handover_free(FerrySandboxHandover *handover)
{
  if (handover == NULL)
    return;
  g_ptr_array_unref(handover->channels);
  g_free(handover);
}

/* Every stdio channel as it stands, and the floors. */
static FerrySandboxHandover *export_channels(FerrySandbox *sandbox)
{
  FerrySandboxHandover *h = g_new0(FerrySandboxHandover, 1);
  h->next_port = ferry_guest_connection_next_port(sandbox->gc);
  h->next_request_id = ferry_guest_connection_next_id(sandbox->gc);
  h->channels = g_ptr_array_new_with_free_func((GDestroyNotify)g_bytes_unref);
  g_autoptr(GArray) ports = ferry_stdio_ports_list(sandbox->ports);
  for (guint i = 0; i < ports->len; i++) {
    guint32 port = g_array_index(ports, guint32, i);
    FerryChannel *ch = ferry_stdio_ports_channel(sandbox->ports, port);
    FerryMuxChannelState st;
    g_autoptr(GError) local = NULL;
    if (ch == NULL || !ferry_mux_export_channel(sandbox->mux, ch, &st, &local)) {
      /* A channel that closed already has nothing left to move. */
      ferry_log(FERRY_LOG_DEBUG, "sandbox: channel not exported", "sandbox", sandbox->id, "why",
                local != NULL ? local->message : "gone", NULL);
      continue;
    }
    g_ptr_array_add(h->channels, ferry_mux_channel_state_serialize(&st));
    ferry_mux_channel_state_clear(&st);
  }
  return h;
}

FerrySandboxHandover *ferry_sandbox_migration_snapshot(FerrySandbox *sandbox, GError **error)
{
  if (sandbox->state != SB_RUNNING || sandbox->gc == NULL) {
    g_propagate_error(error, mig_precondition(sandbox, "snapshot", "the sandbox is not running"));
    return NULL;
  }
  return export_channels(sandbox);
}

FerrySandboxHandover *ferry_sandbox_migration_handover(FerrySandbox *sandbox, GError **error)
{
  if (sandbox->mig != SB_MIG_SOURCE_TRANSFERRING && sandbox->mig != SB_MIG_SOURCE_HANDED_OVER) {
    g_propagate_error(error, mig_precondition(sandbox, "hand over", "no transfer has run"));
    return NULL;
  }
  if (!sandbox->transfer_completed) {
    g_propagate_error(error,
                      mig_precondition(sandbox, "hand over", "the transfer has not completed"));
    return NULL;
  }
  /* Nothing is consumed here past what goes into the handover. */
  ferry_mux_set_frozen(sandbox->mux, TRUE);
  FerrySandboxHandover *h = export_channels(sandbox);
  sandbox->mig = SB_MIG_SOURCE_HANDED_OVER;
  return h;
}

static void on_cleaned_up(FerryVm *vm, const GError *error, gpointer ud)
{
  VmStep *step = ud;
  step->sandbox->state = SB_STOPPED;
  step->sandbox->mig = SB_MIG_DONE;
  vm_step_finish(step, error);
}

void ferry_sandbox_migration_cleanup(FerrySandbox *sandbox, FerrySandboxDoneFunc done,
                                     gpointer user_data)
{
  if (sandbox->mig != SB_MIG_SOURCE_HANDED_OVER) {
    report_error(sandbox, done, user_data,
                 mig_precondition(sandbox, "clean up the source", "it has not handed over"));
    return;
  }
  /* The destination runs the guest now: QEMU here ends (finalize STOP), the VM's exit
   * is no news. */
  sandbox->state = SB_STOPPING;
  ferry_vm_migration_finalize(sandbox->vm, FERRY_VM_FINALIZE_STOP, 0, on_cleaned_up,
                              vm_step_new(sandbox, "clean up the source", done, user_data));
}

static void on_recovered(FerryVm *vm, const GError *error, gpointer ud)
{
  VmStep *step = ud;
  FerrySandbox *sandbox = step->sandbox;
  if (error == NULL) {
    sandbox->mig = SB_MIG_NONE;
    sandbox->transfer_completed = FALSE;
    ferry_mux_set_frozen(sandbox->mux, FALSE);
    ferry_mux_set_quiet(sandbox->mux, FALSE);
    ferry_guest_connection_set_migrating(sandbox->gc, FALSE);
  }
  vm_step_finish(step, error);
}

void ferry_sandbox_migration_recover(FerrySandbox *sandbox, FerrySandboxDoneFunc done,
                                     gpointer user_data)
{
  if (sandbox->mig_step_busy && !sandbox->recover_pending) {
    /* The VM is in the middle of a step: undo it once it ended. */
    sandbox->recover_pending = TRUE;
    sandbox->recover_done = done;
    sandbox->recover_data = user_data;
    return;
  }
  if (sandbox->mig_step_busy) {
    report_error(sandbox, done, user_data,
                 mig_precondition(sandbox, "recover", "a recover is in progress"));
    return;
  }
  recover_now(sandbox, done, user_data);
}

static void recover_now(FerrySandbox *sandbox, FerrySandboxDoneFunc done, gpointer user_data)
{
  if (sandbox->mig < SB_MIG_SOURCE_PREPARED || sandbox->mig > SB_MIG_SOURCE_HANDED_OVER) {
    report_error(sandbox, done, user_data,
                 mig_precondition(sandbox, "recover", "this is not a migration source"));
    return;
  }
  if (sandbox->mig == SB_MIG_SOURCE_FLUSHING) {
    Transfer *t = g_steal_pointer(&sandbox->transfer);
    ferry_source_clear(&t->timer);
    ferry_fd_close_quietly(t->fd);
    g_autoptr(GError) e =
        g_error_new(FERRY_ERROR, FERRY_ERROR_CANCELLED,
                    "sandbox %s: transfer: recovered before it began", sandbox->id);
    sandbox_report_later(sandbox, t->done, t->user_data, e);
    g_free(t);
  }
  ferry_vm_migration_finalize(sandbox->vm, FERRY_VM_FINALIZE_RESUME, 0, on_recovered,
                              vm_step_new(sandbox, "recover", done, user_data));
}

/* ----------------------------------------------------------- destination -- */

static gboolean describe_int(json_t *description, const char *field, guint *out, GError **error)
{
  json_t *v = json_object_get(description, field);
  if (!json_is_integer(v) || json_integer_value(v) <= 0 || json_integer_value(v) > G_MAXUINT) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                "the sandbox description's %s is not a positive integer", field);
    return FALSE;
  }
  *out = (guint)json_integer_value(v);
  return TRUE;
}

static void on_incoming(FerryVm *vm, const GError *error, gpointer ud)
{
  VmStep *step = ud;
  FerrySandbox *sandbox = step->sandbox;
  g_autoptr(GError) local = NULL;
  if (error == NULL) {
    ferry_vm_wait(vm, sandbox_on_vm_gone, sandbox);
    /* The destination's port has its client before the transfer (docs/qemu.md). */
    g_autofree char *path = ferry_vm_port_socket(vm, FERRY_SANDBOX_AGENT_PORT);
    sandbox->incoming_fd = ferry_unix_connect(path, &local);
    if (sandbox->incoming_fd < 0) {
      g_prefix_error(&local, "the agent's port: ");
      error = local;
    }
  }
  sandbox->mig = error == NULL ? SB_MIG_DESTINATION_WAITING : SB_MIG_NONE;
  sandbox->state = error == NULL ? SB_INCOMING : SB_STOPPED;
  vm_step_finish(step, error);
}

void ferry_sandbox_start_incoming(FerrySandbox *sandbox, json_t *description, GHashTable *images,
                                  const FerryVmMigrationOptions *options, FerrySandboxDoneFunc done,
                                  gpointer user_data)
{
  const char *what = "start as a migration destination";
  g_autoptr(GError) error = NULL;
  guint memory_mb = 0, cpus = 0;
  json_t *version = json_object_get(description, "version");
  if (sandbox->state != SB_CREATED) {
    error = mig_precondition(sandbox, what, "it was started before");
  } else if (!json_is_integer(version) || json_integer_value(version) != DESCRIPTION_VERSION) {
    g_set_error(&error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION,
                "sandbox %s: %s: the description's version is %" JSON_INTEGER_FORMAT
                ", this host reads %d",
                sandbox->id, what, json_is_integer(version) ? json_integer_value(version) : 0,
                DESCRIPTION_VERSION);
  } else if (!describe_int(description, "memory_mb", &memory_mb, &error) ||
             !describe_int(description, "cpus", &cpus, &error)) {
    g_prefix_error(&error, "sandbox %s: %s: ", sandbox->id, what);
  }
  /* The destination renders the source's machine: its size, its disks. */
  sandbox->memory_mb = memory_mb;
  sandbox->cpus = cpus;
  g_autoptr(FerryVmDoc) doc = error == NULL ? sandbox_doc(sandbox, &error) : NULL;
  if (doc != NULL && !sandbox_roots_adopt(sandbox, doc, description, images, &error))
    g_prefix_error(&error, "sandbox %s: %s: ", sandbox->id, what);
  if (error == NULL)
    sandbox->vm = ferry_vm_new(sandbox->id, doc, sandbox->state_dir, &sandbox->vm_options, &error);
  json_t *containers = json_object_get(description, "containers");
  size_t i;
  json_t *id;
  json_array_foreach(containers, i, id)
  {
    if (error == NULL && json_is_string(id))
      g_ptr_array_add(sandbox->restore_ids, g_strdup(json_string_value(id)));
  }
  if (error != NULL) {
    sandbox->state = SB_STOPPED;
    report_error(sandbox, done, user_data, g_steal_pointer(&error));
    return;
  }
  if (!sandbox_transport_new(sandbox, &error)) {
    sandbox->state = SB_STOPPED;
    report_error(sandbox, done, user_data, g_steal_pointer(&error));
    return;
  }
  sandbox->state = SB_STARTING_INCOMING;
  ferry_vm_start_incoming(sandbox->vm, options, on_incoming,
                          vm_step_new(sandbox, what, done, user_data));
}

static void resume_finish(FerrySandbox *sandbox, const GError *error)
{
  FerrySandboxDoneFunc done = g_steal_pointer(&sandbox->resume_done);
  if (error == NULL) {
    sandbox->state = SB_RUNNING;
    sandbox->mig = SB_MIG_NONE;
    sandbox->transfer_completed = FALSE;
  }
  sandbox_report_later(sandbox, done, sandbox->resume_data, error);
}

void sandbox_resume_connected(FerrySandbox *sandbox, const GError *error)
{
  if (error == NULL) {
    resume_finish(sandbox, NULL);
    return;
  }
  g_autoptr(GError) e =
      g_error_new(FERRY_ERROR, FERRY_ERROR_UNAVAILABLE,
                  "sandbox %s: renegotiate with the guest agent: %s", sandbox->id, error->message);
  resume_finish(sandbox, e);
}

/* The agent dialed the bridge again on the destination: restore the guest manager's
 * state before it negotiates, so that every answer the guest kept for the source can
 * be routed here. */
void sandbox_resume_bridge(FerrySandbox *sandbox)
{
  ferry_guest_connection_set_next_port(sandbox->gc, sandbox->restore_next_port);
  ferry_guest_connection_seed_next_id(sandbox->gc, sandbox->restore_next_id);
  for (guint i = 0; i < sandbox->restore_ids->len; i++) {
    const char *id = sandbox->restore_ids->pdata[i];
    g_autoptr(GError) local = NULL;
    FerryGuestContainer *c = ferry_guest_connection_open_container(sandbox->gc, id, &local);
    if (c == NULL) {
      ferry_log(FERRY_LOG_DEBUG, "sandbox: reopen container failed", "sandbox", sandbox->id,
                "container", id, "error", local->message, NULL);
      continue;
    }
    g_hash_table_replace(sandbox->containers, g_strdup(id), c);
  }
  g_ptr_array_set_size(sandbox->restore_ids, 0);
  if (sandbox->handlers.restore != NULL)
    sandbox->handlers.restore(sandbox, sandbox->gc, sandbox->user_data);
}

static void on_destination_running(FerryVm *vm, const GError *error, gpointer ud)
{
  FerrySandbox *sandbox = ud;
  if (sandbox->state != SB_RESUMING)
    return;
  if (error != NULL) {
    g_autoptr(GError) e = g_error_new(error->domain, error->code, "sandbox %s: resume: %s",
                                      sandbox->id, error->message);
    sandbox->state = SB_INCOMING;
    resume_finish(sandbox, e);
    return;
  }
  /* The guest runs; the rest comes with the agent's bridge dial. */
  sandbox->boot_timer = ferry_timeout_new(sandbox->context, sandbox->boot_timeout_ms,
                                          sandbox_on_resume_timeout, sandbox);
}

void ferry_sandbox_migration_resume(FerrySandbox *sandbox, const FerrySandboxHandover *handover,
                                    gint64 blackout_started_us, FerrySandboxDoneFunc done,
                                    gpointer user_data)
{
  const char *what = "resume";
  g_autoptr(GError) error = NULL;
  if (sandbox->state != SB_INCOMING || sandbox->mig != SB_MIG_DESTINATION_TRANSFERRING)
    error = mig_precondition(sandbox, what, "no incoming transfer has run");
  else if (!sandbox->transfer_completed)
    error = mig_precondition(sandbox, what, "the transfer has not completed");
  else if (handover == NULL)
    g_set_error(&error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "sandbox %s: %s: no handover",
                sandbox->id, what);
  /* Check every channel before any is imported. */
  g_autoptr(GArray) states = g_array_new(FALSE, TRUE, sizeof(FerryMuxChannelState));
  g_array_set_clear_func(states, (GDestroyNotify)ferry_mux_channel_state_clear);
  for (guint i = 0; error == NULL && i < handover->channels->len; i++) {
    FerryMuxChannelState st;
    if (!ferry_mux_channel_state_deserialize(handover->channels->pdata[i], &st, &error)) {
      g_prefix_error(&error, "sandbox %s: %s: channel %u: ", sandbox->id, what, i);
      break;
    }
    g_array_append_val(states, st);
  }
  if (error != NULL) {
    report_error(sandbox, done, user_data, g_steal_pointer(&error));
    return;
  }
  for (guint i = 0; i < states->len; i++) {
    FerryMuxChannelState *st = &g_array_index(states, FerryMuxChannelState, i);
    FerryChannel *ch = ferry_mux_import_channel(sandbox->mux, st, &error);
    if (ch == NULL) {
      g_prefix_error(&error, "sandbox %s: %s: import channel %u: ", sandbox->id, what, st->id);
      report_error(sandbox, done, user_data, g_steal_pointer(&error));
      return;
    }
    ferry_stdio_ports_adopt(sandbox->ports, st->port, ch);
    ferry_channel_unref(ch);
  }
  sandbox->restore_next_port = handover->next_port;
  sandbox->restore_next_id = handover->next_request_id;
  if (!ferry_mux_attach(sandbox->mux, sandbox->incoming_fd, &error)) {
    sandbox->incoming_fd = -1;
    g_prefix_error(&error, "sandbox %s: %s: the agent's port: ", sandbox->id, what);
    report_error(sandbox, done, user_data, g_steal_pointer(&error));
    return;
  }
  sandbox->incoming_fd = -1;
  sandbox->state = SB_RESUMING;
  sandbox->resume_done = done;
  sandbox->resume_data = user_data;
  sandbox->guest_ran = TRUE; /* from here on, the source must never run it again */
  ferry_vm_migration_finalize(sandbox->vm, FERRY_VM_FINALIZE_RESUME, blackout_started_us,
                              on_destination_running, sandbox);
}

gboolean ferry_sandbox_migration_guest_ran(FerrySandbox *sandbox)
{
  return sandbox->guest_ran;
}

/* ---------------------------------------------------------- notifications -- */

void sandbox_on_vm_note(FerryVm *vm, const FerryVmNotification *n, gpointer ud)
{
  FerrySandbox *sandbox = ud;
  if (n->phase == FERRY_VM_PHASE_OFFLINE_DONE)
    sandbox->transfer_completed = TRUE;
  if (n->phase == FERRY_VM_PHASE_FAILED) {
    sandbox->transfer_completed = FALSE;
    /* A failed source goes on as before; Recover takes its mux back. */
    if (sandbox->mig == SB_MIG_SOURCE_TRANSFERRING)
      sandbox->mig = SB_MIG_SOURCE_PREPARED;
  }
  if (sandbox->handlers.migration_note != NULL)
    sandbox->handlers.migration_note(sandbox, n, sandbox->user_data);
}
