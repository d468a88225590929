"""Throughput of the text and image encoders against a naive one-item-at-a-time loop.

Run: ``nice .venv/bin/python bench/bench_encoders.py [--texts 512] [--images 96]``. Prints a
markdown table (items/s and the speed-up over the naive loop measured in the same run). Uses the
bundled all-MiniLM-L6-v2 and EfficientNet-Lite0 on synthetic product texts and JPEG photos.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from shopgraph.encoders.device import select_device
from shopgraph.encoders.image import ImageEncoder, efficientnet_preprocess
from shopgraph.encoders.text import TextEncoder

WORDS = (
    "red blue green running shoes leather jacket cotton shirt wireless headphones laptop charger usb cable "
    "gift card phone case kitchen knife steel water bottle yoga mat book novel lamp desk chair comfortable "
    "durable lightweight waterproof premium classic modern vintage size small medium large pack of two"
).split()


def synthetic_texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        title = " ".join(rng.choice(WORDS, rng.integers(2, 7)))
        desc = " ".join(rng.choice(WORDS, rng.integers(0, 80)))  # lengths vary a lot, like real shops
        out.append(f"{title}. {rng.choice(['shoes', 'electronics', 'books', 'home'])}. {desc}")
    return out


def synthetic_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for k in range(n):
        w, h = int(rng.integers(480, 900)), int(rng.integers(480, 900))
        img = Image.new("RGB", (w, h), tuple(int(c) for c in rng.integers(150, 255, 3)))
        draw = ImageDraw.Draw(img)
        for _ in range(12):
            x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
            r = int(rng.integers(20, 120))
            draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        path = folder / f"img{k:04d}.jpg"
        img.save(path, quality=90)
        paths.append(path)
    return paths


def timed(fn: Callable[[], object], repeats: int = 1) -> float:
    """Best wall time of ``repeats`` runs (seconds)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def naive_text(enc: TextEncoder, texts: list[str]) -> None:
    """What one writes first: tokenize, run and pool one text at a time, no inference_mode."""
    enc._load()
    tok, model = enc._tokenizer, enc._model
    for t in texts:
        batch = tok([t], truncation=True, max_length=enc.max_length, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        _ = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1)


def naive_image(enc: ImageEncoder, paths: list[Path]) -> None:
    """Open, preprocess (full-size decode) and run one image at a time in this process."""
    enc._load()
    for p in paths:
        img = Image.open(p).convert("RGB")
        with torch.no_grad():
            feats = enc._model.extract_features(efficientnet_preprocess(img)[None]).mean(dim=(2, 3))
        _ = torch.nn.functional.normalize(feats, dim=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--naive-fraction", type=float, default=0.25, help="share of items timed in the naive loop")
    args = parser.parse_args()
    device = select_device(None)
    rows: list[tuple[str, str, str, float, float]] = []

    texts = synthetic_texts(args.texts)
    warm = TextEncoder(device=str(device))
    warm.encode(texts[:8])
    n_naive = max(8, int(len(texts) * args.naive_fraction))
    naive_rate = n_naive / timed(lambda: naive_text(warm, texts[:n_naive]))
    rows.append(("text (MiniLM-L6)", "naive loop", "1", naive_rate, 1.0))
    for bs in (1, 16, 64):
        enc = TextEncoder(device=str(device), batch_size=bs)
        enc._tokenizer, enc._model = warm._tokenizer, warm._model  # same loaded model, new settings
        rate = len(texts) / timed(lambda enc=enc: enc.encode(texts))  # type: ignore[misc]
        rows.append(("text (MiniLM-L6)", "TextEncoder", str(bs), rate, rate / naive_rate))

    with tempfile.TemporaryDirectory() as tmp:
        paths = synthetic_images(Path(tmp), args.images)
        iwarm = ImageEncoder(device=str(device), num_workers=0)
        iwarm.encode(paths[:4])
        n_naive = max(8, int(len(paths) * args.naive_fraction))
        naive_rate = n_naive / timed(lambda: naive_image(iwarm, paths[:n_naive]))
        rows.append(("image (EffNet-Lite0)", "naive loop", "1", naive_rate, 1.0))
        for bs, workers in ((1, 0), (16, 0), (16, 1), (64, 1)):
            ienc = ImageEncoder(device=str(device), batch_size=bs, num_workers=workers)
            ienc._model = iwarm._model
            rate = len(paths) / timed(lambda ienc=ienc: ienc.encode(paths))  # type: ignore[misc]
            rows.append(("image (EffNet-Lite0)", f"ImageEncoder, {workers} worker(s)", str(bs), rate, rate / naive_rate))

    print(f"device: {device}; torch threads: {torch.get_num_threads()}; {len(texts)} texts, {len(paths)} images\n")
    print("| encoder | mode | batch | items/s | vs naive |")
    print("|---|---|---:|---:|---:|")
    for name, mode, batch, rate, ratio in rows:
        print(f"| {name} | {mode} | {batch} | {rate:,.1f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
