/* Typed access to JSON objects from a peer, with errors that name the field. */
#pragma once

#include <glib.h>
#include <jansson.h>

G_BEGIN_DECLS

G_DEFINE_AUTOPTR_CLEANUP_FUNC(json_t, json_decref)

/*
 * Each getter reads `key` of `obj`. A missing key (or JSON null) gives the default
 * and TRUE when `required` is FALSE; a present key of the wrong type or out of range
 * is an error (FERRY_ERROR_INVALID_ARGUMENT, "field <key>: ..."). Strings are borrowed
 * from obj.
 */
gboolean ferry_json_get_string(json_t *obj, const char *key, gboolean required, const char **out,
                               GError **error);
gboolean ferry_json_get_uint32(json_t *obj, const char *key, gboolean required, guint32 *out,
                               GError **error);
gboolean ferry_json_get_int64(json_t *obj, const char *key, gboolean required, gint64 *out,
                              GError **error);
gboolean ferry_json_get_bool(json_t *obj, const char *key, gboolean required, gboolean *out,
                             GError **error);
/* An object member (borrowed); NULL with *out when absent and not required. */
gboolean ferry_json_get_object(json_t *obj, const char *key, gboolean required, json_t **out,
                               GError **error);

/* Parse `len` bytes as one JSON object (trailing whitespace allowed). New reference, or
 * NULL with FERRY_ERROR_INVALID_ARGUMENT naming `what`. */
json_t *ferry_json_parse_object(const char *what, const void *data, gsize len, GError **error);

/* Compact serialization; the caller frees it. */
char *ferry_json_dump(const json_t *value);

G_END_DECLS
