"""fastnorm/_kernels.pyi and _output_cache.pyi describe the compiled modules: each
parses, names every public function of its module, and gives each the parameters
the module takes."""

import ast
import inspect
from pathlib import Path

import pytest

import fastnorm
from fastnorm import _output_cache
from fastnorm._build import load_kernels

STUB = Path(fastnorm.__file__).parent / "_kernels.pyi"


def _stub_signatures(stub=STUB):
    """Name -> parameter names of each def in the stub; an alias `a = b` takes b's."""
    tree = ast.parse(stub.read_text())
    params = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            params[node.name] = [a.arg for a in node.args.args]
        elif (isinstance(node, ast.Assign) and isinstance(node.value, ast.Name)
              and node.value.id in params):
            for target in node.targets:
                params[target.id] = params[node.value.id]
    return params


@pytest.mark.parametrize("stub, module, some", [
    ("_kernels.pyi", load_kernels, {"spatial_batchnorm_forward", "plane_dx"}),
    ("_output_cache.pyi", lambda: _output_cache, {"new_output", "set_output_cache"}),
])
def test_the_stub_gives_every_compiled_function_its_parameters(stub, module, some):
    kernels = module()
    compiled = {name: list(inspect.signature(getattr(kernels, name)).parameters)
                for name in dir(kernels)
                if not name.startswith("_") and callable(getattr(kernels, name))}
    assert some <= set(compiled)
    assert _stub_signatures(STUB.with_name(stub)) == compiled


def test_the_stub_declares_the_build_constants():
    names = {t.id for node in ast.parse(STUB.read_text()).body if isinstance(node, ast.AnnAssign)
             for t in [node.target]}
    assert {"SOURCE_HASH", "ISA"} <= names
