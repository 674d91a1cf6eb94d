/* Logging with key=value context (logfmt lines on stderr by default). */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

typedef enum {
  FERRY_LOG_DEBUG = 0,
  FERRY_LOG_INFO = 1,
  FERRY_LOG_WARNING = 2,
  FERRY_LOG_ERROR = 3,
} FerryLogLevel;

/*
 * Log one line: `time=<rfc3339> level=<level> msg=<msg> [context keys] [key=value ...]`.
 * The variadic part is key, value pairs of strings ended by NULL; a NULL value is
 * written as an empty value. Values with spaces, quotes, '=' or control characters
 * are quoted and escaped. Never blocks for long (one write(2) per line); never fails.
 * Library code logs at FERRY_LOG_DEBUG only (house style).
 */
void ferry_log(FerryLogLevel level, const char *msg, ...) G_GNUC_NULL_TERMINATED;

/* The same with a va_list of key, value pairs. */
void ferry_logv(FerryLogLevel level, const char *msg, va_list kv);

/*
 * Format one line without writing it; the caller frees the result. `fields` is a
 * NULL-terminated array of key, value, key, value ... (may be NULL). The time field
 * is left out when time_usec is 0 (tests use that).
 */
char *ferry_log_format(FerryLogLevel level, gint64 time_usec, const char *msg,
                       const char *const *fields);

/* Process-wide context added to every line (for example sandbox=<id>). A NULL value
 * removes the key. Keys keep their first insertion order. */
void ferry_log_set_context(const char *key, const char *value);

/* Lines below this level are dropped; info until a program sets it (the library reads
 * no environment: ferry-gcs takes --log-level, or FERRY_LOG_LEVEL itself). */
void ferry_log_set_level(FerryLogLevel level);
FerryLogLevel ferry_log_get_level(void);

/* Parse "debug", "info", "warning"/"warn", "error" (any case). */
gboolean ferry_log_level_parse(const char *text, FerryLogLevel *out);

/* Where lines go (default 2, stderr). The fd is not owned. */
void ferry_log_set_fd(int fd);

G_END_DECLS
