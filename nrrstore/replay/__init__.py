"""The augmentation replay: everything needed to rebuild the exact views that a store's labels describe.

A store keeps two numbers per (image, epoch) view, not the view, so the teacher (relabeling) and the student
(the loader) must render the same pixels from the same recipe. ``recipe`` (the recipe, epoch plans and view
parameters), ``views`` (parameter columns), ``render`` (the batched renderer of recipe version 2 and the
version dispatch), ``render_v1`` (the per-view renderer of version-1 stores) and ``stream`` (decoding
workers to rendered batches) are that contract; the manifest records the recipe.
"""
