/*
 * ModifySettings for storage (docs/agent.md, storage): hcsshim's MappedVirtualDisk (mount
 * a SCSI disk the host hot-added, read-only) and CombinedLayers (an overlay of mapped
 * layers with a writable upper in a size-limited tmpfs, so that it lives in guest RAM and
 * migrates with it). JSON shapes: hcsshim's internal/protocol/guestresource
 * (LCOWMappedVirtualDisk, LCOWCombinedLayers).
 *
 * Everything answers at once except a MappedVirtualDisk Add whose device has not appeared
 * yet: it polls sysfs from a timer until the device is there or the wait is over.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ferry/error.h"
#include "ferry/fd.h"
#include "ferry/json.h"
#include "ferry/log.h"
#include "ferry/source.h"
#include "gcs-impl.h"

#define DISK_POLL_MS 20u
#define SYS_SCSI_HOSTS "/sys/class/scsi_host"
#define SYS_SCSI_DEVICES "/sys/bus/scsi/devices"

/* A disk mounted by MappedVirtualDisk Add. */
typedef struct {
  char *mount_path;
  char *device;
  gboolean read_only;
} DiskMount;

/* An overlay mounted by CombinedLayers Add. */
typedef struct {
  char *root;
  char *scratch; /* the tmpfs the agent mounted for upper and work, or NULL */
  char **uses;   /* the layers' paths and ScratchPath: what must stay mounted */
} Layers;

/* A MappedVirtualDisk Add waiting for its device. */
typedef struct {
  GcsStorage *storage;
  FerryBridgeRequest *request;
  char *mount_path;
  guint controller;
  guint lun;
  guint64 partition;
  gboolean read_only;
  unsigned long flags;
  char *data;
  char *filesystem; /* NULL: detect */
  gint64 deadline_us;
  GSource *timer;
} DiskWait;

struct GcsStorage {
  GMainContext *context;
  char **roots;
  guint disk_wait_ms;
  guint scratch_size_mb;
  GHashTable *disks;  /* mount path -> DiskMount */
  GHashTable *layers; /* root path -> Layers */
  GHashTable *waits;  /* DiskWait set */
};

static void disk_mount_free(gpointer p)
{
  DiskMount *m = p;
  g_free(m->mount_path);
  g_free(m->device);
  g_free(m);
}

static void layers_free(gpointer p)
{
  Layers *l = p;
  g_free(l->root);
  g_free(l->scratch);
  g_strfreev(l->uses);
  g_free(l);
}

static void disk_wait_free(DiskWait *w)
{
  ferry_source_clear(&w->timer);
  g_free(w->mount_path);
  g_free(w->data);
  g_free(w->filesystem);
  g_free(w);
}

GcsStorage *gcs_storage_new(const FerryGcsOptions *opts)
{
  static const char *const default_roots[] = { FERRY_GCS_DEFAULT_STORAGE_ROOTS, NULL };
  GcsStorage *s = g_new0(GcsStorage, 1);
  s->context = g_main_context_ref_thread_default();
  s->roots = g_strdupv(
      (char **)(opts != NULL && opts->storage_roots != NULL ? opts->storage_roots : default_roots));
  s->disk_wait_ms =
      opts != NULL && opts->disk_wait_ms != 0 ? opts->disk_wait_ms : FERRY_GCS_DEFAULT_DISK_WAIT_MS;
  s->scratch_size_mb = opts != NULL && opts->scratch_size_mb != 0
                           ? opts->scratch_size_mb
                           : FERRY_GCS_DEFAULT_SCRATCH_SIZE_MB;
  s->disks = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, disk_mount_free);
  s->layers = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, layers_free);
  s->waits = g_hash_table_new(NULL, NULL);
  return s;
}

void gcs_storage_free(GcsStorage *s)
{
  if (s == NULL)
    return;
  /* Mounts stay: the UVM is going away with them. Requests still waiting are dropped. */
  GHashTableIter iter;
  gpointer key;
  g_hash_table_iter_init(&iter, s->waits);
  while (g_hash_table_iter_next(&iter, &key, NULL)) {
    DiskWait *w = key;
    ferry_bridge_request_drop(w->request);
    disk_wait_free(w);
  }
  g_hash_table_unref(s->waits);
  g_hash_table_unref(s->disks);
  g_hash_table_unref(s->layers);
  g_strfreev(s->roots);
  g_main_context_unref(s->context);
  g_free(s);
}

/* --------------------------------------------------------------- paths -- */

/*
 * A guest path the host names: absolute, in canonical form (no empty, "." or ".."
 * component, no trailing slash), strictly below one of the allowed roots, and free of the
 * characters overlay's and mount's option strings use as separators.
 */
static gboolean check_path(GcsStorage *s, const char *what, const char *path, GError **error)
{
  if (path == NULL || path[0] != '/' || strlen(path) >= PATH_MAX) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "%s %s: not an absolute path",
                what, path != NULL ? path : "(none)");
    return FALSE;
  }
  if (strpbrk(path, ",:\\") != NULL) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                "%s %s: ',', ':' and '\\' are not allowed in paths", what, path);
    return FALSE;
  }
  g_auto(GStrv) parts = g_strsplit(path + 1, "/", -1);
  for (char **p = parts; *p != NULL; p++)
    if ((*p)[0] == '\0' || strcmp(*p, ".") == 0 || strcmp(*p, "..") == 0) {
      g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                  "%s %s: not a canonical path (empty, '.' or '..' component)", what, path);
      return FALSE;
    }
  for (char **r = s->roots; *r != NULL; r++) {
    gsize n = strlen(*r);
    if (strncmp(path, *r, n) == 0 && path[n] == '/' && path[n + 1] != '\0')
      return TRUE;
  }
  g_autofree char *roots = g_strjoinv(", ", s->roots);
  g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
              "%s %s: outside the directories this guest mounts in (%s)", what, path, roots);
  return FALSE;
}

/* mkdir -p `path`, then make sure no symbolic link led it elsewhere. */
static gboolean make_dir(const char *what, const char *path, GError **error)
{
  if (g_mkdir_with_parents(path, 0755) != 0)
    return ferry_error_set_errno(error, errno, "%s %s: mkdir", what, path);
  char real[PATH_MAX];
  if (realpath(path, real) == NULL)
    return ferry_error_set_errno(error, errno, "%s %s: realpath", what, path);
  if (strcmp(real, path) != 0) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                "%s %s: resolves to %s (a symbolic link on the way)", what, path, real);
    return FALSE;
  }
  return TRUE;
}

/* Whether `path` is inside the mount of `m` (or is it). */
static gboolean path_within(const char *path, const char *dir)
{
  gsize n = strlen(dir);
  return strncmp(path, dir, n) == 0 && (path[n] == '\0' || path[n] == '/');
}

/* -------------------------------------------------------------- devices -- */

static gint compare_uint(gconstpointer a, gconstpointer b)
{
  guint x = *(const guint *)a, y = *(const guint *)b;
  return x < y ? -1 : x > y;
}

/*
 * The SCSI host number of the `controller`-th virtio-scsi controller (in host-number
 * order, which is probe order: the order the VM document renders the controllers in).
 * NOT_FOUND while there are not that many.
 */
static gboolean scsi_host_of(guint controller, guint *host, GError **error)
{
  g_autoptr(GDir) dir = g_dir_open(SYS_SCSI_HOSTS, 0, NULL);
  g_autoptr(GArray) hosts = g_array_new(FALSE, FALSE, sizeof(guint));
  const char *name;
  while (dir != NULL && (name = g_dir_read_name(dir)) != NULL) {
    if (!g_str_has_prefix(name, "host") || !g_ascii_isdigit(name[4]))
      continue;
    g_autofree char *path = g_strdup_printf(SYS_SCSI_HOSTS "/%s/proc_name", name);
    g_autofree char *proc = NULL;
    if (!g_file_get_contents(path, &proc, NULL, NULL) || strcmp(g_strstrip(proc), "virtio_scsi"))
      continue;
    guint n = (guint)strtoul(name + 4, NULL, 10);
    g_array_append_val(hosts, n);
  }
  g_array_sort(hosts, compare_uint);
  if (controller >= hosts->len) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND,
                "no virtio-scsi controller %u (the guest has %u)", controller, hosts->len);
    return FALSE;
  }
  *host = g_array_index(hosts, guint, controller);
  return TRUE;
}

/*
 * /dev/<name> of the disk at <host>:0:0:<lun> (hcsshim's GetDevicePath: the one entry of
 * /sys/bus/scsi/devices/<addr>/block), or its partition. NOT_FOUND while it has not
 * appeared (the caller polls); other errors are final.
 */
static char *find_block_device(guint controller, guint lun, guint64 partition, GError **error)
{
  guint host;
  if (!scsi_host_of(controller, &host, error))
    return NULL;
  g_autofree char *block = g_strdup_printf(SYS_SCSI_DEVICES "/%u:0:0:%u/block", host, lun);
  g_autoptr(GDir) dir = g_dir_open(block, 0, NULL);
  const char *name = dir != NULL ? g_dir_read_name(dir) : NULL;
  if (name == NULL) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND,
                "no block device at SCSI %u:0:0:%u (controller %u, LUN %u)", host, lun, controller,
                lun);
    return NULL;
  }
  g_autofree char *disk = g_strdup(name);
  if (g_dir_read_name(dir) != NULL) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION,
                "more than one block device at SCSI %u:0:0:%u", host, lun);
    return NULL;
  }
  g_autofree char *dev_name =
      partition == 0 ? g_strdup(disk) : g_strdup_printf("%s%" G_GUINT64_FORMAT, disk, partition);
  if (partition != 0) {
    g_autofree char *part = g_strdup_printf("%s/%s/%s", block, disk, dev_name);
    if (!g_file_test(part, G_FILE_TEST_EXISTS)) {
      g_set_error(error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND,
                  "%s has no partition %" G_GUINT64_FORMAT, disk, partition);
      return NULL;
    }
  }
  char *dev = g_strdup_printf("/dev/%s", dev_name);
  if (!g_file_test(dev, G_FILE_TEST_EXISTS)) { /* devtmpfs makes it a moment later */
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND, "%s does not exist yet", dev);
    g_free(dev);
    return NULL;
  }
  return dev;
}

/* The file system on `dev` by its superblock's magic: erofs (0xE0F5E1E2 at 1024) or ext4
 * (0xEF53 at 1024 + 0x38). */
static const char *detect_filesystem(const char *dev, gboolean *retry, GError **error)
{
  guint8 sb[1024 + 0x3a];
  g_auto(FerryFd) fd = open(dev, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    *retry = errno == ENXIO;
    ferry_error_set_errno(error, errno, "open %s", dev);
    return NULL;
  }
  ssize_t n = pread(fd, sb, sizeof(sb), 0);
  if (n == (ssize_t)sizeof(sb)) {
    guint32 erofs = sb[1024] | sb[1025] << 8 | sb[1026] << 16 | (guint32)sb[1027] << 24;
    guint16 ext = sb[1024 + 0x38] | sb[1024 + 0x39] << 8;
    if (erofs == 0xE0F5E1E2u)
      return "erofs";
    if (ext == 0xEF53u)
      return "ext4";
  }
  g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
              "%s has no erofs or ext4 file system (give Filesystem to say which)", dev);
  return NULL;
}

/* ---------------------------------------------------- MappedVirtualDisk -- */

static void reply_error(FerryBridgeRequest *request, const char *what, const GError *error)
{
  guint32 hr = ferry_bridge_hresult_from_error(error);
  if (g_error_matches(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT))
    hr = FERRY_HR_E_INVALIDARG;
  else if (g_error_matches(error, FERRY_ERROR, FERRY_ERROR_UNIMPLEMENTED))
    hr = FERRY_HR_E_NOTIMPL;
  else if (g_error_matches(error, FERRY_ERROR, FERRY_ERROR_ALREADY_EXISTS))
    hr = FERRY_HR_ALREADY_EXISTS;
  else if (g_error_matches(error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND))
    hr = FERRY_HR_NOT_FOUND;
  ferry_bridge_request_reply_error(request, hr, "ModifySettings %s: %s", what, error->message);
}

/*
 * The device is there: mount it. A disk the kernel is still adding (its node and sysfs
 * entry exist before the block device goes live) fails with ENXIO: `*retry` says so.
 */
static gboolean disk_mount(GcsStorage *s, DiskWait *w, const char *dev, gboolean *retry,
                           GError **error)
{
  const char *fs = w->filesystem;
  if (fs == NULL && (fs = detect_filesystem(dev, retry, error)) == NULL)
    return FALSE;
  gboolean existed = g_file_test(w->mount_path, G_FILE_TEST_IS_DIR);
  if (!make_dir("MountPath", w->mount_path, error))
    return FALSE;
  if (mount(dev, w->mount_path, fs, w->flags, w->data) != 0) {
    int err = errno;
    if (!existed)
      (void)rmdir(w->mount_path);
    *retry = err == ENXIO;
    return ferry_error_set_errno(error, err, "mount %s (%s, %s) on %s", dev, fs,
                                 (w->flags & MS_RDONLY) ? "ro" : "rw", w->mount_path);
  }
  DiskMount *m = g_new0(DiskMount, 1);
  m->mount_path = g_strdup(w->mount_path);
  m->device = g_strdup(dev);
  m->read_only = (w->flags & MS_RDONLY) != 0;
  g_hash_table_insert(s->disks, m->mount_path, m);
  ferry_log(FERRY_LOG_DEBUG, "gcs: disk mounted", "device", dev, "path", m->mount_path, "fs", fs,
            NULL);
  return TRUE;
}

/* One look for the device: answered (TRUE), or still waiting (FALSE). */
static gboolean disk_try(DiskWait *w)
{
  GcsStorage *s = w->storage;
  g_autoptr(GError) error = NULL;
  gboolean in_time = g_get_monotonic_time() < w->deadline_us;
  g_autofree char *dev = find_block_device(w->controller, w->lun, w->partition, &error);
  if (dev == NULL && g_error_matches(error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND) && in_time)
    return FALSE;
  gboolean ok = dev != NULL;
  if (ok && w->mount_path != NULL) { /* hcsshim: without MountPath, nothing to mount */
    gboolean retry = FALSE;
    ok = disk_mount(s, w, dev, &retry, &error);
    if (!ok && retry && in_time)
      return FALSE;
  }
  g_hash_table_remove(s->waits, w);
  if (ok) {
    ferry_bridge_request_reply(w->request, NULL);
  } else {
    if (g_error_matches(error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND))
      g_prefix_error(&error, "after %u ms: ", s->disk_wait_ms);
    reply_error(w->request, "MappedVirtualDisk", error);
  }
  disk_wait_free(w);
  return TRUE;
}

static gboolean on_disk_poll(gpointer p)
{
  DiskWait *w = p;
  ferry_source_clear(&w->timer);
  if (!disk_try(w))
    w->timer = ferry_timeout_new(w->storage->context, DISK_POLL_MS, on_disk_poll, w);
  return G_SOURCE_REMOVE;
}

static gboolean wait_for_path(GcsStorage *s, const char *path)
{
  GHashTableIter iter;
  gpointer key;
  g_hash_table_iter_init(&iter, s->waits);
  while (g_hash_table_iter_next(&iter, &key, NULL)) {
    DiskWait *w = key;
    if (w->mount_path != NULL && strcmp(w->mount_path, path) == 0)
      return TRUE;
  }
  return FALSE;
}

/* Mount options: the flags mount(2) takes as flags, the rest as its data string. */
static gboolean parse_options(json_t *options, gboolean read_only, unsigned long *flags,
                              char **data, GError **error)
{
  static const struct {
    const char *name;
    unsigned long set;
    unsigned long clear;
  } known[] = {
    { "ro", MS_RDONLY, 0 },         { "rw", 0, MS_RDONLY },     { "nosuid", MS_NOSUID, 0 },
    { "nodev", MS_NODEV, 0 },       { "noexec", MS_NOEXEC, 0 }, { "noatime", MS_NOATIME, 0 },
    { "relatime", MS_RELATIME, 0 },
  };
  *flags = read_only ? MS_RDONLY : 0;
  g_autoptr(GString) rest = g_string_new(NULL);
  if (options != NULL && !json_is_array(options)) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                "field Options: not an array of strings");
    return FALSE;
  }
  gsize i;
  json_t *o;
  json_array_foreach(options, i, o)
  {
    const char *opt = json_string_value(o);
    if (opt == NULL || opt[0] == '\0' || strchr(opt, ',') != NULL) {
      g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                  "field Options[%zu]: not a mount option", i);
      return FALSE;
    }
    gboolean matched = FALSE;
    for (gsize k = 0; k < G_N_ELEMENTS(known) && !matched; k++)
      if (strcmp(opt, known[k].name) == 0) {
        *flags = (*flags | known[k].set) & ~known[k].clear;
        matched = TRUE;
      }
    if (!matched)
      g_string_append_printf(rest, "%s%s", rest->len > 0 ? "," : "", opt);
  }
  /* A read-only request stays read-only whatever the options say. */
  if (read_only)
    *flags |= MS_RDONLY;
  *data = rest->len > 0 ? g_strdup(rest->str) : NULL;
  return TRUE;
}

static gboolean refuse_true(json_t *settings, const char *key, const char *why, GError **error)
{
  json_t *v = json_object_get(settings, key);
  if (v == NULL || json_is_null(v) || json_is_false(v))
    return TRUE;
  g_set_error(error, FERRY_ERROR, FERRY_ERROR_UNIMPLEMENTED, "%s is not supported: %s", key, why);
  return FALSE;
}

static void mapped_disk_add(GcsStorage *s, FerryBridgeRequest *request, json_t *settings)
{
  g_autoptr(GError) error = NULL;
  const char *mount_path = NULL, *filesystem = NULL;
  guint32 controller = 0, lun = 0;
  gint64 partition = 0;
  gboolean read_only = FALSE;
  if (!ferry_json_get_string(settings, "MountPath", FALSE, &mount_path, &error) ||
      !ferry_json_get_uint32(settings, "Controller", FALSE, &controller, &error) ||
      !ferry_json_get_uint32(settings, "Lun", FALSE, &lun, &error) ||
      !ferry_json_get_int64(settings, "Partition", FALSE, &partition, &error) ||
      !ferry_json_get_bool(settings, "ReadOnly", FALSE, &read_only, &error) ||
      !ferry_json_get_string(settings, "Filesystem", FALSE, &filesystem, &error)) {
    reply_error(request, "MappedVirtualDisk", error);
    return;
  }
  if (controller > G_MAXUINT8 || lun > G_MAXUINT8 || partition < 0) {
    g_set_error(&error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                "Controller %u, Lun %u or Partition %" G_GINT64_FORMAT " out of range", controller,
                lun, partition);
    reply_error(request, "MappedVirtualDisk", error);
    return;
  }
  if (!refuse_true(settings, "Encrypted", "this guest has no dm-crypt", &error) ||
      !refuse_true(settings, "VerityInfo", "this guest has no dm-verity", &error) ||
      !refuse_true(settings, "BlockDev", "this guest mounts disks, it does not link them",
                   &error) ||
      !refuse_true(settings, "EnsureFilesystem", "this guest formats nothing", &error)) {
    reply_error(request, "MappedVirtualDisk", error);
    return;
  }
  if (filesystem != NULL && filesystem[0] == '\0')
    filesystem = NULL;
  if (filesystem != NULL && strcmp(filesystem, "erofs") != 0 && strcmp(filesystem, "ext4") != 0) {
    g_set_error(&error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                "Filesystem %s: this guest mounts erofs and ext4", filesystem);
    reply_error(request, "MappedVirtualDisk", error);
    return;
  }
  unsigned long flags = 0;
  g_autofree char *data = NULL;
  if (!parse_options(json_object_get(settings, "Options"), read_only, &flags, &data, &error)) {
    reply_error(request, "MappedVirtualDisk", error);
    return;
  }
  if (mount_path != NULL && mount_path[0] == '\0')
    mount_path = NULL;
  if (mount_path != NULL) {
    if (!check_path(s, "MountPath", mount_path, &error)) {
      reply_error(request, "MappedVirtualDisk", error);
      return;
    }
    if (g_hash_table_contains(s->disks, mount_path) || wait_for_path(s, mount_path)) {
      g_set_error(&error, FERRY_ERROR, FERRY_ERROR_ALREADY_EXISTS, "a disk is already mapped at %s",
                  mount_path);
      reply_error(request, "MappedVirtualDisk", error);
      return;
    }
  }
  DiskWait *w = g_new0(DiskWait, 1);
  w->storage = s;
  w->request = request;
  w->mount_path = g_strdup(mount_path);
  w->controller = controller;
  w->lun = lun;
  w->partition = (guint64)partition;
  w->flags = flags;
  w->data = g_steal_pointer(&data);
  w->filesystem = g_strdup(filesystem);
  w->deadline_us = g_get_monotonic_time() + (gint64)s->disk_wait_ms * 1000;
  g_hash_table_add(s->waits, w);
  if (!disk_try(w))
    w->timer = ferry_timeout_new(s->context, DISK_POLL_MS, on_disk_poll, w);
}

/* The root of combined layers that use something at or below `path`, or NULL. */
static const char *layers_using(GcsStorage *s, const char *path)
{
  GHashTableIter iter;
  gpointer value;
  g_hash_table_iter_init(&iter, s->layers);
  while (g_hash_table_iter_next(&iter, NULL, &value)) {
    Layers *l = value;
    for (char **u = l->uses; *u != NULL; u++)
      if (path_within(*u, path))
        return l->root;
  }
  return NULL;
}

static void mapped_disk_remove(GcsStorage *s, FerryBridgeRequest *request, json_t *settings)
{
  g_autoptr(GError) error = NULL;
  const char *mount_path = NULL;
  if (!ferry_json_get_string(settings, "MountPath", FALSE, &mount_path, &error)) {
    reply_error(request, "MappedVirtualDisk", error);
    return;
  }
  if (mount_path == NULL || mount_path[0] == '\0') {
    ferry_bridge_request_reply(request, NULL); /* hcsshim: nothing was mounted */
    return;
  }
  DiskMount *m = g_hash_table_lookup(s->disks, mount_path);
  if (m == NULL) {
    ferry_bridge_request_reply_error(request, FERRY_HR_NOT_FOUND,
                                     "ModifySettings MappedVirtualDisk: no disk is mapped at %s",
                                     mount_path);
    return;
  }
  /* overlayfs holds its layers through private clones of their mounts, so the kernel
   * would let the disk's mount go while an overlay still reads it (and the host would
   * then unplug a disk in use): the agent refuses itself. */
  const char *user = layers_using(s, mount_path);
  if (user != NULL) {
    ferry_bridge_request_reply_error(
        request, FERRY_HR_INVALID_STATE,
        "ModifySettings MappedVirtualDisk: %s is busy: the combined layers at %s use it "
        "(remove them first)",
        mount_path, user);
    return;
  }
  if (umount2(mount_path, 0) != 0) {
    ferry_error_set_errno(&error, errno, "unmount %s", mount_path);
    reply_error(request, "MappedVirtualDisk", error);
    return;
  }
  (void)rmdir(mount_path); /* hcsshim removes the mount point too */
  ferry_log(FERRY_LOG_DEBUG, "gcs: disk unmounted", "device", m->device, "path", mount_path, NULL);
  g_hash_table_remove(s->disks, mount_path);
  ferry_bridge_request_reply(request, NULL);
}

/* ------------------------------------------------------- CombinedLayers -- */

/* The writable disk mapped at or above `path`, if any (hcsshim's scratch disk). */
static DiskMount *writable_disk_of(GcsStorage *s, const char *path)
{
  GHashTableIter iter;
  gpointer value;
  g_hash_table_iter_init(&iter, s->disks);
  while (g_hash_table_iter_next(&iter, NULL, &value)) {
    DiskMount *m = value;
    if (!m->read_only && path_within(path, m->mount_path))
      return m;
  }
  return NULL;
}

static void combined_layers_add(GcsStorage *s, FerryBridgeRequest *request, json_t *settings)
{
  g_autoptr(GError) error = NULL;
  const char *root = NULL, *scratch = NULL;
  gint64 size_mb = 0;
  json_t *layers = json_object_get(settings, "Layers");
  if (!ferry_json_get_string(settings, "ContainerRootPath", TRUE, &root, &error) ||
      !ferry_json_get_string(settings, "ScratchPath", FALSE, &scratch, &error) ||
      !ferry_json_get_int64(settings, FERRY_BRIDGE_SCRATCH_SIZE_FIELD, FALSE, &size_mb, &error) ||
      !check_path(s, "ContainerRootPath", root, &error)) {
    reply_error(request, "CombinedLayers", error);
    return;
  }
  if (!json_is_array(layers) || json_array_size(layers) == 0) {
    g_set_error(&error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                "field Layers: an array of at least one {\"Path\"} is required");
    reply_error(request, "CombinedLayers", error);
    return;
  }
  if (size_mb < 0 || size_mb > G_MAXUINT32) {
    g_set_error(&error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                "field " FERRY_BRIDGE_SCRATCH_SIZE_FIELD ": %" G_GINT64_FORMAT " is out of range",
                size_mb);
    reply_error(request, "CombinedLayers", error);
    return;
  }
  if (g_hash_table_contains(s->layers, root)) {
    g_set_error(&error, FERRY_ERROR, FERRY_ERROR_ALREADY_EXISTS,
                "layers are already combined at %s", root);
    reply_error(request, "CombinedLayers", error);
    return;
  }
  /* lowerdir in hcsshim's order: the first layer is the top one. */
  g_autoptr(GString) options = g_string_new("lowerdir=");
  g_autoptr(GPtrArray) uses = g_ptr_array_new_with_free_func(g_free);
  gsize i;
  json_t *layer;
  json_array_foreach(layers, i, layer)
  {
    const char *path = json_string_value(json_object_get(layer, "Path"));
    g_autofree char *what = g_strdup_printf("Layers[%zu].Path", i);
    if (!check_path(s, what, path, &error)) {
      reply_error(request, "CombinedLayers", error);
      return;
    }
    if (!g_file_test(path, G_FILE_TEST_IS_DIR)) {
      g_set_error(&error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND, "%s %s: not a directory", what, path);
      reply_error(request, "CombinedLayers", error);
      return;
    }
    g_string_append_printf(options, "%s%s", i > 0 ? ":" : "", path);
    g_ptr_array_add(uses, g_strdup(path));
  }
  if (scratch != NULL && scratch[0] == '\0')
    scratch = NULL;
  if (scratch != NULL && (!check_path(s, "ScratchPath", scratch, &error) ||
                          path_within(scratch, root) || path_within(root, scratch))) {
    if (error == NULL)
      g_set_error(&error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                  "ScratchPath %s and ContainerRootPath %s may not contain each other", scratch,
                  root);
    reply_error(request, "CombinedLayers", error);
    return;
  }
  /* Without ScratchPath the overlay is read-only (hcsshim). With one on a writable mapped
   * disk, upper and work are directories there (hcsshim's scratch disk); otherwise the
   * agent mounts a tmpfs of the scratch size at ScratchPath: the upper lives in guest
   * RAM and migrates with it. */
  gboolean tmpfs = scratch != NULL && writable_disk_of(s, scratch) == NULL;
  gboolean root_existed = g_file_test(root, G_FILE_TEST_IS_DIR);
  if (scratch != NULL) {
    if (!make_dir("ScratchPath", scratch, &error)) {
      reply_error(request, "CombinedLayers", error);
      return;
    }
    if (tmpfs) {
      g_autofree char *size = g_strdup_printf("size=%" G_GINT64_FORMAT "m,mode=0755",
                                              size_mb > 0 ? size_mb : (gint64)s->scratch_size_mb);
      if (mount("tmpfs", scratch, "tmpfs", MS_NOSUID | MS_NODEV, size) != 0) {
        ferry_error_set_errno(&error, errno, "mount a tmpfs (%s) on %s", size, scratch);
        reply_error(request, "CombinedLayers", error);
        return;
      }
    }
    g_autofree char *upper = g_build_filename(scratch, "upper", NULL);
    g_autofree char *work = g_build_filename(scratch, "work", NULL);
    if (!make_dir("upper directory", upper, &error) || !make_dir("work directory", work, &error))
      goto fail;
    g_string_append_printf(options, ",upperdir=%s,workdir=%s", upper, work);
  }
  if (!make_dir("ContainerRootPath", root, &error))
    goto fail;
  /* overlayfs wants two lower layers when it has no upper: one read-only layer is a
   * read-only bind mount of it instead. */
  gboolean bind = scratch == NULL && json_array_size(layers) == 1;
  const char *lower = g_ptr_array_index(uses, 0);
  int err = 0;
  if (bind) {
    if (mount(lower, root, NULL, MS_BIND, NULL) != 0) {
      err = errno;
    } else if (mount(NULL, root, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY, NULL) != 0) {
      err = errno;
      (void)umount2(root, MNT_DETACH);
    }
    if (err != 0)
      ferry_error_set_errno(&error, err, "bind %s read-only on %s", lower, root);
  } else if (mount("overlay", root, "overlay", scratch == NULL ? MS_RDONLY : 0, options->str) !=
             0) {
    err = errno;
    ferry_error_set_errno(&error, err, "mount overlay (%s) on %s", options->str, root);
  }
  if (err != 0) {
    if (!root_existed)
      (void)rmdir(root);
    goto fail;
  }
  Layers *l = g_new0(Layers, 1);
  l->root = g_strdup(root);
  l->scratch = tmpfs ? g_strdup(scratch) : NULL;
  if (scratch != NULL)
    g_ptr_array_add(uses, g_strdup(scratch));
  g_ptr_array_add(uses, NULL);
  l->uses = (char **)g_ptr_array_free(g_steal_pointer(&uses), FALSE);
  g_hash_table_insert(s->layers, l->root, l);
  ferry_log(FERRY_LOG_DEBUG, "gcs: layers combined", "path", root, "options", options->str, NULL);
  ferry_bridge_request_reply(request, NULL);
  return;

fail:
  if (tmpfs)
    (void)umount2(scratch, MNT_DETACH);
  reply_error(request, "CombinedLayers", error);
}

static void combined_layers_remove(GcsStorage *s, FerryBridgeRequest *request, json_t *settings)
{
  g_autoptr(GError) error = NULL;
  const char *root = NULL;
  if (!ferry_json_get_string(settings, "ContainerRootPath", TRUE, &root, &error)) {
    reply_error(request, "CombinedLayers", error);
    return;
  }
  Layers *l = g_hash_table_lookup(s->layers, root);
  if (l == NULL) {
    ferry_bridge_request_reply_error(request, FERRY_HR_NOT_FOUND,
                                     "ModifySettings CombinedLayers: no layers are combined at %s",
                                     root);
    return;
  }
  if (umount2(root, 0) != 0) {
    ferry_error_set_errno(&error, errno, "unmount the overlay on %s", root);
    reply_error(request, "CombinedLayers", error);
    return;
  }
  (void)rmdir(root);
  if (l->scratch != NULL) {
    /* The overlay is gone, so nothing holds the tmpfs; what the container wrote goes. */
    if (umount2(l->scratch, 0) != 0)
      ferry_log(FERRY_LOG_DEBUG, "gcs: unmount scratch tmpfs failed", "path", l->scratch, "error",
                g_strerror(errno), NULL);
    else
      (void)rmdir(l->scratch);
  }
  ferry_log(FERRY_LOG_DEBUG, "gcs: layers removed", "path", root, NULL);
  g_hash_table_remove(s->layers, root);
  ferry_bridge_request_reply(request, NULL);
}

/* ---------------------------------------------------------------- dump -- */

static gint compare_strings(gconstpointer a, gconstpointer b)
{
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

void gcs_storage_dump(GcsStorage *s, GString *out)
{
  g_autoptr(GPtrArray) lines = g_ptr_array_new_with_free_func(g_free);
  GHashTableIter iter;
  gpointer key, value;
  g_hash_table_iter_init(&iter, s->disks);
  while (g_hash_table_iter_next(&iter, NULL, &value)) {
    DiskMount *m = value;
    g_ptr_array_add(lines, g_strdup_printf("disk %s on %s (%s)\n", m->device, m->mount_path,
                                           m->read_only ? "ro" : "rw"));
  }
  g_hash_table_iter_init(&iter, s->layers);
  while (g_hash_table_iter_next(&iter, NULL, &value)) {
    Layers *l = value;
    g_autofree char *uses = g_strjoinv(" ", l->uses);
    g_ptr_array_add(lines, g_strdup_printf("layers %s: %s%s%s\n", l->root, uses,
                                           l->scratch != NULL ? ", tmpfs " : "",
                                           l->scratch != NULL ? l->scratch : ""));
  }
  g_hash_table_iter_init(&iter, s->waits);
  while (g_hash_table_iter_next(&iter, &key, NULL)) {
    DiskWait *w = key;
    g_ptr_array_add(lines,
                    g_strdup_printf("waiting for controller %u LUN %u (for %s)\n", w->controller,
                                    w->lun, w->mount_path != NULL ? w->mount_path : "no mount"));
  }
  g_ptr_array_sort(lines, compare_strings);
  for (guint i = 0; i < lines->len; i++)
    g_string_append(out, lines->pdata[i]);
}

/* ------------------------------------------------------------ dispatch -- */

gboolean gcs_storage_modify(GcsStorage *s, FerryBridgeRequest *request, const char *resource_type,
                            const char *request_type, json_t *settings)
{
  gboolean disk = strcmp(resource_type, "MappedVirtualDisk") == 0;
  if (!disk && strcmp(resource_type, "CombinedLayers") != 0)
    return FALSE;
  if (!json_is_object(settings)) {
    ferry_bridge_request_reply_error(request, FERRY_HR_INVALID_JSON,
                                     "ModifySettings %s: Settings is not an object", resource_type);
    return TRUE;
  }
  gboolean add = strcmp(request_type, "Add") == 0;
  if (!add && strcmp(request_type, "Remove") != 0) {
    ferry_bridge_request_reply_error(request, FERRY_HR_E_NOTIMPL,
                                     "ModifySettings %s: RequestType %s is not supported (Add and "
                                     "Remove are)",
                                     resource_type, request_type);
    return TRUE;
  }
  if (disk && add)
    mapped_disk_add(s, request, settings);
  else if (disk)
    mapped_disk_remove(s, request, settings);
  else if (add)
    combined_layers_add(s, request, settings);
  else
    combined_layers_remove(s, request, settings);
  return TRUE;
}
