/*
 * graph_router.c — the GMoE graph router (ALGORITHMS.md §B.2) without a
 * per-batch graph.
 *
 * Every token sees the same (N+1)-node graph: N expert nodes with features
 * u = relu(X Ws^T) and one token node t = relu(x Wt^T), linked to every expert.
 * The normalised adjacency Ahat is constant, so GCN layer 1,
 *   Z1[t] = Ahat [u; t_t] W1^T,
 * splits into a shared term Ahat[:, :N] (u W1^T), computed once per batch,
 * plus the rank-one term Ahat[:, N] (t_t W1^T) per token. Later layers are a
 * batched GEMM over all T*(N+1) node rows followed by the small per-token
 * product with Ahat; the last layer is needed at the N expert nodes only, so
 * there Ahat is applied first (M[t] = Ahat[:N, :] relu(Z_{L-1}[t])) and the
 * GEMM runs over T*N rows instead of T*(N+1). With the default two layers
 * Z1 is never stored: its rows are Cs + Ahat[:, N] q1[t], so the forward
 * keeps q1 (T,g) and builds the last layer's input token by token, and the
 * backward remakes that input and Z1's ReLU mask from q1 (per-token rows in
 * graph_router_simd.h, one copy per instruction set). No token limit and no graph
 * building per batch. d->prec = EG_PREC_BF16 makes the backward's products
 * over the tokens bf16 (eg_gemm_prec); the forward (which picks the experts)
 * and the rest stay float32.
 * act = ReLU after every GCN layer; the logit of expert e is
 * relu(Z_L[t, e]) . pvec (a shared g -> 1 projection without bias, which would
 * cancel in the softmax anyway), or with d->per_expert_proj expert e's own
 * row pvec[e] (N,g).
 */
#include "eg_bf16.h"
#include "eg_gmoe.h"
#include "eg_ops.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* ReLU that keeps NaN (as torch.relu does): an overflow upstream (inf - inf)
 * must reach the logits, where engine_py.gmoe reports it, instead of turning
 * into a silent 0 (`x > 0 ? x : 0` maps NaN to 0). */
static inline float relu_nan(float x)
{
    return x < 0.0f ? 0.0f : x;
}

static void relu_copy(float *dst, const float *src, size_t n)
{
    #pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) {
        dst[i] = relu_nan(src[i]);
    }
}

/* Token reductions run over RED_CHUNKS fixed chunks of the tokens (one
 * partial sum each, in double, added in chunk order), so they read the
 * activations row by row and give the same bits for any thread count. */
#define RED_CHUNKS 16

static int chunk_lo(int k, int T)
{
    return (int)(((long long)T * k) / RED_CHUNKS);
}

/* Make *buf hold RED_CHUNKS * n doubles (grown as needed); -1 on ENOMEM. */
static int chunk_sums_grow(double **buf, size_t n, size_t *have)
{
    if (n <= *have) {
        return 0;
    }
    double *p = realloc(*buf, RED_CHUNKS * n * sizeof(double));
    if (p == NULL) {
        return -1;
    }
    *buf = p;
    *have = n;
    return 0;
}
#define chunk_sums(buf, n, T, have) chunk_sums_grow(&(buf), (n), (have))

/* out[t] (Nn,g) = Ahat (or Ahat^T) Q[t] for every token. */
static void apply_adj(float *out, const float *Q, const float *Ahat, int T, int Nn, int g,
                      int transpose)
{
    #pragma omp parallel for schedule(static)
    for (int t = 0; t < T; t++) {
        const float *q = Q + (size_t)t * Nn * g;
        float *o = out + (size_t)t * Nn * g;
        for (int n = 0; n < Nn; n++) {
            float *on = o + (size_t)n * g;
            memset(on, 0, (size_t)g * sizeof(float));
            for (int f = 0; f < Nn; f++) {
                float a = transpose ? Ahat[(size_t)f * Nn + n] : Ahat[(size_t)n * Nn + f];
                if (a == 0.0f) {
                    continue;
                }
                const float *qf = q + (size_t)f * g;
                for (int c = 0; c < g; c++) {
                    on[c] += a * qf[c];
                }
            }
        }
    }
}

/* Scratch of the calling thread, kept between calls and grown on demand: the
 * router runs twice per layer and step, and fresh multi-MB buffers cost
 * page faults and unmaps every time (a third of the router's CPU time at
 * T ~ 1000 in bf16). One per thread, so concurrent callers (two models in
 * two Python threads) never share it; forward and backward of one thread
 * never run at the same time. A pthread key rather than _Thread_local: its
 * destructor frees the scratch when the thread exits (a thread pool's
 * short-lived workers would otherwise leak one buffer each). */
typedef struct {
    float *p;
    size_t n;   /* floats */
} ws_scratch;

static pthread_key_t ws_key;
static pthread_once_t ws_once = PTHREAD_ONCE_INIT;
static int ws_key_ok = 0;

static void ws_free(void *v)
{
    ws_scratch *w = v;
    eg_aligned_free(w->p);
    free(w);
}

static void ws_key_init(void)
{
    ws_key_ok = pthread_key_create(&ws_key, ws_free) == 0;
}

/* Carve `k` float buffers of sizes n[i] (each rounded up to 64 bytes) from
 * the thread's scratch into *out[i] (NULL when n[i] == 0); -1 on ENOMEM. */
static int ws_carve(int k, const size_t *n, float ***out)
{
    size_t total = 0;
    for (int i = 0; i < k; i++) {
        total += (n[i] + 15) & ~(size_t)15;
    }
    pthread_once(&ws_once, ws_key_init);
    if (!ws_key_ok) {
        return -1;
    }
    ws_scratch *w = pthread_getspecific(ws_key);
    if (w == NULL) {
        w = calloc(1, sizeof *w);
        if (w == NULL || pthread_setspecific(ws_key, w) != 0) {
            free(w);
            return -1;
        }
    }
    if (total > w->n) {
        eg_aligned_free(w->p);
        w->p = eg_aligned_alloc(total * sizeof(float));
        w->n = w->p != NULL ? total : 0;
        if (w->p == NULL) {
            return -1;
        }
    }
    size_t off = 0;
    for (int i = 0; i < k; i++) {
        *out[i] = n[i] ? w->p + off : NULL;
        off += (n[i] + 15) & ~(size_t)15;
    }
    return 0;
}

/* m (N,g) = Ahat[:N, :] relu(z) for one token's node rows z (Nn,g): the last
 * layer's input at the expert nodes. */
static void adj_relu_token(float *m, const float *z, const float *Ahat, int N, int g)
{
    const int Nn = N + 1;
    enum { CH = 256 };   /* columns per pass: one node's ReLU row stays on the stack */
    memset(m, 0, (size_t)N * g * sizeof(float));
    float row[CH];
    for (int c0 = 0; c0 < g; c0 += CH) {
        const int nc = g - c0 < CH ? g - c0 : CH;
        /* node f's ReLU once, added to every expert row e with Ahat[e, f] != 0
         * (the same sum, in the same order f = 0..N, as row by row) */
        for (int f = 0; f < Nn; f++) {
            const float *zf = z + (size_t)f * g + c0;
            for (int c = 0; c < nc; c++) {
                row[c] = relu_nan(zf[c]);
            }
            for (int e = 0; e < N; e++) {
                const float a = Ahat[(size_t)e * Nn + f];
                if (a == 0.0f) {
                    continue;
                }
                float *me = m + (size_t)e * g + c0;
                for (int c = 0; c < nc; c++) {
                    me[c] += a * row[c];
                }
            }
        }
    }
}

/* Layer 1's pre-activation at node n with its rank-one term q1[t]:
 * Z1[t, n, c] = Cs[n, c] + Ahat[n, N] q1[t, c]. One expression for the
 * forward and for the backward's ReLU mask, so both see the same bits. */
static inline float layer1_pre(float cs, float a, float q)
{
    return cs + a * q;
}

/* The per-token rows, one copy per instruction set (graph_router_simd.h). */
#define LANES 16
#define EG_ISA_BODY "../gmoe/graph_router_simd.h"
#include "eg_isa.h"

typedef struct {
    void (*two_layer_input)(float *m, const float *q, const float *Cs, const float *Ahat,
                            const int *first, int N, int g);
    void (*two_layer_tail)(float *o, double *acc, const float *dm, const float *q,
                           const float *Cs, const float *Ahat, const int *first_e, int N, int g);
    float (*readout)(const float *z, const float *p, int g);
    void (*readout_back)(double *acc, float *dg, const float *z, const float *p, float dl, int g);
} gr_kernels;

#define GR_SET(sfx)                                                                          \
    {EG_CAT2(gr_two_layer_input, sfx), EG_CAT2(gr_two_layer_tail, sfx),                   \
     EG_CAT2(gr_readout, sfx), EG_CAT2(gr_readout_back, sfx)}

static const gr_kernels gr_copies[EG_ISA_NCOPIES] = EG_ISA_COPIES(GR_SET);

/* The first nonzero entries of Ahat's expert rows, which start the per-token
 * sums of gr_two_layer_input and gr_two_layer_tail (the same for every token):
 *   first[e]     (e < N)  = the first node f with Ahat[e, f] != 0, N + 1 if none;
 *   first[N + f] (f <= N) = the first expert e < N with Ahat[e, f] != 0, N if none.
 * first holds 2N + 1 ints. */
#define FIRST_LINKS_LEN(N) (2 * (size_t)(N) + 1)
static void first_links(int *first, const float *Ahat, int N)
{
    const int Nn = N + 1;
    for (int e = 0; e < N; e++) {
        int f = 0;
        while (f < Nn && Ahat[(size_t)e * Nn + f] == 0.0f) {
            f++;
        }
        first[e] = f;
    }
    for (int f = 0; f < Nn; f++) {
        int e = 0;
        while (e < N && Ahat[(size_t)e * Nn + f] == 0.0f) {
            e++;
        }
        first[N + f] = e;
    }
}

/* M[t] = Ahat[:N, :] relu(Zp[t]) for every token (Zp (T,Nn,g), M (T,N,g)). */
static void adj_relu_experts(float *M, const float *Zp, const float *Ahat, int T, int N, int g)
{
    #pragma omp parallel for schedule(static)
    for (int t = 0; t < T; t++) {
        adj_relu_token(M + (size_t)t * N * g, Zp + (size_t)t * (N + 1) * g, Ahat, N, g);
    }
}

/* dh (Nn,g) = Ahat[:N, :]^T dm for one token: dh[f] = sum_{e<N} Ahat[e, f] dm[e]
 * (the last layer's input gradient taken back to the node rows). */
static void adj_t_experts_token(float *dh, const float *dm, const float *Ahat, int N, int g)
{
    const int Nn = N + 1;
    for (int f = 0; f < Nn; f++) {
        float *df = dh + (size_t)f * g;
        memset(df, 0, (size_t)g * sizeof(float));
        for (int e = 0; e < N; e++) {
            const float a = Ahat[(size_t)e * Nn + f];
            if (a == 0.0f) {
                continue;
            }
            const float *de = dm + (size_t)e * g;
            for (int c = 0; c < g; c++) {
                df[c] += a * de[c];
            }
        }
    }
}

/* The backward's last step over the tokens, layer 1's input side (GCNs of
 * one or of three and more layers), from dZ1 (T,Nn,g): for token t
 * dq[t] = sum_n Ahat[n, N] dZ1[t, n] (the token node's rank-one term) and
 * Sn = sum_t dZ1[t] (the shared expert term), the latter in RED_CHUNKS fixed
 * token chunks (double partial sums in red, added in chunk order by the
 * caller: the bits do not depend on the thread count). */
static void layer1_tail(float *dq, double *red, const float *dZ, const float *Ahat, int T, int N,
                        int g)
{
    const int Nn = N + 1;
    const size_t ns = (size_t)Nn * g;
    #pragma omp parallel for schedule(static)
    for (int k = 0; k < RED_CHUNKS; k++) {
        double *acc = red + (size_t)k * ns;
        memset(acc, 0, ns * sizeof *acc);
        for (int t = chunk_lo(k, T); t < chunk_lo(k + 1, T); t++) {
            const float *dz = dZ + (size_t)t * ns;
            float *o = dq + (size_t)t * g;
            memset(o, 0, (size_t)g * sizeof(float));
            for (int n = 0; n < Nn; n++) {
                const float a = Ahat[(size_t)n * Nn + N];
                const float *dzn = dz + (size_t)n * g;
                for (int c = 0; c < g; c++) {
                    o[c] += a * dzn[c];
                }
            }
            for (size_t i = 0; i < ns; i++) {
                acc[i] += dz[i];
            }
        }
    }
}

/* The two-layer GCN's backward over the tokens, from the last layer's input
 * gradient dM (T,N,g) to layer 1's input side without storing dZ1
 * (gr_two_layer_tail, token by token): dq[t] = sum_f Ahat[f, N] dZ1[t, f]
 * and Sn = sum_t dZ1[t], the latter in RED_CHUNKS fixed token chunks (double
 * partial sums in red, added in chunk order by the caller: the bits do not
 * depend on the thread count). The same sums in the same order as
 * layer1_tail over a stored dZ1. */
static void two_layer_tail(float *dq, double *red, const float *dM, const float *q1,
                           const float *Cs, const float *Ahat, const int *first_e, int T, int N,
                           int g)
{
    const gr_kernels *kr = &gr_copies[eg_isa_level()];
    const size_t ns = (size_t)(N + 1) * g;
    #pragma omp parallel for schedule(static)
    for (int k = 0; k < RED_CHUNKS; k++) {
        double *acc = red + (size_t)k * ns;
        memset(acc, 0, ns * sizeof *acc);
        for (int t = chunk_lo(k, T); t < chunk_lo(k + 1, T); t++) {
            kr->two_layer_tail(dq + (size_t)t * g, acc, dM + (size_t)t * N * g, q1 + (size_t)t * g,
                               Cs, Ahat, first_e, N, g);
        }
    }
}

/* Layer 1's shared expert term: U = relu(X Ws^T) (N,g) (Upre before the ReLU,
 * may be NULL), P1 = U W1^T (N,g), Cs = Ahat[:, :N] P1 (Nn,g). */
static void shared_layer1(float *Cs, float *P1, float *U, float *Upre, const float *X,
                          const float *Ws, const float *W1, const float *Ahat, int N, int g,
                          int H)
{
    const int Nn = N + 1;
    eg_sgemm(0, 1, N, g, H, 1.0f, X, H, Ws, H, 0.0f, U, g);
    if (Upre != NULL) {
        memcpy(Upre, U, (size_t)N * g * sizeof(float));
    }
    relu_copy(U, U, (size_t)N * g);
    eg_sgemm(0, 1, N, g, g, 1.0f, U, g, W1, g, 0.0f, P1, g);
    for (int n = 0; n < Nn; n++) {
        for (int c = 0; c < g; c++) {
            float acc = 0.0f;
            for (int f = 0; f < N; f++) {
                acc += Ahat[(size_t)n * Nn + f] * P1[(size_t)f * g + c];
            }
            Cs[(size_t)n * g + c] = acc;
        }
    }
}

eg_status eg_graph_router_forward(float *logits, float *Zt, float *Z, const float *x,
                                  const float *X, const float *Ws, const float *Wt,
                                  const float *Wl, const float *pvec, const float *Ahat,
                                  const eg_graph_router_dims *d, eg_err *err)
{
    // x (T,H), X (N,H), Ws/Wt (g,H), Wl (L,g,g), pvec (g), Ahat (N+1,N+1)
    const int T = d->T, H = d->H, N = d->N, g = d->g, L = d->L, Nn = N + 1;
    const size_t nodes = (size_t)T * Nn, layer = nodes * g;
    /* float32 whatever d->prec: the logits decide the top-k experts, and bf16
     * rounding would flip near-ties (a bf16 model routes as a float32 one) */
    const int prec = EG_PREC_F32;
    const size_t elayer = (size_t)T * N * g;   /* the last layer: expert rows only */
    const gr_kernels *kr = &gr_copies[eg_isa_level()];
    float *U, *P1, *Cs, *tt, *q1, *Hp, *Q, *M, *fb;
    {
        const size_t n[] = {(size_t)N * g, (size_t)N * g, (size_t)Nn * g, (size_t)T * g,
                            L == 2 ? 0 : (size_t)T * g, L > 2 ? layer : 0, L > 2 ? layer : 0,
                            L > 1 ? elayer : 0, FIRST_LINKS_LEN(N)};
        float **out[] = {&U, &P1, &Cs, &tt, &q1, &Hp, &Q, &M, &fb};
        if (ws_carve(9, n, out) < 0) {
            return eg_seterr(err, EG_ENOMEM, "graph router forward: out of memory (T=%d)", T);
        }
    }
    int *first = (int *)(void *)fb;   /* ints in a float slot of the same size */
    first_links(first, Ahat, N);
    if (L == 2) {
        q1 = Z;   /* saved in Z's first slice: layer 1's rank-one terms (T,g) */
    }
    /* layer 1, shared expert term and per-token rank-one term */
    shared_layer1(Cs, P1, U, NULL, X, Ws, Wl, Ahat, N, g, H);
    eg_gemm_prec(prec, 0, 1, T, g, H, 1.0f, x, H, Wt, H, 0.0f, Zt, g);
    relu_copy(tt, Zt, (size_t)T * g);
    eg_gemm_prec(prec, 0, 1, T, g, g, 1.0f, tt, g, Wl, g, 0.0f, q1, g);
    if (L == 2) {
        /* the last layer's input straight from q1: Z1 is never stored, and M
         * is remade by the backward (cheaper than writing it out and reading
         * it back) */
        #pragma omp parallel for schedule(static)
        for (int t = 0; t < T; t++) {
            kr->two_layer_input(M + (size_t)t * N * g, q1 + (size_t)t * g, Cs, Ahat, first, N, g);
        }
    } else {
        #pragma omp parallel for schedule(static)
        for (int t = 0; t < T; t++) {
            float *z = Z + (size_t)t * Nn * g;
            const float *qt = q1 + (size_t)t * g;
            for (int n = 0; n < Nn; n++) {
                const float a = Ahat[(size_t)n * Nn + N];
                for (int c = 0; c < g; c++) {
                    z[(size_t)n * g + c] = layer1_pre(Cs[(size_t)n * g + c], a, qt[c]);
                }
            }
        }
    }
    for (int l = 1; l < L - 1; l++) {
        relu_copy(Hp, Z + (size_t)(l - 1) * layer, layer);
        eg_gemm_prec(prec, 0, 1, (int)nodes, g, g, 1.0f, Hp, g, Wl + (size_t)l * g * g, g, 0.0f,
                     Q, g);
        apply_adj(Z + (size_t)l * layer, Q, Ahat, T, Nn, g, 0);
    }
    float *ZL = Z + (size_t)(L - 1) * layer;
    if (L > 1) {
        /* last layer at the expert nodes: Z_L[t, :N] = (Ahat[:N, :] H_{L-1}[t]) W_L^T,
         * stored as T*N expert rows (the slice's layout when L > 1) */
        if (L > 2) {
            adj_relu_experts(M, Z + (size_t)(L - 2) * layer, Ahat, T, N, g);
        }
        eg_gemm_prec(prec, 0, 1, T * N, g, g, 1.0f, M, g, Wl + (size_t)(L - 1) * g * g, g, 0.0f,
                     ZL, g);
    }
    {
        const size_t pstride = d->per_expert_proj ? (size_t)g : 0;
        const int zrows = L > 1 ? N : Nn;   /* rows per token in ZL */
        #pragma omp parallel for schedule(static)
        for (int t = 0; t < T; t++) {
            for (int e = 0; e < N; e++) {
                logits[(size_t)t * N + e] =
                    kr->readout(ZL + ((size_t)t * zrows + e) * g, pvec + (size_t)e * pstride, g);
            }
        }
    }
    return EG_OK;
}

eg_status eg_graph_router_backward(float *dx, float *dWs, float *dWt, float *dWl,
                                   float *dpvec, const float *dlogits, const float *x,
                                   const float *X, const float *Ws, const float *Wt,
                                   const float *Wl, const float *pvec, const float *Ahat,
                                   const float *Zt, const float *Z,
                                   const eg_graph_router_dims *d, eg_err *err)
{
    const int T = d->T, H = d->H, N = d->N, g = d->g, L = d->L, Nn = N + 1;
    const size_t nodes = (size_t)T * Nn, layer = nodes * g;
    const int prec = d->prec;
    const size_t elayer = (size_t)T * N * g;
    const gr_kernels *kr = &gr_copies[eg_isa_level()];
    float *dH, *dZ, *Hp, *dG, *M, *Upre, *U, *tt, *dq, *dtt, *Sn, *dP, *dU, *P1, *Cs, *Mr, *fb;
    {
        const size_t n[] = {L == 2 ? 0 : layer, L == 2 ? 0 : layer, L > 2 ? layer : 0,
                            L > 1 ? elayer : 0, L > 1 ? elayer : 0, (size_t)N * g,
                            (size_t)N * g, (size_t)T * g, (size_t)T * g, (size_t)T * g,
                            (size_t)Nn * g, (size_t)N * g, (size_t)N * g, (size_t)N * g,
                            (size_t)Nn * g, L == 2 ? elayer : 0, FIRST_LINKS_LEN(N)};
        float **out[] = {&dH, &dZ, &Hp, &dG, &M, &Upre, &U, &tt, &dq, &dtt, &Sn, &dP, &dU, &P1,
                         &Cs, &Mr, &fb};
        if (ws_carve(17, n, out) < 0) {
            return eg_seterr(err, EG_ENOMEM, "graph router backward: out of memory (T=%d)", T);
        }
    }
    int *first = (int *)(void *)fb;   /* ints in a float slot of the same size */
    first_links(first, Ahat, N);
    double *red = NULL;   /* RED_CHUNKS partial sums of the token reductions */
    size_t red_n = 0;
    eg_status st = EG_OK;
    const float *ZL = Z + (size_t)(L - 1) * layer;
    const int zrows = L > 1 ? N : Nn;   /* rows per token in ZL (the forward's layout) */
    const size_t pstride = d->per_expert_proj ? (size_t)g : 0;
    /* layer 1's shared term as the forward made it (U, Upre for its ReLU mask) */
    shared_layer1(Cs, P1, U, Upre, X, Ws, Wl, Ahat, N, g, H);
    /* logits = relu(Z_L[:, :N]) . pvec (shared), or . pvec[e] (per expert):
     * dpvec = sum over tokens of dlogits * relu(Z_L), read row by row in
     * RED_CHUNKS fixed token chunks (double partial sums, added in chunk
     * order: the result does not depend on the thread count). With L > 1 the
     * same pass makes the last layer's pre-activation gradient
     * dG[t, e] = [Z_L[t, e] > 0] dlogits[t, e] pvec(e) while the row is in cache. */
    {
        const size_t np = d->per_expert_proj ? (size_t)N * g : (size_t)g;
        if (chunk_sums(red, np, T, &red_n) < 0) {
            st = eg_seterr(err, EG_ENOMEM, "graph router backward: out of memory (T=%d)", T);
            goto done;
        }
        #pragma omp parallel for schedule(static)
        for (int k = 0; k < RED_CHUNKS; k++) {
            double *acc = red + (size_t)k * np;
            memset(acc, 0, np * sizeof *acc);
            for (int t = chunk_lo(k, T); t < chunk_lo(k + 1, T); t++) {
                for (int e = 0; e < N; e++) {
                    kr->readout_back(acc + (d->per_expert_proj ? (size_t)e * g : 0),
                                     L > 1 ? dG + ((size_t)t * N + e) * g : NULL,
                                     ZL + ((size_t)t * zrows + e) * g, pvec + (size_t)e * pstride,
                                     dlogits[(size_t)t * N + e], g);
                }
            }
        }
        for (size_t i = 0; i < np; i++) {
            double sum = 0.0;
            for (int k = 0; k < RED_CHUNKS; k++) {
                sum += red[(size_t)k * np + i];
            }
            dpvec[i] += (float)sum;
        }
    }
    int l0 = L - 1;   /* the layer the generic loop below starts from */
    if (L == 1) {
        #pragma omp parallel for schedule(static)
        for (int t = 0; t < T; t++) {
            for (int n = 0; n < Nn; n++) {
                float *dh = dH + ((size_t)t * Nn + n) * g;
                float dl = n < N ? dlogits[(size_t)t * N + n] : 0.0f;
                const float *pe = pvec + (n < N ? (size_t)n * pstride : 0);
                for (int c = 0; c < g; c++) {
                    dh[c] = dl * pe[c];
                }
            }
        }
    } else {
        /* last layer, expert rows only: Z_L[t, :N] = M[t] W_L^T with
         * M[t] = Ahat[:N, :] relu(Z_{L-1}[t]), remade as the forward made it */
        const float *Min = M;
        if (L == 2) {
            #pragma omp parallel for schedule(static)
            for (int t = 0; t < T; t++) {
                kr->two_layer_input(Mr + (size_t)t * N * g, Z + (size_t)t * g, Cs, Ahat, first, N,
                                    g);
            }
            Min = Mr;
        } else {
            adj_relu_experts(M, Z + (size_t)(L - 2) * layer, Ahat, T, N, g);
        }
        const float *WL = Wl + (size_t)(L - 1) * g * g;
        /* float32 in both precisions: a (g,g) result over T*N terms is as fast
         * as the bf16 kernel here (its transposed-A packing costs as much) */
        eg_sgemm(1, 0, g, g, T * N, 1.0f, dG, g, Min, g, 1.0f, dWl + (size_t)(L - 1) * g * g, g);
        eg_gemm_prec(prec, 0, 0, T * N, g, g, 1.0f, dG, g, WL, g, 0.0f, M, g); /* M = dM */
        l0 = L - 2;
    }
    /* layer 1's input side needs RED_CHUNKS partial sums of (Nn, g) */
    const size_t ns = (size_t)Nn * g;
    if (chunk_sums(red, ns, T, &red_n) < 0) {
        st = eg_seterr(err, EG_ENOMEM, "graph router backward: out of memory (T=%d)", T);
        goto done;
    }
    if (L == 2) {
        /* dZ1 from dM and the mask remade from q1, token by token (two_layer_tail) */
        two_layer_tail(dq, red, M, Z, Cs, Ahat, first + N, T, N, g);
    } else {
        if (L > 2) {
            /* dH_{L-1}[t, f] = sum_{e<N} Ahat[e, f] dM[t, e] */
            #pragma omp parallel for schedule(static)
            for (int t = 0; t < T; t++) {
                adj_t_experts_token(dH + (size_t)t * Nn * g, M + (size_t)t * N * g, Ahat, N, g);
            }
        }
        for (int l = l0; l >= 0; l--) {
            const float *Zl = Z + (size_t)l * layer;
            #pragma omp parallel for schedule(static)
            for (size_t i = 0; i < layer; i++) {
                const float v = dH[i];   /* unconditional load: the loop vectorises */
                dZ[i] = Zl[i] > 0.0f ? v : 0.0f;
            }
            if (l == 0) {
                break;
            }
            /* Z_l[t] = Ahat Q[t], Q = relu(Z_{l-1}) W_l^T */
            apply_adj(dH, dZ, Ahat, T, Nn, g, 1); /* dH now holds dQ */
            relu_copy(Hp, Z + (size_t)(l - 1) * layer, layer);
            eg_gemm_prec(prec, 1, 0, g, g, (int)nodes, 1.0f, dH, g, Hp, g, 1.0f,
                         dWl + (size_t)l * g * g, g);
            /* dH_{l-1} = dQ W_l, computed into dZ then swapped */
            eg_gemm_prec(prec, 0, 0, (int)nodes, g, g, 1.0f, dH, g, Wl + (size_t)l * g * g, g,
                         0.0f, dZ, g);
            float *sw = dH;
            dH = dZ;
            dZ = sw;
        }
        /* layer 1: Z1[t, n] = sum_{f<N} Ahat[n,f] P1_f + Ahat[n,N] q1_t */
        layer1_tail(dq, red, dZ, Ahat, T, N, g);
    }
    /* Sn = sum over tokens of dZ1[t] (Nn, g): the chunks' sums in chunk order */
    for (size_t i = 0; i < ns; i++) {
        double sum = 0.0;
        for (int k = 0; k < RED_CHUNKS; k++) {
            sum += red[(size_t)k * ns + i];
        }
        Sn[i] = (float)sum;
    }
    for (int f = 0; f < N; f++) {
        for (int c = 0; c < g; c++) {
            float acc = 0.0f;
            for (int n = 0; n < Nn; n++) {
                acc += Ahat[(size_t)n * Nn + f] * Sn[(size_t)n * g + c];
            }
            dP[(size_t)f * g + c] = acc;
        }
    }
    relu_copy(tt, Zt, (size_t)T * g);
    eg_sgemm(1, 0, g, g, N, 1.0f, dP, g, U, g, 1.0f, dWl, g);
    eg_gemm_prec(prec, 1, 0, g, g, T, 1.0f, dq, g, tt, g, 1.0f, dWl, g);
    eg_sgemm(0, 0, N, g, g, 1.0f, dP, g, Wl, g, 0.0f, dU, g);
    eg_gemm_prec(prec, 0, 0, T, g, g, 1.0f, dq, g, Wl, g, 0.0f, dtt, g);
    for (size_t i = 0; i < (size_t)N * g; i++) {
        const float v = dU[i];
        dU[i] = Upre[i] > 0.0f ? v : 0.0f;
    }
    #pragma omp parallel for schedule(static) if (T > 64)
    for (size_t i = 0; i < (size_t)T * g; i++) {
        const float v = dtt[i];
        dtt[i] = Zt[i] > 0.0f ? v : 0.0f;
    }
    eg_sgemm(1, 0, g, H, N, 1.0f, dU, g, X, H, 1.0f, dWs, H);
    eg_gemm_prec(prec, 1, 0, g, H, T, 1.0f, dtt, g, x, H, 1.0f, dWt, H);
    eg_gemm_prec(prec, 0, 0, T, H, g, 1.0f, dtt, g, Wt, H, 1.0f, dx, H);
done:
    free(red);
    return st;
}
