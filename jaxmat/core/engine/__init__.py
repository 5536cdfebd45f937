"""The training engine: one loop trains a committee of 1..N members (a leading member axis
on params), one vmapped step per batch, compiled once per (model, loss, clip, EMA, shapes).

A *loss* is ``loss(outputs, batch) -> (scalar, stats)`` where ``stats`` maps a metric name
to ``(sum, count)``; ``sum / count`` over an epoch gives the metric (e.g. a MAE). Built-in
losses are frozen dataclasses (equal when their settings are, so they key the step cache),
declare the batch entries they need in ``targets`` and apply padding masks with
``jnp.where``, so NaN/inf in padded entries reach neither the loss nor its gradient.

The learning rate is an argument of the compiled step, computed on the host from each
member's step count (Adam, linear warm-up, cosine decay over the run's optimiser steps), so
runs of any length share one compiled step. The schedule's length is set in steps: given
(``steps`` or ``epochs``) or, by default, from the size of the training set
(:func:`default_steps`), and shortened to fit a wall-time budget (``max_minutes``) so that a
capped run still anneals; the plan and the time spent are saved in checkpoints. A run that
ends with its validation metric still falling warns (:func:`convergence`).
:mod:`jaxmat.core.train` (one model) and :mod:`jaxmat.core.ensemble` (committees) are thin
fronts of :func:`run`.

Modules: :mod:`~jaxmat.core.engine.losses` (losses and target checks),
:mod:`~jaxmat.core.engine.schedules` (learning rates, optimiser, default run length),
:mod:`~jaxmat.core.engine.steps` (compiled steps and evaluation) and
:mod:`~jaxmat.core.engine.loop` (:class:`FitConfig`, :func:`run`, convergence).
"""
from jaxmat.core.callbacks import Callback, Progress
from jaxmat.core.committee import first, stack_one
from jaxmat.core.engine.losses import (EnergyForceLoss, Loss, TargetLoss, check_targets,
                                       energy_force_loss, target_loss)
from jaxmat.core.engine.loop import (CONVERGE_WINDOW, CommitteeFitResult, FitConfig, FitResult,
                                     NotConvergedWarning, OneMember, Run, convergence, result, run)
from jaxmat.core.engine.schedules import (DEFAULT_BATCH, DEFAULT_MAX_STEPS, DEFAULT_MIN_STEPS,
                                          DEFAULT_PASSES, default_steps, learning_rates,
                                          make_optimizer, schedule)
from jaxmat.core.engine.steps import (compiled_eval, compiled_step, evaluate, loss_and_grads,
                                      make_step, where_members)
