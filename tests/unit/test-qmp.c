/* The QMP client, with the test playing QEMU on a socketpair. */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "ferry/error.h"
#include "ferry/fd.h"
#include "ferry/json.h"
#include "ferry/qmp.h"
#include "test-util.h"

#define GREETING                                                                                   \
  "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 19, \"minor\": 2, \"major\": 7}, "               \
  "\"package\": \"Debian 1:7.2+dfsg-7\"}, \"capabilities\": [\"oob\"]}}\r\n"

typedef struct {
  FerryQmp *qmp;
  int qemu; /* the test's end */
  GString *in;
  int last_fd; /* an fd that came with a command */
} Fixture;

typedef struct {
  gboolean done;
  json_t *result;
  GError *error;
} Reply;

static void on_reply(FerryQmp *q, json_t *result, const GError *error, gpointer ud)
{
  Reply *r = ud;
  r->done = TRUE;
  if (result != NULL)
    r->result = json_incref(result);
  if (error != NULL)
    r->error = g_error_copy(error);
}

static void reply_clear(Reply *r)
{
  if (r->result != NULL)
    json_decref(r->result);
  g_clear_error(&r->error);
}

static void qemu_say(Fixture *f, const char *text)
{
  g_assert_cmpint(write(f->qemu, text, strlen(text)), ==, (gssize)strlen(text));
}

/* The next command the client sent (a new reference). */
static json_t *qemu_hear(Fixture *f)
{
  gint64 until = g_get_monotonic_time() + 5 * G_USEC_PER_SEC;
  for (;;) {
    char *nl = strchr(f->in->str, '\n');
    if (nl != NULL) {
      g_autoptr(GError) error = NULL;
      json_t *j = ferry_json_parse_object("command", f->in->str, (gsize)(nl - f->in->str), &error);
      g_assert_no_error(error);
      g_string_erase(f->in, 0, nl - f->in->str + 1);
      return j;
    }
    char buf[4096];
    gsize n = 0;
    int fd = -1;
    g_autoptr(GError) error = NULL;
    if (ferry_fd_recv(f->qemu, buf, sizeof(buf), &n, &fd, &error)) {
      if (fd >= 0)
        f->last_fd = fd;
      g_string_append_len(f->in, buf, (gssize)n);
      continue;
    }
    g_assert_error(error, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE); /* EAGAIN maps here */
    if (g_get_monotonic_time() > until)
      g_error("the client sent nothing within 5 s");
    g_main_context_iteration(g_main_context_get_thread_default(), FALSE);
    g_usleep(200);
  }
}

static void setup(Fixture *f, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  int sp[2];
  g_assert_true(ferry_socketpair(sp, FALSE, &error));
  f->qmp = ferry_qmp_new(sp[0], &error);
  g_assert_no_error(error);
  f->qemu = sp[1];
  g_assert_true(ferry_fd_set_nonblocking(f->qemu, TRUE, &error));
  f->in = g_string_new(NULL);
  f->last_fd = -1;
}

static void teardown(Fixture *f, gconstpointer data)
{
  ferry_qmp_free(f->qmp);
  ferry_fd_clear(&f->qemu);
  ferry_fd_clear(&f->last_fd);
  g_string_free(f->in, TRUE);
}

/* Greeting, capabilities, then a command queued before them goes out after. */
static void start(Fixture *f, Reply *started)
{
  ferry_qmp_start(f->qmp, on_reply, started);
  qemu_say(f, GREETING);
  g_autoptr(json_t) caps = qemu_hear(f);
  g_assert_cmpstr(json_string_value(json_object_get(caps, "execute")), ==, "qmp_capabilities");
  g_autofree char *ans = g_strdup_printf("{\"return\": {}, \"id\": %" JSON_INTEGER_FORMAT "}\r\n",
                                         json_integer_value(json_object_get(caps, "id")));
  qemu_say(f, ans);
  g_assert_true(test_run_until(&started->done, 5000));
  g_assert_no_error(started->error);
}

static void test_greeting_and_commands(Fixture *f, gconstpointer data)
{
  Reply early = { 0 }, started = { 0 };
  /* Queued before the greeting: must go out after qmp_capabilities. */
  ferry_qmp_execute(f->qmp, "query-status", NULL, 0, on_reply, &early);
  start(f, &started);
  /* start hands back the greeting's QMP object. */
  g_assert_nonnull(json_object_get(json_object_get(started.result, "version"), "qemu"));
  g_autoptr(json_t) cmd = qemu_hear(f);
  g_assert_cmpstr(json_string_value(json_object_get(cmd, "execute")), ==, "query-status");
  g_autofree char *ans = g_strdup_printf(
      "{\"return\": {\"status\": \"running\", \"running\": true}, \"id\": %" JSON_INTEGER_FORMAT
      "}\r\n",
      json_integer_value(json_object_get(cmd, "id")));
  qemu_say(f, ans);
  g_assert_true(test_run_until(&early.done, 5000));
  g_assert_no_error(early.error);
  g_assert_cmpstr(json_string_value(json_object_get(early.result, "status")), ==, "running");
  reply_clear(&early);
  reply_clear(&started);
}

/* Answers are matched by id, whatever their order; events come apart. */
typedef struct {
  GPtrArray *names;
  gint64 last_ts;
} Events;

static void on_event(FerryQmp *q, const char *event, json_t *data, gint64 ts, gpointer ud)
{
  Events *e = ud;
  g_ptr_array_add(e->names,
                  g_strdup_printf("%s:%s", event,
                                  data ? json_string_value(json_object_get(data, "status")) : ""));
  e->last_ts = ts;
}

static void test_out_of_order_and_events(Fixture *f, gconstpointer data)
{
  Events ev = { g_ptr_array_new_with_free_func(g_free), 0 };
  ferry_qmp_set_event_func(f->qmp, on_event, &ev);
  Reply started = { 0 }, a = { 0 }, b = { 0 };
  start(f, &started);
  g_autoptr(json_t) args = json_pack("{s:s}", "uri", "fd:mig");
  ferry_qmp_execute(f->qmp, "migrate", args, 0, on_reply, &a);
  ferry_qmp_execute(f->qmp, "query-migrate", NULL, 0, on_reply, &b);
  g_autoptr(json_t) ca = qemu_hear(f);
  g_autoptr(json_t) cb = qemu_hear(f);
  g_assert_cmpstr(json_string_value(json_object_get(json_object_get(ca, "arguments"), "uri")), ==,
                  "fd:mig");
  g_autofree char *text = g_strdup_printf(
      "{\"timestamp\": {\"seconds\": 1700000000, \"microseconds\": 5}, \"event\": \"MIGRATION\", "
      "\"data\": {\"status\": \"setup\"}}\r\n"
      "{\"return\": {\"status\": \"active\"}, \"id\": %" JSON_INTEGER_FORMAT "}\r\n"
      "{\"return\": {}, \"id\": %" JSON_INTEGER_FORMAT "}\r\n",
      json_integer_value(json_object_get(cb, "id")), json_integer_value(json_object_get(ca, "id")));
  qemu_say(f, text);
  g_assert_true(test_run_until(&a.done, 5000));
  g_assert_true(b.done);
  g_assert_cmpstr(json_string_value(json_object_get(b.result, "status")), ==, "active");
  g_assert_cmpuint(ev.names->len, ==, 1);
  g_assert_cmpstr(ev.names->pdata[0], ==, "MIGRATION:setup");
  g_assert_cmpint(ev.last_ts, ==, G_GINT64_CONSTANT(1700000000000005));
  g_ptr_array_unref(ev.names);
  reply_clear(&started);
  reply_clear(&a);
  reply_clear(&b);
}

static void test_error_reply(Fixture *f, gconstpointer data)
{
  Reply started = { 0 }, r = { 0 };
  start(f, &started);
  ferry_qmp_execute(f->qmp, "nope", NULL, 0, on_reply, &r);
  g_autoptr(json_t) c = qemu_hear(f);
  g_autofree char *ans = g_strdup_printf(
      "{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"The command nope has not been "
      "found\"}, \"id\": %" JSON_INTEGER_FORMAT "}\r\n",
      json_integer_value(json_object_get(c, "id")));
  qemu_say(f, ans);
  g_assert_true(test_run_until(&r.done, 5000));
  g_assert_error(r.error, FERRY_ERROR, FERRY_ERROR_UNIMPLEMENTED);
  g_assert_cmpstr(r.error->message, ==,
                  "nope: The command nope has not been found (CommandNotFound)");
  g_assert_true(ferry_qmp_is_open(f->qmp));
  reply_clear(&started);
  reply_clear(&r);
}

/* A command past its time limit fails alone; its late answer is dropped. */
static void test_timeout(Fixture *f, gconstpointer data)
{
  Reply started = { 0 }, r = { 0 }, next = { 0 };
  start(f, &started);
  ferry_qmp_execute(f->qmp, "query-migrate", NULL, 50, on_reply, &r);
  g_autoptr(json_t) c = qemu_hear(f);
  g_assert_true(test_run_until(&r.done, 5000));
  g_assert_error(r.error, FERRY_ERROR, FERRY_ERROR_DEADLINE_EXCEEDED);
  g_autofree char *late = g_strdup_printf("{\"return\": {}, \"id\": %" JSON_INTEGER_FORMAT "}\r\n",
                                          json_integer_value(json_object_get(c, "id")));
  qemu_say(f, late);
  ferry_qmp_execute(f->qmp, "cont", NULL, 0, on_reply, &next);
  g_autoptr(json_t) c2 = qemu_hear(f);
  g_autofree char *ans = g_strdup_printf("{\"return\": {}, \"id\": %" JSON_INTEGER_FORMAT "}\r\n",
                                         json_integer_value(json_object_get(c2, "id")));
  qemu_say(f, ans);
  g_assert_true(test_run_until(&next.done, 5000));
  g_assert_no_error(next.error);
  reply_clear(&started);
  reply_clear(&r);
  reply_clear(&next);
}

/* getfd: the fd travels with the command line. */
static void test_getfd_passes_fd(Fixture *f, gconstpointer data)
{
  Reply started = { 0 }, r = { 0 };
  start(f, &started);
  int p[2];
  g_assert_cmpint(pipe(p), ==, 0);
  g_autoptr(json_t) args = json_pack("{s:s}", "fdname", "mig");
  ferry_qmp_execute_with_fd(f->qmp, "getfd", args, p[1], 0, on_reply, &r);
  close(p[1]);
  g_autoptr(json_t) c = qemu_hear(f);
  g_assert_cmpstr(json_string_value(json_object_get(c, "execute")), ==, "getfd");
  g_assert_cmpint(f->last_fd, >=, 0);
  g_assert_cmpint(write(f->last_fd, "z", 1), ==, 1);
  char z;
  g_assert_cmpint(read(p[0], &z, 1), ==, 1);
  close(p[0]);
  g_autofree char *ans = g_strdup_printf("{\"return\": {}, \"id\": %" JSON_INTEGER_FORMAT "}\r\n",
                                         json_integer_value(json_object_get(c, "id")));
  qemu_say(f, ans);
  g_assert_true(test_run_until(&r.done, 5000));
  g_assert_no_error(r.error);
  reply_clear(&started);
  reply_clear(&r);
}

/* Broken input closes the connection with a clear error; pending commands fail. */
static void test_garbage_closes(Fixture *f, gconstpointer data)
{
  Reply started = { 0 }, r = { 0 };
  start(f, &started);
  ferry_qmp_execute(f->qmp, "query-status", NULL, 0, on_reply, &r);
  qemu_say(f, "{not json\r\n");
  g_assert_true(test_run_until(&r.done, 5000));
  g_assert_error(r.error, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE);
  g_assert_nonnull(strstr(r.error->message, "invalid JSON"));
  g_assert_false(ferry_qmp_is_open(f->qmp));
  /* Later commands fail from the main loop. */
  Reply later = { 0 };
  ferry_qmp_execute(f->qmp, "cont", NULL, 0, on_reply, &later);
  g_assert_false(later.done);
  g_assert_true(test_run_until(&later.done, 5000));
  g_assert_error(later.error, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE);
  reply_clear(&started);
  reply_clear(&r);
  reply_clear(&later);
}

static void test_peer_gone_fails_start(Fixture *f, gconstpointer data)
{
  Reply started = { 0 };
  ferry_qmp_start(f->qmp, on_reply, &started);
  ferry_fd_clear(&f->qemu);
  g_assert_true(test_run_until(&started.done, 5000));
  g_assert_error(started.error, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE);
  reply_clear(&started);
}

static void on_qmp_closed(FerryQmp *q, const GError *error, gpointer ud)
{
  (*(int *)ud)++;
}

/* Issue 9 item 1: QEMU is gone before the client notices; the command's write breaks
 * the stream. Its reply callback runs once, later, from the main loop, and the client
 * reports closed once. */
static void test_execute_after_peer_closed(Fixture *f, gconstpointer data)
{
  Reply started = { 0 }, r = { 0 };
  int closed = 0;
  ferry_qmp_set_closed_func(f->qmp, on_qmp_closed, &closed);
  start(f, &started);
  ferry_fd_clear(&f->qemu);
  ferry_qmp_execute(f->qmp, "query-status", NULL, 1000, on_reply, &r);
  g_assert_false(r.done);
  g_assert_cmpint(closed, ==, 0);
  g_assert_true(test_run_until(&r.done, 5000));
  g_assert_error(r.error, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE);
  for (int i = 0; i < 50; i++)
    g_main_context_iteration(NULL, FALSE);
  g_assert_cmpint(closed, ==, 1);
  g_assert_false(ferry_qmp_is_open(f->qmp));
  reply_clear(&started);
  reply_clear(&r);
}

/* Issue 9 item 6: under a pushed thread-default context every source of the client is
 * there (the command's time limit too), and the global default context sees none. */
static void test_timeout_on_pushed_context(void)
{
  GMainContext *ctx = g_main_context_new();
  g_main_context_push_thread_default(ctx);
  Fixture f = { 0 };
  setup(&f, NULL);
  Reply started = { 0 }, r = { 0 };
  start(&f, &started);
  ferry_qmp_execute(f.qmp, "query-status", NULL, 1, on_reply, &r);
  json_decref(qemu_hear(&f)); /* the command goes unanswered: its time limit ends it */
  g_assert_true(test_run_until(&r.done, 5000));
  g_assert_error(r.error, FERRY_ERROR, FERRY_ERROR_DEADLINE_EXCEEDED);
  g_assert_false(g_main_context_pending(NULL));
  teardown(&f, NULL);
  reply_clear(&started);
  reply_clear(&r);
  g_main_context_pop_thread_default(ctx);
  g_main_context_unref(ctx);
}

int main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
#define T(path, fn) g_test_add("/qmp/" path, Fixture, NULL, setup, fn, teardown)
  T("greeting-and-commands", test_greeting_and_commands);
  T("out-of-order-and-events", test_out_of_order_and_events);
  T("error-reply", test_error_reply);
  T("timeout", test_timeout);
  T("getfd-passes-fd", test_getfd_passes_fd);
  T("garbage-closes", test_garbage_closes);
  T("peer-gone-fails-start", test_peer_gone_fails_start);
  T("execute-after-peer-closed", test_execute_after_peer_closed);
  g_test_add_func("/qmp/timeout-on-pushed-context", test_timeout_on_pushed_context);
  return g_test_run();
}
