/*
 * Fuzz target: containerd's rootfs mounts to layer directories (lib/rootfs/mounts.c),
 * the shim's reading of CreateTaskRequest.rootfs. The input is text: a line
 * "mount <type> <source>" starts a mount ("-" for no source, "mount" alone for no
 * type either), every other line is an option of the current mount.
 *
 * Checked besides memory safety: a refusal is INVALID_ARGUMENT with a message; an
 * accepted answer has n_layers paths, each absolute, at most FERRY_ROOTFS_MAX_LAYERS,
 * a NULL-terminated list, and a workdir only with an upperdir.
 */
#include <stdint.h>
#include <string.h>

#include "ferry/error.h"
#include "ferry/rootfs.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct {
  char *type;
  char *source;
  GPtrArray *options;
} Parsed;

static void check(const FerryRootfsMount *mounts, gsize n)
{
  GError *error = NULL;
  FerryRootfsLayers *l = ferry_rootfs_layers_from_mounts(mounts, n, &error);
  if (l == NULL) {
    if (!g_error_matches(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT) ||
        error->message[0] == '\0')
      __builtin_trap();
    g_error_free(error);
    return;
  }
  if (error != NULL || l->layers == NULL || l->n_layers > FERRY_ROOTFS_MAX_LAYERS)
    __builtin_trap();
  for (guint i = 0; i < l->n_layers; i++) {
    if (l->layers[i] == NULL || l->layers[i][0] != '/')
      __builtin_trap();
  }
  if (l->layers[l->n_layers] != NULL)
    __builtin_trap();
  if (l->work != NULL && (l->upper == NULL || l->work[0] != '/'))
    __builtin_trap();
  if (l->upper != NULL && l->upper[0] != '/')
    __builtin_trap();
  ferry_rootfs_layers_free(l);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  g_autofree char *text = g_strndup((const char *)data, size);
  g_auto(GStrv) lines = g_strsplit(text, "\n", -1);
  g_autoptr(GArray) parsed = g_array_new(FALSE, TRUE, sizeof(Parsed));
  for (char **line = lines; *line != NULL && parsed->len < 8; line++) {
    if (g_str_has_prefix(*line, "mount")) {
      g_auto(GStrv) words = g_strsplit(*line, " ", 3);
      Parsed p = { 0 };
      p.type = words[1] != NULL ? g_strdup(words[1]) : NULL;
      p.source = words[1] != NULL && words[2] != NULL && strcmp(words[2], "-") != 0
                     ? g_strdup(words[2])
                     : NULL;
      p.options = g_ptr_array_new_with_free_func(g_free);
      g_array_append_val(parsed, p);
    } else if (parsed->len > 0) {
      g_ptr_array_add(g_array_index(parsed, Parsed, parsed->len - 1).options, g_strdup(*line));
    }
  }
  g_autofree FerryRootfsMount *mounts = g_new0(FerryRootfsMount, parsed->len + 1);
  for (guint i = 0; i < parsed->len; i++) {
    Parsed *p = &g_array_index(parsed, Parsed, i);
    mounts[i] = (FerryRootfsMount){ p->type, p->source, (const char *const *)p->options->pdata,
                                    p->options->len };
  }
  check(mounts, parsed->len);
  for (guint i = 0; i < parsed->len; i++) {
    Parsed *p = &g_array_index(parsed, Parsed, i);
    g_free(p->type);
    g_free(p->source);
    g_ptr_array_unref(p->options);
  }
  return 0;
}
