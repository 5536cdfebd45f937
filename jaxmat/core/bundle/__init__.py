"""Model bundles: one directory holds everything needed to use a trained model.

``path/bundle.json``
    ``format``, ``format_version``, ``jaxmat_version``; ``model`` (builder name, model
    name and config, nested for wrappers such as :func:`jaxmat.core.potential.potential`);
    ``graph`` (:class:`jaxmat.core.protocol.GraphSpec`); ``references`` (eV per element symbol),
    ``scale`` and ``shift`` (eV/atom) as read from the config; ``units``; ``params`` (file,
    ``n_members`` — null for a single model, M for a committee with a leading member axis —
    and the shape and dtype of every array); ``metadata`` (free JSON); optionally
    ``training`` (:func:`training_summary`: the energy range of the training structures)
    and ``calibration`` (per target ``{"scale", "power", "knee", "method", "n", "before",
    "after"}``: the committee σ recalibration fitted on validation data,
    ``σ_calibrated = scale · min(σ_raw, knee)^power · max(σ_raw / knee, 1)``,
    :func:`jaxmat.core.calibrate.apply_map`).
``path/params.npz``
    one array per params leaf, named by its '/'-joined pytree path.

Loading executes no code (JSON and ``np.load(allow_pickle=False)``): the model is rebuilt
by a registered builder (:func:`register`) from its config, and every file is checked
against the others, so an edited or incomplete bundle raises ``ValueError`` (or
``FileNotFoundError``) naming the file and the problem.

Modules: :mod:`~jaxmat.core.bundle.registry` (builders, describing and rebuilding a model),
:mod:`~jaxmat.core.bundle.files` (:func:`save`, :func:`load`, :class:`Bundle`) and
:mod:`~jaxmat.core.bundle.sections` (the ``training`` and ``calibration`` sections).
"""
from jaxmat.core.bundle.files import UNITS, Bundle, load, save
from jaxmat.core.bundle.registry import _REGISTRY, Builder, innermost_config, register
from jaxmat.core.bundle.sections import training_summary
