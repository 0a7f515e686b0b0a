#!/usr/bin/env bash
# First device run: build PTX, resource report, correctness, sanitizer, throughput, ncu.
set -uo pipefail
K=crates/vram-cuda-sys/kernels
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
nvcc --version | tail -2
for k in sha256_tree load_gemm; do
  nvcc -ptx -O3 -arch=compute_75 -o $OUT/$k.ptx $K/$k.cu || exit 1
  nvcc -cubin -O3 -arch=sm_90 -Xptxas -v -o /tmp/$k.cubin $K/$k.cu 2>&1 | grep -E 'registers|spill' 
done
head -20 $OUT/sha256_tree.ptx | grep -E 'version|target'
python3 $K/check_kernels.py --ptx-dir $OUT 2>&1 | tee $OUT/check.log
compute-sanitizer --tool memcheck python3 $K/check_kernels.py --small --ptx-dir $OUT 2>&1 | tail -4 | tee $OUT/sanitizer.log
ncu --kernel-name sha256_leaves --launch-count 1 --section SpeedOfLight --section Occupancy --section ComputeWorkloadAnalysis python3 $K/check_kernels.py --ncu --ptx-dir $OUT > $OUT/ncu.log 2>&1
grep -E 'Duration|Throughput|Occupancy|Registers|Issue|Executed Ipc|Block Size|Grid Size' $OUT/ncu.log | head -30
