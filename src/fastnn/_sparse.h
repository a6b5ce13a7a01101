/* AVX2 + FMA kernels for a first layer whose input rows are mostly zeros (images:
 * about half of Fashion-MNIST's pixels, four fifths of MNIST's, are exactly 0).
 *
 * A dense product spends a multiply-add on every input element; these kernels skip the
 * zeros, so the work is (density) x (dense work):
 *
 *   sparse_nt:  Z[i, :] = sum_{j : a_ij != 0} a_ij Wt[j, :]       (forward, Z = A W^T)
 *   sparse_tn:  Gt[j, :] += sum_{i : a_ij != 0} a_ij D[i, :]      (gradient, G^T = A^T D)
 *
 * with Wt = W^T and Gt = G^T stored k x ldw (ldw = fan-out rounded up to whole vectors).
 * Skipping an exact zero leaves every sum as the dense kernel would have it (0 * w adds
 * nothing), except that a zero input no longer turns an infinite weight into NaN; NaN and
 * infinite inputs are not zeros and propagate as in a dense product.
 *
 * How: the non-zero positions of a stretch of input are compacted into a list of indices
 * without branches (a movemask of the comparison with 0 looks up the packed positions in a
 * 256-entry table), then a run of multiply-adds over the list accumulates up to 12 vectors
 * of outputs in registers. The other operand (a block of Wt rows, or a block of D rows)
 * is sized to stay in L1 (SPARSE_L1_BYTES): every multiply-add reads it from there.
 * fastnn_sparse_available() is 1 when the CPU runs AVX2, FMA and POPCNT.
 */
#ifndef FASTNN_SPARSE_H
#define FASTNN_SPARSE_H

#include <Python.h>
#include <stdint.h>
#include <string.h>

/* the L1 share of the reused operand and the rows of a block (tuned on the project's machine:
 * 32 KiB L1 data cache per core) */
#ifndef SPARSE_L1_BYTES
#define SPARSE_L1_BYTES 16384
#endif
#ifndef SPARSE_FWD_ROWS
#define SPARSE_FWD_ROWS 16
#endif
#define SPARSE_NVMAX 13

/* Wt rows (forward) or batch rows (gradient) per L1 block: a multiple of 8, at least 8 */
static Py_ssize_t sparse_block(Py_ssize_t ldw, Py_ssize_t item)
{
    Py_ssize_t b = SPARSE_L1_BYTES / (ldw * item);
    b -= b % 8;
    return b < 8 ? 8 : b;
}

/* bytes of scratch a task needs for sparse_nt / sparse_tn with this ldw and item size:
 * sparse_nt's row block of sums and index lists, or sparse_tn's block of the delta, its
 * 8-column panel and index lists */
static Py_ssize_t sparse_scratch_bytes(Py_ssize_t ldw, Py_ssize_t item)
{
    Py_ssize_t J = sparse_block(ldw, item), RB = SPARSE_FWD_ROWS;
    Py_ssize_t fwd = RB * ldw * item + RB * (J + 8) * 4;
    Py_ssize_t tn = J * ldw * item + 8 * J * item + 8 * (J + 8) * 4;
    return (fwd > tn ? fwd : tn) + 128;
}

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#define FASTNN_HAVE_SPARSE 1
#include <immintrin.h>
#define FASTNN_SPARSE_FN __attribute__((target("avx2,fma,popcnt")))
#define FASTNN_INLINE __attribute__((always_inline)) inline

/* sparse_lut[mask] = the positions of mask's set bits, packed from byte 0 */
static uint64_t sparse_lut[256];

static void sparse_lut_init(void)
{
    int mask, b, c;
    for (mask = 0; mask < 256; mask++) {
        uint64_t v = 0;
        for (b = 0, c = 0; b < 8; b++)
            if (mask & (1 << b)) v |= (uint64_t)b << (8 * c++);
        sparse_lut[mask] = v;
    }
}

static int fastnn_sparse_available(void)
{
    __builtin_cpu_init();
    if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
          __builtin_cpu_supports("popcnt")))
        return 0;
    sparse_lut_init();
    return 1;
}

/* append the indices base + l of the 8 lanes set in mask to list[cnt..]; returns the new
 * count (writes 8 entries: the list has 8 spare slots) */
FASTNN_SPARSE_FN static FASTNN_INLINE int sparse_push(int32_t *list, int cnt, int mask, int base)
{
    __m256i id = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)&sparse_lut[mask]));
    _mm256_storeu_si256((__m256i *)(list + cnt), _mm256_add_epi32(id, _mm256_set1_epi32(base)));
    return cnt + _mm_popcnt_u32((unsigned)mask);
}

/* float */
#define T float
#define SFX _s
#define VT __m256
#define VL 8
#define VLOAD _mm256_loadu_ps
#define VSTORE _mm256_storeu_ps
#define VSET1 _mm256_set1_ps
#define VZERO _mm256_setzero_ps
#define VFMA _mm256_fmadd_ps
#define VADD _mm256_add_ps
#define VMASK(v) _mm256_movemask_ps(_mm256_cmp_ps((v), _mm256_setzero_ps(), _CMP_NEQ_UQ))
#include "_sparse_impl.h"

/* double */
#define T double
#define SFX _d
#define VT __m256d
#define VL 4
#define VLOAD _mm256_loadu_pd
#define VSTORE _mm256_storeu_pd
#define VSET1 _mm256_set1_pd
#define VZERO _mm256_setzero_pd
#define VFMA _mm256_fmadd_pd
#define VADD _mm256_add_pd
#define VMASK(v) _mm256_movemask_pd(_mm256_cmp_pd((v), _mm256_setzero_pd(), _CMP_NEQ_UQ))
#include "_sparse_impl.h"

#else /* no AVX2 in this build: the callers use the dense kernels */
#define FASTNN_HAVE_SPARSE 0
static int fastnn_sparse_available(void) { return 0; }
static void sparse_nt_s(const float *const *Ar, Py_ssize_t m, Py_ssize_t k, const float *Wt, Py_ssize_t ldw,
                        Py_ssize_t n, float *Z, Py_ssize_t ldz, void *scratch) {}
static void sparse_nt_d(const double *const *Ar, Py_ssize_t m, Py_ssize_t k, const double *Wt, Py_ssize_t ldw,
                        Py_ssize_t n, double *Z, Py_ssize_t ldz, void *scratch) {}
static void sparse_tn_s(const float *const *Ar, Py_ssize_t c0, Py_ssize_t kc, Py_ssize_t m, const float *D,
                        Py_ssize_t ldd, Py_ssize_t n, float *Gt, Py_ssize_t ldw, void *scratch) {}
static void sparse_tn_d(const double *const *Ar, Py_ssize_t c0, Py_ssize_t kc, Py_ssize_t m, const double *D,
                        Py_ssize_t ldd, Py_ssize_t n, double *Gt, Py_ssize_t ldw, void *scratch) {}
#endif

#endif
