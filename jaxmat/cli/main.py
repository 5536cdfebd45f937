"""Entry point of the ``jaxmat`` command (``[project.scripts]``): argument parsing and error
reporting. User errors (bad config, missing file, absent label, refused directory) print
one line ``jaxmat <command>: error: ...`` and exit with status 1 (``--traceback`` shows the
trace); an interruption exits with 130."""
from __future__ import annotations

import argparse
import json
import sys

USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, IsADirectoryError,
               NotADirectoryError, ImportError)


def parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    ap = argparse.ArgumentParser(
        prog="jaxmat", formatter_class=fmt,
        description="Train, evaluate and run machine-learned potentials. Units: energy eV, "
                    "length Å, forces eV/Å, stress eV/Å³, time fs, temperature K.")
    ap.add_argument("--traceback", action="store_true",
                    help="show the Python traceback of an error")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", formatter_class=fmt, help="train a potential from a config file",
                       description="Train a potential as the TOML/YAML config says (sections "
                       "data, model, loss, fit; see examples/train_schnet.toml) and write the "
                       "run directory `output`: model/ (bundle), config.toml, metrics.csv "
                       "(metric names carry units: eV_per_atom, eV_per_A, eV_per_A3), "
                       "tensorboard/, checkpoints/, metrics.json, plots. Rerunning on the "
                       "same output resumes from the checkpoints.")
    t.add_argument("config", help="TOML or YAML train config")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config setting, e.g. --set fit.epochs=10 (repeatable)")
    t.add_argument("--overwrite", action="store_true",
                   help="replace an existing run (finished or not) in the output directory")
    t.add_argument("--max-epochs", type=int, default=None,
                   help="stop this call after this many epochs (the LR schedule still "
                        "follows fit.steps / fit.epochs); rerun to continue")
    t.add_argument("--log-every", type=float, default=30.0, metavar="SECONDS",
                   help="without a terminal: one progress line per this many seconds")
    t.add_argument("--checkpoint-every", type=float, default=60.0, metavar="SECONDS",
                   help="at most one checkpoint per this many seconds (at fit.checkpoint_every "
                        "epoch multiples; always at the end); 0: every fit.checkpoint_every "
                        "epochs")
    t.add_argument("--no-tensorboard", action="store_true", help="write no TensorBoard files")

    e = sub.add_parser("eval", formatter_class=fmt, help="errors of a model on labelled data",
                       description="MAE and RMSE of energy (eV per structure and eV/atom), "
                       "force components (eV/Å) and stress components (eV/Å³) of a bundle on "
                       "labelled structures; committee σ calibration (NLL, Spearman, "
                       "miscalibration area, 68/95 %% coverage) for committees, with the raw σ "
                       "and the σ recalibrated as the bundle stores it.")
    e.add_argument("model", help="model bundle directory (e.g. runs/x/model)")
    e.add_argument("data", help="ASE-readable file of labelled structures")
    e.add_argument("--index", default=":", help="ASE index of the structures to use")
    for kind, unit in (("energy", "eV"), ("forces", "eV/Å"), ("stress", "eV/Å³")):
        e.add_argument(f"--{kind}-key", default=None,
                       help=f"key of the {kind} label ({unit}); default: the calculator or "
                            "a conventional key (REF_energy, ...)")
    e.add_argument("--batch-size", type=int, default=32, help="structures per batch")
    e.add_argument("--json", dest="json_out", default=None, metavar="FILE",
                   help="write the metrics as JSON to FILE ('-': stdout)")
    e.add_argument("--parity", default=None, metavar="PNG", help="write a parity plot")

    m = sub.add_parser("md", formatter_class=fmt, help="molecular dynamics with a model",
                       description="Jitted MD (jaxmat.md) with a bundle: nve (velocity Verlet), "
                       "nvt (Langevin) or npt (Langevin + Berendsen barostat; periodic cells, "
                       "model with stress), for --replicas copies at once. A failure detector "
                       "stops replicas that leave physical space (energy outside the bundle's "
                       "training range, covalent topology change, calibrated committee σ, "
                       "close contacts, bond stretch, non-finite values); a summary table "
                       "ends the run and the failure report goes to TRAJECTORY.failures.json. "
                       "Committees log their energy σ (eV) and largest force σ (eV/Å).")
    m.add_argument("model", help="model bundle directory")
    m.add_argument("structure", help="ASE-readable start structure")
    m.add_argument("--index", default="0", help="ASE index of the start structure in the file")
    m.add_argument("--ensemble", choices=("nve", "nvt", "npt"), default="nvt")
    m.add_argument("--temperature", type=float, default=300.0, help="temperature (K)")
    m.add_argument("--timestep", type=float, default=0.5, help="time step (fs)")
    m.add_argument("--steps", type=int, default=1000, help="number of MD steps")
    m.add_argument("--replicas", type=int, default=1,
                   help="copies of the structure run together (own velocities and noise; "
                        "trajectories NAME_r{k}.ext when > 1)")
    m.add_argument("--interval", type=int, default=10, help="steps between frames/log rows")
    m.add_argument("--friction", type=float, default=0.01, help="Langevin friction (1/fs)")
    p = m.add_mutually_exclusive_group()
    p.add_argument("--pressure", type=float, default=0.0, help="NPT pressure (eV/Å³)")
    p.add_argument("--pressure-gpa", type=float, default=None, metavar="GPA",
                   help="NPT pressure in GPa (instead of --pressure)")
    m.add_argument("--taup", type=float, default=1000.0, help="NPT barostat time (fs)")
    m.add_argument("--seed", type=int, default=0, help="seed of velocities and Langevin noise")
    m.add_argument("--trajectory", default="md.extxyz",
                   help="output trajectory (.extxyz/.xyz or .traj)")
    m.add_argument("--log", default="md.csv",
                   help="output log (CSV, one row per replica and interval, written as the "
                        "run goes)")
    m.add_argument("--progress-every", type=float, default=30.0, metavar="SECONDS",
                   help="one progress line on stderr per this many seconds")
    c = m.add_argument_group("failure criteria (jaxmat.md.FailureCriteria; defaults there, "
                             "chosen on validation replicas); 'off' or --off NAME switches one "
                             "off")
    for flag, field, unit in (
            ("--min-distance", "min_distance", "Å: closest allowed pair"),
            ("--bond-break", "bond_break", "× covalent radii sum: a starting bond stretched"),
            ("--energy-margin", "energy_margin", "eV/atom beyond the training energy range"),
            ("--topology-time", "topology_time_fs", "fs a changed covalent graph may last"),
            ("--max-force-sigma", "max_forces_std", "eV/Å: calibrated committee force σ"),
            ("--max-energy-sigma", "max_energy_std", "eV: calibrated committee energy σ")):
        c.add_argument(flag, dest=field, type=_threshold, default=argparse.SUPPRESS,
                       metavar="VALUE", help=unit)
    c.add_argument("--off", nargs="+", default=[], metavar="NAME",
                   help="criteria to switch off: close_contact, bond_break, force_sigma, "
                        "energy_sigma, energy_range, topology (e.g. topology for a reactive "
                        "simulation)")
    m.add_argument("--oracle", choices=("gfn2-xtb", "gfn1-xtb"), default=None,
                   help="audit: label frames with this oracle (tblite) and report the "
                        "detector's recall and false alarms")
    m.add_argument("--oracle-every", type=int, default=10, metavar="FRAMES",
                   help="audit every this many frames of each replica")
    m.add_argument("--overwrite", action="store_true", help="replace existing output files")

    i = sub.add_parser("info", formatter_class=fmt, help="what a model bundle holds",
                       description="Model, config, graph (cutoff Å), committee size, "
                       "parameter count, reference energies (eV), units and training metrics "
                       "of a bundle.")
    i.add_argument("model", help="model bundle directory")
    i.add_argument("--json", action="store_true", help="print JSON")

    im = sub.add_parser("import", formatter_class=fmt,
                        help="convert a model of another library into a bundle",
                        description="Convert the extract (.npz) of a MACE model of mace-torch "
                        "or mlip into a jaxmat bundle (float32), usable by eval, md, committees "
                        "and attacks. Extracts are made in the optional peer environments by "
                        "benchmarks/peers/mace_torch_extract.py (.model) and "
                        "benchmarks/peers/mace_mlip_extract.py (.zip). MACE's standard "
                        "architecture is read; anything else is refused by name.")
    im.add_argument("source", help="extract .npz of a mace-torch or mlip MACE")
    im.add_argument("output", help="bundle directory to write")
    im.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    return ap


def _threshold(text: str) -> float | None:
    """A criterion threshold: a number >= 0, or 'off'."""
    if text.strip().lower() in ("off", "none"):
        return None
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0 or 'off', got {text!r}")
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"thresholds must be >= 0, got {text}")
    return v


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except KeyboardInterrupt:
        hint = "; rerun the same command to resume from the last checkpoint" \
            if args.command == "train" else ""
        print(f"jaxmat {args.command}: interrupted{hint}", file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        if args.traceback:
            raise
        print(f"jaxmat {args.command}: error: {e}", file=sys.stderr)
        return 1
    return 0


def _train(args: argparse.Namespace) -> None:
    from jaxmat.cli import config, train

    if args.max_epochs is not None and args.max_epochs < 1:
        raise ValueError(f"--max-epochs must be >= 1, got {args.max_epochs}")
    cfg = config.load(args.config, args.set)
    train.run(cfg, overwrite=args.overwrite, max_epochs=args.max_epochs,
              log_every_s=args.log_every, tensorboard=not args.no_tensorboard,
              checkpoint_every_s=args.checkpoint_every or None, where=args.config)


def _eval(args: argparse.Namespace) -> None:
    from jaxmat import data
    from jaxmat.cli.eval import errors, format_metrics, parity_plot
    from jaxmat.core import bundle, graph

    b = bundle.load(args.model)
    atoms = data.read_structures(args.data, args.index, args.energy_key, args.forces_key,
                                 args.stress_key)
    b.check_elements([z for a in atoms for z in a.numbers], args.data)
    records = graph.records(atoms, b.model)
    metrics, arrays = errors(b.model, b.params, records, args.batch_size, b.calibration)
    metrics = {"model": b.path, "data": args.data, **metrics}
    print(format_metrics(metrics), file=sys.stderr if args.json_out == "-" else sys.stdout)
    if args.json_out == "-":
        print(json.dumps(metrics, indent=1))
    elif args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(metrics, f, indent=1)
    if args.parity:
        parity_plot(args.parity, arrays, f"{b.model.name} on {args.data}")


def _md(args: argparse.Namespace) -> None:
    from jaxmat.cli import md

    md.main(args)


def _info(args: argparse.Namespace) -> None:
    from jaxmat.cli.info import describe, format_info

    d = describe(args.model)
    print(json.dumps(d, indent=1) if args.json else format_info(d))


def _import(args: argparse.Namespace) -> None:
    from jaxmat.models import mace_import

    path = mace_import.convert(args.source, args.output, overwrite=args.overwrite)
    print(f"wrote {path}")


COMMANDS = {"train": _train, "eval": _eval, "md": _md, "info": _info, "import": _import}


if __name__ == "__main__":
    sys.exit(main())
