/* lib/rootfs's pure parser: containerd's rootfs mounts -> layer directories. */
#include <string.h>

#include "ferry/error.h"
#include "ferry/rootfs.h"

#define N(a) (sizeof(a) / sizeof((a)[0]))

static FerryRootfsLayers *parse1(const char *type, const char *source, const char *const *options,
                                 gsize n, GError **error)
{
  FerryRootfsMount m = { type, source, options, n };
  return ferry_rootfs_layers_from_mounts(&m, 1, error);
}

static void test_overlay_top_first(void)
{
  const char *opts[] = { "index=off", "lowerdir=/s/3/fs:/s/2/fs:/s/1/fs", "upperdir=/s/4/fs",
                         "workdir=/s/4/work" };
  g_autoptr(GError) error = NULL;
  g_autoptr(FerryRootfsLayers) l = parse1("overlay", "overlay", opts, N(opts), &error);
  g_assert_no_error(error);
  g_assert_cmpuint(l->n_layers, ==, 3);
  /* lowerdir= lists the top layer first; the result keeps that order. */
  g_assert_cmpstr(l->layers[0], ==, "/s/3/fs");
  g_assert_cmpstr(l->layers[1], ==, "/s/2/fs");
  g_assert_cmpstr(l->layers[2], ==, "/s/1/fs");
  g_assert_null(l->layers[3]);
  g_assert_cmpstr(l->upper, ==, "/s/4/fs");
  g_assert_cmpstr(l->work, ==, "/s/4/work");
  g_assert_false(l->userxattr);
}

static void test_overlay_read_only(void)
{
  const char *opts[] = { "lowerdir=/a:/b" };
  g_autoptr(GError) error = NULL;
  g_autoptr(FerryRootfsLayers) l = parse1("overlay", "overlay", opts, N(opts), &error);
  g_assert_no_error(error);
  g_assert_cmpuint(l->n_layers, ==, 2);
  g_assert_null(l->upper);
  g_assert_null(l->work);
}

static void test_overlay_escapes(void)
{
  const char *opts[] = { "lowerdir=/a\\:b:/c\\\\d", "userxattr", "volatile" };
  g_autoptr(GError) error = NULL;
  g_autoptr(FerryRootfsLayers) l = parse1("overlay", NULL, opts, N(opts), &error);
  g_assert_no_error(error);
  g_assert_cmpuint(l->n_layers, ==, 2);
  g_assert_cmpstr(l->layers[0], ==, "/a:b");
  g_assert_cmpstr(l->layers[1], ==, "/c\\d");
  g_assert_true(l->userxattr);
}

static void test_bind_ro_is_a_layer(void)
{
  const char *opts[] = { "ro", "rbind" };
  g_autoptr(GError) error = NULL;
  g_autoptr(FerryRootfsLayers) l = parse1("bind", "/snap/1/fs", opts, N(opts), &error);
  g_assert_no_error(error);
  g_assert_cmpuint(l->n_layers, ==, 1);
  g_assert_cmpstr(l->layers[0], ==, "/snap/1/fs");
  g_assert_null(l->upper);
}

static void test_bind_rw_is_the_upper(void)
{
  /* mount(8) semantics: the last of ro / rw wins. */
  const char *opts[] = { "ro", "rbind", "rw" };
  g_autoptr(GError) error = NULL;
  g_autoptr(FerryRootfsLayers) l = parse1("bind", "/snap/2/fs", opts, N(opts), &error);
  g_assert_no_error(error);
  g_assert_cmpuint(l->n_layers, ==, 0);
  g_assert_nonnull(l->layers);
  g_assert_null(l->layers[0]);
  g_assert_cmpstr(l->upper, ==, "/snap/2/fs");
}

/* The five shapes containerd 1.6.20's overlayfs snapshotter gives (`ctr snapshots
 * prepare --mounts` / `view --mounts`, recorded here): an active snapshot without
 * parents, with one parent, with two; a view of two layers, a view of one. */
#define SNAP "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/"

static void test_containerd_shapes(void)
{
  g_autoptr(GError) error = NULL;
  const char *no_parent[] = { "rw", "rbind" };
  g_autoptr(FerryRootfsLayers) a = parse1("bind", SNAP "3/fs", no_parent, 2, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(a->n_layers, ==, 0);
  g_assert_cmpstr(a->upper, ==, SNAP "3/fs");

  const char *one_parent[] = { "index=off", "workdir=" SNAP "4/work", "upperdir=" SNAP "4/fs",
                               "lowerdir=" SNAP "1/fs" };
  g_autoptr(FerryRootfsLayers) b = parse1("overlay", "overlay", one_parent, 4, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(b->n_layers, ==, 1);
  g_assert_cmpstr(b->layers[0], ==, SNAP "1/fs");
  g_assert_cmpstr(b->upper, ==, SNAP "4/fs");
  g_assert_cmpstr(b->work, ==, SNAP "4/work");

  const char *two_parents[] = { "index=off", "workdir=" SNAP "5/work", "upperdir=" SNAP "5/fs",
                                "lowerdir=" SNAP "2/fs:" SNAP "1/fs" };
  g_autoptr(FerryRootfsLayers) c = parse1("overlay", "overlay", two_parents, 4, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(c->n_layers, ==, 2);
  g_assert_cmpstr(c->layers[0], ==, SNAP "2/fs"); /* the newer layer, on top */
  g_assert_cmpstr(c->layers[1], ==, SNAP "1/fs");

  const char *view_two[] = { "index=off", "lowerdir=" SNAP "2/fs:" SNAP "1/fs" };
  g_autoptr(FerryRootfsLayers) d = parse1("overlay", "overlay", view_two, 2, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(d->n_layers, ==, 2);
  g_assert_null(d->upper);

  const char *view_one[] = { "ro", "rbind" };
  g_autoptr(FerryRootfsLayers) e = parse1("bind", SNAP "1/fs", view_one, 2, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(e->n_layers, ==, 1);
  g_assert_cmpstr(e->layers[0], ==, SNAP "1/fs");
  g_assert_null(e->upper);
}

static void test_directory(void)
{
  g_autoptr(GError) error = NULL;
  g_autoptr(FerryRootfsLayers) l = ferry_rootfs_layers_from_directory("/b/rootfs", &error);
  g_assert_no_error(error);
  g_assert_cmpuint(l->n_layers, ==, 1);
  g_assert_cmpstr(l->layers[0], ==, "/b/rootfs");
  g_assert_null(l->upper);

  FerryRootfsLayers *bad = ferry_rootfs_layers_from_directory("rootfs", &error);
  g_assert_null(bad);
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
  g_assert_nonnull(strstr(error->message, "not an absolute path"));
  g_clear_error(&error);
  g_assert_null(ferry_rootfs_layers_from_directory("", &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
}

/* One malformed mount and a fragment its error message must contain. */
typedef struct {
  const char *name;
  const char *type;
  const char *source;
  const char *options[4]; /* NULL-terminated unless `with_null` */
  gboolean with_null;     /* options[0] is a NULL entry counted as an option */
  const char *message;
} Bad;

static const Bad bad_mounts[] = {
  { "no-type", NULL, "/x", { "rbind", NULL }, FALSE, "no type" },
  { "empty-type", "", "/x", { "rbind", NULL }, FALSE, "no type" },
  { "unknown-type", "ext4", "/dev/sda", { NULL }, FALSE, "\"ext4\" is not supported" },
  { "overlay-no-lowerdir",
    "overlay",
    "overlay",
    { "upperdir=/u", "workdir=/w", NULL },
    FALSE,
    "no lowerdir" },
  { "lowerdir-empty", "overlay", NULL, { "lowerdir=", NULL }, FALSE, "empty path" },
  { "lowerdir-no-value", "overlay", NULL, { "lowerdir", NULL }, FALSE, "has no value" },
  { "lowerdir-data-only", "overlay", NULL, { "lowerdir=/a::/b", NULL }, FALSE, "data-only" },
  { "lowerdir-trailing-colon", "overlay", NULL, { "lowerdir=/a:", NULL }, FALSE, "empty path" },
  { "lowerdir-relative",
    "overlay",
    NULL,
    { "lowerdir=/a:b", NULL },
    FALSE,
    "\"b\" is not an absolute path" },
  { "lowerdir-lone-backslash",
    "overlay",
    NULL,
    { "lowerdir=/a\\", NULL },
    FALSE,
    "lone backslash" },
  { "lowerdir-twice",
    "overlay",
    NULL,
    { "lowerdir=/a", "lowerdir=/b", NULL },
    FALSE,
    "given twice" },
  { "upper-without-work",
    "overlay",
    NULL,
    { "lowerdir=/a", "upperdir=/u", NULL },
    FALSE,
    "upperdir= without workdir=" },
  { "work-without-upper",
    "overlay",
    NULL,
    { "lowerdir=/a", "workdir=/w", NULL },
    FALSE,
    "workdir= without upperdir=" },
  { "upper-relative",
    "overlay",
    NULL,
    { "lowerdir=/a", "upperdir=u", "workdir=/w", NULL },
    FALSE,
    "not an absolute path" },
  { "metacopy", "overlay", NULL, { "lowerdir=/a", "metacopy=on", NULL }, FALSE, "metacopy" },
  { "empty-option", "overlay", NULL, { "lowerdir=/a", "", NULL }, FALSE, "option 1 is empty" },
  { "null-option", "overlay", NULL, { NULL }, TRUE, "option 0 is empty" },
  { "bind-without-bind", "bind", "/x", { "ro", NULL }, FALSE, "without a bind or rbind" },
  { "bind-no-source", "bind", NULL, { "rbind", NULL }, FALSE, "no source" },
  { "bind-relative", "bind", "x/fs", { "rbind", "ro", NULL }, FALSE, "not an absolute path" },
  { "bind-empty-source", "bind", "", { "rbind", NULL }, FALSE, "is empty" },
};

static void test_malformed(gconstpointer data)
{
  const Bad *b = data;
  gsize n = 0;
  if (b->with_null)
    n = 1;
  else
    while (b->options[n] != NULL)
      n++;
  g_autoptr(GError) error = NULL;
  g_autoptr(FerryRootfsLayers) l = parse1(b->type, b->source, b->options, n, &error);
  g_assert_null(l);
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
  if (strstr(error->message, b->message) == NULL)
    g_error("%s: message \"%s\" lacks \"%s\"", b->name, error->message, b->message);
}

static void test_mount_count(void)
{
  g_autoptr(GError) error = NULL;
  g_assert_null(ferry_rootfs_layers_from_mounts(NULL, 0, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
  g_assert_nonnull(strstr(error->message, "no mounts"));
  g_clear_error(&error);

  const char *opts[] = { "rbind", "ro" };
  FerryRootfsMount two[2] = { { "bind", "/a", opts, 2 }, { "bind", "/b", opts, 2 } };
  g_assert_null(ferry_rootfs_layers_from_mounts(two, 2, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
  g_assert_nonnull(strstr(error->message, "2 mounts"));
  g_clear_error(&error);

  FerryRootfsMount lying = { "bind", "/a", NULL, 3 };
  g_assert_null(ferry_rootfs_layers_from_mounts(&lying, 1, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
}

static void test_too_many_layers(void)
{
  g_autoptr(GString) opt = g_string_new("lowerdir=");
  for (int i = 0; i <= FERRY_ROOTFS_MAX_LAYERS; i++)
    g_string_append_printf(opt, "%s/l%d", i > 0 ? ":" : "", i);
  const char *opts[] = { opt->str };
  g_autoptr(GError) error = NULL;
  g_assert_null(parse1("overlay", NULL, opts, 1, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
  g_assert_nonnull(strstr(error->message, "more than 500 layers"));

  /* Exactly the limit is fine. */
  g_string_assign(opt, "lowerdir=");
  for (int i = 0; i < FERRY_ROOTFS_MAX_LAYERS; i++)
    g_string_append_printf(opt, "%s/l%d", i > 0 ? ":" : "", i);
  opts[0] = opt->str;
  g_clear_error(&error);
  g_autoptr(FerryRootfsLayers) l = parse1("overlay", NULL, opts, 1, &error);
  g_assert_no_error(error);
  g_assert_cmpuint(l->n_layers, ==, FERRY_ROOTFS_MAX_LAYERS);
}

/* Every prefix of a valid option list, cut at every byte: an answer, never a crash
 * (ASan runs this in CI). */
static void test_truncations(void)
{
  const char *full = "lowerdir=/s/3\\:x/fs:/s/2/fs,upperdir=/s/4/fs,workdir=/s/4/work";
  for (gsize cut = 0; cut <= strlen(full); cut++) {
    g_autofree char *s = g_strndup(full, cut);
    g_auto(GStrv) opts = g_strsplit(s, ",", -1);
    g_autoptr(GError) error = NULL;
    g_autoptr(FerryRootfsLayers) l =
        parse1("overlay", NULL, (const char *const *)opts, g_strv_length(opts), &error);
    g_assert_true((l == NULL) != (error == NULL));
    if (error != NULL)
      g_assert_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
  }
}

int main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/rootfs/mounts/overlay-lists-top-first", test_overlay_top_first);
  g_test_add_func("/rootfs/mounts/overlay-without-upper-is-read-only", test_overlay_read_only);
  g_test_add_func("/rootfs/mounts/overlay-escapes-and-flags", test_overlay_escapes);
  g_test_add_func("/rootfs/mounts/bind-ro-is-one-layer", test_bind_ro_is_a_layer);
  g_test_add_func("/rootfs/mounts/bind-rw-is-the-upper", test_bind_rw_is_the_upper);
  g_test_add_func("/rootfs/mounts/directory", test_directory);
  g_test_add_func("/rootfs/mounts/containerd-1.6-overlayfs-shapes", test_containerd_shapes);
  g_test_add_func("/rootfs/mounts/one-mount-only", test_mount_count);
  g_test_add_func("/rootfs/mounts/layer-limit", test_too_many_layers);
  g_test_add_func("/rootfs/mounts/truncated-options", test_truncations);
  for (gsize i = 0; i < N(bad_mounts); i++) {
    g_autofree char *path = g_strconcat("/rootfs/mounts/malformed/", bad_mounts[i].name, NULL);
    g_test_add_data_func(path, &bad_mounts[i], test_malformed);
  }
  return g_test_run();
}
