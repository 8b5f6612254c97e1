"""Fine-tuning and Agora rows of `python -m parity fidelity` (issue 19, items 4-6 and 9).

`rows(legacy_python)` returns one dict per behaviour: {name, release, ours, ok, how}; `ours` is
this project's value under `--recipe release`. The release side comes from mxnet 1.5.0 /
gluonnlp 0.8.3 run by `legacy_python` (`parity.fidelity_finetune_legacy`) where the behaviour
lives in those libraries (head initialisers, the training sampler's buckets), else from the
release script's formula written here (schedule horizon, early stopping, dropout scope) or the
Agora paper's runtime bound (pruning). Without a legacy interpreter (None) its rows are not ok
and say why.
"""
from __future__ import annotations

import os
import subprocess
from typing import Dict, List, Optional

import numpy as np

from bort_core import agora
from bort_core import finetune as ft
from bort_core.configs import get_config
from bort_core.data.batches import length_buckets, train_batches, width_keys
from parity.fidelity_finetune_legacy import moments

RELEASE = ft.FinetuneOptions(recipe="release")
CONFIG = get_config("bort_4_8_768_1024")     # the released model: heads (768, 768), (2, 768)
SEED = 2                                     # run_finetune.sh's seed
HEAD_DROPOUT = 0.3                           # any rate other than the backbone's 0.1


def _row(name, release, ours, ok, how) -> Dict:
    return {"name": name, "release": release, "ours": ours, "ok": bool(ok), "how": how}


def _legacy(python: Optional[str], request: Dict) -> Dict:
    """`parity.fidelity_finetune_legacy`'s answer, computed by the legacy interpreter."""
    from parity.fidelity import call_legacy

    return call_legacy(python, request, module="fidelity_finetune_legacy")


# ----------------------------------------------------------------------------- head init

def _same_draw(release: Dict, ours: Dict, size: int, orthogonal: bool) -> bool:
    """Two samples of one distribution: means within 6 standard errors, standard deviations
    within 6 / sqrt(N) relative, extremes within one standard deviation; an orthogonal
    matrix's singular values (all equal to its scale) within 1e-4 relative."""
    std = release["std"]
    ok = abs(release["mean"] - ours["mean"]) <= 6 * std * np.sqrt(2.0 / size)
    ok &= abs(release["std"] - ours["std"]) <= 6 * std / np.sqrt(size)
    ok &= all(abs(release[k] - ours[k]) <= std for k in ("min", "max"))
    if orthogonal:
        ok &= np.allclose(release["singular"], ours["singular"], rtol=1e-4)
    return bool(ok)


def _round(m: Dict) -> Dict:
    return {k: ([float("%.5g" % x) for x in v] if isinstance(v, list) else float("%.5g" % v))
            for k, v in m.items()}


def head_init_rows(legacy: Optional[Dict], error: str) -> List[Dict]:
    specs = []
    for scheme in ft.CLASSIFIER_INITS:
        head = ft.classifier_init(CONFIG, 2, scheme, SEED, 0.1, RELEASE.prob)
        weights = [v for n, v in head.items() if n.endswith(".weight")]
        specs.append((scheme, [list(w.shape) for w in weights], [moments(w) for w in weights]))
    out = []
    for i, (scheme, shapes, ours) in enumerate(specs):
        name = "head init %s (--init %s, --prob %g)" % (scheme, scheme, RELEASE.prob)
        if legacy is None:
            out.append(_row(name, None, [_round(m) for m in ours], False, error))
            continue
        release = legacy["init"][i]["weights"]
        ok = all(_same_draw(r, o, int(np.prod(s)), scheme == "orthogonal")
                 for r, o, s in zip(release, ours, shapes))
        out.append(_row(name, [_round(m) for m in release], [_round(m) for m in ours], ok,
                        "mxnet %s's initialiser finetune_bort.py picks, drawn on the head shapes "
                        "%s vs ours (numpy, so both twins draw alike): moments per weight "
                        "(different generators: equal in distribution, not per draw)"
                        % (legacy["versions"]["mxnet"], shapes)))
    return out


def _init_request() -> List[Dict]:
    shapes = [[CONFIG.units, CONFIG.units], [2, CONFIG.units]]
    return [{"scheme": s, "prob": RELEASE.prob, "shapes": shapes, "seed": SEED}
            for s in ft.CLASSIFIER_INITS]


# ------------------------------------------------------------------------------ buckets

def _lengths() -> List[int]:
    """2000 skewed lengths in [5, 512], as a GLUE train split's token counts look."""
    rng = np.random.RandomState(0)
    return np.clip(rng.lognormal(3.6, 0.6, 2000).astype(int), 5, 512).tolist()


def bucket_row(legacy: Optional[Dict], error: str) -> Dict:
    lengths, batch = _lengths(), 32
    buckets = length_buckets(lengths, RELEASE.num_buckets, RELEASE.buckets)
    feats = {"input_ids": [np.zeros(n, np.int32) for n in lengths],
             "valid_length": np.asarray(lengths, np.int32)}
    batches = train_batches(feats, batch, 0, RELEASE.num_buckets, scheme=RELEASE.buckets)
    keys = width_keys(lengths, RELEASE.num_buckets)
    ours = {"keys": [int(keys[np.searchsorted(keys, max(np.asarray(lengths)[b]))])
                     for b in buckets],
            "members": [sorted(b.tolist()) for b in buckets], "batches": len(batches)}
    name = "bucket boundaries (--buckets %s, %d buckets)" % (RELEASE.buckets, RELEASE.num_buckets)
    show = lambda d: {"keys": d["keys"], "sizes": [len(m) for m in d["members"]],  # noqa: E731
                      "batches": d["batches"]}
    if legacy is None:
        return _row(name, None, show(ours), False, error)
    release = legacy["buckets"]
    ok = release == ours
    return _row(name, show(release), show(ours), ok,
                "gluonnlp %s FixedBucketSampler(num_buckets=15, ratio=0, shuffle=True) as "
                "finetune_utils.preprocess_data built it, on 2000 lengths, batch 32: the keys "
                "of the non-empty buckets, the rows each holds and the batch count"
                % legacy["versions"]["gluonnlp"])


# ---------------------------------------------------------------------- script formulas

def release_horizon(num_examples: int, batch_size: int, ramp_up_epochs: int) -> int:
    """finetune_bort.py: the schedule's steps, int(examples / batch * ramp_up_epochs)."""
    return int(num_examples / batch_size * ramp_up_epochs)


def horizon_row() -> Dict:
    cases = [(3668, 8, 1), (1000, 32, 3), (10, 3, 1), (635, 32, 3)]   # MRPC, ..., WNLI
    release = [release_horizon(*c) for c in cases]
    ours = [ft.FinetuneOptions(recipe="release", batch_size=b, epochs=e).schedule_steps(n)
            for n, b, e in cases]
    return _row("lr schedule horizon (--horizon %s)" % RELEASE.horizon, release, ours,
                release == ours, "finetune_bort.py's formula on (examples, batch, ramp-up "
                "epochs) %s; our default rounds up: %s" % (cases, [
                    ft.FinetuneOptions(batch_size=b, epochs=e).schedule_steps(n)
                    for n, b, e in cases]))


def release_early_stop(scores: List[float], patience: int):
    """finetune_bort.py with one dev segment: (epochs run, best epoch). Patience restarts on a
    score >= the best, drops by one otherwise, and is checked before each epoch; the best
    epoch is the first of a stable sort of the history by score, descending."""
    left, best, history = patience, None, []
    for epoch, score in enumerate(scores, 1):
        if left == 0:
            break
        if best is None or score >= best:
            best, left = score, patience
        else:
            left -= 1
        history.append((epoch, score))
    return len(history), sorted(history, key=lambda h: h[1], reverse=True)[0][0]


def early_stop_row() -> Dict:
    cases = [([0.5, 0.7, 0.7, 0.7, 0.6, 0.6, 0.8], 2), ([0.6, 0.6, 0.5, 0.6, 0.5, 0.5], 2),
             ([0.9, 0.1, 0.9, 0.1, 0.1, 0.9], 1)]
    release = [list(release_early_stop(s, p)) for s, p in cases]
    ours = []
    for scores, patience in cases:
        state = ft.Patience(patience, RELEASE.tie_resets_patience)
        epoch = next((e for e, s in enumerate(scores, 1) if state.update(e, s)), len(scores))
        ours.append([epoch, state.best_epoch])
    return _row("early stop ties (--tie-resets-patience)", release, ours, release == ours,
                "finetune_bort.py's patience rule on scripted dev scores %s: [epochs run, best "
                "epoch]" % [c[0] for c in cases])


def _dropouts_torch(model) -> Dict:
    from torch import nn
    rates = {"backbone": set(), "head": set()}
    for name, module in model.named_modules():
        part = "head" if name.startswith("classifier") else "backbone"
        if isinstance(module, nn.Dropout):
            rates[part].add(module.p)
        elif hasattr(module, "num_heads"):            # attention: its rate is an attribute
            rates[part].add(module.dropout)
    return rates


def _dropouts_gluon(block) -> Dict:
    from mxnet.gluon import nn
    rates = {"backbone": set(), "head": set()}

    def walk(b, part):
        if isinstance(b, nn.Dropout):
            rates[part].add(b._rate)
        for name, child in b._children.items():
            walk(child, "head" if name == "classifier" or part == "head" else part)
    walk(block, "backbone")
    return rates


def dropout_row() -> Dict:
    """The rates of every dropout the built classifiers hold, in the backbone and the head,
    with --dropout HEAD_DROPOUT under the release recipe."""
    config = ft.resolve_config("bort_tiny", None, HEAD_DROPOUT, RELEASE.dropout_scope)
    release = {"backbone": [get_config("bort_tiny").dropout], "head": [HEAD_DROPOUT]}
    ours, notes = {}, []
    for framework, collect in (("torch", _dropouts_torch), ("gluon", _dropouts_gluon)):
        try:
            from bort_core.backend import get_backend
            model = get_backend(framework).build(config, 0, 2)
        except ImportError as err:
            notes.append("%s not installed (%s)" % (framework, err))
            continue
        ours[framework] = {k: sorted(float(r) for r in v) for k, v in collect(model).items()}
    ok = bool(ours) and all(v == release for v in ours.values()) and not notes
    return _row("dropout scope (--dropout %g --dropout-scope %s)"
                % (HEAD_DROPOUT, RELEASE.dropout_scope), release, ours, ok,
                "finetune_bort.py: get_bort_model's backbone (dropout 0.1), BortClassifier("
                "dropout=--dropout); ours: every Dropout rate in each twin's built classifier"
                + ("; " + "; ".join(notes) if notes else ""))


def _alive(scores: List[float], rule: str) -> List[int]:
    alive, trace = list(range(len(scores))), []
    while alive:
        trace.append(len(alive))
        alive = [alive[i] for i in agora.prune([scores[s] for s in alive], 0.5, rule)]
    return trace


def prune_rows() -> List[Dict]:
    scores = np.random.RandomState(0).rand(12).tolist()
    n = len(scores)
    halving = [n]
    while halving[-1] > 1:
        halving.append(int(np.ceil(halving[-1] / 2)))
    return [_row("agora prune (--prune one)", list(range(n, 0, -1)), _alive(scores, "one"),
                 _alive(scores, "one") == list(range(n, 0, -1)),
                 "the Agora paper's O(len(Theta)^2 ...) runtime bound: len(Theta) rounds, one set "
                 "removed per round (the release shipped no Agora code); sets alive per round, "
                 "12 sets"),
            _row("agora prune (--prune half, our default)", halving, _alive(scores, "half"),
                 _alive(scores, "half") == halving,
                 "not a release behaviour: our documented rule, ceil(n / 2) sets kept per "
                 "round (log2 len(Theta) + 1 rounds); sets alive per round, 12 sets")]


# ----------------------------------------------------------------------------------- all

def rows(legacy_python: Optional[str]) -> List[Dict]:
    """Every fine-tuning and Agora row; the legacy interpreter is run once for all of its."""
    legacy, error = None, ""
    if not legacy_python or not os.path.exists(legacy_python):
        error = ("needs the legacy interpreter (mxnet 1.5.0, gluonnlp 0.8.3): %s; build it "
                 "with `tox -e legacy`" % (legacy_python or "none given"))
    else:
        try:
            legacy = _legacy(legacy_python, {"init": _init_request(), "buckets": {
                "lengths": _lengths(), "num_buckets": RELEASE.num_buckets, "batch_size": 32}})
        except (OSError, RuntimeError, ValueError, subprocess.TimeoutExpired) as err:
            error = "the legacy interpreter %s failed: %s" % (legacy_python, err)
    return (head_init_rows(legacy, error) + [dropout_row(), horizon_row(),
                                              bucket_row(legacy, error), early_stop_row()]
            + prune_rows())
