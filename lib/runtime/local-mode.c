/*
 * Local mode: containers on a host whose cgroup layout crun refuses (the hybrid
 * v1 + v2 one). crun looks at what is mounted on /sys/fs/cgroup; in a private mount
 * namespace we can show it a cgroup2 there without touching the host's mounts, and
 * crun's "disabled" cgroup manager then leaves cgroups alone.
 */
#include <errno.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/vfs.h>

#include <linux/magic.h>

#include "ferry/error.h"
#include "ferry/runtime.h"

#define CGROUP_MOUNT "/sys/fs/cgroup"

gboolean ferry_runtime_enter_local_mode(GError **error)
{
  if (unshare(CLONE_NEWNS) < 0)
    return ferry_error_set_errno(error, errno, "local mode: new mount namespace");
  /* Otherwise our mounts would propagate back to the host's namespace. */
  if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
    return ferry_error_set_errno(error, errno, "local mode: make mounts private");
  struct statfs fs;
  if (statfs(CGROUP_MOUNT, &fs) == 0 && fs.f_type == CGROUP2_SUPER_MAGIC)
    return TRUE;
  if (mount("cgroup2", CGROUP_MOUNT, "cgroup2", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
    return ferry_error_set_errno(error, errno, "local mode: mount cgroup2 on %s", CGROUP_MOUNT);
  return TRUE;
}
