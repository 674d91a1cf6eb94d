/* A shim's live-migration session: hcsshim's states and which call is allowed in which
 * (include/ferry/migration-session.h; the table is docs/migration.md, "The session"). */
#include <string.h>

#include "ferry/error.h"
#include "ferry/log.h"
#include "ferry/migration-notifications.h"
#include "ferry/migration-session.h"

struct FerryMigrationSession {
  GMainContext *context;
  /* The current session; id NULL when idle. */
  char *id;
  char *sandbox_id;
  /* The ids a PrepareAndExportSandbox or ImportSandbox in progress starts its session
   * with (one at a time: they claim the session). */
  char *pending_id;
  char *pending_sandbox_id;
  FerryMigrationRole role;
  FerryMigrationState state;
  guint64 epoch; /* bumped on every state change: a step begun before is stale */
  guint32 next_serial;
  guint32 busy_serial;   /* the call in progress (not Cancel), 0: none */
  guint32 cancel_serial; /* a Cancel in progress, 0: none */
  gboolean transfer_completed;
  FerryMigrationFinalizeAction finalize_action; /* engaged or done */
  guint64 transferred, total;
  GError *last_error;
  FerryMigrationNotifications *notes;
  /* The session cleaned up last, for Status and for a repeated Cleanup. */
  char *last_id;
  FerryMigrationRole last_role;
  FerryMigrationState last_state;
  guint64 last_transferred, last_total;
  GError *last_session_error;
  FerryMigrationNotifications *last_notes;
};

static const char *const state_names[FERRY_MIGRATION_N_STATES] = {
  "Idle",          "SourcePrepared", "SourceExported", "DestinationImported", "DestinationPrepared",
  "SocketWaiting", "SocketReady",    "Transferring",   "TransferCompleted",   "Finalized",
  "Cancelling",    "Cancelled",      "Failed",
};

static const char *const call_names[FERRY_MIGRATION_N_CALLS] = {
  "PrepareAndExportSandbox", "ImportSandbox",   "PrepareSandbox", "CreateDuplicateSocket",
  "TransferSandbox",         "FinalizeSandbox", "Cancel",         "Cleanup",
  "Notifications",           "Status",
};

const char *ferry_migration_state_name(FerryMigrationState state)
{
  return (guint)state < FERRY_MIGRATION_N_STATES ? state_names[state] : "Unknown";
}

const char *ferry_migration_call_name(FerryMigrationCall call)
{
  return (guint)call < FERRY_MIGRATION_N_CALLS ? call_names[call] : "Unknown";
}

const char *ferry_migration_finalize_action_name(FerryMigrationFinalizeAction action)
{
  switch (action) {
  case FERRY_MIGRATION_FINALIZE_STOP:
    return "STOP";
  case FERRY_MIGRATION_FINALIZE_RESUME:
    return "RESUME";
  default:
    return "UNSPECIFIED";
  }
}

const char *ferry_migration_role_name(FerryMigrationRole role)
{
  switch (role) {
  case FERRY_MIGRATION_ROLE_SOURCE:
    return "source";
  case FERRY_MIGRATION_ROLE_DESTINATION:
    return "destination";
  default:
    return "none";
  }
}

gboolean ferry_migration_state_is_terminal(FerryMigrationState state)
{
  return state == FERRY_MIGRATION_STATE_FINALIZED || state == FERRY_MIGRATION_STATE_CANCELLED ||
         state == FERRY_MIGRATION_STATE_FAILED;
}

FerryMigrationSession *ferry_migration_session_new(void)
{
  FerryMigrationSession *s = g_new0(FerryMigrationSession, 1);
  s->context = g_main_context_ref_thread_default();
  s->next_serial = 1;
  return s;
}

void ferry_migration_session_free(FerryMigrationSession *s)
{
  if (s == NULL)
    return;
  ferry_migration_notifications_free(s->notes);
  ferry_migration_notifications_free(s->last_notes);
  g_clear_error(&s->last_error);
  g_clear_error(&s->last_session_error);
  g_free(s->id);
  g_free(s->sandbox_id);
  g_free(s->pending_id);
  g_free(s->pending_sandbox_id);
  g_free(s->last_id);
  g_main_context_unref(s->context);
  g_free(s);
}

/* ------------------------------------------------------------- checking -- */

static gboolean check_session_id(FerryMigrationCall call, const char *id, GError **error)
{
  const char *why = NULL;
  if (id == NULL || id[0] == '\0')
    why = "is empty";
  else if (strlen(id) > FERRY_MIGRATION_SESSION_ID_MAX)
    why = "is longer than " G_STRINGIFY(FERRY_MIGRATION_SESSION_ID_MAX) " bytes";
  else
    for (const char *p = id; *p != '\0'; p++)
      if (!g_ascii_isgraph(*p)) {
        why = "holds a character that is not printable ASCII";
        break;
      }
  if (why != NULL) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "%s: session id %s",
                ferry_migration_call_name(call), why);
    return FALSE;
  }
  return TRUE;
}

static gboolean refuse(FerryMigrationSession *s, FerryMigrationCall call, int code, GError **error,
                       const char *why)
{
  g_set_error(error, FERRY_ERROR, code, "%s: %s (session %s, %s, state %s)",
              ferry_migration_call_name(call), why, s->id != NULL ? s->id : "-",
              ferry_migration_role_name(s->role), ferry_migration_state_name(s->state));
  return FALSE;
}

/* The session `id` names must be the current one. */
static gboolean lookup(FerryMigrationSession *s, FerryMigrationCall call, const char *id,
                       GError **error)
{
  if (s->id != NULL && strcmp(s->id, id) == 0)
    return TRUE;
  if (s->id == NULL && s->last_id != NULL && strcmp(s->last_id, id) == 0) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION,
                "%s: migration session %s was cleaned up", ferry_migration_call_name(call), id);
    return FALSE;
  }
  if (s->id == NULL)
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND,
                "%s: no migration session %s (this shim has none)", ferry_migration_call_name(call),
                id);
  else
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND,
                "%s: no migration session %s (this shim's session is %s)",
                ferry_migration_call_name(call), id, s->id);
  return FALSE;
}

static void step_init(FerryMigrationSession *s, FerryMigrationStep *step, FerryMigrationCall call,
                      FerryMigrationState to, gboolean noop)
{
  memset(step, 0, sizeof(*step));
  step->call = call;
  step->from = s->state;
  step->to = to;
  step->noop = noop;
  step->epoch = s->epoch;
}

/* A call that changes something: it may not overlap another one (Cancel excepted). */
static gboolean claim(FerryMigrationSession *s, FerryMigrationStep *step, GError **error)
{
  if (step->noop)
    return TRUE;
  if (step->call == FERRY_MIGRATION_CALL_CANCEL) {
    step->serial = s->next_serial++;
    s->cancel_serial = step->serial;
    return TRUE;
  }
  if (s->busy_serial != 0) {
    FerryMigrationCall call = step->call;
    memset(step, 0, sizeof(*step));
    return refuse(s, call, FERRY_ERROR_FAILED_PRECONDITION, error, "another call is in progress");
  }
  step->serial = s->next_serial++;
  s->busy_serial = step->serial;
  return TRUE;
}

/* --------------------------------------------------------------- the calls -- */

gboolean ferry_migration_session_begin_prepare_and_export(FerryMigrationSession *s,
                                                          const char *session_id,
                                                          FerryMigrationStep *step, GError **error)
{
  const FerryMigrationCall call = FERRY_MIGRATION_CALL_PREPARE_AND_EXPORT;
  if (!check_session_id(call, session_id, error))
    return FALSE;
  if (s->id == NULL) {
    step_init(s, step, call, FERRY_MIGRATION_STATE_SOURCE_EXPORTED, FALSE);
    if (!claim(s, step, error))
      return FALSE;
    g_free(s->pending_id);
    s->pending_id = g_strdup(session_id);
    return TRUE;
  }
  if (strcmp(s->id, session_id) != 0)
    return refuse(s, call, FERRY_ERROR_ALREADY_EXISTS, error, "another session exists");
  if (s->role != FERRY_MIGRATION_ROLE_SOURCE)
    return refuse(s, call, FERRY_ERROR_FAILED_PRECONDITION, error, "not a source session");
  if (s->state != FERRY_MIGRATION_STATE_SOURCE_EXPORTED)
    return refuse(s, call, FERRY_ERROR_FAILED_PRECONDITION, error, "not allowed in this state");
  /* A retry after a lost answer: export again, change nothing. */
  step_init(s, step, call, s->state, TRUE);
  return claim(s, step, error);
}

gboolean ferry_migration_session_begin_import(FerryMigrationSession *s, const char *session_id,
                                              const char *sandbox_id, FerryMigrationStep *step,
                                              GError **error)
{
  const FerryMigrationCall call = FERRY_MIGRATION_CALL_IMPORT;
  if (!check_session_id(call, session_id, error))
    return FALSE;
  /* The sandbox id names directories and the VM on this host: a plain name only. */
  if (sandbox_id == NULL || sandbox_id[0] == '\0' || strchr(sandbox_id, '/') != NULL ||
      strcmp(sandbox_id, ".") == 0 || strcmp(sandbox_id, "..") == 0 ||
      !check_session_id(call, sandbox_id, NULL)) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                "%s: sandbox id \"%s\" is not a plain name of printable ASCII (at most %d bytes)",
                ferry_migration_call_name(call), sandbox_id != NULL ? sandbox_id : "",
                FERRY_MIGRATION_SESSION_ID_MAX);
    return FALSE;
  }
  if (s->id == NULL) {
    step_init(s, step, call, FERRY_MIGRATION_STATE_DESTINATION_IMPORTED, FALSE);
    if (!claim(s, step, error))
      return FALSE;
    g_free(s->pending_id);
    s->pending_id = g_strdup(session_id);
    g_free(s->pending_sandbox_id);
    s->pending_sandbox_id = g_strdup(sandbox_id);
    return TRUE;
  }
  if (strcmp(s->id, session_id) != 0)
    return refuse(s, call, FERRY_ERROR_ALREADY_EXISTS, error, "another session exists");
  if (s->role != FERRY_MIGRATION_ROLE_DESTINATION)
    return refuse(s, call, FERRY_ERROR_FAILED_PRECONDITION, error, "not a destination session");
  return refuse(s, call, FERRY_ERROR_ALREADY_EXISTS, error, "the session was already imported");
}

gboolean ferry_migration_session_begin_prepare(FerryMigrationSession *s, const char *session_id,
                                               FerryMigrationStep *step, GError **error)
{
  const FerryMigrationCall call = FERRY_MIGRATION_CALL_PREPARE;
  if (!check_session_id(call, session_id, error) || !lookup(s, call, session_id, error))
    return FALSE;
  if (s->role != FERRY_MIGRATION_ROLE_DESTINATION)
    return refuse(s, call, FERRY_ERROR_FAILED_PRECONDITION, error, "not a destination session");
  if (s->state == FERRY_MIGRATION_STATE_DESTINATION_IMPORTED)
    step_init(s, step, call, FERRY_MIGRATION_STATE_DESTINATION_PREPARED, FALSE);
  else if (s->state == FERRY_MIGRATION_STATE_DESTINATION_PREPARED)
    step_init(s, step, call, s->state, TRUE);
  else
    return refuse(s, call, FERRY_ERROR_FAILED_PRECONDITION, error, "not allowed in this state");
  return claim(s, step, error);
}

/* The state in which this role has exported or prepared and waits for its socket. */
static FerryMigrationState ready_state(FerryMigrationRole role)
{
  return role == FERRY_MIGRATION_ROLE_SOURCE ? FERRY_MIGRATION_STATE_SOURCE_EXPORTED
                                             : FERRY_MIGRATION_STATE_DESTINATION_PREPARED;
}

gboolean ferry_migration_session_begin_create_duplicate_socket(FerryMigrationSession *s,
                                                               const char *session_id,
                                                               gsize protocol_info_len,
                                                               FerryMigrationStep *step,
                                                               GError **error)
{
  const FerryMigrationCall call = FERRY_MIGRATION_CALL_CREATE_DUPLICATE_SOCKET;
  if (!check_session_id(call, session_id, error))
    return FALSE;
  if (protocol_info_len == 0) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "%s: protocol_info is empty",
                ferry_migration_call_name(call));
    return FALSE;
  }
  if (!lookup(s, call, session_id, error))
    return FALSE;
  switch (s->state) {
  case FERRY_MIGRATION_STATE_SOCKET_WAITING:
    step_init(s, step, call, FERRY_MIGRATION_STATE_TRANSFERRING, FALSE);
    break;
  case FERRY_MIGRATION_STATE_SOCKET_READY:
  case FERRY_MIGRATION_STATE_TRANSFERRING:
  case FERRY_MIGRATION_STATE_TRANSFER_COMPLETED:
    return refuse(s, call, FERRY_ERROR_ALREADY_EXISTS, error, "the session has its socket");
  default:
    if (s->state != ready_state(s->role))
      return refuse(s, call, FERRY_ERROR_FAILED_PRECONDITION, error, "not allowed in this state");
    step_init(s, step, call, FERRY_MIGRATION_STATE_SOCKET_READY, FALSE);
    break;
  }
  return claim(s, step, error);
}

gboolean ferry_migration_session_begin_transfer(FerryMigrationSession *s, const char *session_id,
                                                FerryMigrationStep *step, GError **error)
{
  const FerryMigrationCall call = FERRY_MIGRATION_CALL_TRANSFER;
  if (!check_session_id(call, session_id, error) || !lookup(s, call, session_id, error))
    return FALSE;
  switch (s->state) {
  case FERRY_MIGRATION_STATE_SOCKET_READY:
    step_init(s, step, call, FERRY_MIGRATION_STATE_TRANSFERRING, FALSE);
    break;
  case FERRY_MIGRATION_STATE_SOCKET_WAITING:
  case FERRY_MIGRATION_STATE_TRANSFERRING:
  case FERRY_MIGRATION_STATE_TRANSFER_COMPLETED:
    step_init(s, step, call, s->state, TRUE);
    break;
  default:
    if (s->state != ready_state(s->role))
      return refuse(s, call, FERRY_ERROR_FAILED_PRECONDITION, error, "not allowed in this state");
    step_init(s, step, call, FERRY_MIGRATION_STATE_SOCKET_WAITING, FALSE);
    break;
  }
  return claim(s, step, error);
}

/* May `action` finalize from the current state (no earlier action locked)? NULL if so,
 * else why not. */
static const char *finalize_refusal(FerryMigrationSession *s, FerryMigrationFinalizeAction action)
{
  gboolean source = s->role == FERRY_MIGRATION_ROLE_SOURCE;
  gboolean stop = action == FERRY_MIGRATION_FINALIZE_STOP;
  switch (s->state) {
  case FERRY_MIGRATION_STATE_TRANSFER_COMPLETED:
    return NULL;
  case FERRY_MIGRATION_STATE_CANCELLED:
    if (source && stop)
      return "STOP after Cancel would end the only copy of the workload";
    if (!source && !stop && !s->transfer_completed)
      return "RESUME needs a completed transfer";
    return NULL;
  case FERRY_MIGRATION_STATE_FAILED:
    if (source && stop)
      return "STOP after a failure would end the only copy of the workload";
    if (!source && !stop)
      return "RESUME of a failed destination";
    return NULL;
  default:
    return "not allowed in this state";
  }
}

gboolean ferry_migration_session_begin_finalize(FerryMigrationSession *s, const char *session_id,
                                                FerryMigrationFinalizeAction action,
                                                FerryMigrationStep *step, GError **error)
{
  const FerryMigrationCall call = FERRY_MIGRATION_CALL_FINALIZE;
  if (!check_session_id(call, session_id, error))
    return FALSE;
  if (action != FERRY_MIGRATION_FINALIZE_STOP && action != FERRY_MIGRATION_FINALIZE_RESUME) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                "%s: action %d is not STOP or RESUME", ferry_migration_call_name(call),
                (int)action);
    return FALSE;
  }
  if (!lookup(s, call, session_id, error))
    return FALSE;
  if (s->finalize_action == FERRY_MIGRATION_FINALIZE_STOP &&
      action == FERRY_MIGRATION_FINALIZE_RESUME && s->role == FERRY_MIGRATION_ROLE_SOURCE &&
      s->state != FERRY_MIGRATION_STATE_CANCELLING) {
    /* The way back after a STOP, taken or begun: the caller knows the destination never
     * ran the guest, and the paused QEMU here runs it again. RESUME is locked then. */
    step_init(s, step, call, FERRY_MIGRATION_STATE_FINALIZED, FALSE);
  } else if (s->finalize_action != FERRY_MIGRATION_FINALIZE_UNSPECIFIED) {
    if (s->finalize_action != action) {
      g_autofree char *why =
          g_strdup_printf("%s already took effect or began; only %s may follow",
                          ferry_migration_finalize_action_name(s->finalize_action),
                          ferry_migration_finalize_action_name(s->finalize_action));
      return refuse(s, call, FERRY_ERROR_FAILED_PRECONDITION, error, why);
    }
    if (s->state == FERRY_MIGRATION_STATE_FINALIZED) {
      step_init(s, step, call, s->state, TRUE);
    } else if (s->state == FERRY_MIGRATION_STATE_CANCELLING) {
      return refuse(s, call, FERRY_ERROR_FAILED_PRECONDITION, error, "Cancel is in progress");
    } else {
      /* The same action again after it failed part way: go on from where it stopped. */
      step_init(s, step, call, FERRY_MIGRATION_STATE_FINALIZED, FALSE);
      step->engaged = TRUE;
    }
  } else {
    const char *why = finalize_refusal(s, action);
    if (why != NULL)
      return refuse(s, call, FERRY_ERROR_FAILED_PRECONDITION, error, why);
    step_init(s, step, call, FERRY_MIGRATION_STATE_FINALIZED, FALSE);
  }
  step->action = action;
  return claim(s, step, error);
}

gboolean ferry_migration_session_begin_cancel(FerryMigrationSession *s, const char *session_id,
                                              FerryMigrationStep *step, GError **error)
{
  const FerryMigrationCall call = FERRY_MIGRATION_CALL_CANCEL;
  if (!check_session_id(call, session_id, error) || !lookup(s, call, session_id, error))
    return FALSE;
  switch (s->state) {
  case FERRY_MIGRATION_STATE_FINALIZED:
    return refuse(s, call, FERRY_ERROR_FAILED_PRECONDITION, error, "the migration was finalized");
  case FERRY_MIGRATION_STATE_CANCELLING:
  case FERRY_MIGRATION_STATE_CANCELLED:
    step_init(s, step, call, s->state, TRUE);
    return TRUE;
  default:
    if (s->cancel_serial != 0) {
      /* A Cancel that has not engaged yet: this one converges on it. */
      step_init(s, step, call, FERRY_MIGRATION_STATE_CANCELLED, TRUE);
      return TRUE;
    }
    step_init(s, step, call, FERRY_MIGRATION_STATE_CANCELLED, FALSE);
    return claim(s, step, error);
  }
}

gboolean ferry_migration_session_begin_cleanup(FerryMigrationSession *s, const char *session_id,
                                               FerryMigrationStep *step, GError **error)
{
  const FerryMigrationCall call = FERRY_MIGRATION_CALL_CLEANUP;
  if (!check_session_id(call, session_id, error))
    return FALSE;
  if (s->id == NULL && s->last_id != NULL && strcmp(s->last_id, session_id) == 0) {
    step_init(s, step, call, s->state, TRUE);
    return TRUE;
  }
  if (!lookup(s, call, session_id, error))
    return FALSE;
  if (!ferry_migration_state_is_terminal(s->state))
    return refuse(s, call, FERRY_ERROR_FAILED_PRECONDITION, error,
                  "the session is not finalized, cancelled or failed");
  step_init(s, step, call, FERRY_MIGRATION_STATE_IDLE, FALSE);
  return claim(s, step, error);
}

FerryMigrationNotifications *ferry_migration_session_open_notifications(FerryMigrationSession *s,
                                                                        const char *session_id,
                                                                        GError **error)
{
  const FerryMigrationCall call = FERRY_MIGRATION_CALL_NOTIFICATIONS;
  if (!check_session_id(call, session_id, error) || !lookup(s, call, session_id, error))
    return NULL;
  return s->notes;
}

/* ------------------------------------------------------------ outcomes -- */

static void set_state(FerryMigrationSession *s, FerryMigrationState state)
{
  if (s->state == state)
    return;
  ferry_log(FERRY_LOG_DEBUG, "migration: session state", "session", s->id, "from",
            ferry_migration_state_name(s->state), "to", ferry_migration_state_name(state), NULL);
  s->state = state;
  s->epoch++;
  if (state == FERRY_MIGRATION_STATE_TRANSFER_COMPLETED)
    s->transfer_completed = TRUE;
}

/* PrepareAndExportSandbox and ImportSandbox: the session exists from here on. */
static void session_start(FerryMigrationSession *s, FerryMigrationRole role)
{
  g_free(s->id);
  s->id = g_steal_pointer(&s->pending_id);
  g_free(s->sandbox_id);
  s->sandbox_id = g_steal_pointer(&s->pending_sandbox_id);
  s->role = role;
  s->transfer_completed = FALSE;
  s->finalize_action = FERRY_MIGRATION_FINALIZE_UNSPECIFIED;
  s->transferred = s->total = 0;
  g_clear_error(&s->last_error);
  /* The last session's closed log has served its streams by now. */
  ferry_migration_notifications_free(s->last_notes);
  s->last_notes = NULL;
  g_main_context_push_thread_default(s->context);
  s->notes = ferry_migration_notifications_new(g_get_real_time());
  g_main_context_pop_thread_default(s->context);
}

/* Does the step's outcome still count? A call's does while the state is the one it
 * left it in. A Cancel's does while its claim holds and the session can still be
 * cancelled: the call it overtakes may move the state on meanwhile (a transfer that
 * started, an event that failed the session). */
static gboolean step_is_current(FerryMigrationSession *s, const FerryMigrationStep *step)
{
  if (step->call == FERRY_MIGRATION_CALL_CANCEL && !step->noop)
    return step->serial != 0 && s->cancel_serial == step->serial && s->id != NULL &&
           s->state != FERRY_MIGRATION_STATE_FINALIZED &&
           s->state != FERRY_MIGRATION_STATE_CANCELLED;
  return step->epoch == s->epoch;
}

static void release(FerryMigrationSession *s, FerryMigrationStep *step)
{
  if (step->serial == 0)
    return;
  if (s->busy_serial == step->serial) {
    s->busy_serial = 0;
    g_clear_pointer(&s->pending_id, g_free);
    g_clear_pointer(&s->pending_sandbox_id, g_free);
  }
  if (s->cancel_serial == step->serial)
    s->cancel_serial = 0;
  step->serial = 0;
}

gboolean ferry_migration_session_engage(FerryMigrationSession *s, FerryMigrationStep *step)
{
  if (!step_is_current(s, step))
    return FALSE;
  if (step->engaged || step->noop)
    return TRUE;
  step->engaged = TRUE;
  switch (step->call) {
  case FERRY_MIGRATION_CALL_PREPARE_AND_EXPORT:
    session_start(s, FERRY_MIGRATION_ROLE_SOURCE);
    set_state(s, FERRY_MIGRATION_STATE_SOURCE_PREPARED);
    break;
  case FERRY_MIGRATION_CALL_CANCEL:
    set_state(s, FERRY_MIGRATION_STATE_CANCELLING);
    break;
  case FERRY_MIGRATION_CALL_FINALIZE:
    s->finalize_action = step->action;
    break;
  default:
    break;
  }
  step->epoch = s->epoch;
  return TRUE;
}

gboolean ferry_migration_session_commit(FerryMigrationSession *s, FerryMigrationStep *step)
{
  gboolean current = step_is_current(s, step);
  if (current && !step->noop && s->id == NULL &&
      (step->call == FERRY_MIGRATION_CALL_PREPARE_AND_EXPORT ||
       step->call == FERRY_MIGRATION_CALL_IMPORT))
    session_start(s, step->call == FERRY_MIGRATION_CALL_IMPORT ? FERRY_MIGRATION_ROLE_DESTINATION
                                                               : FERRY_MIGRATION_ROLE_SOURCE);
  release(s, step);
  if (!current)
    return FALSE;
  if (step->noop)
    return TRUE;
  switch (step->call) {
  case FERRY_MIGRATION_CALL_FINALIZE:
    s->finalize_action = step->action;
    break;
  case FERRY_MIGRATION_CALL_CLEANUP:
    ferry_log(FERRY_LOG_DEBUG, "migration: session cleaned up", "session", s->id, "state",
              ferry_migration_state_name(s->state), NULL);
    g_free(s->last_id);
    s->last_id = g_steal_pointer(&s->id);
    s->last_role = s->role;
    s->last_state = s->state;
    s->last_transferred = s->transferred;
    s->last_total = s->total;
    g_clear_error(&s->last_session_error);
    s->last_session_error = g_steal_pointer(&s->last_error);
    ferry_migration_notifications_free(s->last_notes);
    s->last_notes = g_steal_pointer(&s->notes);
    ferry_migration_notifications_close(s->last_notes);
    g_free(s->sandbox_id);
    s->sandbox_id = NULL;
    s->role = FERRY_MIGRATION_ROLE_NONE;
    /* A Cancel still outstanding belonged to this session: it no longer counts. */
    s->cancel_serial = 0;
    s->transfer_completed = FALSE;
    s->finalize_action = FERRY_MIGRATION_FINALIZE_UNSPECIFIED;
    s->transferred = s->total = 0;
    break;
  default:
    break;
  }
  set_state(s, step->to);
  step->epoch = s->epoch;
  return TRUE;
}

gboolean ferry_migration_session_abort(FerryMigrationSession *s, FerryMigrationStep *step,
                                       const GError *error)
{
  gboolean current = step_is_current(s, step);
  release(s, step);
  /* An overtaken call's error is the expected end of what Cancel stopped: not news. */
  if (!current)
    return FALSE;
  if (error != NULL && s->id != NULL) {
    g_clear_error(&s->last_error);
    s->last_error = g_error_copy(error);
  }
  if (!step->engaged || step->noop)
    return TRUE;
  switch (step->call) {
  case FERRY_MIGRATION_CALL_IMPORT:
  case FERRY_MIGRATION_CALL_CLEANUP:
  case FERRY_MIGRATION_CALL_FINALIZE: /* the action stays locked: retry it */
    break;
  default:
    set_state(s, FERRY_MIGRATION_STATE_FAILED);
    break;
  }
  step->epoch = s->epoch;
  return TRUE;
}

/* ---------------------------------------------------------- events of a run -- */

static void record_error(FerryMigrationSession *s, const GError *error)
{
  g_clear_error(&s->last_error);
  s->last_error = g_error_copy(error);
}

gboolean ferry_migration_session_transfer_finished(FerryMigrationSession *s, const GError *error)
{
  if (s->state != FERRY_MIGRATION_STATE_TRANSFERRING)
    return FALSE;
  if (error != NULL) {
    record_error(s, error);
    set_state(s, FERRY_MIGRATION_STATE_FAILED);
  } else {
    set_state(s, FERRY_MIGRATION_STATE_TRANSFER_COMPLETED);
  }
  return TRUE;
}

gboolean ferry_migration_session_fail(FerryMigrationSession *s, const GError *error)
{
  if (s->id == NULL || ferry_migration_state_is_terminal(s->state))
    return FALSE;
  if (error != NULL)
    record_error(s, error);
  set_state(s, FERRY_MIGRATION_STATE_FAILED);
  return TRUE;
}

guint32 ferry_migration_session_post_failed(FerryMigrationSession *s)
{
  if (s->id == NULL || s->notes == NULL)
    return 0;
  gboolean source = s->role == FERRY_MIGRATION_ROLE_SOURCE;
  FerryMigrationNotification note = { 0 };
  note.origin = source ? FERRY_MIGRATION_ORIGIN_SOURCE : FERRY_MIGRATION_ORIGIN_DESTINATION;
  note.phase = FERRY_MIGRATION_PHASE_FAILED;
  note.state = source ? FERRY_MIGRATION_PHASE_STATE_SOURCE_FAILED
                      : FERRY_MIGRATION_PHASE_STATE_DESTINATION_FAILED;
  return ferry_migration_notifications_post(s->notes, &note);
}

void ferry_migration_session_set_progress(FerryMigrationSession *s, guint64 transferred,
                                          guint64 total)
{
  s->transferred = transferred;
  s->total = total;
}

/* ---------------------------------------------------------------- queries -- */

FerryMigrationState ferry_migration_session_get_state(FerryMigrationSession *s)
{
  return s->state;
}

FerryMigrationRole ferry_migration_session_get_role(FerryMigrationSession *s)
{
  return s->role;
}

const char *ferry_migration_session_get_id(FerryMigrationSession *s)
{
  return s->id;
}

const char *ferry_migration_session_get_sandbox_id(FerryMigrationSession *s)
{
  return s->sandbox_id;
}

FerryMigrationFinalizeAction ferry_migration_session_get_finalize_action(FerryMigrationSession *s)
{
  return s->finalize_action;
}

FerryMigrationNotifications *ferry_migration_session_get_notifications(FerryMigrationSession *s)
{
  return s->notes;
}

gboolean ferry_migration_session_status(FerryMigrationSession *s, const char *session_id,
                                        FerryMigrationStatus *out, GError **error)
{
  const FerryMigrationCall call = FERRY_MIGRATION_CALL_STATUS;
  if (!check_session_id(call, session_id, error))
    return FALSE;
  memset(out, 0, sizeof(*out));
  if (s->id != NULL && strcmp(s->id, session_id) == 0) {
    out->session_id = s->id;
    out->role = s->role;
    out->state = s->state;
    out->bytes_transferred = s->transferred;
    out->bytes_total = s->total;
    out->last_error = s->last_error;
    out->notifications = s->notes;
    return TRUE;
  }
  if (s->last_id != NULL && strcmp(s->last_id, session_id) == 0) {
    out->session_id = s->last_id;
    out->role = s->last_role;
    out->state = s->last_state;
    out->bytes_transferred = s->last_transferred;
    out->bytes_total = s->last_total;
    out->last_error = s->last_session_error;
    out->cleaned_up = TRUE;
    out->notifications = s->last_notes;
    return TRUE;
  }
  g_set_error(error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND, "%s: no migration session %s",
              ferry_migration_call_name(call), session_id);
  return FALSE;
}

gboolean ferry_migration_session_allows_task_changes(FerryMigrationSession *s, GError **error)
{
  if (s->id == NULL || (s->state == FERRY_MIGRATION_STATE_FINALIZED &&
                        s->finalize_action == FERRY_MIGRATION_FINALIZE_RESUME))
    return TRUE;
  g_set_error(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION,
              "migration session %s is in progress (state %s)", s->id,
              ferry_migration_state_name(s->state));
  return FALSE;
}
