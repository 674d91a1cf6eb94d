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
