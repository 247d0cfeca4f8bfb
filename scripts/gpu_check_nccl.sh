#!/usr/bin/env bash
# The nccl executor on a GPU machine: tests/test_exec_nccl.c under mpirun -np NP (one process per
# GPU; NP = 1 on a machine of one GPU, since NCCL refuses two ranks on one GPU), with the host
# test of the hop schedule (test_exec_hop) and the cuda executor's test (test_cuda_moe), whose
# kernels the nccl executor runs. Prints each result and a summary line; exits non-zero when any
# failed (77 when the nccl test could only skip: no device, or no nccl executor in the build).
# usage (from the repository root): scripts/gpu_check_nccl.sh BIN_DIR [NP]
#   BIN_DIR: a build directory configured with CUDA, NCCL and MPI found (its summary says
#   "NCCL executor : ON"), or the bin/ of a bundle made by scripts/gpu_bundle.sh (lib/ and
#   openmpi/ beside it) for a machine without the project's packages. The log also goes to
#   $OUT/gpu_check_nccl.log when OUT is set.
set -uo pipefail
bin=$(cd "${1:?usage: scripts/gpu_check_nccl.sh BIN_DIR [NP]}" && pwd)
np=${2:-1}
log=${OUT:+$OUT/gpu_check_nccl.log}
exec > >(tee ${log:-/dev/null}) 2>&1
echo "== scripts/gpu_check_nccl.sh $(date -u +%Y-%m-%dT%H:%MZ) np $np"
if [ -d "$bin/../lib" ]; then # a bundle: its libraries, the large ones gzipped
  lib=$(mktemp -d)
  cp "$bin"/../lib/* "$lib/"
  for z in "$lib"/*.gz; do [ -e "$z" ] && gunzip -f "$z"; done
  export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
if [ -d "$bin/../openmpi" ]; then # the bundle's Open MPI runtime (scripts/gpu_bundle.sh)
  export OPAL_PREFIX=$(cd "$bin/../openmpi" && pwd)
  export PATH="$OPAL_PREFIX/bin:$PATH"
  chmod +x "$OPAL_PREFIX"/bin/* 2>/dev/null || true
fi
# cuBLAS and NCCL of the machine's CUDA toolkit or of PyTorch's wheels (nvidia-cublas, nvidia-nccl-cu13)
for p in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib \
         "$(python3 -c 'import nvidia.cublas, os; print(os.path.join(list(nvidia.cublas.__path__)[0], "lib"))' 2>/dev/null)" \
         "$(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib"))' 2>/dev/null)"; do
  if [ -n "$p" ] && { [ -e "$p/libcublas.so.13" ] || [ -e "$p/libnccl.so.2" ]; }; then
    export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$p"
  fi
done
# NVLink multicast stays off (the executor also writes NCCL_NVLS_ENABLE=0 before making its communicator)
export NCCL_NVLS_ENABLE=0 OMP_NUM_THREADS=4
nvidia-smi -L 2>/dev/null || echo "(no nvidia-smi)"
for p in test_exec_nccl test_exec_hop test_cuda_moe; do
  [ -x "$bin/$p" ] || { echo "FAIL: $bin/$p is not there (build it: cmake --build BUILD --target $p)"; exit 1; }
done
missing=$(ldd "$bin/test_exec_nccl" | awk '/not found/ {print $1}' | tr '\n' ' ')
[ -z "$missing" ] || { echo "FAIL: libraries not found for test_exec_nccl: $missing(LD_LIBRARY_PATH=$LD_LIBRARY_PATH)"; exit 1; }
echo "NCCL: $(ldd "$bin/test_exec_nccl" | awk '/libnccl/ {print $3}')"
fails=0
step() { # name command...
  local name=$1; shift
  echo; echo "== $name: $*"
  local t0=$SECONDS rc
  "$@"; rc=$?
  case $rc in
    0) echo "== $name: ok ($((SECONDS - t0)) s)" ;;
    77) echo "== $name: SKIPPED (exit 77)"; [ "$name" = test_exec_nccl ] && nccl_skipped=1 ;;
    *) echo "== $name: FAILED (exit $rc)"; fails=$((fails + 1)) ;;
  esac
  return $rc
}
nccl_skipped=0
step test_exec_hop "$bin/test_exec_hop"
if command -v mpirun >/dev/null; then
  if ! step test_exec_nccl timeout 300 mpirun --allow-run-as-root -np "$np" -x NCCL_NVLS_ENABLE -x LD_LIBRARY_PATH \
       -x OMP_NUM_THREADS ${CARL_TEST_SEED:+-x CARL_TEST_SEED} "$bin/test_exec_nccl" && [ "$np" = 1 ] && [ $nccl_skipped = 0 ]; then
    # a second opinion without the launcher, to tell a launch problem from a test failure
    OMPI_MCA_ess_singleton_isolated=1 step test_exec_nccl_singleton timeout 300 "$bin/test_exec_nccl"
  fi
elif [ "$np" = 1 ]; then
  echo "(no mpirun here: one process, MPI initialised as a singleton)"
  OMPI_MCA_ess_singleton_isolated=1 step test_exec_nccl timeout 300 "$bin/test_exec_nccl"
else
  echo "FAIL: no mpirun for $np ranks"; fails=$((fails + 1))
fi
step test_cuda_moe timeout 300 "$bin/test_cuda_moe"
echo
echo "== done: $fails failed step(s)$([ $nccl_skipped = 1 ] && echo ', test_exec_nccl skipped')"
[ $fails -gt 0 ] && exit 1
[ $nccl_skipped = 1 ] && exit 77
exit 0
