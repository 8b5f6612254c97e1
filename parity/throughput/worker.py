"""A worker process: one framework's runner (bort_torch, HF, bort_gluon, GluonNLP or ONNX
Runtime) serving the parent's JSON-line requests: hello, setup, time, peak, memory, quit.

    python -m parity.throughput.worker --worker SPEC_JSON   (started by the harness)
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time

import numpy as np

from bort_core.configs import get_config
from bort_core.model_params import load_checkpoint, load_model_params
from parity.throughput.workloads import make_batch


def _reply(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class TorchRunner:
    """bort_torch (fused or plain) or HF BertModel, eager or compiled, fp32 or autocast."""

    def __init__(self, spec):
        import torch

        self.torch, self.spec = torch, spec
        torch.set_num_threads(spec["threads"])
        if spec["device"] == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("--device cuda: torch %s sees no CUDA device" % torch.__version__)
        self.device = torch.device(spec["device"])
        self.dtype = getattr(torch, spec["dtype"])
        self.config = get_config(spec["config"])
        train = spec["mode"] == "train"
        if spec["framework"] == "hf":
            if train:
                raise RuntimeError("hf: inference only in this harness")
            from transformers import BertModel

            self.model = BertModel.from_pretrained(spec["paths"]["hf"], add_pooling_layer=False,
                                                   attn_implementation="sdpa")
            self.versions = {"torch": torch.__version__,
                             "transformers": __import__("transformers").__version__}
        else:
            from bort_torch import model as tm

            config, params = load_checkpoint(spec["paths"]["params"], spec["config"])
            self.model = tm.BortModel(config if train else config.without_dropout())
            tm.set_params(self.model, params, spec["paths"]["params"])
            tm.set_fast_paths(self.model, spec["framework"] != "torch-plain")
            self.versions = {"torch": torch.__version__}
        self.model.to(self.device).train(train)
        self.step = self.model
        if spec["framework"] == "torch-compile":
            if not train:
                import torch._inductor.config as inductor
                inductor.freezing = True   # weights as constants: prepacked GEMMs on CPU
            self.step = torch.compile(self.model)
        self.threads = torch.get_num_threads()

    def setup(self, batch, seq):
        torch = self.torch
        arrays = make_batch(self.config, batch, seq, self.spec["seed"])
        as_t = lambda a: torch.from_numpy(a.astype(np.int64)).to(self.device)   # noqa: E731
        self.x, self.vl, self.pos = (as_t(arrays[k]) for k in
                                     ("input_ids", "valid_length", "masked_positions"))
        self.mask = (torch.arange(seq, device=self.device)[None, :] < self.vl[:, None]).long()
        self.labels = torch.randint(0, self.config.vocab_size, self.pos.shape, device=self.device,
                                    generator=torch.Generator(self.device).manual_seed(0))
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(self.spec["warmup"]):
            self.run_step()
        out = {"warmup_s": time.perf_counter() - start}
        if self.spec["check_error"] and self.spec["dtype"] != "float32" \
                and self.spec["framework"] != "hf":
            out.update(self.logit_error())
        return out

    def autocast(self):
        low = self.spec["dtype"] != "float32"
        return self.torch.autocast(self.device.type, dtype=self.dtype, enabled=low)

    def run_step(self):
        torch = self.torch
        if self.spec["mode"] == "train":
            with self.autocast():
                _, logits = self.step(self.x, self.vl, self.pos)
                loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1),
                                                         self.labels.flatten())
            loss.backward()
            self.model.zero_grad(set_to_none=True)
        else:
            with torch.inference_mode(), self.autocast():
                if self.spec["framework"] == "hf":
                    self.step(input_ids=self.x, attention_mask=self.mask)
                else:
                    self.step(self.x, self.vl)
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def logit_error(self):
        """MLM logits at the masked positions under the low dtype vs fp32 (eager, eval mode,
        same batch)."""
        torch = self.torch
        training = self.model.training
        self.model.eval()
        with torch.inference_mode():
            ref = self.model(self.x, self.vl, self.pos)[1].float()
            with self.autocast():
                low = self.model(self.x, self.vl, self.pos)[1].float()
        self.model.train(training)
        diff = (low - ref).abs()
        return {"mlm_logit_max_abs_err": float(diff.max()),
                "mlm_logit_rel_l2_err": float(torch.linalg.vector_norm(low - ref)
                                              / torch.linalg.vector_norm(ref)),
                "mlm_top1_agreement": float((low.argmax(-1) == ref.argmax(-1)).float().mean())}

    def peak(self):
        """Measured dense-GEMM TFLOP/s in this dtype on this device (the MFU denominator when
        no peak is given)."""
        torch = self.torch
        n = 4096 if self.device.type == "cuda" else 1024
        a = torch.randn(n, n, device=self.device, dtype=self.dtype)
        b = torch.randn(n, n, device=self.device, dtype=self.dtype)
        times = []
        for _ in range(8):
            start = time.perf_counter()
            torch.mm(a, b)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        return {"peak_tflops": 2 * n ** 3 / float(np.median(times[2:])) / 1e12}

    def memory(self):
        if self.device.type == "cuda":
            return {"peak_mem_mib": self.torch.cuda.max_memory_allocated() / 2 ** 20}
        return {"peak_mem_mib": _rss_peak_mib()}


class GluonRunner:
    """bort_gluon (or GluonNLP's own BERTModel) hybridized with static_alloc/static_shape."""

    def __init__(self, spec):
        import mxnet as mx

        self.mx, self.spec = mx, spec
        if spec["device"] == "cuda":
            if mx.context.num_gpus() == 0:
                raise RuntimeError("--device cuda: MXNet %s has no GPU (CPU-only build or no "
                                   "device; mx.context.num_gpus() == 0)" % mx.__version__)
            self.ctx = mx.gpu(0)
        else:
            self.ctx = mx.cpu()
        if spec["dtype"] == "float16" and spec["device"] == "cpu":
            raise RuntimeError("gluon float16 on CPU: MXNet has no CPU float16 kernels")
        import gluonnlp

        from bort_gluon import model as gm

        train = spec["mode"] == "train"
        config, params = load_model_params(spec["paths"]["params"], spec["config"],
                                                with_decoder=train)
        self.config = config
        config = config if train else config.without_dropout()
        if spec["framework"] == "gluonnlp":
            self.model = gm.plain_bert_model(config, use_decoder=train, device=self.ctx)
        else:
            self.model = gm.BortModel(config, use_decoder=train, device=self.ctx)
        gm.set_params(self.model, params, spec["paths"]["params"])
        if spec["dtype"] != "float32":   # AMP's SymbolBlock takes the padded inputs only
            gm.set_unpadded(self.model, False)
        gm.hybridize_for_speed(self.model)
        self.plain = spec["framework"] == "gluonnlp"
        self.versions = {"mxnet": mx.__version__, "gluonnlp": gluonnlp.__version__}
        self.threads = int(os.environ.get("OMP_NUM_THREADS", "0")) or None
        self.train = train
        if spec["dtype"] != "float32":
            # AMP rewrites the cached graph, which exists once the hybridized block has run
            self.set_inputs(2, 8)
            self.forward(train)
            mx.nd.waitall()
            self.model = gm.to_low_precision(self.model, spec["dtype"], self.ctx)

    def set_inputs(self, batch, seq):
        mx = self.mx
        arrays = make_batch(self.config, batch, seq, self.spec["seed"])
        self.x = mx.nd.array(arrays["input_ids"], ctx=self.ctx)
        self.vl = mx.nd.array(arrays["valid_length"], ctx=self.ctx)
        self.pos = mx.nd.array(arrays["masked_positions"], ctx=self.ctx)
        self.labels = mx.nd.array(np.random.RandomState(0).randint(
            0, self.config.vocab_size, arrays["masked_positions"].shape), ctx=self.ctx)

    def setup(self, batch, seq):
        self.set_inputs(batch, seq)
        start = time.perf_counter()
        for _ in range(self.spec["warmup"]):
            self.run_step()
        return {"warmup_s": time.perf_counter() - start}

    def forward(self, masked):
        if self.plain:   # GluonNLP's slot order: (inputs, token_types, valid_length, masked)
            return self.model(self.x, None, self.vl, self.pos if masked else None)
        return self.model(self.x, self.vl, self.pos if masked else None)

    def run_step(self):
        mx = self.mx
        if self.train:
            with mx.autograd.record():
                out = self.forward(True)
                logits = out[-1] if isinstance(out, (list, tuple)) else out
                loss = mx.nd.softmax_cross_entropy(logits.reshape((-1, self.config.vocab_size)),
                                                   self.labels.reshape((-1,)))
            loss.backward()
        else:
            out = self.forward(False)
            loss = out[0] if isinstance(out, (list, tuple)) else out
        loss.wait_to_read()

    def memory(self):
        return {"peak_mem_mib": _rss_peak_mib()}


class OnnxRunner:
    """ONNX Runtime on the exported backbone (fp32)."""

    def __init__(self, spec):
        import onnxruntime as ort

        if spec["paths"].get("onnx_error"):
            raise RuntimeError("export-onnx failed: %s" % spec["paths"]["onnx_error"])
        if spec["mode"] != "inference" or spec["dtype"] != "float32":
            raise RuntimeError("onnx: fp32 inference only in this harness")
        providers = ["CPUExecutionProvider"]
        if spec["device"] == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RuntimeError("--device cuda: this onnxruntime has no CUDAExecutionProvider")
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.intra_op_num_threads = spec["threads"]
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(spec["paths"]["onnx"], options, providers=providers)
        self.spec, self.config = spec, get_config(spec["config"])
        self.versions = {"onnxruntime": ort.__version__}
        self.threads = spec["threads"]

    def setup(self, batch, seq):
        arrays = make_batch(self.config, batch, seq, self.spec["seed"])
        self.feed = {"input_ids": arrays["input_ids"].astype(np.int64),
                     "valid_length": arrays["valid_length"].astype(np.int64)}
        start = time.perf_counter()
        for _ in range(self.spec["warmup"]):
            self.run_step()
        return {"warmup_s": time.perf_counter() - start}

    def run_step(self):
        self.session.run(None, self.feed)

    def memory(self):
        return {"peak_mem_mib": _rss_peak_mib()}


def _rss_peak_mib():
    """Peak resident memory of this process (the whole process, weights included)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


RUNNERS = {"torch": TorchRunner, "torch-compile": TorchRunner, "torch-plain": TorchRunner,
           "hf": TorchRunner,
           "gluon": GluonRunner, "gluonnlp": GluonRunner, "onnx": OnnxRunner}


def worker(spec):
    """Serve requests for one framework until 'quit'; every failure is a reply, not a crash."""
    runner = None
    for line in sys.stdin:
        request = json.loads(line)
        op = request["op"]
        try:
            if op == "quit":
                break
            if op == "hello":
                runner = RUNNERS[spec["framework"]](spec)
                _reply({"ok": True, "versions": runner.versions, "threads": runner.threads})
            elif op == "setup":
                _reply(dict(ok=True, **runner.setup(request["batch"], request["seq"])))
            elif op == "time":
                times = []
                for _ in range(request["n"]):
                    start = time.perf_counter()
                    runner.run_step()
                    times.append(time.perf_counter() - start)
                _reply({"ok": True, "times": times})
            elif op == "peak":
                _reply(dict(ok=True, **runner.peak()))
            elif op == "memory":
                _reply(dict(ok=True, **runner.memory()))
        except Exception as err:   # noqa: BLE001 - reported to the parent, which goes on
            name = type(err).__name__
            _reply({"error": "%s: %s" % (name, str(err).strip().splitlines()[0] if str(err) else name)})


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker(json.loads(sys.argv[2]))
    else:
        sys.exit("parity.throughput.worker is driven by `python -m parity throughput`")
