"""The embedded demo data: shipped files are what the script makes, and what the issue asks."""
import filecmp
import os
import re
import sys

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
