"""NaN and infinity: refused in every float option by its flag, and a loss, output or label that
is not finite stops the work with a NonFiniteError (a ValueError: one line from the CLI)."""
import dataclasses

import numpy as np
import pytest

from bort_core import finetune as ft
from bort_core.agora import AgoraOptions
from bort_core.data import tasks as tk
from bort_core.metrics import NonFiniteError
from bort_core.pretrain import PretrainOptions

OPTIONS = ((ft.FinetuneOptions, {}), (AgoraOptions, {"reference_checkpoint": "ref.params"}),
           (PretrainOptions, {}))
FLOAT_FIELDS = [(cls, required, f.name) for cls, required in OPTIONS
                for f in dataclasses.fields(cls) if "float" in str(f.type)]


def test_every_options_class_has_float_fields():
    assert {cls for cls, _, _ in FLOAT_FIELDS} == {cls for cls, _ in OPTIONS}
    assert issubclass(NonFiniteError, ValueError) and issubclass(NonFiniteError,
                                                                 FloatingPointError)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("cls,required,name", FLOAT_FIELDS,
                         ids=["%s.%s" % (c.__name__, n) for c, _, n in FLOAT_FIELDS])
def test_a_non_finite_option_is_refused_by_its_flag(cls, required, name, value):
    flag = {"eps": "--adam-epsilon", "epsilon": "--adam-epsilon"}.get(name, "--" + name.replace("_", "-"))
    with pytest.raises(NonFiniteError, match="^%s must be a finite number, got %r$"
                       % (flag, value)):
        cls(**dict(required, **{name: value}))


@pytest.mark.parametrize("cls,name", [(ft.FinetuneOptions, "epsilon"), (PretrainOptions, "eps")])
def test_a_zero_adam_epsilon_is_refused(cls, name):
    with pytest.raises(ValueError, match="--adam-epsilon must be positive"):
        cls(**{name: 0.0})


def test_step_row_stops_on_a_non_finite_loss_or_gradient():
    hp = ft.make_hparams(1e-3, 0.0, 0.0, 8, 0, total_steps=10)
    assert ft.step_row(3, 0.5, 1e-3, 2.0, hp) == {"step": 3, "loss": 0.5, "lr": 1e-3,
                                                  "grad_norm": 2.0}
    for loss, norm in ((float("nan"), 1.0), (float("inf"), 1.0), (0.5, float("nan"))):
        with pytest.raises(NonFiniteError, match="fine-tuning step 3: .*diverged"):
            ft.step_row(3, loss, 1e-3, norm, hp)
    fp16 = dict(hp, dtype="float16")          # the loss scaler skips an overflowing step
    assert ft.step_row(3, 0.5, 1e-3, float("inf"), fp16)["grad_norm"] == float("inf")
    with pytest.raises(NonFiniteError):
        ft.step_row(3, float("nan"), 1e-3, 1.0, fp16)


def test_non_finite_logits_are_refused_naming_what_was_predicted():
    task = tk.get_task("demo-regression")
    assert ft.predictions(task, np.array([[0.5], [1.5]]))[0].tolist() == [0.5, 1.5]
    with pytest.raises(NonFiniteError, match="sts-b dev: .* 1 of 2 rows"):
        ft.predictions(task, np.array([[0.5], [np.nan]]), "sts-b dev")
