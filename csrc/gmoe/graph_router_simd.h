/*
 * graph_router_simd.h — the graph router's per-token rows (graph_router.c),
 * included once per instruction set through eg_isa.h (SFX gives each copy
 * its suffix). The work between the router's GEMMs is a few passes of
 * 128-float rows per token and node; the baseline build does them 4 floats
 * (2 doubles) at a time, AVX2 8 (4), AVX-512 16 (8).
 *
 * Every copy computes the same bits: element-wise sums keep their order per
 * element (f = 0..N, e = 0..N-1, zero adjacency entries skipped), and the
 * one dot product (the readout) runs in LANES fixed partial sums added in a
 * fixed order. relu_nan and layer1_pre come from graph_router.c.
 */

/* Two-layer GCN, one token: m (N,g) = Ahat[:N, :] relu(Z1[t]), with Z1[t]'s
 * rows made on the fly from q (g) and the shared term Cs (Nn,g):
 * Z1[t, f] = Cs[f] + Ahat[f, N] q, never stored. first[e] is the first node
 * f with Ahat[e, f] != 0 (Nn if none; first_links): that term starts row e
 * as 0 + w row, as a zeroed row would, without a pass that zeroes it. */
static void SFX(gr_two_layer_input)(float *restrict m, const float *restrict q,
                                    const float *restrict Cs, const float *restrict Ahat,
                                    const int *restrict first, int N, int g)
{
    const int Nn = N + 1;
    enum { CH = 256 };   /* columns per pass: one node's ReLU row stays on the stack */
    float row[CH];
    for (int c0 = 0; c0 < g; c0 += CH) {
        const int nc = g - c0 < CH ? g - c0 : CH;
        for (int f = 0; f < Nn; f++) {
            const float a = Ahat[(size_t)f * Nn + N];
            const float *cs = Cs + (size_t)f * g + c0, *qc = q + c0;
            for (int c = 0; c < nc; c++) {
                row[c] = relu_nan(layer1_pre(cs[c], a, qc[c]));
            }
            for (int e = 0; e < N; e++) {
                const float w = Ahat[(size_t)e * Nn + f];
                float *me = m + (size_t)e * g + c0;
                if (f == first[e]) {
                    for (int c = 0; c < nc; c++) {
                        me[c] = 0.0f + w * row[c];
                    }
                } else if (w != 0.0f) {
                    for (int c = 0; c < nc; c++) {
                        me[c] += w * row[c];
                    }
                }
            }
        }
        for (int e = 0; e < N; e++) {
            if (first[e] == Nn) {   /* an expert linked to no node (not a GMoE graph) */
                float *me = m + (size_t)e * g + c0;
                for (int c = 0; c < nc; c++) {
                    me[c] = 0.0f;
                }
            }
        }
    }
}

/* Two-layer GCN backward, one token, from the last layer's input gradient
 * dm (N,g): for each node f
 *   dZ1[t, f] = [Z1[t, f] > 0] sum_{e<N} Ahat[e, f] dm[e]
 * (the mask remade from q and Cs with layer1_pre, as the forward made Z1);
 * then o (g) = sum_f Ahat[f, N] dZ1[t, f] (the token node's rank-one term)
 * and acc (Nn,g, double) += dZ1[t] (the shared expert term). first_e[f] is
 * the first expert e with Ahat[e, f] != 0 (N if none; first_links). */
static void SFX(gr_two_layer_tail)(float *restrict o, double *restrict acc,
                                   const float *restrict dm, const float *restrict q,
                                   const float *restrict Cs, const float *restrict Ahat,
                                   const int *restrict first_e, int N, int g)
{
    const int Nn = N + 1;
    enum { CH = 256 };
    float row[CH];
    for (int c0 = 0; c0 < g; c0 += CH) {
        const int nc = g - c0 < CH ? g - c0 : CH;
        for (int f = 0; f < Nn; f++) {
            const int e0 = first_e[f];   /* the first expert linked to f starts the sum */
            if (e0 == N) {
                for (int c = 0; c < nc; c++) {
                    row[c] = 0.0f;
                }
            } else {
                const float w0 = Ahat[(size_t)e0 * Nn + f];
                const float *d0 = dm + (size_t)e0 * g + c0;
                for (int c = 0; c < nc; c++) {
                    row[c] = 0.0f + w0 * d0[c];
                }
                for (int e = e0 + 1; e < N; e++) {
                    const float w = Ahat[(size_t)e * Nn + f];
                    if (w == 0.0f) {
                        continue;
                    }
                    const float *de = dm + (size_t)e * g + c0;
                    for (int c = 0; c < nc; c++) {
                        row[c] += w * de[c];
                    }
                }
            }
            const float a = Ahat[(size_t)f * Nn + N];
            const float *cs = Cs + (size_t)f * g + c0, *qc = q + c0;
            double *af = acc + (size_t)f * g + c0;
            float *oc = o + c0;
            for (int c = 0; c < nc; c++) {
                const float v = row[c];   /* unconditional: the loop vectorises */
                row[c] = layer1_pre(cs[c], a, qc[c]) > 0.0f ? v : 0.0f;
                af[c] += (double)row[c];
            }
            if (f == 0) {
                for (int c = 0; c < nc; c++) {
                    oc[c] = 0.0f + a * row[c];
                }
            } else {
                for (int c = 0; c < nc; c++) {
                    oc[c] += a * row[c];
                }
            }
        }
    }
}

/* The readout of one expert row: relu(z) . p over g, in LANES fixed partial
 * sums (element c into part[c % LANES]) added in lane order. */
static float SFX(gr_readout)(const float *restrict z, const float *restrict p, int g)
{
    float part[LANES] = {0};
    int c = 0;
    for (; c + LANES <= g; c += LANES) {
        for (int l = 0; l < LANES; l++) {
            part[l] += relu_nan(z[c + l]) * p[c + l];
        }
    }
    for (int l = 0; c + l < g; l++) {
        part[l] += relu_nan(z[c + l]) * p[c + l];
    }
    float s = 0.0f;
    for (int l = 0; l < LANES; l++) {
        s += part[l];
    }
    return s;
}

/* The readout's backward for one expert row with incoming gradient dl:
 * acc (g, double) += dl relu(z) (pvec's gradient), and, with dg != NULL,
 * dg = [z > 0] dl p (the row's pre-activation gradient). */
static void SFX(gr_readout_back)(double *restrict acc, float *restrict dg,
                                 const float *restrict z, const float *restrict p, float dl,
                                 int g)
{
    const double dld = dl;
    for (int c = 0; c < g; c++) {
        acc[c] += dld * (double)(z[c] > 0.0f ? z[c] : 0.0f);
    }
    if (dg != NULL) {
        for (int c = 0; c < g; c++) {
            const float v = dl * p[c];   /* unconditional: the loop vectorises */
            dg[c] = z[c] > 0.0f ? v : 0.0f;
        }
    }
}
