from django.apps import AppConfig


class TrafficConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "apps.traffic"
    label = "traffic"
    # (label, url name taking `slug`, capability, stage): shown in the project's tab bar
    project_tabs = [("Traffic", "traffic", "label", "serve")]

    def ready(self) -> None:
        from apps.freshness.signals import traffic_staleness

        from .selectors import drifted_runs

        def answer(sender, project, runs, **kwargs):
            return drifted_runs(project, runs)

        traffic_staleness.connect(answer, weak=False, dispatch_uid="traffic.drifted_runs")
