/*
 * The guest side of the GCS bridge: the server the guest agent runs (hcsshim's
 * internal/guest/bridge, protocol v4). It lives as long as the agent; each connection
 * to the host is served in turn (the agent re-dials after a break).
 *
 * - Handlers are registered per (request type, protocol version). Only
 *   NegotiateProtocol is served before negotiation (version INVALID); it is built in.
 * - Every new connection starts at version INVALID, so the host must renegotiate.
 * - Handlers may answer later and in any order; answers carry the request's id.
 * - An unknown (type, version) is answered E_NOTIMPL with the request's id and
 *   ActivityId; a body that is not a JSON object is answered INVALID_JSON.
 * - Container notifications, and answers to requests of an earlier connection, wait in
 *   a backlog while there is no negotiated connection and go out in order right after
 *   the next NegotiateProtocol answer. So a host that pre-registers the ids it expects
 *   before negotiating never sees an answer it cannot route.
 *
 * Threading: the thread-default main context at creation; one thread.
 */
#pragma once

#include <glib.h>
#include <jansson.h>

#include "ferry/bridge-protocol.h"

G_BEGIN_DECLS

typedef struct FerryBridgeServer FerryBridgeServer;
typedef struct FerryBridgeRequest FerryBridgeRequest;

/* A request handler. It answers exactly once, now or later, with
 * ferry_bridge_request_reply*(), or drops the request (ferry_bridge_request_drop()) when
 * the protocol wants no answer (a UVM shutdown). */
typedef void (*FerryBridgeHandler)(FerryBridgeRequest *request, gpointer user_data);

/* Called when the current connection ends: the host closed it, an I/O error, or a
 * frame that cannot be parsed. `error` says which. The server is ready to serve a new
 * connection. */
typedef void (*FerryBridgeDisconnectedFunc)(FerryBridgeServer *server, const GError *error,
                                            gpointer user_data);

FerryBridgeServer *ferry_bridge_server_new(void);

/* Close the connection (if any) and free. Requests not yet answered stay valid until
 * answered; their answers are dropped. */
void ferry_bridge_server_free(FerryBridgeServer *server);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FerryBridgeServer, ferry_bridge_server_free)

/* Register `handler` for requests of `request_type` (e.g.
 * ferry_bridge_request_type(FERRY_BRIDGE_RPC_EXECUTE_PROCESS)) at protocol `version`.
 * Registering the same pair again replaces the handler. */
void ferry_bridge_server_handle(FerryBridgeServer *server, guint32 request_type, guint32 version,
                                FerryBridgeHandler handler, gpointer user_data);

/* The Capabilities object of the NegotiateProtocol answer (steals `capabilities`).
 * The default is the Linux GCS's (docs/bridge-protocol.md, capabilities). */
void ferry_bridge_server_set_capabilities(FerryBridgeServer *server, json_t *capabilities);

void ferry_bridge_server_set_disconnected_func(FerryBridgeServer *server,
                                               FerryBridgeDisconnectedFunc func,
                                               gpointer user_data);

/* Serve a connected stream fd (takes ownership). A connection still open is closed
 * first (its disconnected callback runs). The protocol version restarts at INVALID. */
gboolean ferry_bridge_server_serve(FerryBridgeServer *server, int fd, GError **error);

/* Close the current connection, if any; the disconnected callback runs with error
 * NULL. */
void ferry_bridge_server_disconnect(FerryBridgeServer *server);

gboolean ferry_bridge_server_is_connected(FerryBridgeServer *server);

/* The version negotiated on the current connection (INVALID before negotiation and
 * while disconnected). */
guint32 ferry_bridge_server_get_protocol_version(FerryBridgeServer *server);

/*
 * Send a container notification (type FERRY_BRIDGE_NOTIFY_CONTAINER, id 0) with `body`
 * (stolen): at once on a negotiated connection, else after the next negotiation.
 */
void ferry_bridge_server_notify(FerryBridgeServer *server, json_t *body);

/*
 * Whether the host asked for Ferry's notifications of `type` (for example
 * FERRY_BRIDGE_NOTIFY_TYPE_OOM_KILL) in its FERRY_BRIDGE_NOTIFICATIONS_FIELD: the answer of
 * the last NegotiateProtocol that succeeded, kept while disconnected (notifications queued
 * then go to the next host). FALSE before any negotiation and for a host that names none
 * (hcsshim's, which would take any container notification for the container's exit).
 */
gboolean ferry_bridge_server_host_accepts(FerryBridgeServer *server, const char *type);

/* Messages waiting for a negotiated connection (notifications and earlier
 * connections' answers). */
guint ferry_bridge_server_backlog_length(FerryBridgeServer *server);

/* ---- one request ---- */

guint32 ferry_bridge_request_get_type(const FerryBridgeRequest *request);
guint64 ferry_bridge_request_get_id(const FerryBridgeRequest *request);
/* The protocol version the connection had when the request was read. */
guint32 ferry_bridge_request_get_version(const FerryBridgeRequest *request);
/* The parsed body (borrowed; valid until answered). */
json_t *ferry_bridge_request_get_body(const FerryBridgeRequest *request);
/* ContainerId and ActivityId of the body ("" when absent). */
const char *ferry_bridge_request_get_container_id(const FerryBridgeRequest *request);
const char *ferry_bridge_request_get_activity_id(const FerryBridgeRequest *request);

/* Answer Result 0 with the request's ActivityId plus the members of `fields` (stolen;
 * may be NULL). Frees the request. */
void ferry_bridge_request_reply(FerryBridgeRequest *request, json_t *fields);

/* Answer with a failing HRESULT and a message. Frees the request. */
void ferry_bridge_request_reply_error(FerryBridgeRequest *request, guint32 hresult, const char *fmt,
                                      ...) G_GNUC_PRINTF(3, 4);

/* Answer with ferry_bridge_hresult_from_error(error) and its message. Frees it. */
void ferry_bridge_request_reply_gerror(FerryBridgeRequest *request, const GError *error);

/* Free without answering. */
void ferry_bridge_request_drop(FerryBridgeRequest *request);

G_END_DECLS
