/*
 * The shim's Migration service, source side, against a real shim daemon and guest (no
 * containerd: the test drives the Task API itself, as test-shim-contract does): calls
 * out of order and for unknown sessions get typed errors; PrepareAndExportSandbox
 * exports a ferry.v1.SandboxState that names the running task, its process and its
 * migration state; the Task API refuses changes during the session; a Notifications
 * subscriber hears the recovery when Cancel takes the guest back; Status tells the
 * state; after Cleanup the Task API works again and the workload never stopped. A
 * PrepareAndExportSandbox encoded by hand from hcsshim's field numbers is accepted.
 *
 * Needs qemu-system-x86_64 and the guest image; skips otherwise.
 */
#include <gio/gio.h>
#include <glib-unix.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "containerd/task/v2/shim.pb-c.h"
#include "ferry/error.h"
#include "ferry/fd.h"
#include "ferry/json.h"
#include "ferry/migration/v1/status.pb-c.h"
#include "ferry/sandbox-state.h"
#include "ferry/ttrpc.h"
#include "google/protobuf/empty.pb-c.h"
#include "hcsshim/migration.pb-c.h"
#include "test-util.h"

#define CALL_TIMEOUT_NS (120 * G_GINT64_CONSTANT(1000000000))

static char *shim_path, *image_dir;
/* The daemon of the test running, for a failing test to end (it ends its QEMU). */
static volatile pid_t running_daemon;

static void on_fatal_signal(int signum)
{
  if (running_daemon > 0)
    kill(running_daemon, SIGTERM);
  raise(signum); /* SA_RESETHAND: the default action next */
}

typedef struct {
  char *dir;
  char *run_dir;
  char *config;
  char *bundle;
  char *log;
  FerryTtrpcClient *c;
  pid_t daemon;
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

static void rig_prepare(Rig *r, const char *source_id)
{
  *r = (Rig){ 0 };
  r->dir = test_make_tmpdir();
  r->run_dir = g_build_filename(r->dir, "run", NULL);
  r->config = g_build_filename(r->dir, "shim.json", NULL);
  g_autofree char *kernel = g_build_filename(image_dir, "vmlinux", NULL);
  g_autofree char *initrd = g_build_filename(image_dir, "initramfs.cpio", NULL);
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
                                "i=0; while :; do i=$((i+1)); echo \"line $i\"; sleep 0.05; done"));
  if (source_id != NULL)
    json_object_set_new(spec, "annotations",
                        json_pack("{s:s}", "io.ferry.migration.source-container-id", source_id));
  g_autofree char *config_path = g_build_filename(r->bundle, "config.json", NULL);
  g_assert_cmpint(json_dump_file(spec, config_path, 0), ==, 0);
  r->log = g_build_filename(r->dir, "out.log", NULL);

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
  running_daemon = r->daemon;
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
  running_daemon = 0;
  test_rm_rf(r->dir);
  g_free(r->dir);
  g_free(r->run_dir);
  g_free(r->config);
  g_free(r->bundle);
  g_free(r->log);
}

/* A source whose sandbox moved away: the daemon is ended by signal. */
static void rig_end_daemon(Rig *r)
{
  ferry_ttrpc_client_free(r->c);
  g_assert_cmpint(kill(r->daemon, SIGTERM), ==, 0);
  gint64 until = g_get_monotonic_time() + 30 * G_USEC_PER_SEC;
  while (kill(r->daemon, 0) == 0 && g_get_monotonic_time() < until)
    g_usleep(20000);
  g_assert_cmpint(kill(r->daemon, 0), <, 0);
  test_rm_rf(r->dir);
  g_free(r->dir);
  g_free(r->run_dir);
  g_free(r->config);
  g_free(r->bundle);
  g_free(r->log);
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

/* -------------------------------------------------------------------- test -- */

static void test_source_session(void)
{
  g_autofree char *qemu = g_find_program_in_path("qemu-system-x86_64");
  g_autofree char *kernel = g_build_filename(image_dir, "vmlinux", NULL);
  if (qemu == NULL || !g_file_test(kernel, G_FILE_TEST_EXISTS)) {
    g_test_skip(qemu == NULL ? "qemu-system-x86_64 is not installed"
                             : "no guest image (make image)");
    return;
  }
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

  /* hcsshim's bytes, encoded here field by field (1: session_id "w1", 2: an empty
   * init_options), carried as the unknown fields of an empty message: protobuf-c
   * writes each one's tag, then its bytes as given (length prefix included). */
  static const guint8 session_field[] = { 2, 'w', '1' };
  static const guint8 options_field[] = { 0 };
  ProtobufCMessageUnknownField fields[2] = {
    { .tag = 1,
      .wire_type = PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED,
      .len = 3,
      .data = (uint8_t *)session_field },
    { .tag = 2,
      .wire_type = PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED,
      .len = 1,
      .data = (uint8_t *)options_field },
  };
  Google__Protobuf__Empty raw = GOOGLE__PROTOBUF__EMPTY__INIT;
  raw.base.n_unknown_fields = 2;
  raw.base.unknown_fields = fields;
  exported = (PrepareAndExportSandboxResponse *)call(
      r, "Migration", "PrepareAndExportSandbox", &raw.base,
      &prepare_and_export_sandbox_response__descriptor, &error);
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
  g_autofree char *qemu = g_find_program_in_path("qemu-system-x86_64");
  g_autofree char *kernel = g_build_filename(image_dir, "vmlinux", NULL);
  if (qemu == NULL || !g_file_test(kernel, G_FILE_TEST_EXISTS)) {
    g_test_skip(qemu == NULL ? "qemu-system-x86_64 is not installed"
                             : "no guest image (make image)");
    return;
  }
  Rig a, b;
  rig_start(&a);
  pid_t a_daemon = a.daemon;
  rig_prepare(&b, "t1");
  pid_t b_daemon = b.daemon;
  running_daemon = a_daemon;

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
  ImportSandboxRequest imp = IMPORT_SANDBOX_REQUEST__INIT;
  imp.session_id = "m1";
  imp.sandbox_id = "t1";
  imp.config = exported->config;
  call_ok(&b, "Migration", "ImportSandbox", &imp.base, &import_sandbox_response__descriptor);
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

  FinalizeSandboxRequest fin = FINALIZE_SANDBOX_REQUEST__INIT;
  fin.session_id = "m1";
  fin.action = FINALIZE_ACTION__FINALIZE_ACTION_STOP;
  FinalizeSandboxResponse *stopped =
      (FinalizeSandboxResponse *)call(&a, "Migration", "FinalizeSandbox", &fin.base,
                                      &finalize_sandbox_response__descriptor, &error);
  g_assert_no_error(error);
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
  running_daemon = b_daemon;
  rig_stop(&b); /* Kill, Wait (the exit comes back on B), Delete, Shutdown */
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
  const char *image = g_getenv("FERRY_IMAGE_DIR");
  image_dir = image != NULL ? g_strdup(image)
                            : g_build_filename(build != NULL ? build : ".", "image", NULL);
  if (!g_file_test(shim_path, G_FILE_TEST_IS_EXECUTABLE)) {
    g_print("1..0 # SKIP the shim is not built at %s (FERRY_BUILD_ROOT)\n", shim_path);
    return 0;
  }
  g_test_add_func("/shim-migration/source-session", test_source_session);
  g_test_add_func("/shim-migration/two-shims", test_two_shims);
  return g_test_run();
}
