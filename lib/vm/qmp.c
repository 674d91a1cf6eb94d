/* QMP client: greeting, capabilities, commands by id, events, time limits, fd passing. */
#include "ferry/qmp.h"

#include <fcntl.h>
#include <string.h>

#include "ferry/error.h"
#include "ferry/fd.h"
#include "ferry/json.h"
#include "ferry/source.h"
#include "ferry/stream.h"

typedef struct {
  FerryQmp *qmp;
  guint64 id;
  char *command;
  FerryQmpReplyFunc done;
  gpointer user_data;
  GSource *timer;
  GError *early; /* failed before it was sent */
  GSource *early_source;
} Pending;

struct FerryQmp {
  GMainContext *context; /* thread-default at creation: every source goes there */
  FerryStream *stream;
  GByteArray *line;
  gboolean greeted;
  gboolean ready; /* qmp_capabilities answered: commands may go out */
  json_t *greeting;
  FerryQmpReplyFunc start_done;
  gpointer start_data;
  guint64 next_id;
  GHashTable *pending; /* id -> Pending */
  GQueue queued;       /* Pending sent later, with their encoded lines and fds */
  GError *closed;
  FerryQmpEventFunc event_func;
  gpointer event_data;
  FerryQmpClosedFunc closed_func;
  gpointer closed_data;
};

/* A command waiting for capabilities negotiation to finish. */
typedef struct {
  Pending *p;
  char *line;
  int fd;
} Queued;

static void pending_free(gpointer data)
{
  Pending *p = data;
  ferry_source_clear(&p->timer);
  ferry_source_clear(&p->early_source);
  g_clear_error(&p->early);
  g_free(p->command);
  g_free(p);
}

static Pending *take(FerryQmp *q, guint64 id)
{
  gpointer value;
  if (!g_hash_table_steal_extended(q->pending, &id, NULL, &value))
    return NULL;
  return value;
}

static void complete(FerryQmp *q, Pending *p, json_t *result, const GError *error)
{
  FerryQmpReplyFunc done = p->done;
  gpointer ud = p->user_data;
  pending_free(p);
  if (done != NULL)
    done(q, result, error, ud);
}

static void close_with(FerryQmp *q, const GError *why)
{
  if (q->closed != NULL)
    return;
  q->closed = g_error_new(FERRY_ERROR, FERRY_ERROR_UNAVAILABLE, "qmp: connection closed: %s",
                          why != NULL ? why->message : "closed");
  if (q->stream != NULL) {
    FerryStream *s = g_steal_pointer(&q->stream);
    ferry_stream_close(s, NULL);
    ferry_stream_unref(s);
  }
  Queued *qd;
  while ((qd = g_queue_pop_head(&q->queued)) != NULL) {
    ferry_fd_close_quietly(qd->fd);
    g_free(qd->line);
    g_hash_table_insert(q->pending, &qd->p->id, qd->p);
    g_free(qd);
  }
  GList *ids = g_hash_table_get_keys(q->pending);
  GArray *order = g_array_new(FALSE, FALSE, sizeof(guint64));
  for (GList *l = ids; l != NULL; l = l->next)
    g_array_append_val(order, *(guint64 *)l->data);
  g_list_free(ids);
  for (guint i = 0; i < order->len; i++) {
    Pending *p = take(q, g_array_index(order, guint64, i));
    if (p != NULL)
      complete(q, p, NULL, q->closed);
  }
  g_array_unref(order);
  if (q->start_done != NULL) {
    FerryQmpReplyFunc done = g_steal_pointer(&q->start_done);
    done(q, NULL, q->closed, q->start_data);
  }
  if (q->closed_func != NULL)
    q->closed_func(q, q->closed, q->closed_data);
}

static void close_protocol(FerryQmp *q, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

static void close_protocol(FerryQmp *q, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  g_autofree char *msg = g_strdup_vprintf(fmt, ap);
  va_end(ap);
  g_autoptr(GError) error = g_error_new(FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "qmp: %s", msg);
  close_with(q, error);
}

/* QEMU's error classes, as far as they mean something to a caller. */
static int error_code(const char *klass)
{
  if (g_strcmp0(klass, "CommandNotFound") == 0)
    return FERRY_ERROR_UNIMPLEMENTED;
  if (g_strcmp0(klass, "DeviceNotFound") == 0)
    return FERRY_ERROR_NOT_FOUND;
  if (g_strcmp0(klass, "DeviceNotActive") == 0)
    return FERRY_ERROR_FAILED_PRECONDITION;
  return FERRY_ERROR_UNKNOWN;
}

static gboolean send_line(FerryQmp *q, const char *line, int fd, GError **error)
{
  gsize len = strlen(line);
  g_autofree char *with_nl = g_strconcat(line, "\n", NULL);
  if (fd >= 0)
    return ferry_stream_write_with_fd(q->stream, with_nl, len + 1, fd, error);
  return ferry_stream_write(q->stream, with_nl, len + 1, error);
}

static gboolean on_timeout(gpointer data)
{
  Pending *p = data;
  ferry_source_clear(&p->timer);
  FerryQmp *q = p->qmp;
  Pending *taken = take(q, p->id);
  if (taken != NULL) {
    g_autoptr(GError) error = g_error_new(FERRY_ERROR, FERRY_ERROR_DEADLINE_EXCEEDED,
                                          "qmp: %s got no answer in time", taken->command);
    complete(q, taken, NULL, error);
  }
  return G_SOURCE_REMOVE;
}

static gboolean on_early(gpointer data);

/* Fail one command from the main loop, not inside the call that tried to send it. */
static void fail_later(FerryQmp *q, Pending *p, GError *error)
{
  p->early = error;
  p->early_source = ferry_idle_new(q->context, on_early, p);
}

/*
 * Send what waits for capabilities negotiation. A command that cannot go out fails from
 * the main loop; when its write broke the stream, the stream reports that from the main
 * loop too and every command fails with it then (issue 9: never inside the caller's
 * execute).
 */
static void flush_queued(FerryQmp *q)
{
  Queued *qd;
  while (q->ready && q->closed == NULL && (qd = g_queue_pop_head(&q->queued)) != NULL) {
    Pending *qd_p = qd->p;
    g_hash_table_insert(q->pending, &qd_p->id, qd_p);
    g_autoptr(GError) error = NULL;
    gboolean ok = send_line(q, qd->line, qd->fd, &error);
    ferry_fd_close_quietly(qd->fd);
    g_free(qd->line);
    g_free(qd);
    if (!ok) {
      if (ferry_stream_is_open(q->stream))
        fail_later(q, qd_p, g_steal_pointer(&error));
      else
        return; /* the stream's closed report ends everything */
    }
  }
}

static void on_capabilities(FerryQmp *q, json_t *result, const GError *error, gpointer ud)
{
  FerryQmpReplyFunc done = g_steal_pointer(&q->start_done);
  if (error == NULL) {
    q->ready = TRUE;
    flush_queued(q);
  }
  if (done != NULL)
    done(q, error == NULL ? json_object_get(q->greeting, "QMP") : NULL, error, q->start_data);
}

static void handle_line(FerryQmp *q, const char *line, gsize len)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(json_t) msg = ferry_json_parse_object("qmp message", line, len, &error);
  if (msg == NULL) {
    close_with(q, error);
    return;
  }
  if (!q->greeted) {
    if (!json_is_object(json_object_get(msg, "QMP"))) {
      close_protocol(q, "expected the greeting, got something else");
      return;
    }
    q->greeted = TRUE;
    q->greeting = json_incref(msg);
    /* qmp_capabilities goes out first, before anything queued. */
    Pending *p = g_new0(Pending, 1);
    p->qmp = q;
    p->id = q->next_id++;
    p->command = g_strdup("qmp_capabilities");
    p->done = on_capabilities;
    g_hash_table_insert(q->pending, &p->id, p);
    g_autofree char *cmd =
        g_strdup_printf("{\"execute\":\"qmp_capabilities\",\"id\":%" G_GUINT64_FORMAT "}", p->id);
    if (!send_line(q, cmd, -1, &error))
      close_with(q, error);
    return;
  }
  const char *event = NULL;
  if (ferry_json_get_string(msg, "event", FALSE, &event, NULL) && event != NULL) {
    json_t *ts = json_object_get(msg, "timestamp");
    gint64 sec = 0, usec = 0;
    ferry_json_get_int64(ts, "seconds", FALSE, &sec, NULL);
    ferry_json_get_int64(ts, "microseconds", FALSE, &usec, NULL);
    gint64 us;
    if (__builtin_mul_overflow(sec, G_USEC_PER_SEC, &us) || __builtin_add_overflow(us, usec, &us))
      us = 0; /* no time QEMU can have meant */
    if (q->event_func != NULL)
      q->event_func(q, event, json_object_get(msg, "data"), us, q->event_data);
    return;
  }
  json_t *id = json_object_get(msg, "id");
  if (!json_is_integer(id) || json_integer_value(id) < 0)
    return; /* an answer to no command of ours (QEMU answers unparsable input without id) */
  Pending *p = take(q, (guint64)json_integer_value(id));
  if (p == NULL)
    return; /* timed out earlier */
  json_t *err = json_object_get(msg, "error");
  if (err != NULL) {
    const char *klass = NULL, *desc = NULL;
    ferry_json_get_string(err, "class", FALSE, &klass, NULL);
    ferry_json_get_string(err, "desc", FALSE, &desc, NULL);
    g_autoptr(GError) e =
        g_error_new(FERRY_ERROR, error_code(klass), "%s: %s (%s)", p->command,
                    desc != NULL ? desc : "failed", klass != NULL ? klass : "unknown class");
    complete(q, p, NULL, e);
    return;
  }
  json_t *ret = json_object_get(msg, "return");
  if (ret == NULL) {
    g_autoptr(GError) e =
        g_error_new(FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                    "qmp: %s: answer to id %" G_GUINT64_FORMAT " has neither return nor error",
                    p->command, p->id);
    complete(q, p, NULL, e);
    close_with(q, e);
    return;
  }
  complete(q, p, ret, NULL);
}

static void on_data(FerryStream *s, const guint8 *data, gsize len, gpointer ud)
{
  FerryQmp *q = ud;
  for (gsize i = 0; i < len && q->stream == s; i++) {
    if (data[i] == '\n') {
      gsize n = q->line->len;
      if (n > 0 && q->line->data[n - 1] == '\r')
        n--;
      if (n > 0)
        handle_line(q, (const char *)q->line->data, n);
      if (q->line != NULL)
        g_byte_array_set_size(q->line, 0);
      continue;
    }
    if (q->line->len >= FERRY_QMP_MAX_LINE) {
      close_protocol(q, "a line longer than %u bytes", FERRY_QMP_MAX_LINE);
      return;
    }
    g_byte_array_append(q->line, data + i, 1);
  }
}

static void on_closed(FerryStream *s, const GError *error, gpointer ud)
{
  FerryQmp *q = ud;
  if (q->stream == s)
    close_with(q, error);
}

static const FerryStreamHandlers qmp_handlers = { .data = on_data, .closed = on_closed };

FerryQmp *ferry_qmp_new(int fd, GError **error)
{
  FerryQmp *q = g_new0(FerryQmp, 1);
  q->stream = ferry_stream_new(fd, "qmp", &qmp_handlers, q, error);
  if (q->stream == NULL) {
    g_free(q);
    return NULL;
  }
  q->context = g_main_context_ref_thread_default();
  q->line = g_byte_array_new();
  q->pending = g_hash_table_new_full(g_int64_hash, g_int64_equal, NULL, pending_free);
  g_queue_init(&q->queued);
  return q;
}

void ferry_qmp_free(FerryQmp *q)
{
  if (q == NULL)
    return;
  q->closed_func = NULL;
  q->event_func = NULL;
  g_autoptr(GError) why = g_error_new(FERRY_ERROR, FERRY_ERROR_CANCELLED, "client freed");
  close_with(q, why);
  g_hash_table_unref(q->pending);
  g_byte_array_unref(q->line);
  if (q->greeting != NULL)
    json_decref(q->greeting);
  g_clear_error(&q->closed);
  g_main_context_unref(q->context);
  g_free(q);
}

void ferry_qmp_set_event_func(FerryQmp *q, FerryQmpEventFunc func, gpointer user_data)
{
  q->event_func = func;
  q->event_data = user_data;
}

void ferry_qmp_set_closed_func(FerryQmp *q, FerryQmpClosedFunc func, gpointer user_data)
{
  q->closed_func = func;
  q->closed_data = user_data;
}

gboolean ferry_qmp_is_open(FerryQmp *q)
{
  return q->closed == NULL;
}

void ferry_qmp_start(FerryQmp *q, FerryQmpReplyFunc done, gpointer user_data)
{
  q->start_done = done;
  q->start_data = user_data;
}

static gboolean on_early(gpointer data)
{
  Pending *p = data;
  ferry_source_clear(&p->early_source);
  FerryQmp *q = p->qmp;
  Pending *taken = take(q, p->id);
  GError *error = g_steal_pointer(&taken->early);
  complete(q, taken, NULL, error);
  g_error_free(error);
  return G_SOURCE_REMOVE;
}

static guint64 execute(FerryQmp *q, const char *command, json_t *arguments, int fd,
                       guint timeout_ms, FerryQmpReplyFunc done, gpointer user_data)
{
  Pending *p = g_new0(Pending, 1);
  p->qmp = q;
  p->id = q->next_id++;
  p->command = g_strdup(command);
  p->done = done;
  p->user_data = user_data;
  guint64 id = p->id;
  if (q->closed != NULL) {
    g_hash_table_insert(q->pending, &p->id, p);
    fail_later(q, p, g_error_copy(q->closed));
    return id;
  }
  g_autoptr(json_t) msg = json_pack("{s:s, s:I}", "execute", command, "id", (json_int_t)p->id);
  if (arguments != NULL)
    json_object_set(msg, "arguments", arguments);
  p->timer = ferry_timeout_new(
      q->context, timeout_ms != 0 ? timeout_ms : FERRY_QMP_DEFAULT_TIMEOUT_MS, on_timeout, p);
  Queued *qd = g_new0(Queued, 1);
  qd->p = p;
  qd->line = ferry_json_dump(msg);
  qd->fd = fd >= 0 ? fcntl(fd, F_DUPFD_CLOEXEC, 3) : -1;
  g_queue_push_tail(&q->queued, qd);
  flush_queued(q); /* may end p: it failed, and its failure is queued */
  return id;
}

guint64 ferry_qmp_execute(FerryQmp *q, const char *command, json_t *arguments, guint timeout_ms,
                          FerryQmpReplyFunc done, gpointer user_data)
{
  return execute(q, command, arguments, -1, timeout_ms, done, user_data);
}

guint64 ferry_qmp_execute_with_fd(FerryQmp *q, const char *command, json_t *arguments, int fd,
                                  guint timeout_ms, FerryQmpReplyFunc done, gpointer user_data)
{
  return execute(q, command, arguments, fd, timeout_ms, done, user_data);
}
