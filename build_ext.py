"""Build the C core's Python binding with cffi, in out-of-line API mode.

setuptools runs this through ``cffi_modules`` in setup.py (``pip install .`` and
``pip install -e .``); ``python build_ext.py`` (or ``make build``) builds it in place for development.
The declarations below are checked by the C compiler against ``csrc/phoenix_core.h``:
API mode compiles a real C extension, so a mismatch is a build error, not a crash.
Constants are declared ``...`` so their values come from the header itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
SOURCES = ["crc32c.c", "frame.c", "batch.c", "token_bucket.c"]

CDEF = """
#define PX_VERSION ...
#define PX_HEADER_SIZE ...
#define PX_DEFAULT_MAX_PAYLOAD ...
#define PX_MAX_PAYLOAD_LIMIT ...
#define PX_FLAG_BATCH ...
#define PX_FLAG_COMPRESSED ...
#define PX_FLAG_ENCRYPTED ...
#define PX_FLAG_PRIORITY ...
#define PX_FLAG_CONTROL ...
#define PX_FLAGS_KNOWN ...
#define PX_OK ...
#define PX_ERR_MAGIC ...
#define PX_ERR_VERSION ...
#define PX_ERR_TOO_LARGE ...
#define PX_ERR_CHECKSUM ...
#define PX_ERR_FLAGS ...
#define PX_ERR_BATCH ...
#define PX_ERR_BUFFER ...
#define PX_ERR_ARG ...
#define PX_ERR_NOMEM ...

const char *px_strerror(int code);

uint32_t px_crc32c(uint32_t crc, const void *data, size_t len);
uint32_t px_crc32c_sw(uint32_t crc, const void *data, size_t len);
uint32_t px_crc32c_hw(uint32_t crc, const void *data, size_t len);
int px_crc32c_hw_available(void);
const char *px_crc32c_impl(void);

typedef struct px_frame {
    const uint8_t *payload;
    uint32_t length;
    uint32_t channel;
    uint8_t flags;
} px_frame;

int px_frame_header(uint8_t *out, uint32_t channel, uint8_t flags,
                    const uint8_t *payload, size_t len);
int px_frame_encode(uint8_t *out, size_t out_cap, uint32_t channel, uint8_t flags,
                    const uint8_t *payload, size_t len, size_t *written);
int px_frame_parse(const uint8_t *data, size_t len, uint32_t max_payload,
                   px_frame *frame, size_t *frame_size);

typedef struct px_decoder { ...; } px_decoder;
int px_decoder_init(px_decoder *d, uint32_t max_payload);
void px_decoder_free(px_decoder *d);
int px_decoder_feed_index(px_decoder *d, const uint8_t *data, size_t len, size_t *consumed,
                          uint32_t *index, size_t max_frames);
const uint8_t *px_decoder_buffer(const px_decoder *d);
size_t px_decoder_pending(const px_decoder *d);

size_t px_batch_bound(size_t count, size_t total);
int px_batch_pack(uint8_t *out, size_t out_cap, const uint8_t *joined,
                  const uint32_t *lengths, size_t count, size_t *written);
int px_batch_frame(uint8_t *out, size_t out_cap, uint32_t channel, uint8_t flags,
                   const uint8_t *joined, const uint32_t *lengths, size_t count,
                   size_t *written);
int px_batch_count(const uint8_t *payload, size_t len, uint32_t *count);
int px_batch_unpack(const uint8_t *payload, size_t len, uint32_t *starts, uint32_t *ends,
                    size_t max_items, size_t *count);

typedef struct px_token_bucket {
    double capacity;
    double tokens;
    double rate;
    double last;
} px_token_bucket;
int px_bucket_init(px_token_bucket *b, double capacity, double rate, double now);
int px_bucket_acquire(px_token_bucket *b, double n, double now, double *wait);
double px_bucket_available(px_token_bucket *b, double now);
int px_bucket_set_rate(px_token_bucket *b, double rate, double now);
int px_bucket_release(px_token_bucket *b, double n, double now);
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)

_compile_args = ["-std=c99", "-O3"]
if sys.platform != "win32":
    _compile_args += ["-fvisibility=hidden", "-Wall"]
if os.environ.get("PHOENIX_TRIO_SANITIZE"):
    _compile_args += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"]

ffibuilder.set_source(
    "phoenix_trio._phoenix_core",
    '#include "phoenix_core.h"',
    # Relative paths: setuptools runs from the project root, and so does __main__ below.
    sources=[f"csrc/{name}" for name in SOURCES],
    include_dirs=["csrc"],
    extra_compile_args=_compile_args,
    libraries=["m"] if sys.platform != "win32" else [],
)

if __name__ == "__main__":
    # In-place development build, the same one `make build` runs.
    os.chdir(HERE)
    sys.exit(subprocess.call([sys.executable, "setup.py", "-q", "build_ext", "--inplace"]))
