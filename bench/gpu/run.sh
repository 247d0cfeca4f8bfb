#!/usr/bin/env bash
# bench/gpu/run.sh: the GPU path in one call on a GPU machine: the GPU tests, the PyTorch check of
# the MoE layer, then the benchmarks with PyTorch measured in the same run (bench/RESULTS.md).
#
# usage: bench/gpu/run.sh BIN_DIR [quick|full]
#   BIN_DIR holds test_cuda_route, test_cuda_moe, gpu_route, gpu_moe and gpu_moe_dump: a build
#   directory (cmake with nvcc present), or a bundle made by scripts/gpu_bundle.sh (bin/ with the
#   shared libraries in lib/ beside it) for a GPU machine without the project's dev packages.
#   quick: fewer repeats. The log goes to stdout (and to $OUT/gpu_run.log when OUT is set).
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=$(cd "$1" && pwd)
mode=${2:-full}
if [ -d "$bin/../lib" ]; then # a bundle: its libraries, the large ones gzipped
  lib=$(mktemp -d)
  cp "$bin"/../lib/* "$lib/"
  for z in "$lib"/*.gz; do [ -e "$z" ] && gunzip -f "$z"; done
  export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
# cuBLAS of the machine's CUDA toolkit or of PyTorch's wheels
for p in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
         "$(python3 -c 'import nvidia.cublas, os; print(os.path.join(list(nvidia.cublas.__path__)[0], "lib"))' 2>/dev/null)"; do
  [ -n "$p" ] && [ -e "$p/libcublas.so.13" ] && export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$p"
done
log=${OUT:+$OUT/gpu_run.log}
exec > >(tee ${log:-/dev/null}) 2>&1
export PYTHONUNBUFFERED=1
reps=20; mreps=10
[ "$mode" = quick ] && reps=5 && mreps=3
echo "== bench/gpu/run.sh $(date -u +%Y-%m-%dT%H:%MZ) mode $mode"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv,noheader
fails=0
step() { # name command...
  local name=$1; shift
  echo; echo "== $name"
  local t0=$SECONDS
  if "$@"; then echo "== $name: ok ($((SECONDS - t0)) s)"; else echo "== $name: FAILED"; fails=$((fails + 1)); fi
}
step test_cuda_route "$bin/test_cuda_route"
step test_cuda_moe "$bin/test_cuda_moe"
step moe_torch_check python3 "$root/tests/gpu/moe_torch.py" "$bin/gpu_moe_dump" 4096 1024 512 16 4
step moe_torch_check_grouped python3 "$root/tests/gpu/moe_torch.py" "$bin/gpu_moe_dump" 2048 512 256 32 6 --gemm=1
step bench_route "$bin/gpu_route" 1048576 256 8 $reps
step torch_route python3 "$root/bench/gpu/torch_route.py" 1048576 256 8 $((reps / 2))
step bench_moe "$bin/gpu_moe" $mreps
step torch_moe python3 "$root/bench/gpu/torch_moe.py" $mreps
echo; echo "== done: $fails failed step(s)"
exit $fails
