"""Inception ``.pth`` weights are read with ``torch.load(weights_only=True)`` by skipstep itself, before any
third-party loader sees the file: a pickle that would run code is refused, on any torch version."""

from __future__ import annotations

import pytest
import torch

from skipstep.lab.fid import FeatureNetworkError, InceptionFeatures, load_plain_state_dict


class RunsCodeWhenUnpickled:
    def __init__(self, flag_file):
        self.flag_file = str(flag_file)

    def __reduce__(self):
        return (open, (self.flag_file, "w"))  # creating the file is the "code" that would run


def test_a_pickle_of_objects_is_refused_and_never_runs(tmp_path):
    flag = tmp_path / "code-ran"
    weights = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save({"fc.weight": torch.zeros(2), "payload": RunsCodeWhenUnpickled(flag)}, weights)
    with pytest.raises(FeatureNetworkError, match="not a plain tensor state dict.*never unpickles objects"):
        InceptionFeatures(weights)
    with pytest.raises(FeatureNetworkError):
        load_plain_state_dict(weights)
    assert not flag.exists()


def test_a_plain_state_dict_loads(tmp_path):
    weights = tmp_path / "w.pth"
    torch.save({"a": torch.arange(3.0)}, weights)
    assert torch.equal(load_plain_state_dict(weights)["a"], torch.arange(3.0))
    torch.save([torch.zeros(1)], weights)
    with pytest.raises(FeatureNetworkError, match="not a state dict of tensors"):
        load_plain_state_dict(weights)
