"""bort_gluon and bort_torch are twins: each of their modules model, pretrain, finetune and
backend defines the same public functions and classes, with the same parameter names (and a
class the same public methods). Read with ast, so neither framework is needed."""
import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir)
MODULES = ("model", "pretrain", "finetune", "backend")
# names only one twin defines, and why
ONE_FRAMEWORK = {
    "gluon.model.host_array": "an NDArray from numpy without mx.nd.array's indexing machinery",
    "gluon.model.hybridize_for_speed": "MXNet's cached graph (torch runs eagerly)",
    "gluon.model.to_low_precision": "MXNet AMP's graph conversion (torch: autocast)",
    "gluon.model.plain_bert_model": "GluonNLP's own BERTModel, the speed baseline",
    "torch.model.MultiHeadSelfAttention": "a layer bort_gluon takes from GluonNLP",
    "torch.model.PositionwiseFFN": "a layer bort_gluon takes from GluonNLP",
    "torch.model.BortEncoderCell": "a layer bort_gluon takes from GluonNLP",
    "torch.model.TanhLinear": "a layer bort_gluon takes from MXNet (Dense with tanh)",
    "torch.pretrain.BERTAdam": "bort_gluon takes GluonNLP's",
    "torch.pretrain.cpu_has_bf16_matmul": "bfloat16 runs on the torch twin only",
    "gluon.pretrain.clip_and_update": "MXNet clips through the optimizer's rescale_grad",
    "torch.pretrain.clip_gradients": "torch clips the gradients in place",
}
# same name and role, a framework-shaped interface (the framework's block/module protocol)
FRAMEWORK_SHAPED = {"model.Packing", "model.BortEncoder", "model.BortModel.methods",
                    "model.BortClassifier.methods", "pretrain.TeacherCache.methods"}


def _params(func):
    a = func.args
    names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
    names += ["*" + a.vararg.arg] if a.vararg else []
    names += ["**" + a.kwarg.arg] if a.kwarg else []
    return names[1:] if names[:1] == ["self"] else names


def public_api(framework, module, root=ROOT):
    """{name: parameter names} of the module's public functions and classes (a class: its
    __init__'s, or None when inherited), plus {Class.method: parameter names}."""
    path = os.path.join(root, "bort_%s" % framework, module + ".py")
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    api = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            api[node.name] = _params(node)
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            methods = {m.name: _params(m) for m in node.body if isinstance(m, ast.FunctionDef)}
            api[node.name] = methods.get("__init__")
            for name, params in methods.items():
                if not name.startswith("_"):
                    api["%s.%s" % (node.name, name)] = params
    return api


def _excused(framework, module, name):
    cls = name.split(".")[0]
    return ("%s.%s.%s" % (framework, module, cls) in ONE_FRAMEWORK
            or "%s.%s" % (module, cls) in FRAMEWORK_SHAPED
            or ("." in name and "%s.%s.methods" % (module, cls) in FRAMEWORK_SHAPED))


def differences(module, root=ROOT):
    """What one twin's module defines and the other's does not, and the parameter lists
    that differ, each as a line."""
    apis = {fw: public_api(fw, module, root) for fw in ("gluon", "torch")}
    out = []
    for fw, other in (("gluon", "torch"), ("torch", "gluon")):
        out += ["bort_%s.%s.%s: not in bort_%s" % (fw, module, n, other)
                for n in sorted(set(apis[fw]) - set(apis[other])) if not _excused(fw, module, n)]
    out += ["%s.%s: gluon %s, torch %s" % (module, n, apis["gluon"][n], apis["torch"][n])
            for n in sorted(set(apis["gluon"]) & set(apis["torch"]))
            if apis["gluon"][n] != apis["torch"][n] and not _excused("gluon", module, n)]
    return out


@pytest.mark.parametrize("module", MODULES)
def test_the_twins_define_the_same_public_names_and_parameters(module):
    assert differences(module) == []


def test_every_exception_names_a_real_definition():
    """A renamed or removed framework-only name must leave ONE_FRAMEWORK too."""
    for key in ONE_FRAMEWORK:
        fw, module, name = key.split(".")
        assert name in public_api(fw, module), key


def test_a_difference_is_caught(tmp_path):
    src = "def get_params(model):\n    pass\n\n\ndef set_params(model, params, source=''):\n" \
          "    pass\n"
    for fw in ("gluon", "torch"):
        (tmp_path / ("bort_" + fw)).mkdir()
        (tmp_path / ("bort_" + fw) / "model.py").write_text(src)
    assert differences("model", str(tmp_path)) == []
    (tmp_path / "bort_torch" / "model.py").write_text(
        src.replace("get_params", "canonical_tensors").replace("source", "origin"))
    assert differences("model", str(tmp_path)) == [
        "bort_gluon.model.get_params: not in bort_torch",
        "bort_torch.model.canonical_tensors: not in bort_gluon",
        "model.set_params: gluon ['model', 'params', 'source'], torch ['model', 'params', 'origin']"]
