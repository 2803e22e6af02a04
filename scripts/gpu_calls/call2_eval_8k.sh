# Device call 2 (about 9.5 minutes; docs/gpu_runs.md). Carry: .gl/smollm2.part2
# (part 1 and the wheels are parked by call 1 while the machine stays warm).
# Issue 22 at 8K: the searched config (its layers share one compiled step), then
# the perplexities the earlier run left out, resuming the committed records.
source scripts/gpu_calls/setup.sh
T0=$SECONDS; mkdir -p /tmp/o2
python3 -m experiments.eval.device_files unpack || exit 3
export PYTHONPATH=.:/tmp/site:.gl/site JAX_COMPILATION_CACHE_DIR=/tmp/jaxcache
M=.gl/SmolLM2-135M-Instruct.Q4_1.gguf
python3 scripts/gpu_calls/searched_first.py configs/eval/smollm2_fidelity.yaml /tmp/fidelity.yaml
timeout $((560-(SECONDS-T0))) python3 -m experiments.cli eval --config /tmp/fidelity.yaml \
  model.path=$M output_dir=/tmp/o2/fidelity 'lengths=[8192]' \
  'run_attention=[searched,vs_scaled,a_shape_scaled,bs_scaled]' \
  'resume_from=[experiments/results/eval_smollm2_fidelity_h100.jsonl]' > /tmp/o2/eval8k.log 2>&1
echo "eval 8K: rc=$? at $((SECONDS-T0)) s"; grep -v "it/s\]" /tmp/o2/eval8k.log | tail -25
echo "total $((SECONDS-T0)) s"; tar czf "$OUT/call2.tgz" -C /tmp/o2 .
