#!/usr/bin/env bash
# Bundle the GPU test and benchmark programs of a build with the shared libraries they need that a
# bare CUDA machine may lack (cJSON, OpenBLAS, cmocka, Open MPI, the GCC runtimes; not the CUDA
# libraries nor NCCL, which the machine's toolkit or its Python wheels provide), for
# bench/gpu/run.sh and scripts/gpu_check_nccl.sh on such a machine. With Open MPI installed here,
# its runtime travels too (OUT_DIR/openmpi: mpirun, orted, the MCA components and their help
# texts, laid out under one prefix for OPAL_PREFIX), so that MPI_Init and mpirun work there.
# usage: scripts/gpu_bundle.sh BUILD_DIR OUT_DIR      (OUT_DIR/bin, OUT_DIR/lib, OUT_DIR/openmpi)
set -euo pipefail
build=$1; out=$2
mkdir -p "$out/bin" "$out/lib"
progs="test_cuda_route test_cuda_moe gpu_route gpu_moe gpu_moe_dump test_exec_nccl test_exec_hop"
for p in $progs; do cp "$build/$p" "$out/bin/"; done
deps=$(for p in $progs; do ldd "$build/$p"; done)
# the Open MPI runtime, under one prefix (Debian: prefix /usr, components in
# /usr/lib/<triplet>/openmpi/lib/openmpi3, help texts in /usr/share/openmpi)
if command -v ompi_info >/dev/null && command -v orterun >/dev/null; then
  path() { ompi_info --path "$1" --parsable | sed -n "s/^path:$1://p"; }
  prefix=$(path prefix); pkglib=$(path pkglibdir); pkgdata=$(path pkgdatadir)
  rel_lib=${pkglib#"$prefix"/}; rel_data=${pkgdata#"$prefix"/}
  mkdir -p "$out/openmpi/bin" "$out/openmpi/$rel_lib" "$out/openmpi/$rel_data"
  cp "$pkglib"/*.so "$out/openmpi/$rel_lib/"
  cp -r "$pkgdata"/. "$out/openmpi/$rel_data/"
  cp "$(command -v orterun)" "$out/openmpi/bin/mpirun"
  cp "$(command -v orted)" "$out/openmpi/bin/orted"
  deps="$deps
$(for f in "$pkglib"/*.so "$(command -v orterun)" "$(command -v orted)"; do ldd "$f"; done)"
  # libraries beside libmpi that the components link by path (libmca_common_*)
  for f in "$(dirname "$pkglib")"/libmca_common_*.so*; do [ -e "$f" ] && cp -L "$f" "$out/lib/"; done
fi
echo "$deps" | awk '/=> \// {print $3}' | sort -u | while read -r lib; do
  case $(basename "$lib") in
    libc.so*|libm.so*|libdl.so*|librt.so*|libpthread.so*|ld-linux*|libstdc++.so*|libgcc_s.so*|libcuda.so*|libcublas*|libcudart*|libnccl*|libnvidia*) ;;
    *) cp -L "$lib" "$out/lib/" ;;
  esac
done
for f in "$out"/lib/*; do
  if [ "$(stat -c %s "$f")" -gt 4000000 ]; then gzip -f "$f"; fi
done
ls -la "$out/bin" "$out/lib"
du -sh "$out"
