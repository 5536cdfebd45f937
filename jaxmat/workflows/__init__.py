"""Workflows on top of the core: interpretation gradients (:mod:`.interpret`) and the
photoanode net's staged training (:mod:`.photoanode`); structure → spectrum
(:mod:`.spectra`, :mod:`.xanes`); adversarial sampling (:mod:`.adversarial`)."""
