/*
 * The shim's Migration service against real shim daemons and guests (no containerd: the
 * test drives the Task API itself, as test-shim-contract does).
 *
 * source-session: calls out of order and for unknown sessions get typed errors;
 * PrepareAndExportSandbox exports a ferry.v1.SandboxState that names the running task,
 * its process and its migration state; the Task API refuses changes during the
 * session; a Notifications subscriber hears the recovery when Cancel takes the guest
 * back; Status tells the state; after Cleanup the Task API works again and the
 * workload never stopped. A PrepareAndExportSandbox encoded by hand from hcsshim's
 * field numbers is accepted.
 *
 * two-shims: a whole migration driven call by call, its ImportSandbox and source STOP
 * encoded by hand in hcsshim's field numbers. hops and faults: through lib/migration
 * (docs/migration.md, "The orchestration").
 *
 * Needs qemu-system-x86_64 and the guest image; skips otherwise.
 */
#include <fcntl.h>
#include <gio/gio.h>
#include <glib-unix.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "containerd/events/task.pb-c.h"
#include "containerd/services/events/ttrpc/v1/events.pb-c.h"
#include "containerd/task/v2/shim.pb-c.h"
#include "ferry/error.h"
#include "ferry/fd.h"
#include "ferry/json.h"
#include "ferry/migration.h"
#include "ferry/migration/v1/status.pb-c.h"
#include "ferry/sandbox-state.h"
#include "ferry/tls.h"
#include "ferry/ttrpc.h"
#include "google/protobuf/empty.pb-c.h"
#include "hcsshim/migration.pb-c.h"
#include "test-util.h"

#define CALL_TIMEOUT_NS (120 * G_GINT64_CONSTANT(1000000000))

static char *shim_path, *image_dir, *cli_path;
/* The daemons of the test running, for a failing test to end (each ends its QEMU). */
#define MAX_DAEMONS 4
static volatile pid_t running_daemons[MAX_DAEMONS];

static void on_fatal_signal(int signum)
{
  for (int i = 0; i < MAX_DAEMONS; i++)
    if (running_daemons[i] > 0)
      kill(running_daemons[i], SIGTERM);
  raise(signum); /* SA_RESETHAND: the default action next */
}

static void daemon_track(pid_t pid, gboolean running)
{
  for (int i = 0; i < MAX_DAEMONS; i++) {
    if (running && running_daemons[i] == 0) {
      running_daemons[i] = pid;
      return;
    }
    if (!running && running_daemons[i] == pid) {
      running_daemons[i] = 0;
      return;
    }
  }
  g_assert_false(running); /* more daemons than the table holds */
}

typedef struct {
  char *dir;
  char *run_dir;
  char *config;
  char *bundle;
  char *log;
  FerryTtrpcClient *c;
  pid_t daemon;
  /* containerd's event service for this shim (TTRPC_ADDRESS): what it published, as
   * "exit <id> <status>" for a TaskExit, else the topic */
  FerryTtrpcServer *events;
  GPtrArray *published;
} Rig;

static ProtobufCMessage *call(Rig *r, const char *service, const char *method,
                              const ProtobufCMessage *req, const ProtobufCMessageDescriptor *desc,
                              GError **error)
{
  FerryTtrpcCallOptions options = { .timeout_ns = CALL_TIMEOUT_NS };
  return ferry_ttrpc_client_call_sync(r->c, service, method, req, desc, &options, error);
}

static void call_ok(Rig *r, const char *service, const char *method, const ProtobufCMessage *req,
                    const ProtobufCMessageDescriptor *desc)
{
  g_autoptr(GError) error = NULL;
  ProtobufCMessage *resp = call(r, service, method, req, desc, &error);
  if (error != NULL)
    g_error("%s.%s: %s", service, method, error->message);
  protobuf_c_message_free_unpacked(resp, NULL);
}

static void call_fails(Rig *r, const char *service, const char *method, const ProtobufCMessage *req,
                       const ProtobufCMessageDescriptor *desc, int code, const char *fragment)
{
  g_autoptr(GError) error = NULL;
  ProtobufCMessage *resp = call(r, service, method, req, desc, &error);
  if (resp != NULL) {
    protobuf_c_message_free_unpacked(resp, NULL);
    g_error("%s.%s succeeded; want code %d", service, method, code);
  }
  if (error->code != code || strstr(error->message, fragment) == NULL)
    g_error("%s.%s: want code %d with \"%s\", got %d: %s", service, method, code, fragment,
            error->code, error->message);
}

static void on_forward(FerryTtrpcCall *call, const ProtobufCMessage *request, gpointer ud)
{
  Rig *r = ud;
  const Containerd__Services__Events__Ttrpc__V1__ForwardRequest *req = (const void *)request;
  const Containerd__Types__Envelope *env = req->envelope;
  if (env != NULL && g_strcmp0(env->topic, "/tasks/exit") == 0 && env->event != NULL) {
    Containerd__Events__TaskExit *ev =
        containerd__events__task_exit__unpack(NULL, env->event->value.len, env->event->value.data);
    g_assert_nonnull(ev);
    g_ptr_array_add(r->published, g_strdup_printf("exit %s %u", ev->id, ev->exit_status));
    containerd__events__task_exit__free_unpacked(ev, NULL);
  } else if (env != NULL) {
    g_ptr_array_add(r->published, g_strdup(env->topic));
  }
  Google__Protobuf__Empty empty = GOOGLE__PROTOBUF__EMPTY__INIT;
  ferry_ttrpc_call_reply(call, &empty.base);
}

static const FerryTtrpcMethodImpl events_methods[] = {
  { "Forward", on_forward, FERRY_TTRPC_UNARY },
  { NULL, NULL, 0 },
};

/* How many of the rig's published events are `what`. */
static guint published_count(Rig *r, const char *what)
{
  guint n = 0;
  for (guint i = 0; i < r->published->len; i++)
    n += g_strcmp0(r->published->pdata[i], what) == 0;
  return n;
}

/* containerd's start, as test-shim-contract runs it: the daemon's address. */
static char *start_shim(Rig *r)
{
  const char *argv[] = { shim_path,         "-namespace", "default", "-address", "/run/test/c.sock",
                         "-publish-binary", "/bin/true",  "-id",     "t1",       "-bundle",
                         r->bundle,         "start",      NULL };
  g_autoptr(GSubprocessLauncher) l =
      g_subprocess_launcher_new(G_SUBPROCESS_FLAGS_STDIN_PIPE | G_SUBPROCESS_FLAGS_STDOUT_PIPE |
                                G_SUBPROCESS_FLAGS_STDERR_PIPE);
  g_subprocess_launcher_setenv(l, "FERRY_SHIM_RUN_DIR", r->run_dir, TRUE);
  g_subprocess_launcher_setenv(l, "FERRY_SHIM_CONFIG", r->config, TRUE);
  g_autofree char *events = g_build_filename(r->dir, "events.sock", NULL);
  g_subprocess_launcher_setenv(l, "TTRPC_ADDRESS", events, TRUE);
  g_subprocess_launcher_set_cwd(l, r->bundle);
  g_autoptr(GError) error = NULL;
  g_autoptr(GSubprocess) p = g_subprocess_launcher_spawnv(l, argv, &error);
  g_assert_no_error(error);
  g_autoptr(GBytes) in = g_bytes_new_static("", 0);
  g_autoptr(GBytes) out = NULL, err = NULL;
  g_assert_true(g_subprocess_communicate(p, in, NULL, &out, &err, &error));
  if (g_subprocess_get_exit_status(p) != 0)
    g_error("start: %.*s", (int)g_bytes_get_size(err), (const char *)g_bytes_get_data(err, NULL));
  return g_strndup(g_bytes_get_data(out, NULL), g_bytes_get_size(out));
}

/* "line 1\nline 2\n..." consecutive from 1: how many. */
static guint count_lines(const char *path)
{
  g_autofree char *text = NULL;
  if (!g_file_get_contents(path, &text, NULL, NULL))
    return 0;
  g_auto(GStrv) lines = g_strsplit(text, "\n", -1);
  guint n = 0;
  for (char **l = lines; *l != NULL && **l != '\0'; l++) {
    g_autofree char *want = g_strdup_printf("line %u", n + 1);
    if (g_strcmp0(*l, want) != 0)
      g_error("%s: line %u is '%s'", path, n + 1, *l);
    n++;
  }
  return n;
}

static void wait_lines(Rig *r, guint n)
{
  gint64 until = g_get_monotonic_time() + 120 * G_USEC_PER_SEC;
  while (count_lines(r->log) < n) {
    if (g_get_monotonic_time() > until)
      g_error("the workload did not reach %u lines", n);
    g_main_context_iteration(NULL, FALSE);
    g_usleep(20000);
  }
}

/* Set: the next rig's guest initrd (a different guest image). */
static const char *rig_initrd;

static void rig_prepare(Rig *r, const char *source_id)
{
  *r = (Rig){ 0 };
  r->dir = test_make_tmpdir();
  r->run_dir = g_build_filename(r->dir, "run", NULL);
  r->config = g_build_filename(r->dir, "shim.json", NULL);
  g_autofree char *kernel = g_build_filename(image_dir, "vmlinux", NULL);
  g_autofree char *initrd = rig_initrd != NULL
                                ? g_strdup(rig_initrd)
                                : g_build_filename(image_dir, "initramfs.cpio", NULL);
  g_autofree char *config_text = g_strdup_printf(
      "{\"kernel\": \"%s\", \"initrd\": \"%s\", \"memory_mb\": 256}", kernel, initrd);
  g_assert_true(g_file_set_contents(r->config, config_text, -1, NULL));
  r->bundle = g_build_filename(r->dir, "t1", NULL);
  g_autofree char *rootfs = g_build_filename(r->bundle, "rootfs", NULL);
  g_autoptr(GError) error = NULL;
  g_assert_true(test_build_busybox_rootfs(rootfs, &error));
  g_autoptr(json_t) spec = test_busybox_oci_spec();
  json_object_set_new(json_object_get(spec, "process"), "args",
                      json_pack("[s,s,s]", "sh", "-c",
                                "i=0; while :; do i=$((i+1)); echo \"line $i\"; sleep 0.02; done"));
  if (source_id != NULL)
    json_object_set_new(spec, "annotations",
                        json_pack("{s:s}", "io.ferry.migration.source-container-id", source_id));
  g_autofree char *config_path = g_build_filename(r->bundle, "config.json", NULL);
  g_assert_cmpint(json_dump_file(spec, config_path, 0), ==, 0);
  r->log = g_build_filename(r->dir, "out.log", NULL);
  /* A ferry root naming this rig's bundle, for `ferry ps` (docs/cli.md, state). */
  g_autofree char *record = g_build_filename(r->dir, "root", "sandboxes", "t1", NULL);
  g_assert_cmpint(g_mkdir_with_parents(record, 0700), ==, 0);
  g_autofree char *link = g_build_filename(record, "bundle", NULL);
  g_assert_cmpint(symlink(r->bundle, link), ==, 0);

  r->published = g_ptr_array_new_with_free_func(g_free);
  r->events = ferry_ttrpc_server_new();
  g_autofree char *events = g_build_filename(r->dir, "events.sock", NULL);
  g_assert_true(ferry_ttrpc_server_register(
      r->events, NULL, &containerd__services__events__ttrpc__v1__events__descriptor, events_methods,
      r, &error));
  g_assert_true(ferry_ttrpc_server_listen_unix(r->events, events, &error));
  g_autofree char *address = start_shim(r);
  r->c = ferry_ttrpc_client_connect_unix(address, &error);
  g_assert_no_error(error);
  Containerd__Task__V2__ConnectRequest conn = CONTAINERD__TASK__V2__CONNECT_REQUEST__INIT;
  conn.id = "t1";
  Containerd__Task__V2__ConnectResponse *cr = (Containerd__Task__V2__ConnectResponse *)call(
      r, "containerd.task.v2.Task", "Connect", &conn.base,
      &containerd__task__v2__connect_response__descriptor, &error);
  g_assert_no_error(error);
  r->daemon = (pid_t)cr->shim_pid;
  daemon_track(r->daemon, TRUE);
  protobuf_c_message_free_unpacked(&cr->base, NULL);
}

/* Task.Create of t1 with this rig's bundle and log: the pid it answers, or 0 with
 * *error. */
static guint32 create_task_try(Rig *r, GError **error)
{
  Containerd__Task__V2__CreateTaskRequest create = CONTAINERD__TASK__V2__CREATE_TASK_REQUEST__INIT;
  create.id = "t1";
  create.bundle = r->bundle;
  g_autofree char *uri = g_strconcat("file://", r->log, NULL);
  create.stdout = uri;
  Containerd__Task__V2__CreateTaskResponse *resp = (Containerd__Task__V2__CreateTaskResponse *)call(
      r, "containerd.task.v2.Task", "Create", &create.base,
      &containerd__task__v2__create_task_response__descriptor, error);
  if (resp == NULL)
    return 0;
  guint32 pid = resp->pid;
  protobuf_c_message_free_unpacked(&resp->base, NULL);
  return pid;
}

static guint32 create_task(Rig *r)
{
  g_autoptr(GError) error = NULL;
  guint32 pid = create_task_try(r, &error);
  if (error != NULL)
    g_error("Create: %s", error->message);
  return pid;
}

static void rig_start(Rig *r)
{
  rig_prepare(r, NULL);
  (void)create_task(r);
  Containerd__Task__V2__StartRequest start = CONTAINERD__TASK__V2__START_REQUEST__INIT;
  start.id = "t1";
  call_ok(r, "containerd.task.v2.Task", "Start", &start.base,
          &containerd__task__v2__start_response__descriptor);
  wait_lines(r, 5);
}

/* The rig's files and records, once its daemon is gone. */
static void rig_free(Rig *r)
{
  ferry_ttrpc_server_free(r->events);
  g_ptr_array_unref(r->published);
  test_rm_rf(r->dir);
  g_free(r->dir);
  g_free(r->run_dir);
  g_free(r->config);
  g_free(r->bundle);
  g_free(r->log);
}

static void rig_stop(Rig *r)
{
  Containerd__Task__V2__KillRequest kill_req = CONTAINERD__TASK__V2__KILL_REQUEST__INIT;
  kill_req.id = "t1";
  kill_req.signal = SIGKILL;
  call_ok(r, "containerd.task.v2.Task", "Kill", &kill_req.base,
          &google__protobuf__empty__descriptor);
  Containerd__Task__V2__WaitRequest wait = CONTAINERD__TASK__V2__WAIT_REQUEST__INIT;
  wait.id = "t1";
  call_ok(r, "containerd.task.v2.Task", "Wait", &wait.base,
          &containerd__task__v2__wait_response__descriptor);
  Containerd__Task__V2__DeleteRequest del = CONTAINERD__TASK__V2__DELETE_REQUEST__INIT;
  del.id = "t1";
  call_ok(r, "containerd.task.v2.Task", "Delete", &del.base,
          &containerd__task__v2__delete_response__descriptor);
  Containerd__Task__V2__ShutdownRequest sd = CONTAINERD__TASK__V2__SHUTDOWN_REQUEST__INIT;
  sd.id = "t1";
  g_autoptr(GError) error = NULL;
  ProtobufCMessage *resp = call(r, "containerd.task.v2.Task", "Shutdown", &sd.base,
                                &google__protobuf__empty__descriptor, &error);
  if (resp != NULL)
    protobuf_c_message_free_unpacked(resp, NULL);
  ferry_ttrpc_client_free(r->c);
  gint64 until = g_get_monotonic_time() + 30 * G_USEC_PER_SEC;
  while (kill(r->daemon, 0) == 0 && g_get_monotonic_time() < until)
    g_usleep(20000);
  if (kill(r->daemon, 0) == 0)
    g_error("the shim daemon %d did not exit after Shutdown", (int)r->daemon);
  daemon_track(r->daemon, FALSE);
  rig_free(r);
}

/* A daemon whose sandbox moved away (or that was killed: signum 0): ended by signal,
 * and gone. */
static void rig_end(Rig *r, int signum)
{
  ferry_ttrpc_client_free(r->c);
  if (signum != 0)
    g_assert_cmpint(kill(r->daemon, signum), ==, 0);
  gint64 until = g_get_monotonic_time() + 30 * G_USEC_PER_SEC;
  while (kill(r->daemon, 0) == 0 && g_get_monotonic_time() < until)
    g_usleep(20000);
  g_assert_cmpint(kill(r->daemon, 0), <, 0);
  daemon_track(r->daemon, FALSE);
  rig_free(r);
}

static void rig_end_daemon(Rig *r)
{
  rig_end(r, SIGTERM);
}

/* ------------------------------------------------------------ Notifications -- */

typedef struct {
  GArray *phases; /* Phase */
  guint32 last_id;
  gboolean ended;
  GError *error;
} Stream;

static void on_stream_message(FerryTtrpcClient *client, const ProtobufCMessage *message,
                              gpointer ud)
{
  Stream *s = ud;
  const NotificationsResponse *n = (const NotificationsResponse *)message;
  if (n->notification == NULL)
    return;
  g_assert_cmpuint(n->message_id, >, s->last_id); /* monotonic */
  s->last_id = n->message_id;
  Phase phase = n->notification->phase;
  g_array_append_val(s->phases, phase);
}

static void on_stream_done(FerryTtrpcClient *client, const ProtobufCMessage *response,
                           const GError *error, gpointer ud)
{
  Stream *s = ud;
  s->ended = TRUE;
  if (error != NULL)
    s->error = g_error_copy(error);
}

static gboolean stream_has(Stream *s, Phase phase)
{
  for (guint i = 0; i < s->phases->len; i++)
    if (g_array_index(s->phases, Phase, i) == phase)
      return TRUE;
  return FALSE;
}

/* ----------------------------------------------------- hcsshim's bytes -- */

/* A request in hcsshim's field numbers, encoded here by hand (not by our generated
 * code): each field is an unknown field of an empty message, which protobuf-c writes
 * as its tag, then its bytes as given (a length prefix included). */
typedef struct {
  ProtobufCMessageUnknownField fields[4];
  GByteArray *data[4];
  guint n;
} Raw;

static void put_varint(GByteArray *b, guint64 v)
{
  do {
    guint8 byte = (v & 0x7f) | (v > 0x7f ? 0x80 : 0);
    g_byte_array_append(b, &byte, 1);
    v >>= 7;
  } while (v != 0);
}

static void raw_add(Raw *r, guint32 tag, ProtobufCWireType type, GByteArray *data)
{
  g_assert_cmpuint(r->n, <, G_N_ELEMENTS(r->fields));
  r->data[r->n] = data;
  r->fields[r->n] = (ProtobufCMessageUnknownField){
    .tag = tag, .wire_type = type, .len = data->len, .data = data->data
  };
  r->n++;
}

static void raw_bytes(Raw *r, guint32 tag, const void *bytes, gsize len)
{
  GByteArray *b = g_byte_array_new();
  put_varint(b, len);
  g_byte_array_append(b, bytes, (guint)len);
  raw_add(r, tag, PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED, b);
}

static void raw_varint(Raw *r, guint32 tag, guint64 v)
{
  GByteArray *b = g_byte_array_new();
  put_varint(b, v);
  raw_add(r, tag, PROTOBUF_C_WIRE_TYPE_VARINT, b);
}

/* A google.protobuf.Any: 1 type_url, 2 value. */
static void raw_any(Raw *r, guint32 tag, const char *type_url, const guint8 *value, gsize len)
{
  g_autoptr(GByteArray) any = g_byte_array_new();
  put_varint(any, 1 << 3 | 2);
  put_varint(any, strlen(type_url));
  g_byte_array_append(any, (const guint8 *)type_url, (guint)strlen(type_url));
  put_varint(any, 2 << 3 | 2);
  put_varint(any, len);
  g_byte_array_append(any, value, (guint)len);
  raw_bytes(r, tag, any->data, any->len);
}

static ProtobufCMessage *raw_call(Rig *rig, const char *method, Raw *r,
                                  const ProtobufCMessageDescriptor *desc, GError **error)
{
  Google__Protobuf__Empty raw = GOOGLE__PROTOBUF__EMPTY__INIT;
  raw.base.n_unknown_fields = r->n;
  raw.base.unknown_fields = r->fields;
  ProtobufCMessage *resp = call(rig, "Migration", method, &raw.base, desc, error);
  for (guint i = 0; i < r->n; i++)
    g_byte_array_unref(r->data[i]);
  r->n = 0;
  return resp;
}

/* -------------------------------------------------------------------- test -- */

static gboolean skip_without_qemu(void)
{
  g_autofree char *qemu = g_find_program_in_path("qemu-system-x86_64");
  g_autofree char *kernel = g_build_filename(image_dir, "vmlinux", NULL);
  if (qemu == NULL || !g_file_test(kernel, G_FILE_TEST_EXISTS)) {
    g_test_skip(qemu == NULL ? "qemu-system-x86_64 is not installed"
                             : "no guest image (make image)");
    return TRUE;
  }
  return FALSE;
}

static void test_source_session(void)
{
  if (skip_without_qemu())
    return;
  Rig rig, *r = &rig;
  rig_start(r);

  /* Nothing exists yet: unknown sessions and calls out of order. */
  FinalizeSandboxRequest fin = FINALIZE_SANDBOX_REQUEST__INIT;
  fin.session_id = "nope";
  fin.action = FINALIZE_ACTION__FINALIZE_ACTION_STOP;
  call_fails(r, "Migration", "FinalizeSandbox", &fin.base, &finalize_sandbox_response__descriptor,
             FERRY_ERROR_NOT_FOUND, "nope");
  TransferSandboxRequest tr = TRANSFER_SANDBOX_REQUEST__INIT;
  tr.session_id = "s1";
  call_fails(r, "Migration", "TransferSandbox", &tr.base, &transfer_sandbox_response__descriptor,
             FERRY_ERROR_NOT_FOUND, "s1");
  Ferry__Migration__V1__StatusRequest st = FERRY__MIGRATION__V1__STATUS_REQUEST__INIT;
  st.session_id = "s1";
  call_fails(r, "ferry.migration.v1.Status", "Status", &st.base,
             &ferry__migration__v1__status_response__descriptor, FERRY_ERROR_NOT_FOUND, "s1");
  PrepareAndExportSandboxRequest pe = PREPARE_AND_EXPORT_SANDBOX_REQUEST__INIT;
  pe.session_id = "";
  call_fails(r, "Migration", "PrepareAndExportSandbox", &pe.base,
             &prepare_and_export_sandbox_response__descriptor, FERRY_ERROR_INVALID_ARGUMENT,
             "session");

  /* The export: the state names the task and its running process. */
  pe.session_id = "s1";
  g_autoptr(GError) error = NULL;
  PrepareAndExportSandboxResponse *exported = (PrepareAndExportSandboxResponse *)call(
      r, "Migration", "PrepareAndExportSandbox", &pe.base,
      &prepare_and_export_sandbox_response__descriptor, &error);
  g_assert_no_error(error);
  g_assert_nonnull(exported->config);
  Ferry__V1__SandboxState *state =
      ferry_sandbox_state_unpack(exported->config->type_url, exported->config->value.data,
                                 exported->config->value.len, &error);
  g_assert_no_error(error);
  g_assert_true(ferry_sandbox_state_validate(state, &error));
  g_assert_no_error(error);
  g_assert_cmpuint(state->schema_version, ==, FERRY_SANDBOX_STATE_SCHEMA_VERSION);
  g_assert_cmpstr(state->compatibility->accelerator, !=, "");
  g_assert_true(g_str_has_prefix(state->compatibility->guest_image_digest, "sha256-kernel:"));
  /* This QEMU's version and the machine it resolved (microvm is no alias). */
  g_assert_true(g_ascii_isdigit(state->compatibility->qemu_version[0]));
  g_assert_cmpstr(state->compatibility->machine_type, ==, "microvm");
  g_assert_cmpstr(state->compatibility->cpu_model, ==, "qemu-default");
  g_assert_cmpuint(state->n_disks, ==, 1);
  g_assert_true(g_str_has_prefix(state->disks[0]->digest, "sha256:"));
  g_assert_cmpuint(state->n_containers, ==, 1);
  Ferry__V1__Container *c = state->containers[0];
  g_assert_cmpstr(c->id, ==, "t1");
  g_assert_cmpuint(c->n_layer_digests, ==, 1);
  g_assert_cmpstr(c->layer_digests[0], ==, state->disks[0]->digest);
  g_assert_cmpuint(c->n_processes, ==, 1);
  Ferry__V1__Process *init = c->processes[0];
  g_assert_cmpstr(init->exec_id, ==, "");
  g_assert_cmpint(init->status, ==, FERRY__V1__PROCESS_STATUS__PROCESS_STATUS_RUNNING);
  g_assert_cmpuint(init->pid, >, 0);
  g_assert_nonnull(init->migration);
  g_assert_cmpuint(init->migration->stdout_port, >, 0);
  g_assert_cmpuint(init->migration->wait_call_id, >, 0);
  g_assert_cmpuint(state->floors->next_port, >, init->migration->stdout_port);
  /* The stdout channel as it stood, for a destination without the final ones. */
  g_assert_cmpuint(state->n_channels, ==, 1);
  g_assert_cmpuint(state->channels[0]->port, ==, init->migration->stdout_port);
  g_assert_cmpuint(state->channels[0]->recv_consumed, >, 0);
  protobuf_c_message_free_unpacked(&state->base, NULL);
  protobuf_c_message_free_unpacked(&exported->base, NULL);

  /* One session at a time; no changes to containers meanwhile; reads still work. */
  pe.session_id = "s2";
  call_fails(r, "Migration", "PrepareAndExportSandbox", &pe.base,
             &prepare_and_export_sandbox_response__descriptor, FERRY_ERROR_ALREADY_EXISTS, "s1");
  Containerd__Task__V2__ExecProcessRequest ex = CONTAINERD__TASK__V2__EXEC_PROCESS_REQUEST__INIT;
  ex.id = "t1";
  ex.exec_id = "e1";
  call_fails(r, "containerd.task.v2.Task", "Exec", &ex.base, &google__protobuf__empty__descriptor,
             FERRY_ERROR_FAILED_PRECONDITION, "s1");
  Containerd__Task__V2__StateRequest sr = CONTAINERD__TASK__V2__STATE_REQUEST__INIT;
  sr.id = "t1";
  call_ok(r, "containerd.task.v2.Task", "State", &sr.base,
          &containerd__task__v2__state_response__descriptor);
  /* A finalize before any transfer. */
  fin.session_id = "s1";
  call_fails(r, "Migration", "FinalizeSandbox", &fin.base, &finalize_sandbox_response__descriptor,
             FERRY_ERROR_FAILED_PRECONDITION, "");

  /* A subscriber, then Cancel: the guest runs here again and the stream says so. */
  Stream stream = { .phases = g_array_new(FALSE, FALSE, sizeof(Phase)) };
  NotificationsRequest nr = NOTIFICATIONS_REQUEST__INIT;
  nr.session_id = "s1";
  FerryTtrpcCallOptions none = { 0 };
  ferry_ttrpc_client_stream(r->c, "Migration", "Notifications", &nr.base,
                            &notifications_response__descriptor, &none, on_stream_message,
                            on_stream_done, &stream);
  CancelRequest cancel = CANCEL_REQUEST__INIT;
  cancel.session_id = "s1";
  call_ok(r, "Migration", "Cancel", &cancel.base, &cancel_response__descriptor);
  gint64 until = g_get_monotonic_time() + 60 * G_USEC_PER_SEC;
  while (!stream_has(&stream, PHASE__PHASE_RECOVERY_DONE) && g_get_monotonic_time() < until)
    g_main_context_iteration(NULL, TRUE);
  g_assert_true(stream_has(&stream, PHASE__PHASE_RECOVERY_DONE));
  Ferry__Migration__V1__StatusResponse *status = (Ferry__Migration__V1__StatusResponse *)call(
      r, "ferry.migration.v1.Status", "Status", &st.base,
      &ferry__migration__v1__status_response__descriptor, &error);
  g_assert_no_error(error);
  g_assert_cmpint(status->role, ==, FERRY__MIGRATION__V1__ROLE__ROLE_SOURCE);
  g_assert_cmpint(status->state, ==, FERRY__MIGRATION__V1__SESSION_STATE__SESSION_STATE_CANCELLED);
  g_assert_cmpuint(status->last_message_id, ==, stream.last_id);
  protobuf_c_message_free_unpacked(&status->base, NULL);

  /* Cleanup ends the session (and its stream); the Task API is free again. */
  CleanupRequest cleanup = CLEANUP_REQUEST__INIT;
  cleanup.session_id = "s1";
  call_ok(r, "Migration", "Cleanup", &cleanup.base, &cleanup_response__descriptor);
  until = g_get_monotonic_time() + 30 * G_USEC_PER_SEC;
  while (!stream.ended && g_get_monotonic_time() < until)
    g_main_context_iteration(NULL, TRUE);
  g_assert_true(stream.ended);
  g_assert_no_error(stream.error);
  g_array_unref(stream.phases);
  guint before = count_lines(r->log);
  wait_lines(r, before + 5); /* the workload never stopped, nothing repeated */

  /* hcsshim's bytes (1: session_id "w1", 2: an empty init_options). */
  Raw raw = { 0 };
  raw_bytes(&raw, 1, "w1", 2);
  raw_bytes(&raw, 2, "", 0);
  exported = (PrepareAndExportSandboxResponse *)raw_call(
      r, "PrepareAndExportSandbox", &raw, &prepare_and_export_sandbox_response__descriptor, &error);
  g_assert_no_error(error);
  g_assert_cmpstr(exported->config->type_url, ==, FERRY_SANDBOX_STATE_TYPE_URL);
  protobuf_c_message_free_unpacked(&exported->base, NULL);
  cancel.session_id = "w1";
  call_ok(r, "Migration", "Cancel", &cancel.base, &cancel_response__descriptor);
  cleanup.session_id = "w1";
  call_ok(r, "Migration", "Cleanup", &cleanup.base, &cleanup_response__descriptor);
  before = count_lines(r->log);
  wait_lines(r, before + 5);

  /* A shim that runs a sandbox is no destination. */
  ImportSandboxRequest imp = IMPORT_SANDBOX_REQUEST__INIT;
  imp.session_id = "d1";
  imp.sandbox_id = "sb";
  call_fails(r, "Migration", "ImportSandbox", &imp.base, &import_sandbox_response__descriptor,
             FERRY_ERROR_FAILED_PRECONDITION, "starts empty");
  rig_stop(r);
}

/* ---------------------------------------------------------- two shims -- */

/* Serves one end of the memory stream at a unix path: whoever connects gets it. */
typedef struct {
  char *path;
  int listen_fd;
  int fd; /* the end to hand over */
  guint source;
} Handoff;

static gboolean on_handoff(gint fd, GIOCondition cond, gpointer ud)
{
  Handoff *h = ud;
  int conn = accept4(h->listen_fd, NULL, NULL, SOCK_CLOEXEC);
  if (conn >= 0) {
    g_autoptr(GError) error = NULL;
    g_assert_true(ferry_fd_send(conn, h->fd, "m", 1, &error));
    close(conn);
  }
  return G_SOURCE_CONTINUE;
}

static void handoff_init(Handoff *h, const char *dir, const char *name, int fd)
{
  h->path = g_build_filename(dir, name, NULL);
  g_autoptr(GError) error = NULL;
  h->listen_fd = ferry_unix_listen(h->path, &error);
  g_assert_no_error(error);
  h->fd = fd;
  h->source = g_unix_fd_add(h->listen_fd, G_IO_IN, on_handoff, h);
}

static void handoff_clear(Handoff *h)
{
  g_source_remove(h->source);
  close(h->listen_fd);
  close(h->fd);
  unlink(h->path);
  g_free(h->path);
}

static Ferry__Migration__V1__SessionState session_state(Rig *r, const char *id)
{
  Ferry__Migration__V1__StatusRequest st = FERRY__MIGRATION__V1__STATUS_REQUEST__INIT;
  st.session_id = (char *)id;
  g_autoptr(GError) error = NULL;
  Ferry__Migration__V1__StatusResponse *status = (Ferry__Migration__V1__StatusResponse *)call(
      r, "ferry.migration.v1.Status", "Status", &st.base,
      &ferry__migration__v1__status_response__descriptor, &error);
  g_assert_no_error(error);
  Ferry__Migration__V1__SessionState state = status->state;
  protobuf_c_message_free_unpacked(&status->base, NULL);
  return state;
}

static guint lines_in(const char *text)
{
  guint n = 0;
  for (const char *c = text; c != NULL && *c != '\0'; c++)
    n += *c == '\n';
  return n;
}

/* A task moved from one shim daemon to another, each with its own run directory and
 * log, driven through the Migration service as an orchestrator would: the two logs
 * together are the workload's whole output, once, and the task runs on B. */
static void test_two_shims(void)
{
  if (skip_without_qemu())
    return;
  Rig a, b;
  rig_start(&a);
  rig_prepare(&b, "t1");

  /* Before any import, a binding Create has nothing to bind. */
  g_autoptr(GError) error = NULL;
  g_assert_cmpuint(create_task_try(&b, &error), ==, 0);
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION);
  g_clear_error(&error);

  /* A first session, cancelled on both sides after the destination bound the task:
   * the destination is empty again, the source goes on. */
  PrepareAndExportSandboxRequest pe = PREPARE_AND_EXPORT_SANDBOX_REQUEST__INIT;
  pe.session_id = "m0";
  PrepareAndExportSandboxResponse *exported = (PrepareAndExportSandboxResponse *)call(
      &a, "Migration", "PrepareAndExportSandbox", &pe.base,
      &prepare_and_export_sandbox_response__descriptor, &error);
  g_assert_no_error(error);
  {
    ImportSandboxRequest imp0 = IMPORT_SANDBOX_REQUEST__INIT;
    imp0.session_id = "m0";
    imp0.sandbox_id = "t1";
    imp0.config = exported->config;
    call_ok(&b, "Migration", "ImportSandbox", &imp0.base, &import_sandbox_response__descriptor);
    g_assert_cmpuint(create_task(&b), >, 0);
    CancelRequest cancel0 = CANCEL_REQUEST__INIT;
    cancel0.session_id = "m0";
    call_ok(&b, "Migration", "Cancel", &cancel0.base, &cancel_response__descriptor);
    call_ok(&a, "Migration", "Cancel", &cancel0.base, &cancel_response__descriptor);
    CleanupRequest cleanup0 = CLEANUP_REQUEST__INIT;
    cleanup0.session_id = "m0";
    call_ok(&b, "Migration", "Cleanup", &cleanup0.base, &cleanup_response__descriptor);
    call_ok(&a, "Migration", "Cleanup", &cleanup0.base, &cleanup_response__descriptor);
    Containerd__Task__V2__StateRequest sr0 = CONTAINERD__TASK__V2__STATE_REQUEST__INIT;
    sr0.id = "t1";
    call_fails(&b, "containerd.task.v2.Task", "State", &sr0.base,
               &containerd__task__v2__state_response__descriptor, FERRY_ERROR_NOT_FOUND, "t1");
    protobuf_c_message_free_unpacked(&exported->base, NULL);
  }
  wait_lines(&a, count_lines(a.log) + 3);

  pe.session_id = "m1";
  exported = (PrepareAndExportSandboxResponse *)call(
      &a, "Migration", "PrepareAndExportSandbox", &pe.base,
      &prepare_and_export_sandbox_response__descriptor, &error);
  g_assert_no_error(error);
  /* In hcsshim's bytes: 1 session_id, 2 sandbox_id, 3 config (an Any). */
  Raw raw = { 0 };
  raw_bytes(&raw, 1, "m1", 2);
  raw_bytes(&raw, 2, "t1", 2);
  raw_any(&raw, 3, exported->config->type_url, exported->config->value.data,
          exported->config->value.len);
  ProtobufCMessage *imported =
      raw_call(&b, "ImportSandbox", &raw, &import_sandbox_response__descriptor, &error);
  g_assert_no_error(error);
  protobuf_c_message_free_unpacked(imported, NULL);
  ImportSandboxRequest imp = IMPORT_SANDBOX_REQUEST__INIT;
  imp.session_id = "m1";
  imp.sandbox_id = "t1";
  imp.config = exported->config;
  call_fails(&b, "Migration", "ImportSandbox", &imp.base, &import_sandbox_response__descriptor,
             FERRY_ERROR_ALREADY_EXISTS, "");
  protobuf_c_message_free_unpacked(&exported->base, NULL);
  PrepareSandboxRequest prep = PREPARE_SANDBOX_REQUEST__INIT;
  prep.session_id = "m1";
  call_fails(&b, "Migration", "PrepareSandbox", &prep.base, &prepare_sandbox_response__descriptor,
             FERRY_ERROR_FAILED_PRECONDITION, "t1");
  guint32 pid = create_task(&b);
  g_assert_cmpuint(pid, >, 0);
  call_ok(&b, "Migration", "PrepareSandbox", &prep.base, &prepare_sandbox_response__descriptor);

  /* The memory stream: one end for each shim, collected at a unix path. */
  int sp[2];
  g_assert_true(ferry_socketpair(sp, FALSE, &error));
  Handoff ha, hb;
  handoff_init(&ha, a.dir, "mem.sock", sp[0]);
  handoff_init(&hb, b.dir, "mem.sock", sp[1]);
  CreateDuplicateSocketRequest dup = CREATE_DUPLICATE_SOCKET_REQUEST__INIT;
  dup.session_id = "m1";
  dup.protocol_info.data = (uint8_t *)hb.path;
  dup.protocol_info.len = strlen(hb.path);
  call_ok(&b, "Migration", "CreateDuplicateSocket", &dup.base,
          &create_duplicate_socket_response__descriptor);
  dup.protocol_info.data = (uint8_t *)ha.path;
  dup.protocol_info.len = strlen(ha.path);
  call_ok(&a, "Migration", "CreateDuplicateSocket", &dup.base,
          &create_duplicate_socket_response__descriptor);
  handoff_clear(&ha);
  handoff_clear(&hb);
  TransferSandboxRequest tr = TRANSFER_SANDBOX_REQUEST__INIT;
  tr.session_id = "m1";
  call_ok(&b, "Migration", "TransferSandbox", &tr.base, &transfer_sandbox_response__descriptor);
  call_ok(&a, "Migration", "TransferSandbox", &tr.base, &transfer_sandbox_response__descriptor);
  gint64 until = g_get_monotonic_time() + 120 * G_USEC_PER_SEC;
  while (session_state(&a, "m1") !=
             FERRY__MIGRATION__V1__SESSION_STATE__SESSION_STATE_TRANSFER_COMPLETED ||
         session_state(&b, "m1") !=
             FERRY__MIGRATION__V1__SESSION_STATE__SESSION_STATE_TRANSFER_COMPLETED) {
    if (g_get_monotonic_time() > until)
      g_error("the transfer did not complete: source %d, destination %d", session_state(&a, "m1"),
              session_state(&b, "m1"));
    g_usleep(50000);
  }

  /* STOP in hcsshim's bytes (1 session_id, 2 action STOP = 1); the answer carries our
   * final channels in field 1000, which an hcsshim caller skips. */
  raw_bytes(&raw, 1, "m1", 2);
  raw_varint(&raw, 2, 1);
  FinalizeSandboxResponse *stopped = (FinalizeSandboxResponse *)raw_call(
      &a, "FinalizeSandbox", &raw, &finalize_sandbox_response__descriptor, &error);
  g_assert_no_error(error);
  FinalizeSandboxRequest fin = FINALIZE_SANDBOX_REQUEST__INIT;
  fin.session_id = "m1";
  g_assert_nonnull(stopped->ferry_final_channels);
  g_assert_cmpuint(stopped->ferry_final_channels->n_channels, >=, 1);
  fin.action = FINALIZE_ACTION__FINALIZE_ACTION_RESUME;
  fin.ferry_final_channels = stopped->ferry_final_channels;
  call_ok(&b, "Migration", "FinalizeSandbox", &fin.base, &finalize_sandbox_response__descriptor);
  /* A retry converges: the same answer, nothing done twice. */
  call_ok(&b, "Migration", "FinalizeSandbox", &fin.base, &finalize_sandbox_response__descriptor);
  protobuf_c_message_free_unpacked(&stopped->base, NULL);
  CleanupRequest cleanup = CLEANUP_REQUEST__INIT;
  cleanup.session_id = "m1";
  call_ok(&a, "Migration", "Cleanup", &cleanup.base, &cleanup_response__descriptor);
  call_ok(&b, "Migration", "Cleanup", &cleanup.base, &cleanup_response__descriptor);

  /* The workload goes on on B: A's log then B's is the sequence, once. */
  g_autofree char *b_text = NULL;
  until = g_get_monotonic_time() + 120 * G_USEC_PER_SEC;
  while (b_text == NULL || lines_in(b_text) < 10) {
    g_clear_pointer(&b_text, g_free);
    g_file_get_contents(b.log, &b_text, NULL, NULL);
    if (g_get_monotonic_time() > until)
      g_error("the workload does not go on on the destination");
    g_usleep(50000);
  }
  g_autofree char *a_text = NULL;
  g_assert_true(g_file_get_contents(a.log, &a_text, NULL, NULL));
  guint on_a = lines_in(a_text);
  g_autofree char *both = g_strconcat(a_text, b_text, NULL);
  g_autofree char *joined = g_build_filename(b.dir, "joined.log", NULL);
  g_assert_true(g_file_set_contents(joined, both, -1, NULL));
  guint total = count_lines(joined); /* aborts on a gap or a repeat */
  g_assert_cmpuint(total, >, on_a);
  g_test_message("%u lines on the source, %u in all", on_a, total);
  Containerd__Task__V2__StateRequest sr = CONTAINERD__TASK__V2__STATE_REQUEST__INIT;
  sr.id = "t1";
  Containerd__Task__V2__StateResponse *state = (Containerd__Task__V2__StateResponse *)call(
      &b, "containerd.task.v2.Task", "State", &sr.base,
      &containerd__task__v2__state_response__descriptor, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(state->pid, ==, pid);
  g_assert_cmpint(state->status, ==, CONTAINERD__V1__TYPES__STATUS__RUNNING);
  protobuf_c_message_free_unpacked(&state->base, NULL);

  rig_end_daemon(&a);
  rig_stop(&b); /* Kill, Wait (the exit comes back on B), Delete, Shutdown */
}

/* ------------------------------------------------- through lib/migration -- */

/* What `ferry ps --json` says on this rig's host: the running sandboxes. */
static json_t *ferry_ps(Rig *r)
{
  g_autofree char *root = g_build_filename(r->dir, "root", NULL);
  const char *argv[] = { cli_path, "--root", root, "ps", "--json", NULL };
  g_autofree char *out = NULL, *err = NULL;
  int status = 0;
  g_autoptr(GError) error = NULL;
  if (!g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_DEFAULT, NULL, NULL, &out, &err, &status,
                    &error) ||
      !g_spawn_check_wait_status(status, &error))
    g_error("ferry ps: %s: %s", error->message, err != NULL ? err : "");
  json_error_t jerr;
  json_t *list = json_loads(out, 0, &jerr);
  if (!json_is_array(list))
    g_error("ferry ps printed %s", out);
  return list;
}

/* ps on `r` lists t1 running with `pid`, or (pid 0) nothing. */
static void assert_ps(Rig *r, guint32 pid)
{
  g_autoptr(json_t) list = ferry_ps(r);
  g_autofree char *text = json_dumps(list, JSON_COMPACT);
  if (json_array_size(list) != (pid == 0 ? 0 : 1))
    g_error("ferry ps on %s: %s; want %s", r->dir, text, pid == 0 ? "nothing" : "t1 running");
  if (pid == 0)
    return;
  json_t *t = json_array_get(list, 0);
  g_assert_cmpstr(json_string_value(json_object_get(t, "Name")), ==, "t1");
  g_assert_cmpstr(json_string_value(json_object_get(t, "Status")), ==, "running");
  g_assert_cmpint(json_integer_value(json_object_get(t, "Pid")), ==, pid);
}

/* "prefix 1\nprefix 2\n..." consecutive from 1, complete lines, none missing or twice:
 * how many; aborts otherwise. */
static guint check_sequence(const char *text, const char *prefix)
{
  g_auto(GStrv) lines = g_strsplit(text, "\n", -1);
  guint n = 0;
  for (char **l = lines; *l != NULL && **l != '\0'; l++) {
    g_autofree char *want = g_strdup_printf("%s %u", prefix, n + 1);
    if (g_strcmp0(*l, want) != 0)
      g_error("line %u is '%s', want '%s'", n + 1, *l, want);
    n++;
  }
  return n;
}

static char *read_file(const char *path)
{
  g_autofree char *text = NULL;
  if (!g_file_get_contents(path, &text, NULL, NULL))
    return g_strdup("");
  return g_steal_pointer(&text);
}

/* What the hops write where: one log per host and hop, concatenated in order. */
typedef struct {
  GPtrArray *init_logs; /* char *, in hop order */
  GPtrArray *echo_logs;
  guint stdin_sent;
  guint32 pid; /* the init's, in the guest: the same on every host */
} Trail;

static char *joined(GPtrArray *paths)
{
  GString *all = g_string_new(NULL);
  for (guint i = 0; i < paths->len; i++) {
    g_autofree char *t = read_file(paths->pdata[i]);
    g_string_append(all, t);
  }
  return g_string_free(all, FALSE);
}

static void wait_joined(GPtrArray *paths, const char *prefix, guint n)
{
  gint64 until = g_get_monotonic_time() + 120 * G_USEC_PER_SEC;
  for (;;) {
    g_autofree char *all = joined(paths);
    if (check_sequence(all, prefix) >= n)
      return;
    if (g_get_monotonic_time() > until)
      g_error("'%s' did not reach %u lines (has %u)", prefix, n, check_sequence(all, prefix));
    g_main_context_iteration(NULL, FALSE);
    g_usleep(20000);
  }
}

static gboolean exec_try(Rig *r, const char *exec_id, const char *args_json, const char *in,
                         const char *out, GError **error)
{
  Google__Protobuf__Any spec = GOOGLE__PROTOBUF__ANY__INIT;
  g_autofree char *text = g_strdup_printf(
      "{\"args\":%s,\"cwd\":\"/\",\"env\":[\"PATH=/bin:/usr/bin\"],\"user\":{\"uid\":0,\"gid\":0}}",
      args_json);
  spec.type_url = "types.containerd.io/opencontainers/runtime-spec/1/Process";
  spec.value.data = (uint8_t *)text;
  spec.value.len = strlen(text);
  Containerd__Task__V2__ExecProcessRequest ex = CONTAINERD__TASK__V2__EXEC_PROCESS_REQUEST__INIT;
  ex.id = "t1";
  ex.exec_id = (char *)exec_id;
  ex.stdin = (char *)(in != NULL ? in : "");
  ex.stdout = (char *)(out != NULL ? out : "");
  ex.spec = &spec;
  ProtobufCMessage *resp = call(r, "containerd.task.v2.Task", "Exec", &ex.base,
                                &google__protobuf__empty__descriptor, error);
  if (resp == NULL)
    return FALSE;
  protobuf_c_message_free_unpacked(resp, NULL);
  return TRUE;
}

static void exec_process(Rig *r, const char *exec_id, const char *args_json, const char *in,
                         const char *out)
{
  g_autoptr(GError) error = NULL;
  if (!exec_try(r, exec_id, args_json, in, out, &error))
    g_error("Exec %s: %s", exec_id, error->message);
}

static void start_exec(Rig *r, const char *exec_id)
{
  Containerd__Task__V2__StartRequest start = CONTAINERD__TASK__V2__START_REQUEST__INIT;
  start.id = "t1";
  start.exec_id = (char *)exec_id;
  call_ok(r, "containerd.task.v2.Task", "Start", &start.base,
          &containerd__task__v2__start_response__descriptor);
}

/* A destination rig's files for hop `hop`: the init's log, the echo's fifo (held open
 * by the test, writing) and log. */
typedef struct {
  Rig *rig;
  guint hop;
  char *fifo;
  int fifo_fd;
  char *echo_log;
} Host;

static void host_files(Host *h, guint hop, Trail *trail)
{
  Rig *r = h->rig;
  h->hop = hop;
  g_free(r->log);
  r->log = g_strdup_printf("%s/out-%u.log", r->dir, hop);
  g_ptr_array_add(trail->init_logs, g_strdup(r->log));
  h->echo_log = g_strdup_printf("%s/echo-%u.log", r->dir, hop);
  g_ptr_array_add(trail->echo_logs, g_strdup(h->echo_log));
  h->fifo = g_strdup_printf("%s/in-%u", r->dir, hop);
  g_assert_cmpint(mkfifo(h->fifo, 0600), ==, 0);
  h->fifo_fd = open(h->fifo, O_RDWR | O_CLOEXEC);
  g_assert_cmpint(h->fifo_fd, >=, 0);
}

static void host_clear(Host *h)
{
  if (h->fifo_fd >= 0)
    close(h->fifo_fd);
  h->fifo_fd = -1;
  g_clear_pointer(&h->fifo, g_free);
  g_clear_pointer(&h->echo_log, g_free);
}

static void send_stdin(Host *h, Trail *trail, guint n)
{
  for (guint i = 0; i < n; i++) {
    g_autofree char *line = g_strdup_printf("in %u\n", ++trail->stdin_sent);
    g_assert_cmpint(write(h->fifo_fd, line, strlen(line)), ==, (gssize)strlen(line));
  }
}

/* The bundle's spec names the source container to bind (or none), and with
 * `layer_dir` the directory its travelled layer images are in. */
static void rig_set_source(Rig *r, const char *source_id, const char *layer_dir)
{
  g_autofree char *config_path = g_build_filename(r->bundle, "config.json", NULL);
  json_error_t jerr;
  g_autoptr(json_t) spec = json_load_file(config_path, 0, &jerr);
  g_assert_nonnull(spec);
  if (source_id != NULL)
    json_object_set_new(spec, "annotations",
                        json_pack("{s:s}", "io.ferry.migration.source-container-id", source_id));
  else
    json_object_del(spec, "annotations");
  if (layer_dir != NULL)
    json_object_set_new(json_object_get(spec, "annotations"), "io.ferry.migration.layer-dir",
                        json_string(layer_dir));
  g_assert_cmpint(json_dump_file(spec, config_path, 0), ==, 0);
}

typedef struct Drive_ {
  FerryMigration *m;
  Host *dest;
  gboolean done;
  FerryMigrationOutcome outcome;
  GError *error;
  GArray *stages;              /* FerryMigrationStage, as reported */
  FerryMigrationProgress last; /* the latest progress */
  /* a fault, when the progress reaches fault_stage (and, with fault_min_bytes, the
   * transfer has moved that much) */
  FerryMigrationStage fault_stage;
  guint64 fault_min_bytes;
  void (*fault)(struct Drive_ *d);
  gpointer fault_ctx;
  gboolean fault_done;
  /* and an earlier hook, once, when the progress reaches pre_stage */
  FerryMigrationStage pre_stage;
  void (*pre)(struct Drive_ *d);
  gpointer pre_ctx;
  gboolean pre_done;
  const InitializeOptions *options;
  const InitializeOptions *destination_options; /* NULL: options */
  /* the bind step's verdict when set: the Create's error is expected */
  gboolean bind_may_fail;
  /* set: the destination's rootfs gets this file before the binding Create */
  const char *extra_file;
  /* set: the binding Create takes the layer images from here, not from a rootfs */
  const char *layer_dir;
  /* check the binding's refusals on the way (unbound, unknown, bound twice) */
  gboolean check_binding;
  const char *session;
  const Ferry__V1__SandboxState *state;
  GSource *bind_idle;
} Drive;

/* The bind step, from the loop (sync calls may iterate it there): the init by a
 * binding Create, each running exec'd process by a binding Exec. */
static gboolean do_bind(gpointer ud)
{
  Drive *d = ud;
  g_source_unref(g_steal_pointer(&d->bind_idle));
  Rig *r = d->dest->rig;
  const Ferry__V1__Container *c = d->state->containers[0];
  rig_set_source(r, c->id, d->layer_dir);
  if (d->extra_file != NULL) {
    g_autofree char *path = g_build_filename(r->bundle, "rootfs", d->extra_file, NULL);
    g_assert_true(g_file_set_contents(path, "not on the source\n", -1, NULL));
  }
  g_autoptr(GError) error = NULL;
  guint32 pid = create_task_try(r, &error);
  if (pid == 0) {
    /* A cancel in the bind stage may reach the destination first. */
    if (!d->bind_may_fail && !(d->fault_done && d->fault_stage == FERRY_MIGRATION_STAGE_BIND))
      g_error("binding Create: %s", error->message);
    ferry_migration_bound(d->m, error);
    return G_SOURCE_REMOVE;
  }
  g_assert_cmpuint(pid, ==, c->processes[0]->pid);
  if (d->check_binding) {
    /* Running exec'd processes not bound yet: PrepareSandbox names them. */
    PrepareSandboxRequest prep = PREPARE_SANDBOX_REQUEST__INIT;
    prep.session_id = (char *)d->session;
    call_fails(r, "Migration", "PrepareSandbox", &prep.base, &prepare_sandbox_response__descriptor,
               FERRY_ERROR_FAILED_PRECONDITION, "not bound by an Exec yet: t1/echo");
    /* An exec id the state lacks. */
    g_assert_false(exec_try(r, "nope", "[\"cat\"]", NULL, NULL, &error));
    g_assert_error(error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND);
    g_clear_error(&error);
  }
  for (size_t i = 1; i < c->n_processes; i++) {
    const Ferry__V1__Process *p = c->processes[i];
    if (p->status != FERRY__V1__PROCESS_STATUS__PROCESS_STATUS_RUNNING)
      continue;
    gboolean echo = strcmp(p->exec_id, "echo") == 0;
    g_autofree char *out = echo ? g_strconcat("file://", d->dest->echo_log, NULL) : NULL;
    exec_process(r, p->exec_id, "[\"cat\"]", echo ? d->dest->fifo : NULL, out);
    if (d->check_binding) {
      g_assert_false(exec_try(r, p->exec_id, "[\"cat\"]", NULL, NULL, &error));
      g_assert_error(error, FERRY_ERROR, FERRY_ERROR_ALREADY_EXISTS);
      g_clear_error(&error);
    }
  }
  ferry_migration_bound(d->m, NULL);
  return G_SOURCE_REMOVE;
}

static void on_bind(FerryMigration *m, const Ferry__V1__SandboxState *state, gpointer ud)
{
  Drive *d = ud;
  g_assert_cmpuint(state->n_containers, ==, 1);
  d->state = state;
  d->bind_idle = g_idle_source_new();
  g_source_set_callback(d->bind_idle, do_bind, d, NULL);
  g_source_attach(d->bind_idle, NULL);
}

static void on_progress(FerryMigration *m, const FerryMigrationProgress *p, gpointer ud)
{
  Drive *d = ud;
  d->last = *p;
  if (d->stages->len == 0 ||
      g_array_index(d->stages, FerryMigrationStage, d->stages->len - 1) != p->stage)
    g_array_append_val(d->stages, p->stage);
  if (d->pre != NULL && !d->pre_done && p->stage == d->pre_stage) {
    d->pre_done = TRUE;
    d->pre(d);
  }
  if (d->fault != NULL && !d->fault_done && p->stage == d->fault_stage &&
      p->bytes_transferred >= d->fault_min_bytes) {
    d->fault_done = TRUE;
    d->fault(d);
  }
}

static void on_done(FerryMigration *m, FerryMigrationOutcome outcome, const GError *error,
                    gpointer ud)
{
  Drive *d = ud;
  d->done = TRUE;
  d->outcome = outcome;
  if (error != NULL)
    d->error = g_error_copy(error);
}

/* One migration through lib/migration, from src to dest->rig, to its end. */
static FerryMigrationOutcome migrate(Rig *src, Host *dest, const char *session, Drive *d)
{
  d->dest = dest;
  d->session = session;
  d->stages = g_array_new(FALSE, FALSE, sizeof(FerryMigrationStage));
  FerryMigrationConfig config = { .session_id = session,
                                  .socket_dir = dest->rig->dir,
                                  .init_options = d->options,
                                  .destination_init_options = d->destination_options };
  static const FerryMigrationHandlers handlers = { on_bind, on_progress, on_done };
  g_autoptr(GError) error = NULL;
  d->m = ferry_migration_start(src->c, dest->rig->c, &config, &handlers, d, &error);
  g_assert_no_error(error);
  gint64 started = g_get_monotonic_time();
  gint64 until = started + 240 * G_USEC_PER_SEC;
  while (!d->done) {
    if (g_get_monotonic_time() > until)
      g_error("migration %s did not end (stage %s)", session,
              ferry_migration_stage_name(ferry_migration_get_stage(d->m)));
    g_main_context_iteration(NULL, TRUE);
  }
  FerryMigrationReport report = { .outcome = d->outcome,
                                  .error = d->error != NULL ? d->error->message : NULL,
                                  .total_us = g_get_monotonic_time() - started,
                                  .last = d->last };
  g_autofree char *text = ferry_migration_report_text(&report);
  g_test_message("%s: %s", session, text);
  g_clear_pointer(&d->m, ferry_migration_free);
  return d->outcome;
}

static void drive_clear(Drive *d)
{
  g_clear_error(&d->error);
  g_clear_pointer(&d->stages, g_array_unref);
  if (d->bind_idle != NULL) {
    g_source_destroy(d->bind_idle);
    g_clear_pointer(&d->bind_idle, g_source_unref);
  }
  *d = (Drive){ 0 };
}

static Containerd__Task__V2__WaitResponse *wait_exec(Rig *r, const char *exec_id)
{
  Containerd__Task__V2__WaitRequest wait = CONTAINERD__TASK__V2__WAIT_REQUEST__INIT;
  wait.id = "t1";
  wait.exec_id = (char *)exec_id;
  g_autoptr(GError) error = NULL;
  ProtobufCMessage *resp = call(r, "containerd.task.v2.Task", "Wait", &wait.base,
                                &containerd__task__v2__wait_response__descriptor, &error);
  g_assert_no_error(error);
  return (Containerd__Task__V2__WaitResponse *)resp;
}

/* On a new rig: the init printing numbered lines, and "echo", a cat echoing its stdin;
 * both seen working. */
static void workload_start(Host *h, Trail *trail)
{
  Rig *r = h->rig;
  rig_prepare(r, NULL);
  host_files(h, 0, trail);
  (void)create_task(r);
  Containerd__Task__V2__StartRequest start = CONTAINERD__TASK__V2__START_REQUEST__INIT;
  start.id = "t1";
  g_autoptr(GError) error = NULL;
  Containerd__Task__V2__StartResponse *started = (Containerd__Task__V2__StartResponse *)call(
      r, "containerd.task.v2.Task", "Start", &start.base,
      &containerd__task__v2__start_response__descriptor, &error);
  g_assert_no_error(error);
  trail->pid = started->pid;
  g_assert_cmpuint(trail->pid, >, 0);
  protobuf_c_message_free_unpacked(&started->base, NULL);
  g_autofree char *echo_out = g_strconcat("file://", h->echo_log, NULL);
  exec_process(r, "echo", "[\"cat\"]", h->fifo, echo_out);
  start_exec(r, "echo");
  send_stdin(h, trail, 3);
  wait_joined(trail->echo_logs, "in", 3);
  wait_joined(trail->init_logs, "line", 5);
}

/* The workload answers on h: new lines in its log, stdin echoed. */
static void workload_goes_on(Host *h, Trail *trail)
{
  send_stdin(h, trail, 2);
  wait_joined(trail->echo_logs, "in", trail->stdin_sent);
  g_autofree char *lines = joined(trail->init_logs);
  wait_joined(trail->init_logs, "line", check_sequence(lines, "line") + 3);
}

/* What a node agent does before a binding Create on another host (docs/migration.md):
 * the source's layer images in `store`, each named by its digest. `corrupt`: one byte
 * of each changed after the name was taken. */
static void fill_store(Rig *src, const char *store, gboolean corrupt)
{
  g_assert_cmpint(g_mkdir_with_parents(store, 0700), ==, 0);
  g_autofree char *cache = g_build_filename(src->run_dir, "images", NULL);
  g_autoptr(GDir) d = g_dir_open(cache, 0, NULL);
  g_assert_nonnull(d);
  const char *name;
  guint n = 0;
  while ((name = g_dir_read_name(d)) != NULL) {
    if (!g_str_has_suffix(name, ".erofs"))
      continue;
    g_autofree char *path = g_build_filename(cache, name, NULL);
    g_autofree char *data = NULL;
    gsize len = 0;
    g_assert_true(g_file_get_contents(path, &data, &len, NULL));
    g_autofree char *hex = g_compute_checksum_for_data(G_CHECKSUM_SHA256, (guchar *)data, len);
    g_autofree char *file = g_strconcat(hex, ".erofs", NULL);
    g_autofree char *copy = g_build_filename(store, file, NULL);
    if (corrupt)
      data[len / 2] ^= 0x5a;
    g_assert_true(g_file_set_contents(copy, data, (gssize)len, NULL));
    n++;
  }
  g_assert_cmpuint(n, >, 0);
}

/* A hop's hook: the "quit" process reads its line and exits. */
static void release_quit(Drive *d)
{
  int fd = *(int *)(d->pre_ctx != NULL ? d->pre_ctx : d->fault_ctx);
  g_assert_cmpint(write(fd, "go\n", 3), ==, 3);
}

/* "quit" on `r`: a process that exits with 9 once a line comes on `fifo` (held open
 * here, writing: the fd returned). */
static int start_quit(Rig *r, const char *fifo)
{
  g_assert_cmpint(mkfifo(fifo, 0600), ==, 0);
  int fd = open(fifo, O_RDWR | O_CLOEXEC);
  g_assert_cmpint(fd, >=, 0);
  exec_process(r, "quit", "[\"sh\",\"-c\",\"read x; exit 9\"]", fifo, NULL);
  start_exec(r, "quit");
  return fd;
}

/* The TaskExit of `what` on these rigs, waited for, then counted over a second more. */
static guint exits_published(Rig *r1, Rig *r2, const char *what)
{
  gint64 until = g_get_monotonic_time() + 30 * G_USEC_PER_SEC;
  while (published_count(r1, what) + (r2 != NULL ? published_count(r2, what) : 0) == 0 &&
         g_get_monotonic_time() < until)
    g_main_context_iteration(NULL, TRUE);
  until = g_get_monotonic_time() + G_USEC_PER_SEC;
  while (g_get_monotonic_time() < until)
    g_main_context_iteration(NULL, FALSE);
  guint n1 = published_count(r1, what), n2 = r2 != NULL ? published_count(r2, what) : 0;
  g_test_message("TaskExit %s: %u and %u", what, n1, n2);
  return n1 + n2;
}

/*
 * The acceptance run: a container printing numbered lines every 20 ms, an exec'd cat
 * echoing its stdin, and an exec'd process that exits with 7 while the sandbox moves,
 * migrated A -> B -> A -> B between two shim daemons with their own run directories,
 * through lib/migration. Every host's logs in hop order are the sequence once; every
 * stdin line arrives once; the exit status comes on the last host.
 */
static void test_hops(void)
{
  if (skip_without_qemu())
    return;
  Trail trail = { g_ptr_array_new_with_free_func(g_free), g_ptr_array_new_with_free_func(g_free),
                  0 };
  Rig a, b;
  Host ha = { .rig = &a, .fifo_fd = -1 }, hb = { .rig = &b, .fifo_fd = -1 };
  workload_start(&ha, &trail);
  /* It exits during the moves: on the source, in a blackout or on a destination. */
  exec_process(&a, "short", "[\"sh\",\"-c\",\"sleep 4; exit 7\"]", NULL, NULL);
  start_exec(&a, "short");
  /* It exits on the source while the first migration runs (told to on its stdin once
   * the export is out): its exit must be told once, by the destination. */
  g_autofree char *quit_fifo = g_build_filename(a.dir, "quit", NULL);
  int quit_fd = start_quit(&a, quit_fifo);

  rig_prepare(&b, NULL);
  assert_ps(&a, trail.pid);
  assert_ps(&b, 0);
  g_autofree char *certs = g_build_filename(a.dir, "certs", NULL);
  const char *hosts[] = { "localhost", NULL };
  g_autoptr(GError) cert_error = NULL;
  g_assert_true(ferry_tls_make_certs(certs, hosts, 2, &cert_error));
  g_autofree char *tls_dir = g_build_filename(certs, "localhost", NULL);
  Rig *from = &a;
  Host *to = &hb, *at = &ha;
  for (guint hop = 1; hop <= 3; hop++) {
    host_files(to, hop, &trail);
    g_autofree char *session = g_strdup_printf("hop%u", hop);
    Drive d = { .check_binding = hop == 1 };
    /* The second hop's memory stream under QEMU's TLS (both shims on this host share
     * one host directory of the test's CA). */
    InitializeOptions tls = INITIALIZE_OPTIONS__INIT;
    tls.ferry_tls_dir = tls_dir;
    tls.ferry_tls_hostname = "localhost";
    if (hop == 2)
      d.options = &tls;
    /* The last hop's images travel: B binds from them, its rootfs gone. */
    g_autofree char *store = g_build_filename(to->rig->dir, "store", NULL);
    if (hop == 3) {
      fill_store(from, store, FALSE);
      g_autofree char *rootfs = g_build_filename(to->rig->bundle, "rootfs", NULL);
      g_autofree char *away = g_build_filename(to->rig->bundle, "rootfs.away", NULL);
      g_assert_cmpint(rename(rootfs, away), ==, 0);
      d.layer_dir = store;
    }
    if (hop == 1) {
      d.pre = release_quit;
      d.pre_ctx = &quit_fd;
      d.pre_stage = FERRY_MIGRATION_STAGE_IMPORT;
    }
    FerryMigrationOutcome outcome = migrate(from, to, session, &d);
    if (outcome != FERRY_MIGRATION_OUTCOME_MIGRATED)
      g_error("%s: %s: %s", session, ferry_migration_outcome_name(outcome),
              d.error != NULL ? d.error->message : "");
    g_assert_no_error(d.error); /* both sides cleaned up */
    /* The figures came: QEMU's bytes and passes through Status, the blackout through the
     * destination's notification. */
    g_assert_cmpuint(d.last.bytes_transferred, >, 0);
    g_assert_cmpuint(d.last.passes, >, 0);
    g_assert_cmpuint(d.last.blackout_ms, >, 0);
    /* Every stage in its order, none twice. */
    static const FerryMigrationStage order[] = {
      FERRY_MIGRATION_STAGE_EXPORT,  FERRY_MIGRATION_STAGE_IMPORT, FERRY_MIGRATION_STAGE_BIND,
      FERRY_MIGRATION_STAGE_PREPARE, FERRY_MIGRATION_STAGE_SOCKET, FERRY_MIGRATION_STAGE_TRANSFER,
      FERRY_MIGRATION_STAGE_STOP,    FERRY_MIGRATION_STAGE_RESUME, FERRY_MIGRATION_STAGE_CLEANUP,
      FERRY_MIGRATION_STAGE_DONE,
    };
    g_assert_cmpuint(d.stages->len, ==, G_N_ELEMENTS(order));
    for (guint i = 0; i < G_N_ELEMENTS(order); i++)
      g_assert_cmpint(g_array_index(d.stages, FerryMigrationStage, i), ==, order[i]);
    drive_clear(&d);
    /* The source is empty now: its task moved without an exit. */
    Containerd__Task__V2__StateRequest sr = CONTAINERD__TASK__V2__STATE_REQUEST__INIT;
    sr.id = "t1";
    call_fails(from, "containerd.task.v2.Task", "State", &sr.base,
               &containerd__task__v2__state_response__descriptor, FERRY_ERROR_NOT_FOUND, "t1");
    /* `ferry ps` on each host: running on the destination with its pid, not here. */
    assert_ps(to->rig, trail.pid);
    assert_ps(from, 0);
    /* The workload goes on on the destination, stdin too. */
    host_clear(at);
    send_stdin(to, &trail, 3);
    wait_joined(trail.echo_logs, "in", trail.stdin_sent);
    g_autofree char *lines = joined(trail.init_logs);
    wait_joined(trail.init_logs, "line", check_sequence(lines, "line") + 5);
    Rig *next_from = to->rig;
    Host *next_to = at;
    at = to;
    to = next_to;
    from = next_from;
  }
  g_assert_true(from == &b);
  /* The short process's exit status, on the last host. */
  Containerd__Task__V2__WaitResponse *w = wait_exec(&b, "short");
  g_assert_cmpuint(w->exit_status, ==, 7);
  protobuf_c_message_free_unpacked(&w->base, NULL);
  /* Its TaskExit, published once over both hosts: a source holds its events during a
   * session and drops them when the sandbox moved (the destination reports). */
  g_assert_cmpuint(exits_published(&a, &b, "exit short 7"), ==, 1);
  w = wait_exec(&b, "quit");
  g_assert_cmpuint(w->exit_status, ==, 9);
  protobuf_c_message_free_unpacked(&w->base, NULL);
  g_assert_cmpuint(exits_published(&a, &b, "exit quit 9"), ==, 1);
  close(quit_fd);
  g_autofree char *lines = joined(trail.init_logs);
  g_autofree char *echoes = joined(trail.echo_logs);
  g_test_message("%u lines over %u logs, %u stdin lines echoed once", check_sequence(lines, "line"),
                 trail.init_logs->len, check_sequence(echoes, "in"));
  g_assert_cmpuint(check_sequence(echoes, "in"), ==, trail.stdin_sent);

  host_clear(at);
  host_clear(to);
  rig_end_daemon(&a);
  rig_stop(&b);
  g_ptr_array_unref(trail.init_logs);
  g_ptr_array_unref(trail.echo_logs);
}

/* ----------------------------------------------------------------- faults -- */

typedef enum {
  FAULT_CANCEL,
  FAULT_CANCEL_TOO_LATE, /* a cancel once the destination was told to RESUME */
  FAULT_KILL_QEMU,       /* the destination's QEMU, by the pid its shim recorded */
  FAULT_KILL_SHIM,       /* the destination's shim daemon */
  FAULT_OTHER_IMAGE,     /* the destination runs another guest image */
  FAULT_OTHER_ROOT,      /* the destination's copy of the rootfs differs */
  FAULT_OTHER_CA,        /* the memory stream's TLS: the destination from another CA */
  FAULT_BAD_LAYER,       /* a travelled layer image does not match its digest */
} FaultKind;

typedef struct {
  const char *name;
  FaultKind kind;
  FerryMigrationStage stage;
  gboolean mid_transfer; /* act once bytes moved, the transfer slowed down */
  const char *error;     /* in the outcome's error */
} Fault;

static void do_fault(Drive *d)
{
  const Fault *f = d->fault_ctx;
  switch (f->kind) {
  case FAULT_CANCEL:
    g_assert_true(ferry_migration_cancel(d->m));
    g_assert_true(ferry_migration_cancel(d->m)); /* twice is once */
    break;
  case FAULT_CANCEL_TOO_LATE:
    g_assert_false(ferry_migration_cancel(d->m));
    break;
  case FAULT_KILL_QEMU: {
    g_autofree char *pid_path = g_build_filename(d->dest->rig->bundle, "qemu.pid", NULL);
    g_autofree char *text = NULL;
    g_assert_true(g_file_get_contents(pid_path, &text, NULL, NULL));
    pid_t pid = (pid_t)g_ascii_strtoll(text, NULL, 10);
    g_autofree char *cmdline_path = g_strdup_printf("/proc/%d/cmdline", (int)pid);
    g_autofree char *cmdline = NULL;
    g_assert_true(g_file_get_contents(cmdline_path, &cmdline, NULL, NULL));
    g_assert_nonnull(strstr(cmdline, "qemu-system"));
    g_assert_cmpint(kill(pid, SIGKILL), ==, 0);
    break;
  }
  case FAULT_KILL_SHIM:
    g_assert_cmpint(kill(d->dest->rig->daemon, SIGKILL), ==, 0);
    break;
  default:
    g_assert_not_reached();
  }
}

/* The guest image with 512 zero bytes more: the kernel reads the same archive, its
 * digest differs. */
static char *other_initrd(const char *dir)
{
  g_autofree char *orig = g_build_filename(image_dir, "initramfs.cpio", NULL);
  g_autofree char *data = NULL;
  gsize len = 0;
  g_assert_true(g_file_get_contents(orig, &data, &len, NULL));
  char *path = g_build_filename(dir, "other-initramfs.cpio", NULL);
  g_autofree char *more = g_malloc0(len + 512);
  memcpy(more, data, len);
  g_assert_true(g_file_set_contents(path, more, (gssize)(len + 512), NULL));
  return path;
}

/*
 * Every fault of the acceptance list against a running workload: each attempt ends
 * RECOVERED with the workload answering on the source, nothing on the destination and
 * nothing written there; then a last migration, which a cancel during RESUME does not
 * stop, moves it with every line and stdin byte once.
 */
static void test_faults(void)
{
  if (skip_without_qemu())
    return;
  static const Fault faults[] = {
    { "cancel in export", FAULT_CANCEL, FERRY_MIGRATION_STAGE_EXPORT, FALSE, "cancelled" },
    { "cancel in import", FAULT_CANCEL, FERRY_MIGRATION_STAGE_IMPORT, FALSE, "cancelled" },
    { "cancel in bind", FAULT_CANCEL, FERRY_MIGRATION_STAGE_BIND, FALSE, "cancelled" },
    { "cancel in prepare", FAULT_CANCEL, FERRY_MIGRATION_STAGE_PREPARE, FALSE, "cancelled" },
    /* "quit" exits on the source after the export, then the cancel: the source tells
     * its exit once, after it took the guest back. */
    { "cancel in socket", FAULT_CANCEL, FERRY_MIGRATION_STAGE_SOCKET, FALSE, "cancelled" },
    { "cancel in transfer", FAULT_CANCEL, FERRY_MIGRATION_STAGE_TRANSFER, TRUE, "cancelled" },
    { "cancel in stop", FAULT_CANCEL, FERRY_MIGRATION_STAGE_STOP, FALSE, "cancelled" },
    { "destination QEMU killed in the transfer", FAULT_KILL_QEMU, FERRY_MIGRATION_STAGE_TRANSFER,
      TRUE, "transfer" },
    { "rootfs digest mismatch", FAULT_OTHER_ROOT, FERRY_MIGRATION_STAGE_BIND, FALSE,
      "layer 0 differs" },
    { "compatibility mismatch", FAULT_OTHER_IMAGE, FERRY_MIGRATION_STAGE_IMPORT, FALSE,
      "guest image digest" },
    { "memory stream from another CA", FAULT_OTHER_CA, FERRY_MIGRATION_STAGE_TRANSFER, FALSE,
      "transfer" },
    { "travelled layer image corrupt", FAULT_BAD_LAYER, FERRY_MIGRATION_STAGE_BIND, FALSE,
      "not sha256:" },
    { "destination shim killed before RESUME", FAULT_KILL_SHIM, FERRY_MIGRATION_STAGE_STOP, FALSE,
      "RESUME" },
  };
  Trail trail = { g_ptr_array_new_with_free_func(g_free), g_ptr_array_new_with_free_func(g_free),
                  0 };
  Rig a, b, other;
  Host ha = { .rig = &a, .fifo_fd = -1 }, hb = { .rig = &b, .fifo_fd = -1 };
  workload_start(&ha, &trail);
  rig_prepare(&b, NULL);
  g_autofree char *quit_fifo = g_build_filename(a.dir, "quit", NULL);
  int quit_fd = -1;
  /* Two CAs: the source's memory stream from one, the destination's from the other. */
  g_autofree char *ca1 = g_build_filename(a.dir, "ca1", NULL);
  g_autofree char *ca2 = g_build_filename(a.dir, "ca2", NULL);
  const char *tls_hosts[] = { "localhost", NULL };
  g_autoptr(GError) cert_error = NULL;
  g_assert_true(ferry_tls_make_certs(ca1, tls_hosts, 2, &cert_error));
  g_assert_true(ferry_tls_make_certs(ca2, tls_hosts, 2, &cert_error));
  g_autofree char *tls_dir1 = g_build_filename(ca1, "localhost", NULL);
  g_autofree char *tls_dir2 = g_build_filename(ca2, "localhost", NULL);
  InitializeOptions tls_source = INITIALIZE_OPTIONS__INIT;
  tls_source.ferry_tls_dir = tls_dir1;
  tls_source.ferry_tls_hostname = "localhost";
  InitializeOptions tls_stranger = INITIALIZE_OPTIONS__INIT;
  tls_stranger.ferry_tls_dir = tls_dir2;
  /* The transfer, slowed so that a fault lands in it: 16 MiB/s. */
  InitializeOptions slow = INITIALIZE_OPTIONS__INIT;
  slow.ferry_max_bandwidth = 16 << 20;

  for (guint i = 0; i < G_N_ELEMENTS(faults); i++) {
    const Fault *f = &faults[i];
    Host *dest = &hb;
    Host ho = { .rig = &other, .fifo_fd = -1 };
    g_autofree char *initrd = NULL;
    if (f->kind == FAULT_OTHER_IMAGE) {
      initrd = other_initrd(b.dir);
      rig_initrd = initrd;
      rig_prepare(&other, NULL);
      rig_initrd = NULL;
      dest = &ho;
    }
    host_files(dest, i + 1, &trail);
    g_autofree char *session = g_strdup_printf("fault%u", i + 1);
    Drive d = { 0 };
    if (f->kind != FAULT_OTHER_IMAGE && f->kind != FAULT_OTHER_ROOT && f->kind != FAULT_OTHER_CA &&
        f->kind != FAULT_BAD_LAYER) {
      d.fault = do_fault;
      d.fault_ctx = (gpointer)f;
      d.fault_stage = f->stage;
      d.fault_min_bytes = f->mid_transfer ? 1 : 0;
    }
    d.options = f->mid_transfer ? &slow : NULL;
    if (f->kind == FAULT_OTHER_CA) {
      d.options = &tls_source;
      d.destination_options = &tls_stranger;
    }
    if (f->stage == FERRY_MIGRATION_STAGE_SOCKET) {
      quit_fd = start_quit(&a, quit_fifo);
      d.pre = release_quit;
      d.pre_ctx = &quit_fd;
      d.pre_stage = FERRY_MIGRATION_STAGE_IMPORT;
    }
    d.bind_may_fail = f->kind == FAULT_OTHER_ROOT || f->kind == FAULT_BAD_LAYER;
    g_autofree char *store = g_build_filename(b.dir, "bad-store", NULL);
    if (f->kind == FAULT_BAD_LAYER) {
      fill_store(&a, store, TRUE);
      d.layer_dir = store;
    }
    d.extra_file = f->kind == FAULT_OTHER_ROOT ? "extra" : NULL;
    FerryMigrationOutcome outcome = migrate(&a, dest, session, &d);
    if (outcome != FERRY_MIGRATION_OUTCOME_RECOVERED || d.error == NULL ||
        strstr(d.error->message, f->error) == NULL)
      g_error("%s: %s: %s (want recovered, \"%s\")", f->name, ferry_migration_outcome_name(outcome),
              d.error != NULL ? d.error->message : "", f->error);
    g_assert_true(d.fault == NULL || d.fault_done);
    g_test_message("(that was: %s)", f->name);
    drive_clear(&d);

    /* Nothing on the destination, nothing written there. */
    g_autofree char *dest_out = read_file(dest->rig->log);
    g_autofree char *dest_echo = read_file(dest->echo_log);
    g_assert_cmpstr(dest_out, ==, "");
    g_assert_cmpstr(dest_echo, ==, "");
    if (f->kind != FAULT_KILL_SHIM) {
      Containerd__Task__V2__StateRequest sr = CONTAINERD__TASK__V2__STATE_REQUEST__INIT;
      sr.id = "t1";
      call_fails(dest->rig, "containerd.task.v2.Task", "State", &sr.base,
                 &containerd__task__v2__state_response__descriptor, FERRY_ERROR_NOT_FOUND, "t1");
    }
    assert_ps(dest->rig, 0);
    assert_ps(&a, trail.pid);
    host_clear(dest);
    /* The workload runs on the source as if nothing happened. */
    workload_goes_on(&ha, &trail);
    if (quit_fd >= 0) {
      Containerd__Task__V2__WaitResponse *qw = wait_exec(&a, "quit");
      g_assert_cmpuint(qw->exit_status, ==, 9);
      protobuf_c_message_free_unpacked(&qw->base, NULL);
      g_assert_cmpuint(exits_published(&a, NULL, "exit quit 9"), ==, 1);
      Containerd__Task__V2__DeleteRequest qdel = CONTAINERD__TASK__V2__DELETE_REQUEST__INIT;
      qdel.id = "t1";
      qdel.exec_id = "quit";
      call_ok(&a, "containerd.task.v2.Task", "Delete", &qdel.base,
              &containerd__task__v2__delete_response__descriptor);
      close(quit_fd);
      quit_fd = -1;
    }

    if (f->kind == FAULT_OTHER_IMAGE)
      rig_end_daemon(&other);
    if (f->kind == FAULT_OTHER_ROOT) {
      g_autofree char *extra = g_build_filename(b.bundle, "rootfs", "extra", NULL);
      g_assert_cmpint(unlink(extra), ==, 0);
    }
    if (f->kind == FAULT_KILL_SHIM) {
      /* Its QEMU went with it (PR_SET_PDEATHSIG); then a new destination. */
      g_autofree char *pid_path = g_build_filename(b.bundle, "qemu.pid", NULL);
      g_autofree char *text = NULL;
      g_assert_true(g_file_get_contents(pid_path, &text, NULL, NULL));
      pid_t qemu = (pid_t)g_ascii_strtoll(text, NULL, 10);
      rig_end(&b, 0);
      gint64 until = g_get_monotonic_time() + 30 * G_USEC_PER_SEC;
      while (kill(qemu, 0) == 0 && g_get_monotonic_time() < until)
        g_usleep(20000);
      g_assert_cmpint(kill(qemu, 0), <, 0);
      rig_prepare(&b, NULL);
    }
  }

  /* The Task API works again on the source: an exec'd process runs and exits. */
  exec_process(&a, "probe", "[\"sh\",\"-c\",\"exit 3\"]", NULL, NULL);
  start_exec(&a, "probe");
  Containerd__Task__V2__WaitResponse *w = wait_exec(&a, "probe");
  g_assert_cmpuint(w->exit_status, ==, 3);
  protobuf_c_message_free_unpacked(&w->base, NULL);
  Containerd__Task__V2__DeleteRequest del = CONTAINERD__TASK__V2__DELETE_REQUEST__INIT;
  del.id = "t1";
  del.exec_id = "probe";
  call_ok(&a, "containerd.task.v2.Task", "Delete", &del.base,
          &containerd__task__v2__delete_response__descriptor);

  /* And it still moves, whole: a cancel once RESUME went out changes nothing. */
  static const Fault late = { "cancel in resume", FAULT_CANCEL_TOO_LATE,
                              FERRY_MIGRATION_STAGE_RESUME, FALSE, "" };
  host_files(&hb, G_N_ELEMENTS(faults) + 1, &trail);
  Drive d = { .fault = do_fault, .fault_ctx = (gpointer)&late, .fault_stage = late.stage };
  FerryMigrationOutcome outcome = migrate(&a, &hb, "last", &d);
  if (outcome != FERRY_MIGRATION_OUTCOME_MIGRATED)
    g_error("last: %s: %s", ferry_migration_outcome_name(outcome),
            d.error != NULL ? d.error->message : "");
  g_assert_true(d.fault_done);
  g_assert_no_error(d.error);
  drive_clear(&d);
  host_clear(&ha);
  workload_goes_on(&hb, &trail);
  g_autofree char *lines = joined(trail.init_logs);
  g_autofree char *echoes = joined(trail.echo_logs);
  g_assert_cmpuint(check_sequence(echoes, "in"), ==, trail.stdin_sent);
  g_test_message("%u lines, %u stdin lines echoed once, over %u attempts",
                 check_sequence(lines, "line"), trail.stdin_sent, (guint)G_N_ELEMENTS(faults) + 1);

  host_clear(&hb);
  rig_end_daemon(&a);
  rig_stop(&b);
  g_ptr_array_unref(trail.init_logs);
  g_ptr_array_unref(trail.echo_logs);
}

int main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  signal(SIGPIPE, SIG_IGN);
  struct sigaction fatal = { .sa_handler = on_fatal_signal, .sa_flags = SA_RESETHAND };
  sigaction(SIGABRT, &fatal, NULL);
  sigaction(SIGTERM, &fatal, NULL);
  sigaction(SIGTRAP, &fatal, NULL);
  const char *build = g_getenv("FERRY_BUILD_ROOT");
  shim_path =
      g_build_filename(build != NULL ? build : ".", "shim", "containerd-shim-ferry-v1", NULL);
  cli_path = g_build_filename(build != NULL ? build : ".", "cli", "ferry", NULL);
  const char *image = g_getenv("FERRY_IMAGE_DIR");
  image_dir = image != NULL ? g_strdup(image)
                            : g_build_filename(build != NULL ? build : ".", "image", NULL);
  if (!g_file_test(shim_path, G_FILE_TEST_IS_EXECUTABLE)) {
    g_print("1..0 # SKIP the shim is not built at %s (FERRY_BUILD_ROOT)\n", shim_path);
    return 0;
  }
  g_test_add_func("/shim-migration/source-session", test_source_session);
  g_test_add_func("/shim-migration/two-shims", test_two_shims);
  g_test_add_func("/shim-migration/hops", test_hops);
  g_test_add_func("/shim-migration/faults", test_faults);
  return g_test_run();
}
