/*
 * frame.c - frame headers, one-shot parsing and the streaming decoder.
 */
#include "phoenix_core.h"

#include <stdlib.h>
#include <string.h>

/* Buffers above this are released once the frame they held has been returned. */
#define PX_DECODER_KEEP (256u * 1024u)

const char *px_strerror(int code)
{
    switch (code) {
    case PX_OK:
        return "ok";
    case PX_ERR_MAGIC:
        return "bad magic: not a phoenix_trio frame";
    case PX_ERR_VERSION:
        return "unsupported wire-format version";
    case PX_ERR_TOO_LARGE:
        return "frame payload larger than the limit";
    case PX_ERR_CHECKSUM:
        return "CRC32C mismatch";
    case PX_ERR_FLAGS:
        return "reserved flag bits set";
    case PX_ERR_BATCH:
        return "malformed batch payload";
    case PX_ERR_BUFFER:
        return "output buffer too small";
    case PX_ERR_ARG:
        return "invalid argument";
    case PX_ERR_NOMEM:
        return "out of memory";
    default:
        return code > 0 ? "ok" : "unknown error";
    }
}

static void store_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint32_t load_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) |
           (uint32_t)p[3];
}

int px_frame_header(uint8_t out[PX_HEADER_SIZE], uint32_t channel, uint8_t flags,
                    const uint8_t *payload, size_t len)
{
    uint32_t crc;
    if (out == NULL || (payload == NULL && len > 0) || len > PX_MAX_PAYLOAD_LIMIT ||
        (flags & ~PX_FLAGS_KNOWN) != 0) {
        return PX_ERR_ARG;
    }
    out[0] = PX_MAGIC_0;
    out[1] = PX_MAGIC_1;
    out[2] = PX_VERSION;
    out[3] = flags;
    store_be32(out + 4, channel);
    store_be32(out + 8, (uint32_t)len);
    crc = px_crc32c(0, out, 12);
    if (len > 0) {
        crc = px_crc32c(crc, payload, len);
    }
    store_be32(out + 12, crc);
    return PX_OK;
}

int px_frame_encode(uint8_t *out, size_t out_cap, uint32_t channel, uint8_t flags,
                    const uint8_t *payload, size_t len, size_t *written)
{
    int rc;
    if (out == NULL || written == NULL) {
        return PX_ERR_ARG;
    }
    if (len > PX_MAX_PAYLOAD_LIMIT) {
        return PX_ERR_ARG;
    }
    if (out_cap < PX_HEADER_SIZE + len) {
        return PX_ERR_BUFFER;
    }
    if (len > 0) {
        memmove(out + PX_HEADER_SIZE, payload, len);
    }
    rc = px_frame_header(out, channel, flags, out + PX_HEADER_SIZE, len);
    if (rc != PX_OK) {
        return rc;
    }
    *written = PX_HEADER_SIZE + len;
    return PX_OK;
}

/* Validate as much of a header as len bytes show. Returns 0 or an error. */
static int check_header_prefix(const uint8_t *h, size_t len, uint32_t max_payload)
{
    if (len >= 1 && h[0] != PX_MAGIC_0) {
        return PX_ERR_MAGIC;
    }
    if (len >= 2 && h[1] != PX_MAGIC_1) {
        return PX_ERR_MAGIC;
    }
    if (len >= 3 && h[2] != PX_VERSION) {
        return PX_ERR_VERSION;
    }
    if (len >= 4 && (h[3] & ~PX_FLAGS_KNOWN) != 0) {
        return PX_ERR_FLAGS;
    }
    if (len >= 12 && load_be32(h + 8) > max_payload) {
        return PX_ERR_TOO_LARGE;
    }
    return 0;
}

static int check_crc(const uint8_t *frame, uint32_t length)
{
    uint32_t crc = px_crc32c(0, frame, 12);
    crc = px_crc32c(crc, frame + PX_HEADER_SIZE, length);
    return crc == load_be32(frame + 12) ? 0 : PX_ERR_CHECKSUM;
}

static void fill_frame(px_frame *f, const uint8_t *frame)
{
    f->flags = frame[3];
    f->channel = load_be32(frame + 4);
    f->length = load_be32(frame + 8);
    f->payload = frame + PX_HEADER_SIZE;
}

int px_frame_parse(const uint8_t *data, size_t len, uint32_t max_payload, px_frame *frame,
                   size_t *frame_size)
{
    int rc;
    uint32_t length;
    if ((data == NULL && len > 0) || frame == NULL || frame_size == NULL ||
        max_payload > PX_MAX_PAYLOAD_LIMIT) {
        return PX_ERR_ARG;
    }
    rc = check_header_prefix(data, len < PX_HEADER_SIZE ? len : PX_HEADER_SIZE, max_payload);
    if (rc != 0) {
        return rc;
    }
    if (len < PX_HEADER_SIZE) {
        return 0;
    }
    length = load_be32(data + 8);
    if (len - PX_HEADER_SIZE < length) {
        return 0;
    }
    rc = check_crc(data, length);
    if (rc != 0) {
        return rc;
    }
    fill_frame(frame, data);
    *frame_size = PX_HEADER_SIZE + (size_t)length;
    return 1;
}

/* ---- streaming decoder ---------------------------------------------------------- */

int px_decoder_init(px_decoder *d, uint32_t max_payload)
{
    if (d == NULL || max_payload > PX_MAX_PAYLOAD_LIMIT) {
        return PX_ERR_ARG;
    }
    memset(d, 0, sizeof *d);
    d->max_payload = max_payload;
    return PX_OK;
}

void px_decoder_free(px_decoder *d)
{
    if (d == NULL) {
        return;
    }
    free(d->buf);
    d->buf = NULL;
    d->cap = 0;
    d->have = 0;
    d->buf_in_use = 0;
}

const uint8_t *px_decoder_buffer(const px_decoder *d)
{
    return d->buf;
}

size_t px_decoder_pending(const px_decoder *d)
{
    return d->buf_in_use ? 0 : d->have;
}

static int fail(px_decoder *d, int code)
{
    d->error = code;
    return code;
}

static int reserve(px_decoder *d, size_t need)
{
    uint8_t *grown;
    size_t cap;
    if (need <= d->cap) {
        return 0;
    }
    cap = d->cap ? d->cap : 256;
    while (cap < need) {
        cap *= 2;
    }
    if (cap > PX_HEADER_SIZE + (size_t)d->max_payload) {
        cap = PX_HEADER_SIZE + (size_t)d->max_payload;
    }
    if (cap < need) {
        cap = need;
    }
    grown = (uint8_t *)realloc(d->buf, cap);
    if (grown == NULL) {
        return PX_ERR_NOMEM;
    }
    d->buf = grown;
    d->cap = cap;
    return 0;
}

/* Called when the caller is done with a frame returned from d->buf. */
static void release_buffer(px_decoder *d)
{
    d->buf_in_use = 0;
    d->have = 0;
    if (d->cap > PX_DECODER_KEEP) {
        free(d->buf);
        d->buf = NULL;
        d->cap = 0;
    }
}

/* Core loop shared by both feed variants. Emits through a callback-free pair of
 * optional outputs: frames (pointers) or index (integers). */
static int feed(px_decoder *d, const uint8_t *data, size_t len, size_t *consumed,
                px_frame *frames, uint32_t *index, size_t max_frames)
{
    size_t pos = 0;
    size_t n = 0;
    int rc;

    if (d == NULL || consumed == NULL || (data == NULL && len > 0)) {
        return PX_ERR_ARG;
    }
    *consumed = 0;
    if (d->error) {
        return d->error;
    }
    if (d->buf_in_use) {
        release_buffer(d);
    }
    if (max_frames == 0) {
        return 0;
    }

    /* 1. Finish a frame that started in an earlier chunk. */
    if (d->have > 0) {
        size_t take, total;
        if (d->have < PX_HEADER_SIZE) {
            take = PX_HEADER_SIZE - d->have;
            if (take > len) {
                take = len;
            }
            memcpy(d->buf + d->have, data, take);
            rc = check_header_prefix(d->buf, d->have + take, d->max_payload);
            if (rc != 0) {
                return fail(d, rc);
            }
            d->have += take;
            pos += take;
            if (d->have < PX_HEADER_SIZE) {
                *consumed = pos;
                return 0;
            }
        }
        total = PX_HEADER_SIZE + (size_t)load_be32(d->buf + 8);
        take = total - d->have;
        if (take > len - pos) {
            take = len - pos;
        }
        /* Grow with what arrived, not with what the header claims. */
        rc = reserve(d, d->have + take);
        if (rc != 0) {
            return fail(d, rc);
        }
        if (take > 0) {
            memcpy(d->buf + d->have, data + pos, take);
        }
        d->have += take;
        pos += take;
        if (d->have < total) {
            *consumed = pos;
            return 0;
        }
        rc = check_crc(d->buf, (uint32_t)(total - PX_HEADER_SIZE));
        if (rc != 0) {
            return fail(d, rc);
        }
        if (frames != NULL) {
            fill_frame(&frames[0], d->buf);
        } else {
            index[0] = (uint32_t)d->buf[3] | 0x100u;
            index[1] = load_be32(d->buf + 4);
            index[2] = PX_HEADER_SIZE;
            index[3] = (uint32_t)(total - PX_HEADER_SIZE);
        }
        d->buf_in_use = 1;
        n = 1;
    }

    /* 2. Frames lying whole in this chunk: returned in place. */
    while (n < max_frames && pos < len) {
        px_frame f;
        size_t size;
        rc = px_frame_parse(data + pos, len - pos, d->max_payload, &f, &size);
        if (rc < 0) {
            return fail(d, rc);
        }
        if (rc == 0) {
            break;
        }
        if (frames != NULL) {
            frames[n] = f;
        } else {
            index[4 * n] = f.flags;
            index[4 * n + 1] = f.channel;
            index[4 * n + 2] = (uint32_t)(pos + PX_HEADER_SIZE);
            index[4 * n + 3] = f.length;
        }
        n++;
        pos += size;
    }

    /* 3. Keep an incomplete tail, unless the buffer still backs a returned frame. */
    if (n < max_frames && pos < len && !d->buf_in_use) {
        size_t rest = len - pos;
        rc = reserve(d, rest < PX_HEADER_SIZE ? PX_HEADER_SIZE : rest);
        if (rc != 0) {
            return fail(d, rc);
        }
        memcpy(d->buf, data + pos, rest);
        d->have = rest;
        pos = len;
    }
    *consumed = pos;
    return (int)n;
}

int px_decoder_feed(px_decoder *d, const uint8_t *data, size_t len, size_t *consumed,
                    px_frame *frames, size_t max_frames)
{
    if (frames == NULL && max_frames > 0) {
        return PX_ERR_ARG;
    }
    if (max_frames > (size_t)0x7fffffff) {
        max_frames = 0x7fffffff;
    }
    return feed(d, data, len, consumed, frames, NULL, max_frames);
}

int px_decoder_feed_index(px_decoder *d, const uint8_t *data, size_t len, size_t *consumed,
                          uint32_t *index, size_t max_frames)
{
    if (index == NULL && max_frames > 0) {
        return PX_ERR_ARG;
    }
    if (max_frames > (size_t)0x7fffffff) {
        max_frames = 0x7fffffff;
    }
    if (len > 0xffffffffu - PX_HEADER_SIZE) {
        return PX_ERR_ARG; /* offsets must fit in 32 bits */
    }
    return feed(d, data, len, consumed, NULL, index, max_frames);
}
