/*
 * One live migration between two shims, driven through their Migration and
 * ferry.migration.v1.Status services (docs/migration.md, "The orchestration"): the
 * calls in their order on both sides, the memory stream between them, the wait for the
 * transfer, the handover of the final channels, and on any failure the way back (Cancel,
 * or the source's RESUME while the destination never ran the guest) and Cleanup.
 *
 * The caller owns both ttrpc clients and keeps them open for the migration's life.
 * Everything runs on the thread-default main context of ferry_migration_start(); no
 * callback runs inside the call that started it.
 */
#pragma once

#include <glib.h>

#include "ferry/json.h"
#include "ferry/ttrpc.h"
#include "ferry/v1/sandbox_state.pb-c.h"
#include "hcsshim/migration_options.pb-c.h"

G_BEGIN_DECLS

typedef struct FerryMigration FerryMigration;

/* Where the migration is, in its order. */
typedef enum {
  FERRY_MIGRATION_STAGE_EXPORT,   /* source PrepareAndExportSandbox */
  FERRY_MIGRATION_STAGE_IMPORT,   /* destination ImportSandbox */
  FERRY_MIGRATION_STAGE_BIND,     /* the caller binds the imported containers */
  FERRY_MIGRATION_STAGE_PREPARE,  /* destination PrepareSandbox */
  FERRY_MIGRATION_STAGE_SOCKET,   /* CreateDuplicateSocket on both */
  FERRY_MIGRATION_STAGE_TRANSFER, /* TransferSandbox on both, until both completed */
  FERRY_MIGRATION_STAGE_STOP,     /* source FinalizeSandbox STOP */
  FERRY_MIGRATION_STAGE_RESUME,   /* destination FinalizeSandbox RESUME */
  FERRY_MIGRATION_STAGE_CLEANUP,  /* Cleanup on both */
  FERRY_MIGRATION_STAGE_ABORTING, /* Cancel or recovery, then Cleanup */
  FERRY_MIGRATION_STAGE_DONE,
} FerryMigrationStage;

const char *ferry_migration_stage_name(FerryMigrationStage stage);

typedef enum {
  /* The sandbox runs on the destination; the source's QEMU is gone. */
  FERRY_MIGRATION_OUTCOME_MIGRATED,
  /* It failed or was cancelled; the sandbox runs on the source, nothing lost. */
  FERRY_MIGRATION_OUTCOME_RECOVERED,
  /* The destination ran the guest, then failed to finish: the source must never run it
   * again, so it stays stopped. The sandbox is the destination's, in whatever state. */
  FERRY_MIGRATION_OUTCOME_DESTINATION_FAILED,
  /* It failed and the source could not take the sandbox back either (its shim is gone
   * or refused): the sandbox is lost. */
  FERRY_MIGRATION_OUTCOME_LOST,
} FerryMigrationOutcome;

const char *ferry_migration_outcome_name(FerryMigrationOutcome outcome);

typedef struct {
  FerryMigrationStage stage;
  /* The latest notification from either side (hcsshim's Phase; 0: none yet), and whose. */
  Phase phase;
  gboolean phase_from_destination;
  /* The source's memory transfer (QEMU's figures, through its Status), once it runs. */
  guint64 bytes_transferred;
  guint64 bytes_total;
  guint64 bytes_remaining; /* in this pass */
  double rate_mbps;
  guint64 passes;
  guint64 expected_downtime_ms;
  guint64 downtime_ms; /* once the transfer completed */
  /* The blackout the destination measured (its BLACKOUT_EXITED notification): source
   * stop to destination run. 0 until then. */
  guint64 blackout_ms;
} FerryMigrationProgress;

/*
 * What a person watching sees (docs/migration.md, progress), pure functions of the
 * figures: one line for a terminal that is rewritten as things move,
 *   "transfer  pass 3  96.0 MiB sent  12.5 MiB left  35.1 MiB/s  blackout ~28 ms  4.2 s"
 * (what is not known yet is left out), and the same as a JSON object, one per event
 * ({"event": "progress", "stage", "phase", "pass", "sent_bytes", "total_bytes",
 * "remaining_bytes", "rate_mbps", "expected_downtime_ms", "elapsed_ms"}).
 */
char *ferry_migration_progress_line(const FerryMigrationProgress *p, gint64 elapsed_us);
json_t *ferry_migration_progress_json(const FerryMigrationProgress *p, gint64 elapsed_us);

/* The end, for the report: the outcome, its error's message (NULL: none), and the last
 * figures. */
typedef struct {
  FerryMigrationOutcome outcome;
  const char *error;
  gint64 total_us;
  FerryMigrationProgress last;
} FerryMigrationReport;

/* "migrated in 4.8 s: blackout 31 ms, 96.0 MiB in 3 passes" (or "recovered: WHY ..."),
 * and as JSON ({"event": "report", "outcome", "error", "total_ms", "blackout_ms",
 * "sent_bytes", "passes", "downtime_ms"}). */
char *ferry_migration_report_text(const FerryMigrationReport *r);
json_t *ferry_migration_report_json(const FerryMigrationReport *r);

typedef struct {
  /* After ImportSandbox: bind every imported container on the destination (a
   * Task.Create carrying io.ferry.migration.source-container-id) and every exec'd
   * process that runs (a Task.Exec with its exec id), then call ferry_migration_bound().
   * `state` is valid until then. NULL: nothing to bind (PrepareSandbox refuses if
   * anything was). */
  void (*bind)(FerryMigration *m, const Ferry__V1__SandboxState *state, gpointer user_data);
  /* A stage began, a notification came or the transfer's counters moved. Optional. */
  void (*progress)(FerryMigration *m, const FerryMigrationProgress *progress, gpointer user_data);
  /* Once, at the end; `error` is why it did not migrate, or for MIGRATED what did not
   * clean up (NULL when everything did). After this the migration may be freed. */
  void (*done)(FerryMigration *m, FerryMigrationOutcome outcome, const GError *error,
               gpointer user_data);
} FerryMigrationHandlers;

typedef struct {
  const char *session_id; /* required */
  const char *sandbox_id; /* ImportSandbox's; NULL: the exported state's */
  /*
   * The memory stream. Default: a socket pair made here, each end handed out (by
   * SCM_RIGHTS) at a unix socket under socket_dir, whose path goes in each side's
   * CreateDuplicateSocket. A caller that makes the stream itself (between hosts) gives
   * both paths and serves them; socket_dir is then unused.
   */
  const char *socket_dir;
  const char *source_socket_path;
  const char *destination_socket_path;
  const InitializeOptions *init_options; /* the source's (hcsshim's); NULL: defaults */
  /* The destination's PrepareSandbox options; NULL: init_options. Each side's own when
   * they differ (its TLS directory). */
  const InitializeOptions *destination_init_options;
  guint call_timeout_ms;     /* each call; 0: 120 s */
  guint transfer_timeout_ms; /* the whole transfer; 0: 600 s */
  guint stall_timeout_ms;    /* no memory moved this long: the transfer failed; 0: 30 s */
} FerryMigrationConfig;

/* Start; the first call goes out from the loop. NULL with *error for a config that
 * cannot work (no session id, no socket_dir or paths). */
FerryMigration *ferry_migration_start(FerryTtrpcClient *source, FerryTtrpcClient *destination,
                                      const FerryMigrationConfig *config,
                                      const FerryMigrationHandlers *handlers, gpointer user_data,
                                      GError **error);

/* The bind handler's answer: NULL when everything is bound, else why not (the
 * migration is then cancelled and the source recovers). */
void ferry_migration_bound(FerryMigration *m, const GError *error);

/* Give up: until the destination is told to RESUME, the migration is cancelled and the
 * source recovers (outcome RECOVERED, error CANCELLED; after the source's STOP it
 * RESUMEs); later it is too late and nothing changes. Returns whether it will be
 * cancelled. */
gboolean ferry_migration_cancel(FerryMigration *m);

FerryMigrationStage ferry_migration_get_stage(FerryMigration *m);

/* Any time; a migration freed before `done` stops where it is (calls in flight are
 * forgotten, nothing is cancelled on the shims): free it after `done`. */
void ferry_migration_free(FerryMigration *m);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FerryMigration, ferry_migration_free)

G_END_DECLS
