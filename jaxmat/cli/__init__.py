"""The ``jaxmat`` command: ``train`` (config file -> model bundle), ``eval`` (errors and
committee calibration on labelled structures), ``md`` (molecular dynamics with a bundle) and
``info`` (what a bundle holds). Each subcommand is a thin shell over a library function of
its module (:mod:`jaxmat.cli.train`, :mod:`jaxmat.cli.eval`, :mod:`jaxmat.cli.md`,
:mod:`jaxmat.cli.info`); the train config is :class:`jaxmat.cli.config.TrainConfig`."""
