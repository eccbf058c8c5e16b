# One image for the API, the worker and the migrations (README, Production):
#   docker run --rm --env-file chatbot.env IMAGE python manage.py migrate --noinput   # once per release, first
#   docker run --env-file chatbot.env -p 8000:8000 IMAGE                             # web, any number
#   docker run --env-file chatbot.env IMAGE python manage.py worker                  # worker, any number
# Nothing migrates when a container starts: with replicas, each one would
# (at once, on every restart). A web container started before the
# migration runs answers /readyz with 503 until it has run.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    BIND=0.0.0.0:8000

WORKDIR /app
COPY requirements.txt .
# The product's locked tree only (hashes checked); test tools stay out.
RUN pip install --no-cache-dir --require-hashes -r requirements.txt
COPY . .
# collectstatic needs settings, not a database or real secrets.
RUN SECRET_KEY=build-only python manage.py collectstatic --noinput \
    && useradd --system --home-dir /app chatbot \
    && chown -R chatbot /app

USER chatbot
EXPOSE 8000
HEALTHCHECK CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"
CMD ["gunicorn", "-c", "gunicorn.conf.py", "chatbot_project.wsgi"]
