/* The mux wire codec (docs/mux.md): frame headers, the parser with HELLO hunting, and
 * HELLO payloads. Pure: no I/O. Private to lib/transport (and its fuzz target). */
#pragma once

#include <glib.h>
#include <string.h>

#define MUX_MAGIC 0x584d4646u /* bytes "FFMX" */
#define MUX_HEADER_SIZE 24u
#define MUX_HELLO_TAG "FERRYMUX"
#define MUX_VERSION 1u
#define MUX_HELLO_ENTRY_SIZE 28u
/* The longest HELLO: one entry per channel the mux allows (FERRY_MUX_MAX_CHANNELS). */
#define MUX_MAX_HELLO (24u + 4096u * MUX_HELLO_ENTRY_SIZE)
/* HELLO-like candidates the hunt may checksum before it gives up: bytes of payload.
 * Plain stale bytes cost one header check each and never count. */
#define MUX_HUNT_CHECK_BUDGET (32u << 20)

typedef enum {
  MUX_HELLO = 1,
  MUX_OPEN = 2,
  MUX_ACCEPT = 3,
  MUX_REFUSE = 4,
  MUX_DATA = 5,
  MUX_ACK = 6,
  MUX_SHUTDOWN = 7,
  MUX_RESET = 8,
} MuxType;

typedef enum {
  MUX_RESET_FINISHED = 0,
  MUX_RESET_ABORTED = 1,
  MUX_RESET_UNKNOWN_CHANNEL = 2,
  MUX_RESET_PROTOCOL_ERROR = 3,
} MuxResetReason;

/* HELLO entry state bits. */
#define MUX_STATE_ESTABLISHED 0x1u
#define MUX_STATE_SHUT_SENT 0x2u
#define MUX_STATE_PEER_DONE 0x4u

typedef struct {
  guint8 type;
  guint32 channel;
  guint32 length;
  guint64 offset;
  const guint8 *payload; /* length bytes; valid until the next feed */
} MuxFrame;

typedef struct {
  guint32 id;
  guint32 port;
  guint32 state;
  guint64 consumed;
  guint32 window;
} MuxHelloEntry;

guint32 mux_crc32(guint32 crc, const guint8 *data, gsize len);

/* Little-endian fields. */
static inline void mux_put32(guint8 *p, guint32 v)
{
  v = GUINT32_TO_LE(v);
  memcpy(p, &v, 4);
}

static inline void mux_put64(guint8 *p, guint64 v)
{
  v = GUINT64_TO_LE(v);
  memcpy(p, &v, 8);
}

static inline guint32 mux_get32(const guint8 *p)
{
  guint32 v;
  memcpy(&v, p, 4);
  return GUINT32_FROM_LE(v);
}

static inline guint64 mux_get64(const guint8 *p)
{
  guint64 v;
  memcpy(&v, p, 8);
  return GUINT64_FROM_LE(v);
}

/* Append a frame (header + payload) to `out`. */
void mux_frame_append(GByteArray *out, MuxType type, guint32 channel, guint64 offset,
                      const guint8 *payload, guint32 length);
/* Append a HELLO frame carrying `entries`. */
/* HELLO's offset field: 0 asks the peer to answer with its own HELLO, MUX_HELLO_REPLY is
 * that answer. */
#define MUX_HELLO_REPLY 1u
void mux_hello_append(GByteArray *out, guint32 role, gboolean reply, const MuxHelloEntry *entries,
                      guint n);
/* Decode a HELLO frame's payload (checked: tag, version, count, checksum). Returns the
 * entries (caller frees with g_free) and the sender's role. */
MuxHelloEntry *mux_hello_decode(const MuxFrame *frame, guint32 *role, guint *n_entries,
                                GError **error);

typedef struct MuxParser MuxParser;

typedef enum {
  MUX_PARSE_NEED_MORE,
  MUX_PARSE_FRAME,
  MUX_PARSE_ERROR, /* a protocol error: the stream must be dropped */
} MuxParseResult;

MuxParser *mux_parser_new(void);
void mux_parser_free(MuxParser *parser);
/* Start over on a new stream: drop input and hunt for a HELLO. */
void mux_parser_reset(MuxParser *parser);
void mux_parser_feed(MuxParser *parser, const guint8 *data, gsize len);
/* While hunting, only a complete, valid HELLO comes out (everything before it is
 * skipped); after it, frames are checked strictly. The hunt looks at each position
 * once (a candidate still arriving is looked at again when it is complete) and
 * checksums at most MUX_HUNT_CHECK_BUDGET bytes of candidates: past that it is
 * MUX_PARSE_ERROR (RESOURCE_EXHAUSTED), so crafted input cannot buy CPU. */
MuxParseResult mux_parser_next(MuxParser *parser, MuxFrame *frame, GError **error);
/* Bytes skipped while hunting since the last reset (for tests). */
guint64 mux_parser_skipped(MuxParser *parser);
/* Bytes of HELLO-like candidates the hunt checksummed since the last reset (for tests). */
guint64 mux_parser_checked(MuxParser *parser);
