/*
 * containerd's Task API (containerd.task.v2.Task, and .v3 with the same messages) over
 * one Ferry sandbox (sandbox.h): what containerd-shim-ferry-v1's daemon serves
 * (docs/shim.md). The sandbox's first container boots the VM; each container's root is
 * built into read-only EROFS layer images (rootfs.h) attached to the VM; processes run
 * in the guest with their stdio relayed to containerd's FIFOs, log files or logging
 * binaries; task events go to containerd (shim-events.h) in containerd's order.
 *
 * Threading: the thread-default GMainContext at creation.
 */
#pragma once

#include <glib.h>
#include <jansson.h>

#include "ferry/ttrpc.h"
#include "ferry/vm.h"

G_BEGIN_DECLS

typedef struct FerryTaskService FerryTaskService;

typedef struct {
  const char *namespace;      /* containerd's namespace (events); NULL: "default" */
  const char *sandbox_id;     /* the group (io.kubernetes.cri.sandbox-id, or the first id) */
  const char *state_dir;      /* the sandbox's QEMU sockets and logs; required */
  const char *image_cache;    /* layer images, shared by sandboxes; required */
  const char *kernel;         /* the guest image; required */
  const char *initrd;         /* required */
  const char *events_address; /* containerd's ttrpc socket; NULL: no events */
  guint memory_mb;            /* 0: the sandbox default */
  guint cpus;                 /* 0: 1 */
  guint boot_timeout_ms;      /* 0: the sandbox default */
  guint scratch_mb;           /* each container's writable layer in guest RAM; 0: default */
  FerryVmOptions vm;          /* QEMU binary, accelerator */
} FerryTaskServiceConfig;

typedef struct {
  /* Shutdown was asked for and no task is left: the program may exit. */
  void (*shutdown)(FerryTaskService *service, gpointer user_data);
} FerryTaskServiceHandlers;

/* INVALID_ARGUMENT naming a missing field. Nothing starts until a Create. */
FerryTaskService *ferry_task_service_new(const FerryTaskServiceConfig *config,
                                         const FerryTaskServiceHandlers *handlers,
                                         gpointer user_data, GError **error);
/* Stops the sandbox's VM (QEMU killed by pid) and drops every task without callbacks. */
void ferry_task_service_free(FerryTaskService *service);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FerryTaskService, ferry_task_service_free)

/* Register the Task service on `server` under containerd.task.v2.Task and .v3.Task. */
gboolean ferry_task_service_register(FerryTaskService *service, FerryTtrpcServer *server,
                                     GError **error);

/* QEMU's pid while the sandbox's VM runs, else 0 (the shim records it for `delete`). */
GPid ferry_task_service_vm_pid(FerryTaskService *service);
/* Tasks known now. */
guint ferry_task_service_task_count(FerryTaskService *service);

/* ------------------------------------------------------------ VM sizing -- */

/* What a VM needs beyond its containers' memory limits: the guest kernel, the agent,
 * crun and their page cache, measured on the guest image (docs/shim.md, sizing). */
#define FERRY_SHIM_VM_OVERHEAD_MB 128u

/*
 * A sandbox's VM size from its first container's OCI spec (borrowed; may be NULL), in
 * this order: the annotations io.ferry.vm.memory-mb / io.ferry.vm.cpus; else the
 * spec's linux.resources (memory.limit rounded up to MiB plus
 * FERRY_SHIM_VM_OVERHEAD_MB; cpu.quota / cpu.period rounded up); else the config's
 * values (0: the sandbox defaults). With `tcg` the vCPUs stay 1: a TCG guest with more
 * than one vCPU does not migrate reliably (docs/vm-builder.md). Pure.
 */
void ferry_shim_vm_size(json_t *spec, guint config_memory_mb, guint config_cpus, gboolean tcg,
                        guint *memory_mb, guint *cpus);

G_END_DECLS
