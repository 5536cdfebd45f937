"""Logging callbacks of the CLI: metric names with units, the TensorBoard writer (and its
error without the extra), the CSV log of a resumed run, and the config reader's errors."""
import csv
import sys
import types

import pytest

from jaxmat.core.callbacks import CSVLog, TensorBoard, unit_name


def test_unit_names():
    assert unit_name("val_energy_mae") == "val_energy_mae_eV_per_atom"
    assert unit_name("train_forces_mae") == "train_forces_mae_eV_per_A"
    assert unit_name("val_committee_stress_mae") == "val_committee_stress_mae_eV_per_A3"
    assert unit_name("val_forces_mae_m3") == "val_forces_mae_eV_per_A_m3"
    for k in ("epoch", "train_loss", "val_loss", "time_s", "val_target_mae"):
        assert unit_name(k) == k


def fake_run(history):
    return types.SimpleNamespace(history=history, epoch=len(history))


def test_tensorboard_writes_scalars_with_units(tmp_path, monkeypatch):
    seen = []
    tb = TensorBoard(str(tmp_path / "tb"))
    monkeypatch.setattr(tb.writer, "add_scalar", lambda k, v, step: seen.append((k, v, step)))
    row = {"epoch": 1, "time_s": 0.5, "train_loss": 2.0, "val_energy_mae": 0.1,
           "val_forces_mae": [0.3, float("nan")], "active": [True, False]}
    tb.on_epoch_end(fake_run([row]), row)
    tb.on_end(None)
    assert seen == [("time_s", 0.5, 1), ("train_loss", 2.0, 1),
                    ("val_energy_mae_eV_per_atom", 0.1, 1), ("val_forces_mae_eV_per_A_m0", 0.3, 1)]
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())


def test_tensorboard_without_the_extra_names_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import fails
    with pytest.raises(ImportError, match=r"jaxmat\[logging\]"):
        TensorBoard(str(tmp_path / "tb"))
    assert not (tmp_path / "tb").exists()


def test_csv_of_a_resumed_run_drops_repeated_epochs(tmp_path):
    path = str(tmp_path / "m.csv")
    log = CSVLog(path, units=True)
    hist = []
    for e in range(1, 6):
        hist.append({"epoch": e, "val_forces_mae": 0.1 * e})
        log.on_epoch_end(fake_run(hist), hist[-1])
    # a new process resumes from the checkpoint of epoch 2: epochs 3.. are run again
    again = CSVLog(path, units=True)
    hist = hist[:2] + [{"epoch": 3, "val_forces_mae": 9.0}]
    again.on_epoch_end(fake_run(hist), hist[-1])
    rows = list(csv.DictReader(open(path)))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert rows[-1]["val_forces_mae_eV_per_A"] == "9.0"


def test_config_errors_name_the_key_and_file(tmp_path):
    from jaxmat.cli import config

    f = tmp_path / "c.toml"
    f.write_text('[data]\npath = "d.xyz"\n[model.schnet]\ncutoff = "far"\n')
    with pytest.raises(ValueError, match=r"c\.toml: config\.model\.schnet\.cutoff must be float"):
        config.load(str(f))
    f.write_text('[data]\npath = "d.xyz"\n[loss]\nstress = 1.0\n')
    with pytest.raises(ValueError, match=r"loss.stress > 0 needs model.stress = true"):
        config.load(str(f))
    f.write_text('[data]\npath = "d.xyz"\nsplit = [0.5, 0.0, 0.5]\n')
    with pytest.raises(ValueError, match="validation fraction"):
        config.load(str(f))
    f.write_text('[data\npath = 1\n')
    with pytest.raises(ValueError, match="not valid TOML"):
        config.load(str(f))
    f.write_text('[data]\npath = "d.xyz"\n[fit]\nepochs = 7\n')
    cfg = config.load(str(f), ["model.schnet.n_features=16"])
    # the resolved TOML reads back to the same config; defaults come from the library
    g = tmp_path / "resolved.toml"
    g.write_text(config.to_toml(cfg))
    assert config.load(str(g)) == cfg
    from jaxmat.core.ensemble import CommitteeConfig

    assert cfg.fit.lr == CommitteeConfig().lr and cfg.model.schnet.n_features == 16


def test_yaml_config_reads_like_toml(tmp_path):
    from jaxmat.cli import config

    y = tmp_path / "c.yaml"
    y.write_text("data:\n  path: d.xyz\n  energy_key: REF_energy\nfit:\n  epochs: 3\n"
                 "model:\n  schnet:\n    cutoff: 4.0\n")
    t = tmp_path / "c.toml"
    t.write_text('[data]\npath = "d.xyz"\nenergy_key = "REF_energy"\n[fit]\nepochs = 3\n'
                 "[model.schnet]\ncutoff = 4.0\n")
    assert config.load(str(y)) == config.load(str(t))
    y.write_text("data:\n  dataset: ammonia\n  energy_key: E\n")
    with pytest.raises(ValueError, match="not to the shipped dataset"):
        config.load(str(y))


def test_checkpoint_throttle_saves_at_most_once_per_interval_and_at_the_end(monkeypatch):
    from jaxmat.core import callbacks

    saves = []

    class Fake:
        def __init__(self, directory, keep):
            pass

        def save(self, step, state, meta):
            saves.append(step)

    monkeypatch.setattr(callbacks, "Checkpointer", Fake)
    for every_s, want in ((None, [2, 4, 6, 7]), (3600.0, [7])):
        saves.clear()
        cb = callbacks.Checkpoint("unused", every=2, every_s=every_s)
        run = types.SimpleNamespace(single=False, state={}, meta=dict, epoch=0, done=False)
        for e in range(1, 8):
            run.epoch, run.done = e, e == 7
            cb.on_epoch_end(run, {})
        assert saves == want
