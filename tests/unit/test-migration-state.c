/*
 * The sandbox state a migration carries (lib/migration/sandbox-state.c): a full state
 * survives pack and unpack, the destination's refusals (type URL, size, bytes, schema
 * version, consistency, names that could leave a directory) and the compatibility
 * check naming the first difference.
 */
#include <glib.h>
#include <string.h>

#include "ferry/error.h"
#include "ferry/sandbox-state.h"
#include "hcsshim/migration.pb-c.h"

/* A state with two containers, an exec'd process running and one exited, disks, floors
 * and a channel; everything on the stack or static. */
typedef struct {
  Ferry__V1__SandboxState state;
  Ferry__V1__Compatibility compat;
  char *flags[2];
  Ferry__V1__Disk disk[2], *disks[2];
  char *c1_layers[2], *c2_layers[1];
  Ferry__V1__Container c1, c2, *containers[2];
  Ferry__V1__Process init1, exec1, exec2, init2, *p1[3], *p2[1];
  Ferry__V1__ProcessMigrationState m_init1, m_exec1, m_exec2, m_init2;
  Google__Protobuf__Timestamp exited_at;
  Ferry__V1__Floors floors;
  Ferry__V1__MuxChannelState ch, *channels[1];
} Fixture;

static void fixture_init(Fixture *f)
{
  memset(f, 0, sizeof(*f));
  ferry__v1__compatibility__init(&f->compat);
  f->compat.qemu_version = "7.2.0";
  f->compat.machine_type = "pc-i440fx-7.2";
  f->compat.cpu_model = "qemu64";
  f->flags[0] = "sse2";
  f->flags[1] = "x2apic";
  f->compat.cpu_flags = f->flags;
  f->compat.n_cpu_flags = 2;
  f->compat.accelerator = "tcg";
  f->compat.guest_image_digest = "sha256:aaaa";
  f->compat.agent_protocol_version = 4;

  for (int i = 0; i < 2; i++) {
    ferry__v1__disk__init(&f->disk[i]);
    f->disk[i].controller = "scsi0";
    f->disk[i].lun = (uint32_t)i;
    f->disk[i].digest = i == 0 ? "sha256:1111" : "sha256:2222";
    f->disks[i] = &f->disk[i];
  }

  Ferry__V1__ProcessMigrationState *ms[] = { &f->m_init1, &f->m_exec1, &f->m_exec2, &f->m_init2 };
  for (guint i = 0; i < G_N_ELEMENTS(ms); i++) {
    ferry__v1__process_migration_state__init(ms[i]);
    ms[i]->stdin_port = 0x40000001 + i * 3;
    ms[i]->stdout_port = 0x40000002 + i * 3;
    ms[i]->stderr_port = 0x40000003 + i * 3;
    ms[i]->wait_call_id = 10 + i;
    ms[i]->serial = 100 + i;
  }
  f->m_exec2.stdout_done = TRUE;

  Ferry__V1__Process *ps[] = { &f->init1, &f->exec1, &f->exec2, &f->init2 };
  for (guint i = 0; i < G_N_ELEMENTS(ps); i++) {
    ferry__v1__process__init(ps[i]);
    ps[i]->exec_id = "";
    ps[i]->pid = 50 + i;
    ps[i]->status = FERRY__V1__PROCESS_STATUS__PROCESS_STATUS_RUNNING;
    ps[i]->migration = ms[i];
  }
  f->exec1.exec_id = "echo";
  f->exec1.terminal = TRUE;
  f->exec1.spec_json = "{\"args\":[\"cat\"]}";
  f->exec2.exec_id = "quick";
  f->exec2.status = FERRY__V1__PROCESS_STATUS__PROCESS_STATUS_EXITED;
  f->exec2.exit_status = 3;
  google__protobuf__timestamp__init(&f->exited_at);
  f->exited_at.seconds = 1700000000;
  f->exec2.exited_at = &f->exited_at;
  f->exec2.exit_published = TRUE;

  f->p1[0] = &f->init1;
  f->p1[1] = &f->exec1;
  f->p1[2] = &f->exec2;
  f->p2[0] = &f->init2;

  ferry__v1__container__init(&f->c1);
  f->c1.id = "c1";
  f->c1_layers[0] = "sha256:2222";
  f->c1_layers[1] = "sha256:1111";
  f->c1.layer_digests = f->c1_layers;
  f->c1.n_layer_digests = 2;
  f->c1.scratch_mb = 64;
  f->c1.spec_json = "{\"ociVersion\":\"1.0.2\"}";
  f->c1.processes = f->p1;
  f->c1.n_processes = 3;
  ferry__v1__container__init(&f->c2);
  f->c2.id = "c2";
  f->c2_layers[0] = "sha256:1111";
  f->c2.layer_digests = f->c2_layers;
  f->c2.n_layer_digests = 1;
  f->c2.paused = TRUE;
  f->c2.processes = f->p2;
  f->c2.n_processes = 1;
  f->containers[0] = &f->c1;
  f->containers[1] = &f->c2;

  ferry__v1__floors__init(&f->floors);
  f->floors.next_port = 0x40000020;
  f->floors.next_request_id = 77;

  ferry__v1__mux_channel_state__init(&f->ch);
  f->ch.id = 5;
  f->ch.port = 0x40000002;
  f->ch.established = TRUE;
  f->ch.recv_consumed = 1000;
  f->ch.send_acked = 10;
  f->ch.send_total = 13;
  f->ch.unacked.data = (uint8_t *)"abc";
  f->ch.unacked.len = 3;
  f->channels[0] = &f->ch;

  ferry__v1__sandbox_state__init(&f->state);
  f->state.schema_version = FERRY_SANDBOX_STATE_SCHEMA_VERSION;
  f->state.sandbox_id = "sb1";
  f->state.compatibility = &f->compat;
  f->state.vm_document = "{\"Owner\":\"sb1\"}";
  f->state.disks = f->disks;
  f->state.n_disks = 2;
  f->state.containers = f->containers;
  f->state.n_containers = 2;
  f->state.floors = &f->floors;
  f->state.channels = f->channels;
  f->state.n_channels = 1;
}

static Ferry__V1__SandboxState *roundtrip(const Ferry__V1__SandboxState *state, GError **error)
{
  g_autoptr(GBytes) bytes = ferry_sandbox_state_pack(state);
  gsize len;
  const guint8 *data = g_bytes_get_data(bytes, &len);
  return ferry_sandbox_state_unpack(FERRY_SANDBOX_STATE_TYPE_URL, data, len, error);
}

static void test_roundtrip(void)
{
  Fixture f;
  fixture_init(&f);
  GError *error = NULL;
  Ferry__V1__SandboxState *back = roundtrip(&f.state, &error);
  g_assert_no_error(error);
  g_assert_nonnull(back);

  /* Packing the decoded state gives the same bytes. */
  g_autoptr(GBytes) a = ferry_sandbox_state_pack(&f.state);
  g_autoptr(GBytes) b = ferry_sandbox_state_pack(back);
  g_assert_true(g_bytes_equal(a, b));

  g_assert_cmpuint(back->schema_version, ==, 1);
  g_assert_cmpstr(back->sandbox_id, ==, "sb1");
  g_assert_cmpstr(back->compatibility->qemu_version, ==, "7.2.0");
  g_assert_cmpuint(back->compatibility->n_cpu_flags, ==, 2);
  g_assert_cmpstr(back->compatibility->cpu_flags[1], ==, "x2apic");
  g_assert_cmpuint(back->compatibility->agent_protocol_version, ==, 4);
  g_assert_cmpstr(back->vm_document, ==, "{\"Owner\":\"sb1\"}");
  g_assert_cmpuint(back->n_disks, ==, 2);
  g_assert_cmpuint(back->disks[1]->lun, ==, 1);
  g_assert_cmpstr(back->disks[1]->digest, ==, "sha256:2222");
  g_assert_cmpuint(back->floors->next_port, ==, 0x40000020);
  g_assert_cmpuint(back->floors->next_request_id, ==, 77);

  g_assert_cmpuint(back->n_containers, ==, 2);
  const Ferry__V1__Container *c1 = back->containers[0];
  g_assert_cmpstr(c1->id, ==, "c1");
  g_assert_cmpuint(c1->n_layer_digests, ==, 2);
  g_assert_cmpstr(c1->layer_digests[0], ==, "sha256:2222");
  g_assert_cmpuint(c1->scratch_mb, ==, 64);
  g_assert_cmpuint(c1->n_processes, ==, 3);
  g_assert_cmpstr(c1->processes[0]->exec_id, ==, "");
  const Ferry__V1__Process *echo = c1->processes[1];
  g_assert_cmpstr(echo->exec_id, ==, "echo");
  g_assert_true(echo->terminal);
  g_assert_cmpstr(echo->spec_json, ==, "{\"args\":[\"cat\"]}");
  g_assert_cmpuint(echo->migration->stdin_port, ==, 0x40000004);
  g_assert_cmpuint(echo->migration->wait_call_id, ==, 11);
  g_assert_cmpuint(echo->migration->serial, ==, 101);
  const Ferry__V1__Process *quick = c1->processes[2];
  g_assert_cmpint(quick->status, ==, FERRY__V1__PROCESS_STATUS__PROCESS_STATUS_EXITED);
  g_assert_cmpuint(quick->exit_status, ==, 3);
  g_assert_cmpint(quick->exited_at->seconds, ==, 1700000000);
  g_assert_true(quick->exit_published);
  g_assert_true(quick->migration->stdout_done);
  g_assert_false(quick->migration->stderr_done);
  g_assert_true(back->containers[1]->paused);

  g_assert_cmpuint(back->n_channels, ==, 1);
  g_assert_cmpuint(back->channels[0]->recv_consumed, ==, 1000);
  g_assert_cmpmem(back->channels[0]->unacked.data, back->channels[0]->unacked.len, "abc", 3);
  ferry__v1__sandbox_state__free_unpacked(back, NULL);
}

static void assert_unpack_fails(const char *type_url, const guint8 *data, gsize len, int code,
                                const char *fragment)
{
  GError *error = NULL;
  g_assert_null(ferry_sandbox_state_unpack(type_url, data, len, &error));
  g_assert_error(error, FERRY_ERROR, code);
  if (strstr(error->message, fragment) == NULL)
    g_error("\"%s\" does not say \"%s\"", error->message, fragment);
  g_clear_error(&error);
}

static void test_refusals(void)
{
  Fixture f;
  fixture_init(&f);
  g_autoptr(GBytes) bytes = ferry_sandbox_state_pack(&f.state);
  gsize len;
  const guint8 *data = g_bytes_get_data(bytes, &len);

  assert_unpack_fails("type.googleapis.com/hcsshim.Payload", data, len,
                      FERRY_ERROR_INVALID_ARGUMENT, "type URL");
  assert_unpack_fails(NULL, data, len, FERRY_ERROR_INVALID_ARGUMENT, "type URL");
  /* Refused by its length before a byte is read. */
  assert_unpack_fails(FERRY_SANDBOX_STATE_TYPE_URL, data, FERRY_SANDBOX_STATE_MAX_BYTES + 1,
                      FERRY_ERROR_INVALID_ARGUMENT, "more than");
  /* A truncated state does not decode. */
  assert_unpack_fails(FERRY_SANDBOX_STATE_TYPE_URL, data, len - 1, FERRY_ERROR_INVALID_ARGUMENT,
                      "do not decode");
  /* Empty bytes decode to schema version 0: not one we read. */
  assert_unpack_fails(FERRY_SANDBOX_STATE_TYPE_URL, NULL, 0, FERRY_ERROR_FAILED_PRECONDITION,
                      "schema version 0");
}

static void test_schema_version(void)
{
  GError *error = NULL;
  g_assert_true(ferry_sandbox_state_check_schema(FERRY_SANDBOX_STATE_SCHEMA_VERSION, &error));
  g_assert_no_error(error);
  g_assert_false(ferry_sandbox_state_check_schema(2, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION);
  g_assert_cmpstr(error->message, ==,
                  "sandbox state schema version 2 is not one this shim reads (1 to 1)");
  g_clear_error(&error);

  Fixture f;
  fixture_init(&f);
  f.state.schema_version = 2;
  g_assert_null(roundtrip(&f.state, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION);
  g_clear_error(&error);
}

/* A field this build does not know (a newer writer's addition that kept the version)
 * is skipped. */
static void test_unknown_field_skipped(void)
{
  Fixture f;
  fixture_init(&f);
  g_autoptr(GBytes) bytes = ferry_sandbox_state_pack(&f.state);
  GByteArray *more = g_byte_array_new();
  g_byte_array_append(more, g_bytes_get_data(bytes, NULL), (guint)g_bytes_get_size(bytes));
  /* Field 99, length-delimited, "new": tag (99 << 3) | 2 = 794 = varint 9a 06. */
  static const guint8 extra[] = { 0x9a, 0x06, 0x03, 'n', 'e', 'w' };
  g_byte_array_append(more, extra, sizeof extra);
  GError *error = NULL;
  Ferry__V1__SandboxState *back =
      ferry_sandbox_state_unpack(FERRY_SANDBOX_STATE_TYPE_URL, more->data, more->len, &error);
  g_assert_no_error(error);
  g_assert_cmpstr(back->sandbox_id, ==, "sb1");
  ferry__v1__sandbox_state__free_unpacked(back, NULL);
  g_byte_array_unref(more);
}

typedef void (*Breaker)(Fixture *f);

static void break_sandbox_id(Fixture *f)
{
  f->state.sandbox_id = "../etc";
}
static void break_no_compat(Fixture *f)
{
  f->state.compatibility = NULL;
}
static void break_container_path(Fixture *f)
{
  f->c2.id = "a/b";
}
static void break_container_dotdot(Fixture *f)
{
  f->c2.id = "..";
}
static void break_container_twice(Fixture *f)
{
  f->c2.id = "c1";
}
static void break_no_init(Fixture *f)
{
  f->c2.n_processes = 0;
}
static void break_init_not_first(Fixture *f)
{
  f->p1[0] = &f->exec1;
  f->p1[1] = &f->init1;
}
static void break_exec_twice(Fixture *f)
{
  f->exec2.exec_id = "echo";
}
static void break_exec_name(Fixture *f)
{
  f->exec2.exec_id = "x\ny";
}
static void break_port_twice(Fixture *f)
{
  f->m_init2.stdout_port = f->m_exec1.stderr_port;
}
static void break_layer_no_disk(Fixture *f)
{
  f->c2_layers[0] = "sha256:9999";
}
static void break_disk_twice(Fixture *f)
{
  f->disk[1].lun = 0;
}
static void break_channel(Fixture *f)
{
  f->ch.send_total = 20;
}
static void break_status(Fixture *f)
{
  f->exec1.status = 9;
}
static void break_published_running(Fixture *f)
{
  f->exec1.exit_published = TRUE;
}

typedef struct {
  const char *name;
  Breaker breaker;
  const char *says;
} InvalidCase;

static const InvalidCase invalid_cases[] = {
  { "sandbox-id", break_sandbox_id, "sandbox id \"../etc\" holds a '/'" },
  { "no-compat", break_no_compat, "no compatibility data" },
  { "container-path", break_container_path, "container id \"a/b\" holds a '/'" },
  { "container-dotdot", break_container_dotdot, "container id \"..\" is . or .." },
  { "container-twice", break_container_twice, "container c1 appears twice" },
  { "no-init", break_no_init, "container c2 has no init process" },
  { "init-not-first", break_init_not_first, "the first process is exec \"echo\"" },
  { "exec-twice", break_exec_twice, "exec id echo appears twice" },
  { "exec-name", break_exec_name, "not printable ASCII" },
  { "port-twice", break_port_twice, "stdio port 1073741830 is used twice" },
  { "layer-no-disk", break_layer_no_disk, "layer sha256:9999 is on no disk" },
  { "disk-twice", break_disk_twice, "disk scsi0/0 appears twice" },
  { "channel", break_channel, "mux channel 5 (port 1073741826): unacknowledged bytes" },
  { "status", break_status, "status 9" },
  { "published-running", break_published_running, "an exit was published" },
};

static void test_invalid(gconstpointer data)
{
  const InvalidCase *c = data;
  Fixture f;
  fixture_init(&f);
  GError *error = NULL;
  g_assert_true(ferry_sandbox_state_validate(&f.state, &error));
  g_assert_no_error(error);
  c->breaker(&f);
  g_assert_false(ferry_sandbox_state_validate(&f.state, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
  if (strstr(error->message, c->says) == NULL)
    g_error("\"%s\" does not say \"%s\"", error->message, c->says);
  g_clear_error(&error);
  /* unpack refuses the same state. */
  g_assert_null(roundtrip(&f.state, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
  g_clear_error(&error);
}

/* ---- compatibility ---- */

static void compat_init(Ferry__V1__Compatibility *c, char **flags, size_t n_flags)
{
  ferry__v1__compatibility__init(c);
  c->qemu_version = "7.2.0";
  c->machine_type = "pc-i440fx-7.2";
  c->cpu_model = "qemu64";
  c->cpu_flags = flags;
  c->n_cpu_flags = n_flags;
  c->accelerator = "tcg";
  c->guest_image_digest = "sha256:aaaa";
  c->agent_protocol_version = 4;
}

static void assert_compat_fails(const Ferry__V1__Compatibility *local,
                                const Ferry__V1__Compatibility *remote, const char *message)
{
  GError *error = NULL;
  g_assert_false(ferry_sandbox_state_check_compat(local, remote, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION);
  g_assert_cmpstr(error->message, ==, message);
  g_clear_error(&error);
}

static void test_compat(void)
{
  char *here_flags[] = { "sse2", "x2apic", "avx" };
  char *state_flags[] = { "x2apic", "sse2" };
  Ferry__V1__Compatibility here, there;
  compat_init(&here, here_flags, 3);
  compat_init(&there, state_flags, 2);
  GError *error = NULL;

  /* Equal, and the state's flags a subset of ours (in another order). */
  g_assert_true(ferry_sandbox_state_check_compat(&here, &there, &error));
  g_assert_no_error(error);

  there.qemu_version = "8.0.0";
  there.machine_type = "pc-q35-8.0"; /* a later difference is not the one named */
  assert_compat_fails(&here, &there, "QEMU version differs: 7.2.0 here, 8.0.0 in the state");
  there.qemu_version = "7.2.0";
  assert_compat_fails(&here, &there,
                      "machine type differs: pc-i440fx-7.2 here, pc-q35-8.0 in the state");
  there.machine_type = "pc-i440fx-7.2";
  there.accelerator = "kvm";
  assert_compat_fails(&here, &there, "accelerator differs: tcg here, kvm in the state");
  there.accelerator = "tcg";
  there.cpu_model = "host";
  assert_compat_fails(&here, &there, "CPU model differs: qemu64 here, host in the state");
  there.cpu_model = "qemu64";

  char *more_flags[] = { "sse2", "avx512f" };
  there.cpu_flags = more_flags;
  assert_compat_fails(&here, &there, "CPU flags differ: avx512f in the state, not here");
  there.cpu_flags = state_flags;

  there.guest_image_digest = "";
  assert_compat_fails(&here, &there,
                      "guest image digest differs: sha256:aaaa here, (none) in the state");
  there.guest_image_digest = "sha256:aaaa";
  there.agent_protocol_version = 5;
  assert_compat_fails(&here, &there, "agent protocol version differs: 4 here, 5 in the state");
  there.agent_protocol_version = 4;

  g_assert_true(ferry_sandbox_state_check_compat(&here, &there, &error));
  assert_compat_fails(&here, NULL, "the sandbox state carries no compatibility data");
}

/* The whole way an orchestrator carries it: the source's PrepareAndExportSandboxResponse
 * (config, field 1), copied into the destination's ImportSandboxRequest (config, field
 * 3), each through its wire bytes. */
static void test_through_hcsshim_messages(void)
{
  g_autofree char *url =
      g_strconcat("type.googleapis.com/", ferry__v1__sandbox_state__descriptor.name, NULL);
  g_assert_cmpstr(url, ==, FERRY_SANDBOX_STATE_TYPE_URL);

  Fixture f;
  fixture_init(&f);
  g_autoptr(GBytes) value = ferry_sandbox_state_pack(&f.state);
  Google__Protobuf__Any any = GOOGLE__PROTOBUF__ANY__INIT;
  any.type_url = FERRY_SANDBOX_STATE_TYPE_URL;
  any.value.data = (uint8_t *)g_bytes_get_data(value, &any.value.len);
  PrepareAndExportSandboxResponse exported = PREPARE_AND_EXPORT_SANDBOX_RESPONSE__INIT;
  exported.config = &any;
  size_t n = prepare_and_export_sandbox_response__get_packed_size(&exported);
  g_autofree guint8 *wire = g_malloc(n);
  prepare_and_export_sandbox_response__pack(&exported, wire);

  PrepareAndExportSandboxResponse *got = prepare_and_export_sandbox_response__unpack(NULL, n, wire);
  g_assert_nonnull(got);
  ImportSandboxRequest import = IMPORT_SANDBOX_REQUEST__INIT;
  import.session_id = "s1";
  import.sandbox_id = "sb-new";
  import.config = got->config;
  size_t m = import_sandbox_request__get_packed_size(&import);
  g_autofree guint8 *wire2 = g_malloc(m);
  import_sandbox_request__pack(&import, wire2);
  prepare_and_export_sandbox_response__free_unpacked(got, NULL);

  ImportSandboxRequest *req = import_sandbox_request__unpack(NULL, m, wire2);
  g_assert_nonnull(req);
  GError *error = NULL;
  Ferry__V1__SandboxState *state = ferry_sandbox_state_unpack(
      req->config->type_url, req->config->value.data, req->config->value.len, &error);
  g_assert_no_error(error);
  g_autoptr(GBytes) again = ferry_sandbox_state_pack(state);
  g_assert_true(g_bytes_equal(again, value));
  ferry__v1__sandbox_state__free_unpacked(state, NULL);
  import_sandbox_request__free_unpacked(req, NULL);
}

/* ---- layers ---- */

static gboolean has_in_list(const char *digest, gpointer user_data)
{
  return g_strv_contains((const char *const *)user_data, digest);
}

static void test_layers(void)
{
  Fixture f;
  fixture_init(&f);
  GError *error = NULL;
  const char *both[] = { "sha256:1111", "sha256:2222", NULL };
  g_assert_true(ferry_sandbox_state_check_layers(&f.state, has_in_list, both, &error));
  g_assert_no_error(error);

  const char *one[] = { "sha256:1111", NULL };
  g_assert_false(ferry_sandbox_state_check_layers(&f.state, has_in_list, one, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION);
  g_assert_cmpstr(error->message, ==,
                  "rootfs layer sha256:2222 (container c1) is not on this host");
  g_clear_error(&error);

  /* A disk no container uses still has to be here. */
  f.c1.n_layer_digests = 1;
  f.c1_layers[0] = "sha256:1111";
  g_assert_false(ferry_sandbox_state_check_layers(&f.state, has_in_list, one, &error));
  g_assert_cmpstr(error->message, ==,
                  "rootfs layer sha256:2222 (no container) is not on this host");
  g_clear_error(&error);
}

/* ---- mux channels ---- */

static void test_channel_conversion(void)
{
  FerryMuxChannelState in = { 0 };
  in.id = 0x80000003;
  in.port = 0x40000002;
  in.established = TRUE;
  in.recv_consumed = 1 << 20;
  in.recv_window = 256 * 1024;
  in.peer_shut = TRUE;
  in.peer_final = (1 << 20) + 5;
  in.eof_emitted = TRUE;
  in.send_acked = 7;
  in.send_total = 10;
  in.unacked = g_bytes_new("xyz", 3);
  in.peer_window = 1024;
  in.shut = TRUE;

  Ferry__V1__MuxChannelState msg;
  ferry_sandbox_state_channel_from_mux(&in, &msg);
  size_t size = ferry__v1__mux_channel_state__get_packed_size(&msg);
  g_autofree guint8 *buf = g_malloc(size);
  ferry__v1__mux_channel_state__pack(&msg, buf);
  Ferry__V1__MuxChannelState *back = ferry__v1__mux_channel_state__unpack(NULL, size, buf);
  g_assert_nonnull(back);

  FerryMuxChannelState out;
  ferry_sandbox_state_channel_to_mux(back, &out);
  ferry__v1__mux_channel_state__free_unpacked(back, NULL);
  g_assert_cmpuint(out.id, ==, in.id);
  g_assert_cmpuint(out.port, ==, in.port);
  g_assert_true(out.established);
  g_assert_cmpuint(out.recv_consumed, ==, in.recv_consumed);
  g_assert_cmpuint(out.recv_window, ==, in.recv_window);
  g_assert_true(out.peer_shut);
  g_assert_cmpuint(out.peer_final, ==, in.peer_final);
  g_assert_true(out.eof_emitted);
  g_assert_cmpuint(out.send_acked, ==, 7);
  g_assert_cmpuint(out.send_total, ==, 10);
  g_assert_true(g_bytes_equal(out.unacked, in.unacked));
  g_assert_cmpuint(out.peer_window, ==, 1024);
  g_assert_true(out.shut);

  /* The mux's own serialization agrees field for field (one concept, one shape). */
  g_autoptr(GBytes) a = ferry_mux_channel_state_serialize(&in);
  g_autoptr(GBytes) b = ferry_mux_channel_state_serialize(&out);
  g_assert_true(g_bytes_equal(a, b));
  ferry_mux_channel_state_clear(&in);
  ferry_mux_channel_state_clear(&out);
}

/* The fuzz corpus's hand-encoded "full" state (tests/fuzz/corpus/sandbox-state) is the
 * fixture, byte for byte: so the corpus starts from an accepted state, and the field
 * numbers written by hand agree with the generated code. */
static void test_corpus_full(void)
{
  const char *root = g_getenv("FERRY_SOURCE_ROOT");
  if (root == NULL) {
    g_test_skip("FERRY_SOURCE_ROOT is not set (run through meson test)");
    return;
  }
  g_autofree char *path =
      g_build_filename(root, "tests", "fuzz", "corpus", "sandbox-state", "full", NULL);
  g_autofree char *contents = NULL;
  gsize len;
  GError *error = NULL;
  g_assert_true(g_file_get_contents(path, &contents, &len, &error));
  g_assert_no_error(error);
  Fixture f;
  fixture_init(&f);
  g_autoptr(GBytes) want = ferry_sandbox_state_pack(&f.state);
  g_assert_cmpmem(contents, len, g_bytes_get_data(want, NULL), g_bytes_get_size(want));
}

int main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/migration-state/roundtrip", test_roundtrip);
  g_test_add_func("/migration-state/refusals", test_refusals);
  g_test_add_func("/migration-state/schema-version", test_schema_version);
  g_test_add_func("/migration-state/unknown-field-skipped", test_unknown_field_skipped);
  for (gsize i = 0; i < G_N_ELEMENTS(invalid_cases); i++) {
    g_autofree char *path = g_strdup_printf("/migration-state/invalid/%s", invalid_cases[i].name);
    g_test_add_data_func(path, &invalid_cases[i], test_invalid);
  }
  g_test_add_func("/migration-state/compat", test_compat);
  g_test_add_func("/migration-state/layers", test_layers);
  g_test_add_func("/migration-state/through-hcsshim-messages", test_through_hcsshim_messages);
  g_test_add_func("/migration-state/channel-conversion", test_channel_conversion);
  g_test_add_func("/migration-state/corpus-full", test_corpus_full);
  return g_test_run();
}
