"""Throughput of the text and image encoders against a naive one-item-at-a-time loop.

Run: ``nice .venv/bin/python bench/bench_encoders.py [--texts 128] [--images 32] [--rounds 3]``.
Prints a markdown table: items per wall-clock second and per CPU second (this process plus its
DataLoader workers; the fairer number on a shared, loaded machine), each with the speed-up over
the naive loop measured in the same run on the same items. Uses the bundled all-MiniLM-L6-v2 and
EfficientNet-Lite0 on synthetic product texts and JPEG photos (480-900 px).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

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


class Timing(NamedTuple):
    wall: float  # seconds
    cpu: float  # CPU seconds of this process and of its finished children (DataLoader workers)


def timed(fn: Callable[[], object]) -> Timing:
    t0, c0 = time.perf_counter(), os.times()
    fn()
    c1 = os.times()
    cpu = (c1.user + c1.system + c1.children_user + c1.children_system) - (
        c0.user + c0.system + c0.children_user + c0.children_system)
    return Timing(time.perf_counter() - t0, cpu)


def interleaved(configs: dict[str, Callable[[], object]], rounds: int) -> dict[str, Timing]:
    """Best wall and best CPU time of each config over ``rounds`` rounds, configs interleaved.

    On a shared machine the load changes from minute to minute; running every config once per
    round and keeping the best of each spreads that noise evenly instead of onto whichever ran last.
    """
    best = {name: Timing(float("inf"), float("inf")) for name in configs}
    for _ in range(rounds):
        for name, fn in configs.items():
            t = timed(fn)
            best[name] = Timing(min(best[name].wall, t.wall), min(best[name].cpu, t.cpu))
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
    parser.add_argument("--texts", type=int, default=128)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    device = select_device(None)
    rows: list[tuple[str, str, str, int, Timing]] = []

    texts = synthetic_texts(args.texts)
    warm = TextEncoder(device=str(device))
    warm.encode(texts[:8])
    text_configs: dict[str, Callable[[], object]] = {"naive loop|1": lambda: naive_text(warm, texts)}
    for bs in (1, 16, 64):
        enc = TextEncoder(device=str(device), batch_size=bs)
        enc._tokenizer, enc._model = warm._tokenizer, warm._model  # same loaded model, new settings
        text_configs[f"TextEncoder|{bs}"] = lambda enc=enc: enc.encode(texts)  # type: ignore[misc]
    for key, t in interleaved(text_configs, args.rounds).items():
        mode, bs_text = key.split("|")
        rows.append(("text (MiniLM-L6)", mode, bs_text, len(texts), t))

    with tempfile.TemporaryDirectory() as tmp:
        paths = synthetic_images(Path(tmp), args.images)
        iwarm = ImageEncoder(device=str(device), num_workers=0)
        iwarm.encode(paths[:4])
        image_configs: dict[str, Callable[[], object]] = {"naive loop|1": lambda: naive_image(iwarm, paths)}
        for bs, workers in ((1, 0), (16, 0), (16, 1), (64, 1)):
            ienc = ImageEncoder(device=str(device), batch_size=bs, num_workers=workers)
            ienc._model = iwarm._model
            image_configs[f"ImageEncoder, {workers} worker(s)|{bs}"] = lambda ienc=ienc: ienc.encode(paths)  # type: ignore[misc]
        for key, t in interleaved(image_configs, args.rounds).items():
            mode, bs_text = key.split("|")
            rows.append(("image (EffNet-Lite0)", mode, bs_text, len(paths), t))

    print(f"device: {device}; torch threads: {torch.get_num_threads()}; {len(texts)} texts, {len(paths)} images; "
          f"best of {args.rounds} interleaved rounds; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs\n")
    print("| encoder | mode | batch | items/s (wall) | vs naive | items per CPU-s | vs naive |")
    print("|---|---|---:|---:|---:|---:|---:|")
    base: dict[str, Timing] = {}
    for name, mode, batch, n, t in rows:
        if mode == "naive loop":
            base[name] = t
        b = base[name]
        print(f"| {name} | {mode} | {batch} | {n / t.wall:,.1f} | {b.wall / t.wall:.2f}x | "
              f"{n / t.cpu:,.1f} | {b.cpu / t.cpu:.2f}x |")


if __name__ == "__main__":
    main()
