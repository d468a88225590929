"""The embedded synthetic shop: users with latent tastes, a view → cart → purchase funnel,
shared household devices, fraud rings and lone fraudsters, written as the five input tables
plus one PNG per item.

The generative story, and which signals it plants, is told in ``docs/synthetic_shop.md``.
Everything is drawn from one seeded ``numpy.random.Generator`` and written with fixed
formatting (CSV floats with two decimals, PNGs without timestamps or metadata), so the same
arguments give byte-identical folders.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import shutil
import struct
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from shopgraph.graph.files import as_created, listed_names, through_link

logger = logging.getLogger(__name__)

# The 90-day event window ends on 2026-01-01 00:00 UTC (so it holds Black Friday and the
# December peak).
T_END: int = 1_767_225_600
DAY: int = 86_400
WINDOW_DAYS: int = 90
T_START: int = T_END - WINDOW_DAYS * DAY

IMAGE_SIZE: int = 64
LATENT_DIM: int = 16
MIN_USERS: int = 100
HIGH_RISK: tuple[str, ...] = ("electronics", "gift cards")


class GenerateSummary(NamedTuple):
    """What :func:`generate_shop` wrote.

    Attributes:
        users: rows of ``users.csv``.
        items: rows of ``items.csv`` (and PNGs under ``images/``).
        devices: rows of ``devices.csv``.
        events: rows of ``events.csv``.
        fraud_users: users with ``is_fraud == 1`` in ``labels.csv`` (after label noise).
        rings: distinct ground-truth ``ring_id`` values.
        seconds: wall time of the whole generation.
    """

    users: int
    items: int
    devices: int
    events: int
    fraud_users: int
    rings: int
    seconds: float


# ----------------------------------------------------------------------------------------------
# The catalogue
# ----------------------------------------------------------------------------------------------


def _model_values(num: int, q: np.ndarray) -> dict[str, object]:
    """Values for the ``{key}`` fields of model / size patterns, each in a plausible range."""
    a, b, c, d = (float(v) for v in q)

    def pick(options: tuple[object, ...], x: float) -> object:
        return options[int(x * len(options))]

    return {
        "n": num * (1 + int(a * 4)), "s": pick(_SIZES, a), "k": 2 + int(b * 10), "a": 3 + int(c * 10),
        "p": pick((15, 20, 30, 50), d), "gb": pick((32, 64, 128, 256, 512, 1024), a),
        "inch": pick((10, 13, 15, 24, 27, 32, 43, 55, 65), a), "v": 1 + int(a * 12),
        "pages": 120 + int(a * 780), "eu": 36 + int(a * 11), "us": 5 + int(a * 9), "cm": 10 + int(a * 190),
        "cm2": 16 + int(a * 16), "l": 1 + int(a * 20), "pcs": pick((50, 100, 250, 500, 1000, 1500), a),
        "ml": pick((15, 30, 50, 75, 100, 200, 250, 500), a), "kg": 1 + int(a * 24), "ball": 3 + int(a * 3),
        "g": pick((100, 200, 250, 500, 750, 1000), a), "ring": 48 + int(a * 14), "chain": 38 + int(a * 25),
        "m": 5 + int(a * 26), "a4": 3 + int(a * 3), "sheets": pick((50, 80, 100, 200, 500), a),
        "volt": pick((12, 24), a),
    }


class _Category(NamedTuple):
    name: str
    share: float  # share of the catalogue
    brands: tuple[str, ...]
    nouns: tuple[str, ...]
    adjectives: tuple[str, ...]
    models: tuple[str, ...]  # model / size patterns; {key} fields come from _model_values
    price_median: float
    price_sigma: float  # log-normal sigma
    phrases: tuple[str, ...]  # description sentences


_COMMON_ADJ: tuple[str, ...] = ("Classic", "Premium", "Essential", "Everyday", "Deluxe", "Compact", "Modern")

CATEGORIES: tuple[_Category, ...] = (
    _Category("electronics", 0.10,
              ("Voltra", "Nexon", "Sonique", "Pixelon", "Arkwave", "Zentec", "Lumio", "Orbis", "Kairo"),
              ("wireless earbuds", "smartphone", "laptop", "tablet", "smartwatch", "bluetooth speaker",
               "noise-cancelling headphones", "action camera", "gaming console", "4K monitor",
               "drone", "e-reader"),
              ("Pro", "Ultra", "Smart", "Wireless", "Portable", "HD", "Max", "Slim"),
              ("{gb}GB", "Gen {n}", "X{n}", "Series {n}", "{inch}-inch"),
              180.0, 0.75,
              ("Fast charging and a long-lasting battery.", "Ships with a two-year warranty.",
               "Bluetooth 5.3 and USB-C connectivity.", "High-resolution display with vivid colours.",
               "Low-latency chip for gaming and streaming.", "Includes charger and quick-start guide.")),
    _Category("gift cards", 0.03,
              ("ShopGraph", "Streamly", "PlayHub", "CoffeeCo", "BookNook", "TravelGo", "GameVault"),
              ("gift card", "e-gift card", "digital voucher", "prepaid card"),
              ("Instant", "Digital", "Holiday", "Birthday", "Universal"),
              ("{n} credit", "value {n}"),
              50.0, 0.6,
              ("Delivered instantly by email.", "Redeemable online and in stores.",
               "No expiry date and no fees.", "The perfect last-minute present.",
               "Code can be activated within minutes.")),
    _Category("books", 0.10,
              ("Penwick", "Harbor House", "Quill & Co", "Northlight", "Blue Fern", "Marlow Press"),
              ("novel", "cookbook", "travel guide", "biography", "fantasy saga", "thriller",
               "children's picture book", "history of science", "poetry collection", "self-help guide"),
              ("Bestselling", "Illustrated", "Hardcover", "Paperback", "Collector's", "Annotated"),
              ("Vol. {v}", "{pages} pages", "Edition {v}"),
              16.0, 0.45,
              ("A gripping story that readers cannot put down.", "Printed on acid-free paper.",
               "With a foreword by the author.", "Includes maps and illustrations.",
               "Winner of a national book award.", "Perfect for book clubs.")),
    _Category("shoes", 0.08,
              ("Stridex", "Pacer", "Kinetic", "Trailborn", "Urbanfoot", "Solea"),
              ("running shoes", "sneakers", "hiking boots", "loafers", "sandals", "ankle boots",
               "trail runners", "slip-ons"),
              ("Lightweight", "Waterproof", "Breathable", "Cushioned", "Leather", "Vegan"),
              ("Size {eu}", "EU {eu}", "US {us}"),
              75.0, 0.45,
              ("Cushioned midsole for all-day comfort.", "Grippy rubber outsole.",
               "Breathable mesh upper.", "True to size; half sizes available.", "Removable insole.")),
    _Category("clothing", 0.12,
              ("Northwear", "Lindell", "Cotton Lane", "Avenir", "Basecamp", "Maison Rue", "Tidal"),
              ("t-shirt", "hoodie", "denim jacket", "wool sweater", "summer dress", "chinos",
               "rain jacket", "polo shirt", "cardigan", "leggings"),
              ("Slim-fit", "Oversized", "Organic", "Relaxed", "Cozy", "Stretch", "Linen"),
              ("Size {s}", "Size {s}", "Cut {n}"),
              35.0, 0.5,
              ("Made from soft organic cotton.", "Machine washable at 30 degrees.",
               "Relaxed fit with ribbed cuffs.", "Ethically produced.", "Pre-shrunk fabric.")),
    _Category("home", 0.08,
              ("Hearth", "Nordhus", "Casa Luma", "Willow & Oak", "Dwellings", "Loftly"),
              ("throw pillow", "table lamp", "wall clock", "area rug", "scented candle", "bookshelf",
               "duvet cover", "picture frame", "curtains"),
              ("Scandinavian", "Handmade", "Minimalist", "Rustic", "Velvet", "Woven"),
              ("{cm} cm", "Set of {k}", "Model {n}"),
              40.0, 0.6,
              ("Adds warmth to any living room.", "Easy to assemble; tools included.",
               "Crafted from sustainable materials.", "Fits most interior styles.")),
    _Category("kitchen", 0.08,
              ("ChefLine", "Cuisio", "Pantry Pro", "Ironwell", "Brewster", "Kochhaus"),
              ("frying pan", "chef's knife", "coffee grinder", "blender", "cutting board",
               "dutch oven", "kettle", "mixing bowls", "espresso machine", "toaster"),
              ("Non-stick", "Stainless", "Cast-iron", "Dishwasher-safe", "Ceramic", "Professional"),
              ("{cm2} cm", "{l} L", "Set of {k}"),
              45.0, 0.65,
              ("Dishwasher safe and easy to clean.", "Works on induction hobs.",
               "Ergonomic, heat-resistant handle.", "Loved by home cooks and professional chefs.")),
    _Category("toys", 0.07,
              ("Toyland", "Brickwise", "Funbox", "Little Owl", "PlayWorks", "Kiddo"),
              ("building blocks", "plush bear", "puzzle", "remote-control car", "board game",
               "doll house", "wooden train set", "science kit"),
              ("Educational", "Colourful", "Magnetic", "Wooden", "Interactive", "Giant"),
              ("{pcs} pieces", "Ages {a}+", "Set {n}"),
              25.0, 0.6,
              ("Safe, non-toxic materials.", "Encourages creativity and problem solving.",
               "Hours of fun for the whole family.", "Batteries not included.")),
    _Category("beauty", 0.07,
              ("Lumière", "Glowly", "Botanica", "Velour", "Aurelle", "PureSkin"),
              ("moisturiser", "lipstick", "shampoo", "perfume", "face serum", "nail polish",
               "sunscreen", "hair oil", "eye palette"),
              ("Hydrating", "Vegan", "Fragrance-free", "Matte", "Long-lasting", "Nourishing"),
              ("{ml} ml", "Shade {n}", "SPF {p}"),
              20.0, 0.55,
              ("Dermatologically tested.", "Cruelty-free and vegan.", "Suitable for sensitive skin.",
               "Absorbs quickly without residue.", "Refillable bottle.")),
    _Category("sports", 0.07,
              ("Athlon", "Peakform", "Velocity", "Summit", "Courtside", "Aquafit"),
              ("yoga mat", "football", "tennis racket", "dumbbell set", "cycling helmet",
               "resistance bands", "basketball", "swim goggles", "jump rope"),
              ("Pro", "Training", "Lightweight", "Durable", "Competition", "Adjustable"),
              ("{kg} kg", "Size {ball}", "Model {n}"),
              35.0, 0.6,
              ("Built for training and competition.", "Durable and weather resistant.",
               "Approved by coaches.", "Comes with a carry bag.")),
    _Category("grocery", 0.06,
              ("Green Valley", "Farmhouse", "Nutri", "Golden Grain", "Harvest", "Bean & Leaf"),
              ("coffee beans", "olive oil", "granola", "green tea", "dark chocolate", "pasta",
               "honey", "almond butter", "spice mix"),
              ("Organic", "Fair-trade", "Gluten-free", "Artisan", "Roasted", "Raw"),
              ("{g} g", "Pack of {k}", "{ml} ml"),
              8.0, 0.5,
              ("Sourced from small farms.", "No artificial additives.", "Resealable pack.",
               "Rich, balanced flavour.")),
    _Category("jewelry", 0.04,
              ("Aurum", "Silvra", "Gemma", "Lune", "Carat & Co", "Opaline"),
              ("necklace", "ring", "bracelet", "earrings", "pendant", "watch"),
              ("Sterling", "Gold-plated", "Handcrafted", "Diamond", "Vintage", "Delicate"),
              ("Size {ring}", "{chain} cm chain", "Model {n}"),
              90.0, 0.9,
              ("Comes in a gift box.", "Hypoallergenic and nickel free.", "Handcrafted by artisans.",
               "Polished to a brilliant shine.")),
    _Category("garden", 0.05,
              ("GreenThumb", "Bloomfield", "Terra", "Yardly", "Fernhill"),
              ("watering can", "garden hose", "flower pot", "pruning shears", "bird feeder",
               "seed kit", "lawn chair", "solar lantern"),
              ("Weatherproof", "Foldable", "Terracotta", "Ergonomic", "Solar", "Recycled"),
              ("{l} L", "{m} m", "Set of {k}"),
              30.0, 0.6,
              ("Made for outdoor use all year.", "UV-resistant finish.", "Perfect for balconies and gardens.",
               "Rust-proof construction.")),
    _Category("pet supplies", 0.05,
              ("Pawsome", "Furry Friends", "Tailwag", "Whisker", "Petopia"),
              ("dog bed", "cat tree", "chew toy", "leash", "pet food bowl", "cat litter",
               "dog treats", "grooming brush"),
              ("Washable", "Durable", "Natural", "Orthopedic", "Chew-proof", "Cozy"),
              ("Size {s}", "{kg} kg", "Pack of {k}"),
              22.0, 0.6,
              ("Loved by cats and dogs alike.", "Vet approved.", "Easy to clean.",
               "Made with pet-safe materials.")),
    _Category("office", 0.05,
              ("Scribe", "Deskmate", "Papertrail", "Inkwell", "Officio"),
              ("notebook", "fountain pen", "desk organiser", "office chair", "stapler",
               "planner", "desk lamp", "whiteboard"),
              ("Ergonomic", "Refillable", "Recycled", "Executive", "Dotted", "Compact"),
              ("A{a4}", "{sheets} sheets", "Model {n}"),
              18.0, 0.7,
              ("Keeps your desk tidy.", "Smooth writing on premium paper.", "Designed for long workdays.",
               "Refills available separately.")),
    _Category("automotive", 0.05,
              ("Motorix", "Roadcraft", "TurboLine", "Gearhead", "Drivewell"),
              ("car phone mount", "dash cam", "seat covers", "tyre inflator", "car vacuum",
               "jump starter", "floor mats", "roof box"),
              ("Universal", "Heavy-duty", "Compact", "Rechargeable", "All-weather", "Magnetic"),
              ("{volt} V", "Model {n}", "Set of {k}"),
              40.0, 0.7,
              ("Fits most cars.", "Easy installation in minutes.", "Built for the road.",
               "Comes with a one-year guarantee.")),
)
CATEGORY_NAMES: tuple[str, ...] = tuple(c.name for c in CATEGORIES)

COLOURS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("Black", (30, 30, 34)), ("White", (240, 240, 236)), ("Red", (210, 40, 45)),
    ("Blue", (40, 80, 200)), ("Green", (40, 150, 70)), ("Yellow", (235, 205, 40)),
    ("Orange", (240, 130, 30)), ("Purple", (130, 60, 170)), ("Pink", (235, 120, 170)),
    ("Grey", (130, 130, 135)), ("Navy", (25, 40, 100)), ("Teal", (30, 140, 140)),
    ("Brown", (120, 75, 40)), ("Beige", (215, 195, 160)), ("Gold", (212, 175, 55)),
    ("Silver", (190, 192, 198)),
)
_SIZES: tuple[str, ...] = ("XS", "S", "M", "L", "XL", "XXL")
_COUNTRIES: tuple[str, ...] = ("DE", "FR", "NL", "ES", "IT", "PL", "SE", "GB", "US")
_COUNTRY_P = np.array([0.30, 0.15, 0.10, 0.10, 0.10, 0.08, 0.05, 0.07, 0.05])
_CHANNELS: tuple[str, ...] = ("web", "app", "referral", "ads")
# Fraud accounts lean to web and ads sign-ups, but the overlap is large on purpose.
_CHANNEL_P_NORMAL = np.array([0.45, 0.35, 0.10, 0.10])
_CHANNEL_P_FRAUD = np.array([0.55, 0.20, 0.05, 0.20])
_KINDS: tuple[str, ...] = ("phone", "laptop", "desktop", "tablet")
_OS_BY_KIND: dict[str, tuple[tuple[str, ...], tuple[float, ...]]] = {
    "phone": (("android", "ios"), (0.6, 0.4)),
    "laptop": (("windows", "macos", "linux"), (0.6, 0.32, 0.08)),
    "desktop": (("windows", "macos", "linux"), (0.75, 0.15, 0.10)),
    "tablet": (("android", "ipados"), (0.45, 0.55)),
}
# Relative activity by hour of day (UTC ~ local for a European shop): quiet nights, a lunch
# bump and an evening peak.
_HOUR_W = np.array([2, 1, 0.6, 0.4, 0.4, 0.6, 1.2, 2.5, 3.5, 4, 4.2, 4.6,
                    5.5, 5.2, 4.5, 4.3, 4.5, 5, 6, 7.5, 8.5, 8, 6, 3.5])
# Fraud bursts are spread more evenly over the day (more at night) than normal shopping.
_HOUR_W_FRAUD = 0.5 * _HOUR_W / _HOUR_W.sum() + 0.5 / 24


# ----------------------------------------------------------------------------------------------
# Validation and the public entry points
# ----------------------------------------------------------------------------------------------


def _n_items_for(n_users: int) -> int:
    return int(min(50_000, max(300, round(0.4 * n_users))))


def _check_args(n_users: object, seed: object, label_noise: object) -> None:
    if isinstance(n_users, bool) or not isinstance(n_users, (int, np.integer)):
        raise TypeError(f"n_users: expected an int (got {type(n_users).__name__})")
    if n_users < MIN_USERS:
        raise ValueError(f"n_users: expected at least {MIN_USERS} so that fraud rings fit (got {n_users})")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed: expected an int (got {type(seed).__name__})")
    if seed < 0:
        raise ValueError(f"seed: expected a non-negative int (got {seed})")
    if isinstance(label_noise, bool) or not isinstance(label_noise, (int, float, np.floating)):
        raise TypeError(f"label_noise: expected a float (got {type(label_noise).__name__})")
    if not 0.0 <= float(label_noise) <= 0.5:
        raise ValueError(f"label_noise: expected a share in [0, 0.5] (got {label_noise})")


GENERATED_FILE = "generated.json"
"""What :func:`generate_shop` writes beside the tables to say the shop is made up (how it was
made); ``shopgraph build`` records it in the run's config, and the demo says so."""
SHOP_ENTRIES = frozenset({"users.csv", "items.csv", "devices.csv", "events.csv", "labels.csv", "images",
                          GENERATED_FILE})
"""What :func:`generate_shop` writes into its folder: the only names ``overwrite`` replaces."""


def generate_shop(
    out: Path,
    *,
    n_users: int = 5000,
    seed: int = 0,
    label_noise: float = 0.0,
    overwrite: bool = False,
    progress: bool = False,
) -> GenerateSummary:
    """Generate the synthetic shop into ``out`` (atomically).

    Writes ``users.csv``, ``items.csv``, ``devices.csv``, ``events.csv`` (sorted by time),
    ``labels.csv``, ``images/<item_id>.png`` (64×64 RGB) and :data:`GENERATED_FILE` (that the shop
    is made up, and how). The folder is built in a hidden
    temporary sibling and renamed into place, so ``out`` is either absent, the old folder, or
    complete.

    Args:
        out: the folder to create. It must be absent or empty unless ``overwrite``.
        n_users: number of users (≥ 100). Items scale as ``clip(0.4 * n_users, 300, 50_000)``.
        seed: seed of the one ``numpy.random.Generator``; the same arguments give the same bytes.
        label_noise: share of ``is_fraud`` labels flipped (in [0, 0.5]); ``ring_id`` stays the
            ground truth.
        overwrite: replace a non-empty ``out`` that holds nothing but an earlier shop's
            :data:`SHOP_ENTRIES` (never a folder with anything else in it).
        progress: show ``tqdm`` progress bars (the CLI turns this on).

    Returns:
        A :class:`GenerateSummary` with the counts written and the wall time.

    Raises:
        ValueError: ``out`` exists and is not empty (without ``overwrite``; with it, holds
            something a shop does not), is not a folder, or an argument is out of range.
        TypeError: an argument has the wrong type.
    """
    t0 = time.perf_counter()
    _check_args(n_users, seed, label_noise)
    out = Path(out)
    out = through_link(out)  # a link to a shop: the shop it points at is replaced, the link kept
    if out.exists() and not out.is_dir():
        raise ValueError(f"out: expected a folder (got the file {str(out)!r})")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ValueError(f"out: the folder {str(out)!r} exists and is not empty; pass overwrite=True "
                             "(--overwrite) to replace it")
        others = sorted(p.name for p in out.iterdir() if p.name not in SHOP_ENTRIES)
        if others:  # --overwrite replaces an earlier shop, never a folder with other things in it
            raise ValueError(f"out: the folder {str(out)!r} holds {listed_names(others)}, which a synthetic shop does not; "
                             "overwrite (--overwrite) only replaces a folder written by generate, so choose "
                             "another --out or empty it")
    target = out.absolute()  # "." and friends have no usable name or parent
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        counts = _generate_into(tmp, n_users=int(n_users), seed=int(seed), label_noise=float(label_noise),
                                progress=progress)
        as_created(tmp, folder=True)  # mkdtemp makes 0700 folders
        if target.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, trash / "old")
            try:
                os.replace(tmp, target)
            except BaseException:
                os.replace(trash / "old", target)  # put the old folder back
                shutil.rmtree(trash, ignore_errors=True)
                raise
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary = GenerateSummary(*counts, seconds=time.perf_counter() - t0)
    logger.info("synthetic shop written to %s: %s", out, summary)
    return summary


def cli_generate(args: argparse.Namespace) -> int:
    """``shopgraph generate``: write the synthetic shop and print a one-line summary.

    Args:
        args: parsed arguments with ``out``, ``users``, ``seed``, ``label_noise``, ``overwrite``.

    Returns:
        The exit code (0).
    """
    s = generate_shop(Path(args.out), n_users=args.users, seed=args.seed, label_noise=args.label_noise,
                      overwrite=args.overwrite, progress=True)
    print(f"generated {args.out}: {s.users:,} users, {s.items:,} items, {s.devices:,} devices, "
          f"{s.events:,} events, {s.fraud_users:,} fraud users, {s.rings:,} fraud rings, {s.seconds:.1f} s")
    return 0


class SyntheticLatents(NamedTuple):
    """The hidden state behind a generated shop, as :func:`latent_state` replays it.

    Index ``u`` is the user ``f"u{u:06d}"`` and ``i`` the item ``f"i{i:06d}"``; ``C`` is
    ``len(CATEGORIES)``, ``D`` is ``LATENT_DIM``, ``F`` the number of fraud units (rings first,
    then lone fraudsters) and ``E`` the number of rows of ``events.csv``.

    Attributes:
        item_cat: ``int64[I]`` category index (into ``CATEGORIES``) of each item.
        item_price: ``float64[I]`` list price.
        item_vec: ``float32[I, D]`` latent item vectors.
        item_pop: ``float64[I]`` popularity weight (Zipf within the category).
        taste: ``float32[U, D]`` latent user tastes.
        mix_cdf: ``float64[U, C]`` cumulative category mixture of each user's session views.
        community: ``int64[U]`` each user's community (``K`` = :data:`N_COMMUNITIES`): their taste
            is the community's plus ``N(0, community_taste_sd²)`` per dimension, their category
            mixture a draw of ``Dirichlet(community_mix_alpha[k])``.
        community_taste: ``float32[K, D]`` the communities' mean tastes.
        community_mix_alpha: ``float64[K, C]`` the communities' Dirichlet parameters.
        community_taste_sd: see ``community``.
        consider: ``int64[U, N_CONSIDER]`` personal consideration sets (items, may repeat).
        activity: ``float64[U]`` session-rate multiplier.
        fraud: ``bool[U]`` fraud role (before label noise).
        ring: ``int64[U]`` ring index, -1 for none.
        unit: ``int64[U]`` fraud unit (ring ``r`` -> ``r``, lone ``k`` -> ``R + k``), -1 for none.
        active_start: ``int64[U]`` the first second the user may act.
        spree: ``bool[U]`` users with a gift spree.
        fraud_pools: ``int64[F, 12]`` each fraud unit's shopping list (items, may repeat).
        aff_mean: mean of ``taste · item_vec`` over all session views (the funnel's standardisation).
        aff_std: its standard deviation.
        event_source: ``int8[E]`` ``SOURCE_SESSION``, ``SOURCE_GIFT_SPREE`` or ``SOURCE_FRAUD_BURST``
            of each row of ``events.csv`` (a realised quantity, not a latent one).
        choice_k: popularity-weighted candidates per within-category draw.
        choice_beta: inverse temperature of the Gumbel-max pick among them.
    """

    item_cat: np.ndarray
    item_price: np.ndarray
    item_vec: np.ndarray
    item_pop: np.ndarray
    taste: np.ndarray
    mix_cdf: np.ndarray
    community: np.ndarray
    community_taste: np.ndarray
    community_mix_alpha: np.ndarray
    community_taste_sd: float
    consider: np.ndarray
    activity: np.ndarray
    fraud: np.ndarray
    ring: np.ndarray
    unit: np.ndarray
    active_start: np.ndarray
    spree: np.ndarray
    fraud_pools: np.ndarray
    aff_mean: float
    aff_std: float
    event_source: np.ndarray
    choice_k: int
    choice_beta: float


def latent_state(n_users: int = 5000, seed: int = 0) -> SyntheticLatents:
    """Replay the generator's random stream and return its hidden state, writing nothing.

    Runs the same code as :func:`generate_shop` up to (not including) writing the tables, so the
    result describes exactly the folder ``generate_shop(out, n_users=n_users, seed=seed)``
    writes. ``label_noise`` is not an argument: it has its own stream and changes only
    ``labels.csv``.

    Args:
        n_users: number of users (≥ 100), as given to :func:`generate_shop`.
        seed: the generator's seed, as given to :func:`generate_shop`.

    Returns:
        A :class:`SyntheticLatents`.

    Raises:
        ValueError, TypeError: as :func:`generate_shop` for the same arguments.
    """
    _check_args(n_users, seed, 0.0)
    world = _simulate(int(n_users), int(seed))
    items, roles, hidden = world.items, world.roles, world.hidden
    spree = np.zeros(int(n_users), dtype=bool)
    spree[hidden.spree_users] = True
    sampler = _ItemSampler(items)
    return SyntheticLatents(
        item_cat=items.cat.astype(np.int64), item_price=items.price, item_vec=items.vec, item_pop=items.pop,
        taste=world.taste, mix_cdf=world.mix_cdf, community=world.communities.member,
        community_taste=world.communities.taste, community_mix_alpha=world.communities.mix_alpha,
        community_taste_sd=COMMUNITY_TASTE_SD / float(np.sqrt(LATENT_DIM)), consider=hidden.consider.astype(np.int64),
        activity=hidden.activity, fraud=roles.fraud, ring=roles.ring, unit=roles.unit,
        active_start=roles.active_start, spree=spree, fraud_pools=hidden.fraud_pools.astype(np.int64),
        aff_mean=hidden.aff_mean, aff_std=hidden.aff_std, event_source=hidden.source,
        choice_k=sampler.k, choice_beta=sampler.beta,
    )


def _check_index(values: np.ndarray, name: str, size: int) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name}: expected a 1-d integer array (got {arr.dtype} with shape {arr.shape})")
    bad = np.flatnonzero((arr < 0) | (arr >= size))
    if bad.size:
        raise ValueError(f"{name}: {bad.size:,} of {arr.size:,} values are outside [0, {size}) "
                         f"(first: {arr[bad[0]]}, position {bad[0]})")
    return arr.astype(np.int64)


def session_purchase_probability(latents: SyntheticLatents, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """P(purchase | a session view of ``items[n]`` by ``users[n]``): the generator's funnel,
    ``P(cart | view) · P(purchase | cart)``.

    Args:
        latents: from :func:`latent_state`.
        users: ``int[N]`` user indices.
        items: ``int[N]`` item indices.

    Returns:
        ``float64[N]`` probabilities.
    """
    u = _check_index(users, "users", latents.taste.shape[0])
    i = _check_index(items, "items", latents.item_cat.size)
    if u.size != i.size:
        raise ValueError(f"users, items: expected equal lengths (got {u.size} and {i.size})")
    aff = np.einsum("nd,nd->n", latents.taste[u], latents.item_vec[i])
    z = (aff - latents.aff_mean) / (latents.aff_std + _AFF_EPS)
    return _p_cart(z, _rel_price(latents.item_price[i], latents.item_cat[i])) * _p_buy_given_cart(z)


def sample_items(latents: SyntheticLatents, rng: np.random.Generator, users: np.ndarray,
                 cats: np.ndarray) -> np.ndarray:
    """Draw one item per row the way the generator does for a (user, category) draw: the
    generator's own sampler (``choice_k`` popularity-weighted candidates, then a Gumbel-max pick
    by ``choice_beta · taste · item_vec``).

    Args:
        latents: from :func:`latent_state`.
        rng: the random generator to draw with.
        users: ``int[N]`` user indices.
        cats: ``int[N]`` category indices.

    Returns:
        ``int64[N]`` item indices.
    """
    u = _check_index(users, "users", latents.taste.shape[0])
    c = _check_index(cats, "cats", len(CATEGORIES))
    if u.size != c.size:
        raise ValueError(f"users, cats: expected equal lengths (got {u.size} and {c.size})")
    items = _Items(table=pd.DataFrame(), cat=latents.item_cat, colour=np.zeros(latents.item_cat.size, np.int64),
                   price=latents.item_price, vec=latents.item_vec, pop=latents.item_pop)
    return _ItemSampler(items, k=latents.choice_k, beta=latents.choice_beta).sample(rng, latents.taste, u, c)


# ----------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------


class _Items(NamedTuple):
    table: pd.DataFrame
    cat: np.ndarray  # int [I]
    colour: np.ndarray  # int [I]
    price: np.ndarray  # float [I]
    vec: np.ndarray  # float32 [I, D]
    pop: np.ndarray  # float [I] popularity weight (Zipf within category)


class _Events(NamedTuple):
    user: np.ndarray
    item: np.ndarray
    etype: np.ndarray  # 0 view, 1 cart, 2 purchase
    time: np.ndarray
    device: np.ndarray


# Where an event came from (``_EventLatents.source``).
SOURCE_SESSION: int = 0
SOURCE_GIFT_SPREE: int = 1
SOURCE_FRAUD_BURST: int = 2


class _EventLatents(NamedTuple):
    """What :func:`_make_events` draws besides the events themselves."""

    consider: np.ndarray  # int [U, 6] personal consideration sets
    activity: np.ndarray  # float [U] session-rate multiplier
    aff_mean: float  # the funnel's affinity standardisation (over all session views)
    aff_std: float
    spree_users: np.ndarray  # int [S] users with a gift spree
    fraud_pools: np.ndarray  # int [R + L, 12] each fraud unit's shopping list
    source: np.ndarray  # int8 [E] SOURCE_* of each event, in the (sorted) event order


class _World(NamedTuple):
    """Everything drawn before the tables are written; ``rng`` is left where writing resumes."""

    rng: np.random.Generator
    items: _Items
    roles: _Roles
    taste: np.ndarray  # float32 [U, D]
    mix_cdf: np.ndarray  # float [U, C]
    communities: _Communities
    dev: _Devices
    ev: _Events
    hidden: _EventLatents


def _simulate(n_users: int, seed: int, steps: tqdm | None = None) -> _World:
    """Draw catalogue, users, devices and events from ``default_rng(seed)``: the one code path
    behind both :func:`generate_shop` (which goes on to write with the returned ``rng``) and
    :func:`latent_state`."""
    rng = np.random.default_rng(seed)
    n_items = _n_items_for(n_users)

    def step(name: str | None) -> None:
        if steps is not None:
            if name is None:
                steps.update()
            else:
                steps.set_postfix_str(name)

    step("catalogue")
    items = _make_items(rng, n_items)
    step(None)

    step("users")
    roles = _make_roles(rng, n_users)
    taste, mix_cdf, communities = _make_tastes(rng, n_users)
    step(None)

    step("devices")
    dev = _make_devices(rng, roles)
    step(None)

    step("events")
    ev, hidden = _make_events(rng, roles, taste, mix_cdf, items, dev)
    step(None)
    return _World(rng=rng, items=items, roles=roles, taste=taste, mix_cdf=mix_cdf, communities=communities, dev=dev,
                  ev=ev, hidden=hidden)


def _generate_into(folder: Path, *, n_users: int, seed: int, label_noise: float,
                   progress: bool) -> tuple[int, int, int, int, int, int]:
    steps = tqdm(total=6, desc="generate", unit="step", disable=not progress)
    world = _simulate(n_users, seed, steps)
    rng, items, roles, dev, ev = world.rng, world.items, world.roles, world.dev, world.ev

    steps.set_postfix_str("tables")
    # Label noise has its own stream, so a noisy run differs from the clean one only in labels.
    noise_rng = np.random.default_rng(np.random.SeedSequence([seed, 0x1ABE1]))
    n_fraud = _write_tables(folder, rng, roles, items, dev, ev, label_noise, noise_rng)
    steps.update()

    steps.set_postfix_str("images")
    _write_images(folder / "images", rng, items, progress)
    (folder / GENERATED_FILE).write_text(json.dumps(generated_note(n_users, seed, label_noise), indent=1) + "\n")
    steps.update()
    steps.close()
    return (n_users, len(items.cat), len(dev.table), len(ev.user), n_fraud, int(roles.ring.max() + 1))


def generated_note(n_users: int, seed: int, label_noise: float) -> dict[str, Any]:
    """The content of :data:`GENERATED_FILE`: that the shop is made up, and the arguments that
    made it (the same arguments make the same shop)."""
    return {"generator": "shopgraph generate", "users": int(n_users), "seed": int(seed),
            "label_noise": float(label_noise),
            "note": "a made-up shop: its shoppers, devices, product titles and pictures are generated"}


def read_generated_note(folder: Path) -> dict[str, Any] | None:
    """:data:`GENERATED_FILE` of a tables folder when :func:`generate_shop` wrote it (``None``
    otherwise, or when it is not such a note: a shop's own file of that name says nothing)."""
    try:
        note = json.loads((Path(folder) / GENERATED_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return note if isinstance(note, dict) and note.get("generator") == "shopgraph generate" else None


def _make_items(rng: np.random.Generator, n_items: int) -> _Items:
    n_cat = len(CATEGORIES)
    share = np.array([c.share for c in CATEGORIES])
    # Every category gets at least 8 items; the rest is drawn by share.
    base = np.full(n_cat, 8)
    counts = base + rng.multinomial(n_items - base.sum(), share / share.sum())
    cat = np.repeat(np.arange(n_cat), counts)
    cat = cat[rng.permutation(n_items)]
    colour = rng.integers(0, len(COLOURS), n_items)

    # Latent item vectors: category centre + colour + brand + noise, so content (text, image,
    # category) carries part of the taste signal and the rest is collaborative only.
    cat_centre = rng.normal(0, 1.0, (n_cat, LATENT_DIM))
    col_vec = rng.normal(0, 0.6, (len(COLOURS), LATENT_DIM))
    titles: list[str] = []
    descs: list[str] = []
    brand_idx = np.empty(n_items, dtype=np.int64)
    price = np.empty(n_items)
    u = rng.random((n_items, 8))
    model_num = rng.integers(1, 100, n_items)
    for c_idx, c in enumerate(CATEGORIES):
        sel = np.flatnonzero(cat == c_idx)
        p = np.exp(np.log(c.price_median) + c.price_sigma * rng.standard_normal(sel.size))
        if c.name == "gift cards":
            p = rng.choice(np.array([10.0, 25.0, 50.0, 100.0, 150.0, 200.0, 500.0]), sel.size,
                           p=[0.1, 0.25, 0.25, 0.2, 0.08, 0.08, 0.04])
        price[sel] = np.maximum(np.round(p, 2) - np.where(p > 20, 0.01, 0.0), 0.49)
    brand_vec_all: list[np.ndarray] = [rng.normal(0, 0.6, (len(c.brands), LATENT_DIM)) for c in CATEGORIES]
    vec = np.empty((n_items, LATENT_DIM))
    for i in range(n_items):
        c = CATEGORIES[cat[i]]
        b = int(u[i, 0] * len(c.brands))
        brand_idx[i] = b
        adj_pool = c.adjectives + _COMMON_ADJ
        adj = adj_pool[int(u[i, 1] * len(adj_pool))]
        noun = c.nouns[int(u[i, 2] * len(c.nouns))]
        model = c.models[int(u[i, 3] * len(c.models))].format(**_model_values(int(model_num[i]), u[i, 4:8]))
        if c.name == "gift cards":
            model = f"{price[i]:.0f} EUR"
        col = COLOURS[colour[i]][0]
        titles.append(f"{c.brands[b]} {adj} {col} {noun} {model}")
        s1 = c.phrases[int(u[i, 5] * len(c.phrases))]
        s2 = c.phrases[(int(u[i, 5] * len(c.phrases)) + 1 + int(u[i, 6] * (len(c.phrases) - 1))) % len(c.phrases)]
        descs.append(f"{adj} {noun} by {c.brands[b]} in {col.lower()}. {s1} {s2}")
        vec[i] = cat_centre[cat[i]] + col_vec[colour[i]] + brand_vec_all[cat[i]][b]
    vec += rng.normal(0, 0.5, vec.shape)
    vec /= np.sqrt(LATENT_DIM)

    # Zipf-like popularity inside each category (rank by a random permutation).
    pop = np.empty(n_items)
    for c_idx in range(n_cat):
        sel = np.flatnonzero(cat == c_idx)
        ranks = rng.permutation(sel.size) + 1
        pop[sel] = ranks ** -0.9

    ids = np.array([f"i{k:06d}" for k in range(n_items)], dtype=object)
    table = pd.DataFrame({
        "item_id": ids,
        "title": titles,
        "description": descs,
        "category": np.array(CATEGORY_NAMES, dtype=object)[cat],
        "price": price,
        "image": np.array([f"images/{i}.png" for i in ids], dtype=object),
    })
    return _Items(table=table, cat=cat, colour=colour, price=price, vec=vec.astype(np.float32), pop=pop)


class _Roles(NamedTuple):
    fraud: np.ndarray  # bool [U]
    ring: np.ndarray  # int [U], -1 for none
    created_at: np.ndarray  # int64 [U]
    active_start: np.ndarray  # int64 [U] the first moment the user may act
    burst_base: np.ndarray  # float [R + L] burst anchor time per fraud unit (rings, then lone)
    unit: np.ndarray  # int [U] fraud unit (ring r -> r, lone k -> R + k), -1 for normal


def _make_roles(rng: np.random.Generator, n_users: int) -> _Roles:
    # ~4 % fraud (with some spread), three quarters of them in rings of 3..30 accounts.
    n_fraud = int(round(n_users * rng.uniform(0.035, 0.045)))
    n_ring_target = int(round(n_fraud * 0.75))
    sizes: list[int] = []
    while sum(sizes) < n_ring_target:
        s = int(np.clip(np.round(np.exp(rng.normal(np.log(8), 0.6))), 3, 30))
        sizes.append(min(s, max(3, n_ring_target - sum(sizes))))
    n_ring = sum(sizes)
    n_lone = max(1, n_fraud - n_ring)
    perm = rng.permutation(n_users)
    fraud = np.zeros(n_users, dtype=bool)
    ring = np.full(n_users, -1, dtype=np.int64)
    unit = np.full(n_users, -1, dtype=np.int64)
    pos = 0
    for r, s in enumerate(sizes):
        members = perm[pos:pos + s]
        ring[members] = r
        unit[members] = r
        pos += s
    lone = perm[pos:pos + n_lone]
    unit[lone] = len(sizes) + np.arange(n_lone)
    fraud[perm[:pos + n_lone]] = True

    # Normal accounts: most signed up during the three years before the window, 20 % during
    # it (so "young" alone is not fraud).
    created = (T_START - rng.exponential(365 * DAY, n_users)).astype(np.int64)
    created = np.maximum(created, T_START - 3 * 365 * DAY)
    new = rng.random(n_users) < 0.2
    created[new] = T_START + (rng.random(new.sum()) * (WINDOW_DAYS - 3) * DAY).astype(np.int64)
    active = np.maximum(created, T_START)

    # Fraud units: an active start within the window; accounts created 1..25 days before it
    # (ring members within days of each other).
    n_units = len(sizes) + n_lone
    unit_start = T_START + (rng.uniform(3, WINDOW_DAYS - 4, n_units) * DAY)
    f_idx = np.flatnonzero(fraud)
    # A quarter of fraud accounts are old "sleeper" or taken-over accounts that keep their
    # normal-looking sign-up date.
    fresh = f_idx[rng.random(f_idx.size) >= 0.25]
    created[fresh] = (unit_start[unit[fresh]] - rng.uniform(1, 30, fresh.size) * DAY).astype(np.int64)
    active[f_idx] = np.maximum(created[f_idx], T_START)
    # Bursts happen after every member exists.
    burst_base = unit_start.copy()
    for u_id in range(n_units):
        mem = f_idx[unit[f_idx] == u_id]
        burst_base[u_id] = max(burst_base[u_id], float(created[mem].max()) + DAY)
    burst_base = np.minimum(burst_base, T_END - 2 * DAY)
    return _Roles(fraud=fraud, ring=ring, created_at=created, active_start=active, burst_base=burst_base,
                  unit=unit)


N_COMMUNITIES = 24
COMMUNITY_TASTE_SD = 0.7  # of a user's taste around their community's, per latent dimension (before / sqrt(D))


class _Communities(NamedTuple):
    member: np.ndarray  # int64 [U] each user's community
    taste: np.ndarray  # float32 [K, D] each community's mean taste (in taste units)
    mix_alpha: np.ndarray  # float64 [K, C] the Dirichlet its members' category mixes are drawn from


def _make_tastes(rng: np.random.Generator, n_users: int) -> tuple[np.ndarray, np.ndarray, _Communities]:
    """Per-user taste vector ``[U, D]``, cumulative category mixture ``[U, C]``, and the
    communities both are drawn around."""
    n_cat = len(CATEGORIES)
    n_comm = N_COMMUNITIES
    # Each community concentrates on a few categories; users vary around their community.
    comm_cat = rng.dirichlet(np.full(n_cat, 0.25), n_comm) + 1e-3
    cat_share = np.array([c.share for c in CATEGORIES])
    comm_cat *= cat_share ** 0.5
    comm_cat /= comm_cat.sum(1, keepdims=True)
    comm_vec = rng.normal(0, 1.0, (n_comm, LATENT_DIM))
    comm = rng.integers(0, n_comm, n_users)
    alpha = comm_cat * 8 + 0.05
    mix = np.stack([rng.dirichlet(alpha[c]) for c in comm])
    taste = comm_vec[comm] + rng.normal(0, COMMUNITY_TASTE_SD, (n_users, LATENT_DIM))
    taste /= np.sqrt(LATENT_DIM)
    cdf = np.cumsum(mix, axis=1)
    cdf[:, -1] = 1.0
    communities = _Communities(comm.astype(np.int64), (comm_vec / np.sqrt(LATENT_DIM)).astype(np.float32), alpha)
    return taste.astype(np.float32), cdf, communities


class _Devices(NamedTuple):
    table: pd.DataFrame
    own_user: np.ndarray  # ownership pairs sorted by user
    own_dev: np.ndarray
    own_cum: np.ndarray  # user index + cumulative weight share within the user (ends at user + 1)
    personal: np.ndarray  # [U] the user's primary device
    ring_devs: list[np.ndarray]  # per ring: its shared devices


def _make_devices(rng: np.random.Generator, roles: _Roles) -> _Devices:
    n_users = roles.fraud.size
    n_rings = int(roles.ring.max() + 1)
    owners: list[np.ndarray] = []
    devs: list[np.ndarray] = []
    weights: list[np.ndarray] = []
    kinds: list[np.ndarray] = []
    next_id = 0

    def new_devices(n: int, kind_p: list[float]) -> np.ndarray:
        nonlocal next_id
        ids = np.arange(next_id, next_id + n)
        next_id += n
        kinds.append(rng.choice(len(_KINDS), n, p=kind_p))
        return ids

    # Personal devices: 1-3 per user (lone fraudsters 1-2).
    n_dev = rng.choice([1, 2, 3], n_users, p=[0.55, 0.33, 0.12])
    n_dev[roles.unit >= 0] = np.minimum(n_dev[roles.unit >= 0], 2)
    owner = np.repeat(np.arange(n_users), n_dev)
    d = new_devices(owner.size, [0.58, 0.22, 0.12, 0.08])
    first = np.r_[True, owner[1:] != owner[:-1]]
    owners.append(owner)
    devs.append(d)
    weights.append(np.where(first, 3.0, 1.0))
    personal = d[first]

    # Households: 12 % of normal users live in households of 2-4 that share one device
    # (a family tablet or desktop). Shared devices alone are therefore not fraud.
    normal = np.flatnonzero(~roles.fraud)
    hh_users = normal[rng.random(normal.size) < 0.12]
    hh_users = hh_users[rng.permutation(hh_users.size)]
    pos = 0
    hh_owner: list[int] = []
    hh_dev: list[int] = []
    hh_sizes: list[int] = []
    while pos + 2 <= hh_users.size:
        s = int(rng.integers(2, 5))
        mem = hh_users[pos:pos + s]
        pos += s
        hh_sizes.append(mem.size)
        hh_owner.extend(mem.tolist())
    shared = new_devices(len(hh_sizes), [0.1, 0.2, 0.35, 0.35])
    hh_dev = np.repeat(shared, hh_sizes).tolist()
    owners.append(np.array(hh_owner, dtype=np.int64))
    devs.append(np.array(hh_dev, dtype=np.int64))
    weights.append(np.full(len(hh_owner), 1.5))

    # Public devices (an office PC, a library terminal, a shop's demo tablet): each used now and
    # then by 5-20 unrelated normal users, so a device with many users is not proof of a ring.
    n_public = max(2, n_users // 250)
    pub = new_devices(n_public, [0.05, 0.15, 0.6, 0.2])
    pub_sizes = rng.integers(5, 21, n_public)
    owners.append(normal[rng.integers(0, normal.size, int(pub_sizes.sum()))])
    devs.append(np.repeat(pub, pub_sizes))
    weights.append(np.full(int(pub_sizes.sum()), 0.6))

    # Rings: 1-4 shared devices each, used by many members (each member is tied to 1-3 of them).
    ring_devs: list[np.ndarray] = []
    for r in range(n_rings):
        mem = np.flatnonzero(roles.ring == r)
        k = min(int(rng.integers(1, 5)), max(1, mem.size // 2))
        rd = new_devices(k, [0.5, 0.3, 0.15, 0.05])
        ring_devs.append(rd)
        for m in mem:
            use = rng.choice(rd, int(rng.integers(1, min(3, k) + 1)), replace=False)
            owners.append(np.full(use.size, m, dtype=np.int64))
            devs.append(use)
            weights.append(np.full(use.size, 1.5))

    own_user = np.concatenate(owners)
    own_dev = np.concatenate(devs)
    own_w = np.concatenate(weights)
    order = np.lexsort((own_dev, own_user))
    own_user, own_dev, own_w = own_user[order], own_dev[order], own_w[order]
    starts = np.r_[0, np.flatnonzero(own_user[1:] != own_user[:-1]) + 1]
    totals = np.add.reduceat(own_w, starts)
    grp = np.repeat(np.arange(starts.size), np.diff(np.r_[starts, own_user.size]))
    cum = np.cumsum(own_w)
    before = np.r_[0.0, cum[starts[1:] - 1]]
    frac = (cum - before[grp]) / totals[grp]
    frac[np.r_[starts[1:] - 1, own_user.size - 1]] = 1.0
    own_cum = own_user + frac

    # Device ids are assigned in a random order so that id order says nothing about the role.
    kind = np.concatenate(kinds)
    n_total = kind.size
    id_of = rng.permutation(n_total)
    os_col = np.empty(n_total, dtype=object)
    u = rng.random(n_total)
    for k_idx, k_name in enumerate(_KINDS):
        sel = kind == k_idx
        names, p = _OS_BY_KIND[k_name]
        cp = np.cumsum(p)
        os_col[sel] = np.array(names, dtype=object)[np.minimum(np.searchsorted(cp, u[sel]), len(names) - 1)]
    table = pd.DataFrame({
        "device_id": np.array([f"d{k:06d}" for k in range(n_total)], dtype=object),
        "os": os_col[np.argsort(id_of)],
        "kind": np.array(_KINDS, dtype=object)[kind][np.argsort(id_of)],
    })
    # Internal device index -> row of the table (= numeric part of the id).
    remap = id_of
    return _Devices(table=table, own_user=own_user, own_dev=remap[own_dev], own_cum=own_cum,
                    personal=remap[personal], ring_devs=[remap[r] for r in ring_devs])


def _pick_device(rng: np.random.Generator, dev: _Devices, users: np.ndarray) -> np.ndarray:
    """One device per row of ``users`` from the user's own devices, by usage weight."""
    key = users + rng.random(users.size)
    idx = np.searchsorted(dev.own_cum, key, side="right")
    return dev.own_dev[np.minimum(idx, dev.own_dev.size - 1)]


def _session_times(rng: np.random.Generator, start_at: np.ndarray, hour_w: np.ndarray,
                   day_w: np.ndarray, t_lo: float = T_START) -> np.ndarray:
    """Session start times after ``start_at``, by day weight and hour-of-day weight."""
    cdf = np.r_[0.0, np.cumsum(day_w) / day_w.sum()]
    days = (start_at - t_lo) / DAY
    lo = np.interp(np.clip(days, 0, day_w.size), np.arange(day_w.size + 1), cdf)
    q = lo + rng.random(start_at.size) * (1.0 - lo)
    day = np.clip(np.searchsorted(cdf, q, side="right") - 1, 0, day_w.size - 1)
    hour = rng.choice(24, start_at.size, p=hour_w / hour_w.sum())
    t = t_lo + day * DAY + hour * 3600 + rng.integers(0, 3600, start_at.size)
    return np.maximum(t, start_at + 60).astype(np.int64)


def _day_weights() -> np.ndarray:
    days = np.arange(WINDOW_DAYS)
    dow = ((T_START // DAY + days + 3) % 7)  # 0 = Monday (1970-01-01 was a Thursday)
    w = 1.0 + 0.25 * (dow >= 5) + 0.004 * days
    date = T_START + days * DAY
    black_friday = 1_764_288_000  # 2025-11-28
    w += 1.2 * np.exp(-0.5 * ((date - black_friday) / (1.5 * DAY)) ** 2)
    w += 0.8 * ((date >= 1_765_152_000) & (date < 1_766_534_400))  # 8-24 December
    return w.astype(np.float64)


# Session views: a share comes from the user's personal consideration set of N_CONSIDER items.
N_CONSIDER: int = 6
CONSIDER_SHARE: float = 0.25
# Gift sprees: a GIFT_SHARE of the gifts come from these categories (with these weights), the
# rest from the user's own category mix.
GIFT_CATEGORIES: tuple[str, ...] = ("gift cards", "electronics", "toys", "jewelry", "beauty", "books")
GIFT_CATEGORY_P: tuple[float, ...] = (0.3, 0.3, 0.12, 0.1, 0.1, 0.08)
GIFT_SHARE: float = 0.55
_AFF_EPS: float = 1e-9


def _rel_price(price: np.ndarray, cat: np.ndarray) -> np.ndarray:
    """log price relative to the category's median price."""
    return np.log(price) - np.log([CATEGORIES[c].price_median for c in cat])


def _p_cart(z: np.ndarray, rel_price: np.ndarray) -> np.ndarray:
    """P(cart | session view) from the standardised affinity ``z`` and the relative log price."""
    return 1 / (1 + np.exp(-(-1.55 + 0.9 * z - 0.3 * rel_price)))


def _p_buy_given_cart(z: np.ndarray) -> np.ndarray:
    """P(purchase | cart) from the standardised affinity ``z``."""
    return 1 / (1 + np.exp(-(0.35 + 0.5 * z)))


class _ItemSampler:
    """Samples items for (user, category) draws: K popularity-weighted candidates, then a
    Gumbel-max pick by ``beta * taste · item_vec`` (≈ sampling ∝ popularity × exp(beta · affinity))."""

    def __init__(self, items: _Items, k: int = 24, beta: float = 2.5) -> None:
        self.items = items
        self.k = k
        self.beta = beta
        self.cat_items = [np.flatnonzero(items.cat == c) for c in range(len(CATEGORIES))]
        self.cat_cdf = []
        for sel in self.cat_items:
            cdf = np.cumsum(items.pop[sel])
            self.cat_cdf.append(cdf / cdf[-1])

    def sample(self, rng: np.random.Generator, taste: np.ndarray, users: np.ndarray, cats: np.ndarray,
               weight: np.ndarray | None = None, chunk: int = 32_768) -> np.ndarray:
        """One item per row: ``cats[i]`` is its category, ``taste[users[i]]`` the taste ``[D]``."""
        out = np.empty(cats.size, dtype=np.int64)
        for c, sel_items in enumerate(self.cat_items):
            rows = np.flatnonzero(cats == c)
            cdf = self.cat_cdf[c]
            for s in range(0, rows.size, chunk):
                r = rows[s:s + chunk]
                pos = np.minimum(np.searchsorted(cdf, rng.random((r.size, self.k))), cdf.size - 1)
                cand = sel_items[pos]  # [n, K]
                score = np.einsum("nd,nkd->nk", taste[users[r]], self.items.vec[cand]) * self.beta
                if weight is not None:
                    score = score + weight[cand]
                score = score + rng.gumbel(size=score.shape)
                out[r] = cand[np.arange(r.size), score.argmax(1)]
        return out


def _sample_cats(rng: np.random.Generator, cdf: np.ndarray, users: np.ndarray) -> np.ndarray:
    out = np.empty(users.size, dtype=np.int64)
    for s in range(0, users.size, 262_144):
        u = users[s:s + 262_144]
        out[s:s + 262_144] = (rng.random(u.size)[:, None] > cdf[u]).sum(1)
    return np.minimum(out, cdf.shape[1] - 1)


def _make_events(rng: np.random.Generator, roles: _Roles, taste: np.ndarray, mix_cdf: np.ndarray,
                 items: _Items, dev: _Devices) -> tuple[_Events, _EventLatents]:
    n_users = roles.fraud.size
    sampler = _ItemSampler(items)
    day_w = _day_weights()
    parts: list[_Events] = []

    # A small personal consideration set per user: repeat views (and repeat purchases of
    # consumables) come from it across sessions.
    n_cs = N_CONSIDER
    cs_users = np.repeat(np.arange(n_users), n_cs)
    consider = sampler.sample(rng, taste, cs_users, _sample_cats(rng, mix_cdf, cs_users)).reshape(n_users, n_cs)

    # --- normal browsing sessions (fraudsters get a few too, as camouflage) ---
    activity = np.exp(rng.normal(np.log(3.6), 0.7, n_users))
    activity[roles.fraud] = np.exp(rng.normal(np.log(2.0), 0.6, int(roles.fraud.sum())))
    # Users who joined during the window have less time left to shop.
    left = (T_END - roles.active_start) / (WINDOW_DAYS * DAY)
    n_sess = 1 + rng.poisson(activity * np.clip(left, 0.1, 1.0))
    s_user = np.repeat(np.arange(n_users), n_sess)
    s_start = _session_times(rng, roles.active_start[s_user].astype(np.float64), _HOUR_W, day_w)
    s_dev = _pick_device(rng, dev, s_user)
    n_views = 1 + rng.poisson(3.6, s_user.size)
    v_sess = np.repeat(np.arange(s_user.size), n_views)
    v_user = s_user[v_sess]
    gaps = rng.exponential(75.0, v_sess.size) + 5
    cs = np.cumsum(gaps)
    first = np.r_[0, np.cumsum(n_views)[:-1]]
    v_time = s_start[v_sess] + (cs - cs[first][v_sess]).astype(np.int64)
    v_item = sampler.sample(rng, taste, v_user, _sample_cats(rng, mix_cdf, v_user))
    from_cs = rng.random(v_item.size) < CONSIDER_SHARE
    v_item[from_cs] = consider[v_user[from_cs], rng.integers(0, n_cs, from_cs.sum())]

    # Funnel: the better the item fits the user's taste, the likelier a cart and a purchase;
    # expensive items convert less.
    aff = np.einsum("nd,nd->n", taste[v_user], items.vec[v_item])
    z = (aff - aff.mean()) / (aff.std() + _AFF_EPS)
    p_cart = _p_cart(z, _rel_price(items.price[v_item], items.cat[v_item]))
    cart = rng.random(v_item.size) < p_cart
    p_buy = _p_buy_given_cart(z[cart])
    buy = rng.random(cart.sum()) < p_buy
    c_idx = np.flatnonzero(cart)
    c_time = v_time[c_idx] + rng.integers(10, 180, c_idx.size)
    b_idx = c_idx[buy]
    b_time = c_time[buy] + rng.integers(20, 900, b_idx.size)
    v_dev = s_dev[v_sess]
    parts.append(_Events(v_user, v_item, np.zeros(v_item.size, np.int8), v_time, v_dev))
    parts.append(_Events(v_user[c_idx], v_item[c_idx], np.ones(c_idx.size, np.int8), c_time, v_dev[c_idx]))
    parts.append(_Events(v_user[b_idx], v_item[b_idx], np.full(b_idx.size, 2, np.int8), b_time, v_dev[b_idx]))
    n_session_events = sum(p.user.size for p in parts)

    # --- gift sprees: 12 % of normal users buy several gifts (often gift cards and electronics)
    # within an hour in the Black Friday / December peak: bursty, high-value, not fraud. ---
    normal = np.flatnonzero(~roles.fraud)
    spree = normal[rng.random(normal.size) < 0.12]
    spree = spree[roles.active_start[spree] < T_END - 12 * DAY]
    n_buy = 2 + rng.poisson(2.0, spree.size)
    g_user = np.repeat(spree, n_buy)
    peak_lo = np.maximum(roles.active_start[spree].astype(np.float64), float(T_END - 40 * DAY))
    g_start = _session_times(rng, peak_lo, _HOUR_W, day_w)
    gift_cats = np.array([CATEGORY_NAMES.index(n) for n in GIFT_CATEGORIES])
    gc = np.where(rng.random(g_user.size) < GIFT_SHARE,
                  gift_cats[rng.choice(gift_cats.size, g_user.size, p=list(GIFT_CATEGORY_P))],
                  _sample_cats(rng, mix_cdf, g_user))
    parts.extend(_burst_events(rng, g_user, np.repeat(g_start, n_buy), n_buy,
                               sampler.sample(rng, taste, g_user, gc), _pick_device(rng, dev, g_user),
                               gap=(120, 900)))
    n_spree_events = sum(p.user.size for p in parts) - n_session_events

    # --- fraud bursts: rings buy high-value resaleable items from a shared shopping list,
    # several members within hours of each other, mostly on the ring's shared devices. ---
    n_rings = len(dev.ring_devs)
    n_units = roles.burst_base.size
    hr_cats = np.array([CATEGORY_NAMES.index(n) for n in HIGH_RISK])
    log_price = np.log(items.price)
    value_w = 0.5 * (log_price - log_price.mean())  # expensive items preferred
    f_users: list[np.ndarray] = []
    f_start: list[np.ndarray] = []
    f_pool: list[np.ndarray] = []
    pools: list[np.ndarray] = []
    for unit_id in range(n_units):
        mem = np.flatnonzero(roles.unit == unit_id)
        pool_n = 12
        pc = np.where(rng.random(pool_n) < 0.65, hr_cats[rng.integers(0, hr_cats.size, pool_n)],
                      rng.integers(0, len(CATEGORIES), pool_n))
        # Zero taste: the shopping list follows popularity and price, not the members' tastes.
        pool = sampler.sample(rng, np.zeros((1, LATENT_DIM), np.float32), np.zeros(pool_n, np.int64), pc,
                              weight=value_w)
        pools.append(pool)
        n_bursts = int(rng.integers(1, 4)) if unit_id < n_rings else int(rng.integers(1, 3))
        room = max(0.5, (T_END - DAY - roles.burst_base[unit_id]) / DAY)
        b_times = roles.burst_base[unit_id] + rng.uniform(0, min(room, 12.0), n_bursts) * DAY
        # Shift each burst onto an hour drawn from the fraud hour profile.
        b_times = (b_times // DAY) * DAY + rng.choice(24, n_bursts, p=_HOUR_W_FRAUD) * 3600
        b_times = np.maximum(b_times, roles.burst_base[unit_id])
        part = rng.random((mem.size, n_bursts)) < 0.75
        part[np.arange(mem.size), rng.integers(0, n_bursts, mem.size)] = True
        for b in range(n_bursts):
            m = mem[part[:, b]]
            f_users.append(m)
            f_start.append(b_times[b] + np.abs(rng.normal(0, 1.5 * 3600, m.size)))
            f_pool.append(np.repeat(pool[None, :], m.size, 0))
    fu = np.concatenate(f_users)
    fs = np.concatenate(f_start).astype(np.int64)
    fp = np.concatenate(f_pool)
    n_buy = 1 + rng.poisson(1.8, fu.size)
    fb_user = np.repeat(fu, n_buy)
    row = np.repeat(np.arange(fu.size), n_buy)
    fb_item = fp[row, rng.integers(0, fp.shape[1], row.size)]
    own = _pick_device(rng, dev, fb_user)
    on_ring = (roles.ring[fb_user] >= 0) & (rng.random(fb_user.size) < 0.85)
    ring_pick = np.array([dev.ring_devs[r][rng.integers(0, dev.ring_devs[r].size)] if r >= 0 else -1
                          for r in roles.ring[fb_user]], dtype=np.int64) if fb_user.size else own
    fb_dev = np.where(on_ring, ring_pick, own)
    parts.extend(_burst_events(rng, fb_user, np.repeat(fs, n_buy), n_buy, fb_item, fb_dev, gap=(60, 900)))

    ev = _Events(*(np.concatenate([getattr(p, f) for p in parts]) for f in _Events._fields))
    time_ = np.minimum(ev.time, T_END - 1)
    order = np.lexsort((ev.etype, ev.item, ev.user, time_))
    n_fraud_events = ev.user.size - n_session_events - n_spree_events
    source = np.repeat(np.array([SOURCE_SESSION, SOURCE_GIFT_SPREE, SOURCE_FRAUD_BURST], np.int8),
                       [n_session_events, n_spree_events, n_fraud_events])
    hidden = _EventLatents(consider=consider, activity=activity, aff_mean=float(aff.mean()),
                           aff_std=float(aff.std()), spree_users=spree, fraud_pools=np.stack(pools),
                           source=source[order])
    return _Events(ev.user[order], ev.item[order], ev.etype[order], time_[order], ev.device[order]), hidden


def _burst_events(rng: np.random.Generator, user: np.ndarray, start: np.ndarray, n_per: np.ndarray,
                  item: np.ndarray, device: np.ndarray, gap: tuple[int, int]) -> list[_Events]:
    """A quick view → cart → purchase for each row, rows of one burst ``gap`` seconds apart."""
    steps = rng.integers(gap[0], gap[1], user.size)
    cs = np.cumsum(steps)
    first = np.r_[0, np.cumsum(n_per)[:-1]]
    grp = np.repeat(np.arange(n_per.size), n_per)
    t_buy = (start + cs - cs[first][grp]).astype(np.int64)
    t_cart = t_buy - rng.integers(15, 90, user.size)
    t_view = t_cart - rng.integers(10, 120, user.size)
    return [
        _Events(user, item, np.zeros(user.size, np.int8), t_view, device),
        _Events(user, item, np.ones(user.size, np.int8), t_cart, device),
        _Events(user, item, np.full(user.size, 2, np.int8), t_buy, device),
    ]


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------


def _write_tables(folder: Path, rng: np.random.Generator, roles: _Roles, items: _Items, dev: _Devices,
                  ev: _Events, label_noise: float, noise_rng: np.random.Generator) -> int:
    n_users = roles.fraud.size
    user_ids = np.array([f"u{k:06d}" for k in range(n_users)], dtype=object)
    country = rng.choice(len(_COUNTRIES), n_users, p=_COUNTRY_P / _COUNTRY_P.sum())
    ch_u = rng.random(n_users)
    channel = np.where(roles.fraud, np.searchsorted(np.cumsum(_CHANNEL_P_FRAUD), ch_u),
                       np.searchsorted(np.cumsum(_CHANNEL_P_NORMAL), ch_u))
    channel = np.minimum(channel, len(_CHANNELS) - 1)
    users = pd.DataFrame({
        "user_id": user_ids,
        "created_at": roles.created_at.astype(np.int64),
        "country": np.array(_COUNTRIES, dtype=object)[country],
        "signup_channel": np.array(_CHANNELS, dtype=object)[channel],
    })
    _to_csv(users, folder / "users.csv")
    _to_csv(items.table, folder / "items.csv")
    _to_csv(dev.table, folder / "devices.csv")

    is_buy = ev.etype == 2
    amount = np.full(ev.user.size, np.nan)
    # Purchases pay the list price, sometimes with a 5-20 % discount.
    disc = np.where(rng.random(int(is_buy.sum())) < 0.2, rng.choice([0.95, 0.9, 0.85, 0.8], int(is_buy.sum())), 1.0)
    amount[is_buy] = np.round(items.price[ev.item[is_buy]] * disc, 2)
    events = pd.DataFrame({
        "user_id": user_ids[ev.user],
        "item_id": items.table["item_id"].to_numpy()[ev.item],
        "event_type": np.array(["view", "cart", "purchase"], dtype=object)[ev.etype],
        "timestamp": ev.time.astype(np.int64),
        "device_id": dev.table["device_id"].to_numpy()[ev.device],
        "amount": amount,
    })
    _to_csv(events, folder / "events.csv")

    is_fraud = roles.fraud.astype(np.int64)
    n_flip = int(round(label_noise * n_users))
    if n_flip:
        flip = noise_rng.choice(n_users, n_flip, replace=False)
        is_fraud[flip] = 1 - is_fraud[flip]
    ring_id = np.where(roles.ring >= 0, np.char.add("ring_", np.char.zfill(roles.ring.astype(str), 3)), "")
    labels = pd.DataFrame({"user_id": user_ids, "is_fraud": is_fraud, "ring_id": ring_id.astype(object)})
    _to_csv(labels, folder / "labels.csv")
    return int(is_fraud.sum())


def _to_csv(df: pd.DataFrame, path: Path) -> None:
    df.to_csv(path, index=False, float_format="%.2f", na_rep="", lineterminator="\n")


def _png_bytes(img: np.ndarray) -> bytes:
    """Encode ``uint8[H, W, 3]`` as a PNG: IHDR, one IDAT (Sub filter, zlib level 6), IEND —
    no timestamp or text chunks, so equal pixels give equal bytes."""
    h, w, _ = img.shape
    row = img.reshape(h, w * 3).astype(np.int16)
    sub = row.copy()
    sub[:, 3:] -= row[:, :-3]
    raw = np.empty((h, w * 3 + 1), dtype=np.uint8)
    raw[:, 0] = 1
    raw[:, 1:] = (sub & 0xFF).astype(np.uint8)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)) + chunk(b"IEND", b""))


# Shape helpers on a batch of normalised grids x, y: [n, H, W] in about [-1, 1].
_Arr = np.ndarray


def _disc(x: _Arr, y: _Arr, cx: float, cy: float, r: float) -> _Arr:
    return (x - cx) ** 2 + (y - cy) ** 2 < r * r


def _box(x: _Arr, y: _Arr, x0: float, x1: float, y0: float, y1: float) -> _Arr:
    return (x > x0) & (x < x1) & (y > y0) & (y < y1)


# Each painter returns a list of (mask, colour source) layers painted in order over the
# background; colour source "fg" is the item colour, otherwise a fixed RGB.
_Layer = tuple[_Arr, object]
_Painter = Callable[[_Arr, _Arr], list[_Layer]]


def _p_electronics(x: _Arr, y: _Arr) -> list[_Layer]:
    return [(_box(x, y, -0.85, 0.85, -0.55, 0.45), (35, 35, 40)),
            (_box(x, y, -0.72, 0.72, -0.43, 0.33), "fg"),
            (_box(x, y, -0.1, 0.1, 0.45, 0.7) | _box(x, y, -0.4, 0.4, 0.68, 0.78), (60, 60, 66))]


def _p_giftcard(x: _Arr, y: _Arr) -> list[_Layer]:
    card = _box(x, y, -0.85, 0.85, -0.55, 0.55)
    return [(card, "fg"), (card & (np.abs(x + 0.35) < 0.08), (250, 250, 250)),
            (card & (np.abs(y - 0.1) < 0.08), (250, 250, 250)),
            (_disc(x, y, -0.35, 0.1, 0.17), (220, 30, 60))]


def _p_books(x: _Arr, y: _Arr) -> list[_Layer]:
    area = _box(x, y, -0.8, 0.8, -0.7, 0.75)
    spine = np.floor((x + 0.8) / 0.32)
    gap = np.abs(((x + 0.8) / 0.32) - np.round((x + 0.8) / 0.32)) < 0.1
    return [(area & (spine % 2 == 0), "fg"), (area & (spine % 2 == 1), (245, 235, 210)),
            (area & gap, (40, 25, 15)), (area & (np.abs(y + 0.35) < 0.04), (200, 170, 60))]


def _p_shoes(x: _Arr, y: _Arr) -> list[_Layer]:
    upper = ((x + 0.2) / 0.6) ** 2 + ((y - 0.05) / 0.4) ** 2 < 1
    toe = (x / 0.85) ** 2 + ((y - 0.3) / 0.22) ** 2 < 1
    return [((upper & (y < 0.45)) | toe, "fg"), (_box(x, y, -0.85, 0.85, 0.42, 0.55), (30, 30, 30)),
            ((np.abs(x + y * 0.6 + 0.1) < 0.04) & upper & (y < 0.3), (255, 255, 255))]


def _p_clothing(x: _Arr, y: _Arr) -> list[_Layer]:
    shirt = _box(x, y, -0.45, 0.45, -0.6, 0.8) | _box(x, y, -0.85, 0.85, -0.6, -0.15)
    neck = _disc(x, y, 0, -0.62, 0.2)
    return [(shirt & ~neck, "fg"), (shirt & ~neck & (np.abs(x) < 0.03) & (y > -0.4), (250, 250, 250))]


def _p_home(x: _Arr, y: _Arr) -> list[_Layer]:
    roof = (y < 0.0) & (y > -0.75 + 1.1 * np.abs(x))
    return [(_box(x, y, -0.55, 0.55, 0.0, 0.8), "fg"), (roof, (150, 40, 30)),
            (_box(x, y, -0.12, 0.12, 0.4, 0.8), (70, 45, 25)),
            (_box(x, y, 0.22, 0.42, 0.15, 0.35), (200, 230, 255))]


def _p_kitchen(x: _Arr, y: _Arr) -> list[_Layer]:
    r = np.sqrt(x * x + y * y)
    return [(r < 0.82, (245, 245, 245)), (r < 0.6, "fg"), (np.abs(r - 0.6) < 0.035, (60, 60, 60)),
            (_box(x, y, 0.85, 0.95, -0.8, 0.8), (150, 150, 155))]


def _p_toys(x: _Arr, y: _Arr) -> list[_Layer]:
    return [(_box(x, y, -0.8, -0.05, 0.05, 0.8), "fg"), (_box(x, y, 0.05, 0.8, 0.05, 0.8), (230, 60, 50)),
            (_box(x, y, -0.37, 0.37, -0.72, -0.02), (50, 110, 220)),
            (_disc(x, y, -0.42, 0.42, 0.12) | _disc(x, y, 0.42, 0.42, 0.12) | _disc(x, y, 0, -0.37, 0.12),
             (255, 220, 40))]


def _p_beauty(x: _Arr, y: _Arr) -> list[_Layer]:
    body = _box(x, y, -0.3, 0.3, -0.15, 0.8) | (((x / 0.3) ** 2 + ((y + 0.15) / 0.15) ** 2) < 1)
    return [(body, "fg"), (_box(x, y, -0.12, 0.12, -0.45, -0.2), (220, 220, 225)),
            (_box(x, y, -0.2, 0.2, -0.8, -0.45), (20, 20, 20)),
            (_box(x, y, -0.2, 0.2, 0.2, 0.45), (250, 250, 250))]


def _p_sports(x: _Arr, y: _Arr) -> list[_Layer]:
    r = np.sqrt(x * x + y * y)
    th = np.arctan2(y, x)
    ball = r < 0.72
    return [(ball, (250, 250, 250)), (ball & (np.cos(5 * th) * np.cos(np.pi * r * 2.2) > 0.35), "fg"),
            (np.abs(r - 0.72) < 0.04, (20, 20, 20))]


def _p_grocery(x: _Arr, y: _Arr) -> list[_Layer]:
    fx = (x + 0.75) / 0.5
    fy = (y + 0.8) / 0.45
    cell = (np.abs(fx - np.round(fx)) * 0.5) ** 2 + (np.abs(fy - np.round(fy)) * 0.45) ** 2 < 0.19 ** 2
    fruit = cell & _box(x, y, -0.95, 0.95, -0.95, 0.35)
    return [(fruit, "fg"), (_box(x, y, -0.9, 0.9, 0.35, 0.9), (150, 100, 50)),
            (_box(x, y, -0.9, 0.9, 0.35, 0.9) & (np.abs(np.sin(x * 18)) < 0.3), (100, 65, 30))]


def _p_jewelry(x: _Arr, y: _Arr) -> list[_Layer]:
    r = np.sqrt(x * x + (y - 0.2) ** 2)
    gem = np.abs(x) + np.abs(y + 0.5) < 0.28
    return [(np.abs(r - 0.5) < 0.07, (212, 175, 55)), (gem, "fg"),
            (gem & (np.abs(x) + np.abs(y + 0.55) < 0.08), (255, 255, 255))]


def _p_garden(x: _Arr, y: _Arr) -> list[_Layer]:
    xx, yy = x, y + 0.25
    r = np.sqrt(xx * xx + yy * yy)
    th = np.arctan2(yy, xx)
    return [(_box(x, y, -0.05, 0.05, 0.1, 0.95), (40, 120, 40)),
            (((x - 0.22) / 0.2) ** 2 + ((y - 0.6) / 0.08) ** 2 < 1, (40, 140, 50)),
            (r < 0.35 + 0.22 * np.cos(6 * th), "fg"), (r < 0.15, (250, 210, 40))]


def _p_pet(x: _Arr, y: _Arr) -> list[_Layer]:
    bone = (_box(x, y, -0.55, 0.55, -0.13, 0.13) | _disc(x, y, -0.6, -0.17, 0.18) | _disc(x, y, -0.6, 0.17, 0.18)
            | _disc(x, y, 0.6, -0.17, 0.18) | _disc(x, y, 0.6, 0.17, 0.18))
    return [(bone, "fg"), (_disc(x, y, -0.5, 0.65, 0.1) | _disc(x, y, -0.3, 0.6, 0.07)
                           | _disc(x, y, -0.7, 0.6, 0.07), (90, 60, 40))]


def _p_office(x: _Arr, y: _Arr) -> list[_Layer]:
    paper = _box(x, y, -0.6, 0.6, -0.85, 0.85)
    lines = paper & (np.abs(((y + 0.85) / 0.17) - np.round((y + 0.85) / 0.17)) < 0.12) & (y > -0.6)
    pen = (np.abs(x - y * 0.5 - 0.55) < 0.06) & (y > -0.7) & (y < 0.7)
    return [(paper, (250, 250, 245)), (lines, "fg"), (paper & (np.abs(x + 0.42) < 0.02), (220, 60, 60)),
            (pen, (30, 30, 80))]


def _p_auto(x: _Arr, y: _Arr) -> list[_Layer]:
    body = _box(x, y, -0.85, 0.85, -0.05, 0.35) | _box(x, y, -0.45, 0.4, -0.4, 0.0)
    wheels = _disc(x, y, -0.5, 0.38, 0.2) | _disc(x, y, 0.5, 0.38, 0.2)
    return [(body, "fg"), (_box(x, y, -0.38, -0.05, -0.33, -0.05) | _box(x, y, 0.02, 0.33, -0.33, -0.05),
                           (190, 220, 250)), (wheels, (25, 25, 25)),
            (_disc(x, y, -0.5, 0.38, 0.08) | _disc(x, y, 0.5, 0.38, 0.08), (180, 180, 180))]


def _bg_plain(X: _Arr, Y: _Arr, c: tuple[int, int, int]) -> _Arr:
    return np.broadcast_to(np.array(c, np.float32), X.shape + (3,)).copy()


def _bg_stripes(X: _Arr, Y: _Arr, c1: tuple[int, int, int], c2: tuple[int, int, int], f: float,
                ax: float, ay: float = 1.0) -> _Arr:
    m = (np.sin((X * ax + Y * ay) * f) > 0)[..., None]
    return np.where(m, np.array(c1, np.float32), np.array(c2, np.float32))


def _bg_vgrad(X: _Arr, Y: _Arr, c1: tuple[int, int, int], c2: tuple[int, int, int]) -> _Arr:
    t = ((Y + 1) / 2)[..., None]
    return (1 - t) * np.array(c1, np.float32) + t * np.array(c2, np.float32)


def _bg_dots(X: _Arr, Y: _Arr, c1: tuple[int, int, int], c2: tuple[int, int, int], f: float) -> _Arr:
    m = ((np.sin(X * f) * np.sin(Y * f)) > 0.6)[..., None]
    return np.where(m, np.array(c2, np.float32), np.array(c1, np.float32))


def _backgrounds(X: _Arr, Y: _Arr) -> list[_Arr]:
    """One background per category ``[H, W, 3]``, in catalogue order."""
    road = np.where((Y > 0.55)[..., None], np.array((90, 90, 95), np.float32), np.array((190, 220, 245), np.float32))
    return [
        _bg_plain(X, Y, (225, 228, 232)),                                      # electronics
        _bg_stripes(X, Y, (245, 240, 250), (215, 205, 235), 14, 1.0),          # gift cards
        _bg_plain(X, Y, (235, 220, 190)),                                      # books
        _bg_plain(X, Y, (250, 250, 250)),                                      # shoes
        _bg_stripes(X, Y, (215, 225, 240), (235, 240, 248), 30, 1.0, 0.0),     # clothing (vertical)
        _bg_vgrad(X, Y, (140, 190, 240), (220, 240, 210)),                     # home
        _bg_stripes(X, Y, (250, 250, 250), (200, 60, 60), 10, 0.0),            # kitchen (tablecloth)
        _bg_dots(X, Y, (255, 245, 200), (120, 200, 240), 12),                  # toys
        _bg_vgrad(X, Y, (255, 225, 235), (240, 200, 220)),                     # beauty
        np.where((np.abs(np.sin(Y * 9)) < 0.2)[..., None], np.array((230, 240, 230), np.float32),
                 np.array((70, 150, 70), np.float32)),                         # sports (pitch)
        _bg_plain(X, Y, (245, 245, 240)),                                      # grocery
        _bg_plain(X, Y, (25, 20, 45)),                                         # jewelry (velvet)
        _bg_vgrad(X, Y, (200, 235, 200), (120, 90, 60)),                       # garden
        _bg_dots(X, Y, (250, 215, 170), (235, 190, 140), 20),                  # pet supplies
        _bg_stripes(X, Y, (95, 75, 60), (110, 88, 70), 40, 0.15),              # office (desk wood)
        road,                                                                  # automotive
    ]


_PAINTERS: tuple[_Painter, ...] = (
    _p_electronics, _p_giftcard, _p_books, _p_shoes, _p_clothing, _p_home, _p_kitchen, _p_toys,
    _p_beauty, _p_sports, _p_grocery, _p_jewelry, _p_garden, _p_pet, _p_office, _p_auto,
)


_TEMPLATE_SIZE: int = 320
_TEMPLATE_HALF: float = 1.4  # the template covers [-1.4, 1.4]²: enough for any shift and scale below


@functools.cache
def _template(cat: int) -> tuple[np.ndarray, tuple[object, ...]]:
    """The category's drawing as a layer-index map ``uint8[T, T]`` (0 = background) and the colour
    source of each layer ("fg" = the item's colour, else a fixed RGB)."""
    lin = ((np.arange(_TEMPLATE_SIZE, dtype=np.float32) + 0.5) / _TEMPLATE_SIZE * 2 - 1) * _TEMPLATE_HALF
    y, x = np.meshgrid(lin, lin, indexing="ij")
    layers = _PAINTERS[cat](x[None], y[None])
    layer = np.zeros((_TEMPLATE_SIZE, _TEMPLATE_SIZE), dtype=np.uint8)
    for k, (mask, _) in enumerate(layers, start=1):
        layer[mask[0]] = k
    return layer, tuple(src for _, src in layers)


@functools.cache
def _background(cat: int) -> np.ndarray:
    lin = (np.arange(IMAGE_SIZE, dtype=np.float32) + 0.5) / IMAGE_SIZE * 2 - 1
    Y, X = np.meshgrid(lin, lin, indexing="ij")
    return np.round(_backgrounds(X, Y)[cat]).astype(np.int16)  # [S, S, 3]


def _render(rng: np.random.Generator, cat: int, colours: np.ndarray) -> np.ndarray:
    """Images of ``colours.shape[0]`` items of category ``cat``: ``uint8[n, S, S, 3]``.

    The category fixes background texture and the drawn object; the item's colour fills the
    object; each item gets a random shift, scale, colour jitter and a few speckles. The object
    is drawn once per category at high resolution and resampled (nearest neighbour) per item.
    """
    n = colours.shape[0]
    lin = (np.arange(IMAGE_SIZE, dtype=np.float32) + 0.5) / IMAGE_SIZE * 2 - 1
    bg = _background(cat)
    template, sources = _template(cat)
    dx = rng.uniform(-0.12, 0.12, (n, 1)).astype(np.float32)
    dy = rng.uniform(-0.1, 0.1, (n, 1)).astype(np.float32)
    s = rng.uniform(0.85, 1.1, (n, 1)).astype(np.float32)
    scale = _TEMPLATE_SIZE / (2 * _TEMPLATE_HALF)
    # Template pixel of each output column / row: [n, S].
    ix = np.clip(((lin[None] - dx) / s + _TEMPLATE_HALF) * scale, 0, _TEMPLATE_SIZE - 1).astype(np.intp)
    iy = np.clip(((lin[None] - dy) / s + _TEMPLATE_HALF) * scale, 0, _TEMPLATE_SIZE - 1).astype(np.intp)
    layer = template[iy[:, :, None], ix[:, None, :]]  # [n, S, S]
    shade = np.round(rng.normal(0, 6, (n, 1, 1, 3))).astype(np.int16)
    fg = colours.astype(np.float32) + rng.normal(0, 12, (n, 3)).astype(np.float32)
    pal = np.zeros((n, len(sources) + 1, 3), dtype=np.float32)
    for k, src in enumerate(sources, start=1):
        pal[:, k] = fg if isinstance(src, str) else np.array(src, np.float32)
    pal_u8 = np.clip(np.round(pal), 0, 255).astype(np.uint8)
    img = np.clip(bg[None] + shade, 0, 255).astype(np.uint8)  # [n, S, S, 3]
    drawn = layer > 0
    item_of = np.broadcast_to(np.arange(n)[:, None, None], layer.shape)
    img[drawn] = pal_u8[item_of[drawn], layer[drawn]]
    speck = rng.random((n, IMAGE_SIZE, IMAGE_SIZE)) < 0.01
    img[speck] = rng.integers(0, 256, (int(speck.sum()), 3), dtype=np.uint8)
    return img


def _write_images(folder: Path, rng: np.random.Generator, items: _Items, progress: bool) -> None:
    folder.mkdir()
    ids = items.table["item_id"].to_numpy()
    palette = np.array([c[1] for c in COLOURS])
    bar = tqdm(total=ids.size, desc="images", unit="img", disable=not progress)
    for c in range(len(CATEGORIES)):
        sel = np.flatnonzero(items.cat == c)
        for s in range(0, sel.size, 1024):
            rows = sel[s:s + 1024]
            imgs = _render(rng, c, palette[items.colour[rows]])
            for r, img in zip(rows, imgs):
                (folder / f"{ids[r]}.png").write_bytes(_png_bytes(img))
            bar.update(rows.size)
    bar.close()
