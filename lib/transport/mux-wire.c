/* The mux wire codec (docs/mux.md). Pure: no I/O. */
#include "mux-wire.h"

#include <string.h>

#include "ferry/error.h"
#include "ferry/mux.h"

/* --------------------------------------------------------------- CRC-32 -- */

static guint32 crc_table[256];

static void crc_init(void)
{
  static gsize once;
  if (!g_once_init_enter(&once))
    return;
  for (guint32 i = 0; i < 256; i++) {
    guint32 c = i;
    for (int k = 0; k < 8; k++)
      c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
    crc_table[i] = c;
  }
  g_once_init_leave(&once, 1);
}

guint32 mux_crc32(guint32 crc, const guint8 *data, gsize len)
{
  crc_init();
  crc = ~crc;
  for (gsize i = 0; i < len; i++)
    crc = crc_table[(crc ^ data[i]) & 0xff] ^ (crc >> 8);
  return ~crc;
}

/* ------------------------------------------------------------ encoding -- */

static void header_encode(guint8 *h, MuxType type, guint32 channel, guint32 length, guint64 offset)
{
  mux_put32(h, MUX_MAGIC);
  h[4] = (guint8)type;
  h[5] = 0;
  h[6] = 0;
  h[7] = 0;
  mux_put32(h + 8, channel);
  mux_put32(h + 12, length);
  mux_put64(h + 16, offset);
}

void mux_frame_append(GByteArray *out, MuxType type, guint32 channel, guint64 offset,
                      const guint8 *payload, guint32 length)
{
  guint at = out->len;
  g_byte_array_set_size(out, at + MUX_HEADER_SIZE + length);
  header_encode(out->data + at, type, channel, length, offset);
  if (length > 0)
    memcpy(out->data + at + MUX_HEADER_SIZE, payload, length);
}

void mux_hello_append(GByteArray *out, guint32 role, gboolean reply, const MuxHelloEntry *e,
                      guint n)
{
  guint32 length = 8 + 4 + 4 + 4 + n * MUX_HELLO_ENTRY_SIZE + 4;
  guint at = out->len;
  g_byte_array_set_size(out, at + MUX_HEADER_SIZE + length);
  guint8 *h = out->data + at;
  header_encode(h, MUX_HELLO, 0, length, reply ? MUX_HELLO_REPLY : 0);
  guint8 *p = h + MUX_HEADER_SIZE;
  memcpy(p, MUX_HELLO_TAG, 8);
  mux_put32(p + 8, MUX_VERSION);
  mux_put32(p + 12, role);
  mux_put32(p + 16, n);
  p += 20;
  for (guint i = 0; i < n; i++, p += MUX_HELLO_ENTRY_SIZE) {
    mux_put32(p, e[i].id);
    mux_put32(p + 4, e[i].port);
    mux_put32(p + 8, e[i].state);
    mux_put64(p + 12, e[i].consumed);
    mux_put32(p + 20, e[i].window);
    mux_put32(p + 24, 0); /* reserved */
  }
  mux_put32(p, mux_crc32(0, h, MUX_HEADER_SIZE + length - 4));
}

/* The frame's header bytes are not kept by the parser; HELLO's checksum covers them, so
 * rebuild them (they are fixed for a HELLO) and go on over the payload in place. */
static guint32 hello_crc(const MuxFrame *f)
{
  guint8 h[MUX_HEADER_SIZE];
  header_encode(h, MUX_HELLO, 0, f->length, f->offset);
  return mux_crc32(mux_crc32(0, h, MUX_HEADER_SIZE), f->payload, f->length - 4);
}

MuxHelloEntry *mux_hello_decode(const MuxFrame *f, guint32 *role, guint *n_entries, GError **error)
{
  if (f->type != MUX_HELLO || f->length < 24 || f->length > MUX_MAX_HELLO ||
      memcmp(f->payload, MUX_HELLO_TAG, 8) != 0) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "mux: not a HELLO");
    return NULL;
  }
  guint32 version = mux_get32(f->payload + 8);
  guint32 n = mux_get32(f->payload + 16);
  if (version != MUX_VERSION) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION,
                "mux: peer speaks version %u, we speak %u", version, MUX_VERSION);
    return NULL;
  }
  if (n > FERRY_MUX_MAX_CHANNELS || f->length != 24 + (guint64)n * MUX_HELLO_ENTRY_SIZE) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                "mux: HELLO with %u entries in %u bytes", n, f->length);
    return NULL;
  }
  if (hello_crc(f) != mux_get32(f->payload + f->length - 4)) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_DATA_LOSS, "mux: HELLO checksum mismatch");
    return NULL;
  }
  *role = mux_get32(f->payload + 12);
  *n_entries = n;
  MuxHelloEntry *e = g_new0(MuxHelloEntry, n + 1);
  const guint8 *p = f->payload + 20;
  for (guint i = 0; i < n; i++, p += MUX_HELLO_ENTRY_SIZE) {
    e[i].id = mux_get32(p);
    e[i].port = mux_get32(p + 4);
    e[i].state = mux_get32(p + 8);
    e[i].consumed = mux_get64(p + 12);
    e[i].window = mux_get32(p + 20);
  }
  return e;
}

/* -------------------------------------------------------------- parsing -- */

struct MuxParser {
  GByteArray *buf;
  gsize start;
  gboolean hunting;
  guint64 skipped;
  /* The hunt, in stream offsets (buf->data[0] is offset `base`): the last look-ahead
   * past an incomplete candidate covered [scan_from, scan_to) with the stream ending at
   * scan_end; the next one resumes at `resume`. `checked`: candidate bytes checksummed. */
  guint64 base;
  guint64 scan_from, scan_to, scan_end, resume;
  guint64 checked;
};

MuxParser *mux_parser_new(void)
{
  MuxParser *p = g_new0(MuxParser, 1);
  p->buf = g_byte_array_new();
  p->hunting = TRUE;
  return p;
}

void mux_parser_free(MuxParser *p)
{
  if (p == NULL)
    return;
  g_byte_array_unref(p->buf);
  g_free(p);
}

void mux_parser_reset(MuxParser *p)
{
  g_byte_array_set_size(p->buf, 0);
  p->start = 0;
  p->hunting = TRUE;
  p->skipped = 0;
  p->base = p->scan_from = p->scan_to = p->scan_end = p->resume = p->checked = 0;
}

guint64 mux_parser_skipped(MuxParser *p)
{
  return p->skipped;
}

guint64 mux_parser_checked(MuxParser *p)
{
  return p->checked;
}

G_STATIC_ASSERT(MUX_MAX_HELLO == 24 + FERRY_MUX_MAX_CHANNELS * MUX_HELLO_ENTRY_SIZE);

void mux_parser_feed(MuxParser *p, const guint8 *data, gsize len)
{
  if (p->start > 0) {
    g_byte_array_remove_range(p->buf, 0, (guint)p->start);
    p->base += p->start;
    p->start = 0;
  }
  g_byte_array_append(p->buf, data, (guint)len);
}

/* The exact payload length each type needs (-1: variable). */
static gint64 fixed_length(guint8 type)
{
  switch (type) {
  case MUX_OPEN:
    return 8;
  case MUX_ACCEPT:
  case MUX_ACK:
  case MUX_RESET:
    return 4;
  case MUX_REFUSE:
  case MUX_SHUTDOWN:
    return 0;
  default:
    return -1;
  }
}

/* Check a header; FALSE (with why) when it is not a frame of this protocol. */
static gboolean header_valid(const guint8 *h, GError **error)
{
  guint32 magic = mux_get32(h);
  guint8 type = h[4];
  guint32 channel = mux_get32(h + 8);
  guint32 length = mux_get32(h + 12);
  guint64 offset = mux_get64(h + 16);
  const char *why = NULL;
  if (magic != MUX_MAGIC)
    why = "bad magic";
  else if (h[5] != 0 || h[6] != 0 || h[7] != 0)
    why = "reserved bits set";
  else if (type < MUX_HELLO || type > MUX_RESET)
    why = "unknown type";
  else if (type == MUX_HELLO &&
           (channel != 0 || offset > MUX_HELLO_REPLY || length < 24 || length > MUX_MAX_HELLO ||
            (length - 24) % MUX_HELLO_ENTRY_SIZE != 0))
    why = "malformed HELLO";
  else if (type != MUX_HELLO && channel == 0)
    why = "channel 0";
  else if (type == MUX_DATA && (length == 0 || length > FERRY_MUX_MAX_DATA))
    why = "DATA length out of range";
  else if (fixed_length(type) >= 0 && length != fixed_length(type))
    why = "wrong payload length";
  else if (type != MUX_HELLO && type != MUX_DATA && type != MUX_ACK && type != MUX_SHUTDOWN &&
           offset != 0)
    why = "offset set";
  if (why != NULL) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                "mux: %s (type %u, channel %u, length %u)", why, type, channel, length);
    return FALSE;
  }
  return TRUE;
}

static void frame_from(MuxFrame *f, const guint8 *h)
{
  f->type = h[4];
  f->channel = mux_get32(h + 8);
  f->length = mux_get32(h + 12);
  f->offset = mux_get64(h + 16);
  f->payload = h + MUX_HEADER_SIZE;
}

/* A HELLO header at `at` (a candidate): its frame in *f. */
static gboolean candidate_at(MuxParser *p, gsize at, MuxFrame *f)
{
  const guint8 *h = p->buf->data + at;
  if (p->buf->len - at < MUX_HEADER_SIZE || mux_get32(h) != MUX_MAGIC || h[4] != MUX_HELLO ||
      !header_valid(h, NULL))
    return FALSE;
  frame_from(f, h);
  return TRUE;
}

static gboolean complete(MuxParser *p, gsize at, const MuxFrame *f)
{
  return p->buf->len - at >= MUX_HEADER_SIZE + f->length;
}

/* Whether the complete candidate at `at` was checked by the last look-ahead already. */
static gboolean checked_before(MuxParser *p, gsize at, const MuxFrame *f)
{
  guint64 abs = p->base + at;
  return abs >= p->scan_from && abs < p->scan_to &&
         abs + MUX_HEADER_SIZE + f->length <= p->scan_end;
}

/* Check a complete candidate: a valid HELLO? Its payload counts against the budget. */
static gboolean hello_valid(MuxParser *p, const MuxFrame *f)
{
  p->checked += f->length;
  guint32 role;
  guint n;
  g_autofree MuxHelloEntry *entries = mux_hello_decode(f, &role, &n, NULL);
  return entries != NULL;
}

/* A candidate HELLO whose payload has not all arrived: can it still be one? Its tag is
 * checked as soon as it is there, so stale bytes cannot hold the hunt for long. */
static gboolean candidate_plausible(const guint8 *h, gsize avail)
{
  if (avail >= MUX_HEADER_SIZE + 8 && memcmp(h + MUX_HEADER_SIZE, MUX_HELLO_TAG, 8) != 0)
    return FALSE;
  return TRUE;
}

/*
 * The candidate at start is incomplete, and a stale header may claim more than will
 * ever come (the peer sends its HELLO and then waits): a complete HELLO further on wins.
 * Each position is looked at once; the first incomplete candidate found is where the
 * next look resumes, so it is checked when complete. TRUE with start moved to a HELLO.
 */
static gboolean look_ahead(MuxParser *p)
{
  gsize from = p->start + 1;
  if (p->resume > p->base + from)
    from = (gsize)(p->resume - p->base);
  gsize at = from;
  guint64 first_incomplete = G_MAXUINT64;
  for (; at + MUX_HEADER_SIZE <= p->buf->len && p->checked <= MUX_HUNT_CHECK_BUDGET; at++) {
    MuxFrame f;
    if (!candidate_at(p, at, &f))
      continue;
    if (!complete(p, at, &f)) {
      if (first_incomplete == G_MAXUINT64 &&
          candidate_plausible(p->buf->data + at, p->buf->len - at))
        first_incomplete = p->base + at;
      continue;
    }
    if (checked_before(p, at, &f) || !hello_valid(p, &f))
      continue;
    p->skipped += at - p->start;
    p->start = at;
    return TRUE;
  }
  p->scan_from = p->base + from;
  p->scan_to = p->base + at;
  p->scan_end = p->base + p->buf->len;
  p->resume = MIN(first_incomplete, p->scan_to);
  return FALSE;
}

static void skip_one(MuxParser *p)
{
  p->start++;
  p->skipped++;
}

MuxParseResult mux_parser_next(MuxParser *p, MuxFrame *f, GError **error)
{
  for (;;) {
    gsize avail = p->buf->len - p->start;
    if (p->hunting && p->checked > MUX_HUNT_CHECK_BUDGET) {
      g_set_error(error, FERRY_ERROR, FERRY_ERROR_RESOURCE_EXHAUSTED,
                  "mux: no valid HELLO after checking %" G_GUINT64_FORMAT
                  " bytes of HELLO-like input (%" G_GUINT64_FORMAT " bytes skipped)",
                  p->checked, p->skipped);
      return MUX_PARSE_ERROR;
    }
    if (avail < MUX_HEADER_SIZE)
      return MUX_PARSE_NEED_MORE;
    const guint8 *h = p->buf->data + p->start;
    if (p->hunting) {
      /* Only a whole, checked HELLO ends the hunt; skip a byte at a time otherwise. */
      if (!candidate_at(p, p->start, f)) {
        skip_one(p);
        continue;
      }
      if (!complete(p, p->start, f)) {
        if (!candidate_plausible(h, avail)) {
          skip_one(p);
          continue;
        }
        if (!look_ahead(p))
          return MUX_PARSE_NEED_MORE;
        continue;
      }
      if (checked_before(p, p->start, f) || !hello_valid(p, f)) {
        skip_one(p);
        continue;
      }
      p->hunting = FALSE;
      p->start += MUX_HEADER_SIZE + f->length;
      return MUX_PARSE_FRAME;
    }
    if (!header_valid(h, error))
      return MUX_PARSE_ERROR;
    frame_from(f, h);
    if (avail < MUX_HEADER_SIZE + f->length)
      return MUX_PARSE_NEED_MORE;
    p->start += MUX_HEADER_SIZE + f->length;
    return MUX_PARSE_FRAME;
  }
}
