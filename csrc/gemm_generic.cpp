// GEMM kernels for the generic code path (flags set per file in CMakeLists.txt).
#define PYCONV_ISA isa_generic
#define PYCONV_ISA_NAME "generic"

#include "gemm_kernels.h"
