/* Task events to containerd (include/ferry/shim-events.h). */
#include "ferry/shim-events.h"

#include "containerd/services/events/ttrpc/v1/events.pb-c.h"
#include "containerd/types/event.pb-c.h"
#include "ferry/log.h"
#include "ferry/source.h"
#include "ferry/ttrpc.h"

/* One Forward's deadline, as containerd's shims use. */
#define FORWARD_TIMEOUT_NS (5 * G_GINT64_CONSTANT(1000000000))
/* After a failure: retry soon, backing off to once a second. */
#define RETRY_FIRST_MS 50
#define RETRY_MAX_MS 1000

typedef struct {
  char *topic;
  char *type_url;
  GBytes *value; /* the packed event */
  gint64 timestamp_us;
} Event;

struct FerryShimEvents {
  GMainContext *context;
  char *address;
  char *namespace;
  GQueue queue; /* Event */
  gboolean holding;
  GQueue held; /* Event: published while holding, not sent yet */
  guint dropped;
  FerryTtrpcClient *client;
  gboolean in_flight; /* the head is being forwarded */
  gboolean broken;    /* the last forward failed: reconnect before the next */
  guint32 call;
  GSource *retry;
  guint retry_ms;
};

static void event_free(gpointer p)
{
  Event *e = p;
  g_free(e->topic);
  g_free(e->type_url);
  g_bytes_unref(e->value);
  g_free(e);
}

static void send_head(FerryShimEvents *ev);

static gboolean on_retry(gpointer ud)
{
  FerryShimEvents *ev = ud;
  ferry_source_clear(&ev->retry);
  send_head(ev);
  return G_SOURCE_REMOVE;
}

static void schedule_retry(FerryShimEvents *ev)
{
  ev->retry_ms = ev->retry_ms == 0 ? RETRY_FIRST_MS : MIN(ev->retry_ms * 2, RETRY_MAX_MS);
  if (ev->retry == NULL)
    ev->retry = ferry_timeout_new(ev->context, ev->retry_ms, on_retry, ev);
}

static void on_forwarded(FerryTtrpcClient *client, const ProtobufCMessage *response,
                         const GError *error, gpointer ud)
{
  FerryShimEvents *ev = ud;
  ev->in_flight = FALSE;
  if (error != NULL) {
    ferry_log(FERRY_LOG_DEBUG, "shim events: forward failed; will retry", "error", error->message,
              NULL);
    /* A new connection next time (containerd may have restarted), made from the retry
     * timer: not from inside this client's own callback. */
    ev->broken = TRUE;
    schedule_retry(ev);
    return;
  }
  ev->retry_ms = 0;
  event_free(g_queue_pop_head(&ev->queue));
  send_head(ev);
}

static void send_head(FerryShimEvents *ev)
{
  Event *e = g_queue_peek_head(&ev->queue);
  if (e == NULL || ev->in_flight || ev->retry != NULL)
    return;
  if (ev->broken) {
    ev->broken = FALSE;
    g_clear_pointer(&ev->client, ferry_ttrpc_client_free);
  }
  if (ev->client == NULL) {
    g_autoptr(GError) error = NULL;
    ev->client = ferry_ttrpc_client_connect_unix(ev->address, &error);
    if (ev->client == NULL) {
      schedule_retry(ev);
      return;
    }
  }
  Google__Protobuf__Timestamp ts = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
  ts.seconds = e->timestamp_us / G_USEC_PER_SEC;
  ts.nanos = (int32_t)((e->timestamp_us % G_USEC_PER_SEC) * 1000);
  Google__Protobuf__Any any = GOOGLE__PROTOBUF__ANY__INIT;
  any.type_url = e->type_url;
  gsize len = 0;
  any.value.data = (uint8_t *)g_bytes_get_data(e->value, &len);
  any.value.len = len;
  Containerd__Types__Envelope envelope = CONTAINERD__TYPES__ENVELOPE__INIT;
  envelope.timestamp = &ts;
  envelope.namespace_ = ev->namespace;
  envelope.topic = e->topic;
  envelope.event = &any;
  Containerd__Services__Events__Ttrpc__V1__ForwardRequest req =
      CONTAINERD__SERVICES__EVENTS__TTRPC__V1__FORWARD_REQUEST__INIT;
  req.envelope = &envelope;
  FerryTtrpcCallOptions options = { .timeout_ns = FORWARD_TIMEOUT_NS };
  ev->in_flight = TRUE;
  ev->call = ferry_ttrpc_client_call(ev->client, "containerd.services.events.ttrpc.v1.Events",
                                     "Forward", &req.base, &google__protobuf__empty__descriptor,
                                     &options, on_forwarded, ev);
}

FerryShimEvents *ferry_shim_events_new(const char *address, const char *namespace)
{
  FerryShimEvents *ev = g_new0(FerryShimEvents, 1);
  ev->context = g_main_context_ref_thread_default();
  ev->address = g_strdup(address);
  ev->namespace = g_strdup(namespace != NULL ? namespace : "default");
  g_queue_init(&ev->queue);
  g_queue_init(&ev->held);
  return ev;
}

void ferry_shim_events_free(FerryShimEvents *ev)
{
  if (ev == NULL)
    return;
  ferry_source_clear(&ev->retry);
  if (ev->client != NULL && ev->in_flight)
    ferry_ttrpc_client_cancel(ev->client, ev->call);
  g_clear_pointer(&ev->client, ferry_ttrpc_client_free);
  g_queue_clear_full(&ev->queue, event_free);
  g_queue_clear_full(&ev->held, event_free);
  g_main_context_unref(ev->context);
  g_free(ev->address);
  g_free(ev->namespace);
  g_free(ev);
}

void ferry_shim_events_publish(FerryShimEvents *ev, const char *topic,
                               const ProtobufCMessage *event)
{
  if (ev->address == NULL) {
    ev->dropped++;
    return;
  }
  if (ferry_shim_events_pending(ev) >= FERRY_SHIM_EVENTS_MAX_QUEUED) {
    /* The oldest, never the one being sent: its answer pops the head. */
    guint sending = ev->in_flight ? 1 : 0;
    Event *old = g_queue_get_length(&ev->queue) > sending ? g_queue_pop_nth(&ev->queue, sending)
                                                          : g_queue_pop_head(&ev->held);
    event_free(old);
    ev->dropped++;
  }
  Event *e = g_new0(Event, 1);
  e->topic = g_strdup(topic);
  e->type_url = g_strdup(event->descriptor->name);
  gsize len = protobuf_c_message_get_packed_size(event);
  guint8 *buf = g_malloc(len > 0 ? len : 1);
  protobuf_c_message_pack(event, buf);
  e->value = g_bytes_new_take(buf, len);
  e->timestamp_us = g_get_real_time();
  if (ev->holding) {
    g_queue_push_tail(&ev->held, e);
    return;
  }
  g_queue_push_tail(&ev->queue, e);
  send_head(ev);
}

void ferry_shim_events_hold(FerryShimEvents *ev)
{
  ev->holding = TRUE;
}

void ferry_shim_events_release(FerryShimEvents *ev, gboolean send)
{
  ev->holding = FALSE;
  Event *e;
  while ((e = g_queue_pop_head(&ev->held)) != NULL) {
    if (send)
      g_queue_push_tail(&ev->queue, e);
    else
      event_free(e);
  }
  send_head(ev);
}

guint ferry_shim_events_pending(FerryShimEvents *ev)
{
  return g_queue_get_length(&ev->queue) + g_queue_get_length(&ev->held);
}

guint ferry_shim_events_dropped(FerryShimEvents *ev)
{
  return ev->dropped;
}
