/*
 * OOM kills in containers (docs/agent.md, OOM kills): the agent tells the host when the
 * kernel's OOM killer killed a process of a container, as containerd's runc shim does
 * from the container's cgroup v2 memory.events, on a rise of its `oom_kill` count.
 *
 * `crun run` removes the container's cgroup as soon as its init exits, which is also the
 * moment an OOM kill of the init has to be read: a watch on that cgroup would lose the
 * race. So the agent puts each container one level down, in `container/` below a group
 * of its own (`/ferry/<id>`, the spec's linux.cgroupsPath, as hcsshim's guest sets
 * cgroupsPath itself). cgroup v2 counts a descendant's memory events in every ancestor's
 * memory.events, and the group outlives the leaf until the container is deleted, so the
 * agent reads the count once more when a container process has exited, before it
 * answers that process's waits: a TaskOOM reaches containerd before the exit it caused.
 */
#include <errno.h>
#include <glib-unix.h>
#include <string.h>
#include <sys/inotify.h>
#include <unistd.h>

#include "ferry/error.h"
#include "ferry/fd.h"
#include "ferry/json.h"
#include "ferry/log.h"
#include "gcs-impl.h"

#define CGROUP_ROOT "/sys/fs/cgroup"
/* The agent's groups, one per container, below the cgroup root. */
#define GROUPS_PARENT "/ferry"
/* The cgroup crun makes for the container's processes, inside its group. */
#define LEAF_NAME "container"

struct GcsOomWatch {
  FerryGcs *gcs;
  GcsContainer *container; /* owns the watch */
  char *group;             /* the group's directory under CGROUP_ROOT */
  char *events;            /* its memory.events */
  int inotify_fd;
  GSource *source;
};

gboolean gcs_parse_oom_kills(const char *text, guint64 *count)
{
  g_autoptr(json_t) events = gcs_parse_flat_keyed(text);
  json_t *value = json_object_get(events, "oom_kill");
  if (!json_is_integer(value))
    return FALSE;
  *count = (guint64)json_integer_value(value);
  return TRUE;
}

char *gcs_oom_cgroups_path(const char *container_id)
{
  return g_strconcat(GROUPS_PARENT "/", container_id, "/" LEAF_NAME, NULL);
}

static char *group_dir(const char *container_id)
{
  return g_strconcat(CGROUP_ROOT GROUPS_PARENT "/", container_id, NULL);
}

/* The group's oom_kill count; FALSE when it cannot be read (no group: local mode). */
static gboolean read_oom_kills(const char *events_path, guint64 *count)
{
  g_autofree char *text = NULL;
  return g_file_get_contents(events_path, &text, NULL, NULL) && gcs_parse_oom_kills(text, count);
}

gboolean gcs_oom_prepare(const char *container_id, json_t *spec, guint64 *oom_kills, GError **error)
{
  json_t *linux_section = json_object_get(spec, "linux");
  if (linux_section == NULL) {
    linux_section = json_object();
    json_object_set_new(spec, "linux", linux_section);
  }
  if (!json_is_object(linux_section)) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT,
                "OciSpecification: linux is not an object");
    return FALSE;
  }
  g_autofree char *path = gcs_oom_cgroups_path(container_id);
  json_object_set_new(linux_section, "cgroupsPath", json_string(path));
  /* A group an earlier container of this id left behind (its removal failed) counts on
   * from where it stood. */
  g_autofree char *dir = group_dir(container_id);
  g_autofree char *events = g_build_filename(dir, "memory.events", NULL);
  *oom_kills = 0;
  (void)read_oom_kills(events, oom_kills);
  return TRUE;
}

static gboolean on_events_modified(gint fd, GIOCondition condition, gpointer user_data)
{
  GcsOomWatch *watch = user_data;
  /* What changed does not matter, only that something did: drain the queue. */
  char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
  while (read(fd, buf, sizeof(buf)) > 0)
    ;
  gcs_oom_check(watch->gcs, watch->container);
  return G_SOURCE_CONTINUE;
}

void gcs_oom_watch_start(FerryGcs *gcs, GcsContainer *c)
{
  if (c->oom != NULL)
    return;
  g_autofree char *dir = group_dir(c->id);
  g_autofree char *events = g_build_filename(dir, "memory.events", NULL);
  int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (fd < 0 || inotify_add_watch(fd, events, IN_MODIFY) < 0) {
    /* No group: crun does not manage cgroups here (local mode). */
    g_autofree char *why = g_strdup(g_strerror(errno));
    ferry_fd_clear(&fd);
    ferry_log(FERRY_LOG_DEBUG, "gcs: no OOM watch", "container", c->id, "events", events, "error",
              why, NULL);
    return;
  }
  GcsOomWatch *watch = g_new0(GcsOomWatch, 1);
  watch->gcs = gcs;
  watch->container = c;
  watch->group = g_steal_pointer(&dir);
  watch->events = g_steal_pointer(&events);
  watch->inotify_fd = fd;
  watch->source = g_unix_fd_source_new(fd, G_IO_IN);
  g_source_set_callback(watch->source, G_SOURCE_FUNC(on_events_modified), watch, NULL);
  g_source_attach(watch->source, gcs->context);
  c->oom = watch;
  /* A kill between crun's start and the watch is not missed. */
  gcs_oom_check(gcs, c);
}

void gcs_oom_check(FerryGcs *gcs, GcsContainer *c)
{
  guint64 count;
  if (c->oom == NULL || !read_oom_kills(c->oom->events, &count) || count <= c->oom_kills)
    return;
  c->oom_kills = count;
  g_autofree char *n = g_strdup_printf("%" G_GUINT64_FORMAT, count);
  ferry_log(FERRY_LOG_DEBUG, "gcs: OOM kill in container", "container", c->id, "oom_kill", n, NULL);
  /* The host forgot a stopped container; a host that did not ask (hcsshim's) would read
   * any container notification as the container's exit. */
  if (c->state == GCS_CONTAINER_STOPPED ||
      !ferry_bridge_server_host_accepts(gcs->server, FERRY_BRIDGE_NOTIFY_TYPE_OOM_KILL))
    return;
  ferry_bridge_server_notify(
      gcs->server, json_pack("{s:s, s:s, s:s, s:s, s:i, s:I}", "ContainerId", c->id, "ActivityId",
                             c->activity_id, "Type", FERRY_BRIDGE_NOTIFY_TYPE_OOM_KILL, "Operation",
                             "None", "Result", 0, FERRY_BRIDGE_OOM_KILL_COUNT,
                             (json_int_t)MIN(count, (guint64)G_MAXINT64)));
}

void gcs_oom_watch_free(GcsOomWatch *watch)
{
  if (watch == NULL)
    return;
  if (watch->source != NULL) {
    g_source_destroy(watch->source);
    g_source_unref(watch->source);
  }
  ferry_fd_clear(&watch->inotify_fd);
  /* The container was deleted (crun removed its leaf): its group goes too. It stays if
   * something still runs below it (a delete that failed); the next container of the id
   * then counts on from it. */
  if (rmdir(watch->group) < 0 && errno != ENOENT)
    ferry_log(FERRY_LOG_DEBUG, "gcs: remove the container's group", "group", watch->group, "error",
              g_strerror(errno), NULL);
  g_free(watch->group);
  g_free(watch->events);
  g_free(watch);
}
