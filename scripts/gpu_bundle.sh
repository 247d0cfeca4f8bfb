#!/usr/bin/env bash
# Bundle the GPU test and benchmark programs of a build with the shared libraries they need that a
# bare CUDA machine may lack (cJSON, OpenBLAS, cmocka, the GCC runtimes; not the CUDA libraries,
# which the machine's toolkit provides), for bench/gpu/run.sh on such a machine.
# usage: scripts/gpu_bundle.sh BUILD_DIR OUT_DIR      (OUT_DIR/bin, OUT_DIR/lib)
set -euo pipefail
build=$1; out=$2
mkdir -p "$out/bin" "$out/lib"
progs="test_cuda_route test_cuda_moe gpu_route gpu_moe gpu_moe_dump"
for p in $progs; do cp "$build/$p" "$out/bin/"; done
for p in $progs; do ldd "$build/$p"; done | awk '/=> \// {print $3}' | sort -u | while read -r lib; do
  case $(basename "$lib") in
    libc.so*|libm.so*|libdl.so*|librt.so*|libpthread.so*|ld-linux*|libstdc++.so*|libgcc_s.so*|libcuda.so*|libcublas*|libcudart*) ;;
    *) cp -L "$lib" "$out/lib/" ;;
  esac
done
for f in "$out"/lib/*; do
  if [ "$(stat -c %s "$f")" -gt 4000000 ]; then gzip -f "$f"; fi
done
ls -la "$out/bin" "$out/lib"
