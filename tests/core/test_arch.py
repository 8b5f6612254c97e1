import numpy as np
import pytest

from bort_core import arch
from bort_core.configs import get_config, list_configs


def test_bort_counts_match_the_released_checkpoint():
    counts = arch.param_counts(get_config("bort_4_8_768_1024"))
    assert counts["total"] == 76208217
    assert counts["total_without_decoder"] == 75106304
    assert counts["word_embedding"] == 51471360
    assert counts["transformer_cells"] == 23108608


@pytest.mark.parametrize("name", list_configs())
def test_counts_are_the_sum_of_the_shape_table(name):
    config = get_config(name)
    counts = arch.param_counts(config)
    total = sum(int(np.prod(s)) for s in arch.canonical_shapes(config).values())
    assert counts["total"] == total
    assert counts["total"] == counts["embedding"] + counts["encoder"] + counts["decoder"]
    assert counts["effective"] == counts["encoder"]


def test_bert_base_count_is_the_known_figure():
    # HF's BertModel(bert-base-uncased) holds 109,482,240 parameters, its pooler 768*768+768
    pooler = 768 * 768 + 768
    counts = arch.param_counts(get_config("bert_12_768_12"))
    assert counts["total_without_decoder"] == 109482240 - pooler


def test_matmul_flops_equal_two_per_weight_per_token_plus_attention():
    config = get_config("bort_4_8_768_1024")
    L = 128
    dense_weights = sum(int(np.prod(s)) for n, s in arch.canonical_shapes(config, False).items()
                        if n.startswith("encoder.transformer_cells.") and n.endswith("weight"))
    attention = config.num_layers * 2 * 2 * L * L * config.units
    assert arch.forward_flops(config, L)["matmul"] == 2 * L * dense_weights + attention


def test_flops_grow_with_length_and_masked_positions():
    config = get_config("bort_tiny")
    a, b = arch.forward_flops(config, 64), arch.forward_flops(config, 128)
    assert b["total"] > 2 * a["total"] - 1   # attention is quadratic
    with_mlm = arch.forward_flops(config, 64, num_masked=10)
    assert with_mlm["matmul"] - a["matmul"] == 10 * 2 * (config.units ** 2 + config.units * config.vocab_size)
    with pytest.raises(ValueError, match="seq_len"):
        arch.forward_flops(config, config.max_length + 1)


def test_classifier_head_names_follow_dropout():
    config = get_config("bort_tiny")
    assert list(arch.classifier_shapes(config, 3, 0.1))[0] == "classifier.1.weight"
    assert list(arch.classifier_shapes(config, 3, 0.0))[-1] == "classifier.1.bias"
