#!/usr/bin/env bash
# The one script to run when a GPU machine is lent (docs/gpu.md): GPU tests and the GPU bench,
# every result under $OUT. Runs as it is on a box with numpy, CuPy, msgpack, safetensors and
# pytest (hypothesis, which the op tables import, travels in .gpu-deps: `pip install --target
# .gpu-deps hypothesis==6.112.0` here, a pure-Python release that runs on any Python 3, then carry it). About 5 minutes
# on an H200 (tests ~1.5 min, bench ~3 min); each part has its own time limit so a slow part cannot eat the others.
# Outputs: env.txt, gpu-models.txt, gpu-new.txt (update groups, piecewise CUDA graphs), gpu-ops-{0,1}.txt,
# gpu-misc.txt, gpu-bench.txt (+ .log), and the junit XML of each test process.
set -u
OUT=${OUT:-/tmp/kf-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD:$PWD/.gpu-deps
export PYTHONDONTWRITEBYTECODE=1
PY=${PY:-python}
{
  date -u; nvidia-smi -L; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  $PY -V
  $PY - <<'PYEOF'
import importlib.util
for m in ("numpy", "cupy", "scipy", "torch", "numba", "mpi4py", "tornado", "hypothesis"):
    spec = importlib.util.find_spec(m)
    v = "-"
    if spec is not None:
        try:
            v = getattr(__import__(m), "__version__", "?")
        except Exception as e:
            v = f"import failed: {e}"
    print(f"{m}: {v}")
import cupy
print("cuda runtime", cupy.cuda.runtime.runtimeGetVersion(), "devices", cupy.cuda.runtime.getDeviceCount())
try:
    from cupy.cuda import nccl
    print("nccl", nccl.get_version())
except Exception as e:
    print("nccl unavailable:", e)
PYEOF
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# Phase A, correctness, four processes at once (NVRTC compiles are CPU-bound; the GPU is shared):
# the model-level tests, the new parts and the op table in two shards.
# The new parts (the CuPy update-group kernel, piecewise CUDA graphs: written, not yet run on a GPU)
# have their own process, with the durations of their slowest tests and the log of what was refused.
PT="$PY -m pytest -p no:cacheprovider -m gpu -q -rfEs"
date -u
timeout 240 $PT tests/gpu/test_cupy_models.py tests/compiler/test_controls.py \
  --junitxml="$OUT/gpu-models.xml" > "$OUT/gpu-models.txt" 2>&1 &
timeout 240 $PT tests/gpu/test_multi_update_gpu.py tests/gpu/test_cuda_graphs.py --durations=8 \
  -o log_level=INFO --log-file="$OUT/gpu-new.log" \
  --junitxml="$OUT/gpu-new.xml" > "$OUT/gpu-new.txt" 2>&1 &
KF_GPU_SHARD=0/2 timeout 240 $PT tests/gpu/test_cupy.py --junitxml="$OUT/gpu-ops-0.xml" > "$OUT/gpu-ops-0.txt" 2>&1 &
KF_GPU_SHARD=1/2 timeout 240 $PT tests/gpu/test_cupy.py --junitxml="$OUT/gpu-ops-1.xml" > "$OUT/gpu-ops-1.txt" 2>&1 &
wait
tail -n 40 "$OUT"/gpu-new.txt
tail -n 25 "$OUT"/gpu-models.txt "$OUT"/gpu-ops-0.txt "$OUT"/gpu-ops-1.txt
date -u

# The rest of the gpu-marked tests (the NCCL backend needs mpi4py, the dataset one a server
# fixture's imports): whatever collects on this box.
timeout 60 $PT tests/runtime_server/distributed/test_nccl.py \
  "tests/runtime_server/test_datasets.py::test_dataset_resident_on_gpu_when_runtime_default_is_gpu" \
  > "$OUT/gpu-misc.txt" 2>&1
tail -n 8 "$OUT/gpu-misc.txt"

# Phase B, speed, alone on the machine (KF_GPU_BENCH=0 leaves it out).
[ "${KF_GPU_BENCH:-1}" = 0 ] && { date -u; exit 0; }
timeout 240 $PY bench/gpu_steps.py ${KF_GPU_BENCH_ARGS:---rounds 5 --block 0.3} > "$OUT/gpu-bench.txt" 2> "$OUT/gpu-bench.log"
cat "$OUT/gpu-bench.txt"; tail -n 5 "$OUT/gpu-bench.log"
date -u
