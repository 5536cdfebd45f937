"""Oracles: reference calculations that label structures (energy eV, forces eV/Å,
stress eV/Å³ when periodic).

Any ASE calculator becomes an :class:`Oracle` through a factory (a fresh calculator per
label, so no state leaks between structures). Every :class:`Label` carries the oracle's
name and settings; a calculation that raises (SCF not converged, library error) or returns
non-finite numbers gives a *failed* label with the error text instead of an exception.

Adapters: :func:`xtb` (GFN1/GFN2-xTB through ``tblite``, optional extra ``oracles``),
:func:`pyscf` (HF/DFT through PySCF, optional), :func:`double_well` (analytic 1-D toy
``E = 5x⁴ − 10x² + 1.5x`` of each atom's x coordinate).

Oracles pickle (their factories are module-level callables), so they label in other
processes: :func:`local_pool` makes the process pool the active-learning loop uses by
default; any ``concurrent.futures.Executor`` works the same way.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np
from ase.calculators.calculator import Calculator, all_changes


@dataclasses.dataclass
class Label:
    """The outcome of one oracle call. ``ok`` False means failed (``error`` says why)."""

    ok: bool
    energy: float | None = None
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None
    error: str | None = None
    seconds: float = 0.0
    oracle: str = ""
    settings: dict = dataclasses.field(default_factory=dict)

    def attach(self, atoms: Any) -> Any:
        """A copy of ``atoms`` carrying this label in a single-point calculator."""
        from ase.calculators.singlepoint import SinglePointCalculator

        a = atoms.copy()
        a.calc = None
        if self.ok:
            res = {"energy": self.energy, "forces": self.forces}
            if self.stress is not None:
                res["stress"] = self.stress
            a.calc = SinglePointCalculator(a, **res)
        return a


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (np.integer, np.floating, np.bool_)):
        return v.item()
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    return repr(v)


class Oracle:
    """Label structures with an ASE calculator made by ``factory()`` for every call.

    ``name`` identifies the level of theory (e.g. ``"tblite:GFN2-xTB"``); ``settings`` is a
    JSON-able dict stored with every label. ``properties`` are requested from the
    calculator (``stress`` only for periodic structures). ``threads`` caps the OpenMP
    threads of the calculation (``threadpoolctl``; None leaves them alone): small molecules
    run far faster on one thread, and a loaded machine makes spinning OpenMP threads crawl.

    To label in worker processes the oracle is pickled: ``factory`` must then be picklable
    (a module-level class or function, or a ``functools.partial`` of one; not a lambda).
    ``calls`` counts the calls made in this process only.
    """

    def __init__(self, name: str, factory: Callable[[], Calculator], settings: dict | None = None,
                 properties: tuple[str, ...] = ("energy", "forces", "stress"),
                 threads: int | None = None):
        if not callable(factory):
            raise ValueError("an oracle needs a callable that returns an ASE calculator")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1 or None, got {threads}")
        self.name = str(name)
        self.factory = factory
        self.settings = _jsonable(dict(settings or {}))
        self.properties = tuple(properties)
        self.threads = threads
        self.calls = 0
        self._pools = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_pools"] = None  # a thread-pool controller belongs to one process
        return state

    def limit_threads(self):
        """Context capping OpenMP threads at ``threads`` (no-op when None)."""
        if self.threads is None:
            return contextlib.nullcontext()
        if self._pools is None:
            from threadpoolctl import ThreadpoolController

            self._pools = ThreadpoolController()
        return self._pools.limit(limits=self.threads, user_api="openmp")

    @classmethod
    def from_calculator(cls, calc: Calculator, name: str | None = None) -> "Oracle":
        """Wrap an existing calculator instance (reused for every label; its ``parameters``
        become the recorded settings)."""
        params = dict(getattr(calc, "parameters", {}) or {})
        return cls(name or type(calc).__name__, _Same(calc), params)

    def describe(self) -> dict:
        return {"name": self.name, "settings": self.settings}

    @property
    def settings_json(self) -> str:
        return json.dumps(self.settings, sort_keys=True)

    def label(self, atoms: Any) -> Label:
        """Run the calculator on a copy of ``atoms``; never raises for a failed calculation."""
        self.calls += 1
        t0 = time.perf_counter()
        meta = {"oracle": self.name, "settings": self.settings}
        try:
            a = atoms.copy()
            # one shared calculator instance (from_calculator) labels one structure at a time
            with getattr(self.factory, "lock", None) or contextlib.nullcontext(), \
                    self.limit_threads():
                a.calc = self.factory()
                energy = float(a.get_potential_energy())
                forces = (np.asarray(a.get_forces(), dtype=np.float64)
                          if "forces" in self.properties else None)
                stress = None
                if "stress" in self.properties and a.pbc.any():
                    stress = np.asarray(a.get_stress(voigt=True), dtype=np.float64)
        except Exception as err:  # noqa: BLE001  (any failure becomes a failed label)
            msg = f"{type(err).__name__}: {err}".strip()
            if not str(err):
                msg += " | " + traceback.format_exc(limit=2).replace("\n", " ")
            return Label(False, error=msg[:2000], seconds=time.perf_counter() - t0, **meta)
        bad = [n for n, v in (("energy", energy), ("forces", forces), ("stress", stress))
               if v is not None and not np.all(np.isfinite(v))]
        if bad:
            return Label(False, error=f"non-finite {', '.join(bad)} from {self.name}",
                         seconds=time.perf_counter() - t0, **meta)
        return Label(True, energy, forces, stress, None, time.perf_counter() - t0, **meta)

    __call__ = label

    def __repr__(self) -> str:
        return f"Oracle({self.name!r}, {self.settings})"


class _Same:
    """A factory returning one calculator instance (picklable when the calculator is), with
    the lock that keeps threads from interleaving on it (an ASE calculator keeps the last
    structure's results: two threads would read each other's forces)."""

    def __init__(self, calc: Calculator):
        self.calc = calc
        self.lock = threading.Lock()

    def __getstate__(self) -> dict:
        return {"calc": self.calc}

    def __setstate__(self, state: dict) -> None:
        self.calc, self.lock = state["calc"], threading.Lock()

    def __call__(self) -> Calculator:
        return self.calc


# --------------------------------------------------------------------------- worker pools
def local_pool(workers: int, threads: int | None = 1):
    """A ``ProcessPoolExecutor`` of ``workers`` fresh (spawned) processes for labelling.

    Each worker caps OpenMP/BLAS threads at ``threads`` (environment variables set before
    any calculator library loads; None leaves them alone) and exits when the process that
    made the pool dies (checked every second), so a killed loop leaves no orphan
    calculations. Spawned, not forked: forking a process that runs JAX can deadlock. A
    script whose oracle classes live in its own ``__main__`` must guard its entry point
    with ``if __name__ == "__main__":`` (the workers import it).
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    if int(workers) < 1:
        raise ValueError(f"a process pool needs workers >= 1, got {workers}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1 or None, got {threads}")
    return ProcessPoolExecutor(int(workers), mp_context=multiprocessing.get_context("spawn"),
                               initializer=_worker_init, initargs=(os.getpid(), threads))


_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _worker_init(parent: int, threads: int | None) -> None:
    if threads is not None:
        for var in _THREAD_VARS:
            os.environ[var] = str(threads)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)  # the loop died: stop computing labels nobody will store

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:  # pragma: no cover
        return "unknown"


# --------------------------------------------------------------------------- GFN-xTB (tblite)
def xtb(method: str = "GFN2-xTB", accuracy: float = 1.0, electronic_temperature: float = 300.0,
        max_iterations: int = 250, charge: float | None = None,
        multiplicity: int | None = None, threads: int | None = 1) -> Oracle:
    """GFN1/GFN2-xTB through ``tblite`` (``pip install tblite``; extra ``oracles``).

    ``electronic_temperature`` in K. Output is silenced (``verbosity=0``). ``threads``
    OpenMP threads per calculation (1: best for small molecules; None: tblite's default).
    """
    try:
        import tblite.ase  # noqa: F401  (imported again where the labels are computed)
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("the xtb oracle needs tblite: pip install 'jaxmat[oracles]'") from err
    if method not in ("GFN1-xTB", "GFN2-xTB", "IPEA1-xTB"):
        raise ValueError(f"unknown tblite method {method!r}")
    settings = dict(method=method, accuracy=accuracy, electronic_temperature=electronic_temperature,
                    max_iterations=max_iterations, charge=charge, multiplicity=multiplicity)
    return Oracle(f"tblite:{method}", functools.partial(_tblite, **settings),
                  {**settings, "tblite_version": _version("tblite")}, threads=threads)


def _tblite(**settings: Any) -> Calculator:
    from tblite.ase import TBLite

    return TBLite(verbosity=0, **settings)


# --------------------------------------------------------------------------- PySCF
class PySCFCalculator(Calculator):
    """Minimal ASE calculator for molecules with PySCF: HF (``xc=None``) or Kohn–Sham DFT.

    Raises on an unconverged SCF, so that an :class:`Oracle` records a failed label.
    """

    implemented_properties = ["energy", "forces"]
    default_parameters = dict(xc="pbe", basis="def2-svp", charge=0, spin=0, conv_tol=1e-9,
                              max_cycle=100, grid_level=3)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        from ase.units import Bohr, Hartree
        from pyscf import dft, gto, scf

        super().calculate(atoms, properties, system_changes)
        if self.atoms.pbc.any():
            raise ValueError("PySCFCalculator handles molecules only (no periodic boundaries)")
        p = self.parameters
        mol = gto.M(atom=[(s, tuple(x)) for s, x in zip(self.atoms.get_chemical_symbols(),
                                                        self.atoms.positions)],
                    unit="Angstrom", basis=p["basis"], charge=p["charge"], spin=p["spin"],
                    verbose=0)
        restricted = p["spin"] == 0
        if p["xc"] in (None, "hf", "HF"):
            mf = scf.RHF(mol) if restricted else scf.UHF(mol)
        else:
            mf = dft.RKS(mol) if restricted else dft.UKS(mol)
            mf.xc = p["xc"]
            mf.grids.level = p["grid_level"]
        mf.conv_tol = p["conv_tol"]
        mf.max_cycle = p["max_cycle"]
        e = mf.kernel()
        if not mf.converged:
            raise RuntimeError(f"PySCF SCF not converged in {p['max_cycle']} cycles")
        grad = mf.nuc_grad_method().kernel()
        self.results["energy"] = float(e) * Hartree
        self.results["free_energy"] = self.results["energy"]
        self.results["forces"] = -np.asarray(grad) * Hartree / Bohr


def pyscf(xc: str | None = "pbe", basis: str = "def2-svp", charge: int = 0, spin: int = 0,
          conv_tol: float = 1e-9, max_cycle: int = 100, threads: int | None = None) -> Oracle:
    """HF (``xc=None``) or DFT with PySCF (optional dependency; extra ``oracles``);
    ``threads`` caps PySCF's OpenMP threads."""
    try:
        import pyscf as _pyscf  # noqa: F401
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("the pyscf oracle needs PySCF: pip install 'jaxmat[oracles]'") from err
    settings = dict(xc=xc, basis=basis, charge=charge, spin=spin, conv_tol=conv_tol,
                    max_cycle=max_cycle)
    name = f"pyscf:{'HF' if xc in (None, 'hf', 'HF') else xc}/{basis}"
    return Oracle(name, functools.partial(PySCFCalculator, **settings),
                  {**settings, "pyscf_version": _version("pyscf")}, ("energy", "forces"), threads)


# --------------------------------------------------------------------------- analytic toy
class DoubleWell(Calculator):
    """``E = Σ_atoms a x⁴ − b x² + c x`` of each atom's x coordinate (eV, x in Å);
    forces along x only. Defaults ``a, b, c = 5, 10, 1.5``: the lower well near x = −1.04
    (E = −6.53 eV), the upper well near x = 0.96 (E = −3.53 eV), the barrier near x = 0.075."""

    implemented_properties = ["energy", "forces"]
    default_parameters = dict(a=5.0, b=10.0, c=1.5)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        a, b, c = (self.parameters[k] for k in "abc")
        x = self.atoms.positions[:, 0]
        if not np.all(np.isfinite(x)):
            raise ValueError("non-finite coordinate")
        self.results["energy"] = float(np.sum(a * x**4 - b * x**2 + c * x))
        f = np.zeros((len(x), 3))
        f[:, 0] = -(4 * a * x**3 - 2 * b * x + c)
        self.results["forces"] = f
        self.results["free_energy"] = self.results["energy"]


def double_well_energy(x: Any, a: float = 5.0, b: float = 10.0, c: float = 1.5) -> np.ndarray:
    """The double-well energy (eV) at coordinates ``x`` (Å)."""
    x = np.asarray(x, dtype=np.float64)
    return a * x**4 - b * x**2 + c * x


def double_well(a: float = 5.0, b: float = 10.0, c: float = 1.5) -> Oracle:
    """Analytic oracle for the 1-D double well ``a x⁴ − b x² + c x`` (eV, x in Å)."""
    return Oracle("analytic:double-well", functools.partial(DoubleWell, a=a, b=b, c=c),
                  {"a": a, "b": b, "c": c}, ("energy", "forces"))

