"""Rebuild reviews.parquet and reviews.csv from reviews.jsonl.

reviews.jsonl is the source of truth for the review sample data; run this after editing it:

    python sample_data/make_parquet.py

It writes, next to this script:

* reviews.parquet - all rows; ``rating`` as int64, every other column as string.
* reviews.csv     - the first 50 rows, with a header, RFC 4180 quoting (fields containing commas,
                    quotes or newlines are quoted; embedded quotes are doubled), UTF-8, no BOM.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
COLUMNS = [
    "id",
    "product",
    "category",
    "rating",
    "text",
    "expected_sentiment",
    "expected_topic",
]
SCHEMA = pa.schema([(name, pa.int64() if name == "rating" else pa.string()) for name in COLUMNS])
CSV_ROWS = 50


def load_rows(path: Path) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if sorted(row) != sorted(COLUMNS):
                raise ValueError(f"{path.name}:{lineno}: unexpected keys {sorted(row)}")
            if not isinstance(row["rating"], int) or not 1 <= row["rating"] <= 5:
                raise ValueError(f"{path.name}:{lineno}: rating must be an int 1-5")
            rows.append(row)
    return rows


def main() -> None:
    rows = load_rows(HERE / "reviews.jsonl")
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    pq.write_table(table, HERE / "reviews.parquet")
    with (HERE / "reviews.csv").open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, quoting=csv.QUOTE_MINIMAL)
        writer.writeheader()
        writer.writerows(rows[:CSV_ROWS])
    print(f"wrote reviews.parquet ({table.num_rows} rows) and reviews.csv ({CSV_ROWS} rows)")


if __name__ == "__main__":
    main()
