# syntax=docker/dockerfile:1
# carbon-exporter container image: multi-stage, slim Python, non-root, no build tools in the
# final stage. Build from the repository root:  docker build -t carbon-exporter:0.1.0 .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY exporter ./exporter
# `carbon-exporter --version` and carbon_exporter_build_info carry the revision and build date,
# as node_exporter's do: docker build --build-arg REVISION=$(git rev-parse HEAD) .
ARG REVISION=unknown
RUN python -m exporter.version --write "$REVISION"
# Every dependency ships manylinux wheels, so no compiler is needed even here. pip and
# setuptools leave the venv once it is built: the final stage gets no installer either.
RUN python -m venv /opt/carbon-exporter \
 && /opt/carbon-exporter/bin/pip install --prefer-binary . \
 && /opt/carbon-exporter/bin/pip uninstall -y pip setuptools
COPY deploy/docker/healthcheck.py /opt/carbon-exporter/healthcheck.py

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="carbon-exporter" \
      org.opencontainers.image.description="Prometheus exporter for node power, energy and CO2e emissions" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/carbon-exporter/carbon-exporter"
COPY --from=build /opt/carbon-exporter /opt/carbon-exporter
# NVIDIA container runtime / toolkit: expose every GPU's device nodes and only the driver
# library NVML needs (utility = nvidia-smi and libnvidia-ml), no compute or graphics stack.
# Clusters that refuse NVIDIA_VISIBLE_DEVICES for unprivileged pods: see the README (CDI,
# the device plugin).
ENV PATH=/opt/carbon-exporter/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CARBON_EXPORTER_WEB_LISTEN_ADDRESS=:9875 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=utility
# nobody: the image never needs root (RAPL access is granted to a group, see the README).
USER 65534:65534
EXPOSE 9875
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
  CMD ["python", "/opt/carbon-exporter/healthcheck.py"]
ENTRYPOINT ["carbon-exporter"]
