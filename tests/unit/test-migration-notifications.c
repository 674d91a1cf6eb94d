/*
 * A migration session's notification log (lib/migration/notifications.c): ids, what a
 * late subscriber gets, terminal retention, bounded queues, delivery only from the main
 * loop of the log's context, close and unsubscribe.
 */
#include <glib.h>

#include "ferry/error.h"
#include "ferry/migration-notifications.h"
#include "hcsshim/migration_options.pb-c.h"

typedef struct {
  GArray *notes; /* FerryMigrationNotification */
  guint ends;    /* NULL calls */
  guint destroyed;
  FerryMigrationNotifications *log;
  guint unsubscribe_id; /* unsubscribe this from inside the callback, if set */
  gboolean free_log;    /* free the log from inside the callback */
} Sink;

static void sink_init(Sink *k)
{
  memset(k, 0, sizeof(*k));
  k->notes = g_array_new(FALSE, FALSE, sizeof(FerryMigrationNotification));
}

static void sink_clear(Sink *k)
{
  g_array_unref(k->notes);
}

static void on_note(const FerryMigrationNotification *note, gpointer user_data)
{
  Sink *k = user_data;
  if (note == NULL)
    k->ends++;
  else
    g_array_append_val(k->notes, *note);
  if (k->unsubscribe_id != 0)
    ferry_migration_notifications_unsubscribe(k->log, k->unsubscribe_id);
  if (k->free_log) {
    k->free_log = FALSE;
    ferry_migration_notifications_free(k->log);
    k->log = NULL;
  }
}

static void on_destroy(gpointer user_data)
{
  Sink *k = user_data;
  k->destroyed++;
}

static void drain(GMainContext *context)
{
  while (g_main_context_iteration(context, FALSE))
    ;
}

static guint32 post(FerryMigrationNotifications *n, FerryMigrationPhase phase,
                    FerryMigrationPhaseState state)
{
  FerryMigrationNotification note = { 0 };
  note.origin = FERRY_MIGRATION_ORIGIN_SOURCE;
  note.phase = phase;
  note.state = state;
  note.message_id = 999; /* overwritten */
  return ferry_migration_notifications_post(n, &note);
}

static guint32 id_at(Sink *k, guint i)
{
  return g_array_index(k->notes, FerryMigrationNotification, i).message_id;
}

static void test_ids_monotonic(void)
{
  g_autoptr(FerryMigrationNotifications) n = ferry_migration_notifications_new(5);
  Sink a, b;
  sink_init(&a);
  sink_init(&b);
  GError *error = NULL;

  g_assert_cmpuint(ferry_migration_notifications_last_id(n), ==, 0);
  g_assert_cmpuint(ferry_migration_notifications_subscribe(n, on_note, &a, NULL, &error), >, 0);
  g_assert_cmpuint(ferry_migration_notifications_subscribe(n, on_note, &b, NULL, &error), >, 0);
  for (guint32 i = 1; i <= 5; i++)
    g_assert_cmpuint(
        post(n, FERRY_MIGRATION_PHASE_TRANSFER_IN_PROGRESS, FERRY_MIGRATION_PHASE_STATE_SUCCESS),
        ==, i);
  drain(NULL);
  g_assert_cmpuint(a.notes->len, ==, 5);
  g_assert_cmpuint(b.notes->len, ==, 5);
  for (guint i = 0; i < 5; i++) {
    g_assert_cmpuint(id_at(&a, i), ==, i + 1);
    g_assert_cmpuint(id_at(&b, i), ==, i + 1);
  }
  g_assert_cmpint(ferry_migration_notifications_start_time(n), ==, 5);
  g_assert_cmpint(g_array_index(a.notes, FerryMigrationNotification, 0).update_time_us, >, 0);
  g_assert_no_error(error);
  sink_clear(&a);
  sink_clear(&b);
}

/* Nothing is delivered inside post, subscribe or close: only from the main loop. */
static void test_never_inside_the_call(void)
{
  g_autoptr(FerryMigrationNotifications) n = ferry_migration_notifications_new(0);
  Sink k;
  sink_init(&k);
  post(n, FERRY_MIGRATION_PHASE_SETUP_DONE, FERRY_MIGRATION_PHASE_STATE_SUCCESS);
  ferry_migration_notifications_subscribe(n, on_note, &k, NULL, NULL);
  g_assert_cmpuint(k.notes->len, ==, 0);
  post(n, FERRY_MIGRATION_PHASE_TRANSFER_IN_PROGRESS, FERRY_MIGRATION_PHASE_STATE_SUCCESS);
  g_assert_cmpuint(k.notes->len, ==, 0);
  ferry_migration_notifications_close(n);
  g_assert_cmpuint(k.notes->len, ==, 0);
  g_assert_cmpuint(k.ends, ==, 0);
  drain(NULL);
  g_assert_cmpuint(k.notes->len, ==, 2);
  g_assert_cmpuint(k.ends, ==, 1);
  sink_clear(&k);
}

/* A late subscriber gets every terminal message and the latest, in id order, then what
 * comes after. */
static void test_late_subscriber(void)
{
  g_autoptr(FerryMigrationNotifications) n = ferry_migration_notifications_new(0);
  Sink k;
  sink_init(&k);
  post(n, FERRY_MIGRATION_PHASE_SETUP_DONE, FERRY_MIGRATION_PHASE_STATE_SUCCESS);           /* 1 */
  post(n, FERRY_MIGRATION_PHASE_FAILED, FERRY_MIGRATION_PHASE_STATE_DESTINATION_FAILED);    /* 2 */
  post(n, FERRY_MIGRATION_PHASE_TRANSFER_IN_PROGRESS, FERRY_MIGRATION_PHASE_STATE_SUCCESS); /* 3 */
  post(n, FERRY_MIGRATION_PHASE_RECOVERY_DONE, FERRY_MIGRATION_PHASE_STATE_SUCCESS);        /* 4 */
  post(n, FERRY_MIGRATION_PHASE_BLACKOUT_STARTED, FERRY_MIGRATION_PHASE_STATE_SUCCESS);     /* 5 */

  g_autoptr(GArray) backlog = ferry_migration_notifications_backlog(n);
  g_assert_cmpuint(backlog->len, ==, 3);

  ferry_migration_notifications_subscribe(n, on_note, &k, NULL, NULL);
  drain(NULL);
  g_assert_cmpuint(k.notes->len, ==, 3);
  g_assert_cmpuint(id_at(&k, 0), ==, 2);
  g_assert_cmpint(g_array_index(k.notes, FerryMigrationNotification, 0).state, ==,
                  FERRY_MIGRATION_PHASE_STATE_DESTINATION_FAILED);
  g_assert_cmpuint(id_at(&k, 1), ==, 4);
  g_assert_cmpuint(id_at(&k, 2), ==, 5);

  post(n, FERRY_MIGRATION_PHASE_DONE, FERRY_MIGRATION_PHASE_STATE_SUCCESS); /* 6 */
  drain(NULL);
  g_assert_cmpuint(k.notes->len, ==, 4);
  g_assert_cmpuint(id_at(&k, 3), ==, 6);

  /* Latest is terminal: it is not given twice. */
  Sink late;
  sink_init(&late);
  ferry_migration_notifications_subscribe(n, on_note, &late, NULL, NULL);
  drain(NULL);
  g_assert_cmpuint(late.notes->len, ==, 3);
  g_assert_cmpuint(id_at(&late, 0), ==, 2);
  g_assert_cmpuint(id_at(&late, 1), ==, 4);
  g_assert_cmpuint(id_at(&late, 2), ==, 6);
  sink_clear(&k);
  sink_clear(&late);
}

/* With nobody subscribed the log still holds the failure, and the latest message. */
static void test_terminal_retained_without_subscriber(void)
{
  g_autoptr(FerryMigrationNotifications) n = ferry_migration_notifications_new(0);
  FerryMigrationNotification latest;
  g_assert_false(ferry_migration_notifications_latest(n, &latest));
  post(n, FERRY_MIGRATION_PHASE_FAILED, FERRY_MIGRATION_PHASE_STATE_SOURCE_FAILED);
  for (int i = 0; i < 200; i++)
    post(n, FERRY_MIGRATION_PHASE_TRANSFER_IN_PROGRESS, FERRY_MIGRATION_PHASE_STATE_SUCCESS);
  g_assert_true(ferry_migration_notifications_latest(n, &latest));
  g_assert_cmpuint(latest.message_id, ==, 201);
  g_autoptr(GArray) backlog = ferry_migration_notifications_backlog(n);
  g_assert_cmpuint(backlog->len, ==, 2);
  g_assert_cmpuint(g_array_index(backlog, FerryMigrationNotification, 0).message_id, ==, 1);
  g_assert_cmpint(g_array_index(backlog, FerryMigrationNotification, 0).phase, ==,
                  FERRY_MIGRATION_PHASE_FAILED);
  g_assert_cmpuint(g_array_index(backlog, FerryMigrationNotification, 1).message_id, ==, 201);
}

/* A subscriber that does not keep up loses the oldest progress messages, never a
 * terminal one, and still sees the latest. */
static void test_queue_bounded(void)
{
  g_autoptr(FerryMigrationNotifications) n = ferry_migration_notifications_new(0);
  Sink k;
  sink_init(&k);
  ferry_migration_notifications_subscribe(n, on_note, &k, NULL, NULL);
  for (guint i = 1; i <= 100; i++) {
    if (i == 10)
      post(n, FERRY_MIGRATION_PHASE_FAILED, FERRY_MIGRATION_PHASE_STATE_SOURCE_FAILED);
    else
      post(n, FERRY_MIGRATION_PHASE_TRANSFER_IN_PROGRESS, FERRY_MIGRATION_PHASE_STATE_SUCCESS);
  }
  drain(NULL);
  g_assert_cmpuint(k.notes->len, ==, FERRY_MIGRATION_NOTIFICATIONS_QUEUE_MAX);
  g_assert_cmpuint(id_at(&k, 0), ==, 10); /* the terminal one survived */
  for (guint i = 1; i < k.notes->len; i++)
    g_assert_cmpuint(id_at(&k, i), >, id_at(&k, i - 1));
  g_assert_cmpuint(id_at(&k, k.notes->len - 1), ==, 100);
  /* Ids 1..9 and 11..(100 - 62) were dropped: 63 progress messages are left. */
  g_assert_cmpuint(id_at(&k, 1), ==, 100 - (FERRY_MIGRATION_NOTIFICATIONS_QUEUE_MAX - 2));
  sink_clear(&k);
}

static void test_close(void)
{
  g_autoptr(FerryMigrationNotifications) n = ferry_migration_notifications_new(0);
  Sink k;
  sink_init(&k);
  GError *error = NULL;
  ferry_migration_notifications_subscribe(n, on_note, &k, on_destroy, NULL);
  post(n, FERRY_MIGRATION_PHASE_DONE, FERRY_MIGRATION_PHASE_STATE_SUCCESS);
  ferry_migration_notifications_close(n);
  ferry_migration_notifications_close(n);
  g_assert_true(ferry_migration_notifications_is_closed(n));
  g_assert_cmpuint(post(n, FERRY_MIGRATION_PHASE_SETUP_DONE, FERRY_MIGRATION_PHASE_STATE_SUCCESS),
                   ==, 0);
  g_assert_cmpuint(ferry_migration_notifications_subscribe(n, on_note, &k, NULL, &error), ==, 0);
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION);
  g_clear_error(&error);
  drain(NULL);
  /* What was queued, then the end, then nothing. */
  g_assert_cmpuint(k.notes->len, ==, 1);
  g_assert_cmpuint(k.ends, ==, 1);
  g_assert_cmpuint(k.destroyed, ==, 1);
  g_assert_cmpuint(ferry_migration_notifications_subscriber_count(n), ==, 0);
  drain(NULL);
  g_assert_cmpuint(k.ends, ==, 1);
  /* The log still answers. */
  FerryMigrationNotification latest;
  g_assert_true(ferry_migration_notifications_latest(n, &latest));
  g_assert_cmpuint(latest.message_id, ==, 1);
  sink_clear(&k);
}

static void test_unsubscribe(void)
{
  g_autoptr(FerryMigrationNotifications) n = ferry_migration_notifications_new(0);
  Sink a, b;
  sink_init(&a);
  sink_init(&b);
  guint ida = ferry_migration_notifications_subscribe(n, on_note, &a, on_destroy, NULL);
  guint idb = ferry_migration_notifications_subscribe(n, on_note, &b, on_destroy, NULL);
  g_assert_cmpuint(ida, !=, idb);
  /* a unsubscribes itself from its first callback. */
  a.log = n;
  a.unsubscribe_id = ida;
  post(n, FERRY_MIGRATION_PHASE_SETUP_DONE, FERRY_MIGRATION_PHASE_STATE_SUCCESS);
  post(n, FERRY_MIGRATION_PHASE_TRANSFER_IN_PROGRESS, FERRY_MIGRATION_PHASE_STATE_SUCCESS);
  drain(NULL);
  g_assert_cmpuint(a.notes->len, ==, 1);
  g_assert_cmpuint(a.destroyed, ==, 1);
  g_assert_cmpuint(b.notes->len, ==, 2);
  /* b from outside; unknown ids are ignored. */
  ferry_migration_notifications_unsubscribe(n, idb);
  ferry_migration_notifications_unsubscribe(n, idb);
  ferry_migration_notifications_unsubscribe(n, 12345);
  g_assert_cmpuint(b.destroyed, ==, 1);
  post(n, FERRY_MIGRATION_PHASE_DONE, FERRY_MIGRATION_PHASE_STATE_SUCCESS);
  drain(NULL);
  g_assert_cmpuint(a.notes->len, ==, 1);
  g_assert_cmpuint(b.notes->len, ==, 2);
  g_assert_cmpuint(ferry_migration_notifications_subscriber_count(n), ==, 0);
  sink_clear(&a);
  sink_clear(&b);
}

/* Freed with deliveries queued: no callback runs afterwards, destroy functions do. */
static void test_free_with_pending(void)
{
  Sink k;
  sink_init(&k);
  FerryMigrationNotifications *n = ferry_migration_notifications_new(0);
  ferry_migration_notifications_subscribe(n, on_note, &k, on_destroy, NULL);
  post(n, FERRY_MIGRATION_PHASE_SETUP_DONE, FERRY_MIGRATION_PHASE_STATE_SUCCESS);
  ferry_migration_notifications_free(n);
  g_assert_cmpuint(k.destroyed, ==, 1);
  drain(NULL);
  g_assert_cmpuint(k.notes->len, ==, 0);

  /* Freed from inside a callback: the rest is dropped, nothing is touched after. */
  Sink first, second;
  sink_init(&first);
  sink_init(&second);
  n = ferry_migration_notifications_new(0);
  first.log = n;
  first.free_log = TRUE;
  ferry_migration_notifications_subscribe(n, on_note, &first, on_destroy, NULL);
  ferry_migration_notifications_subscribe(n, on_note, &second, on_destroy, NULL);
  post(n, FERRY_MIGRATION_PHASE_SETUP_DONE, FERRY_MIGRATION_PHASE_STATE_SUCCESS);
  post(n, FERRY_MIGRATION_PHASE_DONE, FERRY_MIGRATION_PHASE_STATE_SUCCESS);
  drain(NULL);
  g_assert_cmpuint(first.notes->len, ==, 1);
  g_assert_cmpuint(second.notes->len, ==, 0);
  g_assert_cmpuint(first.destroyed, ==, 1);
  g_assert_cmpuint(second.destroyed, ==, 1);
  sink_clear(&k);
  sink_clear(&first);
  sink_clear(&second);
}

/* Delivery runs on the context captured at creation, not on the global default. */
static void test_captured_context(void)
{
  GMainContext *context = g_main_context_new();
  g_main_context_push_thread_default(context);
  FerryMigrationNotifications *n = ferry_migration_notifications_new(0);
  g_main_context_pop_thread_default(context);
  Sink k;
  sink_init(&k);
  ferry_migration_notifications_subscribe(n, on_note, &k, NULL, NULL);
  post(n, FERRY_MIGRATION_PHASE_SETUP_DONE, FERRY_MIGRATION_PHASE_STATE_SUCCESS);
  drain(NULL);
  g_assert_cmpuint(k.notes->len, ==, 0);
  drain(context);
  g_assert_cmpuint(k.notes->len, ==, 1);
  ferry_migration_notifications_free(n);
  g_main_context_unref(context);
  sink_clear(&k);
}

/* Blackout details travel only with a message that has them. */
static void test_blackout_details(void)
{
  g_autoptr(FerryMigrationNotifications) n = ferry_migration_notifications_new(0);
  FerryMigrationNotification note = { 0 };
  note.phase = FERRY_MIGRATION_PHASE_BLACKOUT_EXITED;
  note.has_blackout = TRUE;
  note.blackout_duration_ms = 42;
  note.blackout_stop_time_us = 7;
  ferry_migration_notifications_post(n, &note);
  FerryMigrationNotification got;
  g_assert_true(ferry_migration_notifications_latest(n, &got));
  g_assert_cmpuint(got.blackout_duration_ms, ==, 42);
  note.phase = FERRY_MIGRATION_PHASE_DONE;
  note.has_blackout = FALSE;
  ferry_migration_notifications_post(n, &note);
  g_assert_true(ferry_migration_notifications_latest(n, &got));
  g_assert_cmpuint(got.blackout_duration_ms, ==, 0);
  g_assert_cmpint(got.blackout_stop_time_us, ==, 0);
}

/* Our numbers are hcsshim's (hcsshim/migration_options.proto), so the shim copies them. */
static void test_hcsshim_values(void)
{
  g_assert_cmpint(FERRY_MIGRATION_ORIGIN_DESTINATION, ==, ORIGIN__ORIGIN_DESTINATION);
  g_assert_cmpint(FERRY_MIGRATION_PHASE_SETUP_DONE, ==, PHASE__PHASE_SETUP_DONE);
  g_assert_cmpint(FERRY_MIGRATION_PHASE_BLACKOUT_EXITED, ==, PHASE__PHASE_BLACKOUT_EXITED);
  g_assert_cmpint(FERRY_MIGRATION_PHASE_RECOVERY_DONE, ==, PHASE__PHASE_RECOVERY_DONE);
  g_assert_cmpint(FERRY_MIGRATION_PHASE_FAILED, ==, PHASE__PHASE_FAILED);
  g_assert_cmpint(FERRY_MIGRATION_PHASE_STATE_GUEST_INITIATED_CANCELLATION, ==,
                  PHASE_STATE__PHASE_STATE_GUEST_INITIATED_CANCELLATION);
  g_assert_cmpint(FERRY_MIGRATION_PHASE_STATE_RECOVERY_FAILED, ==,
                  PHASE_STATE__PHASE_STATE_RECOVERY_FAILED);
  for (int p = 0; p <= FERRY_MIGRATION_PHASE_FAILED; p++)
    g_assert_cmpint(ferry_migration_phase_is_terminal(p), ==,
                    p == PHASE__PHASE_DONE || p == PHASE__PHASE_RECOVERY_DONE ||
                        p == PHASE__PHASE_FAILED);
}

int main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/migration-notifications/ids-monotonic", test_ids_monotonic);
  g_test_add_func("/migration-notifications/never-inside-the-call", test_never_inside_the_call);
  g_test_add_func("/migration-notifications/late-subscriber", test_late_subscriber);
  g_test_add_func("/migration-notifications/terminal-retained-without-subscriber",
                  test_terminal_retained_without_subscriber);
  g_test_add_func("/migration-notifications/queue-bounded", test_queue_bounded);
  g_test_add_func("/migration-notifications/close", test_close);
  g_test_add_func("/migration-notifications/unsubscribe", test_unsubscribe);
  g_test_add_func("/migration-notifications/free-with-pending", test_free_with_pending);
  g_test_add_func("/migration-notifications/captured-context", test_captured_context);
  g_test_add_func("/migration-notifications/blackout-details", test_blackout_details);
  g_test_add_func("/migration-notifications/hcsshim-values", test_hcsshim_values);
  return g_test_run();
}
