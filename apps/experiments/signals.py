"""What experiments ask the apps above them, which connect in their AppConfig.ready: experiments never call them."""

from django.dispatch import Signal

# Asked while the experiment list renders. Keyword: project. Receivers answer {context name: value} for the page
# (apps/demo: "demo_plan", the demo project's one-click experiment).
experiment_list_asked = Signal()
