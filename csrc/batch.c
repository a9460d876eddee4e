/*
 * batch.c - many messages in one frame payload: varint count, then
 * (varint length, bytes) per message.
 */
#include "phoenix_core.h"

#include <string.h>

size_t px_varint_encode(uint8_t out[5], uint32_t value)
{
    size_t n = 0;
    while (value >= 0x80u) {
        out[n++] = (uint8_t)(value | 0x80u);
        value >>= 7;
    }
    out[n++] = (uint8_t)value;
    return n;
}

int px_varint_decode(const uint8_t *data, size_t len, uint32_t *value)
{
    uint32_t result = 0;
    size_t i;
    for (i = 0; i < 5; i++) {
        uint8_t byte;
        if (i >= len) {
            return 0;
        }
        byte = data[i];
        if (i == 4 && byte > 0x0fu) {
            return PX_ERR_BATCH; /* more than 32 bits */
        }
        result |= (uint32_t)(byte & 0x7fu) << (7 * i);
        if ((byte & 0x80u) == 0) {
            if (byte == 0 && i > 0) {
                return PX_ERR_BATCH; /* not minimal */
            }
            *value = result;
            return (int)(i + 1);
        }
    }
    return PX_ERR_BATCH;
}

size_t px_batch_bound(size_t count, size_t total)
{
    return 5 + 5 * count + total;
}

int px_batch_pack(uint8_t *out, size_t out_cap, const uint8_t *joined,
                  const uint32_t *lengths, size_t count, size_t *written)
{
    size_t pos, offset = 0, i;
    if (out == NULL || written == NULL || (count > 0 && lengths == NULL) ||
        count > 0xffffffffu) {
        return PX_ERR_ARG;
    }
    {
        uint8_t varint[5];
        pos = px_varint_encode(varint, (uint32_t)count);
        if (out_cap < pos) {
            return PX_ERR_BUFFER;
        }
        memcpy(out, varint, pos);
    }
    for (i = 0; i < count; i++) {
        uint32_t n = lengths[i];
        uint8_t varint[5];
        size_t vl = px_varint_encode(varint, n);
        if (n > 0 && joined == NULL) {
            return PX_ERR_ARG;
        }
        if (out_cap - pos < vl || out_cap - pos - vl < n) {
            return PX_ERR_BUFFER;
        }
        memcpy(out + pos, varint, vl);
        pos += vl;
        if (n > 0) {
            memcpy(out + pos, joined + offset, n);
        }
        pos += n;
        offset += n;
    }
    *written = pos;
    return PX_OK;
}

int px_batch_frame(uint8_t *out, size_t out_cap, uint32_t channel, uint8_t flags,
                   const uint8_t *joined, const uint32_t *lengths, size_t count,
                   size_t *written)
{
    size_t payload_len;
    int rc;
    if (out == NULL || written == NULL) {
        return PX_ERR_ARG;
    }
    if (out_cap < PX_HEADER_SIZE) {
        return PX_ERR_BUFFER;
    }
    rc = px_batch_pack(out + PX_HEADER_SIZE, out_cap - PX_HEADER_SIZE, joined, lengths, count,
                       &payload_len);
    if (rc != PX_OK) {
        return rc;
    }
    if (payload_len > PX_MAX_PAYLOAD_LIMIT) {
        return PX_ERR_ARG;
    }
    rc = px_frame_header(out, channel, (uint8_t)(flags | PX_FLAG_BATCH), out + PX_HEADER_SIZE,
                         payload_len);
    if (rc != PX_OK) {
        return rc;
    }
    *written = PX_HEADER_SIZE + payload_len;
    return PX_OK;
}

int px_batch_count(const uint8_t *payload, size_t len, uint32_t *count)
{
    int rc;
    if ((payload == NULL && len > 0) || count == NULL) {
        return PX_ERR_ARG;
    }
    rc = px_varint_decode(payload, len, count);
    if (rc <= 0) {
        return PX_ERR_BATCH;
    }
    /* Every message takes at least one byte (its length varint). */
    if (*count > len - (size_t)rc) {
        return PX_ERR_BATCH;
    }
    return PX_OK;
}

int px_batch_unpack(const uint8_t *payload, size_t len, uint32_t *starts, uint32_t *ends,
                    size_t max_items, size_t *count)
{
    uint32_t n, i;
    size_t pos;
    int rc;
    if ((payload == NULL && len > 0) || count == NULL || len > 0xffffffffu) {
        return PX_ERR_ARG;
    }
    rc = px_batch_count(payload, len, &n);
    if (rc != PX_OK) {
        return rc;
    }
    if (n > max_items || (n > 0 && (starts == NULL || ends == NULL))) {
        return PX_ERR_BUFFER;
    }
    pos = (size_t)px_varint_decode(payload, len, &n);
    for (i = 0; i < n; i++) {
        uint32_t item;
        rc = px_varint_decode(payload + pos, len - pos, &item);
        if (rc <= 0) {
            return PX_ERR_BATCH;
        }
        pos += (size_t)rc;
        if (item > len - pos) {
            return PX_ERR_BATCH;
        }
        starts[i] = (uint32_t)pos;
        pos += item;
        ends[i] = (uint32_t)pos;
    }
    if (pos != len) {
        return PX_ERR_BATCH; /* trailing bytes */
    }
    *count = n;
    return PX_OK;
}
