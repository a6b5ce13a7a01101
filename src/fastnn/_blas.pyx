"""Row-major BLAS wrappers over ``scipy.linalg.cython_blas``.

``gemm_rm`` computes ``C = alpha * op(A) @ op(B) + beta * C`` for row-major
matrices, ``C`` of shape (m, n), ``op(A)`` of shape (m, k), ``op(B)`` of shape
(k, n), with ``lda``, ``ldb``, ``ldc`` the row strides (in elements).
A row-major matrix read by the column-major BLAS is its transpose, so the
call is ``gemm(tb, ta, n, m, k, alpha, B, ldb, A, lda, beta, C, ldc)``, which
computes ``C^T = op(B)^T op(A)^T``.
"""
from scipy.linalg.cython_blas cimport sgemm, dgemm, sdot, ddot

import numpy as np


cdef void gemm_rm(BLAS_Trans ta, BLAS_Trans tb, int m, int n, int k,
                  floating alpha, const floating* A, int lda,
                  const floating* B, int ldb,
                  floating beta, floating* C, int ldc) noexcept nogil:
    cdef char cta = <char>ta
    cdef char ctb = <char>tb
    if floating is float:
        sgemm(&ctb, &cta, &n, &m, &k, &alpha, <float*>B, &ldb,
              <float*>A, &lda, &beta, C, &ldc)
    else:
        dgemm(&ctb, &cta, &n, &m, &k, &alpha, <double*>B, &ldb,
              <double*>A, &lda, &beta, C, &ldc)


cdef floating dot(int n, const floating* x, const floating* y) noexcept nogil:
    cdef int one = 1
    if floating is float:
        return sdot(&n, <float*>x, &one, <float*>y, &one)
    else:
        return ddot(&n, <double*>x, &one, <double*>y, &one)


def gemm_memview(str trans_a, str trans_b, double alpha,
                 const floating[:, ::1] A, const floating[:, ::1] B,
                 double beta, floating[:, ::1] C):
    """Test twin of ``gemm_rm``: ``C = alpha op(A) op(B) + beta C`` in place.

    ``trans_a`` / ``trans_b`` are ``"n"`` or ``"t"``.
    """
    cdef BLAS_Trans ta = Trans if trans_a == "t" else NoTrans
    cdef BLAS_Trans tb = Trans if trans_b == "t" else NoTrans
    cdef int m = C.shape[0]
    cdef int n = C.shape[1]
    cdef int k = A.shape[0] if ta == Trans else A.shape[1]
    if (A.shape[1] if ta == Trans else A.shape[0]) != m:
        raise ValueError("op(A) rows must equal C rows")
    if (B.shape[1] if tb == Trans else B.shape[0]) != k:
        raise ValueError("op(B) rows must equal op(A) columns")
    if (B.shape[0] if tb == Trans else B.shape[1]) != n:
        raise ValueError("op(B) columns must equal C columns")
    with nogil:
        gemm_rm(ta, tb, m, n, k, <floating>alpha, &A[0, 0], <int>A.shape[1],
                &B[0, 0], <int>B.shape[1], <floating>beta, &C[0, 0], n)
    return np.asarray(C)
