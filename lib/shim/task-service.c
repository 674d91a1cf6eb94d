/* containerd's Task API over one Ferry sandbox (include/ferry/task-service.h). */
#include "ferry/task-service.h"

#include <signal.h>
#include <string.h>
#include <unistd.h>

#include "cgroups/v2/metrics.pb-c.h"
#include "containerd/events/task.pb-c.h"
#include "containerd/task/v2/shim.pb-c.h"
#include "ferry/cmd.h"
#include "ferry/error.h"
#include "ferry/fd.h"
#include "ferry/json.h"
#include "ferry/layer-store.h"
#include "ferry/log.h"
#include "ferry/rootfs.h"
#include "ferry/sandbox.h"
#include "ferry/shim-events.h"
#include "ferry/source.h"
#include "shim-private.h"

#define SHIM_VERSION "0.1"

static void process_free(gpointer p);
static FerryGuestContainer *running_container(FerryTaskService *svc, FerryTtrpcCall *call,
                                              const char *id, const char *what, Task **task);

/* -------------------------------------------------------------- helpers -- */

static void set_timestamp(Google__Protobuf__Timestamp *ts, gint64 us)
{
  ts->seconds = us / G_USEC_PER_SEC;
  ts->nanos = (int32_t)((us % G_USEC_PER_SEC) * 1000);
}

static void reply_empty(FerryTtrpcCall *call)
{
  Google__Protobuf__Empty empty = GOOGLE__PROTOBUF__EMPTY__INIT;
  ferry_ttrpc_call_reply(call, &empty.base);
}

static const char *str_or_empty(const char *s)
{
  return s != NULL ? s : "";
}

static Task *task_lookup(FerryTaskService *svc, const char *id, GError **error)
{
  Task *t = id != NULL ? g_hash_table_lookup(svc->tasks, id) : NULL;
  if (t == NULL || t->deleting)
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND, "task %s not found", str_or_empty(id));
  return t;
}

static Process *process_lookup(FerryTaskService *svc, const char *id, const char *exec_id,
                               GError **error)
{
  Task *t = task_lookup(svc, id, error);
  if (t == NULL)
    return NULL;
  if (!t->ready) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION, "task %s is being created",
                id);
    return NULL;
  }
  if (exec_id == NULL || exec_id[0] == '\0')
    return t->init;
  Process *p = g_hash_table_lookup(t->execs, exec_id);
  if (p == NULL)
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND, "process %s of task %s not found",
                exec_id, id);
  return p;
}

static Process *process_new(Task *t, const char *exec_id, json_t *spec, const char *in,
                            const char *out, const char *err, gboolean terminal)
{
  Process *p = g_new0(Process, 1);
  p->task = t;
  p->exec_id = g_strdup(str_or_empty(exec_id));
  p->spec = json_incref(spec);
  p->in = g_strdup(str_or_empty(in));
  p->out = g_strdup(str_or_empty(out));
  p->err = g_strdup(str_or_empty(err));
  p->terminal = terminal;
  p->status = PROC_CREATED;
  p->io = (ShimStdio){ .fds = { -1, -1, -1 } };
  p->waiters = g_ptr_array_new();
  return p;
}

static void process_free(gpointer ptr)
{
  Process *p = ptr;
  if (p == NULL)
    return;
  ferry_cmd_free(p->cmd);
  shim_stdio_close(&p->io);
  shim_stdio_stop_logger(&p->io);
  for (guint i = 0; i < p->waiters->len; i++)
    ferry_ttrpc_call_reply_error(p->waiters->pdata[i], FERRY_ERROR_UNAVAILABLE,
                                 "the shim is shutting down");
  g_ptr_array_unref(p->waiters);
  json_decref(p->spec);
  g_free(p->exec_id);
  g_free(p->in);
  g_free(p->out);
  g_free(p->err);
  g_free(p);
}

static void task_free(gpointer ptr)
{
  Task *t = ptr;
  g_hash_table_unref(t->execs);
  process_free(t->init);
  json_decref(t->spec);
  g_free(t->id);
  g_free(t->bundle);
  g_free(t->source_id);
  g_free(t);
}

static void publish(FerryTaskService *svc, const char *topic, const ProtobufCMessage *event)
{
  ferry_shim_events_publish(svc->events, topic, event);
}

/* Shutdown asked and nothing left: tell the program, from the loop. */
static gboolean on_shutdown_idle(gpointer ud)
{
  FerryTaskService *svc = ud;
  ferry_source_clear(&svc->shutdown_idle);
  if (svc->handlers.shutdown != NULL)
    svc->handlers.shutdown(svc, svc->user_data);
  return G_SOURCE_REMOVE;
}

static void maybe_shutdown(FerryTaskService *svc)
{
  if (svc->shutdown_asked && g_hash_table_size(svc->tasks) == 0 && svc->shutdown_idle == NULL)
    svc->shutdown_idle = ferry_idle_new(svc->context, on_shutdown_idle, svc);
}

/* Where `delete` finds the QEMU to kill after a crash (qemu.pid), and the VM document as
 * it stands now (vm.json: with the task's layer disks attached), for tools that inspect
 * the sandbox (docs/shim.md). */
static void record_vm(FerryTaskService *svc, Task *t)
{
  GPid pid = ferry_task_service_vm_pid(svc);
  g_autofree char *path = g_build_filename(t->bundle, "qemu.pid", NULL);
  g_autofree char *text = g_strdup_printf("%d", pid);
  if (pid > 0)
    g_file_set_contents(path, text, -1, NULL);
  FerryVm *vm = svc->sandbox != NULL ? ferry_sandbox_get_vm(svc->sandbox) : NULL;
  if (vm != NULL) {
    g_autofree char *doc = ferry_vm_doc_to_string(ferry_vm_get_doc(vm));
    g_autofree char *doc_path = g_build_filename(t->bundle, "vm.json", NULL);
    g_file_set_contents(doc_path, doc, -1, NULL);
  }
}

/* ------------------------------------------------------- exit and events -- */

/* TaskExit of `p`: its id is the task's for the init, else the exec's. */
static void publish_exit(Process *p)
{
  Task *t = p->task;
  Google__Protobuf__Timestamp at = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
  set_timestamp(&at, p->exited_at_us);
  Containerd__Events__TaskExit ev = CONTAINERD__EVENTS__TASK_EXIT__INIT;
  ev.container_id = t->id;
  ev.id = p == t->init ? t->id : p->exec_id;
  ev.pid = p->pid;
  ev.exit_status = p->exit_status;
  ev.exited_at = &at;
  publish(t->svc, "/tasks/exit", &ev.base);
}

/* TaskOOM: an OOM kill in the container (its id only, as runc's shim sends it). */
static void publish_oom(Task *t)
{
  Containerd__Events__TaskOOM ev = CONTAINERD__EVENTS__TASK_OOM__INIT;
  ev.container_id = t->id;
  publish(t->svc, "/tasks/oom", &ev.base);
}

/* containerd's order: an exec's TaskExit before the init's. */
static void publish_init_exit_if_due(Task *t)
{
  if (!t->init_exit_due)
    return;
  GHashTableIter it;
  gpointer value;
  g_hash_table_iter_init(&it, t->execs);
  while (g_hash_table_iter_next(&it, NULL, &value)) {
    Process *e = value;
    if (e->status == PROC_RUNNING || e->starting)
      return;
  }
  t->init_exit_due = FALSE;
  publish_exit(t->init);
}

static void answer_wait(FerryTtrpcCall *call, Process *p)
{
  Google__Protobuf__Timestamp at = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
  set_timestamp(&at, p->exited_at_us);
  Containerd__Task__V2__WaitResponse resp = CONTAINERD__TASK__V2__WAIT_RESPONSE__INIT;
  resp.exit_status = p->exit_status;
  resp.exited_at = &at;
  ferry_ttrpc_call_reply(call, &resp.base);
}

static void on_exited(int code, const GError *error, gpointer ud)
{
  Process *p = ud;
  Task *t = p->task;
  p->status = PROC_STOPPED;
  /* A process whose exit the guest could not tell (the VM died): 255, as runc's shim
   * reports a lost process. */
  p->exit_status =
      error == NULL || g_error_matches(error, FERRY_ERROR, FERRY_ERROR_DEADLINE_EXCEEDED)
          ? (guint32)code
          : 255;
  p->exited_at_us = g_get_real_time();
  shim_stdio_stop_logger(&p->io);
  g_autoptr(GPtrArray) waiters = g_steal_pointer(&p->waiters);
  p->waiters = g_ptr_array_new();
  for (guint i = 0; i < waiters->len; i++)
    answer_wait(waiters->pdata[i], p);
  if (p == t->init) {
    t->init_exit_due = TRUE;
  } else {
    publish_exit(p);
  }
  publish_init_exit_if_due(t);
}

/* --------------------------------------------------------------- start -- */

typedef struct {
  Process *p;
  FerryTtrpcCall *call;
} StartOp;

static void on_started(const GError *error, gpointer ud)
{
  StartOp *op = ud;
  Process *p = op->p;
  FerryTtrpcCall *call = op->call;
  g_free(op);
  p->starting = FALSE;
  Task *t = p->task;
  if (error != NULL) {
    g_clear_pointer(&p->cmd, ferry_cmd_free);
    shim_stdio_stop_logger(&p->io);
    ferry_ttrpc_call_reply_gerror(call, error);
    publish_init_exit_if_due(t);
    return;
  }
  p->pid = ferry_guest_process_get_pid(ferry_cmd_get_process(p->cmd));
  p->status = PROC_RUNNING;
  Containerd__Task__V2__StartResponse resp = CONTAINERD__TASK__V2__START_RESPONSE__INIT;
  resp.pid = p->pid;
  ferry_ttrpc_call_reply(call, &resp.base);
  if (p == t->init) {
    Containerd__Events__TaskStart ev = CONTAINERD__EVENTS__TASK_START__INIT;
    ev.container_id = t->id;
    ev.pid = p->pid;
    publish(t->svc, "/tasks/start", &ev.base);
    if (t->oom_due) {
      t->oom_due = FALSE;
      publish_oom(t);
    }
  } else {
    Containerd__Events__TaskExecStarted ev = CONTAINERD__EVENTS__TASK_EXEC_STARTED__INIT;
    ev.container_id = t->id;
    ev.exec_id = p->exec_id;
    ev.pid = p->pid;
    publish(t->svc, "/tasks/exec-started", &ev.base);
  }
  ferry_cmd_wait(p->cmd, on_exited, p);
}

static void process_start(Process *p, FerryTtrpcCall *call)
{
  Task *t = p->task;
  FerryTaskService *svc = t->svc;
  FerryGuestConnection *gc = ferry_sandbox_get_guest(svc->sandbox);
  FerryGuestContainer *c = ferry_sandbox_get_container(svc->sandbox, t->id);
  if (gc == NULL || c == NULL) {
    ferry_ttrpc_call_reply_error(call, FERRY_ERROR_FAILED_PRECONDITION,
                                 "task %s: the sandbox's VM is not running", t->id);
    return;
  }
  g_autoptr(GError) error = NULL;
  /* A terminal has one stream: stdout carries it, there is no stderr. */
  if (!shim_stdio_open(&p->io, t->id, svc->namespace, p->in, p->out, p->terminal ? "" : p->err,
                       &error)) {
    ferry_ttrpc_call_reply_gerror(call, error);
    return;
  }
  g_autoptr(json_t) process = json_deep_copy(p->spec);
  json_object_set_new(process, "terminal", json_boolean(p->terminal));
  g_autoptr(json_t) params = json_pack("{s:O}", "OciProcess", process);
  if (p->terminal)
    json_object_set_new(params, "EmulateConsole", json_true());
  FerryCmdIo io = { p->io.fds[0], p->io.fds[1], p->io.fds[2] };
  p->io.fds[0] = p->io.fds[1] = p->io.fds[2] = -1; /* the command owns them now */
  p->cmd = ferry_cmd_new(gc, c, ferry_sandbox_get_ports(svc->sandbox), params, io);
  p->starting = TRUE;
  StartOp *op = g_new0(StartOp, 1);
  op->p = p;
  op->call = call;
  ferry_cmd_start(p->cmd, on_started, op);
}

/* -------------------------------------------------------------- create -- */

typedef struct {
  FerryTaskService *svc;
  Task *task;
  FerryTtrpcCall *call;
  const Containerd__Task__V2__CreateTaskRequest *req;
  FerryRootfsLayers *layers;
} CreateOp;

static void create_op_free(CreateOp *op)
{
  if (op->layers != NULL)
    ferry_rootfs_layers_free(op->layers);
  g_free(op);
}

static void create_fail(CreateOp *op, const GError *error)
{
  FerryTaskService *svc = op->svc;
  Task *t = op->task;
  g_autoptr(GError) e = g_error_copy(error);
  g_prefix_error(&e, "create task %s: ", t->id);
  ferry_ttrpc_call_reply_gerror(op->call, e);
  if (t->root_attached && svc->sandbox != NULL)
    ferry_sandbox_detach_root(svc->sandbox, t->id, NULL, NULL);
  g_hash_table_remove(svc->tasks, t->id);
  create_op_free(op);
  maybe_shutdown(svc);
}

/* The spec as the guest runs it: the root is the combined layers in the guest's bundle;
 * what names the host (bind mounts of host paths, namespace paths, hooks, host security
 * labels) has no meaning there and goes. */
static json_t *guest_spec(json_t *spec)
{
  json_t *g = json_deep_copy(spec);
  json_t *root = json_object_get(g, "root");
  gboolean readonly = json_is_true(json_object_get(root, "readonly"));
  json_object_set_new(g, "root", json_pack("{s:s, s:b}", "path", "rootfs", "readonly", readonly));
  json_t *mounts = json_object_get(g, "mounts");
  if (json_is_array(mounts)) {
    for (gsize i = json_array_size(mounts); i > 0; i--) {
      json_t *m = json_array_get(mounts, i - 1);
      const char *type = json_string_value(json_object_get(m, "type"));
      const char *source = json_string_value(json_object_get(m, "source"));
      gboolean bind = type == NULL || g_str_equal(type, "bind") || g_str_equal(type, "none");
      if (bind && source != NULL && source[0] == '/')
        json_array_remove(mounts, i - 1);
    }
  }
  json_t *linux_ = json_object_get(g, "linux");
  json_t *ns = json_object_get(linux_, "namespaces");
  for (gsize i = 0; json_is_array(ns) && i < json_array_size(ns); i++)
    json_object_del(json_array_get(ns, i), "path");
  json_object_del(g, "hooks");
  json_object_del(json_object_get(g, "process"), "apparmorProfile");
  json_object_del(json_object_get(g, "process"), "selinuxLabel");
  json_object_del(linux_, "mountLabel");
  return g;
}

static void on_container_created(FerrySandbox *sandbox, const GError *error, gpointer ud)
{
  CreateOp *op = ud;
  if (error != NULL) {
    create_fail(op, error);
    return;
  }
  Task *t = op->task;
  t->ready = TRUE;
  record_vm(op->svc, t);
  Containerd__Task__V2__CreateTaskResponse resp = CONTAINERD__TASK__V2__CREATE_TASK_RESPONSE__INIT;
  ferry_ttrpc_call_reply(op->call, &resp.base);
  const Containerd__Task__V2__CreateTaskRequest *req = op->req;
  Containerd__Events__TaskIO io = CONTAINERD__EVENTS__TASK_IO__INIT;
  io.stdin = t->init->in;
  io.stdout = t->init->out;
  io.stderr = t->init->err;
  io.terminal = t->init->terminal;
  Containerd__Events__TaskCreate ev = CONTAINERD__EVENTS__TASK_CREATE__INIT;
  ev.container_id = t->id;
  ev.bundle = t->bundle;
  (void)req; /* its rootfs mounts are the host's snapshot; the event names the task */
  ev.io = &io;
  publish(op->svc, "/tasks/create", &ev.base);
  create_op_free(op);
}

static void on_root_attached(FerrySandbox *sandbox, const GError *error, gpointer ud)
{
  CreateOp *op = ud;
  if (error != NULL) {
    create_fail(op, error);
    return;
  }
  Task *t = op->task;
  t->root_attached = TRUE;
  g_autofree char *bundle = ferry_sandbox_guest_bundle(t->id);
  g_autoptr(json_t) spec = guest_spec(t->spec);
  g_autoptr(json_t) config =
      json_pack("{s:{s:i,s:i}, s:s, s:O}", "SchemaVersion", "Major", 2, "Minor", 1, "OciBundlePath",
                bundle, "OciSpecification", spec);
  ferry_sandbox_create_container(sandbox, t->id, config, on_container_created, op);
}

static void on_images(FerryRootfsBuilder *builder, FerryRootfsImages *built, const GError *error,
                      gpointer ud)
{
  g_autoptr(FerryRootfsImages) images = built; /* ours to free */
  CreateOp *op = ud;
  if (error != NULL) {
    create_fail(op, error);
    return;
  }
  g_autofree FerrySandboxLayer *layers = g_new0(FerrySandboxLayer, images->n_images);
  for (guint i = 0; i < images->n_images; i++) {
    layers[i].path = images->images[i].path;
    layers[i].digest = images->images[i].image_sha256;
  }
  ferry_sandbox_attach_root(op->svc->sandbox, op->task->id, layers, images->n_images,
                            op->svc->scratch_mb, on_root_attached, op);
}

/* The VM runs: build the root's images. */
static void create_with_sandbox(CreateOp *op)
{
  ferry_rootfs_builder_build(op->svc->builder, op->layers, NULL, on_images, op);
}

static void on_booted(FerrySandbox *sandbox, const GError *error, gpointer ud)
{
  FerryTaskService *svc = ud;
  svc->booting = FALSE;
  if (error != NULL)
    svc->boot_error = g_error_copy(error);
  g_autoptr(GPtrArray) waiting = g_steal_pointer(&svc->boot_waiters);
  svc->boot_waiters = g_ptr_array_new();
  for (guint i = 0; i < waiting->len; i++) {
    if (error != NULL)
      create_fail(waiting->pdata[i], error);
    else
      create_with_sandbox(waiting->pdata[i]);
  }
}

static void on_migration_note(FerrySandbox *sandbox, const FerryVmNotification *note, gpointer ud)
{
  shim_migration_on_note(ud, note);
}

static void on_vm_exited(FerrySandbox *sandbox, const GError *error, gpointer ud)
{
  FerryTaskService *svc = ud;
  ferry_log(FERRY_LOG_WARNING, "shim: the sandbox's VM exited", "sandbox", svc->sandbox_id, "error",
            error != NULL ? error->message : "none", NULL);
  /* The processes' waits fail on their own (the bridge is gone): each reports 255. */
}

/* containerd's TaskOOM (runc's shim publishes it when the container's memory.events
 * oom_kill rises). It comes in the guest's order, so before the TaskExit of a process the
 * kill ended. */
static void on_container_oom(FerrySandbox *sandbox, const char *container_id, gpointer ud)
{
  FerryTaskService *svc = ud;
  Task *t = g_hash_table_lookup(svc->tasks, container_id);
  if (t == NULL || t->deleting)
    return;
  if (t->init == NULL || t->init->status == PROC_CREATED) {
    t->oom_due = TRUE; /* containerd hears of the task's start first */
    return;
  }
  publish_oom(t);
}

/* A migration destination's guest connection was rebuilt: reopen every bound process
 * that runs, on the stdio this host's containerd gave it, before the connection
 * negotiates (so that the guest's kept answers to their waits are routed here). */
static void reopen_process(FerryTaskService *svc, Task *t, Process *p, FerryGuestContainer *c)
{
  if (!p->imported || p->status != PROC_RUNNING)
    return;
  p->imported = FALSE;
  g_autoptr(GError) error = NULL;
  g_autoptr(FerryGuestProcess) gp =
      ferry_guest_container_open_process_with_io(c, p->pid, p->ms.stdin_port, p->ms.stdout_port,
                                                 p->ms.stderr_port, p->ms.wait_call_id, &error);
  if (gp == NULL || !shim_stdio_open(&p->io, t->id, svc->namespace, p->in, p->out,
                                     p->terminal ? "" : p->err, &error)) {
    ferry_log(FERRY_LOG_WARNING, "shim: a migrated process could not be reopened", "task", t->id,
              "exec", p->exec_id, "error", error->message, NULL);
    return;
  }
  ferry_guest_process_set_serial(gp, p->ms.serial);
  /* A stream that had ended on the source has no channel any more. */
  for (int i = 0; i < 3; i++) {
    if (p->stream_done[i] && p->io.fds[i] >= 0)
      ferry_fd_clear(&p->io.fds[i]);
  }
  FerryCmdIo io = { p->io.fds[0], p->io.fds[1], p->io.fds[2] };
  p->io.fds[0] = p->io.fds[1] = p->io.fds[2] = -1;
  p->cmd = ferry_cmd_attach(gp, ferry_sandbox_get_ports(svc->sandbox), io);
  ferry_cmd_wait(p->cmd, on_exited, p);
}

static void on_restore(FerrySandbox *sandbox, FerryGuestConnection *gc, gpointer ud)
{
  FerryTaskService *svc = ud;
  GHashTableIter it;
  gpointer value;
  g_hash_table_iter_init(&it, svc->tasks);
  while (g_hash_table_iter_next(&it, NULL, &value)) {
    Task *t = value;
    FerryGuestContainer *c = ferry_sandbox_get_container(sandbox, t->source_id ?: t->id);
    if (t->source_id == NULL || c == NULL)
      continue;
    reopen_process(svc, t, t->init, c);
    GHashTableIter eit;
    gpointer ev;
    g_hash_table_iter_init(&eit, t->execs);
    while (g_hash_table_iter_next(&eit, NULL, &ev))
      reopen_process(svc, t, ev, c);
  }
}

FerrySandbox *shim_sandbox_new(FerryTaskService *svc, GError **error)
{
  FerrySandboxConfig cfg = {
    .id = svc->sandbox_id,
    .state_dir = svc->state_dir,
    .kernel = svc->kernel,
    .initrd = svc->initrd,
    .memory_mb = svc->memory_mb,
    .cpus = svc->cpus,
    .boot_timeout_ms = svc->boot_timeout_ms,
    .vm = svc->vm,
  };
  static const FerrySandboxHandlers handlers = { .vm_exited = on_vm_exited,
                                                 .container_oom = on_container_oom,
                                                 .migration_note = on_migration_note,
                                                 .restore = on_restore };
  return ferry_sandbox_new(&cfg, &handlers, svc, error);
}

void shim_record_vms(FerryTaskService *svc)
{
  GHashTableIter it;
  gpointer value;
  g_hash_table_iter_init(&it, svc->tasks);
  while (g_hash_table_iter_next(&it, NULL, &value))
    record_vm(svc, value);
}

void shim_publish_imported(FerryTaskService *svc)
{
  GHashTableIter it;
  gpointer value;
  g_hash_table_iter_init(&it, svc->tasks);
  while (g_hash_table_iter_next(&it, NULL, &value)) {
    Task *t = value;
    if (t->source_id == NULL)
      continue;
    Containerd__Events__TaskIO io = CONTAINERD__EVENTS__TASK_IO__INIT;
    io.stdin = t->init->in;
    io.stdout = t->init->out;
    io.stderr = t->init->err;
    io.terminal = t->init->terminal;
    Containerd__Events__TaskCreate ev = CONTAINERD__EVENTS__TASK_CREATE__INIT;
    ev.container_id = t->id;
    ev.bundle = t->bundle;
    ev.io = &io;
    ev.pid = t->init->pid;
    publish(svc, "/tasks/create", &ev.base);
  }
}

static gboolean ensure_sandbox(FerryTaskService *svc, CreateOp *op, GError **error)
{
  if (svc->boot_error != NULL) {
    g_propagate_error(error, g_error_copy(svc->boot_error));
    return FALSE;
  }
  if (svc->sandbox != NULL && ferry_sandbox_is_running(svc->sandbox)) {
    create_with_sandbox(op);
    return TRUE;
  }
  if (svc->sandbox != NULL && !svc->booting) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE, "the sandbox's VM is not running");
    return FALSE;
  }
  if (svc->sandbox == NULL) {
    svc->sandbox = shim_sandbox_new(svc, error);
    if (svc->sandbox == NULL)
      return FALSE;
    svc->booting = TRUE;
    ferry_sandbox_start(svc->sandbox, on_booted, svc);
  }
  g_ptr_array_add(svc->boot_waiters, op);
  return TRUE;
}

static json_t *load_spec(const char *bundle, GError **error)
{
  g_autofree char *path = g_build_filename(bundle, "config.json", NULL);
  g_autofree char *text = NULL;
  if (!g_file_get_contents(path, &text, NULL, error))
    return NULL;
  json_error_t jerr;
  json_t *spec = json_loads(text, 0, &jerr);
  if (!json_is_object(spec) || !json_is_object(json_object_get(spec, "process"))) {
    json_decref(spec);
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                "%s is not an OCI spec with a process%s%s", path, jerr.text[0] ? ": " : "",
                jerr.text);
    return NULL;
  }
  return spec;
}

static FerryRootfsLayers *request_layers(const Containerd__Task__V2__CreateTaskRequest *req,
                                         json_t *spec, GError **error)
{
  if (req->n_rootfs > 0) {
    g_autofree FerryRootfsMount *mounts = g_new0(FerryRootfsMount, req->n_rootfs);
    for (gsize i = 0; i < req->n_rootfs; i++) {
      mounts[i].type = req->rootfs[i]->type;
      mounts[i].source = req->rootfs[i]->source;
      mounts[i].options = (const char *const *)req->rootfs[i]->options;
      mounts[i].n_options = req->rootfs[i]->n_options;
    }
    return ferry_rootfs_layers_from_mounts(mounts, req->n_rootfs, error);
  }
  const char *root = json_string_value(json_object_get(json_object_get(spec, "root"), "path"));
  if (root == NULL || root[0] == '\0') {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                "no rootfs mounts and no root.path in the spec");
    return NULL;
  }
  g_autofree char *dir =
      g_path_is_absolute(root) ? g_strdup(root) : g_build_filename(req->bundle, root, NULL);
  if (!g_file_test(dir, G_FILE_TEST_IS_DIR)) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND, "the root file system %s is not there",
                dir);
    return NULL;
  }
  return ferry_rootfs_layers_from_directory(dir, error);
}

/* ---- a Create that binds an imported container (a migration destination) ---- */

typedef struct {
  FerryTaskService *svc;
  FerryTtrpcCall *call;
  Task *task;
  FerryRootfsLayers *layers;
} BindOp;

static void bind_fail(BindOp *op, const GError *error)
{
  g_autoptr(GError) e = g_error_copy(error);
  g_prefix_error(&e, "create task %s: bind the migrated container: ", op->task->id);
  ferry_ttrpc_call_reply_gerror(op->call, e);
  g_hash_table_remove(op->svc->tasks, op->task->id);
  ferry_rootfs_layers_free(op->layers);
  FerryTaskService *svc = op->svc;
  g_free(op);
  shim_migration_bind_end(svc);
}

static Process *bound_process(Task *t, const Ferry__V1__Process *sp, json_t *spec, const char *in,
                              const char *out, const char *err)
{
  Process *p = process_new(t, sp->exec_id, spec, in, out, err, sp->terminal);
  p->pid = sp->pid;
  p->imported = TRUE;
  switch (sp->status) {
  case FERRY__V1__PROCESS_STATUS__PROCESS_STATUS_RUNNING:
    p->status = PROC_RUNNING;
    break;
  case FERRY__V1__PROCESS_STATUS__PROCESS_STATUS_EXITED:
    p->status = PROC_STOPPED;
    p->exit_status = sp->exit_status;
    p->exited_at_us = sp->exited_at != NULL
                          ? sp->exited_at->seconds * G_USEC_PER_SEC + sp->exited_at->nanos / 1000
                          : g_get_real_time();
    p->exit_published = sp->exit_published;
    break;
  default:
    p->status = PROC_CREATED;
    break;
  }
  if (sp->migration != NULL) {
    p->ms.stdin_port = sp->migration->stdin_port;
    p->ms.stdout_port = sp->migration->stdout_port;
    p->ms.stderr_port = sp->migration->stderr_port;
    p->ms.wait_call_id = sp->migration->wait_call_id;
    p->ms.serial = sp->migration->serial;
    p->stream_done[0] = sp->migration->stdin_done;
    p->stream_done[1] = sp->migration->stdout_done;
    p->stream_done[2] = sp->migration->stderr_done;
  }
  return p;
}

static void on_bound_images(FerryRootfsBuilder *builder, FerryRootfsImages *built,
                            const GError *error, gpointer ud)
{
  g_autoptr(FerryRootfsImages) images = built;
  BindOp *op = ud;
  if (error != NULL) {
    bind_fail(op, error);
    return;
  }
  Task *t = op->task;
  g_autoptr(GError) local = NULL;
  const Ferry__V1__Container *c = shim_migration_container_to_bind(op->svc, t->source_id, &local);
  if (c == NULL) {
    bind_fail(op, local);
    return;
  }
  /* The destination must hold byte-identical layers: compare by digest. */
  if (c->n_layer_digests != images->n_images) {
    g_set_error(&local, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION,
                "the root has %u layers here, %zu on the source", images->n_images,
                c->n_layer_digests);
    bind_fail(op, local);
    return;
  }
  g_autoptr(GHashTable) map = g_hash_table_new(g_str_hash, g_str_equal);
  for (guint i = 0; i < images->n_images; i++) {
    if (g_strcmp0(images->images[i].image_sha256, c->layer_digests[i]) != 0) {
      g_set_error(&local, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION,
                  "layer %u differs: %s here, %s on the source", i, images->images[i].image_sha256,
                  c->layer_digests[i]);
      bind_fail(op, local);
      return;
    }
    g_hash_table_insert(map, images->images[i].image_sha256, images->images[i].path);
  }
  /* The processes as the source left them; the init takes this host's stdio. */
  for (size_t i = 0; i < c->n_processes; i++) {
    const Ferry__V1__Process *sp = c->processes[i];
    if (sp->exec_id[0] == '\0') {
      Process *init = t->init;
      t->init =
          bound_process(t, sp, json_object_get(t->spec, "process"), init->in, init->out, init->err);
      process_free(init);
    } else {
      json_error_t jerr;
      g_autoptr(json_t) spec = json_loads(sp->spec_json, 0, &jerr);
      Process *p = bound_process(t, sp, spec, "", "", "");
      g_hash_table_insert(t->execs, p->exec_id, p);
    }
  }
  shim_migration_container_bound(op->svc, t->source_id, map);
  t->ready = TRUE;
  t->root_attached = TRUE;
  Containerd__Task__V2__CreateTaskResponse resp = CONTAINERD__TASK__V2__CREATE_TASK_RESPONSE__INIT;
  resp.pid = t->init->pid;
  ferry_ttrpc_call_reply(op->call, &resp.base);
  ferry_rootfs_layers_free(op->layers);
  FerryTaskService *svc = op->svc;
  g_free(op);
  shim_migration_bind_end(svc);
}

/* ---- layer images that travelled: checked against their digests off the loop ---- */

typedef struct {
  char *dir;
  GStrv digests; /* the imported container's, top first */
} StoreCheck;

static void store_check_free(gpointer p)
{
  StoreCheck *c = p;
  g_free(c->dir);
  g_strfreev(c->digests);
  g_free(c);
}

static void store_check_run(GTask *task, gpointer source, gpointer data, GCancellable *cancel)
{
  StoreCheck *c = data;
  FerryRootfsImages *images = g_new0(FerryRootfsImages, 1);
  guint n = g_strv_length(c->digests);
  images->images = g_new0(FerryRootfsImage, n);
  images->mkfs_version = g_strdup("travelled");
  for (guint i = 0; i < n; i++) {
    const char *hex = ferry_layer_digest_hex(c->digests[i]);
    g_autofree char *name = hex != NULL ? g_strconcat(hex, ".erofs", NULL) : NULL;
    g_autofree char *path = name != NULL ? g_build_filename(c->dir, name, NULL) : NULL;
    g_autoptr(GError) error = NULL;
    g_autoptr(GMappedFile) file = path != NULL ? g_mapped_file_new(path, FALSE, &error) : NULL;
    if (hex == NULL) {
      g_task_return_new_error(task, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                              "layer %u's digest %s is no sha256", i, c->digests[i]);
    } else if (file == NULL) {
      g_task_return_new_error(task, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION,
                              "layer %u (%s) is not in %s: %s", i, c->digests[i], c->dir,
                              error->message);
    } else {
      g_autofree char *sum = g_compute_checksum_for_data(
          G_CHECKSUM_SHA256, (const guchar *)g_mapped_file_get_contents(file),
          g_mapped_file_get_length(file));
      if (g_strcmp0(sum, hex) == 0) {
        images->images[i].path = g_steal_pointer(&path);
        images->images[i].image_sha256 = g_strdup(c->digests[i]);
        images->images[i].size = g_mapped_file_get_length(file);
        images->n_images = i + 1;
        continue;
      }
      g_task_return_new_error(task, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION,
                              "layer %u: %s holds sha256:%s, not %s", i, path, sum, c->digests[i]);
    }
    ferry_rootfs_images_free(images);
    return;
  }
  g_task_return_pointer(task, images, (GDestroyNotify)ferry_rootfs_images_free);
}

static void on_bound_images(FerryRootfsBuilder *builder, FerryRootfsImages *built,
                            const GError *error, gpointer ud);

static void on_store_checked(GObject *source, GAsyncResult *result, gpointer ud)
{
  g_autoptr(GError) error = NULL;
  FerryRootfsImages *images = g_task_propagate_pointer(G_TASK(result), &error);
  on_bound_images(NULL, images, error, ud);
}

static void bind_imported(FerryTaskService *svc, FerryTtrpcCall *call,
                          const Containerd__Task__V2__CreateTaskRequest *req, json_t *spec,
                          FerryRootfsLayers *layers, const char *source_id)
{
  g_autoptr(GError) error = NULL;
  if (shim_migration_container_to_bind(svc, source_id, &error) == NULL) {
    ferry_rootfs_layers_free(layers);
    g_prefix_error(&error, "create task %s: ", req->id);
    ferry_ttrpc_call_reply_gerror(call, error);
    return;
  }
  Task *t = g_new0(Task, 1);
  t->svc = svc;
  t->id = g_strdup(req->id);
  t->bundle = g_strdup(req->bundle);
  t->spec = json_incref(spec);
  t->source_id = g_strdup(source_id);
  t->execs = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, process_free);
  t->init = process_new(t, "", json_object_get(spec, "process"), req->stdin, req->stdout,
                        req->stderr, req->terminal);
  g_hash_table_insert(svc->tasks, t->id, t);
  BindOp *op = g_new0(BindOp, 1);
  op->svc = svc;
  op->call = call;
  op->task = t;
  op->layers = layers;
  shim_migration_bind_begin(svc); /* a Cancel meanwhile waits for its end */
  const char *store = json_string_value(
      json_object_get(json_object_get(spec, "annotations"), SHIM_LAYER_DIR_ANNOTATION));
  if (store == NULL) {
    ferry_rootfs_builder_build(svc->builder, layers, NULL, on_bound_images, op);
    return;
  }
  /* The images travelled: check each one against the source's digest, off the loop. */
  const Ferry__V1__Container *c = shim_migration_container_to_bind(svc, source_id, NULL);
  StoreCheck *check = g_new0(StoreCheck, 1);
  check->dir = g_strdup(store);
  check->digests = g_new0(char *, c->n_layer_digests + 1);
  for (size_t i = 0; i < c->n_layer_digests; i++)
    check->digests[i] = g_strdup(c->layer_digests[i]);
  g_autoptr(GTask) task = g_task_new(NULL, NULL, on_store_checked, op);
  g_task_set_task_data(task, check, store_check_free);
  g_task_run_in_thread(task, store_check_run);
}

static void handle_create(FerryTtrpcCall *call, const ProtobufCMessage *request, gpointer ud)
{
  FerryTaskService *svc = ud;
  const Containerd__Task__V2__CreateTaskRequest *req = (const void *)request;
  g_autoptr(GError) error = NULL;
  if (req->id == NULL || req->id[0] == '\0' || req->bundle == NULL || req->bundle[0] == '\0') {
    ferry_ttrpc_call_reply_error(call, FERRY_ERROR_INVALID_ARGUMENT,
                                 "create: id and bundle are required");
    return;
  }
  if (g_hash_table_contains(svc->tasks, req->id)) {
    ferry_ttrpc_call_reply_error(call, FERRY_ERROR_ALREADY_EXISTS, "task %s already exists",
                                 req->id);
    return;
  }
  if (req->checkpoint != NULL && req->checkpoint[0] != '\0') {
    ferry_ttrpc_call_reply_error(call, FERRY_ERROR_UNIMPLEMENTED,
                                 "create task %s from a checkpoint: Ferry moves running "
                                 "sandboxes by live migration instead",
                                 req->id);
    return;
  }
  g_autoptr(json_t) spec = load_spec(req->bundle, &error);
  json_t *annotations = json_object_get(spec, "annotations");
  /* A binding Create with travelled images needs no rootfs in the bundle. */
  gboolean travelled = json_object_get(annotations, SHIM_LAYER_DIR_ANNOTATION) != NULL &&
                       (json_object_get(annotations, SHIM_SOURCE_CONTAINER_ANNOTATION) != NULL ||
                        json_object_get(annotations, SHIM_SOURCE_CONTAINER_ANNOTATION_HCS) != NULL);
  g_autoptr(FerryRootfsLayers) layers = spec == NULL ? NULL
                                        : travelled  ? g_new0(FerryRootfsLayers, 1)
                                                     : request_layers(req, spec, &error);
  if (layers == NULL) {
    g_prefix_error(&error, "create task %s: ", req->id);
    ferry_ttrpc_call_reply_gerror(call, error);
    return;
  }
  const char *source_id =
      json_string_value(json_object_get(annotations, SHIM_SOURCE_CONTAINER_ANNOTATION));
  if (source_id == NULL)
    source_id =
        json_string_value(json_object_get(annotations, SHIM_SOURCE_CONTAINER_ANNOTATION_HCS));
  if (source_id != NULL) {
    /* What a destination's session expects; every other Create waits for its end. */
    bind_imported(svc, call, req, spec, g_steal_pointer(&layers), source_id);
    return;
  }
  if (!shim_migration_allows_changes(svc, call))
    return;
  Task *t = g_new0(Task, 1);
  t->svc = svc;
  t->id = g_strdup(req->id);
  t->bundle = g_strdup(req->bundle);
  t->spec = json_incref(spec);
  t->execs = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, process_free);
  t->init = process_new(t, "", json_object_get(spec, "process"), req->stdin, req->stdout,
                        req->stderr, req->terminal);
  g_hash_table_insert(svc->tasks, t->id, t);
  CreateOp *op = g_new0(CreateOp, 1);
  op->svc = svc;
  op->task = t;
  op->call = call;
  op->req = req;
  op->layers = g_steal_pointer(&layers);
  if (!ensure_sandbox(svc, op, &error))
    create_fail(op, error);
}

/* ------------------------------------------------------ the other calls -- */

static void handle_start(FerryTtrpcCall *call, const ProtobufCMessage *request, gpointer ud)
{
  if (!shim_migration_allows_changes(ud, call))
    return;
  FerryTaskService *svc = ud;
  const Containerd__Task__V2__StartRequest *req = (const void *)request;
  g_autoptr(GError) error = NULL;
  Process *p = process_lookup(svc, req->id, req->exec_id, &error);
  if (p == NULL) {
    ferry_ttrpc_call_reply_gerror(call, error);
    return;
  }
  if (p->status != PROC_CREATED || p->starting || p->cmd != NULL) {
    ferry_ttrpc_call_reply_error(call, FERRY_ERROR_FAILED_PRECONDITION,
                                 "process %s of task %s was started already",
                                 p->exec_id[0] ? p->exec_id : "init", req->id);
    return;
  }
  if (p != p->task->init && p->task->init->status != PROC_RUNNING) {
    ferry_ttrpc_call_reply_error(call, FERRY_ERROR_FAILED_PRECONDITION, "task %s is not running",
                                 req->id);
    return;
  }
  process_start(p, call);
}

static void handle_state(FerryTtrpcCall *call, const ProtobufCMessage *request, gpointer ud)
{
  FerryTaskService *svc = ud;
  const Containerd__Task__V2__StateRequest *req = (const void *)request;
  g_autoptr(GError) error = NULL;
  Process *p = process_lookup(svc, req->id, req->exec_id, &error);
  if (p == NULL) {
    ferry_ttrpc_call_reply_gerror(call, error);
    return;
  }
  Google__Protobuf__Timestamp at = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
  Containerd__Task__V2__StateResponse resp = CONTAINERD__TASK__V2__STATE_RESPONSE__INIT;
  resp.id = p->task->id;
  resp.bundle = p->task->bundle;
  resp.pid = p->pid;
  resp.status = (Containerd__V1__Types__Status)p->status;
  if (p->status == PROC_RUNNING && p->task->paused)
    resp.status = CONTAINERD__V1__TYPES__STATUS__PAUSED;
  resp.stdin = p->in;
  resp.stdout = p->out;
  resp.stderr = p->err;
  resp.terminal = p->terminal;
  resp.exec_id = p->exec_id;
  if (p->status == PROC_STOPPED) {
    resp.exit_status = p->exit_status;
    set_timestamp(&at, p->exited_at_us);
    resp.exited_at = &at;
  }
  ferry_ttrpc_call_reply(call, &resp.base);
}

static void handle_wait(FerryTtrpcCall *call, const ProtobufCMessage *request, gpointer ud)
{
  FerryTaskService *svc = ud;
  const Containerd__Task__V2__WaitRequest *req = (const void *)request;
  g_autoptr(GError) error = NULL;
  Process *p = process_lookup(svc, req->id, req->exec_id, &error);
  if (p == NULL) {
    ferry_ttrpc_call_reply_gerror(call, error);
    return;
  }
  if (p->status == PROC_STOPPED) {
    answer_wait(call, p);
    return;
  }
  g_ptr_array_add(p->waiters, call);
}

typedef struct {
  FerryTtrpcCall *call;
  char *what;
} SignalOp;

static void on_signalled(gboolean delivered, const GError *error, gpointer ud)
{
  SignalOp *op = ud;
  if (error != NULL)
    ferry_ttrpc_call_reply_gerror(op->call, error);
  else if (!delivered)
    ferry_ttrpc_call_reply_error(op->call, FERRY_ERROR_NOT_FOUND, "%s: process already finished",
                                 op->what);
  else
    reply_empty(op->call);
  g_free(op->what);
  g_free(op);
}

static void on_side_signalled(gboolean delivered, const GError *error, gpointer ud)
{
}

static void handle_kill(FerryTtrpcCall *call, const ProtobufCMessage *request, gpointer ud)
{
  if (!shim_migration_allows_changes(ud, call))
    return;
  FerryTaskService *svc = ud;
  const Containerd__Task__V2__KillRequest *req = (const void *)request;
  g_autoptr(GError) error = NULL;
  Process *p = process_lookup(svc, req->id, req->exec_id, &error);
  if (p == NULL) {
    ferry_ttrpc_call_reply_gerror(call, error);
    return;
  }
  if (p->status != PROC_RUNNING || p->cmd == NULL) {
    ferry_ttrpc_call_reply_error(call, FERRY_ERROR_NOT_FOUND,
                                 "kill task %s: process already finished", req->id);
    return;
  }
  if (req->all && p == p->task->init) {
    /* Every process of the task, the execs first. */
    GHashTableIter it;
    gpointer value;
    g_hash_table_iter_init(&it, p->task->execs);
    while (g_hash_table_iter_next(&it, NULL, &value)) {
      Process *e = value;
      if (e->status == PROC_RUNNING && e->cmd != NULL)
        ferry_guest_process_signal(ferry_cmd_get_process(e->cmd), (int)req->signal,
                                   on_side_signalled, NULL);
    }
  }
  SignalOp *op = g_new0(SignalOp, 1);
  op->call = call;
  op->what = g_strdup_printf("kill task %s", req->id);
  ferry_guest_process_signal(ferry_cmd_get_process(p->cmd), (int)req->signal, on_signalled, op);
}

/* A migration destination's Task.Exec naming an exec'd process of a bound container
 * gives it this host's stdio (docs/migration.md). TRUE when `req` was that (answered). */
static gboolean bind_exec(FerryTaskService *svc, FerryTtrpcCall *call,
                          const Containerd__Task__V2__ExecProcessRequest *req)
{
  Task *t = req->id != NULL ? g_hash_table_lookup(svc->tasks, req->id) : NULL;
  if (t == NULL || t->source_id == NULL || req->exec_id == NULL ||
      !shim_migration_is_importing(svc))
    return FALSE;
  Process *p = g_hash_table_lookup(t->execs, req->exec_id);
  if (p == NULL || !p->imported) {
    ferry_ttrpc_call_reply_error(call, FERRY_ERROR_NOT_FOUND,
                                 "exec %s: the migrated task %s has no such process", req->exec_id,
                                 req->id);
    return TRUE;
  }
  if (p->exec_bound) {
    ferry_ttrpc_call_reply_error(call, FERRY_ERROR_ALREADY_EXISTS,
                                 "exec %s of the migrated task %s is bound already", req->exec_id,
                                 req->id);
    return TRUE;
  }
  if (req->terminal != p->terminal) {
    ferry_ttrpc_call_reply_error(call, FERRY_ERROR_INVALID_ARGUMENT,
                                 "exec %s of the migrated task %s: terminal is %s on the source",
                                 req->exec_id, req->id, p->terminal ? "on" : "off");
    return TRUE;
  }
  g_free(p->in);
  g_free(p->out);
  g_free(p->err);
  p->in = g_strdup(req->stdin != NULL ? req->stdin : "");
  p->out = g_strdup(req->stdout != NULL ? req->stdout : "");
  p->err = g_strdup(req->stderr != NULL ? req->stderr : "");
  p->exec_bound = TRUE;
  reply_empty(call);
  return TRUE;
}

static void handle_exec(FerryTtrpcCall *call, const ProtobufCMessage *request, gpointer ud)
{
  FerryTaskService *svc = ud;
  const Containerd__Task__V2__ExecProcessRequest *req = (const void *)request;
  if (bind_exec(svc, call, req) || !shim_migration_allows_changes(ud, call))
    return;
  g_autoptr(GError) error = NULL;
  Task *t = task_lookup(svc, req->id, &error);
  if (t == NULL) {
    ferry_ttrpc_call_reply_gerror(call, error);
    return;
  }
  if (req->exec_id == NULL || req->exec_id[0] == '\0') {
    ferry_ttrpc_call_reply_error(call, FERRY_ERROR_INVALID_ARGUMENT,
                                 "exec: an exec id is required");
    return;
  }
  if (g_hash_table_contains(t->execs, req->exec_id)) {
    ferry_ttrpc_call_reply_error(call, FERRY_ERROR_ALREADY_EXISTS,
                                 "process %s of task %s already exists", req->exec_id, req->id);
    return;
  }
  if (!t->ready || t->init->status != PROC_RUNNING) {
    ferry_ttrpc_call_reply_error(call, FERRY_ERROR_FAILED_PRECONDITION,
                                 "exec in task %s: the task is not running", req->id);
    return;
  }
  if (req->spec == NULL) {
    ferry_ttrpc_call_reply_error(call, FERRY_ERROR_INVALID_ARGUMENT, "exec: no process spec");
    return;
  }
  json_error_t jerr;
  g_autoptr(json_t) spec =
      json_loadb((const char *)req->spec->value.data, req->spec->value.len, 0, &jerr);
  if (!json_is_object(spec) || !json_is_array(json_object_get(spec, "args"))) {
    ferry_ttrpc_call_reply_error(call, FERRY_ERROR_INVALID_ARGUMENT,
                                 "exec %s: the spec is not an OCI process with args: %s",
                                 req->exec_id, jerr.text);
    return;
  }
  Process *p =
      process_new(t, req->exec_id, spec, req->stdin, req->stdout, req->stderr, req->terminal);
  g_hash_table_insert(t->execs, p->exec_id, p);
  reply_empty(call);
  Containerd__Events__TaskExecAdded ev = CONTAINERD__EVENTS__TASK_EXEC_ADDED__INIT;
  ev.container_id = t->id;
  ev.exec_id = p->exec_id;
  publish(svc, "/tasks/exec-added", &ev.base);
}

static void reply_delete(FerryTtrpcCall *call, Process *p)
{
  Google__Protobuf__Timestamp at = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
  set_timestamp(&at, p->exited_at_us != 0 ? p->exited_at_us : g_get_real_time());
  Containerd__Task__V2__DeleteResponse resp = CONTAINERD__TASK__V2__DELETE_RESPONSE__INIT;
  resp.pid = p->pid;
  resp.exit_status = p->exit_status;
  resp.exited_at = &at;
  ferry_ttrpc_call_reply(call, &resp.base);
}

typedef struct {
  Task *task;
  FerryTtrpcCall *call;
} DeleteOp;

static void on_task_root_detached(FerrySandbox *sandbox, const GError *error, gpointer ud)
{
  DeleteOp *op = ud;
  Task *t = op->task;
  FerryTaskService *svc = t->svc;
  if (error != NULL)
    ferry_log(FERRY_LOG_WARNING, "shim: detach a deleted task's root", "task", t->id, "error",
              error->message, NULL);
  Process *p = t->init;
  reply_delete(op->call, p);
  Google__Protobuf__Timestamp at = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
  set_timestamp(&at, p->exited_at_us != 0 ? p->exited_at_us : g_get_real_time());
  Containerd__Events__TaskDelete ev = CONTAINERD__EVENTS__TASK_DELETE__INIT;
  ev.container_id = t->id;
  ev.id = t->id;
  ev.pid = p->pid;
  ev.exit_status = p->exit_status;
  ev.exited_at = &at;
  publish(svc, "/tasks/delete", &ev.base);
  g_autofree char *pid_file = g_build_filename(t->bundle, "qemu.pid", NULL);
  unlink(pid_file);
  g_hash_table_remove(svc->tasks, t->id);
  g_free(op);
  maybe_shutdown(svc);
}

static void on_guest_container_deleted(const GError *error, gpointer ud)
{
  DeleteOp *op = ud;
  Task *t = op->task;
  FerryTaskService *svc = t->svc;
  if (error != NULL)
    ferry_log(FERRY_LOG_DEBUG, "shim: delete the guest's container state", "task", t->id, "error",
              error->message, NULL);
  ferry_sandbox_forget_container(svc->sandbox, t->id);
  if (t->root_attached)
    ferry_sandbox_detach_root(svc->sandbox, t->id, on_task_root_detached, op);
  else
    on_task_root_detached(svc->sandbox, NULL, op);
}

static void handle_delete(FerryTtrpcCall *call, const ProtobufCMessage *request, gpointer ud)
{
  if (!shim_migration_allows_changes(ud, call))
    return;
  FerryTaskService *svc = ud;
  const Containerd__Task__V2__DeleteRequest *req = (const void *)request;
  g_autoptr(GError) error = NULL;
  Process *p = process_lookup(svc, req->id, req->exec_id, &error);
  if (p == NULL) {
    ferry_ttrpc_call_reply_gerror(call, error);
    return;
  }
  if (p->status == PROC_RUNNING || p->starting) {
    ferry_ttrpc_call_reply_error(call, FERRY_ERROR_FAILED_PRECONDITION,
                                 "delete: process %s of task %s is running",
                                 p->exec_id[0] ? p->exec_id : "init", req->id);
    return;
  }
  Task *t = p->task;
  if (p != t->init) {
    reply_delete(call, p);
    g_hash_table_remove(t->execs, p->exec_id);
    return;
  }
  t->deleting = TRUE;
  DeleteOp *op = g_new0(DeleteOp, 1);
  op->task = t;
  op->call = call;
  FerryGuestConnection *gc = ferry_sandbox_get_guest(svc->sandbox);
  if (gc != NULL && ferry_sandbox_get_container(svc->sandbox, t->id) != NULL)
    ferry_guest_connection_delete_container_state(gc, t->id, on_guest_container_deleted, op);
  else
    on_guest_container_deleted(NULL, op);
}

static void on_process_list(json_t *result, const GError *error, gpointer ud)
{
  FerryTtrpcCall *call = ud;
  if (error != NULL) {
    ferry_ttrpc_call_reply_gerror(call, error);
    return;
  }
  json_t *list = json_object_get(result, "ProcessList");
  gsize n = json_is_array(list) ? json_array_size(list) : 0;
  g_autofree Containerd__V1__Types__ProcessInfo *infos =
      g_new0(Containerd__V1__Types__ProcessInfo, MAX(n, 1));
  g_autofree Containerd__V1__Types__ProcessInfo **ptrs =
      g_new0(Containerd__V1__Types__ProcessInfo *, MAX(n, 1));
  gsize k = 0;
  for (gsize i = 0; i < n; i++) {
    json_t *pid = json_object_get(json_array_get(list, i), "ProcessId");
    if (!json_is_integer(pid) || json_integer_value(pid) <= 0 ||
        json_integer_value(pid) > G_MAXUINT32)
      continue;
    containerd__v1__types__process_info__init(&infos[k]);
    infos[k].pid = (uint32_t)json_integer_value(pid);
    ptrs[k] = &infos[k];
    k++;
  }
  Containerd__Task__V2__PidsResponse resp = CONTAINERD__TASK__V2__PIDS_RESPONSE__INIT;
  resp.n_processes = k;
  resp.processes = ptrs;
  ferry_ttrpc_call_reply(call, &resp.base);
}

/* Every process in the container (the guest lists its cgroup), as `ctr task ps` shows. */
static void handle_pids(FerryTtrpcCall *call, const ProtobufCMessage *request, gpointer ud)
{
  FerryTaskService *svc = ud;
  const Containerd__Task__V2__PidsRequest *req = (const void *)request;
  Task *t = NULL;
  FerryGuestContainer *c = running_container(svc, call, req->id, "pids of", &t);
  if (c == NULL)
    return;
  g_autoptr(json_t) query = json_pack("{s:[s]}", "PropertyTypes", "ProcessList");
  ferry_guest_container_properties(c, query, on_process_list, call);
}

static void handle_close_io(FerryTtrpcCall *call, const ProtobufCMessage *request, gpointer ud)
{
  if (!shim_migration_allows_changes(ud, call))
    return;
  FerryTaskService *svc = ud;
  const Containerd__Task__V2__CloseIORequest *req = (const void *)request;
  g_autoptr(GError) error = NULL;
  Process *p = process_lookup(svc, req->id, req->exec_id, &error);
  if (p == NULL) {
    ferry_ttrpc_call_reply_gerror(call, error);
    return;
  }
  if (req->stdin && p->cmd != NULL && ferry_cmd_get_process(p->cmd) != NULL)
    ferry_guest_process_close_stdin(ferry_cmd_get_process(p->cmd));
  reply_empty(call);
}

static void on_resized(const GError *error, gpointer ud)
{
  FerryTtrpcCall *call = ud;
  if (error != NULL)
    ferry_ttrpc_call_reply_gerror(call, error);
  else
    reply_empty(call);
}

static void handle_resize_pty(FerryTtrpcCall *call, const ProtobufCMessage *request, gpointer ud)
{
  if (!shim_migration_allows_changes(ud, call))
    return;
  FerryTaskService *svc = ud;
  const Containerd__Task__V2__ResizePtyRequest *req = (const void *)request;
  g_autoptr(GError) error = NULL;
  Process *p = process_lookup(svc, req->id, req->exec_id, &error);
  if (p == NULL) {
    ferry_ttrpc_call_reply_gerror(call, error);
    return;
  }
  if (p->cmd == NULL || ferry_cmd_get_process(p->cmd) == NULL || p->status != PROC_RUNNING) {
    ferry_ttrpc_call_reply_error(call, FERRY_ERROR_FAILED_PRECONDITION,
                                 "resize: process of task %s is not running", req->id);
    return;
  }
  ferry_guest_process_resize_console(ferry_cmd_get_process(p->cmd), (guint16)req->width,
                                     (guint16)req->height, on_resized, call);
}

static void handle_connect(FerryTtrpcCall *call, const ProtobufCMessage *request, gpointer ud)
{
  FerryTaskService *svc = ud;
  const Containerd__Task__V2__ConnectRequest *req = (const void *)request;
  Containerd__Task__V2__ConnectResponse resp = CONTAINERD__TASK__V2__CONNECT_RESPONSE__INIT;
  resp.shim_pid = (uint32_t)getpid();
  resp.version = SHIM_VERSION;
  Task *t = req->id != NULL ? g_hash_table_lookup(svc->tasks, req->id) : NULL;
  if (t != NULL)
    resp.task_pid = t->init->pid;
  ferry_ttrpc_call_reply(call, &resp.base);
}

static void handle_shutdown(FerryTtrpcCall *call, const ProtobufCMessage *request, gpointer ud)
{
  FerryTaskService *svc = ud;
  reply_empty(call);
  svc->shutdown_asked = TRUE;
  maybe_shutdown(svc);
}

static void handle_checkpoint(FerryTtrpcCall *call, const ProtobufCMessage *request, gpointer ud)
{
  ferry_ttrpc_call_reply_error(call, FERRY_ERROR_UNIMPLEMENTED,
                               "checkpoint: Ferry does not checkpoint to files; it moves a "
                               "running sandbox to another host by live migration");
}

/* ---------------------------------------- pause, resume, update, stats -- */

typedef struct {
  Task *task;
  FerryTtrpcCall *call;
  gboolean pause; /* pause or resume: the event to publish */
  gboolean update;
} ModifyOp;

static void on_modified(const GError *error, gpointer ud)
{
  ModifyOp *op = ud;
  Task *t = op->task;
  if (error != NULL) {
    ferry_ttrpc_call_reply_gerror(op->call, error);
    g_free(op);
    return;
  }
  reply_empty(op->call);
  if (!op->update) {
    t->paused = op->pause;
    if (op->pause) {
      Containerd__Events__TaskPaused ev = CONTAINERD__EVENTS__TASK_PAUSED__INIT;
      ev.container_id = t->id;
      publish(t->svc, "/tasks/paused", &ev.base);
    } else {
      Containerd__Events__TaskResumed ev = CONTAINERD__EVENTS__TASK_RESUMED__INIT;
      ev.container_id = t->id;
      publish(t->svc, "/tasks/resumed", &ev.base);
    }
  }
  g_free(op);
}

/* The running task's guest container, or NULL with the call answered. */
static FerryGuestContainer *running_container(FerryTaskService *svc, FerryTtrpcCall *call,
                                              const char *id, const char *what, Task **task)
{
  g_autoptr(GError) error = NULL;
  Process *p = process_lookup(svc, id, NULL, &error);
  if (p == NULL) {
    ferry_ttrpc_call_reply_gerror(call, error);
    return NULL;
  }
  FerryGuestContainer *c = ferry_sandbox_get_container(svc->sandbox, id);
  if (p->status != PROC_RUNNING || c == NULL) {
    ferry_ttrpc_call_reply_error(call, FERRY_ERROR_FAILED_PRECONDITION,
                                 "%s task %s: it is not running", what, id);
    return NULL;
  }
  *task = p->task;
  return c;
}

static void freeze(FerryTaskService *svc, FerryTtrpcCall *call, const char *id, gboolean pause)
{
  Task *t = NULL;
  FerryGuestContainer *c = running_container(svc, call, id, pause ? "pause" : "resume", &t);
  if (c == NULL)
    return;
  if (t->paused == pause) {
    ferry_ttrpc_call_reply_error(call, FERRY_ERROR_FAILED_PRECONDITION, "task %s is %s already", id,
                                 pause ? "paused" : "running");
    return;
  }
  g_autoptr(json_t) request =
      json_pack("{s:s, s:s, s:{s:s}}", "ResourceType", "FerryContainerState", "RequestType",
                "Update", "Settings", "State", pause ? "Paused" : "Running");
  ModifyOp *op = g_new0(ModifyOp, 1);
  op->task = t;
  op->call = call;
  op->pause = pause;
  ferry_guest_container_modify(c, request, on_modified, op);
}

static void handle_pause(FerryTtrpcCall *call, const ProtobufCMessage *request, gpointer ud)
{
  if (!shim_migration_allows_changes(ud, call))
    return;
  freeze(ud, call, ((const Containerd__Task__V2__PauseRequest *)request)->id, TRUE);
}

static void handle_resume(FerryTtrpcCall *call, const ProtobufCMessage *request, gpointer ud)
{
  if (!shim_migration_allows_changes(ud, call))
    return;
  freeze(ud, call, ((const Containerd__Task__V2__ResumeRequest *)request)->id, FALSE);
}

static void handle_update(FerryTtrpcCall *call, const ProtobufCMessage *request, gpointer ud)
{
  if (!shim_migration_allows_changes(ud, call))
    return;
  FerryTaskService *svc = ud;
  const Containerd__Task__V2__UpdateTaskRequest *req = (const void *)request;
  Task *t = NULL;
  FerryGuestContainer *c = running_container(svc, call, req->id, "update", &t);
  if (c == NULL)
    return;
  if (req->resources == NULL) {
    reply_empty(call); /* annotations only: nothing for the guest */
    return;
  }
  json_error_t jerr;
  g_autoptr(json_t) resources =
      json_loadb((const char *)req->resources->value.data, req->resources->value.len, 0, &jerr);
  if (!json_is_object(resources)) {
    ferry_ttrpc_call_reply_error(call, FERRY_ERROR_INVALID_ARGUMENT,
                                 "update task %s: the resources are not a LinuxResources "
                                 "JSON object: %s",
                                 req->id, jerr.text);
    return;
  }
  g_autoptr(json_t) mod = json_pack("{s:s, s:s, s:{s:O}}", "ResourceType", "ContainerConstraints",
                                    "RequestType", "Update", "Settings", "Linux", resources);
  ModifyOp *op = g_new0(ModifyOp, 1);
  op->task = t;
  op->call = call;
  op->update = TRUE;
  ferry_guest_container_modify(c, mod, on_modified, op);
}

static guint64 metric(json_t *obj, const char *key)
{
  json_t *v = json_object_get(obj, key);
  return json_is_integer(v) && json_integer_value(v) > 0 ? (guint64)json_integer_value(v) : 0;
}

/* The guest's cgroup v2 figures (stats.c's JSON) as containerd's v2 Metrics, packed. */
static GBytes *pack_metrics(json_t *m)
{
  Io__Containerd__Cgroups__V2__PidsStat pids = IO__CONTAINERD__CGROUPS__V2__PIDS_STAT__INIT;
  json_t *jp = json_object_get(m, "Pids");
  pids.current = metric(jp, "current");
  pids.limit = metric(jp, "max");
  Io__Containerd__Cgroups__V2__CPUStat cpu = IO__CONTAINERD__CGROUPS__V2__CPUSTAT__INIT;
  json_t *jc = json_object_get(m, "CPU");
  cpu.usage_usec = metric(jc, "usage_usec");
  cpu.user_usec = metric(jc, "user_usec");
  cpu.system_usec = metric(jc, "system_usec");
  cpu.nr_periods = metric(jc, "nr_periods");
  cpu.nr_throttled = metric(jc, "nr_throttled");
  cpu.throttled_usec = metric(jc, "throttled_usec");
  Io__Containerd__Cgroups__V2__MemoryStat mem = IO__CONTAINERD__CGROUPS__V2__MEMORY_STAT__INIT;
  json_t *jm = json_object_get(m, "Memory");
  mem.anon = metric(jm, "anon");
  mem.file = metric(jm, "file");
  mem.kernel_stack = metric(jm, "kernel_stack");
  mem.slab = metric(jm, "slab");
  mem.sock = metric(jm, "sock");
  mem.shmem = metric(jm, "shmem");
  mem.file_mapped = metric(jm, "file_mapped");
  mem.file_dirty = metric(jm, "file_dirty");
  mem.file_writeback = metric(jm, "file_writeback");
  mem.pgfault = metric(jm, "pgfault");
  mem.pgmajfault = metric(jm, "pgmajfault");
  mem.usage = metric(m, "MemoryCurrent");
  mem.usage_limit = metric(m, "MemoryMax");
  Io__Containerd__Cgroups__V2__MemoryEvents events =
      IO__CONTAINERD__CGROUPS__V2__MEMORY_EVENTS__INIT;
  json_t *je = json_object_get(m, "MemoryEvents");
  events.low = metric(je, "low");
  events.high = metric(je, "high");
  events.max = metric(je, "max");
  events.oom = metric(je, "oom");
  events.oom_kill = metric(je, "oom_kill");
  json_t *jio = json_object_get(m, "IO");
  gsize n_io = json_is_array(jio) ? MIN(json_array_size(jio), 64) : 0;
  Io__Containerd__Cgroups__V2__IOEntry entries[64];
  Io__Containerd__Cgroups__V2__IOEntry *ptrs[64];
  for (gsize i = 0; i < n_io; i++) {
    json_t *e = json_array_get(jio, i);
    io__containerd__cgroups__v2__ioentry__init(&entries[i]);
    entries[i].major = metric(e, "Major");
    entries[i].minor = metric(e, "Minor");
    entries[i].rbytes = metric(e, "rbytes");
    entries[i].wbytes = metric(e, "wbytes");
    entries[i].rios = metric(e, "rios");
    entries[i].wios = metric(e, "wios");
    ptrs[i] = &entries[i];
  }
  Io__Containerd__Cgroups__V2__IOStat io = IO__CONTAINERD__CGROUPS__V2__IOSTAT__INIT;
  io.n_usage = n_io;
  io.usage = ptrs;
  Io__Containerd__Cgroups__V2__Metrics metrics = IO__CONTAINERD__CGROUPS__V2__METRICS__INIT;
  metrics.pids = &pids;
  metrics.cpu = &cpu;
  metrics.memory = &mem;
  metrics.io = &io;
  metrics.memory_events = &events;
  gsize len = io__containerd__cgroups__v2__metrics__get_packed_size(&metrics);
  guint8 *buf = g_malloc(len > 0 ? len : 1);
  io__containerd__cgroups__v2__metrics__pack(&metrics, buf);
  return g_bytes_new_take(buf, len);
}

static void on_properties(json_t *result, const GError *error, gpointer ud)
{
  FerryTtrpcCall *call = ud;
  json_t *m = result != NULL ? json_object_get(result, "Metrics") : NULL;
  if (error != NULL) {
    ferry_ttrpc_call_reply_gerror(call, error);
    return;
  }
  if (!json_is_object(m) || json_integer_value(json_object_get(m, "CgroupVersion")) != 2) {
    ferry_ttrpc_call_reply_error(call, FERRY_ERROR_INTERNAL,
                                 "stats: the guest answered without cgroup v2 metrics");
    return;
  }
  g_autoptr(GBytes) packed = pack_metrics(m);
  Google__Protobuf__Any any = GOOGLE__PROTOBUF__ANY__INIT;
  any.type_url = "io.containerd.cgroups.v2.Metrics";
  gsize len = 0;
  any.value.data = (uint8_t *)g_bytes_get_data(packed, &len);
  any.value.len = len;
  Containerd__Task__V2__StatsResponse resp = CONTAINERD__TASK__V2__STATS_RESPONSE__INIT;
  resp.stats = &any;
  ferry_ttrpc_call_reply(call, &resp.base);
}

static void handle_stats(FerryTtrpcCall *call, const ProtobufCMessage *request, gpointer ud)
{
  FerryTaskService *svc = ud;
  const Containerd__Task__V2__StatsRequest *req = (const void *)request;
  Task *t = NULL;
  FerryGuestContainer *c = running_container(svc, call, req->id, "stats of", &t);
  if (c == NULL)
    return;
  g_autoptr(json_t) query = json_pack("{s:[s]}", "PropertyTypes", "Statistics");
  ferry_guest_container_properties(c, query, on_properties, call);
}

static const FerryTtrpcMethodImpl task_methods[] = {
  { "State", handle_state, FERRY_TTRPC_UNARY },
  { "Create", handle_create, FERRY_TTRPC_UNARY },
  { "Start", handle_start, FERRY_TTRPC_UNARY },
  { "Delete", handle_delete, FERRY_TTRPC_UNARY },
  { "Pids", handle_pids, FERRY_TTRPC_UNARY },
  { "Checkpoint", handle_checkpoint, FERRY_TTRPC_UNARY },
  { "Kill", handle_kill, FERRY_TTRPC_UNARY },
  { "Exec", handle_exec, FERRY_TTRPC_UNARY },
  { "ResizePty", handle_resize_pty, FERRY_TTRPC_UNARY },
  { "CloseIO", handle_close_io, FERRY_TTRPC_UNARY },
  { "Wait", handle_wait, FERRY_TTRPC_UNARY },
  { "Connect", handle_connect, FERRY_TTRPC_UNARY },
  { "Shutdown", handle_shutdown, FERRY_TTRPC_UNARY },
  { "Pause", handle_pause, FERRY_TTRPC_UNARY },
  { "Resume", handle_resume, FERRY_TTRPC_UNARY },
  { "Update", handle_update, FERRY_TTRPC_UNARY },
  { "Stats", handle_stats, FERRY_TTRPC_UNARY },
  { NULL, NULL, 0 },
};

/* ------------------------------------------------------------- service -- */

static gboolean require(const char *v, const char *what, GError **error)
{
  if (v != NULL && v[0] != '\0')
    return TRUE;
  g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "task service: %s is required",
              what);
  return FALSE;
}

FerryTaskService *ferry_task_service_new(const FerryTaskServiceConfig *config,
                                         const FerryTaskServiceHandlers *handlers,
                                         gpointer user_data, GError **error)
{
  if (!require(config->sandbox_id, "sandbox_id", error) ||
      !require(config->state_dir, "state_dir", error) ||
      !require(config->image_cache, "image_cache", error) ||
      !require(config->kernel, "kernel", error) || !require(config->initrd, "initrd", error))
    return NULL;
  FerryRootfsBuilderOptions bopts = { .cache_dir = config->image_cache };
  FerryRootfsBuilder *builder = ferry_rootfs_builder_new(&bopts, error);
  if (builder == NULL)
    return NULL;
  FerryTaskService *svc = g_new0(FerryTaskService, 1);
  svc->context = g_main_context_ref_thread_default();
  svc->namespace = g_strdup(config->namespace != NULL ? config->namespace : "default");
  svc->sandbox_id = g_strdup(config->sandbox_id);
  svc->state_dir = g_strdup(config->state_dir);
  svc->image_cache = g_strdup(config->image_cache);
  svc->kernel = g_strdup(config->kernel);
  svc->initrd = g_strdup(config->initrd);
  svc->events_address = g_strdup(config->events_address);
  svc->memory_mb = config->memory_mb;
  svc->cpus = config->cpus;
  svc->boot_timeout_ms = config->boot_timeout_ms;
  svc->scratch_mb = config->scratch_mb;
  svc->vm = config->vm;
  svc->qemu_binary = g_strdup(config->vm.qemu_binary);
  svc->vm.qemu_binary = svc->qemu_binary;
  if (handlers != NULL)
    svc->handlers = *handlers;
  svc->user_data = user_data;
  svc->builder = builder;
  svc->events = ferry_shim_events_new(svc->events_address, svc->namespace);
  svc->tasks = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, task_free);
  svc->boot_waiters = g_ptr_array_new();
  return svc;
}

void ferry_task_service_free(FerryTaskService *svc)
{
  if (svc == NULL)
    return;
  ferry_source_clear(&svc->shutdown_idle);
  g_hash_table_unref(svc->tasks);
  for (guint i = 0; i < svc->boot_waiters->len; i++)
    create_op_free(svc->boot_waiters->pdata[i]);
  g_ptr_array_unref(svc->boot_waiters);
  shim_migration_free(svc->migration);
  ferry_sandbox_free(svc->sandbox); /* kills QEMU by its pid */
  ferry_rootfs_builder_free(svc->builder);
  ferry_shim_events_free(svc->events);
  g_clear_error(&svc->boot_error);
  g_main_context_unref(svc->context);
  g_free(svc->namespace);
  g_free(svc->sandbox_id);
  g_free(svc->state_dir);
  g_free(svc->image_cache);
  g_free(svc->kernel);
  g_free(svc->initrd);
  g_free(svc->events_address);
  g_free(svc->qemu_binary);
  g_free(svc);
}

gboolean ferry_task_service_register(FerryTaskService *svc, FerryTtrpcServer *server,
                                     GError **error)
{
  return ferry_ttrpc_server_register(server, "containerd.task.v2.Task",
                                     &containerd__task__v2__task__descriptor, task_methods, svc,
                                     error) &&
         ferry_ttrpc_server_register(server, "containerd.task.v3.Task",
                                     &containerd__task__v2__task__descriptor, task_methods, svc,
                                     error) &&
         shim_migration_register(svc, server, error);
}

GPid ferry_task_service_vm_pid(FerryTaskService *svc)
{
  if (svc->sandbox == NULL || ferry_sandbox_get_vm(svc->sandbox) == NULL)
    return 0;
  return ferry_vm_get_pid(ferry_sandbox_get_vm(svc->sandbox));
}

guint ferry_task_service_task_count(FerryTaskService *svc)
{
  return g_hash_table_size(svc->tasks);
}

/* ------------------------------------------------------------ VM sizing -- */

static gboolean annotation_uint(json_t *spec, const char *key, guint *out)
{
  const char *v = json_string_value(json_object_get(json_object_get(spec, "annotations"), key));
  guint64 n;
  if (v == NULL || !g_ascii_string_to_unsigned(v, 10, 1, 1u << 20, &n, NULL))
    return FALSE;
  *out = (guint)n;
  return TRUE;
}

void ferry_shim_vm_size(json_t *spec, guint config_memory_mb, guint config_cpus, gboolean tcg,
                        guint *memory_mb, guint *cpus)
{
  *memory_mb = config_memory_mb;
  *cpus = config_cpus;
  json_t *res = json_object_get(json_object_get(spec, "linux"), "resources");
  if (!annotation_uint(spec, "io.ferry.vm.memory-mb", memory_mb)) {
    json_t *limit = json_object_get(json_object_get(res, "memory"), "limit");
    if (json_is_integer(limit) && json_integer_value(limit) > 0) {
      guint64 mb = ((guint64)json_integer_value(limit) + (1u << 20) - 1) >> 20;
      *memory_mb = (guint)MIN(mb + FERRY_SHIM_VM_OVERHEAD_MB, 1u << 20);
    }
  }
  if (!annotation_uint(spec, "io.ferry.vm.cpus", cpus)) {
    json_t *cpu = json_object_get(res, "cpu");
    json_t *quota = json_object_get(cpu, "quota"), *period = json_object_get(cpu, "period");
    if (json_is_integer(quota) && json_is_integer(period) && json_integer_value(quota) > 0 &&
        json_integer_value(period) > 0) {
      guint64 q = (guint64)json_integer_value(quota), p = (guint64)json_integer_value(period);
      *cpus = (guint)MIN((q + p - 1) / p, 256);
    }
  }
  if (tcg && *cpus > 1)
    *cpus = 1;
}
