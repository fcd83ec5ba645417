"""Registers workload attribution (exporter.attribution) as the `attribution` collector.

The observer itself lives in its own package (cgroups, NVML processes, Kubernetes metadata,
the split); this module only makes the source registry find it.
"""

from exporter.attribution import Attribution

__all__ = ["Attribution"]
