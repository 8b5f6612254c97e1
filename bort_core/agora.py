"""Agora (arXiv 2010.07990), written once over the Backend protocol.

Inputs: the small (student) model's pretrained checkpoint, a reference model already fine-tuned
on the task (its own config, the same vocabulary), the task's train and dev sets, a grid Theta of
hyper-parameter sets and a data-generating function. One round:

1. fine-tune one student per remaining set in Theta (the plain loop of `bort_core.finetune`,
   each from the pretrained checkpoint with a fresh head seeded by the set's seed) and record its
   best dev score;
2. run the round's best model on dev; for every dev mistake generate `points_per_mistake` new
   token sequences near it, label them with the reference model and append them to train;
3. `replays` times, repeat 1-2 with the same sets (the release notes say re-running iterations
   was needed to converge);
4. prune (sets sorted by their last dev score, ties in grid order): `prune="half"` (default,
   our choice) keeps the best `ceil(keep * n)`: log2|Theta| + 1 rounds; `"one"` drops the
   weakest set: |Theta| rounds, what the paper's O(|Theta|^2 ...) runtime bound implies.
The loop ends after the round run with a single set; the best model over every run is returned.
Beyond binary classification (the paper's setting):
- multi-class: a mistake is argmax != gold; the reference labels points with its argmax;
  its chance level is the majority-class rate of dev;
- regression: a mistake is |prediction - gold| > `regression_tolerance` (default half the
  standard deviation of the dev scores); the reference labels points with its predicted score;
  the reference is "below chance" when its Pearson correlation on dev is <= 0.

Generators (`--generator`, comma-separated, used in turn): `mlm` masks ~`mask_prob` of a
sequence's text tokens and samples replacements from the pretrained MLM head; `dropout` deletes
each text token with probability `drop_prob`; `swap` swaps text tokens with their right
neighbour with probability `swap_prob`. Each acts on at least one position; special tokens
stay. Mistakes are taken on the task's first dev split (MNLI: matched), as is the reference's check.

`teachable_only` (off by default, as in the paper) generates points only near the mistakes that
the reference gets right on dev (near the others its labels repeat its own error).
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import shutil
import tempfile
import time
import warnings
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from bort_core import checkpoint as ckpt
from bort_core import finetune as ft
from bort_core import io as bio
from bort_core.configs import get_config
from bort_core.data.batches import pad_rows
from bort_core.data.shards import object_array
from bort_core.data.tasks import get_task
from bort_core.metrics import NonFiniteError, check_finite
from bort_core.model_params import classifier_layout, infer_vocab_size, is_classifier, split_classifier
from bort_core.tokenizer import load_tokenizer

# the 480-set starting grid the release's README suggests for Agora on Bort
RELEASE_GRID = {"seed": [0, 1, 2, 3, 4], "lr": [1e-4, 1e-5, 9e-6],
                "weight_decay": [0.0, 10.0, 100.0, 350.0],
                "warmup_ratio": [0.35, 0.40, 0.45, 0.50], "batch_size": [8, 16]}
GRID_KEYS = ("seed", "lr", "weight_decay", "warmup_ratio", "batch_size", "epochs")
GENERATORS = ("mlm", "dropout", "swap")
PRUNE_RULES = ("half", "one")


# ------------------------------------------------------------------------------------ grid

def expand_grid(spec) -> List[Dict]:
    """Hyper-parameter sets: a dict of lists (the Cartesian product, keys in GRID_KEYS order)
    or a list of dicts (used as given). Keys must be among GRID_KEYS."""
    if isinstance(spec, dict):
        keys = [k for k in GRID_KEYS if k in spec]
        _check_keys(spec)
        if not keys:
            raise ValueError("grid: the grid is empty; give at least one of %s"
                             % ", ".join(GRID_KEYS))
        for k in keys:
            if not isinstance(spec[k], list) or not spec[k]:
                raise ValueError("grid: %r must be a non-empty list" % k)
        sets = [dict(zip(keys, values)) for values in itertools.product(*(spec[k] for k in keys))]
    elif isinstance(spec, list):
        for s in spec:
            if not isinstance(s, dict):
                raise ValueError("grid: a list grid holds objects, found %r" % (s,))
            _check_keys(s)
        sets = [dict(s) for s in spec]
    else:
        raise ValueError("grid: expected an object of lists or a list of objects")
    if not sets:
        raise ValueError("grid: the grid is empty; give at least one hyper-parameter set")
    return sets


def _check_keys(d):
    unknown = sorted(set(d) - set(GRID_KEYS))
    if unknown:
        raise ValueError("grid: unknown key(s) %s; allowed: %s"
                         % (", ".join(unknown), ", ".join(GRID_KEYS)))


def load_grid(arg: str) -> List[Dict]:
    """`release` (the suggested 480-set grid) or a JSON file (see `expand_grid`)."""
    if arg == "release":
        return expand_grid(RELEASE_GRID)
    if not os.path.exists(arg):
        raise FileNotFoundError("--grid %s: no such file (or use 'release')" % arg)
    with open(arg, encoding="utf-8") as f:
        try:
            spec = json.load(f)
        except ValueError as err:
            raise ValueError("--grid %s: not JSON: %s" % (arg, err)) from None
    try:
        return expand_grid(spec)
    except ValueError as err:
        raise ValueError("--grid %s: %s" % (arg, err)) from None


def prune(scores: Sequence[float], keep: float, rule: str = "half") -> List[int]:
    """Indices of the sets that survive, ties in grid order: "half" keeps the best
    ceil(keep * n), "one" all but the weakest; with one set left, none (Agora stops)."""
    n = len(scores)
    if n <= 1:
        return []
    order = sorted(range(n), key=lambda i: (-scores[i], i))
    return sorted(order[:n - 1 if rule == "one" else max(1, min(n - 1, math.ceil(keep * n)))])


# ------------------------------------------------------------------------------ generators

def _text_positions(ids: np.ndarray, special: Sequence[int]) -> np.ndarray:
    return np.flatnonzero(~np.isin(ids, list(special)))


def token_dropout(ids: np.ndarray, rng, special, prob: float = 0.1) -> np.ndarray:
    """Delete each text token with probability `prob` (at least one)."""
    pos = _text_positions(ids, special)
    if len(pos) < 2:
        return ids.copy()
    drop = pos[rng.random_sample(len(pos)) < prob]
    if not len(drop):
        drop = pos[[rng.randint(len(pos))]]
    return np.delete(ids, drop).astype(np.int32)


def token_swap(ids: np.ndarray, rng, special, prob: float = 0.1) -> np.ndarray:
    """Swap text tokens with the next text token with probability `prob` (at least once)."""
    pos = _text_positions(ids, special)
    out = ids.copy()
    if len(pos) < 2:
        return out
    pairs = [(a, b) for a, b in zip(pos[:-1], pos[1:]) if b == a + 1]
    if not pairs:
        return out
    chosen = [p for p in pairs if rng.random_sample() < prob] or [pairs[rng.randint(len(pairs))]]
    for a, b in chosen:
        out[a], out[b] = out[b], out[a]
    return out


class MaskedLMResample:
    """Mask ~`prob` of the text tokens (at least one) and sample each from the pretrained MLM
    head's softmax (special ids excluded). `mlm_logits(batches)` returns (B, M, V) arrays for
    batches with `input_ids`, `valid_length`, `masked_positions`; it is called with at most
    `batch_size` sequences at a time (a round can hold thousands of points)."""

    def __init__(self, mlm_logits: Callable, mask_id: int, special: Sequence[int],
                 prob: float = 0.15, pad_id: int = 1, batch_size: int = 32):
        self.mlm_logits, self.mask_id, self.special = mlm_logits, mask_id, list(special)
        self.prob, self.pad_id, self.batch_size = prob, pad_id, max(1, int(batch_size))

    def __call__(self, seqs: Sequence[np.ndarray], rng) -> List[np.ndarray]:
        masked, positions = [], []
        for ids in seqs:
            pos = _text_positions(ids, self.special)
            n = max(1, int(round(len(pos) * self.prob))) if len(pos) else 0
            chosen = np.sort(rng.choice(pos, n, replace=False)) if n else np.zeros(0, np.int64)
            m = ids.copy()
            m[chosen] = self.mask_id
            masked.append(m)
            positions.append(chosen)
        out = [s.copy() for s in seqs]
        todo = [i for i, p in enumerate(positions) if len(p)]
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start:start + self.batch_size]
            width = max(len(positions[i]) for i in chunk)
            batch = {"input_ids": pad_rows([masked[i] for i in chunk], self.pad_id),
                     "valid_length": np.array([len(masked[i]) for i in chunk], np.int32),
                     "masked_positions": np.zeros((len(chunk), width), np.int32)}
            for r, i in enumerate(chunk):
                batch["masked_positions"][r, :len(positions[i])] = positions[i]
            logits = np.asarray(self.mlm_logits([batch])[0], dtype=np.float64)
            logits[..., self.special] = -np.inf
            for r, i in enumerate(chunk):
                for k, p in enumerate(positions[i]):
                    z = logits[r, k] - logits[r, k].max()
                    prob = np.exp(z) / np.exp(z).sum()
                    out[i][p] = rng.choice(len(prob), p=prob)
        return out


def make_generator(names: str, special: Sequence[int], mlm: Optional[MaskedLMResample] = None,
                   drop_prob: float = 0.1, swap_prob: float = 0.1):
    """`generate(seqs, rng) -> seqs`: each sequence transformed by the named generators in turn
    (comma-separated; the k-th sequence uses generator k mod n)."""
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    bad = [n for n in chosen if n not in GENERATORS]
    if bad or not chosen:
        raise ValueError("--generator: unknown %s; choose from %s (comma-separated)"
                         % (", ".join(bad) or "(none)", ", ".join(GENERATORS)))
    if "mlm" in chosen and mlm is None:
        raise ValueError("--generator mlm needs the pretrained MLM head (a --checkpoint with "
                         "decoder.* parameters)")

    def generate(seqs, rng):
        out = []
        for k, ids in enumerate(seqs):
            name = chosen[k % len(chosen)]
            if name == "dropout":
                out.append(token_dropout(ids, rng, special, drop_prob))
            elif name == "swap":
                out.append(token_swap(ids, rng, special, swap_prob))
            else:
                out.append(None)
        todo = [k for k, o in enumerate(out) if o is None]
        if todo:
            for k, new in zip(todo, mlm([seqs[k] for k in todo], rng)):
                out[k] = new
        return out
    return generate


# ------------------------------------------------------------------------------------ loop

@dataclasses.dataclass
class AgoraOptions:
    """Agora's own settings; the fine-tuning ones are a FinetuneOptions (`base`) whose fields a
    grid set overrides."""
    reference_checkpoint: str = ""
    reference_config: Optional[str] = None     # default: the student's --config
    grid: str = "release"
    generator: str = "mlm,dropout,swap"
    points_per_mistake: int = 4
    mask_prob: float = 0.15
    drop_prob: float = 0.1
    swap_prob: float = 0.1
    keep: float = 0.5
    prune: str = "half"                        # PRUNE_RULES
    replays: int = 0
    max_rounds: Optional[int] = None
    regression_tolerance: Optional[float] = None
    teachable_only: bool = False

    def __post_init__(self):
        check_finite(self)
        if not self.reference_checkpoint:
            raise ValueError("--reference-checkpoint is required (a fine-tuned classifier)")
        if self.points_per_mistake < 1:
            raise ValueError("--points-per-mistake must be at least 1")
        if self.prune not in PRUNE_RULES:
            raise ValueError("--prune must be half or one, got %r" % self.prune)
        if not 0.0 < self.keep < 1.0:
            raise ValueError("--keep must be in (0, 1), got %r" % self.keep)
        if self.replays < 0:
            raise ValueError("--replays must be >= 0, got %r" % self.replays)
        for name in ("mask_prob", "drop_prob", "swap_prob"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError("--%s must be in (0, 1]" % name.replace("_", "-"))


def mistakes(task, examples, pred, tolerance: Optional[float] = None) -> np.ndarray:
    """Indices of the dev examples the model gets wrong (see the module docstring)."""
    if task.class_labels is None:
        gold = np.array([float(e.label) for e in examples])
        tol = 0.5 * float(gold.std()) if tolerance is None else tolerance
        return np.flatnonzero(np.abs(np.asarray(pred, np.float64) - gold) > tol)
    index = {label: i for i, label in enumerate(task.class_labels)}
    gold = np.array([index[e.label] for e in examples])
    return np.flatnonzero(np.asarray(pred) != gold)


def check_reference(task, examples, pred) -> Dict:
    """The reference's dev quality against chance; warns when Agora's assumption fails."""
    if task.class_labels is None:
        gold = np.array([float(e.label) for e in examples])
        quality = float(np.corrcoef(np.asarray(pred, np.float64), gold)[0, 1]) \
            if np.std(pred) > 0 else 0.0
        info = {"pearson": quality, "chance": 0.0}
    else:
        index = {label: i for i, label in enumerate(task.class_labels)}
        gold = np.array([index[e.label] for e in examples])
        quality = float((np.asarray(pred) == gold).mean())
        info = {"accuracy": quality, "chance": float(np.bincount(gold).max() / len(gold))}
    if quality <= info["chance"]:
        metric, good = next(iter(info)), ("accuracy above ~2/3" if "accuracy" in info
                                          else "a clearly positive correlation")
        warnings.warn("the reference model's dev %s is %.4f, not above chance (%.4f): Agora "
                      "assumes a good reference (%s); its labels will mislead"
                      % (metric, quality, info["chance"], good), stacklevel=2)
    return info


def append_points(features: Dict, seqs: Sequence[np.ndarray], labels: np.ndarray) -> Dict:
    """Train features with generated rows appended (segment ids dropped: unused)."""
    ids = list(features["input_ids"]) + [np.asarray(s, np.int32) for s in seqs]
    label = np.concatenate([np.asarray(features["label"]),
                            np.asarray(labels).astype(np.asarray(features["label"]).dtype)])
    return {"input_ids": object_array(ids),
            "valid_length": np.array([len(a) for a in ids], np.int32), "label": label}


def _theta_options(base: ft.FinetuneOptions, theta: Dict) -> ft.FinetuneOptions:
    return dataclasses.replace(base, **{k: theta[k] for k in theta})


def run_agora(backend, base: ft.FinetuneOptions, options: AgoraOptions, mlm_logits=None,
              tokenizer=None, progress: bool = True) -> Dict:
    """The whole Agora job; writes `agora_log.json`, `agora_log.md`, `result.json`, the best
    model and the test files into `base.output_dir`. Returns the result dict."""

    task = get_task(base.task)
    if task.train_task:
        raise ValueError("Agora fine-tunes on a task's own train set; %s is a diagnostic "
                         "(run it on %s)" % (task.name, task.train_task))
    grid = load_grid(options.grid)
    for i, theta in enumerate(grid):      # every set's values checked before any run
        try:
            _theta_options(base, theta)
        except (TypeError, ValueError) as err:
            raise ValueError("--grid %s: set %d %s: %s"
                             % (options.grid, i, json.dumps(theta), err)) from None
    config = ft.resolve_config(base.config, base.checkpoint, base.dropout, base.dropout_scope)
    if not os.path.exists(options.reference_checkpoint):
        raise FileNotFoundError("--reference-checkpoint %s does not exist"
                                % options.reference_checkpoint)
    ref_params = ckpt.load_params(options.reference_checkpoint)
    if not is_classifier(ref_params):
        raise ValueError("--reference-checkpoint %s is not a fine-tuned classifier (no "
                         "classifier.* parameters)" % options.reference_checkpoint)
    ref_vocab = infer_vocab_size(ref_params)
    if ref_vocab != config.vocab_size:
        raise ValueError("--reference-checkpoint %s has a vocabulary of %d, the student %d; "
                         "Agora needs the same tokenizer" % (options.reference_checkpoint,
                                                             ref_vocab, config.vocab_size))
    ref_head = split_classifier(ref_params)[1]
    ref_outputs, ref_dropout = classifier_layout(ref_head, options.reference_checkpoint)
    if ref_outputs != ft.num_outputs(task):
        raise ValueError("--reference-checkpoint %s has %d output(s), task %s needs %d"
                         % (options.reference_checkpoint, ref_outputs, task.name,
                            ft.num_outputs(task)))
    ref_config = get_config(options.reference_config or base.config, vocab_size=ref_vocab)
    ref_config = ref_config.replace(dropout=ref_dropout, embed_dropout=ref_dropout)
    tokenizer = tokenizer or load_tokenizer(base.vocab)
    if len(tokenizer) != config.vocab_size:
        raise ValueError("the tokenizer has %d entries but the model's vocabulary has %d; pass "
                         "the matching --vocab" % (len(tokenizer), config.vocab_size))
    data = ft.load_task(task, base.data_dir, tokenizer, min(base.max_len, config.max_length),
                        config.vocab_size)
    dev = data["dev"]
    if not dev:
        raise ValueError("task %s has no dev split; Agora needs one" % task.name)
    num_classes = ft.num_outputs(task)
    special = tokenizer.special_ids
    mlm = None
    if mlm_logits is not None:
        mlm = MaskedLMResample(mlm_logits, tokenizer.mask_id, special, options.mask_prob,
                               tokenizer.pad_id, base.dev_batch_size)
    generate = make_generator(options.generator, special, mlm, options.drop_prob,
                              options.swap_prob)
    ft.check_output_dir(base.output_dir, base.overwrite)
    if base.checkpoint is None:
        warnings.warn("no --checkpoint: Agora fine-tunes a RANDOMLY initialised %s (scores will "
                      "be near chance)" % config.name, stacklevel=2)
    reference = backend.load(ref_config, options.reference_checkpoint, num_classes)
    ref_dev = ft.score_split(backend, reference, task, dev[0], base.dev_batch_size)
    ref_info = check_reference(task, dev[0].examples, ref_dev["predictions"])
    ref_info["metrics"] = ref_dev["metrics"]
    ref_wrong = mistakes(task, dev[0].examples, ref_dev["predictions"],
                         options.regression_tolerance)
    ref_info["dev_mistakes"] = int(len(ref_wrong))

    rng = np.random.RandomState(base.seed)
    train = dict(data["train"][0].features)
    alive = list(range(len(grid)))
    best = {"score": -math.inf}
    best_path = os.path.join(base.output_dir, "model_bort_%s_agora.params" % task.name)
    rounds, start = [], time.time()
    work = tempfile.mkdtemp(prefix="agora-", dir=base.output_dir)
    with bio.atomic_path(best_path) as kept:    # the best model so far, published at the end
        try:
            while alive and (options.max_rounds is None or len(rounds) < options.max_rounds):
                for replay in range(1 + options.replays):
                    if options.max_rounds is not None and len(rounds) >= options.max_rounds:
                        break
                    record = _round(backend, task, config, num_classes, base, grid, alive, train,
                                    dev, work, len(rounds) + 1, progress)
                    t0 = time.time()
                    model_path, score = record.pop("model_path"), record["best_score"]
                    if score > best["score"]:
                        shutil.copyfile(model_path, kept)
                        best = {"score": score, "round": record["round"], "set": record["best_set"]}
                    model = backend.load(config, model_path, num_classes)
                    scored = ft.score_split(backend, model, task, dev[0], base.dev_batch_size)
                    wrong = mistakes(task, dev[0].examples, scored["predictions"],
                                     options.regression_tolerance)
                    mined = np.setdiff1d(wrong, ref_wrong) if options.teachable_only else wrong
                    final = (len(alive) == 1 and replay == options.replays) or (
                        options.max_rounds is not None and len(rounds) + 1 >= options.max_rounds)
                    seqs = [] if final else [dev[0].features["input_ids"][i] for i in mined
                                             for _ in range(options.points_per_mistake)]
                    new = generate(seqs, rng) if seqs else []     # none after the final round
                    if new:
                        ref_logits = backend.predict(reference, ft.eval_batches(
                            {"input_ids": object_array(new), "valid_length": np.array(
                                [len(s) for s in new], np.int32)}, base.dev_batch_size))
                        labels = ft.predictions(task, ref_logits, "the reference on generated "
                                                "points")[0]
                        train = append_points(train, new, labels)
                    shutil.rmtree(os.path.dirname(model_path), ignore_errors=True)
                    record.update({"dev_mistakes": int(len(wrong)), "mistakes_mined": int(len(mined)),
                                   "points_added": len(new),
                                   "train_size": int(len(train["valid_length"])),
                                   "generate_seconds": time.time() - t0})
                    rounds.append(record)
                    _write_logs(base.output_dir, task, ref_info, rounds, best, grid)
                    if progress:
                        n = len(record["sets"])
                        print("agora round %d: %d set%s, best %.4f (set %d), %d mistakes, +%d "
                              "points, %.1fs" % (record["round"], n, "" if n == 1 else "s", score,
                                                 record["best_set"], len(wrong), len(new),
                                                 record["seconds"]), flush=True)
                last = rounds[-1]["scores"]
                alive = [alive[i] for i in prune([last[str(s)] for s in alive], options.keep,
                                                 options.prune)]
            seconds = time.time() - start
            model = backend.load(config, kept, num_classes)
            dev_metrics, test = ft.score_and_submit(backend, model, task, data,
                                                    base.dev_batch_size, base.output_dir)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    result = {"task": task.name, "framework": backend.name, "config": config.name,
              "reference": ref_info, "best": best, "rounds": len(rounds),
              "runs": sum(len(r["sets"]) for r in rounds), "seconds": seconds,
              "model": best_path, "dev": dev_metrics, "test": test}
    ft.write_json(os.path.join(base.output_dir, "result.json"), result)
    return result


def _round(backend, task, config, num_classes, base, grid, alive, train, dev, work, number,
           progress):
    """Fine-tune one student per alive set; the round's record with its best model's path."""
    t0 = time.time()
    scores, best_i, best_dir = {}, None, None
    for i in alive:
        opts = _theta_options(base, grid[i])
        run_dir = os.path.join(work, "round%d-set%d" % (number, i))
        os.makedirs(run_dir)
        init = os.path.join(run_dir, "init.params")
        ckpt.save_params(init, ft.initial_classifier(config, num_classes, base.checkpoint,
                                                     opts.classifier_init, opts.seed, opts.prob))
        model = backend.load(config, init, num_classes)
        try:
            model, _, score = ft.train_and_select(backend, model, config, num_classes, task,
                                                  train, dev, opts, run_dir, progress=False)
        except NonFiniteError as err:
            raise NonFiniteError("round %d, set %d %s: %s" % (number, i, json.dumps(grid[i]),
                                                              err)) from None
        backend.save(model, os.path.join(run_dir, "best.params"))
        scores[str(i)] = score
        if best_i is None or score > scores[str(best_i)]:
            if best_dir:
                shutil.rmtree(best_dir, ignore_errors=True)
            best_i, best_dir = i, run_dir
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    return {"round": number, "sets": list(alive), "scores": scores, "best_set": best_i,
            "best_score": scores[str(best_i)], "runs": len(alive), "seconds": time.time() - t0,
            "model_path": os.path.join(best_dir, "best.params")}


def _write_logs(out_dir, task, ref_info, rounds, best, grid):
    """agora_log.json (everything) and agora_log.md (one table row per round)."""
    ft.write_json(os.path.join(out_dir, "agora_log.json"),
                  {"task": task.name, "reference": ref_info, "best": best, "grid": grid,
                   "rounds": rounds})
    lines = ["# Agora on %s" % task.name, "",
             "Reference on dev: %s" % json.dumps(ref_info, default=float), "",
             "| round | sets alive | fine-tuning runs | best set | best dev | mean dev | "
             "dev mistakes | mistakes mined | points added | train size | seconds |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rounds:
        lines.append("| %d | %d | %d | %d %s | %.4f | %.4f | %d | %d | %d | %d | %.1f |" % (
            r["round"], len(r["sets"]), r["runs"], r["best_set"],
            json.dumps(grid[r["best_set"]]), r["best_score"],
            float(np.mean(list(r["scores"].values()))), r["dev_mistakes"], r["mistakes_mined"],
            r["points_added"], r["train_size"], r["seconds"] + r["generate_seconds"]))
    lines += ["", "Best: %s" % json.dumps(best, default=float), ""]
    bio.write_text(os.path.join(out_dir, "agora_log.md"), "\n".join(lines))
