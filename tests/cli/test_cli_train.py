"""``jaxmat train``'s preparation (no training): what it fits on the training split."""
import pytest

from jaxmat.cli import config
from jaxmat.cli.train import prepare, read_data
from jaxmat.core import bundle


def test_mace_neighbour_count_is_fitted_on_the_training_split(tmp_path):
    pytest.importorskip("cuequivariance_jax")
    from jaxmat.models.mace import MACEConfig, mean_neighbors

    path = tmp_path / "train.toml"
    path.write_text('output = "run"\n[data]\ndataset = "ammonia"\n'
                    '[model]\nname = "mace"\n[model.mace]\nn_channels = 8\ncutoff = 3.0\n')
    cfg = config.load(str(path))
    parts, _ = read_data(cfg.data, cfg.seed)
    p = prepare(cfg, parts)
    fitted = bundle.innermost_config(p.model)
    assert isinstance(fitted, MACEConfig) and fitted.n_channels == 8
    want = mean_neighbors(p.records["train"])
    assert fitted.avg_num_neighbors == pytest.approx(want) and abs(want - 8.0) > 0.5
    assert "avg_num_neighbors" not in config.to_toml(cfg)  # refitted on resume, not stored
    with pytest.raises(ValueError, match=r"mace.avg_num_neighbors is not a setting: it is "
                                         "fitted on the training split"):
        config.load(str(path), ["model.mace.avg_num_neighbors=5.0"])
