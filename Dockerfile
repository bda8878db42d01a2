# compat-api rerank server. The model is not baked in: mount a model directory and set MODEL_PATH.
#   docker build -t compat-api .
#   docker run -p 8000:8000 -v /path/to/bge-reranker-v2-m3:/models/bge-reranker-v2-m3:ro \
#       -e MODEL_PATH=/models/bge-reranker-v2-m3 compat-api
# TORCH_INDEX picks the torch build: the CPU wheels by default; for a GPU image pass
#   --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 \
    RERANK_HOST=0.0.0.0 \
    RERANK_PORT=8000

WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir --extra-index-url "${TORCH_INDEX}" -r requirements.txt

COPY compat_api ./compat_api
RUN useradd --create-home --uid 10001 app
USER 10001

EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('RERANK_PORT', '8000'), timeout=4)"]
CMD ["python", "-m", "compat_api"]
