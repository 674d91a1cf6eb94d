/*
 * Fuzz target: a migration destination's reading of the sandbox state in
 * ImportSandbox's Any (lib/migration/sandbox-state.c): arbitrary bytes as the value of
 * a ferry.v1.SandboxState Any, then the compatibility check against this host's data
 * and each mux channel converted as an import would.
 *
 * Checked besides memory safety: a refusal is INVALID_ARGUMENT or FAILED_PRECONDITION
 * with a message; an accepted state validates again, has a schema version this build
 * reads, and packs to bytes that decode to a state packing to the same bytes; every
 * channel of it keeps its offsets through the conversion to the mux's state.
 */
#include <stdint.h>
#include <string.h>

#include "ferry/error.h"
#include "ferry/sandbox-state.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_refusal(GError *error)
{
  if (error == NULL || error->message[0] == '\0' ||
      (!g_error_matches(error, FERRY_ERROR, FERRY_ERROR_INVALID_ARGUMENT) &&
       !g_error_matches(error, FERRY_ERROR, FERRY_ERROR_FAILED_PRECONDITION)))
    __builtin_trap();
  g_error_free(error);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  GError *error = NULL;
  Ferry__V1__SandboxState *state =
      ferry_sandbox_state_unpack(FERRY_SANDBOX_STATE_TYPE_URL, data, size, &error);
  if (state == NULL) {
    check_refusal(error);
    return 0;
  }
  if (error != NULL || !ferry_sandbox_state_validate(state, NULL) ||
      !ferry_sandbox_state_check_schema(state->schema_version, NULL) ||
      state->compatibility == NULL)
    __builtin_trap();

  g_autoptr(GBytes) once = ferry_sandbox_state_pack(state);
  gsize len;
  const guint8 *bytes = g_bytes_get_data(once, &len);
  Ferry__V1__SandboxState *again =
      ferry_sandbox_state_unpack(FERRY_SANDBOX_STATE_TYPE_URL, bytes, len, NULL);
  if (again == NULL)
    __builtin_trap();
  g_autoptr(GBytes) twice = ferry_sandbox_state_pack(again);
  if (!g_bytes_equal(once, twice))
    __builtin_trap();
  ferry__v1__sandbox_state__free_unpacked(again, NULL);

  char *flags[] = { "sse2", "x2apic" };
  Ferry__V1__Compatibility here;
  ferry__v1__compatibility__init(&here);
  here.qemu_version = "7.2.0";
  here.machine_type = "pc-i440fx-7.2";
  here.cpu_model = "qemu64";
  here.cpu_flags = flags;
  here.n_cpu_flags = 2;
  here.accelerator = "tcg";
  here.guest_image_digest = "sha256:aaaa";
  here.agent_protocol_version = 4;
  if (!ferry_sandbox_state_check_compat(&here, state->compatibility, &error))
    check_refusal(error);

  for (size_t i = 0; i < state->n_channels; i++) {
    FerryMuxChannelState mux;
    ferry_sandbox_state_channel_to_mux(state->channels[i], &mux);
    if (mux.send_total - mux.send_acked != g_bytes_get_size(mux.unacked) ||
        mux.recv_consumed != state->channels[i]->recv_consumed)
      __builtin_trap();
    ferry_mux_channel_state_clear(&mux);
  }
  ferry__v1__sandbox_state__free_unpacked(state, NULL);
  return 0;
}
