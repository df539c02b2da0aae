#!/usr/bin/env bash
# One pass on a GPU machine: the engine's CUDA tests, then benchmarks/llm_engine.py on random-initialised models
# of real shapes (no weights can be fetched there). Each part has a time limit, so a slow or failing part still
# leaves the others' output.
#
#   bash benchmarks/gpu.sh OUT_DIR [TOKENIZER_DIR]
#
# OUT_DIR receives tests.log, one log per shape and the benchmark's JSON files. TOKENIZER_DIR holds the bundled
# tokenizer's files alone, for a machine without the bundled model's package (the tests and the benchmark use
# it instead). Environment: PYTHON (default python3), SHAPES (default "qwen2.5-1.5b llama-3-8b"), SESSIONS
# (default 1,8,32), ROUNDS (default 2), BENCH_S (time limit per shape, default 300), TESTS_S (default 240).
set -u
out=${1:?usage: bash benchmarks/gpu.sh OUT_DIR [TOKENIZER_DIR]}
tokenizer=${2:-}
python=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."

"$python" - <<'EOF' 2>&1 | tee "$out/device.log"
import torch, transformers
print("torch", torch.__version__, "transformers", transformers.__version__, "cuda", torch.cuda.is_available())
if torch.cuda.is_available():
    print(torch.cuda.get_device_name(), torch.cuda.get_device_properties(0).total_memory // 2**20, "MiB",
          "cudnn", torch.backends.cudnn.version())
EOF

METAGENT_TEST_TOKENIZER="$tokenizer" timeout "${TESTS_S:-240}" "$python" -m pytest -q -p no:cacheprovider \
    tests/llm/test_slots.py tests/llm/test_leanstep.py tests/llm/test_batching.py 2>&1 | tee "$out/tests.log"

for shape in ${SHAPES:-qwen2.5-1.5b llama-3-8b}; do
    before=$(date +%s)
    timeout "${BENCH_S:-300}" "$python" benchmarks/llm_engine.py --shape "$shape" ${tokenizer:+--tokenizer "$tokenizer"} \
        --sessions "${SESSIONS:-1,8,32}" --rounds "${ROUNDS:-2}" --parts throughput,first-token 2>&1 \
        | tee "$out/$shape.log"
    find benchmarks/results -name 'llm_engine-*.json' -newermt "@$before" -exec cp {} "$out/" \;
done
