/* The VM manager: one QEMU process, its QMP and its lifecycle (the migration is
 * vm-migration.c). */
#include "ferry/vm.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ferry/error.h"
#include "ferry/fd.h"
#include "ferry/qmp.h"
#include "ferry/source.h"
#include "vm-private.h"

/* ------------------------------------------------------------ names -- */

const char *ferry_vm_state_name(FerryVmState state)
{
  switch (state) {
  case FERRY_VM_CREATED:
    return "created";
  case FERRY_VM_STARTING:
    return "starting";
  case FERRY_VM_PAUSED:
    return "paused";
  case FERRY_VM_RUNNING:
    return "running";
  case FERRY_VM_EXITED:
    return "exited";
  }
  return "unknown";
}

const char *ferry_vm_phase_name(FerryVmPhase phase)
{
  static const char *const names[] = {
    [FERRY_VM_PHASE_SETUP_DONE] = "SetupDone",
    [FERRY_VM_PHASE_TRANSFER_IN_PROGRESS] = "TransferInProgress",
    [FERRY_VM_PHASE_BLACKOUT_STARTED] = "BlackoutStarted",
    [FERRY_VM_PHASE_OFFLINE_DONE] = "OfflineDone",
    [FERRY_VM_PHASE_BLACKOUT_EXITED] = "BlackoutExited",
    [FERRY_VM_PHASE_DONE] = "MigrationDone",
    [FERRY_VM_PHASE_RECOVERY_DONE] = "MigrationRecoveryDone",
    [FERRY_VM_PHASE_FAILED] = "MigrationFailed",
  };
  return phase >= 1 && phase <= FERRY_VM_PHASE_FAILED ? names[phase] : "Unknown";
}

const char *ferry_vm_result_name(FerryVmResult result)
{
  static const char *const names[] = {
    [FERRY_VM_RESULT_SUCCESS] = "Success",
    [FERRY_VM_RESULT_CANCELLED] = "MigrationCancelled",
    [FERRY_VM_RESULT_GUEST_CANCELLED] = "GuestInitiatedCancellation",
    [FERRY_VM_RESULT_SOURCE_FAILED] = "SourceMigrationFailed",
    [FERRY_VM_RESULT_DESTINATION_FAILED] = "DestinationMigrationFailed",
    [FERRY_VM_RESULT_RECOVERY_FAILED] = "MigrationRecoveryFailed",
  };
  return result >= 1 && result <= FERRY_VM_RESULT_RECOVERY_FAILED ? names[result] : "Invalid";
}

/* --------------------------------------------------------------- ops -- */

Op *vm_op_new(FerryVm *vm, FerryVmDoneFunc done, gpointer user_data)
{
  Op *op = g_new0(Op, 1);
  op->vm = vm;
  op->done = done;
  op->user_data = user_data;
  return op;
}

/* Complete from the main loop (never inside the caller's call). */
void vm_op_finish(Op *op, const GError *error)
{
  if (op == NULL)
    return;
  FerryVm *vm = op->vm;
  FerryVmDoneFunc done = op->done;
  gpointer ud = op->user_data;
  g_free(op);
  if (done != NULL && !vm->freeing)
    done(vm, error, ud);
}

/*
 * Work for the main loop, owned by the VM (issue 9 item 4): ferry_vm_free() runs what is
 * still queued with vm->freeing set, which frees it without calling anyone back.
 */
typedef struct {
  FerryVm *vm;
  GSource *source;
  GList link;
  void (*run)(FerryVm *vm, gpointer data);
  gpointer data;
} Later;

static void later_run(Later *l)
{
  g_queue_unlink(&l->vm->later, &l->link);
  ferry_source_clear(&l->source);
  l->run(l->vm, l->data);
  g_free(l);
}

static gboolean on_later(gpointer p)
{
  later_run(p);
  return G_SOURCE_REMOVE;
}

void vm_later(FerryVm *vm, void (*run)(FerryVm *vm, gpointer data), gpointer data)
{
  Later *l = g_new0(Later, 1);
  l->vm = vm;
  l->run = run;
  l->data = data;
  l->link.data = l;
  g_queue_push_tail_link(&vm->later, &l->link);
  l->source = ferry_idle_new(vm->context, on_later, l);
}

typedef struct {
  Op *op;
  GError *error;
} Deferred;

static void run_deferred(FerryVm *vm, gpointer p)
{
  Deferred *d = p;
  vm_op_finish(d->op, d->error);
  g_clear_error(&d->error);
  g_free(d);
}

/* Finish later with `error` (taken; NULL: success). */
void vm_op_finish_later(FerryVm *vm, FerryVmDoneFunc done, gpointer user_data, GError *error)
{
  Deferred *d = g_new0(Deferred, 1);
  d->op = vm_op_new(vm, done, user_data);
  d->error = error;
  vm_later(vm, run_deferred, d);
}

GError *vm_precondition(FerryVm *vm, const char *what, const char *why)
{
  return g_error_new(FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION, "vm %s: %s: %s", vm->id, what,
                     why);
}

/* -------------------------------------------------------- QMP helpers -- */

static void seq_free(Seq *s)
{
  g_ptr_array_unref(s->commands);
  g_free(s);
}

/* Ends the sequence with its first error. */
static void seq_fail(Seq *s, const GError *error)
{
  if (s->failed != NULL)
    s->failed(s->vm);
  vm_op_finish(s->op, error);
  seq_free(s);
}

static void on_seq_reply(FerryQmp *qmp, json_t *result, const GError *error, gpointer ud)
{
  Seq *s = ud;
  if (error != NULL) {
    g_autoptr(GError) e =
        g_error_new(error->domain, error->code, "vm %s: %s", s->vm->id, error->message);
    seq_fail(s, e);
    return;
  }
  vm_seq_step(s);
}

void vm_seq_step(Seq *s)
{
  FerryVm *vm = s->vm;
  if (s->next >= s->commands->len) {
    if (s->then != NULL)
      s->then(vm, s->op);
    else
      vm_op_finish(s->op, NULL);
    seq_free(s);
    return;
  }
  json_t *c = g_ptr_array_index(s->commands, s->next++);
  if (vm->qmp == NULL) {
    g_autoptr(GError) e =
        g_error_new(FERRY_ERROR, FERRY_ERROR_UNAVAILABLE, "vm %s: QEMU is not running", vm->id);
    seq_fail(s, e);
    return;
  }
  const char *command = json_string_value(json_object_get(c, "execute"));
  json_t *arguments = json_object_get(c, "arguments");
  int fd = s->fd;
  s->fd = -1;
  if (fd >= 0)
    ferry_qmp_execute_with_fd(vm->qmp, command, arguments, fd, 0, on_seq_reply, s);
  else
    ferry_qmp_execute(vm->qmp, command, arguments, 0, on_seq_reply, s);
}

Seq *vm_seq_new(FerryVm *vm, Op *op)
{
  Seq *s = g_new0(Seq, 1);
  s->vm = vm;
  s->op = op;
  s->fd = -1;
  s->commands = g_ptr_array_new_with_free_func((GDestroyNotify)json_decref);
  return s;
}

/* Appends a command; `arguments` is taken (may be NULL). */
void vm_seq_add(Seq *s, const char *command, json_t *arguments)
{
  json_t *c = json_pack("{s:s}", "execute", command);
  if (arguments != NULL)
    json_object_set_new(c, "arguments", arguments);
  g_ptr_array_add(s->commands, c);
}

void vm_qmp_fire(FerryVm *vm, const char *command, json_t *arguments)
{
  if (vm->qmp != NULL)
    ferry_qmp_execute(vm->qmp, command, arguments, 0, NULL, NULL);
  if (arguments != NULL)
    json_decref(arguments);
}

/* ------------------------------------------------------------ lifecycle -- */

FerryVm *ferry_vm_new(const char *id, const FerryVmDoc *doc, const char *state_dir,
                      const FerryVmOptions *options, GError **error)
{
  g_return_val_if_fail(id != NULL && doc != NULL && state_dir != NULL, NULL);
  if (!ferry_vm_doc_validate(doc, error))
    return NULL;
  if (!g_path_is_absolute(state_dir)) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                "vm %s: state directory %s is not an absolute path", id, state_dir);
    return NULL;
  }
  FerryVmAccel accel = options != NULL ? options->accel : FERRY_VM_ACCEL_AUTO;
  if (accel == FERRY_VM_ACCEL_AUTO) {
    accel = ferry_vm_detect_accel(NULL, NULL, error);
    if (accel == FERRY_VM_ACCEL_AUTO)
      return NULL;
  }
  FerryVm *vm = g_new0(FerryVm, 1);
  vm->id = g_strdup(id);
  vm->doc = ferry_vm_doc_copy(doc);
  vm->state_dir = g_strdup(state_dir);
  vm->qemu_binary = g_strdup(options != NULL ? options->qemu_binary : NULL);
  vm->tsc_khz = options != NULL ? options->tsc_khz : 0;
  vm->accel = accel;
  vm->qmp_path = g_build_filename(state_dir, "qmp.sock", NULL);
  vm->log_path = g_build_filename(state_dir, "qemu.log", NULL);
  vm->console_path = g_build_filename(state_dir, "console.log", NULL);
  vm->waiters = g_array_new(FALSE, FALSE, sizeof(Op));
  vm->state = FERRY_VM_CREATED;
  vm->context = g_main_context_ref_thread_default();
  g_queue_init(&vm->later);
  g_queue_init(&vm->disk_ops);
  return vm;
}

const char *ferry_vm_get_id(FerryVm *vm)
{
  return vm->id;
}

FerryVmState ferry_vm_get_state(FerryVm *vm)
{
  return vm->state;
}

const FerryVmDoc *ferry_vm_get_doc(FerryVm *vm)
{
  return vm->doc;
}

FerryVmAccel ferry_vm_get_accel(FerryVm *vm)
{
  return vm->accel;
}

GPid ferry_vm_get_pid(FerryVm *vm)
{
  return vm->pid;
}

char *ferry_vm_port_socket(FerryVm *vm, const char *name)
{
  return ferry_vm_doc_port_socket(vm->doc, vm->state_dir, name);
}

const char *ferry_vm_log_path(FerryVm *vm)
{
  return vm->log_path;
}

const char *ferry_vm_console_path(FerryVm *vm)
{
  return vm->console_path;
}

const GError *ferry_vm_exit_error(FerryVm *vm)
{
  return vm->exit_error;
}

/* The last non-empty line QEMU wrote to its log: usually the reason it stopped. */
static char *log_tail(FerryVm *vm)
{
  g_autofree char *text = NULL;
  if (!g_file_get_contents(vm->log_path, &text, NULL, NULL))
    return g_strdup("(no log)");
  g_strchomp(text);
  const char *nl = strrchr(text, '\n');
  const char *last = nl != NULL ? nl + 1 : text;
  return g_strdup(*last != '\0' ? last : "(empty log)");
}

static void stop_connecting(FerryVm *vm)
{
  ferry_source_clear(&vm->connect_timer);
}

static void fail_start(FerryVm *vm, GError *error)
{
  stop_connecting(vm);
  Op *op = g_steal_pointer(&vm->start_op);
  vm_op_finish(op, error);
  g_error_free(error);
}

static void on_child_exit(GPid pid, gint status, gpointer ud)
{
  FerryVm *vm = ud;
  ferry_source_clear(&vm->child_watch);
  g_spawn_close_pid(pid);
  ferry_source_clear(&vm->kill_timer);
  vm->state = FERRY_VM_EXITED;
  g_autofree char *tail = log_tail(vm);
  if (!vm->quit_requested) {
    if (WIFSIGNALED(status))
      vm->exit_error = g_error_new(FERRY_ERROR, FERRY_ERROR_UNAVAILABLE,
                                   "vm %s: QEMU (pid %d) killed by signal %d: %s", vm->id, pid,
                                   WTERMSIG(status), tail);
    else if (WIFEXITED(status) && WEXITSTATUS(status) != 0)
      vm->exit_error = g_error_new(FERRY_ERROR, FERRY_ERROR_UNAVAILABLE,
                                   "vm %s: QEMU (pid %d) exited with status %d: %s", vm->id, pid,
                                   WEXITSTATUS(status), tail);
  }
  g_clear_pointer(&vm->qmp, ferry_qmp_free);
  if (vm->start_op != NULL)
    fail_start(vm, g_error_new(FERRY_ERROR, FERRY_ERROR_UNAVAILABLE,
                               "vm %s: QEMU exited while starting: %s", vm->id, tail));
  vm_killed(vm);
  vm_disks_qemu_exited(vm);
  g_autoptr(GArray) list = g_array_copy(vm->waiters);
  g_array_set_size(vm->waiters, 0);
  for (guint i = 0; i < list->len; i++) {
    Op *w = &g_array_index(list, Op, i);
    if (w->done != NULL)
      w->done(vm, NULL, w->user_data);
  }
}

static void child_setup(gpointer data)
{
  /* A VM does not outlive the process that manages it. */
  prctl(PR_SET_PDEATHSIG, SIGKILL);
}

static void on_started_cont(FerryQmp *qmp, json_t *result, const GError *error, gpointer ud);

static void after_qmp_ready(FerryVm *vm, Op *op)
{
  vm->start_op = NULL;
  if (vm->start_running) {
    vm->start_op = op;
    ferry_qmp_execute(vm->qmp, "cont", NULL, 0, on_started_cont, vm);
    return;
  }
  vm->state = FERRY_VM_PAUSED;
  vm_op_finish(op, NULL);
}

static void on_started_cont(FerryQmp *qmp, json_t *result, const GError *error, gpointer ud)
{
  FerryVm *vm = ud;
  if (error != NULL) {
    fail_start(vm, g_error_new(error->domain, error->code, "vm %s: %s", vm->id, error->message));
    return;
  }
  vm->state = FERRY_VM_RUNNING;
  Op *op = g_steal_pointer(&vm->start_op);
  vm_op_finish(op, NULL);
}

static void on_greeted(FerryQmp *qmp, json_t *result, const GError *error, gpointer ud)
{
  FerryVm *vm = ud;
  if (error != NULL) {
    fail_start(vm,
               g_error_new(error->domain, error->code, "vm %s: QMP: %s", vm->id, error->message));
    return;
  }
  Op *op = g_steal_pointer(&vm->start_op);
  Seq *s = vm_seq_new(vm, op);
  if (vm->start_incoming) {
    vm_seq_add(s, "migrate-set-capabilities",
               json_pack("{s:o}", "capabilities", vm_migration_capabilities(vm)));
    vm_migration_tls(vm, s);
  }
  s->then = after_qmp_ready;
  vm_seq_step(s);
}

static gboolean try_connect(gpointer ud)
{
  FerryVm *vm = ud;
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_un addr = { .sun_family = AF_UNIX };
  g_strlcpy(addr.sun_path, vm->qmp_path, sizeof(addr.sun_path));
  if (fd >= 0 && connect(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0) {
    ferry_source_clear(&vm->connect_timer);
    g_autoptr(GError) error = NULL;
    g_main_context_push_thread_default(vm->context);
    vm->qmp = ferry_qmp_new(fd, &error); /* owns fd, also when it fails (issue 9 item 7) */
    g_main_context_pop_thread_default(vm->context);
    if (vm->qmp == NULL) {
      fail_start(vm, g_steal_pointer(&error));
      return G_SOURCE_REMOVE;
    }
    ferry_qmp_set_event_func(vm->qmp, vm_on_qmp_event, vm);
    ferry_qmp_start(vm->qmp, on_greeted, vm);
    return G_SOURCE_REMOVE;
  }
  int errsv = errno;
  if (fd >= 0)
    close(fd);
  if (g_get_monotonic_time() > vm->connect_until) {
    ferry_source_clear(&vm->connect_timer);
    GError *e = g_error_new(FERRY_ERROR, FERRY_ERROR_DEADLINE_EXCEEDED,
                            "vm %s: QMP socket %s did not accept within %u ms: %s", vm->id,
                            vm->qmp_path, CONNECT_LIMIT_MS, g_strerror(errsv));
    fail_start(vm, e);
    if (vm->pid != 0)
      kill(vm->pid, SIGKILL);
    return G_SOURCE_REMOVE;
  }
  return G_SOURCE_CONTINUE;
}

void vm_spawn(FerryVm *vm, gboolean incoming, Op *op)
{
  g_autoptr(GError) error = NULL;
  if (g_mkdir_with_parents(vm->state_dir, 0700) != 0) {
    ferry_error_set_errno(&error, errno, "vm %s: state directory %s", vm->id, vm->state_dir);
    vm_op_finish(op, error);
    return;
  }
  FerryVmRenderOptions ro = {
    .qemu_binary = vm->qemu_binary,
    .accel = vm->accel,
    .state_dir = vm->state_dir,
    .paused = TRUE,
    .incoming = incoming,
    .tsc_khz = vm->tsc_khz,
  };
  g_auto(GStrv) argv = ferry_vm_doc_render(vm->doc, &ro, &error);
  if (argv == NULL) {
    vm_op_finish(op, error);
    return;
  }
  unlink(vm->qmp_path);
  int log_fd = open(vm->log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (log_fd < 0) {
    ferry_error_set_errno(&error, errno, "vm %s: QEMU log %s", vm->id, vm->log_path);
    vm_op_finish(op, error);
    return;
  }
  GPid pid = 0;
  gboolean ok =
      g_spawn_async_with_fds(NULL, argv, NULL, G_SPAWN_DO_NOT_REAP_CHILD | G_SPAWN_SEARCH_PATH,
                             child_setup, NULL, &pid, -1, log_fd, log_fd, &error);
  close(log_fd);
  if (!ok) {
    g_autoptr(GError) e = g_error_new(FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION,
                                      "vm %s: cannot run %s: %s", vm->id, argv[0], error->message);
    vm_op_finish(op, e);
    return;
  }
  vm->pid = pid;
  vm->state = FERRY_VM_STARTING;
  vm->start_op = op;
  vm->start_incoming = incoming;
  vm->child_watch = g_child_watch_source_new(pid);
  g_source_set_callback(vm->child_watch, G_SOURCE_FUNC(on_child_exit), vm, NULL);
  g_source_attach(vm->child_watch, vm->context);
  vm->connect_until = g_get_monotonic_time() + CONNECT_LIMIT_MS * 1000;
  vm->connect_timer = ferry_timeout_new(vm->context, CONNECT_RETRY_MS, try_connect, vm);
}

void ferry_vm_start(FerryVm *vm, FerryVmDoneFunc done, gpointer user_data)
{
  if (vm->state != FERRY_VM_CREATED) {
    vm_op_finish_later(vm, done, user_data, vm_precondition(vm, "start", "it was started before"));
    return;
  }
  vm->start_running = TRUE;
  vm_spawn(vm, FALSE, vm_op_new(vm, done, user_data));
}

gboolean vm_in_migration_mode(FerryVm *vm)
{
  return vm->origin != 0 && vm->mig != MIG_FAILED;
}

static void on_runstate_reply(FerryQmp *qmp, json_t *result, const GError *error, gpointer ud)
{
  Op *op = ud;
  if (error != NULL) {
    g_autoptr(GError) e =
        g_error_new(error->domain, error->code, "vm %s: %s", op->vm->id, error->message);
    vm_op_finish(op, e);
    return;
  }
  vm_op_finish(op, NULL);
}

static void runstate_change(FerryVm *vm, const char *command, const char *what,
                            FerryVmDoneFunc done, gpointer user_data)
{
  if (vm->state != FERRY_VM_RUNNING && vm->state != FERRY_VM_PAUSED) {
    vm_op_finish_later(vm, done, user_data,
                       vm_precondition(vm, what, ferry_vm_state_name(vm->state)));
    return;
  }
  if (vm_in_migration_mode(vm)) {
    vm_op_finish_later(vm, done, user_data,
                       vm_precondition(vm, what, "a migration is in progress"));
    return;
  }
  ferry_qmp_execute(vm->qmp, command, NULL, 0, on_runstate_reply, vm_op_new(vm, done, user_data));
}

void ferry_vm_pause(FerryVm *vm, FerryVmDoneFunc done, gpointer user_data)
{
  runstate_change(vm, "stop", "pause", done, user_data);
}

void ferry_vm_resume(FerryVm *vm, FerryVmDoneFunc done, gpointer user_data)
{
  runstate_change(vm, "cont", "resume", done, user_data);
}

static gboolean on_kill_timer(gpointer ud)
{
  FerryVm *vm = ud;
  ferry_source_clear(&vm->kill_timer);
  if (vm->pid != 0 && vm->child_watch != NULL)
    kill(vm->pid, SIGKILL);
  return G_SOURCE_REMOVE;
}

void ferry_vm_wait(FerryVm *vm, FerryVmDoneFunc done, gpointer user_data)
{
  if (vm->state == FERRY_VM_EXITED || vm->state == FERRY_VM_CREATED) {
    if (vm->state == FERRY_VM_CREATED) {
      vm_op_finish_later(vm, done, user_data, vm_precondition(vm, "wait", "it was never started"));
      return;
    }
    vm_op_finish_later(vm, done, user_data, NULL);
    return;
  }
  Op w = { vm, done, user_data };
  g_array_append_val(vm->waiters, w);
}

void ferry_vm_terminate(FerryVm *vm, FerryVmDoneFunc done, gpointer user_data)
{
  if (vm->state == FERRY_VM_EXITED || vm->state == FERRY_VM_CREATED) {
    vm->quit_requested = TRUE;
    vm->state = FERRY_VM_EXITED;
    vm_op_finish_later(vm, done, user_data, NULL);
    return;
  }
  vm->quit_requested = TRUE;
  Op w = { vm, done, user_data };
  g_array_append_val(vm->waiters, w);
  if (vm->kill_timer != NULL)
    return; /* already on its way out */
  if (vm->qmp != NULL && ferry_qmp_is_open(vm->qmp))
    vm_qmp_fire(vm, "quit", NULL);
  else
    kill(vm->pid, SIGTERM);
  vm->kill_timer = ferry_timeout_new(vm->context, QUIT_GRACE_MS, on_kill_timer, vm);
}

void ferry_vm_free(FerryVm *vm)
{
  if (vm == NULL)
    return;
  vm->freeing = TRUE;
  stop_connecting(vm);
  ferry_source_clear(&vm->kill_timer);
  ferry_source_clear(&vm->poll_timer);
  if (vm->child_watch != NULL) {
    ferry_source_clear(&vm->child_watch);
    kill(vm->pid, SIGKILL);
    int status;
    while (waitpid(vm->pid, &status, 0) < 0 && errno == EINTR)
      ;
    g_spawn_close_pid(vm->pid);
  }
  g_clear_pointer(&vm->qmp, ferry_qmp_free);
  vm_disks_free(vm);
  /* Queued work is dropped: with vm->freeing set it frees itself and calls nobody. */
  while (!g_queue_is_empty(&vm->later))
    later_run(g_queue_peek_head(&vm->later));
  g_main_context_unref(vm->context);
  g_free(vm->start_op);
  g_free(vm->finalize_op);
  g_array_unref(vm->waiters);
  g_clear_error(&vm->exit_error);
  ferry_vm_doc_free(vm->doc);
  g_free(vm->tls_dir);
  g_free(vm->tls_hostname);
  g_free(vm->id);
  g_free(vm->state_dir);
  g_free(vm->qemu_binary);
  g_free(vm->qmp_path);
  g_free(vm->log_path);
  g_free(vm->console_path);
  g_free(vm);
}

/* ------------------------------------------------------------ properties -- */

typedef struct {
  FerryVm *vm;
  json_t *props;
  FerryVmPropertiesFunc done;
  gpointer user_data;
} PropsQuery;

static void props_finish(PropsQuery *q, const GError *error)
{
  if (!q->vm->freeing)
    q->done(q->vm, error == NULL ? q->props : NULL, error, q->user_data);
  json_decref(q->props);
  g_free(q);
}

static void props_later(FerryVm *vm, gpointer ud)
{
  props_finish(ud, NULL);
}

static void on_query_migrate(FerryQmp *qmp, json_t *result, const GError *error, gpointer ud)
{
  PropsQuery *q = ud;
  if (error == NULL && json_object_size(result) > 0)
    json_object_set(q->props, "Migration", result);
  props_finish(q, error);
}

static void on_query_status(FerryQmp *qmp, json_t *result, const GError *error, gpointer ud)
{
  PropsQuery *q = ud;
  if (error != NULL) {
    props_finish(q, error);
    return;
  }
  json_object_set(q->props, "Status", json_object_get(result, "status"));
  ferry_qmp_execute(qmp, "query-migrate", NULL, 0, on_query_migrate, q);
}

void ferry_vm_properties(FerryVm *vm, FerryVmPropertiesFunc done, gpointer user_data)
{
  PropsQuery *q = g_new0(PropsQuery, 1);
  q->vm = vm;
  q->done = done;
  q->user_data = user_data;
  q->props = json_pack(
      "{s:s, s:s, s:s, s:i, s:i, s:i}", "Id", vm->id, "State", ferry_vm_state_name(vm->state),
      "Accelerator", vm->accel == FERRY_VM_ACCEL_KVM ? "kvm" : "tcg", "MemoryMB",
      (json_int_t)ferry_vm_doc_memory_mb(vm->doc), "ProcessorCount",
      (json_int_t)ferry_vm_doc_processor_count(vm->doc), "Pid", (json_int_t)vm->pid);
  if (vm->qmp == NULL || !ferry_qmp_is_open(vm->qmp)) {
    json_object_set_new(q->props, "Status",
                        json_string(vm->state == FERRY_VM_EXITED ? "exited" : "unknown"));
    vm_later(vm, props_later, q); /* from the main loop, like every other answer */
    return;
  }
  ferry_qmp_execute(vm->qmp, "query-status", NULL, 0, on_query_status, q);
}
