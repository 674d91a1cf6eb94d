/*
 * Host-side stdio relays (lib/cmd) over the real mux and bridge. The guest side is the
 * real guest mux and bridge server, and the test plays the guest process: it answers
 * ExecuteProcess, dials the stdio ports the host asked for, writes output, reads input,
 * and decides when the process exits. (The real agent is exercised by
 * tests/integration.)
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "ferry/bridge-guest.h"
#include "ferry/cmd.h"
#include "ferry/error.h"
#include "ferry/fd.h"
#include "ferry/json.h"
#include "ferry/mux.h"
#include "test-util.h"

static guint8 pattern(guint32 seed, guint64 i)
{
  guint64 x = (i + 1) * 0x9e3779b97f4a7c15ull ^ ((guint64)seed << 32);
  x ^= x >> 31;
  return (guint8)(x >> 24);
}

/* ------------------------------------------------------------- the guest -- */

typedef struct {
  FerryMux *mux;
  FerryBridgeServer *server;
  guint32 ports[3];
  gboolean exec_seen;
  FerryBridgeRequest *wait; /* the pending WaitForProcess */
  gboolean exited;
  guint32 exit_code;
  /* hcsshim's guest: the wait is answered only once the host closed every output
   * channel the process had (hcsshim internal/guest/stdio). */
  guint outputs_open;
} Guest;

static void g_exec(FerryBridgeRequest *req, gpointer ud)
{
  Guest *g = ud;
  json_t *relay = json_object_get(json_object_get(ferry_bridge_request_get_body(req), "Settings"),
                                  "VsockStdioRelaySettings");
  static const char *const names[3] = { "StdIn", "StdOut", "StdErr" };
  for (int i = 0; i < 3; i++)
    g->ports[i] = (guint32)json_integer_value(json_object_get(relay, names[i]));
  g->exec_seen = TRUE;
  ferry_bridge_request_reply(req, json_pack("{s:i}", "ProcessId", 42));
}

static void guest_answer_wait(Guest *g)
{
  if (g->exited && g->outputs_open == 0 && g->wait != NULL)
    ferry_bridge_request_reply(g_steal_pointer(&g->wait),
                               json_pack("{s:i}", "ExitCode", g->exit_code));
}

static void g_wait(FerryBridgeRequest *req, gpointer ud)
{
  Guest *g = ud;
  g->wait = req;
  guest_answer_wait(g);
}

static void guest_exit(Guest *g, guint32 code)
{
  g->exited = TRUE;
  g->exit_code = code;
  guest_answer_wait(g);
}

static void on_bridge_dialed(FerryTransport *t, FerryChannel *ch, const GError *error, gpointer ud)
{
  Guest *g = ud;
  g_assert_no_error(error);
  g_autoptr(GError) e = NULL;
  int fd = ferry_channel_to_fd(ch, &e);
  g_assert_no_error(e);
  g_assert_true(ferry_bridge_server_serve(g->server, fd, &e));
  ferry_channel_unref(ch);
}

/* Dial a stdio port from the guest; returns the channel. */
typedef struct {
  gboolean done;
  FerryChannel *ch;
} Dial;

static void on_port_dialed(FerryTransport *t, FerryChannel *ch, const GError *error, gpointer ud)
{
  Dial *d = ud;
  g_assert_no_error(error);
  d->ch = ch;
  d->done = TRUE;
}

static FerryChannel *guest_dial(Guest *g, guint32 port)
{
  Dial d = { 0 };
  ferry_transport_dial(ferry_mux_get_transport(g->mux), port, on_port_dialed, &d);
  g_assert_true(test_run_until(&d.done, 5000));
  return d.ch;
}

/* ------------------------------------------------------------- the host -- */

typedef struct {
  Guest guest;
  FerryMux *host_mux;
  FerryStdioPorts *ports;
  FerryGuestConnection *gc;
  gboolean bridge_up;
} Fixture;

static void on_bridge_accepted(FerryTransport *t, FerryChannel *ch, gpointer ud)
{
  Fixture *f = ud;
  g_autoptr(GError) error = NULL;
  int fd = ferry_channel_to_fd(ch, &error);
  g_assert_no_error(error);
  f->gc = ferry_guest_connection_new(fd, ferry_stdio_ports_hooks(), f->ports, &error);
  g_assert_no_error(error);
  ferry_channel_unref(ch);
  f->bridge_up = TRUE;
}

static void on_done(const GError *error, gpointer ud)
{
  g_assert_no_error(error);
  *(gboolean *)ud = TRUE;
}

static void fixture_setup(Fixture *f, gconstpointer data)
{
  g_autoptr(GError) error = NULL;
  memset(f, 0, sizeof(*f));
  f->guest.mux = ferry_mux_new(FERRY_MUX_GUEST);
  f->guest.server = ferry_bridge_server_new();
  ferry_bridge_server_handle(f->guest.server,
                             ferry_bridge_request_type(FERRY_BRIDGE_RPC_EXECUTE_PROCESS),
                             FERRY_BRIDGE_PROTOCOL_V4, g_exec, &f->guest);
  ferry_bridge_server_handle(f->guest.server,
                             ferry_bridge_request_type(FERRY_BRIDGE_RPC_WAIT_FOR_PROCESS),
                             FERRY_BRIDGE_PROTOCOL_V4, g_wait, &f->guest);
  f->host_mux = ferry_mux_new(FERRY_MUX_HOST);
  f->ports = ferry_stdio_ports_new(ferry_mux_get_transport(f->host_mux));
  g_assert_true(ferry_transport_listen(ferry_mux_get_transport(f->host_mux), FERRY_GCS_BRIDGE_PORT,
                                       on_bridge_accepted, f, &error));
  int sp[2];
  g_assert_true(ferry_socketpair(sp, FALSE, &error));
  g_assert_true(ferry_mux_attach(f->host_mux, sp[0], &error));
  g_assert_true(ferry_mux_attach(f->guest.mux, sp[1], &error));
  ferry_transport_dial(ferry_mux_get_transport(f->guest.mux), FERRY_GCS_BRIDGE_PORT,
                       on_bridge_dialed, &f->guest);
  g_assert_true(test_run_until(&f->bridge_up, 5000));
  gboolean connected = FALSE;
  ferry_guest_connection_connect(f->gc, on_done, &connected);
  g_assert_true(test_run_until(&connected, 5000));
}

static void fixture_teardown(Fixture *f, gconstpointer data)
{
  if (f->guest.wait != NULL)
    ferry_bridge_request_drop(f->guest.wait);
  ferry_guest_connection_free(f->gc);
  ferry_stdio_ports_free(f->ports);
  ferry_bridge_server_free(f->guest.server);
  ferry_mux_free(f->guest.mux);
  ferry_mux_free(f->host_mux);
}

/* ----------------------------------------------------------------- bits -- */

typedef struct {
  gboolean done;
  int code;
  GError *error;
} WaitResult;

static void on_wait(int code, const GError *error, gpointer ud)
{
  WaitResult *w = ud;
  w->done = TRUE;
  w->code = code;
  if (error != NULL)
    w->error = g_error_copy(error);
}

static FerryCmd *start_cmd(Fixture *f, FerryCmdIo io)
{
  g_autoptr(json_t) params = json_pack("{s:[s]}", "CommandArgs", "test-process");
  FerryCmd *cmd = ferry_cmd_new(f->gc, NULL, f->ports, params, io);
  gboolean started = FALSE;
  ferry_cmd_start(cmd, on_done, &started);
  g_assert_true(test_run_until(&started, 5000));
  g_assert_true(f->guest.exec_seen);
  g_assert_nonnull(ferry_cmd_get_process(cmd));
  return cmd;
}

/* Write `total` pattern bytes into a guest channel as it takes them, then shut it. */
typedef struct {
  FerryChannel *ch;
  guint32 seed;
  guint64 total, sent;
  gboolean shut;
} Writer;

static void writer_fill(Writer *w)
{
  guint8 buf[8192];
  while (w->sent < w->total) {
    gsize n = (gsize)MIN((guint64)sizeof(buf), w->total - w->sent);
    for (gsize i = 0; i < n; i++)
      buf[i] = pattern(w->seed, w->sent + i);
    gsize took = ferry_channel_write(w->ch, buf, n);
    w->sent += took;
    if (took < n)
      return;
  }
  if (!w->shut) {
    w->shut = TRUE;
    ferry_channel_shutdown_write(w->ch);
  }
}

static void writer_writable(FerryChannel *ch, gpointer ud)
{
  writer_fill(ud);
}

static const FerryChannelHandlers writer_handlers = { NULL, NULL, writer_writable, NULL };

/* Read a pipe to its end, slowly, checking the pattern. */
typedef struct {
  int fd;
  guint32 seed;
  guint64 got;
  guint mismatches;
  gboolean eof;
} Reader;

static gboolean reader_step(Reader *r, gsize max)
{
  guint8 buf[4096];
  ssize_t n = read(r->fd, buf, MIN(max, sizeof(buf)));
  if (n == 0) {
    r->eof = TRUE;
    return FALSE;
  }
  if (n < 0)
    return FALSE;
  for (ssize_t i = 0; i < n; i++)
    if (buf[i] != pattern(r->seed, r->got + (guint64)i))
      r->mismatches++;
  r->got += (guint64)n;
  return TRUE;
}

/* ---------------------------------------------------------------- tests -- */

/* Output larger than any buffer on the way reaches a slow host reader intact, and the
 * wait completes only after it drained. */
static void test_stdout_relay_exact(Fixture *f, gconstpointer data)
{
  int out[2];
  g_assert_cmpint(pipe2(out, O_CLOEXEC), ==, 0);
  FerryCmd *cmd = start_cmd(f, (FerryCmdIo){ -1, out[1], -1 });
  g_assert_cmpuint(f->guest.ports[1], !=, 0);
  g_assert_cmpuint(f->guest.ports[0], ==, 0);
  Writer w = { guest_dial(&f->guest, f->guest.ports[1]), 21, 6u << 20, 0, FALSE };
  ferry_channel_set_handlers(w.ch, &writer_handlers, &w);
  writer_fill(&w);
  WaitResult wr = { 0 };
  ferry_cmd_wait(cmd, on_wait, &wr);
  guest_exit(&f->guest, 5);
  Reader r = { out[0], 21 };
  g_autoptr(GError) error = NULL;
  g_assert_true(ferry_fd_set_nonblocking(out[0], TRUE, &error));
  gint64 until = g_get_monotonic_time() + 30 * G_USEC_PER_SEC;
  while (!wr.done && g_get_monotonic_time() < until) {
    g_main_context_iteration(NULL, FALSE);
    reader_step(&r, 1500); /* slow: small reads */
  }
  g_assert_true(wr.done);
  g_assert_no_error(wr.error);
  g_assert_true(ferry_cmd_stream_done(cmd, FERRY_CMD_STDOUT));
  g_assert_true(ferry_cmd_stream_done(cmd, FERRY_CMD_STDIN)); /* no fd: nothing to relay */
  /* When the wait completes, the whole output is in the host fd: read the rest without
   * running the loop again. */
  while (reader_step(&r, 4096))
    ;
  g_assert_true(r.eof);
  g_assert_cmpuint(r.got, ==, 6u << 20);
  g_assert_cmpuint(r.mismatches, ==, 0);
  g_assert_cmpint(wr.code, ==, 5);
  ferry_channel_unref(w.ch);
  close(out[0]);
  ferry_cmd_free(cmd);
}

/* Host stdin reaches the guest exactly, then EOF. */
typedef struct {
  guint32 seed;
  guint64 got;
  guint mismatches;
  gboolean eof;
} Sink;

static gsize sink_data(FerryChannel *ch, const guint8 *data, gsize len, gpointer ud)
{
  Sink *s = ud;
  for (gsize i = 0; i < len; i++)
    if (data[i] != pattern(s->seed, s->got + i))
      s->mismatches++;
  s->got += len;
  return len;
}

static void sink_eof(FerryChannel *ch, gpointer ud)
{
  ((Sink *)ud)->eof = TRUE;
}

static const FerryChannelHandlers sink_handlers = { sink_data, sink_eof, NULL, NULL };

static void test_stdin_relay_exact(Fixture *f, gconstpointer data)
{
  int in[2];
  g_assert_cmpint(pipe2(in, O_CLOEXEC), ==, 0);
  FerryCmd *cmd = start_cmd(f, (FerryCmdIo){ in[0], -1, -1 });
  FerryChannel *ch = guest_dial(&f->guest, f->guest.ports[0]);
  Sink s = { 33 };
  ferry_channel_set_handlers(ch, &sink_handlers, &s);
  g_autoptr(GError) error = NULL;
  g_assert_true(ferry_fd_set_nonblocking(in[1], TRUE, &error));
  guint64 total = 3u << 20, sent = 0;
  gint64 until = g_get_monotonic_time() + 30 * G_USEC_PER_SEC;
  while (!s.eof && g_get_monotonic_time() < until) {
    if (sent < total) {
      guint8 buf[4096];
      gsize n = (gsize)MIN((guint64)sizeof(buf), total - sent);
      for (gsize i = 0; i < n; i++)
        buf[i] = pattern(33, sent + i);
      ssize_t w = write(in[1], buf, n);
      if (w > 0)
        sent += (guint64)w;
      if (sent == total)
        close(in[1]);
    }
    g_main_context_iteration(NULL, FALSE);
  }
  if (!s.eof)
    g_error("stdin: %" G_GUINT64_FORMAT " of %" G_GUINT64_FORMAT " sent, %" G_GUINT64_FORMAT
            " arrived",
            sent, total, s.got);
  g_assert_cmpuint(s.got, ==, total);
  g_assert_cmpuint(s.mismatches, ==, 0);
  guest_exit(&f->guest, 0);
  ferry_channel_unref(ch);
  ferry_cmd_free(cmd);
}

/* Output that never ends after the exit: the wait gives up after the copy timeout. */
static void test_copy_after_exit_timeout(Fixture *f, gconstpointer data)
{
  int out[2];
  g_assert_cmpint(pipe2(out, O_CLOEXEC), ==, 0);
  FerryCmd *cmd = start_cmd(f, (FerryCmdIo){ -1, out[1], -1 });
  ferry_cmd_set_copy_after_exit(cmd, 100);
  FerryChannel *ch = guest_dial(&f->guest, f->guest.ports[1]);
  g_assert_cmpuint(ferry_channel_write(ch, "partial", 7), ==, 7); /* and never EOF */
  WaitResult wr = { 0 };
  ferry_cmd_wait(cmd, on_wait, &wr);
  guest_exit(&f->guest, 0);
  g_assert_true(test_run_until(&wr.done, 5000));
  g_assert_error(wr.error, FERRY_ERROR, FERRY_ERROR_DEADLINE_EXCEEDED);
  g_assert_cmpstr(wr.error->message, ==, "i/o timed out");
  char buf[16];
  g_assert_cmpint(read(out[0], buf, sizeof(buf)), ==, 7);
  g_clear_error(&wr.error);
  ferry_channel_unref(ch);
  close(out[0]);
  ferry_cmd_free(cmd);
}

/* A host object that goes away and a new one that attaches to the same process: the
 * output continues exactly where the old relay stopped. */
static void test_attach_continues_exactly(Fixture *f, gconstpointer data)
{
  int out[2];
  g_assert_cmpint(pipe2(out, O_CLOEXEC), ==, 0);
  FerryCmd *cmd = start_cmd(f, (FerryCmdIo){ -1, dup(out[1]), -1 });
  FerryGuestProcess *process = ferry_guest_process_ref(ferry_cmd_get_process(cmd));
  Writer w = { guest_dial(&f->guest, f->guest.ports[1]), 44, 2u << 20, 0, FALSE };
  ferry_channel_set_handlers(w.ch, &writer_handlers, &w);
  writer_fill(&w);
  Reader r = { out[0], 44 };
  g_autoptr(GError) error = NULL;
  g_assert_true(ferry_fd_set_nonblocking(out[0], TRUE, &error));
  /* Let part of it through, then drop the relay mid-stream. */
  while (r.got < 500000) {
    g_main_context_iteration(NULL, FALSE);
    reader_step(&r, 4096);
  }
  g_assert_false(ferry_cmd_stream_done(cmd, FERRY_CMD_STDOUT)); /* mid-stream */
  ferry_cmd_detach(cmd);
  ferry_cmd_free(cmd);
  /* A new relay on the same process and ports, writing to the same pipe. */
  FerryCmd *again = ferry_cmd_attach(process, f->ports, (FerryCmdIo){ -1, out[1], -1 });
  WaitResult wr = { 0 };
  ferry_cmd_wait(again, on_wait, &wr);
  guest_exit(&f->guest, 9);
  gint64 until = g_get_monotonic_time() + 30 * G_USEC_PER_SEC;
  while (!r.eof && g_get_monotonic_time() < until) {
    g_main_context_iteration(NULL, FALSE);
    reader_step(&r, 4096);
  }
  g_assert_cmpuint(r.got, ==, 2u << 20);
  g_assert_cmpuint(r.mismatches, ==, 0);
  g_assert_true(test_run_until(&wr.done, 5000));
  g_assert_no_error(wr.error);
  g_assert_cmpint(wr.code, ==, 9);
  ferry_guest_process_unref(process);
  ferry_channel_unref(w.ch);
  close(out[0]);
  ferry_cmd_free(again);
}

/* An output the guest ended (EOF) and then keeps open until the host closes it, as hcsshim's
 * guest does before it answers the wait: the host lets go of the channel once it consumed
 * the EOF, so the exit arrives. */
static void held_closed(FerryChannel *ch, const GError *error, gpointer ud)
{
  Guest *g = ud;
  g->outputs_open--;
  guest_answer_wait(g);
}

static const FerryChannelHandlers held_handlers = { NULL, NULL, NULL, held_closed };

static void test_output_closed_after_eof(Fixture *f, gconstpointer data)
{
  int out[2];
  g_assert_cmpint(pipe2(out, O_CLOEXEC), ==, 0);
  FerryCmd *cmd = start_cmd(f, (FerryCmdIo){ -1, out[1], -1 });
  FerryChannel *ch = guest_dial(&f->guest, f->guest.ports[1]);
  f->guest.outputs_open = 1;
  ferry_channel_set_handlers(ch, &held_handlers, &f->guest);
  g_assert_cmpuint(ferry_channel_write(ch, "bye\n", 4), ==, 4);
  ferry_channel_shutdown_write(ch);
  WaitResult wr = { 0 };
  ferry_cmd_wait(cmd, on_wait, &wr);
  guest_exit(&f->guest, 3);
  g_assert_true(test_run_until(&wr.done, 5000));
  g_assert_no_error(wr.error);
  g_assert_cmpint(wr.code, ==, 3);
  g_assert_cmpuint(f->guest.outputs_open, ==, 0);
  char buf[16];
  g_assert_cmpint(read(out[0], buf, sizeof(buf)), ==, 4);
  g_assert_cmpint(read(out[0], buf, sizeof(buf)), ==, 0); /* and the host end is closed */
  ferry_channel_unref(ch);
  close(out[0]);
  ferry_cmd_free(cmd);
}

/* A port the guest never dials, released: the relay reports it and the wait still ends. */
static void test_port_released_before_dial(Fixture *f, gconstpointer data)
{
  int out[2];
  g_assert_cmpint(pipe2(out, O_CLOEXEC), ==, 0);
  FerryCmd *cmd = start_cmd(f, (FerryCmdIo){ -1, out[1], -1 });
  WaitResult wr = { 0 };
  ferry_cmd_wait(cmd, on_wait, &wr);
  for (int i = 0; i < 20; i++)
    g_main_context_iteration(NULL, FALSE);
  ferry_guest_process_close(ferry_cmd_get_process(cmd)); /* releases the ports */
  guest_exit(&f->guest, 0);
  g_assert_true(test_run_until(&wr.done, 5000));
  g_assert_error(wr.error, FERRY_ERROR, FERRY_ERROR_CANCELLED);
  g_clear_error(&wr.error);
  close(out[0]);
  ferry_cmd_free(cmd);
}

/* A command freed while its start is in flight: the start completes in the background and
 * the freed command is never called back (run under ASan: no use after free, no leak). */
static void on_start_must_not_run(const GError *error, gpointer ud)
{
  *(gboolean *)ud = TRUE;
}

static void test_free_during_start(Fixture *f, gconstpointer data)
{
  int out[2];
  g_assert_cmpint(pipe2(out, O_CLOEXEC), ==, 0);
  g_autoptr(json_t) params = json_pack("{s:[s]}", "CommandArgs", "test-process");
  FerryCmd *cmd = ferry_cmd_new(f->gc, NULL, f->ports, params, (FerryCmdIo){ -1, out[1], -1 });
  gboolean called = FALSE;
  ferry_cmd_start(cmd, on_start_must_not_run, &called);
  ferry_cmd_free(cmd);
  /* The host sends the wait right before it would report the start: once the guest has it,
   * the start's answer has been handled. */
  gboolean waited = FALSE;
  gint64 until = g_get_monotonic_time() + 5 * G_USEC_PER_SEC;
  while (!(waited = f->guest.wait != NULL) && g_get_monotonic_time() < until)
    g_main_context_iteration(NULL, TRUE);
  g_assert_true(waited);
  g_assert_false(called);
  /* Its ports were released: the stdout port is free to listen on again. */
  g_autoptr(GError) error = NULL;
  FerryTransport *t = ferry_mux_get_transport(f->host_mux);
  g_assert_true(ferry_transport_listen(t, f->guest.ports[1], on_bridge_accepted, f, &error));
  g_assert_no_error(error);
  ferry_transport_unlisten(t, f->guest.ports[1]);
  close(out[0]);
}

/* A wait on a finished command is reported from an idle; freeing the command first drops
 * it. */
static gboolean on_low_idle(gpointer ud)
{
  *(gboolean *)ud = TRUE;
  return G_SOURCE_REMOVE;
}

static void on_wait_must_not_run(int code, const GError *error, gpointer ud)
{
  *(gboolean *)ud = TRUE;
}

static void test_free_drops_queued_wait(Fixture *f, gconstpointer data)
{
  FerryCmd *cmd = start_cmd(f, FERRY_CMD_IO_NONE);
  WaitResult wr = { 0 };
  ferry_cmd_wait(cmd, on_wait, &wr);
  guest_exit(&f->guest, 0);
  g_assert_true(test_run_until(&wr.done, 5000));
  gboolean called = FALSE, later = FALSE;
  ferry_cmd_wait(cmd, on_wait_must_not_run, &called);
  ferry_cmd_free(cmd);
  /* An idle of lower priority runs only after every default-idle source that was ready. */
  g_idle_add_full(G_PRIORITY_LOW, on_low_idle, &later, NULL);
  g_assert_true(test_run_until(&later, 5000));
  g_assert_false(called);
}

/* Everything a command queues runs on the thread-default context of its creation: with a
 * pushed context that alone is iterated, the copy timer fires and a finished command's
 * wait is reported. (No mux here: the guest's bridge server is on a socketpair.) */
typedef struct {
  gboolean done;
  GError *error;
} Done;

static void on_done_any(const GError *error, gpointer ud)
{
  Done *d = ud;
  d->done = TRUE;
  if (error != NULL)
    d->error = g_error_copy(error);
}

static void test_pushed_context(void)
{
  GMainContext *ctx = g_main_context_new();
  g_main_context_push_thread_default(ctx);
  g_autoptr(GError) error = NULL;
  Guest guest = { 0 };
  guest.server = ferry_bridge_server_new();
  ferry_bridge_server_handle(guest.server,
                             ferry_bridge_request_type(FERRY_BRIDGE_RPC_EXECUTE_PROCESS),
                             FERRY_BRIDGE_PROTOCOL_V4, g_exec, &guest);
  ferry_bridge_server_handle(guest.server,
                             ferry_bridge_request_type(FERRY_BRIDGE_RPC_WAIT_FOR_PROCESS),
                             FERRY_BRIDGE_PROTOCOL_V4, g_wait, &guest);
  int sp[2];
  g_assert_true(ferry_socketpair(sp, FALSE, &error));
  g_assert_true(ferry_bridge_server_serve(guest.server, sp[1], &error));
  /* The ports' transport is never attached: the guest never dials. */
  FerryMux *mux = ferry_mux_new(FERRY_MUX_HOST);
  FerryStdioPorts *ports = ferry_stdio_ports_new(ferry_mux_get_transport(mux));
  FerryGuestConnection *gc =
      ferry_guest_connection_new(sp[0], ferry_stdio_ports_hooks(), ports, &error);
  g_assert_no_error(error);
  Done connected = { 0 };
  ferry_guest_connection_connect(gc, on_done_any, &connected);
  g_assert_true(test_run_until(&connected.done, 5000) /* ctx is thread-default */);
  g_assert_no_error(connected.error);

  int out[2];
  g_assert_cmpint(pipe2(out, O_CLOEXEC), ==, 0);
  g_autoptr(json_t) params = json_pack("{s:[s]}", "CommandArgs", "test-process");
  FerryCmd *cmd = ferry_cmd_new(gc, NULL, ports, params, (FerryCmdIo){ -1, out[1], -1 });
  ferry_cmd_set_copy_after_exit(cmd, 50);
  Done started = { 0 };
  ferry_cmd_start(cmd, on_done_any, &started);
  g_assert_true(test_run_until(&started.done, 5000) /* ctx is thread-default */);
  g_assert_no_error(started.error);
  WaitResult wr = { 0 };
  ferry_cmd_wait(cmd, on_wait, &wr);
  guest_exit(&guest, 4);
  /* stdout is never dialed: the copy timer ends the wait. */
  g_assert_true(test_run_until(&wr.done, 5000) /* ctx is thread-default */);
  g_assert_error(wr.error, FERRY_ERROR, FERRY_ERROR_DEADLINE_EXCEEDED);
  g_clear_error(&wr.error);
  WaitResult again = { 0 };
  ferry_cmd_wait(cmd, on_wait, &again);
  g_assert_false(again.done); /* never inside the call */
  g_assert_true(test_run_until(&again.done, 5000) /* ctx is thread-default */);
  g_clear_error(&again.error);
  /* And the guest manager's own idles: a wait on a process of a freed connection. */
  FerryGuestProcess *process = ferry_guest_process_ref(ferry_cmd_get_process(cmd));
  ferry_cmd_free(cmd);
  ferry_guest_connection_free(gc);
  Done closed = { 0 };
  ferry_guest_process_wait(process, on_done_any, &closed);
  g_assert_true(test_run_until(&closed.done, 5000) /* ctx is thread-default */);
  g_clear_error(&closed.error);
  ferry_guest_process_unref(process);

  close(out[0]);
  if (guest.wait != NULL)
    ferry_bridge_request_drop(guest.wait);
  ferry_stdio_ports_free(ports);
  ferry_mux_free(mux);
  ferry_bridge_server_free(guest.server);
  g_main_context_pop_thread_default(ctx);
  g_main_context_unref(ctx);
}

int main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
#define T(path, fn) g_test_add("/cmd/" path, Fixture, NULL, fixture_setup, fn, fixture_teardown)
  T("stdout-relay-exact", test_stdout_relay_exact);
  T("stdin-relay-exact", test_stdin_relay_exact);
  T("copy-after-exit-timeout", test_copy_after_exit_timeout);
  T("attach-continues-exactly", test_attach_continues_exactly);
  T("port-released-before-dial", test_port_released_before_dial);
  T("output-closed-after-eof", test_output_closed_after_eof);
  T("free-during-start", test_free_during_start);
  T("free-drops-queued-wait", test_free_drops_queued_wait);
  g_test_add_func("/cmd/pushed-context", test_pushed_context);
  return g_test_run();
}
