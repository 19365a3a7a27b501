"""Coat, S3-Rec and SASRec loaders: hand-checked fixtures, malformed files, caching, shared data, YAMLs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import hydra.utils
import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from recrl.config import CONF_DIR, validate
from recrl.data.coat import Coat
from recrl.data.preprocess import Preprocessing
from recrl.data.sequence import S3RecSequences, SasRecText
from recrl.types import RecrlError, Splits

FIXTURES = Path(__file__).parent / "fixtures"
COAT = FIXTURES / "coat"
SEQ = FIXTURES / "seq"
LEAVE_LAST_OUT = {"split": "leave_last_out", "dedupe": "none"}
SEQ_COUNTS = {  # README table: users, items, interactions
    "beauty": (22_363, 12_101, 198_502),
    "sports": (35_598, 18_357, 296_337),
    "toys": (19_412, 11_924, 167_597),
    "lastfm": (1_090, 3_646, 52_551),
}


def shared_data() -> Path:
    """The shared real data folder, or skip the test."""
    folder = Path(os.environ.get("RECRL_SHARED_DATA", Path(__file__).parents[2] / "shared" / "data"))
    if not folder.is_dir():
        pytest.skip(f"shared data not found at {folder} (set RECRL_SHARED_DATA to its folder)")
    return folder


def rows(frame: pd.DataFrame, columns: tuple[str, ...] = ("user", "item", "time")) -> list[tuple]:
    """A log's selected columns as plain tuples."""
    return [tuple(int(v) for v in row) for row in frame[list(columns)].itertuples(index=False)]


def coat_copy(tmp_path: Path, **replace: str) -> Path:
    """The good Coat fixture in ``tmp_path``, with files replaced by ``bad/`` variants."""
    root = tmp_path / "coat"
    shutil.copytree(COAT / "good", root)
    for target, bad in replace.items():
        shutil.copy(COAT / "bad" / bad, root / target.replace("__", "/"))
    return root


def coat(root: Path, on_bad_rows: str = "error", **kwargs: object) -> Coat:
    """A Coat loader with the given split, everything of train.ascii in train."""
    preprocess = Preprocessing(split="given", implicit_threshold=4, valid_share=0.0)
    return Coat(root=str(root), preprocess=preprocess, on_bad_rows=on_bad_rows, **kwargs)


# ---------------------------------------------------------------------------------------- Coat fixtures
def test_coat_fixture_rows_and_features() -> None:
    splits = coat(COAT / "good").load()
    inter = splits.interactions
    assert (inter.n_users, inter.n_items) == (3, 4)
    train_rows = [(0, 0, 5), (0, 2, 3), (1, 1, 4), (1, 3, 1), (2, 0, 2), (2, 3, 4)]
    assert rows(inter.train, ("user", "item", "rating")) == train_rows
    assert inter.train["click"].tolist() == [1, 0, 1, 0, 0, 1]
    assert (inter.train["time"] == 0).all() and inter.valid.empty
    assert rows(splits.test, ("user", "item", "rating")) == [(0, 1, 2), (0, 3, 5), (1, 0, 1), (1, 2, 4),
                                                              (2, 1, 5)]
    assert splits.ground_truth is not None
    assert len(splits.ground_truth.train) + len(splits.ground_truth.valid) == 5
    assert list(inter.items.columns) == ["gender:men", "gender:women", "onfrontpage:yes"]
    assert inter.items.to_numpy().tolist() == [[1, 0, 1], [0, 1, 1], [1, 0, 0], [0, 1, 0]]
    assert splits.users is not None and splits.users.to_numpy().tolist() == [[1, 0], [0, 1], [1, 0]]
    assert splits.meta["skipped_rows"] == 0 and not inter.positive_only


def test_coat_without_features(tmp_path: Path) -> None:
    root = coat_copy(tmp_path)
    shutil.rmtree(root / "user_item_features")
    splits = coat(root).load()
    assert len(splits.interactions.train) == 6 and splits.interactions.items.columns.empty


@pytest.mark.parametrize(("target", "bad", "line", "hint"), [
    ("train.ascii", "train_ragged.ascii", 2, "expected 4 space-separated values, found 3"),
    ("train.ascii", "train_non_integer.ascii", 2, "non-integer value 'x'"),
    ("train.ascii", "train_commas.ascii", 1, "non-integer value '5,0,3,0'"),
    ("train.ascii", "train_out_of_range.ascii", 3, "value 7 outside 0..5"),
    ("test.ascii", "test_narrow.ascii", 1, "expected 4 space-separated values, found 3"),
])
def test_coat_malformed_rows_name_file_and_line(tmp_path: Path, target: str, bad: str, line: int,
                                                hint: str) -> None:
    root = coat_copy(tmp_path, **{target: bad})
    with pytest.raises(RecrlError) as err:
        coat(root).load()
    message = str(err.value)
    assert f"{target}:{line}:" in message and hint in message and "on_bad_rows=skip" in message
    assert "\n" not in message


def test_coat_skip_drops_and_counts_bad_rows(tmp_path: Path) -> None:
    root = coat_copy(tmp_path, **{"train.ascii": "train_ragged.ascii"})
    splits = coat(root, on_bad_rows="skip").load()
    assert splits.meta["skipped_rows"] == 1
    # user 1's train row was skipped: user 1 and item 1 (rated by user 1 only) leave the log, their
    # test rows go too, and ids re-densify
    assert splits.user_ids.tolist() == [0, 2] and splits.item_ids.tolist() == [0, 2, 3]
    assert rows(splits.interactions.train, ("user", "item", "rating")) == [(0, 0, 5), (0, 1, 3), (1, 0, 2),
                                                                           (1, 2, 4)]
    assert rows(splits.test, ("user", "item", "rating")) == [(0, 2, 5)]


def test_coat_all_rows_bad_is_an_error_even_when_skipping(tmp_path: Path) -> None:
    root = coat_copy(tmp_path, **{"train.ascii": "train_commas.ascii"})
    with pytest.raises(RecrlError, match=r"train\.ascii has no well-formed rows"):
        coat(root, on_bad_rows="skip").load()


def test_coat_shape_mismatches(tmp_path: Path) -> None:
    with pytest.raises(RecrlError, match=r"test.ascii has 2 rows but train.ascii has 3"):
        coat(coat_copy(tmp_path / "a", **{"test.ascii": "test_short.ascii"})).load()
    root = coat_copy(tmp_path / "b", **{"user_item_features__item_features_map.txt":
                                        "item_features_map_short.txt"})
    with pytest.raises(RecrlError, match=r"item_features_map.txt names 2 columns .* has 3"):
        coat(root).load()


def test_coat_missing_files_name_the_folder(tmp_path: Path) -> None:
    with pytest.raises(RecrlError) as err:
        coat(tmp_path / "nowhere").load()
    message = str(err.value)
    assert "looked for train.ascii, test.ascii in" in message and str(tmp_path / "nowhere") in message
    assert "recrl data download coat" in message and "\n" not in message


def test_coat_cache_hit(tmp_path: Path) -> None:
    first = coat(COAT / "good", cache_dir=str(tmp_path))
    cold = first.load()
    second = coat(COAT / "good", cache_dir=str(tmp_path))
    warm = second.load()
    assert (first.last_load["cache"], second.last_load["cache"]) == ("miss", "hit")
    pd.testing.assert_frame_equal(cold.interactions.train, warm.interactions.train)
    pd.testing.assert_frame_equal(cold.test, warm.test)
    pd.testing.assert_frame_equal(cold.interactions.items, warm.interactions.items)
    assert warm.ground_truth is not None


# ---------------------------------------------------------------------------------------- sequences
def tiny(file: str = "Tiny.txt", root: Path = SEQ, on_bad_rows: str = "error", **kwargs: object
         ) -> S3RecSequences:
    """An S3-Rec loader over a fixture, leave-last-out without dedupe."""
    return S3RecSequences(root=str(root), file=file, dataset_name="tiny",
                          preprocess=Preprocessing(**LEAVE_LAST_OUT), on_bad_rows=on_bad_rows, **kwargs)


def test_s3rec_fixture_leave_last_out() -> None:
    splits = tiny().load()
    inter = splits.interactions
    assert splits.user_ids.tolist() == [2, 5, 9] and splits.item_ids.tolist() == [10, 20, 30, 40]
    # user 2: 20 40 10; user 5: 30 10 20 10 (a repeat kept); user 9: 10 30 (too short to hold out)
    assert rows(inter.train) == [(0, 1, 0), (1, 2, 0), (1, 0, 1), (2, 0, 0), (2, 2, 1)]
    assert rows(inter.valid) == [(0, 3, 1), (1, 1, 2)]
    assert rows(splits.test) == [(0, 0, 2), (1, 0, 3)]
    assert inter.positive_only and (inter.train["click"] == 1).all()
    assert inter.items["attributes"].tolist() == ["1 2", "3", "", ""]
    assert splits.meta["skipped_rows"] == 0 and splits.meta["name"] == "tiny"


def test_s3rec_name_is_per_instance() -> None:
    assert tiny().name == "tiny" and S3RecSequences.name == "s3rec"


@pytest.mark.parametrize(("file", "line", "hint"), [
    ("s3rec_non_integer.txt", 2, "non-integer id '4o'"),
    ("s3rec_commas.txt", 1, "non-integer id '5,30,10,20'"),
    ("s3rec_user_only.txt", 3, "a user id with no items"),
    ("s3rec_duplicate_user.txt", 3, "user 5 already has a sequence on line 1"),
])
def test_s3rec_malformed_lines_name_file_and_line(file: str, line: int, hint: str) -> None:
    with pytest.raises(RecrlError) as err:
        tiny(file, SEQ / "bad").load()
    message = str(err.value)
    assert f"{file}:{line}:" in message and hint in message and "\n" not in message


def test_s3rec_skip_drops_and_counts_bad_lines() -> None:
    splits = tiny("s3rec_user_only.txt", SEQ / "bad", on_bad_rows="skip").load()
    assert splits.meta["skipped_rows"] == 1 and splits.user_ids.tolist() == [2, 5, 9]
    assert len(splits.interactions.train) + len(splits.interactions.valid) + len(splits.test) == 9
    non_integer = tiny("s3rec_non_integer.txt", SEQ / "bad", on_bad_rows="skip").load()
    assert non_integer.meta["skipped_rows"] == 1 and non_integer.user_ids.tolist() == [5, 9]


def test_s3rec_bad_attributes() -> None:
    with pytest.raises(RecrlError, match=r"Attr_item2attributes.json: item '10': expected a list of integer"):
        tiny("Attr.txt", SEQ / "bad").load()
    skipped = tiny("Attr.txt", SEQ / "bad", on_bad_rows="skip").load()
    assert skipped.meta["skipped_rows"] == 1
    assert skipped.interactions.items["attributes"].tolist() == ["", "3", "", ""]
    with pytest.raises(RecrlError, match=r"Broken_item2attributes.json:2: not valid JSON"):
        tiny("Broken.txt", SEQ / "bad").load()
    assert tiny("Broken.txt", SEQ / "bad", attributes=False).load().interactions.items.columns.empty


def test_s3rec_missing_file_names_the_folder(tmp_path: Path) -> None:
    loader = S3RecSequences(root=str(tmp_path), file="Beauty.txt", dataset_name="beauty",
                            download_name="beauty")
    with pytest.raises(RecrlError) as err:
        loader.load()
    message = str(err.value)
    expected = "dataset beauty: beauty data not found: looked for Beauty.txt in "
    assert message.startswith(expected + str(tmp_path))
    assert "recrl data download beauty" in message and "\n" not in message


def test_s3rec_cache_hit(tmp_path: Path) -> None:
    first, second = tiny(cache_dir=str(tmp_path)), tiny(cache_dir=str(tmp_path))
    cold, warm = first.load(), second.load()
    assert (first.last_load["cache"], second.last_load["cache"]) == ("miss", "hit")
    assert Path(second.last_load["folder"]).name.startswith("tiny-")
    pd.testing.assert_frame_equal(cold.interactions.train, warm.interactions.train)
    pd.testing.assert_frame_equal(cold.interactions.items, warm.interactions.items)
    assert warm.interactions.positive_only


def sasrec(file: str = "sasrec.txt", root: Path = SEQ, on_bad_rows: str = "error") -> SasRecText:
    """A SASRec-format loader over a fixture."""
    return SasRecText(root=str(root), file=file, preprocess=Preprocessing(**LEAVE_LAST_OUT),
                      on_bad_rows=on_bad_rows)


def test_sasrec_fixture_orders_within_user() -> None:
    splits = sasrec().load()
    inter = splits.interactions
    # user 1: 3 1 2 (its rows are not contiguous in the file); user 2: 2 3
    assert rows(inter.train) == [(0, 2, 0), (1, 1, 0), (1, 2, 1)]
    assert rows(inter.valid) == [(0, 0, 1)] and rows(splits.test) == [(0, 1, 2)]
    assert inter.positive_only and splits.meta["name"] == "sasrec_txt"


@pytest.mark.parametrize(("file", "line"), [("sasrec_extra_column.txt", 3), ("sasrec_three_columns.txt", 1),
                                            ("sasrec_non_integer.txt", 2), ("sasrec_commas.txt", 1)])
def test_sasrec_malformed_lines_name_file_and_line(file: str, line: int) -> None:
    with pytest.raises(RecrlError, match=rf"{file}:{line}: malformed line"):
        sasrec(file, SEQ / "bad").load()


def test_sasrec_skip_drops_and_counts_bad_lines() -> None:
    splits = sasrec("sasrec_extra_column.txt", SEQ / "bad", on_bad_rows="skip").load()
    assert splits.meta["skipped_rows"] == 1
    assert len(splits.interactions.train) + len(splits.interactions.valid) + len(splits.test) == 4


# ---------------------------------------------------------------------------------------- Coat propensities
# P_ui of the fixture's 3 users x 4 items; train.ascii rates (0,0) (0,2) (1,1) (1,3) (2,0) (2,3)
PROPENSITIES = "0.5 0.1 0.3 0.1\n0.2 0.2 0.2 0.2\n0.4 0.4 0.1 0.1\n"


def coat_with_propensities(tmp_path: Path, text: str = PROPENSITIES) -> Path:
    """The good Coat fixture plus a ``propensities.ascii`` holding ``text``."""
    root = coat_copy(tmp_path)
    (root / "propensities.ascii").write_text(text)
    return root


def test_coat_propensities_are_normalised_per_user(tmp_path: Path) -> None:
    splits = coat(coat_with_propensities(tmp_path)).load()
    # user 0: 0.5 / 1.0, 0.3 / 1.0; user 1: 0.2 / 0.8 twice; user 2: 0.4 / 1.0, 0.1 / 1.0
    np.testing.assert_allclose(splits.interactions.train["propensity"], [0.5, 0.3, 0.25, 0.25, 0.4, 0.1],
                               rtol=1e-6)
    # the randomized test.ascii rows: uniform draws over the catalogue
    np.testing.assert_allclose(splits.test["propensity"], 1 / splits.meta["shape"][1])
    assert "P(item | user) = P_ui / sum_j P_uj" in splits.meta["propensity"]


def test_coat_without_propensities_says_so_in_meta() -> None:
    splits = coat(COAT / "good").load()
    assert splits.interactions.train["propensity"].isna().all()
    assert splits.meta["propensity"].startswith("propensities.ascii not found in")


@pytest.mark.parametrize(("text", "message"), [
    ("0.5 0.1 0.3 0.1\n0.2 0.2 0.2 0.2\n", r"has 2 rows of 4 values but train\.ascii is 3 x 4"),
    ("0.5 0.1 0.3\n0.2 0.2 0.2 0.2\n0.4 0.4 0.1 0.1\n",
     r"has 3 rows of 3/4 values but train\.ascii is 3 x 4"),
    ("0.5 x 0.3 0.1\n0.2 0.2 nan 0.2\n0.4 0.4 0.1 inf\n", r": 3 of 12 entries are not probabilities"),
    ("1.5 0.1 0.3 0.1\n0.2 -0.2 0.2 0.2\n0.4 0.4 0.1 0.1\n", r": 2 of 12 entries are not probabilities"),
    # 0 on a rated cell (user 0, item 0) is bad; 0 on an unrated one (user 0, item 1) is fine
    ("0 0 0.3 0.1\n0.2 0.2 0.2 0.2\n0.4 0.4 0.1 0.1\n", r": 1 of 12 entries are not probabilities"),
])
def test_coat_malformed_propensities_are_one_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(RecrlError, match=message) as err:
        coat(coat_with_propensities(tmp_path, text)).load()
    assert "propensities.ascii" in str(err.value) and "\n" not in str(err.value)


def test_coat_cache_key_covers_the_propensity_file(tmp_path: Path) -> None:
    root = coat_with_propensities(tmp_path / "data")
    cache = str(tmp_path / "cache")
    first = coat(root, cache_dir=cache)
    assert first.load().interactions.train["propensity"].iloc[0] == pytest.approx(0.5)
    (root / "propensities.ascii").write_text(PROPENSITIES.replace("0.5 0.1", "0.1 0.5", 1))
    changed = coat(root, cache_dir=cache)
    assert changed.load().interactions.train["propensity"].iloc[0] == pytest.approx(0.1)
    (root / "propensities.ascii").unlink()
    gone = coat(root, cache_dir=cache)
    assert gone.load().interactions.train["propensity"].isna().all()
    assert [d.last_load["cache"] for d in (first, changed, gone)] == ["miss", "miss", "miss"]


# ---------------------------------------------------------------------------------------- shared data
def test_coat_shared_data_counts() -> None:
    splits = Coat(root=str(shared_data() / "coat"),
                  preprocess=Preprocessing(split="given", implicit_threshold=4)).load()
    inter = splits.interactions
    assert (inter.n_users, inter.n_items) == (290, 300)
    assert len(inter.train) + len(inter.valid) == 6_960 and len(splits.test) == 4_640
    assert (splits.test.groupby("user").size() == 16).all()
    assert splits.ground_truth is not None and inter.items.shape == (300, 33)
    assert splits.users is not None and splits.users.shape == (290, 14)
    assert (inter.items.sum(axis=1) == 4).all()  # one-hot in 4 groups


def test_coat_shared_data_propensities() -> None:
    root = shared_data() / "coat"
    if not (root / "propensities.ascii").is_file():
        pytest.skip(f"{root / 'propensities.ascii'} not found")
    splits = Coat(root=str(root), preprocess=Preprocessing(split="given", implicit_threshold=4)).load()
    log = pd.concat([splits.interactions.train, splits.interactions.valid])
    raw = np.loadtxt(root / "propensities.ascii")
    normalised = raw / raw.sum(axis=1, keepdims=True)
    expected = normalised[splits.user_ids[log["user"]], splits.item_ids[log["item"]]]
    np.testing.assert_allclose(log["propensity"], expected, rtol=1e-6)
    assert len(log) == 6_960 and log["propensity"].notna().all()
    np.testing.assert_allclose(splits.test["propensity"], 1 / 300)
    # README: P_ui in [0.00253, 0.690]; rows sum to about 24 (the items each user rated)
    assert log["propensity"].min() > 0.00253 / 26 and log["propensity"].max() < 0.690 / 23


def test_beauty_shared_data_leave_last_out_and_attributes() -> None:
    root = shared_data() / "seq" / "s3rec"
    splits = S3RecSequences(root=str(root), file="Beauty.txt", dataset_name="beauty",
                            preprocess=Preprocessing(**LEAVE_LAST_OUT)).load()
    inter = splits.interactions
    assert (inter.n_users, inter.n_items) == (22_363, 12_101)
    assert len(inter.train) + len(inter.valid) + len(splits.test) == 198_502
    for frame in (inter.valid, splits.test):
        assert len(frame) == inter.n_users and frame["user"].is_unique
    first = splits.test[splits.test["user"] == int(np.flatnonzero(splits.user_ids == 1)[0])]
    assert splits.item_ids[first["item"]].tolist() == [5]  # line 1: `1 1 2 3 4 5`
    attributes = inter.items["attributes"]
    assert len(attributes) == 12_101 and (attributes != "").all()
    assert attributes.iloc[int(np.flatnonzero(splits.item_ids == 4)[0])] == "1 2 3"


# ---------------------------------------------------------------------------------------- YAMLs
def compose_dataset(name: str, data_dir: Path, cache_dir: Path, *extra: str) -> object:
    """``conf/dataset/<name>.yaml`` composed through ``train``, validated and instantiated."""
    overrides = [f"dataset={name}", f"data_dir='{data_dir}'", f"cache_dir='{cache_dir}'", *extra]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    validate(cfg)
    return hydra.utils.instantiate(cfg.dataset)


def test_coat_yaml_loads_shared_data(tmp_path: Path) -> None:
    loader = compose_dataset("coat", shared_data(), tmp_path)
    splits: Splits = loader.load()
    assert isinstance(loader, Coat) and loader.last_load["cache"] == "miss"
    assert len(splits.interactions.train) + len(splits.interactions.valid) == 6_960
    assert len(splits.test) == 4_640 and splits.ground_truth is not None


@pytest.mark.parametrize("name", list(SEQ_COUNTS))
def test_s3rec_yamls_load_shared_data(tmp_path: Path, name: str) -> None:
    loader = compose_dataset(name, shared_data(), tmp_path)
    splits: Splits = loader.load()
    n_users, n_items, n_rows = SEQ_COUNTS[name]
    inter = splits.interactions
    assert isinstance(loader, S3RecSequences) and loader.name == name and loader.download_name == name
    assert (inter.n_users, inter.n_items) == (n_users, n_items)
    assert len(inter.train) + len(inter.valid) + len(splits.test) == n_rows
    assert len(splits.test) == len(inter.valid) == n_users and inter.positive_only


def test_sasrec_yaml(tmp_path: Path) -> None:
    with pytest.raises(RecrlError, match=r"ml-1m.txt not found in"):
        compose_dataset("sasrec_txt", tmp_path, tmp_path).load()
    loader = compose_dataset("sasrec_txt", SEQ, tmp_path, "dataset.file=sasrec.txt")
    splits: Splits = loader.load()
    assert isinstance(loader, SasRecText) and rows(splits.test) == [(0, 1, 2)]
