/* The VM builder: the document (hcsshim's builder behaviours), validation, rendering to
 * a QEMU command line, host facts from fake files, and one real QEMU that must accept
 * every option the renderer writes. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ferry/error.h"
#include "ferry/json.h"
#include "ferry/vm-builder.h"
#include "test-util.h"

/* ------------------------------------------------------------------------------------ */
/* Helpers                                                                               */

static json_t *J(const char *text)
{
  json_error_t jerr;
  json_t *v = json_loads(text, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
  if (v == NULL)
    g_error("bad test JSON %s: %s", text, jerr.text);
  return v;
}

/* The member at a dotted path of the document (borrowed; NULL when absent). */
static json_t *at(const FerryVmDoc *doc, const char *dotted)
{
  g_auto(GStrv) keys = g_strsplit(dotted, ".", -1);
  json_t *v = ferry_vm_doc_get(doc);
  for (char **k = keys; *k != NULL && v != NULL; k++)
    v = json_object_get(v, *k);
  return v;
}

static void assert_json(json_t *value, const char *expected)
{
  g_autoptr(json_t) want = J(expected);
  if (!json_equal(value, want)) {
    g_autofree char *got = value ? ferry_json_dump(value) : g_strdup("(absent)");
    g_error("got %s, expected %s", got, expected);
  }
}

/* A document that renders: kernel, initrd and command line set. */
static FerryVmDoc *bootable(const char *machine)
{
  FerryVmDoc *doc = ferry_vm_doc_new("vm1");
  ferry_vm_doc_set_kernel_direct(doc, "/img/vmlinux", "/img/initrd", "console=ttyS0");
  ferry_vm_doc_set_machine(doc, machine);
  return doc;
}

static FerryVmRenderOptions tcg_options(void)
{
  FerryVmRenderOptions o = { 0 };
  o.qemu_binary = "qemu-system-x86_64";
  o.accel = FERRY_VM_ACCEL_TCG;
  o.state_dir = "/run/ferry/vm1";
  o.tsc_khz = 2596150;
  return o;
}

static GStrv render_ok(const FerryVmDoc *doc, const FerryVmRenderOptions *o)
{
  g_autoptr(GError) error = NULL;
  GStrv argv = ferry_vm_doc_render(doc, o, &error);
  g_assert_no_error(error);
  g_assert_nonnull(argv);
  return argv;
}

/* The value after the first `opt` (NULL if absent). */
static const char *opt_value(GStrv argv, const char *opt)
{
  for (char **a = argv; *a != NULL; a++)
    if (g_str_equal(*a, opt))
      return a[1];
  return NULL;
}

static gboolean has_pair(GStrv argv, const char *opt, const char *value)
{
  for (char **a = argv; *a != NULL && a[1] != NULL; a++)
    if (g_str_equal(*a, opt) && g_str_equal(a[1], value))
      return TRUE;
  return FALSE;
}

static guint count_arg(GStrv argv, const char *arg)
{
  guint n = 0;
  for (char **a = argv; *a != NULL; a++)
    n += g_str_equal(*a, arg);
  return n;
}

static void assert_argv(GStrv argv, const char *const *expected)
{
  guint i = 0;
  for (; expected[i] != NULL; i++) {
    if (argv[i] == NULL)
      g_error("argv ends at %u; expected %s", i, expected[i]);
    if (!g_str_equal(argv[i], expected[i])) {
      g_autofree char *all = g_strjoinv(" ", argv);
      g_error("argv[%u] is %s, expected %s\nargv: %s", i, argv[i], expected[i], all);
    }
  }
  g_assert_null(argv[i]);
}

static void assert_error_contains(const GError *error, int code, const char *text)
{
  g_assert_nonnull(error);
  if (error->domain != FERRY_ERROR || error->code != code)
    g_error("expected %s, got code %d: %s", ferry_status_code_name(code), error->code,
            error->message);
  if (strstr(error->message, text) == NULL)
    g_error("error \"%s\" does not mention \"%s\"", error->message, text);
}

static void assert_render_fails(const FerryVmDoc *doc, int code, const char *text)
{
  FerryVmRenderOptions o = tcg_options();
  g_autoptr(GError) error = NULL;
  g_auto(GStrv) argv = ferry_vm_doc_render(doc, &o, &error);
  g_assert_null(argv);
  assert_error_contains(error, code, text);
}

/* ------------------------------------------------------------------------------------ */
/* The document (hcsshim's builder tests)                                                */

static void test_default_fields(void)
{
  g_autoptr(FerryVmDoc) doc = ferry_vm_doc_new("owner-1");
  assert_json(at(doc, "Owner"), "\"owner-1\"");
  assert_json(at(doc, "SchemaVersion"), "{\"Major\": 2, \"Minor\": 1}");
  assert_json(at(doc, "ShouldTerminateOnLastHandleClosed"), "true");
  assert_json(at(doc, "VirtualMachine.StopOnReset"), "true");
  assert_json(at(doc, "VirtualMachine.Chipset"), "{}");
  assert_json(at(doc, "VirtualMachine.ComputeTopology"),
              "{\"Memory\": {\"SizeInMB\": 256}, \"Processor\": {\"Count\": 1}}");
  assert_json(at(doc, "VirtualMachine.Devices"), "{}");
  assert_json(at(doc, "VirtualMachine.Ferry"), "{\"Machine\": \"microvm\", \"MuxPorts\": []}");
  g_assert_cmpuint(ferry_vm_doc_memory_mb(doc), ==, 256);
  g_assert_cmpuint(ferry_vm_doc_processor_count(doc), ==, 1);
  g_assert_cmpstr(ferry_vm_doc_machine(doc), ==, "microvm");
  g_autoptr(GError) error = NULL;
  g_assert_true(ferry_vm_doc_validate(doc, &error));
  g_assert_no_error(error);
}

static void test_boot_config(void)
{
  g_autoptr(FerryVmDoc) doc = ferry_vm_doc_new("o");
  ferry_vm_doc_set_kernel_direct(doc, "/k/vmlinux", "/k/initrd", "console=ttyS0 quiet");
  assert_json(at(doc, "VirtualMachine.Chipset.LinuxKernelDirect"),
              "{\"KernelFilePath\": \"/k/vmlinux\", \"InitRdPath\": \"/k/initrd\", "
              "\"KernelCmdLine\": \"console=ttyS0 quiet\"}");
  /* Replaces the whole block; NULL arguments are left out. */
  ferry_vm_doc_set_kernel_direct(doc, "/k/other", NULL, NULL);
  assert_json(at(doc, "VirtualMachine.Chipset.LinuxKernelDirect"),
              "{\"KernelFilePath\": \"/k/other\"}");
}

static void test_memory_replaces_whole_block(void)
{
  g_autoptr(FerryVmDoc) doc = ferry_vm_doc_new("o");
  g_autoptr(json_t) first = J("{\"SizeInMB\": 1024, \"Backing\": \"Physical\", "
                              "\"EnableDeferredCommit\": true}");
  ferry_vm_doc_set_memory(doc, first);
  assert_json(at(doc, "VirtualMachine.ComputeTopology.Memory"),
              "{\"SizeInMB\": 1024, \"Backing\": \"Physical\", \"EnableDeferredCommit\": true}");
  g_assert_cmpuint(ferry_vm_doc_memory_mb(doc), ==, 1024);
  /* Copied, not borrowed. */
  json_object_set_new(first, "SizeInMB", json_integer(1));
  g_assert_cmpuint(ferry_vm_doc_memory_mb(doc), ==, 1024);
  /* A second call replaces everything: Backing does not survive. */
  g_autoptr(json_t) second = J("{\"SizeInMB\": 512}");
  ferry_vm_doc_set_memory(doc, second);
  assert_json(at(doc, "VirtualMachine.ComputeTopology.Memory"), "{\"SizeInMB\": 512}");
  g_assert_null(at(doc, "VirtualMachine.ComputeTopology.Memory.Backing"));
}

static void test_memory_nil_is_noop(void)
{
  g_autoptr(FerryVmDoc) doc = ferry_vm_doc_new("o");
  g_autofree char *before = ferry_vm_doc_to_string(doc);
  ferry_vm_doc_set_memory(doc, NULL);
  g_autofree char *after = ferry_vm_doc_to_string(doc);
  g_assert_cmpstr(before, ==, after);
}

static void test_memory_slit_type(void)
{
  g_autoptr(FerryVmDoc) doc = ferry_vm_doc_new("o");
  ferry_vm_doc_set_firmware_fallback_measured_slit(doc);
  assert_json(at(doc, "VirtualMachine.ComputeTopology.Memory"),
              "{\"SizeInMB\": 256, \"SlitType\": \"FirmwareFallbackMeasured\"}");
  g_autoptr(GError) error = NULL;
  g_assert_true(ferry_vm_doc_validate(doc, &error));
}

static void test_numa_settings(void)
{
  g_autoptr(FerryVmDoc) doc = ferry_vm_doc_new("o");
  g_autoptr(json_t) numa = J("{\"VirtualNodeCount\": 2, \"MaxSizePerNode\": 1024, \"Settings\": ["
                             "{\"VirtualNodeNumber\": 0, \"CountOfProcessors\": 1, "
                             "\"CountOfMemoryBlocks\": 128},"
                             "{\"VirtualNodeNumber\": 1, \"CountOfProcessors\": 1, "
                             "\"CountOfMemoryBlocks\": 128}]}");
  g_autoptr(json_t) nps = J("{\"count_per_node\": {\"max\": 1}, \"node_per_socket\": 1}");
  ferry_vm_doc_set_numa(doc, numa);
  ferry_vm_doc_set_numa_processors(doc, nps);
  ferry_vm_doc_set_numa(doc, NULL);
  ferry_vm_doc_set_numa_processors(doc, NULL);
  json_object_set_new(numa, "VirtualNodeCount", json_integer(9)); /* copied, not borrowed */
  assert_json(at(doc, "VirtualMachine.ComputeTopology.Numa.VirtualNodeCount"), "2");
  assert_json(at(doc, "VirtualMachine.ComputeTopology.Processor"),
              "{\"Count\": 1, \"NumaProcessorsSettings\": "
              "{\"count_per_node\": {\"max\": 1}, \"node_per_socket\": 1}}");
  /* Consistent once there are 2 processors on a machine with an SRAT. */
  g_autoptr(json_t) proc = J("{\"Count\": 2}");
  ferry_vm_doc_set_processor(doc, proc);
  ferry_vm_doc_set_machine(doc, "q35");
  g_autoptr(GError) error = NULL;
  g_assert_true(ferry_vm_doc_validate(doc, &error));
  g_assert_no_error(error);
}

static void test_processor_sequences(void)
{
  g_autoptr(FerryVmDoc) doc = ferry_vm_doc_new("o");
  g_autoptr(json_t) a = J("{\"Count\": 2, \"Limit\": 100000, \"Weight\": 200}");
  g_autoptr(json_t) b = J("{\"Count\": 4}");
  ferry_vm_doc_set_processor(doc, a);
  g_assert_cmpuint(ferry_vm_doc_processor_count(doc), ==, 2);
  assert_json(at(doc, "VirtualMachine.ComputeTopology.Processor"),
              "{\"Count\": 2, \"Limit\": 100000, \"Weight\": 200}");
  ferry_vm_doc_set_processor(doc, NULL);
  g_assert_cmpuint(ferry_vm_doc_processor_count(doc), ==, 2);
  ferry_vm_doc_set_processor(doc, b);
  assert_json(at(doc, "VirtualMachine.ComputeTopology.Processor"), "{\"Count\": 4}");
  ferry_vm_doc_set_processor(doc, a);
  assert_json(at(doc, "VirtualMachine.ComputeTopology.Processor.Limit"), "100000");
}

static void test_processor_nil_is_noop(void)
{
  g_autoptr(FerryVmDoc) doc = ferry_vm_doc_new("o");
  g_autofree char *before = ferry_vm_doc_to_string(doc);
  ferry_vm_doc_set_processor(doc, NULL);
  ferry_vm_doc_set_cpu_group(doc, NULL);
  ferry_vm_doc_set_storage_qos(doc, NULL);
  ferry_vm_doc_set_machine(doc, NULL);
  g_autofree char *after = ferry_vm_doc_to_string(doc);
  g_assert_cmpstr(before, ==, after);
}

static void test_cpu_group_keeps_count(void)
{
  g_autoptr(FerryVmDoc) doc = ferry_vm_doc_new("o");
  g_autoptr(json_t) proc = J("{\"Count\": 4, \"Weight\": 5}");
  ferry_vm_doc_set_processor(doc, proc);
  ferry_vm_doc_set_cpu_group(doc, "group-1");
  assert_json(at(doc, "VirtualMachine.ComputeTopology.Processor"),
              "{\"Count\": 4, \"Weight\": 5, \"CpuGroup\": {\"Id\": \"group-1\"}}");
  g_assert_cmpuint(ferry_vm_doc_processor_count(doc), ==, 4);
}

static void test_storage_qos(void)
{
  g_autoptr(FerryVmDoc) doc = ferry_vm_doc_new("o");
  g_autoptr(json_t) qos = J("{\"IopsMaximum\": 1000, \"BandwidthMaximum\": 1048576}");
  ferry_vm_doc_set_storage_qos(doc, qos);
  assert_json(at(doc, "VirtualMachine.StorageQoS"),
              "{\"IopsMaximum\": 1000, \"BandwidthMaximum\": 1048576}");
  g_autoptr(GError) error = NULL;
  g_assert_true(ferry_vm_doc_validate(doc, &error));
}

static void test_scsi_needs_controller(void)
{
  g_autoptr(FerryVmDoc) doc = ferry_vm_doc_new("o");
  g_autoptr(GError) error = NULL;
  g_assert_false(ferry_vm_doc_add_scsi_disk(doc, "0", 0, "/d/a.img", FALSE, &error));
  assert_error_contains(error, FERRY_ERROR_FAILED_PRECONDITION,
                        "SCSI controller has not been added");
  g_clear_error(&error);
  g_assert_true(ferry_vm_doc_add_scsi_controller(doc, "0", &error));
  g_assert_false(ferry_vm_doc_add_scsi_disk(doc, "1", 0, "/d/a.img", FALSE, &error));
  assert_error_contains(error, FERRY_ERROR_NOT_FOUND, "no SCSI controller with id 1 found");
  assert_json(at(doc, "VirtualMachine.Devices.Scsi"), "{\"0\": {\"Attachments\": {}}}");
}

static void test_scsi_multiple_luns_kept(void)
{
  g_autoptr(FerryVmDoc) doc = ferry_vm_doc_new("o");
  g_autoptr(GError) error = NULL;
  g_assert_true(ferry_vm_doc_add_scsi_controller(doc, "0", &error));
  g_assert_true(ferry_vm_doc_add_scsi_disk(doc, "0", 0, "/d/a.img", FALSE, &error));
  g_assert_true(ferry_vm_doc_add_scsi_disk(doc, "0", 1, "/d/b.img", TRUE, &error));
  g_assert_no_error(error);
  assert_json(at(doc, "VirtualMachine.Devices.Scsi.0.Attachments"),
              "{\"0\": {\"Type\": \"VirtualDisk\", \"Path\": \"/d/a.img\", \"ReadOnly\": false},"
              " \"1\": {\"Type\": \"VirtualDisk\", \"Path\": \"/d/b.img\", \"ReadOnly\": true}}");
  g_assert_false(ferry_vm_doc_add_scsi_disk(doc, "0", 1, "/d/c.img", FALSE, &error));
  assert_error_contains(error, FERRY_ERROR_ALREADY_EXISTS, "LUN 1");
  g_clear_error(&error);
  g_assert_false(ferry_vm_doc_add_scsi_disk(doc, "0", 64, "/d/c.img", FALSE, &error));
  assert_error_contains(error, FERRY_ERROR_INVALID_ARGUMENT, "LUN 64");
  g_clear_error(&error);
  g_assert_false(ferry_vm_doc_add_scsi_disk(doc, "0", 2, "d/c.img", FALSE, &error));
  assert_error_contains(error, FERRY_ERROR_INVALID_ARGUMENT, "not an absolute path");
  g_clear_error(&error);
  g_assert_true(ferry_vm_doc_validate(doc, &error));
}

static void test_scsi_controller_limits(void)
{
  g_autoptr(FerryVmDoc) doc = ferry_vm_doc_new("o");
  g_autoptr(GError) error = NULL;
  for (int i = 0; i < 4; i++) {
    char id[8];
    g_snprintf(id, sizeof(id), "%d", i);
    g_assert_true(ferry_vm_doc_add_scsi_controller(doc, id, &error));
  }
  g_assert_false(ferry_vm_doc_add_scsi_controller(doc, "2", &error));
  assert_error_contains(error, FERRY_ERROR_ALREADY_EXISTS, "SCSI controller 2");
  g_clear_error(&error);
  g_assert_false(ferry_vm_doc_add_scsi_controller(doc, "4", &error));
  assert_error_contains(error, FERRY_ERROR_RESOURCE_EXHAUSTED, "4 controllers");
}

static void test_shares(void)
{
  g_autoptr(FerryVmDoc) doc = ferry_vm_doc_new("o");
  g_autoptr(GError) error = NULL;
  g_assert_true(ferry_vm_doc_add_share(doc, "rootfs", "/srv/rootfs", TRUE, &error));
  g_assert_true(ferry_vm_doc_add_share(doc, "scratch.1", "/srv/scratch", FALSE, &error));
  assert_json(at(doc, "VirtualMachine.Devices.Plan9"),
              "{\"Shares\": [{\"Name\": \"rootfs\", \"Path\": \"/srv/rootfs\", \"ReadOnly\": true},"
              " {\"Name\": \"scratch.1\", \"Path\": \"/srv/scratch\", \"ReadOnly\": false}]}");
  g_assert_false(ferry_vm_doc_add_share(doc, "bad tag", "/srv/x", FALSE, &error));
  assert_error_contains(error, FERRY_ERROR_INVALID_ARGUMENT, "share tag \"bad tag\"");
  g_clear_error(&error);
  g_assert_false(
      ferry_vm_doc_add_share(doc, "0123456789012345678901234567890123", "/srv/x", FALSE, &error));
  assert_error_contains(error, FERRY_ERROR_INVALID_ARGUMENT, "too long");
  g_clear_error(&error);
  g_assert_false(ferry_vm_doc_add_share(doc, "x", "srv/x", FALSE, &error));
  assert_error_contains(error, FERRY_ERROR_INVALID_ARGUMENT, "share host path \"srv/x\"");
  g_clear_error(&error);
  g_assert_true(ferry_vm_doc_validate(doc, &error));
}

static void test_duplicates_already_exist(void)
{
  g_autoptr(FerryVmDoc) doc = ferry_vm_doc_new("o");
  g_autoptr(GError) error = NULL;
  g_assert_true(ferry_vm_doc_add_mux_port(doc, "ferry.mux", &error));
  g_assert_false(ferry_vm_doc_add_mux_port(doc, "ferry.mux", &error));
  assert_error_contains(error, FERRY_ERROR_ALREADY_EXISTS, "mux port ferry.mux");
  g_clear_error(&error);
  g_assert_true(ferry_vm_doc_add_share(doc, "s", "/a", FALSE, &error));
  g_assert_false(ferry_vm_doc_add_share(doc, "s", "/b", FALSE, &error));
  assert_error_contains(error, FERRY_ERROR_ALREADY_EXISTS, "share s");
  g_clear_error(&error);
  g_assert_true(ferry_vm_doc_add_nic(doc, "nic0", "02:00:00:00:00:01", &error));
  g_assert_false(ferry_vm_doc_add_nic(doc, "nic0", "02:00:00:00:00:02", &error));
  assert_error_contains(error, FERRY_ERROR_ALREADY_EXISTS, "network adapter nic0");
  g_clear_error(&error);
  /* The same MAC in HCS's spelling is the same MAC. */
  g_assert_false(ferry_vm_doc_add_nic(doc, "nic1", "02-00-00-00-00-01", &error));
  assert_error_contains(error, FERRY_ERROR_ALREADY_EXISTS, "already belongs to network adapter");
  g_clear_error(&error);
  g_assert_true(ferry_vm_doc_validate(doc, &error));
  /* Nothing changed on error. */
  g_assert_cmpuint(json_array_size(at(doc, "VirtualMachine.Ferry.MuxPorts")), ==, 1);
  g_assert_cmpuint(json_array_size(at(doc, "VirtualMachine.Devices.Plan9.Shares")), ==, 1);
  g_assert_cmpuint(json_object_size(at(doc, "VirtualMachine.Devices.NetworkAdapters")), ==, 1);
}

static void test_mux_port_names(void)
{
  static const char *const bad[] = { "", "has space", "a/b", "ä", "x\n" };
  g_autoptr(FerryVmDoc) doc = ferry_vm_doc_new("o");
  g_autoptr(GError) error = NULL;
  for (gsize i = 0; i < G_N_ELEMENTS(bad); i++) {
    g_assert_false(ferry_vm_doc_add_mux_port(doc, bad[i], &error));
    assert_error_contains(error, FERRY_ERROR_INVALID_ARGUMENT, "mux port name");
    g_clear_error(&error);
  }
  g_autofree char *long_name = g_strnfill(FERRY_VM_MAX_PORT_NAME + 1, 'a');
  g_assert_false(ferry_vm_doc_add_mux_port(doc, long_name, &error));
  assert_error_contains(error, FERRY_ERROR_INVALID_ARGUMENT, "too long");
  g_clear_error(&error);
  long_name[FERRY_VM_MAX_PORT_NAME] = '\0';
  g_assert_true(ferry_vm_doc_add_mux_port(doc, long_name, &error));
  for (guint i = 1; i < FERRY_VM_MAX_MUX_PORTS; i++) {
    char name[16];
    g_snprintf(name, sizeof(name), "p%u", i);
    g_assert_true(ferry_vm_doc_add_mux_port(doc, name, &error));
  }
  g_assert_false(ferry_vm_doc_add_mux_port(doc, "one.more", &error));
  assert_error_contains(error, FERRY_ERROR_RESOURCE_EXHAUSTED, "30 ports");
  g_clear_error(&error);
  g_assert_true(ferry_vm_doc_validate(doc, &error));
}

static void test_nic_macs(void)
{
  static const char *const bad[] = { "02:00:00:00:00",    "02:00:00:00:00:0g", "02:00-00:00:00:01",
                                     "01:00:5e:00:00:01", "00:00:00:00:00:00", "020000000001" };
  g_autoptr(FerryVmDoc) doc = ferry_vm_doc_new("o");
  g_autoptr(GError) error = NULL;
  for (gsize i = 0; i < G_N_ELEMENTS(bad); i++) {
    g_assert_false(ferry_vm_doc_add_nic(doc, "n", bad[i], &error));
    assert_error_contains(error, FERRY_ERROR_INVALID_ARGUMENT, "MAC address");
    g_clear_error(&error);
  }
  g_assert_true(ferry_vm_doc_add_nic(doc, "n0", "00-15-5D-AA-bb-01", &error));
  g_assert_true(ferry_vm_doc_add_nic(doc, "n1", NULL, &error));
  assert_json(at(doc, "VirtualMachine.Devices.NetworkAdapters"),
              "{\"n0\": {\"MacAddress\": \"00-15-5D-AA-bb-01\"}, \"n1\": {}}");
  g_assert_true(ferry_vm_doc_validate(doc, &error));
}

static void test_copy_is_deep(void)
{
  g_autoptr(FerryVmDoc) doc = ferry_vm_doc_new("o");
  g_autoptr(FerryVmDoc) copy = ferry_vm_doc_copy(doc);
  g_autoptr(GError) error = NULL;
  g_assert_true(ferry_vm_doc_add_mux_port(copy, "p", &error));
  g_autoptr(json_t) mem = J("{\"SizeInMB\": 2048}");
  ferry_vm_doc_set_memory(copy, mem);
  g_assert_cmpuint(json_array_size(at(doc, "VirtualMachine.Ferry.MuxPorts")), ==, 0);
  g_assert_cmpuint(ferry_vm_doc_memory_mb(doc), ==, 256);
  g_assert_cmpuint(ferry_vm_doc_memory_mb(copy), ==, 2048);
}

/* ------------------------------------------------------------------------------------ */
/* JSON in and out                                                                       */

static FerryVmDoc *full_doc(void)
{
  FerryVmDoc *doc = bootable("q35");
  g_autoptr(GError) error = NULL;
  g_autoptr(json_t) proc = J("{\"Count\": 2}");
  g_autoptr(json_t) qos = J("{\"IopsMaximum\": 500}");
  ferry_vm_doc_set_processor(doc, proc);
  ferry_vm_doc_set_storage_qos(doc, qos);
  g_assert_true(ferry_vm_doc_add_mux_port(doc, "ferry.mux", &error));
  g_assert_true(ferry_vm_doc_add_scsi_controller(doc, "0", &error));
  g_assert_true(ferry_vm_doc_add_scsi_disk(doc, "0", 3, "/d/layer.img", TRUE, &error));
  g_assert_true(ferry_vm_doc_add_share(doc, "rootfs", "/srv/rootfs", TRUE, &error));
  g_assert_true(ferry_vm_doc_add_nic(doc, "eth0", "02:00:00:00:00:01", &error));
  g_assert_no_error(error);
  return doc;
}

static void test_json_round_trip(void)
{
  g_autoptr(FerryVmDoc) doc = full_doc();
  g_autofree char *text = ferry_vm_doc_to_string(doc);
  /* Compact, keys sorted. */
  g_assert_true(g_str_has_prefix(text, "{\"Owner\":\"vm1\",\"SchemaVersion\":{\"Major\":2,"));
  g_assert_null(strchr(text, ' '));
  g_autoptr(GError) error = NULL;
  g_autoptr(FerryVmDoc) back = ferry_vm_doc_from_string(text, &error);
  g_assert_no_error(error);
  g_autofree char *again = ferry_vm_doc_to_string(back);
  g_assert_cmpstr(text, ==, again);
  g_assert_true(json_equal(ferry_vm_doc_get(doc), ferry_vm_doc_get(back)));
  /* The parsed document renders exactly as the built one. */
  FerryVmRenderOptions o = tcg_options();
  g_auto(GStrv) a = render_ok(doc, &o);
  g_auto(GStrv) b = render_ok(back, &o);
  g_assert_true(g_strv_equal((const char *const *)a, (const char *const *)b));
}

static void test_json_is_copied(void)
{
  g_autoptr(FerryVmDoc) doc = ferry_vm_doc_new("o");
  g_autoptr(json_t) src = json_deep_copy(ferry_vm_doc_get(doc));
  g_autoptr(GError) error = NULL;
  g_autoptr(FerryVmDoc) parsed = ferry_vm_doc_from_json(src, &error);
  g_assert_no_error(error);
  json_object_set_new(src, "Owner", json_string("changed"));
  assert_json(at(parsed, "Owner"), "\"o\"");
}

static void test_json_unknown_fields_kept(void)
{
  static const char text[] =
      "{\"Owner\": \"o\", \"SchemaVersion\": {\"Major\": 2, \"Minor\": 5}, \"Future\": [1, 2],"
      " \"VirtualMachine\": {\"Devices\": {\"HvSocket\": {\"HvSocketConfig\": "
      "{\"DefaultBindSecurityDescriptor\": \"D:P(A;;FA;;;SY)(A;;FA;;;BA)\"}}},"
      " \"Chipset\": {\"LinuxKernelDirect\": {\"KernelFilePath\": \"/k\", \"Extra\": 1}},"
      " \"Ferry\": {\"NewKnob\": true}}}";
  g_autoptr(GError) error = NULL;
  g_autoptr(FerryVmDoc) doc = ferry_vm_doc_from_string(text, &error);
  g_assert_no_error(error);
  assert_json(at(doc, "Future"), "[1, 2]");
  assert_json(at(doc, "VirtualMachine.Ferry.NewKnob"), "true");
  assert_json(at(doc, "VirtualMachine.Chipset.LinuxKernelDirect.Extra"), "1");
  g_autofree char *out = ferry_vm_doc_to_string(doc);
  g_assert_nonnull(strstr(out, "\"HvSocket\""));
  /* Absent sections mean the defaults, and it renders (HvSocket has no QEMU meaning). */
  g_assert_cmpuint(ferry_vm_doc_memory_mb(doc), ==, FERRY_VM_DEFAULT_MEMORY_MB);
  g_assert_cmpuint(ferry_vm_doc_processor_count(doc), ==, 1);
  FerryVmRenderOptions o = tcg_options();
  g_auto(GStrv) argv = render_ok(doc, &o);
  g_assert_cmpstr(opt_value(argv, "-m"), ==, "262152K"); /* 256 MiB + the TCG pad */
  g_assert_cmpstr(opt_value(argv, "-machine"), ==, "microvm");
}

static void test_json_rejects_non_documents(void)
{
  static const char *const texts[] = { "", "[]", "{\"Owner\": ", "{\"a\": 1, \"a\": 2}", "3" };
  for (gsize i = 0; i < G_N_ELEMENTS(texts); i++) {
    g_autoptr(GError) error = NULL;
    g_autoptr(FerryVmDoc) doc = ferry_vm_doc_from_string(texts[i], &error);
    g_assert_null(doc);
    g_assert_error(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT);
  }
  g_autoptr(GError) error = NULL;
  g_autoptr(json_t) arr = json_array();
  g_assert_null(ferry_vm_doc_from_json(arr, &error));
  assert_error_contains(error, FERRY_ERROR_INVALID_ARGUMENT, "must be a JSON object");
}

/* ------------------------------------------------------------------------------------ */
/* Validation errors name the path                                                       */

/* Set `dotted` (object members, created as needed) in `root` to `value` (stolen). */
static void put(json_t *root, const char *dotted, json_t *value)
{
  g_auto(GStrv) keys = g_strsplit(dotted, ".", -1);
  json_t *v = root;
  guint n = g_strv_length(keys);
  for (guint i = 0; i + 1 < n; i++) {
    json_t *next = json_object_get(v, keys[i]);
    if (!json_is_object(next)) {
      next = json_object();
      json_object_set_new(v, keys[i], next);
    }
    v = next;
  }
  json_object_set_new(v, keys[n - 1], value);
}

typedef struct {
  const char *path; /* what to change */
  const char *json; /* its new value */
  const char *message;
} BadCase;

static const BadCase bad_cases[] = {
  { "Owner", "5", "invalid VM document: Owner: must be a string" },
  { "Owner", "\"\"", "Owner: is empty" },
  { "Owner", "\"a\\u0000b\"", "Owner: contains a NUL character" },
  { "Owner", "\"a\\nb\"", "Owner: contains a control character" },
  { "SchemaVersion.Major", "1", "SchemaVersion.Major: 1 is out of range (2..2)" },
  { "SchemaVersion", "\"2.1\"", "SchemaVersion: must be an object" },
  { "ShouldTerminateOnLastHandleClosed", "1",
    "ShouldTerminateOnLastHandleClosed: must be a boolean" },
  { "VirtualMachine", "[]", "VirtualMachine: must be an object" },
  { "VirtualMachine.StopOnReset", "\"yes\"", "VirtualMachine.StopOnReset: must be a boolean" },
  { "VirtualMachine.ComputeTopology.Memory.SizeInMB", "0",
    "VirtualMachine.ComputeTopology.Memory.SizeInMB: 0 is out of range (1..1048576)" },
  { "VirtualMachine.ComputeTopology.Memory.SizeInMB", "1048577",
    "VirtualMachine.ComputeTopology.Memory.SizeInMB: 1048577 is out of range" },
  { "VirtualMachine.ComputeTopology.Memory.SizeInMB", "\"256\"",
    "VirtualMachine.ComputeTopology.Memory.SizeInMB: must be an integer" },
  { "VirtualMachine.ComputeTopology.Memory.SizeInMB", "256.0",
    "VirtualMachine.ComputeTopology.Memory.SizeInMB: must be an integer" },
  { "VirtualMachine.ComputeTopology.Memory.Backing", "\"Swap\"",
    "VirtualMachine.ComputeTopology.Memory.Backing: \"Swap\" is not one of Physical, Virtual, "
    "Hybrid" },
  { "VirtualMachine.ComputeTopology.Memory.SlitType", "\"Guess\"",
    "VirtualMachine.ComputeTopology.Memory.SlitType: \"Guess\" is not one of" },
  { "VirtualMachine.ComputeTopology.Memory.EnableHotHint", "\"on\"",
    "VirtualMachine.ComputeTopology.Memory.EnableHotHint: must be a boolean" },
  { "VirtualMachine.ComputeTopology.Processor.Count", "0",
    "VirtualMachine.ComputeTopology.Processor.Count: 0 is out of range (1..255)" },
  { "VirtualMachine.ComputeTopology.Processor.Count", "256",
    "VirtualMachine.ComputeTopology.Processor.Count: 256 is out of range (1..255)" },
  { "VirtualMachine.ComputeTopology.Processor.Count", "-1",
    "VirtualMachine.ComputeTopology.Processor.Count: -1 is out of range" },
  { "VirtualMachine.ComputeTopology.Processor.Limit", "100001",
    "VirtualMachine.ComputeTopology.Processor.Limit: 100001 is out of range" },
  { "VirtualMachine.ComputeTopology.Processor.CpuGroup", "{}",
    "VirtualMachine.ComputeTopology.Processor.CpuGroup.Id: missing" },
  { "VirtualMachine.ComputeTopology.Processor.NumaProcessorsSettings", "{\"count_per_node\": {}}",
    "VirtualMachine.ComputeTopology.Processor.NumaProcessorsSettings.count_per_node.max: missing" },
  { "VirtualMachine.Chipset.LinuxKernelDirect.KernelFilePath", "\"boot/vmlinux\"",
    "VirtualMachine.Chipset.LinuxKernelDirect.KernelFilePath: \"boot/vmlinux\" is not an "
    "absolute path" },
  { "VirtualMachine.Chipset.LinuxKernelDirect.InitRdPath", "7",
    "VirtualMachine.Chipset.LinuxKernelDirect.InitRdPath: must be a string" },
  { "VirtualMachine.Ferry.Machine", "\"virt\"",
    "VirtualMachine.Ferry.Machine: \"virt\" is not one of microvm, q35, pc" },
  { "VirtualMachine.Ferry.MuxPorts", "[{\"Name\": \"bad name\"}]",
    "VirtualMachine.Ferry.MuxPorts[0].Name: \"bad name\" has a character outside" },
  { "VirtualMachine.Ferry.MuxPorts", "[{\"Name\": \"a\"}, {\"Name\": \"a\"}]",
    "VirtualMachine.Ferry.MuxPorts[1].Name: port \"a\" appears twice" },
  { "VirtualMachine.Ferry.MuxPorts", "[\"a\"]",
    "VirtualMachine.Ferry.MuxPorts[0]: must be an object" },
  { "VirtualMachine.Ferry.MuxPorts", "[{}]", "VirtualMachine.Ferry.MuxPorts[0].Name: missing" },
  { "VirtualMachine.Ferry.Plan9SecurityModel", "\"passthrough\"",
    "VirtualMachine.Ferry.Plan9SecurityModel: \"passthrough\" is not one of none, mapped" },
  { "VirtualMachine.Devices.Plan9.Shares", "{}",
    "VirtualMachine.Devices.Plan9.Shares: must be an array" },
  { "VirtualMachine.Devices.Plan9.Shares", "[{\"Name\": \"s\", \"Path\": \"rel/dir\"}]",
    "VirtualMachine.Devices.Plan9.Shares[0].Path: \"rel/dir\" is not an absolute path" },
  { "VirtualMachine.Devices.Plan9.Shares",
    "[{\"Name\": \"s\", \"Path\": \"/a\"}, {\"Name\": \"s\", \"Path\": \"/b\"}]",
    "VirtualMachine.Devices.Plan9.Shares[1].Name: share \"s\" appears twice" },
  { "VirtualMachine.Devices.NetworkAdapters", "{\"n0\": {\"MacAddress\": \"zz\"}}",
    "VirtualMachine.Devices.NetworkAdapters[\"n0\"].MacAddress: \"zz\" is not a MAC address" },
  { "VirtualMachine.Devices.NetworkAdapters", "{\"n0\": {\"MacAddress\": \"03:00:00:00:00:01\"}}",
    "VirtualMachine.Devices.NetworkAdapters[\"n0\"].MacAddress: 03:00:00:00:00:01 is a multicast "
    "address" },
  { "VirtualMachine.Devices.NetworkAdapters",
    "{\"n0\": {\"MacAddress\": \"02:00:00:00:00:01\"}, "
    "\"n1\": {\"MacAddress\": \"02-00-00-00-00-01\"}}",
    "VirtualMachine.Devices.NetworkAdapters[\"n1\"].MacAddress: 02-00-00-00-00-01 is used by "
    "another adapter" },
  { "VirtualMachine.Devices.NetworkAdapters", "{\"a b\": {}}",
    "VirtualMachine.Devices.NetworkAdapters[\"a b\"]: \"a b\" has a character outside" },
  { "VirtualMachine.Devices.Scsi", "{\"0\": {\"Attachments\": {\"01\": {\"Path\": \"/d\"}}}}",
    "VirtualMachine.Devices.Scsi[\"0\"].Attachments[\"01\"]: a LUN must be a number 0..63" },
  { "VirtualMachine.Devices.Scsi", "{\"0\": {\"Attachments\": {\"64\": {\"Path\": \"/d\"}}}}",
    "VirtualMachine.Devices.Scsi[\"0\"].Attachments[\"64\"]: a LUN must be a number 0..63" },
  { "VirtualMachine.Devices.Scsi", "{\"0\": {\"Attachments\": {\"1\": {}}}}",
    "VirtualMachine.Devices.Scsi[\"0\"].Attachments[\"1\"].Path: missing" },
  { "VirtualMachine.Devices.Scsi",
    "{\"0\": {\"Attachments\": {\"1\": {\"Path\": \"/d\", \"Type\": \"Iso\"}}}}",
    "VirtualMachine.Devices.Scsi[\"0\"].Attachments[\"1\"].Type: \"Iso\" is not one of "
    "VirtualDisk, PassThru" },
  { "VirtualMachine.Devices.Scsi", "{\"0\": 1}",
    "VirtualMachine.Devices.Scsi[\"0\"]: must be an object" },
  { "VirtualMachine.Devices.Scsi", "{\"0\": {}, \"1\": {}, \"2\": {}, \"3\": {}, \"4\": {}}",
    "VirtualMachine.Devices.Scsi: more than 4 controllers" },
  { "VirtualMachine.StorageQoS.IopsMaximum", "-1",
    "VirtualMachine.StorageQoS.IopsMaximum: -1 is out of range (0..2147483647)" },
  { "VirtualMachine.StorageQoS.BandwidthMaximum", "2147483648",
    "VirtualMachine.StorageQoS.BandwidthMaximum: 2147483648 is out of range" },
};

static void test_validation_names_the_path(void)
{
  for (gsize i = 0; i < G_N_ELEMENTS(bad_cases); i++) {
    g_autoptr(FerryVmDoc) base = ferry_vm_doc_new("o");
    g_autoptr(json_t) json = json_deep_copy(ferry_vm_doc_get(base));
    put(json, bad_cases[i].path, J(bad_cases[i].json));
    g_autoptr(GError) error = NULL;
    g_autoptr(FerryVmDoc) doc = ferry_vm_doc_from_json(json, &error);
    if (doc != NULL)
      g_error("case %zu (%s = %s) was accepted", i, bad_cases[i].path, bad_cases[i].json);
    assert_error_contains(error, FERRY_ERROR_INVALID_ARGUMENT, bad_cases[i].message);
  }
}

static void test_validation_of_set_values(void)
{
  g_autoptr(FerryVmDoc) doc = ferry_vm_doc_new("o");
  g_autoptr(json_t) mem = J("{\"SizeInMB\": 0}");
  ferry_vm_doc_set_memory(doc, mem); /* setters do not check... */
  g_autoptr(GError) error = NULL;
  g_assert_false(ferry_vm_doc_validate(doc, &error)); /* ...validation does */
  assert_error_contains(error, FERRY_ERROR_INVALID_ARGUMENT, "Memory.SizeInMB: 0");
  g_clear_error(&error);
  ferry_vm_doc_set_machine(doc, "virt");
  g_autoptr(json_t) mem2 = J("{\"SizeInMB\": 64}");
  ferry_vm_doc_set_memory(doc, mem2);
  g_assert_false(ferry_vm_doc_validate(doc, &error));
  assert_error_contains(error, FERRY_ERROR_INVALID_ARGUMENT, "Ferry.Machine: \"virt\"");
}

static void test_validation_device_count(void)
{
  g_autoptr(FerryVmDoc) doc = ferry_vm_doc_new("o");
  g_autoptr(GError) error = NULL;
  /* The entropy device is always there: one fewer for the document's own devices. */
  for (guint i = 0; i + 1 < FERRY_VM_MAX_VIRTIO_DEVICES; i++) {
    char id[16];
    g_snprintf(id, sizeof(id), "n%u", i);
    g_assert_true(ferry_vm_doc_add_nic(doc, id, NULL, &error));
  }
  g_assert_true(ferry_vm_doc_validate(doc, &error));
  g_assert_true(ferry_vm_doc_add_mux_port(doc, "p", &error));
  g_assert_false(ferry_vm_doc_validate(doc, &error));
  assert_error_contains(error, FERRY_ERROR_INVALID_ARGUMENT,
                        "VirtualMachine.Devices: 25 virtio devices");
}

static void numa_case(const char *machine, guint count, guint mb, const char *numa, const char *nps,
                      const char *message)
{
  g_autoptr(FerryVmDoc) doc = ferry_vm_doc_new("o");
  ferry_vm_doc_set_machine(doc, machine);
  g_autoptr(json_t) proc = json_pack("{s:i}", "Count", (int)count);
  g_autoptr(json_t) mem = json_pack("{s:i}", "SizeInMB", (int)mb);
  g_autoptr(json_t) n = J(numa);
  ferry_vm_doc_set_processor(doc, proc);
  ferry_vm_doc_set_memory(doc, mem);
  ferry_vm_doc_set_numa(doc, n);
  if (nps != NULL) {
    g_autoptr(json_t) s = J(nps);
    ferry_vm_doc_set_numa_processors(doc, s);
  }
  g_autoptr(GError) error = NULL;
  gboolean ok = ferry_vm_doc_validate(doc, &error);
  if (message == NULL) {
    g_assert_no_error(error);
    g_assert_true(ok);
  } else {
    g_assert_false(ok);
    assert_error_contains(error, FERRY_ERROR_INVALID_ARGUMENT, message);
  }
}

#define NODE(v, c, m)                                                                              \
  "{\"VirtualNodeNumber\": " #v ", \"CountOfProcessors\": " #c ", \"CountOfMemoryBlocks\": " #m "}"

static void test_validation_numa(void)
{
  numa_case("q35", 2, 256,
            "{\"VirtualNodeCount\": 2, \"Settings\": [" NODE(1, 1, 128) ", " NODE(0, 1, 128) "]}",
            NULL, NULL);
  numa_case("pc", 4, 256, "{\"VirtualNodeCount\": 2}", NULL, NULL);
  numa_case("microvm", 2, 256, "{\"VirtualNodeCount\": 2}", NULL,
            "VirtualMachine.ComputeTopology.Numa: NUMA needs Machine q35 or pc");
  numa_case("q35", 2, 256, "{\"Settings\": []}", NULL,
            "VirtualMachine.ComputeTopology.Numa.VirtualNodeCount: missing");
  numa_case("q35", 2, 256, "{\"VirtualNodeCount\": 2, \"Settings\": [" NODE(0, 2, 256) "]}", NULL,
            "Numa.Settings: has 1 entries but VirtualNodeCount is 2");
  numa_case("q35", 3, 256,
            "{\"VirtualNodeCount\": 2, \"Settings\": [" NODE(0, 1, 128) ", " NODE(1, 1, 128) "]}",
            NULL, "Numa.Settings: CountOfProcessors add up to 2 but Processor.Count is 3");
  numa_case("q35", 2, 512,
            "{\"VirtualNodeCount\": 2, \"Settings\": [" NODE(0, 1, 128) ", " NODE(1, 1, 128) "]}",
            NULL,
            "Numa.Settings: CountOfMemoryBlocks add up to 256 MiB but Memory.SizeInMB is 512");
  numa_case("q35", 2, 256,
            "{\"VirtualNodeCount\": 2, \"Settings\": [" NODE(1, 1, 128) ", " NODE(1, 1, 128) "]}",
            NULL, "Numa.Settings[1]: VirtualNodeNumber 1 appears twice");
  numa_case("q35", 2, 256,
            "{\"VirtualNodeCount\": 2, \"Settings\": [" NODE(0, 1, 128) ", " NODE(2, 1, 128) "]}",
            NULL, "Numa.Settings[1].VirtualNodeNumber: 2 is out of range (0..1)");
  numa_case("q35", 2, 256,
            "{\"VirtualNodeCount\": 2, \"MaxSizePerNode\": 100, \"Settings\": [" NODE(
                0, 1, 128) ", " NODE(1, 1, 128) "]}",
            NULL, "Numa.Settings[0]: 128 MiB is over MaxSizePerNode 100");
  numa_case("q35", 1, 256, "{\"VirtualNodeCount\": 2}", NULL,
            "Numa.VirtualNodeCount: 2 nodes need at least as many processors (Count is 1)");
  numa_case("q35", 4, 256, "{\"VirtualNodeCount\": 2}", "{\"count_per_node\": {\"max\": 1}}",
            "Numa: node 0 has 2 processors, over "
            "Processor.NumaProcessorsSettings.count_per_node.max 1");
  numa_case("q35", 2, 256, "{\"VirtualNodeCount\": 1, \"PreferredPhysicalNodes\": [\"x\"]}", NULL,
            "Numa.PreferredPhysicalNodes[0]: must be a node number");
}

/* ------------------------------------------------------------------------------------ */
/* Rendering                                                                             */

static void test_render_microvm(void)
{
  g_autoptr(FerryVmDoc) doc = bootable("microvm");
  g_autoptr(GError) error = NULL;
  g_assert_true(ferry_vm_doc_add_mux_port(doc, "ferry.mux", &error));
  g_assert_true(ferry_vm_doc_add_mux_port(doc, "ferry.log", &error));
  g_assert_true(ferry_vm_doc_add_scsi_controller(doc, "0", &error));
  g_assert_true(ferry_vm_doc_add_scsi_disk(doc, "0", 1, "/d/scratch.img", FALSE, &error));
  g_assert_true(ferry_vm_doc_add_share(doc, "rootfs", "/srv/rootfs", TRUE, &error));
  g_assert_true(ferry_vm_doc_add_nic(doc, "eth0", "00-15-5D-AA-BB-01", &error));
  FerryVmRenderOptions o = tcg_options();
  g_auto(GStrv) argv = render_ok(doc, &o);
  /* clang-format off */
  static const char *const expected[] = {
    "qemu-system-x86_64",
    "-name", "guest=vm1",
    "-nodefaults",
    "-no-user-config",
    "-display", "none",
    "-no-reboot",
    "-accel", "tcg",
    "-machine", "microvm",
    "-m", "262152K",
    "-smp", "1",
    "-chardev", "socket,id=qmp,path=/run/ferry/vm1/qmp.sock,server=on,wait=off",
    "-mon", "chardev=qmp,mode=control",
    "-chardev", "file,id=console,path=/run/ferry/vm1/console.log",
    "-serial", "chardev:console",
    "-kernel", "/img/vmlinux",
    "-initrd", "/img/initrd",
    "-append", "console=ttyS0 tsc_early_khz=2596150",
    "-device", "virtio-rng-device",
    "-device", "virtio-serial-device,id=vs0",
    "-chardev", "socket,id=port0,path=/run/ferry/vm1/port-0.sock,server=on,wait=off",
    "-device", "virtserialport,bus=vs0.0,chardev=port0,name=ferry.mux",
    "-chardev", "socket,id=port1,path=/run/ferry/vm1/port-1.sock,server=on,wait=off",
    "-device", "virtserialport,bus=vs0.0,chardev=port1,name=ferry.log",
    "-device", "virtio-scsi-device,id=scsi0",
    "-blockdev", "driver=file,node-name=disk0-1-file,filename=/d/scratch.img,read-only=off",
    "-blockdev", "driver=raw,node-name=disk0-1-format,file=disk0-1-file,read-only=off",
    "-device", "scsi-hd,bus=scsi0.0,channel=0,scsi-id=0,lun=1,drive=disk0-1-format,id=disk0-1",
    "-fsdev", "local,id=fs0,path=/srv/rootfs,security_model=none,readonly=on",
    "-device", "virtio-9p-device,fsdev=fs0,mount_tag=rootfs",
    "-netdev", "user,id=net0",
    "-device", "virtio-net-device,netdev=net0,mac=00:15:5d:aa:bb:01",
    NULL,
  };
  /* clang-format on */
  assert_argv(argv, expected);
}

static void test_render_q35(void)
{
  g_autoptr(FerryVmDoc) doc = bootable("q35");
  g_autoptr(GError) error = NULL;
  g_autoptr(json_t) proc = J("{\"Count\": 2}");
  g_autoptr(json_t) mem = J("{\"SizeInMB\": 512}");
  ferry_vm_doc_set_processor(doc, proc);
  ferry_vm_doc_set_memory(doc, mem);
  g_assert_true(ferry_vm_doc_add_mux_port(doc, "ferry.mux", &error));
  g_assert_true(ferry_vm_doc_add_scsi_controller(doc, "0", &error));
  g_assert_true(ferry_vm_doc_add_scsi_disk(doc, "0", 0, "/d/a.img", TRUE, &error));
  g_assert_true(ferry_vm_doc_add_share(doc, "rootfs", "/srv/rootfs", FALSE, &error));
  g_assert_true(ferry_vm_doc_add_nic(doc, "eth0", NULL, &error));
  FerryVmRenderOptions o = tcg_options();
  o.paused = TRUE;
  g_auto(GStrv) argv = render_ok(doc, &o);
  /* clang-format off */
  static const char *const expected[] = {
    "qemu-system-x86_64",
    "-name", "guest=vm1",
    "-nodefaults",
    "-no-user-config",
    "-display", "none",
    "-no-reboot",
    "-accel", "tcg,thread=multi",
    "-machine", "q35",
    "-m", "524296K",
    "-smp", "2",
    "-S",
    "-chardev", "socket,id=qmp,path=/run/ferry/vm1/qmp.sock,server=on,wait=off",
    "-mon", "chardev=qmp,mode=control",
    "-chardev", "file,id=console,path=/run/ferry/vm1/console.log",
    "-serial", "chardev:console",
    "-kernel", "/img/vmlinux",
    "-initrd", "/img/initrd",
    "-append", "console=ttyS0",
    "-device", "virtio-rng-pci",
    "-device", "virtio-serial-pci,id=vs0",
    "-chardev", "socket,id=port0,path=/run/ferry/vm1/port-0.sock,server=on,wait=off",
    "-device", "virtserialport,bus=vs0.0,chardev=port0,name=ferry.mux",
    "-device", "virtio-scsi-pci,id=scsi0",
    "-blockdev", "driver=file,node-name=disk0-0-file,filename=/d/a.img,read-only=on",
    "-blockdev", "driver=raw,node-name=disk0-0-format,file=disk0-0-file,read-only=on",
    "-device", "scsi-hd,bus=scsi0.0,channel=0,scsi-id=0,lun=0,drive=disk0-0-format,id=disk0-0",
    "-fsdev", "local,id=fs0,path=/srv/rootfs,security_model=none",
    "-device", "virtio-9p-pci,fsdev=fs0,mount_tag=rootfs",
    "-netdev", "user,id=net0",
    "-device", "virtio-net-pci,netdev=net0",
    NULL,
  };
  /* clang-format on */
  assert_argv(argv, expected);
}

static void test_render_pc_has_no_tsc(void)
{
  g_autoptr(FerryVmDoc) doc = bootable("pc");
  FerryVmRenderOptions o = tcg_options();
  g_auto(GStrv) argv = render_ok(doc, &o);
  g_assert_cmpstr(opt_value(argv, "-machine"), ==, "pc");
  g_assert_cmpstr(opt_value(argv, "-append"), ==, "console=ttyS0");
}

static void test_render_tsc_not_doubled(void)
{
  FerryVmRenderOptions o = tcg_options();
  g_autoptr(FerryVmDoc) doc = bootable("microvm");
  ferry_vm_doc_set_kernel_direct(doc, "/k", NULL, "tsc_early_khz=1000 console=ttyS0");
  g_auto(GStrv) a = render_ok(doc, &o);
  g_assert_cmpstr(opt_value(a, "-append"), ==, "tsc_early_khz=1000 console=ttyS0");
  g_assert_null(opt_value(a, "-initrd"));
  /* Only a parameter of its own counts. */
  ferry_vm_doc_set_kernel_direct(doc, "/k", NULL, "x.tsc_early_khz=5");
  g_auto(GStrv) b = render_ok(doc, &o);
  g_assert_cmpstr(opt_value(b, "-append"), ==, "x.tsc_early_khz=5 tsc_early_khz=2596150");
  /* No command line at all: just the parameter. */
  ferry_vm_doc_set_kernel_direct(doc, "/k", NULL, NULL);
  g_auto(GStrv) c = render_ok(doc, &o);
  g_assert_cmpstr(opt_value(c, "-append"), ==, "tsc_early_khz=2596150");
  /* 0: the host's own value, or nothing when it is unknown. */
  o.tsc_khz = 0;
  guint64 host = ferry_vm_host_tsc_khz(NULL);
  g_auto(GStrv) d = render_ok(doc, &o);
  if (host == 0) {
    g_assert_null(opt_value(d, "-append"));
  } else {
    g_autofree char *want = g_strdup_printf("tsc_early_khz=%" G_GUINT64_FORMAT, host);
    g_assert_cmpstr(opt_value(d, "-append"), ==, want);
  }
}

static void test_render_cmdline_too_long(void)
{
  g_autoptr(FerryVmDoc) doc = bootable("microvm");
  g_autofree char *cmdline = g_strnfill(FERRY_VM_MAX_KERNEL_CMDLINE - 5, 'x');
  ferry_vm_doc_set_kernel_direct(doc, "/k", NULL, cmdline);
  g_autoptr(GError) error = NULL;
  g_assert_true(ferry_vm_doc_validate(doc, &error));
  assert_render_fails(doc, FERRY_ERROR_INVALID_ARGUMENT,
                      "LinuxKernelDirect.KernelCmdLine: with tsc_early_khz appended");
}

static void test_render_incoming_implies_paused(void)
{
  g_autoptr(FerryVmDoc) doc = bootable("microvm");
  FerryVmRenderOptions o = tcg_options();
  g_auto(GStrv) running = render_ok(doc, &o);
  g_assert_cmpuint(count_arg(running, "-S"), ==, 0);
  g_assert_null(opt_value(running, "-incoming"));
  o.paused = TRUE;
  g_auto(GStrv) paused = render_ok(doc, &o);
  g_assert_cmpuint(count_arg(paused, "-S"), ==, 1);
  g_assert_null(opt_value(paused, "-incoming"));
  o.paused = FALSE;
  o.incoming = TRUE;
  g_auto(GStrv) incoming = render_ok(doc, &o);
  g_assert_cmpuint(count_arg(incoming, "-S"), ==, 1);
  g_assert_cmpstr(opt_value(incoming, "-incoming"), ==, "defer");
  o.paused = TRUE;
  g_auto(GStrv) both = render_ok(doc, &o);
  g_assert_cmpuint(count_arg(both, "-S"), ==, 1);
}

static void test_render_accel(void)
{
  g_autoptr(FerryVmDoc) doc = bootable("microvm");
  FerryVmRenderOptions o = tcg_options();
  g_auto(GStrv) tcg1 = render_ok(doc, &o);
  g_assert_cmpstr(opt_value(tcg1, "-accel"), ==, "tcg");
  g_autoptr(json_t) proc = J("{\"Count\": 2}");
  ferry_vm_doc_set_processor(doc, proc);
  g_auto(GStrv) tcg2 = render_ok(doc, &o);
  g_assert_cmpstr(opt_value(tcg2, "-accel"), ==, "tcg,thread=multi");
  g_assert_cmpstr(opt_value(tcg2, "-smp"), ==, "2");
  o.accel = FERRY_VM_ACCEL_KVM;
  g_auto(GStrv) kvm = render_ok(doc, &o);
  g_assert_cmpstr(opt_value(kvm, "-accel"), ==, "kvm");
  g_assert_cmpuint(count_arg(kvm, "-accel"), ==, 1);
  /* AUTO asks ferry_vm_detect_accel; the environment plays no part. */
  o.accel = FERRY_VM_ACCEL_AUTO;
  g_setenv("FERRY_ACCEL", "hvf", TRUE);
  g_auto(GStrv) autodetect = render_ok(doc, &o);
  g_assert_nonnull(opt_value(autodetect, "-accel"));
  g_unsetenv("FERRY_ACCEL");
}

static void test_render_qemu_binary(void)
{
  g_autoptr(FerryVmDoc) doc = bootable("microvm");
  FerryVmRenderOptions o = tcg_options();
  o.qemu_binary = "/opt/qemu/bin/qemu-system-x86_64";
  g_auto(GStrv) a = render_ok(doc, &o);
  g_assert_cmpstr(a[0], ==, "/opt/qemu/bin/qemu-system-x86_64");
  o.qemu_binary = NULL;
  /* The library reads no environment (issue 9): FERRY_QEMU is a program's to pass. */
  g_setenv("FERRY_QEMU", "/usr/local/bin/qemu-test", TRUE);
  g_auto(GStrv) c = render_ok(doc, &o);
  g_assert_cmpstr(c[0], ==, "qemu-system-x86_64");
  g_unsetenv("FERRY_QEMU");
}

static void test_render_requires_kernel(void)
{
  g_autoptr(FerryVmDoc) doc = ferry_vm_doc_new("o");
  assert_render_fails(doc, FERRY_ERROR_FAILED_PRECONDITION,
                      "VirtualMachine.Chipset.LinuxKernelDirect.KernelFilePath: a kernel is "
                      "required");
}

static void test_render_validates_first(void)
{
  g_autoptr(FerryVmDoc) doc = bootable("microvm");
  g_autoptr(json_t) proc = J("{\"Count\": 0}");
  ferry_vm_doc_set_processor(doc, proc);
  assert_render_fails(doc, FERRY_ERROR_INVALID_ARGUMENT,
                      "invalid VM document: VirtualMachine.ComputeTopology.Processor.Count");
}

static void test_render_socket_path_too_long(void)
{
  g_autoptr(FerryVmDoc) doc = bootable("microvm");
  g_autoptr(GError) error = NULL;
  g_assert_true(ferry_vm_doc_add_mux_port(doc, "ferry.mux", &error));
  FerryVmRenderOptions o = tcg_options();
  /* "<dir>/qmp.sock" is exactly 107 bytes: fits; "<dir>/port-0.sock" does not. */
  g_autofree char *pad = g_strnfill(107 - strlen("/qmp.sock") - 1, 'd');
  g_autofree char *dir = g_strconcat("/", pad, NULL);
  o.state_dir = dir;
  g_auto(GStrv) argv = ferry_vm_doc_render(doc, &o, &error);
  g_assert_null(argv);
  g_autofree char *port = g_strconcat(dir, "/port-0.sock", NULL);
  assert_error_contains(error, FERRY_ERROR_INVALID_ARGUMENT, "mux port ferry.mux socket path");
  assert_error_contains(error, FERRY_ERROR_INVALID_ARGUMENT, port);
  assert_error_contains(error, FERRY_ERROR_INVALID_ARGUMENT, "is 110 bytes");
  g_clear_error(&error);
  g_autofree char *longer = g_strconcat(dir, "x", NULL);
  o.state_dir = longer;
  g_auto(GStrv) argv2 = ferry_vm_doc_render(doc, &o, &error);
  g_assert_null(argv2);
  assert_error_contains(error, FERRY_ERROR_INVALID_ARGUMENT, "QMP socket path");
  g_clear_error(&error);
  /* Without the port, the 107-byte QMP path is fine. */
  g_autoptr(FerryVmDoc) plain = bootable("microvm");
  o.state_dir = dir;
  g_auto(GStrv) ok = render_ok(plain, &o);
  g_autofree char *qmp = g_strconcat(dir, "/qmp.sock", NULL);
  g_assert_cmpuint(strlen(qmp), ==, FERRY_VM_MAX_SOCKET_PATH);
  g_assert_true(has_pair(ok, "-mon", "chardev=qmp,mode=control"));
  o.state_dir = "run/ferry";
  g_auto(GStrv) relative = ferry_vm_doc_render(plain, &o, &error);
  g_assert_null(relative);
  assert_error_contains(error, FERRY_ERROR_INVALID_ARGUMENT, "not an absolute path");
}

static void test_render_escapes_commas(void)
{
  g_autoptr(FerryVmDoc) doc = ferry_vm_doc_new("a,b");
  g_autoptr(GError) error = NULL;
  ferry_vm_doc_set_kernel_direct(doc, "/k,1/vmlinux", NULL, "a=1,2");
  g_assert_true(ferry_vm_doc_add_share(doc, "s", "/srv/x,y", FALSE, &error));
  g_assert_true(ferry_vm_doc_add_scsi_controller(doc, "c", &error));
  g_assert_true(ferry_vm_doc_add_scsi_disk(doc, "c", 0, "/d/a,b.img", FALSE, &error));
  FerryVmRenderOptions o = tcg_options();
  o.state_dir = "/run/x,y";
  g_auto(GStrv) argv = render_ok(doc, &o);
  g_assert_cmpstr(opt_value(argv, "-name"), ==, "guest=a,,b");
  g_assert_true(has_pair(argv, "-chardev",
                         "socket,id=qmp,path=/run/x,,y/qmp.sock,server=on,"
                         "wait=off"));
  g_assert_true(has_pair(argv, "-chardev", "file,id=console,path=/run/x,,y/console.log"));
  g_assert_true(has_pair(argv, "-fsdev", "local,id=fs0,path=/srv/x,,y,security_model=none"));
  g_assert_true(has_pair(argv, "-blockdev",
                         "driver=file,node-name=disk0-0-file,filename=/d/a,,b.img,read-only=off"));
  /* -kernel and -append take their argument whole. */
  g_assert_cmpstr(opt_value(argv, "-kernel"), ==, "/k,1/vmlinux");
  g_assert_cmpstr(opt_value(argv, "-append"), ==, "a=1,2 tsc_early_khz=2596150");
}

static void test_render_storage_qos(void)
{
  g_autoptr(FerryVmDoc) doc = bootable("microvm");
  g_autoptr(GError) error = NULL;
  g_assert_true(ferry_vm_doc_add_scsi_controller(doc, "0", &error));
  g_assert_true(ferry_vm_doc_add_scsi_disk(doc, "0", 0, "/d/a.img", FALSE, &error));
  g_assert_true(ferry_vm_doc_add_scsi_disk(doc, "0", 1, "/d/b.img", TRUE, &error));
  FerryVmRenderOptions o = tcg_options();
  g_auto(GStrv) none = render_ok(doc, &o);
  g_assert_true(has_pair(none, "-blockdev",
                         "driver=raw,node-name=disk0-0-format,file=disk0-0-file,read-only=off"));
  g_assert_false(has_pair(none, "-object", "throttle-group,id=storage-qos"));
  g_autoptr(json_t) qos = J("{\"IopsMaximum\": 300, \"BandwidthMaximum\": 10485760}");
  ferry_vm_doc_set_storage_qos(doc, qos);
  g_auto(GStrv) limited = render_ok(doc, &o);
  /* One group: the limit is for the VM as a whole, as in HCS; each disk has a throttle
   * node in it between its file and its format node. */
  g_assert_true(has_pair(limited, "-object",
                         "throttle-group,id=storage-qos,x-iops-total=300,x-bps-total=10485760"));
  g_assert_true(has_pair(limited, "-blockdev",
                         "driver=throttle,node-name=disk0-0-qos,throttle-group=storage-qos,"
                         "file=disk0-0-file,read-only=off"));
  g_assert_true(has_pair(limited, "-blockdev",
                         "driver=raw,node-name=disk0-0-format,file=disk0-0-qos,read-only=off"));
  g_assert_true(has_pair(limited, "-blockdev",
                         "driver=throttle,node-name=disk0-1-qos,throttle-group=storage-qos,"
                         "file=disk0-1-file,read-only=on"));
  g_assert_true(has_pair(limited, "-device",
                         "scsi-hd,bus=scsi0.0,channel=0,scsi-id=0,lun=1,drive=disk0-1-format,"
                         "id=disk0-1"));
  g_autoptr(json_t) iops_only = J("{\"IopsMaximum\": 50, \"BandwidthMaximum\": 0}");
  ferry_vm_doc_set_storage_qos(doc, iops_only);
  g_auto(GStrv) iops = render_ok(doc, &o);
  g_assert_true(has_pair(iops, "-object", "throttle-group,id=storage-qos,x-iops-total=50"));
  g_autoptr(json_t) unknown = J("{\"IopsMaximum\": 50, \"LatencyTarget\": 3}");
  ferry_vm_doc_set_storage_qos(doc, unknown);
  assert_render_fails(doc, FERRY_ERROR_INVALID_ARGUMENT,
                      "VirtualMachine.StorageQoS.LatencyTarget: QEMU's drive throttling cannot");
}

static void test_render_device_order_is_stable(void)
{
  /* Built in two different orders, the documents render the same devices in the same
   * order: controllers and LUNs by number, adapters by id. */
  g_autoptr(FerryVmDoc) a = bootable("q35");
  g_autoptr(FerryVmDoc) b = bootable("q35");
  g_autoptr(GError) error = NULL;
  g_assert_true(ferry_vm_doc_add_scsi_controller(a, "2", &error));
  g_assert_true(ferry_vm_doc_add_scsi_controller(a, "10", &error));
  g_assert_true(ferry_vm_doc_add_scsi_disk(a, "10", 12, "/d/12", FALSE, &error));
  g_assert_true(ferry_vm_doc_add_scsi_disk(a, "10", 3, "/d/3", FALSE, &error));
  g_assert_true(ferry_vm_doc_add_nic(a, "eth1", NULL, &error));
  g_assert_true(ferry_vm_doc_add_nic(a, "eth0", NULL, &error));
  g_assert_true(ferry_vm_doc_add_scsi_controller(b, "10", &error));
  g_assert_true(ferry_vm_doc_add_scsi_controller(b, "2", &error));
  g_assert_true(ferry_vm_doc_add_scsi_disk(b, "10", 3, "/d/3", FALSE, &error));
  g_assert_true(ferry_vm_doc_add_scsi_disk(b, "10", 12, "/d/12", FALSE, &error));
  g_assert_true(ferry_vm_doc_add_nic(b, "eth0", NULL, &error));
  g_assert_true(ferry_vm_doc_add_nic(b, "eth1", NULL, &error));
  FerryVmRenderOptions o = tcg_options();
  g_auto(GStrv) ra = render_ok(a, &o);
  g_auto(GStrv) rb = render_ok(b, &o);
  g_assert_true(g_strv_equal((const char *const *)ra, (const char *const *)rb));
  /* Controller "2" is scsi0, "10" is scsi1; LUN 3 comes before LUN 12. */
  g_autofree char *all = g_strjoinv(" ", ra);
  const char *lun3 = strstr(all, "lun=3,drive=disk1-3-format,id=disk1-3");
  const char *lun12 = strstr(all, "lun=12,drive=disk1-12-format,id=disk1-12");
  g_assert_nonnull(lun3);
  g_assert_nonnull(lun12);
  g_assert_true(lun3 < lun12);
}

static void test_render_numa(void)
{
  g_autoptr(FerryVmDoc) doc = bootable("q35");
  g_autoptr(json_t) proc = J("{\"Count\": 3}");
  g_autoptr(json_t) mem = J("{\"SizeInMB\": 384}");
  g_autoptr(json_t) numa = J("{\"VirtualNodeCount\": 2, \"Settings\": [" NODE(
      1, 1,
      128) ", "
           "{\"VirtualNodeNumber\": 0, \"CountOfProcessors\": 2, \"CountOfMemoryBlocks\": 256, "
           "\"MemoryBackingType\": \"Physical\"}]}");
  ferry_vm_doc_set_processor(doc, proc);
  ferry_vm_doc_set_memory(doc, mem);
  ferry_vm_doc_set_numa(doc, numa);
  FerryVmRenderOptions o = tcg_options();
  g_auto(GStrv) argv = render_ok(doc, &o);
  /* Under TCG each node's block is 8 KiB longer, and -m is their sum. */
  g_assert_cmpstr(opt_value(argv, "-m"), ==, "393232K");
  g_assert_cmpstr(opt_value(argv, "-machine"), ==, "q35");
  g_assert_true(
      has_pair(argv, "-object", "memory-backend-ram,id=numa-mem0,size=262152K,prealloc=on"));
  g_assert_true(has_pair(argv, "-numa", "node,nodeid=0,cpus=0-1,memdev=numa-mem0"));
  g_assert_true(has_pair(argv, "-object", "memory-backend-ram,id=numa-mem1,size=131080K"));
  g_assert_true(has_pair(argv, "-numa", "node,nodeid=1,cpus=2,memdev=numa-mem1"));
  /* Without Settings: even shares, remainders to the last node. */
  g_autoptr(json_t) even = J("{\"VirtualNodeCount\": 2}");
  g_autoptr(json_t) odd = J("{\"SizeInMB\": 385}");
  ferry_vm_doc_set_numa(doc, even);
  ferry_vm_doc_set_memory(doc, odd);
  g_auto(GStrv) split = render_ok(doc, &o);
  g_assert_true(has_pair(split, "-object", "memory-backend-ram,id=numa-mem0,size=196616K"));
  g_assert_true(has_pair(split, "-numa", "node,nodeid=0,cpus=0,memdev=numa-mem0"));
  g_assert_true(has_pair(split, "-object", "memory-backend-ram,id=numa-mem1,size=197640K"));
  g_assert_true(has_pair(split, "-numa", "node,nodeid=1,cpus=1-2,memdev=numa-mem1"));
  /* Under KVM the sizes are the document's. */
  o.accel = FERRY_VM_ACCEL_KVM;
  g_auto(GStrv) kvm = render_ok(doc, &o);
  g_assert_cmpstr(opt_value(kvm, "-m"), ==, "385");
  g_assert_true(has_pair(kvm, "-object", "memory-backend-ram,id=numa-mem0,size=192M"));
  g_assert_true(has_pair(kvm, "-object", "memory-backend-ram,id=numa-mem1,size=193M"));
}

static void test_render_physical_backing(void)
{
  g_autoptr(FerryVmDoc) doc = bootable("microvm");
  g_autoptr(json_t) mem = J("{\"SizeInMB\": 128, \"Backing\": \"Physical\"}");
  ferry_vm_doc_set_memory(doc, mem);
  FerryVmRenderOptions o = tcg_options();
  g_auto(GStrv) argv = render_ok(doc, &o);
  g_assert_cmpstr(opt_value(argv, "-object"), ==,
                  "memory-backend-ram,id=ram,size=131080K,prealloc=on");
  g_assert_cmpstr(opt_value(argv, "-machine"), ==, "microvm,memory-backend=ram");
  g_assert_cmpstr(opt_value(argv, "-m"), ==, "131080K");
  o.accel = FERRY_VM_ACCEL_KVM;
  g_auto(GStrv) kvm = render_ok(doc, &o);
  g_assert_cmpstr(opt_value(kvm, "-object"), ==, "memory-backend-ram,id=ram,size=128M,prealloc=on");
  g_assert_cmpstr(opt_value(kvm, "-m"), ==, "128");
}

static void test_render_shares_options(void)
{
  g_autoptr(FerryVmDoc) doc = bootable("microvm");
  g_autoptr(json_t) json = json_deep_copy(ferry_vm_doc_get(doc));
  /* hcsshim marks read-only with Flags bit 0; the security model is ours. */
  put(json, "VirtualMachine.Devices.Plan9.Shares",
      J("[{\"Name\": \"s\", \"AccessName\": \"s\", \"Path\": \"/srv/s\", \"Flags\": 5}]"));
  put(json, "VirtualMachine.Ferry.Plan9SecurityModel", json_string("mapped"));
  g_autoptr(GError) error = NULL;
  g_autoptr(FerryVmDoc) parsed = ferry_vm_doc_from_json(json, &error);
  g_assert_no_error(error);
  FerryVmRenderOptions o = tcg_options();
  g_auto(GStrv) argv = render_ok(parsed, &o);
  g_assert_cmpstr(opt_value(argv, "-fsdev"), ==,
                  "local,id=fs0,path=/srv/s,security_model=mapped,readonly=on");
}

static void refused(const char *path, const char *json, const char *message)
{
  g_autoptr(FerryVmDoc) base = bootable("q35");
  g_autoptr(json_t) doc_json = json_deep_copy(ferry_vm_doc_get(base));
  put(doc_json, path, J(json));
  g_autoptr(GError) error = NULL;
  g_autoptr(FerryVmDoc) doc = ferry_vm_doc_from_json(doc_json, &error);
  g_assert_no_error(error);                                        /* a valid document... */
  assert_render_fails(doc, FERRY_ERROR_INVALID_ARGUMENT, message); /* ...QEMU cannot run */
}

static void test_render_refuses_what_qemu_cannot_express(void)
{
  refused("VirtualMachine.StopOnReset", "false", "VirtualMachine.StopOnReset: false cannot");
  refused("VirtualMachine.Chipset.Uefi", "{\"BootThis\": {\"DevicePath\": \"x\"}}",
          "VirtualMachine.Chipset.Uefi: UEFI boot is not supported");
  refused("VirtualMachine.ComputeTopology.Memory.Backing", "\"Hybrid\"",
          "Memory.Backing: Hybrid has no QEMU counterpart");
  refused("VirtualMachine.ComputeTopology.Memory.LowMmioGapInMB", "512",
          "Memory.LowMmioGapInMB: QEMU cannot place the MMIO gaps");
  refused("VirtualMachine.ComputeTopology.Processor.Limit", "50000",
          "Processor.Limit: a CPU cap is a host scheduler setting");
  refused("VirtualMachine.ComputeTopology.Processor.Reservation", "10",
          "Processor.Reservation: a CPU reservation");
  refused("VirtualMachine.ComputeTopology.Processor.CpuGroup", "{\"Id\": \"g\"}",
          "Processor.CpuGroup: host CPU groups");
  refused("VirtualMachine.ComputeTopology.Processor",
          "{\"Count\": 2, \"NumaProcessorsSettings\": {\"count_per_node\": {\"max\": 1}}}",
          "Processor.NumaProcessorsSettings: the processors need more than one NUMA node");
  refused("VirtualMachine.ComputeTopology.Numa",
          "{\"VirtualNodeCount\": 1, \"PreferredPhysicalNodes\": [1]}",
          "Numa.PreferredPhysicalNodes: host NUMA placement");
  refused("VirtualMachine.ComputeTopology.Numa",
          "{\"VirtualNodeCount\": 1, \"Settings\": [{\"VirtualNodeNumber\": 0, "
          "\"PhysicalNodeNumber\": 1, \"CountOfProcessors\": 1, \"CountOfMemoryBlocks\": 256}]}",
          "Numa.Settings[0].PhysicalNodeNumber: host NUMA placement");
  refused("VirtualMachine.Devices.ComPorts", "{\"0\": {\"NamedPipe\": \"\\\\\\\\.\\\\pipe\\\\x\"}}",
          "Devices.ComPorts: the serial console always goes to");
  refused("VirtualMachine.Devices.VirtualPci", "{\"guid\": {}}",
          "Devices.VirtualPci: this device type is not supported");
  refused("VirtualMachine.Devices.VirtualSmb", "{\"Shares\": [{}]}",
          "Devices.VirtualSmb: this device type is not supported");
}

static void test_render_ignores_hints(void)
{
  g_autoptr(FerryVmDoc) doc = bootable("q35");
  g_autoptr(json_t) mem = J("{\"SizeInMB\": 256, \"Backing\": \"Virtual\", \"AllowOvercommit\": "
                            "true, \"EnableHotHint\": true, \"EnableDeferredCommit\": true, "
                            "\"SlitType\": \"FirmwareFallbackMeasured\"}");
  g_autoptr(json_t) proc = J("{\"Count\": 1, \"Limit\": 100000, \"Weight\": 300}");
  ferry_vm_doc_set_memory(doc, mem);
  ferry_vm_doc_set_processor(doc, proc);
  FerryVmRenderOptions o = tcg_options();
  g_auto(GStrv) argv = render_ok(doc, &o);
  g_assert_cmpstr(opt_value(argv, "-machine"), ==, "q35");
  g_assert_null(opt_value(argv, "-object"));
}

static void test_port_socket(void)
{
  g_autoptr(FerryVmDoc) doc = ferry_vm_doc_new("o");
  g_autoptr(GError) error = NULL;
  g_assert_true(ferry_vm_doc_add_mux_port(doc, "ferry.mux", &error));
  g_assert_true(ferry_vm_doc_add_mux_port(doc, "ferry.log", &error));
  g_autofree char *a = ferry_vm_doc_port_socket(doc, "/run/ferry/vm1", "ferry.mux");
  g_autofree char *b = ferry_vm_doc_port_socket(doc, "/run/ferry/vm1/", "ferry.log");
  g_autofree char *none = ferry_vm_doc_port_socket(doc, "/run/ferry/vm1", "nope");
  g_assert_cmpstr(a, ==, "/run/ferry/vm1/port-0.sock");
  g_assert_cmpstr(b, ==, "/run/ferry/vm1/port-1.sock");
  g_assert_null(none);
  /* The same on a copy that travelled as text (a migration's destination). */
  g_autofree char *text = ferry_vm_doc_to_string(doc);
  g_autoptr(FerryVmDoc) dest = ferry_vm_doc_from_string(text, &error);
  g_assert_no_error(error);
  g_autofree char *c = ferry_vm_doc_port_socket(dest, "/run/ferry/vm2", "ferry.log");
  g_assert_cmpstr(c, ==, "/run/ferry/vm2/port-1.sock");
}

/* ------------------------------------------------------------------------------------ */
/* Host facts from fake files                                                            */

typedef struct {
  char *dir;
} TmpDir;

static void tmp_setup(TmpDir *t, gconstpointer data)
{
  t->dir = test_make_tmpdir();
  g_unsetenv("FERRY_ACCEL");
}

static void tmp_teardown(TmpDir *t, gconstpointer data)
{
  g_unsetenv("FERRY_ACCEL");
  test_rm_rf(t->dir);
  g_free(t->dir);
}

static char *write_file(TmpDir *t, const char *name, const char *text)
{
  char *path = g_build_filename(t->dir, name, NULL);
  g_autoptr(GError) error = NULL;
  g_assert_true(g_file_set_contents(path, text, -1, &error));
  return path;
}

#define CPUINFO(flags, mhz)                                                                        \
  "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\ncpu MHz\t\t: " mhz           \
  "\ncache size\t: 512 KB\nflags\t\t: " flags "\n\n"                                               \
  "processor\t: 1\nvendor_id\t: AuthenticAMD\ncpu MHz\t\t: 1234.000\nflags\t\t: " flags "\n"

static void test_accel_needs_flag_and_device(TmpDir *t, gconstpointer data)
{
  g_autofree char *vmx = write_file(t, "vmx", CPUINFO("fpu vme vmx sse2", "2596.150"));
  g_autofree char *svm = write_file(t, "svm", CPUINFO("fpu svm lm", "2596.150"));
  g_autofree char *none = write_file(t, "none", CPUINFO("fpu vmxx svmx avx512f", "2596.150"));
  g_autofree char *kvm = write_file(t, "kvm", "");
  g_autofree char *absent = g_build_filename(t->dir, "no-kvm", NULL);
  g_autofree char *no_cpuinfo = g_build_filename(t->dir, "no-cpuinfo", NULL);
  struct {
    const char *cpuinfo, *kvm;
    FerryVmAccel want;
  } cases[] = {
    { vmx, kvm, FERRY_VM_ACCEL_KVM },        { svm, kvm, FERRY_VM_ACCEL_KVM },
    { none, kvm, FERRY_VM_ACCEL_TCG },       { vmx, absent, FERRY_VM_ACCEL_TCG },
    { no_cpuinfo, kvm, FERRY_VM_ACCEL_TCG },
  };
  for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
    g_autoptr(GError) error = NULL;
    FerryVmAccel got = ferry_vm_detect_accel(cases[i].cpuinfo, cases[i].kvm, &error);
    g_assert_no_error(error);
    if (got != cases[i].want)
      g_error("case %zu: %s, expected %s", i, ferry_vm_accel_name(got),
              ferry_vm_accel_name(cases[i].want));
  }
}

/* The environment does not choose (a program parses its own setting and passes it). */
static void test_accel_ignores_environment(TmpDir *t, gconstpointer data)
{
  g_autofree char *vmx = write_file(t, "vmx", CPUINFO("fpu vmx", "1000"));
  g_autofree char *none = write_file(t, "none", CPUINFO("fpu", "1000"));
  g_autofree char *kvm = write_file(t, "kvm", "");
  g_autoptr(GError) error = NULL;
  g_setenv("FERRY_ACCEL", "tcg", TRUE);
  g_assert_cmpint(ferry_vm_detect_accel(vmx, kvm, &error), ==, FERRY_VM_ACCEL_KVM);
  g_setenv("FERRY_ACCEL", "kvm", TRUE);
  g_assert_cmpint(ferry_vm_detect_accel(none, kvm, &error), ==, FERRY_VM_ACCEL_TCG);
  g_assert_no_error(error);
  g_unsetenv("FERRY_ACCEL");
}

static void test_accel_parse(void)
{
  struct {
    const char *name;
    FerryVmAccel want;
  } ok[] = { { "kvm", FERRY_VM_ACCEL_KVM },
             { "tcg", FERRY_VM_ACCEL_TCG },
             { "auto", FERRY_VM_ACCEL_AUTO },
             { "", FERRY_VM_ACCEL_AUTO },
             { NULL, FERRY_VM_ACCEL_AUTO } };
  for (gsize i = 0; i < G_N_ELEMENTS(ok); i++) {
    FerryVmAccel got = (FerryVmAccel)99;
    g_autoptr(GError) error = NULL;
    g_assert_true(ferry_vm_accel_parse(ok[i].name, &got, &error));
    g_assert_no_error(error);
    g_assert_cmpint(got, ==, ok[i].want);
  }
  FerryVmAccel got;
  g_autoptr(GError) error = NULL;
  g_assert_false(ferry_vm_accel_parse("KVM!", &got, &error));
  assert_error_contains(error, FERRY_ERROR_INVALID_ARGUMENT,
                        "accelerator KVM!: expected kvm, tcg or auto");
}

static void test_tsc_parse(TmpDir *t, gconstpointer data)
{
  struct {
    const char *text;
    guint64 want;
  } cases[] = {
    { CPUINFO("fpu", "2596.150"), 2596150 }, /* the first processor's, not the second's */
    { CPUINFO("fpu", "3000"), 3000000 },
    { CPUINFO("fpu", "1999.9999"), 1999999 }, /* truncated, never rounded up */
    { CPUINFO("fpu", "800.5"), 800500 },
    { CPUINFO("fpu", "fast"), 0 },
    { CPUINFO("fpu", "12.5GHz"), 0 },
    { CPUINFO("fpu", "99999999.0"), 0 },
    { "processor\t: 0\nflags\t\t: fpu\n", 0 },
    { "", 0 },
  };
  for (gsize i = 0; i < G_N_ELEMENTS(cases); i++) {
    g_autofree char *path = write_file(t, "cpuinfo", cases[i].text);
    g_assert_cmpuint(ferry_vm_host_tsc_khz(path), ==, cases[i].want);
  }
  g_autofree char *absent = g_build_filename(t->dir, "absent", NULL);
  g_assert_cmpuint(ferry_vm_host_tsc_khz(absent), ==, 0);
}

/* ------------------------------------------------------------------------------------ */
/* Migratability                                                                         */

static void test_migratable(void)
{
  g_autoptr(FerryVmDoc) doc = bootable("microvm");
  g_autoptr(GError) error = NULL;
  g_assert_true(ferry_vm_doc_add_mux_port(doc, "ferry.mux", &error));
  g_assert_true(ferry_vm_doc_add_nic(doc, "eth0", NULL, &error));
  g_assert_true(ferry_vm_doc_add_scsi_controller(doc, "0", &error));
  g_assert_true(ferry_vm_doc_add_scsi_disk(doc, "0", 0, "/d/a.img", FALSE, &error));
  g_assert_true(ferry_vm_doc_check_migratable(doc, FERRY_VM_ACCEL_TCG, &error));
  g_assert_true(ferry_vm_doc_check_migratable(doc, FERRY_VM_ACCEL_KVM, &error));
  g_assert_true(ferry_vm_doc_check_migratable(doc, FERRY_VM_ACCEL_AUTO, &error));
  g_assert_no_error(error);
}

static void test_migratable_refuses_smp_under_tcg(void)
{
  g_autoptr(FerryVmDoc) doc = bootable("microvm");
  g_autoptr(json_t) proc = J("{\"Count\": 2}");
  ferry_vm_doc_set_processor(doc, proc);
  g_autoptr(GError) error = NULL;
  g_assert_false(ferry_vm_doc_check_migratable(doc, FERRY_VM_ACCEL_TCG, &error));
  assert_error_contains(error, FERRY_ERROR_FAILED_PRECONDITION, "2 vCPUs under TCG");
  g_clear_error(&error);
  g_assert_false(ferry_vm_doc_check_migratable(doc, FERRY_VM_ACCEL_AUTO, &error));
  assert_error_contains(error, FERRY_ERROR_FAILED_PRECONDITION, "2 vCPUs");
  g_clear_error(&error);
  g_assert_true(ferry_vm_doc_check_migratable(doc, FERRY_VM_ACCEL_KVM, &error));
}

static void test_migratable_refuses_shares(void)
{
  g_autoptr(FerryVmDoc) doc = bootable("microvm");
  g_autoptr(GError) error = NULL;
  g_assert_true(ferry_vm_doc_add_share(doc, "rootfs", "/srv/rootfs", TRUE, &error));
  g_assert_false(ferry_vm_doc_check_migratable(doc, FERRY_VM_ACCEL_KVM, &error));
  assert_error_contains(error, FERRY_ERROR_FAILED_PRECONDITION, "Plan9 shares (rootfs");
  g_clear_error(&error);
  g_autoptr(json_t) proc = J("{\"Count\": 0}");
  ferry_vm_doc_set_processor(doc, proc);
  g_assert_false(ferry_vm_doc_check_migratable(doc, FERRY_VM_ACCEL_KVM, &error));
  assert_error_contains(error, FERRY_ERROR_INVALID_ARGUMENT, "Processor.Count");
}

/* ------------------------------------------------------------------------------------ */
/* A real QEMU accepts what the renderer writes                                          */

static char *qemu_binary(void)
{
  const char *env = g_getenv("FERRY_QEMU");
  if (env != NULL && env[0] != '\0')
    return g_strdup(env);
  return g_find_program_in_path("qemu-system-x86_64");
}

/* One QMP answer to `command` on a blocking socket (events skipped). */
static json_t *qmp_call(int fd, GString *in, const char *command, GError **error)
{
  if (command != NULL) {
    g_autofree char *line = g_strconcat(command, "\n", NULL);
    if (write(fd, line, strlen(line)) != (gssize)strlen(line))
      return ferry_error_set_errno(error, errno, "write to QMP"), NULL;
  }
  for (;;) {
    char *nl = strchr(in->str, '\n');
    if (nl != NULL) {
      json_t *msg = ferry_json_parse_object("QMP", in->str, (gsize)(nl - in->str), error);
      g_string_erase(in, 0, nl - in->str + 1);
      if (msg == NULL)
        return NULL;
      if (json_object_get(msg, "event") == NULL)
        return msg;
      json_decref(msg);
      continue;
    }
    struct pollfd p = { .fd = fd, .events = POLLIN };
    if (poll(&p, 1, 10000) <= 0) {
      g_set_error(error, FERRY_ERROR, FERRY_ERROR_DEADLINE_EXCEEDED, "QMP: no answer in 10 s");
      return NULL;
    }
    char buf[4096];
    gssize n = read(fd, buf, sizeof(buf));
    if (n <= 0) {
      g_set_error(error, FERRY_ERROR, FERRY_ERROR_UNAVAILABLE, "QMP: connection closed");
      return NULL;
    }
    g_string_append_len(in, buf, n);
  }
}

static gboolean reap(GPid pid, guint timeout_ms, int *status)
{
  for (guint waited = 0; waited <= timeout_ms; waited += 10) {
    if (waitpid(pid, status, WNOHANG) == pid)
      return TRUE;
    g_usleep(10000);
  }
  return FALSE;
}

static char *read_log(const char *path)
{
  g_autofree char *text = NULL;
  g_file_get_contents(path, &text, NULL, NULL);
  return g_strdup(text != NULL ? text : "");
}

typedef struct {
  char *status;     /* query-status */
  char *name;       /* query-name */
  gboolean sockets; /* every mux port socket existed */
  gboolean console; /* console.log existed */
} QemuSeen;

static void qemu_seen_clear(QemuSeen *seen)
{
  g_free(seen->status);
  g_free(seen->name);
}

/* Start QEMU with `argv`, ask it over QMP what it is, quit it. QEMU is killed by its
 * pid whatever happens (never by name), and nothing asserts while it runs. */
static gboolean run_qemu(GStrv argv, const char *state_dir, const FerryVmDoc *doc, QemuSeen *seen,
                         GError **error)
{
  g_autofree char *log = g_build_filename(state_dir, "qemu.log", NULL);
  g_autofree char *qmp = g_build_filename(state_dir, "qmp.sock", NULL);
  g_autofree char *console = g_build_filename(state_dir, "console.log", NULL);
  int logfd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (logfd < 0)
    return ferry_error_set_errno(error, errno, "open %s", log);
  GPid pid = 0;
  gboolean spawned = g_spawn_async_with_fds(NULL, argv, NULL, G_SPAWN_DO_NOT_REAP_CHILD, NULL, NULL,
                                            &pid, -1, logfd, logfd, error);
  close(logfd);
  if (!spawned)
    return FALSE;

  gboolean ok = FALSE, exited = FALSE;
  int fd = -1, status = 0;
  g_autoptr(GString) in = g_string_new(NULL);
  g_autoptr(json_t) greeting = NULL, caps = NULL, st = NULL, name = NULL, quit = NULL;
  struct sockaddr_un sa = { .sun_family = AF_UNIX };
  g_strlcpy(sa.sun_path, qmp, sizeof(sa.sun_path));
  for (int tries = 0;; tries++) {
    if (waitpid(pid, &status, WNOHANG) == pid) {
      exited = TRUE;
      g_autofree char *text = read_log(log);
      g_set_error(error, FERRY_ERROR, FERRY_ERROR_INTERNAL, "QEMU exited at start: %s", text);
      goto out;
    }
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
      break;
    if (fd >= 0)
      close(fd);
    fd = -1;
    if (tries > 1000) {
      g_set_error(error, FERRY_ERROR, FERRY_ERROR_DEADLINE_EXCEEDED, "no QMP socket in 10 s");
      goto out;
    }
    g_usleep(10000);
  }
  if ((greeting = qmp_call(fd, in, NULL, error)) == NULL ||
      (caps = qmp_call(fd, in, "{\"execute\": \"qmp_capabilities\"}", error)) == NULL ||
      (st = qmp_call(fd, in, "{\"execute\": \"query-status\"}", error)) == NULL ||
      (name = qmp_call(fd, in, "{\"execute\": \"query-name\"}", error)) == NULL)
    goto out;
  seen->status =
      g_strdup(json_string_value(json_object_get(json_object_get(st, "return"), "status")));
  seen->name =
      g_strdup(json_string_value(json_object_get(json_object_get(name, "return"), "name")));
  seen->sockets = TRUE;
  gsize i;
  json_t *port;
  json_array_foreach(at(doc, "VirtualMachine.Ferry.MuxPorts"), i, port)
  {
    g_autofree char *sock =
        ferry_vm_doc_port_socket(doc, state_dir, json_string_value(json_object_get(port, "Name")));
    struct stat sb;
    if (stat(sock, &sb) != 0 || !S_ISSOCK(sb.st_mode))
      seen->sockets = FALSE;
  }
  seen->console = g_file_test(console, G_FILE_TEST_EXISTS);
  if ((quit = qmp_call(fd, in, "{\"execute\": \"quit\"}", error)) == NULL)
    goto out;
  exited = reap(pid, 10000, &status);
  if (!exited) {
    g_set_error(error, FERRY_ERROR, FERRY_ERROR_DEADLINE_EXCEEDED, "QEMU did not quit in 10 s");
    goto out;
  }
  ok = TRUE;
out:
  if (fd >= 0)
    close(fd);
  if (!ok && !exited && reap(pid, 200, &status)) {
    exited = TRUE;
    g_autofree char *text = read_log(log);
    g_prefix_error(error, "QEMU exited (%s): ", text);
  }
  if (!exited) {
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
  }
  g_spawn_close_pid(pid);
  return ok;
}

typedef struct {
  char *dir;
  char *kernel;
  char *disk;
  char *disk2;
  char *share;
} QemuFixture;

static void qemu_setup(QemuFixture *f, gconstpointer data)
{
  f->dir = test_make_tmpdir();
  f->kernel = g_build_filename(f->dir, "pvh.elf", NULL);
  f->disk = g_build_filename(f->dir, "disk.img", NULL);
  f->disk2 = g_build_filename(f->dir, "disk2.img", NULL);
  f->share = g_build_filename(f->dir, "share", NULL);
  test_write_pvh_kernel(f->kernel);
  for (int i = 0; i < 2; i++) {
    int fd = open(i == 0 ? f->disk : f->disk2, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    g_assert_cmpint(fd, >=, 0);
    g_assert_cmpint(ftruncate(fd, 1 << 20), ==, 0);
    close(fd);
  }
  g_assert_cmpint(mkdir(f->share, 0755), ==, 0);
}

static void qemu_teardown(QemuFixture *f, gconstpointer data)
{
  test_rm_rf(f->dir);
  g_free(f->dir);
  g_free(f->kernel);
  g_free(f->disk);
  g_free(f->disk2);
  g_free(f->share);
}

/* Render `doc` for this fixture, run it paused, check QEMU's view of it. */
static void check_real_qemu(QemuFixture *f, FerryVmDoc *doc, gboolean incoming,
                            const char *want_status)
{
  g_autofree char *binary = qemu_binary();
  if (binary == NULL) {
    g_test_skip("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)");
    return;
  }
  g_autoptr(GError) error = NULL;
  FerryVmRenderOptions o = { 0 };
  o.qemu_binary = binary;
  o.accel = FERRY_VM_ACCEL_TCG;
  o.state_dir = f->dir;
  o.paused = TRUE;
  o.incoming = incoming;
  o.tsc_khz = 2596150;
  g_auto(GStrv) argv = ferry_vm_doc_render(doc, &o, &error);
  g_assert_no_error(error);
  QemuSeen seen = { 0 };
  gboolean ok = run_qemu(argv, f->dir, doc, &seen, &error);
  if (!ok) {
    g_autofree char *cmd = g_strjoinv(" ", argv);
    g_error("%s\ncommand: %s", error->message, cmd);
  }
  g_assert_cmpstr(seen.status, ==, want_status);
  g_assert_cmpstr(seen.name, ==, "ferry-test");
  g_assert_true(seen.sockets);
  g_assert_true(seen.console);
  qemu_seen_clear(&seen);
}

/* Every kind of device, so that QEMU checks every option the renderer writes. */
static FerryVmDoc *real_doc(QemuFixture *f, const char *machine)
{
  FerryVmDoc *doc = ferry_vm_doc_new("ferry-test");
  g_autoptr(GError) error = NULL;
  g_autoptr(json_t) qos = J("{\"IopsMaximum\": 1000, \"BandwidthMaximum\": 10485760}");
  ferry_vm_doc_set_kernel_direct(doc, f->kernel, NULL, "console=ttyS0");
  ferry_vm_doc_set_machine(doc, machine);
  ferry_vm_doc_set_storage_qos(doc, qos);
  g_assert_true(ferry_vm_doc_add_mux_port(doc, "ferry.mux", &error));
  g_assert_true(ferry_vm_doc_add_mux_port(doc, "ferry.log", &error));
  g_assert_true(ferry_vm_doc_add_scsi_controller(doc, "0", &error));
  g_assert_true(ferry_vm_doc_add_scsi_disk(doc, "0", 0, f->disk, FALSE, &error));
  g_assert_true(ferry_vm_doc_add_scsi_disk(doc, "0", 5, f->disk2, TRUE, &error));
  g_assert_true(ferry_vm_doc_add_share(doc, "share0", f->share, TRUE, &error));
  g_assert_true(ferry_vm_doc_add_nic(doc, "eth0", "02:00:00:00:00:01", &error));
  g_assert_no_error(error);
  return doc;
}

static void test_qemu_microvm(QemuFixture *f, gconstpointer data)
{
  g_autoptr(FerryVmDoc) doc = real_doc(f, "microvm");
  check_real_qemu(f, doc, FALSE, "prelaunch");
}

static void test_qemu_q35_numa(QemuFixture *f, gconstpointer data)
{
  g_autoptr(FerryVmDoc) doc = real_doc(f, "q35");
  g_autoptr(json_t) proc = J("{\"Count\": 2}");
  g_autoptr(json_t) mem = J("{\"SizeInMB\": 256, \"Backing\": \"Physical\"}");
  g_autoptr(json_t) numa = J("{\"VirtualNodeCount\": 2}");
  ferry_vm_doc_set_processor(doc, proc);
  ferry_vm_doc_set_memory(doc, mem);
  ferry_vm_doc_set_numa(doc, numa);
  check_real_qemu(f, doc, FALSE, "prelaunch");
}

static void test_qemu_pc_incoming(QemuFixture *f, gconstpointer data)
{
  g_autoptr(FerryVmDoc) doc = real_doc(f, "pc");
  g_autoptr(json_t) mem = J("{\"SizeInMB\": 128, \"Backing\": \"Physical\"}");
  ferry_vm_doc_set_memory(doc, mem);
  check_real_qemu(f, doc, TRUE, "inmigrate");
}

/* QEMU 7.2's own texts: the version's digits; an alias resolved, a machine that is no
 * alias kept, a prefix that is another machine not taken, a machine QEMU lacks NULL. */
static void test_qemu_identity_parse(void)
{
  g_autofree char *v =
      ferry_vm_parse_qemu_version("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\n"
                                  "Copyright (c) 2003-2022 Fabrice Bellard\n");
  g_assert_cmpstr(v, ==, "7.2.22");
  g_assert_null(ferry_vm_parse_qemu_version("no such thing"));
  g_assert_null(ferry_vm_parse_qemu_version("version x"));
  static const char help[] =
      "Supported machines are:\n"
      "microvm              microvm (i386)\n"
      "pc                   Standard PC (i440FX + PIIX, 1996) (alias of pc-i440fx-7.2)\n"
      "pc-i440fx-7.2        Standard PC (i440FX + PIIX, 1996) (default)\n"
      "q35                  Standard PC (Q35 + ICH9, 2009) (alias of pc-q35-7.2)\n"
      "pc-q35-7.2           Standard PC (Q35 + ICH9, 2009)\n";
  g_autofree char *q35 = ferry_vm_parse_machine_type(help, "q35");
  g_assert_cmpstr(q35, ==, "pc-q35-7.2");
  g_autofree char *pc = ferry_vm_parse_machine_type(help, "pc");
  g_assert_cmpstr(pc, ==, "pc-i440fx-7.2");
  g_autofree char *micro = ferry_vm_parse_machine_type(help, "microvm");
  g_assert_cmpstr(micro, ==, "microvm");
  g_autofree char *exact = ferry_vm_parse_machine_type(help, "pc-q35-7.2");
  g_assert_cmpstr(exact, ==, "pc-q35-7.2");
  g_assert_null(ferry_vm_parse_machine_type(help, "pc-q35"));
  g_assert_null(ferry_vm_parse_machine_type(help, "virt"));
  g_assert_null(ferry_vm_parse_machine_type(help, ""));
}

/* The real binary, when it is installed. */
static void test_qemu_identity_probe(void)
{
  g_autofree char *qemu = g_find_program_in_path("qemu-system-x86_64");
  if (qemu == NULL) {
    g_test_skip("qemu-system-x86_64 is not installed");
    return;
  }
  g_autofree char *version = NULL, *machine = NULL;
  g_autoptr(GError) error = NULL;
  g_assert_true(ferry_vm_probe_qemu(NULL, "q35", &version, &machine, &error));
  g_assert_no_error(error);
  g_assert_true(g_ascii_isdigit(version[0]));
  g_assert_true(g_str_has_prefix(machine, "pc-q35-"));
  g_assert_false(ferry_vm_probe_qemu(NULL, "no-such-machine", &version, &machine, &error));
  g_assert_error(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION);
  g_clear_error(&error);
  g_assert_false(ferry_vm_probe_qemu("/nonexistent/qemu", "q35", &version, &machine, &error));
  g_assert_nonnull(error);
}

int main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_unsetenv("FERRY_ACCEL");
#define T(path, fn) g_test_add_func("/vm-builder/" path, fn)
  T("doc/default-fields", test_default_fields);
  T("doc/boot-config", test_boot_config);
  T("doc/memory-replaces-whole-block", test_memory_replaces_whole_block);
  T("doc/memory-nil-is-noop", test_memory_nil_is_noop);
  T("doc/memory-slit-type", test_memory_slit_type);
  T("doc/numa-settings", test_numa_settings);
  T("doc/processor-sequences", test_processor_sequences);
  T("doc/processor-nil-is-noop", test_processor_nil_is_noop);
  T("doc/cpu-group-keeps-count", test_cpu_group_keeps_count);
  T("doc/storage-qos", test_storage_qos);
  T("doc/scsi-needs-controller", test_scsi_needs_controller);
  T("doc/scsi-multiple-luns-kept", test_scsi_multiple_luns_kept);
  T("doc/scsi-controller-limits", test_scsi_controller_limits);
  T("doc/shares", test_shares);
  T("doc/duplicates-already-exist", test_duplicates_already_exist);
  T("doc/mux-port-names", test_mux_port_names);
  T("doc/nic-macs", test_nic_macs);
  T("doc/copy-is-deep", test_copy_is_deep);
  T("json/round-trip", test_json_round_trip);
  T("json/is-copied", test_json_is_copied);
  T("json/unknown-fields-kept", test_json_unknown_fields_kept);
  T("json/rejects-non-documents", test_json_rejects_non_documents);
  T("validate/names-the-path", test_validation_names_the_path);
  T("validate/set-values", test_validation_of_set_values);
  T("validate/device-count", test_validation_device_count);
  T("validate/numa", test_validation_numa);
  T("render/microvm", test_render_microvm);
  T("render/q35", test_render_q35);
  T("render/pc-has-no-tsc", test_render_pc_has_no_tsc);
  T("render/tsc-not-doubled", test_render_tsc_not_doubled);
  T("render/cmdline-too-long", test_render_cmdline_too_long);
  T("render/incoming-implies-paused", test_render_incoming_implies_paused);
  T("render/accel", test_render_accel);
  T("render/qemu-binary", test_render_qemu_binary);
  T("render/requires-kernel", test_render_requires_kernel);
  T("render/validates-first", test_render_validates_first);
  T("render/socket-path-too-long", test_render_socket_path_too_long);
  T("render/escapes-commas", test_render_escapes_commas);
  T("render/storage-qos", test_render_storage_qos);
  T("render/device-order-is-stable", test_render_device_order_is_stable);
  T("render/numa", test_render_numa);
  T("render/physical-backing", test_render_physical_backing);
  T("render/share-options", test_render_shares_options);
  T("render/refuses-what-qemu-cannot-express", test_render_refuses_what_qemu_cannot_express);
  T("render/ignores-hints", test_render_ignores_hints);
  T("render/port-socket", test_port_socket);
  T("migratable/ok", test_migratable);
  T("migratable/refuses-smp-under-tcg", test_migratable_refuses_smp_under_tcg);
  T("migratable/refuses-shares", test_migratable_refuses_shares);
#undef T
#define TT(path, fn) g_test_add("/vm-builder/" path, TmpDir, NULL, tmp_setup, fn, tmp_teardown)
  TT("accel/needs-flag-and-device", test_accel_needs_flag_and_device);
  TT("accel/ignores-environment", test_accel_ignores_environment);
  g_test_add_func("/vm-builder/accel/parse", test_accel_parse);
  g_test_add_func("/vm-builder/qemu-identity/parse", test_qemu_identity_parse);
  g_test_add_func("/vm-builder/qemu-identity/probe", test_qemu_identity_probe);
  TT("tsc/parse", test_tsc_parse);
#undef TT
#define TQ(path, fn)                                                                               \
  g_test_add("/vm-builder/" path, QemuFixture, NULL, qemu_setup, fn, qemu_teardown)
  TQ("qemu/microvm-runs-paused", test_qemu_microvm);
  TQ("qemu/q35-numa-runs-paused", test_qemu_q35_numa);
  TQ("qemu/pc-incoming", test_qemu_pc_incoming);
#undef TQ
  return g_test_run();
}
