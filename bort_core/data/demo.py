"""The embedded demo data: a real-English corpus, its BPE vocabulary and three demo tasks.

Everything here is derived on any machine from the docstrings of the Python standard library
(PSF License), read with `ast` (nothing is imported or executed), so no download is ever needed.
`scripts/make_demo_data.py` runs these functions and writes the shipped files; rerunning it on the
same Python version reproduces them byte for byte.

Layout of `bort_core/data/demo/`:
    corpus.txt                      one sentence per line, a blank line between documents
                                    (read it with `pretraining.read_documents`)
    vocab.json merges.txt dict.txt  byte-level BPE in the real RoBERTa file formats
    tasks/demo-pair/                sentence-pair classification (GLUE WNLI layout)
    tasks/demo-single/              single-sentence classification (GLUE SST-2 layout)
    tasks/demo-regression/          regression, scores 0-5 (GLUE STS-B layout)
"""
from __future__ import annotations

import ast
import heapq
import inspect
import json
import os
import random
import re
import sysconfig
from collections import Counter
from typing import Dict, Iterator, List, Sequence, Tuple

from bort_core.tokenizer import DEMO_DIR, SPECIAL_TOKENS, bytes_to_unicode

CORPUS_PATH = os.path.join(DEMO_DIR, "corpus.txt")
TASKS_DIR = os.path.join(DEMO_DIR, "tasks")

_SKIP_DIRS = {"test", "tests", "site-packages", "dist-packages", "__pycache__", "turtledemo",
              "idle_test", "_bundled", "lib2to3"}
_SENTENCE_END = re.compile(r"(?<=[a-z0-9)\"'][.!?])\s+(?=[A-Z])")
_PROSE_CHARS = re.compile(r"[A-Za-z0-9 ,.;:'\"()/\-]")


# ----------------------------------------------------------------------------------------- corpus

def stdlib_sources(root: str = "") -> Iterator[str]:
    """Paths of the standard library's .py files, sorted, tests and vendored code left out."""
    root = root or sysconfig.get_paths()["stdlib"]
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for name in sorted(filenames):
            if name.endswith(".py") and not name.startswith("test_"):
                yield os.path.join(dirpath, name)


def docstrings(path: str) -> List[str]:
    """Module, class and function docstrings of one source file, in source order."""
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return []
    nodes = [tree] + [n for n in ast.walk(tree) if isinstance(
        n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
    nodes.sort(key=lambda n: getattr(n, "lineno", 0))
    return [d for d in (ast.get_docstring(n, clean=True) for n in nodes) if d]


def prose_sentences(doc: str) -> List[str]:
    """English sentences of a docstring: code, tables, parameter lists and doctests dropped."""
    sentences = []
    for para in re.split(r"\n\s*\n", inspect.cleandoc(doc)):
        lines = para.splitlines()
        if any(ln.startswith((" ", "\t", ">>>", "...", "-", "*", ":", "=")) for ln in lines):
            continue
        text = " ".join(ln.strip() for ln in lines)
        if not text or len(_PROSE_CHARS.findall(text)) < 0.95 * len(text):
            continue
        for sent in _SENTENCE_END.split(text):
            words = sent.split()
            if 5 <= len(words) <= 60 and sent[0].isupper() and sent.endswith((".", "!", "?")):
                sentences.append(" ".join(words))
    return sentences


def build_corpus(max_bytes: int = 1_800_000, root: str = "") -> List[List[str]]:
    """Documents (lists of sentences): one per stdlib module with at least two prose sentences,
    deduplicated, taken in path order until `max_bytes` of text."""
    documents, seen, size = [], set(), 0
    for path in stdlib_sources(root):
        doc = []
        for sent in (s for d in docstrings(path) for s in prose_sentences(d)):
            if sent not in seen:
                seen.add(sent)
                doc.append(sent)
        if len(doc) < 2:
            continue
        cost = sum(len(s.encode("utf-8")) + 1 for s in doc) + 1
        if size + cost > max_bytes:
            break
        documents.append(doc)
        size += cost
    return documents


def write_corpus(documents: Sequence[Sequence[str]], path: str) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("\n\n".join("\n".join(doc) for doc in documents) + "\n")


# ----------------------------------------------------------------------------------- BPE training

def pretokenize(text: str) -> List[str]:
    """GPT-2 pre-tokens of `text`, already mapped to the byte-level alphabet."""
    from tokenizers import pre_tokenizers
    return [p for p, _ in pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
            .pre_tokenize_str(text)]


def train_bpe(word_counts: Dict[str, int], num_merges: int) -> List[Tuple[str, str]]:
    """Byte-level BPE merges learned from pre-token counts, deterministically.

    Each step merges the most frequent adjacent pair (ties: the lexicographically smallest pair),
    keeping pair counts incrementally so the whole run takes seconds.
    """
    words = [list(w) for w in sorted(word_counts)]
    counts = [word_counts[w] for w in sorted(word_counts)]
    pair_count: Counter = Counter()
    where: Dict[Tuple[str, str], set] = {}
    for wi, sym in enumerate(words):
        for pair in zip(sym, sym[1:]):
            pair_count[pair] += counts[wi]
            where.setdefault(pair, set()).add(wi)
    heap = [(-c, p) for p, c in pair_count.items()]
    heapq.heapify(heap)
    merges = []
    while len(merges) < num_merges and heap:
        neg, pair = heapq.heappop(heap)
        if pair_count.get(pair, 0) != -neg or -neg < 1:
            continue                                     # stale heap entry
        merges.append(pair)
        merged = pair[0] + pair[1]
        touched = set()
        for wi in sorted(where.pop(pair, ())):
            sym, c = words[wi], counts[wi]
            for p in zip(sym, sym[1:]):
                pair_count[p] -= c
                touched.add(p)
            out, i = [], 0
            while i < len(sym):
                if i + 1 < len(sym) and (sym[i], sym[i + 1]) == pair:
                    out.append(merged)
                    i += 2
                else:
                    out.append(sym[i])
                    i += 1
            words[wi] = out
            for p in zip(out, out[1:]):
                pair_count[p] += c
                where.setdefault(p, set()).add(wi)
                touched.add(p)
        pair_count.pop(pair, None)
        for p in sorted(touched - {pair}):
            if pair_count[p] > 0:
                heapq.heappush(heap, (-pair_count[p], p))
            else:
                pair_count.pop(p, None)
    if len(merges) < num_merges:
        raise ValueError("corpus too small: only %d merges possible, %d asked"
                         % (len(merges), num_merges))
    return merges


def write_vocabulary(documents: Sequence[Sequence[str]], vocab_size: int, out_dir: str) -> None:
    """Train BPE on `documents` and write vocab.json (GPT-2 order), merges.txt and dict.txt
    (fairseq order by count) so that `<s> <pad> </s> <unk>` + dict + `<mask>` = vocab_size."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    alphabet = list(bytes_to_unicode().values())
    num_merges = vocab_size - len(SPECIAL_TOKENS) - 1 - len(alphabet)
    counts: Counter = Counter()
    for doc in documents:
        for sent in doc:
            counts.update(pretokenize(sent))
    merges = train_bpe(counts, num_merges)
    encoder = {tok: i for i, tok in enumerate(alphabet + [a + b for a, b in merges])}
    bpe = Tokenizer(models.BPE(vocab=encoder, merges=merges))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    freq: Counter = Counter()
    for doc in documents:
        for enc in bpe.encode_batch(list(doc)):
            freq.update(enc.ids)
    order = sorted(encoder.values(), key=lambda i: (-freq[i], i))
    with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8", newline="\n") as f:
        json.dump(encoder, f, ensure_ascii=False)
    with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8", newline="\n") as f:
        f.write("#version: 0.2\n" + "".join("%s %s\n" % m for m in merges))
    with open(os.path.join(out_dir, "dict.txt"), "w", encoding="utf-8", newline="\n") as f:
        f.write("".join("%d %d\n" % (i, freq[i]) for i in order))
    assert len(SPECIAL_TOKENS) + len(order) + 1 == vocab_size     # + <mask>


# ------------------------------------------------------------------------------------ demo tasks

DEMO_TASK_SIZES = {"train": 500, "dev": 400, "test": 400}
REFERENCE_POOL_SIZE = 2000       # labelled train examples for Agora's reference only


def _split_documents(documents, seed):
    """Documents shuffled and cut 80/10/10 into train/dev/test, so no text crosses splits."""
    docs = [list(d) for d in documents]
    random.Random(seed).shuffle(docs)
    n = len(docs)
    return {"train": docs[: n * 8 // 10], "dev": docs[n * 8 // 10: n * 9 // 10],
            "test": docs[n * 9 // 10:]}


def _write_tsv(path, header, rows):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("\t".join(header) + "\n")
        f.writelines("\t".join(str(c) for c in row) + "\n" for row in rows)


def _typo_positions(word: str) -> List[int]:
    """Where two adjacent, different letters inside `word` (first and last kept) can swap."""
    return [p for p in range(1, len(word) - 2)
            if word[p].isalpha() and word[p + 1].isalpha() and word[p] != word[p + 1]]


def with_typos(words: Sequence[str], share: float, rng) -> Tuple[List[str], float]:
    """`words` with a typo (two adjacent inner letters swapped) in round(share * n) of the n
    words that can take one; returns them and the share actually mistyped."""
    words = list(words)
    eligible = [j for j, w in enumerate(words) if _typo_positions(w)]
    chosen = rng.sample(eligible, int(round(share * len(eligible))))
    for j in chosen:
        w = words[j]
        p = rng.choice(_typo_positions(w))
        words[j] = w[:p] + w[p + 1] + w[p] + w[p + 2:]
    return words, len(chosen) / max(1, len(eligible))


def _shuffled(words: Sequence[str], rng) -> List[str]:
    out = list(words)
    while out == list(words):
        rng.shuffle(out)
    return out


def _task_rows(sents: Sequence[str], n: int, rng) -> Dict[str, list]:
    """`n` examples of each task from `sents` (sentences of at least three typo-able words),
    labels alternating 0/1 on the binary tasks."""
    rows = {name: [] for name in DEMO_TASKS}
    for i in range(n):
        words = rng.choice(sents).split()
        if i % 2:
            dropped = list(words)
            del dropped[rng.randrange(len(dropped))]
            second = dropped
        else:
            second = with_typos(words, rng.uniform(0.2, 0.6), rng)[0]
        rows["demo-pair"].append((" ".join(words), " ".join(second), i % 2))

        words = rng.choice(sents).split()
        rows["demo-single"].append((" ".join(words if i % 2 else _shuffled(words, rng)), i % 2))

        words = rng.choice(sents).split()
        typed, share = with_typos(words, rng.randint(0, 10) / 10.0, rng)
        rows["demo-regression"].append((" ".join(words), " ".join(typed),
                                        "%.3f" % (5.0 * (1.0 - share))))
    return rows


def make_demo_tasks(documents: Sequence[Sequence[str]], out_dir: str, seed: int = 7,
                    labelled_test: bool = False, pool: bool = False) -> None:
    """Write the three demo tasks (labels balanced; test files unlabelled, as on GLUE, unless
    `labelled_test`: then the test split is written in the dev layout, labels included, as the
    held-out set that no run trains or selects on).

    demo-pair (WNLI layout): is sentence2 a faithful copy of sentence1, one word dropped (1), or
        a copy with typos (two adjacent letters swapped) in 20-60% of its words (0)?
    demo-single (SST-2 layout): is the sentence as written (1) or with its words shuffled (0)?
    demo-regression (STS-B layout): sentence2 is sentence1 with typos in a share r of its
        words (r in 0, 0.1, ..., 1); the score is 5 * (1 - r).

    The train split is small (DEMO_TASK_SIZES), the setting Agora is for. With `pool`, train.tsv
    holds instead REFERENCE_POOL_SIZE further examples drawn after the train examples from the
    same documents (under 1% coincide with a train text by chance): the data of Agora's
    reference model, which the student never trains on.
    """
    rng = random.Random(seed)
    for split, docs in _split_documents(documents, seed).items():
        sents = [s for d in docs for s in d
                 if sum(1 for w in s.split() if _typo_positions(w)) >= 3]
        size = DEMO_TASK_SIZES[split]
        rows = _task_rows(sents, size + (REFERENCE_POOL_SIZE if split == "train" else 0), rng)
        if split == "train":
            rows = {name: r[size:] if pool else r[:size] for name, r in rows.items()}
        for name in DEMO_TASKS:
            os.makedirs(os.path.join(out_dir, name), exist_ok=True)

        def path(name, split=split):
            return os.path.join(out_dir, name, split + ".tsv")

        pair, single, regression = (rows[name] for name in DEMO_TASKS)
        unlabelled = split == "test" and not labelled_test
        if unlabelled:
            _write_tsv(path("demo-pair"), ["index", "sentence1", "sentence2"],
                       [(i, a, b) for i, (a, b, _) in enumerate(pair)])
            _write_tsv(path("demo-single"), ["index", "sentence"],
                       [(i, a) for i, (a, _) in enumerate(single)])
        else:
            _write_tsv(path("demo-pair"), ["index", "sentence1", "sentence2", "label"],
                       [(i,) + row for i, row in enumerate(pair)])
            _write_tsv(path("demo-single"), ["sentence", "label"], single)
        sts_head = ["index", "genre", "filename", "year", "old_index", "source1", "source2",
                    "sentence1", "sentence2"] + ([] if unlabelled else ["score"])
        _write_tsv(path("demo-regression"), sts_head,
                   [(i, "demo", "stdlib", "none", i, "stdlib", "stdlib", a, b)
                    + (() if unlabelled else (score,))
                    for i, (a, b, score) in enumerate(regression)])


DEMO_TASKS = ("demo-pair", "demo-single", "demo-regression")
