"""`--engine ray`: the driver that steers a Ray Data run, and the cluster it joins.

The only package that imports ray (lazily, inside functions)."""

from matpac_cli.engines.ray.cluster import Cluster, require
from matpac_cli.engines.ray.driver import run
from matpac_cli.engines.ray.tasks import on_cluster

__all__ = ["Cluster", "on_cluster", "require", "run"]
