"""The core: model protocol and graph specs, atom graphs and padded batches, potentials,
the training engine, committees, prediction, bundles and checkpoints. It knows nothing of
any one paper; the workflows (:mod:`jaxmat.workflows`) build on it."""
