/* The error domain and the one table from errors to google.rpc codes. */
#include <errno.h>
#include <gio/gio.h>

#include "ferry/error.h"

static void test_ferry_codes_are_status_codes(void)
{
  for (int code = 1; code <= 16; code++) {
    g_autoptr(GError) e = g_error_new(FERRY_ERROR, code, "x");
    g_assert_cmpint(ferry_error_to_status_code(e), ==, code);
  }
  g_assert_cmpint(ferry_error_to_status_code(NULL), ==, 0);
}

static void test_out_of_range_codes_are_unknown(void)
{
  g_autoptr(GError) zero = g_error_new(FERRY_ERROR, 0, "set with OK by mistake");
  g_assert_cmpint(ferry_error_to_status_code(zero), ==, FERRY_ERROR_UNKNOWN);
  g_autoptr(GError) big = g_error_new(FERRY_ERROR, 99, "x");
  g_assert_cmpint(ferry_error_to_status_code(big), ==, FERRY_ERROR_UNKNOWN);
  g_autoptr(GError) neg = g_error_new(FERRY_ERROR, -3, "x");
  g_assert_cmpint(ferry_error_to_status_code(neg), ==, FERRY_ERROR_UNKNOWN);
}

static void test_glib_domains_map(void)
{
  struct {
    GQuark domain;
    int code;
    int want;
  } rows[] = {
    { G_IO_ERROR, G_IO_ERROR_NOT_FOUND, FERRY_ERROR_NOT_FOUND },
    { G_IO_ERROR, G_IO_ERROR_EXISTS, FERRY_ERROR_ALREADY_EXISTS },
    { G_IO_ERROR, G_IO_ERROR_PERMISSION_DENIED, FERRY_ERROR_PERMISSION_DENIED },
    { G_IO_ERROR, G_IO_ERROR_TIMED_OUT, FERRY_ERROR_DEADLINE_EXCEEDED },
    { G_IO_ERROR, G_IO_ERROR_CANCELLED, FERRY_ERROR_CANCELLED },
    { G_IO_ERROR, G_IO_ERROR_NOT_SUPPORTED, FERRY_ERROR_UNIMPLEMENTED },
    { G_IO_ERROR, G_IO_ERROR_CONNECTION_CLOSED, FERRY_ERROR_UNAVAILABLE },
    { G_IO_ERROR, G_IO_ERROR_FAILED, FERRY_ERROR_UNKNOWN },
    { G_FILE_ERROR, G_FILE_ERROR_NOENT, FERRY_ERROR_NOT_FOUND },
    { G_FILE_ERROR, G_FILE_ERROR_EXIST, FERRY_ERROR_ALREADY_EXISTS },
    { G_FILE_ERROR, G_FILE_ERROR_ACCES, FERRY_ERROR_PERMISSION_DENIED },
    { G_FILE_ERROR, G_FILE_ERROR_INVAL, FERRY_ERROR_INVALID_ARGUMENT },
    { G_FILE_ERROR, G_FILE_ERROR_FAILED, FERRY_ERROR_UNKNOWN },
    { G_KEY_FILE_ERROR, G_KEY_FILE_ERROR_NOT_FOUND, FERRY_ERROR_UNKNOWN },
  };
  for (gsize i = 0; i < G_N_ELEMENTS(rows); i++) {
    g_autoptr(GError) e = g_error_new(rows[i].domain, rows[i].code, "x");
    g_assert_cmpint(ferry_error_to_status_code(e), ==, rows[i].want);
  }
}

static void test_errno_maps(void)
{
  g_assert_cmpint(ferry_error_code_from_errno(ENOENT), ==, FERRY_ERROR_NOT_FOUND);
  g_assert_cmpint(ferry_error_code_from_errno(EEXIST), ==, FERRY_ERROR_ALREADY_EXISTS);
  g_assert_cmpint(ferry_error_code_from_errno(EADDRINUSE), ==, FERRY_ERROR_ALREADY_EXISTS);
  g_assert_cmpint(ferry_error_code_from_errno(EACCES), ==, FERRY_ERROR_PERMISSION_DENIED);
  g_assert_cmpint(ferry_error_code_from_errno(EPERM), ==, FERRY_ERROR_PERMISSION_DENIED);
  g_assert_cmpint(ferry_error_code_from_errno(EINVAL), ==, FERRY_ERROR_INVALID_ARGUMENT);
  g_assert_cmpint(ferry_error_code_from_errno(ETIMEDOUT), ==, FERRY_ERROR_DEADLINE_EXCEEDED);
  g_assert_cmpint(ferry_error_code_from_errno(ECONNREFUSED), ==, FERRY_ERROR_UNAVAILABLE);
  g_assert_cmpint(ferry_error_code_from_errno(ENOSYS), ==, FERRY_ERROR_UNIMPLEMENTED);
  g_assert_cmpint(ferry_error_code_from_errno(EIO), ==, FERRY_ERROR_UNKNOWN);
}

static void test_set_errno_message(void)
{
  g_autoptr(GError) e = NULL;
  g_assert_false(ferry_error_set_errno(&e, ENOENT, "open %s", "/x/y"));
  g_assert_error(e, FERRY_ERROR, FERRY_ERROR_NOT_FOUND);
  g_autofree char *want = g_strdup_printf("open /x/y: %s", g_strerror(ENOENT));
  g_assert_cmpstr(e->message, ==, want);
  /* A NULL error pointer is allowed. */
  g_assert_false(ferry_error_set_errno(NULL, EIO, "ignored"));
}

static void test_code_names(void)
{
  g_assert_cmpstr(ferry_status_code_name(0), ==, "OK");
  g_assert_cmpstr(ferry_status_code_name(5), ==, "NOT_FOUND");
  g_assert_cmpstr(ferry_status_code_name(9), ==, "FAILED_PRECONDITION");
  g_assert_cmpstr(ferry_status_code_name(16), ==, "UNAUTHENTICATED");
  g_assert_cmpstr(ferry_status_code_name(17), ==, "UNKNOWN_CODE");
  g_assert_cmpstr(ferry_status_code_name(-1), ==, "UNKNOWN_CODE");
}

static int test_domain_to_status(int code)
{
  return code == 7 ? FERRY_ERROR_NOT_FOUND : code == 8 ? 99 : FERRY_ERROR_UNKNOWN;
}

static void test_registered_domain(void)
{
  GQuark d = g_quark_from_static_string("ferry-test-registered-domain");
  g_autoptr(GError) before = g_error_new(d, 7, "x");
  g_assert_cmpint(ferry_error_to_status_code(before), ==, FERRY_ERROR_UNKNOWN);
  ferry_error_register_domain(d, test_domain_to_status);
  g_assert_cmpint(ferry_error_to_status_code(before), ==, FERRY_ERROR_NOT_FOUND);
  /* A mapper's out-of-range answer is UNKNOWN, never passed through. */
  g_autoptr(GError) bad = g_error_new(d, 8, "x");
  g_assert_cmpint(ferry_error_to_status_code(bad), ==, FERRY_ERROR_UNKNOWN);
}

int main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/error/ferry-codes-are-status-codes", test_ferry_codes_are_status_codes);
  g_test_add_func("/error/out-of-range-codes-are-unknown", test_out_of_range_codes_are_unknown);
  g_test_add_func("/error/glib-domains-map", test_glib_domains_map);
  g_test_add_func("/error/errno-maps", test_errno_maps);
  g_test_add_func("/error/set-errno-message", test_set_errno_message);
  g_test_add_func("/error/code-names", test_code_names);
  g_test_add_func("/error/registered-domain", test_registered_domain);
  return g_test_run();
}
