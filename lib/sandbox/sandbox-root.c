/*
 * Container roots in a sandbox (include/ferry/sandbox.h, "container roots"): layer
 * images as read-only SCSI disks shared by digest, mounted in the guest, combined
 * under a tmpfs upper. Operations run one at a time from a queue, each a chain of
 * asynchronous steps on the VM (hot-add, hot-remove) and the guest (map, unmap,
 * combine, remove); every step's answer comes from the main loop.
 */
#include "ferry/error.h"
#include "sandbox-private.h"

/* The SCSI controller the sandbox's document has (sandbox.c) and its LUN range: the
 * builder accepts LUNs 0..63. */
#define ROOT_CONTROLLER "0"
#define MAX_LUNS 64
#define GUEST_SCSI_MOUNTS "/run/mounts/scsi"
#define GUEST_CONTAINERS "/run/gcs/c"

typedef struct {
  char *digest;
  char *mount_path; /* in the guest */
  guint lun;
  guint refs; /* roots using it */
} SandboxDisk;

typedef struct {
  char *id;
  GPtrArray *digests; /* char *, top first */
} SandboxRoot;

typedef enum {
  OP_ATTACH,
  OP_DETACH,
} RootOpKind;

typedef struct {
  FerrySandbox *sandbox;
  RootOpKind kind;
  char *id;
  GPtrArray *paths;   /* attach: host image paths, top first */
  GPtrArray *digests; /* attach: digests, top first */
  guint scratch_mb;
  guint step;        /* the layer being worked on */
  GPtrArray *taken;  /* attach: digests this op took a reference on */
  SandboxDisk *disk; /* the disk being added (or removed) */
  GError *error;     /* the first failure; the rollback keeps it */
  gboolean rolling_back;
  FerrySandboxDoneFunc done;
  gpointer user_data;
} RootOp;

static void op_next(RootOp *op);

char *ferry_sandbox_guest_bundle(const char *container_id)
{
  return g_build_filename(GUEST_CONTAINERS, container_id, NULL);
}

char *ferry_sandbox_guest_root(const char *container_id)
{
  return g_build_filename(GUEST_CONTAINERS, container_id, "rootfs", NULL);
}

static void disk_free(gpointer p)
{
  SandboxDisk *d = p;
  g_free(d->digest);
  g_free(d->mount_path);
  g_free(d);
}

static void root_free(gpointer p)
{
  SandboxRoot *r = p;
  g_free(r->id);
  g_ptr_array_unref(r->digests);
  g_free(r);
}

static void op_free(RootOp *op)
{
  g_free(op->id);
  if (op->paths != NULL)
    g_ptr_array_unref(op->paths);
  if (op->digests != NULL)
    g_ptr_array_unref(op->digests);
  if (op->taken != NULL)
    g_ptr_array_unref(op->taken);
  g_clear_error(&op->error);
  g_free(op);
}

void sandbox_roots_init(FerrySandbox *sandbox)
{
  sandbox->disks = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, disk_free);
  sandbox->roots = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, root_free);
  g_queue_init(&sandbox->root_ops);
}

void sandbox_roots_free(FerrySandbox *sandbox)
{
  /* A step in flight holds the op: its answer (from a VM or guest connection being
   * freed too) finds op->sandbox NULL and only frees the op. */
  RootOp *head = g_queue_peek_head(&sandbox->root_ops);
  if (head != NULL)
    head->sandbox = NULL;
  RootOp *op;
  while ((op = g_queue_pop_head(&sandbox->root_ops)) != NULL)
    if (op != head)
      op_free(op);
  g_hash_table_unref(sandbox->roots);
  g_hash_table_unref(sandbox->disks);
}

guint ferry_sandbox_disk_count(FerrySandbox *sandbox)
{
  return g_hash_table_size(sandbox->disks);
}

/* ------------------------------------------------------------- queueing -- */

static void op_finish(RootOp *op)
{
  FerrySandbox *sandbox = op->sandbox;
  g_assert(g_queue_peek_head(&sandbox->root_ops) == op);
  g_queue_pop_head(&sandbox->root_ops);
  sandbox_report_later(sandbox, op->done, op->user_data, op->error);
  op_free(op);
  RootOp *next = g_queue_peek_head(&sandbox->root_ops);
  if (next != NULL)
    op_next(next);
}

static void op_fail(RootOp *op, const GError *error, const char *what)
{
  if (op->error == NULL) {
    op->error = g_error_copy(error);
    g_prefix_error(&op->error, "sandbox %s: container %s: %s: ", op->sandbox->id, op->id, what);
  }
}

static void queue_op(FerrySandbox *sandbox, RootOp *op)
{
  g_queue_push_tail(&sandbox->root_ops, op);
  if (g_queue_get_length(&sandbox->root_ops) == 1)
    op_next(op);
}

/* A step's answer: FALSE when the sandbox is gone (the op is freed). */
static gboolean op_alive(RootOp *op)
{
  if (op->sandbox != NULL)
    return TRUE;
  op_free(op);
  return FALSE;
}

static guint free_lun(FerrySandbox *sandbox)
{
  gboolean used[MAX_LUNS] = { FALSE };
  GHashTableIter it;
  gpointer value;
  g_hash_table_iter_init(&it, sandbox->disks);
  while (g_hash_table_iter_next(&it, NULL, &value))
    used[((SandboxDisk *)value)->lun] = TRUE;
  for (guint lun = 0; lun < MAX_LUNS; lun++)
    if (!used[lun])
      return lun;
  return MAX_LUNS;
}

/* ------------------------------------------------- releasing a disk (both) -- */

static void on_disk_removed(FerryVm *vm, const GError *error, gpointer ud)
{
  RootOp *op = ud;
  if (!op_alive(op))
    return;
  SandboxDisk *disk = g_steal_pointer(&op->disk);
  if (error != NULL)
    op_fail(op, error, "remove a layer disk");
  g_hash_table_remove(op->sandbox->disks, disk->digest);
  op_next(op);
}

static void on_disk_unmapped(const GError *error, gpointer ud)
{
  RootOp *op = ud;
  if (!op_alive(op))
    return;
  if (error != NULL) {
    /* Still mounted in the guest: the disk stays, so the guest never loses a device
     * under a mount. */
    op_fail(op, error, "unmount a layer disk");
    op->disk = NULL;
    op_next(op);
    return;
  }
  ferry_vm_scsi_remove_disk(op->sandbox->vm, ROOT_CONTROLLER, op->disk->lun, on_disk_removed, op);
}

/* Drop one reference on `digest`; the last one unmounts and removes the disk (op->disk
 * is set while that runs). TRUE when a step was started. */
static gboolean release_disk(RootOp *op, const char *digest)
{
  SandboxDisk *disk = g_hash_table_lookup(op->sandbox->disks, digest);
  if (disk == NULL || --disk->refs > 0)
    return FALSE;
  op->disk = disk;
  FerryGuestConnection *gc = ferry_sandbox_get_guest(op->sandbox);
  if (gc == NULL) {
    g_autoptr(GError) e =
        g_error_new(FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION, "the sandbox is not running");
    on_disk_unmapped(e, op);
    return TRUE;
  }
  ferry_guest_connection_unmap_disk(gc, disk->mount_path, on_disk_unmapped, op);
  return TRUE;
}

/* -------------------------------------------------------------- attach -- */

static void on_combined(const GError *error, gpointer ud)
{
  RootOp *op = ud;
  if (!op_alive(op))
    return;
  if (error != NULL) {
    op_fail(op, error, "combine the layers");
    op->rolling_back = TRUE;
    op_next(op);
    return;
  }
  SandboxRoot *root = g_new0(SandboxRoot, 1);
  root->id = g_strdup(op->id);
  root->digests = g_ptr_array_ref(op->digests);
  g_hash_table_insert(op->sandbox->roots, root->id, root);
  op_finish(op);
}

static void on_disk_mapped(const GError *error, gpointer ud)
{
  RootOp *op = ud;
  if (!op_alive(op))
    return;
  SandboxDisk *disk = g_steal_pointer(&op->disk);
  if (error != NULL) {
    op_fail(op, error, "mount a layer disk");
    /* Not mounted: hot-remove it again (it holds the one reference this op took). */
    op->rolling_back = TRUE;
    op->disk = disk;
    ferry_vm_scsi_remove_disk(op->sandbox->vm, ROOT_CONTROLLER, disk->lun, on_disk_removed, op);
    g_ptr_array_remove(op->taken, disk->digest);
    return;
  }
  op->step++;
  op_next(op);
}

static void on_disk_added(FerryVm *vm, const GError *error, gpointer ud)
{
  RootOp *op = ud;
  if (!op_alive(op))
    return;
  SandboxDisk *disk = op->disk;
  if (error != NULL) {
    op_fail(op, error, "hot-add a layer disk");
    g_ptr_array_remove(op->taken, disk->digest);
    g_hash_table_remove(op->sandbox->disks, disk->digest);
    op->disk = NULL;
    op->rolling_back = TRUE;
    op_next(op);
    return;
  }
  FerryGuestMappedDisk mapped = {
    .mount_path = disk->mount_path,
    .lun = (guint8)disk->lun,
    .read_only = TRUE,
    .filesystem = "erofs",
  };
  ferry_guest_connection_map_disk(ferry_sandbox_get_guest(op->sandbox), &mapped, on_disk_mapped,
                                  op);
}

static void attach_step(RootOp *op)
{
  FerrySandbox *sandbox = op->sandbox;
  if (op->step < op->digests->len) {
    const char *digest = op->digests->pdata[op->step];
    SandboxDisk *disk = g_hash_table_lookup(sandbox->disks, digest);
    if (disk != NULL) {
      disk->refs++;
      g_ptr_array_add(op->taken, disk->digest);
      op->step++;
      op_next(op);
      return;
    }
    guint lun = free_lun(sandbox);
    if (lun >= MAX_LUNS) {
      g_autoptr(GError) e = g_error_new(FERRY_ERROR, FERRY_ERROR_RESOURCE_EXHAUSTED,
                                        "all %u SCSI LUNs are in use", MAX_LUNS);
      op_fail(op, e, "attach a layer");
      op->rolling_back = TRUE;
      op_next(op);
      return;
    }
    disk = g_new0(SandboxDisk, 1);
    disk->digest = g_strdup(digest);
    disk->lun = lun;
    disk->refs = 1;
    disk->mount_path = g_strdup_printf(GUEST_SCSI_MOUNTS "/m%u", lun);
    g_hash_table_insert(sandbox->disks, disk->digest, disk);
    g_ptr_array_add(op->taken, disk->digest);
    op->disk = disk;
    ferry_vm_scsi_add_disk(sandbox->vm, ROOT_CONTROLLER, lun, op->paths->pdata[op->step],
                           on_disk_added, op);
    return;
  }
  g_autoptr(GPtrArray) layers = g_ptr_array_new_with_free_func(g_free);
  for (guint i = 0; i < op->digests->len; i++) {
    SandboxDisk *disk = g_hash_table_lookup(sandbox->disks, op->digests->pdata[i]);
    g_ptr_array_add(layers, g_strdup(disk->mount_path));
  }
  g_ptr_array_add(layers, NULL);
  g_autofree char *root = ferry_sandbox_guest_root(op->id);
  g_autofree char *bundle = ferry_sandbox_guest_bundle(op->id);
  g_autofree char *scratch = g_build_filename(bundle, "scratch", NULL);
  ferry_guest_connection_combine_layers(ferry_sandbox_get_guest(sandbox), op->id, root,
                                        (const char *const *)layers->pdata, scratch, op->scratch_mb,
                                        on_combined, op);
}

/* Give back the references a failed attach took, one disk at a time. */
static void rollback_step(RootOp *op)
{
  while (op->taken->len > 0) {
    g_autofree char *digest = g_strdup(op->taken->pdata[op->taken->len - 1]);
    g_ptr_array_remove_index(op->taken, op->taken->len - 1);
    if (release_disk(op, digest))
      return; /* on_disk_removed / on_disk_unmapped call again */
  }
  op_finish(op);
}

/* -------------------------------------------------------------- detach -- */

static void on_layers_removed(const GError *error, gpointer ud)
{
  RootOp *op = ud;
  if (!op_alive(op))
    return;
  if (error != NULL) {
    op_fail(op, error, "remove the combined layers");
    op_finish(op); /* the root stays attached: a process may still use it */
    return;
  }
  SandboxRoot *root = g_hash_table_lookup(op->sandbox->roots, op->id);
  op->taken = g_ptr_array_ref(root->digests);
  g_hash_table_remove(op->sandbox->roots, op->id);
  op->rolling_back = TRUE; /* from here on: release the disks */
  op_next(op);
}

/* ------------------------------------------------------------- driving -- */

static void op_next(RootOp *op)
{
  FerrySandbox *sandbox = op->sandbox;
  if (op->rolling_back) {
    rollback_step(op);
    return;
  }
  if (ferry_sandbox_get_guest(sandbox) == NULL) {
    g_autoptr(GError) e =
        g_error_new(FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION, "the sandbox is not running");
    op_fail(op, e, op->kind == OP_ATTACH ? "attach the root" : "detach the root");
    op->rolling_back = op->kind == OP_ATTACH;
    if (op->kind == OP_ATTACH)
      rollback_step(op);
    else
      op_finish(op);
    return;
  }
  if (op->kind == OP_ATTACH) {
    if (op->step == 0 && g_hash_table_contains(sandbox->roots, op->id)) {
      g_autoptr(GError) e =
          g_error_new(FERRY_ERROR, FERRY_ERROR_ALREADY_EXISTS, "its root is attached already");
      op_fail(op, e, "attach the root");
      op_finish(op);
      return;
    }
    attach_step(op);
    return;
  }
  if (!g_hash_table_contains(sandbox->roots, op->id)) {
    g_autoptr(GError) e = g_error_new(FERRY_ERROR, FERRY_ERROR_NOT_FOUND, "no root is attached");
    op_fail(op, e, "detach the root");
    op_finish(op);
    return;
  }
  g_autofree char *root = ferry_sandbox_guest_root(op->id);
  ferry_guest_connection_remove_layers(ferry_sandbox_get_guest(sandbox), root, on_layers_removed,
                                       op);
}

void ferry_sandbox_attach_root(FerrySandbox *sandbox, const char *container_id,
                               const FerrySandboxLayer *layers, guint n_layers, guint scratch_mb,
                               FerrySandboxDoneFunc done, gpointer user_data)
{
  RootOp *op = g_new0(RootOp, 1);
  op->sandbox = sandbox;
  op->kind = OP_ATTACH;
  op->id = g_strdup(container_id);
  op->paths = g_ptr_array_new_with_free_func(g_free);
  op->digests = g_ptr_array_new_with_free_func(g_free);
  op->taken = g_ptr_array_new(); /* borrowed from the disks */
  for (guint i = 0; i < n_layers; i++) {
    g_ptr_array_add(op->paths, g_strdup(layers[i].path));
    g_ptr_array_add(op->digests, g_strdup(layers[i].digest));
  }
  op->scratch_mb = scratch_mb;
  op->done = done;
  op->user_data = user_data;
  if (n_layers == 0) {
    g_autoptr(GError) e = g_error_new(FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "no layers");
    sandbox_report_later(sandbox, done, user_data, e);
    op_free(op);
    return;
  }
  queue_op(sandbox, op);
}

void ferry_sandbox_detach_root(FerrySandbox *sandbox, const char *container_id,
                               FerrySandboxDoneFunc done, gpointer user_data)
{
  RootOp *op = g_new0(RootOp, 1);
  op->sandbox = sandbox;
  op->kind = OP_DETACH;
  op->id = g_strdup(container_id);
  op->done = done;
  op->user_data = user_data;
  queue_op(sandbox, op);
}

/* --------------------------------------------------------------- migration -- */

void sandbox_roots_describe(FerrySandbox *sandbox, json_t *disks, json_t *roots)
{
  GHashTableIter it;
  gpointer value;
  g_hash_table_iter_init(&it, sandbox->disks);
  while (g_hash_table_iter_next(&it, NULL, &value)) {
    SandboxDisk *d = value;
    json_array_append_new(disks,
                          json_pack("{s:s, s:I}", "digest", d->digest, "lun", (json_int_t)d->lun));
  }
  g_hash_table_iter_init(&it, sandbox->roots);
  while (g_hash_table_iter_next(&it, NULL, &value)) {
    SandboxRoot *r = value;
    json_t *digests = json_array();
    for (guint i = 0; i < r->digests->len; i++)
      json_array_append_new(digests, json_string(r->digests->pdata[i]));
    json_array_append_new(roots, json_pack("{s:s, s:o}", "id", r->id, "digests", digests));
  }
}

gboolean sandbox_roots_adopt(FerrySandbox *sandbox, FerryVmDoc *doc, json_t *description,
                             GHashTable *images, GError **error)
{
  size_t i;
  json_t *item;
  json_array_foreach(json_object_get(description, "disks"), i, item)
  {
    const char *digest = json_string_value(json_object_get(item, "digest"));
    json_t *lun = json_object_get(item, "lun");
    if (digest == NULL || !json_is_integer(lun) || json_integer_value(lun) < 0 ||
        json_integer_value(lun) >= MAX_LUNS || g_hash_table_contains(sandbox->disks, digest)) {
      g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                  "the description's disk %zu is malformed or repeated", i);
      return FALSE;
    }
    /* No host path crosses: each layer is found here by its digest. */
    const char *path = images != NULL ? g_hash_table_lookup(images, digest) : NULL;
    if (path == NULL) {
      g_set_error(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION,
                  "no image here for the layer %s the source has attached", digest);
      return FALSE;
    }
    guint n = (guint)json_integer_value(lun);
    if (!ferry_vm_doc_add_scsi_disk(doc, ROOT_CONTROLLER, n, path, TRUE, error))
      return FALSE;
    SandboxDisk *disk = g_new0(SandboxDisk, 1);
    disk->digest = g_strdup(digest);
    disk->lun = n;
    disk->mount_path = g_strdup_printf(GUEST_SCSI_MOUNTS "/m%u", n);
    g_hash_table_insert(sandbox->disks, disk->digest, disk);
  }
  json_array_foreach(json_object_get(description, "roots"), i, item)
  {
    const char *id = json_string_value(json_object_get(item, "id"));
    json_t *digests = json_object_get(item, "digests");
    if (id == NULL || !json_is_array(digests) || g_hash_table_contains(sandbox->roots, id)) {
      g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                  "the description's root %zu is malformed or repeated", i);
      return FALSE;
    }
    SandboxRoot *root = g_new0(SandboxRoot, 1);
    root->id = g_strdup(id);
    root->digests = g_ptr_array_new_with_free_func(g_free);
    g_hash_table_insert(sandbox->roots, root->id, root);
    size_t j;
    json_t *d;
    json_array_foreach(digests, j, d)
    {
      SandboxDisk *disk = g_hash_table_lookup(sandbox->disks, json_string_value(d) ?: "");
      if (disk == NULL) {
        g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                    "the description's root %s names a layer it has no disk for", id);
        return FALSE;
      }
      disk->refs++;
      g_ptr_array_add(root->digests, g_strdup(disk->digest));
    }
  }
  return TRUE;
}
