import pytest

from bort_core import arch, hf
from bort_core.configs import get_config
from bort_core.convert import detect_format
from bort_core.names import canonical_name, hf_name, torch_name


@pytest.mark.parametrize("name", ["bort_4_8_768_1024", "bert_12_768_12"])
def test_torch_names_round_trip_and_rename_only_layer_norms(name):
    shapes = arch.canonical_shapes(get_config(name))
    for canonical in shapes:
        t = torch_name(canonical)
        assert canonical_name(t) == canonical
        assert (t != canonical) == canonical.endswith((".gamma", ".beta"))
    # a classifier's backbone keeps the rule under its `bort.` prefix
    assert canonical_name("bort.encoder.layer_norm.weight") == "bort.encoder.layer_norm.gamma"
    assert canonical_name("bort.decoder.3.weight") == "bort.decoder.3.weight"


def test_hf_names_are_distinct_and_cover_every_parameter():
    shapes = arch.canonical_shapes(get_config("bort_4_8_768_1024"))
    names = [hf_name(n) for n in shapes]
    assert len(set(names)) == len(names)
    assert hf_name("encoder.transformer_cells.3.ffn.layer_norm.gamma") == \
        "bert.encoder.layer.3.output.LayerNorm.weight"
    assert hf_name("decoder.3.bias") == "cls.predictions.bias"
    with pytest.raises(ValueError, match="no HuggingFace"):
        hf_name("classifier.1.weight")


def test_hf_config_records_what_hf_cannot_express():
    config = hf.hf_config(get_config("bort_4_8_768_1024"))
    assert (config["hidden_size"], config["intermediate_size"], config["num_attention_heads"]) == \
        (1024, 768, 8)
    assert config["type_vocab_size"] == 1 and config["layer_norm_eps"] == 1e-5
    assert "1e-12" in config["bort_notes"]


def test_format_detection():
    assert detect_format("a/b.params") == "params"
    assert detect_format("a/b.pt") == "pt"
    assert detect_format("a/b.safetensors") == "safetensors"
    assert detect_format("a/hf_dir") == "hf"
    with pytest.raises(ValueError, match="unknown checkpoint format"):
        detect_format("a/b.bin")
