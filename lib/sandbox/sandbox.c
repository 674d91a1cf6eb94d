/* The host side of one sandbox (include/ferry/sandbox.h). */
#include "ferry/sandbox.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "ferry/bridge-protocol.h"
#include "ferry/error.h"
#include "ferry/fd.h"
#include "ferry/json.h"
#include "ferry/log.h"
#include "ferry/mux.h"
#include "ferry/source.h"
#include "sandbox-private.h"

#define DEFAULT_KERNEL_ARGS "console=ttyS0 loglevel=4 panic=-1"
/* How much of the console's end a boot failure quotes. */
#define CONSOLE_TAIL_BYTES 2048

/* ---------------------------------------------------------------- reports -- */

static gboolean on_report(gpointer ud)
{
  Report *r = ud;
  FerrySandbox *sandbox = r->sandbox;
  sandbox->reports = g_list_remove(sandbox->reports, r);
  ferry_source_clear(&r->source);
  g_autoptr(GError) error = g_steal_pointer(&r->error);
  FerrySandboxDoneFunc done = r->done;
  gpointer user_data = r->user_data;
  g_free(r);
  done(sandbox, error, user_data); /* may free the sandbox */
  return G_SOURCE_REMOVE;
}

/* Run `done` from the loop with a copy of `error`. */
void sandbox_report_later(FerrySandbox *sandbox, FerrySandboxDoneFunc done, gpointer user_data,
                          const GError *error)
{
  if (done == NULL)
    return;
  Report *r = g_new0(Report, 1);
  r->sandbox = sandbox;
  r->done = done;
  r->user_data = user_data;
  r->error = error != NULL ? g_error_copy(error) : NULL;
  r->source = ferry_idle_new(sandbox->context, on_report, r);
  sandbox->reports = g_list_prepend(sandbox->reports, r);
}

static void report_free(gpointer p)
{
  Report *r = p;
  ferry_source_clear(&r->source);
  g_clear_error(&r->error);
  g_free(r);
}

/* ------------------------------------------------------------------ setup -- */

static gboolean require(const char *value, const char *field, GError **error)
{
  if (value != NULL && value[0] != '\0')
    return TRUE;
  g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "sandbox: %s is required", field);
  return FALSE;
}

static gboolean require_file(const char *path, const char *what, GError **error)
{
  if (g_file_test(path, G_FILE_TEST_IS_REGULAR))
    return TRUE;
  g_set_error(error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND, "sandbox: the %s %s is not there", what,
              path);
  return FALSE;
}

FerrySandbox *ferry_sandbox_new(const FerrySandboxConfig *config,
                                const FerrySandboxHandlers *handlers, gpointer user_data,
                                GError **error)
{
  if (!require(config->id, "id", error) || !require(config->state_dir, "state_dir", error) ||
      !require(config->kernel, "kernel", error) || !require(config->initrd, "initrd", error) ||
      !require_file(config->kernel, "kernel", error) ||
      !require_file(config->initrd, "initrd", error))
    return NULL;
  FerrySandbox *sandbox = g_new0(FerrySandbox, 1);
  sandbox->context = g_main_context_ref_thread_default();
  sandbox->id = g_strdup(config->id);
  sandbox->state_dir = g_strdup(config->state_dir);
  sandbox->kernel = g_strdup(config->kernel);
  sandbox->initrd = g_strdup(config->initrd);
  sandbox->kernel_args =
      g_strdup(config->kernel_args != NULL ? config->kernel_args : DEFAULT_KERNEL_ARGS);
  sandbox->memory_mb = config->memory_mb != 0 ? config->memory_mb : FERRY_VM_DEFAULT_MEMORY_MB;
  sandbox->cpus = config->cpus != 0 ? config->cpus : 1;
  sandbox->boot_timeout_ms = config->boot_timeout_ms != 0 ? config->boot_timeout_ms
                                                          : FERRY_SANDBOX_DEFAULT_BOOT_TIMEOUT_MS;
  sandbox->vm_options = config->vm;
  sandbox->qemu_binary = g_strdup(config->vm.qemu_binary);
  sandbox->vm_options.qemu_binary = sandbox->qemu_binary;
  if (handlers != NULL)
    sandbox->handlers = *handlers;
  sandbox->user_data = user_data;
  sandbox->containers = g_hash_table_new_full(g_str_hash, g_str_equal, g_free,
                                              (GDestroyNotify)ferry_guest_container_unref);
  sandbox->incoming_fd = -1;
  sandbox->restore_ids = g_ptr_array_new_with_free_func(g_free);
  sandbox_roots_init(sandbox);
  return sandbox;
}

FerryVmDoc *sandbox_doc(FerrySandbox *sandbox, GError **error)
{
  g_autoptr(FerryVmDoc) doc = ferry_vm_doc_new(sandbox->id);
  g_autoptr(json_t) memory = json_pack("{s:I}", "SizeInMB", (json_int_t)sandbox->memory_mb);
  ferry_vm_doc_set_memory(doc, memory);
  g_autoptr(json_t) cpu = json_pack("{s:I}", "Count", (json_int_t)sandbox->cpus);
  ferry_vm_doc_set_processor(doc, cpu);
  ferry_vm_doc_set_kernel_direct(doc, sandbox->kernel, sandbox->initrd, sandbox->kernel_args);
  if (!ferry_vm_doc_add_mux_port(doc, FERRY_SANDBOX_AGENT_PORT, error) ||
      !ferry_vm_doc_add_scsi_controller(doc, "0", error))
    return NULL;
  return g_steal_pointer(&doc);
}

/* ------------------------------------------------------------ the start -- */

static void start_finish(FerrySandbox *sandbox, const GError *error)
{
  FerrySandboxDoneFunc done = g_steal_pointer(&sandbox->start_done);
  ferry_source_clear(&sandbox->boot_timer);
  if (error == NULL)
    sandbox->state = SB_RUNNING;
  sandbox_report_later(sandbox, done, sandbox->start_data, error);
}

/* The start failed: stop the VM, then report (so a caller that retries finds no QEMU
 * of ours). */
static void on_failed_start_terminated(FerryVm *vm, const GError *error, gpointer ud)
{
  FerrySandbox *sandbox = ud;
  g_autoptr(GError) cause = g_steal_pointer(&sandbox->start_error);
  start_finish(sandbox, cause);
}

static void start_fail(FerrySandbox *sandbox, GError *error /* taken */)
{
  if (sandbox->state != SB_STARTING) {
    g_error_free(error);
    return;
  }
  sandbox->state = SB_STOPPED;
  ferry_source_clear(&sandbox->boot_timer);
  sandbox->start_error = error;
  ferry_vm_terminate(sandbox->vm, on_failed_start_terminated, sandbox);
}

static char *console_tail(FerrySandbox *sandbox)
{
  g_autofree char *text = NULL;
  gsize len = 0;
  if (!g_file_get_contents(ferry_vm_console_path(sandbox->vm), &text, &len, NULL) || len == 0)
    return g_strdup("(empty)");
  gsize from = len > CONSOLE_TAIL_BYTES ? len - CONSOLE_TAIL_BYTES : 0;
  return g_strdup(text + from);
}

static gboolean on_boot_timeout(gpointer ud)
{
  FerrySandbox *sandbox = ud;
  ferry_source_clear(&sandbox->boot_timer);
  g_autofree char *tail = console_tail(sandbox);
  start_fail(sandbox,
             g_error_new(FERRY_ERROR, FERRY_ERROR_DEADLINE_EXCEEDED,
                         "sandbox %s: the guest agent did not come up within %u ms "
                         "(QEMU log %s); console log %s ends:\n%s",
                         sandbox->id, sandbox->boot_timeout_ms, ferry_vm_log_path(sandbox->vm),
                         ferry_vm_console_path(sandbox->vm), tail));
  return G_SOURCE_REMOVE;
}

gboolean sandbox_on_resume_timeout(gpointer ud)
{
  FerrySandbox *sandbox = ud;
  ferry_source_clear(&sandbox->boot_timer);
  if (sandbox->state != SB_RESUMING)
    return G_SOURCE_REMOVE;
  g_autofree char *tail = console_tail(sandbox);
  g_autoptr(GError) e =
      g_error_new(FERRY_ERROR, FERRY_ERROR_DEADLINE_EXCEEDED,
                  "sandbox %s: the guest agent did not dial the bridge again within %u ms of "
                  "the resume (QEMU log %s); console log %s ends:\n%s",
                  sandbox->id, sandbox->boot_timeout_ms, ferry_vm_log_path(sandbox->vm),
                  ferry_vm_console_path(sandbox->vm), tail);
  sandbox_resume_connected(sandbox, e);
  return G_SOURCE_REMOVE;
}

static void on_connected(const GError *error, gpointer ud)
{
  FerrySandbox *sandbox = ud;
  if (sandbox->state == SB_RESUMING) {
    ferry_source_clear(&sandbox->boot_timer);
    sandbox_resume_connected(sandbox, error);
    return;
  }
  if (sandbox->state != SB_STARTING)
    return;
  if (error != NULL) {
    start_fail(sandbox, g_error_new(FERRY_ERROR, FERRY_ERROR_UNAVAILABLE,
                                    "sandbox %s: negotiate with the guest agent: %s", sandbox->id,
                                    error->message));
    return;
  }
  start_finish(sandbox, NULL);
}

static void on_container_oom(FerryGuestConnection *gc, const char *container_id, guint64 oom_kills,
                             gpointer ud)
{
  FerrySandbox *sandbox = ud;
  g_autofree char *n = g_strdup_printf("%" G_GUINT64_FORMAT, oom_kills);
  ferry_log(FERRY_LOG_DEBUG, "sandbox: OOM kill in a container", "sandbox", sandbox->id,
            "container", container_id, "oom_kills", n, NULL);
  if (g_hash_table_contains(sandbox->containers, container_id) &&
      sandbox->handlers.container_oom != NULL)
    sandbox->handlers.container_oom(sandbox, container_id, sandbox->user_data);
}

/* The agent dialed the bridge port. */
static void on_bridge(FerryTransport *transport, FerryChannel *accepted, gpointer ud)
{
  FerrySandbox *sandbox = ud;
  g_autoptr(FerryChannel) channel = accepted; /* ours to drop */
  gboolean resuming = sandbox->state == SB_RESUMING;
  if (sandbox->gc != NULL || (sandbox->state != SB_STARTING && !resuming)) {
    /* One bridge per sandbox: a second dial (an agent that lost its bridge) is refused;
     * the guest connection reports its own loss. */
    ferry_log(FERRY_LOG_DEBUG, "sandbox: refusing a second bridge dial", "sandbox", sandbox->id,
              NULL);
    ferry_channel_close(channel);
    return;
  }
  g_autoptr(GError) error = NULL;
  int fd = ferry_channel_to_fd(channel, &error);
  if (fd >= 0)
    sandbox->gc = ferry_guest_connection_new(fd, ferry_stdio_ports_hooks(), sandbox->ports, &error);
  if (sandbox->gc == NULL) {
    g_prefix_error(&error, "sandbox %s: the guest's bridge: ", sandbox->id);
    if (resuming)
      sandbox_resume_connected(sandbox, error);
    else
      start_fail(sandbox, g_steal_pointer(&error));
    return;
  }
  ferry_guest_connection_set_oom_func(sandbox->gc, on_container_oom, sandbox);
  if (resuming)
    sandbox_resume_bridge(sandbox);
  ferry_guest_connection_connect(sandbox->gc, on_connected, sandbox);
}

void sandbox_on_vm_gone(FerryVm *vm, const GError *error, gpointer ud)
{
  FerrySandbox *sandbox = ud;
  const GError *why = ferry_vm_exit_error(vm);
  if (sandbox->state == SB_RESUMING) {
    sandbox->state = SB_STOPPED;
    ferry_source_clear(&sandbox->boot_timer);
    g_autoptr(GError) e =
        why != NULL ? g_error_copy(why)
                    : g_error_new(FERRY_ERROR, FERRY_ERROR_UNAVAILABLE,
                                  "sandbox %s: the VM exited while resuming", sandbox->id);
    sandbox_resume_connected(sandbox, e);
    return;
  }
  if (sandbox->state == SB_INCOMING) {
    /* A destination whose QEMU died before it ran: the orchestrator hears. */
    sandbox->state = SB_STOPPED;
    if (sandbox->handlers.vm_exited != NULL)
      sandbox->handlers.vm_exited(sandbox, why, sandbox->user_data);
    return;
  }
  if (sandbox->state == SB_STARTING) {
    start_fail(sandbox, why != NULL
                            ? g_error_copy(why)
                            : g_error_new(FERRY_ERROR, FERRY_ERROR_UNAVAILABLE,
                                          "sandbox %s: the VM exited while booting", sandbox->id));
    return;
  }
  if (sandbox->state != SB_RUNNING)
    return; /* stopping, or a failed start: its own path reports */
  sandbox->state = SB_STOPPED;
  if (sandbox->handlers.vm_exited != NULL)
    sandbox->handlers.vm_exited(sandbox, why, sandbox->user_data);
}

static void on_vm_started(FerryVm *vm, const GError *error, gpointer ud)
{
  FerrySandbox *sandbox = ud;
  if (sandbox->state != SB_STARTING)
    return;
  if (error != NULL) {
    sandbox->state = SB_STOPPED;
    g_autoptr(GError) e = g_error_copy(error);
    g_prefix_error(&e, "sandbox %s: start QEMU: ", sandbox->id);
    start_finish(sandbox, e);
    return;
  }
  ferry_vm_wait(vm, sandbox_on_vm_gone, sandbox);
  g_autoptr(GError) local = NULL;
  g_autofree char *path = ferry_vm_port_socket(vm, FERRY_SANDBOX_AGENT_PORT);
  int fd = ferry_unix_connect(path, &local);
  if (fd < 0 || !ferry_mux_attach(sandbox->mux, fd, &local)) {
    g_prefix_error(&local, "sandbox %s: the agent's port: ", sandbox->id);
    start_fail(sandbox, g_steal_pointer(&local));
    return;
  }
  sandbox->boot_timer =
      ferry_timeout_new(sandbox->context, sandbox->boot_timeout_ms, on_boot_timeout, sandbox);
}

gboolean sandbox_transport_new(FerrySandbox *sandbox, GError **error)
{
  ferry_vm_set_notify_func(sandbox->vm, sandbox_on_vm_note, sandbox);
  sandbox->mux = ferry_mux_new(FERRY_MUX_HOST);
  sandbox->ports = ferry_stdio_ports_new(ferry_mux_get_transport(sandbox->mux));
  return ferry_transport_listen(ferry_mux_get_transport(sandbox->mux), FERRY_GCS_BRIDGE_PORT,
                                on_bridge, sandbox, error);
}

void ferry_sandbox_start(FerrySandbox *sandbox, FerrySandboxDoneFunc done, gpointer user_data)
{
  g_autoptr(GError) error = NULL;
  if (sandbox->state != SB_CREATED) {
    g_set_error(&error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION,
                "sandbox %s: start: it was started before", sandbox->id);
    sandbox_report_later(sandbox, done, user_data, error);
    return;
  }
  g_autoptr(FerryVmDoc) doc = sandbox_doc(sandbox, &error);
  if (doc != NULL)
    sandbox->vm = ferry_vm_new(sandbox->id, doc, sandbox->state_dir, &sandbox->vm_options, &error);
  if (sandbox->vm == NULL) {
    g_prefix_error(&error, "sandbox %s: ", sandbox->id);
    sandbox->state = SB_STOPPED;
    sandbox_report_later(sandbox, done, user_data, error);
    return;
  }
  if (!sandbox_transport_new(sandbox, &error)) {
    sandbox->state = SB_STOPPED;
    sandbox_report_later(sandbox, done, user_data, error);
    return;
  }
  sandbox->state = SB_STARTING;
  sandbox->start_done = done;
  sandbox->start_data = user_data;
  ferry_vm_start(sandbox->vm, on_vm_started, sandbox);
}

/* ------------------------------------------------------------- the stop -- */

static void on_stopped(FerryVm *vm, const GError *error, gpointer ud)
{
  FerrySandbox *sandbox = ud;
  sandbox->state = SB_STOPPED;
  FerrySandboxDoneFunc done = g_steal_pointer(&sandbox->stop_done);
  sandbox_report_later(sandbox, done, sandbox->stop_data, error);
}

void ferry_sandbox_stop(FerrySandbox *sandbox, FerrySandboxDoneFunc done, gpointer user_data)
{
  if (sandbox->stop_done != NULL) {
    g_autoptr(GError) error = g_error_new(FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION,
                                          "sandbox %s: a stop is already under way", sandbox->id);
    sandbox_report_later(sandbox, done, user_data, error);
    return;
  }
  if (sandbox->state == SB_STARTING) {
    /* The start's caller hears that it was stopped. */
    ferry_source_clear(&sandbox->boot_timer);
    g_autoptr(GError) error = g_error_new(FERRY_ERROR, FERRY_ERROR_CANCELLED,
                                          "sandbox %s: stopped while starting", sandbox->id);
    start_finish(sandbox, error);
  }
  if (sandbox->vm == NULL) {
    sandbox->state = SB_STOPPED;
    sandbox_report_later(sandbox, done, user_data, NULL);
    return;
  }
  sandbox->state = SB_STOPPING;
  sandbox->stop_done = done;
  sandbox->stop_data = user_data;
  ferry_vm_terminate(sandbox->vm, on_stopped, sandbox);
}

/* ------------------------------------------------------------ accessors -- */

const char *ferry_sandbox_get_id(FerrySandbox *sandbox)
{
  return sandbox->id;
}

FerryVm *ferry_sandbox_get_vm(FerrySandbox *sandbox)
{
  return sandbox->vm;
}

FerryGuestConnection *ferry_sandbox_get_guest(FerrySandbox *sandbox)
{
  return sandbox->state == SB_RUNNING ? sandbox->gc : NULL;
}

FerryStdioPorts *ferry_sandbox_get_ports(FerrySandbox *sandbox)
{
  return sandbox->ports;
}

gboolean ferry_sandbox_is_running(FerrySandbox *sandbox)
{
  return sandbox->state == SB_RUNNING;
}

/* ----------------------------------------------------------- containers -- */

static void create_op_free(CreateOp *op)
{
  g_free(op->id);
  g_free(op);
}

static void on_container_created(const GError *error, gpointer ud)
{
  CreateOp *op = ud;
  FerrySandbox *sandbox = op->sandbox;
  if (sandbox == NULL) {
    create_op_free(op); /* the sandbox is being freed */
    return;
  }
  sandbox->creates = g_list_remove(sandbox->creates, op);
  if (error != NULL)
    g_hash_table_remove(sandbox->containers, op->id);
  FerrySandboxDoneFunc done = op->done;
  gpointer user_data = op->user_data;
  create_op_free(op);
  done(sandbox, error, user_data); /* the guest's answer: from the loop already */
}

void ferry_sandbox_create_container(FerrySandbox *sandbox, const char *id, json_t *config,
                                    FerrySandboxDoneFunc done, gpointer user_data)
{
  g_autoptr(GError) error = NULL;
  if (sandbox->state != SB_RUNNING) {
    g_set_error(&error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION,
                "sandbox %s: create container %s: the sandbox is not running", sandbox->id, id);
  } else if (g_hash_table_contains(sandbox->containers, id)) {
    g_set_error(&error, FERRY_ERROR, FERRY_ERROR_ALREADY_EXISTS,
                "sandbox %s: container %s already exists", sandbox->id, id);
  }
  if (error != NULL) {
    sandbox_report_later(sandbox, done, user_data, error);
    return;
  }
  CreateOp *op = g_new0(CreateOp, 1);
  op->sandbox = sandbox;
  op->id = g_strdup(id);
  op->done = done;
  op->user_data = user_data;
  FerryGuestContainer *c = ferry_guest_connection_create_container(
      sandbox->gc, id, config, on_container_created, op, &error);
  if (c == NULL) {
    create_op_free(op);
    sandbox_report_later(sandbox, done, user_data, error);
    return;
  }
  sandbox->creates = g_list_prepend(sandbox->creates, op);
  g_hash_table_insert(sandbox->containers, g_strdup(id), c);
}

FerryGuestContainer *ferry_sandbox_get_container(FerrySandbox *sandbox, const char *id)
{
  return g_hash_table_lookup(sandbox->containers, id);
}

void ferry_sandbox_forget_container(FerrySandbox *sandbox, const char *id)
{
  FerryGuestContainer *c = g_hash_table_lookup(sandbox->containers, id);
  if (c == NULL)
    return;
  ferry_guest_container_close(c);
  g_hash_table_remove(sandbox->containers, id);
}

static gint compare_strings(gconstpointer a, gconstpointer b)
{
  return g_strcmp0(*(const char *const *)a, *(const char *const *)b);
}

GStrv ferry_sandbox_list_containers(FerrySandbox *sandbox)
{
  g_autoptr(GPtrArray) ids = g_ptr_array_new();
  GHashTableIter it;
  gpointer key;
  g_hash_table_iter_init(&it, sandbox->containers);
  while (g_hash_table_iter_next(&it, &key, NULL))
    g_ptr_array_add(ids, g_strdup(key));
  g_ptr_array_sort(ids, compare_strings);
  g_ptr_array_add(ids, NULL);
  return (GStrv)g_ptr_array_free(g_steal_pointer(&ids), FALSE);
}

/* ------------------------------------------------------------------ free -- */

void ferry_sandbox_free(FerrySandbox *sandbox)
{
  if (sandbox == NULL)
    return;
  sandbox->state = SB_STOPPED; /* what the teardown below may call back finds nothing to do */
  sandbox->start_done = sandbox->stop_done = NULL;
  ferry_source_clear(&sandbox->boot_timer);
  g_list_free_full(g_steal_pointer(&sandbox->reports), report_free);
  /* The guest connection's teardown may answer creates in flight: they find no
   * sandbox and only free themselves. */
  for (GList *l = sandbox->creates; l != NULL; l = l->next)
    ((CreateOp *)l->data)->sandbox = NULL;
  g_clear_pointer(&sandbox->creates, g_list_free);
  g_hash_table_unref(sandbox->containers);
  sandbox_roots_free(sandbox);
  if (sandbox->transfer != NULL) {
    ferry_source_clear(&sandbox->transfer->timer);
    ferry_fd_close_quietly(sandbox->transfer->fd);
    g_free(sandbox->transfer);
  }
  ferry_fd_close_quietly(sandbox->incoming_fd);
  g_ptr_array_unref(sandbox->restore_ids);
  g_clear_pointer(&sandbox->gc, ferry_guest_connection_free);
  g_clear_pointer(&sandbox->ports, ferry_stdio_ports_free);
  g_clear_pointer(&sandbox->mux, ferry_mux_free);
  g_clear_pointer(&sandbox->vm, ferry_vm_free); /* kills QEMU by its pid */
  g_clear_error(&sandbox->start_error);
  g_free(sandbox->id);
  g_free(sandbox->state_dir);
  g_free(sandbox->kernel);
  g_free(sandbox->initrd);
  g_free(sandbox->kernel_args);
  g_free(sandbox->qemu_binary);
  g_main_context_unref(sandbox->context);
  g_free(sandbox);
}
