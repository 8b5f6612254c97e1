"""GLUE features as the 2020 release made them, rebuilt from GluonNLP's own pieces: TSVDataset
with the release's field indices and header skips, GPT2BPETokenizer + Vocab, truncate_seqs_equal
and concat_sequences with `<s>` prepended to the first text."""
import os
import random

import numpy as np
import pytest

pytestmark = pytest.mark.gluon
nlp = pytest.importorskip("gluonnlp")
glue = pytest.importorskip("gluonnlp.data.bert.glue")

from test_tokenizer_gluonnlp import gluon_bpe  # noqa: E402

from bort_core.data import tasks as T  # noqa: E402
from bort_core.tokenizer import load_tokenizer  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "tasks")

# the release's (data/glue.py) field indices and header skips per task and split
RELEASE = {
    ("cola", "train"): ([3, 1], 0), ("cola", "test"): ([1], 1),
    ("sst-2", "dev"): ([0, 1], 1), ("sst-2", "test"): ([1], 1),
    ("mrpc", "train"): ([3, 4, 0], 1), ("mrpc", "test"): ([3, 4], 1),
    ("sts-b", "train"): ([7, 8, 9], 1), ("sts-b", "test"): ([7, 8], 1),
    ("qqp", "dev"): ([3, 4, 5], 1), ("qqp", "test"): ([1, 2], 1),
    ("mnli", "train"): ([8, 9, 11], 1), ("mnli", "dev_matched"): ([8, 9, 15], 1),
    ("mnli", "dev_mismatched"): ([8, 9, 15], 1), ("mnli", "test_mismatched"): ([8, 9], 1),
    ("qnli", "train"): ([1, 2, 3], 1), ("rte", "train"): ([1, 2, 3], 1),
    ("wnli", "train"): ([1, 2, 3], 1), ("wnli", "test"): ([1, 2], 1),
}


@pytest.fixture(scope="module")
def gluon(tmp_path_factory):
    return gluon_bpe(str(tmp_path_factory.mktemp("bpe")))


def release_features(row, task, labelled, tokenizer, vocab, max_len):
    """The release's convert_examples_to_features, on GluonNLP's primitives."""
    texts, label = (row[:-1], row[-1]) if labelled else (row, None)
    limit = max_len - 3 if task.is_pair else max_len - 2
    tokens = glue.truncate_seqs_equal([tokenizer(t) for t in texts], limit)
    tokens[0] = [vocab.bos_token] + tokens[0]
    tokens, segments, _ = glue.concat_sequences(tokens, [[vocab.eos_token]] * len(tokens))
    if labelled:
        label = float(label) if task.class_labels is None else task.class_labels.index(label)
    return vocab[tokens], segments, label


@pytest.mark.parametrize("name,split", sorted(RELEASE))
def test_glue_features_match_the_release(gluon, name, split):
    tokenizer, vocab = gluon
    task = T.get_task(name)
    fields, discard = RELEASE[(name, split)]
    dataset = nlp.data.TSVDataset(os.path.join(FIXTURES, task.subdir, split + ".tsv"),
                                  num_discard_samples=discard, field_indices=fields)
    ours = T.featurize(T.read_split(task, split, FIXTURES).examples, task, load_tokenizer(),
                       max_len=24)
    assert len(dataset) == len(ours["input_ids"])
    labelled = "label" in ours
    for i, row in enumerate(dataset):
        ids, segments, label = release_features(row, task, labelled, tokenizer, vocab, 24)
        assert ours["input_ids"][i].tolist() == ids
        assert ours["segment_ids"][i].tolist() == segments
        assert ours["valid_length"][i] == len(ids)
        if labelled:
            assert ours["label"][i] == pytest.approx(label)


def test_truncate_equal_matches_gluonnlp():
    rng = random.Random(0)
    for _ in range(500):
        seqs = [list(range(rng.randint(0, 40))) for _ in range(rng.randint(1, 4))]
        max_len = rng.randint(0, 90)
        expected = glue.truncate_seqs_equal([list(s) for s in seqs], max_len)
        assert T.truncate_equal(seqs, max_len) == [list(np.asarray(e).tolist()) for e in expected]
