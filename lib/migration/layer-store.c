/*
 * Layer images that travelled, checked by digest as they arrive
 * (include/ferry/layer-store.h).
 */
#include <errno.h>
#include <fcntl.h>
#include <glib/gstdio.h>
#include <string.h>
#include <unistd.h>

#include "ferry/error.h"
#include "ferry/layer-store.h"

typedef struct {
  char *hex;
  char *part; /* <dir>/<hex>.erofs.part */
  int fd;
  guint64 received;
  GChecksum *sum;
} Upload;

struct FerryLayerStore {
  char *dir;
  guint64 max_bytes;
  GHashTable *uploads; /* hex -> Upload */
};

static void upload_free(gpointer p)
{
  Upload *u = p;
  if (u->fd >= 0)
    close(u->fd);
  unlink(u->part);
  g_checksum_free(u->sum);
  g_free(u->part);
  g_free(u->hex);
  g_free(u);
}

static GError *errno_error(int e, const char *what, const char *path)
{
  return g_error_new(FERRY_ERROR, ferry_error_code_from_errno(e), "layer store: %s %s: %s", what,
                     path, g_strerror(e));
}

FerryLayerStore *ferry_layer_store_new(const char *dir, guint64 max_bytes, GError **error)
{
  if (g_mkdir_with_parents(dir, 0700) < 0) {
    g_propagate_error(error, errno_error(errno, "create", dir));
    return NULL;
  }
  FerryLayerStore *s = g_new0(FerryLayerStore, 1);
  s->dir = g_strdup(dir);
  s->max_bytes = max_bytes;
  s->uploads = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, upload_free);
  return s;
}

void ferry_layer_store_free(FerryLayerStore *s)
{
  if (s == NULL)
    return;
  g_hash_table_unref(s->uploads);
  g_free(s->dir);
  g_free(s);
}

const char *ferry_layer_store_dir(FerryLayerStore *s)
{
  return s->dir;
}

const char *ferry_layer_digest_hex(const char *digest)
{
  if (digest == NULL || !g_str_has_prefix(digest, "sha256:") || strlen(digest) != 7 + 64)
    return NULL;
  for (const char *c = digest + 7; *c != '\0'; c++)
    if (!g_ascii_isdigit(*c) && !(*c >= 'a' && *c <= 'f'))
      return NULL;
  return digest + 7;
}

static char *image_path(FerryLayerStore *s, const char *hex)
{
  g_autofree char *name = g_strconcat(hex, ".erofs", NULL);
  return g_build_filename(s->dir, name, NULL);
}

char *ferry_layer_store_path(FerryLayerStore *s, const char *digest)
{
  const char *hex = ferry_layer_digest_hex(digest);
  if (hex == NULL)
    return NULL;
  char *path = image_path(s, hex);
  if (!g_file_test(path, G_FILE_TEST_IS_REGULAR)) {
    g_free(path);
    return NULL;
  }
  return path;
}

void ferry_layer_store_abort(FerryLayerStore *s, const char *digest)
{
  const char *hex = ferry_layer_digest_hex(digest);
  if (hex != NULL)
    g_hash_table_remove(s->uploads, hex);
}

static gboolean refuse(FerryLayerStore *s, const char *hex, GError **error, int code,
                       const char *fmt, ...) G_GNUC_PRINTF(5, 6);
static gboolean refuse(FerryLayerStore *s, const char *hex, GError **error, int code,
                       const char *fmt, ...)
{
  if (hex != NULL)
    g_hash_table_remove(s->uploads, hex);
  va_list ap;
  va_start(ap, fmt);
  g_autofree char *msg = g_strdup_vprintf(fmt, ap);
  va_end(ap);
  g_set_error(error, FERRY_ERROR, code, "layer store: %s", msg);
  return FALSE;
}

gboolean ferry_layer_store_put(FerryLayerStore *s, const char *digest, guint64 offset,
                               const guint8 *data, gsize len, gboolean last, GError **error)
{
  const char *hex = ferry_layer_digest_hex(digest);
  if (hex == NULL)
    return refuse(s, NULL, error, FERRY_ERROR_INVALID_ARGUMENT,
                  "\"%.80s\" is not a sha256 digest of 64 lowercase hex digits",
                  digest != NULL ? digest : "");
  g_autofree char *final = image_path(s, hex);
  if (g_file_test(final, G_FILE_TEST_EXISTS))
    return refuse(s, hex, error, FERRY_ERROR_ALREADY_EXISTS, "%s is here already", digest);
  Upload *u = g_hash_table_lookup(s->uploads, hex);
  if (offset == 0 && u != NULL) {
    g_hash_table_remove(s->uploads, hex); /* a new start */
    u = NULL;
  }
  if (u == NULL) {
    if (offset != 0)
      return refuse(s, hex, error, FERRY_ERROR_INVALID_ARGUMENT,
                    "%s: a chunk at %" G_GUINT64_FORMAT " before its start", digest, offset);
    if (g_hash_table_size(s->uploads) >= FERRY_LAYER_STORE_MAX_UPLOADS)
      return refuse(s, NULL, error, FERRY_ERROR_RESOURCE_EXHAUSTED,
                    "%u images are being sent already", FERRY_LAYER_STORE_MAX_UPLOADS);
    u = g_new0(Upload, 1);
    u->hex = g_strdup(hex);
    u->part = g_strconcat(final, ".part", NULL);
    u->sum = g_checksum_new(G_CHECKSUM_SHA256);
    u->fd = open(u->part, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (u->fd < 0) {
      g_propagate_error(error, errno_error(errno, "create", u->part));
      upload_free(u);
      return FALSE;
    }
    g_hash_table_insert(s->uploads, u->hex, u);
  }
  if (offset != u->received)
    return refuse(s, hex, error, FERRY_ERROR_INVALID_ARGUMENT,
                  "%s: a chunk at %" G_GUINT64_FORMAT ", %" G_GUINT64_FORMAT " bytes came so far",
                  digest, offset, u->received);
  if (len > s->max_bytes || u->received > s->max_bytes - len)
    return refuse(s, hex, error, FERRY_ERROR_RESOURCE_EXHAUSTED,
                  "%s: more than %" G_GUINT64_FORMAT " bytes", digest, s->max_bytes);
  for (gsize done = 0; done < len;) {
    ssize_t n = write(u->fd, data + done, len - done);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0) {
      GError *e = errno_error(n < 0 ? errno : EIO, "write", u->part);
      g_hash_table_remove(s->uploads, hex);
      g_propagate_error(error, e);
      return FALSE;
    }
    done += (gsize)n;
  }
  g_checksum_update(u->sum, data, (gssize)len);
  u->received += len;
  if (!last)
    return TRUE;
  const char *got = g_checksum_get_string(u->sum);
  if (strcmp(got, hex) != 0)
    return refuse(s, hex, error, FERRY_ERROR_DATA_LOSS, "the bytes sent as %s are sha256:%s",
                  digest, got);
  if (fsync(u->fd) < 0 || close(u->fd) < 0) {
    u->fd = -1;
    GError *e = errno_error(errno, "write", u->part);
    g_hash_table_remove(s->uploads, hex);
    g_propagate_error(error, e);
    return FALSE;
  }
  u->fd = -1;
  if (rename(u->part, final) < 0) {
    GError *e = errno_error(errno, "rename", u->part);
    g_hash_table_remove(s->uploads, hex);
    g_propagate_error(error, e);
    return FALSE;
  }
  g_hash_table_remove(s->uploads, hex); /* its .part is gone already */
  return TRUE;
}
