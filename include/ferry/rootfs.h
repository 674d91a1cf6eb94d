/*
 * Container root file systems as read-only block images.
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

G_END_DECLS
