/*
 * Helpers for fuzz targets that drive a real object on the main loop: a socketpair
 * peer plays the other side, its bytes are fed in chunks, and the default main
 * context is run until nothing is left to dispatch after each step, so each input
 * runs the same way every time and leaves no source behind for the next one.
 */
#pragma once

#include <glib.h>

/* Dispatch until the default context has nothing ready. Traps if it never settles
 * (a source that is always ready is a busy loop in the code under test). */
void fuzz_loop_settle(void);

/* Read and drop everything `fd` (non-blocking) has to give, and any fds passed with
 * it. FALSE when the other end has closed. */
gboolean fuzz_loop_drain(int fd);

/* Write `data` to the non-blocking `fd` in pieces of `chunk` bytes, settling the
 * context (and draining `fd`) after each piece. FALSE when the other end is gone
 * or stops reading before everything was written. */
gboolean fuzz_loop_feed(int fd, const guint8 *data, gsize size, gsize chunk);
