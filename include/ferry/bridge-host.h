/*
 * The host side of the GCS bridge (hcsshim's internal/gcs): the bridge core that
 * matches answers to requests, and the guest manager on top of it -- GuestConnection,
 * Container and Process -- with the save/restore primitives live migration needs.
 *
 * Everything is asynchronous on the thread-default GMainContext of creation: an
 * operation takes a callback that runs exactly once, never from inside the call that
 * started it. The guest is the less-trusted side: every answer is bounded and checked,
 * and a guest that breaks the protocol gets the bridge killed with a clear error.
 */
#pragma once

#include <glib.h>
#include <jansson.h>

#include "ferry/bridge-protocol.h"

G_BEGIN_DECLS

/* ================================================================ bridge == */

typedef struct FerryBridge FerryBridge;

/* The answer to an RPC: `response` (borrowed, valid during the call) with Result 0, or
 * `error`: FERRY_BRIDGE_ERROR with the guest's HRESULT, or FERRY_BRIDGE_CLOSED_ERROR
 * ("bridge closed: <cause>") when the bridge died, or FERRY_ERROR for local causes. */
typedef void (*FerryBridgeResponseFunc)(FerryBridge *bridge, json_t *response, const GError *error,
                                        gpointer user_data);

/* A container notification from the guest (borrowed). Returning FALSE kills the
 * bridge with the error set. */
typedef gboolean (*FerryBridgeNotifyFunc)(FerryBridge *bridge, json_t *notification,
                                          gpointer user_data, GError **error);

/* The bridge died; `cause` says why (never NULL). Runs once. */
typedef void (*FerryBridgeDeadFunc)(FerryBridge *bridge, const GError *cause, gpointer user_data);

/* Default time an RPC may take before the whole bridge is killed (hcsshim: 5 min). */
#define FERRY_BRIDGE_DEFAULT_TIMEOUT_MS (5u * 60u * 1000u)

/* Take a connected stream fd to the guest. Request ids start at 0. */
FerryBridge *ferry_bridge_new(int fd, GError **error);
FerryBridge *ferry_bridge_ref(FerryBridge *bridge);
void ferry_bridge_unref(FerryBridge *bridge);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FerryBridge, ferry_bridge_unref)

void ferry_bridge_set_notify_func(FerryBridge *bridge, FerryBridgeNotifyFunc func,
                                  gpointer user_data);
void ferry_bridge_set_dead_func(FerryBridge *bridge, FerryBridgeDeadFunc func, gpointer user_data);

/*
 * Send a request of `rpc` with `body` (borrowed) and return its id. `timeout_ms` 0
 * means no time limit (WaitForProcess); past a limit the bridge is killed, as hcsshim
 * does. `done` runs once (on a dead bridge: from the main loop, with the closed error).
 */
guint64 ferry_bridge_rpc(FerryBridge *bridge, FerryBridgeRpc rpc, json_t *body, guint timeout_ms,
                         FerryBridgeResponseFunc done, gpointer user_data);

/* Forget a pending RPC: `done` will not run. Its id stays known so that the guest's
 * late answer is swallowed rather than treated as a protocol error. */
gboolean ferry_bridge_rpc_cancel(FerryBridge *bridge, guint64 id);

/* Kill the bridge: close the connection and fail every pending RPC with
 * "bridge closed: <cause message>". Idempotent. */
void ferry_bridge_kill(FerryBridge *bridge, const GError *cause);
gboolean ferry_bridge_is_dead(FerryBridge *bridge);
/* The error pending RPCs failed with (NULL while alive). */
const GError *ferry_bridge_get_error(FerryBridge *bridge);

/*
 * Migrating mode: while set, losing the connection parks the bridge instead of
 * killing it -- pending RPCs stay, new RPCs fail at once with UNAVAILABLE -- until
 * ferry_bridge_resume_on_conn(). Clearing it while parked kills the bridge.
 */
void ferry_bridge_set_migrating(FerryBridge *bridge, gboolean migrating);
gboolean ferry_bridge_is_migrating(FerryBridge *bridge);
gboolean ferry_bridge_is_parked(FerryBridge *bridge);

/* Swap in a new connection (only while migrating), closing the old one and keeping
 * every pending RPC. Takes ownership of fd. */
gboolean ferry_bridge_resume_on_conn(FerryBridge *bridge, int fd, GError **error);

/* The next request id, and raising it (never lowers it). Ids below a seeded floor were
 * issued by other hosts: an answer to one that is not pre-registered is dropped rather
 * than fatal (a process reopened on several hosts has a wait from each). */
guint64 ferry_bridge_next_id(FerryBridge *bridge);
void ferry_bridge_seed_next_id(FerryBridge *bridge, guint64 next_id);

/*
 * Expect the guest's answer to a request another host sent (a source's outstanding
 * WaitForProcess): route an answer with `id` to `done` without sending anything. The
 * id floor is raised above it. ALREADY_EXISTS if the id is pending, UNAVAILABLE
 * (FERRY_BRIDGE_CLOSED_ERROR) on a dead bridge.
 */
gboolean ferry_bridge_preregister_rpc(FerryBridge *bridge, guint64 id, FerryBridgeRpc rpc,
                                      FerryBridgeResponseFunc done, gpointer user_data,
                                      GError **error);

guint ferry_bridge_pending_count(FerryBridge *bridge);

/* ===================================================== guest connection == */

typedef struct FerryGuestConnection FerryGuestConnection;
typedef struct FerryGcsContainer FerryGcsContainer;
typedef struct FerryGcsProcess FerryGcsProcess;

/*
 * Stdio ports: the transport (vsock or the channel mux) provides these. `listen` is
 * called for each port before the guest is told to dial it; `release` when the
 * process is closed; `close_write` for CloseStdin. All may be NULL (no stdio).
 */
typedef struct {
  gboolean (*listen)(guint32 port, gpointer user_data, GError **error);
  void (*release)(guint32 port, gpointer user_data);
  void (*close_write)(guint32 port, gpointer user_data);
} FerryGcsPortHooks;

typedef void (*FerryGcsDoneFunc)(const GError *error, gpointer user_data);
typedef void (*FerryGcsJsonFunc)(json_t *result, const GError *error, gpointer user_data);
/* `process` is a new reference (NULL on error). */
typedef void (*FerryGcsProcessFunc)(FerryGcsProcess *process, const GError *error,
                                    gpointer user_data);

/* Build on a connected stream fd to the guest agent. Nothing is sent until connect. */
FerryGuestConnection *ferry_guest_connection_new(int fd, const FerryGcsPortHooks *hooks,
                                                 gpointer hooks_data, GError **error);
/* Kill the bridge ("guest connection closed") and drop the reference. */
void ferry_guest_connection_free(FerryGuestConnection *gc);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FerryGuestConnection, ferry_guest_connection_free)

FerryBridge *ferry_guest_connection_get_bridge(FerryGuestConnection *gc);

/* NegotiateProtocol with Minimum = Maximum = 4; the guest must select 4. */
void ferry_guest_connection_connect(FerryGuestConnection *gc, FerryGcsDoneFunc done,
                                    gpointer user_data);
/* 4 once connected, 0 before. */
guint32 ferry_guest_connection_protocol(FerryGuestConnection *gc);
/* lower(RuntimeOsType) from the guest's capabilities ("linux"), NULL before connect. */
const char *ferry_guest_connection_os(FerryGuestConnection *gc);

/* ModifySettings on the UVM (container_id NULL: the null container) with `request`
 * ({"ResourceType", "RequestType", "Settings"}, borrowed). */
void ferry_guest_connection_modify(FerryGuestConnection *gc, const char *container_id,
                                   json_t *request, FerryGcsDoneFunc done, gpointer user_data);
/* DumpStacks: result {"GuestStacks": "..."}. */
void ferry_guest_connection_dump_stacks(FerryGuestConnection *gc, FerryGcsJsonFunc done,
                                        gpointer user_data);
void ferry_guest_connection_delete_container_state(FerryGuestConnection *gc,
                                                   const char *container_id, FerryGcsDoneFunc done,
                                                   gpointer user_data);
/* Run a process in the UVM itself. `params` (borrowed) is the ProcessParameters object
 * (CommandArgs, CreateStd*Pipe, ...). */
void ferry_guest_connection_create_process(FerryGuestConnection *gc, json_t *params,
                                           FerryGcsProcessFunc done, gpointer user_data);

/*
 * Create a container: registers it for its exit notification, then sends Create with
 * `config` (borrowed; the ContainerConfig object, sent as a JSON string). Returns the
 * container (a new reference) at once; `done` reports the guest's answer (on failure
 * the container is unregistered and reads as exited). NULL with ALREADY_EXISTS if the
 * id is already registered.
 */
FerryGcsContainer *ferry_guest_connection_create_container(FerryGuestConnection *gc,
                                                           const char *container_id, json_t *config,
                                                           FerryGcsDoneFunc done,
                                                           gpointer user_data, GError **error);

/* A container that already runs in the guest (a migration destination, or a host that
 * reconnects): registers for its notification and sends nothing. New reference, or
 * NULL with ALREADY_EXISTS. */
FerryGcsContainer *ferry_guest_connection_open_container(FerryGuestConnection *gc,
                                                         const char *container_id, GError **error);

/* The stdio port floor: the next port an exec gets, and raising it (never lowers). */
guint32 ferry_guest_connection_next_port(FerryGuestConnection *gc);
void ferry_guest_connection_set_next_port(FerryGuestConnection *gc, guint32 port);
/* The request id floor (the bridge's). */
guint64 ferry_guest_connection_next_id(FerryGuestConnection *gc);
void ferry_guest_connection_seed_next_id(FerryGuestConnection *gc, guint64 next_id);

void ferry_guest_connection_set_migrating(FerryGuestConnection *gc, gboolean migrating);

/* After a transport break while migrating: swap in `fd` (owned), renegotiate, and
 * leave migrating mode. Pending RPCs (process waits) survive. */
void ferry_guest_connection_resume_on_conn(FerryGuestConnection *gc, int fd, FerryGcsDoneFunc done,
                                           gpointer user_data);

/* ============================================================ container == */

FerryGcsContainer *ferry_gcs_container_ref(FerryGcsContainer *c);
void ferry_gcs_container_unref(FerryGcsContainer *c);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FerryGcsContainer, ferry_gcs_container_unref)

const char *ferry_gcs_container_get_id(FerryGcsContainer *c);

void ferry_gcs_container_start(FerryGcsContainer *c, FerryGcsDoneFunc done, gpointer user_data);
/* SIGTERM / SIGKILL to the container's processes; "does not exist" counts as done. They
 * do not wait for the exit: use ferry_gcs_container_wait(). */
void ferry_gcs_container_shutdown(FerryGcsContainer *c, FerryGcsDoneFunc done, gpointer user_data);
void ferry_gcs_container_terminate(FerryGcsContainer *c, FerryGcsDoneFunc done, gpointer user_data);
/* Completes when the exit notification arrives, or the bridge dies (error NULL in both
 * cases), or the container is closed (error "container closed"). */
void ferry_gcs_container_wait(FerryGcsContainer *c, FerryGcsDoneFunc done, gpointer user_data);
gboolean ferry_gcs_container_has_exited(FerryGcsContainer *c);
/* The notification's Type ("ForcedExit", ...) once exited by notification, else NULL. */
const char *ferry_gcs_container_exit_type(FerryGcsContainer *c);
/* GetProperties with `query` (borrowed; sent as a JSON string); the result is the
 * parsed Properties object. */
void ferry_gcs_container_properties(FerryGcsContainer *c, json_t *query, FerryGcsJsonFunc done,
                                    gpointer user_data);
void ferry_gcs_container_modify(FerryGcsContainer *c, json_t *request, FerryGcsDoneFunc done,
                                gpointer user_data);
/* Exec in the container (the first exec starts its init). */
void ferry_gcs_container_create_process(FerryGcsContainer *c, json_t *params,
                                        FerryGcsProcessFunc done, gpointer user_data);
/*
 * A process that already runs (restored from its MigrationState): listens again on its
 * non-zero ports without allocating and pre-registers the source's outstanding
 * WaitForProcess id instead of sending a new wait. wait_call_id 0 is an error
 * (INVALID_ARGUMENT). New reference.
 */
FerryGcsProcess *ferry_gcs_container_open_process_with_io(FerryGcsContainer *c, guint32 pid,
                                                          guint32 stdin_port, guint32 stdout_port,
                                                          guint32 stderr_port, guint64 wait_call_id,
                                                          GError **error);
/* Stop following the container: unregister its notification; pending waits complete
 * with "container closed". */
void ferry_gcs_container_close(FerryGcsContainer *c);

/* ============================================================== process == */

FerryGcsProcess *ferry_gcs_process_ref(FerryGcsProcess *p);
void ferry_gcs_process_unref(FerryGcsProcess *p);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FerryGcsProcess, ferry_gcs_process_unref)

guint32 ferry_gcs_process_get_pid(FerryGcsProcess *p);

/* What a destination needs to reopen the process (hcsshim cow.MigrationState): the
 * stdio ports (0 = none) and the outstanding WaitForProcess id (0 = none). */
typedef struct {
  guint32 stdin_port;
  guint32 stdout_port;
  guint32 stderr_port;
  guint64 wait_call_id;
  guint64 serial; /* ferry_gcs_process_get_serial() */
} FerryGcsMigrationState;
FerryGcsMigrationState ferry_gcs_process_migration_state(FerryGcsProcess *p);

/* The guest's serial for the process (FERRY_BRIDGE_PROCESS_SERIAL in the ExecuteProcess
 * answer), or 0 when the guest gave none (hcsshim's): then requests name the pid alone.
 * Set it on a reopened process (from its MigrationState) before the connection
 * negotiates, so that its fresh wait carries it. */
guint64 ferry_gcs_process_get_serial(FerryGcsProcess *p);
void ferry_gcs_process_set_serial(FerryGcsProcess *p, guint64 serial);

/* Completes when the process's WaitForProcess completes (the process exited, or the
 * bridge died: then with the error). */
void ferry_gcs_process_wait(FerryGcsProcess *p, FerryGcsDoneFunc done, gpointer user_data);
/*
 * FERRY_GCS_EXIT_ERROR_LOST: the wait failed with the not-found HRESULT, the guest no
 * longer has the process's status. hcsshim reads that as exit code 0; here it is an error
 * of its own (status NOT_FOUND), so that a lost status never reads as success.
 */
#define FERRY_GCS_EXIT_ERROR (ferry_gcs_exit_error_quark())
GQuark ferry_gcs_exit_error_quark(void);
#define FERRY_GCS_EXIT_ERROR_LOST 0

/*
 * The exit code of a process killed by a signal, as hcsshim's guest reports it for a UVM
 * process (Go's -1 sent as the u32 4294967295). ferry's agent reports 128+n instead (see
 * docs/bridge.md); both are taken as they come, and this one reads as -1.
 */
#define FERRY_GCS_EXIT_CODE_SIGNALED (-1)

/*
 * The exit code once the wait completed: the guest's u32 ExitCode as an int (so
 * 4294967295 is FERRY_GCS_EXIT_CODE_SIGNALED). FALSE with FAILED_PRECONDITION "process
 * not exited" before; FERRY_GCS_EXIT_ERROR_LOST when the guest answered the wait with the
 * not-found HRESULT; other wait errors are returned as they are.
 */
gboolean ferry_gcs_process_exit_code(FerryGcsProcess *p, int *code, GError **error);

/* SignalProcess (signal 0: no Options, which the guest treats as SIGKILL). `delivered`
 * is FALSE without an error when the guest no longer knows the process. */
typedef void (*FerryGcsSignalFunc)(gboolean delivered, const GError *error, gpointer user_data);
void ferry_gcs_process_signal(FerryGcsProcess *p, int signal, FerryGcsSignalFunc done,
                              gpointer user_data);
void ferry_gcs_process_kill(FerryGcsProcess *p, FerryGcsSignalFunc done, gpointer user_data);
void ferry_gcs_process_resize_console(FerryGcsProcess *p, guint16 width, guint16 height,
                                      FerryGcsDoneFunc done, gpointer user_data);
/* EOF to the process's stdin (through the port hooks). */
void ferry_gcs_process_close_stdin(FerryGcsProcess *p);
/* Release the stdio ports; the process keeps running in the guest. Idempotent. */
void ferry_gcs_process_close(FerryGcsProcess *p);

G_END_DECLS
