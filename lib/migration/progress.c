/*
 * What a migration looks like to a person (include/ferry/migration.h, "progress"): the
 * updating line, the JSON events and the report, pure functions of the figures.
 */
#include <math.h>

#include "ferry/migration.h"

#define MIB (1024.0 * 1024.0)

static const char *phase_name(Phase phase)
{
  static const char *const names[] = { "",         "setup-done",    "transferring",
                                       "blackout", "offline-done",  "blackout-exited",
                                       "done",     "recovery-done", "failed" };
  return (guint)phase < G_N_ELEMENTS(names) ? names[phase] : "";
}

/* "4.2 s" under a minute, "3m07s" past it. */
static void append_duration(GString *s, gint64 us)
{
  if (us < 0)
    us = 0;
  if (us < 60 * G_USEC_PER_SEC)
    g_string_append_printf(s, "%.1f s", (double)us / G_USEC_PER_SEC);
  else
    g_string_append_printf(s, "%" G_GINT64_FORMAT "m%02" G_GINT64_FORMAT "s",
                           us / (60 * G_USEC_PER_SEC), (us / G_USEC_PER_SEC) % 60);
}

char *ferry_migration_progress_line(const FerryMigrationProgress *p, gint64 elapsed_us)
{
  GString *s = g_string_new(ferry_migration_stage_name(p->stage));
  if (p->passes > 0)
    g_string_append_printf(s, "  pass %" G_GUINT64_FORMAT, p->passes);
  if (p->bytes_transferred > 0 || p->bytes_total > 0)
    g_string_append_printf(s, "  %.1f MiB sent", (double)p->bytes_transferred / MIB);
  if (p->bytes_remaining > 0 && p->stage == FERRY_MIGRATION_STAGE_TRANSFER)
    g_string_append_printf(s, "  %.1f MiB left", (double)p->bytes_remaining / MIB);
  /* QEMU's rate is in megabits per second (10^6 bits). */
  if (p->rate_mbps > 0 && isfinite(p->rate_mbps))
    g_string_append_printf(s, "  %.1f MiB/s", p->rate_mbps * 1e6 / 8 / MIB);
  if (p->blackout_ms > 0)
    g_string_append_printf(s, "  blackout %" G_GUINT64_FORMAT " ms", p->blackout_ms);
  else if (p->expected_downtime_ms > 0 && p->stage == FERRY_MIGRATION_STAGE_TRANSFER)
    g_string_append_printf(s, "  blackout ~%" G_GUINT64_FORMAT " ms", p->expected_downtime_ms);
  g_string_append(s, "  ");
  append_duration(s, elapsed_us);
  return g_string_free(s, FALSE);
}

json_t *ferry_migration_progress_json(const FerryMigrationProgress *p, gint64 elapsed_us)
{
  return json_pack("{s:s, s:s, s:s, s:b, s:I, s:I, s:I, s:I, s:f, s:I, s:I, s:I}", "event",
                   "progress", "stage", ferry_migration_stage_name(p->stage), "phase",
                   phase_name(p->phase), "phase_from_destination", p->phase_from_destination,
                   "pass", (json_int_t)p->passes, "sent_bytes", (json_int_t)p->bytes_transferred,
                   "total_bytes", (json_int_t)p->bytes_total, "remaining_bytes",
                   (json_int_t)p->bytes_remaining, "rate_mbps",
                   isfinite(p->rate_mbps) ? p->rate_mbps : 0.0, "expected_downtime_ms",
                   (json_int_t)p->expected_downtime_ms, "blackout_ms", (json_int_t)p->blackout_ms,
                   "elapsed_ms", (json_int_t)(elapsed_us > 0 ? elapsed_us / 1000 : 0));
}

char *ferry_migration_report_text(const FerryMigrationReport *r)
{
  GString *s = g_string_new(ferry_migration_outcome_name(r->outcome));
  g_string_append(s, " in ");
  append_duration(s, r->total_us);
  const FerryMigrationProgress *p = &r->last;
  if (r->outcome == FERRY_MIGRATION_OUTCOME_MIGRATED) {
    g_string_append(s, ": ");
    if (p->blackout_ms > 0)
      g_string_append_printf(s, "blackout %" G_GUINT64_FORMAT " ms, ", p->blackout_ms);
    g_string_append_printf(s, "%.1f MiB", (double)p->bytes_transferred / MIB);
    if (p->passes > 0)
      g_string_append_printf(s, " in %" G_GUINT64_FORMAT " pass%s", p->passes,
                             p->passes == 1 ? "" : "es");
  } else if (r->outcome == FERRY_MIGRATION_OUTCOME_RECOVERED) {
    g_string_append(s, ": the sandbox runs here, as before");
  }
  if (r->error != NULL)
    g_string_append_printf(s, "%s%s", r->outcome == FERRY_MIGRATION_OUTCOME_MIGRATED ? "; " : ": ",
                           r->error);
  return g_string_free(s, FALSE);
}

json_t *ferry_migration_report_json(const FerryMigrationReport *r)
{
  const FerryMigrationProgress *p = &r->last;
  json_t *j = json_pack("{s:s, s:s, s:I, s:I, s:I, s:I, s:I}", "event", "report", "outcome",
                        ferry_migration_outcome_name(r->outcome), "total_ms",
                        (json_int_t)(r->total_us / 1000), "blackout_ms", (json_int_t)p->blackout_ms,
                        "sent_bytes", (json_int_t)p->bytes_transferred, "passes",
                        (json_int_t)p->passes, "downtime_ms", (json_int_t)p->downtime_ms);
  json_object_set_new(j, "error", r->error != NULL ? json_string(r->error) : json_null());
  return j;
}
