/* The VM manager's half of a live migration: the destination's incoming start, the
 * source's initialisation, the transfer, the QEMU events of a migration and their
 * notifications, finalize STOP / RESUME and cancel. */
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ferry/error.h"
#include "ferry/fd.h"
#include "ferry/source.h"
#include "vm-private.h"

/* ------------------------------------------------------------ migration -- */

void ferry_vm_set_notify_func(FerryVm *vm, FerryVmNotifyFunc func, gpointer user_data)
{
  vm->notify = func;
  vm->notify_data = user_data;
}

void vm_notify(FerryVm *vm, FerryVmNotification n)
{
  n.origin = vm->origin;
  if (n.time_us == 0)
    n.time_us = g_get_real_time();
  if (vm->notify != NULL && !vm->freeing)
    vm->notify(vm, &n, vm->notify_data);
}

static gboolean postcopy_allowed(const FerryVmMigrationOptions *o)
{
  /* QEMU 7.2 refuses post-copy together with compression. */
  return !o->no_postcopy && o->compression_threads == 0;
}

/* The capabilities both sides set: what the stream carries must match. */
json_t *vm_migration_capabilities(FerryVm *vm)
{
  const FerryVmMigrationOptions *o = &vm->mopts;
  json_t *caps = json_array();
  json_array_append_new(caps, json_pack("{s:s, s:b}", "capability", "events", "state", 1));
  json_array_append_new(
      caps, json_pack("{s:s, s:b}", "capability", "postcopy-ram", "state", postcopy_allowed(o)));
  json_array_append_new(
      caps, json_pack("{s:s, s:b}", "capability", "compress", "state", o->compression_threads > 0));
  if (vm->origin == FERRY_VM_ORIGIN_SOURCE)
    json_array_append_new(
        caps, json_pack("{s:s, s:b}", "capability", "auto-converge", "state", !o->skip_throttling));
  return caps;
}

static GError *check_options(FerryVm *vm, const FerryVmMigrationOptions *o)
{
  if (o->throttling_scale != 0 && (o->throttling_scale < 1 || o->throttling_scale > 100))
    return g_error_new(FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                       "vm %s: throttling scale %g is outside 1-100", vm->id, o->throttling_scale);
  if (o->minimum_throttle_percentage > 99)
    return g_error_new(FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                       "vm %s: minimum throttle percentage %u is above 99", vm->id,
                       o->minimum_throttle_percentage);
  if (o->compression_threads > 255)
    return g_error_new(FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                       "vm %s: %u compression threads (at most 255)", vm->id,
                       o->compression_threads);
  if (o->cancel_if_blackout_threshold_exceeds && o->blackout_threshold_ms == 0)
    return g_error_new(FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                       "vm %s: cancel_if_blackout_threshold_exceeds needs a blackout threshold",
                       vm->id);
  g_autoptr(GError) e = NULL;
  if (!ferry_vm_doc_check_migratable(vm->doc, vm->accel, &e))
    return g_steal_pointer(&e);
  return NULL;
}

/* Check the migration options (NULL: all defaults) and keep them; FALSE when they are
 * refused, the operation then failing from the main loop. */
static gboolean take_options(FerryVm *vm, const FerryVmMigrationOptions *options,
                             FerryVmDoneFunc done, gpointer user_data)
{
  FerryVmMigrationOptions none = { 0 };
  GError *e = check_options(vm, options != NULL ? options : &none);
  if (e != NULL) {
    vm_op_finish_later(vm, done, user_data, e);
    return FALSE;
  }
  vm->mopts = options != NULL ? *options : none;
  g_free(vm->tls_dir);
  g_free(vm->tls_hostname);
  vm->tls_dir = g_strdup(vm->mopts.tls_dir);
  vm->tls_hostname = g_strdup(vm->mopts.tls_hostname);
  vm->mopts.tls_dir = vm->tls_dir;
  vm->mopts.tls_hostname = vm->tls_hostname;
  return TRUE;
}

#define TLS_OBJECT_ID "ferry-tls"

/* The memory stream's TLS (or none) for the sequence that sets the migration up. */
void vm_migration_tls(FerryVm *vm, Seq *s)
{
  const FerryVmMigrationOptions *o = &vm->mopts;
  gboolean source = vm->origin == FERRY_VM_ORIGIN_SOURCE;
  if (vm->tls_object) {
    vm_seq_add(s, "object-del", json_pack("{s:s}", "id", TLS_OBJECT_ID));
    vm->tls_object = FALSE;
  }
  if (o->tls_dir == NULL) {
    vm_seq_add(s, "migrate-set-parameters", json_pack("{s:s}", "tls-creds", ""));
    return;
  }
  vm_seq_add(s, "object-add",
             json_pack("{s:s, s:s, s:s, s:s, s:b}", "qom-type", "tls-creds-x509", "id",
                       TLS_OBJECT_ID, "dir", o->tls_dir, "endpoint", source ? "client" : "server",
                       "verify-peer", 1));
  vm->tls_object = TRUE;
  json_t *params = json_pack("{s:s}", "tls-creds", TLS_OBJECT_ID);
  if (source)
    json_object_set_new(params, "tls-hostname",
                        json_string(o->tls_hostname != NULL ? o->tls_hostname : "ferry"));
  vm_seq_add(s, "migrate-set-parameters", params);
}

void ferry_vm_start_incoming(FerryVm *vm, const FerryVmMigrationOptions *options,
                             FerryVmDoneFunc done, gpointer user_data)
{
  if (vm->state != FERRY_VM_CREATED) {
    vm_op_finish_later(vm, done, user_data,
                       vm_precondition(vm, "start incoming", "it was started before"));
    return;
  }
  if (!take_options(vm, options, done, user_data))
    return;
  vm->origin = FERRY_VM_ORIGIN_DESTINATION;
  vm->stats = (FerryVmMigrationStats){ 0 };
  vm->mig = MIG_READY;
  vm->start_running = FALSE;
  vm_spawn(vm, TRUE, vm_op_new(vm, done, user_data));
}

static void after_initialize(FerryVm *vm, Op *op)
{
  vm->mig = MIG_READY;
  vm_op_finish(op, NULL);
}

void ferry_vm_migration_initialize(FerryVm *vm, const FerryVmMigrationOptions *options,
                                   FerryVmDoneFunc done, gpointer user_data)
{
  if (vm->state != FERRY_VM_RUNNING && vm->state != FERRY_VM_PAUSED) {
    vm_op_finish_later(vm, done, user_data,
                       vm_precondition(vm, "initialize migration", ferry_vm_state_name(vm->state)));
    return;
  }
  if (vm_in_migration_mode(vm)) {
    vm_op_finish_later(vm, done, user_data,
                       vm_precondition(vm, "initialize migration", "a migration is in progress"));
    return;
  }
  if (!take_options(vm, options, done, user_data))
    return;
  vm->origin = FERRY_VM_ORIGIN_SOURCE;
  vm->stats = (FerryVmMigrationStats){ 0 };
  vm->mig = MIG_NONE; /* READY once QEMU took the settings */
  vm->setup_done_sent = vm->blackout_sent = vm->postcopy_requested = vm->postcopy_active = FALSE;
  vm->convergence_handled = vm->cancel_requested = FALSE;
  const FerryVmMigrationOptions *o = &vm->mopts;
  json_t *params =
      json_pack("{s:I}", "max-bandwidth",
                (json_int_t)(o->max_bandwidth != 0 ? o->max_bandwidth : DEFAULT_BANDWIDTH));
  if (o->target_blackout_ms != 0)
    json_object_set_new(params, "downtime-limit", json_integer(o->target_blackout_ms));
  if (o->minimum_throttle_percentage != 0)
    json_object_set_new(params, "cpu-throttle-initial",
                        json_integer(o->minimum_throttle_percentage));
  if (o->throttling_scale != 0)
    json_object_set_new(params, "cpu-throttle-increment",
                        json_integer((json_int_t)o->throttling_scale));
  if (o->compression_threads != 0)
    json_object_set_new(params, "compress-threads", json_integer(o->compression_threads));
  Seq *s = vm_seq_new(vm, vm_op_new(vm, done, user_data));
  vm_seq_add(s, "migrate-set-capabilities",
             json_pack("{s:o}", "capabilities", vm_migration_capabilities(vm)));
  vm_seq_add(s, "migrate-set-parameters", params);
  vm_migration_tls(vm, s);
  s->then = after_initialize;
  vm_seq_step(s);
}

/* QEMU refused getfd or migrate: nothing moves, the transfer may be tried again. */
static void transfer_refused(FerryVm *vm)
{
  if (vm->mig == MIG_TRANSFERRING)
    vm->mig = MIG_READY;
}

void ferry_vm_migration_transfer(FerryVm *vm, int fd, FerryVmDoneFunc done, gpointer user_data)
{
  if (vm->origin == 0 || vm->mig != MIG_READY) {
    vm_op_finish_later(vm, done, user_data,
                       vm_precondition(vm, "transfer",
                                       vm->origin == 0 ? "no migration was initialised"
                                       : vm->mig == MIG_NONE
                                           ? "the migration is still being initialised"
                                           : "the transfer was started before"));
    return;
  }
  if (vm->qmp == NULL || vm->state == FERRY_VM_STARTING) {
    vm_op_finish_later(vm, done, user_data, vm_precondition(vm, "transfer", "QEMU is not ready"));
    return;
  }
  int type = 0;
  socklen_t len = sizeof(type);
  if (fd < 0 || getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0 || type != SOCK_STREAM) {
    vm_op_finish_later(vm, done, user_data,
                       g_error_new(FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                                   "vm %s: transfer: fd %d is not a stream socket", vm->id, fd));
    return;
  }
  vm->mig = MIG_TRANSFERRING;
  Seq *s = vm_seq_new(vm, vm_op_new(vm, done, user_data));
  s->failed = transfer_refused;
  s->fd = fd; /* with getfd, sent from vm_seq_step() below while the caller's fd is open */
  vm_seq_add(s, "getfd", json_pack("{s:s}", "fdname", MIGRATION_FD_NAME));
  vm_seq_add(s, vm->origin == FERRY_VM_ORIGIN_SOURCE ? "migrate" : "migrate-incoming",
             json_pack("{s:s}", "uri", "fd:" MIGRATION_FD_NAME));
  vm_seq_step(s);
}

/* Leave migration mode: the VM is an ordinary VM again. */
static void migration_end(FerryVm *vm)
{
  vm->origin = 0;
  vm->mig = MIG_NONE;
}

static void finish_finalize(FerryVm *vm, const GError *error)
{
  Op *op = g_steal_pointer(&vm->finalize_op);
  vm_op_finish(op, error);
}

typedef struct {
  FerryVm *vm;
  FerryVmResult result;
} FailQuery;

static void on_failure_details(FerryQmp *qmp, json_t *result, const GError *error, gpointer ud)
{
  FailQuery *f = ud;
  FerryVm *vm = f->vm;
  const char *desc = NULL;
  if (error == NULL)
    desc = json_string_value(json_object_get(result, "error-desc"));
  vm_notify(vm, (FerryVmNotification){ .phase = FERRY_VM_PHASE_FAILED,
                                       .result = f->result,
                                       .message = desc != NULL ? desc : "migration failed" });
  g_free(f);
}

static void rollback_cont(FerryVm *vm);

static void migration_failed(FerryVm *vm, FerryVmResult result)
{
  vm->mig = MIG_FAILED;
  FailQuery *f = g_new0(FailQuery, 1);
  f->vm = vm;
  f->result = result;
  if (vm->qmp != NULL && result != FERRY_VM_RESULT_CANCELLED) {
    ferry_qmp_execute(vm->qmp, "query-migrate", NULL, 0, on_failure_details, f);
  } else {
    vm_notify(vm, (FerryVmNotification){ .phase = FERRY_VM_PHASE_FAILED,
                                         .result = result,
                                         .message = result == FERRY_VM_RESULT_CANCELLED
                                                        ? "migration cancelled"
                                                        : "migration failed" });
    g_free(f);
  }
  /* A source finalize RESUME that waited for the transfer to stop goes on now. */
  if (vm->finalize_op != NULL && vm->origin == FERRY_VM_ORIGIN_SOURCE &&
      vm->finalize_action == FERRY_VM_FINALIZE_RESUME)
    rollback_cont(vm);
}

/* QEMU exited: what that means for a migration in flight or a finalize. */
void vm_killed(FerryVm *vm)
{
  if (vm->finalize_op != NULL && vm->finalize_action == FERRY_VM_FINALIZE_STOP) {
    if (vm->origin == FERRY_VM_ORIGIN_SOURCE)
      vm_notify(vm, (FerryVmNotification){ .phase = FERRY_VM_PHASE_DONE,
                                           .result = FERRY_VM_RESULT_SUCCESS });
    migration_end(vm);
    finish_finalize(vm, NULL);
    return;
  }
  if (vm->origin != 0 &&
      (vm->mig == MIG_READY || vm->mig == MIG_TRANSFERRING ||
       (vm->mig == MIG_COMPLETED && vm->origin == FERRY_VM_ORIGIN_DESTINATION))) {
    FerryVmResult r = vm->cancel_requested                   ? FERRY_VM_RESULT_CANCELLED
                      : vm->origin == FERRY_VM_ORIGIN_SOURCE ? FERRY_VM_RESULT_SOURCE_FAILED
                                                             : FERRY_VM_RESULT_DESTINATION_FAILED;
    vm->mig = MIG_FAILED;
    vm_notify(vm, (FerryVmNotification){ .phase = FERRY_VM_PHASE_FAILED,
                                         .result = r,
                                         .message = vm->exit_error != NULL ? vm->exit_error->message
                                                                           : "QEMU exited" });
  }
  if (vm->finalize_op != NULL) {
    g_autoptr(GError) e = g_error_new(FERRY_ERROR, FERRY_ERROR_UNAVAILABLE,
                                      "vm %s: QEMU exited during finalize", vm->id);
    finish_finalize(vm, e);
  }
}

/* Non-convergence: past the allowed passes, switch to post-copy or cancel. */
static void on_convergence_figures(FerryQmp *qmp, json_t *result, const GError *error, gpointer ud)
{
  FerryVm *vm = ud;
  if (vm->mig != MIG_TRANSFERRING)
    return;
  const FerryVmMigrationOptions *o = &vm->mopts;
  json_int_t expected =
      error == NULL ? json_integer_value(json_object_get(result, "expected-downtime")) : 0;
  gboolean over = o->blackout_threshold_ms != 0 && expected > (json_int_t)o->blackout_threshold_ms;
  if ((o->cancel_if_blackout_threshold_exceeds && over) || !postcopy_allowed(o)) {
    vm->cancel_requested = TRUE;
    vm_qmp_fire(vm, "migrate_cancel", NULL);
    return;
  }
  vm->postcopy_requested = TRUE;
  vm_qmp_fire(vm, "migrate-start-postcopy", NULL);
}

static void setup_done(FerryVm *vm)
{
  if (vm->setup_done_sent)
    return;
  vm->setup_done_sent = TRUE;
  vm_notify(vm, (FerryVmNotification){ .phase = FERRY_VM_PHASE_SETUP_DONE,
                                       .result = FERRY_VM_RESULT_SUCCESS });
}

static void on_pass(FerryVm *vm, guint pass)
{
  if (vm->origin != FERRY_VM_ORIGIN_SOURCE || vm->mig != MIG_TRANSFERRING)
    return;
  /* QEMU counts its first pass before it reports "active", and its last one happens
   * with the guest stopped: the phases stay in order and the blackout's pass is not a
   * transfer pass. */
  if (vm->blackout_sent)
    return;
  setup_done(vm);
  vm_notify(vm, (FerryVmNotification){ .phase = FERRY_VM_PHASE_TRANSFER_IN_PROGRESS,
                                       .result = FERRY_VM_RESULT_SUCCESS,
                                       .pass = pass });
  guint max = vm->mopts.maximum_passes;
  if (max != 0 && pass > max && !vm->convergence_handled && !vm->blackout_sent) {
    vm->convergence_handled = TRUE;
    ferry_qmp_execute(vm->qmp, "query-migrate", NULL, 0, on_convergence_figures, vm);
  }
}

static void blackout_exited(FerryVm *vm, gint64 now_us)
{
  if (vm->blackout_sent)
    return;
  vm->blackout_sent = TRUE;
  gint64 began = vm->blackout_started_us != 0 ? vm->blackout_started_us : vm->incoming_done_us;
  vm_notify(vm, (FerryVmNotification){ .phase = FERRY_VM_PHASE_BLACKOUT_EXITED,
                                       .result = FERRY_VM_RESULT_SUCCESS,
                                       .time_us = now_us,
                                       .blackout_ms = began != 0 && now_us > began
                                                          ? (guint64)(now_us - began) / 1000
                                                          : 0,
                                       .blackout_stop_us = now_us });
}

static void postcopy_poll(FerryVm *vm);

static gboolean on_postcopy_timer(gpointer ud)
{
  FerryVm *vm = ud;
  ferry_source_clear(&vm->poll_timer);
  postcopy_poll(vm);
  return G_SOURCE_REMOVE;
}

static void on_postcopy_status(FerryQmp *qmp, json_t *result, const GError *error, gpointer ud)
{
  FerryVm *vm = ud;
  if (error != NULL || vm->mig == MIG_FAILED)
    return; /* QEMU is gone or the migration failed: the exit or the event says so */
  const char *status = json_string_value(json_object_get(result, "status"));
  if (g_strcmp0(status, "paused") == 0) {
    vm_qmp_fire(vm, "cont", NULL);
    return;
  }
  if (g_strcmp0(status, "running") == 0)
    return;
  vm->poll_timer = ferry_timeout_new(vm->context, POSTCOPY_POLL_MS, on_postcopy_timer, vm);
}

static void postcopy_poll(FerryVm *vm)
{
  if (vm->qmp != NULL)
    ferry_qmp_execute(vm->qmp, "query-status", NULL, 0, on_postcopy_status, vm);
}

static void on_migration_status(FerryVm *vm, const char *status, gint64 ts)
{
  if (vm->origin == 0)
    return;
  if (strcmp(status, "active") == 0) {
    setup_done(vm);
  } else if (strcmp(status, "postcopy-active") == 0) {
    vm->postcopy_active = TRUE;
    if (vm->origin == FERRY_VM_ORIGIN_DESTINATION) {
      /* The guest runs here from now on; its pages follow on demand. But the destination
       * reports post-copy when it starts listening for pages, before it has loaded the
       * device state (the vCPU registers among it): run it only once QEMU left
       * "inmigrate" for "paused" (-S holds it there). Running it earlier crashes the
       * guest. */
      vm->blackout_started_us = ts;
      postcopy_poll(vm);
    }
  } else if (strcmp(status, "completed") == 0) {
    vm->mig = MIG_COMPLETED;
    if (vm->origin == FERRY_VM_ORIGIN_DESTINATION)
      vm->incoming_done_us = ts;
    vm_notify(vm, (FerryVmNotification){ .phase = FERRY_VM_PHASE_OFFLINE_DONE,
                                         .result = FERRY_VM_RESULT_SUCCESS });
  } else if (strcmp(status, "failed") == 0) {
    if (vm->mig != MIG_FAILED)
      migration_failed(vm, vm->cancel_requested ? FERRY_VM_RESULT_CANCELLED
                           : vm->origin == FERRY_VM_ORIGIN_SOURCE
                               ? FERRY_VM_RESULT_SOURCE_FAILED
                               : FERRY_VM_RESULT_DESTINATION_FAILED);
  } else if (strcmp(status, "cancelled") == 0) {
    if (vm->mig != MIG_FAILED)
      migration_failed(vm, FERRY_VM_RESULT_CANCELLED);
  }
}

void vm_on_qmp_event(FerryQmp *qmp, const char *event, json_t *data, gint64 ts, gpointer ud)
{
  FerryVm *vm = ud;
  if (ts == 0)
    ts = g_get_real_time();
  vm_disks_on_event(vm, event, data);
  if (strcmp(event, "STOP") == 0) {
    if (vm->state == FERRY_VM_RUNNING)
      vm->state = FERRY_VM_PAUSED;
    if (vm->origin == FERRY_VM_ORIGIN_SOURCE && vm->mig == MIG_TRANSFERRING && !vm->blackout_sent) {
      vm->blackout_sent = TRUE;
      vm_notify(vm, (FerryVmNotification){ .phase = FERRY_VM_PHASE_BLACKOUT_STARTED,
                                           .result = FERRY_VM_RESULT_SUCCESS,
                                           .time_us = ts,
                                           .postcopy = vm->postcopy_requested });
    }
  } else if (strcmp(event, "RESUME") == 0) {
    if (vm->state == FERRY_VM_PAUSED)
      vm->state = FERRY_VM_RUNNING;
    if (vm->origin == FERRY_VM_ORIGIN_DESTINATION &&
        (vm->mig == MIG_COMPLETED || vm->postcopy_active))
      blackout_exited(vm, ts);
  } else if (strcmp(event, "MIGRATION") == 0) {
    const char *status = json_string_value(json_object_get(data, "status"));
    if (status != NULL)
      on_migration_status(vm, status, ts);
  } else if (strcmp(event, "MIGRATION_PASS") == 0) {
    json_int_t pass = json_integer_value(json_object_get(data, "pass"));
    if (pass > 0)
      on_pass(vm, (guint)pass);
  }
}

/* ------------------------------------------------------------- finalize -- */

static void on_rollback_cont(FerryQmp *qmp, json_t *result, const GError *error, gpointer ud)
{
  FerryVm *vm = ud;
  if (error != NULL) {
    vm_notify(vm, (FerryVmNotification){ .phase = FERRY_VM_PHASE_FAILED,
                                         .result = FERRY_VM_RESULT_RECOVERY_FAILED,
                                         .message = error->message });
    g_autoptr(GError) e = g_error_new(error->domain, error->code,
                                      "vm %s: resume after migration: %s", vm->id, error->message);
    finish_finalize(vm, e);
    return;
  }
  vm->state = FERRY_VM_RUNNING;
  vm_notify(vm, (FerryVmNotification){ .phase = FERRY_VM_PHASE_RECOVERY_DONE,
                                       .result = FERRY_VM_RESULT_SUCCESS });
  migration_end(vm);
  finish_finalize(vm, NULL);
}

/* Source RESUME once no transfer runs: the guest runs here again. */
static void rollback_cont(FerryVm *vm)
{
  ferry_qmp_execute(vm->qmp, "cont", NULL, 0, on_rollback_cont, vm);
}

static void on_destination_cont(FerryQmp *qmp, json_t *result, const GError *error, gpointer ud)
{
  FerryVm *vm = ud;
  if (error != NULL) {
    g_autoptr(GError) e =
        g_error_new(error->domain, error->code, "vm %s: resume: %s", vm->id, error->message);
    finish_finalize(vm, e);
    return;
  }
  vm->state = FERRY_VM_RUNNING;
  blackout_exited(vm, g_get_real_time());
  vm_notify(
      vm, (FerryVmNotification){ .phase = FERRY_VM_PHASE_DONE, .result = FERRY_VM_RESULT_SUCCESS });
  migration_end(vm);
  finish_finalize(vm, NULL);
}

static void on_stopped_for_finalize(FerryVm *vm, const GError *error, gpointer ud)
{
  /* vm_killed() finished the finalize. */
}

/* finalize STOP of a VM whose QEMU is gone already: from the main loop. */
static void finalize_exited_later(FerryVm *vm, gpointer unused)
{
  if (!vm->freeing && vm->finalize_op != NULL)
    vm_killed(vm);
}

/* finalize RESUME of a destination that already runs (post-copy): from the main loop. */
static void destination_running_later(FerryVm *vm, gpointer unused)
{
  if (!vm->freeing && vm->finalize_op != NULL)
    on_destination_cont(vm->qmp, NULL, NULL, vm);
}

void ferry_vm_migration_finalize(FerryVm *vm, FerryVmFinalize action, gint64 blackout_started_us,
                                 FerryVmDoneFunc done, gpointer user_data)
{
  const char *what = action == FERRY_VM_FINALIZE_STOP ? "finalize STOP" : "finalize RESUME";
  GError *e = NULL;
  if (action != FERRY_VM_FINALIZE_STOP && action != FERRY_VM_FINALIZE_RESUME)
    e = g_error_new(FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "vm %s: finalize: unknown action %d",
                    vm->id, (int)action);
  else if (vm->origin == 0)
    e = vm_precondition(vm, what, "no migration is in progress");
  else if (vm->finalize_op != NULL)
    e = vm_precondition(vm, what, "a finalize is in progress");
  else if (vm->state == FERRY_VM_EXITED && !(action == FERRY_VM_FINALIZE_STOP))
    e = vm_precondition(vm, what, "QEMU has exited");
  else if (vm->origin == FERRY_VM_ORIGIN_SOURCE && action == FERRY_VM_FINALIZE_STOP &&
           vm->mig != MIG_COMPLETED)
    e = vm_precondition(vm, what, "the transfer has not completed");
  else if (vm->origin == FERRY_VM_ORIGIN_SOURCE && action == FERRY_VM_FINALIZE_RESUME &&
           (vm->postcopy_requested || vm->postcopy_active))
    e = vm_precondition(vm, what,
                        "the guest runs on the destination since the switch to post-copy");
  else if (vm->origin == FERRY_VM_ORIGIN_DESTINATION && action == FERRY_VM_FINALIZE_RESUME &&
           vm->mig != MIG_COMPLETED && !vm->postcopy_active)
    e = vm_precondition(vm, what, "the transfer has not completed");
  if (e != NULL) {
    vm_op_finish_later(vm, done, user_data, e);
    return;
  }
  vm->finalize_op = vm_op_new(vm, done, user_data);
  vm->finalize_action = action;
  if (action == FERRY_VM_FINALIZE_STOP) {
    if (vm->state == FERRY_VM_EXITED) {
      vm_later(vm, finalize_exited_later, NULL); /* never inside this call (vm.h) */
      return;
    }
    ferry_vm_terminate(vm, on_stopped_for_finalize, NULL);
    return;
  }
  if (vm->origin == FERRY_VM_ORIGIN_SOURCE) {
    if (vm->mig == MIG_TRANSFERRING) {
      vm->cancel_requested = TRUE;
      vm_qmp_fire(vm, "migrate_cancel", NULL); /* rollback_cont() follows the cancelled event */
      return;
    }
    rollback_cont(vm);
    return;
  }
  if (blackout_started_us != 0)
    vm->blackout_started_us = blackout_started_us;
  if (vm->state == FERRY_VM_RUNNING) {
    vm_later(vm, destination_running_later, NULL); /* already runs (post-copy) */
    return;
  }
  ferry_qmp_execute(vm->qmp, "cont", NULL, 0, on_destination_cont, vm);
}

void ferry_vm_migration_cancel(FerryVm *vm, FerryVmDoneFunc done, gpointer user_data)
{
  GError *e = NULL;
  if (vm->origin == 0 || vm->mig == MIG_FAILED)
    e = vm_precondition(vm, "cancel migration", "no migration is in progress");
  else if (vm->finalize_op != NULL)
    e = vm_precondition(vm, "cancel migration", "a finalize is in progress");
  else if (vm->postcopy_requested || vm->postcopy_active)
    e = vm_precondition(vm, "cancel migration",
                        "the guest runs on the destination since the switch to post-copy");
  else if (vm->origin == FERRY_VM_ORIGIN_SOURCE && vm->mig == MIG_COMPLETED)
    e = vm_precondition(vm, "cancel migration",
                        "the transfer has completed: finalize RESUME rolls it back");
  if (e != NULL) {
    vm_op_finish_later(vm, done, user_data, e);
    return;
  }
  vm->cancel_requested = TRUE;
  if (vm->origin == FERRY_VM_ORIGIN_DESTINATION) {
    ferry_vm_terminate(vm, done, user_data); /* FAILED (CANCELLED) follows the exit */
    return;
  }
  if (vm->mig == MIG_TRANSFERRING) {
    vm_qmp_fire(vm, "migrate_cancel", NULL);
    vm_op_finish_later(vm, done, user_data, NULL); /* FAILED (CANCELLED) follows the event */
    return;
  }
  /* Initialised, nothing sent yet: leave migration mode here. */
  migration_failed(vm, FERRY_VM_RESULT_CANCELLED);
  migration_end(vm);
  vm_op_finish_later(vm, done, user_data, NULL);
}

/* ---------------------------------------------------------------- figures -- */

static guint64 json_u64(json_t *object, const char *key)
{
  json_t *v = json_object_get(object, key);
  return json_is_integer(v) && json_integer_value(v) > 0 ? (guint64)json_integer_value(v) : 0;
}

static void on_stats(FerryQmp *qmp, json_t *result, const GError *error, gpointer ud)
{
  Op *op = ud;
  FerryVm *vm = op->vm;
  json_t *ram = error == NULL ? json_object_get(result, "ram") : NULL;
  if (json_is_object(ram) && !vm->freeing) {
    FerryVmMigrationStats *st = &vm->stats;
    st->valid = TRUE;
    st->transferred = json_u64(ram, "transferred");
    st->remaining = json_u64(ram, "remaining");
    st->total = json_u64(ram, "total");
    st->mbps = json_is_number(json_object_get(ram, "mbps"))
                   ? json_number_value(json_object_get(ram, "mbps"))
                   : 0;
    st->dirty_pages_rate = json_u64(ram, "dirty-pages-rate");
    st->passes = json_u64(ram, "dirty-sync-count");
    st->expected_downtime_ms = json_u64(result, "expected-downtime");
    st->downtime_ms = json_u64(result, "downtime");
  }
  vm_op_finish(op, error);
}

void ferry_vm_migration_query(FerryVm *vm, FerryVmDoneFunc done, gpointer user_data)
{
  if (vm->origin == 0 || vm->qmp == NULL || vm->state == FERRY_VM_EXITED) {
    vm_op_finish_later(vm, done, user_data,
                       vm_precondition(vm, "query the migration", "no migration is in progress"));
    return;
  }
  ferry_qmp_execute(vm->qmp, "query-migrate", NULL, 0, on_stats, vm_op_new(vm, done, user_data));
}

const FerryVmMigrationStats *ferry_vm_migration_get_stats(FerryVm *vm)
{
  return &vm->stats;
}
