# One image for the API and the workers. Build arg TORCH_SPEC picks the PyTorch build
# (a CUDA build for GPU workers, e.g. torch==2.13.0 from the CUDA wheel index of your mirror).
FROM python:3.11-slim
ARG TORCH_SPEC=torch==2.13.0
WORKDIR /app
COPY pyproject.toml README.md ./
COPY service service
COPY workers workers
COPY search search
COPY operators operators
COPY migrations migrations
COPY client client
RUN pip install --no-cache-dir "${TORCH_SPEC}" && pip install --no-cache-dir .
ENV AUTOCOMPRESS_HOME=/var/lib/autocompress
EXPOSE 8000
CMD ["autocompress", "serve", "--host", "0.0.0.0", "--port", "8000"]
