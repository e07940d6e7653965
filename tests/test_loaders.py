"""Foreign-format loaders: each format loads, and every bad row is reported where it is."""

from __future__ import annotations

import json
import warnings

import pytest

from workbench.data.loaders import (
    SkipReport,
    detect_format,
    load_coconut_json,
    load_examples,
    load_examples_with_report,
    load_icot_text,
    load_jsonl,
)
from workbench.data.schema import DatasetFormatError
from workbench.paths import shared_dir


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def _jsonl(path, rows):
    return _write(path, "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


# ---------------------------------------------------------------- each format loads


def test_coconut_json_loads_and_keeps_extra_keys(tmp_path):
    rows = [
        {"question": "Is Tom a wumpus?", "steps": ["Tom is a wumpus."],
         "answer": "Tom is a wumpus.", "edges": [[0, 1]], "idx_to_symbol": ["Tom", "wumpus"],
         "root": 0},
        {"question": "2+2", "steps": [], "answer": 4},
    ]  # fmt: skip
    path = _write(tmp_path / "data.json", json.dumps(rows, indent=2))
    out = load_coconut_json(path)
    assert out[0] == rows[0]
    assert out[1] == {"question": "2+2", "steps": [], "answer": "4"}  # numbers become strings


def test_real_prosqa_loads_without_conversion():
    folder = shared_dir() / "data" / "prosqa"
    if not (folder / "prosqa_valid.json").is_file():
        pytest.skip(f"real ProsQA not at {folder}")
    out = load_coconut_json(folder / "prosqa_valid.json")
    assert len(out) == 300
    ex = out[0]
    assert ex["answer"].endswith(".") and ex["steps"] and isinstance(ex["edges"], list)
    assert ex["idx_to_symbol"][ex["target"]] in ex["answer"]


def test_icot_text_gsm_style_and_both_answer_separators(tmp_path):
    path = _write(
        tmp_path / "train.txt",
        "Ducks lay 16 eggs. She eats 3 and bakes 4. She sells the rest at $2. How much?"
        "||<<16-3-4=9>> <<9*2=18>> #### 18\n"
        "\n"
        "Tom has 5 apples and buys 2.||<<5+2=7>>##7\n",
    )
    out = load_icot_text(path)
    assert out[0]["steps"] == ["<<16-3-4=9>>", "<<9*2=18>>"]
    assert out[0]["answer"] == "18" and out[0]["question"].endswith("How much?")
    assert out[1] == {
        "question": "Tom has 5 apples and buys 2.",
        "steps": ["<<5+2=7>>"],
        "answer": "7",
    }


def test_icot_text_multiplication_style_steps(tmp_path):
    line = "5 6 3 2 * 7 4 3 4||5 1 9 3 2 0 + 0 0 5 4 7 1 ( 5 1 4 8 9 1 ) #### 5 1 4 8 9 1 0 0\n"
    path = _write(tmp_path / "mult.txt", line)
    (ex,) = load_icot_text(path)
    assert ex["steps"] == ["5 1 9 3 2 0", "0 0 5 4 7 1 ( 5 1 4 8 9 1 )"]
    assert ex["answer"] == "5 1 4 8 9 1 0 0"
    (ex,) = load_icot_text(path, step_separator=" ( ")
    assert ex["steps"] == ["5 1 9 3 2 0 + 0 0 5 4 7 1", "5 1 4 8 9 1 )"]


def test_jsonl_field_map_and_steps_split(tmp_path):
    rows = [{"problem": "What is 2*3+1?", "cot": "2*3=6\n6+1=7\n", "cot_answer": "7", "id": 9}]
    path = _jsonl(tmp_path / "latent_sft.jsonl", rows)
    fmap = {"question": "problem", "steps": "cot", "answer": "cot_answer"}
    (ex,) = load_jsonl(path, field_map=fmap, steps_split="\n")
    assert ex == {"question": "What is 2*3+1?", "steps": ["2*3=6", "6+1=7"], "answer": "7", "id": 9}
    (ex,) = load_jsonl(path, field_map=fmap)
    assert ex["steps"] == ["2*3=6\n6+1=7\n"]  # no split: one step
    (ex,) = load_examples(path, field_map=fmap, steps_split="\n")
    assert ex["steps"] == ["2*3=6", "6+1=7"]


def test_format_detection(tmp_path):
    assert detect_format(_write(tmp_path / "a.json", '[{"question": "q"}]')) == "coconut_json"
    assert detect_format(_write(tmp_path / "b.json", '{"question": "q"}\n')) == "jsonl"
    assert detect_format(_write(tmp_path / "c.data", "q||<<1+1=2>> #### 2\n")) == "icot"
    assert detect_format(_write(tmp_path / "d.jsonl", "")) == "jsonl"
    with pytest.raises(DatasetFormatError, match="format="):
        detect_format(_write(tmp_path / "e.csv", "question,answer\n"))
    ex = load_examples(tmp_path / "c.data")
    assert ex[0]["steps"] == ["<<1+1=2>>"]
    with pytest.raises(TypeError, match="field_map"):
        load_examples(tmp_path / "c.data", field_map={"question": "problem"})


# ---------------------------------------------------------------- errors name file, row, field


def test_jsonl_missing_field_names_file_row_and_field(tmp_path):
    good = {"question": "q", "steps": ["s"], "answer": "a"}
    path = _jsonl(tmp_path / "d.jsonl", [good, good, {"question": "q", "steps": ["s"]}])
    with pytest.raises(DatasetFormatError) as err:
        load_jsonl(path)
    msg = str(err.value)
    assert str(path) in msg and "row 3" in msg and "'answer'" in msg
    assert err.value.row == 3 and err.value.field == "answer"


def test_field_map_error_names_the_users_column(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", [{"problem": "q", "cot": "s"}])
    with pytest.raises(DatasetFormatError) as err:
        load_jsonl(path, field_map={"question": "problem", "steps": "cot", "answer": "cot_answer"})
    assert err.value.field == "cot_answer" and "row 1" in str(err.value)
    assert "field_map" in str(err.value)


def test_coconut_json_bad_row_names_row_and_field(tmp_path):
    rows = [
        {"question": "q", "steps": ["s"], "answer": "a"},
        {"question": "q", "steps": "s", "answer": "a"},
    ]
    path = _write(tmp_path / "bad.json", json.dumps(rows))
    with pytest.raises(DatasetFormatError) as err:
        load_coconut_json(path)
    assert str(path) in str(err.value) and "row 2" in str(err.value) and "'steps'" in str(err.value)


def test_icot_missing_answer_separator(tmp_path):
    path = _write(tmp_path / "x.txt", "q||<<1+1=2>> #### 2\nq2||<<2+2=4>> 4\n")
    with pytest.raises(DatasetFormatError) as err:
        load_icot_text(path)
    assert err.value.row == 2 and err.value.field == "answer" and str(path) in str(err.value)
    path = _write(tmp_path / "y.txt", "no separator here #### 2\n")
    with pytest.raises(DatasetFormatError, match="row 1.*'steps'"):
        load_icot_text(path)


def test_broken_json_reports_the_line(tmp_path):
    text = (
        '[\n  {"question": "q", "steps": [], "answer": "a"},\n'
        '  {"question": "q",, "steps": []}\n]\n'
    )
    path = _write(tmp_path / "broken.json", text)
    with pytest.raises(DatasetFormatError) as err:
        load_examples(path)
    assert str(path) in str(err.value) and "line 3" in str(err.value)
    path = _jsonl(
        tmp_path / "broken.jsonl",
        ['{"question": "q", "steps": [], "answer": "a"}', '{"question": '],
    )
    with pytest.raises(DatasetFormatError) as err:
        load_examples(path)
    assert err.value.row == 2 and "invalid JSON" in str(err.value)
    # a broken JSON document cannot be partly skipped: skip mode still raises
    with pytest.raises(DatasetFormatError, match="line 3"):
        load_examples(tmp_path / "broken.json", on_error="skip")


# ---------------------------------------------------------------- skip mode


def test_skip_mode_reports_counts_and_reasons(tmp_path):
    good = {"question": "q", "steps": ["s"], "answer": "a"}
    rows = [good, "{not json", good, {"question": "", "steps": [], "answer": "a"}, good]
    path = _jsonl(tmp_path / "mixed.jsonl", rows)
    with pytest.warns(UserWarning, match=r"skipped 2 of 5 rows") as rec:
        out, report = load_examples_with_report(path, on_error="skip")
    assert len(out) == 3
    assert isinstance(report, SkipReport)
    assert (report.rows, report.kept, len(report.skipped)) == (5, 3, 2)
    assert [e.row for e in report.skipped] == [2, 4]
    assert report.skipped[1].field == "question"
    assert "row 2" in str(rec[0].message) and "row 4" in str(rec[0].message)
    with pytest.warns(UserWarning, match="skipped 2 of 5"):
        assert len(load_examples(path, on_error="skip")) == 3
    with pytest.raises(DatasetFormatError, match="row 2"):
        load_examples(path)  # raise is the default


def test_skip_mode_clean_file_is_silent_and_all_bad_file_raises(tmp_path):
    path = _jsonl(tmp_path / "ok.jsonl", [{"question": "q", "steps": [], "answer": "a"}])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out, report = load_examples_with_report(path, on_error="skip")
    assert len(out) == 1 and report.skipped == []
    bad = _jsonl(tmp_path / "bad.jsonl", [{"q": 1}, {"q": 2}])
    with pytest.raises(DatasetFormatError, match="none of its 2 rows"):
        load_examples(bad, on_error="skip")
    with pytest.raises(DatasetFormatError, match="no examples"):
        load_examples(_write(tmp_path / "empty.jsonl", "\n"))
    with pytest.raises(ValueError, match="on_error"):
        load_examples(path, on_error="ignore")
