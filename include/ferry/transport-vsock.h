/*
 * FerryTransport over AF_VSOCK (vsock(7)): a "vsock port" is a real vsock port. The host
 * reaches a guest by its CID (where the host has vhost-vsock); a guest reaches the host
 * at VMADDR_CID_HOST (2).
 */
#pragma once

#include <glib.h>
#include <sys/socket.h>

#include <linux/vm_sockets.h>

#include "ferry/transport.h"

G_BEGIN_DECLS

/*
 * A transport that dials `peer_cid` (host side: the guest's CID; guest side:
 * VMADDR_CID_HOST) and listens on VMADDR_CID_ANY. Fails (UNAVAILABLE, with the reason)
 * when this machine cannot create AF_VSOCK sockets. Listening binds a non-blocking socket
 * and accepts from the main loop; a listen on a port that another socket holds fails
 * with ALREADY_EXISTS. Dialing connects without blocking and reports from the main loop;
 * a refused or unreachable peer is UNAVAILABLE, a connect timeout DEADLINE_EXCEEDED.
 */
FerryTransport *ferry_vsock_transport_new(guint32 peer_cid, GError **error);

/*
 * Take ownership of a connected stream socket and make it a channel named `port`:
 * what the vsock transport does with each accepted or dialed socket. Any connected
 * SOCK_STREAM socket works (the tests use a socketpair). Output beyond
 * FERRY_VSOCK_SEND_BUFFER bytes not yet taken by the kernel is refused (write returns
 * short); unacked counts those bytes. NULL with error if the fd cannot be set up (it is
 * closed).
 */
FerryChannel *ferry_vsock_channel_new(int fd, guint32 port, GError **error);

#define FERRY_VSOCK_SEND_BUFFER (256u * 1024)

/*
 * Parse "vsock://CID:PORT" or "vsock:PORT" (the host, CID 2) into *cid and *port,
 * decimal numbers without sign or spaces. VMADDR_CID_ANY and VMADDR_PORT_ANY (-1) name no
 * peer and are refused. INVALID_ARGUMENT naming the address on error; the outputs are
 * set only on success. Pure.
 */
gboolean ferry_vsock_parse_address(const char *address, guint32 *cid, guint32 *port,
                                   GError **error);

/* The socket address of (cid, port), everything else zero. Pure. */
struct sockaddr_vm ferry_vsock_sockaddr(guint32 cid, guint32 port);

G_END_DECLS
