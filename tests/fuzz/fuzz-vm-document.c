/*
 * Fuzz target: VM document validation (lib/vm/builder.c) on arbitrary JSON text, as
 * a migration destination or a caller handing in a stored document reads it, and the
 * QEMU command line of every document that validates. The first byte chooses the
 * render options (accelerator, paused, incoming); the rest is the document.
 *
 * Checked besides memory safety: a refusal always says why; an accepted document
 * survives its own text (to_string then from_string gives the same text) and its
 * copy validates; a rendered command line starts with the binary, has no empty
 * argument, and every mux port has a socket under the state directory.
 */
#include <stdint.h>
#include <string.h>

#include "ferry/error.h"
#include "ferry/vm-builder.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define STATE_DIR "/run/ferry/fuzz"
#define QEMU "qemu-system-x86_64"

static void check_render(const FerryVmDoc *doc, guint8 mode)
{
  /* Everything the renderer would otherwise read from the host is given. */
  FerryVmRenderOptions o = { 0 };
  o.qemu_binary = QEMU;
  o.accel = (mode & 1) ? FERRY_VM_ACCEL_KVM : FERRY_VM_ACCEL_TCG;
  o.state_dir = STATE_DIR;
  o.paused = (mode & 2) != 0;
  o.incoming = (mode & 4) != 0;
  o.tsc_khz = 2596150;
  GError *error = NULL;
  GStrv argv = ferry_vm_doc_render(doc, &o, &error);
  if (argv == NULL) {
    if (error == NULL)
      __builtin_trap(); /* a refusal must say why */
    g_error_free(error);
    return;
  }
  if (error != NULL || argv[0] == NULL || strcmp(argv[0], QEMU) != 0)
    __builtin_trap();
  for (char **a = argv; *a != NULL; a++)
    if (**a == '\0')
      __builtin_trap(); /* QEMU would read an empty argument as a missing value */
  g_strfreev(argv);

  json_t *ports = json_object_get(
      json_object_get(json_object_get(ferry_vm_doc_get(doc), "VirtualMachine"), "Ferry"),
      "MuxPorts");
  gsize i;
  json_t *port;
  json_array_foreach(ports, i, port)
  {
    char *path =
        ferry_vm_doc_port_socket(doc, STATE_DIR, json_string_value(json_object_get(port, "Name")));
    if (path == NULL || !g_str_has_prefix(path, STATE_DIR "/"))
      __builtin_trap(); /* a validated port without its socket */
    g_free(path);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  if (size == 0)
    return 0;
  guint8 mode = data[0];
  char *text = g_strndup((const char *)data + 1, size - 1);
  GError *error = NULL;
  FerryVmDoc *doc = ferry_vm_doc_from_string(text, &error);
  g_free(text);
  if (doc == NULL) {
    if (error == NULL || error->domain != FERRY_ERROR)
      __builtin_trap(); /* a refusal must say why */
    g_error_free(error);
    return 0;
  }

  char *out = ferry_vm_doc_to_string(doc);
  FerryVmDoc *back = ferry_vm_doc_from_string(out, &error);
  if (back == NULL)
    __builtin_trap(); /* a valid document's own text does not validate */
  char *again = ferry_vm_doc_to_string(back);
  if (strcmp(out, again) != 0)
    __builtin_trap();
  g_free(again);
  g_free(out);
  ferry_vm_doc_free(back);

  FerryVmDoc *copy = ferry_vm_doc_copy(doc);
  if (!ferry_vm_doc_validate(copy, NULL))
    __builtin_trap();
  ferry_vm_doc_free(copy);

  (void)ferry_vm_doc_memory_mb(doc);
  (void)ferry_vm_doc_processor_count(doc);
  if (ferry_vm_doc_machine(doc) == NULL)
    __builtin_trap();
  if (!ferry_vm_doc_check_migratable(doc, (mode & 1) ? FERRY_VM_ACCEL_KVM : FERRY_VM_ACCEL_TCG,
                                     &error)) {
    if (error == NULL)
      __builtin_trap();
    g_clear_error(&error);
  }
  check_render(doc, mode);
  ferry_vm_doc_free(doc);
  return 0;
}
