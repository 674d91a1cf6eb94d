/*
 * A migration session's notification log (docs/migration.md, "Notifications"): what
 * hcsshim's Migration/Notifications streams, kept so that nothing that matters is lost.
 *
 * Message ids start at 1 and increase by one per message posted, shared by every
 * subscriber. The log keeps the latest message and every terminal one (PHASE_DONE,
 * PHASE_RECOVERY_DONE, PHASE_FAILED), whether or not anyone subscribed: a late
 * subscriber first gets those, in id order, then every message posted after it
 * subscribed. A subscriber's queue is bounded: when it overflows, the oldest
 * non-terminal message in it is dropped, never a terminal one.
 *
 * Delivery never happens inside the call that produced the message: it runs from an idle
 * on the thread-default main context captured by ferry_migration_notifications_new().
 * Pure otherwise (no I/O).
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

/* Also declared by ferry/migration-session.h (C11 allows the repetition). */
typedef struct FerryMigrationNotifications FerryMigrationNotifications;

/* hcsshim's Origin, Phase and PhaseState values (hcsshim/migration_options.proto). */
typedef enum {
  FERRY_MIGRATION_ORIGIN_UNSPECIFIED = 0,
  FERRY_MIGRATION_ORIGIN_SOURCE = 1,
  FERRY_MIGRATION_ORIGIN_DESTINATION = 2,
} FerryMigrationOrigin;

typedef enum {
  FERRY_MIGRATION_PHASE_UNSPECIFIED = 0,
  FERRY_MIGRATION_PHASE_SETUP_DONE = 1,
  FERRY_MIGRATION_PHASE_TRANSFER_IN_PROGRESS = 2,
  FERRY_MIGRATION_PHASE_BLACKOUT_STARTED = 3,
  FERRY_MIGRATION_PHASE_OFFLINE_DONE = 4,
  FERRY_MIGRATION_PHASE_BLACKOUT_EXITED = 5,
  FERRY_MIGRATION_PHASE_DONE = 6,
  FERRY_MIGRATION_PHASE_RECOVERY_DONE = 7,
  FERRY_MIGRATION_PHASE_FAILED = 8,
} FerryMigrationPhase;

typedef enum {
  FERRY_MIGRATION_PHASE_STATE_UNSPECIFIED = 0,
  FERRY_MIGRATION_PHASE_STATE_SUCCESS = 1,
  FERRY_MIGRATION_PHASE_STATE_CANCELLED = 2,
  FERRY_MIGRATION_PHASE_STATE_GUEST_INITIATED_CANCELLATION = 3,
  FERRY_MIGRATION_PHASE_STATE_SOURCE_FAILED = 4,
  FERRY_MIGRATION_PHASE_STATE_DESTINATION_FAILED = 5,
  FERRY_MIGRATION_PHASE_STATE_RECOVERY_FAILED = 6,
} FerryMigrationPhaseState;

/* One message (hcsshim's NotificationsResponse with its Notification). */
typedef struct {
  guint32 message_id; /* set by post */
  FerryMigrationOrigin origin;
  FerryMigrationPhase phase;
  FerryMigrationPhaseState state;
  /* PHASE_BLACKOUT_EXITED only (has_blackout): the blackout's length and end. */
  gboolean has_blackout;
  guint64 blackout_duration_ms;
  gint64 blackout_stop_time_us; /* wall clock, µs since the epoch; 0: unknown */
  gint64 update_time_us;        /* set by post: wall clock when it was posted */
} FerryMigrationNotification;

/* Per-subscriber queue bound, and how many terminal messages the log keeps. */
#define FERRY_MIGRATION_NOTIFICATIONS_QUEUE_MAX 64
#define FERRY_MIGRATION_NOTIFICATIONS_TERMINAL_MAX 16

/* Terminal phases: DONE, RECOVERY_DONE, FAILED. */
gboolean ferry_migration_phase_is_terminal(FerryMigrationPhase phase);

/* A new empty log. `start_time_us` (wall clock) is what every message reports as its
 * start_time. Captures the thread-default main context. */
FerryMigrationNotifications *ferry_migration_notifications_new(gint64 start_time_us);
/* Drops every subscriber without calling it again (their destroy functions run) and
 * every queued delivery. Not from inside a subscriber's callback. */
void ferry_migration_notifications_free(FerryMigrationNotifications *n);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FerryMigrationNotifications, ferry_migration_notifications_free)

gint64 ferry_migration_notifications_start_time(FerryMigrationNotifications *n);

/* Record `note` (copied; its message_id and update_time_us are set here) and queue it
 * for every subscriber. Returns the id given, or 0 (nothing recorded) once the log is
 * closed. */
guint32 ferry_migration_notifications_post(FerryMigrationNotifications *n,
                                           const FerryMigrationNotification *note);

/* The latest message into *out; FALSE if there is none yet. */
gboolean ferry_migration_notifications_latest(FerryMigrationNotifications *n,
                                              FerryMigrationNotification *out);
/* The id of the latest message, 0 if none. */
guint32 ferry_migration_notifications_last_id(FerryMigrationNotifications *n);
/* What a subscriber joining now would get first: the retained messages (every terminal
 * one and the latest), in id order. New array of FerryMigrationNotification. */
GArray *ferry_migration_notifications_backlog(FerryMigrationNotifications *n);

/*
 * Called with each message (borrowed for the call) in id order, and once with NULL when
 * the log is closed (the end of the stream; nothing follows). Never from inside
 * ferry_migration_notifications_post(), _subscribe() or _close().
 */
typedef void (*FerryMigrationNotifyFunc)(const FerryMigrationNotification *note,
                                         gpointer user_data);

/* Subscribe: the backlog, then every message posted later. Returns an id (> 0) for
 * unsubscribe, or 0 with FAILED_PRECONDITION once the log is closed. `destroy` (may be
 * NULL) runs on user_data when the subscription ends: unsubscribe, after the NULL call,
 * or free. */
guint ferry_migration_notifications_subscribe(FerryMigrationNotifications *n,
                                              FerryMigrationNotifyFunc func, gpointer user_data,
                                              GDestroyNotify destroy, GError **error);
/* No more calls for subscription `id` (also from inside its own callback). Unknown ids
 * are ignored. */
void ferry_migration_notifications_unsubscribe(FerryMigrationNotifications *n, guint id);
guint ferry_migration_notifications_subscriber_count(FerryMigrationNotifications *n);

/* No more messages: every subscriber gets what is queued for it, then NULL. Later
 * posts are ignored and subscribe fails. Idempotent. */
void ferry_migration_notifications_close(FerryMigrationNotifications *n);
gboolean ferry_migration_notifications_is_closed(FerryMigrationNotifications *n);

G_END_DECLS
