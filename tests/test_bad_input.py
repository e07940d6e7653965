"""Bad input never ends in a traceback: one line on stderr, exit status 2, nothing half-written.

Each case runs the real command line (``workbench.cli.main``) on one broken input and checks
that stderr is exactly one ``workbench <command>: error: ...`` line naming the thing that is
wrong (file, field, tensor) and the fix, and that the command left no file behind: not in its
``--out`` folder, not in the data or runs folders, not in the checkpoint it read.

Every case meets the bar; a case that stops meeting it fails here.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import nbformat
import pytest

from workbench.cli import main
from workbench.io import leftovers


@pytest.fixture(autouse=True)
def private_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Data and runs folders of this test only, checked to stay empty (nothing half-written)."""
    data, runs = tmp_path / "data_dir", tmp_path / "runs_dir"
    monkeypatch.setenv("WORKBENCH_DATA_DIR", str(data))
    monkeypatch.setenv("WORKBENCH_RUNS_DIR", str(runs))
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.delenv("WORKBENCH_DEBUG", raising=False)
    yield
    for folder in (data, runs):
        written = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        assert not written, f"a failed command left files in {folder}: {written}"


def one_error_line(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    """Run the CLI; assert exit 2 and exactly one ``workbench <cmd>: error:`` line on stderr."""
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, f"exit status {code}, stderr: {err!r}"
    lines = err.rstrip("\n").split("\n")
    assert len(lines) == 1, f"stderr is not one line: {err!r}"
    prefix = f"workbench {argv[0]}: error: "
    assert lines[0].startswith(prefix), lines[0]
    print(f"{argv[0]}: {lines[0]}")  # shown with -s: the corpus of messages
    return lines[0][len(prefix) :]


def fingerprint(folder: Path) -> dict[str, str]:
    """Every entry under ``folder`` (hidden ones too) -> sha256 of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        if p.is_file()
        else "dir"
        for p in sorted(folder.rglob("*"))
    }


# ---- a tiny saved model, broken one way per case ---------------------------------------------


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from workbench.data.tokenizer import build_char_tokenizer
    from workbench.models.build import ModelConfig, build_model
    from workbench.trained import TrainedModel

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tok = build_char_tokenizer()
        model = build_model(ModelConfig(n_layer=1, d_model=128, n_head=2), tok)
        path = tmp_path_factory.mktemp("saved") / "cot"
        TrainedModel("cot", model, tok, task="multiplication").save(path)
    finally:
        torch.set_num_threads(threads)
    return path


@pytest.fixture
def checkpoint(saved_model: Path, tmp_path: Path) -> Path:
    path = tmp_path / "ckpt"
    shutil.copytree(saved_model, path)
    return path


def eval_fails(capsys, checkpoint: Path, tmp_path: Path) -> str:
    """``workbench eval CHECKPOINT --out OUT``: one line, OUT not created, CHECKPOINT as it was."""
    before = fingerprint(checkpoint) if checkpoint.exists() else None
    out = tmp_path / "eval_out"
    message = one_error_line(capsys, ["eval", str(checkpoint), "--out", str(out)])
    assert not out.exists()
    if before is not None:
        assert fingerprint(checkpoint) == before and not leftovers(checkpoint)
    return message


def test_a_config_does_not_match_weights(checkpoint: Path, tmp_path: Path, capsys) -> None:
    config_file = checkpoint / "config.json"
    config = json.loads(config_file.read_text())
    assert config["n_embd"] == 128
    config["n_embd"] = 64
    config_file.write_text(json.dumps(config))
    message = eval_fails(capsys, checkpoint, tmp_path)
    assert str(checkpoint) in message and "config.json does not match the weights" in message
    assert "tensor 'transformer.wte.weight'" in message  # the first tensor, both shapes
    assert ", 128]" in message and ", 64]" in message
    assert "fix config.json or re-save the model" in message


def test_b_truncated_weights(checkpoint: Path, tmp_path: Path, capsys) -> None:
    weights = checkpoint / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    message = eval_fails(capsys, checkpoint, tmp_path)
    assert str(weights) in message and f"({len(data) // 2:,} bytes)" in message
    assert "truncated or corrupt" in message and "re-save the model" in message


def test_c_tokenizer_json_deleted(checkpoint: Path, tmp_path: Path, capsys) -> None:
    (checkpoint / "tokenizer.json").unlink()
    message = eval_fails(capsys, checkpoint, tmp_path)
    assert "tokenizer.json" in message and "re-save" in message


def test_c_every_tokenizer_file_deleted(checkpoint: Path, tmp_path: Path, capsys) -> None:
    (checkpoint / "tokenizer.json").unlink()
    (checkpoint / "tokenizer_config.json").unlink()
    message = eval_fails(capsys, checkpoint, tmp_path)
    assert str(checkpoint) in message and "tokenizer is missing (no tokenizer.json)" in message
    assert "re-save the model with TrainedModel.save" in message


def test_d_no_method_file(checkpoint: Path, tmp_path: Path, capsys) -> None:
    (checkpoint / "workbench_method.json").unlink()
    message = eval_fails(capsys, checkpoint, tmp_path)
    assert str(checkpoint) in message and "has no workbench_method.json" in message
    assert "not saved by TrainedModel.save" in message and "load_local_model" in message


def test_e_newer_format_version(checkpoint: Path, tmp_path: Path, capsys) -> None:
    method_file = checkpoint / "workbench_method.json"
    desc = json.loads(method_file.read_text())
    desc["format_version"] = 99
    method_file.write_text(json.dumps(desc))
    message = eval_fails(capsys, checkpoint, tmp_path)
    assert str(method_file) in message and "layout version 99" in message
    assert "reads up to 1" in message and "upgrade the workbench" in message


def test_h_checkpoint_does_not_exist(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "no_such_model"
    message = eval_fails(capsys, missing, tmp_path)
    assert str(missing) in message and "no such checkpoint folder" in message
    assert not missing.exists()


# ---- config values: refused before anything runs ---------------------------------------------


@pytest.mark.parametrize(
    "flags, fragments",
    [
        (
            ["--method", "coconut", "--set", "coconut.c_thought=0"],
            ["CoconutConfig.c_thought = 0", "expected a number >= 1"],
        ),
        (
            ["--set", "coconut.c_thought=0"],  # the default method is cot
            ["section 'coconut' given, but method is 'cot'"],
        ),
        (
            ["--set", "model.n_head=3"],
            ["ModelConfig.d_model = 256", "expected divisible by n_head=3"],
        ),
        (
            ["--set", "train.lrr=1"],
            ["unknown key(s) ['lrr'] for TrainConfig", "known keys: [", "'lr'"],
        ),
        (
            ["--set", "modle.n_head=2"],
            ["unknown section(s) ['modle']", "known sections: ['method', 'data', 'model'"],
        ),
        (["--set", "train.lr=abc"], ["train.lr", "expected float, got 'abc'"]),
        (["--set", "train.lr"], ["--set 'train.lr'", "expected section.key=value"]),
    ],
    ids=[
        "c_thought",
        "section-without-method",
        "n_head",
        "unknown-key",
        "unknown-section",
        "wrong-type",
        "no-equals",
    ],
)
def test_f_bad_train_config(flags: list[str], fragments: list[str], tmp_path: Path, capsys):
    out = tmp_path / "train_out"
    message = one_error_line(capsys, ["train", *flags, "--out", str(out)])
    for fragment in fragments:
        assert fragment in message
    assert not out.exists()


def test_f_config_file_does_not_exist(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "no_such.yaml"
    message = one_error_line(capsys, ["train", "--config", str(missing), "--out", str(tmp_path)])
    assert str(missing) in message


def test_f_config_file_is_not_yaml(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    message = one_error_line(capsys, ["train", "--config", str(bad), "--out", str(tmp_path / "o")])
    assert str(bad) in message and "line" in message


# ---- datasets --------------------------------------------------------------------------------


def test_g_dataset_row_missing_answer(tmp_path: Path, capsys) -> None:
    path = tmp_path / "rows.jsonl"
    rows = [
        {"question": "12*34", "steps": ["408"], "answer": "408"},
        {"question": "1*2", "steps": ["2"]},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    message = one_error_line(capsys, ["data", "--path", str(path)])
    assert f"{path}, row 2: field 'answer': missing" in message
    assert "field_map=" in message  # the fix: map the column that holds the answer
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == [path]  # nothing written


def test_g_dataset_path_does_not_exist(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "no_such.jsonl"
    message = one_error_line(capsys, ["data", "--path", str(missing)])
    assert str(missing) in message and "check the path" in message


# ---- sweeps ----------------------------------------------------------------------------------


def test_i_sweep_unknown_notebook_parameter(tmp_path: Path, capsys, monkeypatch) -> None:
    import papermill

    def no_kernel(*args, **kwargs):
        raise AssertionError("a kernel was started for a sweep with a bad parameter")

    monkeypatch.setattr(papermill, "execute_notebook", no_kernel)
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('name: str = "a"  # a name\nout_dir: str = "out"\n')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell("print(name)")]
    path = tmp_path / "tiny.ipynb"
    nbformat.write(nb, str(path))
    out = tmp_path / "sweep_out"
    message = one_error_line(capsys, ["sweep", str(path), "-p", "nmae", "b", "--out-dir", str(out)])
    assert "unknown parameter 'nmae' for notebook tiny.ipynb" in message
    assert "did you mean 'name'?" in message and "Known parameters: name, out_dir" in message
    assert not out.exists()


def test_i_sweep_notebook_does_not_exist(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "no_such.ipynb"
    message = one_error_line(capsys, ["sweep", str(missing), "-p", "x", "1"])
    assert f"no such notebook: {missing}" in message
