"""Raw-table I/O: the streaming reader's typed columns and errors, and the one-time CSV -> Parquet conversion."""

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from healthfusion.data.errors import SourceError
from healthfusion.data.sources import io
from healthfusion.data.sources.io import convert_to_parquet, find_table, stream_table

CSV = (
    "stay_id,charttime,itemid,valuenum,note,empty\n"
    "1,2150-01-01 06:00:00,220045,80,ok,\n"
    "2,2150-01-01 07:30:00,220045,,\"a, quoted\nnote\",\n"
    "3,,223761,98.6,,\n"
)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        path.write_text(text)
    return path


def _blocks(path, columns):
    return pa.concat_tables([t for t in stream_table(path, columns)]).to_pandas()


def test_stream_table_parses_times_and_numbers(tmp_path):
    path = _write(tmp_path / "t.csv.gz", CSV.replace("\"a, quoted\nnote\"", "x"))
    df = _blocks(path, {"stay_id": "int", "charttime": "time", "valuenum": "float"})
    assert df["stay_id"].tolist() == [1, 2, 3] and df["_row"].tolist() == [0, 1, 2]
    assert df["charttime"].tolist()[:2] == [pd.Timestamp("2150-01-01 06:00"), pd.Timestamp("2150-01-01 07:30")]
    assert pd.isna(df["charttime"].iloc[2]) and np.isnan(df["valuenum"].iloc[1])


def test_stream_table_names_the_line_of_a_bad_time(tmp_path):
    path = _write(tmp_path / "t.csv", CSV.replace("\"a, quoted\nnote\"", "x").replace("2150-01-01 07:30:00", "soon"))
    with pytest.raises(SourceError, match=r"t\.csv, column 'charttime', line 3: cannot parse time 'soon'"):
        _blocks(path, {"stay_id": "int", "charttime": "time"})


def test_stream_table_reads_parquet_times_stored_as_text_or_timestamps(tmp_path):
    frame = pd.DataFrame({"stay_id": np.array([1, 2], dtype="int32"),
                          "t": ["2150-01-01 06:00:00", None],
                          "u": pd.to_datetime(["2150-01-01", "2150-01-02"]).astype("datetime64[s]")})
    frame.to_parquet(tmp_path / "t.parquet")
    df = _blocks(tmp_path / "t.parquet", {"stay_id": "int", "t": "time", "u": "time"})
    assert df["t"].iloc[0] == pd.Timestamp("2150-01-01 06:00") and pd.isna(df["t"].iloc[1])
    assert df["u"].tolist() == [pd.Timestamp("2150-01-01"), pd.Timestamp("2150-01-02")]
    frame.assign(t=["2150-01-01 06:00:00", "later"]).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(SourceError, match=r"column 't', row 1: cannot parse time 'later'"):
        _blocks(tmp_path / "bad.parquet", {"t": "time"})


def test_convert_keeps_layout_types_and_values(tmp_path):
    raw = tmp_path / "raw"
    _write(raw / "icu" / "chartevents.csv.gz", CSV)
    _write(raw / "hosp" / "patients.csv", "subject_id,gender\n1,F\n")
    (raw / "README.txt").write_text("not a table")
    written = convert_to_parquet(raw, tmp_path / "pq")
    assert written == [tmp_path / "pq" / "hosp" / "patients.parquet", tmp_path / "pq" / "icu" / "chartevents.parquet"]
    table = pq.read_table(written[1])
    assert table.schema.types == [pa.int64(), pa.timestamp("us"), pa.int64(), pa.float64(), pa.string(), pa.string()]
    df = table.to_pandas()
    assert df["note"].tolist()[:2] == ["ok", "a, quoted\nnote"] and pd.isna(df["note"].iloc[2])
    assert df["empty"].isna().all()
    assert df["valuenum"].iloc[2] == 98.6 and pd.isna(df["charttime"].iloc[2])
    assert find_table(tmp_path / "pq" / "icu", "chartevents") == written[1]
    assert not (tmp_path / "pq" / "README.parquet").exists()


def test_convert_widens_a_column_a_later_block_does_not_fit(tmp_path, monkeypatch):
    monkeypatch.setattr(io, "CONVERT_BLOCK_BYTES", 64)  # types are inferred from the first few rows only
    rows = [f"{i},{i},2150-01-01 00:00:00" for i in range(20)]
    rows += ["20,2.5,2150-01-01 00:00:00", "21,7,not a time", "22,x,2150-01-02 00:00:00"]
    path = _write(tmp_path / "raw" / "t.csv", "id,n,t\n" + "\n".join(rows) + "\n")
    out = convert_to_parquet(path.parent, tmp_path / "pq")[0]
    table = pq.read_table(out)
    assert table.schema.types == [pa.int64(), pa.string(), pa.string()]
    assert table.num_rows == 23 and table["n"][20].as_py() == "2.5" and table["t"][21].as_py() == "not a time"
    assert not list((tmp_path / "pq").glob("*.partial"))


def test_convert_replaces_an_earlier_conversion_in_place(tmp_path):
    raw = tmp_path / "raw"
    _write(raw / "t.csv", "a\n1\n")
    convert_to_parquet(raw, raw)
    _write(raw / "t.csv", "a\n1\n2\n")
    assert pq.read_table(convert_to_parquet(raw, raw)[0]).num_rows == 2


@pytest.mark.parametrize("make, message", [
    (lambda root: root / "missing", "is not a folder"),
    (lambda root: root, "No CSV table"),
    (lambda root: _write(root / "a" / "t.csv", "").parent, r"t\.csv is empty"),
    (lambda root: _write(root / "b" / "t.csv", "a,b\n1,2\n3,4,5\n").parent, r"t\.csv could not be"),
])
def test_convert_errors_name_the_problem(tmp_path, make, message):
    with pytest.raises(SourceError, match=message):
        convert_to_parquet(make(tmp_path), tmp_path / "out")
