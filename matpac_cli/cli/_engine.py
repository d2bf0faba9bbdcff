"""`--engine` for the commands that run the encoder (`tag`, `embed`): where the model loads and runs."""

from __future__ import annotations

from matpac_cli.cli._common import load_predictor


class Engine:
    """`--engine`, checked before any model loads. With `ray`, the cluster is reached now (an
    unreachable one is one line, at once) and decides where the encoder runs: the driver then
    loads its copy on its own CPU, at the actors' precision, only to describe the run."""

    def __init__(self, options) -> None:
        import dataclasses

        from matpac_cli.engines import check

        check(options)
        self.cluster, self.remote = None, None
        self.options = self.load_options = options  # the job's, and the driver's copy of the encoder's
        if options.engine == "ray":
            from matpac_cli.engines.ray.driver import Cluster

            self.cluster = Cluster(options.address)
            self.remote, precision = self.cluster.placement(options.device, options.precision)
            self.options = dataclasses.replace(options, device=self.remote, precision=precision)
            self.load_options = dataclasses.replace(self.options, device="cpu")

    def load(self, model, quiet: bool):
        return load_predictor(model, self.load_options, quiet, note=self.remote is None)

    def close(self) -> None:
        if self.cluster is not None:
            self.cluster.close()
