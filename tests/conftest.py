"""Fixtures shared by the tests: a random Hopper dataset and a tiny pretraining run (helpers in helpers.py)."""

from __future__ import annotations

import pytest

from helpers import TINY, random_rollouts, run_wsrl, write_d4rl


@pytest.fixture(scope="session")
def hopper_rollouts():
    return random_rollouts()


@pytest.fixture(scope="session")
def hopper_file(tmp_path_factory, hopper_rollouts):
    path = tmp_path_factory.mktemp("data") / "hopper_random.hdf5"
    write_d4rl(path, hopper_rollouts)
    return path


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory, hopper_file):
    """A tiny CQL pretraining run on Hopper, shared by the fine-tuning tests."""
    out = tmp_path_factory.mktemp("runs") / "pretrain"
    assert run_wsrl("pretrain", "--env", "Hopper-v5", "--dataset", hopper_file, "--steps", 60, "--out", out,
                    "--eval-every", 60, "--save-every", 60, *TINY) == 0
    return out
