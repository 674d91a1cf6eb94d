/*
 * The VM manager's insides, shared by its two halves (lib/vm/): vm.c (the lifecycle:
 * start, QMP, runstate, terminate, wait, properties, and the helpers below) and
 * vm-migration.c (the migration: incoming start, initialise, transfer, the QEMU events
 * of a migration, finalize, cancel). Private to lib/vm.
 */
#pragma once

#include <jansson.h>

#include "ferry/qmp.h"
#include "ferry/vm.h"

#define CONNECT_RETRY_MS 10u
#define CONNECT_LIMIT_MS 30000u
#define QUIT_GRACE_MS 5000u
#define POSTCOPY_POLL_MS 5u
#define DEFAULT_BANDWIDTH (1ull << 30)
#define MIGRATION_FD_NAME "ferry-migration"

typedef struct {
  FerryVm *vm;
  FerryVmDoneFunc done;
  gpointer user_data;
} Op;

typedef struct VmDiskOp VmDiskOp;

typedef enum {
  MIG_NONE,
  MIG_READY, /* source initialised / destination waiting for its stream */
  MIG_TRANSFERRING,
  MIG_COMPLETED, /* the stream is complete (source: sent; destination: received) */
  MIG_FAILED,    /* failed or cancelled; the source runs again */
} MigState;

struct FerryVm {
  char *id;
  GMainContext *context; /* thread-default at creation: every source of the VM */
  GQueue later;          /* Later: work queued for the main loop, owned by the VM */
  FerryVmDoc *doc;
  char *state_dir;
  char *qemu_binary;
  FerryVmAccel accel;
  guint64 tsc_khz;
  char *qmp_path;
  char *log_path;
  char *console_path;

  FerryVmState state;
  GPid pid;
  GSource *child_watch;
  gboolean quit_requested;
  GError *exit_error;
  GArray *waiters; /* Op */
  GSource *kill_timer;
  FerryQmp *qmp;

  /* start */
  Op *start_op;
  gboolean start_running; /* cont once QMP is up */
  gboolean start_incoming;
  GSource *connect_timer;
  gint64 connect_until;

  /* migration */
  FerryVmOrigin origin; /* 0: not migrating */
  MigState mig;
  FerryVmMigrationOptions mopts;
  FerryVmNotifyFunc notify;
  gpointer notify_data;
  gboolean setup_done_sent;
  gboolean blackout_sent;
  gboolean postcopy_requested;
  gboolean postcopy_active;
  gboolean convergence_handled;
  gboolean cancel_requested;
  FerryVmMigrationStats stats;  /* the last query-migrate's */
  char *tls_dir, *tls_hostname; /* mopts' strings, owned */
  gboolean tls_object;          /* the tls-creds-x509 object exists in QEMU */
  gint64 blackout_started_us;   /* destination: the start of the blackout it reports */
  gint64 incoming_done_us;
  Op *finalize_op;
  FerryVmFinalize finalize_action;
  GSource *poll_timer; /* destination: waiting for post-copy's device state */
  GQueue disk_ops;     /* VmDiskOp: SCSI disk hot-adds and removes in progress */
  gboolean freeing;
};

/* A sequence of QMP commands run one after the other; the first error ends it. */
typedef struct {
  FerryVm *vm;
  GPtrArray *commands; /* json_t {"execute", "arguments"} */
  guint next;
  Op *op;
  void (*then)(FerryVm *vm, Op *op); /* after the last success, instead of finishing op */
  void (*failed)(FerryVm *vm);       /* before op finishes with the first error */
  int fd;                            /* passed with the first command (-1: none); borrowed */
} Seq;

/* ---------------------------------------------------- vm.c: helpers -- */

/* An operation's callback, finished once by vm_op_finish() (not while freeing). */
Op *vm_op_new(FerryVm *vm, FerryVmDoneFunc done, gpointer user_data);
void vm_op_finish(Op *op, const GError *error);
/* Finish from the main loop with `error` (taken; NULL: success). */
void vm_op_finish_later(FerryVm *vm, FerryVmDoneFunc done, gpointer user_data, GError *error);
/* Run `run` from the main loop; owned by the VM, dropped (run with vm->freeing) by free. */
void vm_later(FerryVm *vm, void (*run)(FerryVm *vm, gpointer data), gpointer data);
GError *vm_precondition(FerryVm *vm, const char *what, const char *why);

Seq *vm_seq_new(FerryVm *vm, Op *op);
void vm_seq_add(Seq *s, const char *command, json_t *arguments);
void vm_seq_step(Seq *s);
/* A command whose answer nobody waits for. */
void vm_qmp_fire(FerryVm *vm, const char *command, json_t *arguments);

/* Run QEMU paused (incoming: waiting for a migration stream); `op` finishes the start. */
void vm_spawn(FerryVm *vm, gboolean incoming, Op *op);
gboolean vm_in_migration_mode(FerryVm *vm);

/* ------------------------------------------- vm-migration.c: hooks -- */

void vm_notify(FerryVm *vm, FerryVmNotification n);
/* QEMU exited: end a finalize STOP, or fail the migration in progress. */
void vm_killed(FerryVm *vm);
/* The migration capabilities both sides set before a transfer. */
json_t *vm_migration_capabilities(FerryVm *vm);
/* The memory stream's TLS (or none), added to the sequence setting the migration up. */
void vm_migration_tls(FerryVm *vm, Seq *s);
/* Every QMP event of the VM. */
void vm_on_qmp_event(FerryQmp *qmp, const char *event, json_t *data, gint64 ts, gpointer ud);

/* ------------------------------------------------ vm-disk.c: hooks -- */

/* Every QMP event (DEVICE_DELETED ends a hot-remove's wait). */
void vm_disks_on_event(FerryVm *vm, const char *event, json_t *data);
/* QEMU exited: fail the removes still waiting for DEVICE_DELETED. */
void vm_disks_qemu_exited(FerryVm *vm);
/* The VM is being freed (after its QMP connection): drop every op, calling nobody. */
void vm_disks_free(FerryVm *vm);
