/* Typed JSON access with errors that name the field. */
#include "ferry/json.h"

#include <stdlib.h>

#include "ferry/error.h"

static gboolean fail(GError **error, const char *key, const char *what)
{
  g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "field %s: %s", key, what);
  return FALSE;
}

/* The member, or NULL when absent/null; FALSE when required and absent. */
static gboolean member(json_t *obj, const char *key, gboolean required, json_t **out,
                       GError **error)
{
  json_t *v = json_is_object(obj) ? json_object_get(obj, key) : NULL;
  if (v == NULL || json_is_null(v)) {
    *out = NULL;
    if (required)
      return fail(error, key, "missing");
    return TRUE;
  }
  *out = v;
  return TRUE;
}

gboolean ferry_json_get_string(json_t *obj, const char *key, gboolean required, const char **out,
                               GError **error)
{
  json_t *v;
  if (!member(obj, key, required, &v, error))
    return FALSE;
  if (v == NULL) {
    *out = NULL;
    return TRUE;
  }
  if (!json_is_string(v))
    return fail(error, key, "not a string");
  *out = json_string_value(v);
  return TRUE;
}

static gboolean get_integer(json_t *obj, const char *key, gboolean required, json_int_t min,
                            json_int_t max, json_int_t *out, GError **error)
{
  json_t *v;
  *out = 0;
  if (!member(obj, key, required, &v, error))
    return FALSE;
  if (v == NULL)
    return TRUE;
  if (!json_is_integer(v))
    return fail(error, key, "not an integer");
  json_int_t n = json_integer_value(v);
  if (n < min || n > max)
    return fail(error, key, "out of range");
  *out = n;
  return TRUE;
}

gboolean ferry_json_get_uint32(json_t *obj, const char *key, gboolean required, guint32 *out,
                               GError **error)
{
  json_int_t n;
  if (!get_integer(obj, key, required, 0, G_MAXUINT32, &n, error))
    return FALSE;
  *out = (guint32)n;
  return TRUE;
}

gboolean ferry_json_get_int64(json_t *obj, const char *key, gboolean required, gint64 *out,
                              GError **error)
{
  json_int_t n;
  if (!get_integer(obj, key, required, G_MININT64, G_MAXINT64, &n, error))
    return FALSE;
  *out = n;
  return TRUE;
}

gboolean ferry_json_get_bool(json_t *obj, const char *key, gboolean required, gboolean *out,
                             GError **error)
{
  json_t *v;
  *out = FALSE;
  if (!member(obj, key, required, &v, error))
    return FALSE;
  if (v == NULL)
    return TRUE;
  if (!json_is_boolean(v))
    return fail(error, key, "not a boolean");
  *out = json_is_true(v);
  return TRUE;
}

gboolean ferry_json_get_object(json_t *obj, const char *key, gboolean required, json_t **out,
                               GError **error)
{
  json_t *v;
  if (!member(obj, key, required, &v, error))
    return FALSE;
  if (v != NULL && !json_is_object(v))
    return fail(error, key, "not an object");
  *out = v;
  return TRUE;
}

json_t *ferry_json_parse_object(const char *what, const void *data, gsize len, GError **error)
{
  json_error_t jerr;
  json_t *v = json_loadb(data, len, JSON_REJECT_DUPLICATES, &jerr);
  if (v == NULL) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "%s: invalid JSON: %s", what,
                jerr.text);
    return NULL;
  }
  if (!json_is_object(v)) {
    json_decref(v);
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "%s: not a JSON object", what);
    return NULL;
  }
  return v;
}

char *ferry_json_dump(const json_t *value)
{
  char *s = json_dumps(value, JSON_COMPACT | JSON_ENCODE_ANY);
  /* jansson allocates with malloc; hand out a GLib string. */
  char *out = g_strdup(s != NULL ? s : "null");
  free(s);
  return out;
}
