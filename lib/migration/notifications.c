/* A migration session's notification log (include/ferry/migration-notifications.h,
 * docs/migration.md "Notifications"). */
#include "ferry/error.h"
#include "ferry/migration-notifications.h"
#include "ferry/source.h"

typedef struct {
  guint id;
  FerryMigrationNotifyFunc func;
  gpointer user_data;
  GDestroyNotify destroy;
  GQueue queue; /* FerryMigrationNotification *, owned */
  gboolean removed;
  gboolean ended; /* the NULL call was made */
} Subscriber;

struct FerryMigrationNotifications {
  GMainContext *context;
  gint64 start_time_us;
  guint32 last_id;
  gboolean has_latest;
  FerryMigrationNotification latest;
  GArray *terminal; /* retained terminal messages, in id order */
  GPtrArray *subs;  /* Subscriber * */
  guint next_sub_id;
  gboolean closed;
  GSource *idle;
  gboolean dispatching;
  gboolean free_pending; /* freed from inside a callback: finish after it */
};

gboolean ferry_migration_phase_is_terminal(FerryMigrationPhase phase)
{
  return phase == FERRY_MIGRATION_PHASE_DONE || phase == FERRY_MIGRATION_PHASE_RECOVERY_DONE ||
         phase == FERRY_MIGRATION_PHASE_FAILED;
}

static void subscriber_free(Subscriber *sub)
{
  FerryMigrationNotification *note;
  while ((note = g_queue_pop_head(&sub->queue)) != NULL)
    g_free(note);
  if (sub->destroy != NULL)
    sub->destroy(sub->user_data);
  g_free(sub);
}

FerryMigrationNotifications *ferry_migration_notifications_new(gint64 start_time_us)
{
  FerryMigrationNotifications *n = g_new0(FerryMigrationNotifications, 1);
  n->context = g_main_context_ref_thread_default();
  n->start_time_us = start_time_us;
  n->terminal = g_array_new(FALSE, FALSE, sizeof(FerryMigrationNotification));
  n->subs = g_ptr_array_new();
  n->next_sub_id = 1;
  return n;
}

static void notifications_finalize(FerryMigrationNotifications *n)
{
  ferry_source_clear(&n->idle);
  for (guint i = 0; i < n->subs->len; i++)
    subscriber_free(n->subs->pdata[i]);
  g_ptr_array_unref(n->subs);
  g_array_unref(n->terminal);
  g_main_context_unref(n->context);
  g_free(n);
}

void ferry_migration_notifications_free(FerryMigrationNotifications *n)
{
  if (n == NULL)
    return;
  if (n->dispatching) {
    n->free_pending = TRUE;
    return;
  }
  notifications_finalize(n);
}

gint64 ferry_migration_notifications_start_time(FerryMigrationNotifications *n)
{
  return n->start_time_us;
}

static gboolean subscriber_has_work(FerryMigrationNotifications *n, Subscriber *sub)
{
  if (sub->removed)
    return TRUE; /* to be swept */
  return !g_queue_is_empty(&sub->queue) || (n->closed && !sub->ended);
}

static gboolean dispatch(gpointer data);

static void schedule(FerryMigrationNotifications *n)
{
  if (n->idle != NULL || n->dispatching)
    return;
  for (guint i = 0; i < n->subs->len; i++) {
    if (subscriber_has_work(n, n->subs->pdata[i])) {
      n->idle = ferry_idle_new(n->context, dispatch, n);
      return;
    }
  }
}

static gboolean dispatch(gpointer data)
{
  FerryMigrationNotifications *n = data;

  ferry_source_clear(&n->idle);
  n->dispatching = TRUE;
  /* By index: a callback may subscribe (appending) or unsubscribe (marking). */
  for (guint i = 0; i < n->subs->len && !n->free_pending; i++) {
    Subscriber *sub = n->subs->pdata[i];
    FerryMigrationNotification *note;
    while (!sub->removed && !n->free_pending && (note = g_queue_pop_head(&sub->queue)) != NULL) {
      sub->func(note, sub->user_data);
      g_free(note);
    }
    if (!sub->removed && !n->free_pending && n->closed && !sub->ended &&
        g_queue_is_empty(&sub->queue)) {
      sub->ended = TRUE;
      sub->func(NULL, sub->user_data);
    }
  }
  n->dispatching = FALSE;
  if (n->free_pending) {
    notifications_finalize(n);
    return G_SOURCE_REMOVE;
  }
  /* Sweep what ended or was unsubscribed (destroy functions may not re-enter). */
  for (guint i = 0; i < n->subs->len;) {
    Subscriber *sub = n->subs->pdata[i];
    if (sub->removed || sub->ended) {
      g_ptr_array_remove_index(n->subs, i);
      subscriber_free(sub);
    } else {
      i++;
    }
  }
  schedule(n);
  return G_SOURCE_REMOVE;
}

/* Queue a copy of `note` for `sub`, dropping the oldest non-terminal message when the
 * queue is full (the oldest of all only if it holds nothing but terminal ones). */
static void subscriber_push(Subscriber *sub, const FerryMigrationNotification *note)
{
  if (g_queue_get_length(&sub->queue) >= FERRY_MIGRATION_NOTIFICATIONS_QUEUE_MAX) {
    GList *victim = NULL;
    for (GList *l = sub->queue.head; l != NULL; l = l->next) {
      const FerryMigrationNotification *q = l->data;
      if (!ferry_migration_phase_is_terminal(q->phase)) {
        victim = l;
        break;
      }
    }
    if (victim == NULL)
      victim = sub->queue.head;
    g_free(victim->data);
    g_queue_delete_link(&sub->queue, victim);
  }
  g_queue_push_tail(&sub->queue, g_memdup2(note, sizeof(*note)));
}

guint32 ferry_migration_notifications_post(FerryMigrationNotifications *n,
                                           const FerryMigrationNotification *note)
{
  if (n->closed)
    return 0;
  FerryMigrationNotification copy = *note;
  copy.message_id = ++n->last_id;
  copy.update_time_us = g_get_real_time();
  if (!copy.has_blackout) {
    copy.blackout_duration_ms = 0;
    copy.blackout_stop_time_us = 0;
  }
  n->latest = copy;
  n->has_latest = TRUE;
  if (ferry_migration_phase_is_terminal(copy.phase)) {
    if (n->terminal->len >= FERRY_MIGRATION_NOTIFICATIONS_TERMINAL_MAX)
      g_array_remove_index(n->terminal, 0);
    g_array_append_val(n->terminal, copy);
  }
  for (guint i = 0; i < n->subs->len; i++) {
    Subscriber *sub = n->subs->pdata[i];
    if (!sub->removed)
      subscriber_push(sub, &copy);
  }
  schedule(n);
  return copy.message_id;
}

gboolean ferry_migration_notifications_latest(FerryMigrationNotifications *n,
                                              FerryMigrationNotification *out)
{
  if (!n->has_latest)
    return FALSE;
  *out = n->latest;
  return TRUE;
}

guint32 ferry_migration_notifications_last_id(FerryMigrationNotifications *n)
{
  return n->last_id;
}

GArray *ferry_migration_notifications_backlog(FerryMigrationNotifications *n)
{
  GArray *out = g_array_new(FALSE, FALSE, sizeof(FerryMigrationNotification));
  g_array_append_vals(out, n->terminal->data, n->terminal->len);
  /* Terminal messages are retained with their ids, all at most the latest one's. */
  if (n->has_latest && !ferry_migration_phase_is_terminal(n->latest.phase))
    g_array_append_val(out, n->latest);
  return out;
}

guint ferry_migration_notifications_subscribe(FerryMigrationNotifications *n,
                                              FerryMigrationNotifyFunc func, gpointer user_data,
                                              GDestroyNotify destroy, GError **error)
{
  if (n->closed) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION,
                "migration notifications: the session's log is closed");
    return 0;
  }
  Subscriber *sub = g_new0(Subscriber, 1);
  sub->id = n->next_sub_id++;
  sub->func = func;
  sub->user_data = user_data;
  sub->destroy = destroy;
  g_queue_init(&sub->queue);
  g_autoptr(GArray) backlog = ferry_migration_notifications_backlog(n);
  for (guint i = 0; i < backlog->len; i++)
    subscriber_push(sub, &g_array_index(backlog, FerryMigrationNotification, i));
  g_ptr_array_add(n->subs, sub);
  schedule(n);
  return sub->id;
}

void ferry_migration_notifications_unsubscribe(FerryMigrationNotifications *n, guint id)
{
  for (guint i = 0; i < n->subs->len; i++) {
    Subscriber *sub = n->subs->pdata[i];
    if (sub->id != id || sub->removed)
      continue;
    if (n->dispatching) {
      sub->removed = TRUE; /* swept after the callbacks */
    } else {
      g_ptr_array_remove_index(n->subs, i);
      subscriber_free(sub);
    }
    return;
  }
}

guint ferry_migration_notifications_subscriber_count(FerryMigrationNotifications *n)
{
  guint count = 0;
  for (guint i = 0; i < n->subs->len; i++) {
    Subscriber *sub = n->subs->pdata[i];
    if (!sub->removed && !sub->ended)
      count++;
  }
  return count;
}

void ferry_migration_notifications_close(FerryMigrationNotifications *n)
{
  if (n->closed)
    return;
  n->closed = TRUE;
  schedule(n);
}

gboolean ferry_migration_notifications_is_closed(FerryMigrationNotifications *n)
{
  return n->closed;
}
