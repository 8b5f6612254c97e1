"""bort reproduce end to end in torch with a shrunken demo preset: every stage runs, the summary
holds what the issue asks for, a re-run resumes, and a fresh run with the same seed gives the
same numbers."""
import json
import os

import pytest

pytest.importorskip("torch")
pytestmark = [pytest.mark.torch, pytest.mark.slow, pytest.mark.e2e,
              pytest.mark.filterwarnings("ignore:the reference model scores")]

from bort_core.reproduce.pipeline import reproduce  # noqa: E402
from bort_core.reproduce.presets import PRESETS  # noqa: E402

SMALL = dict(PRESETS["demo"], dupe_factor=1, teacher_checkpoint=None, teacher_steps=6,
             search_space="tiny", extract_steps=2, epsilon=8.0, pretrain_steps=6,
             tokens_per_batch=1024, tasks=["demo-single"], finetune_epochs=1,
             agora_grid={"seed": [0, 1]}, agora_epochs=1, agora_rounds=1)


@pytest.fixture
def small_preset(monkeypatch):
    monkeypatch.setitem(PRESETS, "small", SMALL)


def _results(out):
    with open(os.path.join(out, "summary.json")) as f:
        return json.load(f)


def test_pipeline_resumes_and_repeats_itself(small_preset, tmp_path, capsys):
    out = str(tmp_path / "a")
    summary = reproduce(["torch"], "small", out, seed=3, overwrite=False)
    res = summary["results"]
    assert res["torch"]["extracted"]["name"] in res["torch"]["extraction"]["members_by_params"]
    assert res["torch"]["pretrain_eval_after"]["kd_loss"] < res["torch"]["pretrain_eval_before"]["kd_loss"]
    assert set(res["torch"]["scratch_eval_after"]) == {"mlm_loss", "mlm_acc"}
    assert res["torch"]["scratch_eval_after"] != res["torch"]["pretrain_eval_after"]
    assert res["teacher"]["trained"]
    assert res["teacher"]["eval_after"]["mlm_loss"] < res["teacher"]["eval_before"]["mlm_loss"]
    assert res["teacher"]["heldout"] == res["teacher"]["eval_after"]
    md = open(os.path.join(out, "summary.md")).read()
    assert "teacher learned" in md and "distillation beats scratch" in md
    assert "extraction interior" in md
    task = res["torch"]["finetune"]["demo-single"]
    assert task["agora"]["runs"] >= 2 and task["agora"]["heldout"]["accuracy"] > 0
    assert task["plain"]["heldout"]["accuracy"] > 0
    assert task["reference"]["dev"] != task["plain"]["dev"]    # fine-tuned on the pool
    summary_md = open(os.path.join(out, "summary.md")).read()
    assert "fine-tuning learns each task" in summary_md and "Agora's held-out gain" in summary_md
    for name in ("summary.md", "summary.json", "loss_curves.png", "pareto_torch.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0
    capsys.readouterr()

    reproduce(["torch"], "small", out, seed=3, overwrite=False)      # resume: nothing reruns
    log = capsys.readouterr().out
    assert "resuming" in log and "$ bort" not in log
    assert _results(out)["results"] == res

    again = reproduce(["torch"], "small", str(tmp_path / "b"), seed=3, overwrite=False)
    assert again["results"] == res
