/*
 * One live migration between two shims (include/ferry/migration.h, docs/migration.md
 * "The orchestration"): the Migration service's calls in their order on both sides,
 * each answer deciding the next call, and on any failure the way back.
 *
 * Before the source's STOP, a failure cancels both sides (the source's Cancel takes its
 * guest back). After it, the destination's Status says whether its QEMU was told to run
 * the guest: if not, the source's RESUME takes it back; if so, the source must never run
 * it again and stays stopped. Cleanup ends both sessions either way.
 */
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "ferry/error.h"
#include "ferry/fd.h"
#include "ferry/log.h"
#include "ferry/migration.h"
#include "ferry/migration/v1/status.pb-c.h"
#include "ferry/sandbox-state.h"
#include "ferry/source.h"
#include "google/protobuf/any.pb-c.h"
#include "hcsshim/migration.pb-c.h"

#define MIGRATION_SERVICE "Migration"
#define STATUS_SERVICE "ferry.migration.v1.Status"
#define DEFAULT_CALL_TIMEOUT_MS 120000
#define DEFAULT_TRANSFER_TIMEOUT_MS 600000
#define POLL_INTERVAL_MS 100
/* A Status poll, and each call of the way back to the destination (best effort: a
 * destination that does not answer is likely gone), wait this long at most. */
#define SHORT_CALL_TIMEOUT_NS (15 * G_TIME_SPAN_SECOND * 1000)
#define DEFAULT_STALL_TIMEOUT_MS 30000

enum { SRC, DST };

static const char *const side_names[] = { "source", "destination" };

struct FerryMigration {
  GMainContext *context;
  FerryTtrpcClient *client[2];
  char *session_id;
  char *sandbox_id;
  char *socket_dir;
  char *path[2]; /* the caller's memory stream paths, or NULL */
  InitializeOptions *init_options;
  InitializeOptions *destination_init_options; /* NULL: init_options */
  gint64 call_timeout_ns;
  guint transfer_timeout_ms;
  guint stall_timeout_ms;
  gint64 moved_us; /* when the transfer's bytes last moved */
  FerryMigrationHandlers handlers;
  gpointer user_data;

  FerryMigrationStage stage;
  FerryMigrationProgress progress;
  GPtrArray *pending; /* Call: answers not yet in */
  GPtrArray *idles;   /* GSource */
  guint32 stream[2];  /* Notifications calls, 0: none */
  struct StreamCtx *stream_ctx[2];
  Ferry__Migration__V1__SessionState polled_source; /* the source's, this poll round */
  GSource *poll_timer;
  gint64 transfer_deadline_us;
  FerryFdHandoff *handoff[2]; /* each end of the local memory stream, handed out */

  Google__Protobuf__Any *config;  /* the export (a copy) */
  Ferry__V1__SandboxState *state; /* ... decoded, for the bind handler */
  FinalizeSandboxResponse *stop;  /* the source STOP's answer (a copy) */
  gboolean session_on[2];         /* a call may have made a session on that side */
  gboolean binding;
  gboolean stop_sent;    /* the source's STOP went out */
  gboolean stopped;      /* ... and succeeded */
  gboolean resume_sent;  /* the destination's RESUME went out */
  gboolean cancel_asked; /* ferry_migration_cancel(), not acted on yet */
  gboolean tried_resume; /* the way back tried the source's RESUME */
  GError *error;         /* the first failure */
  FerryMigrationOutcome outcome;
  gboolean done;
};

const char *ferry_migration_stage_name(FerryMigrationStage stage)
{
  static const char *const names[] = { "export",  "import",   "bind", "prepare",
                                       "socket",  "transfer", "stop", "resume",
                                       "cleanup", "aborting", "done" };
  return (guint)stage < G_N_ELEMENTS(names) ? names[stage] : "?";
}

const char *ferry_migration_outcome_name(FerryMigrationOutcome outcome)
{
  static const char *const names[] = { "migrated", "recovered", "destination-failed", "lost" };
  return (guint)outcome < G_N_ELEMENTS(names) ? names[outcome] : "?";
}

static ProtobufCMessage *copy_message(const ProtobufCMessage *msg)
{
  gsize len = protobuf_c_message_get_packed_size(msg);
  g_autofree guint8 *buf = g_malloc(len + 1);
  protobuf_c_message_pack(msg, buf);
  return protobuf_c_message_unpack(msg->descriptor, NULL, len, buf);
}

/* ---------------------------------------------------------------- the loop -- */

typedef void (*Step)(FerryMigration *m);

typedef struct {
  FerryMigration *m;
  Step step;
  GSource *source;
} Later;

static gboolean on_later(gpointer ud)
{
  Later *l = ud;
  FerryMigration *m = l->m;
  Step step = l->step;
  g_ptr_array_remove_fast(m->idles, l->source); /* destroys and unrefs it, and l with it */
  step(m);
  return G_SOURCE_REMOVE;
}

static void later(FerryMigration *m, Step step)
{
  Later *l = g_new0(Later, 1);
  l->m = m;
  l->step = step;
  l->source = g_idle_source_new();
  g_source_set_callback(l->source, on_later, l, g_free);
  g_source_attach(l->source, m->context);
  g_ptr_array_add(m->idles, l->source);
}

static void source_destroy_unref(gpointer p)
{
  g_source_destroy(p);
  g_source_unref(p);
}

/* ------------------------------------------------------------------ calls -- */

typedef void (*Next)(FerryMigration *m, const ProtobufCMessage *response, const GError *error);

typedef struct {
  FerryMigration *m;
  int side;
  guint32 id;
  Next next;
} Call;

static void on_reply(FerryTtrpcClient *client, const ProtobufCMessage *response,
                     const GError *error, gpointer ud)
{
  Call *c = ud;
  FerryMigration *m = c->m;
  Next next = c->next;
  g_ptr_array_remove_fast(m->pending, c);
  g_free(c);
  next(m, response, error);
}

static void call_for(FerryMigration *m, int side, const char *service, const char *method,
                     const ProtobufCMessage *request, const ProtobufCMessageDescriptor *desc,
                     Next next, gint64 timeout_ns)
{
  Call *c = g_new0(Call, 1);
  c->m = m;
  c->side = side;
  c->next = next;
  FerryTtrpcCallOptions options = { .timeout_ns = MIN(timeout_ns, m->call_timeout_ns) };
  c->id = ferry_ttrpc_client_call(m->client[side], service, method, request, desc, &options,
                                  on_reply, c);
  g_ptr_array_add(m->pending, c);
}

/* Ferry's Status of the session on one side. */
static void ask_status(FerryMigration *m, int side, Next next)
{
  Ferry__Migration__V1__StatusRequest req = FERRY__MIGRATION__V1__STATUS_REQUEST__INIT;
  req.session_id = m->session_id;
  call_for(m, side, STATUS_SERVICE, "Status", &req.base,
           &ferry__migration__v1__status_response__descriptor, next, SHORT_CALL_TIMEOUT_NS);
}

static void call(FerryMigration *m, int side, const char *service, const char *method,
                 const ProtobufCMessage *request, const ProtobufCMessageDescriptor *desc, Next next)
{
  call_for(m, side, service, method, request, desc, next, m->call_timeout_ns);
}

static void forget_calls(FerryMigration *m)
{
  for (guint i = 0; i < m->pending->len; i++) {
    Call *c = m->pending->pdata[i];
    ferry_ttrpc_client_cancel(m->client[c->side], c->id);
    g_free(c);
  }
  g_ptr_array_set_size(m->pending, 0);
}

/* --------------------------------------------------------------- progress -- */

static void report(FerryMigration *m)
{
  if (m->handlers.progress != NULL)
    m->handlers.progress(m, &m->progress, m->user_data);
}

static void set_stage(FerryMigration *m, FerryMigrationStage stage)
{
  m->stage = stage;
  m->progress.stage = stage;
  report(m);
}

typedef struct StreamCtx {
  FerryMigration *m;
  int side;
} StreamCtx;

static void on_note(FerryTtrpcClient *client, const ProtobufCMessage *message, gpointer ud)
{
  StreamCtx *s = ud;
  const NotificationsResponse *n = (const NotificationsResponse *)message;
  if (n->notification == NULL)
    return;
  s->m->progress.phase = n->notification->phase;
  s->m->progress.phase_from_destination = s->side == DST;
  if (s->side == DST && n->notification->phase == PHASE__PHASE_BLACKOUT_EXITED &&
      n->notification->phase_details_case == NOTIFICATION__PHASE_DETAILS_BLACKOUT_EXITED &&
      n->notification->blackout_exited != NULL)
    s->m->progress.blackout_ms = n->notification->blackout_exited->blackout_duration_milliseconds;
  report(s->m);
}

static void on_stream_end(FerryTtrpcClient *client, const ProtobufCMessage *response,
                          const GError *error, gpointer ud)
{
  StreamCtx *s = ud;
  s->m->stream[s->side] = 0;
  s->m->stream_ctx[s->side] = NULL;
  g_free(s);
}

/* Progress only: decisions come from the answers and from Status, which a lost
 * stream cannot hide. */
static void subscribe(FerryMigration *m, int side)
{
  StreamCtx *s = g_new0(StreamCtx, 1);
  s->m = m;
  s->side = side;
  NotificationsRequest req = NOTIFICATIONS_REQUEST__INIT;
  req.session_id = m->session_id;
  m->stream_ctx[side] = s;
  m->stream[side] = ferry_ttrpc_client_stream(m->client[side], MIGRATION_SERVICE, "Notifications",
                                              &req.base, &notifications_response__descriptor, NULL,
                                              on_note, on_stream_end, s);
}

static void unsubscribe(FerryMigration *m)
{
  for (int side = SRC; side <= DST; side++) {
    if (m->stream[side] == 0)
      continue;
    /* Cancelled, its callbacks never run: its context goes here. */
    ferry_ttrpc_client_cancel(m->client[side], m->stream[side]);
    m->stream[side] = 0;
    g_clear_pointer(&m->stream_ctx[side], g_free);
  }
}

/* ------------------------------------------------------- the memory stream -- */

static void handoffs_clear(FerryMigration *m)
{
  for (int side = SRC; side <= DST; side++)
    g_clear_pointer(&m->handoff[side], ferry_fd_handoff_free);
}

/* A socket pair, each end served at its own path under socket_dir. */
static gboolean handoffs_open(FerryMigration *m, GError **error)
{
  int pair[2];
  if (!ferry_socketpair(pair, FALSE, error))
    return FALSE;
  for (int side = SRC; side <= DST; side++) {
    g_autofree char *path =
        g_strdup_printf("%s/%s-%s.sock", m->socket_dir, m->session_id, side_names[side]);
    m->handoff[side] = ferry_fd_handoff_new(path, pair[side], error);
    if (m->handoff[side] == NULL) {
      if (side == SRC)
        close(pair[DST]);
      return FALSE;
    }
  }
  return TRUE;
}

/* ------------------------------------------------------------ the abort -- */

static void finish(FerryMigration *m, FerryMigrationOutcome outcome)
{
  forget_calls(m);
  ferry_source_clear(&m->poll_timer);
  handoffs_clear(m);
  m->outcome = outcome;
  m->done = TRUE;
  set_stage(m, FERRY_MIGRATION_STAGE_DONE);
  if (m->handlers.done != NULL)
    m->handlers.done(m, outcome, m->error, m->user_data);
}

static void add_error(FerryMigration *m, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
static void add_error(FerryMigration *m, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  g_autofree char *more = g_strdup_vprintf(fmt, ap);
  va_end(ap);
  if (m->error == NULL)
    m->error = g_error_new_literal(FERRY_ERROR, FERRY_ERROR_ABORTED, more);
  else
    g_prefix_error(&m->error, "%s; ", more);
}

static void abort_cleanup_dst(FerryMigration *m, const ProtobufCMessage *r, const GError *e);

static void cleanup_side(FerryMigration *m, int side, Next next)
{
  CleanupRequest req = CLEANUP_REQUEST__INIT;
  req.session_id = m->session_id;
  gboolean aborting = m->stage == FERRY_MIGRATION_STAGE_ABORTING;
  call_for(m, side, MIGRATION_SERVICE, "Cleanup", &req.base, &cleanup_response__descriptor, next,
           aborting && side == DST ? SHORT_CALL_TIMEOUT_NS : m->call_timeout_ns);
}

static void abort_done(FerryMigration *m, const ProtobufCMessage *r, const GError *e)
{
  if (e != NULL && e->code != FERRY_ERROR_NOT_FOUND)
    ferry_log(FERRY_LOG_DEBUG, "migration: the destination's Cleanup failed", "session",
              m->session_id, "error", e->message, NULL);
  finish(m, m->outcome);
}

static void abort_cleanup_dst(FerryMigration *m, const ProtobufCMessage *r, const GError *e)
{
  if (e != NULL && e->code != FERRY_ERROR_NOT_FOUND)
    ferry_log(FERRY_LOG_DEBUG, "migration: the source's Cleanup failed", "session", m->session_id,
              "error", e->message, NULL);
  if (!m->session_on[DST]) {
    finish(m, m->outcome);
    return;
  }
  cleanup_side(m, DST, abort_done);
}

static void abort_cleanup(FerryMigration *m)
{
  if (!m->session_on[SRC]) {
    abort_cleanup_dst(m, NULL, NULL);
    return;
  }
  cleanup_side(m, SRC, abort_cleanup_dst);
}

/* The source's answer to taking the guest back decides the outcome. */
static void source_back(FerryMigration *m);
static void cancel_destination(FerryMigration *m);

static void on_source_back(FerryMigration *m, const ProtobufCMessage *r, const GError *e)
{
  if (e != NULL && e->code == FERRY_ERROR_FAILED_PRECONDITION && m->stop_sent && !m->tried_resume) {
    /* A Cancel refused after a STOP went out: it went through (its answer was lost). */
    m->stopped = TRUE;
    source_back(m);
    return;
  }
  if (e == NULL || e->code == FERRY_ERROR_NOT_FOUND) {
    /* NOT_FOUND: the source never made the session, so it never stopped. */
    m->outcome = FERRY_MIGRATION_OUTCOME_RECOVERED;
  } else {
    m->outcome = FERRY_MIGRATION_OUTCOME_LOST;
    add_error(m, "the source could not take the sandbox back: %s", e->message);
  }
  cancel_destination(m);
}

static void source_back(FerryMigration *m)
{
  if (!m->session_on[SRC]) {
    on_source_back(m, NULL, NULL);
    return;
  }
  if (m->stopped) {
    m->tried_resume = TRUE;
    FinalizeSandboxRequest req = FINALIZE_SANDBOX_REQUEST__INIT;
    req.session_id = m->session_id;
    req.action = FINALIZE_ACTION__FINALIZE_ACTION_RESUME;
    call(m, SRC, MIGRATION_SERVICE, "FinalizeSandbox", &req.base,
         &finalize_sandbox_response__descriptor, on_source_back);
    return;
  }
  CancelRequest req = CANCEL_REQUEST__INIT;
  req.session_id = m->session_id;
  call(m, SRC, MIGRATION_SERVICE, "Cancel", &req.base, &cancel_response__descriptor,
       on_source_back);
}

static void on_destination_cancelled(FerryMigration *m, const ProtobufCMessage *r, const GError *e)
{
  if (e != NULL && e->code != FERRY_ERROR_NOT_FOUND)
    ferry_log(FERRY_LOG_DEBUG, "migration: the destination's Cancel failed", "session",
              m->session_id, "error", e->message, NULL);
  abort_cleanup(m);
}

/* After the source decided: the destination drops what it has (best effort: it may be
 * gone, or cut off), then Cleanup on both. */
static void cancel_destination(FerryMigration *m)
{
  if (!m->session_on[DST]) {
    abort_cleanup(m);
    return;
  }
  CancelRequest req = CANCEL_REQUEST__INIT;
  req.session_id = m->session_id;
  call_for(m, DST, MIGRATION_SERVICE, "Cancel", &req.base, &cancel_response__descriptor,
           on_destination_cancelled, SHORT_CALL_TIMEOUT_NS);
}

static void on_destination_status(FerryMigration *m, const ProtobufCMessage *r, const GError *e)
{
  const Ferry__Migration__V1__StatusResponse *st = (const void *)r;
  /* Unreachable: its shim is gone, and its QEMU with it (PR_SET_PDEATHSIG), or cut off
   * before it was told to run the guest (only this orchestration tells it). */
  if (st == NULL || !st->guest_ran) {
    source_back(m);
    return;
  }
  m->outcome = FERRY_MIGRATION_OUTCOME_DESTINATION_FAILED;
  add_error(m, "the destination ran the guest: the source stays stopped");
  abort_cleanup(m);
}

/* Something failed (`error`, or a cancel): the way back from where we are. */
static void fail(FerryMigration *m, const char *what, const GError *error)
{
  if (m->done || m->stage == FERRY_MIGRATION_STAGE_ABORTING)
    return;
  if (m->error == NULL) {
    m->error = error != NULL ? g_error_copy(error)
                             : g_error_new_literal(FERRY_ERROR, FERRY_ERROR_ABORTED, "failed");
    g_prefix_error(&m->error, "%s: ", what);
  }
  forget_calls(m);
  ferry_source_clear(&m->poll_timer);
  handoffs_clear(m);
  m->binding = FALSE;
  ferry_log(FERRY_LOG_DEBUG, "migration: failed, going back", "session", m->session_id, "stage",
            ferry_migration_stage_name(m->stage), "error", m->error->message, NULL);
  set_stage(m, FERRY_MIGRATION_STAGE_ABORTING);
  if (!m->stop_sent) {
    source_back(m); /* the source first: it is the one that matters, and likely near */
    return;
  }
  ask_status(m, DST, on_destination_status);
}

/* ------------------------------------------------------------ the sequence -- */

/* The source's last figures (its session, cleaned up, keeps them): for the report. */
static gboolean take_figures(FerryMigration *m, const Ferry__Migration__V1__StatusResponse *st);

static void on_final_figures(FerryMigration *m, const ProtobufCMessage *r, const GError *e)
{
  const Ferry__Migration__V1__StatusResponse *st = (const void *)r;
  if (st != NULL && st->bytes_transferred > 0)
    take_figures(m, st);
  finish(m, FERRY_MIGRATION_OUTCOME_MIGRATED);
}

/* A MIGRATED outcome's error says what did not clean up. */
static void cleanup_done(FerryMigration *m, const ProtobufCMessage *r, const GError *e)
{
  if (e != NULL)
    add_error(m, "the destination's Cleanup: %s", e->message);
  ask_status(m, SRC, on_final_figures);
}

static void on_source_cleaned(FerryMigration *m, const ProtobufCMessage *r, const GError *e)
{
  if (e != NULL)
    add_error(m, "the source's Cleanup (its paused QEMU may remain): %s", e->message);
  cleanup_side(m, DST, cleanup_done);
}

static void on_resumed(FerryMigration *m, const ProtobufCMessage *r, const GError *e)
{
  if (e != NULL) {
    fail(m, "the destination's FinalizeSandbox RESUME", e);
    return;
  }
  set_stage(m, FERRY_MIGRATION_STAGE_CLEANUP);
  cleanup_side(m, SRC, on_source_cleaned);
}

static void on_stopped(FerryMigration *m, const ProtobufCMessage *r, const GError *e)
{
  if (e != NULL) {
    /* Whether it stopped is unknown: the way back tries Cancel, then RESUME. */
    fail(m, "the source's FinalizeSandbox STOP", e);
    return;
  }
  m->stopped = TRUE;
  m->stop = (FinalizeSandboxResponse *)copy_message(r);
  if (m->cancel_asked) {
    /* The last moment a cancel can take: the source RESUMEs. */
    g_autoptr(GError) cancelled =
        g_error_new_literal(FERRY_ERROR, FERRY_ERROR_CANCELLED, "cancelled");
    fail(m, "the migration", cancelled);
    return;
  }
  m->resume_sent = TRUE; /* from here on a cancel is too late */
  set_stage(m, FERRY_MIGRATION_STAGE_RESUME);
  FinalizeSandboxRequest req = FINALIZE_SANDBOX_REQUEST__INIT;
  req.session_id = m->session_id;
  req.action = FINALIZE_ACTION__FINALIZE_ACTION_RESUME;
  req.ferry_final_channels = m->stop != NULL ? m->stop->ferry_final_channels : NULL;
  call(m, DST, MIGRATION_SERVICE, "FinalizeSandbox", &req.base,
       &finalize_sandbox_response__descriptor, on_resumed);
}

static void do_stop(FerryMigration *m)
{
  set_stage(m, FERRY_MIGRATION_STAGE_STOP);
  m->stop_sent = TRUE;
  FinalizeSandboxRequest req = FINALIZE_SANDBOX_REQUEST__INIT;
  req.session_id = m->session_id;
  req.action = FINALIZE_ACTION__FINALIZE_ACTION_STOP;
  call(m, SRC, MIGRATION_SERVICE, "FinalizeSandbox", &req.base,
       &finalize_sandbox_response__descriptor, on_stopped);
}

/* The transfer: Status of both sides until both completed or either failed. */
/* The source's transfer figures into the progress; whether they moved. */
static gboolean take_figures(FerryMigration *m, const Ferry__Migration__V1__StatusResponse *st)
{
  FerryMigrationProgress *p = &m->progress;
  gboolean moved = st->bytes_transferred != p->bytes_transferred ||
                   st->bytes_total != p->bytes_total || st->bytes_remaining != p->bytes_remaining ||
                   st->passes != p->passes || st->downtime_ms != p->downtime_ms;
  p->bytes_transferred = st->bytes_transferred;
  p->bytes_total = st->bytes_total;
  p->bytes_remaining = st->bytes_remaining;
  p->rate_mbps = st->rate_mbps;
  p->passes = st->passes;
  p->expected_downtime_ms = st->expected_downtime_ms;
  p->downtime_ms = st->downtime_ms;
  return moved;
}

static gboolean on_poll_timer(gpointer ud);

static gboolean side_failed(FerryMigration *m, int side,
                            const Ferry__Migration__V1__StatusResponse *st)
{
  if (st->state != FERRY__MIGRATION__V1__SESSION_STATE__SESSION_STATE_FAILED &&
      st->state != FERRY__MIGRATION__V1__SESSION_STATE__SESSION_STATE_CANCELLED)
    return FALSE;
  g_autoptr(GError) e = g_error_new(
      FERRY_ERROR, st->last_error != NULL ? st->last_error->code : FERRY_ERROR_ABORTED, "%s",
      st->last_error != NULL && st->last_error->message != NULL ? st->last_error->message
      : st->state == FERRY__MIGRATION__V1__SESSION_STATE__SESSION_STATE_CANCELLED ? "cancelled"
                                                                                  : "failed");
  fail(m, side == SRC ? "the source's transfer" : "the destination's transfer", e);
  return TRUE;
}

static void poll_again(FerryMigration *m)
{
  gint64 now = g_get_monotonic_time();
  if (now - m->moved_us > (gint64)m->stall_timeout_ms * 1000) {
    g_autoptr(GError) e = g_error_new(FERRY_ERROR, FERRY_ERROR_DEADLINE_EXCEEDED,
                                      "no memory moved for %u ms (the link, or a peer, is gone)",
                                      m->stall_timeout_ms);
    fail(m, "the transfer stalled", e);
    return;
  }
  if (now > m->transfer_deadline_us) {
    g_autoptr(GError) e = g_error_new(FERRY_ERROR, FERRY_ERROR_DEADLINE_EXCEEDED,
                                      "it did not complete in %u ms", m->transfer_timeout_ms);
    fail(m, "the transfer", e);
    return;
  }
  m->poll_timer = ferry_timeout_new(m->context, POLL_INTERVAL_MS, on_poll_timer, m);
}

static void on_dst_status(FerryMigration *m, const ProtobufCMessage *r, const GError *e)
{
  if (e != NULL) {
    fail(m, "the destination's Status", e);
    return;
  }
  const Ferry__Migration__V1__StatusResponse *st = (const void *)r;
  if (side_failed(m, DST, st))
    return;
  gboolean both =
      st->state == FERRY__MIGRATION__V1__SESSION_STATE__SESSION_STATE_TRANSFER_COMPLETED &&
      m->polled_source == FERRY__MIGRATION__V1__SESSION_STATE__SESSION_STATE_TRANSFER_COMPLETED;
  if (both)
    do_stop(m);
  else
    poll_again(m);
}

static void on_src_status(FerryMigration *m, const ProtobufCMessage *r, const GError *e)
{
  if (e != NULL) {
    fail(m, "the source's Status", e);
    return;
  }
  const Ferry__Migration__V1__StatusResponse *st = (const void *)r;
  if (side_failed(m, SRC, st))
    return;
  m->polled_source = st->state;
  if (st->bytes_transferred != m->progress.bytes_transferred ||
      st->state == FERRY__MIGRATION__V1__SESSION_STATE__SESSION_STATE_TRANSFER_COMPLETED)
    m->moved_us = g_get_monotonic_time();
  if (take_figures(m, st))
    report(m);
  ask_status(m, DST, on_dst_status);
}

static gboolean on_poll_timer(gpointer ud)
{
  FerryMigration *m = ud;
  ferry_source_clear(&m->poll_timer);
  ask_status(m, SRC, on_src_status);
  return G_SOURCE_REMOVE;
}

static void on_src_transfer(FerryMigration *m, const ProtobufCMessage *r, const GError *e)
{
  if (e != NULL) {
    fail(m, "the source's TransferSandbox", e);
    return;
  }
  m->transfer_deadline_us = g_get_monotonic_time() + (gint64)m->transfer_timeout_ms * 1000;
  m->moved_us = g_get_monotonic_time();
  poll_again(m);
}

static void on_dst_transfer(FerryMigration *m, const ProtobufCMessage *r, const GError *e)
{
  if (e != NULL) {
    fail(m, "the destination's TransferSandbox", e);
    return;
  }
  TransferSandboxRequest req = TRANSFER_SANDBOX_REQUEST__INIT;
  req.session_id = m->session_id;
  call(m, SRC, MIGRATION_SERVICE, "TransferSandbox", &req.base,
       &transfer_sandbox_response__descriptor, on_src_transfer);
}

static void on_src_socket(FerryMigration *m, const ProtobufCMessage *r, const GError *e)
{
  if (e != NULL) {
    fail(m, "the source's CreateDuplicateSocket", e);
    return;
  }
  handoffs_clear(m); /* both shims hold their ends */
  set_stage(m, FERRY_MIGRATION_STAGE_TRANSFER);
  TransferSandboxRequest req = TRANSFER_SANDBOX_REQUEST__INIT;
  req.session_id = m->session_id;
  call(m, DST, MIGRATION_SERVICE, "TransferSandbox", &req.base,
       &transfer_sandbox_response__descriptor, on_dst_transfer);
}

static void duplicate_socket(FerryMigration *m, int side, Next next)
{
  const char *path =
      m->path[side] != NULL ? m->path[side] : ferry_fd_handoff_path(m->handoff[side]);
  CreateDuplicateSocketRequest req = CREATE_DUPLICATE_SOCKET_REQUEST__INIT;
  req.session_id = m->session_id;
  req.protocol_info.data = (uint8_t *)path;
  req.protocol_info.len = strlen(path);
  call(m, side, MIGRATION_SERVICE, "CreateDuplicateSocket", &req.base,
       &create_duplicate_socket_response__descriptor, next);
}

static void on_dst_socket(FerryMigration *m, const ProtobufCMessage *r, const GError *e)
{
  if (e != NULL) {
    fail(m, "the destination's CreateDuplicateSocket", e);
    return;
  }
  duplicate_socket(m, SRC, on_src_socket);
}

static void on_prepared(FerryMigration *m, const ProtobufCMessage *r, const GError *e)
{
  if (e != NULL) {
    fail(m, "the destination's PrepareSandbox", e);
    return;
  }
  set_stage(m, FERRY_MIGRATION_STAGE_SOCKET);
  g_autoptr(GError) error = NULL;
  if (m->path[SRC] == NULL && !handoffs_open(m, &error)) {
    fail(m, "the memory stream", error);
    return;
  }
  duplicate_socket(m, DST, on_dst_socket);
}

static void do_prepare(FerryMigration *m)
{
  set_stage(m, FERRY_MIGRATION_STAGE_PREPARE);
  PrepareSandboxRequest req = PREPARE_SANDBOX_REQUEST__INIT;
  req.session_id = m->session_id;
  req.init_options =
      m->destination_init_options != NULL ? m->destination_init_options : m->init_options;
  call(m, DST, MIGRATION_SERVICE, "PrepareSandbox", &req.base,
       &prepare_sandbox_response__descriptor, on_prepared);
}

static void on_imported(FerryMigration *m, const ProtobufCMessage *r, const GError *e)
{
  if (e != NULL) {
    fail(m, "the destination's ImportSandbox", e);
    return;
  }
  subscribe(m, DST);
  if (m->handlers.bind == NULL) {
    do_prepare(m);
    return;
  }
  set_stage(m, FERRY_MIGRATION_STAGE_BIND);
  m->binding = TRUE;
  m->handlers.bind(m, m->state, m->user_data);
}

static void on_exported(FerryMigration *m, const ProtobufCMessage *r, const GError *e)
{
  if (e != NULL) {
    fail(m, "the source's PrepareAndExportSandbox", e);
    return;
  }
  const PrepareAndExportSandboxResponse *resp = (const void *)r;
  g_autoptr(GError) error = NULL;
  if (resp->config == NULL)
    g_set_error(&error, FERRY_ERROR, FERRY_ERROR_INTERNAL, "the answer has no config");
  else
    m->state = ferry_sandbox_state_unpack(resp->config->type_url, resp->config->value.data,
                                          resp->config->value.len, &error);
  if (m->state == NULL) {
    fail(m, "the source's export", error);
    return;
  }
  m->config = (Google__Protobuf__Any *)copy_message(&resp->config->base);
  subscribe(m, SRC);
  set_stage(m, FERRY_MIGRATION_STAGE_IMPORT);
  m->session_on[DST] = TRUE;
  ImportSandboxRequest req = IMPORT_SANDBOX_REQUEST__INIT;
  req.session_id = m->session_id;
  req.sandbox_id = m->sandbox_id != NULL ? m->sandbox_id : m->state->sandbox_id;
  req.config = m->config;
  call(m, DST, MIGRATION_SERVICE, "ImportSandbox", &req.base, &import_sandbox_response__descriptor,
       on_imported);
}

static void do_export(FerryMigration *m)
{
  set_stage(m, FERRY_MIGRATION_STAGE_EXPORT);
  m->session_on[SRC] = TRUE;
  PrepareAndExportSandboxRequest req = PREPARE_AND_EXPORT_SANDBOX_REQUEST__INIT;
  req.session_id = m->session_id;
  req.init_options = m->init_options;
  call(m, SRC, MIGRATION_SERVICE, "PrepareAndExportSandbox", &req.base,
       &prepare_and_export_sandbox_response__descriptor, on_exported);
}

/* ----------------------------------------------------------------- the API -- */

FerryMigration *ferry_migration_start(FerryTtrpcClient *source, FerryTtrpcClient *destination,
                                      const FerryMigrationConfig *config,
                                      const FerryMigrationHandlers *handlers, gpointer user_data,
                                      GError **error)
{
  if (config->session_id == NULL || config->session_id[0] == '\0') {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "migration: no session id");
    return NULL;
  }
  if ((config->source_socket_path == NULL) != (config->destination_socket_path == NULL)) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                "migration: give both memory stream paths or neither");
    return NULL;
  }
  if (config->source_socket_path == NULL) {
    struct sockaddr_un addr;
    gsize longest = (config->socket_dir != NULL ? strlen(config->socket_dir) : 0) + 2 +
                    strlen(config->session_id) + strlen("-destination.sock");
    if (config->socket_dir == NULL || !g_file_test(config->socket_dir, G_FILE_TEST_IS_DIR)) {
      g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                  "migration: socket_dir %s is not a directory",
                  config->socket_dir != NULL ? config->socket_dir : "(none)");
      return NULL;
    }
    if (longest >= sizeof(addr.sun_path)) {
      g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                  "migration: socket_dir and session id make a unix socket path over %zu bytes",
                  sizeof(addr.sun_path) - 1);
      return NULL;
    }
  }
  FerryMigration *m = g_new0(FerryMigration, 1);
  m->context = g_main_context_ref_thread_default();
  m->client[SRC] = source;
  m->client[DST] = destination;
  m->session_id = g_strdup(config->session_id);
  m->sandbox_id = g_strdup(config->sandbox_id);
  m->socket_dir = g_strdup(config->socket_dir);
  m->path[SRC] = g_strdup(config->source_socket_path);
  m->path[DST] = g_strdup(config->destination_socket_path);
  if (config->init_options != NULL)
    m->init_options = (InitializeOptions *)copy_message(&config->init_options->base);
  if (config->destination_init_options != NULL)
    m->destination_init_options =
        (InitializeOptions *)copy_message(&config->destination_init_options->base);
  m->call_timeout_ns =
      (gint64)(config->call_timeout_ms != 0 ? config->call_timeout_ms : DEFAULT_CALL_TIMEOUT_MS) *
      1000000;
  m->transfer_timeout_ms =
      config->transfer_timeout_ms != 0 ? config->transfer_timeout_ms : DEFAULT_TRANSFER_TIMEOUT_MS;
  m->stall_timeout_ms =
      config->stall_timeout_ms != 0 ? config->stall_timeout_ms : DEFAULT_STALL_TIMEOUT_MS;
  if (handlers != NULL)
    m->handlers = *handlers;
  m->user_data = user_data;
  m->pending = g_ptr_array_new();
  m->idles = g_ptr_array_new_with_free_func(source_destroy_unref);
  later(m, do_export);
  return m;
}

static void after_bind(FerryMigration *m)
{
  if (m->stage == FERRY_MIGRATION_STAGE_BIND)
    do_prepare(m);
}

static void bind_failed(FerryMigration *m)
{
  fail(m, "binding the imported containers", m->error);
}

void ferry_migration_bound(FerryMigration *m, const GError *error)
{
  if (!m->binding)
    return;
  m->binding = FALSE;
  if (error != NULL && m->error == NULL) {
    m->error = g_error_copy(error);
    g_prefix_error(&m->error, "binding the imported containers: ");
  }
  later(m, error != NULL ? bind_failed : after_bind);
}

static void cancel_now(FerryMigration *m)
{
  if (m->resume_sent)
    return; /* on_stopped saw the request first, or it came too late */
  g_autoptr(GError) e = g_error_new_literal(FERRY_ERROR, FERRY_ERROR_CANCELLED, "cancelled");
  fail(m, "the migration", e);
}

gboolean ferry_migration_cancel(FerryMigration *m)
{
  if (m->done || m->resume_sent || m->stage == FERRY_MIGRATION_STAGE_ABORTING)
    return FALSE;
  if (m->cancel_asked)
    return TRUE;
  m->cancel_asked = TRUE;
  m->binding = FALSE;
  later(m, cancel_now);
  return TRUE;
}

FerryMigrationStage ferry_migration_get_stage(FerryMigration *m)
{
  return m->stage;
}

void ferry_migration_free(FerryMigration *m)
{
  if (m == NULL)
    return;
  forget_calls(m);
  unsubscribe(m);
  ferry_source_clear(&m->poll_timer);
  handoffs_clear(m);
  g_ptr_array_unref(m->idles);
  g_ptr_array_unref(m->pending);
  if (m->config != NULL)
    protobuf_c_message_free_unpacked(&m->config->base, NULL);
  if (m->state != NULL)
    protobuf_c_message_free_unpacked(&m->state->base, NULL);
  if (m->stop != NULL)
    protobuf_c_message_free_unpacked(&m->stop->base, NULL);
  if (m->init_options != NULL)
    protobuf_c_message_free_unpacked(&m->init_options->base, NULL);
  if (m->destination_init_options != NULL)
    protobuf_c_message_free_unpacked(&m->destination_init_options->base, NULL);
  g_clear_error(&m->error);
  g_free(m->session_id);
  g_free(m->sandbox_id);
  g_free(m->socket_dir);
  g_free(m->path[SRC]);
  g_free(m->path[DST]);
  g_main_context_unref(m->context);
  g_free(m);
}
