/* Host facts: the accelerator and the TSC (ferry/vm-builder.h). */
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
