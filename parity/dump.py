"""Run one framework's model on a parity inputs file and collect every tap.

Taps are read with forward hooks on the encoder's embedding LayerNorm and on each transformer
cell (so the models themselves carry no parity code); cell outputs are zeroed beyond
valid_length, as GluonNLP returns them. Formats: parity/io.py.
"""
from __future__ import annotations

import numpy as np


def _mask(hidden, valid_length):
    keep = np.arange(hidden.shape[1])[None, :] < valid_length[:, None]
    return hidden * keep[..., None]


def gluon_taps(model, inputs, classifier=None):
    """Taps of a bort_gluon BortModel (not hybridized: hooks need the imperative path)."""
    import mxnet as mx

    captured = {}
    encoder = model.encoder

    def keep(name):
        def hook(block, args, output):
            out = output[0] if isinstance(output, (list, tuple)) else output
            captured[name] = out.asnumpy().transpose(1, 0, 2)   # GluonNLP runs (L, B, C)
        return hook

    handles = [encoder.layer_norm.register_forward_hook(keep("embed"))]
    handles += [cell.register_forward_hook(keep("layer%d" % i))
                for i, cell in enumerate(encoder.transformer_cells)]
    # GluonNLP takes token ids and lengths as float32 (it builds its masks from them)
    ids = mx.nd.array(inputs["input_ids"], dtype="float32")
    valid = mx.nd.array(inputs["valid_length"], dtype="float32")
    positions = mx.nd.array(inputs["masked_positions"], dtype="float32")
    try:
        sequence, logits = model(ids, valid, positions)
        taps = {"sequence_output": sequence.asnumpy(), "mlm_logits": logits.asnumpy()}
        if classifier is not None:
            taps["classifier_logits"] = classifier(ids, valid).asnumpy()
    finally:
        for h in handles:
            h.detach()
    return _finish(taps, captured, inputs["valid_length"], len(encoder.transformer_cells))


def torch_taps(model, inputs, classifier=None):
    """Taps of a bort_torch BortModel."""
    import torch

    captured = {}
    encoder = model.encoder

    def keep(name):
        def hook(module, args, output):
            captured[name] = output.detach().float().cpu().numpy()
        return hook

    handles = [encoder.layer_norm.register_forward_hook(keep("embed"))]
    handles += [cell.register_forward_hook(keep("layer%d" % i))
                for i, cell in enumerate(encoder.transformer_cells)]
    ids = torch.from_numpy(inputs["input_ids"]).long()
    valid = torch.from_numpy(inputs["valid_length"]).long()
    positions = torch.from_numpy(inputs["masked_positions"]).long()
    try:
        with torch.no_grad():
            sequence, logits = model(ids, valid, positions)
            taps = {"sequence_output": sequence.float().numpy(), "mlm_logits": logits.float().numpy()}
            if classifier is not None:
                taps["classifier_logits"] = classifier(ids, valid).float().numpy()
    finally:
        for h in handles:
            h.remove()
    return _finish(taps, captured, inputs["valid_length"], len(encoder.transformer_cells))


def _finish(taps, captured, valid_length, num_layers):
    taps["embed"] = captured["embed"]
    for i in range(num_layers):
        taps["layer%d" % i] = _mask(captured["layer%d" % i], valid_length)
    return {k: np.asarray(v, dtype=np.float32) for k, v in taps.items()}
