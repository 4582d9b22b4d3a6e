// GEMM kernels for the avx2 code path (flags set per file in CMakeLists.txt).
#define PYCONV_ISA isa_avx2
#define PYCONV_ISA_NAME "avx2"
#define PYCONV_ISA_AVX2 1
#include "gemm_kernels.h"
