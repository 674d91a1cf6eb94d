/* The host side of a guest agent for tests and benchmarks: a host-role mux attached to
 * the unix socket a VM's virtio-serial port listens on, the stdio ports, and the guest
 * manager built when the agent dials the bridge port. Failures end the program
 * (g_error / g_assert): these are test fixtures. */
#pragma once

#include "ferry/cmd.h"
#include "ferry/guest.h"
#include "ferry/mux.h"

typedef struct {
  FerryMux *mux;
  FerryStdioPorts *ports;
  FerryGuestConnection *gc; /* once the agent dialed */
  gboolean connected;       /* NegotiateProtocol answered */
} TestGuestSession;

/* A connected unix stream socket to `path`. */
int test_connect_unix(const char *path);

/* Listen on the bridge port and attach to `port_socket`; the main loop does the rest
 * (wait for `connected`). */
TestGuestSession *test_guest_session_new(const char *port_socket);
void test_guest_session_free(TestGuestSession *s);
