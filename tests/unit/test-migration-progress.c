/*
 * lib/migration's progress line, JSON events and report: what is known is shown, what
 * is not is left out, the units are right (QEMU's Mbit/s become MiB/s).
 */
#include <string.h>

#include "ferry/migration.h"

static void test_line(void)
{
  FerryMigrationProgress p = { .stage = FERRY_MIGRATION_STAGE_EXPORT };
  g_autofree char *start = ferry_migration_progress_line(&p, 300000);
  g_assert_cmpstr(start, ==, "export  0.3 s");

  p.stage = FERRY_MIGRATION_STAGE_TRANSFER;
  p.passes = 3;
  p.bytes_transferred = 96 * 1024 * 1024;
  p.bytes_total = 256 * 1024 * 1024;
  p.bytes_remaining = 12 * 1024 * 1024 + 512 * 1024;
  p.rate_mbps = 8 * 1.048576 * 35; /* 35 MiB/s in QEMU's megabits */
  p.expected_downtime_ms = 28;
  g_autofree char *moving = ferry_migration_progress_line(&p, 4200000);
  g_assert_cmpstr(
      moving, ==,
      "transfer  pass 3  96.0 MiB sent  12.5 MiB left  35.0 MiB/s  blackout ~28 ms  4.2 s");

  /* After the switch: the measured blackout, no estimate, no bytes left shown. */
  p.stage = FERRY_MIGRATION_STAGE_CLEANUP;
  p.blackout_ms = 31;
  p.rate_mbps = 0;
  g_autofree char *after = ferry_migration_progress_line(&p, 125 * G_USEC_PER_SEC);
  g_assert_cmpstr(after, ==, "cleanup  pass 3  96.0 MiB sent  blackout 31 ms  2m05s");
}

static void test_json(void)
{
  FerryMigrationProgress p = { .stage = FERRY_MIGRATION_STAGE_TRANSFER,
                               .phase = PHASE__PHASE_TRANSFER_IN_PROGRESS,
                               .passes = 2,
                               .bytes_transferred = 1000,
                               .bytes_total = 4000,
                               .bytes_remaining = 3000,
                               .rate_mbps = 80.5,
                               .expected_downtime_ms = 12 };
  g_autoptr(json_t) j = ferry_migration_progress_json(&p, 1500000);
  g_assert_cmpstr(json_string_value(json_object_get(j, "event")), ==, "progress");
  g_assert_cmpstr(json_string_value(json_object_get(j, "stage")), ==, "transfer");
  g_assert_cmpstr(json_string_value(json_object_get(j, "phase")), ==, "transferring");
  g_assert_cmpint(json_integer_value(json_object_get(j, "pass")), ==, 2);
  g_assert_cmpint(json_integer_value(json_object_get(j, "sent_bytes")), ==, 1000);
  g_assert_cmpint(json_integer_value(json_object_get(j, "remaining_bytes")), ==, 3000);
  g_assert_cmpfloat(json_real_value(json_object_get(j, "rate_mbps")), ==, 80.5);
  g_assert_cmpint(json_integer_value(json_object_get(j, "elapsed_ms")), ==, 1500);
}

static void test_report(void)
{
  FerryMigrationReport r = { .outcome = FERRY_MIGRATION_OUTCOME_MIGRATED,
                             .total_us = 4800000,
                             .last = { .blackout_ms = 31,
                                       .bytes_transferred = 96 * 1024 * 1024,
                                       .passes = 3,
                                       .downtime_ms = 25 } };
  g_autofree char *ok = ferry_migration_report_text(&r);
  g_assert_cmpstr(ok, ==, "migrated in 4.8 s: blackout 31 ms, 96.0 MiB in 3 passes");
  g_autoptr(json_t) j = ferry_migration_report_json(&r);
  g_assert_cmpstr(json_string_value(json_object_get(j, "event")), ==, "report");
  g_assert_cmpstr(json_string_value(json_object_get(j, "outcome")), ==, "migrated");
  g_assert_cmpint(json_integer_value(json_object_get(j, "total_ms")), ==, 4800);
  g_assert_cmpint(json_integer_value(json_object_get(j, "blackout_ms")), ==, 31);
  g_assert_true(json_is_null(json_object_get(j, "error")));

  r.outcome = FERRY_MIGRATION_OUTCOME_RECOVERED;
  r.error = "the migration: cancelled";
  g_autofree char *back = ferry_migration_report_text(&r);
  g_assert_cmpstr(back, ==,
                  "recovered in 4.8 s: the sandbox runs here, as before: the migration: cancelled");
  g_autoptr(json_t) jb = ferry_migration_report_json(&r);
  g_assert_cmpstr(json_string_value(json_object_get(jb, "error")), ==, "the migration: cancelled");

  r.outcome = FERRY_MIGRATION_OUTCOME_MIGRATED;
  r.error = "the source's Cleanup (its paused QEMU may remain): gone";
  r.last.passes = 1;
  g_autofree char *warn = ferry_migration_report_text(&r);
  g_assert_cmpstr(warn, ==,
                  "migrated in 4.8 s: blackout 31 ms, 96.0 MiB in 1 pass; the source's Cleanup "
                  "(its paused QEMU may remain): gone");
}

int main(int argc, char **argv)
{
  g_test_init(&argc, &argv, NULL);
  g_test_add_func("/migration-progress/line", test_line);
  g_test_add_func("/migration-progress/json", test_json);
  g_test_add_func("/migration-progress/report", test_report);
  return g_test_run();
}
