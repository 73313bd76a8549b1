#!/usr/bin/env bash
# Lookahead on a GPU machine, in one go (not a test): what a lent GPU session runs.
#
#   scripts/gpu_lookahead.sh MODEL_DIR PROMPTS_DIR OUT_DIR
#
# MODEL_DIR: the bundled SmolLM2 converted (engine.convert); PROMPTS_DIR: code-edit.jsonl,
# shakespeare-quote.jsonl, sharegpt.jsonl and json-extract.jsonl (49 prompts each; scripts/stage_gpu.sh
# writes them and the rest a GPU machine needs); OUT_DIR: one log per step. Each step has its own time limit, so a
# stuck one leaves the others their time; a step stopped at its limit prints every thread's Python
# stack (faulthandler on SIGABRT), which is how a hang is located without a debugger.
#
# Steps, the most telling first (about 10 minutes in all): the engine's start-up probe in bf16 (is
# lookahead exact on this GPU?); the in-process lookahead A/B (scripts/bench_lookahead_engine.py) in
# bf16 at c=16, 4 and 1 on code-edit, ShareGPT and Shakespeare (transformers' prompt lookup beside
# c=1 on the copy-heavy two); the row-invariant kernels' tests compiled; a few rounds of
# launcher.engine_fuzz on CUDA (sampling and the options, checked). Where a tree's row
# departs from plain decoding, scripts/invariance_diag.py says at which op.
set -u
MODEL=$1 PROMPTS=$2 OUT=$3
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1
step() {  # step NAME SECONDS CMD...: run with a limit, keep the log, print its result lines
    local name=$1 limit=$2; shift 2
    timeout -s ABRT "$limit" "$@" >"$OUT/$name.log" 2>&1
    echo "== $name: rc $?"
    # drops the engine's INFO lines (" INFO engine.…"), keeps the fuzz's summary (" INFO __main__: …")
    grep -v -e ' INFO [a-z]' -e 'Loading weights' -e 'clean_up_tokenization' "$OUT/$name.log" | tail -14
}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
step probe 60 python3 -c "
import logging; logging.basicConfig(level=logging.INFO)
from engine.engine_config import EngineConfig
from engine.llm_engine import LLMEngine
e = LLMEngine(EngineConfig(model='$MODEL', device='cuda', dtype='bfloat16', num_kv_blocks=512, lookahead=True))
print('lookahead on (row-invariant):', e.speculator is not None)"
# one run a dataset, its engines loaded (and its kernels compiled) once: c=16 first (on an H200 it
# changed bf16 greedy output while c=1 held: mended, not yet re-run), then c=4 and c=1 (8 prompts,
# a step ~15 ms at any width there), transformers' prompt lookup beside c=1 on the copy-heavy ones;
# 40 prompts each, the warm-up prompt each file's last
B="python3 scripts/bench_lookahead_engine.py --device cuda --dtype bfloat16 --model $MODEL --threads 8 --concurrency 16,4,1 --num-prompts 16,16,8"
step code-edit 150 $B --dataset "jsonl:$PROMPTS/code-edit.jsonl" --hf-prompt-lookup
step sharegpt 110 $B --dataset "jsonl:$PROMPTS/sharegpt.jsonl"
step shakespeare-quote 170 $B --dataset "jsonl:$PROMPTS/shakespeare-quote.jsonl" --hf-prompt-lookup
step kernels 60 python3 -m pytest -q -x -p no:cacheprovider tests/kernels/test_invariant_kernels.py
# sampling on CUDA logits (seeds, filters, penalties, bias, bans, logprobs; regexes where xgrammar
# was staged), scheduled at random beside drafts, each request against its output alone: the
# benches above are greedy, and until session 36 a sampled request failed on a GPU (host tensors)
step fuzz 45 python3 -m launcher.engine_fuzz --model "$MODEL" --device cuda --rounds 4 --seed 36000
# last, and only where xgrammar was staged (scripts/stage_gpu.sh, call 0): structured output's mask
# on CUDA logits, lookahead on/off under json-extract's schema (greedy outputs compared)
if [ -f "$PROMPTS/json-extract.jsonl" ] && python3 -c "import xgrammar" 2>/dev/null; then
    step structured 50 $B --dataset "jsonl:$PROMPTS/json-extract.jsonl" --json-schema --concurrency 16,1 --num-prompts 16,8
fi
