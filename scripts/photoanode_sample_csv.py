"""Write the small simulated photoanode library shipped for the README's Photoanode
Quickstart: jaxmat/data/files/photoanode/simulated_library.csv.gz.

360 samples of :func:`jaxmat.data.photoanode_sim.simulate_library` (seed 7), every 5th
Raman point (203 points, 4.8 cm⁻¹ step), 4 significant digits, in the study's CSV layout.

    python scripts/photoanode_sample_csv.py
"""
import dataclasses
import os

import numpy as np

from jaxmat.data import data_path
from jaxmat.data import photoanode as pa
from jaxmat.data import photoanode_sim as sim

N_SAMPLES, SEED, EVERY, DIGITS = 360, 7, 5, 4
OUT = data_path("photoanode", "simulated_library.csv.gz")

if __name__ == "__main__":
    table, _ = sim.simulate_library(sim.LibraryConfig(n_samples=N_SAMPLES, seed=SEED))
    keep = np.arange(0, table.spectrum.shape[1], EVERY)
    small = dataclasses.replace(table, raman_shift=table.raman_shift[keep],
                                spectrum=table.spectrum[:, keep])
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    if os.path.exists(OUT):
        os.remove(OUT)
    pa.write_table(small, OUT, digits=DIGITS)
    back = pa.read_photoanode_csv(OUT)
    print(f"wrote {OUT}: {len(back)} samples, {back.spectrum.shape[1]} Raman points, "
          f"{os.path.getsize(OUT) / 1024:.0f} kB")
