/*
 * Host-side stdio for guest processes (hcsshim's internal/cmd): the stdio ports a
 * GuestConnection asks for, bound to a transport, and the relays between a process's
 * channels and host endpoints (fds: pipes, FIFOs, files, terminals).
 *
 * Relays never hold bytes of their own: what a relay takes from a channel is already in
 * the host fd (write(2) accepted it), and what it reads from a host fd is already in the
 * channel. So the channel's state is the whole state, and a relay can be rebuilt on
 * another host object (Attach) without losing or repeating a byte.
 *
 * Threading: one thread; every source an object queues (fd watches, timers, idles) is on
 * the thread-default GMainContext of the object's creation.
 */
#pragma once

#include <glib.h>
#include <jansson.h>

#include "ferry/guest.h"
#include "ferry/transport.h"

G_BEGIN_DECLS

/* ------------------------------------------------------------ stdio ports -- */

/* The stdio ports of one guest connection, on a host transport. */
typedef struct FerryStdioPorts FerryStdioPorts;

FerryStdioPorts *ferry_stdio_ports_new(FerryTransport *transport);
void ferry_stdio_ports_free(FerryStdioPorts *ports);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FerryStdioPorts, ferry_stdio_ports_free)

/* Hooks for ferry_guest_connection_new(), with `ports` as their data: listen accepts
 * one dial per port; release drops the port and its channel; close_write shuts the
 * channel's write side (CloseStdin). */
const FerryGuestPortHooks *ferry_stdio_ports_hooks(void);

/* A channel for `port` that already exists (imported on a migration destination): the
 * next listen on that port uses it instead of waiting for a dial. Takes a reference. */
void ferry_stdio_ports_adopt(FerryStdioPorts *ports, guint32 port, FerryChannel *channel);

/* The channel of `port` when it arrives (at once if it is there). `func` gets a
 * borrowed channel, or NULL with an error if the port is released first. Replaces an
 * earlier callback for the port. */
typedef void (*FerryPortChannelFunc)(guint32 port, FerryChannel *channel, const GError *error,
                                     gpointer user_data);
void ferry_stdio_ports_when_ready(FerryStdioPorts *ports, guint32 port, FerryPortChannelFunc func,
                                  gpointer user_data);

/* Forget the callback for `port` (it will not run). */
void ferry_stdio_ports_cancel(FerryStdioPorts *ports, guint32 port);

/* The channel of `port` if it has arrived (borrowed), else NULL. */
FerryChannel *ferry_stdio_ports_get(FerryStdioPorts *ports, guint32 port);

/* The ports that have a channel (arrived, or adopted and not listened for yet),
 * ascending; a GArray of guint32 (free it). With ferry_stdio_ports_channel() (either
 * kind, borrowed, or NULL), what a migration source exports. */
GArray *ferry_stdio_ports_list(FerryStdioPorts *ports);
FerryChannel *ferry_stdio_ports_channel(FerryStdioPorts *ports, guint32 port);

/* ------------------------------------------------------------------- cmd -- */

typedef struct FerryCmd FerryCmd;

/* Host endpoints for a command's stdio: fds owned by the command once set (-1: none).
 * stdin is read until EOF; stdout and stderr are written. */
typedef struct {
  int stdin_fd;
  int stdout_fd;
  int stderr_fd;
} FerryCmdIo;

#define FERRY_CMD_IO_NONE ((FerryCmdIo){ -1, -1, -1 })

/* hcsshim's default for Attach; Command uses the same unless set. */
#define FERRY_CMD_DEFAULT_COPY_AFTER_EXIT_MS 1000u

/*
 * A command to run (hcsshim cmd.Command): in a container (`container` not NULL) or in
 * the UVM, with ProcessParameters `params` (borrowed; CreateStd*Pipe are set from which
 * fds `io` has). The fds in `io` are owned by the command from now on.
 */
FerryCmd *ferry_cmd_new(FerryGuestConnection *gc, FerryGuestContainer *container,
                        FerryStdioPorts *ports, json_t *params, FerryCmdIo io);

/* Bind relays to a process that already runs (hcsshim cmd.Attach, the migration
 * destination): its ports must be the process's migration-state ports. */
FerryCmd *ferry_cmd_attach(FerryGuestProcess *process, FerryStdioPorts *ports, FerryCmdIo io);

/* Stop relaying (as ferry_cmd_detach()) and cancel what is in flight: no callback of the
 * command (its start's, its waits') runs after this. A start still in flight completes
 * without it: the process is left running in the guest and its ports are released. */
void ferry_cmd_free(FerryCmd *cmd);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FerryCmd, ferry_cmd_free)

/* How long after the exit to wait for stdout/stderr to drain before giving up (they are
 * then closed and the wait fails with DEADLINE_EXCEEDED "i/o timed out"). */
void ferry_cmd_set_copy_after_exit(FerryCmd *cmd, guint ms);

/* Start the process and its relays. `done` runs once. */
void ferry_cmd_start(FerryCmd *cmd, FerryGuestDoneFunc done, gpointer user_data);

/* The process (borrowed) once started or attached, else NULL. */
FerryGuestProcess *ferry_cmd_get_process(FerryCmd *cmd);

/* Completes when the process exited and stdout/stderr drained (or the copy timeout
 * passed). `exit_code` is valid when error is NULL. */
typedef void (*FerryCmdWaitFunc)(int exit_code, const GError *error, gpointer user_data);
void ferry_cmd_wait(FerryCmd *cmd, FerryCmdWaitFunc done, gpointer user_data);

/* The standard streams, as `ferry_cmd_stream_done()` names them. */
typedef enum { FERRY_CMD_STDIN, FERRY_CMD_STDOUT, FERRY_CMD_STDERR } FerryCmdStream;

/* Whether the relay of `stream` has finished: it had no fd, or its direction ended (all
 * of stdout/stderr written to the host fd, or stdin's EOF passed on and every byte of
 * it acknowledged by the guest), or it failed. A host object that hands a process over (a
 * migration, a host rebuilt) records this: the channel of a finished stream is gone, so the next
 * `ferry_cmd_attach()` must get -1 for that fd instead of waiting for a channel that never comes.
 */
gboolean ferry_cmd_stream_done(FerryCmd *cmd, FerryCmdStream stream);

/* Stop relaying without touching the process or its channels (a host object being
 * replaced): the fds are closed, the channels are left as they are. */
void ferry_cmd_detach(FerryCmd *cmd);

G_END_DECLS
