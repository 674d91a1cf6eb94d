/*
 * A CA and host certificates for migrations between hosts (include/ferry/tls.h,
 * docs/tls.md), made with GnuTLS: ECDSA P-256 keys, SHA-256 signatures, X.509 v3 with
 * the extensions TLS peers check (basic constraints, key usage, extended key usage,
 * subject alternative names, key identifiers).
 */
#include <errno.h>
#include <fcntl.h>
#include <gio/gio.h>
#include <glib/gstdio.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ferry/error.h"
#include "ferry/tls.h"

G_DEFINE_AUTO_CLEANUP_FREE_FUNC(gnutls_x509_crt_t, gnutls_x509_crt_deinit, NULL)
G_DEFINE_AUTO_CLEANUP_FREE_FUNC(gnutls_x509_privkey_t, gnutls_x509_privkey_deinit, NULL)

static gboolean gnutls_ok(int rc, const char *what, GError **error)
{
  if (rc >= 0)
    return TRUE;
  g_set_error(error, FERRY_ERROR, FERRY_ERROR_INTERNAL, "certs: %s: %s", what, gnutls_strerror(rc));
  return FALSE;
}

/* `data` into `path`, created with `mode` (replacing what was there). */
static gboolean write_file(const char *path, const gnutls_datum_t *data, int mode, GError **error)
{
  g_autofree char *tmp = g_strconcat(path, ".tmp", NULL);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  gboolean ok = fd >= 0;
  for (gsize done = 0; ok && done < data->size;) {
    ssize_t n = write(fd, data->data + done, data->size - done);
    if (n < 0 && errno == EINTR)
      continue;
    ok = n > 0;
    done += n > 0 ? (gsize)n : 0;
  }
  int saved = errno;
  if (fd >= 0 && close(fd) < 0 && ok) {
    ok = FALSE;
    saved = errno;
  }
  if (ok && rename(tmp, path) < 0) {
    ok = FALSE;
    saved = errno;
  }
  if (!ok) {
    unlink(tmp);
    g_set_error(error, FERRY_ERROR, ferry_error_code_from_errno(saved), "certs: write %s: %s", path,
                g_strerror(saved));
  }
  return ok;
}

static gboolean write_crt(gnutls_x509_crt_t crt, const char *path, GError **error)
{
  gnutls_datum_t out = { NULL, 0 };
  if (!gnutls_ok(gnutls_x509_crt_export2(crt, GNUTLS_X509_FMT_PEM, &out), path, error))
    return FALSE;
  gboolean ok = write_file(path, &out, 0644, error);
  gnutls_free(out.data);
  return ok;
}

static gboolean write_key(gnutls_x509_privkey_t key, const char *path, GError **error)
{
  gnutls_datum_t out = { NULL, 0 };
  /* PKCS#8, unencrypted: what GnuTLS (QEMU) and GIO both read. */
  if (!gnutls_ok(gnutls_x509_privkey_export2_pkcs8(key, GNUTLS_X509_FMT_PEM, NULL,
                                                   GNUTLS_PKCS_PLAIN, &out),
                 path, error))
    return FALSE;
  gboolean ok = write_file(path, &out, 0600, error);
  gnutls_free(out.data);
  return ok;
}

static gboolean load_file(const char *path, gnutls_datum_t *out, GError **error)
{
  gchar *data = NULL;
  gsize len = 0;
  if (!g_file_get_contents(path, &data, &len, error))
    return FALSE;
  out->data = (unsigned char *)data;
  out->size = (unsigned int)len;
  return TRUE;
}

static gboolean new_key(gnutls_x509_privkey_t *key, GError **error)
{
  return gnutls_ok(gnutls_x509_privkey_init(key), "a key", error) &&
         gnutls_ok(gnutls_x509_privkey_generate(
                       *key, GNUTLS_PK_ECDSA, GNUTLS_CURVE_TO_BITS(GNUTLS_ECC_CURVE_SECP256R1), 0),
                   "generate a key", error);
}

/* The fields every certificate here has: v3, a random serial, the validity, the
 * subject's common name and key, its key id. */
static gboolean crt_base(gnutls_x509_crt_t crt, gnutls_x509_privkey_t key, const char *cn,
                         guint days, GError **error)
{
  guint8 serial[16];
  if (!gnutls_ok(gnutls_rnd(GNUTLS_RND_NONCE, serial, sizeof(serial)), "a serial", error))
    return FALSE;
  serial[0] &= 0x7f; /* a positive number */
  serial[0] |= 0x01;
  time_t now = time(NULL);
  guint8 id[64];
  size_t id_len = sizeof(id);
  return gnutls_ok(gnutls_x509_crt_set_version(crt, 3), "version", error) &&
         gnutls_ok(gnutls_x509_crt_set_serial(crt, serial, sizeof(serial)), "serial", error) &&
         gnutls_ok(gnutls_x509_crt_set_activation_time(crt, now - 3600), "validity", error) &&
         gnutls_ok(gnutls_x509_crt_set_expiration_time(crt, now + (time_t)days * 86400), "validity",
                   error) &&
         gnutls_ok(gnutls_x509_crt_set_dn_by_oid(crt, GNUTLS_OID_X520_COMMON_NAME, 0, cn,
                                                 (unsigned)strlen(cn)),
                   "common name", error) &&
         gnutls_ok(gnutls_x509_crt_set_key(crt, key), "the key", error) &&
         gnutls_ok(gnutls_x509_crt_get_key_id(crt, GNUTLS_KEYID_USE_SHA1, id, &id_len), "key id",
                   error) &&
         gnutls_ok(gnutls_x509_crt_set_subject_key_id(crt, id, id_len), "key id", error);
}

/* The CA in `dir`: loaded, or made. */
static gboolean ca_get(const char *dir, guint days, gnutls_x509_crt_t *crt,
                       gnutls_x509_privkey_t *key, GError **error)
{
  g_autofree char *crt_path = g_build_filename(dir, "ca-cert.pem", NULL);
  g_autofree char *key_path = g_build_filename(dir, "ca-key.pem", NULL);
  if (!gnutls_ok(gnutls_x509_crt_init(crt), "the CA", error) ||
      !gnutls_ok(gnutls_x509_privkey_init(key), "the CA's key", error))
    return FALSE;
  gboolean have_crt = g_file_test(crt_path, G_FILE_TEST_EXISTS);
  gboolean have_key = g_file_test(key_path, G_FILE_TEST_EXISTS);
  if (have_crt != have_key) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION, "certs: %s has %s but not %s",
                dir, have_crt ? "ca-cert.pem" : "ca-key.pem",
                have_crt ? "ca-key.pem" : "ca-cert.pem");
    return FALSE;
  }
  if (have_crt) {
    gnutls_datum_t c = { NULL, 0 }, k = { NULL, 0 };
    gboolean ok =
        load_file(crt_path, &c, error) && load_file(key_path, &k, error) &&
        gnutls_ok(gnutls_x509_crt_import(*crt, &c, GNUTLS_X509_FMT_PEM), crt_path, error) &&
        gnutls_ok(gnutls_x509_privkey_import(*key, &k, GNUTLS_X509_FMT_PEM), key_path, error);
    g_free(c.data);
    if (k.data != NULL)
      memset(k.data, 0, k.size);
    g_free(k.data);
    return ok;
  }
  gnutls_x509_privkey_deinit(*key);
  *key = NULL;
  return new_key(key, error) && crt_base(*crt, *key, "Ferry CA", days, error) &&
         gnutls_ok(gnutls_x509_crt_set_basic_constraints(*crt, 1, -1), "CA constraints", error) &&
         gnutls_ok(
             gnutls_x509_crt_set_key_usage(*crt, GNUTLS_KEY_KEY_CERT_SIGN | GNUTLS_KEY_CRL_SIGN),
             "CA key usage", error) &&
         gnutls_ok(gnutls_x509_crt_sign2(*crt, *crt, *key, GNUTLS_DIG_SHA256, 0), "sign the CA",
                   error) &&
         write_key(*key, key_path, error) && write_crt(*crt, crt_path, error);
}

/* A host name is a DNS name or an IP address: letters, digits, '-', '.', ':'. */
static gboolean host_name_ok(const char *host)
{
  if (host == NULL || host[0] == '\0' || strlen(host) > 253 || host[0] == '.' || host[0] == '-')
    return FALSE;
  for (const char *c = host; *c != '\0'; c++)
    if (!g_ascii_isalnum(*c) && *c != '-' && *c != '.' && *c != ':')
      return FALSE;
  return TRUE;
}

static gboolean make_leaf(const char *path_crt, const char *path_key, const char *host, guint days,
                          gnutls_x509_crt_t ca, gnutls_x509_privkey_t ca_key, GError **error)
{
  g_auto(gnutls_x509_crt_t) crt = NULL;
  g_auto(gnutls_x509_privkey_t) key = NULL;
  if (!gnutls_ok(gnutls_x509_crt_init(&crt), "a certificate", error) || !new_key(&key, error) ||
      !crt_base(crt, key, host, days, error))
    return FALSE;
  g_autoptr(GInetAddress) ip = g_inet_address_new_from_string(host);
  gboolean ok;
  if (ip != NULL)
    ok = gnutls_ok(gnutls_x509_crt_set_subject_alt_name(
                       crt, GNUTLS_SAN_IPADDRESS, g_inet_address_to_bytes(ip),
                       (unsigned)g_inet_address_get_native_size(ip), GNUTLS_FSAN_APPEND),
                   "subject alternative name", error);
  else
    ok = gnutls_ok(gnutls_x509_crt_set_subject_alt_name(crt, GNUTLS_SAN_DNSNAME, host,
                                                        (unsigned)strlen(host), GNUTLS_FSAN_APPEND),
                   "subject alternative name", error);
  guint8 ca_id[64];
  size_t ca_id_len = sizeof(ca_id);
  return ok && gnutls_ok(gnutls_x509_crt_set_basic_constraints(crt, 0, -1), "constraints", error) &&
         gnutls_ok(gnutls_x509_crt_set_key_usage(crt, GNUTLS_KEY_DIGITAL_SIGNATURE), "key usage",
                   error) &&
         gnutls_ok(gnutls_x509_crt_set_key_purpose_oid(crt, GNUTLS_KP_TLS_WWW_SERVER, 0),
                   "key purpose", error) &&
         gnutls_ok(gnutls_x509_crt_set_key_purpose_oid(crt, GNUTLS_KP_TLS_WWW_CLIENT, 0),
                   "key purpose", error) &&
         gnutls_ok(gnutls_x509_crt_get_subject_key_id(ca, ca_id, &ca_id_len, NULL), "CA key id",
                   error) &&
         gnutls_ok(gnutls_x509_crt_set_authority_key_id(crt, ca_id, ca_id_len), "authority key id",
                   error) &&
         gnutls_ok(gnutls_x509_crt_sign2(crt, ca, ca_key, GNUTLS_DIG_SHA256, 0), "sign", error) &&
         write_key(key, path_key, error) && write_crt(crt, path_crt, error);
}

gboolean ferry_tls_make_certs(const char *dir, const char *const *hosts, guint days, GError **error)
{
  for (const char *const *h = hosts; h != NULL && *h != NULL; h++) {
    if (!host_name_ok(*h)) {
      g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                  "certs: \"%s\" is not a host name or an IP address", *h);
      return FALSE;
    }
  }
  if (days == 0 || days > 36500) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                "certs: a validity of %u days (1 to 36500)", days);
    return FALSE;
  }
  if (g_mkdir_with_parents(dir, 0700) < 0) {
    int e = errno;
    g_set_error(error, FERRY_ERROR, ferry_error_code_from_errno(e), "certs: create %s: %s", dir,
                g_strerror(e));
    return FALSE;
  }
  g_auto(gnutls_x509_crt_t) ca = NULL;
  g_auto(gnutls_x509_privkey_t) ca_key = NULL;
  if (!ca_get(dir, days, &ca, &ca_key, error))
    return FALSE;
  g_autofree char *ca_path = g_build_filename(dir, "ca-cert.pem", NULL);
  for (const char *const *h = hosts; h != NULL && *h != NULL; h++) {
    g_autofree char *host_dir = g_build_filename(dir, *h, NULL);
    if (g_mkdir_with_parents(host_dir, 0700) < 0) {
      int e = errno;
      g_set_error(error, FERRY_ERROR, ferry_error_code_from_errno(e), "certs: create %s: %s",
                  host_dir, g_strerror(e));
      return FALSE;
    }
    g_autofree char *ca_copy = g_build_filename(host_dir, "ca-cert.pem", NULL);
    g_autofree char *server_crt = g_build_filename(host_dir, "server-cert.pem", NULL);
    g_autofree char *server_key = g_build_filename(host_dir, "server-key.pem", NULL);
    g_autofree char *client_crt = g_build_filename(host_dir, "client-cert.pem", NULL);
    g_autofree char *client_key = g_build_filename(host_dir, "client-key.pem", NULL);
    gnutls_datum_t ca_pem = { NULL, 0 };
    gboolean ok = load_file(ca_path, &ca_pem, error) && write_file(ca_copy, &ca_pem, 0644, error);
    g_free(ca_pem.data);
    if (!ok || !make_leaf(server_crt, server_key, *h, days, ca, ca_key, error) ||
        !make_leaf(client_crt, client_key, *h, days, ca, ca_key, error))
      return FALSE;
  }
  return TRUE;
}
