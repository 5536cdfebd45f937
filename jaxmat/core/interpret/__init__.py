"""Interpretation gradients of any protocol model (Umehara et al., npj Comput. Mater. 5:34, 2019).

Every tool differentiates one scalar per sample, ``output`` of ``model.apply`` times
``scale`` (e.g. the target's standard deviation, to report mW/cm² from a standardised
model), with respect to one input leaf ``wrt`` of the batch: a dict key (``"composition"``,
``"spectrum"``) or a path into a graph batch (``("nodes", "positions")``). Samples must not
interact (true for every model here in eval mode), so one ``jax.grad`` of the masked sum
gives all per-sample gradients. Gradients carry the output's units per input unit
(e.g. mW/cm² per unit fraction; × 0.01 gives per 1 at.%).

Composition gradients are also given as directional derivatives on the simplex: add
element X at the expense of all others (in proportion to their fractions) or of a named
host. Committee tools take stacked params (:mod:`jaxmat.core.ensemble`) and ``vmap`` over
members. :func:`total_gradients` lets the spectrum move with composition through a learned
composition → spectrum model; :func:`confounding_check` flags elements whose effect at fixed
spectrum and total effect disagree, and :func:`spectrum_fit` says how well that model fits
held-out spectra (per band). :func:`suggest_directions` ranks alloying directions (inside
the training hull by default; by the total effect when given the spectrum model) and
:func:`boundary_report` says where the reference sits in the training hull.
:func:`band_attribution` reads a spectrum saliency per band as shift vs width. Plotting
helpers import matplotlib lazily.
"""
from jaxmat.core.interpret.bands import band_attribution, band_table, find_bands
from jaxmat.core.interpret.boundary import (
    BOUNDARY_MIN_INSIDE, Boundary, alloying_steps, boundary_report, hull_distance, hull_room,
    in_convex_hull)
from jaxmat.core.interpret.confounding import (
    GAP_MIN_SHARE, GAP_Z, SPECTRUM_FIT_MIN_R2, ConfoundingReport, confounding_check,
    confounding_table, flag_confounding, gap_verdict, spectrum_fit, spectrum_fit_warning,
    total_gradients)
from jaxmat.core.interpret.directions import Directions, suggest_directions
from jaxmat.core.interpret.gradients import (
    Path, committee, committee_stats, cosine_similarity, direction, explain, get_leaf,
    gradient_correlation, input_gradients, integrated_gradients, sample_mask, scalar_fn,
    set_leaf, simplex_derivatives, smoothgrad, tangent)
from jaxmat.core.interpret.plots import (
    plot_composition_map, plot_correlation, plot_spectrum_saliency)
