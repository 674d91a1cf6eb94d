/*
 * lib/rootfs: content digests and the EROFS image builder, with the real mkfs.erofs
 * (Debian's erofs-utils). Trees are built in temporary directories; the images are
 * checked with fsck.erofs and, where the kernel and privileges allow it, by mounting
 * them and comparing the mounted tree's digest with the source's.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "ferry/error.h"
#include "ferry/rootfs.h"
#include "ferry/source.h"
#include "test-util.h"

#define NOBODY 65534

static char *mkfs_path;

static gboolean run_quiet(const char *const *argv, char **out);

/* ----------------------------------------------------------------- trees -- */

static void write_file(const char *dir, const char *rel, const void *data, gsize len, mode_t mode)
{
  g_autofree char *p = g_build_filename(dir, rel, NULL);
  g_autoptr(GError) error = NULL;
  g_assert_true(
      g_file_set_contents_full(p, data, (gssize)len, G_FILE_SET_CONTENTS_NONE, mode, &error));
  g_assert_no_error(error);
  g_assert_cmpint(chmod(p, mode), ==, 0);
}

static void make_dir(const char *dir, const char *rel, mode_t mode)
{
  g_autofree char *p = g_build_filename(dir, rel, NULL);
  g_assert_cmpint(mkdir(p, mode), ==, 0);
  g_assert_cmpint(chmod(p, mode), ==, 0);
}

/* Bytes that differ from offset to offset, so that a misplaced block shows. */
static guint8 *pattern(gsize len, guint seed)
{
  guint8 *b = g_malloc(len);
  guint32 x = 2463534242u ^ seed;
  for (gsize i = 0; i < len; i++) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    b[i] = (guint8)x;
  }
  return b;
}

static gboolean can_mknod = TRUE;

/*
 * A layer with every kind of entry a container image has: directories, files (empty,
 * small, larger than the hashing chunk), a setuid file owned by another user, a
 * symlink, a hard link, a fifo, a unix socket, an overlay whiteout (char device 0:0), a
 * block device, user and trusted xattrs (an opaque directory). `reverse` creates the
 * entries in the opposite order, so the two trees differ in inode numbers and
 * directory order on disk but not in content.
 */
static void build_tree(const char *dir, gboolean reverse)
{
  g_autofree guint8 *big = pattern(600 * 1024 + 17, 1);
  for (int step = 0; step < 2; step++) {
    gboolean first = (step == 0) != reverse;
    if (first) {
      make_dir(dir, "etc", 0755);
      write_file(dir, "etc/hostname", "ferry\n", 6, 0644);
      write_file(dir, "etc/empty", "", 0, 0600);
      make_dir(dir, "bin", 0755);
      write_file(dir, "bin/big", big, 600 * 1024 + 17, 0755);
      write_file(dir, "bin/suid", "#!/bin/sh\n", 10, 04755);
      g_autofree char *suid = g_build_filename(dir, "bin/suid", NULL);
      if (geteuid() == 0)
        g_assert_cmpint(lchown(suid, 1000, 1001), ==, 0);
      g_assert_cmpint(chmod(suid, 04755), ==, 0); /* chown cleared the setuid bit */
      g_autofree char *link = g_build_filename(dir, "bin/sh", NULL);
      g_assert_cmpint(symlink("busybox", link), ==, 0);
    } else {
      make_dir(dir, "opaque", 0700);
      g_autofree char *opaque = g_build_filename(dir, "opaque", NULL);
      g_assert_cmpint(lsetxattr(opaque, "user.note", "a", 1, 0), ==, 0);
      if (geteuid() == 0)
        g_assert_cmpint(lsetxattr(opaque, "trusted.overlay.opaque", "y", 1, 0), ==, 0);
      write_file(dir, "opaque/data", "data", 4, 0644);
      g_autofree char *data = g_build_filename(dir, "opaque/data", NULL);
      g_autofree char *hard = g_build_filename(dir, "opaque/hardlink", NULL);
      g_assert_cmpint(link(data, hard), ==, 0);
      g_autofree char *fifo = g_build_filename(dir, "opaque/fifo", NULL);
      g_assert_cmpint(mkfifo(fifo, 0640), ==, 0);
      g_autofree char *whiteout = g_build_filename(dir, "opaque/gone", NULL);
      g_autofree char *blk = g_build_filename(dir, "opaque/blk", NULL);
      if (mknod(whiteout, S_IFCHR | 0, makedev(0, 0)) != 0 ||
          mknod(blk, S_IFBLK | 0660, makedev(7, 3)) != 0)
        can_mknod = FALSE;
      g_autofree char *sock = g_build_filename(dir, "opaque/sock", NULL);
      int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
      struct sockaddr_un sa = { .sun_family = AF_UNIX };
      g_assert_cmpuint(strlen(sock), <, sizeof sa.sun_path);
      strcpy(sa.sun_path, sock);
      g_assert_cmpint(bind(fd, (struct sockaddr *)&sa, sizeof sa), ==, 0);
      close(fd);
    }
  }
}

static char *new_tree(gboolean reverse)
{
  char *dir = test_make_tmpdir();
  g_assert_cmpint(chmod(dir, 0755), ==, 0);
  build_tree(dir, reverse);
  return dir;
}

static char *digest_of(const char *dir)
{
  g_autoptr(GError) error = NULL;
  char *d = ferry_rootfs_content_digest(dir, &error);
  g_assert_no_error(error);
  g_assert_true(g_str_has_prefix(d, "sha256:"));
  g_assert_cmpuint(strlen(d), ==, 7 + 64);
  return d;
}

/* --------------------------------------------------------------- builds -- */

typedef struct {
  gboolean done;
  FerryRootfsImages *images;
  GError *error;
} Result;

static void result_clear(Result *r)
{
  g_clear_pointer(&r->images, ferry_rootfs_images_free);
  g_clear_error(&r->error);
  r->done = FALSE;
}

static void on_built(FerryRootfsBuilder *b, FerryRootfsImages *images, const GError *error,
                     gpointer data)
{
  Result *r = data;
  g_assert_false(r->done);
  r->done = TRUE;
  r->images = images;
  r->error = error != NULL ? g_error_copy(error) : NULL;
}

static FerryRootfsBuilder *new_builder(const char *cache, const char *mkfs)
{
  FerryRootfsBuilderOptions o = { .cache_dir = cache, .mkfs_erofs = mkfs ? mkfs : mkfs_path };
  g_autoptr(GError) error = NULL;
  FerryRootfsBuilder *b = ferry_rootfs_builder_new(&o, &error);
  g_assert_no_error(error);
  return b;
}

/* Build `layers` and wait for the result; the callback must not run inside the call. */
static void build(FerryRootfsBuilder *b, const FerryRootfsLayers *layers, GCancellable *cancel,
                  Result *r)
{
  result_clear(r);
  ferry_rootfs_builder_build(b, layers, cancel, on_built, r);
  g_assert_false(r->done);
  g_assert_true(test_run_until(&r->done, 120000));
}

static FerryRootfsImages *build_dir(FerryRootfsBuilder *b, const char *dir)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(FerryRootfsLayers) layers = ferry_rootfs_layers_from_directory(dir, &error);
  g_assert_no_error(error);
  Result r = { 0 };
  build(b, layers, NULL, &r);
  g_assert_no_error(r.error);
  g_assert_cmpuint(r.images->n_images, ==, 1);
  return r.images;
}

static GError *build_dir_error(FerryRootfsBuilder *b, const char *dir)
{
  g_autoptr(FerryRootfsLayers) layers = ferry_rootfs_layers_from_directory(dir, NULL);
  g_assert_nonnull(layers);
  Result r = { 0 };
  build(b, layers, NULL, &r);
  g_assert_null(r.images);
  g_assert_nonnull(r.error);
  return r.error;
}

static char *file_sha256(const char *path)
{
  g_autofree char *data = NULL;
  gsize len = 0;
  g_assert_true(g_file_get_contents(path, &data, &len, NULL));
  g_autofree char *hex = g_compute_checksum_for_data(G_CHECKSUM_SHA256, (guchar *)data, len);
  return g_strconcat("sha256:", hex, NULL);
}

/* Names in `dir` that look like a builder's temporary files. */
static guint count_tmp_files(const char *dir)
{
  g_autoptr(GDir) d = g_dir_open(dir, 0, NULL);
  guint n = 0;
  const char *name;
  while (d != NULL && (name = g_dir_read_name(d)) != NULL)
    n += strstr(name, ".tmp-") != NULL;
  return n;
}

static guint count_images(const char *dir)
{
  g_autoptr(GDir) d = g_dir_open(dir, 0, NULL);
  guint n = 0;
  const char *name;
  while (d != NULL && (name = g_dir_read_name(d)) != NULL)
    n += g_str_has_suffix(name, ".erofs");
  return n;
}

/* ---------------------------------------------------------------- tests -- */

static void test_digest_ignores_creation_order(void)
{
  g_autofree char *a = new_tree(FALSE);
  g_autofree char *b = new_tree(TRUE);
  g_autofree char *da = digest_of(a);
  g_autofree char *db = digest_of(b);
  g_assert_cmpstr(da, ==, db);
  /* Timestamps are not part of an image, so not of its digest either. */
  g_autofree char *f = g_build_filename(b, "etc/hostname", NULL);
  struct timespec ts[2] = { { 12345, 0 }, { 12345, 0 } };
  g_assert_cmpint(utimensat(AT_FDCWD, f, ts, AT_SYMLINK_NOFOLLOW), ==, 0);
  g_autofree char *db2 = digest_of(b);
  g_assert_cmpstr(da, ==, db2);
  test_rm_rf(a);
  test_rm_rf(b);
}

/* Each change to what an image holds changes the digest. */
static void test_digest_sees_changes(void)
{
  g_autofree char *dir = new_tree(FALSE);
  g_autofree char *before = digest_of(dir);
  g_autofree char *hostname = g_build_filename(dir, "etc/hostname", NULL);
  g_autofree char *suid = g_build_filename(dir, "bin/suid", NULL);
  g_autofree char *opaque = g_build_filename(dir, "opaque", NULL);
  g_autofree char *link = g_build_filename(dir, "bin/sh", NULL);

  write_file(dir, "etc/hostname", "ferrY\n", 6, 0644);
  g_autofree char *content = digest_of(dir);
  g_assert_cmpstr(content, !=, before);

  g_assert_cmpint(chmod(hostname, 0640), ==, 0);
  g_autofree char *mode = digest_of(dir);
  g_assert_cmpstr(mode, !=, content);

  g_assert_cmpint(lchown(suid, getuid() == 0 ? 1002 : (uid_t)-1, getgid()), ==, 0);
  g_autofree char *owner = digest_of(dir);
  g_assert_cmpstr(owner, !=, mode);

  g_assert_cmpint(lsetxattr(opaque, "user.note", "b", 1, 0), ==, 0);
  g_autofree char *xattr = digest_of(dir);
  g_assert_cmpstr(xattr, !=, owner);

  g_assert_cmpint(unlink(link), ==, 0);
  g_assert_cmpint(symlink("busybox2", link), ==, 0);
  g_autofree char *target = digest_of(dir);
  g_assert_cmpstr(target, !=, xattr);

  /* A copy instead of a hard link is a different image (two inodes). */
  g_autofree char *hard = g_build_filename(dir, "opaque/hardlink", NULL);
  g_assert_cmpint(unlink(hard), ==, 0);
  write_file(dir, "opaque/hardlink", "data", 4, 0644);
  g_autofree char *copy = digest_of(dir);
  g_assert_cmpstr(copy, !=, target);

  write_file(dir, "new", "", 0, 0644);
  g_autofree char *added = digest_of(dir);
  g_assert_cmpstr(added, !=, copy);
  test_rm_rf(dir);
}

static void test_digest_errors(void)
{
  g_autoptr(GError) error = NULL;
  g_assert_null(ferry_rootfs_content_digest("/nonexistent/ferry-rootfs", &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND);
  g_assert_nonnull(strstr(error->message, "/nonexistent/ferry-rootfs"));
  g_clear_error(&error);
  g_assert_null(ferry_rootfs_content_digest("/etc/hostname", &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
  g_assert_nonnull(strstr(error->message, "not a directory"));
}

/* mkfs.erofs 1.5 leaves out every name that starts with "lost+found"; the digest
 * describes the image, so it leaves them out too. */
static void test_digest_skips_lost_found(void)
{
  g_autofree char *dir = new_tree(FALSE);
  g_autofree char *before = digest_of(dir);
  make_dir(dir, "lost+found", 0700);
  write_file(dir, "etc/lost+found.txt", "x", 1, 0644);
  g_autofree char *after = digest_of(dir);
  g_assert_cmpstr(before, ==, after);
  write_file(dir, "etc/lost_found", "x", 1, 0644);
  g_autofree char *other = digest_of(dir);
  g_assert_cmpstr(other, !=, before);
  test_rm_rf(dir);
}

/* mkfs.erofs joins paths in a PATH_MAX buffer and fails on longer ones; the walk
 * refuses them first. */
static void test_digest_path_max(void)
{
  g_autofree char *dir = test_make_tmpdir();
  char name[256];
  memset(name, 'n', 255);
  name[255] = '\0';
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  g_assert_cmpint(fd, >=, 0);
  for (int i = 0; i < 17; i++) { /* 17 * 256 > 4096 */
    g_assert_cmpint(mkdirat(fd, name, 0755), ==, 0);
    int next = openat(fd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    g_assert_cmpint(next, >=, 0);
    close(fd);
    fd = next;
  }
  close(fd);
  g_autoptr(GError) error = NULL;
  g_assert_null(ferry_rootfs_content_digest(dir, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
  g_assert_nonnull(strstr(error->message, "PATH_MAX"));
  /* nftw (test_rm_rf) cannot reach below PATH_MAX; rm(1) can. */
  const char *rm[] = { "rm", "-rf", dir, NULL };
  g_autofree char *out = NULL;
  if (!run_quiet(rm, &out))
    g_error("rm -rf %s: %s", dir, out);
}

/* Two builds of equal trees, created differently, into two caches: the same key and
 * byte-identical images. */
static void test_build_reproducible(void)
{
  g_autofree char *a = new_tree(FALSE);
  g_autofree char *b = new_tree(TRUE);
  g_autofree char *cache_a = test_make_tmpdir();
  g_autofree char *cache_b = test_make_tmpdir();
  g_autoptr(FerryRootfsBuilder) ba = new_builder(cache_a, NULL);
  g_autoptr(FerryRootfsBuilder) bb = new_builder(cache_b, NULL);
  g_autoptr(FerryRootfsImages) ia = build_dir(ba, a);
  g_autoptr(FerryRootfsImages) ib = build_dir(bb, b);
  FerryRootfsImage *x = &ia->images[0], *y = &ib->images[0];
  g_assert_true(x->built);
  g_assert_true(y->built);
  g_assert_cmpstr(x->content, ==, y->content);
  g_assert_cmpstr(x->cache_key, ==, y->cache_key);
  g_assert_cmpstr(x->image_sha256, ==, y->image_sha256);
  g_assert_cmpuint(x->size, ==, y->size);
  g_assert_true(g_str_has_prefix(ia->mkfs_version, "mkfs.erofs "));

  /* The result describes the file: its sha256, its size, its name. */
  g_autofree char *sum = file_sha256(x->path);
  g_assert_cmpstr(sum, ==, x->image_sha256);
  struct stat st;
  g_assert_cmpint(stat(x->path, &st), ==, 0);
  g_assert_cmpuint((guint64)st.st_size, ==, x->size);
  g_autofree char *name = g_strconcat(x->cache_key, ".erofs", NULL);
  g_autofree char *expect = g_build_filename(cache_a, name, NULL);
  g_assert_cmpstr(x->path, ==, expect);
  g_assert_cmpstr(x->source, ==, a);
  g_autofree char *digest = digest_of(a);
  g_assert_cmpstr(x->content, ==, digest);

  /* Byte for byte, not only by digest. */
  g_autofree char *da = NULL, *db = NULL;
  gsize la = 0, lb = 0;
  g_assert_true(g_file_get_contents(x->path, &da, &la, NULL));
  g_assert_true(g_file_get_contents(y->path, &db, &lb, NULL));
  g_assert_cmpmem(da, la, db, lb);
  g_assert_cmpuint(count_tmp_files(cache_a), ==, 0);

  /* A different tree is a different key and a different image. */
  write_file(b, "etc/hostname", "other\n", 6, 0644);
  g_autoptr(FerryRootfsImages) ic = build_dir(bb, b);
  g_assert_cmpstr(ic->images[0].cache_key, !=, y->cache_key);
  g_assert_cmpstr(ic->images[0].image_sha256, !=, y->image_sha256);
  g_assert_cmpuint(count_images(cache_b), ==, 2);
  test_rm_rf(a);
  test_rm_rf(b);
  test_rm_rf(cache_a);
  test_rm_rf(cache_b);
}

/* A cache hit does not run mkfs.erofs: the file is the same inode, untouched, and the
 * builder's count of mkfs runs does not move. */
static void test_build_cache_hit(void)
{
  g_autofree char *dir = new_tree(FALSE);
  g_autofree char *cache = test_make_tmpdir();
  g_autoptr(FerryRootfsBuilder) b1 = new_builder(cache, NULL);
  g_autoptr(FerryRootfsImages) first = build_dir(b1, dir);
  g_assert_true(first->images[0].built);
  g_assert_cmpuint(ferry_rootfs_builder_get_mkfs_runs(b1), ==, 1);
  struct stat before;
  g_assert_cmpint(stat(first->images[0].path, &before), ==, 0);

  g_autoptr(FerryRootfsImages) again = build_dir(b1, dir);
  g_assert_false(again->images[0].built);
  g_assert_cmpuint(ferry_rootfs_builder_get_mkfs_runs(b1), ==, 1);

  /* Another builder on the same cache (another shim) hits it too. */
  g_autoptr(FerryRootfsBuilder) b2 = new_builder(cache, NULL);
  g_autoptr(FerryRootfsImages) other = build_dir(b2, dir);
  g_assert_false(other->images[0].built);
  g_assert_cmpuint(ferry_rootfs_builder_get_mkfs_runs(b2), ==, 0);
  for (FerryRootfsImage *img = &again->images[0]; img != NULL;
       img = img == &again->images[0] ? &other->images[0] : NULL) {
    g_assert_cmpstr(img->path, ==, first->images[0].path);
    g_assert_cmpstr(img->image_sha256, ==, first->images[0].image_sha256);
    g_assert_cmpstr(img->cache_key, ==, first->images[0].cache_key);
    g_assert_cmpuint(img->size, ==, first->images[0].size);
  }
  struct stat after;
  g_assert_cmpint(stat(first->images[0].path, &after), ==, 0);
  g_assert_cmpuint(after.st_ino, ==, before.st_ino);
  g_assert_cmpint(after.st_mtim.tv_sec, ==, before.st_mtim.tv_sec);
  g_assert_cmpint(after.st_mtim.tv_nsec, ==, before.st_mtim.tv_nsec);
  g_assert_cmpuint(count_images(cache), ==, 1);
  test_rm_rf(dir);
  test_rm_rf(cache);
}

/* containerd's overlay mounts: one image per layer, top first, the upper on top when it
 * holds anything; equal layers share one image. */
static void test_build_layers_and_upper(void)
{
  g_autofree char *base = new_tree(FALSE);
  g_autofree char *mid = test_make_tmpdir();
  write_file(mid, "app", "v1", 2, 0755);
  g_autofree char *same = new_tree(TRUE); /* equal to base */
  g_autofree char *upper = test_make_tmpdir();
  g_autofree char *work = test_make_tmpdir();
  g_autofree char *cache = test_make_tmpdir();
  g_autofree char *lower = g_strdup_printf("lowerdir=%s:%s:%s", mid, same, base);
  g_autofree char *upper_opt = g_strconcat("upperdir=", upper, NULL);
  g_autofree char *work_opt = g_strconcat("workdir=", work, NULL);
  const char *opts[] = { "index=off", lower, upper_opt, work_opt };
  FerryRootfsMount m = { "overlay", "overlay", opts, G_N_ELEMENTS(opts) };
  g_autoptr(GError) error = NULL;
  g_autoptr(FerryRootfsLayers) layers = ferry_rootfs_layers_from_mounts(&m, 1, &error);
  g_assert_no_error(error);
  g_autoptr(FerryRootfsBuilder) b = new_builder(cache, NULL);

  /* An empty upper (a first run) adds no image. */
  Result r = { 0 };
  build(b, layers, NULL, &r);
  g_assert_no_error(r.error);
  g_assert_cmpuint(r.images->n_images, ==, 3);
  g_assert_cmpstr(r.images->images[0].source, ==, mid);
  g_assert_cmpstr(r.images->images[1].source, ==, same);
  g_assert_cmpstr(r.images->images[2].source, ==, base);
  for (guint i = 0; i < 3; i++)
    g_assert_false(r.images->images[i].from_upper);
  g_assert_true(r.images->images[1].built);
  g_assert_false(r.images->images[2].built); /* the same content as [1] */
  g_assert_cmpstr(r.images->images[1].path, ==, r.images->images[2].path);
  g_assert_cmpstr(r.images->images[0].path, !=, r.images->images[1].path);
  g_assert_cmpuint(ferry_rootfs_builder_get_mkfs_runs(b), ==, 2);

  /* After a run that wrote files, the upper is one more layer, on top. */
  write_file(upper, "written-by-the-container", "x", 1, 0644);
  build(b, layers, NULL, &r);
  g_assert_no_error(r.error);
  g_assert_cmpuint(r.images->n_images, ==, 4);
  g_assert_true(r.images->images[0].from_upper);
  g_assert_cmpstr(r.images->images[0].source, ==, upper);
  g_assert_true(r.images->images[0].built);
  for (guint i = 1; i < 4; i++)
    g_assert_false(r.images->images[i].built);
  g_assert_cmpuint(ferry_rootfs_builder_get_mkfs_runs(b), ==, 3);
  result_clear(&r);
  for (const char *const *d = (const char *const[]){ base, mid, same, upper, work, cache, NULL };
       *d; d++)
    test_rm_rf(*d);
}

/* Run argv to its end; *out gets its stdout and stderr (or why it did not run). */
static gboolean run_quiet(const char *const *argv, char **out)
{
  int status = -1;
  g_autoptr(GError) error = NULL;
  g_autofree char *so = NULL, *se = NULL;
  if (!g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_SEARCH_PATH, NULL, NULL, &so, &se, &status,
                    &error)) {
    *out = g_strdup(error->message);
    return FALSE;
  }
  *out = g_strconcat(so, se, NULL);
  return g_spawn_check_wait_status(status, NULL);
}

/* The image holds the tree: fsck.erofs accepts it, and mounted, the tree it shows has
 * the source's digest (every path, type, mode, owner, size, byte, link target, device
 * number, xattr and hard link). */
static void test_image_matches_tree(void)
{
  g_autofree char *dir = new_tree(FALSE);
  g_autofree char *cache = test_make_tmpdir();
  g_autoptr(FerryRootfsBuilder) b = new_builder(cache, NULL);
  g_autoptr(FerryRootfsImages) images = build_dir(b, dir);
  FerryRootfsImage *img = &images->images[0];

  g_autofree char *fsck = g_find_program_in_path("fsck.erofs");
  if (fsck != NULL) {
    g_autofree char *out = NULL;
    const char *argv[] = { fsck, img->path, NULL };
    if (!run_quiet(argv, &out))
      g_error("fsck.erofs %s failed: %s", img->path, out);
  } else {
    g_test_message("fsck.erofs is not installed: image integrity not checked by fsck");
  }

  g_autofree char *mnt = test_make_tmpdir();
  g_autofree char *out = NULL;
  const char *mount_argv[] = { "mount", "-t", "erofs", "-o", "loop,ro", img->path, mnt, NULL };
  if (!run_quiet(mount_argv, &out)) {
    test_rm_rf(mnt);
    test_rm_rf(dir);
    test_rm_rf(cache);
    g_autofree char *why = g_strdup_printf("cannot mount the image (mount -t erofs -o loop: %s): "
                                           "the tree inside was not compared",
                                           out != NULL ? g_strstrip(out) : "?");
    g_test_skip(why);
    return;
  }
  g_autoptr(GError) error = NULL;
  g_autofree char *mounted = ferry_rootfs_content_digest(mnt, &error);
  /* A few facts spelled out, so that a failure says which one. */
  struct stat a, h, w, s, u;
  g_autofree char *pa = g_build_filename(mnt, "opaque/data", NULL);
  g_autofree char *ph = g_build_filename(mnt, "opaque/hardlink", NULL);
  g_autofree char *pw = g_build_filename(mnt, "opaque/gone", NULL);
  g_autofree char *ps = g_build_filename(mnt, "opaque/sock", NULL);
  g_autofree char *pu = g_build_filename(mnt, "bin/suid", NULL);
  g_autofree char *po = g_build_filename(mnt, "opaque", NULL);
  gboolean ok =
      lstat(pa, &a) == 0 && lstat(ph, &h) == 0 && lstat(ps, &s) == 0 && lstat(pu, &u) == 0;
  gboolean whiteout_ok = !can_mknod || lstat(pw, &w) == 0;
  char opaque[8] = "";
  ssize_t olen =
      geteuid() == 0 ? lgetxattr(po, "trusted.overlay.opaque", opaque, sizeof opaque) : 1;
  const char *umount_argv[] = { "umount", mnt, NULL };
  g_autofree char *uout = NULL;
  if (!run_quiet(umount_argv, &uout))
    g_error("umount %s: %s", mnt, uout);
  g_assert_no_error(error);
  g_assert_true(ok);
  g_assert_true(whiteout_ok);
  g_assert_cmpuint(a.st_ino, ==, h.st_ino);
  g_assert_cmpuint(a.st_nlink, ==, 2);
  g_assert_true(S_ISSOCK(s.st_mode));
  g_assert_cmpuint(u.st_mode & 07777, ==, 04755);
  if (geteuid() == 0) {
    g_assert_cmpuint(u.st_uid, ==, 1000);
    g_assert_cmpuint(u.st_gid, ==, 1001);
    g_assert_cmpint(olen, ==, 1);
    g_assert_cmpint(opaque[0], ==, 'y');
  }
  if (can_mknod) {
    g_assert_true(S_ISCHR(w.st_mode));
    g_assert_cmpuint(w.st_rdev, ==, makedev(0, 0));
  }
  g_assert_cmpstr(mounted, ==, img->content);
  test_rm_rf(mnt);
  test_rm_rf(dir);
  test_rm_rf(cache);
}

static void test_error_missing_dir(void)
{
  g_autofree char *cache = test_make_tmpdir();
  g_autoptr(FerryRootfsBuilder) b = new_builder(cache, NULL);
  g_autoptr(GError) e = build_dir_error(b, "/nonexistent/ferry-layer");
  g_assert_error(e, FERRY_ERROR, FERRY_ERROR_NOT_FOUND);
  g_assert_nonnull(strstr(e->message, "/nonexistent/ferry-layer"));
  g_assert_cmpuint(ferry_rootfs_builder_get_mkfs_runs(b), ==, 0);
  test_rm_rf(cache);
}

static void test_error_mkfs_missing(void)
{
  g_autofree char *dir = new_tree(FALSE);
  g_autofree char *cache = test_make_tmpdir();
  g_autoptr(FerryRootfsBuilder) b = new_builder(cache, "/nonexistent/mkfs.erofs");
  g_autoptr(GError) e = build_dir_error(b, dir);
  g_assert_error(e, FERRY_ERROR, FERRY_ERROR_NOT_FOUND);
  g_assert_nonnull(strstr(e->message, "/nonexistent/mkfs.erofs"));
  g_assert_cmpuint(count_images(cache), ==, 0);
  test_rm_rf(dir);
  test_rm_rf(cache);
}

static void test_error_cache_is_a_file(void)
{
  g_autofree char *dir = new_tree(FALSE);
  g_autofree char *tmp = test_make_tmpdir();
  g_autofree char *cache = g_build_filename(tmp, "cache", NULL);
  write_file(tmp, "cache", "", 0, 0644);
  g_autoptr(FerryRootfsBuilder) b = new_builder(cache, NULL);
  g_autoptr(GError) e = build_dir_error(b, dir);
  g_assert_error(e, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION);
  g_assert_nonnull(strstr(e->message, cache));
  g_assert_nonnull(strstr(e->message, "not a directory"));
  g_assert_cmpuint(ferry_rootfs_builder_get_mkfs_runs(b), ==, 0);
  test_rm_rf(dir);
  test_rm_rf(tmp);
}

/* Root reads and writes everything; the permission tests run in a subprocess that has
 * become nobody (or already is an ordinary user). */
static void become_unprivileged(void)
{
  if (geteuid() != 0)
    return;
  g_assert_cmpint(setgroups(0, NULL), ==, 0);
  g_assert_cmpint(setresgid(NOBODY, NOBODY, NOBODY), ==, 0);
  g_assert_cmpint(setresuid(NOBODY, NOBODY, NOBODY), ==, 0);
  /* A uid change makes the process undumpable, and LeakSanitizer (CI's ASan stage)
   * cannot inspect an undumpable process. */
  g_assert_cmpint(prctl(PR_SET_DUMPABLE, 1, 0, 0, 0), ==, 0);
}

static void test_error_unreadable_file(void)
{
  if (g_test_subprocess()) {
    become_unprivileged();
    const char *dir = g_getenv("ROOTFS_TEST_DIR");
    const char *cache = g_getenv("ROOTFS_TEST_CACHE");
    g_autoptr(FerryRootfsBuilder) b = new_builder(cache, NULL);
    g_autoptr(GError) e = build_dir_error(b, dir);
    g_assert_error(e, FERRY_ERROR, FERRY_ERROR_PERMISSION_DENIED);
    g_assert_nonnull(strstr(e->message, "etc/secret"));
    g_assert_cmpuint(ferry_rootfs_builder_get_mkfs_runs(b), ==, 0);
    return;
  }
  g_autofree char *dir = test_make_tmpdir();
  g_autofree char *cache = test_make_tmpdir();
  g_assert_cmpint(chmod(dir, 0755), ==, 0);
  make_dir(dir, "etc", 0755);
  write_file(dir, "etc/secret", "s", 1, 0000);
  if (geteuid() == 0)
    g_assert_cmpint(chown(cache, NOBODY, NOBODY), ==, 0);
  g_setenv("ROOTFS_TEST_DIR", dir, TRUE);
  g_setenv("ROOTFS_TEST_CACHE", cache, TRUE);
  g_test_trap_subprocess(NULL, 120 * G_USEC_PER_SEC, G_TEST_SUBPROCESS_INHERIT_STDERR);
  g_test_trap_assert_passed();
  test_rm_rf(dir);
  test_rm_rf(cache);
}

static void test_error_cache_not_writable(void)
{
  if (g_test_subprocess()) {
    become_unprivileged();
    const char *dir = g_getenv("ROOTFS_TEST_DIR");
    const char *cache = g_getenv("ROOTFS_TEST_CACHE");
    g_autoptr(FerryRootfsBuilder) b = new_builder(cache, NULL);
    g_autoptr(GError) e = build_dir_error(b, dir);
    g_assert_error(e, FERRY_ERROR, FERRY_ERROR_PERMISSION_DENIED);
    g_assert_nonnull(strstr(e->message, cache));
    g_assert_cmpuint(ferry_rootfs_builder_get_mkfs_runs(b), ==, 0);
    return;
  }
  /* A tree anyone can read, a cache only its owner (root) can write. */
  g_autofree char *dir = test_make_tmpdir();
  g_assert_cmpint(chmod(dir, 0755), ==, 0);
  write_file(dir, "file", "f", 1, 0644);
  g_autofree char *cache = test_make_tmpdir();
  g_assert_cmpint(chmod(cache, 0555), ==, 0);
  g_setenv("ROOTFS_TEST_DIR", dir, TRUE);
  g_setenv("ROOTFS_TEST_CACHE", cache, TRUE);
  g_test_trap_subprocess(NULL, 120 * G_USEC_PER_SEC, G_TEST_SUBPROCESS_INHERIT_STDERR);
  g_test_trap_assert_passed();
  g_assert_cmpint(chmod(cache, 0755), ==, 0);
  test_rm_rf(dir);
  test_rm_rf(cache);
}

/* A cache on a read-only file system (as root, the one place a write is refused). */
static void test_error_cache_read_only_fs(void)
{
  g_autofree char *dir = new_tree(FALSE);
  g_autofree char *mnt = test_make_tmpdir();
  const char *mount_argv[] = { "mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", mnt, NULL };
  g_autofree char *out = NULL;
  if (!run_quiet(mount_argv, &out)) {
    g_autofree char *why =
        g_strdup_printf("cannot mount a read-only tmpfs here: %s", g_strstrip(out));
    test_rm_rf(dir);
    test_rm_rf(mnt);
    g_test_skip(why);
    return;
  }
  g_autofree char *cache = g_build_filename(mnt, "cache", NULL);
  g_autoptr(FerryRootfsBuilder) b = new_builder(cache, NULL);
  g_autoptr(GError) e = build_dir_error(b, dir);
  const char *umount_argv[] = { "umount", mnt, NULL };
  g_autofree char *uout = NULL;
  if (!run_quiet(umount_argv, &uout))
    g_error("umount %s: %s", mnt, uout);
  g_assert_error(e, FERRY_ERROR, FERRY_ERROR_PERMISSION_DENIED);
  g_assert_nonnull(strstr(e->message, "Read-only file system"));
  test_rm_rf(dir);
  test_rm_rf(mnt);
}

/* A real mkfs.erofs failure: the file size limit (inherited by the child, SIGXFSZ
 * ignored) makes its writes fail with EFBIG, and it says so on stderr. */
static void test_error_mkfs_fails(void)
{
  if (g_test_subprocess()) {
    const char *dir = g_getenv("ROOTFS_TEST_DIR");
    const char *cache = g_getenv("ROOTFS_TEST_CACHE");
    signal(SIGXFSZ, SIG_IGN);
    struct rlimit rl = { 256 * 1024, 256 * 1024 };
    g_assert_cmpint(setrlimit(RLIMIT_FSIZE, &rl), ==, 0);
    g_autoptr(FerryRootfsBuilder) b = new_builder(cache, NULL);
    g_autoptr(GError) e = build_dir_error(b, dir);
    g_assert_error(e, FERRY_ERROR, FERRY_ERROR_INTERNAL);
    g_assert_nonnull(strstr(e->message, "mkfs.erofs failed (exit status"));
    /* mkfs.erofs's own words, from its stderr */
    if (strstr(e->message, "File too large") == NULL)
      g_error("the error does not carry mkfs.erofs's stderr: %s", e->message);
    g_assert_cmpuint(count_tmp_files(cache), ==, 0);
    g_assert_cmpuint(count_images(cache), ==, 0);
    return;
  }
  g_autofree char *dir = new_tree(FALSE);
  g_autofree char *cache = test_make_tmpdir();
  g_setenv("ROOTFS_TEST_DIR", dir, TRUE);
  g_setenv("ROOTFS_TEST_CACHE", cache, TRUE);
  g_test_trap_subprocess(NULL, 120 * G_USEC_PER_SEC, G_TEST_SUBPROCESS_INHERIT_STDERR);
  g_test_trap_assert_passed();
  test_rm_rf(dir);
  test_rm_rf(cache);
}

/* A large tree, so that mkfs.erofs has something to chew on when it is killed. */
static char *new_big_tree(void)
{
  char *dir = test_make_tmpdir();
  g_autofree guint8 *data = pattern(8 * 1024 * 1024, 7);
  for (int i = 0; i < 4; i++) {
    g_autofree char *name = g_strdup_printf("blob%d", i);
    data[0] = (guint8)i;
    write_file(dir, name, data, 8 * 1024 * 1024, 0644);
  }
  return dir;
}

typedef struct {
  FerryRootfsBuilder *builder;
  GCancellable *cancellable; /* cancel, or (NULL) free the builder */
  GPid pid;
  GSource *source;
} Watcher;

/* A source that becomes ready as soon as the builder runs mkfs.erofs (checked before
 * every poll) and has a higher priority than the child watch: it sees the pid before
 * the child's exit can be processed, however quickly mkfs.erofs runs. */
typedef struct {
  GSource source;
  Watcher *w;
} WatchSource;

static gboolean watch_prepare(GSource *s, gint *timeout)
{
  *timeout = -1;
  Watcher *w = ((WatchSource *)s)->w;
  return ferry_rootfs_builder_get_mkfs_pid(w->builder) != 0;
}

static gboolean watch_check(GSource *s)
{
  return watch_prepare(s, &(gint){ 0 });
}

static gboolean watch_dispatch(GSource *s, GSourceFunc cb, gpointer data)
{
  Watcher *w = ((WatchSource *)s)->w;
  w->pid = ferry_rootfs_builder_get_mkfs_pid(w->builder);
  ferry_source_clear(&w->source);
  if (w->cancellable != NULL)
    g_cancellable_cancel(w->cancellable);
  else
    g_clear_pointer(&w->builder, ferry_rootfs_builder_free);
  return G_SOURCE_REMOVE;
}

static GSourceFuncs watch_funcs = { watch_prepare, watch_check, watch_dispatch, NULL, NULL, NULL };

static GSource *watcher_start(Watcher *w)
{
  g_autoptr(GMainContext) ctx = g_main_context_ref_thread_default();
  GSource *s = g_source_new(&watch_funcs, sizeof(WatchSource));
  ((WatchSource *)s)->w = w;
  g_source_set_priority(s, G_PRIORITY_HIGH);
  g_source_attach(s, ctx);
  return s;
}

static void test_cancel_kills_mkfs(void)
{
  g_autofree char *dir = new_big_tree();
  g_autofree char *cache = test_make_tmpdir();
  g_autoptr(GCancellable) cancel = g_cancellable_new();
  Watcher w = { .builder = new_builder(cache, NULL), .cancellable = cancel };
  w.source = watcher_start(&w);
  g_autoptr(FerryRootfsLayers) layers = ferry_rootfs_layers_from_directory(dir, NULL);
  Result r = { 0 };
  build(w.builder, layers, cancel, &r);
  ferry_source_clear(&w.source);
  g_assert_cmpint(w.pid, >, 0);
  g_assert_error(r.error, FERRY_ERROR, FERRY_ERROR_CANCELLED);
  g_assert_null(r.images);
  /* Reaped: the pid names no process (of ours) any more. */
  g_assert_cmpint(kill(w.pid, 0), ==, -1);
  g_assert_cmpint(errno, ==, ESRCH);
  g_assert_cmpuint(count_tmp_files(cache), ==, 0);
  g_assert_cmpuint(count_images(cache), ==, 0);
  g_assert_cmpuint(ferry_rootfs_builder_get_mkfs_pid(w.builder), ==, 0);
  result_clear(&r);

  /* Cancelled before it starts: nothing runs. */
  g_autoptr(FerryRootfsBuilder) b = new_builder(cache, NULL);
  build(b, layers, cancel, &r);
  g_assert_error(r.error, FERRY_ERROR, FERRY_ERROR_CANCELLED);
  g_assert_cmpuint(count_images(cache), ==, 0);
  result_clear(&r);
  ferry_rootfs_builder_free(w.builder);
  test_rm_rf(dir);
  test_rm_rf(cache);
}

static void test_free_kills_mkfs(void)
{
  g_autofree char *dir = new_big_tree();
  g_autofree char *cache = test_make_tmpdir();
  Watcher w = { .builder = new_builder(cache, NULL) };
  w.source = watcher_start(&w);
  g_autoptr(FerryRootfsLayers) layers = ferry_rootfs_layers_from_directory(dir, NULL);
  Result r = { 0 };
  ferry_rootfs_builder_build(w.builder, layers, NULL, on_built, &r);
  g_autoptr(GMainContext) ctx = g_main_context_ref_thread_default();
  while (w.builder != NULL && !r.done)
    g_main_context_iteration(ctx, TRUE);
  g_assert_no_error(r.error); /* the build did not end before mkfs.erofs ran */
  g_assert_false(r.done);
  g_assert_cmpint(w.pid, >, 0);
  g_assert_cmpint(kill(w.pid, 0), ==, -1);
  g_assert_cmpint(errno, ==, ESRCH);
  g_assert_cmpuint(count_tmp_files(cache), ==, 0);
  /* Its callback never runs, also not later. */
  while (g_main_context_iteration(ctx, FALSE))
    ;
  g_assert_false(r.done);
  test_rm_rf(dir);
  test_rm_rf(cache);
}

/* Two builders (two shims) building the same tree into one cache at the same time: both
 * succeed, and the cache ends with one complete image. */
static void test_concurrent_builders(void)
{
  g_autofree char *dir = new_tree(FALSE);
  g_autofree char *cache = test_make_tmpdir();
  g_autoptr(FerryRootfsBuilder) b1 = new_builder(cache, NULL);
  g_autoptr(FerryRootfsBuilder) b2 = new_builder(cache, NULL);
  g_autoptr(FerryRootfsLayers) layers = ferry_rootfs_layers_from_directory(dir, NULL);
  Result r1 = { 0 }, r2 = { 0 };
  ferry_rootfs_builder_build(b1, layers, NULL, on_built, &r1);
  ferry_rootfs_builder_build(b2, layers, NULL, on_built, &r2);
  g_assert_true(test_run_until(&r1.done, 120000));
  g_assert_true(test_run_until(&r2.done, 120000));
  g_assert_no_error(r1.error);
  g_assert_no_error(r2.error);
  g_assert_cmpstr(r1.images->images[0].path, ==, r2.images->images[0].path);
  g_assert_cmpstr(r1.images->images[0].image_sha256, ==, r2.images->images[0].image_sha256);
  g_autofree char *sum = file_sha256(r1.images->images[0].path);
  g_assert_cmpstr(sum, ==, r1.images->images[0].image_sha256);
  g_assert_cmpuint(count_images(cache), ==, 1);
  g_assert_cmpuint(count_tmp_files(cache), ==, 0);
  result_clear(&r1);
  result_clear(&r2);
  test_rm_rf(dir);
  test_rm_rf(cache);
}

static void test_builder_needs_cache(void)
{
  g_autoptr(GError) error = NULL;
  FerryRootfsBuilderOptions o = { 0 };
  g_assert_null(ferry_rootfs_builder_new(&o, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
}

int main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  mkfs_path = g_find_program_in_path("mkfs.erofs");
  if (mkfs_path == NULL) {
    printf("1..0 # SKIP mkfs.erofs is not installed (Debian: erofs-utils)\n");
    return 77;
  }
  g_test_add_func("/rootfs/digest/ignores-creation-order-and-mtime",
                  test_digest_ignores_creation_order);
  g_test_add_func("/rootfs/digest/sees-every-change", test_digest_sees_changes);
  g_test_add_func("/rootfs/digest/errors", test_digest_errors);
  g_test_add_func("/rootfs/digest/skips-lost-found-like-mkfs", test_digest_skips_lost_found);
  g_test_add_func("/rootfs/digest/refuses-paths-beyond-path-max", test_digest_path_max);
  g_test_add_func("/rootfs/builder/needs-a-cache-dir", test_builder_needs_cache);
  g_test_add_func("/rootfs/build/reproducible", test_build_reproducible);
  g_test_add_func("/rootfs/build/cache-hit-runs-no-mkfs", test_build_cache_hit);
  g_test_add_func("/rootfs/build/layers-and-upper", test_build_layers_and_upper);
  g_test_add_func("/rootfs/build/image-holds-the-tree", test_image_matches_tree);
  g_test_add_func("/rootfs/build/concurrent-builders-one-cache", test_concurrent_builders);
  g_test_add_func("/rootfs/build/cancel-kills-mkfs", test_cancel_kills_mkfs);
  g_test_add_func("/rootfs/build/free-kills-mkfs", test_free_kills_mkfs);
  g_test_add_func("/rootfs/error/missing-dir", test_error_missing_dir);
  g_test_add_func("/rootfs/error/unreadable-file", test_error_unreadable_file);
  g_test_add_func("/rootfs/error/mkfs-missing", test_error_mkfs_missing);
  g_test_add_func("/rootfs/error/mkfs-fails-with-its-stderr", test_error_mkfs_fails);
  g_test_add_func("/rootfs/error/cache-not-writable", test_error_cache_not_writable);
  g_test_add_func("/rootfs/error/cache-is-a-file", test_error_cache_is_a_file);
  g_test_add_func("/rootfs/error/cache-on-read-only-fs", test_error_cache_read_only_fs);
  return g_test_run();
}
