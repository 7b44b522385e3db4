# syntax=docker/dockerfile:1
# Three images from one file (docker-compose.yml builds the last two):
#   base       Python and cueaudit's slim dependencies (numpy, pandas, pyarrow, pydantic, ...)
#   audit      base + torch, Ray with its dashboard and job server (ray[default]), model sources:
#              the Ray head and workers; `cueaudit run` and `cueaudit gate`
#   dashboard  base + Streamlit: the results browser, without torch or Ray
# Every version is pinned by deploy/constraints.txt (PIP_CONSTRAINT; regenerate: python deploy/lock.py).
# Dependencies are installed before the sources are copied: a code change rebuilds only the last layers.
# The CUDA wheels of torch carry their own CUDA runtime; a GPU host needs only the NVIDIA driver and
# the NVIDIA Container Toolkit.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS base
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 \
    PIP_CONSTRAINT=/opt/cueaudit/deploy/constraints.txt
WORKDIR /opt/cueaudit
COPY pyproject.toml ./
COPY deploy/constraints.txt deploy/requirements.py deploy/
RUN python deploy/requirements.py > /tmp/requirements.txt && pip install -r /tmp/requirements.txt

FROM base AS audit
RUN python deploy/requirements.py audit cluster timm > /tmp/requirements.txt && pip install -r /tmp/requirements.txt
COPY README.md ./
COPY common ./common
COPY workers ./workers
COPY pipeline ./pipeline
COPY dashboard ./dashboard
COPY cuebench ./cuebench
RUN pip install --no-deps . && cueaudit --help > /dev/null
EXPOSE 6379 8265 10001
CMD ["cueaudit", "--help"]

FROM base AS dashboard
RUN python deploy/requirements.py dashboard > /tmp/requirements.txt && pip install -r /tmp/requirements.txt
COPY README.md ./
COPY common ./common
COPY pipeline ./pipeline
COPY dashboard ./dashboard
# Without workers/ and cuebench/: the dashboard and the gate import neither (nor torch, nor Ray).
RUN pip install --no-deps . && python -c "import pipeline.cli, pipeline.gate, dashboard.data, dashboard.views.overview"
EXPOSE 8501
CMD ["cueaudit", "dashboard", "/data/results", "--wait", "--host", "0.0.0.0", "--port", "8501"]
