/*
 * SCSI disk hot-plug (ferry_vm_scsi_add_disk / ferry_vm_scsi_remove_disk) against a real
 * QEMU on each machine type, with a kernel that only halts (no guest needed: the hot-plug
 * is between the VM manager and QEMU; the guest's side is tests/integration/test-disk.c).
 * Skipped, with the reason, without qemu-system-x86_64 (FERRY_QEMU picks another binary).
 */
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "ferry/error.h"
#include "ferry/fd.h"
#include "ferry/json.h"
#include "ferry/vm.h"
#include "test-util.h"

typedef struct {
  gboolean done;
  GError *error;
} Done;

static void on_done(FerryVm *vm, const GError *error, gpointer ud)
{
  Done *d = ud;
  g_assert_false(d->done);
  d->done = TRUE;
  g_clear_error(&d->error);
  if (error != NULL)
    d->error = g_error_copy(error);
}

/* Wait for `d` (a callback never runs inside the call that started it: checked first). */
static void wait_done(Done *d)
{
  g_assert_false(d->done);
  g_assert_true(test_run_until(&d->done, 60000));
  d->done = FALSE;
}

static void wait_ok(Done *d)
{
  wait_done(d);
  g_assert_no_error(d->error);
}

static void wait_error(Done *d, int code, const char *part)
{
  wait_done(d);
  g_assert_nonnull(d->error);
  if (!g_error_matches(d->error, FERRY_ERROR, code) || strstr(d->error->message, part) == NULL)
    g_error("expected error %d containing \"%s\", got %d: %s", code, part, d->error->code,
            d->error->message);
  g_clear_error(&d->error);
}

typedef struct {
  char *dir;
  char *kernel;
  char *rw; /* cold-plugged read-write at LUN 9 */
  char *a;  /* images to hot-add */
  char *b;
  char *qemu; /* NULL: skip */
} Fixture;

static char *make_image(const char *dir, const char *name)
{
  char *path = g_build_filename(dir, name, NULL);
  int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  g_assert_cmpint(fd, >=, 0);
  g_assert_cmpint(ftruncate(fd, 1 << 20), ==, 0);
  close(fd);
  return path;
}

static void setup(Fixture *f, gconstpointer data)
{
  const char *env = g_getenv("FERRY_QEMU");
  f->qemu =
      env != NULL && env[0] != '\0' ? g_strdup(env) : g_find_program_in_path("qemu-system-x86_64");
  f->dir = test_make_tmpdir();
  f->kernel = g_build_filename(f->dir, "pvh.elf", NULL);
  test_write_pvh_kernel(f->kernel);
  f->rw = make_image(f->dir, "rw.img");
  f->a = make_image(f->dir, "a.img");
  f->b = make_image(f->dir, "b.img");
}

static void teardown(Fixture *f, gconstpointer data)
{
  test_rm_rf(f->dir);
  g_free(f->dir);
  g_free(f->kernel);
  g_free(f->rw);
  g_free(f->a);
  g_free(f->b);
  g_free(f->qemu);
}

static FerryVmDoc *disk_doc(Fixture *f, const char *machine, gboolean qos)
{
  FerryVmDoc *doc = ferry_vm_doc_new("disk-test");
  g_autoptr(GError) error = NULL;
  ferry_vm_doc_set_kernel_direct(doc, f->kernel, NULL, "console=ttyS0");
  ferry_vm_doc_set_machine(doc, machine);
  if (qos) {
    g_autoptr(json_t) limits =
        json_pack("{s:i, s:i}", "IopsMaximum", 1000, "BandwidthMaximum", 10485760);
    ferry_vm_doc_set_storage_qos(doc, limits);
  }
  g_assert_true(ferry_vm_doc_add_mux_port(doc, "ferry.mux", &error));
  g_assert_true(ferry_vm_doc_add_scsi_controller(doc, "0", &error));
  g_assert_true(ferry_vm_doc_add_scsi_disk(doc, "0", 9, f->rw, FALSE, &error));
  return doc;
}

static FerryVm *vm_for(Fixture *f, const FerryVmDoc *doc, const char *name)
{
  g_autofree char *state = g_build_filename(f->dir, name, NULL);
  FerryVmOptions o = { .qemu_binary = f->qemu, .accel = FERRY_VM_ACCEL_TCG, .tsc_khz = 2596150 };
  g_autoptr(GError) error = NULL;
  FerryVm *vm = ferry_vm_new(name, doc, state, &o, &error);
  g_assert_no_error(error);
  return vm;
}

static json_t *disk_at(FerryVm *vm, guint lun)
{
  return ferry_vm_doc_scsi_disk(ferry_vm_get_doc(vm), "0", lun);
}

/* Before a start there is no QEMU to add to: FAILED_PRECONDITION, from the main loop. */
static void test_add_unstarted(Fixture *f, gconstpointer data)
{
  g_autoptr(FerryVmDoc) doc = disk_doc(f, "microvm", FALSE);
  g_autoptr(FerryVm) vm = vm_for(f, doc, "vm");
  Done d = { 0 };
  ferry_vm_scsi_add_disk(vm, "0", 1, f->a, on_done, &d);
  wait_error(&d, FERRY_ERROR_FAILED_PRECONDITION, "created");
  ferry_vm_scsi_remove_disk(vm, "0", 9, on_done, &d);
  wait_error(&d, FERRY_ERROR_FAILED_PRECONDITION, "created");
  g_assert_null(disk_at(vm, 1));
}

/* The whole cycle on one machine type. */
static void hot_plug_cycle(Fixture *f, const char *machine, gboolean qos)
{
  if (f->qemu == NULL) {
    g_test_skip("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)");
    return;
  }
  g_autoptr(FerryVmDoc) doc = disk_doc(f, machine, qos);
  g_autoptr(FerryVm) vm = vm_for(f, doc, "vm");
  Done d = { 0 };
  ferry_vm_start(vm, on_done, &d);
  wait_ok(&d);

  /* Added read-only, and recorded. */
  ferry_vm_scsi_add_disk(vm, "0", 1, f->a, on_done, &d);
  wait_ok(&d);
  json_t *disk = disk_at(vm, 1);
  g_assert_nonnull(disk);
  g_assert_cmpstr(json_string_value(json_object_get(disk, "Path")), ==, f->a);
  g_assert_true(json_is_true(json_object_get(disk, "ReadOnly")));

  /* The LUN is in use; an unknown controller; a missing file; a relative path. */
  ferry_vm_scsi_add_disk(vm, "0", 1, f->b, on_done, &d);
  wait_error(&d, FERRY_ERROR_ALREADY_EXISTS, "already has a disk at LUN 1");
  ferry_vm_scsi_add_disk(vm, "7", 1, f->b, on_done, &d);
  wait_error(&d, FERRY_ERROR_NOT_FOUND, "no SCSI controller with id 7");
  g_autofree char *missing = g_build_filename(f->dir, "missing.img", NULL);
  ferry_vm_scsi_add_disk(vm, "0", 2, missing, on_done, &d);
  wait_error(&d, FERRY_ERROR_NOT_FOUND, "missing.img");
  ferry_vm_scsi_add_disk(vm, "0", 2, "a.img", on_done, &d);
  wait_error(&d, FERRY_ERROR_INVALID_ARGUMENT, "a.img");
  g_assert_null(disk_at(vm, 2));

  /* QEMU refuses the device (the image is the read-write LUN 9's, whose write lock a
   * read-only user conflicts with) after both nodes were created: the error is QEMU's,
   * and the rollback deleted the nodes, since a second add at the same LUN, which
   * creates nodes of the same names, succeeds. */
  ferry_vm_scsi_add_disk(vm, "0", 3, f->rw, on_done, &d);
  wait_error(&d, FERRY_ERROR_UNKNOWN, "device_add: Failed to get shared \"write\" lock");
  g_assert_null(disk_at(vm, 3));
  ferry_vm_scsi_add_disk(vm, "0", 3, f->b, on_done, &d);
  wait_ok(&d);
  g_assert_nonnull(disk_at(vm, 3));

  /* One operation per LUN at a time. */
  Done d2 = { 0 };
  ferry_vm_scsi_remove_disk(vm, "0", 3, on_done, &d);
  ferry_vm_scsi_add_disk(vm, "0", 3, f->b, on_done, &d2);
  wait_error(&d2, FERRY_ERROR_FAILED_PRECONDITION, "in progress");
  wait_ok(&d);
  g_assert_null(disk_at(vm, 3));

  /* Removed and forgotten, and its names free again. */
  ferry_vm_scsi_remove_disk(vm, "0", 1, on_done, &d);
  wait_ok(&d);
  g_assert_null(disk_at(vm, 1));
  ferry_vm_scsi_add_disk(vm, "0", 1, f->a, on_done, &d);
  wait_ok(&d);
  ferry_vm_scsi_remove_disk(vm, "0", 1, on_done, &d);
  wait_ok(&d);

  /* A cold-plugged disk has the objects a hot-added one has: it is removed the same way. */
  ferry_vm_scsi_remove_disk(vm, "0", 9, on_done, &d);
  wait_ok(&d);
  g_assert_null(disk_at(vm, 9));
  ferry_vm_scsi_remove_disk(vm, "0", 9, on_done, &d);
  wait_error(&d, FERRY_ERROR_NOT_FOUND, "no disk at that LUN");

  ferry_vm_terminate(vm, on_done, &d);
  wait_ok(&d);
  ferry_vm_scsi_add_disk(vm, "0", 1, f->a, on_done, &d);
  wait_error(&d, FERRY_ERROR_FAILED_PRECONDITION, "exited");
}

static void test_microvm(Fixture *f, gconstpointer data)
{
  hot_plug_cycle(f, "microvm", FALSE);
}

static void test_q35_qos(Fixture *f, gconstpointer data)
{
  hot_plug_cycle(f, "q35", TRUE);
}

static void test_pc(Fixture *f, gconstpointer data)
{
  hot_plug_cycle(f, "pc", FALSE);
}

typedef struct {
  GArray *phases;
} Notes;

static void on_note(FerryVm *vm, const FerryVmNotification *n, gpointer ud)
{
  Notes *notes = ud;
  FerryVmPhase p = n->phase;
  g_array_append_val(notes->phases, p);
}

static gboolean has_phase(Notes *n, FerryVmPhase phase)
{
  for (guint i = 0; i < n->phases->len; i++)
    if (g_array_index(n->phases, FerryVmPhase, i) == phase)
      return TRUE;
  return FALSE;
}

/*
 * A disk hot-added on the source is in its document, and a destination built from that
 * document takes the migration: QEMU refuses a stream with device state the destination
 * has no device for ("Unknown savevm section"), so the destination's rendered disk has
 * the hot-added one's id and path. Then the destination removes it like its own.
 */
static void test_migrates_with_hot_added_disk(Fixture *f, gconstpointer data)
{
  if (f->qemu == NULL) {
    g_test_skip("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)");
    return;
  }
  g_autoptr(FerryVmDoc) doc = disk_doc(f, "microvm", TRUE);
  g_autoptr(json_t) memory = json_pack("{s:i}", "SizeInMB", 64);
  ferry_vm_doc_set_memory(doc, memory);
  g_autoptr(FerryVm) src = vm_for(f, doc, "src");
  Done d = { 0 };
  ferry_vm_start(src, on_done, &d);
  wait_ok(&d);
  ferry_vm_scsi_add_disk(src, "0", 4, f->a, on_done, &d);
  wait_ok(&d);

  g_autoptr(FerryVm) dst = vm_for(f, ferry_vm_get_doc(src), "dst");
  Notes sn = { g_array_new(FALSE, FALSE, sizeof(FerryVmPhase)) };
  Notes dn = { g_array_new(FALSE, FALSE, sizeof(FerryVmPhase)) };
  ferry_vm_set_notify_func(src, on_note, &sn);
  ferry_vm_set_notify_func(dst, on_note, &dn);
  ferry_vm_start_incoming(dst, NULL, on_done, &d);
  wait_ok(&d);
  FerryVmMigrationOptions mo = { .no_postcopy = TRUE };
  ferry_vm_migration_initialize(src, &mo, on_done, &d);
  wait_ok(&d);
  int sp[2];
  g_autoptr(GError) error = NULL;
  g_assert_true(ferry_socketpair(sp, FALSE, &error));
  ferry_vm_migration_transfer(dst, sp[1], on_done, &d);
  wait_ok(&d);
  ferry_vm_migration_transfer(src, sp[0], on_done, &d);
  wait_ok(&d);
  close(sp[0]);
  close(sp[1]);
  gint64 until = g_get_monotonic_time() + 60 * G_USEC_PER_SEC;
  while (!(has_phase(&sn, FERRY_VM_PHASE_OFFLINE_DONE) &&
           has_phase(&dn, FERRY_VM_PHASE_OFFLINE_DONE)) &&
         !has_phase(&sn, FERRY_VM_PHASE_FAILED) && !has_phase(&dn, FERRY_VM_PHASE_FAILED) &&
         g_get_monotonic_time() < until)
    g_main_context_iteration(NULL, TRUE);
  g_assert_false(has_phase(&dn, FERRY_VM_PHASE_FAILED));
  g_assert_false(has_phase(&sn, FERRY_VM_PHASE_FAILED));
  g_assert_true(has_phase(&dn, FERRY_VM_PHASE_OFFLINE_DONE));
  ferry_vm_migration_finalize(src, FERRY_VM_FINALIZE_STOP, 0, on_done, &d);
  wait_ok(&d);
  ferry_vm_migration_finalize(dst, FERRY_VM_FINALIZE_RESUME, 0, on_done, &d);
  wait_ok(&d);
  g_assert_cmpint(ferry_vm_get_state(dst), ==, FERRY_VM_RUNNING);

  g_assert_nonnull(disk_at(dst, 4));
  ferry_vm_scsi_remove_disk(dst, "0", 4, on_done, &d);
  wait_ok(&d);
  g_assert_null(disk_at(dst, 4));
  ferry_vm_terminate(dst, on_done, &d);
  wait_ok(&d);
  g_array_unref(sn.phases);
  g_array_unref(dn.phases);
}

int main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
#define TF(path, fn) g_test_add("/vm-disk/" path, Fixture, NULL, setup, fn, teardown)
  TF("add-unstarted-fails-later", test_add_unstarted);
  TF("microvm/hot-plug-cycle", test_microvm);
  TF("q35-storage-qos/hot-plug-cycle", test_q35_qos);
  TF("pc/hot-plug-cycle", test_pc);
  TF("migrates-with-hot-added-disk", test_migrates_with_hot_added_disk);
  return g_test_run();
}
