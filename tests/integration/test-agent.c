/*
 * The guest agent end to end: Ferry's host side (a host FerryMux and a GuestConnection
 * over the bridge port channel, stdio ports listened on the same mux) against the real
 * guest side -- a FerryGcs with a real FerryRuntime in this process, or the ferry-gcs
 * program connecting to a unix socket the test listens on. Real processes, real crun
 * containers (root only: local mode), real sockets; nothing is mocked.
 *
 * Every process the agent reports is guarded by a pidfd: a failing test (abort, or
 * meson's SIGTERM on timeout) SIGKILLs exactly those. Nothing is killed by name.
 */
#include <errno.h>
#include <fcntl.h>
#include <glib-unix.h>
#include <signal.h>
#include <string.h>
#include <sys/pidfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include "ferry/error.h"
#include "ferry/fd.h"
#include "ferry/gcs.h"
#include "ferry/guest.h"
#include "ferry/json.h"
#include "ferry/log.h"
#include "ferry/mux.h"
#include "ferry/runtime.h"
#include "test-util.h"

/* Bound on every wait; a test that hits it fails. */
#define WAIT_MS 20000
#define UVM_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

/* Why container tests cannot run here (NULL: they can), and the shared busybox root. */
static char *container_problem;
static char *rootfs_parent;
static char *rootfs;

/* ------------------------------------------------------------ guarding -- */

#define MAX_GUARDED 512
static int guarded[MAX_GUARDED];
static volatile sig_atomic_t n_guarded;

static void guard(GPid pid)
{
  int fd = (int)syscall(SYS_pidfd_open, pid, 0);
  if (fd >= 0 && n_guarded < MAX_GUARDED)
    guarded[n_guarded++] = fd;
  else if (fd >= 0)
    close(fd);
}

static void on_fatal_signal(int signum)
{
  for (int i = 0; i < n_guarded; i++)
    syscall(SYS_pidfd_send_signal, guarded[i], SIGKILL, NULL, 0);
  raise(signum); /* SA_RESETHAND: the default action now */
}

static void run_guarded(gconstpointer test)
{
  ((void (*)(void))test)();
  for (int i = 0; i < n_guarded; i++)
    close(guarded[i]);
  n_guarded = 0;
}

static void add_test(const char *path, void (*test)(void))
{
  g_test_add_data_func(path, (gconstpointer)test, run_guarded);
}

/* -------------------------------------------------------------- waiting -- */

typedef gboolean (*Cond)(gpointer data);

static gboolean set_flag(gpointer p)
{
  *(gboolean *)p = TRUE;
  return G_SOURCE_REMOVE;
}

/* Iterate the main loop until cond(data) or `ms` pass; returns cond(data). */
static gboolean run_until(Cond cond, gpointer data, guint ms)
{
  gboolean expired = FALSE;
  guint timer = g_timeout_add(ms, set_flag, &expired);
  while (!cond(data) && !expired)
    g_main_context_iteration(NULL, TRUE);
  if (!expired)
    g_source_remove(timer);
  return cond(data);
}

/* Dispatch whatever is ready now, without waiting for anything new. */
static void run_pending(void)
{
  while (g_main_context_pending(NULL))
    g_main_context_iteration(NULL, FALSE);
}

/* ------------------------------------------------------------ host side -- */

typedef struct Host Host;

/* One stdio port the host listens on: accepts once, collects what arrives, writes what
 * the test queues. */
typedef struct {
  Host *host;
  guint32 port;
  FerryChannel *channel;
  GString *data;
  gboolean eof;
  gboolean closed;
  gboolean stalled; /* consume nothing until resumed */
  GByteArray *to_send;
  gboolean shut_requested;
} HostPort;

struct Host {
  FerryMux *mux;
  GHashTable *ports; /* port -> HostPort */
  gboolean stall_next;
  int bridge_fd; /* the last accepted bridge channel as an fd, until taken */
  guint bridge_accepts;
  FerryGuestConnection *gc;
};

static void port_flush(HostPort *hp)
{
  if (hp->channel == NULL)
    return;
  if (hp->to_send->len > 0) {
    gsize n = ferry_channel_write(hp->channel, hp->to_send->data, hp->to_send->len);
    g_byte_array_remove_range(hp->to_send, 0, (guint)n);
  }
  if (hp->to_send->len == 0 && hp->shut_requested)
    ferry_channel_shutdown_write(hp->channel);
}

static gsize port_data(FerryChannel *ch, const guint8 *data, gsize len, gpointer ud)
{
  HostPort *hp = ud;
  if (hp->stalled)
    return 0;
  g_string_append_len(hp->data, (const char *)data, (gssize)len);
  return len;
}

static void port_eof(FerryChannel *ch, gpointer ud)
{
  ((HostPort *)ud)->eof = TRUE;
}

static void port_writable(FerryChannel *ch, gpointer ud)
{
  port_flush(ud);
}

static void port_closed(FerryChannel *ch, const GError *error, gpointer ud)
{
  ((HostPort *)ud)->closed = TRUE;
}

static const FerryChannelHandlers port_handlers = { port_data, port_eof, port_writable,
                                                    port_closed };

static void on_port_accept(FerryTransport *t, FerryChannel *ch, gpointer ud)
{
  HostPort *hp = ud;
  ferry_transport_unlisten(t, hp->port); /* accept once, as hcsshim's ioChannel */
  hp->channel = ch;
  ferry_channel_set_handlers(ch, &port_handlers, hp);
  port_flush(hp);
}

static void host_port_free(gpointer p)
{
  HostPort *hp = p;
  if (hp->channel != NULL) {
    ferry_channel_set_handlers(hp->channel, NULL, NULL);
    ferry_channel_unref(hp->channel);
  } else {
    ferry_transport_unlisten(ferry_mux_get_transport(hp->host->mux), hp->port);
  }
  g_string_free(hp->data, TRUE);
  g_byte_array_unref(hp->to_send);
  g_free(hp);
}

static gboolean hook_listen(guint32 port, gpointer ud, GError **error)
{
  Host *h = ud;
  HostPort *hp = g_new0(HostPort, 1);
  hp->host = h;
  hp->port = port;
  hp->data = g_string_new(NULL);
  hp->to_send = g_byte_array_new();
  hp->stalled = h->stall_next;
  h->stall_next = FALSE;
  if (!ferry_transport_listen(ferry_mux_get_transport(h->mux), port, on_port_accept, hp, error)) {
    hp->channel = NULL;
    g_string_free(hp->data, TRUE);
    g_byte_array_unref(hp->to_send);
    g_free(hp);
    return FALSE;
  }
  g_hash_table_insert(h->ports, GUINT_TO_POINTER(port), hp);
  return TRUE;
}

static void hook_release(guint32 port, gpointer ud)
{
  Host *h = ud;
  g_hash_table_remove(h->ports, GUINT_TO_POINTER(port));
}

static void hook_close_write(guint32 port, gpointer ud)
{
  Host *h = ud;
  HostPort *hp = g_hash_table_lookup(h->ports, GUINT_TO_POINTER(port));
  if (hp != NULL) {
    hp->shut_requested = TRUE;
    port_flush(hp);
  }
}

static const FerryGuestPortHooks port_hooks = { hook_listen, hook_release, hook_close_write };

static void on_bridge_accept(FerryTransport *t, FerryChannel *ch, gpointer ud)
{
  Host *h = ud;
  g_autoptr(GError) error = NULL;
  int fd = ferry_channel_to_fd(ch, &error);
  g_assert_no_error(error);
  ferry_channel_unref(ch);
  ferry_fd_clear(&h->bridge_fd); /* an earlier one nobody took */
  h->bridge_fd = fd;
  h->bridge_accepts++;
}

static void host_init(Host *h)
{
  memset(h, 0, sizeof(*h));
  h->mux = ferry_mux_new(FERRY_MUX_HOST);
  h->ports = g_hash_table_new_full(NULL, NULL, NULL, host_port_free);
  h->bridge_fd = -1;
  g_autoptr(GError) error = NULL;
  g_assert_true(ferry_transport_listen(ferry_mux_get_transport(h->mux), FERRY_GCS_BRIDGE_PORT,
                                       on_bridge_accept, h, &error));
}

static void host_clear(Host *h)
{
  g_clear_pointer(&h->gc, ferry_guest_connection_free);
  g_hash_table_unref(h->ports);
  ferry_fd_clear(&h->bridge_fd);
  ferry_mux_free(h->mux);
}

static gboolean bridge_accepted(gpointer p)
{
  return ((Host *)p)->bridge_fd >= 0;
}

/* The next bridge connection the guest dials, as an fd. */
static int host_take_bridge(Host *h)
{
  if (!run_until(bridge_accepted, h, WAIT_MS))
    g_error("the guest did not dial the bridge port");
  int fd = h->bridge_fd;
  h->bridge_fd = -1;
  return fd;
}

typedef struct {
  gboolean done;
  GError *error;
  FerryGuestProcess *process;
  json_t *json;
} Result;

static void result_clear(Result *r)
{
  g_clear_error(&r->error);
  g_clear_pointer(&r->json, json_decref);
}

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
  r->process = p;
  on_done(error, ud);
}

static void on_json(json_t *result, const GError *error, gpointer ud)
{
  Result *r = ud;
  if (result != NULL)
    r->json = json_incref(result);
  on_done(error, ud);
}

static void on_rpc(FerryBridge *b, json_t *response, const GError *error, gpointer ud)
{
  on_json(response, error, ud);
}

static gboolean result_done(gpointer p)
{
  return ((Result *)p)->done;
}

static void wait_result(Result *r)
{
  if (!run_until(result_done, r, WAIT_MS))
    g_error("no answer within %d ms", WAIT_MS);
}

static void wait_ok(Result *r)
{
  wait_result(r);
  g_assert_no_error(r->error);
}

/* Build a GuestConnection on the next bridge connection and negotiate. */
static void host_connect(Host *h)
{
  g_autoptr(GError) error = NULL;
  g_clear_pointer(&h->gc, ferry_guest_connection_free);
  h->gc = ferry_guest_connection_new(host_take_bridge(h), &port_hooks, h, &error);
  g_assert_no_error(error);
  Result r = { 0 };
  ferry_guest_connection_connect(h->gc, on_done, &r);
  wait_ok(&r);
  g_assert_cmpstr(ferry_guest_connection_os(h->gc), ==, "linux");
}

/* A raw request on the host's bridge (for what the GuestConnection API does not send,
 * such as a finite WaitForProcess timeout). Returns the answer; *error the failure. */
static json_t *host_rpc(Host *h, FerryBridgeRpc rpc, json_t *body, GError **error)
{
  Result r = { 0 };
  ferry_bridge_rpc(ferry_guest_connection_get_bridge(h->gc), rpc, body, 0, on_rpc, &r);
  json_decref(body);
  wait_result(&r);
  if (r.error != NULL) {
    g_propagate_error(error, r.error);
    return NULL;
  }
  return r.json;
}

static HostPort *host_port(Host *h, guint32 port)
{
  HostPort *hp = g_hash_table_lookup(h->ports, GUINT_TO_POINTER(port));
  g_assert_nonnull(hp);
  return hp;
}

static HostPort *stdout_of(Host *h, FerryGuestProcess *p)
{
  return host_port(h, ferry_guest_process_migration_state(p).stdout_port);
}

static HostPort *stdin_of(Host *h, FerryGuestProcess *p)
{
  return host_port(h, ferry_guest_process_migration_state(p).stdin_port);
}

static void port_write(HostPort *hp, const char *text)
{
  g_byte_array_append(hp->to_send, (const guint8 *)text, (guint)strlen(text));
  port_flush(hp);
}

static gboolean port_at_eof(gpointer p)
{
  return ((HostPort *)p)->eof;
}

static void wait_port_eof(HostPort *hp)
{
  if (!run_until(port_at_eof, hp, WAIT_MS))
    g_error("port %u: no end of file within %d ms (%zu bytes so far)", hp->port, WAIT_MS,
            hp->data->len);
}

typedef struct {
  HostPort *hp;
  const char *needle;
} TextWait;

static gboolean port_has_text(gpointer p)
{
  TextWait *w = p;
  return strstr(w->hp->data->str, w->needle) != NULL || w->hp->eof;
}

static void wait_port_text(HostPort *hp, const char *needle)
{
  TextWait w = { hp, needle };
  run_until(port_has_text, &w, WAIT_MS);
  if (strstr(hp->data->str, needle) == NULL)
    g_error("port %u: \"%s\" did not arrive; got \"%s\"", hp->port, needle, hp->data->str);
}

/* ProcessParameters for a process in the UVM. */
static json_t *uvm_params(const char *const *argv, gboolean in, gboolean out, gboolean err)
{
  json_t *args = json_array();
  for (const char *const *a = argv; *a != NULL; a++)
    json_array_append_new(args, json_string(*a));
  return json_pack("{s:o, s:{s:s}, s:b, s:b, s:b}", "CommandArgs", args, "Environment", "PATH",
                   UVM_PATH, "CreateStdInPipe", in, "CreateStdOutPipe", out, "CreateStdErrPipe",
                   err);
}

/* Exec in the UVM; `params` is stolen. The process is guarded. */
static FerryGuestProcess *exec_uvm(Host *h, json_t *params)
{
  Result r = { 0 };
  ferry_guest_connection_create_process(h->gc, params, on_process, &r);
  json_decref(params);
  wait_ok(&r);
  guard((GPid)ferry_guest_process_get_pid(r.process));
  return r.process;
}

static int wait_exit(FerryGuestProcess *p)
{
  Result r = { 0 };
  ferry_guest_process_wait(p, on_done, &r);
  wait_ok(&r);
  int code = -1;
  g_autoptr(GError) error = NULL;
  g_assert_true(ferry_guest_process_exit_code(p, &code, &error));
  return code;
}

static void assert_hresult(const GError *error, guint32 hresult)
{
  g_assert_nonnull(error);
  if (ferry_bridge_error_hresult(error) != hresult)
    g_error("expected HRESULT 0x%08x, got %s (%s)", hresult, error->message,
            g_quark_to_string(error->domain));
}

/* ----------------------------------------------------- in-process guest -- */

#define GRACE_MS 500

typedef struct {
  char *dir;
  FerryMux *mux;
  FerryRuntime *runtime;
  FerryGcs *gcs;
  gboolean shutdown;
} Guest;

static void on_guest_shutdown(FerryGcs *gcs, gpointer ud)
{
  ((Guest *)ud)->shutdown = TRUE;
}

static void guest_init(Guest *g)
{
  memset(g, 0, sizeof(*g));
  g->dir = test_make_tmpdir();
  g_autofree char *state = g_build_filename(g->dir, "state", NULL);
  FerryRuntimeOptions ropts = { .cgroup_manager = "disabled" };
  g_autoptr(GError) error = NULL;
  g->runtime = ferry_runtime_new(state, &ropts, &error);
  g_assert_no_error(error);
  g->mux = ferry_mux_new(FERRY_MUX_GUEST);
  /* A short grace for output held open by a descendant, to keep that test quick. */
  /* Storage requests mount only below the guest's own directory (on a host: local mode's
   * private mount namespace, in a directory the test removes). */
  const char *roots[] = { g->dir, NULL };
  FerryGcsOptions opts = { .shutdown = on_guest_shutdown,
                           .shutdown_data = g,
                           .drain_grace_ms = GRACE_MS,
                           .storage_roots = roots };
  g->gcs = ferry_gcs_new(ferry_mux_get_transport(g->mux), g->runtime, &opts, &error);
  g_assert_no_error(error);
}

static void guest_clear(Guest *g)
{
  ferry_gcs_free(g->gcs);
  ferry_mux_free(g->mux);
  ferry_runtime_free(g->runtime);
  test_rm_rf(g->dir);
  g_free(g->dir);
}

/* The host and the in-process guest, their muxes on a socketpair, the bridge up. */
typedef struct {
  Host host;
  Guest guest;
} Env;

static void env_attach(Env *e)
{
  g_autoptr(GError) error = NULL;
  int sp[2];
  g_assert_true(ferry_socketpair(sp, FALSE, &error));
  g_assert_true(ferry_mux_attach(e->host.mux, sp[0], &error));
  g_assert_true(ferry_mux_attach(e->guest.mux, sp[1], &error));
}

static Env *env_new(void)
{
  Env *e = g_new0(Env, 1);
  host_init(&e->host);
  guest_init(&e->guest);
  env_attach(e);
  host_connect(&e->host);
  return e;
}

static void env_free(Env *e)
{
  g_clear_pointer(&e->host.gc, ferry_guest_connection_free);
  guest_clear(&e->guest);
  host_clear(&e->host);
  g_free(e);
}
G_DEFINE_AUTOPTR_CLEANUP_FUNC(Env, env_free)

/* ---------------------------------------------------------- UVM tests -- */

static void test_echo_hello(void)
{
  g_autoptr(Env) e = env_new();
  const char *argv[] = { "echo", "hello", NULL };
  g_autoptr(FerryGuestProcess) p = exec_uvm(&e->host, uvm_params(argv, FALSE, TRUE, FALSE));
  HostPort *out = stdout_of(&e->host, p);
  g_assert_cmpint(wait_exit(p), ==, 0);
  /* The exit is answered only once stdout has drained into its channel. */
  wait_port_eof(out);
  g_assert_cmpstr(out->data->str, ==, "hello\n");
}

static void test_stdin_to_cat(void)
{
  g_autoptr(Env) e = env_new();
  const char *argv[] = { "cat", NULL };
  g_autoptr(FerryGuestProcess) p = exec_uvm(&e->host, uvm_params(argv, TRUE, TRUE, FALSE));
  HostPort *out = stdout_of(&e->host, p);
  port_write(stdin_of(&e->host, p), "one\ntwo\n");
  wait_port_text(out, "one\ntwo\n");
  g_assert_false(out->eof);
  ferry_guest_process_close_stdin(p);
  wait_port_eof(out);
  g_assert_cmpstr(out->data->str, ==, "one\ntwo\n");
  g_assert_cmpint(wait_exit(p), ==, 0);
}

static void test_stderr_separate(void)
{
  g_autoptr(Env) e = env_new();
  const char *argv[] = { "sh", "-c", "echo out; echo err >&2", NULL };
  g_autoptr(FerryGuestProcess) p = exec_uvm(&e->host, uvm_params(argv, FALSE, TRUE, TRUE));
  HostPort *out = stdout_of(&e->host, p);
  HostPort *err = host_port(&e->host, ferry_guest_process_migration_state(p).stderr_port);
  g_assert_cmpint(wait_exit(p), ==, 0);
  wait_port_eof(out);
  wait_port_eof(err);
  g_assert_cmpstr(out->data->str, ==, "out\n");
  g_assert_cmpstr(err->data->str, ==, "err\n");
}

static void test_exit_code(void)
{
  g_autoptr(Env) e = env_new();
  const char *argv[] = { "sh", "-c", "exit 7", NULL };
  g_autoptr(FerryGuestProcess) p = exec_uvm(&e->host, uvm_params(argv, FALSE, FALSE, FALSE));
  g_assert_cmpint(wait_exit(p), ==, 7);
}

/* A background child keeps stdout open after the process exited: the agent waits for the
 * output to stay quiet for its grace period, then ends it and answers the wait (it does
 * not wait for the child). */
static void test_background_child_holding_stdout(void)
{
  g_autoptr(Env) e = env_new();
  const char *argv[] = { "sh", "-c", "sleep 30 & echo $!", NULL };
  g_autoptr(FerryGuestProcess) p = exec_uvm(&e->host, uvm_params(argv, FALSE, TRUE, FALSE));
  HostPort *out = stdout_of(&e->host, p);
  wait_port_text(out, "\n");
  guint64 child = 0;
  g_assert_true(
      g_ascii_string_to_unsigned(g_strstrip(out->data->str), 10, 1, G_MAXINT, &child, NULL));
  guard((GPid)child);
  gint64 start = g_get_monotonic_time();
  g_assert_cmpint(wait_exit(p), ==, 0);
  g_assert_cmpint(g_get_monotonic_time() - start, <, 10 * G_USEC_PER_SEC);
  wait_port_eof(out);
  /* The child still runs (it holds its end of the pipe); end it by its pid. */
  g_assert_cmpint(kill((pid_t)child, SIGKILL), ==, 0);
}

static void on_signal_done(gboolean delivered, const GError *error, gpointer ud)
{
  Result *r = ud;
  r->json = json_boolean(delivered);
  on_done(error, ud);
}

static void test_sigterm_is_143(void)
{
  g_autoptr(Env) e = env_new();
  const char *argv[] = { "sleep", "100", NULL };
  g_autoptr(FerryGuestProcess) p = exec_uvm(&e->host, uvm_params(argv, FALSE, FALSE, FALSE));
  Result r = { 0 };
  ferry_guest_process_signal(p, SIGTERM, on_signal_done, &r);
  wait_ok(&r);
  g_assert_true(json_is_true(r.json));
  result_clear(&r);
  g_assert_cmpint(wait_exit(p), ==, 143);
  /* Gone now: the guest answers "not found", which the host reads as not delivered. */
  Result again = { 0 };
  ferry_guest_process_signal(p, SIGTERM, on_signal_done, &again);
  wait_ok(&again);
  g_assert_true(json_is_false(again.json));
  result_clear(&again);
}

/* Make the kernel's next pid `pid` (root in this pid namespace only). */
static gboolean next_pid_is(guint32 pid)
{
  int fd = open("/proc/sys/kernel/ns_last_pid", O_WRONLY | O_CLOEXEC);
  if (fd < 0)
    return FALSE;
  g_autofree char *text = g_strdup_printf("%u", pid - 1);
  gboolean ok = write(fd, text, strlen(text)) == (ssize_t)strlen(text);
  close(fd);
  return ok;
}

/* A request for a process about a wait (raw, TimeoutInMs 0: answered at once). */
static json_t *wait_now_body(guint32 pid, guint64 serial)
{
  json_t *body = ferry_bridge_request_base(FERRY_NULL_CONTAINER_ID, NULL);
  json_object_set_new(body, "ProcessId", json_integer(pid));
  json_object_set_new(body, "TimeoutInMs", json_integer(0));
  if (serial != 0)
    json_object_set_new(body, FERRY_BRIDGE_PROCESS_SERIAL, json_integer((json_int_t)serial));
  return body;
}

/* The kernel gives an exited process's pid to a new one: a request naming the old process
 * (by its serial) cannot reach the new one -- no signal delivered to it, no wait answered
 * with its state. */
static void test_reused_pid_is_another_process(void)
{
  g_autoptr(Env) e = env_new();
  const char *quick[] = { "true", NULL };
  g_autoptr(FerryGuestProcess) a = exec_uvm(&e->host, uvm_params(quick, FALSE, FALSE, FALSE));
  g_assert_cmpuint(ferry_guest_process_get_serial(a), !=, 0);
  g_assert_cmpint(wait_exit(a), ==, 0);
  guint32 pid = ferry_guest_process_get_pid(a);
  const char *sleeper[] = { "sleep", "100", NULL };
  g_autoptr(FerryGuestProcess) b = NULL;
  for (int attempt = 0; attempt < 20 && b == NULL; attempt++) {
    if (!next_pid_is(pid)) {
      g_test_skip("cannot write /proc/sys/kernel/ns_last_pid (needs root in the pid namespace)");
      return;
    }
    FerryGuestProcess *p = exec_uvm(&e->host, uvm_params(sleeper, FALSE, FALSE, FALSE));
    if (ferry_guest_process_get_pid(p) == pid) {
      b = p;
      continue;
    }
    Result k = { 0 };
    ferry_guest_process_kill(p, on_signal_done, &k);
    wait_ok(&k);
    result_clear(&k);
    wait_exit(p);
    ferry_guest_process_unref(p);
  }
  if (b == NULL) {
    g_test_skip("the kernel did not hand out the old pid again");
    return;
  }
  g_assert_cmpuint(ferry_guest_process_get_serial(b), !=, ferry_guest_process_get_serial(a));
  /* The old handle's signal is not delivered: the new process lives on. */
  Result s = { 0 };
  ferry_guest_process_signal(a, SIGKILL, on_signal_done, &s);
  wait_ok(&s);
  g_assert_true(json_is_false(s.json));
  result_clear(&s);
  /* A wait naming the old process: not found (not the new one's "still running"). */
  g_autoptr(GError) error = NULL;
  g_assert_null(host_rpc(&e->host, FERRY_BRIDGE_RPC_WAIT_FOR_PROCESS,
                         wait_now_body(pid, ferry_guest_process_get_serial(a)), &error));
  assert_hresult(error, FERRY_HR_NOT_FOUND);
  g_clear_error(&error);
  /* The new process, by its serial or by the pid alone (hcsshim's host), is running. */
  g_assert_null(host_rpc(&e->host, FERRY_BRIDGE_RPC_WAIT_FOR_PROCESS,
                         wait_now_body(pid, ferry_guest_process_get_serial(b)), &error));
  assert_hresult(error, FERRY_HR_TIMEOUT);
  g_clear_error(&error);
  g_assert_null(
      host_rpc(&e->host, FERRY_BRIDGE_RPC_WAIT_FOR_PROCESS, wait_now_body(pid, 0), &error));
  assert_hresult(error, FERRY_HR_TIMEOUT);
  g_clear_error(&error);
  Result k = { 0 };
  ferry_guest_process_kill(b, on_signal_done, &k);
  wait_ok(&k);
  g_assert_true(json_is_true(k.json));
  result_clear(&k);
  g_assert_cmpint(wait_exit(b), ==, 128 + SIGKILL);
}

static json_t *pty_params(const char *script, gboolean in)
{
  return json_pack("{s:[s,s,s], s:{s:s}, s:b, s:[i,i], s:b, s:b}", "CommandArgs", "sh", "-c",
                   script, "Environment", "PATH", UVM_PATH, "EmulateConsole", 1, "ConsoleSize", 24,
                   80, "CreateStdInPipe", in, "CreateStdOutPipe", 1);
}

static void test_pty_size_and_resize(void)
{
  g_autoptr(Env) e = env_new();
  g_autoptr(FerryGuestProcess) p = exec_uvm(&e->host, pty_params("stty size", FALSE));
  HostPort *out = stdout_of(&e->host, p);
  g_assert_cmpint(wait_exit(p), ==, 0);
  wait_port_eof(out);
  g_assert_cmpstr(out->data->str, ==, "24 80\r\n");

  g_autoptr(FerryGuestProcess) q =
      exec_uvm(&e->host, pty_params("echo ready; read x; stty size", TRUE));
  HostPort *qout = stdout_of(&e->host, q);
  wait_port_text(qout, "ready");
  Result r = { 0 };
  ferry_guest_process_resize_console(q, 100, 30, on_done, &r);
  wait_ok(&r);
  port_write(stdin_of(&e->host, q), "go\n");
  g_assert_cmpint(wait_exit(q), ==, 0);
  wait_port_eof(qout);
  g_assert_nonnull(strstr(qout->data->str, "30 100\r\n"));

  /* No terminal, no resize: the runtime's FAILED_PRECONDITION as an HRESULT. */
  const char *argv[] = { "sleep", "100", NULL };
  g_autoptr(FerryGuestProcess) s = exec_uvm(&e->host, uvm_params(argv, FALSE, FALSE, FALSE));
  Result bad = { 0 };
  ferry_guest_process_resize_console(s, 100, 30, on_done, &bad);
  wait_result(&bad);
  assert_hresult(bad.error, FERRY_HR_INVALID_STATE);
  result_clear(&bad);
  Result k = { 0 };
  ferry_guest_process_kill(s, on_signal_done, &k);
  wait_ok(&k);
  result_clear(&k);
  g_assert_cmpint(wait_exit(s), ==, 137);
}

#define N_MANY 20
#define BIG_OUTPUT (4u << 20)

typedef struct {
  FerryGuestProcess **procs;
  Result *waits;
  guint from, to;
} ManyWait;

static gboolean many_done(gpointer p)
{
  ManyWait *m = p;
  for (guint i = m->from; i < m->to; i++)
    if (!m->waits[i].done)
      return FALSE;
  return TRUE;
}

/* Many processes at once, each with its own ports; one host reader stops consuming. Its
 * process stalls (the agent reads its pipe only while the channel has room), and every
 * other process still finishes. */
static void test_many_with_one_stalled_reader(void)
{
  g_autoptr(Env) e = env_new();
  Result execs[N_MANY] = { { 0 } };
  Result waits[N_MANY] = { { 0 } };
  FerryGuestProcess *procs[N_MANY] = { NULL };
  g_autofree char *big = g_strdup_printf("head -c %u /dev/zero", BIG_OUTPUT);
  for (guint i = 0; i < N_MANY; i++) {
    g_autofree char *script = g_strdup_printf("echo line-%u", i);
    const char *argv[] = { "sh", "-c", i == 0 ? big : script, NULL };
    e->host.stall_next = i == 0;
    g_autoptr(json_t) params = uvm_params(argv, FALSE, TRUE, FALSE);
    ferry_guest_connection_create_process(e->host.gc, params, on_process, &execs[i]);
  }
  for (guint i = 0; i < N_MANY; i++) {
    wait_ok(&execs[i]);
    procs[i] = execs[i].process;
    guard((GPid)ferry_guest_process_get_pid(procs[i]));
    ferry_guest_process_wait(procs[i], on_done, &waits[i]);
  }
  ManyWait others = { procs, waits, 1, N_MANY };
  g_assert_true(run_until(many_done, &others, WAIT_MS));
  for (guint i = 1; i < N_MANY; i++) {
    g_assert_no_error(waits[i].error);
    HostPort *out = stdout_of(&e->host, procs[i]);
    wait_port_eof(out);
    g_autofree char *expected = g_strdup_printf("line-%u\n", i);
    g_assert_cmpstr(out->data->str, ==, expected);
  }
  /* The stalled one is still writing: no exit, nothing taken. */
  HostPort *stalled = stdout_of(&e->host, procs[0]);
  g_assert_false(waits[0].done);
  g_assert_cmpuint(stalled->data->len, ==, 0);
  stalled->stalled = FALSE;
  ferry_channel_resume_reading(stalled->channel);
  wait_ok(&waits[0]);
  wait_port_eof(stalled);
  g_assert_cmpuint(stalled->data->len, ==, BIG_OUTPUT);
  for (gsize i = 0; i < stalled->data->len; i++)
    if (stalled->data->str[i] != 0)
      g_error("byte %zu is not 0", i);
  int code = -1;
  g_assert_true(ferry_guest_process_exit_code(procs[0], &code, NULL));
  g_assert_cmpint(code, ==, 0);
  for (guint i = 0; i < N_MANY; i++)
    ferry_guest_process_unref(procs[i]);
}

static json_t *wait_body(const char *cid, guint32 pid, guint32 timeout_ms)
{
  json_t *body = ferry_bridge_request_base(cid, NULL);
  json_object_set_new(body, "ProcessId", json_integer(pid));
  json_object_set_new(body, "TimeoutInMs", json_integer(timeout_ms));
  return body;
}

static void test_wait_timeout_and_unknown_pid(void)
{
  g_autoptr(Env) e = env_new();
  const char *argv[] = { "sleep", "100", NULL };
  g_autoptr(FerryGuestProcess) p = exec_uvm(&e->host, uvm_params(argv, FALSE, FALSE, FALSE));
  guint32 pid = ferry_guest_process_get_pid(p);
  g_autoptr(GError) error = NULL;
  gint64 start = g_get_monotonic_time();
  g_assert_null(host_rpc(&e->host, FERRY_BRIDGE_RPC_WAIT_FOR_PROCESS,
                         wait_body(FERRY_NULL_CONTAINER_ID, pid, 200), &error));
  assert_hresult(error, FERRY_HR_TIMEOUT);
  g_assert_cmpint(g_get_monotonic_time() - start, >=, 190 * 1000);
  g_clear_error(&error);

  g_assert_null(host_rpc(&e->host, FERRY_BRIDGE_RPC_WAIT_FOR_PROCESS,
                         wait_body(FERRY_NULL_CONTAINER_ID, 0x7ffffff0u, 0xffffffffu), &error));
  assert_hresult(error, FERRY_HR_NOT_FOUND);
  g_clear_error(&error);
  /* A UVM process is not found in a container, and an unknown container is 0xC037010E. */
  g_assert_null(host_rpc(&e->host, FERRY_BRIDGE_RPC_WAIT_FOR_PROCESS,
                         wait_body("nosuch", pid, 0xffffffffu), &error));
  assert_hresult(error, FERRY_HR_SYSTEM_NOT_FOUND);
  g_clear_error(&error);

  /* The host's own (infinite) wait is still pending; a kill completes it. */
  Result k = { 0 };
  ferry_guest_process_kill(p, on_signal_done, &k);
  wait_ok(&k);
  result_clear(&k);
  g_assert_cmpint(wait_exit(p), ==, 137);
  /* After the exit, a wait with any timeout answers at once. */
  g_autoptr(json_t) answer = host_rpc(&e->host, FERRY_BRIDGE_RPC_WAIT_FOR_PROCESS,
                                      wait_body(FERRY_NULL_CONTAINER_ID, pid, 0), &error);
  g_assert_no_error(error);
  g_assert_cmpint(json_integer_value(json_object_get(answer, "ExitCode")), ==, 137);
}

static void test_errors_are_hresults(void)
{
  g_autoptr(Env) e = env_new();
  g_autoptr(GError) error = NULL;

  /* A program that does not exist: the exec fails, no process. */
  const char *argv[] = { "/nonexistent/program", NULL };
  Result r = { 0 };
  g_autoptr(json_t) params = uvm_params(argv, FALSE, TRUE, FALSE);
  ferry_guest_connection_create_process(e->host.gc, params, on_process, &r);
  wait_result(&r);
  assert_hresult(r.error, FERRY_HR_NOT_FOUND);
  g_assert_null(r.process);
  result_clear(&r);
  g_assert_cmpuint(ferry_gcs_process_count(e->guest.gcs), ==, 0);

  /* Exec in a container nobody created. */
  g_autoptr(FerryGuestContainer) ghost =
      ferry_guest_connection_open_container(e->host.gc, "ghost", &error);
  g_assert_no_error(error);
  Result gr = { 0 };
  const char *sh[] = { "true", NULL };
  g_autoptr(json_t) ghost_params = uvm_params(sh, FALSE, FALSE, FALSE);
  ferry_guest_container_create_process(ghost, ghost_params, on_process, &gr);
  wait_result(&gr);
  assert_hresult(gr.error, FERRY_HR_SYSTEM_NOT_FOUND);
  result_clear(&gr);

  /* ModifySettings: a type this guest does not handle is E_NOTIMPL naming it; a disk
   * mapped outside the allowed roots is refused before anything is looked at. */
  g_autoptr(json_t) modify = json_pack("{s:s, s:s, s:{}}", "ResourceType", "VPMemDevice",
                                       "RequestType", "Add", "Settings");
  Result m = { 0 };
  ferry_guest_connection_modify(e->host.gc, NULL, modify, on_done, &m);
  wait_result(&m);
  assert_hresult(m.error, FERRY_HR_E_NOTIMPL);
  g_assert_nonnull(strstr(m.error->message, "VPMemDevice"));
  result_clear(&m);
  g_autoptr(json_t) outside =
      json_pack("{s:s, s:s, s:{s:s, s:i, s:b}}", "ResourceType", "MappedVirtualDisk", "RequestType",
                "Add", "Settings", "MountPath", "/tmp/x", "Lun", 1, "ReadOnly", 1);
  Result m2 = { 0 };
  ferry_guest_connection_modify(e->host.gc, NULL, outside, on_done, &m2);
  wait_result(&m2);
  assert_hresult(m2.error, FERRY_HR_E_INVALIDARG);
  g_assert_nonnull(strstr(m2.error->message, "outside the directories"));
  result_clear(&m2);

  /* Create with an old schema, and without a bundle. */
  g_autoptr(json_t) old = json_pack("{s:{s:i,s:i}, s:s, s:{}}", "SchemaVersion", "Major", 2,
                                    "Minor", 0, "OciBundlePath", "/", "OciSpecification");
  Result c1 = { 0 };
  g_autoptr(FerryGuestContainer) c =
      ferry_guest_connection_create_container(e->host.gc, "old", old, on_done, &c1, &error);
  g_assert_no_error(error);
  wait_result(&c1);
  assert_hresult(c1.error, FERRY_HR_INVALID_JSON);
  g_assert_true(ferry_guest_container_has_exited(c)); /* a failed Create reads as exited */
  result_clear(&c1);
  g_autoptr(json_t) nobundle =
      json_pack("{s:{s:i,s:i}, s:s, s:{}}", "SchemaVersion", "Major", 2, "Minor", 1,
                "OciBundlePath", "/nonexistent", "OciSpecification");
  Result c2 = { 0 };
  g_autoptr(FerryGuestContainer) c_nb =
      ferry_guest_connection_create_container(e->host.gc, "nb", nobundle, on_done, &c2, &error);
  g_assert_no_error(error);
  wait_result(&c2);
  assert_hresult(c2.error, FERRY_HR_E_INVALIDARG);
  g_assert_true(ferry_guest_container_has_exited(c_nb));
  result_clear(&c2);

  /* DeleteContainerState of an unknown container. */
  Result d = { 0 };
  ferry_guest_connection_delete_container_state(e->host.gc, "ghost", on_done, &d);
  wait_result(&d);
  assert_hresult(d.error, FERRY_HR_SYSTEM_NOT_FOUND);
  result_clear(&d);

  /* GetProperties is refused against the UVM. */
  g_autoptr(json_t) q = ferry_bridge_request_base(FERRY_NULL_CONTAINER_ID, NULL);
  ferry_bridge_set_embedded(q, "Query", json_pack("{s:[s]}", "PropertyTypes", "ProcessList"));
  g_assert_null(host_rpc(&e->host, FERRY_BRIDGE_RPC_GET_PROPERTIES, json_incref(q), &error));
  assert_hresult(error, FERRY_HR_E_INVALIDARG);
  g_clear_error(&error);

  /* A body that is not what ExecuteProcess needs. */
  g_autoptr(json_t) bad = ferry_bridge_request_base(FERRY_NULL_CONTAINER_ID, NULL);
  json_object_set_new(bad, "Settings", json_pack("{s:s}", "ProcessParameters", "{not json"));
  g_assert_null(host_rpc(&e->host, FERRY_BRIDGE_RPC_EXECUTE_PROCESS, json_incref(bad), &error));
  assert_hresult(error, FERRY_HR_INVALID_JSON);
  g_clear_error(&error);

  /* No Settings at all: invalid JSON, as hcsshim's guest answers (not E_INVALIDARG). */
  g_autoptr(json_t) bare = ferry_bridge_request_base(FERRY_NULL_CONTAINER_ID, NULL);
  g_assert_null(host_rpc(&e->host, FERRY_BRIDGE_RPC_EXECUTE_PROCESS, json_incref(bare), &error));
  assert_hresult(error, FERRY_HR_INVALID_JSON);
  g_clear_error(&error);
  g_assert_cmpuint(ferry_gcs_process_count(e->guest.gcs), ==, 0);

  /* A stdio port nobody listens on: the dial is refused, nothing is started. */
  g_autoptr(json_t) refused = ferry_bridge_request_base(FERRY_NULL_CONTAINER_ID, NULL);
  json_t *settings = json_object();
  ferry_bridge_set_embedded(settings, "ProcessParameters",
                            uvm_params((const char *[]){ "true", NULL }, FALSE, TRUE, FALSE));
  json_object_set_new(settings, "VsockStdioRelaySettings",
                      json_pack("{s:i}", "StdOut", 0x4000ff00));
  json_object_set_new(refused, "Settings", settings);
  g_assert_null(host_rpc(&e->host, FERRY_BRIDGE_RPC_EXECUTE_PROCESS, json_incref(refused), &error));
  assert_hresult(error, FERRY_HR_E_FAIL);
  g_assert_nonnull(strstr(error->message, "StdOut"));
  g_clear_error(&error);
  g_assert_cmpuint(ferry_gcs_process_count(e->guest.gcs), ==, 0);

  /* DumpStacks lists what runs. */
  const char *sleeper[] = { "sleep", "100", NULL };
  g_autoptr(FerryGuestProcess) p = exec_uvm(&e->host, uvm_params(sleeper, FALSE, FALSE, FALSE));
  Result ds = { 0 };
  ferry_guest_connection_dump_stacks(e->host.gc, on_json, &ds);
  wait_ok(&ds);
  const char *stacks = json_string_value(json_object_get(ds.json, "GuestStacks"));
  g_assert_nonnull(stacks);
  g_autofree char *line = g_strdup_printf("process %u: running", ferry_guest_process_get_pid(p));
  if (strstr(stacks, line) == NULL)
    g_error("DumpStacks does not list the sleeper: %s", stacks);
  result_clear(&ds);
  Result k = { 0 };
  ferry_guest_process_kill(p, on_signal_done, &k);
  wait_ok(&k);
  result_clear(&k);
  g_assert_cmpint(wait_exit(p), ==, 137);
}

/* --------------------------------------------------------- reconnects -- */

/* `seq 1 N` as the host should see it. */
static char *seq_text(guint n)
{
  GString *s = g_string_new(NULL);
  for (guint i = 1; i <= n; i++)
    g_string_append_printf(s, "%u\n", i);
  return g_string_free(s, FALSE);
}

typedef struct {
  HostPort *hp;
  gsize at_least;
} SizeWait;

static gboolean port_has_bytes(gpointer p)
{
  SizeWait *w = p;
  return w->hp->data->len >= w->at_least || w->hp->eof;
}

#define SEQ_N 300000

/* The mux stream breaks three times while a process streams output; each time both sides
 * get a new socketpair. Every byte arrives once, in order, the exit code arrives, and the
 * bridge never needed a new connection (its channel survived with the rest). */
static void test_mux_break_mid_stream(void)
{
  g_autoptr(Env) e = env_new();
  g_autofree char *count = g_strdup_printf("%u", SEQ_N);
  const char *argv[] = { "seq", "1", count, NULL };
  g_autoptr(FerryGuestProcess) p = exec_uvm(&e->host, uvm_params(argv, FALSE, TRUE, FALSE));
  HostPort *out = stdout_of(&e->host, p);
  g_autofree char *expected = seq_text(SEQ_N);
  gsize total = strlen(expected);
  for (int round = 1; round <= 3; round++) {
    SizeWait w = { out, total * (gsize)round / 4 };
    g_assert_true(run_until(port_has_bytes, &w, WAIT_MS));
    g_assert_false(out->eof);
    ferry_mux_detach(e->host.mux);
    ferry_mux_detach(e->guest.mux);
    run_pending(); /* what each side queued about the break runs before the new stream */
    env_attach(e);
  }
  g_assert_cmpint(wait_exit(p), ==, 0);
  wait_port_eof(out);
  g_assert_cmpuint(out->data->len, ==, total);
  g_assert_true(memcmp(out->data->str, expected, total) == 0);
  g_assert_cmpuint(ferry_gcs_connection_count(e->guest.gcs), ==, 1);
  g_assert_cmpuint(e->host.bridge_accepts, ==, 1);
  g_assert_false(ferry_bridge_is_dead(ferry_guest_connection_get_bridge(e->host.gc)));
}

/* The guest holds a WaitForProcess for `pid` (its DumpStacks text says so). */
typedef struct {
  FerryGcs *gcs;
  guint32 pid;
} GuestWaits;

static gboolean guest_has_wait(gpointer p)
{
  GuestWaits *gw = p;
  g_autofree char *dump = ferry_gcs_dump(gw->gcs);
  g_autofree char *line = g_strdup_printf("process %u: running, 1 wait(s)", gw->pid);
  return strstr(dump, line) != NULL;
}

/* The host goes away (its bridge channel closes, as with a new host that did not import
 * it): the guest re-dials, and a new host that pre-registers the old host's outstanding
 * wait gets its answer; the process survived the change. */
static void test_redial_after_host_closes(void)
{
  g_autoptr(Env) e = env_new();
  const char *argv[] = { "sleep", "100", NULL };
  g_autoptr(FerryGuestProcess) p = exec_uvm(&e->host, uvm_params(argv, FALSE, FALSE, FALSE));
  guint32 pid = ferry_guest_process_get_pid(p);
  FerryGuestMigrationState ms = ferry_guest_process_migration_state(p);
  g_assert_cmpuint(ms.wait_call_id, !=, 0);
  guint64 next_id = ferry_guest_connection_next_id(e->host.gc);
  /* Let the wait reach the guest before the host goes. */
  GuestWaits gw = { e->guest.gcs, pid };
  g_assert_true(run_until(guest_has_wait, &gw, WAIT_MS));
  g_clear_pointer(&e->host.gc, ferry_guest_connection_free);

  g_autoptr(GError) error = NULL;
  e->host.gc =
      ferry_guest_connection_new(host_take_bridge(&e->host), &port_hooks, &e->host, &error);
  g_assert_no_error(error);
  ferry_guest_connection_seed_next_id(e->host.gc, next_id);
  Result waited = { 0 };
  g_assert_true(ferry_bridge_preregister_rpc(ferry_guest_connection_get_bridge(e->host.gc),
                                             ms.wait_call_id, FERRY_BRIDGE_RPC_WAIT_FOR_PROCESS,
                                             on_rpc, &waited, &error));
  Result connected = { 0 };
  ferry_guest_connection_connect(e->host.gc, on_done, &connected);
  wait_ok(&connected);
  g_assert_cmpuint(ferry_gcs_connection_count(e->guest.gcs), ==, 2);

  /* The process is still there: signal it through the new host. */
  json_t *sig = ferry_bridge_request_base(FERRY_NULL_CONTAINER_ID, NULL);
  json_object_set_new(sig, "ProcessId", json_integer(pid));
  json_object_set_new(sig, "Options", json_pack("{s:i}", "Signal", SIGTERM));
  g_autoptr(json_t) sig_answer = host_rpc(&e->host, FERRY_BRIDGE_RPC_SIGNAL_PROCESS, sig, &error);
  g_assert_no_error(error);
  g_assert_cmpint(json_integer_value(json_object_get(sig_answer, "Result")), ==, 0);
  wait_ok(&waited);
  g_assert_cmpint(json_integer_value(json_object_get(waited.json, "ExitCode")), ==, 143);
  result_clear(&waited);

  /* And the new connection runs new processes. */
  const char *echo[] = { "echo", "again", NULL };
  g_autoptr(FerryGuestProcess) q = exec_uvm(&e->host, uvm_params(echo, FALSE, TRUE, FALSE));
  HostPort *out = stdout_of(&e->host, q);
  g_assert_cmpint(wait_exit(q), ==, 0);
  wait_port_eof(out);
  g_assert_cmpstr(out->data->str, ==, "again\n");
  g_assert_false(ferry_bridge_is_dead(ferry_guest_connection_get_bridge(e->host.gc)));
}

/* --------------------------------------------------------- containers -- */

/* ProcessParameters for a container process: an OCI process object plus the pipes. */
static json_t *container_params(const char *script, gboolean out)
{
  return json_pack("{s:{s:[s,s,s], s:[s], s:s, s:b}, s:b}", "OciProcess", "args", "sh", "-c",
                   script, "env", "PATH=/bin", "cwd", "/", "terminal", 0, "CreateStdOutPipe", out);
}

static FerryGuestProcess *exec_container(FerryGuestContainer *c, json_t *params)
{
  Result r = { 0 };
  ferry_guest_container_create_process(c, params, on_process, &r);
  json_decref(params);
  wait_ok(&r);
  guard((GPid)ferry_guest_process_get_pid(r.process));
  return r.process;
}

#define INIT_SCRIPT "echo up; while true; do sleep 1; done"

/* A crun container from a busybox root: Create, the first exec runs the init, a second
 * exec joins it (it sees the init as its pid 1 and the container's hostname),
 * GetProperties lists both, ShutdownForced ends it with a "ForcedExit" notification,
 * DeleteContainerState forgets it. */
/* ------------------------------------------------------- storage -- */

static char *read_text(const char *dir, const char *name)
{
  g_autofree char *path = g_build_filename(dir, name, NULL);
  char *text = NULL;
  if (!g_file_get_contents(path, &text, NULL, NULL))
    return g_strdup("(unreadable)");
  return text;
}

static void put_text(const char *dir, const char *name, const char *text)
{
  g_autofree char *path = g_build_filename(dir, name, NULL);
  g_autoptr(GError) error = NULL;
  g_assert_cmpint(g_mkdir_with_parents(dir, 0755), ==, 0);
  g_assert_true(g_file_set_contents(path, text, -1, &error));
}

static gboolean is_mounted(const char *path)
{
  g_autofree char *mounts = NULL;
  g_assert_true(g_file_get_contents("/proc/self/mounts", &mounts, NULL, NULL));
  g_autofree char *needle = g_strdup_printf(" %s ", path);
  return strstr(mounts, needle) != NULL;
}

static void modify_expect(Env *e, json_t *request, guint32 hresult, const char *part)
{
  Result r = { 0 };
  ferry_guest_connection_modify(e->host.gc, NULL, request, on_done, &r);
  wait_result(&r);
  if (hresult == 0) {
    g_assert_no_error(r.error);
  } else {
    assert_hresult(r.error, hresult);
    if (strstr(r.error->message, part) == NULL)
      g_error("\"%s\" not in: %s", part, r.error->message);
  }
  result_clear(&r);
}

/*
 * CombinedLayers on plain directories (the disks need a VM: tests/integration/test-disk.c):
 * an overlay in the agent's private mount namespace, the top layer first, the writes in
 * the scratch tmpfs; a double add refused; Remove unmounts both; the same root again; a
 * lone read-only layer.
 */
static void test_combined_layers_on_directories(void)
{
  if (container_problem != NULL) {
    g_test_skip(container_problem); /* root and local mode's mount namespace */
    return;
  }
  g_autoptr(Env) e = env_new();
  const char *dir = e->guest.dir;
  g_autofree char *l1 = g_build_filename(dir, "l1", NULL);
  g_autofree char *l2 = g_build_filename(dir, "l2", NULL);
  g_autofree char *root = g_build_filename(dir, "c", "rootfs", NULL);
  g_autofree char *scratch = g_build_filename(dir, "c", "scratch", NULL);
  put_text(l1, "a", "1");
  put_text(l1, "shared", "l1");
  put_text(l2, "b", "2");
  put_text(l2, "shared", "l2");
  const char *const layers[] = { l2, l1, NULL };
  g_autoptr(json_t) add =
      ferry_guest_combined_layers_request("Add", "c1", root, layers, scratch, 4);
  for (int round = 0; round < 2; round++) {
    modify_expect(e, add, 0, NULL);
    g_assert_true(is_mounted(root));
    g_assert_true(is_mounted(scratch));
    g_autofree char *a = read_text(root, "a");
    g_autofree char *b = read_text(root, "b");
    g_autofree char *shared = read_text(root, "shared");
    g_assert_cmpstr(a, ==, "1");
    g_assert_cmpstr(b, ==, "2");
    g_assert_cmpstr(shared, ==, "l2");
    put_text(root, "new", "written");
    g_autofree char *upper = g_build_filename(scratch, "upper", NULL);
    g_autofree char *landed = read_text(upper, "new");
    g_assert_cmpstr(landed, ==, "written");
    g_autofree char *in_layer = g_build_filename(l1, "new", NULL);
    g_assert_false(g_file_test(in_layer, G_FILE_TEST_EXISTS));
    modify_expect(e, add, FERRY_HR_ALREADY_EXISTS, "already combined");
    /* DumpStacks lists it. */
    Result dump = { 0 };
    ferry_guest_connection_dump_stacks(e->host.gc, on_json, &dump);
    wait_ok(&dump);
    g_autofree char *line =
        g_strdup_printf("layers %s: %s %s %s, tmpfs %s\n", root, l2, l1, scratch, scratch);
    const char *stacks = json_string_value(json_object_get(dump.json, "GuestStacks"));
    if (stacks == NULL || strstr(stacks, line) == NULL)
      g_error("no \"%s\" in DumpStacks: %s", line, stacks != NULL ? stacks : "(none)");
    result_clear(&dump);
    /* A directory that is no mapped disk: nothing to unmap. */
    FerryGuestMappedDisk layer = { .mount_path = l1 };
    g_autoptr(json_t) unmap = ferry_guest_mapped_disk_request("Remove", &layer);
    modify_expect(e, unmap, FERRY_HR_NOT_FOUND, "no disk is mapped");
    g_autoptr(json_t) remove =
        ferry_guest_combined_layers_request("Remove", NULL, root, NULL, NULL, 0);
    modify_expect(e, remove, 0, NULL);
    g_assert_false(is_mounted(root));
    g_assert_false(is_mounted(scratch));
    g_assert_false(g_file_test(root, G_FILE_TEST_EXISTS));
  }
  const char *const one[] = { l1, NULL };
  g_autoptr(json_t) ro = ferry_guest_combined_layers_request("Add", NULL, root, one, NULL, 0);
  modify_expect(e, ro, 0, NULL);
  g_autofree char *a = read_text(root, "a");
  g_assert_cmpstr(a, ==, "1");
  g_autofree char *denied = g_build_filename(root, "x", NULL);
  g_assert_cmpint(open(denied, O_WRONLY | O_CREAT | O_CLOEXEC, 0644), ==, -1);
  g_assert_cmpint(errno, ==, EROFS);
  g_autoptr(json_t) remove =
      ferry_guest_combined_layers_request("Remove", NULL, root, NULL, NULL, 0);
  modify_expect(e, remove, 0, NULL);
  g_assert_false(is_mounted(root));
  /* Layers outside the roots, or inside the root, are refused. */
  const char *const outside[] = { "/etc", NULL };
  g_autoptr(json_t) bad = ferry_guest_combined_layers_request("Add", NULL, root, outside, NULL, 0);
  modify_expect(e, bad, FERRY_HR_E_INVALIDARG, "outside the directories");
  g_autofree char *inner = g_build_filename(root, "scratch", NULL);
  g_autoptr(json_t) nested = ferry_guest_combined_layers_request("Add", NULL, root, one, inner, 0);
  modify_expect(e, nested, FERRY_HR_E_INVALIDARG, "may not contain each other");
}

static void test_container_lifecycle(void)
{
  if (container_problem != NULL) {
    g_test_skip(container_problem);
    return;
  }
  g_autoptr(Env) e = env_new();
  g_autofree char *bundle = g_build_filename(e->guest.dir, "bundle", NULL);
  g_assert_cmpint(g_mkdir_with_parents(bundle, 0700), ==, 0);
  g_autofree char *link = g_build_filename(bundle, "rootfs", NULL);
  g_assert_cmpint(symlink(rootfs, link), ==, 0);
  g_autoptr(json_t) config =
      json_pack("{s:{s:i,s:i}, s:s, s:o}", "SchemaVersion", "Major", 2, "Minor", 1, "OciBundlePath",
                bundle, "OciSpecification", test_busybox_oci_spec());
  g_autoptr(GError) error = NULL;
  Result created = { 0 };
  g_autoptr(FerryGuestContainer) c =
      ferry_guest_connection_create_container(e->host.gc, "c1", config, on_done, &created, &error);
  g_assert_no_error(error);
  wait_ok(&created);
  Result started = { 0 };
  ferry_guest_container_start(c, on_done, &started);
  wait_ok(&started);

  g_autoptr(FerryGuestProcess) init = exec_container(c, container_params(INIT_SCRIPT, TRUE));
  HostPort *init_out = stdout_of(&e->host, init);
  wait_port_text(init_out, "up\n");

  g_autoptr(FerryGuestProcess) joined =
      exec_container(c, container_params("hostname; cat /proc/1/cmdline", TRUE));
  HostPort *out = stdout_of(&e->host, joined);
  g_assert_cmpint(wait_exit(joined), ==, 0);
  wait_port_eof(out);
  static const char expected[] = "ferry-test\nsh\0-c\0" INIT_SCRIPT;
  g_assert_cmpmem(out->data->str, out->data->len, expected, sizeof(expected));

  Result props = { 0 };
  g_autoptr(json_t) query = json_pack("{s:[s]}", "PropertyTypes", "ProcessList");
  ferry_guest_container_properties(c, query, on_json, &props);
  wait_ok(&props);
  json_t *list = json_object_get(props.json, "ProcessList");
  g_assert_cmpuint(json_array_size(list), ==, 1); /* the exec has exited */
  g_assert_cmpint(json_integer_value(json_object_get(json_array_get(list, 0), "ProcessId")), ==,
                  ferry_guest_process_get_pid(init));
  result_clear(&props);

  Result exited = { 0 }, terminated = { 0 };
  ferry_guest_container_wait(c, on_done, &exited);
  ferry_guest_container_terminate(c, on_done, &terminated);
  wait_ok(&terminated);
  wait_ok(&exited);
  g_assert_cmpstr(ferry_guest_container_exit_type(c), ==, "ForcedExit");
  g_assert_cmpint(wait_exit(init), ==, 137);
  wait_port_eof(init_out);
  g_assert_cmpstr(init_out->data->str, ==, "up\n");

  /* Stopped: no more execs (a raw request: the host's container object is closed once
   * the notification came); then deleted, and unknown afterwards. */
  json_t *late = ferry_bridge_request_base("c1", NULL);
  json_t *settings = json_object();
  ferry_bridge_set_embedded(settings, "ProcessParameters", container_params("true", FALSE));
  json_object_set_new(late, "Settings", settings);
  g_assert_null(host_rpc(&e->host, FERRY_BRIDGE_RPC_EXECUTE_PROCESS, late, &error));
  assert_hresult(error, FERRY_HR_ALREADY_STOPPED);
  g_clear_error(&error);
  Result deleted = { 0 };
  ferry_guest_connection_delete_container_state(e->host.gc, "c1", on_done, &deleted);
  wait_ok(&deleted);
  Result again = { 0 };
  ferry_guest_connection_delete_container_state(e->host.gc, "c1", on_done, &again);
  wait_result(&again);
  assert_hresult(again.error, FERRY_HR_SYSTEM_NOT_FOUND);
  result_clear(&again);
}

/* ---------------------------------------------------- the program itself -- */

/* The ferry-gcs binary, spawned against a unix socket this test listens on. */
typedef struct {
  char *dir;
  char *socket_path;
  int listen_fd;
  guint listen_source;
  guint accepts;
  FerryProcess *agent;
  int stderr_fd;
  guint stderr_source;
  GString *log;
  gboolean exited;
  int exit_code;
  Host host;
} Program;

static gboolean on_agent_stderr(gint fd, GIOCondition cond, gpointer ud)
{
  Program *pg = ud;
  char buf[4096];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n > 0) {
      g_string_append_len(pg->log, buf, n);
      continue;
    }
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && errno == EAGAIN)
      return G_SOURCE_CONTINUE;
    pg->stderr_source = 0;
    return G_SOURCE_REMOVE;
  }
}

static gboolean on_agent_connect(gint fd, GIOCondition cond, gpointer ud)
{
  Program *pg = ud;
  int conn = accept4(fd, NULL, NULL, SOCK_CLOEXEC);
  if (conn < 0)
    return G_SOURCE_CONTINUE;
  g_autoptr(GError) error = NULL;
  g_assert_true(ferry_mux_attach(pg->host.mux, conn, &error));
  pg->accepts++;
  return G_SOURCE_CONTINUE;
}

static void on_agent_exit(FerryProcess *process, int exit_code, gpointer ud)
{
  Program *pg = ud;
  pg->exited = TRUE;
  pg->exit_code = exit_code;
}

static Program *program_start(void)
{
  const char *binary = g_getenv("FERRY_GCS_BINARY");
  if (binary == NULL || !g_file_test(binary, G_FILE_TEST_IS_EXECUTABLE)) {
    g_test_skip("FERRY_GCS_BINARY does not name the ferry-gcs program (run through meson)");
    return NULL;
  }
  Program *pg = g_new0(Program, 1);
  host_init(&pg->host);
  pg->dir = test_make_tmpdir();
  pg->socket_path = g_build_filename(pg->dir, "mux.sock", NULL);
  pg->log = g_string_new(NULL);
  pg->listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  g_assert_cmpint(pg->listen_fd, >=, 0);
  struct sockaddr_un addr = { .sun_family = AF_UNIX };
  g_assert_cmpuint(strlen(pg->socket_path), <, sizeof(addr.sun_path));
  strcpy(addr.sun_path, pg->socket_path);
  g_assert_cmpint(bind(pg->listen_fd, (struct sockaddr *)&addr, sizeof(addr)), ==, 0);
  g_assert_cmpint(listen(pg->listen_fd, 4), ==, 0);
  pg->listen_source = g_unix_fd_add(pg->listen_fd, G_IO_IN, on_agent_connect, pg);

  g_autofree char *state = g_build_filename(pg->dir, "state", NULL);
  const char *argv[] = { binary, "--mux-socket", pg->socket_path, "--state-dir",
                         state,  "--log-level",  "debug",         NULL };
  const char *env[] = { "PATH=" UVM_PATH, NULL };
  FerryProcessSpec spec = { .argv = argv, .env = env, .stderr_mode = FERRY_STDIO_PIPE };
  FerryProcessStdio io;
  g_autoptr(GError) error = NULL;
  pg->agent = ferry_process_spawn(&spec, &io, &error);
  g_assert_no_error(error);
  guard(ferry_process_get_pid(pg->agent));
  ferry_process_set_exit_func(pg->agent, on_agent_exit, pg, NULL);
  pg->stderr_fd = io.stderr_fd;
  pg->stderr_source = g_unix_fd_add(pg->stderr_fd, G_IO_IN | G_IO_HUP, on_agent_stderr, pg);
  host_connect(&pg->host);
  return pg;
}

static gboolean agent_exited(gpointer p)
{
  return ((Program *)p)->exited;
}

static void program_free(Program *pg)
{
  if (!pg->exited) {
    (void)ferry_process_signal(pg->agent, SIGKILL, NULL);
    run_until(agent_exited, pg, WAIT_MS);
  }
  if (g_test_failed() || g_getenv("FERRY_TEST_VERBOSE") != NULL) {
    g_auto(GStrv) lines = g_strsplit(pg->log->str, "\n", -1);
    for (char **l = lines; *l != NULL; l++)
      if (**l != '\0')
        g_test_message("ferry-gcs: %s", *l);
  }
  ferry_process_set_exit_func(pg->agent, NULL, NULL, NULL);
  ferry_process_unref(pg->agent);
  if (pg->stderr_source != 0)
    g_source_remove(pg->stderr_source);
  ferry_fd_clear(&pg->stderr_fd);
  g_source_remove(pg->listen_source);
  ferry_fd_clear(&pg->listen_fd);
  host_clear(&pg->host);
  test_rm_rf(pg->dir);
  g_free(pg->dir);
  g_free(pg->socket_path);
  g_string_free(pg->log, TRUE);
  g_free(pg);
}
G_DEFINE_AUTOPTR_CLEANUP_FUNC(Program, program_free)

typedef struct {
  Program *pg;
  guint accepts;
} AcceptWait;

static gboolean accepted_again(gpointer p)
{
  AcceptWait *w = p;
  return w->pg->accepts >= w->accepts;
}

/* The program: an exec, a break of its mux stream mid-output (it reconnects and the mux
 * resumes: the output is exact and the bridge lives on), then a UVM shutdown, which it
 * does not answer and after which it exits 0. */
static void test_program_reconnect_and_shutdown(void)
{
  g_autoptr(Program) pg = program_start();
  if (pg == NULL)
    return;
  Host *h = &pg->host;
  const char *argv[] = { "echo", "hello", NULL };
  g_autoptr(FerryGuestProcess) p = exec_uvm(h, uvm_params(argv, FALSE, TRUE, FALSE));
  HostPort *out = stdout_of(h, p);
  g_assert_cmpint(wait_exit(p), ==, 0);
  wait_port_eof(out);
  g_assert_cmpstr(out->data->str, ==, "hello\n");

  g_autofree char *count = g_strdup_printf("%u", SEQ_N);
  const char *seq[] = { "seq", "1", count, NULL };
  g_autoptr(FerryGuestProcess) q = exec_uvm(h, uvm_params(seq, FALSE, TRUE, FALSE));
  HostPort *qout = stdout_of(h, q);
  g_autofree char *expected = seq_text(SEQ_N);
  gsize total = strlen(expected);
  SizeWait w = { qout, total / 3 };
  g_assert_true(run_until(port_has_bytes, &w, WAIT_MS));
  /* Break the stream from the host side: the agent sees end of stream and reconnects. */
  ferry_mux_detach(h->mux);
  AcceptWait aw = { pg, pg->accepts + 1 };
  g_assert_true(run_until(accepted_again, &aw, WAIT_MS));
  g_assert_cmpint(wait_exit(q), ==, 0);
  wait_port_eof(qout);
  g_assert_cmpuint(qout->data->len, ==, total);
  g_assert_true(memcmp(qout->data->str, expected, total) == 0);
  g_assert_cmpuint(h->bridge_accepts, ==, 1);

  /* Shut the UVM down: no answer, the program exits 0. */
  Result never = { 0 };
  g_autoptr(json_t) body = ferry_bridge_request_base(FERRY_NULL_CONTAINER_ID, NULL);
  ferry_bridge_rpc(ferry_guest_connection_get_bridge(h->gc), FERRY_BRIDGE_RPC_SHUTDOWN_FORCED, body,
                   0, on_rpc, &never);
  g_assert_true(run_until(agent_exited, pg, WAIT_MS));
  g_assert_cmpint(pg->exit_code, ==, 0);
  g_assert_false(never.done);
  g_clear_pointer(&h->gc, ferry_guest_connection_free);
  g_assert_true(run_until(result_done, &never, WAIT_MS));
  g_assert_error(never.error, FERRY_BRIDGE_CLOSED_ERROR, FERRY_BRIDGE_CLOSED);
  result_clear(&never);
}

/* SIGTERM ends the program with 0 too. */
static void test_program_sigterm(void)
{
  g_autoptr(Program) pg = program_start();
  if (pg == NULL)
    return;
  g_autoptr(GError) error = NULL;
  g_assert_true(ferry_process_signal(pg->agent, SIGTERM, &error));
  g_assert_true(run_until(agent_exited, pg, WAIT_MS));
  g_assert_cmpint(pg->exit_code, ==, 0);
}

/* ---------------------------------------------------------------- main -- */

static void test_needs_crun(void)
{
  g_test_skip("crun is not installed (apt-get install crun)");
}

/* Local mode first (it must precede any thread), then the shared busybox root. */
static void prepare_containers(void)
{
  g_autoptr(GError) error = NULL;
  if (geteuid() != 0) {
    container_problem = g_strdup("container tests need root (local mode mounts cgroup2)");
    return;
  }
  if (!ferry_runtime_enter_local_mode(&error)) {
    container_problem = g_strdup_printf("local mode: %s", error->message);
    return;
  }
  if (!g_file_test("/bin/busybox", G_FILE_TEST_IS_EXECUTABLE)) {
    container_problem = g_strdup("/bin/busybox is missing (apt-get install busybox-static)");
    return;
  }
  rootfs_parent = test_make_tmpdir();
  rootfs = g_build_filename(rootfs_parent, "rootfs", NULL);
  if (!test_build_busybox_rootfs(rootfs, &error))
    container_problem = g_strdup_printf("busybox root: %s", error->message);
}

int main(int argc, char **argv)
{
  g_autofree char *crun = g_find_program_in_path("crun");
  if (crun != NULL)
    prepare_containers();
  struct sigaction fatal = { .sa_handler = on_fatal_signal, .sa_flags = SA_RESETHAND };
  sigaction(SIGABRT, &fatal, NULL);
  sigaction(SIGTERM, &fatal, NULL);
  sigaction(SIGINT, &fatal, NULL);
  /* As in the agent: a relay writing to a process that stopped reading gets EPIPE. */
  signal(SIGPIPE, SIG_IGN);
  g_test_init(&argc, &argv, NULL);
  if (g_getenv("FERRY_TEST_VERBOSE") == NULL)
    ferry_log_set_level(FERRY_LOG_WARNING);
  if (crun == NULL) {
    /* The runtime needs crun even for processes in the UVM. */
    g_printerr("# every agent test skips: crun is not installed (apt-get install crun)\n");
    g_test_add_func("/agent/needs-crun", test_needs_crun);
    return g_test_run();
  }
  if (container_problem != NULL)
    g_printerr("# container tests will skip: %s\n", container_problem);

  add_test("/agent/uvm/echo-hello", test_echo_hello);
  add_test("/agent/uvm/stdin-to-cat-then-eof", test_stdin_to_cat);
  add_test("/agent/uvm/stderr-separate", test_stderr_separate);
  add_test("/agent/uvm/exit-code", test_exit_code);
  add_test("/agent/uvm/background-child-holding-stdout", test_background_child_holding_stdout);
  add_test("/agent/uvm/sigterm-is-143", test_sigterm_is_143);
  add_test("/agent/uvm/reused-pid-is-another-process", test_reused_pid_is_another_process);
  add_test("/agent/uvm/pty-size-and-resize", test_pty_size_and_resize);
  add_test("/agent/uvm/many-with-one-stalled-reader", test_many_with_one_stalled_reader);
  add_test("/agent/uvm/wait-timeout-and-unknown-pid", test_wait_timeout_and_unknown_pid);
  add_test("/agent/errors-are-hresults", test_errors_are_hresults);
  add_test("/agent/combined-layers-on-directories", test_combined_layers_on_directories);
  add_test("/agent/bridge/mux-break-mid-stream", test_mux_break_mid_stream);
  add_test("/agent/bridge/redial-after-host-closes", test_redial_after_host_closes);
  add_test("/agent/container/lifecycle", test_container_lifecycle);
  add_test("/agent/program/reconnect-and-shutdown", test_program_reconnect_and_shutdown);
  add_test("/agent/program/sigterm", test_program_sigterm);

  int result = g_test_run();
  test_rm_rf(rootfs_parent);
  g_free(rootfs_parent);
  g_free(rootfs);
  g_free(container_problem);
  return result;
}
