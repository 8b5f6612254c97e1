"""`python -m parity fidelity [--json F]`: does `--recipe release` do what the 2020 release did?

One row per behaviour: {name, release, ours, ok, how}. `release` is computed on the legacy
stack (mxnet 1.5.0 + gluonnlp 0.8.3, by `parity.fidelity_legacy` in the legacy interpreter) on
the same inputs where the behaviour lives in those libraries, from the release script's formula
(written in `parity.fidelity_legacy`, tested on worked examples) where it lives in the script,
or is a value the release's scripts set. `ours` is this project's under `--recipe release`.
Rows of `parity.fidelity_finetune` (fine-tuning and Agora) are included when that module
exists. The command prints a markdown table and exits 1 when a row is not ok.

The legacy interpreter: .tox/legacy/bin/python when it exists, else $BORT_LEGACY_PYTHON. When
there is none, rows that need it are not ok (with the reason), and under CI=true the command
fails before computing anything.
"""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import tempfile
from typing import Dict, List, Optional

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEGACY_DEFAULT = os.path.join(ROOT, ".tox", "legacy", "bin", "python")
RTOL = 1e-5                               # mxnet 1.5 float32 against our float64 arithmetic


class LegacyMissing(RuntimeError):
    pass


def find_legacy_python() -> Optional[str]:
    """.tox/legacy/bin/python, else $BORT_LEGACY_PYTHON, else None."""
    if os.path.exists(LEGACY_DEFAULT):
        return LEGACY_DEFAULT
    return os.environ.get("BORT_LEGACY_PYTHON") or None


def call_legacy(python: Optional[str], request: Dict, module: str = "fidelity_legacy") -> Dict:
    """`parity.<module>`'s answer to `request`, run by the legacy interpreter. Only the parity
    package is put on its path (a link in a temporary folder): the folder holding the package
    may be a newer Python's site-packages, whose numpy the legacy interpreter cannot import."""
    if not python or not os.path.exists(python):
        raise LegacyMissing("no legacy interpreter (%s): build it with `tox -e legacy` or set "
                            "BORT_LEGACY_PYTHON" % (python or LEGACY_DEFAULT))
    with tempfile.TemporaryDirectory(prefix="bort-legacy-") as path:
        os.symlink(os.path.dirname(os.path.abspath(__file__)), os.path.join(path, "parity"))
        env = dict(os.environ, PYTHONPATH=path,
                   OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        done = subprocess.run([python, "-W", "ignore", "-m", "parity." + module], cwd=path,
                              input=json.dumps(request), capture_output=True, text=True, env=env,
                              timeout=600)
    if done.returncode:
        raise RuntimeError("parity.%s failed under %s:\n%s" % (module, python, done.stderr[-2000:]))
    return json.loads(done.stdout)


def row(name, release, ours, ok, how) -> Dict:
    return {"name": name, "release": release, "ours": ours, "ok": bool(ok), "how": how}


def close(a, b, rtol=RTOL) -> bool:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=rtol, atol=0.0))




# ---------------------------------------------------------------------------------- runner

#: modules that contribute rows, each with `rows(legacy_python) -> list of row dicts`
SECTIONS = ("parity.fidelity_pretrain", "parity.fidelity_finetune")


def all_rows(legacy_python: Optional[str]) -> List[Dict]:
    """The rows of every section module present (fine-tuning's may not exist yet)."""
    out = []
    for name in SECTIONS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
            continue
        out.extend(module.rows(legacy_python))
    return out


def _cell(value) -> str:
    text = json.dumps(value)
    return (text if len(text) <= 60 else text[:57] + "...").replace("|", "\\|")


def format_table(rows: List[Dict]) -> str:
    lines = ["| behaviour | release | ours (--recipe release) | ok | how |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append("| %s | %s | %s | %s | %s |" % (r["name"], _cell(r["release"]),
                                                     _cell(r["ours"]), "yes" if r["ok"] else "NO",
                                                     r["how"]))
    return "\n".join(lines)


def run(args) -> int:
    """The command: table on stdout, optional JSON, exit 1 on any row not ok."""
    legacy = args.legacy_python or find_legacy_python()
    if (not legacy or not os.path.exists(legacy)) and os.environ.get("CI", "").lower() == "true":
        raise LegacyMissing("fidelity: no legacy interpreter (%s; CI=true): build it with "
                            "`tox -e legacy` or set BORT_LEGACY_PYTHON"
                            % (legacy or LEGACY_DEFAULT))
    rows = all_rows(legacy)
    print(format_table(rows))
    bad = [r["name"] for r in rows if not r["ok"]]
    print("\nfidelity: %d rows, %d not ok%s" % (len(rows), len(bad),
                                                ": " + "; ".join(bad) if bad else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"legacy_python": legacy, "ok": not bad, "rows": rows}, f, indent=2)
    return 1 if bad or not rows else 0
