"""fastnorm/_kernels.pyi describes the compiled module: it parses, names every
public function of the build, and gives each the parameters the build takes."""

import ast
import inspect
from pathlib import Path

import fastnorm
from fastnorm._build import load_kernels

STUB = Path(fastnorm.__file__).parent / "_kernels.pyi"


def _stub_signatures():
    """Name -> parameter names of each def in the stub; an alias `a = b` takes b's."""
    tree = ast.parse(STUB.read_text())
    params = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            params[node.name] = [a.arg for a in node.args.args]
        elif (isinstance(node, ast.Assign) and isinstance(node.value, ast.Name)
              and node.value.id in params):
            for target in node.targets:
                params[target.id] = params[node.value.id]
    return params


def test_the_stub_gives_every_compiled_function_its_parameters():
    kernels = load_kernels()
    compiled = {name: list(inspect.signature(getattr(kernels, name)).parameters)
                for name in dir(kernels)
                if not name.startswith("_") and callable(getattr(kernels, name))}
    assert "spatial_batchnorm_forward" in compiled and "plane_dx" in compiled
    assert _stub_signatures() == compiled


def test_the_stub_declares_the_build_constants():
    names = {t.id for node in ast.parse(STUB.read_text()).body if isinstance(node, ast.AnnAssign)
             for t in [node.target]}
    assert {"SOURCE_HASH", "ISA"} <= names
