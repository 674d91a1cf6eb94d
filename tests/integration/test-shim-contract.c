/*
 * containerd-shim-ferry-v1's start/delete contract, driven as containerd drives it (the
 * same argv, cwd = the bundle, options on stdin): start prints a unix:// address and
 * writes <bundle>/address, the daemon it leaves serves ttrpc there (Connect answers with
 * the daemon's pid), a second container of the same sandbox (annotation
 * io.kubernetes.cri.sandbox-id) gets the same address, Shutdown ends the daemon and its
 * socket, delete kills the QEMU a dead daemon recorded (and only a QEMU) and prints a
 * DeleteResponse, a malformed config.json fails start with the reason; and over ttrpc,
 * bad input gets typed errors while the daemon keeps serving.
 */
#include <errno.h>
#include <gio/gio.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "containerd/task/v2/shim.pb-c.h"
#include "ferry/error.h"
#include "ferry/json.h"
#include "ferry/ttrpc.h"
#include "test-util.h"

static char *shim_path;

typedef struct {
  char *dir;     /* FERRY_SHIM_RUN_DIR and the bundles */
  char *run_dir; /* sockets */
  char *config;  /* FERRY_SHIM_CONFIG for the shim, or NULL */
} Rig;

static void rig_init(Rig *r)
{
  *r = (Rig){ 0 };
  r->dir = test_make_tmpdir();
  r->run_dir = g_build_filename(r->dir, "run", NULL);
}

static void rig_clear(Rig *r)
{
  test_rm_rf(r->dir);
  g_free(r->config);
  g_free(r->dir);
  g_free(r->run_dir);
}

/* A bundle directory with a config.json holding `config_text`. */
static char *make_bundle(Rig *r, const char *id, const char *config_text)
{
  char *bundle = g_build_filename(r->dir, id, NULL);
  g_assert_cmpint(g_mkdir_with_parents(bundle, 0755), ==, 0);
  g_autofree char *config = g_build_filename(bundle, "config.json", NULL);
  g_assert_true(g_file_set_contents(config, config_text, -1, NULL));
  return bundle;
}

static char *spec_with_sandbox(const char *sandbox_id)
{
  g_autoptr(json_t) spec = json_pack("{s:s}", "ociVersion", "1.0.2");
  if (sandbox_id != NULL)
    json_object_set_new(spec, "annotations",
                        json_pack("{s:s}", "io.kubernetes.cri.sandbox-id", sandbox_id));
  return json_dumps(spec, 0);
}

/* Run the shim with containerd's flags; returns its exit status, stdout in *out. */
static int run_shim(Rig *r, const char *bundle, const char *id, const char *action, GBytes **out,
                    char **err)
{
  const char *argv[] = { shim_path,
                         "-namespace",
                         "default",
                         "-address",
                         "/run/test/c.sock",
                         "-publish-binary",
                         "/bin/true",
                         "-id",
                         id,
                         "-bundle",
                         bundle,
                         action,
                         NULL };
  g_autoptr(GSubprocessLauncher) l =
      g_subprocess_launcher_new(G_SUBPROCESS_FLAGS_STDIN_PIPE | G_SUBPROCESS_FLAGS_STDOUT_PIPE |
                                G_SUBPROCESS_FLAGS_STDERR_PIPE);
  g_subprocess_launcher_setenv(l, "FERRY_SHIM_RUN_DIR", r->run_dir, TRUE);
  if (r->config != NULL)
    g_subprocess_launcher_setenv(l, "FERRY_SHIM_CONFIG", r->config, TRUE);
  g_subprocess_launcher_set_cwd(l, bundle);
  g_autoptr(GError) error = NULL;
  g_autoptr(GSubprocess) p = g_subprocess_launcher_spawnv(l, argv, &error);
  g_assert_no_error(error);
  /* An empty options Any on stdin, then EOF, as containerd 1.6 sends. */
  g_autoptr(GBytes) in = g_bytes_new_static("", 0);
  g_autoptr(GBytes) err_bytes = NULL;
  g_assert_true(g_subprocess_communicate(p, in, NULL, out, &err_bytes, &error));
  g_assert_no_error(error);
  *err = g_strndup(g_bytes_get_data(err_bytes, NULL), g_bytes_get_size(err_bytes));
  return g_subprocess_get_exit_status(p);
}

static char *start_ok(Rig *r, const char *bundle, const char *id)
{
  g_autoptr(GBytes) out = NULL;
  g_autofree char *err = NULL;
  int status = run_shim(r, bundle, id, "start", &out, &err);
  if (status != 0)
    g_error("start failed (%d): %s", status, err);
  char *address = g_strndup(g_bytes_get_data(out, NULL), g_bytes_get_size(out));
  g_assert_true(g_str_has_prefix(address, "unix://"));
  g_autofree char *file = g_build_filename(bundle, "address", NULL);
  g_autofree char *recorded = NULL;
  g_assert_true(g_file_get_contents(file, &recorded, NULL, NULL));
  g_assert_cmpstr(recorded, ==, address);
  return address;
}

static Containerd__Task__V2__ConnectResponse *connect_call(FerryTtrpcClient *c, GError **error)
{
  Containerd__Task__V2__ConnectRequest req = CONTAINERD__TASK__V2__CONNECT_REQUEST__INIT;
  req.id = "t1";
  return (Containerd__Task__V2__ConnectResponse *)ferry_ttrpc_client_call_sync(
      c, "containerd.task.v2.Task", "Connect", &req.base,
      &containerd__task__v2__connect_response__descriptor, NULL, error);
}

static gboolean pid_alive(pid_t pid)
{
  return kill(pid, 0) == 0;
}

/* Wait (at most 10 s) until the daemon `pid` is gone. It is not our child: there is
 * nothing to wait on but its pid. */
static void wait_gone(pid_t pid)
{
  gint64 until = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;
  while (pid_alive(pid) && g_get_monotonic_time() < until)
    g_usleep(10000);
  g_assert_false(pid_alive(pid));
}

/* ---------------------------------------------------------------- tests -- */

static void test_start_serves_and_groups(void)
{
  Rig r;
  rig_init(&r);
  g_autofree char *spec = spec_with_sandbox("pod-1");
  g_autofree char *b1 = make_bundle(&r, "c1", spec);
  g_autofree char *b2 = make_bundle(&r, "c2", spec);
  g_autofree char *address = start_ok(&r, b1, "c1");
  g_autoptr(GError) error = NULL;
  FerryTtrpcClient *c = ferry_ttrpc_client_connect_unix(address, &error);
  g_assert_no_error(error);
  Containerd__Task__V2__ConnectResponse *resp = connect_call(c, &error);
  g_assert_no_error(error);
  pid_t daemon = (pid_t)resp->shim_pid;
  g_assert_cmpint(daemon, >, 0);
  g_assert_true(pid_alive(daemon));
  protobuf_c_message_free_unpacked(&resp->base, NULL);
  /* The v3 name is the same service. */
  Containerd__Task__V2__ConnectRequest req = CONTAINERD__TASK__V2__CONNECT_REQUEST__INIT;
  ProtobufCMessage *v3 = ferry_ttrpc_client_call_sync(
      c, "containerd.task.v3.Task", "Connect", &req.base,
      &containerd__task__v2__connect_response__descriptor, NULL, &error);
  g_assert_no_error(error);
  protobuf_c_message_free_unpacked(v3, NULL);

  /* Same sandbox: the same daemon. */
  g_autofree char *again = start_ok(&r, b2, "c2");
  g_assert_cmpstr(again, ==, address);

  /* Shutdown: the daemon exits and takes its socket with it. */
  Containerd__Task__V2__ShutdownRequest sreq = CONTAINERD__TASK__V2__SHUTDOWN_REQUEST__INIT;
  sreq.id = "c1";
  ProtobufCMessage *empty =
      ferry_ttrpc_client_call_sync(c, "containerd.task.v2.Task", "Shutdown", &sreq.base,
                                   &google__protobuf__empty__descriptor, NULL, &error);
  g_assert_no_error(error);
  protobuf_c_message_free_unpacked(empty, NULL);
  ferry_ttrpc_client_free(c);
  wait_gone(daemon);
  g_assert_false(g_file_test(address + strlen("unix://"), G_FILE_TEST_EXISTS));
  rig_clear(&r);
}

static void test_start_distinct_sandboxes(void)
{
  Rig r;
  rig_init(&r);
  g_autofree char *s1 = spec_with_sandbox(NULL);
  g_autofree char *b1 = make_bundle(&r, "a", s1);
  g_autofree char *b2 = make_bundle(&r, "b", s1);
  g_autofree char *a1 = start_ok(&r, b1, "a");
  g_autofree char *a2 = start_ok(&r, b2, "b");
  g_assert_cmpstr(a1, !=, a2); /* no annotation: one sandbox per container */
  for (int i = 0; i < 2; i++) {
    g_autoptr(GError) error = NULL;
    FerryTtrpcClient *c = ferry_ttrpc_client_connect_unix(i == 0 ? a1 : a2, &error);
    g_assert_no_error(error);
    Containerd__Task__V2__ConnectResponse *resp = connect_call(c, &error);
    g_assert_no_error(error);
    pid_t daemon = (pid_t)resp->shim_pid;
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    ferry_ttrpc_client_free(c);
    g_assert_cmpint(kill(daemon, SIGTERM), ==, 0);
    wait_gone(daemon);
  }
  rig_clear(&r);
}

static void test_start_rejects_malformed_spec(void)
{
  Rig r;
  rig_init(&r);
  g_autofree char *b = make_bundle(&r, "bad", "{ not json");
  g_autoptr(GBytes) out = NULL;
  g_autofree char *err = NULL;
  g_assert_cmpint(run_shim(&r, b, "bad", "start", &out, &err), !=, 0);
  g_assert_nonnull(strstr(err, "config.json"));
  g_assert_cmpuint(g_bytes_get_size(out), ==, 0);
  rig_clear(&r);
}

/* delete after a dead daemon: the recorded QEMU is killed, a DeleteResponse printed. A
 * recorded pid that is not a QEMU is left alone. */
static void test_delete_kills_recorded_qemu(void)
{
  Rig r;
  rig_init(&r);
  g_autofree char *spec = spec_with_sandbox(NULL);
  g_autofree char *b = make_bundle(&r, "d", spec);
  /* A stand-in QEMU: sleep under QEMU's name. */
  g_autofree char *fake = g_build_filename(r.dir, "qemu-system-x86_64", NULL);
  g_assert_cmpint(symlink("/bin/sleep", fake), ==, 0);
  const char *argv[] = { fake, "600", NULL };
  g_autoptr(GError) error = NULL;
  g_autoptr(GSubprocess) qemu = g_subprocess_newv(argv, G_SUBPROCESS_FLAGS_NONE, &error);
  g_assert_no_error(error);
  const char *pid_text = g_subprocess_get_identifier(qemu);
  g_autofree char *pid_file = g_build_filename(b, "qemu.pid", NULL);
  g_assert_true(g_file_set_contents(pid_file, pid_text, -1, NULL));
  /* Not a QEMU: survives. */
  const char *other_argv[] = { "/bin/sleep", "600", NULL };
  g_autoptr(GSubprocess) other = g_subprocess_newv(other_argv, G_SUBPROCESS_FLAGS_NONE, &error);
  g_assert_no_error(error);

  g_autoptr(GBytes) out = NULL;
  g_autofree char *err = NULL;
  g_assert_cmpint(run_shim(&r, b, "d", "delete", &out, &err), ==, 0);
  Containerd__Task__V2__DeleteResponse *resp = containerd__task__v2__delete_response__unpack(
      NULL, g_bytes_get_size(out), g_bytes_get_data(out, NULL));
  g_assert_nonnull(resp);
  g_assert_cmpuint(resp->exit_status, ==, 128 + SIGKILL);
  g_assert_nonnull(resp->exited_at);
  g_assert_cmpint(resp->exited_at->seconds, >, 0);
  containerd__task__v2__delete_response__free_unpacked(resp, NULL);
  g_subprocess_wait(qemu, NULL, &error);
  g_assert_no_error(error);
  g_assert_true(g_subprocess_get_if_signaled(qemu));
  g_assert_cmpint(g_subprocess_get_term_sig(qemu), ==, SIGKILL);
  g_assert_false(g_file_test(pid_file, G_FILE_TEST_EXISTS));

  g_assert_cmpint(atoi(g_subprocess_get_identifier(other)), >, 0);
  g_assert_cmpint(g_file_set_contents(pid_file, g_subprocess_get_identifier(other), -1, NULL), ==,
                  TRUE);
  g_clear_pointer(&out, g_bytes_unref);
  g_clear_pointer(&err, g_free);
  g_assert_cmpint(run_shim(&r, b, "d", "delete", &out, &err), ==, 0);
  g_assert_true(pid_alive(atoi(g_subprocess_get_identifier(other))));
  g_subprocess_force_exit(other);
  g_subprocess_wait(other, NULL, NULL);
  rig_clear(&r);
}

/* ------------------------------------------------------ bad input, typed -- */

static ProtobufCMessage *task_call(FerryTtrpcClient *c, const char *method,
                                   const ProtobufCMessage *req,
                                   const ProtobufCMessageDescriptor *desc, GError **error)
{
  FerryTtrpcCallOptions options = { .timeout_ns = 60 * G_GINT64_CONSTANT(1000000000) };
  return ferry_ttrpc_client_call_sync(c, "containerd.task.v2.Task", method, req, desc, &options,
                                      error);
}

static void expect_error(FerryTtrpcClient *c, const char *method, const ProtobufCMessage *req,
                         const ProtobufCMessageDescriptor *desc, int code, const char *fragment)
{
  g_autoptr(GError) error = NULL;
  ProtobufCMessage *resp = task_call(c, method, req, desc, &error);
  if (resp != NULL)
    protobuf_c_message_free_unpacked(resp, NULL);
  g_assert_null(resp);
  g_assert_nonnull(error);
  if (error->code != code || strstr(error->message, fragment) == NULL)
    g_error("%s: want code %d with \"%s\", got %d: %s", method, code, fragment, error->code,
            error->message);
}

typedef struct {
  gboolean done;
  GError *error;
} AsyncReply;

static void on_async_reply(FerryTtrpcClient *client, const ProtobufCMessage *response,
                           const GError *error, gpointer ud)
{
  AsyncReply *r = ud;
  r->done = TRUE;
  if (error != NULL)
    r->error = g_error_copy(error);
}

/* The daemon answers bad calls with typed errors and keeps serving; a guest that never
 * comes up fails Create after the bounded wait, naming the console log. */
static void test_bad_input_typed_errors(void)
{
  g_autofree char *qemu = g_find_program_in_path("qemu-system-x86_64");
  if (qemu == NULL) {
    g_test_skip("qemu-system-x86_64 is not installed");
    return;
  }
  Rig r;
  rig_init(&r);
  /* A kernel that only halts: QEMU runs, no agent ever dials. */
  g_autofree char *kernel = g_build_filename(r.dir, "halt-kernel", NULL);
  test_write_pvh_kernel(kernel);
  g_autofree char *initrd = g_build_filename(r.dir, "initrd", NULL);
  g_assert_true(g_file_set_contents(initrd, "", 0, NULL));
  char *config = r.config = g_build_filename(r.dir, "shim.json", NULL);
  g_autofree char *config_text = g_strdup_printf(
      "{\"kernel\": \"%s\", \"initrd\": \"%s\", \"boot_timeout_ms\": 3000}", kernel, initrd);
  g_assert_true(g_file_set_contents(config, config_text, -1, NULL));

  g_autofree char *spec = spec_with_sandbox(NULL);
  g_autofree char *b = make_bundle(&r, "c1", spec);
  g_autofree char *address = start_ok(&r, b, "c1");
  g_autoptr(GError) error = NULL;
  FerryTtrpcClient *c = ferry_ttrpc_client_connect_unix(address, &error);
  g_assert_no_error(error);

  Containerd__Task__V2__StateRequest state = CONTAINERD__TASK__V2__STATE_REQUEST__INIT;
  state.id = "nope";
  expect_error(c, "State", &state.base, &containerd__task__v2__state_response__descriptor,
               FERRY_ERROR_NOT_FOUND, "task nope not found");
  Containerd__Task__V2__KillRequest kill_req = CONTAINERD__TASK__V2__KILL_REQUEST__INIT;
  kill_req.id = "nope";
  kill_req.signal = 9;
  expect_error(c, "Kill", &kill_req.base, &google__protobuf__empty__descriptor,
               FERRY_ERROR_NOT_FOUND, "not found");

  /* A malformed config.json. */
  g_autofree char *bad = make_bundle(&r, "bad", "{ not json");
  Containerd__Task__V2__CreateTaskRequest create = CONTAINERD__TASK__V2__CREATE_TASK_REQUEST__INIT;
  create.id = "bad";
  create.bundle = bad;
  expect_error(c, "Create", &create.base, &containerd__task__v2__create_task_response__descriptor,
               FERRY_ERROR_INVALID_ARGUMENT, "config.json");
  /* A rootfs that is not there. */
  g_autofree char *full_spec =
      g_strdup("{\"ociVersion\": \"1.0.2\", \"process\": {\"args\": [\"sh\"], \"cwd\": \"/\"}, "
               "\"root\": {\"path\": \"rootfs\"}}");
  g_autofree char *noroot = make_bundle(&r, "noroot", full_spec);
  create.id = "noroot";
  create.bundle = noroot;
  expect_error(c, "Create", &create.base, &containerd__task__v2__create_task_response__descriptor,
               FERRY_ERROR_NOT_FOUND, "rootfs");

  /* A guest that never comes up: the bounded wait, then the console log's name. */
  g_autofree char *good = make_bundle(&r, "c1b", full_spec);
  g_autofree char *rootfs = g_build_filename(good, "rootfs", NULL);
  g_assert_true(test_build_busybox_rootfs(rootfs, &error));
  create.id = "c1";
  create.bundle = good;
  AsyncReply first = { 0 };
  FerryTtrpcCallOptions options = { .timeout_ns = 60 * G_GINT64_CONSTANT(1000000000) };
  ferry_ttrpc_client_call(c, "containerd.task.v2.Task", "Create", &create.base,
                          &containerd__task__v2__create_task_response__descriptor, &options,
                          on_async_reply, &first);
  /* While that one waits for the guest, the same id again. */
  expect_error(c, "Create", &create.base, &containerd__task__v2__create_task_response__descriptor,
               FERRY_ERROR_ALREADY_EXISTS, "task c1 already exists");
  g_assert_true(test_run_until(&first.done, 60000));
  g_assert_nonnull(first.error);
  g_assert_cmpint(first.error->code, ==, FERRY_ERROR_DEADLINE_EXCEEDED);
  g_assert_nonnull(strstr(first.error->message, "console log"));
  g_assert_nonnull(strstr(first.error->message, "QEMU log"));
  g_clear_error(&first.error);
  /* The id is free again, and the daemon still answers. */
  Containerd__Task__V2__ConnectResponse *resp = connect_call(c, &error);
  g_assert_no_error(error);
  pid_t daemon = (pid_t)resp->shim_pid;
  protobuf_c_message_free_unpacked(&resp->base, NULL);
  state.id = "c1";
  expect_error(c, "State", &state.base, &containerd__task__v2__state_response__descriptor,
               FERRY_ERROR_NOT_FOUND, "task c1 not found");
  ferry_ttrpc_client_free(c);
  g_assert_cmpint(kill(daemon, SIGTERM), ==, 0);
  wait_gone(daemon);
  rig_clear(&r);
}

int main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  signal(SIGPIPE, SIG_IGN);
  const char *build = g_getenv("FERRY_BUILD_ROOT");
  shim_path =
      g_build_filename(build != NULL ? build : ".", "shim", "containerd-shim-ferry-v1", NULL);
  if (!g_file_test(shim_path, G_FILE_TEST_IS_EXECUTABLE)) {
    g_print("1..0 # SKIP the shim is not built at %s (FERRY_BUILD_ROOT)\n", shim_path);
    return 0;
  }
  g_test_add_func("/shim/start-serves-and-groups", test_start_serves_and_groups);
  g_test_add_func("/shim/start-distinct-sandboxes", test_start_distinct_sandboxes);
  g_test_add_func("/shim/start-rejects-malformed-spec", test_start_rejects_malformed_spec);
  g_test_add_func("/shim/delete-kills-recorded-qemu", test_delete_kills_recorded_qemu);
  g_test_add_func("/shim/bad-input-typed-errors", test_bad_input_typed_errors);
  return g_test_run();
}
