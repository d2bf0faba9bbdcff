"""`--engine` for the commands that run the encoder (`tag`, `embed`): where the model loads and runs."""

from __future__ import annotations

from matpac_cli.cli._common import load_predictor


class Engine:
    """`--engine`, checked before any model loads. With `ray`, the cluster is reached now (an
    unreachable one is one line, at once) and decides where the encoder runs: the driver then
    loads its copy on its own CPU, at the actors' precision, only to describe the run."""

    def __init__(self, engine: str, address: str | None, device: str, precision: str) -> None:
        from matpac_cli.engines import check

        self.name = check(engine)
        self.address, self.cluster = address, None
        self.device, self.precision, self.remote = device, precision, None
        if self.name == "ray":
            from matpac_cli.engines.ray.driver import Cluster

            self.cluster = Cluster(address)
            self.remote, self.precision = self.cluster.placement(device, precision)
            self.device = "cpu"

    def load(self, model, threads: int | None, quiet: bool):
        predictor = load_predictor(model, self.device, self.precision, threads, quiet, note=self.remote is None)
        if self.remote is not None:
            predictor.device = self.remote  # where the actors run it: the summary and manifest say so
        return predictor

    def close(self) -> None:
        if self.cluster is not None:
            self.cluster.close()
