# One image for every service of docker-compose.yml: Ray head, GPU workers, dashboard.
# CUDA wheels of torch carry their own CUDA runtime; the host needs only the NVIDIA driver and
# the NVIDIA Container Toolkit.
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
WORKDIR /opt/cueaudit
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY workers ./workers
COPY dashboard ./dashboard
RUN pip install ".[all]"
EXPOSE 6379 8265 10001 8501
CMD ["cueaudit", "--help"]
