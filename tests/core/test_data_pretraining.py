"""create-pretraining-data: both shard layouts, release bugs B1-B4 fixed, determinism, statistics,
refusals (stale output, bad text, no instances) that leave nothing behind."""
import filecmp
import io
import json
import os
import pickletools
import random
import shutil
import subprocess
import sys
import tracemalloc
import zipfile

import numpy as np
import pytest

from bort_core import cli
from bort_core.data import pretraining as pt
from bort_core.data import shards as sh
from bort_core.data.demo import CORPUS_PATH
from bort_core.data.shard_writer import ShardWriter
from bort_core.tokenizer import DEMO_DIR, load_tokenizer

DTYPES = {"input_ids": np.int32, "segment_ids": np.int32, "masked_lm_positions": np.int32,
          "masked_lm_ids": np.int32, "masked_lm_weights": np.float32}


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The first 80 documents of the demo corpus, and their texts."""
    docs = list(pt.read_documents(CORPUS_PATH))[:80]
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text("\n\n".join("\n".join(d) for d in docs) + "\n", encoding="utf-8")
    return str(path), docs


def _make(corpus, tok, out, workers=1, outputs=2, layout="flat", **kw):
    """(stats, the shards as `load_shard` reads them)."""
    kw.setdefault("max_seq_length", 128)
    kw.setdefault("max_predictions_per_seq", 20)
    kw.setdefault("docs_per_chunk", 16)
    stats = pt.create_pretraining_data([corpus[0]], str(out), tok, pt.PretrainingOptions(**kw),
                                       num_outputs=outputs, num_workers=workers, progress=False,
                                       layout=layout)
    return stats, [sh.load_shard(p) for p in stats["files"]]


@pytest.fixture(scope="module")
def shards(corpus, tok, tmp_path_factory):
    return _make(corpus, tok, tmp_path_factory.mktemp("out"))


def _instances(shards):
    for shard in shards[1]:
        for i in range(len(shard["valid_lengths"])):
            yield {k: v[i] for k, v in shard.items()}


def test_flat_layout_is_plain_arrays_without_pickle(shards):
    stats, loaded = shards
    assert len(loaded) == 2 and stats["instances"] > 200
    assert sum(len(s["valid_lengths"]) for s in loaded) == stats["instances"]
    for path, shard in zip(stats["files"], loaded):
        with np.load(path, allow_pickle=False) as raw:
            assert sorted(raw.files) == sorted(sh.FIELDS + (sh.COUNTS,))
            n = len(raw["valid_lengths"])
            for name in ("next_sentence_labels", "valid_lengths", sh.COUNTS):
                assert raw[name].dtype == np.int32 and raw[name].shape == (n,)
            for name, dtype in DTYPES.items():
                cuts = raw["valid_lengths" if name in sh.TOKEN_FIELDS else sh.COUNTS]
                assert raw[name].dtype == dtype and raw[name].shape == (int(cuts.sum()),)
                assert np.array_equal(np.concatenate(shard[name]), raw[name])


def test_2020_layout_fields_and_dtypes_are_the_release_ones(corpus, tok, tmp_path):
    stats, loaded = _make(corpus, tok, tmp_path, layout="2020")
    for path, shard in zip(stats["files"], loaded):
        with np.load(path, allow_pickle=True) as raw:      # our own file: pickles are ours
            assert sorted(raw.files) == sorted(sh.FIELDS)
            n = len(raw["valid_lengths"])
            for name, dtype in DTYPES.items():
                assert raw[name].dtype == object and raw[name].shape == (n,)
                assert all(a.dtype == dtype and a.ndim == 1 for a in raw[name])
                assert all(np.array_equal(a, b) for a, b in zip(raw[name], shard[name]))
            for name in ("next_sentence_labels", "valid_lengths"):
                assert raw[name].dtype == np.int32 and raw[name].shape == (n,)
    flat = _make(corpus, tok, tmp_path / "flat")[1]
    for a, b in zip(loaded, flat):
        assert sorted(a) == sorted(b)
        assert all(np.array_equal(np.concatenate(a[k]) if isinstance(a[k], list) else a[k],
                                  np.concatenate(b[k]) if isinstance(b[k], list) else b[k])
                   for k in a)


def test_layout_special_ids_and_lengths_b2(shards, tok):
    for inst in _instances(shards):
        ids, seg = inst["input_ids"], inst["segment_ids"]
        n = int(inst["valid_lengths"])
        assert len(ids) == len(seg) == n <= 128
        assert ids.max() < len(tok) and ids.min() >= 0      # B2: nothing beyond the embedding
        assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
        sep = int(np.argmax(seg)) - 1
        assert ids[sep] == tok.eos_id and (seg[:sep + 1] == 0).all() and (seg[sep + 1:] == 1).all()
        specials = {0, sep, n - 1}
        assert not specials & set(inst["masked_lm_positions"].tolist())
        assert list(inst["masked_lm_positions"]) == sorted(inst["masked_lm_positions"])
        assert (inst["masked_lm_weights"] == 1).all()
        assert len(inst["masked_lm_ids"]) == min(20, max(1, int(round(n * 0.15))))


def _restore(inst):
    ids = inst["input_ids"].copy()
    ids[inst["masked_lm_positions"]] = inst["masked_lm_ids"]
    sep = int(np.argmax(inst["segment_ids"])) - 1
    return ids[1:sep], ids[sep + 1:-1]


def test_text_is_real_tokens_and_nsp_labels_are_right_b1(shards, corpus, tok):
    texts = ["".join(d) for d in corpus[1]]
    labels = []
    for inst in _instances(shards):
        a, b = _restore(inst)
        assert tok.unk_id not in a and tok.unk_id not in b   # B1: text never becomes <unk>
        a, b = tok.decode(a), tok.decode(b)
        homes = [i for i, t in enumerate(texts) if a in t]
        assert homes, a
        label = int(inst["next_sentence_labels"])
        if label == 0:     # B continues A in the same document
            assert any(b in texts[i] for i in homes), (a, b)
        else:              # B comes from another document
            assert any(b in t for j, t in enumerate(texts) if j not in homes or len(homes) > 1)
        labels.append(label)
    assert 0.4 < np.mean(labels) < 0.65


def test_masking_statistics_match_the_flags(corpus, tok, tmp_path):
    stats, loaded = _make(corpus, tok, tmp_path, masked_lm_prob=0.15,
                          max_predictions_per_seq=1000, dupe_factor=3)
    masked = kept = mask = 0
    for inst in _instances((stats, loaded)):
        pos, orig = inst["masked_lm_positions"], inst["masked_lm_ids"]
        now = inst["input_ids"][pos]
        masked += len(pos)
        mask += int((now == tok.mask_id).sum())
        kept += int((now == orig).sum())
    share = masked / stats["tokens"]
    assert abs(share - 0.15) < 0.01                           # rounding per sequence only
    p = np.array([mask, kept, masked - mask - kept]) / masked
    sigma = np.sqrt(np.array([0.8 * 0.2, 0.1 * 0.9, 0.1 * 0.9]) / masked)
    assert (np.abs(p - [0.8, 0.1, 0.1]) < 4 * sigma).all(), (p, masked)


def test_random_replacements_are_ordinary_tokens(shards, tok):
    for inst in _instances(shards):
        now = inst["input_ids"][inst["masked_lm_positions"]]
        replaced = now[(now != tok.mask_id) & (now != inst["masked_lm_ids"])]
        assert not set(replaced.tolist()) & set(tok.special_ids)


def test_whole_word_groups_follow_word_starts(tok):
    maker = pt.InstanceMaker(tok, pt.PretrainingOptions(whole_word_mask=True,
                                                        max_predictions_per_seq=100))
    # coded tokens (id << 1 | starts_word): <s> [w w w][w][w w] </s> [w w][w] </s>
    flags = [1, 1, 0, 0, 1, 1, 0, 1, 1, 0, 1, 1]
    coded = [(10 << 1) | f for f in flags]
    for seed in range(30):
        positions, labels, ids = maker._mask(coded, 7, random.Random(seed))
        words = [[1, 2, 3], [4], [5, 6], [8, 9], [10]]
        assert all(set(w) <= set(positions) or not set(w) & set(positions) for w in words)
        assert labels == [10] * len(positions)


def test_whole_word_mask_masks_whole_words_b3(corpus, tok, tmp_path):
    stats, loaded = _make(corpus, tok, tmp_path, whole_word_mask=True)
    multi = 0
    for inst in _instances((stats, loaded)):
        a, b = _restore(inst)
        masked = set(inst["masked_lm_positions"].tolist())
        for offset, seg in ((1, a), (len(a) + 2, b)):
            for k in range(1, len(seg)):
                if offset + k in masked and not tok.is_word_start(int(seg[k])):
                    # a masked word piece: the previous piece is masked too, or ends a sentence
                    # (each sentence's first token starts a word)
                    assert offset + k - 1 in masked or \
                        tok.decode(seg[k - 1:k]).endswith((".", "!", "?"))
                    multi += offset + k - 1 in masked
    assert multi > 50     # words of several BPE pieces were masked together


def test_deterministic_for_seed_and_independent_of_workers(corpus, tok, tmp_path):
    one, _ = _make(corpus, tok, tmp_path / "w1", workers=1)
    two, _ = _make(corpus, tok, tmp_path / "w2", workers=2)
    again, _ = _make(corpus, tok, tmp_path / "again", workers=2)
    other, _ = _make(corpus, tok, tmp_path / "seed", workers=1, seed=7)
    for f1, f2, f3, f4 in zip(one["files"], two["files"], again["files"], other["files"]):
        assert filecmp.cmp(f1, f2, shallow=False) and filecmp.cmp(f1, f3, shallow=False)
        assert not filecmp.cmp(f1, f4, shallow=False)


def test_chunks_get_their_own_random_streams(corpus, tok, tmp_path):
    # the same documents in two chunks must not be masked identically (workers sharing one
    # RNG state was a release bug)
    text = open(corpus[0], encoding="utf-8").read()
    path = tmp_path / "twice.txt"
    path.write_text(text + "\n" + text, encoding="utf-8")
    n_docs = len(corpus[1])
    stats = pt.create_pretraining_data(
        [str(path)], str(tmp_path / "out"), tok,
        pt.PretrainingOptions(max_seq_length=64, docs_per_chunk=n_docs), 1, progress=False)
    shard = sh.load_shard(stats["files"][0])
    positions = {tuple(p) for p in shard["masked_lm_positions"]}
    assert len(positions) > 0.9 * len(shard["masked_lm_positions"])


def test_equal_lengths_stay_one_dimensional_object_arrays_b4(tmp_path):
    writer = ShardWriter(str(tmp_path), 1, seed=0, layout="2020")
    for k in range(3):
        writer.add({"input_ids": np.arange(6, dtype=np.int32) + k,
                    "segment_ids": np.array([0, 0, 0, 1, 1, 1], dtype=np.int32),
                    "masked_lm_positions": np.array([1, 4], dtype=np.int32),
                    "masked_lm_ids": np.array([7, 8], dtype=np.int32),
                    "next_sentence_labels": k % 2})
    (path,) = writer.close()
    shard = np.load(path, allow_pickle=True)
    for name in DTYPES:
        assert shard[name].shape == (3,) and shard[name].dtype == object
    assert sorted(int(a[0]) for a in shard["input_ids"]) == [0, 1, 2]
    assert not [n for n in os.listdir(str(tmp_path)) if n.endswith(".spool")]


def _assemble(instances, num_outputs, seed):
    """The shards as the writer assembled them in memory before it streamed: instances dealt
    round-robin, each shard's list shuffled with its seed, one object array per field."""
    shards = []
    for k in range(num_outputs):
        records = instances[k::num_outputs]
        random.Random("%d/shard/%d" % (seed, k)).shuffle(records)
        fields = {name: sh.object_array([r[name] for r in records]) for name in
                  ("input_ids", "segment_ids", "masked_lm_positions", "masked_lm_ids")}
        fields["masked_lm_weights"] = sh.object_array(
            [np.ones(len(r["masked_lm_ids"]), dtype=np.float32) for r in records])
        fields["next_sentence_labels"] = np.array([r["next_sentence_labels"] for r in records],
                                                  dtype=np.int32)
        fields["valid_lengths"] = np.array([len(r["input_ids"]) for r in records],
                                           dtype=np.int32)
        shards.append(fields)
    return shards


def _assert_same_arrays(got, expected):
    assert sorted(got) == sorted(expected)
    for name, want in expected.items():
        have = got[name]
        assert have.dtype == want.dtype and have.shape == want.shape, name
        if want.dtype == object:
            assert all(a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
                       for a, b in zip(have, want)), name
        else:
            assert np.array_equal(have, want), name


def test_streamed_shards_load_as_the_in_memory_writer_wrote_them(corpus, tok, tmp_path,
                                                                 monkeypatch):
    added, add = [], ShardWriter.add

    def recording_add(writer, inst):
        added.append(inst)
        add(writer, inst)

    monkeypatch.setattr(ShardWriter, "add", recording_add)
    stats, _ = _make(corpus, tok, tmp_path / "out", outputs=3, dupe_factor=2, seed=5,
                     layout="2020")
    assert len(added) == stats["instances"] > 500
    for k, (path, want) in enumerate(zip(stats["files"], _assemble(added, 3, seed=5))):
        old = str(tmp_path / ("old-%d.npz" % k))
        np.savez_compressed(old, **want)
        with np.load(old, allow_pickle=True) as expected, np.load(path, allow_pickle=True) as got:
            _assert_same_arrays(dict(got), dict(expected))
        with zipfile.ZipFile(path) as zf:
            assert zf.namelist() == [name + ".npy" for name in sorted(sh.FIELDS)]
            with zf.open("input_ids.npy") as f:     # a well-formed pickle, memo included
                assert np.lib.format.read_magic(f) == (1, 0)
                np.lib.format.read_array_header_1_0(f)
                pickletools.dis(f.read(), out=io.StringIO())


def _synthetic(count, length=512, predictions=76):
    """`count` distinct instances of `length` tokens."""
    ids = np.random.RandomState(0).randint(0, 50000, length).astype(np.int32)
    segments = (np.arange(length) >= length // 2).astype(np.int32)
    positions = np.arange(1, predictions + 1, dtype=np.int32)
    for i in range(count):
        yield {"input_ids": np.roll(ids, i), "segment_ids": segments,
               "masked_lm_positions": positions, "masked_lm_ids": np.roll(ids, i)[positions],
               "next_sentence_labels": i % 2}


def _peak_bytes_writing(directory, count, layout):
    """tracemalloc's peak while `count` instances go through a ShardWriter into one shard."""
    tracemalloc.start()
    try:
        writer = ShardWriter(directory, 1, seed=0, layout=layout)
        for inst in _synthetic(count):
            writer.add(inst)
        (path,) = writer.close()
        return tracemalloc.get_traced_memory()[1], path
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("layout", sh.LAYOUTS)
def test_memory_stays_flat_as_the_shard_grows(tmp_path, layout):
    small, _ = _peak_bytes_writing(str(tmp_path / "small"), 200, layout)
    large, path = _peak_bytes_writing(str(tmp_path / "large"), 2000, layout)
    record = 4 * (2 * 512 + 2 * 76)           # bytes an instance takes in the spool
    # a shard held in memory costs >= `record` bytes an instance (the old writer: about twice)
    assert large < 1.5 * small and (large - small) / 1800 < 128 < record / 30, (small, large)
    old = str(tmp_path / "old.npz")            # 2000 items: two pickle batches in the 2020 layout
    np.savez_compressed(old, **_assemble(list(_synthetic(2000)), 1, seed=0)[0])
    got, want = sh.load_shard(path), sh.load_shard(old)
    assert sorted(got) == sorted(want)
    assert all(np.array_equal(np.concatenate(got[k]) if isinstance(got[k], list) else got[k],
                              np.concatenate(want[k]) if isinstance(want[k], list) else want[k])
               for k in want)


# flattens a shard into plain arrays (no pickles), for interpreters to compare what they loaded
_FLATTEN = """
import sys
import numpy as np
shard, flat = np.load(sys.argv[1], allow_pickle=sys.argv[3] == "2020"), {}
for name in shard.files:
    a = shard[name]
    flat[name + ".dtype"], flat[name + ".shape"] = np.array(str(a.dtype)), np.array(a.shape)
    if a.dtype == object:
        flat[name + ".items"] = np.array(sorted({(str(x.dtype), x.ndim) for x in a}), dtype=str)
        flat[name + ".lengths"] = np.array([len(x) for x in a])
        a = np.concatenate(list(a))
    flat[name] = a
np.savez(sys.argv[2], **flat)
print(np.__version__)
"""


@pytest.mark.parametrize("layout", sh.LAYOUTS)
def test_shards_load_the_same_in_the_legacy_numpy(corpus, tok, tmp_path, layout, legacy_python):
    """numpy 1.16 reads both layouts as we do: the flat one with pickling off."""
    path = _make(corpus, tok, tmp_path / "out", outputs=1, layout=layout)[0]["files"][0]
    flat = []
    for k, python in enumerate((legacy_python, sys.executable)):
        out = str(tmp_path / ("%d.npz" % k))
        result = subprocess.run([python, "-c", _FLATTEN, path, out, layout],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                universal_newlines=True, timeout=120)
        assert result.returncode == 0, result.stdout
        flat.append(dict(np.load(out)))
    old, new = flat
    assert sorted(old) == sorted(new)
    assert all(np.array_equal(old[k], new[k]) and old[k].dtype == new[k].dtype for k in old)
    if layout == "2020":
        assert old["input_ids.items"].tolist() == [["int32", "1"]]
    else:
        assert old["input_ids.dtype"] == "int32" and sh.COUNTS in old


def test_bad_arguments_are_reported(tok, tmp_path):
    with pytest.raises(FileNotFoundError, match="no input file matches"):
        pt.create_pretraining_data([str(tmp_path / "*.nope")], str(tmp_path), tok,
                                   progress=False)
    with pytest.raises(ValueError, match="masked_lm_prob"):
        pt.PretrainingOptions(masked_lm_prob=1.5)


def test_cli_writes_shards_with_a_vocabulary_given_by_path(corpus, tmp_path, capsys):
    vocab = tmp_path / "gpt2"             # the real release's file names
    vocab.mkdir()
    for src, dst in (("vocab.json", "encoder.json"), ("merges.txt", "vocab.bpe"),
                     ("dict.txt", "dict.txt")):
        shutil.copy(os.path.join(DEMO_DIR, src), str(vocab / dst))
    argv = ["create-pretraining-data", "--data", corpus[0], "--output-dir", str(tmp_path / "o"),
            "--vocab", str(vocab), "--max-seq-length", "64", "--max-predictions-per-seq", "10",
            "--num-outputs", "3", "--num-workers", "2", "--dupe-factor", "2", "--quiet"]
    assert cli.main(argv) == 0
    stats = json.loads(capsys.readouterr().out)
    assert sorted(os.listdir(str(tmp_path / "o"))) == ["part-000.npz", "part-001.npz",
                                                       "part-002.npz"]
    sizes = [len(np.load(f)["valid_lengths"]) for f in stats["files"]]
    assert sum(sizes) == stats["instances"] and max(sizes) - min(sizes) <= 1


def test_an_earlier_runs_shards_are_refused_or_replaced_with_overwrite(corpus, tok, tmp_path):
    out = tmp_path / "out"
    _make(corpus, tok, out, outputs=3)
    (out / ".part-000.spool").write_bytes(b"left by a killed run")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          stdout=subprocess.PIPE, universal_newlines=True).stdout.strip()
    (out / (".part-001.npz.%s-0badf00d.tmp" % dead)).write_bytes(b"half a shard")
    with pytest.raises(ValueError, match=r"out: the output directory is not empty \(part-000.npz, "
                       r"part-001.npz, part-002.npz\); pass --overwrite"):
        _make(corpus, tok, out, outputs=2)
    assert sorted(os.listdir(str(out))) == ["part-000.npz", "part-001.npz", "part-002.npz"]
    options = pt.PretrainingOptions(max_seq_length=64)
    pt.create_pretraining_data([corpus[0]], str(out), tok, options, num_outputs=2,
                               progress=False, overwrite=True)
    assert sorted(os.listdir(str(out))) == ["part-000.npz", "part-001.npz"]
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="choose an empty one"):
        pt.create_pretraining_data([corpus[0]], str(out), tok, options, progress=False,
                                   overwrite=True)
    assert (out / "notes.txt").exists()


def test_a_failed_run_leaves_no_shard(corpus, tok, tmp_path, monkeypatch):
    calls = []

    def failing(self, inst):       # the disk fills up after a few instances
        calls.append(1)
        if len(calls) > 5:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(ShardWriter, "add", failing)
    with pytest.raises(OSError):
        _make(corpus, tok, tmp_path / "out")
    assert not (tmp_path / "out").exists()
