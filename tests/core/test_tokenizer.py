"""bort_core.tokenizer: file formats, fairseq order, round trips and clear errors on mismatch."""
import json
import os
import shutil

import pytest

from bort_core import tokenizer as bt
from bort_core.configs import DEMO_VOCAB_SIZE

DEMO = bt.DEMO_DIR


@pytest.fixture(scope="module")
def tok():
    return bt.load_tokenizer()


def test_demo_vocabulary_layout(tok):
    assert len(tok) == DEMO_VOCAB_SIZE
    assert tok.idx_to_token[:4] == ["<s>", "<pad>", "</s>", "<unk>"]
    assert tok.idx_to_token[tok.mask_id] == "<mask>" and tok.mask_id == DEMO_VOCAB_SIZE - 1
    assert (tok.bos_id, tok.pad_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
    # every single byte is in the vocabulary, so text never needs <unk>
    assert all(c in tok.token_to_idx for c in bt.bytes_to_unicode().values())


@pytest.mark.parametrize("text", ["Return the value.", "naïve 😀 中文  x\n\ty", "it's", ""])
def test_decode_round_trips(tok, text):
    ids = tok.encode(text)
    assert tok.unk_id not in ids
    assert tok.decode(ids) == text
    assert tok.decode([tok.bos_id] + ids + [tok.eos_id]) == text


def test_frequent_words_are_single_tokens(tok):
    assert tok.tokenize("Return the value of the function.") == [
        "Return", "Ġthe", "Ġvalue", "Ġof", "Ġthe", "Ġfunction", "."]
    assert tok.is_word_start(tok.token_to_idx["Ġthe"])
    assert not tok.is_word_start(tok.token_to_idx["."])


def test_same_ids_from_every_file_layout(tok, tmp_path):
    # GPT-2 names (encoder.json + vocab.bpe + dict.txt) in a directory
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    shutil.copy(os.path.join(DEMO, "vocab.json"), str(gpt2 / "encoder.json"))
    shutil.copy(os.path.join(DEMO, "merges.txt"), str(gpt2 / "vocab.bpe"))
    shutil.copy(os.path.join(DEMO, "dict.txt"), str(gpt2 / "dict.txt"))
    # HF roberta style: vocab.json already in fairseq order, no dict.txt
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "vocab.json").write_text(json.dumps(tok.token_to_idx), encoding="utf-8")
    shutil.copy(os.path.join(DEMO, "merges.txt"), str(hf / "merges.txt"))
    # GluonNLP Vocab.to_json() layout
    gluon = tmp_path / "gluon"
    gluon.mkdir()
    (gluon / "roberta.vocab").write_text(json.dumps({
        "idx_to_token": tok.idx_to_token, "token_to_idx": tok.token_to_idx,
        "unknown_token": "<unk>", "reserved_tokens": ["<s>", "</s>", "<pad>", "<mask>"]}))
    shutil.copy(os.path.join(DEMO, "merges.txt"), str(gluon / "merges.txt"))
    text = "Set the aliases for this option parser, it's   done.\n"
    for d in (gpt2, hf, gluon):
        other = bt.load_tokenizer(str(d))
        assert other.idx_to_token == tok.idx_to_token
        assert other.encode(text) == tok.encode(text)


def _copy_demo(tmp_path):
    for name in ("vocab.json", "merges.txt", "dict.txt"):
        shutil.copy(os.path.join(DEMO, name), str(tmp_path / name))
    return tmp_path


def test_wrong_special_tokens_are_rejected():
    with pytest.raises(ValueError, match="fairseq order"):
        bt.BPETokenizer(["<pad>", "<s>", "</s>", "<unk>", "a", "<mask>"], [])
    with pytest.raises(ValueError, match="fairseq order"):
        bt.BPETokenizer(["<s>", "<pad>", "</s>", "<unk>", "a"], [])


def test_merges_from_another_vocabulary_are_rejected():
    with pytest.raises(ValueError, match="BPE/vocabulary mismatch.*'ab'"):
        bt.BPETokenizer(["<s>", "<pad>", "</s>", "<unk>", "a", "b", "<mask>"], [("a", "b")])


def test_dict_with_unknown_gpt2_id_is_rejected(tmp_path):
    d = _copy_demo(tmp_path)
    with open(str(d / "dict.txt"), "a") as f:
        f.write("999999 0\n")
    with pytest.raises(ValueError, match=r"dict.txt:4092: GPT-2 id 999999 is not in the encoder"):
        bt.load_tokenizer(str(d))


def test_malformed_files_name_file_and_line(tmp_path):
    d = _copy_demo(tmp_path)
    (d / "merges.txt").write_text("#version: 0.2\nĠ t\nbad line here\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"merges.txt:3: expected two"):
        bt.load_tokenizer(str(d))
    d = _copy_demo(tmp_path)
    (d / "dict.txt").write_text("13 5\n14\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"dict.txt:2: expected '<symbol> <count>'"):
        bt.load_tokenizer(str(d))


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        bt.load_tokenizer(str(tmp_path / "nope"))
    d = _copy_demo(tmp_path)
    os.remove(str(d / "dict.txt"))
    with pytest.raises(FileNotFoundError, match="needs the fairseq dict.txt"):
        bt.load_tokenizer(str(d))
    os.remove(str(d / "merges.txt"))
    with pytest.raises(FileNotFoundError, match="no BPE merges"):
        bt.load_tokenizer(str(d))


def test_ids_outside_vocabulary_are_rejected(tok):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([5, len(tok)])


def test_fairseq_placeholder_symbols_are_kept(tok, tmp_path):
    d = _copy_demo(tmp_path)
    with open(str(d / "dict.txt"), "a") as f:      # as in RoBERTa's dict.txt
        f.write("madeupword0000 0\nmadeupword0001 0\n")
    other = bt.load_tokenizer(str(d))
    assert len(other) == len(tok) + 2
    assert other.idx_to_token[-3:] == ["madeupword0000", "madeupword0001", "<mask>"]
    assert other.encode("the madeupword0000") == tok.encode("the madeupword0000")
