"""carbon-exporter: power, energy and CO2e of a node and its workloads, for Prometheus."""

__version__ = "0.1.0"
