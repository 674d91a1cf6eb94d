/* The GCS bridge, guest side: hcsshim's internal/guest/bridge (protocol v4) served on a
 * FerryStream, one connection at a time, with a backlog that outlives connections. */
#include "ferry/bridge-guest.h"

#include <stdarg.h>

#include "ferry/error.h"
#include "ferry/fd.h"
#include "ferry/json.h"
#include "ferry/stream.h"

/* What waits for a negotiated host. A notification is a few hundred bytes, so this
 * holds tens of thousands of container exits; past it the newest are dropped. */
#define BACKLOG_MAX_BYTES (16u << 20)

/* hcsshim's host kills its bridge on a message over MaxMsgSize (64 KiB), so nothing the
 * guest sends may be larger: an answer that would be is replaced by an E_FAIL. */
#define SEND_MAX_MESSAGE FERRY_BRIDGE_HOST_MAX_MESSAGE

/* The highest version this guest speaks (hcsshim's PvMax). */
#define PROTOCOL_MAX FERRY_BRIDGE_PROTOCOL_V4

/* hcsshim's UnknownMessage text. */
#define UNKNOWN_MESSAGE_TEXT "bridge: function not supported"

typedef struct {
  guint32 type;
  guint32 version;
  FerryBridgeHandler func;
  gpointer user_data;
} Route;

struct FerryBridgeServer {
  /* The owner's reference, one per unanswered request and one per dispatch or
   * callback in progress: a request answered after ferry_bridge_server_free() still
   * finds the server, marked `freed`. */
  gint refs;
  gboolean freed;
  GArray *routes; /* Route */
  json_t *capabilities;
  FerryBridgeDisconnectedFunc disconnected_func;
  gpointer disconnected_data;
  FerryStream *stream; /* the current connection, or NULL */
  FerryBridgeParser *parser;
  guint64 generation; /* names the current connection; bumped when one ends */
  guint32 version;
  /* FERRY_BRIDGE_NOTIFICATIONS_FIELD of the last negotiation that succeeded: what the
   * host asked for, kept across a disconnection (the backlog goes to the next host). */
  GStrv host_notifications;
  GQueue backlog; /* GBytes: encoded messages waiting for a negotiated connection */
  gsize backlog_bytes;
  guint64 backlog_dropped;
};

struct FerryBridgeRequest {
  FerryBridgeServer *server; /* a reference */
  guint64 generation;        /* of the connection it came on */
  guint32 type;
  guint64 id;
  guint32 version;
  json_t *body; /* NULL when the body did not parse */
};

static FerryBridgeServer *server_ref(FerryBridgeServer *server)
{
  server->refs++;
  return server;
}

static void backlog_clear(FerryBridgeServer *server)
{
  g_queue_clear_full(&server->backlog, (GDestroyNotify)g_bytes_unref);
  server->backlog_bytes = 0;
}

static void server_unref(FerryBridgeServer *server)
{
  if (--server->refs > 0)
    return;
  backlog_clear(server);
  g_strfreev(server->host_notifications);
  g_array_unref(server->routes);
  json_decref(server->capabilities);
  ferry_bridge_parser_free(server->parser);
  g_free(server);
}

/* ------------------------------------------------------------- sending -- */

static gboolean is_negotiated(const FerryBridgeServer *server)
{
  return server->stream != NULL && ferry_stream_is_open(server->stream) &&
         server->version != FERRY_BRIDGE_PROTOCOL_INVALID;
}

/* Write one encoded message on the current connection. FALSE when there is none or
 * this write ended it (the output cap, a broken pipe): the message did not go out. */
static gboolean connection_write(FerryBridgeServer *server, GBytes *message)
{
  if (server->stream == NULL)
    return FALSE;
  g_autoptr(FerryStream) stream = ferry_stream_ref(server->stream);
  gsize len;
  const guint8 *data = g_bytes_get_data(message, &len);
  g_autoptr(GError) error = NULL;
  return ferry_stream_write(stream, data, len, &error) && ferry_stream_is_open(stream);
}

static void backlog_push(FerryBridgeServer *server, GBytes *message)
{
  gsize len = g_bytes_get_size(message);
  if (len > BACKLOG_MAX_BYTES - server->backlog_bytes) {
    server->backlog_dropped++;
    return;
  }
  g_queue_push_tail(&server->backlog, g_bytes_ref(message));
  server->backlog_bytes += len;
}

/* Send the backlog, in order, while the connection is negotiated. A write that fails
 * leaves its message at the head for the next connection. */
static void backlog_drain(FerryBridgeServer *server)
{
  while (!g_queue_is_empty(&server->backlog) && is_negotiated(server)) {
    GBytes *message = g_queue_peek_head(&server->backlog);
    if (!connection_write(server, message))
      return;
    g_queue_pop_head(&server->backlog);
    server->backlog_bytes -= g_bytes_get_size(message);
    g_bytes_unref(message);
  }
}

/* A message that must reach a host eventually (a notification, an answer to an earlier
 * connection's request): out now on a negotiated connection, else into the backlog. */
static void send_or_queue(FerryBridgeServer *server, GBytes *message)
{
  if (is_negotiated(server) && g_queue_is_empty(&server->backlog) &&
      connection_write(server, message))
    return;
  backlog_push(server, message);
  backlog_drain(server);
}

/* ------------------------------------------------------------- requests -- */

guint32 ferry_bridge_request_get_type(const FerryBridgeRequest *request)
{
  return request->type;
}

guint64 ferry_bridge_request_get_id(const FerryBridgeRequest *request)
{
  return request->id;
}

guint32 ferry_bridge_request_get_version(const FerryBridgeRequest *request)
{
  return request->version;
}

json_t *ferry_bridge_request_get_body(const FerryBridgeRequest *request)
{
  return request->body;
}

/* A string member of the body, "" when absent or of another type (the host's input). */
static const char *body_string(const FerryBridgeRequest *request, const char *key)
{
  json_t *v = json_object_get(request->body, key);
  return json_is_string(v) ? json_string_value(v) : "";
}

const char *ferry_bridge_request_get_container_id(const FerryBridgeRequest *request)
{
  return body_string(request, "ContainerId");
}

const char *ferry_bridge_request_get_activity_id(const FerryBridgeRequest *request)
{
  return body_string(request, "ActivityId");
}

/* The ActivityId an answer echoes: the zero GUID when the request had none, since the
 * host decodes it as a GUID and "" is not one. */
static const char *answer_activity_id(const FerryBridgeRequest *request)
{
  const char *activity_id = ferry_bridge_request_get_activity_id(request);
  return *activity_id != '\0' ? activity_id : FERRY_ZERO_ACTIVITY_ID;
}

static void request_free(FerryBridgeRequest *request)
{
  json_decref(request->body);
  server_unref(request->server);
  g_free(request);
}

/* Whether the request came on the connection being served now. */
static gboolean request_is_current(const FerryBridgeRequest *request)
{
  const FerryBridgeServer *server = request->server;
  return server->stream != NULL && request->generation == server->generation;
}

/* Send the answer `body` (stolen) and free the request. */
static void request_answer(FerryBridgeRequest *request, json_t *body)
{
  FerryBridgeServer *server = request->server;
  if (!server->freed) {
    guint32 type = ferry_bridge_response_type(request->type);
    g_autoptr(GError) error = NULL;
    g_autoptr(GBytes) message =
        ferry_bridge_message_encode(type, request->id, body, FALSE, SEND_MAX_MESSAGE, &error);
    if (message == NULL) {
      /* Too large for the host: fail the request rather than leave the host waiting. */
      g_autoptr(json_t) failure =
          ferry_bridge_response_base(answer_activity_id(request), FERRY_HR_E_FAIL, error->message);
      message =
          ferry_bridge_message_encode(type, request->id, failure, FALSE, SEND_MAX_MESSAGE, NULL);
    }
    /* (message is NULL only if even the small failure body is over the limit.) */
    if (message != NULL && request_is_current(request))
      connection_write(server, message); /* if this write fails, the asking host is gone */
    else if (message != NULL)
      send_or_queue(server, message);
  }
  json_decref(body);
  request_free(request);
}

void ferry_bridge_request_reply(FerryBridgeRequest *request, json_t *fields)
{
  g_return_if_fail(request != NULL);
  json_t *body = ferry_bridge_response_base(answer_activity_id(request), FERRY_HR_OK, NULL);
  if (json_is_object(fields))
    json_object_update(body, fields);
  json_decref(fields);
  request_answer(request, body);
}

void ferry_bridge_request_reply_error(FerryBridgeRequest *request, guint32 hresult, const char *fmt,
                                      ...)
{
  g_return_if_fail(request != NULL);
  va_list ap;
  va_start(ap, fmt);
  g_autofree char *text = g_strdup_vprintf(fmt, ap);
  va_end(ap);
  /* JSON strings are UTF-8; a path or a process's output in the message may not be. */
  g_autofree char *message = g_utf8_make_valid(text, -1);
  /* An error answer with Result 0 would read as success. */
  if (hresult == FERRY_HR_OK)
    hresult = FERRY_HR_E_FAIL;
  request_answer(request,
                 ferry_bridge_response_base(answer_activity_id(request), hresult, message));
}

void ferry_bridge_request_reply_gerror(FerryBridgeRequest *request, const GError *error)
{
  if (error == NULL) {
    ferry_bridge_request_reply_error(request, FERRY_HR_E_FAIL, "unknown error");
    return;
  }
  ferry_bridge_request_reply_error(request, ferry_bridge_hresult_from_error(error), "%s",
                                   error->message);
}

void ferry_bridge_request_drop(FerryBridgeRequest *request)
{
  if (request != NULL)
    request_free(request);
}

/* ------------------------------------------------------------ dispatch -- */

static const Route *route_lookup(FerryBridgeServer *server, guint32 type, guint32 version)
{
  for (guint i = 0; i < server->routes->len; i++) {
    const Route *r = &g_array_index(server->routes, Route, i);
    if (r->type == type && r->version == version)
      return r;
  }
  return NULL;
}

static void dispatch_frame(FerryBridgeServer *server, const FerryBridgeHeader *header,
                           const guint8 *body)
{
  /* The host sends only requests; anything else is ignored as hcsshim's reader does
   * with what it cannot route. */
  if ((header->type & FERRY_BRIDGE_TYPE_MASK) != FERRY_BRIDGE_TYPE_REQUEST)
    return;
  FerryBridgeRequest *request = g_new0(FerryBridgeRequest, 1);
  request->server = server_ref(server);
  request->generation = server->generation;
  request->type = header->type;
  request->id = header->id;
  request->version = server->version;
  g_autoptr(GError) error = NULL;
  request->body = ferry_bridge_body_parse(body, header->size - FERRY_BRIDGE_HEADER_SIZE, &error);
  if (request->body == NULL) {
    ferry_bridge_request_reply_error(request, FERRY_HR_INVALID_JSON, "%s", error->message);
    return;
  }
  const Route *route = route_lookup(server, request->type, request->version);
  if (route == NULL) {
    ferry_bridge_request_reply_error(request, FERRY_HR_E_NOTIMPL, UNKNOWN_MESSAGE_TEXT);
    return;
  }
  /* The handler may register handlers, which moves the routes. */
  Route r = *route;
  r.func(request, r.user_data);
}

static void on_stream_data(FerryStream *stream, const guint8 *data, gsize len, gpointer user_data)
{
  FerryBridgeServer *server = user_data;
  if (stream != server->stream)
    return;
  server_ref(server);
  ferry_bridge_parser_feed(server->parser, data, len);
  /* A handler may close this connection (and even serve another): stop then. */
  while (server->stream == stream) {
    FerryBridgeHeader header;
    const guint8 *body;
    g_autoptr(GError) error = NULL;
    FerryBridgeParseResult r = ferry_bridge_parser_next(server->parser, &header, &body, &error);
    if (r == FERRY_BRIDGE_PARSE_NEED_MORE)
      break;
    if (r == FERRY_BRIDGE_PARSE_ERROR) {
      /* No way to find the next frame: the connection is unusable. */
      ferry_stream_close(stream, error);
      break;
    }
    dispatch_frame(server, &header, body);
  }
  server_unref(server);
}

static void on_stream_closed(FerryStream *stream, const GError *error, gpointer user_data)
{
  FerryBridgeServer *server = user_data;
  if (stream != server->stream)
    return;
  server_ref(server);
  server->stream = NULL;
  server->generation++;
  server->version = FERRY_BRIDGE_PROTOCOL_INVALID;
  ferry_bridge_parser_reset(server->parser);
  ferry_stream_unref(stream);
  if (server->disconnected_func != NULL)
    server->disconnected_func(server, error, server->disconnected_data);
  server_unref(server);
}

static const FerryStreamHandlers stream_handlers = {
  .data = on_stream_data,
  .closed = on_stream_closed,
};

/* --------------------------------------------------- NegotiateProtocol -- */

/* The Linux GCS's capabilities (docs/bridge-protocol.md, capabilities). */
static json_t *default_capabilities(void)
{
  return json_pack("{s:b, s:b, s:b, s:[{s:i, s:i}], s:s, s:{s:b, s:b, s:b, s:b}}",
                   "SendHostCreateMessage", 0, "SendHostStartMessage", 0, "HvSocketConfigOnStartup",
                   0, "SupportedSchemaVersions", "Major", 2, "Minor", 1, "RuntimeOsType", "Linux",
                   "GuestDefinedCapabilities", "NamespaceAddRequestSupported", 1,
                   "SignalProcessSupported", 1, "DumpStacksSupported", 1,
                   "DeleteContainerStateSupported", 1);
}

/* At most this many names of FERRY_BRIDGE_NOTIFICATIONS_FIELD are kept (Ferry defines
 * one); the rest, and members that are not strings, are ignored. */
#define MAX_HOST_NOTIFICATIONS 16

static GStrv host_notifications_of(json_t *body)
{
  json_t *list = json_object_get(body, FERRY_BRIDGE_NOTIFICATIONS_FIELD);
  g_autoptr(GStrvBuilder) names = g_strv_builder_new();
  gsize i, kept = 0;
  json_t *name;
  json_array_foreach(list, i, name)
  {
    if (json_is_string(name) && kept < MAX_HOST_NOTIFICATIONS) {
      g_strv_builder_add(names, json_string_value(name));
      kept++;
    }
  }
  return g_strv_builder_end(names);
}

/* hcsshim's negotiateProtocolV2: pick min(PvMax, MaximumVersion) if the ranges meet,
 * make it the connection's version, then let the backlog out behind the answer. */
static void negotiate_protocol(FerryBridgeRequest *request, gpointer user_data)
{
  FerryBridgeServer *server = user_data;
  guint32 min_version, max_version;
  g_autoptr(GError) error = NULL;
  if (!ferry_json_get_uint32(request->body, "MinimumVersion", TRUE, &min_version, &error) ||
      !ferry_json_get_uint32(request->body, "MaximumVersion", TRUE, &max_version, &error)) {
    ferry_bridge_request_reply_error(request, FERRY_HR_E_INVALIDARG, "NegotiateProtocol: %s",
                                     error->message);
    return;
  }
  if (max_version < FERRY_BRIDGE_PROTOCOL_V4 || min_version > PROTOCOL_MAX) {
    ferry_bridge_request_reply_error(
        request, FERRY_HR_UNSUPPORTED_PROTOCOL,
        "NegotiateProtocol: the host supports protocol versions %u to %u, the guest %u to %u",
        min_version, max_version, FERRY_BRIDGE_PROTOCOL_V4, PROTOCOL_MAX);
    return;
  }
  guint32 selected = MIN(PROTOCOL_MAX, max_version);
  if (request_is_current(request)) {
    server->version = selected;
    g_strfreev(server->host_notifications);
    server->host_notifications = host_notifications_of(request->body);
  }
  ferry_bridge_request_reply(request, json_pack("{s:i, s:O}", "Version", (int)selected,
                                                "Capabilities", server->capabilities));
  backlog_drain(server);
}

/* -------------------------------------------------------------- server -- */

FerryBridgeServer *ferry_bridge_server_new(void)
{
  FerryBridgeServer *server = g_new0(FerryBridgeServer, 1);
  server->refs = 1;
  server->routes = g_array_new(FALSE, FALSE, sizeof(Route));
  server->capabilities = default_capabilities();
  server->parser = ferry_bridge_parser_new(FERRY_BRIDGE_GUEST_MAX_MESSAGE);
  server->version = FERRY_BRIDGE_PROTOCOL_INVALID;
  g_queue_init(&server->backlog);
  ferry_bridge_server_handle(server, ferry_bridge_request_type(FERRY_BRIDGE_RPC_NEGOTIATE_PROTOCOL),
                             FERRY_BRIDGE_PROTOCOL_INVALID, negotiate_protocol, server);
  return server;
}

void ferry_bridge_server_free(FerryBridgeServer *server)
{
  if (server == NULL)
    return;
  /* The owner is going away: no more callbacks into it. */
  server->freed = TRUE;
  server->disconnected_func = NULL;
  if (server->stream != NULL)
    ferry_stream_close(server->stream, NULL);
  backlog_clear(server);
  server_unref(server);
}

void ferry_bridge_server_handle(FerryBridgeServer *server, guint32 request_type, guint32 version,
                                FerryBridgeHandler handler, gpointer user_data)
{
  g_return_if_fail(server != NULL && handler != NULL);
  Route route = { request_type, version, handler, user_data };
  for (guint i = 0; i < server->routes->len; i++) {
    Route *r = &g_array_index(server->routes, Route, i);
    if (r->type == request_type && r->version == version) {
      *r = route;
      return;
    }
  }
  g_array_append_val(server->routes, route);
}

void ferry_bridge_server_set_capabilities(FerryBridgeServer *server, json_t *capabilities)
{
  g_return_if_fail(server != NULL);
  json_decref(server->capabilities);
  server->capabilities = capabilities != NULL ? capabilities : default_capabilities();
}

void ferry_bridge_server_set_disconnected_func(FerryBridgeServer *server,
                                               FerryBridgeDisconnectedFunc func, gpointer user_data)
{
  g_return_if_fail(server != NULL);
  server->disconnected_func = func;
  server->disconnected_data = user_data;
}

gboolean ferry_bridge_server_serve(FerryBridgeServer *server, int fd, GError **error)
{
  g_return_val_if_fail(server != NULL && !server->freed, FALSE);
  server_ref(server);
  /* The old connection's callback may itself serve a new one: close until none. */
  while (server->stream != NULL && !server->freed)
    ferry_stream_close(server->stream, NULL);
  gboolean ok = FALSE;
  if (server->freed) {
    ferry_fd_clear(&fd);
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION,
                "bridge: the server was freed");
  } else {
    /* The version and the parser were reset when the last connection ended. */
    server->stream = ferry_stream_new(fd, "bridge", &stream_handlers, server, error);
    ok = server->stream != NULL;
  }
  server_unref(server);
  return ok;
}

void ferry_bridge_server_disconnect(FerryBridgeServer *server)
{
  g_return_if_fail(server != NULL);
  if (server->stream != NULL)
    ferry_stream_close(server->stream, NULL);
}

gboolean ferry_bridge_server_is_connected(FerryBridgeServer *server)
{
  /* A connection a write just broke is gone, though its end is reported later. */
  return server->stream != NULL && ferry_stream_is_open(server->stream);
}

guint32 ferry_bridge_server_get_protocol_version(FerryBridgeServer *server)
{
  return server->version;
}

/* Encode a notification and send or queue it. */
static void notify_body(FerryBridgeServer *server, const json_t *body)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(GBytes) message = ferry_bridge_message_encode(FERRY_BRIDGE_NOTIFY_CONTAINER, 0, body,
                                                          FALSE, SEND_MAX_MESSAGE, &error);
  if (message == NULL) {
    /* Over what the host accepts: sending it would kill the host's bridge. */
    server->backlog_dropped++;
    return;
  }
  server_ref(server);
  send_or_queue(server, message);
  server_unref(server);
}

void ferry_bridge_server_notify(FerryBridgeServer *server, json_t *body)
{
  if (server == NULL || !json_is_object(body)) {
    json_decref(body);
    g_return_if_reached();
  }
  if (!server->freed)
    notify_body(server, body);
  json_decref(body);
}

gboolean ferry_bridge_server_host_accepts(FerryBridgeServer *server, const char *type)
{
  g_return_val_if_fail(server != NULL && type != NULL, FALSE);
  return server->host_notifications != NULL &&
         g_strv_contains((const char *const *)server->host_notifications, type);
}

guint ferry_bridge_server_backlog_length(FerryBridgeServer *server)
{
  return g_queue_get_length(&server->backlog);
}
