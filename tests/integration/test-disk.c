/*
 * Container roots from read-only disk images, end to end with real QEMU (TCG) and the
 * guest image: EROFS images built here with mkfs.erofs, hot-added to a running VM's
 * virtio-scsi controller (ferry_vm_scsi_add_disk), mapped in the guest (ModifySettings
 * MappedVirtualDisk), combined into an overlay with its upper in a tmpfs
 * (CombinedLayers), a crun container running on it; then everything removed in reverse
 * and done again at the same paths. And the errors: a LUN with no disk (a bounded wait),
 * bad requests, double adds, a busy unmount, the agent serving on. Then on q35 (PCI
 * instead of virtio-mmio) an ext4 image made with mke2fs -d.
 *
 * One VM per machine type (boots are slow under TCG). Needs qemu-system-x86_64, the image
 * (`make image`, FERRY_IMAGE_DIR), mkfs.erofs (erofs-utils) and busybox-static; skips
 * with the reason otherwise.
 */
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ferry/cmd.h"
#include "ferry/error.h"
#include "ferry/guest.h"
#include "ferry/json.h"
#include "ferry/vm.h"
#include "guest-session.h"
#include "test-util.h"

#define PORT_NAME "org.ferry.gcs"
#define C1 "/run/gcs/c/c1"
#define M1 "/run/mounts/scsi/m1"
#define M2 "/run/mounts/scsi/m2"

static char *skip_reason;
static char *kernel_path, *initrd_path;

/* The one VM, booted by the first case that needs it. */
static struct {
  char *dir;
  const char *machine;
  FerryVm *vm;
  TestGuestSession *s;
  char *base_img; /* busybox root, /etc/layer "base" */
  char *top_img;  /* /data/hello.txt, /etc/layer "top" */
} env;

typedef struct {
  gboolean done;
  GError *error;
} Done;

static void on_vm_done(FerryVm *vm, const GError *error, gpointer ud)
{
  Done *d = ud;
  d->done = TRUE;
  if (error != NULL)
    d->error = g_error_copy(error);
}

static void on_gc_done(const GError *error, gpointer ud)
{
  Done *d = ud;
  d->done = TRUE;
  if (error != NULL)
    d->error = g_error_copy(error);
}

static void wait_ok(Done *d, guint seconds)
{
  g_assert_true(test_run_until(&d->done, seconds * 1000));
  g_assert_no_error(d->error);
  *d = (Done){ 0 };
}

/* Wait, expect the guest's HRESULT `hresult` and `part` in the message. */
static void wait_hresult(Done *d, guint seconds, guint32 hresult, const char *part)
{
  g_assert_true(test_run_until(&d->done, seconds * 1000));
  g_assert_nonnull(d->error);
  if (ferry_bridge_error_hresult(d->error) != hresult || strstr(d->error->message, part) == NULL)
    g_error("expected HRESULT 0x%08x with \"%s\", got %s", hresult, part, d->error->message);
  g_clear_error(&d->error);
  *d = (Done){ 0 };
}

/* ------------------------------------------------------------- guest commands -- */

typedef struct {
  FerryCmd *cmd;
  int out_r;
  GString *out;
  gboolean started, waited;
  int code;
  GError *error;
} Run;

static void on_run_started(const GError *error, gpointer ud)
{
  Run *r = ud;
  g_assert_no_error(error);
  r->started = TRUE;
}

static void on_run_done(int code, const GError *error, gpointer ud)
{
  Run *r = ud;
  r->waited = TRUE;
  r->code = code;
  if (error != NULL)
    r->error = g_error_copy(error);
}

/* Run `params` (in `container`, or the UVM) to its end; its stdout, its exit code. */
static char *run(FerryGuestContainer *container, json_t *params, int *code)
{
  Run r = { 0 };
  int p[2];
  g_assert_cmpint(pipe2(p, O_CLOEXEC | O_NONBLOCK), ==, 0);
  r.out_r = p[0];
  r.out = g_string_new("");
  r.cmd = ferry_cmd_new(env.s->gc, container, env.s->ports, params, (FerryCmdIo){ -1, p[1], -1 });
  ferry_cmd_start(r.cmd, on_run_started, &r);
  g_assert_true(test_run_until(&r.started, 30000));
  ferry_cmd_wait(r.cmd, on_run_done, &r);
  gint64 until = g_get_monotonic_time() + 60 * G_USEC_PER_SEC;
  char buf[4096];
  for (;;) {
    ssize_t n;
    while ((n = read(r.out_r, buf, sizeof(buf))) > 0)
      g_string_append_len(r.out, buf, n);
    if (r.waited)
      break;
    g_assert_cmpint(g_get_monotonic_time(), <, until);
    g_main_context_iteration(NULL, TRUE);
  }
  g_assert_no_error(r.error);
  *code = r.code;
  ferry_cmd_free(r.cmd);
  close(r.out_r);
  return g_string_free(r.out, FALSE);
}

/* A shell script in the UVM; checks its exit code, returns its stdout. */
static char *uvm_sh(const char *script, int want_code)
{
  g_autoptr(json_t) params = json_pack("{s:[s,s,s], s:{s:s}}", "CommandArgs", "sh", "-c", script,
                                       "Environment", "PATH", "/bin:/sbin:/usr/bin:/usr/sbin");
  int code;
  char *out = run(NULL, params, &code);
  if (code != want_code)
    g_error("`%s` exited %d (want %d): %s", script, code, want_code, out);
  return out;
}

/* ------------------------------------------------------------------- setup -- */

static gboolean write_file(const char *dir, const char *name, const char *text)
{
  g_autofree char *path = g_build_filename(dir, name, NULL);
  g_autofree char *parent = g_path_get_dirname(path);
  g_autoptr(GError) error = NULL;
  g_assert_cmpint(g_mkdir_with_parents(parent, 0755), ==, 0);
  g_assert_true(g_file_set_contents(path, text, -1, &error));
  return TRUE;
}

/* mkfs.erofs `dir` into `image`, with a fixed timestamp (reproducible). */
static void make_erofs(const char *dir, const char *image)
{
  const char *argv[] = { "mkfs.erofs", "--quiet", "-T0", "--all-root", image, dir, NULL };
  g_autofree char *out = NULL, *err = NULL;
  int status;
  g_autoptr(GError) error = NULL;
  g_assert_true(g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_SEARCH_PATH, NULL, NULL, &out, &err,
                             &status, &error));
  if (!g_spawn_check_wait_status(status, &error))
    g_error("mkfs.erofs %s: %s: %s", image, error->message, err);
}

static void make_images(void)
{
  g_autofree char *base = g_build_filename(env.dir, "base", NULL);
  g_autofree char *top = g_build_filename(env.dir, "top", NULL);
  g_autoptr(GError) error = NULL;
  g_assert_true(test_build_busybox_rootfs(base, &error));
  /* Applets the cases use beyond the fixture's. */
  const char *const more[] = { "dd", "mkdir", NULL };
  for (const char *const *a = more; *a != NULL; a++) {
    g_autofree char *link = g_build_filename(base, "bin", *a, NULL);
    g_assert_cmpint(symlink("busybox", link), ==, 0);
  }
  write_file(base, "etc/layer", "base\n");
  write_file(top, "etc/layer", "top\n");
  write_file(top, "data/hello.txt", "hello from erofs\n");
  env.base_img = g_build_filename(env.dir, "base.erofs", NULL);
  env.top_img = g_build_filename(env.dir, "top.erofs", NULL);
  make_erofs(base, env.base_img);
  make_erofs(top, env.top_img);
}

static void env_down(void);

/* The VM (`machine`, 1 vCPU, a virtio-scsi controller "0" without disks) and its agent;
 * kept for the next case on the same machine. */
static gboolean env_up(const char *machine)
{
  if (skip_reason != NULL) {
    g_test_skip(skip_reason);
    return FALSE;
  }
  if (env.vm != NULL && strcmp(env.machine, machine) == 0)
    return TRUE;
  env_down();
  env.machine = machine;
  env.dir = test_make_tmpdir();
  make_images();
  g_autoptr(FerryVmDoc) doc = ferry_vm_doc_new("ferry-test");
  g_autoptr(json_t) memory = json_pack("{s:i}", "SizeInMB", 256);
  ferry_vm_doc_set_memory(doc, memory);
  ferry_vm_doc_set_kernel_direct(doc, kernel_path, initrd_path,
                                 "console=ttyS0 loglevel=4 panic=-1");
  ferry_vm_doc_set_machine(doc, machine);
  g_autoptr(GError) error = NULL;
  g_assert_true(ferry_vm_doc_add_mux_port(doc, PORT_NAME, &error));
  g_assert_true(ferry_vm_doc_add_scsi_controller(doc, "0", &error));
  g_autofree char *state = g_build_filename(env.dir, "uvm", NULL);
  env.vm = ferry_vm_new("uvm", doc, state, NULL, &error);
  g_assert_no_error(error);
  Done d = { 0 };
  ferry_vm_start(env.vm, on_vm_done, &d);
  wait_ok(&d, 30);
  g_autofree char *port = ferry_vm_port_socket(env.vm, PORT_NAME);
  env.s = test_guest_session_new(port);
  if (!test_run_until(&env.s->connected, 90000)) {
    g_autofree char *console = NULL;
    g_file_get_contents(ferry_vm_console_path(env.vm), &console, NULL, NULL);
    g_error("the guest agent did not negotiate within 90 s; console:\n%s",
            console != NULL ? console : "(none)");
  }
  return TRUE;
}

static void env_down(void)
{
  if (env.vm == NULL)
    return;
  test_guest_session_free(env.s);
  Done d = { 0 };
  ferry_vm_terminate(env.vm, on_vm_done, &d);
  g_assert_true(test_run_until(&d.done, 30000));
  g_clear_error(&d.error);
  g_clear_pointer(&env.vm, ferry_vm_free);
  test_rm_rf(env.dir);
  g_clear_pointer(&env.dir, g_free);
  g_clear_pointer(&env.base_img, g_free);
  g_clear_pointer(&env.top_img, g_free);
}

/* --------------------------------------------------------------- helpers -- */

static void hot_add(guint lun, const char *image)
{
  Done d = { 0 };
  ferry_vm_scsi_add_disk(env.vm, "0", lun, image, on_vm_done, &d);
  wait_ok(&d, 30);
}

static void hot_remove(guint lun)
{
  Done d = { 0 };
  ferry_vm_scsi_remove_disk(env.vm, "0", lun, on_vm_done, &d);
  wait_ok(&d, 30);
}

static void map_disk(const char *mount_path, guint lun, const char *filesystem)
{
  FerryGuestMappedDisk disk = {
    .mount_path = mount_path, .lun = lun, .read_only = TRUE, .filesystem = filesystem
  };
  Done d = { 0 };
  ferry_guest_connection_map_disk(env.s->gc, &disk, on_gc_done, &d);
  wait_ok(&d, 30);
}

static void unmap_disk(const char *mount_path)
{
  Done d = { 0 };
  ferry_guest_connection_unmap_disk(env.s->gc, mount_path, on_gc_done, &d);
  wait_ok(&d, 30);
}

static void modify_fails(json_t *request, guint32 hresult, const char *part)
{
  Done d = { 0 };
  ferry_guest_connection_modify(env.s->gc, NULL, request, on_gc_done, &d);
  wait_hresult(&d, 30, hresult, part);
}

/* Whether something is mounted at `path` in the guest. */
static gboolean guest_mounted(const char *path)
{
  g_autofree char *script = g_strdup_printf("grep -c ' %s ' /proc/mounts || true", path);
  g_autofree char *count = uvm_sh(script, 0);
  return atoi(count) > 0;
}

/* A container whose root is the combined layers at C1/rootfs: create, run `script` as its
 * init, wait, delete; its output. */
static char *container_run(const char *script, int *code)
{
  json_t *spec = test_busybox_oci_spec();
  /* The root is the overlay, writable through its upper. */
  json_object_set_new(json_object_get(spec, "root"), "readonly", json_false());
  g_autoptr(json_t) config = json_pack("{s:{s:i,s:i}, s:s, s:o}", "SchemaVersion", "Major", 2,
                                       "Minor", 1, "OciBundlePath", C1, "OciSpecification", spec);
  g_autoptr(GError) error = NULL;
  Done d = { 0 };
  g_autoptr(FerryGuestContainer) c =
      ferry_guest_connection_create_container(env.s->gc, "c1", config, on_gc_done, &d, &error);
  g_assert_no_error(error);
  wait_ok(&d, 30);
  ferry_guest_container_start(c, on_gc_done, &d);
  wait_ok(&d, 30);
  g_autoptr(json_t) params =
      json_pack("{s:{s:[s,s,s], s:[s], s:s, s:b}}", "OciProcess", "args", "sh", "-c", script, "env",
                "PATH=/bin", "cwd", "/", "terminal", 0);
  char *out = run(c, params, code);
  ferry_guest_connection_delete_container_state(env.s->gc, "c1", on_gc_done, &d);
  wait_ok(&d, 30);
  return out;
}

/* ------------------------------------------------------------------ cases -- */

/*
 * Two EROFS layers hot-added and mapped, combined with a tmpfs upper, a container on
 * them: it reads both layers (the top one wins), writes into its root (the write lands
 * in the tmpfs, whose size caps it); then everything removed in reverse, the guest's
 * mounts gone, and the same paths used again.
 */
static void test_container_on_combined_layers(void)
{
  if (!env_up("microvm"))
    return;
  hot_add(1, env.base_img);
  hot_add(2, env.top_img);
  map_disk(M1, 1, "erofs");
  map_disk(M2, 2, NULL); /* the guest reads the superblock */
  g_autofree char *mounts =
      uvm_sh("grep /run/mounts/scsi /proc/mounts | cut -d' ' -f2-4 | cut -d, -f1", 0);
  g_assert_cmpstr(mounts, ==, M1 " erofs ro\n" M2 " erofs ro\n");

  const char *const layers[] = { M2, M1, NULL }; /* the top first */
  Done d = { 0 };
  ferry_guest_connection_combine_layers(env.s->gc, "c1", C1 "/rootfs", layers, C1 "/scratch", 8,
                                        on_gc_done, &d);
  wait_ok(&d, 30);
  g_autofree char *scratch = uvm_sh("grep ' " C1 "/scratch ' /proc/mounts | cut -d' ' -f3,4", 0);
  g_assert_true(g_str_has_prefix(scratch, "tmpfs rw,"));
  g_assert_nonnull(strstr(scratch, "size=8192k"));

  /* Double adds are refused; a layer cannot go while the overlay uses it. */
  FerryGuestMappedDisk again = { .mount_path = M1, .lun = 1, .read_only = TRUE };
  g_autoptr(json_t) map_again = ferry_guest_mapped_disk_request("Add", &again);
  modify_fails(map_again, FERRY_HR_ALREADY_EXISTS, "already mapped at " M1);
  g_autoptr(json_t) combine_again =
      ferry_guest_combined_layers_request("Add", "c1", C1 "/rootfs", layers, C1 "/scratch2", 0);
  modify_fails(combine_again, FERRY_HR_ALREADY_EXISTS, "already combined at " C1 "/rootfs");
  Done busy = { 0 };
  ferry_guest_connection_unmap_disk(env.s->gc, M1, on_gc_done, &busy);
  g_assert_true(test_run_until(&busy.done, 30000));
  g_assert_nonnull(busy.error);
  g_assert_cmpuint(ferry_bridge_error_hresult(busy.error), ==, FERRY_HR_INVALID_STATE);
  g_assert_nonnull(strstr(busy.error->message, "busy: the combined layers at " C1 "/rootfs"));
  g_clear_error(&busy.error);
  g_assert_true(guest_mounted(M1));

  int code;
  g_autofree char *out = container_run("cat /data/hello.txt /etc/layer && echo written >/new.txt "
                                       "&& cat /new.txt && "
                                       "if dd if=/dev/zero of=/big bs=1M count=9 2>/dev/null; "
                                       "then echo unlimited; else echo full; fi",
                                       &code);
  g_assert_cmpstr(out, ==, "hello from erofs\ntop\nwritten\nfull\n");
  g_assert_cmpint(code, ==, 0);
  /* The write is in the tmpfs upper; the layers are untouched. */
  g_autofree char *upper = uvm_sh("cat " C1 "/scratch/upper/new.txt; ls " M1 " " M2, 0);
  g_assert_cmpstr(upper, ==,
                  "written\n" M1 ":\nbin\ndev\netc\nproc\nsys\ntmp\n\n" M2 ":\ndata\netc\n");

  /* Removed in reverse; the guest unmounted everything. */
  ferry_guest_connection_remove_layers(env.s->gc, C1 "/rootfs", on_gc_done, &d);
  wait_ok(&d, 30);
  g_assert_false(guest_mounted(C1 "/rootfs"));
  g_assert_false(guest_mounted(C1 "/scratch"));
  unmap_disk(M2);
  unmap_disk(M1);
  g_assert_false(guest_mounted(M1));
  g_assert_false(guest_mounted(M2));
  hot_remove(2);
  hot_remove(1);
  g_assert_null(ferry_vm_doc_scsi_disk(ferry_vm_get_doc(env.vm), "0", 1));
  /* The guest drops the SCSI devices as QEMU unplugs them (a bounded look in the guest). */
  g_free(uvm_sh("for i in $(seq 100); do [ -e /sys/bus/scsi/devices/0:0:0:1 ] || "
                "[ -e /sys/bus/scsi/devices/0:0:0:2 ] || exit 0; usleep 50000; done; exit 1",
                0));

  /* The same LUN, paths and root again: the removes left nothing behind. Without a
   * scratch path the overlay is read-only (hcsshim). */
  hot_add(1, env.base_img);
  map_disk(M1, 1, "erofs");
  const char *const one[] = { M1, NULL };
  ferry_guest_connection_combine_layers(env.s->gc, NULL, C1 "/rootfs", one, NULL, 0, on_gc_done,
                                        &d);
  wait_ok(&d, 30);
  g_autofree char *again_out =
      uvm_sh("cat " C1 "/rootfs/etc/layer; touch " C1 "/rootfs/x 2>/dev/null || echo read-only", 0);
  g_assert_cmpstr(again_out, ==, "base\nread-only\n");
  ferry_guest_connection_remove_layers(env.s->gc, C1 "/rootfs", on_gc_done, &d);
  wait_ok(&d, 30);
  unmap_disk(M1);
  hot_remove(1);
}

/*
 * The errors: a LUN without a disk is refused after the agent's bounded wait; requests
 * that are malformed, outside the storage roots, or unsupported are refused at once; the
 * agent serves on after each.
 */
static void test_errors(void)
{
  if (!env_up("microvm"))
    return;
  FerryGuestMappedDisk nodisk = { .mount_path = "/run/mounts/scsi/m7",
                                  .lun = 7,
                                  .read_only = TRUE };
  g_autoptr(json_t) request = ferry_guest_mapped_disk_request("Add", &nodisk);
  /* Answered after the agent's bounded wait (5 s; modify_fails gives it 30). */
  modify_fails(request, FERRY_HR_NOT_FOUND, "after 5000 ms: no block device at SCSI 0:0:0:7");
  g_assert_false(guest_mounted("/run/mounts/scsi/m7"));
  g_autofree char *alive = uvm_sh("echo alive", 0);
  g_assert_cmpstr(alive, ==, "alive\n");

  FerryGuestMappedDisk controller = { .mount_path = "/run/mounts/scsi/m8", .controller = 3 };
  g_autoptr(json_t) no_controller = ferry_guest_mapped_disk_request("Add", &controller);
  modify_fails(no_controller, FERRY_HR_NOT_FOUND, "no virtio-scsi controller 3 (the guest has 1)");

  g_autoptr(json_t) not_object = json_pack("{s:s, s:s, s:s}", "ResourceType", "MappedVirtualDisk",
                                           "RequestType", "Add", "Settings", "x");
  modify_fails(not_object, FERRY_HR_INVALID_JSON, "Settings is not an object");
  FerryGuestMappedDisk escape = { .mount_path = "/run/mounts/../etc", .lun = 1 };
  g_autoptr(json_t) dotdot = ferry_guest_mapped_disk_request("Add", &escape);
  modify_fails(dotdot, FERRY_HR_E_INVALIDARG, "not a canonical path");
  FerryGuestMappedDisk outside = { .mount_path = "/etc/x", .lun = 1 };
  g_autoptr(json_t) out_of_roots = ferry_guest_mapped_disk_request("Add", &outside);
  modify_fails(out_of_roots, FERRY_HR_E_INVALIDARG, "outside the directories");
  g_autoptr(json_t) encrypted =
      json_pack("{s:s, s:s, s:{s:s, s:b}}", "ResourceType", "MappedVirtualDisk", "RequestType",
                "Add", "Settings", "MountPath", "/run/mounts/scsi/m9", "Encrypted", 1);
  modify_fails(encrypted, FERRY_HR_E_NOTIMPL, "Encrypted is not supported");
  g_autoptr(json_t) update = json_pack("{s:s, s:s, s:{}}", "ResourceType", "CombinedLayers",
                                       "RequestType", "Update", "Settings");
  modify_fails(update, FERRY_HR_E_NOTIMPL, "RequestType Update");
  const char *const missing[] = { "/run/mounts/scsi/none", NULL };
  g_autoptr(json_t) no_layer = ferry_guest_combined_layers_request(
      "Add", NULL, "/run/gcs/c/c9/rootfs", missing, "/run/gcs/c/c9/scratch", 0);
  modify_fails(no_layer, FERRY_HR_NOT_FOUND, "not a directory");
  g_autoptr(json_t) unknown =
      ferry_guest_combined_layers_request("Remove", NULL, "/run/gcs/c/c9/rootfs", NULL, NULL, 0);
  modify_fails(unknown, FERRY_HR_NOT_FOUND, "no layers are combined at /run/gcs/c/c9/rootfs");
  g_autofree char *still = uvm_sh("echo still serving", 0);
  g_assert_cmpstr(still, ==, "still serving\n");
}

/*
 * On q35 the controller is virtio-scsi-pci (microvm's is virtio-mmio): the same hot-add,
 * and an ext4 image (mke2fs -d) whose file system the guest detects; hot-removed while
 * the guest still holds nothing.
 */
static void test_q35_ext4(void)
{
  g_autofree char *mke2fs = g_find_program_in_path("mke2fs");
  if (mke2fs == NULL && skip_reason == NULL) {
    g_test_skip("mke2fs is not installed (apt-get install e2fsprogs)");
    return;
  }
  if (!env_up("q35"))
    return;
  g_autofree char *tree = g_build_filename(env.dir, "ext4-tree", NULL);
  write_file(tree, "hello.txt", "hello from ext4\n");
  g_autofree char *image = g_build_filename(env.dir, "tree.ext4", NULL);
  const char *argv[] = { mke2fs, "-q", "-F", "-t", "ext4", "-d", tree, image, "8M", NULL };
  g_autofree char *err = NULL;
  int status;
  g_autoptr(GError) error = NULL;
  g_assert_true(
      g_spawn_sync(NULL, (char **)argv, NULL, 0, NULL, NULL, NULL, &err, &status, &error));
  if (!g_spawn_check_wait_status(status, &error))
    g_error("mke2fs: %s: %s", error->message, err);
  hot_add(3, image);
  map_disk("/run/mounts/scsi/m3", 3, NULL);
  g_autofree char *out = uvm_sh("cat /run/mounts/scsi/m3/hello.txt; "
                                "grep ' /run/mounts/scsi/m3 ' /proc/mounts | cut -d' ' -f3,4 | "
                                "cut -d, -f1",
                                0);
  g_assert_cmpstr(out, ==, "hello from ext4\next4 ro\n");
  unmap_disk("/run/mounts/scsi/m3");
  hot_remove(3);
  g_assert_null(ferry_vm_doc_scsi_disk(ferry_vm_get_doc(env.vm), "0", 3));
}

int main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  signal(SIGPIPE, SIG_IGN);
  const char *image = g_getenv("FERRY_IMAGE_DIR");
  const char *root = g_getenv("FERRY_BUILD_ROOT");
  g_autofree char *image_dir =
      image != NULL ? g_strdup(image) : g_build_filename(root != NULL ? root : ".", "image", NULL);
  kernel_path = g_build_filename(image_dir, "vmlinux", NULL);
  initrd_path = g_build_filename(image_dir, "initramfs.cpio", NULL);
  g_autofree char *qemu = g_find_program_in_path(
      g_getenv("FERRY_QEMU") != NULL ? g_getenv("FERRY_QEMU") : "qemu-system-x86_64");
  g_autofree char *mkfs = g_find_program_in_path("mkfs.erofs");
  if (qemu == NULL)
    skip_reason = g_strdup("qemu-system-x86_64 is not installed (scripts/install-deps.sh vm)");
  else if (!g_file_test(kernel_path, G_FILE_TEST_EXISTS) ||
           !g_file_test(initrd_path, G_FILE_TEST_EXISTS))
    skip_reason = g_strdup_printf("no guest image in %s (make image)", image_dir);
  else if (mkfs == NULL)
    skip_reason = g_strdup("mkfs.erofs is not installed (apt-get install erofs-utils)");
  else if (!g_file_test("/bin/busybox", G_FILE_TEST_IS_EXECUTABLE))
    skip_reason = g_strdup("/bin/busybox is missing (apt-get install busybox-static)");
  g_test_add_func("/disk/container-on-combined-layers", test_container_on_combined_layers);
  g_test_add_func("/disk/errors", test_errors);
  g_test_add_func("/disk/q35-ext4", test_q35_ext4);
  int rc = g_test_run();
  env_down();
  return rc;
}
