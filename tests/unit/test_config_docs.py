"""docs/configuration.md is generated from the schema and must be kept in step."""

import io
from pathlib import Path

from poolhouse.config.docs import generate

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_reference_is_generated_and_current() -> None:
    out = io.StringIO()
    generate(out)
    text = out.getvalue()
    assert "GENERATED FILE" in text and "python -m poolhouse.config.docs" in text
    assert "`system.webServer/handlers`" in text
    assert "applicationPools/add/python` (Poolhouse extension)" in text
    assert DOC.read_text() == text, (
        "docs/configuration.md is stale: run "
        "python -m poolhouse.config.docs > docs/configuration.md")
