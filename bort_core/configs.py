"""Model configurations shared by bort_gluon and bort_torch.

A `BortConfig` describes one member of the BERT family as the 2020 Bort release built it
(GluonNLP's BERTEncoder + BERTModel): post-LN transformer cells, learned absolute positions
starting at 0, GELU (exact erf), an MLM decoder tied to the word embedding.

Named configs live in one registry. Any <D, A, I, H> point is reachable by name
(`bort_D_A_I_H`, the release's naming: depth, heads, intermediate, hidden) or by
`BortConfig.from_dahi`; a config also round-trips through JSON.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Dict, Optional

from bort_core.io import write_text

ROBERTA_VOCAB_SIZE = 50265   # fairseq/GluonNLP `openwebtext_ccnews_stories_books_cased`
BERT_VOCAB_SIZE = 30522      # Google BERT uncased WordPiece
DEMO_VOCAB_SIZE = 4096       # the byte-level BPE vocabulary trained on the embedded corpus


@dataclasses.dataclass(frozen=True)
class BortConfig:
    """Architecture hyper-parameters; names follow GluonNLP's `bert_hparams` tables."""

    num_layers: int                 # D
    num_heads: int                  # A
    units: int                      # H: hidden width of every cell
    hidden_size: int                # I: the FFN width, not the model width (GluonNLP's name; H is `units`)
    name: str = "custom"
    vocab_size: int = ROBERTA_VOCAB_SIZE
    max_length: int = 512
    embed_size: Optional[int] = None  # defaults to `units`
    token_type_vocab_size: int = 0    # 0: no token-type embedding (Bort, RoBERTa)
    dropout: float = 0.1
    embed_dropout: float = 0.1
    head_dropout: Optional[float] = None  # a classifier head's dropout; None: `dropout`
    layer_norm_eps: float = 1e-5
    decoder_layer_norm_eps: float = 1e-12  # GluonNLP 0.8.3's BERTLayerNorm default (the 2020 value)
    activation: str = "gelu"

    def __post_init__(self):
        for field in ("num_layers", "num_heads", "units", "hidden_size", "vocab_size", "max_length"):
            value = getattr(self, field)
            if not isinstance(value, int) or value <= 0:
                raise ValueError("config %r: %s must be a positive integer, got %r"
                                 % (self.name, field, value))
        if self.units % self.num_heads:
            raise ValueError("config %r: units (%d) must be divisible by num_heads (%d)"
                             % (self.name, self.units, self.num_heads))
        if self.embed_size not in (None, self.units):
            raise ValueError("config %r: embed_size must equal units (%d): the encoder adds "
                             "positions of width units to the embedding" % (self.name, self.units))
        if self.activation != "gelu":
            raise ValueError("config %r: only activation 'gelu' is supported, got %r"
                             % (self.name, self.activation))
        for field in ("dropout", "embed_dropout", "classifier_dropout"):
            if not 0.0 <= getattr(self, field) < 1.0:
                raise ValueError("config %r: %s must be in [0, 1)" % (self.name, field))

    @property
    def classifier_dropout(self) -> float:
        """The dropout of a classifier head built on this config."""
        return self.dropout if self.head_dropout is None else self.head_dropout

    @property
    def head_dim(self) -> int:
        return self.units // self.num_heads

    @property
    def dahi(self):
        """The OSE search coordinates <D, A, H, I>."""
        return (self.num_layers, self.num_heads, self.units, self.hidden_size)

    @classmethod
    def from_dahi(cls, num_layers, num_heads, units, hidden_size, **overrides) -> "BortConfig":
        """A Bort-style config for any <D, A, H, I>, named as the release names them."""
        overrides.setdefault("name", "bort_%d_%d_%d_%d" % (num_layers, num_heads, hidden_size, units))
        return cls(num_layers=num_layers, num_heads=num_heads, units=units,
                   hidden_size=hidden_size, **overrides)

    def replace(self, **changes) -> "BortConfig":
        return dataclasses.replace(self, **changes)

    def without_dropout(self) -> "BortConfig":
        return self.replace(dropout=0.0, embed_dropout=0.0, head_dropout=None)

    def to_dict(self) -> Dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Dict, source: str = "<dict>") -> "BortConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError("%s: unknown config field(s) %s; known fields: %s"
                             % (source, ", ".join(unknown), ", ".join(sorted(known))))
        missing = sorted(f for f in ("num_layers", "num_heads", "units", "hidden_size")
                         if f not in data)
        if missing:
            raise ValueError("%s: missing config field(s) %s" % (source, ", ".join(missing)))
        return cls(**data)

    def to_json(self, path: str) -> None:
        write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_json(cls, path: str) -> "BortConfig":
        try:
            with open(path) as f:
                data = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError("%s: not valid JSON (%s)" % (path, err)) from None
        if not isinstance(data, dict):
            raise ValueError("%s: a config file holds one JSON object" % path)
        return cls.from_dict(data, source=path)


def _bert(name, layers, units, heads, **kw):
    kw.setdefault("vocab_size", BERT_VOCAB_SIZE)
    kw.setdefault("token_type_vocab_size", 2)
    kw.setdefault("layer_norm_eps", 1e-12)
    return BortConfig(num_layers=layers, num_heads=heads, units=units, hidden_size=4 * units,
                      name=name, **kw)


def _roberta(name, layers, units, heads, **kw):
    return BortConfig(num_layers=layers, num_heads=heads, units=units, hidden_size=4 * units,
                      name=name, **kw)


_REGISTRY = {c.name: c for c in (
    # the two configurations the 2020 release shipped
    BortConfig.from_dahi(4, 8, 1024, 768),
    BortConfig.from_dahi(2, 16, 1024, 512),
    # teachers and speed baselines (GluonNLP's hyper-parameters)
    _bert("bert_12_768_12", 12, 768, 12),
    _bert("bert_24_1024_16", 24, 1024, 16),
    _roberta("roberta_12_768_12", 12, 768, 12),
    _roberta("roberta_24_1024_16", 24, 1024, 16),
    # small presets for tests, demos and the embedded default run
    BortConfig.from_dahi(2, 4, 128, 96, name="bort_tiny", vocab_size=DEMO_VOCAB_SIZE,
                         max_length=128),
    BortConfig.from_dahi(4, 8, 256, 192, name="bort_mini", vocab_size=DEMO_VOCAB_SIZE,
                         max_length=128),
    _roberta("roberta_tiny", 4, 256, 4, vocab_size=DEMO_VOCAB_SIZE, max_length=128),
    # the demo preset's teacher, shipped trained (bort_core/data/demo/teacher.params)
    _roberta("roberta_demo", 4, 128, 4, vocab_size=DEMO_VOCAB_SIZE, max_length=128),
)}

_DAHI_NAME = re.compile(r"^bort_(\d+)_(\d+)_(\d+)_(\d+)$")


def list_configs():
    return sorted(_REGISTRY)


def get_config(name_or_path: str, vocab_size: Optional[int] = None) -> BortConfig:
    """A registry name, a `bort_D_A_I_H` name, or a path to a config JSON file.

    `vocab_size`, when given (e.g. read from a checkpoint's word embedding), overrides the
    config's own.
    """
    if name_or_path in _REGISTRY:
        config = _REGISTRY[name_or_path]
    elif name_or_path.endswith(".json") or os.path.sep in name_or_path:
        if not os.path.exists(name_or_path):
            raise FileNotFoundError("config file %s does not exist" % name_or_path)
        config = BortConfig.from_json(name_or_path)
    else:
        match = _DAHI_NAME.match(name_or_path)
        if not match:
            raise ValueError("unknown config %r; known configs: %s, any bort_D_A_I_H, "
                             "or a path to a .json config" % (name_or_path, ", ".join(list_configs())))
        d, a, i, h = (int(g) for g in match.groups())
        config = BortConfig.from_dahi(d, a, h, i)
    if vocab_size is not None and vocab_size != config.vocab_size:
        config = config.replace(vocab_size=int(vocab_size))
    return config


def embedded_config(data, source: str) -> BortConfig:
    """The BortConfig a checkpoint carries (a JSON text or an already parsed object); a
    ValueError naming `source` (file and field) when it is not a valid config."""
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except ValueError as err:
            raise ValueError("%s is not valid JSON (%s)" % (source, err)) from None
    if not isinstance(data, dict):
        raise ValueError("%s must be a JSON object of config fields, found %s"
                         % (source, type(data).__name__))
    try:
        return BortConfig.from_dict(data, source=source)
    except (TypeError, ValueError) as err:
        text = str(err)
        raise ValueError(text if text.startswith(source) else "%s: %s" % (source, text)) from None
