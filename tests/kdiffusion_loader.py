"""Load k-diffusion's ``sampling.py`` and ``external.py`` from the installed package, for the equivalence tests.

Why not ``import k_diffusion``: the package ``__init__`` imports its training and evaluation modules, which need
torchvision, scikit-image, clean-fid, CLIP, einops, ... -- none of which the samplers use, and none of which the
test environment installs (``pip install --no-deps k-diffusion``).

What this does instead: it registers an empty package module under a private name (``_kdiffusion_under_test``, so a
real ``import k_diffusion`` elsewhere is never shadowed) whose ``__path__`` is the installed package directory,
and executes the package's own ``utils.py``, ``sampling.py`` and ``external.py`` files in it with
``importlib.util.spec_from_file_location``. ``utils.py`` is the real one (not a stub of the helpers sampling.py
uses), so ``append_dims`` and friends are k-diffusion's own code; its only missing import,
``torchvision.transforms.functional`` (used by its PIL-image helpers, never by the samplers), is stubbed for the
duration of the load when torchvision is absent, and the stub is removed from ``sys.modules`` afterwards.
``sampling.py`` itself imports scipy, torchsde and torchdiffeq (the ``test`` extra installs them).

``load_k_diffusion()`` returns a namespace with ``sampling``, ``external`` and ``utils``, or ``None`` when
k-diffusion is not installed (the tests then skip, saying so).
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

PACKAGE = "_kdiffusion_under_test"
SKIP_REASON = ("k-diffusion is not installed (pip install --no-deps k-diffusion==0.1.1.post1; its samplers also "
               "need torchsde, torchdiffeq and scipy from the test extra)")


def _stub_torchvision() -> list[str]:
    if importlib.util.find_spec("torchvision") is not None:
        return []
    names = ["torchvision", "torchvision.transforms", "torchvision.transforms.functional"]
    for name in names:
        sys.modules[name] = types.ModuleType(name)
    sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]
    sys.modules["torchvision.transforms"].functional = sys.modules["torchvision.transforms.functional"]
    return names


def _exec_file(package: types.ModuleType, directory: Path, short: str) -> types.ModuleType:
    name = f"{PACKAGE}.{short}"
    spec = importlib.util.spec_from_file_location(name, directory / f"{short}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    setattr(package, short, module)
    return module


def load_k_diffusion():
    if PACKAGE in sys.modules:
        pkg = sys.modules[PACKAGE]
        return types.SimpleNamespace(sampling=pkg.sampling, external=pkg.external, utils=pkg.utils)
    spec = importlib.util.find_spec("k_diffusion")  # locates the package without executing its __init__
    if spec is None or not spec.submodule_search_locations:
        return None
    directory = Path(list(spec.submodule_search_locations)[0])
    package = types.ModuleType(PACKAGE)
    package.__path__ = [str(directory)]
    sys.modules[PACKAGE] = package
    stubs = _stub_torchvision()
    try:
        utils = _exec_file(package, directory, "utils")
        sampling = _exec_file(package, directory, "sampling")
        external = _exec_file(package, directory, "external")
    except Exception:
        for name in [n for n in sys.modules if n == PACKAGE or n.startswith(PACKAGE + ".")]:
            del sys.modules[name]
        raise
    finally:
        for name in stubs:
            sys.modules.pop(name, None)
    return types.SimpleNamespace(sampling=sampling, external=external, utils=utils)
