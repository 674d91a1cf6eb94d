/*
 * The destination's store of travelled layer images: an image arrives in chunks and is
 * kept only when its bytes are its digest; everything out of order, too big, too many
 * or malformed is refused and leaves nothing behind.
 */
#include <string.h>

#include "ferry/error.h"
#include "ferry/layer-store.h"
#include "test-util.h"

static char *dir;

static char *digest_of(const guint8 *data, gsize len)
{
  g_autofree char *hex = g_compute_checksum_for_data(G_CHECKSUM_SHA256, data, len);
  return g_strconcat("sha256:", hex, NULL);
}

/* Files in the store's directory, sorted, joined by spaces. */
static char *listing(FerryLayerStore *s)
{
  g_autoptr(GDir) d = g_dir_open(ferry_layer_store_dir(s), 0, NULL);
  g_autoptr(GPtrArray) names = g_ptr_array_new_with_free_func(g_free);
  const char *n;
  while ((n = g_dir_read_name(d)) != NULL)
    g_ptr_array_add(names, g_strdup(n));
  g_ptr_array_sort(names, (GCompareFunc)g_strcmp0);
  g_ptr_array_add(names, NULL);
  return g_strjoinv(" ", (char **)names->pdata);
}

static void test_chunks(void)
{
  g_autofree char *d = g_build_filename(dir, "chunks", NULL);
  g_autoptr(GError) error = NULL;
  g_autoptr(FerryLayerStore) s = ferry_layer_store_new(d, 1 << 20, &error);
  g_assert_no_error(error);
  guint8 image[3000];
  for (guint i = 0; i < sizeof(image); i++)
    image[i] = (guint8)(i * 7);
  g_autofree char *digest = digest_of(image, sizeof(image));
  g_assert_null(ferry_layer_store_path(s, digest));
  g_assert_true(ferry_layer_store_put(s, digest, 0, image, 1000, FALSE, &error));
  g_assert_true(ferry_layer_store_put(s, digest, 1000, image + 1000, 1000, FALSE, &error));
  g_assert_null(ferry_layer_store_path(s, digest)); /* not before the last chunk */
  g_assert_true(ferry_layer_store_put(s, digest, 2000, image + 2000, 1000, TRUE, &error));
  g_assert_no_error(error);
  g_autofree char *path = ferry_layer_store_path(s, digest);
  g_assert_nonnull(path);
  g_autofree char *back = NULL;
  gsize len = 0;
  g_assert_true(g_file_get_contents(path, &back, &len, NULL));
  g_assert_cmpmem(back, len, image, sizeof(image));
  g_autofree char *files = listing(s);
  g_autofree char *want = g_strconcat(digest + 7, ".erofs", NULL); /* the hex, no partial */
  g_assert_cmpstr(files, ==, want);
  /* Sent again: it is here already. */
  g_assert_false(ferry_layer_store_put(s, digest, 0, image, 10, FALSE, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_ALREADY_EXISTS);
}

static void test_refusals(void)
{
  g_autofree char *d = g_build_filename(dir, "refusals", NULL);
  g_autoptr(GError) error = NULL;
  g_autoptr(FerryLayerStore) s = ferry_layer_store_new(d, 100, &error);
  guint8 data[200] = { 1, 2, 3 };
  g_autofree char *digest = digest_of(data, 50);

  /* Bytes that are not their digest: dropped, nothing kept. */
  g_assert_true(ferry_layer_store_put(s, digest, 0, data, 25, FALSE, &error));
  data[30] ^= 1;
  g_assert_false(ferry_layer_store_put(s, digest, 25, data + 25, 25, TRUE, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_DATA_LOSS);
  g_assert_nonnull(strstr(error->message, digest));
  g_clear_error(&error);
  data[30] ^= 1;
  g_autofree char *empty = listing(s);
  g_assert_cmpstr(empty, ==, "");
  g_assert_null(ferry_layer_store_path(s, digest));

  /* Out of order: before a start, and a gap. */
  g_assert_false(ferry_layer_store_put(s, digest, 10, data, 10, FALSE, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
  g_clear_error(&error);
  g_assert_true(ferry_layer_store_put(s, digest, 0, data, 10, FALSE, &error));
  g_assert_false(ferry_layer_store_put(s, digest, 20, data + 20, 10, FALSE, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
  g_clear_error(&error);
  g_autofree char *after_gap = listing(s);
  g_assert_cmpstr(after_gap, ==, "");

  /* Bigger than an image may be. */
  g_autofree char *big = digest_of(data, 150);
  g_assert_true(ferry_layer_store_put(s, big, 0, data, 90, FALSE, &error));
  g_assert_false(ferry_layer_store_put(s, big, 90, data + 90, 60, TRUE, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_RESOURCE_EXHAUSTED);
  g_clear_error(&error);

  /* Malformed digests name no file. */
  const char *bad[] = { "sha256:../../etc/passwd", "md5:0123", "sha256:ABCDEF", NULL, "" };
  for (guint i = 0; i < G_N_ELEMENTS(bad); i++) {
    g_assert_false(ferry_layer_store_put(s, bad[i], 0, data, 1, TRUE, &error));
    g_assert_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
    g_clear_error(&error);
    g_assert_null(ferry_layer_store_path(s, bad[i]));
  }

  /* Too many at once; an abort makes room, and a restart from 0 works. */
  char *digests[FERRY_LAYER_STORE_MAX_UPLOADS + 1];
  for (guint i = 0; i <= FERRY_LAYER_STORE_MAX_UPLOADS; i++) {
    guint8 one = (guint8)i;
    digests[i] = digest_of(&one, 1);
  }
  for (guint i = 0; i < FERRY_LAYER_STORE_MAX_UPLOADS; i++)
    g_assert_true(ferry_layer_store_put(s, digests[i], 0, data, 0, FALSE, &error));
  g_assert_false(
      ferry_layer_store_put(s, digests[FERRY_LAYER_STORE_MAX_UPLOADS], 0, data, 0, FALSE, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_RESOURCE_EXHAUSTED);
  g_clear_error(&error);
  ferry_layer_store_abort(s, digests[0]);
  guint8 last = FERRY_LAYER_STORE_MAX_UPLOADS;
  g_assert_true(
      ferry_layer_store_put(s, digests[FERRY_LAYER_STORE_MAX_UPLOADS], 0, &last, 1, TRUE, &error));
  g_assert_no_error(error);
  guint8 first = 1;
  g_assert_true(ferry_layer_store_put(s, digests[1], 0, &first, 1, TRUE, &error)); /* restart */
  g_assert_no_error(error);
  for (guint i = 0; i <= FERRY_LAYER_STORE_MAX_UPLOADS; i++)
    g_free(digests[i]);
}

/* Freeing the store stops the uploads: their partial files go, images stay. */
static void test_free_drops_partials(void)
{
  g_autofree char *d = g_build_filename(dir, "free", NULL);
  g_autoptr(GError) error = NULL;
  FerryLayerStore *s = ferry_layer_store_new(d, 100, &error);
  guint8 a = 'a', b = 'b';
  g_autofree char *da = digest_of(&a, 1);
  g_autofree char *db = digest_of(&b, 1);
  g_assert_true(ferry_layer_store_put(s, da, 0, &a, 1, TRUE, &error));
  g_assert_true(ferry_layer_store_put(s, db, 0, &b, 0, FALSE, &error));
  ferry_layer_store_free(s);
  s = ferry_layer_store_new(d, 100, &error);
  g_autofree char *files = listing(s);
  g_autofree char *want = g_strconcat(da + 7, ".erofs", NULL);
  g_assert_cmpstr(files, ==, want);
  ferry_layer_store_free(s);
}

int main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  dir = test_make_tmpdir();
  g_test_add_func("/layer-store/chunks", test_chunks);
  g_test_add_func("/layer-store/refusals", test_refusals);
  g_test_add_func("/layer-store/free-drops-partials", test_free_drops_partials);
  int rc = g_test_run();
  test_rm_rf(dir);
  g_free(dir);
  return rc;
}
