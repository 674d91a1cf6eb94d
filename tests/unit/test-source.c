/* Sources bound to a captured context (ferry/source.h). */
#include "ferry/source.h"

static gboolean count_once(gpointer data)
{
  int *n = data;
  (*n)++;
  return G_SOURCE_CONTINUE;
}

static void test_idle_runs_on_given_context(void)
{
  GMainContext *ctx = g_main_context_new();
  int n = 0;
  GSource *idle = ferry_idle_new(ctx, count_once, &n);
  /* The global default context never sees it. */
  while (g_main_context_iteration(NULL, FALSE))
    ;
  g_assert_cmpint(n, ==, 0);
  g_assert_true(g_main_context_iteration(ctx, FALSE));
  g_assert_cmpint(n, ==, 1);
  ferry_source_clear(&idle);
  g_assert_null(idle);
  g_assert_false(g_main_context_iteration(ctx, FALSE));
  g_assert_cmpint(n, ==, 1);
  g_main_context_unref(ctx);
}

static void test_timeout_fires_on_given_context(void)
{
  GMainContext *ctx = g_main_context_new();
  int n = 0;
  GSource *t = ferry_timeout_new(ctx, 1, count_once, &n);
  while (n == 0)
    g_main_context_iteration(ctx, TRUE);
  g_assert_cmpint(n, ==, 1);
  ferry_source_clear(&t);
  g_main_context_unref(ctx);
}

struct self {
  GSource *source;
  int runs;
};

static gboolean clear_self(gpointer data)
{
  struct self *s = data;
  s->runs++;
  ferry_source_clear(&s->source);
  return G_SOURCE_REMOVE;
}

static void test_clear_from_own_callback(void)
{
  GMainContext *ctx = g_main_context_new();
  struct self s = { 0 };
  s.source = ferry_idle_new(ctx, clear_self, &s);
  g_main_context_iteration(ctx, FALSE);
  g_assert_cmpint(s.runs, ==, 1);
  g_assert_null(s.source);
  g_assert_false(g_main_context_iteration(ctx, FALSE));
  g_main_context_unref(ctx);
}

static void test_clear_null(void)
{
  GSource *none = NULL;
  ferry_source_clear(&none);
  g_assert_null(none);
}

int main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/source/idle-on-given-context", test_idle_runs_on_given_context);
  g_test_add_func("/source/timeout-on-given-context", test_timeout_fires_on_given_context);
  g_test_add_func("/source/clear-from-own-callback", test_clear_from_own_callback);
  g_test_add_func("/source/clear-null", test_clear_null);
  return g_test_run();
}
