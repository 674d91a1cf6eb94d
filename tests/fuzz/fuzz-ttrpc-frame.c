/*
 * Fuzz target: the ttrpc frame parser and envelope decoders on arbitrary bytes.
 * The first input byte chooses how the rest is split into feeds, so that split
 * headers and bodies are explored too. Every frame is decoded the way the server
 * and the client do: Request (and its payload as the interop service's message),
 * Response, and Data as a StringValue.
 */
#include <stdint.h>
#include <string.h>

#include "ferry/ttrpc.h"
#include "google/protobuf/wrappers.pb-c.h"
#include "ttrpc/envelope.pb-c.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void decode_frame(const FerryTtrpcHeader *h, const guint8 *body)
{
  switch (h->type) {
  case FERRY_TTRPC_TYPE_REQUEST: {
    Ttrpc__Request *req = ttrpc__request__unpack(NULL, h->length, body);
    if (req == NULL)
      return;
    for (size_t i = 0; i < req->n_metadata; i++)
      (void)g_ascii_strcasecmp(req->metadata[i]->key, "x-test");
    ProtobufCMessage *p = protobuf_c_message_unpack(&google__protobuf__string_value__descriptor,
                                                    NULL, req->payload.len, req->payload.data);
    if (p != NULL)
      protobuf_c_message_free_unpacked(p, NULL);
    ttrpc__request__free_unpacked(req, NULL);
    return;
  }
  case FERRY_TTRPC_TYPE_RESPONSE: {
    Ttrpc__Response *resp = ttrpc__response__unpack(NULL, h->length, body);
    if (resp == NULL)
      return;
    if (resp->status != NULL)
      (void)strlen(resp->status->message);
    ttrpc__response__free_unpacked(resp, NULL);
    return;
  }
  case FERRY_TTRPC_TYPE_DATA: {
    ProtobufCMessage *m = protobuf_c_message_unpack(&google__protobuf__string_value__descriptor,
                                                    NULL, h->length, body);
    if (m != NULL)
      protobuf_c_message_free_unpacked(m, NULL);
    return;
  }
  default:
    return;
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  if (size == 0)
    return 0;
  size_t chunk = (size_t)data[0] + 1;
  data++;
  size--;
  FerryTtrpcParser *parser = ferry_ttrpc_parser_new();
  size_t off = 0;
  while (off < size) {
    size_t n = MIN(chunk, size - off);
    ferry_ttrpc_parser_feed(parser, data + off, n);
    off += n;
    FerryTtrpcHeader h;
    const guint8 *body;
    FerryTtrpcParseResult r;
    while ((r = ferry_ttrpc_parser_next(parser, &h, &body)) != FERRY_TTRPC_PARSE_NEED_MORE) {
      if (r == FERRY_TTRPC_PARSE_FRAME)
        decode_frame(&h, body);
      else if (h.length <= FERRY_TTRPC_MAX_DATA)
        __builtin_trap(); /* oversize reported for a frame within the limit */
    }
  }
  ferry_ttrpc_parser_free(parser);
  return 0;
}
