"""Raw-table I/O: the streaming reader's typed columns and errors, and the one-time CSV -> Parquet conversion."""

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from healthfusion.data.errors import SourceError
from healthfusion.data.sources.convert import convert_to_parquet
from healthfusion.data.sources.io import find_table, stream_table

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


def test_convert_types_undeclared_columns_from_every_value(tmp_path):
    """A table the toolkit does not know: each column typed from all its values (a late value that does not
    fit keeps the column text), and id/code-named columns stay text."""
    rows = [f"{i},{i},2150-01-01 00:00:00,{i:03d},{i}" for i in range(5000)]
    rows += ["5000,2.5,2150-01-01 00:00:00,5000,1", "5001,x,not a time,7,2"]
    path = _write(tmp_path / "raw" / "t.csv", "n,m,t,lz,provider_id\n" + "\n".join(rows) + "\n")
    out = convert_to_parquet(path.parent, tmp_path / "pq")[0]
    table = pq.read_table(out)
    assert dict(zip(table.schema.names, table.schema.types, strict=True)) == {
        "n": pa.int64(), "m": pa.string(), "t": pa.string(), "lz": pa.string(), "provider_id": pa.string()}
    assert table.num_rows == 5002 and table["m"][5000].as_py() == "2.5" and table["t"][5001].as_py() == "not a time"
    assert table["lz"][7].as_py() == "007"  # leading zeros kept
    assert not list((tmp_path / "pq").glob("*.partial"))


def test_convert_keeps_mimic_ndc_and_drg_codes_as_text(tmp_path):
    """NDC and DRG codes are codes, not numbers: leading zeros survive even when every value is all digits."""
    raw = tmp_path / "raw" / "hosp"
    _write(raw / "prescriptions.csv.gz", "subject_id,hadm_id,starttime,drug,ndc,gsn,doses_per_24_hrs\n"
           "1,10,2150-01-01 08:00:00,Heparin,00002821501,004489,3\n2,20,,Insulin,63323026201,,\n")
    _write(raw / "drgcodes.csv", "subject_id,hadm_id,drg_type,drg_code,description,drg_severity,drg_mortality\n"
           "1,10,APR,003,ECMO,4,4\n2,20,HCFA,871,SEPSIS,,\n")
    drg, pres = (pq.read_table(p) for p in sorted(convert_to_parquet(raw.parent, tmp_path / "pq")))
    assert pres["ndc"].to_pylist() == ["00002821501", "63323026201"] and pres["gsn"][0].as_py() == "004489"
    assert pres.schema.field("subject_id").type == pa.int64()
    assert pres.schema.field("starttime").type == pa.timestamp("us")
    assert pres.schema.field("doses_per_24_hrs").type == pa.float64()
    assert drg["drg_code"].to_pylist() == ["003", "871"] and drg.schema.field("drg_severity").type == pa.int64()


def test_convert_names_the_line_of_a_value_that_does_not_fit_its_declared_type(tmp_path):
    raw = tmp_path / "raw" / "icu"
    _write(raw / "icustays.csv", "subject_id,hadm_id,stay_id,first_careunit,last_careunit,intime,outtime,los\n"
           "1,10,100,MICU,MICU,2150-01-01 00:00:00,2150-01-02 00:00:00,1.0\n"
           "2,20,20x,MICU,MICU,2150-01-01 00:00:00,2150-01-02 00:00:00,1.0\n")
    with pytest.raises(SourceError, match=r"icustays\.csv, column 'stay_id', line 3: '20x' is not an integer"):
        convert_to_parquet(raw.parent, tmp_path / "pq")
    assert not list((tmp_path / "pq").rglob("*.parquet*"))


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


@pytest.mark.realdata
def test_convert_keeps_every_code_of_the_mimic_iv_demo(shared_dataset, tmp_path):
    """On the real demo, every NDC and DRG code in the Parquet copy is the CSV's text, character for character
    (a type guessed from the first block turned 9,861 of 18,087 NDCs into integers without leading zeros)."""
    demo = shared_dataset("mimic_iv_demo")
    raw = tmp_path / "raw" / "hosp"
    raw.mkdir(parents=True)
    for name in ("prescriptions", "drgcodes"):
        (raw / f"{name}.csv.gz").symlink_to(demo / "hosp" / f"{name}.csv.gz")
    drg, pres = (pq.read_table(p) for p in convert_to_parquet(raw.parent, tmp_path / "pq"))
    for table, name, column in ((pres, "prescriptions", "ndc"), (drg, "drgcodes", "drg_code")):
        text = pd.read_csv(demo / "hosp" / f"{name}.csv.gz", dtype=str, keep_default_na=False)[column]
        got = pd.Series(table[column].to_pylist(), dtype=object).fillna("")
        assert table.num_rows == len(text) and got.tolist() == text.tolist()
    assert pres["ndc"].to_pandas().str.startswith("0").sum() > 1000
