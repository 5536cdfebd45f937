"""K-edge XANES dataset tooling: molecule list (:mod:`.molecules`), transition-potential
Hartree-Fock spectrum generator (:mod:`.generate`, needs the ``generators`` extra),
broadening (:mod:`.broaden`), packing into the shipped file (:mod:`.pack`), a
functional-group baseline (:mod:`.baseline`) and train/predict helpers (:mod:`.learn`).

Reading the shipped data needs none of the extras: :func:`jaxmat.data.xanes.load_xanes`.
"""
