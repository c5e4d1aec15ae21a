"""Every CSV the Studio writes is safe to open in a spreadsheet: no cell starts a formula."""

import csv
import io

import pytest

from apps.datasets import importing
from apps.datasets.models import Example
from apps.evaluations.review import write_judgments_csv
from ftstudio import csv_cells
from tests.eval_setup import make_evaluation

pytestmark = pytest.mark.django_db

ATTACKS = ['=HYPERLINK("http://evil","x")', "+1+1", "-2+3", "@SUM(A1)", "\t=1+1", "\r=1+1"]


@pytest.fixture(autouse=True)
def tokenizer(settings, tiny_model_dir):
    settings.FTSTUDIO_TOKENIZER_DIR = str(tiny_model_dir)


def test_no_exported_cell_starts_a_formula_and_the_export_imports_back_unchanged(team, tmp_path):
    source = tmp_path / "attacks.csv"
    buffer = io.StringIO(newline="")
    plain = csv.writer(buffer)
    plain.writerow(["system", "input", "output"])
    for i, attack in enumerate(ATTACKS):
        plain.writerow([attack if i % 2 else "", f"{attack} question {i}", attack])
    source.write_bytes(buffer.getvalue().encode())
    assert importing.import_examples(project=team.project, path_or_file=source).imported == len(ATTACKS)

    response = team.client("designer").get("/p/support/data/export/?format=csv")
    cells = [cell for row in csv.reader(io.StringIO(response.content.decode(), newline="")) for cell in row]
    assert len(cells) == 3 * (len(ATTACKS) + 1)
    assert not [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")]
    assert '\'=HYPERLINK("http://evil","x")' in cells

    back = tmp_path / "back.csv"
    back.write_bytes(response.content)
    assert importing.import_examples(project=team.other_project, path_or_file=back).imported == len(ATTACKS)
    assert sorted(Example.objects.filter(project=team.other_project).values_list("content_hash", flat=True)) == sorted(
        Example.objects.filter(project=team.project).values_list("content_hash", flat=True)
    )


def test_judgments_csv_guards_its_header_as_well_as_its_body(team, settings, tiny_model_dir, tmp_path):
    evaluation, _ = make_evaluation(team, settings, tiny_model_dir, tmp_path, fake=True)
    evaluation.rubric.criteria.filter(name="Tone").update(name="=cmd|' /C calc'!A0")
    out = io.StringIO()
    write_judgments_csv(evaluation, out)
    header = next(csv.reader(io.StringIO(out.getvalue(), newline="")))
    assert "'=cmd|' /C calc'!A0 [candidate_1]" in header
    assert not [c for c in header if c[:1] in csv_cells.TRIGGERS]


@pytest.mark.parametrize("text", ["", "plain", "-", "'", "''=x", "'x", "'=already quoted", *ATTACKS])
def test_guard_then_unguard_gives_back_the_text(text):
    assert csv_cells.unguard(csv_cells.guard(text)) == text
