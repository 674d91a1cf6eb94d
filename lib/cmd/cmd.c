/* Commands and their stdio relays (hcsshim internal/cmd). */
#include <errno.h>
#include <glib-unix.h>
#include <unistd.h>

#include "ferry/cmd.h"
#include "ferry/error.h"
#include "ferry/fd.h"
#include "ferry/source.h"

/* Bytes a stdin relay reads at a time (never more than the channel takes). */
#define STDIN_CHUNK (64u * 1024u)

enum {
  STDIN_RELAY = FERRY_CMD_STDIN,
  STDOUT_RELAY = FERRY_CMD_STDOUT,
  STDERR_RELAY = FERRY_CMD_STDERR
};

typedef struct {
  FerryCmd *cmd;
  int which;
  guint32 port;          /* 0 until known */
  int fd;                /* the host end; -1 when none or closed */
  FerryChannel *channel; /* a reference once bound */
  GSource *fd_watch;
  GSource *release; /* stdout/stderr after EOF: closes the channel from the loop */
  gboolean done;    /* stdout/stderr: EOF written through (or given up) */
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

static void relay_unwatch(Relay *r)
{
  ferry_source_clear(&r->fd_watch);
}

static GSource *relay_watch(Relay *r, GIOCondition cond, GUnixFDSourceFunc func)
{
  GSource *source = g_unix_fd_source_new(r->fd, cond);
  g_source_set_callback(source, G_SOURCE_FUNC(func), r, NULL);
  g_source_attach(source, r->cmd->context);
  return source;
}

static gboolean close_channel_idle(gpointer ud)
{
  FerryChannel *channel = ud;
  ferry_channel_close(channel);
  return G_SOURCE_REMOVE;
}

/* Close `channel` from the main loop: the transport may still be inside one of its
 * handlers. The idle holds a reference to the channel and nothing of ours. */
static void close_channel_later(GMainContext *context, FerryChannel *channel)
{
  GSource *source = g_idle_source_new();
  g_source_set_callback(source, close_channel_idle, ferry_channel_ref(channel),
                        (GDestroyNotify)ferry_channel_unref);
  g_source_attach(source, context);
  g_source_unref(source);
}

/* Stop a relay: its fd is closed, its channel forgotten (not closed), except an output
 * whose EOF was consumed: that one is closed, as it would have been. */
static void relay_stop(Relay *r)
{
  if (r->port != 0)
    ferry_stdio_ports_cancel(r->cmd->ports, r->port);
  relay_unwatch(r);
  ferry_fd_clear(&r->fd);
  if (r->release != NULL) {
    ferry_source_clear(&r->release);
    close_channel_later(r->cmd->context, r->channel);
  }
  if (r->channel != NULL) {
    ferry_channel_set_handlers(r->channel, &(FerryChannelHandlers){ 0 }, NULL);
    g_clear_pointer(&r->channel, ferry_channel_unref);
  }
}

static void relay_fail(Relay *r, const GError *error)
{
  if (r->error == NULL && error != NULL)
    r->error = g_error_copy(error);
}

/* stdout/stderr: the guest's bytes go straight into the host fd; only what write(2)
 * accepted counts as consumed. */
static gboolean on_out_writable(int fd, GIOCondition cond, gpointer ud)
{
  Relay *r = ud;
  ferry_source_clear(&r->fd_watch);
  if (r->channel != NULL)
    ferry_channel_resume_reading(r->channel);
  return G_SOURCE_REMOVE;
}

static gsize out_data(FerryChannel *ch, const guint8 *data, gsize len, gpointer ud)
{
  Relay *r = ud;
  if (r->fd < 0)
    return len; /* the host end is gone: the bytes have nowhere to go */
  gsize done = 0;
  while (done < len) {
    ssize_t n = write(r->fd, data + done, len - done);
    if (n > 0) {
      done += (gsize)n;
      continue;
    }
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (r->fd_watch == NULL)
        r->fd_watch = relay_watch(r, G_IO_OUT | G_IO_ERR | G_IO_HUP, on_out_writable);
      return done;
    }
    /* The reader went away (EPIPE): keep draining so the guest is not blocked. */
    g_autoptr(GError) error = NULL;
    ferry_error_set_errno(&error, errno, "write process output to the host");
    relay_fail(r, error);
    ferry_fd_clear(&r->fd);
    return len;
  }
  return done;
}

/* Every byte is in the host fd: let go of the channel at once, as hcsshim's host closes each
 * output when its copy ends. hcsshim's guest answers WaitForProcess only after the host
 * closed every output channel, so keeping it until the process is closed would hold the
 * exit back for ever. */
static gboolean on_release(gpointer ud)
{
  Relay *r = ud;
  ferry_source_clear(&r->release);
  ferry_channel_close(r->channel);
  g_clear_pointer(&r->channel, ferry_channel_unref);
  return G_SOURCE_REMOVE;
}

static void out_eof(FerryChannel *ch, gpointer ud)
{
  Relay *r = ud;
  relay_unwatch(r);
  ferry_fd_clear(&r->fd);
  r->done = TRUE;
  /* Not from inside the channel's own handler: from the loop, on an idle we own. */
  ferry_channel_set_handlers(r->channel, &(FerryChannelHandlers){ 0 }, NULL);
  r->release = ferry_idle_new(r->cmd->context, on_release, r);
  maybe_finish(r->cmd);
}

static void out_closed(FerryChannel *ch, const GError *error, gpointer ud)
{
  Relay *r = ud;
  relay_unwatch(r);
  ferry_fd_clear(&r->fd);
  relay_fail(r, error);
  r->done = TRUE;
  maybe_finish(r->cmd);
}

static const FerryChannelHandlers out_handlers = { out_data, out_eof, NULL, out_closed };

/* stdin: read the host fd only as far as the channel has room, so no byte is held here. */
static gboolean on_in_readable(int fd, GIOCondition cond, gpointer ud);

static void in_watch(Relay *r)
{
  if (r->fd_watch == NULL && r->fd >= 0)
    r->fd_watch = relay_watch(r, G_IO_IN | G_IO_HUP | G_IO_ERR, on_in_readable);
}

static void in_finish(Relay *r)
{
  relay_unwatch(r);
  ferry_fd_clear(&r->fd);
  if (r->channel != NULL)
    ferry_channel_shutdown_write(r->channel);
  r->done = TRUE;
}

static gboolean on_in_readable(int fd, GIOCondition cond, gpointer ud)
{
  Relay *r = ud;
  gsize room = r->channel != NULL ? ferry_channel_write_room(r->channel) : 0;
  if (room == 0) {
    ferry_source_clear(&r->fd_watch); /* resumed by the channel's writable */
    return G_SOURCE_REMOVE;
  }
  guint8 buf[STDIN_CHUNK];
  ssize_t n = read(fd, buf, MIN(room, sizeof(buf)));
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
    return G_SOURCE_CONTINUE;
  if (n <= 0) {
    if (n < 0) {
      g_autoptr(GError) error = NULL;
      ferry_error_set_errno(&error, errno, "read host stdin");
      relay_fail(r, error);
    }
    in_finish(r); /* clears the watch */
    return G_SOURCE_REMOVE;
  }
  gsize took = ferry_channel_write(r->channel, buf, (gsize)n);
  if (took < (gsize)n) {
    /* Cannot happen: we read no more than the room. Treat as a broken channel. */
    g_autoptr(GError) error =
        g_error_new(FERRY_ERROR, FERRY_ERROR_INTERNAL, "stdin channel took less than its room");
    relay_fail(r, error);
    in_finish(r); /* clears the watch */
    return G_SOURCE_REMOVE;
  }
  return G_SOURCE_CONTINUE;
}

static void in_writable(FerryChannel *ch, gpointer ud)
{
  in_watch(ud);
}

static void in_closed(FerryChannel *ch, const GError *error, gpointer ud)
{
  Relay *r = ud;
  relay_unwatch(r);
  ferry_fd_clear(&r->fd);
  relay_fail(r, error);
  r->done = TRUE;
}

static const FerryChannelHandlers in_handlers = { NULL, NULL, in_writable, in_closed };

static void relay_bind(Relay *r, FerryChannel *channel)
{
  r->channel = ferry_channel_ref(channel);
  if (r->which == STDIN_RELAY) {
    ferry_channel_set_handlers(channel, &in_handlers, r);
    ferry_fd_set_nonblocking(r->fd, TRUE, NULL);
    in_watch(r);
  } else {
    ferry_fd_set_nonblocking(r->fd, TRUE, NULL);
    ferry_channel_set_handlers(channel, &out_handlers, r);
  }
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
  Relay *r = &cmd->relays[stream];
  /* stdin is done when its EOF was passed on and the guest took every byte: until then
   * the channel still carries unacknowledged input that a new host must resend. */
  return r->done && (r->channel == NULL || !ferry_channel_is_open(r->channel) ||
                     ferry_channel_unacked(r->channel) == 0);
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
