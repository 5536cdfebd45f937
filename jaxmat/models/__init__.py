"""Built-in models; each constructor returns a :class:`jaxmat.protocol.Model`."""
from jaxmat.models.schnet import SchNetConfig, schnet

__all__ = ["SchNetConfig", "schnet"]
