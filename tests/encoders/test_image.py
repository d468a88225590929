"""ImageEncoder: every kind of bad file, preprocessing, a tiny random ViT, and (slow) EfficientNet-Lite0."""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from shopgraph.encoders.image import ImageEncoder, efficientnet_preprocess, load_rgb, to_rgb


def make_tiny_vit(folder: Path, seed: int = 0) -> Path:
    """Save a randomly initialised 1-layer ViT (32x32 input) and its PIL image processor."""
    from transformers import ViTConfig, ViTModel
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32,
    )
    ViTModel(config).save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_vit(tmp_path_factory.mktemp("tiny_vit"))


def stripes(seed: int, size: tuple[int, int] = (120, 90)) -> Image.Image:
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    step = int(rng.integers(10, 20))
    for x in range(int(rng.integers(0, 8)), size[0], step):
        draw.rectangle([x, 0, x + 4, size[1]], fill=tuple(int(c) for c in rng.integers(0, 120, 3)))
    return img


def circles(seed: int, size: tuple[int, int] = (120, 90)) -> Image.Image:
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    for _ in range(5):
        x, y = (int(v) for v in rng.integers(10, min(size) - 10, 2))
        r = int(rng.integers(8, 25))
        draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(c) for c in rng.integers(100, 255, 3)))
    return img


def png_claiming_size(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header declares width x height (a decompression bomb as PIL sees it)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
                     + chunk(b"IEND", b""))
    return path


def _encode(encoder: ImageEncoder, paths: list[Path | None]):  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return encoder.encode(paths)


@pytest.fixture
def good_jpg(tmp_path: Path) -> Path:
    stripes(0).save(tmp_path / "good.jpg")
    return tmp_path / "good.jpg"


def _bad_file(kind: str, folder: Path) -> Path:
    if kind == "missing":
        return folder / "does_not_exist.jpg"
    if kind == "not_an_image":
        (folder / "x.jpg").write_text("this is text, not a JPEG")
        return folder / "x.jpg"
    if kind == "truncated_jpeg":
        stripes(1, (300, 200)).save(folder / "full.jpg")
        data = (folder / "full.jpg").read_bytes()
        (folder / "cut.jpg").write_bytes(data[: len(data) // 2])
        return folder / "cut.jpg"
    if kind == "truncated_png":
        circles(1, (300, 200)).save(folder / "full.png")
        data = (folder / "full.png").read_bytes()
        (folder / "cut.png").write_bytes(data[: len(data) // 2])
        return folder / "cut.png"
    if kind == "bomb":  # 100k x 100k: beyond both max_pixels and Pillow's own limit
        return png_claiming_size(folder / "bomb.png", 100_000, 100_000)
    if kind == "over_max_pixels":  # 60M pixels: over the default max_pixels, under Pillow's limit
        return png_claiming_size(folder / "big.png", 10_000, 6_000)
    if kind == "directory":
        (folder / "adir.jpg").mkdir()
        return folder / "adir.jpg"
    raise KeyError(kind)


@pytest.mark.parametrize(
    ("case", "kind"),
    [
        ("missing", "missing"),
        ("not_an_image", "not_an_image"),
        ("truncated_jpeg", "truncated"),
        ("truncated_png", "truncated"),
        ("bomb", "too_large"),
        ("over_max_pixels", "too_large"),
        ("directory", "unreadable"),
    ],
)
@pytest.mark.parametrize("num_workers", [0, 1])
def test_bad_files_are_counted_not_fatal(
    tiny_vit: Path, tmp_path: Path, good_jpg: Path, case: str, kind: str, num_workers: int
) -> None:
    bad = _bad_file(case, tmp_path)
    enc = ImageEncoder(tiny_vit, num_workers=num_workers, batch_size=2)
    with pytest.warns(UserWarning, match=f"1 of 3 image files could not be encoded \\({kind}: 1"):
        res = enc.encode([good_jpg, bad, good_jpg])
    assert res.ok.tolist() == [True, False, True]
    assert res.problems == {kind: 1}
    assert res.first_problem == {kind: str(bad)}
    assert res.kinds == [(), (kind,), ()]
    assert np.all(res.embeddings[1] == 0)
    np.testing.assert_allclose(np.linalg.norm(res.embeddings[[0, 2]], axis=1), 1.0, rtol=1e-5)


def test_no_image_is_counted_without_a_warning(tiny_vit: Path, good_jpg: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = ImageEncoder(tiny_vit).encode([None, good_jpg, None])
    assert res.ok.tolist() == [False, True, False]
    assert res.problems == {"no_image": 2}


def test_max_pixels_is_checked_from_the_header(tiny_vit: Path, tmp_path: Path) -> None:
    stripes(0, (200, 100)).save(tmp_path / "a.png")  # 20,000 pixels
    res = _encode(ImageEncoder(tiny_vit, max_pixels=19_999), [tmp_path / "a.png"])
    assert res.problems == {"too_large": 1}
    res = _encode(ImageEncoder(tiny_vit, max_pixels=20_000), [tmp_path / "a.png"])
    assert res.problems == {} and res.ok.all()


def _converted(tmp_path: Path, case: str) -> Path:
    base = circles(3)
    if case == "grayscale":
        img = base.convert("L")
    elif case == "grayscale16":
        arr = (np.asarray(base.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
        img = Image.fromarray(arr, mode="I;16")
    elif case == "cmyk":
        img = base.convert("CMYK")
    elif case == "rgba":
        img = base.convert("RGBA")
        img.putalpha(Image.new("L", base.size, 100))
    elif case == "la":
        img = base.convert("LA")
        img.putalpha(Image.new("L", base.size, 0))
    elif case == "palette":
        img = base.convert("P")
    elif case == "palette_transparent":  # index 0 (the background) is transparent
        img = Image.new("P", base.size, 0)
        img.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * 759)
        ImageDraw.Draw(img).ellipse([10, 10, 60, 60], fill=1)
        ImageDraw.Draw(img).rectangle([70, 20, 100, 80], fill=2)
    else:
        raise KeyError(case)
    path = tmp_path / f"{case}.{'jpg' if case == 'cmyk' else 'png'}"
    if case == "palette_transparent":
        img.save(path, transparency=0)
    else:
        img.save(path)
    return path


@pytest.mark.parametrize(
    ("case", "kinds"),
    [
        ("grayscale", {"converted_grayscale": 1}),
        ("grayscale16", {"converted_grayscale": 1}),
        ("cmyk", {"converted_cmyk": 1}),
        ("rgba", {"converted_transparent": 1}),
        ("la", {"converted_grayscale": 1, "converted_transparent": 1}),
        ("palette", {"converted_palette": 1}),
        ("palette_transparent", {"converted_transparent": 1}),
    ],
)
def test_conversions_are_encoded_and_counted(tiny_vit: Path, tmp_path: Path, case: str, kinds: dict[str, int]) -> None:
    path = _converted(tmp_path, case)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a conversion is not a failure: no warning
        res = ImageEncoder(tiny_vit, num_workers=0).encode([path])
    assert res.ok.tolist() == [True]
    assert res.problems == kinds
    assert set(res.first_problem.values()) == {str(path)}
    assert np.isclose(np.linalg.norm(res.embeddings[0]), 1.0, rtol=1e-5)


def test_transparency_is_composited_on_white(tmp_path: Path) -> None:
    img = Image.new("RGBA", (10, 10), (255, 0, 0, 255))
    img.paste((0, 0, 0, 0), (0, 0, 5, 10))  # left half fully transparent black
    img.save(tmp_path / "t.png")
    rgb, kinds = load_rgb(tmp_path / "t.png", max_pixels=10**6, draft_size=256)
    assert rgb is not None and rgb.mode == "RGB" and kinds == ["converted_transparent"]
    assert rgb.getpixel((1, 1)) == (255, 255, 255)
    assert rgb.getpixel((8, 8)) == (255, 0, 0)


def test_sixteen_bit_grayscale_keeps_its_contrast(tmp_path: Path) -> None:
    arr = np.zeros((8, 8), dtype=np.uint16)
    arr[:, 4:] = 65535
    Image.fromarray(arr, mode="I;16").save(tmp_path / "g16.png")
    rgb, _ = load_rgb(tmp_path / "g16.png", max_pixels=10**6, draft_size=256)
    assert rgb is not None
    assert rgb.getpixel((0, 0)) == (0, 0, 0) and rgb.getpixel((7, 0)) == (255, 255, 255)


# -- one conversion for the build and the query (to_rgb) --------------------------------------------
GRADIENT16 = np.tile(np.linspace(0, 65535, 256).round(), (32, 1))  # left black to right white, 16 bits


def deep_gray_file(folder: Path, dtype: type) -> Path:
    """``GRADIENT16`` as a 16-bit PNG (``I;16``), a 32-bit integer TIFF (``I``) or a float TIFF (``F``)."""
    path = folder / f"gradient_{np.dtype(dtype).name}.{'png' if dtype is np.uint16 else 'tif'}"
    Image.fromarray(GRADIENT16.astype(dtype)).save(path)
    return path


def exif_rotated_jpeg(path: Path) -> Path:
    """A phone photo held upright: stored 200x100 (red left half, blue right half) with EXIF
    orientation 6 (rotate 90 degrees clockwise to show), so upright it is 100x200, red on top."""
    stored = Image.new("RGB", (200, 100), (220, 20, 20))
    stored.paste((20, 20, 220), (100, 0, 200, 100))
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(path, "JPEG", exif=exif, quality=95)
    return path


def cutout(path: Path, mode: str) -> Path:
    """A red disc on a fully transparent black background, as RGBA, LA or a palette with a transparent index."""
    img = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    ImageDraw.Draw(img).ellipse([10, 10, 30, 30], fill=(200, 0, 0, 255))
    if mode == "LA":
        img = img.convert("LA")
    if mode == "P":
        pal = Image.new("P", img.size, 0)
        pal.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)
        ImageDraw.Draw(pal).ellipse([10, 10, 30, 30], fill=1)
        pal.save(path, transparency=0)
        return path
    img.save(path)
    return path


def noise_rgb(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(path, quality=90)
    return path


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.float32])
def test_deep_grayscale_keeps_its_gradient(tmp_path: Path, dtype: type) -> None:
    path = deep_gray_file(tmp_path, dtype)
    rgb, kinds = load_rgb(path, max_pixels=10**6, draft_size=256)
    assert rgb is not None and rgb.mode == "RGB" and kinds == ["converted_grayscale"]
    arr = np.asarray(rgb)
    assert len(np.unique(arr)) >= 250  # not clipped to a few values
    assert abs(arr.mean() - GRADIENT16.mean() * 255 / 65535) < 1
    assert arr[0, 0].tolist() == [0, 0, 0] and arr[0, -1].tolist() == [255, 255, 255]


def test_sixteen_bit_scaling_is_the_formula_cached_embeddings_were_made_with() -> None:
    """Every 16-bit value maps as the build always mapped it (float64 ``v * 255 / 65535``, floored):
    the image cache is keyed by file content, so a different rounding would leave stale vectors."""
    v = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    got = np.asarray(to_rgb(Image.fromarray(v)))[..., 0]
    np.testing.assert_array_equal(got, np.clip(v * (255.0 / 65535.0), 0, 255).astype(np.uint8))
    small = np.arange(256, dtype=np.uint16).reshape(16, 16)  # 8-bit data in a 16-bit container: kept
    np.testing.assert_array_equal(np.asarray(to_rgb(Image.fromarray(small)))[..., 0], small)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    path = exif_rotated_jpeg(tmp_path / "phone.jpg")
    for rgb in (load_rgb(path, max_pixels=10**6, draft_size=256)[0], to_rgb(Image.open(path))):
        assert rgb is not None and rgb.size == (100, 200)
        top, bottom = rgb.getpixel((50, 20)), rgb.getpixel((50, 180))
        assert top[0] > 180 and top[2] < 60, top  # red on top
        assert bottom[2] > 180 and bottom[0] < 60, bottom


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_cutouts_get_a_white_background(tmp_path: Path, mode: str) -> None:
    path = cutout(tmp_path / f"cut_{mode}.png", mode)
    for rgb in (load_rgb(path, max_pixels=10**6, draft_size=256)[0], to_rgb(Image.open(path))):
        assert rgb is not None and rgb.mode == "RGB"
        assert rgb.getpixel((1, 1)) == (255, 255, 255)
        assert rgb.getpixel((20, 20)) == ((60,) * 3 if mode == "LA" else (200, 0, 0))  # LA: red as gray


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_plain_rgb_is_unchanged_bit_for_bit(tmp_path: Path, fmt: str) -> None:
    path = noise_rgb(tmp_path / f"noise.{fmt}")
    with Image.open(path) as img:
        before = img.convert("RGB")  # what an 8-bit RGB file always gave
    rgb, kinds = load_rgb(path, max_pixels=10**6, draft_size=256)
    assert rgb is not None and kinds == [] and rgb.tobytes() == before.tobytes()
    assert to_rgb(before).tobytes() == before.tobytes()
    assert torch.equal(efficientnet_preprocess(rgb), efficientnet_preprocess(before))


def test_efficientnet_preprocess_shape_and_scale() -> None:
    img = Image.new("RGB", (640, 300), (255, 0, 0))
    x = efficientnet_preprocess(img)
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    np.testing.assert_allclose(x[0].numpy(), 1.0, atol=1e-6)  # red: (1 - 0.5) / 0.5
    np.testing.assert_allclose(x[1].numpy(), -1.0, atol=1e-6)
    tiny = efficientnet_preprocess(Image.new("RGB", (10, 7)))
    assert tiny.shape == (3, 224, 224)


def _preprocess_whole(img: Image.Image, size: int = 224, resize: int = 256) -> torch.Tensor:
    """The preprocessing as it always was: the whole image resized, then centre-cropped."""
    w, h = img.size
    scale = resize / min(w, h)
    new = (max(size, round(w * scale)), max(size, round(h * scale)))
    left, top = (new[0] - size) // 2, (new[1] - size) // 2
    img = img.resize(new, Image.Resampling.BICUBIC, reducing_gap=3.0).crop((left, top, left + size, top + size))
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy((arr - 0.5) / 0.5).permute(2, 0, 1).contiguous()


def _noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("size", [(640, 300), (300, 640), (10, 7), (2000, 1500), (1000, 150), (2048, 256),
                                  (256, 2048), (64, 512)])
def test_efficientnet_preprocess_of_ordinary_images_is_unchanged(size: tuple[int, int]) -> None:
    img = _noise(*size)
    assert torch.equal(efficientnet_preprocess(img), _preprocess_whole(img))


def test_efficientnet_preprocess_resizes_only_the_crop_of_a_long_thin_image(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 1x3000 image was resized whole to 256x768,000 (590 MB), a 1x100,000 one to 20 GB."""
    resize = Image.Image.resize

    def bounded(self: Image.Image, size: tuple[int, int], *args: object, **kwargs: object) -> Image.Image:
        assert size[0] * size[1] <= 2048 * 256, f"{self.size[0]}x{self.size[1]} resized to {size[0]}x{size[1]}"
        return resize(self, size, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Image.Image, "resize", bounded)
    for width, height in ((1, 3000), (3000, 1), (1, 100_000), (40, 5000), (2049, 256)):
        x = efficientnet_preprocess(Image.new("RGB", (width, height), (255, 0, 0)))
        assert x.shape == (3, 224, 224)
        np.testing.assert_allclose(x[0].numpy(), 1.0, atol=1e-6)
        np.testing.assert_allclose(x[1].numpy(), -1.0, atol=1e-6)
    monkeypatch.setattr(Image.Image, "resize", resize)
    # the crop is the one resizing the whole image gives, up to rounding (a level or two of 255 in
    # a few pixels of random noise)
    for width, height in ((30, 900), (900, 30), (2500, 150), (2049, 256)):
        img = _noise(width, height, seed=width)
        diff = (efficientnet_preprocess(img) - _preprocess_whole(img)).abs()
        assert float(diff.max()) <= 2 * (2 / 255) + 1e-6 and float(diff.mean()) < 1e-4


def test_workers_and_batches_agree(tiny_vit: Path, tmp_path: Path) -> None:
    paths: list[Path | None] = []
    for k in range(5):
        stripes(k).save(tmp_path / f"s{k}.jpg")
        paths.append(tmp_path / f"s{k}.jpg")
    paths.insert(2, None)
    a = _encode(ImageEncoder(tiny_vit, num_workers=0, batch_size=1), paths)
    b = _encode(ImageEncoder(tiny_vit, num_workers=2, batch_size=4), paths)
    np.testing.assert_allclose(a.embeddings, b.embeddings, atol=1e-5)
    assert a.ok.tolist() == b.ok.tolist() == [True, True, False, True, True, True]


def test_hf_model_dim_name_and_empty_input(tiny_vit: Path) -> None:
    enc = ImageEncoder(tiny_vit)
    assert enc.dim == 16
    assert enc.model_name.startswith(tiny_vit.name + "@")
    res = enc.encode([])
    assert res.embeddings.shape == (0, 16) and res.ok.shape == (0,) and res.problems == {}


def test_hf_model_name_tracks_the_weights_not_the_location(tiny_vit: Path, tmp_path: Path, good_jpg: Path) -> None:
    import shutil

    from shopgraph.encoders.cache import EmbeddingCache, cached_encode, file_key

    # fine-tuned: same config.json and preprocessor_config.json, same folder name, other weights
    tuned = shutil.copytree(tiny_vit, tmp_path / "v2" / tiny_vit.name)
    other = make_tiny_vit(tmp_path / "weights", seed=1)
    shutil.copy(other / "model.safetensors", tuned / "model.safetensors")
    for name in ("config.json", "preprocessor_config.json"):
        assert (tuned / name).read_bytes() == (tiny_vit / name).read_bytes()
    old, new = ImageEncoder(tiny_vit, num_workers=0), ImageEncoder(tuned, num_workers=0)
    assert new.model_name != old.model_name
    copy = ImageEncoder(shutil.copytree(tiny_vit, tmp_path / "v3" / tiny_vit.name), num_workers=0)
    assert copy.model_name == old.model_name  # the same checkpoint at another path: the same key

    keys = [file_key(good_jpg) or ""]
    with EmbeddingCache(tmp_path / "cache") as cache:
        first = cached_encode(cache, old.model_name, keys, lambda pos: old.encode([good_jpg]).embeddings)
        second = cached_encode(cache, new.model_name, keys, lambda pos: new.encode([good_jpg]).embeddings)
        assert second.hits == 0
        assert not np.allclose(second.embeddings, first.embeddings, atol=1e-3)
        third = cached_encode(cache, copy.model_name, keys, lambda pos: pytest.fail("should be cached"))
        np.testing.assert_array_equal(third.embeddings, first.embeddings)


def test_efficientnet_model_name_tracks_the_weights_file(tmp_path: Path) -> None:
    # model_name does not load the model, so any bytes do
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "lite0.pth").write_bytes(b"weights one")
    (tmp_path / "b" / "lite0.pth").write_bytes(b"weights one")
    a, b = ImageEncoder(tmp_path / "a" / "lite0.pth"), ImageEncoder(tmp_path / "b" / "lite0.pth")
    assert a.model_name == b.model_name and a.model_name.endswith("/224")
    (tmp_path / "b" / "lite0.pth").write_bytes(b"weights two")
    assert ImageEncoder(tmp_path / "b" / "lite0.pth").model_name != a.model_name
    assert b.model_name == a.model_name  # computed once per encoder


def test_default_model_name_and_dim_without_loading() -> None:
    enc = ImageEncoder()
    assert enc.dim == 1280 and enc._model is None
    assert enc.model_name.startswith("efficientnet-lite0@")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size: expected a positive integer"),
        ({"num_workers": -1}, "num_workers: expected an integer >= 0"),
        ({"max_pixels": 0}, "max_pixels: expected a positive integer"),
        ({"model_path": "/nonexistent/weights.pth"}, "model_path: .*does not exist"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ImageEncoder(**kwargs)  # type: ignore[arg-type]


def test_bad_paths_argument(tiny_vit: Path) -> None:
    enc = ImageEncoder(tiny_vit)
    with pytest.raises(TypeError, match="got one path"):
        enc.encode(Path("a.jpg"))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"1 of 2 are not \(first: 3, index 1\)"):
        enc.encode([None, 3])  # type: ignore[list-item]


@pytest.mark.slow
def test_real_efficientnet_groups_similar_images(tmp_path: Path) -> None:
    for k in range(3):
        stripes(k, (300, 260)).save(tmp_path / f"s{k}.jpg")
        circles(k, (300, 260)).save(tmp_path / f"c{k}.png")
    paths = [tmp_path / f"s{k}.jpg" for k in range(3)] + [tmp_path / f"c{k}.png" for k in range(3)]
    res = ImageEncoder(num_workers=1).encode(paths)
    assert res.embeddings.shape == (6, 1280) and res.ok.all()
    sim = res.embeddings @ res.embeddings.T
    within = min(sim[0, 1], sim[0, 2], sim[1, 2], sim[3, 4], sim[3, 5], sim[4, 5])
    across = sim[:3, 3:].max()
    assert within > across + 0.1, (within, across)


@pytest.mark.slow
def test_real_efficientnet_weights_and_preprocessing_classify_a_photo() -> None:
    """The loaded weights + our PIL preprocessing reproduce ImageNet labels on real photos."""
    images = pytest.importorskip("sklearn.datasets").__path__[0] + "/images"
    enc = ImageEncoder(num_workers=0)
    enc._load()
    for name, label in (("flower.jpg", 985), ("china.jpg", 698)):  # daisy, palace
        img, kinds = load_rgb(Path(images) / name, max_pixels=10**8, draft_size=256)
        assert img is not None and kinds == []
        with torch.inference_mode():
            logits = enc._model(efficientnet_preprocess(img)[None])
        assert int(logits.argmax()) == label, name


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP"])
def test_damaged_files_never_crash(tiny_vit: Path, tmp_path: Path, fmt: str) -> None:
    """Random byte damage in real files of each format: every file is either encoded or counted."""
    rng = np.random.default_rng(0)
    stripes(4, (160, 120)).save(tmp_path / f"ok.{fmt.lower()}", fmt)
    data = bytearray((tmp_path / f"ok.{fmt.lower()}").read_bytes())
    paths: list[Path | None] = []
    for k in range(12):
        damaged = bytearray(data)
        for pos in rng.integers(8, len(damaged), 1 + k):
            damaged[pos] = int(rng.integers(0, 256))
        if k % 3 == 0:
            damaged = damaged[: int(rng.integers(16, len(damaged)))]
        path = tmp_path / f"d{k}.{fmt.lower()}"
        path.write_bytes(bytes(damaged))
        paths.append(path)
    res = _encode(ImageEncoder(tiny_vit, num_workers=0), paths)
    failed = sum(v for k, v in res.problems.items() if not k.startswith("converted_"))
    assert failed == int((~res.ok).sum())
    assert np.all(res.embeddings[~res.ok] == 0)
    assert np.isfinite(res.embeddings).all()


def test_in_memory_images_match_files(tiny_vit: Path, tmp_path: Path) -> None:
    img = circles(7)
    img.save(tmp_path / "c.png")
    rgba = img.convert("RGBA")
    rgba.putalpha(Image.new("L", img.size, 50))
    enc = ImageEncoder(tiny_vit, num_workers=0, max_pixels=100_000)
    with pytest.warns(UserWarning, match=r"1 of 3 image files could not be encoded \(too_large: 1; first: #3\)"):
        res = enc.encode_images([img, None, rgba, Image.new("RGB", (400, 300))])
    assert res.ok.tolist() == [True, False, True, False]
    assert res.problems == {"no_image": 1, "converted_transparent": 1, "too_large": 1}
    from_file = _encode(enc, [tmp_path / "c.png"])
    np.testing.assert_allclose(res.embeddings[0], from_file.embeddings[0], atol=1e-6)
    with pytest.raises(TypeError, match=r"images: expected PIL images or None; 1 of 1 are not \(first: str, index 0\)"):
        enc.encode_images(["c.png"])  # type: ignore[list-item]
