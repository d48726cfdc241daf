"""The CUDA backend: the same fused Programs compiled into numba.cuda kernels."""
