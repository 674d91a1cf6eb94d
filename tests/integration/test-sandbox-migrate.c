/*
 * A sandbox live-migrated between FerrySandbox objects, A -> B -> A -> B, each a fresh
 * object with its own state directory and QEMU, against the real guest image under
 * TCG. What crosses from one to the next is only what would cross between hosts: the
 * description and the handover as bytes, the memory over a socketpair, and each
 * process's migration state. The workload: a container whose init prints numbered
 * lines every 20 ms, an exec'd `cat` echoing stdin, and an exec'd process that exits
 * once it reads a line written while the source's mux is quiet. Every host relays to
 * the same pipes, so the bytes the test reads are every host's output concatenated:
 * they must be exactly the sequence written, nothing lost, nothing twice.
 *
 * Needs qemu-system-x86_64, the image (`make image`) and mkfs.erofs; skips otherwise.
 */
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ferry/cmd.h"
#include "ferry/error.h"
#include "ferry/fd.h"
#include "ferry/json.h"
#include "ferry/mux.h"
#include "ferry/sandbox.h"
#include "test-util.h"

#define HOPS 3
#define WAIT_MS 120000

static char *skip_reason;
static char *kernel_path, *initrd_path, *qemu_path;

/* ----------------------------------------------------------- the readers -- */

typedef struct {
  int fd;
  GString *data;
  gboolean eof;
} Reader;

static void reader_init(Reader *r, int fd)
{
  r->fd = fd;
  r->data = g_string_new(NULL);
  r->eof = FALSE;
  g_autoptr(GError) error = NULL;
  g_assert_true(ferry_fd_set_nonblocking(fd, TRUE, &error));
}

static void reader_poll(Reader *r)
{
  char buf[4096];
  ssize_t n = -1;
  while (!r->eof && (n = read(r->fd, buf, sizeof(buf))) != 0) {
    if (n < 0)
      return; /* EAGAIN */
    g_string_append_len(r->data, buf, n);
  }
  if (n == 0)
    r->eof = TRUE;
}

/* ---------------------------------------------------------------- world -- */

typedef enum { P_INIT, P_ECHO, P_WAITER, N_PROCS } ProcIdx;

typedef struct {
  /* The test's ends of the pipes every host relays to. */
  int init_out_w, echo_in_r, echo_out_w, waiter_in_r;
  int echo_in_w, waiter_in_w;
  Reader init_out, echo_out;
  /* The host of the moment. */
  FerrySandbox *sb;
  char *dir;
  FerryCmd *cmds[N_PROCS];
  gboolean exited[N_PROCS];
  int codes[N_PROCS];
  /* Carried from one host to the next. */
  guint32 pids[N_PROCS];
  FerryGuestMigrationState ms[N_PROCS];
  gboolean stream_done[N_PROCS][3];
  /* The sandboxes' callbacks: each side's phases (FerryVmPhase) in its own list. */
  FerrySandbox *src, *dst;
  GArray *src_notes, *dst_notes;
  gboolean failure_expected;
  gboolean done;
  GError *error;
  GHashTable *images;
  char *layer;
  guint stdin_lines;
} World;

static World world;

static void on_done(FerrySandbox *sandbox, const GError *error, gpointer ud)
{
  World *w = ud;
  w->done = TRUE;
  if (error != NULL)
    w->error = g_error_copy(error);
}

static void on_gc_done(const GError *error, gpointer ud)
{
  on_done(NULL, error, ud);
}

static void pump_readers(World *w)
{
  reader_poll(&w->init_out);
  reader_poll(&w->echo_out);
}

/* Iterate (draining the pipes) until *flag or the deadline. */
static gboolean run_until(World *w, const gboolean *flag, guint ms)
{
  gint64 until = g_get_monotonic_time() + (gint64)ms * 1000;
  while (!*flag) {
    if (g_get_monotonic_time() > until)
      return FALSE;
    g_main_context_iteration(NULL, FALSE);
    pump_readers(w);
    g_usleep(1000);
  }
  return TRUE;
}

static void wait_ok(World *w, const char *what)
{
  if (!run_until(w, &w->done, WAIT_MS))
    g_error("%s: no answer within %u ms", what, WAIT_MS);
  if (w->error != NULL)
    g_error("%s: %s", what, w->error->message);
  w->done = FALSE;
}

static void on_note(FerrySandbox *sandbox, const FerryVmNotification *n, gpointer ud)
{
  World *w = ud;
  FerryVmPhase phase = n->phase;
  g_assert_true(sandbox == w->src || sandbox == w->dst);
  g_array_append_val(sandbox == w->src ? w->src_notes : w->dst_notes, phase);
  if (phase == FERRY_VM_PHASE_FAILED && !w->failure_expected)
    g_error("migration failed: %s", n->message != NULL ? n->message : "?");
}

static gboolean has_note(GArray *notes, FerryVmPhase phase)
{
  for (guint i = 0; i < notes->len; i++)
    if (g_array_index(notes, FerryVmPhase, i) == phase)
      return TRUE;
  return FALSE;
}

static void on_exit_code(int code, const GError *error, gpointer ud)
{
  int *slot = ud;
  World *w = &world;
  ProcIdx i = (ProcIdx)(slot - w->codes);
  g_assert_no_error(error);
  w->exited[i] = TRUE;
  *slot = code;
}

static int dup_or_none(int fd, gboolean done)
{
  return done || fd < 0 ? -1 : fcntl(fd, F_DUPFD_CLOEXEC, 3);
}

/* The io each host gets: its own copies of the same pipes. */
static FerryCmdIo io_for(World *w, ProcIdx i)
{
  gboolean *d = w->stream_done[i];
  switch (i) {
  case P_INIT:
    return (FerryCmdIo){ -1, dup_or_none(w->init_out_w, d[1]), -1 };
  case P_ECHO:
    return (FerryCmdIo){ dup_or_none(w->echo_in_r, d[0]), dup_or_none(w->echo_out_w, d[1]), -1 };
  default:
    return (FerryCmdIo){ dup_or_none(w->waiter_in_r, d[0]), -1, -1 };
  }
}

/* The destination's guest connection was rebuilt: reopen the processes that run. */
static void on_restore(FerrySandbox *sandbox, FerryGuestConnection *gc, gpointer ud)
{
  World *w = ud;
  FerryGuestContainer *c = ferry_sandbox_get_container(sandbox, "c1");
  g_assert_nonnull(c);
  for (int i = 0; i < N_PROCS; i++) {
    if (w->exited[i])
      continue;
    g_autoptr(GError) error = NULL;
    g_autoptr(FerryGuestProcess) p = ferry_guest_container_open_process_with_io(
        c, w->pids[i], w->ms[i].stdin_port, w->ms[i].stdout_port, w->ms[i].stderr_port,
        w->ms[i].wait_call_id, &error);
    g_assert_no_error(error);
    ferry_guest_process_set_serial(p, w->ms[i].serial);
    w->cmds[i] = ferry_cmd_attach(p, ferry_sandbox_get_ports(sandbox), io_for(w, (ProcIdx)i));
    ferry_cmd_set_copy_after_exit(w->cmds[i], 60000);
    ferry_cmd_wait(w->cmds[i], on_exit_code, &w->codes[i]);
  }
}

static const FerrySandboxHandlers handlers = {
  .migration_note = on_note,
  .restore = on_restore,
};

static FerrySandbox *sandbox_new(World *w, const char *name)
{
  g_autofree char *dir = g_build_filename(w->dir, name, NULL);
  FerrySandboxConfig config = {
    .id = "sb-mig",
    .state_dir = dir,
    .kernel = kernel_path,
    .initrd = initrd_path,
    .memory_mb = 256,
    .vm = { .qemu_binary = qemu_path },
  };
  g_autoptr(GError) error = NULL;
  FerrySandbox *sb = ferry_sandbox_new(&config, &handlers, w, &error);
  g_assert_no_error(error);
  return sb;
}

static void write_line(int fd, const char *line)
{
  g_assert_cmpint(write(fd, line, strlen(line)), ==, (ssize_t)strlen(line));
}

static void send_echo_line(World *w)
{
  g_autofree char *line = g_strdup_printf("stdin %u\n", ++w->stdin_lines);
  write_line(w->echo_in_w, line);
}

/* ---------------------------------------------------------- the first host -- */

static char *make_layer(const char *dir)
{
  g_autofree char *tree = g_build_filename(dir, "layer", NULL);
  g_autoptr(GError) error = NULL;
  g_assert_true(test_build_busybox_rootfs(tree, &error));
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

static FerryCmd *start_in_container(World *w, ProcIdx i, const char *script)
{
  FerryGuestContainer *c = ferry_sandbox_get_container(w->sb, "c1");
  g_autoptr(json_t) params = json_pack("{s:{s:[s,s,s], s:[s], s:s}}", "OciProcess", "args", "sh",
                                       "-c", script, "env", "PATH=/bin", "cwd", "/");
  FerryCmd *cmd = ferry_cmd_new(ferry_sandbox_get_guest(w->sb), c, ferry_sandbox_get_ports(w->sb),
                                params, io_for(w, i));
  ferry_cmd_set_copy_after_exit(cmd, 60000);
  ferry_cmd_start(cmd, on_gc_done, w);
  wait_ok(w, "start a container process");
  ferry_cmd_wait(cmd, on_exit_code, &w->codes[i]);
  return cmd;
}

static void first_host(World *w)
{
  w->sb = sandbox_new(w, "host0");
  ferry_sandbox_start(w->sb, on_done, w);
  wait_ok(w, "boot");
  g_autofree char *contents = NULL;
  gsize len = 0;
  g_assert_true(g_file_get_contents(w->layer, &contents, &len, NULL));
  g_autofree char *sum = g_compute_checksum_for_data(G_CHECKSUM_SHA256, (guchar *)contents, len);
  g_autofree char *digest = g_strconcat("sha256:", sum, NULL);
  g_hash_table_insert(w->images, g_strdup(digest), g_strdup(w->layer));
  FerrySandboxLayer layer = { .path = w->layer, .digest = digest };
  ferry_sandbox_attach_root(w->sb, "c1", &layer, 1, 8, on_done, w);
  wait_ok(w, "attach the root");
  g_autofree char *bundle = ferry_sandbox_guest_bundle("c1");
  g_autoptr(json_t) spec = test_busybox_oci_spec();
  json_object_set_new(json_object_get(spec, "root"), "readonly", json_false());
  g_autoptr(json_t) config =
      json_pack("{s:{s:i,s:i}, s:s, s:O}", "SchemaVersion", "Major", 2, "Minor", 1, "OciBundlePath",
                bundle, "OciSpecification", spec);
  ferry_sandbox_create_container(w->sb, "c1", config, on_done, w);
  wait_ok(w, "create the container");
  w->cmds[P_INIT] = start_in_container(
      w, P_INIT, "i=0; while :; do i=$((i+1)); echo \"line $i\"; sleep 0.02; done");
  w->cmds[P_ECHO] = start_in_container(w, P_ECHO, "exec cat");
  w->cmds[P_WAITER] = start_in_container(w, P_WAITER, "read x; exit 7");
  send_echo_line(w);
}

/* ------------------------------------------------------------- one hop -- */

static gboolean transfer_done(World *w)
{
  return has_note(w->src_notes, FERRY_VM_PHASE_OFFLINE_DONE) &&
         has_note(w->dst_notes, FERRY_VM_PHASE_OFFLINE_DONE);
}

static const FerryVmMigrationOptions hop_options = { .target_blackout_ms = 50 };

/* The source prepared, the destination waiting with the source's description (which
 * crossed as text). */
static void hop_prepare(World *w, guint n, const FerryVmMigrationOptions *options)
{
  w->src = w->sb;
  g_autofree char *name = g_strdup_printf("host%u", n);
  g_array_set_size(w->src_notes, 0);
  g_array_set_size(w->dst_notes, 0);
  ferry_sandbox_migration_prepare(w->src, options, on_done, w);
  wait_ok(w, "prepare");
  g_autoptr(json_t) description = ferry_sandbox_migration_describe(w->src);
  g_autofree char *text = json_dumps(description, JSON_COMPACT);
  json_error_t jerr;
  g_autoptr(json_t) received = json_loads(text, 0, &jerr);
  g_assert_nonnull(received);
  w->dst = sandbox_new(w, name);
  ferry_sandbox_start_incoming(w->dst, received, w->images, options, on_done, w);
  wait_ok(w, "start the destination");
}

/* The memory flowing over a socketpair; a stdin line written while the source is
 * quiet (it reaches the guest through whichever host runs it next). */
static void hop_transfer(World *w, guint n)
{
  int sp[2];
  g_autoptr(GError) error = NULL;
  g_assert_true(ferry_socketpair(sp, FALSE, &error));
  ferry_sandbox_migration_transfer(w->dst, sp[1], on_done, w);
  wait_ok(w, "destination transfer");
  ferry_sandbox_migration_transfer(w->src, sp[0], on_done, w);
  close(sp[0]);
  close(sp[1]);
  send_echo_line(w);
  if (n == 1)
    write_line(w->waiter_in_w, "go\n");
  wait_ok(w, "source transfer");
}

static void wait_for(World *w, gboolean (*cond)(World *), const char *what)
{
  gint64 until = g_get_monotonic_time() + (gint64)WAIT_MS * 1000;
  while (!cond(w)) {
    if (g_get_monotonic_time() > until)
      g_error("%s: not within %u ms", what, WAIT_MS);
    g_main_context_iteration(NULL, FALSE);
    pump_readers(w);
    g_usleep(1000);
  }
}

/* The source's processes as the next host needs them; their relays stop here. */
static void hand_processes_over(World *w)
{
  for (int i = 0; i < N_PROCS; i++) {
    if (w->exited[i] || w->cmds[i] == NULL)
      continue;
    FerryGuestProcess *p = ferry_cmd_get_process(w->cmds[i]);
    w->pids[i] = ferry_guest_process_get_pid(p);
    w->ms[i] = ferry_guest_process_migration_state(p);
    for (int s = 0; s < 3; s++)
      w->stream_done[i][s] = ferry_cmd_stream_done(w->cmds[i], (FerryCmdStream)s);
  }
  for (int i = 0; i < N_PROCS; i++) {
    if (w->cmds[i] != NULL) {
      ferry_cmd_detach(w->cmds[i]);
      g_clear_pointer(&w->cmds[i], ferry_cmd_free);
    }
  }
}

static void hop(World *w, guint n)
{
  hop_prepare(w, n, &hop_options);
  /* Out of order: nothing to hand over or resume before a transfer. */
  g_autoptr(GError) error = NULL;
  g_assert_null(ferry_sandbox_migration_handover(w->src, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION);
  g_clear_error(&error);
  hop_transfer(w, n);
  wait_for(w, transfer_done, "both sides' OFFLINE_DONE");

  /* The handover crosses as bytes too (each channel is serialized already). */
  g_autoptr(FerrySandboxHandover) handover = ferry_sandbox_migration_handover(w->src, &error);
  g_assert_no_error(error);
  /* A source shim answers, then waits for Cleanup with its loop running: nothing may
   * move here after the handover. */
  gboolean never = FALSE;
  g_assert_false(run_until(w, &never, 300));
  hand_processes_over(w);
  GPid src_qemu = ferry_vm_get_pid(ferry_sandbox_get_vm(w->src));
  ferry_sandbox_migration_cleanup(w->src, on_done, w);
  wait_ok(w, "clean up the source");
  g_assert_cmpint(kill(src_qemu, 0), <, 0); /* the source's QEMU is gone */
  ferry_sandbox_free(w->src);
  w->src = NULL;

  w->sb = w->dst;
  ferry_sandbox_migration_resume(w->dst, handover, 0, on_done, w);
  wait_ok(w, "resume");
  g_assert_true(ferry_sandbox_is_running(w->dst));
  g_assert_true(has_note(w->dst_notes, FERRY_VM_PHASE_BLACKOUT_EXITED));
  w->dst = NULL;
  send_echo_line(w);
}

/* A migration that goes wrong: the source recovers, and the destination is dropped. */
static void recover_source(World *w)
{
  ferry_sandbox_migration_recover(w->src, on_done, w);
  wait_ok(w, "recover");
  g_assert_true(has_note(w->src_notes, FERRY_VM_PHASE_RECOVERY_DONE));
  g_assert_true(ferry_sandbox_is_running(w->src));
  ferry_sandbox_free(w->dst); /* kills its QEMU by pid */
  w->dst = NULL;
  w->src = NULL;
  w->failure_expected = FALSE;
  send_echo_line(w);
}

static gboolean source_failed(World *w)
{
  return has_note(w->src_notes, FERRY_VM_PHASE_FAILED);
}

/* The destination's QEMU is killed during the transfer: the source hears, recovers,
 * and the workload never stopped. */
static void failed_hop_destination_killed(World *w, guint n)
{
  w->failure_expected = TRUE;
  /* Slow enough to be killed mid-way (as in test-vm's). */
  const FerryVmMigrationOptions slow = { .max_bandwidth = 8u << 20 };
  hop_prepare(w, n, &slow);
  hop_transfer(w, n);
  g_assert_false(has_note(w->src_notes, FERRY_VM_PHASE_OFFLINE_DONE));
  g_assert_cmpint(kill(ferry_vm_get_pid(ferry_sandbox_get_vm(w->dst)), SIGKILL), ==, 0);
  wait_for(w, source_failed, "the source's FAILED");
  recover_source(w);
}

/* The transfer completes and the source hands over, but the destination never runs
 * the guest: the source takes it back from its paused QEMU, nothing lost. */
static void failed_hop_no_resume(World *w, guint n)
{
  hop_prepare(w, n, &hop_options);
  hop_transfer(w, n);
  wait_for(w, transfer_done, "both sides' OFFLINE_DONE");
  g_autoptr(GError) error = NULL;
  g_autoptr(FerrySandboxHandover) handover = ferry_sandbox_migration_handover(w->src, &error);
  g_assert_no_error(error);
  g_assert_nonnull(handover);
  recover_source(w);
}

/* ------------------------------------------------------------ checking -- */

/* "line 1\nline 2\n...": consecutive from 1, complete lines, none missing or twice. */
static guint check_sequence(const GString *data, const char *prefix)
{
  g_auto(GStrv) lines = g_strsplit(data->str, "\n", -1);
  guint n = 0;
  for (char **l = lines; *l != NULL; l++) {
    if (**l == '\0' && l[1] == NULL)
      break;
    g_autofree char *expected = g_strdup_printf("%s %u", prefix, n + 1);
    if (g_strcmp0(*l, expected) != 0)
      g_error("line %u: '%s', expected '%s'", n + 1, *l, expected);
    n++;
  }
  return n;
}

static gboolean lines_at_least(World *w, guint n)
{
  return check_sequence(w->init_out.data, "line") >= n;
}

static void test_migrate_three_hops(void)
{
  if (skip_reason != NULL) {
    g_test_skip(skip_reason);
    return;
  }
  World *w = &world;
  memset(w, 0, sizeof(*w));
  w->dir = test_make_tmpdir();
  w->images = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
  w->src_notes = g_array_new(FALSE, FALSE, sizeof(FerryVmPhase));
  w->dst_notes = g_array_new(FALSE, FALSE, sizeof(FerryVmPhase));
  w->layer = make_layer(w->dir);
  int p[2];
  g_assert_cmpint(pipe2(p, O_CLOEXEC), ==, 0);
  reader_init(&w->init_out, p[0]);
  w->init_out_w = p[1];
  g_assert_cmpint(pipe2(p, O_CLOEXEC), ==, 0);
  w->echo_in_r = p[0];
  w->echo_in_w = p[1];
  g_assert_cmpint(pipe2(p, O_CLOEXEC), ==, 0);
  reader_init(&w->echo_out, p[0]);
  w->echo_out_w = p[1];
  g_assert_cmpint(pipe2(p, O_CLOEXEC), ==, 0);
  w->waiter_in_r = p[0];
  w->waiter_in_w = p[1];

  first_host(w);
  /* A bad description is refused before QEMU starts: a layer this host lacks. */
  {
    g_autoptr(json_t) description = ferry_sandbox_migration_describe(w->sb);
    g_autoptr(GHashTable) none = g_hash_table_new(g_str_hash, g_str_equal);
    FerrySandbox *bad = sandbox_new(w, "bad");
    ferry_sandbox_start_incoming(bad, description, none, NULL, on_done, w);
    g_assert_false(w->done);
    g_assert_true(run_until(w, &w->done, WAIT_MS));
    g_assert_error(w->error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION);
    g_assert_nonnull(strstr(w->error->message, "sha256:"));
    g_assert_null(ferry_sandbox_get_vm(bad)); /* no QEMU was started */
    g_clear_error(&w->error);
    w->done = FALSE;
    ferry_sandbox_free(bad);
  }
  /* A transfer needs a prepare; a prepared source that changes its mind recovers. */
  {
    int sp[2];
    g_autoptr(GError) error = NULL;
    g_assert_true(ferry_socketpair(sp, FALSE, &error));
    ferry_sandbox_migration_transfer(w->sb, sp[0], on_done, w);
    g_assert_true(run_until(w, &w->done, WAIT_MS));
    g_assert_error(w->error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION);
    g_clear_error(&w->error);
    w->done = FALSE;
    close(sp[0]);
    close(sp[1]);
    w->src = w->sb;
    ferry_sandbox_migration_prepare(w->sb, &hop_options, on_done, w);
    wait_ok(w, "prepare");
    ferry_sandbox_migration_prepare(w->sb, &hop_options, on_done, w);
    g_assert_true(run_until(w, &w->done, WAIT_MS));
    g_assert_error(w->error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION);
    g_clear_error(&w->error);
    w->done = FALSE;
    ferry_sandbox_migration_recover(w->sb, on_done, w);
    wait_ok(w, "recover a prepared source");
    w->src = NULL;
    send_echo_line(w);
  }
  failed_hop_destination_killed(w, 100);
  failed_hop_no_resume(w, 101);
  for (guint n = 1; n <= HOPS; n++) {
    gint64 until = g_get_monotonic_time() + (gint64)WAIT_MS * 1000;
    guint want = check_sequence(w->init_out.data, "line") + 10;
    while (!lines_at_least(w, want)) {
      g_assert_cmpint(g_get_monotonic_time(), <, until);
      g_main_context_iteration(NULL, FALSE);
      pump_readers(w);
      g_usleep(1000);
    }
    hop(w, n);
    g_test_message("hop %u: %u lines so far", n, check_sequence(w->init_out.data, "line"));
  }
  /* The waiter read its line on a destination and its status came back there. */
  g_assert_true(run_until(w, &w->exited[P_WAITER], WAIT_MS));
  g_assert_cmpint(w->codes[P_WAITER], ==, 7);

  /* The echo: every line once, then EOF through to the guest and back. */
  close(w->echo_in_w);
  close(w->echo_in_r);
  w->echo_in_r = -1;
  g_assert_true(run_until(w, &w->exited[P_ECHO], WAIT_MS));
  g_assert_cmpint(w->codes[P_ECHO], ==, 0);
  guint echoed = check_sequence(w->echo_out.data, "stdin");
  g_assert_cmpuint(echoed, ==, w->stdin_lines);

  /* The counter goes on after the last hop, and ends when the container is killed. */
  guint before = check_sequence(w->init_out.data, "line");
  gint64 until = g_get_monotonic_time() + (gint64)WAIT_MS * 1000;
  while (!lines_at_least(w, before + 10)) {
    g_assert_cmpint(g_get_monotonic_time(), <, until);
    g_main_context_iteration(NULL, FALSE);
    pump_readers(w);
    g_usleep(1000);
  }
  ferry_guest_container_terminate(ferry_sandbox_get_container(w->sb, "c1"), on_gc_done, w);
  wait_ok(w, "terminate the container");
  g_assert_true(run_until(w, &w->exited[P_INIT], WAIT_MS));
  guint total = check_sequence(w->init_out.data, "line");
  g_test_message("%u numbered lines over %u hops, %u stdin lines echoed once each", total, HOPS,
                 echoed);

  for (int i = 0; i < N_PROCS; i++)
    g_clear_pointer(&w->cmds[i], ferry_cmd_free);
  ferry_sandbox_stop(w->sb, on_done, w);
  wait_ok(w, "stop");
  ferry_sandbox_free(w->sb);
  close(w->init_out.fd);
  close(w->init_out_w);
  close(w->echo_out.fd);
  close(w->echo_out_w);
  close(w->waiter_in_r);
  close(w->waiter_in_w);
  g_string_free(w->init_out.data, TRUE);
  g_string_free(w->echo_out.data, TRUE);
  g_array_unref(w->src_notes);
  g_array_unref(w->dst_notes);
  g_hash_table_unref(w->images);
  test_rm_rf(w->dir);
  g_free(w->dir);
  g_free(w->layer);
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
  g_autofree char *mkfs = g_find_program_in_path("mkfs.erofs");
  if (qemu_path == NULL)
    skip_reason = g_strdup("qemu-system-x86_64 is not installed (scripts/install-deps.sh vm)");
  else if (mkfs == NULL)
    skip_reason = g_strdup("mkfs.erofs is not installed (scripts/install-deps.sh shim)");
  else if (!g_file_test(kernel_path, G_FILE_TEST_EXISTS) ||
           !g_file_test(initrd_path, G_FILE_TEST_EXISTS))
    skip_reason = g_strdup_printf("no guest image in %s (make image)", image_dir);
  g_test_add_func("/sandbox-migrate/three-hops-exactly-once", test_migrate_three_hops);
  return g_test_run();
}
