import json
import subprocess
import sys

import pytest

from bort_core.configs import BortConfig, get_config, list_configs


def test_bort_configs_have_the_2020_hyperparameters():
    c = get_config("bort_4_8_768_1024")
    assert (c.num_layers, c.num_heads, c.units, c.hidden_size) == (4, 8, 1024, 768)
    assert (c.max_length, c.vocab_size, c.token_type_vocab_size) == (512, 50265, 0)
    assert (c.dropout, c.embed_dropout, c.layer_norm_eps) == (0.1, 0.1, 1e-5)
    assert c.decoder_layer_norm_eps == 1e-12 and c.activation == "gelu"
    small = get_config("bort_2_16_512_1024")
    assert (small.num_layers, small.num_heads, small.units, small.hidden_size) == (2, 16, 1024, 512)


def test_teachers_and_presets_are_registered():
    names = set(list_configs())
    assert {"bort_4_8_768_1024", "bort_2_16_512_1024", "bert_12_768_12", "bert_24_1024_16",
            "roberta_12_768_12", "roberta_24_1024_16", "bort_tiny"} <= names
    assert get_config("bert_12_768_12").token_type_vocab_size == 2
    assert get_config("roberta_24_1024_16").dahi == (24, 16, 1024, 4096)


def test_any_dahi_point_by_name_or_constructor():
    c = get_config("bort_6_12_3072_768")
    assert c.dahi == (6, 12, 768, 3072) and c.name == "bort_6_12_3072_768"
    assert BortConfig.from_dahi(6, 12, 768, 3072) == c


def test_vocab_size_override_from_a_checkpoint():
    assert get_config("bort_tiny", vocab_size=1234).vocab_size == 1234


def test_json_round_trip(tmp_path):
    c = get_config("bort_tiny").replace(dropout=0.0)
    path = str(tmp_path / "c.json")
    c.to_json(path)
    assert BortConfig.from_json(path) == c
    assert get_config(path) == c


@pytest.mark.parametrize("data, message", [
    ({"num_layers": 2, "num_heads": 3, "units": 128, "hidden_size": 96}, "divisible"),
    ({"num_layers": 2, "num_heads": 4, "units": 128, "hidden_size": 96, "colour": 1}, "colour"),
    ({"num_layers": 2, "num_heads": 4, "units": 128}, "hidden_size"),
    ({"num_layers": 0, "num_heads": 4, "units": 128, "hidden_size": 96}, "num_layers"),
])
def test_bad_json_names_the_file_and_field(tmp_path, data, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message):
        get_config(str(path))


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="bort_4_8_768_1024"):
        get_config("bort_large")


def test_core_imports_no_framework():
    code = ("import sys, bort_core.configs, bort_core.arch, bort_core.checkpoint, bort_core.cli, "
            "bort_core.convert, bort_core.hf; bort_core.cli.build_parser(); "
            "print(sorted(m for m in ('mxnet', 'torch', 'gluonnlp') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
