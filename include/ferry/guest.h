/*
 * The guest manager (hcsshim's internal/gcs GuestConnection, Container and Process):
 * the host's handles on what runs in the utility VM, over the raw bridge
 * (ferry/bridge-host.h), with the save/restore primitives live migration needs.
 *
 * Everything is asynchronous on the thread-default GMainContext of creation: an
 * operation takes a callback that runs exactly once, never from inside the call that
 * started it. The guest is the less-trusted side: every answer is bounded and checked,
 * and a guest that breaks the protocol gets the bridge killed with a clear error.
 */
#pragma once

#include <glib.h>
#include <jansson.h>

#include "ferry/bridge-host.h"

G_BEGIN_DECLS

/* ===================================================== guest connection == */

typedef struct FerryGuestConnection FerryGuestConnection;
typedef struct FerryGuestContainer FerryGuestContainer;
typedef struct FerryGuestProcess FerryGuestProcess;

/*
 * Stdio ports: the transport (vsock or the channel mux) provides these. `listen` is
 * called for each port before the guest is told to dial it; `release` when the
 * process is closed; `close_write` for CloseStdin. All may be NULL (no stdio).
 */
typedef struct {
  gboolean (*listen)(guint32 port, gpointer user_data, GError **error);
  void (*release)(guint32 port, gpointer user_data);
  void (*close_write)(guint32 port, gpointer user_data);
} FerryGuestPortHooks;

typedef void (*FerryGuestDoneFunc)(const GError *error, gpointer user_data);
typedef void (*FerryGuestJsonFunc)(json_t *result, const GError *error, gpointer user_data);
/* `process` is a new reference (NULL on error). */
typedef void (*FerryGuestProcessFunc)(FerryGuestProcess *process, const GError *error,
                                      gpointer user_data);

/* Build on a connected stream fd to the guest agent. Nothing is sent until connect. */
FerryGuestConnection *ferry_guest_connection_new(int fd, const FerryGuestPortHooks *hooks,
                                                 gpointer hooks_data, GError **error);
/* Kill the bridge ("guest connection closed") and drop the reference. */
void ferry_guest_connection_free(FerryGuestConnection *gc);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FerryGuestConnection, ferry_guest_connection_free)

FerryBridge *ferry_guest_connection_get_bridge(FerryGuestConnection *gc);

/* NegotiateProtocol with Minimum = Maximum = 4; the guest must select 4. */
void ferry_guest_connection_connect(FerryGuestConnection *gc, FerryGuestDoneFunc done,
                                    gpointer user_data);
/*
 * The guest kernel's OOM killer killed a process of container `container_id` (borrowed),
 * which the connection follows: Ferry's OOM notification, which the connection asks for
 * when it negotiates (docs/bridge.md). `oom_kills` is the container's count so
 * far. Runs from the bridge's input in the order of the guest's messages, so before the
 * answer to the wait of a process the kill ended (the guest checks the count first).
 */
typedef void (*FerryGuestOomFunc)(FerryGuestConnection *gc, const char *container_id,
                                  guint64 oom_kills, gpointer user_data);
void ferry_guest_connection_set_oom_func(FerryGuestConnection *gc, FerryGuestOomFunc func,
                                         gpointer user_data);

/* 4 once connected, 0 before. */
guint32 ferry_guest_connection_protocol(FerryGuestConnection *gc);
/* lower(RuntimeOsType) from the guest's capabilities ("linux"), NULL before connect. */
const char *ferry_guest_connection_os(FerryGuestConnection *gc);

/* ModifySettings on the UVM (container_id NULL: the null container) with `request`
 * ({"ResourceType", "RequestType", "Settings"}, borrowed). */
void ferry_guest_connection_modify(FerryGuestConnection *gc, const char *container_id,
                                   json_t *request, FerryGuestDoneFunc done, gpointer user_data);
/*
 * Storage (docs/agent.md, storage): ModifySettings requests in hcsshim's shapes. The
 * builders are pure and return a new {"ResourceType", "RequestType", "Settings"}; the
 * calls send one on the UVM (the null container) and complete like
 * ferry_guest_connection_modify (a guest error is FERRY_BRIDGE_ERROR with its HRESULT).
 */
typedef struct {
  const char *mount_path; /* the guest directory (hcsshim: /run/mounts/scsi/m<n>) */
  guint8 controller;      /* the VM's virtio-scsi controller, by rendered position */
  guint8 lun;
  guint64 partition; /* 0: the whole disk */
  gboolean read_only;
  const char *filesystem;     /* "erofs", "ext4", or NULL: the guest looks */
  const char *const *options; /* NULL-terminated mount options, or NULL */
} FerryGuestMappedDisk;

/* MappedVirtualDisk `request_type` ("Add" or "Remove"; a Remove needs only mount_path). */
json_t *ferry_guest_mapped_disk_request(const char *request_type, const FerryGuestMappedDisk *disk);
/* CombinedLayers `request_type`: an overlay at `root` of `layers` (NULL-terminated guest
 * paths, the top one first), its writable upper under `scratch` (NULL: read-only),
 * a tmpfs of `scratch_size_mb` MiB there (0: the guest's default). `container_id` may be
 * NULL. A Remove needs only `root`. */
json_t *ferry_guest_combined_layers_request(const char *request_type, const char *container_id,
                                            const char *root, const char *const *layers,
                                            const char *scratch, guint scratch_size_mb);
void ferry_guest_connection_map_disk(FerryGuestConnection *gc, const FerryGuestMappedDisk *disk,
                                     FerryGuestDoneFunc done, gpointer user_data);
void ferry_guest_connection_unmap_disk(FerryGuestConnection *gc, const char *mount_path,
                                       FerryGuestDoneFunc done, gpointer user_data);
void ferry_guest_connection_combine_layers(FerryGuestConnection *gc, const char *container_id,
                                           const char *root, const char *const *layers,
                                           const char *scratch, guint scratch_size_mb,
                                           FerryGuestDoneFunc done, gpointer user_data);
void ferry_guest_connection_remove_layers(FerryGuestConnection *gc, const char *root,
                                          FerryGuestDoneFunc done, gpointer user_data);
/* DumpStacks: result {"GuestStacks": "..."}. */
void ferry_guest_connection_dump_stacks(FerryGuestConnection *gc, FerryGuestJsonFunc done,
                                        gpointer user_data);
void ferry_guest_connection_delete_container_state(FerryGuestConnection *gc,
                                                   const char *container_id,
                                                   FerryGuestDoneFunc done, gpointer user_data);
/* Run a process in the UVM itself. `params` (borrowed) is the ProcessParameters object
 * (CommandArgs, CreateStd*Pipe, ...). */
void ferry_guest_connection_create_process(FerryGuestConnection *gc, json_t *params,
                                           FerryGuestProcessFunc done, gpointer user_data);

/*
 * Create a container: registers it for its exit notification, then sends Create with
 * `config` (borrowed; the ContainerConfig object, sent as a JSON string). Returns the
 * container (a new reference) at once; `done` reports the guest's answer (on failure
 * the container is unregistered and reads as exited). NULL with ALREADY_EXISTS if the
 * id is already registered.
 */
FerryGuestContainer *ferry_guest_connection_create_container(FerryGuestConnection *gc,
                                                             const char *container_id,
                                                             json_t *config,
                                                             FerryGuestDoneFunc done,
                                                             gpointer user_data, GError **error);

/* A container that already runs in the guest (a migration destination, or a host that
 * reconnects): registers for its notification and sends nothing. New reference, or
 * NULL with ALREADY_EXISTS. */
FerryGuestContainer *ferry_guest_connection_open_container(FerryGuestConnection *gc,
                                                           const char *container_id,
                                                           GError **error);

/* The stdio port floor: the next port an exec gets, and raising it (never lowers). */
guint32 ferry_guest_connection_next_port(FerryGuestConnection *gc);
void ferry_guest_connection_set_next_port(FerryGuestConnection *gc, guint32 port);
/* The request id floor (the bridge's). */
guint64 ferry_guest_connection_next_id(FerryGuestConnection *gc);
void ferry_guest_connection_seed_next_id(FerryGuestConnection *gc, guint64 next_id);

void ferry_guest_connection_set_migrating(FerryGuestConnection *gc, gboolean migrating);

/* After a transport break while migrating: swap in `fd` (owned), renegotiate, and
 * leave migrating mode. Pending RPCs (process waits) survive. */
void ferry_guest_connection_resume_on_conn(FerryGuestConnection *gc, int fd,
                                           FerryGuestDoneFunc done, gpointer user_data);

/* ============================================================ container == */

FerryGuestContainer *ferry_guest_container_ref(FerryGuestContainer *c);
void ferry_guest_container_unref(FerryGuestContainer *c);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FerryGuestContainer, ferry_guest_container_unref)

const char *ferry_guest_container_get_id(FerryGuestContainer *c);

void ferry_guest_container_start(FerryGuestContainer *c, FerryGuestDoneFunc done,
                                 gpointer user_data);
/* SIGTERM / SIGKILL to the container's processes; "does not exist" counts as done. They
 * do not wait for the exit: use ferry_guest_container_wait(). */
void ferry_guest_container_shutdown(FerryGuestContainer *c, FerryGuestDoneFunc done,
                                    gpointer user_data);
void ferry_guest_container_terminate(FerryGuestContainer *c, FerryGuestDoneFunc done,
                                     gpointer user_data);
/* Completes when the exit notification arrives, or the bridge dies (error NULL in both
 * cases), or the container is closed (error "container closed"). */
void ferry_guest_container_wait(FerryGuestContainer *c, FerryGuestDoneFunc done,
                                gpointer user_data);
gboolean ferry_guest_container_has_exited(FerryGuestContainer *c);
/* The notification's Type ("ForcedExit", ...) once exited by notification, else NULL. */
const char *ferry_guest_container_exit_type(FerryGuestContainer *c);
/* GetProperties with `query` (borrowed; sent as a JSON string); the result is the
 * parsed Properties object. */
void ferry_guest_container_properties(FerryGuestContainer *c, json_t *query,
                                      FerryGuestJsonFunc done, gpointer user_data);
void ferry_guest_container_modify(FerryGuestContainer *c, json_t *request, FerryGuestDoneFunc done,
                                  gpointer user_data);
/* Exec in the container (the first exec starts its init). */
void ferry_guest_container_create_process(FerryGuestContainer *c, json_t *params,
                                          FerryGuestProcessFunc done, gpointer user_data);
/*
 * A process that already runs (restored from its MigrationState): listens again on its
 * non-zero ports without allocating and pre-registers the source's outstanding
 * WaitForProcess id instead of sending a new wait. wait_call_id 0 is an error
 * (INVALID_ARGUMENT). New reference.
 */
FerryGuestProcess *ferry_guest_container_open_process_with_io(FerryGuestContainer *c, guint32 pid,
                                                              guint32 stdin_port,
                                                              guint32 stdout_port,
                                                              guint32 stderr_port,
                                                              guint64 wait_call_id, GError **error);
/* Stop following the container: unregister its notification; pending waits complete
 * with "container closed". */
void ferry_guest_container_close(FerryGuestContainer *c);

/* ============================================================== process == */

FerryGuestProcess *ferry_guest_process_ref(FerryGuestProcess *p);
void ferry_guest_process_unref(FerryGuestProcess *p);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FerryGuestProcess, ferry_guest_process_unref)

guint32 ferry_guest_process_get_pid(FerryGuestProcess *p);

/* What a destination needs to reopen the process (hcsshim cow.MigrationState): the
 * stdio ports (0 = none) and the outstanding WaitForProcess id (0 = none). */
typedef struct {
  guint32 stdin_port;
  guint32 stdout_port;
  guint32 stderr_port;
  guint64 wait_call_id;
  guint64 serial; /* ferry_guest_process_get_serial() */
} FerryGuestMigrationState;
FerryGuestMigrationState ferry_guest_process_migration_state(FerryGuestProcess *p);

/* The guest's serial for the process (FERRY_BRIDGE_PROCESS_SERIAL in the ExecuteProcess
 * answer), or 0 when the guest gave none (hcsshim's): then requests name the pid alone.
 * Set it on a reopened process (from its MigrationState) before the connection
 * negotiates, so that its fresh wait carries it. */
guint64 ferry_guest_process_get_serial(FerryGuestProcess *p);
void ferry_guest_process_set_serial(FerryGuestProcess *p, guint64 serial);

/* Completes when the process's WaitForProcess completes (the process exited, or the
 * bridge died: then with the error). */
void ferry_guest_process_wait(FerryGuestProcess *p, FerryGuestDoneFunc done, gpointer user_data);
/*
 * FERRY_GUEST_EXIT_ERROR_LOST: the wait failed with the not-found HRESULT, the guest no
 * longer has the process's status. hcsshim reads that as exit code 0; here it is an error
 * of its own (status NOT_FOUND), so that a lost status never reads as success.
 */
#define FERRY_GUEST_EXIT_ERROR (ferry_guest_exit_error_quark())
GQuark ferry_guest_exit_error_quark(void);
#define FERRY_GUEST_EXIT_ERROR_LOST 0

/*
 * The exit code of a process killed by a signal, as hcsshim's guest reports it for a UVM
 * process (Go's -1 sent as the u32 4294967295). ferry's agent reports 128+n instead (see
 * docs/bridge.md); both are taken as they come, and this one reads as -1.
 */
#define FERRY_GUEST_EXIT_CODE_SIGNALED (-1)

/*
 * The exit code once the wait completed: the guest's u32 ExitCode as an int (so
 * 4294967295 is FERRY_GUEST_EXIT_CODE_SIGNALED). FALSE with FAILED_PRECONDITION "process
 * not exited" before; FERRY_GUEST_EXIT_ERROR_LOST when the guest answered the wait with the
 * not-found HRESULT; other wait errors are returned as they are.
 */
gboolean ferry_guest_process_exit_code(FerryGuestProcess *p, int *code, GError **error);

/* SignalProcess (signal 0: no Options, which the guest treats as SIGKILL). `delivered`
 * is FALSE without an error when the guest no longer knows the process. */
typedef void (*FerryGuestSignalFunc)(gboolean delivered, const GError *error, gpointer user_data);
void ferry_guest_process_signal(FerryGuestProcess *p, int signal, FerryGuestSignalFunc done,
                                gpointer user_data);
void ferry_guest_process_kill(FerryGuestProcess *p, FerryGuestSignalFunc done, gpointer user_data);
void ferry_guest_process_resize_console(FerryGuestProcess *p, guint16 width, guint16 height,
                                        FerryGuestDoneFunc done, gpointer user_data);
/* EOF to the process's stdin (through the port hooks). */
void ferry_guest_process_close_stdin(FerryGuestProcess *p);
/* Release the stdio ports; the process keeps running in the guest. Idempotent. */
void ferry_guest_process_close(FerryGuestProcess *p);

G_END_DECLS
