/* The VM manager: one QEMU process, its QMP, its lifecycle and its migration. */
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

#define CONNECT_RETRY_MS 10u
#define CONNECT_LIMIT_MS 30000u
#define QUIT_GRACE_MS 5000u
#define POSTCOPY_POLL_MS 5u
#define DEFAULT_BANDWIDTH (1ull << 30)
#define MIGRATION_FD_NAME "ferry-migration"

typedef struct {
  FerryVm *vm;
  FerryVmDoneFunc done;
  gpointer user_data;
} Op;

typedef enum {
  MIG_NONE,
  MIG_READY, /* source initialised / destination waiting for its stream */
  MIG_TRANSFERRING,
  MIG_COMPLETED, /* the stream is complete (source: sent; destination: received) */
  MIG_FAILED,    /* failed or cancelled; the source runs again */
} MigState;

struct FerryVm {
  char *id;
  GMainContext *context; /* thread-default at creation: every source of the VM */
  GQueue later;          /* Later: work queued for the main loop, owned by the VM */
  FerryVmDoc *doc;
  char *state_dir;
  char *qemu_binary;
  FerryVmAccel accel;
  guint64 tsc_khz;
  char *qmp_path;
  char *log_path;
  char *console_path;

  FerryVmState state;
  GPid pid;
  GSource *child_watch;
  gboolean quit_requested;
  GError *exit_error;
  GArray *waiters; /* Op */
  GSource *kill_timer;
  FerryQmp *qmp;

  /* start */
  Op *start_op;
  gboolean start_running; /* cont once QMP is up */
  gboolean start_incoming;
  GSource *connect_timer;
  gint64 connect_until;

  /* migration */
  FerryVmOrigin origin; /* 0: not migrating */
  MigState mig;
  FerryVmMigrationOptions mopts;
  FerryVmNotifyFunc notify;
  gpointer notify_data;
  gboolean setup_done_sent;
  gboolean blackout_sent;
  gboolean postcopy_requested;
  gboolean postcopy_active;
  gboolean convergence_handled;
  gboolean cancel_requested;
  gint64 blackout_started_us; /* destination: the start of the blackout it reports */
  gint64 incoming_done_us;
  Op *finalize_op;
  FerryVmFinalize finalize_action;
  GSource *poll_timer; /* destination: waiting for post-copy's device state */
  gboolean freeing;
};

static void vm_notify(FerryVm *vm, FerryVmNotification n);
static void vm_killed(FerryVm *vm);

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

static Op *op_new(FerryVm *vm, FerryVmDoneFunc done, gpointer user_data)
{
  Op *op = g_new0(Op, 1);
  op->vm = vm;
  op->done = done;
  op->user_data = user_data;
  return op;
}

/* Complete from the main loop (never inside the caller's call). */
static void op_finish(Op *op, const GError *error)
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

static void vm_later(FerryVm *vm, void (*run)(FerryVm *vm, gpointer data), gpointer data)
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
  op_finish(d->op, d->error);
  g_clear_error(&d->error);
  g_free(d);
}

/* Finish later with `error` (taken; NULL: success). */
static void op_finish_later(FerryVm *vm, FerryVmDoneFunc done, gpointer user_data, GError *error)
{
  Deferred *d = g_new0(Deferred, 1);
  d->op = op_new(vm, done, user_data);
  d->error = error;
  vm_later(vm, run_deferred, d);
}

static GError *precondition(FerryVm *vm, const char *what, const char *why)
{
  return g_error_new(FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION, "vm %s: %s: %s", vm->id, what,
                     why);
}

/* -------------------------------------------------------- QMP helpers -- */

/* A sequence of QMP commands run one after the other; the first error ends it. */
typedef struct {
  FerryVm *vm;
  GPtrArray *commands; /* json_t {"execute", "arguments"} */
  guint next;
  Op *op;
  void (*then)(FerryVm *vm, Op *op); /* after the last success, instead of finishing op */
  void (*failed)(FerryVm *vm);       /* before op finishes with the first error */
  int fd;                            /* passed with the first command (-1: none); borrowed */
} Seq;

static void seq_step(Seq *s);

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
  op_finish(s->op, error);
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
  seq_step(s);
}

static void seq_step(Seq *s)
{
  FerryVm *vm = s->vm;
  if (s->next >= s->commands->len) {
    if (s->then != NULL)
      s->then(vm, s->op);
    else
      op_finish(s->op, NULL);
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

static Seq *seq_new(FerryVm *vm, Op *op)
{
  Seq *s = g_new0(Seq, 1);
  s->vm = vm;
  s->op = op;
  s->fd = -1;
  s->commands = g_ptr_array_new_with_free_func((GDestroyNotify)json_decref);
  return s;
}

/* Appends a command; `arguments` is taken (may be NULL). */
static void seq_add(Seq *s, const char *command, json_t *arguments)
{
  json_t *c = json_pack("{s:s}", "execute", command);
  if (arguments != NULL)
    json_object_set_new(c, "arguments", arguments);
  g_ptr_array_add(s->commands, c);
}

static void qmp_fire(FerryVm *vm, const char *command, json_t *arguments)
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
  op_finish(op, error);
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

static void on_event(FerryQmp *qmp, const char *event, json_t *data, gint64 ts, gpointer ud);

static void after_qmp_ready(FerryVm *vm, Op *op)
{
  vm->start_op = NULL;
  if (vm->start_running) {
    vm->start_op = op;
    ferry_qmp_execute(vm->qmp, "cont", NULL, 0, on_started_cont, vm);
    return;
  }
  vm->state = FERRY_VM_PAUSED;
  op_finish(op, NULL);
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
  op_finish(op, NULL);
}

static json_t *capabilities(FerryVm *vm);

static void on_greeted(FerryQmp *qmp, json_t *result, const GError *error, gpointer ud)
{
  FerryVm *vm = ud;
  if (error != NULL) {
    fail_start(vm,
               g_error_new(error->domain, error->code, "vm %s: QMP: %s", vm->id, error->message));
    return;
  }
  Op *op = g_steal_pointer(&vm->start_op);
  Seq *s = seq_new(vm, op);
  if (vm->start_incoming)
    seq_add(s, "migrate-set-capabilities", json_pack("{s:o}", "capabilities", capabilities(vm)));
  s->then = after_qmp_ready;
  seq_step(s);
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
    ferry_qmp_set_event_func(vm->qmp, on_event, vm);
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

static void spawn(FerryVm *vm, gboolean incoming, Op *op)
{
  g_autoptr(GError) error = NULL;
  if (g_mkdir_with_parents(vm->state_dir, 0700) != 0) {
    ferry_error_set_errno(&error, errno, "vm %s: state directory %s", vm->id, vm->state_dir);
    op_finish(op, error);
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
    op_finish(op, error);
    return;
  }
  unlink(vm->qmp_path);
  int log_fd = open(vm->log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (log_fd < 0) {
    ferry_error_set_errno(&error, errno, "vm %s: QEMU log %s", vm->id, vm->log_path);
    op_finish(op, error);
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
    op_finish(op, e);
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
    op_finish_later(vm, done, user_data, precondition(vm, "start", "it was started before"));
    return;
  }
  vm->start_running = TRUE;
  spawn(vm, FALSE, op_new(vm, done, user_data));
}

static gboolean in_migration_mode(FerryVm *vm)
{
  return vm->origin != 0 && vm->mig != MIG_FAILED;
}

static void on_runstate_reply(FerryQmp *qmp, json_t *result, const GError *error, gpointer ud)
{
  Op *op = ud;
  if (error != NULL) {
    g_autoptr(GError) e =
        g_error_new(error->domain, error->code, "vm %s: %s", op->vm->id, error->message);
    op_finish(op, e);
    return;
  }
  op_finish(op, NULL);
}

static void runstate_change(FerryVm *vm, const char *command, const char *what,
                            FerryVmDoneFunc done, gpointer user_data)
{
  if (vm->state != FERRY_VM_RUNNING && vm->state != FERRY_VM_PAUSED) {
    op_finish_later(vm, done, user_data, precondition(vm, what, ferry_vm_state_name(vm->state)));
    return;
  }
  if (in_migration_mode(vm)) {
    op_finish_later(vm, done, user_data, precondition(vm, what, "a migration is in progress"));
    return;
  }
  ferry_qmp_execute(vm->qmp, command, NULL, 0, on_runstate_reply, op_new(vm, done, user_data));
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
      op_finish_later(vm, done, user_data, precondition(vm, "wait", "it was never started"));
      return;
    }
    op_finish_later(vm, done, user_data, NULL);
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
    op_finish_later(vm, done, user_data, NULL);
    return;
  }
  vm->quit_requested = TRUE;
  Op w = { vm, done, user_data };
  g_array_append_val(vm->waiters, w);
  if (vm->kill_timer != NULL)
    return; /* already on its way out */
  if (vm->qmp != NULL && ferry_qmp_is_open(vm->qmp))
    qmp_fire(vm, "quit", NULL);
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
  /* Queued work is dropped: with vm->freeing set it frees itself and calls nobody. */
  while (!g_queue_is_empty(&vm->later))
    later_run(g_queue_peek_head(&vm->later));
  g_main_context_unref(vm->context);
  g_free(vm->start_op);
  g_free(vm->finalize_op);
  g_array_unref(vm->waiters);
  g_clear_error(&vm->exit_error);
  ferry_vm_doc_free(vm->doc);
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

/* ------------------------------------------------------------ migration -- */

void ferry_vm_set_notify_func(FerryVm *vm, FerryVmNotifyFunc func, gpointer user_data)
{
  vm->notify = func;
  vm->notify_data = user_data;
}

static void vm_notify(FerryVm *vm, FerryVmNotification n)
{
  n.origin = vm->origin;
  if (n.time_us == 0)
    n.time_us = g_get_real_time();
  if (vm->notify != NULL && !vm->freeing)
    vm->notify(vm, &n, vm->notify_data);
}

static gboolean postcopy_allowed(const FerryVmMigrationOptions *o)
{
  /* QEMU 7.2 refuses post-copy together with compression. */
  return !o->no_postcopy && o->compression_threads == 0;
}

/* The capabilities both sides set: what the stream carries must match. */
static json_t *capabilities(FerryVm *vm)
{
  const FerryVmMigrationOptions *o = &vm->mopts;
  json_t *caps = json_array();
  json_array_append_new(caps, json_pack("{s:s, s:b}", "capability", "events", "state", 1));
  json_array_append_new(
      caps, json_pack("{s:s, s:b}", "capability", "postcopy-ram", "state", postcopy_allowed(o)));
  json_array_append_new(
      caps, json_pack("{s:s, s:b}", "capability", "compress", "state", o->compression_threads > 0));
  if (vm->origin == FERRY_VM_ORIGIN_SOURCE)
    json_array_append_new(
        caps, json_pack("{s:s, s:b}", "capability", "auto-converge", "state", !o->skip_throttling));
  return caps;
}

static GError *check_options(FerryVm *vm, const FerryVmMigrationOptions *o)
{
  if (o->throttling_scale != 0 && (o->throttling_scale < 1 || o->throttling_scale > 100))
    return g_error_new(FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                       "vm %s: throttling scale %g is outside 1-100", vm->id, o->throttling_scale);
  if (o->minimum_throttle_percentage > 99)
    return g_error_new(FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                       "vm %s: minimum throttle percentage %u is above 99", vm->id,
                       o->minimum_throttle_percentage);
  if (o->compression_threads > 255)
    return g_error_new(FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                       "vm %s: %u compression threads (at most 255)", vm->id,
                       o->compression_threads);
  if (o->cancel_if_blackout_threshold_exceeds && o->blackout_threshold_ms == 0)
    return g_error_new(FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                       "vm %s: cancel_if_blackout_threshold_exceeds needs a blackout threshold",
                       vm->id);
  g_autoptr(GError) e = NULL;
  if (!ferry_vm_doc_check_migratable(vm->doc, vm->accel, &e))
    return g_steal_pointer(&e);
  return NULL;
}

void ferry_vm_start_incoming(FerryVm *vm, const FerryVmMigrationOptions *options,
                             FerryVmDoneFunc done, gpointer user_data)
{
  if (vm->state != FERRY_VM_CREATED) {
    op_finish_later(vm, done, user_data,
                    precondition(vm, "start incoming", "it was started before"));
    return;
  }
  FerryVmMigrationOptions none = { 0 };
  GError *e = check_options(vm, options != NULL ? options : &none);
  if (e != NULL) {
    op_finish_later(vm, done, user_data, e);
    return;
  }
  vm->mopts = options != NULL ? *options : none;
  vm->origin = FERRY_VM_ORIGIN_DESTINATION;
  vm->mig = MIG_READY;
  vm->start_running = FALSE;
  spawn(vm, TRUE, op_new(vm, done, user_data));
}

static void after_initialize(FerryVm *vm, Op *op)
{
  vm->mig = MIG_READY;
  op_finish(op, NULL);
}

void ferry_vm_migration_initialize(FerryVm *vm, const FerryVmMigrationOptions *options,
                                   FerryVmDoneFunc done, gpointer user_data)
{
  if (vm->state != FERRY_VM_RUNNING && vm->state != FERRY_VM_PAUSED) {
    op_finish_later(vm, done, user_data,
                    precondition(vm, "initialize migration", ferry_vm_state_name(vm->state)));
    return;
  }
  if (in_migration_mode(vm)) {
    op_finish_later(vm, done, user_data,
                    precondition(vm, "initialize migration", "a migration is in progress"));
    return;
  }
  FerryVmMigrationOptions none = { 0 };
  GError *e = check_options(vm, options != NULL ? options : &none);
  if (e != NULL) {
    op_finish_later(vm, done, user_data, e);
    return;
  }
  vm->mopts = options != NULL ? *options : none;
  vm->origin = FERRY_VM_ORIGIN_SOURCE;
  vm->mig = MIG_NONE; /* READY once QEMU took the settings */
  vm->setup_done_sent = vm->blackout_sent = vm->postcopy_requested = vm->postcopy_active = FALSE;
  vm->convergence_handled = vm->cancel_requested = FALSE;
  const FerryVmMigrationOptions *o = &vm->mopts;
  json_t *params =
      json_pack("{s:I}", "max-bandwidth",
                (json_int_t)(o->max_bandwidth != 0 ? o->max_bandwidth : DEFAULT_BANDWIDTH));
  if (o->target_blackout_ms != 0)
    json_object_set_new(params, "downtime-limit", json_integer(o->target_blackout_ms));
  if (o->minimum_throttle_percentage != 0)
    json_object_set_new(params, "cpu-throttle-initial",
                        json_integer(o->minimum_throttle_percentage));
  if (o->throttling_scale != 0)
    json_object_set_new(params, "cpu-throttle-increment",
                        json_integer((json_int_t)o->throttling_scale));
  if (o->compression_threads != 0)
    json_object_set_new(params, "compress-threads", json_integer(o->compression_threads));
  Seq *s = seq_new(vm, op_new(vm, done, user_data));
  seq_add(s, "migrate-set-capabilities", json_pack("{s:o}", "capabilities", capabilities(vm)));
  seq_add(s, "migrate-set-parameters", params);
  s->then = after_initialize;
  seq_step(s);
}

/* QEMU refused getfd or migrate: nothing moves, the transfer may be tried again. */
static void transfer_refused(FerryVm *vm)
{
  if (vm->mig == MIG_TRANSFERRING)
    vm->mig = MIG_READY;
}

void ferry_vm_migration_transfer(FerryVm *vm, int fd, FerryVmDoneFunc done, gpointer user_data)
{
  if (vm->origin == 0 || vm->mig != MIG_READY) {
    op_finish_later(vm, done, user_data,
                    precondition(vm, "transfer",
                                 vm->origin == 0       ? "no migration was initialised"
                                 : vm->mig == MIG_NONE ? "the migration is still being initialised"
                                                       : "the transfer was started before"));
    return;
  }
  if (vm->qmp == NULL || vm->state == FERRY_VM_STARTING) {
    op_finish_later(vm, done, user_data, precondition(vm, "transfer", "QEMU is not ready"));
    return;
  }
  int type = 0;
  socklen_t len = sizeof(type);
  if (fd < 0 || getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0 || type != SOCK_STREAM) {
    op_finish_later(vm, done, user_data,
                    g_error_new(FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                                "vm %s: transfer: fd %d is not a stream socket", vm->id, fd));
    return;
  }
  vm->mig = MIG_TRANSFERRING;
  Seq *s = seq_new(vm, op_new(vm, done, user_data));
  s->failed = transfer_refused;
  s->fd = fd; /* with getfd, sent from seq_step() below while the caller's fd is open */
  seq_add(s, "getfd", json_pack("{s:s}", "fdname", MIGRATION_FD_NAME));
  seq_add(s, vm->origin == FERRY_VM_ORIGIN_SOURCE ? "migrate" : "migrate-incoming",
          json_pack("{s:s}", "uri", "fd:" MIGRATION_FD_NAME));
  seq_step(s);
}

/* Leave migration mode: the VM is an ordinary VM again. */
static void migration_end(FerryVm *vm)
{
  vm->origin = 0;
  vm->mig = MIG_NONE;
}

static void finish_finalize(FerryVm *vm, const GError *error)
{
  Op *op = g_steal_pointer(&vm->finalize_op);
  op_finish(op, error);
}

typedef struct {
  FerryVm *vm;
  FerryVmResult result;
} FailQuery;

static void on_failure_details(FerryQmp *qmp, json_t *result, const GError *error, gpointer ud)
{
  FailQuery *f = ud;
  FerryVm *vm = f->vm;
  const char *desc = NULL;
  if (error == NULL)
    desc = json_string_value(json_object_get(result, "error-desc"));
  vm_notify(vm, (FerryVmNotification){ .phase = FERRY_VM_PHASE_FAILED,
                                       .result = f->result,
                                       .message = desc != NULL ? desc : "migration failed" });
  g_free(f);
}

static void rollback_cont(FerryVm *vm);

static void migration_failed(FerryVm *vm, FerryVmResult result)
{
  vm->mig = MIG_FAILED;
  FailQuery *f = g_new0(FailQuery, 1);
  f->vm = vm;
  f->result = result;
  if (vm->qmp != NULL && result != FERRY_VM_RESULT_CANCELLED) {
    ferry_qmp_execute(vm->qmp, "query-migrate", NULL, 0, on_failure_details, f);
  } else {
    vm_notify(vm, (FerryVmNotification){ .phase = FERRY_VM_PHASE_FAILED,
                                         .result = result,
                                         .message = result == FERRY_VM_RESULT_CANCELLED
                                                        ? "migration cancelled"
                                                        : "migration failed" });
    g_free(f);
  }
  /* A source finalize RESUME that waited for the transfer to stop goes on now. */
  if (vm->finalize_op != NULL && vm->origin == FERRY_VM_ORIGIN_SOURCE &&
      vm->finalize_action == FERRY_VM_FINALIZE_RESUME)
    rollback_cont(vm);
}

/* QEMU exited: what that means for a migration in flight or a finalize. */
static void vm_killed(FerryVm *vm)
{
  if (vm->finalize_op != NULL && vm->finalize_action == FERRY_VM_FINALIZE_STOP) {
    if (vm->origin == FERRY_VM_ORIGIN_SOURCE)
      vm_notify(vm, (FerryVmNotification){ .phase = FERRY_VM_PHASE_DONE,
                                           .result = FERRY_VM_RESULT_SUCCESS });
    migration_end(vm);
    finish_finalize(vm, NULL);
    return;
  }
  if (vm->origin != 0 &&
      (vm->mig == MIG_READY || vm->mig == MIG_TRANSFERRING ||
       (vm->mig == MIG_COMPLETED && vm->origin == FERRY_VM_ORIGIN_DESTINATION))) {
    FerryVmResult r = vm->cancel_requested                   ? FERRY_VM_RESULT_CANCELLED
                      : vm->origin == FERRY_VM_ORIGIN_SOURCE ? FERRY_VM_RESULT_SOURCE_FAILED
                                                             : FERRY_VM_RESULT_DESTINATION_FAILED;
    vm->mig = MIG_FAILED;
    vm_notify(vm, (FerryVmNotification){ .phase = FERRY_VM_PHASE_FAILED,
                                         .result = r,
                                         .message = vm->exit_error != NULL ? vm->exit_error->message
                                                                           : "QEMU exited" });
  }
  if (vm->finalize_op != NULL) {
    g_autoptr(GError) e = g_error_new(FERRY_ERROR, FERRY_ERROR_UNAVAILABLE,
                                      "vm %s: QEMU exited during finalize", vm->id);
    finish_finalize(vm, e);
  }
}

/* Non-convergence: past the allowed passes, switch to post-copy or cancel. */
static void on_convergence_figures(FerryQmp *qmp, json_t *result, const GError *error, gpointer ud)
{
  FerryVm *vm = ud;
  if (vm->mig != MIG_TRANSFERRING)
    return;
  const FerryVmMigrationOptions *o = &vm->mopts;
  json_int_t expected =
      error == NULL ? json_integer_value(json_object_get(result, "expected-downtime")) : 0;
  gboolean over = o->blackout_threshold_ms != 0 && expected > (json_int_t)o->blackout_threshold_ms;
  if ((o->cancel_if_blackout_threshold_exceeds && over) || !postcopy_allowed(o)) {
    vm->cancel_requested = TRUE;
    qmp_fire(vm, "migrate_cancel", NULL);
    return;
  }
  vm->postcopy_requested = TRUE;
  qmp_fire(vm, "migrate-start-postcopy", NULL);
}

static void setup_done(FerryVm *vm)
{
  if (vm->setup_done_sent)
    return;
  vm->setup_done_sent = TRUE;
  vm_notify(vm, (FerryVmNotification){ .phase = FERRY_VM_PHASE_SETUP_DONE,
                                       .result = FERRY_VM_RESULT_SUCCESS });
}

static void on_pass(FerryVm *vm, guint pass)
{
  if (vm->origin != FERRY_VM_ORIGIN_SOURCE || vm->mig != MIG_TRANSFERRING)
    return;
  /* QEMU counts its first pass before it reports "active", and its last one happens
   * with the guest stopped: the phases stay in order and the blackout's pass is not a
   * transfer pass. */
  if (vm->blackout_sent)
    return;
  setup_done(vm);
  vm_notify(vm, (FerryVmNotification){ .phase = FERRY_VM_PHASE_TRANSFER_IN_PROGRESS,
                                       .result = FERRY_VM_RESULT_SUCCESS,
                                       .pass = pass });
  guint max = vm->mopts.maximum_passes;
  if (max != 0 && pass > max && !vm->convergence_handled && !vm->blackout_sent) {
    vm->convergence_handled = TRUE;
    ferry_qmp_execute(vm->qmp, "query-migrate", NULL, 0, on_convergence_figures, vm);
  }
}

static void blackout_exited(FerryVm *vm, gint64 now_us)
{
  if (vm->blackout_sent)
    return;
  vm->blackout_sent = TRUE;
  gint64 began = vm->blackout_started_us != 0 ? vm->blackout_started_us : vm->incoming_done_us;
  vm_notify(vm, (FerryVmNotification){ .phase = FERRY_VM_PHASE_BLACKOUT_EXITED,
                                       .result = FERRY_VM_RESULT_SUCCESS,
                                       .time_us = now_us,
                                       .blackout_ms = began != 0 && now_us > began
                                                          ? (guint64)(now_us - began) / 1000
                                                          : 0,
                                       .blackout_stop_us = now_us });
}

static void postcopy_poll(FerryVm *vm);

static gboolean on_postcopy_timer(gpointer ud)
{
  FerryVm *vm = ud;
  ferry_source_clear(&vm->poll_timer);
  postcopy_poll(vm);
  return G_SOURCE_REMOVE;
}

static void on_postcopy_status(FerryQmp *qmp, json_t *result, const GError *error, gpointer ud)
{
  FerryVm *vm = ud;
  if (error != NULL || vm->mig == MIG_FAILED)
    return; /* QEMU is gone or the migration failed: the exit or the event says so */
  const char *status = json_string_value(json_object_get(result, "status"));
  if (g_strcmp0(status, "paused") == 0) {
    qmp_fire(vm, "cont", NULL);
    return;
  }
  if (g_strcmp0(status, "running") == 0)
    return;
  vm->poll_timer = ferry_timeout_new(vm->context, POSTCOPY_POLL_MS, on_postcopy_timer, vm);
}

static void postcopy_poll(FerryVm *vm)
{
  if (vm->qmp != NULL)
    ferry_qmp_execute(vm->qmp, "query-status", NULL, 0, on_postcopy_status, vm);
}

static void on_migration_status(FerryVm *vm, const char *status, gint64 ts)
{
  if (vm->origin == 0)
    return;
  if (strcmp(status, "active") == 0) {
    setup_done(vm);
  } else if (strcmp(status, "postcopy-active") == 0) {
    vm->postcopy_active = TRUE;
    if (vm->origin == FERRY_VM_ORIGIN_DESTINATION) {
      /* The guest runs here from now on; its pages follow on demand. But the destination
       * reports post-copy when it starts listening for pages, before it has loaded the
       * device state (the vCPU registers among it): run it only once QEMU left
       * "inmigrate" for "paused" (-S holds it there). Running it earlier crashes the
       * guest. */
      vm->blackout_started_us = ts;
      postcopy_poll(vm);
    }
  } else if (strcmp(status, "completed") == 0) {
    vm->mig = MIG_COMPLETED;
    if (vm->origin == FERRY_VM_ORIGIN_DESTINATION)
      vm->incoming_done_us = ts;
    vm_notify(vm, (FerryVmNotification){ .phase = FERRY_VM_PHASE_OFFLINE_DONE,
                                         .result = FERRY_VM_RESULT_SUCCESS });
  } else if (strcmp(status, "failed") == 0) {
    if (vm->mig != MIG_FAILED)
      migration_failed(vm, vm->cancel_requested ? FERRY_VM_RESULT_CANCELLED
                           : vm->origin == FERRY_VM_ORIGIN_SOURCE
                               ? FERRY_VM_RESULT_SOURCE_FAILED
                               : FERRY_VM_RESULT_DESTINATION_FAILED);
  } else if (strcmp(status, "cancelled") == 0) {
    if (vm->mig != MIG_FAILED)
      migration_failed(vm, FERRY_VM_RESULT_CANCELLED);
  }
}

static void on_event(FerryQmp *qmp, const char *event, json_t *data, gint64 ts, gpointer ud)
{
  FerryVm *vm = ud;
  if (ts == 0)
    ts = g_get_real_time();
  if (strcmp(event, "STOP") == 0) {
    if (vm->state == FERRY_VM_RUNNING)
      vm->state = FERRY_VM_PAUSED;
    if (vm->origin == FERRY_VM_ORIGIN_SOURCE && vm->mig == MIG_TRANSFERRING && !vm->blackout_sent) {
      vm->blackout_sent = TRUE;
      vm_notify(vm, (FerryVmNotification){ .phase = FERRY_VM_PHASE_BLACKOUT_STARTED,
                                           .result = FERRY_VM_RESULT_SUCCESS,
                                           .time_us = ts,
                                           .postcopy = vm->postcopy_requested });
    }
  } else if (strcmp(event, "RESUME") == 0) {
    if (vm->state == FERRY_VM_PAUSED)
      vm->state = FERRY_VM_RUNNING;
    if (vm->origin == FERRY_VM_ORIGIN_DESTINATION &&
        (vm->mig == MIG_COMPLETED || vm->postcopy_active))
      blackout_exited(vm, ts);
  } else if (strcmp(event, "MIGRATION") == 0) {
    const char *status = json_string_value(json_object_get(data, "status"));
    if (status != NULL)
      on_migration_status(vm, status, ts);
  } else if (strcmp(event, "MIGRATION_PASS") == 0) {
    json_int_t pass = json_integer_value(json_object_get(data, "pass"));
    if (pass > 0)
      on_pass(vm, (guint)pass);
  }
}

/* ------------------------------------------------------------- finalize -- */

static void on_rollback_cont(FerryQmp *qmp, json_t *result, const GError *error, gpointer ud)
{
  FerryVm *vm = ud;
  if (error != NULL) {
    vm_notify(vm, (FerryVmNotification){ .phase = FERRY_VM_PHASE_FAILED,
                                         .result = FERRY_VM_RESULT_RECOVERY_FAILED,
                                         .message = error->message });
    g_autoptr(GError) e = g_error_new(error->domain, error->code,
                                      "vm %s: resume after migration: %s", vm->id, error->message);
    finish_finalize(vm, e);
    return;
  }
  vm->state = FERRY_VM_RUNNING;
  vm_notify(vm, (FerryVmNotification){ .phase = FERRY_VM_PHASE_RECOVERY_DONE,
                                       .result = FERRY_VM_RESULT_SUCCESS });
  migration_end(vm);
  finish_finalize(vm, NULL);
}

/* Source RESUME once no transfer runs: the guest runs here again. */
static void rollback_cont(FerryVm *vm)
{
  ferry_qmp_execute(vm->qmp, "cont", NULL, 0, on_rollback_cont, vm);
}

static void on_destination_cont(FerryQmp *qmp, json_t *result, const GError *error, gpointer ud)
{
  FerryVm *vm = ud;
  if (error != NULL) {
    g_autoptr(GError) e =
        g_error_new(error->domain, error->code, "vm %s: resume: %s", vm->id, error->message);
    finish_finalize(vm, e);
    return;
  }
  vm->state = FERRY_VM_RUNNING;
  blackout_exited(vm, g_get_real_time());
  vm_notify(
      vm, (FerryVmNotification){ .phase = FERRY_VM_PHASE_DONE, .result = FERRY_VM_RESULT_SUCCESS });
  migration_end(vm);
  finish_finalize(vm, NULL);
}

static void on_stopped_for_finalize(FerryVm *vm, const GError *error, gpointer ud)
{
  /* vm_killed() finished the finalize. */
}

/* finalize STOP of a VM whose QEMU is gone already: from the main loop. */
static void finalize_exited_later(FerryVm *vm, gpointer unused)
{
  if (!vm->freeing && vm->finalize_op != NULL)
    vm_killed(vm);
}

/* finalize RESUME of a destination that already runs (post-copy): from the main loop. */
static void destination_running_later(FerryVm *vm, gpointer unused)
{
  if (!vm->freeing && vm->finalize_op != NULL)
    on_destination_cont(vm->qmp, NULL, NULL, vm);
}

void ferry_vm_migration_finalize(FerryVm *vm, FerryVmFinalize action, gint64 blackout_started_us,
                                 FerryVmDoneFunc done, gpointer user_data)
{
  const char *what = action == FERRY_VM_FINALIZE_STOP ? "finalize STOP" : "finalize RESUME";
  GError *e = NULL;
  if (action != FERRY_VM_FINALIZE_STOP && action != FERRY_VM_FINALIZE_RESUME)
    e = g_error_new(FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "vm %s: finalize: unknown action %d",
                    vm->id, (int)action);
  else if (vm->origin == 0)
    e = precondition(vm, what, "no migration is in progress");
  else if (vm->finalize_op != NULL)
    e = precondition(vm, what, "a finalize is in progress");
  else if (vm->state == FERRY_VM_EXITED && !(action == FERRY_VM_FINALIZE_STOP))
    e = precondition(vm, what, "QEMU has exited");
  else if (vm->origin == FERRY_VM_ORIGIN_SOURCE && action == FERRY_VM_FINALIZE_STOP &&
           vm->mig != MIG_COMPLETED)
    e = precondition(vm, what, "the transfer has not completed");
  else if (vm->origin == FERRY_VM_ORIGIN_SOURCE && action == FERRY_VM_FINALIZE_RESUME &&
           (vm->postcopy_requested || vm->postcopy_active))
    e = precondition(vm, what, "the guest runs on the destination since the switch to post-copy");
  else if (vm->origin == FERRY_VM_ORIGIN_DESTINATION && action == FERRY_VM_FINALIZE_RESUME &&
           vm->mig != MIG_COMPLETED && !vm->postcopy_active)
    e = precondition(vm, what, "the transfer has not completed");
  if (e != NULL) {
    op_finish_later(vm, done, user_data, e);
    return;
  }
  vm->finalize_op = op_new(vm, done, user_data);
  vm->finalize_action = action;
  if (action == FERRY_VM_FINALIZE_STOP) {
    if (vm->state == FERRY_VM_EXITED) {
      vm_later(vm, finalize_exited_later, NULL); /* never inside this call (vm.h) */
      return;
    }
    ferry_vm_terminate(vm, on_stopped_for_finalize, NULL);
    return;
  }
  if (vm->origin == FERRY_VM_ORIGIN_SOURCE) {
    if (vm->mig == MIG_TRANSFERRING) {
      vm->cancel_requested = TRUE;
      qmp_fire(vm, "migrate_cancel", NULL); /* rollback_cont() follows the cancelled event */
      return;
    }
    rollback_cont(vm);
    return;
  }
  if (blackout_started_us != 0)
    vm->blackout_started_us = blackout_started_us;
  if (vm->state == FERRY_VM_RUNNING) {
    vm_later(vm, destination_running_later, NULL); /* already runs (post-copy) */
    return;
  }
  ferry_qmp_execute(vm->qmp, "cont", NULL, 0, on_destination_cont, vm);
}

void ferry_vm_migration_cancel(FerryVm *vm, FerryVmDoneFunc done, gpointer user_data)
{
  GError *e = NULL;
  if (vm->origin == 0 || vm->mig == MIG_FAILED)
    e = precondition(vm, "cancel migration", "no migration is in progress");
  else if (vm->finalize_op != NULL)
    e = precondition(vm, "cancel migration", "a finalize is in progress");
  else if (vm->postcopy_requested || vm->postcopy_active)
    e = precondition(vm, "cancel migration",
                     "the guest runs on the destination since the switch to post-copy");
  else if (vm->origin == FERRY_VM_ORIGIN_SOURCE && vm->mig == MIG_COMPLETED)
    e = precondition(vm, "cancel migration",
                     "the transfer has completed: finalize RESUME rolls it back");
  if (e != NULL) {
    op_finish_later(vm, done, user_data, e);
    return;
  }
  vm->cancel_requested = TRUE;
  if (vm->origin == FERRY_VM_ORIGIN_DESTINATION) {
    ferry_vm_terminate(vm, done, user_data); /* FAILED (CANCELLED) follows the exit */
    return;
  }
  if (vm->mig == MIG_TRANSFERRING) {
    qmp_fire(vm, "migrate_cancel", NULL);
    op_finish_later(vm, done, user_data, NULL); /* FAILED (CANCELLED) follows the event */
    return;
  }
  /* Initialised, nothing sent yet: leave migration mode here. */
  migration_failed(vm, FERRY_VM_RESULT_CANCELLED);
  migration_end(vm);
  op_finish_later(vm, done, user_data, NULL);
}
