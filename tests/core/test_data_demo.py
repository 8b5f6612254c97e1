"""The embedded demo data: shipped files are what the script makes, and what the issue asks."""
import filecmp
import os
import re
import sys

import numpy as np
import pytest

from bort_core.configs import DEMO_VOCAB_SIZE
from bort_core.data import demo
from bort_core.data.pretraining import read_documents


def test_corpus_format_and_size():
    docs = list(read_documents(demo.CORPUS_PATH))
    assert len(docs) > 100 and all(len(d) >= 2 for d in docs)
    assert os.path.getsize(demo.CORPUS_PATH) <= 2_000_000
    with open(demo.CORPUS_PATH, encoding="utf-8") as f:
        text = f.read()
    assert "\n\n\n" not in text and text.endswith("\n") and not text.startswith("\n")


def test_notice_names_the_psf_license():
    with open(os.path.join(demo.DEMO_DIR, "NOTICE"), encoding="utf-8") as f:
        assert "PSF License" in f.read()


def test_vocabulary_is_reproduced_from_the_shipped_corpus(tmp_path):
    docs = list(read_documents(demo.CORPUS_PATH))
    demo.write_vocabulary(docs, DEMO_VOCAB_SIZE, str(tmp_path))
    for name in ("vocab.json", "merges.txt", "dict.txt"):
        assert filecmp.cmp(str(tmp_path / name), os.path.join(demo.DEMO_DIR, name), shallow=False)


def test_tasks_are_reproduced_from_the_shipped_corpus_and_test_labels_can_be_kept(tmp_path):
    from bort_core.data.tasks import get_task

    docs = list(read_documents(demo.CORPUS_PATH))
    demo.make_demo_tasks(docs, str(tmp_path / "plain"))
    demo.make_demo_tasks(docs, str(tmp_path / "labelled"), labelled_test=True)
    demo.make_demo_tasks(docs, str(tmp_path / "pool"), pool=True)
    for name in demo.DEMO_TASKS:
        for split in ("train", "dev", "test"):
            rel = os.path.join(name, split + ".tsv")
            assert filecmp.cmp(str(tmp_path / "plain" / rel), os.path.join(demo.TASKS_DIR, rel),
                               shallow=False), rel
            if split != "train":    # the reference's pool replaces train only
                assert filecmp.cmp(str(tmp_path / "pool" / rel), os.path.join(demo.TASKS_DIR, rel),
                                   shallow=False), rel
        task = get_task(name)
        shipped = task.read(task, "test", os.path.join(demo.TASKS_DIR, name, "test.tsv"))
        held = task.read(task, "dev", str(tmp_path / "labelled" / name / "test.tsv"))
        assert [e.texts for e in held.examples] == [e.texts for e in shipped.examples]
        assert all(e.label is None for e in shipped.examples)
        labels = [e.label for e in held.examples]
        assert None not in labels
        if task.class_labels:
            assert sorted(set(labels)) == sorted(task.class_labels)
            assert labels.count(task.class_labels[0]) == len(labels) // 2
        train = task.read(task, "train", os.path.join(demo.TASKS_DIR, name, "train.tsv"))
        pool = task.read(task, "train", str(tmp_path / "pool" / name / "train.tsv"))
        assert len(train.examples) == demo.DEMO_TASK_SIZES["train"]
        assert len(pool.examples) == demo.REFERENCE_POOL_SIZE
        # separate draws from the same documents: under 1% coincide with a train text
        assert len({e.texts for e in pool.examples} & {e.texts for e in train.examples}) \
            < len(pool.examples) // 100


def _shipped_python():
    with open(os.path.join(demo.DEMO_DIR, "NOTICE"), encoding="utf-8") as f:
        return re.search(r"Python (\d+\.\d+)", f.read()).group(1)


@pytest.mark.slow
@pytest.mark.skipif("%d.%d" % sys.version_info[:2] != _shipped_python(),
                    reason="the corpus is derived from this Python version's stdlib")
def test_corpus_and_tasks_are_reproduced_from_the_stdlib(tmp_path):
    docs = demo.build_corpus()
    demo.write_corpus(docs, str(tmp_path / "corpus.txt"))
    assert filecmp.cmp(str(tmp_path / "corpus.txt"), demo.CORPUS_PATH, shallow=False)
    demo.make_demo_tasks(docs, str(tmp_path / "tasks"))
    for task in demo.DEMO_TASKS:
        for split in ("train", "dev", "test"):
            rel = os.path.join(task, split + ".tsv")
            assert filecmp.cmp(str(tmp_path / "tasks" / rel), os.path.join(demo.TASKS_DIR, rel),
                               shallow=False), rel


def test_train_bpe_is_deterministic_and_greedy():
    counts = {"ab": 5, "abc": 3, "bc": 4, "cd": 1}
    merges = demo.train_bpe(counts, 3)
    assert merges == demo.train_bpe(dict(reversed(list(counts.items()))), 3)
    # (a,b) occurs 8 times, (b,c) 7: the first merge is the most frequent pair
    assert merges[0] == ("a", "b")
    with pytest.raises(ValueError, match="corpus too small"):
        demo.train_bpe({"ab": 1}, 5)


def _bigram_features(tok, examples, dim=4096):
    """Hashed BPE-bigram counts (+ word overlap for pairs), rows L2-normalised."""
    x = np.zeros((len(examples), dim + 1), dtype=np.float32)
    for i, e in enumerate(examples):
        ids = [tok.encode(t) for t in e.texts]
        for seq in ids:
            for a, b in zip([0] + seq, seq + [2]):
                x[i, (a * 7919 + b) % dim] += 1
        if len(ids) == 2:
            a, b = set(ids[0]), set(ids[1])
            x[i, dim] = 5.0 * len(a & b) / max(1, len(a | b))
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-6)


@pytest.mark.parametrize("name,floor", [("demo-pair", 0.6), ("demo-single", 0.75),
                                        ("demo-regression", 0.8)])
def test_demo_tasks_are_learnable_above_chance(name, floor):
    """A linear model on hashed BPE bigrams beats chance clearly on dev (chance: accuracy 0.5
    with sd 0.025 on 400 balanced examples; Pearson 0)."""
    from bort_core import metrics
    from bort_core.data import tasks
    from bort_core.tokenizer import load_tokenizer
    tok, task = load_tokenizer(), tasks.get_task(name)
    train = tasks.read_split(task, "train").examples
    dev = tasks.read_split(task, "dev").examples
    xt, xd = _bigram_features(tok, train), _bigram_features(tok, dev)
    yt = np.array([float(e.label) for e in train], dtype=np.float32)
    yd = np.array([float(e.label) for e in dev], dtype=np.float32)
    regression = task.class_labels is None
    target = yt / 5.0 if regression else yt
    w, b = np.zeros(xt.shape[1], dtype=np.float32), np.float32(0)
    for _ in range(300):                       # full-batch gradient descent
        z = xt @ w + b
        g = (z if regression else 1 / (1 + np.exp(-z))) - target
        w -= np.float32(0.5) * (xt.T @ g / len(g) + np.float32(1e-4) * w)
        b -= np.float32(0.5) * g.mean()
    pred = xd @ w + b
    score = metrics.pearson(pred, yd) if regression else metrics.accuracy(pred > 0, yd)
    assert score > floor, score
