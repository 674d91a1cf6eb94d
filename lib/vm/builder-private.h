/*
 * The VM document's insides, shared by the builder's files (lib/vm/): builder.c (the
 * document, its setters, JSON in and out, and the JSON helpers below),
 * builder-validate.c (validation), builder-render.c (the QEMU command line) and
 * host-probe.c (the accelerator and the TSC). Private to lib/vm.
 */
#pragma once

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

#define P_VM "VirtualMachine"
#define P_TOPOLOGY P_VM ".ComputeTopology"
#define P_MEMORY P_TOPOLOGY ".Memory"
#define P_PROCESSOR P_TOPOLOGY ".Processor"
#define P_NUMA P_TOPOLOGY ".Numa"
#define P_DEVICES P_VM ".Devices"
#define P_FERRY P_VM ".Ferry"
#define P_KERNEL P_VM ".Chipset.LinuxKernelDirect"

/* The guest's NUMA nodes as rendered: from Numa.Settings (by VirtualNodeNumber), or
 * VirtualNodeCount nodes sharing processors and memory evenly. */
typedef struct {
  guint node;
  guint cpus;
  guint64 mb;
  gboolean physical; /* prealloc'd */
} NumaNode;

/* JSON kinds a field may be required to have. */
typedef enum { K_OBJECT, K_ARRAY, K_STRING, K_INTEGER, K_BOOLEAN } Kind;

G_GNUC_NULL_TERMINATED json_t *vmdoc_lookup(json_t *root, ...);

guint vmdoc_uint_or(json_t *v, guint max, guint fallback);

gint64 vmdoc_int_of(json_t *v);

gboolean vmdoc_is_decimal(const char *s);

GPtrArray *vmdoc_sorted_keys(json_t *obj);

gboolean vmdoc_invalid(GError **error, const char *path, const char *fmt, ...) G_GNUC_PRINTF(3, 4);

char *vmdoc_member_path(const char *path, const char *key);

char *vmdoc_key_path(const char *path, const char *key);

char *vmdoc_index_path(const char *path, gsize i);

gboolean vmdoc_check_name(const char *path, const char *name, gsize max, GError **error);

gboolean vmdoc_check_mac(const char *path, const char *text, GError **error);

char *vmdoc_canonical_mac(const char *text);

gboolean vmdoc_get(json_t *obj, const char *path, const char *key, Kind kind, gboolean required,
                   json_t **out, GError **error);

gboolean vmdoc_get_object(json_t *obj, const char *path, const char *key, json_t **out,
                          GError **error);

gboolean vmdoc_get_string(json_t *obj, const char *path, const char *key, gboolean required,
                          const char **out, GError **error);

gboolean vmdoc_get_bool(json_t *obj, const char *path, const char *key, GError **error);

gboolean vmdoc_get_uint(json_t *obj, const char *path, const char *key, gboolean required,
                        guint64 min, guint64 max, guint64 *out, GError **error);

gboolean vmdoc_get_enum(json_t *obj, const char *path, const char *key, const char *const *values,
                        const char **out, GError **error);

gboolean vmdoc_get_path(json_t *obj, const char *path, const char *key, gboolean required,
                        const char **out, GError **error);

gboolean vmdoc_validate(json_t *root, GArray *nodes, GError **error);

json_t *vmdoc_mux_ports(const FerryVmDoc *doc);

json_t *vmdoc_shares_of(const FerryVmDoc *doc);

/* ------------------------------------------ SCSI disks (builder-render.c) -- */

/* The throttle group every disk joins when StorageQoS sets a limit. */
#define FERRY_VM_STORAGE_QOS_GROUP "storage-qos"

/* The position of SCSI controller `controller` in the rendered order (its QEMU id is
 * scsi<index>); FALSE when the document has no such controller. */
gboolean vmdoc_scsi_controller_index(const FerryVmDoc *doc, const char *controller, guint *index);
/* "disk<c>-<lun>": the scsi-hd's QEMU id, the prefix of its block nodes' names. */
char *vmdoc_scsi_disk_id(guint c, const char *lun);
/* The block nodes of attachment `disk` (LUN `lun`, controller position `c`), bottom
 * first, as blockdev-add arguments: the file (or host_device) node "<id>-file", with
 * StorageQoS a throttle node "<id>-qos", and the format node "<id>-format" the device
 * uses. New reference. */
json_t *vmdoc_scsi_disk_nodes(const FerryVmDoc *doc, guint c, const char *lun, json_t *disk);
/* The scsi-hd as device_add arguments (id "<id>", on bus scsi<c>.0, channel 0, target 0,
 * the LUN). New reference. */
json_t *vmdoc_scsi_disk_device(guint c, const char *lun);
