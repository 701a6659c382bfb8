"""docs/configuration.md is generated from salt_model/config.py's field comments and must be current."""

import dataclasses

from salt_model.config import SECTIONS
from salt_model.config_doc import DOC, field_comments, main, render
from tests.processes import REPO


def test_committed_page_is_current():
    assert DOC == REPO / "docs" / "configuration.md"
    assert DOC.read_text() == render(), (
        "docs/configuration.md is stale: run `python -m salt_model.config_doc`"
    )


def test_every_field_of_every_section_has_a_row_with_its_comment():
    page = render()
    for name, cls in SECTIONS.items():
        assert f"\n## {name}\n" in page
        for f in dataclasses.fields(cls):
            row = next(
                (line for line in page.splitlines() if line.startswith(f"| `{name}.{f.name}` |")), None
            )
            assert row is not None, f"{name}.{f.name} is missing from the page"
            meaning = row.rsplit(" | ", 1)[1].removesuffix(" |").strip()
            assert meaning, f"{name}.{f.name} has no comment in salt_model/config.py"


def test_comments_above_and_beside_a_field_are_joined():
    source = (
        "class C:\n"
        '    """Doc."""\n'
        "\n"
        "    a: int = 1  # beside a\n"
        "    # above b,\n"
        "    # two lines\n"
        "    b: str = 'x'  # and beside\n"
        "    c: float = 0.5\n"
        "\n"
        "    # not a field's\n"
        "    def f(self): ...\n"
    )
    assert field_comments(source, "C") == {"a": "beside a", "b": "above b, two lines and beside", "c": ""}


def test_defaults_are_written_as_in_yaml_and_pipes_escaped():
    page = render()
    assert "| `model.encoder_weights` | str or null | `null` |" in page
    assert "| `search.schedules` | list of str | `[cyclic, cosine, step, onecycle, constant]` |" in page
    assert '| `tracking.mlflow_uri` | str | `""` |' in page
    assert "| `model.scse` | bool | `true` |" in page
    assert "resnet18 \\| resnet34" in page  # a bare | would split the table row


def test_main_writes_the_page(tmp_path):
    out = tmp_path / "configuration.md"
    assert main(["--out", str(out)]) == 0
    assert out.read_text() == render()
