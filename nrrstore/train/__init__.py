"""Training side: augmentation replay, streaming loaders, losses, teacher and student training."""
