"""Random draws that replay bit for bit on every platform, shared by `distill` and `train`.

- :mod:`~nrrstore.sampling.rng`: the counter-based Philox4x32-10 generator (a pure function of
  seed and counter, checked against Random123's known answers);
- :mod:`~nrrstore.sampling.exactmath`: log and exp from correctly rounded IEEE operations only;
- :mod:`~nrrstore.sampling.crops`: the one RandomResizedCrop sampler, used by CIDD's crop boxes and
  by the augmentation replay's views.

Why below both: CIDD's boxes and the student's views are the same kind of draw, and a store's
labels are only as reproducible as the numbers behind them.
"""
