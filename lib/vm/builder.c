/* The VM document (HCS ComputeSystem schema + a Ferry section), its validation, and its
 * rendering to a QEMU command line. Schema and rules: docs/vm-builder.md. */
#include "ferry/vm-builder.h"

#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ferry/error.h"
#include "ferry/json.h"

struct _FerryVmDoc {
  json_t *root;
};

#define VALID_NAME_CHARS "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-"
/* Longest file path accepted (PATH_MAX with the NUL). */
#define MAX_PATH 4095u
#define MAX_OWNER 255u
/* HCS limits: Processor.Limit and Reservation in 1/1000 %, Weight a relative share. */
#define MAX_PROCESSOR_LIMIT 100000u
#define MAX_PROCESSOR_WEIGHT 10000u

/* ------------------------------------------------------------------------------------ */
/* Navigation                                                                            */

/* The object member `key` of `parent`, created (or replacing a non-object) if need be. */
static json_t *ensure_object(json_t *parent, const char *key)
{
  json_t *v = json_object_get(parent, key);
  if (!json_is_object(v)) {
    v = json_object();
    json_object_set_new(parent, key, v);
  }
  return v;
}

static json_t *ensure_array(json_t *parent, const char *key)
{
  json_t *v = json_object_get(parent, key);
  if (!json_is_array(v)) {
    v = json_array();
    json_object_set_new(parent, key, v);
  }
  return v;
}

/* Walk object members; NULL when one is absent or not an object (except the last,
 * which is returned whatever its type). */
G_GNUC_NULL_TERMINATED static json_t *lookup(json_t *root, ...)
{
  va_list ap;
  va_start(ap, root);
  json_t *v = root;
  const char *key;
  while ((key = va_arg(ap, const char *)) != NULL) {
    if (!json_is_object(v)) {
      v = NULL;
      break;
    }
    v = json_object_get(v, key);
  }
  va_end(ap);
  return v;
}

static json_t *vm_of(const FerryVmDoc *doc)
{
  return ensure_object(doc->root, "VirtualMachine");
}

static json_t *topology_of(const FerryVmDoc *doc)
{
  return ensure_object(vm_of(doc), "ComputeTopology");
}

static json_t *devices_of(const FerryVmDoc *doc)
{
  return ensure_object(vm_of(doc), "Devices");
}

static json_t *ferry_of(const FerryVmDoc *doc)
{
  return ensure_object(vm_of(doc), "Ferry");
}

/* Integer member in [1, max], or `fallback`. */
static guint uint_or(json_t *v, guint max, guint fallback)
{
  if (!json_is_integer(v))
    return fallback;
  json_int_t n = json_integer_value(v);
  return n >= 1 && n <= (json_int_t)max ? (guint)n : fallback;
}

static gint64 int_of(json_t *v)
{
  return json_is_integer(v) ? (gint64)json_integer_value(v) : 0;
}

/* Map keys in a stable order: decimal keys by value first, then the rest by strcmp.
 * Render order is device order, and must not depend on how the document was built. */
static gboolean is_decimal(const char *s)
{
  if (*s == '\0' || strlen(s) > 9)
    return FALSE;
  for (; *s; s++)
    if (!g_ascii_isdigit(*s))
      return FALSE;
  return TRUE;
}

static gint key_order(gconstpointer a, gconstpointer b)
{
  const char *x = *(const char *const *)a, *y = *(const char *const *)b;
  gboolean dx = is_decimal(x), dy = is_decimal(y);
  if (dx && dy) {
    long lx = strtol(x, NULL, 10), ly = strtol(y, NULL, 10);
    if (lx != ly)
      return lx < ly ? -1 : 1;
  } else if (dx != dy) {
    return dx ? -1 : 1;
  }
  return strcmp(x, y);
}

/* The keys of an object, sorted by key_order (borrowed strings). */
static GPtrArray *sorted_keys(json_t *obj)
{
  GPtrArray *keys = g_ptr_array_new();
  const char *key;
  json_t *value;
  json_object_foreach(obj, key, value) g_ptr_array_add(keys, (gpointer)key);
  g_ptr_array_sort(keys, key_order);
  return keys;
}

/* ------------------------------------------------------------------------------------ */
/* Checks shared by validation and the adders                                            */

static gboolean invalid(GError **error, const char *path, const char *fmt, ...) G_GNUC_PRINTF(3, 4);

static gboolean invalid(GError **error, const char *path, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  g_autofree char *what = g_strdup_vprintf(fmt, ap);
  va_end(ap);
  g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "invalid VM document: %s: %s", path,
              what);
  return FALSE;
}

static char *member_path(const char *path, const char *key)
{
  if (path[0] == '\0')
    return g_strdup(key);
  return g_strconcat(path, ".", key, NULL);
}

static char *key_path(const char *path, const char *key)
{
  return g_strdup_printf("%s[\"%s\"]", path, key);
}

static char *index_path(const char *path, gsize i)
{
  return g_strdup_printf("%s[%" G_GSIZE_FORMAT "]", path, i);
}

/* A name for /dev/virtio-ports, a mount tag or an id: [A-Za-z0-9._-], 1..max. NULL when
 * fine, else what is wrong (static). */
static const char *name_problem(const char *name, gsize max)
{
  gsize len = strlen(name);
  if (len == 0)
    return "is empty";
  if (len > max)
    return "is too long";
  if (strspn(name, VALID_NAME_CHARS) != len)
    return "has a character outside [A-Za-z0-9._-]";
  return NULL;
}

static gboolean check_name(const char *path, const char *name, gsize max, GError **error)
{
  const char *problem = name_problem(name, max);
  if (problem != NULL)
    return invalid(error, path,
                   "\"%s\" %s (allowed: [A-Za-z0-9._-], 1..%" G_GSIZE_FORMAT " characters)", name,
                   problem, max);
  return TRUE;
}

static gboolean check_abs_path(const char *path, const char *value, GError **error)
{
  if (value[0] != '/')
    return invalid(error, path, "\"%s\" is not an absolute path", value);
  if (strlen(value) > MAX_PATH)
    return invalid(error, path, "longer than %u bytes", MAX_PATH);
  return TRUE;
}

/* Parse a MAC ("00-15-5D-01-02-03" as HCS writes it, or with ':'). */
static gboolean parse_mac(const char *text, guint8 mac[6])
{
  if (strlen(text) != 17)
    return FALSE;
  char sep = text[2];
  if (sep != ':' && sep != '-')
    return FALSE;
  for (int i = 0; i < 6; i++) {
    const char *p = text + i * 3;
    if (!g_ascii_isxdigit(p[0]) || !g_ascii_isxdigit(p[1]))
      return FALSE;
    if (i < 5 && p[2] != sep)
      return FALSE;
    mac[i] = (guint8)(g_ascii_xdigit_value(p[0]) << 4 | g_ascii_xdigit_value(p[1]));
  }
  return TRUE;
}

static gboolean check_mac(const char *path, const char *text, GError **error)
{
  guint8 mac[6];
  if (!parse_mac(text, mac))
    return invalid(error, path, "\"%s\" is not a MAC address (six hex octets, ':' or '-')", text);
  if (mac[0] & 1)
    return invalid(error, path, "%s is a multicast address", text);
  if ((mac[0] | mac[1] | mac[2] | mac[3] | mac[4] | mac[5]) == 0)
    return invalid(error, path, "%s is all zero", text);
  return TRUE;
}

/* Lower-case, ':'-separated, as QEMU wants it. */
static char *canonical_mac(const char *text)
{
  guint8 m[6];
  if (!parse_mac(text, m))
    return g_strdup(text);
  return g_strdup_printf("%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5]);
}

/* ------------------------------------------------------------------------------------ */
/* Typed members with errors that name the path                                          */

typedef enum { K_OBJECT, K_ARRAY, K_STRING, K_INTEGER, K_BOOLEAN } Kind;

static const char *const kind_names[] = { "an object", "an array", "a string", "an integer",
                                          "a boolean" };

static gboolean is_kind(json_t *v, Kind kind)
{
  switch (kind) {
  case K_OBJECT:
    return json_is_object(v);
  case K_ARRAY:
    return json_is_array(v);
  case K_STRING:
    return json_is_string(v);
  case K_INTEGER:
    return json_is_integer(v);
  case K_BOOLEAN:
    return json_is_boolean(v);
  }
  return FALSE;
}

/* Member `key` of `obj` (at `path`) of `kind`: NULL in *out when absent or JSON null. */
static gboolean get(json_t *obj, const char *path, const char *key, Kind kind, gboolean required,
                    json_t **out, GError **error)
{
  json_t *v = json_object_get(obj, key);
  *out = NULL;
  if (v == NULL || json_is_null(v)) {
    if (required) {
      g_autofree char *p = member_path(path, key);
      return invalid(error, p, "missing");
    }
    return TRUE;
  }
  if (!is_kind(v, kind)) {
    g_autofree char *p = member_path(path, key);
    return invalid(error, p, "must be %s", kind_names[kind]);
  }
  if (kind == K_STRING && strlen(json_string_value(v)) != json_string_length(v)) {
    g_autofree char *p = member_path(path, key);
    return invalid(error, p, "contains a NUL character");
  }
  *out = v;
  return TRUE;
}

static gboolean get_object(json_t *obj, const char *path, const char *key, json_t **out,
                           GError **error)
{
  return get(obj, path, key, K_OBJECT, FALSE, out, error);
}

static gboolean get_string(json_t *obj, const char *path, const char *key, gboolean required,
                           const char **out, GError **error)
{
  json_t *v;
  *out = NULL;
  if (!get(obj, path, key, K_STRING, required, &v, error))
    return FALSE;
  if (v != NULL)
    *out = json_string_value(v);
  return TRUE;
}

static gboolean get_bool(json_t *obj, const char *path, const char *key, GError **error)
{
  json_t *v;
  return get(obj, path, key, K_BOOLEAN, FALSE, &v, error);
}

/* An integer in [min, max]; *out untouched when absent. */
static gboolean get_uint(json_t *obj, const char *path, const char *key, gboolean required,
                         guint64 min, guint64 max, guint64 *out, GError **error)
{
  json_t *v;
  if (!get(obj, path, key, K_INTEGER, required, &v, error))
    return FALSE;
  if (v == NULL)
    return TRUE;
  json_int_t n = json_integer_value(v);
  if (n < 0 || (guint64)n < min || (guint64)n > max) {
    g_autofree char *p = member_path(path, key);
    return invalid(error, p,
                   "%" JSON_INTEGER_FORMAT " is out of range (%" G_GUINT64_FORMAT
                   "..%" G_GUINT64_FORMAT ")",
                   n, min, max);
  }
  if (out != NULL)
    *out = (guint64)n;
  return TRUE;
}

/* A string that must be one of `values` (NULL-terminated). */
static gboolean get_enum(json_t *obj, const char *path, const char *key, const char *const *values,
                         const char **out, GError **error)
{
  const char *s;
  if (out != NULL)
    *out = NULL;
  if (!get_string(obj, path, key, FALSE, &s, error))
    return FALSE;
  if (s == NULL)
    return TRUE;
  for (const char *const *v = values; *v != NULL; v++) {
    if (g_str_equal(*v, s)) {
      if (out != NULL)
        *out = s;
      return TRUE;
    }
  }
  g_autofree char *allowed = g_strjoinv(", ", (char **)values);
  g_autofree char *p = member_path(path, key);
  return invalid(error, p, "\"%s\" is not one of %s", s, allowed);
}

static gboolean get_path(json_t *obj, const char *path, const char *key, gboolean required,
                         const char **out, GError **error)
{
  if (!get_string(obj, path, key, required, out, error))
    return FALSE;
  if (*out == NULL)
    return TRUE;
  g_autofree char *p = member_path(path, key);
  return check_abs_path(p, *out, error);
}

/* ------------------------------------------------------------------------------------ */
/* Validation                                                                            */

static const char *const backing_values[] = { "Physical", "Virtual", "Hybrid", NULL };
static const char *const slit_values[] = { "None", "Firmware", "Measured",
                                           "FirmwareFallbackMeasured", NULL };
static const char *const machine_values[] = { "microvm", "q35", "pc", NULL };
static const char *const disk_type_values[] = { "VirtualDisk", "PassThru", NULL };
static const char *const disk_format_values[] = { "raw", "qcow2", NULL };
static const char *const security_model_values[] = { "none", "mapped", NULL };

#define P_VM "VirtualMachine"
#define P_TOPOLOGY P_VM ".ComputeTopology"
#define P_MEMORY P_TOPOLOGY ".Memory"
#define P_PROCESSOR P_TOPOLOGY ".Processor"
#define P_NUMA P_TOPOLOGY ".Numa"
#define P_DEVICES P_VM ".Devices"
#define P_FERRY P_VM ".Ferry"
#define P_KERNEL P_VM ".Chipset.LinuxKernelDirect"

static gboolean validate_kernel(json_t *chipset, GError **error)
{
  json_t *lkd, *uefi;
  const char *s;
  if (!get_object(chipset, P_VM ".Chipset", "LinuxKernelDirect", &lkd, error) ||
      !get_object(chipset, P_VM ".Chipset", "Uefi", &uefi, error))
    return FALSE;
  if (lkd == NULL)
    return TRUE;
  if (!get_path(lkd, P_KERNEL, "KernelFilePath", FALSE, &s, error) ||
      !get_path(lkd, P_KERNEL, "InitRdPath", FALSE, &s, error) ||
      !get_string(lkd, P_KERNEL, "KernelCmdLine", FALSE, &s, error))
    return FALSE;
  if (s != NULL && strlen(s) > FERRY_VM_MAX_KERNEL_CMDLINE)
    return invalid(error, P_KERNEL ".KernelCmdLine", "longer than %u bytes",
                   FERRY_VM_MAX_KERNEL_CMDLINE);
  return TRUE;
}

static gboolean validate_memory(json_t *memory, GError **error)
{
  static const char *const flags[] = { "AllowOvercommit",      "EnableHotHint",
                                       "EnableColdHint",       "EnableColdDiscardHint",
                                       "EnableDeferredCommit", NULL };
  static const char *const sizes[] = { "LowMmioGapInMB", "HighMmioBaseInMB", "HighMmioGapInMB",
                                       NULL };
  if (!get_uint(memory, P_MEMORY, "SizeInMB", FALSE, 1, FERRY_VM_MAX_MEMORY_MB, NULL, error) ||
      !get_enum(memory, P_MEMORY, "Backing", backing_values, NULL, error) ||
      !get_enum(memory, P_MEMORY, "SlitType", slit_values, NULL, error))
    return FALSE;
  for (const char *const *f = flags; *f != NULL; f++)
    if (!get_bool(memory, P_MEMORY, *f, error))
      return FALSE;
  for (const char *const *f = sizes; *f != NULL; f++)
    if (!get_uint(memory, P_MEMORY, *f, FALSE, 0, G_MAXINT64, NULL, error))
      return FALSE;
  return TRUE;
}

static gboolean validate_processor(json_t *proc, GError **error)
{
  json_t *group, *nps, *per_node;
  const char *id;
  if (!get_uint(proc, P_PROCESSOR, "Count", FALSE, 1, FERRY_VM_MAX_PROCESSOR_COUNT, NULL, error) ||
      !get_uint(proc, P_PROCESSOR, "Limit", FALSE, 0, MAX_PROCESSOR_LIMIT, NULL, error) ||
      !get_uint(proc, P_PROCESSOR, "Weight", FALSE, 0, MAX_PROCESSOR_WEIGHT, NULL, error) ||
      !get_uint(proc, P_PROCESSOR, "Reservation", FALSE, 0, MAX_PROCESSOR_LIMIT, NULL, error) ||
      !get_object(proc, P_PROCESSOR, "CpuGroup", &group, error) ||
      !get_object(proc, P_PROCESSOR, "NumaProcessorsSettings", &nps, error))
    return FALSE;
  if (group != NULL) {
    if (!get_string(group, P_PROCESSOR ".CpuGroup", "Id", TRUE, &id, error))
      return FALSE;
    if (id[0] == '\0')
      return invalid(error, P_PROCESSOR ".CpuGroup.Id", "is empty");
  }
  if (nps != NULL) {
    /* snake_case as in the HCS schema */
    const char *p = P_PROCESSOR ".NumaProcessorsSettings";
    if (!get(nps, p, "count_per_node", K_OBJECT, TRUE, &per_node, error) ||
        !get_uint(per_node, P_PROCESSOR ".NumaProcessorsSettings.count_per_node", "max", TRUE, 1,
                  FERRY_VM_MAX_PROCESSOR_COUNT, NULL, error) ||
        !get_uint(nps, p, "node_per_socket", FALSE, 1, FERRY_VM_MAX_NUMA_NODES, NULL, error))
      return FALSE;
  }
  return TRUE;
}

/* The guest's NUMA nodes as rendered: from Numa.Settings (by VirtualNodeNumber), or
 * VirtualNodeCount nodes sharing processors and memory evenly. */
typedef struct {
  guint node;
  guint cpus;
  guint64 mb;
  gboolean physical; /* prealloc'd */
} NumaNode;

static gint node_order(gconstpointer a, gconstpointer b)
{
  const NumaNode *x = a, *y = b;
  return x->node < y->node ? -1 : x->node > y->node;
}

/* Validates Numa against `count` processors and `mb` of memory; fills `nodes` (may be
 * NULL). Nodes stay empty without Numa. */
static gboolean validate_numa(json_t *numa, guint count, guint64 mb, gboolean physical,
                              GArray *nodes, GError **error)
{
  guint64 node_count = 0, max_per_node = 0;
  json_t *preferred, *settings;
  if (!get_uint(numa, P_NUMA, "VirtualNodeCount", TRUE, 1, FERRY_VM_MAX_NUMA_NODES, &node_count,
                error) ||
      !get_uint(numa, P_NUMA, "MaxSizePerNode", FALSE, 0, G_MAXINT64, &max_per_node, error) ||
      !get(numa, P_NUMA, "PreferredPhysicalNodes", K_ARRAY, FALSE, &preferred, error) ||
      !get(numa, P_NUMA, "Settings", K_ARRAY, FALSE, &settings, error))
    return FALSE;
  if (preferred != NULL) {
    gsize i;
    json_t *v;
    json_array_foreach(preferred, i, v)
    {
      if (!json_is_integer(v) || json_integer_value(v) < 0) {
        g_autofree char *p = index_path(P_NUMA ".PreferredPhysicalNodes", i);
        return invalid(error, p, "must be a node number (an integer >= 0)");
      }
    }
  }
  g_autoptr(GArray) local = g_array_new(FALSE, TRUE, sizeof(NumaNode));
  if (settings != NULL) {
    if (json_array_size(settings) != node_count)
      return invalid(error, P_NUMA ".Settings",
                     "has %zu entries but VirtualNodeCount is %" G_GUINT64_FORMAT,
                     json_array_size(settings), node_count);
    guint64 seen = 0, cpus = 0, mem = 0;
    gsize i;
    json_t *s;
    json_array_foreach(settings, i, s)
    {
      g_autofree char *p = index_path(P_NUMA ".Settings", i);
      guint64 vnode = 0, procs = 0, blocks = 0;
      const char *backing;
      if (!json_is_object(s))
        return invalid(error, p, "must be an object");
      if (!get_uint(s, p, "VirtualNodeNumber", TRUE, 0, node_count - 1, &vnode, error) ||
          !get_uint(s, p, "PhysicalNodeNumber", FALSE, 0, G_MAXUINT32, NULL, error) ||
          !get_uint(s, p, "VirtualSocketNumber", FALSE, 0, G_MAXUINT32, NULL, error) ||
          !get_uint(s, p, "CountOfProcessors", TRUE, 1, FERRY_VM_MAX_PROCESSOR_COUNT, &procs,
                    error) ||
          !get_uint(s, p, "CountOfMemoryBlocks", TRUE, 1, FERRY_VM_MAX_MEMORY_MB, &blocks, error) ||
          !get_enum(s, p, "MemoryBackingType", backing_values, &backing, error))
        return FALSE;
      if (seen & (G_GUINT64_CONSTANT(1) << vnode))
        return invalid(error, p, "VirtualNodeNumber %" G_GUINT64_FORMAT " appears twice", vnode);
      seen |= G_GUINT64_CONSTANT(1) << vnode;
      if (max_per_node != 0 && blocks > max_per_node)
        return invalid(error, p,
                       "%" G_GUINT64_FORMAT " MiB is over MaxSizePerNode %" G_GUINT64_FORMAT,
                       blocks, max_per_node);
      cpus += procs;
      mem += blocks;
      NumaNode n = { (guint)vnode, (guint)procs, blocks,
                     backing != NULL ? g_str_equal(backing, "Physical") : physical };
      g_array_append_val(local, n);
    }
    if (cpus != count)
      return invalid(error, P_NUMA ".Settings",
                     "CountOfProcessors add up to %" G_GUINT64_FORMAT " but Processor.Count is %u",
                     cpus, count);
    if (mem != mb)
      return invalid(error, P_NUMA ".Settings",
                     "CountOfMemoryBlocks add up to %" G_GUINT64_FORMAT
                     " MiB but Memory.SizeInMB is %" G_GUINT64_FORMAT,
                     mem, mb);
    g_array_sort(local, node_order);
  } else {
    if (node_count > count)
      return invalid(error, P_NUMA ".VirtualNodeCount",
                     "%" G_GUINT64_FORMAT " nodes need at least as many processors (Count is %u)",
                     node_count, count);
    for (guint i = 0; i < node_count; i++) {
      /* contiguous shares; the remainders go to the last node */
      NumaNode n = { i, count / (guint)node_count, mb / node_count, physical };
      if (i == node_count - 1) {
        n.cpus += count % (guint)node_count;
        n.mb += mb % node_count;
      }
      if (max_per_node != 0 && n.mb > max_per_node)
        return invalid(error, P_NUMA ".MaxSizePerNode",
                       "%" G_GUINT64_FORMAT " MiB per node is less than an even share of "
                       "%" G_GUINT64_FORMAT " MiB",
                       max_per_node, n.mb);
      g_array_append_val(local, n);
    }
  }
  if (nodes != NULL)
    g_array_append_vals(nodes, local->data, local->len);
  return TRUE;
}

static gboolean validate_scsi(json_t *scsi, guint *virtio_devices, GError **error)
{
  const char *key;
  json_t *controller;
  if (json_object_size(scsi) > FERRY_VM_MAX_SCSI_CONTROLLERS)
    return invalid(error, P_DEVICES ".Scsi", "more than %u controllers",
                   FERRY_VM_MAX_SCSI_CONTROLLERS);
  json_object_foreach(scsi, key, controller)
  {
    g_autofree char *p = key_path(P_DEVICES ".Scsi", key);
    json_t *attachments;
    if (key[0] == '\0')
      return invalid(error, p, "a controller id is empty");
    if (!json_is_object(controller))
      return invalid(error, p, "must be an object");
    if (!get_object(controller, p, "Attachments", &attachments, error))
      return FALSE;
    (*virtio_devices)++;
    if (attachments == NULL)
      continue;
    g_autofree char *ap = member_path(p, "Attachments");
    const char *lun;
    json_t *disk;
    json_object_foreach(attachments, lun, disk)
    {
      g_autofree char *dp = key_path(ap, lun);
      const char *s;
      if (!is_decimal(lun) || (lun[0] == '0' && lun[1] != '\0') ||
          strtol(lun, NULL, 10) > (long)FERRY_VM_MAX_SCSI_LUN)
        return invalid(error, dp, "a LUN must be a number 0..%u without leading zeros",
                       FERRY_VM_MAX_SCSI_LUN);
      if (!json_is_object(disk))
        return invalid(error, dp, "must be an object");
      if (!get_enum(disk, dp, "Type", disk_type_values, NULL, error) ||
          !get_path(disk, dp, "Path", TRUE, &s, error) || !get_bool(disk, dp, "ReadOnly", error) ||
          !get_enum(disk, dp, "Format", disk_format_values, NULL, error))
        return FALSE;
    }
  }
  return TRUE;
}

static gboolean validate_plan9(json_t *plan9, guint *virtio_devices, GError **error)
{
  json_t *shares, *share;
  gsize i;
  if (!get(plan9, P_DEVICES ".Plan9", "Shares", K_ARRAY, FALSE, &shares, error))
    return FALSE;
  if (shares == NULL)
    return TRUE;
  g_autoptr(GHashTable) tags = g_hash_table_new(g_str_hash, g_str_equal);
  json_array_foreach(shares, i, share)
  {
    g_autofree char *p = index_path(P_DEVICES ".Plan9.Shares", i);
    g_autofree char *np = member_path(p, "Name");
    const char *name, *s;
    if (!json_is_object(share))
      return invalid(error, p, "must be an object");
    if (!get_string(share, p, "Name", TRUE, &name, error) ||
        !check_name(np, name, FERRY_VM_MAX_SHARE_TAG, error) ||
        !get_string(share, p, "AccessName", FALSE, &s, error) ||
        !get_path(share, p, "Path", TRUE, &s, error) || !get_bool(share, p, "ReadOnly", error) ||
        !get_uint(share, p, "Flags", FALSE, 0, G_MAXUINT32, NULL, error))
      return FALSE;
    if (!g_hash_table_add(tags, (gpointer)name))
      return invalid(error, np, "share \"%s\" appears twice", name);
    (*virtio_devices)++;
  }
  return TRUE;
}

static gboolean validate_nics(json_t *nics, guint *virtio_devices, GError **error)
{
  g_autoptr(GHashTable) macs = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
  const char *id;
  json_t *nic;
  json_object_foreach(nics, id, nic)
  {
    g_autofree char *p = key_path(P_DEVICES ".NetworkAdapters", id);
    const char *mac, *s;
    if (!check_name(p, id, FERRY_VM_MAX_PORT_NAME, error))
      return FALSE;
    if (!json_is_object(nic))
      return invalid(error, p, "must be an object");
    if (!get_string(nic, p, "MacAddress", FALSE, &mac, error) ||
        !get_string(nic, p, "EndpointId", FALSE, &s, error))
      return FALSE;
    if (mac != NULL) {
      g_autofree char *mp = member_path(p, "MacAddress");
      if (!check_mac(mp, mac, error))
        return FALSE;
      if (!g_hash_table_add(macs, canonical_mac(mac)))
        return invalid(error, mp, "%s is used by another adapter", mac);
    }
    (*virtio_devices)++;
  }
  return TRUE;
}

static gboolean validate_ferry(json_t *ferry, guint *virtio_devices, GError **error)
{
  json_t *ports, *port;
  gsize i;
  if (!get_enum(ferry, P_FERRY, "Machine", machine_values, NULL, error) ||
      !get_enum(ferry, P_FERRY, "Plan9SecurityModel", security_model_values, NULL, error) ||
      !get(ferry, P_FERRY, "MuxPorts", K_ARRAY, FALSE, &ports, error))
    return FALSE;
  if (ports == NULL || json_array_size(ports) == 0)
    return TRUE;
  if (json_array_size(ports) > FERRY_VM_MAX_MUX_PORTS)
    return invalid(error, P_FERRY ".MuxPorts", "more than %u ports", FERRY_VM_MAX_MUX_PORTS);
  g_autoptr(GHashTable) names = g_hash_table_new(g_str_hash, g_str_equal);
  json_array_foreach(ports, i, port)
  {
    g_autofree char *p = index_path(P_FERRY ".MuxPorts", i);
    g_autofree char *np = member_path(p, "Name");
    const char *name;
    if (!json_is_object(port))
      return invalid(error, p, "must be an object");
    if (!get_string(port, p, "Name", TRUE, &name, error) ||
        !check_name(np, name, FERRY_VM_MAX_PORT_NAME, error))
      return FALSE;
    if (!g_hash_table_add(names, (gpointer)name))
      return invalid(error, np, "port \"%s\" appears twice", name);
  }
  (*virtio_devices)++; /* one virtio-serial device carries them all */
  return TRUE;
}

/* The whole document; `nodes` (optional) gets the NUMA layout. */
static gboolean validate(json_t *root, GArray *nodes, GError **error)
{
  json_t *version, *vm, *chipset, *topology, *memory = NULL, *proc = NULL, *numa = NULL;
  json_t *devices, *sub, *qos, *ferry;
  const char *owner, *machine = NULL;
  guint virtio_devices = 1; /* the entropy device every VM gets */

  if (!json_is_object(root))
    return invalid(error, "(document)", "must be a JSON object");
  if (!get_string(root, "", "Owner", TRUE, &owner, error))
    return FALSE;
  if (owner[0] == '\0')
    return invalid(error, "Owner", "is empty");
  if (strlen(owner) > MAX_OWNER)
    return invalid(error, "Owner", "longer than %u bytes", MAX_OWNER);
  for (const char *c = owner; *c; c++)
    if ((guchar)*c < 0x20 || *c == 0x7f)
      return invalid(error, "Owner", "contains a control character");
  if (!get(root, "", "SchemaVersion", K_OBJECT, TRUE, &version, error) ||
      !get_uint(version, "SchemaVersion", "Major", TRUE, 2, 2, NULL, error) ||
      !get_uint(version, "SchemaVersion", "Minor", FALSE, 0, G_MAXUINT16, NULL, error) ||
      !get_bool(root, "", "ShouldTerminateOnLastHandleClosed", error) ||
      !get(root, "", P_VM, K_OBJECT, TRUE, &vm, error))
    return FALSE;

  if (!get_bool(vm, P_VM, "StopOnReset", error) ||
      !get_object(vm, P_VM, "Chipset", &chipset, error) ||
      (chipset != NULL && !validate_kernel(chipset, error)))
    return FALSE;

  if (!get_object(vm, P_VM, "ComputeTopology", &topology, error))
    return FALSE;
  if (topology != NULL && (!get_object(topology, P_TOPOLOGY, "Memory", &memory, error) ||
                           !get_object(topology, P_TOPOLOGY, "Processor", &proc, error) ||
                           !get_object(topology, P_TOPOLOGY, "Numa", &numa, error) ||
                           (memory != NULL && !validate_memory(memory, error)) ||
                           (proc != NULL && !validate_processor(proc, error))))
    return FALSE;

  if (!get_object(vm, P_VM, "Devices", &devices, error))
    return FALSE;
  if (devices != NULL) {
    if (!get_object(devices, P_DEVICES, "Scsi", &sub, error) ||
        (sub != NULL && !validate_scsi(sub, &virtio_devices, error)) ||
        !get_object(devices, P_DEVICES, "Plan9", &sub, error) ||
        (sub != NULL && !validate_plan9(sub, &virtio_devices, error)) ||
        !get_object(devices, P_DEVICES, "NetworkAdapters", &sub, error) ||
        (sub != NULL && !validate_nics(sub, &virtio_devices, error)) ||
        !get_object(devices, P_DEVICES, "ComPorts", &sub, error))
      return FALSE;
  }

  if (!get_object(vm, P_VM, "StorageQoS", &qos, error) ||
      (qos != NULL &&
       (!get_uint(qos, P_VM ".StorageQoS", "IopsMaximum", FALSE, 0, G_MAXINT32, NULL, error) ||
        !get_uint(qos, P_VM ".StorageQoS", "BandwidthMaximum", FALSE, 0, G_MAXINT32, NULL, error))))
    return FALSE;

  if (!get_object(vm, P_VM, "Ferry", &ferry, error) ||
      (ferry != NULL && !validate_ferry(ferry, &virtio_devices, error)))
    return FALSE;
  if (ferry != NULL)
    machine = json_string_value(json_object_get(ferry, "Machine"));
  if (machine == NULL)
    machine = FERRY_VM_DEFAULT_MACHINE;

  if (virtio_devices > FERRY_VM_MAX_VIRTIO_DEVICES)
    return invalid(error, P_DEVICES,
                   "%u virtio devices (the entropy device and the mux ports count as one each, "
                   "each SCSI controller, share and network adapter as one): at most %u",
                   virtio_devices, FERRY_VM_MAX_VIRTIO_DEVICES);

  if (numa != NULL) {
    guint count = uint_or(lookup(proc, "Count", NULL), FERRY_VM_MAX_PROCESSOR_COUNT,
                          FERRY_VM_DEFAULT_PROCESSOR_COUNT);
    guint64 mb = uint_or(lookup(memory, "SizeInMB", NULL), FERRY_VM_MAX_MEMORY_MB,
                         FERRY_VM_DEFAULT_MEMORY_MB);
    const char *backing = json_string_value(lookup(memory, "Backing", NULL));
    gboolean physical = backing != NULL && g_str_equal(backing, "Physical");
    if (g_str_equal(machine, "microvm"))
      return invalid(error, P_NUMA, "NUMA needs Machine q35 or pc (microvm has no ACPI SRAT)");
    if (!validate_numa(numa, count, mb, physical, nodes, error))
      return FALSE;
    json_t *per_node = lookup(proc, "NumaProcessorsSettings", "count_per_node", "max", NULL);
    if (json_is_integer(per_node) && nodes != NULL) {
      for (guint i = 0; i < nodes->len; i++)
        if (g_array_index(nodes, NumaNode, i).cpus > (guint)json_integer_value(per_node))
          return invalid(
              error, P_NUMA,
              "node %u has %u processors, over "
              "Processor.NumaProcessorsSettings.count_per_node.max %" JSON_INTEGER_FORMAT,
              g_array_index(nodes, NumaNode, i).node, g_array_index(nodes, NumaNode, i).cpus,
              json_integer_value(per_node));
    }
  }
  return TRUE;
}

gboolean ferry_vm_doc_validate(const FerryVmDoc *doc, GError **error)
{
  g_autoptr(GArray) nodes = g_array_new(FALSE, TRUE, sizeof(NumaNode));
  return validate(doc->root, nodes, error);
}

/* ------------------------------------------------------------------------------------ */
/* Documents                                                                             */

FerryVmDoc *ferry_vm_doc_new(const char *owner)
{
  FerryVmDoc *doc = g_new0(FerryVmDoc, 1);
  doc->root =
      json_pack("{s:s, s:{s:i, s:i}, s:b, s:{s:b, s:{}, s:{s:{s:i}, s:{s:i}}, s:{}, "
                "s:{s:s, s:[]}}}",
                "Owner", owner != NULL ? owner : "", "SchemaVersion", "Major", 2, "Minor", 1,
                "ShouldTerminateOnLastHandleClosed", TRUE, "VirtualMachine", "StopOnReset", TRUE,
                "Chipset", "ComputeTopology", "Memory", "SizeInMB", (int)FERRY_VM_DEFAULT_MEMORY_MB,
                "Processor", "Count", (int)FERRY_VM_DEFAULT_PROCESSOR_COUNT, "Devices", "Ferry",
                "Machine", FERRY_VM_DEFAULT_MACHINE, "MuxPorts");
  g_assert(doc->root != NULL);
  return doc;
}

FerryVmDoc *ferry_vm_doc_from_json(json_t *json, GError **error)
{
  if (!json_is_object(json)) {
    invalid(error, "(document)", "must be a JSON object");
    return NULL;
  }
  g_autoptr(FerryVmDoc) doc = g_new0(FerryVmDoc, 1);
  doc->root = json_deep_copy(json);
  if (!ferry_vm_doc_validate(doc, error))
    return NULL;
  return g_steal_pointer(&doc);
}

FerryVmDoc *ferry_vm_doc_from_string(const char *text, GError **error)
{
  g_autoptr(json_t) json = ferry_json_parse_object("VM document", text, strlen(text), error);
  if (json == NULL)
    return NULL;
  return ferry_vm_doc_from_json(json, error);
}

FerryVmDoc *ferry_vm_doc_copy(const FerryVmDoc *doc)
{
  FerryVmDoc *copy = g_new0(FerryVmDoc, 1);
  copy->root = json_deep_copy(doc->root);
  return copy;
}

json_t *ferry_vm_doc_get(const FerryVmDoc *doc)
{
  return doc->root;
}

char *ferry_vm_doc_to_string(const FerryVmDoc *doc)
{
  char *s = json_dumps(doc->root, JSON_COMPACT | JSON_SORT_KEYS);
  char *out = g_strdup(s);
  free(s);
  return out;
}

void ferry_vm_doc_free(FerryVmDoc *doc)
{
  if (doc == NULL)
    return;
  json_decref(doc->root);
  g_free(doc);
}

/* ------------------------------------------------------------------------------------ */
/* Setters                                                                               */

static void set_copy(json_t *parent, const char *key, json_t *value)
{
  if (value != NULL)
    json_object_set_new(parent, key, json_deep_copy(value));
}

void ferry_vm_doc_set_memory(FerryVmDoc *doc, json_t *memory)
{
  if (memory != NULL)
    set_copy(topology_of(doc), "Memory", memory);
}

void ferry_vm_doc_set_firmware_fallback_measured_slit(FerryVmDoc *doc)
{
  json_object_set_new(ensure_object(topology_of(doc), "Memory"), "SlitType",
                      json_string("FirmwareFallbackMeasured"));
}

void ferry_vm_doc_set_processor(FerryVmDoc *doc, json_t *processor)
{
  if (processor != NULL)
    set_copy(topology_of(doc), "Processor", processor);
}

void ferry_vm_doc_set_cpu_group(FerryVmDoc *doc, const char *id)
{
  if (id == NULL)
    return;
  json_object_set_new(ensure_object(topology_of(doc), "Processor"), "CpuGroup",
                      json_pack("{s:s}", "Id", id));
}

void ferry_vm_doc_set_numa(FerryVmDoc *doc, json_t *numa)
{
  if (numa != NULL)
    set_copy(topology_of(doc), "Numa", numa);
}

void ferry_vm_doc_set_numa_processors(FerryVmDoc *doc, json_t *settings)
{
  if (settings != NULL)
    set_copy(ensure_object(topology_of(doc), "Processor"), "NumaProcessorsSettings", settings);
}

void ferry_vm_doc_set_storage_qos(FerryVmDoc *doc, json_t *qos)
{
  if (qos != NULL)
    set_copy(vm_of(doc), "StorageQoS", qos);
}

void ferry_vm_doc_set_kernel_direct(FerryVmDoc *doc, const char *kernel, const char *initrd,
                                    const char *cmdline)
{
  json_t *lkd = json_object();
  if (kernel != NULL)
    json_object_set_new(lkd, "KernelFilePath", json_string(kernel));
  if (initrd != NULL)
    json_object_set_new(lkd, "InitRdPath", json_string(initrd));
  if (cmdline != NULL)
    json_object_set_new(lkd, "KernelCmdLine", json_string(cmdline));
  json_object_set_new(ensure_object(vm_of(doc), "Chipset"), "LinuxKernelDirect", lkd);
}

void ferry_vm_doc_set_machine(FerryVmDoc *doc, const char *machine)
{
  if (machine != NULL)
    json_object_set_new(ferry_of(doc), "Machine", json_string(machine));
}

/* ------------------------------------------------------------------------------------ */
/* Adders                                                                                */

static gboolean bad_argument(GError **error, const char *what, const char *value,
                             const char *problem)
{
  g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "%s \"%s\" %s", what,
              value != NULL ? value : "(null)", problem);
  return FALSE;
}

static gboolean check_arg_name(const char *what, const char *name, gsize max, GError **error)
{
  if (name == NULL)
    return bad_argument(error, what, name, "is missing");
  const char *problem = name_problem(name, max);
  if (problem != NULL) {
    g_autofree char *why = g_strdup_printf(
        "%s (allowed: [A-Za-z0-9._-], 1..%" G_GSIZE_FORMAT " characters)", problem, max);
    return bad_argument(error, what, name, why);
  }
  return TRUE;
}

static gboolean check_arg_path(const char *what, const char *path, GError **error)
{
  if (path == NULL || path[0] != '/')
    return bad_argument(error, what, path, "is not an absolute path");
  if (strlen(path) > MAX_PATH)
    return bad_argument(error, what, path, "is too long");
  return TRUE;
}

/* Does an array of objects have one whose `key` is `value`? */
static gboolean array_has(json_t *array, const char *key, const char *value)
{
  gsize i;
  json_t *v;
  json_array_foreach(array, i, v)
  {
    const char *s = json_string_value(json_object_get(v, key));
    if (s != NULL && g_str_equal(s, value))
      return TRUE;
  }
  return FALSE;
}

gboolean ferry_vm_doc_add_mux_port(FerryVmDoc *doc, const char *name, GError **error)
{
  if (!check_arg_name("mux port name", name, FERRY_VM_MAX_PORT_NAME, error))
    return FALSE;
  json_t *ports = ensure_array(ferry_of(doc), "MuxPorts");
  if (array_has(ports, "Name", name)) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_ALREADY_EXISTS, "mux port %s already exists", name);
    return FALSE;
  }
  if (json_array_size(ports) >= FERRY_VM_MAX_MUX_PORTS) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_RESOURCE_EXHAUSTED,
                "mux port %s: the VM already has %u ports", name, FERRY_VM_MAX_MUX_PORTS);
    return FALSE;
  }
  json_array_append_new(ports, json_pack("{s:s}", "Name", name));
  return TRUE;
}

gboolean ferry_vm_doc_add_scsi_controller(FerryVmDoc *doc, const char *id, GError **error)
{
  if (id == NULL || id[0] == '\0')
    return bad_argument(error, "SCSI controller id", id, "is empty");
  json_t *scsi = ensure_object(devices_of(doc), "Scsi");
  if (json_object_get(scsi, id) != NULL) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_ALREADY_EXISTS, "SCSI controller %s already exists",
                id);
    return FALSE;
  }
  if (json_object_size(scsi) >= FERRY_VM_MAX_SCSI_CONTROLLERS) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_RESOURCE_EXHAUSTED,
                "SCSI controller %s: the VM already has %u controllers", id,
                FERRY_VM_MAX_SCSI_CONTROLLERS);
    return FALSE;
  }
  json_object_set_new(scsi, id, json_pack("{s:{}}", "Attachments"));
  return TRUE;
}

gboolean ferry_vm_doc_add_scsi_disk(FerryVmDoc *doc, const char *controller, guint lun,
                                    const char *path, gboolean read_only, GError **error)
{
  json_t *scsi = lookup(doc->root, "VirtualMachine", "Devices", "Scsi", NULL);
  if (!json_is_object(scsi)) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION,
                "add SCSI disk %s: SCSI controller has not been added", path ? path : "(null)");
    return FALSE;
  }
  json_t *ctl = controller != NULL ? json_object_get(scsi, controller) : NULL;
  if (!json_is_object(ctl)) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND, "no SCSI controller with id %s found",
                controller ? controller : "(null)");
    return FALSE;
  }
  if (lun > FERRY_VM_MAX_SCSI_LUN) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                "SCSI LUN %u is over the maximum %u", lun, FERRY_VM_MAX_SCSI_LUN);
    return FALSE;
  }
  if (!check_arg_path("SCSI disk path", path, error))
    return FALSE;
  json_t *attachments = ensure_object(ctl, "Attachments");
  char key[16];
  g_snprintf(key, sizeof(key), "%u", lun);
  if (json_object_get(attachments, key) != NULL) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_ALREADY_EXISTS,
                "SCSI controller %s already has a disk at LUN %u", controller, lun);
    return FALSE;
  }
  json_object_set_new(
      attachments, key,
      json_pack("{s:s, s:s, s:b}", "Type", "VirtualDisk", "Path", path, "ReadOnly", read_only));
  return TRUE;
}

gboolean ferry_vm_doc_add_share(FerryVmDoc *doc, const char *tag, const char *host_path,
                                gboolean read_only, GError **error)
{
  if (!check_arg_name("share tag", tag, FERRY_VM_MAX_SHARE_TAG, error) ||
      !check_arg_path("share host path", host_path, error))
    return FALSE;
  json_t *shares = ensure_array(ensure_object(devices_of(doc), "Plan9"), "Shares");
  if (array_has(shares, "Name", tag)) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_ALREADY_EXISTS, "share %s already exists", tag);
    return FALSE;
  }
  json_array_append_new(
      shares, json_pack("{s:s, s:s, s:b}", "Name", tag, "Path", host_path, "ReadOnly", read_only));
  return TRUE;
}

gboolean ferry_vm_doc_add_nic(FerryVmDoc *doc, const char *id, const char *mac, GError **error)
{
  if (!check_arg_name("network adapter id", id, FERRY_VM_MAX_PORT_NAME, error))
    return FALSE;
  guint8 octets[6];
  if (mac != NULL && (!parse_mac(mac, octets) || (octets[0] & 1) ||
                      (octets[0] | octets[1] | octets[2] | octets[3] | octets[4] | octets[5]) == 0))
    return bad_argument(error, "MAC address", mac,
                        "is not a unicast MAC address (six hex octets, ':' or '-')");
  json_t *nics = ensure_object(devices_of(doc), "NetworkAdapters");
  if (json_object_get(nics, id) != NULL) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_ALREADY_EXISTS, "network adapter %s already exists",
                id);
    return FALSE;
  }
  if (mac != NULL) {
    g_autofree char *want = canonical_mac(mac);
    const char *other;
    json_t *nic;
    json_object_foreach(nics, other, nic)
    {
      const char *m = json_string_value(json_object_get(nic, "MacAddress"));
      g_autofree char *have = m != NULL ? canonical_mac(m) : NULL;
      if (have != NULL && g_str_equal(have, want)) {
        g_set_error(error, FERRY_ERROR, FERRY_ERROR_ALREADY_EXISTS,
                    "MAC address %s already belongs to network adapter %s", mac, other);
        return FALSE;
      }
    }
  }
  json_t *nic = json_object();
  if (mac != NULL)
    json_object_set_new(nic, "MacAddress", json_string(mac));
  json_object_set_new(nics, id, nic);
  return TRUE;
}

/* ------------------------------------------------------------------------------------ */
/* Readers                                                                               */

guint ferry_vm_doc_memory_mb(const FerryVmDoc *doc)
{
  return uint_or(lookup(doc->root, "VirtualMachine", "ComputeTopology", "Memory", "SizeInMB", NULL),
                 FERRY_VM_MAX_MEMORY_MB, FERRY_VM_DEFAULT_MEMORY_MB);
}

guint ferry_vm_doc_processor_count(const FerryVmDoc *doc)
{
  return uint_or(lookup(doc->root, "VirtualMachine", "ComputeTopology", "Processor", "Count", NULL),
                 FERRY_VM_MAX_PROCESSOR_COUNT, FERRY_VM_DEFAULT_PROCESSOR_COUNT);
}

const char *ferry_vm_doc_machine(const FerryVmDoc *doc)
{
  const char *m = json_string_value(lookup(doc->root, "VirtualMachine", "Ferry", "Machine", NULL));
  return m != NULL ? m : FERRY_VM_DEFAULT_MACHINE;
}

static json_t *mux_ports(const FerryVmDoc *doc)
{
  return lookup(doc->root, "VirtualMachine", "Ferry", "MuxPorts", NULL);
}

static json_t *shares_of(const FerryVmDoc *doc)
{
  return lookup(doc->root, "VirtualMachine", "Devices", "Plan9", "Shares", NULL);
}

/* ------------------------------------------------------------------------------------ */
/* Migratability                                                                         */

gboolean ferry_vm_doc_check_migratable(const FerryVmDoc *doc, FerryVmAccel accel, GError **error)
{
  if (!ferry_vm_doc_validate(doc, error))
    return FALSE;
  guint count = ferry_vm_doc_processor_count(doc);
  if (accel != FERRY_VM_ACCEL_KVM && count > 1) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION,
                "VM %s is not live-migratable: %u vCPUs under %s (QEMU 7.2's TCG crashes a "
                "multi-vCPU guest that dirties memory fast after the switch-over); use 1 vCPU",
                json_string_value(json_object_get(doc->root, "Owner")), count,
                accel == FERRY_VM_ACCEL_TCG ? "TCG" : "an accelerator that may be TCG");
    return FALSE;
  }
  json_t *shares = shares_of(doc);
  if (json_array_size(shares) > 0) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION,
                "VM %s is not live-migratable: it has Plan9 shares (%s...), and QEMU blocks "
                "migration while a virtio-9p share is mounted",
                json_string_value(json_object_get(doc->root, "Owner")),
                json_string_value(json_object_get(json_array_get(shares, 0), "Name")));
    return FALSE;
  }
  return TRUE;
}

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
/* Rendering                                                                             */

/* A value inside QEMU's "key=value,..." options: commas are doubled. */
static char *opt_escape(const char *value)
{
  GString *s = g_string_new(NULL);
  for (const char *c = value; *c; c++) {
    if (*c == ',')
      g_string_append_c(s, ',');
    g_string_append_c(s, *c);
  }
  return g_string_free(s, FALSE);
}

static void add(GPtrArray *argv, const char *arg)
{
  g_ptr_array_add(argv, g_strdup(arg));
}

static void addf(GPtrArray *argv, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

static void addf(GPtrArray *argv, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  g_ptr_array_add(argv, g_strdup_vprintf(fmt, ap));
  va_end(ap);
}

static gboolean cannot(GError **error, const char *path, const char *why)
{
  g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "render VM document: %s: %s", path,
              why);
  return FALSE;
}

/* Is `value` present and not an empty object or array (or false/0)? */
static gboolean is_set(json_t *value)
{
  if (value == NULL || json_is_null(value) || json_is_false(value))
    return FALSE;
  if (json_is_object(value))
    return json_object_size(value) > 0;
  if (json_is_array(value))
    return json_array_size(value) > 0;
  if (json_is_integer(value))
    return json_integer_value(value) != 0;
  return TRUE;
}

/* Refuse what the document asks for and QEMU cannot give (hints are ignored instead:
 * docs/vm-builder.md has the table). */
static gboolean check_expressible(json_t *root, GError **error)
{
  static const char *const mmio[] = { "LowMmioGapInMB", "HighMmioBaseInMB", "HighMmioGapInMB",
                                      NULL };
  static const char *const windows_devices[] = { "VirtualPMem", "VirtualSmb",        "VirtualPci",
                                                 "Keyboard",    "EnhancedModeVideo", "VideoMonitor",
                                                 NULL };
  json_t *vm = json_object_get(root, "VirtualMachine");
  json_t *memory = lookup(vm, "ComputeTopology", "Memory", NULL);
  json_t *proc = lookup(vm, "ComputeTopology", "Processor", NULL);
  json_t *numa = lookup(vm, "ComputeTopology", "Numa", NULL);
  json_t *devices = json_object_get(vm, "Devices");
  json_t *qos = json_object_get(vm, "StorageQoS");
  const char *s;

  if (json_is_false(json_object_get(vm, "StopOnReset")))
    return cannot(error, P_VM ".StopOnReset",
                  "false cannot be honoured: Ferry's QEMU VMs always stop on reset (-no-reboot)");
  if (is_set(lookup(vm, "Chipset", "Uefi", NULL)))
    return cannot(error, P_VM ".Chipset.Uefi",
                  "UEFI boot is not supported; boot with Chipset.LinuxKernelDirect");
  s = json_string_value(json_object_get(memory, "Backing"));
  if (s != NULL && g_str_equal(s, "Hybrid"))
    return cannot(error, P_MEMORY ".Backing", "Hybrid has no QEMU counterpart");
  for (const char *const *f = mmio; *f != NULL; f++) {
    if (is_set(json_object_get(memory, *f))) {
      g_autofree char *p = member_path(P_MEMORY, *f);
      return cannot(error, p, "QEMU cannot place the MMIO gaps");
    }
  }
  gint64 limit = int_of(json_object_get(proc, "Limit"));
  if (limit != 0 && limit != MAX_PROCESSOR_LIMIT)
    return cannot(error, P_PROCESSOR ".Limit",
                  "a CPU cap is a host scheduler setting QEMU cannot apply");
  if (is_set(json_object_get(proc, "Reservation")))
    return cannot(error, P_PROCESSOR ".Reservation",
                  "a CPU reservation is a host scheduler setting QEMU cannot apply");
  if (is_set(json_object_get(proc, "CpuGroup")))
    return cannot(error, P_PROCESSOR ".CpuGroup",
                  "host CPU groups are a Hyper-V feature QEMU cannot apply");
  json_t *per_node = lookup(proc, "NumaProcessorsSettings", "count_per_node", "max", NULL);
  guint count = uint_or(json_object_get(proc, "Count"), FERRY_VM_MAX_PROCESSOR_COUNT,
                        FERRY_VM_DEFAULT_PROCESSOR_COUNT);
  if (numa == NULL && json_is_integer(per_node) && count > json_integer_value(per_node))
    return cannot(error, P_PROCESSOR ".NumaProcessorsSettings",
                  "the processors need more than one NUMA node; describe the nodes in "
                  "ComputeTopology.Numa");
  if (is_set(json_object_get(numa, "PreferredPhysicalNodes")))
    return cannot(error, P_NUMA ".PreferredPhysicalNodes", "host NUMA placement is not supported");
  gsize i;
  json_t *setting;
  json_array_foreach(json_object_get(numa, "Settings"), i, setting)
  {
    g_autofree char *p = index_path(P_NUMA ".Settings", i);
    g_autofree char *pp = member_path(p, "PhysicalNodeNumber");
    g_autofree char *bp = member_path(p, "MemoryBackingType");
    s = json_string_value(json_object_get(setting, "MemoryBackingType"));
    if (is_set(json_object_get(setting, "PhysicalNodeNumber")))
      return cannot(error, pp, "host NUMA placement is not supported");
    if (s != NULL && g_str_equal(s, "Hybrid"))
      return cannot(error, bp, "Hybrid has no QEMU counterpart");
  }
  if (is_set(json_object_get(devices, "ComPorts")))
    return cannot(error, P_DEVICES ".ComPorts",
                  "the serial console always goes to <state_dir>/console.log");
  for (const char *const *d = windows_devices; *d != NULL; d++) {
    if (is_set(json_object_get(devices, *d))) {
      g_autofree char *p = member_path(P_DEVICES, *d);
      return cannot(error, p, "this device type is not supported");
    }
  }
  const char *key;
  json_t *value;
  json_object_foreach(qos, key, value)
  {
    if (!g_str_equal(key, "IopsMaximum") && !g_str_equal(key, "BandwidthMaximum")) {
      g_autofree char *p = member_path(P_VM ".StorageQoS", key);
      return cannot(error, p, "QEMU's drive throttling cannot express this limit");
    }
  }
  return TRUE;
}

static gboolean check_socket_path(const char *what, const char *path, GError **error)
{
  gsize len = strlen(path);
  if (len > FERRY_VM_MAX_SOCKET_PATH) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                "%s socket path %s is %" G_GSIZE_FORMAT " bytes, over the unix socket limit of %u",
                what, path, len, FERRY_VM_MAX_SOCKET_PATH);
    return FALSE;
  }
  return TRUE;
}

/* Does the command line already set tsc_early_khz (as a word of its own)? */
static gboolean cmdline_has_tsc(const char *cmdline)
{
  static const char param[] = "tsc_early_khz=";
  for (const char *p = cmdline; (p = strstr(p, param)) != NULL; p++)
    if (p == cmdline || g_ascii_isspace(p[-1]))
      return TRUE;
  return FALSE;
}

static gboolean render_boot(const FerryVmDoc *doc, const FerryVmRenderOptions *options,
                            gboolean microvm, GPtrArray *argv, GError **error)
{
  json_t *lkd = lookup(doc->root, "VirtualMachine", "Chipset", "LinuxKernelDirect", NULL);
  const char *kernel = json_string_value(json_object_get(lkd, "KernelFilePath"));
  const char *initrd = json_string_value(json_object_get(lkd, "InitRdPath"));
  const char *cmdline = json_string_value(json_object_get(lkd, "KernelCmdLine"));
  if (kernel == NULL) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION,
                "render VM document: %s.KernelFilePath: a kernel is required to start the VM",
                P_KERNEL);
    return FALSE;
  }
  g_autoptr(GString) append = g_string_new(cmdline != NULL ? cmdline : "");
  if (microvm && !cmdline_has_tsc(append->str)) {
    /* microvm has no HPET or PM timer to calibrate the TSC against; PIT calibration
     * under TCG hangs some boots (docs/qemu.md, boot). */
    guint64 khz = options->tsc_khz != 0 ? options->tsc_khz : ferry_vm_host_tsc_khz(NULL);
    if (khz != 0)
      g_string_append_printf(append, "%stsc_early_khz=%" G_GUINT64_FORMAT,
                             append->len > 0 ? " " : "", khz);
  }
  if (append->len > FERRY_VM_MAX_KERNEL_CMDLINE)
    return cannot(error, P_KERNEL ".KernelCmdLine",
                  "with tsc_early_khz appended it is longer than 2047 bytes");
  add(argv, "-kernel");
  add(argv, kernel);
  if (initrd != NULL) {
    add(argv, "-initrd");
    add(argv, initrd);
  }
  if (append->len > 0) {
    add(argv, "-append");
    add(argv, append->str);
  }
  return TRUE;
}

/* QEMU before 9.0 (Debian 12 ships 7.2) loses guest writes in a migration under TCG: the
 * dirty-bitmap sync takes a fast path for RAM blocks whose size is a multiple of 256 KiB,
 * and that path clears the dirty bits without re-arming the TCG TLB's dirty tracking, so
 * later stores through TLB entries the vCPU still holds mark nothing and are never sent
 * again (upstream fix "system/physmem: Fix migration dirty bitmap coherency with TCG
 * memory access", February 2024). The guest's kernel data then arrives stale on the
 * destination. A RAM block 8 KiB longer takes the per-page path, which re-arms the TLB:
 * under TCG every guest RAM block gets these 8 KiB (QEMU's -m granularity). See
 * docs/vm-builder.md. */
#define TCG_RAM_PAD_KIB 8u

/* A RAM size for QEMU: `mb` MiB plus `pad_kib` KiB, in MiB when there is no pad. */
static char *ram_size(guint64 mb, guint pad_kib)
{
  if (pad_kib == 0)
    return g_strdup_printf("%" G_GUINT64_FORMAT "M", mb);
  return g_strdup_printf("%" G_GUINT64_FORMAT "K", mb * 1024 + pad_kib);
}

static void render_memory(const FerryVmDoc *doc, GArray *nodes, GPtrArray *argv,
                          const char *machine, gboolean tcg)
{
  guint mb = ferry_vm_doc_memory_mb(doc);
  guint pad = tcg ? TCG_RAM_PAD_KIB : 0;
  const char *backing = json_string_value(
      lookup(doc->root, "VirtualMachine", "ComputeTopology", "Memory", "Backing", NULL));
  gboolean physical = backing != NULL && g_str_equal(backing, "Physical");
  if (physical && nodes->len == 0) {
    /* Physical backing: all guest memory allocated up front. */
    g_autofree char *size = ram_size(mb, pad);
    add(argv, "-object");
    addf(argv, "memory-backend-ram,id=ram,size=%s,prealloc=on", size);
    add(argv, "-machine");
    addf(argv, "%s,memory-backend=ram", machine);
  } else {
    add(argv, "-machine");
    add(argv, machine);
  }
  /* The blocks: one, or one per NUMA node; -m is their sum. */
  guint blocks = nodes->len > 0 ? nodes->len : 1;
  add(argv, "-m");
  if (pad == 0)
    addf(argv, "%u", mb);
  else
    addf(argv, "%" G_GUINT64_FORMAT "K", (guint64)mb * 1024 + (guint64)pad * blocks);
  guint cpu = 0;
  for (guint i = 0; i < nodes->len; i++) {
    NumaNode *n = &g_array_index(nodes, NumaNode, i);
    g_autofree char *size = ram_size(n->mb, pad);
    add(argv, "-object");
    addf(argv, "memory-backend-ram,id=numa-mem%u,size=%s%s", n->node, size,
         n->physical ? ",prealloc=on" : "");
    add(argv, "-numa");
    if (n->cpus == 1)
      addf(argv, "node,nodeid=%u,cpus=%u,memdev=numa-mem%u", n->node, cpu, n->node);
    else
      addf(argv, "node,nodeid=%u,cpus=%u-%u,memdev=numa-mem%u", n->node, cpu, cpu + n->cpus - 1,
           n->node);
    cpu += n->cpus;
  }
}

static void render_mux_ports(const FerryVmDoc *doc, const char *state_dir, const char *variant,
                             GPtrArray *argv)
{
  json_t *ports = mux_ports(doc);
  if (json_array_size(ports) == 0)
    return;
  add(argv, "-device");
  addf(argv, "virtio-serial-%s,id=vs0", variant);
  gsize i;
  json_t *port;
  json_array_foreach(ports, i, port)
  {
    g_autofree char *sock =
        ferry_vm_doc_port_socket(doc, state_dir, json_string_value(json_object_get(port, "Name")));
    g_autofree char *esc = opt_escape(sock);
    add(argv, "-chardev");
    addf(argv, "socket,id=port%zu,path=%s,server=on,wait=off", i, esc);
    add(argv, "-device");
    addf(argv, "virtserialport,bus=vs0.0,chardev=port%zu,name=%s", i,
         json_string_value(json_object_get(port, "Name")));
  }
}

static void render_scsi(const FerryVmDoc *doc, const char *variant, GPtrArray *argv)
{
  json_t *scsi = lookup(doc->root, "VirtualMachine", "Devices", "Scsi", NULL);
  json_t *qos = lookup(doc->root, "VirtualMachine", "StorageQoS", NULL);
  gint64 iops = int_of(json_object_get(qos, "IopsMaximum"));
  gint64 bps = int_of(json_object_get(qos, "BandwidthMaximum"));
  g_autoptr(GString) throttle = g_string_new(NULL);
  /* HCS's StorageQoS limits the VM as a whole: one throttle group for every drive. */
  if (iops > 0)
    g_string_append_printf(throttle, ",throttling.iops-total=%" G_GINT64_FORMAT, iops);
  if (bps > 0)
    g_string_append_printf(throttle, ",throttling.bps-total=%" G_GINT64_FORMAT, bps);
  if (throttle->len > 0)
    g_string_append(throttle, ",throttling.group=storage-qos");
  if (!json_is_object(scsi))
    return;
  g_autoptr(GPtrArray) controllers = sorted_keys(scsi);
  for (guint c = 0; c < controllers->len; c++) {
    json_t *attachments = lookup(scsi, controllers->pdata[c], "Attachments", NULL);
    add(argv, "-device");
    addf(argv, "virtio-scsi-%s,id=scsi%u", variant, c);
    if (!json_is_object(attachments))
      continue;
    g_autoptr(GPtrArray) luns = sorted_keys(attachments);
    for (guint l = 0; l < luns->len; l++) {
      json_t *disk = json_object_get(attachments, luns->pdata[l]);
      const char *format = json_string_value(json_object_get(disk, "Format"));
      g_autofree char *file = opt_escape(json_string_value(json_object_get(disk, "Path")));
      gboolean ro = json_is_true(json_object_get(disk, "ReadOnly"));
      const char *lun = luns->pdata[l];
      add(argv, "-drive");
      addf(argv, "file=%s,if=none,id=disk%u-%s,format=%s%s%s", file, c, lun,
           format != NULL ? format : "raw", ro ? ",readonly=on" : "", throttle->str);
      add(argv, "-device");
      addf(argv, "scsi-hd,bus=scsi%u.0,channel=0,scsi-id=0,lun=%s,drive=disk%u-%s", c, lun, c, lun);
    }
  }
}

static void render_shares(const FerryVmDoc *doc, const char *variant, GPtrArray *argv)
{
  const char *model =
      json_string_value(lookup(doc->root, "VirtualMachine", "Ferry", "Plan9SecurityModel", NULL));
  gsize i;
  json_t *share;
  json_array_foreach(shares_of(doc), i, share)
  {
    g_autofree char *path = opt_escape(json_string_value(json_object_get(share, "Path")));
    /* hcsshim marks a read-only share with Flags bit 0 (plan9ReadOnly). */
    gboolean ro = json_is_true(json_object_get(share, "ReadOnly")) ||
                  (int_of(json_object_get(share, "Flags")) & 1);
    add(argv, "-fsdev");
    addf(argv, "local,id=fs%zu,path=%s,security_model=%s%s", i, path,
         model != NULL ? model : "none", ro ? ",readonly=on" : "");
    add(argv, "-device");
    addf(argv, "virtio-9p-%s,fsdev=fs%zu,mount_tag=%s", variant, i,
         json_string_value(json_object_get(share, "Name")));
  }
}

static void render_nics(const FerryVmDoc *doc, const char *variant, GPtrArray *argv)
{
  json_t *nics = lookup(doc->root, "VirtualMachine", "Devices", "NetworkAdapters", NULL);
  if (!json_is_object(nics))
    return;
  g_autoptr(GPtrArray) ids = sorted_keys(nics);
  for (guint i = 0; i < ids->len; i++) {
    const char *mac = json_string_value(lookup(nics, ids->pdata[i], "MacAddress", NULL));
    add(argv, "-netdev");
    addf(argv, "user,id=net%u", i);
    add(argv, "-device");
    if (mac != NULL) {
      g_autofree char *m = canonical_mac(mac);
      addf(argv, "virtio-net-%s,netdev=net%u,mac=%s", variant, i, m);
    } else {
      addf(argv, "virtio-net-%s,netdev=net%u", variant, i);
    }
  }
}

GStrv ferry_vm_doc_render(const FerryVmDoc *doc, const FerryVmRenderOptions *options,
                          GError **error)
{
  g_autoptr(GArray) nodes = g_array_new(FALSE, TRUE, sizeof(NumaNode));
  if (!validate(doc->root, nodes, error) || !check_expressible(doc->root, error))
    return NULL;
  if (options->state_dir == NULL || options->state_dir[0] != '/') {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                "render VM document: the state directory %s is not an absolute path",
                options->state_dir != NULL ? options->state_dir : "(null)");
    return NULL;
  }
  g_autofree char *qmp = g_build_filename(options->state_dir, "qmp.sock", NULL);
  g_autofree char *console = g_build_filename(options->state_dir, "console.log", NULL);
  if (!check_socket_path("QMP", qmp, error))
    return NULL;
  gsize i;
  json_t *port;
  json_array_foreach(mux_ports(doc), i, port)
  {
    const char *name = json_string_value(json_object_get(port, "Name"));
    g_autofree char *sock = ferry_vm_doc_port_socket(doc, options->state_dir, name);
    g_autofree char *what = g_strdup_printf("mux port %s", name);
    if (!check_socket_path(what, sock, error))
      return NULL;
  }

  FerryVmAccel accel = options->accel;
  if (accel == FERRY_VM_ACCEL_AUTO) {
    GError *detect_error = NULL;
    accel = ferry_vm_detect_accel(NULL, NULL, &detect_error);
    if (detect_error != NULL) {
      g_propagate_error(error, detect_error);
      return NULL;
    }
  }
  const char *binary = options->qemu_binary;
  if (binary == NULL || binary[0] == '\0')
    binary = "qemu-system-x86_64";
  const char *machine = ferry_vm_doc_machine(doc);
  gboolean microvm = g_str_equal(machine, "microvm");
  /* microvm has virtio-mmio transports, q35 and pc a PCI bus. */
  const char *variant = microvm ? "device" : "pci";
  guint count = ferry_vm_doc_processor_count(doc);

  g_autoptr(GPtrArray) argv = g_ptr_array_new_with_free_func(g_free);
  add(argv, binary);
  g_autofree char *owner = opt_escape(json_string_value(json_object_get(doc->root, "Owner")));
  add(argv, "-name");
  addf(argv, "guest=%s", owner);
  add(argv, "-nodefaults");
  add(argv, "-no-user-config");
  add(argv, "-display");
  add(argv, "none");
  add(argv, "-no-reboot");
  add(argv, "-accel");
  if (accel == FERRY_VM_ACCEL_KVM)
    add(argv, "kvm");
  else
    add(argv, count > 1 ? "tcg,thread=multi" : "tcg");
  render_memory(doc, nodes, argv, machine, accel != FERRY_VM_ACCEL_KVM);
  add(argv, "-smp");
  addf(argv, "%u", count);
  if (options->paused || options->incoming)
    add(argv, "-S");
  if (options->incoming) {
    add(argv, "-incoming");
    add(argv, "defer");
  }
  g_autofree char *qmp_esc = opt_escape(qmp);
  g_autofree char *console_esc = opt_escape(console);
  add(argv, "-chardev");
  addf(argv, "socket,id=qmp,path=%s,server=on,wait=off", qmp_esc);
  add(argv, "-mon");
  add(argv, "chardev=qmp,mode=control");
  add(argv, "-chardev");
  addf(argv, "file,id=console,path=%s", console_esc);
  add(argv, "-serial");
  add(argv, "chardev:console");
  if (!render_boot(doc, options, microvm, argv, error))
    return NULL;
  /* An entropy source, always: without one the guest's random pool is not ready until
   * about 2.8 s of uptime under TCG and the agent blocks in getrandom() for ~1 s
   * (docs/image.md). */
  add(argv, "-device");
  addf(argv, "virtio-rng-%s", variant);
  render_mux_ports(doc, options->state_dir, variant, argv);
  render_scsi(doc, variant, argv);
  render_shares(doc, variant, argv);
  render_nics(doc, variant, argv);
  g_ptr_array_add(argv, NULL);
  return (GStrv)g_ptr_array_free(g_steal_pointer(&argv), FALSE);
}

char *ferry_vm_doc_port_socket(const FerryVmDoc *doc, const char *state_dir, const char *port_name)
{
  gsize i;
  json_t *port;
  if (port_name == NULL)
    return NULL;
  json_array_foreach(mux_ports(doc), i, port)
  {
    const char *name = json_string_value(json_object_get(port, "Name"));
    if (name != NULL && g_str_equal(name, port_name)) {
      g_autofree char *base = g_strdup_printf("port-%zu.sock", i);
      return g_build_filename(state_dir, base, NULL);
    }
  }
  return NULL;
}
