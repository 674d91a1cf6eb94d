/*
 * Fuzz target: the GCS bridge frame parser and body decoders on arbitrary bytes, as
 * the host reads the guest's messages and the guest reads the host's. The first byte
 * chooses how the rest is split into feeds and which side's size limit applies.
 */
#include <stdint.h>
#include <string.h>

#include "ferry/bridge-protocol.h"
#include "ferry/json.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void decode_body(const FerryBridgeHeader *h, const guint8 *body)
{
  json_t *j = ferry_bridge_body_parse(body, h->size - FERRY_BRIDGE_HEADER_SIZE, NULL);
  if (j == NULL)
    return;
  (void)ferry_bridge_message_name(h->type);
  /* What the host reads from answers and notifications. */
  GError *error = NULL;
  if (!ferry_bridge_response_check(j, "fuzz", &error))
    g_clear_error(&error);
  const char *s;
  guint32 u;
  gint64 i;
  gboolean b;
  json_t *obj;
  ferry_json_get_string(j, "ContainerId", FALSE, &s, NULL);
  ferry_json_get_string(j, "Type", FALSE, &s, NULL);
  ferry_json_get_uint32(j, "ProcessId", FALSE, &u, NULL);
  ferry_json_get_uint32(j, "ExitCode", FALSE, &u, NULL);
  ferry_json_get_uint32(j, "Version", FALSE, &u, NULL);
  ferry_json_get_int64(j, "Result", FALSE, &i, NULL);
  ferry_json_get_bool(j, "CreateStdInPipe", FALSE, &b, NULL);
  ferry_json_get_object(j, "Capabilities", FALSE, &obj, NULL);
  /* What the guest reads from requests: JSON inside strings. */
  static const char *const embedded[] = { "ContainerConfig", "ProcessParameters", "Query",
                                          "Properties", "ResultInfo" };
  json_t *settings = NULL;
  ferry_json_get_object(j, "Settings", FALSE, &settings, NULL);
  for (gsize k = 0; k < G_N_ELEMENTS(embedded); k++) {
    json_t *e = NULL;
    if (ferry_bridge_get_embedded(j, embedded[k], FALSE, &e, NULL) && e != NULL)
      json_decref(e);
    if (settings != NULL && ferry_bridge_get_embedded(settings, embedded[k], FALSE, &e, NULL) &&
        e != NULL)
      json_decref(e);
  }
  json_decref(j);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  if (size == 0)
    return 0;
  size_t chunk = (size_t)(data[0] & 0x7f) + 1;
  gsize max = (data[0] & 0x80) ? FERRY_BRIDGE_GUEST_MAX_MESSAGE : FERRY_BRIDGE_HOST_MAX_MESSAGE;
  data++;
  size--;
  FerryBridgeParser *parser = ferry_bridge_parser_new(max);
  size_t off = 0;
  gboolean failed = FALSE;
  while (off < size && !failed) {
    size_t n = MIN(chunk, size - off);
    ferry_bridge_parser_feed(parser, data + off, n);
    off += n;
    for (;;) {
      FerryBridgeHeader h;
      const guint8 *body;
      GError *error = NULL;
      FerryBridgeParseResult r = ferry_bridge_parser_next(parser, &h, &body, &error);
      if (r == FERRY_BRIDGE_PARSE_NEED_MORE)
        break;
      if (r == FERRY_BRIDGE_PARSE_ERROR) {
        if (error == NULL)
          __builtin_trap(); /* an error must say why */
        g_error_free(error);
        failed = TRUE;
        break;
      }
      if (h.size < FERRY_BRIDGE_HEADER_SIZE || h.size > max)
        __builtin_trap(); /* the parser let a bad size through */
      decode_body(&h, body);
    }
  }
  ferry_bridge_parser_free(parser);
  return 0;
}
