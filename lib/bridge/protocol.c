/* GCS bridge protocol v4: frames, bodies, HRESULTs. Pure: no I/O. */
#include "ferry/bridge-protocol.h"

#include <string.h>

#include "ferry/error.h"
#include "ferry/json.h"

/* ------------------------------------------------------------- HRESULTs -- */

static const struct {
  guint32 hresult;
  int status;
} hresult_table[] = {
  { FERRY_HR_E_NOTIMPL, FERRY_ERROR_UNIMPLEMENTED },
  { FERRY_HR_UNKNOWN_MESSAGE, FERRY_ERROR_UNIMPLEMENTED },
  { FERRY_HR_E_INVALIDARG, FERRY_ERROR_INVALID_ARGUMENT },
  { FERRY_HR_INVALID_JSON, FERRY_ERROR_INVALID_ARGUMENT },
  { FERRY_HR_NOT_FOUND, FERRY_ERROR_NOT_FOUND },
  { FERRY_HR_SYSTEM_NOT_FOUND, FERRY_ERROR_NOT_FOUND },
  { FERRY_HR_ALREADY_EXISTS, FERRY_ERROR_ALREADY_EXISTS },
  { FERRY_HR_TIMEOUT, FERRY_ERROR_DEADLINE_EXCEEDED },
  { FERRY_HR_INVALID_STATE, FERRY_ERROR_FAILED_PRECONDITION },
  { FERRY_HR_ALREADY_STOPPED, FERRY_ERROR_FAILED_PRECONDITION },
  { FERRY_HR_UNSUPPORTED_PROTOCOL, FERRY_ERROR_FAILED_PRECONDITION },
  { FERRY_HR_E_FAIL, FERRY_ERROR_UNKNOWN },
};

int ferry_bridge_hresult_to_status(guint32 hresult)
{
  for (gsize i = 0; i < G_N_ELEMENTS(hresult_table); i++)
    if (hresult_table[i].hresult == hresult)
      return hresult_table[i].status;
  return FERRY_ERROR_UNKNOWN;
}

static int bridge_error_to_status(int code)
{
  return ferry_bridge_hresult_to_status((guint32)code);
}

static int bridge_closed_to_status(int code)
{
  return FERRY_ERROR_UNAVAILABLE;
}

FERRY_DEFINE_ERROR_DOMAIN(ferry_bridge_closed_error_quark, "ferry-bridge-closed-error-quark",
                          bridge_closed_to_status)

FERRY_DEFINE_ERROR_DOMAIN(ferry_bridge_error_quark, "ferry-bridge-error-quark",
                          bridge_error_to_status)

guint32 ferry_bridge_error_hresult(const GError *error)
{
  if (error == NULL || error->domain != FERRY_BRIDGE_ERROR)
    return 0;
  return (guint32)error->code;
}

guint32 ferry_bridge_hresult_from_error(const GError *error)
{
  if (error == NULL)
    return FERRY_HR_OK;
  guint32 hr = ferry_bridge_error_hresult(error);
  if (hr != 0)
    return hr;
  switch (ferry_error_to_status_code(error)) {
  case FERRY_ERROR_NOT_FOUND:
    return FERRY_HR_NOT_FOUND;
  case FERRY_ERROR_ALREADY_EXISTS:
    return FERRY_HR_ALREADY_EXISTS;
  case FERRY_ERROR_INVALID_ARGUMENT:
    return FERRY_HR_E_INVALIDARG;
  case FERRY_ERROR_UNIMPLEMENTED:
    return FERRY_HR_E_NOTIMPL;
  case FERRY_ERROR_DEADLINE_EXCEEDED:
    return FERRY_HR_TIMEOUT;
  case FERRY_ERROR_FAILED_PRECONDITION:
    return FERRY_HR_INVALID_STATE;
  default:
    return FERRY_HR_E_FAIL;
  }
}

static const struct {
  guint32 rpc;
  const char *name;
} rpc_names[] = {
  { FERRY_BRIDGE_RPC_CREATE, "Create" },
  { FERRY_BRIDGE_RPC_START, "Start" },
  { FERRY_BRIDGE_RPC_SHUTDOWN_GRACEFUL, "ShutdownGraceful" },
  { FERRY_BRIDGE_RPC_SHUTDOWN_FORCED, "ShutdownForced" },
  { FERRY_BRIDGE_RPC_EXECUTE_PROCESS, "ExecuteProcess" },
  { FERRY_BRIDGE_RPC_WAIT_FOR_PROCESS, "WaitForProcess" },
  { FERRY_BRIDGE_RPC_SIGNAL_PROCESS, "SignalProcess" },
  { FERRY_BRIDGE_RPC_RESIZE_CONSOLE, "ResizeConsole" },
  { FERRY_BRIDGE_RPC_GET_PROPERTIES, "GetProperties" },
  { FERRY_BRIDGE_RPC_MODIFY_SETTINGS, "ModifySettings" },
  { FERRY_BRIDGE_RPC_NEGOTIATE_PROTOCOL, "NegotiateProtocol" },
  { FERRY_BRIDGE_RPC_DUMP_STACKS, "DumpStacks" },
  { FERRY_BRIDGE_RPC_DELETE_CONTAINER_STATE, "DeleteContainerState" },
  { FERRY_BRIDGE_RPC_UPDATE_CONTAINER, "UpdateContainer" },
  { FERRY_BRIDGE_RPC_LIFECYCLE_NOTIFICATION, "LifecycleNotification" },
  { FERRY_BRIDGE_RPC_MODIFY_SERVICE_SETTINGS, "ModifyServiceSettings" },
};

const char *ferry_bridge_message_name(guint32 type)
{
  if (type == FERRY_BRIDGE_NOTIFY_CONTAINER)
    return "Container notification";
  guint32 kind = type & FERRY_BRIDGE_TYPE_MASK;
  if (kind != FERRY_BRIDGE_TYPE_REQUEST && kind != FERRY_BRIDGE_TYPE_RESPONSE)
    return NULL;
  guint32 rpc = type & ~FERRY_BRIDGE_TYPE_MASK;
  for (gsize i = 0; i < G_N_ELEMENTS(rpc_names); i++)
    if (rpc_names[i].rpc == rpc)
      return rpc_names[i].name;
  return NULL;
}

/* --------------------------------------------------------------- frames -- */

void ferry_bridge_header_encode(const FerryBridgeHeader *h, guint8 out[FERRY_BRIDGE_HEADER_SIZE])
{
  guint32 type = GUINT32_TO_LE(h->type);
  guint32 size = GUINT32_TO_LE(h->size);
  guint64 id = GUINT64_TO_LE(h->id);
  memcpy(out, &type, 4);
  memcpy(out + 4, &size, 4);
  memcpy(out + 8, &id, 8);
}

void ferry_bridge_header_decode(const guint8 in[FERRY_BRIDGE_HEADER_SIZE], FerryBridgeHeader *h)
{
  guint32 type, size;
  guint64 id;
  memcpy(&type, in, 4);
  memcpy(&size, in + 4, 4);
  memcpy(&id, in + 8, 8);
  h->type = GUINT32_FROM_LE(type);
  h->size = GUINT32_FROM_LE(size);
  h->id = GUINT64_FROM_LE(id);
}

struct FerryBridgeParser {
  GByteArray *buf;
  gsize start; /* bytes before it were handed out */
  gsize max_message;
  gboolean failed;
};

FerryBridgeParser *ferry_bridge_parser_new(gsize max_message)
{
  FerryBridgeParser *p = g_new0(FerryBridgeParser, 1);
  p->buf = g_byte_array_new();
  p->max_message = max_message;
  return p;
}

void ferry_bridge_parser_free(FerryBridgeParser *p)
{
  if (p == NULL)
    return;
  g_byte_array_unref(p->buf);
  g_free(p);
}

void ferry_bridge_parser_reset(FerryBridgeParser *p)
{
  g_byte_array_set_size(p->buf, 0);
  p->start = 0;
  p->failed = FALSE;
}

void ferry_bridge_parser_feed(FerryBridgeParser *p, const guint8 *data, gsize len)
{
  if (p->failed)
    return;
  if (p->start > 0) {
    g_byte_array_remove_range(p->buf, 0, (guint)p->start);
    p->start = 0;
  }
  g_byte_array_append(p->buf, data, (guint)len);
}

FerryBridgeParseResult ferry_bridge_parser_next(FerryBridgeParser *p, FerryBridgeHeader *header,
                                                const guint8 **body, GError **error)
{
  if (p->failed) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_DATA_LOSS,
                "bridge stream is unusable after an invalid frame");
    return FERRY_BRIDGE_PARSE_ERROR;
  }
  gsize avail = p->buf->len - p->start;
  if (avail < FERRY_BRIDGE_HEADER_SIZE)
    return FERRY_BRIDGE_PARSE_NEED_MORE;
  const guint8 *frame = p->buf->data + p->start;
  ferry_bridge_header_decode(frame, header);
  if (header->size < FERRY_BRIDGE_HEADER_SIZE || header->size > p->max_message) {
    p->failed = TRUE;
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                "bridge message 0x%08x id %" G_GUINT64_FORMAT
                " has size %u (must be %u to %" G_GSIZE_FORMAT ")",
                header->type, header->id, header->size, FERRY_BRIDGE_HEADER_SIZE, p->max_message);
    return FERRY_BRIDGE_PARSE_ERROR;
  }
  if (avail < header->size)
    return FERRY_BRIDGE_PARSE_NEED_MORE;
  *body = frame + FERRY_BRIDGE_HEADER_SIZE;
  p->start += header->size;
  return FERRY_BRIDGE_PARSE_FRAME;
}

GBytes *ferry_bridge_message_encode(guint32 type, guint64 id, const json_t *body,
                                    gboolean trailing_newline, gsize max_message, GError **error)
{
  g_autofree char *json = ferry_json_dump(body);
  gsize body_len = strlen(json) + (trailing_newline ? 1 : 0);
  gsize size = FERRY_BRIDGE_HEADER_SIZE + body_len;
  if (size > max_message || size > G_MAXUINT32) {
    g_set_error(
        error, FERRY_ERROR, FERRY_ERROR_RESOURCE_EXHAUSTED,
        "bridge message %s of %" G_GSIZE_FORMAT " bytes is over the limit of %" G_GSIZE_FORMAT,
        ferry_bridge_message_name(type) ? ferry_bridge_message_name(type) : "?", size, max_message);
    return NULL;
  }
  guint8 *out = g_malloc(size);
  FerryBridgeHeader h = { type, (guint32)size, id };
  ferry_bridge_header_encode(&h, out);
  memcpy(out + FERRY_BRIDGE_HEADER_SIZE, json, strlen(json));
  if (trailing_newline)
    out[size - 1] = '\n';
  return g_bytes_new_take(out, size);
}

/* --------------------------------------------------------------- bodies -- */

json_t *ferry_bridge_body_parse(const guint8 *body, gsize len, GError **error)
{
  return ferry_json_parse_object("bridge message body", body, len, error);
}

json_t *ferry_bridge_request_base(const char *container_id, const char *activity_id)
{
  return json_pack("{s:s, s:s}", "ContainerId", container_id != NULL ? container_id : "",
                   "ActivityId", activity_id != NULL ? activity_id : FERRY_ZERO_ACTIVITY_ID);
}

json_t *ferry_bridge_response_base(const char *activity_id, guint32 hresult, const char *message)
{
  json_t *r = json_pack("{s:I, s:s}", "Result", (json_int_t)(gint32)hresult, "ActivityId",
                        activity_id != NULL ? activity_id : FERRY_ZERO_ACTIVITY_ID);
  if (hresult != FERRY_HR_OK) {
    const char *m = message != NULL ? message : "";
    json_object_set_new(r, "ErrorMessage", json_string(m));
    json_object_set_new(r, "ErrorRecords",
                        json_pack("[{s:I, s:s, s:s, s:s, s:I}]", "Result",
                                  (json_int_t)(gint32)hresult, "Message", m, "ModuleName", "gcs",
                                  "FileName", "", "Line", (json_int_t)0xffffffffu));
  }
  return r;
}

gboolean ferry_bridge_response_check(json_t *body, const char *what, GError **error)
{
  gint64 result;
  g_autoptr(GError) local = NULL;
  if (!ferry_json_get_int64(body, "Result", TRUE, &result, &local) || result < G_MININT32 ||
      result > G_MAXUINT32) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "%s: bad response: %s", what,
                local != NULL ? local->message : "Result out of range");
    return FALSE;
  }
  if (result == 0)
    return TRUE;
  const char *message = NULL;
  if (!ferry_json_get_string(body, "ErrorMessage", FALSE, &message, NULL) || message == NULL)
    message = "";
  guint32 hr = (guint32)result;
  g_set_error(error, FERRY_BRIDGE_ERROR, (gint)hr, "%s: %s%sHRESULT 0x%08x", what, message,
              *message ? " " : "", hr);
  return FALSE;
}

gboolean ferry_bridge_get_embedded(json_t *obj, const char *key, gboolean required, json_t **out,
                                   GError **error)
{
  const char *text;
  *out = NULL;
  if (!ferry_json_get_string(obj, key, required, &text, error))
    return FALSE;
  if (text == NULL)
    return TRUE;
  g_autofree char *what = g_strdup_printf("field %s", key);
  json_error_t jerr;
  json_t *v = json_loads(text, JSON_REJECT_DUPLICATES, &jerr);
  if (v == NULL) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "%s: invalid JSON: %s", what,
                jerr.text);
    return FALSE;
  }
  *out = v;
  return TRUE;
}

void ferry_bridge_set_embedded(json_t *obj, const char *key, json_t *value)
{
  g_autofree char *text = ferry_json_dump(value);
  json_decref(value);
  json_object_set_new(obj, key, json_string(text));
}
