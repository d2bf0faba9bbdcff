"""`--engine ray`: the driver that steers a Ray Data run, and the cluster it joins.

The only package that imports ray (lazily, inside functions)."""

from matpac_cli.engines.ray.cluster import Cluster, require
from matpac_cli.engines.ray.driver import run

__all__ = ["Cluster", "require", "run"]
