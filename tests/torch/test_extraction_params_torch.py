"""p(f) of the extraction equals the real parameter count of the torch model it names."""
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

from bort_core.extraction_plan import TINY_SPACE, make_plan  # noqa: E402
from bort_torch import model as tm  # noqa: E402

EMBEDDINGS = ("word_embed", "encoder.position_weight")


@pytest.mark.parametrize("include_embeddings", [False, True])
def test_p_equals_the_built_models_parameter_count(include_embeddings):
    plan = make_plan(TINY_SPACE, 1, include_embeddings=include_embeddings)
    assert len(plan.members) == 16
    for row in plan.members:
        model = tm.BortModel(plan.config(row), use_decoder=False)
        counted = sum(t.numel() for name, t in tm.named_parameters(model).items()
                      if include_embeddings or not name.startswith(EMBEDDINGS))
        assert row["p"] == counted, row["name"]
