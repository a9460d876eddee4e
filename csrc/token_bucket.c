/*
 * token_bucket.c - the token-bucket fast path. Time is passed in, never read.
 *
 * The float operations and their order are part of the contract: the pure-Python
 * implementation in phoenix_trio/core/_pure.py performs the same ones, so both give
 * bit-identical results (the differential tests check it).
 */
#include "phoenix_core.h"

#include <math.h>

/* Tolerance for float drift: after waiting exactly the returned time, a request
 * is granted even if rounding left it a hair short. */
#define PX_BUCKET_EPSILON 1e-9

static int finite_nonneg(double x)
{
    return isfinite(x) && x >= 0.0;
}

static void refill(px_token_bucket *b, double now)
{
    if (now > b->last) {
        double tokens = b->tokens + (now - b->last) * b->rate;
        b->tokens = tokens < b->capacity ? tokens : b->capacity;
        b->last = now;
    }
}

int px_bucket_init(px_token_bucket *b, double capacity, double rate, double now)
{
    if (b == NULL || !isfinite(capacity) || capacity <= 0.0 || !finite_nonneg(rate) ||
        !isfinite(now)) {
        return PX_ERR_ARG;
    }
    b->capacity = capacity;
    b->tokens = capacity;
    b->rate = rate;
    b->last = now;
    return PX_OK;
}

int px_bucket_acquire(px_token_bucket *b, double n, double now, double *wait)
{
    if (b == NULL || wait == NULL || !finite_nonneg(n) || n > b->capacity || !isfinite(now)) {
        return PX_ERR_ARG;
    }
    refill(b, now);
    if (b->tokens + PX_BUCKET_EPSILON >= n) {
        double left = b->tokens - n;
        b->tokens = left > 0.0 ? left : 0.0;
        *wait = 0.0;
        return 1;
    }
    if (b->rate <= 0.0) {
        *wait = INFINITY;
    } else {
        *wait = (n - b->tokens) / b->rate;
    }
    return 0;
}

double px_bucket_available(px_token_bucket *b, double now)
{
    if (b == NULL) {
        return 0.0;
    }
    if (isfinite(now)) {
        refill(b, now);
    }
    return b->tokens;
}

int px_bucket_set_rate(px_token_bucket *b, double rate, double now)
{
    if (b == NULL || !finite_nonneg(rate) || !isfinite(now)) {
        return PX_ERR_ARG;
    }
    refill(b, now);
    b->rate = rate;
    return PX_OK;
}

int px_bucket_release(px_token_bucket *b, double n, double now)
{
    double tokens;
    if (b == NULL || !finite_nonneg(n) || !isfinite(now)) {
        return PX_ERR_ARG;
    }
    refill(b, now);
    tokens = b->tokens + n;
    b->tokens = tokens < b->capacity ? tokens : b->capacity;
    return PX_OK;
}
