/*
 * A QMP client (QEMU's machine protocol) on the GLib main loop: the greeting and
 * qmp_capabilities, commands matched to answers by id, events delivered apart, a time
 * limit on every command, and fd passing for getfd. QEMU is a trusted peer but not an
 * infallible one: every line is bounded and checked, and a broken stream is an error,
 * not a crash.
 */
#pragma once

#include <glib.h>
#include <jansson.h>

G_BEGIN_DECLS

typedef struct FerryQmp FerryQmp;

/* Longest line accepted from QEMU. */
#define FERRY_QMP_MAX_LINE (4u << 20)
/* Default time limit of a command. */
#define FERRY_QMP_DEFAULT_TIMEOUT_MS 30000u

/* An answer: `result` (the "return" member, borrowed) or `error` (FERRY_ERROR with
 * "<command>: <desc> (<class>)", DEADLINE_EXCEEDED at the time limit, UNAVAILABLE when
 * the connection is gone). */
typedef void (*FerryQmpReplyFunc)(FerryQmp *qmp, json_t *result, const GError *error,
                                  gpointer user_data);
/* An event (data borrowed; may be NULL); the timestamp in microseconds since the epoch (0
 * when it does not fit in a gint64). */
typedef void (*FerryQmpEventFunc)(FerryQmp *qmp, const char *event, json_t *data,
                                  gint64 timestamp_us, gpointer user_data);
/* The connection ended (error says why). Once. */
typedef void (*FerryQmpClosedFunc)(FerryQmp *qmp, const GError *error, gpointer user_data);

/* Take a connected socket to QEMU's QMP. Nothing is sent until ferry_qmp_start(). */
FerryQmp *ferry_qmp_new(int fd, GError **error);
/* Close (pending commands fail with UNAVAILABLE) and free. */
void ferry_qmp_free(FerryQmp *qmp);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FerryQmp, ferry_qmp_free)

void ferry_qmp_set_event_func(FerryQmp *qmp, FerryQmpEventFunc func, gpointer user_data);
void ferry_qmp_set_closed_func(FerryQmp *qmp, FerryQmpClosedFunc func, gpointer user_data);

/* Wait for the greeting and leave capabilities negotiation (qmp_capabilities). `done`
 * gets the greeting's "QMP" object. Commands may be queued before it completes. */
void ferry_qmp_start(FerryQmp *qmp, FerryQmpReplyFunc done, gpointer user_data);

/* Run `command` with `arguments` (borrowed, may be NULL). timeout_ms 0: the default.
 * `done` runs once, never from inside this call. Returns the command's id. */
guint64 ferry_qmp_execute(FerryQmp *qmp, const char *command, json_t *arguments, guint timeout_ms,
                          FerryQmpReplyFunc done, gpointer user_data);

/* The same, passing a copy of `fd` with the command (for getfd / add-fd). */
guint64 ferry_qmp_execute_with_fd(FerryQmp *qmp, const char *command, json_t *arguments, int fd,
                                  guint timeout_ms, FerryQmpReplyFunc done, gpointer user_data);

gboolean ferry_qmp_is_open(FerryQmp *qmp);

G_END_DECLS
