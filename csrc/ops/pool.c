/*
 * pool.c — per-subgraph readouts: mean pooling, and the ENGINE readout
 * [z(root) ; mean z] where the root is each subgraph's first node.
 */
#include "eg_ops.h"

void eg_meanpool_forward(float *out, const float *z, const int64_t *graph_ptr, int64_t G, int C)
{
    #pragma omp parallel for schedule(static) if (EG_OMP_WORTH(graph_ptr[G], C))
    for (int64_t g = 0; g < G; g++) {
        int64_t a = graph_ptr[g], b = graph_ptr[g + 1];
        float *o = out + (size_t)g * C;
        for (int j = 0; j < C; j++) {
            o[j] = 0.0f;
        }
        for (int64_t v = a; v < b; v++) {
            const float *zv = z + (size_t)v * C;
            for (int j = 0; j < C; j++) {
                o[j] += zv[j];
            }
        }
        float inv = b > a ? 1.0f / (float)(b - a) : 0.0f;
        for (int j = 0; j < C; j++) {
            o[j] *= inv;
        }
    }
}

void eg_meanpool_backward(float *dz, const float *dout, const int64_t *graph_ptr, int64_t G, int C)
{
    #pragma omp parallel for schedule(static) if (EG_OMP_WORTH(graph_ptr[G], C))
    for (int64_t g = 0; g < G; g++) {
        int64_t a = graph_ptr[g], b = graph_ptr[g + 1];
        const float *d = dout + (size_t)g * C;
        float inv = b > a ? 1.0f / (float)(b - a) : 0.0f;
        for (int64_t v = a; v < b; v++) {
            float *dv = dz + (size_t)v * C;
            for (int j = 0; j < C; j++) {
                dv[j] += d[j] * inv;
            }
        }
    }
}

void eg_readout_forward(float *out, const float *z, const int64_t *graph_ptr, int64_t G, int C)
{
    // z (N,C) -> out (G, 2C)
    #pragma omp parallel for schedule(static) if (EG_OMP_WORTH(graph_ptr[G], C))
    for (int64_t g = 0; g < G; g++) {
        int64_t a = graph_ptr[g], b = graph_ptr[g + 1];
        float *o = out + (size_t)g * 2 * C;
        const float *zr = z + (size_t)a * C;
        for (int j = 0; j < C; j++) {
            o[j] = zr[j];
            o[C + j] = 0.0f;
        }
        for (int64_t v = a; v < b; v++) {
            const float *zv = z + (size_t)v * C;
            for (int j = 0; j < C; j++) {
                o[C + j] += zv[j];
            }
        }
        float inv = b > a ? 1.0f / (float)(b - a) : 0.0f;
        for (int j = 0; j < C; j++) {
            o[C + j] *= inv;
        }
    }
}

void eg_readout_backward(float *dz, const float *dout, const int64_t *graph_ptr, int64_t G, int C)
{
    #pragma omp parallel for schedule(static) if (EG_OMP_WORTH(graph_ptr[G], C))
    for (int64_t g = 0; g < G; g++) {
        int64_t a = graph_ptr[g], b = graph_ptr[g + 1];
        const float *d = dout + (size_t)g * 2 * C;
        float inv = b > a ? 1.0f / (float)(b - a) : 0.0f;
        for (int64_t v = a; v < b; v++) {
            float *dv = dz + (size_t)v * C;
            for (int j = 0; j < C; j++) {
                dv[j] += d[C + j] * inv;
            }
        }
        if (b > a) {
            float *dr = dz + (size_t)a * C;
            for (int j = 0; j < C; j++) {
                dr[j] += d[j];
            }
        }
    }
}
