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
  /* a migration destination (sandbox-migrate.c) */
  SB_STARTING_INCOMING, /* QEMU starting, paused for the incoming stream */
  SB_INCOMING,          /* waiting for, or receiving, the memory */
  SB_RESUMING,          /* the guest runs; waiting for the agent's bridge dial */
} SandboxState;

/* Where a migration is (sandbox-migrate.c); the source's steps in order, then the
 * destination's. */
typedef enum {
  SB_MIG_NONE,
  SB_MIG_SOURCE_PREPARED,
  SB_MIG_SOURCE_FLUSHING,
  SB_MIG_SOURCE_TRANSFERRING,
  SB_MIG_SOURCE_HANDED_OVER,
  SB_MIG_DESTINATION_WAITING,
  SB_MIG_DESTINATION_STARTING_TRANSFER,
  SB_MIG_DESTINATION_TRANSFERRING,
  SB_MIG_DONE, /* the source after its cleanup */
} SandboxMigration;

/* A completion reported from an idle the sandbox owns. */
typedef struct {
  FerrySandbox *sandbox;
  GSource *source;
  FerrySandboxDoneFunc done;
  gpointer user_data;
  GError *error;
} Report;

/* A source's transfer waiting for the host mux's flush (sandbox-migrate.c). */
typedef struct Transfer {
  FerrySandbox *sandbox;
  int fd;
  gint64 deadline;
  GSource *timer;
  FerrySandboxDoneFunc done;
  gpointer user_data;
} Transfer;

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
  /* live migration (sandbox-migrate.c) */
  SandboxMigration mig;
  gboolean transfer_completed; /* OFFLINE_DONE seen, no failure since */
  gboolean guest_ran;          /* a destination told its QEMU to run the guest */
  Transfer *transfer;          /* a source waiting for its flush */
  /* A source's VM step in flight (the prepare's initialize, the transfer's start): a
   * recover asked meanwhile waits for it (recover_pending, with its callback). */
  gboolean mig_step_busy;
  gboolean recover_pending;
  FerrySandboxDoneFunc recover_done;
  gpointer recover_data;
  int incoming_fd;        /* destination: the agent port's client, attached on resume */
  GPtrArray *restore_ids; /* destination: containers to reopen (char *) */
  guint32 restore_next_port;
  guint64 restore_next_id;
  FerrySandboxDoneFunc resume_done;
  gpointer resume_data;
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

/* sandbox.c, for sandbox-migrate.c */
FerryVmDoc *sandbox_doc(FerrySandbox *sandbox, GError **error);
/* The mux, its stdio ports and the bridge listener (before the VM's port is attached). */
gboolean sandbox_transport_new(FerrySandbox *sandbox, GError **error);
void sandbox_on_vm_gone(FerryVm *vm, const GError *error, gpointer user_data);
gboolean sandbox_on_resume_timeout(gpointer user_data);

/* sandbox-migrate.c, for sandbox.c */
void sandbox_on_vm_note(FerryVm *vm, const FerryVmNotification *n, gpointer user_data);
/* The agent's bridge dial on a resuming destination: the guest connection exists and
 * has not negotiated yet. */
void sandbox_resume_bridge(FerrySandbox *sandbox);
/* The renegotiation's answer. */
void sandbox_resume_connected(FerrySandbox *sandbox, const GError *error);

/* sandbox-root.c, for sandbox-migrate.c: the disks ({digest, lun}) and roots ({id,
 * digests}) into the two arrays; and their adoption on a destination, each disk into
 * `doc` from `images` (digest -> this host's image path). */
void sandbox_roots_describe(FerrySandbox *sandbox, json_t *disks, json_t *roots);
gboolean sandbox_roots_adopt(FerrySandbox *sandbox, FerryVmDoc *doc, json_t *description,
                             GHashTable *images, GError **error);
