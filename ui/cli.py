"""The ``shopgraph`` command.

Each subcommand's arguments are declared here; its work is done by one function of the owning
module, imported lazily so that ``shopgraph --help`` stays fast. The function takes the parsed
``argparse.Namespace`` and returns the process exit code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# subcommand -> "module:function"
_COMMANDS: dict[str, str] = {
    "generate": "shopgraph.graph.synthetic:cli_generate",
    "validate": "shopgraph.graph.load:cli_validate",
    "build": "shopgraph.graph.pipeline:cli_build",
    "inspect": "shopgraph.graph.pipeline:cli_inspect",
    "train": "shopgraph.graph.train:cli_train",
    "evaluate": "shopgraph.graph.evaluate:cli_evaluate",
    "index": "shopgraph.retrieval.index:cli_index",
    "serve": "shopgraph.retrieval.api:cli_serve",
    "catalogue": "shopgraph.retrieval.catalogue:cli_catalogue",
    "recommend": "shopgraph.retrieval.export:cli_recommend",
    "score": "shopgraph.retrieval.export:cli_score",
    "rings": "shopgraph.graph.rings:cli_rings",
    "demo": "shopgraph.ui.demo:cli_demo",
}


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer of at least ``minimum``, else one line naming the rule."""
    rule = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {rule} (got {text!r})") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {rule} (got {text!r})")
        return value

    return parse


def _cors_origin(text: str) -> str:
    """An argparse ``type``: an origin for ``serve --cors-origin`` (checked before any loading)."""
    from shopgraph.retrieval.api import cors_origin

    try:
        return cors_origin(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--cors-origin: ")) from None


def _port(text: str) -> int:
    """An argparse ``type``: a TCP port, 1-65535 or 0 (any free port), checked before any loading."""
    rule = "expected a port number from 1 to 65535, or 0 for any free port"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{rule} (got {text!r})") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{rule} (got {text!r})")
    return value


_nonnegative_int = _int_at_least(0)
_positive_int = _int_at_least(1)


MAX_SEED = 2**32 - 1


def _seed(text: str) -> int:
    """An argparse ``type``: a random seed, 0 to 2**32 - 1."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to {MAX_SEED} (got {text!r})")
    return value


def _k(text: str) -> int:
    """An argparse ``type``: a number of results, 1-1000 (as the API takes it)."""
    try:
        value = _positive_int(text)
    except argparse.ArgumentTypeError:
        value = 0
    if not 1 <= value <= 1000:  # one message for every value out of range (0 said "a positive integer")
        raise argparse.ArgumentTypeError(f"expected an integer from 1 to 1000 (got {text!r})")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shopgraph", description="Graph-based recommendation and fraud engine for online shops."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("generate", help="write the embedded synthetic shop (tables + item images)")
    p.add_argument("--out", type=Path, required=True, help="output folder (created; must be empty or absent)")
    p.add_argument("--users", type=_int_at_least(100), default=5000,
                   help="number of users, at least 100 so that fraud rings fit (default 5000)")
    p.add_argument("--seed", type=_seed, default=0, help="random seed (default 0)")
    p.add_argument("--label-noise", type=float, default=0.0, help="share of fraud labels flipped (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier synthetic shop in --out (a folder with anything else in it is refused)")

    p = sub.add_parser("validate", help="check a tables folder; report repairs; exit 1 on fatal problems")
    p.add_argument("data", type=Path, help="folder with users/items/events[/devices/labels], each .csv, .csv.gz or .parquet (a file or a Parquet folder)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--target", default="purchase",
                   help="the event type build will recommend (its --target; default purchase): there must be some")

    p = sub.add_parser("build", help="validate, encode and build the graph into a run folder")
    p.add_argument("--data", type=Path, required=True, help="tables folder")
    p.add_argument("--out", type=Path, required=True, help="run folder to write")
    p.add_argument("--target", default="purchase", help="event type to recommend (default purchase)")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--no-text", action="store_true", help="skip the text encoder")
    p.add_argument("--no-image", action="store_true", help="skip the image encoder")
    p.add_argument("--text-model", default=None, help="local folder of a BERT-family checkpoint")
    p.add_argument("--image-model", default=None, help="local folder of a Hugging Face vision checkpoint")
    p.add_argument("--cache-dir", type=Path, default=None, help="embedding cache (default ~/.cache/shopgraph)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a previous run folder (one with manifest.json; never the --data folder)")

    p = sub.add_parser("inspect", help="summarise a run folder")
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--json", action="store_true", help="print only nodes, edges, features and split, on one line")

    p = sub.add_parser("train", help="train the GNN of a run folder")
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--epochs", type=_positive_int, default=None)
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when present)")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--conv", default=None, choices=["history", "sage", "gatv2", "hgt", "lightgcn"],
                   help="history (default): the user-history tower; the others are message-passing GNNs")
    batching = p.add_mutually_exclusive_group()
    batching.add_argument("--mini-batch", action="store_true",
                          help="train in mini-batches: batches of users for the history tower (exact, no extra "
                               "dependency), neighbour-sampled batches for the message-passing convs (needs "
                               "torch-sparse or pyg-lib). Default: the history tower switches to them by itself "
                               "when a full-batch step's softmax over every train pair and item would not fit")
    batching.add_argument("--full-batch", action="store_true", help="one step over the whole graph per epoch, always")
    p.add_argument("--batch-size", type=_positive_int, default=None,
                   help="predicted pairs per mini-batch (default 1024)")
    p.add_argument("--item-knn-rank", type=_nonnegative_int, default=None,
                   help="fix the rank of the history tower's item-neighbour channel (0: off; default: chosen on "
                        "validation among 64, 256, 1024, 2048, at most half the catalogue; larger ranks widen "
                        "the served vectors and slow each search)")
    p.add_argument("--held-out-folds", type=_nonnegative_int, default=None,
                   help="folds of the trained-on accounts' held-out fraud scores (their scores from trees refitted "
                        "without their labels; default 5, 0: none, saving five tree fits)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")

    p = sub.add_parser("evaluate", help="metrics and report against baselines")
    p.add_argument("--run", type=Path, required=True)

    p = sub.add_parser("index", help="build FAISS indexes for a trained run")
    p.add_argument("--run", type=Path, required=True)

    p = sub.add_parser("serve", help="serve the HTTP API (and the Gradio app at /demo)")
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_port, default=8000, help="1-65535, or 0 for any free port (default 8000)")
    p.add_argument("--workers", type=_positive_int, default=1)
    p.add_argument("--access-log", action="store_true",
                   help="log one line a request: method, route, status, milliseconds and its request id (the "
                        "X-Request-ID a client sent, or the one made for it, which every answer carries)")
    p.add_argument("--cors-origin", type=_cors_origin, action="append", default=None, metavar="ORIGIN",
                   help="a site whose pages may call the API from the browser (https://shop.example; once for each "
                        "site, or * for any); without it browsers let no other site read the answers")

    p = sub.add_parser("catalogue", help="the items added and removed at run time (the run's journal); --compact it")
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--compact", action="store_true",
                   help="keep only the changes still served (the journal before is kept in RUN/catalogue_history/; "
                        "running services follow without a restart)")
    p.add_argument("--prune-history", action="store_true",
                   help="delete the generations in RUN/catalogue_history/ compacted away at least 10 minutes ago "
                        "(running services have read them by then) and the added images no line names")
    p.add_argument("--json", action="store_true", help="print JSON")

    users_help = ("only these users: a text file with one id per line, or a .csv / .parquet table with a "
                  "user_id column (default: every user of the run)")
    p = sub.add_parser("recommend", help="write every user's recommendations to a CSV, Parquet or JSON file")
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="the file to write (.csv, .parquet or .json)")
    p.add_argument("--users", type=Path, default=None, help=users_help)
    p.add_argument("--k", type=_k, default=10, help="recommendations per user, 1-1000 (default 10)")
    p.add_argument("--include-seen", action="store_true", help="keep items the user already purchased")
    p.add_argument("--category", default=None, help="only items of this category")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")

    p = sub.add_parser("score", help="write every account's fraud score and reasons to a CSV, Parquet or JSON file")
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="the file to write (.csv, .parquet or .json)")
    p.add_argument("--users", type=Path, default=None, help=users_help)
    p.add_argument("--no-reasons", action="store_true", help="scores only, no reasons")
    keep = p.add_mutually_exclusive_group()
    keep.add_argument("--flagged-only", action="store_true", help="only the accounts at or above the threshold")
    keep.add_argument("--leads", action="store_true",
                      help="only the accounts not labelled fraud that the scorer flags, by the served score or, for "
                           "an account it was trained on, by its score with its own label held out: the accounts to "
                           "look into, the most likely fraud first (by the held-out score where the served one is "
                           "fitted to a label)")
    keep.add_argument("--label-audit", action="store_true",
                      help="only the accounts the scorer was trained on whose held-out score contradicts their label "
                           "(labelled legitimate but at or above the threshold, or labelled fraud but below it, with "
                           "their labels held out), the most contradicted first (farthest from the threshold in "
                           "log-odds): labels worth a second look. Their flagged column and reasons are those of the "
                           "served score, fitted to the label; held_out_flagged is the held-out verdict")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")

    p = sub.add_parser("rings", help="find, score and export fraud rings")
    p.add_argument("--run", type=Path, required=True)
    chosen = p.add_mutually_exclusive_group()
    chosen.add_argument("--top", type=_positive_int, default=20, help="the N highest-ranked rings (default 20)")
    chosen.add_argument("--ring", action="append", metavar="RING_ID",
                        help="this ring instead of the top N (repeat it for more: --ring R0035 --ring R0041), to "
                             "list or forward a few chosen cases; ids as the ranked list gives them, in any case, or a rank "
                             "without its zeros (R35 is R0035)")
    p.add_argument("--export", type=Path, default=None, help="write case files to this folder")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier case export in --export")

    p = sub.add_parser("demo", help="generate, build, train, evaluate, index and serve the demo")
    p.add_argument("--port", type=_port, default=7860, help="1-65535, or 0 for any free port (default 7860)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--workdir", type=Path, default=Path("demo_data"))
    p.add_argument("--users", type=_int_at_least(100), default=5000,
                   help="users of the synthetic shop, at least 100 (default 5000)")
    p.add_argument("--no-serve", action="store_true", help="prepare everything, then exit")
    return parser


def _resolve(spec: str) -> Callable[[argparse.Namespace], int]:
    module_name, func_name = spec.split(":")
    module = importlib.import_module(module_name)
    func: Callable[[argparse.Namespace], int] = getattr(module, func_name)
    return func


class _Terminated(BaseException):
    """SIGTERM, raised where the program is so that the ``except BaseException`` clean-ups run."""


def _terminated(signum: int, frame: Any) -> None:
    raise _Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not args.verbose:  # FAISS logs each instruction set it tries when it loads
        logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    # a job stopped with SIGTERM (a scheduler, `kill`) cleans up as Ctrl-C does: the temporary folders
    # of a run, an export or a shop being written are removed (the server installs its own handler)
    previous = signal.signal(signal.SIGTERM, _terminated) if threading.current_thread() is threading.main_thread() \
        else None
    try:
        try:
            func = _resolve(_COMMANDS[args.command])  # imports torch and friends: seconds, Ctrl-C included
        except (ImportError, AttributeError) as exc:
            print(f"shopgraph {args.command}: not available in this build ({exc})", file=sys.stderr)
            return 2
        return func(args)
    except _Terminated:
        print(f"\nshopgraph {args.command}: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        # Ctrl-C: one line and the shell's usual status; run folders are written atomically, so
        # nothing is half-written (`shopgraph train --resume` continues from the last checkpoint).
        print(f"\nshopgraph {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError) as exc:
        # Input problems end with one clear line, not a traceback (a missing file, a folder in the
        # way: FileNotFoundError, FileExistsError), and so do the machine's (a full disk, a
        # missing permission): run folders are written atomically, so what was there before is
        # intact (`shopgraph train --resume` continues from the last checkpoint).
        print(f"shopgraph {args.command}: error: {exc}", file=sys.stderr)
        return 1
    finally:
        if previous is not None:  # main() called from Python (tests, a notebook): its own handler back
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
