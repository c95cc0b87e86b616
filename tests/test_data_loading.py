"""Loading the bundled Amazon Beauty data and folders in the same two-file format."""

import gzip

import pytest

from dgr2_trl.data import BUNDLED_BEAUTY_DIR, DataFormatError, load_amazon_beauty, load_sequence_data


@pytest.fixture(scope="session")
def beauty():
    return load_amazon_beauty()


def test_bundled_counts(beauty):
    sequences, titles = beauty
    assert len(sequences) == 22_363
    assert len(titles) == 12_101
    assert sum(map(len, sequences)) == 198_502 == beauty.num_interactions
    assert {i for s in sequences for i in s} == set(titles) == set(range(1, 12_102))
    assert beauty.user_ids[:3] == [1, 2, 3] and sequences[0] == [1, 2, 3, 4, 5]
    assert titles[1].startswith("OPI Nail Lacquer, Simmer and Shimmer")
    assert sorted(i for i, t in titles.items() if not t) == [495, 1454, 2015, 5336, 7406, 7410, 9178]


def test_bundle_is_small_and_documented():
    files = {p.name: p.stat().st_size for p in BUNDLED_BEAUTY_DIR.iterdir()}
    assert set(files) == {"README.md", "sequential_data_int.txt.gz", "items.tsv.gz"}
    assert sum(files.values()) < 2_000_000
    readme = (BUNDLED_BEAUTY_DIR / "README.md").read_text()
    assert "McAuley" in readme and "research" in readme


def write(folder, seq_text, items_text, gz=False):
    folder.mkdir(exist_ok=True)
    for name, text in (("sequential_data_int.txt", seq_text), ("items.tsv", items_text)):
        if gz:
            with gzip.open(folder / f"{name}.gz", "wt", encoding="utf-8") as f:
                f.write(text)
        else:
            (folder / name).write_text(text, encoding="utf-8")


ITEMS = "item_id\tasin\ttitle\n1\tA1\tred lipstick\n2\tA2\t\n3\tA3\tnail polish\n"


@pytest.mark.parametrize("gz", [False, True])
def test_plain_and_gzip_folders(tmp_path, gz):
    write(tmp_path / "d", "1 1 2 3\r\n2 3 1\r\n\r\n", ITEMS, gz=gz)
    data = load_sequence_data(tmp_path / "d")
    assert data.sequences == [[1, 2, 3], [3, 1]] and data.user_ids == [1, 2]
    assert data.titles == {1: "red lipstick", 2: "", 3: "nail polish"}
    assert load_amazon_beauty(tmp_path / "d").sequences == data.sequences


@pytest.mark.parametrize(
    "seq_text, items_text, bad_file, line, what",
    [
        ("1 1 2\n2 3 x\n", ITEMS, "sequential_data_int.txt", 2, "item id must be an integer"),
        ("1 1 2\n1 3 1\n", ITEMS, "sequential_data_int.txt", 2, "appears on an earlier line"),
        ("1 1 2\n\n7\n", ITEMS, "sequential_data_int.txt", 3, "at least one item"),
        ("1 1 2\n", ITEMS + "4\tA4\n", "items.tsv", 5, "expected 3 tab-separated fields"),
        ("1 1 2\n", ITEMS.replace("3\tA3", "-3\tA3"), "items.tsv", 4, "must be >= 0"),
        ("1 1 2\n", "id\tasin\ttitle\n", "items.tsv", 1, "header"),
    ],
)
def test_malformed_files_name_file_and_line(tmp_path, seq_text, items_text, bad_file, line, what):
    write(tmp_path / "d", seq_text, items_text)
    with pytest.raises(DataFormatError, match=rf"{bad_file}, line {line}: .*{what}"):
        load_sequence_data(tmp_path / "d")


def test_items_without_title_rows_and_missing_files(tmp_path):
    write(tmp_path / "d", "1 1 9\n", ITEMS)
    with pytest.raises(DataFormatError, match=r"item ids have no row .*\[9\]"):
        load_sequence_data(tmp_path / "d")
    with pytest.raises(FileNotFoundError, match="sequential_data_int.txt"):
        load_sequence_data(tmp_path / "empty")
