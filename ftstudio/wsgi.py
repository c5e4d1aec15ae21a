import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ftstudio.settings")
application = get_wsgi_application()

from apps.runs.artifacts import check_or_exit  # noqa: E402 (needs the settings loaded above)

check_or_exit("web")  # wrong credentials or a missing bucket stop gunicorn at start, naming the variable
