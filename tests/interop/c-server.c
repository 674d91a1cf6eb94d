/*
 * The C side of the interop test as a server: serves ferry.test.v1.Interop
 * (tests/common/interop-service.c) on a unix socket for the Go client battery.
 *
 *   interop-c-server -socket PATH
 *
 * Prints "ready" once listening; on SIGTERM or SIGINT it shuts the server down, which
 * removes the socket file, and exits 0.
 */
#include <stdio.h>

#include "interop-service.h"

int main(int argc, char **argv)
{
  const char *socket_path = ferry_test_socket_arg(argc, argv, 1);
  if (socket_path == NULL) {
    fprintf(stderr, "usage: %s -socket PATH\n", argv[0]);
    return 2;
  }
  return ferry_test_interop_serve(socket_path, "interop-c-server");
}
