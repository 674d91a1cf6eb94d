/*
 * Corpus replay: runs a fuzz target's LLVMFuzzerTestOneInput over every file in each
 * corpus directory given, so the corpus is exercised by every ordinary test run (and
 * under ASan in CI). TAP, one case per directory; a crash fails the test by itself.
 */
#include <glib.h>
#include <stdint.h>
#include <stdio.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Replay one directory; returns the number of inputs, or -1 with *why set. */
static int replay_dir(const char *path, char **why)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(GDir) dir = g_dir_open(path, 0, &error);
  if (dir == NULL) {
    *why = g_strdup(error->message);
    return -1;
  }
  g_autoptr(GPtrArray) files = g_ptr_array_new_with_free_func(g_free);
  const char *name;
  while ((name = g_dir_read_name(dir)) != NULL)
    g_ptr_array_add(files, g_build_filename(path, name, NULL));
  g_ptr_array_sort(files, (GCompareFunc)g_strcmp0);
  for (guint i = 0; i < files->len; i++) {
    g_autofree char *contents = NULL;
    gsize len = 0;
    if (!g_file_get_contents(files->pdata[i], &contents, &len, &error)) {
      *why = g_strdup(error->message);
      return -1;
    }
    LLVMFuzzerTestOneInput((const uint8_t *)contents, len);
  }
  if (files->len == 0) {
    *why = g_strdup("empty corpus");
    return -1;
  }
  return (int)files->len;
}

int main(int argc, char **argv)
{
  printf("1..%d\n", argc - 1);
  int failed = 0;
  for (int i = 1; i < argc; i++) {
    g_autofree char *why = NULL;
    int n = replay_dir(argv[i], &why);
    if (n < 0) {
      printf("not ok %d - %s # %s\n", i, argv[i], why);
      failed++;
    } else {
      printf("ok %d - %s: %d inputs\n", i, argv[i], n);
    }
  }
  return failed ? 1 : 0;
}
