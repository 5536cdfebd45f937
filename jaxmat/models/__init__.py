"""Built-in models; each constructor returns a :class:`jaxmat.core.protocol.Model`."""
from jaxmat.models.alignn import ALIGNNConfig, alignn
from jaxmat.models.mace import MACEConfig, mace
from jaxmat.models.painn import PaiNNConfig, painn
from jaxmat.models.photoanode import (CNN1DConfig, PhotoanodeConfig, cnn1d,
                                      composition_spectrum_net, photoanode_net)
from jaxmat.models.readout import graph_target
from jaxmat.models.schnet import SchNetConfig, schnet

__all__ = ["ALIGNNConfig", "CNN1DConfig", "MACEConfig", "PaiNNConfig", "PhotoanodeConfig", "SchNetConfig", "alignn",
           "cnn1d", "composition_spectrum_net", "graph_target", "mace", "painn", "photoanode_net", "schnet"]
