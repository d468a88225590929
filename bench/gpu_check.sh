#!/usr/bin/env bash
# Run ON THE GPU MACHINE (device tool), after bench/gpu_prepare.sh here, as:
#   run(command="bash bench/gpu_check.sh", carry=[".gpu"], timeout_s=540)
# It installs what the GPU image lacks from .gpu/, then times the GPU paths against the CPU in the
# same process: text and image encoders in bf16, GNN training in bf16, exact search on the GPU.
# Total budget: under 8 minutes. Results: $OUT/gpu_check.md (copy the table into BENCHMARKS.md).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
t_start=$(date +%s)
if [ "${GPU_CHECK_DRY:-0}" = 1 ]; then PY=.venv/bin/python; else PY=python3
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl || exit 1
# shopgraph is a namespace package over the four top-level folders (as pyproject's package-dir does)
mkdir -p /tmp/site/shopgraph
for p in graph encoders retrieval ui; do ln -sfn "$PWD/$p" /tmp/site/shopgraph/$p; done
export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"; fi
export OUT
$PY - <<'PY' 2>&1 | tee "$OUT/gpu_check.md"
import json, os, time, tempfile
from pathlib import Path
import numpy as np, torch
from transformers import AutoConfig, AutoModel

out = Path(os.environ["OUT"])
# GPU_CHECK_DRY=1 runs the same script on a CPU-only machine at toy sizes, to check it before a lease.
DRY = os.environ.get("GPU_CHECK_DRY") == "1"
GPU = "cpu" if DRY else "cuda"
S = 20 if DRY else 1
rows = []
def row(what, cpu, gpu, unit):
    ratio = gpu / cpu if cpu else float("nan")
    rows.append(f"| {what} | {cpu:,.1f} {unit} | {gpu:,.1f} {unit} | {ratio:.1f}x |")
    print(rows[-1], flush=True)

print(f"torch {torch.__version__}, cuda {torch.version.cuda}, {torch.cuda.get_device_name(0) if not DRY else 'dry run on CPU'}")
print("| path | CPU (16 cores) | H200 bf16 | GPU/CPU |\n|---|---|---|---|")

# 1. text encoder: MiniLM architecture (random weights: the real ones exceed the carry limit)
from shopgraph.encoders.text import TextEncoder
tmp = Path(tempfile.mkdtemp())
cfg = AutoConfig.from_pretrained(".gpu/minilm")
AutoModel.from_config(cfg).save_pretrained(tmp)
for f in Path(".gpu/minilm").iterdir():
    if f.name != "config.json":
        (tmp / f.name).write_bytes(f.read_bytes())
texts = [f"Solea leather yellow sandals size {i} breathable mesh upper true to size" for i in range(20000)]
speed = {}
for dev, n in (("cpu", 2000 // S), (GPU, 20000 // S)):
    enc = TextEncoder(tmp, device=dev, batch_size=256)
    enc.encode(texts[:256])
    t0 = time.perf_counter(); enc.encode(texts[:n]); speed[dev] = n / (time.perf_counter() - t0)
row("text encoder (MiniLM-L6 arch), items/s", speed["cpu"], speed[GPU], "items/s")

# 2. image encoder: EfficientNet-Lite0 with its real ImageNet weights
from PIL import Image
from shopgraph.encoders.image import ImageEncoder
imgdir = Path(tempfile.mkdtemp())
rng = np.random.default_rng(0)
paths = []
for i in range(2000 // S):
    p = imgdir / f"{i}.png"; Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(p); paths.append(p)
for dev, n in (("cpu", 300 // S), (GPU, 2000 // S)):
    enc = ImageEncoder(device=dev, batch_size=128 // S, num_workers=8 // S)
    enc.encode(paths[:128 // S])
    t0 = time.perf_counter(); enc.encode(paths[:n]); speed[dev] = n / (time.perf_counter() - t0)
row("image encoder (EfficientNet-Lite0), items/s", speed["cpu"], speed[GPU], "items/s")

# 3. GNN training on the 5,000-user synthetic shop (features: random text block, real stats)
from shopgraph.graph.synthetic import generate_shop
from shopgraph.graph.load import load_tables
from shopgraph.graph.build import build_graph
from shopgraph.encoders.featurize import featurize
from shopgraph.graph.train import TrainConfig, train
shop = Path(tempfile.mkdtemp()) / "shop"
generate_shop(shop, n_users=5000 // S, seed=0)
tables = load_tables(shop).tables
data = featurize(build_graph(tables), tables, use_text=False, use_image=False, progress=False).data
epochs = {"cpu": 3, GPU: 30 // S}
for dev in ("cpu", GPU):
    cfg = TrainConfig(epochs=epochs[dev], patience=10**6, held_out_folds=0)  # the held-out fraud fits are CPU trees
    t0 = time.perf_counter(); res = train(data, cfg, device=dev); sec = time.perf_counter() - t0
    speed[dev] = sec / epochs[dev]
    print(f"{dev}: {epochs[dev]} epochs in {sec:.1f}s; best val {getattr(res, 'best_val', None)}", flush=True)
rows.append(f"| GNN training, s/epoch (5,000-user shop, full batch) | {speed['cpu']:.2f} s | {speed[GPU]:.3f} s | {speed['cpu']/speed[GPU]:.1f}x faster |")
print(rows[-1])

# 4. retrieval: exact top-10 over 1M x 64 on the GPU (torch) vs CPU FAISS Flat and IVF
import faiss
from shopgraph.retrieval.index import ItemIndex
xb = rng.standard_normal((1_000_000 // S**2, 64), dtype=np.float32); xq = rng.standard_normal((1000, 64), dtype=np.float32)
print(f"faiss {faiss.__version__}: GPUs visible to faiss = {faiss.get_num_gpus()} (faiss-gpu not carried: needs cuBLAS 12)")
t0 = time.perf_counter(); idx = ItemIndex(use_gpu=False).fit(xb, np.arange(len(xb))); build = time.perf_counter() - t0
t0 = time.perf_counter(); idx.search(xq, 10); cpu_qps = len(xq) / (time.perf_counter() - t0)
dt = torch.float32 if DRY else torch.bfloat16
xb_t = torch.from_numpy(xb).to(GPU, dt); xq_t = torch.from_numpy(xq).to(GPU, dt)
sync = (lambda: None) if DRY else torch.cuda.synchronize
sync(); t0 = time.perf_counter()
for _ in range(10): (xq_t @ xb_t.T).topk(10, dim=1)
sync(); gpu_qps = 10 * len(xq) / (time.perf_counter() - t0)
row(f"top-10 search, {len(xb):,} x 64 (CPU: FAISS {idx.info()['factory']}, built in {build:.0f}s; GPU: exact bf16 matmul)", cpu_qps, gpu_qps, "q/s")
(out / "gpu_rows.md").write_text("\n".join(rows) + "\n")
PY
status=$?  # the python part's (pipefail: tee does not hide it)
echo "total $(( $(date +%s) - t_start ))s"
exit $status
