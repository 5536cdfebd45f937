"""QM9-like molecule list for the XANES dataset, filtered from the PubChem identifier
tables shipped with the MIT-licensed ``chemicals`` package (needs ``rdkit`` and
``chemicals``: the ``generators`` extra).

Kept: neutral, single-fragment molecules with 1-9 heavy atoms, all of them C, N, O or F
(hydrogens allowed), no isotopes, no radicals; deduplicated by RDKit canonical SMILES.

:func:`enumerate_list` extends the list under the same rules with molecules one RDKit edit
away from listed ones; RDKit's bundled NCI lists (:func:`reserved_smiles`) are kept out.
"""
from __future__ import annotations

import csv
import os
from collections.abc import Iterable

ALLOWED = frozenset({"C", "N", "O", "F"})
MAX_HEAVY = 9
TABLES = ("chemical identifiers pubchem large.tsv", "chemical identifiers pubchem small.tsv")
FIELDS = ("mol_id", "smiles", "pubchem_cid", "n_heavy", "n_O", "n_N", "n_C", "n_F", "stereo_of")


def canonical(smiles: str):
    """``(canonical SMILES, counts)`` if ``smiles`` passes the filter, else ``None``."""
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    mol = Chem.MolFromSmiles(smiles)
    if mol is None or "." in smiles:
        return None
    counts = {"C": 0, "N": 0, "O": 0, "F": 0}
    for atom in mol.GetAtoms():
        sym = atom.GetSymbol()
        if atom.GetIsotope() or atom.GetNumRadicalElectrons():
            return None
        if sym == "H":
            continue
        if (sym not in ALLOWED or atom.GetFormalCharge() != 0):
            return None
        counts[sym] += 1
    n_heavy = sum(counts.values())
    if not 1 <= n_heavy <= MAX_HEAVY or Chem.GetFormalCharge(mol) != 0:
        return None
    if len(Chem.GetMolFrags(mol)) != 1:
        return None
    return Chem.MolToSmiles(mol), counts


def read_tables(paths: Iterable[str] | None = None) -> list[tuple[str, str]]:
    """``(pubchem_cid, smiles)`` rows of the ``chemicals`` PubChem tables (SMILES: column 5)."""
    if paths is None:
        import chemicals

        base = os.path.join(os.path.dirname(chemicals.__file__), "Identifiers")
        paths = [os.path.join(base, t) for t in TABLES]
    rows = []
    for path in paths:
        if not os.path.exists(path):
            raise FileNotFoundError(path)
        with open(path, encoding="utf-8") as f:
            for line in f:
                parts = line.rstrip("\n").split("\t")
                if len(parts) >= 5 and parts[4]:
                    rows.append((parts[0], parts[4]))
    return rows


def _order_key(rec: dict) -> tuple:
    # small first; within a size, molecules holding both O and N first, then O-only and
    # N-only interleaved; stable on canonical SMILES
    both = rec["n_O"] > 0 and rec["n_N"] > 0
    return (rec["n_heavy"], 0 if both else 1, rec["smiles"])


def build_list(rows: Iterable[tuple[str, str]]) -> list[dict]:
    """Filter, deduplicate (canonical SMILES, first PubChem id kept) and order molecules.

    Order: heavy-atom count ascending, then molecules containing both O and N; ids
    ``mol00000``... follow this order, so a generator walking the list fills small
    molecules and both edges first.  Stereoisomers of an earlier molecule (same SMILES
    without stereo marks: same graph, and the same spectra for enantiomers) keep their row
    but name it in ``stereo_of``; the generator and the packed dataset skip them.
    """
    seen: dict[str, dict] = {}
    for cid, smi in rows:
        got = canonical(smi)
        if got is None:
            continue
        can, counts = got
        if can in seen:
            continue
        seen[can] = {"smiles": can, "pubchem_cid": cid, "n_heavy": sum(counts.values()),
                     **{f"n_{k}": v for k, v in counts.items()}}
    from rdkit import Chem

    recs = sorted(seen.values(), key=_order_key)
    flat: dict[str, str] = {}
    for k, r in enumerate(recs):
        r["mol_id"] = f"mol{k:05d}"
        key = Chem.MolToSmiles(Chem.MolFromSmiles(r["smiles"]), isomericSmiles=False)
        r["stereo_of"] = flat.setdefault(key, r["mol_id"])
        if r["stereo_of"] == r["mol_id"]:
            r["stereo_of"] = ""
    return recs


def write_list(recs: list[dict], path: str) -> None:
    """Write the list as CSV (columns :data:`FIELDS`); refuses to overwrite an existing file."""
    if os.path.exists(path):
        raise FileExistsError(f"{path} exists; remove it first to rebuild the molecule list")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        for r in recs:
            w.writerow({k: r[k] for k in FIELDS})


def read_list(path: str) -> list[dict]:
    """Read a molecule list CSV written by :func:`write_list`."""
    if not os.path.exists(path):
        raise FileNotFoundError(path)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path}: empty molecule list")
    missing = set(FIELDS[:-1]) - set(rows[0])
    if missing:
        raise ValueError(f"{path}: missing columns {sorted(missing)}")
    for r in rows:
        for k in FIELDS[3:-1]:
            r[k] = int(r[k])
        r.setdefault("stereo_of", "")
        r["stereo_of"] = r["stereo_of"] or ""
    return rows


# --------------------------------------------------------------------------- enumeration
#: bonds between these element pairs are not enumerated (peroxides, N/O-F, hydrazines' kin)
UNSTABLE = frozenset({frozenset("OO"), frozenset("OF"), frozenset("NF"), frozenset("FF")})


def reserved_smiles() -> set[str]:
    """Canonical SMILES of RDKit's bundled NCI lists (``first_5K.smi``, ``first_200``):
    reserved for independent checks, never enumerated for training."""
    from rdkit import Chem, RDConfig, RDLogger

    RDLogger.DisableLog("rdApp.*")
    base = os.path.join(RDConfig.RDDataDir, "NCI")
    out = set()
    smi = os.path.join(base, "first_5K.smi")
    if os.path.exists(smi):
        with open(smi) as f:
            for line in f:
                parts = line.split()
                mol = Chem.MolFromSmiles(parts[0]) if parts else None
                if mol is not None:
                    out.add(Chem.MolToSmiles(mol, isomericSmiles=False))
    sdf = os.path.join(base, "first_200.props.sdf")
    if os.path.exists(sdf):
        for mol in Chem.SDMolSupplier(sdf):
            if mol is not None:
                out.add(Chem.MolToSmiles(mol, isomericSmiles=False))
    if not out:
        raise FileNotFoundError(f"no NCI lists under {base}")
    return out


def _edits(mol) -> Iterable:
    """Molecules one edit away: swap a heavy atom's element (C, N, O), attach a new C, N, O
    or F by a single bond, or raise a single bond between two atoms holding H to double."""
    from rdkit import Chem

    for atom in mol.GetAtoms():
        for z in (6, 7, 8):
            if z != atom.GetAtomicNum() and not atom.GetIsAromatic():
                rw = Chem.RWMol(mol)
                rw.GetAtomWithIdx(atom.GetIdx()).SetAtomicNum(z)
                yield rw
        if atom.GetTotalNumHs() > 0 and mol.GetNumAtoms() < MAX_HEAVY:
            for z in (6, 7, 8, 9):
                rw = Chem.RWMol(mol)
                new = rw.AddAtom(Chem.Atom(z))
                rw.AddBond(atom.GetIdx(), new, Chem.BondType.SINGLE)
                yield rw
    for bond in mol.GetBonds():
        a, b = bond.GetBeginAtom(), bond.GetEndAtom()
        if (bond.GetBondType() == Chem.BondType.SINGLE and not bond.GetIsAromatic()
                and a.GetTotalNumHs() > 0 and b.GetTotalNumHs() > 0):
            rw = Chem.RWMol(mol)
            rw.GetBondWithIdx(bond.GetIdx()).SetBondType(Chem.BondType.DOUBLE)
            yield rw


def enumerate_list(seeds: Iterable[str], exclude: Iterable[str] = (), limit: int = 5000,
                   start: int = 0, prefix: str = "enu") -> list[dict]:
    """New QM9-like molecules one edit (:func:`_edits`) away from the ``seeds``, under the
    filter of :func:`canonical` (no stereo marks), without bonds of :data:`UNSTABLE`,
    with at least one O or N, and neither a seed nor in ``exclude`` (canonical SMILES, e.g.
    the existing list and :func:`reserved_smiles`).  Deterministic: candidates ordered by a hash of
    their SMILES (a uniform sample of the edits, not the first seeds' neighbours); the
    first ``limit`` get ids ``<prefix>00000``... from ``start``.  Rows as
    :func:`build_list`'s."""
    import hashlib

    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    seeds = list(seeds)
    known = set(exclude) | {c[0] for c in map(canonical, seeds) if c is not None}
    found: dict[str, dict] = {}
    for smi in seeds:
        mol = Chem.MolFromSmiles(smi)
        if mol is None:
            continue
        Chem.RemoveStereochemistry(mol)
        for rw in _edits(mol):
            try:
                new = rw.GetMol()
                Chem.SanitizeMol(new)
            except Exception:  # an edit RDKit rejects (valence): not a molecule
                continue
            if any(frozenset((b.GetBeginAtom().GetSymbol(), b.GetEndAtom().GetSymbol()))
                   in UNSTABLE for b in new.GetBonds()):
                continue
            got = canonical(Chem.MolToSmiles(new, isomericSmiles=False))
            if got is None or got[0] in known or got[0] in found:
                continue
            can, counts = got
            if counts["O"] + counts["N"] == 0:
                continue
            found[can] = {"smiles": can, "pubchem_cid": "", "n_heavy": sum(counts.values()),
                          **{f"n_{k}": v for k, v in counts.items()}, "stereo_of": ""}
    key = (lambda s: hashlib.sha256(f"jaxmat-enumerate:{s}".encode()).hexdigest())
    recs = sorted(found.values(), key=lambda r: key(r["smiles"]))[:limit]
    for k, r in enumerate(recs):
        r["mol_id"] = f"{prefix}{start + k:05d}"
    return recs
