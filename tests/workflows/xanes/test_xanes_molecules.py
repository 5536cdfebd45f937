"""Enumerating QM9-like molecules under the molecule list's rules."""
import pytest

pytest.importorskip("rdkit")

from jaxmat.workflows.xanes import molecules as mols  # noqa: E402


def test_enumerated_molecules_obey_the_rules_and_exclusions():
    seeds = ["CCO", "CC(C)=O", "c1ccncc1", "CC#N"]
    recs = mols.enumerate_list(seeds, exclude={"CCN"}, limit=10_000)
    smiles = [r["smiles"] for r in recs]
    assert len(smiles) == len(set(smiles)) > 30
    assert "CCN" not in smiles and "CCO" not in smiles and "CC#N" not in smiles  # excluded, seeds
    assert "CCCO" in smiles and "OCCO" in smiles and "CC=O" in smiles  # add C, add O, C=O
    for r in recs:
        can, counts = mols.canonical(r["smiles"])
        assert can == r["smiles"] and 1 <= r["n_heavy"] <= mols.MAX_HEAVY
        assert r["n_O"] + r["n_N"] > 0 and r["mol_id"].startswith("enu")
        assert "OO" not in r["smiles"] and "@" not in r["smiles"]
    # deterministic, and limit/start give a prefix with shifted ids
    again = mols.enumerate_list(seeds, exclude={"CCN"}, limit=5, start=7)
    assert [r["smiles"] for r in again] == smiles[:5] and again[0]["mol_id"] == "enu00007"


def test_reserved_nci_list_is_excluded():
    reserved = mols.reserved_smiles()
    assert len(reserved) > 1000
    seeds = sorted(s for s in reserved if mols.canonical(s) is not None)[:30]
    recs = mols.enumerate_list(seeds, exclude=reserved, limit=100_000)
    assert recs and not {r["smiles"] for r in recs} & reserved
