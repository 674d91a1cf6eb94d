/*
 * The migration session state machine (lib/migration/session.c). The expected outcome
 * of every state x call comes from the tables in docs/migration.md ("State x call"),
 * copied here cell for cell; each state is reached by driving the session through its
 * public calls, as a shim would.
 */
#include <glib.h>
#include <string.h>

#include "ferry/error.h"
#include "ferry/migration-notifications.h"
#include "ferry/migration-session.h"
#include "ferry/migration/v1/status.pb-c.h"

#define SID "sess-1"

/* ---- driving a session ---- */

static void ok_step(FerryMigrationSession *s, gboolean began, FerryMigrationStep *step,
                    GError *error)
{
  g_assert_no_error(error);
  g_assert_true(began);
  g_assert_true(ferry_migration_session_commit(s, step));
}

static void do_export(FerryMigrationSession *s)
{
  FerryMigrationStep step;
  GError *error = NULL;
  gboolean began = ferry_migration_session_begin_prepare_and_export(s, SID, &step, &error);
  g_assert_no_error(error);
  g_assert_true(began);
  ferry_migration_session_engage(s, &step);
  g_assert_cmpint(ferry_migration_session_get_state(s), ==, FERRY_MIGRATION_STATE_SOURCE_PREPARED);
  g_assert_true(ferry_migration_session_commit(s, &step));
}

static void do_import(FerryMigrationSession *s)
{
  FerryMigrationStep step;
  GError *error = NULL;
  gboolean began = ferry_migration_session_begin_import(s, SID, "sb", &step, &error);
  ok_step(s, began, &step, error);
}

static void do_prepare(FerryMigrationSession *s)
{
  FerryMigrationStep step;
  GError *error = NULL;
  gboolean began = ferry_migration_session_begin_prepare(s, SID, &step, &error);
  ok_step(s, began, &step, error);
}

static void do_socket(FerryMigrationSession *s)
{
  FerryMigrationStep step;
  GError *error = NULL;
  gboolean began = ferry_migration_session_begin_create_duplicate_socket(s, SID, 4, &step, &error);
  ok_step(s, began, &step, error);
}

static void do_transfer(FerryMigrationSession *s)
{
  FerryMigrationStep step;
  GError *error = NULL;
  gboolean began = ferry_migration_session_begin_transfer(s, SID, &step, &error);
  ok_step(s, began, &step, error);
}

static void do_finalize(FerryMigrationSession *s, FerryMigrationFinalizeAction action)
{
  FerryMigrationStep step;
  GError *error = NULL;
  gboolean began = ferry_migration_session_begin_finalize(s, SID, action, &step, &error);
  ok_step(s, began, &step, error);
}

static void do_cancel(FerryMigrationSession *s)
{
  FerryMigrationStep step;
  GError *error = NULL;
  gboolean began = ferry_migration_session_begin_cancel(s, SID, &step, &error);
  g_assert_no_error(error);
  g_assert_true(began);
  ferry_migration_session_engage(s, &step);
  g_assert_true(ferry_migration_session_commit(s, &step));
}

static void do_cleanup(FerryMigrationSession *s)
{
  FerryMigrationStep step;
  GError *error = NULL;
  gboolean began = ferry_migration_session_begin_cleanup(s, SID, &step, &error);
  ok_step(s, began, &step, error);
}

/* A step that stays in progress while a row is tested (PrepareAndExport for
 * SourcePrepared, Cancel for Cancelling). */
static FerryMigrationStep pending;

typedef enum {
  R_IDLE,
  R_SRC_PREPARED,
  R_SRC_EXPORTED,
  R_SRC_SOCKET_WAITING,
  R_SRC_SOCKET_READY,
  R_SRC_TRANSFERRING,
  R_SRC_COMPLETED,
  R_SRC_FINALIZED_STOP,
  R_SRC_FINALIZED_RESUME,
  R_SRC_CANCELLING,
  R_SRC_CANCELLED,
  R_SRC_FAILED,
  R_DST_IMPORTED,
  R_DST_PREPARED,
  R_DST_SOCKET_WAITING,
  R_DST_SOCKET_READY,
  R_DST_TRANSFERRING,
  R_DST_COMPLETED,
  R_DST_FINALIZED_STOP,
  R_DST_FINALIZED_RESUME,
  R_DST_CANCELLING,
  R_DST_CANCELLED_EARLY,
  R_DST_CANCELLED_COMPLETED,
  R_DST_FAILED,
} Recipe;

static void begin_cancel_pending(FerryMigrationSession *s)
{
  GError *error = NULL;
  g_assert_true(ferry_migration_session_begin_cancel(s, SID, &pending, &error));
  g_assert_no_error(error);
  ferry_migration_session_engage(s, &pending);
}

static void fail_now(FerryMigrationSession *s)
{
  g_autoptr(GError) why = g_error_new(FERRY_ERROR, FERRY_ERROR_UNAVAILABLE, "qemu died");
  g_assert_true(ferry_migration_session_fail(s, why));
}

/* Drive a new session to the row's state through the public calls. */
static void reach(FerryMigrationSession *s, Recipe r)
{
  gboolean dst = r >= R_DST_IMPORTED;
  if (r == R_IDLE)
    return;
  if (r == R_SRC_PREPARED) {
    GError *error = NULL;
    g_assert_true(ferry_migration_session_begin_prepare_and_export(s, SID, &pending, &error));
    ferry_migration_session_engage(s, &pending);
    return;
  }
  if (dst) {
    do_import(s);
    if (r == R_DST_IMPORTED)
      return;
    if (r == R_DST_CANCELLED_EARLY) {
      do_cancel(s);
      return;
    }
    do_prepare(s);
  } else {
    do_export(s);
  }
  switch (r) {
  case R_SRC_EXPORTED:
  case R_DST_PREPARED:
    return;
  case R_SRC_CANCELLING:
  case R_DST_CANCELLING:
    begin_cancel_pending(s);
    return;
  case R_SRC_CANCELLED:
    do_cancel(s);
    return;
  case R_SRC_FAILED:
  case R_DST_FAILED:
    fail_now(s);
    return;
  case R_SRC_SOCKET_WAITING:
  case R_DST_SOCKET_WAITING:
    do_transfer(s);
    return;
  default:
    break;
  }
  do_socket(s);
  if (r == R_SRC_SOCKET_READY || r == R_DST_SOCKET_READY)
    return;
  do_transfer(s);
  if (r == R_SRC_TRANSFERRING || r == R_DST_TRANSFERRING)
    return;
  g_assert_true(ferry_migration_session_transfer_finished(s, NULL));
  switch (r) {
  case R_SRC_FINALIZED_STOP:
  case R_DST_FINALIZED_STOP:
    do_finalize(s, FERRY_MIGRATION_FINALIZE_STOP);
    break;
  case R_SRC_FINALIZED_RESUME:
  case R_DST_FINALIZED_RESUME:
    do_finalize(s, FERRY_MIGRATION_FINALIZE_RESUME);
    break;
  case R_DST_CANCELLED_COMPLETED:
    do_cancel(s);
    break;
  default:
    break;
  }
}

/* ---- the tables of docs/migration.md ---- */

enum { C_EXPORT, C_IMPORT, C_PREPARE, C_SOCKET, C_TRANSFER, C_STOP, C_RESUME, C_CANCEL, C_CLEANUP };
#define N_COLUMNS 9

typedef struct {
  const char *name;
  Recipe recipe;
  FerryMigrationState state;
  const char *cells[N_COLUMNS];
} Row;

/* Cells as the doc writes them: "-> State", "=", "AE", "FP", "NF". */
static const Row rows[] = {
  { "Idle",
    R_IDLE,
    FERRY_MIGRATION_STATE_IDLE,
    { "-> SourceExported", "-> DestinationImported", "NF", "NF", "NF", "NF", "NF", "NF", "NF" } },
  /* Source. */
  { "source/SourcePrepared",
    R_SRC_PREPARED,
    FERRY_MIGRATION_STATE_SOURCE_PREPARED,
    { "FP", "FP", "FP", "FP", "FP", "FP", "FP", "-> Cancelled", "FP" } },
  { "source/SourceExported",
    R_SRC_EXPORTED,
    FERRY_MIGRATION_STATE_SOURCE_EXPORTED,
    { "=", "FP", "FP", "-> SocketReady", "-> SocketWaiting", "FP", "FP", "-> Cancelled", "FP" } },
  { "source/SocketWaiting",
    R_SRC_SOCKET_WAITING,
    FERRY_MIGRATION_STATE_SOCKET_WAITING,
    { "FP", "FP", "FP", "-> Transferring", "=", "FP", "FP", "-> Cancelled", "FP" } },
  { "source/SocketReady",
    R_SRC_SOCKET_READY,
    FERRY_MIGRATION_STATE_SOCKET_READY,
    { "FP", "FP", "FP", "AE", "-> Transferring", "FP", "FP", "-> Cancelled", "FP" } },
  { "source/Transferring",
    R_SRC_TRANSFERRING,
    FERRY_MIGRATION_STATE_TRANSFERRING,
    { "FP", "FP", "FP", "AE", "=", "FP", "FP", "-> Cancelled", "FP" } },
  { "source/TransferCompleted",
    R_SRC_COMPLETED,
    FERRY_MIGRATION_STATE_TRANSFER_COMPLETED,
    { "FP", "FP", "FP", "AE", "=", "-> Finalized", "-> Finalized", "-> Cancelled", "FP" } },
  { "source/Finalized-by-STOP",
    R_SRC_FINALIZED_STOP,
    FERRY_MIGRATION_STATE_FINALIZED,
    { "FP", "FP", "FP", "FP", "FP", "=", "-> Finalized", "FP", "-> Idle" } },
  { "source/Finalized-by-RESUME",
    R_SRC_FINALIZED_RESUME,
    FERRY_MIGRATION_STATE_FINALIZED,
    { "FP", "FP", "FP", "FP", "FP", "FP", "=", "FP", "-> Idle" } },
  { "source/Cancelling",
    R_SRC_CANCELLING,
    FERRY_MIGRATION_STATE_CANCELLING,
    { "FP", "FP", "FP", "FP", "FP", "FP", "FP", "=", "FP" } },
  { "source/Cancelled",
    R_SRC_CANCELLED,
    FERRY_MIGRATION_STATE_CANCELLED,
    { "FP", "FP", "FP", "FP", "FP", "FP", "-> Finalized", "=", "-> Idle" } },
  { "source/Failed",
    R_SRC_FAILED,
    FERRY_MIGRATION_STATE_FAILED,
    { "FP", "FP", "FP", "FP", "FP", "FP", "-> Finalized", "-> Cancelled", "-> Idle" } },
  /* Destination. */
  { "destination/DestinationImported",
    R_DST_IMPORTED,
    FERRY_MIGRATION_STATE_DESTINATION_IMPORTED,
    { "FP", "AE", "-> DestinationPrepared", "FP", "FP", "FP", "FP", "-> Cancelled", "FP" } },
  { "destination/DestinationPrepared",
    R_DST_PREPARED,
    FERRY_MIGRATION_STATE_DESTINATION_PREPARED,
    { "FP", "AE", "=", "-> SocketReady", "-> SocketWaiting", "FP", "FP", "-> Cancelled", "FP" } },
  { "destination/SocketWaiting",
    R_DST_SOCKET_WAITING,
    FERRY_MIGRATION_STATE_SOCKET_WAITING,
    { "FP", "AE", "FP", "-> Transferring", "=", "FP", "FP", "-> Cancelled", "FP" } },
  { "destination/SocketReady",
    R_DST_SOCKET_READY,
    FERRY_MIGRATION_STATE_SOCKET_READY,
    { "FP", "AE", "FP", "AE", "-> Transferring", "FP", "FP", "-> Cancelled", "FP" } },
  { "destination/Transferring",
    R_DST_TRANSFERRING,
    FERRY_MIGRATION_STATE_TRANSFERRING,
    { "FP", "AE", "FP", "AE", "=", "FP", "FP", "-> Cancelled", "FP" } },
  { "destination/TransferCompleted",
    R_DST_COMPLETED,
    FERRY_MIGRATION_STATE_TRANSFER_COMPLETED,
    { "FP", "AE", "FP", "AE", "=", "-> Finalized", "-> Finalized", "-> Cancelled", "FP" } },
  { "destination/Finalized-by-STOP",
    R_DST_FINALIZED_STOP,
    FERRY_MIGRATION_STATE_FINALIZED,
    { "FP", "AE", "FP", "FP", "FP", "=", "FP", "FP", "-> Idle" } },
  { "destination/Finalized-by-RESUME",
    R_DST_FINALIZED_RESUME,
    FERRY_MIGRATION_STATE_FINALIZED,
    { "FP", "AE", "FP", "FP", "FP", "FP", "=", "FP", "-> Idle" } },
  { "destination/Cancelling",
    R_DST_CANCELLING,
    FERRY_MIGRATION_STATE_CANCELLING,
    { "FP", "AE", "FP", "FP", "FP", "FP", "FP", "=", "FP" } },
  { "destination/Cancelled-transfer-not-completed",
    R_DST_CANCELLED_EARLY,
    FERRY_MIGRATION_STATE_CANCELLED,
    { "FP", "AE", "FP", "FP", "FP", "-> Finalized", "FP", "=", "-> Idle" } },
  { "destination/Cancelled-after-TransferCompleted",
    R_DST_CANCELLED_COMPLETED,
    FERRY_MIGRATION_STATE_CANCELLED,
    { "FP", "AE", "FP", "FP", "FP", "-> Finalized", "-> Finalized", "=", "-> Idle" } },
  { "destination/Failed",
    R_DST_FAILED,
    FERRY_MIGRATION_STATE_FAILED,
    { "FP", "AE", "FP", "FP", "FP", "-> Finalized", "FP", "-> Cancelled", "-> Idle" } },
};

static gboolean begin_column(FerryMigrationSession *s, int column, const char *sid,
                             FerryMigrationStep *step, GError **error)
{
  switch (column) {
  case C_EXPORT:
    return ferry_migration_session_begin_prepare_and_export(s, sid, step, error);
  case C_IMPORT:
    return ferry_migration_session_begin_import(s, sid, "sb", step, error);
  case C_PREPARE:
    return ferry_migration_session_begin_prepare(s, sid, step, error);
  case C_SOCKET:
    return ferry_migration_session_begin_create_duplicate_socket(s, sid, 4, step, error);
  case C_TRANSFER:
    return ferry_migration_session_begin_transfer(s, sid, step, error);
  case C_STOP:
    return ferry_migration_session_begin_finalize(s, sid, FERRY_MIGRATION_FINALIZE_STOP, step,
                                                  error);
  case C_RESUME:
    return ferry_migration_session_begin_finalize(s, sid, FERRY_MIGRATION_FINALIZE_RESUME, step,
                                                  error);
  case C_CANCEL:
    return ferry_migration_session_begin_cancel(s, sid, step, error);
  case C_CLEANUP:
    return ferry_migration_session_begin_cleanup(s, sid, step, error);
  default:
    g_assert_not_reached();
  }
}

static FerryMigrationState state_named(const char *name)
{
  for (int i = 0; i < FERRY_MIGRATION_N_STATES; i++)
    if (strcmp(ferry_migration_state_name((FerryMigrationState)i), name) == 0)
      return (FerryMigrationState)i;
  g_error("no state %s", name);
}

static int code_named(const char *cell)
{
  if (strcmp(cell, "AE") == 0)
    return FERRY_ERROR_ALREADY_EXISTS;
  if (strcmp(cell, "FP") == 0)
    return FERRY_ERROR_FAILED_PRECONDITION;
  if (strcmp(cell, "NF") == 0)
    return FERRY_ERROR_NOT_FOUND;
  g_error("bad cell %s", cell);
}

static void check_cell(const Row *row, int column)
{
  g_autoptr(FerryMigrationSession) s = ferry_migration_session_new();
  reach(s, row->recipe);
  g_assert_cmpstr(ferry_migration_state_name(ferry_migration_session_get_state(s)), ==,
                  ferry_migration_state_name(row->state));

  const char *cell = row->cells[column];
  FerryMigrationStep step;
  GError *error = NULL;
  gboolean began = begin_column(s, column, SID, &step, &error);
  if (g_str_has_prefix(cell, "-> ") || strcmp(cell, "=") == 0) {
    g_assert_no_error(error);
    g_assert_true(began);
    gboolean noop = strcmp(cell, "=") == 0;
    FerryMigrationState to = noop ? row->state : state_named(cell + 3);
    g_assert_cmpint(step.noop, ==, noop);
    g_assert_cmpstr(ferry_migration_state_name(step.to), ==, ferry_migration_state_name(to));
    /* begin changes nothing. */
    g_assert_cmpint(ferry_migration_session_get_state(s), ==, row->state);
    ferry_migration_session_engage(s, &step);
    g_assert_true(ferry_migration_session_commit(s, &step));
    g_assert_cmpstr(ferry_migration_state_name(ferry_migration_session_get_state(s)), ==,
                    ferry_migration_state_name(to));
  } else {
    g_assert_false(began);
    g_assert_error(error, FERRY_ERROR, code_named(cell));
    /* The message names the call. */
    static const FerryMigrationCall calls[N_COLUMNS] = {
      FERRY_MIGRATION_CALL_PREPARE_AND_EXPORT,
      FERRY_MIGRATION_CALL_IMPORT,
      FERRY_MIGRATION_CALL_PREPARE,
      FERRY_MIGRATION_CALL_CREATE_DUPLICATE_SOCKET,
      FERRY_MIGRATION_CALL_TRANSFER,
      FERRY_MIGRATION_CALL_FINALIZE,
      FERRY_MIGRATION_CALL_FINALIZE,
      FERRY_MIGRATION_CALL_CANCEL,
      FERRY_MIGRATION_CALL_CLEANUP,
    };
    g_assert_true(g_str_has_prefix(error->message, ferry_migration_call_name(calls[column])));
    g_clear_error(&error);
    g_assert_cmpint(ferry_migration_session_get_state(s), ==, row->state);
  }
}

static void test_table(gconstpointer data)
{
  const Row *row = data;
  for (int column = 0; column < N_COLUMNS; column++)
    check_cell(row, column);
}

/* A session with another id: Export and Import are AE, everything else NF. */
static void test_other_session(void)
{
  for (gsize r = 1; r < G_N_ELEMENTS(rows); r++) {
    for (int column = 0; column < N_COLUMNS; column++) {
      g_autoptr(FerryMigrationSession) s = ferry_migration_session_new();
      reach(s, rows[r].recipe);
      FerryMigrationStep step;
      GError *error = NULL;
      g_assert_false(begin_column(s, column, "other", &step, &error));
      int want = column == C_EXPORT || column == C_IMPORT ? FERRY_ERROR_ALREADY_EXISTS
                                                          : FERRY_ERROR_NOT_FOUND;
      g_assert_error(error, FERRY_ERROR, want);
      g_clear_error(&error);
      g_assert_cmpint(ferry_migration_session_get_state(s), ==, rows[r].state);
    }
  }
}

/* ---- arguments ---- */

static void test_arguments(void)
{
  g_autoptr(FerryMigrationSession) s = ferry_migration_session_new();
  FerryMigrationStep step;
  GError *error = NULL;
  g_autofree char *long_id = g_strnfill(FERRY_MIGRATION_SESSION_ID_MAX + 1, 'a');
  const char *bad_ids[] = { "", "a b", "tab\t", long_id };

  for (gsize i = 0; i < G_N_ELEMENTS(bad_ids); i++) {
    for (int column = 0; column < N_COLUMNS; column++) {
      g_assert_false(begin_column(s, column, bad_ids[i], &step, &error));
      g_assert_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
      g_clear_error(&error);
    }
    g_assert_false(ferry_migration_session_begin_cancel(s, NULL, &step, &error));
    g_assert_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
    g_clear_error(&error);
  }
  /* An id of exactly the maximum is fine. */
  g_autofree char *max_id = g_strnfill(FERRY_MIGRATION_SESSION_ID_MAX, 'a');
  g_assert_true(ferry_migration_session_begin_import(s, max_id, "sb", &step, &error));
  g_assert_no_error(error);
  g_assert_true(ferry_migration_session_abort(s, &step, NULL));

  g_assert_false(ferry_migration_session_begin_import(s, SID, "", &step, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
  g_clear_error(&error);
  g_assert_false(ferry_migration_session_begin_import(s, SID, NULL, &step, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
  g_clear_error(&error);
  const char *bad_sandboxes[] = { "a/b", "..", ".", "sp ace", long_id };
  for (gsize i = 0; i < G_N_ELEMENTS(bad_sandboxes); i++) {
    g_assert_false(ferry_migration_session_begin_import(s, SID, bad_sandboxes[i], &step, &error));
    g_assert_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
    g_clear_error(&error);
  }

  /* Argument errors come before NOT_FOUND: no session exists here. */
  g_assert_false(ferry_migration_session_begin_create_duplicate_socket(s, SID, 0, &step, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
  g_clear_error(&error);
  g_assert_false(ferry_migration_session_begin_finalize(
      s, SID, FERRY_MIGRATION_FINALIZE_UNSPECIFIED, &step, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
  g_clear_error(&error);
  g_assert_false(ferry_migration_session_begin_finalize(s, SID, 7, &step, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
  g_clear_error(&error);
  g_assert_cmpint(ferry_migration_session_get_state(s), ==, FERRY_MIGRATION_STATE_IDLE);
  g_assert_null(ferry_migration_session_get_id(s));
}

/* ---- failure rules ---- */

/* An abort before engage leaves everything as it was; after engage the call's rule
 * applies (docs/migration.md, failure rules). */
static void test_abort_before_engage(void)
{
  g_autoptr(GError) why = g_error_new(FERRY_ERROR, FERRY_ERROR_INTERNAL, "boom");
  FerryMigrationStep step;
  GError *error = NULL;

  g_autoptr(FerryMigrationSession) s = ferry_migration_session_new();
  g_assert_true(ferry_migration_session_begin_prepare_and_export(s, SID, &step, &error));
  g_assert_true(ferry_migration_session_abort(s, &step, why));
  g_assert_cmpint(ferry_migration_session_get_state(s), ==, FERRY_MIGRATION_STATE_IDLE);
  g_assert_null(ferry_migration_session_get_id(s));

  g_assert_true(ferry_migration_session_begin_import(s, SID, "sb", &step, &error));
  ferry_migration_session_engage(s, &step);
  g_assert_true(ferry_migration_session_abort(s, &step, why));
  g_assert_null(ferry_migration_session_get_id(s));

  do_import(s);
  g_assert_cmpstr(ferry_migration_session_get_sandbox_id(s), ==, "sb");
  g_assert_true(ferry_migration_session_begin_prepare(s, SID, &step, &error));
  g_assert_true(ferry_migration_session_abort(s, &step, why));
  g_assert_cmpint(ferry_migration_session_get_state(s), ==,
                  FERRY_MIGRATION_STATE_DESTINATION_IMPORTED);
  do_prepare(s);
  do_transfer(s); /* SocketWaiting */
  g_assert_true(ferry_migration_session_begin_create_duplicate_socket(s, SID, 4, &step, &error));
  g_assert_true(ferry_migration_session_abort(s, &step, why));
  g_assert_cmpint(ferry_migration_session_get_state(s), ==, FERRY_MIGRATION_STATE_SOCKET_WAITING);
  g_assert_no_error(error);
}

typedef struct {
  const char *name;
  Recipe recipe;
  int column;
  FerryMigrationState after;
} FailureCase;

static const FailureCase failure_cases[] = {
  { "export", R_IDLE, C_EXPORT, FERRY_MIGRATION_STATE_FAILED },
  { "prepare", R_DST_IMPORTED, C_PREPARE, FERRY_MIGRATION_STATE_FAILED },
  { "socket", R_SRC_EXPORTED, C_SOCKET, FERRY_MIGRATION_STATE_FAILED },
  { "socket-starting-transfer", R_DST_SOCKET_WAITING, C_SOCKET, FERRY_MIGRATION_STATE_FAILED },
  { "transfer", R_SRC_SOCKET_READY, C_TRANSFER, FERRY_MIGRATION_STATE_FAILED },
  { "finalize", R_SRC_COMPLETED, C_STOP, FERRY_MIGRATION_STATE_TRANSFER_COMPLETED },
  { "cancel", R_SRC_TRANSFERRING, C_CANCEL, FERRY_MIGRATION_STATE_FAILED },
  { "cleanup", R_SRC_FAILED, C_CLEANUP, FERRY_MIGRATION_STATE_FAILED },
};

static void test_abort_after_engage(gconstpointer data)
{
  const FailureCase *c = data;
  g_autoptr(FerryMigrationSession) s = ferry_migration_session_new();
  g_autoptr(GError) why = g_error_new(FERRY_ERROR, FERRY_ERROR_INTERNAL, "boom %s", c->name);
  FerryMigrationStep step;
  GError *error = NULL;

  reach(s, c->recipe);
  g_assert_true(begin_column(s, c->column, SID, &step, &error));
  g_assert_no_error(error);
  ferry_migration_session_engage(s, &step);
  g_assert_true(ferry_migration_session_abort(s, &step, why));
  g_assert_cmpstr(ferry_migration_state_name(ferry_migration_session_get_state(s)), ==,
                  ferry_migration_state_name(c->after));
  /* The error is what Status reports. */
  FerryMigrationStatus st;
  g_assert_true(ferry_migration_session_status(s, SID, &st, &error));
  g_assert_nonnull(st.last_error);
  g_assert_cmpstr(st.last_error->message, ==, why->message);
  /* Nothing is left in progress: the next call the state allows may begin. */
  if (c->after == FERRY_MIGRATION_STATE_FAILED)
    g_assert_true(ferry_migration_session_begin_cleanup(s, SID, &step, &error));
  else
    g_assert_true(begin_column(s, c->column, SID, &step, &error));
  g_assert_no_error(error);
}

/* ---- retries ---- */

static void test_finalize_repeated(void)
{
  for (int role = 0; role < 2; role++) {
    for (int a = FERRY_MIGRATION_FINALIZE_STOP; a <= FERRY_MIGRATION_FINALIZE_RESUME; a++) {
      g_autoptr(FerryMigrationSession) s = ferry_migration_session_new();
      reach(s, role == 0 ? R_SRC_COMPLETED : R_DST_COMPLETED);
      do_finalize(s, a);
      for (int i = 0; i < 3; i++) {
        FerryMigrationStep step;
        GError *error = NULL;
        g_assert_true(ferry_migration_session_begin_finalize(s, SID, a, &step, &error));
        g_assert_no_error(error);
        g_assert_true(step.noop);
        g_assert_true(ferry_migration_session_commit(s, &step));
        g_assert_cmpint(ferry_migration_session_get_state(s), ==, FERRY_MIGRATION_STATE_FINALIZED);
        g_assert_cmpint(ferry_migration_session_get_finalize_action(s), ==, a);
      }
    }
  }
}

/* A RESUME that fails part way (the VM already runs, a container did not reopen) is
 * retried until it completes; STOP may no longer follow. */
static void test_partial_resume_retried(void)
{
  g_autoptr(FerryMigrationSession) s = ferry_migration_session_new();
  g_autoptr(GError) why = g_error_new(FERRY_ERROR, FERRY_ERROR_UNAVAILABLE, "reopen c2");
  FerryMigrationStep step;
  GError *error = NULL;

  reach(s, R_DST_COMPLETED);
  for (int attempt = 0; attempt < 2; attempt++) {
    g_assert_true(ferry_migration_session_begin_finalize(s, SID, FERRY_MIGRATION_FINALIZE_RESUME,
                                                         &step, &error));
    g_assert_no_error(error);
    g_assert_false(step.noop);
    ferry_migration_session_engage(s, &step);
    g_assert_true(ferry_migration_session_abort(s, &step, why));
    g_assert_cmpint(ferry_migration_session_get_state(s), ==,
                    FERRY_MIGRATION_STATE_TRANSFER_COMPLETED);
    g_assert_cmpint(ferry_migration_session_get_finalize_action(s), ==,
                    FERRY_MIGRATION_FINALIZE_RESUME);

    g_assert_false(ferry_migration_session_begin_finalize(s, SID, FERRY_MIGRATION_FINALIZE_STOP,
                                                          &step, &error));
    g_assert_error(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION);
    g_assert_nonnull(strstr(error->message, "only RESUME may follow"));
    g_clear_error(&error);
  }
  /* A Cancel in between does not unlock STOP either, and RESUME still goes on. */
  do_cancel(s);
  g_assert_false(
      ferry_migration_session_begin_finalize(s, SID, FERRY_MIGRATION_FINALIZE_STOP, &step, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION);
  g_clear_error(&error);
  do_finalize(s, FERRY_MIGRATION_FINALIZE_RESUME);
  g_assert_cmpint(ferry_migration_session_get_state(s), ==, FERRY_MIGRATION_STATE_FINALIZED);
  g_assert_true(ferry_migration_session_allows_task_changes(s, &error));
  g_assert_no_error(error);
}

/* A source STOP that failed before its engage (the relays did not quiesce) leaves both
 * actions open: RESUME recovers. */
static void test_stop_failed_before_engage(void)
{
  g_autoptr(FerryMigrationSession) s = ferry_migration_session_new();
  g_autoptr(GError) why = g_error_new(FERRY_ERROR, FERRY_ERROR_DEADLINE_EXCEEDED, "quiesce");
  FerryMigrationStep step;
  GError *error = NULL;

  reach(s, R_SRC_COMPLETED);
  g_assert_true(
      ferry_migration_session_begin_finalize(s, SID, FERRY_MIGRATION_FINALIZE_STOP, &step, &error));
  g_assert_true(ferry_migration_session_abort(s, &step, why));
  g_assert_cmpint(ferry_migration_session_get_finalize_action(s), ==,
                  FERRY_MIGRATION_FINALIZE_UNSPECIFIED);
  do_finalize(s, FERRY_MIGRATION_FINALIZE_RESUME);
  g_assert_no_error(error);
}

/* A source's STOP, then the way back (the destination never ran the guest): RESUME
 * takes the guest back, locks RESUME, and frees the Task API; STOP no longer follows,
 * and a Cancel after STOP does not take the guest back (it cannot know). */
static void test_source_resume_after_stop(void)
{
  g_autoptr(FerryMigrationSession) s = ferry_migration_session_new();
  FerryMigrationStep step;
  GError *error = NULL;

  reach(s, R_SRC_FINALIZED_STOP);
  g_assert_false(ferry_migration_session_begin_cancel(s, SID, &step, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION);
  g_clear_error(&error);
  g_assert_false(ferry_migration_session_allows_task_changes(s, &error));
  g_clear_error(&error);
  do_finalize(s, FERRY_MIGRATION_FINALIZE_RESUME);
  g_assert_cmpint(ferry_migration_session_get_finalize_action(s), ==,
                  FERRY_MIGRATION_FINALIZE_RESUME);
  g_assert_true(ferry_migration_session_allows_task_changes(s, &error));
  g_assert_no_error(error);
  g_assert_false(
      ferry_migration_session_begin_finalize(s, SID, FERRY_MIGRATION_FINALIZE_STOP, &step, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION);
  g_assert_nonnull(strstr(error->message, "only RESUME may follow"));
  g_clear_error(&error);
  /* A destination's STOP stays final. */
  g_autoptr(FerryMigrationSession) d = ferry_migration_session_new();
  reach(d, R_DST_FINALIZED_STOP);
  g_assert_false(ferry_migration_session_begin_finalize(d, SID, FERRY_MIGRATION_FINALIZE_RESUME,
                                                        &step, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION);
  g_clear_error(&error);
}

static void test_cleanup_repeated(void)
{
  g_autoptr(FerryMigrationSession) s = ferry_migration_session_new();
  FerryMigrationStep step;
  GError *error = NULL;

  reach(s, R_SRC_FINALIZED_STOP);
  do_cleanup(s);
  g_assert_cmpint(ferry_migration_session_get_state(s), ==, FERRY_MIGRATION_STATE_IDLE);
  g_assert_null(ferry_migration_session_get_id(s));
  for (int i = 0; i < 2; i++) {
    g_assert_true(ferry_migration_session_begin_cleanup(s, SID, &step, &error));
    g_assert_no_error(error);
    g_assert_true(step.noop);
    g_assert_true(ferry_migration_session_commit(s, &step));
  }
  /* Other calls on the cleaned-up session say so. */
  for (int column = C_PREPARE; column <= C_CANCEL; column++) {
    g_assert_false(begin_column(s, column, SID, &step, &error));
    g_assert_error(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION);
    g_assert_nonnull(strstr(error->message, "was cleaned up"));
    g_clear_error(&error);
  }
  g_assert_null(ferry_migration_session_open_notifications(s, SID, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION);
  g_clear_error(&error);
  /* An unknown id is still NOT_FOUND, and a new session may start. */
  g_assert_false(ferry_migration_session_begin_cleanup(s, "other", &step, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND);
  g_clear_error(&error);
  do_import(s);
  g_assert_cmpint(ferry_migration_session_get_role(s), ==, FERRY_MIGRATION_ROLE_DESTINATION);
}

static void test_export_repeated(void)
{
  g_autoptr(FerryMigrationSession) s = ferry_migration_session_new();
  FerryMigrationStep step;
  GError *error = NULL;
  reach(s, R_SRC_EXPORTED);
  g_assert_true(ferry_migration_session_begin_prepare_and_export(s, SID, &step, &error));
  g_assert_true(step.noop);
  /* A retry that does not touch the VM: its failure changes nothing. */
  g_autoptr(GError) why = g_error_new(FERRY_ERROR, FERRY_ERROR_INTERNAL, "pack");
  g_assert_true(ferry_migration_session_abort(s, &step, why));
  g_assert_cmpint(ferry_migration_session_get_state(s), ==, FERRY_MIGRATION_STATE_SOURCE_EXPORTED);
}

/* ---- Cancel ---- */

/* Cancel in every non-terminal state (and Failed), then Cleanup: the shim is idle again. */
static void test_cancel_every_phase(void)
{
  for (gsize r = 1; r < G_N_ELEMENTS(rows); r++) {
    if (rows[r].state == FERRY_MIGRATION_STATE_FINALIZED ||
        rows[r].state == FERRY_MIGRATION_STATE_CANCELLED ||
        rows[r].state == FERRY_MIGRATION_STATE_CANCELLING)
      continue;
    g_autoptr(FerryMigrationSession) s = ferry_migration_session_new();
    reach(s, rows[r].recipe);
    FerryMigrationStep step;
    GError *error = NULL;
    g_assert_true(ferry_migration_session_begin_cancel(s, SID, &step, &error));
    g_assert_no_error(error);
    ferry_migration_session_engage(s, &step);
    g_assert_cmpint(ferry_migration_session_get_state(s), ==, FERRY_MIGRATION_STATE_CANCELLING);
    g_assert_true(ferry_migration_session_commit(s, &step));
    g_assert_cmpint(ferry_migration_session_get_state(s), ==, FERRY_MIGRATION_STATE_CANCELLED);
    if (rows[r].state == FERRY_MIGRATION_STATE_SOURCE_PREPARED) {
      /* The overtaken export's commit changes nothing. */
      g_assert_false(ferry_migration_session_commit(s, &pending));
      g_assert_cmpint(ferry_migration_session_get_state(s), ==, FERRY_MIGRATION_STATE_CANCELLED);
    }
    do_cleanup(s);
    g_assert_cmpint(ferry_migration_session_get_state(s), ==, FERRY_MIGRATION_STATE_IDLE);
    g_assert_true(ferry_migration_session_allows_task_changes(s, &error));
  }
}

/* A Cancel overtakes a Transfer in progress; the transfer's late completion does not
 * turn Cancelled back into TransferCompleted. */
static void test_cancel_overtakes_transfer(void)
{
  g_autoptr(FerryMigrationSession) s = ferry_migration_session_new();
  FerryMigrationStep transfer, cancel, other;
  GError *error = NULL;

  reach(s, R_SRC_SOCKET_READY);
  g_assert_true(ferry_migration_session_begin_transfer(s, SID, &transfer, &error));
  ferry_migration_session_engage(s, &transfer);
  /* Anything else meanwhile is refused. */
  g_assert_false(ferry_migration_session_begin_transfer(s, SID, &other, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION);
  g_assert_true(g_str_has_prefix(error->message, "TransferSandbox: another call is in progress"));
  g_clear_error(&error);

  g_assert_true(ferry_migration_session_begin_cancel(s, SID, &cancel, &error));
  /* A second Cancel before the first engaged converges on it. */
  g_assert_true(ferry_migration_session_begin_cancel(s, SID, &other, &error));
  g_assert_true(other.noop);
  g_assert_true(ferry_migration_session_commit(s, &other));
  g_assert_true(ferry_migration_session_engage(s, &cancel));
  /* The overtaken transfer may not engage any more, and its error is not news. */
  g_assert_false(ferry_migration_session_engage(s, &transfer));
  g_autoptr(GError) cancelled = g_error_new(FERRY_ERROR, FERRY_ERROR_CANCELLED, "migrate_cancel");
  g_assert_false(ferry_migration_session_abort(s, &transfer, cancelled));
  FerryMigrationStatus st;
  g_assert_true(ferry_migration_session_status(s, SID, &st, &error));
  g_assert_null(st.last_error);
  g_assert_cmpint(ferry_migration_session_get_state(s), ==, FERRY_MIGRATION_STATE_CANCELLING);
  g_assert_false(ferry_migration_session_transfer_finished(s, NULL));
  g_assert_true(ferry_migration_session_commit(s, &cancel));
  g_assert_false(ferry_migration_session_transfer_finished(s, NULL));
  g_assert_cmpint(ferry_migration_session_get_state(s), ==, FERRY_MIGRATION_STATE_CANCELLED);
  /* The source rolls back. */
  do_finalize(s, FERRY_MIGRATION_FINALIZE_RESUME);
  g_assert_no_error(error);
}

/* A Cancel begun while a call runs still counts when that call finishes first and moves
 * the state on. */
static void test_cancel_after_overtaken_call_commits(void)
{
  g_autoptr(FerryMigrationSession) s = ferry_migration_session_new();
  FerryMigrationStep transfer, cancel;
  GError *error = NULL;

  reach(s, R_DST_SOCKET_READY);
  g_assert_true(ferry_migration_session_begin_transfer(s, SID, &transfer, &error));
  g_assert_true(ferry_migration_session_begin_cancel(s, SID, &cancel, &error));
  g_assert_true(ferry_migration_session_commit(s, &transfer));
  g_assert_cmpint(ferry_migration_session_get_state(s), ==, FERRY_MIGRATION_STATE_TRANSFERRING);
  ferry_migration_session_engage(s, &cancel);
  g_assert_cmpint(ferry_migration_session_get_state(s), ==, FERRY_MIGRATION_STATE_CANCELLING);
  g_assert_true(ferry_migration_session_commit(s, &cancel));
  g_assert_cmpint(ferry_migration_session_get_state(s), ==, FERRY_MIGRATION_STATE_CANCELLED);
  g_assert_no_error(error);
}

/* A Cancel still outstanding when its session is cleaned up does not leak into the next
 * session. */
static void test_cancel_outlived_by_cleanup(void)
{
  g_autoptr(FerryMigrationSession) s = ferry_migration_session_new();
  FerryMigrationStep stale, step;
  GError *error = NULL;

  reach(s, R_SRC_FAILED);
  g_assert_true(ferry_migration_session_begin_cancel(s, SID, &stale, &error));
  do_cleanup(s);
  do_export(s);
  g_assert_true(ferry_migration_session_begin_cancel(s, SID, &step, &error));
  g_assert_false(step.noop);
  g_assert_false(ferry_migration_session_engage(s, &stale));
  g_assert_cmpint(ferry_migration_session_get_state(s), ==, FERRY_MIGRATION_STATE_SOURCE_EXPORTED);
  g_assert_false(ferry_migration_session_commit(s, &stale));
  ferry_migration_session_engage(s, &step);
  g_assert_true(ferry_migration_session_commit(s, &step));
  g_assert_cmpint(ferry_migration_session_get_state(s), ==, FERRY_MIGRATION_STATE_CANCELLED);
  g_assert_no_error(error);
}

/* A Cancel whose own side effect fails after engage leaves the session Failed, from
 * where the source still recovers. */
static void test_cancel_fails(void)
{
  g_autoptr(FerryMigrationSession) s = ferry_migration_session_new();
  g_autoptr(GError) why = g_error_new(FERRY_ERROR, FERRY_ERROR_INTERNAL, "migrate_cancel");
  FerryMigrationStep cancel;
  GError *error = NULL;
  reach(s, R_SRC_TRANSFERRING);
  g_assert_true(ferry_migration_session_begin_cancel(s, SID, &cancel, &error));
  ferry_migration_session_engage(s, &cancel);
  g_assert_true(ferry_migration_session_abort(s, &cancel, why));
  g_assert_cmpint(ferry_migration_session_get_state(s), ==, FERRY_MIGRATION_STATE_FAILED);
  do_finalize(s, FERRY_MIGRATION_FINALIZE_RESUME);
  g_assert_no_error(error);
}

/* ---- events ---- */

static void test_transfer_finished(void)
{
  g_autoptr(GError) why = g_error_new(FERRY_ERROR, FERRY_ERROR_ABORTED, "peer closed");
  for (int failed = 0; failed < 2; failed++) {
    g_autoptr(FerryMigrationSession) s = ferry_migration_session_new();
    /* Not transferring yet: ignored. */
    g_assert_false(ferry_migration_session_transfer_finished(s, NULL));
    reach(s, R_DST_SOCKET_WAITING);
    g_assert_false(ferry_migration_session_transfer_finished(s, NULL));
    do_socket(s); /* starts the waiting transfer */
    g_assert_cmpint(ferry_migration_session_get_state(s), ==, FERRY_MIGRATION_STATE_TRANSFERRING);
    g_assert_true(ferry_migration_session_transfer_finished(s, failed ? why : NULL));
    g_assert_cmpint(ferry_migration_session_get_state(s), ==,
                    failed ? FERRY_MIGRATION_STATE_FAILED
                           : FERRY_MIGRATION_STATE_TRANSFER_COMPLETED);
    g_assert_false(ferry_migration_session_transfer_finished(s, NULL));
  }
}

static void test_fail_event(void)
{
  g_autoptr(FerryMigrationSession) s = ferry_migration_session_new();
  g_autoptr(GError) why = g_error_new(FERRY_ERROR, FERRY_ERROR_DEADLINE_EXCEEDED, "no socket");
  g_assert_false(ferry_migration_session_fail(s, why)); /* idle */
  reach(s, R_SRC_SOCKET_WAITING);
  g_assert_true(ferry_migration_session_fail(s, why));
  g_assert_cmpint(ferry_migration_session_get_state(s), ==, FERRY_MIGRATION_STATE_FAILED);
  g_assert_false(ferry_migration_session_fail(s, why)); /* terminal */
}

/* ---- Status, the Task API, the notification log ---- */

static void test_status(void)
{
  g_autoptr(FerryMigrationSession) s = ferry_migration_session_new();
  g_autoptr(GError) why = g_error_new(FERRY_ERROR, FERRY_ERROR_UNAVAILABLE, "qemu died");
  FerryMigrationStatus st;
  GError *error = NULL;

  g_assert_false(ferry_migration_session_status(s, SID, &st, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND);
  g_clear_error(&error);
  g_assert_false(ferry_migration_session_status(s, "", &st, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
  g_clear_error(&error);

  reach(s, R_SRC_TRANSFERRING);
  ferry_migration_session_set_progress(s, 100, 400);
  g_assert_true(ferry_migration_session_status(s, SID, &st, &error));
  g_assert_cmpstr(st.session_id, ==, SID);
  g_assert_cmpint(st.role, ==, FERRY_MIGRATION_ROLE_SOURCE);
  g_assert_cmpint(st.state, ==, FERRY_MIGRATION_STATE_TRANSFERRING);
  g_assert_cmpuint(st.bytes_transferred, ==, 100);
  g_assert_cmpuint(st.bytes_total, ==, 400);
  g_assert_null(st.last_error);
  g_assert_false(st.cleaned_up);
  g_assert_true(st.notifications == ferry_migration_session_get_notifications(s));

  /* A failure with nobody subscribed is still there to read. */
  g_assert_true(ferry_migration_session_transfer_finished(s, why));
  do_finalize(s, FERRY_MIGRATION_FINALIZE_RESUME);
  do_cleanup(s);
  g_assert_true(ferry_migration_session_status(s, SID, &st, &error));
  g_assert_true(st.cleaned_up);
  g_assert_cmpint(st.state, ==, FERRY_MIGRATION_STATE_FINALIZED);
  g_assert_cmpint(st.role, ==, FERRY_MIGRATION_ROLE_SOURCE);
  g_assert_cmpuint(st.bytes_transferred, ==, 100);
  g_assert_nonnull(st.last_error);
  g_assert_error((GError *)st.last_error, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE);
  g_assert_nonnull(st.notifications);
  g_assert_true(ferry_migration_notifications_is_closed(st.notifications));
  g_assert_false(ferry_migration_session_status(s, "other", &st, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND);
  g_clear_error(&error);
}

/* The session's numbers are those of ferry.migration.v1 (Status answers them as they are). */
static void test_enum_values(void)
{
  g_assert_cmpint(FERRY_MIGRATION_STATE_IDLE, ==,
                  FERRY__MIGRATION__V1__SESSION_STATE__SESSION_STATE_IDLE);
  g_assert_cmpint(FERRY_MIGRATION_STATE_SOCKET_WAITING, ==,
                  FERRY__MIGRATION__V1__SESSION_STATE__SESSION_STATE_SOCKET_WAITING);
  g_assert_cmpint(FERRY_MIGRATION_STATE_TRANSFER_COMPLETED, ==,
                  FERRY__MIGRATION__V1__SESSION_STATE__SESSION_STATE_TRANSFER_COMPLETED);
  g_assert_cmpint(FERRY_MIGRATION_STATE_CANCELLING, ==,
                  FERRY__MIGRATION__V1__SESSION_STATE__SESSION_STATE_CANCELLING);
  g_assert_cmpint(FERRY_MIGRATION_STATE_FAILED, ==,
                  FERRY__MIGRATION__V1__SESSION_STATE__SESSION_STATE_FAILED);
  g_assert_cmpint(FERRY_MIGRATION_ROLE_DESTINATION, ==,
                  FERRY__MIGRATION__V1__ROLE__ROLE_DESTINATION);
  /* Every state has its name in the proto enum. */
  for (int i = 0; i < FERRY_MIGRATION_N_STATES; i++) {
    const ProtobufCEnumValue *v =
        protobuf_c_enum_descriptor_get_value(&ferry__migration__v1__session_state__descriptor, i);
    g_assert_nonnull(v);
    g_autofree char *squashed =
        g_strdelimit(g_ascii_strdown(v->name + strlen("SESSION_STATE_"), -1), "_", ' ');
    g_autofree char *ours = g_ascii_strdown(ferry_migration_state_name(i), -1);
    /* "socket waiting" vs "socketwaiting": compare without the separators. */
    GString *a = g_string_new(NULL);
    for (const char *p = squashed; *p; p++)
      if (*p != ' ')
        g_string_append_c(a, *p);
    g_assert_cmpstr(a->str, ==, ours);
    g_string_free(a, TRUE);
  }
}

static void test_task_changes(void)
{
  g_autoptr(FerryMigrationSession) s = ferry_migration_session_new();
  GError *error = NULL;
  g_assert_true(ferry_migration_session_allows_task_changes(s, &error));
  reach(s, R_DST_IMPORTED);
  g_assert_false(ferry_migration_session_allows_task_changes(s, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION);
  g_assert_cmpstr(error->message, ==,
                  "migration session " SID " is in progress (state DestinationImported)");
  g_clear_error(&error);

  g_autoptr(FerryMigrationSession) stopped = ferry_migration_session_new();
  reach(stopped, R_SRC_FINALIZED_STOP);
  g_assert_false(ferry_migration_session_allows_task_changes(stopped, &error));
  g_clear_error(&error);
  g_autoptr(FerryMigrationSession) resumed = ferry_migration_session_new();
  reach(resumed, R_DST_FINALIZED_RESUME);
  g_assert_true(ferry_migration_session_allows_task_changes(resumed, &error));
  g_assert_no_error(error);
}

static void on_note(const FerryMigrationNotification *note, gpointer user_data)
{
  GPtrArray *got = user_data;
  g_ptr_array_add(got, note != NULL ? g_memdup2(note, sizeof(*note)) : NULL);
}

static void drain(void)
{
  while (g_main_context_iteration(NULL, FALSE))
    ;
}

/* The session's log lives from its start to Cleanup, which ends every stream. */
static void test_session_notifications(void)
{
  g_autoptr(FerryMigrationSession) s = ferry_migration_session_new();
  g_autoptr(GPtrArray) got = g_ptr_array_new_with_free_func(g_free);
  GError *error = NULL;

  g_assert_null(ferry_migration_session_get_notifications(s));
  g_assert_null(ferry_migration_session_open_notifications(s, SID, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND);
  g_clear_error(&error);

  reach(s, R_SRC_EXPORTED);
  FerryMigrationNotifications *n = ferry_migration_session_open_notifications(s, SID, &error);
  g_assert_no_error(error);
  g_assert_true(n == ferry_migration_session_get_notifications(s));
  FerryMigrationNotification note = { .origin = FERRY_MIGRATION_ORIGIN_SOURCE,
                                      .phase = FERRY_MIGRATION_PHASE_FAILED,
                                      .state = FERRY_MIGRATION_PHASE_STATE_SOURCE_FAILED };
  g_assert_cmpuint(ferry_migration_notifications_post(n, &note), ==, 1);
  g_assert_cmpuint(ferry_migration_notifications_subscribe(n, on_note, got, NULL, &error), >, 0);
  fail_now(s);
  do_cleanup(s);
  g_assert_cmpuint(got->len, ==, 0);
  drain();
  g_assert_cmpuint(got->len, ==, 2);
  g_assert_cmpuint(((FerryMigrationNotification *)got->pdata[0])->message_id, ==, 1);
  g_assert_null(got->pdata[1]);
}

/* A failure nobody subscribed to (the socket never came): Status reports it, and a
 * subscriber that comes later still gets it. */
static void test_failure_without_subscriber(void)
{
  g_autoptr(FerryMigrationSession) s = ferry_migration_session_new();
  g_autoptr(GPtrArray) got = g_ptr_array_new_with_free_func(g_free);
  g_autoptr(GError) why =
      g_error_new(FERRY_ERROR, FERRY_ERROR_DEADLINE_EXCEEDED, "socket did not come in 600 s");
  GError *error = NULL;

  g_assert_cmpuint(ferry_migration_session_post_failed(s), ==, 0); /* no session */
  reach(s, R_DST_SOCKET_WAITING);
  FerryMigrationNotifications *n = ferry_migration_session_get_notifications(s);
  FerryMigrationNotification progress = { .origin = FERRY_MIGRATION_ORIGIN_DESTINATION,
                                          .phase = FERRY_MIGRATION_PHASE_SETUP_DONE,
                                          .state = FERRY_MIGRATION_PHASE_STATE_SUCCESS };
  ferry_migration_notifications_post(n, &progress);
  g_assert_true(ferry_migration_session_fail(s, why));
  g_assert_cmpuint(ferry_migration_session_post_failed(s), ==, 2);
  ferry_migration_notifications_post(n, &progress); /* a late progress report */

  FerryMigrationStatus st;
  g_assert_true(ferry_migration_session_status(s, SID, &st, &error));
  g_assert_cmpint(st.state, ==, FERRY_MIGRATION_STATE_FAILED);
  g_assert_error((GError *)st.last_error, FERRY_ERROR, FERRY_ERROR_DEADLINE_EXCEEDED);

  /* A subscriber now: the failure, then the latest. */
  ferry_migration_notifications_subscribe(n, on_note, got, NULL, &error);
  g_assert_no_error(error);
  drain();
  g_assert_cmpuint(got->len, ==, 2);
  const FerryMigrationNotification *first = got->pdata[0];
  g_assert_cmpuint(first->message_id, ==, 2);
  g_assert_cmpint(first->phase, ==, FERRY_MIGRATION_PHASE_FAILED);
  g_assert_cmpint(first->origin, ==, FERRY_MIGRATION_ORIGIN_DESTINATION);
  g_assert_cmpint(first->state, ==, FERRY_MIGRATION_PHASE_STATE_DESTINATION_FAILED);
  g_assert_cmpuint(((FerryMigrationNotification *)got->pdata[1])->message_id, ==, 3);
}

int main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);

  for (gsize i = 0; i < G_N_ELEMENTS(rows); i++) {
    g_autofree char *path = g_strdup_printf("/migration-session/table/%s", rows[i].name);
    g_test_add_data_func(path, &rows[i], test_table);
  }
  g_test_add_func("/migration-session/other-session", test_other_session);
  g_test_add_func("/migration-session/arguments", test_arguments);
  g_test_add_func("/migration-session/abort/before-engage", test_abort_before_engage);
  for (gsize i = 0; i < G_N_ELEMENTS(failure_cases); i++) {
    g_autofree char *path =
        g_strdup_printf("/migration-session/abort/after-engage/%s", failure_cases[i].name);
    g_test_add_data_func(path, &failure_cases[i], test_abort_after_engage);
  }
  g_test_add_func("/migration-session/retry/finalize-repeated", test_finalize_repeated);
  g_test_add_func("/migration-session/retry/partial-resume", test_partial_resume_retried);
  g_test_add_func("/migration-session/retry/stop-failed-before-engage",
                  test_stop_failed_before_engage);
  g_test_add_func("/migration-session/retry/source-resume-after-stop",
                  test_source_resume_after_stop);
  g_test_add_func("/migration-session/retry/cleanup-repeated", test_cleanup_repeated);
  g_test_add_func("/migration-session/retry/export-repeated", test_export_repeated);
  g_test_add_func("/migration-session/cancel/every-phase", test_cancel_every_phase);
  g_test_add_func("/migration-session/cancel/overtakes-transfer", test_cancel_overtakes_transfer);
  g_test_add_func("/migration-session/cancel/after-overtaken-call-commits",
                  test_cancel_after_overtaken_call_commits);
  g_test_add_func("/migration-session/cancel/outlived-by-cleanup", test_cancel_outlived_by_cleanup);
  g_test_add_func("/migration-session/cancel/fails", test_cancel_fails);
  g_test_add_func("/migration-session/event/transfer-finished", test_transfer_finished);
  g_test_add_func("/migration-session/event/fail", test_fail_event);
  g_test_add_func("/migration-session/status", test_status);
  g_test_add_func("/migration-session/enum-values", test_enum_values);
  g_test_add_func("/migration-session/task-changes", test_task_changes);
  g_test_add_func("/migration-session/notifications", test_session_notifications);
  g_test_add_func("/migration-session/failure-without-subscriber", test_failure_without_subscriber);
  return g_test_run();
}
