/*
 * The guest agent's internals, shared by the files of lib/gcs (private).
 *
 * gcs.c       the agent: lifecycle, the bridge connection and its re-dial, the tables
 *             of containers and processes, "exited and drained" and what follows it
 * handlers.c  the bridge handlers except ExecuteProcess
 * exec.c      ExecuteProcess: parameters, dialing the stdio ports, starting
 * relay.c     stdio relays between a process's fds and channels
 * storage.c   ModifySettings MappedVirtualDisk and CombinedLayers: disk mounts, overlays
 * stats.c     a container's cgroup figures (GetProperties)
 * oom.c       OOM kills in a container's cgroup, told to the host
 */
#pragma once

#include <jansson.h>

#include "ferry/bridge-guest.h"
#include "ferry/gcs.h"

typedef struct GcsRelay GcsRelay;
typedef struct GcsStorage GcsStorage;
typedef struct GcsOomWatch GcsOomWatch;

typedef enum {
  GCS_SHUTDOWN_NONE,
  GCS_SHUTDOWN_GRACEFUL,
  GCS_SHUTDOWN_FORCED,
} GcsShutdown;

typedef enum {
  GCS_CONTAINER_CREATED,  /* registered; no init yet */
  GCS_CONTAINER_STARTING, /* the first exec is dialing its ports */
  GCS_CONTAINER_RUNNING,  /* the init runs (or exited but has not drained) */
  GCS_CONTAINER_STOPPED,  /* the exit notification was sent */
} GcsContainerState;

typedef struct {
  char *id;
  guint64 serial;    /* tells a container from a later one with the same id */
  char *activity_id; /* of the Create request: the exit notification carries it */
  char *bundle;
  GcsContainerState state;
  GPid init_pid;
  GcsShutdown shutdown; /* the last shutdown asked for: the notification's Type */
  GcsOomWatch *oom;     /* the watch on its group's memory.events, once the init ran */
  guint64 oom_kills;    /* the group's oom_kill count last seen */
} GcsContainer;

/* A process the agent started, from its start until it is evicted after its exit. */
typedef struct {
  FerryGcs *gcs;
  GPid pid;
  guint64 serial;     /* FERRY_BRIDGE_PROCESS_SERIAL: never given to another process */
  char *container_id; /* NULL: a process in the UVM */
  guint64 container_serial;
  gboolean is_init;
  FerryProcess *process;
  gboolean exited;
  int exit_code;
  GPtrArray *outputs; /* GcsRelay: output relays that have not reached their end */
  GPtrArray *waits;   /* GcsWait */
  gboolean indexed;   /* gcs->processes maps pid to it */
  gboolean complete;  /* exited and drained */
} GcsProcess;

struct FerryGcs {
  GMainContext *context; /* thread-default at creation: the agent's sources go there */
  FerryTransport *transport;
  FerryRuntime *runtime;
  FerryGcsOptions opts;
  FerryBridgeServer *server;
  gboolean shutting_down;
  gboolean freeing;
  /* The bridge connection. */
  struct GcsDial *dial; /* a dial in flight, or NULL */
  guint redial_source;
  guint connections;
  /* What runs. */
  GHashTable *containers; /* id -> GcsContainer */
  guint64 next_serial;
  GHashTable *processes; /* pid -> GcsProcess (indexed) */
  GHashTable *records;   /* GcsProcess set: every record, indexed or not (owning) */
  GQueue completed;      /* indexed complete records, oldest first */
  GHashTable *relays;    /* GcsRelay set (owning) */
  GHashTable *execs;     /* struct GcsExec set: ExecuteProcess requests being dialed */
  GcsStorage *storage;   /* mapped disks and combined layers */
};

/* ---- gcs.c ---- */

gboolean gcs_is_uvm(const char *container_id);
GcsContainer *gcs_container_lookup(FerryGcs *gcs, const char *id);
/* Register a started process; it replaces (evicts) a record with the same pid. */
GcsProcess *gcs_process_add(FerryGcs *gcs, FerryProcess *process, const char *container_id,
                            guint64 container_serial, gboolean is_init);
GcsProcess *gcs_process_lookup(FerryGcs *gcs, GPid pid);
/* An output relay of `record` reached its end (EOF read, shutdown_write done). */
void gcs_process_output_done(GcsProcess *record, GcsRelay *relay);
/* Answer WaitForProcess for `record`: now if complete, else when it is (or times out). */
void gcs_process_wait(GcsProcess *record, FerryBridgeRequest *request, guint32 timeout_ms);
/* Signal each running process of a container; errors other than "exited" are logged. */
void gcs_container_signal_all(FerryGcs *gcs, const char *id, int signum);
/* The container exit notification (the init completed), if it is still registered. */
void gcs_container_init_complete(FerryGcs *gcs, GcsProcess *init);

/* ---- handlers.c / exec.c ---- */

void gcs_register_handlers(FerryGcs *gcs);
void gcs_handle_execute_process(FerryBridgeRequest *request, gpointer user_data);
/* Let go of ExecuteProcess requests still dialing (the agent is being freed). */
void gcs_execs_abandon(FerryGcs *gcs);

/* ---- stats.c ---- */

/* Pure: "key value" lines into {key: value}; io.stat's lines into [{Major, Minor, key:
 * value...}]. Lines that do not parse are skipped. New references. */
json_t *gcs_parse_flat_keyed(const char *text);
json_t *gcs_parse_io_stat(const char *text);
/* The running container's cgroup v2 usage: {CgroupVersion: 2, Pids: {current, max},
 * CPU: cpu.stat, Memory: memory.stat, MemoryCurrent, MemoryMax, MemoryEvents, IO}. */
json_t *gcs_container_metrics(const GcsContainer *c, GError **error);
/* Every process in the running container's cgroup (its init's children too), by pid. */
GArray *gcs_container_pids(const GcsContainer *c, GError **error);

/* ---- oom.c ---- */

/* Pure: the `oom_kill` count of memory.events text; FALSE without one. */
gboolean gcs_parse_oom_kills(const char *text, guint64 *count);
/* The linux.cgroupsPath the agent gives container `container_id`: `container` inside
 * the container's own group, /ferry/<id> (newly allocated). */
char *gcs_oom_cgroups_path(const char *container_id);
/* Create: set the spec's linux.cgroupsPath (INVALID_ARGUMENT when `linux` is not an
 * object) and read the group's count if one is left from an earlier container of the
 * id (else 0) into *oom_kills. */
gboolean gcs_oom_prepare(const char *container_id, json_t *spec, guint64 *oom_kills,
                         GError **error);
/* The init runs: watch the group's memory.events (inotify). Without a group (crun's
 * cgroups disabled, local mode) nothing is watched. */
void gcs_oom_watch_start(FerryGcs *gcs, GcsContainer *c);
/* Read the group's count; when it rose, send Ferry's OOM notification (if the host asked
 * for it and the container is not stopped). */
void gcs_oom_check(FerryGcs *gcs, GcsContainer *c);
/* Stop watching and remove the group (the container was deleted). */
void gcs_oom_watch_free(GcsOomWatch *watch);

/* ---- relay.c ---- */

/*
 * Relay a process's output `fd` (taken) into `channel` (a reference is taken; NULL:
 * read and discard, for a terminal nobody listens to). Reads only while the channel has
 * write room. At end of file (0, or EIO on a pty master) or when the channel closes, it
 * shuts the channel's write side and calls gcs_process_output_done(); then it keeps the
 * channel until the peer consumed everything and frees itself.
 */
GcsRelay *gcs_relay_output_new(FerryGcs *gcs, GcsProcess *record, FerryChannel *channel, int fd);
/* The process exited: from now on, output that stays quiet (empty but open) for the
 * drain grace period counts as ended. */
void gcs_relay_output_process_exited(GcsRelay *relay);
/*
 * Relay `channel` into a process's input `fd` (taken): consumes only what the fd
 * accepted; closes the fd at the channel's end of file; closes the channel when the fd
 * fails (the process stopped reading).
 */
GcsRelay *gcs_relay_input_new(FerryGcs *gcs, FerryChannel *channel, int fd);
/* Free without callbacks (the agent is being freed). */
void gcs_relay_free(GcsRelay *relay);

/* ---- storage.c ---- */

GcsStorage *gcs_storage_new(const FerryGcsOptions *opts);
/* Drops Adds still waiting for their device (unanswered); leaves the mounts. */
void gcs_storage_free(GcsStorage *storage);
/* ModifySettings of a storage resource type: answers `request` (now, or for an Add whose
 * disk has not appeared yet, later) and returns TRUE; FALSE for a type it does not
 * handle (the request is untouched). */
/* Append one line per mapped disk, combined layers and waiting Add (DumpStacks). */
void gcs_storage_dump(GcsStorage *storage, GString *out);
gboolean gcs_storage_modify(GcsStorage *storage, FerryBridgeRequest *request,
                            const char *resource_type, const char *request_type, json_t *settings);
