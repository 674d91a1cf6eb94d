/* The VM document: construction, setters, JSON in and out, and the JSON helpers the
 * builder's other files share (ferry/vm-builder.h). */
#include "builder-private.h"

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
G_GNUC_NULL_TERMINATED json_t *vmdoc_lookup(json_t *root, ...)
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
guint vmdoc_uint_or(json_t *v, guint max, guint fallback)
{
  if (!json_is_integer(v))
    return fallback;
  json_int_t n = json_integer_value(v);
  return n >= 1 && n <= (json_int_t)max ? (guint)n : fallback;
}

gint64 vmdoc_int_of(json_t *v)
{
  return json_is_integer(v) ? (gint64)json_integer_value(v) : 0;
}

/* Map keys in a stable order: decimal keys by value first, then the rest by strcmp.
 * Render order is device order, and must not depend on how the document was built. */
gboolean vmdoc_is_decimal(const char *s)
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
  gboolean dx = vmdoc_is_decimal(x), dy = vmdoc_is_decimal(y);
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
GPtrArray *vmdoc_sorted_keys(json_t *obj)
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

gboolean vmdoc_invalid(GError **error, const char *path, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  g_autofree char *what = g_strdup_vprintf(fmt, ap);
  va_end(ap);
  g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "invalid VM document: %s: %s", path,
              what);
  return FALSE;
}

char *vmdoc_member_path(const char *path, const char *key)
{
  if (path[0] == '\0')
    return g_strdup(key);
  return g_strconcat(path, ".", key, NULL);
}

char *vmdoc_key_path(const char *path, const char *key)
{
  return g_strdup_printf("%s[\"%s\"]", path, key);
}

char *vmdoc_index_path(const char *path, gsize i)
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

gboolean vmdoc_check_name(const char *path, const char *name, gsize max, GError **error)
{
  const char *problem = name_problem(name, max);
  if (problem != NULL)
    return vmdoc_invalid(error, path,
                         "\"%s\" %s (allowed: [A-Za-z0-9._-], 1..%" G_GSIZE_FORMAT " characters)",
                         name, problem, max);
  return TRUE;
}

static gboolean check_abs_path(const char *path, const char *value, GError **error)
{
  if (value[0] != '/')
    return vmdoc_invalid(error, path, "\"%s\" is not an absolute path", value);
  if (strlen(value) > MAX_PATH)
    return vmdoc_invalid(error, path, "longer than %u bytes", MAX_PATH);
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

gboolean vmdoc_check_mac(const char *path, const char *text, GError **error)
{
  guint8 mac[6];
  if (!parse_mac(text, mac))
    return vmdoc_invalid(error, path, "\"%s\" is not a MAC address (six hex octets, ':' or '-')",
                         text);
  if (mac[0] & 1)
    return vmdoc_invalid(error, path, "%s is a multicast address", text);
  if ((mac[0] | mac[1] | mac[2] | mac[3] | mac[4] | mac[5]) == 0)
    return vmdoc_invalid(error, path, "%s is all zero", text);
  return TRUE;
}

/* Lower-case, ':'-separated, as QEMU wants it. */
char *vmdoc_canonical_mac(const char *text)
{
  guint8 m[6];
  if (!parse_mac(text, m))
    return g_strdup(text);
  return g_strdup_printf("%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5]);
}

/* ------------------------------------------------------------------------------------ */
/* Typed members with errors that name the path                                          */

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
gboolean vmdoc_get(json_t *obj, const char *path, const char *key, Kind kind, gboolean required,
                   json_t **out, GError **error)
{
  json_t *v = json_object_get(obj, key);
  *out = NULL;
  if (v == NULL || json_is_null(v)) {
    if (required) {
      g_autofree char *p = vmdoc_member_path(path, key);
      return vmdoc_invalid(error, p, "missing");
    }
    return TRUE;
  }
  if (!is_kind(v, kind)) {
    g_autofree char *p = vmdoc_member_path(path, key);
    return vmdoc_invalid(error, p, "must be %s", kind_names[kind]);
  }
  if (kind == K_STRING && strlen(json_string_value(v)) != json_string_length(v)) {
    g_autofree char *p = vmdoc_member_path(path, key);
    return vmdoc_invalid(error, p, "contains a NUL character");
  }
  *out = v;
  return TRUE;
}

gboolean vmdoc_get_object(json_t *obj, const char *path, const char *key, json_t **out,
                          GError **error)
{
  return vmdoc_get(obj, path, key, K_OBJECT, FALSE, out, error);
}

gboolean vmdoc_get_string(json_t *obj, const char *path, const char *key, gboolean required,
                          const char **out, GError **error)
{
  json_t *v;
  *out = NULL;
  if (!vmdoc_get(obj, path, key, K_STRING, required, &v, error))
    return FALSE;
  if (v != NULL)
    *out = json_string_value(v);
  return TRUE;
}

gboolean vmdoc_get_bool(json_t *obj, const char *path, const char *key, GError **error)
{
  json_t *v;
  return vmdoc_get(obj, path, key, K_BOOLEAN, FALSE, &v, error);
}

/* An integer in [min, max]; *out untouched when absent. */
gboolean vmdoc_get_uint(json_t *obj, const char *path, const char *key, gboolean required,
                        guint64 min, guint64 max, guint64 *out, GError **error)
{
  json_t *v;
  if (!vmdoc_get(obj, path, key, K_INTEGER, required, &v, error))
    return FALSE;
  if (v == NULL)
    return TRUE;
  json_int_t n = json_integer_value(v);
  if (n < 0 || (guint64)n < min || (guint64)n > max) {
    g_autofree char *p = vmdoc_member_path(path, key);
    return vmdoc_invalid(error, p,
                         "%" JSON_INTEGER_FORMAT " is out of range (%" G_GUINT64_FORMAT
                         "..%" G_GUINT64_FORMAT ")",
                         n, min, max);
  }
  if (out != NULL)
    *out = (guint64)n;
  return TRUE;
}

/* A string that must be one of `values` (NULL-terminated). */
gboolean vmdoc_get_enum(json_t *obj, const char *path, const char *key, const char *const *values,
                        const char **out, GError **error)
{
  const char *s;
  if (out != NULL)
    *out = NULL;
  if (!vmdoc_get_string(obj, path, key, FALSE, &s, error))
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
  g_autofree char *p = vmdoc_member_path(path, key);
  return vmdoc_invalid(error, p, "\"%s\" is not one of %s", s, allowed);
}

gboolean vmdoc_get_path(json_t *obj, const char *path, const char *key, gboolean required,
                        const char **out, GError **error)
{
  if (!vmdoc_get_string(obj, path, key, required, out, error))
    return FALSE;
  if (*out == NULL)
    return TRUE;
  g_autofree char *p = vmdoc_member_path(path, key);
  return check_abs_path(p, *out, error);
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
    vmdoc_invalid(error, "(document)", "must be a JSON object");
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
  json_t *scsi = vmdoc_lookup(doc->root, "VirtualMachine", "Devices", "Scsi", NULL);
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

json_t *ferry_vm_doc_scsi_disk(const FerryVmDoc *doc, const char *controller, guint lun)
{
  char key[16];
  g_snprintf(key, sizeof(key), "%u", lun);
  json_t *scsi = vmdoc_lookup(doc->root, "VirtualMachine", "Devices", "Scsi", NULL);
  json_t *ctl = controller != NULL ? json_object_get(scsi, controller) : NULL;
  return json_object_get(json_object_get(ctl, "Attachments"), key);
}

gboolean ferry_vm_doc_remove_scsi_disk(FerryVmDoc *doc, const char *controller, guint lun,
                                       GError **error)
{
  json_t *scsi = vmdoc_lookup(doc->root, "VirtualMachine", "Devices", "Scsi", NULL);
  json_t *ctl = controller != NULL ? json_object_get(scsi, controller) : NULL;
  if (!json_is_object(ctl)) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND, "no SCSI controller with id %s found",
                controller ? controller : "(null)");
    return FALSE;
  }
  char key[16];
  g_snprintf(key, sizeof(key), "%u", lun);
  json_t *attachments = json_object_get(ctl, "Attachments");
  if (json_object_get(attachments, key) == NULL) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND,
                "SCSI controller %s has no disk at LUN %u", controller, lun);
    return FALSE;
  }
  json_object_del(attachments, key);
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
    g_autofree char *want = vmdoc_canonical_mac(mac);
    const char *other;
    json_t *nic;
    json_object_foreach(nics, other, nic)
    {
      const char *m = json_string_value(json_object_get(nic, "MacAddress"));
      g_autofree char *have = m != NULL ? vmdoc_canonical_mac(m) : NULL;
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
  return vmdoc_uint_or(
      vmdoc_lookup(doc->root, "VirtualMachine", "ComputeTopology", "Memory", "SizeInMB", NULL),
      FERRY_VM_MAX_MEMORY_MB, FERRY_VM_DEFAULT_MEMORY_MB);
}

guint ferry_vm_doc_processor_count(const FerryVmDoc *doc)
{
  return vmdoc_uint_or(
      vmdoc_lookup(doc->root, "VirtualMachine", "ComputeTopology", "Processor", "Count", NULL),
      FERRY_VM_MAX_PROCESSOR_COUNT, FERRY_VM_DEFAULT_PROCESSOR_COUNT);
}

const char *ferry_vm_doc_machine(const FerryVmDoc *doc)
{
  const char *m =
      json_string_value(vmdoc_lookup(doc->root, "VirtualMachine", "Ferry", "Machine", NULL));
  return m != NULL ? m : FERRY_VM_DEFAULT_MACHINE;
}

json_t *vmdoc_mux_ports(const FerryVmDoc *doc)
{
  return vmdoc_lookup(doc->root, "VirtualMachine", "Ferry", "MuxPorts", NULL);
}

json_t *vmdoc_shares_of(const FerryVmDoc *doc)
{
  return vmdoc_lookup(doc->root, "VirtualMachine", "Devices", "Plan9", "Shares", NULL);
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
  json_t *shares = vmdoc_shares_of(doc);
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
