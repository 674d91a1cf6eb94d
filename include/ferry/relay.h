/*
 * A relay between a channel (transport.h) and local fds: what is read from one fd goes
 * into the channel, what the channel brings is written to an fd. It is the one pump
 * behind every stdio relay (the agent's process pipes, the host's command stdio) and
 * behind ferry_channel_to_fd().
 *
 * Nothing is buffered here. The read side reads only as far as the channel has write
 * room (so a peer that stops consuming stalls the fd's writer, never the loop); the
 * write side consumes from the channel only what write(2) accepted (so the channel
 * acknowledges exactly the bytes that reached the fd).
 *
 * Ends: the read fd's EOF (or a read error) becomes the channel's shutdown_write; the
 * channel's EOF closes the write fd (shutdown(SHUT_WR) when one socket carries both
 * directions). The channel closing or being reset ends both directions and closes the
 * fds, so a process writing its output gets EPIPE.
 *
 * The relay keeps its channel reference until every byte it wrote into the channel was
 * acknowledged by the peer's consumer (the channel's acked event), because a channel
 * dropped at its last reference aborts what is still queued. Only then is it finished.
 *
 * Threading and callbacks: the thread-default GMainContext at creation. Every handler
 * runs from the main loop on an idle the relay owns, never inside a call into the relay
 * or inside a channel handler; any handler may free the relay.
 */
#pragma once

#include <glib.h>

#include "ferry/transport.h"

G_BEGIN_DECLS

typedef struct FerryRelay FerryRelay;

typedef struct {
  /* Read here, write into the channel; -1: nothing to send, and the channel's write
   * side is left to the caller. Taken (closed by the relay). */
  int read_fd;
  /* The channel's bytes are written here; -1: the channel's bytes are dropped and the
   * write side counts as done from the start. Taken. May equal read_fd: one socket
   * carrying both directions, closed once both are done. A socket's closed reader is
   * an error (EPIPE); a pipe's raises SIGPIPE, which programs ignore. */
  int write_fd;
  /* After write_fd fails (EPIPE: the reader went away), go on consuming the channel and
   * drop its bytes, so the peer is not blocked; the failure is reported at the end.
   * FALSE: a write failure closes the channel. */
  gboolean drop_after_write_error;
} FerryRelayOptions;

typedef struct {
  /* The read side ended: read_fd reached EOF (error NULL) or failed, or the channel
   * was reset first (error says why; a local close is none); every byte read was
   * handed to the channel and its shutdown_write was sent. Once, never when read_fd was
   * -1. */
  void (*read_done)(FerryRelay *relay, const GError *error, gpointer user_data);
  /* The write side ended: the channel's EOF reached write_fd (error NULL), or the fd or
   * the channel failed (the first failure). Once, never when write_fd was -1. */
  void (*write_done)(FerryRelay *relay, const GError *error, gpointer user_data);
  /* Both sides ended and every byte sent was acknowledged by the peer (or the channel
   * is gone): nothing more will happen. Once, after the two above. */
  void (*finished)(FerryRelay *relay, gpointer user_data);
} FerryRelayHandlers;

/*
 * Start relaying. `channel` (a reference is taken; NULL: what is read is dropped, and
 * there is no write side) gets the relay's handlers, replacing any. The fds are taken
 * and made non-blocking. `handlers` is copied; any member may be NULL. Never fails.
 */
FerryRelay *ferry_relay_new(FerryChannel *channel, const FerryRelayOptions *options,
                            const FerryRelayHandlers *handlers, gpointer user_data);

/*
 * End the read side as at EOF once read_fd has been empty for `ms` milliseconds: for a
 * process that exited while a child it left behind still holds its output open. Data
 * read restarts the count. A relay waiting for channel room is not empty.
 */
void ferry_relay_end_read_when_quiet(FerryRelay *relay, guint ms);

/* Close the channel and the fds now; the handlers not yet run follow from the loop
 * (with the channel's closed error). */
void ferry_relay_abort(FerryRelay *relay);

/* The channel, or NULL once the relay let go of it. Borrowed. */
FerryChannel *ferry_relay_get_channel(FerryRelay *relay);

/* Stop: close the fds, detach from the channel and drop the reference (which aborts a
 * channel nobody else holds). No handler runs afterwards. NULL is a no-op. */
void ferry_relay_free(FerryRelay *relay);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FerryRelay, ferry_relay_free)

G_END_DECLS
