/*
 * Fuzz target: the QMP client (lib/vm/qmp.c) reading whatever "QEMU" sends -- the
 * greeting, answers by id, errors, events, garbage -- through a real FerryQmp on a
 * socketpair, the default main context run until it settles after every piece.
 *
 * Before the input, three commands are queued (ids 0-2; qmp_capabilities takes id 3
 * once the greeting arrives), one of them passing an fd; every successful answer to
 * one of ours issues one more command from inside the reply callback, up to
 * MAX_FOLLOW_UPS (ids 4 on). The first byte chooses the feed size and whether QEMU
 * hangs up before the client is freed.
 *
 * Checked besides memory safety: every command (and the start) is answered exactly
 * once by the time the client is freed, with a result or an error (with a message), the connection
 * is reported closed at most once.
 */
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ferry/fd.h"
#include "ferry/qmp.h"
#include "fuzz-loop.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_FOLLOW_UPS 4

typedef struct {
  guint issued;  /* commands executed, and the start */
  guint answers; /* replies received */
  guint follow_ups;
  guint closed;
} Run;

static void check_error(const GError *error)
{
  if (error != NULL && (error->message == NULL || error->message[0] == '\0'))
    __builtin_trap();
}

static void on_reply(FerryQmp *qmp, json_t *result, const GError *error, gpointer ud)
{
  Run *r = ud;
  r->answers++;
  if (r->answers > r->issued)
    __builtin_trap(); /* answered more often than asked */
  if ((result == NULL) == (error == NULL))
    __builtin_trap(); /* an answer is a result or an error, never both or neither */
  check_error(error);
  if (result != NULL)
    (void)json_dumpb(result, NULL, 0, JSON_COMPACT);
  if (error == NULL && r->follow_ups < MAX_FOLLOW_UPS && ferry_qmp_is_open(qmp)) {
    r->follow_ups++;
    r->issued++;
    ferry_qmp_execute(qmp, "query-migrate", NULL, 0, on_reply, r);
  }
}

static void on_event(FerryQmp *qmp, const char *event, json_t *data, gint64 timestamp_us,
                     gpointer ud)
{
  if (event == NULL)
    __builtin_trap();
  (void)strlen(event);
  if (data != NULL)
    (void)json_typeof(data);
}

static void on_closed(FerryQmp *qmp, const GError *error, gpointer ud)
{
  Run *r = ud;
  if (++r->closed > 1)
    __builtin_trap();
  check_error(error);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  if (size == 0)
    return 0;
  gsize chunk = (gsize)(data[0] & 0x7f) * 31 + 1;
  gboolean hang_up = (data[0] & 0x80) != 0;
  data++;
  size--;

  int sp[2];
  if (!ferry_socketpair(sp, FALSE, NULL))
    __builtin_trap();
  int qemu = sp[1];
  FerryQmp *qmp = ferry_qmp_new(sp[0], NULL);
  if (qmp == NULL)
    __builtin_trap();
  Run r = { 0 };
  ferry_qmp_set_event_func(qmp, on_event, &r);
  ferry_qmp_set_closed_func(qmp, on_closed, &r);

  int pipefd[2];
  if (pipe(pipefd) != 0)
    __builtin_trap();
  json_t *args = json_pack("{s:s}", "fdname", "migrate");
  r.issued += 3;
  ferry_qmp_execute(qmp, "query-status", NULL, 0, on_reply, &r);
  ferry_qmp_execute_with_fd(qmp, "getfd", args, pipefd[1], 0, on_reply, &r);
  ferry_qmp_execute(qmp, "stop", NULL, 0, on_reply, &r);
  json_decref(args);
  close(pipefd[0]);
  close(pipefd[1]);
  r.issued++;
  ferry_qmp_start(qmp, on_reply, &r);
  fuzz_loop_settle();

  fuzz_loop_feed(qemu, data, size, chunk);
  if (hang_up) {
    close(qemu);
    qemu = -1;
    fuzz_loop_settle();
  }
  ferry_qmp_free(qmp);
  fuzz_loop_settle();
  if (r.answers != r.issued)
    __builtin_trap(); /* a command left without its answer */
  if (qemu >= 0)
    close(qemu);
  return 0;
}
