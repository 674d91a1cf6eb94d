/*
 * The GCS bridge protocol, hcsshim's protocol v4 (docs/bridge-protocol.md):
 * a 16-byte little-endian header (type u32, size u32 = 16 + body, id u64) and a JSON
 * body. Pure: constants, header and frame codec, body helpers, HRESULTs. No I/O.
 */
#pragma once

#include <glib.h>
#include <jansson.h>

G_BEGIN_DECLS

#define FERRY_BRIDGE_HEADER_SIZE 16u
/* hcsshim's host refuses messages over 64 KiB (MaxMsgSize, header included). */
#define FERRY_BRIDGE_HOST_MAX_MESSAGE 0x10000u
/* hcsshim's guest has no limit; ours bounds what it buffers (OCI specs can be large). */
#define FERRY_BRIDGE_GUEST_MAX_MESSAGE (4u << 20)

/* Protocol versions (guest ProtocolVersion): only NegotiateProtocol is served at
 * INVALID; everything else needs a negotiated V4. */
#define FERRY_BRIDGE_PROTOCOL_INVALID 0u
#define FERRY_BRIDGE_PROTOCOL_V4 4u

/* vsock ports: the guest dials the bridge port; stdio ports are allocated upwards from
 * the next one (LinuxGcsVsockPort, hcsshim). */
#define FERRY_GCS_BRIDGE_PORT 0x40000000u
#define FERRY_GCS_FIRST_STDIO_PORT 0x40000001u

/* The container id of the UVM itself, and the activity id the host sends. */
#define FERRY_NULL_CONTAINER_ID "00000000-0000-0000-0000-000000000000"
#define FERRY_ZERO_ACTIVITY_ID "00000000-0000-0000-0000-000000000000"

/*
 * Ferry's extension to hcsshim's protocol: the guest adds this (a positive integer) to
 * its ExecuteProcess answer, a number it never gives another process; the host echoes it
 * in WaitForProcess, SignalProcess and ResizeConsole, and the guest answers 0x80070490
 * when it names another process than the pid's current one (the kernel reused the pid).
 * Either side without it (hcsshim's) ignores the field, and processes are named by pid
 * alone.
 */
#define FERRY_BRIDGE_PROCESS_SERIAL "FerryProcessSerial"

/*
 * Ferry's addition to hcsshim's LCOWCombinedLayers (ModifySettings CombinedLayers): the
 * size in MiB of the tmpfs the guest makes at ScratchPath for the writable upper
 * (docs/agent.md, storage). hcsshim's guest ignores it.
 */
#define FERRY_BRIDGE_SCRATCH_SIZE_FIELD "FerryScratchSizeInMB"

/*
 * Ferry's notifications beyond hcsshim's exit notification (docs/bridge.md, Ferry's OOM
 * notification). A host asks for them by naming them in this NegotiateProtocol
 * field (an array of strings); the guest sends only what the host negotiating last named,
 * because hcsshim's host takes every container notification for the container's exit.
 * hcsshim's guest ignores the field.
 */
#define FERRY_BRIDGE_NOTIFICATIONS_FIELD "FerryNotifications"
/* A container notification (FERRY_BRIDGE_NOTIFY_CONTAINER) whose Type is this says the
 * kernel's OOM killer killed a process in the container (its cgroup's memory.events
 * oom_kill rose); the container goes on. FERRY_BRIDGE_OOM_KILL_COUNT carries the count. */
#define FERRY_BRIDGE_NOTIFY_TYPE_OOM_KILL "FerryOomKill"
#define FERRY_BRIDGE_OOM_KILL_COUNT "FerryOomKillCount"

/* WaitForProcess's TimeoutInMs for "no timeout". */
#define FERRY_BRIDGE_INFINITE_TIMEOUT 0xffffffffu

/* Message identifiers: | type:4 | category:8 | id:12 | version:8 |. */
#define FERRY_BRIDGE_TYPE_MASK 0xf0000000u
#define FERRY_BRIDGE_TYPE_REQUEST 0x10000000u
#define FERRY_BRIDGE_TYPE_RESPONSE 0x20000000u
#define FERRY_BRIDGE_TYPE_NOTIFY 0x30000000u

/* RPC procedures (category | n << 8 | 1); the wire type adds the message type. */
typedef enum {
  FERRY_BRIDGE_RPC_CREATE = 0x00100101,
  FERRY_BRIDGE_RPC_START = 0x00100201,
  FERRY_BRIDGE_RPC_SHUTDOWN_GRACEFUL = 0x00100301,
  FERRY_BRIDGE_RPC_SHUTDOWN_FORCED = 0x00100401,
  FERRY_BRIDGE_RPC_EXECUTE_PROCESS = 0x00100501,
  FERRY_BRIDGE_RPC_WAIT_FOR_PROCESS = 0x00100601,
  FERRY_BRIDGE_RPC_SIGNAL_PROCESS = 0x00100701,
  FERRY_BRIDGE_RPC_RESIZE_CONSOLE = 0x00100801,
  FERRY_BRIDGE_RPC_GET_PROPERTIES = 0x00100901,
  FERRY_BRIDGE_RPC_MODIFY_SETTINGS = 0x00100a01,
  FERRY_BRIDGE_RPC_NEGOTIATE_PROTOCOL = 0x00100b01,
  FERRY_BRIDGE_RPC_DUMP_STACKS = 0x00100c01,
  FERRY_BRIDGE_RPC_DELETE_CONTAINER_STATE = 0x00100d01,
  FERRY_BRIDGE_RPC_UPDATE_CONTAINER = 0x00100e01,
  FERRY_BRIDGE_RPC_LIFECYCLE_NOTIFICATION = 0x00100f01,
  FERRY_BRIDGE_RPC_MODIFY_SERVICE_SETTINGS = 0x00200101,
} FerryBridgeRpc;

/* The one notification type the host accepts (NotifyContainer). */
#define FERRY_BRIDGE_NOTIFY_CONTAINER 0x30100101u

static inline guint32 ferry_bridge_request_type(FerryBridgeRpc rpc)
{
  return FERRY_BRIDGE_TYPE_REQUEST | (guint32)rpc;
}

/* A response's type is its request's with the top nibble replaced by 2. */
static inline guint32 ferry_bridge_response_type(guint32 request_type)
{
  return (request_type & ~FERRY_BRIDGE_TYPE_MASK) | FERRY_BRIDGE_TYPE_RESPONSE;
}

/* "ExecuteProcess" for any message type of that RPC (request or response), "Container
 * notification", or NULL for an unknown type. */
const char *ferry_bridge_message_name(guint32 type);

/* HRESULTs the protocol uses. */
#define FERRY_HR_OK 0x00000000u
#define FERRY_HR_E_NOTIMPL 0x80004001u
#define FERRY_HR_E_FAIL 0x80004005u
#define FERRY_HR_E_INVALIDARG 0x80070057u
#define FERRY_HR_NOT_FOUND 0x80070490u /* HRESULT_FROM_WIN32(ERROR_NOT_FOUND) */
#define FERRY_HR_INVALID_STATE 0x80370105u
#define FERRY_HR_TIMEOUT 0xc0370109u
#define FERRY_HR_UNKNOWN_MESSAGE 0xc037010bu
#define FERRY_HR_UNSUPPORTED_PROTOCOL 0xc037010cu
#define FERRY_HR_INVALID_JSON 0xc037010du
#define FERRY_HR_SYSTEM_NOT_FOUND 0xc037010eu
#define FERRY_HR_ALREADY_EXISTS 0xc037010fu
#define FERRY_HR_ALREADY_STOPPED 0xc0370110u

/*
 * FERRY_BRIDGE_ERROR: the guest answered a failing Result. The code is that HRESULT (as a
 * gint), whatever its value: every 32-bit value is the guest's, none is reserved for a
 * local cause. ferry_error_to_status_code() maps it (the domain registers itself).
 */
#define FERRY_BRIDGE_ERROR (ferry_bridge_error_quark())
GQuark ferry_bridge_error_quark(void);

/*
 * FERRY_BRIDGE_CLOSED_ERROR: the bridge itself is dead ("bridge closed: <cause>"), a local
 * result no guest answer can produce. One code, FERRY_BRIDGE_CLOSED; status UNAVAILABLE.
 */
#define FERRY_BRIDGE_CLOSED_ERROR (ferry_bridge_closed_error_quark())
GQuark ferry_bridge_closed_error_quark(void);
#define FERRY_BRIDGE_CLOSED 0

/* The HRESULT of a bridge error, or 0 for any other error (and NULL). */
guint32 ferry_bridge_error_hresult(const GError *error);

/* A google.rpc code for an HRESULT (NOT_FOUND for both not-found HRESULTs, ...). */
int ferry_bridge_hresult_to_status(guint32 hresult);

/* The HRESULT to answer for a GError a guest handler failed with. */
guint32 ferry_bridge_hresult_from_error(const GError *error);

/* ---------------------------------------------------------------- frames -- */

typedef struct {
  guint32 type;
  guint32 size; /* header + body */
  guint64 id;
} FerryBridgeHeader;

void ferry_bridge_header_encode(const FerryBridgeHeader *h, guint8 out[FERRY_BRIDGE_HEADER_SIZE]);
void ferry_bridge_header_decode(const guint8 in[FERRY_BRIDGE_HEADER_SIZE], FerryBridgeHeader *h);

/*
 * Incremental frame parser. A header whose size is below 16 or above `max_message`
 * is an error, and the parser then refuses everything after it (a bridge that sent
 * it is killed: there is no way to find the next frame). Pure.
 */
typedef struct FerryBridgeParser FerryBridgeParser;

typedef enum {
  FERRY_BRIDGE_PARSE_NEED_MORE,
  FERRY_BRIDGE_PARSE_FRAME, /* *header, *body (header->size - 16 bytes): valid until the
                               next feed */
  FERRY_BRIDGE_PARSE_ERROR,
} FerryBridgeParseResult;

FerryBridgeParser *ferry_bridge_parser_new(gsize max_message);
void ferry_bridge_parser_free(FerryBridgeParser *parser);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FerryBridgeParser, ferry_bridge_parser_free)
void ferry_bridge_parser_feed(FerryBridgeParser *parser, const guint8 *data, gsize len);
/* Drop anything buffered (a new connection starts clean). */
void ferry_bridge_parser_reset(FerryBridgeParser *parser);
FerryBridgeParseResult ferry_bridge_parser_next(FerryBridgeParser *parser,
                                                FerryBridgeHeader *header, const guint8 **body,
                                                GError **error);

/*
 * Encode a whole message: header + compact JSON of `body` (+ "\n" when
 * `trailing_newline`, as hcsshim's host writes with a json.Encoder). Fails with
 * RESOURCE_EXHAUSTED when it would exceed `max_message`.
 */
GBytes *ferry_bridge_message_encode(guint32 type, guint64 id, const json_t *body,
                                    gboolean trailing_newline, gsize max_message, GError **error);

/* ------------------------------------------------------------------ bodies -- */

/* Parse a body: one JSON object, an optional trailing newline. New reference. */
json_t *ferry_bridge_body_parse(const guint8 *body, gsize len, GError **error);

/* {"ContainerId": container_id, "ActivityId": activity_id or the zero GUID}. */
json_t *ferry_bridge_request_base(const char *container_id, const char *activity_id);

/*
 * A response body: {"Result": hresult, "ActivityId": ...} and, when hresult is not 0,
 * "ErrorMessage" and one "ErrorRecords" entry as the Linux GCS writes them.
 */
json_t *ferry_bridge_response_base(const char *activity_id, guint32 hresult, const char *message);

/*
 * Check a response body: FALSE with a FERRY_BRIDGE_ERROR (code = Result) when Result
 * is not 0, message "<what>: <ErrorMessage>". A body without a Result or with a
 * malformed one is FERRY_ERROR_INVALID_ARGUMENT.
 */
gboolean ferry_bridge_response_check(json_t *body, const char *what, GError **error);

/* "AnyInString" fields (ContainerConfig, ProcessParameters, Query, Properties,
 * ResultInfo): a JSON string holding JSON. get: parse it (new reference; NULL with
 * *out when absent and not required). set: serialize `value` into obj[key] (steals
 * the reference). */
gboolean ferry_bridge_get_embedded(json_t *obj, const char *key, gboolean required, json_t **out,
                                   GError **error);
void ferry_bridge_set_embedded(json_t *obj, const char *key, json_t *value);

G_END_DECLS
