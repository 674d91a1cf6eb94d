/*
 * Stdio relays: a process's pipe or pty master on one side, a transport channel on the
 * other, each a FerryRelay (relay.h), which buffers nothing: output is read only as far
 * as the channel has write room, input is consumed only as far as the fd accepted it. So
 * a host that stops reading stalls that one process (its pipe fills, it blocks), never
 * the agent. A relay frees itself once finished: its last bytes acknowledged by the
 * host, or its channel gone.
 */
#include "ferry/relay.h"
#include "gcs-impl.h"

struct GcsRelay {
  FerryGcs *gcs;
  FerryRelay *relay;
  GcsProcess *record; /* output: until its end is reported */
};

void gcs_relay_free(GcsRelay *relay)
{
  if (relay == NULL)
    return;
  g_hash_table_steal(relay->gcs->relays, relay);
  ferry_relay_free(relay->relay);
  g_free(relay);
}

static void on_finished(FerryRelay *r, gpointer user_data)
{
  gcs_relay_free(user_data);
}

/* The output reached its end (EOF read, or the host closed the channel: the process's
 * further writes then fail with EPIPE, as a closed vsock does in hcsshim). */
static void on_output_done(FerryRelay *r, const GError *error, gpointer user_data)
{
  GcsRelay *relay = user_data;
  GcsProcess *record = g_steal_pointer(&relay->record);
  if (record != NULL)
    gcs_process_output_done(record, relay);
}

static GcsRelay *relay_new(FerryGcs *gcs, FerryChannel *channel, const FerryRelayOptions *options,
                           const FerryRelayHandlers *handlers)
{
  GcsRelay *relay = g_new0(GcsRelay, 1);
  relay->gcs = gcs;
  relay->relay = ferry_relay_new(channel, options, handlers, relay);
  g_hash_table_add(gcs->relays, relay);
  return relay;
}

GcsRelay *gcs_relay_output_new(FerryGcs *gcs, GcsProcess *record, FerryChannel *channel, int fd)
{
  static const FerryRelayHandlers handlers = {
    .read_done = on_output_done,
    .finished = on_finished,
  };
  FerryRelayOptions options = { .read_fd = fd, .write_fd = -1 };
  GcsRelay *relay = relay_new(gcs, channel, &options, &handlers);
  relay->record = record;
  return relay;
}

void gcs_relay_output_process_exited(GcsRelay *relay)
{
  ferry_relay_end_read_when_quiet(relay->relay, relay->gcs->opts.drain_grace_ms);
}

GcsRelay *gcs_relay_input_new(FerryGcs *gcs, FerryChannel *channel, int fd)
{
  /* The channel's end of file closes the fd: the process's end of file. (For a terminal
   * the fd is our copy of the master: the terminal stays, as in hcsshim.) A write that
   * fails (nobody reads the process's input any more) closes the channel, which tells
   * the host. */
  static const FerryRelayHandlers handlers = { .finished = on_finished };
  FerryRelayOptions options = { .read_fd = -1, .write_fd = fd };
  /* We never write to an input channel: say so, so that it can finish cleanly. */
  ferry_channel_shutdown_write(channel);
  return relay_new(gcs, channel, &options, &handlers);
}
