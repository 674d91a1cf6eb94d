/*
 * The C implementation of ferry.test.v1.Interop (proto/test/interop.proto), served by
 * the unit tests, the interop server against containerd's Go ttrpc, and the
 * benchmark server. Semantics are the proto's comments; the Go peer implements the
 * same service with the same answers.
 */
#pragma once

#include <ferry/ttrpc.h>

#include "test/interop.pb-c.h"

#define FERRY_TEST_INTEROP_SERVICE "ferry.test.v1.Interop"

/* Register the service on `server` under its proto name. */
gboolean ferry_test_interop_register(FerryTtrpcServer *server, GError **error);

/* Serve the service on a unix socket until SIGTERM or SIGINT: prints "ready" once
 * listening, shuts down (removing the socket file) on the signal. Returns the exit
 * status; `who` prefixes error messages. */
int ferry_test_interop_serve(const char *socket_path, const char *who);

/* The PATH of a "-socket PATH" (or "--socket PATH") command line of exactly that,
 * after `skip` leading arguments; NULL otherwise. */
const char *ferry_test_socket_arg(int argc, char **argv, int skip);
