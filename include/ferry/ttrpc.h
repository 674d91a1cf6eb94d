/*
 * ttrpc (containerd's RPC) on the GLib main loop: the pure frame codec, a server and
 * a client over any connected stream fd (unix sockets, socketpairs, vsock ports).
 *
 * Wire facts (containerd/ttrpc PROTOCOL.md, docs/ttrpc.md): a
 * 10-byte big-endian header (data length u32, stream id u32, type u8, flags u8), then
 * a protobuf ttrpc.Request / ttrpc.Response, or for Data frames the raw message.
 * Client streams use odd ids 1, 3, 5, ... per connection; the data length limit is
 * 4 MiB.
 *
 * Threading: every object here belongs to the GMainContext that was the thread
 * default when it was created; use it from that thread only.
 */
#pragma once

#include <glib.h>
#include <protobuf-c/protobuf-c.h>

G_BEGIN_DECLS

/* ------------------------------------------------------------------ codec -- */

#define FERRY_TTRPC_HEADER_SIZE 10u
#define FERRY_TTRPC_MAX_DATA (4u << 20) /* messageLengthMax in containerd/ttrpc */

typedef enum {
  FERRY_TTRPC_TYPE_REQUEST = 0x01,
  FERRY_TTRPC_TYPE_RESPONSE = 0x02,
  FERRY_TTRPC_TYPE_DATA = 0x03,
} FerryTtrpcType;

/* Request and Data frames: the sender sends no more on this stream. */
#define FERRY_TTRPC_FLAG_REMOTE_CLOSED 0x01u
/* Request frames: a client stream follows. */
#define FERRY_TTRPC_FLAG_REMOTE_OPEN 0x02u
/* Data frames: the frame carries no message. */
#define FERRY_TTRPC_FLAG_NO_DATA 0x04u

typedef struct {
  guint32 length;
  guint32 stream_id;
  guint8 type;
  guint8 flags;
} FerryTtrpcHeader;

void ferry_ttrpc_header_encode(const FerryTtrpcHeader *header, guint8 out[FERRY_TTRPC_HEADER_SIZE]);
void ferry_ttrpc_header_decode(const guint8 in[FERRY_TTRPC_HEADER_SIZE], FerryTtrpcHeader *header);

/*
 * Incremental frame parser: feed it bytes as they arrive, take frames out. A frame
 * whose header claims more than FERRY_TTRPC_MAX_DATA is reported once as oversize
 * (with its header, so the server can answer on its stream id) and its body is then
 * skipped as it arrives, never buffered. Pure: no I/O.
 */
typedef struct FerryTtrpcParser FerryTtrpcParser;

typedef enum {
  FERRY_TTRPC_PARSE_NEED_MORE, /* no complete frame buffered */
  FERRY_TTRPC_PARSE_FRAME,     /* *header and *data (header->length bytes) are valid
                                  until the next feed */
  FERRY_TTRPC_PARSE_OVERSIZE,  /* *header is valid; the body will be skipped */
} FerryTtrpcParseResult;

FerryTtrpcParser *ferry_ttrpc_parser_new(void);
void ferry_ttrpc_parser_free(FerryTtrpcParser *parser);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FerryTtrpcParser, ferry_ttrpc_parser_free)

/* Append bytes. Callers feed what one read returned; the parser then holds at most
 * that plus one partial frame (header + 4 MiB). */
void ferry_ttrpc_parser_feed(FerryTtrpcParser *parser, const guint8 *data, gsize len);

/* Take the next frame, if any. Frames handed out stay valid until the next feed. */
FerryTtrpcParseResult ferry_ttrpc_parser_next(FerryTtrpcParser *parser, FerryTtrpcHeader *header,
                                              const guint8 **data);

/* Bytes the parser holds but has not handed out (for tests and accounting). */
gsize ferry_ttrpc_parser_buffered(const FerryTtrpcParser *parser);

/*
 * Encode a whole frame (header + data) into a new GBytes. Fails with
 * FERRY_ERROR_RESOURCE_EXHAUSTED when len exceeds FERRY_TTRPC_MAX_DATA.
 */
GBytes *ferry_ttrpc_frame_encode(guint32 stream_id, FerryTtrpcType type, guint8 flags,
                                 const guint8 *data, gsize len, GError **error);

/* -------------------------------------------------------------- metadata -- */

/* One metadata pair. Keys are compared case-insensitively (Go lower-cases them). */
typedef struct {
  const char *key;
  const char *value;
} FerryTtrpcMetadata;

/* ----------------------------------------------------------------- server -- */

typedef struct FerryTtrpcServer FerryTtrpcServer;
typedef struct FerryTtrpcCall FerryTtrpcCall;

/*
 * A method handler. `request` is the decoded request message, owned by the call and
 * valid until the call is answered. The handler answers now or later, exactly once,
 * with ferry_ttrpc_call_reply(), ferry_ttrpc_call_reply_error() (unary), or
 * ferry_ttrpc_call_send() then ferry_ttrpc_call_finish() (server streaming).
 * Answering frees the call.
 */
typedef void (*FerryTtrpcHandler)(FerryTtrpcCall *call, const ProtobufCMessage *request,
                                  gpointer user_data);

typedef enum {
  FERRY_TTRPC_UNARY = 0,
  FERRY_TTRPC_SERVER_STREAMING = 1,
} FerryTtrpcMethodKind;

/* One entry of a service's method table; a table ends with a zeroed entry. */
typedef struct {
  const char *name; /* the bare method name, as in the service descriptor */
  FerryTtrpcHandler handler;
  FerryTtrpcMethodKind kind;
} FerryTtrpcMethodImpl;

FerryTtrpcServer *ferry_ttrpc_server_new(void);

/*
 * Register `methods` for the service described by `desc`, under the wire name
 * `service_name` (NULL: desc->name). The same descriptor may be registered under
 * several names (containerd.task.v2.Task and .v3.Task). Each method name must exist
 * in desc, and a service name may be registered once; otherwise FALSE with
 * FERRY_ERROR_INVALID_ARGUMENT / FERRY_ERROR_ALREADY_EXISTS. `desc` and `methods`
 * must outlive the server.
 */
gboolean ferry_ttrpc_server_register(FerryTtrpcServer *server, const char *service_name,
                                     const ProtobufCServiceDescriptor *desc,
                                     const FerryTtrpcMethodImpl *methods, gpointer user_data,
                                     GError **error);

/* Listen on a filesystem unix socket at `path` (an existing socket file there is
 * replaced) and serve every connection accepted on it. The socket file is removed
 * when the server shuts down. */
gboolean ferry_ttrpc_server_listen_unix(FerryTtrpcServer *server, const char *path, GError **error);

/* Serve connections accepted on an already listening socket; takes ownership. */
gboolean ferry_ttrpc_server_listen_fd(FerryTtrpcServer *server, int listen_fd, GError **error);

/* Serve one already connected stream fd; takes ownership. */
gboolean ferry_ttrpc_server_add_connection(FerryTtrpcServer *server, int fd, GError **error);

/* Number of connections currently open. */
guint ferry_ttrpc_server_connection_count(FerryTtrpcServer *server);

/* Called after a connection closes (peer hang-up, error, or shutdown). */
typedef void (*FerryTtrpcConnectionClosedFunc)(FerryTtrpcServer *server, gpointer user_data);
void ferry_ttrpc_server_set_connection_closed_func(FerryTtrpcServer *server,
                                                   FerryTtrpcConnectionClosedFunc func,
                                                   gpointer user_data);

/*
 * Stop listening, close every connection, and cancel the calls still pending (their
 * cancel callbacks run; their later answers are dropped). Idempotent. The server
 * stays valid until freed.
 */
void ferry_ttrpc_server_shutdown(FerryTtrpcServer *server);

/* Shut down (if not yet) and free. Calls not yet answered stay valid until answered. */
void ferry_ttrpc_server_free(FerryTtrpcServer *server);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FerryTtrpcServer, ferry_ttrpc_server_free)

/* ---- one incoming call ---- */

const char *ferry_ttrpc_call_get_service(const FerryTtrpcCall *call);
const char *ferry_ttrpc_call_get_method(const FerryTtrpcCall *call);
guint32 ferry_ttrpc_call_get_stream_id(const FerryTtrpcCall *call);

/* The first value of metadata `key` (case-insensitive), or NULL. */
const char *ferry_ttrpc_call_get_metadata(const FerryTtrpcCall *call, const char *key);

/* All metadata pairs in arrival order; *n_out gets the count. Owned by the call. */
const FerryTtrpcMetadata *ferry_ttrpc_call_get_metadata_all(const FerryTtrpcCall *call,
                                                            gsize *n_out);

/* The deadline from the request's timeout_nano, in g_get_monotonic_time() units
 * (microseconds), or 0 when the caller set none. */
gint64 ferry_ttrpc_call_get_deadline(const FerryTtrpcCall *call);

/*
 * TRUE once the call can no longer be answered usefully: its connection closed, the
 * server shut down, or its deadline passed. At the deadline the server itself answers
 * DEADLINE_EXCEEDED "context deadline exceeded" (as a Go handler returning ctx.Err()
 * would); the handler must still answer, and that answer is dropped.
 */
gboolean ferry_ttrpc_call_is_cancelled(const FerryTtrpcCall *call);

/* Run `func(call, user_data)` once when the call becomes cancelled (see above), if it
 * has not been answered by then. Replaces an earlier callback. */
typedef void (*FerryTtrpcCancelFunc)(FerryTtrpcCall *call, gpointer user_data);
void ferry_ttrpc_call_set_cancel_func(FerryTtrpcCall *call, FerryTtrpcCancelFunc func,
                                      gpointer user_data);

/* Answer OK with `response` (NULL: an empty payload). Frees the call. A response that
 * does not fit a frame is answered RESOURCE_EXHAUSTED instead. */
void ferry_ttrpc_call_reply(FerryTtrpcCall *call, const ProtobufCMessage *response);

/* Answer with a non-OK status. Frees the call. code 0 is turned into UNKNOWN. */
void ferry_ttrpc_call_reply_error(FerryTtrpcCall *call, int code, const char *fmt, ...)
    G_GNUC_PRINTF(3, 4);

/* Answer with the status ferry_error_to_status_code() gives for `error` and its
 * message. Frees the call. */
void ferry_ttrpc_call_reply_gerror(FerryTtrpcCall *call, const GError *error);

/*
 * Server streaming: send one message as a Data frame. Returns FALSE (and sends
 * nothing) when the call is cancelled or the message does not fit a frame; the
 * handler should then finish the call.
 */
gboolean ferry_ttrpc_call_send(FerryTtrpcCall *call, const ProtobufCMessage *message,
                               GError **error);

/* Server streaming: end the stream. error NULL: a Data frame with flags
 * REMOTE_CLOSED|NO_DATA (Go's CloseSend); otherwise a Response frame with the error's
 * status. Frees the call. */
void ferry_ttrpc_call_finish(FerryTtrpcCall *call, const GError *error);

/* ----------------------------------------------------------------- client -- */

typedef struct FerryTtrpcClient FerryTtrpcClient;

/* Per-call options. A zeroed struct (or NULL) means no deadline, no metadata. */
typedef struct {
  /* Relative timeout in nanoseconds; sent as timeout_nano and enforced locally (the
   * call fails with DEADLINE_EXCEEDED and a late answer is dropped). 0: none. */
  gint64 timeout_ns;
  const FerryTtrpcMetadata *metadata;
  gsize n_metadata;
} FerryTtrpcCallOptions;

/* Take ownership of a connected stream fd (made non-blocking and close-on-exec). */
FerryTtrpcClient *ferry_ttrpc_client_new(int fd, GError **error);

/* Connect to a unix socket; `address` is a path or "unix://<path>". Blocks for the
 * connect(2) only. */
FerryTtrpcClient *ferry_ttrpc_client_connect_unix(const char *address, GError **error);

/*
 * The answer to a unary call, or the end of a stream. On success `response` is the
 * decoded message (owned by the client, valid during the callback; NULL for the end
 * of a stream) and `error` is NULL. Otherwise `error` is in FERRY_ERROR with the
 * peer's status code and message, or with a local cause (UNAVAILABLE when the
 * connection closed, DEADLINE_EXCEEDED, CANCELLED, RESOURCE_EXHAUSTED, INTERNAL for
 * an undecodable answer).
 */
typedef void (*FerryTtrpcReplyFunc)(FerryTtrpcClient *client, const ProtobufCMessage *response,
                                    const GError *error, gpointer user_data);

/* One message of a server stream; `message` is owned by the client and valid during
 * the callback. */
typedef void (*FerryTtrpcStreamFunc)(FerryTtrpcClient *client, const ProtobufCMessage *message,
                                     gpointer user_data);

/*
 * Start a unary call. `request` is packed at once; `response_desc` decodes the
 * answer. `done` runs exactly once, never from inside this function (a call that
 * fails at once is reported from the main loop), unless the call is cancelled with
 * ferry_ttrpc_client_cancel(). Returns the stream id (always non-zero).
 */
guint32 ferry_ttrpc_client_call(FerryTtrpcClient *client, const char *service, const char *method,
                                const ProtobufCMessage *request,
                                const ProtobufCMessageDescriptor *response_desc,
                                const FerryTtrpcCallOptions *options, FerryTtrpcReplyFunc done,
                                gpointer user_data);

/* Start a server-streaming call: `on_message` for each message, then `done` once with
 * response NULL and error NULL (clean end) or an error. Returns the stream id. */
guint32 ferry_ttrpc_client_stream(FerryTtrpcClient *client, const char *service, const char *method,
                                  const ProtobufCMessage *request,
                                  const ProtobufCMessageDescriptor *message_desc,
                                  const FerryTtrpcCallOptions *options,
                                  FerryTtrpcStreamFunc on_message, FerryTtrpcReplyFunc done,
                                  gpointer user_data);

/* Forget a pending call: its callbacks never run and a late answer is dropped (ttrpc
 * has no cancel frame). Returns FALSE if no such call is pending. */
gboolean ferry_ttrpc_client_cancel(FerryTtrpcClient *client, guint32 stream_id);

/*
 * Blocking unary call for programs and tests: iterates the thread-default main
 * context until the answer arrives. Returns the decoded response (free it with
 * protobuf_c_message_free_unpacked(msg, NULL)) or NULL with *error set.
 */
ProtobufCMessage *ferry_ttrpc_client_call_sync(FerryTtrpcClient *client, const char *service,
                                               const char *method, const ProtobufCMessage *request,
                                               const ProtobufCMessageDescriptor *response_desc,
                                               const FerryTtrpcCallOptions *options,
                                               GError **error);

/* Calls started and not yet answered. */
guint ferry_ttrpc_client_pending(FerryTtrpcClient *client);

/* FALSE once the connection is closed (by either side or by an error). */
gboolean ferry_ttrpc_client_is_connected(FerryTtrpcClient *client);

/* Called once when the connection closes; `error` says why (NULL after
 * ferry_ttrpc_client_close()). */
typedef void (*FerryTtrpcClosedFunc)(FerryTtrpcClient *client, const GError *error,
                                     gpointer user_data);
void ferry_ttrpc_client_set_closed_func(FerryTtrpcClient *client, FerryTtrpcClosedFunc func,
                                        gpointer user_data);

/* Close the connection; every pending call fails with UNAVAILABLE "connection
 * closed". Idempotent. */
void ferry_ttrpc_client_close(FerryTtrpcClient *client);

/* Close (if open) and free. Callbacks of pending calls run with UNAVAILABLE first. */
void ferry_ttrpc_client_free(FerryTtrpcClient *client);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FerryTtrpcClient, ferry_ttrpc_client_free)

G_END_DECLS
