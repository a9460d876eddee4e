/*
 * phoenix_core.h - the phoenix_trio C core: framing, batching, CRC32C, token bucket.
 *
 * Plain C99, no I/O, no clock, no global mutable state, no dependency beyond libc.
 * Any runtime can embed it: phoenix_trio reaches it through cffi, and a C program,
 * an Erlang NIF or Rust FFI can link it the same way (csrc/Makefile builds
 * libphoenix_core.a). Every function is reentrant; a decoder or bucket must not be
 * used from two threads at once without a lock.
 *
 * Wire format (docs/wire-format.md has the full specification):
 *
 *   offset  size  field
 *   0       2     magic "PX" (0x50 0x58)
 *   2       1     version (PX_VERSION)
 *   3       1     flags (PX_FLAG_*; unknown bits must be zero)
 *   4       4     channel id, big-endian
 *   8       4     payload length, big-endian
 *   12      4     CRC32C of bytes 0..11 followed by the payload, big-endian
 *   16      n     payload
 *
 * A batch payload (PX_FLAG_BATCH) is: varint count, then count times
 * (varint length, bytes). Varints are unsigned LEB128, minimal, at most 5 bytes.
 *
 * Return codes: PX_OK (0) or a positive count for success, negative PX_ERR_* for
 * errors. px_strerror() names them.
 */
#ifndef PHOENIX_CORE_H
#define PHOENIX_CORE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PX_VERSION 1
#define PX_HEADER_SIZE 16
#define PX_MAGIC_0 0x50 /* 'P' */
#define PX_MAGIC_1 0x58 /* 'X' */

/* Default and absolute limits on one frame's payload length. */
#define PX_DEFAULT_MAX_PAYLOAD (16u * 1024u * 1024u)
#define PX_MAX_PAYLOAD_LIMIT (1u << 30)

/* Frame flags. */
#define PX_FLAG_BATCH 0x01u      /* payload is a batch of messages */
#define PX_FLAG_COMPRESSED 0x02u /* payload is compressed (lz4 frame) */
#define PX_FLAG_ENCRYPTED 0x04u  /* payload is encrypted */
#define PX_FLAG_PRIORITY 0x08u   /* deliver ahead of normal traffic */
#define PX_FLAG_CONTROL 0x10u    /* connection control (handshake, heartbeat, credit) */
#define PX_FLAGS_KNOWN 0x1Fu

/* Status codes. Each decode failure has its own code. */
#define PX_OK 0
#define PX_ERR_MAGIC (-1)     /* stream does not start with "PX" */
#define PX_ERR_VERSION (-2)   /* unknown wire-format version */
#define PX_ERR_TOO_LARGE (-3) /* declared payload length above the decoder's limit */
#define PX_ERR_CHECKSUM (-4)  /* CRC32C mismatch */
#define PX_ERR_FLAGS (-5)     /* reserved flag bits set */
#define PX_ERR_BATCH (-6)     /* malformed batch payload */
#define PX_ERR_BUFFER (-7)    /* output buffer too small */
#define PX_ERR_ARG (-8)       /* invalid argument */
#define PX_ERR_NOMEM (-9)     /* allocation failed */

/* A static, human-readable name for a status code. */
const char *px_strerror(int code);

/* ---- CRC32C (Castagnoli) ------------------------------------------------------
 *
 * crc is the CRC of the preceding data (0 to start), so
 * px_crc32c(px_crc32c(0, a, n), b, m) == px_crc32c(0, a||b, n+m).
 * Check value: px_crc32c(0, "123456789", 9) == 0xE3069283.
 * px_crc32c uses the CPU instruction when present (SSE4.2 on x86-64, the CRC
 * extension on ARMv8), detected at run time, and the table-driven software path
 * otherwise. Both give identical results.
 */
uint32_t px_crc32c(uint32_t crc, const void *data, size_t len);
uint32_t px_crc32c_sw(uint32_t crc, const void *data, size_t len);
/* The hardware path; falls back to software when the CPU lacks the instruction. */
uint32_t px_crc32c_hw(uint32_t crc, const void *data, size_t len);
/* 1 when the CPU instruction is available, else 0. */
int px_crc32c_hw_available(void);
/* "sse4.2", "armv8-crc" or "software": what px_crc32c uses on this CPU. */
const char *px_crc32c_impl(void);

/* ---- Frames ------------------------------------------------------------------- */

/* One decoded frame. payload points into the caller's input or the decoder's
 * buffer and is valid until the next call on the decoder. */
typedef struct px_frame {
    const uint8_t *payload;
    uint32_t length;
    uint32_t channel;
    uint8_t flags;
} px_frame;

/* Write the 16-byte header for a frame carrying payload[0..len) to out.
 * The payload itself is not copied (so it can be sent with writev). */
int px_frame_header(uint8_t out[PX_HEADER_SIZE], uint32_t channel, uint8_t flags,
                    const uint8_t *payload, size_t len);

/* Write a whole frame (header + payload) to out; *written gets its size. */
int px_frame_encode(uint8_t *out, size_t out_cap, uint32_t channel, uint8_t flags,
                    const uint8_t *payload, size_t len, size_t *written);

/* Parse one frame from a contiguous buffer.
 * Returns 1 with *frame and *frame_size set when a whole valid frame starts at
 * data, 0 when data is a valid but incomplete prefix of a frame, or a negative
 * PX_ERR_* code. Bad magic, version, flags and length are reported as soon as
 * the bytes that carry them are present. */
int px_frame_parse(const uint8_t *data, size_t len, uint32_t max_payload,
                   px_frame *frame, size_t *frame_size);

/* ---- Streaming decoder ----------------------------------------------------------
 *
 * Takes bytes in chunks of any size (one byte at a time works) and yields whole,
 * checked frames. Frames that lie whole inside a chunk are returned in place
 * (no copy); only a frame split across chunks is assembled in the decoder's own
 * buffer, which never grows past PX_HEADER_SIZE + max_payload. After an error the
 * decoder stays failed and returns the same code on every call.
 *
 * Treat the fields as private.
 */
typedef struct px_decoder {
    uint8_t *buf;         /* partial frame being assembled */
    size_t cap;           /* allocated size of buf */
    size_t have;          /* bytes of the partial frame in buf */
    uint32_t max_payload; /* limit on a frame's payload length */
    int error;            /* sticky error, 0 when healthy */
    int buf_in_use;       /* a returned frame points into buf */
} px_decoder;

int px_decoder_init(px_decoder *d, uint32_t max_payload);
void px_decoder_free(px_decoder *d);

/* Decode up to max_frames frames from data[0..len).
 * Returns the number of frames written to frames (0 or more) or a negative error.
 * *consumed gets how many input bytes were used; when it is less than len, call
 * again with the rest once the returned frames have been processed. */
int px_decoder_feed(px_decoder *d, const uint8_t *data, size_t len, size_t *consumed,
                    px_frame *frames, size_t max_frames);

/* The same, for bindings that prefer integers to pointers: for each frame writes
 * four uint32 to index: flags (bit 8 set when the payload is in the decoder's
 * buffer, see px_decoder_buffer), channel, payload offset, payload length.
 * Offsets are relative to data, or to px_decoder_buffer(d) when bit 8 is set. */
int px_decoder_feed_index(px_decoder *d, const uint8_t *data, size_t len, size_t *consumed,
                          uint32_t *index, size_t max_frames);
const uint8_t *px_decoder_buffer(const px_decoder *d);

/* Bytes of an incomplete frame currently held by the decoder. */
size_t px_decoder_pending(const px_decoder *d);

/* ---- Batches -----------------------------------------------------------------
 *
 * Messages are passed as one contiguous buffer (joined) plus an array of their
 * lengths, so a binding can hand many messages over in one call.
 */

/* Upper bound on the size of a batch payload for count messages of total bytes. */
size_t px_batch_bound(size_t count, size_t total);

/* Encode a batch payload (no frame header). */
int px_batch_pack(uint8_t *out, size_t out_cap, const uint8_t *joined,
                  const uint32_t *lengths, size_t count, size_t *written);

/* Encode a whole frame with PX_FLAG_BATCH set and a batch payload. out_cap must be
 * at least PX_HEADER_SIZE + px_batch_bound(count, total). */
int px_batch_frame(uint8_t *out, size_t out_cap, uint32_t channel, uint8_t flags,
                   const uint8_t *joined, const uint32_t *lengths, size_t count,
                   size_t *written);

/* Read a batch payload's message count (validated against the payload size). */
int px_batch_count(const uint8_t *payload, size_t len, uint32_t *count);

/* Split a batch payload: message i is payload[starts[i] .. ends[i]).
 * The arrays need room for max_items entries; *count gets the message count.
 * Fails with PX_ERR_BATCH unless the payload is exactly count well-formed items. */
int px_batch_unpack(const uint8_t *payload, size_t len, uint32_t *starts, uint32_t *ends,
                    size_t max_items, size_t *count);

/* Varints (unsigned LEB128, 32-bit, minimal encoding). */
size_t px_varint_encode(uint8_t out[5], uint32_t value);
/* Returns bytes read (1..5), 0 when more bytes are needed, or PX_ERR_BATCH. */
int px_varint_decode(const uint8_t *data, size_t len, uint32_t *value);

/* ---- Token bucket --------------------------------------------------------------
 *
 * Holds up to capacity tokens and refills at rate tokens per second. Time is a
 * caller-supplied monotonic clock in seconds, never read here; a clock that steps
 * back is treated as not having moved.
 */
typedef struct px_token_bucket {
    double capacity;
    double tokens;
    double rate;
    double last; /* time of the last refill */
} px_token_bucket;

/* Starts full. capacity > 0, rate >= 0, all finite. */
int px_bucket_init(px_token_bucket *b, double capacity, double rate, double now);

/* Take n tokens. Returns 1 when granted (*wait = 0), 0 when not (*wait = seconds
 * until n tokens will be there at the current rate, INFINITY when rate is 0),
 * PX_ERR_ARG when n is negative, not finite or above capacity (never grantable). */
int px_bucket_acquire(px_token_bucket *b, double n, double now, double *wait);

/* Tokens available at time now (after refilling). */
double px_bucket_available(px_token_bucket *b, double now);

/* Change the refill rate from time now on (tokens earned so far are kept). */
int px_bucket_set_rate(px_token_bucket *b, double rate, double now);

/* Give back n unused tokens (capped at capacity). */
int px_bucket_release(px_token_bucket *b, double n, double now);

#ifdef __cplusplus
}
#endif

#endif /* PHOENIX_CORE_H */
