/*
 * The VM manager without QEMU: what it answers before a start, and the lifetime of the
 * work it queues for the main loop (issue 9 items 4 and 6). The VM with QEMU is
 * tests/integration/test-vm.c.
 */
#include "ferry/error.h"
#include "ferry/vm.h"
#include "test-util.h"

typedef struct {
  int calls;
  GError *error;
  json_t *props;
} Answer;

static void on_done(FerryVm *vm, const GError *error, gpointer ud)
{
  Answer *a = ud;
  a->calls++;
  if (error != NULL)
    a->error = g_error_copy(error);
}

static void on_props(FerryVm *vm, json_t *props, const GError *error, gpointer ud)
{
  Answer *a = ud;
  a->calls++;
  if (props != NULL)
    a->props = json_incref(props);
}

static void answer_clear(Answer *a)
{
  g_clear_error(&a->error);
  g_clear_pointer(&a->props, json_decref);
}

static FerryVm *new_vm(char **dir)
{
  *dir = test_make_tmpdir();
  g_autoptr(FerryVmDoc) doc = ferry_vm_doc_new("vm1");
  ferry_vm_doc_set_kernel_direct(doc, "/img/vmlinux", "/img/initrd", "console=ttyS0");
  FerryVmOptions o = { .qemu_binary = "qemu-system-x86_64", .accel = FERRY_VM_ACCEL_TCG };
  g_autoptr(GError) error = NULL;
  FerryVm *vm = ferry_vm_new("vm1", doc, *dir, &o, &error);
  g_assert_no_error(error);
  return vm;
}

static void spin(GMainContext *ctx)
{
  for (int i = 0; i < 100 && g_main_context_iteration(ctx, FALSE); i++)
    ;
}

/* A wait before any start fails from the main loop, never inside the call. */
static void test_wait_unstarted_fails_later(void)
{
  g_autofree char *dir = NULL;
  FerryVm *vm = new_vm(&dir);
  Answer a = { 0 };
  ferry_vm_wait(vm, on_done, &a);
  g_assert_cmpint(a.calls, ==, 0);
  spin(NULL);
  g_assert_cmpint(a.calls, ==, 1);
  g_assert_error(a.error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION);
  ferry_vm_free(vm);
  answer_clear(&a);
  test_rm_rf(dir);
}

/* Freed with answers still queued: they are dropped, nothing runs afterwards (under
 * ASan the old code read the freed VM from its idle). */
static void test_free_drops_queued_answers(void)
{
  g_autofree char *dir = NULL;
  FerryVm *vm = new_vm(&dir);
  Answer wait = { 0 }, pause = { 0 }, props = { 0 }, finalize = { 0 };
  ferry_vm_wait(vm, on_done, &wait);
  ferry_vm_pause(vm, on_done, &pause);
  ferry_vm_properties(vm, on_props, &props);
  ferry_vm_migration_finalize(vm, FERRY_VM_FINALIZE_STOP, 0, on_done, &finalize);
  ferry_vm_free(vm);
  spin(NULL);
  g_assert_cmpint(wait.calls, ==, 0);
  g_assert_cmpint(pause.calls, ==, 0);
  g_assert_cmpint(props.calls, ==, 0);
  g_assert_cmpint(finalize.calls, ==, 0);
  test_rm_rf(dir);
}

/* Properties of a VM that never ran: from the main loop, with its state. */
static void test_properties_unstarted(void)
{
  g_autofree char *dir = NULL;
  FerryVm *vm = new_vm(&dir);
  Answer a = { 0 };
  ferry_vm_properties(vm, on_props, &a);
  g_assert_cmpint(a.calls, ==, 0);
  spin(NULL);
  g_assert_cmpint(a.calls, ==, 1);
  g_assert_cmpstr(json_string_value(json_object_get(a.props, "State")), ==, "created");
  ferry_vm_free(vm);
  answer_clear(&a);
  test_rm_rf(dir);
}

/* Made under a pushed thread-default context, the VM answers there only. */
static void test_answers_on_creation_context(void)
{
  GMainContext *ctx = g_main_context_new();
  g_main_context_push_thread_default(ctx);
  g_autofree char *dir = NULL;
  FerryVm *vm = new_vm(&dir);
  g_main_context_pop_thread_default(ctx);
  Answer a = { 0 };
  ferry_vm_wait(vm, on_done, &a);
  spin(NULL);
  g_assert_cmpint(a.calls, ==, 0);
  spin(ctx);
  g_assert_cmpint(a.calls, ==, 1);
  ferry_vm_free(vm);
  answer_clear(&a);
  test_rm_rf(dir);
  g_main_context_unref(ctx);
}

int main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/vm/wait-unstarted-fails-later", test_wait_unstarted_fails_later);
  g_test_add_func("/vm/free-drops-queued-answers", test_free_drops_queued_answers);
  g_test_add_func("/vm/properties-unstarted", test_properties_unstarted);
  g_test_add_func("/vm/answers-on-creation-context", test_answers_on_creation_context);
  return g_test_run();
}
