/*
 * Container root file systems as read-only block images (docs/rootfs.md).
 *
 * A VM with a mounted 9p share cannot be live-migrated, so a container's root reaches
 * the guest as EROFS images on virtio-scsi disks, one image per layer, the guest
 * stacking them with overlayfs under a writable tmpfs upper. This module is the host
 * side: it turns what containerd hands the shim (the snapshotter's mounts, or the
 * bundle's root directory for `ctr run --rootfs`) into an ordered list of layer
 * directories (a pure parser), and builds each layer into an image with mkfs.erofs,
 * reproducibly (equal trees give byte-identical images) and cached by content.
 */
#pragma once

#include <gio/gio.h>

G_BEGIN_DECLS

/* ------------------------------------------------------------------ layers -- */

/* One containerd.types.Mount as the shim receives it in CreateTaskRequest.rootfs. All
 * strings are borrowed; `options` has `n_options` entries. */
typedef struct {
  const char *type;
  const char *source;
  const char *const *options;
  gsize n_options;
} FerryRootfsMount;

/* The layer directories of one container root. */
typedef struct {
  /* Read-only layers in overlay order: layers[0] is the TOP layer (overlayfs's
   * lowerdir= lists the top first), layers[n_layers - 1] the base. NULL-terminated. */
  char **layers;
  guint n_layers;
  /* The snapshot's writable directory (overlay upperdir=, or the source of a writable
   * bind mount), NULL when the snapshot is read-only. It may already hold files (a
   * previous run); the builder makes it one more layer above layers[0]. */
  char *upper;
  char *work;         /* overlay workdir=, NULL if none */
  gboolean userxattr; /* overlay's userxattr: whiteouts use user.overlay.* xattrs */
} FerryRootfsLayers;

/* At most this many layers: overlayfs's own limit (the kernel's OVL_MAX_STACK). */
#define FERRY_ROOTFS_MAX_LAYERS 500

/*
 * The layers of containerd's rootfs mounts. Pure: no I/O, paths are not checked for
 * existence. Accepted: no mounts at all is INVALID_ARGUMENT (a bundle without mounts
 * takes ferry_rootfs_layers_from_directory()); one "overlay" mount with lowerdir= (and
 * optionally upperdir= with workdir=; backslash escapes a ':' or '\' in a path, as in
 * overlayfs); one "bind" mount whose options hold "bind" or "rbind" (with "ro": a
 * single read-only layer; else the source is the writable upper over no layers).
 * Options overlayfs accepts that do not change what the layers contain (index=,
 * volatile, redirect_dir=off, ...) are ignored; "metacopy=on" and more than one mount
 * are refused. Every error is FERRY_ERROR_INVALID_ARGUMENT with what was wrong. The
 * result is newly allocated.
 */
FerryRootfsLayers *ferry_rootfs_layers_from_mounts(const FerryRootfsMount *mounts, gsize n_mounts,
                                                   GError **error);

/* One read-only layer, `dir` (an absolute path; copied), for `ctr run --rootfs`: the
 * bundle's root.path. Pure; INVALID_ARGUMENT for an empty or relative path. */
FerryRootfsLayers *ferry_rootfs_layers_from_directory(const char *dir, GError **error);

void ferry_rootfs_layers_free(FerryRootfsLayers *layers);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FerryRootfsLayers, ferry_rootfs_layers_free)

/* ---------------------------------------------------------- content digest -- */

/*
 * The content digest of the tree at `dir`, "sha256:<64 hex>" (newly allocated): what
 * an EROFS image built from it contains (docs/rootfs.md, digest scheme). Blocks while
 * it reads every file; the builder computes the same digest in steps on its main loop.
 * Errors: NOT_FOUND for a missing dir, PERMISSION_DENIED for an unreadable file or
 * directory, INVALID_ARGUMENT for what EROFS cannot hold (an xattr namespace other than
 * user., trusted., security. and the POSIX ACLs; a path longer than PATH_MAX).
 */
char *ferry_rootfs_content_digest(const char *dir, GError **error);

/* ----------------------------------------------------------------- builder -- */

typedef struct FerryRootfsBuilder FerryRootfsBuilder;

typedef struct {
  /* Required: where images are kept, <cache_dir>/<cache key>.erofs. Created (0700)
   * when missing. Several builders, also in several processes, may share it. */
  const char *cache_dir;
  /* NULL: "mkfs.erofs", found on PATH. */
  const char *mkfs_erofs;
} FerryRootfsBuilderOptions;

/* One built (or cached) image. */
typedef struct {
  char *path;          /* <cache_dir>/<cache_key>.erofs */
  char *image_sha256;  /* "sha256:<hex>" of the image file's bytes */
  char *content;       /* "sha256:<hex>", ferry_rootfs_content_digest() of the source */
  char *cache_key;     /* 64 hex: content digest + mkfs.erofs version + options */
  char *source;        /* the layer directory it was built from */
  guint64 size;        /* bytes */
  gboolean from_upper; /* built from FerryRootfsLayers.upper */
  gboolean built;      /* mkfs.erofs ran for it in this build (FALSE: a cache hit) */
} FerryRootfsImage;

/* The images of one root, top first: the upper's image (when the upper holds
 * anything) then one per FerryRootfsLayers.layers entry, in that order. */
typedef struct {
  FerryRootfsImage *images;
  guint n_images;
  char *mkfs_version; /* what mkfs.erofs said it is, "mkfs.erofs 1.5" */
} FerryRootfsImages;

void ferry_rootfs_images_free(FerryRootfsImages *images);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FerryRootfsImages, ferry_rootfs_images_free)

/* A builder whose callbacks run on the thread-default main context of this call.
 * Options are copied. INVALID_ARGUMENT without a cache_dir; the cache directory is
 * only created (and found unwritable) when a build needs it. */
FerryRootfsBuilder *ferry_rootfs_builder_new(const FerryRootfsBuilderOptions *options,
                                             GError **error);

/* Kills every mkfs.erofs the builder runs (SIGKILL by pid, then reaps it), removes
 * their temporary files and drops pending builds: their callbacks never run. */
void ferry_rootfs_builder_free(FerryRootfsBuilder *builder);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FerryRootfsBuilder, ferry_rootfs_builder_free)

/* `images` is owned by the callback (free it with ferry_rootfs_images_free); NULL iff
 * `error` is set. */
typedef void (*FerryRootfsBuildFunc)(FerryRootfsBuilder *builder, FerryRootfsImages *images,
                                     const GError *error, gpointer user_data);

/*
 * Build (or find in the cache) the images of `layers` (copied), one after the other;
 * `done` runs once from the builder's main context, never inside this call. Does not
 * block: trees are hashed in bounded steps from idle sources, mkfs.erofs runs as a
 * child process. An image is written to a temporary file in the cache and renamed into
 * place, so a concurrent build of the same key never sees a partial image. A cache hit
 * does not run mkfs.erofs. Errors: NOT_FOUND (a missing layer directory, mkfs.erofs
 * not found), PERMISSION_DENIED (an unreadable file, a cache directory that cannot be
 * written), INVALID_ARGUMENT (what EROFS cannot hold), INTERNAL (mkfs.erofs failed;
 * the message carries its stderr), CANCELLED when `cancellable` (may be NULL) fires:
 * a running mkfs.erofs is killed and its temporary file removed.
 */
void ferry_rootfs_builder_build(FerryRootfsBuilder *builder, const FerryRootfsLayers *layers,
                                GCancellable *cancellable, FerryRootfsBuildFunc done,
                                gpointer user_data);

/* The pid of a mkfs.erofs image build running now (the oldest build's), else 0. */
GPid ferry_rootfs_builder_get_mkfs_pid(FerryRootfsBuilder *builder);

/* How many images mkfs.erofs has built for this builder so far (cache hits and the
 * version probe do not count). */
guint ferry_rootfs_builder_get_mkfs_runs(FerryRootfsBuilder *builder);

G_END_DECLS
