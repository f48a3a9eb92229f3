"""Labels of a store's views: DBR relabeling (``relabel``) and the replay check (``replay_check``).

Relabeling renders every (image, epoch) view with the replay (:mod:`nrrstore.replay`) and stores what the
teacher says about it; the replay check recomputes a sample of those labels to prove they fit the images.
"""
