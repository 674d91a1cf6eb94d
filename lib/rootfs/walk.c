/*
 * The content digest of a layer directory (docs/rootfs.md, digest scheme): a SHA-256
 * over one record per entry, visited as mkfs.erofs 1.5 visits them (depth first,
 * children sorted by strcmp of their names, names starting with "lost+found" left
 * out), so that the digest covers exactly what the image holds and nothing it does not
 * (timestamps: the images have none of their own).
 */
#include "walk.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "ferry/error.h"
#include "ferry/rootfs.h"

#define DIGEST_MAGIC "ferry-rootfs-content-v1"
#define ENTRY_COST 4096
#define CHUNK (256 * 1024)
/* xattr names and values are bounded by the kernel (XATTR_LIST_MAX, XATTR_SIZE_MAX:
 * 64 KiB each); these caps only guard the allocations against a misbehaving
 * filesystem. */
#define XATTR_CAP (64 * 1024)

typedef struct {
  char *rel;        /* "" for the root, else "a/b" */
  GPtrArray *names; /* sorted children */
  guint next;
} Frame;

typedef struct {
  dev_t dev;
  ino_t ino;
} InodeKey;

struct RootfsWalk {
  char *root;
  GChecksum *sum;
  GPtrArray *stack; /* Frame * */
  GHashTable *seen; /* InodeKey * -> first relative path, for hard links */
  gboolean started;
  gboolean empty;
  /* the regular file being read */
  int fd;
  char *file_path;
  guint64 file_size, file_read;
  GChecksum *file_sum;
  guint8 *buf; /* CHUNK bytes */
  char *digest;
};

static guint inode_hash(gconstpointer p)
{
  const InodeKey *k = p;
  return g_int64_hash(&(gint64){ (gint64)k->ino }) ^ (guint)k->dev;
}

static gboolean inode_equal(gconstpointer a, gconstpointer b)
{
  const InodeKey *x = a, *y = b;
  return x->dev == y->dev && x->ino == y->ino;
}

static void frame_free(gpointer p)
{
  Frame *f = p;
  g_free(f->rel);
  g_ptr_array_unref(f->names);
  g_free(f);
}

static void put(GChecksum *sum, const void *data, gsize len)
{
  g_checksum_update(sum, data, (gssize)len);
}

static void put_u8(GChecksum *sum, guint8 v)
{
  put(sum, &v, 1);
}

static void put_u32(GChecksum *sum, guint32 v)
{
  guint32 le = GUINT32_TO_LE(v);
  put(sum, &le, 4);
}

static void put_u64(GChecksum *sum, guint64 v)
{
  guint64 le = GUINT64_TO_LE(v);
  put(sum, &le, 8);
}

/* A length-prefixed byte string, so that the record stream parses one way only. */
static void put_bytes(GChecksum *sum, const void *data, gsize len)
{
  put_u32(sum, (guint32)len);
  put(sum, data, len);
}

static void put_str(GChecksum *sum, const char *s)
{
  put_bytes(sum, s, strlen(s));
}

static char *digest_string(GChecksum *sum)
{
  return g_strconcat("sha256:", g_checksum_get_string(sum), NULL);
}

static gboolean fail_errno(GError **error, int errsv, const char *what, const char *path)
{
  return ferry_error_set_errno(error, errsv, "rootfs layer: %s %s", what, path);
}

/* The path mkfs.erofs would use for `rel` (it joins the source directory and names
 * with '/' into a PATH_MAX buffer and fails on longer ones). */
static char *full_path(RootfsWalk *w, const char *rel, GError **error)
{
  char *path = rel[0] == '\0' ? g_strdup(w->root) : g_strconcat(w->root, "/", rel, NULL);
  if (strlen(path) >= PATH_MAX) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                "rootfs layer: path %.64s... is longer than PATH_MAX (%d)", path, PATH_MAX);
    g_free(path);
    return NULL;
  }
  return path;
}

static int name_cmp(gconstpointer a, gconstpointer b)
{
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static GPtrArray *read_names(const char *path, GError **error)
{
  DIR *d = opendir(path);
  if (d == NULL) {
    fail_errno(error, errno, "open directory", path);
    return NULL;
  }
  GPtrArray *names = g_ptr_array_new_with_free_func(g_free);
  for (;;) {
    errno = 0;
    struct dirent *de = readdir(d);
    if (de == NULL)
      break;
    if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
      continue;
    /* mkfs.erofs 1.5 (lib/inode.c) skips every name that starts with "lost+found". */
    if (strncmp(de->d_name, "lost+found", 10) == 0)
      continue;
    g_ptr_array_add(names, g_strdup(de->d_name));
  }
  int errsv = errno;
  closedir(d);
  if (errsv != 0) {
    g_ptr_array_unref(names);
    fail_errno(error, errsv, "read directory", path);
    return NULL;
  }
  g_ptr_array_sort(names, name_cmp);
  return names;
}

/* The namespaces EROFS stores (erofs-utils 1.5 lib/xattr.c); mkfs.erofs fails on any
 * other, so the walk refuses it first with a clearer message. */
static gboolean xattr_supported(const char *name)
{
  static const char *const prefixes[] = {
    "user.", "trusted.", "security.", "system.posix_acl_access", "system.posix_acl_default",
  };
  for (gsize i = 0; i < G_N_ELEMENTS(prefixes); i++) {
    if (g_str_has_prefix(name, prefixes[i]))
      return TRUE;
  }
  return FALSE;
}

/* The xattrs in llistxattr() order: mkfs.erofs writes an inode's inline xattrs in
 * that order (reversed), so two trees that list them differently give different
 * images and must give different digests. */
static gboolean put_xattrs(GChecksum *sum, const char *path, GError **error)
{
  ssize_t len = llistxattr(path, NULL, 0);
  if (len < 0) {
    if (errno == ENOTSUP || errno == ENODATA) {
      put_u32(sum, 0);
      return TRUE;
    }
    return fail_errno(error, errno, "list xattrs of", path);
  }
  if (len > XATTR_CAP) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                "rootfs layer: the xattr names of %s take %zd bytes", path, len);
    return FALSE;
  }
  g_autofree char *list = g_malloc(len + 1);
  len = len > 0 ? llistxattr(path, list, len) : 0;
  if (len < 0)
    return fail_errno(error, errno, "list xattrs of", path);
  list[len] = '\0';
  guint32 count = 0;
  for (ssize_t off = 0; off < len; off += (ssize_t)strlen(list + off) + 1)
    count++;
  put_u32(sum, count);
  g_autofree char *value = g_malloc(XATTR_CAP);
  for (ssize_t off = 0; off < len; off += (ssize_t)strlen(list + off) + 1) {
    const char *name = list + off;
    if (!xattr_supported(name)) {
      g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                  "rootfs layer: %s has xattr %s; EROFS stores only user., trusted., security. "
                  "and POSIX ACL xattrs",
                  path, name);
      return FALSE;
    }
    ssize_t vlen = lgetxattr(path, name, value, XATTR_CAP);
    if (vlen < 0)
      return fail_errno(error, errno, "read an xattr of", path);
    put_str(sum, name);
    put_bytes(sum, value, (gsize)vlen);
  }
  return TRUE;
}

static guint8 type_char(mode_t mode)
{
  switch (mode & S_IFMT) {
  case S_IFDIR:
    return 'd';
  case S_IFREG:
    return 'f';
  case S_IFLNK:
    return 'l';
  case S_IFCHR:
    return 'c';
  case S_IFBLK:
    return 'b';
  case S_IFIFO:
    return 'p';
  case S_IFSOCK:
    return 's';
  default:
    return 0;
  }
}

/* One entry's record; a directory pushes its frame, a regular file with data opens
 * the file for the steps that follow. */
static gboolean visit(RootfsWalk *w, const char *rel, GError **error)
{
  g_autofree char *path = full_path(w, rel, error);
  if (path == NULL)
    return FALSE;
  struct stat st;
  if (lstat(path, &st) != 0)
    return fail_errno(error, errno, "stat", path);
  guint8 type = type_char(st.st_mode);
  if (type == 0) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                "rootfs layer: %s has an unknown file type (mode %o)", path, st.st_mode);
    return FALSE;
  }
  put_str(w->sum, rel);
  /* mkfs.erofs keeps one inode per (st_dev, st_ino) among the non-directories, the
   * first one met in its walk: a later name is a hard link to it. */
  if (type != 'd' && st.st_nlink > 1) {
    InodeKey k = { st.st_dev, st.st_ino };
    const char *first = g_hash_table_lookup(w->seen, &k);
    if (first != NULL) {
      put_u8(w->sum, 'h');
      put_str(w->sum, first);
      return TRUE;
    }
    g_hash_table_insert(w->seen, g_memdup2(&k, sizeof k), g_strdup(rel));
  }
  put_u8(w->sum, type);
  put_u32(w->sum, st.st_mode & 07777);
  put_u32(w->sum, st.st_uid);
  put_u32(w->sum, st.st_gid);
  if (!put_xattrs(w->sum, path, error))
    return FALSE;
  switch (type) {
  case 'd': {
    GPtrArray *names = read_names(path, error);
    if (names == NULL)
      return FALSE;
    if (rel[0] == '\0')
      w->empty = names->len == 0;
    Frame *f = g_new0(Frame, 1);
    f->rel = g_strdup(rel);
    f->names = names;
    g_ptr_array_add(w->stack, f);
    return TRUE;
  }
  case 'l': {
    g_autofree char *target = g_malloc((gsize)st.st_size + 1);
    ssize_t n = readlink(path, target, (gsize)st.st_size + 1);
    if (n < 0)
      return fail_errno(error, errno, "read link", path);
    if ((guint64)n != (guint64)st.st_size) {
      g_set_error(error, FERRY_ERROR, FERRY_ERROR_ABORTED,
                  "rootfs layer: symlink %s changed while it was read", path);
      return FALSE;
    }
    put_bytes(w->sum, target, (gsize)n);
    return TRUE;
  }
  case 'f': {
    put_u64(w->sum, (guint64)st.st_size);
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY);
    if (fd < 0)
      return fail_errno(error, errno, "open", path);
    w->fd = fd;
    w->file_path = g_steal_pointer(&path);
    w->file_size = (guint64)st.st_size;
    w->file_read = 0;
    w->file_sum = g_checksum_new(G_CHECKSUM_SHA256);
    return TRUE;
  }
  default: /* devices, fifos, sockets: mkfs.erofs stores st_rdev for all four */
    put_u32(w->sum, major(st.st_rdev));
    put_u32(w->sum, minor(st.st_rdev));
    return TRUE;
  }
}

/* Read the open file for up to `budget` bytes; FALSE on error. */
static gboolean read_file(RootfsWalk *w, gsize *budget, GError **error)
{
  while (*budget > 0) {
    ssize_t n = read(w->fd, w->buf, MIN(*budget, CHUNK));
    if (n < 0) {
      if (errno == EINTR)
        continue;
      return fail_errno(error, errno, "read", w->file_path);
    }
    if (n == 0) {
      if (w->file_read != w->file_size) {
        g_set_error(error, FERRY_ERROR, FERRY_ERROR_ABORTED,
                    "rootfs layer: %s changed while it was read (%" G_GUINT64_FORMAT
                    " bytes, stat said %" G_GUINT64_FORMAT ")",
                    w->file_path, w->file_read, w->file_size);
        return FALSE;
      }
      guint8 digest[32];
      gsize dlen = sizeof digest;
      g_checksum_get_digest(w->file_sum, digest, &dlen);
      put(w->sum, digest, dlen);
      g_clear_pointer(&w->file_sum, g_checksum_free);
      g_clear_pointer(&w->file_path, g_free);
      close(w->fd);
      w->fd = -1;
      return TRUE;
    }
    w->file_read += (guint64)n;
    if (w->file_read > w->file_size) {
      g_set_error(error, FERRY_ERROR, FERRY_ERROR_ABORTED,
                  "rootfs layer: %s grew while it was read", w->file_path);
      return FALSE;
    }
    g_checksum_update(w->file_sum, w->buf, n);
    *budget -= (gsize)n;
  }
  return TRUE;
}

RootfsWalk *rootfs_walk_new(const char *dir, GError **error)
{
  struct stat st;
  if (lstat(dir, &st) != 0) {
    fail_errno(error, errno, "stat", dir);
    return NULL;
  }
  if (!S_ISDIR(st.st_mode)) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                "rootfs layer: %s is not a directory", dir);
    return NULL;
  }
  RootfsWalk *w = g_new0(RootfsWalk, 1);
  w->root = g_strdup(dir);
  w->sum = g_checksum_new(G_CHECKSUM_SHA256);
  w->stack = g_ptr_array_new_with_free_func(frame_free);
  w->seen = g_hash_table_new_full(inode_hash, inode_equal, g_free, g_free);
  w->fd = -1;
  w->buf = g_malloc(CHUNK);
  put_str(w->sum, DIGEST_MAGIC);
  return w;
}

gboolean rootfs_walk_step(RootfsWalk *w, gsize budget, gboolean *done, GError **error)
{
  *done = w->digest != NULL;
  if (*done)
    return TRUE;
  if (!w->started) {
    w->started = TRUE;
    if (!visit(w, "", error))
      return FALSE;
    budget = budget > ENTRY_COST ? budget - ENTRY_COST : 0;
  }
  while (budget > 0) {
    if (w->fd >= 0) {
      if (!read_file(w, &budget, error))
        return FALSE;
      continue;
    }
    if (w->stack->len == 0) {
      w->digest = digest_string(w->sum);
      *done = TRUE;
      return TRUE;
    }
    Frame *top = w->stack->pdata[w->stack->len - 1];
    if (top->next >= top->names->len) {
      g_ptr_array_remove_index(w->stack, w->stack->len - 1);
      continue;
    }
    const char *name = top->names->pdata[top->next++];
    g_autofree char *rel =
        top->rel[0] == '\0' ? g_strdup(name) : g_strconcat(top->rel, "/", name, NULL);
    if (!visit(w, rel, error))
      return FALSE;
    budget = budget > ENTRY_COST ? budget - ENTRY_COST : 0;
  }
  return TRUE;
}

const char *rootfs_walk_digest(RootfsWalk *w)
{
  return w->digest;
}

gboolean rootfs_walk_is_empty(RootfsWalk *w)
{
  return w->empty;
}

void rootfs_walk_free(RootfsWalk *w)
{
  if (w == NULL)
    return;
  if (w->fd >= 0)
    close(w->fd);
  g_free(w->file_path);
  if (w->file_sum != NULL)
    g_checksum_free(w->file_sum);
  g_checksum_free(w->sum);
  g_ptr_array_unref(w->stack);
  g_hash_table_unref(w->seen);
  g_free(w->root);
  g_free(w->buf);
  g_free(w->digest);
  g_free(w);
}

char *ferry_rootfs_content_digest(const char *dir, GError **error)
{
  g_autoptr(RootfsWalk) w = rootfs_walk_new(dir, error);
  if (w == NULL)
    return NULL;
  gboolean done = FALSE;
  while (!done) {
    if (!rootfs_walk_step(w, G_MAXSIZE, &done, error))
      return NULL;
  }
  return g_strdup(w->digest);
}

/* ------------------------------------------------------------ file digest -- */

struct RootfsFileHash {
  int fd;
  char *path;
  GChecksum *sum;
  guint64 size;
  guint8 *buf; /* CHUNK bytes */
  char *digest;
};

RootfsFileHash *rootfs_file_hash_new(const char *path, GError **error)
{
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) {
    ferry_error_set_errno(error, errno, "rootfs image: open %s", path);
    return NULL;
  }
  RootfsFileHash *h = g_new0(RootfsFileHash, 1);
  h->fd = fd;
  h->path = g_strdup(path);
  h->sum = g_checksum_new(G_CHECKSUM_SHA256);
  h->buf = g_malloc(CHUNK);
  return h;
}

gboolean rootfs_file_hash_step(RootfsFileHash *h, gsize budget, gboolean *done, GError **error)
{
  *done = h->digest != NULL;
  while (!*done && budget > 0) {
    ssize_t n = read(h->fd, h->buf, MIN(budget, CHUNK));
    if (n < 0) {
      if (errno == EINTR)
        continue;
      return ferry_error_set_errno(error, errno, "rootfs image: read %s", h->path);
    }
    if (n == 0) {
      h->digest = digest_string(h->sum);
      *done = TRUE;
      break;
    }
    g_checksum_update(h->sum, h->buf, n);
    h->size += (guint64)n;
    budget -= (gsize)n;
  }
  return TRUE;
}

const char *rootfs_file_hash_digest(RootfsFileHash *h)
{
  return h->digest;
}

guint64 rootfs_file_hash_size(RootfsFileHash *h)
{
  return h->size;
}

int rootfs_file_hash_fd(RootfsFileHash *h)
{
  return h->fd;
}

void rootfs_file_hash_free(RootfsFileHash *h)
{
  if (h == NULL)
    return;
  close(h->fd);
  g_free(h->path);
  g_checksum_free(h->sum);
  g_free(h->buf);
  g_free(h->digest);
  g_free(h);
}
