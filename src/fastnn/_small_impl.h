/* Small-batch kernels, instantiated once per element type by _small.h.
 *
 * The including file defines:
 *   T        element type (float / double)
 *   SFX      name suffix (_s / _d)
 *   VT       AVX vector type holding VL elements
 *   VL       elements per vector
 *   VLOAD, VSTORE, VSET1, VZERO, VADD, VSUB, VMUL, VFMA   AVX2 intrinsics
 *   HSUM(v)  horizontal sum of a vector
 *   VTAILMASK(r), VMLOAD(p, mask), VMSTORE(p, mask, v)   the mask of a vector's first r
 *            lanes, and a load (the others read as 0) or store of those lanes only (memory
 *            past them is not touched)
 *
 * Matrices are row-major. With m (the batch) small, BLAS spends most of its
 * time packing the large operand (the weights); these kernels read the
 * weights in place, once per call, and keep the batch's k-tile in L1.
 */

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)

/* Each dot-product block below takes one STEP per vector of its inputs: plain loads over the
 * whole vectors, then one more step with loads under the mask mk for the last partial vector
 * (its other lanes read as 0), so every element goes through the same FMAs. */
#define VMLOAD_MK(p) VMLOAD((p), mk)
#define DOT_STEPS(STEP)                                                                    \
    for (kk = 0; kk < kv; kk += VL) STEP(VLOAD, kk);                                       \
    if (kv < len) {                                                                        \
        const __m256i mk = VTAILMASK(len - kv);                                            \
        STEP(VMLOAD_MK, kv);                                                               \
    }

/* The 4 x 2 block of dot products over len elements: s[r + 4 c] = a_r . w_c (with the roles
 * swapped, also the two rows left over by the 4-row blocks against 4 columns). */
#define DOT_4X2_STEP(LD, at)                                                               \
    do {                                                                                   \
        VT x0 = LD(w0 + (at)), x1 = LD(w1 + (at));                                         \
        VT y = LD(a0 + (at));                                                              \
        FASTNN_KEEP(y);                                                                    \
        c00 = VFMA(x0, y, c00); c10 = VFMA(x1, y, c10);                                    \
        y = LD(a1 + (at));                                                                 \
        FASTNN_KEEP(y);                                                                    \
        c01 = VFMA(x0, y, c01); c11 = VFMA(x1, y, c11);                                    \
        y = LD(a2 + (at));                                                                 \
        FASTNN_KEEP(y);                                                                    \
        c02 = VFMA(x0, y, c02); c12 = VFMA(x1, y, c12);                                    \
        y = LD(a3 + (at));                                                                 \
        FASTNN_KEEP(y);                                                                    \
        c03 = VFMA(x0, y, c03); c13 = VFMA(x1, y, c13);                                    \
    } while (0)
FASTNN_AVX2 static inline void CAT(dot_4x2, SFX)(const T *a0, const T *a1, const T *a2,
                                                const T *a3, const T *w0, const T *w1,
                                                Py_ssize_t len, T *s)
{
    Py_ssize_t kk, kv = len - len % VL;
    VT c00 = VZERO(), c01 = VZERO(), c02 = VZERO(), c03 = VZERO();
    VT c10 = VZERO(), c11 = VZERO(), c12 = VZERO(), c13 = VZERO();
    DOT_STEPS(DOT_4X2_STEP)
    s[0] = HSUM(c00); s[1] = HSUM(c01); s[2] = HSUM(c02); s[3] = HSUM(c03);
    s[4] = HSUM(c10); s[5] = HSUM(c11); s[6] = HSUM(c12); s[7] = HSUM(c13);
}
#undef DOT_4X2_STEP

/* The 4 x 3 block: s[r + 4 c] = a_r . w_c (12 accumulators: 7 loads feed 12 FMAs). */
#define DOT_4X3_STEP(LD, at)                                                               \
    do {                                                                                   \
        VT x0 = LD(w0 + (at)), x1 = LD(w1 + (at)), x2 = LD(w2 + (at));                     \
        VT y = LD(a0 + (at));                                                              \
        c00 = VFMA(x0, y, c00); c10 = VFMA(x1, y, c10); c20 = VFMA(x2, y, c20);            \
        y = LD(a1 + (at));                                                                 \
        c01 = VFMA(x0, y, c01); c11 = VFMA(x1, y, c11); c21 = VFMA(x2, y, c21);            \
        y = LD(a2 + (at));                                                                 \
        c02 = VFMA(x0, y, c02); c12 = VFMA(x1, y, c12); c22 = VFMA(x2, y, c22);            \
        y = LD(a3 + (at));                                                                 \
        c03 = VFMA(x0, y, c03); c13 = VFMA(x1, y, c13); c23 = VFMA(x2, y, c23);            \
    } while (0)
FASTNN_AVX2 static inline void CAT(dot_4x3, SFX)(const T *a0, const T *a1, const T *a2,
                                                const T *a3, const T *w0, const T *w1,
                                                const T *w2, Py_ssize_t len, T *s)
{
    Py_ssize_t kk, kv = len - len % VL;
    VT c00 = VZERO(), c01 = VZERO(), c02 = VZERO(), c03 = VZERO();
    VT c10 = VZERO(), c11 = VZERO(), c12 = VZERO(), c13 = VZERO();
    VT c20 = VZERO(), c21 = VZERO(), c22 = VZERO(), c23 = VZERO();
    DOT_STEPS(DOT_4X3_STEP)
    s[0] = HSUM(c00); s[1] = HSUM(c01); s[2] = HSUM(c02); s[3] = HSUM(c03);
    s[4] = HSUM(c10); s[5] = HSUM(c11); s[6] = HSUM(c12); s[7] = HSUM(c13);
    s[8] = HSUM(c20); s[9] = HSUM(c21); s[10] = HSUM(c22); s[11] = HSUM(c23);
}
#undef DOT_4X3_STEP

/* The 6 x 2 block: s[r + 6 c] = a_r . w_c (12 accumulators: 8 loads feed 12 FMAs, and only 2
 * of them stream W). Each a_r is loaded once into a register: GCC otherwise folds the load
 * into both FMAs (14 loads per 12 FMAs). */
#define DOT_6X2_STEP(LD, at)                                                               \
    do {                                                                                   \
        VT x0 = LD(w0 + (at)), x1 = LD(w1 + (at));                                         \
        VT y = LD(a[0] + (at));                                                            \
        FASTNN_KEEP(y);                                                                    \
        c00 = VFMA(x0, y, c00); c10 = VFMA(x1, y, c10);                                    \
        y = LD(a[1] + (at));                                                               \
        FASTNN_KEEP(y);                                                                    \
        c01 = VFMA(x0, y, c01); c11 = VFMA(x1, y, c11);                                    \
        y = LD(a[2] + (at));                                                               \
        FASTNN_KEEP(y);                                                                    \
        c02 = VFMA(x0, y, c02); c12 = VFMA(x1, y, c12);                                    \
        y = LD(a[3] + (at));                                                               \
        FASTNN_KEEP(y);                                                                    \
        c03 = VFMA(x0, y, c03); c13 = VFMA(x1, y, c13);                                    \
        y = LD(a[4] + (at));                                                               \
        FASTNN_KEEP(y);                                                                    \
        c04 = VFMA(x0, y, c04); c14 = VFMA(x1, y, c14);                                    \
        y = LD(a[5] + (at));                                                               \
        FASTNN_KEEP(y);                                                                    \
        c05 = VFMA(x0, y, c05); c15 = VFMA(x1, y, c15);                                    \
    } while (0)
FASTNN_AVX2 static inline void CAT(dot_6x2, SFX)(const T *const *a, const T *w0, const T *w1,
                                                Py_ssize_t len, T *s)
{
    Py_ssize_t kk, kv = len - len % VL;
    VT c00 = VZERO(), c01 = VZERO(), c02 = VZERO(), c03 = VZERO(), c04 = VZERO(), c05 = VZERO();
    VT c10 = VZERO(), c11 = VZERO(), c12 = VZERO(), c13 = VZERO(), c14 = VZERO(), c15 = VZERO();
    DOT_STEPS(DOT_6X2_STEP)
    s[0] = HSUM(c00); s[1] = HSUM(c01); s[2] = HSUM(c02);
    s[3] = HSUM(c03); s[4] = HSUM(c04); s[5] = HSUM(c05);
    s[6] = HSUM(c10); s[7] = HSUM(c11); s[8] = HSUM(c12);
    s[9] = HSUM(c13); s[10] = HSUM(c14); s[11] = HSUM(c15);
}
#undef DOT_6X2_STEP

/* One vector against four: s[c] = a . w_c (4 accumulators). Also gives four rows against
 * one column (the products are the same, a . w = w . a). */
#define DOT_1X4_STEP(LD, at)                                                               \
    do {                                                                                   \
        VT y = LD(a + (at));                                                               \
        c0 = VFMA(LD(w0 + (at)), y, c0); c1 = VFMA(LD(w1 + (at)), y, c1);                  \
        c2 = VFMA(LD(w2 + (at)), y, c2); c3 = VFMA(LD(w3 + (at)), y, c3);                  \
    } while (0)
FASTNN_AVX2 static inline void CAT(dot_1x4, SFX)(const T *a, const T *w0, const T *w1,
                                                const T *w2, const T *w3, Py_ssize_t len, T *s)
{
    Py_ssize_t kk, kv = len - len % VL;
    VT c0 = VZERO(), c1 = VZERO(), c2 = VZERO(), c3 = VZERO();
    DOT_STEPS(DOT_1X4_STEP)
    s[0] = HSUM(c0); s[1] = HSUM(c1); s[2] = HSUM(c2); s[3] = HSUM(c3);
}
#undef DOT_1X4_STEP

/* One dot product (the leftovers of the blocks above). */
#define DOT_1X1_STEP(LD, at) c0 = VFMA(LD(w + (at)), LD(a + (at)), c0)
FASTNN_AVX2 static inline T CAT(dot_1x1, SFX)(const T *a, const T *w, Py_ssize_t len)
{
    Py_ssize_t kk, kv = len - len % VL;
    VT c0 = VZERO();
    DOT_STEPS(DOT_1X1_STEP)
    return HSUM(c0);
}
#undef DOT_1X1_STEP
#undef DOT_STEPS
#undef VMLOAD_MK

/* Z[i, j] += sum_{t0 <= c < t0 + tw} A[i, c] W[j, c] for one k-tile (A: m rows at Ar[i],
 * W: n rows of stride ldw, Z: row stride ldz). Every entry is one dot product (vector FMAs
 * in order over the tile, the last partial vector read under a mask, then a horizontal
 * sum), whichever block computes it: the rows in 4-row blocks against 3 (then 2, then 1)
 * columns at a time, two leftover rows against 4 columns at a time, a last odd row
 * against 4. */
FASTNN_AVX2 static void CAT(small_nt_tile, SFX)(const T *const *Ar, const T *W, Py_ssize_t ldw,
                                               T *Z, Py_ssize_t m, Py_ssize_t n, Py_ssize_t ldz,
                                               Py_ssize_t t0, Py_ssize_t tw)
{
    Py_ssize_t i, j, r, c;
    Py_ssize_t m4 = m - m % 4, n4 = n - n % 4, n3 = n - n % 3;
    const Py_ssize_t k = ldw;
    T sb[12];
    /* 4-row blocks */
    for (j = 0; j < n3; j += 3) {
        const T *w0 = W + j * k + t0;
        for (i = 0; i < m4; i += 4) {
            CAT(dot_4x3, SFX)(Ar[i] + t0, Ar[i + 1] + t0, Ar[i + 2] + t0, Ar[i + 3] + t0,
                              w0, w0 + k, w0 + 2 * k, tw, sb);
            for (c = 0; c < 3; c++)
                for (r = 0; r < 4; r++) Z[(i + r) * ldz + j + c] += sb[r + 4 * c];
        }
    }
    if (n - n3 == 2) {
        const T *w0 = W + n3 * k + t0;
        for (i = 0; i < m4; i += 4) {
            CAT(dot_4x2, SFX)(Ar[i] + t0, Ar[i + 1] + t0, Ar[i + 2] + t0, Ar[i + 3] + t0,
                              w0, w0 + k, tw, sb);
            for (c = 0; c < 2; c++)
                for (r = 0; r < 4; r++) Z[(i + r) * ldz + n3 + c] += sb[r + 4 * c];
        }
    } else if (n - n3 == 1) {
        const T *w0 = W + n3 * k + t0;
        for (i = 0; i < m4; i += 4) {
            CAT(dot_1x4, SFX)(w0, Ar[i] + t0, Ar[i + 1] + t0, Ar[i + 2] + t0, Ar[i + 3] + t0,
                              tw, sb);
            for (r = 0; r < 4; r++) Z[(i + r) * ldz + n3] += sb[r];
        }
    }
    /* the rows left over: two, then one */
    for (i = m4; i + 2 <= m; i += 2) {
        for (j = 0; j < n4; j += 4) {
            const T *w0 = W + j * k + t0;
            /* four rows of W against the two rows: the same products (an FMA's factors
             * commute), so sb[c + 4 r] = a_r . w_c */
            CAT(dot_4x2, SFX)(w0, w0 + k, w0 + 2 * k, w0 + 3 * k, Ar[i] + t0, Ar[i + 1] + t0,
                              tw, sb);
            for (c = 0; c < 4; c++)
                for (r = 0; r < 2; r++) Z[(i + r) * ldz + j + c] += sb[c + 4 * r];
        }
        for (; j < n; j++)
            for (r = 0; r < 2; r++)
                Z[(i + r) * ldz + j] += CAT(dot_1x1, SFX)(Ar[i + r] + t0, W + j * k + t0, tw);
    }
    for (; i < m; i++) {
        for (j = 0; j < n4; j += 4) {
            const T *w0 = W + j * k + t0;
            CAT(dot_1x4, SFX)(Ar[i] + t0, w0, w0 + k, w0 + 2 * k, w0 + 3 * k, tw, sb);
            for (c = 0; c < 4; c++) Z[i * ldz + j + c] += sb[c];
        }
        for (; j < n; j++) Z[i * ldz + j] += CAT(dot_1x1, SFX)(Ar[i] + t0, W + j * k + t0, tw);
    }
}

/* Z[i, j] = sum_k A[i, k] W[j, k]   (Z = A W^T; A: m x k, W: n x k, Z: m x n), accumulated
 * tile by tile of FASTNN_KTILE columns (small_nt_tile). Row i of A is Ar[i] (rows may lie
 * anywhere: the batch is never gathered). */
FASTNN_AVX2 static void CAT(small_nt_tiled_acc, SFX)(const T *const *Ar, const T *W, T *Z,
                                                     Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                                                     Py_ssize_t ldz)
{
    Py_ssize_t i, j, t0;
    for (i = 0; i < m; i++)
        for (j = 0; j < n; j++) Z[i * ldz + j] = 0;
    for (t0 = 0; t0 < k; t0 += FASTNN_KTILE)
        CAT(small_nt_tile, SFX)(Ar, W, k, Z, m, n, ldz, t0,
                                k - t0 < FASTNN_KTILE ? k - t0 : FASTNN_KTILE);
}

/* small_nt_tiled_acc through a local buffer, FASTNN_NT_COLS columns at a time: Z is
 * written once, so threads computing neighbouring column blocks of the same rows
 * do not pass Z's cache lines back and forth for every k-tile. */
#define FASTNN_NT_COLS 64
static void CAT(small_nt_tiled, SFX)(const T *const *Ar, const T *W, T *Z,
                                     Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, Py_ssize_t ldz)
{
    T acc[FASTNN_TILED_MAX_ROWS * FASTNN_NT_COLS];
    Py_ssize_t c, i, j, nc;
    if (m > FASTNN_TILED_MAX_ROWS) {
        CAT(small_nt_tiled_acc, SFX)(Ar, W, Z, m, n, k, ldz);
        return;
    }
    for (c = 0; c < n; c += FASTNN_NT_COLS) {
        nc = n - c < FASTNN_NT_COLS ? n - c : FASTNN_NT_COLS;
        CAT(small_nt_tiled_acc, SFX)(Ar, W + c * k, acc, m, nc, k, nc);
        for (i = 0; i < m; i++)
            for (j = 0; j < nc; j++) Z[i * ldz + c + j] = acc[i * nc + j];
    }
}

/* The same product for larger batches: a block of the batch's rows stays in L1 while all
 * of W streams past it (from L2). Blocks of 6 rows (against 2 rows of W at a time) as long
 * as an even number of them leaves a multiple of 4 rows, then blocks of 4 (against 3, 2, 1),
 * then the last m % 4 rows in the k-tiled kernel. 6 x 2 streams W once per 6 rows instead of
 * 4, with 2 loads of W per 12 FMAs instead of 3: 25-30 % faster than 4 x 3 (C harness,
 * m = 64, 128; n = 30-100; float32, k = 784).
 *
 * Where 4 rows of A outgrow half of L1 (float64 rows of 784: 25 KiB), k is cut into
 * FASTNN_NT_ROWS_TILES(k) equal tiles (whole vectors; the last may be shorter) and the blocks
 * of 4 rows go through W tile by tile (all the blocks through tile 0, then through tile 1,
 * ...; or, with fastnn_nt_tiles_outer off, each block through every tile in turn), so that
 * a block's tile stays in L1 beside W's streams: Z[i, j] = hsum(dot over tile 0) +
 * hsum(dot over tile 1) + ..., in that order.
 * float64, k = 784, 2 tiles: 15-25 % faster (C harness, m = 200, n = 50, rows drawn from a
 * 60 000-row array); S1 (scikit-learn's defaults) 3.6 % less time per epoch in one process.
 * 6-row blocks over the tiles were 3-5 % slower than 4; prefetching the next block's rows
 * into L2 only (or not at all) was slower than into L1. Every entry of the full blocks is
 * the same sum of the same dot products whichever block computes it, so the results depend
 * only on m % 4. */
#define FASTNN_NT_ROWS_TILES(k) ((4 * (k) * (Py_ssize_t)sizeof(T) + 16383) / 16384)
FASTNN_AVX2 static void CAT(small_nt_rows, SFX)(const T *const *Ar, const T *W, T *Z,
                                               Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                                               Py_ssize_t ldz)
{
    Py_ssize_t i0, j, r, q, t0, tw, m4 = m - m % 4;
    /* the tiles of k: nt of kt columns (a whole number of vectors), the last one shorter */
    const Py_ssize_t nt = fastnn_nt_rows_tiling ? FASTNN_NT_ROWS_TILES(k) : 1;
    const Py_ssize_t kt = nt == 1 ? k : ((k + nt - 1) / nt + VL - 1) / VL * VL;
    /* 6-row blocks only while 6 rows of A fit in a 32 KiB L1 beside W's two streams */
    Py_ssize_t m6 = nt == 1 && 6 * k * (Py_ssize_t)sizeof(T) <= 24 * 1024
                        ? 6 * ((m4 / 6) & ~(Py_ssize_t)1) : 0;
    Py_ssize_t pf_lines = (k * (Py_ssize_t)sizeof(T) + 63) / 64, pf_rows, pf_at, pf_step;
/* The next block's rows (read where they lie, often still in DRAM) are prefetched while this
 * block computes, a slice of their cache lines (pf_at up to pf_lines) before each group of
 * columns: 10-30 % faster on rows drawn from a 50 000-row array (n = 30-100). */
#define NT_ROWS_PREFETCH()                                                                 \
    do {                                                                                   \
        Py_ssize_t pr, pl;                                                                 \
        for (pr = 0; pr < pf_rows; pr++)                                                   \
            for (pl = pf_at; pl < pf_at + pf_step && pl < pf_lines; pl++)                  \
                __builtin_prefetch((const char *)Ar[i0 + r + pr] + 64 * pl, 0, 3);          \
        pf_at += pf_step;                                                                  \
    } while (0)
/* entry (row q of the block, column c): the tile's sum stored (first tile) or added */
#define NT_ROWS_PUT(q, c, v)                                                               \
    do {                                                                                   \
        if (t0 == 0) Z[(i0 + (q)) * ldz + (c)] = (v);                                      \
        else Z[(i0 + (q)) * ldz + (c)] += (v);                                             \
    } while (0)
/* the 4-row block from i0 over the tile of tw columns from t0: 3 columns at a time, then 2,
 * then 1 */
#define NT_ROWS_TILE4()                                                                    \
    do {                                                                                   \
        const T *a0 = Ar[i0] + t0, *a1 = Ar[i0 + 1] + t0, *a2 = Ar[i0 + 2] + t0,          \
                *a3 = Ar[i0 + 3] + t0;                                                     \
        const T *wt = W + t0;                                                              \
        for (j = 0; j + 3 <= n; j += 3) {                                                  \
            T sb[12];                                                                      \
            Py_ssize_t c;                                                                  \
            NT_ROWS_PREFETCH();                                                            \
            CAT(dot_4x3, SFX)(a0, a1, a2, a3, wt + j * k, wt + (j + 1) * k, wt + (j + 2) * k, \
                              tw, sb);                                                     \
            for (c = 0; c < 3; c++)                                                        \
                for (q = 0; q < 4; q++) NT_ROWS_PUT(q, j + c, sb[q + 4 * c]);              \
        }                                                                                  \
        for (; j + 2 <= n; j += 2) {                                                       \
            T sb[8];                                                                       \
            CAT(dot_4x2, SFX)(a0, a1, a2, a3, wt + j * k, wt + (j + 1) * k, tw, sb);       \
            for (q = 0; q < 4; q++) {                                                      \
                NT_ROWS_PUT(q, j, sb[q]);                                                  \
                NT_ROWS_PUT(q, j + 1, sb[4 + q]);                                          \
            }                                                                              \
        }                                                                                  \
        for (; j < n; j++) {                                                               \
            T sb[4];                                                                       \
            CAT(dot_1x4, SFX)(wt + j * k, a0, a1, a2, a3, tw, sb);                         \
            for (q = 0; q < 4; q++) NT_ROWS_PUT(q, j, sb[q]);                              \
        }                                                                                  \
    } while (0)
    if (nt > 1 && fastnn_nt_tiles_outer) {
        /* Tile by tile, all the 4-row blocks through each: only the tile's share of W streams
         * from L2 (S1's shape: 157 KB of W per thread instead of 313 KB), and each block's
         * next block is prefetched within the tile. C harness (m = 200, n = 50, float64,
         * k = 784, rows drawn from a 60 000-row array): 420 us against 520 us with the tiles
         * inside the blocks. The same sums in the same order for every entry. */
        r = 4;
        for (t0 = 0; t0 < k; t0 += tw) {
            Py_ssize_t tl = t0 * (Py_ssize_t)sizeof(T) / 64;
            tw = k - t0 < kt ? k - t0 : kt;
            pf_lines = ((t0 + tw) * (Py_ssize_t)sizeof(T) + 63) / 64;
            for (i0 = 0; i0 < m4; i0 += 4) {
                pf_rows = fastnn_nt_prefetch_next ? (m4 - i0 - 4 < 4 ? m4 - i0 - 4 : 4) : 0;
                pf_at = tl;
                pf_step = (pf_lines - tl + (n + 2) / 3 - 1) / ((n + 2) / 3);
                NT_ROWS_TILE4();
            }
        }
        /* last rows: the tiled kernel handles any shape */
        if (m4 < m) CAT(small_nt_tiled, SFX)(Ar + m4, W, Z + m4 * ldz, m - m4, n, k, ldz);
        return;
    }
    for (i0 = 0; i0 < m; i0 += r) {
        r = i0 < m6 ? 6 : 4;
        if (i0 >= m4) {
            /* last rows: the tiled kernel handles any shape */
            CAT(small_nt_tiled, SFX)(Ar + i0, W, Z + i0 * ldz, m - i0, n, k, ldz);
            break;
        }
        Py_ssize_t nxt = i0 + r < m6 ? 6 : 4;
        Py_ssize_t groups = nt * (r == 6 ? (n + 1) / 2 : (n + 2) / 3);
        pf_rows = fastnn_nt_prefetch_next ? (m - i0 - r < nxt ? m - i0 - r : nxt) : 0;
        pf_at = 0;
        pf_step = (pf_lines + groups - 1) / groups;
        if (r == 6) {
            /* (a single tile) */
            const T *const *a = Ar + i0;
            t0 = 0;
            for (j = 0; j + 2 <= n; j += 2) {
                T sb[12];
                NT_ROWS_PREFETCH();
                CAT(dot_6x2, SFX)(a, W + j * k, W + (j + 1) * k, k, sb);
                for (q = 0; q < 6; q++) {
                    NT_ROWS_PUT(q, j, sb[q]);
                    NT_ROWS_PUT(q, j + 1, sb[6 + q]);
                }
            }
            if (j < n) {
                T sb[4];
                CAT(dot_1x4, SFX)(W + j * k, a[0], a[1], a[2], a[3], k, sb);
                for (q = 0; q < 4; q++) NT_ROWS_PUT(q, j, sb[q]);
                for (q = 4; q < 6; q++) NT_ROWS_PUT(q, j, CAT(dot_1x1, SFX)(a[q], W + j * k, k));
            }
            continue;
        }
        for (t0 = 0; t0 < k; t0 += tw) {
            tw = k - t0 < kt ? k - t0 : kt;
            NT_ROWS_TILE4();
        }
    }
#undef NT_ROWS_TILE4
#undef NT_ROWS_PREFETCH
#undef NT_ROWS_PUT
}
#undef FASTNN_NT_ROWS_TILES

/* Z = A W^T (row stride of Z: ldz): k-tiled (W read once) for the smallest
 * batches, rows-outer above. */
static void CAT(small_nt, SFX)(const T *const *Ar, const T *W, T *Z,
                               Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, Py_ssize_t ldz)
{
    if (m <= CAT(fastnn_nt_tiled_rows, SFX))
        CAT(small_nt_tiled, SFX)(Ar, W, Z, m, n, k, ldz);
    else
        CAT(small_nt_rows, SFX)(Ar, W, Z, m, n, k, ldz);
}

/* Z = D W (D: m x n, row stride ldd; W: n x k, row stride ldw; Z: m x k, row stride ldz),
 * for the small products that propagate a delta back through a narrow layer, where a BLAS
 * call costs more than the product: blocks of 2 rows and 4 vectors of columns are formed in
 * 8 registers, Z[i, c] = sum_j D[i, j] W[j, c] with j in order (one FMA per term); vectors
 * past the last column are read and written under masks (so k needs no multiple of VL). */
FASTNN_AVX2 static void CAT(small_nn, SFX)(const T *D, Py_ssize_t ldd, const T *W, Py_ssize_t ldw,
                                          T *Z, Py_ssize_t ldz, Py_ssize_t m, Py_ssize_t n,
                                          Py_ssize_t k)
{
    Py_ssize_t i, j, c;
    for (c = 0; c < k; c += 4 * VL) {
        const __m256i m0 = VTAILMASK(k - c), m1 = VTAILMASK(k - c - VL),
                      m2 = VTAILMASK(k - c - 2 * VL), m3 = VTAILMASK(k - c - 3 * VL);
        for (i = 0; i + 2 <= m; i += 2) {
            const T *d0 = D + i * ldd, *d1 = d0 + ldd;
            T *z0 = Z + i * ldz + c, *z1 = z0 + ldz;
            VT a0 = VZERO(), a1 = VZERO(), a2 = VZERO(), a3 = VZERO();
            VT b0 = VZERO(), b1 = VZERO(), b2 = VZERO(), b3 = VZERO();
            for (j = 0; j < n; j++) {
                const T *w = W + j * ldw + c;
                VT x0 = VMLOAD(w, m0), x1 = VMLOAD(w + VL, m1);
                VT x2 = VMLOAD(w + 2 * VL, m2), x3 = VMLOAD(w + 3 * VL, m3);
                VT e = VSET1(d0[j]);
                a0 = VFMA(e, x0, a0); a1 = VFMA(e, x1, a1); a2 = VFMA(e, x2, a2); a3 = VFMA(e, x3, a3);
                e = VSET1(d1[j]);
                b0 = VFMA(e, x0, b0); b1 = VFMA(e, x1, b1); b2 = VFMA(e, x2, b2); b3 = VFMA(e, x3, b3);
            }
            VMSTORE(z0, m0, a0); VMSTORE(z0 + VL, m1, a1);
            VMSTORE(z0 + 2 * VL, m2, a2); VMSTORE(z0 + 3 * VL, m3, a3);
            VMSTORE(z1, m0, b0); VMSTORE(z1 + VL, m1, b1);
            VMSTORE(z1 + 2 * VL, m2, b2); VMSTORE(z1 + 3 * VL, m3, b3);
        }
        if (i < m) {
            const T *d0 = D + i * ldd;
            T *z0 = Z + i * ldz + c;
            VT a0 = VZERO(), a1 = VZERO(), a2 = VZERO(), a3 = VZERO();
            for (j = 0; j < n; j++) {
                const T *w = W + j * ldw + c;
                VT e = VSET1(d0[j]);
                a0 = VFMA(e, VMLOAD(w, m0), a0); a1 = VFMA(e, VMLOAD(w + VL, m1), a1);
                a2 = VFMA(e, VMLOAD(w + 2 * VL, m2), a2); a3 = VFMA(e, VMLOAD(w + 3 * VL, m3), a3);
            }
            VMSTORE(z0, m0, a0); VMSTORE(z0 + VL, m1, a1);
            VMSTORE(z0 + 2 * VL, m2, a2); VMSTORE(z0 + 3 * VL, m3, a3);
        }
    }
}

/* The update of one vector of parameters, the same arithmetic as
 * update_segment in _core.pyx (the build sets -ffp-contract=off, so neither
 * is contracted into FMAs and the rounding is identical). */
#define UPDATE_VEC(pp, gv, vv, chk)                                             \
    do {                                                                        \
        VT p_ = VLOAD(pp), w_;                                                  \
        if (mode == 0) {                                                        \
            w_ = VSUB(VMUL(cc, p_), VMUL(ee, gv));                              \
        } else {                                                                \
            VT gg_ = VADD(gv, VMUL(ll, p_));                                    \
            VT v_ = VSUB(VMUL(mm, VLOAD(vv)), VMUL(ee, gg_));                   \
            VSTORE(vv, v_);                                                     \
            w_ = (mode == 1) ? VADD(p_, v_)                                     \
                             : VADD(p_, VSUB(VMUL(mm, v_), VMUL(ee, gg_)));     \
        }                                                                       \
        VSTORE(pp, w_);                                                         \
        chk = VADD(chk, VSUB(w_, w_));                                          \
        if (sq_on) SQACC(sqa, w_);                                              \
    } while (0)

/* The constants of an Adam step (mode 3), in the element type: c1 = 1 - b1 and
 * c2 = 1 - b2 rounded once, lr_t the bias-corrected step */
typedef struct {
    T b1, b2, c1, c2, eps, lr_t;
} CAT(adam_consts, SFX);

/* UPDATE_VEC for every mode, Adam (mode 3, second moment at ss) included */
#define UPDATE_VEC_ANY(pp, gv, vv, ss, chk)                                     \
    do {                                                                        \
        if (mode == 3) {                                                        \
            VT p_ = VLOAD(pp), w_;                                              \
            VT gg_ = VADD(gv, VMUL(ll, p_));                                    \
            VT v_ = VADD(VMUL(VSET1(ac->b1), VLOAD(vv)), VMUL(VSET1(ac->c1), gg_)); \
            VT s_ = VADD(VMUL(VSET1(ac->b2), VLOAD(ss)),                        \
                         VMUL(VSET1(ac->c2), VMUL(gg_, gg_)));                  \
            VSTORE(vv, v_);                                                     \
            VSTORE(ss, s_);                                                     \
            w_ = VSUB(p_, VDIV(VMUL(VSET1(ac->lr_t), v_),                       \
                               VADD(VSQRT(s_), VSET1(ac->eps))));               \
            VSTORE(pp, w_);                                                     \
            chk = VADD(chk, VSUB(w_, w_));                                      \
            if (sq_on) SQACC(sqa, w_);                                          \
        } else {                                                                \
            UPDATE_VEC(pp, gv, vv, chk);                                        \
        }                                                                       \
    } while (0)

/* W <- update(W, D^T A) for W: n x k (row stride ldw), D: m x n (row stride
 * ldd), A: m x k (row i at Ar[i] + a_off), with velocity (or Adam's first moment) V and
 * Adam's second moment S (same layout as W), without storing the gradient: for four
 * rows of W at a time and one vector of columns, g = sum_i D[i, j] A[i, cols] is formed
 * in registers and applied at once. mode: 0 plain (V, S unused), 1 momentum,
 * 2 Nesterov (S unused), 3 Adam (constants in ac); l2 multiplies W (pass 0 for biases).
 * Returns 1 if a new value is not finite. */
/* pack the strip when at least this many 4-row blocks reuse it, or the batch has at least
 * this many rows (their strips then outgrow L1 when read in place) */
#ifndef TN_PACK_MIN_BLOCKS
#define TN_PACK_MIN_BLOCKS 4
#endif
#ifndef TN_PACK_MIN_ROWS
#define TN_PACK_MIN_ROWS 32
#endif

/* The update phase of a block: its constants and accumulators, folded into memory after */
#define TN_UPDATE_LOCALS                                                                   \
    __asm__ __volatile__("" : "+m"(uconst) : : "memory");                                  \
    VT ee = VSET1(uconst[0]), mm = VSET1(uconst[1]), ll = VSET1(uconst[2]),                \
       cc = VSET1(uconst[3]);                                                              \
    VT chk = VZERO();                                                                      \
    __m256d sqa = _mm256_setzero_pd()
#define TN_UPDATE_FOLD                                                                     \
    do {                                                                                   \
        VSTORE(chk_acc, VADD(VLOAD(chk_acc), chk));                                        \
        if (sq_on) _mm256_storeu_pd(sq_acc, _mm256_add_pd(_mm256_loadu_pd(sq_acc), sqa));   \
    } while (0)

/* The 4 x NV block of the weight gradient g[r][v] = sum_i Dp[i][r] Ap[i][v] (NV vectors of
 * columns, rows r < 4) over the packed operands (both contiguous: every load hits L1), then
 * the update of W's block at p (row stride ldw; velocity at V's, second moment at S's). */
/* The gradient sums of a 4 x NV block over the batch, in named registers (an array of
 * accumulators lets the compiler spill one into memory inside the loop): rows r < 4 of the
 * block, vectors v < NV; A row i's strip at SRC(i, NV), D's four values at dp + 4 i. */
#define TN_SUMS_3_TN_INPLACE(SRC)                                                          \
    VT g00 = VZERO(), g01 = VZERO(), g02 = VZERO(), g10 = VZERO(), g11 = VZERO(), g12 = VZERO(); \
    VT g20 = VZERO(), g21 = VZERO(), g22 = VZERO(), g30 = VZERO(), g31 = VZERO(), g32 = VZERO(); \
    for (i = 0; i < m; i++) {                                                              \
        const T *ai_ = SRC(i, 3), *di_ = dp + 4 * i;                                       \
        VT a0 = VLOAD(ai_), a1 = VLOAD(ai_ + VL), a2 = VLOAD(ai_ + 2 * VL);                \
        VT dd = VSET1(di_[0]);                                                             \
        g00 = VFMA(dd, a0, g00); g01 = VFMA(dd, a1, g01); g02 = VFMA(dd, a2, g02);         \
        dd = VSET1(di_[1]);                                                                \
        g10 = VFMA(dd, a0, g10); g11 = VFMA(dd, a1, g11); g12 = VFMA(dd, a2, g12);         \
        dd = VSET1(di_[2]);                                                                \
        g20 = VFMA(dd, a0, g20); g21 = VFMA(dd, a1, g21); g22 = VFMA(dd, a2, g22);         \
        dd = VSET1(di_[3]);                                                                \
        g30 = VFMA(dd, a0, g30); g31 = VFMA(dd, a1, g31); g32 = VFMA(dd, a2, g32);         \
    }                                                                                      \
    VT g_[4][3] = {{g00, g01, g02}, {g10, g11, g12}, {g20, g21, g22}, {g30, g31, g32}}
#define TN_SUMS_2(SRC)                                                                     \
    VT g00 = VZERO(), g01 = VZERO(), g10 = VZERO(), g11 = VZERO();                         \
    VT g20 = VZERO(), g21 = VZERO(), g30 = VZERO(), g31 = VZERO();                         \
    for (i = 0; i < m; i++) {                                                              \
        const T *ai_ = SRC(i, 2), *di_ = dp + 4 * i;                                       \
        VT a0 = VLOAD(ai_), a1 = VLOAD(ai_ + VL);                                          \
        VT d0 = VSET1(di_[0]), d1 = VSET1(di_[1]), d2 = VSET1(di_[2]), d3 = VSET1(di_[3]); \
        g00 = VFMA(d0, a0, g00); g01 = VFMA(d0, a1, g01);                                  \
        g10 = VFMA(d1, a0, g10); g11 = VFMA(d1, a1, g11);                                  \
        g20 = VFMA(d2, a0, g20); g21 = VFMA(d2, a1, g21);                                  \
        g30 = VFMA(d3, a0, g30); g31 = VFMA(d3, a1, g31);                                  \
    }                                                                                      \
    VT g_[4][2] = {{g00, g01}, {g10, g11}, {g20, g21}, {g30, g31}}
#define TN_SUMS_1(SRC)                                                                     \
    VT g00 = VZERO(), g10 = VZERO(), g20 = VZERO(), g30 = VZERO();                         \
    for (i = 0; i < m; i++) {                                                              \
        const T *di_ = dp + 4 * i;                                                         \
        VT a0 = VLOAD(SRC(i, 1));                                                          \
        g00 = VFMA(VSET1(di_[0]), a0, g00); g10 = VFMA(VSET1(di_[1]), a0, g10);            \
        g20 = VFMA(VSET1(di_[2]), a0, g20); g30 = VFMA(VSET1(di_[3]), a0, g30);            \
    }                                                                                      \
    VT g_[4][1] = {{g00}, {g10}, {g20}, {g30}}

/* The sums of TN_SUMS_3_TN_INPLACE over the packed strip (row i's 3 vectors at Ap + 3 VL i,
 * D's four values at dp + 4 i), its loop written in assembly with the batch's 3 vectors and
 * the broadcast in ymm12-15 and the 12 sums in the other registers: compiled from C, GCC kept
 * only 15 of the 16 registers busy and read one or two of the 3 vectors from memory again for
 * each FMA (10-13 loads per 12 FMAs instead of 7) or kept a sum in memory. The same FMAs in
 * the same order: g[r][v] = d_r * a_v + g[r][v]. */
#define TN_SUMS_3_TN_PACKED(SRC)                                                           \
    VT g00 = VZERO(), g01 = VZERO(), g02 = VZERO(), g10 = VZERO(), g11 = VZERO(), g12 = VZERO(); \
    VT g20 = VZERO(), g21 = VZERO(), g22 = VZERO(), g30 = VZERO(), g31 = VZERO(), g32 = VZERO(); \
    if (m > 0) {                                                                           \
        const T *pa_ = Ap, *pd_ = dp;                                                      \
        Py_ssize_t n_ = m;                                                                 \
        __asm__("1:\n\t"                                                                    \
                "vmovu" ASM_V " (%[pa]), %%ymm13\n\t"                                      \
                "vmovu" ASM_V " 32(%[pa]), %%ymm14\n\t"                                    \
                "vmovu" ASM_V " 64(%[pa]), %%ymm15\n\t"                                    \
                ASM_BCAST " (%[pd]), %%ymm12\n\t"                                           \
                "vfmadd231" ASM_V " %%ymm13, %%ymm12, %[g00]\n\t"                           \
                "vfmadd231" ASM_V " %%ymm14, %%ymm12, %[g01]\n\t"                           \
                "vfmadd231" ASM_V " %%ymm15, %%ymm12, %[g02]\n\t"                           \
                ASM_BCAST " " ASM_T "(%[pd]), %%ymm12\n\t"                                  \
                "vfmadd231" ASM_V " %%ymm13, %%ymm12, %[g10]\n\t"                           \
                "vfmadd231" ASM_V " %%ymm14, %%ymm12, %[g11]\n\t"                           \
                "vfmadd231" ASM_V " %%ymm15, %%ymm12, %[g12]\n\t"                           \
                ASM_BCAST " 2*" ASM_T "(%[pd]), %%ymm12\n\t"                                \
                "vfmadd231" ASM_V " %%ymm13, %%ymm12, %[g20]\n\t"                           \
                "vfmadd231" ASM_V " %%ymm14, %%ymm12, %[g21]\n\t"                           \
                "vfmadd231" ASM_V " %%ymm15, %%ymm12, %[g22]\n\t"                           \
                ASM_BCAST " 3*" ASM_T "(%[pd]), %%ymm12\n\t"                                \
                "vfmadd231" ASM_V " %%ymm13, %%ymm12, %[g30]\n\t"                           \
                "vfmadd231" ASM_V " %%ymm14, %%ymm12, %[g31]\n\t"                           \
                "vfmadd231" ASM_V " %%ymm15, %%ymm12, %[g32]\n\t"                           \
                "add $96, %[pa]\n\t"                                                        \
                "add $4*" ASM_T ", %[pd]\n\t"                                               \
                "dec %[n]\n\t"                                                              \
                "jnz 1b"                                                                   \
                : [g00] "+x"(g00), [g01] "+x"(g01), [g02] "+x"(g02), [g10] "+x"(g10),      \
                  [g11] "+x"(g11), [g12] "+x"(g12), [g20] "+x"(g20), [g21] "+x"(g21),      \
                  [g22] "+x"(g22), [g30] "+x"(g30), [g31] "+x"(g31), [g32] "+x"(g32),      \
                  [pa] "+r"(pa_), [pd] "+r"(pd_), [n] "+r"(n_)                             \
                : /* reads the strip and the panel: the clobber below covers them */       \
                : "xmm12", "xmm13", "xmm14", "xmm15", "cc", "memory");                    \
    }                                                                                      \
    VT g_[4][3] = {{g00, g01, g02}, {g10, g11, g12}, {g20, g21, g22}, {g30, g31, g32}}

/* the 4 x 3 sums: over the packed strip in assembly, over rows in place in C */
#define TN_SUMS_3(SRC) CAT(TN_SUMS_3_, SRC)(SRC)

/* The 4 x NV block of the weight gradient g[r][v] = sum_i D[i][j + r] A[i][kk + v VL] over
 * the batch, then the update of W's block (row stride ldw; velocity at V's, second moment
 * at S's), its constants and accumulators local to the update */
#define TN_BLOCK(NV, SRC)                                                                  \
    do {                                                                                   \
        int rx_, vx_;                                                                      \
        fastnn_pf_slice(pf, &pf_at, pf_step);                                              \
        TN_SUMS_##NV(SRC);                                                                 \
        {                                                                                  \
            TN_UPDATE_LOCALS;                                                              \
            for (rx_ = 0; rx_ < 4; rx_++)                                                  \
                for (vx_ = 0; vx_ < NV; vx_++)                                             \
                    UPDATE_VEC_ANY(PV(j + rx_, kk + vx_ * VL), g_[rx_][vx_],                \
                                   VV(j + rx_, kk + vx_ * VL), SV(j + rx_, kk + vx_ * VL), chk); \
            TN_UPDATE_FOLD;                                                                \
        }                                                                                  \
    } while (0)

/* the update of row j of W's NV vectors from kk on, their gradient sums in g_[] */
#define TN_ROW_UPDATE(NV)                                                                  \
    do {                                                                                   \
        TN_UPDATE_LOCALS;                                                                  \
        for (vx_ = 0; vx_ < NV; vx_++)                                                     \
            UPDATE_VEC_ANY(PV(j, kk + vx_ * VL), g_[vx_], VV(j, kk + vx_ * VL),             \
                           SV(j, kk + vx_ * VL), chk);                                     \
        TN_UPDATE_FOLD;                                                                    \
    } while (0)

/* one row of W (j), NV vectors: g[v] = sum_i D[i][j] Ap[i][v], D's column packed at dp */
#define TN_ROW(NV, SRC)                                                                    \
    do {                                                                                   \
        VT g_[NV];                                                                         \
        int vx_;                                                                            \
        fastnn_pf_slice(pf, &pf_at, pf_step);                                              \
        for (vx_ = 0; vx_ < NV; vx_++) g_[vx_] = VZERO();                                      \
        for (i = 0; i < m; i++) {                                                          \
            VT dd_ = VSET1(dp[i]);                                                         \
            for (vx_ = 0; vx_ < NV; vx_++) g_[vx_] = VFMA(dd_, VLOAD(SRC(i, NV) + vx_ * VL), g_[vx_]); \
        }                                                                                  \
        TN_ROW_UPDATE(NV);                                                                 \
    } while (0)

/* the batch's strip of NV vectors of columns from kk on, packed row after row into Ap */
#define TN_PACK(NV)                                                                        \
    do {                                                                                   \
        int vx_;                                                                            \
        for (i = 0; i < m; i++) {                                                          \
            const T *srcx_ = Ar[i] + a_off + kk;                                            \
            if (tn_pf_strip && kk + 3 * NV * VL <= te) {                                   \
                /* the strip after next: each row is a stream of its own, too many for the \
                 * hardware prefetcher */                                                  \
                __builtin_prefetch(srcx_ + 2 * NV * VL, 0, 3);                             \
                __builtin_prefetch(srcx_ + 3 * NV * VL - 1, 0, 3);                         \
            }                                                                              \
            for (vx_ = 0; vx_ < NV; vx_++) VSTORE(Ap + i * NV * VL + vx_ * VL, VLOAD(srcx_ + vx_ * VL)); \
        }                                                                                  \
    } while (0)

/* where row i of the strip is read: packed, or in place */
#define TN_PACKED(i, NV) (Ap + (i) * NV * VL)
#define TN_INPLACE(i, NV) (Ar[i] + a_off + kk)

/* The strip loop for NV vectors up to column te: the strip packed, then every 4-row block
 * of W and the rows left over */
#define TN_STRIPS(NV)                                                                      \
    for (; kk + NV * VL <= te; kk += NV * VL) {                                            \
        const T *dp;                                                                       \
        TN_PACK(NV);                                                                       \
        for (j = 0, dp = Dp; j < n4; j += 4, dp += 4 * m) TN_BLOCK(NV, TN_PACKED);         \
        for (; j < n; j++, dp += m) TN_ROW(NV, TN_PACKED);                                 \
    }

/* The sparse variant (ReLU layers: about half of a hidden delta's entries are exactly zero).
 * For each row j of W the batch rows whose D[i, j] is not zero are listed once (index and
 * value), and each strip of NV vectors of columns (12 while the batch has at most 64 rows,
 * so that the strip stays in L1; then fewer) is packed; row j's NV sums run over its list
 * only, g[v] = d_i * a_v + g[v] in the order of i, then the update. A zero term adds a zero:
 * the sums are the dense ones (but for the sign of a sum that is exactly zero). One row of
 * W at a time, each nonzero feeds NV FMAs from 1 broadcast and NV loads: at half the entries
 * zero, C3's shape ran 1.3x faster than the 4 x 3 blocks over all rows (C harness). Taken
 * when at most sparse_max of D's entries are non-zero. A zero delta times an infinite input
 * is skipped here rather than made NaN, so the packed strips are checked for NaN and inf
 * instead (fit's first epoch finds them in X by the step they make non-finite). */
#define TN_SPARSE_STRIPS(NV)                                                               \
    for (; kk + NV * VL <= te; kk += NV * VL) {                                            \
        TN_PACK(NV);                                                                       \
        /* a NaN or inf of the batch that only zero deltas meet would have made the dense  \
         * sums NaN: it makes the step report a non-finite result here */                 \
        for (i = 0; i < m * NV; i++) {                                                     \
            VT x_ = VLOAD(Ap + i * VL);                                                    \
            xchk = VADD(xchk, VSUB(x_, x_));                                               \
        }                                                                                  \
        for (j = 0; j < n; j++) {                                                          \
            VT g_[NV];                                                                     \
            int vx_;                                                                       \
            Py_ssize_t t_, nz_ = snz[j];                                                   \
            const int *ix_ = sidx + j * m;                                                 \
            const T *sv_ = sval + j * m;                                                   \
            fastnn_pf_slice(pf, &pf_at, pf_step);                                          \
            for (vx_ = 0; vx_ < NV; vx_++) g_[vx_] = VZERO();                              \
            for (t_ = 0; t_ < nz_; t_++) {                                                 \
                const T *a_ = Ap + (Py_ssize_t)ix_[t_] * NV * VL;                          \
                VT dd_ = VSET1(sv_[t_]);                                                   \
                for (vx_ = 0; vx_ < NV; vx_++) g_[vx_] = VFMA(dd_, VLOAD(a_ + vx_ * VL), g_[vx_]); \
            }                                                                              \
            TN_ROW_UPDATE(NV);                                                             \
        }                                                                                  \
    }
/* the sparse variant's batches: a 12-vector strip of up to 64 rows (24 KiB of float32) */
#define TN_SPARSE_MAX_ROWS 128

/* Bytes of scratch small_tn_update needs for m rows and n rows of W (the packed delta, or the
 * sparse variant's lists, and a packed strip of the batch), 64-byte aligned pieces */
static Py_ssize_t CAT(small_tn_scratch_bytes, SFX)(Py_ssize_t m, Py_ssize_t n)
{
    Py_ssize_t strip = (m <= TN_SPARSE_MAX_ROWS ? 12 : 3) * m * VL * (Py_ssize_t)sizeof(T);
    return (m * n * (Py_ssize_t)sizeof(T) + 63) / 64 * 64 + strip + 64
           + (m <= TN_SPARSE_MAX_ROWS ? (m * n * 4 + n * 4 + 127) / 64 * 64 : 0);
}

/* The sparse variant over the whole vectors of columns [0, kv) (TN_SPARSE_STRIPS), out of
 * line: inlined into small_tn_update_body, its code made GCC compile the dense blocks worse
 * (S2, which never takes it, 4 % slower). Returns 0 without touching anything when more
 * than sparse_max of D's entries are non-zero; the column tail stays with the caller. */
FASTNN_AVX2 static inline __attribute__((always_inline)) int CAT(tn_sparse_body, SFX)(
    const T *D, Py_ssize_t ldd, const T *const *Ar, Py_ssize_t a_off, T *W, T *V, T *S,
    Py_ssize_t ldw, Py_ssize_t m, Py_ssize_t n, Py_ssize_t kv, const int mode,
    const T *uconst_in, const CAT(adam_consts, SFX) *ac, void *scratch, T *chk_acc,
    double *sq_acc, const int sq_on, const fastnn_pf_plan *pf, fastnn_pf_at *pf_at_io,
    double sparse_max)
{
    Py_ssize_t i, j, kk = 0, nnz = 0, pf_step;
    fastnn_pf_at pf_at = *pf_at_io;
    T uconst[4] = {uconst_in[0], uconst_in[1], uconst_in[2], uconst_in[3]};
    VT xchk = VZERO();
    T *Ap = (T *)((char *)scratch + (m * n * (Py_ssize_t)sizeof(T) + 63) / 64 * 64);
    T *sval = (T *)scratch;
    int *sidx = (int *)((char *)Ap + 12 * m * VL * (Py_ssize_t)sizeof(T) + 64), *snz = sidx + m * n;
    const Py_ssize_t te = kv;
    for (i = 0; i < m; i++)
        for (j = 0; j < n; j++) nnz += D[i * ldd + j] != 0;
    if (nnz > sparse_max * (double)(m * n)) return 0;
    /* each row of W's list of the batch rows with a non-zero delta, in order; written
     * without a branch (each entry stored, the count moved on only past a non-zero: a
     * branch on 20-50 % non-zeros mispredicted often enough to cost 15 % of the update) */
    for (j = 0; j < n; j++) {
        int c_ = 0;
        for (i = 0; i < m; i++) {
            T d_ = D[i * ldd + j];
            sidx[j * m + c_] = (int)i;
            sval[j * m + c_] = d_;
            c_ += d_ != 0;
        }
        snz[j] = c_;
    }
    {
        Py_ssize_t strips = n * ((kv / VL + 11) / 12 + 3);
        pf_step = pf ? (pf->q1 - pf->q0 + strips - 1) / strips : 0;
    }
#define PV(j, c) (W + (j) * ldw + (c))
#define VV(j, c) (V + (j) * ldw + (c))
#define SV(j, c) (mode == 3 ? S + (j) * ldw + (c) : VV(j, c))
    if (m <= 64) {
        TN_SPARSE_STRIPS(12)
    }
    TN_SPARSE_STRIPS(6)
    TN_SPARSE_STRIPS(3)
    TN_SPARSE_STRIPS(2)
    TN_SPARSE_STRIPS(1)
#undef PV
#undef VV
#undef SV
    VSTORE(chk_acc, VADD(VLOAD(chk_acc), xchk));
    *pf_at_io = pf_at;
    return 1;
}

/* tn_sparse_body compiled once per rule and choice of the sum of squares (as
 * small_tn_update is), out of line */
FASTNN_AVX2 static __attribute__((noinline)) int CAT(tn_sparse_update, SFX)(
    const T *D, Py_ssize_t ldd, const T *const *Ar, Py_ssize_t a_off, T *W, T *V, T *S,
    Py_ssize_t ldw, Py_ssize_t m, Py_ssize_t n, Py_ssize_t kv, int mode,
    const T *uconst_in, const CAT(adam_consts, SFX) *ac, void *scratch, T *chk_acc,
    double *sq_acc, int sq_on, const fastnn_pf_plan *pf, fastnn_pf_at *pf_at_io,
    double sparse_max)
{
#define TN_SPARSE_CALL(MODE, SQ)                                                           \
    return CAT(tn_sparse_body, SFX)(D, ldd, Ar, a_off, W, V, S, ldw, m, n, kv, MODE,       \
                                    uconst_in, ac, scratch, chk_acc, sq_acc, SQ, pf,       \
                                    pf_at_io, sparse_max)
    switch (mode * 2 + (sq_on != 0)) {
    case 0: TN_SPARSE_CALL(0, 0);
    case 1: TN_SPARSE_CALL(0, 1);
    case 2: TN_SPARSE_CALL(1, 0);
    case 3: TN_SPARSE_CALL(1, 1);
    case 4: TN_SPARSE_CALL(2, 0);
    case 5: TN_SPARSE_CALL(2, 1);
    case 6: TN_SPARSE_CALL(3, 0);
    default: TN_SPARSE_CALL(3, 1);
    }
#undef TN_SPARSE_CALL
}

/* W <- update(W, D^T A) for W: n x k (row stride ldw), D: m x n (row stride ldd), A: m x k
 * (row i at Ar[i] + a_off, anywhere in memory), with velocity (or Adam's first moment) V
 * and Adam's second moment S (same layout as W), without storing the gradient. D is
 * packed once into 4-column panels, then for each strip of 3 (then 2, then 1) vectors of
 * columns the batch's strip is packed and every 4-row block of W forms its gradient
 * block in registers (4 x 3 vectors: 7 loads feed 12 FMAs) and applies the update to it
 * at once. scratch: small_tn_scratch_bytes(m, n) bytes, 64-byte aligned. mode: 0 plain
 * (V, S unused), 1 momentum, 2 Nesterov (S unused), 3 Adam (constants in ac); l2
 * multiplies W (pass 0 for biases). Returns 1 if a new value is not finite. */
FASTNN_AVX2 static inline __attribute__((always_inline)) int CAT(small_tn_update_body, SFX)(
    const T *D, Py_ssize_t ldd, const T *const *Ar, Py_ssize_t a_off, T *W, T *V, T *S,
    Py_ssize_t ldw, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const int mode, T eta, T mu, T l2,
    const CAT(adam_consts, SFX) *ac, void *scratch, double *wsq, const int sq_on,
    const fastnn_pf_plan *pf, const fastnn_next_fwd *nf, double sparse_max)
{
    Py_ssize_t i, j, c, kk = 0, kv = k - k % VL, n4 = n - n % 4;
    /* the plan's lines spread evenly over the blocks (about one per 3 vectors of 4 rows) */
    fastnn_pf_at pf_at = fastnn_pf_start(pf);
    Py_ssize_t pf_blocks = (n4 / 4 + n % 4) * ((kv / VL + 2) / 3);
    Py_ssize_t pf_step = pf ? (pf->q1 - pf->q0 + pf_blocks - 1) / (pf_blocks > 0 ? pf_blocks : 1) : 0;
    /* Nothing but a block's accumulators may stay in registers across its loop over the
     * batch (16 ymm registers: 12 sums, 3 loads, 1 broadcast): the update's constants and
     * the finiteness and sum-of-squares accumulators live in memory between blocks. */
    T chk_acc[VL];
    double sq_acc[4];
    /* the update's constants, broadcast inside each block's update after a compiler barrier:
     * a copy of the kernel for one rule (small_tn_update) would otherwise hoist them into
     * registers across the batch loop, which then spills its sums (Nesterov: 12-20 % slower) */
    T uconst[4] = {eta, mu, l2, 1 - eta * l2};
    int bad = 0;
    T *Dp = (T *)scratch, *Ap = (T *)((char *)scratch + (m * n * (Py_ssize_t)sizeof(T) + 63) / 64 * 64);
    /* with the next batch's forward (nf), the tiles of columns go outside (see below) */
    const int pack = !nf && (n >= 4 * TN_PACK_MIN_BLOCKS || m >= TN_PACK_MIN_ROWS);
    int sparse = 0;
    const T *const *nrows = nf ? (const T *const *)nf->rows : NULL;
    T *nz = nf ? (T *)nf->Z : NULL;
    if (nf)
        for (i = 0; i < nf->m; i++)
            for (j = 0; j < n; j++) nz[i * nf->ldz + j] = 0;
    VSTORE(chk_acc, VZERO());
    _mm256_storeu_pd(sq_acc, _mm256_setzero_pd());
    /* W's element (j, c) and its moments: p, v, s (S is read only in mode 3) */
#define PV(j, c) (W + (j) * ldw + (c))
#define VV(j, c) (V + (j) * ldw + (c))
#define SV(j, c) (mode == 3 ? S + (j) * ldw + (c) : VV(j, c))
    if (pack && m <= TN_SPARSE_MAX_ROWS && sparse_max > 0) {
        /* the columns past the last full vector take the dense code: D's panels below */
        sparse = CAT(tn_sparse_update, SFX)(D, ldd, Ar, a_off, W, V, S, ldw, m, n, kv, mode,
                                            uconst, ac, scratch, chk_acc, sq_acc, sq_on, pf,
                                            &pf_at, sparse_max);
        if (sparse) kk = kv;
    }
    /* D's columns: 4-column panels (row i's four values together), then single columns */
    for (j = 0; j < n4 && (!sparse || k > kv); j += 4)
        for (i = 0; i < m; i++)
            for (c = 0; c < 4; c++) Dp[j * m + 4 * i + c] = D[i * ldd + j + c];
    for (; j < n && (!sparse || k > kv); j++)
        for (i = 0; i < m; i++) Dp[j * m + i] = D[i * ldd + j];
    if (sparse) {
    } else if (pack) {
        const Py_ssize_t te = kv;
        TN_STRIPS(3)
        TN_STRIPS(2)
        TN_STRIPS(1)
    } else {
        /* Small batch, few rows of W: tiles of the batch's columns (in L1), and in each the
         * rows of W one 4-row block at a time along the tile (sequential in W and V). With
         * nf, once the tile of W has its new values (in L1 or L2), the next batch's rows take
         * their dot products with it over the tile: the k-tiles and blocks of small_nt's
         * k-tiled kernel, so Z gets the bits a separate forward product would give. */
        Py_ssize_t t0, te;
        const T *dp;
        for (t0 = 0; t0 < kv; t0 = te) {
            te = kv - t0 < FASTNN_KTILE ? kv : t0 + FASTNN_KTILE;
            for (j = 0, dp = Dp; j < n4; j += 4, dp += 4 * m) {
                for (kk = t0; kk + 3 * VL <= te; kk += 3 * VL) TN_BLOCK(3, TN_INPLACE);
                for (; kk + 2 * VL <= te; kk += 2 * VL) TN_BLOCK(2, TN_INPLACE);
                for (; kk < te; kk += VL) TN_BLOCK(1, TN_INPLACE);
            }
            for (; j < n; j++, dp += m) {
                for (kk = t0; kk + 3 * VL <= te; kk += 3 * VL) TN_ROW(3, TN_INPLACE);
                for (; kk + 2 * VL <= te; kk += 2 * VL) TN_ROW(2, TN_INPLACE);
                for (; kk < te; kk += VL) TN_ROW(1, TN_INPLACE);
            }
            if (nf)
                CAT(small_nt_tile, SFX)(nrows, W, ldw, nz, nf->m, n, nf->ldz, t0, te - t0);
        }
    }
    /* whatever the plan still holds */
    if (pf) fastnn_pf_slice(pf, &pf_at, pf->q1);
    if (k > kv) {
        /* The columns past the last full vector (fewer than VL): the batch's strip packed
         * with zeros after them, the sums formed as for whole vectors (so every column of W
         * gets the same arithmetic), and the update applied to a zero-padded copy of the
         * parameters, of which the real columns are stored back. Scalar sums over the
         * batch here took longer than the vectors for a layer of 30 inputs and 128 rows. */
        const Py_ssize_t rem = k - kv;
        const T *dp;
        kk = kv;
        for (i = 0; i < m; i++) {
            const T *src = Ar[i] + a_off + kv;
            for (c = 0; c < VL; c++) Ap[i * VL + c] = c < rem ? src[c] : (T)0;
        }
        for (j = 0, dp = Dp; j < n; ) {
            const int rows = j < n4 ? 4 : 1;
            VT gt_[4];
            int rx_;
            if (rows == 4) {
                TN_SUMS_1(TN_PACKED);
                gt_[0] = g_[0][0]; gt_[1] = g_[1][0]; gt_[2] = g_[2][0]; gt_[3] = g_[3][0];
            } else {
                VT a_ = VZERO();
                for (i = 0; i < m; i++) a_ = VFMA(VSET1(dp[i]), VLOAD(TN_PACKED(i, 1)), a_);
                gt_[0] = a_;
            }
            for (rx_ = 0; rx_ < rows; rx_++) {
                T pt_[VL], vt_[VL], st_[VL];
                T *pr_ = PV(j + rx_, kv), *vr_ = mode ? VV(j + rx_, kv) : NULL;
                T *sr_ = mode == 3 ? S + (j + rx_) * ldw + kv : NULL;
                for (c = 0; c < VL; c++) {
                    pt_[c] = c < rem ? pr_[c] : (T)0;
                    vt_[c] = c < rem && vr_ ? vr_[c] : (T)0;
                    st_[c] = c < rem && sr_ ? sr_[c] : (T)0;
                }
                {
                    TN_UPDATE_LOCALS;
                    UPDATE_VEC_ANY(pt_, gt_[rx_], vt_, st_, chk);
                    TN_UPDATE_FOLD;
                }
                for (c = 0; c < rem; c++) {
                    pr_[c] = pt_[c];
                    if (vr_) vr_[c] = vt_[c];
                    if (sr_) sr_[c] = st_[c];
                }
            }
            dp += rows * m;
            j += rows;
        }
    }
#undef PV
#undef VV
#undef SV
    if (sq_on) *wsq = fastnn_hsum_d(_mm256_loadu_pd(sq_acc));
    {
        T cs = HSUM(VLOAD(chk_acc));
        bad |= !(cs == 0);
    }
    return bad;
}

/* small_tn_update_body compiled once per rule and per choice of the sum of squares: the
 * constants drop the other rules' branches from each copy's update loop. Interleaved epochs
 * against one copy for all rules: [784, 30, 10] float64 batch 10 momentum 18-25 % less
 * time, [784, 100, 10] batch 10 Nesterov 12-14 %, C3's float32 batch 64 Nesterov 3 %. */
FASTNN_AVX2 static int CAT(small_tn_update, SFX)(const T *D, Py_ssize_t ldd, const T *const *Ar,
                                                Py_ssize_t a_off, T *W, T *V, T *S, Py_ssize_t ldw,
                                                Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                                                int mode, T eta, T mu, T l2,
                                                const CAT(adam_consts, SFX) *ac, void *scratch,
                                                double *wsq, const fastnn_pf_plan *pf,
                                                const fastnn_next_fwd *nf, double sparse_max)
{
#define TN_CALL(MODE, SQ)                                                                  \
    return CAT(small_tn_update_body, SFX)(D, ldd, Ar, a_off, W, V, S, ldw, m, n, k, MODE,    \
                                          eta, mu, l2, ac, scratch, wsq, SQ, pf, nf, sparse_max)
    if (wsq != NULL) {
        switch (mode) {
        case 0: TN_CALL(0, 1);
        case 1: TN_CALL(1, 1);
        case 2: TN_CALL(2, 1);
        default: TN_CALL(3, 1);
        }
    }
    switch (mode) {
    case 0: TN_CALL(0, 0);
    case 1: TN_CALL(1, 0);
    case 2: TN_CALL(2, 0);
    default: TN_CALL(3, 0);
    }
#undef TN_CALL
}
#undef TN_BLOCK
#undef TN_ROW
#undef TN_ROW_UPDATE
#undef TN_PACK
#undef TN_STRIPS
#undef TN_SPARSE_STRIPS
#undef TN_SUMS_3
#undef TN_SUMS_2
#undef TN_SUMS_1
#undef TN_SUMS_3_TN_PACKED
#undef TN_SUMS_3_TN_INPLACE
#undef TN_UPDATE_LOCALS
#undef TN_UPDATE_FOLD
#undef TN_PACKED
#undef TN_INPLACE

/* Sums of squares, in double, of W's columns [c0, c1) over its n rows (row stride ldw): one
 * per unit of `unit` columns (at most 2 vectors; the last unit may be cut by c1), each the
 * sum over the rows in order of its two vectors' squares, out[u] for the unit at
 * c0 + u unit. So a unit's sum is the same bits in whichever block of columns it lies. */
FASTNN_AVX2 static void CAT(sumsq_col_units, SFX)(const T *W, Py_ssize_t ldw, Py_ssize_t n,
                                                 Py_ssize_t c0, Py_ssize_t c1, Py_ssize_t unit,
                                                 double *out)
{
    Py_ssize_t c, j;
    for (c = c0; c < c1; c += unit) {
        Py_ssize_t w = c1 - c < unit ? c1 - c : unit;
        __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
        const T *p = W + c;
        if (w == 2 * VL) {
            for (j = 0; j < n; j++, p += ldw) {
                VT x = VLOAD(p), y = VLOAD(p + VL);
                SQACC(a0, x);
                SQACC(a1, y);
            }
        } else {
            const __m256i m0 = VTAILMASK(w < VL ? w : VL), m1 = VTAILMASK(w > VL ? w - VL : 0);
            for (j = 0; j < n; j++, p += ldw) {
                VT x = VMLOAD(p, m0), y = VMLOAD(p + VL, m1);
                SQACC(a0, x);
                SQACC(a1, y);
            }
        }
        out[(c - c0) / unit] = fastnn_hsum_d(_mm256_add_pd(a0, a1));
    }
}

/* The update rule over a segment of n parameters, vectorized, with the same arithmetic
 * as update_segment in _core.pyx (which documents the rules; mode 3 is Adam, with
 * c1 = 1 - b1 and c2 = 1 - b2 rounded once): the results are identical. Returns 1 if a
 * new value is not finite. */
FASTNN_AVX2 static int CAT(update_seg, SFX)(T *p, const T *g, T *v, T *s, Py_ssize_t n, int mode,
                                           T eta, T mu, T l2, T b1, T b2, T c1, T c2, T eps,
                                           T lr_t, double *wsq)
{
    __m256d sqa = _mm256_setzero_pd();
    double sqs = 0;
    const int sq_on = wsq != NULL;
    Py_ssize_t i, nv = n - n % VL;
    VT ee = VSET1(eta), mm = VSET1(mu), ll = VSET1(l2), cc = VSET1(1 - eta * l2);
    VT chk = VZERO();
    T c = 1 - eta * l2, w, vi, si, gg, sc = 0;
    if (mode == 3) {
        VT bb1 = VSET1(b1), bb2 = VSET1(b2), cc1 = VSET1(c1), cc2 = VSET1(c2);
        VT epsv = VSET1(eps), lr = VSET1(lr_t);
        for (i = 0; i < nv; i += VL) {
            VT p_ = VLOAD(p + i);
            VT gg_ = VADD(VLOAD(g + i), VMUL(ll, p_));
            VT v_ = VADD(VMUL(bb1, VLOAD(v + i)), VMUL(cc1, gg_));
            VT s_ = VADD(VMUL(bb2, VLOAD(s + i)), VMUL(cc2, VMUL(gg_, gg_)));
            VSTORE(v + i, v_);
            VSTORE(s + i, s_);
            VT w_ = VSUB(p_, VDIV(VMUL(lr, v_), VADD(VSQRT(s_), epsv)));
            VSTORE(p + i, w_);
            chk = VADD(chk, VSUB(w_, w_));
            if (wsq) SQACC(sqa, w_);
        }
        for (; i < n; i++) {
            gg = g[i] + l2 * p[i];
            vi = b1 * v[i] + c1 * gg;
            si = b2 * s[i] + c2 * (gg * gg);
            v[i] = vi;
            s[i] = si;
            w = p[i] - lr_t * vi / (SQRT(si) + eps);
            p[i] = w;
            sc = sc + (w - w);
            sqs += (double)w * (double)w;
        }
    } else {
        for (i = 0; i < nv; i += VL) {
            VT gv = VLOAD(g + i);
            UPDATE_VEC(p + i, gv, v + i, chk);
        }
        for (; i < n; i++) {
            if (mode == 0) {
                w = c * p[i] - eta * g[i];
            } else {
                vi = mu * v[i] - eta * (g[i] + l2 * p[i]);
                v[i] = vi;
                w = mode == 1 ? p[i] + vi : p[i] + (mu * vi - eta * (g[i] + l2 * p[i]));
            }
            p[i] = w;
            sc = sc + (w - w);
            sqs += (double)w * (double)w;
        }
    }
    if (wsq) *wsq = fastnn_hsum_d(sqa) + sqs;
    sc = sc + HSUM(chk);
    return !(sc == 0);
}

#undef UPDATE_VEC
#undef UPDATE_VEC_ANY
#undef SQACC
#undef CAT
#undef CAT_
/* the including file's parameters, ready for the next instantiation */
#undef T
#undef SFX
#undef VT
#undef VL
#undef VLOAD
#undef VSTORE
#undef VSET1
#undef VZERO
#undef VADD
#undef VSUB
#undef VMUL
#undef VFMA
#undef VDIV
#undef VSQRT
#undef SQRT
#undef HSUM
#undef VTAILMASK
#undef VMLOAD
#undef VMSTORE
#undef ASM_V
#undef ASM_BCAST
#undef ASM_T
