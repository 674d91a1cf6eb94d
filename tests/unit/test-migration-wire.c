/*
 * The migration session's values as the shim's messages (lib/migration/wire.c): a log
 * message as hcsshim's NotificationsResponse (against bytes encoded by hand), a status
 * as ferry.migration.v1.StatusResponse, and a VM's phase report as a log message.
 */
#include <glib.h>
#include <string.h>

#include "ferry/error.h"
#include "ferry/migration-wire.h"

static char *pack_hex(const ProtobufCMessage *msg)
{
  size_t size = protobuf_c_message_get_packed_size(msg);
  g_autofree guint8 *buf = g_malloc(size + 1);
  protobuf_c_message_pack(msg, buf);
  GString *s = g_string_new(NULL);
  for (size_t i = 0; i < size; i++)
    g_string_append_printf(s, "%02x", buf[i]);
  return g_string_free(s, FALSE);
}

/* Blackout-exited from the source, id 7, started at 1 s: the bytes of hcsshim's
 * NotificationsResponse field by field. */
static void test_notification_bytes(void)
{
  FerryMigrationNotification note = { 0 };
  note.message_id = 7;
  note.origin = FERRY_MIGRATION_ORIGIN_SOURCE;
  note.phase = FERRY_MIGRATION_PHASE_BLACKOUT_EXITED;
  note.state = FERRY_MIGRATION_PHASE_STATE_SUCCESS;
  note.has_blackout = TRUE;
  note.blackout_duration_ms = 42;
  FerryMigrationNotificationMessage m;
  ferry_migration_notification_message_init(&m, &note, G_USEC_PER_SEC);
  g_autofree char *got = pack_hex(&m.response.base);
  g_assert_cmpstr(got, ==,
                  "0807"       /* 1 message_id 7 */
                  "120a"       /* 2 notification, 10 bytes */
                  "0801"       /*   1 origin SOURCE */
                  "1005"       /*   2 phase BLACKOUT_EXITED */
                  "1801"       /*   3 state SUCCESS */
                  "2202082a"   /*   4 blackout_exited{duration 42} */
                  "1a020801"); /* 3 start_time{seconds 1} */

  /* With times: update 2.5 s, blackout stop 3 s. */
  note.update_time_us = 2500000;
  note.blackout_stop_time_us = 3000000;
  ferry_migration_notification_message_init(&m, &note, G_USEC_PER_SEC);
  g_assert_cmpint(m.response.update_time->seconds, ==, 2);
  g_assert_cmpint(m.response.update_time->nanos, ==, 500000000);
  g_assert_cmpint(m.notification.blackout_exited->blackout_stop_timestamp->seconds, ==, 3);

  /* Without details there is no field 4, and no times without values. */
  FerryMigrationNotification done = { 0 };
  done.message_id = 1;
  done.origin = FERRY_MIGRATION_ORIGIN_DESTINATION;
  done.phase = FERRY_MIGRATION_PHASE_DONE;
  done.state = FERRY_MIGRATION_PHASE_STATE_SUCCESS;
  ferry_migration_notification_message_init(&m, &done, 0);
  g_autofree char *plain = pack_hex(&m.response.base);
  g_assert_cmpstr(plain, ==,
                  "0801"   /* 1 message_id 1 */
                  "1206"   /* 2 notification, 6 bytes */
                  "0802"   /*   1 origin DESTINATION */
                  "1006"   /*   2 phase DONE */
                  "1801"); /*   3 state SUCCESS */
  g_assert_null(m.response.start_time);
  g_assert_null(m.response.update_time);
}

static void test_status_message(void)
{
  g_autoptr(FerryMigrationNotifications) n = ferry_migration_notifications_new(0);
  FerryMigrationNotification note = { 0 };
  note.origin = FERRY_MIGRATION_ORIGIN_DESTINATION;
  note.phase = FERRY_MIGRATION_PHASE_FAILED;
  note.state = FERRY_MIGRATION_PHASE_STATE_DESTINATION_FAILED;
  ferry_migration_notifications_post(n, &note);
  ferry_migration_notifications_post(n, &note);
  g_autoptr(GError) why = g_error_new(FERRY_ERROR, FERRY_ERROR_DEADLINE_EXCEEDED, "no socket");

  FerryMigrationStatus st = { 0 };
  st.session_id = "s1";
  st.role = FERRY_MIGRATION_ROLE_DESTINATION;
  st.state = FERRY_MIGRATION_STATE_FAILED;
  st.bytes_transferred = 5;
  st.bytes_total = 9;
  st.last_error = why;
  st.cleaned_up = TRUE;
  st.notifications = n;
  FerryMigrationStatusMessage m;
  ferry_migration_status_message_init(&m, &st);

  size_t size = protobuf_c_message_get_packed_size(&m.response.base);
  g_autofree guint8 *buf = g_malloc(size);
  protobuf_c_message_pack(&m.response.base, buf);
  Ferry__Migration__V1__StatusResponse *back =
      ferry__migration__v1__status_response__unpack(NULL, size, buf);
  g_assert_nonnull(back);
  g_assert_cmpstr(back->session_id, ==, "s1");
  g_assert_cmpint(back->role, ==, FERRY__MIGRATION__V1__ROLE__ROLE_DESTINATION);
  g_assert_cmpint(back->state, ==, FERRY__MIGRATION__V1__SESSION_STATE__SESSION_STATE_FAILED);
  g_assert_cmpint(back->phase, ==, PHASE__PHASE_FAILED);
  g_assert_cmpint(back->phase_state, ==, PHASE_STATE__PHASE_STATE_DESTINATION_FAILED);
  g_assert_cmpuint(back->last_message_id, ==, 2);
  g_assert_cmpuint(back->bytes_transferred, ==, 5);
  g_assert_cmpuint(back->bytes_total, ==, 9);
  g_assert_true(back->cleaned_up);
  g_assert_nonnull(back->last_error);
  g_assert_cmpint(back->last_error->code, ==, 4); /* google.rpc DEADLINE_EXCEEDED */
  g_assert_cmpstr(back->last_error->message, ==, "no socket");
  ferry__migration__v1__status_response__free_unpacked(back, NULL);

  /* Nothing posted, no error: the fields stay unset. */
  FerryMigrationStatus quiet = { 0 };
  quiet.session_id = "s2";
  quiet.state = FERRY_MIGRATION_STATE_SOURCE_EXPORTED;
  ferry_migration_status_message_init(&m, &quiet);
  g_assert_null(m.response.last_error);
  g_assert_cmpuint(m.response.last_message_id, ==, 0);
  g_assert_cmpint(m.response.phase, ==, PHASE__PHASE_UNSPECIFIED);
}

static void test_from_vm(void)
{
  FerryVmNotification vm = { 0 };
  vm.origin = FERRY_VM_ORIGIN_DESTINATION;
  vm.phase = FERRY_VM_PHASE_BLACKOUT_EXITED;
  vm.result = FERRY_VM_RESULT_SUCCESS;
  vm.blackout_ms = 120;
  vm.blackout_stop_us = 77;
  FerryMigrationNotification note;
  ferry_migration_notification_from_vm(&note, &vm);
  g_assert_cmpint(note.origin, ==, FERRY_MIGRATION_ORIGIN_DESTINATION);
  g_assert_cmpint(note.phase, ==, FERRY_MIGRATION_PHASE_BLACKOUT_EXITED);
  g_assert_cmpint(note.state, ==, FERRY_MIGRATION_PHASE_STATE_SUCCESS);
  g_assert_true(note.has_blackout);
  g_assert_cmpuint(note.blackout_duration_ms, ==, 120);
  g_assert_cmpint(note.blackout_stop_time_us, ==, 77);

  vm.phase = FERRY_VM_PHASE_FAILED;
  vm.result = FERRY_VM_RESULT_RECOVERY_FAILED;
  ferry_migration_notification_from_vm(&note, &vm);
  g_assert_false(note.has_blackout);
  g_assert_cmpint(note.state, ==, FERRY_MIGRATION_PHASE_STATE_RECOVERY_FAILED);
  g_assert_true(ferry_migration_phase_is_terminal(note.phase));
}

int main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/migration-wire/notification-bytes", test_notification_bytes);
  g_test_add_func("/migration-wire/status-message", test_status_message);
  g_test_add_func("/migration-wire/from-vm", test_from_vm);
  return g_test_run();
}
