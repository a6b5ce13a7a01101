/* AVX2 + FMA small-batch kernels with run-time dispatch (see _small_impl.h).
 *
 * fastnn_small_available() is 1 when this build has the kernels and the CPU
 * runs them (x86-64 with AVX2 and FMA, compiled by GCC or Clang); elsewhere the
 * callers use BLAS. The kernels are compiled for AVX2 by a function attribute,
 * so the rest of the extension stays baseline x86-64 and the wheel runs on any
 * CPU.
 */
#ifndef FASTNN_SMALL_H
#define FASTNN_SMALL_H

#include <Python.h>

#define FASTNN_KTILE 256

/* sum of squares in double, with eight independent partial sums (so the
 * compiler can keep them in vector registers without reassociating a chain) */
#define FASTNN_SUMSQ(NAME, T)                                                  \
    static double NAME(const T *x, Py_ssize_t n)                               \
    {                                                                          \
        double a[8] = {0, 0, 0, 0, 0, 0, 0, 0};                                \
        Py_ssize_t i, j, nv = n - n % 8;                                       \
        for (i = 0; i < nv; i += 8)                                            \
            for (j = 0; j < 8; j++) a[j] += (double)x[i + j] * (double)x[i + j]; \
        for (; i < n; i++) a[0] += (double)x[i] * (double)x[i];                \
        return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7])); \
    }
FASTNN_SUMSQ(fastnn_sumsq_d, double)
FASTNN_SUMSQ(fastnn_sumsq_s, float)

/* 1 if one of x[0..n) is NaN or infinite: its exponent bits are all ones. Integer tests
 * (read through a may_alias type) vectorize without reassociating floating-point sums. */
#include <stdint.h>
#if defined(__GNUC__) || defined(__clang__)
typedef uint32_t __attribute__((may_alias)) fastnn_u32_alias;
typedef uint64_t __attribute__((may_alias)) fastnn_u64_alias;
#else
typedef uint32_t fastnn_u32_alias;
typedef uint64_t fastnn_u64_alias;
#endif
#define FASTNN_NONFINITE(NAME, T, U, MASK)                                     \
    static int NAME(const T *x, Py_ssize_t n)                                  \
    {                                                                          \
        const U *u = (const U *)x;                                             \
        Py_ssize_t i;                                                          \
        int any = 0;                                                           \
        for (i = 0; i < n; i++) any |= (u[i] & (MASK)) == (MASK);              \
        return any;                                                            \
    }
FASTNN_NONFINITE(fastnn_nonfinite_s, float, fastnn_u32_alias, 0x7f800000u)
FASTNN_NONFINITE(fastnn_nonfinite_d, double, fastnn_u64_alias, 0x7ff0000000000000ull)
#define FASTNN_TILED_MAX_ROWS 16
/* Batches of at most this many rows take small_nt's k-tiled kernel (W read once per
 * call), larger ones the row-block kernel (W read once per 4 rows, from L2). Measured
 * here, rows read where they lie in a 50 000-row array: in float32 the row-block kernel is
 * 15-35 % faster from 4 rows up (n = 30 and 100 columns of W); in float64 the two are
 * within a few percent, the tiled one ahead for narrow W (n = 8) below 12 rows. */
static int fastnn_nt_tiled_rows_s = 3;
static int fastnn_nt_tiled_rows_d = 16;
/* whether the row-block kernel prefetches the next block's rows */
static int fastnn_nt_prefetch_next = 1;
/* whether the row-block kernel cuts k into tiles where 4 rows outgrow half of L1 */
static int fastnn_nt_rows_tiling = 1;
/* whether it then takes the tiles outermost (every block through tile 0, then tile 1, ...)
 * rather than each block through every tile in turn (the same bits) */
static int fastnn_nt_tiles_outer = 1;
/* whether the fused update prefetches the batch's strip after next as it packs a strip */
static int tn_pf_strip = 1;

/* Bytes of one core's L2 cache, as the C library reports it (512 KiB where it does not). */
#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif
static Py_ssize_t fastnn_l2_bytes(void)
{
#if defined(_SC_LEVEL2_CACHE_SIZE)
    long v = sysconf(_SC_LEVEL2_CACHE_SIZE);
    if (v >= 65536 && v <= (1L << 27)) return (Py_ssize_t)v;
#endif
    return 512 * 1024;
}

/* Rows of the data set (the next mini-batch's) that the fused update asks the cache for, a
 * few lines at a time while it computes: the cache lines q0 <= q < q1 of the rows, numbered
 * row after row (line q of the plan is line q % lines of row X + idx[q / lines] * row_bytes).
 * A prefetch is only a hint, so any plan is safe. */
typedef struct {
    const char *X;
    const Py_ssize_t *idx;
    Py_ssize_t row_bytes, lines, q0, q1;
} fastnn_pf_plan;

/* A position in a plan: line q, which is line l of the plan's row r. Kept as all three so
 * that walking the plan takes no division (an idiv per prefetched line was 2 % of C1's
 * update). */
typedef struct {
    Py_ssize_t q, r, l;
} fastnn_pf_at;

/* The plan's first line q0 (a plan of NULL: nothing to walk). */
static inline fastnn_pf_at fastnn_pf_start(const fastnn_pf_plan *p)
{
    fastnn_pf_at at = {0, 0, 0};
    if (p != NULL && p->lines > 0) {
        at.q = p->q0;
        at.r = p->q0 / p->lines;
        at.l = p->q0 % p->lines;
    }
    return at;
}

/* The next `step` lines of the plan from *at on (below q1); advances *at. */
static inline void fastnn_pf_slice(const fastnn_pf_plan *p, fastnn_pf_at *at, Py_ssize_t step)
{
    Py_ssize_t q = at->q, end, r = at->r, l = at->l;
    if (p == NULL || q >= p->q1) return;
    end = q + step < p->q1 ? q + step : p->q1;
    for (; q < end; q++) {
        __builtin_prefetch(p->X + p->idx[r] * p->row_bytes + 64 * l, 0, 3);
        if (++l == p->lines) {
            l = 0;
            r++;
        }
    }
    at->q = end;
    at->r = r;
    at->l = l;
}

/* The next mini-batch's forward product of layer 0, formed by the fused update of its rows
 * of W as soon as each block of them has its new values (in L1): Z[i * ldz + j] =
 * sum_c rows[i][c] W_new[j, c] for the m rows i and the update's rows j of W, summed tile
 * by tile as small_nt's k-tiled kernel sums them (same FMAs, same order, same horizontal
 * sums), so the bits equal a separate forward product's for a batch that takes that kernel
 * (m <= fastnn_nt_tiled_rows). The fan-in must be a whole number of vectors. */
typedef struct {
    const void *const *rows;
    Py_ssize_t m, ldz;
    void *Z;
} fastnn_next_fwd;

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#define FASTNN_HAVE_SMALL 1
#include <immintrin.h>
#define FASTNN_AVX2 __attribute__((target("avx2,fma")))
/* Holds a loaded vector in a register from here on: GCC otherwise folds the load into each
 * FMA that uses the vector, reading it from memory once per use (dot_4x2: 10 loads per 8
 * FMAs instead of 6, more than two load ports feed). */
#define FASTNN_KEEP(v) __asm__("" : "+x"(v))

FASTNN_AVX2 static inline double fastnn_hsum_d(__m256d v)
{
    __m128d lo = _mm256_castpd256_pd128(v), hi = _mm256_extractf128_pd(v, 1);
    lo = _mm_add_pd(lo, hi);
    return _mm_cvtsd_f64(_mm_add_sd(lo, _mm_unpackhi_pd(lo, lo)));
}

FASTNN_AVX2 static inline float fastnn_hsum_s(__m256 v)
{
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    return _mm_cvtss_f32(_mm_add_ss(lo, _mm_shuffle_ps(lo, lo, 1)));
}

/* double */
#define T double
#define SFX _d
#define VT __m256d
#define VL 4
#define VLOAD _mm256_loadu_pd
#define VSTORE _mm256_storeu_pd
#define VSET1 _mm256_set1_pd
#define VZERO _mm256_setzero_pd
#define VADD _mm256_add_pd
#define VSUB _mm256_sub_pd
#define VMUL _mm256_mul_pd
#define VFMA _mm256_fmadd_pd
#define VDIV _mm256_div_pd
#define VSQRT _mm256_sqrt_pd
#define SQRT __builtin_sqrt
#define HSUM fastnn_hsum_d
/* the first r < 4 lanes of p (the others read as 0, and not read at all) */
#define VTAILMASK(r) _mm256_cmpgt_epi64(_mm256_set1_epi64x(r), _mm256_setr_epi64x(0, 1, 2, 3))
#define VMLOAD(p, mask) _mm256_maskload_pd((p), (mask))
#define VMSTORE(p, mask, v) _mm256_maskstore_pd((p), (mask), (v))
/* acc (4 doubles) += w * w */
#define SQACC(acc, w) acc = _mm256_fmadd_pd((w), (w), acc)
/* the vector instructions' suffix, the broadcast, and the element size in bytes, as text
 * for inline assembly */
#define ASM_V "pd"
#define ASM_BCAST "vbroadcastsd"
#define ASM_T "8"
#include "_small_impl.h"

/* float */
#define T float
#define SFX _s
#define VT __m256
#define VL 8
#define VLOAD _mm256_loadu_ps
#define VSTORE _mm256_storeu_ps
#define VSET1 _mm256_set1_ps
#define VZERO _mm256_setzero_ps
#define VADD _mm256_add_ps
#define VSUB _mm256_sub_ps
#define VMUL _mm256_mul_ps
#define VFMA _mm256_fmadd_ps
#define VDIV _mm256_div_ps
#define VSQRT _mm256_sqrt_ps
#define SQRT __builtin_sqrtf
#define HSUM fastnn_hsum_s
#define VTAILMASK(r) _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(r)),                    \
                                        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
#define VMLOAD(p, mask) _mm256_maskload_ps((p), (mask))
#define VMSTORE(p, mask, v) _mm256_maskstore_ps((p), (mask), (v))
/* acc (4 doubles) += w * w, the 8 floats widened to double */
#define SQACC(acc, w)                                                              \
    do {                                                                           \
        __m256d lo_ = _mm256_cvtps_pd(_mm256_castps256_ps128(w));                  \
        __m256d hi_ = _mm256_cvtps_pd(_mm256_extractf128_ps((w), 1));              \
        acc = _mm256_fmadd_pd(lo_, lo_, acc);                                      \
        acc = _mm256_fmadd_pd(hi_, hi_, acc);                                      \
    } while (0)
#define ASM_V "ps"
#define ASM_BCAST "vbroadcastss"
#define ASM_T "4"
#include "_small_impl.h"

/* Vectorized exp: x = n ln2 + r with |r| <= ln2/2 (n rounded, ln2 split in two so the
 * reduction is exact enough), e^r by its Taylor polynomial (degree 13 for double, 7 for
 * float: truncation below half an ulp), times 2^n built in the exponent bits. Lanes
 * outside the range where 2^n is a normal number (and NaN) take the scalar libm path,
 * so overflow, underflow to subnormals and NaN behave as exp(). Accurate to about 1 ulp.
 * Each element's result depends on its value only, not on where it lies in x: the last
 * partial vector goes through the same arithmetic under a mask, and only the lanes out of
 * range take libm. (A region's blocks, which the threads' speeds may move from step to
 * step, then never change a bit of an activation.) */
#include <math.h>
#define FASTNN_EXP_INPLACE(NAME, T, VT, VLN, LOADU, STOREU, MLOAD, MSTORE, TAILMASK, CMP,      \
                           AND, MOVEMASK, FULL, LO, HI, EXPF, BODY)                            \
    FASTNN_AVX2 static void NAME(T *x, Py_ssize_t n)                                           \
    {                                                                                          \
        Py_ssize_t i, l;                                                                       \
        for (i = 0; i < n; i += VLN) {                                                         \
            const Py_ssize_t rem = n - i < VLN ? n - i : VLN;                                  \
            const __m256i mk = TAILMASK(rem);                                                  \
            VT v = rem == VLN ? LOADU(x + i) : MLOAD(x + i, mk), out;                          \
            VT inr = AND(CMP(v, LO, _CMP_GE_OQ), CMP(v, HI, _CMP_LE_OQ));                      \
            BODY                                                                               \
            if (rem == VLN) STOREU(x + i, out); else MSTORE(x + i, mk, out);                   \
            if (MOVEMASK(inr) != FULL) {                                                       \
                T in_[VLN];                                                                    \
                STOREU(in_, v);                                                                \
                for (l = 0; l < rem; l++)                                                      \
                    if (!(in_[l] >= LO##_s && in_[l] <= HI##_s)) x[i + l] = EXPF(in_[l]);      \
            }                                                                                  \
        }                                                                                      \
    }

static const double fastnn_exp_inv_fact_d[14] = {
    1.0, 1.0, 1.0 / 2, 1.0 / 6, 1.0 / 24, 1.0 / 120, 1.0 / 720, 1.0 / 5040, 1.0 / 40320,
    1.0 / 362880, 1.0 / 3628800, 1.0 / 39916800, 1.0 / 479001600, 1.0 / 6227020800.0};
static const float fastnn_exp_inv_fact_s[8] = {1.0f, 1.0f, 1.0f / 2, 1.0f / 6, 1.0f / 24,
                                               1.0f / 120, 1.0f / 720, 1.0f / 5040};
#define EXP_LO_D _mm256_set1_pd(-708.0)
#define EXP_HI_D _mm256_set1_pd(709.0)
#define EXP_LO_D_s (-708.0)
#define EXP_HI_D_s (709.0)
#define EXP_LO_S _mm256_set1_ps(-87.0f)
#define EXP_HI_S _mm256_set1_ps(88.0f)
#define EXP_LO_S_s (-87.0f)
#define EXP_HI_S_s (88.0f)
#define EXP_MASK_D(r) _mm256_cmpgt_epi64(_mm256_set1_epi64x(r), _mm256_setr_epi64x(0, 1, 2, 3))
#define EXP_MASK_S(r) _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(r)),                          \
                                         _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
#define EXP_BODY_D                                                                             \
    {                                                                                          \
        __m256d k = _mm256_round_pd(_mm256_mul_pd(v, _mm256_set1_pd(1.4426950408889634)),      \
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);            \
        __m256d r = _mm256_fnmadd_pd(k, _mm256_set1_pd(0.6931471803691238), v);                \
        __m256d p = _mm256_set1_pd(fastnn_exp_inv_fact_d[13]);                                 \
        __m256i e;                                                                             \
        int d;                                                                                 \
        r = _mm256_fnmadd_pd(k, _mm256_set1_pd(1.9082149292705877e-10), r);                    \
        for (d = 12; d >= 0; d--) p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(fastnn_exp_inv_fact_d[d])); \
        /* out-of-range lanes (fixed below) must not overflow the conversion */                 \
        k = _mm256_blendv_pd(_mm256_setzero_pd(), k, inr);                                     \
        e = _mm256_cvtepi32_epi64(_mm256_cvtpd_epi32(k));                                      \
        e = _mm256_slli_epi64(_mm256_add_epi64(e, _mm256_set1_epi64x(1023)), 52);              \
        out = _mm256_mul_pd(p, _mm256_castsi256_pd(e));                                        \
    }
#define EXP_BODY_S                                                                             \
    {                                                                                          \
        __m256 k = _mm256_round_ps(_mm256_mul_ps(v, _mm256_set1_ps(1.44269504f)),              \
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);             \
        __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693359375f), v);                       \
        __m256 p = _mm256_set1_ps(fastnn_exp_inv_fact_s[7]);                                   \
        __m256i e;                                                                             \
        int d;                                                                                 \
        r = _mm256_fnmadd_ps(k, _mm256_set1_ps(-2.12194440e-4f), r);                           \
        for (d = 6; d >= 0; d--) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(fastnn_exp_inv_fact_s[d])); \
        k = _mm256_blendv_ps(_mm256_setzero_ps(), k, inr);                                     \
        e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23); \
        out = _mm256_mul_ps(p, _mm256_castsi256_ps(e));                                        \
    }
FASTNN_EXP_INPLACE(fastnn_exp_inplace_d, double, __m256d, 4, _mm256_loadu_pd, _mm256_storeu_pd,
                   _mm256_maskload_pd, _mm256_maskstore_pd, EXP_MASK_D, _mm256_cmp_pd,
                   _mm256_and_pd, _mm256_movemask_pd, 0xf, EXP_LO_D, EXP_HI_D, exp, EXP_BODY_D)
FASTNN_EXP_INPLACE(fastnn_exp_inplace_s, float, __m256, 8, _mm256_loadu_ps, _mm256_storeu_ps,
                   _mm256_maskload_ps, _mm256_maskstore_ps, EXP_MASK_S, _mm256_cmp_ps,
                   _mm256_and_ps, _mm256_movemask_ps, 0xff, EXP_LO_S, EXP_HI_S, expf, EXP_BODY_S)

static int fastnn_small_available(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

#else  /* no AVX2 kernels in this build: callers use BLAS */
#define FASTNN_HAVE_SMALL 0
static int fastnn_small_available(void) { return 0; }
static void small_nt_d(const double *const *A, const double *W, double *Z, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                       Py_ssize_t ldz) {}
static void small_nt_s(const float *const *A, const float *W, float *Z, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                       Py_ssize_t ldz) {}
static void small_nn_d(const double *D, Py_ssize_t ldd, const double *W, Py_ssize_t ldw, double *Z,
                       Py_ssize_t ldz, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k) {}
static void small_nn_s(const float *D, Py_ssize_t ldd, const float *W, Py_ssize_t ldw, float *Z,
                       Py_ssize_t ldz, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k) {}
static int update_seg_d(double *p, const double *g, double *v, double *s, Py_ssize_t n, int mode, double eta,
                        double mu, double l2, double b1, double b2, double c1, double c2, double eps,
                        double lr_t, double *wsq) { return 1; }
static int update_seg_s(float *p, const float *g, float *v, float *s, Py_ssize_t n, int mode, float eta,
                        float mu, float l2, float b1, float b2, float c1, float c2, float eps,
                        float lr_t, double *wsq) { return 1; }
static void fastnn_exp_inplace_d(double *x, Py_ssize_t n) {}
static void fastnn_exp_inplace_s(float *x, Py_ssize_t n) {}
typedef struct { double b1, b2, c1, c2, eps, lr_t; } adam_consts_d;
typedef struct { float b1, b2, c1, c2, eps, lr_t; } adam_consts_s;
static int small_tn_update_d(const double *D, Py_ssize_t ldd, const double *const *A, Py_ssize_t a_off,
                             double *W, double *V, double *S, Py_ssize_t ldw, Py_ssize_t m, Py_ssize_t n,
                             Py_ssize_t k, int mode, double eta, double mu, double l2,
                             const adam_consts_d *ac, void *scratch, double *wsq,
                             const fastnn_pf_plan *pf, const fastnn_next_fwd *nf,
                             double sparse_max) { return 1; }
static int small_tn_update_s(const float *D, Py_ssize_t ldd, const float *const *A, Py_ssize_t a_off,
                             float *W, float *V, float *S, Py_ssize_t ldw, Py_ssize_t m, Py_ssize_t n,
                             Py_ssize_t k, int mode, float eta, float mu, float l2,
                             const adam_consts_s *ac, void *scratch, double *wsq,
                             const fastnn_pf_plan *pf, const fastnn_next_fwd *nf,
                             double sparse_max) { return 1; }
static Py_ssize_t small_tn_scratch_bytes_d(Py_ssize_t m, Py_ssize_t n) { return 64; }
static Py_ssize_t small_tn_scratch_bytes_s(Py_ssize_t m, Py_ssize_t n) { return 64; }
static void sumsq_col_units_d(const double *W, Py_ssize_t ldw, Py_ssize_t n, Py_ssize_t c0,
                              Py_ssize_t c1, Py_ssize_t unit, double *out) {}
static void sumsq_col_units_s(const float *W, Py_ssize_t ldw, Py_ssize_t n, Py_ssize_t c0,
                              Py_ssize_t c1, Py_ssize_t unit, double *out) {}
#endif

#endif
