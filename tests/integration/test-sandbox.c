/*
 * FerrySandbox against real QEMU (TCG here) and the guest image: boot to a negotiated
 * guest connection, a command in the UVM, stop; and its failure paths: a bad config, a
 * QEMU that does not start, an agent that does not come up in time, QEMU dying under a
 * running sandbox, container calls out of order.
 *
 * Needs qemu-system-x86_64 and the image (`make image`: FERRY_IMAGE_DIR, default
 * $FERRY_BUILD_ROOT/image); the cases that boot skip with the reason otherwise.
 */
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ferry/cmd.h"
#include "ferry/error.h"
#include "ferry/json.h"
#include "ferry/sandbox.h"
#include "test-util.h"

static char *skip_reason;
static char *kernel_path, *initrd_path, *qemu_path;

typedef struct {
  gboolean done;
  GError *error;
  gboolean vm_exited;
  GError *exit_error;
  GPtrArray *ooms;         /* container ids of the container_oom calls, when set */
  gboolean oom_after_exit; /* a container_oom came after the running command's exit */
} Done;

static void on_done(FerrySandbox *sandbox, const GError *error, gpointer ud)
{
  Done *d = ud;
  g_assert_false(d->done);
  d->done = TRUE;
  if (error != NULL)
    d->error = g_error_copy(error);
}

static void on_vm_exited(FerrySandbox *sandbox, const GError *error, gpointer ud)
{
  Done *d = ud;
  d->vm_exited = TRUE;
  if (error != NULL)
    d->exit_error = g_error_copy(error);
}

static void on_gc_done(const GError *error, gpointer ud)
{
  Done *d = ud;
  d->done = TRUE;
  if (error != NULL)
    d->error = g_error_copy(error);
}

/* A command in the UVM or a container, through the sandbox's guest connection. */
typedef struct {
  gboolean started, waited;
  int code;
  GError *error;
} Run;

/* The command being run (one at a time): container_oom checks it has not exited yet. */
static Run *current_run;

static void on_container_oom(FerrySandbox *sandbox, const char *container_id, gpointer ud)
{
  Done *d = ud;
  if (d->ooms != NULL)
    g_ptr_array_add(d->ooms, g_strdup(container_id));
  if (current_run != NULL && current_run->waited)
    d->oom_after_exit = TRUE;
}

static const FerrySandboxHandlers handlers = { .vm_exited = on_vm_exited,
                                               .container_oom = on_container_oom };

static void done_clear(Done *d)
{
  g_clear_error(&d->error);
  g_clear_error(&d->exit_error);
  g_clear_pointer(&d->ooms, g_ptr_array_unref);
  *d = (Done){ 0 };
}

static FerrySandboxConfig config_for(const char *dir)
{
  return (FerrySandboxConfig){
    .id = "sb-test",
    .state_dir = dir,
    .kernel = kernel_path,
    .initrd = initrd_path,
    .memory_mb = 256,
    .vm = { .qemu_binary = qemu_path },
  };
}

static gboolean pid_alive(GPid pid)
{
  return pid > 0 && kill(pid, 0) == 0;
}

static void on_started(const GError *error, gpointer ud)
{
  Run *r = ud;
  g_assert_no_error(error);
  r->started = TRUE;
}

static void on_waited(int code, const GError *error, gpointer ud)
{
  Run *r = ud;
  r->waited = TRUE;
  r->code = code;
  if (error != NULL)
    r->error = g_error_copy(error);
}

/* Run `params` in container `c` (NULL: the UVM) through the sandbox's guest
 * connection; its stdout, and its exit code in *code. */
static char *run_output(FerrySandbox *sb, FerryGuestContainer *c, json_t *params, guint start_ms,
                        int *code)
{
  int p[2];
  g_assert_cmpint(pipe2(p, O_CLOEXEC), ==, 0);
  FerryCmd *cmd = ferry_cmd_new(ferry_sandbox_get_guest(sb), c, ferry_sandbox_get_ports(sb), params,
                                (FerryCmdIo){ -1, p[1], -1 });
  Run r = { 0 };
  current_run = &r;
  ferry_cmd_start(cmd, on_started, &r);
  g_assert_true(test_run_until(&r.started, start_ms));
  ferry_cmd_wait(cmd, on_waited, &r);
  g_assert_true(test_run_until(&r.waited, 60000));
  g_assert_no_error(r.error);
  ferry_cmd_free(cmd);
  current_run = NULL;
  *code = r.code;
  GString *out = g_string_new("");
  char buf[512];
  ssize_t n;
  while ((n = read(p[0], buf, sizeof(buf))) > 0)
    g_string_append_len(out, buf, n);
  close(p[0]);
  return g_string_free(out, FALSE);
}

static char *uvm_sh(FerrySandbox *sb, const char *script, int *code)
{
  g_autoptr(json_t) params = json_pack("{s:[s,s,s], s:{s:s}}", "CommandArgs", "sh", "-c", script,
                                       "Environment", "PATH", "/bin:/sbin:/usr/bin:/usr/sbin");
  return run_output(sb, NULL, params, 30000, code);
}

/* ---------------------------------------------------------------- tests -- */

static void test_bad_config(void)
{
  g_autoptr(GError) error = NULL;
  FerrySandboxConfig c = { .id = "x",
                           .state_dir = "/tmp/x",
                           .kernel = "/nonexistent/vmlinux",
                           .initrd = "/nonexistent/initrd" };
  g_assert_null(ferry_sandbox_new(&c, NULL, NULL, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND);
  g_assert_nonnull(strstr(error->message, "/nonexistent/vmlinux"));
  g_clear_error(&error);
  c.id = NULL;
  g_assert_null(ferry_sandbox_new(&c, NULL, NULL, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
  g_assert_nonnull(strstr(error->message, "id"));
}

static void test_boot_run_stop(void)
{
  if (skip_reason != NULL) {
    g_test_skip(skip_reason);
    return;
  }
  g_autofree char *dir = test_make_tmpdir();
  FerrySandboxConfig c = config_for(dir);
  Done d = { 0 };
  g_autoptr(GError) error = NULL;
  FerrySandbox *sb = ferry_sandbox_new(&c, &handlers, &d, &error);
  g_assert_no_error(error);
  g_assert_false(ferry_sandbox_is_running(sb));
  g_assert_null(ferry_sandbox_get_guest(sb));
  ferry_sandbox_start(sb, on_done, &d);
  g_assert_false(d.done); /* never inside the call */
  g_assert_true(test_run_until(&d.done, 120000));
  g_assert_no_error(d.error);
  g_assert_true(ferry_sandbox_is_running(sb));
  g_assert_nonnull(ferry_sandbox_get_guest(sb));
  int code;
  g_autofree char *out = uvm_sh(sb, "echo hello from $(uname -s); exit 4", &code);
  g_assert_cmpstr(out, ==, "hello from Linux\n");
  g_assert_cmpint(code, ==, 4);
  /* A second start is refused. */
  done_clear(&d);
  ferry_sandbox_start(sb, on_done, &d);
  g_assert_true(test_run_until(&d.done, 5000));
  g_assert_error(d.error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION);
  GPid pid = ferry_vm_get_pid(ferry_sandbox_get_vm(sb));
  g_assert_true(pid_alive(pid));
  done_clear(&d);
  ferry_sandbox_stop(sb, on_done, &d);
  g_assert_true(test_run_until(&d.done, 30000));
  g_assert_no_error(d.error);
  g_assert_false(pid_alive(pid));
  g_assert_false(d.vm_exited); /* asked for: not a death */
  ferry_sandbox_free(sb);
  done_clear(&d);
  test_rm_rf(dir);
}

/* An agent that does not come up in time: DEADLINE_EXCEEDED naming the console log,
 * and no QEMU left behind. */
static void test_boot_timeout(void)
{
  if (skip_reason != NULL) {
    g_test_skip(skip_reason);
    return;
  }
  g_autofree char *dir = test_make_tmpdir();
  FerrySandboxConfig c = config_for(dir);
  c.boot_timeout_ms = 200; /* the guest cannot boot that fast under TCG */
  Done d = { 0 };
  g_autoptr(GError) error = NULL;
  FerrySandbox *sb = ferry_sandbox_new(&c, &handlers, &d, &error);
  g_assert_no_error(error);
  ferry_sandbox_start(sb, on_done, &d);
  g_assert_true(test_run_until(&d.done, 60000));
  g_assert_error(d.error, FERRY_ERROR, FERRY_ERROR_DEADLINE_EXCEEDED);
  g_assert_nonnull(strstr(d.error->message, "console"));
  g_assert_nonnull(strstr(d.error->message, "qemu.log"));
  g_assert_nonnull(strstr(d.error->message, dir));
  GPid pid = ferry_vm_get_pid(ferry_sandbox_get_vm(sb));
  g_assert_false(pid_alive(pid));
  g_assert_false(ferry_sandbox_is_running(sb));
  g_assert_false(d.vm_exited);
  ferry_sandbox_free(sb);
  done_clear(&d);
  test_rm_rf(dir);
}

/* A QEMU that exits at once: the start fails with what QEMU said. */
static void test_qemu_fails(void)
{
  if (skip_reason != NULL) {
    g_test_skip(skip_reason);
    return;
  }
  g_autofree char *dir = test_make_tmpdir();
  g_autofree char *fake = g_build_filename(dir, "qemu-fails", NULL);
  g_assert_true(g_file_set_contents(
      fake, "#!/bin/sh\necho 'qemu: this machine is not for you' >&2\nexit 1\n", -1, NULL));
  g_assert_cmpint(chmod(fake, 0755), ==, 0);
  g_autofree char *state = g_build_filename(dir, "state", NULL);
  FerrySandboxConfig c = config_for(state);
  c.vm.qemu_binary = fake;
  Done d = { 0 };
  g_autoptr(GError) error = NULL;
  FerrySandbox *sb = ferry_sandbox_new(&c, &handlers, &d, &error);
  g_assert_no_error(error);
  ferry_sandbox_start(sb, on_done, &d);
  g_assert_true(test_run_until(&d.done, 30000));
  g_assert_nonnull(d.error);
  g_assert_nonnull(strstr(d.error->message, "not for you"));
  g_assert_false(ferry_sandbox_is_running(sb));
  ferry_sandbox_free(sb);
  done_clear(&d);
  test_rm_rf(dir);
}

/* QEMU killed under a running sandbox: vm_exited, and container calls are refused. */
static void test_vm_death(void)
{
  if (skip_reason != NULL) {
    g_test_skip(skip_reason);
    return;
  }
  g_autofree char *dir = test_make_tmpdir();
  FerrySandboxConfig c = config_for(dir);
  Done d = { 0 };
  g_autoptr(GError) error = NULL;
  FerrySandbox *sb = ferry_sandbox_new(&c, &handlers, &d, &error);
  g_assert_no_error(error);
  /* Before the start: out of order. */
  g_autoptr(json_t) config = json_object();
  ferry_sandbox_create_container(sb, "c1", config, on_done, &d);
  g_assert_true(test_run_until(&d.done, 5000));
  g_assert_error(d.error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION);
  done_clear(&d);
  ferry_sandbox_start(sb, on_done, &d);
  g_assert_true(test_run_until(&d.done, 120000));
  g_assert_no_error(d.error);
  GPid pid = ferry_vm_get_pid(ferry_sandbox_get_vm(sb));
  g_assert_cmpint(kill(pid, SIGKILL), ==, 0);
  g_assert_true(test_run_until(&d.vm_exited, 30000));
  g_assert_false(ferry_sandbox_is_running(sb));
  g_assert_null(ferry_sandbox_get_guest(sb));
  done_clear(&d);
  ferry_sandbox_create_container(sb, "c1", config, on_done, &d);
  g_assert_true(test_run_until(&d.done, 5000));
  g_assert_error(d.error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION);
  ferry_sandbox_free(sb);
  done_clear(&d);
  test_rm_rf(dir);
}

/* ------------------------------------------------------------ roots -- */

static char *make_erofs(const char *dir, const char *name, const char *marker)
{
  g_autofree char *tree = g_build_filename(dir, name, NULL);
  g_autoptr(GError) error = NULL;
  g_assert_true(test_build_busybox_rootfs(tree, &error));
  g_autofree char *etc = g_build_filename(tree, "etc", NULL);
  g_mkdir_with_parents(etc, 0755);
  g_autofree char *file = g_build_filename(etc, "layer", NULL);
  g_assert_true(g_file_set_contents(file, marker, -1, NULL));
  char *image = g_strdup_printf("%s.erofs", tree);
  const char *argv[] = { "mkfs.erofs", "--quiet", image, tree, NULL };
  gint status = 0;
  g_autofree char *err = NULL;
  g_assert_true(g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_SEARCH_PATH, NULL, NULL, NULL, &err,
                             &status, &error));
  g_assert_no_error(error);
  if (!g_spawn_check_wait_status(status, NULL))
    g_error("mkfs.erofs: %s", err);
  return image;
}

static void attach_ok(FerrySandbox *sb, const char *id, const FerrySandboxLayer *layers, guint n)
{
  Done d = { 0 };
  ferry_sandbox_attach_root(sb, id, layers, n, 8, on_done, &d);
  g_assert_false(d.done);
  g_assert_true(test_run_until(&d.done, 60000));
  g_assert_no_error(d.error);
}

static void detach_ok(FerrySandbox *sb, const char *id)
{
  Done d = { 0 };
  ferry_sandbox_detach_root(sb, id, on_done, &d);
  g_assert_true(test_run_until(&d.done, 60000));
  g_assert_no_error(d.error);
}

/* A container on an attached root: reads the layer, writes into its upper. */
static char *container_sh(FerrySandbox *sb, const char *id, const char *script)
{
  g_autofree char *bundle = ferry_sandbox_guest_bundle(id);
  g_autoptr(json_t) spec = test_busybox_oci_spec();
  json_object_set_new(json_object_get(spec, "root"), "readonly", json_false());
  g_autoptr(json_t) config =
      json_pack("{s:{s:i,s:i}, s:s, s:O}", "SchemaVersion", "Major", 2, "Minor", 1, "OciBundlePath",
                bundle, "OciSpecification", spec);
  Done d = { 0 };
  ferry_sandbox_create_container(sb, id, config, on_done, &d);
  g_assert_true(test_run_until(&d.done, 60000));
  g_assert_no_error(d.error);
  FerryGuestContainer *c = ferry_sandbox_get_container(sb, id);
  g_assert_nonnull(c);
  g_autoptr(json_t) params = json_pack("{s:{s:[s,s,s], s:[s], s:s}}", "OciProcess", "args", "sh",
                                       "-c", script, "env", "PATH=/bin", "cwd", "/");
  int code;
  return run_output(sb, c, params, 60000, &code);
}

static void delete_container(FerrySandbox *sb, const char *id)
{
  Done d = { 0 };
  ferry_guest_connection_delete_container_state(ferry_sandbox_get_guest(sb), id, on_gc_done, &d);
  g_assert_true(test_run_until(&d.done, 30000));
  g_assert_no_error(d.error);
  ferry_sandbox_forget_container(sb, id);
}

static void test_roots_shared_and_released(void)
{
  if (skip_reason != NULL) {
    g_test_skip(skip_reason);
    return;
  }
  g_autofree char *mkfs = g_find_program_in_path("mkfs.erofs");
  if (mkfs == NULL) {
    g_test_skip("mkfs.erofs is not installed (scripts/install-deps.sh shim)");
    return;
  }
  g_autofree char *dir = test_make_tmpdir();
  g_autofree char *image = make_erofs(dir, "base", "base layer\n");
  FerrySandboxConfig c = config_for(dir);
  Done d = { 0 };
  g_autoptr(GError) error = NULL;
  FerrySandbox *sb = ferry_sandbox_new(&c, &handlers, &d, &error);
  g_assert_no_error(error);
  ferry_sandbox_start(sb, on_done, &d);
  g_assert_true(test_run_until(&d.done, 120000));
  g_assert_no_error(d.error);

  FerrySandboxLayer layer = { image, "sha256:base" };
  attach_ok(sb, "c1", &layer, 1);
  g_assert_cmpuint(ferry_sandbox_disk_count(sb), ==, 1);
  attach_ok(sb, "c2", &layer, 1); /* the same digest: the same disk */
  g_assert_cmpuint(ferry_sandbox_disk_count(sb), ==, 1);
  /* A second attach of c1 is refused and changes nothing. */
  done_clear(&d);
  ferry_sandbox_attach_root(sb, "c1", &layer, 1, 8, on_done, &d);
  g_assert_true(test_run_until(&d.done, 60000));
  g_assert_error(d.error, FERRY_ERROR, FERRY_ERROR_ALREADY_EXISTS);
  g_assert_cmpuint(ferry_sandbox_disk_count(sb), ==, 1);

  g_autofree char *out =
      container_sh(sb, "c1", "cat /etc/layer; echo written > /new; cat /new; exit 0");
  g_assert_cmpstr(out, ==, "base layer\nwritten\n");
  delete_container(sb, "c1");
  g_autofree char *other = container_sh(sb, "c2", "cat /new 2>/dev/null || echo absent");
  g_assert_cmpstr(other, ==, "absent\n"); /* each container has its own upper */
  delete_container(sb, "c2");

  detach_ok(sb, "c1");
  g_assert_cmpuint(ferry_sandbox_disk_count(sb), ==, 1); /* c2 still uses it */
  detach_ok(sb, "c2");
  g_assert_cmpuint(ferry_sandbox_disk_count(sb), ==, 0);
  done_clear(&d);
  ferry_sandbox_detach_root(sb, "c2", on_done, &d);
  g_assert_true(test_run_until(&d.done, 30000));
  g_assert_error(d.error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND);

  /* An image that is not there: an error, and no disk stays. */
  FerrySandboxLayer missing = { "/nonexistent/layer.erofs", "sha256:missing" };
  done_clear(&d);
  ferry_sandbox_attach_root(sb, "c3", &missing, 1, 8, on_done, &d);
  g_assert_true(test_run_until(&d.done, 60000));
  g_assert_nonnull(d.error);
  g_assert_nonnull(strstr(d.error->message, "/nonexistent/layer.erofs"));
  g_assert_cmpuint(ferry_sandbox_disk_count(sb), ==, 0);
  /* And the root can be attached again after the failure. */
  attach_ok(sb, "c3", &layer, 1);
  detach_ok(sb, "c3");

  done_clear(&d);
  ferry_sandbox_stop(sb, on_done, &d);
  g_assert_true(test_run_until(&d.done, 30000));
  ferry_sandbox_free(sb);
  done_clear(&d);
  test_rm_rf(dir);
}

/* ------------------------------------------------------------- OOM kills -- */

/* Container `id` on its attached root, with a memory limit of `limit_mb` MiB. */
static FerryGuestContainer *create_limited(FerrySandbox *sb, const char *id, guint limit_mb)
{
  g_autofree char *bundle = ferry_sandbox_guest_bundle(id);
  g_autoptr(json_t) spec = test_busybox_oci_spec();
  json_object_set_new(json_object_get(spec, "linux"), "resources",
                      json_pack("{s:{s:I}}", "memory", "limit", (json_int_t)limit_mb << 20));
  g_autoptr(json_t) config =
      json_pack("{s:{s:i,s:i}, s:s, s:O}", "SchemaVersion", "Major", 2, "Minor", 1, "OciBundlePath",
                bundle, "OciSpecification", spec);
  Done d = { 0 };
  ferry_sandbox_create_container(sb, id, config, on_done, &d);
  g_assert_true(test_run_until(&d.done, 60000));
  g_assert_no_error(d.error);
  FerryGuestContainer *c = ferry_sandbox_get_container(sb, id);
  g_assert_nonnull(c);
  return c;
}

static json_t *sh_process(const char *script)
{
  return json_pack("{s:{s:[s,s,s], s:[s], s:s}}", "OciProcess", "args", "sh", "-c", script, "env",
                   "PATH=/bin", "cwd", "/");
}

/* A shell that doubles a string until the memory limit stops it. */
#define GROW "x=0123456789abcdef; while :; do x=$x$x; done"

/*
 * The guest's OOM notification through the sandbox (docs/agent.md, OOM kills): a
 * container whose init the OOM killer ends reports container_oom before the init's
 * exit (137); one whose child is killed reports it while the init runs on; the agent's
 * cgroup group of a container goes when the container is deleted.
 */
static void test_container_oom(void)
{
  if (skip_reason != NULL) {
    g_test_skip(skip_reason);
    return;
  }
  g_autofree char *mkfs = g_find_program_in_path("mkfs.erofs");
  if (mkfs == NULL) {
    g_test_skip("mkfs.erofs is not installed (scripts/install-deps.sh shim)");
    return;
  }
  g_autofree char *dir = test_make_tmpdir();
  g_autofree char *image = make_erofs(dir, "base", "base layer\n");
  FerrySandboxConfig c = config_for(dir);
  Done d = { 0 };
  g_autoptr(GError) error = NULL;
  FerrySandbox *sb = ferry_sandbox_new(&c, &handlers, &d, &error);
  g_assert_no_error(error);
  ferry_sandbox_start(sb, on_done, &d);
  g_assert_true(test_run_until(&d.done, 120000));
  g_assert_no_error(d.error);
  d.ooms = g_ptr_array_new_with_free_func(g_free);
  FerrySandboxLayer layer = { image, "sha256:base" };

  /* The init is what grows: killed, and the OOM is told before its exit. */
  attach_ok(sb, "oom1", &layer, 1);
  FerryGuestContainer *c1 = create_limited(sb, "oom1", 32);
  g_autoptr(json_t) grow = sh_process(GROW);
  int code = -1;
  g_autofree char *out = run_output(sb, c1, grow, 60000, &code);
  g_assert_nonnull(out);
  g_assert_cmpint(code, ==, 137);
  g_assert_cmpuint(d.ooms->len, ==, 1);
  g_assert_cmpstr(d.ooms->pdata[0], ==, "oom1");
  g_assert_false(d.oom_after_exit);
  delete_container(sb, "oom1");
  detach_ok(sb, "oom1");
  g_autofree char *group =
      uvm_sh(sb, "test -e /sys/fs/cgroup/ferry/oom1 && echo left || echo removed", &code);
  g_assert_cmpstr(group, ==, "removed\n");

  /* A child grows and is killed; the init goes on and hears of it, then waits for its
   * stdin to end: the OOM is told while it runs. */
  attach_ok(sb, "oom2", &layer, 1);
  FerryGuestContainer *c2 = create_limited(sb, "oom2", 32);
  g_autoptr(json_t) child =
      sh_process("(" GROW "); echo \"child $?\"; read -r line; echo \"init done\"");
  int in[2], outp[2];
  g_assert_cmpint(pipe2(in, O_CLOEXEC), ==, 0);
  g_assert_cmpint(pipe2(outp, O_CLOEXEC), ==, 0);
  FerryCmd *cmd = ferry_cmd_new(ferry_sandbox_get_guest(sb), c2, ferry_sandbox_get_ports(sb), child,
                                (FerryCmdIo){ in[0], outp[1], -1 });
  Run r = { 0 };
  current_run = &r;
  ferry_cmd_start(cmd, on_started, &r);
  g_assert_true(test_run_until(&r.started, 60000));
  ferry_cmd_wait(cmd, on_waited, &r);
  gint64 until = g_get_monotonic_time() + 60 * G_USEC_PER_SEC;
  while (d.ooms->len < 2 && !r.waited && g_get_monotonic_time() < until)
    g_main_context_iteration(NULL, TRUE);
  g_assert_false(r.waited);
  g_assert_cmpuint(d.ooms->len, ==, 2);
  g_assert_cmpstr(d.ooms->pdata[1], ==, "oom2");
  close(in[1]); /* the init's read ends */
  g_assert_true(test_run_until(&r.waited, 60000));
  g_assert_no_error(r.error);
  g_assert_cmpint(r.code, ==, 0);
  ferry_cmd_free(cmd);
  current_run = NULL;
  GString *text = g_string_new("");
  char buf[256];
  ssize_t n;
  while ((n = read(outp[0], buf, sizeof(buf))) > 0)
    g_string_append_len(text, buf, n);
  close(outp[0]);
  g_autofree char *got = g_string_free(text, FALSE);
  g_assert_cmpstr(got, ==, "child 137\ninit done\n");
  g_assert_cmpuint(d.ooms->len, ==, 2);
  delete_container(sb, "oom2");
  detach_ok(sb, "oom2");

  done_clear(&d);
  ferry_sandbox_stop(sb, on_done, &d);
  g_assert_true(test_run_until(&d.done, 30000));
  ferry_sandbox_free(sb);
  done_clear(&d);
  test_rm_rf(dir);
}

int main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  signal(SIGPIPE, SIG_IGN);
  const char *image = g_getenv("FERRY_IMAGE_DIR");
  const char *build = g_getenv("FERRY_BUILD_ROOT");
  g_autofree char *image_dir = image != NULL
                                   ? g_strdup(image)
                                   : g_build_filename(build != NULL ? build : ".", "image", NULL);
  kernel_path = g_build_filename(image_dir, "vmlinux", NULL);
  initrd_path = g_build_filename(image_dir, "initramfs.cpio", NULL);
  qemu_path = g_find_program_in_path(g_getenv("FERRY_QEMU") != NULL ? g_getenv("FERRY_QEMU")
                                                                    : "qemu-system-x86_64");
  if (qemu_path == NULL)
    skip_reason = g_strdup("qemu-system-x86_64 is not installed (scripts/install-deps.sh vm)");
  else if (!g_file_test(kernel_path, G_FILE_TEST_EXISTS) ||
           !g_file_test(initrd_path, G_FILE_TEST_EXISTS))
    skip_reason = g_strdup_printf("no guest image in %s (make image)", image_dir);
  g_test_add_func("/sandbox/bad-config", test_bad_config);
  g_test_add_func("/sandbox/boot-run-stop", test_boot_run_stop);
  g_test_add_func("/sandbox/boot-timeout", test_boot_timeout);
  g_test_add_func("/sandbox/qemu-fails", test_qemu_fails);
  g_test_add_func("/sandbox/vm-death", test_vm_death);
  g_test_add_func("/sandbox/roots-shared-and-released", test_roots_shared_and_released);
  g_test_add_func("/sandbox/container-oom", test_container_oom);
  return g_test_run();
}
