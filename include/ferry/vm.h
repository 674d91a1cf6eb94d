/*
 * The VM manager: the host side of one utility VM (hcsshim's internal/vm/vmmanager on
 * QEMU). It starts QEMU from a VM document (vm-builder.h), speaks QMP to it, runs the
 * lifecycle (start, pause, resume, terminate, wait, exit error, properties) and carries
 * the VM's half of a live migration: the destination's incoming start, the source's
 * initialisation from the migration options, the transfer over a connected socket,
 * finalize STOP / RESUME, cancel, and the notification stream of migration phases.
 *
 * Everything is asynchronous on the GLib main loop; a callback never runs from inside
 * the call that started the operation. The VM keeps no guest state (that is the guest
 * manager's, guest.h) and no sandbox state (the controllers').
 */
#pragma once

#include <glib.h>
#include <jansson.h>

#include "ferry/vm-builder.h"

G_BEGIN_DECLS

typedef struct FerryVm FerryVm;

typedef enum {
  FERRY_VM_CREATED,  /* not started */
  FERRY_VM_STARTING, /* QEMU spawned, QMP not ready yet */
  FERRY_VM_PAUSED,   /* vCPUs stopped (prelaunch, paused, incoming, migrated...) */
  FERRY_VM_RUNNING,
  FERRY_VM_EXITED, /* QEMU is gone; ferry_vm_exit_error() says why if it was not asked */
} FerryVmState;

const char *ferry_vm_state_name(FerryVmState state);

typedef struct {
  const char *qemu_binary; /* NULL: qemu-system-x86_64 (on PATH) */
  FerryVmAccel accel;      /* AUTO: ferry_vm_detect_accel() */
  guint64 tsc_khz;         /* 0: the host's (microvm's tsc_early_khz) */
} FerryVmOptions;

/* A VM from `doc` (copied) whose sockets, console log and QEMU log live in `state_dir`
 * (created if missing). Nothing runs until ferry_vm_start(). The document is validated
 * here: INVALID_ARGUMENT / FAILED_PRECONDITION with the reason. */
FerryVm *ferry_vm_new(const char *id, const FerryVmDoc *doc, const char *state_dir,
                      const FerryVmOptions *options, GError **error);
/* Kills QEMU (by its pid) if it still runs, then frees. */
void ferry_vm_free(FerryVm *vm);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FerryVm, ferry_vm_free)

const char *ferry_vm_get_id(FerryVm *vm);
FerryVmState ferry_vm_get_state(FerryVm *vm);
const FerryVmDoc *ferry_vm_get_doc(FerryVm *vm);
FerryVmAccel ferry_vm_get_accel(FerryVm *vm);
/* QEMU's pid once spawned, else 0. */
GPid ferry_vm_get_pid(FerryVm *vm);
/* The unix socket of virtio-serial port `name` (QEMU listens on it): newly allocated. */
char *ferry_vm_port_socket(FerryVm *vm, const char *name);
/* The guest's serial console, as QEMU writes it. */
const char *ferry_vm_console_path(FerryVm *vm);
/* QEMU's own stderr (its errors and warnings). */
const char *ferry_vm_log_path(FerryVm *vm);

typedef void (*FerryVmDoneFunc)(FerryVm *vm, const GError *error, gpointer user_data);

/* Spawn QEMU, connect QMP and let the vCPUs run. Fails with the reason from QEMU's own
 * log when it exits early. */
void ferry_vm_start(FerryVm *vm, FerryVmDoneFunc done, gpointer user_data);
void ferry_vm_pause(FerryVm *vm, FerryVmDoneFunc done, gpointer user_data);
void ferry_vm_resume(FerryVm *vm, FerryVmDoneFunc done, gpointer user_data);
/* Ask QEMU to quit, SIGKILL it (by pid) if it has not exited within a few seconds;
 * `done` runs once it has exited. Terminating an exited VM succeeds at once. */
void ferry_vm_terminate(FerryVm *vm, FerryVmDoneFunc done, gpointer user_data);
/* Runs once QEMU has exited (at once, from the main loop, if it already has). */
void ferry_vm_wait(FerryVm *vm, FerryVmDoneFunc done, gpointer user_data);
/* Why QEMU exited when nobody asked it to (a crash, a guest poweroff is not an error),
 * else NULL. Borrowed. */
const GError *ferry_vm_exit_error(FerryVm *vm);

/* Properties: {"Id", "State", "Status" (QEMU's run state), "Accelerator", "MemoryMB",
 * "ProcessorCount", "Pid", "Migration": query-migrate's answer when there is one}. */
typedef void (*FerryVmPropertiesFunc)(FerryVm *vm, json_t *properties, const GError *error,
                                      gpointer user_data);
void ferry_vm_properties(FerryVm *vm, FerryVmPropertiesFunc done, gpointer user_data);

/* ----------------------------------------------------------------- SCSI disks -- */

/* How long a hot-remove waits for QEMU's DEVICE_DELETED after device_del. */
#define FERRY_VM_DEVICE_DELETED_LIMIT_MS 10000u

/*
 * Hot-add the raw image `path` (copied), read-only, as LUN `lun` of SCSI controller
 * `controller` (a controller id of the VM document; the controller must have been there
 * when the VM started). QMP blockdev-add of the disk's nodes (a file node, a throttle
 * node when the document sets StorageQoS, the raw format node), then device_add of a
 * scsi-hd: the same objects and names the document renders for a cold-plugged disk
 * (docs/vm-builder.md), so on success the disk is recorded in the VM's document
 * (ferry_vm_get_doc) and a migration's destination built from it has the same machine.
 * Works on every machine (virtio-scsi hot-plug is the controller's, on PCI or mmio).
 * The guest sees the disk appear at host <controller's>, channel 0, target 0, LUN `lun`.
 *
 * Errors (from the main loop): FAILED_PRECONDITION when the VM is not running or paused,
 * during a migration, or while another add/remove of that LUN runs; the document's
 * errors (NOT_FOUND for an unknown controller, ALREADY_EXISTS for a LUN in use,
 * INVALID_ARGUMENT for a relative path or a LUN over 63); NOT_FOUND when `path` does not
 * exist, INVALID_ARGUMENT when it is not a regular file or block device; QEMU's errors
 * ("vm <id>: add SCSI disk <path> at <controller>/<lun>: blockdev-add: ..."). A failed
 * add deletes the nodes it had created; the document is then unchanged.
 */
void ferry_vm_scsi_add_disk(FerryVm *vm, const char *controller, guint lun, const char *path,
                            FerryVmDoneFunc done, gpointer user_data);
/*
 * Hot-remove the disk at LUN `lun` of `controller` (hot-added or cold-plugged alike):
 * device_del, then wait for QEMU's DEVICE_DELETED (at most
 * FERRY_VM_DEVICE_DELETED_LIMIT_MS, DEADLINE_EXCEEDED then, and the disk stays recorded),
 * then blockdev-del of its nodes, top first. The disk leaves the document once the device
 * is gone. The guest should have stopped using it (unmounted) first: the guest's SCSI
 * layer drops the device as it goes. Errors as for the add; NOT_FOUND for a LUN without a
 * disk.
 */
void ferry_vm_scsi_remove_disk(FerryVm *vm, const char *controller, guint lun, FerryVmDoneFunc done,
                               gpointer user_data);

/* ------------------------------------------------------------------ migration -- */

/* hcsschema MigrationInitializeOptions, as the VM uses them. Zero means "not set". */
typedef struct {
  /* MemoryTransferThrottleParams */
  gboolean skip_throttling;          /* no auto-converge */
  double throttling_scale;           /* 1-100: cpu-throttle-increment */
  guint minimum_throttle_percentage; /* cpu-throttle-initial */
  guint maximum_passes;              /* past it: post-copy, or cancel (see below) */
  guint target_blackout_ms;          /* downtime-limit */
  guint blackout_threshold_ms;       /* the blackout above which cancel_if_... cancels */
  /* CompressionSettings */
  guint compression_threads; /* >0: QEMU's compress capability with this many threads */
  gboolean cancel_if_blackout_threshold_exceeds;
  /* Our extensions */
  guint64 max_bandwidth; /* bytes/s; 0: 1 GiB/s */
  gboolean no_postcopy;  /* never switch to post-copy (non-convergence then cancels) */
  /* TLS on the memory stream, by QEMU itself (docs/tls.md): a directory in QEMU's
   * tls-creds-x509 layout (the source uses its client-*.pem, the destination its
   * server-*.pem; both ca-cert.pem, and each verifies the other). NULL: plain. Both
   * sides must agree. The source names the destination by tls_hostname (NULL: "ferry"):
   * QEMU needs one on an fd stream. Copied. */
  const char *tls_dir;
  const char *tls_hostname;
} FerryVmMigrationOptions;

typedef enum {
  FERRY_VM_ORIGIN_SOURCE = 1,
  FERRY_VM_ORIGIN_DESTINATION = 2,
} FerryVmOrigin;

/* The phases, numbered as hcsshim's Phase enum. */
typedef enum {
  FERRY_VM_PHASE_SETUP_DONE = 1,
  FERRY_VM_PHASE_TRANSFER_IN_PROGRESS = 2,
  FERRY_VM_PHASE_BLACKOUT_STARTED = 3,
  FERRY_VM_PHASE_OFFLINE_DONE = 4,
  FERRY_VM_PHASE_BLACKOUT_EXITED = 5,
  FERRY_VM_PHASE_DONE = 6,
  FERRY_VM_PHASE_RECOVERY_DONE = 7,
  FERRY_VM_PHASE_FAILED = 8,
} FerryVmPhase;

/* hcsshim's PhaseState. */
typedef enum {
  FERRY_VM_RESULT_SUCCESS = 1,
  FERRY_VM_RESULT_CANCELLED = 2,
  FERRY_VM_RESULT_GUEST_CANCELLED = 3,
  FERRY_VM_RESULT_SOURCE_FAILED = 4,
  FERRY_VM_RESULT_DESTINATION_FAILED = 5,
  FERRY_VM_RESULT_RECOVERY_FAILED = 6,
} FerryVmResult;

typedef struct {
  FerryVmOrigin origin;
  FerryVmPhase phase;
  FerryVmResult result;
  gint64 time_us;          /* wall clock, microseconds since the epoch */
  guint pass;              /* TRANSFER_IN_PROGRESS: the pass number */
  guint64 blackout_ms;     /* BLACKOUT_EXITED: how long the guest did not run */
  gint64 blackout_stop_us; /* BLACKOUT_EXITED: when it ran again */
  gboolean postcopy;       /* BLACKOUT_STARTED: the switch to post-copy */
  const char *message;     /* FAILED: why (borrowed) */
} FerryVmNotification;

const char *ferry_vm_phase_name(FerryVmPhase phase);
const char *ferry_vm_result_name(FerryVmResult result);

typedef void (*FerryVmNotifyFunc)(FerryVm *vm, const FerryVmNotification *n, gpointer user_data);
/* Set before any migration call so nothing is missed (hcsshim: subscribe first). */
void ferry_vm_set_notify_func(FerryVm *vm, FerryVmNotifyFunc func, gpointer user_data);

/* Destination: start QEMU paused, waiting for an incoming migration; `options` (may be
 * NULL) must match the source's where both sides need them (post-copy, compression).
 * The VM stays paused after the transfer until ferry_vm_migration_finalize(RESUME). */
void ferry_vm_start_incoming(FerryVm *vm, const FerryVmMigrationOptions *options,
                             FerryVmDoneFunc done, gpointer user_data);
/* Source: enter migration mode with these options (capabilities and parameters). After
 * it the VM takes only migration calls (pause/resume refuse with FAILED_PRECONDITION). */
void ferry_vm_migration_initialize(FerryVm *vm, const FerryVmMigrationOptions *options,
                                   FerryVmDoneFunc done, gpointer user_data);
/* Both sides: hand QEMU the memory stream's connected socket `fd` (a copy is passed with
 * getfd; the caller keeps its own) and start the transfer (`migrate fd:` on the source,
 * `migrate-incoming fd:` on the destination). `done` runs when the transfer has begun;
 * the phases follow as notifications. */
void ferry_vm_migration_transfer(FerryVm *vm, int fd, FerryVmDoneFunc done, gpointer user_data);

typedef enum {
  FERRY_VM_FINALIZE_STOP = 1,
  FERRY_VM_FINALIZE_RESUME = 2,
} FerryVmFinalize;

/* Source STOP: the migration succeeded, QEMU is ended (DONE). Source RESUME: roll back,
 * the guest runs here again (RECOVERY_DONE). Destination RESUME: run the migrated guest
 * (BLACKOUT_EXITED, DONE). Destination STOP: discard it. `blackout_started_us` (the
 * source's BLACKOUT_STARTED time, 0 if unknown) lets the destination report the whole
 * blackout; unknown, it counts from the end of its incoming stream. */
void ferry_vm_migration_finalize(FerryVm *vm, FerryVmFinalize action, gint64 blackout_started_us,
                                 FerryVmDoneFunc done, gpointer user_data);
/* Stop the transfer (migrate_cancel on the source; the destination's QEMU is ended). The
 * source keeps running; FAILED with CANCELLED follows. */
void ferry_vm_migration_cancel(FerryVm *vm, FerryVmDoneFunc done, gpointer user_data);

/* QEMU's figures for the migration (query-migrate; on a source, the memory it sent). */
typedef struct {
  gboolean valid;               /* a query answered with RAM figures */
  guint64 transferred;          /* bytes sent */
  guint64 remaining;            /* bytes still to send in this pass */
  guint64 total;                /* the guest's RAM */
  double mbps;                  /* the last measured rate, megabits per second */
  guint64 dirty_pages_rate;     /* pages per second */
  guint64 passes;               /* dirty-sync-count: passes over memory begun */
  guint64 expected_downtime_ms; /* QEMU's estimate, while transferring */
  guint64 downtime_ms;          /* once completed */
} FerryVmMigrationStats;

/* Refresh the figures (reset when a migration is initialized or an incoming one
 * starts); `done` runs once QEMU answered. FAILED_PRECONDITION without a migration. */
void ferry_vm_migration_query(FerryVm *vm, FerryVmDoneFunc done, gpointer user_data);
/* The figures as of the last query that answered. */
const FerryVmMigrationStats *ferry_vm_migration_get_stats(FerryVm *vm);

G_END_DECLS
