# Device call 3 (about 9.5 minutes; docs/gpu_runs.md): issue 22 at 2K and 4K,
# every attention config (searched first), resuming call 2's records (or a
# carried copy of them: RESUME=path).
source scripts/gpu_calls/setup.sh
T0=$SECONDS; mkdir -p /tmp/o3
export PYTHONPATH=.:/tmp/site:.gl/site JAX_COMPILATION_CACHE_DIR=/tmp/jaxcache
M=.gl/SmolLM2-135M-Instruct.Q4_1.gguf
[ -f $M ] || python3 -m experiments.eval.device_files unpack || exit 3
python3 scripts/gpu_calls/searched_first.py configs/eval/smollm2_fidelity.yaml /tmp/fidelity.yaml
RESUME=${RESUME:-/tmp/o2/fidelity/results.jsonl}
timeout $((560-(SECONDS-T0))) python3 -m experiments.cli eval --config /tmp/fidelity.yaml \
  model.path=$M output_dir=/tmp/o3/fidelity 'lengths=[2048,4096]' \
  "resume_from=[$RESUME]" > /tmp/o3/eval2k4k.log 2>&1
echo "eval 2K/4K: rc=$? at $((SECONDS-T0)) s"; grep -v "it/s\]" /tmp/o3/eval2k4k.log | tail -25
echo "total $((SECONDS-T0)) s"; tar czf "$OUT/call3.tgz" -C /tmp/o3 .
