"""Factories for test data. Apps add theirs here (one section per app)."""

import factory
from django.contrib.auth import get_user_model

from apps.accounts.models import Membership, Project, Role

PASSWORD = "correct-horse-battery-staple"


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    password = factory.PostGenerationMethodCall("set_password", PASSWORD)

    @factory.post_generation
    def _save(obj, create, extracted, **kwargs):
        if create:
            obj.save()


class ProjectFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Project

    name = factory.Sequence(lambda n: f"Project {n}")
    slug = factory.Sequence(lambda n: f"project-{n}")


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Membership

    project = factory.SubFactory(ProjectFactory)
    user = factory.SubFactory(UserFactory)
    role = Role.DESIGNER


# --- datasets -------------------------------------------------------------------------------------
def conversation(user: str, ideal: str, system: str | None = None) -> list[dict]:
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": user}, {"role": "assistant", "content": ideal}]


def make_dataset_version(project, splits: dict[str, list[list[dict]]], number: int | None = None, user=None):
    """A frozen DatasetVersion with the given conversations per split, without going through curation.

    For tests of runs and evaluations; curation's own tests freeze through the service.
    """
    import hashlib
    import json

    from apps.datasets.models import DatasetVersion, DatasetVersionItem

    number = number or (DatasetVersion.objects.filter(project=project).count() + 1)
    blob = json.dumps(splits, sort_keys=True).encode()
    version = DatasetVersion.objects.create(
        project=project,
        number=number,
        content_hash=hashlib.sha256(blob).hexdigest(),
        split_counts={k: len(v) for k, v in splits.items()},
        created_by=user,
    )
    position = 0
    items = []
    for split, conversations in splits.items():
        for messages in conversations:
            items.append(
                DatasetVersionItem(
                    version=version,
                    position=position,
                    split=split,
                    messages=messages,
                    content_hash=hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest(),
                )
            )
            position += 1
    DatasetVersionItem.objects.bulk_create(items)
    return version
