# Sourced at the start of every device call (docs/gpu_runs.md): installs the
# wheels the GPU image lacks, copies MInference's configs where the library
# reads them, and records the device and versions in $OUT/gpu.txt.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
  --upgrade --target /tmp/site .whl/eval/*.whl >/dev/null 2>&1
export PYTHONPATH=.:/tmp/site PYTHONUNBUFFERED=1
mkdir -p ../shared/data && cp -r .device_cache/minference_configs ../shared/data/ 2>/dev/null
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$OUT/gpu.txt"
python3 -c "import jax, jaxlib; print('jax', jax.__version__, jaxlib.__version__, jax.devices())" | tee -a "$OUT/gpu.txt"
