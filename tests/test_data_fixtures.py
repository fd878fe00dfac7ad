"""The data-file writers of tests/helpers/data_files.py really produce the formats and quirks they claim."""

from __future__ import annotations

import gzip
from pathlib import Path

from tests.helpers.data_files import (
    bigrec_samples,
    interaction_rows,
    sequences,
    write_amazon,
    write_bigrec,
    write_ml1m,
    write_steam,
)

# ---------------------------------------------------------------------------- the fixtures have their quirks


def test_fixtures_are_in_the_real_formats(tmp_path: Path) -> None:
    seqs = sequences(3, 6, 4)
    folder = write_ml1m(tmp_path / "ml", interaction_rows(seqs), 6)
    assert "Café".encode("latin-1") in (folder / "movies.dat").read_bytes()  # latin-1, not UTF-8
    assert (folder / "ratings.dat").read_text().splitlines()[0].count("::") == 3
    write_steam(tmp_path / "steam", seqs, 6)
    with gzip.open(tmp_path / "steam" / "steam_reviews.json.gz", "rt") as handle:
        line = handle.readline()
    assert line.startswith("{'username'") and "False" in line and "\"Didn't" in line  # Python literal
    write_amazon(tmp_path / "amz", "Books", 2014, interaction_rows(seqs), 6)
    with gzip.open(tmp_path / "amz" / "meta_Books.json.gz", "rt") as handle:
        meta = handle.readline()
    assert meta.startswith("{'asin'") and "&amp;" in meta
    assert (tmp_path / "amz" / "reviews_Books_5.json.gz").read_bytes()[:2] == b"\x1f\x8b"
    write_bigrec(tmp_path / "br", bigrec_samples(seqs), 6)
    header, row = (tmp_path / "br" / "train.csv").read_text().splitlines()[:2]
    assert header == "user_id,item_ids,timestamp" and '"[' in row
