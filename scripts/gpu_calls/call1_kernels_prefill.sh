# Device call 1 (about 9.5 minutes; docs/gpu_runs.md). Carry: .whl/eval,
# .device_cache/head_indices, .device_cache/minference_configs,
# .gl/smollm2.part1, .gl/smollm2.sha256 (part 1 parks for call 2).
# Issue 16: the 1M tests and the non-finite guard beside the sparse ops.
# Issue 21: case (a), Vertical-Slash estimated online, at 1M with the phase
# breakdown; the kernel crossover per implementation; case (a) at 128K.
source scripts/gpu_calls/setup.sh
T0=$SECONDS; mkdir -p /tmp/o1
XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 130 make gpu-test GPU_TEST_PART=4 \
  GPU_TEST_ARGS="-rs" > /tmp/o1/gpu_tests_1m.log 2>&1
echo "gpu-test part 4: rc=$? at $((SECONDS-T0)) s"; tail -8 /tmp/o1/gpu_tests_1m.log
timeout 170 python3 scripts/bench_finite_guard.py /tmp/o1/guard 131072 \
  vertical_slash block_sparse a_shape > /tmp/o1/guard.log 2>&1
echo "guard: rc=$? at $((SECONDS-T0)) s"; tail -12 /tmp/o1/guard.log
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.95  # 1M needs 64 GiB of an 80 GB card
C=configs/experiments/prefill_llama3_8b_speed.yaml
R=experiments/results/prefill_llama3_8b_h100.json
timeout $((440-(SECONDS-T0))) python3 -m experiments.cli bench-prefill --config $C \
  out_dir=/tmp/o1/prefill name=prefill_llama3_8b_h100 resume_from=$R \
  'seq_lens=[1048576]' 'only=[vs_online]' 'phases=[vs_online]' \
  'phase_lens=[1048576]' > /tmp/o1/prefill_1m.log 2>&1
echo "prefill 1M: rc=$? at $((SECONDS-T0)) s"; grep -v "it/s\]" /tmp/o1/prefill_1m.log | tail -15
unset XLA_PYTHON_CLIENT_MEM_FRACTION
timeout $((500-(SECONDS-T0))) python3 -m experiments.cli bench-kernels \
  'kv_heads=[8]' 'seq_lens=[131072]' 'crossover_lens=[8192,16384,32768,65536]' \
  'patterns=[vertical_slash,block_sparse,a_shape]' flash_max_len=0 \
  'kernel_impls=[triton,mosaic_gpu]' budget_s=1 max_repeats=5 \
  out_dir=/tmp/o1/xover name=kernel_crossover_h100 > /tmp/o1/xover.log 2>&1
echo "crossover: rc=$? at $((SECONDS-T0)) s"; grep -v "it/s\]" /tmp/o1/xover.log | tail -6
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.95
[ -f /tmp/o1/prefill/prefill_llama3_8b_h100.json ] && R=/tmp/o1/prefill/prefill_llama3_8b_h100.json
timeout $((560-(SECONDS-T0))) python3 -m experiments.cli bench-prefill --config $C \
  out_dir=/tmp/o1/prefill name=prefill_llama3_8b_h100 resume_from=$R \
  'seq_lens=[131072]' 'only=[vs_online]' 'phases=[vs_online]' > /tmp/o1/prefill_128k.log 2>&1
echo "prefill 128K: rc=$? at $((SECONDS-T0)) s"; grep -v "it/s\]" /tmp/o1/prefill_128k.log | tail -8
echo "total $((SECONDS-T0)) s"; tar czf "$OUT/call1.tgz" -C /tmp/o1 .
