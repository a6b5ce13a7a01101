# BLAS for fastnn's kernels: one wrapper over scipy.linalg.cython_blas.
#
# Every kernel cimports this module and never SciPy directly, so the BLAS
# provider is chosen in one place and no BLAS is linked into fastnn itself.
# Matrices are row-major (C order); a row-major product is computed by the
# column-major BLAS as the transposed product with the operands swapped.

ctypedef fused floating:
    float
    double

cdef enum BLAS_Trans:
    NoTrans = 110  # ord('n')
    Trans = 116    # ord('t')

cdef void gemm_rm(BLAS_Trans ta, BLAS_Trans tb, int m, int n, int k,
                  floating alpha, const floating* A, int lda,
                  const floating* B, int ldb,
                  floating beta, floating* C, int ldc) noexcept nogil

cdef floating dot(int n, const floating* x, const floating* y) noexcept nogil
