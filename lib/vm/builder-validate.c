/* VM document validation (ferry/vm-builder.h). */
#include "builder-private.h"

/* ------------------------------------------------------------------------------------ */
/* Validation                                                                            */

static const char *const backing_values[] = { "Physical", "Virtual", "Hybrid", NULL };
static const char *const slit_values[] = { "None", "Firmware", "Measured",
                                           "FirmwareFallbackMeasured", NULL };
static const char *const machine_values[] = { "microvm", "q35", "pc", NULL };
static const char *const disk_type_values[] = { "VirtualDisk", "PassThru", NULL };
static const char *const disk_format_values[] = { "raw", "qcow2", NULL };
static const char *const security_model_values[] = { "none", "mapped", NULL };

static gboolean validate_kernel(json_t *chipset, GError **error)
{
  json_t *lkd, *uefi;
  const char *s;
  if (!vmdoc_get_object(chipset, P_VM ".Chipset", "LinuxKernelDirect", &lkd, error) ||
      !vmdoc_get_object(chipset, P_VM ".Chipset", "Uefi", &uefi, error))
    return FALSE;
  if (lkd == NULL)
    return TRUE;
  if (!vmdoc_get_path(lkd, P_KERNEL, "KernelFilePath", FALSE, &s, error) ||
      !vmdoc_get_path(lkd, P_KERNEL, "InitRdPath", FALSE, &s, error) ||
      !vmdoc_get_string(lkd, P_KERNEL, "KernelCmdLine", FALSE, &s, error))
    return FALSE;
  if (s != NULL && strlen(s) > FERRY_VM_MAX_KERNEL_CMDLINE)
    return vmdoc_invalid(error, P_KERNEL ".KernelCmdLine", "longer than %u bytes",
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
  if (!vmdoc_get_uint(memory, P_MEMORY, "SizeInMB", FALSE, 1, FERRY_VM_MAX_MEMORY_MB, NULL,
                      error) ||
      !vmdoc_get_enum(memory, P_MEMORY, "Backing", backing_values, NULL, error) ||
      !vmdoc_get_enum(memory, P_MEMORY, "SlitType", slit_values, NULL, error))
    return FALSE;
  for (const char *const *f = flags; *f != NULL; f++)
    if (!vmdoc_get_bool(memory, P_MEMORY, *f, error))
      return FALSE;
  for (const char *const *f = sizes; *f != NULL; f++)
    if (!vmdoc_get_uint(memory, P_MEMORY, *f, FALSE, 0, G_MAXINT64, NULL, error))
      return FALSE;
  return TRUE;
}

static gboolean validate_processor(json_t *proc, GError **error)
{
  json_t *group, *nps, *per_node;
  const char *id;
  if (!vmdoc_get_uint(proc, P_PROCESSOR, "Count", FALSE, 1, FERRY_VM_MAX_PROCESSOR_COUNT, NULL,
                      error) ||
      !vmdoc_get_uint(proc, P_PROCESSOR, "Limit", FALSE, 0, MAX_PROCESSOR_LIMIT, NULL, error) ||
      !vmdoc_get_uint(proc, P_PROCESSOR, "Weight", FALSE, 0, MAX_PROCESSOR_WEIGHT, NULL, error) ||
      !vmdoc_get_uint(proc, P_PROCESSOR, "Reservation", FALSE, 0, MAX_PROCESSOR_LIMIT, NULL,
                      error) ||
      !vmdoc_get_object(proc, P_PROCESSOR, "CpuGroup", &group, error) ||
      !vmdoc_get_object(proc, P_PROCESSOR, "NumaProcessorsSettings", &nps, error))
    return FALSE;
  if (group != NULL) {
    if (!vmdoc_get_string(group, P_PROCESSOR ".CpuGroup", "Id", TRUE, &id, error))
      return FALSE;
    if (id[0] == '\0')
      return vmdoc_invalid(error, P_PROCESSOR ".CpuGroup.Id", "is empty");
  }
  if (nps != NULL) {
    /* snake_case as in the HCS schema */
    const char *p = P_PROCESSOR ".NumaProcessorsSettings";
    if (!vmdoc_get(nps, p, "count_per_node", K_OBJECT, TRUE, &per_node, error) ||
        !vmdoc_get_uint(per_node, P_PROCESSOR ".NumaProcessorsSettings.count_per_node", "max", TRUE,
                        1, FERRY_VM_MAX_PROCESSOR_COUNT, NULL, error) ||
        !vmdoc_get_uint(nps, p, "node_per_socket", FALSE, 1, FERRY_VM_MAX_NUMA_NODES, NULL, error))
      return FALSE;
  }
  return TRUE;
}

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
  if (!vmdoc_get_uint(numa, P_NUMA, "VirtualNodeCount", TRUE, 1, FERRY_VM_MAX_NUMA_NODES,
                      &node_count, error) ||
      !vmdoc_get_uint(numa, P_NUMA, "MaxSizePerNode", FALSE, 0, G_MAXINT64, &max_per_node, error) ||
      !vmdoc_get(numa, P_NUMA, "PreferredPhysicalNodes", K_ARRAY, FALSE, &preferred, error) ||
      !vmdoc_get(numa, P_NUMA, "Settings", K_ARRAY, FALSE, &settings, error))
    return FALSE;
  if (preferred != NULL) {
    gsize i;
    json_t *v;
    json_array_foreach(preferred, i, v)
    {
      if (!json_is_integer(v) || json_integer_value(v) < 0) {
        g_autofree char *p = vmdoc_index_path(P_NUMA ".PreferredPhysicalNodes", i);
        return vmdoc_invalid(error, p, "must be a node number (an integer >= 0)");
      }
    }
  }
  g_autoptr(GArray) local = g_array_new(FALSE, TRUE, sizeof(NumaNode));
  if (settings != NULL) {
    if (json_array_size(settings) != node_count)
      return vmdoc_invalid(error, P_NUMA ".Settings",
                           "has %zu entries but VirtualNodeCount is %" G_GUINT64_FORMAT,
                           json_array_size(settings), node_count);
    guint64 seen = 0, cpus = 0, mem = 0;
    gsize i;
    json_t *s;
    json_array_foreach(settings, i, s)
    {
      g_autofree char *p = vmdoc_index_path(P_NUMA ".Settings", i);
      guint64 vnode = 0, procs = 0, blocks = 0;
      const char *backing;
      if (!json_is_object(s))
        return vmdoc_invalid(error, p, "must be an object");
      if (!vmdoc_get_uint(s, p, "VirtualNodeNumber", TRUE, 0, node_count - 1, &vnode, error) ||
          !vmdoc_get_uint(s, p, "PhysicalNodeNumber", FALSE, 0, G_MAXUINT32, NULL, error) ||
          !vmdoc_get_uint(s, p, "VirtualSocketNumber", FALSE, 0, G_MAXUINT32, NULL, error) ||
          !vmdoc_get_uint(s, p, "CountOfProcessors", TRUE, 1, FERRY_VM_MAX_PROCESSOR_COUNT, &procs,
                          error) ||
          !vmdoc_get_uint(s, p, "CountOfMemoryBlocks", TRUE, 1, FERRY_VM_MAX_MEMORY_MB, &blocks,
                          error) ||
          !vmdoc_get_enum(s, p, "MemoryBackingType", backing_values, &backing, error))
        return FALSE;
      if (seen & (G_GUINT64_CONSTANT(1) << vnode))
        return vmdoc_invalid(error, p, "VirtualNodeNumber %" G_GUINT64_FORMAT " appears twice",
                             vnode);
      seen |= G_GUINT64_CONSTANT(1) << vnode;
      if (max_per_node != 0 && blocks > max_per_node)
        return vmdoc_invalid(error, p,
                             "%" G_GUINT64_FORMAT " MiB is over MaxSizePerNode %" G_GUINT64_FORMAT,
                             blocks, max_per_node);
      cpus += procs;
      mem += blocks;
      NumaNode n = { (guint)vnode, (guint)procs, blocks,
                     backing != NULL ? g_str_equal(backing, "Physical") : physical };
      g_array_append_val(local, n);
    }
    if (cpus != count)
      return vmdoc_invalid(error, P_NUMA ".Settings",
                           "CountOfProcessors add up to %" G_GUINT64_FORMAT
                           " but Processor.Count is %u",
                           cpus, count);
    if (mem != mb)
      return vmdoc_invalid(error, P_NUMA ".Settings",
                           "CountOfMemoryBlocks add up to %" G_GUINT64_FORMAT
                           " MiB but Memory.SizeInMB is %" G_GUINT64_FORMAT,
                           mem, mb);
    g_array_sort(local, node_order);
  } else {
    if (node_count > count)
      return vmdoc_invalid(error, P_NUMA ".VirtualNodeCount",
                           "%" G_GUINT64_FORMAT
                           " nodes need at least as many processors (Count is %u)",
                           node_count, count);
    for (guint i = 0; i < node_count; i++) {
      /* contiguous shares; the remainders go to the last node */
      NumaNode n = { i, count / (guint)node_count, mb / node_count, physical };
      if (i == node_count - 1) {
        n.cpus += count % (guint)node_count;
        n.mb += mb % node_count;
      }
      if (max_per_node != 0 && n.mb > max_per_node)
        return vmdoc_invalid(error, P_NUMA ".MaxSizePerNode",
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
    return vmdoc_invalid(error, P_DEVICES ".Scsi", "more than %u controllers",
                         FERRY_VM_MAX_SCSI_CONTROLLERS);
  json_object_foreach(scsi, key, controller)
  {
    g_autofree char *p = vmdoc_key_path(P_DEVICES ".Scsi", key);
    json_t *attachments;
    if (key[0] == '\0')
      return vmdoc_invalid(error, p, "a controller id is empty");
    if (!json_is_object(controller))
      return vmdoc_invalid(error, p, "must be an object");
    if (!vmdoc_get_object(controller, p, "Attachments", &attachments, error))
      return FALSE;
    (*virtio_devices)++;
    if (attachments == NULL)
      continue;
    g_autofree char *ap = vmdoc_member_path(p, "Attachments");
    const char *lun;
    json_t *disk;
    json_object_foreach(attachments, lun, disk)
    {
      g_autofree char *dp = vmdoc_key_path(ap, lun);
      const char *s;
      if (!vmdoc_is_decimal(lun) || (lun[0] == '0' && lun[1] != '\0') ||
          strtol(lun, NULL, 10) > (long)FERRY_VM_MAX_SCSI_LUN)
        return vmdoc_invalid(error, dp, "a LUN must be a number 0..%u without leading zeros",
                             FERRY_VM_MAX_SCSI_LUN);
      if (!json_is_object(disk))
        return vmdoc_invalid(error, dp, "must be an object");
      if (!vmdoc_get_enum(disk, dp, "Type", disk_type_values, NULL, error) ||
          !vmdoc_get_path(disk, dp, "Path", TRUE, &s, error) ||
          !vmdoc_get_bool(disk, dp, "ReadOnly", error) ||
          !vmdoc_get_enum(disk, dp, "Format", disk_format_values, NULL, error))
        return FALSE;
    }
  }
  return TRUE;
}

static gboolean validate_plan9(json_t *plan9, guint *virtio_devices, GError **error)
{
  json_t *shares, *share;
  gsize i;
  if (!vmdoc_get(plan9, P_DEVICES ".Plan9", "Shares", K_ARRAY, FALSE, &shares, error))
    return FALSE;
  if (shares == NULL)
    return TRUE;
  g_autoptr(GHashTable) tags = g_hash_table_new(g_str_hash, g_str_equal);
  json_array_foreach(shares, i, share)
  {
    g_autofree char *p = vmdoc_index_path(P_DEVICES ".Plan9.Shares", i);
    g_autofree char *np = vmdoc_member_path(p, "Name");
    const char *name, *s;
    if (!json_is_object(share))
      return vmdoc_invalid(error, p, "must be an object");
    if (!vmdoc_get_string(share, p, "Name", TRUE, &name, error) ||
        !vmdoc_check_name(np, name, FERRY_VM_MAX_SHARE_TAG, error) ||
        !vmdoc_get_string(share, p, "AccessName", FALSE, &s, error) ||
        !vmdoc_get_path(share, p, "Path", TRUE, &s, error) ||
        !vmdoc_get_bool(share, p, "ReadOnly", error) ||
        !vmdoc_get_uint(share, p, "Flags", FALSE, 0, G_MAXUINT32, NULL, error))
      return FALSE;
    if (!g_hash_table_add(tags, (gpointer)name))
      return vmdoc_invalid(error, np, "share \"%s\" appears twice", name);
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
    g_autofree char *p = vmdoc_key_path(P_DEVICES ".NetworkAdapters", id);
    const char *mac, *s;
    if (!vmdoc_check_name(p, id, FERRY_VM_MAX_PORT_NAME, error))
      return FALSE;
    if (!json_is_object(nic))
      return vmdoc_invalid(error, p, "must be an object");
    if (!vmdoc_get_string(nic, p, "MacAddress", FALSE, &mac, error) ||
        !vmdoc_get_string(nic, p, "EndpointId", FALSE, &s, error))
      return FALSE;
    if (mac != NULL) {
      g_autofree char *mp = vmdoc_member_path(p, "MacAddress");
      if (!vmdoc_check_mac(mp, mac, error))
        return FALSE;
      if (!g_hash_table_add(macs, vmdoc_canonical_mac(mac)))
        return vmdoc_invalid(error, mp, "%s is used by another adapter", mac);
    }
    (*virtio_devices)++;
  }
  return TRUE;
}

static gboolean validate_ferry(json_t *ferry, guint *virtio_devices, GError **error)
{
  json_t *ports, *port;
  gsize i;
  if (!vmdoc_get_enum(ferry, P_FERRY, "Machine", machine_values, NULL, error) ||
      !vmdoc_get_enum(ferry, P_FERRY, "Plan9SecurityModel", security_model_values, NULL, error) ||
      !vmdoc_get(ferry, P_FERRY, "MuxPorts", K_ARRAY, FALSE, &ports, error))
    return FALSE;
  if (ports == NULL || json_array_size(ports) == 0)
    return TRUE;
  if (json_array_size(ports) > FERRY_VM_MAX_MUX_PORTS)
    return vmdoc_invalid(error, P_FERRY ".MuxPorts", "more than %u ports", FERRY_VM_MAX_MUX_PORTS);
  g_autoptr(GHashTable) names = g_hash_table_new(g_str_hash, g_str_equal);
  json_array_foreach(ports, i, port)
  {
    g_autofree char *p = vmdoc_index_path(P_FERRY ".MuxPorts", i);
    g_autofree char *np = vmdoc_member_path(p, "Name");
    const char *name;
    if (!json_is_object(port))
      return vmdoc_invalid(error, p, "must be an object");
    if (!vmdoc_get_string(port, p, "Name", TRUE, &name, error) ||
        !vmdoc_check_name(np, name, FERRY_VM_MAX_PORT_NAME, error))
      return FALSE;
    if (!g_hash_table_add(names, (gpointer)name))
      return vmdoc_invalid(error, np, "port \"%s\" appears twice", name);
  }
  (*virtio_devices)++; /* one virtio-serial device carries them all */
  return TRUE;
}

/* The whole document; `nodes` (optional) gets the NUMA layout. */
gboolean vmdoc_validate(json_t *root, GArray *nodes, GError **error)
{
  json_t *version, *vm, *chipset, *topology, *memory = NULL, *proc = NULL, *numa = NULL;
  json_t *devices, *sub, *qos, *ferry;
  const char *owner, *machine = NULL;
  guint virtio_devices = 1; /* the entropy device every VM gets */

  if (!json_is_object(root))
    return vmdoc_invalid(error, "(document)", "must be a JSON object");
  if (!vmdoc_get_string(root, "", "Owner", TRUE, &owner, error))
    return FALSE;
  if (owner[0] == '\0')
    return vmdoc_invalid(error, "Owner", "is empty");
  if (strlen(owner) > MAX_OWNER)
    return vmdoc_invalid(error, "Owner", "longer than %u bytes", MAX_OWNER);
  for (const char *c = owner; *c; c++)
    if ((guchar)*c < 0x20 || *c == 0x7f)
      return vmdoc_invalid(error, "Owner", "contains a control character");
  if (!vmdoc_get(root, "", "SchemaVersion", K_OBJECT, TRUE, &version, error) ||
      !vmdoc_get_uint(version, "SchemaVersion", "Major", TRUE, 2, 2, NULL, error) ||
      !vmdoc_get_uint(version, "SchemaVersion", "Minor", FALSE, 0, G_MAXUINT16, NULL, error) ||
      !vmdoc_get_bool(root, "", "ShouldTerminateOnLastHandleClosed", error) ||
      !vmdoc_get(root, "", P_VM, K_OBJECT, TRUE, &vm, error))
    return FALSE;

  if (!vmdoc_get_bool(vm, P_VM, "StopOnReset", error) ||
      !vmdoc_get_object(vm, P_VM, "Chipset", &chipset, error) ||
      (chipset != NULL && !validate_kernel(chipset, error)))
    return FALSE;

  if (!vmdoc_get_object(vm, P_VM, "ComputeTopology", &topology, error))
    return FALSE;
  if (topology != NULL && (!vmdoc_get_object(topology, P_TOPOLOGY, "Memory", &memory, error) ||
                           !vmdoc_get_object(topology, P_TOPOLOGY, "Processor", &proc, error) ||
                           !vmdoc_get_object(topology, P_TOPOLOGY, "Numa", &numa, error) ||
                           (memory != NULL && !validate_memory(memory, error)) ||
                           (proc != NULL && !validate_processor(proc, error))))
    return FALSE;

  if (!vmdoc_get_object(vm, P_VM, "Devices", &devices, error))
    return FALSE;
  if (devices != NULL) {
    if (!vmdoc_get_object(devices, P_DEVICES, "Scsi", &sub, error) ||
        (sub != NULL && !validate_scsi(sub, &virtio_devices, error)) ||
        !vmdoc_get_object(devices, P_DEVICES, "Plan9", &sub, error) ||
        (sub != NULL && !validate_plan9(sub, &virtio_devices, error)) ||
        !vmdoc_get_object(devices, P_DEVICES, "NetworkAdapters", &sub, error) ||
        (sub != NULL && !validate_nics(sub, &virtio_devices, error)) ||
        !vmdoc_get_object(devices, P_DEVICES, "ComPorts", &sub, error))
      return FALSE;
  }

  if (!vmdoc_get_object(vm, P_VM, "StorageQoS", &qos, error) ||
      (qos != NULL && (!vmdoc_get_uint(qos, P_VM ".StorageQoS", "IopsMaximum", FALSE, 0, G_MAXINT32,
                                       NULL, error) ||
                       !vmdoc_get_uint(qos, P_VM ".StorageQoS", "BandwidthMaximum", FALSE, 0,
                                       G_MAXINT32, NULL, error))))
    return FALSE;

  if (!vmdoc_get_object(vm, P_VM, "Ferry", &ferry, error) ||
      (ferry != NULL && !validate_ferry(ferry, &virtio_devices, error)))
    return FALSE;
  if (ferry != NULL)
    machine = json_string_value(json_object_get(ferry, "Machine"));
  if (machine == NULL)
    machine = FERRY_VM_DEFAULT_MACHINE;

  if (virtio_devices > FERRY_VM_MAX_VIRTIO_DEVICES)
    return vmdoc_invalid(
        error, P_DEVICES,
        "%u virtio devices (the entropy device and the mux ports count as one each, "
        "each SCSI controller, share and network adapter as one): at most %u",
        virtio_devices, FERRY_VM_MAX_VIRTIO_DEVICES);

  if (numa != NULL) {
    guint count = vmdoc_uint_or(vmdoc_lookup(proc, "Count", NULL), FERRY_VM_MAX_PROCESSOR_COUNT,
                                FERRY_VM_DEFAULT_PROCESSOR_COUNT);
    guint64 mb = vmdoc_uint_or(vmdoc_lookup(memory, "SizeInMB", NULL), FERRY_VM_MAX_MEMORY_MB,
                               FERRY_VM_DEFAULT_MEMORY_MB);
    const char *backing = json_string_value(vmdoc_lookup(memory, "Backing", NULL));
    gboolean physical = backing != NULL && g_str_equal(backing, "Physical");
    if (g_str_equal(machine, "microvm"))
      return vmdoc_invalid(error, P_NUMA,
                           "NUMA needs Machine q35 or pc (microvm has no ACPI SRAT)");
    if (!validate_numa(numa, count, mb, physical, nodes, error))
      return FALSE;
    json_t *per_node = vmdoc_lookup(proc, "NumaProcessorsSettings", "count_per_node", "max", NULL);
    if (json_is_integer(per_node) && nodes != NULL) {
      for (guint i = 0; i < nodes->len; i++)
        if (g_array_index(nodes, NumaNode, i).cpus > (guint)json_integer_value(per_node))
          return vmdoc_invalid(
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
  return vmdoc_validate(doc->root, nodes, error);
}
