/*
 * The destination's store of layer images that travelled from a migration's source
 * (docs/migrate.md): files named by the SHA-256 of their bytes, `<dir>/<hex>.erofs`,
 * what a binding Create's `io.ferry.migration.layer-dir` names. An image arrives in
 * chunks, in order, hashed as it comes, and becomes visible only when its bytes are the
 * digest it was sent as: a cached image is never sent twice, a wrong one never used.
 * Everything a peer sends is bounded (the size of one image, the uploads at once).
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

typedef struct FerryLayerStore FerryLayerStore;

/* How many images may be half-sent at once. */
#define FERRY_LAYER_STORE_MAX_UPLOADS 8

/* The store in `dir` (created 0700 if missing); an image may be at most `max_bytes`. */
FerryLayerStore *ferry_layer_store_new(const char *dir, guint64 max_bytes, GError **error);
/* Stops every upload (their partial files go); the images stay. */
void ferry_layer_store_free(FerryLayerStore *store);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FerryLayerStore, ferry_layer_store_free)

const char *ferry_layer_store_dir(FerryLayerStore *store);

/* The complete image of `digest` ("sha256:<64 lowercase hex>"): its path, or NULL. */
char *ferry_layer_store_path(FerryLayerStore *store, const char *digest);

/*
 * The next chunk of `digest`'s image: `offset` must be what arrived of it so far (0
 * starts it; a new start drops what came before). With `last` the image is complete:
 * it is kept if its SHA-256 is `digest`, else dropped (DATA_LOSS naming both). Refused,
 * with the upload dropped: a malformed digest (INVALID_ARGUMENT), an offset out of
 * order (INVALID_ARGUMENT), more than max_bytes (RESOURCE_EXHAUSTED), too many uploads
 * at once (RESOURCE_EXHAUSTED), an image the store has already (ALREADY_EXISTS).
 */
gboolean ferry_layer_store_put(FerryLayerStore *store, const char *digest, guint64 offset,
                               const guint8 *data, gsize len, gboolean last, GError **error);

/* "sha256:<64 lowercase hex>" -> the hex (borrowed from `digest`), or NULL: the one
 * check before a digest names a file. */
const char *ferry_layer_digest_hex(const char *digest);

/* Drop an upload in progress (nothing if none). */
void ferry_layer_store_abort(FerryLayerStore *store, const char *digest);

G_END_DECLS
