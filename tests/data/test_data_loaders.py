"""Loaders for users' files: good input loads, bad input raises one clear DataError."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from raysel.data import (
    DataError,
    load_jsonl,
    load_lm_bff_dir,
    load_streamingqa_csv,
    load_text_file,
)

ROOT = Path(__file__).resolve().parents[2]


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError)


# ------------------------------------------------------------------------------ text files

def test_text_file_blank_line_articles_and_one_per_line(tmp_path):
    path = _write(tmp_path / "a.txt",
                  "First article,\nsecond line.\n\n\n  Second article.  \n\nThird.\n")
    assert load_text_file(path) == ["First article,\nsecond line.", "Second article.", "Third."]
    assert load_text_file(path, one_per_line=True) == [
        "First article,", "second line.", "Second article.", "Third."]


def test_text_file_errors(tmp_path):
    with pytest.raises(DataError, match=r"missing\.txt: file not found"):
        load_text_file(tmp_path / "missing.txt")
    with pytest.raises(DataError, match=r"empty\.txt: file is empty"):
        load_text_file(_write(tmp_path / "empty.txt", " \n\n"))
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.txt: not UTF-8"):
        load_text_file(bad)
    with pytest.raises(DataError, match="not a file"):
        load_text_file(tmp_path)


# ----------------------------------------------------------------------------------- JSONL

def test_jsonl_texts_and_labels(tmp_path):
    rows = [{"text": "good", "label": 1, "extra": 0}, {"text": "bad", "label": 0}]
    path = _write(tmp_path / "d.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert load_jsonl(path) == ["good", "bad"]
    assert load_jsonl(path, label_field="label") == [("good", 1), ("bad", 0)]


def test_jsonl_errors_name_line_and_fields(tmp_path):
    path = _write(tmp_path / "d.jsonl", '{"text": "ok"}\n{"text": "broken"\n')
    with pytest.raises(DataError, match=r"d\.jsonl:2: line 2 is not valid JSON"):
        load_jsonl(path)
    path = _write(tmp_path / "e.jsonl", '{"text": "ok"}\n{"body": "x"}\n')
    with pytest.raises(DataError, match=r"e\.jsonl:2: missing field\(s\) \['text'\]; "
                                        r"found \['body'\], required \['text'\]"):
        load_jsonl(path)
    with pytest.raises(DataError, match=r"missing field\(s\) \['label'\]"):
        load_jsonl(_write(tmp_path / "f.jsonl", '{"text": "ok"}\n'), label_field="label")
    with pytest.raises(DataError, match="expected an object"):
        load_jsonl(_write(tmp_path / "g.jsonl", '["text"]\n'))
    with pytest.raises(DataError, match="'text' must be a string"):
        load_jsonl(_write(tmp_path / "h.jsonl", '{"text": 3}\n'))
    with pytest.raises(DataError, match="file is empty"):
        load_jsonl(_write(tmp_path / "i.jsonl", ""))
    with pytest.raises(DataError, match="file not found"):
        load_jsonl(tmp_path / "nope.jsonl")


# ---------------------------------------------------------------------------------- LM-BFF

def _task(tmp_path, train, dev, test, header="sentence\tlabel\n"):
    d = tmp_path / "task"
    for name, rows in (("train", train), ("dev", dev), ("test", test)):
        _write(d / f"{name}.tsv", header + "".join(f"{t}\t{l}\n" for t, l in rows))
    return d


def test_lm_bff_dir_with_and_without_header(tmp_path):
    d = _task(tmp_path, [("a fine film", 1), ("dull", 0), ("ok", 10)], [("nice", 1)], [("meh", 0)])
    data = load_lm_bff_dir(d)
    assert data.labels == ("0", "1", "10")  # numeric order, not string order
    assert data.train == [("a fine film", 1), ("dull", 0), ("ok", 2)]
    assert data.dev == [("nice", 1)] and data.test == [("meh", 0)]
    d2 = _task(tmp_path / "nohdr", [("x y", "pos"), ("z", "neg")], [("q", "neg")], [("r", "pos")],
               header="")
    data = load_lm_bff_dir(d2)
    assert data.labels == ("neg", "pos") and data.train == [("x y", 1), ("z", 0)]
    (d2 / "dev.tsv").write_text("label\tsentence\npos\treordered columns\n", encoding="utf-8")
    assert load_lm_bff_dir(d2).dev == [("reordered columns", 1)]


def test_lm_bff_dir_errors(tmp_path):
    d = _task(tmp_path, [("a", 0), ("b", 1)], [("c", 1)], [("d", 2)])
    with pytest.raises(DataError, match=r"test\.tsv: example 1 has label '2', which is not in "
                                        r"the train label set \['0', '1'\]"):
        load_lm_bff_dir(d)
    (d / "test.tsv").unlink()
    with pytest.raises(DataError, match=r"missing test\.tsv"):
        load_lm_bff_dir(d)
    with pytest.raises(DataError, match="directory not found"):
        load_lm_bff_dir(tmp_path / "nowhere")
    d = _task(tmp_path / "cols", [("a", 0)], [("b", 0)], [("c", 0)], header="sentence\tscore\n")
    with pytest.raises(DataError,
                       match=r"no 'label' column; found columns \['sentence', 'score'\]"):
        load_lm_bff_dir(d)
    d = _task(tmp_path / "cols2", [("a", 0)], [("b", 0)], [("c", 0)], header="review\tlabel\n")
    with pytest.raises(DataError, match=r"no text column; found columns \['review', 'label'\]"):
        load_lm_bff_dir(d)
    d = _task(tmp_path / "width", [("a", 0)], [("b", 0)], [("c", 0)])
    _write(d / "dev.tsv", "sentence\tlabel\nonly-one-column\n")
    with pytest.raises(DataError, match=r"dev\.tsv:2: expected 2 tab-separated columns"):
        load_lm_bff_dir(d)
    _write(d / "dev.tsv", "sentence\tlabel\n")
    with pytest.raises(DataError, match=r"dev\.tsv: file is empty"):
        load_lm_bff_dir(d)


# ----------------------------------------------------------------------------- StreamingQA

def test_streamingqa_csv(tmp_path):
    path = _write(tmp_path / "qa.csv", 'id,text,question,answers\n'
                  '1,"Ann Vell, a potter, lives in Orbury.",Where does Ann Vell live?,Orbury\n'
                  '2,Bo Kell was born in 1901.,Who was born in 1901?,Bo Kell\\Kell\n'
                  '3,"Two lines:\nCy Dorn sings.",Who sings?,Cy Dorn\n')
    rows = load_streamingqa_csv(path)
    assert rows[0] == {"text": "Ann Vell, a potter, lives in Orbury.",
                       "question": "Where does Ann Vell live?", "answers": ["Orbury"]}
    assert rows[1]["answers"] == ["Bo Kell", "Kell"]
    assert rows[2]["text"] == "Two lines:\nCy Dorn sings." and len(rows) == 3


def test_streamingqa_csv_errors(tmp_path):
    path = _write(tmp_path / "qa.csv", "text,question,answer\nt,q,a\n")
    with pytest.raises(DataError, match=r"qa\.csv: missing column\(s\) \['answers'\]; found "
                                        r"\['text', 'question', 'answer'\], required "
                                        r"\['text', 'question', 'answers'\]"):
        load_streamingqa_csv(path)
    with pytest.raises(DataError, match=r"qa2\.csv:3: empty 'answers'"):
        load_streamingqa_csv(_write(tmp_path / "qa2.csv", "text,question,answers\nt,q,a\nt,q,\n"))
    with pytest.raises(DataError, match="file is empty"):
        load_streamingqa_csv(_write(tmp_path / "qa3.csv", ""))
    with pytest.raises(DataError, match="only a header"):
        load_streamingqa_csv(_write(tmp_path / "qa4.csv", "text,question,answers\n"))


# ---------------------------------------------------------------------- Hugging Face (offline)

HF_SCRIPT = """
import json, sys
from raysel.data import DataError, load_hf_dataset
data_file, cache = sys.argv[1], sys.argv[2]
out = {"rows": load_hf_dataset("json", data_files=data_file, text_field="sentence",
                               label_field="label", cache_dir=cache)}
for name, kwargs in [("missing", dict(name="raysel-tests/not-a-cached-dataset")),
                     ("column", dict(name="json", data_files=data_file, text_field="text")),
                     ("split", dict(name="json", data_files=data_file, split="validation"))]:
    try:
        load_hf_dataset(cache_dir=cache, **kwargs)
        out[name] = None
    except DataError as e:
        out[name] = str(e)
print(json.dumps(out))
"""


def test_hf_dataset_offline(tmp_path):
    data = _write(tmp_path / "d.jsonl", '{"sentence": "fine", "label": 1}\n'
                                        '{"sentence": "poor", "label": 0}\n')
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               HF_HOME=str(tmp_path / "hf"), HF_DATASETS_CACHE=str(tmp_path / "hf" / "datasets"),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", HF_SCRIPT, str(data), str(tmp_path / "cache")],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["rows"] == [["fine", 1], ["poor", 0]]
    assert "'raysel-tests/not-a-cached-dataset' is not available offline" in out["missing"]
    assert "HF_HUB_OFFLINE=1" in out["missing"] and "data_files" in out["missing"]
    assert "missing column(s) ['text']" in out["column"] and "'sentence'" in out["column"]
    assert "split 'validation'" in out["split"]
