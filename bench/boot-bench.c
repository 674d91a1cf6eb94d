/*
 * Boot benchmark (`make bench-boot`): the time from starting a utility VM to the guest
 * agent's first bridge reply (the NegotiateProtocol answer), against the same kernel,
 * machine type, memory and QEMU command line booting a trivial init that prints one
 * line. Rounds alternate between the two; the medians are compared.
 *
 *   boot-bench IMAGE_DIR BARE_INITRAMFS [ROUNDS]
 *
 * Last line: boot ferry_ms=<n> bare_qemu_ms=<n> ratio=<ferry/bare>
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ferry/vm.h"
#include "guest-session.h"
#include "test-util.h"

#define PORT_NAME "org.ferry.gcs"
#define CMDLINE "console=ttyS0 loglevel=4 panic=-1"

static FerryVmDoc *make_doc(const char *kernel, const char *initrd)
{
  FerryVmDoc *doc = ferry_vm_doc_new("ferry-bench");
  g_autoptr(GError) error = NULL;
  ferry_vm_doc_set_kernel_direct(doc, kernel, initrd, CMDLINE);
  if (!ferry_vm_doc_add_mux_port(doc, PORT_NAME, &error))
    g_error("%s", error->message);
  return doc;
}

static void on_started(FerryVm *vm, const GError *error, gpointer ud)
{
  if (error != NULL)
    g_error("start: %s", error->message);
  *(gboolean *)ud = TRUE;
}

static void on_exit_done(FerryVm *vm, const GError *error, gpointer ud)
{
  *(gboolean *)ud = TRUE;
}

/* Watches the console for init's "agent started" line: where the time went. */
typedef struct {
  const char *console;
  gint64 t0;
  double ms; /* host ms from start to the line, or -1 */
} InitWatch;

static gboolean on_watch_console(gpointer ud)
{
  InitWatch *w = ud;
  g_autofree char *text = NULL;
  if (g_file_get_contents(w->console, &text, NULL, NULL) &&
      strstr(text, "ferry-init: agent started") != NULL) {
    w->ms = (double)(g_get_monotonic_time() - w->t0) / 1000.0;
    return G_SOURCE_REMOVE;
  }
  return G_SOURCE_CONTINUE;
}

/* The program's choices from its environment: FERRY_QEMU (the binary), FERRY_ACCEL
 * (kvm, tcg, auto). The library reads neither. */
static FerryVmOptions bench_vm_options(void)
{
  FerryVmOptions o = { .qemu_binary = g_getenv("FERRY_QEMU") };
  g_autoptr(GError) error = NULL;
  if (!ferry_vm_accel_parse(g_getenv("FERRY_ACCEL"), &o.accel, &error))
    g_error("FERRY_ACCEL: %s", error->message);
  return o;
}

/* Start to the first bridge reply, through the VM manager and the guest manager;
 * *init_ms gets the time to init's "agent started" line. */
static double ferry_round(const char *dir, const char *kernel, const char *initrd, double *init_ms)
{
  g_autoptr(FerryVmDoc) doc = make_doc(kernel, initrd);
  g_autofree char *state = g_build_filename(dir, "ferry", NULL);
  g_autoptr(GError) error = NULL;
  FerryVmOptions options = bench_vm_options();
  FerryVm *vm = ferry_vm_new("bench", doc, state, &options, &error);
  if (vm == NULL)
    g_error("%s", error->message);
  gboolean started = FALSE;
  gint64 t0 = g_get_monotonic_time();
  InitWatch watch = { .console = ferry_vm_console_path(vm), .t0 = t0, .ms = -1 };
  unlink(watch.console); /* the last round's */
  guint watch_id = g_timeout_add(2, on_watch_console, &watch);
  ferry_vm_start(vm, on_started, &started);
  if (!test_run_until(&started, 60000))
    g_error("QEMU did not start");
  g_autofree char *port = ferry_vm_port_socket(vm, PORT_NAME);
  TestGuestSession *s = test_guest_session_new(port);
  if (!test_run_until(&s->connected, 120000))
    g_error("no bridge reply within 120 s");
  double ms = (double)(g_get_monotonic_time() - t0) / 1000.0;
  if (watch.ms < 0)
    g_source_remove(watch_id);
  *init_ms = watch.ms;
  gboolean gone = FALSE;
  ferry_vm_terminate(vm, on_exit_done, &gone);
  test_run_until(&gone, 30000);
  test_guest_session_free(s);
  ferry_vm_free(vm);
  return ms;
}

/* The same QEMU command line with the trivial init: exec to its line on the console. */
static double bare_round(const char *dir, const char *kernel, const char *bare_initrd)
{
  g_autoptr(FerryVmDoc) doc = make_doc(kernel, bare_initrd);
  g_autofree char *state = g_build_filename(dir, "bare", NULL);
  g_mkdir_with_parents(state, 0700);
  g_autofree char *console = g_build_filename(state, "console.log", NULL);
  unlink(console);
  FerryVmOptions options = bench_vm_options();
  FerryVmRenderOptions ro = { .qemu_binary = options.qemu_binary,
                              .accel = options.accel,
                              .state_dir = state };
  g_autoptr(GError) error = NULL;
  g_auto(GStrv) argv = ferry_vm_doc_render(doc, &ro, &error);
  if (argv == NULL)
    g_error("%s", error->message);
  GPid pid;
  gint64 t0 = g_get_monotonic_time();
  if (!g_spawn_async(NULL, argv, NULL,
                     G_SPAWN_DO_NOT_REAP_CHILD | G_SPAWN_SEARCH_PATH | G_SPAWN_STDOUT_TO_DEV_NULL |
                         G_SPAWN_STDERR_TO_DEV_NULL,
                     NULL, NULL, &pid, &error))
    g_error("%s", error->message);
  double ms = -1;
  while (g_get_monotonic_time() - t0 < 120 * G_USEC_PER_SEC) {
    g_autofree char *text = NULL;
    if (g_file_get_contents(console, &text, NULL, NULL) && strstr(text, "BARE-READY") != NULL) {
      ms = (double)(g_get_monotonic_time() - t0) / 1000.0;
      break;
    }
    g_usleep(2000);
  }
  kill(pid, SIGKILL);
  waitpid(pid, NULL, 0);
  g_spawn_close_pid(pid);
  if (ms < 0)
    g_error("the trivial init printed nothing within 120 s (console %s)", console);
  return ms;
}

static int cmp_double(gconstpointer a, gconstpointer b)
{
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double median(GArray *a)
{
  g_array_sort(a, cmp_double);
  guint n = a->len;
  return n % 2 ? g_array_index(a, double, n / 2)
               : (g_array_index(a, double, n / 2 - 1) + g_array_index(a, double, n / 2)) / 2;
}

int main(int argc, char **argv)
{
  if (argc < 3) {
    fprintf(stderr, "usage: boot-bench IMAGE_DIR BARE_INITRAMFS [ROUNDS]\n");
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  g_autofree char *kernel = g_build_filename(argv[1], "vmlinux", NULL);
  g_autofree char *initrd = g_build_filename(argv[1], "initramfs.cpio", NULL);
  int rounds = argc > 3 ? atoi(argv[3]) : 5;
  g_autofree char *dir = test_make_tmpdir();
  g_autoptr(GArray) ferry = g_array_new(FALSE, FALSE, sizeof(double));
  g_autoptr(GArray) bare = g_array_new(FALSE, FALSE, sizeof(double));
  for (int i = 0; i < rounds; i++) {
    double b = bare_round(dir, kernel, argv[2]);
    double init_ms;
    double f = ferry_round(dir, kernel, initrd, &init_ms);
    g_array_append_val(bare, b);
    g_array_append_val(ferry, f);
    printf("round %d ferry_ms=%.0f bare_qemu_ms=%.0f ferry_agent_started_ms=%.0f\n", i + 1, f, b,
           init_ms);
    fflush(stdout);
  }
  test_rm_rf(dir);
  double f = median(ferry), b = median(bare);
  printf("boot ferry_ms=%.0f bare_qemu_ms=%.0f ratio=%.2f\n", f, b, f / b);
  return 0;
}
