/*
 * Entering a running container without crun: what `crun exec` does, done by the
 * agent itself, because under TCG starting crun (a dynamically linked program that
 * parses the whole container state) costs 100-150 ms, and an exec'd process should
 * cost a fork or two (docs/runtime.md, "exec without crun").
 *
 * The agent forks a monitor. The monitor joins the init's namespaces with one
 * setns(2) on the init's pidfd (so a recycled pid is never entered), then creates the
 * process with clone3(2) directly in the container's cgroup (CLONE_INTO_CGROUP) and
 * with a pidfd for it (CLONE_PIDFD), sends that pidfd and the pid to the agent over a
 * SEQPACKET socket, closes everything and waits: it exits with the process's exit
 * code (128 + the signal when one killed it), as crun does, so the rest of the
 * runtime treats both the same way. The monitor leads a new session, which the
 * process is in. The process applies what crun 1.8 applies to an exec'd process:
 * stdio, the bounding set, uid, gid and groups, the container's capability sets (an
 * exec brings none of its own yet, and crun then uses the container's), umask 022, the working
 * directory, and the environment (the exec's own, else the container's, with HOME from the
 * container's /etc/passwd), then execve(2)s the first PATH candidate that exists.
 *
 * What this does not do, crun does: a container with a seccomp profile, a personality
 * or a user namespace, and a process with a terminal, go through `crun exec`
 * (runtime_enter() says so and crun.c falls back).
 */
#include "runtime-impl.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/close_range.h>
#include <linux/sched.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/pidfd.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ferry/error.h"
#include "ferry/fd.h"
#include "ferry/log.h"

#define CGROUP2_MOUNT "/sys/fs/cgroup"
#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
/* Bounds on what is read from /proc and the container's /etc/passwd. */
#define MAX_CGROUP_FILE 4096
#define MAX_PASSWD (1 << 20)

/* ---- what is known of a container from its config.json ---- */

struct RuntimeInit {
  GPid pid;
  int pidfd;
  char *needs_crun; /* why entering it takes crun, or NULL */
  char **env;       /* process.env */
  guint64 caps[5];  /* process.capabilities: bounding, effective, inheritable, permitted, ambient */
};

static const char *const cap_set_names[5] = { "bounding", "effective", "inheritable", "permitted",
                                              "ambient" };

static const struct {
  const char *name;
  int value;
} cap_names[] = {
#define CAP(n)                                                                                     \
  {                                                                                                \
    "CAP_" #n, CAP_##n                                                                             \
  }
  CAP(CHOWN),
  CAP(DAC_OVERRIDE),
  CAP(DAC_READ_SEARCH),
  CAP(FOWNER),
  CAP(FSETID),
  CAP(KILL),
  CAP(SETGID),
  CAP(SETUID),
  CAP(SETPCAP),
  CAP(LINUX_IMMUTABLE),
  CAP(NET_BIND_SERVICE),
  CAP(NET_BROADCAST),
  CAP(NET_ADMIN),
  CAP(NET_RAW),
  CAP(IPC_LOCK),
  CAP(IPC_OWNER),
  CAP(SYS_MODULE),
  CAP(SYS_RAWIO),
  CAP(SYS_CHROOT),
  CAP(SYS_PTRACE),
  CAP(SYS_PACCT),
  CAP(SYS_ADMIN),
  CAP(SYS_BOOT),
  CAP(SYS_NICE),
  CAP(SYS_RESOURCE),
  CAP(SYS_TIME),
  CAP(SYS_TTY_CONFIG),
  CAP(MKNOD),
  CAP(LEASE),
  CAP(AUDIT_WRITE),
  CAP(AUDIT_CONTROL),
  CAP(SETFCAP),
  CAP(MAC_OVERRIDE),
  CAP(MAC_ADMIN),
  CAP(SYSLOG),
  CAP(WAKE_ALARM),
  CAP(BLOCK_SUSPEND),
  CAP(AUDIT_READ),
  CAP(PERFMON),
  CAP(BPF),
  CAP(CHECKPOINT_RESTORE),
#undef CAP
};

/* A capability list as a mask; names this build does not know are left out, with a
 * warning in crun's words, as crun does. */
static guint64 caps_from_json(json_t *list)
{
  guint64 mask = 0;
  size_t i;
  json_t *item;
  json_array_foreach(list, i, item)
  {
    const char *name = json_string_value(item);
    gboolean known = FALSE;
    for (gsize c = 0; name != NULL && c < G_N_ELEMENTS(cap_names); c++) {
      if (g_ascii_strcasecmp(name, cap_names[c].name) == 0) {
        mask |= G_GUINT64_CONSTANT(1) << cap_names[c].value;
        known = TRUE;
      }
    }
    if (!known)
      ferry_log(FERRY_LOG_DEBUG, "unknown capability ignored", "cap", name != NULL ? name : "?",
                NULL);
  }
  return mask;
}

static char **strv_from_json(json_t *list)
{
  g_autoptr(GPtrArray) out = g_ptr_array_new_with_free_func(g_free);
  size_t i;
  json_t *item;
  json_array_foreach(list, i, item)
  {
    if (json_is_string(item))
      g_ptr_array_add(out, g_strdup(json_string_value(item)));
  }
  g_ptr_array_add(out, NULL);
  return (char **)g_ptr_array_free(g_steal_pointer(&out), FALSE);
}

static const char *why_crun(json_t *config)
{
  json_t *linux_ = json_object_get(config, "linux");
  if (json_object_get(linux_, "seccomp") != NULL)
    return "the container has a seccomp profile";
  if (json_object_get(linux_, "personality") != NULL)
    return "the container sets a personality";
  size_t i;
  json_t *ns;
  json_array_foreach(json_object_get(linux_, "namespaces"), i, ns)
  {
    if (g_strcmp0(json_string_value(json_object_get(ns, "type")), "user") == 0)
      return "the container has a user namespace";
  }
  return NULL;
}

RuntimeInit *runtime_init_new(json_t *config, GPid pid, int pidfd)
{
  RuntimeInit *init = g_new0(RuntimeInit, 1);
  init->pid = pid;
  init->pidfd = pidfd;
  const char *why = pidfd < 0 ? "no pidfd for its init" : why_crun(config);
  init->needs_crun = g_strdup(why);
  json_t *process = json_object_get(config, "process");
  init->env = strv_from_json(json_object_get(process, "env"));
  json_t *caps = json_object_get(process, "capabilities");
  for (int s = 0; s < 5; s++)
    init->caps[s] = caps_from_json(json_object_get(caps, cap_set_names[s]));
  return init;
}

void runtime_init_free(RuntimeInit *init)
{
  if (init == NULL)
    return;
  ferry_fd_close_quietly(init->pidfd);
  g_free(init->needs_crun);
  g_strfreev(init->env);
  g_free(init);
}

GPid runtime_init_get_pid(const RuntimeInit *init)
{
  return init->pid;
}

/* ---- the plan: everything the monitor and the process need, made before fork ---- */

typedef struct {
  int init_pidfd;
  int ns_flags;
  int cgroup_fd; /* -1: stay in the agent's cgroup (crun runs without cgroups) */
  int report_fd;
  int stdio[3];
  uid_t uid;
  gid_t gid;
  int cap_last;
  int max_fd; /* without close_range(2): how far to mark fds close-on-exec */
  guint64 caps[5];
  const char *cwd;
  char **candidates; /* what to execve, in order */
  char **argv;
  char **envp;
} EnterPlan;

typedef enum {
  STEP_SETNS = 1,
  STEP_CLONE,
  STEP_SETSID,
  STEP_STDIO,
  STEP_BOUNDING,
  STEP_KEEPCAPS,
  STEP_SETGROUPS,
  STEP_SETGID,
  STEP_SETUID,
  STEP_CAPSET,
  STEP_AMBIENT,
  STEP_CHDIR,
  STEP_EXEC,
} EnterStep;

typedef enum { MSG_STARTED = 1, MSG_FAILED } MsgKind;

typedef struct {
  int kind;
  int step;
  int err;
  pid_t pid;
} EnterMsg;

/* ---- the monitor and the process: async-signal-safe code only ---- */

static void send_msg(int fd, const EnterMsg *msg, int pass_fd)
{
  struct iovec iov = { .iov_base = (void *)msg, .iov_len = sizeof(*msg) };
  union {
    char buf[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
  } control;
  struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
  if (pass_fd >= 0) {
    memset(&control, 0, sizeof(control));
    mh.msg_control = control.buf;
    mh.msg_controllen = sizeof(control.buf);
    struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &pass_fd, sizeof(int));
  }
  while (sendmsg(fd, &mh, MSG_NOSIGNAL) < 0 && errno == EINTR)
    ;
}

static void G_GNUC_NORETURN fail_at(const EnterPlan *plan, EnterStep step, int err)
{
  EnterMsg msg = { .kind = MSG_FAILED, .step = step, .err = err };
  send_msg(plan->report_fd, &msg, -1);
  _exit(127);
}

static gboolean has_cap(guint64 mask, int cap)
{
  return (mask >> cap) & 1;
}

static void G_GNUC_NORETURN process_main(const EnterPlan *plan)
{
  for (int i = 0; i < 3; i++) {
    if (dup2(plan->stdio[i], i) < 0)
      fail_at(plan, STEP_STDIO, errno);
  }
  /* crun hands pipes to the container's user, so that it can reopen /dev/stdout. */
  for (int i = 0; i < 3 && plan->uid != 0; i++) {
    struct stat st;
    if (fstat(i, &st) == 0 && S_ISFIFO(st.st_mode))
      (void)fchown(i, plan->uid, plan->gid);
  }

  /* crun's order: the bounding set while root, then keep the permitted set across
   * the uid change, then the sets themselves. Raw system calls: glibc's set*id
   * wrappers coordinate threads, and there is only this one. */
  for (int cap = 0; cap <= plan->cap_last; cap++) {
    if (!has_cap(plan->caps[0], cap) && prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && errno != EINVAL)
      fail_at(plan, STEP_BOUNDING, errno);
  }
  if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) < 0)
    fail_at(plan, STEP_KEEPCAPS, errno);
  if (syscall(SYS_setgroups, 0, NULL) < 0)
    fail_at(plan, STEP_SETGROUPS, errno);
  if (syscall(SYS_setresgid, plan->gid, plan->gid, plan->gid) < 0)
    fail_at(plan, STEP_SETGID, errno);
  /* Enter the directory while still privileged, and again as the user if that
   * failed (crun does the same for directories only the user may enter). */
  gboolean in_cwd = chdir(plan->cwd) == 0;
  if (syscall(SYS_setresuid, plan->uid, plan->uid, plan->uid) < 0)
    fail_at(plan, STEP_SETUID, errno);
  struct __user_cap_header_struct hdr = { .version = _LINUX_CAPABILITY_VERSION_3 };
  struct __user_cap_data_struct data[2];
  guint64 valid =
      plan->cap_last >= 63 ? G_MAXUINT64 : (G_GUINT64_CONSTANT(1) << (plan->cap_last + 1)) - 1;
  guint64 effective = plan->caps[1] & valid, inheritable = plan->caps[2] & valid,
          permitted = plan->caps[3] & valid;
  for (int w = 0; w < 2; w++) {
    data[w].effective = (guint32)(effective >> (32 * w));
    data[w].inheritable = (guint32)(inheritable >> (32 * w));
    data[w].permitted = (guint32)(permitted >> (32 * w));
  }
  if (syscall(SYS_capset, &hdr, data) < 0)
    fail_at(plan, STEP_CAPSET, errno);
  if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL &&
      errno != EPERM)
    fail_at(plan, STEP_AMBIENT, errno);
  for (int cap = 0; cap <= plan->cap_last; cap++) {
    if (has_cap(plan->caps[4], cap) && prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0) < 0 &&
        errno != EINVAL && errno != EPERM)
      fail_at(plan, STEP_AMBIENT, errno);
  }
  if (!in_cwd && chdir(plan->cwd) < 0)
    fail_at(plan, STEP_CHDIR, errno);
  umask(022);
  /* Everything but 0, 1 and 2 is closed by the exec (the report socket with it). */
  if (close_range(3, ~0U, CLOSE_RANGE_CLOEXEC) < 0) {
    for (int fd = 3; fd < plan->max_fd; fd++)
      (void)fcntl(fd, F_SETFD, FD_CLOEXEC);
  }

  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);
  /* execvpe's rule: go on past a missing candidate, report EACCES if one was seen. */
  int err = ENOENT;
  for (char **c = plan->candidates; *c != NULL; c++) {
    execve(*c, plan->argv, plan->envp);
    if (errno == EACCES)
      err = EACCES;
    else if (errno != ENOENT && errno != ENOTDIR) {
      err = errno;
      break;
    }
  }
  fail_at(plan, STEP_EXEC, err);
}

static void G_GNUC_NORETURN monitor_main(const EnterPlan *plan)
{
  runtime_reset_signal_dispositions();
  /* Signals stay blocked here (the agent blocked them around fork): the monitor
   * only waits, and only SIGKILL ends it. */
  if (setns(plan->init_pidfd, plan->ns_flags) < 0)
    fail_at(plan, STEP_SETNS, errno);
  /* The session is the monitor's, as with crun: the process is in it, not its leader. */
  if (setsid() < 0)
    fail_at(plan, STEP_SETSID, errno);
  int pidfd = -1;
  struct clone_args args = {
    .flags = CLONE_PIDFD,
    .pidfd = (guint64)(guintptr)&pidfd,
    .exit_signal = SIGCHLD,
  };
  if (plan->cgroup_fd >= 0) {
    args.flags |= CLONE_INTO_CGROUP;
    args.cgroup = (guint64)plan->cgroup_fd;
  }
  long pid = syscall(SYS_clone3, &args, sizeof(args));
  if (pid == 0)
    process_main(plan);
  if (pid < 0)
    fail_at(plan, STEP_CLONE, errno);
  EnterMsg msg = { .kind = MSG_STARTED, .pid = (pid_t)pid };
  send_msg(plan->report_fd, &msg, pidfd);
  /* Hold nothing the process's readers wait on: its stdio ends with it. */
  if (close_range(0, ~0U, 0) < 0) {
    for (int fd = 0; fd < 1024; fd++)
      (void)close(fd);
  }
  int status;
  while (waitpid((pid_t)pid, &status, 0) < 0) {
    if (errno != EINTR)
      _exit(127);
  }
  _exit(WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status));
}

/* ---- the agent's side ---- */

static const struct {
  const char *name;
  int flag;
} namespaces[] = {
  { "mnt", CLONE_NEWNS },    { "uts", CLONE_NEWUTS },   { "ipc", CLONE_NEWIPC },
  { "net", CLONE_NEWNET },   { "pid", CLONE_NEWPID },   { "cgroup", CLONE_NEWCGROUP },
  { "time", CLONE_NEWTIME }, { "user", CLONE_NEWUSER },
};

static gboolean same_file(const char *a, const char *b)
{
  struct stat sa, sb;
  return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

/* The namespaces of `pid` that are not the agent's: the ones to join. */
static int namespaces_to_join(GPid pid, gboolean *user_ns)
{
  int flags = 0;
  *user_ns = FALSE;
  for (gsize i = 0; i < G_N_ELEMENTS(namespaces); i++) {
    g_autofree char *self = g_strdup_printf("/proc/self/ns/%s", namespaces[i].name);
    g_autofree char *theirs = g_strdup_printf("/proc/%d/ns/%s", (int)pid, namespaces[i].name);
    if (access(self, F_OK) < 0)
      continue; /* a kernel without this namespace type */
    if (same_file(self, theirs))
      continue;
    if (namespaces[i].flag == CLONE_NEWUSER)
      *user_ns = TRUE;
    else
      flags |= namespaces[i].flag;
  }
  return flags;
}

/* "0::/path" of /proc/PID/cgroup (cgroup v2), or NULL. */
static char *unified_cgroup(const char *proc_file)
{
  g_autofree char *text = NULL;
  gsize len = 0;
  if (!g_file_get_contents(proc_file, &text, &len, NULL) || len > MAX_CGROUP_FILE)
    return NULL;
  g_auto(GStrv) lines = g_strsplit(text, "\n", -1);
  for (char **l = lines; *l != NULL; l++) {
    if (g_str_has_prefix(*l, "0::"))
      return g_strdup(*l + 3);
  }
  return NULL;
}

/* The container's cgroup directory (-1 when it is the agent's own: no cgroups), and
 * whether it is frozen. */
static gboolean open_cgroup(GPid pid, const char *id, int *fd_out, GError **error)
{
  *fd_out = -1;
  g_autofree char *proc = g_strdup_printf("/proc/%d/cgroup", (int)pid);
  g_autofree char *theirs = unified_cgroup(proc);
  g_autofree char *ours = unified_cgroup("/proc/self/cgroup");
  if (theirs == NULL) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND, "container %s is not running", id);
    return FALSE;
  }
  if (g_strcmp0(theirs, ours) == 0)
    return TRUE;
  g_autofree char *dir = g_build_filename(CGROUP2_MOUNT, theirs, NULL);
  g_autofree char *freeze_path = g_build_filename(dir, "cgroup.freeze", NULL);
  g_autofree char *freeze = NULL;
  if (g_file_get_contents(freeze_path, &freeze, NULL, NULL) && freeze[0] == '1') {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION, "container %s is paused", id);
    return FALSE;
  }
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0)
    return ferry_error_set_errno(error, errno, "open the cgroup %s of container %s", dir, id);
  *fd_out = fd;
  return TRUE;
}

/* HOME for `uid` from the container's /etc/passwd, else "/" (crun's rule). */
static char *home_of(GPid pid, uid_t uid)
{
  g_autofree char *path = g_strdup_printf("/proc/%d/root/etc/passwd", (int)pid);
  g_autofree char *text = NULL;
  gsize len = 0;
  struct stat st;
  if (stat(path, &st) == 0 && S_ISREG(st.st_mode) && st.st_size <= MAX_PASSWD &&
      g_file_get_contents(path, &text, &len, NULL)) {
    g_auto(GStrv) lines = g_strsplit(text, "\n", -1);
    for (char **l = lines; *l != NULL; l++) {
      g_auto(GStrv) f = g_strsplit(*l, ":", 7);
      guint64 v;
      if (g_strv_length(f) >= 6 && g_ascii_string_to_unsigned(f[2], 10, 0, G_MAXUINT32, &v, NULL) &&
          v == uid && f[5][0] != '\0')
        return g_strdup(f[5]);
    }
  }
  return g_strdup("/");
}

static char **environment(const RuntimeInit *init, const FerryProcessSpec *spec, uid_t uid)
{
  const char *const *base =
      spec->env != NULL && spec->env[0] != NULL ? spec->env : (const char *const *)init->env;
  g_autoptr(GPtrArray) env = g_ptr_array_new_with_free_func(g_free);
  gboolean has_home = FALSE;
  for (const char *const *e = base; e != NULL && *e != NULL; e++) {
    has_home = has_home || g_str_has_prefix(*e, "HOME=");
    g_ptr_array_add(env, g_strdup(*e));
  }
  if (!has_home) {
    g_autofree char *home = home_of(init->pid, uid);
    g_ptr_array_add(env, g_strconcat("HOME=", home, NULL));
  }
  g_ptr_array_add(env, NULL);
  return (char **)g_ptr_array_free(g_steal_pointer(&env), FALSE);
}

/* Where argv[0] may be, in the order the process tries them (in its own root). */
static char **candidates(const char *program, char *const *envp)
{
  g_autoptr(GPtrArray) out = g_ptr_array_new_with_free_func(g_free);
  if (strchr(program, '/') != NULL) {
    g_ptr_array_add(out, g_strdup(program));
  } else {
    const char *path = DEFAULT_PATH;
    for (char *const *e = envp; *e != NULL; e++) {
      if (g_str_has_prefix(*e, "PATH="))
        path = *e + strlen("PATH=");
    }
    g_auto(GStrv) dirs = g_strsplit(path, ":", -1);
    for (char **d = dirs; *d != NULL; d++) {
      if (**d != '\0')
        g_ptr_array_add(out, g_build_filename(*d, program, NULL));
    }
  }
  g_ptr_array_add(out, NULL);
  return (char **)g_ptr_array_free(g_steal_pointer(&out), FALSE);
}

static int last_capability(void)
{
  g_autofree char *text = NULL;
  guint64 v;
  if (g_file_get_contents("/proc/sys/kernel/cap_last_cap", &text, NULL, NULL) &&
      g_ascii_string_to_unsigned(g_strstrip(text), 10, 0, 63, &v, NULL))
    return (int)v;
  return CAP_LAST_CAP;
}

static gboolean step_error(const EnterPlan *plan, const EnterMsg *msg, GError **error)
{
  static const char *const what[] = {
    [STEP_SETNS] = "join the container's namespaces",
    [STEP_CLONE] = "create the process",
    [STEP_SETSID] = "new session",
    [STEP_STDIO] = "set up stdio",
    [STEP_BOUNDING] = "drop from the bounding set",
    [STEP_KEEPCAPS] = "keep capabilities",
    [STEP_SETGROUPS] = "drop supplementary groups",
    [STEP_SETGID] = "set gid",
    [STEP_SETUID] = "set uid",
    [STEP_CAPSET] = "set capabilities",
    [STEP_AMBIENT] = "set ambient capabilities",
    [STEP_CHDIR] = "chdir",
  };
  if (msg->step == STEP_EXEC)
    return ferry_error_set_errno(error, msg->err, "exec %s", plan->argv[0]);
  if (msg->step == STEP_SETNS && msg->err == ESRCH) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND, "start %s: the container has stopped",
                plan->argv[0]);
    return FALSE;
  }
  if (msg->step > 0 && msg->step < (int)G_N_ELEMENTS(what) && what[msg->step] != NULL) {
    if (msg->step == STEP_CHDIR)
      return ferry_error_set_errno(error, msg->err, "start %s: chdir to %s", plan->argv[0],
                                   plan->cwd);
    return ferry_error_set_errno(error, msg->err, "start %s: %s", plan->argv[0], what[msg->step]);
  }
  g_set_error(error, FERRY_ERROR, FERRY_ERROR_INTERNAL, "start %s: failed at step %d",
              plan->argv[0], msg->step);
  return FALSE;
}

static void reap(GPid pid)
{
  int status;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
    ;
}

/* Read the monitor's reports until both it and the process have let go of the
 * socket (the process's copy closes on exec). */
static gboolean read_reports(int fd, guint timeout_ms, EnterMsg *started, int *pidfd,
                             EnterMsg *failed, GError **error)
{
  gint64 deadline = g_get_monotonic_time() + (gint64)timeout_ms * 1000;
  for (;;) {
    gint64 remaining_ms = (deadline - g_get_monotonic_time()) / 1000;
    if (remaining_ms <= 0) {
      g_set_error(error, FERRY_ERROR, FERRY_ERROR_DEADLINE_EXCEEDED,
                  "the process did not start within %u ms", timeout_ms);
      return FALSE;
    }
    struct pollfd pfd = { .fd = fd, .events = POLLIN };
    int n = poll(&pfd, 1, (int)MIN(remaining_ms, G_MAXINT));
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      return ferry_error_set_errno(error, errno, "poll");
    if (n == 0)
      continue;
    EnterMsg msg;
    union {
      char buf[CMSG_SPACE(sizeof(int))];
      struct cmsghdr align;
    } control;
    struct iovec iov = { .iov_base = &msg, .iov_len = sizeof(msg) };
    struct msghdr mh = { .msg_iov = &iov,
                         .msg_iovlen = 1,
                         .msg_control = control.buf,
                         .msg_controllen = sizeof(control) };
    ssize_t got = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC);
    if (got < 0 && errno == EINTR)
      continue;
    if (got < 0)
      return ferry_error_set_errno(error, errno, "read the start report");
    if (got == 0)
      return TRUE;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm != NULL; cm = CMSG_NXTHDR(&mh, cm)) {
      if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
        int passed;
        memcpy(&passed, CMSG_DATA(cm), sizeof(int));
        if (*pidfd < 0)
          *pidfd = passed;
        else
          close(passed);
      }
    }
    if (got != sizeof(msg))
      continue;
    if (msg.kind == MSG_STARTED)
      *started = msg;
    else if (msg.kind == MSG_FAILED && failed->kind == 0)
      *failed = msg;
  }
}

FerryProcess *runtime_enter(const RuntimeInit *init, const char *id, const FerryProcessSpec *spec,
                            guint timeout_ms, FerryProcessStdio *stdio, const char **needs_crun,
                            GError **error)
{
  *needs_crun = NULL;
  if (init->needs_crun != NULL) {
    *needs_crun = init->needs_crun;
    return NULL;
  }
  if (spec->terminal) {
    *needs_crun = "the process has a terminal";
    return NULL;
  }
  gboolean user_ns;
  int ns_flags = namespaces_to_join(init->pid, &user_ns);
  if (user_ns) {
    *needs_crun = "the container has a user namespace";
    return NULL;
  }
  g_auto(FerryFd) cgroup_fd = -1;
  if (!open_cgroup(init->pid, id, &cgroup_fd, error))
    return NULL;
  /* What was read under /proc/PID was the init's if it still runs now: a pidfd's
   * process cannot be reaped and its pid reused while it is signalable. */
  if (pidfd_send_signal(init->pidfd, 0, NULL, 0) < 0) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND, "container %s is not running", id);
    return NULL;
  }

  uid_t uid = spec->has_user ? spec->uid : 0;
  gid_t gid = spec->has_user ? spec->gid : 0;
  g_auto(GStrv) envp = environment(init, spec, uid);
  g_auto(GStrv) paths = candidates(spec->argv[0], envp);
  g_auto(GStrv) argv = g_strdupv((char **)spec->argv);

  RuntimeStdio fds;
  if (!runtime_stdio_prepare(spec, FALSE, &fds, error))
    return NULL;
  int pair[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) < 0) {
    int errsv = errno;
    runtime_stdio_clear(&fds);
    ferry_error_set_errno(error, errsv, "start %s: report socket", spec->argv[0]);
    return NULL;
  }
  g_auto(FerryFd) report_r = pair[0];
  g_auto(FerryFd) report_w = pair[1];

  EnterPlan plan = {
    .init_pidfd = init->pidfd,
    .ns_flags = ns_flags,
    .cgroup_fd = cgroup_fd,
    .report_fd = report_w,
    .stdio = { fds.child[0], fds.child[1], fds.child[2] },
    .uid = uid,
    .gid = gid,
    .cap_last = last_capability(),
    .max_fd = runtime_highest_fd(),
    .cwd = spec->cwd != NULL ? spec->cwd : "/",
    .candidates = paths,
    .argv = argv,
    .envp = envp,
  };
  memcpy(plan.caps, init->caps, sizeof(plan.caps));

  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  pid_t monitor = fork();
  if (monitor == 0)
    monitor_main(&plan);
  int fork_errno = errno;
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  ferry_fd_clear(&report_w);
  FerryProcessStdio caller = fds.caller;
  fds.caller = (FerryProcessStdio){ -1, -1, -1, -1 };
  runtime_stdio_clear(&fds);
  if (monitor < 0) {
    ferry_process_stdio_close(&caller);
    ferry_error_set_errno(error, fork_errno, "start %s: fork", spec->argv[0]);
    return NULL;
  }

  EnterMsg started = { 0 }, failed = { 0 };
  g_auto(FerryFd) pidfd = -1;
  g_autoptr(GError) local = NULL;
  gboolean read_ok = read_reports(report_r, timeout_ms, &started, &pidfd, &failed, &local);
  if (read_ok && failed.kind == 0 && started.kind == MSG_STARTED && pidfd >= 0) {
    g_autofree char *pid_str = g_strdup_printf("%d", (int)started.pid);
    ferry_log(FERRY_LOG_DEBUG, "container process started without crun", "pid", pid_str,
              "container", id, NULL);
    *stdio = caller;
    return runtime_process_new(monitor, started.pid, ferry_fd_steal(&pidfd), -1);
  }

  /* Nothing of a failed start may outlive it. */
  if (pidfd >= 0)
    pidfd_send_signal(pidfd, SIGKILL, NULL, 0);
  kill(monitor, SIGKILL);
  reap(monitor);
  ferry_process_stdio_close(&caller);
  if (!read_ok) {
    g_propagate_prefixed_error(error, g_steal_pointer(&local), "start %s: ", spec->argv[0]);
    return NULL;
  }
  if (failed.kind != 0) {
    step_error(&plan, &failed, error);
    return NULL;
  }
  g_set_error(error, FERRY_ERROR, FERRY_ERROR_INTERNAL,
              "start %s: the monitor ended without a report", spec->argv[0]);
  return NULL;
}
