"""Masked-LM pretraining instances, streamed from text into `.npz` shards.

Input: text files (UTF-8) with one sentence per line and a blank line between documents.
Output: `part-%03d.npz` shards (np.savez_compressed's format) with, per instance i,

    input_ids[i], segment_ids[i], masked_lm_positions[i], masked_lm_ids[i]   int32 arrays
    masked_lm_weights[i]                                                     float32 array
    next_sentence_labels, valid_lengths                                      int32, shape (N,)

in the `flat` layout (plain arrays, no pickle) or, with `--layout 2020`, the release's object
arrays for its `NumpyDataset` loader (`bort_core.data.shards` describes and reads both).
Instances follow Google BERT's recipe: `<s> A </s> B </s>` of at most
max_seq_length tokens, B the true continuation or (p=0.5, label 1) text from another document,
15% of the non-special tokens predicted: 80% replaced by `<mask>`, 10% by a random token, 10% kept.

Unlike the 2020 script this one
- looks BPE strings up by their ids, so text never becomes `<unk>` (release bug B1);
- uses the vocabulary's own `<s>`/`</s>` (ids 0 and 2), never ids beyond the embedding (B2);
- supports --whole-word-mask with byte-level BPE: a word is a token starting with 'Ġ' plus the
  tokens that follow it, and every sentence's first token (B3);
- in the 2020 layout, stores 1-D object arrays even when all lengths are equal (B4);
- derives one RNG per (seed, chunk, dupe), so workers never share a state and the output depends
  on the seed only -- not on the number of workers;
- streams: documents are read in chunks of `docs_per_chunk`, the random "next sentence" comes
  from another document of the same chunk, instances are spooled to disk and each shard is
  streamed from its spool one instance at a time (`bort_core.data.shard_writer`), so memory
  stays flat as the input grows (peak: the chunks in flight, plus about 50 bytes an instance of
  the shard being written).
"""
from __future__ import annotations

import dataclasses
import glob
import os
import random
from collections import deque
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from bort_core.data.shard_writer import ShardWriter, prepare_output_dir
from bort_core.tokenizer import WORD_START, BPETokenizer


@dataclasses.dataclass(frozen=True)
class PretrainingOptions:
    """Knobs of instance creation; defaults are the 2020 release's."""

    max_seq_length: int = 512
    masked_lm_prob: float = 0.15
    max_predictions_per_seq: int = 80
    short_seq_prob: float = 0.1
    dupe_factor: int = 1
    whole_word_mask: bool = False
    seed: int = 12345
    docs_per_chunk: int = 256

    def __post_init__(self):
        if self.max_seq_length < 8:
            raise ValueError("max_seq_length must be at least 8, got %d" % self.max_seq_length)
        if not 0.0 < self.masked_lm_prob < 1.0:
            raise ValueError("masked_lm_prob must be in (0, 1), got %r" % self.masked_lm_prob)
        if not 0.0 <= self.short_seq_prob <= 1.0:
            raise ValueError("short_seq_prob must be in [0, 1], got %r" % self.short_seq_prob)
        for name in ("max_predictions_per_seq", "dupe_factor", "docs_per_chunk"):
            if getattr(self, name) < 1:
                raise ValueError("%s must be at least 1" % name)


# ------------------------------------------------------------------------------------ reading

def expand_inputs(patterns: Iterable[str]) -> List[str]:
    """Files named by paths, globs or comma-separated lists of either (the 2020 syntax)."""
    files = []
    for pattern in patterns:
        for part in filter(None, pattern.split(",")):
            found = sorted(glob.glob(os.path.expanduser(part)))
            if not found:
                raise FileNotFoundError("no input file matches %s" % part)
            for path in found:
                if os.path.isdir(path):
                    raise ValueError("%s: a directory, not a text file (name its files, e.g. "
                                     "'%s')" % (path, os.path.join(path, "*.txt")))
            files.extend(found)
    return files


def read_documents(path: str) -> Iterator[List[str]]:
    """Documents (lists of non-empty lines) of one UTF-8 file, streamed; a line that is not
    text is an error naming the file and line."""
    doc = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if b"\0" in raw:
                raise ValueError("%s: line %d holds a NUL byte: a binary file, not text"
                                 % (path, number))
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as err:
                raise ValueError("%s: line %d is not UTF-8 text (byte 0x%02x at column %d)"
                                 % (path, number, raw[err.start], err.start + 1)) from None
            if line:
                doc.append(line)
            elif doc:
                yield doc
                doc = []
    if doc:
        yield doc


def document_chunks(files: Sequence[str], docs_per_chunk: int) -> Iterator[Tuple[list, int]]:
    """(documents, bytes read) chunks over all files; a chunk never spans two files."""
    for path in files:
        chunk, size = [], 0
        for doc in read_documents(path):
            chunk.append(doc)
            size += sum(len(s) + 1 for s in doc) + 1
            if len(chunk) == docs_per_chunk:
                yield chunk, size
                chunk, size = [], 0
        if chunk:
            yield chunk, size


# ----------------------------------------------------------------------------------- instances

class InstanceMaker:
    """Turns a chunk of raw documents into masked-LM instances (one RNG per chunk and dupe)."""

    def __init__(self, tokenizer: BPETokenizer, options: PretrainingOptions):
        self.tok = tokenizer
        self.opt = options
        starts = np.zeros(len(tokenizer), dtype=bool)
        starts[[i for i, t in enumerate(tokenizer.idx_to_token) if t.startswith(WORD_START)]] = True
        self._word_start = starts
        special = set(tokenizer.special_ids)
        self._random_ids = [i for i in range(len(tokenizer)) if i not in special]

    def tokenize(self, documents: Sequence[Sequence[str]]) -> List[List[List[int]]]:
        """Coded tokens per sentence per document: `id << 1 | starts_word`, where a word starts at
        a token beginning with 'Ġ' and at each sentence's first token. Empty sentences dropped."""
        flat = self.tok.encode_batch([s for d in documents for s in d])
        out, k = [], 0
        for doc in documents:
            sents = []
            for ids in flat[k:k + len(doc)]:
                if ids:
                    coded = (np.asarray(ids, dtype=np.int64) << 1) | self._word_start[ids]
                    coded[0] |= 1
                    sents.append(coded.tolist())
            k += len(doc)
            if sents:
                out.append(sents)
        return out

    def __call__(self, documents: Sequence[Sequence[str]], chunk_index: int) -> List[dict]:
        docs = self.tokenize(documents)
        instances = []
        for dupe in range(self.opt.dupe_factor):
            rng = random.Random("%d/%d/%d" % (self.opt.seed, chunk_index, dupe))
            for d in range(len(docs)):
                instances.extend(self._from_document(docs, d, rng))
        random.Random("%d/%d/shuffle" % (self.opt.seed, chunk_index)).shuffle(instances)
        return instances

    def _from_document(self, docs, index, rng) -> List[dict]:
        """Google BERT's create_instances_from_document, on ids."""
        document, max_tokens = docs[index], self.opt.max_seq_length - 3
        target = max_tokens if rng.random() >= self.opt.short_seq_prob \
            else rng.randint(2, max_tokens)
        instances, chunk, length, i = [], [], 0, 0
        while i < len(document):
            chunk.append(document[i])
            length += len(document[i])
            if i == len(document) - 1 or length >= target:
                a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
                tokens_a = [t for seg in chunk[:a_end] for t in seg]
                if (len(chunk) == 1 or rng.random() < 0.5) and len(docs) > 1:
                    is_random, tokens_b = 1, []
                    other = rng.randrange(len(docs) - 1)
                    other = docs[other + (other >= index)]      # any document but this one
                    for seg in other[rng.randrange(len(other)):]:
                        tokens_b.extend(seg)
                        if len(tokens_b) >= target - len(tokens_a):
                            break
                    i -= len(chunk) - a_end                     # put unused segments back
                else:
                    is_random = 0
                    tokens_b = [t for seg in chunk[a_end:] for t in seg]
                _truncate_pair(tokens_a, tokens_b, max_tokens, rng)
                if tokens_a and tokens_b:
                    instances.append(self._instance(tokens_a, tokens_b, is_random, rng))
                chunk, length = [], 0
            i += 1
        return instances

    def _instance(self, tokens_a, tokens_b, is_random, rng) -> dict:
        tok = self.tok
        bos, eos = (tok.bos_id << 1) | 1, (tok.eos_id << 1) | 1
        coded = [bos] + tokens_a + [eos] + tokens_b + [eos]
        segments = [0] * (len(tokens_a) + 2) + [1] * (len(tokens_b) + 1)
        positions, labels, ids = self._mask(coded, len(tokens_a) + 1, rng)
        return {"input_ids": np.asarray(ids, dtype=np.int32),
                "segment_ids": np.asarray(segments, dtype=np.int32),
                "masked_lm_positions": np.asarray(positions, dtype=np.int32),
                "masked_lm_ids": np.asarray(labels, dtype=np.int32),
                "next_sentence_labels": is_random}

    def _mask(self, coded, sep, rng):
        """BERT's create_masked_lm_predictions on coded tokens (see `tokenize`): returns the
        masked positions, their original ids and the input ids after masking."""
        ids = [c >> 1 for c in coded]
        words = []
        for pos in range(1, len(ids) - 1):
            if pos == sep:
                continue
            if self.opt.whole_word_mask and words and not coded[pos] & 1 and pos != sep + 1:
                words[-1].append(pos)       # continues the word (never across `</s>`)
            else:
                words.append([pos])
        budget = min(self.opt.max_predictions_per_seq,
                     max(1, int(round(len(ids) * self.opt.masked_lm_prob))))
        out, picked = list(ids), []
        # visit words in uniformly random order (a Fisher-Yates shuffle drawn lazily: BERT
        # shuffles them all, but only the first few are ever looked at)
        for k in range(len(words)):
            if len(picked) >= budget:
                break
            j = rng.randrange(k, len(words))
            words[k], words[j] = words[j], words[k]
            word = words[k]
            if len(picked) + len(word) > budget:
                continue
            for pos in word:
                if rng.random() < 0.8:
                    out[pos] = self.tok.mask_id
                elif rng.random() >= 0.5:
                    out[pos] = rng.choice(self._random_ids)
                picked.append(pos)
        picked.sort()
        return picked, [ids[p] for p in picked], out


def _truncate_pair(a, b, max_tokens, rng):
    """Trim the longer of a, b (front or back, 50/50) until both fit in max_tokens."""
    while len(a) + len(b) > max_tokens:
        longer = a if len(a) > len(b) else b
        if rng.random() < 0.5:
            del longer[0]
        else:
            longer.pop()


# ---------------------------------------------------------------------------------- the driver

_worker_maker: Optional[InstanceMaker] = None


def _init_worker(tokenizer, options):
    global _worker_maker
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _worker_maker = InstanceMaker(tokenizer, options)


def _work(args):
    return _worker_maker(*args)


def create_pretraining_data(inputs: Sequence[str], output_dir: str, tokenizer: BPETokenizer,
                            options: PretrainingOptions = PretrainingOptions(),
                            num_outputs: int = 1, num_workers: int = 1,
                            progress: bool = True, layout: str = "flat",
                            overwrite: bool = False) -> Dict[str, object]:
    """Write `part-%03d.npz` shards for the text `inputs`; returns counts for a summary.

    The output depends on the inputs, tokenizer, options and num_outputs, not on num_workers.
    A run that fails (or yields no instance) leaves no shard behind.
    """
    files = expand_inputs(inputs)
    total_bytes = sum(os.path.getsize(f) for f in files)
    prepare_output_dir(output_dir, overwrite)
    writer = ShardWriter(output_dir, num_outputs, options.seed, layout)
    stats = {"instances": 0, "tokens": 0, "masked": 0, "random_next": 0}
    from tqdm import tqdm
    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="create-pretraining-data",
               disable=not progress)

    def consume(instances, size):
        for inst in instances:
            writer.add(inst)
            stats["instances"] += 1
            stats["tokens"] += len(inst["input_ids"])
            stats["masked"] += len(inst["masked_lm_ids"])
            stats["random_next"] += inst["next_sentence_labels"]
        bar.update(size)

    chunks = ((docs, i, size) for i, (docs, size) in
              enumerate(document_chunks(files, options.docs_per_chunk)))
    try:
        if num_workers <= 1:
            maker = InstanceMaker(tokenizer, options)
            for docs, i, size in chunks:
                consume(maker(docs, i), size)
        else:
            import multiprocessing
            with multiprocessing.Pool(num_workers, _init_worker, (tokenizer, options)) as pool:
                pending: deque = deque()     # at most 2 chunks per worker in flight
                for docs, i, size in chunks:
                    pending.append((pool.apply_async(_work, ((docs, i),)), size))
                    if len(pending) >= 2 * num_workers:
                        result, done = pending.popleft()
                        consume(result.get(), done)
                while pending:
                    result, done = pending.popleft()
                    consume(result.get(), done)
        if not stats["instances"]:
            raise ValueError("%s: no instance could be made (an instance needs a document of "
                             "two or more sentences, or two documents)" % ", ".join(files))
    except BaseException:
        writer.discard()
        raise
    finally:
        bar.close()
    stats["files"] = writer.close()
    return stats
