/* ttrpc frame codec: header encoding and an incremental parser. Pure: no I/O. */
#include <string.h>

#include "ferry/error.h"
#include "ferry/ttrpc.h"

void ferry_ttrpc_header_encode(const FerryTtrpcHeader *h, guint8 out[FERRY_TTRPC_HEADER_SIZE])
{
  guint32 len = GUINT32_TO_BE(h->length);
  guint32 sid = GUINT32_TO_BE(h->stream_id);
  memcpy(out, &len, 4);
  memcpy(out + 4, &sid, 4);
  out[8] = h->type;
  out[9] = h->flags;
}

void ferry_ttrpc_header_decode(const guint8 in[FERRY_TTRPC_HEADER_SIZE], FerryTtrpcHeader *h)
{
  guint32 len, sid;
  memcpy(&len, in, 4);
  memcpy(&sid, in + 4, 4);
  h->length = GUINT32_FROM_BE(len);
  h->stream_id = GUINT32_FROM_BE(sid);
  h->type = in[8];
  h->flags = in[9];
}

struct FerryTtrpcParser {
  GByteArray *buf; /* input; bytes before `start` were handed out already */
  gsize start;
  gsize skip; /* body bytes of an oversize frame still to drop */
};

FerryTtrpcParser *ferry_ttrpc_parser_new(void)
{
  FerryTtrpcParser *p = g_new0(FerryTtrpcParser, 1);
  p->buf = g_byte_array_new();
  return p;
}

void ferry_ttrpc_parser_free(FerryTtrpcParser *p)
{
  if (p == NULL)
    return;
  g_byte_array_unref(p->buf);
  g_free(p);
}

void ferry_ttrpc_parser_feed(FerryTtrpcParser *p, const guint8 *data, gsize len)
{
  /* Drop what was handed out, once per feed rather than once per frame. */
  if (p->start > 0) {
    g_byte_array_remove_range(p->buf, 0, (guint)p->start);
    p->start = 0;
  }
  if (p->skip > 0) {
    gsize drop = MIN(p->skip, len);
    p->skip -= drop;
    data += drop;
    len -= drop;
  }
  if (len > 0)
    g_byte_array_append(p->buf, data, (guint)len);
}

FerryTtrpcParseResult ferry_ttrpc_parser_next(FerryTtrpcParser *p, FerryTtrpcHeader *header,
                                              const guint8 **data)
{
  gsize avail = p->buf->len - p->start;
  if (p->skip > 0 || avail < FERRY_TTRPC_HEADER_SIZE)
    return FERRY_TTRPC_PARSE_NEED_MORE;
  const guint8 *frame = p->buf->data + p->start;
  ferry_ttrpc_header_decode(frame, header);
  avail -= FERRY_TTRPC_HEADER_SIZE;
  if (header->length > FERRY_TTRPC_MAX_DATA) {
    /* Skip the body without buffering it; part of it may already be here. */
    gsize drop = MIN(avail, (gsize)header->length);
    p->start += FERRY_TTRPC_HEADER_SIZE + drop;
    p->skip = header->length - drop;
    *data = NULL;
    return FERRY_TTRPC_PARSE_OVERSIZE;
  }
  if (avail < header->length)
    return FERRY_TTRPC_PARSE_NEED_MORE;
  *data = frame + FERRY_TTRPC_HEADER_SIZE;
  p->start += FERRY_TTRPC_HEADER_SIZE + header->length;
  return FERRY_TTRPC_PARSE_FRAME;
}

gsize ferry_ttrpc_parser_buffered(const FerryTtrpcParser *p)
{
  return p->buf->len - p->start;
}

GBytes *ferry_ttrpc_frame_encode(guint32 stream_id, FerryTtrpcType type, guint8 flags,
                                 const guint8 *data, gsize len, GError **error)
{
  if (len > FERRY_TTRPC_MAX_DATA) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_RESOURCE_EXHAUSTED,
                "message length %" G_GSIZE_FORMAT " exceed maximum message size of %u", len,
                FERRY_TTRPC_MAX_DATA);
    return NULL;
  }
  guint8 *out = g_malloc(FERRY_TTRPC_HEADER_SIZE + len);
  FerryTtrpcHeader h = { (guint32)len, stream_id, (guint8)type, flags };
  ferry_ttrpc_header_encode(&h, out);
  if (len > 0)
    memcpy(out + FERRY_TTRPC_HEADER_SIZE, data, len);
  return g_bytes_new_take(out, FERRY_TTRPC_HEADER_SIZE + len);
}
