from django.utils.functional import SimpleLazyObject


def reaper_alarm(request):
    """Staff only: a banner when no reaper has run recently (stranded runs and evaluations would stay stranded).
    Lazy: the one query runs only when base.html renders the banner for a staff user."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated or not user.is_staff:
        return {}
    from .selectors import reaper_overdue

    return {"reaper_alarm": SimpleLazyObject(reaper_overdue)}
