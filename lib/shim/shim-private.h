/* What lib/shim's files share. Private to lib/shim. */
#pragma once

#include <glib.h>
#include <jansson.h>

#include "containerd/types/task/task.pb-c.h"
#include "ferry/cmd.h"
#include "ferry/migration-session.h"
#include "ferry/rootfs.h"
#include "ferry/sandbox.h"
#include "ferry/shim-events.h"
#include "ferry/task-service.h"
#include "ferry/v1/sandbox_state.pb-c.h"

/* A process's stdio, opened from containerd's names (stdio.c). */
typedef struct {
  int fds[3];  /* stdin (read), stdout, stderr (write); -1: none */
  GPid logger; /* a binary:// logger we started, else 0 */
} ShimStdio;

/* Open `in`, `out`, `err` as containerd names them ("" or NULL: none). `id` and `ns`
 * go to a binary:// logger's environment. On failure nothing stays open. */
gboolean shim_stdio_open(ShimStdio *io, const char *id, const char *ns, const char *in,
                         const char *out, const char *err, GError **error);
/* Close what the relays have not taken (fds still >= 0). */
void shim_stdio_close(ShimStdio *io);
/* Reap a binary:// logger (it exits at the end of its input), killing it if it lingers. */
void shim_stdio_stop_logger(ShimStdio *io);

/* ---- the Task service's tables (task-service.c), shared with migration.c ---- */

typedef enum {
  PROC_CREATED = CONTAINERD__V1__TYPES__STATUS__CREATED,
  PROC_RUNNING = CONTAINERD__V1__TYPES__STATUS__RUNNING,
  PROC_STOPPED = CONTAINERD__V1__TYPES__STATUS__STOPPED,
} ProcStatus;

typedef struct Task Task;

typedef struct {
  Task *task;
  char *exec_id; /* "" for the init */
  char *in, *out, *err;
  gboolean terminal;
  json_t *spec; /* the OCI process */
  FerryCmd *cmd;
  guint32 pid;
  ProcStatus status;
  gboolean starting;
  guint32 exit_status;
  gint64 exited_at_us;
  gboolean exit_published;
  ShimStdio io;
  GPtrArray *waiters; /* FerryTtrpcCall, answered at the exit */
  /* A process bound on a migration destination: reopened from this on resume. */
  gboolean imported;
  gboolean exec_bound; /* an exec'd one given this host's stdio by a Task.Exec */
  FerryGuestMigrationState ms;
  gboolean stream_done[3];
} Process;

struct Task {
  FerryTaskService *svc;
  char *id;
  char *bundle;
  json_t *spec;
  gboolean ready; /* created in the guest */
  gboolean root_attached;
  Process *init;
  GHashTable *execs;      /* exec id -> Process */
  gboolean init_exit_due; /* the init exited; its TaskExit waits for the execs' */
  gboolean paused;
  gboolean deleting;
  gboolean oom_due; /* an OOM kill reported before TaskStart went out: published after it */
  char *source_id;  /* bound to this container of an imported state (migration.c) */
};

struct FerryTaskService {
  GMainContext *context;
  char *namespace, *sandbox_id, *state_dir, *image_cache, *kernel, *initrd, *events_address;
  char *qemu_binary;
  guint memory_mb, cpus, boot_timeout_ms, scratch_mb;
  FerryVmOptions vm;
  FerryTaskServiceHandlers handlers;
  gpointer user_data;
  FerrySandbox *sandbox;
  gboolean booting;
  GPtrArray *boot_waiters; /* CreateOp */
  GError *boot_error;
  FerryRootfsBuilder *builder;
  FerryShimEvents *events;
  GHashTable *tasks; /* id -> Task */
  gboolean shutdown_asked;
  GSource *shutdown_idle;
  struct ShimMigration *migration; /* migration.c; NULL until a Migration call */
};

typedef struct ShimMigration ShimMigration;
void shim_migration_free(ShimMigration *migration);

/* migration.c: hcsshim's Migration service and Ferry's Status on the shim's server. */
gboolean shim_migration_register(FerryTaskService *svc, FerryTtrpcServer *server, GError **error);
/* FALSE, replying FAILED_PRECONDITION to `call`, while a migration session forbids
 * changing containers (the Task API's mutating calls ask this first). */
gboolean shim_migration_allows_changes(FerryTaskService *svc, FerryTtrpcCall *call);
/* The sandbox's migration note, for the session's log. */
void shim_migration_on_note(FerryTaskService *svc, const FerryVmNotification *note);

/* ---- a migration destination (task-service.c <-> migration.c) ---- */

/* The annotations that make a Create bind an imported container (Ferry's, hcsshim's). */
#define SHIM_SOURCE_CONTAINER_ANNOTATION "io.ferry.migration.source-container-id"
#define SHIM_SOURCE_CONTAINER_ANNOTATION_HCS "io.microsoft.migration.source-container-id"
/* With it, a binding Create takes the container's layer images from this directory
 * (<hex of the digest>.erofs, each checked against its digest) instead of building them
 * from the bundle's rootfs: the images travelled from the source (docs/migration.md). */
#define SHIM_LAYER_DIR_ANNOTATION "io.ferry.migration.layer-dir"

/* The imported state's container `source_id` (borrowed), or NULL with the error: no
 * session has imported one (FAILED_PRECONDITION), no such container (NOT_FOUND), or it
 * is bound already (ALREADY_EXISTS). */
const Ferry__V1__Container *shim_migration_container_to_bind(FerryTaskService *svc,
                                                             const char *source_id, GError **error);
/* The container was bound: its layer images (digest -> path, copied). */
void shim_migration_container_bound(FerryTaskService *svc, const char *source_id,
                                    GHashTable *images);
/* A binding Create is in flight (begin) or answered (end): a Cancel meanwhile tears the
 * destination down only once it ended. */
void shim_migration_bind_begin(FerryTaskService *svc);
void shim_migration_bind_end(FerryTaskService *svc);
/* TRUE while a session is DestinationImported (a Task.Exec may bind then). */
gboolean shim_migration_is_importing(FerryTaskService *svc);
/* A new sandbox for the shim's config and handlers (not started). */
FerrySandbox *shim_sandbox_new(FerryTaskService *svc, GError **error);
/* Events once a destination runs: TaskCreate per bound container. */
void shim_publish_imported(FerryTaskService *svc);

/* Record the VM (qemu.pid, vm.json) in every task's bundle: when the incoming VM of a
 * destination has started, so that `delete` after a crash finds its QEMU. */
void shim_record_vms(FerryTaskService *svc);
