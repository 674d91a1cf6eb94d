/*
 * The image builder: each layer directory becomes <cache>/<key>.erofs through
 * mkfs.erofs, unless the cache has it already (docs/rootfs.md). A build is a job that
 * goes through its layers one after the other: probe mkfs.erofs's version (once per
 * builder), walk the tree for its content digest, look the key up, run mkfs.erofs into
 * a temporary file, hash the image, rename it into place.
 */
#include <errno.h>
#include <fcntl.h>
#include <glib-unix.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ferry/error.h"
#include "ferry/log.h"
#include "ferry/rootfs.h"
#include "ferry/source.h"
#include "walk.h"

/* Work per idle dispatch while hashing, so the main loop keeps turning. */
#define STEP_BUDGET (1024 * 1024)
/* What is kept of a child's output for an error message. */
#define OUTPUT_CAP 8192
/* The cache key's own version: bump it when the options below change. */
#define KEY_MAGIC "ferry-rootfs-image-v1"
/* The options an image depends on besides the tree and the tool (the UUID is derived
 * from the key, so it is not part of it). See docs/rootfs.md, reproducibility. */
#define IMAGE_OPTIONS "-T0 -U<key> uncompressed"

typedef struct Job Job;

struct FerryRootfsBuilder {
  GMainContext *context;
  char *cache_dir;
  char *mkfs;
  char *mkfs_version; /* once probed */
  GQueue jobs;        /* Job * */
  guint mkfs_runs;
};

typedef enum {
  CHILD_PROBE,
  CHILD_MKFS,
} ChildKind;

/* A child process and the one output stream kept from it (capped). */
typedef struct {
  GPid pid;
  GSource *watch;
  int out_fd;
  GSource *out_source;
  GString *out;
  gboolean out_truncated;
  gboolean exited;
  int wait_status;
} Child;

typedef struct {
  char *source;
  gboolean from_upper;
} Layer;

struct Job {
  FerryRootfsBuilder *builder;
  GArray *layers; /* Layer, top first */
  guint index;
  GCancellable *cancellable;
  GSource *cancel_source;
  gboolean cancelled;
  FerryRootfsBuildFunc done;
  gpointer user_data;
  GSource *idle;
  ChildKind child_kind;
  Child child;
  RootfsWalk *walk;
  RootfsFileHash *hash;
  char *tmp_path;
  GArray *images; /* FerryRootfsImage */
  FerryRootfsImage cur;
};

static void image_clear(FerryRootfsImage *img)
{
  g_free(img->path);
  g_free(img->image_sha256);
  g_free(img->content);
  g_free(img->cache_key);
  g_free(img->source);
  memset(img, 0, sizeof *img);
}

void ferry_rootfs_images_free(FerryRootfsImages *images)
{
  if (images == NULL)
    return;
  for (guint i = 0; i < images->n_images; i++)
    image_clear(&images->images[i]);
  g_free(images->images);
  g_free(images->mkfs_version);
  g_free(images);
}

FerryRootfsBuilder *ferry_rootfs_builder_new(const FerryRootfsBuilderOptions *options,
                                             GError **error)
{
  if (options == NULL || options->cache_dir == NULL || options->cache_dir[0] == '\0') {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                "rootfs builder: no cache directory given");
    return NULL;
  }
  FerryRootfsBuilder *b = g_new0(FerryRootfsBuilder, 1);
  b->context = g_main_context_ref_thread_default();
  b->cache_dir = g_strdup(options->cache_dir);
  b->mkfs = g_strdup(options->mkfs_erofs != NULL ? options->mkfs_erofs : "mkfs.erofs");
  g_queue_init(&b->jobs);
  return b;
}

GPid ferry_rootfs_builder_get_mkfs_pid(FerryRootfsBuilder *b)
{
  for (GList *l = b->jobs.head; l != NULL; l = l->next) {
    Job *job = l->data;
    if (job->child.pid != 0 && !job->child.exited && job->child_kind == CHILD_MKFS)
      return job->child.pid;
  }
  return 0;
}

guint ferry_rootfs_builder_get_mkfs_runs(FerryRootfsBuilder *b)
{
  return b->mkfs_runs;
}

/* ------------------------------------------------------------------- child -- */

/* Ends the child's sources; a child still running is killed and reaped here (the
 * builder or the job is going away, nothing may wait for it later). */
static void child_clear(Child *c)
{
  ferry_source_clear(&c->out_source);
  if (c->out_fd >= 0)
    close(c->out_fd);
  c->out_fd = -1;
  if (c->pid != 0 && !c->exited) {
    ferry_source_clear(&c->watch);
    kill(c->pid, SIGKILL);
    int status;
    while (waitpid(c->pid, &status, 0) < 0 && errno == EINTR)
      ;
  }
  ferry_source_clear(&c->watch);
  if (c->pid != 0)
    g_spawn_close_pid(c->pid);
  c->pid = 0;
  if (c->out != NULL)
    g_string_free(c->out, TRUE);
  c->out = NULL;
}

static void job_child_done(Job *job);

static void job_maybe_child_done(Job *job)
{
  if (job->child.exited && job->child.out_fd < 0)
    job_child_done(job);
}

static gboolean on_child_output(gint fd, GIOCondition cond, gpointer data)
{
  Job *job = data;
  Child *c = &job->child;
  char buf[4096];
  ssize_t n = read(fd, buf, sizeof buf);
  if (n < 0 && (errno == EINTR || errno == EAGAIN))
    return G_SOURCE_CONTINUE;
  if (n > 0) {
    /* Keep the start (where mkfs.erofs says what failed), drain the rest. */
    gsize room = OUTPUT_CAP - MIN(c->out->len, OUTPUT_CAP);
    g_string_append_len(c->out, buf, MIN((gsize)n, room));
    if ((gsize)n > room)
      c->out_truncated = TRUE;
    return G_SOURCE_CONTINUE;
  }
  ferry_source_clear(&c->out_source);
  close(c->out_fd);
  c->out_fd = -1;
  job_maybe_child_done(job);
  return G_SOURCE_REMOVE;
}

static gboolean on_child_exit(GPid pid, gint wait_status, gpointer data)
{
  Job *job = data;
  job->child.exited = TRUE;
  job->child.wait_status = wait_status;
  ferry_source_clear(&job->child.watch);
  job_maybe_child_done(job);
  return G_SOURCE_REMOVE;
}

/* Spawn argv with a clean environment (mkfs.erofs 1.5 lets SOURCE_DATE_EPOCH override
 * -T, which would make the image depend on the caller's environment); stdin is
 * /dev/null, the stream `keep` (1 or 2) is captured, the other one discarded. */
static gboolean job_spawn(Job *job, ChildKind kind, const char *const *argv, int keep,
                          GError **error)
{
  FerryRootfsBuilder *b = job->builder;
  static const char *const envp[] = { "LC_ALL=C", NULL };
  int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
  if (devnull < 0)
    return ferry_error_set_errno(error, errno, "rootfs: open /dev/null");
  int pipefd[2];
  if (pipe2(pipefd, O_CLOEXEC) != 0) {
    int errsv = errno;
    close(devnull);
    return ferry_error_set_errno(error, errsv, "rootfs: pipe for %s", argv[0]);
  }
  g_autoptr(GError) spawn_error = NULL;
  GPid pid = 0;
  gboolean ok = g_spawn_async_with_fds(NULL, (char **)argv, (char **)envp,
                                       G_SPAWN_DO_NOT_REAP_CHILD | G_SPAWN_SEARCH_PATH, NULL, NULL,
                                       &pid, devnull, keep == 1 ? pipefd[1] : devnull,
                                       keep == 2 ? pipefd[1] : devnull, &spawn_error);
  close(devnull);
  close(pipefd[1]);
  if (!ok) {
    close(pipefd[0]);
    gboolean missing = g_error_matches(spawn_error, G_SPAWN_ERROR, G_SPAWN_ERROR_NOENT);
    g_set_error(error, FERRY_ERROR,
                missing ? FERRY_ERROR_NOT_FOUND : FERRY_ERROR_FAILED_PRECONDITION,
                "rootfs: cannot run %s (Debian's erofs-utils): %s", argv[0], spawn_error->message);
    return FALSE;
  }
  g_unix_set_fd_nonblocking(pipefd[0], TRUE, NULL);
  Child *c = &job->child;
  memset(c, 0, sizeof *c);
  job->child_kind = kind;
  c->pid = pid;
  c->out_fd = pipefd[0];
  c->out = g_string_new(NULL);
  c->watch = g_child_watch_source_new(pid);
  g_source_set_callback(c->watch, G_SOURCE_FUNC(on_child_exit), job, NULL);
  g_source_attach(c->watch, b->context);
  c->out_source = g_unix_fd_source_new(c->out_fd, G_IO_IN | G_IO_HUP | G_IO_ERR);
  g_source_set_callback(c->out_source, G_SOURCE_FUNC(on_child_output), job, NULL);
  g_source_attach(c->out_source, b->context);
  char pid_text[16];
  g_snprintf(pid_text, sizeof pid_text, "%d", pid);
  ferry_log(FERRY_LOG_DEBUG, "rootfs: spawned", "argv0", argv[0], "pid", pid_text, NULL);
  return TRUE;
}

/* --------------------------------------------------------------------- job -- */

static void job_free(Job *job)
{
  child_clear(&job->child);
  ferry_source_clear(&job->idle);
  ferry_source_clear(&job->cancel_source);
  g_clear_object(&job->cancellable);
  g_clear_pointer(&job->walk, rootfs_walk_free);
  g_clear_pointer(&job->hash, rootfs_file_hash_free);
  if (job->tmp_path != NULL)
    unlink(job->tmp_path);
  g_free(job->tmp_path);
  for (guint i = 0; i < job->layers->len; i++)
    g_free(g_array_index(job->layers, Layer, i).source);
  g_array_unref(job->layers);
  for (guint i = 0; i < job->images->len; i++)
    image_clear(&g_array_index(job->images, FerryRootfsImage, i));
  g_array_unref(job->images);
  image_clear(&job->cur);
  g_free(job);
}

/* The end of a job: its sources go first, then the callback runs (it may free the
 * builder), the job is not touched after it. */
static void job_finish(Job *job, const GError *error)
{
  FerryRootfsBuilder *b = job->builder;
  g_queue_remove(&b->jobs, job);
  FerryRootfsImages *images = NULL;
  if (error == NULL) {
    images = g_new0(FerryRootfsImages, 1);
    images->n_images = job->images->len;
    images->images = (FerryRootfsImage *)g_array_steal(job->images, NULL);
    images->mkfs_version = g_strdup(b->mkfs_version);
  }
  FerryRootfsBuildFunc done = job->done;
  gpointer user_data = job->user_data;
  job_free(job);
  done(b, images, error, user_data);
}

static void job_fail(Job *job, GError *error)
{
  job_finish(job, error);
  g_error_free(error);
}

static void job_fail_cancelled(Job *job)
{
  job_fail(job, g_error_new(FERRY_ERROR, FERRY_ERROR_CANCELLED, "rootfs build cancelled"));
}

static void job_next_layer(Job *job);

static gboolean on_cancelled(GCancellable *cancellable, gpointer data)
{
  Job *job = data;
  ferry_source_clear(&job->cancel_source);
  job->cancelled = TRUE;
  if (job->child.pid != 0 && !job->child.exited) {
    /* The CANCELLED report follows once the child has been reaped. */
    kill(job->child.pid, SIGKILL);
    return G_SOURCE_REMOVE;
  }
  job_fail_cancelled(job);
  return G_SOURCE_REMOVE;
}

static char *cache_path(FerryRootfsBuilder *b, const char *key)
{
  g_autofree char *name = g_strconcat(key, ".erofs", NULL);
  return g_build_filename(b->cache_dir, name, NULL);
}

/* A UUID from the first 16 bytes of the key, marked as an RFC 9562 version 8 (custom)
 * UUID: fixed for a key, distinct between layers. */
static char *uuid_from_key(const char *key)
{
  char h[33];
  memcpy(h, key, 32);
  h[32] = '\0';
  h[12] = '8';
  static const char variant[] = "89ab";
  h[16] = variant[g_ascii_xdigit_value(h[16]) & 3];
  return g_strdup_printf("%.8s-%.4s-%.4s-%.4s-%.12s", h, h + 8, h + 12, h + 16, h + 20);
}

static void set_errno_error(GError **error, int errsv, const char *fmt, const char *arg)
{
  /* As root, only a read-only file system refuses a write; it is as much a
   * permission problem as EACCES is to the caller. */
  FerryErrorCode code =
      errsv == EROFS ? FERRY_ERROR_PERMISSION_DENIED : ferry_error_code_from_errno(errsv);
  g_autofree char *what = g_strdup_printf(fmt, arg);
  g_set_error(error, FERRY_ERROR, code, "%s: %s", what, g_strerror(errsv));
}

static gboolean hash_step(gpointer data);

static void job_start_hash(Job *job, const char *path)
{
  GError *error = NULL;
  job->hash = rootfs_file_hash_new(path, &error);
  if (job->hash == NULL) {
    job_fail(job, error);
    return;
  }
  job->idle = ferry_idle_new(job->builder->context, hash_step, job);
}

static void job_start_mkfs(Job *job)
{
  FerryRootfsBuilder *b = job->builder;
  GError *error = NULL;
  struct stat st;
  if (stat(b->cache_dir, &st) == 0 && !S_ISDIR(st.st_mode)) {
    job_fail(job, g_error_new(FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION,
                              "rootfs cache: %s is not a directory", b->cache_dir));
    return;
  }
  if (g_mkdir_with_parents(b->cache_dir, 0700) != 0) {
    set_errno_error(&error, errno, "rootfs cache: create directory %s", b->cache_dir);
    job_fail(job, error);
    return;
  }
  g_autofree char *final = cache_path(b, job->cur.cache_key);
  job->tmp_path = g_strconcat(final, ".tmp-XXXXXX", NULL);
  int fd = g_mkstemp_full(job->tmp_path, O_RDWR | O_CLOEXEC, 0644);
  if (fd < 0) {
    int errsv = errno;
    g_clear_pointer(&job->tmp_path, g_free);
    set_errno_error(&error, errsv, "rootfs cache: cannot write a file in %s", b->cache_dir);
    job_fail(job, error);
    return;
  }
  close(fd);
  g_autofree char *uuid = uuid_from_key(job->cur.cache_key);
  g_autofree char *uuid_opt = g_strconcat("-U", uuid, NULL);
  const char *argv[] = {
    b->mkfs, "--quiet", "-T0", uuid_opt, job->tmp_path, job->cur.source, NULL
  };
  if (!job_spawn(job, CHILD_MKFS, argv, 2, &error)) {
    job_fail(job, error);
    return;
  }
}

static void job_layer_walked(Job *job)
{
  FerryRootfsBuilder *b = job->builder;
  Layer *layer = &g_array_index(job->layers, Layer, job->index);
  if (layer->from_upper && rootfs_walk_is_empty(job->walk)) {
    /* An empty upper adds nothing above the layers. */
    g_clear_pointer(&job->walk, rootfs_walk_free);
    image_clear(&job->cur);
    job->index++;
    job_next_layer(job);
    return;
  }
  job->cur.content = g_strdup(rootfs_walk_digest(job->walk));
  g_clear_pointer(&job->walk, rootfs_walk_free);
  g_autoptr(GChecksum) sum = g_checksum_new(G_CHECKSUM_SHA256);
  const char *parts[] = { KEY_MAGIC, b->mkfs_version, IMAGE_OPTIONS, job->cur.content };
  for (gsize i = 0; i < G_N_ELEMENTS(parts); i++)
    g_checksum_update(sum, (const guchar *)parts[i], (gssize)strlen(parts[i]) + 1);
  job->cur.cache_key = g_strdup(g_checksum_get_string(sum));
  job->cur.path = cache_path(b, job->cur.cache_key);
  struct stat st;
  if (stat(job->cur.path, &st) == 0 && S_ISREG(st.st_mode)) {
    job->cur.built = FALSE;
    job_start_hash(job, job->cur.path);
    return;
  }
  job_start_mkfs(job);
}

static gboolean walk_step(gpointer data)
{
  Job *job = data;
  if (g_cancellable_is_cancelled(job->cancellable)) {
    job_fail_cancelled(job);
    return G_SOURCE_REMOVE;
  }
  GError *error = NULL;
  gboolean done = FALSE;
  if (!rootfs_walk_step(job->walk, STEP_BUDGET, &done, &error)) {
    job_fail(job, error);
    return G_SOURCE_REMOVE;
  }
  if (!done)
    return G_SOURCE_CONTINUE;
  ferry_source_clear(&job->idle);
  job_layer_walked(job);
  return G_SOURCE_REMOVE;
}

static void job_image_done(Job *job)
{
  FerryRootfsBuilder *b = job->builder;
  GError *error = NULL;
  job->cur.image_sha256 = g_strdup(rootfs_file_hash_digest(job->hash));
  job->cur.size = rootfs_file_hash_size(job->hash);
  if (job->cur.built) {
    /* Durable before it becomes visible under its final name; a concurrent builder of
     * the same key renames an identical file over it, which is harmless. */
    if (fsync(rootfs_file_hash_fd(job->hash)) != 0) {
      set_errno_error(&error, errno, "rootfs cache: fsync %s", job->tmp_path);
      job_fail(job, error);
      return;
    }
    if (rename(job->tmp_path, job->cur.path) != 0) {
      set_errno_error(&error, errno, "rootfs cache: rename into %s", job->cur.path);
      job_fail(job, error);
      return;
    }
    g_clear_pointer(&job->tmp_path, g_free);
    int dfd = open(b->cache_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
      fsync(dfd);
      close(dfd);
    }
  }
  g_clear_pointer(&job->hash, rootfs_file_hash_free);
  g_array_append_val(job->images, job->cur);
  memset(&job->cur, 0, sizeof job->cur);
  job->index++;
  job_next_layer(job);
}

static gboolean hash_step(gpointer data)
{
  Job *job = data;
  if (g_cancellable_is_cancelled(job->cancellable)) {
    job_fail_cancelled(job);
    return G_SOURCE_REMOVE;
  }
  GError *error = NULL;
  gboolean done = FALSE;
  if (!rootfs_file_hash_step(job->hash, STEP_BUDGET, &done, &error)) {
    job_fail(job, error);
    return G_SOURCE_REMOVE;
  }
  if (!done)
    return G_SOURCE_CONTINUE;
  ferry_source_clear(&job->idle);
  job_image_done(job);
  return G_SOURCE_REMOVE;
}

static void job_probe_done(Job *job, const Child *c)
{
  FerryRootfsBuilder *b = job->builder;
  /* mkfs.erofs 1.5 without arguments prints "<name> <version>" on stdout, then its
   * usage on stderr, and exits 1. */
  g_autofree char *line = g_strndup(c->out->str, strcspn(c->out->str, "\n"));
  g_strstrip(line);
  if (line[0] == '\0' || strchr(line, ' ') == NULL) {
    job_fail(job, g_error_new(FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION,
                              "rootfs: %s does not say which mkfs.erofs it is (stdout: \"%s\")",
                              b->mkfs, line));
    return;
  }
  if (b->mkfs_version == NULL)
    b->mkfs_version = g_steal_pointer(&line);
  job_next_layer(job);
}

static char *child_status_text(int wait_status)
{
  if (WIFEXITED(wait_status))
    return g_strdup_printf("exit status %d", WEXITSTATUS(wait_status));
  if (WIFSIGNALED(wait_status))
    return g_strdup_printf("killed by signal %d", WTERMSIG(wait_status));
  return g_strdup_printf("wait status %d", wait_status);
}

static void job_mkfs_done(Job *job, const Child *c)
{
  if (!WIFEXITED(c->wait_status) || WEXITSTATUS(c->wait_status) != 0) {
    g_autofree char *status = child_status_text(c->wait_status);
    g_autofree char *out = g_strstrip(g_strdup(c->out->str));
    job_fail(job, g_error_new(FERRY_ERROR, FERRY_ERROR_INTERNAL,
                              "rootfs: mkfs.erofs failed (%s) building %s from %s: %s%s", status,
                              job->tmp_path, job->cur.source, out[0] != '\0' ? out : "(no output)",
                              c->out_truncated ? " [...]" : ""));
    return;
  }
  job->builder->mkfs_runs++;
  job->cur.built = TRUE;
  job_start_hash(job, job->tmp_path);
}

static void job_child_done(Job *job)
{
  Child c = job->child;
  memset(&job->child, 0, sizeof job->child);
  job->child.out_fd = -1;
  g_spawn_close_pid(c.pid);
  if (job->cancelled) {
    g_string_free(c.out, TRUE);
    job_fail_cancelled(job);
    return;
  }
  if (job->child_kind == CHILD_PROBE)
    job_probe_done(job, &c);
  else
    job_mkfs_done(job, &c);
  g_string_free(c.out, TRUE);
}

/* Start the next layer's walk, or the probe first, or finish. */
static void job_next_layer(Job *job)
{
  FerryRootfsBuilder *b = job->builder;
  GError *error = NULL;
  if (b->mkfs_version == NULL) {
    const char *argv[] = { b->mkfs, NULL };
    if (!job_spawn(job, CHILD_PROBE, argv, 1, &error))
      job_fail(job, error);
    return;
  }
  if (job->index >= job->layers->len) {
    job_finish(job, NULL);
    return;
  }
  Layer *layer = &g_array_index(job->layers, Layer, job->index);
  image_clear(&job->cur);
  job->cur.source = g_strdup(layer->source);
  job->cur.from_upper = layer->from_upper;
  job->walk = rootfs_walk_new(layer->source, &error);
  if (job->walk == NULL) {
    job_fail(job, error);
    return;
  }
  job->idle = ferry_idle_new(b->context, walk_step, job);
}

static gboolean job_start(gpointer data)
{
  Job *job = data;
  ferry_source_clear(&job->idle);
  if (g_cancellable_is_cancelled(job->cancellable)) {
    job_fail_cancelled(job);
    return G_SOURCE_REMOVE;
  }
  job_next_layer(job);
  return G_SOURCE_REMOVE;
}

void ferry_rootfs_builder_build(FerryRootfsBuilder *b, const FerryRootfsLayers *layers,
                                GCancellable *cancellable, FerryRootfsBuildFunc done,
                                gpointer user_data)
{
  Job *job = g_new0(Job, 1);
  job->builder = b;
  job->done = done;
  job->user_data = user_data;
  job->child.out_fd = -1;
  job->layers = g_array_new(FALSE, TRUE, sizeof(Layer));
  job->images = g_array_new(FALSE, TRUE, sizeof(FerryRootfsImage));
  if (layers->upper != NULL) {
    Layer l = { g_strdup(layers->upper), TRUE };
    g_array_append_val(job->layers, l);
  }
  for (guint i = 0; i < layers->n_layers; i++) {
    Layer l = { g_strdup(layers->layers[i]), FALSE };
    g_array_append_val(job->layers, l);
  }
  if (cancellable != NULL) {
    job->cancellable = g_object_ref(cancellable);
    job->cancel_source = g_cancellable_source_new(cancellable);
    g_source_set_callback(job->cancel_source, G_SOURCE_FUNC(on_cancelled), job, NULL);
    g_source_attach(job->cancel_source, b->context);
  }
  g_queue_push_tail(&b->jobs, job);
  job->idle = ferry_idle_new(b->context, job_start, job);
}

void ferry_rootfs_builder_free(FerryRootfsBuilder *b)
{
  if (b == NULL)
    return;
  Job *job;
  while ((job = g_queue_pop_head(&b->jobs)) != NULL)
    job_free(job);
  g_main_context_unref(b->context);
  g_free(b->cache_dir);
  g_free(b->mkfs);
  g_free(b->mkfs_version);
  g_free(b);
}
