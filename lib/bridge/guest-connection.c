/* The guest manager: GuestConnection, Container and Process over the host bridge. */
#include <signal.h>
#include <string.h>

#include "ferry/error.h"
#include "ferry/guest.h"
#include "ferry/json.h"
#include "ferry/source.h"

struct FerryGuestConnection {
  GMainContext *context; /* thread-default at creation: every idle of ours goes there */
  FerryBridge *bridge;
  FerryGuestPortHooks hooks;
  gpointer hooks_data;
  guint32 next_port;
  guint32 protocol;
  char *os;
  GHashTable *containers; /* container id -> FerryGuestContainer (a reference) */
  GHashTable *processes;  /* every live FerryGuestProcess (not a reference) */
  FerryGuestOomFunc oom_func;
  gpointer oom_data;
};

typedef struct {
  FerryGuestDoneFunc done;
  gpointer user_data;
} Waiter;

struct FerryGuestContainer {
  gint refs;
  FerryGuestConnection *gc; /* NULL once closed or the connection is gone */
  GMainContext *context;    /* the connection's */
  char *id;
  gboolean exited;
  char *exit_type;
  GError *exit_error; /* "container closed" */
  GArray *waiters;    /* Waiter */
};

struct FerryGuestProcess {
  gint refs;
  FerryGuestConnection *gc;
  GMainContext *context; /* the connection's: the process may outlive it */
  char *container_id;
  guint32 pid;
  guint64 serial;            /* the guest's FerryProcessSerial; 0 = not given (pid only) */
  guint32 ports[3];          /* stdin, stdout, stderr; 0 = none */
  guint64 wait_id;           /* the newest outstanding wait; 0 = none */
  guint waits_pending;       /* WaitForProcess calls not answered yet */
  gboolean needs_fresh_wait; /* reopened: send a wait of our own after negotiating */
  gboolean waited;           /* the wait call completed */
  GError *wait_error;
  int exit_code;
  gboolean closed;
  GArray *waiters; /* Waiter */
};

/* Default bridge timeout for ordinary calls; shutdowns get 30 s as in hcsshim. */
#define SHUTDOWN_TIMEOUT_MS 30000u

/* ------------------------------------------------------------- helpers -- */

static int exit_error_to_status(int code)
{
  return FERRY_ERROR_NOT_FOUND;
}

FERRY_DEFINE_ERROR_DOMAIN(ferry_guest_exit_error_quark, "ferry-guest-exit-error-quark",
                          exit_error_to_status)

/* Report a failure (or a done without result) from the main loop: the API never
 * calls back from inside the call that started the operation. Exactly one of the
 * callbacks is set. */
typedef struct {
  FerryGuestDoneFunc done;
  FerryGuestProcessFunc process_done;
  FerryGuestJsonFunc json_done;
  gpointer user_data;
  GError *error;
} Deferred;

static gboolean run_deferred(gpointer p)
{
  Deferred *d = p;
  if (d->done != NULL)
    d->done(d->error, d->user_data);
  else if (d->process_done != NULL)
    d->process_done(NULL, d->error, d->user_data);
  else
    d->json_done(NULL, d->error, d->user_data);
  g_clear_error(&d->error);
  g_free(d);
  return G_SOURCE_REMOVE;
}

/* The idle holds no object of ours, only the caller's callback, so it may outlive the
 * object that queued it; it runs on that object's context. */
static void defer(GMainContext *context, FerryGuestDoneFunc done,
                  FerryGuestProcessFunc process_done, FerryGuestJsonFunc json_done,
                  gpointer user_data, const GError *error)
{
  if (done == NULL && process_done == NULL && json_done == NULL)
    return;
  Deferred *d = g_new0(Deferred, 1);
  d->done = done;
  d->process_done = process_done;
  d->json_done = json_done;
  d->user_data = user_data;
  d->error = error != NULL ? g_error_copy(error) : NULL;
  GSource *source = ferry_idle_new(context, run_deferred, d);
  g_source_unref(source); /* the context keeps it until it has run */
}

static void defer_done(GMainContext *context, FerryGuestDoneFunc done, gpointer user_data,
                       const GError *error)
{
  defer(context, done, NULL, NULL, user_data, error);
}

static void run_waiters(GArray *waiters, const GError *error)
{
  /* Callbacks may add waiters; take the list first. */
  g_autoptr(GArray) list = g_array_copy(waiters);
  g_array_set_size(waiters, 0);
  for (guint i = 0; i < list->len; i++) {
    Waiter *w = &g_array_index(list, Waiter, i);
    w->done(error, w->user_data);
  }
}

/* One RPC whose answer only matters as done/failed, or as a JSON result. */
typedef struct {
  FerryGuestDoneFunc done;
  FerryGuestJsonFunc json_done;
  gpointer user_data;
  guint32 tolerate; /* an HRESULT that counts as success (shutdown: "does not exist") */
} Call;

static void on_call_answer(FerryBridge *b, json_t *response, const GError *error, gpointer p)
{
  Call *c = p;
  if (error != NULL && c->tolerate != 0 && ferry_bridge_error_hresult(error) == c->tolerate)
    error = NULL;
  if (c->done != NULL)
    c->done(error, c->user_data);
  if (c->json_done != NULL)
    c->json_done(error == NULL ? response : NULL, error, c->user_data);
  g_free(c);
}

static void call(FerryGuestConnection *gc, FerryBridgeRpc rpc, json_t *body, guint timeout_ms,
                 guint32 tolerate, FerryGuestDoneFunc done, FerryGuestJsonFunc json_done,
                 gpointer user_data)
{
  Call *c = g_new0(Call, 1);
  c->done = done;
  c->json_done = json_done;
  c->user_data = user_data;
  c->tolerate = tolerate;
  ferry_bridge_rpc(gc->bridge, rpc, body, timeout_ms, on_call_answer, c);
}

/* The bridge of a container or process whose connection may be gone. */
static gboolean usable(FerryGuestConnection *gc, const char *what, GError **error)
{
  if (gc == NULL) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION, "%s is closed", what);
    return FALSE;
  }
  return TRUE;
}

/* ---------------------------------------------------- guest connection -- */

static void container_mark_exited(FerryGuestContainer *c, const char *type, const GError *error);
static void send_fresh_waits(FerryGuestConnection *gc);

/* Ferry's OOM notification: the container goes on. One for a container the host no
 * longer follows (closed before the guest deleted it) is dropped, not an error. */
static gboolean on_oom_notification(FerryGuestConnection *gc, json_t *body, const char *cid,
                                    GError **error)
{
  gint64 count = 0;
  if (!ferry_json_get_int64(body, FERRY_BRIDGE_OOM_KILL_COUNT, FALSE, &count, error))
    return FALSE;
  if (g_hash_table_lookup(gc->containers, cid) != NULL && gc->oom_func != NULL)
    gc->oom_func(gc, cid, count > 0 ? (guint64)count : 0, gc->oom_data);
  return TRUE;
}

static gboolean on_notification(FerryBridge *b, json_t *body, gpointer ud, GError **error)
{
  FerryGuestConnection *gc = ud;
  const char *cid, *type;
  if (!ferry_json_get_string(body, "ContainerId", TRUE, &cid, error) ||
      !ferry_json_get_string(body, "Type", FALSE, &type, error))
    return FALSE;
  if (g_strcmp0(type, FERRY_BRIDGE_NOTIFY_TYPE_OOM_KILL) == 0)
    return on_oom_notification(gc, body, cid, error);
  FerryGuestContainer *c = g_hash_table_lookup(gc->containers, cid);
  if (c == NULL) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND, "notification for unknown container %s",
                cid);
    return FALSE;
  }
  /* Hold the container: removing it from the table drops the table's reference. */
  ferry_guest_container_ref(c);
  g_hash_table_remove(gc->containers, cid);
  c->gc = NULL;
  container_mark_exited(c, type != NULL ? type : "UnexpectedExit", NULL);
  ferry_guest_container_unref(c);
  return TRUE;
}

static void on_bridge_dead(FerryBridge *b, const GError *cause, gpointer ud)
{
  FerryGuestConnection *gc = ud;
  /* Every container the guest can no longer report on reads as exited. */
  GList *all = g_hash_table_get_values(gc->containers);
  for (GList *l = all; l != NULL; l = l->next)
    ferry_guest_container_ref(l->data);
  g_hash_table_remove_all(gc->containers);
  for (GList *l = all; l != NULL; l = l->next) {
    FerryGuestContainer *c = l->data;
    c->gc = NULL;
    container_mark_exited(c, NULL, NULL);
    ferry_guest_container_unref(c);
  }
  g_list_free(all);
}

FerryGuestConnection *ferry_guest_connection_new(int fd, const FerryGuestPortHooks *hooks,
                                                 gpointer hooks_data, GError **error)
{
  FerryBridge *bridge = ferry_bridge_new(fd, error);
  if (bridge == NULL)
    return NULL;
  FerryGuestConnection *gc = g_new0(FerryGuestConnection, 1);
  gc->context = g_main_context_ref_thread_default();
  gc->bridge = bridge;
  if (hooks != NULL)
    gc->hooks = *hooks;
  gc->hooks_data = hooks_data;
  gc->next_port = FERRY_GCS_FIRST_STDIO_PORT;
  gc->containers = g_hash_table_new_full(g_str_hash, g_str_equal, NULL,
                                         (GDestroyNotify)ferry_guest_container_unref);
  gc->processes = g_hash_table_new(NULL, NULL);
  ferry_bridge_set_notify_func(bridge, on_notification, gc);
  ferry_bridge_set_dead_func(bridge, on_bridge_dead, gc);
  return gc;
}

void ferry_guest_connection_free(FerryGuestConnection *gc)
{
  if (gc == NULL)
    return;
  g_autoptr(GError) cause =
      g_error_new(FERRY_ERROR, FERRY_ERROR_CANCELLED, "guest connection closed");
  ferry_bridge_kill(gc->bridge, cause);
  /* Processes outlive the connection as plain records: release their ports now. */
  GHashTableIter it;
  gpointer key;
  g_hash_table_iter_init(&it, gc->processes);
  while (g_hash_table_iter_next(&it, &key, NULL)) {
    FerryGuestProcess *p = key;
    ferry_guest_process_close(p);
    p->gc = NULL;
  }
  g_hash_table_unref(gc->processes);
  ferry_bridge_set_notify_func(gc->bridge, NULL, NULL);
  ferry_bridge_set_dead_func(gc->bridge, NULL, NULL);
  ferry_bridge_unref(gc->bridge);
  g_hash_table_unref(gc->containers);
  g_free(gc->os);
  g_main_context_unref(gc->context);
  g_free(gc);
}

FerryBridge *ferry_guest_connection_get_bridge(FerryGuestConnection *gc)
{
  return gc->bridge;
}

typedef struct {
  FerryGuestConnection *gc;
  FerryGuestDoneFunc done;
  gpointer user_data;
  gboolean leave_migrating;
} Negotiation;

static void on_negotiated(FerryBridge *b, json_t *response, const GError *error, gpointer p)
{
  Negotiation *n = p;
  g_autoptr(GError) local = NULL;
  guint32 version = 0;
  if (error == NULL) {
    if (!ferry_json_get_uint32(response, "Version", TRUE, &version, &local)) {
      g_prefix_error(&local, "NegotiateProtocol: ");
    } else if (version != FERRY_BRIDGE_PROTOCOL_V4) {
      g_set_error(&local, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION,
                  "NegotiateProtocol: guest selected version %u, need 4", version);
    } else {
      json_t *caps = NULL;
      const char *os = NULL;
      if (ferry_json_get_object(response, "Capabilities", FALSE, &caps, &local) &&
          ferry_json_get_string(caps, "RuntimeOsType", FALSE, &os, &local)) {
        g_free(n->gc->os);
        n->gc->os = g_ascii_strdown(os != NULL && *os ? os : "windows", -1);
        n->gc->protocol = version;
      }
    }
    error = local;
  }
  if (error == NULL && n->leave_migrating)
    ferry_bridge_set_migrating(n->gc->bridge, FALSE);
  if (error == NULL)
    send_fresh_waits(n->gc);
  n->done(error, n->user_data);
  g_free(n);
}

static void negotiate(FerryGuestConnection *gc, gboolean leave_migrating, FerryGuestDoneFunc done,
                      gpointer user_data)
{
  Negotiation *n = g_new0(Negotiation, 1);
  n->gc = gc;
  n->done = done;
  n->user_data = user_data;
  n->leave_migrating = leave_migrating;
  g_autoptr(json_t) body = ferry_bridge_request_base(FERRY_NULL_CONTAINER_ID, NULL);
  json_object_set_new(body, "MinimumVersion", json_integer(FERRY_BRIDGE_PROTOCOL_V4));
  json_object_set_new(body, "MaximumVersion", json_integer(FERRY_BRIDGE_PROTOCOL_V4));
  /* Ferry's notifications this host understands (hcsshim's guest ignores the field). */
  json_object_set_new(body, FERRY_BRIDGE_NOTIFICATIONS_FIELD,
                      json_pack("[s]", FERRY_BRIDGE_NOTIFY_TYPE_OOM_KILL));
  ferry_bridge_rpc(gc->bridge, FERRY_BRIDGE_RPC_NEGOTIATE_PROTOCOL, body,
                   FERRY_BRIDGE_DEFAULT_TIMEOUT_MS, on_negotiated, n);
}

void ferry_guest_connection_connect(FerryGuestConnection *gc, FerryGuestDoneFunc done,
                                    gpointer user_data)
{
  negotiate(gc, FALSE, done, user_data);
}

void ferry_guest_connection_set_oom_func(FerryGuestConnection *gc, FerryGuestOomFunc func,
                                         gpointer user_data)
{
  gc->oom_func = func;
  gc->oom_data = user_data;
}

guint32 ferry_guest_connection_protocol(FerryGuestConnection *gc)
{
  return gc->protocol;
}

const char *ferry_guest_connection_os(FerryGuestConnection *gc)
{
  return gc->os;
}

void ferry_guest_connection_modify(FerryGuestConnection *gc, const char *container_id,
                                   json_t *request, FerryGuestDoneFunc done, gpointer user_data)
{
  g_autoptr(json_t) body = ferry_bridge_request_base(
      container_id != NULL ? container_id : FERRY_NULL_CONTAINER_ID, NULL);
  json_object_set(body, "Request", request);
  call(gc, FERRY_BRIDGE_RPC_MODIFY_SETTINGS, body, FERRY_BRIDGE_DEFAULT_TIMEOUT_MS, 0, done, NULL,
       user_data);
}

void ferry_guest_connection_dump_stacks(FerryGuestConnection *gc, FerryGuestJsonFunc done,
                                        gpointer user_data)
{
  g_autoptr(json_t) body = ferry_bridge_request_base(FERRY_NULL_CONTAINER_ID, NULL);
  call(gc, FERRY_BRIDGE_RPC_DUMP_STACKS, body, FERRY_BRIDGE_DEFAULT_TIMEOUT_MS, 0, NULL, done,
       user_data);
}

void ferry_guest_connection_delete_container_state(FerryGuestConnection *gc,
                                                   const char *container_id,
                                                   FerryGuestDoneFunc done, gpointer user_data)
{
  g_autoptr(json_t) body = ferry_bridge_request_base(container_id, NULL);
  call(gc, FERRY_BRIDGE_RPC_DELETE_CONTAINER_STATE, body, FERRY_BRIDGE_DEFAULT_TIMEOUT_MS, 0, done,
       NULL, user_data);
}

guint32 ferry_guest_connection_next_port(FerryGuestConnection *gc)
{
  return gc->next_port;
}

void ferry_guest_connection_set_next_port(FerryGuestConnection *gc, guint32 port)
{
  if (port > gc->next_port)
    gc->next_port = port;
}

guint64 ferry_guest_connection_next_id(FerryGuestConnection *gc)
{
  return ferry_bridge_next_id(gc->bridge);
}

void ferry_guest_connection_seed_next_id(FerryGuestConnection *gc, guint64 next_id)
{
  ferry_bridge_seed_next_id(gc->bridge, next_id);
}

void ferry_guest_connection_set_migrating(FerryGuestConnection *gc, gboolean migrating)
{
  ferry_bridge_set_migrating(gc->bridge, migrating);
}

void ferry_guest_connection_resume_on_conn(FerryGuestConnection *gc, int fd,
                                           FerryGuestDoneFunc done, gpointer user_data)
{
  g_autoptr(GError) error = NULL;
  if (!ferry_bridge_resume_on_conn(gc->bridge, fd, &error)) {
    defer_done(gc->context, done, user_data, error);
    return;
  }
  /* The guest resets its protocol version on every connection. */
  negotiate(gc, TRUE, done, user_data);
}

/* ------------------------------------------------------------ processes -- */

static FerryGuestProcess *process_new(FerryGuestConnection *gc, const char *container_id,
                                      guint32 pid)
{
  FerryGuestProcess *p = g_new0(FerryGuestProcess, 1);
  p->refs = 1;
  p->gc = gc;
  p->context = g_main_context_ref(gc->context);
  p->container_id = g_strdup(container_id);
  p->pid = pid;
  p->waiters = g_array_new(FALSE, FALSE, sizeof(Waiter));
  g_hash_table_add(gc->processes, p);
  return p;
}

FerryGuestProcess *ferry_guest_process_ref(FerryGuestProcess *p)
{
  p->refs++;
  return p;
}

void ferry_guest_process_unref(FerryGuestProcess *p)
{
  if (p == NULL || --p->refs > 0)
    return;
  ferry_guest_process_close(p);
  if (p->gc != NULL)
    g_hash_table_remove(p->gc->processes, p);
  g_array_unref(p->waiters);
  g_clear_error(&p->wait_error);
  g_free(p->container_id);
  g_main_context_unref(p->context);
  g_free(p);
}

guint32 ferry_guest_process_get_pid(FerryGuestProcess *p)
{
  return p->pid;
}

guint64 ferry_guest_process_get_serial(FerryGuestProcess *p)
{
  return p->serial;
}

void ferry_guest_process_set_serial(FerryGuestProcess *p, guint64 serial)
{
  p->serial = serial;
}

/* A request about process `p`: its ProcessId and, when the guest gave one, the serial that
 * tells it from a later process with the same pid. */
static json_t *process_request(FerryGuestProcess *p)
{
  json_t *body = ferry_bridge_request_base(p->container_id, NULL);
  json_object_set_new(body, "ProcessId", json_integer(p->pid));
  if (p->serial != 0)
    json_object_set_new(body, FERRY_BRIDGE_PROCESS_SERIAL, json_integer((json_int_t)p->serial));
  return body;
}

FerryGuestMigrationState ferry_guest_process_migration_state(FerryGuestProcess *p)
{
  FerryGuestMigrationState s = { p->ports[0], p->ports[1], p->ports[2], p->waited ? 0 : p->wait_id,
                                 p->serial };
  return s;
}

/*
 * The answer to one of the process's WaitForProcess calls: a sent one, or one another
 * host sent that was pre-registered. A reopened process has both (the other host's
 * answer may have been lost with its connection), so the first success wins, and an
 * error counts only when no other wait is still pending. Each pending wait holds a
 * reference.
 */
static void on_process_waited(FerryBridge *b, json_t *response, const GError *error, gpointer ud)
{
  FerryGuestProcess *p = ud;
  p->waits_pending--;
  if (!p->waited && (error == NULL || p->waits_pending == 0)) {
    p->waited = TRUE;
    if (error != NULL) {
      p->wait_error = g_error_copy(error);
    } else {
      guint32 code = 0;
      g_autoptr(GError) local = NULL;
      if (!ferry_json_get_uint32(response, "ExitCode", FALSE, &code, &local))
        p->wait_error = g_steal_pointer(&local);
      p->exit_code = (int)code;
    }
    run_waiters(p->waiters, p->wait_error);
  }
  ferry_guest_process_unref(p);
}

static void start_wait(FerryGuestProcess *p)
{
  g_autoptr(json_t) body = process_request(p);
  json_object_set_new(body, "TimeoutInMs", json_integer(FERRY_BRIDGE_INFINITE_TIMEOUT));
  ferry_guest_process_ref(p);
  p->waits_pending++;
  p->wait_id = ferry_bridge_rpc(p->gc->bridge, FERRY_BRIDGE_RPC_WAIT_FOR_PROCESS, body, 0,
                                on_process_waited, p);
}

/* After a negotiation: reopened processes get a wait of their own (hcsshim #2866 probes
 * for the same reason: an exit answered to the old host may never arrive here). */
static void send_fresh_waits(FerryGuestConnection *gc)
{
  GHashTableIter it;
  gpointer key;
  g_hash_table_iter_init(&it, gc->processes);
  while (g_hash_table_iter_next(&it, &key, NULL)) {
    FerryGuestProcess *p = key;
    if (p->needs_fresh_wait && !p->waited) {
      p->needs_fresh_wait = FALSE;
      start_wait(p);
    }
  }
}

void ferry_guest_process_wait(FerryGuestProcess *p, FerryGuestDoneFunc done, gpointer user_data)
{
  if (!p->waited && p->gc == NULL) {
    g_autoptr(GError) error =
        g_error_new(FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION, "process %u is closed", p->pid);
    defer_done(p->context, done, user_data, error);
    return;
  }
  if (p->waited) {
    defer_done(p->context, done, user_data, p->wait_error);
    return;
  }
  Waiter w = { done, user_data };
  g_array_append_val(p->waiters, w);
}

gboolean ferry_guest_process_exit_code(FerryGuestProcess *p, int *code, GError **error)
{
  if (!p->waited) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION, "process %u not exited",
                p->pid);
    return FALSE;
  }
  if (p->wait_error != NULL && ferry_bridge_error_hresult(p->wait_error) == FERRY_HR_NOT_FOUND) {
    /* hcsshim reads this as exit code 0; a status nobody has must never look like success. */
    g_set_error(error, FERRY_GUEST_EXIT_ERROR, FERRY_GUEST_EXIT_ERROR_LOST,
                "process %u: exit status lost (%s)", p->pid, p->wait_error->message);
    return FALSE;
  }
  if (p->wait_error != NULL) {
    g_propagate_error(error, g_error_copy(p->wait_error));
    return FALSE;
  }
  *code = p->exit_code;
  return TRUE;
}

typedef struct {
  FerryGuestSignalFunc done;
  gpointer user_data;
} SignalCall;

static void on_signalled(FerryBridge *b, json_t *response, const GError *error, gpointer ud)
{
  SignalCall *s = ud;
  if (error != NULL && ferry_bridge_error_hresult(error) == FERRY_HR_NOT_FOUND)
    s->done(FALSE, NULL, s->user_data);
  else
    s->done(error == NULL, error, s->user_data);
  g_free(s);
}

static gboolean on_signal_failed(gpointer p)
{
  SignalCall *s = p;
  g_autoptr(GError) error =
      g_error_new(FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION, "process is closed");
  s->done(FALSE, error, s->user_data);
  g_free(s);
  return G_SOURCE_REMOVE;
}

void ferry_guest_process_signal(FerryGuestProcess *p, int signal, FerryGuestSignalFunc done,
                                gpointer user_data)
{
  SignalCall *s = g_new0(SignalCall, 1);
  s->done = done;
  s->user_data = user_data;
  if (p->gc == NULL) {
    g_source_unref(ferry_idle_new(p->context, on_signal_failed, s)); /* holds no object */
    return;
  }
  g_autoptr(json_t) body = process_request(p);
  if (signal != 0)
    json_object_set_new(body, "Options", json_pack("{s:i}", "Signal", signal));
  ferry_bridge_rpc(p->gc->bridge, FERRY_BRIDGE_RPC_SIGNAL_PROCESS, body,
                   FERRY_BRIDGE_DEFAULT_TIMEOUT_MS, on_signalled, s);
}

void ferry_guest_process_kill(FerryGuestProcess *p, FerryGuestSignalFunc done, gpointer user_data)
{
  ferry_guest_process_signal(p, 0, done, user_data);
}

void ferry_guest_process_resize_console(FerryGuestProcess *p, guint16 width, guint16 height,
                                        FerryGuestDoneFunc done, gpointer user_data)
{
  g_autoptr(GError) error = NULL;
  if (!usable(p->gc, "process", &error)) {
    defer_done(p->context, done, user_data, error);
    return;
  }
  g_autoptr(json_t) body = process_request(p);
  json_object_set_new(body, "Height", json_integer(height));
  json_object_set_new(body, "Width", json_integer(width));
  call(p->gc, FERRY_BRIDGE_RPC_RESIZE_CONSOLE, body, FERRY_BRIDGE_DEFAULT_TIMEOUT_MS, 0, done, NULL,
       user_data);
}

void ferry_guest_process_close_stdin(FerryGuestProcess *p)
{
  if (p->gc != NULL && p->ports[0] != 0 && p->gc->hooks.close_write != NULL)
    p->gc->hooks.close_write(p->ports[0], p->gc->hooks_data);
}

void ferry_guest_process_close(FerryGuestProcess *p)
{
  if (p->closed)
    return;
  p->closed = TRUE;
  if (p->gc == NULL || p->gc->hooks.release == NULL)
    return;
  for (int i = 0; i < 3; i++)
    if (p->ports[i] != 0)
      p->gc->hooks.release(p->ports[i], p->gc->hooks_data);
}

/* Ask the transport to listen on each port; undo on failure. */
static gboolean listen_ports(FerryGuestConnection *gc, const guint32 ports[3], GError **error)
{
  if (gc->hooks.listen == NULL)
    return TRUE;
  for (int i = 0; i < 3; i++) {
    if (ports[i] == 0)
      continue;
    if (!gc->hooks.listen(ports[i], gc->hooks_data, error)) {
      for (int j = 0; j < i; j++)
        if (ports[j] != 0 && gc->hooks.release != NULL)
          gc->hooks.release(ports[j], gc->hooks_data);
      return FALSE;
    }
  }
  return TRUE;
}

typedef struct {
  FerryGuestConnection *gc;
  char *container_id;
  guint32 ports[3];
  FerryGuestProcessFunc done;
  gpointer user_data;
} Exec;

static void exec_free(Exec *e)
{
  g_free(e->container_id);
  g_free(e);
}

static void on_executed(FerryBridge *b, json_t *response, const GError *error, gpointer ud)
{
  Exec *e = ud;
  g_autoptr(GError) local = NULL;
  guint32 pid = 0;
  gint64 serial = 0;
  if (error == NULL &&
      (!ferry_json_get_uint32(response, "ProcessId", TRUE, &pid, &local) ||
       !ferry_json_get_int64(response, FERRY_BRIDGE_PROCESS_SERIAL, FALSE, &serial, &local))) {
    g_prefix_error(&local, "ExecuteProcess: ");
    error = local;
  }
  if (error == NULL && serial < 0) {
    g_set_error(&local, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "ExecuteProcess: negative %s",
                FERRY_BRIDGE_PROCESS_SERIAL);
    error = local;
  }
  if (error != NULL) {
    if (e->gc->hooks.release != NULL)
      for (int i = 0; i < 3; i++)
        if (e->ports[i] != 0)
          e->gc->hooks.release(e->ports[i], e->gc->hooks_data);
    e->done(NULL, error, e->user_data);
    exec_free(e);
    return;
  }
  FerryGuestProcess *p = process_new(e->gc, e->container_id, pid);
  p->serial = (guint64)serial;
  memcpy(p->ports, e->ports, sizeof(p->ports));
  start_wait(p);
  e->done(p, NULL, e->user_data);
  exec_free(e);
}

static void exec(FerryGuestConnection *gc, const char *container_id, json_t *params,
                 FerryGuestProcessFunc done, gpointer user_data)
{
  g_autoptr(GError) error = NULL;
  static const char *const pipes[3] = { "CreateStdInPipe", "CreateStdOutPipe", "CreateStdErrPipe" };
  guint32 ports[3] = { 0, 0, 0 };
  for (int i = 0; i < 3 && error == NULL; i++) {
    gboolean want = FALSE;
    if (ferry_json_get_bool(params, pipes[i], FALSE, &want, &error) && want)
      ports[i] = gc->next_port++;
  }
  if (error == NULL && !json_is_object(params))
    g_set_error(&error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                "process parameters must be a JSON object");
  if (error == NULL)
    listen_ports(gc, ports, &error);
  if (error != NULL) {
    defer(gc->context, NULL, done, NULL, user_data, error);
    return;
  }
  g_autoptr(json_t) body = ferry_bridge_request_base(container_id, NULL);
  json_t *settings = json_object();
  ferry_bridge_set_embedded(settings, "ProcessParameters", json_incref(params));
  json_t *relay = json_object();
  static const char *const names[3] = { "StdIn", "StdOut", "StdErr" };
  for (int i = 0; i < 3; i++)
    if (ports[i] != 0)
      json_object_set_new(relay, names[i], json_integer(ports[i]));
  json_object_set_new(settings, "VsockStdioRelaySettings", relay);
  json_object_set_new(body, "Settings", settings);

  Exec *e = g_new0(Exec, 1);
  e->gc = gc;
  e->container_id = g_strdup(container_id);
  memcpy(e->ports, ports, sizeof(ports));
  e->done = done;
  e->user_data = user_data;
  ferry_bridge_rpc(gc->bridge, FERRY_BRIDGE_RPC_EXECUTE_PROCESS, body,
                   FERRY_BRIDGE_DEFAULT_TIMEOUT_MS, on_executed, e);
}

void ferry_guest_connection_create_process(FerryGuestConnection *gc, json_t *params,
                                           FerryGuestProcessFunc done, gpointer user_data)
{
  exec(gc, FERRY_NULL_CONTAINER_ID, params, done, user_data);
}

/* ----------------------------------------------------------- containers -- */

static FerryGuestContainer *container_register(FerryGuestConnection *gc, const char *id,
                                               GError **error)
{
  if (id == NULL || *id == '\0') {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT, "container id is empty");
    return NULL;
  }
  if (ferry_bridge_is_dead(gc->bridge)) {
    g_propagate_error(error, g_error_copy(ferry_bridge_get_error(gc->bridge)));
    return NULL;
  }
  if (g_hash_table_contains(gc->containers, id)) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_ALREADY_EXISTS, "container %s already exists", id);
    return NULL;
  }
  FerryGuestContainer *c = g_new0(FerryGuestContainer, 1);
  c->refs = 1;
  c->gc = gc;
  c->context = g_main_context_ref(gc->context);
  c->id = g_strdup(id);
  c->waiters = g_array_new(FALSE, FALSE, sizeof(Waiter));
  g_hash_table_insert(gc->containers, c->id, ferry_guest_container_ref(c));
  return c;
}

FerryGuestContainer *ferry_guest_container_ref(FerryGuestContainer *c)
{
  c->refs++;
  return c;
}

void ferry_guest_container_unref(FerryGuestContainer *c)
{
  if (c == NULL || --c->refs > 0)
    return;
  g_array_unref(c->waiters);
  g_clear_error(&c->exit_error);
  g_free(c->exit_type);
  g_free(c->id);
  g_main_context_unref(c->context);
  g_free(c);
}

const char *ferry_guest_container_get_id(FerryGuestContainer *c)
{
  return c->id;
}

static void container_mark_exited(FerryGuestContainer *c, const char *type, const GError *error)
{
  if (c->exited)
    return;
  c->exited = TRUE;
  c->exit_type = g_strdup(type);
  c->exit_error = error != NULL ? g_error_copy(error) : NULL;
  ferry_guest_container_ref(c);
  run_waiters(c->waiters, c->exit_error);
  ferry_guest_container_unref(c);
}

/* Stop following: out of the notification table, waits done with `error`. */
static void container_detach(FerryGuestContainer *c, const GError *error)
{
  ferry_guest_container_ref(c);
  FerryGuestConnection *gc = g_steal_pointer(&c->gc);
  if (gc != NULL && g_hash_table_lookup(gc->containers, c->id) == c)
    g_hash_table_remove(gc->containers, c->id);
  container_mark_exited(c, NULL, error);
  ferry_guest_container_unref(c);
}

typedef struct {
  FerryGuestContainer *c;
  FerryGuestDoneFunc done;
  gpointer user_data;
} Created;

static void on_created(const GError *error, gpointer ud)
{
  Created *cr = ud;
  if (error != NULL)
    container_detach(cr->c, error);
  cr->done(error, cr->user_data);
  ferry_guest_container_unref(cr->c);
  g_free(cr);
}

FerryGuestContainer *ferry_guest_connection_create_container(FerryGuestConnection *gc,
                                                             const char *container_id,
                                                             json_t *config,
                                                             FerryGuestDoneFunc done,
                                                             gpointer user_data, GError **error)
{
  if (!json_is_object(config)) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                "container %s: config must be a JSON object", container_id);
    return NULL;
  }
  FerryGuestContainer *c = container_register(gc, container_id, error);
  if (c == NULL)
    return NULL;
  g_autoptr(json_t) body = ferry_bridge_request_base(container_id, NULL);
  ferry_bridge_set_embedded(body, "ContainerConfig", json_incref(config));
  Created *cr = g_new0(Created, 1);
  cr->c = ferry_guest_container_ref(c);
  cr->done = done;
  cr->user_data = user_data;
  call(gc, FERRY_BRIDGE_RPC_CREATE, body, FERRY_BRIDGE_DEFAULT_TIMEOUT_MS, 0, on_created, NULL, cr);
  return c;
}

FerryGuestContainer *ferry_guest_connection_open_container(FerryGuestConnection *gc,
                                                           const char *container_id, GError **error)
{
  return container_register(gc, container_id, error);
}

static void container_call(FerryGuestContainer *c, FerryBridgeRpc rpc, json_t *extra,
                           guint timeout_ms, guint32 tolerate, FerryGuestDoneFunc done,
                           FerryGuestJsonFunc json_done, gpointer user_data)
{
  g_autoptr(GError) error = NULL;
  if (!usable(c->gc, "container", &error)) {
    defer(c->context, done, NULL, json_done, user_data, error);
    return;
  }
  g_autoptr(json_t) body = ferry_bridge_request_base(c->id, NULL);
  if (extra != NULL)
    json_object_update(body, extra);
  call(c->gc, rpc, body, timeout_ms, tolerate, done, json_done, user_data);
}

void ferry_guest_container_start(FerryGuestContainer *c, FerryGuestDoneFunc done,
                                 gpointer user_data)
{
  container_call(c, FERRY_BRIDGE_RPC_START, NULL, FERRY_BRIDGE_DEFAULT_TIMEOUT_MS, 0, done, NULL,
                 user_data);
}

void ferry_guest_container_shutdown(FerryGuestContainer *c, FerryGuestDoneFunc done,
                                    gpointer user_data)
{
  container_call(c, FERRY_BRIDGE_RPC_SHUTDOWN_GRACEFUL, NULL, SHUTDOWN_TIMEOUT_MS,
                 FERRY_HR_SYSTEM_NOT_FOUND, done, NULL, user_data);
}

void ferry_guest_container_terminate(FerryGuestContainer *c, FerryGuestDoneFunc done,
                                     gpointer user_data)
{
  container_call(c, FERRY_BRIDGE_RPC_SHUTDOWN_FORCED, NULL, SHUTDOWN_TIMEOUT_MS,
                 FERRY_HR_SYSTEM_NOT_FOUND, done, NULL, user_data);
}

void ferry_guest_container_wait(FerryGuestContainer *c, FerryGuestDoneFunc done, gpointer user_data)
{
  if (c->exited) {
    defer_done(c->context, done, user_data, c->exit_error);
    return;
  }
  Waiter w = { done, user_data };
  g_array_append_val(c->waiters, w);
}

gboolean ferry_guest_container_has_exited(FerryGuestContainer *c)
{
  return c->exited;
}

const char *ferry_guest_container_exit_type(FerryGuestContainer *c)
{
  return c->exit_type;
}

typedef struct {
  FerryGuestJsonFunc done;
  gpointer user_data;
} Props;

static void on_properties(json_t *response, const GError *error, gpointer ud)
{
  Props *pr = ud;
  g_autoptr(GError) local = NULL;
  g_autoptr(json_t) props = NULL;
  if (error == NULL && !ferry_bridge_get_embedded(response, "Properties", FALSE, &props, &local)) {
    g_prefix_error(&local, "GetProperties: ");
    error = local;
  }
  if (error == NULL && props == NULL)
    props = json_object();
  pr->done(error == NULL ? props : NULL, error, pr->user_data);
  g_free(pr);
}

void ferry_guest_container_properties(FerryGuestContainer *c, json_t *query,
                                      FerryGuestJsonFunc done, gpointer user_data)
{
  g_autoptr(GError) error = NULL;
  if (!usable(c->gc, "container", &error)) {
    defer(c->context, NULL, NULL, done, user_data, error);
    return;
  }
  g_autoptr(json_t) extra = json_object();
  ferry_bridge_set_embedded(extra, "Query", json_incref(query));
  Props *pr = g_new0(Props, 1);
  pr->done = done;
  pr->user_data = user_data;
  container_call(c, FERRY_BRIDGE_RPC_GET_PROPERTIES, extra, FERRY_BRIDGE_DEFAULT_TIMEOUT_MS, 0,
                 NULL, on_properties, pr);
}

void ferry_guest_container_modify(FerryGuestContainer *c, json_t *request, FerryGuestDoneFunc done,
                                  gpointer user_data)
{
  g_autoptr(json_t) extra = json_object();
  json_object_set(extra, "Request", request);
  container_call(c, FERRY_BRIDGE_RPC_MODIFY_SETTINGS, extra, FERRY_BRIDGE_DEFAULT_TIMEOUT_MS, 0,
                 done, NULL, user_data);
}

void ferry_guest_container_create_process(FerryGuestContainer *c, json_t *params,
                                          FerryGuestProcessFunc done, gpointer user_data)
{
  g_autoptr(GError) error = NULL;
  if (!usable(c->gc, "container", &error)) {
    defer(c->context, NULL, done, NULL, user_data, error);
    return;
  }
  exec(c->gc, c->id, params, done, user_data);
}

FerryGuestProcess *ferry_guest_container_open_process_with_io(FerryGuestContainer *c, guint32 pid,
                                                              guint32 stdin_port,
                                                              guint32 stdout_port,
                                                              guint32 stderr_port,
                                                              guint64 wait_call_id, GError **error)
{
  if (!usable(c->gc, "container", error))
    return NULL;
  if (wait_call_id == 0) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                "open process %u: no outstanding wait call id", pid);
    return NULL;
  }
  guint32 ports[3] = { stdin_port, stdout_port, stderr_port };
  if (!listen_ports(c->gc, ports, error))
    return NULL;
  FerryGuestProcess *p = process_new(c->gc, c->id, pid);
  memcpy(p->ports, ports, sizeof(ports));
  p->wait_id = wait_call_id;
  ferry_guest_process_ref(p); /* held by the pending wait */
  if (!ferry_bridge_preregister_rpc(c->gc->bridge, wait_call_id, FERRY_BRIDGE_RPC_WAIT_FOR_PROCESS,
                                    on_process_waited, p, error)) {
    p->refs--; /* the wait does not exist */
    ferry_guest_process_unref(p);
    return NULL;
  }
  p->waits_pending++;
  p->needs_fresh_wait = TRUE;
  /* Already negotiated (a reconnecting host): send it now. */
  if (c->gc->protocol != 0)
    send_fresh_waits(c->gc);
  return p;
}

void ferry_guest_container_close(FerryGuestContainer *c)
{
  g_autoptr(GError) closed =
      g_error_new(FERRY_ERROR, FERRY_ERROR_CANCELLED, "container %s closed", c->id);
  container_detach(c, closed);
}
