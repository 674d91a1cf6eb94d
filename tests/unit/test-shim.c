/* lib/shim's parts that need no VM: the VM sizing rule; events held and released. */
#include "containerd/events/task.pb-c.h"
#include "ferry/json.h"
#include "ferry/shim-events.h"
#include "ferry/task-service.h"

static void size_of(const char *spec_text, guint cfg_mb, guint cfg_cpus, gboolean tcg, guint *mb,
                    guint *cpus)
{
  g_autoptr(json_t) spec = spec_text != NULL ? json_loads(spec_text, 0, NULL) : NULL;
  g_assert_true(spec_text == NULL || spec != NULL);
  ferry_shim_vm_size(spec, cfg_mb, cfg_cpus, tcg, mb, cpus);
}

static void test_config_when_nothing_else(void)
{
  guint mb, cpus;
  size_of(NULL, 300, 2, FALSE, &mb, &cpus);
  g_assert_cmpuint(mb, ==, 300);
  g_assert_cmpuint(cpus, ==, 2);
  size_of("{}", 0, 0, FALSE, &mb, &cpus);
  g_assert_cmpuint(mb, ==, 0);
  g_assert_cmpuint(cpus, ==, 0);
}

static void test_resources_plus_overhead(void)
{
  guint mb, cpus;
  /* 100 MiB and a byte: rounded up to 101, plus the overhead; 1.5 CPUs: 2. */
  size_of("{\"linux\": {\"resources\": {\"memory\": {\"limit\": 104857601},"
          " \"cpu\": {\"quota\": 150000, \"period\": 100000}}}}",
          256, 1, FALSE, &mb, &cpus);
  g_assert_cmpuint(mb, ==, 101 + FERRY_SHIM_VM_OVERHEAD_MB);
  g_assert_cmpuint(cpus, ==, 2);
}

static void test_annotations_win(void)
{
  guint mb, cpus;
  size_of("{\"annotations\": {\"io.ferry.vm.memory-mb\": \"512\", \"io.ferry.vm.cpus\": \"3\"},"
          " \"linux\": {\"resources\": {\"memory\": {\"limit\": 104857600}}}}",
          256, 1, FALSE, &mb, &cpus);
  g_assert_cmpuint(mb, ==, 512);
  g_assert_cmpuint(cpus, ==, 3);
  /* Not numbers: ignored, the next rule applies. */
  size_of("{\"annotations\": {\"io.ferry.vm.memory-mb\": \"lots\", \"io.ferry.vm.cpus\": \"0\"}}",
          256, 1, FALSE, &mb, &cpus);
  g_assert_cmpuint(mb, ==, 256);
  g_assert_cmpuint(cpus, ==, 1);
}

static void test_tcg_keeps_one_vcpu(void)
{
  guint mb, cpus;
  size_of("{\"annotations\": {\"io.ferry.vm.cpus\": \"4\"}}", 256, 1, TRUE, &mb, &cpus);
  g_assert_cmpuint(cpus, ==, 1);
  size_of(NULL, 256, 2, TRUE, &mb, &cpus);
  g_assert_cmpuint(cpus, ==, 1);
}

/* Held events wait, counted (and bounded) with the rest; a release sends them or drops
 * them. containerd is not there: everything stays queued. */
static void test_events_hold(void)
{
  g_autoptr(FerryShimEvents) ev = ferry_shim_events_new("/nonexistent/ferry-test.sock", "t");
  Containerd__Events__TaskExit exit = CONTAINERD__EVENTS__TASK_EXIT__INIT;
  exit.container_id = "c";
  ferry_shim_events_publish(ev, "/tasks/exit", &exit.base);
  ferry_shim_events_hold(ev);
  ferry_shim_events_publish(ev, "/tasks/exit", &exit.base);
  ferry_shim_events_publish(ev, "/tasks/exit", &exit.base);
  g_assert_cmpuint(ferry_shim_events_pending(ev), ==, 3);
  ferry_shim_events_release(ev, FALSE);
  g_assert_cmpuint(ferry_shim_events_pending(ev), ==, 1);
  ferry_shim_events_hold(ev);
  ferry_shim_events_publish(ev, "/tasks/exit", &exit.base);
  ferry_shim_events_release(ev, TRUE);
  g_assert_cmpuint(ferry_shim_events_pending(ev), ==, 2);
  /* The bound counts held ones: past it the oldest go. */
  ferry_shim_events_hold(ev);
  for (guint i = 0; i < FERRY_SHIM_EVENTS_MAX_QUEUED; i++)
    ferry_shim_events_publish(ev, "/tasks/exit", &exit.base);
  g_assert_cmpuint(ferry_shim_events_pending(ev), ==, FERRY_SHIM_EVENTS_MAX_QUEUED);
  g_assert_cmpuint(ferry_shim_events_dropped(ev), ==, 2);
  ferry_shim_events_release(ev, FALSE);
  g_assert_cmpuint(ferry_shim_events_pending(ev), ==, 0); /* the two dropped were the oldest */
}

int main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/shim/size/config-when-nothing-else", test_config_when_nothing_else);
  g_test_add_func("/shim/size/resources-plus-overhead", test_resources_plus_overhead);
  g_test_add_func("/shim/size/annotations-win", test_annotations_win);
  g_test_add_func("/shim/size/tcg-keeps-one-vcpu", test_tcg_keeps_one_vcpu);
  g_test_add_func("/shim/events/hold", test_events_hold);
  return g_test_run();
}
