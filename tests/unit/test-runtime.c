/*
 * The runtime: processes in the "UVM" (fork/exec on this host) and containers through
 * crun in local mode (a private mount namespace with cgroup2 on /sys/fs/cgroup, set up
 * in main before anything else). Every process a test starts ends before the test
 * does; nothing is killed by name.
 */
#include <errno.h>
#include <fcntl.h>
#include <glib-unix.h>
#include <signal.h>
#include <string.h>
#include <sys/pidfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ferry/error.h"
#include "ferry/fd.h"
#include "ferry/json.h"
#include "ferry/runtime.h"
#include "test-util.h"

/* Bound on every wait; a test that hits it fails. */
#define WAIT_MS 20000

/* ---- a failing test (abort, or meson's SIGTERM on timeout) leaves no process ---- */

#define MAX_GUARDED 256
/* pidfds of what the current test started: never a recycled pid. */
static int guarded[MAX_GUARDED];
static volatile sig_atomic_t n_guarded;

static void guard(GPid pid)
{
  int fd = pidfd_open(pid, 0);
  if (fd >= 0 && n_guarded < MAX_GUARDED)
    guarded[n_guarded++] = fd;
  else if (fd >= 0)
    close(fd);
}

static void on_fatal_signal(int signum)
{
  for (int i = 0; i < n_guarded; i++)
    syscall(SYS_pidfd_send_signal, guarded[i], SIGKILL, NULL, 0);
  raise(signum); /* SA_RESETHAND: the default action, once this returns */
}

/* Each test runs through this; its processes have all ended when it returns. */
static void run_guarded(gconstpointer test)
{
  ((void (*)(void))test)();
  for (int i = 0; i < n_guarded; i++)
    close(guarded[i]);
  n_guarded = 0;
}

static void add_test(const char *path, void (*test)(void))
{
  g_test_add_data_func(path, (gconstpointer)test, run_guarded);
}

/* ---- helpers: reading a caller's fd to EOF, recording the exit ---- */

typedef struct {
  int fd;
  GString *data;
  gboolean eof;
  guint source;
} Sink;

static gboolean sink_ready(gint fd, GIOCondition cond, gpointer user_data)
{
  Sink *sink = user_data;
  char buf[4096];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n > 0) {
      g_string_append_len(sink->data, buf, n);
      continue;
    }
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && errno == EAGAIN)
      return G_SOURCE_CONTINUE;
    /* 0 from a pipe, EIO from a pty master whose slave is closed everywhere. */
    sink->eof = TRUE;
    sink->source = 0;
    return G_SOURCE_REMOVE;
  }
}

/* Reads fd (taken) on the main loop into data until EOF. */
static Sink *sink_new(int fd)
{
  g_assert_cmpint(fd, >=, 0);
  Sink *sink = g_new0(Sink, 1);
  sink->fd = fd;
  sink->data = g_string_new(NULL);
  sink->source = g_unix_fd_add(fd, G_IO_IN | G_IO_HUP | G_IO_ERR, sink_ready, sink);
  return sink;
}

static void sink_free(Sink *sink)
{
  if (sink->source != 0)
    g_source_remove(sink->source);
  ferry_fd_close_quietly(sink->fd);
  g_string_free(sink->data, TRUE);
  g_free(sink);
}
G_DEFINE_AUTOPTR_CLEANUP_FUNC(Sink, sink_free)

typedef struct {
  gboolean done;
  int code;
  guint calls;
  guint destroyed; /* by record_destroy */
} ExitRecord;

static void record_exit(FerryProcess *process, int exit_code, gpointer user_data)
{
  ExitRecord *record = user_data;
  record->done = TRUE;
  record->code = exit_code;
  record->calls++;
}

static gboolean set_flag(gpointer user_data)
{
  *(gboolean *)user_data = TRUE;
  return G_SOURCE_REMOVE;
}

/* Iterate the main loop until done(data) or WAIT_MS; returns done(data). */
static gboolean run_until(gboolean (*done)(gpointer), gpointer data)
{
  gboolean expired = FALSE;
  guint timer = g_timeout_add(WAIT_MS, set_flag, &expired);
  while (!done(data) && !expired)
    g_main_context_iteration(NULL, TRUE);
  if (!expired)
    g_source_remove(timer);
  return done(data);
}

typedef struct {
  Sink *sink;
  const char *needle;
} TextWait;

static gboolean sink_has_text(gpointer user_data)
{
  TextWait *w = user_data;
  return memmem(w->sink->data->str, w->sink->data->len, w->needle, strlen(w->needle)) != NULL ||
         w->sink->eof;
}

/* Wait until the sink's data contains needle; FALSE on EOF or timeout without it. */
static gboolean wait_for_text(Sink *sink, const char *needle)
{
  TextWait w = { sink, needle };
  run_until(sink_has_text, &w);
  return memmem(sink->data->str, sink->data->len, needle, strlen(needle)) != NULL;
}

static gboolean sink_at_eof(gpointer user_data)
{
  return ((Sink *)user_data)->eof;
}

static gboolean wait_eof(Sink *sink)
{
  return run_until(sink_at_eof, sink);
}

static gboolean exit_recorded(gpointer user_data)
{
  return ((ExitRecord *)user_data)->done;
}

/* Wait for the exit callback; its code, or -1 on timeout (which fails the caller's
 * comparison). The process agrees with the callback. */
static int wait_exit(FerryProcess *process, ExitRecord *record)
{
  if (!run_until(exit_recorded, record))
    return -1;
  g_assert_cmpuint(record->calls, ==, 1);
  int code = -1;
  g_assert_true(ferry_process_has_exited(process, &code));
  g_assert_cmpint(code, ==, record->code);
  return record->code;
}

static FerryProcess *spawn_ok(const FerryProcessSpec *spec, FerryProcessStdio *io,
                              ExitRecord *record)
{
  g_autoptr(GError) error = NULL;
  FerryProcess *process = ferry_process_spawn(spec, io, &error);
  g_assert_no_error(error);
  g_assert_nonnull(process);
  g_assert_cmpint(ferry_process_get_pid(process), >, 0);
  guard(ferry_process_get_pid(process));
  ferry_process_set_exit_func(process, record_exit, record, NULL);
  return process;
}

static void write_str(int fd, const char *s)
{
  g_autoptr(GError) error = NULL;
  g_assert_true(ferry_fd_set_nonblocking(fd, FALSE, &error));
  g_assert_true(ferry_write_all(fd, s, strlen(s), &error));
  g_assert_true(ferry_fd_set_nonblocking(fd, TRUE, &error));
}

static void assert_caller_fd(int fd)
{
  g_assert_cmpint(fd, >=, 0);
  g_assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
  g_assert_true(fcntl(fd, F_GETFL) & O_NONBLOCK);
}

/* No child of ours is left, reaped or not. */
static void assert_no_children(void)
{
  siginfo_t info = { 0 };
  int r = waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT);
  g_assert_cmpint(r, ==, -1);
  g_assert_cmpint(errno, ==, ECHILD);
}

/* ---- processes in the UVM ---- */

static void test_echo_stdout_then_eof(void)
{
  const char *argv[] = { "echo", "hello", NULL };
  FerryProcessSpec spec = { .argv = argv, .stdout_mode = FERRY_STDIO_PIPE };
  FerryProcessStdio io;
  ExitRecord ex = { 0 };
  g_autoptr(FerryProcess) p = spawn_ok(&spec, &io, &ex);
  g_assert_cmpint(io.stdin_fd, ==, -1);
  g_assert_cmpint(io.stderr_fd, ==, -1);
  g_assert_cmpint(io.terminal_fd, ==, -1);
  assert_caller_fd(io.stdout_fd);
  g_autoptr(Sink) out = sink_new(io.stdout_fd);
  g_assert_true(wait_eof(out));
  g_assert_cmpstr(out->data->str, ==, "hello\n");
  g_assert_cmpint(wait_exit(p, &ex), ==, 0);
  int code = -1;
  g_assert_true(ferry_process_has_exited(p, &code));
  g_assert_cmpint(code, ==, 0);
}

static void test_stdin_to_stdout_eof_after_close(void)
{
  const char *argv[] = { "cat", NULL };
  FerryProcessSpec spec = { .argv = argv,
                            .stdin_mode = FERRY_STDIO_PIPE,
                            .stdout_mode = FERRY_STDIO_PIPE };
  FerryProcessStdio io;
  ExitRecord ex = { 0 };
  g_autoptr(FerryProcess) p = spawn_ok(&spec, &io, &ex);
  assert_caller_fd(io.stdin_fd);
  g_autoptr(Sink) out = sink_new(io.stdout_fd);
  write_str(io.stdin_fd, "one\ntwo\n");
  g_assert_true(wait_for_text(out, "one\ntwo\n"));
  g_assert_false(out->eof);
  g_assert_false(ferry_process_has_exited(p, NULL));
  ferry_fd_clear(&io.stdin_fd);
  g_assert_true(wait_eof(out));
  g_assert_cmpstr(out->data->str, ==, "one\ntwo\n");
  g_assert_cmpint(wait_exit(p, &ex), ==, 0);
}

static void test_stderr_pipe(void)
{
  const char *argv[] = { "sh", "-c", "echo out; echo err >&2", NULL };
  FerryProcessSpec spec = { .argv = argv,
                            .stdout_mode = FERRY_STDIO_PIPE,
                            .stderr_mode = FERRY_STDIO_PIPE };
  FerryProcessStdio io;
  ExitRecord ex = { 0 };
  g_autoptr(FerryProcess) p = spawn_ok(&spec, &io, &ex);
  g_autoptr(Sink) out = sink_new(io.stdout_fd);
  g_autoptr(Sink) err = sink_new(io.stderr_fd);
  g_assert_true(wait_eof(out));
  g_assert_true(wait_eof(err));
  g_assert_cmpstr(out->data->str, ==, "out\n");
  g_assert_cmpstr(err->data->str, ==, "err\n");
  g_assert_cmpint(wait_exit(p, &ex), ==, 0);
}

static void test_exit_code(void)
{
  const char *argv[] = { "sh", "-c", "exit 7", NULL };
  FerryProcessSpec spec = { .argv = argv };
  FerryProcessStdio io;
  ExitRecord ex = { 0 };
  g_autoptr(FerryProcess) p = spawn_ok(&spec, &io, &ex);
  g_assert_cmpint(wait_exit(p, &ex), ==, 7);
}

static void test_kill_code(int signum, int expected)
{
  const char *argv[] = { "sleep", "100", NULL };
  FerryProcessSpec spec = { .argv = argv };
  FerryProcessStdio io;
  ExitRecord ex = { 0 };
  g_autoptr(FerryProcess) p = spawn_ok(&spec, &io, &ex);
  g_autoptr(GError) error = NULL;
  g_assert_true(ferry_process_signal(p, signum, &error));
  g_assert_no_error(error);
  g_assert_cmpint(wait_exit(p, &ex), ==, expected);
  /* Once exited, there is nothing to signal. */
  g_assert_false(ferry_process_signal(p, signum, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND);
}

static void test_sigterm_is_143(void)
{
  test_kill_code(SIGTERM, 143);
}

static void test_sigkill_is_137(void)
{
  test_kill_code(SIGKILL, 137);
}

static void test_missing_binary_is_an_error(void)
{
  g_autoptr(GError) error = NULL;
  FerryProcessStdio io;

  /* An absolute path: execve itself fails; the child reports it and is reaped. */
  const char *abs_argv[] = { "/nonexistent/ferry-no-such-program", NULL };
  FerryProcessSpec spec = { .argv = abs_argv, .stdout_mode = FERRY_STDIO_PIPE };
  g_assert_null(ferry_process_spawn(&spec, &io, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND);
  g_assert_nonnull(strstr(error->message, "exec /nonexistent/ferry-no-such-program"));
  g_assert_nonnull(strstr(error->message, g_strerror(ENOENT)));
  g_assert_cmpint(io.stdout_fd, ==, -1);
  assert_no_children();
  g_clear_error(&error);

  /* A bare name: not found in PATH, no fork at all. */
  const char *name_argv[] = { "ferry-no-such-program", NULL };
  spec.argv = name_argv;
  g_assert_null(ferry_process_spawn(&spec, &io, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND);
  g_assert_nonnull(strstr(error->message, "PATH"));
  assert_no_children();
}

static void test_not_executable_is_permission_denied(void)
{
  g_autofree char *dir = test_make_tmpdir();
  g_autofree char *file = g_build_filename(dir, "script", NULL);
  g_assert_true(g_file_set_contents(file, "#!/bin/sh\necho no\n", -1, NULL));
  g_assert_cmpint(chmod(file, 0644), ==, 0);
  const char *argv[] = { file, NULL };
  FerryProcessSpec spec = { .argv = argv };
  FerryProcessStdio io;
  g_autoptr(GError) error = NULL;
  g_assert_null(ferry_process_spawn(&spec, &io, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_PERMISSION_DENIED);
  assert_no_children();
  test_rm_rf(dir);
}

static void test_bad_cwd_is_an_error(void)
{
  const char *argv[] = { "true", NULL };
  FerryProcessSpec spec = { .argv = argv, .cwd = "/nonexistent/ferry-dir" };
  FerryProcessStdio io;
  g_autoptr(GError) error = NULL;
  g_assert_null(ferry_process_spawn(&spec, &io, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND);
  g_assert_nonnull(strstr(error->message, "chdir to /nonexistent/ferry-dir"));
  assert_no_children();
}

static void test_empty_argv_is_invalid(void)
{
  const char *argv[] = { NULL };
  FerryProcessSpec spec = { .argv = argv };
  FerryProcessStdio io;
  g_autoptr(GError) error = NULL;
  g_assert_null(ferry_process_spawn(&spec, &io, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
}

static void test_env_and_cwd_honoured(void)
{
  g_autofree char *dir = test_make_tmpdir();
  g_autofree char *real = realpath(dir, NULL);
  g_setenv("FERRY_TEST_LEAK", "1", TRUE);
  const char *argv[] = { "sh", "-c", "echo \"$FOO|$(pwd)|${FERRY_TEST_LEAK:-unset}\"", NULL };
  const char *env[] = { "FOO=bar baz", "PATH=/usr/bin:/bin", NULL };
  FerryProcessSpec spec = { .argv = argv, .env = env, .cwd = dir, .stdout_mode = FERRY_STDIO_PIPE };
  FerryProcessStdio io;
  ExitRecord ex = { 0 };
  g_autoptr(FerryProcess) p = spawn_ok(&spec, &io, &ex);
  g_autoptr(Sink) out = sink_new(io.stdout_fd);
  g_assert_true(wait_eof(out));
  g_autofree char *expected = g_strdup_printf("bar baz|%s|unset\n", real);
  g_assert_cmpstr(out->data->str, ==, expected);
  g_assert_cmpint(wait_exit(p, &ex), ==, 0);
  g_unsetenv("FERRY_TEST_LEAK");
  test_rm_rf(dir);
}

static void test_cwd_defaults_to_root(void)
{
  const char *argv[] = { "/bin/sh", "-c", "pwd", NULL };
  FerryProcessSpec spec = { .argv = argv, .stdout_mode = FERRY_STDIO_PIPE };
  FerryProcessStdio io;
  ExitRecord ex = { 0 };
  g_autoptr(FerryProcess) p = spawn_ok(&spec, &io, &ex);
  g_autoptr(Sink) out = sink_new(io.stdout_fd);
  g_assert_true(wait_eof(out));
  g_assert_cmpstr(out->data->str, ==, "/\n");
  g_assert_cmpint(wait_exit(p, &ex), ==, 0);
}

static void test_user_and_group(void)
{
  if (geteuid() != 0) {
    g_test_skip("switching users needs root");
    return;
  }
  const char *argv[] = { "sh", "-c", "id -u; id -g; id -G", NULL };
  FerryProcessSpec spec = {
    .argv = argv, .has_user = TRUE, .uid = 65534, .gid = 65533, .stdout_mode = FERRY_STDIO_PIPE
  };
  FerryProcessStdio io;
  ExitRecord ex = { 0 };
  g_autoptr(FerryProcess) p = spawn_ok(&spec, &io, &ex);
  g_autoptr(Sink) out = sink_new(io.stdout_fd);
  g_assert_true(wait_eof(out));
  g_assert_cmpstr(out->data->str, ==, "65534\n65533\n65533\n");
  g_assert_cmpint(wait_exit(p, &ex), ==, 0);
}

/* Only 0, 1, 2 reach the program (ls adds 3, its directory handle). */
static void test_only_stdio_inherited(void)
{
  int leaky = open("/dev/null", O_RDONLY); /* no O_CLOEXEC, on purpose */
  g_assert_cmpint(leaky, >=, 0);
  const char *argv[] = { "ls", "/proc/self/fd", NULL };
  FerryProcessSpec spec = { .argv = argv, .stdout_mode = FERRY_STDIO_PIPE };
  FerryProcessStdio io;
  ExitRecord ex = { 0 };
  g_autoptr(FerryProcess) p = spawn_ok(&spec, &io, &ex);
  g_autoptr(Sink) out = sink_new(io.stdout_fd);
  g_assert_true(wait_eof(out));
  g_assert_cmpstr(out->data->str, ==, "0\n1\n2\n3\n");
  g_assert_cmpint(wait_exit(p, &ex), ==, 0);
  close(leaky);
}

/* An ignored and a blocked signal of the agent do not reach the process. */
static void test_signals_reset(void)
{
  struct sigaction ign = { .sa_handler = SIG_IGN }, old_action;
  g_assert_cmpint(sigaction(SIGUSR1, &ign, &old_action), ==, 0);
  sigset_t block, old_mask;
  sigemptyset(&block);
  sigaddset(&block, SIGUSR2);
  g_assert_cmpint(sigprocmask(SIG_BLOCK, &block, &old_mask), ==, 0);

  const char *argv[] = { "grep", "-E", "^Sig(Blk|Ign):", "/proc/self/status", NULL };
  FerryProcessSpec spec = { .argv = argv, .stdout_mode = FERRY_STDIO_PIPE };
  FerryProcessStdio io;
  ExitRecord ex = { 0 };
  g_autoptr(FerryProcess) p = spawn_ok(&spec, &io, &ex);
  g_assert_cmpint(sigprocmask(SIG_SETMASK, &old_mask, NULL), ==, 0);
  g_assert_cmpint(sigaction(SIGUSR1, &old_action, NULL), ==, 0);

  g_autoptr(Sink) out = sink_new(io.stdout_fd);
  g_assert_true(wait_eof(out));
  g_assert_cmpstr(out->data->str, ==, "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n");
  g_assert_cmpint(wait_exit(p, &ex), ==, 0);
}

/* Fields 6 and 7 of /proc/PID/stat: session id and controlling tty number. */
static void test_terminal_is_controlling(void)
{
  const char *argv[] = { "sh", "-c", "echo \"ids $$ $(cut -d' ' -f6,7 /proc/$$/stat)\"", NULL };
  FerryProcessSpec spec = { .argv = argv, .terminal = TRUE, .rows = 24, .cols = 80 };
  FerryProcessStdio io;
  ExitRecord ex = { 0 };
  g_autoptr(FerryProcess) p = spawn_ok(&spec, &io, &ex);
  g_assert_cmpint(io.stdin_fd, ==, -1);
  g_assert_cmpint(io.stdout_fd, ==, -1);
  assert_caller_fd(io.terminal_fd);
  g_autoptr(Sink) term = sink_new(io.terminal_fd);
  g_assert_true(wait_eof(term));
  g_assert_cmpint(wait_exit(p, &ex), ==, 0);
  int pid = -1, sid = -1, tty = 0;
  const char *line = strstr(term->data->str, "ids ");
  g_assert_nonnull(line);
  g_assert_cmpint(sscanf(line, "ids %d %d %d", &pid, &sid, &tty), ==, 3);
  g_assert_cmpint(pid, ==, ferry_process_get_pid(p));
  g_assert_cmpint(sid, ==, pid); /* a session leader */
  g_assert_cmpint(tty, !=, 0);   /* with a controlling terminal */
}

/* Initial size, a resize seen by the next `stty size`, input through the master. The
 * shell reads a line between the two sizes, so the resize is done before it asks. */
static void test_terminal_size_resize_and_input(void)
{
  const char *argv[] = { "sh", "-c", "stty size; read x; stty size; read y; echo got $y", NULL };
  FerryProcessSpec spec = { .argv = argv, .terminal = TRUE, .rows = 24, .cols = 80 };
  FerryProcessStdio io;
  ExitRecord ex = { 0 };
  g_autoptr(FerryProcess) p = spawn_ok(&spec, &io, &ex);
  int master = io.terminal_fd;
  g_autoptr(Sink) term = sink_new(io.terminal_fd);
  g_assert_true(wait_for_text(term, "24 80\r\n"));
  g_autoptr(GError) error = NULL;
  g_assert_true(ferry_process_resize(p, 40, 120, &error));
  g_assert_no_error(error);
  write_str(master, "\n");
  g_assert_true(wait_for_text(term, "40 120\r\n"));
  write_str(master, "hi\n");
  g_assert_true(wait_for_text(term, "got hi\r\n"));
  g_assert_true(wait_eof(term));
  g_assert_cmpint(wait_exit(p, &ex), ==, 0);
  g_assert_false(ferry_process_resize(p, 10, 10, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND);
}

static void test_resize_without_terminal_fails(void)
{
  const char *argv[] = { "true", NULL };
  FerryProcessSpec spec = { .argv = argv };
  FerryProcessStdio io;
  ExitRecord ex = { 0 };
  g_autoptr(FerryProcess) p = spawn_ok(&spec, &io, &ex);
  g_autoptr(GError) error = NULL;
  g_assert_false(ferry_process_resize(p, 40, 120, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION);
  g_assert_cmpint(wait_exit(p, &ex), ==, 0);
}

#define MANY 50

static gboolean all_done(gpointer user_data)
{
  gpointer *state = user_data;
  Sink **sinks = state[0];
  ExitRecord *exits = state[1];
  for (int i = 0; i < MANY; i++) {
    if (!sinks[i]->eof || !exits[i].done)
      return FALSE;
  }
  return TRUE;
}

static void test_many_at_once(void)
{
  FerryProcess *procs[MANY];
  Sink *sinks[MANY];
  ExitRecord exits[MANY] = { 0 };
  for (int i = 0; i < MANY; i++) {
    g_autofree char *var = g_strdup_printf("I=%d", i);
    const char *argv[] = { "sh", "-c", "echo $I", NULL };
    const char *env[] = { var, NULL };
    FerryProcessSpec spec = { .argv = argv, .env = env, .stdout_mode = FERRY_STDIO_PIPE };
    FerryProcessStdio io;
    procs[i] = spawn_ok(&spec, &io, &exits[i]);
    sinks[i] = sink_new(io.stdout_fd);
  }
  gpointer state[2] = { sinks, exits };
  g_assert_true(run_until(all_done, state));
  for (int i = 0; i < MANY; i++) {
    g_autofree char *expected = g_strdup_printf("%d\n", i);
    g_assert_cmpstr(sinks[i]->data->str, ==, expected);
    g_assert_cmpint(exits[i].code, ==, 0);
    g_assert_cmpuint(exits[i].calls, ==, 1);
    sink_free(sinks[i]);
    ferry_process_unref(procs[i]);
  }
}

/* The exit is reported when the process is reaped, even while a descendant still
 * holds its stdout: draining is the caller's (docs/runtime.md). */
static void test_exit_reported_before_output_drained(void)
{
  const char *argv[] = { "sh", "-c", "exec 3<&0; (read x <&3; echo late $x) & exit 3", NULL };
  FerryProcessSpec spec = { .argv = argv,
                            .stdin_mode = FERRY_STDIO_PIPE,
                            .stdout_mode = FERRY_STDIO_PIPE };
  FerryProcessStdio io;
  ExitRecord ex = { 0 };
  g_autoptr(FerryProcess) p = spawn_ok(&spec, &io, &ex);
  g_autoptr(Sink) out = sink_new(io.stdout_fd);
  g_assert_cmpint(wait_exit(p, &ex), ==, 3);
  /* The background reader holds stdout open until it gets its line. */
  g_assert_false(out->eof);
  write_str(io.stdin_fd, "now\n");
  ferry_fd_clear(&io.stdin_fd);
  g_assert_true(wait_eof(out));
  g_assert_cmpstr(out->data->str, ==, "late now\n");
}

static gboolean process_exited(gpointer user_data)
{
  return ferry_process_has_exited(user_data, NULL);
}

static void record_destroy(gpointer user_data)
{
  ((ExitRecord *)user_data)->destroyed++;
}

/* A callback set after the exit runs from the loop; a replaced one is destroyed. */
static void test_exit_func_set_late(void)
{
  const char *argv[] = { "sh", "-c", "exit 5", NULL };
  FerryProcessSpec spec = { .argv = argv };
  FerryProcessStdio io;
  g_autoptr(GError) error = NULL;
  g_autoptr(FerryProcess) p = ferry_process_spawn(&spec, &io, &error);
  g_assert_no_error(error);
  guard(ferry_process_get_pid(p));
  g_assert_true(run_until(process_exited, p));

  ExitRecord first = { 0 }, second = { 0 };
  ferry_process_set_exit_func(p, record_exit, &first, record_destroy);
  ferry_process_set_exit_func(p, record_exit, &second, record_destroy);
  g_assert_cmpuint(first.destroyed, ==, 1);
  g_assert_false(second.done); /* not synchronously */
  g_assert_cmpint(wait_exit(p, &second), ==, 5);
  g_assert_false(first.done);
  g_assert_cmpuint(second.destroyed, ==, 0);
  ferry_process_set_exit_func(p, NULL, NULL, NULL);
  g_assert_cmpuint(second.destroyed, ==, 1);
}

static gboolean reaped(gpointer user_data)
{
  GPid pid = GPOINTER_TO_INT(user_data);
  siginfo_t info = { 0 };
  return waitid(P_PID, (id_t)pid, &info, WEXITED | WNOHANG | WNOWAIT) < 0 && errno == ECHILD;
}

/* Dropping every reference before the exit still reaps the process. */
static void test_reaped_without_references(void)
{
  const char *argv[] = { "sh", "-c", "read x", NULL };
  FerryProcessSpec spec = { .argv = argv, .stdin_mode = FERRY_STDIO_PIPE };
  FerryProcessStdio io;
  g_autoptr(GError) error = NULL;
  FerryProcess *p = ferry_process_spawn(&spec, &io, &error);
  g_assert_no_error(error);
  GPid pid = ferry_process_get_pid(p);
  guard(pid);
  ferry_process_unref(p);
  g_assert_false(reaped(GINT_TO_POINTER(pid)));
  ferry_process_stdio_close(&io);
  g_assert_true(run_until(reaped, GINT_TO_POINTER(pid)));
}

static void test_exit_code_from_wait_status(void)
{
  g_assert_cmpint(ferry_process_exit_code_from_wait_status(0), ==, 0);
  g_assert_cmpint(ferry_process_exit_code_from_wait_status(7 << 8), ==, 7);
  g_assert_cmpint(ferry_process_exit_code_from_wait_status(SIGKILL), ==, 137);
  g_assert_cmpint(ferry_process_exit_code_from_wait_status(SIGTERM | 0x80), ==, 143); /* core */
}

/* ---- containers through crun ---- */

/* Why container tests cannot run here, or NULL. Set in main. */
static char *crun_problem;
/* A busybox root file system shared by the container tests (read-only in them). */
static char *rootfs_parent;
static char *rootfs;

typedef struct {
  char *dir;
  char *bundle;
  FerryRuntime *runtime;
} CrunEnv;

static void crun_env_free(CrunEnv *env)
{
  ferry_runtime_free(env->runtime);
  test_rm_rf(env->dir);
  g_free(env->dir);
  g_free(env->bundle);
  g_free(env);
}
G_DEFINE_AUTOPTR_CLEANUP_FUNC(CrunEnv, crun_env_free)

/* A private state dir and a bundle over the shared root, with `config` (taken; NULL:
 * the busybox spec) and runtime options `base` (NULL: none; cgroups are always
 * disabled); NULL (the test skipped) when containers cannot run here. */
static CrunEnv *crun_env_new_with(json_t *config_in, const FerryRuntimeOptions *base)
{
  g_autoptr(json_t) config = config_in;
  if (crun_problem != NULL) {
    g_test_skip(crun_problem);
    return NULL;
  }
  g_autoptr(CrunEnv) env = g_new0(CrunEnv, 1);
  env->dir = test_make_tmpdir();
  env->bundle = g_build_filename(env->dir, "bundle", NULL);
  g_assert_cmpint(g_mkdir_with_parents(env->bundle, 0700), ==, 0);
  g_autofree char *link = g_build_filename(env->bundle, "rootfs", NULL);
  g_assert_cmpint(symlink(rootfs, link), ==, 0);
  g_autofree char *config_path = g_build_filename(env->bundle, "config.json", NULL);
  if (config == NULL)
    config = test_busybox_oci_spec();
  g_assert_nonnull(config);
  g_assert_cmpint(json_dump_file(config, config_path, JSON_INDENT(1)), ==, 0);
  g_autofree char *state = g_build_filename(env->dir, "state", NULL);
  FerryRuntimeOptions options = { 0 };
  if (base != NULL)
    options = *base;
  options.cgroup_manager = "disabled";
  g_autoptr(GError) error = NULL;
  env->runtime = ferry_runtime_new(state, &options, &error);
  g_assert_no_error(error);
  return g_steal_pointer(&env);
}

static CrunEnv *crun_env_new(void)
{
  return crun_env_new_with(NULL, NULL);
}

static FerryProcess *run_ok(CrunEnv *env, const char *id, const FerryProcessSpec *spec,
                            FerryProcessStdio *io, ExitRecord *record)
{
  g_autoptr(GError) error = NULL;
  FerryProcess *p = ferry_runtime_run_container(env->runtime, id, env->bundle, spec, io, &error);
  g_assert_no_error(error);
  g_assert_nonnull(p);
  guard(ferry_process_get_pid(p));
  ferry_process_set_exit_func(p, record_exit, record, NULL);
  return p;
}

static FerryProcess *exec_ok(CrunEnv *env, const char *id, const FerryProcessSpec *spec,
                             FerryProcessStdio *io, ExitRecord *record)
{
  g_autoptr(GError) error = NULL;
  FerryProcess *p = ferry_runtime_exec_in_container(env->runtime, id, spec, io, &error);
  g_assert_no_error(error);
  g_assert_nonnull(p);
  guard(ferry_process_get_pid(p));
  ferry_process_set_exit_func(p, record_exit, record, NULL);
  return p;
}

static void assert_container_gone(CrunEnv *env, const char *id)
{
  g_autoptr(GError) error = NULL;
  g_assert_false(ferry_runtime_get_container_state(env->runtime, id, NULL, NULL, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND);
}

/* An init that says "up" and waits for a line on stdin: it ends when the test closes
 * stdin, or dies, so it never outlives the test. */
static const char *const waiting_init[] = { "sh", "-c", "echo up; read x; echo bye $x", NULL };

static FerryProcess *run_waiting_init(CrunEnv *env, const char *id, FerryProcessStdio *io,
                                      ExitRecord *record, Sink **out)
{
  FerryProcessSpec spec = { .argv = waiting_init,
                            .stdin_mode = FERRY_STDIO_PIPE,
                            .stdout_mode = FERRY_STDIO_PIPE };
  FerryProcess *init = run_ok(env, id, &spec, io, record);
  *out = sink_new(io->stdout_fd);
  io->stdout_fd = -1;
  g_assert_true(wait_for_text(*out, "up\n"));
  return init;
}

static void stop_waiting_init(FerryProcess *init, FerryProcessStdio *io, ExitRecord *record,
                              Sink *out)
{
  write_str(io->stdin_fd, "now\n");
  ferry_fd_clear(&io->stdin_fd);
  g_assert_true(wait_eof(out));
  g_assert_cmpstr(out->data->str, ==, "up\nbye now\n");
  g_assert_cmpint(wait_exit(init, record), ==, 0);
}

static void test_container_run_exec_and_stop(void)
{
  g_autoptr(CrunEnv) env = crun_env_new();
  if (env == NULL)
    return;
  FerryProcessStdio io;
  ExitRecord ex = { 0 };
  Sink *out_raw;
  g_autoptr(FerryProcess) init = run_waiting_init(env, "c1", &io, &ex, &out_raw);
  g_autoptr(Sink) out = out_raw;

  FerryContainerStatus status;
  GPid pid = 0;
  g_autoptr(GError) error = NULL;
  g_assert_true(ferry_runtime_get_container_state(env->runtime, "c1", &status, &pid, &error));
  g_assert_no_error(error);
  g_assert_cmpint(status, ==, FERRY_CONTAINER_RUNNING);
  g_assert_cmpint(pid, ==, ferry_process_get_pid(init));

  /* The exec'd process sees the init as its pid 1: same pid namespace, same root. */
  const char *argv[] = { "cat", "/proc/1/cmdline", NULL };
  FerryProcessSpec spec = { .argv = argv, .stdout_mode = FERRY_STDIO_PIPE };
  FerryProcessStdio eio;
  ExitRecord eex = { 0 };
  g_autoptr(FerryProcess) exec = exec_ok(env, "c1", &spec, &eio, &eex);
  g_assert_cmpint(ferry_process_get_pid(exec), !=, ferry_process_get_pid(init));
  g_autoptr(Sink) eout = sink_new(eio.stdout_fd);
  g_assert_true(wait_eof(eout));
  static const char cmdline[] = "sh\0-c\0echo up; read x; echo bye $x";
  g_assert_cmpmem(eout->data->str, eout->data->len, cmdline, sizeof(cmdline));
  g_assert_cmpint(wait_exit(exec, &eex), ==, 0);

  stop_waiting_init(init, &io, &ex, out);
  g_assert_true(ferry_runtime_delete_container(env->runtime, "c1", &error));
  g_assert_no_error(error);
  assert_container_gone(env, "c1");
}

static void test_container_init_exit_code(void)
{
  g_autoptr(CrunEnv) env = crun_env_new();
  if (env == NULL)
    return;
  const char *argv[] = { "sh", "-c", "exit 7", NULL };
  FerryProcessSpec spec = { .argv = argv };
  FerryProcessStdio io;
  ExitRecord ex = { 0 };
  g_autoptr(FerryProcess) init = run_ok(env, "c1", &spec, &io, &ex);
  g_assert_cmpint(wait_exit(init, &ex), ==, 7);
  /* crun run removes a container whose init exited. */
  assert_container_gone(env, "c1");
  g_autoptr(GError) error = NULL;
  g_assert_true(ferry_runtime_delete_container(env->runtime, "c1", &error));
}

/* Its pid 1 ignores SIGTERM without a handler; SIGKILL always works. */
static void test_container_init_sigkill_is_137(void)
{
  g_autoptr(CrunEnv) env = crun_env_new();
  if (env == NULL)
    return;
  const char *argv[] = { "sleep", "100", NULL };
  FerryProcessSpec spec = { .argv = argv };
  FerryProcessStdio io;
  ExitRecord ex = { 0 };
  g_autoptr(FerryProcess) init = run_ok(env, "c1", &spec, &io, &ex);
  g_autoptr(GError) error = NULL;
  g_assert_true(ferry_process_signal(init, SIGKILL, &error));
  g_assert_cmpint(wait_exit(init, &ex), ==, 137);
  assert_container_gone(env, "c1");
}

static void test_container_kill_through_crun(void)
{
  g_autoptr(CrunEnv) env = crun_env_new();
  if (env == NULL)
    return;
  FerryProcessStdio io;
  ExitRecord ex = { 0 };
  Sink *out_raw;
  g_autoptr(FerryProcess) init = run_waiting_init(env, "c1", &io, &ex, &out_raw);
  g_autoptr(Sink) out = out_raw;
  g_autoptr(GError) error = NULL;
  g_assert_true(ferry_runtime_kill_container(env->runtime, "c1", SIGKILL, FALSE, &error));
  g_assert_no_error(error);
  g_assert_cmpint(wait_exit(init, &ex), ==, 137);
  g_assert_true(wait_eof(out));
  g_assert_cmpstr(out->data->str, ==, "up\n");
  ferry_process_stdio_close(&io);
  g_assert_false(ferry_runtime_kill_container(env->runtime, "c1", SIGKILL, FALSE, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND);
}

static void test_container_exec_sigterm_is_143(void)
{
  g_autoptr(CrunEnv) env = crun_env_new();
  if (env == NULL)
    return;
  FerryProcessStdio io;
  ExitRecord ex = { 0 };
  Sink *out_raw;
  g_autoptr(FerryProcess) init = run_waiting_init(env, "c1", &io, &ex, &out_raw);
  g_autoptr(Sink) out = out_raw;

  const char *argv[] = { "sleep", "100", NULL };
  FerryProcessSpec spec = { .argv = argv };
  FerryProcessStdio eio;
  ExitRecord eex = { 0 };
  g_autoptr(FerryProcess) exec = exec_ok(env, "c1", &spec, &eio, &eex);
  g_autoptr(GError) error = NULL;
  g_assert_true(ferry_process_signal(exec, SIGTERM, &error));
  g_assert_no_error(error);
  g_assert_cmpint(wait_exit(exec, &eex), ==, 143);
  stop_waiting_init(init, &io, &ex, out);
}

static void test_container_exec_env_and_cwd(void)
{
  g_autoptr(CrunEnv) env = crun_env_new();
  if (env == NULL)
    return;
  FerryProcessStdio io;
  ExitRecord ex = { 0 };
  Sink *out_raw;
  g_autoptr(FerryProcess) init = run_waiting_init(env, "c1", &io, &ex, &out_raw);
  g_autoptr(Sink) out = out_raw;

  const char *argv[] = { "sh", "-c", "echo \"$FOO|$(pwd)|$(hostname)\"", NULL };
  const char *envv[] = { "FOO=bar", "PATH=/bin", NULL };
  FerryProcessSpec spec = {
    .argv = argv, .env = envv, .cwd = "/tmp", .stdout_mode = FERRY_STDIO_PIPE
  };
  FerryProcessStdio eio;
  ExitRecord eex = { 0 };
  g_autoptr(FerryProcess) exec = exec_ok(env, "c1", &spec, &eio, &eex);
  g_autoptr(Sink) eout = sink_new(eio.stdout_fd);
  g_assert_true(wait_eof(eout));
  g_assert_cmpstr(eout->data->str, ==, "bar|/tmp|ferry-test\n");
  g_assert_cmpint(wait_exit(exec, &eex), ==, 0);
  stop_waiting_init(init, &io, &ex, out);
}

static void test_container_exec_missing_binary(void)
{
  g_autoptr(CrunEnv) env = crun_env_new();
  if (env == NULL)
    return;
  FerryProcessStdio io;
  ExitRecord ex = { 0 };
  Sink *out_raw;
  g_autoptr(FerryProcess) init = run_waiting_init(env, "c1", &io, &ex, &out_raw);
  g_autoptr(Sink) out = out_raw;

  const char *argv[] = { "/nonexistent", NULL };
  FerryProcessSpec spec = { .argv = argv, .stdout_mode = FERRY_STDIO_PIPE };
  FerryProcessStdio eio;
  g_autoptr(GError) error = NULL;
  g_assert_null(ferry_runtime_exec_in_container(env->runtime, "c1", &spec, &eio, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND);
  g_assert_nonnull(strstr(error->message, "/nonexistent"));
  g_assert_cmpint(eio.stdout_fd, ==, -1);
  stop_waiting_init(init, &io, &ex, out);
}

static void test_container_errors(void)
{
  g_autoptr(CrunEnv) env = crun_env_new();
  if (env == NULL)
    return;
  const char *argv[] = { "true", NULL };
  FerryProcessSpec spec = { .argv = argv };
  FerryProcessStdio io;
  g_autoptr(GError) error = NULL;

  g_assert_null(ferry_runtime_exec_in_container(env->runtime, "nope", &spec, &io, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND);
  g_clear_error(&error);

  g_assert_null(ferry_runtime_run_container(env->runtime, "../x", env->bundle, &spec, &io, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
  g_clear_error(&error);

  g_assert_null(
      ferry_runtime_run_container(env->runtime, "c1", "/nonexistent/bundle", &spec, &io, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND);
  g_clear_error(&error);

  /* crun's own message comes back. */
  const char *missing[] = { "/nonexistent", NULL };
  FerryProcessSpec bad = { .argv = missing };
  g_assert_null(ferry_runtime_run_container(env->runtime, "c2", env->bundle, &bad, &io, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND);
  g_assert_nonnull(strstr(error->message, "/nonexistent"));
  g_clear_error(&error);
  assert_container_gone(env, "c2");

  /* A second container with a running one's id. */
  ExitRecord ex = { 0 };
  Sink *out_raw;
  g_autoptr(FerryProcess) init = run_waiting_init(env, "c3", &io, &ex, &out_raw);
  g_autoptr(Sink) out = out_raw;
  FerryProcessStdio io2;
  g_assert_null(ferry_runtime_run_container(env->runtime, "c3", env->bundle, &spec, &io2, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_ALREADY_EXISTS);
  stop_waiting_init(init, &io, &ex, out);
}

static void test_container_terminal_init_and_resize(void)
{
  g_autoptr(CrunEnv) env = crun_env_new();
  if (env == NULL)
    return;
  const char *argv[] = { "sh", "-c", "stty size; read x; stty size; read y; echo got $y", NULL };
  FerryProcessSpec spec = { .argv = argv, .terminal = TRUE, .rows = 24, .cols = 80 };
  FerryProcessStdio io;
  ExitRecord ex = { 0 };
  g_autoptr(FerryProcess) init = run_ok(env, "c1", &spec, &io, &ex);
  g_assert_cmpint(io.stdin_fd, ==, -1);
  assert_caller_fd(io.terminal_fd);
  int master = io.terminal_fd;
  g_autoptr(Sink) term = sink_new(io.terminal_fd);
  g_assert_true(wait_for_text(term, "24 80\r\n"));
  g_autoptr(GError) error = NULL;
  g_assert_true(ferry_process_resize(init, 40, 120, &error));
  g_assert_no_error(error);
  write_str(master, "\n");
  g_assert_true(wait_for_text(term, "40 120\r\n"));
  write_str(master, "hi\n");
  g_assert_true(wait_for_text(term, "got hi\r\n"));
  g_assert_cmpint(wait_exit(init, &ex), ==, 0);
  g_assert_true(wait_eof(term));
}

static void test_container_exec_with_terminal(void)
{
  g_autoptr(CrunEnv) env = crun_env_new();
  if (env == NULL)
    return;
  FerryProcessStdio io;
  ExitRecord ex = { 0 };
  Sink *out_raw;
  g_autoptr(FerryProcess) init = run_waiting_init(env, "c1", &io, &ex, &out_raw);
  g_autoptr(Sink) out = out_raw;

  const char *argv[] = { "sh", "-c", "stty size; test -t 0 && echo tty", NULL };
  FerryProcessSpec spec = { .argv = argv, .terminal = TRUE, .rows = 30, .cols = 100 };
  FerryProcessStdio eio;
  ExitRecord eex = { 0 };
  g_autoptr(FerryProcess) exec = exec_ok(env, "c1", &spec, &eio, &eex);
  g_autoptr(Sink) term = sink_new(eio.terminal_fd);
  g_assert_true(wait_for_text(term, "30 100\r\ntty\r\n"));
  g_assert_cmpint(wait_exit(exec, &eex), ==, 0);
  stop_waiting_init(init, &io, &ex, out);
}

static void test_container_delete_running(void)
{
  g_autoptr(CrunEnv) env = crun_env_new();
  if (env == NULL)
    return;
  FerryProcessStdio io;
  ExitRecord ex = { 0 };
  Sink *out_raw;
  g_autoptr(FerryProcess) init = run_waiting_init(env, "c1", &io, &ex, &out_raw);
  g_autoptr(Sink) out = out_raw;
  g_autoptr(GError) error = NULL;
  g_assert_true(ferry_runtime_delete_container(env->runtime, "c1", &error));
  g_assert_no_error(error);
  g_assert_cmpint(wait_exit(init, &ex), ==, 137);
  g_assert_true(wait_eof(out));
  g_assert_cmpstr(out->data->str, ==, "up\n");
  assert_container_gone(env, "c1");
  ferry_process_stdio_close(&io);
}

/* ---- exec without crun ---- */

/* A crun that refuses `exec` and runs everything else with the real one: what still
 * execs through a runtime using it did so without crun. */
static char *crun_refusing_exec(const char *dir)
{
  g_autofree char *real = g_find_program_in_path("crun");
  g_assert_nonnull(real);
  g_autofree char *script = g_strdup_printf(
      "#!/bin/sh\n"
      "for a; do\n"
      "  case $a in --log=*) log=${a#--log=};; exec) echo 'exec refused' >> \"${log:-/dev/null}\"; "
      "exit 1;; esac\n"
      "done\n"
      "exec %s \"$@\"\n",
      real);
  char *path = g_build_filename(dir, "crun-refusing-exec", NULL);
  g_assert_true(g_file_set_contents(path, script, -1, NULL));
  g_assert_cmpint(chmod(path, 0755), ==, 0);
  return path;
}

/* The busybox spec with capabilities and an environment of its own. */
static json_t *spec_with_caps(void)
{
  json_t *config = test_busybox_oci_spec();
  json_t *process = json_object_get(config, "process");
  json_object_set_new(process, "env", json_pack("[s, s]", "PATH=/bin", "FROM_CONFIG=yes"));
  json_object_set_new(process, "capabilities",
                      json_pack("{s:[s,s,s,s,s], s:[s,s,s,s,s], s:[s,s,s,s,s], s:[s], s:[s]}",
                                "bounding", "CAP_CHOWN", "CAP_KILL", "CAP_NET_RAW", "CAP_SETUID",
                                "CAP_SETGID", "effective", "CAP_CHOWN", "CAP_KILL", "CAP_NET_RAW",
                                "CAP_SETUID", "CAP_SETGID", "permitted", "CAP_CHOWN", "CAP_KILL",
                                "CAP_NET_RAW", "CAP_SETUID", "CAP_SETGID", "inheritable",
                                "CAP_KILL", "ambient", "CAP_KILL"));
  return config;
}

static char *exec_output(FerryRuntime *runtime, const char *id, const FerryProcessSpec *spec,
                         int *exit_code)
{
  FerryProcessStdio io;
  ExitRecord ex = { 0 };
  g_autoptr(GError) error = NULL;
  g_autoptr(FerryProcess) p = ferry_runtime_exec_in_container(runtime, id, spec, &io, &error);
  g_assert_no_error(error);
  g_assert_nonnull(p);
  guard(ferry_process_get_pid(p));
  ferry_process_set_exit_func(p, record_exit, &ex, NULL);
  g_autoptr(Sink) out = sink_new(io.stdout_fd);
  io.stdout_fd = -1;
  g_assert_true(wait_eof(out));
  *exit_code = wait_exit(p, &ex);
  ferry_process_stdio_close(&io);
  return g_strdup(out->data->str);
}

/* The init's namespaces, as the exec'd process prints them. */
static char *namespaces_of(GPid pid)
{
  GString *out = g_string_new(NULL);
  const char *names[] = { "mnt", "pid", "net", "ipc", "uts" };
  for (gsize i = 0; i < G_N_ELEMENTS(names); i++) {
    g_autofree char *path = g_strdup_printf("/proc/%d/ns/%s", (int)pid, names[i]);
    g_autofree char *target = g_file_read_link(path, NULL);
    g_assert_nonnull(target);
    g_string_append_printf(out, "%s\n", target);
  }
  return g_string_free(out, FALSE);
}

/* With a crun that cannot exec, exec still works: in the init's namespaces, with its
 * exit code, its signals, its errors. */
static void test_container_exec_without_crun(void)
{
  if (crun_problem != NULL) {
    g_test_skip(crun_problem);
    return;
  }
  g_autofree char *dir = test_make_tmpdir();
  g_autofree char *crun = crun_refusing_exec(dir);
  FerryRuntimeOptions options = { .crun_path = crun };
  g_autoptr(CrunEnv) env = crun_env_new_with(NULL, &options);
  FerryProcessStdio io;
  ExitRecord ex = { 0 };
  Sink *out_raw;
  g_autoptr(FerryProcess) init = run_waiting_init(env, "c1", &io, &ex, &out_raw);
  g_autoptr(Sink) out = out_raw;

  const char *ns_argv[] = { "sh", "-c",
                            "for n in mnt pid net ipc uts; do readlink /proc/self/ns/$n; done",
                            NULL };
  FerryProcessSpec spec = { .argv = ns_argv, .stdout_mode = FERRY_STDIO_PIPE };
  int code = -1;
  g_autofree char *ns = exec_output(env->runtime, "c1", &spec, &code);
  g_autofree char *expected = namespaces_of(ferry_process_get_pid(init));
  g_assert_cmpstr(ns, ==, expected);
  g_assert_cmpint(code, ==, 0);

  /* Its pid 1 is the init; its own pid is the container's. */
  const char *pid_argv[] = { "sh", "-c", "cat /proc/1/cmdline | tr '\\0' ' '; echo; exit 9", NULL };
  spec.argv = pid_argv;
  g_autofree char *cmdline = exec_output(env->runtime, "c1", &spec, &code);
  g_assert_cmpstr(cmdline, ==, "sh -c echo up; read x; echo bye $x \n");
  g_assert_cmpint(code, ==, 9);

  /* Signals reach the process itself, not its monitor. */
  const char *sleep_argv[] = { "sleep", "100", NULL };
  FerryProcessSpec sleep_spec = { .argv = sleep_argv };
  FerryProcessStdio sio;
  ExitRecord sex = { 0 };
  g_autoptr(FerryProcess) sleeper = exec_ok(env, "c1", &sleep_spec, &sio, &sex);
  g_autofree char *comm_path =
      g_strdup_printf("/proc/%d/comm", (int)ferry_process_get_pid(sleeper));
  g_autofree char *comm = NULL;
  g_assert_true(g_file_get_contents(comm_path, &comm, NULL, NULL));
  g_assert_cmpstr(comm, ==, "sleep\n");
  g_autoptr(GError) error = NULL;
  g_assert_true(ferry_process_signal(sleeper, SIGTERM, &error));
  g_assert_cmpint(wait_exit(sleeper, &sex), ==, 143);

  /* A program that is not there (looked up in the container's PATH, not ours): an
   * error naming it, no process. */
  const char *missing_argv[] = { "ferry-no-such-program", NULL };
  FerryProcessSpec missing = { .argv = missing_argv, .stdout_mode = FERRY_STDIO_PIPE };
  FerryProcessStdio mio;
  g_assert_null(ferry_runtime_exec_in_container(env->runtime, "c1", &missing, &mio, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND);
  g_assert_nonnull(strstr(error->message, "ferry-no-such-program"));
  g_assert_cmpint(mio.stdout_fd, ==, -1);
  g_clear_error(&error);
  /* The test's PATH has programs the container's root does not. */
  const char *host_only[] = { "meson", NULL };
  missing.argv = host_only;
  g_assert_null(ferry_runtime_exec_in_container(env->runtime, "c1", &missing, &mio, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND);
  g_clear_error(&error);
  const char *bad_cwd_argv[] = { "true", NULL };
  FerryProcessSpec bad_cwd = { .argv = bad_cwd_argv, .cwd = "/nonexistent" };
  g_assert_null(ferry_runtime_exec_in_container(env->runtime, "c1", &bad_cwd, &mio, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND);
  g_assert_nonnull(strstr(error->message, "/nonexistent"));
  g_clear_error(&error);

  stop_waiting_init(init, &io, &ex, out);
  /* A stopped container: crun took its state with it. */
  g_assert_null(ferry_runtime_exec_in_container(env->runtime, "c1", &spec, &mio, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND);
  assert_no_children();
  test_rm_rf(dir);
}

/* What the agent gives an exec'd process is what crun exec gives it: the same probe,
 * once each way, prints the same, as root and as another user. */
static void test_container_exec_matches_crun(void)
{
  g_autoptr(CrunEnv) env = crun_env_new_with(spec_with_caps(), NULL);
  if (env == NULL)
    return;
  g_autofree char *state = g_build_filename(env->dir, "state", NULL);
  FerryRuntimeOptions crun_options = { .cgroup_manager = "disabled", .exec_with_crun = TRUE };
  g_autoptr(GError) error = NULL;
  g_autoptr(FerryRuntime) with_crun = ferry_runtime_new(state, &crun_options, &error);
  g_assert_no_error(error);

  FerryProcessStdio io;
  ExitRecord ex = { 0 };
  Sink *out_raw;
  g_autoptr(FerryProcess) init = run_waiting_init(env, "c1", &io, &ex, &out_raw);
  g_autoptr(Sink) out = out_raw;

  const char *probe[] = {
    "sh", "-c",
    "grep -E '^(Uid|Gid|Groups|Cap[A-Za-z]+|NoNewPrivs|Seccomp):' /proc/self/status; "
    "for n in mnt pid net ipc uts cgroup; do readlink /proc/self/ns/$n; done; "
    "cat /proc/self/cgroup /proc/self/oom_score_adj /proc/self/limits; umask; pwd; "
    "cut -d' ' -f5,6,8 /proc/self/stat; "
    "env | grep -v '^PWD=' | sort; "
    "ls -l /proc/self/fd/ | sed -n 's/.* \\([0-9]* ->\\)/\\1/p' | sed 's/pipe:.*/pipe/'; "
    "test -w /proc/self/fd/1 && echo stdout-writable; exit 3",
    NULL
  };
  const char *own_env[] = { "PATH=/bin", "OWN=1", NULL };
  const FerryProcessSpec specs[] = {
    { .argv = probe, .stdout_mode = FERRY_STDIO_PIPE },
    { .argv = probe, .env = own_env, .cwd = "/tmp", .stdout_mode = FERRY_STDIO_PIPE },
    { .argv = probe,
      .has_user = TRUE,
      .uid = 1000,
      .gid = 1000,
      .stdout_mode = FERRY_STDIO_PIPE,
      .stderr_mode = FERRY_STDIO_PIPE },
  };
  for (gsize i = 0; i < G_N_ELEMENTS(specs); i++) {
    int native_code = -1, crun_code = -1;
    g_autofree char *native = exec_output(env->runtime, "c1", &specs[i], &native_code);
    g_autofree char *crun = exec_output(with_crun, "c1", &specs[i], &crun_code);
    g_test_message("probe %zu:\n%s", i, native);
    g_assert_cmpstr(native, ==, crun);
    g_assert_cmpint(native_code, ==, 3);
    g_assert_cmpint(crun_code, ==, 3);
    g_assert_nonnull(strstr(native, i == 1 ? "OWN=1" : "FROM_CONFIG=yes"));
  }
  stop_waiting_init(init, &io, &ex, out);
}

/* A container with a seccomp profile is entered by crun (which applies it). */
static void test_container_exec_seccomp_uses_crun(void)
{
  if (crun_problem != NULL) {
    g_test_skip(crun_problem);
    return;
  }
  g_autofree char *dir = test_make_tmpdir();
  g_autofree char *crun = crun_refusing_exec(dir);
  FerryRuntimeOptions options = { .crun_path = crun };
  json_t *config = test_busybox_oci_spec();
  json_object_set_new(json_object_get(config, "linux"), "seccomp",
                      json_pack("{s:s}", "defaultAction", "SCMP_ACT_ALLOW"));
  g_autoptr(CrunEnv) env = crun_env_new_with(config, &options);
  FerryProcessStdio io;
  ExitRecord ex = { 0 };
  Sink *out_raw;
  g_autoptr(FerryProcess) init = run_waiting_init(env, "c1", &io, &ex, &out_raw);
  g_autoptr(Sink) out = out_raw;
  const char *argv[] = { "true", NULL };
  FerryProcessSpec spec = { .argv = argv };
  FerryProcessStdio eio;
  g_autoptr(GError) error = NULL;
  g_assert_null(ferry_runtime_exec_in_container(env->runtime, "c1", &spec, &eio, &error));
  g_assert_nonnull(error);
  g_assert_nonnull(strstr(error->message, "exec refused"));
  stop_waiting_init(init, &io, &ex, out);
  test_rm_rf(dir);
}

/* A stand-in for crun (a shell script), to reach the runtime's failure paths on any
 * host: a runtime using it and a bundle with an empty config. */

static CrunEnv *fake_crun_new(const char *script, guint start_timeout_ms)
{
  CrunEnv *fake = g_new0(CrunEnv, 1);
  fake->dir = test_make_tmpdir();
  g_autofree char *crun = g_build_filename(fake->dir, "crun", NULL);
  g_assert_true(g_file_set_contents(crun, script, -1, NULL));
  g_assert_cmpint(chmod(crun, 0755), ==, 0);
  fake->bundle = g_build_filename(fake->dir, "bundle", NULL);
  g_assert_cmpint(g_mkdir_with_parents(fake->bundle, 0700), ==, 0);
  g_autofree char *config = g_build_filename(fake->bundle, "config.json", NULL);
  g_assert_true(g_file_set_contents(config, "{}", -1, NULL));
  g_autofree char *state = g_build_filename(fake->dir, "state", NULL);
  FerryRuntimeOptions options = { .crun_path = crun, .start_timeout_ms = start_timeout_ms };
  g_autoptr(GError) error = NULL;
  fake->runtime = ferry_runtime_new(state, &options, &error);
  g_assert_no_error(error);
  return fake;
}

/* crun's last log line is the error, with a code from its errno text. */
static void test_crun_failure_message_from_log(void)
{
  g_autofree char *script =
      g_strdup_printf("#!/bin/sh\n"
                      "for a; do case $a in --log=*) log=${a#--log=};; esac; done\n"
                      "echo 'a warning first' >> \"$log\"\n"
                      "echo 'open `/x`: %s' >> \"$log\"\n"
                      "exit 1\n",
                      g_strerror(EACCES));
  g_autoptr(CrunEnv) fake = fake_crun_new(script, 0);
  const char *argv[] = { "true", NULL };
  FerryProcessSpec spec = { .argv = argv, .stdout_mode = FERRY_STDIO_PIPE };
  FerryProcessStdio io;
  g_autoptr(GError) error = NULL;
  g_assert_null(ferry_runtime_run_container(fake->runtime, "c1", fake->bundle, &spec, &io, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_PERMISSION_DENIED);
  g_autofree char *expected = g_strdup_printf(
      "crun run container c1: crun exited with 1: open `/x`: %s", g_strerror(EACCES));
  g_assert_cmpstr(error->message, ==, expected);
  g_assert_cmpint(io.stdout_fd, ==, -1);
  assert_no_children();
}

/* A crun that never starts the process is killed and reaped at the start timeout. */
static void test_crun_start_timeout(void)
{
  g_autoptr(CrunEnv) fake = fake_crun_new("#!/bin/sh\nexec sleep 100\n", 300);
  const char *argv[] = { "true", NULL };
  FerryProcessSpec spec = { .argv = argv };
  FerryProcessStdio io;
  g_autoptr(GError) error = NULL;
  g_assert_null(ferry_runtime_run_container(fake->runtime, "c1", fake->bundle, &spec, &io, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_DEADLINE_EXCEEDED);
  assert_no_children();
}

static void test_runtime_needs_crun(void)
{
  g_autofree char *dir = test_make_tmpdir();
  FerryRuntimeOptions options = { .crun_path = "/nonexistent/crun" };
  g_autoptr(GError) error = NULL;
  g_assert_null(ferry_runtime_new(dir, &options, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_NOT_FOUND);
  test_rm_rf(dir);
}

/* Local mode first (it must precede any thread), then the shared root. */
static void prepare_containers(void)
{
  g_autoptr(GError) error = NULL;
  if (geteuid() != 0) {
    crun_problem = g_strdup("container tests need root (local mode mounts cgroup2)");
    return;
  }
  if (!ferry_runtime_enter_local_mode(&error)) {
    crun_problem = g_strdup_printf("local mode: %s", error->message);
    return;
  }
  g_autofree char *crun = g_find_program_in_path("crun");
  if (crun == NULL) {
    crun_problem = g_strdup("crun is not installed (apt-get install crun)");
    return;
  }
  if (!g_file_test("/bin/busybox", G_FILE_TEST_IS_EXECUTABLE)) {
    crun_problem = g_strdup("/bin/busybox is missing (apt-get install busybox-static)");
    return;
  }
  rootfs_parent = test_make_tmpdir();
  rootfs = g_build_filename(rootfs_parent, "rootfs", NULL);
  if (!test_build_busybox_rootfs(rootfs, &error))
    crun_problem = g_strdup_printf("busybox root: %s", error->message);
}

int main(int argc, char **argv)
{
  prepare_containers();
  struct sigaction fatal = { .sa_handler = on_fatal_signal, .sa_flags = SA_RESETHAND };
  sigaction(SIGABRT, &fatal, NULL);
  sigaction(SIGTERM, &fatal, NULL);
  sigaction(SIGINT, &fatal, NULL);
  g_test_init(&argc, &argv, NULL);
  if (crun_problem != NULL)
    g_printerr("# container tests will skip: %s\n", crun_problem);

  add_test("/runtime/process/echo-stdout-then-eof", test_echo_stdout_then_eof);
  add_test("/runtime/process/stdin-to-stdout-eof-after-close",
           test_stdin_to_stdout_eof_after_close);
  add_test("/runtime/process/stderr-pipe", test_stderr_pipe);
  add_test("/runtime/process/exit-code", test_exit_code);
  add_test("/runtime/process/sigterm-is-143", test_sigterm_is_143);
  add_test("/runtime/process/sigkill-is-137", test_sigkill_is_137);
  add_test("/runtime/process/missing-binary-is-an-error", test_missing_binary_is_an_error);
  add_test("/runtime/process/not-executable-is-permission-denied",
           test_not_executable_is_permission_denied);
  add_test("/runtime/process/bad-cwd-is-an-error", test_bad_cwd_is_an_error);
  add_test("/runtime/process/empty-argv-is-invalid", test_empty_argv_is_invalid);
  add_test("/runtime/process/env-and-cwd-honoured", test_env_and_cwd_honoured);
  add_test("/runtime/process/cwd-defaults-to-root", test_cwd_defaults_to_root);
  add_test("/runtime/process/user-and-group", test_user_and_group);
  add_test("/runtime/process/only-stdio-inherited", test_only_stdio_inherited);
  add_test("/runtime/process/signals-reset", test_signals_reset);
  add_test("/runtime/process/terminal-is-controlling", test_terminal_is_controlling);
  add_test("/runtime/process/terminal-size-resize-and-input", test_terminal_size_resize_and_input);
  add_test("/runtime/process/resize-without-terminal-fails", test_resize_without_terminal_fails);
  add_test("/runtime/process/many-at-once", test_many_at_once);
  add_test("/runtime/process/exit-reported-before-output-drained",
           test_exit_reported_before_output_drained);
  add_test("/runtime/process/exit-func-set-late", test_exit_func_set_late);
  add_test("/runtime/process/reaped-without-references", test_reaped_without_references);
  add_test("/runtime/process/exit-code-from-wait-status", test_exit_code_from_wait_status);

  add_test("/runtime/crun/failure-message-from-log", test_crun_failure_message_from_log);
  add_test("/runtime/crun/start-timeout", test_crun_start_timeout);
  add_test("/runtime/crun/runtime-needs-crun", test_runtime_needs_crun);
  add_test("/runtime/container/run-exec-and-stop", test_container_run_exec_and_stop);
  add_test("/runtime/container/init-exit-code", test_container_init_exit_code);
  add_test("/runtime/container/init-sigkill-is-137", test_container_init_sigkill_is_137);
  add_test("/runtime/container/kill-through-crun", test_container_kill_through_crun);
  add_test("/runtime/container/exec-sigterm-is-143", test_container_exec_sigterm_is_143);
  add_test("/runtime/container/exec-env-and-cwd", test_container_exec_env_and_cwd);
  add_test("/runtime/container/exec-missing-binary", test_container_exec_missing_binary);
  add_test("/runtime/container/errors", test_container_errors);
  add_test("/runtime/container/terminal-init-and-resize", test_container_terminal_init_and_resize);
  add_test("/runtime/container/exec-with-terminal", test_container_exec_with_terminal);
  add_test("/runtime/container/delete-running", test_container_delete_running);
  add_test("/runtime/container/exec-without-crun", test_container_exec_without_crun);
  add_test("/runtime/container/exec-matches-crun", test_container_exec_matches_crun);
  add_test("/runtime/container/exec-seccomp-uses-crun", test_container_exec_seccomp_uses_crun);

  int result = g_test_run();
  test_rm_rf(rootfs_parent);
  g_free(rootfs_parent);
  g_free(rootfs);
  g_free(crun_problem);
  return result;
}
