"""The stream: what a training step (kdcache's or your own) is fed, batch by batch.

Layer: above the data, recipes, cache and models; below ``kdcache.training`` and the public API,
which both stand on it (``docs/design.md``).

- :mod:`.plan`: the epoch plan (each sample's view, the chunk-aware order, the batches);
- :mod:`.images`: the image sources (the host DataLoader path; the device-resident one,
  :mod:`.device_views`);
- :mod:`.teacher_source`: the teacher sources (:mod:`.cached_teacher`, :mod:`.resident_teacher`,
  :mod:`.live_teacher`);
- :mod:`.epoch`: one epoch of :class:`~.batch.Batch` es from the three, with the replay check
  (:mod:`.replay`);
- :mod:`.evaluation`: the evaluation stream.
"""
