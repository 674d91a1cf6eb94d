/*
 * SCSI disk hot-plug (ferry/vm.h, SCSI disks): blockdev-add + device_add to add,
 * device_del + DEVICE_DELETED + blockdev-del to remove, with the objects the builder
 * renders for the same disk (builder-render.c), and the VM's document kept in step.
 */
#include <errno.h>
#include <string.h>
#include <sys/stat.h>

#include "builder-private.h"
#include "ferry/error.h"
#include "ferry/source.h"
#include "vm-private.h"

struct VmDiskOp {
  FerryVm *vm;
  GList link; /* in vm->disk_ops */
  Op *op;
  gboolean add;
  char *controller;
  guint lun;
  char *path;       /* add */
  char *what;       /* "add SCSI disk /x at 0/1": the errors' prefix */
  char *id;         /* disk<c>-<lun>: the device */
  json_t *nodes;    /* blockdev-add arguments, bottom first */
  guint nodes_live; /* how many of them QEMU has (add: created so far; remove: still there) */
  GError *error;    /* add: the failure, reported once the rollback is done */
  /* remove */
  gboolean del_answered;
  gboolean deleted;
  GSource *timer;
};

static void disk_op_free(VmDiskOp *d)
{
  ferry_source_clear(&d->timer);
  g_free(d->op);
  g_free(d->controller);
  g_free(d->path);
  g_free(d->what);
  g_free(d->id);
  json_decref(d->nodes);
  g_clear_error(&d->error);
  g_free(d);
}

/* Finish the op with `error` (borrowed; NULL: success) and forget it. */
static void disk_op_finish(VmDiskOp *d, const GError *error)
{
  FerryVm *vm = d->vm;
  g_queue_unlink(&vm->disk_ops, &d->link);
  Op *op = g_steal_pointer(&d->op);
  disk_op_free(d);
  vm_op_finish(op, error);
}

static void disk_op_fail(VmDiskOp *d, const GError *error)
{
  g_autoptr(GError) e =
      g_error_new(error->domain, error->code, "vm %s: %s: %s", d->vm->id, d->what, error->message);
  disk_op_finish(d, e);
}

static const char *node_name(VmDiskOp *d, guint i)
{
  return json_string_value(json_object_get(json_array_get(d->nodes, i), "node-name"));
}

static gboolean disk_op_busy(FerryVm *vm, const char *controller, guint lun)
{
  for (GList *l = vm->disk_ops.head; l != NULL; l = l->next) {
    VmDiskOp *d = l->data;
    if (d->lun == lun && strcmp(d->controller, controller) == 0)
      return TRUE;
  }
  return FALSE;
}

/* The checks both directions share; NULL when the op may go on. */
static GError *disk_precondition(FerryVm *vm, const char *what, const char *controller, guint lun)
{
  if (vm->state != FERRY_VM_RUNNING && vm->state != FERRY_VM_PAUSED)
    return vm_precondition(vm, what, ferry_vm_state_name(vm->state));
  if (vm_in_migration_mode(vm))
    return vm_precondition(vm, what, "a migration is in progress");
  if (vm->qmp == NULL || !ferry_qmp_is_open(vm->qmp))
    return g_error_new(FERRY_ERROR, FERRY_ERROR_UNAVAILABLE, "vm %s: %s: QEMU is not running",
                       vm->id, what);
  if (controller != NULL && disk_op_busy(vm, controller, lun))
    return vm_precondition(vm, what, "another add or remove of that LUN is in progress");
  return NULL;
}

static VmDiskOp *disk_op_new(FerryVm *vm, gboolean add, const char *controller, guint lun,
                             char *what, FerryVmDoneFunc done, gpointer user_data)
{
  VmDiskOp *d = g_new0(VmDiskOp, 1);
  d->vm = vm;
  d->add = add;
  d->controller = g_strdup(controller);
  d->lun = lun;
  d->what = what;
  d->op = vm_op_new(vm, done, user_data);
  d->link.data = d;
  g_queue_push_tail_link(&vm->disk_ops, &d->link);
  return d;
}

/* ---------------------------------------------------------------- add -- */

static void add_step(VmDiskOp *d);

/* Rollback of a failed add: delete the nodes created so far, top first, whatever QEMU
 * says (a node it refuses to delete is gone with QEMU at the latest), then report. */
static void on_rollback_del(FerryQmp *qmp, json_t *result, const GError *error, gpointer ud);

static void rollback_step(VmDiskOp *d)
{
  if (d->nodes_live == 0 || d->vm->qmp == NULL) {
    g_autoptr(GError) e = g_steal_pointer(&d->error);
    disk_op_fail(d, e);
    return;
  }
  d->nodes_live--;
  g_autoptr(json_t) args = json_pack("{s:s}", "node-name", node_name(d, d->nodes_live));
  ferry_qmp_execute(d->vm->qmp, "blockdev-del", args, 0, on_rollback_del, d);
}

static void on_rollback_del(FerryQmp *qmp, json_t *result, const GError *error, gpointer ud)
{
  VmDiskOp *d = ud;
  if (d->vm->freeing)
    return; /* ferry_vm_free frees the op */
  rollback_step(d);
}

static void on_add_reply(FerryQmp *qmp, json_t *result, const GError *error, gpointer ud)
{
  VmDiskOp *d = ud;
  if (d->vm->freeing)
    return;
  if (error != NULL) {
    d->error = g_error_copy(error);
    rollback_step(d);
    return;
  }
  if (d->nodes_live < json_array_size(d->nodes)) {
    d->nodes_live++;
    add_step(d);
    return;
  }
  /* device_add succeeded: the disk is the VM's now, and the document says so. */
  FerryVm *vm = d->vm;
  g_autoptr(GError) e = NULL;
  if (!ferry_vm_doc_add_scsi_disk(vm->doc, d->controller, d->lun, d->path, TRUE, &e)) {
    disk_op_fail(d, e); /* checked on a copy before: cannot happen */
    return;
  }
  disk_op_finish(d, NULL);
}

static void add_step(VmDiskOp *d)
{
  FerryVm *vm = d->vm;
  if (vm->qmp == NULL) {
    d->error = g_error_new(FERRY_ERROR, FERRY_ERROR_UNAVAILABLE, "QEMU is not running any more");
    rollback_step(d);
    return;
  }
  if (d->nodes_live < json_array_size(d->nodes)) {
    ferry_qmp_execute(vm->qmp, "blockdev-add", json_array_get(d->nodes, d->nodes_live), 0,
                      on_add_reply, d);
    return;
  }
  guint c = 0;
  char key[16];
  g_snprintf(key, sizeof(key), "%u", d->lun);
  vmdoc_scsi_controller_index(vm->doc, d->controller, &c);
  g_autoptr(json_t) device = vmdoc_scsi_disk_device(c, key);
  ferry_qmp_execute(vm->qmp, "device_add", device, 0, on_add_reply, d);
}

void ferry_vm_scsi_add_disk(FerryVm *vm, const char *controller, guint lun, const char *path,
                            FerryVmDoneFunc done, gpointer user_data)
{
  g_return_if_fail(vm != NULL);
  char *what = g_strdup_printf("add SCSI disk %s at %s/%u", path ? path : "(null)",
                               controller ? controller : "(null)", lun);
  GError *error = disk_precondition(vm, what, controller, lun);
  /* The document's own checks, on a copy: the VM's changes only once QEMU has the disk. */
  g_autoptr(FerryVmDoc) copy = ferry_vm_doc_copy(vm->doc);
  GError *doc_error = NULL;
  if (error == NULL && !ferry_vm_doc_add_scsi_disk(copy, controller, lun, path, TRUE, &doc_error)) {
    error = g_error_new(doc_error->domain, doc_error->code, "vm %s: %s: %s", vm->id, what,
                        doc_error->message);
    g_error_free(doc_error);
  }
  struct stat st;
  if (error == NULL && stat(path, &st) != 0) {
    int err = errno;
    error = g_error_new(FERRY_ERROR, ferry_error_code_from_errno(err), "vm %s: %s: %s", vm->id,
                        what, g_strerror(err));
  }
  if (error == NULL && !S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
    error = g_error_new(FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                        "vm %s: %s: not a regular file or a block device", vm->id, what);
  if (error != NULL) {
    g_free(what);
    vm_op_finish_later(vm, done, user_data, error);
    return;
  }
  VmDiskOp *d = disk_op_new(vm, TRUE, controller, lun, what, done, user_data);
  d->path = g_strdup(path);
  guint c = 0;
  vmdoc_scsi_controller_index(copy, controller, &c);
  char key[16];
  g_snprintf(key, sizeof(key), "%u", lun);
  d->nodes = vmdoc_scsi_disk_nodes(copy, c, key, ferry_vm_doc_scsi_disk(copy, controller, lun));
  d->id = vmdoc_scsi_disk_id(c, key);
  add_step(d); /* QMP answers from the main loop: nothing is reported inside this call */
}

/* ------------------------------------------------------------- remove -- */

static void on_remove_del(FerryQmp *qmp, json_t *result, const GError *error, gpointer ud);

static void remove_nodes_step(VmDiskOp *d)
{
  if (d->nodes_live == 0) {
    disk_op_finish(d, NULL);
    return;
  }
  if (d->vm->qmp == NULL) {
    g_autoptr(GError) e =
        g_error_new(FERRY_ERROR, FERRY_ERROR_UNAVAILABLE, "QEMU is not running any more");
    disk_op_fail(d, e);
    return;
  }
  g_autoptr(json_t) args = json_pack("{s:s}", "node-name", node_name(d, d->nodes_live - 1));
  ferry_qmp_execute(d->vm->qmp, "blockdev-del", args, 0, on_remove_del, d);
}

static void on_remove_del(FerryQmp *qmp, json_t *result, const GError *error, gpointer ud)
{
  VmDiskOp *d = ud;
  if (d->vm->freeing)
    return;
  if (error != NULL) {
    disk_op_fail(d, error);
    return;
  }
  d->nodes_live--;
  remove_nodes_step(d);
}

/* Both the device_del answer and DEVICE_DELETED are in: the device is gone. */
static void device_gone(VmDiskOp *d)
{
  if (!d->del_answered || !d->deleted)
    return;
  ferry_source_clear(&d->timer);
  g_autoptr(GError) e = NULL;
  /* Not in the document any more, whatever the nodes do: a destination must not render
   * a device the source no longer has. */
  ferry_vm_doc_remove_scsi_disk(d->vm->doc, d->controller, d->lun, &e);
  remove_nodes_step(d);
}

static gboolean on_deleted_timeout(gpointer ud);

static void on_device_del(FerryQmp *qmp, json_t *result, const GError *error, gpointer ud)
{
  VmDiskOp *d = ud;
  if (d->vm->freeing)
    return;
  if (error != NULL) {
    disk_op_fail(d, error);
    return;
  }
  d->del_answered = TRUE;
  if (!d->deleted)
    d->timer =
        ferry_timeout_new(d->vm->context, FERRY_VM_DEVICE_DELETED_LIMIT_MS, on_deleted_timeout, d);
  device_gone(d);
}

static gboolean on_deleted_timeout(gpointer ud)
{
  VmDiskOp *d = ud;
  ferry_source_clear(&d->timer);
  /* Armed once device_del was answered: no command of this op is in flight. */
  g_autoptr(GError) e = g_error_new(FERRY_ERROR, FERRY_ERROR_DEADLINE_EXCEEDED,
                                    "QEMU sent no DEVICE_DELETED for %s within %u ms", d->id,
                                    FERRY_VM_DEVICE_DELETED_LIMIT_MS);
  disk_op_fail(d, e);
  return G_SOURCE_REMOVE;
}

void ferry_vm_scsi_remove_disk(FerryVm *vm, const char *controller, guint lun, FerryVmDoneFunc done,
                               gpointer user_data)
{
  g_return_if_fail(vm != NULL);
  char *what =
      g_strdup_printf("remove SCSI disk at %s/%u", controller ? controller : "(null)", lun);
  GError *error = disk_precondition(vm, what, controller, lun);
  guint c = 0;
  json_t *disk = NULL;
  if (error == NULL && !vmdoc_scsi_controller_index(vm->doc, controller, &c))
    error = g_error_new(FERRY_ERROR, FERRY_ERROR_NOT_FOUND,
                        "vm %s: %s: no SCSI controller with id %s found", vm->id, what,
                        controller ? controller : "(null)");
  if (error == NULL && (disk = ferry_vm_doc_scsi_disk(vm->doc, controller, lun)) == NULL)
    error = g_error_new(FERRY_ERROR, FERRY_ERROR_NOT_FOUND, "vm %s: %s: no disk at that LUN",
                        vm->id, what);
  if (error != NULL) {
    g_free(what);
    vm_op_finish_later(vm, done, user_data, error);
    return;
  }
  VmDiskOp *d = disk_op_new(vm, FALSE, controller, lun, what, done, user_data);
  char key[16];
  g_snprintf(key, sizeof(key), "%u", lun);
  d->nodes = vmdoc_scsi_disk_nodes(vm->doc, c, key, disk);
  d->nodes_live = json_array_size(d->nodes);
  d->id = vmdoc_scsi_disk_id(c, key);
  /* DEVICE_DELETED may come before device_del's answer: both are awaited. */
  g_autoptr(json_t) args = json_pack("{s:s}", "id", d->id);
  ferry_qmp_execute(vm->qmp, "device_del", args, 0, on_device_del, d);
}

/* ------------------------------------------------------- vm.c hooks -- */

void vm_disks_on_event(FerryVm *vm, const char *event, json_t *data)
{
  if (strcmp(event, "DEVICE_DELETED") != 0)
    return;
  const char *device = json_string_value(json_object_get(data, "device"));
  if (device == NULL)
    return;
  for (GList *l = vm->disk_ops.head; l != NULL; l = l->next) {
    VmDiskOp *d = l->data;
    if (!d->add && !d->deleted && strcmp(d->id, device) == 0) {
      d->deleted = TRUE;
      device_gone(d);
      return;
    }
  }
}

void vm_disks_qemu_exited(FerryVm *vm)
{
  /* Ops with a QMP command in flight got UNAVAILABLE from the closed connection; what is
   * left waits only for an event that will not come. */
  GList *l = vm->disk_ops.head;
  while (l != NULL) {
    VmDiskOp *d = l->data;
    l = l->next;
    if (!d->add && d->del_answered && !d->deleted) {
      g_autoptr(GError) e = g_error_new(FERRY_ERROR, FERRY_ERROR_UNAVAILABLE,
                                        "QEMU exited before it deleted %s", d->id);
      disk_op_fail(d, e);
    }
  }
}

void vm_disks_free(FerryVm *vm)
{
  while (!g_queue_is_empty(&vm->disk_ops)) {
    VmDiskOp *d = g_queue_peek_head(&vm->disk_ops);
    g_queue_unlink(&vm->disk_ops, &d->link);
    disk_op_free(d);
  }
}
