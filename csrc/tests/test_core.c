/*
 * test_core.c - unit and fuzz-style tests for the phoenix_trio C core.
 * Built and run by `make -C csrc test` under AddressSanitizer and UBSan.
 * Ends with "N passed, M failed"; exits non-zero on any failure.
 */
#include "phoenix_core.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int passed = 0;
static int failed = 0;

#define CHECK(cond)                                                                     \
    do {                                                                                \
        if (cond) {                                                                     \
            passed++;                                                                   \
        } else {                                                                        \
            failed++;                                                                   \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);    \
        }                                                                               \
    } while (0)

/* Deterministic xorshift64* generator. */
static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint64_t rnd(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1Dull;
}

static size_t rnd_below(size_t n)
{
    return n ? (size_t)(rnd() % n) : 0;
}

static void rnd_fill(uint8_t *p, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++) {
        p[i] = (uint8_t)rnd();
    }
}

/* ---- CRC32C ----------------------------------------------------------------------- */

static void test_crc_vectors(void)
{
    uint8_t buf[32];
    int i;
    const char *check = "123456789";
    CHECK(px_crc32c(0, check, 9) == 0xE3069283u);
    CHECK(px_crc32c_sw(0, check, 9) == 0xE3069283u);
    CHECK(px_crc32c_hw(0, check, 9) == 0xE3069283u);
    CHECK(px_crc32c(0, NULL, 0) == 0);
    /* RFC 3720 (iSCSI) appendix B.4 vectors. */
    memset(buf, 0, sizeof buf);
    CHECK(px_crc32c(0, buf, 32) == 0x8A9136AAu);
    memset(buf, 0xff, sizeof buf);
    CHECK(px_crc32c(0, buf, 32) == 0x62A8AB43u);
    for (i = 0; i < 32; i++) {
        buf[i] = (uint8_t)i;
    }
    CHECK(px_crc32c(0, buf, 32) == 0x46DD794Eu);
    for (i = 0; i < 32; i++) {
        buf[i] = (uint8_t)(31 - i);
    }
    CHECK(px_crc32c(0, buf, 32) == 0x113FDB5Cu);
    CHECK(strcmp(px_crc32c_impl(), "software") == 0 || px_crc32c_hw_available());
}

static void test_crc_paths_agree(void)
{
    size_t size = 200000, trial;
    uint8_t *buf = (uint8_t *)malloc(size + 8);
    int mismatches = 0, chain_mismatches = 0;
    rnd_fill(buf, size + 8);
    for (trial = 0; trial < 400; trial++) {
        size_t off = rnd_below(8);
        size_t len = trial < 100 ? trial : rnd_below(size);
        size_t cut = rnd_below(len + 1);
        uint32_t seed = (uint32_t)rnd();
        uint32_t sw = px_crc32c_sw(seed, buf + off, len);
        uint32_t hw = px_crc32c_hw(seed, buf + off, len);
        uint32_t chained = px_crc32c(px_crc32c(seed, buf + off, cut), buf + off + cut, len - cut);
        mismatches += sw != hw;
        chain_mismatches += chained != sw;
    }
    /* Sizes straddling the three-way block boundaries. */
    {
        size_t sizes[] = {255, 256, 257, 767, 768, 769, 24575, 24576, 24577, 65536, 65537};
        size_t i;
        for (i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
            mismatches += px_crc32c_sw(0, buf + 1, sizes[i]) != px_crc32c_hw(0, buf + 1, sizes[i]);
        }
    }
    CHECK(mismatches == 0);
    CHECK(chain_mismatches == 0);
    free(buf);
}

/* ---- varints and batches ---------------------------------------------------------- */

static void test_varints(void)
{
    uint32_t values[] = {0, 1, 127, 128, 300, 16383, 16384, 2097151, 2097152, 268435455u,
                         268435456u, 0xffffffffu};
    size_t i;
    uint8_t buf[5];
    uint32_t v;
    for (i = 0; i < sizeof values / sizeof values[0]; i++) {
        size_t n = px_varint_encode(buf, values[i]);
        CHECK(px_varint_decode(buf, n, &v) == (int)n && v == values[i]);
        CHECK(n == 1 || px_varint_decode(buf, n - 1, &v) == 0);
    }
    {
        const uint8_t too_big[] = {0xff, 0xff, 0xff, 0xff, 0x1f};
        const uint8_t too_long[] = {0x80, 0x80, 0x80, 0x80, 0x80, 0x01};
        const uint8_t not_minimal[] = {0x81, 0x00};
        CHECK(px_varint_decode(too_big, 5, &v) == PX_ERR_BATCH);
        CHECK(px_varint_decode(too_long, 6, &v) == PX_ERR_BATCH);
        CHECK(px_varint_decode(not_minimal, 2, &v) == PX_ERR_BATCH);
    }
}

static void test_batch_roundtrip(void)
{
    int trial;
    int bad = 0;
    for (trial = 0; trial < 300; trial++) {
        size_t count = rnd_below(trial < 10 ? 3 : 400);
        uint32_t *lengths = (uint32_t *)malloc((count + 1) * sizeof *lengths);
        size_t total = 0, i, written = 0, got = 0, cap;
        uint8_t *joined, *out;
        uint32_t *starts = (uint32_t *)malloc((count + 1) * sizeof *starts);
        uint32_t *ends = (uint32_t *)malloc((count + 1) * sizeof *ends);
        px_frame frame;
        size_t frame_size;
        for (i = 0; i < count; i++) {
            lengths[i] = (uint32_t)(rnd_below(8) == 0 ? rnd_below(20000) : rnd_below(200));
            total += lengths[i];
        }
        joined = (uint8_t *)malloc(total + 1);
        rnd_fill(joined, total);
        cap = PX_HEADER_SIZE + px_batch_bound(count, total);
        out = (uint8_t *)malloc(cap);
        if (px_batch_frame(out, cap, 7, PX_FLAG_PRIORITY, joined, lengths, count, &written) !=
                PX_OK ||
            px_frame_parse(out, written, PX_DEFAULT_MAX_PAYLOAD, &frame, &frame_size) != 1 ||
            frame_size != written || frame.flags != (PX_FLAG_BATCH | PX_FLAG_PRIORITY) ||
            frame.channel != 7 ||
            px_batch_unpack(frame.payload, frame.length, starts, ends, count, &got) != PX_OK ||
            got != count) {
            bad++;
        } else {
            size_t offset = 0;
            for (i = 0; i < count; i++) {
                if (ends[i] - starts[i] != lengths[i] ||
                    memcmp(frame.payload + starts[i], joined + offset, lengths[i]) != 0) {
                    bad++;
                    break;
                }
                offset += lengths[i];
            }
        }
        /* A buffer one byte short is refused, never overrun. */
        if (written > PX_HEADER_SIZE &&
            px_batch_frame(out, written - 1, 7, 0, joined, lengths, count, &frame_size) !=
                PX_ERR_BUFFER) {
            bad++;
        }
        free(lengths);
        free(joined);
        free(out);
        free(starts);
        free(ends);
    }
    CHECK(bad == 0);
}

static void test_batch_malformed(void)
{
    uint32_t starts[8], ends[8];
    size_t count;
    uint32_t n;
    const uint8_t empty_ok[] = {0x00};
    const uint8_t trailing[] = {0x01, 0x01, 0xaa, 0xbb};
    const uint8_t short_item[] = {0x01, 0x05, 0xaa};
    const uint8_t count_too_big[] = {0x05, 0x00, 0x00};
    const uint8_t truncated_varint[] = {0x01, 0x80};
    const uint8_t non_minimal[] = {0x01, 0x81, 0x00, 0xaa};
    CHECK(px_batch_unpack(empty_ok, 1, starts, ends, 8, &count) == PX_OK && count == 0);
    CHECK(px_batch_unpack(trailing, sizeof trailing, starts, ends, 8, &count) == PX_ERR_BATCH);
    CHECK(px_batch_unpack(short_item, sizeof short_item, starts, ends, 8, &count) ==
          PX_ERR_BATCH);
    CHECK(px_batch_count(count_too_big, sizeof count_too_big, &n) == PX_ERR_BATCH);
    CHECK(px_batch_unpack(truncated_varint, sizeof truncated_varint, starts, ends, 8, &count) ==
          PX_ERR_BATCH);
    CHECK(px_batch_unpack(non_minimal, sizeof non_minimal, starts, ends, 8, &count) ==
          PX_ERR_BATCH);
    CHECK(px_batch_unpack(NULL, 0, starts, ends, 8, &count) == PX_ERR_BATCH);
    CHECK(px_batch_unpack(trailing, 3, starts, ends, 0, &count) == PX_ERR_BUFFER);
}

static void test_batch_fuzz(void)
{
    uint8_t buf[512];
    uint32_t starts[512], ends[512];
    int trial, crashes_would_show_under_asan = 0;
    for (trial = 0; trial < 20000; trial++) {
        size_t len = rnd_below(sizeof buf), count = 0, i;
        int rc;
        rnd_fill(buf, len);
        if (len && rnd_below(2)) {
            buf[0] = (uint8_t)rnd_below(8); /* plausible counts reach deeper */
        }
        rc = px_batch_unpack(buf, len, starts, ends, 512, &count);
        if (rc == PX_OK) {
            for (i = 0; i < count; i++) {
                if (starts[i] > ends[i] || ends[i] > len) {
                    crashes_would_show_under_asan++;
                }
            }
        } else if (rc != PX_ERR_BATCH && rc != PX_ERR_BUFFER) {
            crashes_would_show_under_asan++;
        }
    }
    CHECK(crashes_would_show_under_asan == 0);
}

/* ---- frames ----------------------------------------------------------------------- */

static size_t make_frame(uint8_t *out, size_t cap, uint32_t channel, uint8_t flags,
                         const uint8_t *payload, size_t len)
{
    size_t written = 0;
    int rc = px_frame_encode(out, cap, channel, flags, payload, len, &written);
    CHECK(rc == PX_OK);
    return written;
}

static void test_frame_basics(void)
{
    uint8_t payload[100], out[256];
    px_frame f;
    size_t size, n, i;
    rnd_fill(payload, sizeof payload);
    n = make_frame(out, sizeof out, 0xdeadbeefu, PX_FLAG_COMPRESSED, payload, sizeof payload);
    CHECK(n == PX_HEADER_SIZE + sizeof payload);
    CHECK(out[0] == 'P' && out[1] == 'X' && out[2] == PX_VERSION);
    CHECK(px_frame_parse(out, n, 1000, &f, &size) == 1);
    CHECK(size == n && f.length == 100 && f.channel == 0xdeadbeefu &&
          f.flags == PX_FLAG_COMPRESSED && memcmp(f.payload, payload, 100) == 0);
    /* Every proper prefix is "need more". */
    for (i = 0; i < n; i++) {
        if (px_frame_parse(out, i, 1000, &f, &size) != 0) {
            CHECK(0);
            break;
        }
    }
    /* Distinct errors. */
    out[0] = 'Q';
    CHECK(px_frame_parse(out, 1, 1000, &f, &size) == PX_ERR_MAGIC);
    out[0] = 'P';
    out[1] = 'Y';
    CHECK(px_frame_parse(out, 2, 1000, &f, &size) == PX_ERR_MAGIC);
    out[1] = 'X';
    out[2] = 2;
    CHECK(px_frame_parse(out, 3, 1000, &f, &size) == PX_ERR_VERSION);
    out[2] = PX_VERSION;
    out[3] = 0x80;
    CHECK(px_frame_parse(out, 4, 1000, &f, &size) == PX_ERR_FLAGS);
    out[3] = PX_FLAG_COMPRESSED;
    CHECK(px_frame_parse(out, 12, 99, &f, &size) == PX_ERR_TOO_LARGE);
    CHECK(px_frame_parse(out, n, 100, &f, &size) == 1);
    out[PX_HEADER_SIZE + 50] ^= 1;
    CHECK(px_frame_parse(out, n, 1000, &f, &size) == PX_ERR_CHECKSUM);
    out[PX_HEADER_SIZE + 50] ^= 1;
    out[5] ^= 0x10; /* channel is covered by the checksum too */
    CHECK(px_frame_parse(out, n, 1000, &f, &size) == PX_ERR_CHECKSUM);
    out[5] ^= 0x10;
    CHECK(px_frame_encode(out, n - 1, 0, 0, payload, sizeof payload, &size) == PX_ERR_BUFFER);
    CHECK(px_frame_encode(out, sizeof out, 0, 0x40, payload, 10, &size) == PX_ERR_ARG);
    /* Empty payload. */
    n = make_frame(out, sizeof out, 1, 0, NULL, 0);
    CHECK(n == PX_HEADER_SIZE && px_frame_parse(out, n, 0, &f, &size) == 1 && f.length == 0);
    CHECK(strcmp(px_strerror(PX_ERR_CHECKSUM), "CRC32C mismatch") == 0);
}

/* Build a stream of random frames; remember each frame's payload offset. */
typedef struct stream {
    uint8_t *bytes;
    size_t len;
    size_t count;
    size_t offsets[600];
    uint32_t lengths[600];
    uint32_t channels[600];
    uint8_t flags[600];
} stream;

static void make_stream(stream *s, size_t count, size_t max_len)
{
    size_t cap = count * (PX_HEADER_SIZE + max_len) + 1, i;
    uint8_t *payload = (uint8_t *)malloc(max_len + 1);
    s->bytes = (uint8_t *)malloc(cap);
    s->len = 0;
    s->count = count;
    for (i = 0; i < count; i++) {
        size_t len = rnd_below(max_len + 1);
        rnd_fill(payload, len);
        s->channels[i] = (uint32_t)rnd();
        s->flags[i] = (uint8_t)(rnd() & PX_FLAGS_KNOWN);
        s->lengths[i] = (uint32_t)len;
        s->offsets[i] = s->len + PX_HEADER_SIZE;
        s->len += make_frame(s->bytes + s->len, cap - s->len, s->channels[i], s->flags[i],
                             payload, len);
    }
    free(payload);
}

static int frame_matches(const stream *s, size_t i, const px_frame *f)
{
    return f->length == s->lengths[i] && f->channel == s->channels[i] &&
           f->flags == s->flags[i] &&
           memcmp(f->payload, s->bytes + s->offsets[i], f->length) == 0;
}

/* Feed s in chunks of chunk_max bytes at most (random sizes); decode with up to
 * max_frames per call. Returns the number of frames that matched, in order. */
static size_t decode_stream(const stream *s, size_t chunk_max, size_t max_frames, int use_index)
{
    px_decoder d;
    px_frame frames[64];
    uint32_t index[4 * 64];
    size_t pos = 0, next = 0;
    int ok = 1;
    px_decoder_init(&d, 1u << 20);
    while (pos < s->len && ok) {
        size_t chunk = 1 + rnd_below(chunk_max);
        size_t off = 0;
        if (chunk > s->len - pos) {
            chunk = s->len - pos;
        }
        /* Copy the chunk so in-place frames must be read before the next call. */
        {
            uint8_t *copy = (uint8_t *)malloc(chunk);
            memcpy(copy, s->bytes + pos, chunk);
            while (off < chunk) {
                size_t consumed = 0;
                int n, k;
                if (use_index) {
                    n = px_decoder_feed_index(&d, copy + off, chunk - off, &consumed, index,
                                              max_frames);
                } else {
                    n = px_decoder_feed(&d, copy + off, chunk - off, &consumed, frames,
                                        max_frames);
                }
                if (n < 0) {
                    ok = 0;
                    break;
                }
                for (k = 0; k < n; k++) {
                    px_frame f;
                    if (use_index) {
                        const uint8_t *base = (index[4 * k] & 0x100u) ? px_decoder_buffer(&d)
                                                                      : copy + off;
                        f.flags = (uint8_t)(index[4 * k] & 0xffu);
                        f.channel = index[4 * k + 1];
                        f.payload = base + index[4 * k + 2];
                        f.length = index[4 * k + 3];
                    } else {
                        f = frames[k];
                    }
                    if (next >= s->count || !frame_matches(s, next, &f)) {
                        ok = 0;
                    }
                    next++;
                }
                off += consumed;
                if (consumed == 0 && n == 0) {
                    ok = 0; /* no progress */
                    break;
                }
            }
            free(copy);
        }
        pos += chunk;
    }
    /* A final empty call releases any buffer-backed frame. */
    if (ok && px_decoder_pending(&d) != 0) {
        ok = 0;
    }
    px_decoder_free(&d);
    return ok ? next : (size_t)-1;
}

static void test_decoder_chunking(void)
{
    stream s;
    size_t chunk_sizes[] = {1, 2, 7, 16, 17, 100, 1000, 100000};
    size_t i;
    make_stream(&s, 500, 300);
    for (i = 0; i < sizeof chunk_sizes / sizeof chunk_sizes[0]; i++) {
        CHECK(decode_stream(&s, chunk_sizes[i], 64, 0) == s.count);
        CHECK(decode_stream(&s, chunk_sizes[i], 1, 1) == s.count);
        CHECK(decode_stream(&s, chunk_sizes[i], 3, 1) == s.count);
    }
    free(s.bytes);
    make_stream(&s, 20, 70000); /* frames larger than any chunk */
    CHECK(decode_stream(&s, 4096, 64, 0) == s.count);
    CHECK(decode_stream(&s, 1, 64, 1) == s.count);
    free(s.bytes);
}

static void test_decoder_errors(void)
{
    uint8_t payload[64], out[256];
    px_decoder d;
    px_frame frames[4];
    size_t n, consumed;
    rnd_fill(payload, sizeof payload);
    n = make_frame(out, sizeof out, 3, 0, payload, sizeof payload);

    /* Oversize length is caught from the header alone, byte by byte. */
    {
        size_t i;
        int rc = 0;
        px_decoder_init(&d, 10);
        for (i = 0; i < n && rc >= 0; i++) {
            rc = px_decoder_feed(&d, out + i, 1, &consumed, frames, 4);
        }
        CHECK(rc == PX_ERR_TOO_LARGE && i == 12);
        /* Sticky. */
        CHECK(px_decoder_feed(&d, out, n, &consumed, frames, 4) == PX_ERR_TOO_LARGE);
        px_decoder_free(&d);
    }
    /* Checksum error across a chunk boundary. */
    out[PX_HEADER_SIZE + 3] ^= 0x20;
    px_decoder_init(&d, 1000);
    CHECK(px_decoder_feed(&d, out, 30, &consumed, frames, 4) == 0 && consumed == 30);
    CHECK(px_decoder_feed(&d, out + 30, n - 30, &consumed, frames, 4) == PX_ERR_CHECKSUM);
    px_decoder_free(&d);
    out[PX_HEADER_SIZE + 3] ^= 0x20;
    /* Bad magic on the very first byte. */
    px_decoder_init(&d, 1000);
    CHECK(px_decoder_feed(&d, (const uint8_t *)"Z", 1, &consumed, frames, 4) == PX_ERR_MAGIC);
    px_decoder_free(&d);
    /* Version split across chunks. */
    out[2] = 9;
    px_decoder_init(&d, 1000);
    CHECK(px_decoder_feed(&d, out, 2, &consumed, frames, 4) == 0);
    CHECK(px_decoder_feed(&d, out + 2, 1, &consumed, frames, 4) == PX_ERR_VERSION);
    px_decoder_free(&d);
    out[2] = PX_VERSION;
    CHECK(px_decoder_init(&d, PX_MAX_PAYLOAD_LIMIT + 1u) == PX_ERR_ARG);
}

static void test_decoder_fuzz(void)
{
    stream s;
    int trial, bad = 0;
    make_stream(&s, 40, 200);
    for (trial = 0; trial < 3000; trial++) {
        uint8_t *copy = (uint8_t *)malloc(s.len);
        px_decoder d;
        px_frame frames[8];
        size_t pos = 0, flips = 1 + rnd_below(4), i;
        int rc = 0;
        memcpy(copy, s.bytes, s.len);
        if (trial % 3 == 0) {
            rnd_fill(copy, s.len); /* pure noise */
        } else {
            for (i = 0; i < flips; i++) {
                copy[rnd_below(s.len)] ^= (uint8_t)(1u << rnd_below(8));
            }
        }
        px_decoder_init(&d, 512);
        while (pos < s.len) {
            size_t chunk = 1 + rnd_below(300), consumed = 0, k;
            if (chunk > s.len - pos) {
                chunk = s.len - pos;
            }
            rc = px_decoder_feed(&d, copy + pos, chunk, &consumed, frames, 8);
            if (rc < 0) {
                break;
            }
            for (k = 0; k < (size_t)rc; k++) {
                /* Touch every payload byte: ASan reports any out-of-bounds view. */
                volatile uint8_t sink = 0;
                size_t b;
                for (b = 0; b < frames[k].length; b++) {
                    sink ^= frames[k].payload[b];
                }
                (void)sink;
                if (frames[k].length > 512) {
                    bad++;
                }
            }
            pos += consumed;
        }
        if (rc < 0 && rc != PX_ERR_MAGIC && rc != PX_ERR_VERSION && rc != PX_ERR_FLAGS &&
            rc != PX_ERR_TOO_LARGE && rc != PX_ERR_CHECKSUM) {
            bad++;
        }
        px_decoder_free(&d);
        free(copy);
    }
    CHECK(bad == 0);
    free(s.bytes);
}

/* ---- token bucket ----------------------------------------------------------------- */

static void test_bucket(void)
{
    px_token_bucket b;
    double wait = -1;
    int i, granted = 0;
    CHECK(px_bucket_init(&b, 10, 2.5, 100.0) == PX_OK);
    for (i = 0; i < 12; i++) {
        granted += px_bucket_acquire(&b, 1, 100.0, &wait) == 1;
    }
    CHECK(granted == 10);
    CHECK(px_bucket_acquire(&b, 1, 100.0, &wait) == 0 && fabs(wait - 0.4) < 1e-12);
    CHECK(px_bucket_acquire(&b, 1, 100.0 + wait, &wait) == 1 && wait == 0.0);
    CHECK(px_bucket_acquire(&b, 5, 100.4, &wait) == 0 && fabs(wait - 2.0) < 1e-9);
    /* Clock stepping back is "no time passed". */
    CHECK(fabs(px_bucket_available(&b, 50.0)) < 1e-9);
    CHECK(fabs(px_bucket_available(&b, 102.4) - 5.0) < 1e-9);
    /* Refill is capped at capacity. */
    CHECK(px_bucket_available(&b, 1e6) == 10.0);
    /* Fractional amounts. */
    CHECK(px_bucket_acquire(&b, 0.25, 1e6, &wait) == 1 && b.tokens == 9.75);
    /* Never grantable, or nonsense. */
    CHECK(px_bucket_acquire(&b, 11, 1e6, &wait) == PX_ERR_ARG);
    CHECK(px_bucket_acquire(&b, -1, 1e6, &wait) == PX_ERR_ARG);
    CHECK(px_bucket_acquire(&b, NAN, 1e6, &wait) == PX_ERR_ARG);
    CHECK(px_bucket_init(&b, 0, 1, 0) == PX_ERR_ARG);
    CHECK(px_bucket_init(&b, 1, -1, 0) == PX_ERR_ARG);
    CHECK(px_bucket_init(&b, INFINITY, 1, 0) == PX_ERR_ARG);
    /* Rate zero: wait forever. */
    CHECK(px_bucket_init(&b, 2, 0, 0) == PX_OK);
    CHECK(px_bucket_acquire(&b, 2, 0, &wait) == 1);
    CHECK(px_bucket_acquire(&b, 1, 1000, &wait) == 0 && isinf(wait));
    /* Leases: change rate, give tokens back. */
    CHECK(px_bucket_set_rate(&b, 1, 1000) == PX_OK);
    CHECK(fabs(px_bucket_available(&b, 1001) - 1.0) < 1e-12);
    CHECK(px_bucket_release(&b, 5, 1001) == PX_OK && px_bucket_available(&b, 1001) == 2.0);
}

int main(void)
{
    test_crc_vectors();
    test_crc_paths_agree();
    test_varints();
    test_batch_roundtrip();
    test_batch_malformed();
    test_batch_fuzz();
    test_frame_basics();
    test_decoder_chunking();
    test_decoder_errors();
    test_decoder_fuzz();
    test_bucket();
    printf("crc32c implementation: %s\n", px_crc32c_impl());
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
