/*
 * The guest agent's logic (ferry-gcs): hcsshim's Linux GCS on Ferry's modules. It dials
 * the GCS bridge port over a transport, serves the bridge (protocol v4) on that channel,
 * and runs what the host asks for through a FerryRuntime: processes in the UVM and
 * containers through crun, their stdio relayed over ports the guest dials on the same
 * transport. docs/agent.md has the model; docs/bridge-protocol.md the messages.
 *
 * The bridge connection comes and goes (a host that reconnects, a migration); the
 * containers and processes do not: when the bridge channel closes, the agent re-dials
 * every 100 ms, and answers to requests of an earlier connection and container exit
 * notifications wait for the next negotiation (hcsshim #2698).
 *
 * Threading: the thread-default GMainContext at creation; one thread. The runtime's
 * calls block (starting a container waits for crun); everything else is asynchronous.
 * The process must ignore SIGPIPE (a process that closed its stdin must not kill the
 * agent when its relay writes).
 */
#pragma once

#include <glib.h>

#include "ferry/runtime.h"
#include "ferry/transport.h"

G_BEGIN_DECLS

typedef struct FerryGcs FerryGcs;

/* The host asked the UVM to shut down (ShutdownGraceful or ShutdownForced on the null
 * container). The request is not answered (hcsshim's guest does not either); the owner
 * is expected to stop its loop and free the agent. Runs once, from the main loop. */
typedef void (*FerryGcsShutdownFunc)(FerryGcs *gcs, gpointer user_data);

/* Defaults of FerryGcsOptions. */
#define FERRY_GCS_DEFAULT_REDIAL_MS 100u
/* How long an exited process's empty but still open output may stay quiet before the
 * agent stops waiting for its end of file (a background descendant holding the pipe). */
#define FERRY_GCS_DEFAULT_DRAIN_GRACE_MS 2000u
/* Records of exited processes kept for late WaitForProcess requests. */
#define FERRY_GCS_DEFAULT_MAX_EXITED 1024u
/* How long a MappedVirtualDisk Add waits for its SCSI disk to appear (hcsshim's guest
 * gives it 5 s too). */
#define FERRY_GCS_DEFAULT_DISK_WAIT_MS 5000u
/* The size of the tmpfs that holds a CombinedLayers' writable upper (guest RAM, allocated
 * as the container writes), unless the request's FERRY_BRIDGE_SCRATCH_SIZE_FIELD says. */
#define FERRY_GCS_DEFAULT_SCRATCH_SIZE_MB 64u
/* Where MappedVirtualDisk and CombinedLayers may mount: hcsshim's guest paths
 * (/run/mounts/scsi/m<n>, /run/gcs/c/<id>/rootfs, ...). */
#define FERRY_GCS_DEFAULT_STORAGE_ROOTS "/run/mounts", "/run/gcs"

typedef struct {
  FerryGcsShutdownFunc shutdown;
  gpointer shutdown_data;
  /* Between bridge dial attempts; 0: FERRY_GCS_DEFAULT_REDIAL_MS. */
  guint redial_ms;
  /* 0: FERRY_GCS_DEFAULT_DRAIN_GRACE_MS. */
  guint drain_grace_ms;
  /* 0: FERRY_GCS_DEFAULT_MAX_EXITED. */
  guint max_exited;
  /* 0: FERRY_GCS_DEFAULT_DISK_WAIT_MS. */
  guint disk_wait_ms;
  /* 0: FERRY_GCS_DEFAULT_SCRATCH_SIZE_MB. */
  guint scratch_size_mb;
  /* NULL-terminated absolute directories (no trailing slash) below which storage
   * requests may mount (copied); NULL: FERRY_GCS_DEFAULT_STORAGE_ROOTS. */
  const char *const *storage_roots;
} FerryGcsOptions;

/*
 * Start the agent: register the bridge handlers and dial FERRY_GCS_BRIDGE_PORT on
 * `transport` (retrying until it connects). `transport` and `runtime` are borrowed and
 * must outlive the agent; `opts` (may be NULL) is copied. Does not block; fails only on
 * invalid arguments.
 */
FerryGcs *ferry_gcs_new(FerryTransport *transport, FerryRuntime *runtime,
                        const FerryGcsOptions *opts, GError **error);

/*
 * Stop: close the bridge and every stdio relay, SIGKILL every process the agent started
 * that still runs and delete its containers (crun delete --force, which blocks), drop
 * unanswered requests. A dial still in flight finishes into nothing.
 */
void ferry_gcs_free(FerryGcs *gcs);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FerryGcs, ferry_gcs_free)

/* Whether a bridge connection is being served now (negotiated or not). */
gboolean ferry_gcs_is_connected(FerryGcs *gcs);

/* Whether the host asked the UVM to shut down. */
gboolean ferry_gcs_is_shutting_down(FerryGcs *gcs);

/* How many bridge connections were served so far (the first is 1). */
guint ferry_gcs_connection_count(FerryGcs *gcs);

/* Processes the agent tracks (running, draining, or exited and kept for waits). */
guint ferry_gcs_process_count(FerryGcs *gcs);

/* The text DumpStacks answers: the containers and processes, one per line. The caller
 * frees it. */
char *ferry_gcs_dump(FerryGcs *gcs);

G_END_DECLS
