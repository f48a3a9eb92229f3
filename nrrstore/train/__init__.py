"""Training: streaming loaders over stores, student losses, teacher and student training (the replay is :mod:`nrrstore.replay`)."""
