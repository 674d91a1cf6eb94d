/* The error domain and the one table from errors to google.rpc status codes. */
#include "ferry/error.h"

#include <errno.h>
#include <gio/gio.h>
#include <string.h>

G_DEFINE_QUARK(ferry - error - quark, ferry_error)

static const char *const status_names[] = {
  "OK",        "CANCELLED",       "UNKNOWN",           "INVALID_ARGUMENT",   "DEADLINE_EXCEEDED",
  "NOT_FOUND", "ALREADY_EXISTS",  "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
  "ABORTED",   "OUT_OF_RANGE",    "UNIMPLEMENTED",     "INTERNAL",           "UNAVAILABLE",
  "DATA_LOSS", "UNAUTHENTICATED",
};

const char *ferry_status_code_name(int code)
{
  if (code >= 0 && (gsize)code < G_N_ELEMENTS(status_names))
    return status_names[code];
  return "UNKNOWN_CODE";
}

/* One row: a (domain, code) pair from GLib and the status it travels as. */
typedef struct {
  int from;
  FerryErrorCode to;
} CodeMap;

static const CodeMap io_error_map[] = {
  { G_IO_ERROR_NOT_FOUND, FERRY_ERROR_NOT_FOUND },
  { G_IO_ERROR_EXISTS, FERRY_ERROR_ALREADY_EXISTS },
  { G_IO_ERROR_INVALID_ARGUMENT, FERRY_ERROR_INVALID_ARGUMENT },
  { G_IO_ERROR_INVALID_DATA, FERRY_ERROR_INVALID_ARGUMENT },
  { G_IO_ERROR_PERMISSION_DENIED, FERRY_ERROR_PERMISSION_DENIED },
  { G_IO_ERROR_NOT_SUPPORTED, FERRY_ERROR_UNIMPLEMENTED },
  { G_IO_ERROR_CANCELLED, FERRY_ERROR_CANCELLED },
  { G_IO_ERROR_TIMED_OUT, FERRY_ERROR_DEADLINE_EXCEEDED },
  { G_IO_ERROR_BUSY, FERRY_ERROR_UNAVAILABLE },
  { G_IO_ERROR_WOULD_BLOCK, FERRY_ERROR_UNAVAILABLE },
  { G_IO_ERROR_CONNECTION_REFUSED, FERRY_ERROR_UNAVAILABLE },
  { G_IO_ERROR_CONNECTION_CLOSED, FERRY_ERROR_UNAVAILABLE },
  { G_IO_ERROR_BROKEN_PIPE, FERRY_ERROR_UNAVAILABLE },
  { G_IO_ERROR_NO_SPACE, FERRY_ERROR_RESOURCE_EXHAUSTED },
  { G_IO_ERROR_TOO_MANY_OPEN_FILES, FERRY_ERROR_RESOURCE_EXHAUSTED },
  { G_IO_ERROR_MESSAGE_TOO_LARGE, FERRY_ERROR_RESOURCE_EXHAUSTED },
};

static const CodeMap file_error_map[] = {
  { G_FILE_ERROR_NOENT, FERRY_ERROR_NOT_FOUND },
  { G_FILE_ERROR_EXIST, FERRY_ERROR_ALREADY_EXISTS },
  { G_FILE_ERROR_ACCES, FERRY_ERROR_PERMISSION_DENIED },
  { G_FILE_ERROR_PERM, FERRY_ERROR_PERMISSION_DENIED },
  { G_FILE_ERROR_INVAL, FERRY_ERROR_INVALID_ARGUMENT },
  { G_FILE_ERROR_NAMETOOLONG, FERRY_ERROR_INVALID_ARGUMENT },
  { G_FILE_ERROR_NOSPC, FERRY_ERROR_RESOURCE_EXHAUSTED },
  { G_FILE_ERROR_MFILE, FERRY_ERROR_RESOURCE_EXHAUSTED },
  { G_FILE_ERROR_NOMEM, FERRY_ERROR_RESOURCE_EXHAUSTED },
  { G_FILE_ERROR_NOSYS, FERRY_ERROR_UNIMPLEMENTED },
  { G_FILE_ERROR_AGAIN, FERRY_ERROR_UNAVAILABLE },
};

static const CodeMap errno_map[] = {
  { ENOENT, FERRY_ERROR_NOT_FOUND },
  { ESRCH, FERRY_ERROR_NOT_FOUND },
  { EEXIST, FERRY_ERROR_ALREADY_EXISTS },
  { EADDRINUSE, FERRY_ERROR_ALREADY_EXISTS },
  { EACCES, FERRY_ERROR_PERMISSION_DENIED },
  { EPERM, FERRY_ERROR_PERMISSION_DENIED },
  { EINVAL, FERRY_ERROR_INVALID_ARGUMENT },
  { ENAMETOOLONG, FERRY_ERROR_INVALID_ARGUMENT },
  { EBADF, FERRY_ERROR_INVALID_ARGUMENT },
  { ENOSPC, FERRY_ERROR_RESOURCE_EXHAUSTED },
  { ENOMEM, FERRY_ERROR_RESOURCE_EXHAUSTED },
  { EMFILE, FERRY_ERROR_RESOURCE_EXHAUSTED },
  { ENFILE, FERRY_ERROR_RESOURCE_EXHAUSTED },
  { EMSGSIZE, FERRY_ERROR_RESOURCE_EXHAUSTED },
  { ENOSYS, FERRY_ERROR_UNIMPLEMENTED },
  { EOPNOTSUPP, FERRY_ERROR_UNIMPLEMENTED },
  { ETIMEDOUT, FERRY_ERROR_DEADLINE_EXCEEDED },
  { ECANCELED, FERRY_ERROR_CANCELLED },
  { EAGAIN, FERRY_ERROR_UNAVAILABLE },
  { ECONNREFUSED, FERRY_ERROR_UNAVAILABLE },
  { ECONNRESET, FERRY_ERROR_UNAVAILABLE },
  { EPIPE, FERRY_ERROR_UNAVAILABLE },
  { ENOTCONN, FERRY_ERROR_UNAVAILABLE },
  { EBUSY, FERRY_ERROR_UNAVAILABLE },
  { ERANGE, FERRY_ERROR_OUT_OF_RANGE },
};

static FerryErrorCode lookup(const CodeMap *map, gsize n, int from)
{
  for (gsize i = 0; i < n; i++)
    if (map[i].from == from)
      return map[i].to;
  return FERRY_ERROR_UNKNOWN;
}

static struct {
  GQuark domain;
  FerryErrorStatusFunc to_status;
} registered[16];
static guint n_registered;
G_LOCK_DEFINE_STATIC(registry);

void ferry_error_register_domain(GQuark domain, FerryErrorStatusFunc to_status)
{
  G_LOCK(registry);
  for (guint i = 0; i < n_registered; i++) {
    if (registered[i].domain == domain) {
      registered[i].to_status = to_status;
      G_UNLOCK(registry);
      return;
    }
  }
  g_assert(n_registered < G_N_ELEMENTS(registered)); /* a programming error, not input */
  registered[n_registered].domain = domain;
  registered[n_registered].to_status = to_status;
  n_registered++;
  G_UNLOCK(registry);
}

static FerryErrorStatusFunc registered_mapper(GQuark domain)
{
  FerryErrorStatusFunc f = NULL;
  G_LOCK(registry);
  for (guint i = 0; i < n_registered; i++)
    if (registered[i].domain == domain)
      f = registered[i].to_status;
  G_UNLOCK(registry);
  return f;
}

int ferry_error_to_status_code(const GError *error)
{
  if (error == NULL)
    return FERRY_ERROR_OK;
  if (error->domain == FERRY_ERROR) {
    if (error->code > FERRY_ERROR_OK && error->code <= FERRY_ERROR_UNAUTHENTICATED)
      return error->code;
    return FERRY_ERROR_UNKNOWN;
  }
  if (error->domain == G_IO_ERROR)
    return lookup(io_error_map, G_N_ELEMENTS(io_error_map), error->code);
  if (error->domain == G_FILE_ERROR)
    return lookup(file_error_map, G_N_ELEMENTS(file_error_map), error->code);
  FerryErrorStatusFunc f = registered_mapper(error->domain);
  if (f != NULL) {
    int code = f(error->code);
    if (code > FERRY_ERROR_OK && code <= FERRY_ERROR_UNAUTHENTICATED)
      return code;
  }
  return FERRY_ERROR_UNKNOWN;
}

FerryErrorCode ferry_error_code_from_errno(int errsv)
{
  return lookup(errno_map, G_N_ELEMENTS(errno_map), errsv);
}

gboolean ferry_error_set_errno(GError **error, int errsv, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  g_autofree char *what = g_strdup_vprintf(fmt, ap);
  va_end(ap);
  g_set_error(error, FERRY_ERROR, ferry_error_code_from_errno(errsv), "%s: %s", what,
              g_strerror(errsv));
  return FALSE;
}
