/* The sandbox's internals, shared by sandbox.c and sandbox-root.c. Private to
 * lib/sandbox. */
#pragma once

#include "ferry/mux.h"
#include "ferry/sandbox.h"

typedef enum {
  SB_CREATED,
  SB_STARTING,
  SB_RUNNING,
  SB_STOPPING,
  SB_STOPPED, /* stopped, failed to start, or the VM died */
} SandboxState;

/* A completion reported from an idle the sandbox owns. */
typedef struct {
  FerrySandbox *sandbox;
  GSource *source;
  FerrySandboxDoneFunc done;
  gpointer user_data;
  GError *error;
} Report;

/* A create in flight: the guest's answer comes back here. */
typedef struct {
  FerrySandbox *sandbox; /* NULL once the sandbox is being freed */
  char *id;
  FerrySandboxDoneFunc done;
  gpointer user_data;
} CreateOp;

struct FerrySandbox {
  GMainContext *context;
  char *id;
  char *state_dir;
  char *kernel, *initrd, *kernel_args;
  guint memory_mb, cpus, boot_timeout_ms;
  char *qemu_binary;
  FerryVmOptions vm_options;
  FerrySandboxHandlers handlers;
  gpointer user_data;

  SandboxState state;
  FerryVm *vm;
  FerryMux *mux;
  FerryStdioPorts *ports;
  FerryGuestConnection *gc;
  GSource *boot_timer;
  GError *start_error; /* why the start failed, once known (the VM is terminated first) */
  FerrySandboxDoneFunc start_done;
  gpointer start_data;
  FerrySandboxDoneFunc stop_done;
  gpointer stop_data;
  GHashTable *containers; /* id -> FerryGuestContainer (a reference) */
  GList *reports;         /* Report */
  GList *creates;         /* CreateOp in flight */
  /* container roots (sandbox-root.c) */
  GHashTable *disks; /* digest -> SandboxDisk */
  GHashTable *roots; /* container id -> SandboxRoot */
  GQueue root_ops;   /* RootOp: one runs at a time, the head */
};

/* Run `done` from the loop with a copy of `error` (NULL done: nothing). */
void sandbox_report_later(FerrySandbox *sandbox, FerrySandboxDoneFunc done, gpointer user_data,
                          const GError *error);

void sandbox_roots_init(FerrySandbox *sandbox);
/* Without callbacks: the sandbox is being freed (the VM goes with it). */
void sandbox_roots_free(FerrySandbox *sandbox);
