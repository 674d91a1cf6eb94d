/*
 * The host side of the GCS bridge (hcsshim's internal/gcs): the raw bridge that
 * matches answers to requests by id, with its kill and migrating modes. The guest
 * manager on top of it (connection, container, process) is ferry/guest.h.
 *
 * Everything is asynchronous on the thread-default GMainContext of creation: an
 * operation takes a callback that runs exactly once, never from inside the call that
 * started it. The guest is the less-trusted side: every answer is bounded and checked,
 * and a guest that breaks the protocol gets the bridge killed with a clear error.
 */
#pragma once

#include <glib.h>
#include <jansson.h>

#include "ferry/bridge-protocol.h"

G_BEGIN_DECLS

/* ================================================================ bridge == */

typedef struct FerryBridge FerryBridge;

/* The answer to an RPC: `response` (borrowed, valid during the call) with Result 0, or
 * `error`: FERRY_BRIDGE_ERROR with the guest's HRESULT, or FERRY_BRIDGE_CLOSED_ERROR
 * ("bridge closed: <cause>") when the bridge died, or FERRY_ERROR for local causes. */
typedef void (*FerryBridgeResponseFunc)(FerryBridge *bridge, json_t *response, const GError *error,
                                        gpointer user_data);

/* A container notification from the guest (borrowed). Returning FALSE kills the
 * bridge with the error set. */
typedef gboolean (*FerryBridgeNotifyFunc)(FerryBridge *bridge, json_t *notification,
                                          gpointer user_data, GError **error);

/* The bridge died; `cause` says why (never NULL). Runs once. */
typedef void (*FerryBridgeDeadFunc)(FerryBridge *bridge, const GError *cause, gpointer user_data);

/* Default time an RPC may take before the whole bridge is killed (hcsshim: 5 min). */
#define FERRY_BRIDGE_DEFAULT_TIMEOUT_MS (5u * 60u * 1000u)

/* Take a connected stream fd to the guest. Request ids start at 0. */
FerryBridge *ferry_bridge_new(int fd, GError **error);
FerryBridge *ferry_bridge_ref(FerryBridge *bridge);
void ferry_bridge_unref(FerryBridge *bridge);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FerryBridge, ferry_bridge_unref)

void ferry_bridge_set_notify_func(FerryBridge *bridge, FerryBridgeNotifyFunc func,
                                  gpointer user_data);
void ferry_bridge_set_dead_func(FerryBridge *bridge, FerryBridgeDeadFunc func, gpointer user_data);

/*
 * Send a request of `rpc` with `body` (borrowed) and return its id. `timeout_ms` 0
 * means no time limit (WaitForProcess); past a limit the bridge is killed, as hcsshim
 * does. `done` runs once (on a dead bridge: from the main loop, with the closed error).
 */
guint64 ferry_bridge_rpc(FerryBridge *bridge, FerryBridgeRpc rpc, json_t *body, guint timeout_ms,
                         FerryBridgeResponseFunc done, gpointer user_data);

/* Forget a pending RPC: `done` will not run. Its id stays known so that the guest's
 * late answer is swallowed rather than treated as a protocol error. */
gboolean ferry_bridge_rpc_cancel(FerryBridge *bridge, guint64 id);

/* Kill the bridge: close the connection and fail every pending RPC with
 * "bridge closed: <cause message>". Idempotent. */
void ferry_bridge_kill(FerryBridge *bridge, const GError *cause);
gboolean ferry_bridge_is_dead(FerryBridge *bridge);
/* The error pending RPCs failed with (NULL while alive). */
const GError *ferry_bridge_get_error(FerryBridge *bridge);

/*
 * Migrating mode: while set, losing the connection parks the bridge instead of
 * killing it -- pending RPCs stay, new RPCs fail at once with UNAVAILABLE -- until
 * ferry_bridge_resume_on_conn(). Clearing it while parked kills the bridge.
 */
void ferry_bridge_set_migrating(FerryBridge *bridge, gboolean migrating);
gboolean ferry_bridge_is_migrating(FerryBridge *bridge);
gboolean ferry_bridge_is_parked(FerryBridge *bridge);

/* Swap in a new connection (only while migrating), closing the old one and keeping
 * every pending RPC. Takes ownership of fd. */
gboolean ferry_bridge_resume_on_conn(FerryBridge *bridge, int fd, GError **error);

/* The next request id, and raising it (never lowers it). Ids below a seeded floor were
 * issued by other hosts: an answer to one that is not pre-registered is dropped rather
 * than fatal (a process reopened on several hosts has a wait from each). */
guint64 ferry_bridge_next_id(FerryBridge *bridge);
void ferry_bridge_seed_next_id(FerryBridge *bridge, guint64 next_id);

/*
 * Expect the guest's answer to a request another host sent (a source's outstanding
 * WaitForProcess): route an answer with `id` to `done` without sending anything. The
 * id floor is raised above it. ALREADY_EXISTS if the id is pending, UNAVAILABLE
 * (FERRY_BRIDGE_CLOSED_ERROR) on a dead bridge.
 */
gboolean ferry_bridge_preregister_rpc(FerryBridge *bridge, guint64 id, FerryBridgeRpc rpc,
                                      FerryBridgeResponseFunc done, gpointer user_data,
                                      GError **error);

guint ferry_bridge_pending_count(FerryBridge *bridge);

G_END_DECLS
