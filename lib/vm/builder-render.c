/* The QEMU command line of a VM document (ferry/vm-builder.h). */
#include "builder-private.h"

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
  json_t *memory = vmdoc_lookup(vm, "ComputeTopology", "Memory", NULL);
  json_t *proc = vmdoc_lookup(vm, "ComputeTopology", "Processor", NULL);
  json_t *numa = vmdoc_lookup(vm, "ComputeTopology", "Numa", NULL);
  json_t *devices = json_object_get(vm, "Devices");
  json_t *qos = json_object_get(vm, "StorageQoS");
  const char *s;

  if (json_is_false(json_object_get(vm, "StopOnReset")))
    return cannot(error, P_VM ".StopOnReset",
                  "false cannot be honoured: Ferry's QEMU VMs always stop on reset (-no-reboot)");
  if (is_set(vmdoc_lookup(vm, "Chipset", "Uefi", NULL)))
    return cannot(error, P_VM ".Chipset.Uefi",
                  "UEFI boot is not supported; boot with Chipset.LinuxKernelDirect");
  s = json_string_value(json_object_get(memory, "Backing"));
  if (s != NULL && g_str_equal(s, "Hybrid"))
    return cannot(error, P_MEMORY ".Backing", "Hybrid has no QEMU counterpart");
  for (const char *const *f = mmio; *f != NULL; f++) {
    if (is_set(json_object_get(memory, *f))) {
      g_autofree char *p = vmdoc_member_path(P_MEMORY, *f);
      return cannot(error, p, "QEMU cannot place the MMIO gaps");
    }
  }
  gint64 limit = vmdoc_int_of(json_object_get(proc, "Limit"));
  if (limit != 0 && limit != MAX_PROCESSOR_LIMIT)
    return cannot(error, P_PROCESSOR ".Limit",
                  "a CPU cap is a host scheduler setting QEMU cannot apply");
  if (is_set(json_object_get(proc, "Reservation")))
    return cannot(error, P_PROCESSOR ".Reservation",
                  "a CPU reservation is a host scheduler setting QEMU cannot apply");
  if (is_set(json_object_get(proc, "CpuGroup")))
    return cannot(error, P_PROCESSOR ".CpuGroup",
                  "host CPU groups are a Hyper-V feature QEMU cannot apply");
  json_t *per_node = vmdoc_lookup(proc, "NumaProcessorsSettings", "count_per_node", "max", NULL);
  guint count = vmdoc_uint_or(json_object_get(proc, "Count"), FERRY_VM_MAX_PROCESSOR_COUNT,
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
    g_autofree char *p = vmdoc_index_path(P_NUMA ".Settings", i);
    g_autofree char *pp = vmdoc_member_path(p, "PhysicalNodeNumber");
    g_autofree char *bp = vmdoc_member_path(p, "MemoryBackingType");
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
      g_autofree char *p = vmdoc_member_path(P_DEVICES, *d);
      return cannot(error, p, "this device type is not supported");
    }
  }
  const char *key;
  json_t *value;
  json_object_foreach(qos, key, value)
  {
    if (!g_str_equal(key, "IopsMaximum") && !g_str_equal(key, "BandwidthMaximum")) {
      g_autofree char *p = vmdoc_member_path(P_VM ".StorageQoS", key);
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
  json_t *lkd = vmdoc_lookup(doc->root, "VirtualMachine", "Chipset", "LinuxKernelDirect", NULL);
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
      vmdoc_lookup(doc->root, "VirtualMachine", "ComputeTopology", "Memory", "Backing", NULL));
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
  json_t *ports = vmdoc_mux_ports(doc);
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

/* ------------------------------------------------------------------ SCSI disks -- */

gboolean vmdoc_scsi_controller_index(const FerryVmDoc *doc, const char *controller, guint *index)
{
  json_t *scsi = vmdoc_lookup(doc->root, "VirtualMachine", "Devices", "Scsi", NULL);
  if (!json_is_object(scsi) || controller == NULL)
    return FALSE;
  g_autoptr(GPtrArray) keys = vmdoc_sorted_keys(scsi);
  for (guint c = 0; c < keys->len; c++)
    if (strcmp(keys->pdata[c], controller) == 0) {
      *index = c;
      return TRUE;
    }
  return FALSE;
}

char *vmdoc_scsi_disk_id(guint c, const char *lun)
{
  return g_strdup_printf("disk%u-%s", c, lun);
}

/* HCS's StorageQoS limits the VM's storage as a whole: one throttle group for every disk. */
static gboolean storage_qos_of(const FerryVmDoc *doc, gint64 *iops, gint64 *bps)
{
  json_t *qos = vmdoc_lookup(doc->root, "VirtualMachine", "StorageQoS", NULL);
  *iops = vmdoc_int_of(json_object_get(qos, "IopsMaximum"));
  *bps = vmdoc_int_of(json_object_get(qos, "BandwidthMaximum"));
  return *iops > 0 || *bps > 0;
}

json_t *vmdoc_scsi_disk_nodes(const FerryVmDoc *doc, guint c, const char *lun, json_t *disk)
{
  g_autofree char *id = vmdoc_scsi_disk_id(c, lun);
  g_autofree char *file = g_strdup_printf("%s-file", id);
  g_autofree char *qos = g_strdup_printf("%s-qos", id);
  g_autofree char *format_node = g_strdup_printf("%s-format", id);
  const char *type = json_string_value(json_object_get(disk, "Type"));
  const char *format = json_string_value(json_object_get(disk, "Format"));
  gboolean ro = json_is_true(json_object_get(disk, "ReadOnly"));
  gint64 iops, bps;
  json_t *nodes = json_array();
  /* A host block device needs host_device: QEMU's file driver refuses one. */
  json_array_append_new(
      nodes, json_pack("{s:s, s:s, s:s, s:b}", "driver",
                       type != NULL && strcmp(type, "PassThru") == 0 ? "host_device" : "file",
                       "node-name", file, "filename",
                       json_string_value(json_object_get(disk, "Path")), "read-only", ro));
  const char *below = file;
  if (storage_qos_of(doc, &iops, &bps)) {
    json_array_append_new(nodes,
                          json_pack("{s:s, s:s, s:s, s:s, s:b}", "driver", "throttle", "node-name",
                                    qos, "throttle-group", FERRY_VM_STORAGE_QOS_GROUP, "file", file,
                                    "read-only", ro));
    below = qos;
  }
  json_array_append_new(nodes,
                        json_pack("{s:s, s:s, s:s, s:b}", "driver", format != NULL ? format : "raw",
                                  "node-name", format_node, "file", below, "read-only", ro));
  return nodes;
}

json_t *vmdoc_scsi_disk_device(guint c, const char *lun)
{
  g_autofree char *id = vmdoc_scsi_disk_id(c, lun);
  g_autofree char *bus = g_strdup_printf("scsi%u.0", c);
  g_autofree char *drive = g_strdup_printf("%s-format", id);
  return json_pack("{s:s, s:s, s:i, s:i, s:I, s:s, s:s}", "driver", "scsi-hd", "bus", bus,
                   "channel", 0, "scsi-id", 0, "lun", (json_int_t)strtol(lun, NULL, 10), "drive",
                   drive, "id", id);
}

/* QMP arguments as QEMU's "key=value,..." options (in the object's order); -device's
 * driver comes first without its key, as usual. */
static char *keyval_of(json_t *args, gboolean implied_driver)
{
  GString *s = g_string_new(NULL);
  const char *key;
  json_t *value;
  json_object_foreach(args, key, value)
  {
    if (s->len > 0)
      g_string_append_c(s, ',');
    if (!implied_driver || strcmp(key, "driver") != 0)
      g_string_append_printf(s, "%s=", key);
    if (json_is_string(value)) {
      g_autofree char *esc = opt_escape(json_string_value(value));
      g_string_append(s, esc);
    } else if (json_is_boolean(value)) {
      g_string_append(s, json_is_true(value) ? "on" : "off");
    } else {
      g_string_append_printf(s, "%" JSON_INTEGER_FORMAT, json_integer_value(value));
    }
  }
  return g_string_free(s, FALSE);
}

/*
 * Disks are block nodes (-blockdev) and a scsi-hd with an id, exactly what the VM manager
 * hot-adds (blockdev-add, device_add) from the same functions: a disk hot-added on a
 * migration's source and one the destination renders from the document are the same
 * objects with the same names.
 */
static void render_scsi(const FerryVmDoc *doc, const char *variant, GPtrArray *argv)
{
  json_t *scsi = vmdoc_lookup(doc->root, "VirtualMachine", "Devices", "Scsi", NULL);
  if (!json_is_object(scsi))
    return;
  gint64 iops, bps;
  if (storage_qos_of(doc, &iops, &bps)) {
    g_autoptr(GString) group = g_string_new("throttle-group,id=" FERRY_VM_STORAGE_QOS_GROUP);
    if (iops > 0)
      g_string_append_printf(group, ",x-iops-total=%" G_GINT64_FORMAT, iops);
    if (bps > 0)
      g_string_append_printf(group, ",x-bps-total=%" G_GINT64_FORMAT, bps);
    add(argv, "-object");
    add(argv, group->str);
  }
  g_autoptr(GPtrArray) controllers = vmdoc_sorted_keys(scsi);
  for (guint c = 0; c < controllers->len; c++) {
    json_t *attachments = vmdoc_lookup(scsi, controllers->pdata[c], "Attachments", NULL);
    add(argv, "-device");
    addf(argv, "virtio-scsi-%s,id=scsi%u", variant, c);
    if (!json_is_object(attachments))
      continue;
    g_autoptr(GPtrArray) luns = vmdoc_sorted_keys(attachments);
    for (guint l = 0; l < luns->len; l++) {
      const char *lun = luns->pdata[l];
      json_t *nodes = vmdoc_scsi_disk_nodes(doc, c, lun, json_object_get(attachments, lun));
      gsize i;
      json_t *node;
      json_array_foreach(nodes, i, node)
      {
        add(argv, "-blockdev");
        g_ptr_array_add(argv, keyval_of(node, FALSE));
      }
      json_decref(nodes);
      json_t *device = vmdoc_scsi_disk_device(c, lun);
      add(argv, "-device");
      g_ptr_array_add(argv, keyval_of(device, TRUE));
      json_decref(device);
    }
  }
}

static void render_shares(const FerryVmDoc *doc, const char *variant, GPtrArray *argv)
{
  const char *model = json_string_value(
      vmdoc_lookup(doc->root, "VirtualMachine", "Ferry", "Plan9SecurityModel", NULL));
  gsize i;
  json_t *share;
  json_array_foreach(vmdoc_shares_of(doc), i, share)
  {
    g_autofree char *path = opt_escape(json_string_value(json_object_get(share, "Path")));
    /* hcsshim marks a read-only share with Flags bit 0 (plan9ReadOnly). */
    gboolean ro = json_is_true(json_object_get(share, "ReadOnly")) ||
                  (vmdoc_int_of(json_object_get(share, "Flags")) & 1);
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
  json_t *nics = vmdoc_lookup(doc->root, "VirtualMachine", "Devices", "NetworkAdapters", NULL);
  if (!json_is_object(nics))
    return;
  g_autoptr(GPtrArray) ids = vmdoc_sorted_keys(nics);
  for (guint i = 0; i < ids->len; i++) {
    const char *mac = json_string_value(vmdoc_lookup(nics, ids->pdata[i], "MacAddress", NULL));
    add(argv, "-netdev");
    addf(argv, "user,id=net%u", i);
    add(argv, "-device");
    if (mac != NULL) {
      g_autofree char *m = vmdoc_canonical_mac(mac);
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
  if (!vmdoc_validate(doc->root, nodes, error) || !check_expressible(doc->root, error))
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
  json_array_foreach(vmdoc_mux_ports(doc), i, port)
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
  json_array_foreach(vmdoc_mux_ports(doc), i, port)
  {
    const char *name = json_string_value(json_object_get(port, "Name"));
    if (name != NULL && g_str_equal(name, port_name)) {
      g_autofree char *base = g_strdup_printf("port-%zu.sock", i);
      return g_build_filename(state_dir, base, NULL);
    }
  }
  return NULL;
}
