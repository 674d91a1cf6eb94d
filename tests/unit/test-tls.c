/*
 * lib/tls: the certificates ferry_tls_make_certs() makes, and mutual TLS handshakes over
 * a socket pair with them: same CA both ways works; a peer from another CA, a client
 * with no certificate and a server whose name does not match are refused.
 */
#include <gio/gio.h>
#include <gio/gunixsocketaddress.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include "ferry/error.h"
#include "ferry/tls.h"
#include "ferry/ttrpc.h"
#include "google/protobuf/wrappers.pb-c.h"
#include "interop-service.h"
#include "test-util.h"
#include "test/interop.pb-c.h"

static char *dir;

static GIOStream *stream_of(int fd)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(GSocket) socket = g_socket_new_from_fd(fd, &error);
  g_assert_no_error(error);
  return G_IO_STREAM(g_socket_connection_factory_create_connection(socket));
}

typedef struct {
  gboolean done;
  GError *error;
} Side;

static void on_done(GIOStream *stream, const GError *error, gpointer ud)
{
  Side *s = ud;
  s->done = TRUE;
  if (error != NULL)
    s->error = g_error_copy(error);
}

typedef struct {
  GIOStream *server, *client;
} Pair;

/* A handshake between a server from `server_dir` and a client from `client_dir` (NULL:
 * a client with no certificate) that dials `identity`. Both sides' results; with
 * `keep`, the two TLS streams too (else they go). */
static void handshake_keep(const char *server_dir, const char *client_dir, const char *identity,
                           Side *server, Side *client, Pair *keep)
{
  int sv[2];
  g_assert_cmpint(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), ==, 0);
  g_autoptr(GIOStream) a = stream_of(sv[0]);
  g_autoptr(GIOStream) b = stream_of(sv[1]);
  g_autoptr(GError) error = NULL;
  g_autoptr(FerryTlsCredentials) sc =
      ferry_tls_credentials_load(server_dir, FERRY_TLS_SERVER, &error);
  g_assert_no_error(error);
  GIOStream *ts = ferry_tls_wrap(a, sc, NULL, &error);
  g_assert_no_error(error);
  GIOStream *tc = NULL;
  if (client_dir != NULL) {
    g_autoptr(FerryTlsCredentials) cc =
        ferry_tls_credentials_load(client_dir, FERRY_TLS_CLIENT, &error);
    g_assert_no_error(error);
    tc = ferry_tls_wrap(b, cc, identity, &error);
    g_assert_no_error(error);
  } else {
    /* A client with the CA but no certificate of its own. */
    g_autofree char *ca = g_build_filename(server_dir, "ca-cert.pem", NULL);
    g_autoptr(GTlsDatabase) db = g_tls_file_database_new(ca, &error);
    g_assert_no_error(error);
    g_autoptr(GSocketConnectable) id = g_network_address_new(identity, 0);
    tc = g_tls_client_connection_new(b, id, &error);
    g_assert_no_error(error);
    g_tls_connection_set_database(G_TLS_CONNECTION(tc), db);
  }
  *server = (Side){ 0 };
  *client = (Side){ 0 };
  ferry_tls_handshake(ts, NULL, on_done, server);
  ferry_tls_handshake(tc, NULL, on_done, client);
  g_assert_false(server->done || client->done); /* never inside the call */
  gint64 until = g_get_monotonic_time() + 20 * G_USEC_PER_SEC;
  while (!(server->done && client->done) && g_get_monotonic_time() < until) {
    g_main_context_iteration(NULL, TRUE);
    /* A side that failed closes: the other one learns it from the socket. */
    if (server->done && server->error != NULL)
      g_io_stream_close(ts, NULL, NULL);
    if (client->done && client->error != NULL)
      g_io_stream_close(tc, NULL, NULL);
  }
  g_assert_true(server->done && client->done);
  if (server->error == NULL && client->error == NULL) {
    /* Bytes go through both ways. */
    gsize n = 0;
    g_assert_true(
        g_output_stream_write_all(g_io_stream_get_output_stream(tc), "ping", 4, &n, NULL, &error));
    char buf[4];
    g_assert_true(
        g_input_stream_read_all(g_io_stream_get_input_stream(ts), buf, 4, &n, NULL, &error));
    g_assert_cmpmem(buf, n, "ping", 4);
  }
  if (keep != NULL) {
    keep->server = ts;
    keep->client = tc;
    return;
  }
  g_object_unref(ts);
  g_object_unref(tc);
}

static void handshake(const char *server_dir, const char *client_dir, const char *identity,
                      Side *server, Side *client)
{
  handshake_keep(server_dir, client_dir, identity, server, client, NULL);
}

static void side_clear(Side *s)
{
  g_clear_error(&s->error);
}

static gboolean skip_without_tls(void)
{
  g_autoptr(GError) error = NULL;
  if (!ferry_tls_available(&error)) {
    g_test_skip(error->message);
    return TRUE;
  }
  return FALSE;
}

static char *host_dir(const char *ca_dir, const char *host)
{
  return g_build_filename(ca_dir, host, NULL);
}

static void test_certs_layout(void)
{
  g_autofree char *d = g_build_filename(dir, "layout", NULL);
  const char *hosts[] = { "hosta", "10.199.0.2", NULL };
  g_autoptr(GError) error = NULL;
  g_assert_true(ferry_tls_make_certs(d, hosts, 30, &error));
  g_assert_no_error(error);
  static const char *const files[] = { "ca-cert.pem", "server-cert.pem", "server-key.pem",
                                       "client-cert.pem", "client-key.pem" };
  for (guint h = 0; h < 2; h++) {
    g_autofree char *hd = host_dir(d, hosts[h]);
    struct stat st;
    g_assert_cmpint(stat(hd, &st), ==, 0);
    g_assert_cmpint(st.st_mode & 0777, ==, 0700);
    for (guint i = 0; i < G_N_ELEMENTS(files); i++) {
      g_autofree char *f = g_build_filename(hd, files[i], NULL);
      g_assert_cmpint(stat(f, &st), ==, 0);
      if (strstr(files[i], "key") != NULL)
        g_assert_cmpint(st.st_mode & 0777, ==, 0600);
    }
  }
  /* The CA is kept: a host added later is signed by the same one. */
  g_autofree char *ca_path = g_build_filename(d, "ca-cert.pem", NULL);
  g_autofree char *before = NULL, *after = NULL;
  g_assert_true(g_file_get_contents(ca_path, &before, NULL, NULL));
  const char *more[] = { "hostc", NULL };
  g_assert_true(ferry_tls_make_certs(d, more, 30, &error));
  g_assert_true(g_file_get_contents(ca_path, &after, NULL, NULL));
  g_assert_cmpstr(before, ==, after);
  /* The certificates GIO loads are the CA's: a host's chain verifies. */
  g_autofree char *hc = host_dir(d, "hostc");
  g_autoptr(FerryTlsCredentials) creds = ferry_tls_credentials_load(hc, FERRY_TLS_SERVER, &error);
  g_assert_no_error(error);
  g_assert_cmpstr(ferry_tls_credentials_dir(creds), ==, hc);
}

static void test_certs_refuse(void)
{
  g_autofree char *d = g_build_filename(dir, "refuse", NULL);
  g_autoptr(GError) error = NULL;
  const char *const bad[][2] = {
    { "", NULL }, { "a/b", NULL }, { "..", NULL }, { "-x", NULL }, { "a b", NULL }
  };
  for (guint i = 0; i < G_N_ELEMENTS(bad); i++) {
    g_assert_false(ferry_tls_make_certs(d, bad[i], 30, &error));
    g_assert_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
    g_clear_error(&error);
  }
  const char *ok[] = { "hosta", NULL };
  g_assert_false(ferry_tls_make_certs(d, ok, 0, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
  g_clear_error(&error);
  /* A directory with the CA's certificate but not its key. */
  g_assert_cmpint(g_mkdir_with_parents(d, 0700), ==, 0);
  g_autofree char *half = g_build_filename(d, "ca-cert.pem", NULL);
  g_assert_true(g_file_set_contents(half, "x", 1, NULL));
  g_assert_false(ferry_tls_make_certs(d, ok, 30, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION);
  g_clear_error(&error);
  /* Credentials from a directory without them say what to run. */
  g_autofree char *empty = g_build_filename(dir, "empty", NULL);
  g_assert_cmpint(g_mkdir_with_parents(empty, 0700), ==, 0);
  if (ferry_tls_available(NULL)) {
    g_assert_null(ferry_tls_credentials_load(empty, FERRY_TLS_CLIENT, &error));
    g_assert_error(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION);
    g_assert_nonnull(strstr(error->message, "ferry certs"));
  }
}

static void test_handshakes(void)
{
  if (skip_without_tls())
    return;
  g_autofree char *d = g_build_filename(dir, "ca1", NULL);
  g_autofree char *other = g_build_filename(dir, "ca2", NULL);
  const char *hosts[] = { "hosta", "hostb", "127.0.0.1", NULL };
  const char *stranger[] = { "hosta", NULL };
  g_autoptr(GError) error = NULL;
  g_assert_true(ferry_tls_make_certs(d, hosts, 30, &error));
  g_assert_true(ferry_tls_make_certs(other, stranger, 30, &error));
  g_autofree char *a = host_dir(d, "hosta");
  g_autofree char *b = host_dir(d, "hostb");
  g_autofree char *ip = host_dir(d, "127.0.0.1");
  g_autofree char *x = host_dir(other, "hosta");
  Side s, c;

  /* Same CA: B serves, A dials B by name; and by address. */
  handshake(b, a, "hostb", &s, &c);
  g_assert_no_error(s.error);
  g_assert_no_error(c.error);
  handshake(ip, a, "127.0.0.1", &s, &c);
  g_assert_no_error(s.error);
  g_assert_no_error(c.error);
  /* No identity: the CA alone. */
  handshake(b, a, NULL, &s, &c);
  g_assert_no_error(s.error);
  g_assert_no_error(c.error);

  /* A client from another CA: the server refuses it. */
  handshake(b, x, "hostb", &s, &c);
  g_assert_error(s.error, FERRY_ERROR, FERRY_ERROR_UNAUTHENTICATED);
  g_assert_nonnull(c.error);
  side_clear(&s);
  side_clear(&c);
  /* A server from another CA: the client refuses it. */
  handshake(x, a, "hosta", &s, &c);
  g_assert_error(c.error, FERRY_ERROR, FERRY_ERROR_UNAUTHENTICATED);
  side_clear(&s);
  side_clear(&c);
  /* A client without a certificate. */
  handshake(b, NULL, "hostb", &s, &c);
  g_assert_error(s.error, FERRY_ERROR, FERRY_ERROR_UNAUTHENTICATED);
  side_clear(&s);
  side_clear(&c);
  /* The server is not the host dialled. */
  handshake(b, a, "hosta", &s, &c);
  g_assert_error(c.error, FERRY_ERROR, FERRY_ERROR_UNAUTHENTICATED);
  side_clear(&s);
  side_clear(&c);
}

/* A handshaken TLS pair over a socket pair, B serving, A dialling B. */
static void tls_pair(const char *server_dir, const char *client_dir, Pair *p)
{
  Side s, c;
  handshake_keep(server_dir, client_dir, "hostb", &s, &c, p);
  g_assert_no_error(s.error);
  g_assert_no_error(c.error);
}

/* ttrpc over the TLS pipes: calls go through, big ones too, and the client closing its
 * fd ends the server's connection through TLS. */
static void test_ttrpc_over_tls(void)
{
  if (skip_without_tls())
    return;
  g_autofree char *d = g_build_filename(dir, "pipe", NULL);
  const char *hosts[] = { "hosta", "hostb", NULL };
  g_autoptr(GError) error = NULL;
  g_assert_true(ferry_tls_make_certs(d, hosts, 30, &error));
  g_autofree char *a = host_dir(d, "hosta");
  g_autofree char *b = host_dir(d, "hostb");
  Pair p;
  tls_pair(b, a, &p);
  int server_fd = -1, client_fd = -1;
  g_autoptr(FerryTlsPipe) sp = ferry_tls_pipe_new(p.server, &server_fd, &error);
  g_autoptr(FerryTlsPipe) cp = ferry_tls_pipe_new(p.client, &client_fd, &error);
  g_assert_no_error(error);
  g_assert_nonnull(sp);
  g_assert_nonnull(cp);
  g_autoptr(FerryTtrpcServer) server = ferry_ttrpc_server_new();
  g_assert_true(ferry_test_interop_register(server, &error));
  g_assert_true(ferry_ttrpc_server_add_connection(server, server_fd, &error));
  FerryTtrpcClient *client = ferry_ttrpc_client_new(client_fd, &error);
  g_assert_no_error(error);
  Google__Protobuf__StringValue v = GOOGLE__PROTOBUF__STRING_VALUE__INIT;
  v.value = "over tls";
  FerryTtrpcCallOptions o = { .timeout_ns = 20 * G_TIME_SPAN_SECOND * 1000 };
  Google__Protobuf__StringValue *r = (Google__Protobuf__StringValue *)ferry_ttrpc_client_call_sync(
      client, "ferry.test.v1.Interop", "Echo", &v.base, &google__protobuf__string_value__descriptor,
      &o, &error);
  g_assert_no_error(error);
  g_assert_true(g_str_has_prefix(r->value, "over tls"));
  protobuf_c_message_free_unpacked(&r->base, NULL);
  v.value = "1000000"; /* a megabyte back */
  r = (Google__Protobuf__StringValue *)ferry_ttrpc_client_call_sync(
      client, "ferry.test.v1.Interop", "Big", &v.base, &google__protobuf__string_value__descriptor,
      &o, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(strlen(r->value), ==, 1000000);
  protobuf_c_message_free_unpacked(&r->base, NULL);
  g_assert_cmpuint(ferry_ttrpc_server_connection_count(server), ==, 1);
  ferry_ttrpc_client_free(client);
  gint64 until = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;
  while (ferry_ttrpc_server_connection_count(server) > 0 && g_get_monotonic_time() < until)
    g_main_context_iteration(NULL, TRUE);
  g_assert_cmpuint(ferry_ttrpc_server_connection_count(server), ==, 0);
  g_object_unref(p.server);
  g_object_unref(p.client);
}

int main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  dir = test_make_tmpdir();
  g_test_add_func("/tls/certs/layout", test_certs_layout);
  g_test_add_func("/tls/certs/refuse", test_certs_refuse);
  g_test_add_func("/tls/handshakes", test_handshakes);
  g_test_add_func("/tls/ttrpc-over-tls", test_ttrpc_over_tls);
  int rc = g_test_run();
  test_rm_rf(dir);
  g_free(dir);
  return rc;
}
