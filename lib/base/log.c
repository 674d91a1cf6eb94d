/* logfmt lines with process-wide context. */
#include "ferry/log.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *const level_names[] = { "debug", "info", "warning", "error" };

static struct {
  gboolean initialized;
  FerryLogLevel level;
  int fd;
  GPtrArray *context; /* key, value, key, value ... (owned strings) */
} log_state = { FALSE, FERRY_LOG_INFO, 2, NULL };

G_LOCK_DEFINE_STATIC(log_lock);

gboolean ferry_log_level_parse(const char *text, FerryLogLevel *out)
{
  if (text == NULL)
    return FALSE;
  for (gsize i = 0; i < G_N_ELEMENTS(level_names); i++) {
    if (g_ascii_strcasecmp(text, level_names[i]) == 0) {
      *out = (FerryLogLevel)i;
      return TRUE;
    }
  }
  if (g_ascii_strcasecmp(text, "warn") == 0) {
    *out = FERRY_LOG_WARNING;
    return TRUE;
  }
  return FALSE;
}

/* Callers hold log_lock. */
static void ensure_initialized(void)
{
  if (log_state.initialized)
    return;
  log_state.initialized = TRUE;
  log_state.context = g_ptr_array_new_with_free_func(g_free);
}

void ferry_log_set_level(FerryLogLevel level)
{
  G_LOCK(log_lock);
  ensure_initialized();
  log_state.level = level;
  G_UNLOCK(log_lock);
}

FerryLogLevel ferry_log_get_level(void)
{
  G_LOCK(log_lock);
  ensure_initialized();
  FerryLogLevel level = log_state.level;
  G_UNLOCK(log_lock);
  return level;
}

void ferry_log_set_fd(int fd)
{
  G_LOCK(log_lock);
  ensure_initialized();
  log_state.fd = fd;
  G_UNLOCK(log_lock);
}

void ferry_log_set_context(const char *key, const char *value)
{
  G_LOCK(log_lock);
  ensure_initialized();
  GPtrArray *ctx = log_state.context;
  for (guint i = 0; i < ctx->len; i += 2) {
    if (strcmp(ctx->pdata[i], key) != 0)
      continue;
    if (value != NULL) {
      g_free(ctx->pdata[i + 1]);
      ctx->pdata[i + 1] = g_strdup(value);
    } else {
      g_ptr_array_remove_range(ctx, i, 2);
    }
    G_UNLOCK(log_lock);
    return;
  }
  if (value != NULL) {
    g_ptr_array_add(ctx, g_strdup(key));
    g_ptr_array_add(ctx, g_strdup(value));
  }
  G_UNLOCK(log_lock);
}

static gboolean needs_quoting(const char *v)
{
  if (*v == '\0')
    return FALSE;
  for (const unsigned char *p = (const unsigned char *)v; *p; p++)
    if (*p <= ' ' || *p == '"' || *p == '=' || *p == '\\' || *p == 0x7f)
      return TRUE;
  return FALSE;
}

static void append_value(GString *out, const char *v)
{
  if (v == NULL)
    v = "";
  if (!needs_quoting(v)) {
    g_string_append(out, v);
    return;
  }
  g_string_append_c(out, '"');
  for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
    switch (*p) {
    case '"':
      g_string_append(out, "\\\"");
      break;
    case '\\':
      g_string_append(out, "\\\\");
      break;
    case '\n':
      g_string_append(out, "\\n");
      break;
    case '\r':
      g_string_append(out, "\\r");
      break;
    case '\t':
      g_string_append(out, "\\t");
      break;
    default:
      if (*p < ' ' || *p == 0x7f)
        g_string_append_printf(out, "\\x%02x", *p);
      else
        g_string_append_c(out, (char)*p);
    }
  }
  g_string_append_c(out, '"');
}

static void append_field(GString *out, const char *key, const char *value)
{
  if (out->len > 0)
    g_string_append_c(out, ' ');
  g_string_append(out, key);
  g_string_append_c(out, '=');
  append_value(out, value);
}

static void append_fields(GString *out, const char *const *fields)
{
  for (gsize i = 0; fields != NULL && fields[i] != NULL; i += 2)
    append_field(out, fields[i], fields[i + 1]);
}

char *ferry_log_format(FerryLogLevel level, gint64 time_usec, const char *msg,
                       const char *const *fields)
{
  GString *out = g_string_sized_new(128);
  if (time_usec != 0) {
    g_autoptr(GDateTime) dt = g_date_time_new_from_unix_utc(time_usec / G_USEC_PER_SEC);
    g_autofree char *stamp = dt ? g_date_time_format(dt, "%Y-%m-%dT%H:%M:%S") : g_strdup("?");
    g_autofree char *full =
        g_strdup_printf("%s.%06" G_GINT64_FORMAT "Z", stamp, time_usec % G_USEC_PER_SEC);
    append_field(out, "time", full);
  }
  append_field(out, "level", level_names[CLAMP((int)level, 0, 3)]);
  append_field(out, "msg", msg);
  append_fields(out, fields);
  return g_string_free(out, FALSE);
}

void ferry_logv(FerryLogLevel level, const char *msg, va_list kv)
{
  G_LOCK(log_lock);
  ensure_initialized();
  if (level < log_state.level) {
    G_UNLOCK(log_lock);
    return;
  }
  g_autoptr(GPtrArray) fields = g_ptr_array_new();
  for (guint i = 0; i < log_state.context->len; i++)
    g_ptr_array_add(fields, log_state.context->pdata[i]);
  for (;;) {
    const char *key = va_arg(kv, const char *);
    if (key == NULL)
      break;
    g_ptr_array_add(fields, (gpointer)key);
    g_ptr_array_add(fields, va_arg(kv, char *));
  }
  g_ptr_array_add(fields, NULL);
  g_autofree char *line =
      ferry_log_format(level, g_get_real_time(), msg, (const char *const *)fields->pdata);
  g_autofree char *with_nl = g_strconcat(line, "\n", NULL);
  int fd = log_state.fd;
  G_UNLOCK(log_lock);

  int saved = errno;
  gsize len = strlen(with_nl), off = 0;
  while (off < len) {
    ssize_t n = write(fd, with_nl + off, len - off);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break;
    off += (gsize)n;
  }
  errno = saved;
}

void ferry_log(FerryLogLevel level, const char *msg, ...)
{
  va_list ap;
  va_start(ap, msg);
  ferry_logv(level, msg, ap);
  va_end(ap);
}
