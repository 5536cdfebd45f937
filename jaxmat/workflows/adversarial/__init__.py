"""Adversarial sampling: attacks on committee uncertainty (:mod:`.attack`), selection
(:mod:`.select`), labelling oracles (:mod:`.oracle`), the label store (:mod:`.store`) and
the resumable active-learning loop (:mod:`.active`)."""
