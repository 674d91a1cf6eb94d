/* Host facts: the accelerator, the TSC and what the QEMU binary is (ferry/vm-builder.h). */
#include "builder-private.h"

/* ------------------------------------------------------------------------------------ */
/* Host facts                                                                            */

const char *ferry_vm_accel_name(FerryVmAccel accel)
{
  switch (accel) {
  case FERRY_VM_ACCEL_KVM:
    return "kvm";
  case FERRY_VM_ACCEL_TCG:
    return "tcg";
  case FERRY_VM_ACCEL_AUTO:
    break;
  }
  return "auto";
}

/* The value of the first line of `text` whose name (before ':') is `name`. */
static char *cpuinfo_field(const char *text, const char *name)
{
  g_auto(GStrv) lines = g_strsplit(text, "\n", -1);
  for (char **l = lines; *l != NULL; l++) {
    char *colon = strchr(*l, ':');
    if (colon == NULL)
      continue;
    g_autofree char *key = g_strndup(*l, (gsize)(colon - *l));
    if (g_str_equal(g_strstrip(key), name))
      return g_strstrip(g_strdup(colon + 1));
  }
  return NULL;
}

static gboolean has_virt_flag(const char *cpuinfo_path)
{
  g_autofree char *text = NULL;
  if (!g_file_get_contents(cpuinfo_path, &text, NULL, NULL))
    return FALSE;
  g_autofree char *flags = cpuinfo_field(text, "flags");
  if (flags == NULL)
    return FALSE;
  g_auto(GStrv) words = g_strsplit_set(flags, " \t", -1);
  for (char **w = words; *w != NULL; w++)
    if (g_str_equal(*w, "vmx") || g_str_equal(*w, "svm"))
      return TRUE;
  return FALSE;
}

static gboolean can_open_rw(const char *path)
{
  int fd = open(path, O_RDWR | O_CLOEXEC);
  if (fd < 0)
    return FALSE;
  close(fd);
  return TRUE;
}

gboolean ferry_vm_accel_parse(const char *name, FerryVmAccel *accel, GError **error)
{
  if (name == NULL || name[0] == '\0' || g_str_equal(name, "auto"))
    *accel = FERRY_VM_ACCEL_AUTO;
  else if (g_str_equal(name, "kvm"))
    *accel = FERRY_VM_ACCEL_KVM;
  else if (g_str_equal(name, "tcg"))
    *accel = FERRY_VM_ACCEL_TCG;
  else {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                "accelerator %s: expected kvm, tcg or auto", name);
    return FALSE;
  }
  return TRUE;
}

FerryVmAccel ferry_vm_detect_accel(const char *cpuinfo_path, const char *kvm_path, GError **error)
{
  if (has_virt_flag(cpuinfo_path != NULL ? cpuinfo_path : "/proc/cpuinfo") &&
      can_open_rw(kvm_path != NULL ? kvm_path : "/dev/kvm"))
    return FERRY_VM_ACCEL_KVM;
  return FERRY_VM_ACCEL_TCG;
}

guint64 ferry_vm_host_tsc_khz(const char *cpuinfo_path)
{
  g_autofree char *text = NULL;
  if (!g_file_get_contents(cpuinfo_path != NULL ? cpuinfo_path : "/proc/cpuinfo", &text, NULL,
                           NULL))
    return 0;
  g_autofree char *mhz = cpuinfo_field(text, "cpu MHz");
  if (mhz == NULL)
    return 0;
  /* "2596.150": integer arithmetic, so that no float rounding changes the value. */
  guint64 khz = 0;
  const char *p = mhz;
  int digits = 0;
  for (; g_ascii_isdigit(*p); p++) {
    if (++digits > 7)
      return 0;
    khz = khz * 10 + (guint64)(*p - '0');
  }
  if (digits == 0)
    return 0;
  khz *= 1000;
  if (*p == '.') {
    p++;
    guint64 scale = 100;
    for (; g_ascii_isdigit(*p); p++) {
      khz += (guint64)(*p - '0') * scale;
      scale /= 10;
    }
  }
  if (*p != '\0')
    return 0;
  return khz;
}

/* ------------------------------------------------------------------------------------ */
/* The QEMU binary                                                                       */

char *ferry_vm_parse_qemu_version(const char *version_text)
{
  /* "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)" */
  const char *v = version_text != NULL ? strstr(version_text, "version ") : NULL;
  if (v == NULL)
    return NULL;
  v += strlen("version ");
  gsize n = strspn(v, "0123456789.");
  return n > 0 ? g_strndup(v, n) : NULL;
}

char *ferry_vm_parse_machine_type(const char *machine_help, const char *machine)
{
  /* "q35                  Standard PC (Q35 + ICH9, 2009) (alias of pc-q35-7.2)" */
  if (machine_help == NULL || machine == NULL || machine[0] == '\0')
    return NULL;
  g_auto(GStrv) lines = g_strsplit(machine_help, "\n", -1);
  gsize len = strlen(machine);
  for (char **l = lines; *l != NULL; l++) {
    if (strncmp(*l, machine, len) != 0 || ((*l)[len] != ' ' && (*l)[len] != '\0'))
      continue;
    const char *alias = strstr(*l, "(alias of ");
    if (alias == NULL)
      return g_strdup(machine);
    alias += strlen("(alias of ");
    const char *end = strchr(alias, ')');
    return end != NULL && end > alias ? g_strndup(alias, (gsize)(end - alias)) : NULL;
  }
  return NULL;
}

static char *run_qemu(const char *qemu, const char *arg1, const char *arg2, GError **error)
{
  const char *argv[] = { qemu, arg1, arg2, NULL };
  g_autofree char *out = NULL, *err = NULL;
  int status = 0;
  if (!g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_SEARCH_PATH | G_SPAWN_STDIN_FROM_DEV_NULL,
                    NULL, NULL, &out, &err, &status, error))
    return NULL;
  if (!g_spawn_check_wait_status(status, error)) {
    g_prefix_error(error, "%s %s: %s: ", qemu, arg1, err != NULL ? g_strstrip(err) : "");
    return NULL;
  }
  return g_steal_pointer(&out);
}

gboolean ferry_vm_probe_qemu(const char *qemu_binary, const char *machine, char **version,
                             char **machine_type, GError **error)
{
  const char *qemu = qemu_binary != NULL ? qemu_binary : "qemu-system-x86_64";
  g_autofree char *v_text = run_qemu(qemu, "--version", NULL, error);
  if (v_text == NULL)
    return FALSE;
  g_autofree char *v = ferry_vm_parse_qemu_version(v_text);
  if (v == NULL) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INTERNAL, "%s --version printed no version: %s",
                qemu, v_text);
    return FALSE;
  }
  g_autofree char *m_text = run_qemu(qemu, "-machine", "help", error);
  if (m_text == NULL)
    return FALSE;
  g_autofree char *m = ferry_vm_parse_machine_type(m_text, machine);
  if (m == NULL) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION, "%s has no machine type %s",
                qemu, machine);
    return FALSE;
  }
  *version = g_steal_pointer(&v);
  *machine_type = g_steal_pointer(&m);
  return TRUE;
}
