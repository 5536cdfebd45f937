"""Built-in models; each constructor returns a :class:`jaxmat.protocol.Model`."""
from jaxmat.models.alignn import ALIGNNConfig, alignn
from jaxmat.models.painn import PaiNNConfig, painn
from jaxmat.models.readout import graph_target
from jaxmat.models.schnet import SchNetConfig, schnet

__all__ = ["ALIGNNConfig", "PaiNNConfig", "SchNetConfig", "alignn", "graph_target", "painn",
           "schnet"]
