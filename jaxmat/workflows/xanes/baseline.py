"""Functional-group baseline for site spectra (needs RDKit).

Each absorbing site is described by its chemical environment at three levels:
2 = the site's bonds plus its neighbours' other bonds (e.g. ``O=C(C)C``: a ketone O),
1 = the site's own bonds (``O=C``: some carbonyl O), 0 = the element.  The baseline
predicts for a site the mean training spectrum of the most specific environment seen in
training (the nearest functional-group class); a molecule's prediction is the mean over its
absorbing sites, like the measured spectrum.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

_BOND = {1.0: "-", 1.5: ":", 2.0: "=", 3.0: "#"}


def _bond(b) -> str:
    return _BOND.get(b.GetBondTypeAsDouble(), "~")


def site_environments(smiles: str, atoms: Sequence[int] | None = None) -> list[tuple[str, str, str]]:
    """``(level2, level1, level0)`` environment strings of atoms of ``smiles`` (RDKit atom
    order after adding hydrogens, as in the generator); default every atom."""
    from rdkit import Chem

    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"cannot parse SMILES {smiles!r}")
    mol = Chem.AddHs(mol)
    atoms = range(mol.GetNumAtoms()) if atoms is None else atoms
    out = []
    for a in atoms:
        atom = mol.GetAtomWithIdx(int(a))
        el = atom.GetSymbol() + ("ar" if atom.GetIsAromatic() else "")
        first, second = [], []
        for b in atom.GetBonds():
            nb = b.GetOtherAtom(atom)
            tag = f"{_bond(b)}{nb.GetSymbol()}"
            first.append(tag)
            rest = sorted(f"{_bond(b2)}{b2.GetOtherAtom(nb).GetSymbol()}"
                          for b2 in nb.GetBonds() if b2.GetOtherAtom(nb).GetIdx() != atom.GetIdx())
            second.append(tag + "(" + "".join(rest) + ")")
        out.append((el + "".join(sorted(second)), el + "".join(sorted(first)), el))
    return out


class GroupMeanBaseline:
    """Mean training site spectrum per functional-group class, with fallback to coarser
    classes (see module docstring)."""

    def __init__(self):
        self.means: list[dict[str, np.ndarray]] = []

    def fit(self, envs: Sequence[tuple[str, str, str]], spectra: np.ndarray) -> GroupMeanBaseline:
        spectra = np.asarray(spectra, dtype=np.float64)
        if len(envs) != len(spectra) or len(envs) == 0:
            raise ValueError(f"{len(envs)} environments for {len(spectra)} spectra")
        self.means = []
        for level in range(3):
            acc: dict[str, list] = defaultdict(list)
            for env, s in zip(envs, spectra):
                acc[env[level]].append(s)
            self.means.append({k: np.mean(v, axis=0) for k, v in acc.items()})
        return self

    def level(self, env: tuple[str, str, str]) -> int:
        """Most specific level (2, 1, 0) known for ``env``; -1 if none."""
        for level in range(3):
            if env[level] in self.means[level]:
                return 2 - level
        return -1

    def predict(self, envs: Sequence[tuple[str, str, str]]) -> np.ndarray:
        if not self.means:
            raise ValueError("baseline is not fitted")
        fallback = np.mean(list(self.means[2].values()), axis=0)
        out = []
        for env in envs:
            for level in range(3):
                if env[level] in self.means[level]:
                    out.append(self.means[level][env[level]])
                    break
            else:
                out.append(fallback)
        return np.array(out)
