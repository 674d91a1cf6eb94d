/* logfmt formatting, levels and context. */
#include <string.h>
#include <unistd.h>

#include "ferry/fd.h"
#include "ferry/log.h"

static void test_format_plain(void)
{
  const char *fields[] = { "sandbox", "sb1", "n", "42", NULL };
  g_autofree char *line = ferry_log_format(FERRY_LOG_INFO, 0, "started", fields);
  g_assert_cmpstr(line, ==, "level=info msg=started sandbox=sb1 n=42");
}

static void test_format_quotes_and_escapes(void)
{
  const char *fields[] = { "path", "/a b",  "q", "say \"hi\"", "eq",   "a=b", "nl",
                           "x\ny", "empty", "",  "ctl",        "\x01", NULL };
  g_autofree char *line = ferry_log_format(FERRY_LOG_ERROR, 0, "two words", fields);
  g_assert_cmpstr(line, ==,
                  "level=error msg=\"two words\" path=\"/a b\" q=\"say \\\"hi\\\"\" "
                  "eq=\"a=b\" nl=\"x\\ny\" empty= ctl=\"\\x01\"");
}

static void test_format_null_value(void)
{
  const char *fields[] = { "k", NULL, NULL };
  /* A NULL value is written empty; the array still ends at the next key slot. */
  g_autofree char *line = ferry_log_format(FERRY_LOG_DEBUG, 0, "m", fields);
  g_assert_cmpstr(line, ==, "level=debug msg=m k=");
}

static void test_format_time(void)
{
  /* 2026-11-23T00:00:01.000002Z */
  gint64 t = G_GINT64_CONSTANT(1795392001) * G_USEC_PER_SEC + 2;
  g_autofree char *line = ferry_log_format(FERRY_LOG_WARNING, t, "m", NULL);
  g_assert_cmpstr(line, ==, "time=2026-11-23T00:00:01.000002Z level=warning msg=m");
}

static void test_level_parse(void)
{
  FerryLogLevel l;
  g_assert_true(ferry_log_level_parse("DEBUG", &l));
  g_assert_cmpint(l, ==, FERRY_LOG_DEBUG);
  g_assert_true(ferry_log_level_parse("warn", &l));
  g_assert_cmpint(l, ==, FERRY_LOG_WARNING);
  g_assert_true(ferry_log_level_parse("error", &l));
  g_assert_cmpint(l, ==, FERRY_LOG_ERROR);
  g_assert_false(ferry_log_level_parse("loud", &l));
  g_assert_false(ferry_log_level_parse(NULL, &l));
}

/* Read what the logger wrote to a pipe. */
static char *drain(int fd)
{
  char buf[4096];
  ssize_t n = read(fd, buf, sizeof(buf) - 1);
  if (n < 0)
    n = 0;
  buf[n] = '\0';
  return g_strdup(buf);
}

static void test_context_and_threshold(void)
{
  int p[2];
  g_assert_cmpint(pipe(p), ==, 0);
  g_autoptr(GError) error = NULL;
  g_assert_true(ferry_fd_set_nonblocking(p[0], TRUE, &error));
  ferry_log_set_fd(p[1]);
  ferry_log_set_level(FERRY_LOG_INFO);
  ferry_log_set_context("sandbox", "sb9");
  ferry_log_set_context("session", "s1");

  ferry_log(FERRY_LOG_DEBUG, "hidden", NULL);
  ferry_log(FERRY_LOG_INFO, "shown", "container", "c1", NULL);
  g_autofree char *out = drain(p[0]);
  g_assert_null(strstr(out, "hidden"));
  const char *body = strstr(out, " level=");
  g_assert_nonnull(body);
  g_assert_true(g_str_has_prefix(out, "time="));
  g_assert_cmpstr(body, ==, " level=info msg=shown sandbox=sb9 session=s1 container=c1\n");

  ferry_log_set_context("sandbox", "sb10"); /* replaced in place */
  ferry_log_set_context("session", NULL);   /* removed */
  ferry_log(FERRY_LOG_ERROR, "again", NULL);
  g_autofree char *out2 = drain(p[0]);
  g_assert_cmpstr(strstr(out2, " level="), ==, " level=error msg=again sandbox=sb10\n");

  ferry_log_set_context("sandbox", NULL);
  ferry_log_set_fd(2);
  close(p[0]);
  close(p[1]);
}

int main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/log/format/plain", test_format_plain);
  g_test_add_func("/log/format/quotes-and-escapes", test_format_quotes_and_escapes);
  g_test_add_func("/log/format/null-value", test_format_null_value);
  g_test_add_func("/log/format/time", test_format_time);
  g_test_add_func("/log/level-parse", test_level_parse);
  g_test_add_func("/log/context-and-threshold", test_context_and_threshold);
  return g_test_run();
}
