/*
 * The project's own .proto files (proto/containerd, proto/hcsshim) compiled by protoc-c:
 * service and method names as they appear on the ttrpc wire, every field number from
 * the reference tables, and byte-exact encodings against wire bytes worked out by hand
 * (each expected hex string is annotated field by field).
 */
#include <glib.h>
#include <protobuf-c/protobuf-c.h>
#include <string.h>

#include "containerd/events/task.pb-c.h"
#include "containerd/services/events/ttrpc/v1/events.pb-c.h"
#include "containerd/task/v2/shim.pb-c.h"
#include "containerd/types/event.pb-c.h"
#include "containerd/types/mount.pb-c.h"
#include "containerd/types/task/task.pb-c.h"
#include "ferry/migration/v1/status.pb-c.h"
#include "ferry/v1/mux.pb-c.h"
#include "hcsshim/migration.pb-c.h"
#include "hcsshim/migration_options.pb-c.h"
#include "test/hcsshim_upstream.pb-c.h"

/* ---- helpers ---- */

/* Lower-case hex without separators. */
static char *hex_encode(const uint8_t *data, size_t len)
{
  char *out = g_malloc(len * 2 + 1);

  for (size_t i = 0; i < len; i++)
    g_snprintf(out + i * 2, 3, "%02x", data[i]);
  out[len * 2] = '\0';
  return out;
}

/* `hex` may contain spaces between digits for readability. */
static GBytes *hex_decode(const char *hex)
{
  GByteArray *out = g_byte_array_new();
  int hi = -1;

  for (const char *p = hex; *p; p++) {
    if (*p == ' ')
      continue;
    int v = g_ascii_xdigit_value(*p);
    g_assert_cmpint(v, >=, 0);
    if (hi < 0) {
      hi = v;
    } else {
      guint8 b = (guint8)(hi << 4 | v);
      g_byte_array_append(out, &b, 1);
      hi = -1;
    }
  }
  g_assert_cmpint(hi, ==, -1);
  return g_byte_array_free_to_bytes(out);
}

static char *hex_clean(const char *hex)
{
  g_autoptr(GBytes) bytes = hex_decode(hex);
  gsize len;
  const guint8 *data = g_bytes_get_data(bytes, &len);

  return hex_encode(data, len);
}

static char *pack_hex(const ProtobufCMessage *msg)
{
  size_t size = protobuf_c_message_get_packed_size(msg);
  g_autofree uint8_t *buf = g_malloc(size + 1);
  size_t written = protobuf_c_message_pack(msg, buf);

  g_assert_cmpuint(written, ==, size);
  return hex_encode(buf, written);
}

/* Packs `msg` and compares the result with the hand-written `hex`. */
#define assert_packs_to(msg, hex)                                                                  \
  do {                                                                                             \
    g_autofree char *got_ = pack_hex(msg);                                                         \
    g_autofree char *want_ = hex_clean(hex);                                                       \
    g_assert_cmpstr(got_, ==, want_);                                                              \
  } while (0)

/* Unpacks `hex` with `desc` (must succeed), repacks it and checks the bytes are equal. */
static ProtobufCMessage *unpack_hex_roundtrip(const ProtobufCMessageDescriptor *desc,
                                              const char *hex)
{
  g_autoptr(GBytes) bytes = hex_decode(hex);
  gsize len;
  const guint8 *data = g_bytes_get_data(bytes, &len);
  ProtobufCMessage *msg = protobuf_c_message_unpack(desc, NULL, len, data);

  g_assert_nonnull(msg);
  g_assert_true(msg->descriptor == desc);

  size_t size = protobuf_c_message_get_packed_size(msg);
  g_autofree uint8_t *buf = g_malloc(size + 1);
  size_t written = protobuf_c_message_pack(msg, buf);
  g_assert_cmpmem(buf, written, data, len);
  return msg;
}

static const char *field_type_name(const ProtobufCFieldDescriptor *f)
{
  switch (f->type) {
  case PROTOBUF_C_TYPE_MESSAGE:
    return ((const ProtobufCMessageDescriptor *)f->descriptor)->name;
  case PROTOBUF_C_TYPE_ENUM:
    return ((const ProtobufCEnumDescriptor *)f->descriptor)->name;
  case PROTOBUF_C_TYPE_STRING:
    return "string";
  case PROTOBUF_C_TYPE_BYTES:
    return "bytes";
  case PROTOBUF_C_TYPE_BOOL:
    return "bool";
  case PROTOBUF_C_TYPE_UINT32:
    return "uint32";
  case PROTOBUF_C_TYPE_UINT64:
    return "uint64";
  case PROTOBUF_C_TYPE_INT32:
    return "int32";
  case PROTOBUF_C_TYPE_INT64:
    return "int64";
  case PROTOBUF_C_TYPE_DOUBLE:
    return "double";
  default:
    return "other";
  }
}

/*
 * "full.Name { field number type; ... }" from a descriptor, fields in number order;
 * repeated fields get "[]" after the type, oneof members " oneof".
 */
static char *describe_message(const ProtobufCMessageDescriptor *d)
{
  GString *s = g_string_new(d->name);

  g_string_append(s, " {");
  for (unsigned i = 0; i < d->n_fields; i++) {
    const ProtobufCFieldDescriptor *f = &d->fields[i];
    g_string_append_printf(s, "%s %s %u %s%s%s", i ? ";" : "", f->name, f->id, field_type_name(f),
                           f->label == PROTOBUF_C_LABEL_REPEATED ? "[]" : "",
                           (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) ? " oneof" : "");
  }
  g_string_append(s, " }");
  return g_string_free(s, FALSE);
}

typedef struct {
  const ProtobufCMessageDescriptor *desc;
  const char *want;
} MessageShape;

static void assert_message_shapes(const MessageShape *shapes, size_t n)
{
  for (size_t i = 0; i < n; i++) {
    g_autofree char *got = describe_message(shapes[i].desc);
    g_assert_cmpstr(got, ==, shapes[i].want);
    /* Lookup by number must agree with the table (protoc-c keeps a separate index). */
    for (unsigned j = 0; j < shapes[i].desc->n_fields; j++) {
      const ProtobufCFieldDescriptor *f = &shapes[i].desc->fields[j];
      g_assert_true(protobuf_c_message_descriptor_get_field(shapes[i].desc, f->id) == f);
    }
  }
}

/* "NAME=number; ..." in declaration order. */
static char *describe_enum(const ProtobufCEnumDescriptor *d)
{
  GString *s = g_string_new(d->name);

  g_string_append(s, " {");
  for (unsigned i = 0; i < d->n_values; i++)
    g_string_append_printf(s, "%s %s=%d", i ? ";" : "", d->values[i].name, d->values[i].value);
  g_string_append(s, " }");
  return g_string_free(s, FALSE);
}

/* Checks the service name and, in order, "Method(input) output" for every method. */
static void assert_service(const ProtobufCServiceDescriptor *d, const char *name,
                           const char *const *methods, size_t n_methods)
{
  g_assert_cmpstr(d->name, ==, name);
  g_assert_cmpuint(d->n_methods, ==, n_methods);
  for (size_t i = 0; i < n_methods; i++) {
    const ProtobufCMethodDescriptor *m = &d->methods[i];
    g_autofree char *got = g_strdup_printf("%s(%s) %s", m->name, m->input->name, m->output->name);
    g_assert_cmpstr(got, ==, methods[i]);
    /* A dispatcher finds the method by its bare wire name. */
    g_assert_true(protobuf_c_service_descriptor_get_method_by_name(d, m->name) == m);
  }
  g_assert_null(protobuf_c_service_descriptor_get_method_by_name(d, "Nope"));
}

/* ---- service descriptors ---- */

static void test_task_service(void)
{
  static const char *const methods[] = {
    "State(containerd.task.v2.StateRequest) containerd.task.v2.StateResponse",
    "Create(containerd.task.v2.CreateTaskRequest) containerd.task.v2.CreateTaskResponse",
    "Start(containerd.task.v2.StartRequest) containerd.task.v2.StartResponse",
    "Delete(containerd.task.v2.DeleteRequest) containerd.task.v2.DeleteResponse",
    "Pids(containerd.task.v2.PidsRequest) containerd.task.v2.PidsResponse",
    "Pause(containerd.task.v2.PauseRequest) google.protobuf.Empty",
    "Resume(containerd.task.v2.ResumeRequest) google.protobuf.Empty",
    "Checkpoint(containerd.task.v2.CheckpointTaskRequest) google.protobuf.Empty",
    "Kill(containerd.task.v2.KillRequest) google.protobuf.Empty",
    "Exec(containerd.task.v2.ExecProcessRequest) google.protobuf.Empty",
    "ResizePty(containerd.task.v2.ResizePtyRequest) google.protobuf.Empty",
    "CloseIO(containerd.task.v2.CloseIORequest) google.protobuf.Empty",
    "Update(containerd.task.v2.UpdateTaskRequest) google.protobuf.Empty",
    "Wait(containerd.task.v2.WaitRequest) containerd.task.v2.WaitResponse",
    "Stats(containerd.task.v2.StatsRequest) containerd.task.v2.StatsResponse",
    "Connect(containerd.task.v2.ConnectRequest) containerd.task.v2.ConnectResponse",
    "Shutdown(containerd.task.v2.ShutdownRequest) google.protobuf.Empty",
  };

  assert_service(&containerd__task__v2__task__descriptor, "containerd.task.v2.Task", methods,
                 G_N_ELEMENTS(methods));
}

static void test_events_service(void)
{
  static const char *const methods[] = {
    "Forward(containerd.services.events.ttrpc.v1.ForwardRequest) google.protobuf.Empty",
  };

  assert_service(&containerd__services__events__ttrpc__v1__events__descriptor,
                 "containerd.services.events.ttrpc.v1.Events", methods, G_N_ELEMENTS(methods));
}

static void test_migration_service(void)
{
  /* Notifications is server-streaming; protobuf-c descriptors carry no streaming flag. */
  static const char *const methods[] = {
    "PrepareAndExportSandbox(PrepareAndExportSandboxRequest) PrepareAndExportSandboxResponse",
    "ImportSandbox(ImportSandboxRequest) ImportSandboxResponse",
    "PrepareSandbox(PrepareSandboxRequest) PrepareSandboxResponse",
    "TransferSandbox(TransferSandboxRequest) TransferSandboxResponse",
    "FinalizeSandbox(FinalizeSandboxRequest) FinalizeSandboxResponse",
    "CreateDuplicateSocket(CreateDuplicateSocketRequest) CreateDuplicateSocketResponse",
    "Notifications(NotificationsRequest) NotificationsResponse",
    "Cancel(CancelRequest) CancelResponse",
    "Cleanup(CleanupRequest) CleanupResponse",
  };

  /* No proto package: the wire name is the bare service name. */
  assert_service(&migration__descriptor, "Migration", methods, G_N_ELEMENTS(methods));
}

/* ---- field tables ---- */

static void test_task_fields(void)
{
  static const MessageShape shapes[] = {
    { &containerd__types__mount__descriptor,
      "containerd.types.Mount { type 1 string; source 2 string; target 3 string; "
      "options 4 string[] }" },
    { &containerd__v1__types__process_info__descriptor,
      "containerd.v1.types.ProcessInfo { pid 1 uint32; info 2 google.protobuf.Any }" },
    { &containerd__task__v2__state_request__descriptor,
      "containerd.task.v2.StateRequest { id 1 string; exec_id 2 string }" },
    { &containerd__task__v2__state_response__descriptor,
      "containerd.task.v2.StateResponse { id 1 string; bundle 2 string; pid 3 uint32; "
      "status 4 containerd.v1.types.Status; stdin 5 string; stdout 6 string; stderr 7 string; "
      "terminal 8 bool; exit_status 9 uint32; exited_at 10 google.protobuf.Timestamp; "
      "exec_id 11 string }" },
    { &containerd__task__v2__create_task_request__descriptor,
      "containerd.task.v2.CreateTaskRequest { id 1 string; bundle 2 string; "
      "rootfs 3 containerd.types.Mount[]; terminal 4 bool; stdin 5 string; stdout 6 string; "
      "stderr 7 string; checkpoint 8 string; parent_checkpoint 9 string; "
      "options 10 google.protobuf.Any }" },
    { &containerd__task__v2__create_task_response__descriptor,
      "containerd.task.v2.CreateTaskResponse { pid 1 uint32 }" },
    { &containerd__task__v2__start_request__descriptor,
      "containerd.task.v2.StartRequest { id 1 string; exec_id 2 string }" },
    { &containerd__task__v2__start_response__descriptor,
      "containerd.task.v2.StartResponse { pid 1 uint32 }" },
    { &containerd__task__v2__delete_request__descriptor,
      "containerd.task.v2.DeleteRequest { id 1 string; exec_id 2 string }" },
    { &containerd__task__v2__delete_response__descriptor,
      "containerd.task.v2.DeleteResponse { pid 1 uint32; exit_status 2 uint32; "
      "exited_at 3 google.protobuf.Timestamp }" },
    { &containerd__task__v2__pids_request__descriptor,
      "containerd.task.v2.PidsRequest { id 1 string }" },
    { &containerd__task__v2__pids_response__descriptor,
      "containerd.task.v2.PidsResponse { processes 1 containerd.v1.types.ProcessInfo[] }" },
    { &containerd__task__v2__pause_request__descriptor,
      "containerd.task.v2.PauseRequest { id 1 string }" },
    { &containerd__task__v2__resume_request__descriptor,
      "containerd.task.v2.ResumeRequest { id 1 string }" },
    { &containerd__task__v2__checkpoint_task_request__descriptor,
      "containerd.task.v2.CheckpointTaskRequest { id 1 string; path 2 string; "
      "options 3 google.protobuf.Any }" },
    { &containerd__task__v2__kill_request__descriptor,
      "containerd.task.v2.KillRequest { id 1 string; exec_id 2 string; signal 3 uint32; "
      "all 4 bool }" },
    { &containerd__task__v2__exec_process_request__descriptor,
      "containerd.task.v2.ExecProcessRequest { id 1 string; exec_id 2 string; terminal 3 bool; "
      "stdin 4 string; stdout 5 string; stderr 6 string; spec 7 google.protobuf.Any }" },
    { &containerd__task__v2__resize_pty_request__descriptor,
      "containerd.task.v2.ResizePtyRequest { id 1 string; exec_id 2 string; width 3 uint32; "
      "height 4 uint32 }" },
    { &containerd__task__v2__close_iorequest__descriptor,
      "containerd.task.v2.CloseIORequest { id 1 string; exec_id 2 string; stdin 3 bool }" },
    { &containerd__task__v2__update_task_request__descriptor,
      "containerd.task.v2.UpdateTaskRequest { id 1 string; resources 2 google.protobuf.Any; "
      "annotations 3 containerd.task.v2.UpdateTaskRequest.AnnotationsEntry[] }" },
    { &containerd__task__v2__wait_request__descriptor,
      "containerd.task.v2.WaitRequest { id 1 string; exec_id 2 string }" },
    { &containerd__task__v2__wait_response__descriptor,
      "containerd.task.v2.WaitResponse { exit_status 1 uint32; "
      "exited_at 2 google.protobuf.Timestamp }" },
    { &containerd__task__v2__stats_request__descriptor,
      "containerd.task.v2.StatsRequest { id 1 string }" },
    { &containerd__task__v2__stats_response__descriptor,
      "containerd.task.v2.StatsResponse { stats 1 google.protobuf.Any }" },
    { &containerd__task__v2__connect_request__descriptor,
      "containerd.task.v2.ConnectRequest { id 1 string }" },
    { &containerd__task__v2__connect_response__descriptor,
      "containerd.task.v2.ConnectResponse { shim_pid 1 uint32; task_pid 2 uint32; "
      "version 3 string }" },
    { &containerd__task__v2__shutdown_request__descriptor,
      "containerd.task.v2.ShutdownRequest { id 1 string; now 2 bool }" },
  };

  assert_message_shapes(shapes, G_N_ELEMENTS(shapes));
}

static void test_task_status_enum(void)
{
  g_autofree char *got = describe_enum(&containerd__v1__types__status__descriptor);

  g_assert_cmpstr(got, ==,
                  "containerd.v1.types.Status { UNKNOWN=0; CREATED=1; RUNNING=2; STOPPED=3; "
                  "PAUSED=4; PAUSING=5 }");
  g_assert_cmpint(CONTAINERD__V1__TYPES__STATUS__PAUSING, ==, 5);
}

static void test_events_fields(void)
{
  static const MessageShape shapes[] = {
    { &containerd__types__envelope__descriptor,
      "containerd.types.Envelope { timestamp 1 google.protobuf.Timestamp; namespace 2 string; "
      "topic 3 string; event 4 google.protobuf.Any }" },
    { &containerd__services__events__ttrpc__v1__forward_request__descriptor,
      "containerd.services.events.ttrpc.v1.ForwardRequest { "
      "envelope 1 containerd.types.Envelope }" },
    { &containerd__events__task_create__descriptor,
      "containerd.events.TaskCreate { container_id 1 string; bundle 2 string; "
      "rootfs 3 containerd.types.Mount[]; io 4 containerd.events.TaskIO; checkpoint 5 string; "
      "pid 6 uint32 }" },
    { &containerd__events__task_start__descriptor,
      "containerd.events.TaskStart { container_id 1 string; pid 2 uint32 }" },
    { &containerd__events__task_delete__descriptor,
      "containerd.events.TaskDelete { container_id 1 string; pid 2 uint32; exit_status 3 uint32; "
      "exited_at 4 google.protobuf.Timestamp; id 5 string }" },
    { &containerd__events__task_io__descriptor,
      "containerd.events.TaskIO { stdin 1 string; stdout 2 string; stderr 3 string; "
      "terminal 4 bool }" },
    { &containerd__events__task_exit__descriptor,
      "containerd.events.TaskExit { container_id 1 string; id 2 string; pid 3 uint32; "
      "exit_status 4 uint32; exited_at 5 google.protobuf.Timestamp }" },
    { &containerd__events__task_oom__descriptor,
      "containerd.events.TaskOOM { container_id 1 string }" },
    { &containerd__events__task_exec_added__descriptor,
      "containerd.events.TaskExecAdded { container_id 1 string; exec_id 2 string }" },
    { &containerd__events__task_exec_started__descriptor,
      "containerd.events.TaskExecStarted { container_id 1 string; exec_id 2 string; "
      "pid 3 uint32 }" },
    { &containerd__events__task_paused__descriptor,
      "containerd.events.TaskPaused { container_id 1 string }" },
    { &containerd__events__task_resumed__descriptor,
      "containerd.events.TaskResumed { container_id 1 string }" },
    { &containerd__events__task_checkpointed__descriptor,
      "containerd.events.TaskCheckpointed { container_id 1 string; checkpoint 2 string }" },
  };

  assert_message_shapes(shapes, G_N_ELEMENTS(shapes));
}

static void test_migration_fields(void)
{
  static const MessageShape shapes[] = {
    { &initialize_options__descriptor,
      "InitializeOptions { memory_transport 1 MemoryTransport; "
      "memory_transfer_throttle_params 2 MemoryTransferThrottleParams; "
      "compression_settings 3 CompressionSettings; checksum_verification 4 bool; "
      "perf_tracing_enabled 5 bool; cancel_if_blackout_threshold_exceeds 6 bool; "
      "prepare_memory_transfer_mode 7 bool; ferry_max_bandwidth 1000 uint64; "
      "ferry_no_postcopy 1001 bool; ferry_tls_dir 1002 string; ferry_tls_hostname 1003 string }" },
    { &memory_transfer_throttle_params__descriptor,
      "MemoryTransferThrottleParams { skip_throttling 1 bool; throttling_scale 2 double; "
      "minimum_throttle_percentage 3 uint32; target_number_of_brownout_transfer_passes 4 uint32; "
      "starting_brownout_pass_number_for_throttling 5 uint32; "
      "maximum_number_of_brownout_transfer_passes 6 uint32; "
      "target_blackout_transfer_time 7 uint32; "
      "blackout_time_threshold_for_cancelling_migration 8 uint32 }" },
    { &compression_settings__descriptor, "CompressionSettings { throttle_worker_count 1 uint32 }" },
    { &blackout_exited_event_details__descriptor,
      "BlackoutExitedEventDetails { blackout_duration_milliseconds 1 uint64; "
      "blackout_stop_timestamp 2 google.protobuf.Timestamp }" },
    { &notification__descriptor,
      "Notification { origin 1 Origin; phase 2 Phase; state 3 PhaseState; "
      "blackout_exited 4 BlackoutExitedEventDetails oneof }" },
    { &prepare_and_export_sandbox_request__descriptor,
      "PrepareAndExportSandboxRequest { session_id 1 string; init_options 2 InitializeOptions }" },
    { &prepare_and_export_sandbox_response__descriptor,
      "PrepareAndExportSandboxResponse { config 1 google.protobuf.Any }" },
    { &import_sandbox_request__descriptor,
      "ImportSandboxRequest { session_id 1 string; sandbox_id 2 string; "
      "config 3 google.protobuf.Any }" },
    { &import_sandbox_response__descriptor, "ImportSandboxResponse { }" },
    { &prepare_sandbox_request__descriptor,
      "PrepareSandboxRequest { session_id 1 string; init_options 2 InitializeOptions }" },
    { &prepare_sandbox_response__descriptor, "PrepareSandboxResponse { }" },
    { &transfer_sandbox_request__descriptor,
      "TransferSandboxRequest { session_id 1 string; timeout 2 google.protobuf.Duration }" },
    { &transfer_sandbox_response__descriptor, "TransferSandboxResponse { }" },
    /* Fields 1000 and up are Ferry's extensions (test_migration_ferry_extensions). */
    { &finalize_sandbox_request__descriptor,
      "FinalizeSandboxRequest { session_id 1 string; action 2 FinalizeAction; "
      "ferry_final_channels 1000 ferry.v1.FinalChannels }" },
    { &finalize_sandbox_response__descriptor,
      "FinalizeSandboxResponse { ferry_final_channels 1000 ferry.v1.FinalChannels }" },
    { &create_duplicate_socket_request__descriptor,
      "CreateDuplicateSocketRequest { session_id 1 string; protocol_info 2 bytes }" },
    { &create_duplicate_socket_response__descriptor, "CreateDuplicateSocketResponse { }" },
    { &notifications_request__descriptor, "NotificationsRequest { session_id 1 string }" },
    { &notifications_response__descriptor,
      "NotificationsResponse { message_id 1 uint32; notification 2 Notification; "
      "start_time 3 google.protobuf.Timestamp; update_time 4 google.protobuf.Timestamp }" },
    { &cancel_request__descriptor, "CancelRequest { session_id 1 string }" },
    { &cancel_response__descriptor, "CancelResponse { }" },
    { &cleanup_request__descriptor, "CleanupRequest { session_id 1 string }" },
    { &cleanup_response__descriptor, "CleanupResponse { }" },
  };

  assert_message_shapes(shapes, G_N_ELEMENTS(shapes));
}

static void test_migration_enums(void)
{
  static const struct {
    const ProtobufCEnumDescriptor *desc;
    const char *want;
  } enums[] = {
    { &memory_transport__descriptor,
      "MemoryTransport { MEMORY_TRANSPORT_UNSPECIFIED=0; MEMORY_TRANSPORT_TCP=1 }" },
    { &origin__descriptor,
      "Origin { ORIGIN_UNSPECIFIED=0; ORIGIN_SOURCE=1; ORIGIN_DESTINATION=2 }" },
    { &phase__descriptor,
      "Phase { PHASE_UNSPECIFIED=0; PHASE_SETUP_DONE=1; PHASE_TRANSFER_IN_PROGRESS=2; "
      "PHASE_BLACKOUT_STARTED=3; PHASE_OFFLINE_DONE=4; PHASE_BLACKOUT_EXITED=5; PHASE_DONE=6; "
      "PHASE_RECOVERY_DONE=7; PHASE_FAILED=8 }" },
    { &phase_state__descriptor,
      "PhaseState { PHASE_STATE_UNSPECIFIED=0; PHASE_STATE_SUCCESS=1; PHASE_STATE_CANCELLED=2; "
      "PHASE_STATE_GUEST_INITIATED_CANCELLATION=3; PHASE_STATE_SOURCE_FAILED=4; "
      "PHASE_STATE_DESTINATION_FAILED=5; PHASE_STATE_RECOVERY_FAILED=6 }" },
    { &finalize_action__descriptor,
      "FinalizeAction { FINALIZE_ACTION_UNSPECIFIED=0; FINALIZE_ACTION_STOP=1; "
      "FINALIZE_ACTION_RESUME=2 }" },
  };

  for (size_t i = 0; i < G_N_ELEMENTS(enums); i++) {
    g_autofree char *got = describe_enum(enums[i].desc);
    g_assert_cmpstr(got, ==, enums[i].want);
  }
}

/* compatibility_data (field 8) is gone on hcsshim main; an old peer's field 8 survives as an
 * unknown field instead of being misread. */
static void test_migration_no_compatibility_data(void)
{
  g_assert_null(protobuf_c_message_descriptor_get_field(&initialize_options__descriptor, 8));
  g_assert_null(protobuf_c_message_descriptor_get_field_by_name(&initialize_options__descriptor,
                                                                "compatibility_data"));

  /* memory_transport TCP (08 01), field 8 CompatibilityInfo{data 01} (42 03 0a 01 01). */
  InitializeOptions *opts = (InitializeOptions *)unpack_hex_roundtrip(
      &initialize_options__descriptor, "08 01 42 03 0a0101");
  g_assert_cmpint(opts->memory_transport, ==, MEMORY_TRANSPORT__MEMORY_TRANSPORT_TCP);
  g_assert_cmpuint(opts->base.n_unknown_fields, ==, 1);
  g_assert_cmpuint(opts->base.unknown_fields[0].tag, ==, 8);
  initialize_options__free_unpacked(opts, NULL);
}

/* ---- byte-exact encodings ---- */

/* The shape containerd 1.6 sends for `ctr run -d --rootfs` (docs/ttrpc.md, test vector 9):
 * id, bundle and the three stdio paths, no rootfs. */
static void test_task_create_wire_bytes(void)
{
  Containerd__Task__V2__CreateTaskRequest req = CONTAINERD__TASK__V2__CREATE_TASK_REQUEST__INIT;
  req.id = "t1";
  req.bundle = "/b/t1";
  req.stdin = "/f/i";
  req.stdout = "/f/o";
  req.stderr = "/f/e";

  const char *want = "0a02 7431"       /* 1 id "t1" */
                     "1205 2f622f7431" /* 2 bundle "/b/t1" */
                     "2a04 2f662f69"   /* 5 stdin "/f/i" */
                     "3204 2f662f6f"   /* 6 stdout "/f/o" */
                     "3a04 2f662f65";  /* 7 stderr "/f/e" */
  assert_packs_to(&req.base, want);

  Containerd__Task__V2__CreateTaskRequest *back =
      (Containerd__Task__V2__CreateTaskRequest *)unpack_hex_roundtrip(
          &containerd__task__v2__create_task_request__descriptor, want);
  g_assert_cmpstr(back->id, ==, "t1");
  g_assert_cmpstr(back->bundle, ==, "/b/t1");
  g_assert_cmpstr(back->stdin, ==, "/f/i");
  g_assert_cmpstr(back->stdout, ==, "/f/o");
  g_assert_cmpstr(back->stderr, ==, "/f/e");
  g_assert_cmpuint(back->n_rootfs, ==, 0);
  g_assert_false(back->terminal);
  g_assert_null(back->options);
  containerd__task__v2__create_task_request__free_unpacked(back, NULL);
}

/* With an image and the native snapshotter, containerd adds a bind rootfs mount (field 3). */
static void test_task_create_rootfs_wire_bytes(void)
{
  Containerd__Types__Mount mount = CONTAINERD__TYPES__MOUNT__INIT;
  char *options[] = { "rbind", "rw" };
  mount.type = "bind";
  mount.source = "/s";
  mount.n_options = G_N_ELEMENTS(options);
  mount.options = options;

  Containerd__Types__Mount *rootfs[] = { &mount };
  Containerd__Task__V2__CreateTaskRequest req = CONTAINERD__TASK__V2__CREATE_TASK_REQUEST__INIT;
  req.id = "t3";
  req.bundle = "/b";
  req.n_rootfs = 1;
  req.rootfs = rootfs;

  /* Mount: 0a04 "bind" (6) + 1202 "/s" (4) + 2205 "rbind" (7) + 2202 "rw" (4) = 21 = 0x15. */
  const char *want = "0a02 7433"       /* 1 id "t3" */
                     "1202 2f62"       /* 2 bundle "/b" */
                     "1a15"            /* 3 rootfs, 21 bytes */
                     "0a04 62696e64"   /*   1 type "bind" */
                     "1202 2f73"       /*   2 source "/s" */
                     "2205 7262696e64" /*   4 options "rbind" */
                     "2202 7277";      /*   4 options "rw" */
  assert_packs_to(&req.base, want);

  Containerd__Task__V2__CreateTaskRequest *back =
      (Containerd__Task__V2__CreateTaskRequest *)unpack_hex_roundtrip(
          &containerd__task__v2__create_task_request__descriptor, want);
  g_assert_cmpuint(back->n_rootfs, ==, 1);
  g_assert_cmpstr(back->rootfs[0]->type, ==, "bind");
  g_assert_cmpstr(back->rootfs[0]->source, ==, "/s");
  g_assert_cmpstr(back->rootfs[0]->target, ==, "");
  g_assert_cmpuint(back->rootfs[0]->n_options, ==, 2);
  g_assert_cmpstr(back->rootfs[0]->options[0], ==, "rbind");
  g_assert_cmpstr(back->rootfs[0]->options[1], ==, "rw");
  containerd__task__v2__create_task_request__free_unpacked(back, NULL);
}

/* TaskOOM wrapped the way a shim forwards it to containerd (docs/ttrpc.md, test vector 8). */
static void test_events_forward_wire_bytes(void)
{
  Containerd__Events__TaskOOM oom = CONTAINERD__EVENTS__TASK_OOM__INIT;
  oom.container_id = "c1";
  uint8_t oom_buf[16];
  size_t oom_len = containerd__events__task_oom__pack(&oom, oom_buf);
  g_assert_cmpmem(oom_buf, oom_len,
                  "\x0a\x02"
                  "c1",
                  4);

  Google__Protobuf__Any any = GOOGLE__PROTOBUF__ANY__INIT;
  any.type_url = "containerd.events.TaskOOM";
  any.value.data = oom_buf;
  any.value.len = oom_len;

  Google__Protobuf__Timestamp ts = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
  ts.seconds = 1700000000;
  ts.nanos = 5;

  Containerd__Types__Envelope env = CONTAINERD__TYPES__ENVELOPE__INIT;
  env.timestamp = &ts;
  env.namespace_ = "default";
  env.topic = "/tasks/oom";
  env.event = &any;

  Containerd__Services__Events__Ttrpc__V1__ForwardRequest fwd =
      CONTAINERD__SERVICES__EVENTS__TTRPC__V1__FORWARD_REQUEST__INIT;
  fwd.envelope = &env;

  /*
   * 1700000000 = 0x6553f100; 7-bit groups from the low end: 0x00, 0x62, 0x4f, 0x2a, 0x06
   * -> varint 80 e2 cf aa 06.
   * Any: 0a19 + 25 name bytes + 1204 + 4 = 33 = 0x21.
   * Envelope: timestamp 10 + namespace 9 + topic 12 + event 35 = 66 = 0x42.
   */
  const char *envelope = "0a08 0880e2cfaa06 1005"                       /* 1 timestamp */
                         "1207 64656661756c74"                          /* 2 "default" */
                         "1a0a 2f7461736b732f6f6f6d"                    /* 3 "/tasks/oom" */
                         "2221"                                         /* 4 event, 33 */
                         "0a19 636f6e7461696e657264 2e 6576656e7473 2e" /*   type_url */
                         "5461736b4f4f4d"                               /*   "TaskOOM" */
                         "1204 0a02 6331";                              /*   value */
  g_autofree char *want = g_strconcat("0a42", envelope, NULL);

  assert_packs_to(&env.base, envelope);
  assert_packs_to(&fwd.base, want);

  Containerd__Services__Events__Ttrpc__V1__ForwardRequest *back =
      (Containerd__Services__Events__Ttrpc__V1__ForwardRequest *)unpack_hex_roundtrip(
          &containerd__services__events__ttrpc__v1__forward_request__descriptor, want);
  g_assert_nonnull(back->envelope);
  g_assert_cmpstr(back->envelope->namespace_, ==, "default");
  g_assert_cmpstr(back->envelope->topic, ==, "/tasks/oom");
  g_assert_cmpint(back->envelope->timestamp->seconds, ==, 1700000000);
  g_assert_cmpint(back->envelope->timestamp->nanos, ==, 5);
  g_assert_cmpstr(back->envelope->event->type_url, ==, "containerd.events.TaskOOM");

  Containerd__Events__TaskOOM *event = containerd__events__task_oom__unpack(
      NULL, back->envelope->event->value.len, back->envelope->event->value.data);
  g_assert_nonnull(event);
  g_assert_cmpstr(event->container_id, ==, "c1");
  containerd__events__task_oom__free_unpacked(event, NULL);
  containerd__services__events__ttrpc__v1__forward_request__free_unpacked(back, NULL);
}

static void test_migration_import_wire_bytes(void)
{
  uint8_t blob[] = { 0x01, 0x02 };
  Google__Protobuf__Any config = GOOGLE__PROTOBUF__ANY__INIT;
  config.type_url = "x";
  config.value.data = blob;
  config.value.len = sizeof blob;

  ImportSandboxRequest req = IMPORT_SANDBOX_REQUEST__INIT;
  req.session_id = "s1";
  req.sandbox_id = "sb";
  req.config = &config;

  /* config is field 3 since hcsshim #2702: tag (3 << 3) | 2 = 0x1a. */
  const char *want = "0a02 7331"             /* 1 session_id "s1" */
                     "1202 7362"             /* 2 sandbox_id "sb" */
                     "1a07 0a0178 12020102"; /* 3 config Any{"x", 01 02} */
  assert_packs_to(&req.base, want);

  ImportSandboxRequest *back =
      (ImportSandboxRequest *)unpack_hex_roundtrip(&import_sandbox_request__descriptor, want);
  g_assert_cmpstr(back->session_id, ==, "s1");
  g_assert_cmpstr(back->sandbox_id, ==, "sb");
  g_assert_nonnull(back->config);
  g_assert_cmpstr(back->config->type_url, ==, "x");
  g_assert_cmpmem(back->config->value.data, back->config->value.len, blob, sizeof blob);
  import_sandbox_request__free_unpacked(back, NULL);
}

static void test_migration_notification_wire_bytes(void)
{
  BlackoutExitedEventDetails details = BLACKOUT_EXITED_EVENT_DETAILS__INIT;
  details.blackout_duration_milliseconds = 42;

  Notification note = NOTIFICATION__INIT;
  note.origin = ORIGIN__ORIGIN_SOURCE;
  note.phase = PHASE__PHASE_BLACKOUT_EXITED;
  note.state = PHASE_STATE__PHASE_STATE_SUCCESS;
  note.phase_details_case = NOTIFICATION__PHASE_DETAILS_BLACKOUT_EXITED;
  note.blackout_exited = &details;

  Google__Protobuf__Timestamp start = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
  start.seconds = 1;

  NotificationsResponse resp = NOTIFICATIONS_RESPONSE__INIT;
  resp.message_id = 7;
  resp.notification = &note;
  resp.start_time = &start;

  const char *want = "0807"       /* 1 message_id 7 */
                     "120a"       /* 2 notification, 10 bytes */
                     "0801"       /*   1 origin SOURCE */
                     "1005"       /*   2 phase BLACKOUT_EXITED */
                     "1801"       /*   3 state SUCCESS */
                     "2202 082a"  /*   4 blackout_exited{duration 42} */
                     "1a02 0801"; /* 3 start_time{seconds 1} */
  assert_packs_to(&resp.base, want);

  NotificationsResponse *back =
      (NotificationsResponse *)unpack_hex_roundtrip(&notifications_response__descriptor, want);
  g_assert_cmpuint(back->message_id, ==, 7);
  g_assert_nonnull(back->notification);
  g_assert_cmpint(back->notification->origin, ==, ORIGIN__ORIGIN_SOURCE);
  g_assert_cmpint(back->notification->phase, ==, PHASE__PHASE_BLACKOUT_EXITED);
  g_assert_cmpint(back->notification->state, ==, PHASE_STATE__PHASE_STATE_SUCCESS);
  g_assert_cmpint(back->notification->phase_details_case, ==,
                  NOTIFICATION__PHASE_DETAILS_BLACKOUT_EXITED);
  g_assert_cmpuint(back->notification->blackout_exited->blackout_duration_milliseconds, ==, 42);
  g_assert_null(back->notification->blackout_exited->blackout_stop_timestamp);
  g_assert_cmpint(back->start_time->seconds, ==, 1);
  g_assert_null(back->update_time);
  notifications_response__free_unpacked(back, NULL);
}

/* A phase without details leaves the oneof unset and writes no field 4. */
static void test_migration_notification_no_details(void)
{
  Notification note = NOTIFICATION__INIT;
  note.origin = ORIGIN__ORIGIN_DESTINATION;
  note.phase = PHASE__PHASE_DONE;
  note.state = PHASE_STATE__PHASE_STATE_SUCCESS;

  assert_packs_to(&note.base, "0802 1006 1801");

  Notification *back =
      (Notification *)unpack_hex_roundtrip(&notification__descriptor, "0802 1006 1801");
  g_assert_cmpint(back->phase_details_case, ==, NOTIFICATION__PHASE_DETAILS__NOT_SET);
  notification__free_unpacked(back, NULL);
}

static void test_migration_init_options_wire_bytes(void)
{
  MemoryTransferThrottleParams throttle = MEMORY_TRANSFER_THROTTLE_PARAMS__INIT;
  throttle.skip_throttling = TRUE;
  throttle.throttling_scale = 50.0;
  throttle.minimum_throttle_percentage = 10;
  throttle.target_blackout_transfer_time = 500;
  throttle.blackout_time_threshold_for_cancelling_migration = 1000;

  CompressionSettings compression = COMPRESSION_SETTINGS__INIT;
  compression.throttle_worker_count = 4;

  InitializeOptions opts = INITIALIZE_OPTIONS__INIT;
  opts.memory_transport = MEMORY_TRANSPORT__MEMORY_TRANSPORT_TCP;
  opts.memory_transfer_throttle_params = &throttle;
  opts.compression_settings = &compression;
  opts.checksum_verification = TRUE;
  opts.prepare_memory_transfer_mode = TRUE;

  /*
   * Throttle params: 0801 (2) + 11 + 50.0 as little-endian double 0x4049000000000000 (9)
   * + 180a (2) + 38 f403 (500 = 0x1f4) (3) + 40 e807 (1000 = 0x3e8) (3) = 19 = 0x13.
   */
  const char *want = "0801"                /* 1 memory_transport TCP */
                     "1213"                /* 2 throttle params, 19 bytes */
                     "0801"                /*   1 skip_throttling */
                     "11 0000000000004940" /*   2 throttling_scale 50.0 */
                     "180a"                /*   3 minimum_throttle_percentage 10 */
                     "38f403"              /*   7 target_blackout_transfer_time 500 */
                     "40e807"              /*   8 blackout threshold 1000 */
                     "1a02 0804"           /* 3 compression{throttle_worker_count 4} */
                     "2001"                /* 4 checksum_verification */
                     "3801";               /* 7 prepare_memory_transfer_mode */
  assert_packs_to(&opts.base, want);

  /* The same options inside PrepareAndExportSandboxRequest, field 2 (0x12):
   * 2 + 2 + 19 + 4 + 2 + 2 = 31 = 0x1f bytes. */
  PrepareAndExportSandboxRequest req = PREPARE_AND_EXPORT_SANDBOX_REQUEST__INIT;
  req.session_id = "s1";
  req.init_options = &opts;
  g_autofree char *req_want = g_strconcat("0a02 7331 121f", want, NULL);
  assert_packs_to(&req.base, req_want);

  InitializeOptions *back =
      (InitializeOptions *)unpack_hex_roundtrip(&initialize_options__descriptor, want);
  g_assert_cmpint(back->memory_transport, ==, MEMORY_TRANSPORT__MEMORY_TRANSPORT_TCP);
  g_assert_nonnull(back->memory_transfer_throttle_params);
  g_assert_true(back->memory_transfer_throttle_params->skip_throttling);
  g_assert_cmpfloat(back->memory_transfer_throttle_params->throttling_scale, ==, 50.0);
  g_assert_cmpuint(back->memory_transfer_throttle_params->minimum_throttle_percentage, ==, 10);
  g_assert_cmpuint(back->memory_transfer_throttle_params->target_number_of_brownout_transfer_passes,
                   ==, 0);
  g_assert_cmpuint(back->memory_transfer_throttle_params->target_blackout_transfer_time, ==, 500);
  g_assert_cmpuint(
      back->memory_transfer_throttle_params->blackout_time_threshold_for_cancelling_migration, ==,
      1000);
  g_assert_cmpuint(back->compression_settings->throttle_worker_count, ==, 4);
  g_assert_true(back->checksum_verification);
  g_assert_false(back->perf_tracing_enabled);
  g_assert_false(back->cancel_if_blackout_threshold_exceeds);
  g_assert_true(back->prepare_memory_transfer_mode);
  initialize_options__free_unpacked(back, NULL);
}

/* Without proto3 `optional`, absent message fields stay NULL and zero scalars are not sent. */
static void test_migration_init_options_absent(void)
{
  InitializeOptions opts = INITIALIZE_OPTIONS__INIT;
  opts.memory_transport = MEMORY_TRANSPORT__MEMORY_TRANSPORT_TCP;
  assert_packs_to(&opts.base, "0801");

  MemoryTransferThrottleParams throttle = MEMORY_TRANSFER_THROTTLE_PARAMS__INIT;
  opts.memory_transfer_throttle_params = &throttle;
  /* An empty sub-message is still present: tag and zero length. */
  assert_packs_to(&opts.base, "0801 1200");

  InitializeOptions *back =
      (InitializeOptions *)unpack_hex_roundtrip(&initialize_options__descriptor, "0801");
  g_assert_null(back->memory_transfer_throttle_params);
  g_assert_null(back->compression_settings);
  initialize_options__free_unpacked(back, NULL);
}

static void test_migration_finalize_wire_bytes(void)
{
  FinalizeSandboxRequest req = FINALIZE_SANDBOX_REQUEST__INIT;
  req.session_id = "s1";
  req.action = FINALIZE_ACTION__FINALIZE_ACTION_RESUME;

  const char *want = "0a02 7331" /* 1 session_id "s1" */
                     "1002";     /* 2 action RESUME */
  assert_packs_to(&req.base, want);

  FinalizeSandboxRequest *back =
      (FinalizeSandboxRequest *)unpack_hex_roundtrip(&finalize_sandbox_request__descriptor, want);
  g_assert_cmpint(back->action, ==, FINALIZE_ACTION__FINALIZE_ACTION_RESUME);
  finalize_sandbox_request__free_unpacked(back, NULL);
}

/* ---- Ferry's extension fields ---- */

/* Every field of hcsshim's messages below 1000 is hcsshim's; Ferry's start at 1000 and
 * are named ferry_*, so an hcsshim field added later cannot collide with one. */
static void test_migration_ferry_extensions(void)
{
  static const ProtobufCMessageDescriptor *const messages[] = {
    &prepare_and_export_sandbox_request__descriptor,
    &prepare_and_export_sandbox_response__descriptor,
    &import_sandbox_request__descriptor,
    &import_sandbox_response__descriptor,
    &prepare_sandbox_request__descriptor,
    &prepare_sandbox_response__descriptor,
    &transfer_sandbox_request__descriptor,
    &transfer_sandbox_response__descriptor,
    &finalize_sandbox_request__descriptor,
    &finalize_sandbox_response__descriptor,
    &create_duplicate_socket_request__descriptor,
    &create_duplicate_socket_response__descriptor,
    &notifications_request__descriptor,
    &notifications_response__descriptor,
    &cancel_request__descriptor,
    &cancel_response__descriptor,
    &cleanup_request__descriptor,
    &cleanup_response__descriptor,
    &initialize_options__descriptor,
    &notification__descriptor,
  };
  guint extensions = 0;
  for (size_t i = 0; i < G_N_ELEMENTS(messages); i++) {
    for (unsigned j = 0; j < messages[i]->n_fields; j++) {
      const ProtobufCFieldDescriptor *f = &messages[i]->fields[j];
      gboolean ours = g_str_has_prefix(f->name, "ferry_");
      g_assert_cmpint(ours, ==, f->id >= 1000);
      extensions += ours;
    }
  }
  g_assert_cmpuint(extensions, ==, 6);
}

/*
 * InitializeOptions with Ferry's rate limit and no post-copy: hcsshim's bytes (field 6
 * cancel_if_blackout_threshold_exceeds), then 1000 (tag 8000 = varint c0 3e) 16 MiB
 * (0x1000000 = varint 80 80 80 08) and 1001 (tag 8008 = c8 3e) true. An hcsshim decoder
 * reads its field and keeps both as unknown fields.
 */
static void test_migration_initialize_options_extension(void)
{
  InitializeOptions opts = INITIALIZE_OPTIONS__INIT;
  opts.cancel_if_blackout_threshold_exceeds = TRUE;
  opts.ferry_max_bandwidth = 16 << 20;
  opts.ferry_no_postcopy = TRUE;
  const char *want = "3001"          /* 6 cancel_if_blackout_threshold_exceeds */
                     "c03e 80808008" /* 1000 ferry_max_bandwidth 16 MiB */
                     "c83e 01";      /* 1001 ferry_no_postcopy */
  assert_packs_to(&opts.base, want);
  Ferry__Test__Upstream__InitializeOptions *up =
      (Ferry__Test__Upstream__InitializeOptions *)unpack_hex_roundtrip(
          &ferry__test__upstream__initialize_options__descriptor, want);
  g_assert_true(up->cancel_if_blackout_threshold_exceeds);
  g_assert_cmpuint(up->base.n_unknown_fields, ==, 2);
  g_assert_cmpuint(up->base.unknown_fields[0].tag, ==, 1000);
  g_assert_cmpuint(up->base.unknown_fields[1].tag, ==, 1001);
  ferry__test__upstream__initialize_options__free_unpacked(up, NULL);
  InitializeOptions *back =
      (InitializeOptions *)unpack_hex_roundtrip(&initialize_options__descriptor, "3001");
  g_assert_true(back->cancel_if_blackout_threshold_exceeds);
  g_assert_cmpuint(back->ferry_max_bandwidth, ==, 0);
  g_assert_false(back->ferry_no_postcopy);
  initialize_options__free_unpacked(back, NULL);
}

/* One channel {id 3, port 7, established, recv_consumed 100, send_acked 5, send_total
 * 7, unacked "hi"} in FinalChannels: 0a 10 + 16 bytes = 18 (0x12) bytes. */
#define FINAL_CHANNELS_HEX                                                                         \
  "0a10"      /* 1 channels, 16 bytes */                                                           \
  "0803 1007" /*   1 id 3, 2 port 7 */                                                             \
  "1801 2064" /*   3 established, 4 recv_consumed 100 */                                           \
  "4805 5007" /*   9 send_acked 5, 10 send_total 7 */                                              \
  "5a02 6869" /*   11 unacked "hi" */

static void fill_final_channels(Ferry__V1__FinalChannels *fc, Ferry__V1__MuxChannelState *ch,
                                Ferry__V1__MuxChannelState **list)
{
  ferry__v1__mux_channel_state__init(ch);
  ch->id = 3;
  ch->port = 7;
  ch->established = TRUE;
  ch->recv_consumed = 100;
  ch->send_acked = 5;
  ch->send_total = 7;
  ch->unacked.data = (uint8_t *)"hi";
  ch->unacked.len = 2;
  list[0] = ch;
  ferry__v1__final_channels__init(fc);
  fc->n_channels = 1;
  fc->channels = list;
}

/*
 * FinalizeSandboxRequest with Ferry's final channels: hcsshim's bytes, then field 1000
 * (tag (1000 << 3) | 2 = 8002 = varint c2 3e). A decoder that knows only hcsshim's
 * fields reads session and action and keeps field 1000 as an unknown field, which it
 * writes back unchanged; ours reads hcsshim's bytes with no final channels.
 */
static void test_migration_finalize_request_extension(void)
{
  Ferry__V1__MuxChannelState ch;
  Ferry__V1__MuxChannelState *list[1];
  Ferry__V1__FinalChannels fc;
  fill_final_channels(&fc, &ch, list);

  FinalizeSandboxRequest req = FINALIZE_SANDBOX_REQUEST__INIT;
  req.session_id = "s1";
  req.action = FINALIZE_ACTION__FINALIZE_ACTION_RESUME;
  req.ferry_final_channels = &fc;

  const char *want = "0a02 7331" /* 1 session_id "s1" */
                     "1002"      /* 2 action RESUME */
                     "c23e 12"   /* 1000 ferry_final_channels, 18 bytes */
      FINAL_CHANNELS_HEX;
  assert_packs_to(&req.base, want);

  /* An hcsshim decoder. */
  Ferry__Test__Upstream__FinalizeSandboxRequest *up =
      (Ferry__Test__Upstream__FinalizeSandboxRequest *)unpack_hex_roundtrip(
          &ferry__test__upstream__finalize_sandbox_request__descriptor, want);
  g_assert_cmpstr(up->session_id, ==, "s1");
  g_assert_cmpint(up->action, ==, FERRY__TEST__UPSTREAM__FINALIZE_ACTION__FINALIZE_ACTION_RESUME);
  g_assert_cmpuint(up->base.n_unknown_fields, ==, 1);
  g_assert_cmpuint(up->base.unknown_fields[0].tag, ==, 1000);
  ferry__test__upstream__finalize_sandbox_request__free_unpacked(up, NULL);

  /* Ours, on what an hcsshim orchestrator sends. */
  FinalizeSandboxRequest *back = (FinalizeSandboxRequest *)unpack_hex_roundtrip(
      &finalize_sandbox_request__descriptor, "0a02 7331 1002");
  g_assert_cmpint(back->action, ==, FINALIZE_ACTION__FINALIZE_ACTION_RESUME);
  g_assert_null(back->ferry_final_channels);
  finalize_sandbox_request__free_unpacked(back, NULL);

  /* Ours, on our own bytes. */
  back =
      (FinalizeSandboxRequest *)unpack_hex_roundtrip(&finalize_sandbox_request__descriptor, want);
  g_assert_nonnull(back->ferry_final_channels);
  g_assert_cmpuint(back->ferry_final_channels->n_channels, ==, 1);
  Ferry__V1__MuxChannelState *c = back->ferry_final_channels->channels[0];
  g_assert_cmpuint(c->id, ==, 3);
  g_assert_cmpuint(c->recv_consumed, ==, 100);
  g_assert_cmpuint(c->send_total, ==, 7);
  g_assert_cmpmem(c->unacked.data, c->unacked.len, "hi", 2);
  finalize_sandbox_request__free_unpacked(back, NULL);
}

/* FinalizeSandboxResponse is empty in hcsshim: its decoder keeps our field as unknown. */
static void test_migration_finalize_response_extension(void)
{
  Ferry__V1__MuxChannelState ch;
  Ferry__V1__MuxChannelState *list[1];
  Ferry__V1__FinalChannels fc;
  fill_final_channels(&fc, &ch, list);

  FinalizeSandboxResponse resp = FINALIZE_SANDBOX_RESPONSE__INIT;
  assert_packs_to(&resp.base, "");
  resp.ferry_final_channels = &fc;
  const char *want = "c23e 12" FINAL_CHANNELS_HEX;
  assert_packs_to(&resp.base, want);

  Ferry__Test__Upstream__FinalizeSandboxResponse *up =
      (Ferry__Test__Upstream__FinalizeSandboxResponse *)unpack_hex_roundtrip(
          &ferry__test__upstream__finalize_sandbox_response__descriptor, want);
  g_assert_cmpuint(up->base.n_unknown_fields, ==, 1);
  g_assert_cmpuint(up->base.unknown_fields[0].tag, ==, 1000);
  ferry__test__upstream__finalize_sandbox_response__free_unpacked(up, NULL);

  FinalizeSandboxResponse *back =
      (FinalizeSandboxResponse *)unpack_hex_roundtrip(&finalize_sandbox_response__descriptor, "");
  g_assert_null(back->ferry_final_channels);
  finalize_sandbox_response__free_unpacked(back, NULL);
}

/* Ferry's Status service: its wire name and fields. */
static void test_migration_status_service(void)
{
  static const char *const methods[] = {
    "Status(ferry.migration.v1.StatusRequest) ferry.migration.v1.StatusResponse",
  };
  assert_service(&ferry__migration__v1__status__descriptor, "ferry.migration.v1.Status", methods,
                 G_N_ELEMENTS(methods));
  static const MessageShape shapes[] = {
    { &ferry__migration__v1__status_request__descriptor,
      "ferry.migration.v1.StatusRequest { session_id 1 string }" },
    { &ferry__migration__v1__status_response__descriptor,
      "ferry.migration.v1.StatusResponse { session_id 1 string; role 2 ferry.migration.v1.Role; "
      "state 3 ferry.migration.v1.SessionState; phase 4 Phase; phase_state 5 PhaseState; "
      "last_message_id 6 uint32; bytes_transferred 7 uint64; bytes_total 8 uint64; "
      "last_error 9 google.rpc.Status; cleaned_up 10 bool; guest_ran 11 bool; "
      "bytes_remaining 12 uint64; rate_mbps 13 double; passes 14 uint64; "
      "expected_downtime_ms 15 uint64; downtime_ms 16 uint64 }" },
  };
  assert_message_shapes(shapes, G_N_ELEMENTS(shapes));
}

/* ---- round trips of fully populated messages ---- */

static void test_task_state_roundtrip(void)
{
  Google__Protobuf__Timestamp exited = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
  exited.seconds = 1234567890;
  exited.nanos = 999;

  Containerd__Task__V2__StateResponse st = CONTAINERD__TASK__V2__STATE_RESPONSE__INIT;
  st.id = "t1";
  st.bundle = "/b/t1";
  st.pid = 4242;
  st.status = CONTAINERD__V1__TYPES__STATUS__STOPPED;
  st.stdin = "/i";
  st.stdout = "/o";
  st.stderr = "/e";
  st.terminal = TRUE;
  st.exit_status = 143;
  st.exited_at = &exited;
  st.exec_id = "x1";

  size_t len = containerd__task__v2__state_response__get_packed_size(&st);
  g_autofree uint8_t *buf = g_malloc(len);
  g_assert_cmpuint(containerd__task__v2__state_response__pack(&st, buf), ==, len);

  /* exit_status 143 (field 9): tag 0x48, varint 8f 01. */
  g_autofree char *hex = hex_encode(buf, len);
  g_assert_nonnull(strstr(hex, "488f01"));

  Containerd__Task__V2__StateResponse *back =
      containerd__task__v2__state_response__unpack(NULL, len, buf);
  g_assert_nonnull(back);
  g_assert_cmpstr(back->id, ==, "t1");
  g_assert_cmpstr(back->bundle, ==, "/b/t1");
  g_assert_cmpuint(back->pid, ==, 4242);
  g_assert_cmpint(back->status, ==, CONTAINERD__V1__TYPES__STATUS__STOPPED);
  g_assert_cmpstr(back->stdin, ==, "/i");
  g_assert_cmpstr(back->stdout, ==, "/o");
  g_assert_cmpstr(back->stderr, ==, "/e");
  g_assert_true(back->terminal);
  g_assert_cmpuint(back->exit_status, ==, 143);
  g_assert_cmpint(back->exited_at->seconds, ==, 1234567890);
  g_assert_cmpint(back->exited_at->nanos, ==, 999);
  g_assert_cmpstr(back->exec_id, ==, "x1");

  g_autofree uint8_t *again = g_malloc(len);
  g_assert_cmpuint(containerd__task__v2__state_response__pack(back, again), ==, len);
  g_assert_cmpmem(again, len, buf, len);
  containerd__task__v2__state_response__free_unpacked(back, NULL);
}

static void test_task_update_annotations_roundtrip(void)
{
  Containerd__Task__V2__UpdateTaskRequest__AnnotationsEntry e1 =
      CONTAINERD__TASK__V2__UPDATE_TASK_REQUEST__ANNOTATIONS_ENTRY__INIT;
  e1.key = "k";
  e1.value = "v";
  Containerd__Task__V2__UpdateTaskRequest__AnnotationsEntry *entries[] = { &e1 };

  Containerd__Task__V2__UpdateTaskRequest req = CONTAINERD__TASK__V2__UPDATE_TASK_REQUEST__INIT;
  req.id = "t1";
  req.n_annotations = 1;
  req.annotations = entries;

  /* A map is a repeated entry message {key 1, value 2} in field 3. */
  const char *want = "0a02 7431 1a06 0a016b 120176";
  assert_packs_to(&req.base, want);

  Containerd__Task__V2__UpdateTaskRequest *back =
      (Containerd__Task__V2__UpdateTaskRequest *)unpack_hex_roundtrip(
          &containerd__task__v2__update_task_request__descriptor, want);
  g_assert_cmpuint(back->n_annotations, ==, 1);
  g_assert_cmpstr(back->annotations[0]->key, ==, "k");
  g_assert_cmpstr(back->annotations[0]->value, ==, "v");
  containerd__task__v2__update_task_request__free_unpacked(back, NULL);
}

static void test_events_task_create_roundtrip(void)
{
  Containerd__Events__TaskIO io = CONTAINERD__EVENTS__TASK_IO__INIT;
  io.stdin = "/i";
  io.stdout = "/o";
  io.stderr = "/e";
  io.terminal = TRUE;

  Containerd__Events__TaskCreate ev = CONTAINERD__EVENTS__TASK_CREATE__INIT;
  ev.container_id = "c1";
  ev.bundle = "/b";
  ev.io = &io;
  ev.pid = 300;

  /* TaskIO: 0a02 "/i" + 1202 "/o" + 1a02 "/e" + 2001 = 14 = 0x0e; pid 300 = ac 02. */
  const char *want = "0a02 6331"                            /* 1 container_id "c1" */
                     "1202 2f62"                            /* 2 bundle "/b" */
                     "220e 0a022f69 12022f6f 1a022f65 2001" /* 4 io */
                     "30ac02";                              /* 6 pid 300 */
  assert_packs_to(&ev.base, want);

  Containerd__Events__TaskCreate *back = (Containerd__Events__TaskCreate *)unpack_hex_roundtrip(
      &containerd__events__task_create__descriptor, want);
  g_assert_cmpstr(back->container_id, ==, "c1");
  g_assert_cmpstr(back->io->stdout, ==, "/o");
  g_assert_true(back->io->terminal);
  g_assert_cmpuint(back->pid, ==, 300);
  containerd__events__task_create__free_unpacked(back, NULL);
}

/* ---- malformed input ---- */

static void assert_unpack_fails(const ProtobufCMessageDescriptor *desc, const char *hex)
{
  g_autoptr(GBytes) bytes = hex_decode(hex);
  gsize len;
  const guint8 *data = g_bytes_get_data(bytes, &len);

  g_assert_null(protobuf_c_message_unpack(desc, NULL, len, data));
}

static void test_malformed(void)
{
  /* Sanity: the well-formed prefix of the first case unpacks. */
  Containerd__Task__V2__CreateTaskRequest *ok =
      containerd__task__v2__create_task_request__unpack(NULL, 4, (const uint8_t *)"\x0a\x02t1");
  g_assert_nonnull(ok);
  containerd__task__v2__create_task_request__free_unpacked(ok, NULL);

  /* id claims 5 bytes, 2 follow. */
  assert_unpack_fails(&containerd__task__v2__create_task_request__descriptor, "0a05 7431");
  /* Field 1 (a string) sent as a varint. */
  assert_unpack_fails(&containerd__task__v2__create_task_request__descriptor, "0801");
  /* A varint longer than 10 bytes. */
  assert_unpack_fails(&finalize_sandbox_request__descriptor, "10 ffffffffffffffffffff01");
  /* Wire type 7 does not exist. */
  assert_unpack_fails(&notifications_response__descriptor, "0f");
  /* Nested: the Any inside the envelope claims 0x21 bytes, 4 follow. */
  assert_unpack_fails(&containerd__services__events__ttrpc__v1__forward_request__descriptor,
                      "0a06 2221 0a02 6331");
  /* The outer length fits, but the Any's type_url inside claims 5 bytes and has 1. */
  assert_unpack_fails(&import_sandbox_request__descriptor, "1a03 0a0578");
  /* The outer config claims 7 bytes, 3 follow. */
  assert_unpack_fails(&import_sandbox_request__descriptor, "1a07 0a0178");
}

int main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);

  g_test_add_func("/proto/task/service", test_task_service);
  g_test_add_func("/proto/task/fields", test_task_fields);
  g_test_add_func("/proto/task/status-enum", test_task_status_enum);
  g_test_add_func("/proto/task/create-wire-bytes", test_task_create_wire_bytes);
  g_test_add_func("/proto/task/create-rootfs-wire-bytes", test_task_create_rootfs_wire_bytes);
  g_test_add_func("/proto/task/state-roundtrip", test_task_state_roundtrip);
  g_test_add_func("/proto/task/update-annotations-roundtrip",
                  test_task_update_annotations_roundtrip);

  g_test_add_func("/proto/events/service", test_events_service);
  g_test_add_func("/proto/events/fields", test_events_fields);
  g_test_add_func("/proto/events/forward-wire-bytes", test_events_forward_wire_bytes);
  g_test_add_func("/proto/events/task-create-roundtrip", test_events_task_create_roundtrip);

  g_test_add_func("/proto/migration/service", test_migration_service);
  g_test_add_func("/proto/migration/fields", test_migration_fields);
  g_test_add_func("/proto/migration/enums", test_migration_enums);
  g_test_add_func("/proto/migration/no-compatibility-data", test_migration_no_compatibility_data);
  g_test_add_func("/proto/migration/import-wire-bytes", test_migration_import_wire_bytes);
  g_test_add_func("/proto/migration/notification-wire-bytes",
                  test_migration_notification_wire_bytes);
  g_test_add_func("/proto/migration/notification-no-details",
                  test_migration_notification_no_details);
  g_test_add_func("/proto/migration/init-options-wire-bytes",
                  test_migration_init_options_wire_bytes);
  g_test_add_func("/proto/migration/init-options-absent", test_migration_init_options_absent);
  g_test_add_func("/proto/migration/finalize-wire-bytes", test_migration_finalize_wire_bytes);
  g_test_add_func("/proto/migration/ferry-extensions", test_migration_ferry_extensions);
  g_test_add_func("/proto/migration/finalize-request-extension",
                  test_migration_finalize_request_extension);
  g_test_add_func("/proto/migration/finalize-response-extension",
                  test_migration_finalize_response_extension);
  g_test_add_func("/proto/migration/initialize-options-extension",
                  test_migration_initialize_options_extension);
  g_test_add_func("/proto/migration/status-service", test_migration_status_service);

  g_test_add_func("/proto/malformed", test_malformed);

  return g_test_run();
}
