"""Task readers on hand-made fixtures in the official layouts, features as the release made them,
leaderboard files and `bort data check`."""
import json
import os
import shutil

import numpy as np
import pytest

from bort_core import cli
from bort_core.data import leaderboard
from bort_core.data import tasks as T
from bort_core.tokenizer import load_tokenizer

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "tasks")

# examples per split in the fixtures (unrolled rows for MultiRC, ReCoRD, RACE)
EXPECTED = {
    "cola": {"train": 4, "dev": 2, "test": 2}, "sst-2": {"train": 3, "dev": 2, "test": 2},
    "mrpc": {"train": 2, "dev": 1, "test": 1}, "sts-b": {"train": 3, "dev": 2, "test": 1},
    "qqp": {"train": 3, "dev": 2, "test": 2},
    "mnli": {"train": 4, "dev_matched": 2, "dev_mismatched": 1, "test_matched": 1,
             "test_mismatched": 2},
    "qnli": {"train": 3, "dev": 1, "test": 1}, "rte": {"train": 2, "dev": 1, "test": 1},
    "wnli": {"train": 4, "dev": 1, "test": 1}, "ax": {"test": 2},
    "boolq": {"train": 2, "dev": 1, "test": 1}, "cb": {"train": 3, "dev": 1, "test": 1},
    "copa": {"train": 3, "dev": 1, "test": 1}, "multirc": {"train": 5, "dev": 2, "test": 2},
    "record": {"train": 2, "dev": 5, "test": 3},
    "superglue-rte": {"train": 2, "dev": 1, "test": 1}, "wic": {"train": 2, "dev": 1, "test": 1},
    "wsc": {"train": 2, "dev": 1, "test": 1}, "ax-b": {"test": 2}, "ax-g": {"test": 4},
    "race-h": {"train": 3, "dev": 1, "test": 1}, "race-m": {"train": 2, "dev": 1, "test": 1},
}


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def read(name, split):
    return T.read_split(T.get_task(name), split, FIXTURES)


@pytest.mark.filterwarnings("ignore:.*skipped")
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_task_reads_its_official_layout(name, tok):
    task = T.get_task(name)
    assert {s: len(read(name, s).examples) for s in task.splits} == EXPECTED[name]
    for split in task.splits:
        examples = read(name, split).examples
        assert all(len(e.texts) == (2 if task.is_pair else 1) for e in examples)
        assert all(isinstance(t, str) and t for e in examples for t in e.texts)
        if task.class_labels is not None:
            assert all(e.label is None or e.label in task.class_labels for e in examples)
        feats = T.featurize(examples, task, tok, max_len=64)
        assert len(feats["input_ids"]) == len(examples)
        for ids, seg in zip(feats["input_ids"], feats["segment_ids"]):
            assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id and len(ids) <= 64
            assert (ids == tok.eos_id).sum() == (2 if task.is_pair else 1)
            assert seg.tolist() == sorted(seg.tolist()) and ids.dtype == np.int32


def test_all_release_tasks_and_demo_tasks_are_registered():
    assert set(T.TASKS) == set(EXPECTED) | {"demo-pair", "demo-single", "demo-regression"}
    for alias, name in [("SST", "sst-2"), ("STS-B", "sts-b"), ("SuperGLUERTE", "superglue-rte"),
                        ("AXb", "ax-b"), ("AXg", "ax-g"), ("RACE-H", "race-h"), ("MNLI", "mnli")]:
        assert T.get_task(alias).name == name
    with pytest.raises(KeyError, match="unknown task"):
        T.get_task("squad")


def test_cola_train_has_no_header_and_test_has_an_index_column():
    train = read("cola", "train").examples
    assert train[0].texts == ("The gardener watered the roses before breakfast.",)
    assert [e.label for e in train] == ["1", "0", "1", "0"]
    test = read("cola", "test").examples
    assert [(e.idx, e.texts[0]) for e in test][0] == ("0", "Nora hummed past the bakery.")


def test_sst2_and_mnli_test_files_keep_their_index_column():
    assert [e.idx for e in read("sst-2", "test").examples] == ["0", "1"]
    assert read("sst-2", "test").examples[0].texts == (
        "clumsy patchwork of moods and half-baked ideas .",)
    mm = read("mnli", "test_mismatched").examples
    assert [e.idx for e in mm] == ["0", "1"] and mm[0].texts[1] == "So which one did you choose?"


def test_qqp_rows_with_missing_fields_are_counted_and_skipped():
    with pytest.warns(UserWarning, match="skipped 1 rows"):
        data = read("qqp", "train")
    assert data.skipped == 1 and len(data.examples) == 3
    assert all("keep basil alive" not in e.texts[0] for e in data.examples)


def test_mnli_has_two_dev_sets_with_gold_labels():
    matched, mismatched = read("mnli", "dev_matched"), read("mnli", "dev_mismatched")
    assert [e.label for e in matched.examples] == ["neutral", "contradiction"]
    assert [e.label for e in mismatched.examples] == ["contradiction"]


def test_boolean_json_labels(tok):
    boolq = read("boolq", "train").examples
    assert [(e.label, e.raw_label) for e in boolq] == [("true", "true"), ("false", "false")]
    assert boolq[0].texts[0].startswith("Velorian language")        # passage first, as released
    feats = T.featurize(boolq, T.get_task("boolq"), tok)
    assert feats["label"].tolist() == [1, 0] and feats["label"].dtype == np.int32
    assert [e.label for e in read("wsc", "train").examples] == ["false", "true"]
    assert [e.label for e in read("wic", "train").examples] == ["false", "true"]


def test_labels_follow_the_release_class_order(tok):
    task = T.get_task("mnli")
    assert task.class_labels == ("neutral", "entailment", "contradiction")
    feats = T.featurize(read("mnli", "train").examples, task, tok)
    assert feats["label"].tolist() == [0, 1, 1, 2]
    sts = T.featurize(read("sts-b", "train").examples, T.get_task("sts-b"), tok)
    assert sts["label"].dtype == np.float32 and sts["label"].tolist() == pytest.approx([5, 3.8, 3.8])
    assert "label" not in T.featurize(read("rte", "test").examples, T.get_task("rte"), tok)


def test_pair_features_are_s_a_sep_b_sep_with_equal_truncation(tok):
    ex = T.Example(("one two three four five six seven eight nine ten", "alpha beta"), "1")
    task = T.get_task("wnli")
    a, b = tok.encode(ex.texts[0]), tok.encode(ex.texts[1])
    feats = T.featurize([ex], task, tok, max_len=len(b) + 8)
    ids, seg = feats["input_ids"][0].tolist(), feats["segment_ids"][0].tolist()
    assert ids == [0] + a[:5] + [2] + b + [2]                # budget max_len - 3 = len(b) + 5
    assert seg == [0] * 7 + [1] * (len(b) + 1)
    assert feats["valid_length"].tolist() == [len(ids)] and feats["label"].tolist() == [1]
    single = T.featurize([T.Example(("a b c d e f",), "1")], T.get_task("sst-2"), tok, max_len=5)
    assert single["input_ids"][0].tolist() == [0] + tok.encode("a b c d e f")[:3] + [2]


@pytest.mark.parametrize("lens,max_len,out", [
    ([10, 3], 8, [5, 3]), ([10, 10], 7, [4, 3]), ([2, 10, 10], 12, [2, 5, 5]),
    ([2, 10, 11], 13, [2, 6, 5]), ([3, 4], 9, [3, 4]), ([7, 1, 7], 6, [3, 1, 2])])
def test_truncate_equal(lens, max_len, out):
    seqs = [list(range(n)) for n in lens]
    assert [len(s) for s in T.truncate_equal(seqs, max_len)] == out
    assert all(t == s[:len(t)] for s, t in zip(seqs, T.truncate_equal(seqs, max_len)))


def test_copa_wsc_cb_unrolling_as_released():
    copa = read("copa", "train").examples
    assert copa[0].texts == (
        "The puddle on the road froze overnight. because The temperature dropped below zero.",
        "The puddle on the road froze overnight. because The road was repaved.")
    assert " so " in copa[2].texts[0] and copa[2].label == "1"
    assert read("wsc", "train").examples[0].texts[1] == "She means Lena"
    long = read("cb", "train").examples[1].texts[0]
    # more than three '.'-pieces: the last four joined by spaces, first char dropped; no fillers
    assert long == "Then we ate  Then we slept   I don't think he liked it "
    # the release's rule also bites texts of exactly three sentences (kept: faithful features)
    assert read("cb", "train").examples[0].texts[0] == (
        "t was an old recipe  Not printed in books but passed along  One might say it was "
        "cooked by heart ")
    assert read("cb", "train").examples[2].texts[0].startswith("Corvin the cloud-head,")


def test_multirc_one_example_per_answer_with_clean_passage():
    rows = read("multirc", "train").examples
    assert rows[0].texts[0] == ("Alice walked to the old mill by the river. She met her brother "
                                "Tom there. They fished until sunset.")
    assert [r.texts[1] for r in rows[:3]] == ["Who did Alice meet? Tom",
                                              "Who did Alice meet? Her brother",
                                              "Who did Alice meet? Her sister"]
    assert [r.label for r in rows] == ["1", "1", "0", "1", "0"]
    assert rows[3].idx == (0, 1, 3) and rows[3].group == (0, 1)


def test_record_candidates_train_balanced_dev_complete():
    train = read("record", "train").examples
    assert [(e.candidate, e.label) for e in train] == [("Bob", "1"), ("Alice", "0")]
    assert train[0].texts[1] == "Bob moved to Lyon after meeting Alice."
    assert "\n" not in train[0].texts[0]
    dev = read("record", "dev").examples
    assert sorted(e.candidate for e in dev) == ["Alice", "Bob", "Carol", "Lyon", "Paris"]
    assert [e.candidate for e in dev if e.label == "1"] == ["Paris"]
    assert all(e.label is None for e in read("record", "test").examples)


def test_race_one_four_way_example_per_question_files_sorted():
    rows = read("race-h", "train").examples
    assert [r.group for r in rows] == ["high1.txt", "high2.txt", "high2.txt"]
    assert rows[0].texts == ("The library opens at nine and closes at five on weekdays. "
                             "When does the library close?",
                             "At nine </sep> At noon </sep> At five </sep> At ten")
    assert [r.label for r in rows] == ["2", "1", "0"] and rows[0].raw_label == "C"


def test_diagnostics_are_test_only_and_name_their_training_task():
    ax = T.get_task("ax")
    assert ax.splits == ("test",) and ax.train_task == "mnli"
    assert ax.class_labels == T.get_task("mnli").class_labels   # MNLI model's class indices
    axg = read("ax-g", "test").examples
    assert [e.group for e in axg] == [551646, 551646, 551647, 551647]
    assert T.get_task("ax-b").train_task == "superglue-rte"
    assert T.get_task("ax-g").class_labels == T.get_task("superglue-rte").class_labels


def test_missing_file_names_path_and_download_page(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        T.read_split(T.get_task("cola"), "train", str(tmp_path))
    assert os.path.join(str(tmp_path), "CoLA", "train.tsv") in str(err.value)
    assert "https://gluebenchmark.com/tasks" in str(err.value)
    with pytest.raises(FileNotFoundError, match="super.gluebenchmark.com"):
        T.read_split(T.get_task("copa"), "dev", str(tmp_path))
    with pytest.raises(ValueError, match="needs --data-dir"):
        T.read_split(T.get_task("rte"), "train")


def _copy_task(tmp_path, subdir):
    shutil.copytree(os.path.join(FIXTURES, subdir), str(tmp_path / subdir))
    return tmp_path / subdir


def test_malformed_rows_name_file_and_line(tmp_path):
    d = _copy_task(tmp_path, "RTE")
    with open(str(d / "train.tsv"), "a", encoding="utf-8") as f:
        f.write("7\tonly one sentence\n")
    with pytest.raises(ValueError, match=r"RTE/train.tsv:4: expected at least 4"):
        T.read_split(T.get_task("rte"), "train", str(tmp_path))
    with open(str(d / "val.jsonl"), "a", encoding="utf-8") as f:
        f.write("{not json\n")
    with pytest.raises(ValueError, match=r"RTE/val.jsonl:2: not a JSON object"):
        T.read_split(T.get_task("superglue-rte"), "dev", str(tmp_path))
    d = _copy_task(tmp_path, "SST-2")
    with open(str(d / "dev.tsv"), "a", encoding="utf-8") as f:
        f.write("a fine film\tpositive\n")
    with pytest.raises(ValueError, match=r"SST-2/dev.tsv:4: label 'positive' is not one of"):
        T.read_split(T.get_task("sst-2"), "dev", str(tmp_path))
    d = _copy_task(tmp_path, "BoolQ")
    (d / "train.jsonl").write_text('{"question": "q", "idx": 0, "label": true}\n')
    with pytest.raises(ValueError, match=r"BoolQ/train.jsonl:1: missing field 'passage'"):
        T.read_split(T.get_task("boolq"), "train", str(tmp_path))


TSV_SPLITS = [(name, split) for name, task in sorted(T.TASKS.items()) if task.read is T.read_tsv
              for split in task.splits]


def _lines_of(task, split):
    path = task.path(FIXTURES if task.benchmark != "demo" else T.default_data_dir(task), split)
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines(keepends=True)


@pytest.mark.parametrize("name,split", TSV_SPLITS)
def test_every_tsv_header_is_checked_against_the_layout(tmp_path, name, split):
    """Without its header a file would lose its first row: refused, naming the file and the
    expected header; CoLA train/dev, headerless as released, read every line."""
    task = T.get_task(name)
    lines, layout = _lines_of(task, split), task.columns[split]
    path = tmp_path / task.subdir / task.files[split]
    path.parent.mkdir(parents=True)
    if not layout.header:
        path.write_text("".join(lines), encoding="utf-8")
        assert len(T.read_split(task, split, str(tmp_path)).examples) == len(lines)
        return
    assert lines[0].rstrip("\r\n").split("\t") == list(layout.names)    # the fixture's header
    path.write_text("".join(lines[1:]), encoding="utf-8")
    with pytest.raises(ValueError) as err:
        T.read_split(task, split, str(tmp_path))
    assert str(err.value).startswith("%s:1: missing or wrong header: %s %s files start with the "
                                     "line %r" % (path, name, split, "\t".join(layout.names)))


def test_a_header_naming_other_columns_is_refused_and_a_byte_order_mark_is_not(tmp_path):
    d = _copy_task(tmp_path, "MRPC")
    text = (d / "train.tsv").read_text(encoding="utf-8")
    (d / "train.tsv").write_text("\ufeff" + text, encoding="utf-8")      # as GLUE ships MRPC
    assert len(T.read_split(T.get_task("mrpc"), "train", str(tmp_path)).examples) == 2
    (d / "train.tsv").write_text(text.replace("#1 String\t#2 String", "#2 String\t#1 String"),
                                 encoding="utf-8")
    with pytest.raises(ValueError, match=r"MRPC/train.tsv:1: missing or wrong header: .* column 4 "
                       r"here is '#2 String', not '#1 String'"):
        T.read_split(T.get_task("mrpc"), "train", str(tmp_path))


def test_a_byte_that_is_not_utf8_names_the_file_and_line(tmp_path):
    d = _copy_task(tmp_path, "RTE")
    with open(str(d / "train.tsv"), "ab") as f:
        f.write("9\tCaf\u00e9 au lait.\tA drink.\tentailment\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"RTE/train.tsv:4: not UTF-8 text \(byte 0xe9 at column "
                       r"6\)"):
        T.read_split(T.get_task("rte"), "train", str(tmp_path))
    with open(str(d / "train.jsonl"), "ab") as f:
        f.write(b'{"premise": "Caf\xe9", "hypothesis": "h", "label": "entailment", "idx": 9}\n')
    with pytest.raises(ValueError, match=r"RTE/train.jsonl:3: not UTF-8 text"):
        T.read_split(T.get_task("superglue-rte"), "train", str(tmp_path))


@pytest.mark.parametrize("score", ["nan", "inf", "-Infinity"])
def test_a_non_finite_score_names_the_file_and_line(tmp_path, score):
    d = _copy_task(tmp_path, "STS-B")
    with open(str(d / "train.tsv"), "a", encoding="utf-8") as f:
        f.write("9\tmain-captions\tMSRvid\t2012test\t9\tnone\tnone\tA cat.\tA dog.\t%s\n" % score)
    with pytest.raises(ValueError, match=r"STS-B/train.tsv:5: score '%s' is not a finite number"
                       % score):
        T.read_split(T.get_task("sts-b"), "train", str(tmp_path))


def test_load_features_in_one_call(tok):
    examples, feats = T.load_features("demo-pair", "dev", tokenizer=tok, max_len=32)
    assert len(examples) == len(feats["input_ids"]) == 400
    assert feats["label"].tolist() == [int(e.label) for e in examples]


def test_demo_tasks_read_from_the_embedded_copy(tok):
    for name, head in (("demo-pair", 2), ("demo-single", 1), ("demo-regression", 2)):
        task = T.get_task(name)
        assert task.benchmark == "demo" and "glue" not in task.name
        train = T.read_split(task, "train")
        assert len(train.examples) == 500 and all(len(e.texts) == head for e in train.examples)
        assert all(e.label is None for e in T.read_split(task, "test").examples)


def test_leaderboard_files(tmp_path):
    mnli = T.get_task("mnli")
    ex = read("mnli", "test_mismatched").examples
    path = leaderboard.write_submission(mnli, ex, [2, 1], str(tmp_path), "test_mismatched")
    assert os.path.basename(path) == "MNLI-mm.tsv"
    assert open(path).read() == "index\tprediction\n0\tcontradiction\n1\tentailment\n"
    path = leaderboard.write_submission(T.get_task("sts-b"), read("sts-b", "test").examples,
                                        [3.14159], str(tmp_path))
    assert open(path).read().splitlines() == ["index\tprediction", "0\t3.142"]
    path = leaderboard.write_submission(T.get_task("boolq"), read("boolq", "test").examples, [1],
                                        str(tmp_path))
    assert os.path.basename(path) == "BoolQ.jsonl"
    assert [json.loads(x) for x in open(path)] == [{"idx": 0, "label": "true"}]
    path = leaderboard.write_submission(T.get_task("copa"), read("copa", "test").examples, [1],
                                        str(tmp_path))
    assert [json.loads(x) for x in open(path)] == [{"idx": 0, "label": 1}]


def test_leaderboard_nested_multirc_record_and_race(tmp_path):
    rows = read("multirc", "train").examples
    path = leaderboard.write_submission(T.get_task("multirc"), rows, [1, 0, 0, 1, 1],
                                        str(tmp_path))
    assert [json.loads(x) for x in open(path)] == [{"idx": 0, "passage": {"questions": [
        {"idx": 0, "answers": [{"idx": 0, "label": 1}, {"idx": 1, "label": 0},
                               {"idx": 2, "label": 0}]},
        {"idx": 1, "answers": [{"idx": 3, "label": 1}, {"idx": 4, "label": 1}]}]}}]
    cands = read("record", "test").examples
    scores = [0.1 if e.candidate != "Lyon" else 0.9 for e in cands]
    path = leaderboard.write_submission(T.get_task("record"), cands, scores, str(tmp_path))
    assert [json.loads(x) for x in open(path)] == [{"idx": 0, "label": "Lyon"}]
    path = leaderboard.write_submission(T.get_task("race-h"), read("race-h", "train").examples,
                                        [2, 1, 3], str(tmp_path))
    assert [json.loads(x) for x in open(path)] == [{"id": "high1.txt", "answers": ["C"]},
                                                   {"id": "high2.txt", "answers": ["B", "D"]}]


def test_data_check_json(capsys):
    assert cli.main(["data", "check", "--task", "MNLI", "--data-dir", FIXTURES, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == {
        "train": {"examples": 4, "labels": {"contradiction": 1, "entailment": 2, "neutral": 1}},
        "dev_matched": {"examples": 2, "labels": {"contradiction": 1, "neutral": 1}},
        "dev_mismatched": {"examples": 1, "labels": {"contradiction": 1}},
        "test_matched": {"examples": 1, "labels": {}},
        "test_mismatched": {"examples": 2, "labels": {}}}
    assert cli.main(["data", "check", "--task", "boolq", "--data-dir", FIXTURES, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["train"]["labels"] == {"false": 1, "true": 1}


def test_data_check_text_and_errors(capsys, tmp_path):
    assert cli.main(["data", "check", "--task", "qqp", "--data-dir", FIXTURES]) == 0
    out = capsys.readouterr().out
    assert "train" in out and "3 examples" in out and "1 broken rows skipped" in out
    assert cli.main(["data", "check", "--task", "wic", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "WiC/train.jsonl" in err and "super.gluebenchmark.com" in err
