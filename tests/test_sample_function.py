"""``skipstep.sample``: inputs refused with the reason instead of a bare IndexError or a torch error deep inside,
the model called in its own dtype (step arithmetic in float32), samples checked finite after every step, and
spacing as an explicit list."""

from __future__ import annotations

import pytest
import torch

import skipstep
from skipstep.sampling import infer_model_dtype


def zero_eps(x, t):
    return torch.zeros_like(x)


def test_a_generator_list_must_have_one_generator_per_sample():
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    with pytest.raises(ValueError, match="list of 3 generator\\(s\\) for a batch of 4 samples"):
        skipstep.sample(zero_eps, (4, 1, 8, 8), generator=gens, progress=False)
    with pytest.raises(ValueError, match="for a batch of 2"):
        skipstep.sample(zero_eps, noise=torch.zeros(2, 1, 8, 8), generator=gens, progress=False)


@pytest.mark.parametrize("kwargs", [{"shape": ()}, {"noise": torch.tensor(1.0)}, {"shape": (0, 1, 8, 8)}])
def test_a_sample_needs_a_batch_dimension(kwargs):
    with pytest.raises(ValueError, match="leading batch dimension"):
        skipstep.sample(zero_eps, progress=False, **kwargs)


def test_meta_device_models_and_samples_are_refused_with_the_reason():
    conv = torch.nn.Conv2d(1, 1, 1, device="meta")
    with pytest.raises(ValueError, match="samples cannot be drawn on the meta device"):
        skipstep.sample(zero_eps, (2, 1, 8, 8), progress=False, device="meta")
    with pytest.raises(ValueError, match="weights are on the meta device"):
        skipstep.sample(conv, (2, 1, 8, 8), progress=False)
    with pytest.raises(ValueError, match="the model returned a tensor on the meta device"):
        skipstep.sample(lambda x, t: conv(x.to("meta")), (2, 1, 8, 8), progress=False)


class RecordingModel(torch.nn.Module):
    """epsilon = 0 in the module's own dtype; remembers the dtype it was called with."""

    def __init__(self, dtype):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.zeros((), dtype=dtype))
        self.seen: list[torch.dtype] = []

    def forward(self, x, t):
        self.seen.append(x.dtype)
        return x * self.scale  # fails inside torch for a float32 x and a half parameter on some ops


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_the_model_is_called_in_its_own_dtype_and_the_steps_stay_float32(dtype):
    model = RecordingModel(dtype)
    x = skipstep.sample(model, (2, 1, 8, 8), num_steps=4, progress=False,
                        generator=torch.Generator().manual_seed(0))
    assert set(model.seen) == {dtype} and x.dtype == torch.float32 and bool(torch.isfinite(x).all())
    model.seen.clear()
    skipstep.sample(model.forward, (2, 1, 8, 8), num_steps=2, progress=False)  # a bound method: inferred too
    assert set(model.seen) == {dtype}
    # a lambda hides the module: float32 unless model_dtype says otherwise (the README's pattern)
    model.seen.clear()
    skipstep.sample(lambda x, t: model(x, t), (2, 1, 8, 8), num_steps=2, progress=False, model_dtype=dtype)
    assert set(model.seen) == {dtype}
    assert infer_model_dtype(lambda x, t: model(x, t)) is None and infer_model_dtype(model) == dtype


def test_a_half_precision_conv_unet_pattern_works_with_model_dtype():
    conv = torch.nn.Conv2d(1, 1, 1).to(torch.bfloat16)
    torch.nn.init.zeros_(conv.weight)
    torch.nn.init.zeros_(conv.bias)
    with pytest.raises(RuntimeError):  # what the README pattern did before: float32 into a bf16 conv
        conv(torch.zeros(1, 1, 8, 8))
    x = skipstep.sample(lambda x, t: conv(x), (2, 1, 8, 8), num_steps=3, progress=False, model_dtype=torch.bfloat16)
    assert x.dtype == torch.float32


def test_a_sample_that_overflows_in_the_step_arithmetic_is_an_error_naming_the_step():
    # every model output is finite, but x0_hat = (x - sigma eps) / alpha overflows float32 in the step
    huge = lambda x, t: torch.full_like(x, 1e38)  # noqa: E731
    with pytest.raises(FloatingPointError, match=r"the sample at step 0 \(t=999\) contains NaN or inf"):
        skipstep.sample(huge, (2, 1, 8, 8), eta=0.0, spacing="trailing", progress=False)  # step 0 at T - 1
    x = skipstep.sample(huge, (2, 1, 8, 8), eta=0.0, spacing="trailing", progress=False, check_finite_values=False)
    assert not bool(torch.isfinite(x).all())  # what was returned silently before


def test_spacing_may_be_an_explicit_list():
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    a = skipstep.sample(zero_eps, (2, 1, 8, 8), spacing=[999, 700, 400, 100], generator=g(), progress=False)
    b = skipstep.sample(zero_eps, (2, 1, 8, 8), timesteps=[999, 700, 400, 100], generator=g(), progress=False)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="not both"):
        skipstep.sample(zero_eps, (2, 1, 8, 8), spacing=[999, 500], timesteps=[999, 500], progress=False)
    with pytest.raises(ValueError, match="strictly descending"):
        skipstep.sample(zero_eps, (2, 1, 8, 8), spacing=[100, 999], progress=False)
