// src/cuda/model.cu compiled as C++ on the host, against the emulated device API of
// tests/host_cuda/cuda/cuda_internal.h (found first on the include path) and host_cuda.cpp.
#include "cuda/model.cu"
