"""The engine behind the metrics: per-sample Gram matrices and directional products of the logits' Jacobian.

- :mod:`~art_fisher.metrics._engine._network`: the model as a function of (selected parameters, input);
- :mod:`~art_fisher.metrics._engine._recorder`: the hook coverage (which parameters the hooks handle) and the one
  forward-hook recorder;
- :mod:`~art_fisher.metrics._engine._layers`: one rule per layer type (Linear, Conv2d, BatchNorm, LayerNorm,
  directly used parameters);
- :mod:`~art_fisher.metrics._engine._grams`: the per-tensor Gram matrices and directional products, hooks and
  ``torch.func`` together;
- :mod:`~art_fisher.metrics._engine._chunking`: how many samples each pass takes.
"""
