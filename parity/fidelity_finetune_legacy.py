"""The release side of `parity.fidelity_finetune`, run by the legacy interpreter (Python 3.7,
mxnet 1.5.0, gluonnlp 0.8.3): reads one JSON request on stdin, writes one JSON answer.

Request: {"init": [{"scheme", "prob", "shapes", "seed"}...], "buckets": {"lengths",
"num_buckets", "batch_size"}}. Answer: {"init": [{"weights": [{"mean", "std", "min", "max",
"singular": [min, max]}...]}...], "buckets": {"keys", "members", "batches"}, "versions"}.
Heads are drawn as finetune_bort.py drew them (`--init`/`--prob` pick an MXNet initialiser,
`mx.random.seed(--seed)` first); buckets are those of its training sampler
(FixedBucketSampler(lengths, batch_size, num_buckets, ratio=0, shuffle=True)).
Imports only the legacy stack and numpy, so it runs without this project installed.
"""
import json
import sys

import numpy as np


def initializer(mx, scheme, prob):
    """The MXNet initialiser finetune_bort.py picked for `--init scheme --prob prob`."""
    return {"gaussian": lambda: mx.init.Normal(prob), "uniform": lambda: mx.init.Uniform(prob),
            "orthogonal": lambda: mx.init.Orthogonal(scale=prob),
            "xavier": lambda: mx.init.Xavier()}[scheme]()


def moments(w):
    w = np.asarray(w, np.float64)
    singular = np.linalg.svd(w, compute_uv=False)
    return {"mean": float(w.mean()), "std": float(w.std()), "min": float(w.min()),
            "max": float(w.max()), "singular": [float(singular.min()), float(singular.max())]}


def draw_heads(mx, spec):
    mx.random.seed(spec["seed"])
    np.random.seed(spec["seed"])
    init = initializer(mx, spec["scheme"], spec["prob"])
    out = []
    for i, shape in enumerate(spec["shapes"]):
        arr = mx.nd.zeros(tuple(shape))
        init(mx.init.InitDesc("classifier_dense%d_weight" % i), arr)
        out.append(moments(arr.asnumpy()))
    return {"weights": out}


def buckets(nlp, spec):
    sampler = nlp.data.sampler.FixedBucketSampler(spec["lengths"], batch_size=spec["batch_size"],
                                                  num_buckets=spec["num_buckets"], ratio=0,
                                                  shuffle=True)
    return {"keys": [int(k) for k in sampler._bucket_keys],
            "members": [sorted(int(i) for i in ids) for ids in sampler._bucket_sample_ids],
            "batches": len(sampler)}


def main():
    import warnings
    warnings.simplefilter("ignore")
    import gluonnlp as nlp
    import mxnet as mx

    request = json.load(sys.stdin)
    answer = {"versions": {"mxnet": mx.__version__, "gluonnlp": nlp.__version__}}
    if "init" in request:
        answer["init"] = [draw_heads(mx, spec) for spec in request["init"]]
    if "buckets" in request:
        answer["buckets"] = buckets(nlp, request["buckets"])
    json.dump(answer, sys.stdout)


if __name__ == "__main__":
    main()
