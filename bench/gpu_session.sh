#!/usr/bin/env bash
# One GPU-machine run for the scale issue's device items, prepared and tested on CPU (tests/test_gpu_check.py runs the
# same script paths at tiny sizes): the throughput steps of bench/gpu_check.py --throughput (the 1B reader, 8 x 20 x
# 256 and 16 x 10 x 256, bf16, ZeRO-3 on one GPU, eager and sdpa, the reader partitioned and whole: time, MFU per
# part, peak memory, the cost model's error), then the preprocessing scaling of bench/bench_preprocess.py over 1, 2, 4 and 8 Ray Data workers when Ray
# imports there. Budget: under 8 minutes (each stage has its own timeout), so that a rerun fits the device time.
#
# Prepare here, once per machine (.whl is git-ignored; the device image has torch but not these versions):
#   python3 -m pip wheel -q --no-deps --no-build-isolation -w .whl deepspeed==0.19.8      # from the venv with torch
#   python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#       transformers==5.24.0 tokenizers==0.23.3 hjson pydantic==2.14.4 pydantic-core==2.50.5 annotated-types \
#       typing-inspection typing_extensions
# (21 MB.) Ray's wheel (ray 2.60.0, 79 MB) is over what one device call carries (64 MiB), so the preprocessing
# stage runs only where Ray is already installed.
# Then run `bash bench/gpu_session.sh` on the device machine with .whl carried; results go to $OUT (else
# runs/gpu_session): gpu.txt, gpu_throughput.json and its log, preprocess.json or the reason it did not run.
set -uo pipefail
out=${OUT:-runs/gpu_session}
mkdir -p "$out"
if ls .whl/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" 2>&1
python3 -c "import torch, transformers, deepspeed; print(torch.__version__, transformers.__version__, \
deepspeed.__version__)" >> "$out/gpu.txt" 2>&1
timeout 330 python3 bench/gpu_check.py --throughput --readers llama --attn eager sdpa --partition-reader on off \
  --out "$out/gpu_throughput.json" > "$out/gpu_throughput.log" 2>&1
echo "gpu_check --throughput: exit $?"
if python3 -c "import ray" 2> /dev/null; then
  timeout 150 python3 bench/bench_preprocess.py --workers 1 2 4 8 --repeats 1 --questions 8000 \
    --out /tmp/bench_preprocess > "$out/preprocess.log" 2>&1
  echo "bench_preprocess: exit $?"
  cp /tmp/bench_preprocess/result.json "$out/preprocess.json" 2> /dev/null
else
  echo "ray does not import here: the preprocessing scaling did not run" | tee "$out/preprocess.log"
fi
