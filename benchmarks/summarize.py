"""Rebuild benchmarks/README.md from the tables in benchmarks/results/*.md.

    python benchmarks/summarize.py
"""
from __future__ import annotations

import glob
import os

HERE = os.path.dirname(os.path.abspath(__file__))
ORDER = ["speed", "ab_speed", "fit_speed", "ab_fit_speed", "peers", "peers_single_core",
         "peers_periodic_single_core", "peers_mace_mlip", "peers_mace_mlip_keep", "scale", "host_memory", "host_memory_schnet",
         "host_memory_committee", "md_speed", "attack_speed", "ab_attack_speed", "ab_i23_speed",
         "ab_i23_fit_speed", "ab_i23_attack_speed", "ab_i23_md_speed", "ab_i23_md_speed_core",
         "ab_md_detector_speed", "ab_i24_md_speed",
         "cli_overhead", "mlearn", "committee", "ammonia_committee",
         "robustness_protocol_nh3", "robustness_protocol_nh3_validation", "robustness_nh3",
         "robustness_nh3_validation", "robustness_alanine", "oracle_throughput",
         "adversarial_ammonia", "adversarial_data", "adversarial_ammonia_large",
         "adversarial_data_large", "adversarial_data_large_55", "photoanode", "photoanode_directions", "xanes",
         "xanes_levers_O", "xanes_levers_O40", "xanes_levers_N", "xanes_inverse_O",
         "xanes_inverse_O40", "xanes_inverse_N", "xanes_throughput_cpu", "xanes_single_check",
         "xanes_committee", "xanes_committee_N", "xanes_committee_painn", "xanes_curve",
         "crystal", "mlearn_painn_equal", "mlearn_painn_equal_check", "mlearn_painn",
         "calibration_forms", "md_detector_full", "md_detector_power", "md_detector_alanine"]

HEADER = """# Benchmarks

Each script writes `results/<name>.json` (all numbers, settings, device) and `results/<name>.md`
(the table below). Rebuild this page with `python benchmarks/summarize.py`.
Timings are medians over repeats; ratios are measured side by side in one run. The CPU machine
is a shared 2-core VM: its load average is recorded in every JSON file.

| script | what it measures |
|---|---|
| `speed.py` | training/inference throughput, compilations per epoch (ammonia, mlearn-Si) |
| `fit_speed.py` | epoch time of the training loops users call (`train.fit`, `ensemble.fit`) |
| `ab.py` | any of these side by side against an earlier commit, alternated rounds (`results/ab_*.md`) |
| `peers/schnet_peers.py` | jaxmat vs SchNetPack vs PyG SchNet, alternated A/B (separate torch env: `peers/setup.sh`) |
| `peers/mace_mlip_speed.py` | one mlip MACE and its jaxmat import (the same weights): agreement and inference throughput, alternated, one core (separate env: `peers/setup_mlip.sh`) |
| `mlearn.py` | SchNet test MAE on the six mlearn elements beside published figures |
| `committee.py`, `ammonia_committee.py` | vmapped committees: cost vs size, accuracy and calibration |
| `adversarial_ammonia.py` | adversarial active learning on NH3 with GFN2-xTB |
| `adversarial_data.py` | the same label sets (and test-distribution MD labels) retrained from scratch |
| `photoanode.py` | composition + Raman CNN accuracy, gradient fidelity, interpretation time |
| `xanes.py`, `xanes_curve.py` | structure → K-edge XANES peak metrics; their learning curve |
| `xanes_committee.py` | XANES committee size and backbone (SchNet/PaiNN), chosen on the validation split |
| `crystal.py`, `mlearn_painn.py` | ALIGNN-style / PaiNN on JARVIS samples and mlearn (`--epochs 20 --schnet --out mlearn_painn_equal`: equal training beside SchNet) |
| `scale.py` | host (vesin) and on-device neighbour lists, SchNet E+F+S on Si supercells to 32,768 atoms: time, atoms/s, peak memory |
| `md_speed.py` | `jaxmat.md` replicas vs the ASE calculator loop (NH3, 4,096-atom Si), NVE drift of a trained potential |
| `attack_speed.py` | attacked geometry-steps/s of an 8-member committee (NH3, periodic Si) |
| `cli_overhead.py` | `jaxmat train` against the same training through the Python API |
| `oracle_throughput.py` | GFN2-xTB labels/s through the store: serial, threads, 1 and 2 worker processes |
| `robustness.py` | success of NN-driven MD vs oracle calls: adversarial, random, normal-mode and committee-MD sampling on one protocol (equal labels and training per round, baselines tuned on validation seeds, 10 seeds, two criteria, paired CIs); `robustness_nh3*` are the earlier, unequal-schedule runs |
| `xanes_levers.py`, `xanes_inverse.py`, `xanes_throughput.py` | XANES model levers on validation (precision and recall), the inverse problem, spectra/s |
| `import_time.py` | `import jax` vs `import jaxmat` (and with predict / train), fresh interpreters, alternated, pinned; `--base REV` beside an earlier commit |
| `defaults.py` | `jaxmat train` defaults vs best recipe vs old defaults (GFN2-xTB molecules, ammonia), committee σ calibration on test |
| `md_detector.py` | the MD failure detector against a GFN2-xTB oracle: recall, false alarms, delay; thresholds chosen on validation replicas |
| `mace.py`, `mace_libs.py` | MACE vs SchNet accuracy and speed; one interaction layer on cuequivariance-jax vs e3nn-jax |
| `xanes_peaks.py`, `xanes_ship.py` | gridded vs peak-preserving transition head, combiner and committee size on validation; shipping and fresh-predict time |
| `photoanode_directions.py` | total-effect ranking, confounder flags and the hull-boundary warning on fresh simulated libraries |
| `calibration_forms.py` | committee σ recalibration: one scale (NLL, median) vs a power law a σ^b, chosen on validation folds, scored on test |
| `gpu.sh` | the GPU run: speed, committee, attack, MD, scale, XANES in at most 8 minutes (`results/gpu/`) |
"""


def main() -> None:
    tables = {os.path.splitext(os.path.basename(p))[0]: p for p in glob.glob(os.path.join(HERE, "results", "*.md"))}
    names = [n for n in ORDER if n in tables] + sorted(set(tables) - set(ORDER))
    parts = [HEADER]
    for n in names:
        with open(tables[n]) as f:
            parts.append(f"## {n}\n\n{f.read().strip()}\n")
    with open(os.path.join(HERE, "README.md"), "w") as f:
        f.write("\n".join(parts))


if __name__ == "__main__":
    main()
