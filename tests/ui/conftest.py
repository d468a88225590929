"""One small, real run folder per test session for the UI tests (app handlers and browser).

Built through the real pipeline (generate -> build without images -> a few epochs of training ->
evaluate -> index -> rings with a case export), so the app sees exactly what ``shopgraph demo``
produces, only smaller. Set ``SHOPGRAPH_UI_RUN`` to an existing complete run folder to use it
instead (e.g. the 1,500-user run used for the README screenshots).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shopgraph.graph.rings import FraudCases
from shopgraph.retrieval.service import ShopService

RUN_ENV = "SHOPGRAPH_UI_RUN"
UI_USERS = 400
UI_EPOCHS = 3


def build_small_run(base: Path, *, users: int = UI_USERS, epochs: int = UI_EPOCHS) -> Path:
    """Generate and process a small synthetic shop; return the run folder.

    Args:
        base: an empty folder for the shop, the embedding cache and the run.
        users: synthetic users (items scale as ``max(300, 0.4 * users)``).
        epochs: training epochs.
    """
    from shopgraph.graph.evaluate import evaluate_run
    from shopgraph.graph.pipeline import build_run
    from shopgraph.graph.rings import rings_run
    from shopgraph.graph.synthetic import generate_shop
    from shopgraph.graph.train import train_run
    from shopgraph.retrieval.index import index_run

    shop, run = base / "shop", base / "run"
    generate_shop(shop, n_users=users, seed=0)
    build_run(shop, run, seed=0, use_image=False, cache_dir=base / "cache")
    train_run(run, epochs=epochs)
    evaluate_run(str(run))
    index_run(run)
    rings_run(run, top=5, export=run / "cases")
    return run


@pytest.fixture(scope="session")
def ui_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run folder the UI tests use (built once per session, or ``$SHOPGRAPH_UI_RUN``)."""
    given = os.environ.get(RUN_ENV)
    if given:
        path = Path(given)
        if not (path / "manifest.json").is_file():
            pytest.fail(f"{RUN_ENV}={given!r} is not a run folder (no manifest.json)")
        return path
    return build_small_run(tmp_path_factory.mktemp("ui"))


@pytest.fixture(scope="session")
def ui_service(ui_run: Path) -> ShopService:
    return ShopService.from_run(ui_run)


@pytest.fixture(scope="session")
def ui_cases(ui_run: Path) -> FraudCases:
    return FraudCases.from_run(ui_run)
