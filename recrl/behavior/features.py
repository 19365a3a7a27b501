"""Item content as model inputs: side-table attributes and pretrained text embeddings.

A behavior model with ``features: [side]`` and/or ``[text]`` receives an :class:`ItemFeatures`
for the whole catalogue and adds an encoding of it to its item embeddings, so an item that
never appeared in the training logs still gets a meaningful vector (cold start).

``side`` turns each dataset's item table into two parts:

- tokens (multi-hot): ``|``-separated lists (MovieLens genres), space-separated attribute ids
  (S3-Rec ``attributes``), 0/1 indicator columns (Coat's ``color:blue``) and integer columns with
  few distinct values (the synthetic world's ``topic``);
- dense: other numeric columns, standardised (the synthetic world's ``quality``, ``price``).

Free text with many distinct values (titles, dates) is left to ``text``: one sentence-embedding
per item from :mod:`recrl.behavior.text`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recrl.types import RecrlError

FEATURE_KINDS = ("side", "text", "auto")  # auto: side when the item table has usable columns
MAX_INT_LEVELS = 64  # integer columns with at most this many values are categories
MAX_TOKEN_SHARE = 0.5  # a string column with more distinct tokens than this share of rows is free text


@dataclass(frozen=True)
class ItemFeatures:
    """Content of every item ``0..n_items-1``.

    Attributes:
        tokens: ``[n_items, C]`` multi-hot categorical tokens (``None`` when there are none).
        dense: ``[n_items, F]`` real-valued features, standardised or unit-norm embeddings.
        token_names: the name of each token column (e.g. ``genres=Comedy``).
        dense_names: the item-table column behind each of the first ``len(dense_names)`` dense
            columns (numeric side features; text embeddings are unnamed).

    Example::

        features = side_features(interactions.items, interactions.n_items)
        features.tokens.shape              # [n_items, C]
    """

    tokens: Tensor | None
    dense: Tensor | None
    token_names: tuple[str, ...] = ()
    dense_names: tuple[str, ...] = ()

    @property
    def n_tokens(self) -> int:
        """Number of token columns ``C`` (0 without tokens)."""
        return 0 if self.tokens is None else self.tokens.shape[1]

    @property
    def n_dense(self) -> int:
        """Width ``F`` of the dense part (0 without it)."""
        return 0 if self.dense is None else self.dense.shape[1]

    def join(self, other: ItemFeatures) -> ItemFeatures:
        """Both feature sets side by side (for ``features: [side, text]``)."""
        def cat(a: Tensor | None, b: Tensor | None) -> Tensor | None:
            parts = [t for t in (a, b) if t is not None]
            return torch.cat(parts, 1) if parts else None
        return ItemFeatures(cat(self.tokens, other.tokens), cat(self.dense, other.dense),
                            self.token_names + other.token_names, self.dense_names + other.dense_names)


def _split_tokens(values: pd.Series, sep: str | None) -> list[list[str]]:
    return [[] if pd.isna(v) else [t for t in str(v).split(sep) if t] for v in values]


def _column_tokens(name: str, column: pd.Series) -> list[list[str]] | None:
    """Per-row tokens of one column, or ``None`` when the column is not categorical."""
    if pd.api.types.is_bool_dtype(column) or (
            pd.api.types.is_numeric_dtype(column) and set(column.dropna().unique()) <= {0, 1}):
        return [[name] if v == 1 else [] for v in column]
    if pd.api.types.is_integer_dtype(column) and column.nunique() <= MAX_INT_LEVELS:
        return [[] if pd.isna(v) else [f"{name}={int(v)}"] for v in column]
    if pd.api.types.is_string_dtype(column) or column.dtype == object:
        text = column.dropna().astype(str)
        sep = next((c for c in ("|", " ") if text.str.contains(c, regex=False).any()), None)
        rows = _split_tokens(column, sep)
        vocabulary = {t for row in rows for t in row}
        if len(vocabulary) <= MAX_TOKEN_SHARE * max(len(text), 1):  # else free text (titles)
            return [[f"{name}={t}" for t in row] for row in rows]
    return None


def side_features(items: pd.DataFrame, n_items: int) -> ItemFeatures:
    """Tokens and standardised numeric columns of the item side table (indexed by item id)."""
    table = items.reindex(range(n_items))
    rows: list[list[str]] = [[] for _ in range(n_items)]
    dense_cols: list[np.ndarray] = []
    dense_names: list[str] = []
    for name in table.columns:
        column = table[name]
        tokens = _column_tokens(str(name), column)
        if tokens is not None:
            for row, extra in zip(rows, tokens, strict=True):
                row.extend(extra)
        elif pd.api.types.is_numeric_dtype(column):
            values = column.to_numpy(dtype=np.float64)
            values = np.nan_to_num(values, nan=np.nanmean(values) if np.isfinite(values).any() else 0.0)
            dense_cols.append((values - values.mean()) / (values.std() or 1.0))
            dense_names.append(str(name))
    names = sorted({t for row in rows for t in row})
    index = {t: j for j, t in enumerate(names)}
    tokens = None
    if names:
        tokens = torch.zeros(n_items, len(names))
        for i, row in enumerate(rows):
            tokens[i, [index[t] for t in row]] = 1.0
    dense = torch.tensor(np.stack(dense_cols, 1), dtype=torch.float32) if dense_cols else None
    return ItemFeatures(tokens=tokens, dense=dense, token_names=tuple(names), dense_names=tuple(dense_names))


def item_categories(items: pd.DataFrame, n_items: int, column: str | None = None) -> Tensor:
    """One category code per item ``[n_items]`` (long; -1 = unknown), e.g. for a boredom rule.

    ``column`` names a categorical column (multi-valued cells such as ``Action|Comedy`` count
    by their first value) or the prefix of 0/1 indicator columns (Coat's ``jackettype`` for
    ``jackettype:bomber`` ...). ``None`` takes the first column with a few distinct values.

    Example::

        codes = item_categories(interactions.items, interactions.n_items, "topic")
    """
    table = items.reindex(range(n_items))
    indicators: dict[str, list[str]] = {}
    for name in table.columns:
        prefix, sep, _ = str(name).partition(":")
        if sep:
            indicators.setdefault(prefix, []).append(name)
    if column is not None:
        codes = _category_codes(table, indicators, column)
        if codes is None:
            options = sorted({*map(str, table.columns), *indicators})
            raise RecrlError(f"item category column {column!r} is not a categorical column of the item "
                             f"table; options: {', '.join(options) or '(the table is empty)'}")
        return codes
    names = [*indicators, *map(str, table.columns)]
    found = [c for c in (_category_codes(table, indicators, n) for n in names)
             if c is not None and 2 <= int(c.max()) + 1 <= MAX_INT_LEVELS]
    if not found:
        raise RecrlError("the item table has no column with 2-64 categories; name one "
                         "(e.g. env.boredom.category_column=genres)")
    return max(found, key=lambda c: int(c.max()))


def _category_codes(table: pd.DataFrame, indicators: dict[str, list[str]], name: str) -> Tensor | None:
    """Codes of one indicator group or categorical column (first value of multi-valued cells)."""
    if name in indicators:
        flags = table[indicators[name]].fillna(0).to_numpy(dtype=np.float32)
        return torch.as_tensor(np.where(flags.any(1), flags.argmax(1), -1), dtype=torch.long)
    if name not in table.columns or name in {c for group in indicators.values() for c in group}:
        return None
    tokens = _column_tokens(name, table[name])
    if tokens is None or not any(tokens):
        return None
    codes, _ = pd.factorize(pd.Series([row[0] if row else None for row in tokens]))
    return torch.as_tensor(codes, dtype=torch.long)


def check_feature_kinds(kinds: Sequence[str]) -> None:
    """One-line error for a ``behavior.features`` entry that is not a known kind."""
    unknown = [k for k in kinds if k not in FEATURE_KINDS]
    if unknown:
        options = ", ".join(FEATURE_KINDS)
        raise RecrlError(f"behavior.features: unknown kind {unknown[0]!r}; use any of {options}")


def build_item_features(kinds: Sequence[str], items: pd.DataFrame, n_items: int,
                        cache_dir: str | Path) -> ItemFeatures | None:
    """The features a model asked for (``behavior.features``), ``None`` for none. ``auto`` is
    ``side`` when the dataset's item table has usable columns and nothing otherwise."""
    check_feature_kinds(kinds)
    result: ItemFeatures | None = None
    for kind in dict.fromkeys(kinds):
        if kind in ("auto", "side"):
            part = side_features(items, n_items)
            if kind == "auto" and part.n_tokens == 0 and part.n_dense == 0:
                continue
        else:
            from recrl.behavior.text import item_text_embeddings

            part = ItemFeatures(tokens=None, dense=item_text_embeddings(items, n_items, cache_dir))
        result = part if result is None else result.join(part)
    if result is not None and result.n_tokens == 0 and result.n_dense == 0:
        raise RecrlError("behavior.features=[side]: the dataset's item table has no usable columns; "
                         "drop side from behavior.features")
    return result


TOKEN_LISTS_FROM = 64  # vocabularies this large are read as token lists (ItemContentEncoder)


class ItemContentEncoder(nn.Module):
    """Maps every item's features to a ``dim`` vector: a mean of token embeddings plus a linear
    map of the dense part. Added to an item-id embedding, it lets unseen items be scored.

    From :data:`TOKEN_LISTS_FROM` tokens on, the tokens are kept as each item's few token ids
    and weights (its token counts' shares), so a vector costs its item's tokens, not the whole
    vocabulary: Beauty's items have at most 6 of 637 tokens, where the multi-hot row times the
    token matrix did 637 multiply-adds per output. Below it, the multi-hot product itself, in
    its old order, so the small vocabularies (the synthetic world's 11 tokens) give the same bits.

    Example::

        encoder = ItemContentEncoder(features, dim=64)
        content = encoder()               # [n_items, 64]
    """

    def __init__(self, features: ItemFeatures, dim: int) -> None:
        super().__init__()
        self.token_lists = features.n_tokens >= TOKEN_LISTS_FROM
        tokens = features.tokens if features.tokens is not None else torch.zeros(0, 0)
        shares = tokens / tokens.sum(1, keepdim=True).clamp(min=1.0) if tokens.numel() else tokens
        # token lists: ids and weights [n_items, M]; else no ids and the shares [n_items, C] themselves
        no_ids = torch.zeros(0, 0, dtype=torch.long)
        token_ids, token_weights = _token_lists(shares) if self.token_lists else (no_ids, shares)
        self.register_buffer("token_ids", token_ids, persistent=False)
        self.register_buffer("token_weights", token_weights, persistent=False)
        self.register_buffer("dense", features.dense if features.dense is not None else torch.zeros(0, 0),
                             persistent=False)
        self.token_emb = nn.Linear(features.n_tokens, dim, bias=False) if features.n_tokens else None
        self.dense_proj = nn.Linear(features.n_dense, dim) if features.n_dense else None
        if self.token_emb is not None:
            nn.init.normal_(self.token_emb.weight, 0.0, dim ** -0.5)

    def forward(self, items: Tensor | None = None) -> Tensor:
        """Content vectors ``[n_items, dim]`` (or ``[..., dim]`` for given ``items``)."""
        parts = []
        if self.token_emb is not None:
            weights = self.token_weights if items is None else self.token_weights[items]
            if self.token_lists:
                ids = self.token_ids if items is None else self.token_ids[items]
                embedded = F.embedding(ids, self.token_emb.weight.T.contiguous())  # [..., M, dim]
                parts.append((embedded * weights.unsqueeze(-1)).sum(-2))
            else:
                parts.append(self.token_emb(weights))
        if self.dense_proj is not None:
            parts.append(self.dense_proj(self.dense if items is None else self.dense[items]))
        return torch.stack(parts).sum(0)


def _token_lists(weights: Tensor) -> tuple[Tensor, Tensor]:
    """Each item's token ids and weights ``[n_items, M]``: the nonzeros of its row of
    ``weights`` ``[n_items, C]`` (M: the most any item has; shorter lists padded with token 0
    at weight 0)."""
    width = max(int((weights != 0).sum(1).max()), 1)
    ids = torch.argsort((weights == 0).to(torch.uint8), dim=1, stable=True)[:, :width]  # nonzeros first
    return ids, weights.gather(1, ids)
