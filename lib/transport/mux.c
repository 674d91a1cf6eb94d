/* The ferry channel mux (docs/mux.md): channel state, flow control, resume. Moving a
 * live channel to another mux (export/import) is mux-export.c's. */
#include "ferry/mux.h"

#include <string.h>

#include "ferry/error.h"
#include "ferry/source.h"
#include "ferry/stream.h"
#include "mux-private.h"
#include "mux-wire.h"

/* Stop producing frames while this much is waiting to be written. */
#define OUTPUT_HIGH_WATER (256u * 1024u)
/* Input back-pressure (issue 9 item 2): the peer's frames make us owe it frames (a RESET
 * for each frame of an unknown channel, a REFUSE for each OPEN to an unlisted port).
 * Stop reading while control frames and unsent output pass INPUT_STOP_WATER, read
 * again under INPUT_RESUME_WATER; CONTROL_MAX owed control bytes are a protocol error
 * (unreachable while the stop works: a read adds at most about its own size). */
#define INPUT_STOP_WATER (1u << 20)
#define INPUT_RESUME_WATER (512u * 1024u)
#define CONTROL_MAX (8u << 20)

/* The application's handle; the state lives in MuxChannel and may outlive it. */
struct MuxHandle {
  FerryChannel base;
  MuxChannel *mc; /* NULL once the mux dropped the state */
};

typedef struct {
  FerryAcceptFunc accept;
  gpointer user_data;
} Listener;

static const FerryChannelClass mux_channel_class;
static const FerryTransportClass mux_transport_class;
static void pump(FerryMux *mux);
static void schedule_deliver(FerryMux *mux);
static void send_hello(FerryMux *mux, gboolean reply);
static void drop_stream(FerryMux *mux, const GError *why);
static void process_input(FerryMux *mux);
static gsize owed_output(FerryMux *mux);

/* ------------------------------------------------------------ channels -- */

MuxChannel *mux_channel_new(FerryMux *mux, guint32 id, guint32 port, McState state)
{
  MuxChannel *mc = g_new0(MuxChannel, 1);
  mc->mux = mux;
  mc->id = id;
  mc->port = port;
  mc->state = state;
  mc->recv_buf = g_byte_array_new();
  mc->send_buf = g_byte_array_new();
  mc->recv_window = mux->window;
  g_hash_table_insert(mux->channels, GUINT_TO_POINTER(id), mc);
  mux->rr = g_list_append(mux->rr, GUINT_TO_POINTER(id));
  return mc;
}

FerryChannel *mux_channel_handle(MuxChannel *mc)
{
  MuxHandle *h = g_new0(MuxHandle, 1);
  ferry_channel_init(&h->base, &mux_channel_class, mc->port);
  h->mc = mc;
  mc->handle = h;
  return &h->base;
}

/* Forget a channel's state; tell its application (if any) that it is closed. */
static void mc_remove(MuxChannel *mc, const GError *error)
{
  FerryMux *mux = mc->mux;
  g_hash_table_steal(mux->channels, GUINT_TO_POINTER(mc->id));
  mux->rr = g_list_remove(mux->rr, GUINT_TO_POINTER(mc->id));
  MuxHandle *h = mc->handle;
  FerryDialFunc dial_done = mc->dial_done;
  gpointer dial_data = mc->dial_data;
  g_byte_array_unref(mc->recv_buf);
  g_byte_array_unref(mc->send_buf);
  g_free(mc);
  if (dial_done != NULL) {
    /* Never established: the dialer hears of it, not a channel. */
    dial_done(&mux->base, NULL, error, dial_data);
    return;
  }
  if (h != NULL) {
    h->mc = NULL;
    ferry_channel_emit_closed(&h->base, error);
  }
}

static void mc_reset(MuxChannel *mc, MuxResetReason reason, const GError *error)
{
  FerryMux *mux = mc->mux;
  if (mux->synced) {
    guint8 r[4];
    guint32 le = GUINT32_TO_LE((guint32)reason);
    memcpy(r, &le, 4);
    mux_frame_append(mux->control, MUX_RESET, mc->id, 0, r, 4);
  }
  mc_remove(mc, error);
  pump(mux);
}

static gsize mc_room(MuxChannel *mc)
{
  if (mc->mux->frozen)
    return 0; /* what is written now could not be exported */
  gsize used = (gsize)(mc->send_total - mc->send_acked);
  gsize cap = mc->mux->send_buffer;
  return used >= cap ? 0 : cap - used;
}

/* Both directions ended and were fully consumed: nothing more can happen. */
static gboolean mc_finished(MuxChannel *mc)
{
  return mc->shut && mc->send_acked == mc->send_total && mc->peer_shut &&
         mc->recv_consumed == mc->peer_final;
}

/* Send an ACK when consumption moved a quarter window, or caught up with arrivals. */
static void mc_maybe_ack(MuxChannel *mc)
{
  guint64 moved = mc->recv_consumed - mc->last_ack;
  if (moved > 0 && (moved >= mc->recv_window / 4 || mc->recv_buf->len == 0))
    mc->ack_due = TRUE;
}

/* Run writable or acked on mc's application, if any. FALSE when the handler closed the
 * channel, which frees mc. */
static gboolean mc_emit(MuxChannel *mc, void (*emit)(FerryChannel *channel))
{
  MuxHandle *h = mc->handle;
  if (h == NULL)
    return TRUE;
  ferry_channel_ref(&h->base);
  emit(&h->base);
  gboolean gone = h->mc != mc;
  ferry_channel_unref(&h->base);
  return !gone;
}

/* The peer acknowledged bytes: room again, and perhaps nothing left unacknowledged.
 * FALSE when a handler closed the channel (mc is freed). */
static gboolean mc_send_progress(MuxChannel *mc, gboolean all_acked)
{
  if (mc->want_writable && mc_room(mc) > 0 && mc->handle != NULL) {
    mc->want_writable = FALSE;
    if (!mc_emit(mc, ferry_channel_emit_writable))
      return FALSE;
  }
  return !all_acked || mc_emit(mc, ferry_channel_emit_acked);
}

/* Offer buffered data to the consumer (or, with no application, consume it). */
static void mc_deliver(MuxChannel *mc)
{
  FerryMux *mux = mc->mux;
  if (mux->frozen)
    return; /* kept, unconsumed, until ferry_mux_set_frozen(FALSE) */
  while (mc->recv_buf->len > 0 && !mc->paused) {
    gsize took;
    if (mc->handle == NULL) {
      took = mc->recv_buf->len; /* nobody wants it: drained silently */
    } else {
      ferry_channel_ref(&mc->handle->base);
      MuxHandle *h = mc->handle;
      took = ferry_channel_emit_data(&h->base, mc->recv_buf->data, mc->recv_buf->len);
      gboolean gone = h->mc != mc;
      ferry_channel_unref(&h->base);
      if (gone)
        return; /* closed from inside the handler */
    }
    took = MIN(took, (gsize)mc->recv_buf->len);
    if (took == 0) {
      mc->paused = TRUE;
      break;
    }
    g_byte_array_remove_range(mc->recv_buf, 0, (guint)took);
    mc->recv_consumed += took;
    if (mc->recv_buf->len > 0)
      mc->paused = TRUE;
  }
  mc_maybe_ack(mc);
  /* EOF waits for an application that listens for it: an imported channel whose peer
   * had already finished is delivered before its new owner set its handlers. */
  if (mc->peer_shut && !mc->eof_emitted && mc->recv_buf->len == 0 &&
      mc->recv_consumed == mc->peer_final &&
      (mc->handle == NULL || mc->handle->base.handlers.eof != NULL)) {
    mc->eof_emitted = TRUE;
    if (mc->handle != NULL) {
      MuxHandle *h = mc->handle;
      ferry_channel_ref(&h->base);
      ferry_channel_emit_eof(&h->base);
      gboolean gone = h->mc != mc;
      ferry_channel_unref(&h->base);
      if (gone)
        return; /* closed from inside the eof handler: mc is gone */
    }
  }
  if (mc->handle == NULL && mc_finished(mc) &&
      g_hash_table_contains(mux->channels, GUINT_TO_POINTER(mc->id)))
    mc_reset(mc, MUX_RESET_FINISHED, NULL);
}

static gboolean on_deliver(gpointer p)
{
  FerryMux *mux = p;
  ferry_source_clear(&mux->deliver_source);
  GList *ids = g_list_copy(mux->rr);
  for (GList *l = ids; l != NULL; l = l->next) {
    MuxChannel *mc = g_hash_table_lookup(mux->channels, l->data);
    if (mc != NULL && mc->state == MC_ESTABLISHED && !mux->frozen) {
      /* What a freeze held back: a shutdown, and writers waiting for room. */
      if (mc->shut_when_thawed) {
        mc->shut_when_thawed = FALSE;
        mc->shut = TRUE;
      }
      if (!mc_send_progress(mc, FALSE))
        continue;
    }
    mc = g_hash_table_lookup(mux->channels, l->data);
    if (mc != NULL && mc->state == MC_ESTABLISHED)
      mc_deliver(mc);
  }
  g_list_free(ids);
  pump(mux);
  return G_SOURCE_REMOVE;
}

static void schedule_deliver(FerryMux *mux)
{
  if (mux->deliver_source == NULL && !mux->freeing)
    mux->deliver_source = ferry_idle_new(mux->context, on_deliver, mux);
}

/* ---- the application's side (FerryChannelClass) ---- */

static MuxChannel *handle_mc(FerryChannel *ch)
{
  return ((MuxHandle *)ch)->mc;
}

MuxChannel *mux_channel_of(FerryChannel *channel)
{
  return channel->klass == &mux_channel_class ? handle_mc(channel) : NULL;
}

static gsize mch_write(FerryChannel *ch, const void *data, gsize len)
{
  MuxChannel *mc = handle_mc(ch);
  if (mc == NULL || mc->shut)
    return 0;
  gsize n = MIN(len, mc_room(mc));
  if (n > 0) {
    g_byte_array_append(mc->send_buf, data, (guint)n);
    mc->send_total += n;
  }
  if (n < len)
    mc->want_writable = TRUE;
  pump(mc->mux);
  return n;
}

static gsize mch_write_room(FerryChannel *ch)
{
  MuxChannel *mc = handle_mc(ch);
  if (mc == NULL || mc->shut)
    return 0;
  gsize room = mc_room(mc);
  if (room == 0)
    mc->want_writable = TRUE;
  return room;
}

static gsize mch_unacked(FerryChannel *ch)
{
  MuxChannel *mc = handle_mc(ch);
  return mc == NULL ? 0 : (gsize)(mc->send_total - mc->send_acked);
}

static void mch_resume_reading(FerryChannel *ch)
{
  MuxChannel *mc = handle_mc(ch);
  if (mc == NULL)
    return;
  mc->paused = FALSE;
  schedule_deliver(mc->mux);
}

static void mch_shutdown_write(FerryChannel *ch)
{
  MuxChannel *mc = handle_mc(ch);
  if (mc == NULL || mc->shut)
    return;
  if (mc->mux->frozen) {
    mc->shut_when_thawed = TRUE; /* not exported: an importing host shuts for itself */
    return;
  }
  mc->shut = TRUE;
  pump(mc->mux);
}

/* The application let go of its last reference without closing: finish gracefully --
 * what it wrote is still delivered (its write side is shut), what arrives is drained,
 * and the channel ends with RESET "finished" once both directions are done. */
static void mc_let_go(MuxChannel *mc)
{
  mc->handle = NULL;
  mc->shut = TRUE;
  mc->paused = FALSE;
  schedule_deliver(mc->mux);
  pump(mc->mux);
}

static void mch_close(FerryChannel *ch)
{
  MuxChannel *mc = handle_mc(ch);
  if (mc == NULL)
    return;
  ((MuxHandle *)ch)->mc = NULL;
  if (ch->refs == 0) {
    /* Called from the last unref (channel.c): not an abort. */
    mc_let_go(mc);
    return;
  }
  /* An explicit close aborts; the generic code emits closed for it. */
  mc->handle = NULL;
  mc_reset(mc, MUX_RESET_ABORTED, NULL);
}

static void mch_handlers_changed(FerryChannel *ch)
{
  MuxChannel *mc = handle_mc(ch);
  if (mc != NULL) {
    mc->paused = FALSE;
    schedule_deliver(mc->mux);
  }
}

static void mch_finalize(FerryChannel *ch)
{
  MuxChannel *mc = handle_mc(ch);
  if (mc != NULL) {
    ((MuxHandle *)ch)->mc = NULL;
    mc_let_go(mc);
  }
}

static const FerryChannelClass mux_channel_class = {
  .write = mch_write,
  .write_room = mch_write_room,
  .unacked = mch_unacked,
  .resume_reading = mch_resume_reading,
  .shutdown_write = mch_shutdown_write,
  .close = mch_close,
  .handlers_changed = mch_handlers_changed,
  .finalize = mch_finalize,
};

/* --------------------------------------------------------------- output -- */

/* Control frames a channel owes, then its data within the peer's window. */
static void mc_produce(MuxChannel *mc, GByteArray *out, gsize budget)
{
  guint8 w[8];
  if (mc->open_due) {
    mux_put32(w, mc->port);
    mux_put32(w + 4, mc->recv_window);
    mux_frame_append(out, MUX_OPEN, mc->id, 0, w, 8);
    mc->open_due = FALSE;
  }
  if (mc->accept_due) {
    mux_put32(w, mc->recv_window);
    mux_frame_append(out, MUX_ACCEPT, mc->id, 0, w, 4);
    mc->accept_due = FALSE;
  }
  if (mc->state != MC_ESTABLISHED)
    return;
  if (mc->ack_due) {
    mux_put32(w, mc->recv_window);
    mux_frame_append(out, MUX_ACK, mc->id, mc->recv_consumed, w, 4);
    mc->last_ack = mc->recv_consumed;
    mc->ack_due = FALSE;
  }
  guint64 limit = MIN(mc->send_total, mc->send_acked + mc->peer_window);
  if (mc->send_next < limit && out->len < budget) {
    gsize n = (gsize)MIN(limit - mc->send_next, (guint64)FERRY_MUX_MAX_DATA);
    const guint8 *p = mc->send_buf->data + (mc->send_next - mc->send_acked);
    mux_frame_append(out, MUX_DATA, mc->id, mc->send_next, p, (guint32)n);
    mc->send_next += n;
  }
  if (mc->shut && !mc->shutdown_sent && mc->send_next == mc->send_total) {
    mux_frame_append(out, MUX_SHUTDOWN, mc->id, mc->send_total, NULL, 0);
    mc->shutdown_sent = TRUE;
  }
}

static gboolean mc_has_output(MuxChannel *mc)
{
  if (mc->open_due || mc->accept_due)
    return TRUE;
  if (mc->state != MC_ESTABLISHED)
    return FALSE;
  guint64 limit = MIN(mc->send_total, mc->send_acked + mc->peer_window);
  return mc->ack_due || mc->send_next < limit ||
         (mc->shut && !mc->shutdown_sent && mc->send_next == mc->send_total);
}

static void pump_full(FerryMux *mux, gboolean from_idle);

static gboolean on_pump_idle(gpointer p)
{
  FerryMux *mux = p;
  ferry_source_clear(&mux->pump_source);
  pump_full(mux, TRUE);
  return G_SOURCE_REMOVE;
}

static void pump_later(FerryMux *mux)
{
  if (mux->pump_source == NULL && !mux->freeing)
    mux->pump_source = ferry_idle_new(mux->context, on_pump_idle, mux);
}

/*
 * Write what is owed while the stream has room: control frames first, then channels in
 * turn, one DATA frame each per round, so no channel starves the others. At most
 * OUTPUT_HIGH_WATER waits in the stream at a time; the rest follows from the main loop
 * (an idle when the stream took everything, the stream's drained handler when the peer
 * is slow).
 */
static void pump_output(FerryMux *mux, gboolean from_idle)
{
  if (mux->stream == NULL || !mux->synced || mux->freeing || mux->quiet)
    return;
  gsize pending = ferry_stream_pending_output(mux->stream);
  if (pending >= OUTPUT_HIGH_WATER) {
    /* From an idle the output has been flushed already, so what waits is waiting for the
     * peer and drained will follow; inside a data handler it has not: look again soon. */
    if (!from_idle)
      pump_later(mux);
    return;
  }
  g_autoptr(GByteArray) out = g_byte_array_new();
  if (mux->control->len > 0) {
    g_byte_array_append(out, mux->control->data, mux->control->len);
    g_byte_array_set_size(mux->control, 0);
  }
  gsize budget = OUTPUT_HIGH_WATER;
  gboolean progress = TRUE;
  while (progress && pending + out->len < budget) {
    progress = FALSE;
    for (GList *l = mux->rr; l != NULL && pending + out->len < budget; l = l->next) {
      MuxChannel *mc = g_hash_table_lookup(mux->channels, l->data);
      if (mc == NULL || !mc_has_output(mc))
        continue;
      mc_produce(mc, out, budget - pending);
      progress = TRUE;
    }
  }
  gboolean cut_short = progress;
  if (out->len > 0) {
    g_autoptr(GError) error = NULL;
    if (!ferry_stream_write(mux->stream, out->data, out->len, &error))
      return; /* the stream closed itself; its closed handler drops it */
  }
  if (cut_short)
    pump_later(mux);
}

static void input_resume_check(FerryMux *mux, gboolean from_idle);

static void pump_full(FerryMux *mux, gboolean from_idle)
{
  pump_output(mux, from_idle);
  input_resume_check(mux, from_idle);
}

static void pump(FerryMux *mux)
{
  pump_full(mux, FALSE);
}

/* Read again once what we owe the peer has gone down: from the main loop only (frames
 * already read are handled then, and they run the application's callbacks). */
static void input_resume_check(FerryMux *mux, gboolean from_idle)
{
  if (!mux->input_stopped || mux->stream == NULL || owed_output(mux) > INPUT_RESUME_WATER)
    return;
  if (!from_idle) {
    pump_later(mux);
    return;
  }
  mux->input_stopped = FALSE;
  ferry_stream_set_reading(mux->stream, TRUE);
  process_input(mux);
}

/* ------------------------------------------------------------------ input -- */

static void protocol_error(FerryMux *mux, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

static void protocol_error(FerryMux *mux, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  g_autofree char *msg = g_strdup_vprintf(fmt, ap);
  va_end(ap);
  g_autoptr(GError) error = g_error_new(FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "mux: %s", msg);
  drop_stream(mux, error);
}

gboolean mux_id_is_peers(FerryMux *mux, guint32 id)
{
  gboolean host_id = (id & MUX_HOST_ID_BIT) != 0;
  return mux->role == FERRY_MUX_HOST ? !host_id : host_id;
}

static void queue_reset(FerryMux *mux, guint32 id, MuxResetReason reason)
{
  guint8 r[4];
  mux_put32(r, reason);
  mux_frame_append(mux->control, MUX_RESET, id, 0, r, 4);
}

static void on_hello(FerryMux *mux, const MuxFrame *f)
{
  guint32 role;
  guint n;
  g_autoptr(GError) error = NULL;
  g_autofree MuxHelloEntry *entries = mux_hello_decode(f, &role, &n, &error);
  if (entries == NULL) {
    drop_stream(mux, error);
    return;
  }
  if (role == (guint32)mux->role) {
    protocol_error(mux, "peer claims our own role %u", role);
    return;
  }
  /* The peer hunts for a HELLO from this side and drops everything before it: answer
   * first (our HELLO of the attach may have reached an older stream of the peer's). */
  if (f->offset == 0)
    send_hello(mux, TRUE);
  g_autoptr(GHashTable) peer = g_hash_table_new(NULL, NULL);
  for (guint i = 0; i < n; i++)
    g_hash_table_insert(peer, GUINT_TO_POINTER(entries[i].id), &entries[i]);

  mux->synced = TRUE;
  GList *ids = g_list_copy(mux->rr);
  for (GList *l = ids; l != NULL; l = l->next) {
    MuxChannel *mc = g_hash_table_lookup(mux->channels, l->data);
    if (mc == NULL)
      continue;
    MuxHelloEntry *e = g_hash_table_lookup(peer, l->data);
    mc->shutdown_sent = FALSE;
    mc->open_due = mc->accept_due = FALSE;
    if (e == NULL) {
      if (mc->state == MC_OPENING) {
        mc->open_due = TRUE; /* the peer never saw our OPEN */
      } else {
        g_autoptr(GError) lost =
            g_error_new(FERRY_ERROR, FERRY_ERROR_UNAVAILABLE, "mux: peer lost channel %u (port %u)",
                        mc->id, mc->port);
        mc_remove(mc, lost);
      }
      continue;
    }
    if (e->consumed < mc->send_acked || e->consumed > mc->send_total ||
        e->window > FERRY_MUX_MAX_WINDOW) {
      protocol_error(mux,
                     "HELLO for channel %u (port %u) acknowledges %" G_GUINT64_FORMAT
                     " of %" G_GUINT64_FORMAT " bytes (%" G_GUINT64_FORMAT " acknowledged before)",
                     mc->id, mc->port, e->consumed, mc->send_total, mc->send_acked);
      g_list_free(ids);
      return;
    }
    gboolean all_acked = e->consumed > mc->send_acked && e->consumed == mc->send_total;
    g_byte_array_remove_range(mc->send_buf, 0, (guint)(e->consumed - mc->send_acked));
    mc->send_acked = e->consumed;
    mc->send_next = mc->send_acked;
    mc->peer_window = e->window;
    if (mc->state == MC_OPENING) {
      /* The peer accepted; its ACCEPT was lost with the old stream. */
      mc->state = MC_ESTABLISHED;
      FerryDialFunc done = g_steal_pointer(&mc->dial_done);
      if (done != NULL)
        done(&mux->base, mux_channel_handle(mc), NULL, mc->dial_data);
    }
    /* Tell the peer where we are: it resends from our consumed offset. */
    mc->last_ack = mc->recv_consumed;
    mc_send_progress(mc, all_acked);
  }
  g_list_free(ids);
  if (mux->synced_func != NULL)
    mux->synced_func(mux, mux->synced_data);
  schedule_deliver(mux);
  pump(mux);
}

static void on_open(FerryMux *mux, const MuxFrame *f)
{
  guint32 port = mux_get32(f->payload);
  guint32 window = mux_get32(f->payload + 4);
  if (!mux_id_is_peers(mux, f->channel) || window > FERRY_MUX_MAX_WINDOW) {
    protocol_error(mux, "OPEN of channel %u with window %u", f->channel, window);
    return;
  }
  MuxChannel *mc = g_hash_table_lookup(mux->channels, GUINT_TO_POINTER(f->channel));
  if (mc != NULL) {
    /* A resend of an OPEN we accepted: accept again. */
    mc->accept_due = TRUE;
    return;
  }
  Listener *l = g_hash_table_lookup(mux->listeners, GUINT_TO_POINTER(port));
  if (l == NULL || g_hash_table_size(mux->channels) >= FERRY_MUX_MAX_CHANNELS) {
    mux_frame_append(mux->control, MUX_REFUSE, f->channel, 0, NULL, 0);
    return;
  }
  mc = mux_channel_new(mux, f->channel, port, MC_ESTABLISHED);
  mc->peer_window = window;
  mc->accept_due = TRUE;
  FerryChannel *ch = mux_channel_handle(mc);
  l->accept(&mux->base, ch, l->user_data);
}

static void on_data(FerryMux *mux, MuxChannel *mc, const MuxFrame *f)
{
  guint64 have_end = mc->recv_consumed + mc->recv_buf->len;
  guint64 end = f->offset + f->length;
  if (f->offset > have_end || end > mc->recv_consumed + mc->recv_window ||
      (mc->peer_shut && end > mc->peer_final)) {
    protocol_error(mux,
                   "DATA for channel %u at %" G_GUINT64_FORMAT "+%u: have %" G_GUINT64_FORMAT
                   ", window to %" G_GUINT64_FORMAT,
                   mc->id, f->offset, f->length, have_end, mc->recv_consumed + mc->recv_window);
    return;
  }
  if (end <= have_end)
    return; /* all of it was resent */
  gsize skip = (gsize)(have_end - f->offset);
  g_byte_array_append(mc->recv_buf, f->payload + skip, (guint)(f->length - skip));
  if (!mc->paused)
    schedule_deliver(mux);
}

static void on_ack(FerryMux *mux, MuxChannel *mc, const MuxFrame *f)
{
  guint32 window = mux_get32(f->payload);
  if (f->offset > mc->send_total || window > FERRY_MUX_MAX_WINDOW) {
    protocol_error(
        mux, "ACK for channel %u of %" G_GUINT64_FORMAT " bytes, %" G_GUINT64_FORMAT " written",
        mc->id, f->offset, mc->send_total);
    return;
  }
  mc->peer_window = window;
  gboolean all_acked = FALSE;
  if (f->offset > mc->send_acked) {
    g_byte_array_remove_range(mc->send_buf, 0, (guint)(f->offset - mc->send_acked));
    mc->send_acked = f->offset;
    if (mc->send_next < mc->send_acked)
      mc->send_next = mc->send_acked;
    all_acked = mc->send_acked == mc->send_total;
  }
  if (!mc_send_progress(mc, all_acked))
    return; /* closed from inside a handler: mc is gone */
  if (mc->handle == NULL && mc_finished(mc))
    mc_reset(mc, MUX_RESET_FINISHED, NULL);
}

static void on_frame(FerryMux *mux, const MuxFrame *f)
{
  if (f->type == MUX_HELLO) {
    /* An answer to our HELLO that crossed the peer's own: nothing new. A HELLO that asks
     * for one while we are in step: the peer started a new stream and this side's did
     * not break (a virtio-serial port whose host end moved to a migrated VM's QEMU), so
     * resume from the peer's offsets and answer. */
    if (f->offset == 0)
      on_hello(mux, f);
    return;
  }
  if (f->type == MUX_OPEN) {
    on_open(mux, f);
    return;
  }
  MuxChannel *mc = g_hash_table_lookup(mux->channels, GUINT_TO_POINTER(f->channel));
  if (mc == NULL) {
    /* A channel we have closed or never knew: tell the peer, unless it is a RESET. */
    if (f->type != MUX_RESET && f->type != MUX_REFUSE)
      queue_reset(mux, f->channel, MUX_RESET_UNKNOWN_CHANNEL);
    return;
  }
  switch (f->type) {
  case MUX_ACCEPT: {
    guint32 window = mux_get32(f->payload);
    if (mc->state != MC_OPENING || window > FERRY_MUX_MAX_WINDOW) {
      protocol_error(mux, "unexpected ACCEPT for channel %u", mc->id);
      return;
    }
    mc->state = MC_ESTABLISHED;
    mc->peer_window = window;
    FerryDialFunc done = g_steal_pointer(&mc->dial_done);
    if (done != NULL)
      done(&mux->base, mux_channel_handle(mc), NULL, mc->dial_data);
    break;
  }
  case MUX_REFUSE: {
    if (mc->state != MC_OPENING) {
      protocol_error(mux, "unexpected REFUSE for channel %u", mc->id);
      return;
    }
    g_autoptr(GError) refused = g_error_new(FERRY_ERROR, FERRY_ERROR_UNAVAILABLE,
                                            "mux: nobody listens on port %u", mc->port);
    mc_remove(mc, refused);
    break;
  }
  case MUX_DATA:
    if (mc->state != MC_ESTABLISHED) {
      protocol_error(mux, "DATA before ACCEPT on channel %u", mc->id);
      return;
    }
    on_data(mux, mc, f);
    break;
  case MUX_ACK:
    on_ack(mux, mc, f);
    break;
  case MUX_SHUTDOWN: {
    guint64 have_end = mc->recv_consumed + mc->recv_buf->len;
    if ((mc->peer_shut && f->offset != mc->peer_final) || f->offset < have_end) {
      protocol_error(mux, "SHUTDOWN of channel %u at %" G_GUINT64_FORMAT, mc->id, f->offset);
      return;
    }
    mc->peer_shut = TRUE;
    mc->peer_final = f->offset;
    schedule_deliver(mux);
    break;
  }
  case MUX_RESET: {
    guint32 reason = mux_get32(f->payload);
    g_autoptr(GError) error = NULL;
    if (reason != MUX_RESET_FINISHED)
      error = g_error_new(FERRY_ERROR, FERRY_ERROR_UNAVAILABLE,
                          "mux: channel %u (port %u) reset by peer (reason %u)", mc->id, mc->port,
                          reason);
    mc_remove(mc, error);
    break;
  }
  default:
    break;
  }
}

/* What we owe the peer and have not written: control frames and unsent output. */
static gsize owed_output(FerryMux *mux)
{
  return mux->control->len + (mux->stream != NULL ? ferry_stream_pending_output(mux->stream) : 0);
}

/* Handle the frames read, until back-pressure stops us (they wait in the parser). */
static void process_input(FerryMux *mux)
{
  FerryStream *s = mux->stream;
  while (mux->stream == s && s != NULL) {
    if (mux->control->len > CONTROL_MAX) {
      g_autoptr(GError) error =
          g_error_new(FERRY_ERROR, FERRY_ERROR_RESOURCE_EXHAUSTED,
                      "mux: the peer made us owe %u bytes of control frames", mux->control->len);
      drop_stream(mux, error);
      break;
    }
    if (owed_output(mux) > INPUT_STOP_WATER) {
      /* The peer does not read what its frames make us answer: stop reading it. */
      mux->input_stopped = TRUE;
      ferry_stream_set_reading(s, FALSE);
      break;
    }
    MuxFrame f;
    g_autoptr(GError) error = NULL;
    MuxParseResult r = mux_parser_next(mux->parser, &f, &error);
    if (r == MUX_PARSE_NEED_MORE)
      break;
    if (r == MUX_PARSE_ERROR) {
      drop_stream(mux, error);
      break;
    }
    if (!mux->synced) {
      on_hello(mux, &f); /* the parser hands out nothing else while hunting */
      continue;
    }
    on_frame(mux, &f);
  }
  pump(mux);
}

static void on_stream_data(FerryStream *s, const guint8 *data, gsize len, gpointer ud)
{
  FerryMux *mux = ud;
  mux_parser_feed(mux->parser, data, len);
  if (mux->stream == s)
    process_input(mux);
}

static void on_stream_closed(FerryStream *s, const GError *error, gpointer ud)
{
  FerryMux *mux = ud;
  if (mux->stream != s)
    return;
  drop_stream(mux, error);
}

static void on_stream_drained(FerryStream *s, gpointer ud)
{
  pump_full(ud, TRUE);
}

static const FerryStreamHandlers mux_stream_handlers = {
  .data = on_stream_data,
  .closed = on_stream_closed,
  .drained = on_stream_drained,
};

/* ---------------------------------------------------------------- stream -- */

static void drop_stream(FerryMux *mux, const GError *why)
{
  if (mux->stream == NULL)
    return;
  FerryStream *s = g_steal_pointer(&mux->stream);
  mux->synced = FALSE;
  mux->input_stopped = FALSE;
  g_byte_array_set_size(mux->control, 0);
  ferry_stream_close(s, NULL);
  ferry_stream_unref(s);
  if (why != NULL && mux->lost_func != NULL && !mux->freeing)
    mux->lost_func(mux, why, mux->lost_data);
}

static void send_hello(FerryMux *mux, gboolean reply)
{
  guint n = g_hash_table_size(mux->channels);
  g_autofree MuxHelloEntry *entries = g_new0(MuxHelloEntry, n + 1);
  guint i = 0;
  for (GList *l = mux->rr; l != NULL; l = l->next) {
    MuxChannel *mc = g_hash_table_lookup(mux->channels, l->data);
    if (mc == NULL)
      continue;
    MuxHelloEntry *e = &entries[i++];
    e->id = mc->id;
    e->port = mc->port;
    e->state = (mc->state == MC_ESTABLISHED ? MUX_STATE_ESTABLISHED : 0) |
               (mc->shut ? MUX_STATE_SHUT_SENT : 0) | (mc->peer_shut ? MUX_STATE_PEER_DONE : 0);
    e->consumed = mc->recv_consumed;
    e->window = mc->recv_window;
  }
  g_autoptr(GByteArray) out = g_byte_array_new();
  mux_hello_append(out, (guint32)mux->role, reply, entries, i);
  ferry_stream_write(mux->stream, out->data, out->len, NULL);
}

gboolean ferry_mux_attach(FerryMux *mux, int fd, GError **error)
{
  ferry_mux_detach(mux);
  /* Every stream the mux attaches watches its context, whatever is current now. */
  g_main_context_push_thread_default(mux->context);
  mux->stream = ferry_stream_new(fd, "mux", &mux_stream_handlers, mux, error);
  g_main_context_pop_thread_default(mux->context);
  if (mux->stream == NULL)
    return FALSE;
  mux_parser_reset(mux->parser);
  send_hello(mux, FALSE);
  return TRUE;
}

void ferry_mux_detach(FerryMux *mux)
{
  drop_stream(mux, NULL);
}

void ferry_mux_set_quiet(FerryMux *mux, gboolean quiet)
{
  mux->quiet = quiet;
  if (!quiet)
    pump(mux);
}

void ferry_mux_set_frozen(FerryMux *mux, gboolean frozen)
{
  mux->frozen = frozen;
  if (!frozen)
    schedule_deliver(mux);
}

gboolean ferry_mux_output_flushed(FerryMux *mux)
{
  return mux->stream == NULL || (ferry_stream_pending_output(mux->stream) == 0 &&
                                 ferry_stream_unread_output(mux->stream) == 0);
}

gboolean ferry_mux_is_attached(FerryMux *mux)
{
  return mux->stream != NULL;
}

gboolean ferry_mux_is_synced(FerryMux *mux)
{
  return mux->stream != NULL && mux->synced;
}

/* ------------------------------------------------------------ transport -- */

static gboolean mux_listen(FerryTransport *t, guint32 port, FerryAcceptFunc accept,
                           gpointer user_data, GError **error)
{
  FerryMux *mux = (FerryMux *)t;
  if (mux->freeing) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE, "mux: shut down");
    return FALSE;
  }
  if (g_hash_table_contains(mux->listeners, GUINT_TO_POINTER(port))) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_ALREADY_EXISTS, "mux: port %u is listened on",
                port);
    return FALSE;
  }
  Listener *l = g_new0(Listener, 1);
  l->accept = accept;
  l->user_data = user_data;
  g_hash_table_insert(mux->listeners, GUINT_TO_POINTER(port), l);
  return TRUE;
}

static void mux_unlisten(FerryTransport *t, guint32 port)
{
  FerryMux *mux = (FerryMux *)t;
  g_hash_table_remove(mux->listeners, GUINT_TO_POINTER(port));
}

typedef struct {
  FerryDialFunc done;
  gpointer user_data;
  GError *error;
} DialFailure;

static gboolean on_dial_failure(gpointer p)
{
  DialFailure *d = p;
  d->done(NULL, NULL, d->error, d->user_data);
  g_error_free(d->error);
  g_free(d);
  return G_SOURCE_REMOVE;
}

static void mux_dial(FerryTransport *t, guint32 port, FerryDialFunc done, gpointer user_data)
{
  FerryMux *mux = (FerryMux *)t;
  if (mux->freeing || g_hash_table_size(mux->channels) >= FERRY_MUX_MAX_CHANNELS ||
      mux->next_id == G_MAXUINT32 >> 1) {
    DialFailure *d = g_new0(DialFailure, 1);
    d->done = done;
    d->user_data = user_data;
    d->error = mux->freeing ? g_error_new(FERRY_ERROR, FERRY_ERROR_UNAVAILABLE, "mux: shut down")
                            : g_error_new(FERRY_ERROR, FERRY_ERROR_RESOURCE_EXHAUSTED,
                                          "mux: no more channels (%u open)",
                                          g_hash_table_size(mux->channels));
    g_source_unref(ferry_idle_new(mux->context, on_dial_failure, d)); /* frees itself */
    return;
  }
  guint32 id = mux->next_id++ | (mux->role == FERRY_MUX_HOST ? MUX_HOST_ID_BIT : 0);
  MuxChannel *mc = mux_channel_new(mux, id, port, MC_OPENING);
  mc->dial_done = done;
  mc->dial_data = user_data;
  mc->open_due = TRUE;
  pump(mux);
}

static void mux_transport_finalize(FerryTransport *t);

static const FerryTransportClass mux_transport_class = {
  .listen = mux_listen,
  .unlisten = mux_unlisten,
  .dial = mux_dial,
  .finalize = mux_transport_finalize,
};

/* ------------------------------------------------------------ lifecycle -- */

FerryMux *ferry_mux_new(FerryMuxRole role)
{
  FerryMux *mux = g_new0(FerryMux, 1);
  ferry_transport_init(&mux->base, &mux_transport_class);
  mux->role = role;
  mux->parser = mux_parser_new();
  mux->channels = g_hash_table_new(NULL, NULL);
  mux->listeners = g_hash_table_new_full(NULL, NULL, NULL, g_free);
  mux->control = g_byte_array_new();
  mux->context = g_main_context_ref_thread_default();
  mux->next_id = 1;
  mux->window = FERRY_MUX_DEFAULT_WINDOW;
  mux->send_buffer = FERRY_MUX_DEFAULT_SEND_BUFFER;
  return mux;
}

FerryTransport *ferry_mux_get_transport(FerryMux *mux)
{
  return &mux->base;
}

FerryMuxRole ferry_mux_get_role(FerryMux *mux)
{
  return mux->role;
}

/* Drop the stream and every channel; the mux answers nothing afterwards. */
static void mux_shut_down(FerryMux *mux)
{
  if (mux->freeing)
    return;
  drop_stream(mux, NULL);
  mux->freeing = TRUE;
  ferry_source_clear(&mux->deliver_source);
  ferry_source_clear(&mux->pump_source);
  g_autoptr(GError) gone = g_error_new(FERRY_ERROR, FERRY_ERROR_CANCELLED, "mux: freed");
  while (mux->rr != NULL) {
    MuxChannel *mc = g_hash_table_lookup(mux->channels, mux->rr->data);
    if (mc == NULL) {
      mux->rr = g_list_delete_link(mux->rr, mux->rr);
      continue;
    }
    mc_remove(mc, gone);
  }
  g_hash_table_remove_all(mux->listeners);
}

/* The transport's last reference went: free what the mux owns (the generic code frees
 * the block itself). */
static void mux_transport_finalize(FerryTransport *t)
{
  FerryMux *mux = (FerryMux *)t;
  mux_shut_down(mux);
  g_hash_table_unref(mux->channels);
  g_hash_table_unref(mux->listeners);
  g_byte_array_unref(mux->control);
  mux_parser_free(mux->parser);
  g_main_context_unref(mux->context);
}

/* Shut down now; the memory goes with the last transport reference (a FerryStdioPorts,
 * say, may still hold one: its calls then fail cleanly). */
void ferry_mux_free(FerryMux *mux)
{
  if (mux == NULL)
    return;
  mux_shut_down(mux);
  ferry_transport_unref(&mux->base);
}

void ferry_mux_set_lost_func(FerryMux *mux, FerryMuxLostFunc func, gpointer user_data)
{
  mux->lost_func = func;
  mux->lost_data = user_data;
}

void ferry_mux_set_synced_func(FerryMux *mux, FerryMuxSyncedFunc func, gpointer user_data)
{
  mux->synced_func = func;
  mux->synced_data = user_data;
}

guint ferry_mux_channel_count(FerryMux *mux)
{
  return g_hash_table_size(mux->channels);
}

void ferry_mux_set_window(FerryMux *mux, guint32 window)
{
  mux->window = CLAMP(window, 4096u, FERRY_MUX_MAX_WINDOW);
}

void ferry_mux_set_send_buffer(FerryMux *mux, gsize bytes)
{
  mux->send_buffer = MAX(bytes, (gsize)4096);
}
