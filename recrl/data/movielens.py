"""MovieLens 100K (``dataset=ml100k``) and 1M (``dataset=ml1m``) from GroupLens' own files.

Ratings become implicit clicks by ``dataset.preprocess.implicit_threshold`` (ratings kept).
Items keep their title (text for content encoders) and genres; users keep their demographics.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from recrl.data.base import FileDataset
from recrl.data.preprocess import Preprocessing, RawLog
from recrl.data.reader import CHUNK_ROWS, ChunkedColumns, count_lines, open_text, parse_lines, read_delimited
from recrl.types import RecrlError

RATING_COLUMNS = {"user": "int", "item": "int", "rating": "float", "time": "int"}
ML100K_GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
                 "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
                 "Romance", "Sci-Fi", "Thriller", "War", "Western"]


def _check_ratings(frame: pd.DataFrame, path: Path) -> None:
    bad = ~frame["rating"].between(0.5, 5)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise RecrlError(f"{path}: rating {frame['rating'].iloc[row]} on data row {row + 1} is outside 1..5")


class MovieLens100K(FileDataset):
    """``u.data`` (user, item, rating, time; tab-separated), ``u.item`` and ``u.user``.

    Example::

        splits = MovieLens100K(root="data/ml-100k").load()
    """

    name = "ml100k"
    download_name = "ml100k"

    def __init__(self, root: str, preprocess: Preprocessing | None = None, on_bad_rows: str = "error",
                 cache_dir: str | None = None, side_information: bool = True) -> None:
        super().__init__(root, preprocess, on_bad_rows, cache_dir)
        self.side_information = side_information

    def required_files(self) -> list[Path]:
        """Just the ratings."""
        return [self.root / "u.data"]

    def optional_files(self) -> list[Path]:
        """Item titles/genres and user demographics."""
        return [self.root / "u.item", self.root / "u.user"] if self.side_information else []

    def read(self) -> RawLog:
        """Ratings plus side tables."""
        path = self.root / "u.data"
        table = read_delimited(path, sep="\t", columns=RATING_COLUMNS, on_bad_rows=self.on_bad_rows)
        _check_ratings(table.frame, path)
        items = users = None
        if self.side_information and (self.root / "u.item").is_file():
            items = self._items(self.root / "u.item")
        if self.side_information and (self.root / "u.user").is_file():
            users = self._users(self.root / "u.user")
        return RawLog(log=table.frame, items=items, users=users, skipped_rows=table.skipped,
                      meta={"name": self.name})

    def _items(self, path: Path) -> pd.DataFrame:
        columns = {"item": "int", "title": "str", "release_date": "str", "video_date": "str", "url": "str"}
        columns |= {f"g{i}": "int" for i in range(len(ML100K_GENRES))}
        frame = parse_lines(path, sep="|", columns=columns, encoding="latin-1",
                            on_bad_rows=self.on_bad_rows).frame
        flags = frame[[f"g{i}" for i in range(len(ML100K_GENRES))]].to_numpy()
        frame["genres"] = ["|".join(g for g, f in zip(ML100K_GENRES, row, strict=True) if f) for row in flags]
        return frame[["item", "title", "release_date", "genres"]].set_index("item")

    def _users(self, path: Path) -> pd.DataFrame:
        columns = {"user": "int", "age": "int", "gender": "str", "occupation": "str", "zip": "str"}
        frame = parse_lines(path, sep="|", columns=columns, on_bad_rows=self.on_bad_rows).frame
        return frame.set_index("user")


class MovieLens1M(FileDataset):
    """``ratings.dat`` (``user::item::rating::time``; ``.gz`` accepted), ``movies.dat`` (latin-1)
    and ``users.dat``.

    ``ratings_file`` picks the ratings file inside ``root`` (the shared subset is
    ``partial/ratings.users0001-2999.dat.gz``).
    """

    name = "ml1m"
    download_name = "ml1m"

    def __init__(self, root: str, preprocess: Preprocessing | None = None, on_bad_rows: str = "error",
                 cache_dir: str | None = None, ratings_file: str = "ratings.dat",
                 side_information: bool = True) -> None:
        super().__init__(root, preprocess, on_bad_rows, cache_dir)
        self.ratings_file, self.side_information = ratings_file, side_information

    def required_files(self) -> list[Path]:
        """The ratings file."""
        return [self.root / self.ratings_file]

    def optional_files(self) -> list[Path]:
        """Movie titles/genres and user demographics."""
        return [self.root / "movies.dat", self.root / "users.dat"] if self.side_information else []

    def read(self) -> RawLog:
        """Ratings plus side tables."""
        path = self.root / self.ratings_file
        frame, skipped = self._ratings(path)
        _check_ratings(frame, path)
        items = users = None
        if self.side_information and (self.root / "movies.dat").is_file():
            movies = parse_lines(self.root / "movies.dat", sep="::", encoding="latin-1",
                                 columns={"item": "int", "title": "str", "genres": "str"},
                                 on_bad_rows=self.on_bad_rows).frame
            items = movies.set_index("item")
        if self.side_information and (self.root / "users.dat").is_file():
            users = parse_lines(self.root / "users.dat", sep="::",
                                columns={"user": "int", "gender": "str", "age": "int",
                                         "occupation": "int", "zip": "str"},
                                on_bad_rows=self.on_bad_rows).frame.set_index("user")
        return RawLog(log=frame, items=items, users=users, skipped_rows=skipped, meta={"name": self.name})

    def _ratings(self, path: Path) -> tuple[pd.DataFrame, int]:
        """``::`` split fast as ``:`` (every other field is empty); odd lines go line by line."""
        try:
            fill = ChunkedColumns(RATING_COLUMNS, count_lines(path))
            with open_text(path, "latin-1") as f:
                chunks = pd.read_csv(f, sep=":", header=None, engine="c", usecols=[0, 2, 4, 6],
                                     names=["user", "gap1", "item", "gap2", "rating", "gap3", "time"],
                                     on_bad_lines="error", chunksize=CHUNK_ROWS)
                if all(fill.add(chunk[["user", "item", "rating", "time"]]) for chunk in chunks):
                    return fill.frame(), 0
        except (ValueError, TypeError, pd.errors.ParserError):
            pass
        table = parse_lines(path, sep="::", columns=RATING_COLUMNS, encoding="latin-1",
                            on_bad_rows=self.on_bad_rows)
        return table.frame, table.skipped
