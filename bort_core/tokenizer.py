"""GPT-2 byte-level BPE with RoBERTa's (fairseq) vocabulary order, loaded from files by path.

The 2020 release tokenized with GluonNLP's `GPT2BPETokenizer` (GPT-2 pre-tokenizer regex, byte ->
unicode table, greedy lowest-rank merges) and looked the resulting BPE strings up in the RoBERTa
vocabulary `openwebtext_ccnews_stories_books_cased`: fairseq's dictionary order, i.e.

    0 <s>   1 <pad>   2 </s>   3 <unk>   4.. the lines of dict.txt   last <mask>

where each dict.txt line names a GPT-2 id (a key of encoder.json) and its corpus count. Here the
same algorithm runs on HF `tokenizers` (Rust); `tests/gluon/test_tokenizer_gluonnlp.py` checks
that the ids are identical to GluonNLP's on the same files.

Accepted file sets (`load_tokenizer`), any of:
- GPT-2 `encoder.json` + `vocab.bpe` (or HF `vocab.json` + `merges.txt`) + fairseq `dict.txt`;
- a `vocab.json` already in fairseq order (HF's roberta-base: `<s>`=0 ... `<mask>`) + merges;
- a GluonNLP vocab JSON (`idx_to_token`, e.g. `*.vocab`) + merges;
- nothing: the demo vocabulary shipped in `bort_core/data/demo/`.
"""
from __future__ import annotations

import json
import os
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>")   # fairseq ids 0, 1, 2, 3
MASK_TOKEN = "<mask>"                                  # appended last by RoBERTa
DEMO_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "demo")

_ENCODER_NAMES = ("encoder.json", "vocab.json")
_MERGES_NAMES = ("vocab.bpe", "merges.txt")
_DICT_NAMES = ("dict.txt",)


def bytes_to_unicode() -> Dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable unicode characters."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    table, shift = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shift)
            shift += 1
    return table


WORD_START = bytes_to_unicode()[ord(" ")]   # 'Ġ': a BPE token beginning with it starts a word


class BPETokenizer:
    """Byte-level BPE mapping text to ids of a fairseq-ordered vocabulary.

    `idx_to_token[i]` is the BPE string (or special symbol) with id i; `merges` are the BPE merge
    rules in rank order. Raises ValueError when the two do not fit together.
    """

    def __init__(self, idx_to_token: Sequence[str], merges: Sequence[Tuple[str, str]]):
        self.idx_to_token = list(idx_to_token)
        self.merges = [tuple(m) for m in merges]
        _check_specials(self.idx_to_token)
        # later ids win on duplicate strings, as in GluonNLP's conversion of the fairseq dict
        self.token_to_idx = {tok: i for i, tok in enumerate(self.idx_to_token)}
        for rank, (left, right) in enumerate(self.merges):
            for piece in (left, right, left + right):
                if piece not in self.token_to_idx:
                    raise ValueError("BPE/vocabulary mismatch: merge %d (%r %r) needs %r, which "
                                     "is not in the vocabulary; are the merges and the vocabulary "
                                     "from the same model?" % (rank, left, right, piece))
        self._byte_decoder = {c: b for b, c in bytes_to_unicode().items()}
        self._backend = _hf_tokenizer(self.token_to_idx, self.merges)

    # ids of the special symbols (fixed by fairseq's layout)
    bos_id, pad_id, eos_id, unk_id = 0, 1, 2, 3

    @property
    def mask_id(self) -> int:
        return len(self.idx_to_token) - 1

    @property
    def special_ids(self) -> Tuple[int, ...]:
        return (self.bos_id, self.pad_id, self.eos_id, self.unk_id, self.mask_id)

    def __len__(self) -> int:
        return len(self.idx_to_token)

    def tokenize(self, text: str) -> List[str]:
        """BPE strings of `text` (no special tokens added)."""
        return self._backend.encode(text, add_special_tokens=False).tokens

    def encode(self, text: str) -> List[int]:
        """Ids of `text` (no `<s>`/`</s>` added); unknown byte symbols map to `<unk>`."""
        return self._backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> List[List[int]]:
        return [e.ids for e in self._backend.encode_batch(list(texts), add_special_tokens=False)]

    def convert_tokens_to_ids(self, tokens: Iterable[str]) -> List[int]:
        return [self.token_to_idx.get(t, self.unk_id) for t in tokens]

    def convert_ids_to_tokens(self, ids: Iterable[int]) -> List[str]:
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self.idx_to_token):
                raise ValueError("id %d is outside the vocabulary [0, %d)" % (i, len(self)))
            out.append(self.idx_to_token[i])
        return out

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Text of `ids`; special symbols are dropped (or kept verbatim with skip_special=False)."""
        special = set(self.special_ids)
        pieces = []
        ids = [int(i) for i in ids]
        for i, tok in zip(ids, self.convert_ids_to_tokens(ids)):
            if i in special:
                if not skip_special:
                    pieces.append(tok.encode("utf-8"))
                continue
            pieces.append(bytes(self._byte_decoder.get(c, ord("?")) for c in tok))
        return b"".join(pieces).decode("utf-8", errors="replace")

    def is_word_start(self, token_id: int) -> bool:
        """True when the BPE token begins a space-separated word (GPT-2 marks these with 'Ġ')."""
        return self.idx_to_token[token_id].startswith(WORD_START)


def _check_specials(idx_to_token: Sequence[str]) -> None:
    if len(idx_to_token) < len(SPECIAL_TOKENS) + 1:
        raise ValueError("vocabulary has only %d entries" % len(idx_to_token))
    head = tuple(idx_to_token[:len(SPECIAL_TOKENS)])
    if head != SPECIAL_TOKENS or idx_to_token[-1] != MASK_TOKEN:
        raise ValueError("vocabulary is not in RoBERTa/fairseq order: expected %s at ids 0-3 and "
                         "%r last, got %s ... %r" % (list(SPECIAL_TOKENS), MASK_TOKEN, list(head),
                                                     idx_to_token[-1]))


def _hf_tokenizer(token_to_idx: Dict[str, int], merges: List[Tuple[str, str]]):
    try:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    except ImportError as err:
        raise ImportError("bort's tokenizer needs HF tokenizers: pip install tokenizers") from err
    model = models.BPE(vocab=dict(token_to_idx), merges=list(merges), unk_token="<unk>")
    tok = Tokenizer(model)
    # GPT-2 regex, bytes -> unicode table, no prefix space: what GPT2BPETokenizer does
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


# ---------------------------------------------------------------------------------- file readers

def read_merges(path: str) -> List[Tuple[str, str]]:
    """Merge rules of a GPT-2 `vocab.bpe` / HF `merges.txt` ('#version' header optional)."""
    merges = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line or (lineno == 1 and line.startswith("#version")):
                continue
            parts = line.split(" ")
            if len(parts) != 2 or not all(parts):
                raise ValueError("%s:%d: expected two space-separated symbols, got %r"
                                 % (path, lineno, line))
            merges.append((parts[0], parts[1]))
    return merges


def read_fairseq_dict(path: str) -> List[str]:
    """Symbols of a fairseq `dict.txt` ('<symbol> <count>' per line), in file order."""
    symbols = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.rstrip("\n").split(" ")
            if parts[-1] == "#fairseq:overwrite":
                parts = parts[:-1]
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise ValueError("%s:%d: expected '<symbol> <count>', got %r"
                                 % (path, lineno, line.rstrip("\n")))
            symbols.append(parts[0])
    return symbols


def fairseq_order(encoder: Dict[str, int], dict_symbols: Sequence[str],
                  dict_path: str = "dict.txt") -> List[str]:
    """idx_to_token in fairseq order: specials, dict.txt symbols mapped through the GPT-2 encoder,
    `<mask>`. Non-numeric dict symbols (e.g. fairseq's `madeupword0000`) are kept verbatim."""
    gpt2_id_to_token = {i: t for t, i in encoder.items()}
    tokens = list(SPECIAL_TOKENS)
    for lineno, sym in enumerate(dict_symbols, 1):
        if sym.isdigit():
            if int(sym) not in gpt2_id_to_token:
                raise ValueError("%s:%d: GPT-2 id %s is not in the encoder (%d entries); is "
                                 "dict.txt from the same model as the BPE vocabulary?"
                                 % (dict_path, lineno, sym, len(encoder)))
            tokens.append(gpt2_id_to_token[int(sym)])
        else:
            tokens.append(sym)
    tokens.append(MASK_TOKEN)
    return tokens


def _find(directory: str, names: Sequence[str]) -> Optional[str]:
    for name in names:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    return None


def load_tokenizer(vocab: Optional[str] = None, merges: Optional[str] = None,
                   dictionary: Optional[str] = None) -> BPETokenizer:
    """Build a tokenizer from files; with no arguments, the shipped demo vocabulary.

    vocab: a directory holding the files, or the path of encoder.json / vocab.json / a GluonNLP
    vocab JSON. merges: vocab.bpe / merges.txt (looked up next to `vocab` when omitted).
    dictionary: fairseq dict.txt (looked up next to `vocab`; required for GPT-2-ordered encoders).
    """
    vocab = DEMO_DIR if vocab is None else vocab
    if not os.path.exists(vocab):
        raise FileNotFoundError("vocabulary path %s does not exist" % vocab)
    if os.path.isdir(vocab):
        directory = vocab
        vocab = _find(directory, _ENCODER_NAMES) or _find_gluon_vocab(directory)
        if vocab is None:
            raise FileNotFoundError("no %s or GluonNLP *.vocab file in %s"
                                    % (" / ".join(_ENCODER_NAMES), directory))
    directory = os.path.dirname(os.path.abspath(vocab))
    merges = merges or _find(directory, _MERGES_NAMES)
    if merges is None:
        raise FileNotFoundError("no BPE merges (%s) next to %s; pass the merges file explicitly"
                                % (" / ".join(_MERGES_NAMES), vocab))
    with open(vocab, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except ValueError as err:
            raise ValueError("%s is not a JSON vocabulary: %s" % (vocab, err)) from err
    if isinstance(data, dict) and "idx_to_token" in data:         # GluonNLP Vocab.to_json()
        idx_to_token = list(data["idx_to_token"])
    elif isinstance(data, dict) and all(t in data for t in SPECIAL_TOKENS + (MASK_TOKEN,)) \
            and dictionary is None:                                # already fairseq-ordered
        idx_to_token = [t for t, _ in sorted(data.items(), key=lambda kv: kv[1])]
        if [data[t] for t in idx_to_token] != list(range(len(idx_to_token))):
            raise ValueError("%s: ids are not the contiguous range 0..%d"
                             % (vocab, len(idx_to_token) - 1))
    elif isinstance(data, dict):                                   # GPT-2 encoder + fairseq dict
        dictionary = dictionary or _find(directory, _DICT_NAMES)
        if dictionary is None:
            raise FileNotFoundError("%s is in GPT-2 order; RoBERTa's order needs the fairseq "
                                    "dict.txt (not found next to it; pass it explicitly)" % vocab)
        idx_to_token = fairseq_order(data, read_fairseq_dict(dictionary), dictionary)
    else:
        raise ValueError("%s: expected a JSON object mapping tokens to ids" % vocab)
    return BPETokenizer(idx_to_token, read_merges(merges))


def _find_gluon_vocab(directory: str) -> Optional[str]:
    found = sorted(n for n in os.listdir(directory) if n.endswith(".vocab"))
    return os.path.join(directory, found[0]) if found else None
