/* lib/rootfs private: the content digest of a tree and the digest of a file, both
 * computed in bounded steps so that the builder can run them from idle sources. */
#pragma once

#include <glib.h>

/* The walk over one layer directory (docs/rootfs.md, digest scheme). */
typedef struct RootfsWalk RootfsWalk;

/* Checks that `dir` is a directory; NOT_FOUND / INVALID_ARGUMENT otherwise. */
RootfsWalk *rootfs_walk_new(const char *dir, GError **error);
/* Do about `budget` bytes' worth of work (an entry counts 4 KiB, file data its size).
 * Sets *done once the digest is complete. */
gboolean rootfs_walk_step(RootfsWalk *walk, gsize budget, gboolean *done, GError **error);
/* After *done: "sha256:<hex>" (borrowed) and whether the root had no entries. */
const char *rootfs_walk_digest(RootfsWalk *walk);
gboolean rootfs_walk_is_empty(RootfsWalk *walk);
void rootfs_walk_free(RootfsWalk *walk);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(RootfsWalk, rootfs_walk_free)

/* The sha256 of one file's bytes. */
typedef struct RootfsFileHash RootfsFileHash;

RootfsFileHash *rootfs_file_hash_new(const char *path, GError **error);
gboolean rootfs_file_hash_step(RootfsFileHash *hash, gsize budget, gboolean *done, GError **error);
/* After *done: "sha256:<hex>" (borrowed) and the number of bytes read. */
const char *rootfs_file_hash_digest(RootfsFileHash *hash);
guint64 rootfs_file_hash_size(RootfsFileHash *hash);
/* The open file (read-only), for an fsync before the file is renamed. */
int rootfs_file_hash_fd(RootfsFileHash *hash);
void rootfs_file_hash_free(RootfsFileHash *hash);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(RootfsFileHash, rootfs_file_hash_free)
