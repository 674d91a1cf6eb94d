/* Small helpers shared by the test programs. */
#pragma once

#include <glib.h>
#include <jansson.h>

/* Parse hex digits, ignoring spaces and '|'. Aborts the test on a bad digit. */
GByteArray *test_hex(const char *hex);

/* Lower-case hex of bytes; the caller frees it. */
char *test_to_hex(const guint8 *data, gsize len);

/* Iterate the thread-default main context until *flag is TRUE or `timeout_ms`
 * passes; FALSE on timeout. */
gboolean test_run_until(const gboolean *flag, guint timeout_ms);

/* A busybox root file system in `dir` (Debian's busybox-static): bin/busybox with the
 * common applets linked to it, and empty proc, dev, sys, tmp. */
gboolean test_build_busybox_rootfs(const char *dir, GError **error);

/* An OCI config for that root file system (rootfs/, read-only): the namespaces a
 * container gets in the UVM except user and cgroup ones, no cgroup mount (local mode
 * disables cgroups). A new reference. */
json_t *test_busybox_oci_spec(void);

/* A new private temporary directory (removed by test_rm_rf). */
char *test_make_tmpdir(void);
void test_rm_rf(const char *path);

/* Write the smallest kernel QEMU's x86 loader takes (a PVH ELF whose code halts), so a
 * test can run QEMU without the guest image. Aborts on failure. */
void test_write_pvh_kernel(const char *path);
