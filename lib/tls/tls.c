/*
 * GIO TLS with mutual authentication against one CA (include/ferry/tls.h, docs/tls.md).
 * GIO's TLS comes from its backend, glib-networking (GnuTLS).
 */
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ferry/error.h"
#include "ferry/tls.h"

struct FerryTlsCredentials {
  char *dir;
  FerryTlsRole role;
  GTlsCertificate *certificate;
  GTlsDatabase *database;
};

gboolean ferry_tls_available(GError **error)
{
  if (g_tls_backend_supports_tls(g_tls_backend_get_default()))
    return TRUE;
  g_set_error(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION,
              "GIO has no TLS backend (install glib-networking)");
  return FALSE;
}

FerryTlsCredentials *ferry_tls_credentials_load(const char *dir, FerryTlsRole role, GError **error)
{
  if (!ferry_tls_available(error))
    return NULL;
  const char *name = role == FERRY_TLS_SERVER ? "server" : "client";
  g_autofree char *ca = g_build_filename(dir, "ca-cert.pem", NULL);
  g_autofree char *cert_name = g_strdup_printf("%s-cert.pem", name);
  g_autofree char *key_name = g_strdup_printf("%s-key.pem", name);
  g_autofree char *cert = g_build_filename(dir, cert_name, NULL);
  g_autofree char *key = g_build_filename(dir, key_name, NULL);
  GError *local = NULL;
  g_autoptr(GTlsCertificate) certificate = g_tls_certificate_new_from_files(cert, key, &local);
  if (certificate == NULL) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION,
                "TLS: %s and %s in %s: %s (ferry certs makes them)", cert_name, key_name, dir,
                local->message);
    g_error_free(local);
    return NULL;
  }
  g_autoptr(GTlsDatabase) database = g_tls_file_database_new(ca, &local);
  if (database == NULL) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION,
                "TLS: ca-cert.pem in %s: %s (ferry certs makes it)", dir, local->message);
    g_error_free(local);
    return NULL;
  }
  FerryTlsCredentials *creds = g_new0(FerryTlsCredentials, 1);
  creds->dir = g_strdup(dir);
  creds->role = role;
  creds->certificate = g_steal_pointer(&certificate);
  creds->database = g_steal_pointer(&database);
  return creds;
}

void ferry_tls_credentials_free(FerryTlsCredentials *creds)
{
  if (creds == NULL)
    return;
  g_clear_object(&creds->certificate);
  g_clear_object(&creds->database);
  g_free(creds->dir);
  g_free(creds);
}

const char *ferry_tls_credentials_dir(const FerryTlsCredentials *creds)
{
  return creds->dir;
}

/*
 * A peer's certificate that GIO asks about: glib-networking asks a server about every
 * client certificate, with the errors its own check found (none when the database
 * vouched for it). Accepted only with no errors, and a client's only if the CA's
 * database verifies its chain for client authentication here too.
 */
static gboolean on_accept_certificate(GTlsConnection *conn, GTlsCertificate *peer,
                                      GTlsCertificateFlags errors, gpointer ud)
{
  GTlsDatabase *database = ud;
  if (errors != 0)
    return FALSE;
  if (!G_IS_TLS_SERVER_CONNECTION(conn))
    return TRUE;
  GTlsCertificateFlags flags =
      g_tls_database_verify_chain(database, peer, G_TLS_DATABASE_PURPOSE_AUTHENTICATE_CLIENT, NULL,
                                  NULL, G_TLS_DATABASE_VERIFY_NONE, NULL, NULL);
  return flags == 0;
}

GIOStream *ferry_tls_wrap(GIOStream *base, const FerryTlsCredentials *creds,
                          const char *server_identity, GError **error)
{
  GIOStream *tls;
  GError *local = NULL;
  if (creds->role == FERRY_TLS_SERVER) {
    tls = g_tls_server_connection_new(base, creds->certificate, &local);
    if (tls != NULL)
      g_object_set(tls, "authentication-mode", G_TLS_AUTHENTICATION_REQUIRED, NULL);
  } else {
    g_autoptr(GSocketConnectable) identity =
        server_identity != NULL ? g_network_address_new(server_identity, 0) : NULL;
    tls = g_tls_client_connection_new(base, identity, &local);
    if (tls != NULL) {
      g_tls_connection_set_certificate(G_TLS_CONNECTION(tls), creds->certificate);
      G_GNUC_BEGIN_IGNORE_DEPRECATIONS
      /* Without an identity the CA alone decides (deprecated in 2.72, still honoured). */
      if (identity == NULL)
        g_tls_client_connection_set_validation_flags(G_TLS_CLIENT_CONNECTION(tls),
                                                     G_TLS_CERTIFICATE_VALIDATE_ALL &
                                                         ~G_TLS_CERTIFICATE_BAD_IDENTITY);
      G_GNUC_END_IGNORE_DEPRECATIONS
    }
  }
  if (tls == NULL) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INTERNAL, "TLS: %s", local->message);
    g_error_free(local);
    return NULL;
  }
  g_tls_connection_set_database(G_TLS_CONNECTION(tls), creds->database);
  g_signal_connect_data(tls, "accept-certificate", G_CALLBACK(on_accept_certificate),
                        g_object_ref(creds->database),
                        (GClosureNotify)(void (*)(void))g_object_unref, 0);
  return tls;
}

typedef struct {
  FerryTlsHandshakeFunc done;
  gpointer user_data;
} Handshake;

static void on_handshake(GObject *object, GAsyncResult *result, gpointer ud)
{
  Handshake *h = ud;
  GError *local = NULL;
  g_autoptr(GError) error = NULL;
  if (!g_tls_connection_handshake_finish(G_TLS_CONNECTION(object), result, &local)) {
    int code = g_error_matches(local, G_IO_ERROR, G_IO_ERROR_CANCELLED)
                   ? FERRY_ERROR_CANCELLED
                   : FERRY_ERROR_UNAUTHENTICATED;
    error = g_error_new(FERRY_ERROR, code, "TLS handshake: %s", local->message);
    g_error_free(local);
  }
  h->done(G_IO_STREAM(object), error, h->user_data);
  g_free(h);
}

void ferry_tls_handshake(GIOStream *stream, GCancellable *cancellable, FerryTlsHandshakeFunc done,
                         gpointer user_data)
{
  Handshake *h = g_new0(Handshake, 1);
  h->done = done;
  h->user_data = user_data;
  g_tls_connection_handshake_async(G_TLS_CONNECTION(stream), G_PRIORITY_DEFAULT, cancellable,
                                   on_handshake, h);
}

/* ------------------------------------------------------------------ the pipe -- */

struct FerryTlsPipe {
  GCancellable *cancellable;
};

static void on_spliced(GObject *object, GAsyncResult *result, gpointer ud)
{
  GCancellable *cancellable = ud;          /* the splice's own reference */
  g_io_stream_splice_finish(result, NULL); /* an end either way: both streams are closed */
  g_object_unref(cancellable);
}

FerryTlsPipe *ferry_tls_pipe_new(GIOStream *tls, int *fd, GError **error)
{
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
    int e = errno;
    g_set_error(error, FERRY_ERROR, ferry_error_code_from_errno(e), "TLS pipe: socketpair: %s",
                g_strerror(e));
    return NULL;
  }
  GError *local = NULL;
  g_autoptr(GSocket) socket = g_socket_new_from_fd(sv[1], &local);
  if (socket == NULL) {
    close(sv[0]);
    close(sv[1]);
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INTERNAL, "TLS pipe: %s", local->message);
    g_error_free(local);
    return NULL;
  }
  g_autoptr(GSocketConnection) inner = g_socket_connection_factory_create_connection(socket);
  FerryTlsPipe *pipe = g_new0(FerryTlsPipe, 1);
  pipe->cancellable = g_cancellable_new();
  g_io_stream_splice_async(
      tls, G_IO_STREAM(inner), G_IO_STREAM_SPLICE_CLOSE_STREAM1 | G_IO_STREAM_SPLICE_CLOSE_STREAM2,
      G_PRIORITY_DEFAULT, pipe->cancellable, on_spliced, g_object_ref(pipe->cancellable));
  *fd = sv[0];
  return pipe;
}

void ferry_tls_pipe_free(FerryTlsPipe *pipe)
{
  if (pipe == NULL)
    return;
  g_cancellable_cancel(pipe->cancellable);
  g_object_unref(pipe->cancellable);
  g_free(pipe);
}
