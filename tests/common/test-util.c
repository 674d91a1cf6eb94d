#include "test-util.h"

#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <string.h>
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
  static const char *const applets[] = { "sh",       "echo", "cat",      "sleep", "stty",
                                         "cut",      "id",   "ls",       "tr",    "true",
                                         "pwd",      "env",  "grep",     "sed",   "sort",
                                         "readlink", "test", "hostname", NULL };
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

/* The smallest kernel QEMU's x86 loader takes: an ELF64 with a PT_LOAD of `hlt; jmp`
 * at 1 MiB and a PT_NOTE holding the Xen PVH entry (XEN_ELFNOTE_PHYS32_ENTRY = 18), the
 * same entry path as Debian's uncompressed vmlinux: it only has to load (and halt). */
void test_write_pvh_kernel(const char *path)
{
  enum { EH = 64, PH = 56, CODE = EH + 2 * PH, NOTE = CODE + 16, TOTAL = NOTE + 24 };
  const guint64 base = 0x100000;
  guint8 f[TOTAL] = { 0 };
#define LE(off, value, size)                                                                       \
  do {                                                                                             \
    guint64 v_ = (value);                                                                          \
    for (int b_ = 0; b_ < (size); b_++)                                                            \
      f[(off) + b_] = (guint8)(v_ >> (8 * b_));                                                    \
  } while (0)
  memcpy(f,
         "\x7f"
         "ELF\x02\x01\x01",
         7);     /* 64-bit, little-endian, version 1 */
  LE(16, 2, 2);  /* ET_EXEC */
  LE(18, 62, 2); /* EM_X86_64 */
  LE(20, 1, 4);
  LE(24, base + CODE, 8); /* e_entry */
  LE(32, EH, 8);          /* e_phoff */
  LE(52, EH, 2);          /* e_ehsize */
  LE(54, PH, 2);          /* e_phentsize */
  LE(56, 2, 2);           /* e_phnum */
  LE(58, 64, 2);          /* e_shentsize */
  /* PT_LOAD, R+X, the whole file at 1 MiB */
  LE(EH + 0, 1, 4);
  LE(EH + 4, 5, 4);
  LE(EH + 16, base, 8);
  LE(EH + 24, base, 8);
  LE(EH + 32, TOTAL, 8);
  LE(EH + 40, TOTAL, 8);
  LE(EH + 48, 0x1000, 8);
  /* PT_NOTE */
  LE(EH + PH + 0, 4, 4);
  LE(EH + PH + 4, 4, 4);
  LE(EH + PH + 8, NOTE, 8);
  LE(EH + PH + 16, base + NOTE, 8);
  LE(EH + PH + 24, base + NOTE, 8);
  LE(EH + PH + 32, 24, 8);
  LE(EH + PH + 40, 24, 8);
  LE(EH + PH + 48, 4, 8);
  f[CODE] = 0xf4; /* hlt */
  f[CODE + 1] = 0xeb;
  f[CODE + 2] = 0xfd; /* jmp hlt */
  LE(NOTE + 0, 4, 4); /* namesz */
  LE(NOTE + 4, 8, 4); /* descsz */
  LE(NOTE + 8, 18, 4);
  memcpy(f + NOTE + 12, "Xen", 4);
  LE(NOTE + 16, base + CODE, 8);
#undef LE
  g_autoptr(GError) error = NULL;
  g_assert_true(g_file_set_contents(path, (const char *)f, TOTAL, &error));
}
