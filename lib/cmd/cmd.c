/* Commands and their stdio relays (hcsshim internal/cmd). */
#include <errno.h>
#include <glib-unix.h>
#include <unistd.h>

#include "ferry/cmd.h"
#include "ferry/error.h"
#include "ferry/fd.h"
#include "ferry/relay.h"
#include "ferry/source.h"

enum {
  STDIN_RELAY = FERRY_CMD_STDIN,
  STDOUT_RELAY = FERRY_CMD_STDOUT,
  STDERR_RELAY = FERRY_CMD_STDERR
};

typedef struct {
  FerryCmd *cmd;
  int which;
  guint32 port;      /* 0 until known */
  int fd;            /* the host end until a relay takes it; -1 when none */
  FerryRelay *relay; /* once bound, until finished */
  gboolean done;     /* stdout/stderr: EOF written through; stdin: EOF passed and consumed */
  GError *error;
} Relay;

typedef struct {
  FerryCmdWaitFunc done;
  gpointer user_data;
} Waiter;

/* The process's wait and the start's answer may outlive the command: they hold this, not
 * the command. */
typedef struct {
  FerryCmd *cmd; /* NULL once the command is freed */
} Token;

struct FerryCmd {
  GMainContext *context; /* thread-default at creation: every source of ours goes there */
  Token *token;          /* the process wait's */
  Token *start_token;    /* the start's, while it is in flight */
  FerryGuestConnection *gc;
  FerryGuestContainer *container;
  FerryStdioPorts *ports;
  json_t *params;
  FerryGuestProcess *process;
  Relay relays[3];
  guint copy_ms;
  gboolean exited;
  int exit_code;
  GError *exit_error;
  GSource *copy_timer;
  gboolean finished;
  GError *finish_error;
  GArray *waiters;
  GList *deferred; /* DeferredWait: waits on a finished command, reported from an idle */
  FerryGuestDoneFunc start_done;
  gpointer start_data;
  gboolean detached;
};

static void relay_bind(Relay *r, FerryChannel *channel);
static void maybe_finish(FerryCmd *cmd);

/* ---------------------------------------------------------------- relays -- */

/* Stop a relay: its fd is closed and its channel let go of. */
static void relay_stop(Relay *r)
{
  if (r->port != 0)
    ferry_stdio_ports_cancel(r->cmd->ports, r->port);
  ferry_fd_clear(&r->fd);
  g_clear_pointer(&r->relay, ferry_relay_free);
}

static void relay_fail(Relay *r, const GError *error)
{
  if (r->error == NULL && error != NULL)
    r->error = g_error_copy(error);
}

static void on_side_done(FerryRelay *relay, const GError *error, gpointer ud)
{
  relay_fail(ud, error);
}

/* Every byte is through: let go of the channel at once, as hcsshim's host closes each
 * output when its copy ends. hcsshim's guest answers WaitForProcess only after the host
 * closed every output channel, so keeping it until the process is closed would hold the
 * exit back for ever. For stdin, finished means the guest took every byte and the EOF. */
static void on_relay_finished(FerryRelay *relay, gpointer ud)
{
  Relay *r = ud;
  if (r->which != STDIN_RELAY)
    ferry_relay_abort(relay); /* closed, not only let go: the guest waits for that */
  g_clear_pointer(&r->relay, ferry_relay_free);
  r->done = TRUE;
  maybe_finish(r->cmd);
}

static const FerryRelayHandlers relay_handlers = {
  .read_done = on_side_done,
  .write_done = on_side_done,
  .finished = on_relay_finished,
};

/* stdout/stderr: the guest's bytes go straight into the host fd, and only what write(2)
 * accepted counts as consumed; a host reader that went away (EPIPE) is reported at the
 * end while the rest is drained, so the guest is not blocked. stdin: the host fd is
 * read only as far as the channel has room, so no byte is held here. */
static void relay_bind(Relay *r, FerryChannel *channel)
{
  gboolean in = r->which == STDIN_RELAY;
  FerryRelayOptions options = {
    .read_fd = in ? ferry_fd_steal(&r->fd) : -1,
    .write_fd = in ? -1 : ferry_fd_steal(&r->fd),
    .drop_after_write_error = TRUE,
  };
  r->relay = ferry_relay_new(channel, &options, &relay_handlers, r);
}

static void on_port_ready(guint32 port, FerryChannel *channel, const GError *error, gpointer ud)
{
  Relay *r = ud;
  if (r->cmd->detached)
    return;
  if (error != NULL) {
    relay_fail(r, error);
    ferry_fd_clear(&r->fd);
    r->done = TRUE;
    maybe_finish(r->cmd);
    return;
  }
  relay_bind(r, channel);
}

/* ------------------------------------------------------------- the cmd -- */

static FerryCmd *cmd_alloc(FerryStdioPorts *ports, FerryCmdIo io)
{
  FerryCmd *cmd = g_new0(FerryCmd, 1);
  cmd->context = g_main_context_ref_thread_default();
  cmd->ports = ports;
  cmd->copy_ms = FERRY_CMD_DEFAULT_COPY_AFTER_EXIT_MS;
  cmd->waiters = g_array_new(FALSE, FALSE, sizeof(Waiter));
  int fds[3] = { io.stdin_fd, io.stdout_fd, io.stderr_fd };
  for (int i = 0; i < 3; i++) {
    cmd->relays[i].cmd = cmd;
    cmd->relays[i].which = i;
    cmd->relays[i].fd = fds[i];
    cmd->relays[i].done = fds[i] < 0;
  }
  return cmd;
}

FerryCmd *ferry_cmd_new(FerryGuestConnection *gc, FerryGuestContainer *container,
                        FerryStdioPorts *ports, json_t *params, FerryCmdIo io)
{
  FerryCmd *cmd = cmd_alloc(ports, io);
  cmd->gc = gc;
  cmd->container = container != NULL ? ferry_guest_container_ref(container) : NULL;
  cmd->params = json_deep_copy(json_is_object(params) ? params : json_object());
  if (cmd->params == NULL)
    cmd->params = json_object();
  json_object_set_new(cmd->params, "CreateStdInPipe", json_boolean(io.stdin_fd >= 0));
  json_object_set_new(cmd->params, "CreateStdOutPipe", json_boolean(io.stdout_fd >= 0));
  json_object_set_new(cmd->params, "CreateStdErrPipe", json_boolean(io.stderr_fd >= 0));
  return cmd;
}

void ferry_cmd_set_copy_after_exit(FerryCmd *cmd, guint ms)
{
  cmd->copy_ms = ms;
}

gboolean ferry_cmd_stream_done(FerryCmd *cmd, FerryCmdStream stream)
{
  g_return_val_if_fail(stream <= FERRY_CMD_STDERR, FALSE);
  /* stdin is done when its EOF was passed on and the guest took every byte: until then
   * the channel still carries unacknowledged input that a new host must resend. */
  return cmd->relays[stream].done;
}

FerryGuestProcess *ferry_cmd_get_process(FerryCmd *cmd)
{
  return cmd->process;
}

static void finish(FerryCmd *cmd)
{
  if (cmd->finished)
    return;
  cmd->finished = TRUE;
  ferry_source_clear(&cmd->copy_timer);
  if (cmd->exit_error != NULL)
    cmd->finish_error = g_error_copy(cmd->exit_error);
  for (int i = STDOUT_RELAY; i <= STDERR_RELAY && cmd->finish_error == NULL; i++)
    if (cmd->relays[i].error != NULL)
      cmd->finish_error = g_error_copy(cmd->relays[i].error);
  g_autoptr(GArray) list = g_array_copy(cmd->waiters);
  g_array_set_size(cmd->waiters, 0);
  for (guint i = 0; i < list->len; i++) {
    Waiter *w = &g_array_index(list, Waiter, i);
    w->done(cmd->exit_code, cmd->finish_error, w->user_data);
  }
}

static void maybe_finish(FerryCmd *cmd)
{
  if (cmd->exited && cmd->relays[STDOUT_RELAY].done && cmd->relays[STDERR_RELAY].done)
    finish(cmd);
}

/* The output did not drain in time after the exit: give up on it (hcsshim errIOTimeOut). */
static gboolean on_copy_timeout(gpointer ud)
{
  FerryCmd *cmd = ud;
  ferry_source_clear(&cmd->copy_timer);
  for (int i = STDOUT_RELAY; i <= STDERR_RELAY; i++) {
    Relay *r = &cmd->relays[i];
    if (r->done)
      continue;
    g_autoptr(GError) error =
        g_error_new(FERRY_ERROR, FERRY_ERROR_DEADLINE_EXCEEDED, "i/o timed out");
    relay_fail(r, error);
    relay_stop(r);
    r->done = TRUE;
  }
  finish(cmd);
  return G_SOURCE_REMOVE;
}

static void on_process_exited(const GError *error, gpointer ud)
{
  Token *token = ud;
  FerryCmd *cmd = token->cmd;
  g_free(token);
  if (cmd == NULL)
    return;
  cmd->token = NULL;
  if (cmd->detached)
    return;
  cmd->exited = TRUE;
  g_autoptr(GError) local = NULL;
  if (!ferry_guest_process_exit_code(cmd->process, &cmd->exit_code, &local))
    cmd->exit_error = g_steal_pointer(&local);
  maybe_finish(cmd);
  if (!cmd->finished && cmd->copy_timer == NULL)
    cmd->copy_timer = ferry_timeout_new(cmd->context, cmd->copy_ms, on_copy_timeout, cmd);
}

static void bind_relays(FerryCmd *cmd)
{
  FerryGuestMigrationState ms = ferry_guest_process_migration_state(cmd->process);
  guint32 ports[3] = { ms.stdin_port, ms.stdout_port, ms.stderr_port };
  for (int i = 0; i < 3; i++) {
    Relay *r = &cmd->relays[i];
    if (r->fd < 0)
      continue;
    if (ports[i] == 0) {
      g_autoptr(GError) error = g_error_new(FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION,
                                            "process %u has no stdio port for fd %d",
                                            ferry_guest_process_get_pid(cmd->process), r->fd);
      relay_fail(r, error);
      ferry_fd_clear(&r->fd);
      r->done = TRUE;
      continue;
    }
    r->port = ports[i];
    ferry_stdio_ports_when_ready(cmd->ports, ports[i], on_port_ready, r);
  }
  cmd->token = g_new0(Token, 1);
  cmd->token->cmd = cmd;
  ferry_guest_process_wait(cmd->process, on_process_exited, cmd->token);
}

static void on_started(FerryGuestProcess *process, const GError *error, gpointer ud)
{
  Token *token = ud;
  FerryCmd *cmd = token->cmd;
  g_free(token);
  if (cmd == NULL) {
    /* Freed while starting: nobody relays, and the caller asked for no callback. The
     * process runs on in the guest as any freed command's does; its ports are released. */
    if (process != NULL) {
      ferry_guest_process_close(process);
      ferry_guest_process_unref(process);
    }
    return;
  }
  cmd->start_token = NULL;
  FerryGuestDoneFunc done = g_steal_pointer(&cmd->start_done);
  if (error == NULL) {
    cmd->process = process;
    bind_relays(cmd);
  }
  done(error, cmd->start_data);
}

void ferry_cmd_start(FerryCmd *cmd, FerryGuestDoneFunc done, gpointer user_data)
{
  g_return_if_fail(cmd->start_token == NULL && cmd->process == NULL);
  cmd->start_done = done;
  cmd->start_data = user_data;
  cmd->start_token = g_new0(Token, 1);
  cmd->start_token->cmd = cmd;
  if (cmd->container != NULL)
    ferry_guest_container_create_process(cmd->container, cmd->params, on_started, cmd->start_token);
  else
    ferry_guest_connection_create_process(cmd->gc, cmd->params, on_started, cmd->start_token);
}

FerryCmd *ferry_cmd_attach(FerryGuestProcess *process, FerryStdioPorts *ports, FerryCmdIo io)
{
  FerryCmd *cmd = cmd_alloc(ports, io);
  cmd->process = ferry_guest_process_ref(process);
  bind_relays(cmd);
  return cmd;
}

typedef struct {
  FerryCmd *cmd;
  GSource *source;
  FerryCmdWaitFunc done;
  gpointer user_data;
  int code;
  GError *error;
} DeferredWait;

static void deferred_wait_free(DeferredWait *d)
{
  ferry_source_clear(&d->source);
  g_clear_error(&d->error);
  g_free(d);
}

static gboolean run_deferred_wait(gpointer p)
{
  DeferredWait *d = p;
  d->cmd->deferred = g_list_remove(d->cmd->deferred, d);
  /* The callback may free the command. */
  d->done(d->code, d->error, d->user_data);
  deferred_wait_free(d);
  return G_SOURCE_REMOVE;
}

void ferry_cmd_wait(FerryCmd *cmd, FerryCmdWaitFunc done, gpointer user_data)
{
  if (cmd->finished) {
    DeferredWait *d = g_new0(DeferredWait, 1);
    d->cmd = cmd;
    d->done = done;
    d->user_data = user_data;
    d->code = cmd->exit_code;
    d->error = cmd->finish_error != NULL ? g_error_copy(cmd->finish_error) : NULL;
    d->source = ferry_idle_new(cmd->context, run_deferred_wait, d);
    cmd->deferred = g_list_prepend(cmd->deferred, d);
    return;
  }
  Waiter w = { done, user_data };
  g_array_append_val(cmd->waiters, w);
}

void ferry_cmd_detach(FerryCmd *cmd)
{
  cmd->detached = TRUE;
  for (int i = 0; i < 3; i++)
    relay_stop(&cmd->relays[i]);
  ferry_source_clear(&cmd->copy_timer);
}

void ferry_cmd_free(FerryCmd *cmd)
{
  if (cmd == NULL)
    return;
  ferry_cmd_detach(cmd);
  if (cmd->token != NULL)
    cmd->token->cmd = NULL; /* freed by the wait's callback */
  if (cmd->start_token != NULL)
    cmd->start_token->cmd = NULL; /* freed by the start's callback, which then stops */
  g_list_free_full(g_steal_pointer(&cmd->deferred), (GDestroyNotify)deferred_wait_free);
  for (int i = 0; i < 3; i++)
    g_clear_error(&cmd->relays[i].error);
  if (cmd->process != NULL)
    ferry_guest_process_unref(cmd->process);
  if (cmd->container != NULL)
    ferry_guest_container_unref(cmd->container);
  if (cmd->params != NULL)
    json_decref(cmd->params);
  g_clear_error(&cmd->exit_error);
  g_clear_error(&cmd->finish_error);
  g_array_unref(cmd->waiters);
  g_main_context_unref(cmd->context);
  g_free(cmd);
}
