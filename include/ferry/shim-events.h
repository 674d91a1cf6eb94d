/*
 * Task events to containerd (docs/shim.md, events): each event is wrapped in a
 * containerd.types.Envelope and handed to containerd's events service
 * (containerd.services.events.ttrpc.v1.Events/Forward) at its ttrpc address, in the
 * order published. While containerd is unreachable (restarting) events wait in a
 * bounded queue and are sent, still in order, once it answers again: none is lost
 * across a containerd restart unless the queue overflows (its oldest are dropped then,
 * and counted).
 *
 * Threading: the thread-default GMainContext at creation.
 */
#pragma once

#include <glib.h>
#include <protobuf-c/protobuf-c.h>

G_BEGIN_DECLS

typedef struct FerryShimEvents FerryShimEvents;

/* At most this many events wait (containerd's own shims keep 2048). */
#define FERRY_SHIM_EVENTS_MAX_QUEUED 2048u

/* `address`: containerd's ttrpc socket (a path or unix://path; copied); NULL: events
 * are counted and dropped (no containerd to tell). `namespace` is copied. */
FerryShimEvents *ferry_shim_events_new(const char *address, const char *namespace);
void ferry_shim_events_free(FerryShimEvents *events);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FerryShimEvents, ferry_shim_events_free)

/* Queue `event` (packed now; borrowed) under `topic` ("/tasks/exit"), its Any type
 * name being the message's full protobuf name ("containerd.events.TaskExit"). */
void ferry_shim_events_publish(FerryShimEvents *events, const char *topic,
                               const ProtobufCMessage *event);

/* From here on events wait (each with the time it was published) until
 * ferry_shim_events_release(), which sends them, in order, or drops them (`send`
 * FALSE). A migration source holds its events: if the sandbox moved, the destination
 * tells containerd what happened (docs/migration.md). The bound above counts them. */
void ferry_shim_events_hold(FerryShimEvents *events);
void ferry_shim_events_release(FerryShimEvents *events, gboolean send);

/* Events not yet accepted by containerd, held ones included. */
guint ferry_shim_events_pending(FerryShimEvents *events);
/* Events dropped because the queue was full. */
guint ferry_shim_events_dropped(FerryShimEvents *events);

G_END_DECLS
