// GEMM kernels for the avx512 code path (flags set per file in CMakeLists.txt).
#define PYCONV_ISA isa_avx512
#define PYCONV_ISA_NAME "avx512"
#define PYCONV_ISA_AVX512 1
#include "gemm_kernels.h"
