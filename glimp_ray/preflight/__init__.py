"""``glimp-ray check``: a preflight of a Serve config against a cluster manifest, with no GPU, no
running cluster and no model hub (docs/cluster.md, "Preflight")."""

from __future__ import annotations

from glimp_ray.preflight.checks import check_application, check_path
from glimp_ray.preflight.manifests import Cluster, NodeType, load_cluster
from glimp_ray.preflight.report import Problem, Report, Row

__all__ = ["Cluster", "NodeType", "Problem", "Report", "Row", "check_application", "check_path", "load_cluster"]
