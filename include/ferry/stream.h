/*
 * A byte stream on the GLib main loop: a non-blocking fd, read batching and a write
 * buffer. The protocol layers (ttrpc, the GCS bridge) put their framing on top.
 *
 * Everything one wake-up reads is handed to the data handler before anything is
 * written, so the answers a batch of requests causes leave in one write. Output that
 * the peer does not read is capped: past the cap the stream closes itself.
 *
 * No handler ever runs inside a call on the stream other than ferry_stream_close(): a
 * write that finds the peer gone (EPIPE, ECONNRESET), passes the output cap or fails to
 * shut the write side stops all I/O at once (ferry_stream_is_open() is then FALSE and
 * the fd is closed) and reports the cause to the closed handler from an idle on the
 * stream's main context. The caller may therefore touch its own state after any write.
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

typedef struct FerryStream FerryStream;

typedef struct {
  /* Bytes arrived; `data` is valid during the call only. The handler may write and
   * may close the stream. */
  void (*data)(FerryStream *stream, const guint8 *data, gsize len, gpointer user_data);
  /* The stream closed: error NULL after ferry_stream_close(stream, NULL), else why
   * (UNAVAILABLE "... closed by peer" at end of stream). Runs once: from the main loop
   * when reading or writing there failed, from an idle when a call failed, or inside
   * ferry_stream_close(). */
  void (*closed)(FerryStream *stream, const GError *error, gpointer user_data);
  /* Optional: the peer shut its write side. With this handler end of stream leaves the
   * stream open for writing (a half-close) and reading stops; without it, end of stream
   * closes the stream as above. Runs once. */
  void (*eof)(FerryStream *stream, gpointer user_data);
  /* Optional: output that had to wait (for the peer, or for the data handler to return)
   * has all been written. Runs from the main loop, never from inside a write; a write
   * that went out at once reports nothing (the writer sees pending output 0). */
  void (*drained)(FerryStream *stream, gpointer user_data);
} FerryStreamHandlers;

/* Default cap on unsent output. */
#define FERRY_STREAM_DEFAULT_MAX_OUTPUT (64u << 20)

/*
 * Take ownership of a connected stream fd (made non-blocking and close-on-exec) and
 * watch it on the thread-default main context, which every handler then runs on. `name` prefixes
 * error messages
 * ("ttrpc", "bridge"). NULL with error if the fd cannot be set up (it is closed).
 */
FerryStream *ferry_stream_new(int fd, const char *name, const FerryStreamHandlers *handlers,
                              gpointer user_data, GError **error);

FerryStream *ferry_stream_ref(FerryStream *stream);
/* The last unref closes the stream (without running the closed handler). */
void ferry_stream_unref(FerryStream *stream);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(FerryStream, ferry_stream_unref)

gboolean ferry_stream_is_open(const FerryStream *stream);

void ferry_stream_set_max_output(FerryStream *stream, gsize max_bytes);

/*
 * Append `len` bytes to the output and return where to put them; call
 * ferry_stream_commit() after filling them. NULL with error when the stream is
 * closed (UNAVAILABLE, or the cause of a failure not yet reported) or the output cap
 * would be passed (RESOURCE_EXHAUSTED; the stream is then closed and the closed handler
 * runs from an idle). The pointer is valid until the next call on the stream.
 */
guint8 *ferry_stream_reserve(FerryStream *stream, gsize len, GError **error);

/* Write out what was reserved, now or (inside the data handler) when it returns. A
 * failing write closes the stream; the closed handler runs from an idle. */
void ferry_stream_commit(FerryStream *stream);

/* reserve + copy + commit. FALSE with error when the bytes were not taken or the
 * stream failed writing them (the closed handler then runs later, from an idle). */
gboolean ferry_stream_write(FerryStream *stream, const void *data, gsize len, GError **error);

/* Write `data` (at least one byte) with a copy of `fd` passed along its first byte
 * (SCM_RIGHTS), in order with everything else written. Sockets only. The caller keeps
 * `fd`. */
gboolean ferry_stream_write_with_fd(FerryStream *stream, const void *data, gsize len, int fd,
                                    GError **error);

/* Bytes waiting to be written. */
gsize ferry_stream_pending_output(const FerryStream *stream);
/* On a socket: bytes the kernel took from us that the peer has not read yet (SIOCOUTQ);
 * 0 for other fds and closed streams. */
gsize ferry_stream_unread_output(const FerryStream *stream);

/* Stop (FALSE) or resume (TRUE) reading, for flow control: while stopped no data handler
 * runs (also not for the rest of the current wake-up) and the peer's bytes wait in the
 * kernel. Writing goes on. */
void ferry_stream_set_reading(FerryStream *stream, gboolean reading);

/* Once the pending output is written, shut the socket's write side (shutdown(2)
 * SHUT_WR): the peer reads end of stream and the stream stays open for reading. Later
 * writes fail with FAILED_PRECONDITION. A failing shutdown closes the stream (reported
 * from an idle). */
void ferry_stream_shutdown_write(FerryStream *stream);

/* Close the fd, drop unsent output, run the closed handler (here, before returning; with
 * the cause of an earlier failure not yet reported, if there is one). Idempotent. */
void ferry_stream_close(FerryStream *stream, const GError *error);

G_END_DECLS
