/*
 * The exactly-once test (issue: "The guest agent, the channel mux and the stdio
 * relays"). A real ferry-gcs, in local mode on this host, runs a process that writes
 * 64 MiB of numbered lines to stderr and echoes 4 MiB of stdin to stdout. Meanwhile the
 * test breaks the host<->guest stream at least 20 times at random points, and each time
 * rebuilds the whole host side in FRESH objects from exported state only: a new mux
 * with the stdio channels imported, a new GuestConnection with SetNextPort and
 * SeedNextID, OpenContainer, OpenProcessWithIO with the outstanding wait id, and Attach.
 * The bytes received must equal the bytes sent, both ways, and the exit code must
 * arrive.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ferry/cmd.h"
#include "ferry/error.h"
#include "ferry/fd.h"
#include "ferry/guest.h"
#include "ferry/json.h"
#include "ferry/mux.h"
#include "test-util.h"

#define STDERR_LINES 8600000u /* seq 1..N: 67688896 bytes, over 64 MiB */
#define STDIN_BYTES (4u << 20)
#define MIN_BREAKS 20u
#define EXIT_CODE 3

/* -------------------------------------------------- what the test checks -- */

static guint8 stdin_byte(guint64 i)
{
  return (guint8)("0123456789abcdefghijklmnopqrstuvwxyz\n"[(i * 7 + i / 37) % 37]);
}

/* Verifies a stream against the expected bytes as they arrive. */
typedef struct {
  int fd;
  GString *expect; /* stderr: the seq output, built once */
  guint64 got;
  guint mismatches;
  gboolean eof;
} Checker;

static void checker_read(Checker *c, gboolean is_stdin_echo)
{
  guint8 buf[65536];
  for (;;) {
    ssize_t n = read(c->fd, buf, sizeof(buf));
    if (n == 0) {
      c->eof = TRUE;
      return;
    }
    if (n < 0)
      return;
    for (ssize_t i = 0; i < n; i++) {
      guint64 at = c->got + (guint64)i;
      guint8 want;
      if (is_stdin_echo)
        want = at < STDIN_BYTES ? stdin_byte(at) : 0;
      else
        want = at < c->expect->len ? (guint8)c->expect->str[at] : 0;
      if (buf[i] != want)
        c->mismatches++;
    }
    c->got += (guint64)n;
  }
}

/* ----------------------------------------------------------- host side -- */

typedef struct World World;

/* Everything a host object holds; rebuilt from scratch at every break. */
typedef struct {
  World *w;
  FerryMux *mux;
  FerryStdioPorts *ports;
  FerryGuestConnection *gc;
  FerryGuestContainer *uvm;
  FerryCmd *cmd;
  gboolean connected;
} Host;

/* What survives a break: only data, as it would cross to another process. */
typedef struct {
  guint32 pid;
  FerryGuestMigrationState ms;
  guint32 next_port;
  guint64 next_id;
  gboolean stream_done[3]; /* stdin, stdout, stderr: that relay finished, its channel gone */
  GPtrArray *channels;     /* GBytes: serialized channel states */
} Exported;

struct World {
  char *dir;
  char *sock_path;
  int listen_fd;
  GPid agent;
  int stdin_r, stdin_w, stdout_r, stdout_w, stderr_r, stderr_w;
  guint64 stdin_sent;
  Checker out, err;
  Host *host;
  Exported *exported; /* between a break and the next connect */
  gboolean started;
  gboolean waited;
  int exit_code;
  GError *wait_error;
  guint breaks;
};

static void on_cmd_done(int code, const GError *error, gpointer ud)
{
  World *w = ud;
  w->waited = TRUE;
  w->exit_code = code;
  if (error != NULL)
    w->wait_error = g_error_copy(error);
}

/* Each host object gets its own descriptors of the same pipes, except for the streams
 * an earlier host object already finished (their channels are gone). */
static FerryCmdIo host_io(World *w, const Exported *x)
{
  int fds[3] = { w->stdin_r, w->stdout_w, w->stderr_w };
  for (int i = 0; i < 3; i++)
    fds[i] = x != NULL && x->stream_done[i] ? -1 : fcntl(fds[i], F_DUPFD_CLOEXEC, 3);
  return (FerryCmdIo){ fds[0], fds[1], fds[2] };
}

/* The test is about losing nothing, so the output gets all the time it needs after the
 * exit: the 1 s default gives up on it (as hcsshim does) and a loaded sanitizer run can
 * take longer than that to drain a rebuilt host's backlog. The stall check bounds it. */
static void host_set_copy_after_exit(Host *h)
{
  ferry_cmd_set_copy_after_exit(h->cmd, 60 * 1000);
}

static void on_connected(const GError *error, gpointer ud)
{
  Host *h = ud;
  g_assert_no_error(error);
  h->connected = TRUE;
}

static void on_started(const GError *error, gpointer ud)
{
  Host *h = ud;
  g_assert_no_error(error);
  h->w->started = TRUE;
  ferry_cmd_wait(h->cmd, on_cmd_done, h->w);
}

/* The guest dialed the bridge port of this host object: build the guest manager. */
static void on_bridge(FerryTransport *t, FerryChannel *ch, gpointer ud)
{
  Host *h = ud;
  World *w = h->w;
  g_autoptr(GError) error = NULL;
  int fd = ferry_channel_to_fd(ch, &error);
  g_assert_no_error(error);
  ferry_channel_unref(ch);
  g_assert_null(h->gc);
  h->gc = ferry_guest_connection_new(fd, ferry_stdio_ports_hooks(), h->ports, &error);
  g_assert_no_error(error);
  Exported *x = w->exported;
  if (x == NULL) {
    /* The first host: start the process. */
    g_autofree char *script =
        g_strdup_printf("seq 1 %u >&2 & cat; wait; exit %d", STDERR_LINES, EXIT_CODE);
    g_autoptr(json_t) params = json_pack("{s:[s,s,s]}", "CommandArgs", "sh", "-c", script);
    h->cmd = ferry_cmd_new(h->gc, NULL, h->ports, params, host_io(w, NULL));
    host_set_copy_after_exit(h);
    ferry_guest_connection_connect(h->gc, on_connected, h);
    ferry_cmd_start(h->cmd, on_started, h);
    return;
  }
  /* A rebuilt host: restore everything before negotiating, so every answer the guest
   * kept for us can be routed. */
  ferry_guest_connection_set_next_port(h->gc, x->next_port);
  ferry_guest_connection_seed_next_id(h->gc, x->next_id);
  h->uvm = ferry_guest_connection_open_container(h->gc, FERRY_NULL_CONTAINER_ID, &error);
  g_assert_no_error(error);
  g_autoptr(FerryGuestProcess) p = ferry_guest_container_open_process_with_io(
      h->uvm, x->pid, x->ms.stdin_port, x->ms.stdout_port, x->ms.stderr_port, x->ms.wait_call_id,
      &error);
  g_assert_no_error(error);
  ferry_guest_process_set_serial(p, x->ms.serial);
  h->cmd = ferry_cmd_attach(p, h->ports, host_io(w, x));
  host_set_copy_after_exit(h);
  ferry_cmd_wait(h->cmd, on_cmd_done, w);
  ferry_guest_connection_connect(h->gc, on_connected, h);
}

/* Accept the agent's (re)connection on the world's socket; bounded wait. */
static int accept_agent(World *w)
{
  struct pollfd pfd = { w->listen_fd, POLLIN, 0 };
  gint64 until = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;
  while (poll(&pfd, 1, 0) == 0) {
    if (g_get_monotonic_time() > until)
      g_error("the agent did not connect within 10 s");
    g_main_context_iteration(NULL, FALSE);
    g_usleep(1000);
  }
  int fd = accept4(w->listen_fd, NULL, NULL, SOCK_CLOEXEC);
  g_assert_cmpint(fd, >=, 0);
  return fd;
}

static Host *host_new(World *w)
{
  Host *h = g_new0(Host, 1);
  h->w = w;
  h->mux = ferry_mux_new(FERRY_MUX_HOST);
  h->ports = ferry_stdio_ports_new(ferry_mux_get_transport(h->mux));
  g_autoptr(GError) error = NULL;
  if (w->exported != NULL) {
    /* The stdio channels, from their exported state only. */
    for (guint i = 0; i < w->exported->channels->len; i++) {
      FerryMuxChannelState st;
      g_assert_true(
          ferry_mux_channel_state_deserialize(w->exported->channels->pdata[i], &st, &error));
      FerryChannel *ch = ferry_mux_import_channel(h->mux, &st, &error);
      g_assert_no_error(error);
      ferry_stdio_ports_adopt(h->ports, st.port, ch);
      ferry_channel_unref(ch);
      ferry_mux_channel_state_clear(&st);
    }
  }
  g_assert_true(ferry_transport_listen(ferry_mux_get_transport(h->mux), FERRY_GCS_BRIDGE_PORT,
                                       on_bridge, h, &error));
  g_assert_true(ferry_mux_attach(h->mux, accept_agent(w), &error));
  return h;
}

static void host_free(Host *h)
{
  ferry_cmd_free(h->cmd);
  if (h->uvm != NULL)
    ferry_guest_container_unref(h->uvm);
  ferry_guest_connection_free(h->gc);
  ferry_stdio_ports_free(h->ports);
  ferry_mux_free(h->mux);
  g_free(h);
}

static void exported_free(Exported *x)
{
  if (x == NULL)
    return;
  g_ptr_array_unref(x->channels);
  g_free(x);
}

/* A break: the stream goes, the host object's state is exported, the object is freed. */
static void host_break_and_export(World *w)
{
  Host *h = w->host;
  ferry_mux_detach(h->mux); /* the agent sees the stream end and reconnects */
  FerryGuestProcess *p = ferry_cmd_get_process(h->cmd);
  Exported *x = g_new0(Exported, 1);
  x->pid = ferry_guest_process_get_pid(p);
  x->ms = ferry_guest_process_migration_state(p);
  x->next_port = ferry_guest_connection_next_port(h->gc);
  x->next_id = ferry_guest_connection_next_id(h->gc);
  x->channels = g_ptr_array_new_with_free_func((GDestroyNotify)g_bytes_unref);
  guint32 ports[3] = { x->ms.stdin_port, x->ms.stdout_port, x->ms.stderr_port };
  for (int i = 0; i < 3; i++) {
    x->stream_done[i] = ferry_cmd_stream_done(h->cmd, (FerryCmdStream)i);
    if (x->stream_done[i])
      continue;
    FerryChannel *ch = ports[i] != 0 ? ferry_stdio_ports_get(h->ports, ports[i]) : NULL;
    if (ch == NULL || !ferry_channel_is_open(ch))
      continue; /* not dialed yet: the next host listens for it */
    FerryMuxChannelState st;
    g_autoptr(GError) error = NULL;
    g_assert_true(ferry_mux_export_channel(h->mux, ch, &st, &error));
    g_ptr_array_add(x->channels, ferry_mux_channel_state_serialize(&st));
    ferry_mux_channel_state_clear(&st);
  }
  g_assert_cmpuint(x->ms.wait_call_id, !=, 0);
  /* Tear the old object down completely; nothing of it is used again. */
  host_free(h);
  w->host = NULL;
  exported_free(w->exported);
  w->exported = x;
  w->breaks++;
}

/* --------------------------------------------------------------- agent -- */

static char *agent_path(void)
{
  const char *root = g_getenv("FERRY_BUILD_ROOT");
  return root != NULL ? g_build_filename(root, "agent", "ferry-gcs", NULL) : NULL;
}

/* The agent dies with the test, however the test ends. */
static void agent_child_setup(gpointer data)
{
  prctl(PR_SET_PDEATHSIG, SIGKILL);
}

static void world_start(World *w)
{
  g_autoptr(GError) error = NULL;
  w->dir = test_make_tmpdir();
  w->sock_path = g_build_filename(w->dir, "mux.sock", NULL);
  w->listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_un addr = { .sun_family = AF_UNIX };
  g_strlcpy(addr.sun_path, w->sock_path, sizeof(addr.sun_path));
  g_assert_cmpint(bind(w->listen_fd, (struct sockaddr *)&addr, sizeof(addr)), ==, 0);
  g_assert_cmpint(listen(w->listen_fd, 4), ==, 0);
  g_autofree char *agent = agent_path();
  g_autofree char *state = g_build_filename(w->dir, "state", NULL);
  const char *argv[] = { agent, "--mux-socket", w->sock_path, "--state-dir", state, NULL };
  g_assert_true(g_spawn_async(NULL, (char **)argv, NULL, G_SPAWN_DO_NOT_REAP_CHILD,
                              agent_child_setup, NULL, &w->agent, &error));
  int p[2];
  g_assert_cmpint(pipe2(p, O_CLOEXEC), ==, 0);
  w->stdin_r = p[0];
  w->stdin_w = p[1];
  g_assert_cmpint(pipe2(p, O_CLOEXEC), ==, 0);
  w->stdout_r = p[0];
  w->stdout_w = p[1];
  g_assert_cmpint(pipe2(p, O_CLOEXEC), ==, 0);
  w->stderr_r = p[0];
  w->stderr_w = p[1];
  g_assert_true(ferry_fd_set_nonblocking(w->stdin_w, TRUE, &error));
  g_assert_true(ferry_fd_set_nonblocking(w->stdout_r, TRUE, &error));
  g_assert_true(ferry_fd_set_nonblocking(w->stderr_r, TRUE, &error));
  w->out.fd = w->stdout_r;
  w->err.fd = w->stderr_r;
  w->err.expect = g_string_sized_new(70u << 20);
  for (guint i = 1; i <= STDERR_LINES; i++)
    g_string_append_printf(w->err.expect, "%u\n", i);
}

static void world_stop(World *w)
{
  if (w->host != NULL)
    host_free(w->host);
  exported_free(w->exported);
  if (w->agent > 0) {
    kill(w->agent, SIGTERM);
    int status;
    for (int i = 0; i < 500 && waitpid(w->agent, &status, WNOHANG) == 0; i++)
      g_usleep(10000);
    if (waitpid(w->agent, &status, WNOHANG) == 0) {
      kill(w->agent, SIGKILL);
      waitpid(w->agent, &status, 0);
    }
  }
  int fds[] = { w->listen_fd, w->stdin_r,  w->stdin_w, w->stdout_r,
                w->stdout_w,  w->stderr_r, w->stderr_w };
  for (gsize i = 0; i < G_N_ELEMENTS(fds); i++)
    if (fds[i] >= 0)
      close(fds[i]);
  g_string_free(w->err.expect, TRUE);
  g_clear_error(&w->wait_error);
  test_rm_rf(w->dir);
  g_free(w->dir);
  g_free(w->sock_path);
}

/* ---------------------------------------------------------------- test -- */

static void feed_stdin(World *w)
{
  while (w->stdin_w >= 0 && w->stdin_sent < STDIN_BYTES) {
    guint8 buf[16384];
    gsize n = (gsize)MIN((guint64)sizeof(buf), STDIN_BYTES - w->stdin_sent);
    for (gsize i = 0; i < n; i++)
      buf[i] = stdin_byte(w->stdin_sent + i);
    ssize_t k = write(w->stdin_w, buf, n);
    if (k <= 0)
      return;
    w->stdin_sent += (guint64)k;
  }
  if (w->stdin_w >= 0 && w->stdin_sent == STDIN_BYTES) {
    close(w->stdin_w);
    w->stdin_w = -1;
  }
}

/* Where each stdio stream of the current host stands, for the stall message. */
static char *describe_streams(World *w)
{
  GString *s = g_string_new("");
  Host *h = w->host;
  if (h == NULL || h->cmd == NULL || ferry_cmd_get_process(h->cmd) == NULL)
    return g_string_free(s, FALSE);
  FerryGuestMigrationState ms = ferry_guest_process_migration_state(ferry_cmd_get_process(h->cmd));
  guint32 ports[3] = { ms.stdin_port, ms.stdout_port, ms.stderr_port };
  for (int i = 0; i < 3; i++) {
    g_string_append_printf(s, "; stream %d port %u done %d", i, ports[i],
                           ferry_cmd_stream_done(h->cmd, (FerryCmdStream)i));
    FerryChannel *ch = ports[i] != 0 ? ferry_stdio_ports_get(h->ports, ports[i]) : NULL;
    FerryMuxChannelState st;
    if (ch != NULL && ferry_channel_is_open(ch) &&
        ferry_mux_export_channel(h->mux, ch, &st, NULL)) {
      g_string_append_printf(s,
                             " consumed %" G_GUINT64_FORMAT " peer_shut %d final %" G_GUINT64_FORMAT
                             " acked %" G_GUINT64_FORMAT "/%" G_GUINT64_FORMAT " shut %d",
                             st.recv_consumed, st.peer_shut, st.peer_final, st.send_acked,
                             st.send_total, st.shut);
      ferry_mux_channel_state_clear(&st);
    } else {
      g_string_append_printf(s, " channel %s", ch == NULL ? "none" : "closed");
    }
  }
  return g_string_free(s, FALSE);
}

static guint64 progress(World *w)
{
  return w->out.got + w->err.got + w->stdin_sent;
}

static void test_exactly_once(void)
{
  g_autofree char *agent = agent_path();
  if (agent == NULL || !g_file_test(agent, G_FILE_TEST_IS_EXECUTABLE)) {
    g_test_skip("ferry-gcs is not built (FERRY_BUILD_ROOT unset or agent missing)");
    return;
  }
  World w = { 0 };
  w.listen_fd = w.stdin_r = w.stdin_w = w.stdout_r = w.stdout_w = w.stderr_r = w.stderr_w = -1;
  world_start(&w);
  g_autoptr(GRand) rand = g_rand_new_with_seed(g_test_rand_int());
  w.host = host_new(&w);
  /* Spread the breaks over the run: the total is about 75 MB. */
  guint64 total = STDIN_BYTES * 2 + w.err.expect->len;
  guint64 next_break = (guint64)g_rand_int_range(rand, 100000, 2000000);
  gint64 until = g_get_monotonic_time() + 600 * G_USEC_PER_SEC;
  guint64 last_progress = 0;
  gint64 last_change = g_get_monotonic_time();
  /* Done when the command's wait completed (the process exited and its output drained
   * into our pipes) and everything has been read: the test holds the pipes' write ends
   * itself (to hand copies to each host object), so there is no EOF to wait for. */
  while (!(w.waited && w.out.got >= STDIN_BYTES && w.err.got >= w.err.expect->len)) {
    if (progress(&w) != last_progress) {
      last_progress = progress(&w);
      last_change = g_get_monotonic_time();
    } else if (g_get_monotonic_time() - last_change > 30 * G_USEC_PER_SEC) {
      g_error("stalled for 30 s after %u breaks: stdout %" G_GUINT64_FORMAT
              ", stderr %" G_GUINT64_FORMAT ", stdin sent %" G_GUINT64_FORMAT
              ", host %p connected %d gc %p, mux synced %d, "
              "%u mux channels, exported %u channels%s",
              w.breaks, w.out.got, w.err.got, w.stdin_sent, (void *)w.host,
              w.host ? w.host->connected : -1, w.host ? (void *)w.host->gc : NULL,
              w.host ? ferry_mux_is_synced(w.host->mux) : -1,
              w.host ? ferry_mux_channel_count(w.host->mux) : 0,
              w.exported ? w.exported->channels->len : 0, describe_streams(&w));
    }
    static gint64 last_report;
    if (g_getenv("FERRY_TEST_VERBOSE") != NULL &&
        g_get_monotonic_time() - last_report > 5 * G_USEC_PER_SEC) {
      last_report = g_get_monotonic_time();
      g_printerr("progress: stdout %" G_GUINT64_FORMAT " stderr %" G_GUINT64_FORMAT
                 " stdin %" G_GUINT64_FORMAT " breaks %u\n",
                 w.out.got, w.err.got, w.stdin_sent, w.breaks);
    }
    if (g_get_monotonic_time() > until)
      g_error("not done after 600 s: stdout %" G_GUINT64_FORMAT "/%u, stderr %" G_GUINT64_FORMAT
              "/%" G_GSIZE_FORMAT ", stdin sent %" G_GUINT64_FORMAT ", %u breaks, waited %d",
              w.out.got, STDIN_BYTES, w.err.got, w.err.expect->len, w.stdin_sent, w.breaks,
              w.waited);
    feed_stdin(&w);
    checker_read(&w.out, TRUE);
    checker_read(&w.err, FALSE);
    /* Break only while the process's wait is outstanding (after the exit there is no
     * wait to pre-register; a migration would carry the exit code instead). */
    gboolean ready =
        w.host != NULL && w.host->connected && w.started && !w.waited &&
        ferry_cmd_get_process(w.host->cmd) != NULL &&
        ferry_guest_process_migration_state(ferry_cmd_get_process(w.host->cmd)).wait_call_id != 0;
    if (ready && progress(&w) >= next_break) {
      host_break_and_export(&w);
      w.host = host_new(&w);
      guint64 gap = total / (MIN_BREAKS + 4);
      next_break = progress(&w) + (guint64)g_rand_int_range(rand, 1, (gint32)MIN(gap, G_MAXINT32));
    }
    g_main_context_iteration(NULL, FALSE);
    if (!w.waited)
      g_usleep(50);
  }
  /* Nothing more may follow. */
  for (int i = 0; i < 100; i++)
    g_main_context_iteration(NULL, FALSE);
  checker_read(&w.out, TRUE);
  checker_read(&w.err, FALSE);
  g_test_message("%u breaks, each rebuilding the host side from exported state", w.breaks);
  g_assert_cmpuint(w.breaks, >=, MIN_BREAKS);
  g_assert_no_error(w.wait_error);
  g_assert_cmpint(w.exit_code, ==, EXIT_CODE);
  g_assert_cmpuint(w.out.got, ==, STDIN_BYTES);
  g_assert_cmpuint(w.out.mismatches, ==, 0);
  g_assert_cmpuint(w.err.got, ==, w.err.expect->len);
  g_assert_cmpuint(w.err.mismatches, ==, 0);
  world_stop(&w);
}

int main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  signal(SIGPIPE, SIG_IGN);
  g_test_add_func("/integration/exactly-once", test_exactly_once);
  return g_test_run();
}
