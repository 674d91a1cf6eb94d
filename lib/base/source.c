/* Main-loop sources bound to one context (ferry/source.h). */
#include "ferry/source.h"

static GSource *attach(GSource *source, GMainContext *context, GSourceFunc func, gpointer data)
{
  g_source_set_callback(source, func, data, NULL);
  g_source_attach(source, context);
  return source;
}

GSource *ferry_timeout_new(GMainContext *context, guint ms, GSourceFunc func, gpointer data)
{
  return attach(g_timeout_source_new(ms), context, func, data);
}

GSource *ferry_idle_new(GMainContext *context, GSourceFunc func, gpointer data)
{
  return attach(g_idle_source_new(), context, func, data);
}

void ferry_source_clear(GSource **source)
{
  GSource *s = *source;
  if (s == NULL)
    return;
  *source = NULL;
  g_source_destroy(s);
  g_source_unref(s);
}
