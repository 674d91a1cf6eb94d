/*
 * A shim's live-migration session (docs/migration.md, "The session"): hcsshim's session
 * states, which Migration call is allowed in which, and what each leads to. Pure: it
 * knows nothing of QEMU, the bridge or ttrpc; the shim asks it before every call and
 * tells it the outcome.
 *
 * Every call goes in three parts:
 *   1. ferry_migration_session_begin_<call>() checks the arguments and the state and
 *      fails with a typed FERRY_ERROR (INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS,
 *      FAILED_PRECONDITION) before the caller did anything; on success it fills a
 *      FerryMigrationStep that says where the call leads (or that it is a retry with
 *      nothing left to do: step.noop). The state does not change.
 *   2. The caller does its side effect. When it reaches the point after which a
 *      failure cannot leave the session as it was (the VM was touched), it calls
 *      ferry_migration_session_engage(); that enters the call's intermediate state, if
 *      it has one (PrepareAndExportSandbox: SourcePrepared; Cancel: Cancelling).
 *   3. ferry_migration_session_commit() once the side effect succeeded, or
 *      ferry_migration_session_abort() with the error: before engage the state stays as
 *      it was, after it the call's failure rule applies (docs/migration.md): Failed for
 *      most calls, the action locked for FinalizeSandbox.
 *
 * One session at a time; one call in progress at a time, except Cancel, which may
 * overtake any call: the overtaken call's commit then returns FALSE and changes
 * nothing. Not thread-safe; all calls from one thread.
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

typedef struct FerryMigrationSession FerryMigrationSession;
typedef struct FerryMigrationNotifications FerryMigrationNotifications;

/* hcsshim's session states, in its order (numbered as ferry.migration.v1.SessionState). */
typedef enum {
  FERRY_MIGRATION_STATE_IDLE = 0,
  FERRY_MIGRATION_STATE_SOURCE_PREPARED = 1,
  FERRY_MIGRATION_STATE_SOURCE_EXPORTED = 2,
  FERRY_MIGRATION_STATE_DESTINATION_IMPORTED = 3,
  FERRY_MIGRATION_STATE_DESTINATION_PREPARED = 4,
  FERRY_MIGRATION_STATE_SOCKET_WAITING = 5,
  FERRY_MIGRATION_STATE_SOCKET_READY = 6,
  FERRY_MIGRATION_STATE_TRANSFERRING = 7,
  FERRY_MIGRATION_STATE_TRANSFER_COMPLETED = 8,
  FERRY_MIGRATION_STATE_FINALIZED = 9,
  FERRY_MIGRATION_STATE_CANCELLING = 10,
  FERRY_MIGRATION_STATE_CANCELLED = 11,
  FERRY_MIGRATION_STATE_FAILED = 12,
} FerryMigrationState;
#define FERRY_MIGRATION_N_STATES 13

/* Numbered as ferry.migration.v1.Role. */
typedef enum {
  FERRY_MIGRATION_ROLE_NONE = 0,
  FERRY_MIGRATION_ROLE_SOURCE = 1,
  FERRY_MIGRATION_ROLE_DESTINATION = 2,
} FerryMigrationRole;

/* The Migration service's calls (hcsshim's names), and Ferry's Status. */
typedef enum {
  FERRY_MIGRATION_CALL_PREPARE_AND_EXPORT = 0,
  FERRY_MIGRATION_CALL_IMPORT,
  FERRY_MIGRATION_CALL_PREPARE,
  FERRY_MIGRATION_CALL_CREATE_DUPLICATE_SOCKET,
  FERRY_MIGRATION_CALL_TRANSFER,
  FERRY_MIGRATION_CALL_FINALIZE,
  FERRY_MIGRATION_CALL_CANCEL,
  FERRY_MIGRATION_CALL_CLEANUP,
  FERRY_MIGRATION_CALL_NOTIFICATIONS,
  FERRY_MIGRATION_CALL_STATUS,
} FerryMigrationCall;
#define FERRY_MIGRATION_N_CALLS 10

/* hcsshim's FinalizeAction values. */
typedef enum {
  FERRY_MIGRATION_FINALIZE_UNSPECIFIED = 0,
  FERRY_MIGRATION_FINALIZE_STOP = 1,
  FERRY_MIGRATION_FINALIZE_RESUME = 2,
} FerryMigrationFinalizeAction;

/* The longest session id accepted (ids come from the peer). */
#define FERRY_MIGRATION_SESSION_ID_MAX 256

/* What a begun call leads to. Filled by begin_*(); the caller keeps it until commit or
 * abort and does not change it. */
typedef struct {
  FerryMigrationCall call;
  FerryMigrationFinalizeAction action; /* FINALIZE only */
  FerryMigrationState from;            /* the state when the call began */
  FerryMigrationState to;              /* where commit leads */
  /* A retry of a call that already took effect (a repeated Finalize with the same
   * action, a second Transfer, ...): there is nothing to change, only to answer as
   * the first call did (and to reconcile with what the VM really is, if the caller
   * keeps such state). commit() is still called and changes nothing. */
  gboolean noop;
  /* Private to the session. */
  guint64 epoch;
  guint32 serial;
  gboolean engaged;
} FerryMigrationStep;

/* What ferry.migration.v1.Status answers, without the notification fields (see
 * ferry_migration_session_status()). */
typedef struct {
  const char *session_id; /* borrowed from the session */
  FerryMigrationRole role;
  FerryMigrationState state;
  guint64 bytes_transferred;
  guint64 bytes_total;
  const GError *last_error; /* borrowed; NULL if none */
  gboolean cleaned_up;
  /* The session's notification log (borrowed; closed after Cleanup): the latest
   * message's phase and id come from there. */
  FerryMigrationNotifications *notifications;
} FerryMigrationStatus;

/* An idle shim: no session. The thread-default main context is captured for the
 * notification logs of the sessions to come. */
FerryMigrationSession *ferry_migration_session_new(void);
void ferry_migration_session_free(FerryMigrationSession *s);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FerryMigrationSession, ferry_migration_session_free)

/* hcsshim's names ("SourceExported", "PrepareAndExportSandbox", "STOP", "source"). Static. */
const char *ferry_migration_state_name(FerryMigrationState state);
const char *ferry_migration_call_name(FerryMigrationCall call);
const char *ferry_migration_finalize_action_name(FerryMigrationFinalizeAction action);
const char *ferry_migration_role_name(FerryMigrationRole role);
/* Finalized, Cancelled and Failed: nothing runs for the session any more; Cleanup may end it. */
gboolean ferry_migration_state_is_terminal(FerryMigrationState state);

/* --------------------------------------------------------------- the calls -- */

/*
 * Each checks, in this order: the arguments (INVALID_ARGUMENT: an empty or over-long
 * session id, a missing sandbox id or socket description, an unspecified finalize
 * action), the session (NOT_FOUND: no session with that id; ALREADY_EXISTS: another
 * session exists, for the two calls that start one), the role and state
 * (FAILED_PRECONDITION naming the state, or ALREADY_EXISTS for a second socket and a
 * second import), another call in progress (FAILED_PRECONDITION), and fills *step.
 * Nothing changes. The strings are borrowed for the call.
 */
gboolean ferry_migration_session_begin_prepare_and_export(FerryMigrationSession *s,
                                                          const char *session_id,
                                                          FerryMigrationStep *step, GError **error);
gboolean ferry_migration_session_begin_import(FerryMigrationSession *s, const char *session_id,
                                              const char *sandbox_id, FerryMigrationStep *step,
                                              GError **error);
gboolean ferry_migration_session_begin_prepare(FerryMigrationSession *s, const char *session_id,
                                               FerryMigrationStep *step, GError **error);
/* `protocol_info_len` is the size of the request's socket description (0: INVALID_ARGUMENT). */
gboolean ferry_migration_session_begin_create_duplicate_socket(FerryMigrationSession *s,
                                                               const char *session_id,
                                                               gsize protocol_info_len,
                                                               FerryMigrationStep *step,
                                                               GError **error);
/* step->to is TRANSFERRING when the socket is there (start the transfer), SOCKET_WAITING
 * when it is not yet (the transfer starts when the socket comes: that
 * CreateDuplicateSocket's step leads to TRANSFERRING). */
gboolean ferry_migration_session_begin_transfer(FerryMigrationSession *s, const char *session_id,
                                                FerryMigrationStep *step, GError **error);
gboolean ferry_migration_session_begin_finalize(FerryMigrationSession *s, const char *session_id,
                                                FerryMigrationFinalizeAction action,
                                                FerryMigrationStep *step, GError **error);
gboolean ferry_migration_session_begin_cancel(FerryMigrationSession *s, const char *session_id,
                                              FerryMigrationStep *step, GError **error);
gboolean ferry_migration_session_begin_cleanup(FerryMigrationSession *s, const char *session_id,
                                               FerryMigrationStep *step, GError **error);
/* Notifications: may the caller subscribe to this session's log (any state of a live
 * session; FAILED_PRECONDITION once it was cleaned up)? No step: nothing changes.
 * Returns the log (borrowed) or NULL with error. */
FerryMigrationNotifications *ferry_migration_session_open_notifications(FerryMigrationSession *s,
                                                                        const char *session_id,
                                                                        GError **error);

/* The point of no return of `step` (see the file comment). Enters the call's
 * intermediate state if it has one. Idempotent. FALSE, and nothing changes, when a
 * Cancel (or an event that failed the session) overtook the call: stop its side effect. */
gboolean ferry_migration_session_engage(FerryMigrationSession *s, FerryMigrationStep *step);

/* The side effect succeeded: move to step->to. FALSE, and nothing changes, when a Cancel
 * overtook the call since it began (the caller's result no longer counts). */
gboolean ferry_migration_session_commit(FerryMigrationSession *s, FerryMigrationStep *step);

/* The side effect failed with `error` (copied; it becomes the session's last error).
 * Before engage the state stays; after it, the call's failure rule applies. FALSE, and
 * nothing changes (not even the last error), when a Cancel overtook the call. */
gboolean ferry_migration_session_abort(FerryMigrationSession *s, FerryMigrationStep *step,
                                       const GError *error);

/* ---------------------------------------------------------- events of a run -- */

/* The transfer that TransferSandbox started ended (the Transfer step, or the
 * CreateDuplicateSocket step that started a waiting transfer, was committed first): TRANSFERRING ->
 * TRANSFER_COMPLETED (error NULL) or FAILED (error copied as the last error). FALSE, and nothing
 * changes, in any other state (a Cancel won the race, or no transfer runs). */
gboolean ferry_migration_session_transfer_finished(FerryMigrationSession *s, const GError *error);

/* Something outside a call failed the session (the socket did not come in time, QEMU
 * died): any state but Idle and the terminal ones -> FAILED, error copied. FALSE when
 * it changed nothing. */
gboolean ferry_migration_session_fail(FerryMigrationSession *s, const GError *error);

/* Record in the session's log that it failed, for a failure the VM does not report
 * itself (the socket did not come, an export or a prepare failed after engage): a
 * PHASE_FAILED message from this side (origin by role; SOURCE_FAILED or
 * DESTINATION_FAILED). Kept for late subscribers like every terminal message. Returns
 * its id, 0 when there is no session or its log is closed. Failures QEMU reports come
 * as the VM's own notifications and need no second message. */
guint32 ferry_migration_session_post_failed(FerryMigrationSession *s);

/* Transfer progress for Status. */
void ferry_migration_session_set_progress(FerryMigrationSession *s, guint64 transferred,
                                          guint64 total);

/* ---------------------------------------------------------------- queries -- */

FerryMigrationState ferry_migration_session_get_state(FerryMigrationSession *s);
FerryMigrationRole ferry_migration_session_get_role(FerryMigrationSession *s);
/* The current session's id (borrowed), NULL when idle. */
const char *ferry_migration_session_get_id(FerryMigrationSession *s);
/* The sandbox id ImportSandbox named (borrowed), NULL otherwise. */
const char *ferry_migration_session_get_sandbox_id(FerryMigrationSession *s);
/* The FinalizeSandbox action that took effect or was engaged, else UNSPECIFIED. */
FerryMigrationFinalizeAction ferry_migration_session_get_finalize_action(FerryMigrationSession *s);
/* The session's log (borrowed), NULL when idle. */
FerryMigrationNotifications *ferry_migration_session_get_notifications(FerryMigrationSession *s);

/* Status of the current session or of the one cleaned up last (then cleaned_up is
 * TRUE). INVALID_ARGUMENT for an empty id, NOT_FOUND for any other. */
gboolean ferry_migration_session_status(FerryMigrationSession *s, const char *session_id,
                                        FerryMigrationStatus *out, GError **error);

/* May the Task API change containers now? Idle, or a session finalized with RESUME
 * (the source rolled back, or the destination runs the workload). Otherwise
 * FAILED_PRECONDITION "migration session <id> is in progress (state <State>)". */
gboolean ferry_migration_session_allows_task_changes(FerryMigrationSession *s, GError **error);

G_END_DECLS
