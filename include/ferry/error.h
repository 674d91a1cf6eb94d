/* Ferry's error domain and the one table that maps errors to google.rpc codes. */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

/*
 * FERRY_ERROR codes are numerically the google.rpc.Code values, so that a status
 * received from a ttrpc peer becomes a GError without translation and a typed error
 * raised anywhere in Ferry reaches the wire unchanged. FERRY_ERROR_OK is never set.
 */
typedef enum {
  FERRY_ERROR_OK = 0,
  FERRY_ERROR_CANCELLED = 1,
  FERRY_ERROR_UNKNOWN = 2,
  FERRY_ERROR_INVALID_ARGUMENT = 3,
  FERRY_ERROR_DEADLINE_EXCEEDED = 4,
  FERRY_ERROR_NOT_FOUND = 5,
  FERRY_ERROR_ALREADY_EXISTS = 6,
  FERRY_ERROR_PERMISSION_DENIED = 7,
  FERRY_ERROR_RESOURCE_EXHAUSTED = 8,
  FERRY_ERROR_FAILED_PRECONDITION = 9,
  FERRY_ERROR_ABORTED = 10,
  FERRY_ERROR_OUT_OF_RANGE = 11,
  FERRY_ERROR_UNIMPLEMENTED = 12,
  FERRY_ERROR_INTERNAL = 13,
  FERRY_ERROR_UNAVAILABLE = 14,
  FERRY_ERROR_DATA_LOSS = 15,
  FERRY_ERROR_UNAUTHENTICATED = 16,
} FerryErrorCode;

#define FERRY_ERROR (ferry_error_quark())
GQuark ferry_error_quark(void);

/*
 * The google.rpc.Code for any GError: FERRY_ERROR codes as they are, GIOError,
 * GFileError and other known domains through one table, everything else UNKNOWN (2).
 * NULL maps to OK (0).
 */
int ferry_error_to_status_code(const GError *error);

/*
 * Let a module with an error domain of its own (the GCS bridge's HRESULTs) take part in
 * ferry_error_to_status_code(): `to_status` maps that domain's codes. Registered once,
 * normally from the domain's quark function. At most 16 domains.
 */
typedef int (*FerryErrorStatusFunc)(int code);
void ferry_error_register_domain(GQuark domain, FerryErrorStatusFunc to_status);

/* Define `GQuark func(void)`, the quark of the domain called `name`, which registers
 * `to_status` the first time it runs. */
#define FERRY_DEFINE_ERROR_DOMAIN(func, name, to_status)                                           \
  GQuark func(void)                                                                                \
  {                                                                                                \
    static gsize once;                                                                             \
    if (g_once_init_enter(&once)) {                                                                \
      GQuark q = g_quark_from_static_string(name);                                                 \
      ferry_error_register_domain(q, to_status);                                                   \
      g_once_init_leave(&once, q);                                                                 \
    }                                                                                              \
    return (GQuark)once;                                                                           \
  }

/* The google.rpc name of a code ("NOT_FOUND"), or "UNKNOWN_CODE" for an unknown one.
 * The result is static; it never returns NULL. */
const char *ferry_status_code_name(int code);

/* Set *error from an errno value, in FERRY_ERROR with the code the table gives for
 * it, and the message "<what>: <strerror>". Returns FALSE so callers can
 * `return ferry_error_set_errno(...)`. */
gboolean ferry_error_set_errno(GError **error, int errsv, const char *fmt, ...) G_GNUC_PRINTF(3, 4);

/* The FERRY_ERROR code for an errno value (ENOENT -> NOT_FOUND, EEXIST ->
 * ALREADY_EXISTS, EACCES/EPERM -> PERMISSION_DENIED, ...; otherwise UNKNOWN). */
FerryErrorCode ferry_error_code_from_errno(int errsv);

G_END_DECLS
