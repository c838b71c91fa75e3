"""The wheel carries what the preview page and `legmove-cds load` need: the example patients (the
fixtures, as the data package `legmove_examples`), the page's template and static files. Built
offline from this checkout and imported from the unpacked wheel, not from the source tree."""

import subprocess
import sys
import textwrap
import zipfile

import pytest

from conftest import FIXTURES, ROOT


def archive_text(wheel, name: str) -> str:
    with zipfile.ZipFile(wheel) as archive:
        return archive.read(name).decode("utf-8")


@pytest.mark.slow  # builds the wheel with pip
def test_the_wheel_serves_the_preview_and_its_examples_without_the_source_tree(tmp_path):
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = tmp_path.glob("legmove_cds-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(site)
    assert {
        "cds_service/web/templates/preview.html",
        "cds_service/web/static/preview.js",
        "cds_service/web/static/preview.css",
        "cds_service/knowledge/rxnorm_leg_movement_drug_products.csv",
    } <= names
    assert len([n for n in names if n.startswith("legmove_examples/R") and n.endswith(".json")]) == len(FIXTURES)
    # the licence pyproject.toml declares travels with the wheel, in full
    (licence,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
    assert archive_text(wheel, licence) == (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License\n                           Version 2.0, January 2004" in archive_text(wheel, licence)
    metadata = archive_text(wheel, next(n for n in names if n.endswith(".dist-info/METADATA")))
    assert "License-Expression: Apache-2.0" in metadata.splitlines()
    probe = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(site)!r})
        import legmove_examples
        import cds_service.fhir.examples, cds_service.web.preview
        for module in (legmove_examples, cds_service.fhir.examples, cds_service.web.preview):
            assert module.__file__.startswith({str(site)!r}), module.__file__
        from cds_service.app import create_app
        from cds_service.fhir.examples import all_examples
        client = create_app("test", LOG_LEVEL="ERROR", FEEDBACK_STORE=None).test_client()
        page = client.get("/preview")
        assert page.status_code == 200 and b"R3/fires-sertraline-order-sign" in page.data
        assert client.get("/preview/static/preview.js").status_code == 200
        print(len(all_examples()))
    """)
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert int(run.stdout.strip().splitlines()[-1]) == len(FIXTURES)
