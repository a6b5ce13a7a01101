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

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#define FASTNN_HAVE_SMALL 1
#include <immintrin.h>
#define FASTNN_AVX2 __attribute__((target("avx2,fma")))

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
#include "_small_impl.h"

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
static int update_seg_d(double *p, const double *g, double *v, double *s, Py_ssize_t n, int mode, double eta,
                        double mu, double l2, double b1, double b2, double c1, double c2, double eps,
                        double lr_t) { return 1; }
static int update_seg_s(float *p, const float *g, float *v, float *s, Py_ssize_t n, int mode, float eta,
                        float mu, float l2, float b1, float b2, float c1, float c2, float eps,
                        float lr_t) { return 1; }
static int small_tn_update_d(const double *D, Py_ssize_t ldd, const double *const *A, Py_ssize_t a_off,
                             double *W, double *V, Py_ssize_t ldw, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, int mode, double eta, double mu,
                             double l2) { return 1; }
static int small_tn_update_s(const float *D, Py_ssize_t ldd, const float *const *A, Py_ssize_t a_off,
                             float *W, float *V, Py_ssize_t ldw, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, int mode, float eta, float mu,
                             float l2) { return 1; }
#endif

#endif
