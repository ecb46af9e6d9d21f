// Small dense solvers shared by the CPU and CUDA ops.
//
// Every routine here works on one T x T float64 Gram matrix G = J J^T (row-major,
// leading dimension T) and writes task weights w such that the combined direction
// is d = w^T J. They are header-only and __host__ __device__ so that the CPU test
// suite exercises exactly the code that runs on the GPU. No routine allocates:
// callers pass workspaces sized by the *_work_* helpers. Iteration counts are
// capped, and convergence is reported through a flag instead of a host sync.
#pragma once

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define FASTMTL_HD __host__ __device__
#else
#define FASTMTL_HD
#endif

#define FASTMTL_SOLVERS_NS solvers
#include "solvers_impl.h"
#include "solvers_nash_qp.h"
#undef FASTMTL_SOLVERS_NS
