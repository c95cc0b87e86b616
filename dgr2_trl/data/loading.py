"""Loading interaction sequences and item titles in the two-file format of the bundled Amazon Beauty data.

Format (plain text or gzip, detected from the `.gz` suffix):
- `sequential_data_int.txt`: one line per user, `user_id item_id_1 ... item_id_n`, whitespace-separated,
  items oldest first (CRLF or LF line endings).
- `items.tsv`: a header line, then `item_id<TAB>asin<TAB>title` per item (the title may be empty).
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


SEQUENCES_FILE = "sequential_data_int.txt"
ITEMS_FILE = "items.tsv"
BUNDLED_BEAUTY_DIR = Path(__file__).resolve().parent / "bundled" / "amazon-beauty"


class DataFormatError(ValueError):
    """A data file does not follow the expected format; the message names the file and the line."""


@dataclass(frozen=True)
class SequenceData:
    """Chronological item sequences per user plus item titles.

    Unpacks as `sequences, titles = load_amazon_beauty()`; `user_ids[i]` is the id of the user of `sequences[i]`.
    """

    sequences: list[list[int]]
    titles: dict[int, str]
    user_ids: list[int]

    def __iter__(self) -> Iterator:
        # Two-value unpacking is the documented way to use the loader; user ids are there when needed.
        return iter((self.sequences, self.titles))

    @property
    def num_interactions(self) -> int:
        return sum(len(seq) for seq in self.sequences)


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _find(folder: Path, name: str) -> Path:
    """`folder/name` or `folder/name.gz`, whichever exists."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"neither {folder / name} nor {folder / name}.gz exists")


def _parse_int(token: str, path: Path, line_no: int, what: str) -> int:
    try:
        value = int(token)
    except ValueError:
        raise DataFormatError(f"{path}, line {line_no}: {what} must be an integer, got {token!r}") from None
    if value < 0:
        raise DataFormatError(f"{path}, line {line_no}: {what} must be >= 0, got {value}")
    return value


def read_sequences(path: str | Path) -> tuple[list[int], list[list[int]]]:
    """Read `user_id item_1 ... item_n` lines; returns (user_ids, sequences). Blank lines are skipped."""
    path = Path(path)
    user_ids: list[int] = []
    sequences: list[list[int]] = []
    seen_users: set[int] = set()
    with _open_text(path) as handle:
        for line_no, line in enumerate(handle, start=1):
            tokens = line.split()  # split() also swallows the CR of CRLF files
            if not tokens:
                continue
            if len(tokens) < 2:
                raise DataFormatError(
                    f"{path}, line {line_no}: expected 'user_id item_id ...' with at least one item, "
                    f"got {line.strip()!r}"
                )
            user = _parse_int(tokens[0], path, line_no, "user id")
            if user in seen_users:
                raise DataFormatError(f"{path}, line {line_no}: user id {user} appears on an earlier line too")
            seen_users.add(user)
            user_ids.append(user)
            sequences.append([_parse_int(tok, path, line_no, "item id") for tok in tokens[1:]])
    if not sequences:
        raise DataFormatError(f"{path}: no sequences found")
    return user_ids, sequences


def read_titles(path: str | Path) -> dict[int, str]:
    """Read `items.tsv` (header `item_id<TAB>asin<TAB>title`); returns {item_id: title}."""
    path = Path(path)
    titles: dict[int, str] = {}
    with _open_text(path) as handle:
        for line_no, line in enumerate(handle, start=1):
            line = line.rstrip("\r\n")
            if line_no == 1:
                if line.split("\t")[:1] != ["item_id"]:
                    raise DataFormatError(
                        f"{path}, line 1: expected the header 'item_id\\tasin\\ttitle', got {line!r}"
                    )
                continue
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) != 3:
                raise DataFormatError(
                    f"{path}, line {line_no}: expected 3 tab-separated fields (item_id, asin, title), "
                    f"got {len(fields)}"
                )
            item = _parse_int(fields[0], path, line_no, "item id")
            if item in titles:
                raise DataFormatError(f"{path}, line {line_no}: item id {item} appears on an earlier line too")
            titles[item] = fields[2].strip()
    return titles


def load_sequence_data(path: str | Path) -> SequenceData:
    """Load a folder holding `sequential_data_int.txt[.gz]` and `items.tsv[.gz]`.

    Every item of a sequence must have a row in `items.tsv` (an empty title is allowed).
    """
    folder = Path(path)
    seq_path = _find(folder, SEQUENCES_FILE)
    items_path = _find(folder, ITEMS_FILE)
    user_ids, sequences = read_sequences(seq_path)
    titles = read_titles(items_path)
    missing = sorted({item for seq in sequences for item in seq} - titles.keys())
    if missing:
        raise DataFormatError(
            f"{seq_path}: {len(missing)} item ids have no row in {items_path} (first: {missing[:5]})"
        )
    return SequenceData(sequences=sequences, titles=titles, user_ids=user_ids)


def load_amazon_beauty(path: str | Path | None = None) -> SequenceData:
    """Amazon Beauty 2014 5-core: 22,363 users, 12,101 items, 198,502 interactions.

    With `path=None` the copy bundled in the package is read (no network); otherwise any folder in the same
    two-file format. Returns a `SequenceData` that unpacks as `sequences, titles`.
    """
    return load_sequence_data(BUNDLED_BEAUTY_DIR if path is None else path)
