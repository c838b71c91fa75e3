"""The `legmove-cds` command: serve the service, load charts into a FHIR server, call the service as
an EHR would and see its cards, print the rule catalog, check a configuration.

Thin on purpose: the CDS client is cds_client.py, drafts are web/drafts.py, the configuration report is
config_report.py, the example charts are fhir/examples.py. This module parses options and draws.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import NoReturn

import click
import requests
from rich.console import Console, Group
from rich.markdown import Markdown
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table
from rich.text import Text

from cds_service.authoring.rulebook import CARD, REGISTRY

COLOURS = {"info": "blue", "warning": "yellow", "critical": "red"}
EXTENSION = "org.legmove-cds.explanation"
HOOKS = ("patient-view", "order-select", "order-sign")


def _console() -> Console:
    return Console(highlight=False, soft_wrap=False)


def _fail(message: str, code: int = 1) -> NoReturn:
    Console(stderr=True, highlight=False).print(f"[bold red]error:[/] {message}")
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def main() -> None:
    """legmove-cds: CDS Hooks decision support on involuntary leg movements."""


# ---- rules ---------------------------------------------------------------------------------


def _natural(rule_id: str) -> tuple:
    """R2 before R10."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", rule_id))


def catalog_markdown() -> str:
    import rules

    rules.load_all()
    fixtures = _fixtures_by_rule()
    lines = [
        "# legmove-cds rule catalog",
        "",
        "Generated from the rule modules by `legmove-cds rules`. Findings are derived first; cards are made from them.",
        "",
        rules.CONVENTIONS,
        "## Rules and findings",
        "",
        "| Rule | Kind | Hooks | Logic | Citation | Module "
        "| Fixtures (fire / silent, by file name under fhir_fixtures/R<n>/) |",
        "|---|---|---|---|---|---|---|",
    ]
    for spec in sorted(REGISTRY.values(), key=lambda s: (s.stratum != "derive", _natural(s.id))):
        kind = "card" if spec.stratum == CARD else f"finding `{spec.produces}`"
        if spec.stratum == CARD and not spec.enabled_by_default:
            kind += " (**off by default**)"
        if spec.supersedes:
            kind += f", replaces {', '.join(spec.supersedes)}"
        fires, silent = fixtures.get(spec.id, ([], []))
        listed = (
            f"fires: {', '.join(fires)}<br>silent: {', '.join(silent)}"
            if spec.stratum == CARD
            else f"{len(fires)} / {len(silent)}"
        )
        lines.append(
            f"| **{spec.id}** {spec.title} | {kind} | {', '.join(spec.hooks) or '(any hook)'} | {spec.logic} | "
            f"{spec.citation} | `{spec.module}` | {listed} |"
        )
    return "\n".join(lines) + "\n"


def _fixtures_by_rule() -> dict[str, tuple[list[str], list[str]]]:
    from cds_service.fhir.examples import all_examples

    found: dict[str, tuple[list[str], list[str]]] = {}
    for name, example in sorted(all_examples().items(), key=lambda kv: kv[0] + ".json"):  # file-name order
        expect = example.expect
        stem = name.split("/", 1)[1]
        for rule in expect["fires"]:
            found.setdefault(rule, ([], []))[0].append(stem)
        for rule in expect["silent"]:
            found.setdefault(rule, ([], []))[1].append(stem)
    return found


@main.command("rules")
@click.option("--lock", is_flag=True, help="regenerate rules/versions.json (rule versions) instead of printing")
@click.option("--accept-unbumped", is_flag=True, help="with --lock: lock changed rules without a version bump")
def rules_command(lock: bool, accept_unbumped: bool) -> None:
    """Print the rule catalog as Markdown (docs/rules.md is this output), or regenerate the lock."""
    if lock:
        from cds_service.store.rule_versions import run

        raise SystemExit(run(write=True, accept_unbumped=accept_unbumped))
    click.echo(catalog_markdown(), nl=False)


# ---- the fact model ------------------------------------------------------------------------


def fact_model_markdown(extra_modules: tuple[str, ...] = ()) -> str:
    """docs/fact-model.md: the fact model, with the derivations that produce each finding."""
    import rules
    from cds_service.facts.schema import model_markdown

    rules.load_all(extra_modules)
    producers: dict[str, list[str]] = {}
    for spec in sorted(REGISTRY.values(), key=lambda s: _natural(s.id)):
        if spec.produces:
            producers.setdefault(spec.produces, []).append(spec.id)
    return model_markdown(producers)


@main.command("facts")
@click.option(
    "--extra",
    "extra_modules",
    multiple=True,
    metavar="MODULE",
    help="also load this site rule module (as EXTRA_RULE_MODULES does), to list its findings",
)
def facts_command(extra_modules: tuple[str, ...]) -> None:
    """Print the fact model as Markdown: every kind of fact, its fields and every finding (docs/fact-model.md)."""
    click.echo(fact_model_markdown(extra_modules), nl=False)


# ---- governance ----------------------------------------------------------------------------


@main.command("report")
@click.option("--since", help="first day (YYYY-MM-DD, UTC) of cards counted")
@click.option("--until", help="last day (YYYY-MM-DD, UTC) of cards counted")
@click.option("--csv", "csv_path", help="also write the table as CSV to this file")
@click.option("--png", "png_path", help="also draw the table as a PNG chart (needs the `report` extra: matplotlib)")
def report_command(since: str | None, until: str | None, csv_path: str | None, png_path: str | None) -> None:
    """Governance report per rule and version: views, cards, silent, suppressed, accepted, overridden."""
    from cds_service.store import governance_report

    raise SystemExit(
        governance_report.command(
            SimpleNamespace(command="report", since=since, until=until, csv=csv_path, png=png_path)
        )
    )


@main.command("prune")
def prune_command() -> None:
    """Delete call, card and feedback rows older than RETENTION_DAYS."""
    from cds_service.store import governance_report

    raise SystemExit(governance_report.command(SimpleNamespace(command="prune")))


# ---- serve ---------------------------------------------------------------------------------


@main.command()
@click.option("--host", envvar="HOST", default="127.0.0.1", show_default=True, help="address to bind (env HOST)")
@click.option(
    "--port", envvar="PORT", default=8080, type=click.IntRange(1, 65535), show_default=True, help="port (env PORT)"
)
@click.option(
    "--workers",
    envvar="WORKERS",
    default=2,
    type=click.IntRange(1, 64),
    show_default=True,
    help="gunicorn worker processes (env WORKERS)",
)
def serve(host: str, port: int, workers: int) -> None:
    """Serve with gunicorn, in the configuration LEGMOVE_CONFIG names (default: development).

    Uses ./gunicorn.conf.py when there is one; host, port and workers given here win over it.
    """
    gunicorn = shutil.which("gunicorn", path=str(Path(sys.executable).parent)) or shutil.which("gunicorn")
    if gunicorn is None:
        _fail("gunicorn is not installed in this environment")
    env = dict(
        os.environ,
        LEGMOVE_CONFIG=os.environ.get("LEGMOVE_CONFIG", "development"),
        HOST=host,
        PORT=str(port),
        WORKERS=str(workers),
    )
    from cds_service.config import settings as configured
    from cds_service.knowledge.settings import SettingsError
    from cds_service.knowledge.settings import load as load_knowledge_settings

    try:  # one line instead of a stack trace per worker (or from the master, with --preload)
        load_knowledge_settings(configured(env["LEGMOVE_CONFIG"])["KNOWLEDGE_OVERRIDES"])
    except SettingsError as exc:
        _fail(f"legmove-cds refuses to start: {exc}")
    args = [gunicorn]
    if Path("gunicorn.conf.py").is_file():
        args += ["-c", "gunicorn.conf.py"]
    else:  # what `make run` used before gunicorn.conf.py: build once, then fork the workers
        args += ["--preload", "--max-requests", "5000", "--max-requests-jitter", "500", "--access-logfile", "-"]
    args += ["--bind", f"{host}:{port}", "--workers", str(workers), "cds_service.app:create_app()"]
    Console(stderr=True, highlight=False).print(
        f"legmove-cds: {env['LEGMOVE_CONFIG']} configuration on http://{host}:{port} "
        f"(discovery /cds-services, preview /preview)"
    )
    os.execve(gunicorn, args, env)


# ---- load ----------------------------------------------------------------------------------


def _read_json(path: Path):
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return json.load(fh)


def _bundles_from(path: Path) -> list[tuple[str, dict]]:
    """(label, transaction bundle) for a file or, recursively, a folder of them."""
    from cds_service.fhir.examples import Example, as_transaction

    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.name.endswith((".json", ".json.gz")))
        return [b for f in files for b in _bundles_from(f)]
    try:
        data = _read_json(path)
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"{path}: not readable JSON ({type(exc).__name__})") from None
    if isinstance(data, dict) and isinstance(data.get("request"), dict) and "expect" in data:
        example = Example(
            path.stem,
            data.get("description", ""),
            data["request"].get("hook", ""),
            data.get("service", ""),
            data["request"],
        )
        return [(f"{path.name} -> Patient/{example.patient_id}", as_transaction(example))]
    if isinstance(data, dict) and data.get("resourceType") == "Bundle" and data.get("type") in ("transaction", "batch"):
        return [(path.name, data)]
    raise click.ClickException(f"{path}: neither a transaction/batch Bundle nor a fixture")


@main.command()
@click.option("--fhir-server", required=True, help="base URL of the FHIR server, e.g. http://127.0.0.1:8090/fhir")
@click.option("--token", envvar="FHIR_TOKEN", help="bearer token for the FHIR server (env FHIR_TOKEN)")
@click.option("--timeout", default=120.0, show_default=True, help="seconds per bundle")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
def load(fhir_server: str, token: str | None, timeout: float, paths: tuple[Path, ...]) -> None:
    """Post transaction bundles (.json or .json.gz) and fixtures' charts to a FHIR server.

    A fixture's chart becomes a transaction of PUTs; resource ids other than the patient's get the
    patient id as prefix, so every fixture fits on one server. Folders are read recursively.
    """
    bundles = [b for p in paths for b in _bundles_from(p)]
    headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    created: dict[str, dict[str, int]] = {}
    patients: list[str] = []
    failures: list[str] = []
    console = _console()
    with (
        requests.Session() as session,
        Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            console=console,
            disable=not console.is_terminal,
        ) as progress,
    ):
        task = progress.add_task("loading", total=len(bundles))
        for label, bundle in bundles:
            progress.update(task, description=label[:60])
            try:
                response = session.post(fhir_server.rstrip("/"), json=bundle, headers=headers, timeout=timeout)
            except requests.RequestException as exc:
                failures.append(f"{label}: {type(exc).__name__}")
                progress.advance(task)
                continue
            if response.status_code not in (200, 201):
                failures.append(f"{label}: HTTP {response.status_code} {response.text[:200]}")
            else:
                _count_outcomes(response, created, patients, failures, label)
            progress.advance(task)
    table = Table(title=f"Loaded into {fhir_server}")
    for column in ("resource type", "created", "updated", "other"):
        table.add_column(column, justify="right" if column != "resource type" else "left")
    for kind, counts in sorted(created.items()):
        table.add_row(kind, str(counts.get("201", 0)), str(counts.get("200", 0)), str(counts.get("other", 0)))
    console.print(table)
    console.print(
        f"{len(bundles) - len(failures)} of {len(bundles)} bundles loaded; patients: "
        + (", ".join(patients) if patients else "none")
    )
    for failure in failures:
        Console(stderr=True, highlight=False).print(f"[red]failed:[/] {failure}")
    if failures:
        sys.exit(1)


def _count_outcomes(response, created: dict, patients: list, failures: list, label: str) -> None:
    try:
        entries = response.json().get("entry") or []
    except ValueError:
        failures.append(f"{label}: the answer is not JSON")
        return
    for entry in entries:
        answer = entry.get("response") or {}
        # location is relative or absolute, with or without _history: "Type/id" is what we want
        found = _LOCATION.search(str(answer.get("location") or ""))
        kind, new_id = found.groups() if found else ("unknown", "")
        status = str(answer.get("status", "")).split(" ", 1)[0]
        bucket = created.setdefault(kind, {})
        key = status if status in ("200", "201") else "other"
        bucket[key] = bucket.get(key, 0) + 1
        if kind == "Patient":
            patients.append(new_id)


_LOCATION = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]*)?$")


# ---- invoke --------------------------------------------------------------------------------


@main.command()
@click.argument("hook", type=click.Choice(HOOKS))
@click.option("--patient", required=True, help="the patient's FHIR id (context.patientId)")
@click.option("--fhir-server", help="FHIR server holding the chart (sent as fhirServer)")
@click.option("--token", envvar="FHIR_TOKEN", help="bearer token for it, sent as fhirAuthorization (env FHIR_TOKEN)")
@click.option(
    "--bundle",
    "bundle_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="a Bundle (or fixture) holding the chart, instead of a FHIR server",
)
@click.option(
    "--draft",
    "draft_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="order hooks: a MedicationRequest/ServiceRequest, a Bundle of them, or a fixture",
)
@click.option("--draft-rxnorm", help="order hooks: draft a MedicationRequest for this RxNorm code (bundled table)")
@click.option(
    "--service",
    "service_url",
    envvar="CDS_SERVICE_URL",
    default="http://127.0.0.1:8080",
    show_default=True,
    help="the CDS service (root or discovery URL; env CDS_SERVICE_URL)",
)
@click.option("--service-id", help="use this service id instead of the first discovery entry for the hook")
@click.option("--user", default="Practitioner/example", show_default=True, help="context.userId")
@click.option("--no-prefetch", is_flag=True, help="send no prefetch: the service reads the FHIR server itself")
@click.option("--json", "as_json", is_flag=True, help="print the raw response")
@click.option("--explain", is_flag=True, help="show each card's explanation (rule, facts, resources)")
@click.option(
    "--client-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="sign each call with this PEM private key (EC P-384 or RSA), for a service with client auth on",
)
@click.option("--client-iss", help="the issuer (iss) the service trusts for --client-key")
@click.option("--client-kid", help="key id (kid) to put in the JWT header")
@click.option("--timeout", default=30.0, show_default=True, help="seconds per HTTP request")
def invoke(
    hook,
    patient,
    fhir_server,
    token,
    bundle_file,
    draft_file,
    draft_rxnorm,
    service_url,
    service_id,
    user,
    no_prefetch,
    as_json,
    explain,
    client_key,
    client_iss,
    client_kid,
    timeout,
) -> None:
    """Call the service as an EHR would and show its cards.

    Reads discovery, fills each prefetch template from the FHIR server (or the bundle), sends the
    hook request and renders the cards.
    """
    from cds_service.cli import cds_client as cds
    from cds_service.web.drafts import DraftError, drafts_from_file, medication_draft

    if bool(fhir_server) == bool(bundle_file):
        _fail("give exactly one of --fhir-server URL or --bundle FILE", 2)
    if no_prefetch and not fhir_server:
        _fail("--no-prefetch needs --fhir-server: the service has to read the chart from somewhere", 2)
    if draft_file and draft_rxnorm:
        _fail("give at most one of --draft FILE or --draft-rxnorm CODE", 2)
    if (draft_file or draft_rxnorm) and hook == "patient-view":
        _fail("patient-view has no draft orders", 2)
    try:
        drafts = (
            drafts_from_file(draft_file)
            if draft_file
            else [medication_draft(draft_rxnorm, patient)]
            if draft_rxnorm
            else []
        )
    except DraftError as exc:
        _fail(str(exc), 2)
    if bool(client_key) != bool(client_iss):
        _fail("--client-key and --client-iss go together", 2)
    base = cds.service_base(service_url)
    notes = []
    try:
        signer = cds.ClientSigner(client_key, client_iss, client_kid) if client_key else None
        with requests.Session() as session:
            service = cds.pick_service(cds.discover(session, base, timeout, signer), hook, service_id)
            context = cds.hook_context(hook, patient, user, drafts)
            prefetch = {}
            if not no_prefetch:
                templates = service.get("prefetch") or {}
                got = (
                    cds.prefetch_from_server(templates, context, session, fhir_server, token, timeout)
                    if fhir_server
                    else cds.prefetch_from_resources(templates, context, _chart(bundle_file))
                )
                prefetch, notes = got.values, got.warnings
            body = cds.hook_request(hook, context, prefetch, fhir_server, token)
            response = cds.call(session, base, service["id"], body, timeout, signer)
    except cds.ClientError as exc:
        _fail(str(exc))
    if as_json:
        click.echo(response.text)
        sys.exit(0 if response.status_code == 200 else 1)
    console = _console()
    for note in notes:
        console.print(f"[dim]prefetch: {note}[/]")
    if response.status_code != 200:
        _fail(f"{service['id']} answered {response.status_code}: {_diagnostics(response)}")
    cards = response.json().get("cards", [])
    console.print(
        f"[bold]{service['id']}[/] ({hook}) for Patient/{patient}: {len(cards)} card(s)"
        + ("" if no_prefetch else f", {len(prefetch)} prefetch key(s) sent")
    )
    for card in cards:
        console.print(render_card(card, explain))


def _chart(path: Path) -> list[dict]:
    try:
        data = _read_json(path)
    except (OSError, ValueError) as exc:
        _fail(f"{path}: not readable JSON ({type(exc).__name__})", 2)
    if isinstance(data, dict) and isinstance(data.get("request"), dict):  # a fixture
        from cds_service.fhir.examples import Example

        return Example(path.stem, "", "", "", data["request"]).resources()
    if not isinstance(data, dict) or data.get("resourceType") != "Bundle":
        _fail(f"{path}: not a FHIR Bundle", 2)
    return [
        e["resource"] for e in data.get("entry") or [] if isinstance(e, dict) and isinstance(e.get("resource"), dict)
    ]


def _diagnostics(response) -> str:
    try:
        return "; ".join(i.get("diagnostics", "") for i in response.json().get("issue", [])) or response.text[:300]
    except (ValueError, AttributeError):
        return response.text[:300]


def render_card(card: dict, explain: bool = False) -> Panel:
    """A card as an EHR shows it: indicator colour, summary, detail, suggestions, links."""
    colour = COLOURS.get(card.get("indicator") or "", "white")
    parts: list = []
    if card.get("detail"):
        parts.append(Markdown(card["detail"]))
    source = card.get("source") or {}
    parts.append(
        Text(f"Source: {source.get('label', '')}" + (f" <{source['url']}>" if source.get("url") else ""), style="dim")
    )
    for number, suggestion in enumerate(card.get("suggestions") or [], 1):
        line = Text(f"Suggestion {number}: {suggestion.get('label', '')}", style="bold")
        if suggestion.get("isRecommended"):
            line.append(" (recommended)", style="green")
        parts.append(line)
        for action in suggestion.get("actions") or []:
            target = action.get("resourceId") or (action.get("resource") or {}).get("resourceType", "")
            parts.append(Text(f"    {action.get('type')} {target}: {action.get('description', '')}"))
    for link in card.get("links") or []:
        parts.append(Text(f"Link: {link.get('label')} <{link.get('url')}> ({link.get('type')})", style="cyan"))
    reasons = [r.get("display", r.get("code", "")) for r in card.get("overrideReasons") or []]
    if reasons:
        parts.append(Text("Override reasons: " + "; ".join(reasons), style="dim"))
    if explain and card.get("extension"):
        parts.append(Text("Explanation:", style="bold magenta"))
        parts.append(Text(json.dumps(card["extension"], indent=2, ensure_ascii=False), style="magenta"))
    title = Text(f"[{card.get('indicator', '?').upper()}] ", style=f"bold {colour}")
    title.append(card.get("summary", ""), style="bold")
    return Panel(Group(*parts), title=title, title_align="left", border_style=colour)


# ---- check-config --------------------------------------------------------------------------


@main.command("check-config")
@click.option("--config", "name", help="configuration to check (default: LEGMOVE_CONFIG, else production)")
def check_config(name: str | None) -> None:
    """Say what the configuration will do and what in it is unsafe for production.

    Exits 1 when the production configuration has something unsafe.
    """
    from cds_service.cli.config_report import load_config, report, rule_states

    try:
        name, config = load_config(name)
    except KeyError as exc:
        _fail(str(exc.args[0]), 2)
    console = _console()
    table = Table(title=f"legmove-cds configuration: {name}")
    for column in ("topic", "what it does", "production"):
        table.add_column(column)
    items = report(config)
    for item in items:
        table.add_row(item.topic, item.says, Text("UNSAFE", style="bold red") if item.unsafe else Text("ok", "green"))
    console.print(table)
    states = rule_states(config)
    on = [r for r, _, enabled in states if enabled]
    off = [r for r, _, enabled in states if not enabled]
    console.print(f"rules on ({len(on)}): {', '.join(on) or 'none'}")
    console.print(f"rules off ({len(off)}): {', '.join(off) or 'none'}")
    unsafe = [i for i in items if i.unsafe]
    if unsafe:
        console.print(
            f"[bold]{len(unsafe)} setting(s) unsafe for production[/]"
            + (" (fine for this development/test configuration)" if name != "production" else "")
        )
    if unsafe and name == "production":
        sys.exit(1)


# ---- db ------------------------------------------------------------------------------------


@main.command("db")
@click.argument("action", type=click.Choice(["upgrade", "current"]))
def db_command(action: str) -> None:
    """Feedback store schema (Alembic): `upgrade` to the newest revision, or show the `current` one.

    Acts on the store that LEGMOVE_CONFIG / LEGMOVE_FEEDBACK_STORE name; gunicorn.conf.py runs
    `upgrade` once in the master before workers start."""
    from cds_service.store.migrations.__main__ import main as migrate

    raise SystemExit(migrate([action]))


if __name__ == "__main__":
    main()
