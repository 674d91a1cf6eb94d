/*
 * The host side of one sandbox: a utility VM (vm.h), the channel mux on its
 * virtio-serial port (mux.h), the GCS bridge and guest manager on the mux (guest.h),
 * the stdio ports the guest dials (cmd.h), and the table of the sandbox's containers.
 * One lifecycle: boot (QEMU up, the agent dialed the bridge and negotiated, within a
 * bounded wait), the agent's re-dial of the bridge, VM death, teardown. The shim, the
 * CLI and the migration controller are thin layers over it.
 *
 * Everything is asynchronous on the thread-default GMainContext at creation; a
 * callback never runs inside the call that started it.
 */
#pragma once

#include <glib.h>
#include <jansson.h>

#include "ferry/cmd.h"
#include "ferry/guest.h"
#include "ferry/vm.h"

G_BEGIN_DECLS

typedef struct FerrySandbox FerrySandbox;

/* The virtio-serial port the agent's mux runs on (image/init starts ferry-gcs there). */
#define FERRY_SANDBOX_AGENT_PORT "org.ferry.gcs"
/* How long boot may take by default, QEMU start to the agent's negotiation. TCG boots
 * the guest image in a few seconds on these machines (docs/image.md). */
#define FERRY_SANDBOX_DEFAULT_BOOT_TIMEOUT_MS 90000

typedef struct {
  const char *id;          /* the sandbox id (names the VM); required */
  const char *state_dir;   /* QEMU's sockets and logs; created; required */
  const char *kernel;      /* the guest image's vmlinux; required */
  const char *initrd;      /* its initramfs.cpio; required */
  const char *kernel_args; /* NULL: "console=ttyS0 loglevel=4 panic=-1" */
  guint memory_mb;         /* 0: FERRY_VM_DEFAULT_MEMORY_MB */
  guint cpus;              /* 0: 1 */
  guint boot_timeout_ms;   /* 0: FERRY_SANDBOX_DEFAULT_BOOT_TIMEOUT_MS */
  FerryVmOptions vm;       /* QEMU binary, accelerator */
} FerrySandboxConfig;

typedef struct {
  /* The VM is gone without ferry_sandbox_stop(): QEMU crashed or the guest powered
   * off (error says which). Every container reads as exited. Once. */
  void (*vm_exited)(FerrySandbox *sandbox, const GError *error, gpointer user_data);
  /* A live migration's phase, as the VM reports it (vm.h, FerryVmNotification). */
  void (*migration_note)(FerrySandbox *sandbox, const FerryVmNotification *note,
                         gpointer user_data);
  /* A migration destination's guest connection was rebuilt (the agent dialed the
   * bridge again) and has not negotiated yet: reopen its processes here
   * (ferry_guest_container_open_process_with_io on ferry_sandbox_get_container), so
   * that their waits are routed. The containers are open already. */
  void (*restore)(FerrySandbox *sandbox, FerryGuestConnection *gc, gpointer user_data);
  /* The guest kernel's OOM killer killed a process of container `container_id`
   * (borrowed), one of the sandbox's table; the container goes on. Runs in the order of
   * the guest's messages: before the exit the kill caused reaches a process's wait. */
  void (*container_oom)(FerrySandbox *sandbox, const char *container_id, gpointer user_data);
} FerrySandboxHandlers;

typedef void (*FerrySandboxDoneFunc)(FerrySandbox *sandbox, const GError *error,
                                     gpointer user_data);

/*
 * A sandbox from `config` (copied; checked here: INVALID_ARGUMENT naming the field, or
 * NOT_FOUND for a kernel or initrd that is not there). Nothing runs until
 * ferry_sandbox_start(). `handlers` is copied and may be NULL.
 */
FerrySandbox *ferry_sandbox_new(const FerrySandboxConfig *config,
                                const FerrySandboxHandlers *handlers, gpointer user_data,
                                GError **error);
/* Stops everything without callbacks: QEMU is killed by its pid if it still runs. */
void ferry_sandbox_free(FerrySandbox *sandbox);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FerrySandbox, ferry_sandbox_free)

/*
 * Boot: start QEMU, attach the mux, wait for the agent to dial the bridge and
 * negotiate. `done` runs once: error NULL when the guest connection is ready, else why
 * (QEMU's own message when it failed to start; DEADLINE_EXCEEDED naming the console
 * log when the agent did not come up in time; the VM is then terminated).
 */
void ferry_sandbox_start(FerrySandbox *sandbox, FerrySandboxDoneFunc done, gpointer user_data);

/* Stop: terminate the VM (QEMU quits, or is killed by pid after a few seconds); `done`
 * runs once it is gone. No vm_exited follows. */
void ferry_sandbox_stop(FerrySandbox *sandbox, FerrySandboxDoneFunc done, gpointer user_data);

const char *ferry_sandbox_get_id(FerrySandbox *sandbox);
/* Borrowed; valid while the sandbox lives. The guest connection is NULL before the
 * start succeeded. */
FerryVm *ferry_sandbox_get_vm(FerrySandbox *sandbox);
FerryGuestConnection *ferry_sandbox_get_guest(FerrySandbox *sandbox);
FerryStdioPorts *ferry_sandbox_get_ports(FerrySandbox *sandbox);
/* TRUE between a successful start and stop or the VM's death. */
gboolean ferry_sandbox_is_running(FerrySandbox *sandbox);

/*
 * Create container `id` in the guest with `config` (borrowed; the bridge's
 * ContainerConfig) and keep it in the sandbox's table. `done` reports the guest's
 * answer; on failure the container leaves the table. ALREADY_EXISTS (from `done`) for
 * an id in the table, FAILED_PRECONDITION when the sandbox does not run.
 */
void ferry_sandbox_create_container(FerrySandbox *sandbox, const char *id, json_t *config,
                                    FerrySandboxDoneFunc done, gpointer user_data);
/* The container `id`, borrowed, or NULL. */
FerryGuestContainer *ferry_sandbox_get_container(FerrySandbox *sandbox, const char *id);
/* Take `id` out of the table and close the host's side of it (the guest's container is
 * not touched: delete it first). */
void ferry_sandbox_forget_container(FerrySandbox *sandbox, const char *id);
/* Ids in the table, sorted; free with g_strfreev. */
GStrv ferry_sandbox_list_containers(FerrySandbox *sandbox);

/* ------------------------------------------------------------ container roots -- */

/* Where a container's bundle and root live in the guest (newly allocated). */
char *ferry_sandbox_guest_bundle(const char *container_id);
char *ferry_sandbox_guest_root(const char *container_id);

/* One read-only layer image of a container root: `digest` names its content (equal
 * digests are one image), `path` is the host file. */
typedef struct {
  const char *path;
  const char *digest;
} FerrySandboxLayer;

/*
 * Attach a container's root: each image (`layers`, top first, copied) is hot-added once
 * per sandbox as a read-only SCSI disk (shared by every container using that digest),
 * mounted by the agent at /run/mounts/scsi/m<lun>, and the layers are combined at
 * ferry_sandbox_guest_root() with a writable upper in a tmpfs of `scratch_mb` MiB (0:
 * the agent's default) in guest RAM. Attaches and detaches run one at a time, in order.
 * On failure nothing of this attach stays (disks it added are removed again).
 * ALREADY_EXISTS for a container whose root is attached, FAILED_PRECONDITION when the
 * sandbox does not run.
 */
void ferry_sandbox_attach_root(FerrySandbox *sandbox, const char *container_id,
                               const FerrySandboxLayer *layers, guint n_layers, guint scratch_mb,
                               FerrySandboxDoneFunc done, gpointer user_data);
/* Undo attach: the overlay goes (with what the container wrote), and every disk no
 * other container uses is unmounted and hot-removed. NOT_FOUND for no attached root. */
void ferry_sandbox_detach_root(FerrySandbox *sandbox, const char *container_id,
                               FerrySandboxDoneFunc done, gpointer user_data);
/* How many layer disks the sandbox has attached now. */
guint ferry_sandbox_disk_count(FerrySandbox *sandbox);

/* ------------------------------------------------------------ live migration -- */

/*
 * A running sandbox moves to another FerrySandbox (another process, another host) in
 * these steps (docs/migration.md, "The sandbox's part"):
 *
 *   source       prepare                         transfer(fd) .. handover ... cleanup
 *   destination  start_incoming(description)     transfer(fd) ......... resume(handover)
 *
 * The source describes itself (size, disks by digest, roots, containers) for the
 * destination's start_incoming; the memory goes over a connected stream socket, one end
 * on each side; once the transfer has completed (OFFLINE_DONE), the source's handover
 * says where every stdio channel stands and the guest manager's floors, and the
 * destination resumes from exactly there. Until cleanup the source keeps its paused
 * QEMU: recover() runs the guest here again if the destination never ran it.
 * Callbacks come from the loop, never inside the call.
 */

/* Source: check that the sandbox can migrate (running, no root change under way,
 * ferry_vm_doc_check_migratable: 1 vCPU under TCG) before QEMU is touched, then put the
 * VM in migration mode with `options` (copied; may be NULL). FAILED_PRECONDITION with
 * the reason otherwise. */
void ferry_sandbox_migration_prepare(FerrySandbox *sandbox, const FerryVmMigrationOptions *options,
                                     FerrySandboxDoneFunc done, gpointer user_data);

/* Source: what the destination needs to render the same machine: a JSON object with
 * the schema version, id, memory and vCPUs, the layer disks ({digest, lun}), the
 * container roots ({id, digests}) and the container ids. No host path is in it. */
json_t *ferry_sandbox_migration_describe(FerrySandbox *sandbox);

/*
 * Destination: instead of ferry_sandbox_start(), start QEMU paused for an incoming
 * stream, with the machine of `description` (borrowed): its memory and vCPUs, and its
 * disks, each image found in `images` (digest -> this host's path; FAILED_PRECONDITION
 * naming a digest it lacks). The containers it lists are reopened on resume.
 */
void ferry_sandbox_start_incoming(FerrySandbox *sandbox, json_t *description, GHashTable *images,
                                  const FerryVmMigrationOptions *options, FerrySandboxDoneFunc done,
                                  gpointer user_data);

/* Both: run the memory transfer over `fd` (a connected stream socket; the caller keeps
 * its own). `done` runs when it has begun; the phases follow as migration_note. The
 * source first quiets its mux and waits (at most 10 s) until the guest has read every
 * byte it sent, so that the guest will read the destination's first frame whole. */
void ferry_sandbox_migration_transfer(FerrySandbox *sandbox, int fd, FerrySandboxDoneFunc done,
                                      gpointer user_data);

/* Where the source's stdio channels stood when it handed over: each a serialized
 * FerryMuxChannelState (mux.h), and the guest manager's floors. */
typedef struct {
  guint32 next_port;
  guint64 next_request_id;
  GPtrArray *channels; /* GBytes */
} FerrySandboxHandover;
void ferry_sandbox_handover_free(FerrySandboxHandover *handover);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FerrySandboxHandover, ferry_sandbox_handover_free)

/* Source, after the transfer completed: freeze the mux (nothing more is consumed
 * here) and export every stdio channel. Synchronous; may be asked again (the same
 * answer). FAILED_PRECONDITION before the transfer completed. */
FerrySandboxHandover *ferry_sandbox_migration_handover(FerrySandbox *sandbox, GError **error);

/* The same export while the sandbox runs, without freezing anything: what a
 * destination resumes from when the final handover never reaches it (at-least-once:
 * what this host consumes afterwards is sent again). */
FerrySandboxHandover *ferry_sandbox_migration_snapshot(FerrySandbox *sandbox, GError **error);

/* Source, after handover: the destination runs the guest; QEMU here ends. */
void ferry_sandbox_migration_cleanup(FerrySandbox *sandbox, FerrySandboxDoneFunc done,
                                     gpointer user_data);

/* Source, any time from prepare to cleanup, when the destination never ran the guest:
 * the guest runs here again (RECOVERY_DONE), the mux thaws, nothing lost. */
void ferry_sandbox_migration_recover(FerrySandbox *sandbox, FerrySandboxDoneFunc done,
                                     gpointer user_data);

/* Destination, after the transfer completed: import the handover's channels, attach
 * the mux to the guest's port and run the guest; the agent dials the bridge again,
 * the containers are reopened and handlers.restore runs, the connection negotiates,
 * and then `done` runs (the sandbox is running). `blackout_started_us` as in
 * ferry_vm_migration_finalize(). */
void ferry_sandbox_migration_resume(FerrySandbox *sandbox, const FerrySandboxHandover *handover,
                                    gint64 blackout_started_us, FerrySandboxDoneFunc done,
                                    gpointer user_data);

/* Destination: TRUE once resume told QEMU to run the guest (whatever came after). A
 * source may recover only while this is FALSE on its destination. */
gboolean ferry_sandbox_migration_guest_ran(FerrySandbox *sandbox);

G_END_DECLS
