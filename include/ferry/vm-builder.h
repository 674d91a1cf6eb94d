/*
 * The VM builder: the VM document (JSON modelled on HCS's ComputeSystem schema, as
 * hcsshim's internal/vm/builder wrote it) with validation, and its rendering to a QEMU
 * command line. Pure data: nothing here touches the host except
 * ferry_vm_detect_accel() and ferry_vm_host_tsc_khz(), which read files named by their
 * callers, and the environment variables documented below. The schema, the defaults
 * and what QEMU does with each field are in docs/vm-builder.md.
 *
 * A document is plain JSON. Setters change it without checking (as hcsshim's builder
 * does); ferry_vm_doc_validate() checks everything and names the JSON path of the
 * first problem. Adders check their own arguments and refuse duplicates.
 */
#pragma once

#include <glib.h>
#include <jansson.h>

G_BEGIN_DECLS

typedef enum {
  FERRY_VM_ACCEL_AUTO,
  FERRY_VM_ACCEL_KVM,
  FERRY_VM_ACCEL_TCG,
} FerryVmAccel;

typedef struct _FerryVmDoc FerryVmDoc;

/* Defaults (ferry_vm_doc_new, and what an absent SizeInMB / Count means). */
#define FERRY_VM_DEFAULT_MEMORY_MB 256u
#define FERRY_VM_DEFAULT_PROCESSOR_COUNT 1u
#define FERRY_VM_DEFAULT_MACHINE "microvm"

/* Limits the validation enforces. Host-independent, so that a document valid on one
 * host is valid on every host (it travels with a migration). */
#define FERRY_VM_MAX_MEMORY_MB (1024u * 1024u) /* 1 TiB */
#define FERRY_VM_MAX_PROCESSOR_COUNT 255u
#define FERRY_VM_MAX_NUMA_NODES 64u
#define FERRY_VM_MAX_MUX_PORTS 30u /* a virtio-serial device has 31 ports, 0 is the console */
#define FERRY_VM_MAX_PORT_NAME 127u
#define FERRY_VM_MAX_SHARE_TAG 31u
#define FERRY_VM_MAX_SCSI_CONTROLLERS 4u  /* as HCS */
#define FERRY_VM_MAX_SCSI_LUN 63u         /* as HCS: 64 per controller */
#define FERRY_VM_MAX_VIRTIO_DEVICES 24u   /* microvm has 24 virtio-mmio transports */
#define FERRY_VM_MAX_KERNEL_CMDLINE 2047u /* x86 COMMAND_LINE_SIZE 2048, with the NUL */
/* sun_path is 108 bytes with the NUL. */
#define FERRY_VM_MAX_SOCKET_PATH 107u

/* The default document: Owner `owner` (copied), SchemaVersion 2.1,
 * ShouldTerminateOnLastHandleClosed and StopOnReset true, 256 MiB, 1 vCPU, machine
 * microvm, no devices, no kernel (it validates, but does not render until a kernel is
 * set). Never NULL. */
FerryVmDoc *ferry_vm_doc_new(const char *owner);
/* A document from `json` (borrowed; deep-copied), validated. NULL with
 * INVALID_ARGUMENT naming the JSON path of the problem. */
FerryVmDoc *ferry_vm_doc_from_json(json_t *json, GError **error);
/* The same from JSON text. */
FerryVmDoc *ferry_vm_doc_from_string(const char *text, GError **error);
/* A deep copy. */
FerryVmDoc *ferry_vm_doc_copy(const FerryVmDoc *doc);
/* The document itself (borrowed: valid until the next change or the free). */
json_t *ferry_vm_doc_get(const FerryVmDoc *doc);
/* Compact JSON with sorted keys (stable: equal documents give equal text). Caller
 * frees it with g_free. */
char *ferry_vm_doc_to_string(const FerryVmDoc *doc);
/* Check every known field: types, ranges, enums, names, absolute paths, duplicates,
 * NUMA against the processor count and memory. Unknown fields are kept and not
 * checked. FALSE with INVALID_ARGUMENT "invalid VM document: <path>: <problem>". */
gboolean ferry_vm_doc_validate(const FerryVmDoc *doc, GError **error);
void ferry_vm_doc_free(FerryVmDoc *doc);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FerryVmDoc, ferry_vm_doc_free)

/*
 * Setters, mirroring hcsshim's builder. JSON arguments are borrowed and deep-copied;
 * NULL is a no-op. Each replaces its whole block (so a later set_processor drops an
 * earlier set_cpu_group, as in hcsshim). Nothing is checked until validation.
 */
/* VirtualMachine.ComputeTopology.Memory (VirtualMachineMemory). */
void ferry_vm_doc_set_memory(FerryVmDoc *doc, json_t *memory);
/* Memory.SlitType = "FirmwareFallbackMeasured" (hcsshim's SetFirmwareFallbackMeasuredSlit). */
void ferry_vm_doc_set_firmware_fallback_measured_slit(FerryVmDoc *doc);
/* VirtualMachine.ComputeTopology.Processor (VirtualMachineProcessor). */
void ferry_vm_doc_set_processor(FerryVmDoc *doc, json_t *processor);
/* Processor.CpuGroup = {Id}; the rest of Processor (Count...) is kept. */
void ferry_vm_doc_set_cpu_group(FerryVmDoc *doc, const char *id);
/* VirtualMachine.ComputeTopology.Numa. */
void ferry_vm_doc_set_numa(FerryVmDoc *doc, json_t *numa);
/* Processor.NumaProcessorsSettings ({count_per_node: {max}, node_per_socket}). */
void ferry_vm_doc_set_numa_processors(FerryVmDoc *doc, json_t *settings);
/* VirtualMachine.StorageQoS ({IopsMaximum, BandwidthMaximum}). */
void ferry_vm_doc_set_storage_qos(FerryVmDoc *doc, json_t *qos);
/* Chipset.LinuxKernelDirect with the non-NULL arguments (copied). */
void ferry_vm_doc_set_kernel_direct(FerryVmDoc *doc, const char *kernel, const char *initrd,
                                    const char *cmdline);
/* VirtualMachine.Ferry.Machine: "microvm", "q35" or "pc". */
void ferry_vm_doc_set_machine(FerryVmDoc *doc, const char *machine);

/*
 * Adders. Each checks its arguments (INVALID_ARGUMENT naming the bad one) and refuses
 * a duplicate with ALREADY_EXISTS. Strings are copied. Nothing changes on error.
 */
/* A virtio-serial port (the guest agent's channel mux) named `name`: the guest finds it
 * in /sys/class/virtio-ports/<port>/name (/dev/virtio-ports/<name> with udev), so
 * [A-Za-z0-9._-], 1..127 characters. At most FERRY_VM_MAX_MUX_PORTS (RESOURCE_EXHAUSTED). */
gboolean ferry_vm_doc_add_mux_port(FerryVmDoc *doc, const char *name, GError **error);
/* Devices.Scsi[id] = {Attachments: {}}. At most FERRY_VM_MAX_SCSI_CONTROLLERS. */
gboolean ferry_vm_doc_add_scsi_controller(FerryVmDoc *doc, const char *id, GError **error);
/* Devices.Scsi[controller].Attachments["<lun>"] = {Type VirtualDisk, Path, ReadOnly}.
 * FAILED_PRECONDITION when no controller was added, NOT_FOUND for an unknown one
 * (hcsshim's two errors), INVALID_ARGUMENT for a LUN over FERRY_VM_MAX_SCSI_LUN or a
 * relative path. The image is raw (see docs for Format). */
gboolean ferry_vm_doc_add_scsi_disk(FerryVmDoc *doc, const char *controller, guint lun,
                                    const char *path, gboolean read_only, GError **error);
/* Remove Devices.Scsi[controller].Attachments["<lun>"]: NOT_FOUND for an unknown
 * controller or a LUN without a disk. */
gboolean ferry_vm_doc_remove_scsi_disk(FerryVmDoc *doc, const char *controller, guint lun,
                                       GError **error);
/* The attachment at that LUN (borrowed from the document), or NULL. */
json_t *ferry_vm_doc_scsi_disk(const FerryVmDoc *doc, const char *controller, guint lun);
/* A Plan9 share (rendered as virtio-9p): `tag` is the guest's mount tag,
 * [A-Za-z0-9._-] 1..31 characters; host_path absolute. */
gboolean ferry_vm_doc_add_share(FerryVmDoc *doc, const char *tag, const char *host_path,
                                gboolean read_only, GError **error);
/* A NIC on QEMU user-mode networking. `id` as a port name; `mac` NULL (QEMU picks one)
 * or six hex octets separated by ':' or '-', unicast and not all zero. */
gboolean ferry_vm_doc_add_nic(FerryVmDoc *doc, const char *id, const char *mac, GError **error);

/* Readers. Absent or ill-typed fields give the defaults. */
guint ferry_vm_doc_memory_mb(const FerryVmDoc *doc);
guint ferry_vm_doc_processor_count(const FerryVmDoc *doc);
/* Borrowed from the document (or the static default). */
const char *ferry_vm_doc_machine(const FerryVmDoc *doc);

/*
 * Can this VM be live-migrated with `accel`? Not under TCG (or AUTO, which may become
 * TCG) with more than one vCPU (docs/qemu.md, migration, failure 1: QEMU 7.2 crashes a
 * multi-vCPU guest that dirties memory fast after the switch), and not with Plan9
 * shares (QEMU blocks migration while the guest has a virtio-9p mount). FALSE with
 * FAILED_PRECONDITION and the reason; INVALID_ARGUMENT for an invalid document.
 */
gboolean ferry_vm_doc_check_migratable(const FerryVmDoc *doc, FerryVmAccel accel, GError **error);

/*
 * The accelerator to use: KVM only when the first "flags" line of `cpuinfo_path` has
 * vmx or svm AND `kvm_path` opens read-write, else TCG (/dev/kvm on these machines is
 * a PVM hypervisor that cannot run a normal kernel, and the flags have no vmx/svm).
 * NULL paths: /proc/cpuinfo, /dev/kvm. Never returns AUTO. Does not block beyond
 * reading the file. The library reads no environment: a program that lets the user
 * choose (FERRY_ACCEL, a flag) parses it with ferry_vm_accel_parse() and passes it in.
 */
FerryVmAccel ferry_vm_detect_accel(const char *cpuinfo_path, const char *kvm_path, GError **error);
/* "kvm", "tcg", "auto" (NULL and "" are auto) into *accel; anything else FALSE with
 * INVALID_ARGUMENT naming it. */
gboolean ferry_vm_accel_parse(const char *name, FerryVmAccel *accel, GError **error);
/* "auto", "kvm", "tcg". Static. */
const char *ferry_vm_accel_name(FerryVmAccel accel);
/* The host TSC in kHz from the first "cpu MHz" of `cpuinfo_path` (NULL: /proc/cpuinfo),
 * for microvm's tsc_early_khz; 0 when unknown. */
guint64 ferry_vm_host_tsc_khz(const char *cpuinfo_path);

/*
 * What a QEMU binary is, for a migration's compatibility check (docs/migration.md, the
 * sandbox state): its version and the machine type a machine name resolves to there (an
 * alias such as "q35" names "pc-q35-7.2" on QEMU 7.2, another machine on another QEMU).
 * The parsers are pure: `--version`'s text gives "7.2.22"; `-machine help`'s text and a
 * name give the name it is an alias of, or the name itself, or NULL if QEMU lacks it.
 */
char *ferry_vm_parse_qemu_version(const char *version_text);
char *ferry_vm_parse_machine_type(const char *machine_help, const char *machine);
/* Runs `qemu_binary` (NULL: qemu-system-x86_64) with --version and -machine help; blocks
 * for as long as QEMU takes to print them (tens of milliseconds). */
gboolean ferry_vm_probe_qemu(const char *qemu_binary, const char *machine, char **version,
                             char **machine_type, GError **error);

typedef struct {
  const char *qemu_binary; /* NULL: "qemu-system-x86_64" (on PATH) */
  FerryVmAccel accel;      /* AUTO: ferry_vm_detect_accel(NULL, NULL) */
  const char *state_dir;   /* absolute; the sockets and console.log go here (not created) */
  gboolean paused;         /* -S: start with the vCPUs stopped */
  gboolean incoming;       /* migration destination: -incoming defer (implies -S) */
  guint64 tsc_khz;         /* microvm: tsc_early_khz; 0: ferry_vm_host_tsc_khz(NULL) */
} FerryVmRenderOptions;

/*
 * The QEMU command line for `doc` (argv[0] = the binary), NULL-terminated; free with
 * g_strfreev. Validates first. Sockets, all created by QEMU as servers:
 * <state_dir>/qmp.sock (QMP) and ferry_vm_doc_port_socket() for each mux port; the
 * serial console goes to <state_dir>/console.log. Errors: INVALID_ARGUMENT for an
 * invalid document, a field QEMU cannot express (named), a socket path over
 * FERRY_VM_MAX_SOCKET_PATH (named), a kernel command line that grows too long;
 * FAILED_PRECONDITION when no kernel is set. Does not block.
 */
GStrv ferry_vm_doc_render(const FerryVmDoc *doc, const FerryVmRenderOptions *options,
                          GError **error);
/* The unix socket of mux port `port_name`: <state_dir>/port-<index>.sock, the index
 * being the port's position in the document (stable for a given document, and the
 * same on a migration's source and destination). NULL when the document has no such
 * port. Caller frees it. */
char *ferry_vm_doc_port_socket(const FerryVmDoc *doc, const char *state_dir, const char *port_name);

G_END_DECLS
