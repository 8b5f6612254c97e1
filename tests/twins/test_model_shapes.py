"""Each installed framework's model against bort_core's shape tables: every config's parameter
names, shapes and count, and the classifier head under the release's names."""
import contextlib

import numpy as np
import pytest

from bort_core import arch
from bort_core.backend import load_framework
from bort_core.configs import get_config, list_configs
from parity.io import make_inputs


@pytest.fixture(scope="session")
def model_module(framework):
    """`bort_<framework>.model`."""
    return load_framework(framework, "model")


def _shapes_only(framework):
    """Where a model can be built without its weights' storage (torch's meta device)."""
    if framework == "torch":
        import torch

        return torch.device("meta")
    return contextlib.nullcontext()


@pytest.mark.parametrize("name", list_configs())
def test_parameter_count_and_names_match_the_shape_table(framework, model_module, name):
    config = get_config(name)
    with _shapes_only(framework):
        model = model_module.BortModel(config)
    shapes = {n: tuple(p.shape) for n, p in model_module.named_parameters(model).items()}
    assert shapes == dict(arch.canonical_shapes(config))
    assert sum(int(np.prod(s)) for s in shapes.values()) == arch.param_counts(config)["total"]


@pytest.mark.parametrize("dropout", [0.1, 0.0])
def test_classifier_head_uses_the_release_names(backend, model_module, dropout):
    config = get_config("bort_tiny")
    clf = model_module.BortClassifier(model_module.BortModel(config, use_decoder=False), 3,
                                      dropout)
    head = {n for n in model_module.named_parameters(clf) if n.startswith("classifier.")}
    assert head == set(arch.classifier_shapes(config, 3, dropout))
    batch = make_inputs(3, 16, config.vocab_size, 4, 0)
    assert backend.predict(clf, [batch]).shape == (3, 3)
