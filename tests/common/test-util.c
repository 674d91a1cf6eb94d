#include "test-util.h"

#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ferry/error.h"
#include "ferry/source.h"

GByteArray *test_hex(const char *hex)
{
  GByteArray *out = g_byte_array_new();
  int nibble = -1;
  for (const char *p = hex; *p; p++) {
    if (*p == ' ' || *p == '|')
      continue;
    int v = g_ascii_xdigit_value(*p);
    if (v < 0)
      g_error("bad hex digit '%c' in %s", *p, hex);
    if (nibble < 0) {
      nibble = v;
    } else {
      guint8 b = (guint8)(nibble << 4 | v);
      g_byte_array_append(out, &b, 1);
      nibble = -1;
    }
  }
  if (nibble >= 0)
    g_error("odd number of hex digits in %s", hex);
  return out;
}

char *test_to_hex(const guint8 *data, gsize len)
{
  GString *s = g_string_sized_new(len * 2 + 1);
  for (gsize i = 0; i < len; i++)
    g_string_append_printf(s, "%02x", data[i]);
  return g_string_free(s, FALSE);
}

static gboolean on_timeout(gpointer p)
{
  *(gboolean *)p = TRUE;
  return G_SOURCE_REMOVE;
}

gboolean test_run_until(const gboolean *flag, guint timeout_ms)
{
  gboolean expired = FALSE;
  g_autoptr(GMainContext) ctx = g_main_context_ref_thread_default();
  GSource *timer = ferry_timeout_new(ctx, timeout_ms, on_timeout, &expired);
  while (!*flag && !expired)
    g_main_context_iteration(ctx, TRUE);
  ferry_source_clear(&timer);
  return *flag;
}

char *test_make_tmpdir(void)
{
  g_autoptr(GError) error = NULL;
  char *dir = g_dir_make_tmp("ferry-test-XXXXXX", &error);
  g_assert_no_error(error);
  return dir;
}

static int remove_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
  return remove(path);
}

void test_rm_rf(const char *path)
{
  if (path != NULL)
    nftw(path, remove_one, 16, FTW_DEPTH | FTW_PHYS);
}

gboolean test_build_busybox_rootfs(const char *dir, GError **error)
{
  static const char *const applets[] = { "sh", "echo", "cat",  "sleep", "stty", "cut",      "id",
                                         "ls", "tr",   "true", "pwd",   "env",  "hostname", NULL };
  static const char *const dirs[] = { "bin", "proc", "dev", "sys", "tmp", NULL };
  for (const char *const *d = dirs; *d != NULL; d++) {
    g_autofree char *path = g_build_filename(dir, *d, NULL);
    if (g_mkdir_with_parents(path, 0755) < 0)
      return ferry_error_set_errno(error, errno, "mkdir %s", path);
  }
  g_autofree char *contents = NULL;
  gsize len;
  if (!g_file_get_contents("/bin/busybox", &contents, &len, error))
    return FALSE;
  g_autofree char *busybox = g_build_filename(dir, "bin", "busybox", NULL);
  if (!g_file_set_contents(busybox, contents, (gssize)len, error))
    return FALSE;
  if (chmod(busybox, 0755) < 0)
    return ferry_error_set_errno(error, errno, "chmod %s", busybox);
  for (const char *const *a = applets; *a != NULL; a++) {
    g_autofree char *link = g_build_filename(dir, "bin", *a, NULL);
    if (symlink("busybox", link) < 0 && errno != EEXIST)
      return ferry_error_set_errno(error, errno, "symlink %s", link);
  }
  return TRUE;
}

json_t *test_busybox_oci_spec(void)
{
  return json_pack("{s:s, s:{s:b, s:{s:i, s:i}, s:[s], s:[s], s:s, s:b},"
                   " s:{s:s, s:b}, s:s,"
                   " s:[{s:s, s:s, s:s},"
                   "    {s:s, s:s, s:s, s:[s, s, s]},"
                   "    {s:s, s:s, s:s, s:[s, s, s, s, s]},"
                   "    {s:s, s:s, s:s, s:[s, s, s]},"
                   "    {s:s, s:s, s:s, s:[s, s, s, s]}],"
                   " s:{s:[{s:s}, {s:s}, {s:s}, {s:s}, {s:s}]}}",
                   "ociVersion", "1.0.2", "process", "terminal", 0, "user", "uid", 0, "gid", 0,
                   "args", "sh", "env", "PATH=/bin", "cwd", "/", "noNewPrivileges", 1, "root",
                   "path", "rootfs", "readonly", 1, "hostname", "ferry-test", "mounts",
                   "destination", "/proc", "type", "proc", "source", "proc", "destination", "/dev",
                   "type", "tmpfs", "source", "tmpfs", "options", "nosuid", "mode=755",
                   "size=65536k", "destination", "/dev/pts", "type", "devpts", "source", "devpts",
                   "options", "nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620",
                   "destination", "/dev/shm", "type", "tmpfs", "source", "shm", "options", "nosuid",
                   "noexec", "nodev", "destination", "/sys", "type", "sysfs", "source", "sysfs",
                   "options", "nosuid", "noexec", "nodev", "ro", "linux", "namespaces", "type",
                   "pid", "type", "ipc", "type", "uts", "type", "mount", "type", "network");
}
