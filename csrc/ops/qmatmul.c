/*
 * qmatmul.c — products with weights kept in their GGUF format (eg_quant.h).
 *
 * Y = X @ W^T where W stays quantized in the mapped file. The weights are
 * dequantized a tile of rows at a time into a scratch buffer small enough to
 * stay in cache, and the core's float GEMM multiplies the batch by the tile.
 * Every token of the batch reuses a dequantized tile, so for the batches an
 * encoder runs (hundreds of tokens) dequantization is a small fraction of
 * the work and the product runs at the float GEMM's speed. The values are
 * exactly eg_dequantize's, so the result equals X @ dequantize(W)^T computed
 * by the same GEMM, on every ISA level.
 */
#include "eg.h"
#include "eg_quant.h"

#include <string.h>

/* Rows per dequantized tile: 64 rows of 2048 floats = 512 KiB. */
#define TILE_FLOATS (64 * 2048)

eg_status eg_qmat_init(eg_qmat *w, int type, int64_t rows, int64_t cols, const void *data,
                       const char *what, eg_err *err)
{
    size_t bs, ts, nb, rb, total;
    if (what == NULL) {
        what = "weight";
    }
    memset(w, 0, sizeof *w);
    if (eg_ggml_type_traits(type, &bs, &ts) != 0 || !eg_ggml_can_dequantize(type)
        || type == EG_GGML_Q8_K) {
        return eg_seterr(err, EG_EINVAL, "%s: tensor type %s is not supported for products "
                         "(supported: %s except Q8_K)", what, eg_ggml_type_name(type),
                         eg_ggml_supported_names());
    }
    if (rows <= 0 || cols <= 0 || rows > INT32_MAX || cols > INT32_MAX) {
        return eg_seterr(err, EG_EINVAL, "%s: bad matrix shape (%lld, %lld)", what,
                         (long long)rows, (long long)cols);
    }
    if ((size_t)cols % bs != 0) {
        return eg_seterr(err, EG_EINVAL, "%s: row length %lld is not a multiple of %s's block "
                         "size %zu", what, (long long)cols, eg_ggml_type_name(type), bs);
    }
    nb = (size_t)cols / bs;
    if (eg_mul_ovf(nb, ts, &rb) || eg_mul_ovf(rb, (size_t)rows, &total)) {
        return eg_seterr(err, EG_EOVERFLOW, "%s: byte size of a (%lld, %lld) %s matrix overflows",
                         what, (long long)rows, (long long)cols, eg_ggml_type_name(type));
    }
    w->type = type;
    w->rows = rows;
    w->cols = cols;
    w->row_bytes = rb;
    w->data = data;
    return EG_OK;
}

void eg_qmat_row(const eg_qmat *w, int64_t r, float *out)
{
    eg_dequantize(w->type, (const unsigned char *)w->data + (size_t)r * w->row_bytes, out,
                  (size_t)w->cols);
}

eg_status eg_qmatmul(float *Y, size_t ldy, const float *X, size_t ldx, size_t N,
                     const eg_qmat *W, const float *bias, eg_err *err)
{
    const int cols = (int)W->cols, rows = (int)W->rows;
    if (N == 0) {
        return EG_OK;
    }
    if (W->type == EG_GGML_F32) {
        eg_sgemm(0, 1, (int)N, rows, cols, 1.0f, X, (int)ldx, (const float *)W->data, cols, 0.0f,
                 Y, (int)ldy);
    } else {
        int tile = TILE_FLOATS / cols;
        if (tile < 16) {
            tile = 16;
        }
        if (tile > rows) {
            tile = rows;
        }
        float *buf = eg_aligned_alloc((size_t)tile * (size_t)cols * sizeof(float));
        if (buf == NULL) {
            return eg_seterr(err, EG_ENOMEM, "out of memory for a %d x %d dequantized tile",
                             tile, cols);
        }
        for (int r0 = 0; r0 < rows; r0 += tile) {
            int nr = rows - r0 < tile ? rows - r0 : tile;
            eg_dequantize(W->type, (const unsigned char *)W->data + (size_t)r0 * W->row_bytes,
                          buf, (size_t)nr * (size_t)cols);
            eg_sgemm(0, 1, (int)N, nr, cols, 1.0f, X, (int)ldx, buf, cols, 0.0f, Y + r0,
                     (int)ldy);
        }
        eg_aligned_free(buf);
    }
    if (bias != NULL) {
        #pragma omp parallel for schedule(static) if (N * (size_t)rows > 65536)
        for (size_t i = 0; i < N; i++) {
            float *y = Y + i * ldy;
            for (int j = 0; j < rows; j++) {
                y[j] += bias[j];
            }
        }
    }
    return EG_OK;
}
