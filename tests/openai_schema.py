"""Check a /v1/ body against OpenAI's published component schemas (a pinned, trimmed copy in
tests/fixtures/openai_schemas.json; its ``_source`` names the repository, file and commit).

    assert_openai_shape("FineTuningJob", client.get(...).json())

The copy was made from github.com/openai/openai-openapi's openapi.json: the ``_source.roots`` schemas and every schema
they reference, with descriptions, titles, examples and ``x-`` extensions left out and the two OpenAPI 3.0 keywords
the file still uses made JSON Schema 2020-12 (``nullable: true`` -> ``anyOf [schema, {"type": "null"}]``;
``minimum: m`` + ``exclusiveMinimum: true`` -> ``exclusiveMinimum: m``). To add a root, add it to ``_source.roots``
and copy it (and what it references) the same way from the same commit.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from jsonschema import Draft202012Validator

SCHEMAS = Path(__file__).parent / "fixtures" / "openai_schemas.json"


@functools.cache
def _document() -> dict:
    return json.loads(SCHEMAS.read_text())


@functools.cache
def _validator(component: str) -> Draft202012Validator:
    document = _document()
    if component not in document["components"]["schemas"]:
        raise KeyError(f"{component} is not in the pinned copy: add it to tests/fixtures/openai_schemas.json")
    schema = {"$ref": f"#/components/schemas/{component}", "components": document["components"]}
    return Draft202012Validator(schema)


def openai_shape_errors(component: str, obj) -> list[str]:
    """Every way ``obj`` differs from OpenAI's ``component`` schema, as "path: message" lines."""
    errors = sorted(_validator(component).iter_errors(obj), key=lambda e: list(e.absolute_path))
    return [f"{'/'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}" for e in errors]


def assert_openai_shape(component: str, obj) -> None:
    """Fail with every difference when ``obj`` (a parsed JSON body) is not a valid OpenAI ``component``."""
    errors = openai_shape_errors(component, obj)
    assert not errors, f"not a valid OpenAI {component}:\n" + "\n".join(errors)
