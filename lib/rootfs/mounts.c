/* containerd's rootfs mounts -> layer directories: a pure parser (docs/rootfs.md). */
#include <string.h>

#include "ferry/error.h"
#include "ferry/rootfs.h"

static gboolean invalid(GError **error, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

static gboolean invalid(GError **error, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  g_autofree char *msg = g_strdup_vprintf(fmt, ap);
  va_end(ap);
  g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "rootfs mounts: %s", msg);
  return FALSE;
}

void ferry_rootfs_layers_free(FerryRootfsLayers *layers)
{
  if (layers == NULL)
    return;
  g_strfreev(layers->layers);
  g_free(layers->upper);
  g_free(layers->work);
  g_free(layers);
}

static gboolean check_path(const char *what, const char *path, GError **error)
{
  if (path[0] == '\0')
    return invalid(error, "%s is empty", what);
  if (path[0] != '/')
    return invalid(error, "%s \"%s\" is not an absolute path", what, path);
  return TRUE;
}

/* overlayfs's escaping (fs/overlayfs/params.c): a backslash takes the next character
 * literally, so "\:" is a ':' inside a path rather than a separator. Splits `value` at
 * the unescaped separators into unescaped elements; `sep` '\0' means no splitting. */
static GPtrArray *split_unescape(const char *what, const char *value, char sep, GError **error)
{
  g_autoptr(GPtrArray) out = g_ptr_array_new_with_free_func(g_free);
  g_autoptr(GString) cur = g_string_new(NULL);
  for (const char *p = value;; p++) {
    if (*p == '\\') {
      if (p[1] == '\0') {
        invalid(error, "%s \"%s\" ends in a lone backslash", what, value);
        return NULL;
      }
      g_string_append_c(cur, *++p);
      continue;
    }
    if (*p == '\0' || (sep != '\0' && *p == sep)) {
      if (cur->len == 0) {
        invalid(error, "%s \"%s\" has an empty path%s", what, value,
                sep != '\0' ? " (data-only layers, \"::\", are not supported)" : "");
        return NULL;
      }
      if (out->len >= FERRY_ROOTFS_MAX_LAYERS) {
        invalid(error, "%s has more than %d layers", what, FERRY_ROOTFS_MAX_LAYERS);
        return NULL;
      }
      g_ptr_array_add(out, g_string_free(g_steal_pointer(&cur), FALSE));
      cur = g_string_new(NULL);
      if (*p == '\0')
        break;
      continue;
    }
    g_string_append_c(cur, *p);
  }
  for (guint i = 0; i < out->len; i++) {
    if (!check_path(what, out->pdata[i], error))
      return NULL;
  }
  return g_steal_pointer(&out);
}

/* The single path of option `what` (escapes undone), or NULL with the error. */
static char *one_path(const char *what, const char *value, GError **error)
{
  g_autoptr(GPtrArray) parts = split_unescape(what, value, '\0', error);
  if (parts == NULL)
    return NULL;
  return g_strdup(parts->pdata[0]);
}

/* Store option `key`'s value in *slot, refusing a second occurrence. */
static gboolean take_once(const char *key, const char *value, const char **slot, GError **error)
{
  if (*slot != NULL)
    return invalid(error, "overlay option %s= is given twice", key);
  *slot = value;
  return TRUE;
}

static FerryRootfsLayers *from_overlay(const FerryRootfsMount *m, GError **error)
{
  const char *lower = NULL, *upper = NULL, *work = NULL;
  gboolean userxattr = FALSE;
  for (gsize i = 0; i < m->n_options; i++) {
    const char *opt = m->options[i];
    if (opt == NULL || opt[0] == '\0') {
      invalid(error, "overlay option %zu is empty", i);
      return NULL;
    }
    const char *eq = strchr(opt, '=');
    gsize klen = eq != NULL ? (gsize)(eq - opt) : strlen(opt);
    const char *val = eq != NULL ? eq + 1 : NULL;
    gboolean ok = TRUE;
    if (klen == 8 && strncmp(opt, "lowerdir", klen) == 0 && val != NULL)
      ok = take_once("lowerdir", val, &lower, error);
    else if (klen == 8 && strncmp(opt, "upperdir", klen) == 0 && val != NULL)
      ok = take_once("upperdir", val, &upper, error);
    else if (klen == 7 && strncmp(opt, "workdir", klen) == 0 && val != NULL)
      ok = take_once("workdir", val, &work, error);
    else if (strcmp(opt, "lowerdir") == 0 || strcmp(opt, "upperdir") == 0 ||
             strcmp(opt, "workdir") == 0)
      ok = invalid(error, "overlay option %s has no value", opt);
    else if (strcmp(opt, "userxattr") == 0)
      userxattr = TRUE;
    else if (strcmp(opt, "metacopy=on") == 0)
      /* A metacopy upper holds inodes whose data lives in a lower layer: it is not a
       * tree that can be imaged on its own. */
      ok = invalid(error, "overlay option metacopy=on is not supported");
    if (!ok)
      return NULL;
  }
  if (lower == NULL) {
    invalid(error, "overlay mount has no lowerdir= option");
    return NULL;
  }
  if ((upper == NULL) != (work == NULL)) {
    invalid(error, "overlay mount has %s= without %s=", upper != NULL ? "upperdir" : "workdir",
            upper != NULL ? "workdir" : "upperdir");
    return NULL;
  }
  g_autoptr(GPtrArray) layers = split_unescape("lowerdir", lower, ':', error);
  if (layers == NULL)
    return NULL;
  g_autoptr(FerryRootfsLayers) out = g_new0(FerryRootfsLayers, 1);
  if (upper != NULL) {
    out->upper = one_path("upperdir", upper, error);
    if (out->upper == NULL)
      return NULL;
    out->work = one_path("workdir", work, error);
    if (out->work == NULL)
      return NULL;
  }
  out->n_layers = layers->len;
  g_ptr_array_add(layers, NULL);
  out->layers = (char **)g_ptr_array_steal(layers, NULL);
  out->userxattr = userxattr;
  return g_steal_pointer(&out);
}

static FerryRootfsLayers *from_bind(const FerryRootfsMount *m, GError **error)
{
  gboolean bind = FALSE, ro = FALSE;
  for (gsize i = 0; i < m->n_options; i++) {
    const char *opt = m->options[i];
    if (opt == NULL || opt[0] == '\0') {
      invalid(error, "bind option %zu is empty", i);
      return NULL;
    }
    if (strcmp(opt, "bind") == 0 || strcmp(opt, "rbind") == 0)
      bind = TRUE;
    else if (strcmp(opt, "ro") == 0)
      ro = TRUE; /* mount(8): the last of ro/rw wins */
    else if (strcmp(opt, "rw") == 0)
      ro = FALSE;
  }
  if (!bind) {
    invalid(error, "bind mount without a bind or rbind option");
    return NULL;
  }
  if (m->source == NULL) {
    invalid(error, "bind mount has no source");
    return NULL;
  }
  if (!check_path("bind source", m->source, error))
    return NULL;
  g_autoptr(FerryRootfsLayers) out = g_new0(FerryRootfsLayers, 1);
  if (ro) {
    out->layers = g_new0(char *, 2);
    out->layers[0] = g_strdup(m->source);
    out->n_layers = 1;
  } else {
    /* containerd's overlay snapshotter binds a writable snapshot without parents
     * directly: that directory is the upper, over no read-only layer. */
    out->layers = g_new0(char *, 1);
    out->upper = g_strdup(m->source);
  }
  return g_steal_pointer(&out);
}

FerryRootfsLayers *ferry_rootfs_layers_from_mounts(const FerryRootfsMount *mounts, gsize n_mounts,
                                                   GError **error)
{
  if (n_mounts == 0 || mounts == NULL) {
    invalid(error, "no mounts (a bundle without rootfs mounts uses its root.path)");
    return NULL;
  }
  if (n_mounts > 1) {
    invalid(error, "%zu mounts; only a single overlay or bind mount is supported", n_mounts);
    return NULL;
  }
  const FerryRootfsMount *m = &mounts[0];
  if (m->n_options > 0 && m->options == NULL) {
    invalid(error, "mount claims %zu options but has none", m->n_options);
    return NULL;
  }
  if (m->type == NULL || m->type[0] == '\0') {
    invalid(error, "mount has no type");
    return NULL;
  }
  if (strcmp(m->type, "overlay") == 0)
    return from_overlay(m, error);
  if (strcmp(m->type, "bind") == 0)
    return from_bind(m, error);
  invalid(error, "mount type \"%s\" is not supported (overlay or bind)", m->type);
  return NULL;
}

FerryRootfsLayers *ferry_rootfs_layers_from_directory(const char *dir, GError **error)
{
  if (dir == NULL) {
    invalid(error, "root directory is missing");
    return NULL;
  }
  if (!check_path("root directory", dir, error))
    return NULL;
  FerryRootfsLayers *out = g_new0(FerryRootfsLayers, 1);
  out->layers = g_new0(char *, 2);
  out->layers[0] = g_strdup(dir);
  out->n_layers = 1;
  return out;
}
