/*
 * Fuzz target: the host guest manager (lib/bridge/guest-connection.c over host.c)
 * parsing what a hostile guest answers -- the body of every response the host reads
 * and of container notifications -- through a real FerryGuestConnection on a
 * socketpair. Before the input the host asks for everything it can (negotiate, create,
 * start, properties, modify, dump stacks, a UVM exec and a container exec, delete,
 * shutdown: ids 0 to 9); a process it gets back is waited for, signalled, killed,
 * resized and asked for its exit code (ids from 10).
 *
 * The input is a list of records framed by the harness so the fuzzer works on bodies:
 * | selector:1 | id:1 | length:2 (LE) | body |. The selector picks the message type
 * (the response of one of the RPCs, the notification, or a raw type from the next 4
 * bytes); the first input byte chooses whether the guest hangs up at the end.
 *
 * Checked besides memory safety: every callback runs at most once, and all of them
 * have run once the connection is freed.
 */
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "ferry/fd.h"
#include "ferry/guest.h"
#include "fuzz-loop.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct {
  guint issued;
  guint answered;
  GPtrArray *processes;
} Run;

static void check(Run *r, const GError *error)
{
  if (++r->answered > r->issued)
    __builtin_trap();
  if (error != NULL && (error->message == NULL || error->message[0] == '\0'))
    __builtin_trap();
}

static void on_done(const GError *error, gpointer ud)
{
  check(ud, error);
}

static void on_json(json_t *result, const GError *error, gpointer ud)
{
  check(ud, error);
  if (result != NULL)
    (void)json_dumpb(result, NULL, 0, JSON_COMPACT);
}

static void on_signal(gboolean delivered, const GError *error, gpointer ud)
{
  check(ud, error);
}

static void on_process(FerryGuestProcess *p, const GError *error, gpointer ud)
{
  Run *r = ud;
  check(r, error);
  if (p == NULL)
    return;
  g_ptr_array_add(r->processes, p);
  (void)ferry_guest_process_get_pid(p);
  (void)ferry_guest_process_migration_state(p);
  r->issued += 4;
  ferry_guest_process_wait(p, on_done, r);
  ferry_guest_process_signal(p, 15, on_signal, r);
  ferry_guest_process_kill(p, on_signal, r);
  ferry_guest_process_resize_console(p, 80, 25, on_done, r);
  int code;
  g_autoptr(GError) error2 = NULL;
  (void)ferry_guest_process_exit_code(p, &code, &error2);
}

static const guint32 rpcs[] = {
  FERRY_BRIDGE_RPC_NEGOTIATE_PROTOCOL,
  FERRY_BRIDGE_RPC_CREATE,
  FERRY_BRIDGE_RPC_START,
  FERRY_BRIDGE_RPC_GET_PROPERTIES,
  FERRY_BRIDGE_RPC_MODIFY_SETTINGS,
  FERRY_BRIDGE_RPC_DUMP_STACKS,
  FERRY_BRIDGE_RPC_EXECUTE_PROCESS,
  FERRY_BRIDGE_RPC_DELETE_CONTAINER_STATE,
  FERRY_BRIDGE_RPC_SHUTDOWN_GRACEFUL,
  FERRY_BRIDGE_RPC_SHUTDOWN_FORCED,
  FERRY_BRIDGE_RPC_WAIT_FOR_PROCESS,
  FERRY_BRIDGE_RPC_SIGNAL_PROCESS,
  FERRY_BRIDGE_RPC_RESIZE_CONSOLE,
};

/* The guest's bytes for the records of the input. */
static GByteArray *frames(const guint8 *data, gsize size)
{
  GByteArray *out = g_byte_array_new();
  while (size >= 4) {
    guint8 sel = data[0];
    guint64 id = data[1];
    gsize len = MIN((gsize)(data[2] | data[3] << 8), size - 4);
    data += 4;
    size -= 4;
    guint32 type;
    guint n = G_N_ELEMENTS(rpcs);
    if (sel % (n + 2) < n)
      type = ferry_bridge_response_type(ferry_bridge_request_type(rpcs[sel % (n + 2)]));
    else if (sel % (n + 2) == n)
      type = FERRY_BRIDGE_NOTIFY_CONTAINER;
    else if (len >= 4) {
      type = (guint32)data[0] | (guint32)data[1] << 8 | (guint32)data[2] << 16 |
             (guint32)data[3] << 24;
      data += 4;
      size -= 4;
      len -= 4;
    } else
      type = 0;
    guint8 h[FERRY_BRIDGE_HEADER_SIZE];
    FerryBridgeHeader hdr = { type, (guint32)(FERRY_BRIDGE_HEADER_SIZE + len), id };
    ferry_bridge_header_encode(&hdr, h);
    g_byte_array_append(out, h, sizeof(h));
    g_byte_array_append(out, data, (guint)len);
    data += len;
    size -= len;
  }
  return out;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  if (size == 0)
    return 0;
  gboolean hang_up = (data[0] & 1) != 0;
  gsize chunk = (gsize)(data[0] >> 1) * 29 + 1;
  data++;
  size--;

  int sp[2];
  if (!ferry_socketpair(sp, FALSE, NULL))
    __builtin_trap();
  int guest = sp[1];
  FerryGuestConnection *gc = ferry_guest_connection_new(sp[0], NULL, NULL, NULL);
  if (gc == NULL)
    __builtin_trap();
  Run r = { .processes =
                g_ptr_array_new_with_free_func((GDestroyNotify)ferry_guest_process_unref) };
  r.issued++;
  ferry_guest_connection_connect(gc, on_done, &r);
  json_t *config = json_pack("{s:s}", "OciBundlePath", "/run/c1");
  r.issued++;
  FerryGuestContainer *c =
      ferry_guest_connection_create_container(gc, "c1", config, on_done, &r, NULL);
  json_decref(config);
  if (c == NULL)
    __builtin_trap();
  r.issued += 9;
  ferry_guest_container_start(c, on_done, &r);
  json_t *query = json_pack("{s:[s]}", "PropertyTypes", "ProcessList");
  ferry_guest_container_properties(c, query, on_json, &r);
  json_decref(query);
  json_t *request = json_pack("{s:s, s:s}", "ResourceType", "Network", "RequestType", "Add");
  ferry_guest_connection_modify(gc, NULL, request, on_done, &r);
  json_decref(request);
  ferry_guest_connection_dump_stacks(gc, on_json, &r);
  json_t *params = json_pack("{s:[s], s:b}", "CommandArgs", "/bin/true", "CreateStdOutPipe", 0);
  ferry_guest_connection_create_process(gc, params, on_process, &r);
  ferry_guest_container_create_process(c, params, on_process, &r);
  json_decref(params);
  ferry_guest_connection_delete_container_state(gc, "c2", on_done, &r);
  ferry_guest_container_shutdown(c, on_done, &r);
  ferry_guest_container_wait(c, on_done, &r);
  fuzz_loop_settle();

  g_autoptr(GByteArray) bytes = frames(data, size);
  fuzz_loop_feed(guest, bytes->data, bytes->len, chunk);
  if (hang_up) {
    close(guest);
    guest = -1;
  }
  fuzz_loop_settle();
  (void)ferry_guest_container_has_exited(c);
  (void)ferry_guest_container_exit_type(c);
  ferry_guest_container_close(c);
  ferry_guest_container_unref(c);
  for (guint i = 0; i < r.processes->len; i++)
    ferry_guest_process_close(r.processes->pdata[i]);
  ferry_guest_connection_free(gc);
  fuzz_loop_settle();
  g_ptr_array_unref(r.processes);
  fuzz_loop_settle();
  if (r.answered != r.issued)
    __builtin_trap(); /* a callback that never ran */
  if (guest >= 0)
    close(guest);
  return 0;
}
