/* Sparse-input kernels, instantiated once per element type by _sparse.h (which defines
 * T, SFX, VT, VL, VLOAD, VSTORE, VSET1, VZERO, VFMA and VMASK(v): the movemask of v != 0,
 * NaN counting as non-zero). */

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)

/* Compact the positions j in [j0, j1) with x[j] != 0 into list (as j); returns the count.
 * j0 - (start of x) need not be aligned; list needs j1 - j0 + 8 slots. */
FASTNN_SPARSE_FN static FASTNN_INLINE int CAT(sparse_compact, SFX)(const T *x, Py_ssize_t j0,
                                                                  Py_ssize_t j1, int32_t *list)
{
    int cnt = 0;
    Py_ssize_t j = j0;
    for (; j + VL <= j1; j += VL)
        cnt = sparse_push(list, cnt, VMASK(VLOAD(x + j)), (int)j);
    for (; j < j1; j++) {
        list[cnt] = (int32_t)j;
        cnt += x[j] != 0;  /* NaN != 0 holds */
    }
    return cnt;
}

/* For each of the nr runs q: acc_q[v] (+)= sum_t x_q[l_q[t]] * B[l_q[t] * ldb + v VL] for the
 * NV vectors v of acc_q = acc + q * lda (onto acc_q's contents when add, else from zero),
 * where x_q = xs[q], l_q = list + q * lds and t < cnt[q]. With six vectors or fewer one
 * chain of multiply-adds per vector would wait on its own latency: two interleaved sets. */
FASTNN_SPARSE_FN static FASTNN_INLINE void CAT(sparse_runs, SFX)(const int NV, int nr, T *acc, Py_ssize_t lda,
                                                                const T *const *xs, const int32_t *list,
                                                                Py_ssize_t lds, const int *cnt, const T *B,
                                                                Py_ssize_t ldb, int add)
{
    int q;
    for (q = 0; q < nr; q++) {
        VT a[SPARSE_NVMAX], c[SPARSE_NVMAX];
        T *aq = acc + q * lda;
        const T *x = xs[q];
        const int32_t *l = list + q * lds;
        const int n = cnt[q];
        int v, t = 0;
        if (n == 0 && add) continue;
#pragma GCC unroll 13
        for (v = 0; v < NV; v++) {
            a[v] = add ? VLOAD(aq + v * VL) : VZERO();
            c[v] = VZERO();
        }
        if (NV <= 6) {
            for (; t + 2 <= n; t += 2) {
                const Py_ssize_t j0 = l[t], j1 = l[t + 1];
                const VT x0 = VSET1(x[j0]), x1 = VSET1(x[j1]);
                const T *b0 = B + j0 * ldb, *b1 = B + j1 * ldb;
#pragma GCC unroll 13
                for (v = 0; v < NV; v++) {
                    a[v] = VFMA(x0, VLOAD(b0 + v * VL), a[v]);
                    c[v] = VFMA(x1, VLOAD(b1 + v * VL), c[v]);
                }
            }
        }
        for (; t < n; t++) {
            const Py_ssize_t j = l[t];
            const VT xv = VSET1(x[j]);
            const T *b = B + j * ldb;
#pragma GCC unroll 13
            for (v = 0; v < NV; v++) a[v] = VFMA(xv, VLOAD(b + v * VL), a[v]);
        }
#pragma GCC unroll 13
        for (v = 0; v < NV; v++) VSTORE(aq + v * VL, NV <= 6 ? VADD(a[v], c[v]) : a[v]);
    }
}

/* sparse_runs with NV given at run time (1 <= nv <= SPARSE_NVMAX): one unrolled copy each */
FASTNN_SPARSE_FN static void CAT(sparse_runs_n, SFX)(int nv, int nr, T *acc, Py_ssize_t lda,
                                                    const T *const *xs, const int32_t *list, Py_ssize_t lds,
                                                    const int *cnt, const T *B, Py_ssize_t ldb, int add)
{
    switch (nv) {
#define SPARSE_CASE(N) case N: CAT(sparse_runs, SFX)(N, nr, acc, lda, xs, list, lds, cnt, B, ldb, add); break;
    SPARSE_CASE(1) SPARSE_CASE(2) SPARSE_CASE(3) SPARSE_CASE(4) SPARSE_CASE(5) SPARSE_CASE(6)
    SPARSE_CASE(7) SPARSE_CASE(8) SPARSE_CASE(9) SPARSE_CASE(10) SPARSE_CASE(11) SPARSE_CASE(12)
    SPARSE_CASE(13)
#undef SPARSE_CASE
    default: break;
    }
}

/* r[i] <- column i of the VL x VL block whose rows are r[0..VL) */
FASTNN_SPARSE_FN static FASTNN_INLINE void CAT(sparse_transpose, SFX)(VT *r)
{
#if VL == 8
    __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    __m256 u0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
    __m256 u1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
    __m256 u2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
    __m256 u3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
    __m256 u4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
    __m256 u5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
    __m256 u6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
    __m256 u7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
    r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
    r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
    r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
    r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
    r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
    r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
    r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
    r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
#else
    __m256d t0 = _mm256_unpacklo_pd(r[0], r[1]), t1 = _mm256_unpackhi_pd(r[0], r[1]);
    __m256d t2 = _mm256_unpacklo_pd(r[2], r[3]), t3 = _mm256_unpackhi_pd(r[2], r[3]);
    r[0] = _mm256_permute2f128_pd(t0, t2, 0x20);
    r[1] = _mm256_permute2f128_pd(t1, t3, 0x20);
    r[2] = _mm256_permute2f128_pd(t0, t2, 0x31);
    r[3] = _mm256_permute2f128_pd(t1, t3, 0x31);
#endif
}

/* panel[q * ldp + r] = rows[r][col + q] for r < rb, q < cw (cw <= 8) */
FASTNN_SPARSE_FN static FASTNN_INLINE void CAT(sparse_panel, SFX)(const T *const *rows, Py_ssize_t rb,
                                                                 Py_ssize_t col, Py_ssize_t cw, T *panel,
                                                                 Py_ssize_t ldp)
{
    Py_ssize_t r = 0, q, cb;
    int i;
    VT blk[VL];
    if (cw == 8) {
        for (; r + VL <= rb; r += VL)
            for (cb = 0; cb < 8; cb += VL) {
                for (i = 0; i < VL; i++) blk[i] = VLOAD(rows[r + i] + col + cb);
                CAT(sparse_transpose, SFX)(blk);
                for (i = 0; i < VL; i++) VSTORE(panel + (cb + i) * ldp + r, blk[i]);
            }
    }
    for (; r < rb; r++)
        for (q = 0; q < cw; q++) panel[q * ldp + r] = rows[r][col + q];
}

/* The slices of a row of nv vectors: nsl runs of at most SPARSE_NVMAX, as even as can be */
#define SPARSE_SLICES(nv) ((int)(((nv) + SPARSE_NVMAX - 1) / SPARSE_NVMAX))
#define SPARSE_SLICE(nv, nsl, s) ((int)((nv) / (nsl) + ((s) < (nv) % (nsl))))

/* Z[i, 0:n] = sum_{j < k, a_ij != 0} a_ij Wt[j, 0:n] for the m rows a_i = Ar[i] (row
 * stride of Z: ldz). Wt is W^T, k x ldw, ldw a multiple of VL (columns n..ldw are read
 * and dropped). Blocks of SPARSE_FWD_ROWS rows accumulate in scratch while the Wt rows of
 * an L1 block pass by; scratch holds sparse_scratch_bytes(ldw, sizeof(T)) bytes. */
FASTNN_SPARSE_FN static void CAT(sparse_nt, SFX)(const T *const *Ar, Py_ssize_t m, Py_ssize_t k,
                                                const T *Wt, Py_ssize_t ldw, Py_ssize_t n, T *Z,
                                                Py_ssize_t ldz, void *scratch)
{
    const Py_ssize_t J = sparse_block(ldw, sizeof(T)), RB = SPARSE_FWD_ROWS, nv = ldw / VL;
    const Py_ssize_t lds = (J < k ? J : k) + 8;
    const int nsl = SPARSE_SLICES(nv);
    T *Zp = (T *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
    int32_t *list = (int32_t *)(Zp + RB * ldw);
    int cnt[SPARSE_FWD_ROWS];
    Py_ssize_t r0, r, jb, v0;
    int s;
    for (r0 = 0; r0 < m; r0 += RB) {
        const Py_ssize_t rb = m - r0 < RB ? m - r0 : RB;
        for (jb = 0; jb < k; jb += J) {
            const Py_ssize_t je = k - jb < J ? k : jb + J;
            /* the next block's rows come from memory while this one computes */
            for (r = r0 + RB; r < r0 + 2 * RB && r < m; r++) {
                const char *p = (const char *)(Ar[r] + jb), *e = (const char *)(Ar[r] + je);
                for (; p < e; p += 64) __builtin_prefetch(p, 0, 3);
            }
            for (r = 0; r < rb; r++) cnt[r] = CAT(sparse_compact, SFX)(Ar[r0 + r], jb, je, list + r * lds);
            for (s = 0, v0 = 0; s < nsl; v0 += SPARSE_SLICE(nv, nsl, s), s++)
                CAT(sparse_runs_n, SFX)(SPARSE_SLICE(nv, nsl, s), (int)rb, Zp + v0 * VL, ldw, Ar + r0, list,
                                        lds, cnt, Wt + v0 * VL, ldw, jb > 0);
        }
        for (r = 0; r < rb; r++) memcpy(Z + (r0 + r) * ldz, Zp + r * ldw, n * sizeof(T));
    }
}

/* Gt[q, 0:n] += sum_{i < m, a_i,c0+q != 0} a_i,c0+q D[i, 0:n] for the kc columns c0 + q of
 * the rows a_i = Ar[i]; D is m x n (row stride ldd), Gt is kc x ldw (its columns n..ldw get
 * zeros added). Blocks of rows of D (padded to ldw, in L1) meet panels of 8 columns of the
 * input, transposed so that each column's non-zeros are found as a row's are. */
FASTNN_SPARSE_FN static void CAT(sparse_tn, SFX)(const T *const *Ar, Py_ssize_t c0, Py_ssize_t kc,
                                                Py_ssize_t m, const T *D, Py_ssize_t ldd, Py_ssize_t n,
                                                T *Gt, Py_ssize_t ldw, void *scratch)
{
    const Py_ssize_t RB = sparse_block(ldw, sizeof(T)), nv = ldw / VL, lds = RB + 8;
    const int nsl = SPARSE_SLICES(nv);
    T *Dp = (T *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
    T *panel = Dp + RB * ldw;
    int32_t *list = (int32_t *)(panel + 8 * RB);
    const T *xs[8];
    int cnt[8];
    Py_ssize_t r0, r, c, q, v0;
    int s;
    for (q = 0; q < 8; q++) xs[q] = panel + q * RB;
    for (r0 = 0; r0 < m; r0 += RB) {
        const Py_ssize_t rb = m - r0 < RB ? m - r0 : RB;
        for (r = 0; r < rb; r++) {
            memcpy(Dp + r * ldw, D + (r0 + r) * ldd, n * sizeof(T));
            for (q = n; q < ldw; q++) Dp[r * ldw + q] = 0;
        }
        for (c = 0; c < kc; c += 8) {
            const Py_ssize_t cw = kc - c < 8 ? kc - c : 8;
            /* the next block's rows come from memory while this one computes */
            for (r = r0 + RB; r < r0 + 2 * RB && r < m; r++) __builtin_prefetch(Ar[r] + c0 + c, 0, 3);
            CAT(sparse_panel, SFX)(Ar + r0, rb, c0 + c, cw, panel, RB);
            for (q = 0; q < cw; q++) cnt[q] = CAT(sparse_compact, SFX)(xs[q], 0, rb, list + q * lds);
            for (s = 0, v0 = 0; s < nsl; v0 += SPARSE_SLICE(nv, nsl, s), s++)
                CAT(sparse_runs_n, SFX)(SPARSE_SLICE(nv, nsl, s), (int)cw, Gt + c * ldw + v0 * VL, ldw, xs,
                                        list, lds, cnt, Dp + v0 * VL, ldw, 1);
        }
    }
}

#undef SPARSE_SLICES
#undef SPARSE_SLICE
#undef CAT
#undef CAT_
#undef T
#undef SFX
#undef VT
#undef VL
#undef VLOAD
#undef VSTORE
#undef VSET1
#undef VZERO
#undef VADD
#undef VFMA
#undef VMASK
