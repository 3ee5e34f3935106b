"""--wandb-project: the scalars of metrics.jsonl and the run's config in an offline W&B run (no
account, no network), read back from W&B's own run file; bad --wandb-* input."""

from __future__ import annotations

import json
import math
import struct
import sys

import pytest

from helpers import TINY, run_wsrl

BLOCK, HEADER = 32768, 7
"""W&B's run file (``run-<id>.wandb``) is a LevelDB-style log: 32 KiB blocks of records, each with a
7-byte header (CRC, length, type: 1 full, 2 first, 3 middle, 4 last) holding a protobuf ``Record``."""


def wandb_records(path) -> list:
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, part, records = HEADER, b"", []
    while pos + HEADER <= len(data):
        room = BLOCK - pos % BLOCK
        if room < HEADER:  # a block's tail too short for a header is padding
            pos += room
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        part += data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(part)
            records.append(record)
            part = b""
    return records


def test_pretrain_logs_every_scalar_and_its_config_to_an_offline_wandb_run(tmp_path, monkeypatch, hopper_file):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):  # nothing in the home folder
        monkeypatch.setenv(name, str(tmp_path / "wandb-home"))
    out = tmp_path / "run"
    assert run_wsrl("pretrain", "--env", "Hopper-v5", "--dataset", hopper_file, "--steps", 20, "--eval-every", 20,
                    "--out", out, *TINY, "--log-every", 10, "--wandb-project", "wsrl-test", "--wandb-group", "g",
                    "--wandb-tags", "a", "b") == 0
    import wandb

    wandb.teardown()  # W&B's service writes the run file on its own time; a CLI run's exit waits for it
    (run_file,) = out.glob("wandb/offline-run-*/run-*.wandb")
    records = wandb_records(run_file)
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (run.project, run.run_group, list(run.tags), run.display_name) == ("wsrl-test", "g", ["a", "b"], "run")
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["env"] == "Hopper-v5" and config["steps"] == 20 and config["kind"] == "pretrain"

    logged: dict[int, dict] = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
            logged.setdefault(r.history.step.num, {}).update(items)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {row["step"] for row in rows} == set(logged) == {10, 20}
    for row in rows:
        for key, value in row.items():
            if key not in ("step", "phase"):
                assert math.isclose(logged[row["step"]][key], value, rel_tol=1e-6), key
    assert {"losses/critic_loss", "eval/return", "eval/normalized_score"} <= set(logged[20])


def test_bad_wandb_flags_are_one_line_and_write_nothing(tmp_path, monkeypatch, capsys, hopper_file):
    out = tmp_path / "run"
    args = ["pretrain", "--env", "Hopper-v5", "--dataset", hopper_file, "--steps", 5, "--out", out, *TINY]
    assert run_wsrl(*args, "--wandb-group", "g") == 2
    assert capsys.readouterr().err.strip() == ("wsrl pretrain: error: --wandb-group: only with --wandb-project (the "
                                               "Weights & Biases project to log to)")
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if it were not installed
    assert run_wsrl(*args, "--wandb-project", "p") == 2
    assert capsys.readouterr().err.strip() == "wsrl pretrain: error: --wandb-project p: needs wandb (pip install 'wsrl[wandb]')"
    assert not out.exists()


def test_overwrite_keeps_the_old_run_when_wandb_cannot_start(tmp_path, monkeypatch, capsys, hopper_file):
    """--overwrite replaces a run only once the new one has started: a W&B run that cannot start
    (no login, say) is one line, and the old run is still there, as it was."""
    wandb = pytest.importorskip("wandb")
    out = tmp_path / "run"
    common = ["pretrain", "--env", "Hopper-v5", "--dataset", hopper_file, "--steps", 5, "--eval-every", 5, "--out", out,
              *TINY]
    assert run_wsrl(*common) == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def refuse(**kwargs):
        raise wandb.Error("api_key not configured (no-tty)")

    monkeypatch.setattr(wandb, "init", refuse)
    capsys.readouterr()
    assert run_wsrl(*common, "--overwrite", "--wandb-project", "p") == 2
    assert "W&B did not start a run" in capsys.readouterr().err
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing left aside
