"""The manifest contract: each invalid case names its exact path; normalization is deterministic."""

from __future__ import annotations

import copy
import json

import pytest

from tests.plugins.helpers import SIMPLE_TOOL, manifest
from zenthor.plugins.discovery import BUILTIN_DIR
from zenthor.plugins.manifest import MANIFEST_FILENAME, normalize_manifest, validate_manifest


def without(data: dict, key: str) -> dict:
    data = copy.deepcopy(data)
    del data[key]
    return data


def tool(**overrides) -> dict:
    return {**copy.deepcopy(SIMPLE_TOOL), **overrides}


INVALID = [
    ("missing id", without(manifest(), "id"), "id", "required property is missing"),
    ("missing version", without(manifest(), "version"), "version", "required property is missing"),
    ("missing tools", without(manifest(), "tools"), "tools", "required property is missing"),
    ("upper-case id", manifest("Demo"), "id", "'Demo' is not in the expected format"),
    ("id with underscore", manifest("my_plugin"), "id", "'my_plugin' is not in the expected format"),
    ("id with double hyphen", manifest("a--b"), "id", "'a--b' is not in the expected format"),
    ("id not a string", manifest(42), "id", "42 is not of type 'string'"),
    ("version not semver", manifest(version="1.0"), "version", "'1.0' is not in the expected format"),
    ("version with v", manifest(version="v1.2.3"), "version", "'v1.2.3' is not in the expected format"),
    ("unknown risk", manifest(risk="extreme"), "risk", "'extreme' is not one of ['low', 'medium', 'high']"),
    (
        "approval not bool",
        manifest(requires_approval="yes"),
        "requires_approval",
        "'yes' is not of type 'boolean'",
    ),
    ("unknown capability", manifest(capabilities=["network", "teleport"]), "capabilities[1]", None),
    ("unknown top-level key", manifest(homepage="x"), "homepage", "unknown property"),
    ("bad entrypoint", manifest(entrypoint="plugin.activate"), "entrypoint", None),
    (
        "config_schema not a schema",
        manifest(config_schema={"type": "nope"}),
        "config_schema.type",
        None,
    ),
    (
        "config_schema properties not an object",
        manifest(config_schema={"type": "object", "properties": []}),
        "config_schema.properties",
        None,
    ),
    (
        "input schema not a schema",
        manifest(tools=[tool(input_schema={"type": "object", "properties": {"a": {"type": 5}}})]),
        "tools[0].input_schema.properties.a.type",
        None,
    ),
    (
        "input schema not an object schema",
        manifest(tools=[tool(input_schema={"type": "string"})]),
        "tools[0].input_schema.type",
        "'object' was expected",
    ),
    (
        "duplicate tool names",
        manifest(tools=[tool(), tool(description="again")]),
        "tools[1].name",
        "duplicate tool name 'echo' (already used by tools[0])",
    ),
    ("tool name with hyphen", manifest(tools=[tool(name="do-it")]), "tools[0].name", None),
    (
        "tool without description",
        manifest(tools=[without(tool(), "description")]),
        "tools[0].description",
        None,
    ),
    ("tool unknown risk", manifest(tools=[tool(risk="severe")]), "tools[0].risk", None),
    ("tool negative timeout", manifest(tools=[tool(timeout_s=-1)]), "tools[0].timeout_s", None),
    (
        "model-visible name too long",
        manifest("a" * 40, tools=[tool(name="b" * 30)]),
        "tools[0].name",
        None,
    ),
    (
        "manifest not an object",
        ["not", "a", "manifest"],
        "$",
        "['not', 'a', 'manifest'] is not of type 'object'",
    ),
]


@pytest.mark.parametrize(("case", "data", "path", "message"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_manifest_reports_the_exact_path(case, data, path, message):
    result, diagnostics = validate_manifest(data)
    assert result is None
    assert [d.path for d in diagnostics] == [path], [str(d) for d in diagnostics]
    if message is not None:
        assert diagnostics[0].message == message
    # Every diagnostic says what was expected, so an author knows how to fix it.
    assert diagnostics[0].expected


def test_missing_id_says_what_an_id_looks_like():
    _, diagnostics = validate_manifest(without(manifest(), "id"))
    assert "lower-case letters" in diagnostics[0].expected


def test_several_problems_are_all_reported_sorted_by_path():
    _, diagnostics = validate_manifest(manifest("Bad", version="x", risk="nope"))
    assert [d.path for d in diagnostics] == ["id", "risk", "version"]


VALID = [
    ("minimal", manifest()),
    ("prerelease version", manifest(version="2.0.0-rc.1+build.5")),
    ("full", manifest(description="d", risk="high", requires_approval=True, capabilities=["network"])),
    ("tool overrides", manifest(tools=[tool(risk="high", requires_approval=True, timeout_s=3)])),
    ("config schema", manifest(config_schema={"type": "object", "properties": {"k": {"type": "string"}}})),
]


@pytest.mark.parametrize(("case", "data"), VALID, ids=[c[0] for c in VALID])
def test_valid_manifest(case, data):
    result, diagnostics = validate_manifest(data)
    assert diagnostics == []
    assert result is not None and result.id == data["id"]


def test_normalization_fills_defaults_and_fixes_order():
    data = manifest(
        risk="medium",
        capabilities=["storage", "network", "storage"],
        tools=[tool(name="zeta"), tool(name="alpha", requires_approval=True, risk="high")],
    )
    result, _ = validate_manifest(data)
    assert [t.name for t in result.tools] == ["alpha", "zeta"]
    assert result.capabilities == ("network", "storage")
    # A tool without its own risk/approval inherits the plugin's, written out explicitly.
    zeta = result.tools[1]
    assert (zeta.risk, zeta.requires_approval) == ("medium", False)
    assert (result.tools[0].risk, result.tools[0].requires_approval) == ("high", True)
    assert result.config_schema == {"type": "object"}
    assert result.description == ""


def test_normalizing_twice_changes_nothing():
    data = manifest(capabilities=["storage", "network"], tools=[tool(name="b"), tool(name="a", timeout_s=2)])
    once = normalize_manifest(data)
    twice = normalize_manifest(once)
    assert once == twice
    assert json.dumps(once, sort_keys=True) == json.dumps(twice, sort_keys=True)
    # The input is not modified.
    assert [t["name"] for t in data["tools"]] == ["b", "a"]


@pytest.mark.parametrize("name", ["core_time", "core_memory", "core_schedule"])
def test_builtin_manifests_are_valid(name):
    data = json.loads((BUILTIN_DIR / name / MANIFEST_FILENAME).read_text())
    result, diagnostics = validate_manifest(data)
    assert diagnostics == []
    assert result.id == name.replace("_", "-")


REMIND_TOOL = tool(
    name="remind",
    title="Set a reminder",
    input_schema={
        "type": "object",
        "required": ["when", "text"],
        "properties": {"when": {"type": "string"}, "text": {"type": "string"}},
    },
)


@pytest.mark.parametrize(
    ("summary", "path", "message"),
    [
        ({"en": 'Set "{text}"', "pt": "Criar {foo}"}, "tools[0].summary.pt", "unknown placeholder {foo}"),
        ("At {when:%H:%M}", "tools[0].summary", "format spec '%H:%M' is not allowed in {when:%H:%M}"),
        ("Set {text!r}", "tools[0].summary", "conversion !r is not allowed in {text!r}"),
        ("Set {text.upper}", "tools[0].summary", "unknown placeholder {text.upper}"),
        ("Set {0}", "tools[0].summary", "unknown placeholder {0}"),
        ("Set {text", "tools[0].summary", "not a valid template: expected '}' before end of string"),
        ({"EN": "Set {text}"}, "tools[0].summary", "'EN' is not in the expected format"),
        ({"en": "x" * 201}, "tools[0].summary.en", None),
        ({}, "tools[0].summary", None),
    ],
)
def test_a_summary_must_name_arguments_of_the_tool(summary, path, message):
    """Issue 11 item 5: a template a person will read is checked when the plugin loads, not when
    a user is asked."""
    _, diagnostics = validate_manifest(manifest(tools=[tool(**REMIND_TOOL, summary=summary)]))
    assert [d.path for d in diagnostics] == [path], [str(d) for d in diagnostics]
    if message is not None:
        assert diagnostics[0].message == message
    assert diagnostics[0].expected
    # The arguments it may name are in what the author reads.
    if "placeholder" in diagnostics[0].message:
        assert "(text, when)" in diagnostics[0].expected


def test_a_summary_that_names_arguments_is_valid():
    summary = {"en": 'Set a reminder "{text}" for {when:datetime} {{sic}}', "pt": "Criar {text}"}
    result, diagnostics = validate_manifest(manifest(tools=[tool(**REMIND_TOOL, summary=summary)]))
    assert diagnostics == []
    assert (result.tools[0].title, result.tools[0].summary) == ("Set a reminder", summary)
    title_too_long, _ = validate_manifest(manifest(tools=[tool(**{**REMIND_TOOL, "title": "t" * 81})]))
    assert title_too_long is None


def test_normalizing_titles_and_summaries_is_idempotent():
    data = manifest(
        tools=[
            tool(**REMIND_TOOL, summary="Set {text}"),
            tool(name="other", title="Other", summary={"pt": "Outro {text}", "en": "Other {text}"}),
            tool(name="plain"),
        ]
    )
    once = normalize_manifest(data)
    assert once == normalize_manifest(once)
    by_name = {t["name"]: t for t in once["tools"]}
    # A plain string is English; languages are sorted; a tool without them gets no keys at all.
    assert by_name["remind"]["summary"] == {"en": "Set {text}"}
    assert list(by_name["other"]["summary"]) == ["en", "pt"]
    assert "title" not in by_name["plain"] and "summary" not in by_name["plain"]
    result, diagnostics = validate_manifest(once)
    assert diagnostics == []
    remind = next(t for t in result.tools if t.name == "remind")
    assert (remind.title, remind.summary) == ("Set a reminder", {"en": "Set {text}"})
    assert next(t for t in result.tools if t.name == "plain").summary == {}
