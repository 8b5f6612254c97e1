"""Agora's per-round accounting (issue 5): every round of agora_log.json/.md and result.json says
how many fine-tuning runs it made and how long it took; run over the numpy backend of
test_finetune on an embedded demo task."""
import json
import os

import pytest
from conftest import FakeBackend

from bort_core import agora
from bort_core import finetune as ft

pytestmark = pytest.mark.filterwarnings("ignore:no --checkpoint", "ignore:the reference model")


def test_every_round_reports_its_runs_and_seconds(tmp_path):
    base = ft.FinetuneOptions(task="demo-single", config="bort_tiny", max_len=32, lr=20.0,
                              weight_decay=0.0, warmup_ratio=0.1, batch_size=32, epochs=1,
                              output_dir=str(tmp_path / "ref"))
    reference = ft.run_finetune(FakeBackend(), base, progress=False)["model"]
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"seed": [0, 1], "lr": [10.0, 20.0]}))
    out = str(tmp_path / "agora")
    options = agora.AgoraOptions(reference_checkpoint=reference, grid=str(grid),
                                 generator="dropout,swap", points_per_mistake=1)
    result = agora.run_agora(FakeBackend(), ft.FinetuneOptions(**dict(
        vars(base), output_dir=out)), options, progress=False)

    log = json.load(open(os.path.join(out, "agora_log.json")))
    rounds = log["rounds"]
    assert [r["runs"] for r in rounds] == [4, 2, 1]                   # halving 4 -> 2 -> 1
    assert all(r["runs"] == len(r["sets"]) == len(r["scores"]) for r in rounds)
    assert all(r["seconds"] > 0 and r["generate_seconds"] >= 0 for r in rounds)
    assert result["rounds"] == 3 and result["runs"] == 7
    assert result["seconds"] >= sum(r["seconds"] + r["generate_seconds"] for r in rounds)

    table = open(os.path.join(out, "agora_log.md")).read().splitlines()
    header = [c.strip() for c in next(line for line in table if line.startswith("| round")).split("|")]
    runs_col, secs_col = header.index("fine-tuning runs"), header.index("seconds")
    rows = [[c.strip() for c in line.split("|")] for line in table
            if line.startswith("| ") and line[2].isdigit()]
    assert [int(r[runs_col]) for r in rows] == [4, 2, 1]
    assert all(float(r[secs_col]) >= 0 for r in rows)
