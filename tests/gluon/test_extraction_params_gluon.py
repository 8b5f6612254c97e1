"""p(f) of the extraction equals the real parameter count of the gluon model it names."""
import numpy as np
import pytest

mx = pytest.importorskip("mxnet")
pytest.importorskip("gluonnlp")
pytestmark = pytest.mark.gluon

from bort_core.extraction_plan import TINY_SPACE, make_plan  # noqa: E402
from bort_gluon import model as gm  # noqa: E402

EMBEDDINGS = ("word_embed", "encoder.position_weight")


@pytest.mark.parametrize("include_embeddings", [False, True])
def test_p_equals_the_built_models_parameter_count(include_embeddings):
    plan = make_plan(TINY_SPACE, 1, include_embeddings=include_embeddings)
    assert len(plan.members) == 16
    for row in plan.members:
        model = gm.BortModel(plan.config(row), use_decoder=False)
        named = gm.named_parameters(model)
        counted = sum(int(np.prod(p.shape)) for name, p in named.items()
                      if include_embeddings or not name.startswith(EMBEDDINGS))
        assert row["p"] == counted, row["name"]
