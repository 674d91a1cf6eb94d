/*
 * Host and guest bridge together: Ferry's GuestConnection against Ferry's guest bridge
 * server over socketpairs, the guest serving a small in-memory runtime (containers and
 * processes that exit when the test says). The real runtime (ferry-gcs) comes with the
 * agent; here the point is the protocol between the two sides, across reconnects and a
 * change of host.
 */
#include <signal.h>
#include <string.h>

#include "ferry/bridge-guest.h"
#include "ferry/error.h"
#include "ferry/fd.h"
#include "ferry/guest.h"
#include "ferry/json.h"
#include "test-util.h"

/* ------------------------------------------------------ the guest runtime -- */

typedef struct {
  guint32 pid;
  char *container_id;
  gboolean exited;
  guint32 exit_code;
  GPtrArray *waits; /* FerryBridgeRequest, answered at exit */
} FakeProcess;

typedef struct {
  FerryBridgeServer *server;
  GHashTable *containers; /* id -> activity id of Create */
  GHashTable *processes;  /* pid -> FakeProcess */
  guint32 next_pid;
  guint disconnects;
} Guest;

static void fake_process_free(gpointer p)
{
  FakeProcess *fp = p;
  for (guint i = 0; i < fp->waits->len; i++)
    ferry_bridge_request_drop(fp->waits->pdata[i]);
  g_ptr_array_unref(fp->waits);
  g_free(fp->container_id);
  g_free(fp);
}

static void answer_wait(FerryBridgeRequest *req, FakeProcess *fp)
{
  ferry_bridge_request_reply(req, json_pack("{s:i}", "ExitCode", fp->exit_code));
}

/* The test makes a process exit: its waits are answered now (or, with no negotiated
 * connection, from the server's backlog later). */
static void guest_process_exit(Guest *g, guint32 pid, guint32 code)
{
  FakeProcess *fp = g_hash_table_lookup(g->processes, GUINT_TO_POINTER(pid));
  g_assert_nonnull(fp);
  fp->exited = TRUE;
  fp->exit_code = code;
  for (guint i = 0; i < fp->waits->len; i++)
    answer_wait(fp->waits->pdata[i], fp);
  g_ptr_array_set_size(fp->waits, 0);
}

/* Run the loop until the guest holds `n` waits for `pid` (the host sends its wait right
 * after the exec answer). */
static void guest_await_waits(Guest *g, guint32 pid, guint n)
{
  gint64 until = g_get_monotonic_time() + 5 * G_USEC_PER_SEC;
  for (;;) {
    FakeProcess *fp = g_hash_table_lookup(g->processes, GUINT_TO_POINTER(pid));
    if (fp != NULL && fp->waits->len >= n)
      return;
    if (g_get_monotonic_time() > until)
      g_error("the guest did not get the wait for process %u", pid);
    g_main_context_iteration(NULL, TRUE);
  }
}

static void guest_container_exit(Guest *g, const char *cid, const char *type)
{
  g_assert_true(g_hash_table_contains(g->containers, cid));
  g_hash_table_remove(g->containers, cid);
  ferry_bridge_server_notify(g->server, json_pack("{s:s, s:s, s:s, s:s, s:i}", "ContainerId", cid,
                                                  "ActivityId", FERRY_ZERO_ACTIVITY_ID, "Type",
                                                  type, "Operation", "None", "Result", 0));
}

static void h_create(FerryBridgeRequest *req, gpointer ud)
{
  Guest *g = ud;
  const char *cid = ferry_bridge_request_get_container_id(req);
  g_autoptr(GError) error = NULL;
  g_autoptr(json_t) config = NULL;
  if (!ferry_bridge_get_embedded(ferry_bridge_request_get_body(req), "ContainerConfig", TRUE,
                                 &config, &error)) {
    ferry_bridge_request_reply_error(req, FERRY_HR_INVALID_JSON, "%s", error->message);
    return;
  }
  if (g_hash_table_contains(g->containers, cid)) {
    ferry_bridge_request_reply_error(req, FERRY_HR_ALREADY_EXISTS, "container %s exists", cid);
    return;
  }
  g_hash_table_insert(g->containers, g_strdup(cid), NULL);
  ferry_bridge_request_reply(req, NULL);
}

static void h_exec(FerryBridgeRequest *req, gpointer ud)
{
  Guest *g = ud;
  const char *cid = ferry_bridge_request_get_container_id(req);
  if (strcmp(cid, FERRY_NULL_CONTAINER_ID) != 0 && !g_hash_table_contains(g->containers, cid)) {
    ferry_bridge_request_reply_error(req, FERRY_HR_SYSTEM_NOT_FOUND, "no container %s", cid);
    return;
  }
  FakeProcess *fp = g_new0(FakeProcess, 1);
  fp->pid = g->next_pid++;
  fp->container_id = g_strdup(cid);
  fp->waits = g_ptr_array_new();
  g_hash_table_insert(g->processes, GUINT_TO_POINTER(fp->pid), fp);
  ferry_bridge_request_reply(req, json_pack("{s:i}", "ProcessId", fp->pid));
}

static void h_wait(FerryBridgeRequest *req, gpointer ud)
{
  Guest *g = ud;
  guint32 pid = 0;
  ferry_json_get_uint32(ferry_bridge_request_get_body(req), "ProcessId", TRUE, &pid, NULL);
  FakeProcess *fp = g_hash_table_lookup(g->processes, GUINT_TO_POINTER(pid));
  if (fp == NULL) {
    ferry_bridge_request_reply_error(req, FERRY_HR_NOT_FOUND, "no process %u", pid);
    return;
  }
  if (fp->exited)
    answer_wait(req, fp);
  else
    g_ptr_array_add(fp->waits, req); /* answered at exit, from any later connection */
}

static void h_signal(FerryBridgeRequest *req, gpointer ud)
{
  Guest *g = ud;
  json_t *body = ferry_bridge_request_get_body(req);
  guint32 pid = 0;
  ferry_json_get_uint32(body, "ProcessId", TRUE, &pid, NULL);
  FakeProcess *fp = g_hash_table_lookup(g->processes, GUINT_TO_POINTER(pid));
  if (fp == NULL || fp->exited) {
    ferry_bridge_request_reply_error(req, FERRY_HR_NOT_FOUND, "no process %u", pid);
    return;
  }
  json_t *opts = json_object_get(body, "Options");
  int sig = opts != NULL ? (int)json_integer_value(json_object_get(opts, "Signal")) : SIGKILL;
  ferry_bridge_request_reply(req, NULL);
  guest_process_exit(g, pid, 128 + (guint32)sig);
}

static void h_shutdown_forced(FerryBridgeRequest *req, gpointer ud)
{
  Guest *g = ud;
  g_autofree char *cid = g_strdup(ferry_bridge_request_get_container_id(req));
  if (!g_hash_table_contains(g->containers, cid)) {
    ferry_bridge_request_reply_error(req, FERRY_HR_SYSTEM_NOT_FOUND, "no container %s", cid);
    return;
  }
  ferry_bridge_request_reply(req, NULL);
  guest_container_exit(g, cid, "ForcedExit");
}

static void on_guest_disconnected(FerryBridgeServer *s, const GError *error, gpointer ud)
{
  Guest *g = ud;
  g->disconnects++;
}

static void guest_init(Guest *g)
{
  g->server = ferry_bridge_server_new();
  g->containers = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
  g->processes = g_hash_table_new_full(NULL, NULL, NULL, fake_process_free);
  g->next_pid = 100;
  const guint32 v4 = FERRY_BRIDGE_PROTOCOL_V4;
  ferry_bridge_server_handle(g->server, ferry_bridge_request_type(FERRY_BRIDGE_RPC_CREATE), v4,
                             h_create, g);
  ferry_bridge_server_handle(g->server, ferry_bridge_request_type(FERRY_BRIDGE_RPC_EXECUTE_PROCESS),
                             v4, h_exec, g);
  ferry_bridge_server_handle(
      g->server, ferry_bridge_request_type(FERRY_BRIDGE_RPC_WAIT_FOR_PROCESS), v4, h_wait, g);
  ferry_bridge_server_handle(g->server, ferry_bridge_request_type(FERRY_BRIDGE_RPC_SIGNAL_PROCESS),
                             v4, h_signal, g);
  ferry_bridge_server_handle(g->server, ferry_bridge_request_type(FERRY_BRIDGE_RPC_SHUTDOWN_FORCED),
                             v4, h_shutdown_forced, g);
  ferry_bridge_server_set_disconnected_func(g->server, on_guest_disconnected, g);
}

static void guest_clear(Guest *g)
{
  g_hash_table_unref(g->processes);
  g_hash_table_unref(g->containers);
  ferry_bridge_server_free(g->server);
}

/* A new transport: the guest serves one end, the host gets the other. */
static int guest_accept_new_connection(Guest *g)
{
  g_autoptr(GError) error = NULL;
  int sp[2];
  g_assert_true(ferry_socketpair(sp, FALSE, &error));
  g_assert_true(ferry_bridge_server_serve(g->server, sp[1], &error));
  return sp[0];
}

/* -------------------------------------------------------------- helpers -- */

typedef struct {
  gboolean done;
  GError *error;
  FerryGuestProcess *process;
} Result;

static void on_done(const GError *error, gpointer ud)
{
  Result *r = ud;
  r->done = TRUE;
  if (error != NULL)
    r->error = g_error_copy(error);
}

static void on_process(FerryGuestProcess *p, const GError *error, gpointer ud)
{
  Result *r = ud;
  on_done(error, ud);
  r->process = p;
}

static void on_signal(gboolean delivered, const GError *error, gpointer ud)
{
  on_done(error, ud);
  g_assert_true(delivered);
}

static void wait_ok(Result *r)
{
  if (!test_run_until(&r->done, 5000))
    g_error("no answer within 5 s");
  g_assert_no_error(r->error);
}

static FerryGuestConnection *host_connect(int fd)
{
  g_autoptr(GError) error = NULL;
  FerryGuestConnection *gc = ferry_guest_connection_new(fd, NULL, NULL, &error);
  g_assert_no_error(error);
  Result r = { 0 };
  ferry_guest_connection_connect(gc, on_done, &r);
  wait_ok(&r);
  return gc;
}

static FerryGuestContainer *host_create_container(FerryGuestConnection *gc, const char *cid)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(json_t) config = json_pack("{s:{s:i,s:i}, s:s}", "SchemaVersion", "Major", 2, "Minor",
                                       1, "OciBundlePath", "/run/gcs/c");
  Result r = { 0 };
  FerryGuestContainer *c =
      ferry_guest_connection_create_container(gc, cid, config, on_done, &r, &error);
  g_assert_no_error(error);
  wait_ok(&r);
  return c;
}

static FerryGuestProcess *host_exec(FerryGuestContainer *c)
{
  g_autoptr(json_t) params = json_pack("{s:[s,s]}", "CommandArgs", "sleep", "inf");
  Result r = { 0 };
  ferry_guest_container_create_process(c, params, on_process, &r);
  wait_ok(&r);
  return r.process;
}

/* ---------------------------------------------------------------- tests -- */

static void test_end_to_end(void)
{
  Guest g;
  guest_init(&g);
  g_autoptr(FerryGuestConnection) gc = host_connect(guest_accept_new_connection(&g));
  g_assert_cmpstr(ferry_guest_connection_os(gc), ==, "linux");
  g_assert_cmpuint(ferry_bridge_server_get_protocol_version(g.server), ==, 4);

  g_autoptr(FerryGuestContainer) c = host_create_container(gc, "c1");
  g_autoptr(FerryGuestProcess) p = host_exec(c);
  g_assert_cmpuint(ferry_guest_process_get_pid(p), ==, 100);

  Result sig = { 0 }, waited = { 0 };
  ferry_guest_process_wait(p, on_done, &waited);
  ferry_guest_process_signal(p, SIGTERM, on_signal, &sig);
  wait_ok(&sig);
  wait_ok(&waited);
  int code;
  g_autoptr(GError) error = NULL;
  g_assert_true(ferry_guest_process_exit_code(p, &code, &error));
  g_assert_cmpint(code, ==, 128 + SIGTERM);

  Result cw = { 0 }, term = { 0 };
  ferry_guest_container_wait(c, on_done, &cw);
  ferry_guest_container_terminate(c, on_done, &term);
  wait_ok(&term);
  wait_ok(&cw);
  g_assert_cmpstr(ferry_guest_container_exit_type(c), ==, "ForcedExit");

  /* The guest's errors arrive as HRESULTs. */
  Result again = { 0 };
  g_autoptr(FerryGuestContainer) gone = ferry_guest_connection_open_container(gc, "nope", &error);
  ferry_guest_container_terminate(gone, on_done, &again); /* "does not exist" tolerated */
  wait_ok(&again);
  ferry_guest_connection_free(g_steal_pointer(&gc));
  guest_clear(&g);
}

/*
 * The acceptance case: a reconnect after SetMigrating keeps outstanding RPCs and routes
 * a pre-registered WaitForProcess reply. Source host A runs a process; the transport
 * breaks (a migration); a fresh host object B, on the destination, rebuilds from A's
 * exported state -- floors, OpenContainer, OpenProcessWithIO with A's wait id -- before
 * it negotiates; the process exits while no host is connected; B receives the answer
 * to the wait A sent, with A's id, and the container's exit notification.
 */
static void test_migration_to_a_new_host_object(void)
{
  Guest g;
  guest_init(&g);
  FerryGuestConnection *a = host_connect(guest_accept_new_connection(&g));
  g_autoptr(FerryGuestContainer) ca = host_create_container(a, "c1");
  g_autoptr(FerryGuestProcess) pa = host_exec(ca);
  Result lost = { 0 };
  ferry_guest_process_wait(pa, on_done, &lost);

  /* Export what the destination needs. */
  FerryGuestMigrationState ms = ferry_guest_process_migration_state(pa);
  g_assert_cmpuint(ms.wait_call_id, !=, 0);
  guint32 pid = ferry_guest_process_get_pid(pa);
  guint32 next_port = ferry_guest_connection_next_port(a);
  guint64 next_id = ferry_guest_connection_next_id(a);
  guest_await_waits(&g, pid, 1);

  /* Blackout: the source host is gone, the guest is disconnected. */
  ferry_guest_connection_set_migrating(a, TRUE);
  ferry_bridge_server_disconnect(g.server);
  g_assert_false(ferry_bridge_server_is_connected(g.server));

  /* The process exits and the container with it while nobody listens. */
  guest_process_exit(&g, pid, 3);
  guest_container_exit(&g, "c1", "UnexpectedExit");
  g_assert_cmpuint(ferry_bridge_server_backlog_length(g.server), ==, 2);

  /* The destination rebuilds from the exported state, then connects. */
  g_autoptr(GError) error = NULL;
  FerryGuestConnection *b =
      ferry_guest_connection_new(guest_accept_new_connection(&g), NULL, NULL, &error);
  g_assert_no_error(error);
  ferry_guest_connection_set_next_port(b, next_port);
  ferry_guest_connection_seed_next_id(b, next_id);
  g_autoptr(FerryGuestContainer) cb = ferry_guest_connection_open_container(b, "c1", &error);
  g_autoptr(FerryGuestProcess) pb = ferry_guest_container_open_process_with_io(
      cb, pid, ms.stdin_port, ms.stdout_port, ms.stderr_port, ms.wait_call_id, &error);
  g_assert_no_error(error);
  ferry_guest_process_set_serial(pb, ms.serial);
  Result waited = { 0 }, cwait = { 0 };
  ferry_guest_process_wait(pb, on_done, &waited);
  ferry_guest_container_wait(cb, on_done, &cwait);
  Result connected = { 0 };
  ferry_guest_connection_connect(b, on_done, &connected);
  wait_ok(&connected);
  wait_ok(&waited);
  wait_ok(&cwait);
  int code;
  g_assert_true(ferry_guest_process_exit_code(pb, &code, &error));
  g_assert_cmpint(code, ==, 3);
  g_assert_cmpstr(ferry_guest_container_exit_type(cb), ==, "UnexpectedExit");
  g_assert_cmpuint(ferry_bridge_server_backlog_length(g.server), ==, 0);
  g_assert_false(ferry_bridge_is_dead(ferry_guest_connection_get_bridge(b)));
  /* New requests on B take ids above everything A used. */
  g_assert_cmpuint(ferry_guest_connection_next_id(b), >, ms.wait_call_id);

  /* The source, finalized: its wait never completed and now fails with the bridge. */
  g_assert_false(lost.done);
  ferry_guest_connection_free(a);
  g_assert_true(test_run_until(&lost.done, 2000));
  g_assert_error(lost.error, FERRY_BRIDGE_CLOSED_ERROR, FERRY_BRIDGE_CLOSED);
  g_clear_error(&lost.error);
  ferry_guest_connection_free(b);
  guest_clear(&g);
}

/* A rollback: the same host object resumes on a new connection after the break. */
static void test_reconnect_same_host(void)
{
  Guest g;
  guest_init(&g);
  g_autoptr(FerryGuestConnection) gc = host_connect(guest_accept_new_connection(&g));
  g_autoptr(FerryGuestContainer) c = host_create_container(gc, "c1");
  g_autoptr(FerryGuestProcess) p = host_exec(c);
  Result waited = { 0 };
  ferry_guest_process_wait(p, on_done, &waited);
  guest_await_waits(&g, ferry_guest_process_get_pid(p), 1);

  ferry_guest_connection_set_migrating(gc, TRUE);
  ferry_bridge_server_disconnect(g.server);
  FerryBridge *bridge = ferry_guest_connection_get_bridge(gc);
  gint64 until = g_get_monotonic_time() + 5 * G_USEC_PER_SEC;
  while (!ferry_bridge_is_parked(bridge) && g_get_monotonic_time() < until)
    g_main_context_iteration(NULL, TRUE);
  g_assert_true(ferry_bridge_is_parked(bridge));

  Result resumed = { 0 };
  ferry_guest_connection_resume_on_conn(gc, guest_accept_new_connection(&g), on_done, &resumed);
  wait_ok(&resumed);
  g_assert_cmpuint(ferry_bridge_server_get_protocol_version(g.server), ==, 4);
  g_assert_false(waited.done);
  guest_process_exit(&g, ferry_guest_process_get_pid(p), 0);
  wait_ok(&waited);
  /* And the connection is fully usable again. */
  g_autoptr(FerryGuestProcess) p2 = host_exec(c);
  g_assert_cmpuint(ferry_guest_process_get_pid(p2), ==, 101);
  guest_clear(&g);
}

/* A host that does not renegotiate after a reconnect gets E_NOTIMPL, not a hang: the
 * guest's version starts at INVALID on every connection. */
static void test_reconnect_without_negotiation_is_refused(void)
{
  Guest g;
  guest_init(&g);
  g_autoptr(FerryGuestConnection) a = host_connect(guest_accept_new_connection(&g));
  g_autoptr(GError) error = NULL;
  g_autoptr(FerryGuestConnection) b =
      ferry_guest_connection_new(guest_accept_new_connection(&g), NULL, NULL, &error);
  g_autoptr(FerryGuestContainer) c = ferry_guest_connection_open_container(b, "c1", &error);
  /* Serving b's connection ended a's. */
  g_assert_false(ferry_bridge_is_dead(ferry_guest_connection_get_bridge(b)));
  g_assert_nonnull(a);
  Result r = { 0 };
  g_autoptr(json_t) params = json_pack("{s:[s]}", "CommandArgs", "x");
  ferry_guest_container_create_process(c, params, on_process, &r);
  g_assert_true(test_run_until(&r.done, 5000));
  g_assert_error(r.error, FERRY_BRIDGE_ERROR, (gint)FERRY_HR_E_NOTIMPL);
  g_clear_error(&r.error);
  guest_clear(&g);
}

int main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/bridge/end-to-end", test_end_to_end);
  g_test_add_func("/bridge/migration-to-a-new-host-object", test_migration_to_a_new_host_object);
  g_test_add_func("/bridge/reconnect-same-host", test_reconnect_same_host);
  g_test_add_func("/bridge/reconnect-without-negotiation-is-refused",
                  test_reconnect_without_negotiation_is_refused);
  return g_test_run();
}
