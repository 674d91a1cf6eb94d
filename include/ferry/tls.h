/*
 * Mutual TLS for migrations between hosts (docs/tls.md): certificates in the directory
 * layout QEMU and libvirt use, and GIO TLS connections that require a peer certificate
 * signed by the same CA.
 *
 * One directory configures a host, both for Ferry's control connection and for QEMU's
 * tls-creds-x509 object on the memory stream:
 *
 *   ca-cert.pem                      the CA every peer must be signed by
 *   server-cert.pem, server-key.pem  this host when it accepts (ferry receive)
 *   client-cert.pem, client-key.pem  this host when it connects (ferry migrate)
 */
#pragma once

#include <gio/gio.h>

G_BEGIN_DECLS

/*
 * Make `dir`/ca-cert.pem and ca-key.pem (a new CA, ECDSA P-256, valid `days`) unless
 * they exist, then for each host name `dir`/<host>/ with the five files above: its
 * server and client certificates name the host (a DNS name, or an IP address) and are
 * signed by the CA. Keys are 0600, directories 0700. An existing host directory is
 * made again. FALSE with an error naming the file or the bad name.
 */
gboolean ferry_tls_make_certs(const char *dir, const char *const *hosts, guint days,
                              GError **error);

typedef enum {
  FERRY_TLS_SERVER,
  FERRY_TLS_CLIENT,
} FerryTlsRole;

/* A host's credentials from its directory: the certificate of `role` with its key,
 * and the CA as the database peers are checked against. */
typedef struct FerryTlsCredentials FerryTlsCredentials;

FerryTlsCredentials *ferry_tls_credentials_load(const char *dir, FerryTlsRole role, GError **error);
void ferry_tls_credentials_free(FerryTlsCredentials *creds);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FerryTlsCredentials, ferry_tls_credentials_free)

/* The directory they came from (for QEMU's tls-creds-x509 `dir`). */
const char *ferry_tls_credentials_dir(const FerryTlsCredentials *creds);

/*
 * Wrap `base` (a connected stream) in TLS with `creds`: a server requires the peer's
 * certificate; a client checks the server's against `server_identity` (the host name or
 * address it dialled; NULL: the CA only). Either way the peer must be signed by the
 * CA. The handshake has not run yet: ferry_tls_handshake().
 */
GIOStream *ferry_tls_wrap(GIOStream *base, const FerryTlsCredentials *creds,
                          const char *server_identity, GError **error);

/* Run the handshake; `done` gets `stream` back with NULL, or the reason it failed (a
 * peer with no certificate, one from another CA, a name that does not match). */
typedef void (*FerryTlsHandshakeFunc)(GIOStream *stream, const GError *error, gpointer user_data);
void ferry_tls_handshake(GIOStream *stream, GCancellable *cancellable, FerryTlsHandshakeFunc done,
                         gpointer user_data);

/*
 * A TLS stream as a plain file descriptor, for code that speaks over fds (ttrpc): what is
 * written to *fd goes out encrypted and what the peer sends comes out of it. One end of a
 * socket pair goes to the caller (who owns it); the other is spliced with `tls` on the
 * thread-default main context until either side closes, and then both are closed (the
 * fd sees EOF when the peer goes, the peer when the fd is closed). Free to stop.
 */
typedef struct FerryTlsPipe FerryTlsPipe;
FerryTlsPipe *ferry_tls_pipe_new(GIOStream *tls, int *fd, GError **error);
void ferry_tls_pipe_free(FerryTlsPipe *pipe);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FerryTlsPipe, ferry_tls_pipe_free)

/* Whether GIO has a TLS backend (glib-networking): without it nothing here works. */
gboolean ferry_tls_available(GError **error);

G_END_DECLS
