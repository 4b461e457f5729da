"""Default listener and the listener check."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nni_lease.core._listener import PerSampleStandardize, check_listener, default_listener


@pytest.mark.parametrize(("shape", "n_classes"), [((1, 8, 8), 10), ((3, 32, 32), 10), ((1, 28, 28), 5)])
def test_default_listener_maps_inputs_to_logits(shape, n_classes):
    torch.manual_seed(0)
    listener = default_listener(shape, n_classes)
    assert listener(torch.rand(3, *shape)).shape == (3, n_classes)
    check_listener(listener, shape, n_classes)


def test_per_sample_standardize_matches_numpy_definition():
    x = torch.rand(4, 2, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 0.1
    z = PerSampleStandardize()(x)
    flat = x.flatten(1)
    expected = (flat - flat.mean(1, keepdim=True)) / (flat.std(1, unbiased=False, keepdim=True) + 1e-6)
    torch.testing.assert_close(z.flatten(1), expected)
    # Invariant to the scale of the input up to the 1e-6 in the denominator (about 3e-4 relative at this scale):
    # the explained inputs δ ⊙ x are ε-small.
    torch.testing.assert_close(PerSampleStandardize()(x * 0.1), z, rtol=1e-2, atol=1e-2)


def test_check_listener_names_the_mismatch_and_restores_mode():
    listener = default_listener((1, 8, 8), 10).train()
    with pytest.raises(ValueError, match=r"listener output must have shape \(N, n_classes\) = \(N, 7\)"):
        check_listener(listener, (1, 8, 8), 7)
    assert listener.training
    with pytest.raises(ValueError, match="listener failed on inputs of shape"):
        check_listener(nn.Linear(3, 10), (1, 8, 8), 10)
    with pytest.raises(ValueError, match="listener must be a torch.nn.Module"):
        check_listener("cnn", (1, 8, 8), 10)


@pytest.mark.parametrize(("shape", "n_classes"), [((8, 8), 10), ((1, 0, 8), 10), ((1, 8, 8), 1)])
def test_default_listener_rejects_bad_sizes(shape, n_classes):
    with pytest.raises(ValueError, match="input_shape|n_classes"):
        default_listener(shape, n_classes)
