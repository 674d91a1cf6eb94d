/*
 * A container's resource usage from its cgroup (cgroup v2, which the guest image
 * mounts): the JSON the agent answers GetProperties' "Metrics" with (docs/agent.md,
 * GetProperties). The parsers are pure; gcs_container_metrics() reads the files.
 */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "ferry/error.h"
#include "gcs-impl.h"

#define CGROUP_ROOT "/sys/fs/cgroup"

/* "key value" lines (cpu.stat, memory.stat, memory.events) into {key: value}. */
json_t *gcs_parse_flat_keyed(const char *text)
{
  json_t *obj = json_object();
  g_auto(GStrv) lines = g_strsplit(text != NULL ? text : "", "\n", -1);
  for (char **l = lines; *l != NULL; l++) {
    g_auto(GStrv) kv = g_strsplit(g_strstrip(*l), " ", 2);
    guint64 v;
    if (kv[0] == NULL || kv[1] == NULL || kv[0][0] == '\0' ||
        !g_ascii_string_to_unsigned(kv[1], 10, 0, G_MAXUINT64, &v, NULL))
      continue;
    json_object_set_new(obj, kv[0], json_integer((json_int_t)MIN(v, (guint64)G_MAXINT64)));
  }
  return obj;
}

/* io.stat: "MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=.. ..." per device. */
json_t *gcs_parse_io_stat(const char *text)
{
  json_t *list = json_array();
  g_auto(GStrv) lines = g_strsplit(text != NULL ? text : "", "\n", -1);
  for (char **l = lines; *l != NULL; l++) {
    g_auto(GStrv) fields = g_strsplit(g_strstrip(*l), " ", -1);
    guint maj, min;
    if (fields[0] == NULL || sscanf(fields[0], "%u:%u", &maj, &min) != 2)
      continue;
    json_t *e = json_pack("{s:I, s:I}", "Major", (json_int_t)maj, "Minor", (json_int_t)min);
    for (char **f = fields + 1; *f != NULL; f++) {
      g_auto(GStrv) kv = g_strsplit(*f, "=", 2);
      guint64 v;
      if (kv[0] == NULL || kv[1] == NULL ||
          !g_ascii_string_to_unsigned(kv[1], 10, 0, G_MAXUINT64, &v, NULL))
        continue;
      json_object_set_new(e, kv[0], json_integer((json_int_t)MIN(v, (guint64)G_MAXINT64)));
    }
    json_array_append_new(list, e);
  }
  return list;
}

/* The file `name` of the cgroup `dir`, or NULL. */
static char *read_text(const char *dir, const char *name)
{
  g_autofree char *path = g_build_filename(dir, name, NULL);
  char *text = NULL;
  g_file_get_contents(path, &text, NULL, NULL);
  return text;
}

/* A single number, or "max" (no limit: 0, as containerd reports it). */
static json_t *read_single(const char *dir, const char *name)
{
  g_autofree char *text = read_text(dir, name);
  guint64 v = 0;
  if (text != NULL)
    g_ascii_string_to_unsigned(g_strstrip(text), 10, 0, G_MAXUINT64, &v, NULL);
  return json_integer((json_int_t)MIN(v, (guint64)G_MAXINT64));
}

/* The cgroup v2 directory of `pid` (its "0::" line in /proc/<pid>/cgroup). */
static char *cgroup_of(GPid pid, GError **error)
{
  g_autofree char *path = g_strdup_printf("/proc/%d/cgroup", pid);
  g_autofree char *text = NULL;
  if (!g_file_get_contents(path, &text, NULL, error))
    return NULL;
  g_auto(GStrv) lines = g_strsplit(text, "\n", -1);
  for (char **l = lines; *l != NULL; l++)
    if (g_str_has_prefix(*l, "0::"))
      return g_build_filename(CGROUP_ROOT, *l + 3, NULL);
  g_set_error(error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND, "process %d is in no cgroup v2 group",
              pid);
  return NULL;
}

/* The container's own cgroup: not the agent's (a container whose runtime left cgroups
 * alone, local mode, shares the agent's and has no figures of its own). */
static char *container_cgroup(const GcsContainer *c, GError **error)
{
  g_autofree char *dir = cgroup_of(c->init_pid, error);
  if (dir == NULL)
    return NULL;
  g_autofree char *own = cgroup_of(getpid(), NULL);
  if (own != NULL && g_str_equal(own, dir)) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_UNIMPLEMENTED,
                "container %s has no cgroup of its own", c->id);
    return NULL;
  }
  return g_steal_pointer(&dir);
}

json_t *gcs_container_metrics(const GcsContainer *c, GError **error)
{
  if (c->state != GCS_CONTAINER_RUNNING || c->init_pid <= 0) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION,
                "container %s is not running: no metrics", c->id);
    return NULL;
  }
  g_autofree char *dir = container_cgroup(c, error);
  if (dir == NULL)
    return NULL;
  g_autofree char *cpu = read_text(dir, "cpu.stat");
  g_autofree char *memory = read_text(dir, "memory.stat");
  g_autofree char *events = read_text(dir, "memory.events");
  g_autofree char *io = read_text(dir, "io.stat");
  return json_pack("{s:i, s:{s:o, s:o}, s:o, s:o, s:o, s:o, s:o, s:o}", "CgroupVersion", 2, "Pids",
                   "current", read_single(dir, "pids.current"), "max", read_single(dir, "pids.max"),
                   "CPU", gcs_parse_flat_keyed(cpu), "Memory", gcs_parse_flat_keyed(memory),
                   "MemoryCurrent", read_single(dir, "memory.current"), "MemoryMax",
                   read_single(dir, "memory.max"), "MemoryEvents", gcs_parse_flat_keyed(events),
                   "IO", gcs_parse_io_stat(io));
}

GArray *gcs_container_pids(const GcsContainer *c, GError **error)
{
  if (c->state != GCS_CONTAINER_RUNNING || c->init_pid <= 0) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION, "container %s is not running",
                c->id);
    return NULL;
  }
  g_autofree char *dir = container_cgroup(c, error);
  if (dir == NULL)
    return NULL;
  g_autofree char *path = g_build_filename(dir, "cgroup.procs", NULL);
  g_autofree char *text = NULL;
  if (!g_file_get_contents(path, &text, NULL, error))
    return NULL;
  GArray *pids = g_array_new(FALSE, FALSE, sizeof(GPid));
  g_auto(GStrv) lines = g_strsplit(text, "\n", -1);
  for (char **l = lines; *l != NULL; l++) {
    guint64 v;
    if (g_ascii_string_to_unsigned(g_strstrip(*l), 10, 1, G_MAXINT32, &v, NULL)) {
      GPid pid = (GPid)v;
      g_array_append_val(pids, pid);
    }
  }
  return pids;
}
