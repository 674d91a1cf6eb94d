/*
 * Main-loop sources bound to one context. An object captures the thread-default main
 * context when it is created (g_main_context_ref_thread_default()) and attaches every
 * timer and idle it owns there, so that a caller who pushed its own context gets every
 * callback of the object on it (g_timeout_add() and g_idle_add() would use the global
 * default context instead).
 *
 * The owner keeps the returned reference and ends it with ferry_source_clear(), also
 * from inside the source's own callback (which then returns G_SOURCE_REMOVE).
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

/* A timer firing every `ms` milliseconds on `context`, attached; the caller owns one
 * reference. */
GSource *ferry_timeout_new(GMainContext *context, guint ms, GSourceFunc func, gpointer data);

/* An idle on `context` (idle priority, as g_idle_add()), attached; the caller owns one reference.
 */
GSource *ferry_idle_new(GMainContext *context, GSourceFunc func, gpointer data);

/* Destroy and unref *source and set it to NULL; NULL is a no-op. */
void ferry_source_clear(GSource **source);

G_END_DECLS
